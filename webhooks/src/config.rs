//! The webhook configurations the API server needs, as typed objects: the one builder that
//! `slicectl install` prints (`install hub` the validating one, `install worker` the mutating
//! one), and the names the install and the server share.
//!
//! # Failure policy, and why
//!
//! Both configurations use `failurePolicy: Fail`; the scope of each is kept small instead, so
//! that an unavailable webhook blocks only what it must.
//!
//! - **Pods: `Fail`, limited by a namespace selector** to namespaces labelled
//!   `slicenet.io/slice`, never `slicenet-system` (where the webhook's own pods run, so the
//!   webhook can always start again) nor `slicenet-gateway` (whose pods carry the slice
//!   annotation the worker gives them). With `Ignore`, a pod created while the webhook
//!   is down would start without its slice (in Multus mode the networks annotation would be
//!   missing, and nothing adds it later: the pod must be recreated), or keep a hand-set
//!   annotation for a foreign slice. With `Fail` the API server refuses the create and the pod's
//!   controller (ReplicaSet, Job, …) retries until the webhook is back, so every pod in a slice
//!   namespace has been through the webhook. Pods in every other namespace never reach the
//!   webhook, except those that carry a hand-set `slicenet.io/slice` annotation (a second
//!   webhook, chosen by a CEL `matchConditions`), so that it can remove it (DESIGN.md
//!   "Contracts"). `reinvocationPolicy: IfNeeded`, since other mutating webhooks may change the
//!   pod after us; the mutation is idempotent.
//! - **SliceConfigs: `Fail`.** A SliceConfig that slips past validation can claim a namespace of
//!   another slice or overlap a cluster's pod CIDR and break traffic in every member cluster;
//!   SliceConfig writes are rare and made by people, who can retry. The hub controller's own
//!   writes (finalizers; status is a subresource these rules do not match) skip the webhook
//!   (`matchConditions` on its ServiceAccount's user name), so that with the webhook down a
//!   SliceConfig can still be deleted and its finalizer released.
//!
//! Both use `sideEffects: None`, `admissionReviewVersions: ["v1"]`, `matchPolicy: Equivalent`
//! and a 5 s timeout (the server answers in well under a millisecond; see `webhook-bench`).
//! `matchConditions` need Kubernetes 1.30 (GA), or 1.28–1.29 with the feature gate.

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use serde_json::json;
use slice_api::crd::SYSTEM_NAMESPACE;

use crate::server::{MUTATE_POD_PATH, VALIDATE_SLICECONFIG_PATH};

/// Name of the webhook's Service, Deployment and ServiceAccount in [`SYSTEM_NAMESPACE`].
pub const SERVICE_NAME: &str = "slicenet-webhook";
/// Port of the webhook Service.
pub const SERVICE_PORT: i32 = 443;
/// The `kubernetes.io/tls` Secret in [`SYSTEM_NAMESPACE`] with the serving certificate
/// (`tls.crt`, `tls.key`) and its CA (`ca.crt`, the configurations' `caBundle`).
pub const TLS_SECRET: &str = slice_api::names::WEBHOOK_TLS_SECRET;
/// Name of the MutatingWebhookConfiguration.
pub const MUTATING_CONFIGURATION: &str = "slicenet-pods";
/// Name of the ValidatingWebhookConfiguration.
pub const VALIDATING_CONFIGURATION: &str = "slicenet-sliceconfigs";
/// Timeout the API server waits for an answer.
pub const TIMEOUT_SECONDS: i32 = 5;
/// The hub controller's ServiceAccount in [`SYSTEM_NAMESPACE`], whose writes skip validation.
pub const HUB_CONTROLLER_ACCOUNT: &str = "slicenet-hub";

/// Printed above the MutatingWebhookConfiguration (the module docs say more).
pub const MUTATING_NOTE: &[&str] = &[
    "failurePolicy Fail, but only for pods in namespaces labelled slicenet.io/slice (never",
    "slicenet-system or slicenet-gateway): while the webhook is down, pods there are refused and their controllers",
    "retry, instead of starting without their slice. Elsewhere only pods with a hand-set",
    "slicenet.io/slice annotation are sent (matchConditions), so the webhook can remove it.",
];

/// Printed above the ValidatingWebhookConfiguration.
pub const VALIDATING_NOTE: &[&str] = &[
    "failurePolicy Fail: a SliceConfig that was not validated is refused rather than planned;",
    "this blocks only SliceConfig writes by people. The hub controller's own writes (finalizers)",
    "skip the webhook, so deletion works while it is down.",
];

/// The user name the API server gives the hub controller's ServiceAccount.
#[must_use]
pub fn hub_controller_user() -> String {
    format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{HUB_CONTROLLER_ACCOUNT}")
}

fn client_config(path: &str, ca_bundle_pem: &str) -> serde_json::Value {
    use base64::Engine as _;
    json!({
        "service": {"namespace": SYSTEM_NAMESPACE, "name": SERVICE_NAME, "path": path, "port": SERVICE_PORT},
        "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_bundle_pem),
    })
}

/// One pod webhook: CREATE of pods in namespaces where the slice label has `label_operator`
/// (`Exists` or `DoesNotExist`), never in `slicenet-system` (the webhook itself runs there, so it
/// can always restart) nor in `slicenet-gateway` (the gateway pods carry the slice annotation
/// the worker gives them, which is what admits them there; the webhook must not remove it).
fn pod_webhook(name: &str, label_operator: &str, ca_bundle_pem: &str) -> serde_json::Value {
    json!({
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": client_config(MUTATE_POD_PATH, ca_bundle_pem),
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
                   "scope": "Namespaced"}],
        "namespaceSelector": {"matchExpressions": [
            {"key": slice_api::names::SLICE_LABEL, "operator": label_operator},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": slice_api::names::RESERVED_NAMESPACES}
        ]},
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "reinvocationPolicy": "IfNeeded",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS
    })
}

/// The pod mutating webhooks (member clusters): every pod of a labelled namespace, and
/// elsewhere only pods that carry a hand-set slice annotation, to remove it. `ca_bundle_pem`
/// is the PEM of the CA that signed the serving certificate.
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

/// The SliceConfig validating webhook (hub): creates and updates, except the hub controller's.
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
            "matchConditions": [{
                "name": "not-the-hub-controller",
                "expression": format!("request.userInfo.username != '{}'", hub_controller_user())
            }],
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
        assert_eq!(w["clientConfig"]["service"]["name"], "slicenet-webhook");
        assert_eq!(w["clientConfig"]["caBundle"], "UEVN");
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["reinvocationPolicy"], "IfNeeded");
        assert_eq!(w["namespaceSelector"]["matchExpressions"][0]["key"], "slicenet.io/slice");
        assert_eq!(
            w["namespaceSelector"]["matchExpressions"][1]["values"],
            json!(["slicenet-system", "slicenet-gateway", "slicenet-node"])
        );
        let other = &m["webhooks"][1];
        assert_eq!(other["namespaceSelector"]["matchExpressions"][0]["operator"], "DoesNotExist");
        assert_eq!(other["namespaceSelector"]["matchExpressions"][1]["operator"], "NotIn");
        // A gateway pod's annotation (set by the worker) is what admits it: never removed.
        assert_eq!(
            other["namespaceSelector"]["matchExpressions"][1]["values"],
            json!(["slicenet-system", "slicenet-gateway", "slicenet-node"])
        );
        assert!(other["matchConditions"][0]["expression"].as_str().unwrap().contains("'slicenet.io/slice' in"));
        let v = serde_json::to_value(validating("PEM")).unwrap();
        let w = &v["webhooks"][0];
        assert_eq!(w["clientConfig"]["service"]["path"], "/validate-sliceconfig");
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["rules"][0]["apiGroups"][0], "slicenet.io");
        assert_eq!(w["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
        assert_eq!(
            w["matchConditions"][0]["expression"],
            "request.userInfo.username != 'system:serviceaccount:slicenet-system:slicenet-hub'"
        );
    }
}
