//! The Multi-Cluster Services API (`multicluster.x-k8s.io`, KEP-1645) as slicenet reads and
//! writes it: `ServiceExport` (a user marks a Service for export), `ServiceImport` (the worker
//! writes one per imported service) and the MCS `EndpointSlice` labels. These standard objects
//! are the single source of the slice DNS answers (`slice-dns`), so that CoreDNS's own
//! multicluster plugin could serve them as well.
//!
//! Two versions of the API exist: `v1alpha1` and `v1beta1` (sigs.k8s.io/mcs-api
//! `pkg/apis/v1beta1`, 2025). Every `v1beta1` addition is optional and every `v1alpha1` object is
//! a valid `v1beta1` object, so the CRDs slicenet installs ([`crds`]) serve both versions with
//! the same schema (the `v1beta1` one) and `conversion: None`, `v1beta1` stored. The worker
//! reads and writes whichever version the cluster serves ([`McsVersion::served`]): CRDs installed
//! by someone else may serve only one of them. The top-level types are `v1alpha1`'s; [`v1beta1`]
//! has the newer ones. The labels and field names are those of the MCS API and of
//! `discovery.k8s.io/v1` EndpointSlices.

use kube::CustomResource;
use kube::core::{ApiResource, GroupVersionKind};
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

/// A version of the MCS API slicenet knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum McsVersion {
    /// What the worker assumes when the cluster's discovery names no version of the group (no
    /// MCS CRDs, or an API without discovery such as the lab's): the version slicenet read and
    /// wrote before `v1beta1`, so nothing changes there.
    #[default]
    V1alpha1,
    /// The storage version of the CRDs slicenet installs (as upstream marks it).
    V1beta1,
}

impl McsVersion {
    /// Newest first: the order in which the worker prefers them.
    pub const PREFERRED: [Self; 2] = [Self::V1beta1, Self::V1alpha1];

    /// `v1alpha1` or `v1beta1`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V1alpha1 => "v1alpha1",
            Self::V1beta1 => "v1beta1",
        }
    }

    /// `multicluster.x-k8s.io/<version>`.
    #[must_use]
    pub fn api_version(self) -> String {
        format!("{GROUP}/{}", self.as_str())
    }

    /// The version to read and write among those the cluster serves (the `versions` of the
    /// group's discovery document, `GET /apis/multicluster.x-k8s.io`): the newest slicenet
    /// knows; `None` when it knows none of them.
    #[must_use]
    pub fn served<'a>(served: impl IntoIterator<Item = &'a str> + Clone) -> Option<Self> {
        Self::PREFERRED.into_iter().find(|v| served.clone().into_iter().any(|s| s == v.as_str()))
    }

    /// The `serviceexports` resource in this version.
    #[must_use]
    pub fn service_exports(self) -> ApiResource {
        self.resource("ServiceExport", "serviceexports")
    }

    /// The `serviceimports` resource in this version.
    #[must_use]
    pub fn service_imports(self) -> ApiResource {
        self.resource("ServiceImport", "serviceimports")
    }

    fn resource(self, kind: &str, plural: &str) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, self.as_str(), kind), plural)
    }
}

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

/// The `v1beta1` types (sigs.k8s.io/mcs-api `pkg/apis/v1beta1`): the schema of both versions of
/// the CRDs slicenet installs ([`crds`]). `ServiceExport` gains an optional `spec`
/// (`exportedLabels`, `exportedAnnotations`: optional for implementations; slicenet accepts them
/// and exports neither), `ServiceImport` optional `ipFamilies`, `internalTrafficPolicy`,
/// `trafficDistribution`, `sessionAffinityConfig`, `status.conditions` and
/// `status.endpointSliceObjects`. Conditions and reasons are those of the top-level
/// [`reason`] module (upstream's names).
pub mod v1beta1 {
    use std::collections::BTreeMap;

    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    pub use super::{ClusterStatus, ServiceExportStatus, ServiceImportType, ServicePort};
    use crate::crd::Condition;

    /// Marks the Service of the same namespace and name for export. Its `spec` is optional
    /// (the CRD schema says so: see [`super::crds`]); reading one without a spec takes the
    /// version-neutral [`super::ServiceExport`].
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
    #[kube(
        group = "multicluster.x-k8s.io",
        version = "v1beta1",
        kind = "ServiceExport",
        plural = "serviceexports",
        shortname = "svcex",
        shortname = "svcexport",
        namespaced,
        status = "ServiceExportStatus",
        derive = "PartialEq",
        derive = "Default"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct ServiceExportSpec {
        /// Labels to export with the service (optional for implementations; not exported here).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub exported_labels: BTreeMap<String, String>,
        /// Annotations to export with the service (optional for implementations; not exported
        /// here).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        pub exported_annotations: BTreeMap<String, String>,
    }

    /// An IP family of an imported service.
    #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
    pub enum IpFamily {
        IPv4,
        IPv6,
    }

    /// Where nodes send the service's traffic they receive on its ClusterSetIP.
    #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
    pub enum InternalTrafficPolicy {
        Cluster,
        Local,
    }

    /// Whether the imported EndpointSlices of a ServiceImport exist.
    #[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
    pub enum EndpointSliceObjects {
        Present,
        Absent,
    }

    /// `ClientIP` session affinity's settings.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct SessionAffinityConfig {
        #[serde(default, rename = "clientIP", skip_serializing_if = "Option::is_none")]
        pub client_ip: Option<ClientIpConfig>,
    }

    /// How long a `ClientIP` affinity sticks.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct ClientIpConfig {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timeout_seconds: Option<i32>,
    }

    /// A service imported into a namespace from the clusters that export it.
    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
    #[kube(
        group = "multicluster.x-k8s.io",
        version = "v1beta1",
        kind = "ServiceImport",
        plural = "serviceimports",
        shortname = "svcim",
        shortname = "svcimport",
        namespaced,
        status = "ServiceImportStatus",
        printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
        printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ips"}"#,
        derive = "PartialEq",
        derive = "Default"
    )]
    #[serde(rename_all = "camelCase")]
    pub struct ServiceImportSpec {
        #[serde(default)]
        pub ports: Vec<ServicePort>,
        /// The ClusterSetIP addresses (none for a Headless import; one per family).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(length(max = 2))]
        pub ips: Vec<String>,
        #[serde(rename = "type")]
        pub type_: ServiceImportType,
        /// `None` or `ClientIP`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub session_affinity: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub session_affinity_config: Option<SessionAffinityConfig>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[schemars(length(max = 2))]
        pub ip_families: Vec<IpFamily>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub internal_traffic_policy: Option<InternalTrafficPolicy>,
        /// A hint such as `PreferClose`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub traffic_distribution: Option<String>,
    }

    /// The clusters an import comes from, and its conditions.
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct ServiceImportStatus {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub endpoint_slice_objects: Option<EndpointSliceObjects>,
        #[serde(default)]
        pub clusters: Vec<ClusterStatus>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub conditions: Vec<Condition>,
    }
}

type Crd = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// The MCS CRDs slicenet installs (`ServiceExport`, `ServiceImport`): both versions served with
/// the `v1beta1` schema, `spec` optional (as upstream: a `v1alpha1` ServiceExport has none),
/// `v1beta1` stored, `conversion: None`. The same schema in both versions means that what a
/// client writes in one reads whole in the other (nothing pruned), which is what makes
/// `conversion: None` (only `apiVersion` rewritten) safe; every `v1beta1` field is optional, so
/// every `v1alpha1` object stays valid.
#[must_use]
pub fn crds() -> Vec<Crd> {
    use kube::CustomResourceExt;
    vec![served_in_both_versions(v1beta1::ServiceExport::crd()), served_in_both_versions(v1beta1::ServiceImport::crd())]
}

/// `crd` (one `v1beta1` version) with `spec` optional, served as `v1alpha1` too.
fn served_in_both_versions(mut crd: Crd) -> Crd {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceConversion;
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut())
            && let Some(required) = schema.required.as_mut()
        {
            required.retain(|r| r != "spec");
            if required.is_empty() {
                schema.required = None;
            }
        }
    }
    let mut alpha = crd.spec.versions[0].clone();
    alpha.name = McsVersion::V1alpha1.as_str().to_owned();
    alpha.storage = false;
    crd.spec.versions[0].storage = true;
    crd.spec.versions.insert(0, alpha);
    crd.spec.conversion = Some(CustomResourceConversion { strategy: "None".to_owned(), webhook: None });
    crd
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

    #[test]
    fn the_crds_serve_both_versions_with_one_schema_v1beta1_stored_without_conversion() {
        for crd in crds() {
            let versions: Vec<(&str, bool, bool)> =
                crd.spec.versions.iter().map(|v| (v.name.as_str(), v.served, v.storage)).collect();
            assert_eq!(versions, [("v1alpha1", true, false), ("v1beta1", true, true)], "{}", crd.spec.names.kind);
            assert_eq!(crd.spec.versions[0].schema, crd.spec.versions[1].schema);
            assert_eq!(crd.spec.conversion.as_ref().map(|c| c.strategy.as_str()), Some("None"));
            let schema = crd.spec.versions[1].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).unwrap();
            assert!(!schema.required.iter().flatten().any(|r| r == "spec"), "spec is optional: {:?}", schema.required);
        }
    }

    #[test]
    fn the_v1beta1_fields_are_in_the_schemas() {
        let json = serde_json::to_value(crds()).unwrap();
        let spec = |i: usize| json[i]["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
        let export = spec(0);
        assert!(export["properties"]["exportedLabels"].is_object(), "{export}");
        assert!(export["properties"]["exportedAnnotations"].is_object(), "{export}");
        let import = spec(1);
        for field in ["ipFamilies", "internalTrafficPolicy", "trafficDistribution", "sessionAffinityConfig"] {
            assert!(import["properties"][field].is_object(), "{field}: {import}");
        }
        assert_eq!(import["properties"]["ips"]["maxItems"], 2);
        let status = &json[1]["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"]["status"];
        let values = status["properties"]["endpointSliceObjects"]["enum"].clone();
        assert!(
            values.as_array().is_some_and(|v| v.contains(&"Present".into()) && v.contains(&"Absent".into())),
            "{values}"
        );
        assert!(status["properties"]["conditions"].is_object());
    }

    #[test]
    fn a_v1beta1_export_with_a_spec_reads_as_the_version_neutral_export() {
        let text = r#"{"apiVersion":"multicluster.x-k8s.io/v1beta1","kind":"ServiceExport",
            "metadata":{"name":"db","namespace":"shop"},
            "spec":{"exportedLabels":{"tier":"db"},"exportedAnnotations":{"a":"b"}},
            "status":{"conditions":[{"type":"Valid","status":"True","reason":"Valid"}]}}"#;
        let export: ServiceExport = serde_json::from_str(text).expect("parses");
        assert_eq!(export.status.map(|s| s.conditions.len()), Some(1));
        let typed: v1beta1::ServiceExport = serde_json::from_str(text).expect("parses as v1beta1");
        assert_eq!(typed.spec.exported_labels.get("tier").map(String::as_str), Some("db"));
    }

    #[test]
    fn the_served_version_is_the_newest_known() {
        assert_eq!(McsVersion::served(["v1alpha1", "v1beta1"]), Some(McsVersion::V1beta1));
        assert_eq!(McsVersion::served(["v1alpha1"]), Some(McsVersion::V1alpha1));
        assert_eq!(McsVersion::served(["v1beta1"]), Some(McsVersion::V1beta1));
        assert_eq!(McsVersion::served(["v1alpha2"]), None);
        assert_eq!(McsVersion::V1beta1.service_imports().api_version, "multicluster.x-k8s.io/v1beta1");
        assert_eq!(McsVersion::V1alpha1.service_exports().plural, "serviceexports");
    }
}
