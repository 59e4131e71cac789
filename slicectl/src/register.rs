//! `slicectl join --hub-kubeconfig`: registers a member cluster on the hub in one step and
//! writes its join file ([`crate::join_file`]).
//!
//! On the hub, with the admin's kubeconfig, server-side applied (field manager `slicectl`):
//! the MemberCluster ([`crate::join::member_cluster`]) and the worker's hub access
//! ([`crate::install::worker_hub_access`]: namespace `slicenet-cluster-<cluster>`, the
//! ServiceAccount `slicenet-worker` there, its Role, RoleBinding, and the ClusterRole and
//! binding limited to its own MemberCluster). Then a token for that ServiceAccount from the
//! TokenRequest API, bound in time ([`slice_api::hub_credential::REQUESTED_LIFETIME_SECONDS`]);
//! the worker renews it from then on.
//!
//! `--rotate` ([`rotate`]) deletes and recreates the ServiceAccount — which revokes every token
//! issued for it, the worker's renewals included (bound tokens name the account's UID) — and
//! writes a join file with a fresh token. Nothing of the slices changes on the hub: the
//! MemberCluster, its WorkerSlices and their status stay, and the member cluster's gateways, node
//! agents and pods go on as they are. The worker cannot reach the hub until the new token is in
//! its Secret (`slicectl install worker-credentials --join FILE | kubectl apply -f -`), so
//! hub-side changes wait for that, and the data plane runs on what it has.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use slice_api::crd::{MemberCluster, cluster_namespace};
use slice_api::rbac::{Access, Scope};

use crate::join::JoinOptions;
use crate::join_file::JoinFile;
use crate::manifest::Manifest;

/// The field manager of slicectl's writes.
pub const FIELD_MANAGER: &str = "slicectl";

const RBAC: &str = "rbac.authorization.k8s.io";

/// The requests `slicectl join` makes on the hub (as the admin): what the admin's credentials
/// need, and what the mock API checks in the tests. `OwnNamespace` is the cluster's namespace
/// `slicenet-cluster-<cluster>`.
pub const JOIN_ACCESS: &[Access] = &[
    // Server-side apply is a patch, and a create where the object is new.
    Access::new("get", "slicenet.io", "memberclusters", Scope::Cluster),
    Access::new("create", "slicenet.io", "memberclusters", Scope::Cluster),
    Access::new("patch", "slicenet.io", "memberclusters", Scope::Cluster),
    Access::new("create", "", "namespaces", Scope::Cluster),
    Access::new("patch", "", "namespaces", Scope::Cluster),
    Access::new("create", RBAC, "clusterroles", Scope::Cluster),
    Access::new("patch", RBAC, "clusterroles", Scope::Cluster),
    Access::new("create", RBAC, "clusterrolebindings", Scope::Cluster),
    Access::new("patch", RBAC, "clusterrolebindings", Scope::Cluster),
    Access::new("create", "", "serviceaccounts", Scope::OwnNamespace),
    Access::new("patch", "", "serviceaccounts", Scope::OwnNamespace),
    Access::new("delete", "", "serviceaccounts", Scope::OwnNamespace),
    Access::new("get", "", "serviceaccounts", Scope::OwnNamespace),
    Access::new("create", "", "serviceaccounts", Scope::OwnNamespace).sub("token"),
    Access::new("create", RBAC, "roles", Scope::OwnNamespace),
    Access::new("patch", RBAC, "roles", Scope::OwnNamespace),
    Access::new("create", RBAC, "rolebindings", Scope::OwnNamespace),
    Access::new("patch", RBAC, "rolebindings", Scope::OwnNamespace),
];

/// Where the hub is and how its certificate is checked, for the join file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEndpoint {
    /// The URL the member cluster's pods use.
    pub server: String,
    /// The hub's CA, PEM, base64.
    pub certificate_authority_data: String,
}

/// The hub's URL and CA from the admin's kubeconfig (its current context's cluster); `server`
/// replaces the URL (the address the member cluster's pods reach, when the admin's is another,
/// e.g. `https://127.0.0.1:…` on kind).
///
/// # Errors
/// When the kubeconfig cannot be read, has no current cluster, or no CA (a join file without a CA
/// would make the worker trust any server).
pub fn hub_endpoint(kubeconfig: &std::path::Path, server: Option<&str>) -> Result<HubEndpoint> {
    use base64::Engine as _;
    let text =
        std::fs::read_to_string(kubeconfig).with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let config = kube::config::Kubeconfig::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("kubeconfig {} is not a kubeconfig", kubeconfig.display()))?;
    let context_name = config
        .current_context
        .clone()
        .filter(|c| !c.is_empty())
        .with_context(|| format!("kubeconfig {} has no current-context", kubeconfig.display()))?;
    let context = config
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .with_context(|| format!("kubeconfig {} has no context {context_name:?}", kubeconfig.display()))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .with_context(|| format!("kubeconfig {} has no cluster {:?}", kubeconfig.display(), context.cluster))?;
    let ca = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => data.trim().to_owned(),
        (None, Some(file)) => {
            let pem = std::fs::read(file).with_context(|| format!("reading the hub CA {file}"))?;
            base64::engine::general_purpose::STANDARD.encode(pem)
        }
        (None, None) => bail!(
            "kubeconfig {}'s cluster {:?} has no certificate-authority: the join file needs the hub's CA",
            kubeconfig.display(),
            context.cluster
        ),
    };
    let server = match server {
        Some(s) => s.to_owned(),
        None => cluster.server.clone().with_context(|| format!("cluster {:?} has no server", context.cluster))?,
    };
    if !server.starts_with("https://") {
        bail!("the hub server {server:?} is not an https:// URL");
    }
    Ok(HubEndpoint { server, certificate_authority_data: ca })
}

/// True when `server` names this machine (`localhost`, `127.0.0.0/8`, `::1`): an address the
/// admin's kubectl reaches (kind publishes its API server so) but a member cluster's pods do not.
#[must_use]
pub fn is_loopback_server(server: &str) -> bool {
    let rest = server.strip_prefix("https://").unwrap_or(server);
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        rest.split([':', '/']).next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What `slicectl join` applies on the hub for `opts`: the MemberCluster, then the worker's
/// access.
///
/// # Errors
/// When the options are invalid.
pub fn hub_objects(opts: &JoinOptions) -> Result<Manifest> {
    let mut m = Manifest::new();
    m.push(&crate::join::member_cluster(opts)?)?;
    m.extend(crate::install::worker_hub_access(&opts.cluster)?);
    Ok(m)
}

/// Server-side applies every object of `manifest`, in order.
///
/// # Errors
/// The first request that fails, naming the object.
pub async fn apply(client: &Client, manifest: &Manifest) -> Result<()> {
    for doc in manifest.documents() {
        let (api_version, kind) = doc.type_meta();
        let object: DynamicObject = serde_json::to_value(&doc.object)
            .and_then(serde_json::from_value)
            .with_context(|| format!("{kind} {}", doc.name()))?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        let resource = ApiResource::from_gvk_with_plural(&gvk, &crate::uninstall::plural(kind));
        let api: Api<DynamicObject> = match object.namespace() {
            Some(ns) => Api::namespaced_with(client.clone(), &ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        api.patch(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
            .await
            .with_context(|| format!("applying {kind} {} on the hub", doc.name()))?;
    }
    Ok(())
}

/// A new token for the worker's ServiceAccount on the hub.
async fn worker_token(client: &Client, cluster: &str) -> Result<String> {
    let namespace = cluster_namespace(cluster);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(slice_api::hub_credential::REQUESTED_LIFETIME_SECONDS),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let granted = accounts
        .create_token_request(crate::install::WORKER_NAME, &PostParams::default(), &request)
        .await
        .with_context(|| {
            format!("requesting a token for ServiceAccount {namespace}/{}", crate::install::WORKER_NAME)
        })?;
    granted
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .with_context(|| format!("the hub gave no token for {namespace}/{}", crate::install::WORKER_NAME))
}

/// Registers the cluster on the hub (idempotent: an existing registration is updated) and
/// returns its join file with a new token.
///
/// # Errors
/// When the options are invalid or a request fails.
pub async fn register(client: &Client, opts: &JoinOptions, hub: &HubEndpoint) -> Result<JoinFile> {
    apply(client, &hub_objects(opts)?).await?;
    let token = worker_token(client, &opts.cluster).await?;
    Ok(JoinFile::new(&opts.cluster, &hub.server, &hub.certificate_authority_data, &token))
}

/// Revokes every hub token of the cluster's worker (the ServiceAccount is deleted and made
/// again) and returns a join file with a new one. The MemberCluster and its slices are not
/// touched.
///
/// # Errors
/// When the cluster is not registered or a request fails.
pub async fn rotate(client: &Client, cluster: &str, hub: &HubEndpoint) -> Result<JoinFile> {
    crate::install::check_cluster_name(cluster)?;
    let members: Api<MemberCluster> = Api::all(client.clone());
    if members.get_opt(cluster).await.context("reading the MemberCluster")?.is_none() {
        bail!("cluster {cluster:?} is not registered on this hub: run `slicectl join` without --rotate first");
    }
    let namespace = cluster_namespace(cluster);
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let old_uid = accounts
        .get_opt(crate::install::WORKER_NAME)
        .await
        .context("reading the worker's ServiceAccount")?
        .and_then(|sa| sa.metadata.uid);
    match accounts.delete(crate::install::WORKER_NAME, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("deleting the worker's ServiceAccount (revoking its tokens)"),
    }
    // The access again: the ServiceAccount is new (a new UID, so the old tokens are invalid);
    // the roles and bindings are unchanged.
    apply(client, &crate::install::worker_hub_access(cluster)?).await?;
    let new_uid =
        accounts.get(crate::install::WORKER_NAME).await.context("reading the new ServiceAccount")?.metadata.uid;
    if old_uid.is_some() && new_uid == old_uid {
        bail!("the worker's ServiceAccount kept its UID {old_uid:?}: its old tokens were not revoked");
    }
    let token = worker_token(client, cluster).await?;
    Ok(JoinFile::new(cluster, &hub.server, &hub.certificate_authority_data, &token))
}
