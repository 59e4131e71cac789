//! The Multus path, as data: the `NetworkAttachmentDefinition` (`k8s.cni.cncf.io/v1`) the worker
//! writes into each member namespace of a slice in a cluster that runs Multus, and the names the
//! webhook and the CNI plugin share with it.
//!
//! The NAD's `spec.config` is a `slice-cni` delegate configuration with the `slice` field, so
//! `slice-cni` runs in standalone mode and creates the interface Multus names (`CNI_IFNAME`).
//! Pure: no kube types, so the CNI plugin and the lab can use it without the `crd` feature.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::names;

/// API version of `NetworkAttachmentDefinition`.
pub const NAD_API_VERSION: &str = "k8s.cni.cncf.io/v1";
/// Kind of a `NetworkAttachmentDefinition`.
pub const NAD_KIND: &str = "NetworkAttachmentDefinition";
/// Pod annotation in which a pod asks Multus for secondary networks.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// Prefix of the NAD name of a slice: `slice-<slice>`.
pub const NAD_NAME_PREFIX: &str = "slice-";
/// The CNI plugin type the NAD's config names.
pub const PLUGIN_TYPE: &str = "slice-cni";
/// CNI version of the delegate config (Multus 4 and libcni 1.x speak it).
pub const DELEGATE_CNI_VERSION: &str = "1.0.0";

/// The NAD name of `slice` (the same in every member namespace).
#[must_use]
pub fn nad_name(slice: &str) -> String {
    format!("{NAD_NAME_PREFIX}{slice}")
}

/// The network name Multus records in `network-status` for the slice in `namespace`
/// (`<namespace>/<nad name>`); chained mode records the same name.
#[must_use]
pub fn network_name(namespace: &str, slice: &str) -> String {
    format!("{namespace}/{}", nad_name(slice))
}

/// The `slice-cni` delegate configuration for `slice`: what Multus passes on stdin. It names no
/// path: a NAD is written in a namespace users control, so `slice-cni` ignores path keys in it
/// and takes its paths from the node (`SLICENET_STATE_DIR` and the like in the runtime's
/// environment, else the defaults).
#[must_use]
pub fn delegate_config(slice: &str) -> Value {
    json!({
        "cniVersion": DELEGATE_CNI_VERSION,
        "name": nad_name(slice),
        "type": PLUGIN_TYPE,
        "slice": slice,
    })
}

/// The metadata of a NAD (only what the worker sets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NadMetadata {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The spec of a NAD: the CNI configuration as a JSON string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NadSpec {
    pub config: String,
}

/// A `NetworkAttachmentDefinition` as the worker applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAttachmentDefinition {
    pub api_version: String,
    pub kind: String,
    pub metadata: NadMetadata,
    pub spec: NadSpec,
}

impl NetworkAttachmentDefinition {
    /// The NAD of `slice` in member namespace `namespace`, labelled with the slice.
    #[must_use]
    pub fn for_slice(slice: &str, namespace: &str) -> Self {
        Self {
            api_version: NAD_API_VERSION.to_owned(),
            kind: NAD_KIND.to_owned(),
            metadata: NadMetadata {
                name: nad_name(slice),
                namespace: namespace.to_owned(),
                labels: BTreeMap::from([(names::SLICE_LABEL.to_owned(), slice.to_owned())]),
            },
            spec: NadSpec { config: delegate_config(slice).to_string() },
        }
    }

    /// The delegate configuration, parsed from `spec.config` as Multus does.
    ///
    /// # Errors
    /// When `spec.config` is not JSON.
    pub fn delegate_config(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.spec.config)
    }
}

/// The NADs of `slice` for every member namespace (one each, sorted, without repeats).
#[must_use]
pub fn nads_for_slice(slice: &str, namespaces: &[String]) -> Vec<NetworkAttachmentDefinition> {
    let set: std::collections::BTreeSet<&String> = namespaces.iter().collect();
    set.into_iter().map(|ns| NetworkAttachmentDefinition::for_slice(slice, ns)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nad_for_a_member_namespace() {
        let nad = NetworkAttachmentDefinition::for_slice("blue", "shop");
        let v = serde_json::to_value(&nad).unwrap();
        assert_eq!(v["apiVersion"], "k8s.cni.cncf.io/v1");
        assert_eq!(v["kind"], "NetworkAttachmentDefinition");
        assert_eq!(
            v["metadata"],
            json!({"name": "slice-blue", "namespace": "shop", "labels": {"slicenet.io/slice": "blue"}})
        );
        assert_eq!(
            nad.delegate_config().unwrap(),
            json!({"cniVersion": "1.0.0", "name": "slice-blue", "type": "slice-cni", "slice": "blue"})
        );
        // Round trip through JSON, as it comes back from the API server.
        let back: NetworkAttachmentDefinition = serde_json::from_value(v).unwrap();
        assert_eq!(back, nad);
        assert_eq!(network_name("shop", "blue"), "shop/slice-blue");
    }

    #[test]
    fn one_nad_per_namespace() {
        let nads = nads_for_slice("red", &["b".into(), "a".into(), "b".into()]);
        let where_: Vec<_> = nads.iter().map(|n| (n.metadata.namespace.as_str(), n.metadata.name.as_str())).collect();
        assert_eq!(where_, [("a", "slice-red"), ("b", "slice-red")]);
    }
}
