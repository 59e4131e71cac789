//! The worker's decisions that need no API: node prefixes, each node's share of a slice (what its
//! node agent runs) and the gateway's wg(8) configuration. Pure and deterministic, so the lab
//! (`slicectl lab up -f`) and the Kubernetes worker share them.
//!
//! A WorkerSlice spec carries prefixes, keys and endpoints as strings; [`TypedSpec::parse`]
//! reads and checks them once per pass, and every function here takes the typed values (the
//! gateway's part, [`TypedGateway`], also on its own, since it does not depend on the prefixes).
//! Only node allocations stay strings, as the WorkerSlice status holds them, and are read by
//! [`TypedSpec::node_prefix`] alone.
//!
//! Rules these functions follow (and the tests below pin):
//! - a node keeps its node prefix for as long as it exists: adding or removing other nodes never
//!   renumbers it; a removed node's prefix is free again; new nodes take the lowest free indexes
//!   in name order;
//! - a cluster prefix without room for every node is an error naming the prefix and its
//!   capacity, never a partial allocation;
//! - remote routes (the other clusters' prefixes) go via the local gateway pod's slice address,
//!   and only once that address is known and lies in a node prefix of this cluster (so a node
//!   agent never gets a route it would reject);
//! - the gateway lists one `[Peer]` per peer cluster that has published a public key.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use slice_api::crd::{GATEWAY_NAMESPACE, NodeAllocation, WorkerSliceSpec};
use slice_api::node::{FamilyOnNode, PeerNode, RemoteRoute, SliceOnNode};
use slice_api::prefix::{self, PrefixError};
use slice_api::wireguard::{Key, WgConfig, WgInterface, WgPeer};

/// A node of this cluster as the worker plans it: its name and its underlay address (the
/// Node's `InternalIP`, the VXLAN source).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterNode {
    pub name: String,
    pub underlay_address: IpAddr,
}

impl ClusterNode {
    /// A node named `name` at `underlay_address`.
    #[must_use]
    pub fn new(name: impl Into<String>, underlay_address: IpAddr) -> Self {
        Self { name: name.into(), underlay_address }
    }
}

/// Why the worker cannot plan a slice in this cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerPlanError {
    /// A prefix field of the WorkerSlice does not parse.
    #[error("WorkerSlice {slice}: {field} {value:?} is not a CIDR")]
    BadPrefix { slice: String, field: &'static str, value: String },
    /// Prefix arithmetic refused (misaligned prefix, node prefix length that does not fit).
    #[error("WorkerSlice {slice}: {source}")]
    Prefix {
        slice: String,
        #[source]
        source: PrefixError,
    },
    /// More nodes than node prefixes in the cluster prefix.
    #[error(
        "slice {slice}: cluster prefix {cluster_prefix} has room for {capacity} node prefixes of /{node_prefix_len} but the cluster has {nodes} nodes; use a longer nodePrefixLength or a smaller maxClusters"
    )]
    ClusterPrefixFull { slice: String, cluster_prefix: IpNet, node_prefix_len: u8, capacity: u128, nodes: usize },
    /// The node asked about has no node prefix.
    #[error("slice {slice}: node {node} has no node prefix yet")]
    NodeNotAllocated { slice: String, node: String },
}

/// The secondary family of `spec`: its subnet of the other family than `primary`, its cluster
/// prefix inside it, its node prefix length fitting the cluster prefix.
fn parse_family(
    spec: &WorkerSliceSpec,
    primary: IpNet,
    family: &slice_api::crd::WorkerSliceFamily,
) -> Result<TypedFamily, WorkerPlanError> {
    let subnet = parse_net(&spec.slice, "secondaryFamily.sliceSubnet", &family.slice_subnet)?;
    if subnet.addr().is_ipv4() == primary.addr().is_ipv4() {
        return Err(WorkerPlanError::BadPrefix {
            slice: spec.slice.clone(),
            field: "secondaryFamily.sliceSubnet (of the same family as sliceSubnet)",
            value: family.slice_subnet.clone(),
        });
    }
    let cluster = parse_cluster_prefix(
        &spec.slice,
        subnet,
        ("secondaryFamily.clusterPrefix", "secondaryFamily.clusterPrefix (not inside secondaryFamily.sliceSubnet)"),
        &family.cluster_prefix,
        family.node_prefix_length,
    )?;
    Ok(TypedFamily { subnet, cluster_prefix: cluster, node_prefix_len: family.node_prefix_length })
}

/// A cluster prefix (`fields`: its field, and its field when not inside `subnet`): aligned,
/// inside `subnet`, with room for node prefixes of `node_prefix_len` (index 0 exists exactly
/// when the length fits).
fn parse_cluster_prefix(
    slice: &str,
    subnet: IpNet,
    fields: (&'static str, &'static str),
    value: &str,
    node_prefix_len: u8,
) -> Result<IpNet, WorkerPlanError> {
    let cluster = parse_net(slice, fields.0, value)?;
    if !subnet.contains(&cluster) {
        return Err(WorkerPlanError::BadPrefix { slice: slice.to_owned(), field: fields.1, value: value.to_owned() });
    }
    prefix::node_prefix(cluster, node_prefix_len, 0)
        .map_err(|source| WorkerPlanError::Prefix { slice: slice.to_owned(), source })?;
    Ok(cluster)
}

fn parse_net(slice: &str, field: &'static str, value: &str) -> Result<IpNet, WorkerPlanError> {
    let net: IpNet = value.trim().parse().map_err(|_| WorkerPlanError::BadPrefix {
        slice: slice.to_owned(),
        field,
        value: value.to_owned(),
    })?;
    prefix::check_aligned(net).map_err(|source| WorkerPlanError::Prefix { slice: slice.to_owned(), source })?;
    Ok(net)
}

/// A WorkerSlice spec parsed and checked once ([`TypedSpec::parse`]): what the plan's functions
/// take, so that no one of them parses a prefix, key or endpoint string again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedSpec {
    pub slice: String,
    pub cluster: String,
    /// The slice subnet, aligned.
    pub subnet: IpNet,
    /// This cluster's prefix: aligned, inside `subnet`, with room for at least one node prefix.
    pub cluster_prefix: IpNet,
    pub node_prefix_len: u8,
    /// The slice's second address family (dual-stack slices), checked like the first.
    pub secondary: Option<TypedFamily>,
    pub vni: u32,
    pub mtu: Option<u32>,
    /// Member namespaces as the node agents get them: slicenet's own namespaces left out (the
    /// SliceConfig validator refuses them too; the gateway pods join through their own
    /// namespace, by the annotation the worker sets), sorted, without repeats.
    pub namespaces: Vec<String>,
    /// The peer clusters' prefixes a node routes via the gateway: every peer prefix that is an
    /// aligned CIDR inside `subnet` and does not overlap `cluster_prefix`, sorted, without
    /// repeats. A peer without a usable key still counts: its route waits only on the gateway's
    /// address, and the gateway drops what it has no peer for.
    pub remote_prefixes: Vec<IpNet>,
    pub gateway: TypedGateway,
    /// The slice's class on the uplink, when it has a QoS profile and the cluster an uplink
    /// rate.
    pub qos: Option<slice_api::qos::SliceQos>,
    /// The DSCP class of the gateway's outer packets.
    pub dscp: Option<slice_api::qos::DscpClass>,
}

/// The second address family of a dual-stack slice in this cluster: its subnet (of the other
/// family than [`TypedSpec::subnet`]), the cluster's prefix of it and the node prefix length. A
/// node's prefix of it has the same index as its primary node prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypedFamily {
    pub subnet: IpNet,
    pub cluster_prefix: IpNet,
    pub node_prefix_len: u8,
}

/// What the gateway's configuration is made of: its port and keepalive and the peers it can
/// list. Parsed on its own ([`TypedGateway::parse`], which cannot fail) because the worker keeps
/// writing the gateway's configuration for a WorkerSlice whose prefixes are invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedGateway {
    pub port: u16,
    /// Seconds; 0 for none.
    pub persistent_keepalive: u16,
    /// The peers in cluster order, each with a usable key and prefix and a key no earlier peer
    /// has.
    pub peers: Vec<TypedPeer>,
    /// The peers left out and why, in the same order as they were considered.
    pub skipped: Vec<(String, PeerSkip)>,
}

/// A peer cluster as its gateway `[Peer]` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypedPeer {
    pub cluster: String,
    /// The prefix as published (host bits, if any, kept; [`gateway_config`] lists it truncated).
    pub prefix: IpNet,
    /// The peer's prefix of the secondary subnet (dual-stack slices), held by the same `[Peer]`.
    pub secondary_prefix: Option<IpNet>,
    pub public_key: Key,
    /// `None` when none is published or it is not an `IP:port` (see [`peer_endpoint`]).
    pub endpoint: Option<SocketAddr>,
    /// Which of the cluster's gateway replicas (0: the first; others from `peers[].replicas`):
    /// every replica is a `[Peer]` of its own holding the same prefix (a peer group).
    pub ordinal: u32,
}

/// Why a peer is left out of the gateway's configuration (one bad peer must not stop the
/// gateway from loading).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerSkip {
    /// The peer's gateway has not published a key yet (the normal state while it starts).
    #[error("no public key published yet")]
    NoPublicKey,
    #[error("public key {0:?} is not a 32-byte base64 key")]
    BadPublicKey(String),
    #[error("prefix {0:?} is not a CIDR")]
    BadPrefix(String),
    /// Its key is an earlier peer's (in cluster order): two `[Peer]`s cannot share a key.
    #[error("public key {key} is cluster {first}'s as well")]
    RepeatedKey { key: String, first: String },
}

impl TypedSpec {
    /// Parses and checks `spec`: the slice subnet and the cluster prefix are aligned CIDRs, the
    /// cluster prefix lies in the subnet, the node prefix length fits inside it; the peers as
    /// [`TypedGateway::parse`] takes them.
    ///
    /// # Errors
    /// [`WorkerPlanError::BadPrefix`] or [`WorkerPlanError::Prefix`], for the first field in
    /// that order that is wrong.
    pub fn parse(spec: &WorkerSliceSpec) -> Result<Self, WorkerPlanError> {
        let subnet = parse_net(&spec.slice, "sliceSubnet", &spec.slice_subnet)?;
        let cluster = parse_cluster_prefix(
            &spec.slice,
            subnet,
            ("clusterPrefix", "clusterPrefix (not inside sliceSubnet)"),
            &spec.cluster_prefix,
            spec.node_prefix_length,
        )?;

        let secondary = spec.secondary_family.as_ref().map(|f| parse_family(spec, subnet, f)).transpose()?;

        let outside = |p: &IpNet, subnet: IpNet, local: IpNet| {
            let overlaps_local = p.contains(&local.network()) || local.contains(&p.network());
            subnet.contains(p) && !overlaps_local
        };
        let mut remote: BTreeSet<IpNet> = spec
            .peers
            .iter()
            .filter_map(|peer| parse_net(&spec.slice, "peers[].prefix", &peer.prefix).ok())
            .filter(|p| outside(p, subnet, cluster))
            .collect();
        // The peers' prefixes of the secondary subnet, where the slice has one.
        if let Some(family) = &secondary {
            remote.extend(
                spec.peers
                    .iter()
                    .filter_map(|peer| peer.secondary_prefix.as_deref()?.trim().parse::<IpNet>().ok())
                    .filter(|p| outside(p, family.subnet, family.cluster_prefix)),
            );
        }
        let mut namespaces: Vec<String> = spec
            .namespaces
            .iter()
            .filter(|n| !slice_api::names::RESERVED_NAMESPACES.contains(&n.as_str()))
            .cloned()
            .collect();
        namespaces.sort();
        namespaces.dedup();
        Ok(Self {
            slice: spec.slice.clone(),
            cluster: spec.cluster.clone(),
            subnet,
            cluster_prefix: cluster,
            node_prefix_len: spec.node_prefix_length,
            secondary,
            vni: spec.vni,
            mtu: spec.mtu,
            namespaces,
            remote_prefixes: remote.into_iter().collect(),
            gateway: TypedGateway::parse(spec),
            qos: spec.qos.as_ref().and_then(|q| Some((q, q.uplink_kbps?))).map(|(q, uplink_kbps)| {
                slice_api::qos::SliceQos {
                    uplink_kbps,
                    guaranteed_kbps: q.profile.guaranteed_kbps.unwrap_or(0),
                    ceiling_kbps: q.profile.ceiling_kbps,
                    priority: q.profile.priority.min(slice_api::qos::MAX_PRIORITY),
                    gateway_port: spec.gateway.port,
                }
            }),
            dscp: spec.qos.as_ref().and_then(|q| q.profile.dscp_class),
        })
    }

    /// The node prefix `text` (an allocation as the WorkerSlice status holds it) when it is a
    /// node prefix of this cluster prefix: a CIDR of the node prefix length, aligned, inside.
    /// The one place an allocation's string is read.
    #[must_use]
    pub fn node_prefix(&self, text: &str) -> Option<IpNet> {
        let net: IpNet = text.trim().parse().ok()?;
        let valid = net.prefix_len() == self.node_prefix_len
            && net.network() == net.addr()
            && self.cluster_prefix.contains(&net);
        valid.then_some(net)
    }

    /// (slice subnet, cluster prefix) of each family, the primary first.
    #[must_use]
    pub fn families(&self) -> Vec<(IpNet, IpNet)> {
        std::iter::once((self.subnet, self.cluster_prefix))
            .chain(self.secondary.as_ref().map(|f| (f.subnet, f.cluster_prefix)))
            .collect()
    }

    /// Each node's prefix of the secondary family, from the nodes' `allocations` (the same
    /// index); empty for a single-family slice or allocations that do not parse.
    #[must_use]
    pub fn secondary_allocations(&self, allocations: &[NodeAllocation]) -> Vec<NodeAllocation> {
        allocations
            .iter()
            .filter_map(|a| {
                let primary = self.node_prefix(&a.prefix)?;
                let secondary = self.secondary_node_prefix(primary).ok()??;
                Some(NodeAllocation { node: a.node.clone(), prefix: secondary.to_string() })
            })
            .collect()
    }

    /// The secondary family's node prefix of the node whose primary node prefix is
    /// `node_prefix` (a valid one): the same index in the secondary cluster prefix. `None` for a
    /// single-family slice.
    ///
    /// # Errors
    /// [`WorkerPlanError::Prefix`] when the secondary cluster prefix has fewer node prefixes
    /// than that index.
    pub fn secondary_node_prefix(&self, node_prefix: IpNet) -> Result<Option<IpNet>, WorkerPlanError> {
        let Some(family) = &self.secondary else { return Ok(None) };
        let index = u64::try_from(self.node_index(node_prefix)).unwrap_or(u64::MAX);
        prefix::node_prefix(family.cluster_prefix, family.node_prefix_len, index)
            .map(Some)
            .map_err(|source| WorkerPlanError::Prefix { slice: self.slice.clone(), source })
    }

    /// The index of `node_prefix` (a valid one, see [`TypedSpec::node_prefix`]) in the cluster
    /// prefix.
    fn node_index(&self, node_prefix: IpNet) -> u128 {
        let host_bits = u32::from(node_prefix.max_prefix_len() - self.node_prefix_len);
        (to_u128(node_prefix.network()) - to_u128(self.cluster_prefix.network())) >> host_bits
    }
}

impl TypedGateway {
    /// The gateway settings and peers of `spec`. Peers are taken in cluster order; one is left
    /// out (into `skipped`, with the reason) when it has no public key, a key that is not a
    /// 32-byte base64 key, a prefix that is not a CIDR, or a key an earlier peer has.
    #[must_use]
    pub fn parse(spec: &WorkerSliceSpec) -> Self {
        let mut sorted: Vec<_> = spec.peers.iter().collect();
        sorted.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        let mut owners: BTreeMap<Key, &str> = BTreeMap::new();
        let mut peers = Vec::new();
        let mut skipped = Vec::new();
        for peer in sorted {
            let skip = |reason| (peer.cluster.clone(), reason);
            let Some(text) = peer.public_key.as_deref() else {
                skipped.push(skip(PeerSkip::NoPublicKey));
                continue;
            };
            let Ok(public_key) = text.parse::<Key>() else {
                skipped.push(skip(PeerSkip::BadPublicKey(text.to_owned())));
                continue;
            };
            let Ok(prefix) = peer.prefix.trim().parse::<IpNet>() else {
                skipped.push(skip(PeerSkip::BadPrefix(peer.prefix.clone())));
                continue;
            };
            if let Some(first) = owners.get(&public_key) {
                let reason = PeerSkip::RepeatedKey { key: public_key.to_base64(), first: (*first).to_owned() };
                skipped.push(skip(reason));
                continue;
            }
            owners.insert(public_key, &peer.cluster);
            // A secondary prefix that does not parse is left out (the primary one still works).
            let secondary_prefix = peer.secondary_prefix.as_deref().and_then(|p| p.trim().parse::<IpNet>().ok());
            peers.push(TypedPeer {
                cluster: peer.cluster.clone(),
                prefix,
                secondary_prefix,
                public_key,
                endpoint: peer_endpoint(peer.endpoint.as_deref()),
                ordinal: 0,
            });
            for replica in &peer.replicas {
                let name = format!("{} replica {}", peer.cluster, replica.ordinal);
                let Ok(public_key) = replica.public_key.parse::<Key>() else {
                    skipped.push((name, PeerSkip::BadPublicKey(replica.public_key.clone())));
                    continue;
                };
                if let Some(first) = owners.get(&public_key) {
                    let reason = PeerSkip::RepeatedKey { key: public_key.to_base64(), first: (*first).to_owned() };
                    skipped.push((name, reason));
                    continue;
                }
                owners.insert(public_key, &peer.cluster);
                peers.push(TypedPeer {
                    cluster: peer.cluster.clone(),
                    prefix,
                    secondary_prefix,
                    public_key,
                    endpoint: peer_endpoint(replica.endpoint.as_deref()),
                    ordinal: replica.ordinal,
                });
            }
        }
        Self { port: spec.gateway.port, persistent_keepalive: spec.gateway.persistent_keepalive, peers, skipped }
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Node prefixes for `nodes`, stable across calls: a node in `previous` keeps its prefix, a
/// node no longer in `nodes` gives its prefix back, and each new node (in name order) takes the
/// lowest free index. A `previous` entry that is not a valid node prefix of this cluster prefix
/// (edited by hand, or from another node prefix length) or that collides with an earlier one is
/// dropped and its node allocated afresh. The result is sorted by node name.
///
/// # Errors
/// [`WorkerPlanError::ClusterPrefixFull`] when the cluster prefix has fewer node prefixes than
/// `nodes` has nodes (nothing is allocated then).
pub fn allocate_node_prefixes(
    spec: &TypedSpec,
    nodes: &[String],
    previous: &[NodeAllocation],
) -> Result<Vec<NodeAllocation>, WorkerPlanError> {
    let cluster = spec.cluster_prefix;
    let len = spec.node_prefix_len;
    let wanted: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    let extra_bits = u32::from(len - cluster.prefix_len());
    let all: u128 = if extra_bits >= 128 { u128::MAX } else { 1u128 << extra_bits };
    // The slice's ClusterSetIP block (a whole number of node prefixes at the top of the
    // subnet) is never handed to a new node: its addresses are virtual services'.
    let block = prefix::cluster_set_ip_block(spec.subnet, cluster.prefix_len(), len);
    let in_block = |index: u128| -> bool {
        u64::try_from(index)
            .ok()
            .and_then(|i| prefix::node_prefix(cluster, len, i).ok())
            .is_some_and(|p| block.contains(&p))
    };
    let blocked: u128 = if cluster.contains(&block) {
        let bits = u32::from(block.prefix_len().min(len)).abs_diff(u32::from(len));
        if bits >= 128 { u128::MAX } else { 1u128 << bits }
    } else {
        0
    };
    let capacity = all.saturating_sub(blocked);
    if wanted.len() as u128 > capacity {
        return Err(WorkerPlanError::ClusterPrefixFull {
            slice: spec.slice.clone(),
            cluster_prefix: cluster,
            node_prefix_len: len,
            capacity,
            nodes: wanted.len(),
        });
    }

    let mut by_node: BTreeMap<&str, u128> = BTreeMap::new();
    let mut taken: BTreeSet<u128> = BTreeSet::new();
    for alloc in previous {
        if !wanted.contains(alloc.node.as_str()) || by_node.contains_key(alloc.node.as_str()) {
            continue;
        }
        if let Some(index) = spec.node_prefix(&alloc.prefix).map(|p| spec.node_index(p))
            && taken.insert(index)
        {
            by_node.insert(alloc.node.as_str(), index);
        }
    }
    let mut next: u128 = 0;
    for node in &wanted {
        if by_node.contains_key(node) {
            continue;
        }
        while taken.contains(&next) || in_block(next) {
            next += 1;
        }
        taken.insert(next);
        by_node.insert(node, next);
    }

    by_node
        .into_iter()
        .map(|(node, index)| {
            let index = u64::try_from(index).map_err(|_| WorkerPlanError::ClusterPrefixFull {
                slice: spec.slice.clone(),
                cluster_prefix: cluster,
                node_prefix_len: len,
                capacity: u128::from(u64::MAX),
                nodes: wanted.len(),
            })?;
            let net = prefix::node_prefix(cluster, len, index)
                .map_err(|source| WorkerPlanError::Prefix { slice: spec.slice.clone(), source })?;
            Ok(NodeAllocation { node: node.to_owned(), prefix: net.to_string() })
        })
        .collect()
}

/// The slice addresses of the cluster's live gateway replicas, per family of the slice, in
/// ordinal order (none until one runs and is ready).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayAddresses {
    pub primary: Vec<IpAddr>,
    pub secondary: Vec<IpAddr>,
    /// By replica address: the remote prefixes its gateway has no live peer for (its metrics
    /// say so: [`super::tunnels::replica_reach`]). Such a replica carries none of those
    /// prefixes' flows while another replica reaches them (issue 13).
    pub unreachable: BTreeMap<IpAddr, Vec<IpNet>>,
}

impl GatewayAddresses {
    /// One gateway's address of the primary family alone (single-family slices, one replica).
    #[must_use]
    pub fn primary(address: Option<IpAddr>) -> Self {
        Self { primary: address.into_iter().collect(), ..Self::default() }
    }
}

/// The slice as node `node` runs it: its node prefix, the other nodes of `nodes` that have a
/// node prefix as VXLAN peers, and — once a gateway replica's address (its pod's slice address)
/// is known and inside one of this cluster's node prefixes — every peer cluster's prefix via the
/// gateway replicas of its family: `via` the first usable one, `also_via` the further ones, in
/// the order of `gateway` (ordinal order), leaving out for a prefix the replicas that
/// [`GatewayAddresses::unreachable`] says do not reach it, unless none does. `namespaces` are the WorkerSlice's; the caller adds
/// the gateway's own namespace (see `objects::node_agent_configs`).
///
/// # Errors
/// [`WorkerPlanError::NodeNotAllocated`] when `node` has no valid allocation.
pub fn node_agent_slice(
    spec: &TypedSpec,
    node: &str,
    nodes: &[ClusterNode],
    allocations: &[NodeAllocation],
    gateway: GatewayAddresses,
) -> Result<SliceOnNode, WorkerPlanError> {
    let prefix_of = |name: &str| -> Option<IpNet> {
        allocations.iter().find(|a| a.node == name).and_then(|a| spec.node_prefix(&a.prefix))
    };
    let node_prefix = prefix_of(node)
        .ok_or_else(|| WorkerPlanError::NodeNotAllocated { slice: spec.slice.clone(), node: node.to_owned() })?;

    let mut peers: Vec<PeerNode> = nodes
        .iter()
        .filter(|n| n.name != node)
        .filter_map(|n| prefix_of(&n.name).map(|p| (n, p)))
        .map(|(n, p)| {
            Ok(PeerNode {
                name: n.name.clone(),
                underlay_address: n.underlay_address,
                node_prefix: p,
                secondary_node_prefix: spec.secondary_node_prefix(p)?,
            })
        })
        .collect::<Result<_, WorkerPlanError>>()?;
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers.dedup_by(|a, b| a.name == b.name);

    // The gateway must sit in a node prefix of this node or of a peer (of its family), and not
    // on a router address; anything else would be rejected by the node agent's validation.
    let secondary_node_prefix = spec.secondary_node_prefix(node_prefix)?;
    fn usable(gw: IpAddr, mut prefixes: impl Iterator<Item = IpNet>) -> bool {
        prefixes.any(|p| p.contains(&gw) && prefix::router_address(p) != gw)
    }
    let mut primary_via: Vec<IpAddr> = Vec::new();
    for gw in gateway.primary {
        if usable(gw, std::iter::once(node_prefix).chain(peers.iter().map(|p| p.node_prefix)))
            && !primary_via.contains(&gw)
        {
            primary_via.push(gw);
        }
    }
    let mut secondary_via: Vec<IpAddr> = Vec::new();
    for gw in gateway.secondary {
        if usable(gw, secondary_node_prefix.into_iter().chain(peers.iter().filter_map(|p| p.secondary_node_prefix)))
            && !secondary_via.contains(&gw)
        {
            secondary_via.push(gw);
        }
    }
    // Each remote prefix through the gateway replicas' addresses of its family: the first as
    // `via`, the further ones (issue 13) as `also_via`, in ordinal order; a replica with no live
    // peer for the prefix is left out while another has one.
    let remote_routes = spec
        .remote_prefixes
        .iter()
        .filter_map(|&prefix| {
            let vias = if spec.subnet.contains(&prefix) { &primary_via } else { &secondary_via };
            let reaching: Vec<IpAddr> = vias
                .iter()
                .copied()
                .filter(|gw| !gateway.unreachable.get(gw).is_some_and(|p| p.contains(&prefix)))
                .collect();
            let vias = if reaching.is_empty() { vias.clone() } else { reaching };
            let (&via, also) = vias.split_first()?;
            let mut route = RemoteRoute::new(prefix, via);
            route.also_via = also.to_vec();
            Some(route)
        })
        .collect();
    Ok(SliceOnNode {
        name: spec.slice.clone(),
        vni: spec.vni,
        slice_subnet: spec.subnet,
        node_prefix,
        secondary: secondary_node_prefix
            .zip(spec.secondary)
            .map(|(node_prefix, f)| FamilyOnNode { slice_subnet: f.subnet, node_prefix }),
        mtu: spec.mtu,
        namespaces: spec.namespaces.clone(),
        gateway_namespace: Some(GATEWAY_NAMESPACE.to_owned()),
        peers,
        remote_routes,
        services: Vec::new(),
        policies: Vec::new(),
        pods: Vec::new(),
        qos: spec.qos.clone(),
    })
}

/// The endpoint of a peer as the gateway's wg(8) parser accepts it: `IP:port` or
/// `[IPv6]:port`. Host names are not resolved by the gateway, so a peer published under a host
/// name is listed without an endpoint (it can still reach us, and we answer where it came from).
fn peer_endpoint(endpoint: Option<&str>) -> Option<SocketAddr> {
    endpoint.and_then(|e| e.trim().parse().ok())
}

/// The gateway's configuration, which `slice-gateway --config` reads (rendered with
/// [`WgConfig::render`]): `[Interface]` with the private key and `ListenPort =
/// spec.gateway.port`; one `[Peer]` per peer cluster that has published a public key (in
/// cluster order), commented with the cluster's name, with `AllowedIPs` = its cluster prefix,
/// `Endpoint` when it published an `IP:port`, and `PersistentKeepalive =
/// spec.gateway.persistentKeepalive` on every peer when that is not 0.
///
/// Keepalive on every peer, not only towards peers with an endpoint: the worker cannot tell
/// which side sits behind NAT (a cluster that publishes an address may still be behind a
/// stateful firewall), a keepalive towards a peer without a known endpoint costs nothing until
/// that peer has reached us, and from then on it keeps the peer's NAT mapping open from our side
/// as well. The price is one 32-byte packet per peer every interval.
///
/// Peers whose public key or prefix cannot be used (not a 32-byte base64 key, not a CIDR, a
/// repeated key) are not in `gateway.peers` ([`TypedGateway::parse`] keeps them in `skipped`),
/// so one bad peer does not stop the gateway from loading.
///
/// A peer cluster's further gateway replicas (issue 13) are `[Peer]`s of their own with the
/// same `AllowedIPs`: the gateway, run with `--multipath-probe-ms`, groups them.
#[must_use]
pub fn gateway_config(gateway: &TypedGateway, private_key: &Key) -> WgConfig {
    let keepalive = (gateway.persistent_keepalive != 0).then_some(gateway.persistent_keepalive);
    let peers = gateway
        .peers
        .iter()
        .map(|peer| WgPeer {
            comment: Some(if peer.ordinal == 0 {
                format!("cluster {}", peer.cluster)
            } else {
                format!("cluster {} replica {}", peer.cluster, peer.ordinal)
            }),
            public_key: peer.public_key,
            preshared_key: None,
            allowed_ips: std::iter::once(peer.prefix.trunc()).chain(peer.secondary_prefix.map(|p| p.trunc())).collect(),
            endpoint: peer.endpoint,
            persistent_keepalive: keepalive,
        })
        .collect();
    WgConfig {
        interface: WgInterface { private_key: Some(*private_key), listen_port: Some(gateway.port), fwmark: None },
        peers,
    }
}

/// The name of the gateway's TUN interface (and UAPI socket) for `slice`: `sg-<slice>` when it
/// fits the kernel's 15 bytes, else `sg-` and 12 hex digits of FNV-1a of the slice name.
#[must_use]
pub fn gateway_interface(slice: &str) -> String {
    let plain = format!("sg-{slice}");
    if plain.len() <= 15 {
        return plain;
    }
    let hash = slice_api::fnv::fnv1a_64(slice.bytes());
    format!("sg-{:012x}", hash & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use slice_api::crd::WorkerPeer;

    fn spec() -> WorkerSliceSpec {
        serde_json::from_value(serde_json::json!({
            "slice": "blue", "cluster": "c2", "sliceSubnet": "10.80.0.0/16",
            "clusterPrefix": "10.80.16.0/20", "nodePrefixLength": 26, "vni": 100,
            "namespaces": ["shop", "db", "shop"],
            "peers": [
                {"cluster": "c3", "prefix": "10.80.32.0/20"},
                {"cluster": "c1", "prefix": "10.80.0.0/20",
                 "publicKey": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=", "endpoint": "198.18.100.1:31820"},
            ],
        }))
        .unwrap()
    }

    fn typed(s: &WorkerSliceSpec) -> TypedSpec {
        TypedSpec::parse(s).unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn alloc(node: &str, prefix: &str) -> NodeAllocation {
        NodeAllocation { node: node.into(), prefix: prefix.into() }
    }

    #[test]
    fn new_nodes_take_the_lowest_free_index_in_name_order() {
        let a = allocate_node_prefixes(&typed(&spec()), &names(&["n2", "n1"]), &[]).unwrap();
        assert_eq!(a, [alloc("n1", "10.80.16.0/26"), alloc("n2", "10.80.16.64/26")]);
        // n1 goes, n3 comes: n2 keeps its prefix, n3 takes the freed index 0.
        let b = allocate_node_prefixes(&typed(&spec()), &names(&["n2", "n3"]), &a).unwrap();
        assert_eq!(b, [alloc("n2", "10.80.16.64/26"), alloc("n3", "10.80.16.0/26")]);
    }

    #[test]
    fn bad_previous_entries_are_reallocated() {
        let previous = [
            alloc("n1", "10.80.16.64/26"),
            alloc("n2", "10.80.16.64/26"), // collides with n1
            alloc("n3", "10.80.99.0/26"),  // outside the cluster prefix
            alloc("n4", "banana"),
        ];
        let a = allocate_node_prefixes(&typed(&spec()), &names(&["n1", "n2", "n3", "n4"]), &previous).unwrap();
        assert_eq!(
            a,
            [
                alloc("n1", "10.80.16.64/26"),
                alloc("n2", "10.80.16.0/26"),
                alloc("n3", "10.80.16.128/26"),
                alloc("n4", "10.80.16.192/26")
            ]
        );
    }

    #[test]
    fn a_full_cluster_prefix_is_an_error_not_a_partial_plan() {
        let mut s = spec();
        s.node_prefix_length = 22; // 4 node prefixes in a /20
        let nodes = names(&["a", "b", "c", "d", "e"]);
        let e = allocate_node_prefixes(&typed(&s), &nodes, &[]).unwrap_err();
        assert!(matches!(e, WorkerPlanError::ClusterPrefixFull { capacity: 4, nodes: 5, .. }), "{e}");
        assert!(e.to_string().contains("10.80.16.0/20 has room for 4 node prefixes of /22"), "{e}");
        assert_eq!(allocate_node_prefixes(&typed(&s), &nodes[..4], &[]).unwrap().len(), 4);
    }

    #[test]
    fn invalid_prefixes_are_named() {
        let mut s = spec();
        s.cluster_prefix = "10.80.16.1/20".into();
        assert!(TypedSpec::parse(&s).unwrap_err().to_string().contains("did you mean 10.80.16.0/20"));
        let mut s = spec();
        s.cluster_prefix = "10.81.0.0/20".into();
        assert!(TypedSpec::parse(&s).unwrap_err().to_string().contains("not inside sliceSubnet"));
        let mut s = spec();
        s.node_prefix_length = 20;
        assert!(matches!(TypedSpec::parse(&s), Err(WorkerPlanError::Prefix { .. })));
    }

    #[test]
    fn ipv6_slices_allocate_the_same_way() {
        let mut s = spec();
        s.slice_subnet = "fd00:80::/48".into();
        s.cluster_prefix = "fd00:80:0:1000::/52".into();
        s.node_prefix_length = 120;
        let a = allocate_node_prefixes(&typed(&s), &names(&["n1", "n2"]), &[]).unwrap();
        assert_eq!(a[1], alloc("n2", "fd00:80:0:1000::100/120"));
    }

    fn nodes() -> Vec<ClusterNode> {
        vec![
            ClusterNode::new("n1", "198.18.1.11".parse().unwrap()),
            ClusterNode::new("n2", "198.18.1.12".parse().unwrap()),
            ClusterNode::new("n3", "198.18.1.13".parse().unwrap()),
        ]
    }

    #[test]
    fn node_slice_has_peers_and_remote_routes_via_the_gateway() {
        let s = spec();
        let allocs = allocate_node_prefixes(&typed(&s), &names(&["n1", "n2", "n3"]), &[]).unwrap();
        let gw: IpAddr = "10.80.16.70".parse().unwrap(); // a pod on n2
        let on = node_agent_slice(&typed(&s), "n1", &nodes(), &allocs, GatewayAddresses::primary(Some(gw))).unwrap();
        assert_eq!(on.node_prefix.to_string(), "10.80.16.0/26");
        assert_eq!(on.namespaces, ["db", "shop"]);
        let peers: Vec<_> = on.peers.iter().map(|p| (p.name.as_str(), p.node_prefix.to_string())).collect();
        assert_eq!(peers, [("n2", "10.80.16.64/26".to_owned()), ("n3", "10.80.16.128/26".to_owned())]);
        let routes: Vec<_> = on.remote_routes.iter().map(|r| (r.prefix.to_string(), r.via)).collect();
        assert_eq!(routes, [("10.80.0.0/20".to_owned(), gw), ("10.80.32.0/20".to_owned(), gw)]);
        // What the worker hands out passes the node agent's own validation.
        passes_node_validation(on);
    }

    /// What the worker hands out for node n1 passes the node agent's own validation.
    fn passes_node_validation(on: SliceOnNode) {
        let config = slice_api::NodeAgentConfig {
            node: "n1".into(),
            underlay_address: "198.18.1.11".parse().unwrap(),
            underlay_mtu: 1500,
            state_dir: "/run/slicenet".into(),
            netns_dir: "/run/netns".into(),
            router_netns_prefix: "slice-".into(),
            vxlan_port: 4789,
            slices: vec![on],
        };
        config.validate().unwrap();
    }

    fn dual_spec() -> WorkerSliceSpec {
        let mut s = spec();
        s.secondary_family = Some(slice_api::crd::WorkerSliceFamily {
            slice_subnet: "fd00:80::/48".into(),
            cluster_prefix: "fd00:80:0:1000::/52".into(),
            node_prefix_length: 120,
        });
        s
    }

    #[test]
    fn a_dual_stack_slice_routes_and_tunnels_each_family_of_its_peers() {
        let mut s = dual_spec();
        for (p, v6) in s.peers.iter_mut().zip(["fd00:80::/52", "fd00:80:0:2000::/52"]) {
            p.secondary_prefix = Some(v6.into());
        }
        let t = typed(&s);
        let prefixes: Vec<String> = t.remote_prefixes.iter().map(ToString::to_string).collect();
        assert_eq!(prefixes.len(), 2 * s.peers.len(), "{prefixes:?}");
        assert!(prefixes.contains(&"fd00:80::/52".to_owned()), "{prefixes:?}");
        // The gateway's [Peer] of each cluster holds both of its prefixes.
        let text = gateway_config(&t.gateway, &PRIVATE.parse().unwrap()).render();
        assert!(text.contains("fd00:80:0:2000::/52"), "{text}");
        // The node routes each family through the gateway pod's address of that family.
        let allocs = allocate_node_prefixes(&t, &names(&["n1", "n2", "n3"]), &[]).unwrap();
        let gw4: IpAddr = "10.80.16.70".parse().unwrap();
        let gw6: IpAddr = "fd00:80:0:1000::146".parse().unwrap();
        let both = GatewayAddresses { primary: vec![gw4], secondary: vec![gw6], ..GatewayAddresses::default() };
        let on = node_agent_slice(&t, "n1", &nodes(), &allocs, both).unwrap();
        for r in &on.remote_routes {
            let want = if r.prefix.addr().is_ipv4() { gw4 } else { gw6 };
            assert_eq!(r.via, want, "{on:?}");
        }
        assert_eq!(on.remote_routes.len(), 2 * s.peers.len());
        passes_node_validation(on);
        // Without the gateway's IPv6 address yet, only the IPv4 routes.
        let v4_only = node_agent_slice(&t, "n1", &nodes(), &allocs, GatewayAddresses::primary(Some(gw4))).unwrap();
        assert!(v4_only.remote_routes.iter().all(|r| r.prefix.addr().is_ipv4()));
        assert_eq!(v4_only.remote_routes.len(), s.peers.len());
    }

    #[test]
    fn a_dual_stack_node_slice_has_each_node_prefix_in_both_families_at_one_index() {
        let s = dual_spec();
        let allocs = allocate_node_prefixes(&typed(&s), &names(&["n1", "n2", "n3"]), &[]).unwrap();
        let on = node_agent_slice(&typed(&s), "n2", &nodes(), &allocs, GatewayAddresses::default()).unwrap();
        let family = on.secondary.unwrap();
        assert_eq!(
            (on.node_prefix.to_string(), family.node_prefix.to_string()),
            ("10.80.16.64/26".to_owned(), "fd00:80:0:1000::100/120".to_owned())
        );
        assert_eq!(family.slice_subnet.to_string(), "fd00:80::/48");
        let peers: Vec<_> =
            on.peers.iter().map(|p| (p.name.as_str(), p.secondary_node_prefix.map(|n| n.to_string()))).collect();
        assert_eq!(
            peers,
            [("n1", Some("fd00:80:0:1000::/120".to_owned())), ("n3", Some("fd00:80:0:1000::200/120".to_owned()))]
        );
        let config = slice_api::NodeAgentConfig::example(vec![on]);
        config.validate().unwrap();
        // A single-family spec gives no secondary family anywhere.
        let single = node_agent_slice(&typed(&spec()), "n2", &nodes(), &allocs, GatewayAddresses::default()).unwrap();
        assert!(single.secondary.is_none() && single.peers.iter().all(|p| p.secondary_node_prefix.is_none()));
    }

    #[test]
    fn a_bad_secondary_family_is_refused_by_field() {
        let bad = |f: &dyn Fn(&mut slice_api::crd::WorkerSliceFamily)| {
            let mut s = dual_spec();
            f(s.secondary_family.as_mut().unwrap());
            TypedSpec::parse(&s).unwrap_err().to_string()
        };
        let e = bad(&|f| f.slice_subnet = "10.81.0.0/16".into());
        assert!(e.contains("secondaryFamily.sliceSubnet (of the same family as sliceSubnet)"), "{e}");
        let e = bad(&|f| f.cluster_prefix = "fd00:81::/52".into());
        assert!(e.contains("secondaryFamily.clusterPrefix (not inside"), "{e}");
        let e = bad(&|f| f.cluster_prefix = "banana".into());
        assert!(e.contains("secondaryFamily.clusterPrefix \"banana\" is not a CIDR"), "{e}");
        let e = bad(&|f| f.node_prefix_length = 40);
        assert!(e.starts_with("WorkerSlice blue: node prefix length /40 does not fit"), "{e}");
        // A secondary cluster prefix with fewer node prefixes than the node's index.
        let mut s = dual_spec();
        s.secondary_family.as_mut().unwrap().cluster_prefix = "fd00:80::/125".into();
        s.secondary_family.as_mut().unwrap().node_prefix_length = 126;
        let allocs = allocate_node_prefixes(&typed(&s), &names(&["n1", "n2", "n3"]), &[]).unwrap();
        let e =
            node_agent_slice(&typed(&s), "n3", &nodes(), &allocs, GatewayAddresses::default()).unwrap_err().to_string();
        assert!(e.contains("index 2 is out of range"), "{e}");
    }

    #[test]
    fn remote_routes_wait_for_a_usable_gateway_address() {
        let s = spec();
        let allocs = allocate_node_prefixes(&typed(&s), &names(&["n1", "n2"]), &[]).unwrap();
        let without = node_agent_slice(&typed(&s), "n1", &nodes(), &allocs, GatewayAddresses::default()).unwrap();
        assert!(without.remote_routes.is_empty());
        // On n3's old prefix (no allocation any more), on a router address, outside the cluster.
        for stale in ["10.80.16.130", "10.80.16.65", "10.80.40.2"] {
            let on = node_agent_slice(
                &typed(&s),
                "n1",
                &nodes(),
                &allocs,
                GatewayAddresses::primary(Some(stale.parse().unwrap())),
            )
            .unwrap();
            assert!(on.remote_routes.is_empty(), "{stale}");
        }
        assert!(matches!(
            node_agent_slice(&typed(&s), "n3", &nodes(), &allocs, GatewayAddresses::default()),
            Err(WorkerPlanError::NodeNotAllocated { .. })
        ));
    }

    /// Issue 13: with several live replicas every remote prefix goes via the first and also via
    /// the others of its family, in the order given (ordinal order); unusable or repeated
    /// addresses are left out, and what remains passes the node agent's validation.
    #[test]
    fn remote_routes_go_via_every_live_replica_in_ordinal_order() {
        let s = spec();
        let allocs = allocate_node_prefixes(&typed(&s), &names(&["n1", "n2"]), &[]).unwrap();
        let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
        // Replica 0 on n2, replica 1 on n1, a stale address (n3's old prefix), a repeat.
        let gateways = GatewayAddresses {
            primary: vec![ip("10.80.16.70"), ip("10.80.16.5"), ip("10.80.16.130"), ip("10.80.16.70")],
            ..GatewayAddresses::default()
        };
        let on = node_agent_slice(&typed(&s), "n1", &nodes(), &allocs, gateways).unwrap();
        assert_eq!(on.remote_routes.len(), 2);
        for r in &on.remote_routes {
            assert_eq!((r.via, r.also_via.as_slice()), (ip("10.80.16.70"), &[ip("10.80.16.5")][..]), "{r:?}");
        }
        passes_node_validation(on);
        // One replica: no `alsoVia`, as before replicas.
        let one =
            node_agent_slice(&typed(&s), "n1", &nodes(), &allocs, GatewayAddresses::primary(Some(ip("10.80.16.5"))))
                .unwrap();
        assert!(one.remote_routes.iter().all(|r| r.also_via.is_empty()));
    }

    /// Issue 13: a replica whose gateway has no live peer for a remote prefix carries none of
    /// that prefix's flows while another replica has one; when no replica reaches a prefix,
    /// every replica stays (nothing better to route it to).
    #[test]
    fn a_replica_without_a_live_peer_for_a_prefix_leaves_that_prefix_only() {
        let s = spec();
        let t = typed(&s);
        let allocs = allocate_node_prefixes(&t, &names(&["n1", "n2"]), &[]).unwrap();
        let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
        let (r0, r1) = (ip("10.80.16.70"), ip("10.80.16.5"));
        let (first, second) = (t.remote_prefixes[0], t.remote_prefixes[1]);
        let routes = |unreachable: BTreeMap<IpAddr, Vec<IpNet>>| -> Vec<(IpNet, IpAddr, Vec<IpAddr>)> {
            let gateways = GatewayAddresses { primary: vec![r0, r1], secondary: Vec::new(), unreachable };
            let on = node_agent_slice(&t, "n1", &nodes(), &allocs, gateways).unwrap();
            on.remote_routes.into_iter().map(|r| (r.prefix, r.via, r.also_via)).collect()
        };
        // Replica 0 does not reach the first prefix's cluster: that prefix via replica 1 alone;
        // the second via both, as before.
        assert_eq!(routes(BTreeMap::from([(r0, vec![first])])), [(first, r1, vec![]), (second, r0, vec![r1])]);
        // Neither reaches the first: both stay for it.
        assert_eq!(
            routes(BTreeMap::from([(r0, vec![first]), (r1, vec![first])])),
            [(first, r0, vec![r1]), (second, r0, vec![r1])]
        );
    }

    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const OTHER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    /// Issue 13: a peer cluster's further replicas are `[Peer]`s of their own with its prefix;
    /// a replica whose key is bad or repeated is skipped, named, and the rest still load.
    #[test]
    fn gateway_config_lists_every_replica_of_a_peer_with_its_prefix() {
        use slice_api::crd::PeerReplica;
        let third = Key([7; 32]).to_base64();
        let mut s = spec();
        s.peers.retain(|p| p.cluster == "c1");
        s.peers[0].replicas = vec![
            PeerReplica { ordinal: 1, public_key: OTHER.into(), endpoint: Some("198.18.100.2:31821".into()) },
            PeerReplica { ordinal: 2, public_key: "bad".into(), endpoint: None },
            PeerReplica { ordinal: 3, public_key: OTHER.into(), endpoint: None },
            PeerReplica { ordinal: 4, public_key: third.clone(), endpoint: None },
        ];
        let g = TypedGateway::parse(&s);
        let listed: Vec<(String, u32)> = g.peers.iter().map(|p| (p.cluster.clone(), p.ordinal)).collect();
        assert_eq!(listed, [("c1".to_owned(), 0), ("c1".to_owned(), 1), ("c1".to_owned(), 4)]);
        assert_eq!(
            g.skipped,
            [
                ("c1 replica 2".to_owned(), PeerSkip::BadPublicKey("bad".into())),
                ("c1 replica 3".to_owned(), PeerSkip::RepeatedKey { key: OTHER.into(), first: "c1".into() }),
            ]
        );
        // Our own key must not be c1's (the gateway drops a peer with its own public key).
        let text = gateway_config(&g, &Key([9; 32])).render();
        assert!(text.contains("# cluster c1 replica 1\n[Peer]\nPublicKey = "), "{text}");
        let parsed = slice_gateway::config::parse(&text).unwrap();
        assert_eq!(parsed.peers.len(), 3);
        let prefix: IpNet = "10.80.0.0/20".parse().unwrap();
        assert!(parsed.peers.iter().all(|p| p.allowed_ips == [prefix]), "one prefix, three holders");
        assert_eq!(parsed.peers[1].endpoint, Some("198.18.100.2:31821".parse().unwrap()));
        // The gateway groups them (multipath) instead of moving the prefix to the last one.
        let mut state = slice_gateway::peers::PeerState::new(51820, 1);
        state.set_multipath(true);
        let fx = state.apply(&parsed);
        assert!(fx.warnings.is_empty(), "{:?}", fx.warnings);
        assert_eq!(state.routes().lookup("10.80.1.1".parse().unwrap()).map(Vec::len), Some(3));
    }

    #[test]
    fn gateway_config_lists_peers_with_keys() {
        let mut s = spec();
        s.peers.push(WorkerPeer {
            cluster: "c4".into(),
            prefix: "10.80.48.0/20".into(),
            secondary_prefix: None,
            public_key: Some(OTHER.into()),
            endpoint: Some("gw.example:31820".into()),
            replicas: Vec::new(),
        });
        let text = gateway_config(&TypedGateway::parse(&s), &PRIVATE.parse().unwrap()).render();
        assert_eq!(
            text,
            format!(
                "[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 51820\n\n# cluster c1\n[Peer]\n\
                 PublicKey = HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=\nAllowedIPs = 10.80.0.0/20\n\
                 Endpoint = 198.18.100.1:31820\nPersistentKeepalive = 25\n\n# cluster c4\n[Peer]\n\
                 PublicKey = {OTHER}\nAllowedIPs = 10.80.48.0/20\nPersistentKeepalive = 25\n"
            )
        );
        // slice-gateway reads it: both peers, AllowedIPs, the endpoint, keepalive.
        let parsed = slice_gateway::config::parse(&text).unwrap();
        assert_eq!(
            WgConfig::parse(&text).unwrap(),
            gateway_config(&TypedGateway::parse(&s), &PRIVATE.parse().unwrap())
        );
        assert_eq!(parsed.listen_port, Some(51820));
        assert_eq!(parsed.private_key.map(|k| k.to_base64()).as_deref(), Some(PRIVATE));
        assert_eq!(parsed.peers.len(), 2);
        assert_eq!(parsed.peers[0].endpoint, Some("198.18.100.1:31820".parse().unwrap()));
        assert_eq!(parsed.peers[1].endpoint, None);
        assert_eq!(parsed.peers[1].allowed_ips, ["10.80.48.0/20".parse::<IpNet>().unwrap()]);
        assert!(parsed.peers.iter().all(|p| p.persistent_keepalive == Some(25)));
        s.gateway.persistent_keepalive = 0;
        s.gateway.port = 4500;
        let text = gateway_config(&TypedGateway::parse(&s), &PRIVATE.parse().unwrap()).render();
        assert!(!text.contains("PersistentKeepalive"));
        assert!(text.contains("ListenPort = 4500\n"));
    }

    #[test]
    fn gateway_config_skips_unusable_peers() {
        let mut s = spec();
        s.peers = vec![
            WorkerPeer {
                cluster: "a".into(),
                prefix: "10.80.0.0/20".into(),
                secondary_prefix: None,
                public_key: Some("short".into()),
                endpoint: None,
                replicas: Vec::new(),
            },
            WorkerPeer {
                cluster: "b".into(),
                prefix: "nope".into(),
                secondary_prefix: None,
                public_key: Some(OTHER.into()),
                endpoint: None,
                replicas: Vec::new(),
            },
            WorkerPeer {
                cluster: "c".into(),
                prefix: "10.80.32.0/20".into(),
                secondary_prefix: None,
                public_key: Some(OTHER.into()),
                endpoint: None,
                replicas: Vec::new(),
            },
            WorkerPeer {
                cluster: "d".into(),
                prefix: "10.80.48.0/20".into(),
                secondary_prefix: None,
                public_key: Some(OTHER.into()),
                endpoint: None,
                replicas: Vec::new(),
            },
        ];
        let text = gateway_config(&TypedGateway::parse(&s), &PRIVATE.parse().unwrap()).render();
        assert_eq!(text.matches("[Peer]").count(), 1, "{text}");
        assert!(text.contains("# cluster c\n"));
    }

    #[test]
    fn a_good_spec_parses_into_typed_values() {
        let mut s = spec();
        s.mtu = Some(1400);
        s.namespaces.push("slicenet-system".into());
        s.peers.push(WorkerPeer {
            cluster: "c0".into(),
            prefix: "10.80.16.0/24".into(), // overlaps this cluster: no route
            secondary_prefix: None,
            public_key: Some(OTHER.into()),
            endpoint: Some("[fd00::1]:4500".into()),
            replicas: Vec::new(),
        });
        let t = typed(&s);
        assert_eq!((t.slice.as_str(), t.cluster.as_str()), ("blue", "c2"));
        assert_eq!(t.subnet, "10.80.0.0/16".parse::<IpNet>().unwrap());
        assert_eq!(t.cluster_prefix, "10.80.16.0/20".parse::<IpNet>().unwrap());
        assert_eq!((t.node_prefix_len, t.vni, t.mtu), (26, 100, Some(1400)));
        assert_eq!(t.namespaces, ["db", "shop"]);
        let routes: Vec<String> = t.remote_prefixes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.80.0.0/20", "10.80.32.0/20"]);
        assert_eq!((t.gateway.port, t.gateway.persistent_keepalive), (51820, 25));
        let peers: Vec<_> = t.gateway.peers.iter().map(|p| (p.cluster.as_str(), p.prefix.to_string())).collect();
        assert_eq!(peers, [("c0", "10.80.16.0/24".to_owned()), ("c1", "10.80.0.0/20".to_owned())]);
        assert_eq!(t.gateway.peers[0].endpoint, Some("[fd00::1]:4500".parse().unwrap()));
        assert_eq!(t.gateway.peers[0].public_key, OTHER.parse::<Key>().unwrap());
        assert_eq!(t.gateway.peers[1].endpoint, Some("198.18.100.1:31820".parse().unwrap()));
        assert_eq!(t.gateway.skipped, [("c3".to_owned(), PeerSkip::NoPublicKey)]);
        // Allocations are read against the typed cluster prefix and node prefix length.
        assert_eq!(t.node_prefix(" 10.80.16.64/26 "), Some("10.80.16.64/26".parse().unwrap()));
        for bad in ["10.80.16.65/26", "10.80.16.64/25", "10.80.99.0/26", "banana", ""] {
            assert_eq!(t.node_prefix(bad), None, "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named_as_before() {
        let bad = |edit: fn(&mut WorkerSliceSpec)| {
            let mut s = spec();
            edit(&mut s);
            TypedSpec::parse(&s).unwrap_err()
        };
        let e = bad(|s| s.slice_subnet = "10.80.0.0/33".into());
        assert_eq!(e.to_string(), "WorkerSlice blue: sliceSubnet \"10.80.0.0/33\" is not a CIDR");
        let e = bad(|s| s.slice_subnet = "10.80.0.1/16".into());
        assert!(matches!(&e, WorkerPlanError::Prefix { slice, .. } if slice == "blue"), "{e}");
        assert!(e.to_string().contains("did you mean 10.80.0.0/16"), "{e}");
        let e = bad(|s| s.cluster_prefix = "nope".into());
        assert_eq!(e.to_string(), "WorkerSlice blue: clusterPrefix \"nope\" is not a CIDR");
        let e = bad(|s| s.cluster_prefix = "10.80.16.1/20".into());
        assert!(e.to_string().contains("did you mean 10.80.16.0/20"), "{e}");
        let e = bad(|s| s.cluster_prefix = "10.81.0.0/20".into());
        assert_eq!(
            e.to_string(),
            "WorkerSlice blue: clusterPrefix (not inside sliceSubnet) \"10.81.0.0/20\" is not a CIDR"
        );
        let e = bad(|s| s.node_prefix_length = 19);
        assert!(matches!(e, WorkerPlanError::Prefix { .. }), "{e}");
        let e = bad(|s| s.node_prefix_length = 33);
        assert!(matches!(e, WorkerPlanError::Prefix { .. }), "{e}");
        // The subnet is checked first: two bad fields name the subnet.
        let e = bad(|s| {
            s.slice_subnet = "x".into();
            s.cluster_prefix = "y".into();
        });
        assert!(matches!(e, WorkerPlanError::BadPrefix { field: "sliceSubnet", .. }), "{e}");
        // Peers never make a spec invalid.
        let mut s = spec();
        s.peers[0].prefix = "garbage".into();
        s.peers[1].public_key = Some("garbage".into());
        let t = typed(&s);
        assert_eq!(t.remote_prefixes, ["10.80.0.0/20".parse::<IpNet>().unwrap()]);
        assert!(t.gateway.peers.is_empty());
    }

    #[test]
    fn unusable_peers_are_skipped_with_their_reason() {
        let peer = |cluster: &str, prefix: &str, key: Option<&str>| WorkerPeer {
            cluster: cluster.into(),
            prefix: prefix.into(),
            secondary_prefix: None,
            public_key: key.map(Into::into),
            endpoint: Some("gw.example:31820".into()),
            replicas: Vec::new(),
        };
        let mut s = spec();
        s.peers = vec![
            peer("e", "10.80.64.0/20", Some(OTHER)), // the same key as "c", later in cluster order
            peer("a", "10.80.0.0/20", Some("short")),
            peer("b", "nope", Some(OTHER)),
            peer("c", " 10.80.32.1/20 ", Some(OTHER)),
            peer("d", "10.80.48.0/20", None),
        ];
        let g = TypedGateway::parse(&s);
        assert_eq!(g.peers.len(), 1);
        assert_eq!(g.peers[0].cluster, "c");
        assert_eq!(g.peers[0].prefix, "10.80.32.1/20".parse::<IpNet>().unwrap());
        assert_eq!(g.peers[0].endpoint, None, "host names are not resolved");
        assert_eq!(
            g.skipped,
            [
                ("a".to_owned(), PeerSkip::BadPublicKey("short".into())),
                ("b".to_owned(), PeerSkip::BadPrefix("nope".into())),
                ("d".to_owned(), PeerSkip::NoPublicKey),
                ("e".to_owned(), PeerSkip::RepeatedKey { key: OTHER.into(), first: "c".into() }),
            ]
        );
        assert_eq!(g.skipped[3].1.to_string(), format!("public key {OTHER} is cluster c's as well"));
        // The gateway lists the truncated prefix; the misaligned one gets no route.
        let text = gateway_config(&g, &PRIVATE.parse().unwrap()).render();
        assert!(text.contains("AllowedIPs = 10.80.32.0/20\n"), "{text}");
        let routes: Vec<String> = typed(&s).remote_prefixes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.80.0.0/20", "10.80.48.0/20", "10.80.64.0/20"]);
    }

    #[test]
    fn interface_names_fit_the_kernel() {
        assert_eq!(gateway_interface("blue"), "sg-blue");
        assert_eq!(gateway_interface("abcdefghijkl"), "sg-abcdefghijkl");
        let long = gateway_interface("a-very-long-slice-name");
        assert_eq!(long.len(), 15);
        assert_ne!(long, gateway_interface("a-very-long-slice-namf"));
    }

    /// One step of a random history: a node set to allocate for.
    fn node_sets() -> impl Strategy<Value = Vec<BTreeSet<u8>>> {
        proptest::collection::vec(proptest::collection::btree_set(0u8..40, 0..16), 1..12)
    }

    /// A spec whose every string field is arbitrary (often close to valid).
    fn any_spec() -> impl Strategy<Value = WorkerSliceSpec> {
        let text = || {
            prop_oneof![
                ".*",
                "(10|fd00:)[0-9a-f.:]{0,12}/[0-9]{1,3}",
                Just("10.80.0.0/16".to_owned()),
                Just("10.80.16.0/20".to_owned()),
            ]
        };
        let key = || proptest::option::of(prop_oneof![".*", "[A-Za-z0-9+/]{43}=", Just(OTHER.to_owned())]);
        let peer =
            (text(), text(), key(), proptest::option::of(".*")).prop_map(|(cluster, prefix, public_key, endpoint)| {
                WorkerPeer { cluster, prefix, secondary_prefix: None, public_key, endpoint, replicas: Vec::new() }
            });
        (text(), text(), any::<u8>(), proptest::collection::vec(peer, 0..6)).prop_map(
            |(subnet, cluster, len, peers)| {
                let mut s = spec();
                s.slice_subnet = subnet;
                s.cluster_prefix = cluster;
                s.node_prefix_length = len;
                s.peers = peers;
                s
            },
        )
    }

    proptest! {
        /// Parsing never panics; a parsed spec's gateway accounts for every peer exactly once,
        /// with distinct keys, and its routes lie in the subnet outside the cluster prefix.
        #[test]
        fn parse_never_panics(s in any_spec()) {
            let g = TypedGateway::parse(&s);
            prop_assert_eq!(g.peers.len() + g.skipped.len(), s.peers.len());
            let keys: BTreeSet<Key> = g.peers.iter().map(|p| p.public_key).collect();
            prop_assert_eq!(keys.len(), g.peers.len());
            if let Ok(t) = TypedSpec::parse(&s) {
                prop_assert_eq!(&t.gateway, &g);
                prop_assert!(t.subnet.contains(&t.cluster_prefix));
                for p in &t.remote_prefixes {
                    prop_assert!(t.subnet.contains(p) && !p.contains(&t.cluster_prefix.network()));
                }
                let _ = allocate_node_prefixes(&t, &["n1".to_owned()], &[]);
            }
        }

        /// Over any sequence of node sets    proptest! {
        /// Over any sequence of node sets: every node gets a distinct, valid node prefix; a node
        /// present in two consecutive steps keeps its prefix; the result does not depend on the
        /// order of `nodes`.
        #[test]
        fn node_prefixes_are_stable_and_disjoint(history in node_sets(), rotate in 0usize..16) {
            let s = typed(&spec()); // /20 in /26: 64 node prefixes, more than 40 nodes
            let mut previous: Vec<NodeAllocation> = Vec::new();
            for set in history {
                let nodes: Vec<String> = set.iter().map(|n| format!("node-{n}")).collect();
                let mut shuffled = nodes.clone();
                if !shuffled.is_empty() {
                    let k = rotate % shuffled.len();
                    shuffled.rotate_left(k);
                }
                let now = allocate_node_prefixes(&s, &shuffled, &previous).unwrap();
                prop_assert_eq!(&now, &allocate_node_prefixes(&s, &nodes, &previous).unwrap());
                let got: Vec<&str> = now.iter().map(|a| a.node.as_str()).collect();
                let mut want: Vec<&str> = nodes.iter().map(String::as_str).collect();
                want.sort_unstable();
                prop_assert_eq!(got, want);
                let prefixes: BTreeSet<&str> = now.iter().map(|a| a.prefix.as_str()).collect();
                prop_assert_eq!(prefixes.len(), now.len());
                for a in &now {
                    prop_assert!(s.node_prefix(&a.prefix).is_some());
                    if let Some(old) = previous.iter().find(|p| p.node == a.node) {
                        prop_assert_eq!(&old.prefix, &a.prefix);
                    }
                }
                previous = now;
            }
        }
    }
}
