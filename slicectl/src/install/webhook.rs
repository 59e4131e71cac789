//! The admission webhooks as installed: a `slice-webhooks` Deployment of two replicas behind a
//! Service in `slicenet-system`, serving HTTPS with the certificate of its own TLS Secret. On
//! the hub (`slicenet-hub-webhook`) it validates SliceConfigs against the hub's other
//! SliceConfigs and MemberClusters (`--hub-api`, with exactly the RBAC of [`WEBHOOK_HUB`]); in
//! member clusters (`slicenet-webhook`) it mutates pods from the worker's membership ConfigMap
//! `slicenet-membership` (`--membership-dir`) and has no API access at all. The two have
//! different names, so a hub that is also a member cluster runs both.
//!
//! With a certificate `slicectl` made, its CA (certificate and key) goes into a CA Secret
//! ([`Role::ca_secret`]) from which the hub controller or the worker renews the serving
//! certificate ([`slice_operator::cert_rotation`]); with `--webhook-tls-dir` there is none.
//!
//! The webhook configurations themselves, and the reasons for their failure policies, are
//! [`webhooks::config`]'s: this module only adds slicenet's labels and points the hub's at its
//! own Service.

use anyhow::Result;
use clap::ValueEnum as _;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use slice_api::access::WEBHOOK_HUB;
use slice_api::crd::SYSTEM_NAMESPACE;
use slice_api::names::{CA_CERT_KEY, CA_KEY_KEY, HUB_WEBHOOK_CA_SECRET, WEBHOOK_CA_SECRET};
use webhooks::cli::{LISTEN_PORT, MEMBERSHIP_DIR, TLS_DIR};
use webhooks::config::SERVICE_PORT;
use webhooks::membership::MEMBERSHIP_CONFIGMAP;
use webhooks::mutate::Mode;

use super::network_policy;
use super::objects::{Component, component_rbac, labels, meta, secret, selector, service_account};
use super::workloads::{WEBHOOK_BUDGET, deployment, disruption_budget, env, http_probe, restricted};
use super::{HUB_WEBHOOK_NAME, HUB_WEBHOOK_TLS_SECRET, Options, WEBHOOK_NAME, WEBHOOK_TLS_SECRET};
use crate::manifest::Manifest;

/// Where the webhook runs, which decides its flags, mounts and API access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The hub: SliceConfig validation, reading the hub through the API.
    Hub,
    /// A member cluster: pod mutation, reading the membership ConfigMap.
    Member,
}

impl Role {
    /// The name of the webhook's ServiceAccount, Deployment, Service, PodDisruptionBudget and
    /// NetworkPolicy.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Role::Hub => HUB_WEBHOOK_NAME,
            Role::Member => WEBHOOK_NAME,
        }
    }

    /// The Secret with its serving certificate.
    #[must_use]
    pub fn tls_secret(self) -> &'static str {
        match self {
            Role::Hub => HUB_WEBHOOK_TLS_SECRET,
            Role::Member => WEBHOOK_TLS_SECRET,
        }
    }

    /// The Secret with the CA its serving certificate is renewed from (by the hub controller,
    /// or in member clusters by the worker).
    #[must_use]
    pub fn ca_secret(self) -> &'static str {
        match self {
            Role::Hub => HUB_WEBHOOK_CA_SECRET,
            Role::Member => WEBHOOK_CA_SECRET,
        }
    }
}

/// Why the CA's key is in the cluster.
const CA_NOTE: &[&str] = &[
    "The webhook's CA (the caBundle above): the controller's leader renews the serving certificate",
    "from it before it expires (90 days; the CA lasts 10 years). Only that controller may read it.",
    "Not printed with --webhook-tls-dir: a certificate you bring is yours to renew.",
];

/// The container's name of its HTTPS port, which the Service and the probes refer to.
const PORT_NAME: &str = "https";

/// `slice-webhooks`' arguments for `role`: every flag the manifest relies on is given, even
/// where it equals the binary's default, and `slicectl`'s tests parse them back with
/// [`webhooks::cli::Args`].
fn args(role: Role, multus: bool) -> Vec<String> {
    let mut args = vec![
        "--listen".to_owned(),
        format!("0.0.0.0:{LISTEN_PORT}"),
        "--tls-cert".to_owned(),
        format!("{TLS_DIR}/tls.crt"),
        "--tls-key".to_owned(),
        format!("{TLS_DIR}/tls.key"),
    ];
    match role {
        Role::Hub => args.push("--hub-api".to_owned()),
        Role::Member => {
            // `install worker --multus`: the webhook adds the slice's network to the pods.
            let mode = if multus { Mode::Multus } else { Mode::Chained };
            let mode = mode.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
            args.extend(["--membership-dir".to_owned(), MEMBERSHIP_DIR.to_owned(), "--mode".to_owned(), mode]);
        }
    }
    args
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount { name: name.to_owned(), mount_path: path.to_owned(), read_only: Some(true), ..VolumeMount::default() }
}

/// The webhook's ServiceAccount (on the hub with the roles of [`WEBHOOK_HUB`]), TLS Secret,
/// Deployment, PodDisruptionBudget, Service and NetworkPolicy.
///
/// # Errors
/// When an object cannot be serialised.
pub fn common(opts: &Options, role: Role) -> Result<Manifest> {
    let name = role.name();
    let mut m = Manifest::new();
    match role {
        Role::Hub => {
            let webhook = Component { name, namespace: SYSTEM_NAMESPACE, access: WEBHOOK_HUB };
            m.extend(component_rbac(&webhook, name, None)?);
        }
        Role::Member => m.push(&service_account(name, SYSTEM_NAMESPACE))?,
    }
    let tls = &opts.webhook_tls;
    m.push(&secret(
        role.tls_secret(),
        SYSTEM_NAMESPACE,
        "kubernetes.io/tls",
        [("ca.crt", tls.ca_pem.clone()), ("tls.crt", tls.cert_pem.clone()), ("tls.key", tls.key_pem.clone())],
    ))?;
    if let Some(ca_key) = &tls.ca_key_pem {
        m.push_commented(
            CA_NOTE,
            &secret(
                role.ca_secret(),
                SYSTEM_NAMESPACE,
                "Opaque",
                [(CA_CERT_KEY, tls.ca_pem.clone()), (CA_KEY_KEY, ca_key.clone())],
            ),
        )?;
    }
    let mut mounts = vec![mount("tls", TLS_DIR)];
    let mut volumes = vec![Volume {
        name: "tls".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(role.tls_secret().to_owned()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if role == Role::Member {
        // Not optional: until the worker has written it, the pod waits and pods of slice
        // namespaces are refused (failurePolicy Fail) rather than admitted unmarked.
        mounts.push(mount("membership", MEMBERSHIP_DIR));
        volumes.push(Volume {
            name: "membership".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: MEMBERSHIP_CONFIGMAP.to_owned(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let container = Container {
        name: "webhook".to_owned(),
        image: Some(opts.image.clone()),
        command: Some(vec!["/usr/local/bin/slice-webhooks".to_owned()]),
        args: Some(args(role, opts.multus)),
        env: Some(vec![env("RUST_LOG", "info")]),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_owned()),
            container_port: i32::from(LISTEN_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", PORT_NAME, "HTTPS", 5)),
        liveness_probe: Some(http_probe("/healthz", PORT_NAME, "HTTPS", 10)),
        volume_mounts: Some(mounts),
        resources: Some(WEBHOOK_BUDGET.requirements()),
        security_context: Some(restricted()),
        ..Container::default()
    };
    let mut d = deployment(name, container, volumes);
    if let Some(pod) = d.spec.template.spec.as_mut() {
        // The restricted container runs as 65532; let it read the 0440 Secret files.
        pod.security_context.get_or_insert_default().fs_group = Some(super::workloads::NON_ROOT_ID);
        // On the hub the webhook reads SliceConfigs and MemberClusters through the API; in
        // member clusters it makes no API request: no token in the pod.
        pod.automount_service_account_token = Some(role == Role::Hub);
    }
    m.push(&d)?;
    m.push(&disruption_budget(name))?;
    m.push(&Service {
        metadata: meta(name, Some(SYSTEM_NAMESPACE), name),
        spec: Some(ServiceSpec {
            selector: Some(selector(name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })?;
    m.push_commented(network_policy::WEBHOOK_NOTE, &network_policy::webhook(name, LISTEN_PORT))?;
    Ok(m)
}

/// [`webhooks::config::mutating`] with slicenet's labels.
#[must_use]
pub fn mutating(opts: &Options) -> MutatingWebhookConfiguration {
    let mut c = webhooks::config::mutating(&opts.webhook_tls.ca_pem);
    c.metadata.labels = Some(labels(WEBHOOK_NAME));
    c
}

/// [`webhooks::config::validating`] with slicenet's labels, calling the hub's webhook Service.
#[must_use]
pub fn validating(opts: &Options) -> ValidatingWebhookConfiguration {
    let mut c = webhooks::config::validating(&opts.webhook_tls.ca_pem);
    c.metadata.labels = Some(labels(HUB_WEBHOOK_NAME));
    for hook in c.webhooks.iter_mut().flatten() {
        if let Some(service) = hook.client_config.service.as_mut() {
            HUB_WEBHOOK_NAME.clone_into(&mut service.name);
        }
    }
    c
}
