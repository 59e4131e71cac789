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

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use dataplane::{Fdb, Neigh, Route};
use ipnet::IpNet;
use slice_api::names;
use slice_api::node::{NodeAgentConfig, NodeState, PeerNode, RemoteRoute, SliceOnNode};
use slice_api::prefix::router_address;

/// Sysctls of every router namespace, as `(key under /proc/sys, value)`.
pub const ROUTER_SYSCTLS: [(&str, &str); 4] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/rp_filter", "1"),
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
    pub vxlan: VxlanSpec,
    pub peers: Vec<PeerSpec>,
    /// Sorted by prefix.
    pub remote_routes: Vec<RemoteRouteSpec>,
    pub state: NodeState,
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
        let mut remote_routes: Vec<RemoteRouteSpec> =
            slice.remote_routes.iter().filter_map(|r| remote_route_spec(&vxlan.name, slice, r)).collect();
        remote_routes.sort_by(|a, b| a.remote.cmp(&b.remote));
        Self {
            slice: slice.name.clone(),
            netns: config.router_netns(&slice.name),
            router_address: host_prefix(router),
            vxlan,
            peers,
            remote_routes,
            state: config.node_state(slice),
        }
    }
}

/// The route for one remote prefix; `None` when `via` is on no node of the slice (validation
/// rejects that).
fn remote_route_spec(vxlan: &str, slice: &SliceOnNode, remote: &RemoteRoute) -> Option<RemoteRouteSpec> {
    if slice.node_prefix.contains(&remote.via) {
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
    let peer = slice.peers.iter().find(|p| p.node_prefix.contains(&remote.via))?;
    Some(RemoteRouteSpec {
        remote: remote.clone(),
        local: false,
        route: Route {
            dst: remote.prefix,
            gateway: Some(router_address(peer.node_prefix)),
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
}

/// One state file as observed: parsed, or present but unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservedStateFile {
    Valid(NodeState),
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
    /// Write the node-state file (once the router's own part is complete).
    WriteStateFile {
        slice: String,
        state: Box<NodeState>,
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
            | Action::WriteStateFile { slice, .. }
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
            Action::WriteStateFile { .. } => write!(f, "write the node-state file"),
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
    if !router.lo_up {
        actions.push(Action::SetLoopbackUp { slice: slice() });
    }
    // Only addresses inside the slice subnet are ours (an old router address after a prefix
    // change); anything else on lo belongs to someone else.
    for addr in &router.lo_addrs {
        if *addr != spec.router_address && !is_loopback_net(addr) && spec.state.slice_subnet.contains(&addr.addr()) {
            actions.push(Action::DeleteLoopbackAddress { slice: slice(), addr: *addr });
        }
    }
    if !router.lo_addrs.contains(&spec.router_address) {
        actions.push(Action::AddLoopbackAddress { slice: slice(), addr: spec.router_address });
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

    // Peers: removals first, then additions and changes; untouched entries get nothing. Remote
    // routes via a peer's gateway sit on the VXLAN beside the peers' routes.
    let via_peer: Vec<&Route> = spec.remote_routes.iter().filter(|r| !r.local).map(|r| &r.route).collect();
    let want_routes: Vec<&Route> = spec.peers.iter().map(|p| &p.route).chain(via_peer.iter().copied()).collect();
    for r in routes {
        if r.dev.as_deref() == Some(dev.as_str()) && !want_routes.contains(&r) {
            actions.push(Action::DeleteRoute { slice: slice(), route: r.clone() });
        }
    }
    for n in neighs {
        let wanted = spec.peers.iter().any(|p| p.neigh.ip == n.ip);
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
        if !neighs.contains(&peer.neigh) {
            actions.push(Action::ReplaceNeigh { slice: slice(), dev: dev.clone(), neigh: peer.neigh.clone() });
        }
        if !routes.contains(&peer.route) {
            actions.push(Action::ReplaceRoute { slice: slice(), route: peer.route.clone() });
        }
    }
    for route in via_peer {
        if !routes.contains(route) {
            actions.push(Action::ReplaceRoute { slice: slice(), route: route.clone() });
        }
    }

    if observed.state_files.get(&spec.slice) != Some(&ObservedStateFile::Valid(spec.state.clone())) {
        actions.push(Action::WriteStateFile { slice: slice(), state: Box::new(spec.state.clone()) });
    }

    // Remote routes via a gateway pod on this node, after the state file (the pod needs it).
    // Ours are the gateway routes into the slice subnet; a route matches on destination and
    // gateway (the kernel picks the device: the pod's veth).
    let local: Vec<&RemoteRouteSpec> = spec.remote_routes.iter().filter(|r| r.local).collect();
    let matches = |want: &RemoteRouteSpec, r: &Route| r.dst == want.route.dst && r.gateway == want.route.gateway;
    for r in &router.gateway_routes {
        if spec.state.slice_subnet.contains(&r.dst) && !local.iter().any(|want| matches(want, r)) {
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
    if !pending.is_empty() {
        actions.push(Action::AwaitGateway { slice: slice(), pending });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeAgentConfig {
        serde_json::from_value(serde_json::json!({
            "node": "n1",
            "underlayAddress": "198.18.250.1",
            "stateDir": "/run/test-state",
            "netnsDir": "/run/netns",
            "routerNetnsPrefix": "t1-",
            "slices": [
                {
                    "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16",
                    "nodePrefix": "10.80.0.0/26", "namespaces": ["shop"],
                    "peers": [
                        {"name": "n2", "underlayAddress": "198.18.250.2", "nodePrefix": "10.80.0.64/26"},
                        {"name": "n3", "underlayAddress": "198.18.250.3", "nodePrefix": "10.80.0.128/26"}
                    ]
                },
                {
                    "name": "red", "vni": 200, "sliceSubnet": "10.80.0.0/16",
                    "nodePrefix": "10.80.0.0/26",
                    "peers": [
                        {"name": "n2", "underlayAddress": "198.18.250.2", "nodePrefix": "10.80.0.64/26"}
                    ]
                }
            ]
        }))
        .unwrap()
    }

    /// What the kernel and state dir show once `config` is fully applied.
    fn converged(config: &NodeAgentConfig) -> Observed {
        let mut obs = Observed::default();
        for slice in &config.slices {
            let spec = RouterSpec::new(config, slice);
            obs.state_files.insert(slice.name.clone(), ObservedStateFile::Valid(spec.state.clone()));
            obs.router_netns.insert(slice.name.clone());
            let mut sysctls = BTreeMap::new();
            for (k, v) in ROUTER_SYSCTLS {
                sysctls.insert(k.to_string(), v.to_string());
            }
            let mut routes: Vec<Route> = spec.peers.iter().map(|p| p.route.clone()).collect();
            // A CNI-owned per-pod route on a pod veth: never the agent's business.
            routes.push(Route {
                dst: "10.80.0.2/32".parse().unwrap(),
                gateway: None,
                dev: Some("veth1234".into()),
                src: None,
                onlink: false,
                scope_link: true,
            });
            routes.extend(spec.remote_routes.iter().filter(|r| !r.local).map(|r| r.route.clone()));
            routes.retain(|r| r.dev.as_deref() == Some(spec.vxlan.name.as_str()));
            // Local gateway routes as the kernel shows them: on the gateway pod's veth.
            let local: Vec<&RemoteRouteSpec> = spec.remote_routes.iter().filter(|r| r.local).collect();
            let gateway_routes = local.iter().map(|r| Route { dev: Some("sngw".into()), ..r.route.clone() }).collect();
            let mut local_hosts: BTreeSet<IpAddr> = local.iter().map(|r| r.remote.via).collect();
            local_hosts.insert("10.80.0.2".parse().unwrap());
            obs.routers.insert(
                slice.name.clone(),
                ObservedRouter {
                    sysctls,
                    lo_up: true,
                    lo_addrs: vec!["127.0.0.1/8".parse().unwrap(), spec.router_address],
                    vxlans: vec![ObservedVxlan {
                        name: spec.vxlan.name.clone(),
                        vni: Some(spec.vxlan.vni),
                        local: Some(spec.vxlan.local),
                        port: Some(spec.vxlan.port),
                        learning: Some(false),
                        mtu: spec.vxlan.mtu,
                        mac: Some(spec.vxlan.mac),
                        up: true,
                    }],
                    routes,
                    neighs: spec.peers.iter().map(|p| p.neigh.clone()).collect(),
                    fdb: spec.peers.iter().map(|p| p.fdb.clone()).collect(),
                    gateway_routes,
                    local_hosts,
                },
            );
        }
        obs
    }

    fn slices_touched(actions: &[Action]) -> BTreeSet<String> {
        actions.iter().map(|a| a.slice().to_string()).collect()
    }

    #[test]
    fn derived_names_and_macs() {
        assert_eq!(vxlan_name(4242), "sv4242");
        assert_eq!(vni_of_vxlan_name("sv4242"), Some(4242));
        assert_eq!(vni_of_vxlan_name("sv"), None);
        assert_eq!(vni_of_vxlan_name("svx1"), None);
        assert_eq!(vni_of_vxlan_name("flannel.1"), None);
        assert_eq!(router_mac("10.80.0.65".parse().unwrap()), [0x0a, 0x58, 10, 80, 0, 65]);
        assert_eq!(router_mac("fd00::a:b0c:d0e".parse().unwrap()), [0x0a, 0x58, 0x0b, 0x0c, 0x0d, 0x0e]);
    }

    #[test]
    fn spec_follows_flannels_scheme() {
        let c = config();
        let spec = RouterSpec::new(&c, &c.slices[0]);
        assert_eq!(spec.netns, PathBuf::from("/run/netns/t1-blue"));
        assert_eq!(spec.router_address, "10.80.0.1/32".parse::<IpNet>().unwrap());
        assert_eq!(spec.vxlan.name, "sv100");
        assert_eq!(spec.vxlan.mtu, 1450);
        assert_eq!(spec.vxlan.mac, [0x0a, 0x58, 10, 80, 0, 1]);
        let n2 = &spec.peers[0];
        assert_eq!(n2.route.dst, "10.80.0.64/26".parse::<IpNet>().unwrap());
        assert_eq!(n2.route.gateway, Some("10.80.0.65".parse().unwrap()));
        assert!(n2.route.onlink);
        assert_eq!(n2.route.dev.as_deref(), Some("sv100"));
        assert_eq!(n2.neigh.mac, [0x0a, 0x58, 10, 80, 0, 65]);
        assert_eq!(n2.fdb.dst, "198.18.250.2".parse::<IpAddr>().unwrap());
        assert_eq!(n2.fdb.mac, n2.neigh.mac);
    }

    #[test]
    fn ipv6_underlay_takes_70_bytes() {
        let mut c = config();
        c.underlay_address = "fd00:198:18::1".parse().unwrap();
        c.underlay_mtu = 9000;
        assert_eq!(RouterSpec::new(&c, &c.slices[0]).vxlan.mtu, 8930);
    }

    #[test]
    fn fresh_node_builds_everything_and_writes_state_last() {
        let c = config();
        let actions = plan(&c, &Observed::default());
        let blue: Vec<&Action> = actions.iter().filter(|a| a.slice() == "blue").collect();
        assert!(matches!(blue[0], Action::CreateRouterNetns { .. }));
        assert!(matches!(blue.last().unwrap(), Action::WriteStateFile { .. }));
        assert!(blue.iter().any(|a| matches!(a, Action::CreateVxlan { spec, .. } if spec.vni == 100)));
        assert_eq!(blue.iter().filter(|a| matches!(a, Action::ReplaceRoute { .. })).count(), 2);
        assert_eq!(blue.iter().filter(|a| matches!(a, Action::SetSysctl { .. })).count(), 4);
        // The VXLAN exists before anything is put on it.
        let pos = |f: &dyn Fn(&Action) -> bool| blue.iter().position(|a| f(a)).unwrap();
        let create = pos(&|a| matches!(a, Action::CreateVxlan { .. }));
        let fdb = pos(&|a| matches!(a, Action::ReplaceFdb { .. }));
        assert!(create < fdb);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::DeleteRouterNetns { .. } | Action::RemoveStateFile { .. }))
        );
    }

    #[test]
    fn converged_node_needs_nothing() {
        let c = config();
        assert_eq!(plan(&c, &converged(&c)), vec![]);
    }

    #[test]
    fn removed_peer_loses_only_its_own_entries() {
        let c = config();
        let obs = converged(&c);
        let mut c2 = c.clone();
        c2.slices[0].peers.retain(|p| p.name != "n3");
        let actions = plan(&c2, &obs);
        let n3 = RouterSpec::new(&c, &c.slices[0]).peers[1].clone();
        assert_eq!(
            actions,
            vec![
                Action::DeleteRoute { slice: "blue".into(), route: n3.route },
                Action::DeleteNeigh { slice: "blue".into(), dev: "sv100".into(), ip: n3.neigh.ip },
                Action::DeleteFdb { slice: "blue".into(), dev: "sv100".into(), entry: n3.fdb },
            ]
        );
    }

    #[test]
    fn added_peer_gets_its_entries_only() {
        let c = config();
        let obs = converged(&c);
        let mut c2 = c.clone();
        c2.slices[1].peers.push(PeerNode {
            name: "n4".into(),
            underlay_address: "198.18.250.4".parse().unwrap(),
            node_prefix: "10.80.0.192/26".parse().unwrap(),
        });
        let actions = plan(&c2, &obs);
        assert_eq!(slices_touched(&actions), BTreeSet::from(["red".to_string()]));
        assert_eq!(actions.len(), 3, "{actions:#?}");
        assert!(actions.iter().all(|a| matches!(
            a,
            Action::ReplaceFdb { .. } | Action::ReplaceNeigh { .. } | Action::ReplaceRoute { .. }
        )));
    }

    #[test]
    fn moved_peer_underlay_changes_its_fdb_entry_only() {
        let c = config();
        let obs = converged(&c);
        let mut c2 = c.clone();
        c2.slices[0].peers[0].underlay_address = "198.18.250.22".parse().unwrap();
        let actions = plan(&c2, &obs);
        let mac = [0x0a, 0x58, 10, 80, 0, 65];
        assert_eq!(
            actions,
            vec![
                Action::DeleteFdb {
                    slice: "blue".into(),
                    dev: "sv100".into(),
                    entry: Fdb { mac, dst: "198.18.250.2".parse().unwrap() }
                },
                Action::ReplaceFdb {
                    slice: "blue".into(),
                    dev: "sv100".into(),
                    entry: Fdb { mac, dst: "198.18.250.22".parse().unwrap() }
                },
            ]
        );
    }

    #[test]
    fn vni_change_recreates_the_vxlan_and_its_entries() {
        let c = config();
        let obs = converged(&c);
        let mut c2 = c.clone();
        c2.slices[0].vni = 101;
        let actions = plan(&c2, &obs);
        assert_eq!(slices_touched(&actions), BTreeSet::from(["blue".to_string()]));
        assert_eq!(actions[0], Action::DeleteVxlan { slice: "blue".into(), name: "sv100".into() });
        assert!(matches!(&actions[1], Action::CreateVxlan { spec, .. } if spec.name == "sv101"));
        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::ReplaceRoute { route, .. } if route.dev.as_deref() == Some("sv101")))
                .count(),
            2
        );
        // The state file records the new VNI.
        assert!(matches!(actions.last(), Some(Action::WriteStateFile { state, .. }) if state.vni == 101));
        assert!(!actions.iter().any(|a| matches!(a, Action::CreateRouterNetns { .. })));
    }

    #[test]
    fn underlay_change_recreates_every_vxlan() {
        let c = config();
        let obs = converged(&c);
        let mut c2 = c.clone();
        c2.underlay_address = "198.18.250.9".parse().unwrap();
        let actions = plan(&c2, &obs);
        let recreated: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::CreateVxlan { spec, .. } => Some(spec.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(recreated, vec!["sv100", "sv200"]);
    }

    #[test]
    fn mtu_change_is_in_place() {
        let c = config();
        let obs = converged(&c);
        let mut c2 = c.clone();
        c2.underlay_mtu = 9000;
        let actions = plan(&c2, &obs);
        assert!(actions.contains(&Action::SetVxlanMtu { slice: "blue".into(), name: "sv100".into(), mtu: 8950 }));
        assert!(!actions.iter().any(|a| matches!(a, Action::CreateVxlan { .. } | Action::DeleteVxlan { .. })));
        // The pod MTU in the state file follows.
        assert!(actions.iter().any(|a| matches!(a, Action::WriteStateFile { state, .. } if state.mtu == 8950)));
    }

    #[test]
    fn removed_slice_loses_state_file_before_its_namespace() {
        let c = config();
        let obs = converged(&c);
        let mut c2 = c.clone();
        c2.slices.retain(|s| s.name != "red");
        let actions = plan(&c2, &obs);
        assert_eq!(
            actions,
            vec![
                Action::RemoveStateFile { slice: "red".into() },
                Action::DeleteRouterNetns { slice: "red".into(), netns: "/run/netns/t1-red".into() },
            ]
        );
    }

    #[test]
    fn stale_namespace_without_state_file_is_removed() {
        let c = config();
        let mut obs = converged(&c);
        obs.router_netns.insert("old".into());
        let actions = plan(&c, &obs);
        assert_eq!(actions, vec![Action::DeleteRouterNetns { slice: "old".into(), netns: "/run/netns/t1-old".into() }]);
    }

    #[test]
    fn added_slice_leaves_the_others_alone() {
        let mut c = config();
        let red = c.slices.pop().unwrap();
        let obs = converged(&c);
        c.slices.push(red);
        let actions = plan(&c, &obs);
        assert_eq!(slices_touched(&actions), BTreeSet::from(["red".to_string()]));
    }

    #[test]
    fn drift_is_repaired_without_touching_the_rest() {
        let c = config();
        let mut obs = converged(&c);
        let blue = obs.routers.get_mut("blue").unwrap();
        blue.routes.remove(0);
        blue.sysctls.insert("net/ipv4/ip_forward".into(), "0".into());
        blue.vxlans[0].up = false;
        blue.neighs[0].mac = [0x0a, 0x58, 0, 0, 0, 0];
        let actions = plan(&c, &obs);
        let spec = RouterSpec::new(&c, &c.slices[0]);
        assert_eq!(
            actions,
            vec![
                Action::SetSysctl { slice: "blue".into(), key: "net/ipv4/ip_forward".into(), value: "1".into() },
                Action::SetVxlanUp { slice: "blue".into(), name: "sv100".into() },
                Action::ReplaceNeigh { slice: "blue".into(), dev: "sv100".into(), neigh: spec.peers[0].neigh.clone() },
                Action::ReplaceRoute { slice: "blue".into(), route: spec.peers[0].route.clone() },
            ]
        );
    }

    #[test]
    fn unreadable_or_outdated_state_file_is_rewritten() {
        let c = config();
        let mut obs = converged(&c);
        obs.state_files.insert("blue".into(), ObservedStateFile::Unreadable);
        let mut c2 = c.clone();
        c2.slices[1].namespaces.push("web".into());
        let actions = plan(&c2, &obs);
        assert_eq!(actions.len(), 2);
        assert!(actions.iter().all(|a| matches!(a, Action::WriteStateFile { .. })));
    }

    #[test]
    fn unobservable_slice_is_left_alone() {
        let c = config();
        let mut obs = converged(&c);
        obs.routers.remove("blue");
        obs.unobservable.insert("blue".into());
        obs.routers.get_mut("red").unwrap().lo_up = false;
        let actions = plan(&c, &obs);
        assert_eq!(actions, vec![Action::SetLoopbackUp { slice: "red".into() }]);
    }

    #[test]
    fn leftover_node_vxlan_is_deleted_first() {
        let c = config();
        let mut obs = converged(&c);
        obs.node_vxlans.push(ObservedVxlan {
            name: "sv100".into(),
            vni: Some(100),
            local: None,
            port: None,
            learning: None,
            mtu: 1450,
            mac: None,
            up: false,
        });
        let actions = plan(&c, &obs);
        assert_eq!(actions, vec![Action::DeleteNodeVxlan { slice: "blue".into(), name: "sv100".into() }]);
    }

    #[test]
    fn stray_loopback_address_is_removed_and_router_address_added() {
        let c = config();
        let mut obs = converged(&c);
        let blue = obs.routers.get_mut("blue").unwrap();
        blue.lo_addrs = vec![
            "127.0.0.1/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
            "10.80.9.1/32".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap(),
        ];
        let actions = plan(&c, &obs);
        assert_eq!(
            actions,
            vec![
                Action::DeleteLoopbackAddress { slice: "blue".into(), addr: "10.80.9.1/32".parse().unwrap() },
                Action::AddLoopbackAddress { slice: "blue".into(), addr: "10.80.0.1/32".parse().unwrap() },
            ]
        );
    }

    fn remote(prefix: &str, via: &str) -> RemoteRoute {
        RemoteRoute { prefix: prefix.parse().unwrap(), via: via.parse().unwrap() }
    }

    /// Blue with a gateway on this node (10.80.0.5) for 10.80.16.0/20 and one on n2 (10.80.0.70)
    /// for 10.80.32.0/20.
    fn config_with_remote_routes() -> NodeAgentConfig {
        let mut c = config();
        c.slices[0].remote_routes = vec![remote("10.80.32.0/20", "10.80.0.70"), remote("10.80.16.0/20", "10.80.0.5")];
        c.validate().unwrap();
        c
    }

    fn local_route() -> Route {
        Route {
            dst: "10.80.16.0/20".parse().unwrap(),
            gateway: Some("10.80.0.5".parse().unwrap()),
            dev: None,
            src: None,
            onlink: false,
            scope_link: false,
        }
    }

    fn via_peer_route() -> Route {
        Route {
            dst: "10.80.32.0/20".parse().unwrap(),
            gateway: Some("10.80.0.65".parse().unwrap()),
            dev: Some("sv100".into()),
            src: None,
            onlink: true,
            scope_link: false,
        }
    }

    #[test]
    fn remote_route_specs_follow_the_gateway() {
        let c = config_with_remote_routes();
        let spec = RouterSpec::new(&c, &c.slices[0]);
        assert_eq!(spec.remote_routes.len(), 2);
        assert!(spec.remote_routes[0].local);
        assert_eq!(spec.remote_routes[0].route, local_route());
        assert!(!spec.remote_routes[1].local);
        assert_eq!(spec.remote_routes[1].route, via_peer_route());
        // The state file does not change: the CNI plugin needs nothing of this.
        assert_eq!(spec.state, RouterSpec::new(&config(), &config().slices[0]).state);
    }

    #[test]
    fn fresh_node_writes_state_then_waits_for_its_gateway() {
        let c = config_with_remote_routes();
        let actions = plan(&c, &Observed::default());
        let blue: Vec<&Action> = actions.iter().filter(|a| a.slice() == "blue").collect();
        let state = blue.iter().position(|a| matches!(a, Action::WriteStateFile { .. })).unwrap();
        let via_peer = blue
            .iter()
            .position(|a| matches!(a, Action::ReplaceRoute { route, .. } if *route == via_peer_route()))
            .unwrap();
        assert!(via_peer < state, "the via-peer route is part of the router");
        assert_eq!(
            blue.last().unwrap(),
            &&Action::AwaitGateway { slice: "blue".into(), pending: vec![remote("10.80.16.0/20", "10.80.0.5")] }
        );
        assert!(!blue.iter().any(|a| matches!(a, Action::ReplaceRoute { route, .. } if *route == local_route())));
        // Red is not held up.
        assert!(!actions.iter().any(|a| a.slice() == "red" && matches!(a, Action::AwaitGateway { .. })));
    }

    #[test]
    fn gateway_pod_arrival_adds_the_local_route_only() {
        let c = config_with_remote_routes();
        let mut obs = converged(&c);
        let blue = obs.routers.get_mut("blue").unwrap();
        blue.gateway_routes.clear();
        blue.local_hosts.remove(&"10.80.0.5".parse().unwrap());
        assert_eq!(
            plan(&c, &obs),
            vec![Action::AwaitGateway { slice: "blue".into(), pending: vec![remote("10.80.16.0/20", "10.80.0.5")] }]
        );
        obs.routers.get_mut("blue").unwrap().local_hosts.insert("10.80.0.5".parse().unwrap());
        assert_eq!(plan(&c, &obs), vec![Action::ReplaceRoute { slice: "blue".into(), route: local_route() }]);
    }

    #[test]
    fn converged_remote_routes_need_nothing() {
        let c = config_with_remote_routes();
        assert_eq!(plan(&c, &converged(&c)), vec![]);
    }

    #[test]
    fn removed_remote_routes_are_deleted_and_foreign_routes_kept() {
        let c = config_with_remote_routes();
        let mut obs = converged(&c);
        // A gateway route outside the slice subnet is not ours.
        obs.routers.get_mut("blue").unwrap().gateway_routes.push(Route {
            dst: "192.0.2.0/24".parse().unwrap(),
            gateway: Some("10.80.0.2".parse().unwrap()),
            dev: Some("snpod".into()),
            src: None,
            onlink: false,
            scope_link: false,
        });
        let actions = plan(&config(), &obs);
        assert_eq!(
            actions,
            vec![
                Action::DeleteRoute { slice: "blue".into(), route: via_peer_route() },
                Action::DeleteRoute {
                    slice: "blue".into(),
                    route: Route { dev: Some("sngw".into()), ..local_route() }
                },
            ]
        );
    }

    #[test]
    fn gateway_moving_to_a_peer_swaps_the_route() {
        let c = config_with_remote_routes();
        let obs = converged(&c);
        let mut c2 = c.clone();
        c2.slices[0].remote_routes = vec![remote("10.80.32.0/20", "10.80.0.70"), remote("10.80.16.0/20", "10.80.0.71")];
        let actions = plan(&c2, &obs);
        let moved = Route { dst: "10.80.16.0/20".parse().unwrap(), ..via_peer_route() };
        assert_eq!(
            actions,
            vec![
                Action::ReplaceRoute { slice: "blue".into(), route: moved },
                Action::DeleteRoute {
                    slice: "blue".into(),
                    route: Route { dev: Some("sngw".into()), ..local_route() }
                },
            ]
        );
    }
}
