//! Dual-stack and IPv6-only slices in the planner: each family split by the same rules, one
//! stable index per cluster for both.

use super::*;

fn dual(name: &str, clusters: &[&str], created: i64) -> SliceConfig {
    let mut s = slice(name, "10.80.0.0/16", 16, clusters, created);
    s.spec.secondary_slice_subnet = Some("fd00:80::/48".into());
    s
}

/// (cluster, primary prefix, secondary prefix) of every planned worker.
fn prefixes(p: &SlicePlan) -> Vec<(String, String, String)> {
    p.workers
        .iter()
        .map(|w| {
            let second = w.secondary_family.as_ref().map(|f| f.cluster_prefix.clone()).unwrap_or_default();
            (w.cluster.clone(), w.cluster_prefix.clone(), second)
        })
        .collect()
}

fn row(c: &str, v4: &str, v6: &str) -> (String, String, String) {
    (c.into(), v4.into(), v6.into())
}

#[test]
fn both_families_take_the_same_stable_index() {
    let mut h = hub(&["c1", "c2", "c3"]);
    h.slices.push(dual("blue", &["c1", "c2", "c3"], 1));
    let plans = h.apply();
    assert_eq!(
        prefixes(&plans[0]),
        [
            row("c1", "10.80.0.0/20", "fd00:80::/52"),
            row("c2", "10.80.16.0/20", "fd00:80:0:1000::/52"),
            row("c3", "10.80.32.0/20", "fd00:80:0:2000::/52"),
        ]
    );
    let c1 = &plans[0].workers[0];
    let family = c1.secondary_family.as_ref().unwrap();
    assert_eq!((family.slice_subnet.as_str(), family.node_prefix_length), ("fd00:80::/48", 120));
    // Each peer entry carries both of the peer's prefixes: its gateway holds both.
    let peers: Vec<(&str, &str, Option<&str>)> =
        c1.peers.iter().map(|p| (p.cluster.as_str(), p.prefix.as_str(), p.secondary_prefix.as_deref())).collect();
    assert_eq!(
        peers,
        [("c2", "10.80.16.0/20", Some("fd00:80:0:1000::/52")), ("c3", "10.80.32.0/20", Some("fd00:80:0:2000::/52"))]
    );
    // c2 leaves, c4 joins: c4 takes the free index 1 in both families, the others keep theirs.
    h.clusters.push(member("c4"));
    h.slices[0].spec.clusters = vec!["c1".into(), "c3".into(), "c4".into()];
    let plans = h.apply();
    assert_eq!(
        prefixes(&plans[0]),
        [
            row("c1", "10.80.0.0/20", "fd00:80::/52"),
            row("c3", "10.80.32.0/20", "fd00:80:0:2000::/52"),
            row("c4", "10.80.16.0/20", "fd00:80:0:1000::/52"),
        ]
    );
    // The status lost: the indexes come back from the WorkerSlices, both families with them.
    h.slices[0].status = None;
    let again = plan(&h.slices, &h.clusters, &h.workers);
    assert_eq!(prefixes(&again[0]), prefixes(&plans[0]));
}

#[test]
fn an_ipv6_only_slice_plans_like_an_ipv4_one() {
    let mut h = hub(&["c1", "c2"]);
    h.slices.push(slice("blue", "fd00:80::/48", 4, &["c1", "c2"], 1));
    let plans = h.apply();
    let got: Vec<(&str, &str, u8, bool)> = plans[0]
        .workers
        .iter()
        .map(|w| (w.cluster.as_str(), w.cluster_prefix.as_str(), w.node_prefix_length, w.secondary_family.is_none()))
        .collect();
    assert_eq!(got, [("c1", "fd00:80::/50", 120, true), ("c2", "fd00:80:0:4000::/50", 120, true)]);
    assert_eq!(condition(&plans[0].conditions, PLANNED).unwrap().status, "True");
}

#[test]
fn a_single_family_worker_slice_has_no_secondary_family_in_its_json() {
    let mut h = hub(&["c1"]);
    h.slices.push(slice("blue", "10.80.0.0/16", 16, &["c1"], 1));
    let plans = h.apply();
    let json = serde_json::to_value(&plans[0].workers[0]).unwrap();
    assert_eq!(json.get("secondaryFamily"), None);
    let mut h = hub(&["c1"]);
    h.slices.push(dual("blue", &["c1"], 1));
    let json = serde_json::to_value(&h.apply()[0].workers[0]).unwrap();
    assert_eq!(json["secondaryFamily"]["clusterPrefix"], "fd00:80::/52");
}

#[test]
fn a_bad_secondary_family_refuses_the_whole_spec_and_keeps_what_runs() {
    let mut h = hub(&["c1", "c2"]);
    h.slices.push(dual("blue", &["c1"], 1));
    h.apply();
    let before = h.workers.clone();
    h.slices[0].spec.secondary_slice_subnet = Some("10.81.0.0/16".into());
    h.slices[0].spec.clusters.push("c2".into());
    let plans = h.apply();
    let planned = condition(&plans[0].conditions, PLANNED).unwrap();
    assert_eq!((planned.status.as_str(), planned.reason.as_str()), ("False", "InvalidSpec"));
    assert!(planned.message.contains("secondarySliceSubnet 10.81.0.0/16 is of the same family"), "{}", planned.message);
    assert_eq!(h.workers, before);
}

#[test]
fn an_endpoint_inside_the_secondary_subnet_is_not_distributed() {
    let mut h = hub(&["c1", "c2"]);
    h.slices.push(dual("blue", &["c1", "c2"], 1));
    h.apply();
    h.report("blue", "c1", "K1", Some("[fd00:80::7]:51820"), true);
    h.report("blue", "c2", "K2", Some("198.18.0.2:31000"), true);
    let plans = plan(&h.slices, &h.clusters, &h.workers);
    assert_eq!(peer_of(&plans, "c2", "c1").endpoint, None);
    let ready = condition(&plans[0].conditions, READY).unwrap();
    assert!(ready.message.contains("inside the subnet of slice blue"), "{}", ready.message);
}
