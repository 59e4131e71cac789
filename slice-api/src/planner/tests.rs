use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::*;

mod dual_stack;
use crate::crd::{MemberClusterSpec, SliceConfigSpec, SliceConfigStatus, WorkerSliceStatus, cluster_namespace};

fn slice(name: &str, subnet: &str, max: u32, clusters: &[&str], created: i64) -> SliceConfig {
    let spec: SliceConfigSpec = serde_json::from_value(serde_json::json!({
        "sliceSubnet": subnet,
        "maxClusters": max,
        "clusters": clusters,
        "namespaces": [{"namespace": "web"}],
    }))
    .unwrap();
    let mut s = SliceConfig::new(name, spec);
    s.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    s.metadata.generation = Some(1);
    s
}

fn member(name: &str) -> MemberCluster {
    MemberCluster::new(name, MemberClusterSpec::default())
}

/// The hub as the planner's caller: records allocations and makes the WorkerSlices match,
/// keeping what workers reported in their status.
#[derive(Debug, Clone, Default)]
struct Hub {
    slices: Vec<SliceConfig>,
    clusters: Vec<MemberCluster>,
    workers: Vec<WorkerSlice>,
}

impl Hub {
    fn apply(&mut self) -> Vec<SlicePlan> {
        let plans = plan(&self.slices, &self.clusters, &self.workers);
        for p in &plans {
            let s = self.slices.iter_mut().find(|s| s.name_any() == p.name).unwrap();
            let st = s.status.get_or_insert_with(SliceConfigStatus::default);
            st.vni = p.vni;
            st.clusters = p.allocations.clone();
            st.conditions = p.conditions.clone();
            let mut next = Vec::new();
            for spec in &p.workers {
                let old = self.workers.iter().find(|w| w.spec.slice == p.name && w.spec.cluster == spec.cluster);
                let mut w = WorkerSlice::new(&p.name, spec.clone());
                w.metadata.namespace = Some(cluster_namespace(&spec.cluster));
                w.status = old.and_then(|o| o.status.clone());
                next.push(w);
            }
            self.workers.retain(|w| w.spec.slice != p.name);
            self.workers.extend(next);
        }
        let names: Vec<String> = self.slices.iter().map(ResourceExt::name_any).collect();
        self.workers.retain(|w| names.contains(&w.spec.slice));
        plans
    }

    fn worker(&self, slice: &str, cluster: &str) -> Option<&WorkerSlice> {
        self.workers.iter().find(|w| w.spec.slice == slice && w.spec.cluster == cluster)
    }

    fn report(&mut self, slice: &str, cluster: &str, key: &str, endpoint: Option<&str>, ready: bool) {
        let w = self.workers.iter_mut().find(|w| w.spec.slice == slice && w.spec.cluster == cluster).unwrap();
        w.status = Some(WorkerSliceStatus {
            gateway_public_key: Some(key.to_owned()),
            gateway_endpoint: endpoint.map(str::to_owned),
            conditions: vec![Condition::new(READY, ready, if ready { "Up" } else { "GatewayPending" }, "")],
            ..WorkerSliceStatus::default()
        });
    }
}

fn hub(clusters: &[&str]) -> Hub {
    Hub { clusters: clusters.iter().map(|c| member(c)).collect(), ..Hub::default() }
}

#[test]
fn three_clusters_get_prefixes_vni_and_each_other_as_peers() {
    let mut h = hub(&["c1", "c2", "c3"]);
    h.slices.push(slice("blue", "10.80.0.0/16", 16, &["c3", "c1", "c2"], 1));
    let plans = h.apply();
    let p = &plans[0];
    assert_eq!(p.vni, Some(VNI_BASE));
    let prefixes: Vec<(&str, &str)> =
        p.workers.iter().map(|w| (w.cluster.as_str(), w.cluster_prefix.as_str())).collect();
    assert_eq!(prefixes, [("c1", "10.80.0.0/20"), ("c2", "10.80.16.0/20"), ("c3", "10.80.32.0/20")]);
    let c1 = &p.workers[0];
    assert_eq!(c1.namespaces, ["web"]);
    assert_eq!(c1.node_prefix_length, 26);
    assert_eq!(c1.peers.iter().map(|x| x.cluster.as_str()).collect::<Vec<_>>(), ["c2", "c3"]);
    assert!(c1.peers.iter().all(|x| x.public_key.is_none() && x.endpoint.is_none()));
    let ready = condition(&p.conditions, READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ClustersNotReady"));
}

#[test]
fn published_keys_and_endpoints_reach_the_peers_and_readiness_aggregates() {
    let mut h = hub(&["c1", "c2"]);
    h.slices.push(slice("blue", "10.80.0.0/16", 16, &["c1", "c2"], 1));
    h.apply();
    h.report("blue", "c1", "K1", Some("198.18.0.1:31000"), true);
    h.report("blue", "c2", "K2", None, false);
    let plans = h.apply();
    let c1 = &plans[0].workers[0];
    assert_eq!(c1.peers[0].public_key.as_deref(), Some("K2"));
    assert_eq!(c1.peers[0].endpoint, None, "c2 is behind NAT");
    let c2 = &plans[0].workers[1];
    assert_eq!(c2.peers[0].endpoint.as_deref(), Some("198.18.0.1:31000"));
    let ready = condition(&plans[0].conditions, READY).unwrap();
    assert!(ready.message.contains("c2: GatewayPending"), "{}", ready.message);
    assert!(!plans[0].allocations[1].ready);
    h.report("blue", "c2", "K2", None, true);
    let plans = h.apply();
    assert_eq!(condition(&plans[0].conditions, READY).unwrap().status, "True");
}

/// Three clusters peered, each with its key and endpoint distributed.
fn peered_three() -> Hub {
    let mut h = hub(&["c1", "c2", "c3"]);
    h.slices.push(slice("blue", "10.80.0.0/16", 16, &["c1", "c2", "c3"], 1));
    h.apply();
    h.report("blue", "c1", "K1", Some("198.18.0.1:31000"), true);
    h.report("blue", "c2", "K2", Some("198.18.0.2:31000"), true);
    h.report("blue", "c3", "K3", Some("198.18.0.3:31000"), true);
    h.apply();
    h
}

fn peer_of<'a>(plans: &'a [SlicePlan], of: &str, peer: &str) -> &'a WorkerPeer {
    let spec = plans[0].workers.iter().find(|w| w.cluster == of).unwrap();
    spec.peers.iter().find(|p| p.cluster == peer).unwrap()
}

/// Issue 20, High 1: c1 rewrites its own WorkerSlice to say it is c2, with its own key and
/// endpoint. The hub must keep c2's key and endpoint in c3's spec, and say why.
#[test]
fn a_cluster_cannot_publish_for_another_by_renaming_its_worker_slice() {
    let mut h = peered_three();
    let i = h.workers.iter().position(|w| w.spec.cluster == "c1").unwrap();
    let mut forged = h.workers.remove(i);
    assert_eq!(forged.metadata.namespace.as_deref(), Some("slicenet-cluster-c1"));
    forged.spec.cluster = "c2".into();
    forged.status.as_mut().unwrap().gateway_public_key = Some("K1".into());
    forged.status.as_mut().unwrap().gateway_endpoint = Some("198.18.0.1:31000".into());
    // First in the list, where a "first WorkerSlice of cluster c2" lookup would find it.
    h.workers.insert(0, forged);
    let plans = plan(&h.slices, &h.clusters, &h.workers);
    let c2_for_c3 = peer_of(&plans, "c3", "c2");
    assert_eq!(c2_for_c3.public_key.as_deref(), Some("K2"), "c3 would encrypt c2's traffic to c1");
    assert_eq!(c2_for_c3.endpoint.as_deref(), Some("198.18.0.2:31000"));
    let ready = condition(&plans[0].conditions, READY).unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "PublicationRefused"));
    assert!(ready.message.contains("WorkerSlice slicenet-cluster-c1/blue names cluster c2"), "{}", ready.message);
    // A WorkerSlice under another slice's name is ignored the same way.
    let mut h = peered_three();
    let w = h.workers.iter_mut().find(|w| w.spec.cluster == "c1").unwrap();
    w.metadata.name = Some("red".into());
    let plans = plan(&h.slices, &h.clusters, &h.workers);
    assert!(condition(&plans[0].conditions, READY).unwrap().message.contains("slicenet-cluster-c1/red"));
}

#[test]
fn a_key_published_by_two_clusters_stays_with_the_one_it_was_distributed_for() {
    let mut h = peered_three();
    // c1 now publishes c2's key (to receive what c3 encrypts for c2).
    h.report("blue", "c1", "K2", Some("198.18.0.1:31000"), true);
    let plans = plan(&h.slices, &h.clusters, &h.workers);
    assert_eq!(peer_of(&plans, "c3", "c2").public_key.as_deref(), Some("K2"));
    assert_eq!(peer_of(&plans, "c3", "c1").public_key, None, "c1's claim on K2 is refused");
    let ready = condition(&plans[0].conditions, READY).unwrap();
    assert_eq!(ready.reason, "PublicationRefused");
    assert!(ready.message.contains("it stays with c2"), "{}", ready.message);
    // Applied and planned again: stable, c2 keeps its key.
    h.apply();
    let plans = h.apply();
    assert_eq!(peer_of(&plans, "c1", "c2").public_key.as_deref(), Some("K2"));
    assert_eq!(peer_of(&plans, "c3", "c1").public_key, None);
    // Two newcomers with one key, distributed for neither: refused for both.
    let mut h = hub(&["c1", "c2"]);
    h.slices.push(slice("blue", "10.80.0.0/16", 16, &["c1", "c2"], 1));
    h.apply();
    h.report("blue", "c1", "KX", None, true);
    h.report("blue", "c2", "KX", None, true);
    let plans = h.apply();
    assert_eq!(peer_of(&plans, "c1", "c2").public_key, None);
    assert_eq!(peer_of(&plans, "c2", "c1").public_key, None);
    assert!(condition(&plans[0].conditions, READY).unwrap().message.contains("distributed for none of them"));
}

#[test]
fn endpoints_inside_slice_pod_or_service_ranges_are_not_distributed() {
    let mut h = peered_three();
    h.clusters[1].spec.pod_cidrs = vec!["10.244.0.0/16".into()];
    h.clusters[2].spec.service_cidrs = vec!["fd00:10:96::/112".into()];
    for (endpoint, why) in [
        ("10.80.0.7:51820", "the subnet of slice blue"),
        ("10.244.3.4:51820", "the pod CIDR 10.244.0.0/16 of cluster c2"),
        ("[fd00:10:96::1]:51820", "the service CIDR fd00:10:96::/112 of cluster c3"),
        ("127.0.0.1:51820", "loopback"),
        ("0.0.0.0:51820", "unspecified"),
    ] {
        h.report("blue", "c1", "K1", Some(endpoint), true);
        let plans = plan(&h.slices, &h.clusters, &h.workers);
        assert_eq!(peer_of(&plans, "c2", "c1").endpoint, None, "{endpoint} was distributed");
        assert_eq!(peer_of(&plans, "c2", "c1").public_key.as_deref(), Some("K1"), "the key still is");
        let ready = condition(&plans[0].conditions, READY).unwrap();
        assert!(ready.message.contains(why), "{endpoint}: {}", ready.message);
    }
    h.report("blue", "c1", "K1", Some("gw.c1.example:51820"), true);
    let plans = plan(&h.slices, &h.clusters, &h.workers);
    assert_eq!(peer_of(&plans, "c2", "c1").endpoint.as_deref(), Some("gw.c1.example:51820"), "names are DNS's");
    assert_eq!(condition(&plans[0].conditions, READY).unwrap().status, "True");
}

#[test]
fn too_many_clusters_is_refused_whole_and_the_slice_keeps_running() {
    let mut h = hub(&["c1", "c2", "c3"]);
    h.slices.push(slice("blue", "10.80.0.0/16", 2, &["c1", "c2"], 1));
    h.apply();
    let before = h.workers.clone();
    h.slices[0].spec.clusters.push("c3".into());
    let plans = h.apply();
    let planned = condition(&plans[0].conditions, PLANNED).unwrap();
    assert_eq!((planned.status.as_str(), planned.reason.as_str()), ("False", "TooManyClusters"));
    assert!(planned.message.contains("3 member clusters but maxClusters is 2"), "{}", planned.message);
    assert_eq!(h.workers, before);
}

#[test]
fn invalid_spec_is_refused_with_the_reason() {
    let mut h = hub(&["c1"]);
    h.slices.push(slice("blue", "10.80.0.1/16", 16, &["c1"], 1));
    let plans = h.apply();
    let planned = condition(&plans[0].conditions, PLANNED).unwrap();
    assert_eq!(planned.reason, "InvalidSpec");
    assert!(planned.message.contains("did you mean 10.80.0.0/16"));
    assert!(plans[0].workers.is_empty());
}

#[test]
fn unregistered_clusters_wait_and_are_named() {
    let mut h = hub(&["c1"]);
    h.slices.push(slice("blue", "10.80.0.0/16", 16, &["c1", "c9"], 1));
    let plans = h.apply();
    assert_eq!(plans[0].workers.len(), 1);
    let planned = condition(&plans[0].conditions, PLANNED).unwrap();
    assert_eq!(planned.reason, "ClustersNotRegistered");
    assert!(planned.message.contains("c9"));
}

#[test]
fn lost_status_is_recovered_from_worker_slices() {
    let mut h = hub(&["a", "b", "c"]);
    h.slices.push(slice("blue", "10.80.0.0/16", 16, &["a", "b", "c"], 1));
    h.apply();
    h.slices[0].spec.clusters.retain(|c| c != "a");
    h.apply();
    let b = h.worker("blue", "b").unwrap().spec.cluster_prefix.clone();
    h.slices[0].status = None;
    h.slices[0].spec.clusters.push("d".into());
    h.clusters.push(member("d"));
    h.apply();
    assert_eq!(h.worker("blue", "b").unwrap().spec.cluster_prefix, b);
    assert_eq!(h.slices[0].status.as_ref().unwrap().vni, Some(VNI_BASE));
    assert_eq!(h.worker("blue", "d").unwrap().spec.cluster_prefix, "10.80.0.0/20", "a's freed index is reused");
}

#[test]
fn deleting_slice_plans_no_workers_and_a_duplicate_vni_moves_to_the_newer_slice() {
    let mut h = hub(&["c1"]);
    h.slices.push(slice("old", "10.80.0.0/16", 16, &["c1"], 1));
    h.slices.push(slice("new", "10.80.0.0/16", 16, &["c1"], 2));
    h.apply();
    h.slices[1].status.as_mut().unwrap().vni = Some(VNI_BASE);
    let plans = h.apply();
    assert_eq!(
        plans.iter().map(|p| (p.name.as_str(), p.vni)).collect::<Vec<_>>(),
        [("new", Some(VNI_BASE + 1)), ("old", Some(VNI_BASE))]
    );
    h.slices[0].metadata.deletion_timestamp = Some(Time(Timestamp::from_second(3).unwrap()));
    let plans = h.apply();
    assert!(plans.iter().find(|p| p.name == "old").unwrap().workers.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Join(usize),
    Leave(usize),
    AddMember(usize, usize),
    RemoveMember(usize, usize),
    AddSlice(usize),
    DeleteSlice(usize),
    LoseStatus(usize),
    Report(usize, usize),
}

const CLUSTERS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];
const SLICES: [&str; 4] = ["s0", "s1", "s2", "s3"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6usize).prop_map(Op::Join),
        (0..6usize).prop_map(Op::Leave),
        (0..4usize, 0..6usize).prop_map(|(s, c)| Op::AddMember(s, c)),
        (0..4usize, 0..6usize).prop_map(|(s, c)| Op::RemoveMember(s, c)),
        (0..4usize).prop_map(Op::AddSlice),
        (0..4usize).prop_map(Op::DeleteSlice),
        (0..4usize).prop_map(Op::LoseStatus),
        (0..4usize, 0..6usize).prop_map(|(s, c)| Op::Report(s, c)),
    ]
}

fn run(h: &mut Hub, op: &Op, clock: &mut i64) {
    *clock += 1;
    match *op {
        Op::Join(c) => {
            if !h.clusters.iter().any(|m| m.name_any() == CLUSTERS[c]) {
                h.clusters.push(member(CLUSTERS[c]));
            }
        }
        Op::Leave(c) => h.clusters.retain(|m| m.name_any() != CLUSTERS[c]),
        Op::AddMember(s, c) => {
            if let Some(sl) = h.slices.iter_mut().find(|x| x.name_any() == SLICES[s])
                && !sl.spec.clusters.iter().any(|x| x == CLUSTERS[c])
            {
                sl.spec.clusters.push(CLUSTERS[c].to_owned());
            }
        }
        Op::RemoveMember(s, c) => {
            if let Some(sl) = h.slices.iter_mut().find(|x| x.name_any() == SLICES[s]) {
                sl.spec.clusters.retain(|x| x != CLUSTERS[c]);
            }
        }
        Op::AddSlice(s) => {
            if !h.slices.iter().any(|x| x.name_any() == SLICES[s]) {
                // Small maxClusters for some slices so refusals happen.
                let max = [2, 4, 8, 4][s];
                h.slices.push(slice(SLICES[s], "10.80.0.0/16", max, &[], *clock));
            }
        }
        Op::DeleteSlice(s) => h.slices.retain(|x| x.name_any() != SLICES[s]),
        Op::LoseStatus(s) => {
            if let Some(sl) = h.slices.iter_mut().find(|x| x.name_any() == SLICES[s]) {
                sl.status = None;
            }
        }
        Op::Report(s, c) => {
            if h.worker(SLICES[s], CLUSTERS[c]).is_some() {
                h.report(SLICES[s], CLUSTERS[c], &format!("key-{c}"), Some("198.18.0.9:1"), true);
            }
        }
    }
}

/// (slice, cluster) → (vni, prefix) of the WorkerSlices that exist.
fn placed(h: &Hub) -> BTreeMap<(String, String), (u32, String)> {
    h.workers
        .iter()
        .map(|w| ((w.spec.slice.clone(), w.spec.cluster.clone()), (w.spec.vni, w.spec.cluster_prefix.clone())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plans_stay_sound_and_stable_under_any_sequence(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Hub::default();
        let mut clock = 0;
        for op in &ops {
            let before = placed(&h);
            run(&mut h, op, &mut clock);
            let plans = h.apply();

            // Determinism: the same world in another order gives the same plan.
            let mut shuffled = h.clone();
            shuffled.slices.reverse();
            shuffled.clusters.reverse();
            shuffled.workers.reverse();
            prop_assert_eq!(plan(&shuffled.slices, &shuffled.clusters, &shuffled.workers), plan(&h.slices, &h.clusters, &h.workers));

            // Two slices never share a VNI.
            let vnis: Vec<u32> = plans.iter().filter_map(|p| p.vni).collect();
            let unique: std::collections::BTreeSet<u32> = vnis.iter().copied().collect();
            prop_assert_eq!(vnis.len(), unique.len());

            for p in &plans {
                // No overlapping cluster prefixes in a slice, all inside the subnet.
                let nets: Vec<ipnet::IpNet> = p.workers.iter().map(|w| w.cluster_prefix.parse().unwrap()).collect();
                for (i, a) in nets.iter().enumerate() {
                    prop_assert!("10.80.0.0/16".parse::<ipnet::IpNet>().unwrap().contains(a));
                    for b in &nets[i + 1..] {
                        prop_assert!(!a.contains(b) && !b.contains(a), "{} overlaps {}", a, b);
                    }
                }
                // Never more than maxClusters, and a refusal says why.
                let s = h.slices.iter().find(|s| s.name_any() == p.name).unwrap();
                prop_assert!(p.workers.len() <= s.spec.max_clusters as usize);
                let planned = condition(&p.conditions, PLANNED).unwrap();
                let registered = s.spec.clusters.iter().filter(|c| h.clusters.iter().any(|m| m.name_any() == **c)).count();
                if registered > s.spec.max_clusters as usize {
                    prop_assert_eq!(planned.reason.as_str(), "TooManyClusters");
                }
                // Peers are exactly the other planned clusters.
                for w in &p.workers {
                    prop_assert_eq!(w.peers.len(), p.workers.len() - 1);
                }
            }

            // Stability: what existed before and still exists kept its VNI and prefix.
            for (key, was) in &before {
                if let Some(now) = placed(&h).get(key) {
                    prop_assert_eq!(now, was, "{:?} renumbered after {:?}", key, op);
                }
            }

            // Re-planning without a change changes no WorkerSlice, and the plan is a fixed point
            // once the hub has written it (readiness reasons may move on once, as WorkerSlices
            // now exist).
            let again = h.clone();
            let replans = h.apply();
            let specs = |ps: &[SlicePlan]| ps.iter().map(|p| (p.vni, p.workers.clone())).collect::<Vec<_>>();
            prop_assert_eq!(specs(&replans), specs(&plans));
            prop_assert_eq!(placed(&again), placed(&h));
            prop_assert_eq!(h.apply(), replans);
        }
    }
}

/// A WireGuard key (base64 of 32 bytes) made of byte `b`.
fn wg_key(b: u8) -> String {
    crate::wireguard::Key([b; 32]).to_base64()
}

/// Issue 13: every published replica of a peer cluster beyond the first reaches the others'
/// specs; a duplicate or malformed key, an endpoint inside the slice subnet, an ordinal beyond
/// what the slice asks for, and replicas of a cluster whose first replica is not handed out
/// are left out, with a refusal where something was wrong.
#[test]
fn gateway_replicas_reach_the_peers_checked() {
    use crate::crd::{GatewayReplicaStatus, PeerReplica};
    let mut h = hub(&["c1", "c2"]);
    let mut s = slice("blue", "10.80.0.0/16", 16, &["c1", "c2"], 1);
    s.spec.gateway.replicas = 3;
    h.slices.push(s);
    h.apply();
    h.report("blue", "c1", &wg_key(1), Some("198.18.0.1:31000"), true);
    h.report("blue", "c2", &wg_key(2), Some("198.18.0.2:31000"), true);
    let replica = |ordinal: u32, key: &str, endpoint: Option<&str>| GatewayReplicaStatus {
        ordinal,
        public_key: Some(key.to_owned()),
        endpoint: endpoint.map(str::to_owned),
        node: None,
        state: "Up".into(),
        ..GatewayReplicaStatus::default()
    };
    let set = |h: &mut Hub, cluster: &str, replicas: Vec<GatewayReplicaStatus>| {
        let w = h.workers.iter_mut().find(|w| w.spec.cluster == cluster).unwrap();
        w.status.as_mut().unwrap().gateway_replicas = replicas;
    };
    set(
        &mut h,
        "c1",
        vec![
            replica(0, &wg_key(1), Some("198.18.0.1:31000")),
            replica(1, &wg_key(11), Some("198.18.0.1:31001")),
            replica(2, &wg_key(12), Some("10.80.0.9:31002")),
            replica(3, &wg_key(13), Some("198.18.0.1:31003")),
        ],
    );
    set(&mut h, "c2", vec![replica(1, &wg_key(11), None), replica(2, "not a key", None)]);
    let plans = h.apply();
    let to_c2 = peer_of(&plans, "c2", "c1");
    assert_eq!(
        to_c2.replicas,
        [PeerReplica { ordinal: 2, public_key: wg_key(12), endpoint: None }],
        "replica 1's key is also c2's replica 1's; replica 2's endpoint is in the slice subnet; ordinal 3 is beyond 3 replicas"
    );
    assert!(peer_of(&plans, "c1", "c2").replicas.is_empty());
    let ready = condition(&plans[0].conditions, READY).unwrap();
    for needle in [
        "cluster c1 published gateway replica 1 key",
        "which c2 replica 1 also publish(es)",
        "cluster c1 published gateway replica 2 endpoint 10.80.0.9:31002, inside the slice's subnet",
        "cluster c2 published gateway replica 2 key \"not a key\", which is not a WireGuard key",
    ] {
        assert!(ready.message.contains(needle), "{needle} in {}", ready.message);
    }
    // c2 fixes its replica: c1's replica 1 and c2's replica 1 both reach the other side.
    set(&mut h, "c2", vec![replica(1, &wg_key(21), None)]);
    let plans = h.apply();
    assert_eq!(peer_of(&plans, "c2", "c1").replicas.iter().map(|r| r.ordinal).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        peer_of(&plans, "c1", "c2").replicas,
        [PeerReplica { ordinal: 1, public_key: wg_key(21), endpoint: None }],
        "behind NAT: no endpoint"
    );
    // c2's first replica withdrawn: none of its replicas is handed out.
    h.workers.iter_mut().find(|w| w.spec.cluster == "c2").unwrap().status.as_mut().unwrap().gateway_public_key = None;
    let plans = h.apply();
    assert!(peer_of(&plans, "c1", "c2").replicas.is_empty());
}
