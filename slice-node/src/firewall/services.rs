//! ClusterSetIP services (MCS) in the router namespace: a new connection from a pod to a
//! service's virtual address and port is DNAT-ed to one of that port's backends, picked at random
//! per connection (`numgen random mod N` into a map of `address . port`); every later packet of
//! the connection and its replies follow the same conntrack entry. This router is the pod's first
//! hop, and the pod's own address lives behind it, so replies always come back through it.
//!
//! What still goes to a service address after the DNAT chain (a port without backends, a port the
//! service does not have) is refused as kube-proxy does: TCP with a reset, anything else with
//! ICMP port unreachable, so a client fails at once instead of timing out.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};
use slice_api::node::{ClusterSetService, ServicePortRule, SliceOnNode};

use super::{PRIORITY_DSTNAT, base_chain, rule};

/// The DNAT chain.
pub const CHAIN_DNAT: &str = "services";
/// The chain that refuses what the DNAT chain did not translate.
pub const CHAIN_UNSERVED: &str = "services-unserved";

/// nft's name of the address family of `ip` (`ip` or `ip6`), for payload matches and `dnat`.
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

/// nft's name of a (validated) service protocol.
fn l4(protocol: &str) -> String {
    protocol.to_ascii_lowercase()
}

/// `<family> daddr == <right>`.
fn daddr_is(family: &str, right: Value) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": family, "field": "daddr"}}, "right": right}})
}

/// The DNAT statement to one backend, or to one of several picked at random.
fn dnat(family: &str, backends: &[SocketAddr]) -> Value {
    if let [one] = backends {
        return json!({"dnat": {"family": family, "addr": one.ip().to_string(), "port": one.port()}});
    }
    let elements: Vec<Value> =
        backends.iter().enumerate().map(|(i, b)| json!([i, {"concat": [b.ip().to_string(), b.port()]}])).collect();
    json!({"dnat": {"family": family, "addr": {"map": {
        "key": {"numgen": {"mode": "random", "mod": backends.len(), "offset": 0}},
        "data": {"set": elements},
    }}}})
}

/// The rule of one service port with backends.
fn dnat_rule(service: &ClusterSetService, port: &ServicePortRule) -> Value {
    let fam = family(service.ip);
    let mut backends = port.backends.clone();
    backends.sort();
    rule(
        CHAIN_DNAT,
        vec![
            daddr_is(fam, json!(service.ip.to_string())),
            json!({"match": {"op": "==", "left": {"payload": {"protocol": l4(&port.protocol), "field": "dport"}}, "right": port.port}}),
            dnat(fam, &backends),
        ],
        Some(&service.name),
    )
}

/// The chains and rules of the slice's services; empty when it has none.
pub fn chains(slice: &SliceOnNode) -> Vec<Value> {
    if slice.services.is_empty() {
        return Vec::new();
    }
    // Sorted, so that the same services listed in another order build the same table (and the
    // agent does not rewrite it).
    let mut services: Vec<&ClusterSetService> = slice.services.iter().collect();
    services.sort_by(|a, b| (a.ip, &a.name).cmp(&(b.ip, &b.name)));
    let mut objects = vec![
        base_chain(CHAIN_DNAT, "nat", "prerouting", PRIORITY_DSTNAT),
        base_chain(CHAIN_UNSERVED, "filter", "prerouting", PRIORITY_DSTNAT + 10),
    ];
    for service in &services {
        let mut ports: Vec<&ServicePortRule> = service.ports.iter().filter(|p| !p.backends.is_empty()).collect();
        ports.sort_by(|a, b| (a.port, &a.protocol).cmp(&(b.port, &b.protocol)));
        objects.extend(ports.into_iter().map(|p| dnat_rule(service, p)));
    }
    let fam = family(slice.slice_subnet.addr());
    let mut addresses: Vec<String> = Vec::new();
    for ip in services.iter().map(|s| s.ip) {
        let ip = ip.to_string();
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    // nft lists a one-element set as the bare element.
    let to_services =
        daddr_is(fam, if addresses.len() == 1 { json!(addresses[0]) } else { json!({ "set": addresses }) });
    objects.push(rule(
        CHAIN_UNSERVED,
        vec![
            to_services.clone(),
            json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}),
            json!({"reject": {"type": "tcp reset"}}),
        ],
        None,
    ));
    objects.push(rule(
        CHAIN_UNSERVED,
        vec![to_services, json!({"reject": {"type": "icmpx", "expr": "port-unreachable"}})],
        None,
    ));
    objects
}

/// How many services and service ports with backends `slice` programs.
pub fn count(slice: &SliceOnNode) -> (usize, usize) {
    let ports = slice.services.iter().flat_map(|s| &s.ports).filter(|p| !p.backends.is_empty()).count();
    (slice.services.len(), ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(subnet: &str, services: Value) -> SliceOnNode {
        serde_json::from_value(json!({
            "name": "blue", "vni": 100, "sliceSubnet": subnet, "nodePrefix": subnet,
            "services": services,
        }))
        .unwrap()
    }

    fn web() -> Value {
        json!([{"name": "shop/web", "ip": "10.80.255.10", "ports": [
            {"protocol": "TCP", "port": 80, "backends": ["10.80.16.6:8080", "10.80.0.5:8080"]},
            {"protocol": "UDP", "port": 53, "backends": ["10.80.0.7:5353"]},
            {"protocol": "TCP", "port": 81, "backends": []}
        ]}])
    }

    fn rules_of<'a>(objects: &'a [Value], chain: &str) -> Vec<&'a Value> {
        objects.iter().filter(|o| o["rule"]["chain"] == chain).collect()
    }

    #[test]
    fn no_service_no_chain() {
        assert!(chains(&slice("10.80.0.0/16", json!([]))).is_empty());
        assert_eq!(super::super::table(&slice("10.80.0.0/16", json!([]))), Ok(None));
    }

    #[test]
    fn each_port_with_backends_is_one_dnat_rule_in_the_listing_form() {
        let objects = chains(&slice("10.80.0.0/16", web()));
        let dnat = rules_of(&objects, CHAIN_DNAT);
        assert_eq!(dnat.len(), 2, "port 81 has no backend: no DNAT rule");
        // Sorted by port: 53/UDP, then 80/TCP.
        assert_eq!(
            dnat[0]["rule"]["expr"],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.80.255.10"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
                {"dnat": {"family": "ip", "addr": "10.80.0.7", "port": 5353}}
            ])
        );
        assert_eq!(
            dnat[1]["rule"]["expr"][2],
            json!({"dnat": {"family": "ip", "addr": {"map": {
                "key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                "data": {"set": [[0, {"concat": ["10.80.0.5", 8080]}], [1, {"concat": ["10.80.16.6", 8080]}]]}
            }}}})
        );
        assert_eq!(dnat[1]["rule"]["comment"], "shop/web");
        let chain = &objects[0]["chain"];
        assert_eq!(
            (chain["type"].as_str(), chain["hook"].as_str(), chain["prio"].as_i64()),
            (Some("nat"), Some("prerouting"), Some(-100))
        );
    }

    #[test]
    fn whatever_is_left_for_a_service_address_is_refused() {
        let mut services = web();
        services.as_array_mut().unwrap().push(json!({"name": "shop/db", "ip": "10.80.255.11", "ports": []}));
        let objects = chains(&slice("10.80.0.0/16", services));
        let unserved = rules_of(&objects, CHAIN_UNSERVED);
        assert_eq!(unserved.len(), 2);
        let addresses = json!({"set": ["10.80.255.10", "10.80.255.11"]});
        assert_eq!(unserved[0]["rule"]["expr"][0]["match"]["right"], addresses);
        assert_eq!(unserved[0]["rule"]["expr"][2], json!({"reject": {"type": "tcp reset"}}));
        assert_eq!(unserved[1]["rule"]["expr"][1], json!({"reject": {"type": "icmpx", "expr": "port-unreachable"}}));
        // One address: the bare element, as nft lists it.
        let one = chains(&slice("10.80.0.0/16", web()));
        assert_eq!(rules_of(&one, CHAIN_UNSERVED)[0]["rule"]["expr"][0]["match"]["right"], "10.80.255.10");
    }

    #[test]
    fn an_ipv6_slice_matches_and_translates_ip6() {
        let services = json!([{"name": "shop/web", "ip": "fd00:80::ff:a", "ports": [
            {"protocol": "SCTP", "port": 80, "backends": ["[fd00:80::5]:8080", "[fd00:80::6]:8080"]}
        ]}]);
        let objects = chains(&slice("fd00:80::/64", services));
        let dnat = rules_of(&objects, CHAIN_DNAT);
        assert_eq!(dnat[0]["rule"]["expr"][0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(dnat[0]["rule"]["expr"][1]["match"]["left"]["payload"]["protocol"], "sctp");
        assert_eq!(dnat[0]["rule"]["expr"][2]["dnat"]["family"], "ip6");
        assert_eq!(dnat[0]["rule"]["expr"][2]["dnat"]["addr"]["map"]["data"]["set"][0][1]["concat"][0], "fd00:80::5");
    }

    #[test]
    fn the_order_of_the_configuration_does_not_change_the_table() {
        let a = json!([
            {"name": "shop/a", "ip": "10.80.255.10", "ports": [{"protocol": "TCP", "port": 80, "backends": ["10.80.0.5:1", "10.80.0.6:1"]}, {"protocol": "TCP", "port": 81, "backends": ["10.80.0.5:2"]}]},
            {"name": "shop/b", "ip": "10.80.255.11", "ports": [{"protocol": "UDP", "port": 53, "backends": ["10.80.0.7:53"]}]}
        ]);
        let b = json!([
            {"name": "shop/b", "ip": "10.80.255.11", "ports": [{"protocol": "UDP", "port": 53, "backends": ["10.80.0.7:53"]}]},
            {"name": "shop/a", "ip": "10.80.255.10", "ports": [{"protocol": "TCP", "port": 81, "backends": ["10.80.0.5:2"]}, {"protocol": "TCP", "port": 80, "backends": ["10.80.0.6:1", "10.80.0.5:1"]}]}
        ]);
        assert_eq!(chains(&slice("10.80.0.0/16", a.clone())), chains(&slice("10.80.0.0/16", b)));
        assert_eq!(count(&slice("10.80.0.0/16", a)), (2, 3));
    }
}
