//! MultiNetworkPolicy on the slice network: the policy types as upstream defines them
//! (`k8s.cni.cncf.io/v1beta1`, with `endPort` as `v1beta2` adds it), the
//! `k8s.v1.cni.cncf.io/policy-for` annotation that ties a policy to networks, and the pod
//! directory the node agent matches selectors against (every pod of the slice, in every cluster,
//! with its slice address, namespace, labels, its namespace's labels and its named ports).
//!
//! The spec types are kept as written by users (protocols, operators and CIDRs as strings, ports
//! as numbers or names, unchecked): a policy that cannot be compiled must reach the node agent so
//! that the agent names it and keeps the previous rules, instead of failing the whole node
//! configuration. [`LabelSelector::check`] and [`LabelSelector::matches`] are the selector
//! semantics of Kubernetes (`metav1.LabelSelectorAsSelector`): `matchLabels` and every
//! `matchExpressions` entry ANDed; `NotIn` and `DoesNotExist` match a pod without the key; an
//! empty selector matches everything.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// API group of MultiNetworkPolicy.
pub const API_GROUP: &str = "k8s.cni.cncf.io";
/// The version whose spec these types follow (plus `endPort`, from `v1beta2`).
pub const API_VERSION: &str = "k8s.cni.cncf.io/v1beta1";
/// Kind of the object.
pub const KIND: &str = "MultiNetworkPolicy";
/// The annotation naming the networks (NetworkAttachmentDefinitions) a policy is for: a comma
/// separated list of `<name>` (in the policy's namespace) or `<namespace>/<name>`. A policy
/// without it applies to no slice.
pub const POLICY_FOR_ANNOTATION: &str = "k8s.v1.cni.cncf.io/policy-for";

/// Whether a policy in `namespace` whose `policy-for` annotation is `value` is for `slice` (its
/// NAD, [`crate::multus::nad_name`], in the policy's namespace).
#[must_use]
pub fn is_for_slice(value: &str, namespace: &str, slice: &str) -> bool {
    let nad = crate::multus::nad_name(slice);
    value.split(',').map(str::trim).any(|entry| match entry.split_once('/') {
        Some((ns, name)) => ns == namespace && name == nad,
        None => entry == nad,
    })
}

/// `spec` of a MultiNetworkPolicy (the same as NetworkPolicy's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MultiNetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; empty selects all of them.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress`, `Egress`. Unset: `Ingress`, plus `Egress` when `egress` has a rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

impl MultiNetworkPolicySpec {
    /// The policy types in force, with upstream's default when none is given (the API server's
    /// defaulting: `Ingress` always, `Egress` only when there are egress rules).
    #[must_use]
    pub fn effective_policy_types(&self) -> Vec<String> {
        if !self.policy_types.is_empty() {
            return self.policy_types.clone();
        }
        let mut types = vec!["Ingress".to_string()];
        if !self.egress.is_empty() {
            types.push("Egress".to_string());
        }
        types
    }
}

/// One ingress rule: traffic from any of `from` (all sources when empty) to any of `ports` (all
/// ports and protocols when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<PolicyPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// One egress rule: traffic to any of `to` (all destinations when empty) on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<PolicyPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A peer: pods by selectors (both given: both must match; `podSelector` alone: the policy's
/// namespace; `namespaceSelector` alone: every pod of the matching namespaces), or addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// Addresses in `cidr` but in none of `except` (each inside `cidr`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A port (or range `port..=endPort`) of a protocol (`TCP` when unset); no port: every port of
/// the protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// `port`: a number, or the name of a container port of the destination pod (IntOrString).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(i64),
    Name(String),
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Checks what the API server checks: a known operator, values for `In`/`NotIn` and none
    /// for `Exists`/`DoesNotExist`, no empty key.
    ///
    /// # Errors
    /// A message naming the entry at fault.
    pub fn check(&self) -> Result<(), String> {
        if let Some(key) = self.match_labels.keys().find(|k| k.is_empty()) {
            return Err(format!("matchLabels has an empty key ({key:?})"));
        }
        for (i, req) in self.match_expressions.iter().enumerate() {
            let at = format!("matchExpressions[{i}] (key {:?})", req.key);
            if req.key.is_empty() {
                return Err(format!("{at}: empty key"));
            }
            match req.operator.as_str() {
                "In" | "NotIn" if req.values.is_empty() => {
                    return Err(format!("{at}: operator {} needs at least one value", req.operator));
                }
                "Exists" | "DoesNotExist" if !req.values.is_empty() => {
                    return Err(format!("{at}: operator {} takes no values", req.operator));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => return Err(format!("{at}: operator {other:?} is none of In, NotIn, Exists, DoesNotExist")),
            }
        }
        Ok(())
    }

    /// Whether `labels` satisfy the selector (which must have passed [`LabelSelector::check`];
    /// an unknown operator matches nothing).
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator.as_str() {
                    "In" => value.is_some_and(|v| req.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !req.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// One MultiNetworkPolicy of a slice, as the node agent gets it (the worker keeps only the
/// policies whose `policy-for` names the slice: [`is_for_slice`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlicePolicy {
    pub namespace: String,
    pub name: String,
    pub spec: MultiNetworkPolicySpec,
}

/// Pods of the slice that share a namespace (in one cluster), labels and named ports: the pod
/// directory lists them once with all their slice addresses (a Deployment's replicas are one
/// group), which keeps it about one address per pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodGroup {
    /// The pods' namespace (the same name in every cluster is the same namespace).
    pub namespace: String,
    /// The labels of that namespace in the pods' cluster.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_labels: BTreeMap<String, String>,
    /// The pods' labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The pods' named container ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NamedPort>,
    /// The pods' slice addresses.
    pub addresses: Vec<IpAddr>,
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

/// The protocols a policy or a named port may name.
pub const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "SCTP"];

/// The most pod addresses a slice's pod directory holds, all clusters together: what every node
/// agent of the slice compiles selectors against (see docs/decisions.md for the sizes). Past it,
/// the hub leaves whole clusters' reports out (in cluster name order), which fails closed: a
/// selector then matches fewer peers.
pub const MAX_DIRECTORY_PODS: usize = 10_000;
/// The most pod addresses one cluster reports for one slice.
pub const MAX_PODS_PER_CLUSTER: usize = 4096;
/// The most bytes (JSON) one cluster's report may take: every member's WorkerSlice carries the
/// other clusters' reports, and an object must stay well under etcd's 1.5 MiB.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;

/// Checks one group of the pod directory as the node agent validates it (a group that fails
/// here would make every node's configuration invalid): a namespace that is a DNS name, at least
/// one address, label keys not empty, named ports with a name, a port and a protocol of
/// [`PROTOCOLS`], each (name, protocol) once.
///
/// # Errors
/// A sentence naming what is wrong.
pub fn check_group(group: &PodGroup) -> Result<(), String> {
    let dns = |s: &str| {
        let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|c| ok(c) || c == b'-' || c == b'.')
            && s.bytes().next().is_some_and(ok)
            && s.bytes().last().is_some_and(ok)
    };
    if !dns(&group.namespace) {
        return Err(format!("namespace {:?} is not a DNS name", group.namespace));
    }
    if group.addresses.is_empty() {
        return Err("no address".to_owned());
    }
    if group.labels.keys().chain(group.namespace_labels.keys()).any(String::is_empty) {
        return Err("a label with an empty key".to_owned());
    }
    let mut names = std::collections::BTreeSet::new();
    for port in &group.ports {
        if port.name.is_empty() || port.port == 0 || !PROTOCOLS.contains(&port.protocol.as_str()) {
            return Err(format!("named port {:?} {}/{} is not valid", port.name, port.port, port.protocol));
        }
        if !names.insert((&port.name, &port.protocol)) {
            return Err(format!("port {}/{} listed twice", port.name, port.protocol));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    fn selector(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn selectors_follow_kubernetes() {
        let pod = labels(&[("app", "web"), ("tier", "front")]);
        let bare = labels(&[]);
        assert!(selector(json!({})).matches(&bare));
        assert!(selector(json!({"matchLabels": {"app": "web"}})).matches(&pod));
        assert!(!selector(json!({"matchLabels": {"app": "web", "x": "y"}})).matches(&pod));
        let expr = |op: &str, values: serde_json::Value| {
            selector(json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]}))
        };
        assert!(expr("In", json!(["web", "db"])).matches(&pod));
        assert!(!expr("In", json!(["db"])).matches(&pod));
        assert!(!expr("In", json!(["web"])).matches(&bare));
        assert!(!expr("NotIn", json!(["web"])).matches(&pod));
        assert!(expr("NotIn", json!(["web"])).matches(&bare), "NotIn matches a pod without the key");
        assert!(expr("Exists", json!([])).matches(&pod) && !expr("Exists", json!([])).matches(&bare));
        assert!(!expr("DoesNotExist", json!([])).matches(&pod) && expr("DoesNotExist", json!([])).matches(&bare));
        // matchLabels and matchExpressions are ANDed.
        let both = selector(json!({"matchLabels": {"tier": "front"},
            "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}));
        assert!(!both.matches(&pod));
    }

    #[test]
    fn selector_checks_name_the_entry() {
        let expr = |op: &str, values: serde_json::Value| {
            selector(json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]})).check()
        };
        expr("In", json!(["a"])).unwrap();
        expr("Exists", json!([])).unwrap();
        assert!(expr("Equals", json!(["a"])).unwrap_err().contains("operator \"Equals\" is none of"));
        assert!(expr("In", json!([])).unwrap_err().contains("needs at least one value"));
        assert!(expr("DoesNotExist", json!(["a"])).unwrap_err().contains("takes no values"));
    }

    #[test]
    fn default_policy_types_are_upstreams() {
        let spec = |v: serde_json::Value| serde_json::from_value::<MultiNetworkPolicySpec>(v).unwrap();
        assert_eq!(spec(json!({})).effective_policy_types(), ["Ingress"]);
        assert_eq!(spec(json!({"egress": []})).effective_policy_types(), ["Ingress"]);
        assert_eq!(spec(json!({"egress": [{}]})).effective_policy_types(), ["Ingress", "Egress"]);
        assert_eq!(spec(json!({"policyTypes": ["Egress"]})).effective_policy_types(), ["Egress"]);
    }

    #[test]
    fn ports_are_numbers_or_names_and_the_annotation_names_the_slice_nad() {
        let port: PolicyPort = serde_json::from_value(json!({"protocol": "UDP", "port": 80, "endPort": 90})).unwrap();
        assert_eq!(port.port, Some(PortValue::Number(80)));
        let named: PolicyPort = serde_json::from_value(json!({"port": "http"})).unwrap();
        assert_eq!(named.port, Some(PortValue::Name("http".into())));
        assert!(is_for_slice("slice-blue", "shop", "blue"));
        assert!(is_for_slice("other, shop/slice-blue", "shop", "blue"));
        assert!(!is_for_slice("web/slice-blue", "shop", "blue"));
        assert!(!is_for_slice("slice-red", "shop", "blue"));
    }
}
