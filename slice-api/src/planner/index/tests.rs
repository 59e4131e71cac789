//! The index's plans against the whole plan ([`super::super::plan`]) of the same objects, after
//! every change of random sequences; and the changes that must replan nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;

use super::*;
use crate::crd::{
    ClusterAllocation, MemberClusterSpec, MemberClusterStatus, SliceConfigSpec, SliceConfigStatus, WorkerPeer,
    WorkerSliceSpec, WorkerSliceStatus, cluster_namespace,
};
use crate::crd::{SlicePeersSpec, peer_page_name};
use crate::planner::{plan, plan_with};

const SLICES: [&str; 4] = ["s0", "s1", "s2", "s3"];
const CLUSTERS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];
/// Subnets, some overlapping, one invalid.
const SUBNETS: [&str; 4] = ["10.80.0.0/16", "10.80.0.0/16", "10.81.0.0/24", "not-a-subnet"];
/// Keys from a small pool, so that two clusters publish the same one.
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
/// Endpoints, some inside a slice subnet or a cluster CIDR, one a host name, one loopback.
const ENDPOINTS: [&str; 5] = ["198.18.0.1:51820", "10.80.3.4:1", "10.96.0.7:9", "gw.example:1", "127.0.0.1:5"];

fn slice(name: &str, subnet: &str, max: u32, clusters: &[String], created: i64) -> SliceConfig {
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

/// One change to the world.
#[derive(Debug, Clone)]
enum Change {
    /// A slice (re)written: subnet, maxClusters, members (bit mask), recorded VNI, recorded index
    /// of its first member, creation time.
    Slice {
        s: usize,
        subnet: usize,
        max: u32,
        members: u8,
        vni: Option<u32>,
        index: Option<u32>,
        created: i64,
    },
    DeleteSlice(usize),
    /// A cluster (re)written: CIDR mask (pod 10.96/16, service 10.80.3/24), uplink, deleting.
    Cluster {
        c: usize,
        cidrs: u8,
        uplink: Option<u64>,
        deleting: bool,
    },
    /// The worker's heartbeat: a MemberCluster status change only.
    Heartbeat {
        c: usize,
        at: i64,
    },
    DeleteCluster(usize),
    /// A WorkerSlice in namespace of `ns`, named `name`, speaking for `(slice, cluster)` (an
    /// impostor unless they match), with a status and peers.
    Worker {
        ns: usize,
        name: usize,
        slice: usize,
        cluster: usize,
        key: Option<usize>,
        endpoint: Option<usize>,
        peers: u8,
        ready: bool,
        vni: u32,
    },
    DeleteWorker {
        ns: usize,
        name: usize,
    },
    /// Only a slice's status changes: its recorded VNI, its first member's recorded index and
    /// readiness (what the hub writes, or loses).
    SliceStatus {
        s: usize,
        vni: Option<u32>,
        index: Option<u32>,
        ready: bool,
    },
    /// The hub writes the planned spec into an existing WorkerSlice (its watch then reports
    /// it), with the pods it adds from the members' reports or without.
    Echo {
        ns: usize,
        name: usize,
        imports: bool,
    },
    /// The hub writes the `SlicePeers` pages of a slice as planned (when its plan pages the
    /// peers), or a stale page: the first page without its first peer; or the pages go.
    Pages {
        s: usize,
        stale: bool,
        delete: bool,
    },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (
            0..4usize,
            0..4usize,
            1..6u32,
            any::<u8>(),
            prop::option::of(4096..4100u32),
            prop::option::of(0..4u32),
            0..3i64
        )
            .prop_map(|(s, subnet, max, members, vni, index, created)| Change::Slice {
                s,
                subnet,
                max,
                members,
                vni,
                index,
                created
            }),
        (0..4usize).prop_map(Change::DeleteSlice),
        (0..4usize, prop::option::of(4096..4100u32), prop::option::of(0..4u32), any::<bool>())
            .prop_map(|(s, vni, index, ready)| Change::SliceStatus { s, vni, index, ready }),
        (0..6usize, 0..4u8, prop::option::of(1000..1002u64), prop::bool::weighted(0.2))
            .prop_map(|(c, cidrs, uplink, deleting)| Change::Cluster { c, cidrs, uplink, deleting }),
        (0..6usize, 0..100i64).prop_map(|(c, at)| Change::Heartbeat { c, at }),
        (0..6usize).prop_map(Change::DeleteCluster),
        (
            (0..6usize, 0..4usize, 0..4usize, 0..6usize, prop::bool::weighted(0.85)),
            (prop::option::of(0..3usize), prop::option::of(0..5usize), any::<u8>(), any::<bool>(), 4096..4100u32)
        )
            .prop_map(|((ns, name, slice, cluster, honest), (key, endpoint, peers, ready, vni))| {
                // Mostly WorkerSlices that speak for themselves.
                let (slice, cluster) = if honest { (name, ns) } else { (slice, cluster) };
                Change::Worker { ns, name, slice, cluster, key, endpoint, peers, ready, vni }
            }),
        (0..6usize, 0..4usize).prop_map(|(ns, name)| Change::DeleteWorker { ns, name }),
        (0..6usize, 0..4usize, any::<bool>()).prop_map(|(ns, name, imports)| Change::Echo { ns, name, imports }),
        (0..4usize, any::<bool>(), any::<bool>()).prop_map(|(s, stale, delete)| Change::Pages { s, stale, delete }),
    ]
}

/// The world as plain lists (the reference's input) beside the index.
#[derive(Default)]
struct World {
    slices: BTreeMap<String, SliceConfig>,
    clusters: BTreeMap<String, MemberCluster>,
    workers: BTreeMap<WorkerKey, WorkerSlice>,
    pages: BTreeMap<String, SlicePeers>,
}

fn members(mask: u8) -> Vec<String> {
    (0..6).filter(|i| mask & (1 << i) != 0).map(|i| CLUSTERS[i].to_owned()).collect()
}

fn apply(world: &mut World, index: &mut PlanIndex, change: &Change) {
    match change {
        Change::Slice { s, subnet, max, members: mask, vni, index: recorded, created } => {
            let clusters = members(*mask);
            let mut sl = slice(SLICES[*s], SUBNETS[*subnet], *max, &clusters, *created);
            if vni.is_some() || recorded.is_some() {
                let mut st = SliceConfigStatus { vni: *vni, ..SliceConfigStatus::default() };
                if let (Some(i), Some(c)) = (recorded, clusters.first()) {
                    st.clusters.push(ClusterAllocation {
                        cluster: c.clone(),
                        index: *i,
                        prefix: String::new(),
                        ready: false,
                        reason: String::new(),
                    });
                }
                sl.status = Some(st);
            }
            world.slices.insert(SLICES[*s].to_owned(), sl.clone());
            index.upsert_slice(sl);
        }
        Change::SliceStatus { s, vni, index: recorded, ready } => {
            let Some(sl) = world.slices.get_mut(SLICES[*s]) else { return };
            let mut st = SliceConfigStatus { vni: *vni, ..SliceConfigStatus::default() };
            for (i, c) in sl.spec.clusters.iter().enumerate() {
                st.clusters.push(ClusterAllocation {
                    cluster: c.clone(),
                    index: if i == 0 { recorded.unwrap_or(0) } else { i as u32 + 1 },
                    prefix: String::new(),
                    ready: *ready,
                    reason: String::new(),
                });
            }
            st.conditions.push(crate::crd::Condition::new("Ready", *ready, "R", ""));
            sl.status = Some(st);
            index.upsert_slice(sl.clone());
        }
        Change::DeleteSlice(s) => {
            world.slices.remove(SLICES[*s]);
            index.remove_slice(SLICES[*s]);
        }
        Change::Cluster { c, cidrs, uplink, deleting } => {
            let mut spec = MemberClusterSpec { uplink_kbps: *uplink, ..MemberClusterSpec::default() };
            if cidrs & 1 != 0 {
                spec.pod_cidrs.push("10.96.0.0/16".to_owned());
            }
            if cidrs & 2 != 0 {
                spec.service_cidrs.push("10.80.3.0/24".to_owned());
            }
            let mut m = MemberCluster::new(CLUSTERS[*c], spec);
            if *deleting {
                m.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).unwrap()));
            }
            m.status = world.clusters.get(CLUSTERS[*c]).and_then(|old| old.status.clone());
            world.clusters.insert(CLUSTERS[*c].to_owned(), m.clone());
            index.upsert_cluster(m);
        }
        Change::Heartbeat { c, at } => {
            if let Some(m) = world.clusters.get_mut(CLUSTERS[*c]) {
                let st = m.status.get_or_insert_with(MemberClusterStatus::default);
                st.last_heartbeat = Some(Timestamp::from_second(*at).unwrap().to_string());
                index.upsert_cluster(m.clone());
            }
        }
        Change::DeleteCluster(c) => {
            world.clusters.remove(CLUSTERS[*c]);
            index.remove_cluster(CLUSTERS[*c]);
        }
        Change::Worker { ns, name, slice, cluster, key, endpoint, peers, ready, vni } => {
            let spec = WorkerSliceSpec {
                slice: SLICES[*slice].to_owned(),
                cluster: CLUSTERS[*cluster].to_owned(),
                cluster_prefix: format!("10.80.{}.0/20", 16 * (*ns % 4)),
                vni: *vni,
                peers: (0..6)
                    .filter(|i| peers & (1 << i) != 0)
                    .map(|i| WorkerPeer {
                        cluster: CLUSTERS[i].to_owned(),
                        prefix: String::new(),
                        secondary_prefix: None,
                        public_key: Some(KEYS[i % 3].to_owned()),
                        endpoint: None,
                        replicas: Vec::new(),
                    })
                    .collect(),
                slice_subnet: "10.80.0.0/16".to_owned(),
                node_prefix_length: 26,
                secondary_family: None,
                mtu: None,
                namespaces: Vec::new(),
                gateway: crate::crd::GatewaySpec::default(),
                imports: Vec::new(),
                pods: Vec::new(),
                isolation: None,
                qos: None,
                peer_pages: None,
            };
            let mut w = WorkerSlice::new(SLICES[*name], spec);
            w.metadata.namespace = Some(cluster_namespace(CLUSTERS[*ns]));
            w.status = Some(WorkerSliceStatus {
                gateway_public_key: key.map(|k| KEYS[k].to_owned()),
                gateway_endpoint: endpoint.map(|e| ENDPOINTS[e].to_owned()),
                conditions: vec![crate::crd::Condition::new(super::super::READY, *ready, "R", "")],
                ..WorkerSliceStatus::default()
            });
            world.workers.insert(key_of(&w), w.clone());
            index.upsert_worker(w);
        }
        Change::Echo { ns, name, imports } => {
            let key = (cluster_namespace(CLUSTERS[*ns]), SLICES[*name].to_owned());
            let Some(w) = world.workers.get_mut(&key) else { return };
            let Some(planned) = index.plan(SLICES[*name]).and_then(|p| p.worker(&w.spec.cluster)) else { return };
            w.spec = planned.clone();
            if *imports {
                // What the hub adds from the members' reports.
                w.spec.pods = vec![
                    serde_json::from_value(serde_json::json!({"namespace": "web", "addresses": ["10.80.0.9"]}))
                        .unwrap(),
                ];
            }
            index.upsert_worker(w.clone());
        }
        Change::Pages { s, stale, delete } => {
            let slice = SLICES[*s];
            let names: Vec<String> =
                world.pages.keys().filter(|n| n.starts_with(&format!("{slice}-"))).cloned().collect();
            if *delete {
                for n in names {
                    world.pages.remove(&n);
                    index.remove_peers(&n);
                }
                return;
            }
            let Some(pages) = index.plan(slice).and_then(|p| p.pages.clone()) else { return };
            for (i, mut peers) in pages.into_iter().enumerate() {
                let page = u32::try_from(i).unwrap();
                if *stale && i == 0 && !peers.is_empty() {
                    peers.remove(0);
                }
                let mut p = SlicePeers::new(
                    &peer_page_name(slice, page),
                    SlicePeersSpec { slice: slice.to_owned(), page, peers },
                );
                p.metadata.namespace = Some(crate::crd::PEERS_NAMESPACE.to_owned());
                world.pages.insert(p.name_any(), p.clone());
                index.upsert_peers(p);
            }
        }
        Change::DeleteWorker { ns, name } => {
            let ns = cluster_namespace(CLUSTERS[*ns]);
            world.workers.remove(&(ns.clone(), SLICES[*name].to_owned()));
            index.remove_worker(&ns, SLICES[*name]);
        }
    }
}

fn reference(world: &World, lists: PeerLists) -> Vec<SlicePlan> {
    let slices: Vec<SliceConfig> = world.slices.values().rev().cloned().collect();
    let clusters: Vec<MemberCluster> = world.clusters.values().rev().cloned().collect();
    let workers: Vec<WorkerSlice> = world.workers.values().rev().cloned().collect();
    let pages: Vec<SlicePeers> = world.pages.values().rev().cloned().collect();
    plan_with(&slices, &clusters, &workers, &pages, lists)
}

fn lists_of(paged: bool) -> PeerLists {
    if paged { PeerLists::Paged } else { PeerLists::Inline }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// After every change, the plans the index keeps (replanning only what the change touched)
    /// are exactly the whole plan of the same objects; with the peers inline or paged (the
    /// pages the hub wrote say whom a key was distributed for).
    #[test]
    fn the_index_plans_exactly_what_the_whole_plan_does(changes in proptest::collection::vec(change(), 1..60), paged in any::<bool>()) {
        let lists = lists_of(paged);
        let mut world = World::default();
        let mut index = PlanIndex::with_lists(lists);
        for change in &changes {
            apply(&mut world, &mut index, change);
            index.replan();
            let kept: Vec<SlicePlan> = index.plans().cloned().collect();
            prop_assert_eq!(kept, reference(&world, lists), "after {:?}", change);
        }
        // A fresh index of the same objects agrees too.
        let slices: Vec<SliceConfig> = world.slices.values().cloned().collect();
        let clusters: Vec<MemberCluster> = world.clusters.values().cloned().collect();
        let workers: Vec<WorkerSlice> = world.workers.values().cloned().collect();
        let pages: Vec<SlicePeers> = world.pages.values().cloned().collect();
        let mut fresh = PlanIndex::new_with(&slices, &clusters, &workers, &pages, lists);
        fresh.replan();
        prop_assert_eq!(fresh.plans().cloned().collect::<Vec<_>>(), index.plans().cloned().collect::<Vec<_>>());
    }

    /// A heartbeat (a MemberCluster status change) replans no slice.
    #[test]
    fn a_heartbeat_replans_nothing(changes in proptest::collection::vec(change(), 1..30), c in 0..6usize, at in 0..100i64, paged in any::<bool>()) {
        let mut world = World::default();
        let mut index = PlanIndex::with_lists(lists_of(paged));
        for change in &changes {
            apply(&mut world, &mut index, change);
        }
        index.replan();
        let before = index.planned();
        apply(&mut world, &mut index, &Change::Heartbeat { c, at });
        prop_assert!(!index.is_dirty());
        prop_assert!(index.replan().is_empty());
        prop_assert_eq!(index.planned(), before);
    }
}

/// `n` registered clusters `m000`…, all in one slice of `10.64.0.0/12` with maxClusters 512.
fn fleet(n: usize) -> (Vec<SliceConfig>, Vec<MemberCluster>) {
    let names: Vec<String> = (0..n).map(|i| format!("m{i:03}")).collect();
    let slices = vec![slice("big", "10.64.0.0/12", 512, &names, 1)];
    let clusters = names.iter().map(|c| MemberCluster::new(c, MemberClusterSpec::default())).collect();
    (slices, clusters)
}

/// The WorkerSlices a hub writes for `plans`, each with its own key and endpoint published.
fn written(plans: &[SlicePlan]) -> Vec<WorkerSlice> {
    let mut out = Vec::new();
    for p in plans {
        for spec in &p.workers {
            let mut w = WorkerSlice::new(&p.name, spec.clone());
            w.metadata.namespace = Some(cluster_namespace(&spec.cluster));
            w.status = Some(WorkerSliceStatus {
                gateway_public_key: Some(format!("key-{}", spec.cluster)),
                gateway_endpoint: Some(format!("198.18.{}.{}:51820", out.len() / 200, out.len() % 200 + 1)),
                ..WorkerSliceStatus::default()
            });
            out.push(w);
        }
    }
    out
}

/// 512 clusters in one slice: every one planned with a prefix of its own inside the subnet and
/// the 511 others as peers with their published keys, by the index as by the whole plan; a
/// cluster leaving and one joining replan only that slice, and keep every other prefix.
#[test]
fn five_hundred_and_twelve_clusters_in_one_slice_are_planned_correctly() {
    let (slices, mut clusters) = fleet(512);
    let first = plan(&slices, &clusters, &[]);
    let workers = written(&first);
    let mut index = PlanIndex::new(&slices, &clusters, &workers);
    index.replan();
    let plans: Vec<SlicePlan> = index.plans().cloned().collect();
    assert_eq!(plans, plan(&slices, &clusters, &workers));
    let p = &plans[0];
    assert_eq!(p.workers.len(), 512);
    let subnet: IpNet = "10.64.0.0/12".parse().unwrap();
    let prefixes: BTreeSet<IpNet> = p.workers.iter().map(|w| w.cluster_prefix.parse().unwrap()).collect();
    assert_eq!(prefixes.len(), 512, "a prefix of its own for each cluster");
    assert!(prefixes.iter().all(|n| subnet.contains(n) && n.prefix_len() == 21));
    for w in &p.workers {
        assert_eq!(w.peers.len(), 511);
        assert!(w.peers.iter().all(|peer| peer.public_key.as_deref() == Some(&format!("key-{}", peer.cluster))));
    }

    // m100 leaves, m512 (new) registers and is added to the slice.
    let before: BTreeMap<String, String> =
        p.workers.iter().map(|w| (w.cluster.clone(), w.cluster_prefix.clone())).collect();
    let mut slice = slices[0].clone();
    slice.status =
        Some(SliceConfigStatus { vni: p.vni, clusters: p.allocations.clone(), ..SliceConfigStatus::default() });
    slice.spec.clusters.retain(|c| c != "m100");
    index.upsert_slice(slice.clone());
    assert_eq!(index.replan(), BTreeSet::from(["big".to_owned()]));
    let newcomer = MemberCluster::new("m512", MemberClusterSpec::default());
    clusters.push(newcomer.clone());
    index.upsert_cluster(newcomer);
    assert!(index.replan().is_empty(), "a cluster no slice names replans nothing");
    slice.spec.clusters.push("m512".to_owned());
    index.upsert_slice(slice.clone());
    assert_eq!(index.replan(), BTreeSet::from(["big".to_owned()]));
    let after = index.plan("big").unwrap();
    assert_eq!(after, &plan(&[slice], &clusters, &workers)[0]);
    let m512 = after.workers.iter().find(|w| w.cluster == "m512").unwrap();
    assert_eq!(m512.cluster_prefix, before["m100"], "the newcomer takes the freed prefix");
    for w in after.workers.iter().filter(|w| w.cluster != "m512") {
        assert_eq!(w.cluster_prefix, before[&w.cluster], "{} kept its prefix", w.cluster);
    }
}

/// 512 clusters in one slice, paged: four pages of 128 peers (a cluster on the page of its
/// prefix index), WorkerSlices without peers carrying the page count and the revision; a
/// newcomer taking a freed index changes one page and the revision, nothing else.
#[test]
fn five_hundred_and_twelve_clusters_paged_fill_four_pages_and_a_join_changes_one() {
    let (slices, mut clusters) = fleet(512);
    let first = plan_with(&slices, &clusters, &[], &[], PeerLists::Paged);
    let workers = written(&first);
    let mut index = PlanIndex::new_with(&slices, &clusters, &workers, &[], PeerLists::Paged);
    index.replan();
    let p = index.plan("big").unwrap().clone();
    let pages = p.pages.clone().unwrap();
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [128, 128, 128, 128]);
    let revision = p.workers[0].peer_pages.clone().unwrap();
    assert_eq!(revision.pages, 4);
    assert!(p.workers.iter().all(|w| w.peers.is_empty() && w.peer_pages.as_ref() == Some(&revision)));

    let mut slice = slices[0].clone();
    slice.status =
        Some(SliceConfigStatus { vni: p.vni, clusters: p.allocations.clone(), ..SliceConfigStatus::default() });
    slice.spec.clusters.retain(|c| c != "m300");
    let newcomer = MemberCluster::new("m512", MemberClusterSpec::default());
    clusters.push(newcomer.clone());
    index.upsert_cluster(newcomer);
    slice.spec.clusters.push("m512".to_owned());
    index.upsert_slice(slice.clone());
    index.replan();
    let after = index.plan("big").unwrap();
    assert_eq!(after, &plan_with(&[slice], &clusters, &workers, &[], PeerLists::Paged)[0]);
    let changed: Vec<usize> = (0..4).filter(|i| after.pages.as_ref().unwrap()[*i] != pages[*i]).collect();
    assert_eq!(changed, [2], "m300 had index 300: page 2, which m512 takes over");
    assert_ne!(after.workers[0].peer_pages.as_ref().unwrap().revision, revision.revision);
}
