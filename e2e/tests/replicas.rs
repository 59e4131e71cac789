//! Gateway replicas through the whole control plane (issue 13): a slice with
//! `gateway.replicas: 2` over c1 and c2 (two nodes each) and c3 (one node). The workers make a
//! StatefulSet, a key and a Service per replica; the lab's kubelet runs each replica on its own
//! node with its own key and endpoint, and leaves c3's second replica `Pending` (the
//! anti-affinity finds no node); every replica of c1 shakes hands with both of c2's and the
//! other way round (each its own WireGuard peer, as the hub hands them out), and each Up
//! replica's status, from its own metrics, has a live tunnel to both other clusters. Pods of c1
//! and c2 reaching each other is a second test (it needed the node agents' routes over every
//! replica (see it). Needs root and the binaries (`slice-gateway`, `slice-cni`,
//! `slice-operator`); fails (does not skip) without them.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use e2e::control::{self, ControlPlane, LabEnv};
use e2e::{Lab, Pod, PodSpec};

/// Lab prefixes no other test uses, one per test of this file (they run at once).
const PREFIX: &str = "grp";
const PREFIX_PODS: &str = "grq";
const STEP: Duration = Duration::from_secs(20);
/// How long the replicas get to shake hands with each other (the probes run every 200 ms).
const HANDSHAKES: Duration = Duration::from_secs(60);

fn slice_addr(pod: &Pod) -> Ipv4Addr {
    pod.ipv4("slice0").unwrap_or_else(|e| panic!("{e:#}"))
}

/// The keys the replica `ordinal` of `cluster` has shaken hands with (`wg show … latest-handshakes`
/// with a time other than 0).
fn handshaken(cp: &ControlPlane, cluster: &str, ordinal: u32) -> Vec<String> {
    let text = cp.replica_wg("blue", cluster, ordinal, &["show", "{if}", "latest-handshakes"]).unwrap_or_default();
    let mut keys: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let key = words.next()?;
            (words.next()? != "0").then(|| key.to_owned())
        })
        .collect();
    keys.sort();
    keys
}

/// Each replica's (ordinal, state, node, key) in `cluster`'s WorkerSlice status.
fn replicas_status(cp: &ControlPlane, cluster: &str) -> Vec<(u32, String, Option<String>, Option<String>)> {
    let view = cp.hub_view();
    let ws = view.workers.iter().find(|w| w.spec.cluster == cluster).expect("the WorkerSlice");
    let status = ws.status.as_ref().expect("a status");
    status.gateway_replicas.iter().map(|r| (r.ordinal, r.state.clone(), r.node.clone(), r.public_key.clone())).collect()
}

/// The lab with slice `blue` over c1, c2 (two nodes each) and c3 (one node), two gateway
/// replicas per cluster; torn down when the guard drops, however the test ends.
fn slice_with_two_replicas(prefix: &str) -> LabEnv {
    e2e::require_root().expect("root");
    let lab = Lab::new(prefix).expect("lab (needs root; build the bins first)");
    let mut env = LabEnv { cp: ControlPlane::new(), lab: Some(lab) };
    let members = [("c1", 2, false), ("c2", 2, false), ("c3", 1, false)];
    let mut manifest = control::across_manifest("blue", "10.80.0.0/16", &["shop"], &members).expect("manifest");
    manifest.slices[0].spec.gateway.replicas = 2;
    env.apply(&manifest).unwrap_or_else(|e| panic!("{e:#}"));
    env
}

#[test]
fn two_replicas_per_cluster_each_with_its_own_key_node_and_tunnels() {
    let mut env = slice_with_two_replicas(PREFIX);
    let LabEnv { cp, lab } = &mut env;
    let lab = lab.as_ref().expect("the lab");

    // Each cluster with two nodes runs both replicas, on different nodes; c3 has one node, so
    // its replica 1 is Pending with the scheduler's message and the slice runs on replica 0.
    for cluster in ["c1", "c2"] {
        let running = cp.gateway_replicas("blue", cluster);
        assert_eq!(running.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1], "{cluster}: {running:?}");
        assert_ne!(running[0].1, running[1].1, "{cluster}: the replicas share a node: {running:?}");
        let status = replicas_status(cp, cluster);
        assert_eq!(status.len(), 2, "{cluster}: {status:?}");
        for (i, (ordinal, state, node, key)) in status.iter().enumerate() {
            assert_eq!((*ordinal, state.as_str()), (u32::try_from(i).unwrap(), "Up"), "{cluster}: {status:?}");
            assert_eq!(node.as_deref(), Some(running[i].1.as_str()), "{cluster}: {status:?}");
            // The key the status publishes is the one the replica runs with.
            let runs = cp.replica_wg("blue", cluster, *ordinal, &["show", "{if}", "public-key"]).expect("wg");
            assert_eq!(key.as_deref(), Some(runs.trim()), "{cluster} replica {ordinal}");
        }
        assert_ne!(status[0].3, status[1].3, "{cluster}: one key per replica");
    }
    assert_eq!(cp.gateway_replicas("blue", "c3").iter().map(|r| r.0).collect::<Vec<_>>(), [0]);
    let c3 = cp.hub_view().workers.iter().find(|w| w.spec.cluster == "c3").cloned().expect("c3's WorkerSlice");
    let pending = &c3.status.expect("status").gateway_replicas[1];
    assert_eq!(pending.state, "Pending");
    assert!(pending.reason.contains("didn't match pod anti-affinity rules"), "{}", pending.reason);

    // The hub hands every replica out: c1's spec lists c2's replica 1 with its own endpoint.
    let view = cp.hub_view();
    let c1 = view.workers.iter().find(|w| w.spec.cluster == "c1").expect("c1's WorkerSlice");
    let to_c2 = c1.spec.peers.iter().find(|p| p.cluster == "c2").expect("c2 among c1's peers");
    assert_eq!(to_c2.replicas.iter().map(|r| r.ordinal).collect::<Vec<_>>(), [1], "{to_c2:?}");
    assert!(to_c2.replicas[0].endpoint.is_some() && to_c2.replicas[0].endpoint != to_c2.endpoint, "{to_c2:?}");

    // Every replica of c1 shakes hands with both of c2's, and the other way round.
    let keys = |cluster: &str| -> Vec<String> {
        let mut k: Vec<String> = replicas_status(cp, cluster).into_iter().filter_map(|r| r.3).collect();
        k.sort();
        k
    };
    let (c1_keys, c2_keys) = (keys("c1"), keys("c2"));
    let deadline = Instant::now() + HANDSHAKES;
    let all_shaken = |cp: &ControlPlane| {
        [0, 1].iter().all(|o| c2_keys.iter().all(|k| handshaken(cp, "c1", *o).contains(k)))
            && [0, 1].iter().all(|o| c1_keys.iter().all(|k| handshaken(cp, "c2", *o).contains(k)))
    };
    while !all_shaken(cp) && Instant::now() < deadline {
        cp.tick(lab).expect("a round");
        std::thread::sleep(Duration::from_millis(500));
    }
    for (cluster, peers) in [("c1", &c2_keys), ("c2", &c1_keys)] {
        for ordinal in [0, 1] {
            let seen = handshaken(cp, cluster, ordinal);
            assert!(
                peers.iter().all(|k| seen.contains(k)),
                "{cluster} replica {ordinal} has not shaken hands with every replica of the other cluster: \
                 {seen:?} vs {peers:?}\n{}",
                cp.diagnose(lab)
            );
        }
    }

    // Each replica reads as its own metrics say: once the probes settle, every Up replica of
    // the three clusters has a live tunnel to both other clusters (c3 through its one running
    // replica), none unreachable, no reason; c3's Pending replica keeps the scheduler's reason
    // and has no count (it runs no process).
    let deadline = Instant::now() + HANDSHAKES;
    let every_replica_reaches_all = |cp: &ControlPlane| {
        cp.hub_view().workers.iter().filter(|w| w.spec.slice == "blue").all(|w| {
            let replicas = w.status.as_ref().map(|s| s.gateway_replicas.as_slice()).unwrap_or_default();
            replicas.len() == 2
                && replicas
                    .iter()
                    .filter(|r| r.state == "Up")
                    .all(|r| r.live_tunnels == Some(2) && r.unreachable.is_empty() && r.reason.is_empty())
        })
    };
    while !every_replica_reaches_all(cp) && Instant::now() < deadline {
        cp.tick(lab).expect("a round");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(every_replica_reaches_all(cp), "a replica misses a cluster:\n{}", cp.diagnose(lab));
    let c3 = cp.hub_view().workers.iter().find(|w| w.spec.cluster == "c3").cloned().expect("c3's WorkerSlice");
    let replicas = c3.status.expect("status").gateway_replicas;
    assert_eq!((replicas[0].state.as_str(), replicas[0].live_tunnels), ("Up", Some(2)), "{replicas:?}");
    assert_eq!((replicas[1].state.as_str(), replicas[1].live_tunnels), ("Pending", None), "{replicas:?}");
    let report = slice_api::diagnose::hub_findings(&cp.hub_view());
    assert_eq!(report.of(slice_api::diagnose::check::GATEWAY_REPLICA).count(), 0, "{}", report.render());

    // c1's replica 1 loses its way to c3 (UDP to and from c3's public address dropped on its
    // node, both ways): its own status says so, and diagnose names it at the replica with the
    // fix for its own path (replica 0 still reaches c3); the slice's tunnels, from replica 0,
    // stay up. The rule removed, it reaches c3 again.
    let node = running_node(cp, "c1", 1);
    let c3_address = cp
        .hub_view()
        .clusters
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("c3"))
        .and_then(|c| c.status.as_ref()?.gateway_addresses.first().cloned())
        .expect("c3's gateway address");
    let rule = NodeRule(lab.node("c1", &node).netns_name().to_owned());
    rule.drop_udp_with(&c3_address);
    let c1_replica = |cp: &ControlPlane, ordinal: usize| {
        let view = cp.hub_view();
        let w = view.workers.iter().find(|w| w.spec.cluster == "c1").expect("c1's WorkerSlice");
        w.status.as_ref().expect("status").gateway_replicas[ordinal].clone()
    };
    let deadline = Instant::now() + HANDSHAKES;
    while c1_replica(cp, 1).unreachable.is_empty() && Instant::now() < deadline {
        cp.tick(lab).expect("a round");
        std::thread::sleep(Duration::from_millis(500));
    }
    let cut = c1_replica(cp, 1);
    assert_eq!(
        (cut.state.as_str(), cut.live_tunnels, cut.unreachable.as_slice(), cut.reason.as_str()),
        ("Up", Some(1), ["c3".to_owned()].as_slice(), "no live tunnel to c3"),
        "{}",
        cp.diagnose(lab)
    );
    assert_eq!(c1_replica(cp, 0).unreachable, Vec::<String>::new(), "replica 0 is not cut");
    let report = slice_api::diagnose::hub_findings(&cp.hub_view());
    let found: Vec<_> = report.of(slice_api::diagnose::check::GATEWAY_REPLICA).collect();
    assert_eq!(found.len(), 1, "{}", report.render());
    assert_eq!(found[0].place, format!("slice blue in cluster c1: gateway replica 1 on node {node}"));
    assert!(found[0].fix.starts_with("another replica of c1 reaches c3"), "{}", found[0].fix);
    let view = cp.hub_view();
    let c1 = view.workers.iter().find(|w| w.spec.cluster == "c1").expect("c1's WorkerSlice");
    assert!(c1.status.as_ref().expect("status").peers.iter().all(|p| p.state == "Up"), "{}", cp.diagnose(lab));
    // The node agents of c1 route c3's prefix via replica 0 alone, c2's via both.
    let c3_prefix: ipnet::IpNet = c1.spec.peers.iter().find(|p| p.cluster == "c3").expect("c3").prefix.parse().unwrap();
    let vias_to_c3 = |lab: &Lab| -> Vec<usize> {
        lab.cluster("c1")
            .nodes()
            .iter()
            .map(|n| {
                let config = n.agent_config().expect("the agent's configuration");
                let on = config.slices.iter().find(|s| s.name == "blue").expect("blue on the node");
                on.remote_routes.iter().find(|r| r.prefix == c3_prefix).map_or(0, |r| 1 + r.also_via.len())
            })
            .collect()
    };
    let wait_vias = |cp: &mut ControlPlane, want: usize| {
        let deadline = Instant::now() + HANDSHAKES;
        while vias_to_c3(lab).iter().any(|&v| v != want) && Instant::now() < deadline {
            cp.tick(lab).expect("a round");
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(
            vias_to_c3(lab),
            [want, want],
            "replicas that c1's nodes route c3's prefix via\n{}",
            cp.diagnose(lab)
        );
    };
    wait_vias(cp, 1);
    drop(rule);
    let deadline = Instant::now() + HANDSHAKES;
    while !c1_replica(cp, 1).unreachable.is_empty() && Instant::now() < deadline {
        cp.tick(lab).expect("a round");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(c1_replica(cp, 1).live_tunnels, Some(2), "{}", cp.diagnose(lab));
    wait_vias(cp, 2);
}

/// The node gateway replica `ordinal` of `cluster` runs on.
fn running_node(cp: &ControlPlane, cluster: &str, ordinal: u32) -> String {
    let running = cp.gateway_replicas("blue", cluster);
    running.into_iter().find(|r| r.0 == ordinal).map(|r| r.1).expect("the replica runs")
}

/// An nft table of this test's in a node's namespace, deleted however the test ends.
struct NodeRule(String);

impl NodeRule {
    /// Drops UDP forwarded to or from `address` (what the node's pods send and receive).
    fn drop_udp_with(&self, address: &str) {
        let ns = &self.0;
        let cmd = format!(
            "ip netns exec {ns} nft add table ip greplfault && \
             ip netns exec {ns} nft add chain ip greplfault forwarded '{{ type filter hook forward priority -10; policy accept; }}' && \
             ip netns exec {ns} nft add rule ip greplfault forwarded ip daddr {address} meta l4proto udp drop && \
             ip netns exec {ns} nft add rule ip greplfault forwarded ip saddr {address} meta l4proto udp drop"
        );
        let out = std::process::Command::new("sh").args(["-c", &cmd]).output().expect("sh");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for NodeRule {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "delete", "table", "ip", "greplfault"])
            .output();
    }
}

/// Pods of c1 and c2 reach each other across the clusters with two replicas each: the remote
/// gateways spread flows over all of a cluster's replicas (their peer group), and the node
/// agents route each remote prefix over a nexthop group of every live replica, so a packet out
/// of either replica passes the routers' strict reverse-path check (before the groups, the
/// replica that was not `via` had its packets dropped there).
#[test]
fn pods_reach_each_other_across_clusters_with_two_replicas() {
    let env = slice_with_two_replicas(PREFIX_PODS);
    let (cp, lab) = (&env.cp, env.lab());
    let run = |cluster: &str, node: &str, name: &str| {
        control::run_pod_retrying(lab.node(cluster, node), &PodSpec::new("shop", name), STEP).expect("a pod")
    };
    let a = run("c1", "n1", "a");
    let b = run("c2", "n2", "b");
    for (from, to) in [(&a, &b), (&b, &a)] {
        if let Err(e) = control::first_packet(from, slice_addr(to), Instant::now(), STEP) {
            panic!("{} → {}: {e:#}\n{}", from.lab_name(), to.lab_name(), cp.diagnose(lab));
        }
    }
}
