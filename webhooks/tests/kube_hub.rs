//! The kube-backed hub view (`slice-webhooks --hub-api`) against kube-rs's mock API service:
//! every request it makes is covered by `slice_api::access::WEBHOOK_HUB` (from which
//! `slicectl install hub` builds the webhook's RBAC), it is not ready before both kinds are
//! listed, it survives a refused list, it follows a watch event, and the SliceConfig
//! validation decides on what it holds. Also the contract of the membership ConfigMap: what
//! the worker writes is what the webhook reads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use slice_api::access::WEBHOOK_HUB;
use slice_api::rbac::{RequestAttributes, covers, request_attributes};
use webhooks::hub::{HubError, HubView};
use webhooks::kube_hub::KubeHub;
use webhooks::membership::{ConfigMapDir, MEMBERSHIP_CONFIGMAP, MEMBERSHIP_NAMESPACE, MembershipSource};

const SLICECONFIGS: &str = "/apis/slicenet.io/v1alpha1/sliceconfigs";
const MEMBERCLUSTERS: &str = "/apis/slicenet.io/v1alpha1/memberclusters";

fn slice_config(name: &str, subnet: &str, namespace: &str, rv: &str) -> Value {
    json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
           "metadata": {"name": name, "resourceVersion": rv, "uid": format!("uid-{name}")},
           "spec": {"sliceSubnet": subnet, "clusters": ["c1"], "namespaces": [{"namespace": namespace}]}})
}

fn list(kind: &str, items: &[Value], rv: &str) -> Value {
    json!({"apiVersion": "slicenet.io/v1alpha1", "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": rv}, "items": items})
}

fn respond(code: u16, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// A request seen by the mock: its authorizer attributes and path.
#[derive(Debug, Clone)]
struct Seen {
    attrs: RequestAttributes,
    path: String,
}

/// Serves the hub: the first MemberCluster list is refused (403), later ones succeed; the
/// first SliceConfig watch delivers one ADDED event and ends, later watches stay open. Any
/// request not covered by WEBHOOK_HUB ends the server with an error.
fn hub_api() -> (kube::Client, tokio::task::JoinHandle<Result<Vec<Seen>, String>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let mut seen: Vec<Seen> = Vec::new();
        let mut open_watches = Vec::new();
        while let Some((request, reply)) = handle.next_request().await {
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or("").to_owned();
            let method = request.method().as_str().to_owned();
            let attrs = request_attributes(&method, &format!("{path}?{query}"))
                .ok_or_else(|| format!("{method} {path}: not a resource request"))?;
            if !covers(WEBHOOK_HUB, &attrs, None) {
                return Err(format!(
                    "{method} {path}?{query} ({} {}) is not in WEBHOOK_HUB",
                    attrs.verb, attrs.resource
                ));
            }
            let earlier = |verb: &str| seen.iter().filter(|s| s.path == path && s.attrs.verb == verb).count();
            let answer = match (path.as_str(), attrs.verb) {
                (SLICECONFIGS, "list") => Some((
                    200,
                    list("SliceConfig", &[slice_config("red", "10.90.0.0/16", "bank", "10")], "10").to_string(),
                )),
                (MEMBERCLUSTERS, "list") if earlier("list") == 0 => Some((
                    403,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                           "code": 403, "message": "scripted Forbidden"})
                    .to_string(),
                )),
                (MEMBERCLUSTERS, "list") => Some((
                    200,
                    list(
                        "MemberCluster",
                        &[json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster",
                                 "metadata": {"name": "c1", "resourceVersion": "20"},
                                 "spec": {"podCidrs": ["10.244.0.0/16"], "serviceCidrs": ["10.96.0.0/16"]}})],
                        "20",
                    )
                    .to_string(),
                )),
                (SLICECONFIGS, "watch") if earlier("watch") == 0 => {
                    let event =
                        json!({"type": "ADDED", "object": slice_config("green", "10.70.0.0/16", "garden", "11")});
                    Some((200, format!("{event}\n")))
                }
                (_, "watch") => None,
                _ => return Err(format!("unexpected {method} {path}?{query}")),
            };
            seen.push(Seen { attrs, path });
            match answer {
                Some((code, body)) => reply.send_response(respond(code, body.into_bytes())),
                None => open_watches.push(reply),
            }
        }
        Ok(seen)
    });
    (client, server)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(hub: &KubeHub) -> Vec<String> {
    hub.slice_configs().unwrap().into_iter().filter_map(|s| s.metadata.name).collect()
}

fn validate(hub: &KubeHub, name: &str, subnet: &str, namespace: &str) -> Value {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "slicenet.io", "version": "v1alpha1", "kind": "SliceConfig"},
            "resource": {"group": "slicenet.io", "version": "v1alpha1", "resource": "sliceconfigs"},
            "name": name, "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": slice_config(name, subnet, namespace, ""),
            "oldObject": null, "dryRun": false
        }
    });
    let answer = webhooks::review::review_slice_config(review.to_string().as_bytes(), hub).unwrap();
    serde_json::from_slice(&answer).unwrap()
}

#[tokio::test]
async fn kube_hub_lists_watches_and_asks_only_for_what_webhook_hub_declares() {
    let (client, server) = hub_api();
    let (hub, task) = KubeHub::start(client);
    // Nothing listed yet (the reflectors have not run on this single-threaded runtime).
    assert!(!hub.ready());
    assert!(matches!(hub.slice_configs(), Err(HubError::NotSynced { kind: "SliceConfig" })));
    assert!(matches!(hub.member_clusters(), Err(HubError::NotSynced { kind: "MemberCluster" })));

    // The refused MemberCluster list is retried (with backoff) and the view becomes ready.
    eventually("readiness", || hub.ready()).await;
    assert_eq!(hub.member_clusters().unwrap()[0].spec.pod_cidrs, ["10.244.0.0/16"]);
    // The watch's ADDED event is in the view.
    eventually("the watched SliceConfig", || names(&hub) == ["green", "red"]).await;

    // Validation decides on the API server's objects: red holds bank in c1, c1 holds 10.244/16.
    let taken = validate(&hub, "blue", "10.80.0.0/16", "bank");
    assert_eq!(taken["response"]["allowed"], false, "{taken}");
    let msg = taken["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("namespace bank already belongs to slice red"), "{msg}");
    let overlap = validate(&hub, "blue", "10.244.0.0/16", "shop");
    assert_eq!(overlap["response"]["allowed"], false, "{overlap}");
    let fine = validate(&hub, "blue", "10.80.0.0/16", "shop");
    assert_eq!(fine["response"]["allowed"], true, "{fine}");

    task.abort();
    let _ = task.await;
    drop(hub);
    let seen = server.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    // Each kind was listed and watched; nothing else was asked for.
    for path in [SLICECONFIGS, MEMBERCLUSTERS] {
        for verb in ["list", "watch"] {
            assert!(seen.iter().any(|s| s.path == path && s.attrs.verb == verb), "no {verb} of {path}: {seen:?}");
        }
    }
    assert!(seen.iter().all(|s| s.attrs.namespace.is_none()), "cluster-wide requests only: {seen:?}");
}

#[test]
fn the_membership_configmap_the_worker_writes_is_what_the_webhook_reads() {
    use slice_operator::worker::objects::{PlannedSlice, membership_config_map};
    let spec = |slice: &str, namespaces: &[&str]| -> slice_api::crd::WorkerSliceSpec {
        serde_json::from_value(json!({
            "slice": slice, "cluster": "c2", "sliceSubnet": "10.80.0.0/16",
            "clusterPrefix": "10.80.16.0/20", "nodePrefixLength": 26, "vni": 100,
            "namespaces": namespaces, "peers": []
        }))
        .unwrap()
    };
    let planned = |slice: &str, namespaces: &[&str]| PlannedSlice {
        typed: slice_operator::worker::plan::TypedSpec::parse(&spec(slice, namespaces)).unwrap(),
        allocations: Vec::new(),
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
        gateways: slice_operator::worker::plan::GatewayAddresses::default(),
        secondary_allocations: Vec::new(),
    };
    let cm = membership_config_map(&[planned("blue", &["shop", "cart"]), planned("red", &["bank"])]);
    assert_eq!(cm["metadata"]["name"], MEMBERSHIP_CONFIGMAP);
    assert_eq!(cm["metadata"]["namespace"], MEMBERSHIP_NAMESPACE);
    // The kubelet mounts each key as a file.
    let data: BTreeMap<String, String> = serde_json::from_value(cm["data"].clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in &data {
        std::fs::write(dir.path().join(key), value).unwrap();
    }
    let source = ConfigMapDir::new(dir.path());
    source.refresh().unwrap();
    for (namespace, slice) in [("shop", "blue"), ("cart", "blue"), ("bank", "red")] {
        let info = source.namespace(namespace).unwrap();
        assert_eq!(info.member_slices, [slice], "{namespace}");
        assert_eq!(info.labels.get(slice_api::names::SLICE_LABEL).map(String::as_str), Some(slice), "{namespace}");
    }
    assert!(source.namespace("elsewhere").unwrap().member_slices.is_empty());
}
