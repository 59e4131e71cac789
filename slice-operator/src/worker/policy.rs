//! The worker's side of policy on the slice (pure): MultiNetworkPolicies in, the pod directory
//! out and in, namespace isolation on the primary network.
//!
//! **Policies.** Every `k8s.cni.cncf.io` MultiNetworkPolicy of an effective member namespace
//! whose `k8s.v1.cni.cncf.io/policy-for` annotation names the slice's network
//! ([`slice_api::policy::is_for_slice`]) goes into every node agent configuration of the slice
//! ([`slice_policies`]). Each is checked with the node agent's own compile check
//! ([`slice_node::firewall::policy::check`], a pure function, so the worker and the agents never
//! disagree): one that fails is still handed to the agents, which keep their previous table
//! (fail closed), and the worker says why — a Warning Event on the policy and the WorkerSlice's
//! `PoliciesAccepted` condition (which `slicectl status` shows). A policy whose spec does not
//! even parse cannot be handed on: its previous version (from the node configurations the
//! worker wrote) stays, or, for a new one, nothing, and it is reported the same way.
//!
//! **Pod directory.** The worker reports its own pods on the slice in its WorkerSlice's
//! `status.pods` ([`pod_report`]): running pods of member namespaces, each by its slice address
//! as the MCS export code checks it (network-status entry for the slice, inside the node prefix
//! its node holds; an address two pods claim counts for neither) and never a slice-router
//! address, grouped by (namespace, namespace labels, labels, named ports), at most
//! [`MAX_PODS_PER_CLUSTER`] addresses and [`MAX_REPORT_BYTES`]. The hub checks and merges the
//! reports (`hub::pods`) and hands every member the other clusters' groups in its spec; the
//! node agents get this cluster's fresh report with those ([`node_directory`]), so a local
//! change does not wait for the hub.
//!
//! **Namespace isolation.** When the slice asks for it (`spec.isolation` of the WorkerSlice),
//! each member namespace gets one standard NetworkPolicy ([`isolation_policy`]) that admits
//! traffic on the primary network only from the slice's member namespaces here and the allowed
//! ones; labelled as the worker's, so the worker deletes only those it wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use slice_api::names::SLICE_LABEL;
use slice_api::node::NodeAgentConfig;
use slice_api::policy::{
    self, MAX_PODS_PER_CLUSTER, MAX_REPORT_BYTES, MultiNetworkPolicySpec, NamedPort, PodGroup, SlicePolicy,
};

use super::objects::{MANAGED_BY, MANAGED_BY_LABEL, NODE_CONFIG_KEY, NODE_CONFIG_PREFIX};
use super::services::{SliceMembers, slice_addresses};

/// The WorkerSlice condition that says whether every policy of the slice compiles.
pub const POLICIES_ACCEPTED: &str = "PoliciesAccepted";
/// Plural of MultiNetworkPolicy.
pub const MNP_PLURAL: &str = "multi-networkpolicies";
/// The label every namespace carries with its own name (Kubernetes ≥ 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The MultiNetworkPolicy resource (`k8s.cni.cncf.io/v1beta1`).
#[must_use]
pub fn mnp_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk(policy::API_GROUP, "v1beta1", policy::KIND);
    ApiResource::from_gvk_with_plural(&gvk, MNP_PLURAL)
}

/// The name of the isolation NetworkPolicy of `slice` in each member namespace.
#[must_use]
pub fn isolation_policy_name(slice: &str) -> String {
    format!("slicenet-isolation-{slice}")
}

/// A MultiNetworkPolicy the node agents will not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub namespace: String,
    pub name: String,
    pub reason: String,
    /// The object's uid, for the Event's reference.
    pub uid: Option<String>,
}

/// The policies of `slice` among `mnps` (those of `namespaces` whose `policy-for` names it), in
/// (namespace, name) order, and those the agents will refuse. `previous` are the slice's
/// policies as the node configurations hold them (the version kept for one whose spec does not
/// parse).
#[must_use]
pub fn slice_policies(
    mnps: &[DynamicObject],
    slice: &str,
    namespaces: &[String],
    previous: &[SlicePolicy],
) -> (Vec<SlicePolicy>, Vec<Rejected>) {
    let mut out = Vec::new();
    let mut rejected = Vec::new();
    for mnp in mnps {
        let namespace = mnp.namespace().unwrap_or_default();
        if !namespaces.contains(&namespace) || mnp.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(value) = mnp.annotations().get(policy::POLICY_FOR_ANNOTATION) else { continue };
        if !policy::is_for_slice(value, &namespace, slice) {
            continue;
        }
        let name = mnp.name_any();
        let reject = |reason: String| Rejected {
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
            uid: mnp.metadata.uid.clone(),
        };
        let spec = mnp.data.get("spec").cloned().unwrap_or_else(|| json!({}));
        match serde_json::from_value::<MultiNetworkPolicySpec>(spec) {
            Ok(spec) => {
                let p = SlicePolicy { namespace: namespace.clone(), name: name.clone(), spec };
                if let Err(e) = slice_node::firewall::policy::check(&p) {
                    rejected.push(reject(e.reason));
                }
                out.push(p);
            }
            Err(e) => {
                let kept = previous.iter().find(|p| p.namespace == namespace && p.name == name);
                let what = if kept.is_some() { "its previous version stays" } else { "it is not applied" };
                rejected.push(reject(format!("spec does not parse ({e}); {what}")));
                out.extend(kept.cloned());
            }
        }
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    rejected.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (out, rejected)
}

/// The `PoliciesAccepted` condition of a slice with `count` policies of which `rejected` are
/// refused.
#[must_use]
pub fn policies_condition(count: usize, rejected: &[Rejected]) -> slice_api::crd::Condition {
    use slice_api::crd::Condition;
    if rejected.is_empty() {
        return Condition::new(POLICIES_ACCEPTED, true, "Compiled", format!("{count} MultiNetworkPolicies compile"));
    }
    let list: Vec<String> = rejected.iter().map(|r| format!("{}/{}: {}", r.namespace, r.name, r.reason)).collect();
    Condition::new(
        POLICIES_ACCEPTED,
        false,
        "PolicyRejected",
        format!("the node agents keep their previous rules; refused: {}", list.join("; ")),
    )
}

/// The policies of `slice` in the node configurations the worker wrote (the first that has the
/// slice): what the agents were last given.
#[must_use]
pub fn previous_policies(config_maps: &[k8s_openapi::api::core::v1::ConfigMap], slice: &str) -> Vec<SlicePolicy> {
    config_maps
        .iter()
        .filter(|cm| cm.name_any().starts_with(NODE_CONFIG_PREFIX))
        .filter_map(|cm| cm.data.as_ref()?.get(NODE_CONFIG_KEY))
        .filter_map(|text| serde_json::from_str::<NodeAgentConfig>(text).ok())
        .find_map(|c| c.slices.into_iter().find(|s| s.name == slice).map(|s| s.policies))
        .unwrap_or_default()
}

/// The named container ports of `pod` (the first of each (name, protocol)).
fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    let mut out: Vec<NamedPort> = Vec::new();
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
    for port in containers.flat_map(|c| c.ports.iter().flatten()) {
        let (Some(name), Ok(number)) = (port.name.clone(), u16::try_from(port.container_port)) else { continue };
        let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
        if name.is_empty() || number == 0 || !policy::PROTOCOLS.contains(&protocol.as_str()) {
            continue;
        }
        if !out.iter().any(|p| p.name == name && p.protocol == protocol) {
            out.push(NamedPort { name, port: number, protocol });
        }
    }
    out.sort();
    out
}

/// What pods of one group share: namespace, labels, named ports (the namespace's labels follow
/// from the namespace in one cluster).
type GroupKey = (String, BTreeMap<String, String>, Vec<NamedPort>);

/// This cluster's part of the pod directory of `members`' slice, and what was left out (one
/// sentence each). `pods` are the running pods of member namespaces; `namespaces` the cluster's
/// (for their labels).
#[must_use]
pub fn pod_report(pods: &[Pod], namespaces: &[Namespace], members: &SliceMembers<'_>) -> (Vec<PodGroup>, Vec<String>) {
    let mut notes = Vec::new();
    let routers: BTreeSet<IpAddr> = members
        .allocations
        .iter()
        .chain(members.secondary)
        .filter_map(|a| a.prefix.parse::<IpNet>().ok())
        .map(slice_api::prefix::router_address)
        .collect();
    let mut candidates: Vec<(&Pod, Vec<IpAddr>)> = Vec::new();
    let mut claims: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut sorted: Vec<&Pod> = pods
        .iter()
        .filter(|p| members.namespaces.contains(&p.namespace().unwrap_or_default()))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .collect();
    sorted.sort_by_key(|p| (p.namespace(), p.name_any()));
    for pod in sorted {
        // Every address of the pod (both families of a dual-stack slice): policies hold per family.
        let Ok(ips) = slice_addresses(pod, members) else { continue };
        if let Some(ip) = ips.iter().find(|ip| routers.contains(ip)) {
            notes.push(format!(
                "pod {}/{} claims the slice-router address {ip}: left out",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ));
            continue;
        }
        for ip in &ips {
            *claims.entry(*ip).or_default() += 1;
        }
        candidates.push((pod, ips));
    }
    let ns_labels: BTreeMap<String, BTreeMap<String, String>> =
        namespaces.iter().map(|n| (n.name_any(), n.labels().clone())).collect();
    let mut groups: BTreeMap<GroupKey, Vec<IpAddr>> = BTreeMap::new();
    let mut count = 0;
    for (pod, ips) in candidates {
        let namespace = pod.namespace().unwrap_or_default();
        if let Some(ip) = ips.iter().find(|ip| claims.get(ip).copied().unwrap_or_default() > 1) {
            let note = format!("address {ip} is claimed by more than one pod: left out");
            if !notes.contains(&note) {
                notes.push(note);
            }
            continue;
        }
        if count == MAX_PODS_PER_CLUSTER {
            notes.push(format!("more than {MAX_PODS_PER_CLUSTER} pods on the slice: the rest are left out"));
            break;
        }
        count += 1;
        groups.entry((namespace, pod.labels().clone(), named_ports(pod))).or_default().extend(ips);
    }
    let mut out: Vec<PodGroup> = groups
        .into_iter()
        .map(|((namespace, labels, ports), mut addresses)| {
            addresses.sort();
            PodGroup {
                namespace_labels: ns_labels.get(&namespace).cloned().unwrap_or_default(),
                namespace,
                labels,
                ports,
                addresses,
            }
        })
        .filter(|g| match policy::check_group(g) {
            Ok(()) => true,
            Err(why) => {
                notes.push(format!("pods of namespace {} left out: {why}", g.namespace));
                false
            }
        })
        .collect();
    let mut bytes: usize = out.iter().map(report_bytes).sum();
    while bytes > MAX_REPORT_BYTES {
        let Some(g) = out.pop() else { break };
        bytes -= report_bytes(&g);
        notes.push(format!(
            "the report is past {MAX_REPORT_BYTES} bytes: {} pods of namespace {} left out",
            g.addresses.len(),
            g.namespace
        ));
    }
    (out, notes)
}

/// The bytes a group takes in JSON.
#[must_use]
pub fn report_bytes(group: &PodGroup) -> usize {
    serde_json::to_vec(group).map_or(usize::MAX / 2, |v| v.len())
}

/// The pod directory a node agent of this cluster gets: this cluster's `own` groups and the
/// hub's groups of the other clusters, without any address of theirs inside a cluster prefix of
/// this cluster (this cluster speaks for those), outside every slice subnet, or already listed
/// (a node configuration with a repeated address would be refused whole). `families`: (slice
/// subnet, this cluster's prefix) of each family of the slice.
#[must_use]
pub fn node_directory(own: &[PodGroup], others: &[PodGroup], families: &[(IpNet, IpNet)]) -> Vec<PodGroup> {
    let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
    let mut out = Vec::new();
    for (group, local) in own.iter().map(|g| (g, true)).chain(others.iter().map(|g| (g, false))) {
        if policy::check_group(group).is_err() {
            continue;
        }
        let addresses: Vec<IpAddr> = group
            .addresses
            .iter()
            .copied()
            .filter(|a| {
                families
                    .iter()
                    .any(|(subnet, cluster_prefix)| subnet.contains(a) && (local == cluster_prefix.contains(a)))
            })
            .filter(|a| seen.insert(*a))
            .collect();
        if !addresses.is_empty() {
            out.push(PodGroup { addresses, ..group.clone() });
        }
    }
    out
}

/// The isolation NetworkPolicy of `slice` in member `namespace`: every pod of the namespace
/// accepts traffic on the primary network only from pods of `allowed` namespaces (the slice's
/// members here and the allowed ones).
#[must_use]
pub fn isolation_policy(slice: &str, namespace: &str, allowed: &[String]) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": isolation_policy_name(slice),
            "namespace": namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY, SLICE_LABEL: slice },
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{ "from": [{ "namespaceSelector": { "matchExpressions": [
                { "key": NAMESPACE_NAME_LABEL, "operator": "In", "values": allowed },
            ]}}]}],
        },
    })
}

#[cfg(test)]
mod tests;
