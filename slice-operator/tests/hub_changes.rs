//! The hub that passes over what changed ([`hub::Hub`]) against the in-memory API: fed the
//! objects as its watches would deliver them, it reaches the state a whole pass reaches (a whole
//! pass after it writes nothing), and a heartbeat costs it no request at all.

use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use slice_api::crd::{MemberCluster, SliceConfig, WorkerSlice};
use slice_kube::memory::MemoryApi;
use slice_operator::access::HUB;
use slice_operator::hub::{self, Change};

const SIDE: &str = "hub";
const NOW: i64 = 1_800_000_000;
const SC: &str = "/apis/slicenet.io/v1alpha1/sliceconfigs";
const MC: &str = "/apis/slicenet.io/v1alpha1/memberclusters";
const WS: &str = "/apis/slicenet.io/v1alpha1/workerslices";

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("valid time")
}

fn api() -> MemoryApi<String> {
    let api = MemoryApi::new([(SIDE.to_owned(), HUB, "slicenet-system".to_owned())]);
    for c in ["c1", "c2", "c3"] {
        api.put(
            SIDE.to_owned(),
            json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": c},
                   "spec": {}, "status": {"lastHeartbeat": at(NOW - 5).to_string()}}),
        );
    }
    for (s, members) in [("blue", vec!["c1", "c2"]), ("green", vec!["c2", "c3"])] {
        api.put(
            SIDE.to_owned(),
            json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
                   "metadata": {"name": s, "creationTimestamp": at(NOW - 100).to_string()},
                   "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": members, "namespaces": [{"namespace": "web"}]}}),
        );
    }
    api
}

/// Every object of the three kinds, as a watch's re-list would deliver them.
fn everything(api: &MemoryApi<String>) -> Vec<Change> {
    let side = SIDE.to_owned();
    let mut out = Vec::new();
    for v in api.list(&side, SC) {
        out.push(Change::Slice(Box::new(serde_json::from_value::<SliceConfig>(v).expect("a SliceConfig"))));
    }
    for v in api.list(&side, MC) {
        out.push(Change::Cluster(Box::new(serde_json::from_value::<MemberCluster>(v).expect("a MemberCluster"))));
    }
    for v in api.list(&side, WS) {
        out.push(Change::Worker(Box::new(serde_json::from_value::<WorkerSlice>(v).expect("a WorkerSlice"))));
    }
    out
}

fn writes(api: &MemoryApi<String>) -> Vec<String> {
    api.take_requests().into_iter().filter(|r| r.is_write() && !r.is_event()).map(|r| r.line()).collect()
}

#[tokio::test]
async fn passes_over_changes_reach_what_a_whole_pass_reaches_and_a_heartbeat_costs_no_request() {
    let api = api();
    let client = api.client(SIDE.to_owned());
    // Inline peers (`--inline-peers`): the test reads them in the WorkerSlices.
    let ctx = hub::Context {
        peer_lists: slice_api::planner::PeerLists::Inline,
        ..hub::Context::new(std::time::Duration::from_secs(60), "test")
    };
    let mut hub = hub::Hub::default();
    assert!(!hub.is_indexed());
    hub.reconcile_changes(&client, &ctx, at(NOW)).await.expect("the first pass is whole");
    assert!(hub.is_indexed());

    // The workers publish their gateways; the hub learns every object (its own writes too) and
    // passes over them until it writes nothing.
    for (cluster, slice, key) in [("c1", "blue", "a"), ("c2", "blue", "b"), ("c2", "green", "c"), ("c3", "green", "d")]
    {
        let path =
            format!("/apis/slicenet.io/v1alpha1/namespaces/slicenet-cluster-{cluster}/workerslices/{slice}/status");
        let status = json!({"status": {"gatewayPublicKey": format!("{key}{}=", "A".repeat(42)),
                                        "gatewayEndpoint": format!("198.18.0.{}:51820", key.len() + 1),
                                        "conditions": [{"type": "Ready", "status": "True", "reason": "Up", "message": ""}]}});
        let (code, body) = api.request(&SIDE.to_owned(), "PATCH", &path, "application/merge-patch+json", &status);
        assert_eq!(code, 200, "{body}");
    }
    let mut passes = 0;
    loop {
        passes += 1;
        assert!(passes < 6, "no convergence");
        for change in everything(&api) {
            hub.observe(change);
        }
        api.take_requests();
        let outcome = hub.reconcile_changes(&client, &ctx, at(NOW)).await.expect("a pass");
        if outcome.writes == 0 {
            break;
        }
    }
    let w: WorkerSlice = serde_json::from_value(
        api.get(SIDE.to_owned(), "/apis/slicenet.io/v1alpha1/namespaces/slicenet-cluster-c1/workerslices/blue")
            .expect("c1's WorkerSlice"),
    )
    .expect("a WorkerSlice");
    assert_eq!(w.spec.peers.len(), 1);
    assert!(w.spec.peers[0].public_key.as_deref().is_some_and(|k| k.starts_with('b')), "c2's key reached c1");
    api.lock().record = true;
    api.take_requests();
    let whole = hub::reconcile(&client, &ctx, at(NOW)).await.expect("a whole pass");
    assert_eq!(whole.writes, 0, "a whole pass finds nothing left: {:?}", writes(&api));

    // A heartbeat: the hub learns it and makes no request at all.
    let path = "/apis/slicenet.io/v1alpha1/memberclusters/c1/status";
    let beat = json!({"status": {"lastHeartbeat": at(NOW + 10).to_string()}});
    api.request(&SIDE.to_owned(), "PATCH", path, "application/merge-patch+json", &beat);
    let c1 = api.get(SIDE.to_owned(), "/apis/slicenet.io/v1alpha1/memberclusters/c1").expect("c1");
    hub.observe(Change::Cluster(Box::new(serde_json::from_value(c1).expect("a MemberCluster"))));
    api.take_requests();
    let outcome = hub.reconcile_changes(&client, &ctx, at(NOW + 10)).await.expect("a pass");
    assert_eq!(outcome.writes, 0);
    let requests: Vec<String> = api.take_requests().into_iter().map(|r| r.line()).collect();
    assert_eq!(requests, Vec::<String>::new(), "a heartbeat costs no request");
    assert_eq!(api.violations(), Vec::<String>::new(), "every request within the hub's access list");
}
