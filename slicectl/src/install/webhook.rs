//! The admission webhook: one `slice-webhooks` Deployment behind a Service, serving pods'
//! mutation (`/mutate-pod`, member clusters) and SliceConfig validation
//! (`/validate-sliceconfig`, hub) over HTTPS on 8443 with the certificate from the Secret
//! `slicenet-webhook-tls`.

use anyhow::Result;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use slice_api::crd::SYSTEM_NAMESPACE;
use slice_api::names::SLICE_LABEL;

use super::objects::{meta, secret, selector, service_account};
use super::workloads::{deployment, env, restricted};
use super::{HUB_NAME, Options, WEBHOOK_NAME, WEBHOOK_TLS_SECRET};
use crate::manifest::Manifest;
use crate::tls::WebhookTls;

/// The port the webhook serves HTTPS on.
pub const PORT: i32 = 8443;
/// Path of the pod mutation.
pub const MUTATE_POD_PATH: &str = "/mutate-pod";
/// Path of the SliceConfig validation.
pub const VALIDATE_SLICECONFIG_PATH: &str = "/validate-sliceconfig";
const TLS_DIR: &str = "/etc/slicenet/webhook-tls";

/// Comment printed above the MutatingWebhookConfiguration.
pub const MUTATING_COMMENT: &[&str] = &[
    "failurePolicy Ignore: when the webhook is down, pods are created without the slice annotation",
    "instead of not at all; slicenet must never block pod creation in a cluster. Only namespaces",
    "with the slicenet.io/slice label are sent here at all. An annotation a user sets by hand in",
    "another namespace grants nothing: slice-cni checks membership against the node state.",
];

/// Comment printed above the ValidatingWebhookConfiguration.
pub const VALIDATING_COMMENT: &[&str] = &[
    "failurePolicy Fail: a SliceConfig that was not validated is refused rather than planned;",
    "this blocks only SliceConfig writes, never anything else in the cluster.",
];

/// The webhook's ServiceAccount, TLS Secret, Deployment and Service. The webhook has no access
/// list of its own yet, so its ServiceAccount has no roles.
///
/// # Errors
/// When an object cannot be serialised.
pub fn common(opts: &Options) -> Result<Manifest> {
    let mut m = Manifest::new();
    m.push(&service_account(WEBHOOK_NAME, SYSTEM_NAMESPACE))?;
    let tls = &opts.webhook_tls;
    m.push(&secret(
        WEBHOOK_TLS_SECRET,
        SYSTEM_NAMESPACE,
        "kubernetes.io/tls",
        [("ca.crt", tls.ca_pem.clone()), ("tls.crt", tls.cert_pem.clone()), ("tls.key", tls.key_pem.clone())],
    ))?;
    let container = Container {
        name: "webhook".to_owned(),
        image: Some(opts.image.clone()),
        command: Some(vec!["/usr/local/bin/slice-webhooks".to_owned()]),
        env: Some(vec![
            env("SLICENET_WEBHOOK_LISTEN", &format!("0.0.0.0:{PORT}")),
            env("SLICENET_WEBHOOK_CERT", &format!("{TLS_DIR}/tls.crt")),
            env("SLICENET_WEBHOOK_KEY", &format!("{TLS_DIR}/tls.key")),
            env("RUST_LOG", "info"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("https".to_owned()),
            container_port: PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(vec![VolumeMount {
            name: "tls".to_owned(),
            mount_path: TLS_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        security_context: Some(restricted()),
        ..Container::default()
    };
    let volume = Volume {
        name: "tls".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(WEBHOOK_TLS_SECRET.to_owned()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut d = deployment(WEBHOOK_NAME, container, vec![volume]);
    if let Some(pod) = d.spec.template.spec.as_mut() {
        pod.security_context.get_or_insert_default().fs_group = Some(65532);
    }
    m.push(&d)?;
    m.push(&Service {
        metadata: meta(WEBHOOK_NAME, Some(SYSTEM_NAMESPACE), WEBHOOK_NAME),
        spec: Some(ServiceSpec {
            selector: Some(selector(WEBHOOK_NAME)),
            ports: Some(vec![ServicePort {
                name: Some("https".to_owned()),
                port: 443,
                target_port: Some(IntOrString::String("https".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })?;
    Ok(m)
}

fn client_config(path: &str, tls: &WebhookTls) -> WebhookClientConfig {
    WebhookClientConfig {
        ca_bundle: Some(ByteString(tls.ca_pem.clone().into_bytes())),
        service: Some(ServiceReference {
            name: WEBHOOK_NAME.to_owned(),
            namespace: SYSTEM_NAMESPACE.to_owned(),
            path: Some(path.to_owned()),
            port: Some(443),
        }),
        url: None,
    }
}

/// The user name the API server gives the hub controller's ServiceAccount.
fn hub_service_account_user() -> String {
    format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{HUB_NAME}")
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| (*s).to_owned()).collect())
}

/// Pods in namespaces labelled `slicenet.io/slice` go through `/mutate-pod` on create.
pub fn mutating(tls: &WebhookTls) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: meta(WEBHOOK_NAME, None, WEBHOOK_NAME),
        webhooks: Some(vec![MutatingWebhook {
            name: "pods.slicenet.io".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config(MUTATE_POD_PATH, tls),
            failure_policy: Some("Ignore".to_owned()),
            side_effects: "None".to_owned(),
            // Another webhook may add labels (the opt-out) after ours ran.
            reinvocation_policy: Some("IfNeeded".to_owned()),
            timeout_seconds: Some(5),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: SLICE_LABEL.to_owned(),
                    operator: "Exists".to_owned(),
                    values: None,
                }]),
                match_labels: None,
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: strings(&[""]),
                api_versions: strings(&["v1"]),
                operations: strings(&["CREATE"]),
                resources: strings(&["pods"]),
                scope: Some("Namespaced".to_owned()),
            }]),
            ..MutatingWebhook::default()
        }]),
    }
}

/// SliceConfig creates and updates go through `/validate-sliceconfig`.
pub fn validating(tls: &WebhookTls) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: meta(WEBHOOK_NAME, None, WEBHOOK_NAME),
        webhooks: Some(vec![ValidatingWebhook {
            name: "sliceconfigs.slicenet.io".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: client_config(VALIDATE_SLICECONFIG_PATH, tls),
            failure_policy: Some("Fail".to_owned()),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(5),
            // The hub controller writes only finalizers (and status, which these rules do not
            // match): with the webhook down it must still be able to let a SliceConfig go.
            match_conditions: Some(vec![MatchCondition {
                name: "not-the-hub-controller".to_owned(),
                expression: format!("request.userInfo.username != '{}'", hub_service_account_user()),
            }]),
            rules: Some(vec![RuleWithOperations {
                api_groups: strings(&["slicenet.io"]),
                api_versions: strings(&["v1alpha1"]),
                operations: strings(&["CREATE", "UPDATE"]),
                resources: strings(&["sliceconfigs"]),
                scope: Some("Cluster".to_owned()),
            }]),
            ..ValidatingWebhook::default()
        }]),
    }
}
