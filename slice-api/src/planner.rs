//! The hub's planner (pure): SliceConfigs + MemberClusters + what exists (the SliceConfigs'
//! recorded allocations and the WorkerSlices) → one [`SlicePlan`] per slice: its VNI, its
//! cluster prefixes, the WorkerSlice spec every member cluster must run, and conditions.
//!
//! Rules:
//! - A slice's VNI and a cluster's prefix index, once recorded in the SliceConfig's status, never
//!   change while the slice (or that cluster's membership) lasts. Lost status is recovered
//!   from the WorkerSlices that still exist.
//! - Two slices never share a VNI. New allocations take the lowest free number, new slices in
//!   (creation time, name) order and new clusters in name order, so the plan is deterministic.
//! - A spec that cannot be planned (bad subnet, more clusters than `maxClusters`) is refused as a
//!   whole with a `Planned=False` condition, and the slice keeps running as it was: never a
//!   partial plan.
//! - A slice being deleted plans no workers.
//! - What member clusters write is checked before it is used: a WorkerSlice counts
//!   only in its own cluster's namespace and under its slice's name (one that names another
//!   cluster or slice is ignored and reported); a gateway key published by two clusters stays
//!   with the one it was already distributed for (neither, when there is none), and an
//!   endpoint inside a slice subnet, a member's pod or service CIDR, or a loopback,
//!   unspecified or multicast address is not distributed. Each refusal is reported in the
//!   slice's `Ready` condition (reason `PublicationRefused`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::crd::{
    ClusterAllocation, Condition, MemberCluster, PEERS_PER_PAGE, PeerPages, SliceConfig, SlicePeers, WorkerIsolation,
    WorkerPeer, WorkerSlice, WorkerSliceFamily, WorkerSliceQos, WorkerSliceSpec, cluster_namespace, condition,
    peer_page_count, peer_page_of, peers_revision,
};

/// The first VNI handed out.
pub const VNI_BASE: u32 = 4096;
/// The last VNI (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// Condition type: the spec has been planned.
pub const PLANNED: &str = "Planned";
/// Condition type: every member cluster runs the slice and every tunnel is up.
pub const READY: &str = "Ready";
/// Condition type (set by the hub once a slice has exports): every exported service that member
/// clusters reported was taken; `False` names what was dropped and why.
pub const EXPORTS_ACCEPTED: &str = "ExportsAccepted";

/// What the hub must make true for one slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePlan {
    pub name: String,
    /// The slice's VNI (`None` only when the VNI space is exhausted).
    pub vni: Option<u32>,
    /// The allocations to record in the SliceConfig's status, by cluster name.
    pub allocations: Vec<ClusterAllocation>,
    /// The WorkerSlice spec of every cluster that must run the slice, sorted by cluster name.
    pub workers: Vec<WorkerSliceSpec>,
    /// `Planned` and `Ready`.
    pub conditions: Vec<Condition>,
    /// When the peers are paged ([`PeerLists::Paged`]): the slice's `SlicePeers` pages, each
    /// the members on it in cluster order (empty pages included; none for a slice being
    /// deleted). `None`: the peers are in the WorkerSlices (inline), or the plan was refused
    /// and the pages stay as they are.
    pub pages: Option<Vec<Vec<WorkerPeer>>>,
}

/// Where the planner puts each WorkerSlice's peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PeerLists {
    /// In every WorkerSlice's `spec.peers` (every member's object grows with the slice, and a
    /// join rewrites them all): what workers before the pages read.
    #[default]
    Inline,
    /// Once per slice, in `SlicePeers` pages of at most [`PEERS_PER_PAGE`] peers; the
    /// WorkerSlices carry `peerPages` (page count and revision) and no peers.
    Paged,
}

impl SlicePlan {
    /// The planned WorkerSlice spec of `cluster` (the specs are sorted by cluster).
    #[must_use]
    pub fn worker(&self, cluster: &str) -> Option<&WorkerSliceSpec> {
        self.workers.binary_search_by(|s| s.cluster.as_str().cmp(cluster)).ok().map(|i| &self.workers[i])
    }
}

/// Plans every slice. The order of the inputs does not matter. This is the whole plan from
/// scratch, the reference that [`index::PlanIndex`] (which the hub runs, replanning only the
/// slices a change touches) is tested against.
#[must_use]
pub fn plan(slices: &[SliceConfig], clusters: &[MemberCluster], workers: &[WorkerSlice]) -> Vec<SlicePlan> {
    plan_with(slices, clusters, workers, &[], PeerLists::Inline)
}

/// [`plan`] with the peers where `lists` says; `pages` are the `SlicePeers` pages the hub
/// wrote, which say (as the peers of WorkerSlice specs do) whom each key was distributed for.
#[must_use]
pub fn plan_with(
    slices: &[SliceConfig],
    clusters: &[MemberCluster],
    workers: &[WorkerSlice],
    pages: &[SlicePeers],
    lists: PeerLists,
) -> Vec<SlicePlan> {
    let mut ordered: Vec<&SliceConfig> = slices.iter().collect();
    ordered.sort_by_key(|s| creation_order(s));
    // WorkerSlices in (namespace, name) order, slices and clusters by name, as the API server
    // lists them: what depends on an order (the first WorkerSlice a lost VNI is recovered from,
    // the order of refusals) then does not depend on the caller's.
    let mut workers: Vec<&WorkerSlice> = workers.iter().collect();
    workers.sort_by_key(|w| worker_key(w));
    let mut by_name: Vec<&SliceConfig> = slices.iter().collect();
    by_name.sort_by_key(|s| s.name_any());
    let mut clusters_by_name: Vec<&MemberCluster> = clusters.iter().collect();
    clusters_by_name.sort_by_key(|c| c.name_any());
    let (trusted, mut refusals) = owned_workers(&workers);
    let publications = check_publications(&by_name, &clusters_by_name, &trusted, pages, &mut refusals);
    let vnis = allocate_vnis(&ordered, |slice| trusted.iter().find(|w| w.spec.slice == slice).map(|w| w.spec.vni));
    let registered: BTreeSet<String> =
        clusters.iter().filter(|c| c.metadata.deletion_timestamp.is_none()).map(ResourceExt::name_any).collect();
    let uplinks: Uplinks = clusters.iter().filter_map(|c| Some((c.name_any(), c.spec.uplink_kbps?))).collect();
    let mut plans: Vec<SlicePlan> = ordered
        .iter()
        .map(|s| {
            let name = s.name_any();
            let facts = SliceFacts {
                vni: vnis.get(&name).copied(),
                existing: trusted.iter().copied().filter(|w| w.spec.slice == name).collect(),
                registered: Box::new(|c| registered.contains(c)),
                uplink: Box::new(|c| uplinks.get(c).copied()),
                published: publications
                    .range((name.clone(), String::new())..)
                    .take_while(|((s, _), _)| *s == name)
                    .map(|((_, c), p)| (c.clone(), p.clone()))
                    .collect(),
                refused: refusals.get(&name).cloned().unwrap_or_default(),
                lists,
            };
            plan_slice(s, &facts)
        })
        .collect();
    plans.sort_by(|a, b| a.name.cmp(&b.name));
    plans
}

/// What one slice's plan depends on besides its SliceConfig: the few facts that come from the
/// rest of the fleet. [`plan`] derives them by scanning everything; [`index::PlanIndex`] looks
/// them up.
pub(crate) struct SliceFacts<'a> {
    /// The slice's VNI (allocated across all slices).
    pub vni: Option<u32>,
    /// The slice's WorkerSlices that speak for their cluster.
    pub existing: Vec<&'a WorkerSlice>,
    /// Whether a cluster is registered (its MemberCluster exists and is not being deleted).
    pub registered: Lookup<'a, bool>,
    /// A cluster's uplink rate, kbit/s.
    pub uplink: Lookup<'a, Option<u64>>,
    /// What each member cluster published for the slice, once checked, by cluster.
    pub published: BTreeMap<String, (Option<String>, Option<String>)>,
    /// The refusals reported on the slice.
    pub refused: Vec<String>,
    /// Where the peers go.
    pub lists: PeerLists,
}

/// A fact about a cluster, by its name.
pub(crate) type Lookup<'a, T> = Box<dyn Fn(&str) -> T + 'a>;

/// The order new VNIs are handed out in: creation time, then name.
fn creation_order(s: &SliceConfig) -> (Option<Timestamp>, String) {
    (s.metadata.creation_timestamp.as_ref().map(|t| t.0), s.name_any())
}

/// (namespace, name): the order the API server lists WorkerSlices in.
fn worker_key(w: &WorkerSlice) -> (String, String) {
    (w.metadata.namespace.clone().unwrap_or_default(), w.name_any())
}

/// Each member cluster's uplink rate (kbit/s), where its MemberCluster names one.
type Uplinks = BTreeMap<String, u64>;

/// Refusal messages by slice name.
type Refusals = BTreeMap<String, Vec<String>>;

/// The WorkerSlices that speak for their cluster: in the namespace of the cluster their spec
/// names, under the name of the slice their spec names. Anything else was written (or moved)
/// by someone it does not belong to: ignored, and reported on the slice it is named after.
fn owned_workers<'a>(workers: &[&'a WorkerSlice]) -> (Vec<&'a WorkerSlice>, Refusals) {
    let mut refusals = Refusals::new();
    let mut owned = Vec::new();
    for w in workers.iter().copied() {
        if speaks_for_itself(w) {
            owned.push(w);
        } else {
            let why = impostor_refusal(w);
            // Reported on the slice of its name and on the slice its spec names.
            for slice in impostor_mentions(w) {
                refusals.entry(slice).or_default().push(why.clone());
            }
        }
    }
    (owned, refusals)
}

/// Why a WorkerSlice that does not speak for itself is ignored.
fn impostor_refusal(w: &WorkerSlice) -> String {
    format!(
        "WorkerSlice {}/{} names cluster {} and slice {}, but a WorkerSlice speaks only for the cluster of its namespace and the slice of its name: ignored",
        w.metadata.namespace.as_deref().unwrap_or(""),
        w.name_any(),
        w.spec.cluster,
        w.spec.slice
    )
}

/// The slices a WorkerSlice that does not speak for itself is reported on: the slice of its
/// name and the one its spec names.
fn impostor_mentions(w: &WorkerSlice) -> Vec<String> {
    let mut on = vec![w.name_any(), w.spec.slice.clone()];
    on.dedup();
    on
}

/// Whether a WorkerSlice speaks for the cluster and slice its spec names: it lies in that
/// cluster's namespace under that slice's name. What any other WorkerSlice's status says is not
/// used (not its gateway key or endpoint, not its exports).
#[must_use]
pub fn speaks_for_itself(w: &WorkerSlice) -> bool {
    w.metadata.namespace.as_deref() == Some(cluster_namespace(&w.spec.cluster).as_str()) && w.name_any() == w.spec.slice
}

/// What each cluster published for each slice, once checked: (slice, cluster) → (key, endpoint),
/// each `None` when not published or refused.
type Publications = BTreeMap<(String, String), (Option<String>, Option<String>)>;

/// Addresses no gateway endpoint may take: every slice subnet, every member's pod and service
/// CIDRs (unparsable entries are the validator's business, not a reason to panic), each with
/// what it is. The first that holds an endpoint names the refusal.
fn slice_forbidden(s: &SliceConfig) -> Vec<(IpNet, String)> {
    std::iter::once(&s.spec.slice_subnet)
        .chain(s.spec.secondary_slice_subnet.as_ref())
        .filter_map(|subnet| subnet.trim().parse::<IpNet>().ok())
        .map(|net| (net, format!("the subnet of slice {}", s.name_any())))
        .collect()
}

fn cluster_forbidden(c: &MemberCluster) -> Vec<(IpNet, String)> {
    let mut out = Vec::new();
    for (cidrs, what) in [(&c.spec.pod_cidrs, "pod"), (&c.spec.service_cidrs, "service")] {
        for net in cidrs.iter().filter_map(|t| t.trim().parse::<IpNet>().ok()) {
            out.push((net, format!("the {what} CIDR {net} of cluster {}", c.name_any())));
        }
    }
    out
}

fn check_publications(
    slices: &[&SliceConfig],
    clusters: &[&MemberCluster],
    owned: &[&WorkerSlice],
    pages: &[SlicePeers],
    refusals: &mut Refusals,
) -> Publications {
    let mut forbidden: Vec<(IpNet, String)> = slices.iter().flat_map(|s| slice_forbidden(s)).collect();
    forbidden.extend(clusters.iter().flat_map(|c| cluster_forbidden(c)));
    // Who each key was already distributed for: the peers of the specs and pages the hub wrote.
    let mut incumbent: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for peers in owned.iter().map(|w| &w.spec.peers).chain(pages.iter().map(|p| &p.spec.peers)) {
        for p in peers {
            if let Some(k) = p.public_key.as_deref() {
                incumbent.entry(k).or_default().insert(p.cluster.as_str());
            }
        }
    }
    let mut publishers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for w in owned {
        if let Some(k) = w.status.as_ref().and_then(|s| s.gateway_public_key.as_deref()) {
            publishers.entry(k).or_default().insert(w.spec.cluster.as_str());
        }
    }

    let mut out = Publications::new();
    for w in owned {
        let (slice, cluster) = (&w.spec.slice, &w.spec.cluster);
        let (published, refused) = check_publication(
            w,
            |k| publishers.get(k).cloned().unwrap_or_default(),
            |k, c| incumbent.get(k).is_some_and(|i| i.contains(c)),
            &forbidden,
        );
        refusals.entry(slice.clone()).or_default().extend(refused);
        out.insert((slice.clone(), cluster.clone()), published);
    }
    refusals.retain(|_, r| !r.is_empty());
    out
}

/// The key and endpoint a WorkerSlice that speaks for itself published, each `None` when not
/// published or refused, and the refusals. `publishers(key)` are the clusters that publish the
/// key (in any slice), `incumbent(key, cluster)` whether the key was distributed for the
/// cluster already.
fn check_publication<'a>(
    w: &WorkerSlice,
    publishers: impl Fn(&str) -> BTreeSet<&'a str>,
    incumbent: impl Fn(&str, &str) -> bool,
    forbidden: &[(IpNet, String)],
) -> ((Option<String>, Option<String>), Vec<String>) {
    let cluster = &w.spec.cluster;
    let mut refused = Vec::new();
    let status = w.status.as_ref();
    let mut key = status.and_then(|s| s.gateway_public_key.clone());
    if let Some(k) = key.as_deref() {
        let others = publishers(k);
        if others.len() > 1 {
            let holders: Vec<&str> = others.iter().copied().filter(|c| incumbent(k, c)).collect();
            let keeps = holders.len() == 1 && holders[0] == cluster.as_str();
            if !keeps {
                let all: Vec<&str> = others.iter().copied().collect();
                refused.push(format!(
                    "cluster {cluster} published gateway key {k}, which clusters {} all publish: {}",
                    all.join(", "),
                    match holders.as_slice() {
                        [holder] => format!("it stays with {holder}, for whom it was distributed first"),
                        _ => "distributed for none of them".to_owned(),
                    }
                ));
                key = None;
            }
        }
    }
    let mut endpoint = status.and_then(|s| s.gateway_endpoint.clone());
    if let Some(e) = endpoint.as_deref()
        && let Some(why) = endpoint_refusal(e, forbidden)
    {
        refused.push(format!("cluster {cluster} published gateway endpoint {e}, {why}: not distributed"));
        endpoint = None;
    }
    ((key, endpoint), refused)
}

/// Why an endpoint may not be handed to peers (`None`: it may). Host names are left to DNS.
fn endpoint_refusal(endpoint: &str, forbidden: &[(IpNet, String)]) -> Option<String> {
    let ip: IpAddr = match endpoint.parse::<SocketAddr>() {
        Ok(a) => a.ip(),
        Err(_) => endpoint.parse::<IpAddr>().ok()?,
    };
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return Some(format!("{ip} is a loopback, unspecified or multicast address"));
    }
    forbidden.iter().find(|(net, _)| net.contains(&ip)).map(|(_, what)| format!("inside {what}"))
}

/// Recorded VNIs are kept in (creation, name) order; a VNI recorded twice stays with the older
/// slice and the other gets a new one.
/// `from_worker(slice)`: the VNI of the slice's first WorkerSlice (that speaks for itself, in
/// (namespace, name) order), where the status lost it.
fn allocate_vnis(ordered: &[&SliceConfig], from_worker: impl Fn(&str) -> Option<u32>) -> BTreeMap<String, u32> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for s in ordered {
        let recorded = s.status.as_ref().and_then(|st| st.vni).or_else(|| from_worker(&s.name_any()));
        if let Some(vni) = recorded.filter(|v| (VNI_BASE..=VNI_MAX).contains(v) && !taken.contains(v)) {
            taken.insert(vni);
            out.insert(s.name_any(), vni);
        }
    }
    let mut next = VNI_BASE;
    for s in ordered {
        if out.contains_key(&s.name_any()) {
            continue;
        }
        while taken.contains(&next) {
            next += 1;
        }
        if next > VNI_MAX {
            break;
        }
        taken.insert(next);
        out.insert(s.name_any(), next);
    }
    out
}

fn plan_slice(slice: &SliceConfig, facts: &SliceFacts<'_>) -> SlicePlan {
    let name = slice.name_any();
    let generation = slice.metadata.generation;
    let vni = facts.vni;
    let refused = facts.refused.as_slice();
    let existing: &[&WorkerSlice] = &facts.existing;
    let by_cluster: BTreeMap<&str, &WorkerSlice> = existing.iter().map(|w| (w.spec.cluster.as_str(), *w)).collect();
    let recorded = recorded_indexes(slice, existing);
    let keep = |reason: &str, message: String| {
        // Refused: keep running what runs, record nothing new.
        let mut workers: Vec<WorkerSliceSpec> = existing.iter().map(|w| w.spec.clone()).collect();
        workers.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        let allocations = slice.status.as_ref().map(|s| s.clusters.clone()).unwrap_or_default();
        let mut planned = Condition::new(PLANNED, false, reason, message);
        planned.observed_generation = generation;
        SlicePlan {
            name: name.clone(),
            vni,
            allocations,
            conditions: vec![planned, ready_condition(&workers, &by_cluster, refused, generation)],
            workers,
            pages: None,
        }
    };

    if slice.metadata.deletion_timestamp.is_some() {
        let mut planned = Condition::new(PLANNED, false, "Deleting", "the slice is being deleted");
        planned.observed_generation = generation;
        let mut ready = Condition::new(READY, false, "Deleting", "the slice is being deleted");
        ready.observed_generation = generation;
        let pages = (facts.lists == PeerLists::Paged).then(Vec::new);
        return SlicePlan {
            name,
            vni,
            allocations: Vec::new(),
            workers: Vec::new(),
            conditions: vec![planned, ready],
            pages,
        };
    }
    let Some(vni) = vni else {
        return keep("VniExhausted", format!("no free VNI left in {VNI_BASE}..={VNI_MAX}"));
    };
    let (addresses, secondary) = match slice.spec.address_plans() {
        Ok(a) => (a.primary, a.secondary),
        Err(e) => return keep("InvalidSpec", e.to_string()),
    };

    let mut wanted: Vec<String> = slice.spec.clusters.clone();
    wanted.sort();
    wanted.dedup();
    let (members, unregistered): (Vec<String>, Vec<String>) = wanted.into_iter().partition(|c| (facts.registered)(c));
    if members.len() > addresses.max_clusters as usize {
        return keep(
            "TooManyClusters",
            format!(
                "{} member clusters but maxClusters is {}: remove clusters, or create a new slice with a larger maxClusters (it cannot be changed in place)",
                members.len(),
                addresses.max_clusters
            ),
        );
    }

    // Indexes: recorded ones stay; new clusters take the lowest free index in name order.
    let mut index: BTreeMap<String, u32> = BTreeMap::new();
    let mut used = BTreeSet::new();
    for c in &members {
        if let Some(&i) = recorded.get(c).filter(|i| **i < addresses.max_clusters && !used.contains(*i)) {
            index.insert(c.clone(), i);
            used.insert(i);
        }
    }
    let mut next = 0;
    for c in &members {
        if index.contains_key(c) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        index.insert(c.clone(), next);
        used.insert(next);
    }

    let prefixes: BTreeMap<&str, String> = members
        .iter()
        .map(|c| (c.as_str(), addresses.cluster_prefix(index[c]).expect("index below maxClusters").to_string()))
        .collect();
    let prefix_of = |c: &str| prefixes[c].clone();
    let (replicas, replica_refusals) = check_replicas(&members, facts, addresses.subnet, slice.spec.gateway.replicas);
    let refused_all: Vec<String> = refused.iter().cloned().chain(replica_refusals).collect();
    let refused = refused_all.as_slice();
    // Every member's entry in the others' peer lists, built once.
    let entries: Vec<WorkerPeer> = members
        .iter()
        .map(|p| {
            let published = facts.published.get(p);
            WorkerPeer {
                cluster: p.clone(),
                prefix: prefix_of(p),
                // The second family's prefix of the same index.
                secondary_prefix: secondary
                    .as_ref()
                    .map(|plan| plan.cluster_prefix(index[p]).expect("index below maxClusters").to_string()),
                public_key: published.and_then(|(key, _)| key.clone()),
                endpoint: published.and_then(|(_, endpoint)| endpoint.clone()),
                replicas: replicas.get(p.as_str()).cloned().unwrap_or_default(),
            }
        })
        .collect();
    // Paged: every entry once, on the page of its cluster's index; the specs point at them.
    let (pages, peer_pages) = match facts.lists {
        PeerLists::Inline => (None, None),
        PeerLists::Paged => {
            let mut pages = vec![Vec::new(); peer_page_count(addresses.max_clusters) as usize];
            for e in &entries {
                pages[peer_page_of(index[&e.cluster]) as usize].push(e.clone());
            }
            debug_assert!(pages.iter().all(|p| p.len() <= PEERS_PER_PAGE as usize));
            let pointer =
                PeerPages { pages: u32::try_from(pages.len()).unwrap_or(u32::MAX), revision: peers_revision(&entries) };
            (Some(pages), Some(pointer))
        }
    };
    let mut specs = Vec::new();
    for c in &members {
        let peers = match facts.lists {
            PeerLists::Inline => entries.iter().filter(|p| p.cluster != *c).cloned().collect(),
            PeerLists::Paged => Vec::new(),
        };
        specs.push(WorkerSliceSpec {
            slice: name.clone(),
            cluster: c.clone(),
            slice_subnet: addresses.subnet.to_string(),
            cluster_prefix: prefix_of(c),
            node_prefix_length: addresses.node_prefix_len,
            // The second family takes the same index as the first: one stable index per cluster.
            secondary_family: secondary.map(|plan| WorkerSliceFamily {
                slice_subnet: plan.subnet.to_string(),
                cluster_prefix: plan.cluster_prefix(index[c]).expect("index below maxClusters").to_string(),
                node_prefix_length: plan.node_prefix_len,
            }),
            vni,
            mtu: slice.spec.mtu,
            namespaces: slice.spec.namespaces_in(c),
            gateway: slice.spec.gateway.clone(),
            peers,
            peer_pages: peer_pages.clone(),
            // The hub adds the slice's imports (`slice_operator::hub::services`).
            imports: Vec::new(),
            // The hub adds the other clusters' pods (`slice_operator::hub::pods`).
            pods: Vec::new(),
            isolation: slice.spec.isolation.enabled.then(|| {
                let mut allowed: Vec<String> = slice
                    .spec
                    .isolation
                    .allowed_namespaces
                    .iter()
                    .filter(|n| n.applies_to(c))
                    .map(|n| n.namespace.clone())
                    .collect();
                allowed.sort();
                allowed.dedup();
                WorkerIsolation { allowed_namespaces: allowed }
            }),
            qos: slice
                .spec
                .qos
                .as_ref()
                .map(|profile| WorkerSliceQos { profile: profile.clone(), uplink_kbps: (facts.uplink)(c) }),
        });
    }
    let allocations = members
        .iter()
        .map(|c| {
            let (ready, reason) = worker_readiness(by_cluster.get(c.as_str()).copied());
            ClusterAllocation { cluster: c.clone(), index: index[c], prefix: prefix_of(c), ready, reason }
        })
        .collect();
    let mut planned = if unregistered.is_empty() {
        Condition::new(PLANNED, true, "Planned", format!("{} member clusters", members.len()))
    } else {
        Condition::new(
            PLANNED,
            true,
            "ClustersNotRegistered",
            format!(
                "not planned until they join (slicectl join): {}; planned: {}",
                unregistered.join(", "),
                members.len()
            ),
        )
    };
    planned.observed_generation = generation;
    let ready = ready_condition(&specs, &by_cluster, refused, generation);
    SlicePlan { name, vni: Some(vni), allocations, workers: specs, conditions: vec![planned, ready], pages }
}

/// The gateway replicas beyond the first (ordinals 1 … `wanted` − 1) that each member published
/// in its WorkerSlice status, checked, by cluster, and the refusals. A replica is handed out
/// only when its cluster's first replica was (its key checked against every slice by the
/// publication check); its key must be a WireGuard key that no other publication of this
/// slice holds (first or further replica of any member), and its endpoint must pass the
/// first replica's address rules against this slice's subnet. Ordinals beyond what the slice
/// asks for are left out silently: the worker is scaling down.
fn check_replicas(
    members: &[String],
    facts: &SliceFacts<'_>,
    subnet: IpNet,
    wanted: u32,
) -> (BTreeMap<String, Vec<crate::crd::PeerReplica>>, Vec<String>) {
    let by_cluster: BTreeMap<&str, &WorkerSlice> =
        facts.existing.iter().map(|w| (w.spec.cluster.as_str(), *w)).collect();
    // Every key the slice's publications hold, with who holds it, to find duplicates.
    let mut holders: BTreeMap<&str, Vec<(String, u32)>> = BTreeMap::new();
    for c in members {
        if let Some(k) = facts.published.get(c).and_then(|(k, _)| k.as_deref()) {
            holders.entry(k).or_default().push((c.clone(), 0));
        }
        for r in
            by_cluster.get(c.as_str()).and_then(|w| w.status.as_ref()).into_iter().flat_map(|s| &s.gateway_replicas)
        {
            if let Some(k) = r.public_key.as_deref().filter(|_| r.ordinal > 0) {
                holders.entry(k).or_default().push((c.clone(), r.ordinal));
            }
        }
    }
    let forbidden = [(subnet, "the slice's subnet".to_owned())];
    let mut out: BTreeMap<String, Vec<crate::crd::PeerReplica>> = BTreeMap::new();
    let mut refused = Vec::new();
    for c in members {
        let first_published = facts.published.get(c).is_some_and(|(k, _)| k.is_some());
        let Some(status) = by_cluster.get(c.as_str()).and_then(|w| w.status.as_ref()) else { continue };
        for r in status.gateway_replicas.iter().filter(|r| r.ordinal > 0 && r.ordinal < wanted) {
            let Some(key) = r.public_key.as_deref() else { continue };
            let ordinal = r.ordinal;
            if !first_published {
                continue;
            }
            if crate::wireguard::Key::from_base64(key).is_err() {
                refused.push(format!("cluster {c} published gateway replica {ordinal} key {key:?}, which is not a WireGuard key: not distributed"));
                continue;
            }
            let others: Vec<String> = holders[key]
                .iter()
                .filter(|(hc, ho)| !(hc == c && *ho == ordinal))
                .map(|(hc, ho)| format!("{hc} replica {ho}"))
                .collect();
            if !others.is_empty() {
                refused.push(format!(
                    "cluster {c} published gateway replica {ordinal} key {key}, which {} also publish(es): not distributed",
                    others.join(", ")
                ));
                continue;
            }
            let mut endpoint = r.endpoint.clone();
            if let Some(e) = endpoint.as_deref()
                && let Some(why) = endpoint_refusal(e, &forbidden)
            {
                refused.push(format!(
                    "cluster {c} published gateway replica {ordinal} endpoint {e}, {why}: not distributed"
                ));
                endpoint = None;
            }
            out.entry(c.clone()).or_default().push(crate::crd::PeerReplica {
                ordinal,
                public_key: key.to_owned(),
                endpoint,
            });
        }
        if let Some(v) = out.get_mut(c) {
            v.sort();
        }
    }
    (out, refused)
}

/// Cluster → prefix index as recorded in the SliceConfig's status, completed from existing
/// WorkerSlices (whose cluster prefix gives the index) when the status lost them.
fn recorded_indexes(slice: &SliceConfig, existing: &[&WorkerSlice]) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    if let Some(status) = &slice.status {
        for a in &status.clusters {
            out.entry(a.cluster.clone()).or_insert(a.index);
        }
    }
    if let Ok(addresses) = slice.spec.address_plan() {
        for w in existing {
            if out.contains_key(&w.spec.cluster) {
                continue;
            }
            let found = (0..addresses.max_clusters)
                .find(|i| addresses.cluster_prefix(*i).is_ok_and(|p| p.to_string() == w.spec.cluster_prefix));
            if let Some(i) = found {
                out.insert(w.spec.cluster.clone(), i);
            }
        }
    }
    out
}

fn worker_readiness(worker: Option<&WorkerSlice>) -> (bool, String) {
    let Some(worker) = worker else {
        return (false, "WorkerSlice not created yet".to_owned());
    };
    let Some(status) = &worker.status else {
        return (false, "the worker has not reported yet".to_owned());
    };
    match condition(&status.conditions, READY) {
        Some(c) if c.status == "True" => (true, String::new()),
        Some(c) => (false, format!("{}: {}", c.reason, c.message)),
        None => (false, "the worker has not reported readiness yet".to_owned()),
    }
}

fn ready_condition(
    specs: &[WorkerSliceSpec],
    existing: &BTreeMap<&str, &WorkerSlice>,
    refused: &[String],
    generation: Option<i64>,
) -> Condition {
    let mut waiting = Vec::new();
    for spec in specs {
        let worker = existing.get(spec.cluster.as_str()).copied();
        let (ready, reason) = worker_readiness(worker);
        if !ready {
            waiting.push(format!("{}: {reason}", spec.cluster));
        }
    }
    let mut c = if !refused.is_empty() {
        Condition::new(READY, false, "PublicationRefused", refused.join("; "))
    } else if specs.is_empty() {
        Condition::new(READY, false, "NoClusters", "no member cluster is planned")
    } else if waiting.is_empty() {
        Condition::new(READY, true, "AllClustersReady", format!("{} clusters ready", specs.len()))
    } else {
        Condition::new(READY, false, "ClustersNotReady", waiting.join("; "))
    };
    c.observed_generation = generation;
    c
}

pub mod index;

#[cfg(test)]
mod tests;
