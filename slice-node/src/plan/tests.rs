//! The plan's tests: desired router vs observed state → the ordered actions.

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
        obs.state_files.insert(slice.name.clone(), ObservedStateFile::Valid(Box::new(spec.state.clone())));
        obs.router_netns.insert(slice.name.clone());
        let mut sysctls = BTreeMap::new();
        for (k, v) in ROUTER_SYSCTLS {
            sysctls.insert(k.to_string(), v.to_string());
        }
        let mut routes: Vec<Route> = spec.peers.iter().flat_map(PeerSpec::routes).cloned().collect();
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
                lo_addrs: ["127.0.0.1/8".parse().unwrap(), spec.router_address]
                    .into_iter()
                    .chain(spec.secondary_router_address)
                    .collect(),
                rp_filter: BTreeMap::new(),
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
                neighs: spec.peers.iter().flat_map(PeerSpec::neighs).cloned().collect(),
                fdb: spec.peers.iter().map(|p| p.fdb.clone()).collect(),
                gateway_routes,
                local_hosts,
                firewall: spec.firewall.clone().map_or(ObservedFirewall::Absent, ObservedFirewall::Present),
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
    assert!(!actions.iter().any(|a| matches!(a, Action::DeleteRouterNetns { .. } | Action::RemoveStateFile { .. })));
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
        secondary_node_prefix: None,
    });
    let actions = plan(&c2, &obs);
    assert_eq!(slices_touched(&actions), BTreeSet::from(["red".to_string()]));
    assert_eq!(actions.len(), 3, "{actions:#?}");
    assert!(
        actions.iter().all(|a| matches!(
            a,
            Action::ReplaceFdb { .. } | Action::ReplaceNeigh { .. } | Action::ReplaceRoute { .. }
        ))
    );
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
    RemoteRoute::new(prefix.parse().unwrap(), via.parse().unwrap())
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
            Action::DeleteRoute { slice: "blue".into(), route: Route { dev: Some("sngw".into()), ..local_route() } },
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
            Action::DeleteRoute { slice: "blue".into(), route: Route { dev: Some("sngw".into()), ..local_route() } },
        ]
    );
}

fn with_services(mut c: NodeAgentConfig, backends: &[&str]) -> NodeAgentConfig {
    c.slices[0].services = serde_json::from_value(serde_json::json!([
        {"name": "shop/web", "ip": "10.80.255.10", "ports": [
            {"protocol": "TCP", "port": 80, "backends": backends},
            {"protocol": "TCP", "port": 81}
        ]}
    ]))
    .unwrap();
    c.validate().unwrap();
    c
}

fn firewall_of<'a>(obs: &'a mut Observed, slice: &str) -> &'a mut ObservedFirewall {
    &mut obs.routers.get_mut(slice).unwrap().firewall
}

#[test]
fn services_are_one_table_replaced_only_when_it_differs() {
    let c = with_services(config(), &["10.80.0.5:8080", "10.80.16.6:8080"]);
    let mut obs = converged(&c);
    assert_eq!(plan(&c, &obs), vec![], "the table as built: nothing to do");

    // Deleted by someone, edited by someone, unreadable: replaced whole, in the slice alone,
    // before the state file.
    let want = RouterSpec::new(&c, &c.slices[0]).firewall.unwrap();
    let mut edited = want.clone();
    edited.pop();
    for drift in [
        ObservedFirewall::Absent,
        ObservedFirewall::Present(edited),
        ObservedFirewall::Unreadable("nft: not found".into()),
    ] {
        *firewall_of(&mut obs, "blue") = drift;
        let actions = plan(&c, &obs);
        assert_eq!(
            actions,
            vec![Action::ReplaceFirewall { slice: "blue".into(), objects: want.clone(), services: (1, 1) }]
        );
    }

    // A changed backend set: the new table.
    let changed = with_services(config(), &["10.80.0.5:8080"]);
    *firewall_of(&mut obs, "blue") = ObservedFirewall::Present(want.clone());
    let actions = plan(&changed, &obs);
    assert!(matches!(&actions[..], [Action::ReplaceFirewall { objects, .. }] if *objects != want), "{actions:?}");
    assert!(actions[0].to_string().contains("1 ClusterSetIP service(s), 1 port(s) with backends"), "{}", actions[0]);
}

#[test]
fn a_router_without_services_has_no_table() {
    let c = config();
    assert_eq!(RouterSpec::new(&c, &c.slices[0]).firewall, None);
    let mut obs = converged(&c);
    // Left over after the last service went: deleted.
    let before = with_services(config(), &[]);
    let leftover = RouterSpec::new(&before, &before.slices[0]).firewall.unwrap();
    *firewall_of(&mut obs, "blue") = ObservedFirewall::Present(leftover);
    assert_eq!(plan(&c, &obs), vec![Action::DeleteFirewall { slice: "blue".into() }]);
    // nft missing on a node that needs no rule: nothing to do (and no failure every round).
    *firewall_of(&mut obs, "blue") = ObservedFirewall::Unreadable("nft: not found".into());
    assert_eq!(plan(&c, &obs), vec![]);
}

#[test]
fn a_new_router_gets_its_table_before_its_state_file() {
    let c = with_services(config(), &["10.80.0.5:8080"]);
    let actions = plan(&c, &Observed::default());
    let position = |want: fn(&Action) -> bool| actions.iter().position(|a| a.slice() == "blue" && want(a)).unwrap();
    assert!(
        position(|a| matches!(a, Action::ReplaceFirewall { .. }))
            < position(|a| matches!(a, Action::WriteStateFile { .. }))
    );
    assert!(!actions.iter().any(|a| a.slice() == "red" && matches!(a, Action::ReplaceFirewall { .. })));
}

fn with_policies(mut c: NodeAgentConfig, policies: serde_json::Value) -> NodeAgentConfig {
    c.slices[0].policies = serde_json::from_value(policies).unwrap();
    c.slices[0].pods = serde_json::from_value(serde_json::json!([
        {"namespace": "shop", "labels": {"app": "web"}, "addresses": ["10.80.0.5", "10.80.0.70"]}
    ]))
    .unwrap();
    c.validate().unwrap();
    c
}

#[test]
fn a_policy_that_does_not_compile_keeps_the_table_in_force_and_is_reported_last() {
    let deny = serde_json::json!([{"namespace": "shop", "name": "deny", "spec": {}}]);
    let good = with_policies(config(), deny);
    let want = RouterSpec::new(&good, &good.slices[0]).firewall.expect("policies make a table");
    let mut obs = converged(&good);
    assert_eq!(plan(&good, &obs), vec![]);

    let broken = with_policies(
        config(),
        serde_json::json!([{"namespace": "shop", "name": "bad", "spec": {"podSelector": {"matchExpressions": [
            {"key": "app", "operator": "Equals", "values": ["web"]}]}}}]),
    );
    let spec = RouterSpec::new(&broken, &broken.slices[0]);
    assert_eq!(spec.firewall, None);
    let reason = spec.firewall_error.expect("the policy does not compile");
    assert!(reason.contains("policy shop/bad") && reason.contains("\"Equals\""), "{reason}");
    // The table in force (whatever it is, even none) is neither replaced nor deleted.
    for in_force in [ObservedFirewall::Present(want), ObservedFirewall::Absent] {
        *firewall_of(&mut obs, "blue") = in_force;
        let actions = plan(&broken, &obs);
        assert_eq!(actions, vec![Action::KeepFirewall { slice: "blue".into(), reason: reason.clone() }]);
        assert!(actions[0].to_string().starts_with("keep nftables table inet slicenet as it is: policy shop/bad"));
    }
    // A new router still gets everything else, state file included; the report comes last.
    let actions = plan(&broken, &Observed::default());
    let blue: Vec<&Action> = actions.iter().filter(|a| a.slice() == "blue").collect();
    assert!(blue.iter().any(|a| matches!(a, Action::WriteStateFile { .. })));
    assert!(!blue.iter().any(|a| matches!(a, Action::ReplaceFirewall { .. })));
    assert!(matches!(blue.last(), Some(Action::KeepFirewall { .. })));
}

/// `config()` with blue dual-stack: fd00:80::/48, this node's /120 at index 0, n2 and n3 at 1, 2.
fn dual_config() -> NodeAgentConfig {
    let mut c = config();
    let blue = &mut c.slices[0];
    blue.secondary = Some(slice_api::node::FamilyOnNode {
        slice_subnet: "fd00:80::/48".parse().unwrap(),
        node_prefix: "fd00:80::/120".parse().unwrap(),
    });
    blue.peers[0].secondary_node_prefix = Some("fd00:80::100/120".parse().unwrap());
    blue.peers[1].secondary_node_prefix = Some("fd00:80::200/120".parse().unwrap());
    c.validate().unwrap();
    c
}

#[test]
fn a_dual_stack_router_carries_both_families_on_one_vxlan() {
    let c = dual_config();
    let spec = RouterSpec::new(&c, &c.slices[0]);
    assert_eq!(spec.secondary_router_address, Some("fd00:80::1/128".parse().unwrap()));
    let n2 = &spec.peers[0];
    let v6 = n2.secondary.as_ref().unwrap();
    assert_eq!(
        (v6.route.dst.to_string(), v6.route.gateway),
        ("fd00:80::100/120".to_owned(), Some("fd00:80::101".parse().unwrap()))
    );
    assert!(v6.route.onlink && v6.route.dev.as_deref() == Some("sv100"));
    // The peer's IPv6 router address resolves to the same VXLAN MAC as its IPv4 one: one FDB
    // entry carries both families to the peer's underlay address.
    assert_eq!(v6.neigh.mac, n2.neigh.mac);
    assert!(v6.neigh.permanent);
    // The state file tells the CNI plugin both families.
    assert_eq!(spec.state.secondary.unwrap().router_address.to_string(), "fd00:80::1");
    // An IPv6 family brings the anti-spoof table, with no policy or service.
    assert!(spec.firewall.is_some());
    assert!(RouterSpec::new(&config(), &config().slices[0]).firewall.is_none());

    let fresh = plan(&c, &Observed::default());
    let blue: Vec<&Action> = fresh.iter().filter(|a| a.slice() == "blue").collect();
    let lo: Vec<String> = blue
        .iter()
        .filter_map(|a| match a {
            Action::AddLoopbackAddress { addr, .. } => Some(addr.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(lo, ["10.80.0.1/32", "fd00:80::1/128"]);
    assert_eq!(blue.iter().filter(|a| matches!(a, Action::ReplaceRoute { .. })).count(), 4);
    assert_eq!(blue.iter().filter(|a| matches!(a, Action::ReplaceNeigh { .. })).count(), 4);
    assert_eq!(blue.iter().filter(|a| matches!(a, Action::ReplaceFdb { .. })).count(), 2);
    assert_eq!(plan(&c, &converged(&c)), vec![]);
}

#[test]
fn a_dual_stack_peer_that_leaves_takes_both_families_entries() {
    let c = dual_config();
    let obs = converged(&c);
    let mut c2 = c.clone();
    c2.slices[0].peers.remove(1);
    let actions = plan(&c2, &obs);
    let deleted_routes: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteRoute { route, .. } => Some(route.dst.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted_routes, ["10.80.0.128/26", "fd00:80::200/120"]);
    let deleted_neighs: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::DeleteNeigh { ip, .. } => Some(ip.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted_neighs, ["10.80.0.129", "fd00:80::201"]);
    // A stray address of the secondary subnet on lo goes; the router's own stay.
    let mut obs = converged(&c);
    obs.routers.get_mut("blue").unwrap().lo_addrs.push("fd00:80::5/128".parse().unwrap());
    assert_eq!(
        plan(&c, &obs),
        [Action::DeleteLoopbackAddress { slice: "blue".into(), addr: "fd00:80::5/128".parse().unwrap() }]
    );
}
