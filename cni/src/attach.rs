//! The side effects of ADD, DEL and CHECK: one veth between the slice router namespace and the
//! pod, its address and routes. Creation is undone on failure; removal is idempotent.
//!
//! Layout (DESIGN.md "Data path"): in the pod, the slice interface holds `IP/32`, a link-scope
//! route to the router address and a route for the slice subnet via it (`src` = the pod's IP);
//! in the router namespace, the host end (named from the attachment key) and a `/32` route to
//! the pod. Strict reverse-path filtering in the router namespace (set by the node agent) drops
//! packets a pod sends from any other address.
//!
//! A dual-stack slice gives the pod one address per family on the same interface. IPv6 differs
//! in one point: the router address sits on the router's `lo`, and the kernel answers neighbour
//! solicitations only for addresses of the interface they arrive on (unlike ARP), so a pod could
//! not resolve it. The host end carries [`ROUTER_LINK_LOCAL`] (`fe80::1`) instead and the pod
//! routes the IPv6 slice subnet via it; the router address stays reachable through that route.
//! The node agent's nft `fib` check (IPv6 has no `rp_filter`) passes the pod's neighbour
//! discovery: its link-local source is routed back through the same veth (`fe80::/64`).

use std::net::IpAddr;
use std::path::Path;

use dataplane::{Netlink, NetlinkOps, Netns, Route, VethRequest};
use ipnet::IpNet;
use slice_api::NodeState;

use crate::ipam::Key;
use crate::spec::{CniError, Result, code};

/// The host end's name: `sn` + 12 hex digits of a stable hash of the key (15-byte limit), so
/// DEL and GC find it from the key alone, after any crash.
pub fn host_veth_name(key: &Key) -> String {
    let hash = slice_api::fnv::fnv1a_64(key.container_id.bytes().chain([0]).chain(key.ifname.bytes()));
    format!("sn{:012x}", hash >> 16)
}

/// What ADD made, for the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// The IPv6 next hop of every pod: a link-local address on each host end, the same on all of
/// them (link scope), so a pod's route needs no per-node value.
pub const ROUTER_LINK_LOCAL: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1));

fn sys(e: dataplane::Error) -> CniError {
    CniError::new(code::IO, e.to_string())
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix length is valid")
}

/// Opens the slice router namespace of `state`.
///
/// # Errors
/// Code 11 when it is missing (the node agent has not made it yet or is repairing it).
pub fn open_router(state: &NodeState) -> Result<Netns> {
    Netns::open(&state.router_netns).map_err(|e| {
        CniError::new(
            code::TRY_AGAIN,
            format!(
                "slice {} is not ready on this node: router namespace {} cannot be opened; try again later",
                state.slice,
                state.router_netns.display()
            ),
        )
        .with_details(e.to_string())
    })
}

/// Opens the pod's namespace.
///
/// # Errors
/// Code 3 when it does not exist.
pub fn open_pod(netns: &str) -> Result<Netns> {
    Netns::open(Path::new(netns)).map_err(|e| {
        CniError::new(code::UNKNOWN_CONTAINER, format!("pod network namespace {netns} cannot be opened"))
            .with_details(e.to_string())
    })
}

/// Creates the slice interface `ifname` in the pod with `ip`, and its host end in the router
/// namespace. On failure, removes what it made.
///
/// # Errors
/// Code 11 when the router namespace is missing, 3 when the pod namespace is, 5 for a netlink
/// failure (the message names the object and the errno).
pub fn attach(state: &NodeState, pod_netns: &str, ifname: &str, ips: &[IpAddr], key: &Key) -> Result<Attached> {
    let router_ns = open_router(state)?;
    let pod_ns = open_pod(pod_netns)?;
    let mut router = Netlink::in_netns(&router_ns).map_err(sys)?;
    attach_with(state, &pod_ns, &mut router, || Netlink::in_netns(&pod_ns), ifname, ips, key)
}

/// [`attach`] through `router` (a handle on the router namespace) and the handle `pod_handle`
/// opens on `pod_ns`: the order of the requests and what is undone when one fails, whatever
/// carries them out (the kernel, or a recording fake in tests).
///
/// # Errors
/// As [`attach`].
pub fn attach_with<R: NetlinkOps, P: NetlinkOps>(
    state: &NodeState,
    pod_ns: &Netns,
    router: &mut R,
    pod_handle: impl FnOnce() -> dataplane::Result<P>,
    ifname: &str,
    ips: &[IpAddr],
    key: &Key,
) -> Result<Attached> {
    let host = host_veth_name(key);
    router
        .create_veth(&VethRequest {
            name: &host,
            netns: None,
            peer_name: ifname,
            peer_netns: Some(pod_ns),
            mtu: Some(state.mtu),
            mac: None,
            peer_mac: None,
        })
        .map_err(sys)?;
    let configured =
        pod_handle().map_err(sys).and_then(|mut pod| configure(state, &mut pod, router, &host, ifname, ips));
    if configured.is_err() {
        // Deleting the host end removes the pod end and every route through either.
        let _ = router.delete_link(&host);
    }
    configured
}

fn configure(
    state: &NodeState,
    pod: &mut impl NetlinkOps,
    router: &mut impl NetlinkOps,
    host: &str,
    ifname: &str,
    ips: &[IpAddr],
) -> Result<Attached> {
    for ip in ips {
        pod.add_addr(ifname, host_prefix(*ip)).map_err(sys)?;
    }
    pod.set_up(ifname).map_err(sys)?;
    for ip in ips {
        for route in pod_routes(state, ifname, *ip)? {
            pod.replace_route(&route).map_err(sys)?;
        }
    }
    let link = pod
        .link(ifname)
        .map_err(sys)?
        .ok_or_else(|| CniError::new(code::IO, format!("{ifname} vanished from the pod namespace")))?;
    if ips.iter().any(IpAddr::is_ipv6) {
        router.add_addr(host, IpNet::new(ROUTER_LINK_LOCAL, 64).expect("valid")).map_err(sys)?;
    }
    router.set_up(host).map_err(sys)?;
    for ip in ips {
        // Added, never replaced: a /32 that already exists leads to another pod, whose traffic
        // must not move to this one.
        router.add_route(&router_route(host, *ip)).map_err(|e| {
            if e.is_exists() {
                CniError::new(
                    code::ADDRESS_IN_USE,
                    format!(
                        "address {ip} of slice {} is already routed to another pod in router namespace {}; \
                         refusing to take it over",
                        state.slice,
                        state.router_netns.display()
                    ),
                )
            } else {
                sys(e)
            }
        })?;
    }
    Ok(Attached { mac: link.mac.unwrap_or_default(), mtu: link.mtu })
}

/// The family of `state` that `ip` belongs to: (slice subnet, router address).
///
/// # Errors
/// Code 5 when `ip` is in none of the slice's subnets (an allocation from another plan).
pub fn family_of(state: &NodeState, ip: IpAddr) -> Result<(IpNet, IpAddr)> {
    state.families().find(|(subnet, _, _)| subnet.contains(&ip)).map(|(subnet, _, router)| (subnet, router)).ok_or_else(
        || {
            CniError::new(
                code::IO,
                format!("address {ip} is in none of the subnets of slice {} on this node", state.slice),
            )
        },
    )
}

/// The next hop a pod's route to the slice subnet of `ip`'s family goes through: the router
/// address for IPv4, [`ROUTER_LINK_LOCAL`] for IPv6.
#[must_use]
pub fn next_hop(router: IpAddr) -> IpAddr {
    if router.is_ipv4() { router } else { ROUTER_LINK_LOCAL }
}

/// The routes the pod gets for `ip`'s family. IPv4: the router address on the link, the slice
/// subnet via it. IPv6: the slice subnet via [`ROUTER_LINK_LOCAL`] (see the module's notes).
///
/// # Errors
/// As [`family_of`].
pub fn pod_routes(state: &NodeState, ifname: &str, ip: IpAddr) -> Result<Vec<Route>> {
    let (subnet, router) = family_of(state, ip)?;
    let via = Route {
        dst: subnet,
        gateway: Some(next_hop(router)),
        dev: Some(ifname.into()),
        src: Some(ip),
        onlink: false,
        scope_link: false,
    };
    if ip.is_ipv6() {
        return Ok(vec![via]);
    }
    Ok(vec![
        Route {
            dst: host_prefix(router),
            gateway: None,
            dev: Some(ifname.into()),
            src: Some(ip),
            onlink: false,
            scope_link: true,
        },
        via,
    ])
}

/// The route the router namespace gets to the pod.
pub fn router_route(host: &str, ip: IpAddr) -> Route {
    Route { dst: host_prefix(ip), gateway: None, dev: Some(host.into()), src: None, onlink: false, scope_link: true }
}

/// Removes the attachment of `key` from the router namespace of `state` (which removes the pod
/// end too). Nothing to remove is success.
///
/// # Errors
/// Code 5 when the link exists but cannot be deleted.
pub fn detach(state: &NodeState, key: &Key) -> Result<()> {
    let Ok(router_ns) = Netns::open(&state.router_netns) else {
        return Ok(()); // no router namespace, no host end
    };
    let mut router = Netlink::in_netns(&router_ns).map_err(sys)?;
    router.delete_link(&host_veth_name(key)).map_err(sys)?;
    Ok(())
}

/// Compares the attachment with what ADD makes and lists every difference.
///
/// # Errors
/// Code 5 when the namespaces cannot be read at all.
pub fn differences(state: &NodeState, pod_netns: &str, ifname: &str, ips: &[IpAddr], key: &Key) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    let pod_ns = open_pod(pod_netns)?;
    let mut pod = Netlink::in_netns(&pod_ns).map_err(sys)?;
    match pod.link(ifname).map_err(sys)? {
        None => diffs.push(format!("interface {ifname} is missing in the pod")),
        Some(link) => {
            if !link.up {
                diffs.push(format!("interface {ifname} is down"));
            }
            if link.mtu != state.mtu {
                diffs.push(format!("interface {ifname} has MTU {} instead of {}", link.mtu, state.mtu));
            }
            let addrs = pod.addrs(ifname).map_err(sys)?;
            for ip in ips {
                if !addrs.contains(&host_prefix(*ip)) {
                    diffs.push(format!("interface {ifname} lacks address {}", host_prefix(*ip)));
                }
                let routes = pod.routes(ip.is_ipv6()).map_err(sys)?;
                for want in pod_routes(state, ifname, *ip)? {
                    if !routes.iter().any(|r| r.dst == want.dst && r.gateway == want.gateway && r.dev == want.dev) {
                        diffs.push(format!("pod route to {} is missing", want.dst));
                    }
                }
            }
        }
    }
    let router_ns = open_router(state)?;
    let mut router = Netlink::in_netns(&router_ns).map_err(sys)?;
    let host = host_veth_name(key);
    match router.link(&host).map_err(sys)? {
        None => diffs.push(format!("host end {host} is missing in the slice router")),
        Some(link) if !link.up => diffs.push(format!("host end {host} is down")),
        Some(_) => {
            for ip in ips {
                let routes = router.routes(ip.is_ipv6()).map_err(sys)?;
                let want = router_route(&host, *ip);
                if !routes.iter().any(|r| r.dst == want.dst && r.dev == want.dev) {
                    diffs.push(format!("slice router route to {} via {host} is missing", want.dst));
                }
            }
            if ips.iter().any(IpAddr::is_ipv6) {
                let ll = IpNet::new(ROUTER_LINK_LOCAL, 64).expect("valid");
                if !router.addrs(&host).map_err(sys)?.contains(&ll) {
                    diffs.push(format!("host end {host} lacks the IPv6 next hop {ll}"));
                }
            }
        }
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_veth_name(&Key { container_id: "abc".into(), ifname: "slice0".into() });
        let b = host_veth_name(&Key { container_id: "abc".into(), ifname: "net1".into() });
        assert_eq!(a.len(), 14);
        assert_ne!(a, b);
        // Pinned: a change would orphan host ends across a plugin upgrade.
        assert_eq!(a, "sncf2606ebbf5f");
        assert!(a.starts_with("sn"));
    }

    use dataplane::fake::{FakeNetlink, FakeWorld};

    fn state() -> NodeState {
        NodeState {
            slice: "blue".into(),
            vni: 100,
            router_netns: "/run/netns/slice-blue".into(),
            node_prefix: "10.80.0.0/26".parse().unwrap(),
            router_address: "10.80.0.1".parse().unwrap(),
            slice_subnet: "10.80.0.0/16".parse().unwrap(),
            mtu: 1400,
            namespaces: vec!["shop".into()],
            gateway_namespace: None,
            secondary: None,
        }
    }

    /// Runs attach against a fake router ("router") and pod ("pod") namespace.
    fn attach_fake(world: &FakeWorld, key: &Key) -> Result<Attached> {
        // Any namespace object will do: the fake only needs to know the peer goes elsewhere.
        let pod_ns = Netns::current().expect("the current namespace opens without privileges");
        let mut router = world.handle("router", "pod");
        let pod = world.handle("pod", "router");
        attach_with(&state(), &pod_ns, &mut router, || Ok::<FakeNetlink, dataplane::Error>(pod), "slice0", &[ip()], key)
    }

    fn ip() -> IpAddr {
        "10.80.0.7".parse().unwrap()
    }

    fn key() -> Key {
        Key { container_id: "c1".into(), ifname: "slice0".into() }
    }

    #[test]
    fn attach_makes_the_veth_addresses_and_routes_in_order() {
        let world = FakeWorld::new();
        let attached = attach_fake(&world, &key()).unwrap();
        assert_eq!(attached.mtu, 1400);
        let host = host_veth_name(&key());
        assert_eq!(world.links("router"), std::slice::from_ref(&host));
        assert_eq!(world.links("pod"), ["slice0"]);
        assert_eq!(world.addrs("pod", "slice0"), ["10.80.0.7/32".parse::<IpNet>().unwrap()]);
        let pod_routes: Vec<String> = world.routes("pod").iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(pod_routes, ["10.80.0.1/32", "10.80.0.0/16"]);
        assert_eq!(world.routes("router"), [router_route(&host, ip())]);
        // The pod end is configured before the router routes to it.
        let calls = world.calls();
        let pos = |c: &str| calls.iter().position(|x| x.starts_with(c)).unwrap_or_else(|| panic!("{c}: {calls:?}"));
        assert!(pos("pod: add_addr") < pos("router: set_up") && pos("router: set_up") < pos("router: add_route"));
    }

    #[test]
    fn a_failed_step_undoes_the_veth_and_says_what_failed() {
        for (step, errno, code) in [
            ("pod: add_addr", nix::libc::EPERM, code::IO),
            ("pod: set_up", nix::libc::EIO, code::IO),
            ("pod: replace_route", nix::libc::ENETUNREACH, code::IO),
            ("router: set_up", nix::libc::EBUSY, code::IO),
            // Another pod's /32 already in the router namespace: refused, not taken over.
            ("router: add_route", nix::libc::EEXIST, code::ADDRESS_IN_USE),
        ] {
            let world = FakeWorld::new();
            world.fail_next(step, errno);
            let e = attach_fake(&world, &key()).unwrap_err();
            assert_eq!(e.code, code, "{step}: {e}");
            assert!(world.links("router").is_empty() && world.links("pod").is_empty(), "{step}: veth left");
            assert!(world.routes("router").is_empty() && world.routes("pod").is_empty(), "{step}: routes left");
            assert!(world.calls().last().unwrap().starts_with("router: delete_link"), "{step}: {:?}", world.calls());
        }
        // A failure to create the veth leaves nothing to undo.
        let world = FakeWorld::new();
        world.fail_next("router: create_veth", nix::libc::EEXIST);
        assert_eq!(attach_fake(&world, &key()).unwrap_err().code, code::IO);
        assert!(!world.calls().iter().any(|c| c.contains("delete_link")), "{:?}", world.calls());
    }

    fn dual_state() -> NodeState {
        NodeState {
            secondary: Some(slice_api::node::NodeStateFamily {
                slice_subnet: "fd00:80::/48".parse().unwrap(),
                node_prefix: "fd00:80::/120".parse().unwrap(),
                router_address: "fd00:80::1".parse().unwrap(),
            }),
            ..state()
        }
    }

    #[test]
    fn a_dual_stack_attachment_has_an_address_and_routes_per_family() {
        let world = FakeWorld::new();
        let pod_ns = Netns::current().expect("the current namespace opens without privileges");
        let mut router = world.handle("router", "pod");
        let pod = world.handle("pod", "router");
        let v6: IpAddr = "fd00:80::7".parse().unwrap();
        let ips = [ip(), v6];
        attach_with(
            &dual_state(),
            &pod_ns,
            &mut router,
            || Ok::<FakeNetlink, dataplane::Error>(pod),
            "slice0",
            &ips,
            &key(),
        )
        .unwrap();
        let host = host_veth_name(&key());
        let addrs: Vec<String> = world.addrs("pod", "slice0").iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["10.80.0.7/32", "fd00:80::7/128"]);
        let pod_routes: Vec<(String, Option<IpAddr>)> =
            world.routes("pod").iter().map(|r| (r.dst.to_string(), r.gateway)).collect();
        assert_eq!(
            pod_routes,
            [
                ("10.80.0.1/32".to_owned(), None),
                ("10.80.0.0/16".to_owned(), Some("10.80.0.1".parse().unwrap())),
                ("fd00:80::/48".to_owned(), Some(ROUTER_LINK_LOCAL)),
            ]
        );
        assert_eq!(world.addrs("router", &host), ["fe80::1/64".parse::<IpNet>().unwrap()]);
        assert_eq!(world.routes("router"), [router_route(&host, ip()), router_route(&host, v6)]);
        // The second family's route failing undoes the whole veth, the first family's route with it.
        let world = FakeWorld::new();
        let mut router = world.handle("router", "pod");
        let pod = world.handle("pod", "router");
        world.fail_next("router: add_route fd00:80::7/128", nix::libc::EEXIST);
        let e = attach_with(
            &dual_state(),
            &pod_ns,
            &mut router,
            || Ok::<FakeNetlink, dataplane::Error>(pod),
            "slice0",
            &ips,
            &key(),
        )
        .unwrap_err();
        assert_eq!(e.code, code::ADDRESS_IN_USE, "{e}");
        assert!(e.msg.contains("address fd00:80::7 of slice blue"), "{e}");
        assert!(
            world.links("router").is_empty() && world.routes("router").is_empty() && world.routes("pod").is_empty()
        );
    }

    #[test]
    fn an_address_outside_every_subnet_is_refused() {
        let e = pod_routes(&state(), "slice0", "fd00:80::7".parse().unwrap()).unwrap_err();
        assert!(e.msg.contains("fd00:80::7 is in none of the subnets of slice blue"), "{e}");
    }
}
