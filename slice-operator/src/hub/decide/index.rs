//! The hub's decision kept current from changes (pure): [`HubIndex`] holds what the hub has
//! seen, indexed ([`PlanIndex`] for the planner's part), learns each object a watch reports,
//! and decides only for the slices and clusters those changes touched. A heartbeat (a
//! MemberCluster status change) touches its cluster's `Healthy` condition and nothing else:
//! no slice is planned and, while the cluster stays healthy, nothing is written.
//!
//! [`decide`](super::decide) is this with everything in scope, from an index made of the
//! whole world; the tests check that after any change to a converged world the scoped decision
//! makes the same requests as the whole one.
//!
//! What the hub keeps in `slicenet-peers` (pages, and per member cluster a Role and its
//! RoleBinding) is learnt in both modes. Paged, it is kept as the plans say: a page, Role or
//! binding that someone changed or deleted is written again. Inline (`--inline-peers`), it is
//! what an earlier paging hub left: each slice's pages and each cluster's Role and binding are
//! deleted once none of the WorkerSlices that would read them (those with `peerPages`, not being
//! deleted) is left, so a worker never loses its peers before its WorkerSlice carries them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use slice_api::crd::{
    CLUSTER_NAMESPACE_PREFIX, Condition, MemberCluster, ServiceAllocation, SliceConfig, SlicePeers, WorkerSlice,
    cluster_namespace, condition, peer_page_name, set_condition,
};
use slice_api::names::PEERS_ROLE_PREFIX;
use slice_api::planner::index::PlanIndex;
use slice_api::planner::{EXPORTS_ACCEPTED, PeerLists, SlicePlan};

use super::super::health::{HEALTHY, healthy_condition};
use super::super::pods::PODS_ACCEPTED;
use super::{
    Action, Decision, FinalizedKind, PlanSummary, SpecLists, World, add_finalizer, binds_as_planned, changed_fields,
    exports_condition, has_hub_finalizer, health_notice, new_page, new_worker, peers_binding, peers_role, peers_rules,
    pods_condition, remove_finalizer, slice_notices, slice_status_patch, status_patch, to_json, worker_patch,
};
use crate::events::{Notice, reason, reference, reference_to};

/// What the hub has seen, indexed, and what it has yet to decide about.
#[derive(Debug, Clone)]
pub struct HubIndex {
    plans: PlanIndex,
    stale_after: Duration,
    /// Slice names whose objects must be decided again (their plan may be the same).
    slices: BTreeSet<String>,
    /// Clusters whose finalizer, namespace, teardown or `Healthy` must be decided again.
    clusters: BTreeSet<String>,
    /// Clusters whose status alone changed (a heartbeat): only `Healthy` is decided again.
    health: BTreeSet<String>,
    /// When each registered cluster's heartbeat goes stale, in time order.
    deadlines: BTreeSet<(Timestamp, String)>,
    deadline_of: BTreeMap<String, Timestamp>,
    /// Each member cluster's peer Role (paged peers), by cluster.
    roles: BTreeMap<String, Role>,
    /// Each member cluster's RoleBinding of its peer Role, by cluster.
    bindings: BTreeMap<String, RoleBinding>,
    /// Clusters whose peer Role and binding must be decided again (one changed or went).
    role_scope: BTreeSet<String>,
    /// How many WorkerSlices read pages (`peerPages`, not being deleted), by slice and by the
    /// cluster of their namespace: an inline hub deletes a slice's pages, and a cluster's Role,
    /// only when none is left.
    readers: PageReaders,
    /// Slice → each member's page count, as the plans last said (paged peers).
    members: BTreeMap<String, BTreeMap<String, u32>>,
    /// Cluster → the pages it may read: every page of each slice it is planned in. Kept from
    /// the replanned slices' members, so that an event costs in proportion to the memberships it
    /// changed, not to every member's slices.
    readable: BTreeMap<String, BTreeSet<String>>,
    /// Decisions made since the index was created.
    passes: u64,
}

/// How much a decision covered, for the benchmark and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Slices replanned by the planner.
    pub planned: usize,
    /// Slices whose objects were compared (planned or not).
    pub slices: usize,
    /// Clusters whose objects were compared.
    pub clusters: usize,
}

impl HubIndex {
    /// An index of `world` with everything in scope.
    #[must_use]
    pub fn new(world: &World, stale_after: Duration) -> Self {
        Self::new_with(world, PeerLists::Inline, stale_after)
    }

    /// An index of `world` with everything in scope, the peers where `lists` says (paged: the
    /// world's pages and peer Roles are learnt and decided as well).
    #[must_use]
    pub fn new_with(world: &World, lists: PeerLists, stale_after: Duration) -> Self {
        let mut index = Self {
            plans: PlanIndex::with_lists(lists),
            roles: BTreeMap::new(),
            bindings: BTreeMap::new(),
            role_scope: BTreeSet::new(),
            readers: PageReaders::default(),
            members: BTreeMap::new(),
            readable: BTreeMap::new(),
            stale_after,
            slices: BTreeSet::new(),
            clusters: BTreeSet::new(),
            health: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            deadline_of: BTreeMap::new(),
            passes: 0,
        };
        for c in &world.clusters {
            index.observe_cluster(c.clone());
        }
        for s in &world.slices {
            index.observe_slice(s.clone());
        }
        for w in &world.workers {
            index.observe_worker(w.clone());
        }
        for p in &world.pages {
            index.observe_peers(p.clone());
        }
        for r in &world.peer_roles {
            index.observe_role(r.clone());
        }
        for b in &world.peer_bindings {
            index.observe_binding(b.clone());
        }
        index
    }

    /// A `SlicePeers` page was created or changed (the hub's own write, come back): its slice
    /// is decided again only when the page is not what the plan says.
    pub fn observe_peers(&mut self, page: SlicePeers) {
        let (slice, number) = (page.spec.slice.clone(), page.spec.page as usize);
        let name = page.name_any();
        let as_planned = self
            .plans
            .plan(&slice)
            .and_then(|p| p.pages.as_ref())
            .and_then(|pages| pages.get(number))
            .is_some_and(|peers| *peers == page.spec.peers && peer_page_name(&slice, page.spec.page) == name);
        self.plans.upsert_peers(page);
        if !as_planned {
            self.slices.insert(slice);
        }
    }

    /// A `SlicePeers` page is gone.
    pub fn forget_peers(&mut self, name: &str) {
        if let Some(slice) = self.plans.peers_page(name).map(|p| p.spec.slice.clone()) {
            self.slices.insert(slice);
            self.plans.remove_peers(name);
        }
    }

    /// A Role in `slicenet-peers` was created or changed (the peer Role of the cluster of its
    /// name): that cluster's Role is decided again when it changed.
    pub fn observe_role(&mut self, role: Role) {
        let Some(cluster) = role.name_any().strip_prefix(PEERS_ROLE_PREFIX).map(str::to_owned) else { return };
        if self.roles.get(&cluster).is_none_or(|old| old.rules != role.rules) {
            self.role_scope.insert(cluster.clone());
        }
        self.roles.insert(cluster, role);
    }

    /// A Role in `slicenet-peers` is gone.
    pub fn forget_role(&mut self, name: &str) {
        let Some(cluster) = name.strip_prefix(PEERS_ROLE_PREFIX) else { return };
        if self.roles.remove(cluster).is_some() {
            self.role_scope.insert(cluster.to_owned());
        }
    }

    /// A RoleBinding in `slicenet-peers` was created or changed (the binding of the peer Role
    /// of the cluster of its name): that cluster's binding is decided again when what it binds
    /// changed.
    pub fn observe_binding(&mut self, binding: RoleBinding) {
        let Some(cluster) = binding.name_any().strip_prefix(PEERS_ROLE_PREFIX).map(str::to_owned) else { return };
        let bound = |b: &RoleBinding| (b.role_ref.clone(), b.subjects.clone());
        if self.bindings.get(&cluster).is_none_or(|old| bound(old) != bound(&binding)) {
            self.role_scope.insert(cluster.clone());
        }
        self.bindings.insert(cluster, binding);
    }

    /// A RoleBinding in `slicenet-peers` is gone.
    pub fn forget_binding(&mut self, name: &str) {
        let Some(cluster) = name.strip_prefix(PEERS_ROLE_PREFIX) else { return };
        if self.bindings.remove(cluster).is_some() {
            self.role_scope.insert(cluster.to_owned());
        }
    }

    /// A SliceConfig was created or changed.
    pub fn observe_slice(&mut self, slice: SliceConfig) {
        self.slices.insert(slice.name_any());
        self.plans.upsert_slice(slice);
    }

    /// A SliceConfig is gone.
    pub fn forget_slice(&mut self, name: &str) {
        self.slices.insert(name.to_owned());
        self.plans.remove_slice(name);
    }

    /// A MemberCluster was created or changed (a heartbeat among them: it replans nothing).
    pub fn observe_cluster(&mut self, cluster: MemberCluster) {
        let name = cluster.name_any();
        let status_only = self.plans.cluster(&name).is_some_and(|old| {
            (&old.spec, &old.metadata.finalizers, &old.metadata.deletion_timestamp, old.metadata.generation)
                == (
                    &cluster.spec,
                    &cluster.metadata.finalizers,
                    &cluster.metadata.deletion_timestamp,
                    cluster.metadata.generation,
                )
        });
        if status_only {
            self.health.insert(name.clone());
        } else {
            self.clusters.insert(name.clone());
        }
        self.set_deadline(&name, deadline(&cluster, self.stale_after));
        self.plans.upsert_cluster(cluster);
    }

    /// A MemberCluster is gone.
    pub fn forget_cluster(&mut self, name: &str) {
        self.clusters.insert(name.to_owned());
        self.set_deadline(name, None);
        self.plans.remove_cluster(name);
    }

    /// A WorkerSlice was created or changed (one outside the hub's namespaces is ignored).
    pub fn observe_worker(&mut self, worker: WorkerSlice) {
        if !slice_api::planner::index::is_hub_managed(&worker) {
            return;
        }
        let old_worker = self.plans.worker(&worker.namespace().unwrap_or_default(), &worker.name_any());
        let old = old_worker.map(touched_by);
        let old_reader = old_worker.and_then(page_reader);
        self.move_reader(old_reader, page_reader(&worker));
        let new = touched_by(&worker);
        // The hub's own write come back, as planned: nothing to decide again.
        if self.plans.upsert_worker(worker) {
            self.touch(old);
            self.touch(Some(new));
        }
    }

    /// A WorkerSlice is gone.
    pub fn forget_worker(&mut self, namespace: &str, name: &str) {
        let old_worker = self.plans.worker(namespace, name);
        let old = old_worker.map(touched_by);
        let old_reader = old_worker.and_then(page_reader);
        self.move_reader(old_reader, None);
        if old.is_some() {
            self.touch(old);
            self.plans.remove_worker(namespace, name);
        }
    }

    /// A WorkerSlice that read pages as `old` reads them as `new`. Inline, the last reader of a
    /// slice's pages or of a cluster's Role gone puts them in scope, to be deleted.
    fn move_reader(&mut self, old: Option<(String, String)>, new: Option<(String, String)>) {
        if old == new {
            return;
        }
        if let Some((slice, cluster)) = old {
            let (slice_left, cluster_left) = self.readers.remove(&slice, &cluster);
            if self.plans.lists() == PeerLists::Inline {
                if slice_left == 0 {
                    self.slices.insert(slice);
                }
                if cluster_left == 0 {
                    self.role_scope.insert(cluster);
                }
            }
        }
        if let Some((slice, cluster)) = new {
            self.readers.add(slice, cluster);
        }
    }

    fn touch(&mut self, touched: Option<(Vec<String>, Vec<String>)>) {
        if let Some((slices, clusters)) = touched {
            self.slices.extend(slices);
            self.clusters.extend(clusters);
        }
    }

    fn set_deadline(&mut self, cluster: &str, at: Option<Timestamp>) {
        if let Some(old) = self.deadline_of.remove(cluster) {
            self.deadlines.remove(&(old, cluster.to_owned()));
        }
        if let Some(at) = at {
            self.deadline_of.insert(cluster.to_owned(), at);
            self.deadlines.insert((at, cluster.to_owned()));
        }
    }

    /// Follows the members of each replanned slice (with their page counts) into the pages each
    /// cluster may read; returns the clusters whose pages changed (`O(members)` per slice).
    fn follow_memberships(&mut self, replanned: &BTreeSet<String>) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        if self.plans.lists() != PeerLists::Paged {
            return changed;
        }
        for slice in replanned {
            let new: BTreeMap<String, u32> = self
                .plans
                .plan(slice)
                .map(|p| {
                    p.workers.iter().filter_map(|w| Some((w.cluster.clone(), w.peer_pages.as_ref()?.pages))).collect()
                })
                .unwrap_or_default();
            let old = self.members.remove(slice).unwrap_or_default();
            for (cluster, pages) in &old {
                if new.get(cluster) != Some(pages) {
                    if let Some(names) = self.readable.get_mut(cluster) {
                        for i in 0..*pages {
                            names.remove(&peer_page_name(slice, i));
                        }
                        if names.is_empty() {
                            self.readable.remove(cluster);
                        }
                    }
                    changed.insert(cluster.clone());
                }
            }
            for (cluster, pages) in &new {
                if old.get(cluster) != Some(pages) {
                    let names = self.readable.entry(cluster.clone()).or_default();
                    names.extend((0..*pages).map(|i| peer_page_name(slice, i)));
                    changed.insert(cluster.clone());
                }
            }
            if !new.is_empty() {
                self.members.insert(slice.clone(), new);
            }
        }
        changed
    }

    /// Whether anything waits to be decided at `now` (a change, or a heartbeat gone stale).
    #[must_use]
    pub fn is_due(&self, now: Timestamp) -> bool {
        !self.slices.is_empty()
            || !self.role_scope.is_empty()
            || !self.clusters.is_empty()
            || !self.health.is_empty()
            || self.plans.is_dirty()
            || self.deadlines.first().is_some_and(|(at, _)| *at < now)
    }

    /// The planner's index.
    #[must_use]
    pub fn plans(&self) -> &PlanIndex {
        &self.plans
    }

    /// How many decisions were made.
    #[must_use]
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// The object an action writes, for its failure's Event (see [`super::action_subject`]).
    #[must_use]
    pub fn action_subject(&self, action: &Action) -> ObjectReference {
        let slice = |name: &str| {
            self.plans
                .slice(name)
                .map_or_else(|| reference_to("slicenet.io/v1alpha1", "SliceConfig", None, name, None), reference)
        };
        let cluster = |name: &str| {
            self.plans
                .cluster(name)
                .map_or_else(|| reference_to("slicenet.io/v1alpha1", "MemberCluster", None, name, None), reference)
        };
        match action {
            Action::SetFinalizers { kind: FinalizedKind::SliceConfig, name, .. }
            | Action::PatchSliceStatus { name, .. } => slice(name),
            Action::SetFinalizers { kind: FinalizedKind::MemberCluster, name, .. }
            | Action::PatchClusterStatus { name, .. }
            | Action::EnsureNamespace { cluster: name, .. }
            | Action::DeleteNamespace { cluster: name, .. } => cluster(name),
            Action::CreateWorkerSlice(w) => slice(&w.spec.slice),
            Action::CreatePeers(p) => slice(&p.spec.slice),
            Action::PatchPeers { name, .. } | Action::DeletePeers { name } => {
                slice(&self.plans.peers_page(name).map_or_else(String::new, |p| p.spec.slice.clone()))
            }
            Action::GrantPeers { cluster: name, .. }
            | Action::BindPeers { cluster: name, .. }
            | Action::RevokePeers { cluster: name } => cluster(name),
            Action::PatchWorkerSlice { namespace, name, .. } | Action::DeleteWorkerSlice { namespace, name } => {
                self.plans.worker(namespace, name).map_or_else(
                    || reference_to("slicenet.io/v1alpha1", "WorkerSlice", Some(namespace), name, None),
                    reference,
                )
            }
        }
    }

    /// Decides the requests for what changed since the last decision, at `now`, and how much
    /// that covered. Takes the changes: the next call decides only what changes after this one
    /// (a failed request is repaired by the hub's periodic whole pass, or by the change its
    /// retry brings).
    pub fn decide_with_coverage(&mut self, now: Timestamp) -> (Decision, Coverage) {
        // Kubernetes writes times with whole seconds.
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        let now_text = now.to_string();
        self.passes += 1;
        let replanned = self.plans.replan();
        let role_changed = self.follow_memberships(&replanned);
        let mut scope_slices = std::mem::take(&mut self.slices);
        scope_slices.extend(replanned.iter().cloned());
        let scope_clusters = std::mem::take(&mut self.clusters);
        let role_scope = std::mem::take(&mut self.role_scope);
        let mut health = std::mem::take(&mut self.health);
        // Heartbeats gone stale since: their clusters' `Healthy` flips.
        while let Some((at, cluster)) = self.deadlines.first().cloned() {
            if at >= now {
                break;
            }
            self.deadlines.pop_first();
            self.deadline_of.remove(&cluster);
            health.insert(cluster);
        }
        health.extend(scope_clusters.iter().cloned());
        let coverage = Coverage { planned: replanned.len(), slices: scope_slices.len(), clusters: health.len() };
        let index = &self.plans;

        // The plans in scope, and what the hub merges into them: multi-cluster services (the
        // exports member clusters report go into every member's spec, `imports`, and the
        // SliceConfig's status, `services`, `ExportsAccepted`) and the pod directory (each
        // member gets the other members' checked reports, `spec.pods`).
        let plans: Vec<&SlicePlan> = scope_slices.iter().filter_map(|s| index.plan(s)).collect();
        let mut services: BTreeMap<String, Vec<ServiceAllocation>> = BTreeMap::new();
        let mut lists: BTreeMap<String, Vec<SpecLists>> = BTreeMap::new();
        let mut conditions: BTreeMap<String, Vec<Condition>> = BTreeMap::new();
        for p in &plans {
            let Some(slice) = index.slice(&p.name) else { continue };
            let trusted = index.trusted(&p.name);
            let merged = super::super::services::merge(slice, p, &trusted);
            let pods = super::super::pods::merge(p, &trusted);
            let per_spec = p
                .workers
                .iter()
                .map(|spec| SpecLists {
                    imports: super::super::services::imports_for(&merged.imports, &spec.namespaces),
                    pods: pods.for_cluster(&spec.cluster),
                })
                .collect();
            lists.insert(p.name.clone(), per_spec);
            let mut conds = p.conditions.clone();
            let had = slice.status.as_ref().is_some_and(|st| condition(&st.conditions, EXPORTS_ACCEPTED).is_some());
            if had || !merged.imports.is_empty() || !merged.refusals.is_empty() {
                conds.push(exports_condition(&merged));
            }
            services.insert(p.name.clone(), merged.services);
            let had = slice.status.as_ref().is_some_and(|st| condition(&st.conditions, PODS_ACCEPTED).is_some());
            if had || !pods.refusals.is_empty() {
                conds.push(pods_condition(&pods));
            }
            conditions.insert(p.name.clone(), conds);
        }
        let mut actions = Vec::new();
        let slices: Vec<&SliceConfig> = scope_slices.iter().filter_map(|s| index.slice(s)).collect();
        let clusters: Vec<&MemberCluster> = scope_clusters.iter().filter_map(|c| index.cluster(c)).collect();
        let mut notices = Vec::new();
        // Announces `notice` once the action pushed last succeeded.
        let mut announce = |actions: &Vec<Action>, notice: Notice| notices.push((actions.len() - 1, notice));

        // 1. Finalizers on.
        for s in &slices {
            if let Some(a) = add_finalizer(FinalizedKind::SliceConfig, *s) {
                actions.push(a);
            }
        }
        for c in &clusters {
            if let Some(a) = add_finalizer(FinalizedKind::MemberCluster, *c) {
                actions.push(a);
                let note = format!(
                    "member cluster {} joined; its WorkerSlices go into namespace {}",
                    c.name_any(),
                    cluster_namespace(&c.name_any())
                );
                announce(&actions, Notice::normal(reference(*c), reason::CLUSTER_JOINED, "Register", note));
            }
        }

        // 2. Namespaces of the registered clusters in scope, and of those a WorkerSlice is
        //    created for now.
        let mut namespaces: BTreeSet<String> =
            clusters.iter().filter(|c| c.metadata.deletion_timestamp.is_none()).map(|c| c.name_any()).collect();
        for p in &plans {
            for spec in &p.workers {
                if index.worker(&cluster_namespace(&spec.cluster), &p.name).is_none() {
                    namespaces.insert(spec.cluster.clone());
                }
            }
        }
        for cluster in namespaces {
            actions.push(Action::EnsureNamespace { namespace: cluster_namespace(&cluster), cluster });
        }

        // 2b. Peer pages. Paged: the pages of the slices in scope, then the members' peer Roles
        //     and bindings, all before the WorkerSlices whose revision sends their workers to
        //     read them. Inline: what paging left, once nothing reads it (the WorkerSlices get
        //     their peers back in this pass; their echo puts the leftovers in scope).
        let paged = index.lists() == PeerLists::Paged;
        for s in &scope_slices {
            let wanted: &[Vec<slice_api::crd::WorkerPeer>] = if paged {
                match index.plan(s).map(|p| p.pages.as_ref()) {
                    // A refused plan keeps the pages as they are.
                    Some(None) => continue,
                    Some(Some(pages)) => pages,
                    None => &[],
                }
            } else if self.readers.of_slice(s) > 0 {
                continue;
            } else {
                &[]
            };
            for (i, peers) in wanted.iter().enumerate() {
                let number = u32::try_from(i).unwrap_or(u32::MAX);
                let name = peer_page_name(s, number);
                match index.peers_page(&name) {
                    None if !peers.is_empty() => {
                        actions.push(Action::CreatePeers(Box::new(new_page(s, number, peers))))
                    }
                    Some(_) if peers.is_empty() => actions.push(Action::DeletePeers { name }),
                    Some(old) if old.spec.peers != *peers || old.spec.slice != *s || old.spec.page != number => {
                        let patch = serde_json::json!({"spec": {"slice": s, "page": number, "peers": to_json(peers)}});
                        actions.push(Action::PatchPeers { name, patch });
                    }
                    _ => {}
                }
            }
            let stale: Vec<String> = index
                .peers_pages()
                .filter(|p| p.spec.slice == *s && (p.spec.page as usize) >= wanted.len())
                .map(ResourceExt::name_any)
                .collect();
            actions.extend(stale.into_iter().map(|name| Action::DeletePeers { name }));
        }
        // The Roles and bindings of the clusters whose memberships the replanned slices
        // changed, whose Role or binding changed, or that are in scope themselves.
        let mut role_clusters: BTreeSet<String> = role_scope;
        role_clusters.extend(scope_clusters.iter().cloned());
        role_clusters.extend(role_changed);
        for cluster in role_clusters {
            let names: Vec<String> = self.readable.get(&cluster).into_iter().flatten().cloned().collect();
            if names.is_empty() {
                // Inline, a cluster whose worker still reads pages keeps its Role until its
                // WorkerSlices carry the peers.
                let held = self.roles.contains_key(&cluster) || self.bindings.contains_key(&cluster);
                if held && (paged || self.readers.of_cluster(&cluster) == 0) {
                    actions.push(Action::RevokePeers { cluster });
                }
                continue;
            }
            match self.roles.get(&cluster) {
                None => actions.push(Action::GrantPeers {
                    role: Box::new(peers_role(&cluster, &names)),
                    cluster: cluster.clone(),
                    create: true,
                }),
                Some(old) if old.rules.as_deref() != Some(peers_rules(&names).as_slice()) => {
                    actions.push(Action::GrantPeers {
                        role: Box::new(peers_role(&cluster, &names)),
                        cluster: cluster.clone(),
                        create: false,
                    });
                }
                Some(_) => {}
            }
            // The binding after its Role: RBAC lets the hub bind only a Role that exists.
            let replace = match self.bindings.get(&cluster) {
                None => false,
                Some(b) if !binds_as_planned(b, &cluster) => true,
                Some(_) => continue,
            };
            actions.push(Action::BindPeers { binding: Box::new(peers_binding(&cluster)), cluster, replace });
        }

        // 3. WorkerSlices of the slice names in scope.
        let slice_ref = |name: &str| index.slice(name).map(reference);
        for p in &plans {
            for (spec, lists) in p.workers.iter().zip(&lists[&p.name]) {
                let key = (cluster_namespace(&spec.cluster), p.name.clone());
                match index.worker(&key.0, &key.1) {
                    None => {
                        let w = new_worker(&key.0, &p.name, spec, lists);
                        let note = format!("created WorkerSlice {}/{} for cluster {}", key.0, p.name, spec.cluster);
                        let related = reference(&w);
                        actions.push(Action::CreateWorkerSlice(Box::new(w)));
                        if let Some(slice) = slice_ref(&p.name) {
                            let n = Notice::normal(slice, reason::WORKER_SLICE_CREATED, "Plan", note);
                            announce(&actions, n.with_related(related));
                        }
                    }
                    Some(w) if w.metadata.deletion_timestamp.is_some() => {}
                    Some(w) => {
                        if let Some(patch) = worker_patch(w, &p.name, spec, lists) {
                            let note = changed_fields(&patch);
                            actions.push(Action::PatchWorkerSlice { namespace: key.0, name: key.1, patch });
                            announce(
                                &actions,
                                Notice::normal(reference(w), reason::WORKER_SLICE_UPDATED, "Plan", note),
                            );
                        }
                    }
                }
            }
        }
        // Planned: the plan of its name has a spec for the cluster of its namespace.
        let planned = |w: &WorkerSlice| {
            let cluster = w.metadata.namespace.as_deref().and_then(|ns| ns.strip_prefix(CLUSTER_NAMESPACE_PREFIX));
            cluster.is_some_and(|c| index.plan(&w.name_any()).is_some_and(|p| p.worker(c).is_some()))
        };
        let mut unplanned: Vec<&WorkerSlice> = scope_slices
            .iter()
            .flat_map(|s| index.workers_named(s))
            .filter(|w| !planned(w) && w.metadata.deletion_timestamp.is_none())
            .collect();
        unplanned.sort_by_key(|w| (w.namespace(), w.name_any()));
        for w in unplanned {
            let (namespace, name) = (w.namespace().unwrap_or_default(), w.name_any());
            actions.push(Action::DeleteWorkerSlice { namespace: namespace.clone(), name: name.clone() });
            let note = format!("deleted WorkerSlice {namespace}/{name} (cluster {})", w.spec.cluster);
            let regarding = slice_ref(&w.spec.slice).unwrap_or_else(|| reference(w));
            announce(
                &actions,
                Notice::normal(regarding, reason::WORKER_SLICE_DELETED, "Plan", note).with_related(reference(w)),
            );
        }

        // 4. SliceConfigs: status, or finalizer off.
        for s in &slices {
            let name = s.name_any();
            let releasing =
                s.metadata.deletion_timestamp.is_some() && has_hub_finalizer(*s) && !index.has_workers_of_slice(&name);
            if releasing {
                actions.push(remove_finalizer(FinalizedKind::SliceConfig, *s));
                continue;
            }
            let exported = services.get(&name).map_or(&[][..], Vec::as_slice);
            let conds = conditions.get(&name).map_or(&[][..], Vec::as_slice);
            if let Some(p) = plans.iter().find(|p| p.name == name)
                && let Some(patch) = slice_status_patch(s, p, conds, exported, &now_text)
            {
                actions.push(Action::PatchSliceStatus { name, patch });
                let old = s.status.as_ref().map(|st| st.conditions.as_slice()).unwrap_or_default();
                for n in slice_notices(s, old, conds) {
                    announce(&actions, n);
                }
            }
        }

        // 5. MemberClusters: health, or teardown (of those in scope and those whose heartbeat
        //    changed or went stale).
        for c in health.iter().filter_map(|c| index.cluster(c)) {
            let name = c.name_any();
            if c.metadata.deletion_timestamp.is_some() {
                let namespace = cluster_namespace(&name);
                if has_hub_finalizer(c) && !index.has_workers_of_cluster(&name) {
                    actions.push(Action::DeleteNamespace { cluster: name.clone(), namespace: namespace.clone() });
                    actions.push(remove_finalizer(FinalizedKind::MemberCluster, c));
                    let note = format!("member cluster {name} left: namespace {namespace} deleted");
                    announce(&actions, Notice::normal(reference(c), reason::CLUSTER_LEFT, "Unregister", note));
                }
                continue;
            }
            let (mut healthy, _) = healthy_condition(c.status.as_ref(), now, self.stale_after);
            healthy.observed_generation = c.metadata.generation;
            let old = c.status.clone().unwrap_or_default();
            let mut new = old.clone();
            let before = condition(&old.conditions, HEALTHY).cloned();
            set_condition(&mut new.conditions, healthy.clone(), &now_text);
            if new != old {
                let patch = status_patch(c.status.as_ref(), &new);
                actions.push(Action::PatchClusterStatus { name, patch });
                if let Some(n) = health_notice(c, before.as_ref(), &healthy) {
                    announce(&actions, n);
                }
            }
        }

        // The next moment a healthy cluster's heartbeat goes stale: the earliest deadline
        // (the time left grows with the deadline), one second late rather than early.
        let requeue_after = self.deadlines.iter().find(|(at, _)| *at >= now).and_then(|(_, cluster)| {
            let c = index.cluster(cluster)?;
            let (_, left) = healthy_condition(c.status.as_ref(), now, self.stale_after);
            left.map(|l| l + Duration::from_secs(1))
        });

        let plans =
            plans.iter().map(|p| PlanSummary { name: p.name.clone(), vni: p.vni, clusters: p.workers.len() }).collect();
        (Decision { actions, plans, requeue_after, notices }, coverage)
    }

    /// [`Self::decide_with_coverage`] without the coverage.
    pub fn decide(&mut self, now: Timestamp) -> Decision {
        self.decide_with_coverage(now).0
    }
}

/// The slice whose pages a WorkerSlice's worker reads, and the cluster of its namespace whose
/// Role lets it: `None` when it reads no page (peers inline, or being deleted: its worker tears
/// the slice down and needs no peers).
fn page_reader(w: &WorkerSlice) -> Option<(String, String)> {
    if w.spec.peer_pages.is_none() || w.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let cluster = w.metadata.namespace.as_deref().and_then(|ns| ns.strip_prefix(CLUSTER_NAMESPACE_PREFIX))?;
    Some((w.spec.slice.clone(), cluster.to_owned()))
}

/// How many WorkerSlices read pages, by slice and by cluster.
#[derive(Debug, Clone, Default)]
struct PageReaders {
    by_slice: BTreeMap<String, usize>,
    by_cluster: BTreeMap<String, usize>,
}

impl PageReaders {
    fn add(&mut self, slice: String, cluster: String) {
        *self.by_slice.entry(slice).or_default() += 1;
        *self.by_cluster.entry(cluster).or_default() += 1;
    }

    /// Counts one reader less; returns how many are left of the slice and of the cluster.
    fn remove(&mut self, slice: &str, cluster: &str) -> (usize, usize) {
        fn down(map: &mut BTreeMap<String, usize>, key: &str) -> usize {
            let Some(n) = map.get_mut(key) else { return 0 };
            *n = n.saturating_sub(1);
            let left = *n;
            if left == 0 {
                map.remove(key);
            }
            left
        }
        (down(&mut self.by_slice, slice), down(&mut self.by_cluster, cluster))
    }

    fn of_slice(&self, slice: &str) -> usize {
        self.by_slice.get(slice).copied().unwrap_or(0)
    }

    fn of_cluster(&self, cluster: &str) -> usize {
        self.by_cluster.get(cluster).copied().unwrap_or(0)
    }
}

/// A WorkerSlice bears on the slices of its name and spec (their objects) and the clusters of
/// its namespace and spec (whose teardown waits for it).
fn touched_by(w: &WorkerSlice) -> (Vec<String>, Vec<String>) {
    let mut clusters = vec![w.spec.cluster.clone()];
    if let Some(c) = w.metadata.namespace.as_deref().and_then(|ns| ns.strip_prefix(CLUSTER_NAMESPACE_PREFIX)) {
        clusters.push(c.to_owned());
    }
    (vec![w.name_any(), w.spec.slice.clone()], clusters)
}

/// When `cluster`'s heartbeat goes stale (`None`: it is being deleted, or has no valid
/// heartbeat, so it never turns stale by time alone).
fn deadline(cluster: &MemberCluster, stale_after: Duration) -> Option<Timestamp> {
    if cluster.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let beat: Timestamp = cluster.status.as_ref()?.last_heartbeat.as_deref()?.parse().ok()?;
    beat.checked_add(SignedDuration::try_from(stale_after).ok()?).ok()
}
