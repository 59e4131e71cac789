//! The multipath plan's tests: multi-gateway routes, what the router shows and which local
//! replicas are dead → the nexthop, route and rule actions.

use super::*;
use crate::plan::{Observed, plan as plan_node};
use slice_api::node::NodeAgentConfig;

/// Blue on n1 (10.80.0.0/26) with peer n2 (10.80.0.64/26): 10.80.16.0/20 through two replicas
/// on this node (.5, .6) and one on n2 (.70); 10.80.32.0/20 through .6 and .5 only;
/// 10.80.48.0/20 through one gateway (a plain route, not planned here).
fn config() -> NodeAgentConfig {
    let c: NodeAgentConfig = serde_json::from_value(serde_json::json!({
        "node": "n1", "underlayAddress": "198.18.250.1", "stateDir": "/run/test-state",
        "netnsDir": "/run/netns", "routerNetnsPrefix": "t1-",
        "slices": [{
            "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.0.0/26",
            "peers": [{"name": "n2", "underlayAddress": "198.18.250.2", "nodePrefix": "10.80.0.64/26"}],
            "remoteRoutes": [
                {"prefix": "10.80.32.0/20", "via": "10.80.0.6", "alsoVia": ["10.80.0.5"]},
                {"prefix": "10.80.16.0/20", "via": "10.80.0.5", "alsoVia": ["10.80.0.70", "10.80.0.6"]},
                {"prefix": "10.80.48.0/20", "via": "10.80.0.5"}
            ]
        }]
    }))
    .unwrap();
    c.validate().unwrap();
    c
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

const A: u32 = GATEWAY_NEXTHOP_BASE; // 10.80.0.5
const B: u32 = GATEWAY_NEXTHOP_BASE + 1; // 10.80.0.6
const P: u32 = GATEWAY_NEXTHOP_BASE + 2; // 10.80.0.70 (on n2)

fn local(id: u32, gw: &str, dev: &str) -> Nexthop {
    Nexthop { id, kind: NexthopKind::Gateway { gateway: ip(gw), dev: dev.into(), onlink: false } }
}

fn group(id: u32, members: &[u32]) -> Nexthop {
    Nexthop { id, kind: NexthopKind::Group { members: members.to_vec() } }
}

fn via_n2() -> Nexthop {
    Nexthop { id: P, kind: NexthopKind::Gateway { gateway: ip("10.80.0.65"), dev: "sv100".into(), onlink: true } }
}

fn route(dst: &str, table: u32, nhid: u32) -> NexthopRoute {
    NexthopRoute { dst: net(dst), table, nhid }
}

fn rule() -> Rule {
    Rule { v6: false, priority: VXLAN_RULE_PRIORITY, iif: "sv100".into(), table: LOCAL_REPLICAS_TABLE }
}

/// The router with both local replicas' pods there (their veths), nothing multipath yet.
fn pods_there() -> ObservedMultipath {
    ObservedMultipath {
        local_host_devs: BTreeMap::from([(ip("10.80.0.5"), "vetha".into()), (ip("10.80.0.6"), "vethb".into())]),
        ..ObservedMultipath::default()
    }
}

/// Plans blue's multipath part alone.
fn plan_blue(observed: &ObservedMultipath, dead: &[&str]) -> (Vec<Action>, Vec<RemoteRoute>) {
    let c = config();
    let specs = specs(&c.slices[0]);
    let dead: BTreeSet<IpAddr> = dead.iter().map(|d| ip(d)).collect();
    let want = wanted(&specs, "sv100", observed, &dead);
    let plain = BTreeSet::from([net("10.80.48.0/20")]);
    let mut actions = Vec::new();
    sysctls("blue", &specs, observed, &mut actions);
    let pending = plan("blue", &specs, want, &[net("10.80.0.0/16")], &plain, observed, &mut actions);
    (actions, pending)
}

/// What the router shows once `actions` are applied to `observed` (the kernel's cascade
/// included: a deleted nexthop takes the routes through it).
fn applied(mut observed: ObservedMultipath, actions: &[Action]) -> ObservedMultipath {
    for a in actions {
        match a {
            Action::SetSysctl { key, value, .. } => {
                observed.sysctls.insert(key.clone(), value.clone());
            }
            Action::ReplaceNexthop { nexthop, .. } => {
                observed.nexthops.retain(|n| n.id != nexthop.id);
                observed.nexthops.push(nexthop.clone());
            }
            Action::DeleteNexthop { id, .. } => {
                observed.nexthops.retain(|n| n.id != *id);
                observed.routes.retain(|r| r.nhid != *id);
            }
            Action::ReplaceNexthopRoute { route, .. } => {
                observed.routes.retain(|r| !(r.dst == route.dst && r.table == route.table));
                observed.routes.push(route.clone());
            }
            Action::DeleteNexthopRoute { route, .. } => observed.routes.retain(|r| r != route),
            Action::AddRule { rule, .. } => observed.rules.push(rule.clone()),
            Action::DeleteRule { rule, .. } => observed.rules.retain(|r| r != rule),
            other => panic!("not a multipath action: {other:?}"),
        }
    }
    observed.looked = true;
    observed
}

#[test]
fn ids_come_from_the_configuration_alone() {
    let c = config();
    let specs = specs(&c.slices[0]);
    // Sorted by prefix; one plain route left out.
    assert_eq!(specs.iter().map(|s| s.remote.prefix).collect::<Vec<_>>(), [net("10.80.16.0/20"), net("10.80.32.0/20")]);
    assert_eq!((specs[0].group, specs[0].local_group), (GROUP_BASE, LOCAL_GROUP_BASE));
    assert_eq!((specs[1].group, specs[1].local_group), (GROUP_BASE + 1, LOCAL_GROUP_BASE + 1));
    // Gateways keep the route's order; their ids follow the sorted addresses.
    let gateways: Vec<(IpAddr, u32, Reach)> =
        specs[0].gateways.iter().map(|g| (g.address, g.id, g.reach.clone())).collect();
    assert_eq!(
        gateways,
        [
            (ip("10.80.0.5"), A, Reach::Local),
            (ip("10.80.0.70"), P, Reach::Peer { router: ip("10.80.0.65") }),
            (ip("10.80.0.6"), B, Reach::Local)
        ]
    );
    assert_eq!(specs[1].gateways.iter().map(|g| g.id).collect::<Vec<_>>(), [B, A]);
    assert_eq!(all_gateways(&c.slices[0]), BTreeSet::from([ip("10.80.0.5"), ip("10.80.0.6"), ip("10.80.0.70")]));
    // The same configuration in another order gives the same ids.
    let mut shuffled = c.clone();
    shuffled.slices[0].remote_routes.reverse();
    assert_eq!(super::specs(&shuffled.slices[0]), specs);
}

#[test]
fn a_fresh_router_gets_gateways_then_groups_then_routes_then_the_rule_and_converges() {
    let (actions, pending) = plan_blue(&pods_there(), &[]);
    assert!(pending.is_empty());
    let set = |key: &str| Action::SetSysctl { slice: "blue".into(), key: key.into(), value: "1".into() };
    let replace = |nexthop| Action::ReplaceNexthop { slice: "blue".into(), nexthop };
    let replace_route = |route| Action::ReplaceNexthopRoute { slice: "blue".into(), route };
    assert_eq!(
        actions,
        [
            set("net/ipv4/fib_multipath_hash_policy"),
            set("net/ipv6/fib_multipath_hash_policy"),
            replace(local(A, "10.80.0.5", "vetha")),
            replace(local(B, "10.80.0.6", "vethb")),
            replace(via_n2()),
            replace(group(GROUP_BASE, &[A, B, P])),
            replace(group(LOCAL_GROUP_BASE, &[A, B])),
            replace(group(GROUP_BASE + 1, &[A, B])),
            replace(group(LOCAL_GROUP_BASE + 1, &[A, B])),
            replace_route(route("10.80.16.0/20", MAIN_TABLE, GROUP_BASE)),
            replace_route(route("10.80.16.0/20", LOCAL_REPLICAS_TABLE, LOCAL_GROUP_BASE)),
            replace_route(route("10.80.32.0/20", MAIN_TABLE, GROUP_BASE + 1)),
            replace_route(route("10.80.32.0/20", LOCAL_REPLICAS_TABLE, LOCAL_GROUP_BASE + 1)),
            Action::AddRule { slice: "blue".into(), rule: rule() },
        ]
    );
    let converged = applied(pods_there(), &actions);
    assert_eq!(plan_blue(&converged, &[]), (vec![], vec![]));
}

#[test]
fn a_dead_local_replica_leaves_both_groups_and_comes_back() {
    let converged = applied(pods_there(), &plan_blue(&pods_there(), &[]).0);
    let (actions, _) = plan_blue(&converged, &["10.80.0.5"]);
    let replace = |nexthop| Action::ReplaceNexthop { slice: "blue".into(), nexthop };
    // Only the groups change: the nexthop objects and the routes stay.
    assert_eq!(
        actions,
        [
            replace(group(GROUP_BASE, &[B, P])),
            replace(group(LOCAL_GROUP_BASE, &[B])),
            replace(group(GROUP_BASE + 1, &[B])),
            replace(group(LOCAL_GROUP_BASE + 1, &[B])),
        ]
    );
    let without_a = applied(converged.clone(), &actions);
    assert_eq!(plan_blue(&without_a, &["10.80.0.5"]).0, []);
    // Its answer puts it back where it was.
    let back_actions = plan_blue(&without_a, &[]).0;
    let back = applied(without_a, &back_actions);
    assert_eq!(back.nexthops.iter().collect::<BTreeSet<_>>(), converged.nexthops.iter().collect::<BTreeSet<_>>());
    assert_eq!(plan_blue(&back, &[]).0, []);
}

/// A replica on a peer node found dead (its node lost, its agent with it): it leaves the main
/// group at once; table 92 (this node's replicas) has nothing of it to lose.
#[test]
fn a_dead_peer_replica_leaves_the_main_group() {
    let converged = applied(pods_there(), &plan_blue(&pods_there(), &[]).0);
    let (actions, _) = plan_blue(&converged, &["10.80.0.70"]);
    assert_eq!(actions, [Action::ReplaceNexthop { slice: "blue".into(), nexthop: group(GROUP_BASE, &[A, B]) }]);
    let without_p = applied(converged, &actions);
    assert_eq!(plan_blue(&without_p, &["10.80.0.70"]).0, []);
    assert_eq!(
        plan_blue(&without_p, &[]).0,
        [Action::ReplaceNexthop { slice: "blue".into(), nexthop: group(GROUP_BASE, &[A, B, P]) }]
    );
}

#[test]
fn with_every_local_replica_dead_table_92_empties_and_a_route_without_a_live_one_keeps_all() {
    let converged = applied(pods_there(), &plan_blue(&pods_there(), &[]).0);
    let (actions, _) = plan_blue(&converged, &["10.80.0.5", "10.80.0.6"]);
    let s = || "blue".to_owned();
    assert_eq!(
        actions,
        [
            // 10.80.16.0/20 goes to n2's replica alone; 10.80.32.0/20 has nothing better than
            // its dead ones and keeps them.
            Action::ReplaceNexthop { slice: s(), nexthop: group(GROUP_BASE, &[P]) },
            Action::DeleteNexthopRoute {
                slice: s(),
                route: route("10.80.16.0/20", LOCAL_REPLICAS_TABLE, LOCAL_GROUP_BASE)
            },
            Action::DeleteNexthopRoute {
                slice: s(),
                route: route("10.80.32.0/20", LOCAL_REPLICAS_TABLE, LOCAL_GROUP_BASE + 1)
            },
            Action::DeleteNexthop { slice: s(), id: LOCAL_GROUP_BASE },
            Action::DeleteNexthop { slice: s(), id: LOCAL_GROUP_BASE + 1 },
        ]
    );
    let after = applied(converged, &actions);
    assert!(after.rules.contains(&rule()), "the rule stays: the lookup falls through to main");
    assert_eq!(plan_blue(&after, &["10.80.0.5", "10.80.0.6"]).0, []);
}

#[test]
fn a_local_replica_whose_pod_is_not_there_waits_and_the_others_carry_on() {
    let mut only_a = pods_there();
    only_a.local_host_devs.remove(&ip("10.80.0.6"));
    let (actions, pending) = plan_blue(&only_a, &[]);
    assert_eq!(pending.iter().map(|r| r.prefix).collect::<Vec<_>>(), [net("10.80.16.0/20"), net("10.80.32.0/20")]);
    assert!(actions.contains(&Action::ReplaceNexthop { slice: "blue".into(), nexthop: group(GROUP_BASE, &[A, P]) }));
    assert!(!actions.iter().any(|a| matches!(a, Action::ReplaceNexthop { nexthop, .. } if nexthop.id == B)));
    // On the whole node: after the state file, and the slice's last action waits for the pod.
    let c = config();
    let mut observed = Observed::default();
    observed.multipath.insert("blue".into(), only_a);
    let all = plan_node(&c, &observed);
    let state_file = all.iter().position(|a| matches!(a, Action::WriteStateFile { .. })).unwrap();
    let first_nexthop = all.iter().position(|a| matches!(a, Action::ReplaceNexthop { .. })).unwrap();
    assert!(state_file < first_nexthop, "{all:#?}");
    assert!(matches!(all.last(), Some(Action::AwaitGateway { pending, .. }) if pending.len() == 3), "{all:#?}");
}

#[test]
fn going_back_to_one_gateway_removes_ours_in_order_and_leaves_foreign_objects() {
    let mut converged = applied(pods_there(), &plan_blue(&pods_there(), &[]).0);
    // Someone else's: a nexthop outside our ids, a route through it, a rule of another priority.
    let foreign = local(7, "10.80.0.5", "vetha");
    converged.nexthops.push(foreign.clone());
    converged.routes.push(route("10.80.64.0/20", MAIN_TABLE, 7));
    converged.rules.push(Rule { priority: 500, ..rule() });
    // Every remote route back to one gateway.
    let mut c = config();
    for r in &mut c.slices[0].remote_routes {
        r.also_via.clear();
    }
    let specs = super::specs(&c.slices[0]);
    assert!(specs.is_empty());
    let want = wanted(&specs, "sv100", &converged, &BTreeSet::new());
    let plain: BTreeSet<IpNet> = c.slices[0].remote_routes.iter().map(|r| r.prefix).collect();
    let mut actions = Vec::new();
    sysctls("blue", &specs, &converged, &mut actions);
    plan("blue", &specs, want, &[net("10.80.0.0/16")], &plain, &converged, &mut actions);
    let s = || "blue".to_owned();
    let del = |id| Action::DeleteNexthop { slice: s(), id };
    let zero = |key: &str| Action::SetSysctl { slice: s(), key: key.into(), value: "0".into() };
    assert_eq!(
        actions,
        [
            Action::DeleteRule { slice: s(), rule: rule() },
            // Main-table routes are taken over by the plain routes' replace; table 92's go.
            Action::DeleteNexthopRoute {
                slice: s(),
                route: route("10.80.16.0/20", LOCAL_REPLICAS_TABLE, LOCAL_GROUP_BASE)
            },
            Action::DeleteNexthopRoute {
                slice: s(),
                route: route("10.80.32.0/20", LOCAL_REPLICAS_TABLE, LOCAL_GROUP_BASE + 1)
            },
            del(GROUP_BASE),
            del(GROUP_BASE + 1),
            del(LOCAL_GROUP_BASE),
            del(LOCAL_GROUP_BASE + 1),
            del(A),
            del(B),
            del(P),
            zero("net/ipv4/fib_multipath_hash_policy"),
            zero("net/ipv6/fib_multipath_hash_policy"),
        ]
    );
}

#[test]
fn an_id_of_ours_holding_the_wrong_kind_is_deleted_before_it_is_made() {
    let mut observed = pods_there();
    observed.nexthops.push(local(GROUP_BASE, "10.80.0.5", "vetha"));
    let (actions, _) = plan_blue(&observed, &[]);
    let at = actions.iter().position(|a| *a == Action::DeleteNexthop { slice: "blue".into(), id: GROUP_BASE }).unwrap();
    assert_eq!(
        actions[at + 1],
        Action::ReplaceNexthop { slice: "blue".into(), nexthop: group(GROUP_BASE, &[A, B, P]) }
    );
}

#[test]
fn a_router_that_never_had_multipath_is_not_looked_into() {
    assert!(!ObservedMultipath::worth_looking(false, &BTreeMap::new()));
    let zero = BTreeMap::from([(MULTIPATH_SYSCTLS[0].to_owned(), "0".to_owned())]);
    assert!(!ObservedMultipath::worth_looking(false, &zero));
    let one = BTreeMap::from([(MULTIPATH_SYSCTLS[1].to_owned(), "1".to_owned())]);
    assert!(ObservedMultipath::worth_looking(false, &one));
    assert!(ObservedMultipath::worth_looking(true, &zero));
}
