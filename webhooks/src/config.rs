//! The webhook configurations the API server needs, as data, for `slicectl install` to print.
//!
//! Failure policy, and why:
//! - **Pods: `Fail`, limited by a namespace selector** to namespaces labelled
//!   `slicenet.io/slice` (and never `slicenet-system`, so the webhook's own pods always start).
//!   If the webhook is down, pod creation in slice namespaces is refused and the pods'
//!   controllers retry, instead of pods starting silently without their slice (in Multus mode
//!   the networks annotation would be missing) or with a hand-set annotation for a foreign slice
//!   left in place. In every other namespace (never `slicenet-system`) only pods that carry a
//!   hand-set `slicenet.io/slice` annotation are sent (a CEL `matchConditions`), so the webhook
//!   can remove it (DESIGN.md "Contracts"); all other pods there never reach the webhook.
//!   `reinvocationPolicy: IfNeeded`, since other mutating webhooks may add annotations after us;
//!   the mutation is idempotent.
//! - **SliceConfigs: `Fail`.** A SliceConfig that slips past validation can claim a namespace of
//!   another slice or overlap a cluster's pod CIDR and break traffic in every member cluster;
//!   SliceConfig writes are rare and made by people, who can retry.
//!
//! Both use `sideEffects: None`, `admissionReviewVersions: ["v1"]` and a 5 s timeout (the
//! server answers in well under a millisecond; see `webhook-bench`).

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use serde_json::json;
use slice_api::crd::SYSTEM_NAMESPACE;

use crate::server::{MUTATE_POD_PATH, VALIDATE_SLICECONFIG_PATH};

/// Name of the webhook Service and Deployment in [`SYSTEM_NAMESPACE`].
pub const SERVICE_NAME: &str = "slice-webhooks";
/// Port of the webhook Service.
pub const SERVICE_PORT: i32 = 443;
/// Name of the MutatingWebhookConfiguration (and prefix of its webhook name).
pub const MUTATING_CONFIGURATION: &str = "slicenet-pods";
/// Name of the ValidatingWebhookConfiguration.
pub const VALIDATING_CONFIGURATION: &str = "slicenet-sliceconfigs";
/// Timeout the API server waits for an answer.
pub const TIMEOUT_SECONDS: i32 = 5;

fn client_config(path: &str, ca_bundle_pem: &str) -> serde_json::Value {
    use base64::Engine as _;
    json!({
        "service": {"namespace": SYSTEM_NAMESPACE, "name": SERVICE_NAME, "path": path, "port": SERVICE_PORT},
        "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_bundle_pem),
    })
}

/// One pod webhook: CREATE of pods in namespaces where the slice label has `label_operator`
/// (`Exists` or `DoesNotExist`), never in `slicenet-system`.
fn pod_webhook(name: &str, label_operator: &str, ca_bundle_pem: &str) -> serde_json::Value {
    json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": client_config(MUTATE_POD_PATH, ca_bundle_pem),
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                   "scope": "Namespaced"}],
        "namespaceSelector": {"matchExpressions": [
            {"key": slice_api::names::SLICE_LABEL, "operator": label_operator},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [SYSTEM_NAMESPACE]}
        ]},
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "IfNeeded",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS
    })
}

/// The pod mutating webhooks (member clusters): every pod of a labelled namespace, and
/// elsewhere only pods that carry a hand-set slice annotation, to remove it.
///
/// # Panics
/// Never: the literal matches the type.
#[must_use]
pub fn mutating(ca_bundle_pem: &str) -> MutatingWebhookConfiguration {
    let members = pod_webhook("pods.slicenet.io", "Exists", ca_bundle_pem);
    let mut annotated = pod_webhook("annotated-pods.slicenet.io", "DoesNotExist", ca_bundle_pem);
    annotated["matchConditions"] = json!([{
        "name": "has-slice-annotation",
        "expression": format!(
            "has(object.metadata.annotations) && '{}' in object.metadata.annotations",
            slice_api::names::SLICE_ANNOTATION
        )
    }]);
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": MUTATING_CONFIGURATION},
        "webhooks": [members, annotated]
    }))
    .expect("literal MutatingWebhookConfiguration")
}

/// The SliceConfig validating webhook (hub).
///
/// # Panics
/// Never: the literal matches the type.
#[must_use]
pub fn validating(ca_bundle_pem: &str) -> ValidatingWebhookConfiguration {
    serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": VALIDATING_CONFIGURATION},
        "webhooks": [{
            "name": "sliceconfigs.slicenet.io",
            "admissionReviewVersions": ["v1"],
            "clientConfig": client_config(VALIDATE_SLICECONFIG_PATH, ca_bundle_pem),
            "rules": [{"apiGroups": [slice_api::names::API_GROUP], "apiVersions": [slice_api::names::API_VERSION],
                       "operations": ["CREATE", "UPDATE"], "resources": ["sliceconfigs"], "scope": "Cluster"}],
            "failurePolicy": "Fail",
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "timeoutSeconds": TIMEOUT_SECONDS
        }]
    }))
    .expect("literal ValidatingWebhookConfiguration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_point_at_the_served_paths() {
        let m = serde_json::to_value(mutating("PEM")).unwrap();
        let w = &m["webhooks"][0];
        assert_eq!(w["clientConfig"]["service"]["path"], "/mutate-pod");
        assert_eq!(w["clientConfig"]["caBundle"], "UEVN");
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["reinvocationPolicy"], "IfNeeded");
        assert_eq!(w["namespaceSelector"]["matchExpressions"][0]["key"], "slicenet.io/slice");
        let other = &m["webhooks"][1];
        assert_eq!(other["namespaceSelector"]["matchExpressions"][0]["operator"], "DoesNotExist");
        assert!(other["matchConditions"][0]["expression"].as_str().unwrap().contains("'slicenet.io/slice' in"));
        let v = serde_json::to_value(validating("PEM")).unwrap();
        let w = &v["webhooks"][0];
        assert_eq!(w["clientConfig"]["service"]["path"], "/validate-sliceconfig");
        assert_eq!(w["rules"][0]["apiGroups"][0], "slicenet.io");
        assert_eq!(w["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
    }
}
