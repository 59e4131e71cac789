//! The merge of pod reports on reports built in memory.

use serde_json::json;
use slice_api::crd::{SliceConfig, SliceConfigSpec, WorkerSliceStatus};
use slice_api::planner;

use super::*;

/// Slice `blue` over a, b, c (prefixes a → 10.80.0.0/20, b → 10.80.16.0/20, c → 10.80.32.0/20),
/// namespace `web` everywhere and `db` only in b.
fn plan() -> SlicePlan {
    plan_with(16)
}

/// The same with `max` clusters (4: prefixes of /18, a → 10.80.0.0/18, b → 10.80.64.0/18).
fn plan_with(max: u32) -> SlicePlan {
    let spec: SliceConfigSpec = serde_json::from_value(json!({
        "sliceSubnet": "10.80.0.0/16", "clusters": ["a", "b", "c"], "maxClusters": max,
        "namespaces": [{"namespace": "web"}, {"namespace": "db", "clusters": ["b"]}],
    }))
    .unwrap();
    let clusters: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|c| slice_api::crd::MemberCluster::new(c, slice_api::crd::MemberClusterSpec::default()))
        .collect();
    planner::plan(&[SliceConfig::new("blue", spec)], &clusters, &[]).remove(0)
}

fn group(namespace: &str, app: &str, addresses: &[&str]) -> PodGroup {
    serde_json::from_value(json!({"namespace": namespace, "labels": {"app": app},
        "namespaceLabels": {"team": "x"}, "addresses": addresses}))
    .unwrap()
}

fn worker(plan: &SlicePlan, cluster: &str, pods: Vec<PodGroup>) -> WorkerSlice {
    let spec = plan.workers.iter().find(|w| w.cluster == cluster).unwrap().clone();
    let mut w = WorkerSlice::new(&plan.name, spec);
    w.metadata.namespace = Some(slice_api::crd::cluster_namespace(cluster));
    w.status = Some(WorkerSliceStatus { pods, ..Default::default() });
    w
}

#[test]
fn each_member_gets_the_other_members_pods() {
    let p = plan();
    let workers = [
        worker(&p, "a", vec![group("web", "x", &["10.80.0.2"])]),
        worker(&p, "b", vec![group("web", "y", &["10.80.16.2", "10.80.16.3"]), group("db", "z", &["10.80.16.66"])]),
    ];
    let m = merge(&p, &workers);
    assert_eq!(m.refusals, Vec::<String>::new());
    assert_eq!(m.pods(), 4);
    assert_eq!(m.for_cluster("a"), workers[1].status.as_ref().unwrap().pods);
    assert_eq!(m.for_cluster("b"), workers[0].status.as_ref().unwrap().pods);
    assert_eq!(m.for_cluster("c").len(), 3);
}

#[test]
fn a_cluster_speaks_only_for_its_own_prefix_and_namespaces() {
    let p = plan();
    // a claims b's address, a namespace that is no member in a, and repeats an address.
    let workers = [worker(
        &p,
        "a",
        vec![
            group("web", "x", &["10.80.0.2", "10.80.16.2"]),
            group("db", "z", &["10.80.0.3"]),
            group("web", "y", &["10.80.0.2", "10.80.0.4"]),
        ],
    )];
    let m = merge(&p, &workers);
    let got = m.for_cluster("b");
    assert_eq!(got, vec![group("web", "x", &["10.80.0.2"]), group("web", "y", &["10.80.0.4"])]);
    assert_eq!(m.refusals.len(), 2, "{:?}", m.refusals);
    assert!(m.refusals[0].contains("10.80.16.2 are not inside its prefix 10.80.0.0/20"), "{:?}", m.refusals);
    assert!(m.refusals[1].contains("db: not a member of slice blue"), "{:?}", m.refusals);
    // A WorkerSlice in another cluster's namespace does not speak for it.
    let mut forged = worker(&p, "b", vec![group("web", "x", &["10.80.16.9"])]);
    forged.metadata.namespace = Some(slice_api::crd::cluster_namespace("a"));
    assert_eq!(merge(&p, &[forged]).pods(), 0);
}

#[test]
fn reports_past_the_bounds_are_dropped_whole() {
    let p = plan_with(4);
    let many: Vec<String> = (0..=MAX_PODS_PER_CLUSTER as u32)
        .map(|i| std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 80, 0, 2)) + i).to_string())
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let workers =
        [worker(&p, "a", vec![group("web", "x", &many)]), worker(&p, "b", vec![group("web", "y", &["10.80.64.2"])])];
    let m = merge(&p, &workers);
    assert_eq!(m.pods(), 1, "a's report is dropped, b's stays");
    assert!(m.refusals[0].contains("cluster a reports 4097 pods"), "{:?}", m.refusals);
    // A malformed group (a named port with protocol ICMP) goes; the rest stays.
    let mut bad = group("web", "x", &["10.80.0.9"]);
    bad.ports = vec![slice_api::policy::NamedPort { name: "p".into(), port: 1, protocol: "ICMP".into() }];
    let m = merge(&p, &[worker(&p, "a", vec![bad, group("web", "y", &["10.80.0.10"])])]);
    assert_eq!(m.pods(), 1);
    assert!(m.refusals[0].contains("is not valid"), "{:?}", m.refusals);
}

#[test]
fn a_dual_stack_cluster_speaks_for_both_of_its_prefixes_and_no_other() {
    let spec: SliceConfigSpec = serde_json::from_value(json!({
        "sliceSubnet": "10.80.0.0/16", "secondarySliceSubnet": "fd00:80::/48", "clusters": ["a", "b"],
        "namespaces": [{"namespace": "web"}],
    }))
    .unwrap();
    let clusters: Vec<_> = ["a", "b"]
        .iter()
        .map(|c| slice_api::crd::MemberCluster::new(c, slice_api::crd::MemberClusterSpec::default()))
        .collect();
    let p = planner::plan(&[SliceConfig::new("blue", spec)], &clusters, &[]).remove(0);
    // a: 10.80.0.0/20 and fd00:80::/52; b: 10.80.16.0/20 and fd00:80:0:1000::/52.
    let workers = [worker(&p, "a", vec![group("web", "x", &["10.80.0.2", "fd00:80::2", "fd00:80:0:1000::9"])])];
    let m = merge(&p, &workers);
    assert_eq!(m.for_cluster("b"), vec![group("web", "x", &["10.80.0.2", "fd00:80::2"])]);
    assert_eq!(m.refusals.len(), 1, "{:?}", m.refusals);
    assert!(
        m.refusals[0].contains("fd00:80:0:1000::9 are not inside its prefix 10.80.0.0/20 or fd00:80::/52"),
        "{:?}",
        m.refusals
    );
}
