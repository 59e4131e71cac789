//! `slicectl diagnose`, pure: what is wrong with a cluster set, where, and how to fix it.
//!
//! Two sources of facts feed the checks. [`hub_findings`] reads only what the hub holds (the
//! [`HubView`]: SliceConfigs, MemberClusters, WorkerSlices with their statuses), so it runs
//! against any hub; what the gateways measure of each path reaches it in the WorkerSlice
//! statuses (the keys a gateway holds, handshakes unanswered and received, the largest packet
//! the path carries), so the hub names a wrong key, a blocked UDP port and a narrow path too,
//! a worker pass after they happen. [`lab_findings`] adds what can be observed on the machines themselves
//! ([`Observed`]: node agents running, gateways running with the keys they hold, a datagram sent
//! to each gateway's public endpoint arriving or not, the largest packet that passes along each
//! path between gateways); the lab collects those (`e2e::control::checks`).
//!
//! Every [`Finding`] names its check, the place (slice, cluster, node, path), what is wrong and
//! the fix. A [`Report`] fails when any finding is a [`Severity::Fail`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::IpNet;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::crd::condition;
use crate::hub_view::{HubView, table};

/// The checks, by the names findings carry.
pub mod check {
    /// Every cluster a slice names is registered (a MemberCluster).
    pub const CLUSTER_REGISTERED: &str = "cluster-registered";
    /// Every member cluster's worker sends heartbeats (MemberCluster `Healthy`).
    pub const CLUSTER_HEARTBEAT: &str = "cluster-heartbeat";
    /// Every WorkerSlice has a status from its cluster's worker.
    pub const WORKER_STATUS: &str = "worker-status";
    /// Every tunnel is up, with a recent handshake.
    pub const TUNNEL: &str = "tunnel";
    /// Every gateway replica that is up has a live tunnel to every peer cluster (issue 13).
    pub const GATEWAY_REPLICA: &str = "gateway-replica";
    /// No tunnel loses more than [`super::LOSS_WARN_PERMILLE`] of the packets it receives.
    pub const TUNNEL_LOSS: &str = "tunnel-loss";
    /// No two slices' subnets overlap.
    pub const PREFIX_OVERLAP: &str = "prefix-overlap";
    /// Every node's agent runs.
    pub const NODE_AGENT: &str = "node-agent";
    /// Every gateway runs.
    pub const GATEWAY_RUNNING: &str = "gateway-running";
    /// Every gateway holds each peer's actual public key.
    pub const GATEWAY_PEER_KEY: &str = "gateway-peer-key";
    /// A UDP datagram sent to each gateway's public endpoint arrives at the gateway.
    pub const UDP_REACHABLE: &str = "udp-reachable";
    /// The largest packet that passes between two gateways fits the tunnel's packets.
    pub const PATH_MTU: &str = "path-mtu";
    /// The CNI configuration the runtime uses on each node chains slice-cni.
    pub const CNI_CHAINED: &str = "cni-chained";
    /// Each cluster's slice-dns answers, and the cluster's resolver forwards the slice zones to it.
    pub const DNS: &str = "dns";
    /// Every member cluster's worker runs the same slicenet version.
    pub const VERSIONS: &str = "versions";
    /// No member cluster's clock is far from its hub API server's.
    pub const CLOCK_SKEW: &str = "clock-skew";
    /// Every member cluster has the optional CRDs slicenet's features use.
    pub const CRDS: &str = "crds";

    /// The checks on what is observed on the machines ([`super::lab_findings`] adds them).
    pub const MACHINE: [&str; 7] =
        [NODE_AGENT, GATEWAY_RUNNING, GATEWAY_PEER_KEY, UDP_REACHABLE, PATH_MTU, CNI_CHAINED, DNS];
}

/// A worker clock further than this (seconds) from the hub API server's is worth a warning:
/// tokens and certificates are checked against it, and the heartbeat ages are read with it.
/// The measure is to the second (the API server stamps `managedFields` to the second), so a
/// smaller bound would report rounding.
pub const CLOCK_SKEW_WARN_SECS: i64 = 5;

/// Why the CNI configuration a node's container runtime uses does not chain slice-cni, if it
/// does not: `files` are the node's CNI configuration directory's files (name, content),
/// `plugin_installed` whether the slice-cni binary is in its CNI bin directory. The runtime
/// uses the first `.conflist`/`.conf`/`.json` file by name (containerd and CRI-O both do), so
/// a chain in any later file does nothing.
#[must_use]
pub fn cni_chain_problem(files: &[(String, String)], plugin_installed: bool) -> Option<String> {
    let mut configs: Vec<&(String, String)> = files
        .iter()
        .filter(|(name, _)| [".conflist", ".conf", ".json"].iter().any(|ext| name.ends_with(ext)))
        .collect();
    configs.sort_by(|a, b| a.0.cmp(&b.0));
    let Some((name, text)) = configs.first() else {
        return Some("the node has no CNI configuration".to_owned());
    };
    let chained = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v["plugins"].as_array().is_some_and(|p| p.iter().any(|e| e["type"] == "slice-cni")),
        Err(e) => return Some(format!("{name}, the configuration the runtime uses, is not valid JSON: {e}")),
    };
    if !chained {
        return Some(format!("{name}, the configuration the runtime uses, does not chain slice-cni"));
    }
    if !plugin_installed {
        return Some(format!("{name} chains slice-cni but the slice-cni binary is not in the CNI bin directory"));
    }
    None
}

/// What to do about a slice-dns that does not answer.
const SLICE_DNS_FIX: &str =
    "kubectl -n slicenet-system get pods -l app.kubernetes.io/name=slice-dns; its log says why it does not answer";

/// A tunnel receiving more loss than this (thousandths) is worth a warning.
pub const LOSS_WARN_PERMILLE: u32 = 20;

/// Bytes WireGuard adds to a packet over IPv4: outer IPv4 (20) + UDP (8) + WireGuard data
/// header (16) + Poly1305 tag (16).
pub const WIREGUARD_OVERHEAD_V4: u32 = 60;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Degraded but working.
    Warn,
    /// Broken: the report fails.
    Fail,
}

/// One thing wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The check's name ([`check`]).
    pub check: String,
    pub severity: Severity,
    /// Where: `slice blue`, `cluster c2`, `node c2/n1`, `slice blue: c1 → c2`, …
    pub place: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl Finding {
    fn fail(check: &str, place: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            severity: Severity::Fail,
            place: place.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// The checks that ran and what they found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The names of the checks that ran (a check without findings passed).
    pub checks: Vec<String>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any finding is a failure.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Fail)
    }

    /// The findings of `check`.
    pub fn of<'a>(&'a self, check: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.check == check)
    }

    /// The report as text: the checks with their result, then every finding with its fix.
    #[must_use]
    pub fn render(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .checks
            .iter()
            .map(|c| {
                let worst = self.of(c).map(|f| f.severity).max();
                let n = self.of(c).count();
                let result = match worst {
                    None => "ok".to_owned(),
                    Some(Severity::Warn) => format!("warn ({n})"),
                    Some(Severity::Fail) => format!("FAIL ({n})"),
                };
                vec![c.clone(), result]
            })
            .collect();
        let mut out = table(&["CHECK", "RESULT"], &rows);
        if self.findings.is_empty() {
            out.push_str("\nno problems found\n");
        }
        for f in &self.findings {
            let level = match f.severity {
                Severity::Warn => "warn",
                Severity::Fail => "FAIL",
            };
            let _ = write!(out, "\n{level} {} — {}\n  problem: {}\n  fix: {}\n", f.check, f.place, f.problem, f.fix);
        }
        out
    }
}

/// Findings from the hub's objects alone.
#[must_use]
pub fn hub_findings(view: &HubView) -> Report {
    let mut findings = Vec::new();
    let registered: BTreeSet<String> = view.clusters.iter().map(ResourceExt::name_any).collect();
    for s in &view.slices {
        for c in s.spec.clusters.iter().filter(|c| !registered.contains(*c)) {
            findings.push(Finding::fail(
                check::CLUSTER_REGISTERED,
                format!("slice {}", s.name_any()),
                format!("cluster {c} is named by the slice but not registered"),
                format!("register it: slicectl join --cluster {c} --hub-kubeconfig HUB, then install the worker there"),
            ));
        }
    }
    for c in &view.clusters {
        let st = c.status.clone().unwrap_or_default();
        let healthy = condition(&st.conditions, "Healthy");
        if healthy.is_none_or(|h| h.status != "True") {
            let why = healthy.map_or_else(
                || "no heartbeat from its worker yet".to_owned(),
                |h| {
                    format!(
                        "Healthy={} ({}){}",
                        h.status,
                        h.reason,
                        if h.message.is_empty() { String::new() } else { format!(": {}", h.message) }
                    )
                },
            );
            let last = st.last_heartbeat.unwrap_or_else(|| "never".to_owned());
            findings.push(Finding::fail(
                check::CLUSTER_HEARTBEAT,
                format!("cluster {}", c.name_any()),
                format!("{why}; last heartbeat: {last}"),
                "check the worker in that cluster (kubectl -n slicenet-system get pods,events) and its hub \
                 credential (slicectl join --rotate renews it)",
            ));
        }
    }
    findings.extend(version_findings(view));
    findings.extend(agent_findings(view));
    for c in &view.clusters {
        let Some(st) = c.status.as_ref().filter(|s| !s.missing_crds.is_empty()) else { continue };
        let mcs = st.missing_crds.iter().any(|m| m.ends_with(crate::mcs::GROUP));
        let mnp = st.missing_crds.iter().any(|m| m.ends_with(crate::policy::API_GROUP));
        let off: Vec<&str> = [(mcs, "multi-cluster services"), (mnp, "MultiNetworkPolicies")]
            .iter()
            .filter_map(|(on, what)| on.then_some(*what))
            .collect();
        findings.push(Finding {
            check: check::CRDS.into(),
            severity: Severity::Warn,
            place: format!("cluster {}", c.name_any()),
            problem: format!(
                "the cluster lacks {}{}",
                st.missing_crds.join(", "),
                if off.is_empty() { String::new() } else { format!(": {} are off there", off.join(" and ")) }
            ),
            fix: format!(
                "install them in {}: slicectl install mcs-crds | kubectl apply -f - for the MCS API; the CRD of \
                 k8s-network-plumbing-wg/multi-networkpolicy for MultiNetworkPolicies",
                c.name_any()
            ),
        });
    }
    for c in &view.clusters {
        let Some(dns) = c.status.as_ref().and_then(|s| s.dns.as_ref()) else { continue };
        let Some(problem) = &dns.problem else { continue };
        findings.push(Finding::fail(
            check::DNS,
            format!("cluster {}: slice-dns at {}", c.name_any(), dns.address),
            format!("a TXT query for dns-version.{} got {problem}", crate::mcs::CLUSTERSET_ZONE),
            SLICE_DNS_FIX,
        ));
    }
    for c in &view.clusters {
        let Some(offset) = c.status.as_ref().and_then(|s| s.clock_offset_seconds) else { continue };
        if offset.abs() > CLOCK_SKEW_WARN_SECS {
            findings.push(Finding {
                check: check::CLOCK_SKEW.into(),
                severity: Severity::Warn,
                place: format!("cluster {}", c.name_any()),
                problem: format!(
                    "the worker's clock is {} s {} the hub API server's",
                    offset.abs(),
                    if offset > 0 { "ahead of" } else { "behind" }
                ),
                fix:
                    "synchronise the clocks of that cluster's nodes and the hub's (NTP: chrony or systemd-timesyncd); \
                      tokens, certificates and heartbeat ages are read against them"
                        .into(),
            });
        }
    }
    for w in &view.workers {
        let place = format!("slice {} in cluster {}", w.spec.slice, w.spec.cluster);
        let Some(st) = &w.status else {
            findings.push(Finding::fail(
                check::WORKER_STATUS,
                place,
                "no status from the cluster's worker yet",
                "check that the cluster's worker runs and can write WorkerSlice status on the hub",
            ));
            continue;
        };
        for p in &st.peers {
            let here = format!("slice {}: {} → {}", w.spec.slice, w.spec.cluster, p.cluster);
            if p.state != "Up" {
                findings.push(Finding::fail(
                    check::TUNNEL,
                    here.clone(),
                    format!(
                        "tunnel is {}{}",
                        p.state,
                        if p.reason.is_empty() { String::new() } else { format!(": {}", p.reason) }
                    ),
                    tunnel_fix(&w.spec.cluster, &p.cluster, &p.reason),
                ));
            }
            if let Some(h) = &p.health
                && h.rx_loss_permille > LOSS_WARN_PERMILLE
            {
                findings.push(Finding {
                    check: check::TUNNEL_LOSS.into(),
                    severity: Severity::Warn,
                    place: here,
                    problem: format!(
                        "{}.{} % of the packets from {} are lost on the way",
                        h.rx_loss_permille / 10,
                        h.rx_loss_permille % 10,
                        p.cluster
                    ),
                    fix: "look for a lossy link or a saturated uplink between the clusters (QoS guarantees protect a slice's share)".into(),
                });
            }
        }
    }
    findings.extend(replica_findings(view));
    findings.extend(path_findings(view));
    let subnets: Vec<(String, IpNet)> =
        view.slices.iter().filter_map(|s| Some((s.name_any(), s.spec.slice_subnet.parse().ok()?))).collect();
    for (i, (a, na)) in subnets.iter().enumerate() {
        for (b, nb) in &subnets[i + 1..] {
            if na.contains(&nb.network()) || nb.contains(&na.network()) {
                findings.push(Finding::fail(
                    check::PREFIX_OVERLAP,
                    format!("slices {a} and {b}"),
                    format!("sliceSubnet {na} overlaps {nb}"),
                    format!("give one of them a subnet of its own (a new SliceConfig: the subnet of {b} cannot change in place)"),
                ));
            }
        }
    }
    let checks = [
        check::CLUSTER_REGISTERED,
        check::CLUSTER_HEARTBEAT,
        check::VERSIONS,
        check::CLOCK_SKEW,
        check::CRDS,
        check::NODE_AGENT,
        check::CNI_CHAINED,
        check::WORKER_STATUS,
        check::TUNNEL,
        check::TUNNEL_LOSS,
        check::GATEWAY_REPLICA,
        check::GATEWAY_PEER_KEY,
        check::UDP_REACHABLE,
        check::PATH_MTU,
        check::DNS,
        check::PREFIX_OVERLAP,
    ];
    Report { checks: checks.iter().map(|c| (*c).to_owned()).collect(), findings }
}

/// The gateway replicas that are `Up` and have no live tunnel to some peer cluster (from each
/// replica's own metrics, `status.gatewayReplicas[].unreachable`): the node agents still send
/// such a replica its share of the flows to that cluster (they take a replica out only when it
/// stops answering as a whole), and those flows are lost. The fix depends on whether another
/// replica of the same cluster reaches it (this replica's path is at fault) or none does (the
/// tunnel finding of the pair says more).
fn replica_findings(view: &HubView) -> Vec<Finding> {
    let mut out = Vec::new();
    for w in &view.workers {
        let Some(st) = &w.status else { continue };
        let (slice, cluster) = (w.spec.slice.as_str(), w.spec.cluster.as_str());
        let up = |r: &&crate::crd::GatewayReplicaStatus| r.state == "Up";
        for r in st.gateway_replicas.iter().filter(up).filter(|r| !r.unreachable.is_empty()) {
            let node = r.node.as_deref().map_or_else(String::new, |n| format!(" on node {n}"));
            let reaches = r.live_tunnels.map_or_else(String::new, |live| {
                let all = usize::try_from(live).unwrap_or(usize::MAX).saturating_add(r.unreachable.len());
                format!(" (it reaches {live} of {all} peer clusters)")
            });
            let pod = format!("slicenet-gw-{slice}-{}", r.ordinal);
            // Each cluster this replica misses: reached by another Up replica of this cluster
            // (whose tunnels are known), or by none.
            let (alone, shared): (Vec<&str>, Vec<&str>) = r.unreachable.iter().map(String::as_str).partition(|c| {
                st.gateway_replicas.iter().filter(up).any(|o| {
                    o.ordinal != r.ordinal && o.live_tunnels.is_some() && !o.unreachable.iter().any(|u| u == c)
                })
            });
            let mut fix = Vec::new();
            if !alone.is_empty() {
                let from = r.node.as_deref().map_or_else(|| "its node".to_owned(), |n| format!("node {n}"));
                fix.push(format!(
                    "another replica of {cluster} reaches {0}, so this replica's way there fails: check UDP from \
                     {from} to the gateway endpoints of {0} (the node's firewall, egress rules, its uplink), then its \
                     log (kubectl -n {ns} logs {pod}); deleting the pod restarts it with the same key",
                    alone.join(", "),
                    ns = crate::names::GATEWAY_NAMESPACE,
                ));
            }
            if !shared.is_empty() {
                fix.push(format!(
                    "no replica of {cluster} reaches {0}: see the tunnel findings of {cluster} → {0} (the \
                     gateways of {0}, or UDP between the clusters)",
                    shared.join(", ")
                ));
            }
            let mut outcome = Vec::new();
            if !alone.is_empty() {
                outcome.push(format!(
                    "the nodes route {} via the other replicas meanwhile (one path fewer)",
                    alone.join(", ")
                ));
            }
            if !shared.is_empty() {
                outcome.push(format!("the flows the nodes send through it to {} are lost", shared.join(", ")));
            }
            out.push(Finding::fail(
                check::GATEWAY_REPLICA,
                format!("slice {slice} in cluster {cluster}: gateway replica {}{node}", r.ordinal),
                format!(
                    "replica {} is Up but has no live tunnel to {}{reaches}: {}",
                    r.ordinal,
                    r.unreachable.join(", "),
                    outcome.join("; ")
                ),
                fix.join("; "),
            ));
        }
    }
    out
}

/// The clusters whose worker runs another version than the most common one (ties: the
/// highest by semantic version), as warnings: mixed versions during an upgrade work, but
/// for no longer than the upgrade.
fn version_findings(view: &HubView) -> Vec<Finding> {
    let versions: Vec<(String, &str)> = view
        .clusters
        .iter()
        .filter_map(|c| Some((c.name_any(), c.status.as_ref()?.worker_version.as_deref()?)))
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, v) in &versions {
        *counts.entry(v).or_default() += 1;
    }
    let numeric = |v: &str| -> Vec<u64> { v.split(['.', '-', '+']).map(|p| p.parse().unwrap_or(0)).collect() };
    let Some(common) =
        counts.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| numeric(a.0).cmp(&numeric(b.0)))).map(|(v, _)| *v)
    else {
        return Vec::new();
    };
    versions
        .iter()
        .filter(|(_, v)| *v != common)
        .map(|(cluster, v)| Finding {
            check: check::VERSIONS.into(),
            severity: Severity::Warn,
            place: format!("cluster {cluster}"),
            problem: format!("its worker runs slicenet {v}, the other clusters {common}"),
            fix: format!(
                "finish the upgrade: install slicenet {common} (or the newer of the two everywhere) in cluster {cluster} \
                 (slicectl install prints its manifests)"
            ),
        })
        .collect()
}

/// From each cluster's `status.agents` (the node agents' Leases): agents not running, nodes
/// whose runtime does not chain slice-cni, agents on another version than their worker.
fn agent_findings(view: &HubView) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in &view.clusters {
        let Some(st) = c.status.as_ref() else { continue };
        let Some(agents) = st.agents.as_ref() else { continue };
        let cluster = c.name_any();
        for p in &agents.problems {
            let place = format!("node {cluster}/{}", p.node);
            out.push(if p.reason == "CniNotChained" {
                Finding::fail(
                    check::CNI_CHAINED,
                    place,
                    format!("{}: pods started on this node get no slice interface", p.message),
                    "the node agent's init container (slicectl cni-install) chains slice-cni after the primary CNI as \
                     00-slicenet.conflist: delete the node agent pod on that node so that it runs again, and check that \
                     no other configuration sorts before it",
                )
            } else {
                Finding::fail(
                    check::NODE_AGENT,
                    place,
                    format!("{} ({})", p.message, p.reason),
                    "kubectl -n slicenet-node get pods -o wide (the slicenet-node-agent DaemonSet's pod on that node) and \
                     its log; slice routers, routes and policies on this node are not kept while it is down",
                )
            });
        }
        if let Some(worker) = st.worker_version.as_deref() {
            let others: Vec<&str> = agents.versions.iter().map(String::as_str).filter(|v| *v != worker).collect();
            if !others.is_empty() {
                out.push(Finding {
                    check: check::VERSIONS.into(),
                    severity: Severity::Warn,
                    place: format!("cluster {cluster}: node agents"),
                    problem: format!("node agents run slicenet {}, the worker {worker}", others.join(", ")),
                    fix: "finish the rollout of the slicenet-node-agent DaemonSet (kubectl -n slicenet-node rollout status \
                          daemonset/slicenet-node-agent)"
                        .into(),
                });
            }
        }
    }
    out
}

/// The fix for a tunnel that is not up, by the worker's reason.
/// Reason prefix of a peer whose key the gateway does not hold while it holds keys no peer of
/// the spec has (the worker's `tunnels::WRONG_KEY`); the keys it holds instead follow `: `.
pub const WRONG_KEY_REASON: &str = "gateway holds another key for this peer";
/// Bytes WireGuard adds to a packet over IPv6: outer IPv6 (40) + UDP (8) + 32.
pub const WIREGUARD_OVERHEAD_V6: u32 = 80;

/// The finding of a gateway holding something else than `peer`'s key `actual`.
fn peer_key_finding(slice: &str, cluster: &str, peer: &str, actual: &str, wrong: &[&str]) -> Finding {
    Finding::fail(
        check::GATEWAY_PEER_KEY,
        format!("slice {slice}: gateway of {cluster} → {peer}"),
        format!(
            "the gateway of {cluster} has no peer with {peer}'s key {actual}{}",
            if wrong.is_empty() { String::new() } else { format!(" (it holds unknown keys: {})", wrong.join(", ")) }
        ),
        format!(
            "the gateway's configuration is stale or was changed by hand: restart the gateway pod of {cluster} (it \
             reloads the worker's configuration), and check that {peer} publishes the key its gateway uses"
        ),
    )
}

/// The finding of a path from `from` to `to` that carries packets up to `largest` bytes
/// (outer, none: not even the smallest probe) where the tunnel needs `needed`.
fn path_mtu_finding(slice: &str, from: &str, to: &str, largest: Option<u32>, needed: u32, overhead: u32) -> Finding {
    let shown = largest.map_or_else(|| "no probe packet".to_owned(), |l| format!("{l} bytes"));
    let tun = needed.saturating_sub(overhead);
    let fit = largest.map(|l| l.saturating_sub(overhead));
    Finding::fail(
        check::PATH_MTU,
        format!("slice {slice}: {from} → {to}"),
        format!(
            "the largest packet that passes is {shown}, the tunnel needs {needed} (gateway MTU {tun} + {overhead})"
        ),
        match fit {
            Some(m) if m >= 1280 => format!(
                "raise the MTU of the links between {from} and {to} to at least {needed}, or lower the gateways' MTU to {m}"
            ),
            _ => format!("find the link between {from} and {to} with the small MTU and raise it to at least {needed}"),
        },
    )
}

/// What the hub can tell of each path from the workers' tunnel statuses (what the gateways
/// measure: `slice_gateway::pathprobe`, handshakes unanswered and received): a gateway holding
/// another key than its peer's; UDP not arriving at a gateway (its peer's handshake
/// initiations go unanswered and do not arrive, or arrive and the answers do not come back);
/// a path narrower than the tunnel's packets. One finding per place, however many peers see it.
fn path_findings(view: &HubView) -> Vec<Finding> {
    let status_of = |slice: &str, cluster: &str| {
        view.workers.iter().find(|w| w.spec.slice == slice && w.spec.cluster == cluster).and_then(|w| w.status.as_ref())
    };
    let endpoint_of = |slice: &str, cluster: &str| status_of(slice, cluster).and_then(|s| s.gateway_endpoint.clone());
    let mut findings = Vec::new();
    // Place → (cluster whose edge, endpoint, what was seen).
    let mut blocked: BTreeMap<String, (String, Option<String>, Vec<String>)> = BTreeMap::new();
    for w in &view.workers {
        let (slice, cluster) = (w.spec.slice.as_str(), w.spec.cluster.as_str());
        let Some(st) = &w.status else { continue };
        for p in &st.peers {
            let spec_key = w.spec.peers.iter().find(|q| q.cluster == p.cluster).and_then(|q| q.public_key.as_deref());
            if let (Some(stray), Some(actual)) = (p.reason.strip_prefix(WRONG_KEY_REASON), spec_key) {
                let wrong: Vec<&str> =
                    stray.trim_start_matches(':').split(',').map(str::trim).filter(|k| !k.is_empty()).collect();
                findings.push(peer_key_finding(slice, cluster, &p.cluster, actual, &wrong));
                continue;
            }
            if let (Some(largest), Some(mtu)) = (p.path_mtu, p.tunnel_mtu)
                && largest < mtu
            {
                let ipv6 = endpoint_of(slice, &p.cluster).is_some_and(|e| e.starts_with('['));
                let overhead = if ipv6 { WIREGUARD_OVERHEAD_V6 } else { WIREGUARD_OVERHEAD_V4 };
                findings.push(path_mtu_finding(
                    slice,
                    cluster,
                    &p.cluster,
                    Some(largest + overhead),
                    mtu + overhead,
                    overhead,
                ));
            }
            if p.state == "Up" || !p.handshake_unanswered {
                continue;
            }
            // The other side's view of this pair; a key problem there explains it all.
            let Some(theirs) = status_of(slice, &p.cluster).and_then(|s| s.peers.iter().find(|q| q.cluster == cluster))
            else {
                continue;
            };
            if theirs.reason.starts_with(WRONG_KEY_REASON) {
                continue;
            }
            // The other side hears this one (its handshakes, or its probes keep that side's
            // tunnel up): the way there works, the way back does not.
            let (edge, seen) = if theirs.peer_initiating {
                (cluster, format!("{cluster}'s handshakes arrive at {}, whose answers do not come back", p.cluster))
            } else if theirs.state == "Up" {
                (
                    cluster,
                    format!(
                        "{} hears {cluster}, but its answers to {cluster}'s handshakes do not come back",
                        p.cluster
                    ),
                )
            } else {
                (p.cluster.as_str(), format!("{cluster}'s handshakes to {} go unanswered and do not arrive", p.cluster))
            };
            let endpoint = endpoint_of(slice, edge);
            if edge == p.cluster && endpoint.is_none() {
                // A gateway behind NAT is reached only through the mapping its own packets open:
                // handshakes to it that do not arrive say nothing of its edge (its own do).
                continue;
            }
            let place = match &endpoint {
                Some(e) => format!("slice {slice} in cluster {edge}: endpoint {e}"),
                None => format!("slice {slice} in cluster {edge}: its gateway behind NAT"),
            };
            blocked.entry(place).or_insert_with(|| (edge.to_owned(), endpoint, Vec::new())).2.push(seen);
        }
    }
    for (place, (edge, endpoint, seen)) in blocked {
        let to = endpoint.as_deref().map_or_else(|| format!("the gateway of {edge}"), |e| e.to_owned());
        findings.push(Finding::fail(
            check::UDP_REACHABLE,
            place,
            format!("UDP datagrams to {to} do not reach the gateway: {}", seen.join("; ")),
            format!(
                "open UDP to {to} on the cluster's edge: firewall, security group, NAT port forward or load balancer \
                 of cluster {edge}"
            ),
        ));
    }
    findings
}

fn tunnel_fix(cluster: &str, peer: &str, reason: &str) -> String {
    if reason.starts_with("peer has not published a key") {
        format!("the worker of {peer} has not published its gateway key: check that worker and its gateway Secret")
    } else if reason.starts_with("gateway not running") {
        format!(
            "the gateway pod of {cluster} is not running or its metrics do not answer: kubectl -n slicenet-system get pods -l app.kubernetes.io/name=slice-gateway"
        )
    } else if reason.starts_with(WRONG_KEY_REASON) {
        format!(
            "the gateway of {cluster} holds another key than {peer}'s: its configuration was changed by hand or is stale; restarting the gateway pod reloads the worker's"
        )
    } else if reason.starts_with("gateway has not loaded") {
        format!(
            "the gateway of {cluster} runs without {peer}'s current key: check its configuration (wg show) against {peer}'s published key; restarting the gateway pod reloads it"
        )
    } else if reason.starts_with("peer silent") {
        format!(
            "{cluster}'s gateway hears nothing from {peer}'s, not even its probes: the link between the clusters is cut, \
             UDP to {peer}'s gateway endpoint is blocked on the way, or {peer}'s gateway stopped (check its pod and the \
             firewalls between the clusters)"
        )
    } else {
        format!(
            "handshakes between {cluster} and {peer} do not complete: check that UDP to each gateway's public endpoint \
             passes the clusters' firewalls, NAT and load balancers, and that each gateway holds the other's key"
        )
    }
}

/// What can be seen on the machines (the lab collects it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub agents: Vec<AgentSeen>,
    pub gateways: Vec<GatewaySeen>,
    pub probes: Vec<UdpProbe>,
    pub paths: Vec<PathMtu>,
    /// Each cluster's DNS, where it runs (clusters without multi-cluster services run none).
    #[serde(default)]
    pub dns: Vec<DnsSeen>,
}

/// One node's agent, and the node's CNI chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSeen {
    pub cluster: String,
    pub node: String,
    pub running: bool,
    /// Why the node's CNI configuration does not chain slice-cni ([`cni_chain_problem`]);
    /// `None` when it does or when the cluster uses Multus (no chain then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_problem: Option<String>,
}

/// One DNS server of a cluster, asked for the zone's `dns-version` record (TXT, which the MCS
/// DNS specification has every implementation serve).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSeen {
    pub cluster: String,
    /// `slice-dns` itself, or the resolver of a node (which must forward the zone to it).
    pub server: DnsServer,
    /// The address asked.
    pub address: String,
    /// What went wrong: no answer, the answer's response code, or an answer without the
    /// record; `None` when it answered with it.
    pub problem: Option<String>,
}

/// Which DNS server a [`DnsSeen`] asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DnsServer {
    SliceDns,
    /// The cluster's resolver as a pod on this node reaches it.
    NodeResolver {
        node: String,
    },
}

/// One slice's gateway in one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewaySeen {
    pub slice: String,
    pub cluster: String,
    pub running: bool,
    /// Its interface public key (base64), when it answers.
    pub public_key: Option<String>,
    /// The public keys of the peers it is configured with.
    pub peer_keys: Vec<String>,
    /// Its TUN device's MTU.
    pub mtu: Option<u32>,
}

/// A datagram sent to a gateway's public endpoint from outside the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpProbe {
    pub slice: String,
    pub cluster: String,
    pub endpoint: String,
    /// Whether the gateway counted it.
    pub arrived: bool,
}

/// The largest packet that passes from one gateway towards another's public address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathMtu {
    pub slice: String,
    pub from: String,
    pub to: String,
    /// The largest IPv4 packet (bytes) that got through, none if not even the smallest tried.
    pub largest: Option<u32>,
    /// What the tunnel needs: the gateway's MTU plus [`WIREGUARD_OVERHEAD_V4`].
    pub needed: u32,
}

/// [`hub_findings`] plus the checks on what was observed.
#[must_use]
pub fn lab_findings(view: &HubView, seen: &Observed) -> Report {
    let mut report = hub_findings(view);
    // What the lab observes on the machines now replaces what the workers reported a pass ago.
    let observed = [check::GATEWAY_PEER_KEY, check::UDP_REACHABLE, check::PATH_MTU, check::DNS];
    report.findings.retain(|f| !observed.contains(&f.check.as_str()));
    let f = &mut report.findings;
    for a in seen.agents.iter().filter(|a| !a.running) {
        f.push(Finding::fail(
            check::NODE_AGENT,
            format!("node {}/{}", a.cluster, a.node),
            "the node agent is not running: slice routers, routes and policies on this node are not kept",
            "start it again (on Kubernetes: kubectl -n slicenet-system delete pod of the node agent DaemonSet on that node; \
             its logs say why it stopped)",
        ));
    }
    for g in seen.gateways.iter().filter(|g| !g.running) {
        f.push(Finding::fail(
            check::GATEWAY_RUNNING,
            format!("slice {} in cluster {}", g.slice, g.cluster),
            "the gateway is not running",
            "kubectl -n slicenet-system describe pod -l app.kubernetes.io/name=slice-gateway; its log says why",
        ));
    }
    let keys: BTreeMap<(&str, &str), &str> = seen
        .gateways
        .iter()
        .filter_map(|g| Some(((g.slice.as_str(), g.cluster.as_str()), g.public_key.as_deref()?)))
        .collect();
    for w in &view.workers {
        let Some(own) =
            seen.gateways.iter().find(|g| g.slice == w.spec.slice && g.cluster == w.spec.cluster && g.running)
        else {
            continue;
        };
        for peer in &w.spec.peers {
            let Some(actual) = keys.get(&(w.spec.slice.as_str(), peer.cluster.as_str())) else { continue };
            if !own.peer_keys.iter().any(|k| k == actual) {
                let wrong: Vec<&str> =
                    own.peer_keys.iter().map(String::as_str).filter(|k| !keys.values().any(|v| v == k)).collect();
                f.push(peer_key_finding(&w.spec.slice, &w.spec.cluster, &peer.cluster, actual, &wrong));
            }
        }
    }
    for p in seen.probes.iter().filter(|p| !p.arrived) {
        f.push(Finding::fail(
            check::UDP_REACHABLE,
            format!("slice {} in cluster {}: endpoint {}", p.slice, p.cluster, p.endpoint),
            format!("a UDP datagram sent to {} did not reach the gateway", p.endpoint),
            format!(
                "open UDP to {} on the cluster's edge: firewall, security group, NAT port forward or load balancer \
                 of cluster {}",
                p.endpoint, p.cluster
            ),
        ));
    }
    for p in &seen.paths {
        if p.largest.is_none_or(|l| l < p.needed) {
            f.push(path_mtu_finding(&p.slice, &p.from, &p.to, p.largest, p.needed, WIREGUARD_OVERHEAD_V4));
        }
    }
    for a in &seen.agents {
        if let Some(problem) = &a.cni_problem {
            f.push(Finding::fail(
                check::CNI_CHAINED,
                format!("node {}/{}", a.cluster, a.node),
                format!("{problem}: pods started on this node get no slice interface"),
                "the node agent's init container (slicectl cni-install) chains slice-cni after the primary CNI as \
                 00-slicenet.conflist: delete the node agent pod on that node so that it runs again, and check that \
                 no other configuration sorts before it",
            ));
        }
    }
    for d in &seen.dns {
        let Some(problem) = &d.problem else { continue };
        let (place, fix) = match &d.server {
            DnsServer::SliceDns => {
                (format!("cluster {}: slice-dns at {}", d.cluster, d.address), SLICE_DNS_FIX.to_owned())
            }
            DnsServer::NodeResolver { node } => (
                format!("cluster {}: the resolver of node {node} at {}", d.cluster, d.address),
                "the worker adds a slicenet stanza for clusterset.local and slice.local to kube-system/coredns: check \
                 that it is there and that CoreDNS reloaded it (its reload plugin), and that slice-dns answers"
                    .to_owned(),
            ),
        };
        f.push(Finding::fail(
            check::DNS,
            place,
            format!("a TXT query for dns-version.{} got {problem}", crate::mcs::CLUSTERSET_ZONE),
            fix,
        ));
    }
    let known: BTreeSet<String> = report.checks.iter().cloned().collect();
    report.checks.extend(check::MACHINE.iter().filter(|c| !known.contains(**c)).map(|c| (*c).to_owned()));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub_view::tests::view;

    fn names(r: &Report) -> Vec<(String, String)> {
        r.findings.iter().map(|f| (f.check.clone(), f.place.clone())).collect()
    }

    #[test]
    fn the_hub_view_yields_findings_with_places_and_fixes() {
        let r = hub_findings(&view());
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(
            names(&r),
            [
                s("cluster-registered", "slice blue"),
                s("cluster-heartbeat", "cluster c2"),
                s("tunnel", "slice blue: c1 → c2"),
                s("tunnel-loss", "slice blue: c1 → c3"),
                s("worker-status", "slice blue in cluster c2"),
            ]
        );
        assert!(r.failed());
        let tunnel = r.of(check::TUNNEL).next().unwrap();
        assert_eq!(tunnel.problem, "tunnel is Down: no handshake for 180 s");
        assert!(tunnel.fix.contains("UDP to each gateway's public endpoint"), "{}", tunnel.fix);
        // A peer the gateway's probes no longer hear: a cut link or a stopped gateway.
        let silent = tunnel_fix("c1", "c2", "peer silent: no packet for three probe intervals");
        assert!(silent.starts_with("c1's gateway hears nothing from c2's"), "{silent}");
        let loss = r.of(check::TUNNEL_LOSS).next().unwrap();
        assert_eq!(loss.severity, Severity::Warn);
        assert!(loss.problem.starts_with("2.5 %"), "{}", loss.problem);
        let text = r.render();
        assert!(text.contains("tunnel              FAIL (1)"), "{text}");
        assert!(text.contains("prefix-overlap      ok"), "{text}");
        assert!(text.contains("\nFAIL cluster-heartbeat — cluster c2\n  problem: Healthy=False (Heartbeat); last heartbeat: 2026-11-23T20:00:00Z\n  fix: "), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["findings"][0]["severity"], "fail");
        assert_eq!(hub_findings(&HubView::default()).findings, []);
        assert!(!hub_findings(&HubView::default()).failed());
    }

    /// Issue 13: an Up replica without a live tunnel to a peer cluster is a failure at the
    /// replica, whose fix says whether the replica's own way fails (another replica of its
    /// cluster reaches that peer) or every replica's does; a replica reaching everything, a
    /// Pending one and one whose tunnels are unknown are not.
    #[test]
    fn an_up_replica_without_a_live_tunnel_to_a_cluster_is_named() {
        let v = crate::hub_view::tests::with_replicas();
        let r = hub_findings(&v);
        let found: Vec<&Finding> = r.of(check::GATEWAY_REPLICA).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        let f = found[0];
        assert_eq!(f.severity, Severity::Fail);
        assert_eq!(f.place, "slice blue in cluster c1: gateway replica 1 on node n2");
        assert_eq!(
            f.problem,
            "replica 1 is Up but has no live tunnel to c3 (it reaches 1 of 2 peer clusters): the nodes route c3 \
             via the other replicas meanwhile (one path fewer)"
        );
        assert!(f.fix.starts_with("another replica of c1 reaches c3, so this replica's way there fails"), "{}", f.fix);
        assert!(f.fix.contains("check UDP from node n2 to the gateway endpoints of c3"), "{}", f.fix);
        assert!(f.fix.contains("kubectl -n slicenet-gateway logs slicenet-gw-blue-1"), "{}", f.fix);
        assert!(!f.fix.contains("  "), "{}", f.fix);
        assert!(r.checks.iter().any(|c| c == check::GATEWAY_REPLICA));
        assert!(r.render().contains("gateway-replica     FAIL (1)"), "{}", r.render());
        // Replica 0 misses c3 too: no replica of c1 reaches it.
        let mut none = v.clone();
        let replicas = &mut none.workers[0].status.as_mut().unwrap().gateway_replicas;
        replicas[0].live_tunnels = Some(1);
        replicas[0].unreachable = vec!["c3".into()];
        let r = hub_findings(&none);
        let fixes: Vec<&str> = r.of(check::GATEWAY_REPLICA).map(|f| f.fix.as_str()).collect();
        assert_eq!(fixes.len(), 2);
        assert!(
            fixes.iter().all(|f| f.starts_with("no replica of c1 reaches c3: see the tunnel findings")),
            "{fixes:?}"
        );
        assert!(
            r.of(check::GATEWAY_REPLICA)
                .all(|f| f.problem.ends_with("the flows the nodes send through it to c3 are lost")),
            "{}",
            r.render()
        );
        // Down replicas say why in the status; their tunnels are not this check's.
        let mut down = v;
        down.workers[0].status.as_mut().unwrap().gateway_replicas[1].state = "Down".into();
        assert_eq!(hub_findings(&down).of(check::GATEWAY_REPLICA).count(), 0);
    }

    /// Three clusters' WorkerSlices of slice blue, each with `peers` (its tunnel statuses) and
    /// a public endpoint except c3 (behind NAT).
    fn three(peers: [serde_json::Value; 3]) -> HubView {
        let keys = ["K1", "K2", "K3"];
        let names = ["c1", "c2", "c3"];
        let workers = (0..3)
            .map(|i| {
                let spec_peers: Vec<serde_json::Value> = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| serde_json::json!({"cluster": names[j], "prefix": "10.80.0.0/20", "publicKey": keys[j]}))
                    .collect();
                let mut status = serde_json::json!({"peers": peers[i]});
                if i < 2 {
                    status["gatewayEndpoint"] = format!("198.19.0.{}:31820", 11 + i).into();
                }
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
                    "metadata": {"name": "blue", "namespace": format!("slicenet-cluster-{}", names[i])},
                    "spec": {"slice": "blue", "cluster": names[i], "sliceSubnet": "10.80.0.0/16",
                             "clusterPrefix": "10.80.0.0/20", "nodePrefixLength": 26, "vni": 4097, "peers": spec_peers},
                    "status": status
                }))
                .unwrap()
            })
            .collect();
        HubView { workers, ..HubView::default() }
    }

    fn path_names(r: &Report) -> Vec<(String, String)> {
        r.findings
            .iter()
            .filter(|f| [check::GATEWAY_PEER_KEY, check::UDP_REACHABLE, check::PATH_MTU].contains(&f.check.as_str()))
            .map(|f| (f.check.clone(), f.place.clone()))
            .collect()
    }

    #[test]
    fn the_hub_names_blocked_ports_wrong_keys_and_narrow_paths_from_the_statuses() {
        use serde_json::json;
        let up = |c: &str| json!({"cluster": c, "state": "Up", "tunnelMtu": 1380, "pathMtu": 1380});
        let healthy = three([json!([up("c2"), up("c3")]), json!([up("c1"), up("c3")]), json!([up("c1"), up("c2")])]);
        assert_eq!(path_names(&hub_findings(&healthy)), []);
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());

        // UDP into c2 dropped at its edge: c1's and c3's handshakes to c2 go unanswered and do
        // not arrive; c2's arrive at c1, whose answers do not come back. One place: c2's endpoint.
        let silent = |c: &str, unanswered: bool, initiating: bool| {
            json!({"cluster": c, "state": "Down", "reason": "peer silent: no packet for three probe intervals",
                   "handshakeUnanswered": unanswered, "peerInitiating": initiating})
        };
        let v = three([
            json!([silent("c2", true, true), up("c3")]),
            json!([silent("c1", true, false), silent("c3", true, false)]),
            json!([up("c1"), silent("c2", true, false)]),
        ]);
        let r = hub_findings(&v);
        assert_eq!(path_names(&r), [s("udp-reachable", "slice blue in cluster c2: endpoint 198.19.0.12:31820")]);
        let f = r.of(check::UDP_REACHABLE).next().unwrap();
        assert!(f.problem.contains("c1's handshakes to c2 go unanswered and do not arrive"), "{}", f.problem);
        assert!(f.problem.contains("c2's handshakes arrive at c1, whose answers do not come back"), "{}", f.problem);
        assert!(f.problem.contains("c3's handshakes to c2"), "{}", f.problem);
        assert!(f.fix.contains("cluster c2"), "{}", f.fix);
        // Only the way into c2 is blocked: c1 and c3 still hear c2's probes, their tunnels to
        // it stay up, and c2's handshakes go unanswered: still c2's edge.
        let v = three([
            json!([up("c2"), up("c3")]),
            json!([silent("c1", true, false), silent("c3", true, false)]),
            json!([up("c1"), up("c2")]),
        ]);
        let r = hub_findings(&v);
        assert_eq!(path_names(&r), [s("udp-reachable", "slice blue in cluster c2: endpoint 198.19.0.12:31820")]);
        let f = r.of(check::UDP_REACHABLE).next().unwrap();
        assert!(
            f.problem.contains("c3 hears c2, but its answers to c2's handshakes do not come back"),
            "{}",
            f.problem
        );

        // c1's gateway holds a made-up key instead of c2's: the key is named, and the handshakes
        // that fail because of it are not taken for a blocked port.
        let wrong =
            json!({"cluster": "c2", "state": "Down", "reason": "gateway holds another key for this peer: BOGUS"});
        let v = three([
            json!([wrong, up("c3")]),
            json!([silent("c1", true, false), up("c3")]),
            json!([up("c1"), up("c2")]),
        ]);
        let r = hub_findings(&v);
        assert_eq!(path_names(&r), [s("gateway-peer-key", "slice blue: gateway of c1 → c2")]);
        let f = r.of(check::GATEWAY_PEER_KEY).next().unwrap();
        assert!(f.problem.contains("c2's key K2") && f.problem.contains("unknown keys: BOGUS"), "{}", f.problem);

        // A narrow link at c2: the paths through it carry 1240-byte packets inside, 1300 outside.
        let narrow = |c: &str| json!({"cluster": c, "state": "Up", "tunnelMtu": 1380, "pathMtu": 1240});
        let v = three([json!([narrow("c2"), up("c3")]), json!([narrow("c1"), up("c3")]), json!([up("c1"), up("c2")])]);
        let r = hub_findings(&v);
        assert_eq!(path_names(&r), [s("path-mtu", "slice blue: c1 → c2"), s("path-mtu", "slice blue: c2 → c1")]);
        let f = r.of(check::PATH_MTU).next().unwrap();
        assert_eq!(
            f.problem,
            "the largest packet that passes is 1300 bytes, the tunnel needs 1440 (gateway MTU 1380 + 60)"
        );
        // Below 1280 inside, IPv6 could not cross: the link must be fixed, not the MTU lowered.
        assert!(f.fix.contains("raise it to at least 1440"), "{}", f.fix);

        // The lab's own observations replace these (they are current; the statuses a pass old).
        let lab = lab_findings(&v, &Observed::default());
        assert_eq!(path_names(&lab), []);
    }

    #[test]
    fn overlapping_subnets_are_found() {
        let mut v = view();
        let mut red = v.slices[0].clone();
        red.metadata.name = Some("red".into());
        red.spec.slice_subnet = "10.80.128.0/17".into();
        v.slices.push(red);
        let r = hub_findings(&v);
        let o: Vec<&Finding> = r.of(check::PREFIX_OVERLAP).collect();
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].place, "slices blue and red");
        assert_eq!(o[0].problem, "sliceSubnet 10.80.0.0/16 overlaps 10.80.128.0/17");
    }

    #[test]
    fn a_slice_dns_the_worker_gets_no_answer_from_is_named() {
        let mut v = view();
        let dns = |problem: Option<&str>| crate::crd::DnsStatus {
            address: "10.96.0.53:53".into(),
            problem: problem.map(Into::into),
        };
        v.clusters[0].status.get_or_insert_with(Default::default).dns = Some(dns(None));
        assert_eq!(hub_findings(&v).of(check::DNS).count(), 0, "it answered");
        v.clusters[0].status.get_or_insert_with(Default::default).dns = Some(dns(Some("no answer within 4 s")));
        let r = hub_findings(&v);
        let f: Vec<&Finding> = r.of(check::DNS).collect();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].place, "cluster c1: slice-dns at 10.96.0.53:53");
        assert_eq!(f[0].problem, "a TXT query for dns-version.clusterset.local got no answer within 4 s");
        assert_eq!(lab_findings(&v, &Observed::default()).of(check::DNS).count(), 0, "the lab asks itself");
    }

    #[test]
    fn mixed_versions_and_a_skewed_clock_are_warnings() {
        let mut v = view();
        let set = |v: &mut HubView, i: usize, version: &str, offset: Option<i64>| {
            let st = v.clusters[i].status.get_or_insert_with(Default::default);
            st.worker_version = Some(version.into());
            st.clock_offset_seconds = offset;
        };
        for i in 0..v.clusters.len() {
            set(&mut v, i, "0.4.0", Some(0));
        }
        let base = hub_findings(&v);
        assert_eq!((base.of(check::VERSIONS).count(), base.of(check::CLOCK_SKEW).count()), (0, 0));
        assert!(base.checks.iter().any(|c| c == check::VERSIONS) && base.checks.iter().any(|c| c == check::CLOCK_SKEW));
        let last = v.clusters.len() - 1;
        set(&mut v, last, "0.3.9", Some(-40));
        set(&mut v, 0, "0.4.0", Some(CLOCK_SKEW_WARN_SECS));
        let r = hub_findings(&v);
        let versions: Vec<&Finding> = r.of(check::VERSIONS).collect();
        assert_eq!(versions.len(), 1, "{:?}", r.findings);
        let name = v.clusters[last].name_any();
        assert_eq!(versions[0].place, format!("cluster {name}"));
        assert_eq!(versions[0].problem, "its worker runs slicenet 0.3.9, the other clusters 0.4.0");
        assert_eq!(versions[0].severity, Severity::Warn);
        let skew: Vec<&Finding> = r.of(check::CLOCK_SKEW).collect();
        assert_eq!(skew.len(), 1, "at the bound is not skewed: {:?}", r.findings);
        assert_eq!(skew[0].problem, "the worker's clock is 40 s behind the hub API server's");
        // One cluster each at two versions: the newer is the reference.
        let mut two = view();
        two.clusters.truncate(2);
        set(&mut two, 0, "0.10.0", None);
        set(&mut two, 1, "0.9.1", None);
        two.clusters[0].status.get_or_insert_with(Default::default).missing_crds =
            vec!["serviceexports.multicluster.x-k8s.io".into(), "multi-networkpolicies.k8s.cni.cncf.io".into()];
        let r = hub_findings(&two);
        let crds: Vec<&Finding> = r.of(check::CRDS).collect();
        assert_eq!(crds.len(), 1);
        assert_eq!(
            crds[0].problem,
            "the cluster lacks serviceexports.multicluster.x-k8s.io, multi-networkpolicies.k8s.cni.cncf.io: \
             multi-cluster services and MultiNetworkPolicies are off there"
        );
        assert_eq!(
            r.of(check::VERSIONS).map(|f| f.place.clone()).collect::<Vec<_>>(),
            [format!("cluster {}", two.clusters[1].name_any())]
        );
    }

    #[test]
    fn agents_reported_by_a_worker_are_checked_from_the_hub() {
        let mut v = view();
        let st = v.clusters[0].status.get_or_insert_with(Default::default);
        st.worker_version = Some("0.4.0".into());
        st.agents = Some(crate::crd::AgentsStatus {
            nodes: 3,
            ready: 1,
            versions: vec!["0.3.9".into()],
            problems: vec![
                crate::crd::AgentProblem {
                    node: "n2".into(),
                    reason: "LeaseExpired".into(),
                    message: "its node agent last renewed its Lease at …".into(),
                },
                crate::crd::AgentProblem {
                    node: "n3".into(),
                    reason: "CniNotChained".into(),
                    message: "05-x.conflist, the configuration the runtime uses, does not chain slice-cni".into(),
                },
            ],
        });
        let name = v.clusters[0].name_any();
        let r = hub_findings(&v);
        assert_eq!(r.of(check::NODE_AGENT).map(|f| f.place.clone()).collect::<Vec<_>>(), [format!("node {name}/n2")]);
        let cni: Vec<&Finding> = r.of(check::CNI_CHAINED).collect();
        assert_eq!(cni.len(), 1);
        assert!(cni[0].problem.starts_with("05-x.conflist"), "{}", cni[0].problem);
        let versions: Vec<&Finding> = r.of(check::VERSIONS).collect();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0].problem, "node agents run slicenet 0.3.9, the worker 0.4.0");
        // The lab adds its machine checks once each.
        let (lv, seen) = healthy_lab();
        let checks = lab_findings(&lv, &seen).checks;
        let unique: BTreeSet<&String> = checks.iter().collect();
        assert_eq!(unique.len(), checks.len(), "{checks:?}");
    }

    #[test]
    fn the_cni_chain_is_read_from_the_first_configuration() {
        let f = |files: &[(&str, &str)]| -> Vec<(String, String)> {
            files.iter().map(|(n, t)| ((*n).to_owned(), (*t).to_owned())).collect()
        };
        let chained =
            r#"{"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}, {"type": "slice-cni"}]}"#;
        let plain = r#"{"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}]}"#;
        assert_eq!(
            cni_chain_problem(&f(&[("00-slicenet.conflist", chained), ("10-bridge.conflist", plain)]), true),
            None
        );
        assert_eq!(
            cni_chain_problem(&f(&[("05-other.conflist", plain), ("10-slicenet.conflist", chained)]), true).as_deref(),
            Some("05-other.conflist, the configuration the runtime uses, does not chain slice-cni")
        );
        assert!(cni_chain_problem(&f(&[("00-a.conflist", "{")]), true).unwrap().contains("is not valid JSON"));
        assert_eq!(
            cni_chain_problem(&f(&[("README", "x")]), true).as_deref(),
            Some("the node has no CNI configuration")
        );
        assert!(cni_chain_problem(&f(&[("00-slicenet.conflist", chained)]), false).unwrap().contains("binary is not"));
    }

    fn healthy_lab() -> (HubView, Observed) {
        let mut v = view();
        v.workers.truncate(1);
        v.workers[0].spec.peers = serde_json::from_value(serde_json::json!([
            {"cluster": "c2", "prefix": "10.80.16.0/20"}, {"cluster": "c3", "prefix": "10.80.32.0/20"}
        ]))
        .unwrap();
        let gw = |c: &str, key: &str, peers: &[&str]| GatewaySeen {
            slice: "blue".into(),
            cluster: c.into(),
            running: true,
            public_key: Some(key.into()),
            peer_keys: peers.iter().map(|p| (*p).to_owned()).collect(),
            mtu: Some(1420),
        };
        let seen = Observed {
            agents: vec![AgentSeen { cluster: "c1".into(), node: "n1".into(), running: true, cni_problem: None }],
            gateways: vec![gw("c1", "K1", &["K2", "K3"]), gw("c2", "K2", &["K1", "K3"]), gw("c3", "K3", &["K1", "K2"])],
            probes: vec![UdpProbe {
                slice: "blue".into(),
                cluster: "c2".into(),
                endpoint: "198.19.0.11:51820".into(),
                arrived: true,
            }],
            paths: vec![PathMtu {
                slice: "blue".into(),
                from: "c1".into(),
                to: "c2".into(),
                largest: Some(1500),
                needed: 1480,
            }],
            dns: vec![
                DnsSeen {
                    cluster: "c1".into(),
                    server: DnsServer::SliceDns,
                    address: "10.244.1.3:53".into(),
                    problem: None,
                },
                DnsSeen {
                    cluster: "c1".into(),
                    server: DnsServer::NodeResolver { node: "n1".into() },
                    address: "169.254.20.10:53".into(),
                    problem: None,
                },
            ],
        };
        (v, seen)
    }

    #[test]
    fn observed_faults_are_named() {
        let (v, seen) = healthy_lab();
        let base = lab_findings(&v, &seen);
        for c in check::MACHINE {
            assert_eq!(base.of(c).count(), 0, "{c}: {:?}", base.findings);
            assert!(base.checks.iter().any(|x| x == c));
        }

        let mut s = seen.clone();
        s.agents[0].running = false;
        s.gateways[2].running = false;
        s.gateways[0].peer_keys = vec!["BOGUS".into(), "K3".into()];
        s.probes[0].arrived = false;
        s.paths[0].largest = Some(1400);
        s.agents[0].cni_problem =
            Some("05-other.conflist, the configuration the runtime uses, does not chain slice-cni".into());
        s.dns[1].problem = Some("REFUSED".into());
        let r = lab_findings(&v, &s);
        let one = |c: &str| {
            let v: Vec<&Finding> = r.of(c).collect();
            assert_eq!(v.len(), 1, "{c}: {:?}", r.findings);
            v[0].clone()
        };
        assert_eq!(one(check::NODE_AGENT).place, "node c1/n1");
        assert_eq!(one(check::GATEWAY_RUNNING).place, "slice blue in cluster c3");
        let key = one(check::GATEWAY_PEER_KEY);
        assert_eq!(key.place, "slice blue: gateway of c1 → c2");
        assert_eq!(key.problem, "the gateway of c1 has no peer with c2's key K2 (it holds unknown keys: BOGUS)");
        assert!(one(check::UDP_REACHABLE).fix.contains("UDP to 198.19.0.11:51820"));
        let mtu = one(check::PATH_MTU);
        assert_eq!(
            mtu.problem,
            "the largest packet that passes is 1400 bytes, the tunnel needs 1480 (gateway MTU 1420 + 60)"
        );
        assert!(mtu.fix.contains("lower the gateways' MTU to 1340"), "{}", mtu.fix);
        assert_eq!(one(check::CNI_CHAINED).place, "node c1/n1");
        let dns = one(check::DNS);
        assert_eq!(dns.place, "cluster c1: the resolver of node n1 at 169.254.20.10:53");
        assert_eq!(dns.problem, "a TXT query for dns-version.clusterset.local got REFUSED");
        let mut none = seen;
        none.paths[0].largest = None;
        assert!(lab_findings(&v, &none).of(check::PATH_MTU).next().unwrap().problem.contains("no probe packet"));
    }
}
