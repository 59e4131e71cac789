//! Building the ADD result: chained mode appends the slice interface to the previous result
//! without changing or reordering anything in it; standalone mode returns a result of its own.

use std::net::IpAddr;

use serde_json::{Map, Value, json};
use slice_api::NodeState;

use crate::attach::Attached;

/// The slice attachment as it goes into a result.
#[derive(Debug, Clone)]
pub struct SliceInterface<'a> {
    pub ifname: &'a str,
    pub sandbox: &'a str,
    /// One address per family of the slice, the primary family first.
    pub ips: &'a [IpAddr],
    pub attached: &'a Attached,
    pub state: &'a NodeState,
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A result with no interfaces, for a runtime that asks a non-member pod without prevResult.
pub fn empty(cni_version: &str) -> Value {
    json!({ "cniVersion": cni_version, "interfaces": [], "ips": [], "dns": {} })
}

/// Appends the slice interface, its address and its route to `base` (prevResult, or an empty
/// result in standalone mode). Keys already in `base` keep their order and content.
pub fn with_slice(base: Value, cni_version: &str, s: &SliceInterface<'_>) -> Value {
    let mut result: Map<String, Value> = match base {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    result.insert("cniVersion".into(), Value::String(cni_version.into()));
    let mut iface = json!({ "name": s.ifname, "mac": mac_string(s.attached.mac), "sandbox": s.sandbox });
    if cni_version == "1.1.0" {
        iface["mtu"] = json!(s.attached.mtu);
    }
    let interfaces = array(&mut result, "interfaces");
    interfaces.push(iface);
    let index = interfaces.len() - 1;
    for address in s.ips {
        let prefix_len = if address.is_ipv4() { 32 } else { 128 };
        let mut ip = json!({ "address": format!("{address}/{prefix_len}"), "interface": index });
        if cni_version == "0.4.0" {
            ip["version"] = json!(if address.is_ipv4() { "4" } else { "6" });
        }
        array(&mut result, "ips").push(ip);
    }
    for address in s.ips {
        if let Some((subnet, _, router)) = s.state.families().find(|(subnet, _, _)| subnet.contains(address)) {
            array(&mut result, "routes").push(json!({
                "dst": subnet.to_string(),
                "gw": crate::attach::next_hop(router).to_string(),
            }));
        }
    }
    result.entry("dns").or_insert_with(|| json!({}));
    Value::Object(result)
}

fn array<'m>(map: &'m mut Map<String, Value>, key: &str) -> &'m mut Vec<Value> {
    let slot = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut().expect("just made an array")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        NodeState {
            slice: "blue".into(),
            vni: 1,
            router_netns: "/run/netns/x".into(),
            node_prefix: "10.80.0.0/26".parse().unwrap(),
            router_address: "10.80.0.1".parse().unwrap(),
            slice_subnet: "10.80.0.0/16".parse().unwrap(),
            mtu: 1450,
            namespaces: vec![],
            gateway_namespace: None,
            secondary: None,
        }
    }

    #[test]
    fn chained_appends_without_touching_prev() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa"}, {"name": "veth1", "mac": "bb"}, {"name": "eth0", "sandbox": "/ns"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let attached = Attached { mac: [2, 0, 0, 0, 0, 1], mtu: 1450 };
        let st = state();
        let s = SliceInterface {
            ifname: "slice0",
            sandbox: "/ns",
            ips: &["10.80.0.2".parse().unwrap()],
            attached: &attached,
            state: &st,
        };
        let out = with_slice(prev.clone(), "1.0.0", &s);
        assert_eq!(out["interfaces"].as_array().unwrap()[..3], prev["interfaces"].as_array().unwrap()[..]);
        assert_eq!(out["interfaces"][3]["name"], "slice0");
        assert_eq!(out["interfaces"][3]["mac"], "02:00:00:00:00:01");
        assert_eq!(out["ips"][0], prev["ips"][0]);
        assert_eq!(out["ips"][1], json!({"address": "10.80.0.2/32", "interface": 3}));
        assert_eq!(out["routes"][1], json!({"dst": "10.80.0.0/16", "gw": "10.80.0.1"}));
        assert_eq!(out["dns"], prev["dns"]);
        let keys: Vec<_> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["cniVersion", "interfaces", "ips", "routes", "dns"]);
    }

    #[test]
    fn version_specific_fields() {
        let attached = Attached { mac: [0; 6], mtu: 1400 };
        let st = state();
        let s = SliceInterface {
            ifname: "net1",
            sandbox: "/ns",
            ips: &["10.80.0.2".parse().unwrap()],
            attached: &attached,
            state: &st,
        };
        let v04 = with_slice(empty("0.4.0"), "0.4.0", &s);
        assert_eq!(v04["ips"][0]["version"], "4");
        let v11 = with_slice(empty("1.1.0"), "1.1.0", &s);
        assert_eq!(v11["interfaces"][0]["mtu"], 1400);
        assert_eq!(v11["ips"][0]["interface"], 0);
    }

    #[test]
    fn a_dual_stack_slice_gives_both_addresses_and_a_route_per_family() {
        let mut st = state();
        st.secondary = Some(slice_api::node::NodeStateFamily {
            slice_subnet: "fd00:80::/48".parse().unwrap(),
            node_prefix: "fd00:80::/120".parse().unwrap(),
            router_address: "fd00:80::1".parse().unwrap(),
        });
        let attached = Attached { mac: [0; 6], mtu: 1400 };
        let ips = ["10.80.0.2".parse().unwrap(), "fd00:80::2".parse().unwrap()];
        let s = SliceInterface { ifname: "slice0", sandbox: "/ns", ips: &ips, attached: &attached, state: &st };
        let out = with_slice(empty("0.4.0"), "0.4.0", &s);
        assert_eq!(
            out["ips"],
            json!([
                {"address": "10.80.0.2/32", "interface": 0, "version": "4"},
                {"address": "fd00:80::2/128", "interface": 0, "version": "6"},
            ])
        );
        assert_eq!(
            out["routes"],
            json!([{"dst": "10.80.0.0/16", "gw": "10.80.0.1"}, {"dst": "fd00:80::/48", "gw": "fe80::1"}])
        );
    }
}
