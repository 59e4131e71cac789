//! RBAC rules built from the controllers' declared access lists
//! ([`slice_api::access`]), and nothing else.
//!
//! Entries of one [`Scope`] become the rules of one role: [`Scope::Cluster`] a ClusterRole,
//! [`Scope::OwnNamespace`] a Role in the component's namespace. Entries on the same API group
//! with the same set of verbs share one rule, so the printed roles stay short.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::PolicyRule;
use slice_api::rbac::{Access, Scope};

/// The rules that grant exactly the entries of `list` in `scope`. An entry with
/// [`Access::names`] gets a rule limited to those objects. With `resource_names`, every other
/// rule is limited to those object names (used for the worker's own MemberCluster on the hub;
/// RBAC cannot limit `list`, `watch` or `create` by name, so such entries must not be given
/// names).
#[must_use]
pub fn policy_rules(list: &[Access], scope: Scope, resource_names: Option<&[String]>) -> Vec<PolicyRule> {
    // (group, resource[/subresource], names) → verbs
    type Names = &'static [&'static str];
    let mut verbs: BTreeMap<(&str, String, Names), BTreeSet<&str>> = BTreeMap::new();
    for a in list.iter().filter(|a| a.scope == scope) {
        verbs.entry((a.group, a.rbac_resource(), a.names)).or_default().insert(a.verb);
    }
    // (group, verbs, names) → resources
    let mut rules: BTreeMap<(&str, Vec<&str>, Names), Vec<String>> = BTreeMap::new();
    for ((group, resource, names), v) in verbs {
        rules.entry((group, v.into_iter().collect(), names)).or_default().push(resource);
    }
    rules
        .into_iter()
        .map(|((group, verbs, names), resources)| PolicyRule {
            api_groups: Some(vec![group.to_owned()]),
            resources: Some(resources),
            verbs: verbs.into_iter().map(str::to_owned).collect(),
            resource_names: if names.is_empty() {
                resource_names.map(<[String]>::to_vec)
            } else {
                Some(names.iter().map(|n| (*n).to_owned()).collect())
            },
            non_resource_urls: None,
        })
        .collect()
}

/// Every (group, resource[/subresource], verb, object name) the rules grant by name: the rules
/// with `resourceNames`.
#[must_use]
pub fn named_grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for (group, resource, verb) in grants(std::slice::from_ref(rule)) {
            for name in rule.resource_names.iter().flatten() {
                out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
            }
        }
    }
    out
}

/// The (group, resource, verb, object name) of the named entries of `list` in `scope`.
#[must_use]
pub fn declared_named(list: &[Access], scope: Scope) -> BTreeSet<(String, String, String, String)> {
    list.iter()
        .filter(|a| a.scope == scope)
        .flat_map(|a| {
            a.names.iter().map(|n| (a.group.to_owned(), a.rbac_resource(), a.verb.to_owned(), (*n).to_owned()))
        })
        .collect()
}

/// One grant of a rule: (API group, resource[/subresource], verb).
pub type Grant = (String, String, String);

/// Every (group, resource, verb) the rules grant. Wildcards are returned as they are (`*`), so
/// a comparison with an access list fails on them.
#[must_use]
pub fn grants(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// The (group, resource, verb) triples of the entries of `list` in `scope`.
#[must_use]
pub fn declared(list: &[Access], scope: Scope) -> BTreeSet<Grant> {
    list.iter()
        .filter(|a| a.scope == scope)
        .map(|a| (a.group.to_owned(), a.rbac_resource(), a.verb.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use slice_api::access::{HUB, NODE_AGENT, WEBHOOK_HUB, WORKER_CLUSTER, WORKER_HUB};
    use slice_api::rbac::Scope::{Cluster, OwnNamespace};

    #[test]
    fn rules_grant_exactly_each_list() {
        for list in [HUB, WORKER_HUB, WORKER_CLUSTER, NODE_AGENT, WEBHOOK_HUB] {
            for scope in [Cluster, OwnNamespace, slice_api::rbac::Scope::Namespace(slice_api::names::GATEWAY_NAMESPACE)]
            {
                let rules = policy_rules(list, scope, None);
                assert_eq!(grants(&rules), declared(list, scope), "{scope:?} rules of {list:?}");
                assert_eq!(named_grants(&rules), declared_named(list, scope), "{scope:?} rules of {list:?}");
                assert!(rules.iter().all(|r| !r.verbs.is_empty()));
                // A named rule grants only named entries' verbs: no unnamed entry shares it.
                for r in rules.iter().filter(|r| r.resource_names.is_some()) {
                    for verb in &r.verbs {
                        for resource in r.resources.iter().flatten() {
                            let unnamed = list.iter().any(|a| {
                                a.scope == scope
                                    && a.names.is_empty()
                                    && a.verb == verb
                                    && a.rbac_resource() == *resource
                            });
                            assert!(!unnamed, "{verb} {resource} is granted on every object elsewhere: {r:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn same_verbs_share_a_rule_and_subresources_stay_apart() {
        let list = [
            Access::new("get", "g", "a", Cluster),
            Access::new("get", "g", "b", Cluster),
            Access::new("patch", "g", "a", Cluster).sub("status"),
            Access::new("get", "", "c", OwnNamespace),
        ];
        let rules = policy_rules(&list, Cluster, Some(&["x".to_owned()]));
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(rules[0].resources.as_deref(), Some(&["a".to_owned(), "b".to_owned()][..]));
        assert_eq!(rules[1].resources.as_deref(), Some(&["a/status".to_owned()][..]));
        assert_eq!(rules[1].verbs, ["patch"]);
        assert!(rules.iter().all(|r| r.resource_names.as_deref() == Some(&["x".to_owned()][..])));
        assert_eq!(policy_rules(&list, OwnNamespace, None)[0].api_groups.as_deref(), Some(&[String::new()][..]));
    }

    #[test]
    fn named_entries_get_rules_of_their_own() {
        let list = [
            Access::new("get", "", "secrets", OwnNamespace).named(&["ca", "tls"]),
            Access::new("update", "", "secrets", OwnNamespace).named(&["tls"]),
            Access::new("list", "", "secrets", OwnNamespace),
        ];
        let rules = policy_rules(&list, OwnNamespace, None);
        assert_eq!(rules.len(), 3, "{rules:?}");
        let of = |verb: &str| rules.iter().find(|r| r.verbs == [verb]).unwrap().resource_names.clone();
        assert_eq!(of("get"), Some(vec!["ca".to_owned(), "tls".to_owned()]));
        assert_eq!(of("update"), Some(vec!["tls".to_owned()]));
        assert_eq!(of("list"), None, "list cannot be limited by name");
        assert_eq!(named_grants(&rules), declared_named(&list, OwnNamespace));
    }
}
