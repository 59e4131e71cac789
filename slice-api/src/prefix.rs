//! Prefix arithmetic: a slice subnet is split into `max_clusters` equal cluster prefixes, each
//! cluster prefix into node prefixes of `node_prefix_len`. The first usable address of a node
//! prefix is that node's slice-router address. IPv4 and IPv6 follow the same rules.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a prefix could not be carved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The subnet has host bits set (e.g. `10.80.0.1/16`).
    #[error("{0} is not aligned: did you mean {1}?")]
    Misaligned(IpNet, IpNet),
    /// `max_clusters` is zero or not a power of two.
    #[error("maxClusters {0} must be a power of two (1, 2, 4, 8, …)")]
    NotPowerOfTwo(u32),
    /// The split does not fit the address family.
    #[error("{subnet} cannot be split into {parts} parts: the parts would be longer than /{max}")]
    TooSmall { subnet: IpNet, parts: u64, max: u8 },
    /// The index is beyond the number of parts.
    #[error("index {index} is out of range: {subnet} has {parts} parts of /{len}")]
    OutOfRange { subnet: IpNet, index: u64, parts: u64, len: u8 },
    /// A node prefix length shorter than (or equal to) the cluster prefix.
    #[error("node prefix length /{node} does not fit in cluster prefix {cluster}")]
    NodeLenDoesNotFit { node: u8, cluster: IpNet },
}

/// Checks that `net` has no host bits set.
///
/// # Errors
/// [`PrefixError::Misaligned`] naming the aligned prefix.
pub fn check_aligned(net: IpNet) -> Result<(), PrefixError> {
    if net.network() == net.addr() { Ok(()) } else { Err(PrefixError::Misaligned(net, net.trunc())) }
}

/// The cluster prefix length for a subnet split into `max_clusters` parts.
///
/// # Errors
/// When `max_clusters` is not a power of two or the parts would not fit the family.
pub fn cluster_prefix_len(subnet: IpNet, max_clusters: u32) -> Result<u8, PrefixError> {
    if max_clusters == 0 || !max_clusters.is_power_of_two() {
        return Err(PrefixError::NotPowerOfTwo(max_clusters));
    }
    let bits = max_clusters.trailing_zeros() as u8;
    let len = subnet.prefix_len() + bits;
    if len > subnet.max_prefix_len() {
        return Err(PrefixError::TooSmall { subnet, parts: u64::from(max_clusters), max: subnet.max_prefix_len() });
    }
    Ok(len)
}

/// The `index`-th sub-prefix of length `len` inside `parent`.
///
/// # Errors
/// When `len` is shorter than the parent's or `index` is beyond the last sub-prefix.
pub fn nth_subnet(parent: IpNet, len: u8, index: u64) -> Result<IpNet, PrefixError> {
    check_aligned(parent)?;
    if len < parent.prefix_len() || len > parent.max_prefix_len() {
        return Err(PrefixError::NodeLenDoesNotFit { node: len, cluster: parent });
    }
    let extra = u32::from(len - parent.prefix_len());
    let parts: u128 = if extra >= 128 { u128::MAX } else { 1u128 << extra };
    if u128::from(index) >= parts {
        return Err(PrefixError::OutOfRange {
            subnet: parent,
            index,
            parts: u64::try_from(parts).unwrap_or(u64::MAX),
            len,
        });
    }
    let host_bits = u32::from(parent.max_prefix_len() - len);
    let offset = u128::from(index) << host_bits;
    let base = ip_to_u128(parent.network()) + offset;
    let addr = u128_to_ip(base, parent.network());
    Ok(IpNet::new(addr, len).expect("length checked above"))
}

/// Cluster prefix number `index` of a slice subnet split into `max_clusters`.
///
/// # Errors
/// See [`cluster_prefix_len`] and [`nth_subnet`].
pub fn cluster_prefix(subnet: IpNet, max_clusters: u32, index: u64) -> Result<IpNet, PrefixError> {
    let len = cluster_prefix_len(subnet, max_clusters)?;
    nth_subnet(subnet, len, index)
}

/// The block of a slice subnet reserved for ClusterSetIPs (the virtual addresses of imported
/// services, the same in every member cluster): the topmost block of length
/// `max(node_prefix_len - 2, cluster_prefix_len + 1)`, i.e. four node prefixes, or half a cluster
/// prefix when a cluster prefix holds fewer than eight. It lies in the last cluster prefix,
/// which the planner hands out only when the slice has `maxClusters` clusters (it takes the
/// lowest free index), and it is always a whole number of node prefixes, which the worker of
/// that cluster never allocates to nodes.
///
/// `cluster_prefix_len` and `node_prefix_len` are those of a valid address plan:
/// `subnet.prefix_len() <= cluster_prefix_len < node_prefix_len <= max - 2`.
#[must_use]
pub fn cluster_set_ip_block(subnet: IpNet, cluster_prefix_len: u8, node_prefix_len: u8) -> IpNet {
    let len = node_prefix_len.saturating_sub(2).max(cluster_prefix_len + 1).min(node_prefix_len);
    last_subnet(subnet, len)
}

/// The last sub-prefix of length `len` (not shorter than the parent's) inside `parent`.
fn last_subnet(parent: IpNet, len: u8) -> IpNet {
    let max = parent.max_prefix_len();
    let len = len.clamp(parent.prefix_len(), max);
    let span = |l: u8| -> u128 {
        let bits = u32::from(max - l);
        if bits >= 128 { u128::MAX } else { (1u128 << bits) - 1 }
    };
    // The parent's last address minus the block's size, plus one: the block's first address.
    let base = ip_to_u128(parent.network()) + span(parent.prefix_len()) - span(len);
    IpNet::new(u128_to_ip(base, parent.network()), len).expect("length clamped to the family")
}

/// Node prefix number `index` of a cluster prefix.
///
/// # Errors
/// When the node prefix length does not fit or `index` is out of range.
pub fn node_prefix(cluster: IpNet, node_prefix_len: u8, index: u64) -> Result<IpNet, PrefixError> {
    if node_prefix_len <= cluster.prefix_len() {
        return Err(PrefixError::NodeLenDoesNotFit { node: node_prefix_len, cluster });
    }
    nth_subnet(cluster, node_prefix_len, index)
}

/// The node's slice-router address: the first usable address of its node prefix.
pub fn router_address(node_prefix: IpNet) -> IpAddr {
    offset_addr(node_prefix.network(), 1)
}

/// Host addresses a node prefix gives to pods, in order: everything after the router address,
/// without the IPv4 broadcast address.
pub fn pod_addresses(node_prefix: IpNet) -> impl Iterator<Item = IpAddr> {
    let network = node_prefix.network();
    pod_offsets(node_prefix).map(move |i| offset_addr(network, i))
}

/// The offsets (from the prefix's network address) of [`pod_addresses`], as a range: what an
/// allocator needs to walk a prefix without listing it.
#[must_use]
pub fn pod_offsets(node_prefix: IpNet) -> std::ops::Range<u128> {
    let host_bits = u32::from(node_prefix.max_prefix_len() - node_prefix.prefix_len());
    let size: u128 = if host_bits >= 128 { u128::MAX } else { 1u128 << host_bits };
    let end = match node_prefix {
        IpNet::V4(_) => size.saturating_sub(1), // skip broadcast
        IpNet::V6(_) => size,
    };
    2..end.max(2)
}

/// The address at `offset` from the network address of `prefix`.
#[must_use]
pub fn address_at(prefix: IpNet, offset: u128) -> IpAddr {
    offset_addr(prefix.network(), offset)
}

/// The offset of `ip` from the network address of `prefix`, or `None` when `ip` is outside it.
#[must_use]
pub fn offset_in(prefix: IpNet, ip: IpAddr) -> Option<u128> {
    prefix.contains(&ip).then(|| ip_to_u128(ip) - ip_to_u128(prefix.network()))
}

fn offset_addr(base: IpAddr, offset: u128) -> IpAddr {
    u128_to_ip(ip_to_u128(base).wrapping_add(offset), base)
}

fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_ip(value: u128, family: IpAddr) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4((value as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(value.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn design_example() {
        let subnet = net("10.80.0.0/16");
        assert_eq!(cluster_prefix_len(subnet, 16).unwrap(), 20);
        assert_eq!(cluster_prefix(subnet, 16, 0).unwrap(), net("10.80.0.0/20"));
        assert_eq!(cluster_prefix(subnet, 16, 1).unwrap(), net("10.80.16.0/20"));
        let c = cluster_prefix(subnet, 16, 15).unwrap();
        assert_eq!(c, net("10.80.240.0/20"));
        assert_eq!(node_prefix(c, 26, 1).unwrap(), net("10.80.240.64/26"));
        assert_eq!(router_address(net("10.80.240.64/26")), "10.80.240.65".parse::<IpAddr>().unwrap());
        let pods: Vec<_> = pod_addresses(net("10.80.0.0/29")).collect();
        assert_eq!(pods.len(), 5);
        assert_eq!(pods[0], "10.80.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(pods[4], "10.80.0.6".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv6_follows_the_same_rules() {
        let c = cluster_prefix(net("fd00:80::/48"), 16, 2).unwrap();
        assert_eq!(c, net("fd00:80:0:2000::/52"));
        let n = node_prefix(c, 64, 3).unwrap();
        assert_eq!(n, net("fd00:80:0:2003::/64"));
        assert_eq!(router_address(n), "fd00:80:0:2003::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn errors_name_the_problem() {
        let e = cluster_prefix(net("10.80.0.1/16"), 16, 0).unwrap_err();
        assert_eq!(e.to_string(), "10.80.0.1/16 is not aligned: did you mean 10.80.0.0/16?");
        assert!(matches!(cluster_prefix_len(net("10.0.0.0/16"), 3), Err(PrefixError::NotPowerOfTwo(3))));
        assert!(matches!(cluster_prefix_len(net("10.0.0.0/30"), 8), Err(PrefixError::TooSmall { .. })));
        assert!(matches!(cluster_prefix(net("10.0.0.0/16"), 4, 4), Err(PrefixError::OutOfRange { .. })));
        assert!(matches!(node_prefix(net("10.0.0.0/20"), 20, 0), Err(PrefixError::NodeLenDoesNotFit { .. })));
    }

    #[test]
    fn the_cluster_set_ip_block_is_the_top_of_the_subnet() {
        // /16 in 16 clusters of /20, nodes /26: four node prefixes at the very top.
        assert_eq!(cluster_set_ip_block(net("10.80.0.0/16"), 20, 26), net("10.80.255.0/24"));
        // One cluster: the same, inside that cluster's prefix.
        assert_eq!(cluster_set_ip_block(net("10.80.0.0/16"), 16, 26), net("10.80.255.0/24"));
        // A cluster prefix of two node prefixes: half of the last one, a whole node prefix.
        assert_eq!(cluster_set_ip_block(net("10.80.0.0/24"), 25, 26), net("10.80.0.192/26"));
        assert_eq!(cluster_set_ip_block(net("fd00:80::/48"), 52, 120), net("fd00:80:0:ffff:ffff:ffff:ffff:fc00/118"));
        let block = cluster_set_ip_block(net("10.80.0.0/16"), 20, 26);
        let last_cluster = cluster_prefix(net("10.80.0.0/16"), 16, 15).unwrap();
        assert!(last_cluster.contains(&block));
        for i in 0..15 {
            let c = cluster_prefix(net("10.80.0.0/16"), 16, i).unwrap();
            assert!(!c.contains(&block.network()), "only the last cluster prefix holds it");
        }
    }

    proptest! {
        #[test]
        fn node_prefixes_are_disjoint_and_inside(a in 0u64..64, b in 0u64..64, c in 0u64..16) {
            let cluster = cluster_prefix(net("10.80.0.0/16"), 16, c).unwrap();
            let pa = node_prefix(cluster, 26, a).unwrap();
            let pb = node_prefix(cluster, 26, b).unwrap();
            prop_assert!(cluster.contains(&pa));
            prop_assert_eq!(a == b, pa == pb);
            if a != b {
                prop_assert!(!pa.contains(&pb.network()) && !pb.contains(&pa.network()));
            }
        }
    }
}
