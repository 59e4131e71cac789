//! MultiNetworkPolicy in the router namespace, compiled (pure) from the slice's policies and pod
//! directory into chains, sets and verdict maps of the router's table.
//!
//! Where it holds: a pod's traffic always passes its own node's router, so this router enforces
//! **ingress** for the pods of this node (packets forwarded *to* them, from a pod of this node,
//! of another node over the VXLAN, or of another cluster through the gateway) and **egress**
//! for the pods of this node (packets forwarded *from* them). A peer anywhere in the slice is
//! matched by its slice address, which the pod directory gives with its labels and its
//! namespace's labels; source addresses can be trusted because the anti-spoof chain
//! ([`super::anti_spoof`]) runs before anything else.
//!
//! Shape (one base chain on `forward`, after the services' DNAT, so destinations are pods):
//!
//! ```text
//! chain policy-forward  (filter, forward, priority filter)
//!   ct state established,related accept      replies and admitted flows
//!   ct state invalid drop
//!   ip saddr vmap @policy-egress-pods        egress-isolated pods of this node → egress-N
//!   ip daddr vmap @policy-ingress-pods       ingress-isolated pods of this node → ingress-N
//! chain egress-N   one rule per (rule, peer, protocol) that allows: return; else drop
//! chain ingress-N  one rule per (rule, peer, protocol) that allows: accept; else drop
//! ```
//!
//! A dual-stack slice is compiled once per family, its pods isolated in both: the secondary
//! family's sets, maps and chains carry a tag in their names (`peers6-0`, `policy-ingress-pods6`,
//! `ingress6-0`; `4` when the secondary family is IPv4) and its `ip6` (`ip`) vmap rules follow
//! the primary family's in the base chain; the pod directory lists each pod's address of each
//! family.
//!
//! Pods whose rules come out the same share one chain. Peers are named sets: `peers-N` (the
//! slice addresses a selector peer matches), an `ipBlock` is its prefix plus its own interval
//! set `except-N` (`saddr != @except-N` in that peer's rule only, never a global drop, so the
//! union of rules holds), and `ports-N` (address . protocol . port) for egress to named ports,
//! which resolve per destination pod. Ingress named ports resolve on the destination pod,
//! which is the chain's own pod.
//!
//! Semantics are NetworkPolicy's: a pod selected by a policy of a type is isolated in that
//! direction; the allowed traffic is the union of every rule of every such policy; peers of a
//! rule are ORed and ANDed with its ports; `podSelector` with `namespaceSelector` in one peer is
//! AND, `podSelector` alone means the policy's namespace, `namespaceSelector` alone all pods of
//! the matching namespaces; `endPort` is inclusive; a rule with ports allows only those ports
//! (never ICMP), a rule without ports allows every protocol; a named port that no destination
//! pod has allows nothing (and is no error: a policy written before its pods is normal).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};
use slice_api::node::SliceOnNode;
use slice_api::policy::{LabelSelector, PodGroup, PolicyPeer, PolicyPort, PortValue, SlicePolicy};

use super::{TABLE, base_chain, rule};

/// The base chain on `forward`.
pub const CHAIN_FORWARD: &str = "policy-forward";
/// Verdict map: address of an ingress-isolated pod of this node → its chain.
pub const MAP_INGRESS: &str = "policy-ingress-pods";
/// Verdict map: address of an egress-isolated pod of this node → its chain.
pub const MAP_EGRESS: &str = "policy-egress-pods";
/// Priority of nft's `filter` slot.
pub const PRIORITY_FILTER: i32 = 0;

/// A policy that cannot be compiled: the agent keeps the previous table and reports this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {namespace}/{name} cannot be compiled: {reason}")]
pub struct CompileError {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    fn nft(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone)]
enum PortSpec {
    /// Every port of a protocol.
    All(Proto),
    /// `port..=end`.
    Range(Proto, u16, u16),
    /// A named container port of the destination pod.
    Named(Proto, String),
}

#[derive(Debug, Clone)]
enum Peer<'a> {
    Pods { pods: Option<&'a LabelSelector>, namespaces: Option<&'a LabelSelector> },
    Block { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Debug, Clone)]
struct Rule<'a> {
    /// Empty: every peer.
    peers: Vec<Peer<'a>>,
    /// Empty: every port and protocol.
    ports: Vec<PortSpec>,
    /// `ns/name ingress[i]`, the rules' comment.
    what: String,
}

#[derive(Debug)]
struct Policy<'a> {
    namespace: &'a str,
    selector: &'a LabelSelector,
    ingress: Option<Vec<Rule<'a>>>,
    egress: Option<Vec<Rule<'a>>>,
}

/// A pod of the directory.
#[derive(Debug, Clone, Copy)]
struct Pod<'a> {
    address: IpAddr,
    group: &'a PodGroup,
}

impl Pod<'_> {
    /// The port number of this pod's container port `name` of `proto`.
    fn named_port(&self, proto: Proto, name: &str) -> Option<u16> {
        self.group.ports.iter().find(|p| p.name == name && Proto::parse(&p.protocol) == Some(proto)).map(|p| p.port)
    }
}

/// IANA_SVC_NAME, what Kubernetes accepts as a port name: 1–15 of `a-z0-9-`, a letter at least,
/// no hyphen at either end or twice in a row.
fn is_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn compile_port(port: &PolicyPort) -> Result<PortSpec, String> {
    let name = port.protocol.as_deref().unwrap_or("TCP");
    let proto = Proto::parse(name).ok_or_else(|| format!("protocol {name:?} is none of TCP, UDP, SCTP"))?;
    let in_range = |n: i64| u16::try_from(n).ok().filter(|n| *n != 0);
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortSpec::All(proto)),
        (None, Some(_)) => Err("endPort without port".into()),
        (Some(PortValue::Number(n)), end) => {
            let start = in_range(*n).ok_or_else(|| format!("port {n} is not in 1..65535"))?;
            let end = match end {
                None => start,
                Some(e) => in_range(e)
                    .filter(|e| *e >= start)
                    .ok_or_else(|| format!("endPort {e} is not in {start}..65535 (port {start})"))?,
            };
            Ok(PortSpec::Range(proto, start, end))
        }
        (Some(PortValue::Name(_)), Some(_)) => Err("endPort needs a numeric port".into()),
        (Some(PortValue::Name(name)), None) => {
            if is_port_name(name) {
                Ok(PortSpec::Named(proto, name.clone()))
            } else {
                Err(format!("port {name:?} is neither a number nor a port name (IANA_SVC_NAME)"))
            }
        }
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| format!("{s:?} is not a CIDR"))
}

fn compile_peer(peer: &PolicyPeer) -> Result<Peer<'_>, String> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with podSelector or namespaceSelector".into());
        }
        let cidr = parse_net(&block.cidr).map_err(|e| format!("ipBlock.cidr: {e}"))?;
        let mut except = Vec::new();
        for e in &block.except {
            let net = parse_net(e).map_err(|e| format!("ipBlock.except: {e}"))?;
            if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
                return Err(format!("ipBlock.except {e} is not a strict subset of cidr {}", block.cidr));
            }
            except.push(net);
        }
        return Ok(Peer::Block { cidr, except });
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err("a peer needs podSelector, namespaceSelector or ipBlock".into());
    }
    for (field, selector) in [("podSelector", &peer.pod_selector), ("namespaceSelector", &peer.namespace_selector)] {
        if let Some(s) = selector {
            s.check().map_err(|e| format!("{field}: {e}"))?;
        }
    }
    Ok(Peer::Pods { pods: peer.pod_selector.as_ref(), namespaces: peer.namespace_selector.as_ref() })
}

fn compile_rule<'a>(peers: &'a [PolicyPeer], ports: &'a [PolicyPort], what: String) -> Result<Rule<'a>, String> {
    let peers = peers
        .iter()
        .enumerate()
        .map(|(i, p)| compile_peer(p).map_err(|e| format!("{what} peer {i}: {e}")))
        .collect::<Result<_, _>>()?;
    let ports = ports
        .iter()
        .enumerate()
        .map(|(i, p)| compile_port(p).map_err(|e| format!("{what} port {i}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Rule { peers, ports, what })
}

fn compile_policy(policy: &SlicePolicy) -> Result<Policy<'_>, CompileError> {
    let fail = |reason: String| CompileError { namespace: policy.namespace.clone(), name: policy.name.clone(), reason };
    let spec = &policy.spec;
    spec.pod_selector.check().map_err(|e| fail(format!("podSelector: {e}")))?;
    let (mut ingress, mut egress) = (false, false);
    for t in spec.effective_policy_types() {
        match t.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => return Err(fail(format!("policyTypes: {other:?} is neither Ingress nor Egress"))),
        }
    }
    let id = format!("{}/{}", policy.namespace, policy.name);
    // Rules are checked whether or not their direction is in force: a broken rule is a broken
    // policy either way.
    let ingress_rules = spec
        .ingress
        .iter()
        .enumerate()
        .map(|(i, r)| compile_rule(&r.from, &r.ports, format!("{id} ingress[{i}]")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let egress_rules = spec
        .egress
        .iter()
        .enumerate()
        .map(|(i, r)| compile_rule(&r.to, &r.ports, format!("{id} egress[{i}]")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    Ok(Policy {
        namespace: &policy.namespace,
        selector: &spec.pod_selector,
        ingress: ingress.then_some(ingress_rules),
        egress: egress.then_some(egress_rules),
    })
}

/// Whether `policy` compiles (its selectors, policy types, peers and ports), without any pod:
/// the check [`compile`] makes of each policy, for the worker to report a policy the node
/// agents will refuse before they do.
///
/// # Errors
/// Why the policy cannot be compiled.
pub fn check(policy: &SlicePolicy) -> Result<(), CompileError> {
    compile_policy(policy).map(|_| ())
}

/// Whether `address` is in `cidr` and in none of `except`.
fn in_block(cidr: &IpNet, except: &[IpNet], address: IpAddr) -> bool {
    cidr.contains(&address) && !except.iter().any(|e| e.contains(&address))
}

/// The pods of the directory a selector peer of a policy in `namespace` matches.
fn selected<'a>(
    pods: &[Pod<'a>],
    namespace: &str,
    by_pod: Option<&LabelSelector>,
    by_namespace: Option<&LabelSelector>,
) -> Vec<Pod<'a>> {
    pods.iter()
        .filter(|p| match by_namespace {
            None => p.group.namespace == namespace,
            Some(s) => s.matches(&p.group.namespace_labels),
        })
        .filter(|p| by_pod.is_none_or(|s| s.matches(&p.group.labels)))
        .copied()
        .collect()
}

/// Sorted, merged (overlapping or adjacent) port intervals as nft lists them: a number, a
/// range, or an anonymous set of those.
fn ports_value(mut intervals: Vec<(u16, u16)>) -> Value {
    intervals.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for (a, b) in intervals {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let element = |(a, b): (u16, u16)| if a == b { json!(a) } else { json!({"range": [a, b]}) };
    if let [one] = merged.as_slice() {
        element(*one)
    } else {
        json!({"set": merged.into_iter().map(element).collect::<Vec<_>>()})
    }
}

fn matches(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": left, "right": right}})
}

/// The port matches of `ports` (numeric ones, and named ones resolved on `pod` when given),
/// one alternative per protocol. Empty `ports`: one alternative without a match (every
/// protocol). Ports that resolve to nothing: no alternative (the rule allows nothing).
fn port_alternatives(ports: &[PortSpec], pod: Option<Pod<'_>>) -> Vec<Vec<Value>> {
    if ports.is_empty() {
        return vec![Vec::new()];
    }
    // Per protocol: None = every port, Some(intervals).
    let mut by_proto: BTreeMap<Proto, Option<Vec<(u16, u16)>>> = BTreeMap::new();
    for spec in ports {
        let (proto, interval) = match spec {
            PortSpec::All(proto) => (*proto, None),
            PortSpec::Range(proto, a, b) => (*proto, Some((*a, *b))),
            PortSpec::Named(proto, name) => match pod.and_then(|p| p.named_port(*proto, name)) {
                Some(n) => (*proto, Some((n, n))),
                None => continue,
            },
        };
        let entry = by_proto.entry(proto).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), interval) {
            (Some(list), Some(i)) => list.push(i),
            (_, None) => *entry = None,
            (None, Some(_)) => {}
        }
    }
    by_proto
        .into_iter()
        .map(|(proto, intervals)| match intervals {
            None => vec![matches(json!({"meta": {"key": "l4proto"}}), "==", json!(proto.nft()))],
            Some(list) => {
                vec![matches(json!({"payload": {"protocol": proto.nft(), "field": "dport"}}), "==", ports_value(list))]
            }
        })
        .collect()
}

/// The table objects under construction: named sets (deduplicated by content) and per-pod
/// chains (deduplicated by rules).
struct Builder {
    /// Appended to the kinds of names (`peers`, `ingress`, …): empty for the slice's primary
    /// family, `6` or `4` for the secondary one, so both families' objects share the table.
    tag: &'static str,
    /// `ip` or `ip6`.
    family: &'static str,
    /// `ipv4_addr` or `ipv6_addr`.
    addr_type: &'static str,
    sets: Vec<Value>,
    set_names: HashMap<String, String>,
    set_counts: HashMap<&'static str, usize>,
    chains: Vec<(String, Vec<Value>)>,
    chain_names: HashMap<String, String>,
}

/// One rule of a per-pod chain before the chain is named: expressions and comment.
type PendingRule = (Vec<Value>, String);

impl Builder {
    fn new(subnet: IpNet, tag: &'static str) -> Self {
        let (family, addr_type) = if subnet.addr().is_ipv4() { ("ip", "ipv4_addr") } else { ("ip6", "ipv6_addr") };
        Self {
            tag,
            family,
            addr_type,
            sets: Vec::new(),
            set_names: HashMap::new(),
            set_counts: HashMap::new(),
            chains: Vec::new(),
            chain_names: HashMap::new(),
        }
    }

    fn addr(&self, field: &str) -> Value {
        json!({"payload": {"protocol": self.family, "field": field}})
    }

    /// A named set `<kind>-N` with `elem`, the same one for the same content.
    fn set(&mut self, kind: &'static str, set_type: Value, interval: bool, elem: Vec<Value>) -> String {
        let key = format!("{kind}|{set_type}|{}", Value::Array(elem.clone()));
        if let Some(name) = self.set_names.get(&key) {
            return name.clone();
        }
        let n = self.set_counts.entry(kind).or_insert(0);
        let name = format!("{kind}{}-{n}", self.tag);
        *n += 1;
        let mut set = json!({"family": TABLE.family, "table": TABLE.name, "name": name, "type": set_type});
        if interval {
            set["flags"] = json!(["interval"]);
        }
        set["elem"] = Value::Array(elem);
        self.sets.push(json!({ "set": set }));
        self.set_names.insert(key, name.clone());
        name
    }

    fn address_set(&mut self, pods: &[Pod<'_>]) -> String {
        let elem = pods.iter().map(|p| json!(p.address.to_string())).collect();
        self.set("peers", json!(self.addr_type), false, elem)
    }

    /// The peer matches of a rule on `field` (`saddr` for ingress, `daddr` for egress), one
    /// alternative per peer that can match; every peer: one alternative without a match.
    fn peer_alternatives(
        &mut self,
        rule: &Rule<'_>,
        namespace: &str,
        pods: &[Pod<'_>],
        field: &str,
    ) -> Vec<Vec<Value>> {
        if rule.peers.is_empty() {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for peer in &rule.peers {
            match peer {
                Peer::Pods { pods: by_pod, namespaces } => {
                    let matched = selected(pods, namespace, *by_pod, *namespaces);
                    if !matched.is_empty() {
                        let set = self.address_set(&matched);
                        out.push(vec![matches(self.addr(field), "==", json!(format!("@{set}")))]);
                    }
                }
                Peer::Block { cidr, except } => {
                    // A block of the other family matches nothing on this slice.
                    if cidr.addr().is_ipv4() != (self.family == "ip") {
                        continue;
                    }
                    let mut exprs = Vec::new();
                    if cidr.prefix_len() > 0 {
                        exprs.push(matches(self.addr(field), "==", prefix_value(cidr)));
                    }
                    let except = minimal(except);
                    if !except.is_empty() {
                        let elem = except.iter().map(prefix_value).collect();
                        let set = self.set("except", json!(self.addr_type), true, elem);
                        exprs.push(matches(self.addr(field), "!=", json!(format!("@{set}"))));
                    }
                    out.push(exprs);
                }
            }
        }
        out
    }

    /// The egress rules for named ports of `rule`: (address . protocol . port) of every
    /// destination pod the rule's peers cover that has the named port.
    fn named_port_rules(&mut self, rule: &Rule<'_>, namespace: &str, pods: &[Pod<'_>]) -> Vec<Vec<Value>> {
        let named: Vec<(Proto, &str)> = rule
            .ports
            .iter()
            .filter_map(|p| match p {
                PortSpec::Named(proto, name) => Some((*proto, name.as_str())),
                _ => None,
            })
            .collect();
        if named.is_empty() {
            return Vec::new();
        }
        let covered: Vec<Vec<Pod<'_>>> = if rule.peers.is_empty() {
            vec![pods.to_vec()]
        } else {
            rule.peers
                .iter()
                .map(|peer| match peer {
                    Peer::Pods { pods: by_pod, namespaces } => selected(pods, namespace, *by_pod, *namespaces),
                    Peer::Block { cidr, except } => {
                        pods.iter().filter(|p| in_block(cidr, except, p.address)).copied().collect()
                    }
                })
                .collect()
        };
        let mut out = Vec::new();
        for peer_pods in covered {
            let mut elem: Vec<(IpAddr, Proto, u16)> = Vec::new();
            for pod in &peer_pods {
                for (proto, name) in &named {
                    if let Some(port) = pod.named_port(*proto, name) {
                        elem.push((pod.address, *proto, port));
                    }
                }
            }
            if elem.is_empty() {
                continue;
            }
            elem.sort_unstable();
            elem.dedup();
            let elem = elem.into_iter().map(|(a, p, n)| json!({"concat": [a.to_string(), p.nft(), n]})).collect();
            let set = self.set("ports", json!([self.addr_type, "inet_proto", "inet_service"]), false, elem);
            let key = json!({"concat": [self.addr("daddr"), {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]});
            out.push(vec![matches(key, "==", json!(format!("@{set}")))]);
        }
        out
    }

    /// The chain `<kind>-N` with `rules` and a final drop, the same one for the same rules.
    fn chain(&mut self, kind: &str, rules: Vec<PendingRule>) -> String {
        let key = format!("{kind}|{}", serde_json::to_string(&rules).expect("JSON serializes"));
        if let Some(name) = self.chain_names.get(&key) {
            return name.clone();
        }
        let kind = format!("{kind}{}", self.tag);
        let name = format!("{kind}-{}", self.chains.iter().filter(|(n, _)| n.starts_with(&format!("{kind}-"))).count());
        let mut objects: Vec<Value> =
            rules.into_iter().map(|(expr, comment)| rule(&name, expr, Some(&comment))).collect();
        objects.push(rule(&name, vec![json!({"drop": null})], None));
        self.chains.push((name.clone(), objects));
        self.chain_names.insert(key, name.clone());
        name
    }
}

/// A prefix as nft lists it: the bare address for a host prefix.
fn prefix_value(net: &IpNet) -> Value {
    if net.prefix_len() == net.max_prefix_len() {
        json!(net.addr().to_string())
    } else {
        json!({"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}})
    }
}

/// `nets` without those inside another (an interval set refuses overlaps), sorted.
fn minimal(nets: &[IpNet]) -> Vec<IpNet> {
    let mut sorted: Vec<IpNet> = nets.to_vec();
    sorted.sort_by_key(|n| (n.network(), n.prefix_len()));
    sorted.dedup();
    let mut out: Vec<IpNet> = Vec::new();
    for n in sorted {
        if !out.iter().any(|o| o.contains(&n)) {
            out.push(n);
        }
    }
    out
}

/// What the compiled policies amount to on this node, for logs and `slicectl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyCount {
    pub policies: usize,
    /// Pods of this node isolated for ingress, for egress.
    pub ingress_isolated: usize,
    pub egress_isolated: usize,
}

/// The policy chains, sets and maps of `slice` on this node (any order; the table puts them in
/// listing order), and what they amount to; empty when the slice has no policy.
///
/// # Errors
/// The first policy (in namespace/name order) that cannot be compiled.
pub fn compile(slice: &SliceOnNode) -> Result<(Vec<Value>, PolicyCount), CompileError> {
    if slice.policies.is_empty() {
        return Ok((Vec::new(), PolicyCount::default()));
    }
    let mut sorted: Vec<&SlicePolicy> = slice.policies.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let policies = sorted.into_iter().map(compile_policy).collect::<Result<Vec<_>, _>>()?;

    // Each family of the slice on its own: a dual-stack slice's pods are isolated in both (the
    // pod directory lists each pod's address of each family).
    let families: Vec<Family> = slice
        .families()
        .enumerate()
        .map(|(i, (subnet, node_prefix))| {
            let tag = match (i, subnet.addr().is_ipv4()) {
                (0, _) => "",
                (_, true) => "4",
                (_, false) => "6",
            };
            compile_family(&policies, slice, subnet, node_prefix, tag)
        })
        .collect();
    let count = PolicyCount {
        policies: policies.len(),
        // Pods, counted once: by their primary family's address.
        ingress_isolated: families.first().map_or(0, |f| f.ingress_isolated),
        egress_isolated: families.first().map_or(0, |f| f.egress_isolated),
    };
    let mut objects: Vec<Value> = families.iter().flat_map(|f| f.sets.iter().chain(&f.maps).cloned()).collect();
    objects.push(base_chain(CHAIN_FORWARD, "filter", "forward", PRIORITY_FILTER));
    let ct = |states: Value| matches(json!({"ct": {"key": "state"}}), "in", states);
    objects.push(rule(CHAIN_FORWARD, vec![ct(json!(["established", "related"])), json!({"accept": null})], None));
    objects.push(rule(CHAIN_FORWARD, vec![ct(json!("invalid")), json!({"drop": null})], None));
    for f in &families {
        objects.extend(f.vmaps.iter().cloned());
    }
    for f in families {
        objects.extend(f.chains);
    }
    Ok((objects, count))
}

/// One family's part of the policy objects: its named sets and verdict maps, its rules in the
/// base chain, its per-pod chains, and how many pods of this node it isolates each way.
struct Family {
    sets: Vec<Value>,
    maps: Vec<Value>,
    vmaps: Vec<Value>,
    chains: Vec<Value>,
    ingress_isolated: usize,
    egress_isolated: usize,
}

/// The objects of the family of `subnet` (this node's prefix of it: `node_prefix`), their
/// names tagged with `tag`.
fn compile_family(
    policies: &[Policy<'_>],
    slice: &SliceOnNode,
    subnet: IpNet,
    node_prefix: IpNet,
    tag: &'static str,
) -> Family {
    let mut pods: Vec<Pod<'_>> = slice
        .pods
        .iter()
        .flat_map(|group| group.addresses.iter().map(move |&address| Pod { address, group }))
        .filter(|p| subnet.contains(&p.address))
        .collect();
    pods.sort_by_key(|p| p.address);
    let local: Vec<Pod<'_>> = pods.iter().filter(|p| node_prefix.contains(&p.address)).copied().collect();

    let mut b = Builder::new(subnet, tag);
    let mut ingress_map = Vec::new();
    let mut egress_map = Vec::new();
    for pod in &local {
        let selecting = |p: &&Policy<'_>| p.namespace == pod.group.namespace && p.selector.matches(&pod.group.labels);
        // Ingress: this pod is the destination; named ports resolve on it.
        let ingress: Vec<&Policy<'_>> = policies.iter().filter(|p| p.ingress.is_some()).filter(selecting).collect();
        if !ingress.is_empty() {
            let mut rules = Vec::new();
            for policy in ingress {
                for r in policy.ingress.iter().flatten() {
                    let ports = port_alternatives(&r.ports, Some(*pod));
                    for peer in b.peer_alternatives(r, policy.namespace, &pods, "saddr") {
                        for port in &ports {
                            let mut expr = peer.clone();
                            expr.extend(port.iter().cloned());
                            expr.push(json!({"accept": null}));
                            rules.push((expr, r.what.clone()));
                        }
                    }
                }
            }
            let chain = b.chain("ingress", rules);
            ingress_map.push(json!([pod.address.to_string(), {"jump": {"target": chain}}]));
        }
        // Egress: this pod is the source; named ports resolve on each destination pod.
        let egress: Vec<&Policy<'_>> = policies.iter().filter(|p| p.egress.is_some()).filter(selecting).collect();
        if !egress.is_empty() {
            let mut rules = Vec::new();
            for policy in egress {
                for r in policy.egress.iter().flatten() {
                    let numeric: Vec<PortSpec> =
                        r.ports.iter().filter(|p| !matches!(p, PortSpec::Named(..))).cloned().collect();
                    let ports = if r.ports.is_empty() || !numeric.is_empty() {
                        port_alternatives(&numeric, None)
                    } else {
                        Vec::new()
                    };
                    let mut alternatives = Vec::new();
                    for peer in b.peer_alternatives(r, policy.namespace, &pods, "daddr") {
                        for port in &ports {
                            let mut expr = peer.clone();
                            expr.extend(port.iter().cloned());
                            alternatives.push(expr);
                        }
                    }
                    alternatives.extend(b.named_port_rules(r, policy.namespace, &pods));
                    for mut expr in alternatives {
                        expr.push(json!({"return": null}));
                        rules.push((expr, r.what.clone()));
                    }
                }
            }
            let chain = b.chain("egress", rules);
            egress_map.push(json!([pod.address.to_string(), {"jump": {"target": chain}}]));
        }
    }

    let (ingress_isolated, egress_isolated) = (ingress_map.len(), egress_map.len());
    let mut maps = Vec::new();
    let mut vmaps = Vec::new();
    for (field, base, elem) in [("saddr", MAP_EGRESS, egress_map), ("daddr", MAP_INGRESS, ingress_map)] {
        let name = format!("{base}{tag}");
        let mut map =
            json!({"family": TABLE.family, "table": TABLE.name, "name": name, "type": b.addr_type, "map": "verdict"});
        if !elem.is_empty() {
            map["elem"] = Value::Array(elem);
        }
        maps.push(json!({ "map": map }));
        let key = json!({"payload": {"protocol": b.family, "field": field}});
        vmaps.push(rule(CHAIN_FORWARD, vec![json!({"vmap": {"key": key, "data": format!("@{name}")}})], None));
    }
    let mut chains = Vec::new();
    for (name, rules) in b.chains {
        chains.push(json!({"chain": {"family": TABLE.family, "table": TABLE.name, "name": name}}));
        chains.extend(rules);
    }
    Family { sets: b.sets, maps, vmaps, chains, ingress_isolated, egress_isolated }
}

#[cfg(test)]
mod tests;
