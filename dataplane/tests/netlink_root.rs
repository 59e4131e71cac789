//! Root integration tests of the dataplane layer against the real kernel. Every test makes its
//! own uniquely named namespaces (pid + counter) and removes them in a `Drop` guard, so tests
//! run in parallel and clean up even when they panic. They fail (never skip) without root.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use dataplane::{
    Error, Fdb, Netlink, Netns, Nexthop, NexthopKind, NexthopRoute, Route, Rule, VethRequest, VxlanRequest,
};
use ipnet::IpNet;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named namespace under /run/netns that is deleted when dropped.
struct TestNs {
    ns: Netns,
    path: PathBuf,
}

impl TestNs {
    fn new(tag: &str) -> Self {
        assert!(nix::unistd::geteuid().is_root(), "these tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/run/netns/dpt-{tag}-{}-{n}", std::process::id()));
        let (ns, created) = Netns::ensure_named(&path).expect("create test namespace");
        assert!(created, "{} existed already", path.display());
        Self { ns, path }
    }

    fn nl(&self) -> Netlink {
        Netlink::in_netns(&self.ns).expect("netlink in test namespace")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Netns::delete_named(&self.path);
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A veth pair va (in a) ↔ vb (in b), both up, with 198.18.x addresses.
fn veth_pair(a: &TestNs, b: &TestNs) -> (Netlink, Netlink) {
    let mut na = a.nl();
    na.create_veth(&VethRequest {
        name: "va",
        netns: None,
        peer_name: "vb",
        peer_netns: Some(&b.ns),
        mtu: Some(1400),
        mac: None,
        peer_mac: Some([0x0a, 0x58, 1, 2, 3, 4]),
    })
    .unwrap();
    let mut nb = b.nl();
    na.set_up("va").unwrap();
    nb.set_up("vb").unwrap();
    (na, nb)
}

#[test]
fn veth_is_created_across_two_namespaces_in_one_request() {
    let a = TestNs::new("veth-a");
    let b = TestNs::new("veth-b");
    let c = TestNs::new("veth-c");
    // From c's handle, put both ends straight into a and b.
    let mut nc = c.nl();
    nc.create_veth(&VethRequest {
        name: "left",
        netns: Some(&a.ns),
        peer_name: "right",
        peer_netns: Some(&b.ns),
        mtu: Some(1450),
        mac: Some([0x0a, 0x58, 0, 0, 0, 1]),
        peer_mac: Some([0x0a, 0x58, 0, 0, 0, 2]),
    })
    .unwrap();
    assert!(nc.link("left").unwrap().is_none());
    assert!(nc.link("right").unwrap().is_none());

    let left = a.nl().link("left").unwrap().expect("left in a");
    assert_eq!(left.kind.as_deref(), Some("veth"));
    assert_eq!(left.mtu, 1450);
    assert_eq!(left.mac, Some([0x0a, 0x58, 0, 0, 0, 1]));
    assert!(!left.up);
    let right = b.nl().link("right").unwrap().expect("right in b");
    assert_eq!(right.mac, Some([0x0a, 0x58, 0, 0, 0, 2]));
    assert_eq!(right.mtu, 1450);

    let mut na = a.nl();
    na.set_up("left").unwrap();
    assert!(na.link("left").unwrap().unwrap().up);
    na.set_mtu("left", 1300).unwrap();
    assert_eq!(na.link("left").unwrap().unwrap().mtu, 1300);
    assert!(na.links().unwrap().iter().any(|l| l.name == "lo"));

    // Deleting one end removes the pair; deleting again is not an error.
    assert!(na.delete_link("left").unwrap());
    assert!(!na.delete_link("left").unwrap());
    assert!(b.nl().link("right").unwrap().is_none());
}

#[test]
fn creating_an_existing_veth_says_eexist_and_names_the_object() {
    let a = TestNs::new("eexist-a");
    let b = TestNs::new("eexist-b");
    let _ = veth_pair(&a, &b);
    let err = a
        .nl()
        .create_veth(&VethRequest {
            name: "va",
            netns: None,
            peer_name: "other",
            peer_netns: Some(&b.ns),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .unwrap_err();
    assert!(err.is_exists(), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("EEXIST: creating veth va (peer other in namespace /run/netns/dpt-eexist-b-"), "{text}");
    assert!(text.contains(": File exists"), "{text}");
}

#[test]
fn addresses_are_added_idempotently_and_removed() {
    let a = TestNs::new("addr-a");
    let b = TestNs::new("addr-b");
    let (mut na, _nb) = veth_pair(&a, &b);
    na.add_addr("va", net("198.18.251.1/24")).unwrap();
    na.add_addr("va", net("198.18.251.1/24")).unwrap();
    na.add_addr("va", net("fd00:198:18::1/64")).unwrap();
    na.add_addr("lo", net("198.18.252.1/32")).unwrap();
    let addrs = na.addrs("va").unwrap();
    assert!(addrs.contains(&net("198.18.251.1/24")), "{addrs:?}");
    assert!(addrs.contains(&net("fd00:198:18::1/64")), "{addrs:?}");
    assert_eq!(addrs.iter().filter(|a| **a == net("198.18.251.1/24")).count(), 1);
    assert!(na.addrs("lo").unwrap().contains(&net("198.18.252.1/32")));

    assert!(na.del_addr("va", net("198.18.251.1/24")).unwrap());
    assert!(!na.del_addr("va", net("198.18.251.1/24")).unwrap());
    assert!(!na.del_addr("nosuchdev", net("198.18.251.1/24")).unwrap());
    assert!(!na.addrs("va").unwrap().contains(&net("198.18.251.1/24")));

    let err = na.add_addr("nosuchdev", net("198.18.251.1/24")).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}

#[test]
fn routes_with_onlink_src_and_scope_link_round_trip() {
    let a = TestNs::new("route-a");
    let b = TestNs::new("route-b");
    let (mut na, _nb) = veth_pair(&a, &b);
    na.add_addr("lo", net("198.18.253.1/32")).unwrap();

    let link_route = Route {
        dst: net("198.18.253.2/32"),
        gateway: None,
        dev: Some("va".into()),
        src: Some(ip("198.18.253.1")),
        onlink: false,
        scope_link: true,
    };
    let onlink_route = Route {
        dst: net("198.18.254.0/26"),
        gateway: Some(ip("198.18.253.65")),
        dev: Some("va".into()),
        src: None,
        onlink: true,
        scope_link: false,
    };
    let via_route = Route {
        dst: net("198.18.240.0/24"),
        gateway: Some(ip("198.18.253.2")),
        dev: Some("va".into()),
        src: Some(ip("198.18.253.1")),
        onlink: false,
        scope_link: false,
    };
    for r in [&link_route, &onlink_route, &via_route] {
        na.replace_route(r).unwrap();
        na.replace_route(r).unwrap();
    }
    let routes = na.routes(false).unwrap();
    for r in [&link_route, &onlink_route, &via_route] {
        assert!(routes.contains(r), "{r:?} not in {routes:?}");
    }
    assert_eq!(routes.iter().filter(|r| r.dst == onlink_route.dst).count(), 1);

    // An IPv6 route through a device.
    na.add_addr("va", net("fd00:198:18:1::1/64")).unwrap();
    let v6 = Route {
        dst: net("fd00:198:18:2::/64"),
        gateway: Some(ip("fd00:198:18:1::2")),
        dev: Some("va".into()),
        src: None,
        onlink: false,
        scope_link: false,
    };
    na.replace_route(&v6).unwrap();
    assert!(na.routes(true).unwrap().contains(&v6));
    assert!(!na.routes(false).unwrap().contains(&v6));

    // A gateway that is not on any link, without onlink: the kernel refuses and says why.
    let unreachable = Route {
        dst: net("198.18.230.0/24"),
        gateway: Some(ip("198.18.231.1")),
        dev: Some("va".into()),
        src: None,
        onlink: false,
        scope_link: false,
    };
    let err = na.replace_route(&unreachable).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("ENETUNREACH: replacing route 198.18.230.0/24 via 198.18.231.1 dev va: "), "{text}");
    eprintln!("{text}");

    for r in [&link_route, &onlink_route, &via_route, &v6] {
        assert!(na.del_route(r).unwrap(), "{r:?}");
        assert!(!na.del_route(r).unwrap(), "{r:?}");
    }
    let routes = na.routes(false).unwrap();
    assert!(!routes.contains(&onlink_route));
}

#[test]
fn permanent_neighbours_are_replaced_and_deleted() {
    let a = TestNs::new("neigh-a");
    let b = TestNs::new("neigh-b");
    let (mut na, _nb) = veth_pair(&a, &b);
    let mac = [0x0a, 0x58, 198, 18, 9, 1];
    na.replace_neigh("va", ip("198.18.9.1"), mac).unwrap();
    na.replace_neigh("va", ip("198.18.9.1"), mac).unwrap();
    na.replace_neigh("va", ip("fd00::9:1"), mac).unwrap();
    let neighs = na.neighs("va").unwrap();
    let n = neighs.iter().find(|n| n.ip == ip("198.18.9.1")).unwrap();
    assert_eq!(n.mac, mac);
    assert!(n.permanent);
    assert!(neighs.iter().any(|n| n.ip == ip("fd00::9:1") && n.permanent));

    let mac2 = [0x0a, 0x58, 198, 18, 9, 2];
    na.replace_neigh("va", ip("198.18.9.1"), mac2).unwrap();
    let neighs = na.neighs("va").unwrap();
    assert_eq!(neighs.iter().find(|n| n.ip == ip("198.18.9.1")).unwrap().mac, mac2);

    assert!(na.del_neigh("va", ip("198.18.9.1")).unwrap());
    assert!(!na.del_neigh("va", ip("198.18.9.1")).unwrap());
    assert!(!na.del_neigh("nosuchdev", ip("198.18.9.1")).unwrap());
}

#[test]
fn vxlan_with_fdb_entries_moves_into_another_namespace() {
    let node = TestNs::new("vx-node");
    let router = TestNs::new("vx-router");
    let mut nn = node.nl();
    let mac = [0x0a, 0x58, 10, 80, 0, 1];
    nn.create_vxlan(&VxlanRequest {
        name: "sv4242".into(),
        vni: 4242,
        local: ip("198.18.250.1"),
        port: 4789,
        mtu: 1450,
        mac,
    })
    .unwrap();
    let link = nn.link("sv4242").unwrap().unwrap();
    assert_eq!(link.kind.as_deref(), Some("vxlan"));
    assert_eq!(link.vxlan_id, Some(4242));
    assert_eq!(link.vxlan_local, Some(ip("198.18.250.1")));
    assert_eq!(link.vxlan_port, Some(4789));
    assert_eq!(link.vxlan_learning, Some(false));
    assert_eq!(link.mac, Some(mac));
    assert_eq!(link.mtu, 1450);

    let err = nn
        .create_vxlan(&VxlanRequest {
            name: "sv4242".into(),
            vni: 4242,
            local: ip("198.18.250.1"),
            port: 4789,
            mtu: 1450,
            mac,
        })
        .unwrap_err();
    assert!(err.to_string().starts_with("EEXIST: creating vxlan sv4242"), "{err}");

    nn.set_netns("sv4242", &router.ns).unwrap();
    assert!(nn.link("sv4242").unwrap().is_none());
    let mut nr = router.nl();
    nr.set_up("sv4242").unwrap();
    let moved = nr.link("sv4242").unwrap().unwrap();
    assert_eq!(moved.vxlan_id, Some(4242));
    assert!(moved.up);

    let e1 = Fdb { mac: [0x0a, 0x58, 10, 80, 0, 65], dst: ip("198.18.250.2") };
    let e2 = Fdb { mac: [0x0a, 0x58, 10, 80, 0, 129], dst: ip("198.18.250.3") };
    nr.replace_fdb("sv4242", &e1).unwrap();
    nr.replace_fdb("sv4242", &e1).unwrap();
    nr.replace_fdb("sv4242", &e2).unwrap();
    let fdb = nr.fdb("sv4242").unwrap();
    assert!(fdb.contains(&e1) && fdb.contains(&e2), "{fdb:?}");
    assert_eq!(fdb.iter().filter(|e| **e == e1).count(), 1);

    // Replace moves the MAC to another destination.
    let e1b = Fdb { mac: e1.mac, dst: ip("198.18.250.4") };
    nr.replace_fdb("sv4242", &e1b).unwrap();
    let fdb = nr.fdb("sv4242").unwrap();
    assert!(fdb.contains(&e1b) && !fdb.contains(&e1), "{fdb:?}");

    assert!(nr.del_fdb("sv4242", &e2).unwrap());
    assert!(!nr.del_fdb("sv4242", &e2).unwrap());
    assert!(!nr.del_fdb("nosuchdev", &e2).unwrap());
    assert_eq!(nr.fdb("sv4242").unwrap(), vec![e1b]);
}

#[test]
fn namespaces_are_idempotent_and_run_never_moves_the_caller() {
    let before = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    let a = TestNs::new("ns-a");
    let (again, created) = Netns::ensure_named(&a.path).unwrap();
    assert!(!created);
    let inode = |ns: &Netns| ns.run(|| std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()).unwrap();
    assert_eq!(inode(&again), inode(&a.ns));
    assert_ne!(inode(&a.ns), before);
    assert_eq!(std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino(), before);
    assert_eq!(inode(&Netns::current().unwrap()), before);

    a.ns.set_sysctl("net/ipv4/ip_forward", "1").unwrap();
    assert_eq!(a.ns.sysctl("net/ipv4/ip_forward").unwrap(), "1");

    let err = a.ns.run(|| panic!("boom")).unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");

    let missing = Path::new("/run/netns/dpt-never-made");
    assert!(matches!(Netns::open(missing), Err(Error::NotFound(_))));
    assert!(!Netns::delete_named(missing).unwrap());

    let path = a.path.clone();
    drop(a);
    assert!(!path.exists());
    assert!(!Netns::delete_named(&path).unwrap());
}

#[test]
fn veth_pair_carries_traffic_between_namespaces() {
    let a = TestNs::new("ping-a");
    let b = TestNs::new("ping-b");
    let (mut na, mut nb) = veth_pair(&a, &b);
    na.add_addr("va", net("198.18.249.1/24")).unwrap();
    nb.add_addr("vb", net("198.18.249.2/24")).unwrap();
    let status = std::process::Command::new("ip")
        .args(["netns", "exec"])
        .arg(a.path.file_name().unwrap())
        .args(["ping", "-c1", "-W2", "198.18.249.2"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Per-link IPv4 forwarding over netlink: a namespace with `ip_forward` off forwards between
/// the two links it is turned on for, and the namespace-wide switch stays off. What lets the
/// gateway forward with CAP_NET_ADMIN alone, without the unsafe `net.ipv4.ip_forward` sysctl.
#[test]
fn ipv4_forwarding_is_turned_on_per_link_without_the_namespace_switch() {
    let (left, middle, right) = (TestNs::new("fwd-l"), TestNs::new("fwd-m"), TestNs::new("fwd-r"));
    let mut nm = middle.nl();
    for (name, peer, ns) in [("ml", "lm", &left), ("mr", "rm", &right)] {
        nm.create_veth(&VethRequest {
            name,
            netns: None,
            peer_name: peer,
            peer_netns: Some(&ns.ns),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .unwrap();
        nm.set_up(name).unwrap();
    }
    let (mut nl, mut nr) = (left.nl(), right.nl());
    nl.set_up("lm").unwrap();
    nr.set_up("rm").unwrap();
    nm.add_addr("ml", net("198.18.10.1/24")).unwrap();
    nm.add_addr("mr", net("198.18.11.1/24")).unwrap();
    nl.add_addr("lm", net("198.18.10.2/24")).unwrap();
    nr.add_addr("rm", net("198.18.11.2/24")).unwrap();
    let via = |gw: &str| Route {
        dst: net("0.0.0.0/0"),
        gateway: Some(ip(gw)),
        dev: None,
        src: None,
        onlink: false,
        scope_link: false,
    };
    nl.replace_route(&via("198.18.10.1")).unwrap();
    nr.replace_route(&via("198.18.11.1")).unwrap();
    let ping = || {
        std::process::Command::new("ip")
            .args(["netns", "exec", left.path.file_name().unwrap().to_str().unwrap()])
            .args(["ping", "-n", "-q", "-c", "1", "-W", "5", "198.18.11.2"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert_eq!(middle.ns.sysctl("net/ipv4/ip_forward").unwrap(), "0");
    assert!(!ping(), "forwarded with forwarding off");
    nm.enable_ipv4_forwarding("ml").unwrap();
    nm.enable_ipv4_forwarding("mr").unwrap();
    assert_eq!(middle.ns.sysctl("net/ipv4/conf/ml/forwarding").unwrap(), "1");
    assert_eq!(middle.ns.sysctl("net/ipv4/conf/mr/forwarding").unwrap(), "1");
    assert_eq!(middle.ns.sysctl("net/ipv4/ip_forward").unwrap(), "0", "the namespace switch stays off");
    assert!(ping(), "not forwarded between the two links");
    let err = nm.enable_ipv4_forwarding("nonexistent0").unwrap_err();
    assert!(err.to_string().contains("nonexistent0"), "{err}");
}

#[test]
fn nexthops_groups_routes_through_them_and_rules_round_trip() {
    let a = TestNs::new("nh-a");
    let b = TestNs::new("nh-b");
    let (mut na, _nb) = veth_pair(&a, &b);
    // An onlink nexthop is refused ("Nexthop has invalid gateway") while lo is down.
    na.set_up("lo").unwrap();
    let gw = |id: u32, via: &str, onlink: bool| Nexthop {
        id,
        kind: NexthopKind::Gateway { gateway: ip(via), dev: "va".into(), onlink },
    };
    na.add_nexthop(&gw(1_000_001, "10.77.0.2", true)).unwrap();
    na.replace_nexthop(&gw(1_000_002, "10.77.0.3", true)).unwrap();
    let err = na.add_nexthop(&gw(1_000_001, "10.77.0.2", true)).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.to_string().starts_with("EEXIST: creating nexthop id 1000001 via 10.77.0.2 dev va onlink"), "{err}");
    let group = |members: Vec<u32>| Nexthop { id: 2_000_001, kind: NexthopKind::Group { members } };
    na.add_nexthop(&group(vec![1_000_001, 1_000_002])).unwrap();
    let mut listed = na.nexthops().unwrap();
    listed.sort();
    assert_eq!(
        listed,
        [gw(1_000_001, "10.77.0.2", true), gw(1_000_002, "10.77.0.3", true), group(vec![1_000_001, 1_000_002])]
    );
    // A group cannot be made a gateway in place.
    assert_eq!(na.replace_nexthop(&gw(2_000_001, "10.77.0.4", true)).unwrap_err().errno(), Some(libc::EINVAL));

    // The plain route is replaced by one through the group; table 92 holds one through a member.
    let dst = net("10.99.0.0/16");
    na.replace_route(&Route {
        dst,
        gateway: Some(ip("10.77.0.9")),
        dev: Some("va".into()),
        src: None,
        onlink: true,
        scope_link: false,
    })
    .unwrap();
    let main = NexthopRoute { dst, table: 254, nhid: 2_000_001 };
    let side = NexthopRoute { dst, table: 92, nhid: 1_000_001 };
    na.replace_nexthop_route(&main).unwrap();
    na.replace_nexthop_route(&side).unwrap();
    assert!(!na.routes(false).unwrap().iter().any(|r| r.dst == dst), "{:?}", na.routes(false).unwrap());
    let mut routes = na.nexthop_routes(false).unwrap();
    routes.sort();
    assert_eq!(routes, [side.clone(), main.clone()]);
    assert!(na.nexthop_routes(true).unwrap().is_empty());
    // A delete names its nexthop: the route through another one stays.
    assert!(!na.del_nexthop_route(&NexthopRoute { nhid: 1_000_002, ..main.clone() }).unwrap());

    // The group shrinks in place; the route stays on it.
    na.replace_nexthop(&group(vec![1_000_002])).unwrap();
    assert!(na.nexthops().unwrap().contains(&group(vec![1_000_002])));
    assert!(na.nexthop_routes(false).unwrap().contains(&main));

    let rule = Rule { v6: false, priority: 92, iif: "va".into(), table: 92 };
    na.add_rule(&rule).unwrap();
    assert!(na.add_rule(&rule).unwrap_err().is_exists());
    assert_eq!(na.rules(false).unwrap(), std::slice::from_ref(&rule));
    assert!(na.rules(true).unwrap().is_empty());
    assert!(na.del_rule(&rule).unwrap() && !na.del_rule(&rule).unwrap());

    // Deleting the group's last member takes the group and its route; table 92's goes with 1.
    assert!(na.del_nexthop(1_000_002).unwrap() && !na.del_nexthop(1_000_002).unwrap());
    assert_eq!(na.nexthop_routes(false).unwrap(), std::slice::from_ref(&side));
    assert!(na.del_nexthop_route(&side).unwrap());
    assert!(na.del_nexthop(1_000_001).unwrap());
    assert!(na.nexthops().unwrap().is_empty());
}
