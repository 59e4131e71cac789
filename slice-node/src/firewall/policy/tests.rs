//! The compiler's output shape, without a kernel. What the rules *do* is the root test's job
//! (`tests/policy_root.rs`, against an independent model); here: which pods get which chain,
//! which sets, which matches, which errors.

use serde_json::{Value, json};

use super::*;

/// Slice blue on a node with prefix 10.80.0.0/26: pods x/a 10.80.0.2, x/b .3, y/a .4 on this
/// node, z/a 10.80.16.5 in another cluster.
fn slice(policies: Value) -> SliceOnNode {
    let s: SliceOnNode = serde_json::from_value(json!({
        "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.0.0/26",
        "policies": policies,
        "pods": [
            {"namespace": "x", "namespaceLabels": {"ns": "x"}, "labels": {"pod": "a"},
             "ports": [{"name": "serve-80", "port": 80, "protocol": "TCP"}], "addresses": ["10.80.0.2"]},
            {"namespace": "x", "namespaceLabels": {"ns": "x"}, "labels": {"pod": "b"},
             "ports": [{"name": "serve-80", "port": 8080, "protocol": "TCP"}], "addresses": ["10.80.0.3"]},
            {"namespace": "y", "namespaceLabels": {"ns": "y"}, "labels": {"pod": "a"}, "addresses": ["10.80.0.4"]},
            {"namespace": "z", "namespaceLabels": {"ns": "z"}, "labels": {"pod": "a"},
             "ports": [{"name": "serve-80", "port": 80, "protocol": "TCP"}], "addresses": ["10.80.16.5"]}
        ]
    }))
    .unwrap();
    let config = slice_api::node::NodeAgentConfig::example(vec![s.clone()]);
    config.validate().expect("fixture is valid");
    s
}

fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"namespace": namespace, "name": name, "spec": spec})
}

fn objects(policies: Value) -> Vec<Value> {
    compile(&slice(policies)).unwrap_or_else(|e| panic!("{e}")).0
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects.iter().find(|o| o[kind]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn elements(objects: &[Value], kind: &str, name: &str) -> Vec<Value> {
    named(objects, kind, name)[kind].get("elem").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The chain each local pod jumps to, from a verdict map.
fn dispatch(objects: &[Value], map: &str) -> Vec<(String, String)> {
    elements(objects, "map", map)
        .iter()
        .map(|e| (e[0].as_str().unwrap().to_string(), e[1]["jump"]["target"].as_str().unwrap().to_string()))
        .collect()
}

fn rules<'a>(objects: &'a [Value], chain: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["rule"]["chain"] == chain).map(|o| &o["rule"]["expr"]).collect()
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

#[test]
fn no_policy_no_chain() {
    assert_eq!(compile(&slice(json!([]))).unwrap(), (Vec::new(), PolicyCount::default()));
    assert_eq!(crate::firewall::table(&slice(json!([]))), Ok(None));
}

#[test]
fn default_deny_isolates_the_selected_local_pods_for_ingress_only() {
    let o = objects(json!([policy("x", "deny", json!({}))]));
    // Only x's pods on this node, both to the same chain: no rule but the drop.
    assert_eq!(dispatch(&o, MAP_INGRESS), vec![pair("10.80.0.2", "ingress-0"), pair("10.80.0.3", "ingress-0")]);
    assert_eq!(dispatch(&o, MAP_EGRESS), vec![]);
    assert_eq!(rules(&o, "ingress-0"), vec![&json!([{"drop": null}])]);
    // The base chain: replies first, invalid dropped, then egress and ingress dispatch.
    let forward = rules(&o, CHAIN_FORWARD);
    assert_eq!(forward.len(), 4);
    assert_eq!(forward[0][0]["match"]["right"], json!(["established", "related"]));
    assert_eq!(
        forward[1],
        &json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}}, {"drop": null}])
    );
    assert_eq!(forward[2][0]["vmap"]["data"], format!("@{MAP_EGRESS}"));
    assert_eq!(forward[3][0]["vmap"]["key"]["payload"]["field"], "daddr");
    let chain = &named(&o, "chain", CHAIN_FORWARD)["chain"];
    assert_eq!((chain["hook"].as_str(), chain["prio"].as_i64()), (Some("forward"), Some(0)));
}

#[test]
fn egress_is_isolated_by_type_or_by_rules() {
    let o = objects(json!([
        policy("x", "eg", json!({"policyTypes": ["Egress"]})),
        policy("y", "both", json!({"egress": [{}]}))
    ]));
    assert_eq!(
        dispatch(&o, MAP_EGRESS),
        vec![pair("10.80.0.2", "egress-0"), pair("10.80.0.3", "egress-0"), pair("10.80.0.4", "egress-1")]
    );
    assert_eq!(dispatch(&o, MAP_INGRESS), vec![pair("10.80.0.4", "ingress-0")], "default types: Ingress too");
    // egress: [{}] allows everything: an unconditional return before the drop.
    assert_eq!(rules(&o, "egress-1"), vec![&json!([{"return": null}]), &json!([{"drop": null}])]);
}

#[test]
fn selector_peers_are_address_sets_with_kubernetes_scoping() {
    let o = objects(json!([policy(
        "x",
        "peers",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"podSelector": {"matchLabels": {"pod": "a"}}},
            {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "In", "values": ["z"]}]}},
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}
        ]}]})
    )]));
    assert_eq!(dispatch(&o, MAP_INGRESS), vec![pair("10.80.0.2", "ingress-0")]);
    // podSelector alone: the policy's namespace only (x/a, not y/a or z/a); namespaceSelector
    // alone: every pod of z, in another cluster too; both: y has no pod b, so no rule.
    assert_eq!(elements(&o, "set", "peers-0"), vec![json!("10.80.0.2")]);
    assert_eq!(elements(&o, "set", "peers-1"), vec![json!("10.80.16.5")]);
    let r = rules(&o, "ingress-0");
    assert_eq!(r.len(), 3, "two peers that match, then the drop: {r:?}");
    assert_eq!(r[0][0]["match"]["right"], "@peers-0");
    assert_eq!(r[0][0]["match"]["left"]["payload"]["field"], "saddr");
    assert_eq!(r[0][1], json!({"accept": null}), "no ports: every protocol");
    assert_eq!(r[1][0]["match"]["right"], "@peers-1");
}

#[test]
fn an_ip_block_except_narrows_only_its_own_peer() {
    let o = objects(json!([policy(
        "y",
        "block",
        json!({"ingress": [{"from": [
            {"ipBlock": {"cidr": "10.80.0.0/16", "except": ["10.80.0.2/32", "10.80.16.0/20", "10.80.16.0/24"]}},
            {"podSelector": {}}
        ]}]})
    )]));
    let r = rules(&o, "ingress-0");
    assert_eq!(
        r[0],
        &json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.80.0.0", "len": 16}}}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@except-0"}},
            {"accept": null}
        ])
    );
    // Its own interval set, without the /24 inside the /20 (an interval set refuses overlaps).
    let except = &named(&o, "set", "except-0")["set"];
    assert_eq!(except["flags"], json!(["interval"]));
    assert_eq!(except["elem"], json!(["10.80.0.2", {"prefix": {"addr": "10.80.16.0", "len": 20}}]));
    // The other peer is a rule of its own: nothing is dropped before the union is complete.
    assert_eq!(r[1][0]["match"]["right"], "@peers-0");
    assert_eq!(r.iter().filter(|e| e.as_array().unwrap().iter().any(|x| x.get("drop").is_some())).count(), 1);
}

#[test]
fn ports_merge_by_protocol_end_port_is_inclusive_and_icmp_is_not_a_port() {
    let o = objects(json!([policy(
        "y",
        "ports",
        json!({"ingress": [{"ports": [
            {"port": 80}, {"port": 81, "endPort": 90}, {"port": 100}, {"protocol": "UDP", "port": 53},
            {"protocol": "SCTP"}
        ]}]})
    )]));
    let r = rules(&o, "ingress-0");
    let dport = |proto: &str| json!({"payload": {"protocol": proto, "field": "dport"}});
    assert_eq!(r[0][0]["match"]["left"], dport("tcp"));
    assert_eq!(r[0][0]["match"]["right"], json!({"set": [{"range": [80, 90]}, 100]}));
    assert_eq!(r[1][0]["match"]["left"], dport("udp"));
    assert_eq!(r[1][0]["match"]["right"], json!(53));
    assert_eq!(r[2][0]["match"], json!({"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "sctp"}));
    // Every allowing rule names a protocol: ICMP is never allowed by a rule with ports.
    assert_eq!(r.len(), 4);
}

#[test]
fn named_ports_resolve_on_each_destination_pod() {
    // Ingress: on the chain's own pod (x/a: 80, x/b: 8080), so the two pods get two chains.
    let o = objects(json!([policy("x", "named", json!({"ingress": [{"ports": [{"port": "serve-80"}]}]}))]));
    assert_eq!(dispatch(&o, MAP_INGRESS), vec![pair("10.80.0.2", "ingress-0"), pair("10.80.0.3", "ingress-1")]);
    assert_eq!(rules(&o, "ingress-0")[0][0]["match"]["right"], 80);
    assert_eq!(rules(&o, "ingress-1")[0][0]["match"]["right"], 8080);
    // A port name no pod has allows nothing, and is no error.
    let o = objects(json!([policy("y", "none", json!({"ingress": [{"ports": [{"port": "nowhere"}]}]}))]));
    assert_eq!(rules(&o, "ingress-0"), vec![&json!([{"drop": null}])]);
    // Egress: per destination pod, as (address . protocol . port).
    let o = objects(json!([policy(
        "y",
        "out",
        json!({"policyTypes": ["Egress"], "egress": [{"ports": [{"port": "serve-80"}]}]})
    )]));
    assert_eq!(
        elements(&o, "set", "ports-0"),
        vec![
            json!({"concat": ["10.80.0.2", "tcp", 80]}),
            json!({"concat": ["10.80.0.3", "tcp", 8080]}),
            json!({"concat": ["10.80.16.5", "tcp", 80]})
        ]
    );
    let r = rules(&o, "egress-0");
    assert_eq!(r[0][0]["match"]["right"], "@ports-0");
    assert_eq!(r[0][1], json!({"return": null}));
}

#[test]
fn errors_name_the_policy_and_the_fault() {
    let fails = |spec: Value, want: &str| {
        let e = compile(&slice(json!([policy("x", "ok", json!({})), policy("y", "bad", spec)]))).unwrap_err();
        assert_eq!((e.namespace.as_str(), e.name.as_str()), ("y", "bad"));
        assert!(e.to_string().contains(want), "{e} should say {want}");
    };
    fails(
        json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}}),
        "podSelector: matchExpressions[0]",
    );
    fails(json!({"policyTypes": ["Sideways"]}), "\"Sideways\" is neither Ingress nor Egress");
    fails(json!({"ingress": [{"from": [{}]}]}), "y/bad ingress[0] peer 0: a peer needs");
    fails(
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
        "cannot be combined",
    );
    fails(
        json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}),
        "not a strict subset",
    );
    fails(json!({"ingress": [{"from": [{"ipBlock": {"cidr": "ten/8"}}]}]}), "\"ten/8\" is not a CIDR");
    fails(
        json!({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
        "y/bad egress[0] port 0: endPort 80 is not in 90..65535",
    );
    fails(json!({"ingress": [{"ports": [{"port": "http", "endPort": 80}]}]}), "endPort needs a numeric port");
    fails(json!({"ingress": [{"ports": [{"port": 70000}]}]}), "port 70000 is not in 1..65535");
    fails(json!({"ingress": [{"ports": [{"port": "80"}]}]}), "neither a number nor a port name");
    fails(json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}), "protocol \"ICMP\" is none of");
    // A broken rule breaks the policy even where its direction is not in force.
    fails(json!({"policyTypes": ["Ingress"], "egress": [{"ports": [{"endPort": 80}]}]}), "endPort without port");
}

#[test]
fn the_same_policies_in_another_order_make_the_same_table_in_listing_order() {
    let a = json!([
        policy("x", "one", json!({"ingress": [{"from": [{"podSelector": {}}]}]})),
        policy("x", "two", json!({"egress": [{}]}))
    ]);
    let b = json!([
        policy("x", "two", json!({"egress": [{}]})),
        policy("x", "one", json!({"ingress": [{"from": [{"podSelector": {}}]}]}))
    ]);
    let table = crate::firewall::table(&slice(a)).unwrap().unwrap();
    assert_eq!(Some(table.clone()), crate::firewall::table(&slice(b)).unwrap());
    let kinds: Vec<&str> = table.iter().map(|o| o.as_object().unwrap().keys().next().unwrap().as_str()).collect();
    let first = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    let last = |k: &str| kinds.iter().rposition(|x| *x == k).unwrap();
    assert_eq!(kinds[0], "table");
    assert!(last("set") < first("chain") && last("map") < first("chain") && last("chain") < first("rule"), "{kinds:?}");
    // Anti-spoofing is the first chain of every table.
    assert_eq!(
        table[kinds.iter().position(|k| *k == "chain").unwrap()]["chain"]["name"],
        crate::firewall::anti_spoof::CHAIN
    );
}

/// A dual-stack slice: every pod has an address of each family, and a policy isolates it in
/// both (a rule written against pod selectors holds for IPv6 as for IPv4; an IPv4 `ipBlock`
/// allows nothing over IPv6).
#[test]
fn a_dual_stack_slice_is_isolated_in_both_families() {
    let s: SliceOnNode = serde_json::from_value(json!({
        "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.0.0/26",
        "secondary": {"sliceSubnet": "fd00:80::/48", "nodePrefix": "fd00:80::/120"},
        "policies": [policy("x", "web", json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}, {"ipBlock": {"cidr": "10.99.0.0/16"}}],
                         "ports": [{"protocol": "TCP", "port": 80}]}]}))],
        "pods": [
            {"namespace": "x", "labels": {"pod": "a"}, "addresses": ["10.80.0.2", "fd00:80::2"]},
            {"namespace": "x", "labels": {"pod": "b"}, "addresses": ["10.80.0.3", "fd00:80::3"]},
            {"namespace": "x", "labels": {"pod": "b"}, "addresses": ["10.80.16.5", "fd00:80:0:1000::5"]}
        ]
    }))
    .unwrap();
    let config = slice_api::node::NodeAgentConfig::example(vec![s.clone()]);
    config.validate().expect("fixture is valid");
    let (o, count) = compile(&s).unwrap();
    assert_eq!((count.ingress_isolated, count.egress_isolated), (1, 0), "pods counted once");
    assert_eq!(dispatch(&o, MAP_INGRESS), vec![pair("10.80.0.2", "ingress-0")]);
    assert_eq!(dispatch(&o, &format!("{MAP_INGRESS}6")), vec![pair("fd00:80::2", "ingress6-0")]);
    assert_eq!(named(&o, "map", &format!("{MAP_INGRESS}6"))["map"]["type"], "ipv6_addr");
    // The IPv6 peers: x/b's IPv6 addresses, here and in the other cluster.
    let peers: Vec<Value> = elements(&o, "set", "peers6-0");
    assert_eq!(peers, vec![json!("fd00:80::3"), json!("fd00:80:0:1000::5")]);
    // Its rule matches ip6 saddr; the IPv4 block has no IPv6 counterpart.
    let v6 = rules(&o, "ingress6-0");
    assert_eq!(v6.len(), 2, "{v6:?}");
    assert_eq!(v6[0][0]["match"]["left"]["payload"]["protocol"], "ip6");
    // The base chain dispatches each family: egress and ingress for IPv4, then for IPv6.
    let forward = rules(&o, CHAIN_FORWARD);
    assert_eq!(forward.len(), 6);
    assert_eq!(forward[4][0]["vmap"]["key"]["payload"]["protocol"], "ip6");
    assert_eq!(forward[5][0]["vmap"]["data"], format!("@{MAP_INGRESS}6"));
    // The whole table builds with both (what nft loads: the root test's job).
    assert!(crate::firewall::table(&s).unwrap().is_some());
}
