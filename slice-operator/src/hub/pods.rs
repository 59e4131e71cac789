//! The hub's merge of the pod directory (pure): what member clusters report of their pods on a
//! slice (WorkerSlice `status.pods`) → for each member, the *other* members' groups
//! (`spec.pods`), which its node agents match MultiNetworkPolicy selectors against.
//!
//! Trust, as for exports (`hub::services`): a report counts only from a WorkerSlice that speaks
//! for itself, is not being deleted and whose cluster the plan keeps in the slice. A group is
//! dropped when its namespace is not one of that cluster's member namespaces of the slice, or
//! it is malformed ([`slice_api::policy::check_group`]); an address is dropped when it is not
//! inside that cluster's own prefix of the slice (no cluster can label another cluster's
//! addresses, or claim to be a pod of a namespace it does not hold) or repeats one. Bounds: a
//! cluster's report past [`MAX_PODS_PER_CLUSTER`] addresses or [`MAX_REPORT_BYTES`] is dropped
//! whole; the slice's directory holds at most [`MAX_DIRECTORY_PODS`] addresses, clusters taken
//! in name order (a report that would pass it is dropped whole). Every drop fails closed: a
//! selector then matches fewer peers, never more. Each drop is one sentence in
//! [`MergedPods::refusals`] (the SliceConfig's `PodsAccepted` condition and a Warning Event).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use slice_api::crd::WorkerSlice;
use slice_api::planner::{SlicePlan, speaks_for_itself};
use slice_api::policy::{MAX_DIRECTORY_PODS, MAX_PODS_PER_CLUSTER, MAX_REPORT_BYTES, PodGroup, check_group};

/// The SliceConfig condition that says whether every reported pod was taken.
pub const PODS_ACCEPTED: &str = "PodsAccepted";

/// The merge of one slice's pod reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergedPods {
    /// Each cluster's accepted groups, by cluster name.
    pub by_cluster: BTreeMap<String, Vec<PodGroup>>,
    /// What was dropped, one sentence each.
    pub refusals: Vec<String>,
}

impl MergedPods {
    /// The groups a member `cluster` gets in its spec: every other cluster's, by cluster name.
    #[must_use]
    pub fn for_cluster(&self, cluster: &str) -> Vec<PodGroup> {
        self.by_cluster.iter().filter(|(c, _)| c.as_str() != cluster).flat_map(|(_, g)| g.iter().cloned()).collect()
    }

    /// Addresses in the directory.
    #[must_use]
    pub fn pods(&self) -> usize {
        self.by_cluster.values().flatten().map(|g| g.addresses.len()).sum()
    }
}

/// Merges the pod reports of the slice planned as `plan` from `workers` (any slice).
#[must_use]
pub fn merge(plan: &SlicePlan, workers: &[impl Borrow<WorkerSlice>]) -> MergedPods {
    let mut out = MergedPods::default();
    let mut reports: Vec<&WorkerSlice> = workers
        .iter()
        .map(Borrow::borrow)
        .filter(|w| speaks_for_itself(w) && w.spec.slice == plan.name && w.metadata.deletion_timestamp.is_none())
        .collect();
    reports.sort_by(|a, b| a.spec.cluster.cmp(&b.spec.cluster));
    let mut total = 0;
    for w in reports {
        let Some(spec) = plan.worker(&w.spec.cluster) else { continue };
        let Ok(prefix) = spec.cluster_prefix.parse::<IpNet>() else { continue };
        // A dual-stack slice: the cluster's prefix of the other family holds its pods too.
        let secondary: Option<IpNet> =
            spec.secondary_family.as_ref().and_then(|f| f.cluster_prefix.parse::<IpNet>().ok());
        let Some(status) = &w.status else { continue };
        let cluster = &spec.cluster;
        let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
        let mut groups = Vec::new();
        for g in &status.pods {
            let what = format!("cluster {cluster} reports pods of namespace {}", g.namespace);
            if let Err(why) = check_group(g) {
                out.refusals.push(format!("{what}: {why}: dropped"));
                continue;
            }
            if !spec.namespaces.contains(&g.namespace) {
                out.refusals.push(format!("{what}: not a member of slice {} in that cluster: dropped", plan.name));
                continue;
            }
            let (inside, outside): (Vec<IpAddr>, Vec<IpAddr>) = g
                .addresses
                .iter()
                .copied()
                .partition(|a| prefix.contains(a) || secondary.is_some_and(|p| p.contains(a)));
            if !outside.is_empty() {
                let list: Vec<String> = outside.iter().map(ToString::to_string).collect();
                let prefixes: Vec<String> = std::iter::once(prefix).chain(secondary).map(|p| p.to_string()).collect();
                out.refusals.push(format!(
                    "{what}: addresses {} are not inside its prefix {}: dropped",
                    list.join(", "),
                    prefixes.join(" or ")
                ));
            }
            let addresses: Vec<IpAddr> = inside.into_iter().filter(|a| seen.insert(*a)).collect();
            if !addresses.is_empty() {
                groups.push(PodGroup { addresses, ..g.clone() });
            }
        }
        let count: usize = groups.iter().map(|g: &PodGroup| g.addresses.len()).sum();
        let bytes: usize = groups.iter().map(crate::worker::policy::report_bytes).sum();
        if count > MAX_PODS_PER_CLUSTER || bytes > MAX_REPORT_BYTES {
            out.refusals.push(format!(
                "cluster {cluster} reports {count} pods in {bytes} bytes, past the {MAX_PODS_PER_CLUSTER} pods or \
                 {MAX_REPORT_BYTES} bytes a cluster may report: dropped"
            ));
            continue;
        }
        if total + count > MAX_DIRECTORY_PODS {
            out.refusals.push(format!(
                "cluster {cluster}'s {count} pods would take the pod directory past {MAX_DIRECTORY_PODS}: dropped"
            ));
            continue;
        }
        total += count;
        if !groups.is_empty() {
            out.by_cluster.insert(cluster.clone(), groups);
        }
    }
    out
}

#[cfg(test)]
mod tests;
