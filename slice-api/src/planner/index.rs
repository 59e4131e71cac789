//! The planner's inputs kept indexed, and each slice's plan kept until something it depends on
//! changes (pure): the hub feeds it every object a watch reports ([`PlanIndex::upsert_slice`],
//! …) and asks for the plans of the slices those changes touched ([`PlanIndex::replan`]).
//!
//! A slice's plan depends on its SliceConfig and on a few facts from the rest of the fleet
//! (`SliceFacts`); each fact has an index, and each change marks dirty exactly the slices whose
//! facts it can change:
//!
//! | change | slices replanned |
//! | --- | --- |
//! | a SliceConfig | that slice; with a new subnet, those with a gateway endpoint inside the old or the new one |
//! | a MemberCluster's registration (created, deleting, gone) or uplink | the slices that name it |
//! | a MemberCluster's pod or service CIDRs | the slices with a gateway endpoint inside an old or new CIDR |
//! | a MemberCluster's status (the heartbeat) | none |
//! | a WorkerSlice | the slice of its name and of its spec; the slices of every WorkerSlice that publishes the same gateway key (before or after), or whose key it now lists as a peer's for another cluster (or no longer) |
//! | any of them | the slices whose VNI allocation moved (VNIs are allocated across all slices, an `O(slices)` step) |
//!
//! [`plan`](super::plan) is the reference: the property tests check that the plans kept here
//! equal a whole plan of the same objects after any sequence of changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube::ResourceExt;

use super::{
    PeerLists, SliceFacts, SlicePlan, allocate_vnis, check_publication, cluster_forbidden, creation_order,
    impostor_mentions, impostor_refusal, plan_slice, slice_forbidden, speaks_for_itself,
};
use crate::crd::{CLUSTER_NAMESPACE_PREFIX, MemberCluster, SliceConfig, SlicePeers, WorkerSlice};

/// (namespace, name) of a WorkerSlice.
pub type WorkerKey = (String, String);

/// The planner's inputs, indexed, and the plans of the slices, kept current.
#[derive(Debug, Clone, Default)]
pub struct PlanIndex {
    slices: BTreeMap<String, SliceConfig>,
    clusters: BTreeMap<String, MemberCluster>,
    /// The WorkerSlices of the hub's cluster namespaces (the only ones the planner reads).
    workers: BTreeMap<WorkerKey, WorkerSlice>,
    /// Slice name → namespaces of the WorkerSlices of that name.
    by_name: BTreeMap<String, BTreeSet<String>>,
    /// Slice name → the WorkerSlices whose spec names it.
    by_spec_slice: BTreeMap<String, BTreeSet<WorkerKey>>,
    /// Cluster → the WorkerSlices in its namespace or whose spec names it.
    by_cluster: BTreeMap<String, BTreeSet<WorkerKey>>,
    /// Slice → the WorkerSlices that do not speak for themselves and are reported on it.
    impostors: BTreeMap<String, BTreeSet<WorkerKey>>,
    /// Cluster → the slices whose spec lists it.
    naming: BTreeMap<String, BTreeSet<String>>,
    /// Gateway key → (slice, cluster) of each WorkerSlice that publishes it.
    publishers: BTreeMap<String, BTreeSet<(String, String)>>,
    /// The `SlicePeers` pages the hub wrote, by name.
    pages: BTreeMap<String, SlicePeers>,
    /// Where the plans put the peers.
    lists: PeerLists,
    /// Gateway key → cluster → how many WorkerSlice specs and pages list the key as that
    /// cluster's.
    incumbents: BTreeMap<String, BTreeMap<String, usize>>,
    /// Published endpoint address → (slice, cluster) of the WorkerSlices that publish it.
    endpoints: BTreeMap<IpAddr, BTreeSet<(String, String)>>,
    /// Slice name → its VNI, as last allocated.
    vnis: BTreeMap<String, u32>,
    plans: BTreeMap<String, SlicePlan>,
    /// Slice names to replan (a name without a SliceConfig drops its plan).
    dirty: BTreeSet<String>,
    /// Whether the VNIs must be allocated again (a slice came, went, or changed its status).
    vnis_dirty: bool,
    /// How many slices were planned since the index was made (for tests and the benchmark).
    planned: u64,
}

/// Whether a WorkerSlice is in a namespace the hub writes WorkerSlices into.
#[must_use]
pub fn is_hub_managed(w: &WorkerSlice) -> bool {
    w.metadata.namespace.as_deref().is_some_and(|ns| ns.starts_with(CLUSTER_NAMESPACE_PREFIX))
}

fn key_of(w: &WorkerSlice) -> WorkerKey {
    (w.metadata.namespace.clone().unwrap_or_default(), w.name_any())
}

fn registered(c: &MemberCluster) -> bool {
    c.metadata.deletion_timestamp.is_none()
}

/// The address of an endpoint (`host:port` or a bare address); host names have none.
fn endpoint_ip(endpoint: &str) -> Option<IpAddr> {
    match endpoint.parse::<std::net::SocketAddr>() {
        Ok(a) => Some(a.ip()),
        Err(_) => endpoint.parse::<IpAddr>().ok(),
    }
}

impl PlanIndex {
    /// An index of `slices`, `clusters` and `workers` (those outside the hub's cluster
    /// namespaces are left out), every slice to be planned.
    #[must_use]
    pub fn new(slices: &[SliceConfig], clusters: &[MemberCluster], workers: &[WorkerSlice]) -> Self {
        Self::new_with(slices, clusters, workers, &[], PeerLists::Inline)
    }

    /// An empty index whose plans put the peers where `lists` says.
    #[must_use]
    pub fn with_lists(lists: PeerLists) -> Self {
        Self { lists, ..Self::default() }
    }

    /// [`Self::new`] with the hub's `SlicePeers` pages and the peers where `lists` says.
    #[must_use]
    pub fn new_with(
        slices: &[SliceConfig],
        clusters: &[MemberCluster],
        workers: &[WorkerSlice],
        pages: &[SlicePeers],
        lists: PeerLists,
    ) -> Self {
        let mut index = Self::with_lists(lists);
        for p in pages {
            index.upsert_peers(p.clone());
        }
        for c in clusters {
            index.upsert_cluster(c.clone());
        }
        for s in slices {
            index.upsert_slice(s.clone());
        }
        for w in workers {
            index.upsert_worker(w.clone());
        }
        index
    }

    /// A SliceConfig was created or changed. Returns whether its plan may change: not when
    /// only what the plan does not read changed (the conditions and services of its status,
    /// which the hub writes itself, come back through its watch).
    pub fn upsert_slice(&mut self, slice: SliceConfig) -> bool {
        let name = slice.name_any();
        let old = self.slices.insert(name.clone(), slice);
        let new = &self.slices[&name];
        let refused = self
            .plans
            .get(&name)
            .is_none_or(|p| !p.conditions.iter().any(|c| c.type_ == super::PLANNED && c.status == "True"));
        if old.as_ref().is_some_and(|old| plan_reads_the_same(old, new, refused)) {
            return false;
        }
        self.slice_changed(&name, old);
        true
    }

    /// A SliceConfig is gone.
    pub fn remove_slice(&mut self, name: &str) {
        if let Some(old) = self.slices.remove(name) {
            self.slice_changed(name, Some(old));
        }
    }

    fn slice_changed(&mut self, name: &str, old: Option<SliceConfig>) {
        self.dirty.insert(name.to_owned());
        let new = self.slices.get(name);
        let status_vni = |s: Option<&SliceConfig>| s.and_then(|s| s.status.as_ref()).and_then(|st| st.vni);
        if old.as_ref().map(creation_order) != new.map(creation_order) || status_vni(old.as_ref()) != status_vni(new) {
            self.vnis_dirty = true;
        }
        let members = |s: Option<&SliceConfig>| -> BTreeSet<String> {
            s.map(|s| s.spec.clusters.iter().cloned().collect()).unwrap_or_default()
        };
        let (before, after) = (members(old.as_ref()), members(new));
        for c in before.difference(&after) {
            if let Some(set) = self.naming.get_mut(c) {
                set.remove(name);
                if set.is_empty() {
                    self.naming.remove(c);
                }
            }
        }
        for c in after.difference(&before) {
            self.naming.entry(c.clone()).or_default().insert(name.to_owned());
        }
        let nets = |s: Option<&SliceConfig>| s.map(slice_forbidden).unwrap_or_default();
        let (before, after) = (nets(old.as_ref()), nets(new));
        if before != after {
            self.forbidden_changed(before.iter().chain(&after).map(|(n, _)| *n));
        }
    }

    /// A MemberCluster was created or changed. A change of its status alone (the heartbeat)
    /// replans nothing.
    pub fn upsert_cluster(&mut self, cluster: MemberCluster) {
        let name = cluster.name_any();
        let old = self.clusters.insert(name.clone(), cluster);
        self.cluster_changed(&name, old);
    }

    /// A MemberCluster is gone.
    pub fn remove_cluster(&mut self, name: &str) {
        if let Some(old) = self.clusters.remove(name) {
            self.cluster_changed(name, Some(old));
        }
    }

    fn cluster_changed(&mut self, name: &str, old: Option<MemberCluster>) {
        let new = self.clusters.get(name);
        let facts = |c: Option<&MemberCluster>| c.map(|c| (registered(c), c.spec.uplink_kbps));
        if facts(old.as_ref()) != facts(new) {
            let naming: Vec<String> = self.naming.get(name).into_iter().flatten().cloned().collect();
            self.dirty.extend(naming);
        }
        let nets = |c: Option<&MemberCluster>| c.map(cluster_forbidden).unwrap_or_default();
        let (before, after) = (nets(old.as_ref()), nets(new));
        if before != after {
            self.forbidden_changed(before.iter().chain(&after).map(|(n, _)| *n));
        }
    }

    /// Marks dirty the slices with a published endpoint inside any of `nets`.
    fn forbidden_changed(&mut self, nets: impl Iterator<Item = IpNet>) {
        let mut touched = Vec::new();
        for net in nets {
            for (_, publishers) in self.endpoints.range(net.network()..=net.broadcast()) {
                touched.extend(publishers.iter().map(|(slice, _)| slice.clone()));
            }
        }
        self.dirty.extend(touched);
    }

    /// A WorkerSlice was created or changed (one outside the hub's cluster namespaces is
    /// ignored, as the planner ignores it).
    ///
    /// Returns whether the change touched its slices. It does not when only the spec changed,
    /// to what the slice's plan says (the hub's own write, come back through its watch): a
    /// plan depends on a WorkerSlice's spec only where it differs from the plan (a refused
    /// slice keeps running its WorkerSlices as they are; a lost VNI or prefix is recovered
    /// from them), and what the peer keys of the spec change for other slices is followed
    /// apart.
    pub fn upsert_worker(&mut self, worker: WorkerSlice) -> bool {
        if !is_hub_managed(&worker) {
            return false;
        }
        let key = key_of(&worker);
        let old = self.workers.remove(&key);
        let touched = !old.as_ref().is_some_and(|old| self.is_planned_echo(old, &worker));
        self.reindex(old.as_ref(), Some(&worker), touched);
        self.workers.insert(key, worker);
        touched
    }

    /// Whether `new` differs from `old` only in a spec that is now what the plan says.
    fn is_planned_echo(&self, old: &WorkerSlice, new: &WorkerSlice) -> bool {
        speaks_for_itself(old)
            && speaks_for_itself(new)
            && old.status == new.status
            && old.metadata.deletion_timestamp == new.metadata.deletion_timestamp
            && old.spec.slice == new.spec.slice
            && old.spec.cluster == new.spec.cluster
            && self.plans.get(&new.spec.slice).and_then(|p| p.worker(&new.spec.cluster)).is_some_and(|planned| {
                // The hub adds imports and pods to a plan's specs (from the members' statuses,
                // which did not change); a refused slice's plan keeps them as they were.
                let planned_whole = self.plans[&new.spec.slice]
                    .conditions
                    .iter()
                    .any(|c| c.type_ == super::PLANNED && c.status == "True");
                let lists_kept = old.spec.imports == new.spec.imports && old.spec.pods == new.spec.pods;
                (planned_whole || lists_kept)
                    && planned.peers == new.spec.peers
                    && planned.peer_pages == new.spec.peer_pages
                    && (&planned.slice_subnet, &planned.cluster_prefix, planned.node_prefix_length, planned.vni)
                        == (&new.spec.slice_subnet, &new.spec.cluster_prefix, new.spec.node_prefix_length, new.spec.vni)
                    && (planned.mtu, &planned.namespaces, &planned.gateway, &planned.isolation, &planned.qos)
                        == (new.spec.mtu, &new.spec.namespaces, &new.spec.gateway, &new.spec.isolation, &new.spec.qos)
            })
    }

    /// A `SlicePeers` page (the hub's own write) was created or changed. Returns whether what
    /// it lists changed. What it lists says whom each key was distributed for, as a
    /// WorkerSlice's `spec.peers` does.
    pub fn upsert_peers(&mut self, page: SlicePeers) -> bool {
        let name = page.name_any();
        let old = self.pages.remove(&name);
        let changed = old.as_ref().is_none_or(|o| o.spec.peers != page.spec.peers);
        if changed {
            self.repage(old.as_ref(), Some(&page));
        }
        self.pages.insert(name, page);
        changed
    }

    /// A `SlicePeers` page is gone.
    pub fn remove_peers(&mut self, name: &str) {
        if let Some(old) = self.pages.remove(name) {
            self.repage(Some(&old), None);
        }
    }

    /// A page of the hub's, by name.
    #[must_use]
    pub fn peers_page(&self, name: &str) -> Option<&SlicePeers> {
        self.pages.get(name)
    }

    /// Every page, by name.
    pub fn peers_pages(&self) -> impl Iterator<Item = &SlicePeers> {
        self.pages.values()
    }

    /// Where the plans put the peers.
    #[must_use]
    pub fn lists(&self) -> PeerLists {
        self.lists
    }

    fn repage(&mut self, old: Option<&SlicePeers>, new: Option<&SlicePeers>) {
        let pairs = |p: Option<&SlicePeers>| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = p
                .into_iter()
                .flat_map(|p| &p.spec.peers)
                .filter_map(|e| Some((e.cluster.clone(), e.public_key.clone()?)))
                .collect();
            v.sort_unstable();
            v
        };
        let (old_pairs, new_pairs) = (pairs(old), pairs(new));
        let o: Vec<(&str, &str)> = old_pairs.iter().map(|(c, k)| (c.as_str(), k.as_str())).collect();
        let n: Vec<(&str, &str)> = new_pairs.iter().map(|(c, k)| (c.as_str(), k.as_str())).collect();
        let (removed, added) = sorted_difference(&o, &n);
        let keys: BTreeSet<String> = removed.iter().chain(&added).map(|(_, k)| (*k).to_owned()).collect();
        let before = self.snapshot(&keys);
        self.move_incumbents(&removed, &added);
        self.keys_changed(&keys, &before);
    }

    fn move_incumbents(&mut self, removed: &[(&str, &str)], added: &[(&str, &str)]) {
        for &(cluster, k) in removed {
            if let Some(counts) = self.incumbents.get_mut(k) {
                if let Some(count) = counts.get_mut(cluster) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(cluster);
                    }
                }
                if counts.is_empty() {
                    self.incumbents.remove(k);
                }
            }
        }
        for &(cluster, k) in added {
            *self.incumbents.entry(k.to_owned()).or_default().entry(cluster.to_owned()).or_default() += 1;
        }
    }

    /// A WorkerSlice is gone.
    pub fn remove_worker(&mut self, namespace: &str, name: &str) {
        if let Some(old) = self.workers.remove(&(namespace.to_owned(), name.to_owned())) {
            self.reindex(Some(&old), None, true);
        }
    }

    /// Moves the indexes from what `old` said to what `new` says (either may be absent), with
    /// work in proportion to what differs: a WorkerSlice whose peers did not change (a status
    /// report, the hub's own patch echoed back) costs one pass over its peers, comparing.
    fn reindex(&mut self, old: Option<&WorkerSlice>, new: Option<&WorkerSlice>, touched: bool) {
        if touched {
            for w in old.iter().chain(new.iter()) {
                self.touch_worker(w);
            }
        }
        if let Some(w) = old {
            let key = key_of(w);
            remove_from(&mut self.by_name, &w.name_any(), &key.0);
            remove_from(&mut self.by_spec_slice, &w.spec.slice, &key);
            for c in worker_clusters(w) {
                remove_from(&mut self.by_cluster, &c, &key);
            }
            if !speaks_for_itself(w) {
                for slice in impostor_mentions(w) {
                    remove_from(&mut self.impostors, &slice, &key);
                }
            }
        }
        if let Some(w) = new {
            let key = key_of(w);
            self.by_name.entry(w.name_any()).or_default().insert(key.0.clone());
            self.by_spec_slice.entry(w.spec.slice.clone()).or_default().insert(key.clone());
            for c in worker_clusters(w) {
                self.by_cluster.entry(c).or_default().insert(key.clone());
            }
            if !speaks_for_itself(w) {
                for slice in impostor_mentions(w) {
                    self.impostors.entry(slice).or_default().insert(key.clone());
                }
            }
        }

        // What the WorkerSlices that speak for themselves said: published key and endpoint,
        // the VNI (a lost one is recovered from them), and the keys their peers carry.
        let (o, n) = (old.filter(|w| speaks_for_itself(w)), new.filter(|w| speaks_for_itself(w)));
        if o.is_some() != n.is_some() || o.map(|w| w.spec.vni) != n.map(|w| w.spec.vni) {
            self.vnis_dirty = true;
        }
        let at = |w: &WorkerSlice| (w.spec.slice.clone(), w.spec.cluster.clone());
        let (old_pairs, new_pairs) = (peer_keys(o), peer_keys(n));
        let (removed, added) = sorted_difference(&old_pairs, &new_pairs);
        let old_key = o.and_then(|w| Some((published_key(w)?, at(w))));
        let new_key = n.and_then(|w| Some((published_key(w)?, at(w))));
        let mut keys: BTreeSet<String> = removed.iter().chain(&added).map(|(_, k)| (*k).to_owned()).collect();
        if old_key != new_key {
            keys.extend(old_key.iter().chain(new_key.iter()).map(|(k, _)| (*k).to_owned()));
        }
        let before = self.snapshot(&keys);
        if old_key != new_key {
            if let Some((k, at)) = &old_key {
                remove_from(&mut self.publishers, *k, at);
            }
            if let Some((k, at)) = new_key {
                self.publishers.entry(k.to_owned()).or_default().insert(at);
            }
        }
        let old_ip = o.and_then(|w| Some((published_ip(w)?, at(w))));
        let new_ip = n.and_then(|w| Some((published_ip(w)?, at(w))));
        if old_ip != new_ip {
            if let Some((ip, at)) = &old_ip {
                remove_from(&mut self.endpoints, ip, at);
            }
            if let Some((ip, at)) = new_ip {
                self.endpoints.entry(ip).or_default().insert(at);
            }
        }
        self.move_incumbents(&removed, &added);
        self.keys_changed(&keys, &before);
    }

    /// For each key: the clusters that publish it and those it was distributed for, which is
    /// all a publication check reads.
    fn snapshot(&self, keys: &BTreeSet<String>) -> Vec<(BTreeSet<String>, BTreeSet<String>)> {
        keys.iter()
            .map(|k| {
                let publishers = self.publishers.get(k).into_iter().flatten().map(|(_, c)| c.clone()).collect();
                let incumbents = self.incumbents.get(k).into_iter().flatten().map(|(c, _)| c.clone()).collect();
                (publishers, incumbents)
            })
            .collect()
    }

    /// Marks dirty every slice that publishes one of `keys` whose facts differ from `before`
    /// (the changed WorkerSlice's own slices are dirty already).
    fn keys_changed(&mut self, keys: &BTreeSet<String>, before: &[(BTreeSet<String>, BTreeSet<String>)]) {
        let after = self.snapshot(keys);
        for ((k, was), now) in keys.iter().zip(before).zip(&after) {
            if was != now {
                let slices: Vec<String> =
                    self.publishers.get(k).into_iter().flatten().map(|(s, _)| s.clone()).collect();
                self.dirty.extend(slices);
            }
        }
    }

    /// The slices a WorkerSlice itself bears on: the slice of its name and of its spec.
    fn touch_worker(&mut self, w: &WorkerSlice) {
        self.dirty.insert(w.name_any());
        self.dirty.insert(w.spec.slice.clone());
    }

    /// Replans the slices that changes touched since the last call (and, when a VNI moved,
    /// the slices whose VNI moved); returns their names. A name whose SliceConfig is gone has
    /// its plan dropped.
    pub fn replan(&mut self) -> BTreeSet<String> {
        if self.vnis_dirty {
            self.vnis_dirty = false;
            let mut ordered: Vec<&SliceConfig> = self.slices.values().collect();
            ordered.sort_by_key(|s| creation_order(s));
            let vnis = allocate_vnis(&ordered, |slice| self.first_trusted(slice).map(|w| w.spec.vni));
            for (name, vni) in &vnis {
                if self.vnis.get(name) != Some(vni) {
                    self.dirty.insert(name.clone());
                }
            }
            for name in self.vnis.keys() {
                if !vnis.contains_key(name) {
                    self.dirty.insert(name.clone());
                }
            }
            self.vnis = vnis;
        }
        let dirty = std::mem::take(&mut self.dirty);
        for name in &dirty {
            match self.slices.get(name) {
                Some(slice) => {
                    let plan = plan_slice(slice, &self.facts(name));
                    self.plans.insert(name.clone(), plan);
                    self.planned += 1;
                }
                None => {
                    self.plans.remove(name);
                }
            }
        }
        dirty
    }

    /// Whether a change waits to be planned.
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || self.vnis_dirty
    }

    /// What a slice's plan depends on beside its SliceConfig, looked up.
    fn facts(&self, slice: &str) -> SliceFacts<'_> {
        let existing = self.trusted(slice);
        let mut refused: Vec<String> = self
            .impostors
            .get(slice)
            .into_iter()
            .flatten()
            .filter_map(|k| self.workers.get(k))
            .map(impostor_refusal)
            .collect();
        let forbidden = self.forbidden();
        let mut published = BTreeMap::new();
        for w in &existing {
            let (p, r) = check_publication(
                w,
                |k| self.publishers.get(k).into_iter().flatten().map(|(_, c)| c.as_str()).collect(),
                |k, c| self.incumbents.get(k).is_some_and(|i| i.contains_key(c)),
                &forbidden,
            );
            refused.extend(r);
            published.insert(w.spec.cluster.clone(), p);
        }
        SliceFacts {
            vni: self.vnis.get(slice).copied(),
            existing,
            registered: Box::new(|c| self.clusters.get(c).is_some_and(registered)),
            uplink: Box::new(|c| self.clusters.get(c).and_then(|c| c.spec.uplink_kbps)),
            published,
            refused,
            lists: self.lists,
        }
    }

    /// Every forbidden range, in the planner's order (slices, then clusters, by name). Only
    /// the slices with published endpoints need it; it is `O(slices + clusters)`, which is
    /// small beside planning a slice of many clusters.
    fn forbidden(&self) -> Vec<(IpNet, String)> {
        let mut out: Vec<(IpNet, String)> = self.slices.values().flat_map(slice_forbidden).collect();
        out.extend(self.clusters.values().flat_map(cluster_forbidden));
        out
    }

    /// The WorkerSlices of `slice` that speak for their cluster, in (namespace, name) order.
    #[must_use]
    pub fn trusted(&self, slice: &str) -> Vec<&WorkerSlice> {
        self.by_spec_slice
            .get(slice)
            .into_iter()
            .flatten()
            .filter_map(|k| self.workers.get(k))
            .filter(|w| speaks_for_itself(w))
            .collect()
    }

    fn first_trusted(&self, slice: &str) -> Option<&WorkerSlice> {
        self.by_spec_slice
            .get(slice)
            .into_iter()
            .flatten()
            .filter_map(|k| self.workers.get(k))
            .find(|w| speaks_for_itself(w))
    }

    /// The plan of a slice, as last replanned.
    #[must_use]
    pub fn plan(&self, slice: &str) -> Option<&SlicePlan> {
        self.plans.get(slice)
    }

    /// Every plan, by slice name.
    pub fn plans(&self) -> impl Iterator<Item = &SlicePlan> {
        self.plans.values()
    }

    /// A SliceConfig by name.
    #[must_use]
    pub fn slice(&self, name: &str) -> Option<&SliceConfig> {
        self.slices.get(name)
    }

    /// Every SliceConfig, by name.
    pub fn slices(&self) -> impl Iterator<Item = &SliceConfig> {
        self.slices.values()
    }

    /// A MemberCluster by name.
    #[must_use]
    pub fn cluster(&self, name: &str) -> Option<&MemberCluster> {
        self.clusters.get(name)
    }

    /// Every MemberCluster, by name.
    pub fn clusters(&self) -> impl Iterator<Item = &MemberCluster> {
        self.clusters.values()
    }

    /// A WorkerSlice of the hub's namespaces.
    #[must_use]
    pub fn worker(&self, namespace: &str, name: &str) -> Option<&WorkerSlice> {
        self.workers.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every WorkerSlice of the hub's namespaces, in (namespace, name) order.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerSlice> {
        self.workers.values()
    }

    /// The WorkerSlices named `slice` (one per cluster namespace).
    pub fn workers_named<'a>(&'a self, slice: &'a str) -> impl Iterator<Item = &'a WorkerSlice> + 'a {
        self.by_name
            .get(slice)
            .into_iter()
            .flatten()
            .filter_map(move |ns| self.workers.get(&(ns.clone(), slice.to_owned())))
    }

    /// Whether any WorkerSlice is named `slice` or names it in its spec.
    #[must_use]
    pub fn has_workers_of_slice(&self, slice: &str) -> bool {
        self.by_name.get(slice).is_some_and(|s| !s.is_empty())
            || self.by_spec_slice.get(slice).is_some_and(|s| !s.is_empty())
    }

    /// Whether any WorkerSlice is in `cluster`'s namespace or names it in its spec.
    #[must_use]
    pub fn has_workers_of_cluster(&self, cluster: &str) -> bool {
        self.by_cluster.get(cluster).is_some_and(|s| !s.is_empty())
    }

    /// How many slice plans were made since the index was created.
    #[must_use]
    pub fn planned(&self) -> u64 {
        self.planned
    }
}

/// (cluster, key) of each peer a WorkerSlice's spec lists with a key, sorted.
fn peer_keys(w: Option<&WorkerSlice>) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = w
        .map(|w| w.spec.peers.iter().filter_map(|p| Some((p.cluster.as_str(), p.public_key.as_deref()?))).collect())
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The pairs in `old` and not in `new`, and the other way round (both sorted; as multisets).
type Pairs<'a> = Vec<(&'a str, &'a str)>;
fn sorted_difference<'a>(old: &[(&'a str, &'a str)], new: &[(&'a str, &'a str)]) -> (Pairs<'a>, Pairs<'a>) {
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    loop {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                removed.push(*a);
                i += 1;
            }
            (Some(a), None) => {
                removed.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                added.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (removed, added)
}

/// Whether a plan reads the same from `old` as from `new`: spec, generation, deletion,
/// creation (the VNI order), the VNI recorded and each cluster's recorded index (for a refused
/// slice, its recorded allocations whole).
fn plan_reads_the_same(old: &SliceConfig, new: &SliceConfig, refused: bool) -> bool {
    let (o, n) = (old.status.as_ref(), new.status.as_ref());
    fn allocations(s: Option<&crate::crd::SliceConfigStatus>) -> Vec<(&str, u32)> {
        s.map(|st| st.clusters.iter().map(|a| (a.cluster.as_str(), a.index)).collect()).unwrap_or_default()
    }
    old.spec == new.spec
        && old.metadata.generation == new.metadata.generation
        && old.metadata.deletion_timestamp == new.metadata.deletion_timestamp
        && old.metadata.creation_timestamp == new.metadata.creation_timestamp
        && o.and_then(|st| st.vni) == n.and_then(|st| st.vni)
        && allocations(o) == allocations(n)
        && (!refused || o.map(|st| &st.clusters) == n.map(|st| &st.clusters))
}

/// The clusters a WorkerSlice bears on: the one of its namespace and the one its spec names.
fn worker_clusters(w: &WorkerSlice) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Some(c) = w.metadata.namespace.as_deref().and_then(|ns| ns.strip_prefix(CLUSTER_NAMESPACE_PREFIX)) {
        out.insert(c.to_owned());
    }
    out.insert(w.spec.cluster.clone());
    out
}

fn published_key(w: &WorkerSlice) -> Option<&str> {
    w.status.as_ref().and_then(|s| s.gateway_public_key.as_deref())
}

fn published_ip(w: &WorkerSlice) -> Option<IpAddr> {
    w.status.as_ref().and_then(|s| s.gateway_endpoint.as_deref()).and_then(endpoint_ip)
}

fn remove_from<K: Ord + std::borrow::Borrow<Q>, V: Ord, Q: Ord + ?Sized>(
    map: &mut BTreeMap<K, BTreeSet<V>>,
    key: &Q,
    value: &V,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
