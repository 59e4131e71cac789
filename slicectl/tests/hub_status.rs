//! `slicectl status --hub-kubeconfig`'s requests against the in-memory API
//! (`slice_kube::memory`): exactly the three list requests, answers turned into the view, API
//! errors reported with what was asked.

use serde_json::json;
use slice_api::rbac::{Access, Scope};
use slice_kube::memory::MemoryApi;
use slicectl::hub_status::{fetch, problems};

/// What `slicectl status` may do on the hub: list the three kinds.
static READER: &[Access] = &[
    Access::new("list", "slicenet.io", "sliceconfigs", Scope::Cluster),
    Access::new("list", "slicenet.io", "memberclusters", Scope::Cluster),
    Access::new("list", "slicenet.io", "workerslices", Scope::Cluster),
];

fn hub() -> MemoryApi<String> {
    MemoryApi::new([("hub".to_owned(), READER, "default".to_owned())])
}

#[tokio::test]
async fn fetch_lists_the_three_kinds_and_sorts_them() {
    let api = hub();
    let mc = |name: &str| json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name}, "spec": {}});
    let ws = |cluster: &str| {
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
        "metadata": {"name": "blue", "namespace": format!("slicenet-cluster-{cluster}")},
        "spec": {"slice": "blue", "cluster": cluster, "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.0.0/20",
                 "nodePrefixLength": 26, "vni": 7}})
    };
    let hub = "hub".to_owned();
    api.put(
        hub.clone(),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
        "metadata": {"name": "blue"}, "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1"]}}),
    );
    for obj in [mc("c2"), mc("c1"), ws("c2"), ws("c1")] {
        api.put(hub.clone(), obj);
    }
    let view = fetch(api.client(hub)).await.unwrap();
    let lines: Vec<String> = api.take_requests().iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "hub GET /apis/slicenet.io/v1alpha1/sliceconfigs",
            "hub GET /apis/slicenet.io/v1alpha1/memberclusters",
            "hub GET /apis/slicenet.io/v1alpha1/workerslices",
        ]
    );
    assert_eq!(api.violations(), Vec::<String>::new());
    assert_eq!(view.slices.len(), 1);
    let names: Vec<_> = view.clusters.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["c1", "c2"]);
    let clusters: Vec<_> = view.workers.iter().map(|w| w.spec.cluster.as_str()).collect();
    assert_eq!(clusters, ["c1", "c2"]);
    // Nothing reported yet: every object says so.
    let p = problems(&view);
    assert!(p.iter().any(|l| l == "slice blue: no Ready condition yet"), "{p:?}");
    assert!(p.iter().any(|l| l == "slice blue in cluster c2: no status from the cluster's worker yet"), "{p:?}");
}

#[tokio::test]
async fn api_errors_name_the_request() {
    let api = hub();
    api.fail("hub".to_owned(), "GET", "/apis/slicenet.io/v1alpha1/sliceconfigs", 0, 403);
    let e = fetch(api.client("hub".to_owned())).await.unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("listing SliceConfigs") && text.contains("403"), "{text}");
    assert_eq!(api.take_requests().len(), 1, "nothing more is asked after the refusal");
}

#[test]
fn the_cli_loads_the_kubeconfig_and_reports_an_unreachable_hub() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.yaml");
    // Port 1 on loopback: nothing listens, so the first request fails fast.
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: hub\nclusters:\n- name: hub\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\ncontexts:\n- name: hub\n  context: {cluster: hub, user: u}\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .unwrap();
    let run = |kubeconfig: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_slicectl"))
            .args(["status", "--hub-kubeconfig"])
            .arg(kubeconfig)
            .output()
            .unwrap()
    };
    let out = run(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listing SliceConfigs"), "{err}");
    let out = run(&dir.path().join("missing.yaml"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

/// `slicectl diagnose` against the hub: the same three lists, findings with place and fix.
#[tokio::test]
async fn diagnose_finds_what_the_hub_objects_show() {
    let api = hub();
    let hub = "hub".to_owned();
    api.put(
        hub.clone(),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
        "metadata": {"name": "blue"}, "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"]}}),
    );
    api.put(
        hub.clone(),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": "c1"}, "spec": {},
               "status": {"conditions": [{"type": "Healthy", "status": "True", "reason": "Heartbeat"}]}}),
    );
    api.put(
        hub.clone(),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
        "metadata": {"name": "blue", "namespace": "slicenet-cluster-c1"},
        "spec": {"slice": "blue", "cluster": "c1", "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.0.0/20",
                 "nodePrefixLength": 26, "vni": 7},
        "status": {"peers": [{"cluster": "c2", "state": "Pending", "reason": "peer has not published a key"}]}}),
    );
    let view = fetch(api.client(hub)).await.unwrap();
    let report = slice_api::diagnose::hub_findings(&view);
    let found: Vec<(&str, &str)> = report.findings.iter().map(|f| (f.check.as_str(), f.place.as_str())).collect();
    assert_eq!(found, [("cluster-registered", "slice blue"), ("tunnel", "slice blue: c1 → c2")]);
    assert!(report.failed());
    assert!(
        report.findings[1].fix.contains("worker of c2 has not published its gateway key"),
        "{:?}",
        report.findings[1]
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["findings"][1]["severity"], "fail");
    assert!(json["checks"].as_array().unwrap().iter().any(|c| c == "prefix-overlap"));
}

#[test]
fn diagnose_needs_a_target_and_says_when_it_cannot_run() {
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_slicectl")).args(args).output().unwrap();
    let out = run(&["diagnose"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hub-kubeconfig"));
    let out = run(&["diagnose", "--lab", "nosuchlab", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no control plane for lab nosuchlab"));
    let out = run(&["diagnose", "--lab", "x", "-o", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'yaml'"));
}
