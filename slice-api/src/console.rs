//! The web console's data, pure: the hub's view ([`HubView`]) turned into the one JSON document
//! the console's page renders ([`Model`]): clusters with their gateways and nodes, slices with
//! their members, every tunnel (one per direction, as each side's worker reports it) with state,
//! reason, RTT and traffic, and the problems (`diagnose`'s hub findings, each with its fix).
//! The hub controller and `slicectl lab console` serve it (`slice_kube::console`).

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::crd::condition;
use crate::diagnose::{Finding, hub_findings};
use crate::hub_view::{HubView, tunnel_rtt};

/// Everything the console shows, as of one view of the hub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub clusters: Vec<ClusterCard>,
    pub slices: Vec<SliceCard>,
    pub tunnels: Vec<TunnelCard>,
    pub problems: Vec<Finding>,
}

/// One member cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCard {
    pub name: String,
    /// Its `Healthy` condition is `True`.
    pub healthy: bool,
    /// Why not, when not.
    pub reason: String,
    pub last_heartbeat: Option<String>,
    pub gateway_addresses: Vec<String>,
    pub pod_cidrs: Vec<String>,
    pub uplink_kbps: Option<u64>,
    /// The slicenet version its worker runs, and its clock against the hub API server's
    /// (seconds, positive: ahead), as its heartbeat reports them.
    pub worker_version: Option<String>,
    pub clock_offset_seconds: Option<i64>,
    /// The node agents from their Leases (none while no agent reports one).
    pub agents: Option<crate::crd::AgentsStatus>,
    /// One per slice the cluster is in.
    pub gateways: Vec<GatewayCard>,
}

/// A slice's gateway in a cluster, and the cluster's share of the slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayCard {
    pub slice: String,
    pub cluster_prefix: String,
    pub endpoint: Option<String>,
    pub public_key: Option<String>,
    /// The WorkerSlice's `Ready` condition is `True`.
    pub ready: bool,
    pub reason: String,
    pub connected_pods: u32,
    /// `node=prefix` for each node with a share.
    pub nodes: Vec<String>,
    /// Exported services (`namespace/name`).
    pub exports: Vec<String>,
    /// The MultiNetworkPolicies of the slice in this cluster: the `PoliciesAccepted`
    /// condition's message (how many compile, or which were refused and why); empty when the
    /// worker has not reported one.
    pub policies: String,
    /// `PoliciesAccepted` is not `False`.
    pub policies_ok: bool,
}

/// One slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceCard {
    pub name: String,
    pub subnet: String,
    pub vni: Option<u32>,
    pub ready: bool,
    pub reason: String,
    pub clusters: Vec<String>,
    /// `namespace` or `namespace (c1, c2)` when limited to some clusters.
    pub namespaces: Vec<String>,
    /// `guaranteed/ceiling kbit/s, priority, DSCP`, if the slice has a profile.
    pub qos: Option<String>,
    /// `namespace/name ip` of each ClusterSetIP service.
    pub services: Vec<String>,
    pub connected_pods: u32,
}

/// One direction of a tunnel, as `from`'s worker reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelCard {
    pub slice: String,
    pub from: String,
    pub to: String,
    /// `Up`, `Down`, `Pending`, or `Unknown` when `from` has not reported.
    pub state: String,
    pub reason: String,
    pub rtt_millis: Option<u32>,
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    /// Throughput each way (bits per second) as the gateway last measured it.
    pub rx_bits_per_second: Option<u64>,
    pub tx_bits_per_second: Option<u64>,
    pub rx_loss_permille: Option<u32>,
    pub last_handshake: Option<String>,
}

fn condition_state(conditions: &[crate::crd::Condition], type_: &str) -> (bool, String) {
    match condition(conditions, type_) {
        Some(c) if c.status == "True" => (true, String::new()),
        Some(c) if c.message.is_empty() => (false, c.reason.clone()),
        Some(c) => (false, format!("{}: {}", c.reason, c.message)),
        None => (false, format!("no {type_} condition yet")),
    }
}

impl Model {
    /// The console's document for `view` (sorted as [`HubView::sorted`] sorts).
    #[must_use]
    pub fn from_view(view: &HubView) -> Self {
        let mut gateways: BTreeMap<String, Vec<GatewayCard>> = BTreeMap::new();
        let mut tunnels = Vec::new();
        for w in &view.workers {
            let st = w.status.clone().unwrap_or_default();
            let (ready, reason) = if w.status.is_some() {
                condition_state(&st.conditions, "Ready")
            } else {
                (false, "no status from the cluster's worker yet".to_owned())
            };
            gateways.entry(w.spec.cluster.clone()).or_default().push(GatewayCard {
                slice: w.spec.slice.clone(),
                cluster_prefix: w.spec.cluster_prefix.clone(),
                endpoint: st.gateway_endpoint.clone(),
                public_key: st.gateway_public_key.clone(),
                ready,
                reason,
                connected_pods: st.connected_pods,
                nodes: st.nodes.iter().map(|n| format!("{}={}", n.node, n.prefix)).collect(),
                exports: st.exports.iter().map(|e| format!("{}/{}", e.namespace, e.name)).collect(),
                policies: condition(&st.conditions, "PoliciesAccepted").map(|c| c.message.clone()).unwrap_or_default(),
                policies_ok: condition(&st.conditions, "PoliciesAccepted").is_none_or(|c| c.status != "False"),
            });
            for peer in &w.spec.peers {
                let reported = st.peers.iter().find(|p| p.cluster == peer.cluster);
                let health = reported.and_then(|p| p.health.as_ref());
                tunnels.push(TunnelCard {
                    slice: w.spec.slice.clone(),
                    from: w.spec.cluster.clone(),
                    to: peer.cluster.clone(),
                    state: reported.map_or_else(|| "Unknown".to_owned(), |p| p.state.clone()),
                    reason: reported.map_or_else(|| "not reported yet".to_owned(), |p| p.reason.clone()),
                    rtt_millis: tunnel_rtt(view, &w.spec.slice, &w.spec.cluster, &peer.cluster),
                    rx_bytes: health.map(|h| h.rx_bytes),
                    tx_bytes: health.map(|h| h.tx_bytes),
                    rx_bits_per_second: health.and_then(|h| h.rx_bits_per_second),
                    tx_bits_per_second: health.and_then(|h| h.tx_bits_per_second),
                    rx_loss_permille: health.map(|h| h.rx_loss_permille),
                    last_handshake: reported.and_then(|p| p.last_handshake.clone()),
                });
            }
        }
        let clusters = view
            .clusters
            .iter()
            .map(|c| {
                let st = c.status.clone().unwrap_or_default();
                let (healthy, reason) = condition_state(&st.conditions, "Healthy");
                ClusterCard {
                    name: c.name_any(),
                    healthy,
                    reason,
                    last_heartbeat: st.last_heartbeat,
                    gateway_addresses: st.gateway_addresses,
                    pod_cidrs: c.spec.pod_cidrs.clone(),
                    uplink_kbps: c.spec.uplink_kbps,
                    worker_version: st.worker_version,
                    agents: st.agents,
                    clock_offset_seconds: st.clock_offset_seconds,
                    gateways: gateways.remove(&c.name_any()).unwrap_or_default(),
                }
            })
            .collect();
        let slices = view
            .slices
            .iter()
            .map(|s| {
                let st = s.status.clone().unwrap_or_default();
                let (ready, reason) = condition_state(&st.conditions, "Ready");
                let connected_pods = view
                    .workers
                    .iter()
                    .filter(|w| w.spec.slice == s.name_any())
                    .filter_map(|w| w.status.as_ref().map(|st| st.connected_pods))
                    .sum();
                SliceCard {
                    name: s.name_any(),
                    subnet: s.spec.slice_subnet.clone(),
                    vni: st.vni,
                    ready,
                    reason,
                    clusters: s.spec.clusters.clone(),
                    namespaces: s
                        .spec
                        .namespaces
                        .iter()
                        .map(|n| {
                            if n.clusters.is_empty() {
                                n.namespace.clone()
                            } else {
                                format!("{} ({})", n.namespace, n.clusters.join(", "))
                            }
                        })
                        .collect(),
                    qos: s.spec.qos.as_ref().map(|q| serde_json::to_string(q).unwrap_or_default()),
                    services: st
                        .services
                        .iter()
                        .map(|v| format!("{}/{} {}", v.namespace, v.name, v.ip.as_deref().unwrap_or("-")))
                        .collect(),
                    connected_pods,
                }
            })
            .collect();
        Self { clusters, slices, tunnels, problems: hub_findings(view).findings }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub_view::tests::view;

    #[test]
    fn the_view_becomes_the_consoles_document() {
        let mut v = view();
        v.workers[0].spec.peers = serde_json::from_value(serde_json::json!([
            {"cluster": "c2", "prefix": "10.80.16.0/20"}, {"cluster": "c3", "prefix": "10.80.32.0/20"}
        ]))
        .unwrap();
        let m = Model::from_view(&v);
        let names: Vec<&str> = m.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["c1", "c2"]);
        assert!(m.clusters[0].healthy);
        assert_eq!(m.clusters[1].reason, "Heartbeat");
        assert_eq!(m.clusters[0].gateways.len(), 1);
        assert_eq!(m.clusters[1].gateways[0].reason, "no status from the cluster's worker yet");
        assert_eq!(m.slices[0].reason, "ClustersNotReady: 1 of 3 clusters ready");
        let t: Vec<(&str, &str, Option<u32>)> =
            m.tunnels.iter().map(|t| (t.to.as_str(), t.state.as_str(), t.rtt_millis)).collect();
        assert_eq!(t, [("c2", "Down", None), ("c3", "Up", Some(4))]);
        assert_eq!(m.tunnels[0].reason, "no handshake for 180 s");
        assert_eq!(m.tunnels[1].rx_bytes, Some(1536));
        assert!(m.problems.iter().any(|p| p.check == "tunnel"));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["tunnels"][1]["rttMillis"], 4);
        assert_eq!(json["clusters"][0]["lastHeartbeat"], "2026-11-23T20:00:00Z");
        assert_eq!(Model::from_view(&HubView::default()), Model::default());
    }
}
