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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Map, Value, json};
use slice_api::crd::{
    CLUSTER_NAMESPACE_PREFIX, HUB_FINALIZER, MemberCluster, SliceConfig, SliceConfigStatus, WorkerSlice,
    WorkerSliceSpec, cluster_namespace, owner_labels, set_condition,
};
use slice_api::planner::{self, SlicePlan};

use super::health::healthy_condition;

/// Everything the hub reads before deciding.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub slices: Vec<SliceConfig>,
    pub clusters: Vec<MemberCluster>,
    /// WorkerSlices in every namespace; only those in `slicenet-cluster-*` namespaces are the
    /// hub's, the others are ignored.
    pub workers: Vec<WorkerSlice>,
}

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
        }
    }
}

/// What the hub decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The requests to make, in order.
    pub actions: Vec<Action>,
    /// The planner's result, for logs.
    pub plans: Vec<SlicePlan>,
    /// When to look again even if nothing changes: the first moment a healthy cluster's
    /// heartbeat goes stale.
    pub requeue_after: Option<Duration>,
}

/// Decides the hub's requests for `world` at `now`; a cluster whose heartbeat is older than
/// `stale_after` is not `Healthy`.
#[must_use]
pub fn decide(world: &World, now: Timestamp, stale_after: Duration) -> Decision {
    // Kubernetes writes times with whole seconds.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let now_text = now.to_string();
    let workers: Vec<WorkerSlice> = world.workers.iter().filter(|w| is_hub_managed(w)).cloned().collect();
    let plans = planner::plan(&world.slices, &world.clusters, &workers);
    let mut actions = Vec::new();

    let mut slices: Vec<&SliceConfig> = world.slices.iter().collect();
    slices.sort_by_key(|s| s.name_any());
    let mut clusters: Vec<&MemberCluster> = world.clusters.iter().collect();
    clusters.sort_by_key(|c| c.name_any());

    // 1. Finalizers on.
    for s in &slices {
        if let Some(a) = add_finalizer(FinalizedKind::SliceConfig, *s) {
            actions.push(a);
        }
    }
    for c in &clusters {
        if let Some(a) = add_finalizer(FinalizedKind::MemberCluster, *c) {
            actions.push(a);
        }
    }

    // 2. Namespaces of registered clusters.
    for c in clusters.iter().filter(|c| c.metadata.deletion_timestamp.is_none()) {
        let cluster = c.name_any();
        actions.push(Action::EnsureNamespace { namespace: cluster_namespace(&cluster), cluster });
    }

    // 3. WorkerSlices.
    let existing: BTreeMap<(String, String), &WorkerSlice> =
        workers.iter().map(|w| ((w.namespace().unwrap_or_default(), w.name_any()), w)).collect();
    let mut planned = BTreeSet::new();
    for p in &plans {
        for spec in &p.workers {
            let key = (cluster_namespace(&spec.cluster), p.name.clone());
            planned.insert(key.clone());
            match existing.get(&key) {
                None => actions.push(Action::CreateWorkerSlice(Box::new(new_worker(&key.0, &p.name, spec)))),
                Some(w) if w.metadata.deletion_timestamp.is_some() => {}
                Some(w) => {
                    if let Some(patch) = worker_patch(w, &p.name, spec) {
                        actions.push(Action::PatchWorkerSlice { namespace: key.0, name: key.1, patch });
                    }
                }
            }
        }
    }
    for ((namespace, name), w) in &existing {
        if !planned.contains(&(namespace.clone(), name.clone())) && w.metadata.deletion_timestamp.is_none() {
            actions.push(Action::DeleteWorkerSlice { namespace: namespace.clone(), name: name.clone() });
        }
    }

    // 4. SliceConfigs: status, or finalizer off.
    for s in &slices {
        let name = s.name_any();
        let releasing = s.metadata.deletion_timestamp.is_some()
            && has_hub_finalizer(*s)
            && !workers.iter().any(|w| w.name_any() == name || w.spec.slice == name);
        if releasing {
            actions.push(remove_finalizer(FinalizedKind::SliceConfig, *s));
            continue;
        }
        if let Some(p) = plans.iter().find(|p| p.name == name)
            && let Some(patch) = slice_status_patch(s, p, &now_text)
        {
            actions.push(Action::PatchSliceStatus { name, patch });
        }
    }

    // 5. MemberClusters: health, or teardown.
    let mut requeue_after: Option<Duration> = None;
    for c in &clusters {
        let name = c.name_any();
        if c.metadata.deletion_timestamp.is_some() {
            let namespace = cluster_namespace(&name);
            let left = workers.iter().any(|w| w.namespace().as_deref() == Some(&namespace) || w.spec.cluster == name);
            if has_hub_finalizer(*c) && !left {
                actions.push(Action::DeleteNamespace { cluster: name, namespace });
                actions.push(remove_finalizer(FinalizedKind::MemberCluster, *c));
            }
            continue;
        }
        let (mut healthy, fresh_for) = healthy_condition(c.status.as_ref(), now, stale_after);
        healthy.observed_generation = c.metadata.generation;
        if let Some(left) = fresh_for {
            // One second late rather than early: at the exact second the heartbeat is still fresh.
            let left = left + Duration::from_secs(1);
            requeue_after = Some(requeue_after.map_or(left, |r| r.min(left)));
        }
        let old = c.status.clone().unwrap_or_default();
        let mut new = old.clone();
        set_condition(&mut new.conditions, healthy, &now_text);
        if new != old {
            let patch = status_patch(c.status.as_ref(), &new);
            actions.push(Action::PatchClusterStatus { name, patch });
        }
    }

    Decision { actions, plans, requeue_after }
}

/// Whether a WorkerSlice is in a namespace the hub writes WorkerSlices into.
fn is_hub_managed(w: &WorkerSlice) -> bool {
    w.metadata.namespace.as_deref().is_some_and(|ns| ns.starts_with(CLUSTER_NAMESPACE_PREFIX))
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

fn new_worker(namespace: &str, slice: &str, spec: &WorkerSliceSpec) -> WorkerSlice {
    let mut w = WorkerSlice::new(slice, spec.clone());
    w.metadata.namespace = Some(namespace.to_owned());
    w.metadata.labels = Some(owner_labels(slice, &spec.cluster));
    w
}

/// The merge patch that brings `w`'s hub labels and spec to the plan, or `None` when they match.
fn worker_patch(w: &WorkerSlice, slice: &str, spec: &WorkerSliceSpec) -> Option<Value> {
    let labels: Map<String, Value> = owner_labels(slice, &spec.cluster)
        .into_iter()
        .filter(|(k, v)| w.labels().get(k) != Some(v))
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut patch = Map::new();
    if !labels.is_empty() {
        patch.insert("metadata".to_owned(), json!({ "labels": labels }));
    }
    if let Some(spec) = merge_diff(&to_json(&w.spec), &to_json(spec)) {
        patch.insert("spec".to_owned(), spec);
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// The status patch for a SliceConfig, or `None` when the status already says it all.
fn slice_status_patch(slice: &SliceConfig, plan: &SlicePlan, now: &str) -> Option<Value> {
    let old = slice.status.clone().unwrap_or_default();
    let mut new = SliceConfigStatus { vni: plan.vni, clusters: plan.allocations.clone(), ..old.clone() };
    for c in &plan.conditions {
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

#[cfg(test)]
mod tests;
