//! `slicectl install …`: the complete manifests of slicenet, printed for `kubectl apply -f -`.
//!
//! - [`hub`]: on the hub cluster — the CRDs, the hub controller and the SliceConfig validating
//!   webhook (with read access to SliceConfigs and MemberClusters).
//! - [`worker`]: on each member cluster — the worker controller (with the hub kubeconfig in a
//!   Secret), the node agent DaemonSet (which also installs slice-cni) and the pod mutating
//!   webhook, and slice-dns ([`dns`]: `clusterset.local` and `slice.local` from the cluster's
//!   ServiceImports and MCS EndpointSlices, read-only).
//! - Both: the namespace `slicenet-system` with its NetworkPolicies ([`network_policy`]), and a
//!   PodDisruptionBudget per Deployment. A hub that is also a member cluster applies both: no
//!   two objects of the two share a name unless they are the same object.
//! - [`worker_hub_access`]: on the hub, per member cluster — what that cluster's worker may do
//!   there: its namespace `slicenet-cluster-<cluster>` only, and its own MemberCluster.
//! - [`admission_policy`]: ValidatingAdmissionPolicies where RBAC is too coarse — in `hub` for
//!   the hub controller's namespaces and every worker's WorkerSlices (one policy for all member
//!   clusters, so `worker_hub_access` adds none), in `worker` for the worker's namespaces and
//!   NetworkAttachmentDefinitions and the node agents' pods.
//!
//! Every object is a k8s-openapi type; every RBAC rule comes from the access lists in
//! [`slice_api::access`] through [`crate::rbac::policy_rules`].
//!
//! # What the manifests pass to the binaries
//! - `slice-operator hub --health-addr [::]:8081`.
//! - `slice-operator worker --gateway-image <image> --health-addr [::]:8081` with
//!   `SLICENET_CLUSTER` and `SLICENET_HUB_KUBECONFIG` (its `--cluster` and `--hub-kubeconfig`
//!   through clap's `env`).
//! - Both controllers run two replicas, one leading through its Lease: `POD_NAME` and
//!   `POD_NAMESPACE` (downward API) name the replica and the Lease's namespace.
//! - `slice-operator node-agent --kube --health-addr [::]:9543` with `NODE_NAME` (its `--node`).
//! - `slice-webhooks --listen 0.0.0.0:8443 --tls-cert … --tls-key …` (the Secret
//!   `slicenet-webhook-tls` mounted where [`webhooks::cli`] reads it), with `--hub-api` on the
//!   hub, and `--membership-dir … --mode chained` (the ConfigMap `slicenet-membership` mounted
//!   there) in member clusters; see [`webhook`].
//! - `slice-dns --kube --listen 0.0.0.0:5353 --health-addr [::]:8081` (the Service maps port 53).
//! - The controllers' and the webhook's containers get `RUST_LOG=info`. The webhook reads no other environment of ours (with
//!   `--hub-api`, kube-rs reads the in-cluster `KUBERNETES_SERVICE_*` the kubelet sets).

pub mod admission_policy;
pub mod dns;
pub mod network_policy;
mod objects;
pub mod webhook;
pub mod workloads;

use anyhow::{Context, Result, bail};
use slice_api::access::{HUB, NODE_AGENT, WORKER_CLUSTER, WORKER_HUB};
use slice_api::crd::{GATEWAY_NAMESPACE, SYSTEM_NAMESPACE, cluster_namespace};
use slice_api::names::NODE_NAMESPACE;
use webhook::Role;

use crate::manifest::Manifest;
use crate::tls::WebhookTls;

pub use objects::{Component, component_rbac, labels};

/// The default image: every binary of slicenet in one image, tagged with slicectl's version.
#[must_use]
pub fn default_image() -> String {
    format!("ghcr.io/slicenet/slicenet:{}", env!("CARGO_PKG_VERSION"))
}

/// The hub controller's ServiceAccount, roles and Deployment name. Defined by the webhooks
/// crate, whose SliceConfig validation lets this account's writes through.
pub const HUB_NAME: &str = webhooks::config::HUB_CONTROLLER_ACCOUNT;
/// The worker controller's ServiceAccount, roles and Deployment name (in both clusters).
pub const WORKER_NAME: &str = "slicenet-worker";
/// The node agent's ServiceAccount, roles and DaemonSet name.
pub const NODE_AGENT_NAME: &str = "slicenet-node-agent";
/// The member clusters' pod webhook: ServiceAccount, Deployment and Service name (the
/// mutating configuration calls it).
pub const WEBHOOK_NAME: &str = webhooks::config::SERVICE_NAME;
/// The Secret with the pod webhook's serving certificate.
pub const WEBHOOK_TLS_SECRET: &str = webhooks::config::TLS_SECRET;
/// The hub's SliceConfig webhook: ServiceAccount, roles, Deployment and Service name (the
/// validating configuration calls it). Not [`WEBHOOK_NAME`]: a hub may be a member cluster too.
pub const HUB_WEBHOOK_NAME: &str = "slicenet-hub-webhook";
/// The Secret with the hub webhook's serving certificate.
pub const HUB_WEBHOOK_TLS_SECRET: &str = slice_api::names::HUB_WEBHOOK_TLS_SECRET;
/// The Secret (in the member cluster) with the worker's hub kubeconfig and token.
pub const HUB_KUBECONFIG_SECRET: &str = slice_api::hub_credential::SECRET;

/// What every install takes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The image of every component.
    pub image: String,
    /// The webhook's certificate; [`crate::tls::generate`] makes one when none is given.
    pub webhook_tls: WebhookTls,
    /// The member cluster runs Multus: the pod webhook adds the slice's network to the pods'
    /// `k8s.v1.cni.cncf.io/networks` (`--mode multus`) instead of relying on the chained plugin.
    pub multus: bool,
}

impl Options {
    /// Options with `image` and a fresh webhook certificate, valid for both webhook Services
    /// (the hub's and the member clusters').
    ///
    /// # Errors
    /// When the certificate cannot be made.
    pub fn generate(image: &str) -> Result<Self> {
        let mut names = crate::tls::service_dns_names(WEBHOOK_NAME, SYSTEM_NAMESPACE);
        names.extend(crate::tls::service_dns_names(HUB_WEBHOOK_NAME, SYSTEM_NAMESPACE));
        Ok(Self { image: image.to_owned(), webhook_tls: crate::tls::generate(&names)?, multus: false })
    }
}

/// Checks that `cluster` can name a MemberCluster and its hub namespace: a DNS label short
/// enough that `slicenet-cluster-<cluster>` is one too.
///
/// # Errors
/// Says what is wrong with the name.
pub fn check_cluster_name(cluster: &str) -> Result<()> {
    let max = 63 - slice_api::crd::CLUSTER_NAMESPACE_PREFIX.len();
    let ok_chars = cluster.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if cluster.is_empty() || cluster.len() > max || !ok_chars || cluster.starts_with('-') || cluster.ends_with('-') {
        bail!(
            "cluster name {cluster:?} must be 1-{max} characters of a-z, 0-9 and '-', starting and ending with a \
             letter or digit (it names the hub namespace {:?})",
            cluster_namespace(cluster)
        );
    }
    Ok(())
}

/// The namespace and its default-deny NetworkPolicy: the same objects in every install.
fn system_namespace() -> Result<Manifest> {
    let mut m = Manifest::new();
    m.push(&objects::system_namespace())?;
    m.push_commented(network_policy::DEFAULT_DENY_NOTE, &network_policy::default_deny(SYSTEM_NAMESPACE))?;
    Ok(m)
}

/// `slicectl install hub`: CRDs, namespaces (`slicenet-system`; `slicenet-peers` for the peer
/// pages), hub controller, SliceConfig validating webhook.
///
/// # Errors
/// When an object cannot be serialised.
pub fn hub(opts: &Options) -> Result<Manifest> {
    let mut m = crate::crds::manifest()?;
    m.extend(system_namespace()?);
    m.push(&objects::peers_namespace())?;
    let hub = Component { name: HUB_NAME, namespace: SYSTEM_NAMESPACE, access: HUB };
    m.extend(component_rbac(&hub, HUB_NAME, None)?);
    m.push(&workloads::hub_deployment(&opts.image))?;
    m.push(&workloads::disruption_budget(HUB_NAME))?;
    m.extend(webhook::common(opts, Role::Hub)?);
    m.push_commented(webhooks::config::VALIDATING_NOTE, &webhook::validating(opts))?;
    m.extend(admission_policy::hub()?);
    Ok(m)
}

/// `slicectl install worker`: namespace, hub kubeconfig Secret, worker controller, node agent
/// DaemonSet with the CNI install, pod mutating webhook.
///
/// # Errors
/// When `cluster` is not a valid name, or `hub_kubeconfig` cannot be used from a pod
/// ([`crate::kubeconfig::for_worker`]).
pub fn worker(opts: &Options, cluster: &str, hub_kubeconfig: &str, hub_server: Option<&str>) -> Result<Manifest> {
    check_cluster_name(cluster)?;
    let credentials = crate::kubeconfig::for_worker(hub_kubeconfig, hub_server).context("--hub-kubeconfig")?;
    let mut m = system_namespace()?;
    m.push(&objects::gateway_namespace())?;
    m.push_commented(network_policy::DEFAULT_DENY_NOTE, &network_policy::default_deny(GATEWAY_NAMESPACE))?;
    let worker = Component { name: WORKER_NAME, namespace: SYSTEM_NAMESPACE, access: WORKER_CLUSTER };
    m.extend(component_rbac(&worker, WORKER_NAME, None)?);
    m.push_commented(
        &["The worker's credentials on the hub: see `slicectl install worker-hub-access`."],
        &hub_kubeconfig_secret(credentials),
    )?;
    m.push(&workloads::worker_deployment(&opts.image, cluster))?;
    m.push(&workloads::disruption_budget(WORKER_NAME))?;
    m.push_commented(network_policy::GATEWAYS_NOTE, &network_policy::gateways())?;
    m.push(&objects::node_namespace())?;
    m.push_commented(network_policy::DEFAULT_DENY_NOTE, &network_policy::default_deny(NODE_NAMESPACE))?;
    let agent = Component { name: NODE_AGENT_NAME, namespace: NODE_NAMESPACE, access: NODE_AGENT };
    m.extend(component_rbac(&agent, NODE_AGENT_NAME, None)?);
    m.push_commented(workloads::NODE_AGENT_COMMENT, &workloads::node_agent_daemonset(&opts.image))?;
    m.extend(webhook::common(opts, Role::Member)?);
    m.push_commented(webhooks::config::MUTATING_NOTE, &webhook::mutating(opts))?;
    m.extend(dns::manifest(&opts.image)?);
    m.extend(admission_policy::member()?);
    Ok(m)
}

/// `slicectl install worker-credentials`: only the worker's Secret with its hub kubeconfig and
/// token (after `slicectl join --rotate`): applying it changes nothing else in the cluster.
///
/// # Errors
/// When `hub_kubeconfig` cannot be used from a pod ([`crate::kubeconfig::for_worker`]).
pub fn worker_credentials(hub_kubeconfig: &str, hub_server: Option<&str>) -> Result<Manifest> {
    let credentials = crate::kubeconfig::for_worker(hub_kubeconfig, hub_server).context("--hub-kubeconfig")?;
    let mut m = Manifest::new();
    m.push_commented(
        &["The worker's credentials on the hub (`slicectl join`); the worker reads the new token without a restart."],
        &hub_kubeconfig_secret(credentials),
    )?;
    Ok(m)
}

/// `slicectl install worker-hub-access`: on the hub, the namespace of `cluster`, the worker's
/// ServiceAccount there with its token Secret, a Role there, and a ClusterRole limited to its
/// own MemberCluster by name. What the worker may change on its WorkerSlices (status and its
/// finalizer only) is the admission policy `slicenet-worker-hub-workerslices` of `install hub`.
///
/// # Errors
/// When `cluster` is not a valid name.
pub fn worker_hub_access(cluster: &str) -> Result<Manifest> {
    check_cluster_name(cluster)?;
    let namespace = cluster_namespace(cluster);
    let mut m = Manifest::new();
    m.push(&objects::namespace(&namespace))?;
    let worker = Component { name: WORKER_NAME, namespace: &namespace, access: WORKER_HUB };
    // Cluster-scoped role names are global: one per member cluster. Its only cluster-scoped
    // access is to its own MemberCluster, so the ClusterRole names it.
    let own = [cluster.to_owned()];
    m.extend(component_rbac(&worker, &format!("{WORKER_NAME}-{cluster}"), Some(&own))?);
    Ok(m)
}

/// How an admin makes the worker's first hub token (printed by `slicectl install
/// worker-hub-access`): a token bound in time, which the worker renews itself from then on.
#[must_use]
pub fn first_token_command(cluster: &str) -> String {
    format!(
        "kubectl -n {} create token {WORKER_NAME} --duration={}s",
        cluster_namespace(cluster),
        slice_api::hub_credential::REQUESTED_LIFETIME_SECONDS
    )
}

/// The worker's Secret: the kubeconfig and, when it has one, the token it reads as a file.
fn hub_kubeconfig_secret(credentials: crate::kubeconfig::WorkerCredentials) -> k8s_openapi::api::core::v1::Secret {
    use slice_api::hub_credential::{KUBECONFIG_KEY, TOKEN_KEY};
    let mut secret =
        objects::secret(HUB_KUBECONFIG_SECRET, SYSTEM_NAMESPACE, "Opaque", [(KUBECONFIG_KEY, credentials.kubeconfig)]);
    if let (Some(token), Some(data)) = (credentials.token, secret.data.as_mut()) {
        data.insert(TOKEN_KEY.to_owned(), k8s_openapi::ByteString(token.into_bytes()));
    }
    secret
}
