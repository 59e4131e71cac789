//! Small typed builders shared by the manifests: metadata, namespaces, ServiceAccounts,
//! Secrets and the RBAC objects of one component.

use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use slice_api::rbac::{Access, Scope};

use crate::manifest::Manifest;
use crate::rbac::policy_rules;

/// Label keys every object carries.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
const VERSION_LABEL: &str = "app.kubernetes.io/version";

/// The labels of an object of component `name`.
#[must_use]
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), name.to_owned()),
        (PART_OF_LABEL.to_owned(), "slicenet".to_owned()),
        (VERSION_LABEL.to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
    ])
}

/// The selector labels of component `name` (stable across versions, unlike [`labels`]).
#[must_use]
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NAME_LABEL.to_owned(), name.to_owned())])
}

/// Metadata with a name, an optional namespace and the labels of component `component`.
#[must_use]
pub fn meta(name: &str, namespace: Option<&str>, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(component)),
        ..ObjectMeta::default()
    }
}

/// A namespace of slicenet.
#[must_use]
pub fn namespace(name: &str) -> Namespace {
    Namespace { metadata: meta(name, None, "slicenet"), ..Namespace::default() }
}

/// A namespace of slicenet whose pods must meet the Pod Security Standards' `level`.
fn namespace_at_level(name: &str, level: &str) -> Namespace {
    let mut ns = namespace(name);
    let labels = ns.metadata.labels.get_or_insert_default();
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(format!("pod-security.kubernetes.io/{mode}"), level.to_owned());
    }
    ns
}

/// `slicenet-system`: the hub, the worker and the webhooks, every one of them unprivileged (not
/// root, no capability, read-only root, RuntimeDefault seccomp), so the namespace enforces the
/// `restricted` Pod Security level in every cluster, hub or member.
#[must_use]
pub fn system_namespace() -> Namespace {
    namespace_at_level(slice_api::names::SYSTEM_NAMESPACE, "restricted")
}

/// `slicenet-peers` on the hub: the slices' `SlicePeers` pages and the Role per member cluster
/// that lets its worker read its slices' pages (both written by the hub controller). No pod
/// runs there.
#[must_use]
pub fn peers_namespace() -> Namespace {
    namespace_at_level(slice_api::names::PEERS_NAMESPACE, "restricted")
}

/// `slicenet-node`: the node agent alone (host network, host paths, privileged: see
/// `workloads::NODE_AGENT_COMMENT`), so that no other slicenet pod runs where `privileged` is
/// allowed.
#[must_use]
pub fn node_namespace() -> Namespace {
    namespace_at_level(slice_api::names::NODE_NAMESPACE, "privileged")
}

/// `slicenet-gateway`: the slice gateways, which need `NET_ADMIN`, the host's `/dev/net/tun`
/// and IPv4 forwarding (not allowed below the `privileged` Pod Security level). Only the worker
/// creates pods here, and none of slicenet's other components run here.
#[must_use]
pub fn gateway_namespace() -> Namespace {
    namespace_at_level(slice_api::names::GATEWAY_NAMESPACE, "privileged")
}

/// A ServiceAccount.
#[must_use]
pub fn service_account(name: &str, namespace: &str) -> ServiceAccount {
    ServiceAccount { metadata: meta(name, Some(namespace), name), ..ServiceAccount::default() }
}

/// A Secret of `type_` with `data`.
#[must_use]
pub fn secret<const N: usize>(name: &str, namespace: &str, type_: &str, data: [(&str, String); N]) -> Secret {
    Secret {
        metadata: meta(name, Some(namespace), name),
        type_: Some(type_.to_owned()),
        data: Some(data.into_iter().map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes()))).collect()),
        ..Secret::default()
    }
}

/// A component: its ServiceAccount `name` in `namespace`, and what it does on the API.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub access: &'static [Access],
}

/// The component's ServiceAccount, then its roles and bindings: for [`Scope::Cluster`] a
/// ClusterRole and ClusterRoleBinding named `cluster_role`, for [`Scope::OwnNamespace`] a Role
/// and RoleBinding named after the component in its namespace, for each [`Scope::Namespace`]
/// the same in that namespace. Nothing for a scope the component's list has no entry in.
///
/// # Errors
/// When an object cannot be serialised.
pub fn component_rbac(c: &Component<'_>, cluster_role: &str, resource_names: Option<&[String]>) -> Result<Manifest> {
    let mut m = Manifest::new();
    m.push(&service_account(c.name, c.namespace))?;
    let subject = Subject {
        kind: "ServiceAccount".to_owned(),
        name: c.name.to_owned(),
        namespace: Some(c.namespace.to_owned()),
        api_group: None,
    };
    let rules = policy_rules(c.access, Scope::Cluster, resource_names);
    if !rules.is_empty() {
        m.push(&ClusterRole {
            metadata: meta(cluster_role, None, c.name),
            rules: Some(rules),
            aggregation_rule: None,
        })?;
        m.push(&ClusterRoleBinding {
            metadata: meta(cluster_role, None, c.name),
            role_ref: role_ref("ClusterRole", cluster_role),
            subjects: Some(vec![subject.clone()]),
        })?;
    }
    let mut namespaces: Vec<(Scope, &str)> = vec![(Scope::OwnNamespace, c.namespace)];
    let mut others: Vec<&'static str> = c
        .access
        .iter()
        .filter_map(|a| match a.scope {
            Scope::Namespace(ns) => Some(ns),
            _ => None,
        })
        .collect();
    others.sort_unstable();
    others.dedup();
    namespaces.extend(others.into_iter().map(|ns| (Scope::Namespace(ns), ns)));
    for (scope, namespace) in namespaces {
        let rules = policy_rules(c.access, scope, None);
        if rules.is_empty() {
            continue;
        }
        m.push(&Role { metadata: meta(c.name, Some(namespace), c.name), rules: Some(rules) })?;
        m.push(&RoleBinding {
            metadata: meta(c.name, Some(namespace), c.name),
            role_ref: role_ref("Role", c.name),
            subjects: Some(vec![subject.clone()]),
        })?;
    }
    Ok(m)
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef { api_group: Some("rbac.authorization.k8s.io".to_owned()), kind: kind.to_owned(), name: name.to_owned() }
}
