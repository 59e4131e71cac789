//! Multi-cluster services through the worker against the in-memory API (`slice_kube::memory`),
//! with the hub's merge (`hub::services`) in between: a ServiceExport in cluster c2 is reported
//! in its WorkerSlice's status with slice addresses; merged by the hub into the slice's imports,
//! it becomes a ServiceImport and MCS EndpointSlices; an endpoint turning unready leaves them;
//! un-export removes them; ExternalName is `Valid=False`; the Corefile gets the stanza and loses
//! it when the slice goes. Every request is checked against the worker's access lists.
//!
//! The MCS versions: with the MCS CRDs serving `v1alpha1` only (upstream's older ones),
//! `v1beta1` only (newer ones) or both (slicenet's, `slice_api::mcs::crds`), a user's
//! ServiceExport written in a served version is exported, and the ServiceImport appears in the
//! version the worker finds served (the in-memory API serves a CRD's versions as an API server
//! does: views of one collection, the others 404).

mod worker_support;

use serde_json::{Value, json};
use slice_api::crd::{SliceConfig, WorkerSlice};
use worker_support::{FakeApi, Side};

const NOW: &str = "2026-11-23T20:00:00Z";
const WS: &str = "/apis/slicenet.io/v1alpha1/namespaces/slicenet-cluster-c2/workerslices";
const MCS: &str = "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop";
const ES: &str = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices";
const COREDNS: &str = "/api/v1/namespaces/kube-system/configmaps/coredns";
const COREFILE: &str = ".:53 {\n    errors\n    forward . /etc/resolv.conf\n}\n";

fn slice_config() -> SliceConfig {
    let mut s: SliceConfig = serde_json::from_value(json!({
        "apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": "blue"},
        "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"], "namespaces": [{"namespace": "shop"}]},
    }))
    .unwrap();
    s.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(NOW.parse().unwrap()));
    s
}

/// The hub's plan of `blue` for c1 and c2: c2's WorkerSlice as the hub would write it.
fn planned_worker_slice() -> Value {
    let clusters: Vec<slice_api::crd::MemberCluster> =
        ["c1", "c2"].iter().map(|c| slice_api::crd::MemberCluster::new(c, Default::default())).collect();
    let plan = slice_api::planner::plan(&[slice_config()], &clusters, &[]).remove(0);
    let spec = plan.workers.iter().find(|w| w.cluster == "c2").unwrap().clone();
    let mut ws = WorkerSlice::new("blue", spec);
    ws.metadata.namespace = Some("slicenet-cluster-c2".into());
    serde_json::to_value(ws).unwrap()
}

fn pod(name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "annotations": {"k8s.v1.cni.cncf.io/network-status":
            json!([{"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.9"]},
                   {"name": "shop/slice-blue", "interface": "slice0", "ips": [ip]}]).to_string()}},
        "spec": {"nodeName": node, "containers": []}, "status": {"phase": "Running"}})
}

fn endpoint_slice(ready: &[(&str, bool)]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ready.iter().map(|(p, r)| json!({"addresses": ["10.244.1.9"], "conditions": {"ready": r},
            "targetRef": {"kind": "Pod", "name": p}})).collect::<Vec<_>>()})
}

fn fixture() -> FakeApi {
    let api = FakeApi::member_c2(planned_worker_slice());
    for ns in ["shop", "slicenet-system"] {
        api.put(Side::Cluster, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    api.put(
        Side::Cluster,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "slice-dns", "namespace": "slicenet-system"}, "spec": {"clusterIP": "10.96.0.53"}}),
    );
    api.put(
        Side::Cluster,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "coredns", "namespace": "kube-system"}, "data": {"Corefile": COREFILE}}),
    );
    api.put(Side::Cluster, json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.1.1", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}));
    api.put(
        Side::Cluster,
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
        "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": NOW}, "spec": {}}),
    );
    api
}

/// One pass of c2's worker; the requests it made (checked against the access lists).
async fn pass(api: &FakeApi) -> Vec<String> {
    api.pass_ok("c2", NOW).await
}

/// The hub's merge over c2's WorkerSlice as it is now, written into its spec (as the hub does).
fn hub_merges(api: &FakeApi) -> Vec<slice_api::crd::ImportedService> {
    let ws: WorkerSlice = serde_json::from_value(api.get(Side::Hub, &format!("{WS}/blue")).unwrap()).unwrap();
    let clusters: Vec<slice_api::crd::MemberCluster> =
        ["c1", "c2"].iter().map(|c| slice_api::crd::MemberCluster::new(c, Default::default())).collect();
    let slice = slice_config();
    let plan = slice_api::planner::plan(std::slice::from_ref(&slice), &clusters, std::slice::from_ref(&ws)).remove(0);
    let merged = slice_operator::hub::services::merge(&slice, &plan, &[ws]);
    assert!(merged.refusals.is_empty(), "{:?}", merged.refusals);
    let imports = merged.imports.clone();
    api.edit(Side::Hub, &format!("{WS}/blue"), |w| w["spec"]["imports"] = serde_json::to_value(&imports).unwrap());
    imports
}

fn export_condition(api: &FakeApi, name: &str, type_: &str) -> (String, String) {
    let e = api.get(Side::Cluster, &format!("{MCS}/serviceexports/{name}")).unwrap();
    let c = e["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == type_).unwrap().clone();
    (c["status"].as_str().unwrap().to_owned(), c["reason"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn an_export_reaches_the_imports_and_follows_its_endpoints() {
    let api = fixture();
    // c2's node prefixes come from its first pass: n1 10.80.16.0/26, n2 10.80.16.64/26.
    pass(&api).await;
    api.put(Side::Cluster, pod("web-1", "n1", "10.80.16.5"));
    api.put(Side::Cluster, pod("web-2", "n2", "10.80.16.70"));
    api.put(Side::Cluster, endpoint_slice(&[("web-1", true), ("web-2", true)]));
    pass(&api).await;
    let status = api.get(Side::Hub, &format!("{WS}/blue")).unwrap()["status"].clone();
    let eps = &status["exports"][0]["endpoints"][0]["endpoints"];
    assert_eq!(
        eps,
        &json!([{"address": "10.80.16.5", "hostname": "web-1"}, {"address": "10.80.16.70", "hostname": "web-2"}])
    );
    assert_eq!(export_condition(&api, "web", "Valid"), ("True".into(), "Valid".into()));
    assert_eq!(export_condition(&api, "web", "Ready"), ("False".into(), "Pending".into()));

    // The hub merges; the next pass imports.
    let imports = hub_merges(&api);
    let ip = imports[0].ips[0].clone();
    pass(&api).await;
    let si = api.get(Side::Cluster, &format!("{MCS}/serviceimports/web")).expect("a ServiceImport");
    assert_eq!(si["spec"]["ips"], json!([ip]));
    assert_eq!(si["status"]["clusters"], json!([{"cluster": "c2"}]));
    let slices = api.paths(Side::Cluster, ES);
    assert_eq!(slices.len(), 2, "the cluster's own and the MCS one: {slices:?}");
    let mcs = api.get(Side::Cluster, &format!("{ES}/web-c2-0v4")).expect("the MCS EndpointSlice");
    assert_eq!(mcs["metadata"]["labels"]["multicluster.kubernetes.io/source-cluster"], "c2");
    assert_eq!(mcs["endpoints"].as_array().unwrap().len(), 2);
    assert_eq!(export_condition(&api, "web", "Ready"), ("True".into(), "Exported".into()));
    // The node agents get the ClusterSetIP with both backends.
    let cm = api.get(Side::Cluster, "/api/v1/namespaces/slicenet-system/configmaps/slicenet-node-n1").unwrap();
    let config: Value = serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        config["slices"][0]["services"][0]["ports"][0]["backends"],
        json!(["10.80.16.5:8080", "10.80.16.70:8080"])
    );
    // The Corefile forwards the slice zones to slice-dns.
    let corefile = api.get(Side::Cluster, COREDNS).unwrap()["data"]["Corefile"].as_str().unwrap().to_owned();
    assert!(corefile.starts_with(COREFILE) && corefile.contains("forward . 10.96.0.53"), "{corefile}");

    // web-2 turns unready: it leaves the report, then the imports.
    api.put(Side::Cluster, endpoint_slice(&[("web-1", true), ("web-2", false)]));
    pass(&api).await;
    hub_merges(&api);
    pass(&api).await;
    let mcs = api.get(Side::Cluster, &format!("{ES}/web-c2-0v4")).unwrap();
    assert_eq!(
        mcs["endpoints"],
        json!([{"addresses": ["10.80.16.5"], "conditions": {"ready": true}, "hostname": "web-1"}])
    );

    // Un-export: the report empties, the hub drops the import, the objects go.
    api.remove(Side::Cluster, &format!("{MCS}/serviceexports/web"));
    pass(&api).await;
    let status = api.get(Side::Hub, &format!("{WS}/blue")).unwrap()["status"].clone();
    assert!(status.get("exports").is_none_or(|e| e.as_array().is_some_and(Vec::is_empty)), "{status}");
    assert!(hub_merges(&api).is_empty());
    pass(&api).await;
    assert!(api.get(Side::Cluster, &format!("{MCS}/serviceimports/web")).is_none());
    assert_eq!(api.paths(Side::Cluster, ES).len(), 1, "only the cluster's own EndpointSlice is left");
}

#[tokio::test]
async fn external_name_is_not_valid_and_the_corefile_goes_with_the_slice() {
    let api = fixture();
    api.put(Side::Cluster, json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"}, "spec": {"type": "ExternalName", "externalName": "example.org"}}));
    pass(&api).await;
    assert_eq!(export_condition(&api, "web", "Valid"), ("False".into(), "InvalidServiceType".into()));
    assert_eq!(export_condition(&api, "web", "Ready"), ("False".into(), "Failed".into()));
    let corefile = api.get(Side::Cluster, COREDNS).unwrap()["data"]["Corefile"].as_str().unwrap().to_owned();
    assert!(slice_api::corefile::has_stanza(&corefile));
    // The slice is deleted (its WorkerSlice goes, held by the worker's finalizer): the stanza
    // is removed and the Corefile is exactly what it was.
    api.edit(Side::Hub, &format!("{WS}/blue"), |w| w["metadata"]["deletionTimestamp"] = json!(NOW));
    pass(&api).await;
    let corefile = api.get(Side::Cluster, COREDNS).unwrap()["data"]["Corefile"].as_str().unwrap().to_owned();
    assert_eq!(corefile, COREFILE);
}

/// The MCS CRDs serving `versions` (the storage version the newest of them), as a cluster may
/// hold them.
fn install_mcs_crds(api: &FakeApi, versions: &[&str]) {
    for mut crd in slice_api::mcs::crds() {
        crd.spec.versions.retain(|v| versions.contains(&v.name.as_str()));
        let last = crd.spec.versions.len() - 1;
        for (i, v) in crd.spec.versions.iter_mut().enumerate() {
            v.storage = i == last;
        }
        api.put(Side::Cluster, serde_json::to_value(crd).unwrap());
    }
}

/// With the MCS CRDs serving `served`, a ServiceExport written in `written_in` is exported and
/// its ServiceImport appears in `expected`, and nothing is asked of a version not served.
async fn exported_and_imported(served: &[&str], written_in: &str, expected: &str) {
    let api = fixture();
    // The fixture's export (no CRDs yet) goes; the cluster gets its CRDs, the user writes the
    // export in `written_in` (in v1beta1 with the optional spec, which is accepted and ignored).
    api.remove(Side::Cluster, &format!("{MCS}/serviceexports/web"));
    install_mcs_crds(&api, served);
    let mut export = json!({"apiVersion": format!("multicluster.x-k8s.io/{written_in}"), "kind": "ServiceExport",
        "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": NOW}});
    if written_in == "v1beta1" {
        export["spec"] = json!({"exportedLabels": {"tier": "web"}, "exportedAnnotations": {"note": "x"}});
    }
    api.put(Side::Cluster, export);
    pass(&api).await;
    api.put(Side::Cluster, pod("web-1", "n1", "10.80.16.5"));
    api.put(Side::Cluster, endpoint_slice(&[("web-1", true)]));
    let mut requests = pass(&api).await;
    assert!(!hub_merges(&api).is_empty(), "c2's export reached the hub");
    requests.extend(pass(&api).await);

    let base = |v: &str| format!("/apis/multicluster.x-k8s.io/{v}/namespaces/shop");
    let si = api.get(Side::Cluster, &format!("{}/serviceimports/web", base(expected))).expect("a ServiceImport");
    assert_eq!(si["apiVersion"], format!("multicluster.x-k8s.io/{expected}"));
    assert_eq!(si["status"]["clusters"], json!([{"cluster": "c2"}]));
    let marked = si["status"].get("endpointSliceObjects").cloned();
    assert_eq!(marked, (expected == "v1beta1").then(|| json!("Present")), "{si}");
    assert!(api.get(Side::Cluster, &format!("{ES}/web-c2-0v4")).is_some(), "the MCS EndpointSlice");
    let export = api.get(Side::Cluster, &format!("{}/serviceexports/web", base(written_in))).unwrap();
    let ready = export["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!((&ready["status"], &ready["reason"]), (&json!("True"), &json!("Exported")), "{export}");
    for v in ["v1alpha1", "v1beta1"] {
        let import = api.get(Side::Cluster, &format!("{}/serviceimports/web", base(v)));
        // Served versions are views of the same object; the others are 404.
        assert_eq!(import.is_some(), served.contains(&v), "{v}");
        if !served.contains(&v) {
            let asked: Vec<&String> = requests.iter().filter(|r| r.contains(&format!("x-k8s.io/{v}/"))).collect();
            assert!(asked.is_empty(), "requests in {v}, which is not served: {asked:?}");
        }
    }
    assert!(requests.iter().any(|r| r == "GET /apis/multicluster.x-k8s.io"), "discovery: {requests:?}");
}

#[tokio::test]
async fn crds_serving_v1alpha1_only_get_v1alpha1_imports() {
    exported_and_imported(&["v1alpha1"], "v1alpha1", "v1alpha1").await;
}

#[tokio::test]
async fn crds_serving_v1beta1_only_get_v1beta1_imports() {
    exported_and_imported(&["v1beta1"], "v1beta1", "v1beta1").await;
}

#[tokio::test]
async fn crds_serving_both_get_v1beta1_imports_and_read_v1alpha1_exports() {
    // An older client writes v1alpha1; the worker reads and writes v1beta1; both views agree.
    exported_and_imported(&["v1alpha1", "v1beta1"], "v1alpha1", "v1beta1").await;
    exported_and_imported(&["v1alpha1", "v1beta1"], "v1beta1", "v1beta1").await;
}
