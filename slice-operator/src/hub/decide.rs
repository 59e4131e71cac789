//! The hub's decisions (pure): what the API server holds ([`World`]) and the time → the
//! requests that make it match the plan ([`Action`]s, in the order they must be made).
//!
//! Order and reasons:
//! 1. The hub finalizer goes onto every SliceConfig and MemberCluster that lacks it (and is not
//!    being deleted: the API server refuses new finalizers then), so nothing the hub made can be
//!    orphaned by a deletion it has not seen.
//! 2. The namespace of every registered cluster is made sure of before any WorkerSlice goes in.
//! 3. WorkerSlices: created when missing, patched when their spec or the hub's labels differ,
//!    deleted when no longer planned. One that is already being deleted is left alone (its worker
//!    holds it with its own finalizer until it has torn down); if it is planned again, it is
//!    created anew once it is gone.
//! 4. SliceConfigs, in name order: the status, only when it changed; or, for one being deleted
//!    once none of its WorkerSlices is left, the hub finalizer off (its workers hold their
//!    WorkerSlices with their own finalizer until they have torn down).
//! 5. MemberClusters, in name order: the `Healthy` condition, only when it changed; or, for one
//!    being deleted once none of its WorkerSlices is left, its namespace deleted and then the hub
//!    finalizer off.
//!
//! Writes are JSON merge patches computed as the difference between what was read and what is
//! wanted ([`merge_diff`]): they carry only what changes, spell out removals as `null`, and
//! never touch fields other writers own (a worker's status, other labels and finalizers).
//!
//! Beside the actions, the decision says which Events their success is worth
//! ([`Decision::notices`]): always from a change (a condition that flips between what was read
//! and what is written, an object created or deleted), so a converged hub announces nothing.
//! [`failure_notice`] turns a failed action into its `Warning`.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Map, Value, json};
use slice_api::crd::{
    CLUSTER_LABEL, Condition, HUB_FINALIZER, MemberCluster, PEERS_NAMESPACE, SLICE_OWNER_LABEL, SliceConfig,
    SliceConfigStatus, SlicePeers, SlicePeersSpec, WorkerPeer, WorkerSlice, WorkerSliceSpec, cluster_namespace,
    condition, owner_labels, peer_page_name, peers_role_name, set_condition,
};
use slice_api::crd::{ImportedService, ServiceAllocation};
use slice_api::planner::{EXPORTS_ACCEPTED, PLANNED, PeerLists, READY, SlicePlan};
use slice_api::policy::PodGroup;

use super::pods::PODS_ACCEPTED;
use crate::events::{Notice, reason, reference, reference_to};

/// Everything the hub reads before deciding: the one hub view, which `slicectl status` and the
/// lab's demo report from too.
pub type World = slice_api::hub_view::HubView;

/// The two cluster-scoped kinds that carry the hub finalizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalizedKind {
    SliceConfig,
    MemberCluster,
}

impl fmt::Display for FinalizedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SliceConfig => "SliceConfig",
            Self::MemberCluster => "MemberCluster",
        })
    }
}

/// One request (or, for [`Action::EnsureNamespace`], a get and maybe a create) the hub makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Sets `metadata.finalizers` of a SliceConfig or MemberCluster to `finalizers`: a merge
    /// patch that carries the `resourceVersion` read, so that a concurrent change of the list
    /// (someone else's finalizer) makes it fail with 409 instead of being overwritten.
    SetFinalizers { kind: FinalizedKind, name: String, finalizers: Vec<String>, resource_version: Option<String> },
    /// Gets the namespace of `cluster` and creates it (labelled) when it is missing.
    EnsureNamespace { cluster: String, namespace: String },
    /// Creates a WorkerSlice (namespace, name, labels and spec all set).
    CreateWorkerSlice(Box<WorkerSlice>),
    /// Merge-patches a WorkerSlice's labels and spec.
    PatchWorkerSlice { namespace: String, name: String, patch: Value },
    /// Deletes a WorkerSlice (its worker's finalizer keeps it until the worker tore down).
    DeleteWorkerSlice { namespace: String, name: String },
    /// Merge-patches a SliceConfig's status subresource.
    PatchSliceStatus { name: String, patch: Value },
    /// Merge-patches a MemberCluster's status subresource.
    PatchClusterStatus { name: String, patch: Value },
    /// Deletes the namespace of a cluster that is being deleted.
    DeleteNamespace { cluster: String, namespace: String },
    /// Creates a `SlicePeers` page.
    CreatePeers(Box<SlicePeers>),
    /// Merge-patches a `SlicePeers` page's peers (the list sent whole).
    PatchPeers { name: String, patch: Value },
    /// Deletes a `SlicePeers` page.
    DeletePeers { name: String },
    /// Lets `cluster`'s worker read the pages `role` names: creates the Role (`create`), or
    /// merge-patches its rules.
    GrantPeers { cluster: String, role: Box<Role>, create: bool },
    /// Binds `cluster`'s Role to its worker: creates the RoleBinding; with `replace`, deletes
    /// the one there first (it binds something else, and a `roleRef` cannot be changed).
    BindPeers { cluster: String, binding: Box<RoleBinding>, replace: bool },
    /// Takes the pages away from `cluster`'s worker: deletes its RoleBinding and Role.
    RevokePeers { cluster: String },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SetFinalizers { kind, name, finalizers, .. } => {
                write!(f, "setting the finalizers of {kind} {name} to {finalizers:?}")
            }
            Self::EnsureNamespace { namespace, .. } => write!(f, "making sure namespace {namespace} exists"),
            Self::CreateWorkerSlice(w) => {
                write!(f, "creating WorkerSlice {}/{}", w.metadata.namespace.as_deref().unwrap_or(""), w.name_any())
            }
            Self::PatchWorkerSlice { namespace, name, .. } => write!(f, "patching WorkerSlice {namespace}/{name}"),
            Self::DeleteWorkerSlice { namespace, name } => write!(f, "deleting WorkerSlice {namespace}/{name}"),
            Self::PatchSliceStatus { name, .. } => write!(f, "patching the status of SliceConfig {name}"),
            Self::PatchClusterStatus { name, .. } => write!(f, "patching the status of MemberCluster {name}"),
            Self::DeleteNamespace { namespace, .. } => write!(f, "deleting namespace {namespace}"),
            Self::CreatePeers(p) => write!(f, "creating SlicePeers {PEERS_NAMESPACE}/{}", p.name_any()),
            Self::PatchPeers { name, .. } => write!(f, "patching SlicePeers {PEERS_NAMESPACE}/{name}"),
            Self::DeletePeers { name } => write!(f, "deleting SlicePeers {PEERS_NAMESPACE}/{name}"),
            Self::GrantPeers { cluster, create: true, .. } => {
                write!(f, "creating Role {PEERS_NAMESPACE}/{}", peers_role_name(cluster))
            }
            Self::BindPeers { cluster, replace: false, .. } => {
                write!(f, "creating RoleBinding {PEERS_NAMESPACE}/{}", peers_role_name(cluster))
            }
            Self::BindPeers { cluster, replace: true, .. } => {
                write!(f, "replacing RoleBinding {PEERS_NAMESPACE}/{}", peers_role_name(cluster))
            }
            Self::GrantPeers { cluster, create: false, .. } => {
                write!(f, "patching Role {PEERS_NAMESPACE}/{}", peers_role_name(cluster))
            }
            Self::RevokePeers { cluster } => {
                write!(f, "deleting RoleBinding and Role {PEERS_NAMESPACE}/{}", peers_role_name(cluster))
            }
        }
    }
}

/// What the hub decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The requests to make, in order.
    pub actions: Vec<Action>,
    /// The slices decided, for logs: name, VNI, member clusters planned.
    pub plans: Vec<PlanSummary>,
    /// When to look again even if nothing changes: the first moment a healthy cluster's
    /// heartbeat goes stale.
    pub requeue_after: Option<Duration>,
    /// The Events worth publishing, each once the action at its index succeeded.
    pub notices: Vec<(usize, Notice)>,
}

/// A slice's plan, in short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSummary {
    pub name: String,
    pub vni: Option<u32>,
    pub clusters: usize,
}

/// What the hub merges into a slice's WorkerSlice specs besides the plan, in the plan's order.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct SpecLists {
    pub imports: Vec<ImportedService>,
    pub pods: Vec<PodGroup>,
}

/// Decides the hub's requests for `world` at `now`; a cluster whose heartbeat is older than
/// `stale_after` is not `Healthy`. The whole decision: every slice planned, every object
/// compared ([`HubIndex`] made from `world`, everything in scope).
#[must_use]
pub fn decide(world: &World, now: Timestamp, stale_after: Duration) -> Decision {
    HubIndex::new(world, stale_after).decide(now)
}

/// [`decide`] with the peers where `lists` says (paged: the world's `SlicePeers` pages and
/// peer Roles are decided as well).
#[must_use]
pub fn decide_with(world: &World, lists: PeerLists, now: Timestamp, stale_after: Duration) -> Decision {
    HubIndex::new_with(world, lists, stale_after).decide(now)
}

/// A `SlicePeers` page as the hub writes it.
fn new_page(slice: &str, page: u32, peers: &[WorkerPeer]) -> SlicePeers {
    let mut p = SlicePeers::new(
        &peer_page_name(slice, page),
        SlicePeersSpec { slice: slice.to_owned(), page, peers: peers.to_vec() },
    );
    p.metadata.namespace = Some(PEERS_NAMESPACE.to_owned());
    p.metadata.labels = Some([(SLICE_OWNER_LABEL.to_owned(), slice.to_owned())].into());
    p
}

/// The rules of `cluster`'s peer Role: `get` on exactly the pages `names` (never empty: a rule
/// without `resourceNames` would grant every page).
fn peers_rules(names: &[String]) -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec![slice_api::names::API_GROUP.to_owned()]),
        resources: Some(vec!["slicepeers".to_owned()]),
        verbs: vec!["get".to_owned()],
        resource_names: Some(names.to_vec()),
        non_resource_urls: None,
    }]
}

/// The name, namespace and labels of `cluster`'s peer Role and of its RoleBinding.
fn peers_metadata(cluster: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(peers_role_name(cluster)),
        namespace: Some(PEERS_NAMESPACE.to_owned()),
        labels: Some([(CLUSTER_LABEL.to_owned(), cluster.to_owned())].into()),
        ..ObjectMeta::default()
    }
}

/// The Role that lets `cluster`'s worker read the pages `names`.
fn peers_role(cluster: &str, names: &[String]) -> Role {
    Role { metadata: peers_metadata(cluster), rules: Some(peers_rules(names)) }
}

/// The RoleBinding of `cluster`'s peer Role to its worker's account on the hub
/// (`slicenet-worker` in `slicenet-cluster-<cluster>`).
fn peers_binding(cluster: &str) -> RoleBinding {
    RoleBinding {
        metadata: peers_metadata(cluster),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: peers_role_name(cluster),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: slice_api::names::WORKER_SERVICE_ACCOUNT.to_owned(),
            namespace: Some(cluster_namespace(cluster)),
            api_group: None,
        }]),
    }
}

/// Whether `binding` binds `cluster`'s peer Role to its worker's account and to nothing else
/// (an API group left out and an empty one are the same).
fn binds_as_planned(binding: &RoleBinding, cluster: &str) -> bool {
    let group = |g: &Option<String>| g.clone().unwrap_or_default();
    let want = peers_binding(cluster);
    let subjects = |b: &RoleBinding| -> Vec<(String, String, Option<String>, String)> {
        b.subjects
            .iter()
            .flatten()
            .map(|s| (s.kind.clone(), s.name.clone(), s.namespace.clone(), group(&s.api_group)))
            .collect()
    };
    let role_ref = |b: &RoleBinding| (group(&b.role_ref.api_group), b.role_ref.kind.clone(), b.role_ref.name.clone());
    role_ref(binding) == role_ref(&want) && subjects(binding) == subjects(&want)
}

/// `ExportsAccepted`: true when every reported export was taken, else the refusals.
fn exports_condition(merged: &super::services::Merged) -> Condition {
    if merged.refusals.is_empty() {
        let note = format!("{} services exported by {} clusters", merged.imports.len(), merged.exporting_clusters);
        Condition::new(EXPORTS_ACCEPTED, true, "Accepted", note)
    } else {
        Condition::new(EXPORTS_ACCEPTED, false, "ExportsRefused", merged.refusals.join("; "))
    }
}

/// `PodsAccepted`: true when every reported pod was taken, else the refusals.
fn pods_condition(merged: &super::pods::MergedPods) -> Condition {
    if merged.refusals.is_empty() {
        Condition::new(PODS_ACCEPTED, true, "Accepted", format!("{} pods in the pod directory", merged.pods()))
    } else {
        Condition::new(PODS_ACCEPTED, false, "PodsRefused", merged.refusals.join("; "))
    }
}

/// Whether a condition says something else than `old` (status, reason or message).
fn changed(old: Option<&Condition>, new: &Condition) -> bool {
    old.is_none_or(|o| (&o.status, &o.reason, &o.message) != (&new.status, &new.reason, &new.message))
}

/// A SliceConfig's Events from its conditions read (`old`) and planned (`new`): planned or
/// refused when `Planned` says something new (not for a deletion, which the user asked for);
/// ready when `Ready` turns true, not ready when it stops being true.
fn slice_notices(slice: &SliceConfig, old: &[Condition], new: &[Condition]) -> Vec<Notice> {
    let mut out = Vec::new();
    let at = |conds: &[Condition], t: &str| condition(conds, t).cloned();
    if let Some(p) = at(new, PLANNED)
        && p.reason != "Deleting"
        && changed(at(old, PLANNED).as_ref(), &p)
    {
        out.push(if p.status == "True" {
            Notice::normal(reference(slice), reason::SLICE_PLANNED, "Plan", p.message.clone())
        } else {
            Notice::warning(reference(slice), reason::SLICE_REFUSED, "Plan", format!("{}: {}", p.reason, p.message))
        });
    }
    if let Some(e) = at(new, EXPORTS_ACCEPTED)
        && e.status != "True"
        && changed(at(old, EXPORTS_ACCEPTED).as_ref(), &e)
    {
        out.push(Notice::warning(reference(slice), reason::EXPORTS_REFUSED, "Merge", e.message.clone()));
    }
    if let Some(e) = at(new, PODS_ACCEPTED)
        && e.status != "True"
        && changed(at(old, PODS_ACCEPTED).as_ref(), &e)
    {
        out.push(Notice::warning(reference(slice), reason::PODS_REFUSED, "Merge", e.message.clone()));
    }
    if let Some(r) = at(new, READY) {
        let was_ready = at(old, READY).is_some_and(|o| o.status == "True");
        if r.status == "True" && !was_ready {
            out.push(Notice::normal(reference(slice), reason::SLICE_READY, "Plan", r.message.clone()));
        } else if r.status != "True" && was_ready {
            let note = format!("{}: {}", r.reason, r.message);
            out.push(Notice::warning(reference(slice), reason::SLICE_NOT_READY, "Plan", note));
        }
    }
    out
}

/// A MemberCluster's Event when its `Healthy` condition flips: healthy when it turns true,
/// unhealthy when it turns false (not for "no heartbeat yet", which a new cluster starts with).
fn health_notice(cluster: &MemberCluster, old: Option<&Condition>, new: &Condition) -> Option<Notice> {
    let was = old.map(|o| o.status.as_str());
    match new.status.as_str() {
        "True" if was != Some("True") => {
            Some(Notice::normal(reference(cluster), reason::CLUSTER_HEALTHY, "CheckHealth", new.message.clone()))
        }
        "False" if was != Some("False") || old.is_some_and(|o| o.reason != new.reason) => {
            let note = format!("{}: {}", new.reason, new.message);
            Some(Notice::warning(reference(cluster), reason::CLUSTER_UNHEALTHY, "CheckHealth", note))
        }
        _ => None,
    }
}

/// "spec.peers, metadata.labels changed": the fields a WorkerSlice patch changes.
fn changed_fields(patch: &Value) -> String {
    let mut fields = Vec::new();
    for top in ["metadata", "spec"] {
        if let Some(map) = patch.get(top).and_then(Value::as_object) {
            fields.extend(map.keys().map(|k| format!("{top}.{k}")));
        }
    }
    format!("{} changed by the plan", fields.join(", "))
}

/// The object an action writes, for its failure's Event: the object itself, or (a WorkerSlice
/// not created, a namespace) the SliceConfig or MemberCluster it is for.
#[must_use]
pub fn action_subject(action: &Action, world: &World) -> ObjectReference {
    let slice = |name: &str| {
        world
            .slices
            .iter()
            .find(|s| s.name_any() == name)
            .map_or_else(|| reference_to("slicenet.io/v1alpha1", "SliceConfig", None, name, None), reference)
    };
    let cluster = |name: &str| {
        world
            .clusters
            .iter()
            .find(|c| c.name_any() == name)
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
        Action::PatchPeers { name, .. } | Action::DeletePeers { name } => slice(
            &world.pages.iter().find(|p| p.name_any() == *name).map_or_else(String::new, |p| p.spec.slice.clone()),
        ),
        Action::GrantPeers { cluster: name, .. }
        | Action::BindPeers { cluster: name, .. }
        | Action::RevokePeers { cluster: name } => cluster(name),
        Action::PatchWorkerSlice { namespace, name, .. } | Action::DeleteWorkerSlice { namespace, name } => world
            .workers
            .iter()
            .find(|w| w.namespace().as_deref() == Some(namespace) && w.name_any() == *name)
            .map_or_else(
                || reference_to("slicenet.io/v1alpha1", "WorkerSlice", Some(namespace), name, None),
                reference,
            ),
    }
}

/// The `Warning` for an action that failed with `error` (its message: `error`, with its causes).
#[must_use]
pub fn failure_notice(action: &Action, world: &World, error: &super::Error) -> Notice {
    failure_notice_about(action_subject(action, world), error)
}

/// The `Warning` about `subject` (the object an action writes) for the action's `error`.
#[must_use]
pub fn failure_notice_about(subject: ObjectReference, error: &super::Error) -> Notice {
    let reason = match error {
        super::Error::NamespaceTerminating(_) => reason::NAMESPACE_TERMINATING,
        _ => reason::WRITE_FAILED,
    };
    Notice::warning(subject, reason, "Reconcile", slice_api::error_chain::chain(error))
}

fn has_hub_finalizer<K: ResourceExt>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == HUB_FINALIZER)
}

fn add_finalizer<K: ResourceExt>(kind: FinalizedKind, obj: &K) -> Option<Action> {
    if has_hub_finalizer(obj) || obj.meta().deletion_timestamp.is_some() {
        return None;
    }
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(HUB_FINALIZER.to_owned());
    Some(Action::SetFinalizers { kind, name: obj.name_any(), finalizers, resource_version: obj.resource_version() })
}

fn remove_finalizer<K: ResourceExt>(kind: FinalizedKind, obj: &K) -> Action {
    Action::SetFinalizers {
        kind,
        name: obj.name_any(),
        finalizers: obj.finalizers().iter().filter(|f| *f != HUB_FINALIZER).cloned().collect(),
        resource_version: obj.resource_version(),
    }
}

fn new_worker(namespace: &str, slice: &str, spec: &WorkerSliceSpec, lists: &SpecLists) -> WorkerSlice {
    let mut spec = spec.clone();
    spec.imports.clone_from(&lists.imports);
    spec.pods.clone_from(&lists.pods);
    let mut w = WorkerSlice::new(slice, spec);
    w.metadata.namespace = Some(namespace.to_owned());
    w.metadata.labels = Some(owner_labels(slice, &w.spec.cluster));
    w
}

/// The merge patch that brings `w`'s hub labels and spec to the plan, or `None` when they match.
fn worker_patch(w: &WorkerSlice, slice: &str, spec: &WorkerSliceSpec, lists: &SpecLists) -> Option<Value> {
    let labels: Map<String, Value> = owner_labels(slice, &spec.cluster)
        .into_iter()
        .filter(|(k, v)| w.labels().get(k) != Some(v))
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut patch = Map::new();
    if !labels.is_empty() {
        patch.insert("metadata".to_owned(), json!({ "labels": labels }));
    }
    // The typed comparison first: most specs are unchanged, and turning a spec of many peers
    // into JSON twice costs more than comparing it.
    if let Some(spec) = spec_patch(&w.spec, spec, lists) {
        patch.insert("spec".to_owned(), spec);
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// `merge_diff` from `old` to `new` with `lists` as its imports and pods, without turning long
/// lists into JSON unless they differ: the lists (peers, imports, pods) are compared typed and,
/// as a merge patch does with lists, sent whole when they differ (`null` when one that is left
/// out when empty became empty); the rest goes through `merge_diff` only when it differs.
fn spec_patch(old: &WorkerSliceSpec, new: &WorkerSliceSpec, lists: &SpecLists) -> Option<Value> {
    let light = |s: &WorkerSliceSpec| WorkerSliceSpec {
        slice: s.slice.clone(),
        cluster: s.cluster.clone(),
        slice_subnet: s.slice_subnet.clone(),
        cluster_prefix: s.cluster_prefix.clone(),
        node_prefix_length: s.node_prefix_length,
        secondary_family: s.secondary_family.clone(),
        vni: s.vni,
        mtu: s.mtu,
        namespaces: s.namespaces.clone(),
        gateway: s.gateway.clone(),
        peers: Vec::new(),
        peer_pages: s.peer_pages.clone(),
        imports: Vec::new(),
        pods: Vec::new(),
        isolation: s.isolation.clone(),
        qos: s.qos.clone(),
    };
    let (old_light, new_light) = (light(old), light(new));
    let mut patch = match (old_light != new_light).then(|| merge_diff(&to_json(&old_light), &to_json(&new_light))) {
        Some(Some(Value::Object(map))) => map,
        _ => Map::new(),
    };
    if old.peers != new.peers {
        patch.insert("peers".to_owned(), to_json(&new.peers));
    }
    // Left out when empty: an emptied list is removed (`null`).
    let list = |empty: bool, value: Value| if empty { Value::Null } else { value };
    if old.imports != lists.imports {
        patch.insert("imports".to_owned(), list(lists.imports.is_empty(), to_json(&lists.imports)));
    }
    if old.pods != lists.pods {
        patch.insert("pods".to_owned(), list(lists.pods.is_empty(), to_json(&lists.pods)));
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// The status patch for a SliceConfig, or `None` when the status already says it all.
fn slice_status_patch(
    slice: &SliceConfig,
    plan: &SlicePlan,
    conditions: &[Condition],
    services: &[ServiceAllocation],
    now: &str,
) -> Option<Value> {
    let old = slice.status.clone().unwrap_or_default();
    let mut new = SliceConfigStatus {
        vni: plan.vni,
        clusters: plan.allocations.clone(),
        services: services.to_vec(),
        ..old.clone()
    };
    for c in conditions {
        set_condition(&mut new.conditions, c.clone(), now);
    }
    new.observed_generation = slice.metadata.generation;
    (new != old).then(|| status_patch(slice.status.as_ref(), &new))
}

/// `{"status": …}` with what differs between the status read and `new`. A missing status is
/// compared as the empty one, so that the patch does not write empty lists over what another
/// writer (a worker's heartbeat) may have put there since the list.
fn status_patch<S: Serialize + Default + Clone>(old: Option<&S>, new: &S) -> Value {
    let old = to_json(&old.cloned().unwrap_or_default());
    json!({ "status": merge_diff(&old, &to_json(new)).unwrap_or_else(|| json!({})) })
}

/// The API types are plain data with string keys: serializing them cannot fail.
fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("API types serialize to JSON")
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`, or `None` when they are equal.
/// Objects are diffed key by key (a removed key becomes `null`); anything else, lists included,
/// is replaced whole, as merge patches do.
#[must_use]
pub fn merge_diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return Some(new.clone());
    };
    let mut patch = Map::new();
    for (key, value) in new {
        let changed = match old.get(key) {
            Some(before) => merge_diff(before, value),
            None => Some(value.clone()),
        };
        if let Some(changed) = changed {
            patch.insert(key.clone(), changed);
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        patch.insert(key.clone(), Value::Null);
    }
    Some(Value::Object(patch))
}

mod index;
pub use index::{Coverage, HubIndex};

#[cfg(test)]
mod tests;
