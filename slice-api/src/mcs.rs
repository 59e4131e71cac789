//! The Multi-Cluster Services API (`multicluster.x-k8s.io`, KEP-1645) as slicenet reads and
//! writes it: `ServiceExport` (a user marks a Service for export), `ServiceImport` (the worker
//! writes one per imported service) and the MCS `EndpointSlice` labels. These standard objects
//! are the single source of the slice DNS answers (`slice-dns`), so that CoreDNS's own
//! multicluster plugin could serve them as well.
//!
//! `v1alpha1` is the version served and written; the labels and field names are those of the
//! MCS API and of `discovery.k8s.io/v1` EndpointSlices.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::Condition;

/// The MCS API group.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// Label of an MCS EndpointSlice: the ServiceImport (same namespace) it belongs to.
pub const SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// Label of an MCS EndpointSlice: the cluster whose endpoints it holds.
pub const SOURCE_CLUSTER_LABEL: &str = "multicluster.kubernetes.io/source-cluster";
/// The EndpointSlice label naming its controller (so kube-proxy and the EndpointSlice
/// controller leave ours alone).
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "slicenet.io/worker";
/// The zone of the MCS DNS specification.
pub const CLUSTERSET_ZONE: &str = "clusterset.local";
/// The zone KubeSlice users know: the same services, plus per-cluster names.
pub const SLICE_ZONE: &str = "slice.local";
/// The version the `dns-version.clusterset.local` TXT record announces.
pub const DNS_SPEC_VERSION: &str = "1.0.0";

/// Marks the Service of the same namespace and name for export to the slice its namespace
/// belongs to. It has no spec (users write only its name), hence `no_spec`: a ServiceExport
/// without a `spec` key reads as it is.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    plural = "serviceexports",
    shortname = "svcex",
    namespaced,
    no_spec,
    status = "ServiceExportStatus",
    derive = "PartialEq",
    derive = "Default"
)]
pub struct ServiceExportSpec {}

/// `Valid`, `Ready` and `Conflict` conditions, as the MCS API defines them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Condition of a ServiceExport: the Service can be exported.
pub const VALID: &str = "Valid";
/// Condition of a ServiceExport: the export is in every member cluster's imports.
pub const EXPORT_READY: &str = "Ready";
/// Condition of a ServiceExport: its Service differs from the oldest export of the same name.
pub const CONFLICT: &str = "Conflict";

/// The reasons of those conditions, as the MCS API (`sigs.k8s.io/mcs-api`) names them, so that
/// tools written for any MCS implementation read ours.
pub mod reason {
    /// `Valid=True`.
    pub const VALID: &str = "Valid";
    /// `Valid=False`: no Service of the same namespace and name.
    pub const NO_SERVICE: &str = "NoService";
    /// `Valid=False`: the Service's type cannot be exported (`ExternalName`).
    pub const INVALID_SERVICE_TYPE: &str = "InvalidServiceType";
    /// `Valid=False` (slicenet's own): the namespace is a member of no slice in this cluster,
    /// so there is nowhere to export to.
    pub const NO_SLICE: &str = "NamespaceNotInSlice";
    /// `Ready=True`: the export is in the slice's imports.
    pub const EXPORTED: &str = "Exported";
    /// `Ready=False`: reported, not yet in the slice's imports.
    pub const PENDING: &str = "Pending";
    /// `Ready=False`: it cannot be exported (see `Valid`).
    pub const FAILED: &str = "Failed";
    /// `Conflict=True`: the exports' ports differ.
    pub const PORT_CONFLICT: &str = "PortConflict";
    /// `Conflict=True`: one cluster exports it headless, another with a cluster IP.
    pub const TYPE_CONFLICT: &str = "TypeConflict";
    /// `Conflict=True`: the exports' session affinity differs.
    pub const SESSION_AFFINITY_CONFLICT: &str = "SessionAffinityConflict";
    /// `Conflict=False`.
    pub const NO_CONFLICTS: &str = "NoConflicts";
}

/// How an imported service is reached.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, JsonSchema)]
pub enum ServiceImportType {
    /// One virtual address (the ClusterSetIP) for the endpoints of every cluster.
    #[default]
    ClusterSetIP,
    /// No virtual address: DNS answers the endpoints themselves.
    Headless,
}

/// A port of an imported service (the fields of a Service port that cross clusters).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    pub port: u16,
}

fn tcp() -> String {
    "TCP".to_owned()
}

/// A service imported into a namespace from the clusters that export it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    plural = "serviceimports",
    shortname = "svcim",
    namespaced,
    status = "ServiceImportStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ips"}"#,
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// The ClusterSetIP (none for a Headless import).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    #[serde(rename = "type")]
    pub type_: ServiceImportType,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `None` or `ClientIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
}

/// The clusters an import comes from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportStatus {
    #[serde(default)]
    pub clusters: Vec<ClusterStatus>,
}

/// One exporting cluster of an import.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct ClusterStatus {
    pub cluster: String,
}

/// The MCS CRDs slicenet installs where the cluster has none (`ServiceExport`, `ServiceImport`).
#[must_use]
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![ServiceExport::crd(), ServiceImport::crd()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_import_reads_and_writes_the_mcs_field_names() {
        let text = r#"{"apiVersion":"multicluster.x-k8s.io/v1alpha1","kind":"ServiceImport",
            "metadata":{"name":"db","namespace":"shop"},
            "spec":{"type":"Headless","ports":[{"name":"pg","port":5432}]},
            "status":{"clusters":[{"cluster":"east"}]}}"#;
        let import: ServiceImport = serde_json::from_str(text).expect("parses");
        assert_eq!(import.spec.type_, ServiceImportType::Headless);
        assert_eq!(import.spec.ports[0].protocol, "TCP");
        assert_eq!(import.status.as_ref().map(|s| s.clusters.len()), Some(1));
        let back = serde_json::to_value(&import).expect("serializes");
        assert_eq!(back["spec"]["type"], "Headless");
        assert!(back["spec"].get("ips").is_none());
    }

    #[test]
    fn a_service_export_is_a_name_without_a_spec() {
        let text = r#"{"apiVersion":"multicluster.x-k8s.io/v1alpha1","kind":"ServiceExport",
            "metadata":{"name":"db","namespace":"shop"}}"#;
        let export: ServiceExport = serde_json::from_str(text).expect("parses without a spec");
        assert_eq!(export.metadata.name.as_deref(), Some("db"));
        let back = serde_json::to_value(&export).expect("serializes");
        assert!(back.get("spec").is_none(), "{back}");
    }

    #[test]
    fn the_crds_are_namespaced_in_the_mcs_group() {
        for crd in crds() {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
        }
    }
}
