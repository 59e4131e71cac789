//! The worker's side of multi-cluster services (pure): exports out, imports in.
//!
//! **Exports.** A `ServiceExport` next to a Service in an effective member namespace of a slice
//! exports it to that slice ([`resolve_exports`]). Its endpoints are the Service's *ready*
//! endpoints (the cluster's EndpointSlices labelled `kubernetes.io/service-name`; `ready`
//! unset counts as ready, as the EndpointSlice API says) whose target is a running pod of the
//! namespace, each by the pod's **slice address** — the first address of the pod's
//! `k8s.v1.cni.cncf.io/network-status` entry for the slice (`<ns>/slice-<slice>`) — with the
//! pod's `spec.hostname` (StatefulSets), else its name. What the worker checks, since a
//! namespace user can write their pod's annotations (docs/security.md):
//! - the address must lie inside the node prefix of the slice that the pod's node holds (the
//!   CNI plugin only hands out those); a pod without a node, on a node without a prefix, or
//!   without the slice entry is not an endpoint;
//! - an address claimed by two pods counts for neither (one of them lies; the worker cannot
//!   tell which), and the export's status says so.
//!
//! The hub checks again what it can (the address inside the cluster's prefix, the namespace a
//! member) and merges (`hub::services`). Each export gets the MCS conditions
//! ([`export_conditions`]): `Valid` (`NoService`, `InvalidServiceType` for ExternalName,
//! `NamespaceNotInSlice`), `Ready` (`Exported` once the hub's imports list this cluster for it)
//! and `Conflict` (the hub's verdict).
//!
//! **Imports.** Every import in a WorkerSlice's spec whose namespace is an effective member here
//! becomes a `ServiceImport` (`spec`: type, ClusterSetIP, ports, affinity; `status.clusters`:
//! the exporting clusters) and, per exporting cluster, MCS `EndpointSlice`s (one per port set
//! and address family) labelled `multicluster.kubernetes.io/service-name` and
//! `multicluster.kubernetes.io/source-cluster` whose endpoints are slice addresses
//! ([`import_objects`]). Neither carries `kubernetes.io/service-name`, so kube-proxy and the
//! EndpointSlice controller never take them for a local Service's. ClusterSetIP imports also
//! become the node agents' DNAT rules ([`cluster_set_services`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use serde_json::{Value, json};
use slice_api::crd::{
    Condition, EndpointGroup, ExportedService, ImportedService, NodeAllocation, SliceEndpoint, set_condition,
};
use slice_api::mcs::{self, McsVersion, ServiceExport, ServiceImportType, ServicePort, reason};
use slice_api::multus;
use slice_api::names::{NETWORK_STATUS_ANNOTATION, SLICE_LABEL};
use slice_api::node::{ClusterSetService, ServicePortRule};

use slice_api::corefile;
use slice_api::crd::WorkerSlice;
use slice_api::names::{KUBE_SYSTEM_NAMESPACE, NODE_LOCAL_DNS_CONFIG_MAP};

use super::decide::{Kind, Observed, Write};
use super::objects::{MANAGED_BY, MANAGED_BY_LABEL, PlannedSlice};
use crate::events::{Notice, reason as event_reason, reference, reference_to};

/// The label the EndpointSlice controller puts on a Service's EndpointSlices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A slice as the export resolution needs it.
#[derive(Debug, Clone)]
pub struct SliceMembers<'a> {
    pub slice: &'a str,
    /// Effective member namespaces here.
    pub namespaces: &'a [String],
    /// Node prefixes of the slice in this cluster.
    pub allocations: &'a [NodeAllocation],
    /// The nodes' prefixes of the slice's secondary subnet (dual-stack slices; else empty).
    pub secondary: &'a [NodeAllocation],
}

/// What the worker decided about one ServiceExport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportVerdict {
    pub namespace: String,
    pub name: String,
    /// The slice it exports to (`None`: its namespace is in no slice here).
    pub slice: Option<String>,
    /// `Err((reason, message))` when it is not valid.
    pub valid: Result<(), (&'static str, String)>,
    /// Endpoints left out, one sentence each (for the `Valid` condition's message).
    pub notes: Vec<String>,
}

/// The cluster's objects the resolution reads.
#[derive(Debug, Clone, Copy)]
pub struct ExportSources<'a> {
    pub exports: &'a [ServiceExport],
    pub services: &'a [Service],
    pub endpoint_slices: &'a [EndpointSlice],
    /// Running pods of the member namespaces.
    pub pods: &'a [Pod],
}

/// Every ServiceExport's verdict, and each slice's exports (by slice name, in (namespace,
/// name) order). `now` (RFC 3339) stands in for an export without a creation time.
#[must_use]
pub fn resolve_exports(
    slices: &[SliceMembers<'_>],
    sources: ExportSources<'_>,
    now: &str,
) -> (Vec<ExportVerdict>, BTreeMap<String, Vec<ExportedService>>) {
    let mut verdicts = Vec::new();
    let mut out: BTreeMap<String, Vec<ExportedService>> = BTreeMap::new();
    let mut exports: Vec<&ServiceExport> =
        sources.exports.iter().filter(|e| e.metadata.deletion_timestamp.is_none()).collect();
    exports.sort_by_key(|e| (e.namespace().unwrap_or_default(), e.name_any()));
    for e in exports {
        let namespace = e.namespace().unwrap_or_default();
        let name = e.name_any();
        let mut verdict = ExportVerdict {
            namespace: namespace.clone(),
            name: name.clone(),
            slice: None,
            valid: Ok(()),
            notes: vec![],
        };
        let Some(members) = slices.iter().find(|s| s.namespaces.contains(&namespace)) else {
            verdict.valid =
                Err((reason::NO_SLICE, format!("namespace {namespace} is a member of no slice in this cluster")));
            verdicts.push(verdict);
            continue;
        };
        verdict.slice = Some(members.slice.to_owned());
        let service = sources
            .services
            .iter()
            .find(|s| s.namespace().as_deref() == Some(namespace.as_str()) && s.name_any() == name);
        let Some(service) = service else {
            verdict.valid = Err((reason::NO_SERVICE, format!("no Service {namespace}/{name}")));
            verdicts.push(verdict);
            continue;
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            verdict.valid =
                Err((reason::INVALID_SERVICE_TYPE, "a Service of type ExternalName cannot be exported".to_owned()));
            verdicts.push(verdict);
            continue;
        }
        let type_ = if spec.cluster_ip.as_deref() == Some("None") {
            ServiceImportType::Headless
        } else {
            ServiceImportType::ClusterSetIP
        };
        let mut ports: Vec<ServicePort> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.filter(|n| !n.is_empty()),
                    protocol: p.protocol.unwrap_or_else(|| "TCP".to_owned()),
                    app_protocol: p.app_protocol,
                    port: u16::try_from(p.port).ok()?,
                })
            })
            .collect();
        ports.sort();
        let (endpoints, notes) = ready_endpoints(members, &namespace, &name, sources);
        verdict.notes = notes;
        let exported_at = e.metadata.creation_timestamp.as_ref().map_or_else(|| now.to_owned(), |t| t.0.to_string());
        out.entry(members.slice.to_owned()).or_default().push(ExportedService {
            namespace,
            name,
            type_,
            ports,
            session_affinity: spec.session_affinity.filter(|a| !a.is_empty()),
            exported_at,
            endpoints,
        });
        verdicts.push(verdict);
    }
    (verdicts, out)
}

/// The addresses `pod`'s network-status entry for `members`' slice lists, and its node.
fn status_ips(pod: &Pod, members: &SliceMembers<'_>) -> Result<(Vec<IpAddr>, String), String> {
    let ns = pod.namespace().unwrap_or_default();
    let entry_name = multus::network_name(&ns, members.slice);
    let entries: Vec<Value> =
        pod.annotations().get(NETWORK_STATUS_ANNOTATION).and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default();
    let ips: Vec<IpAddr> = entries
        .iter()
        .filter(|e| e.get("name").and_then(Value::as_str) == Some(entry_name.as_str()))
        .flat_map(|e| e.get("ips").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|ip| ip.as_str()?.trim().parse().ok())
        .collect();
    if ips.is_empty() {
        return Err("has no slice interface".to_owned());
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).ok_or("is on no node")?;
    Ok((ips, node))
}

/// The prefix `allocations` give `node`.
fn node_prefix_of(allocations: &[NodeAllocation], node: &str) -> Option<IpNet> {
    allocations.iter().find(|a| a.node == node).and_then(|a| a.prefix.parse::<IpNet>().ok())
}

/// The slice address of `pod` on `members`' slice: its network-status entry for the slice, the
/// first address inside the node prefix its node holds.
pub(crate) fn slice_address(pod: &Pod, members: &SliceMembers<'_>) -> Result<IpAddr, String> {
    let (ips, node) = status_ips(pod, members)?;
    primary_address(&ips, &node, members)
}

/// The first of `ips` inside the node prefix `node` holds.
fn primary_address(ips: &[IpAddr], node: &str, members: &SliceMembers<'_>) -> Result<IpAddr, String> {
    let prefix = node_prefix_of(members.allocations, node)
        .ok_or_else(|| format!("is on node {node}, which holds no prefix of the slice"))?;
    ips.iter()
        .copied()
        .find(|ip| prefix.contains(ip))
        .ok_or_else(|| format!("claims a slice address outside its node {node}'s prefix {prefix}"))
}

/// Every slice address of `pod`: the primary family's ([`slice_address`]) and, on a dual-stack
/// slice, the secondary family's inside its node's secondary prefix, when it lists one.
pub(crate) fn slice_addresses(pod: &Pod, members: &SliceMembers<'_>) -> Result<Vec<IpAddr>, String> {
    let (ips, node) = status_ips(pod, members)?;
    let primary = primary_address(&ips, &node, members)?;
    let secondary =
        node_prefix_of(members.secondary, &node).and_then(|prefix| ips.iter().copied().find(|ip| prefix.contains(ip)));
    Ok(std::iter::once(primary).chain(secondary).collect())
}

/// The ready endpoints of Service `namespace/name`, grouped by port set, and what was left out.
fn ready_endpoints(
    members: &SliceMembers<'_>,
    namespace: &str,
    name: &str,
    sources: ExportSources<'_>,
) -> (Vec<EndpointGroup>, Vec<String>) {
    let mut notes = Vec::new();
    // (ports, pod name) of every ready endpoint.
    let mut wanted: BTreeSet<(Vec<ServicePort>, String)> = BTreeSet::new();
    for es in sources.endpoint_slices.iter().filter(|es| {
        es.namespace().as_deref() == Some(namespace)
            && es.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
    }) {
        let mut ports: Vec<ServicePort> = es
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                    app_protocol: p.app_protocol.clone(),
                    port: u16::try_from(p.port?).ok()?,
                })
            })
            .collect();
        ports.sort();
        for ep in es.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let pod = ep.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name.clone());
            if let (true, Some(pod)) = (ready, pod) {
                wanted.insert((ports.clone(), pod));
            }
        }
    }
    // Resolve each pod once; then drop addresses two pods claim.
    let mut address_of: BTreeMap<String, IpAddr> = BTreeMap::new();
    for pod_name in wanted.iter().map(|(_, p)| p).collect::<BTreeSet<_>>() {
        let pod = sources.pods.iter().find(|p| {
            p.namespace().as_deref() == Some(namespace)
                && &p.name_any() == pod_name
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        let Some(pod) = pod else { continue }; // not running (yet): not an endpoint
        match slice_address(pod, members) {
            Ok(ip) => {
                address_of.insert(pod_name.clone(), ip);
            }
            Err(why) => notes.push(format!("pod {pod_name} {why}: not an endpoint")),
        }
    }
    // Every running pod of the namespace counts for a duplicate, not only the endpoints.
    let mut claims: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for p in sources.pods.iter().filter(|p| p.namespace().as_deref() == Some(namespace)) {
        if let Ok(ip) = slice_address(p, members) {
            claims.entry(ip).or_default().insert(p.name_any());
        }
    }
    let mut groups: BTreeMap<Vec<ServicePort>, Vec<SliceEndpoint>> = BTreeMap::new();
    for (ports, pod_name) in &wanted {
        let Some(ip) = address_of.get(pod_name) else { continue };
        if let Some(owners) = claims.get(ip).filter(|o| o.len() > 1) {
            let list: Vec<&str> = owners.iter().map(String::as_str).collect();
            let note = format!("address {ip} is claimed by pods {}: none of them is an endpoint", list.join(", "));
            if !notes.contains(&note) {
                notes.push(note);
            }
            continue;
        }
        let pod =
            sources.pods.iter().find(|p| p.namespace().as_deref() == Some(namespace) && &p.name_any() == pod_name);
        let hostname = pod
            .and_then(|p| p.spec.as_ref()?.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_name.clone());
        groups
            .entry(ports.clone())
            .or_default()
            .push(SliceEndpoint { address: ip.to_string(), hostname: Some(hostname) });
    }
    let groups = groups
        .into_iter()
        .map(|(ports, mut endpoints)| {
            endpoints.sort();
            endpoints.dedup();
            EndpointGroup { ports, endpoints }
        })
        .collect();
    (groups, notes)
}

/// The MCS conditions of an export, updated from `old` at `now`: `Valid` from the verdict,
/// `Ready` and `Conflict` from the import of the same name in `imports` (the hub's merge, in
/// the slice's WorkerSlice spec) as it lists `cluster`.
#[must_use]
pub fn export_conditions(
    old: &[Condition],
    verdict: &ExportVerdict,
    imports: &[ImportedService],
    cluster: &str,
    now: &str,
) -> Vec<Condition> {
    let mut conditions = old.to_vec();
    let import = imports.iter().find(|i| i.namespace == verdict.namespace && i.name == verdict.name);
    let listed = import.is_some_and(|i| i.clusters.iter().any(|c| c.cluster == cluster));
    let (valid, ready) = match &verdict.valid {
        Err((why, message)) => (
            Condition::new(mcs::VALID, false, why, message.clone()),
            Condition::new(mcs::EXPORT_READY, false, reason::FAILED, "the export is not valid (see Valid)"),
        ),
        Ok(()) => {
            let slice = verdict.slice.as_deref().unwrap_or_default();
            let mut message = format!("exported to slice {slice}");
            if !verdict.notes.is_empty() {
                message.push_str(&format!("; {}", verdict.notes.join("; ")));
            }
            let ready = if listed {
                Condition::new(mcs::EXPORT_READY, true, reason::EXPORTED, format!("in slice {slice}'s imports"))
            } else {
                Condition::new(
                    mcs::EXPORT_READY,
                    false,
                    reason::PENDING,
                    "reported to the hub, not in the slice's imports yet",
                )
            };
            (Condition::new(mcs::VALID, true, reason::VALID, message), ready)
        }
    };
    let conflict = match import.filter(|_| listed).and_then(|i| i.conflict.as_ref()) {
        Some(c) => Condition::new(mcs::CONFLICT, true, &c.reason, c.message.clone()),
        None => Condition::new(mcs::CONFLICT, false, reason::NO_CONFLICTS, ""),
    };
    for c in [valid, ready, conflict] {
        set_condition(&mut conditions, c, now);
    }
    conditions
}

/// The labels of everything the worker writes for `slice`'s import of `service`.
fn import_labels(slice: &str) -> Value {
    json!({ MANAGED_BY_LABEL: MANAGED_BY, SLICE_LABEL: slice })
}

/// The name of the MCS EndpointSlice of `service`'s endpoints from `cluster` with port set
/// `index` and `family` (`v4`/`v6`): readable, and an FNV hash when too long for a name.
#[must_use]
pub fn endpoint_slice_name(service: &str, cluster: &str, index: usize, family: &str) -> String {
    let name = format!("{service}-{cluster}-{index}{family}");
    if name.len() <= 63 {
        return name;
    }
    let hash = slice_api::fnv::fnv1a_64(name.bytes());
    format!("{}-{hash:016x}", &service[..service.len().min(40)])
}

/// The ServiceImport in `version` (with its `status.clusters`, and in `v1beta1`
/// `status.endpointSliceObjects`) and the MCS EndpointSlices of `import` in a cluster running
/// `slice`.
#[must_use]
pub fn import_objects(slice: &str, import: &ImportedService, version: McsVersion) -> (Value, Value, Vec<Value>) {
    let ns = &import.namespace;
    let name = &import.name;
    let mut spec = json!({ "type": import.type_, "ports": import.ports });
    if !import.ips.is_empty() {
        spec["ips"] = json!(import.ips);
    }
    if let Some(a) = &import.session_affinity {
        spec["sessionAffinity"] = json!(a);
    }
    let service_import = json!({
        "apiVersion": version.api_version(),
        "kind": "ServiceImport",
        "metadata": { "name": name, "namespace": ns, "labels": import_labels(slice) },
        "spec": spec,
    });
    let mut status =
        json!({ "clusters": import.clusters.iter().map(|c| json!({"cluster": c.cluster})).collect::<Vec<_>>() });
    let mut slices = Vec::new();
    for c in &import.clusters {
        for (index, group) in c.endpoints.iter().enumerate() {
            for (family, address_type) in [("v4", "IPv4"), ("v6", "IPv6")] {
                let endpoints: Vec<Value> = group
                    .endpoints
                    .iter()
                    .filter(|e| e.address.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4() == (family == "v4")))
                    .map(|e| {
                        let mut ep = json!({ "addresses": [e.address], "conditions": { "ready": true } });
                        if let Some(h) = &e.hostname {
                            ep["hostname"] = json!(h);
                        }
                        ep
                    })
                    .collect();
                if endpoints.is_empty() {
                    continue;
                }
                let mut labels = import_labels(slice);
                labels[mcs::SERVICE_NAME_LABEL] = json!(name);
                labels[mcs::SOURCE_CLUSTER_LABEL] = json!(c.cluster);
                labels[mcs::MANAGED_BY_LABEL] = json!(mcs::MANAGED_BY);
                let ports: Vec<Value> = group
                    .ports
                    .iter()
                    .map(|p| {
                        let mut v = json!({ "port": p.port, "protocol": p.protocol });
                        if let Some(n) = &p.name {
                            v["name"] = json!(n);
                        }
                        if let Some(a) = &p.app_protocol {
                            v["appProtocol"] = json!(a);
                        }
                        v
                    })
                    .collect();
                slices.push(json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": endpoint_slice_name(name, &c.cluster, index, family),
                        "namespace": ns,
                        "labels": labels,
                    },
                    "addressType": address_type,
                    "endpoints": endpoints,
                    "ports": ports,
                }));
            }
        }
    }
    // Only `v1beta1` has the field: CRDs that serve `v1alpha1` alone (upstream's older ones)
    // would prune it, and the status would never read back as written.
    if version == McsVersion::V1beta1 {
        status["endpointSliceObjects"] = json!(if slices.is_empty() { "Absent" } else { "Present" });
    }
    (service_import, status, slices)
}

/// The node agents' ClusterSetIP rules for `imports`: per service port, every exporting
/// cluster's endpoints that serve a port of the same name (or, unnamed, the only port) with
/// that endpoint group's port number and protocol.
#[must_use]
pub fn cluster_set_services(imports: &[ImportedService]) -> Vec<ClusterSetService> {
    let mut out = Vec::new();
    for i in imports.iter().filter(|i| i.type_ == ServiceImportType::ClusterSetIP) {
        let Some(ip) = i.ips.first().and_then(|t| t.parse::<IpAddr>().ok()) else { continue };
        let ports = i
            .ports
            .iter()
            .map(|sp| {
                let mut backends: Vec<SocketAddr> = i
                    .clusters
                    .iter()
                    .flat_map(|c| &c.endpoints)
                    .filter_map(|g| {
                        let target = g.ports.iter().find(|tp| tp.name == sp.name && tp.protocol == sp.protocol)?;
                        Some(g.endpoints.iter().filter_map(move |e| {
                            let addr: IpAddr = e.address.parse().ok()?;
                            (addr.is_ipv4() == ip.is_ipv4()).then_some(SocketAddr::new(addr, target.port))
                        }))
                    })
                    .flatten()
                    .collect();
                backends.sort();
                backends.dedup();
                ServicePortRule { protocol: sp.protocol.clone(), port: sp.port, backends }
            })
            .collect();
        out.push(ClusterSetService { name: format!("{}/{}", i.namespace, i.name), ip, ports });
    }
    out.sort();
    out
}

/// What a pass decides about multi-cluster services (see [`decide`]).
#[derive(Debug, Clone, Default)]
pub struct McsDecision {
    /// Each active slice's exports (its WorkerSlice's `status.exports`), by WorkerSlice name.
    pub exports: BTreeMap<String, Vec<ExportedService>>,
    /// Each slice's ClusterSetIP rules for its node agents, by slice name.
    pub node_services: BTreeMap<String, Vec<ClusterSetService>>,
    /// The ServiceImports and MCS EndpointSlices wanted.
    pub objects: Vec<(Kind, Value)>,
    /// After the objects: ServiceImport statuses, ServiceExport conditions, Corefile edits, each
    /// with the Event its success is worth.
    pub status_writes: Vec<(Write, Option<Notice>)>,
}

/// The multi-cluster services part of a pass: `active` WorkerSlices of `cluster`, as `planned`
/// (by WorkerSlice name), at `now`.
#[must_use]
pub fn decide(
    observed: &Observed,
    active: &[&WorkerSlice],
    planned: &BTreeMap<String, PlannedSlice>,
    cluster: &str,
    now: &str,
) -> McsDecision {
    let mut out = McsDecision::default();
    let mut members: Vec<(String, SliceMembers<'_>)> = Vec::new();
    for ws in active {
        if let Some(p) = planned.get(&ws.name_any()) {
            members.push((
                ws.name_any(),
                SliceMembers {
                    slice: &ws.spec.slice,
                    namespaces: &p.namespaces,
                    allocations: &p.allocations,
                    secondary: &p.secondary_allocations,
                },
            ));
        }
    }
    let slices: Vec<SliceMembers<'_>> = members.iter().map(|(_, m)| m.clone()).collect();
    let sources = ExportSources {
        exports: &observed.service_exports,
        services: &observed.exported_services,
        endpoint_slices: &observed.endpoint_slices,
        pods: &observed.member_pods,
    };
    let (verdicts, by_slice) = resolve_exports(&slices, sources, now);
    for (ws_name, m) in &members {
        out.exports.insert(ws_name.clone(), by_slice.get(m.slice).cloned().unwrap_or_default());
    }

    // Imports: the objects, their statuses, the node agents' rules.
    let mut import_statuses = Vec::new();
    for ws in active {
        let Some(p) = planned.get(&ws.name_any()) else { continue };
        let imports: Vec<ImportedService> =
            ws.spec.imports.iter().filter(|i| p.namespaces.contains(&i.namespace)).cloned().collect();
        out.node_services.insert(ws.spec.slice.clone(), cluster_set_services(&imports));
        for i in &imports {
            let (service_import, status, slices) = import_objects(&ws.spec.slice, i, observed.mcs_version);
            out.objects.push((Kind::ServiceImport, service_import));
            out.objects.extend(slices.into_iter().map(|s| (Kind::EndpointSlice, s)));
            let current = observed
                .service_imports
                .iter()
                .find(|o| o.namespace().as_deref() == Some(i.namespace.as_str()) && o.name_any() == i.name)
                .and_then(|o| o.data.get("status").cloned());
            if current.as_ref() != Some(&status) {
                import_statuses.push(Write::PatchImportStatus {
                    namespace: i.namespace.clone(),
                    name: i.name.clone(),
                    status,
                });
            }
        }
    }
    out.status_writes.extend(import_statuses.into_iter().map(|w| (w, None)));

    // ServiceExport conditions.
    for v in &verdicts {
        let Some(export) = observed
            .service_exports
            .iter()
            .find(|e| e.namespace().as_deref() == Some(v.namespace.as_str()) && e.name_any() == v.name)
        else {
            continue;
        };
        let imports = v
            .slice
            .as_deref()
            .and_then(|s| active.iter().find(|ws| ws.spec.slice == s))
            .map_or(&[][..], |ws| ws.spec.imports.as_slice());
        let old = export.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let conditions = export_conditions(&old, v, imports, cluster, now);
        if conditions == old {
            continue;
        }
        let flipped = |type_: &str, bad: &str| {
            let was = slice_api::crd::condition(&old, type_).map(|c| c.status.as_str());
            let is = slice_api::crd::condition(&conditions, type_);
            is.filter(|c| c.status == bad && was != Some(bad)).cloned()
        };
        let notice = flipped(mcs::VALID, "False")
            .map(|c| (event_reason::SERVICE_EXPORT_INVALID, c))
            .or_else(|| flipped(mcs::CONFLICT, "True").map(|c| (event_reason::SERVICE_EXPORT_CONFLICT, c)))
            .map(|(why, c)| {
                let note = format!("{}/{}: {}: {}", v.namespace, v.name, c.reason, c.message);
                let regarding = reference_to(
                    &observed.mcs_version.api_version(),
                    "ServiceExport",
                    Some(&v.namespace),
                    &v.name,
                    export.metadata.uid.as_deref(),
                );
                Notice::warning(regarding, why, "Export", note)
            });
        out.status_writes.push((
            Write::PatchExportStatus { namespace: v.namespace.clone(), name: v.name.clone(), conditions },
            notice,
        ));
    }

    // The Corefiles: our stanza while this cluster runs a slice and slice-dns has an address.
    let upstreams: Vec<IpAddr> = observed
        .dns_service
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .map(|spec| {
            let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
            ips.extend(spec.cluster_ip.clone());
            let mut ips: Vec<IpAddr> = ips.iter().filter_map(|t| t.trim().parse().ok()).collect();
            ips.sort();
            ips.dedup();
            ips
        })
        .unwrap_or_default();
    let wanted = !active.is_empty() && !upstreams.is_empty();
    for cm in &observed.dns_config_maps {
        let name = cm.name_any();
        let Some(current) = cm.data.as_ref().and_then(|d| d.get(corefile::COREFILE_KEY)) else { continue };
        let next = if wanted {
            let stanza = if name == NODE_LOCAL_DNS_CONFIG_MAP {
                corefile::node_local_stanza(current, upstreams.clone())
            } else {
                Ok(corefile::Stanza::coredns(upstreams.clone()))
            };
            stanza.and_then(|s| corefile::with_stanza(current, &s))
        } else {
            corefile::without_stanza(current)
        };
        match next {
            Ok(text) if &text != current => {
                let note = if wanted { "added the slice DNS stanza" } else { "removed the slice DNS stanza" };
                let notice = Notice::normal(
                    reference(cm),
                    event_reason::SLICE_DNS_CONFIGURED,
                    "EditCorefile",
                    format!(
                        "ConfigMap {KUBE_SYSTEM_NAMESPACE}/{name}: {note} ({} and {})",
                        mcs::CLUSTERSET_ZONE,
                        mcs::SLICE_ZONE
                    ),
                );
                out.status_writes.push((
                    Write::PatchConfigData {
                        namespace: KUBE_SYSTEM_NAMESPACE.to_owned(),
                        name: name.clone(),
                        key: corefile::COREFILE_KEY.to_owned(),
                        value: text,
                        resource_version: cm.resource_version(),
                    },
                    Some(notice),
                ));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(config_map = %name, error = %e, "leaving the Corefile alone"),
        }
    }
    out
}

#[cfg(test)]
mod tests;
