//! Remote prefixes reached through several gateway replicas (issue 13): nexthop objects and
//! groups in the router namespace, planned purely from the configuration, what the router shows
//! ([`ObservedMultipath`]) and which local replicas the agent's probes found dead.
//!
//! A remote route with one gateway is not planned here: it keeps its plain route (`via
//! <gateway>`, or `via <peer router> dev <vxlan> onlink`). One with several gets:
//! - a nexthop per gateway: `via <pod address> dev <its veth>` for a replica on this node (the
//!   device is the one the CNI plugin's /32 route to the pod uses; a nexthop needs a device),
//!   `via <peer router> dev <vxlan> onlink` for one on a peer node;
//! - a group of the live ones (every replica the agent's probes did not find dead: the local
//!   ones asked on their veth, the ones on a peer node over the VXLAN, so a peer node that is
//!   lost as a whole — its agent with it, its router left as it was — is left out within a
//!   second too, long before the worker sees the pod gone); when none is live, of all (nothing
//!   better exists), and the route `<prefix> nhid <group>` in the main table;
//! - a second group of this node's live replicas only and the route `<prefix> nhid <it> table
//!   92`, which the rule `iif <vxlan> lookup 92` gives the packets that came over the VXLAN: a
//!   packet another node already hashed to this node's replica is not hashed again (two gateway
//!   nodes would bounce it). With no live local replica there is no such route, and the lookup
//!   falls through to the main table;
//! - `fib_multipath_hash_policy = 1` (both families): flows are hashed on their 5-tuple.
//!
//! Ids, per router namespace (one namespace per slice, so they are per slice): the gateways of
//! all the slice's multi-gateway routes, sorted (IPv4 first, then by address), take
//! [`GATEWAY_NEXTHOP_BASE`] + their index; the routes, sorted by prefix, take
//! [`GROUP_BASE`] + their index for the main table's group and [`LOCAL_GROUP_BASE`] + their
//! index for table 92's. They depend on the configuration alone, so a restarted agent finds
//! its own objects; liveness changes a group's members, never an id. Nexthops with ids in
//! [`GATEWAY_NEXTHOP_BASE`]..[`OUR_IDS_END`] are ours; any other is left alone, as are routes
//! through them and rules other than [`VXLAN_RULE_PRIORITY`]'s.
//!
//! Order: gateway nexthops, groups, routes, rules are created or replaced first; then what is no
//! longer wanted is deleted, rules, routes, groups, gateways, in that order (a group is never
//! emptied under its route by the kernel's cascade, a route never points at nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane::{Nexthop, NexthopKind, NexthopRoute, Rule};
use ipnet::IpNet;
use slice_api::node::{RemoteRoute, SliceOnNode};
use slice_api::prefix::router_address;

use super::Action;

/// First id of the gateway nexthops.
pub const GATEWAY_NEXTHOP_BASE: u32 = 1_000_000;
/// First id of the main table's groups.
pub const GROUP_BASE: u32 = 2_000_000;
/// First id of table 92's groups (this node's live replicas).
pub const LOCAL_GROUP_BASE: u32 = 3_000_000;
/// End (exclusive) of our nexthop ids.
pub const OUR_IDS_END: u32 = 4_000_000;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// The table of remote prefixes via this node's live replicas only.
pub const LOCAL_REPLICAS_TABLE: u32 = 92;
/// Priority of the rule `iif <vxlan> lookup 92` (before the main table's 32766).
pub const VXLAN_RULE_PRIORITY: u32 = 1000;
/// The multipath hash sysctls: 1 = layer 4 (addresses, protocol, ports).
pub const MULTIPATH_SYSCTLS: [&str; 2] = ["net/ipv4/fib_multipath_hash_policy", "net/ipv6/fib_multipath_hash_policy"];

/// True for a nexthop id this agent manages.
pub fn is_ours(id: u32) -> bool {
    (GATEWAY_NEXTHOP_BASE..OUR_IDS_END).contains(&id)
}

/// Where one gateway replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// On this node: via its pod address, on its veth.
    Local,
    /// On a peer node: via that node's router, on the VXLAN.
    Peer { router: IpAddr },
}

/// One gateway replica of a multi-gateway route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    pub address: IpAddr,
    /// Its nexthop's id.
    pub id: u32,
    pub reach: Reach,
}

/// A remote prefix reached through several gateway replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipathSpec {
    pub remote: RemoteRoute,
    /// The main table's group.
    pub group: u32,
    /// Table 92's group.
    pub local_group: u32,
    /// In [`RemoteRoute::gateways`] order; a gateway on no node of the slice is left out.
    pub gateways: Vec<GatewaySpec>,
}

/// The slice's multi-gateway routes, sorted by prefix, with their ids.
pub fn specs(slice: &SliceOnNode) -> Vec<MultipathSpec> {
    let mut routes: Vec<&RemoteRoute> = slice.remote_routes.iter().filter(|r| !r.also_via.is_empty()).collect();
    routes.sort();
    let addresses: BTreeSet<IpAddr> = routes.iter().flat_map(|r| r.gateways()).collect();
    let id_of = |a: &IpAddr| {
        let index = addresses.iter().position(|x| x == a).expect("collected above");
        GATEWAY_NEXTHOP_BASE + u32::try_from(index).expect("few gateways")
    };
    routes
        .into_iter()
        .enumerate()
        .map(|(index, remote)| {
            let index = u32::try_from(index).expect("few routes");
            let family = slice.family_of(remote.prefix);
            let mut gateways = Vec::new();
            for address in remote.gateways() {
                let Some(family) = &family else { continue };
                let reach = if family.node_prefix.contains(&address) {
                    Reach::Local
                } else if let Some((_, peer)) = family.peers.iter().find(|(_, p)| p.contains(&address)) {
                    Reach::Peer { router: router_address(*peer) }
                } else {
                    continue;
                };
                if !gateways.iter().any(|g: &GatewaySpec| g.address == address) {
                    gateways.push(GatewaySpec { address, id: id_of(&address), reach });
                }
            }
            MultipathSpec {
                remote: remote.clone(),
                group: GROUP_BASE + index,
                local_group: LOCAL_GROUP_BASE + index,
                gateways,
            }
        })
        .collect()
}

/// Every gateway replica of `slice`'s multi-gateway routes, on this node or a peer: the ones
/// the agent probes.
pub fn all_gateways(slice: &SliceOnNode) -> BTreeSet<IpAddr> {
    specs(slice).iter().flat_map(|s| s.gateways.iter()).map(|g| g.address).collect()
}

/// What a router namespace shows of multipath routing. Looked into only when the slice has a
/// multi-gateway route or the router's hash policy says it had one (the agent sets it with the
/// first nexthop and puts it back to 0 once the last one of ours is gone), so a router that
/// never had one costs nothing more to observe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedMultipath {
    /// Values of [`MULTIPATH_SYSCTLS`].
    pub sysctls: BTreeMap<String, String>,
    /// Whether the objects below were looked at.
    pub looked: bool,
    /// Every nexthop object.
    pub nexthops: Vec<Nexthop>,
    /// Routes through nexthop objects, every table, both families.
    pub routes: Vec<NexthopRoute>,
    /// `iif … lookup …` rules, both families.
    pub rules: Vec<Rule>,
    /// The device of each pod's /32 (or /128) route: the device a local replica's nexthop uses.
    pub local_host_devs: BTreeMap<IpAddr, String>,
}

impl ObservedMultipath {
    /// Whether the objects must be looked at: multipath wanted, or the hash policy on.
    pub fn worth_looking(wanted: bool, sysctls: &BTreeMap<String, String>) -> bool {
        wanted || MULTIPATH_SYSCTLS.iter().any(|k| sysctls.get(*k).is_some_and(|v| v != "0"))
    }
}

/// What the plan wants in the router for the multi-gateway routes, given liveness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Wanted {
    nexthops: Vec<Nexthop>,
    routes: Vec<NexthopRoute>,
    rules: Vec<Rule>,
    /// Routes with a local gateway whose pod is not on the node yet.
    pending: Vec<RemoteRoute>,
}

pub(super) fn wanted(
    specs: &[MultipathSpec],
    vxlan: &str,
    observed: &ObservedMultipath,
    dead: &BTreeSet<IpAddr>,
) -> Wanted {
    let mut out = Wanted::default();
    let mut gateways: BTreeMap<u32, Nexthop> = BTreeMap::new();
    let mut families = BTreeSet::new();
    for spec in specs {
        // Each gateway's nexthop, when it can be made.
        let mut usable = Vec::new();
        let mut missing = false;
        for g in &spec.gateways {
            let kind = match &g.reach {
                Reach::Local => match observed.local_host_devs.get(&g.address) {
                    Some(dev) => NexthopKind::Gateway { gateway: g.address, dev: dev.clone(), onlink: false },
                    None => {
                        missing = true;
                        continue;
                    }
                },
                Reach::Peer { router } => {
                    NexthopKind::Gateway { gateway: *router, dev: vxlan.to_owned(), onlink: true }
                }
            };
            gateways.insert(g.id, Nexthop { id: g.id, kind });
            usable.push(g);
        }
        if missing {
            out.pending.push(spec.remote.clone());
        }
        let live: Vec<u32> = usable.iter().filter(|g| !dead.contains(&g.address)).map(|g| g.id).collect();
        let mut members = if live.is_empty() { usable.iter().map(|g| g.id).collect() } else { live };
        members.sort_unstable();
        if members.is_empty() {
            continue;
        }
        out.nexthops.push(Nexthop { id: spec.group, kind: NexthopKind::Group { members } });
        out.routes.push(NexthopRoute { dst: spec.remote.prefix, table: MAIN_TABLE, nhid: spec.group });
        families.insert(spec.remote.prefix.addr().is_ipv6());
        let mut local: Vec<u32> =
            usable.iter().filter(|g| g.reach == Reach::Local && !dead.contains(&g.address)).map(|g| g.id).collect();
        local.sort_unstable();
        if !local.is_empty() {
            out.nexthops.push(Nexthop { id: spec.local_group, kind: NexthopKind::Group { members: local } });
            out.routes.push(NexthopRoute {
                dst: spec.remote.prefix,
                table: LOCAL_REPLICAS_TABLE,
                nhid: spec.local_group,
            });
        }
    }
    let mut all: Vec<Nexthop> = gateways.into_values().collect();
    all.append(&mut out.nexthops);
    out.nexthops = all;
    out.rules = families
        .into_iter()
        .map(|v6| Rule { v6, priority: VXLAN_RULE_PRIORITY, iif: vxlan.to_owned(), table: LOCAL_REPLICAS_TABLE })
        .collect();
    out
}

fn same_kind(a: &NexthopKind, b: &NexthopKind) -> bool {
    matches!(
        (a, b),
        (NexthopKind::Gateway { .. }, NexthopKind::Gateway { .. })
            | (NexthopKind::Group { .. }, NexthopKind::Group { .. })
    )
}

/// The prefixes that get a route through a group in the main table.
impl Wanted {
    pub(super) fn main_prefixes(&self) -> BTreeSet<IpNet> {
        self.routes.iter().filter(|r| r.table == MAIN_TABLE).map(|r| r.dst).collect()
    }
}

/// The multipath part of a slice's plan (`want` from [`wanted`]), appended to `actions`. `subnets` are the slice's
/// subnets (routes outside them are not ours); `plain` the prefixes that get a plain route
/// (one gateway): their route through a nexthop is not deleted, the plain route's replace
/// takes it over. Returns the routes waiting for a local gateway pod.
pub(super) fn plan(
    slice: &str,
    specs: &[MultipathSpec],
    want: Wanted,
    subnets: &[IpNet],
    plain: &BTreeSet<IpNet>,
    observed: &ObservedMultipath,
    actions: &mut Vec<Action>,
) -> Vec<RemoteRoute> {
    let s = || slice.to_owned();
    let have_nexthops: BTreeMap<u32, &Nexthop> = observed.nexthops.iter().map(|n| (n.id, n)).collect();

    // Create and replace: gateways and groups (the wanted list has the gateways first), routes,
    // rules.
    for nh in &want.nexthops {
        match have_nexthops.get(&nh.id) {
            Some(have) if *have == nh => {}
            Some(have) if !same_kind(&have.kind, &nh.kind) => {
                actions.push(Action::DeleteNexthop { slice: s(), id: nh.id });
                actions.push(Action::ReplaceNexthop { slice: s(), nexthop: nh.clone() });
            }
            _ => actions.push(Action::ReplaceNexthop { slice: s(), nexthop: nh.clone() }),
        }
    }
    for route in &want.routes {
        if !observed.routes.contains(route) {
            actions.push(Action::ReplaceNexthopRoute { slice: s(), route: route.clone() });
        }
    }
    for rule in &want.rules {
        if !observed.rules.contains(rule) {
            actions.push(Action::AddRule { slice: s(), rule: rule.clone() });
        }
    }

    // Delete what is ours and no longer wanted.
    for rule in &observed.rules {
        if rule.priority == VXLAN_RULE_PRIORITY && rule.table == LOCAL_REPLICAS_TABLE && !want.rules.contains(rule) {
            actions.push(Action::DeleteRule { slice: s(), rule: rule.clone() });
        }
    }
    for route in &observed.routes {
        let ours = is_ours(route.nhid)
            && (route.table == MAIN_TABLE || route.table == LOCAL_REPLICAS_TABLE)
            && subnets.iter().any(|n| n.contains(&route.dst));
        let superseded = route.table == MAIN_TABLE && plain.contains(&route.dst);
        let replaced = want.routes.iter().any(|w| w.dst == route.dst && w.table == route.table);
        if ours && !superseded && !replaced {
            actions.push(Action::DeleteNexthopRoute { slice: s(), route: route.clone() });
        }
    }
    let wanted_ids: BTreeSet<u32> = want.nexthops.iter().map(|n| n.id).collect();
    let mut stale: Vec<&Nexthop> =
        observed.nexthops.iter().filter(|n| is_ours(n.id) && !wanted_ids.contains(&n.id)).collect();
    // Groups before gateways.
    stale.sort_by_key(|n| (!matches!(n.kind, NexthopKind::Group { .. }), n.id));
    let stale_ids: Vec<u32> = stale.iter().map(|n| n.id).collect();
    for id in &stale_ids {
        actions.push(Action::DeleteNexthop { slice: s(), id: *id });
    }

    // The hash policy goes back to the kernel's default once nothing of ours is left.
    let leftovers = observed.nexthops.iter().any(|n| is_ours(n.id) && !stale_ids.contains(&n.id));
    if specs.is_empty() && !leftovers {
        for key in MULTIPATH_SYSCTLS {
            if observed.sysctls.get(key).is_some_and(|v| v != "0") {
                actions.push(Action::SetSysctl { slice: s(), key: key.to_owned(), value: "0".to_owned() });
            }
        }
    }
    want.pending
}

/// The hash-policy sysctls a slice with multi-gateway routes needs (set with the router's other
/// sysctls).
pub(super) fn sysctls(slice: &str, specs: &[MultipathSpec], observed: &ObservedMultipath, actions: &mut Vec<Action>) {
    if specs.is_empty() {
        return;
    }
    for key in MULTIPATH_SYSCTLS {
        if observed.sysctls.get(key).map(String::as_str) != Some("1") {
            actions.push(Action::SetSysctl { slice: slice.to_owned(), key: key.to_owned(), value: "1".to_owned() });
        }
    }
}

#[cfg(test)]
mod tests;
