//! The node agent's configuration (what slices this node runs and who its peers are) and the
//! node-state file it writes for the CNI plugin (one per slice under the state dir).
//!
//! Both are JSON with camelCase keys. The node-state file is the contract between the node agent
//! and `slice-cni`: written atomically (temp file + rename) so the plugin never reads half a file.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::names;

/// Errors reading or writing node files.
#[derive(Debug, thiserror::Error)]
pub enum NodeFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Configuration of one node agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAgentConfig {
    /// This node's name.
    pub node: String,
    /// This node's underlay address (the VXLAN source).
    pub underlay_address: IpAddr,
    /// MTU of the underlay network.
    #[serde(default = "default_underlay_mtu")]
    pub underlay_mtu: u32,
    /// Where node-state files go.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where named network namespaces live (as `ip netns` uses).
    #[serde(default = "default_netns_dir")]
    pub netns_dir: PathBuf,
    /// Router namespace of slice S is `<netns_dir>/<router_netns_prefix><S>`.
    #[serde(default = "default_router_prefix")]
    pub router_netns_prefix: String,
    /// UDP port of VXLAN on the underlay.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
    /// The slices this node takes part in.
    #[serde(default)]
    pub slices: Vec<SliceOnNode>,
}

/// One slice as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SliceOnNode {
    pub name: String,
    pub vni: u32,
    pub slice_subnet: IpNet,
    /// This node's prefix of the slice subnet.
    pub node_prefix: IpNet,
    /// The slice's second address family (a dual-stack slice): its subnet and this node's
    /// prefix of it. Pods get one address of each family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<FamilyOnNode>,
    /// Upper bound for the pod MTU; the underlay bound applies as well.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Namespaces of this cluster that are members of the slice.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// The namespace of the slice's gateway pods, where a pod joins the slice only when its
    /// `slicenet.io/slice` annotation (or its delegate config) names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_namespace: Option<String>,
    /// Other nodes of this cluster on the slice.
    #[serde(default)]
    pub peers: Vec<PeerNode>,
    /// Prefixes of other clusters and the slice address of the local gateway pod that leads to
    /// them (on this node or on a peer node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_routes: Vec<RemoteRoute>,
    /// The slice's ClusterSetIP services (MCS): the router namespace sends each new connection
    /// to a service's virtual address and port to one of that port's backends, chosen per
    /// connection (DNAT, so replies return through the same conntrack entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ClusterSetService>,
    /// The slice's MultiNetworkPolicies (those whose `policy-for` names the slice), compiled by
    /// the agent into the router's firewall for the pods of this node (ingress to them, egress
    /// from them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<crate::policy::SlicePolicy>,
    /// Every pod of the slice in every cluster (slice address, namespace, labels, namespace
    /// labels, named ports), grouped: what the policies' selectors match, wherever a pod runs.
    /// The pods inside [`SliceOnNode::node_prefix`] are this node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<crate::policy::PodGroup>,
    /// The slice's share of the node's uplink (its HTB class); none: its traffic goes to the
    /// tree's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<crate::qos::SliceQos>,
}

/// One more address family of a slice on a node: the family's subnet and the node's prefix of
/// it (the node's router address in that family is the prefix's first usable address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FamilyOnNode {
    pub slice_subnet: IpNet,
    pub node_prefix: IpNet,
}

/// One family of a slice on a node: its subnet, this node's prefix and each peer's (name,
/// prefix) of that family ([`SliceOnNode::family_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPrefixes<'a> {
    pub subnet: IpNet,
    pub node_prefix: IpNet,
    pub peers: Vec<(&'a str, IpNet)>,
}

impl SliceOnNode {
    /// The family `prefix` is inside, with this node's and the peers' node prefixes of that
    /// family; `None` when it is inside neither subnet.
    #[must_use]
    pub fn family_of(&self, prefix: IpNet) -> Option<FamilyPrefixes<'_>> {
        if self.slice_subnet.contains(&prefix) {
            let peers = self.peers.iter().map(|p| (p.name.as_str(), p.node_prefix)).collect();
            return Some(FamilyPrefixes { subnet: self.slice_subnet, node_prefix: self.node_prefix, peers });
        }
        let family = self.secondary.as_ref().filter(|f| f.slice_subnet.contains(&prefix))?;
        let peers = self.peers.iter().filter_map(|p| Some((p.name.as_str(), p.secondary_node_prefix?))).collect();
        Some(FamilyPrefixes { subnet: family.slice_subnet, node_prefix: family.node_prefix, peers })
    }

    /// (slice subnet, node prefix) of each family, the primary first.
    pub fn families(&self) -> impl Iterator<Item = (IpNet, IpNet)> + '_ {
        std::iter::once((self.slice_subnet, self.node_prefix))
            .chain(self.secondary.iter().map(|f| (f.slice_subnet, f.node_prefix)))
    }

    /// Whether `ip` is inside one of the slice's subnets.
    #[must_use]
    pub fn subnets_contain(&self, ip: &IpAddr) -> bool {
        self.families().any(|(subnet, _)| subnet.contains(ip))
    }
}

/// One ClusterSetIP service of a slice as the node agent programs it (written by the worker
/// from the hub's merged imports).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSetService {
    /// `<namespace>/<name>`, for logs and rule comments.
    pub name: String,
    /// The ClusterSetIP: inside the slice subnet, in the block the hub reserves for them.
    pub ip: IpAddr,
    /// One entry per service port.
    #[serde(default)]
    pub ports: Vec<ServicePortRule>,
}

/// One port of a [`ClusterSetService`] and where its connections go.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePortRule {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The service port (on the ClusterSetIP).
    pub port: u16,
    /// The ready endpoints of every exporting cluster: slice address and target port. Empty:
    /// connections are refused (TCP reset / ICMP unreachable), as kube-proxy does.
    #[serde(default)]
    pub backends: Vec<std::net::SocketAddr>,
}

/// A prefix of other clusters, reached through this cluster's gateway pod at `via` (its slice
/// address) and, with several gateway replicas (issue 13), through each of `also_via` as well:
/// the node agent spreads flows over the live ones (one path per replica).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteRoute {
    pub prefix: IpNet,
    pub via: IpAddr,
    /// The further gateway replicas' slice addresses of the same family, in ordinal order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_via: Vec<IpAddr>,
}

impl RemoteRoute {
    /// A route through one gateway pod.
    pub fn new(prefix: IpNet, via: IpAddr) -> Self {
        RemoteRoute { prefix, via, also_via: Vec::new() }
    }

    /// Every gateway address the prefix is reached through: `via`, then `also_via`.
    pub fn gateways(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.via).chain(self.also_via.iter().copied())
    }
}

/// Another node of the same cluster on the same slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerNode {
    pub name: String,
    pub underlay_address: IpAddr,
    pub node_prefix: IpNet,
    /// The peer's prefix of the slice's secondary subnet (dual-stack slices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_node_prefix: Option<IpNet>,
}

fn default_underlay_mtu() -> u32 {
    1500
}
fn default_state_dir() -> PathBuf {
    names::DEFAULT_STATE_DIR.into()
}
fn default_netns_dir() -> PathBuf {
    names::DEFAULT_NETNS_DIR.into()
}
fn default_router_prefix() -> String {
    names::DEFAULT_ROUTER_NETNS_PREFIX.into()
}
fn default_vxlan_port() -> u16 {
    names::DEFAULT_VXLAN_PORT
}

impl NodeAgentConfig {
    /// Node `n1` (underlay 198.18.0.1, MTU 1500, the default paths under `/tmp` and
    /// `/run/netns`) with `slices`: what a test or a benchmark wraps a slice in to validate it
    /// or to show it as a node would.
    #[must_use]
    pub fn example(slices: Vec<SliceOnNode>) -> Self {
        Self {
            node: "n1".into(),
            underlay_address: std::net::IpAddr::from([198, 18, 0, 1]),
            underlay_mtu: 1500,
            state_dir: "/tmp".into(),
            netns_dir: "/run/netns".into(),
            router_netns_prefix: "t-".into(),
            vxlan_port: 4789,
            slices,
        }
    }

    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// When the file cannot be read, parsed, or fails [`NodeAgentConfig::validate`].
    pub fn load(path: &Path) -> Result<Self, NodeFileError> {
        let config: Self = read_json(path)?;
        config.validate().map_err(|reason| NodeFileError::Invalid { path: path.into(), reason })?;
        Ok(config)
    }

    /// Checks the whole configuration and names the first problem.
    ///
    /// # Errors
    /// A message naming the slice and field at fault.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen_names = std::collections::BTreeSet::new();
        let mut seen_vnis = std::collections::BTreeSet::new();
        for slice in &self.slices {
            names::validate_slice_name(&slice.name)?;
            let ctx = |m: String| format!("slice {}: {m}", slice.name);
            if !seen_names.insert(&slice.name) {
                return Err(ctx("listed twice".into()));
            }
            if slice.vni == 0 || slice.vni >= 1 << 24 {
                return Err(ctx(format!("vni {} must be in 1..16777215", slice.vni)));
            }
            if !seen_vnis.insert(slice.vni) {
                return Err(ctx(format!("vni {} is used by another slice", slice.vni)));
            }
            crate::prefix::check_aligned(slice.slice_subnet).map_err(|e| ctx(e.to_string()))?;
            crate::prefix::check_aligned(slice.node_prefix).map_err(|e| ctx(e.to_string()))?;
            if !slice.slice_subnet.contains(&slice.node_prefix) {
                return Err(ctx(format!(
                    "node prefix {} is not inside slice subnet {}",
                    slice.node_prefix, slice.slice_subnet
                )));
            }
            if crate::prefix::pod_addresses(slice.node_prefix).next().is_none() {
                return Err(ctx(format!("node prefix {} has no room for pods", slice.node_prefix)));
            }
            for peer in &slice.peers {
                if !slice.slice_subnet.contains(&peer.node_prefix) {
                    return Err(ctx(format!(
                        "peer {} prefix {} is not inside slice subnet {}",
                        peer.name, peer.node_prefix, slice.slice_subnet
                    )));
                }
                if peer.node_prefix.contains(&slice.node_prefix.network())
                    || slice.node_prefix.contains(&peer.node_prefix.network())
                {
                    return Err(ctx(format!(
                        "peer {} prefix {} overlaps this node's {}",
                        peer.name, peer.node_prefix, slice.node_prefix
                    )));
                }
            }
            validate_secondary(slice).map_err(ctx)?;
            validate_remote_routes(slice).map_err(ctx)?;
            validate_services(slice).map_err(ctx)?;
            validate_policies(slice).map_err(ctx)?;
            validate_pods(slice).map_err(ctx)?;
            if let Some(qos) = &slice.qos {
                qos.validate().map_err(ctx)?;
            }
            for reserved in names::RESERVED_NAMESPACES {
                if slice.namespaces.iter().any(|n| n == reserved) {
                    return Err(ctx(format!("namespace {reserved} is slicenet's own and never a slice member")));
                }
            }
            if let Some(gw) = &slice.gateway_namespace
                && slice.namespaces.contains(gw)
            {
                return Err(ctx(format!("gateway namespace {gw} is also listed as a member namespace")));
            }
        }
        self.validate_uplink()
    }

    /// The node's uplink rate: the one the QoS slices carry (the cluster's; they must agree),
    /// `None` when no slice has QoS.
    #[must_use]
    pub fn uplink_kbps(&self) -> Option<u64> {
        self.slices.iter().filter_map(|s| s.qos.as_ref()).map(|q| q.uplink_kbps).max()
    }

    /// The QoS slices against each other: one uplink rate, their guarantees fit under it (or no
    /// guarantee holds), and each sends from its own gateway port.
    fn validate_uplink(&self) -> Result<(), String> {
        let Some(uplink) = self.uplink_kbps() else { return Ok(()) };
        let mut ports = std::collections::BTreeMap::new();
        let mut guaranteed = 0u64;
        for s in &self.slices {
            let Some(q) = &s.qos else { continue };
            if q.uplink_kbps != uplink {
                return Err(format!(
                    "slice {}: qos uplinkKbps {} differs from another slice's {uplink} (one uplink per node)",
                    s.name, q.uplink_kbps
                ));
            }
            guaranteed = guaranteed.saturating_add(q.guaranteed_kbps);
            if let Some(other) = ports.insert(q.gateway_port, &s.name) {
                return Err(format!(
                    "slices {other} and {} both send from gateway port {}: their traffic cannot be told apart",
                    s.name, q.gateway_port
                ));
            }
        }
        if guaranteed > uplink {
            return Err(format!(
                "the slices' guarantees add up to {guaranteed} kbit/s, above the uplink rate {uplink} kbit/s"
            ));
        }
        Ok(())
    }

    /// Path of the router namespace of `slice` on this node.
    pub fn router_netns(&self, slice: &str) -> PathBuf {
        self.netns_dir.join(format!("{}{slice}", self.router_netns_prefix))
    }

    /// The pod MTU of a slice on this node: the underlay less VXLAN overhead, bounded by the
    /// slice's own MTU.
    pub fn pod_mtu(&self, slice: &SliceOnNode) -> u32 {
        let overhead = match self.underlay_address {
            IpAddr::V4(_) => names::VXLAN_OVERHEAD_V4,
            IpAddr::V6(_) => names::VXLAN_OVERHEAD_V6,
        };
        let by_underlay = self.underlay_mtu.saturating_sub(overhead);
        slice.mtu.map_or(by_underlay, |m| m.min(by_underlay))
    }

    /// The node-state file the agent writes for `slice`.
    pub fn node_state(&self, slice: &SliceOnNode) -> NodeState {
        NodeState {
            slice: slice.name.clone(),
            vni: slice.vni,
            router_netns: self.router_netns(&slice.name),
            node_prefix: slice.node_prefix,
            router_address: crate::prefix::router_address(slice.node_prefix),
            slice_subnet: slice.slice_subnet,
            mtu: self.pod_mtu(slice),
            namespaces: slice.namespaces.clone(),
            gateway_namespace: slice.gateway_namespace.clone(),
            secondary: slice.secondary.map(|f| NodeStateFamily {
                slice_subnet: f.slice_subnet,
                node_prefix: f.node_prefix,
                router_address: crate::prefix::router_address(f.node_prefix),
            }),
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The secondary family: of the other family than the primary, aligned, the node prefix inside
/// its subnet with room for pods; every peer has a prefix of it (or none of them, when the
/// slice has no secondary family), inside it and clear of this node's.
fn validate_secondary(slice: &SliceOnNode) -> Result<(), String> {
    let Some(family) = &slice.secondary else {
        return match slice.peers.iter().find(|p| p.secondary_node_prefix.is_some()) {
            Some(peer) => {
                Err(format!("peer {} has a secondary node prefix but the slice has no secondary family", peer.name))
            }
            None => Ok(()),
        };
    };
    if family.slice_subnet.addr().is_ipv4() == slice.slice_subnet.addr().is_ipv4() {
        return Err(format!(
            "secondary subnet {} is of the same family as slice subnet {}: one subnet per family",
            family.slice_subnet, slice.slice_subnet
        ));
    }
    crate::prefix::check_aligned(family.slice_subnet).map_err(|e| e.to_string())?;
    crate::prefix::check_aligned(family.node_prefix).map_err(|e| e.to_string())?;
    if !family.slice_subnet.contains(&family.node_prefix) {
        return Err(format!(
            "secondary node prefix {} is not inside secondary subnet {}",
            family.node_prefix, family.slice_subnet
        ));
    }
    if crate::prefix::pod_addresses(family.node_prefix).next().is_none() {
        return Err(format!("secondary node prefix {} has no room for pods", family.node_prefix));
    }
    for peer in &slice.peers {
        let Some(prefix) = peer.secondary_node_prefix else {
            return Err(format!(
                "peer {} has no prefix of secondary subnet {}: the slice's pods there would be unreachable in that family",
                peer.name, family.slice_subnet
            ));
        };
        if !family.slice_subnet.contains(&prefix) {
            return Err(format!(
                "peer {} secondary prefix {prefix} is not inside secondary subnet {}",
                peer.name, family.slice_subnet
            ));
        }
        if overlaps(&prefix, &family.node_prefix) {
            return Err(format!(
                "peer {} secondary prefix {prefix} overlaps this node's {}",
                peer.name, family.node_prefix
            ));
        }
    }
    Ok(())
}

/// Remote routes: each prefix aligned, inside one of the slice's subnets, listed once, and clear
/// of this cluster's node prefixes of that family (this node's and its peers'); each `via` a pod
/// address of the same family inside this node's prefix or a peer's (not a router address).
fn validate_remote_routes(slice: &SliceOnNode) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for route in &slice.remote_routes {
        let what = format!("remote route {} via {}", route.prefix, route.via);
        crate::prefix::check_aligned(route.prefix).map_err(|e| format!("{what}: {e}"))?;
        let Some(FamilyPrefixes { subnet, node_prefix, peers: peer_prefixes }) = slice.family_of(route.prefix) else {
            let subnets: Vec<String> = slice.families().map(|(s, _)| s.to_string()).collect();
            return Err(format!("{what}: prefix is not inside slice subnet {}", subnets.join(" or ")));
        };
        if !seen.insert(route.prefix) {
            return Err(format!("{what}: prefix listed twice"));
        }
        if overlaps(&route.prefix, &node_prefix) {
            return Err(format!("{what}: prefix overlaps this node's {node_prefix}"));
        }
        if let Some((peer, p)) = peer_prefixes.iter().find(|(_, p)| overlaps(&route.prefix, p)) {
            return Err(format!("{what}: prefix overlaps peer {peer}'s {p}"));
        }
        let mut gateways = std::collections::BTreeSet::new();
        for via in route.gateways() {
            let what = format!("remote route {} via {via}", route.prefix);
            if !gateways.insert(via) {
                return Err(format!("{what}: gateway listed twice"));
            }
            if !subnet.contains(&via) {
                return Err(format!("{what}: via is not inside slice subnet {subnet}"));
            }
            let mut on_node = std::iter::once(node_prefix).chain(peer_prefixes.iter().map(|(_, p)| *p));
            let Some(owner) = on_node.find(|p| p.contains(&via)) else {
                return Err(format!("{what}: via is inside neither this node's prefix {node_prefix} nor a peer's"));
            };
            if crate::prefix::router_address(owner) == via {
                return Err(format!("{what}: via is a slice-router address, not a gateway pod"));
            }
        }
    }
    Ok(())
}

/// ClusterSetIP services: each address inside the slice subnet and clear of this node's prefix
/// and its peers' (it is virtual, never a pod's), each (address, protocol, port) listed once,
/// protocols `TCP`, `UDP` or `SCTP`, ports not 0, backends inside the slice subnet with a port.
fn validate_services(slice: &SliceOnNode) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for service in &slice.services {
        let what = format!("service {} ({})", service.name, service.ip);
        if !slice.slice_subnet.contains(&service.ip) {
            return Err(format!("{what}: address is not inside slice subnet {}", slice.slice_subnet));
        }
        let mut node_prefixes = std::iter::once(slice.node_prefix).chain(slice.peers.iter().map(|p| p.node_prefix));
        if let Some(prefix) = node_prefixes.find(|p| p.contains(&service.ip)) {
            return Err(format!("{what}: address is inside node prefix {prefix}, where pods live"));
        }
        for rule in &service.ports {
            if !matches!(rule.protocol.as_str(), "TCP" | "UDP" | "SCTP") {
                return Err(format!("{what}: protocol {:?} is none of TCP, UDP, SCTP", rule.protocol));
            }
            if rule.port == 0 {
                return Err(format!("{what}: port 0"));
            }
            if !seen.insert((service.ip, rule.protocol.as_str(), rule.port)) {
                return Err(format!("{what}: {}/{} listed twice", rule.port, rule.protocol));
            }
            if let Some(backend) = rule.backends.iter().find(|b| b.port() == 0 || !slice.slice_subnet.contains(&b.ip()))
            {
                return Err(format!(
                    "{what}: backend {backend} of port {}/{} is not a port inside slice subnet {}",
                    rule.port, rule.protocol, slice.slice_subnet
                ));
            }
        }
    }
    Ok(())
}

/// Policies: each named (namespace and name, both DNS names) and listed once. Their specs are
/// checked where they are compiled (the node agent), so that one bad policy is reported by name
/// and keeps the previous rules instead of failing the node's whole configuration.
fn validate_policies(slice: &SliceOnNode) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for policy in &slice.policies {
        let what = format!("policy {}/{}", policy.namespace, policy.name);
        for (field, value) in [("namespace", &policy.namespace), ("name", &policy.name)] {
            if value.is_empty() || value.len() > 253 || !is_dns_subdomain(value) {
                return Err(format!("{what}: {field} {value:?} is not a DNS name"));
            }
        }
        if !seen.insert((&policy.namespace, &policy.name)) {
            return Err(format!("{what}: listed twice"));
        }
    }
    Ok(())
}

/// Lower-case alphanumerics, '-' and '.', starting and ending alphanumeric.
fn is_dns_subdomain(s: &str) -> bool {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.bytes().all(|c| ok(c) || c == b'-' || c == b'.')
        && s.bytes().next().is_some_and(ok)
        && s.bytes().last().is_some_and(ok)
}

/// The pod directory: each group in a named namespace with at least one address, each address
/// inside the slice subnet, listed once in the whole directory and not a slice-router address
/// (this node's or a peer's), named ports with a name, a port and a protocol of `TCP`, `UDP`,
/// `SCTP`, each (name, protocol) once per group.
fn validate_pods(slice: &SliceOnNode) -> Result<(), String> {
    let routers: Vec<IpAddr> = std::iter::once(slice.node_prefix)
        .chain(slice.peers.iter().map(|p| p.node_prefix))
        .chain(slice.secondary.iter().map(|f| f.node_prefix))
        .chain(slice.peers.iter().filter_map(|p| p.secondary_node_prefix))
        .map(crate::prefix::router_address)
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for (i, group) in slice.pods.iter().enumerate() {
        let what = format!("pod group {i} (namespace {:?})", group.namespace);
        if group.namespace.is_empty() || !is_dns_subdomain(&group.namespace) {
            return Err(format!("{what}: namespace is not a DNS name"));
        }
        if group.addresses.is_empty() {
            return Err(format!("{what}: no address"));
        }
        for address in &group.addresses {
            if !slice.subnets_contain(address) {
                return Err(format!("{what}: address {address} is not inside slice subnet {}", slice.slice_subnet));
            }
            if routers.contains(address) {
                return Err(format!("{what}: address {address} is a slice-router address"));
            }
            if !seen.insert(*address) {
                return Err(format!("{what}: address {address} is listed twice in the pod directory"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for port in &group.ports {
            if port.name.is_empty() {
                return Err(format!("{what}: a named port without a name"));
            }
            if !crate::policy::PROTOCOLS.contains(&port.protocol.as_str()) {
                return Err(format!(
                    "{what}: port {} protocol {:?} is none of TCP, UDP, SCTP",
                    port.name, port.protocol
                ));
            }
            if port.port == 0 {
                return Err(format!("{what}: port {} is 0", port.name));
            }
            if !names.insert((&port.name, &port.protocol)) {
                return Err(format!("{what}: port {}/{} listed twice", port.name, port.protocol));
            }
        }
    }
    Ok(())
}

/// What the CNI plugin needs to know about one slice on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub slice: String,
    pub vni: u32,
    pub router_netns: PathBuf,
    pub node_prefix: IpNet,
    pub router_address: IpAddr,
    pub slice_subnet: IpNet,
    pub mtu: u32,
    pub namespaces: Vec<String>,
    /// See [`SliceOnNode::gateway_namespace`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_namespace: Option<String>,
    /// The slice's second address family on this node (dual-stack slices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<NodeStateFamily>,
}

/// One more address family of a slice in a node-state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStateFamily {
    pub slice_subnet: IpNet,
    pub node_prefix: IpNet,
    pub router_address: IpAddr,
}

impl NodeState {
    /// (slice subnet, node prefix, router address) of each family, the primary first.
    pub fn families(&self) -> impl Iterator<Item = (IpNet, IpNet, IpAddr)> + '_ {
        std::iter::once((self.slice_subnet, self.node_prefix, self.router_address))
            .chain(self.secondary.iter().map(|f| (f.slice_subnet, f.node_prefix, f.router_address)))
    }

    /// Whether a pod in `namespace` that names this slice (annotation or delegate config) may
    /// join it: a member namespace, or the slice's gateway namespace.
    #[must_use]
    pub fn admits_by_name(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace) || self.gateway_namespace.as_deref() == Some(namespace)
    }

    /// Path of the state file of `slice` under `state_dir`.
    pub fn path(state_dir: &Path, slice: &str) -> PathBuf {
        state_dir.join(format!("{slice}.json"))
    }

    /// Reads the state of `slice`; `Ok(None)` when there is no file.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(state_dir: &Path, slice: &str) -> Result<Option<Self>, NodeFileError> {
        // One open, no stat first: the agent may remove the file at any moment, and a file
        // gone between a stat and the open is as absent as one never there.
        match read_json(&Self::path(state_dir, slice)) {
            Err(NodeFileError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            other => other.map(Some),
        }
    }

    /// Every slice state under `state_dir`, sorted by slice name. A missing dir is empty.
    ///
    /// # Errors
    /// When the dir or a state file cannot be read.
    pub fn load_all(state_dir: &Path) -> Result<Vec<Self>, NodeFileError> {
        let read_err = |source| NodeFileError::Read { path: state_dir.into(), source };
        let entries = match std::fs::read_dir(state_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(read_err)?,
        };
        let mut states = Vec::new();
        for entry in entries {
            let path = entry.map_err(read_err)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                match read_json::<Self>(&path) {
                    // Removed since the listing: not a state any more.
                    Err(NodeFileError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                    other => states.push(other?),
                }
            }
        }
        states.sort_by(|a, b| a.slice.cmp(&b.slice));
        Ok(states)
    }

    /// Writes the state atomically (temp file in the same dir, fsync, rename).
    ///
    /// # Errors
    /// When the dir or file cannot be written.
    pub fn store(&self, state_dir: &Path) -> Result<(), NodeFileError> {
        let path = Self::path(state_dir, &self.slice);
        let json = serde_json::to_vec_pretty(self).expect("node state serializes");
        write_atomic(&path, &json)
    }
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename.
///
/// # Errors
/// When the directory or file cannot be written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), NodeFileError> {
    let write_err = |source| NodeFileError::Write { path: path.into(), source };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// Largest node file read: far more than any real configuration or state.
const MAX_NODE_FILE: u64 = 4 << 20;

/// Reads a node file that must be a regular file of bounded size. It is opened without
/// blocking and checked before a byte is read, so a FIFO or device under the name (which
/// would block every reader for ever) is an error instead of a hang.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, NodeFileError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK (the same value on every Linux architecture we build for): opening a FIFO
    // with no writer returns at once instead of waiting for one.
    const O_NONBLOCK: i32 = 0o4000;
    let read_err = |source| NodeFileError::Read { path: path.into(), source };
    let file = std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(NodeFileError::Invalid { path: path.into(), reason: "not a regular file".into() });
    }
    if meta.len() > MAX_NODE_FILE {
        return Err(NodeFileError::Invalid {
            path: path.into(),
            reason: format!("{} bytes, more than the {MAX_NODE_FILE} a node file may have", meta.len()),
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_NODE_FILE + 1).read_to_end(&mut bytes).map_err(read_err)?;
    serde_json::from_slice(&bytes).map_err(|source| NodeFileError::Parse { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20: a FIFO named like a state file hung every reader (and so every CNI ADD).
    #[test]
    fn a_fifo_or_a_huge_file_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = NodeState::path(dir.path(), "blue");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
        assert!(made.success());
        let e = NodeState::load(dir.path(), "blue").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let huge = NodeState::path(dir.path(), "red");
        std::fs::File::create(&huge).unwrap().set_len(MAX_NODE_FILE + 1).unwrap();
        let e = NodeState::load(dir.path(), "red").unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }

    fn config() -> NodeAgentConfig {
        serde_json::from_value(serde_json::json!({
            "node": "n1",
            "underlayAddress": "198.18.0.11",
            "slices": [{
                "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16",
                "nodePrefix": "10.80.0.0/26", "namespaces": ["shop"],
                "peers": [{"name": "n2", "underlayAddress": "198.18.0.12", "nodePrefix": "10.80.0.64/26"}]
            }]
        }))
        .unwrap()
    }

    #[test]
    fn defaults_and_state() {
        let c = config();
        c.validate().unwrap();
        assert_eq!(c.router_netns("blue"), PathBuf::from("/run/netns/slice-blue"));
        let s = c.node_state(&c.slices[0]);
        assert_eq!(s.mtu, 1450);
        assert_eq!(s.router_address.to_string(), "10.80.0.1");
    }

    #[test]
    fn validation_names_the_fault() {
        let mut c = config();
        c.slices[0].peers[0].node_prefix = "10.80.0.0/27".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("overlaps"));
        let mut c = config();
        c.slices.push(c.slices[0].clone());
        assert!(c.validate().unwrap_err().contains("listed twice"));
        let mut c = config();
        c.slices[0].node_prefix = "10.81.0.0/26".parse().unwrap();
        assert!(c.validate().unwrap_err().contains("not inside"));
        let mut c = config();
        c.slices[0].vni = 0;
        assert!(c.validate().unwrap_err().contains("vni"));
    }

    #[test]
    fn qos_is_validated_against_the_uplink() {
        let qos = |g: u64, port: u16| crate::qos::SliceQos {
            guaranteed_kbps: g,
            ceiling_kbps: None,
            priority: 1,
            gateway_port: port,
            uplink_kbps: 40_000,
        };
        let mut c = config();
        c.slices[0].qos = Some(qos(10_000, 51820));
        let mut red = c.slices[0].clone();
        red.name = "red".into();
        red.vni = 101;
        red.qos = Some(qos(20_000, 51821));
        c.slices.push(red);
        c.validate().unwrap();
        assert_eq!(c.uplink_kbps(), Some(40_000));
        // Files without QoS read and write as before.
        let json = serde_json::to_value(config()).unwrap();
        assert!(json["slices"][0].get("qos").is_none());
        assert_eq!(config().uplink_kbps(), None);

        let mut over = c.clone();
        over.slices[1].qos = Some(qos(30_001, 51821));
        assert!(over.validate().unwrap_err().contains("add up to 40001"), "{:?}", over.validate());
        let mut same_port = c.clone();
        same_port.slices[1].qos = Some(qos(20_000, 51820));
        assert!(same_port.validate().unwrap_err().contains("gateway port 51820"));
        let mut two_uplinks = c;
        two_uplinks.slices[1].qos.as_mut().unwrap().uplink_kbps = 50_000;
        assert!(two_uplinks.validate().unwrap_err().contains("one uplink per node"));
    }

    #[test]
    fn cluster_set_services_are_validated() {
        let check = |services: serde_json::Value| {
            let mut c = config();
            c.slices[0].services = serde_json::from_value(services).unwrap();
            c.validate()
        };
        let rule = |ip: &str, protocol: &str, port: u16, backend: &str| {
            serde_json::json!([{"name": "shop/web", "ip": ip,
                "ports": [{"protocol": protocol, "port": port, "backends": [backend]}]}])
        };
        check(rule("10.80.255.10", "TCP", 80, "10.81.0.5:8080")).unwrap_err();
        check(rule("10.80.255.10", "TCP", 80, "10.80.0.5:8080")).unwrap();
        let cases = [
            (rule("10.90.0.1", "TCP", 80, "10.80.0.5:8080"), "not inside slice subnet"),
            (rule("10.80.0.70", "TCP", 80, "10.80.0.5:8080"), "inside node prefix 10.80.0.64/26"),
            (rule("10.80.255.10", "ICMP", 80, "10.80.0.5:8080"), "none of TCP"),
            (rule("10.80.255.10", "TCP", 0, "10.80.0.5:8080"), "port 0"),
            (rule("10.80.255.10", "UDP", 53, "10.80.0.5:0"), "backend 10.80.0.5:0"),
        ];
        for (services, want) in cases {
            let e = check(services).unwrap_err();
            assert!(e.contains(want), "{e} should say {want}");
        }
        let twice = serde_json::json!([
            {"name": "shop/a", "ip": "10.80.255.10", "ports": [{"protocol": "TCP", "port": 80}]},
            {"name": "shop/b", "ip": "10.80.255.10", "ports": [{"protocol": "TCP", "port": 80}]}
        ]);
        assert!(check(twice).unwrap_err().contains("listed twice"));
    }

    #[test]
    fn policies_and_the_pod_directory_are_validated() {
        let check = |policies: serde_json::Value, pods: serde_json::Value| {
            let mut c = config();
            c.slices[0].policies = serde_json::from_value(policies).unwrap();
            c.slices[0].pods = serde_json::from_value(pods).unwrap();
            c.validate()
        };
        let deny = serde_json::json!([{"namespace": "shop", "name": "deny", "spec": {}}]);
        let group = |addresses: serde_json::Value, ports: serde_json::Value| serde_json::json!([{"namespace": "shop", "labels": {"app": "web"}, "ports": ports, "addresses": addresses}]);
        let http = serde_json::json!([{"name": "http", "port": 80, "protocol": "TCP"}]);
        check(deny.clone(), group(serde_json::json!(["10.80.0.5", "10.80.16.5"]), http.clone())).unwrap();
        // Older configurations (no policies, no pods) still parse, and empty lists are not written.
        let c = config();
        assert!(c.slices[0].policies.is_empty() && c.slices[0].pods.is_empty());
        let written = serde_json::to_string(&c).unwrap();
        assert!(!written.contains("policies") && !written.contains("\"pods\""), "{written}");
        let cases = [
            (
                serde_json::json!([{"namespace": "Shop", "name": "deny", "spec": {}}]),
                group(serde_json::json!(["10.80.0.5"]), http.clone()),
                "policy Shop/deny: namespace \"Shop\" is not a DNS name",
            ),
            (
                serde_json::json!([{"namespace": "shop", "name": "a", "spec": {}}, {"namespace": "shop", "name": "a", "spec": {}}]),
                serde_json::json!([]),
                "policy shop/a: listed twice",
            ),
            (
                deny.clone(),
                group(serde_json::json!(["10.81.0.5"]), http.clone()),
                "address 10.81.0.5 is not inside slice subnet",
            ),
            (
                deny.clone(),
                group(serde_json::json!(["10.80.0.1"]), http.clone()),
                "address 10.80.0.1 is a slice-router address",
            ),
            (
                deny.clone(),
                group(serde_json::json!(["10.80.0.5", "10.80.0.5"]), http.clone()),
                "address 10.80.0.5 is listed twice",
            ),
            (deny.clone(), group(serde_json::json!([]), http.clone()), "pod group 0 (namespace \"shop\"): no address"),
            (
                deny.clone(),
                group(
                    serde_json::json!(["10.80.0.5"]),
                    serde_json::json!([{"name": "x", "port": 80, "protocol": "ICMP"}]),
                ),
                "protocol \"ICMP\" is none of",
            ),
            (
                deny.clone(),
                group(
                    serde_json::json!(["10.80.0.5"]),
                    serde_json::json!([{"name": "x", "port": 0, "protocol": "TCP"}]),
                ),
                "port x is 0",
            ),
            (
                deny,
                group(
                    serde_json::json!(["10.80.0.5"]),
                    serde_json::json!([{"name": "x", "port": 80, "protocol": "TCP"}, {"name": "x", "port": 81, "protocol": "TCP"}]),
                ),
                "port x/TCP listed twice",
            ),
        ];
        for (policies, pods, want) in cases {
            let e = check(policies, pods).unwrap_err();
            assert!(e.contains(want), "{e} should say {want}");
        }
    }

    #[test]
    fn remote_routes_are_validated() {
        let route = |prefix: &str, via: &str| RemoteRoute::new(prefix.parse().unwrap(), via.parse().unwrap());
        let with = |routes: Vec<RemoteRoute>| {
            let mut c = config();
            c.slices[0].remote_routes = routes;
            c.validate()
        };
        // Gateway on this node, and on the peer.
        with(vec![route("10.80.16.0/20", "10.80.0.5"), route("10.80.32.0/20", "10.80.0.70")]).unwrap();
        let err = |routes| with(routes).unwrap_err();
        assert!(err(vec![route("10.81.16.0/20", "10.80.0.5")]).contains("not inside slice subnet"));
        assert!(err(vec![route("10.80.16.1/20", "10.80.0.5")]).contains("not aligned"));
        assert!(err(vec![route("10.80.0.0/20", "10.80.0.5")]).contains("overlaps this node's"));
        assert!(err(vec![route("10.80.0.64/27", "10.80.0.5")]).contains("overlaps peer n2's"));
        assert!(err(vec![route("10.80.16.0/20", "10.81.0.5")]).contains("via is not inside"));
        assert!(err(vec![route("10.80.16.0/20", "10.80.1.5")]).contains("neither"));
        assert!(err(vec![route("10.80.16.0/20", "10.80.0.65")]).contains("slice-router address"));
        assert!(err(vec![route("10.80.16.0/20", "10.80.0.5"), route("10.80.16.0/20", "10.80.0.6")]).contains("twice"));
        // Absent from the JSON when empty; read back when present.
        let c = config();
        assert!(!serde_json::to_string(&c).unwrap().contains("remoteRoutes"));
        let json = serde_json::json!({"prefix": "10.80.16.0/20", "via": "10.80.0.5"});
        assert_eq!(serde_json::from_value::<RemoteRoute>(json).unwrap(), route("10.80.16.0/20", "10.80.0.5"));
        // Several gateway replicas: each checked like `via`, none twice.
        let replicas = |also: &[&str]| {
            let mut r = route("10.80.16.0/20", "10.80.0.5");
            r.also_via = also.iter().map(|a| a.parse().unwrap()).collect();
            r
        };
        with(vec![replicas(&["10.80.0.70"])]).unwrap();
        assert!(err(vec![replicas(&["10.80.0.5"])]).contains("via 10.80.0.5: gateway listed twice"));
        assert!(err(vec![replicas(&["10.80.0.65"])]).contains("via 10.80.0.65: via is a slice-router address"));
        assert!(err(vec![replicas(&["10.80.1.5"])]).contains("neither"));
        let json = serde_json::json!({"prefix": "10.80.16.0/20", "via": "10.80.0.5", "alsoVia": ["10.80.0.70"]});
        assert_eq!(serde_json::from_value::<RemoteRoute>(json).unwrap(), replicas(&["10.80.0.70"]));
    }

    #[test]
    fn state_round_trip_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let c = config();
        let s = c.node_state(&c.slices[0]);
        s.store(dir.path()).unwrap();
        assert_eq!(NodeState::load(dir.path(), "blue").unwrap(), Some(s.clone()));
        assert_eq!(NodeState::load(dir.path(), "red").unwrap(), None);
        assert_eq!(NodeState::load_all(dir.path()).unwrap(), vec![s]);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temp file left behind");
    }

    /// CI failure of 2026-12-04: a state removed between a stat and the open was an error to
    /// the reader instead of an absent state. A writer stores and removes the file while the
    /// reader loads it; every load is a state or none, never an error.
    #[test]
    fn a_state_removed_while_it_is_read_is_absent_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = config();
        let s = c.node_state(&c.slices[0]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (dir, s, stop) = (dir.path().to_owned(), s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.store(&dir).unwrap();
                    std::fs::remove_file(NodeState::path(&dir, "blue")).unwrap();
                }
            })
        };
        for _ in 0..5_000 {
            assert!(matches!(NodeState::load(dir.path(), "blue"), Ok(None) | Ok(Some(_))));
            assert!(NodeState::load_all(dir.path()).unwrap().len() <= 1);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    }

    fn dual() -> NodeAgentConfig {
        let mut c = config();
        c.slices[0].secondary = Some(FamilyOnNode {
            slice_subnet: "fd00:80::/48".parse().unwrap(),
            node_prefix: "fd00:80::/120".parse().unwrap(),
        });
        c.slices[0].peers[0].secondary_node_prefix = Some("fd00:80::100/120".parse().unwrap());
        c
    }

    #[test]
    fn a_dual_stack_slice_carries_both_families_to_the_node_state() {
        let c = dual();
        c.validate().unwrap();
        let s = c.node_state(&c.slices[0]);
        let families: Vec<String> =
            s.families().map(|(subnet, prefix, router)| format!("{subnet} {prefix} {router}")).collect();
        assert_eq!(families, ["10.80.0.0/16 10.80.0.0/26 10.80.0.1", "fd00:80::/48 fd00:80::/120 fd00:80::1"]);
        // The JSON round trip keeps it; a single-family state has no `secondary` key (old plugins
        // read new files and the other way round).
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["secondary"]["routerAddress"], "fd00:80::1");
        assert_eq!(serde_json::from_value::<NodeState>(json).unwrap(), s);
        let single = config();
        let json = serde_json::to_value(single.node_state(&single.slices[0])).unwrap();
        assert_eq!(json.get("secondary"), None);
        // An IPv6-only slice is a primary family of IPv6.
        let mut v6 = config();
        v6.slices[0].slice_subnet = "fd00:80::/48".parse().unwrap();
        v6.slices[0].node_prefix = "fd00:80::/120".parse().unwrap();
        v6.slices[0].peers[0].node_prefix = "fd00:80::100/120".parse().unwrap();
        v6.validate().unwrap();
        assert_eq!(v6.node_state(&v6.slices[0]).router_address.to_string(), "fd00:80::1");
    }

    #[test]
    fn a_bad_secondary_family_is_named() {
        let bad = |f: &dyn Fn(&mut SliceOnNode)| {
            let mut c = dual();
            f(&mut c.slices[0]);
            c.validate().unwrap_err()
        };
        let e = bad(&|s| s.secondary.as_mut().unwrap().slice_subnet = "10.81.0.0/16".parse().unwrap());
        assert!(e.starts_with("slice blue: secondary subnet 10.81.0.0/16 is of the same family"), "{e}");
        let e = bad(&|s| s.secondary.as_mut().unwrap().node_prefix = "fd00:81::/120".parse().unwrap());
        assert!(e.contains("secondary node prefix fd00:81::/120 is not inside secondary subnet fd00:80::/48"), "{e}");
        let e = bad(&|s| s.peers[0].secondary_node_prefix = None);
        assert!(e.contains("peer n2 has no prefix of secondary subnet fd00:80::/48"), "{e}");
        let e = bad(&|s| s.peers[0].secondary_node_prefix = Some("fd00:80::/121".parse().unwrap()));
        assert!(e.contains("peer n2 secondary prefix fd00:80::/121 overlaps this node's fd00:80::/120"), "{e}");
        let e = bad(&|s| s.secondary = None);
        assert!(e.contains("peer n2 has a secondary node prefix but the slice has no secondary family"), "{e}");
        let e = bad(&|s| s.secondary.as_mut().unwrap().node_prefix = "fd00:80::1/120".parse().unwrap());
        assert!(e.contains("not aligned"), "{e}");
    }
}
