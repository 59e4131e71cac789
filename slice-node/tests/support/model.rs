//! A small MODEL of NetworkPolicy semantics on the policies' JSON (`{"namespace", "name",
//! "spec"}`), written from the Kubernetes documentation and sharing no code with the compiler
//! (`slice_node::firewall::policy`): the expected outcome of every cell of the truth-table
//! tests comes from here. It depends only on `std` and `serde_json`, so the node's root test
//! (`slice-node/tests/policy_root.rs`) and the lab's two-cluster test (`e2e/tests/policy.rs`)
//! include this one file (`#[path]`) and share nothing else.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

/// The transport of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The protocol's name in a policy (`TCP`, `UDP`).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// A pod as policies see it: its namespace and the namespace's labels, its own labels, its
/// slice address and its named container ports (name, port, protocol).
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub ns_labels: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub address: Ipv4Addr,
    pub named: Vec<(String, u16, String)>,
}

fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str()));
    let exprs_ok = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let value = labels.get(e["key"].as_str().expect("an expression has a key"));
            let values: Vec<&str> =
                e["values"].as_array().map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            match e["operator"].as_str().expect("an expression has an operator") {
                "In" => value.is_some_and(|v| values.contains(&v.as_str())),
                "NotIn" => !value.is_some_and(|v| values.contains(&v.as_str())),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("the model knows no operator {other}"),
            }
        })
    });
    labels_ok && exprs_ok
}

fn in_cidr(cidr: &str, ip: Ipv4Addr) -> bool {
    let (net, len) = cidr.split_once('/').expect("a CIDR");
    let net: Ipv4Addr = net.parse().expect("an IPv4 network");
    let len: u32 = len.parse().expect("a prefix length");
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

/// `policyTypes`, or its default: `Ingress`, plus `Egress` when the policy has egress rules.
fn types(spec: &Value) -> Vec<String> {
    match spec["policyTypes"].as_array() {
        Some(t) if !t.is_empty() => t.iter().map(|v| v.as_str().expect("a type").to_string()).collect(),
        _ => {
            let mut t = vec!["Ingress".to_string()];
            if spec["egress"].as_array().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".to_string());
            }
            t
        }
    }
}

fn peer_matches(peer: &Value, policy_ns: &str, other: &Pod) -> bool {
    if let Some(block) = peer.get("ipBlock") {
        return in_cidr(block["cidr"].as_str().expect("a cidr"), other.address)
            && !block["except"]
                .as_array()
                .is_some_and(|e| e.iter().any(|c| in_cidr(c.as_str().expect("a CIDR"), other.address)));
    }
    let ns_ok = match peer.get("namespaceSelector") {
        None => other.ns == policy_ns,
        Some(s) => selector_matches(s, &other.ns_labels),
    };
    let pod_ok = peer.get("podSelector").is_none_or(|s| selector_matches(s, &other.labels));
    ns_ok && pod_ok
}

fn port_matches(ports: Option<&Value>, dst: &Pod, proto: Proto, port: u16) -> bool {
    let Some(ports) = ports.and_then(Value::as_array).filter(|p| !p.is_empty()) else { return true };
    ports.iter().any(|p| {
        if p["protocol"].as_str().unwrap_or("TCP") != proto.name() {
            return false;
        }
        match &p["port"] {
            Value::Null => true,
            Value::Number(n) => {
                let start = u16::try_from(n.as_u64().expect("a port")).expect("a port");
                let end = p["endPort"].as_u64().map_or(start, |e| u16::try_from(e).expect("a port"));
                (start..=end).contains(&port)
            }
            Value::String(name) => dst.named.iter().any(|(n, num, pr)| n == name && pr == proto.name() && *num == port),
            other => panic!("port {other}"),
        }
    })
}

/// Whether `policies` (those that govern `pod`) allow its traffic in `direction` (`Ingress`:
/// from `other`; `Egress`: to `other`) on `proto`/`port` (`dst` resolves named ports).
fn allowed(policies: &[Value], pod: &Pod, other: &Pod, direction: &str, dst: &Pod, proto: Proto, port: u16) -> bool {
    let (rules_key, peers_key) = if direction == "Ingress" { ("ingress", "from") } else { ("egress", "to") };
    let selecting: Vec<&Value> = policies
        .iter()
        .filter(|p| p["namespace"] == pod.ns.as_str())
        .filter(|p| selector_matches(&p["spec"]["podSelector"], &pod.labels))
        .filter(|p| types(&p["spec"]).iter().any(|t| t == direction))
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|p| {
        let ns = p["namespace"].as_str().expect("a policy has a namespace");
        p["spec"][rules_key].as_array().into_iter().flatten().any(|rule| {
            let peers_ok = match rule[peers_key].as_array() {
                None => true,
                Some(peers) if peers.is_empty() => true,
                Some(peers) => peers.iter().any(|peer| peer_matches(peer, ns, other)),
            };
            peers_ok && port_matches(rule.get("ports"), dst, proto, port)
        })
    })
}

/// The expected outcome of `src` → `dst` on `proto`/`port`. Egress is enforced where `src`
/// runs and ingress where `dst` runs: `egress` are the policies that govern `src` there and
/// `ingress` those that govern `dst`, `None` for a half not enforced where the test measures.
pub fn expect(
    egress: Option<&[Value]>,
    ingress: Option<&[Value]>,
    src: &Pod,
    dst: &Pod,
    proto: Proto,
    port: u16,
) -> bool {
    let out = egress.is_none_or(|p| allowed(p, src, dst, "Egress", dst, proto, port));
    let into = ingress.is_none_or(|p| allowed(p, dst, src, "Ingress", dst, proto, port));
    out && into
}
