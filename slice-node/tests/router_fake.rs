//! The router's observe and apply without root: the node agent's reconcile run against
//! `dataplane`'s in-memory namespaces, which record every call. Pins what a fresh node builds
//! and in which order, that observe reads back what apply wrote (a second reconcile does
//! nothing), how a slice is removed, and that a failed step stops only its slice and leaves
//! nothing half-made where the agent undoes it. The same code runs against the kernel in
//! `slice-operator`'s `node_agent` tests (as root).

use std::path::Path;

use dataplane::fake::{FakeNamespaces, FakeNetlink, FakeWorld};
use dataplane::{Fdb, Neigh, NetlinkOps, Route};
use slice_api::node::{NodeAgentConfig, NodeState};
use slice_node::plan::{Observed, plan};
use slice_node::{Action, NodeAgentError, reconcile_with, router};

const NETNS_DIR: &str = "/fake/netns";

/// Two slices on node n1, each with one peer (n2).
fn config(state_dir: &Path) -> NodeAgentConfig {
    serde_json::from_value(serde_json::json!({
        "node": "n1",
        "underlayAddress": "198.18.250.1",
        "stateDir": state_dir,
        "netnsDir": NETNS_DIR,
        "routerNetnsPrefix": "t1-",
        "slices": [
            {
                "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16",
                "nodePrefix": "10.80.0.0/26", "namespaces": ["shop"],
                "peers": [{"name": "n2", "underlayAddress": "198.18.250.2", "nodePrefix": "10.80.0.64/26"}]
            },
            {
                "name": "red", "vni": 200, "sliceSubnet": "10.90.0.0/16",
                "nodePrefix": "10.90.0.0/26", "namespaces": ["bank"],
                "peers": [{"name": "n2", "underlayAddress": "198.18.250.2", "nodePrefix": "10.90.0.64/26"}]
            }
        ]
    }))
    .unwrap()
}

struct Node {
    world: FakeWorld,
    host: FakeNamespaces,
    netlink: FakeNetlink,
    state: tempfile::TempDir,
}

impl Node {
    fn new() -> Self {
        let world = FakeWorld::new();
        let host = world.host();
        let netlink = world.handle("node", "node");
        Self { world, host, netlink, state: tempfile::tempdir().unwrap() }
    }

    fn config(&self) -> NodeAgentConfig {
        config(self.state.path())
    }

    fn reconcile(&mut self, config: &NodeAgentConfig) -> Result<Vec<Action>, NodeAgentError> {
        reconcile_with(config, &mut self.host, &mut self.netlink)
    }

    fn observe(&mut self, config: &NodeAgentConfig) -> Observed {
        let (observed, unobservable) = router::observe(config, &mut self.host, &mut self.netlink).unwrap();
        assert!(unobservable.is_empty(), "{unobservable:?}");
        observed
    }

    /// The calls that change something, from call number `from` on.
    fn writes_since(&self, from: usize) -> Vec<String> {
        const READS: [&str; 11] = [
            "link",
            "links",
            "addrs",
            "routes",
            "neighs",
            "fdb",
            "sysctl",
            "list_named",
            "open",
            "netlink",
            "nft_table",
        ];
        self.world.calls()[from..]
            .iter()
            .filter(|c| {
                let verb = c.split_once(": ").map_or("", |(_, call)| call).split(' ').next().unwrap_or("");
                !READS.contains(&verb)
            })
            .cloned()
            .collect()
    }

    fn state_file(&self, slice: &str) -> Option<NodeState> {
        NodeState::load(self.state.path(), slice).unwrap()
    }
}

/// What building slice blue's router writes, in order (the plan's order).
fn blue_build() -> Vec<String> {
    [
        "netns: ensure_named /fake/netns/t1-blue",
        "t1-blue: set_sysctl net/ipv4/ip_forward=1",
        "t1-blue: set_sysctl net/ipv4/conf/all/rp_filter=0",
        "t1-blue: set_sysctl net/ipv4/conf/default/rp_filter=1",
        "t1-blue: set_sysctl net/ipv6/conf/all/forwarding=1",
        "t1-blue: set_up lo",
        "t1-blue: add_addr lo 10.80.0.1/32",
        "node: create_vxlan sv100 (VNI 100, local 198.18.250.1, port 4789)",
        "node: set_netns sv100 t1-blue",
        "t1-blue: set_up sv100",
        "t1-blue: replace_fdb sv100 0a:58:0a:50:00:41 dst 198.18.250.2",
        "t1-blue: replace_neigh sv100 10.80.0.65 0a:58:0a:50:00:41",
        "t1-blue: replace_route 10.80.0.64/26",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn red_writes(writes: &[String]) -> Vec<String> {
    writes.iter().filter(|c| c.starts_with("t1-red:") || c.contains("t1-red") || c.contains("sv200")).cloned().collect()
}

#[test]
fn a_fresh_node_builds_each_router_in_the_plans_order_and_a_second_reconcile_does_nothing() {
    let mut node = Node::new();
    let config = node.config();
    // A fresh node shows nothing, so the actions applied are the plan from nothing.
    assert_eq!(node.observe(&config), Observed::default());
    let from = node.world.calls().len();
    let actions = node.reconcile(&config).unwrap();
    assert_eq!(actions, plan(&config, &Observed::default()));

    let writes = node.writes_since(from);
    let blue: Vec<String> = writes.iter().filter(|c| c.contains("blue") || c.contains("sv100")).cloned().collect();
    assert_eq!(blue, blue_build());
    assert_eq!(red_writes(&writes).len(), blue_build().len(), "{writes:#?}");
    // Every write belongs to one of the two routers.
    assert_eq!(writes.len(), 2 * blue_build().len(), "{writes:#?}");

    // What the kernel would now hold.
    let vxlan = node.world.link("t1-blue", "sv100").expect("the VXLAN is in the router namespace");
    assert_eq!((vxlan.up, vxlan.mtu, vxlan.vxlan_id), (true, 1450, Some(100)));
    assert!(node.world.link("node", "sv100").is_none());
    assert!(node.world.link("t1-blue", "lo").unwrap().up);
    assert!(node.world.addrs("t1-blue", "lo").contains(&"10.80.0.1/32".parse().unwrap()));
    let peer_mac = [0x0a, 0x58, 10, 80, 0, 65];
    assert_eq!(node.world.fdb("t1-blue", "sv100"), [Fdb { mac: peer_mac, dst: "198.18.250.2".parse().unwrap() }]);
    assert_eq!(
        node.world.neighs("t1-blue", "sv100"),
        [Neigh { ip: "10.80.0.65".parse().unwrap(), mac: peer_mac, permanent: true }]
    );
    assert_eq!(
        node.world.routes("t1-blue"),
        [Route {
            dst: "10.80.0.64/26".parse().unwrap(),
            gateway: Some("10.80.0.65".parse().unwrap()),
            dev: Some("sv100".into()),
            src: None,
            onlink: true,
            scope_link: false,
        }]
    );
    assert_eq!(node.world.sysctls("t1-blue").len(), 4);
    let state = node.state_file("blue").expect("the state file is written");
    assert_eq!(state.router_netns, Path::new("/fake/netns/t1-blue"));
    assert!(node.state_file("red").is_some());

    // Observe reads back what apply wrote: nothing to do, nothing written.
    let from = node.world.calls().len();
    assert_eq!(node.reconcile(&config).unwrap(), Vec::<Action>::new());
    assert_eq!(node.writes_since(from), Vec::<String>::new());
}

#[test]
fn a_removed_slice_loses_its_state_file_then_its_vxlan_and_namespace() {
    let mut node = Node::new();
    let mut config = node.config();
    node.reconcile(&config).unwrap();
    // A VXLAN of ours stranded in the node namespace (as a crash between create and move
    // leaves it), for no slice of the configuration.
    node.netlink.create_vxlan(&stray_vxlan()).unwrap();

    config.slices.retain(|s| s.name != "red");
    let from = node.world.calls().len();
    node.reconcile(&config).unwrap();
    // The VXLAN goes before the namespace: a namespace dies asynchronously and would hold the
    // VNI on the node's socket meanwhile.
    let expected = ["t1-red: delete_link sv200", "netns: delete_named /fake/netns/t1-red", "node: delete_link sv300"];
    assert_eq!(node.writes_since(from), expected.map(str::to_owned));
    assert!(node.state_file("red").is_none() && node.state_file("blue").is_some());
    assert_eq!(node.world.named(), [Path::new("/fake/netns/t1-blue")]);
    assert!(node.world.links("node").is_empty());
    // Blue was not touched, and the node is converged.
    assert!(node.writes_since(from).iter().all(|c| !c.contains("blue") && !c.contains("sv100")));
    assert_eq!(node.reconcile(&config).unwrap(), Vec::<Action>::new());

    // Red comes back: its VNI is free again.
    let config = node.config();
    node.reconcile(&config).unwrap();
    assert!(node.world.link("t1-red", "sv200").is_some_and(|l| l.up));
}

fn stray_vxlan() -> dataplane::VxlanRequest {
    dataplane::VxlanRequest {
        name: "sv300".into(),
        vni: 300,
        local: "198.18.250.1".parse().unwrap(),
        port: 4789,
        mtu: 1450,
        mac: [0x0a, 0x58, 10, 99, 0, 1],
    }
}

/// The one failure of a reconcile that failed for one slice.
fn only_failure(result: Result<Vec<Action>, NodeAgentError>) -> (String, String, NodeAgentError) {
    match result {
        Err(NodeAgentError::Reconcile { mut failures }) if failures.len() == 1 => {
            let f = failures.remove(0);
            (f.slice, f.action, f.error)
        }
        other => panic!("expected one slice's failure, got {other:?}"),
    }
}

fn errno(error: &NodeAgentError) -> Option<i32> {
    match error {
        NodeAgentError::Apply { source, .. } | NodeAgentError::Observe { source, .. } => source.errno(),
        _ => None,
    }
}

#[test]
fn a_vxlan_that_cannot_be_moved_is_deleted_and_the_other_slice_is_still_built() {
    let mut node = Node::new();
    let config = node.config();
    node.world.fail_next("node: set_netns sv100", libc::EPERM);
    let from = node.world.calls().len();
    let (slice, action, error) = only_failure(node.reconcile(&config));
    assert_eq!(slice, "blue");
    assert!(action.starts_with("create vxlan sv100"), "{action}");
    assert_eq!(errno(&error), Some(libc::EPERM));

    // Blue stopped at the failed step, its VXLAN taken back out of the node namespace (where
    // it would hold the VNI); no state file over a half-built router.
    let blue: Vec<String> =
        node.writes_since(from).into_iter().filter(|c| c.contains("blue") || c.contains("sv100")).collect();
    let mut expected = blue_build()[..9].to_vec();
    expected.push("node: delete_link sv100".into());
    assert_eq!(blue, expected);
    assert!(node.world.links("node").is_empty());
    assert!(node.state_file("blue").is_none());
    // Red was built regardless.
    assert!(node.state_file("red").is_some());
    assert!(node.world.link("t1-red", "sv200").is_some_and(|l| l.up));

    // The next round finishes blue (the VNI is free), and the one after has nothing to do.
    let from = node.world.calls().len();
    node.reconcile(&config).unwrap();
    let blue: Vec<String> = node.writes_since(from);
    assert_eq!(blue, blue_build()[7..].to_vec(), "only the VXLAN and what sits on it are left to do");
    assert!(node.state_file("blue").is_some());
    assert_eq!(node.reconcile(&config).unwrap(), Vec::<Action>::new());
}

#[test]
fn a_failed_step_in_a_router_namespace_stops_only_that_slice() {
    let mut node = Node::new();
    let config = node.config();
    node.world.fail_next("t1-red: replace_neigh", libc::EINVAL);
    let from = node.world.calls().len();
    let (slice, action, error) = only_failure(node.reconcile(&config));
    assert_eq!((slice.as_str(), errno(&error)), ("red", Some(libc::EINVAL)));
    assert!(action.starts_with("replace neighbour 10.90.0.65"), "{action}");
    // Nothing of red after the failed step (its route), and no state file.
    let red = red_writes(&node.writes_since(from));
    assert_eq!(red.last().map(String::as_str), Some("t1-red: replace_neigh sv200 10.90.0.65 0a:58:0a:5a:00:41"));
    assert!(node.world.routes("t1-red").is_empty());
    assert!(node.state_file("red").is_none() && node.state_file("blue").is_some());

    // The next round does red's remaining steps only.
    let from = node.world.calls().len();
    node.reconcile(&config).unwrap();
    assert_eq!(
        node.writes_since(from),
        ["t1-red: replace_neigh sv200 10.90.0.65 0a:58:0a:5a:00:41", "t1-red: replace_route 10.90.0.64/26"]
            .map(str::to_owned)
    );
    assert!(node.state_file("red").is_some());
}

#[test]
fn a_router_that_cannot_be_observed_is_left_alone_and_reported() {
    let mut node = Node::new();
    let config = node.config();
    node.reconcile(&config).unwrap();
    // Drift in both routers; blue cannot be looked into this round.
    node.world.handle("t1-blue", "t1-blue").set_mtu("sv100", 1400).unwrap();
    node.world.handle("t1-red", "t1-red").set_mtu("sv200", 1400).unwrap();
    node.world.fail_next("t1-blue: links", libc::EACCES);
    let from = node.world.calls().len();
    let (slice, action, error) = only_failure(node.reconcile(&config));
    assert_eq!((slice.as_str(), action.as_str(), errno(&error)), ("blue", "observe the router", Some(libc::EACCES)));
    assert_eq!(node.writes_since(from), ["t1-red: set_mtu sv200 1450"].map(str::to_owned));
    // Blue is repaired once it can be observed again.
    let from = node.world.calls().len();
    node.reconcile(&config).unwrap();
    assert_eq!(node.writes_since(from), ["t1-blue: set_mtu sv100 1450"].map(str::to_owned));
}

/// Blue with a ClusterSetIP service: one port with two backends, one port without.
fn with_web(mut config: NodeAgentConfig, backends: &[&str]) -> NodeAgentConfig {
    config.slices[0].services = serde_json::from_value(serde_json::json!([
        {"name": "shop/web", "ip": "10.80.255.10", "ports": [
            {"protocol": "TCP", "port": 80, "backends": backends},
            {"protocol": "UDP", "port": 53}
        ]}
    ]))
    .unwrap();
    config.validate().unwrap();
    config
}

#[test]
fn services_are_one_table_written_once_repaired_when_changed_and_removed_when_gone() {
    let mut node = Node::new();
    let table = slice_node::firewall::TABLE;
    let config = with_web(node.config(), &["10.80.0.5:8080", "10.80.0.70:8080"]);
    node.reconcile(&config).unwrap();
    let want = slice_node::firewall::table(&config.slices[0]).unwrap().unwrap();
    assert_eq!(node.world.nft_table("t1-blue", table), Some(want.clone()));
    assert_eq!(node.world.nft_table("t1-red", table), None, "red has no service, so no table");
    // Already right: nothing written.
    let from = node.world.calls().len();
    assert_eq!(node.reconcile(&config).unwrap(), Vec::<Action>::new());
    assert_eq!(node.writes_since(from), Vec::<String>::new());

    // Deleted or edited by someone: restored, and nothing else touched.
    let mut edited = want.clone();
    edited.truncate(2);
    for drift in [None, Some(edited)] {
        node.world.set_nft_table("t1-blue", table, drift);
        let from = node.world.calls().len();
        node.reconcile(&config).unwrap();
        assert_eq!(
            node.writes_since(from),
            [format!("t1-blue: nft_replace_table inet slicenet ({} objects)", want.len())]
        );
        assert_eq!(node.world.nft_table("t1-blue", table), Some(want.clone()));
    }

    // nft refuses the new table: the slice reports it, the old table stays, the next round
    // applies it.
    let changed = with_web(node.config(), &["10.80.0.5:8080"]);
    node.world.fail_next("t1-blue: nft_replace_table", libc::EINVAL);
    let (slice, action, error) = only_failure(node.reconcile(&changed));
    assert_eq!(slice, "blue");
    assert!(action.starts_with("replace nftables table inet slicenet"), "{action}");
    assert!(slice_api::error_chain::chain(&error).contains("nft: (fake)"), "{error:?}");
    assert_eq!(node.world.nft_table("t1-blue", table), Some(want.clone()));
    node.reconcile(&changed).unwrap();
    assert_eq!(node.world.nft_table("t1-blue", table), slice_node::firewall::table(&changed.slices[0]).unwrap());

    // The last service goes: the table goes.
    let from = node.world.calls().len();
    node.reconcile(&node.config()).unwrap();
    assert_eq!(node.writes_since(from), ["t1-blue: nft_delete_table inet slicenet"].map(str::to_owned));
    assert_eq!(node.world.nft_table("t1-blue", table), None);
}

/// The writes since call `from`, without the multipath reads (nexthops, their routes, rules).
fn multipath_writes(node: &Node, from: usize) -> Vec<String> {
    const READS: [&str; 3] = ["nexthops", "nexthop_routes", "rules"];
    node.writes_since(from)
        .into_iter()
        .filter(|c| {
            let verb = c.split_once(": ").map_or("", |(_, call)| call).split(' ').next().unwrap_or("");
            !READS.contains(&verb)
        })
        .collect()
}

/// Blue's remote prefix 10.80.16.0/20 through two replicas on this node (10.80.0.5, .6) and one
/// on n2 (10.80.0.70).
fn with_replicas(mut config: NodeAgentConfig) -> NodeAgentConfig {
    config.slices[0].remote_routes = serde_json::from_value(serde_json::json!([
        {"prefix": "10.80.16.0/20", "via": "10.80.0.5", "alsoVia": ["10.80.0.6", "10.80.0.70"]}
    ]))
    .unwrap();
    config.validate().unwrap();
    config
}

/// A gateway pod on this node as the CNI plugin attaches it: a veth in the router with a /32
/// route to the pod.
fn attach_gateway_pod(node: &Node, veth: &str, ip: &str) {
    let mut router = node.world.handle("t1-blue", "pods");
    let here = dataplane::Netns::current().unwrap();
    router
        .create_veth(&dataplane::VethRequest {
            name: veth,
            netns: None,
            peer_name: &format!("slice0-{veth}"),
            peer_netns: Some(&here),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .unwrap();
    router.set_up(veth).unwrap();
    router
        .add_route(&Route {
            dst: format!("{ip}/32").parse().unwrap(),
            gateway: None,
            dev: Some(veth.into()),
            src: None,
            onlink: false,
            scope_link: true,
        })
        .unwrap();
}

fn dead(gateways: &[&str]) -> slice_node::DeadGateways {
    let set = gateways.iter().map(|g| g.parse().unwrap()).collect();
    slice_node::DeadGateways::from([("blue".to_owned(), set)])
}

#[test]
fn replicas_are_nexthop_groups_that_follow_liveness_and_a_second_agent_adopts_them() {
    use dataplane::{Nexthop, NexthopKind, NexthopRoute};
    use slice_node::plan::multipath::{GATEWAY_NEXTHOP_BASE as GW, GROUP_BASE, LOCAL_GROUP_BASE};
    let mut node = Node::new();
    let config = with_replicas(node.config());
    // Before the gateway pods are there: the replica on n2 carries the prefix, and the agent
    // waits for the local ones.
    let (slice, action, error) = only_failure(node.reconcile(&config));
    assert_eq!(slice, "blue");
    assert!(error.is_only_waiting(), "{action}: {error:?}");
    let group = |id, members: &[u32]| Nexthop { id, kind: NexthopKind::Group { members: members.to_vec() } };
    let via_n2 = Nexthop {
        id: GW + 2,
        kind: NexthopKind::Gateway { gateway: "10.80.0.65".parse().unwrap(), dev: "sv100".into(), onlink: true },
    };
    assert_eq!(node.world.nexthops("t1-blue"), [via_n2.clone(), group(GROUP_BASE, &[GW + 2])]);
    let sysctls = node.world.sysctls("t1-blue");
    assert_eq!(sysctls.get("net/ipv4/fib_multipath_hash_policy").map(String::as_str), Some("1"));

    // The pods arrive: every replica in the group, this node's in table 92 behind the rule.
    attach_gateway_pod(&node, "vetha", "10.80.0.5");
    attach_gateway_pod(&node, "vethb", "10.80.0.6");
    node.reconcile(&config).unwrap();
    let local = |id, gw: &str, dev: &str| Nexthop {
        id,
        kind: NexthopKind::Gateway { gateway: gw.parse().unwrap(), dev: dev.into(), onlink: false },
    };
    let mut nexthops = node.world.nexthops("t1-blue");
    nexthops.sort();
    assert_eq!(
        nexthops,
        [
            local(GW, "10.80.0.5", "vetha"),
            local(GW + 1, "10.80.0.6", "vethb"),
            via_n2.clone(),
            group(GROUP_BASE, &[GW, GW + 1, GW + 2]),
            group(LOCAL_GROUP_BASE, &[GW, GW + 1]),
        ]
    );
    let prefix = "10.80.16.0/20".parse().unwrap();
    let mut routes = node.world.nexthop_routes("t1-blue");
    routes.sort();
    assert_eq!(
        routes,
        [
            NexthopRoute { dst: prefix, table: 92, nhid: LOCAL_GROUP_BASE },
            NexthopRoute { dst: prefix, table: 254, nhid: GROUP_BASE },
        ]
    );
    let rule = dataplane::Rule { v6: false, priority: 1000, iif: "sv100".into(), table: 92 };
    assert_eq!(node.world.rules("t1-blue"), [rule]);
    assert!(node.world.routes("t1-blue").iter().all(|r| r.dst != prefix), "no plain route beside the group's");
    let from = node.world.calls().len();
    assert_eq!(node.reconcile(&config).unwrap(), Vec::<Action>::new());
    assert_eq!(multipath_writes(&node, from), Vec::<String>::new());

    // A replica found dead: only the two groups change.
    let from = node.world.calls().len();
    slice_node::reconcile_with_liveness(&config, &mut node.host, &mut node.netlink, &dead(&["10.80.0.5"])).unwrap();
    assert_eq!(
        multipath_writes(&node, from),
        [
            format!("t1-blue: replace_nexthop nexthop id {GROUP_BASE} group {}/{}", GW + 1, GW + 2),
            format!("t1-blue: replace_nexthop nexthop id {LOCAL_GROUP_BASE} group {}", GW + 1),
        ]
    );

    // A second agent instance (a restart) that probed first: its first reconcile changes nothing.
    let mut second = Node {
        world: node.world.clone(),
        host: node.world.host(),
        netlink: node.world.handle("node", "node"),
        state: node.state,
    };
    let from = second.world.calls().len();
    let actions =
        slice_node::reconcile_with_liveness(&config, &mut second.host, &mut second.netlink, &dead(&["10.80.0.5"]))
            .unwrap();
    assert_eq!(actions, Vec::<Action>::new());
    assert_eq!(multipath_writes(&second, from), Vec::<String>::new());

    // Its answer puts it back.
    let from = second.world.calls().len();
    second.reconcile(&config).unwrap();
    assert_eq!(multipath_writes(&second, from).len(), 2, "{:?}", multipath_writes(&second, from));

    // One gateway again: today's plain route takes the prefix over, ours go, a foreign nexthop
    // stays, and the hash policy is back to the kernel's default.
    second.world.put_nexthop("t1-blue", local(7, "10.80.0.5", "vetha"));
    let mut single = config.clone();
    single.slices[0].remote_routes[0].also_via.clear();
    second.reconcile(&single).unwrap();
    assert_eq!(second.world.nexthops("t1-blue"), [local(7, "10.80.0.5", "vetha")]);
    assert!(second.world.nexthop_routes("t1-blue").is_empty() && second.world.rules("t1-blue").is_empty());
    assert!(
        second
            .world
            .routes("t1-blue")
            .iter()
            .any(|r| r.dst == prefix && r.gateway == Some("10.80.0.5".parse().unwrap()))
    );
    let sysctls = second.world.sysctls("t1-blue");
    assert_eq!(sysctls.get("net/ipv4/fib_multipath_hash_policy").map(String::as_str), Some("0"));
    let from = second.world.calls().len();
    assert_eq!(second.reconcile(&single).unwrap(), Vec::<Action>::new());
    assert_eq!(second.writes_since(from), Vec::<String>::new(), "a router without multipath is not looked into");
}
