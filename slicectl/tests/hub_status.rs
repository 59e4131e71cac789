//! `slicectl status --hub-kubeconfig`'s requests against the in-memory API
//! (`slice_kube::memory`): exactly the three list requests (and the pages' when WorkerSlices
//! are paged), answers turned into the view, API errors reported with what was asked.

use serde_json::json;
use slice_api::rbac::{Access, Scope};
use slice_kube::memory::MemoryApi;
use slicectl::hub_status::{fetch, problems, render};

/// What `slicectl status` may do on the hub: list the three kinds.
static READER: &[Access] = &[
    Access::new("list", "slicenet.io", "sliceconfigs", Scope::Cluster),
    Access::new("list", "slicenet.io", "memberclusters", Scope::Cluster),
    Access::new("list", "slicenet.io", "workerslices", Scope::Cluster),
];

/// On a hub that pages the peers (its default), also the pages in `slicenet-peers`.
static PAGED_READER: &[Access] = &[
    Access::new("list", "slicenet.io", "sliceconfigs", Scope::Cluster),
    Access::new("list", "slicenet.io", "memberclusters", Scope::Cluster),
    Access::new("list", "slicenet.io", "workerslices", Scope::Cluster),
    Access::new("list", "slicenet.io", "slicepeers", Scope::Namespace("slicenet-peers")),
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
        ],
        "no WorkerSlice is paged: no page is read"
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

/// A hub that pages the peers: the WorkerSlices carry `peerPages`, the peers are in the page
/// `blue-0`. `fetch` reads the pages too, and each member's peers are rebuilt from them (its
/// own entry left out, another slice's page ignored): the report shows c2's planned tunnel to
/// c1, which c2's worker has not reported, as an inline WorkerSlice would show it, and the
/// peers' keys are there for `diagnose`. A refused read of the pages names it.
#[tokio::test]
async fn fetch_reads_the_pages_of_paged_worker_slices_and_reports_their_peers() {
    let api = MemoryApi::new([("hub".to_owned(), PAGED_READER, "default".to_owned())]);
    let hub = "hub".to_owned();
    let entry = |c: &str, prefix: &str| json!({"cluster": c, "prefix": prefix, "publicKey": format!("{c}-key")});
    let entries = json!([entry("c1", "10.80.0.0/20"), entry("c2", "10.80.16.0/20")]);
    let typed: Vec<slice_api::crd::WorkerPeer> = serde_json::from_value(entries.clone()).unwrap();
    let revision = slice_api::crd::peers_revision(&typed);
    api.put(
        hub.clone(),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
        "metadata": {"name": "blue"}, "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"]}}),
    );
    for (cluster, prefix) in [("c1", "10.80.0.0/20"), ("c2", "10.80.16.0/20")] {
        api.put(
            hub.clone(),
            json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": cluster},
                   "spec": {}}),
        );
        let mut ws = json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
            "metadata": {"name": "blue", "namespace": format!("slicenet-cluster-{cluster}")},
            "spec": {"slice": "blue", "cluster": cluster, "sliceSubnet": "10.80.0.0/16", "clusterPrefix": prefix,
                     "nodePrefixLength": 26, "vni": 7, "peerPages": {"pages": 1, "revision": revision}}});
        if cluster == "c1" {
            ws["status"] = json!({"peers": [{"cluster": "c2", "state": "Up"}]});
        }
        api.put(hub.clone(), ws);
    }
    for (name, slice, peers) in [("blue-0", "blue", entries), ("red-0", "red", json!([entry("c9", "10.90.0.0/20")]))] {
        api.put(
            hub.clone(),
            json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SlicePeers",
                   "metadata": {"name": name, "namespace": "slicenet-peers"},
                   "spec": {"slice": slice, "page": 0, "peers": peers}}),
        );
    }
    let view = fetch(api.client(hub.clone())).await.unwrap();
    let lines: Vec<String> = api.take_requests().iter().map(|r| r.line()).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[3], "hub GET /apis/slicenet.io/v1alpha1/namespaces/slicenet-peers/slicepeers");
    assert_eq!(api.violations(), Vec::<String>::new());
    let peers: Vec<Vec<&str>> =
        view.workers.iter().map(|w| w.spec.peers.iter().map(|p| p.cluster.as_str()).collect()).collect();
    assert_eq!(peers, [["c2"], ["c1"]], "each member's peers, from blue's page only");
    assert_eq!(view.workers[0].spec.peers[0].public_key.as_deref(), Some("c2-key"));
    let text = render(&view);
    assert!(text.contains("blue   c1       c2    Up"), "{text}");
    assert!(text.contains("blue   c2       c1    Unknown"), "c2's planned tunnel, not reported yet: {text}");

    api.fail(hub.clone(), "GET", "/apis/slicenet.io/v1alpha1/namespaces/slicenet-peers/slicepeers", 0, 403);
    let text = format!("{:#}", fetch(api.client(hub)).await.unwrap_err());
    assert!(text.contains("listing SlicePeers in slicenet-peers") && text.contains("403"), "{text}");
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

/// Issue 13: a WorkerSlice whose worker reports two gateway replicas, one without a live
/// tunnel to c3: `slicectl status` shows each replica's tunnels and names the one missing c3,
/// and `slicectl diagnose` reports it at the replica, from the hub's objects alone.
#[tokio::test]
async fn status_and_diagnose_show_each_gateway_replicas_tunnels() {
    let api = hub();
    let hub = "hub".to_owned();
    api.put(
        hub.clone(),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
        "metadata": {"name": "blue", "namespace": "slicenet-cluster-c1"},
        "spec": {"slice": "blue", "cluster": "c1", "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.0.0/20",
                 "nodePrefixLength": 26, "vni": 7, "gateway": {"replicas": 2}},
        "status": {"peers": [{"cluster": "c2", "state": "Up"}, {"cluster": "c3", "state": "Up"}],
                   "gatewayReplicas": [
                       {"ordinal": 0, "node": "n1", "state": "Up", "liveTunnels": 2},
                       {"ordinal": 1, "node": "n2", "state": "Up", "liveTunnels": 1, "unreachable": ["c3"],
                        "reason": "no live tunnel to c3"}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}}),
    );
    let view = fetch(api.client(hub)).await.unwrap();
    let text = render(&view);
    assert!(text.contains("blue   c1       0                n1    Up     2/2           -\n"), "{text}");
    assert!(
        text.contains("blue   c1       1                n2    Up     1/2           no live tunnel to c3\n"),
        "{text}"
    );
    assert_eq!(problems(&view), ["slice blue in cluster c1: gateway replica 1 is Up: no live tunnel to c3"]);
    let report = slice_api::diagnose::hub_findings(&view);
    let found: Vec<(&str, &str)> = report.findings.iter().map(|f| (f.check.as_str(), f.place.as_str())).collect();
    assert_eq!(found, [("gateway-replica", "slice blue in cluster c1: gateway replica 1 on node n2")]);
    assert!(report.failed());
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
