//! The node agent's decision, kept pure: from the configuration (desired) and what the kernel and
//! the state dir show (observed), the ordered list of [`Action`]s that makes them equal.
//!
//! Rules the plan follows (and the tests below pin):
//! - a slice or peer that is added, changed or removed is touched alone: other slices and other
//!   peers get no action;
//! - a VNI, underlay address, port or MAC change recreates the VXLAN (the kernel cannot change
//!   them in place); an MTU change is applied in place;
//! - routes managed here are only those whose device is the slice's VXLAN: the per-pod routes on
//!   pod veths belong to the CNI plugin and are never in the plan;
//! - what already matches gets no action, so a restarted agent adopts a running data plane;
//! - the node-state file is written once the router's own part is complete, and a slice that
//!   leaves the configuration loses its state file *before* its router namespace;
//! - remote routes (other clusters' prefixes) via a gateway pod on a peer node go on the VXLAN
//!   like the peers' routes (`prefix via <peer router> onlink`); via a gateway pod on this node
//!   they are `prefix via <gateway>` (the CNI plugin's /32 route to the pod resolves it) and come
//!   *after* the state file: the gateway pod is a slice member and cannot start before the state
//!   file exists. While the gateway pod is not on the node yet, its routes are left out and an
//!   [`Action::AwaitGateway`] (the last action, which fails) makes the agent retry, without
//!   holding up anything else of the slice. Remote routes are not in the state file: pods route
//!   the whole slice subnet via their router already.
//! - the router's nftables table (ClusterSetIP DNAT, [`crate::firewall`]) is compared whole with
//!   what the configuration builds and replaced whole when it differs (deleted when no rule is
//!   wanted), before the state file; a table `nft` cannot list is left alone unless rules are
//!   wanted;
//! - remote routes with several gateway replicas go through nexthop groups ([`multipath`]),
//!   after the state file; a remote route with one gateway keeps its plain route as above;
//! - a MultiNetworkPolicy that cannot be compiled leaves the table as it is (fail closed: the
//!   rules in force stay, neither replaced nor deleted) and the slice's last action is
//!   [`Action::KeepFirewall`], which fails with the policy's name and fault so that the agent
//!   logs it and retries; everything else of the slice is still planned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use dataplane::{Fdb, Neigh, Nexthop, NexthopRoute, Route, Rule};
use ipnet::IpNet;
use slice_api::names;
use slice_api::node::{NodeAgentConfig, NodeState, PeerNode, RemoteRoute, SliceOnNode};
use slice_api::prefix::router_address;

pub mod multipath;
pub mod rp_filter;

pub use multipath::{MultipathSpec, ObservedMultipath};

/// Sysctls of every router namespace, as `(key under /proc/sys, value)`. The reverse-path
/// filter is per device ([`rp_filter`]): `all` 0 lets each device's own value count (the
/// kernel takes the higher of the two), `default` 1 makes every new device strict from its
/// creation.
pub const ROUTER_SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
];

/// Prefix of the VXLAN device names: `sv<vni>` (unique in the node namespace, since VNIs are).
pub const VXLAN_NAME_PREFIX: &str = "sv";

/// Name of the VXLAN device of a VNI.
pub fn vxlan_name(vni: u32) -> String {
    format!("{VXLAN_NAME_PREFIX}{vni}")
}

/// The VNI a device name stands for, if it is one of ours (`sv` + decimal digits).
pub fn vni_of_vxlan_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(VXLAN_NAME_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The VXLAN MAC of a router: `0a:58` and the last four bytes of its address
/// (`0a:58:a:b:c:d` for `a.b.c.d`). Every node derives its peers' MACs the same way, so nothing
/// needs to be exchanged.
pub fn router_mac(router: IpAddr) -> [u8; 6] {
    let tail: [u8; 4] = match router {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// The router address as a host prefix (/32 or /128), as it sits on `lo`.
pub fn host_prefix(ip: IpAddr) -> IpNet {
    let len = if ip.is_ipv4() { 32 } else { 128 };
    IpNet::new(ip, len).expect("host prefix length is valid")
}

/// The VXLAN device a slice needs on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: IpAddr,
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// What one peer node needs in this node's router namespace (flannel's scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    /// Peer node prefix via the peer's router address, `onlink`, on the VXLAN.
    pub route: Route,
    /// Peer router address → peer VXLAN MAC, permanent.
    pub neigh: Neigh,
    /// Peer VXLAN MAC → peer underlay address.
    pub fdb: Fdb,
    /// The slice's second family (dual-stack): the peer's prefix of it via the peer's router
    /// address of that family, whose neighbour entry is the same VXLAN MAC (one device carries
    /// both families over the one underlay).
    pub secondary: Option<PeerFamilySpec>,
}

/// A peer's route and neighbour entry in the slice's second family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFamilySpec {
    pub route: Route,
    pub neigh: Neigh,
}

impl PeerSpec {
    /// The peer's routes, both families.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        std::iter::once(&self.route).chain(self.secondary.as_ref().map(|f| &f.route))
    }

    /// The peer's neighbour entries, both families.
    pub fn neighs(&self) -> impl Iterator<Item = &Neigh> {
        std::iter::once(&self.neigh).chain(self.secondary.as_ref().map(|f| &f.neigh))
    }
}

/// A remote route as it goes into the router namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRouteSpec {
    pub remote: RemoteRoute,
    /// True when the gateway pod is on this node (`prefix via <gateway>`, after the state file);
    /// false when it is on a peer (`prefix via <peer router> dev <vxlan> onlink`).
    pub local: bool,
    pub route: Route,
}

/// Everything one slice's router on this node should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSpec {
    pub slice: String,
    pub netns: PathBuf,
    pub router_address: IpNet,
    /// The router address of the slice's second family (dual-stack), on `lo` beside the first.
    pub secondary_router_address: Option<IpNet>,
    pub vxlan: VxlanSpec,
    pub peers: Vec<PeerSpec>,
    /// Remote routes with one gateway, sorted by prefix.
    pub remote_routes: Vec<RemoteRouteSpec>,
    /// Remote routes with several gateway replicas, sorted by prefix ([`multipath`]).
    pub multipath: Vec<MultipathSpec>,
    pub state: NodeState,
    /// The router's nftables table ([`crate::firewall::table`]); `None` when it needs none.
    pub firewall: Option<Vec<serde_json::Value>>,
    /// ClusterSetIP services and service ports with backends that the table programs.
    pub services: (usize, usize),
    /// Why the table cannot be built (a policy that does not compile); the table in force is
    /// then kept.
    pub firewall_error: Option<String>,
}

impl RouterSpec {
    /// The desired router of `slice` under `config`.
    pub fn new(config: &NodeAgentConfig, slice: &SliceOnNode) -> Self {
        let router = router_address(slice.node_prefix);
        let overhead = match config.underlay_address {
            IpAddr::V4(_) => names::VXLAN_OVERHEAD_V4,
            IpAddr::V6(_) => names::VXLAN_OVERHEAD_V6,
        };
        let vxlan = VxlanSpec {
            name: vxlan_name(slice.vni),
            vni: slice.vni,
            local: config.underlay_address,
            port: config.vxlan_port,
            mtu: config.underlay_mtu.saturating_sub(overhead),
            mac: router_mac(router),
        };
        let mut peers: Vec<PeerSpec> = slice.peers.iter().map(|p| peer_spec(&vxlan.name, p)).collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut remote_routes: Vec<RemoteRouteSpec> = slice
            .remote_routes
            .iter()
            .filter(|r| r.also_via.is_empty())
            .filter_map(|r| remote_route_spec(&vxlan.name, slice, r))
            .collect();
        remote_routes.sort_by(|a, b| a.remote.cmp(&b.remote));
        let (firewall, firewall_error) = match crate::firewall::table(slice) {
            Ok(table) => (table, None),
            Err(e) => (None, Some(e.to_string())),
        };
        Self {
            slice: slice.name.clone(),
            netns: config.router_netns(&slice.name),
            router_address: host_prefix(router),
            secondary_router_address: slice.secondary.map(|f| host_prefix(router_address(f.node_prefix))),
            vxlan,
            peers,
            remote_routes,
            multipath: multipath::specs(slice),
            state: config.node_state(slice),
            firewall,
            services: crate::firewall::services::count(slice),
            firewall_error,
        }
    }
}

/// The route for one remote prefix; `None` when `via` is on no node of the slice (validation
/// rejects that).
fn remote_route_spec(vxlan: &str, slice: &SliceOnNode, remote: &RemoteRoute) -> Option<RemoteRouteSpec> {
    // The node prefixes of the route's family (dual-stack slices route each family's remote
    // prefixes through the gateway pod's address of that family).
    let family = slice.family_of(remote.prefix)?;
    if family.node_prefix.contains(&remote.via) {
        return Some(RemoteRouteSpec {
            remote: remote.clone(),
            local: true,
            route: Route {
                dst: remote.prefix,
                gateway: Some(remote.via),
                dev: None,
                src: None,
                onlink: false,
                scope_link: false,
            },
        });
    }
    let (_, peer_prefix) = family.peers.into_iter().find(|(_, p)| p.contains(&remote.via))?;
    Some(RemoteRouteSpec {
        remote: remote.clone(),
        local: false,
        route: Route {
            dst: remote.prefix,
            gateway: Some(router_address(peer_prefix)),
            dev: Some(vxlan.to_string()),
            src: None,
            onlink: true,
            scope_link: false,
        },
    })
}

fn peer_spec(vxlan: &str, peer: &PeerNode) -> PeerSpec {
    let peer_router = router_address(peer.node_prefix);
    let mac = router_mac(peer_router);
    PeerSpec {
        name: peer.name.clone(),
        route: Route {
            dst: peer.node_prefix,
            gateway: Some(peer_router),
            dev: Some(vxlan.to_string()),
            src: None,
            onlink: true,
            scope_link: false,
        },
        neigh: Neigh { ip: peer_router, mac, permanent: true },
        fdb: Fdb { mac, dst: peer.underlay_address },
        secondary: peer.secondary_node_prefix.map(|prefix| {
            let router = router_address(prefix);
            PeerFamilySpec {
                route: Route {
                    dst: prefix,
                    gateway: Some(router),
                    dev: Some(vxlan.to_string()),
                    src: None,
                    onlink: true,
                    scope_link: false,
                },
                neigh: Neigh { ip: router, mac, permanent: true },
            }
        }),
    }
}

/// A VXLAN device as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVxlan {
    pub name: String,
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
}

impl ObservedVxlan {
    /// True when only an in-place change (MTU, up) separates it from `spec`.
    fn is_compatible_with(&self, spec: &VxlanSpec) -> bool {
        self.name == spec.name
            && self.vni == Some(spec.vni)
            && self.local == Some(spec.local)
            && self.port == Some(spec.port)
            && self.learning != Some(true)
            && self.mac == Some(spec.mac)
    }
}

/// One router namespace as observed (only for slices whose namespace exists).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRouter {
    /// Values of [`ROUTER_SYSCTLS`] keys.
    pub sysctls: BTreeMap<String, String>,
    pub lo_up: bool,
    pub lo_addrs: Vec<IpNet>,
    /// Every VXLAN device in the namespace.
    pub vxlans: Vec<ObservedVxlan>,
    /// `rp_filter` of the desired VXLAN and of each local pod's veth, by device.
    pub rp_filter: BTreeMap<String, String>,
    /// Routes of the main table whose device is the desired VXLAN (both families).
    pub routes: Vec<Route>,
    /// Neighbour entries on the desired VXLAN.
    pub neighs: Vec<Neigh>,
    /// FDB entries with a destination on the desired VXLAN.
    pub fdb: Vec<Fdb>,
    /// Routes of the main table with a gateway on any device but the desired VXLAN (remote
    /// routes via a local gateway pod; the device is the pod's host-side veth).
    pub gateway_routes: Vec<Route>,
    /// Destinations of host routes (/32, /128) without a gateway on devices other than the
    /// desired VXLAN: the pods on this node (the CNI plugin's per-pod routes).
    pub local_hosts: BTreeSet<IpAddr>,
    /// slicenet's nftables table ([`crate::firewall::TABLE`]).
    pub firewall: ObservedFirewall,
}

/// slicenet's nftables table in a router namespace as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ObservedFirewall {
    /// No such table.
    #[default]
    Absent,
    /// Its objects as `nft -j list table` prints them, without handles.
    Present(Vec<serde_json::Value>),
    /// `nft` could not list it (not installed, failed): replaced when rules are wanted (the
    /// replace then fails with nft's message), left alone otherwise.
    Unreadable(String),
}

/// One state file as observed: parsed, or present but unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservedStateFile {
    Valid(Box<NodeState>),
    Unreadable,
}

/// What the node shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// State files in the state dir, by slice.
    pub state_files: BTreeMap<String, ObservedStateFile>,
    /// Slices that have a router namespace file in the netns dir.
    pub router_netns: BTreeSet<String>,
    /// Router namespaces looked into, by slice (desired slices whose namespace exists).
    pub routers: BTreeMap<String, ObservedRouter>,
    /// Our VXLAN devices (`sv<vni>`) left in the node namespace, e.g. by a crash between
    /// create and move.
    pub node_vxlans: Vec<ObservedVxlan>,
    /// Slices whose router could not be observed: no action is planned for them this round
    /// (guessing could tear down a working router), the others go on.
    pub unobservable: BTreeSet<String>,
    /// Multipath routing in the router namespaces looked into, by slice ([`multipath`]).
    pub multipath: BTreeMap<String, ObservedMultipath>,
    /// The local gateway replicas the agent's probes find dead, by slice (none: all live).
    pub dead_gateways: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// One step of a reconcile. `slice` names the slice it belongs to; the applier stops a slice's
/// steps at its first failure (so its state file is never written over a broken router) and
/// goes on with the other slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove the node-state file (first step of removing a slice).
    RemoveStateFile {
        slice: String,
    },
    /// Delete the router namespace (removes its VXLAN and the host ends of pod veths).
    DeleteRouterNetns {
        slice: String,
        netns: PathBuf,
    },
    /// Delete one of our VXLAN devices left in the node namespace.
    DeleteNodeVxlan {
        slice: String,
        name: String,
    },
    CreateRouterNetns {
        slice: String,
        netns: PathBuf,
    },
    SetSysctl {
        slice: String,
        key: String,
        value: String,
    },
    SetLoopbackUp {
        slice: String,
    },
    AddLoopbackAddress {
        slice: String,
        addr: IpNet,
    },
    DeleteLoopbackAddress {
        slice: String,
        addr: IpNet,
    },
    /// Delete a VXLAN device in the router namespace (wrong VNI, underlay, port or MAC).
    DeleteVxlan {
        slice: String,
        name: String,
    },
    /// Create the VXLAN in the node namespace, move it into the router namespace, set it up.
    CreateVxlan {
        slice: String,
        spec: VxlanSpec,
    },
    SetVxlanMtu {
        slice: String,
        name: String,
        mtu: u32,
    },
    SetVxlanUp {
        slice: String,
        name: String,
    },
    DeleteRoute {
        slice: String,
        route: Route,
    },
    ReplaceRoute {
        slice: String,
        route: Route,
    },
    DeleteNeigh {
        slice: String,
        dev: String,
        ip: IpAddr,
    },
    ReplaceNeigh {
        slice: String,
        dev: String,
        neigh: Neigh,
    },
    DeleteFdb {
        slice: String,
        dev: String,
        entry: Fdb,
    },
    ReplaceFdb {
        slice: String,
        dev: String,
        entry: Fdb,
    },
    /// Replace slicenet's nftables table with `objects` in one transaction (ClusterSetIP DNAT).
    ReplaceFirewall {
        slice: String,
        objects: Vec<serde_json::Value>,
        /// Services and service ports with backends, for the log.
        services: (usize, usize),
    },
    /// Delete slicenet's nftables table (the slice has no more rules).
    DeleteFirewall {
        slice: String,
    },
    /// Write the node-state file (once the router's own part is complete).
    WriteStateFile {
        slice: String,
        state: Box<NodeState>,
    },
    /// The table cannot be built (a policy does not compile): the one in force is kept, and
    /// applying this fails with `reason`, so that the agent reports it and retries.
    KeepFirewall {
        slice: String,
        reason: String,
    },
    /// Create a nexthop (a gateway or a group) or replace the one with its id in place.
    ReplaceNexthop {
        slice: String,
        nexthop: Nexthop,
    },
    /// Delete a nexthop of ours.
    DeleteNexthop {
        slice: String,
        id: u32,
    },
    /// Route a remote prefix through a nexthop group (main table or table 92).
    ReplaceNexthopRoute {
        slice: String,
        route: NexthopRoute,
    },
    DeleteNexthopRoute {
        slice: String,
        route: NexthopRoute,
    },
    /// `iif <vxlan> lookup 92`.
    AddRule {
        slice: String,
        rule: Rule,
    },
    DeleteRule {
        slice: String,
        rule: Rule,
    },
    /// Remote routes whose gateway pod is not on this node yet: nothing to do but report it, so
    /// that the agent retries (always the last action of its slice; applying it fails).
    AwaitGateway {
        slice: String,
        pending: Vec<RemoteRoute>,
    },
}

impl Action {
    /// The slice this action belongs to.
    pub fn slice(&self) -> &str {
        match self {
            Action::RemoveStateFile { slice }
            | Action::DeleteRouterNetns { slice, .. }
            | Action::DeleteNodeVxlan { slice, .. }
            | Action::CreateRouterNetns { slice, .. }
            | Action::SetSysctl { slice, .. }
            | Action::SetLoopbackUp { slice }
            | Action::AddLoopbackAddress { slice, .. }
            | Action::DeleteLoopbackAddress { slice, .. }
            | Action::DeleteVxlan { slice, .. }
            | Action::CreateVxlan { slice, .. }
            | Action::SetVxlanMtu { slice, .. }
            | Action::SetVxlanUp { slice, .. }
            | Action::DeleteRoute { slice, .. }
            | Action::ReplaceRoute { slice, .. }
            | Action::DeleteNeigh { slice, .. }
            | Action::ReplaceNeigh { slice, .. }
            | Action::DeleteFdb { slice, .. }
            | Action::ReplaceFdb { slice, .. }
            | Action::ReplaceFirewall { slice, .. }
            | Action::DeleteFirewall { slice }
            | Action::WriteStateFile { slice, .. }
            | Action::KeepFirewall { slice, .. }
            | Action::ReplaceNexthop { slice, .. }
            | Action::DeleteNexthop { slice, .. }
            | Action::ReplaceNexthopRoute { slice, .. }
            | Action::DeleteNexthopRoute { slice, .. }
            | Action::AddRule { slice, .. }
            | Action::DeleteRule { slice, .. }
            | Action::AwaitGateway { slice, .. } => slice,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use dataplane::format_mac;
        match self {
            Action::RemoveStateFile { .. } => write!(f, "remove the node-state file"),
            Action::DeleteRouterNetns { netns, .. } => {
                write!(f, "delete router namespace {}", netns.display())
            }
            Action::DeleteNodeVxlan { name, .. } => {
                write!(f, "delete leftover vxlan {name} in the node namespace")
            }
            Action::CreateRouterNetns { netns, .. } => {
                write!(f, "create router namespace {}", netns.display())
            }
            Action::SetSysctl { key, value, .. } => write!(f, "set sysctl {key}={value}"),
            Action::SetLoopbackUp { .. } => write!(f, "set lo up"),
            Action::AddLoopbackAddress { addr, .. } => write!(f, "add {addr} to lo"),
            Action::DeleteLoopbackAddress { addr, .. } => write!(f, "remove {addr} from lo"),
            Action::DeleteVxlan { name, .. } => write!(f, "delete vxlan {name}"),
            Action::CreateVxlan { spec, .. } => write!(
                f,
                "create vxlan {} (VNI {}, local {}, port {}, MTU {}, MAC {})",
                spec.name,
                spec.vni,
                spec.local,
                spec.port,
                spec.mtu,
                format_mac(&spec.mac)
            ),
            Action::SetVxlanMtu { name, mtu, .. } => write!(f, "set the MTU of {name} to {mtu}"),
            Action::SetVxlanUp { name, .. } => write!(f, "set {name} up"),
            Action::DeleteRoute { route, .. } => write!(f, "delete route {}", show_route(route)),
            Action::ReplaceRoute { route, .. } => write!(f, "replace route {}", show_route(route)),
            Action::DeleteNeigh { dev, ip, .. } => write!(f, "delete neighbour {ip} on {dev}"),
            Action::ReplaceNeigh { dev, neigh, .. } => {
                write!(f, "replace neighbour {} lladdr {} on {dev}", neigh.ip, format_mac(&neigh.mac))
            }
            Action::DeleteFdb { dev, entry, .. } => {
                write!(f, "delete fdb {} dst {} on {dev}", format_mac(&entry.mac), entry.dst)
            }
            Action::ReplaceFdb { dev, entry, .. } => {
                write!(f, "replace fdb {} dst {} on {dev}", format_mac(&entry.mac), entry.dst)
            }
            Action::ReplaceFirewall { services: (services, ports), .. } => write!(
                f,
                "replace nftables {} ({services} ClusterSetIP service(s), {ports} port(s) with backends)",
                crate::firewall::TABLE
            ),
            Action::DeleteFirewall { .. } => write!(f, "delete nftables {}", crate::firewall::TABLE),
            Action::WriteStateFile { .. } => write!(f, "write the node-state file"),
            Action::KeepFirewall { reason, .. } => {
                write!(f, "keep nftables {} as it is: {reason}", crate::firewall::TABLE)
            }
            Action::ReplaceNexthop { nexthop, .. } => write!(f, "replace {nexthop}"),
            Action::DeleteNexthop { id, .. } => write!(f, "delete nexthop id {id}"),
            Action::ReplaceNexthopRoute { route, .. } => write!(f, "replace {route}"),
            Action::DeleteNexthopRoute { route, .. } => write!(f, "delete {route}"),
            Action::AddRule { rule, .. } => write!(f, "add {rule}"),
            Action::DeleteRule { rule, .. } => write!(f, "delete {rule}"),
            Action::AwaitGateway { pending, .. } => {
                let list: Vec<String> = pending.iter().map(|r| format!("{} via {}", r.prefix, r.via)).collect();
                write!(f, "wait for the gateway pod of remote route(s) {}", list.join(", "))
            }
        }
    }
}

fn show_route(r: &Route) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(dev) = &r.dev {
        s.push_str(&format!(" dev {dev}"));
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

fn is_loopback_net(net: &IpNet) -> bool {
    net.addr().is_loopback()
}

/// The actions that turn `observed` into what `config` asks for, in order: removals of slices
/// that left the configuration first, then each desired slice in configuration order.
pub fn plan(config: &NodeAgentConfig, observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    let desired: BTreeSet<&str> = config.slices.iter().map(|s| s.name.as_str()).collect();

    // Slices that left the configuration: state file first (the CNI plugin stops using the
    // slice), then the router namespace.
    let stale: BTreeSet<&String> = observed
        .state_files
        .keys()
        .chain(observed.router_netns.iter())
        .filter(|s| !desired.contains(s.as_str()) && !observed.unobservable.contains(*s))
        .collect();
    for slice in stale {
        if observed.state_files.contains_key(slice) {
            actions.push(Action::RemoveStateFile { slice: slice.clone() });
        }
        if observed.router_netns.contains(slice) {
            actions.push(Action::DeleteRouterNetns { slice: slice.clone(), netns: config.router_netns(slice) });
        }
    }

    let specs: Vec<RouterSpec> = config
        .slices
        .iter()
        .filter(|s| !observed.unobservable.contains(&s.name))
        .map(|s| RouterSpec::new(config, s))
        .collect();

    // Our VXLANs stranded in the node namespace: they would make the create fail with EEXIST
    // (same name) or hold their VNI on the node's VXLAN socket.
    for vx in &observed.node_vxlans {
        let owner = specs
            .iter()
            .find(|s| s.vxlan.name == vx.name || Some(s.vxlan.vni) == vx.vni)
            .map_or_else(|| "(node)".to_string(), |s| s.slice.clone());
        actions.push(Action::DeleteNodeVxlan { slice: owner, name: vx.name.clone() });
    }

    for spec in &specs {
        plan_router(spec, observed, &mut actions);
    }
    actions
}

fn plan_router(spec: &RouterSpec, observed: &Observed, actions: &mut Vec<Action>) {
    let slice = || spec.slice.clone();
    let empty = ObservedRouter::default();
    let router = match observed.routers.get(&spec.slice) {
        Some(r) if observed.router_netns.contains(&spec.slice) => r,
        _ => {
            actions.push(Action::CreateRouterNetns { slice: slice(), netns: spec.netns.clone() });
            &empty
        }
    };

    for (key, value) in ROUTER_SYSCTLS {
        if router.sysctls.get(key).map(String::as_str) != Some(value) {
            actions.push(Action::SetSysctl { slice: slice(), key: key.to_string(), value: value.to_string() });
        }
    }
    let empty_multipath = ObservedMultipath::default();
    let observed_multipath = match observed.multipath.get(&spec.slice) {
        Some(m) if observed.routers.contains_key(&spec.slice) && observed.router_netns.contains(&spec.slice) => m,
        _ => &empty_multipath,
    };
    multipath::sysctls(&spec.slice, &spec.multipath, observed_multipath, actions);
    let no_dead = BTreeSet::new();
    let dead = observed.dead_gateways.get(&spec.slice).unwrap_or(&no_dead);
    let multipath_wanted = multipath::wanted(&spec.multipath, &spec.vxlan.name, observed_multipath, dead);
    // A plain route to a prefix that now goes through a group is taken over by the group's
    // route, not deleted first.
    let through_group = multipath_wanted.main_prefixes();
    if !router.lo_up {
        actions.push(Action::SetLoopbackUp { slice: slice() });
    }
    // Only addresses inside the slice subnet are ours (an old router address after a prefix
    // change); anything else on lo belongs to someone else.
    let want_lo: Vec<IpNet> = std::iter::once(spec.router_address).chain(spec.secondary_router_address).collect();
    for addr in &router.lo_addrs {
        let in_slice = spec.state.families().any(|(subnet, _, _)| subnet.contains(&addr.addr()));
        if !want_lo.contains(addr) && !is_loopback_net(addr) && in_slice {
            actions.push(Action::DeleteLoopbackAddress { slice: slice(), addr: *addr });
        }
    }
    for addr in &want_lo {
        if !router.lo_addrs.contains(addr) {
            actions.push(Action::AddLoopbackAddress { slice: slice(), addr: *addr });
        }
    }

    // The VXLAN: keep a compatible one, recreate anything else.
    let mut kept = None;
    for vx in &router.vxlans {
        if kept.is_none() && vx.is_compatible_with(&spec.vxlan) {
            kept = Some(vx);
        } else {
            actions.push(Action::DeleteVxlan { slice: slice(), name: vx.name.clone() });
        }
    }
    let dev = spec.vxlan.name.clone();
    let (routes, neighs, fdb): (&[Route], &[Neigh], &[Fdb]) = match kept {
        Some(vx) => {
            if vx.mtu != spec.vxlan.mtu {
                actions.push(Action::SetVxlanMtu { slice: slice(), name: dev.clone(), mtu: spec.vxlan.mtu });
            }
            if !vx.up {
                actions.push(Action::SetVxlanUp { slice: slice(), name: dev.clone() });
            }
            (&router.routes, &router.neighs, &router.fdb)
        }
        None => {
            actions.push(Action::CreateVxlan { slice: slice(), spec: spec.vxlan.clone() });
            // A new device starts without routes, neighbours or FDB entries.
            (&[], &[], &[])
        }
    };

    let want_rp_filter = rp_filter::wanted(&dev, &spec.multipath, &observed_multipath.local_host_devs);
    rp_filter::plan(&spec.slice, &want_rp_filter, &router.rp_filter, actions);

    // Peers: removals first, then additions and changes; untouched entries get nothing. Remote
    // routes via a peer's gateway sit on the VXLAN beside the peers' routes.
    let via_peer: Vec<&Route> = spec.remote_routes.iter().filter(|r| !r.local).map(|r| &r.route).collect();
    let want_routes: Vec<&Route> =
        spec.peers.iter().flat_map(PeerSpec::routes).chain(via_peer.iter().copied()).collect();
    for r in routes {
        if r.dev.as_deref() == Some(dev.as_str()) && !want_routes.contains(&r) && !through_group.contains(&r.dst) {
            actions.push(Action::DeleteRoute { slice: slice(), route: r.clone() });
        }
    }
    for n in neighs {
        let wanted = spec.peers.iter().flat_map(PeerSpec::neighs).any(|w| w.ip == n.ip);
        if !wanted && n.permanent {
            actions.push(Action::DeleteNeigh { slice: slice(), dev: dev.clone(), ip: n.ip });
        }
    }
    for e in fdb {
        if !spec.peers.iter().any(|p| p.fdb == *e) {
            actions.push(Action::DeleteFdb { slice: slice(), dev: dev.clone(), entry: e.clone() });
        }
    }
    for peer in &spec.peers {
        if !fdb.contains(&peer.fdb) {
            actions.push(Action::ReplaceFdb { slice: slice(), dev: dev.clone(), entry: peer.fdb.clone() });
        }
        for neigh in peer.neighs() {
            if !neighs.contains(neigh) {
                actions.push(Action::ReplaceNeigh { slice: slice(), dev: dev.clone(), neigh: neigh.clone() });
            }
        }
        for route in peer.routes() {
            if !routes.contains(route) {
                actions.push(Action::ReplaceRoute { slice: slice(), route: route.clone() });
            }
        }
    }
    for route in via_peer {
        if !routes.contains(route) {
            actions.push(Action::ReplaceRoute { slice: slice(), route: route.clone() });
        }
    }

    // The firewall is part of the router: in place before the state file lets pods start. Its
    // IPv6 anti-spoof check skips the devices IPv4's filter is off on.
    let unfiltered: Vec<&str> =
        want_rp_filter.iter().filter(|(_, v)| **v == rp_filter::OFF).map(|(d, _)| d.as_str()).collect();
    let firewall = spec.firewall.clone().map(|mut table| {
        crate::firewall::anti_spoof::exempt(&mut table, &unfiltered);
        table
    });
    match (&firewall, &router.firewall) {
        _ if spec.firewall_error.is_some() => {}
        (Some(want), ObservedFirewall::Present(have)) if want == have => {}
        (Some(want), _) => {
            actions.push(Action::ReplaceFirewall { slice: slice(), objects: want.clone(), services: spec.services })
        }
        (None, ObservedFirewall::Present(_)) => actions.push(Action::DeleteFirewall { slice: slice() }),
        (None, ObservedFirewall::Absent | ObservedFirewall::Unreadable(_)) => {}
    }

    if observed.state_files.get(&spec.slice) != Some(&ObservedStateFile::Valid(Box::new(spec.state.clone()))) {
        actions.push(Action::WriteStateFile { slice: slice(), state: Box::new(spec.state.clone()) });
    }

    // Remote routes via a gateway pod on this node, after the state file (the pod needs it).
    // Ours are the gateway routes into the slice subnet; a route matches on destination and
    // gateway (the kernel picks the device: the pod's veth).
    let local: Vec<&RemoteRouteSpec> = spec.remote_routes.iter().filter(|r| r.local).collect();
    let matches = |want: &RemoteRouteSpec, r: &Route| r.dst == want.route.dst && r.gateway == want.route.gateway;
    for r in &router.gateway_routes {
        let in_slice = spec.state.families().any(|(subnet, _, _)| subnet.contains(&r.dst));
        if in_slice && !local.iter().any(|want| matches(want, r)) && !through_group.contains(&r.dst) {
            actions.push(Action::DeleteRoute { slice: slice(), route: r.clone() });
        }
    }
    let mut pending = Vec::new();
    for want in local {
        if router.gateway_routes.iter().any(|r| matches(want, r)) {
            continue;
        }
        if router.local_hosts.contains(&want.remote.via) {
            actions.push(Action::ReplaceRoute { slice: slice(), route: want.route.clone() });
        } else {
            pending.push(want.remote.clone());
        }
    }
    // Remote routes through several replicas: after the state file too (local replicas are pods).
    let subnets: Vec<IpNet> = spec.state.families().map(|(subnet, _, _)| subnet).collect();
    let plain: BTreeSet<IpNet> = spec.remote_routes.iter().map(|r| r.remote.prefix).collect();
    pending.extend(multipath::plan(
        &spec.slice,
        &spec.multipath,
        multipath_wanted,
        &subnets,
        &plain,
        observed_multipath,
        actions,
    ));
    if let Some(reason) = &spec.firewall_error {
        actions.push(Action::KeepFirewall { slice: slice(), reason: reason.clone() });
    }
    if !pending.is_empty() {
        actions.push(Action::AwaitGateway { slice: slice(), pending });
    }
}

#[cfg(test)]
mod tests;
