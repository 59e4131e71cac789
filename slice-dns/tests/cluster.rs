//! The `--kube` source against the in-memory Kubernetes API (`slice_kube::memory`): what it
//! lists, that every request it makes is in [`slice_dns::cluster::ACCESS`] (the RBAC `slicectl
//! install` grants it), that a change is served and an unchanged list builds nothing, that a
//! failed list keeps the records, and that objects without the MCS label are not served.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{DNSClass, LowerName, RecordType};
use serde_json::{Value, json};
use slice_dns::cluster::{self, ACCESS, ClusterSource};
use slice_dns::records::{Settings, Snapshot};
use slice_kube::memory::MemoryApi;

const CLUSTER: &str = "member";

fn api() -> MemoryApi<String> {
    MemoryApi::new([(CLUSTER.to_owned(), ACCESS, "slicenet-system".to_owned())])
}

fn import(ns: &str, name: &str, kind: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": kind, "ips": ips, "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}
    })
}

fn mcs_slice(ns: &str, service: &str, cluster: &str, addresses: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> =
        addresses.iter().map(|(a, ready)| json!({"addresses": [a], "conditions": {"ready": ready}})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-{cluster}"), "namespace": ns, "labels": {
            "multicluster.kubernetes.io/service-name": service,
            "multicluster.kubernetes.io/source-cluster": cluster}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
    })
}

/// A cluster's own (not MCS) EndpointSlice: kube-proxy's, never served by slice-dns.
fn local_slice(ns: &str, service: &str, address: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-local"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": [{"addresses": [address], "conditions": {"ready": true}}]
    })
}

fn a(snapshot: &Snapshot, name: &str) -> (ResponseCode, Vec<String>) {
    let answer = snapshot.lookup(&LowerName::from_str(name).unwrap(), RecordType::A, DNSClass::IN);
    let mut data: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    data.sort();
    (answer.code, data)
}

/// A runtime whose workers run the client's tasks (and the watch) while the test thread waits.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn lists_imports_and_mcs_slices_in_every_namespace_with_only_the_declared_access() {
    let api = api();
    api.put(CLUSTER.into(), import("shop", "db", "Headless", &[]));
    api.put(CLUSTER.into(), import("bank", "api", "ClusterSetIP", &["10.80.255.1"]));
    api.put(CLUSTER.into(), mcs_slice("shop", "db", "east", &[("10.80.0.5", true), ("10.80.0.6", false)]));
    api.put(CLUSTER.into(), mcs_slice("shop", "db", "west", &[("10.80.16.5", true)]));
    api.put(CLUSTER.into(), mcs_slice("bank", "api", "east", &[("10.80.0.7", true)]));
    api.put(CLUSTER.into(), local_slice("shop", "db", "10.244.0.9"));
    let rt = runtime();
    let _in_runtime = rt.enter();
    let mut source = ClusterSource::new(api.client(CLUSTER.into()), Settings::default());
    let snapshot = rt.block_on(source.poll()).unwrap().expect("the first list builds a snapshot");
    assert_eq!(
        a(&snapshot, "db.shop.svc.clusterset.local."),
        (ResponseCode::NoError, vec!["10.80.0.5".to_owned(), "10.80.16.5".to_owned()]),
        "ready MCS endpoints of both clusters, not the cluster's own slice"
    );
    assert_eq!(a(&snapshot, "east.db.shop.svc.slice.local.").1, ["10.80.0.5"]);
    assert_eq!(a(&snapshot, "api.bank.svc.clusterset.local.").1, ["10.80.255.1"]);

    let requests: Vec<String> = api.take_requests().iter().map(|r| format!("{} ?{}", r.line(), r.query)).collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests[0].starts_with("member GET /apis/multicluster.x-k8s.io/v1alpha1/serviceimports ?"),
        "{requests:?}"
    );
    assert!(requests[1].starts_with("member GET /apis/discovery.k8s.io/v1/endpointslices ?"), "{requests:?}");
    assert!(
        requests[1].contains("labelSelector=multicluster.kubernetes.io%2Fservice-name"),
        "only the MCS slices are asked for: {requests:?}"
    );
    assert!(requests.iter().all(|r| r.contains("resourceVersion=0")), "from the watch cache: {requests:?}");
    assert_eq!(api.violations(), Vec::<String>::new());

    // Nothing changed: nothing is built.
    assert!(rt.block_on(source.poll()).unwrap().is_none());
}

#[test]
fn a_change_is_served_a_failed_list_keeps_the_records_and_a_deletion_takes_them_out() {
    let api = api();
    api.put(CLUSTER.into(), import("shop", "db", "Headless", &[]));
    api.put(CLUSTER.into(), mcs_slice("shop", "db", "east", &[("10.80.0.5", true)]));
    let rt = runtime();
    let _in_runtime = rt.enter();
    let mut source = ClusterSource::new(api.client(CLUSTER.into()), Settings { ttl: 5 });
    let first = rt.block_on(source.first(Duration::from_millis(10)));
    let shared = Arc::new(ArcSwap::from_pointee(first));
    let name = "db.shop.svc.clusterset.local.";
    let wait_for = |want: (ResponseCode, Vec<&str>)| {
        let want = (want.0, want.1.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = a(&shared.load(), name);
            if now == want {
                return;
            }
            assert!(Instant::now() < deadline, "still {now:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for((ResponseCode::NoError, vec!["10.80.0.5"]));

    // The watch runs on the runtime's workers; the test changes the API meanwhile.
    let watch = rt.spawn(cluster::watch(source, shared.clone(), Duration::from_millis(20)));

    let path = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/db-east";
    api.edit(CLUSTER.into(), path, |s| s["endpoints"][0]["conditions"]["ready"] = json!(false));
    api.put(CLUSTER.into(), mcs_slice("shop", "db", "west", &[("10.80.16.5", true)]));
    wait_for((ResponseCode::NoError, vec!["10.80.16.5"]));

    // The API fails for a while: the records stay.
    for nth in 0..5 {
        api.fail(CLUSTER.into(), "GET", "/apis/multicluster.x-k8s.io/", nth, 500);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.lock().faults.iter().any(|f| f.nth != usize::MAX) {
        assert!(Instant::now() < deadline, "the lists stopped while the API failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for((ResponseCode::NoError, vec!["10.80.16.5"]));

    // The import deleted: the name goes.
    api.remove(CLUSTER.into(), "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports/db");
    wait_for((ResponseCode::NXDomain, vec![]));
    assert_eq!(api.violations(), Vec::<String>::new());
    watch.abort();
}
