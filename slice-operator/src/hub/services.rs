//! The hub's merge of multi-cluster services (pure): what member clusters report as exported in
//! their WorkerSlice status → one [`ImportedService`] per exported service of a slice, which the
//! hub writes into every member cluster's WorkerSlice spec (those whose member namespaces hold
//! it), and the [`ServiceAllocation`]s it records in the SliceConfig's status.
//!
//! Rules:
//! - **Trust.** A report counts only from a WorkerSlice that speaks for itself
//!   (`planner::speaks_for_itself`), is not being deleted and whose cluster the plan keeps in the
//!   slice: a cluster that leaves takes its endpoints out at once. An export is dropped when its
//!   namespace is not one of that cluster's member namespaces of the slice (as the hub planned
//!   them), or when its names, ports, session affinity or time are malformed; an endpoint is
//!   dropped when its address is not inside that cluster's prefix of the slice (so no cluster
//!   can make another cluster's, or anyone else's, addresses answer for a service), or repeats
//!   one already taken; a hostname that is not a DNS label is dropped from its endpoint. A
//!   cluster reports at most [`MAX_ENDPOINTS_PER_CLUSTER`] endpoints per slice: exports past
//!   that are dropped whole, so one cluster cannot grow every member's WorkerSlice without
//!   bound. Each drop is one sentence in [`Merged::refusals`] (the hub's `ExportsAccepted`
//!   condition and a Warning Event). A report only ever speaks for its own cluster: the
//!   endpoints it brings are listed under that cluster and nowhere else.
//! - **Definition.** One export defines the service's type, session affinity and first ports:
//!   the one recorded as defining it while that cluster still exports it (so a newcomer, even
//!   one claiming an older time, never takes it over), else the oldest (`exportedAt`, then the
//!   cluster name).
//! - **Ports** are the union, the defining export's first, then the others' in (time, cluster)
//!   order; a port whose name or (port, protocol) is taken by a different port already in the
//!   union is left out. Exports whose port sets, types or session affinities differ make a
//!   `Conflict` (MCS reasons `PortConflict`, `TypeConflict`, `SessionAffinityConflict`) that
//!   every exporting cluster puts on its ServiceExport.
//! - **ClusterSetIP.** A service of type `ClusterSetIP` gets a virtual address from the block
//!   reserved at the top of the slice subnet (`AddressPlan::cluster_set_ip_block`): the one
//!   recorded for it, else the one the WorkerSlice specs carry (the status was lost), else the
//!   lowest free address, in (namespace, name) order. The block's first and last addresses and
//!   any address inside a node prefix a member cluster reports (a node that held it before the
//!   block was reserved) are never used. The address is released when the service is no longer
//!   exported or becomes `Headless`.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::jiff::Timestamp;
use slice_api::crd::{
    EndpointGroup, ExportConflict, ExportedService, ImportedCluster, ImportedService, ServiceAllocation, SliceConfig,
    SliceEndpoint, WorkerSlice, WorkerSliceSpec,
};
use slice_api::mcs::{ServiceImportType, ServicePort, reason};
use slice_api::planner::{SlicePlan, speaks_for_itself};
use slice_api::prefix;

/// The most endpoints one cluster may report for one slice (its own cluster prefix holds about
/// that many pods at the default sizes): each member cluster's WorkerSlice carries the
/// endpoints of every cluster, and an object must stay well under etcd's 1.5 MiB.
pub const MAX_ENDPOINTS_PER_CLUSTER: usize = 4096;

/// The merge of one slice's exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// Every service exported on the slice, in (namespace, name) order.
    pub imports: Vec<ImportedService>,
    /// What the SliceConfig's status records (`status.services`), in the same order.
    pub services: Vec<ServiceAllocation>,
    /// What was dropped from the reports, and why, one sentence each.
    pub refusals: Vec<String>,
    /// How many clusters export at least one service.
    pub exporting_clusters: usize,
}

/// An export that passed the checks, with its parsed time.
#[derive(Debug, Clone)]
struct Accepted {
    cluster: String,
    at: Timestamp,
    export: ExportedService,
}

/// Merges the exports of the slice planned as `plan` (a planned slice: its worker specs name
/// the member clusters with their prefixes and namespaces) from `workers` (the hub's
/// WorkerSlices, any slice) with what `slice`'s status recorded.
#[must_use]
pub fn merge(slice: &SliceConfig, plan: &SlicePlan, workers: &[impl Borrow<WorkerSlice>]) -> Merged {
    let mut refusals = Vec::new();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut exporting = BTreeSet::new();
    let mut reserved: Vec<IpNet> = Vec::new();
    let reports = workers
        .iter()
        .map(Borrow::borrow)
        .filter(|w| speaks_for_itself(w) && w.spec.slice == plan.name && w.metadata.deletion_timestamp.is_none());
    for w in reports {
        let Some(spec) = plan.worker(&w.spec.cluster) else {
            continue; // not (or no longer) a member: what it says is not used
        };
        let Ok(prefix) = spec.cluster_prefix.parse::<IpNet>() else { continue };
        let Some(status) = &w.status else { continue };
        // Node prefixes a cluster holds inside its own prefix keep their addresses out of the
        // ClusterSetIP block (one elsewhere is not its to claim).
        reserved
            .extend(status.nodes.iter().filter_map(|n| n.prefix.parse::<IpNet>().ok()).filter(|n| prefix.contains(n)));
        let taken = check_report(spec, prefix, &status.exports, &mut refusals);
        if !taken.is_empty() {
            exporting.insert(spec.cluster.clone());
        }
        accepted.extend(taken);
    }

    let mut by_service: BTreeMap<(String, String), Vec<Accepted>> = BTreeMap::new();
    for a in accepted {
        by_service.entry((a.export.namespace.clone(), a.export.name.clone())).or_default().push(a);
    }
    let recorded: BTreeMap<(String, String), &ServiceAllocation> =
        slice.status.iter().flat_map(|s| &s.services).map(|s| ((s.namespace.clone(), s.name.clone()), s)).collect();

    let mut imports = Vec::new();
    for ((namespace, name), mut exports) in by_service {
        let incumbent = recorded.get(&(namespace.clone(), name.clone())).map(|r| r.defined_by.as_str());
        exports.sort_by(|a, b| {
            let first = |x: &Accepted| Some(x.cluster.as_str()) != incumbent;
            (first(a), a.at, &a.cluster).cmp(&(first(b), b.at, &b.cluster))
        });
        imports.push(merge_service(namespace, name, &exports));
    }

    // ClusterSetIPs.
    let block = slice.spec.address_plan().ok().map(|a| a.cluster_set_ip_block());
    let recovered = recovered_ips(workers, &plan.name);
    let mut ips = IpAllocator { block, reserved, taken: BTreeSet::new() };
    let wants_ip = |i: &ImportedService| i.type_ == ServiceImportType::ClusterSetIP;
    let mut chosen: BTreeMap<(String, String), IpAddr> = BTreeMap::new();
    for candidates in [recorded_ips(&recorded), recovered] {
        for i in imports.iter().filter(|i| wants_ip(i)) {
            let key = (i.namespace.clone(), i.name.clone());
            if chosen.contains_key(&key) {
                continue;
            }
            if let Some(ip) = candidates.get(&key).copied().filter(|ip| ips.usable(*ip)) {
                ips.taken.insert(ip);
                chosen.insert(key, ip);
            }
        }
    }
    for i in imports.iter_mut().filter(|i| wants_ip(i)) {
        let key = (i.namespace.clone(), i.name.clone());
        let ip = match chosen.get(&key) {
            Some(ip) => Some(*ip),
            None => ips.next_free(),
        };
        match ip {
            Some(ip) => i.ips = vec![ip.to_string()],
            None => refusals.push(match block {
                Some(block) => format!(
                    "service {}/{} gets no ClusterSetIP: every address of the reserved block {block} is taken",
                    i.namespace, i.name
                ),
                None => {
                    format!("service {}/{} gets no ClusterSetIP: the slice has no address plan", i.namespace, i.name)
                }
            }),
        }
    }

    let services = imports
        .iter()
        .map(|i| ServiceAllocation {
            namespace: i.namespace.clone(),
            name: i.name.clone(),
            ip: i.ips.first().cloned(),
            defined_by: i.clusters.first().map(|c| c.cluster.clone()).unwrap_or_default(),
        })
        .collect();
    // The defining cluster is listed first in `clusters` only for the record above; the import
    // lists its clusters by name.
    for i in &mut imports {
        i.clusters.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    }
    Merged { imports, services, refusals, exporting_clusters: exporting.len() }
}

/// The imports of `all` that a cluster with member `namespaces` gets.
#[must_use]
pub fn imports_for(all: &[ImportedService], namespaces: &[String]) -> Vec<ImportedService> {
    all.iter().filter(|i| namespaces.contains(&i.namespace)).cloned().collect()
}

fn recorded_ips(recorded: &BTreeMap<(String, String), &ServiceAllocation>) -> BTreeMap<(String, String), IpAddr> {
    recorded.iter().filter_map(|(k, r)| Some((k.clone(), r.ip.as_deref()?.parse().ok()?))).collect()
}

/// The ClusterSetIPs the WorkerSlice specs of `slice` carry (the hub wrote them: workers cannot
/// change specs), for a hub whose SliceConfig status was lost.
fn recovered_ips(workers: &[impl Borrow<WorkerSlice>], slice: &str) -> BTreeMap<(String, String), IpAddr> {
    let mut out = BTreeMap::new();
    for w in workers.iter().map(Borrow::borrow).filter(|w| speaks_for_itself(w) && w.spec.slice == slice) {
        for i in &w.spec.imports {
            if let Some(ip) = i.ips.first().and_then(|t| t.parse::<IpAddr>().ok()) {
                out.entry((i.namespace.clone(), i.name.clone())).or_insert(ip);
            }
        }
    }
    out
}

/// Hands out addresses of the ClusterSetIP block.
struct IpAllocator {
    block: Option<IpNet>,
    /// Node prefixes in use that may overlap the block.
    reserved: Vec<IpNet>,
    taken: BTreeSet<IpAddr>,
}

impl IpAllocator {
    /// The block's addresses that may serve: not its first or last.
    fn offsets(&self) -> Option<(IpNet, std::ops::Range<u128>)> {
        let block = self.block?;
        let bits = u32::from(block.max_prefix_len() - block.prefix_len());
        let size: u128 = if bits >= 128 { u128::MAX } else { 1u128 << bits };
        Some((block, 1..size.saturating_sub(1)))
    }

    fn usable(&self, ip: IpAddr) -> bool {
        let Some((block, range)) = self.offsets() else { return false };
        prefix::offset_in(block, ip).is_some_and(|o| range.contains(&o))
            && !self.taken.contains(&ip)
            && !self.reserved.iter().any(|n| n.contains(&ip))
    }

    fn next_free(&mut self) -> Option<IpAddr> {
        let (block, range) = self.offsets()?;
        let ip = range.map(|o| prefix::address_at(block, o)).find(|ip| self.usable(*ip))?;
        self.taken.insert(ip);
        Some(ip)
    }
}

/// One cluster's exports that pass the checks, cleaned; what does not pass goes to `refusals`.
fn check_report(
    spec: &WorkerSliceSpec,
    prefix: IpNet,
    exports: &[ExportedService],
    refusals: &mut Vec<String>,
) -> Vec<Accepted> {
    let cluster = &spec.cluster;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut budget = MAX_ENDPOINTS_PER_CLUSTER;
    let mut sorted: Vec<&ExportedService> = exports.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for e in sorted {
        let what = format!("cluster {cluster} exports {}/{}", e.namespace, e.name);
        let mut refuse = |why: String| refusals.push(format!("{what}: {why}: dropped"));
        if !is_label(&e.namespace) || !is_service_name(&e.name) {
            refuse("not a valid namespace and Service name".to_owned());
            continue;
        }
        if !spec.namespaces.contains(&e.namespace) {
            refuse(format!("namespace {} is not a member of slice {} in that cluster", e.namespace, spec.slice));
            continue;
        }
        if !seen.insert((e.namespace.clone(), e.name.clone())) {
            refuse("reported twice".to_owned());
            continue;
        }
        let Ok(at) = e.exported_at.parse::<Timestamp>() else {
            refuse(format!("exportedAt {:?} is not an RFC 3339 time", e.exported_at));
            continue;
        };
        if let Err(why) = check_ports(&e.ports) {
            refuse(why);
            continue;
        }
        if !matches!(e.session_affinity.as_deref(), None | Some("None" | "ClientIP")) {
            refuse(format!("session affinity {:?} is neither None nor ClientIP", e.session_affinity));
            continue;
        }
        // Endpoints: inside the cluster's prefix, once each; hostnames that are DNS labels.
        let mut outside = Vec::new();
        let mut bad_hostnames = Vec::new();
        let mut groups: BTreeMap<Vec<ServicePort>, Vec<SliceEndpoint>> = BTreeMap::new();
        let mut bad_ports = None;
        for g in &e.endpoints {
            if let Err(why) = check_ports(&g.ports) {
                bad_ports = Some(why);
                break;
            }
            let mut ports = g.ports.clone();
            ports.sort();
            for ep in &g.endpoints {
                let ip = match ep.address.trim().parse::<IpAddr>() {
                    Ok(ip) if prefix.contains(&ip) => ip,
                    _ => {
                        outside.push(ep.address.clone());
                        continue;
                    }
                };
                if !addresses.insert(ip) {
                    continue; // the same pod twice: once is enough
                }
                let hostname = ep.hostname.clone().filter(|h| {
                    let ok = is_label(h);
                    if !ok {
                        bad_hostnames.push(h.clone());
                    }
                    ok
                });
                groups.entry(ports.clone()).or_default().push(SliceEndpoint { address: ip.to_string(), hostname });
            }
        }
        if let Some(why) = bad_ports {
            refuse(format!("endpoint ports: {why}"));
            continue;
        }
        if !outside.is_empty() {
            refuse(format!(
                "its endpoints {} are not inside its prefix {prefix} of slice {}",
                outside.join(", "),
                spec.slice
            ));
            // Only those endpoints go; the rest of the export stays.
        }
        if !bad_hostnames.is_empty() {
            refusals.push(format!(
                "{what}: hostnames {} are not DNS labels: the endpoints stay without them",
                bad_hostnames.join(", ")
            ));
        }
        let count: usize = groups.values().map(Vec::len).sum();
        if count > budget {
            refusals.push(format!(
                "{what}: its {count} endpoints are past the {MAX_ENDPOINTS_PER_CLUSTER} a cluster may report for a slice: dropped"
            ));
            continue;
        }
        budget -= count;
        let endpoints = groups
            .into_iter()
            .map(|(ports, mut endpoints)| {
                endpoints.sort();
                EndpointGroup { ports, endpoints }
            })
            .collect();
        let mut ports = e.ports.clone();
        ports.sort();
        let export = ExportedService { ports, endpoints, ..e.clone() };
        out.push(Accepted { cluster: cluster.clone(), at, export });
    }
    out
}

/// Ports must be TCP, UDP or SCTP, not 0, named with a DNS label (or unnamed), and no two may
/// share a name or a (port, protocol).
fn check_ports(ports: &[ServicePort]) -> Result<(), String> {
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for p in ports {
        if !matches!(p.protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(format!("port {} has protocol {:?}, not TCP, UDP or SCTP", p.port, p.protocol));
        }
        if p.port == 0 {
            return Err("port 0".to_owned());
        }
        let name = p.name.clone().unwrap_or_default();
        if !name.is_empty() && !is_label(&name) {
            return Err(format!("port name {name:?} is not a DNS label"));
        }
        if p.app_protocol.as_ref().is_some_and(|a| a.is_empty() || a.len() > 253 || a.chars().any(char::is_whitespace))
        {
            return Err(format!("port {} has an unusable appProtocol", p.port));
        }
        if !names.insert(name.clone()) || !numbers.insert((p.port, p.protocol.clone())) {
            return Err(format!("port {} {}/{} repeats a name or port", name, p.port, p.protocol));
        }
    }
    Ok(())
}

/// An RFC 1123 label: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Service name: an RFC 1035 label (a label that starts with a letter).
fn is_service_name(s: &str) -> bool {
    is_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn port_text(p: &ServicePort) -> String {
    match &p.name {
        Some(n) if !n.is_empty() => format!("{n}:{}/{}", p.port, p.protocol),
        _ => format!("{}/{}", p.port, p.protocol),
    }
}

fn affinity(e: &ExportedService) -> &str {
    e.session_affinity.as_deref().unwrap_or("None")
}

fn type_text(t: ServiceImportType) -> &'static str {
    match t {
        ServiceImportType::ClusterSetIP => "ClusterSetIP",
        ServiceImportType::Headless => "Headless",
    }
}

/// One service from its accepted exports, the defining one first. The defining cluster is
/// first in `clusters` (the caller records it, then sorts).
fn merge_service(namespace: String, name: String, exports: &[Accepted]) -> ImportedService {
    let first = &exports[0];
    let mut ports: Vec<ServicePort> = Vec::new();
    let mut left_out = Vec::new();
    for a in exports {
        for p in &a.export.ports {
            if ports.contains(p) {
                continue;
            }
            let clash = ports.iter().any(|q| q.name == p.name || (q.port == p.port && q.protocol == p.protocol));
            if clash {
                left_out.push(format!("{}'s {}", a.cluster, port_text(p)));
            } else {
                ports.push(p.clone());
            }
        }
    }

    let mut reasons = Vec::new();
    let mut parts = Vec::new();
    let each = |f: &dyn Fn(&Accepted) -> String| -> String {
        exports.iter().map(|a| format!("{} {}", a.cluster, f(a))).collect::<Vec<_>>().join(", ")
    };
    if exports.iter().any(|a| a.export.ports != first.export.ports) {
        reasons.push(reason::PORT_CONFLICT);
        let list = |a: &Accepted| {
            let ports: Vec<String> = a.export.ports.iter().map(port_text).collect();
            format!("[{}]", ports.join(" "))
        };
        let mut text = format!("ports differ ({}): the union is used", each(&list));
        if !left_out.is_empty() {
            text.push_str(&format!(", without {}, whose name or port is taken", left_out.join(", ")));
        }
        parts.push(text);
    }
    if exports.iter().any(|a| a.export.type_ != first.export.type_) {
        reasons.push(reason::TYPE_CONFLICT);
        parts.push(format!(
            "types differ ({}): {} is used",
            each(&|a| type_text(a.export.type_).to_owned()),
            type_text(first.export.type_)
        ));
    }
    if exports.iter().any(|a| affinity(&a.export) != affinity(&first.export)) {
        reasons.push(reason::SESSION_AFFINITY_CONFLICT);
        parts.push(format!(
            "session affinities differ ({}): {} is used",
            each(&|a| affinity(&a.export).to_owned()),
            affinity(&first.export)
        ));
    }
    let conflict = (!reasons.is_empty()).then(|| ExportConflict {
        reason: reasons.join(","),
        message: format!("cluster {}'s export defines the service (the first); {}", first.cluster, parts.join("; ")),
    });
    ImportedService {
        namespace,
        name,
        type_: first.export.type_,
        ips: Vec::new(),
        ports,
        session_affinity: first.export.session_affinity.clone(),
        clusters: exports
            .iter()
            .map(|a| ImportedCluster { cluster: a.cluster.clone(), endpoints: a.export.endpoints.clone() })
            .collect(),
        conflict,
    }
}

#[cfg(test)]
mod tests;
