//! The worker's decisions that need no API: node prefixes, each node's share of a slice (what its
//! node agent runs) and the gateway's wg(8) configuration. Pure and deterministic, so the lab
//! (`slicectl lab up -f`) and the Kubernetes worker share them.
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
use slice_api::node::{PeerNode, RemoteRoute, SliceOnNode};
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

fn parse_net(slice: &str, field: &'static str, value: &str) -> Result<IpNet, WorkerPlanError> {
    let net: IpNet = value.trim().parse().map_err(|_| WorkerPlanError::BadPrefix {
        slice: slice.to_owned(),
        field,
        value: value.to_owned(),
    })?;
    prefix::check_aligned(net).map_err(|source| WorkerPlanError::Prefix { slice: slice.to_owned(), source })?;
    Ok(net)
}

/// The slice subnet and the cluster prefix of a WorkerSlice, parsed and checked: the cluster
/// prefix lies in the subnet, the node prefix length fits inside it.
///
/// # Errors
/// [`WorkerPlanError::BadPrefix`] or [`WorkerPlanError::Prefix`].
pub fn parse_prefixes(spec: &WorkerSliceSpec) -> Result<(IpNet, IpNet), WorkerPlanError> {
    let subnet = parse_net(&spec.slice, "sliceSubnet", &spec.slice_subnet)?;
    let cluster = parse_net(&spec.slice, "clusterPrefix", &spec.cluster_prefix)?;
    if !subnet.contains(&cluster) {
        return Err(WorkerPlanError::BadPrefix {
            slice: spec.slice.clone(),
            field: "clusterPrefix (not inside sliceSubnet)",
            value: spec.cluster_prefix.clone(),
        });
    }
    // Index 0 exists exactly when the node prefix length fits the cluster prefix.
    prefix::node_prefix(cluster, spec.node_prefix_length, 0)
        .map_err(|source| WorkerPlanError::Prefix { slice: spec.slice.clone(), source })?;
    Ok((subnet, cluster))
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The index of `node_prefix` in `cluster` when it is a valid node prefix there.
fn node_index(cluster: IpNet, node_prefix_len: u8, node_prefix: &str) -> Option<u128> {
    let net: IpNet = node_prefix.trim().parse().ok()?;
    if net.prefix_len() != node_prefix_len || net.network() != net.addr() || !cluster.contains(&net) {
        return None;
    }
    let host_bits = u32::from(net.max_prefix_len() - node_prefix_len);
    Some((to_u128(net.network()) - to_u128(cluster.network())) >> host_bits)
}

/// Node prefixes for `nodes`, stable across calls: a node in `previous` keeps its prefix, a
/// node no longer in `nodes` gives its prefix back, and each new node (in name order) takes the
/// lowest free index. A `previous` entry that is not a valid node prefix of this cluster prefix
/// (edited by hand, or from another node prefix length) or that collides with an earlier one is
/// dropped and its node allocated afresh. The result is sorted by node name.
///
/// # Errors
/// When the WorkerSlice's prefixes are invalid, or [`WorkerPlanError::ClusterPrefixFull`] when
/// the cluster prefix has fewer node prefixes than `nodes` has nodes (nothing is allocated then).
pub fn allocate_node_prefixes(
    spec: &WorkerSliceSpec,
    nodes: &[String],
    previous: &[NodeAllocation],
) -> Result<Vec<NodeAllocation>, WorkerPlanError> {
    let (_, cluster) = parse_prefixes(spec)?;
    let len = spec.node_prefix_length;
    let wanted: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    let extra_bits = u32::from(len - cluster.prefix_len());
    let capacity: u128 = if extra_bits >= 128 { u128::MAX } else { 1u128 << extra_bits };
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
        if let Some(index) = node_index(cluster, len, &alloc.prefix)
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
        while taken.contains(&next) {
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

/// The slice as node `node` runs it: its node prefix, the other nodes of `nodes` that have a
/// node prefix as VXLAN peers, and — once `gateway_address` (the gateway pod's slice address) is
/// known and inside one of this cluster's node prefixes — every peer cluster's prefix via the
/// gateway. `namespaces` are the WorkerSlice's; the caller adds the gateway's own namespace
/// (see `objects::node_agent_configs`).
///
/// # Errors
/// When the prefixes are invalid or `node` has no allocation.
pub fn node_agent_slice(
    spec: &WorkerSliceSpec,
    node: &str,
    nodes: &[ClusterNode],
    allocations: &[NodeAllocation],
    gateway_address: Option<IpAddr>,
) -> Result<SliceOnNode, WorkerPlanError> {
    let (subnet, cluster) = parse_prefixes(spec)?;
    let prefix_of = |name: &str| -> Option<IpNet> {
        allocations.iter().find(|a| a.node == name).and_then(|a| {
            node_index(cluster, spec.node_prefix_length, &a.prefix)?;
            a.prefix.trim().parse().ok()
        })
    };
    let node_prefix = prefix_of(node)
        .ok_or_else(|| WorkerPlanError::NodeNotAllocated { slice: spec.slice.clone(), node: node.to_owned() })?;

    let mut peers: Vec<PeerNode> = nodes
        .iter()
        .filter(|n| n.name != node)
        .filter_map(|n| {
            prefix_of(&n.name).map(|p| PeerNode {
                name: n.name.clone(),
                underlay_address: n.underlay_address,
                node_prefix: p,
            })
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers.dedup_by(|a, b| a.name == b.name);

    // The gateway must sit in a node prefix of this node or of a peer, and not on a router
    // address; anything else would be rejected by the node agent's validation.
    let gateway = gateway_address.filter(|gw| {
        std::iter::once(node_prefix)
            .chain(peers.iter().map(|p| p.node_prefix))
            .any(|p| p.contains(gw) && prefix::router_address(p) != *gw)
    });
    let mut remote_routes = Vec::new();
    if let Some(via) = gateway {
        let mut seen = BTreeSet::new();
        for peer in &spec.peers {
            let Ok(prefix) = parse_net(&spec.slice, "peers[].prefix", &peer.prefix) else { continue };
            let overlaps_local = prefix.contains(&cluster.network()) || cluster.contains(&prefix.network());
            if subnet.contains(&prefix) && !overlaps_local && seen.insert(prefix) {
                remote_routes.push(RemoteRoute { prefix, via });
            }
        }
        remote_routes.sort();
    }

    // slicenet's own namespaces are never members (the SliceConfig validator refuses them too):
    // the gateway pods join through their own namespace, by the annotation the worker sets.
    let mut namespaces: Vec<String> = spec
        .namespaces
        .iter()
        .filter(|n| !slice_api::names::RESERVED_NAMESPACES.contains(&n.as_str()))
        .cloned()
        .collect();
    namespaces.sort();
    namespaces.dedup();
    Ok(SliceOnNode {
        name: spec.slice.clone(),
        vni: spec.vni,
        slice_subnet: subnet,
        node_prefix,
        mtu: spec.mtu,
        namespaces,
        gateway_namespace: Some(GATEWAY_NAMESPACE.to_owned()),
        peers,
        remote_routes,
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
/// repeated key) are left out, so one bad peer does not stop the gateway from loading.
#[must_use]
pub fn gateway_config(spec: &WorkerSliceSpec, private_key: &Key) -> WgConfig {
    let mut peers: Vec<_> = spec.peers.iter().collect();
    peers.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    let mut keys = BTreeSet::new();
    let mut wg_peers = Vec::new();
    for peer in peers {
        let Some(Ok(public_key)) = peer.public_key.as_deref().map(str::parse::<Key>) else { continue };
        let Ok(prefix) = peer.prefix.trim().parse::<IpNet>() else { continue };
        if !keys.insert(public_key) {
            continue;
        }
        wg_peers.push(WgPeer {
            comment: Some(format!("cluster {}", peer.cluster)),
            public_key,
            preshared_key: None,
            allowed_ips: vec![prefix.trunc()],
            endpoint: peer_endpoint(peer.endpoint.as_deref()),
            persistent_keepalive: (spec.gateway.persistent_keepalive != 0).then_some(spec.gateway.persistent_keepalive),
        });
    }
    WgConfig {
        interface: WgInterface { private_key: Some(*private_key), listen_port: Some(spec.gateway.port), fwmark: None },
        peers: wg_peers,
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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn alloc(node: &str, prefix: &str) -> NodeAllocation {
        NodeAllocation { node: node.into(), prefix: prefix.into() }
    }

    #[test]
    fn new_nodes_take_the_lowest_free_index_in_name_order() {
        let a = allocate_node_prefixes(&spec(), &names(&["n2", "n1"]), &[]).unwrap();
        assert_eq!(a, [alloc("n1", "10.80.16.0/26"), alloc("n2", "10.80.16.64/26")]);
        // n1 goes, n3 comes: n2 keeps its prefix, n3 takes the freed index 0.
        let b = allocate_node_prefixes(&spec(), &names(&["n2", "n3"]), &a).unwrap();
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
        let a = allocate_node_prefixes(&spec(), &names(&["n1", "n2", "n3", "n4"]), &previous).unwrap();
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
        let e = allocate_node_prefixes(&s, &nodes, &[]).unwrap_err();
        assert!(matches!(e, WorkerPlanError::ClusterPrefixFull { capacity: 4, nodes: 5, .. }), "{e}");
        assert!(e.to_string().contains("10.80.16.0/20 has room for 4 node prefixes of /22"), "{e}");
        assert_eq!(allocate_node_prefixes(&s, &nodes[..4], &[]).unwrap().len(), 4);
    }

    #[test]
    fn invalid_prefixes_are_named() {
        let mut s = spec();
        s.cluster_prefix = "10.80.16.1/20".into();
        assert!(allocate_node_prefixes(&s, &[], &[]).unwrap_err().to_string().contains("did you mean 10.80.16.0/20"));
        let mut s = spec();
        s.cluster_prefix = "10.81.0.0/20".into();
        assert!(allocate_node_prefixes(&s, &[], &[]).unwrap_err().to_string().contains("not inside sliceSubnet"));
        let mut s = spec();
        s.node_prefix_length = 20;
        assert!(matches!(allocate_node_prefixes(&s, &[], &[]), Err(WorkerPlanError::Prefix { .. })));
    }

    #[test]
    fn ipv6_slices_allocate_the_same_way() {
        let mut s = spec();
        s.slice_subnet = "fd00:80::/48".into();
        s.cluster_prefix = "fd00:80:0:1000::/52".into();
        s.node_prefix_length = 120;
        let a = allocate_node_prefixes(&s, &names(&["n1", "n2"]), &[]).unwrap();
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
        let allocs = allocate_node_prefixes(&s, &names(&["n1", "n2", "n3"]), &[]).unwrap();
        let gw: IpAddr = "10.80.16.70".parse().unwrap(); // a pod on n2
        let on = node_agent_slice(&s, "n1", &nodes(), &allocs, Some(gw)).unwrap();
        assert_eq!(on.node_prefix.to_string(), "10.80.16.0/26");
        assert_eq!(on.namespaces, ["db", "shop"]);
        let peers: Vec<_> = on.peers.iter().map(|p| (p.name.as_str(), p.node_prefix.to_string())).collect();
        assert_eq!(peers, [("n2", "10.80.16.64/26".to_owned()), ("n3", "10.80.16.128/26".to_owned())]);
        let routes: Vec<_> = on.remote_routes.iter().map(|r| (r.prefix.to_string(), r.via)).collect();
        assert_eq!(routes, [("10.80.0.0/20".to_owned(), gw), ("10.80.32.0/20".to_owned(), gw)]);
        // What the worker hands out passes the node agent's own validation.
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

    #[test]
    fn remote_routes_wait_for_a_usable_gateway_address() {
        let s = spec();
        let allocs = allocate_node_prefixes(&s, &names(&["n1", "n2"]), &[]).unwrap();
        let without = node_agent_slice(&s, "n1", &nodes(), &allocs, None).unwrap();
        assert!(without.remote_routes.is_empty());
        // On n3's old prefix (no allocation any more), on a router address, outside the cluster.
        for stale in ["10.80.16.130", "10.80.16.65", "10.80.40.2"] {
            let on = node_agent_slice(&s, "n1", &nodes(), &allocs, Some(stale.parse().unwrap())).unwrap();
            assert!(on.remote_routes.is_empty(), "{stale}");
        }
        assert!(matches!(
            node_agent_slice(&s, "n3", &nodes(), &allocs, None),
            Err(WorkerPlanError::NodeNotAllocated { .. })
        ));
    }

    const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const OTHER: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    #[test]
    fn gateway_config_lists_peers_with_keys() {
        let mut s = spec();
        s.peers.push(WorkerPeer {
            cluster: "c4".into(),
            prefix: "10.80.48.0/20".into(),
            public_key: Some(OTHER.into()),
            endpoint: Some("gw.example:31820".into()),
        });
        let text = gateway_config(&s, &PRIVATE.parse().unwrap()).render();
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
        assert_eq!(WgConfig::parse(&text).unwrap(), gateway_config(&s, &PRIVATE.parse().unwrap()));
        assert_eq!(parsed.listen_port, Some(51820));
        assert_eq!(parsed.private_key.map(|k| k.to_base64()).as_deref(), Some(PRIVATE));
        assert_eq!(parsed.peers.len(), 2);
        assert_eq!(parsed.peers[0].endpoint, Some("198.18.100.1:31820".parse().unwrap()));
        assert_eq!(parsed.peers[1].endpoint, None);
        assert_eq!(parsed.peers[1].allowed_ips, ["10.80.48.0/20".parse::<IpNet>().unwrap()]);
        assert!(parsed.peers.iter().all(|p| p.persistent_keepalive == Some(25)));
        s.gateway.persistent_keepalive = 0;
        s.gateway.port = 4500;
        let text = gateway_config(&s, &PRIVATE.parse().unwrap()).render();
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
                public_key: Some("short".into()),
                endpoint: None,
            },
            WorkerPeer { cluster: "b".into(), prefix: "nope".into(), public_key: Some(OTHER.into()), endpoint: None },
            WorkerPeer {
                cluster: "c".into(),
                prefix: "10.80.32.0/20".into(),
                public_key: Some(OTHER.into()),
                endpoint: None,
            },
            WorkerPeer {
                cluster: "d".into(),
                prefix: "10.80.48.0/20".into(),
                public_key: Some(OTHER.into()),
                endpoint: None,
            },
        ];
        let text = gateway_config(&s, &PRIVATE.parse().unwrap()).render();
        assert_eq!(text.matches("[Peer]").count(), 1, "{text}");
        assert!(text.contains("# cluster c\n"));
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

    proptest! {
        /// Over any sequence of node sets: every node gets a distinct, valid node prefix; a node
        /// present in two consecutive steps keeps its prefix; the result does not depend on the
        /// order of `nodes`.
        #[test]
        fn node_prefixes_are_stable_and_disjoint(history in node_sets(), rotate in 0usize..16) {
            let s = spec(); // /20 in /26: 64 node prefixes, more than 40 nodes
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
                    prop_assert!(node_index("10.80.16.0/20".parse().unwrap(), 26, &a.prefix).is_some());
                    if let Some(old) = previous.iter().find(|p| p.node == a.node) {
                        prop_assert_eq!(&old.prefix, &a.prefix);
                    }
                }
                previous = now;
            }
        }
    }
}
