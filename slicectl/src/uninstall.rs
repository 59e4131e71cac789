//! `slicectl uninstall worker|hub`: removes what `slicectl install` printed and what slicenet's
//! controllers made since, in an order where nothing blocks or brings anything back.
//!
//! Member cluster ([`worker_plan`]):
//! 1. Admission first: the pod webhook's configuration and the admission policies, so that no
//!    request below (and no pod created meanwhile) waits on a webhook that is going.
//! 2. The controllers: worker, webhook, slice-dns Deployments and the node agent DaemonSet. The
//!    node agents exit leaving the data plane as it is; nothing recreates what goes next.
//! 3. What the worker made ([`MANAGED_BY`](slice_operator::worker::objects::MANAGED_BY)
//!    labels): NetworkAttachmentDefinitions, ServiceImports, MCS EndpointSlices,
//!    NetworkPolicies; the `slicenet.io/slice` label it put on member namespaces; the slice DNS
//!    stanza it added to the Corefiles of `kube-system/coredns` and `node-local-dns`.
//! 4. The node cleanup DaemonSet `slicenet-node-cleanup`: `slicectl node-uninstall` on every
//!    node (slice-cni's conflist and binary, router namespaces, VXLANs, nftables, QoS, files),
//!    waited for until every node reports it done, then deleted.
//! 5. Everything else of the install, in reverse order (namespaces with their gateways, node
//!    ConfigMaps and Secrets; RBAC; CRDs are the hub's).
//!
//! One member leaving the hub ([`leave_plan`], `uninstall worker --hub-kubeconfig`): its
//! MemberCluster, its WorkerSlices (the gone worker's finalizer released) and its access.
//!
//! Hub ([`hub_plan`]): the SliceConfig webhook and admission policies; the hub controller and
//! webhook; every WorkerSlice, SliceConfig and MemberCluster with its finalizers released (their
//! controllers are gone and cannot); each member cluster's namespace and roles on the hub; the
//! rest of the install, CRDs last.
//!
//! Every deletion treats "not found" as done, so a second run or a run after a half-done one
//! finishes what is left; failures do not stop the steps after them and are reported together.
//! With `dry_run`, nothing is written: each line says what would go.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use serde_json::json;

use crate::manifest::Manifest;

/// The name of the node cleanup DaemonSet (in the node agents' namespace).
pub const NODE_CLEANUP_NAME: &str = "slicenet-node-cleanup";
/// The label selector of everything the worker makes.
pub const WORKER_MADE: &str = "app.kubernetes.io/managed-by=slicenet-worker";
/// The label selector of everything `slicectl install` and `join` make.
pub const INSTALLED: &str = "app.kubernetes.io/part-of=slicenet";

/// A kind of object, as the API serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
}

impl Kind {
    fn new(api_version: &str, kind: &str) -> Self {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Self { group: group.into(), version: version.into(), kind: kind.into(), plural: plural(kind) }
    }

    fn resource(&self) -> ApiResource {
        let gvk = kube::api::GroupVersionKind::gvk(&self.group, &self.version, &self.kind);
        ApiResource::from_gvk_with_plural(&gvk, &self.plural)
    }
}

/// The resource name of a kind of slicenet's manifests and objects.
#[must_use]
pub fn plural(kind: &str) -> String {
    match kind {
        "NetworkAttachmentDefinition" => "network-attachment-definitions".into(),
        k if k.ends_with('y') => format!("{}ies", k[..k.len() - 1].to_lowercase()),
        k => format!("{}s", k.to_lowercase()),
    }
}

/// One step of an uninstall.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// One object (`namespace` `None`: cluster-scoped).
    Delete { kind: Kind, namespace: Option<String>, name: String },
    /// Every object of `kind` matching `selector`, in every namespace.
    DeleteSelected { kind: Kind, selector: String },
    /// Every object of `kind` (in `namespace`, or every namespace): finalizers released, then
    /// deleted.
    ReleaseAndDelete { kind: Kind, namespace: Option<String> },
    /// The `slicenet.io/slice` label the worker put on namespaces (and its note).
    UnlabelNamespaces,
    /// The slice DNS stanza the worker added to CoreDNS's and NodeLocal DNSCache's Corefiles.
    RemoveDnsStanza,
    /// The node cleanup DaemonSet: applied, waited for on every node, deleted.
    NodeCleanup { daemonset: serde_json::Value },
}

impl Step {
    fn delete_doc(doc: &crate::manifest::Document) -> Self {
        let (api_version, kind) = doc.type_meta();
        let namespace =
            doc.object.get("metadata").and_then(|m| m.get("namespace")).and_then(|n| n.as_str()).map(str::to_owned);
        Step::Delete { kind: Kind::new(api_version, kind), namespace, name: doc.name().to_owned() }
    }
}

const ADMISSION: [&str; 4] = [
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];
const CONTROLLERS: [&str; 2] = ["Deployment", "DaemonSet"];

/// Admission first, controllers next, then `middle`, then the rest of `manifest` in reverse.
fn plan(manifest: &Manifest, middle: Vec<Step>) -> Vec<Step> {
    let docs = manifest.documents();
    let is = |d: &&crate::manifest::Document, kinds: &[&str]| kinds.contains(&d.type_meta().1);
    let mut steps: Vec<Step> = docs.iter().filter(|d| is(d, &ADMISSION)).map(Step::delete_doc).collect();
    steps.extend(docs.iter().filter(|d| is(d, &CONTROLLERS)).map(Step::delete_doc));
    steps.extend(middle);
    let rest = docs.iter().rev().filter(|d| !is(d, &ADMISSION) && !is(d, &CONTROLLERS));
    // Namespaced objects before namespaces and cluster-scoped ones, CRDs last.
    let (crds, rest): (Vec<_>, Vec<_>) = rest.partition(|d| d.type_meta().1 == "CustomResourceDefinition");
    steps.extend(rest.into_iter().map(Step::delete_doc));
    steps.extend(crds.into_iter().map(Step::delete_doc));
    steps
}

/// The member cluster's uninstall, for the install made with `image`.
///
/// # Errors
/// When the install manifest cannot be built.
pub fn worker_plan(image: &str) -> Result<Vec<Step>> {
    let opts = crate::install::Options::generate(image)?;
    // Object names do not depend on the hub credentials: any valid kubeconfig does.
    let join = crate::join_file::JoinFile::new("uninstall", "https://hub.invalid", "", "x");
    let manifest = crate::install::worker(&opts, "uninstall", &join.kubeconfig(), None)?;
    let made = [
        Kind::new("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition"),
        Kind::new("multicluster.x-k8s.io/v1beta1", "ServiceImport"),
        Kind::new("multicluster.x-k8s.io/v1alpha1", "ServiceImport"),
        Kind::new("discovery.k8s.io/v1", "EndpointSlice"),
        Kind::new("networking.k8s.io/v1", "NetworkPolicy"),
    ];
    let mut middle: Vec<Step> =
        made.into_iter().map(|kind| Step::DeleteSelected { kind, selector: WORKER_MADE.into() }).collect();
    middle.push(Step::UnlabelNamespaces);
    middle.push(Step::RemoveDnsStanza);
    middle.push(Step::NodeCleanup { daemonset: serde_json::to_value(node_cleanup_daemonset(image))? });
    Ok(plan(&manifest, middle))
}

/// The hub's uninstall, for the install made with `image`.
///
/// # Errors
/// When the install manifest cannot be built.
pub fn hub_plan(image: &str) -> Result<Vec<Step>> {
    let manifest = crate::install::hub(&crate::install::Options::generate(image)?)?;
    let v = "slicenet.io/v1alpha1";
    let mut middle: Vec<Step> = ["WorkerSlice", "SliceConfig", "MemberCluster"]
        .into_iter()
        .map(|k| Step::ReleaseAndDelete { kind: Kind::new(v, k), namespace: None })
        .collect();
    // What `slicectl join` made per member cluster: its namespace, ClusterRole and binding.
    for (api_version, kind) in [
        ("v1", "Namespace"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ] {
        let selector = format!("{INSTALLED},app.kubernetes.io/name={}", crate::install::WORKER_NAME);
        let selector =
            if kind == "Namespace" { format!("{INSTALLED},app.kubernetes.io/name=slicenet") } else { selector };
        middle.push(Step::DeleteSelected { kind: Kind::new(api_version, kind), selector });
    }
    Ok(plan(&manifest, middle))
}

/// On the hub, one member cluster leaving (after `uninstall worker` removed slicenet from it):
/// its MemberCluster deleted (the hub controller stops planning it, deletes its WorkerSlices and
/// namespace, then releases its finalizer), the worker's finalizer released on its WorkerSlices
/// (that worker is gone and cannot), and its access removed (what `join` made).
///
/// # Errors
/// When `cluster` is not a valid name.
pub fn leave_plan(cluster: &str) -> Result<Vec<Step>> {
    crate::install::check_cluster_name(cluster)?;
    let v = "slicenet.io/v1alpha1";
    let mut steps = vec![
        Step::Delete { kind: Kind::new(v, "MemberCluster"), namespace: None, name: cluster.to_owned() },
        Step::ReleaseAndDelete {
            kind: Kind::new(v, "WorkerSlice"),
            namespace: Some(slice_api::crd::cluster_namespace(cluster)),
        },
    ];
    let access = crate::install::worker_hub_access(cluster)?;
    steps.extend(access.documents().iter().rev().map(Step::delete_doc));
    Ok(steps)
}

/// The DaemonSet that runs `slicectl node-uninstall` on every node: the node agent's pod
/// (host network, privileged, the same host directories), the removal as its init container,
/// then `sleep` so that a Ready pod means a clean node.
#[must_use]
pub fn node_cleanup_daemonset(image: &str) -> k8s_openapi::api::apps::v1::DaemonSet {
    use crate::install::workloads::node_agent_daemonset;
    let mut ds = node_agent_daemonset(image);
    let name = NODE_CLEANUP_NAME;
    ds.metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(slice_api::names::NODE_NAMESPACE.to_owned()),
        labels: Some(crate::install::labels(name)),
        ..Default::default()
    };
    let selector = std::collections::BTreeMap::from([("app.kubernetes.io/name".to_owned(), name.to_owned())]);
    ds.spec.selector.match_labels = Some(selector);
    let template = &mut ds.spec.template;
    template.metadata = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        labels: Some(crate::install::labels(name)),
        ..Default::default()
    });
    let pod = template.spec.as_mut().expect("the node agent's pod spec");
    // No API access: the cleanup works on the node only.
    pod.service_account_name = None;
    pod.automount_service_account_token = Some(false);
    let mut cleanup = pod.containers[0].clone();
    cleanup.name = "node-uninstall".into();
    cleanup.command = Some(vec!["/usr/local/bin/slicectl".into()]);
    cleanup.args = Some(
        ["node-uninstall", "--bin-dir", "/host/opt/cni/bin", "--conf-dir", "/host/etc/cni/net.d"]
            .map(str::to_owned)
            .to_vec(),
    );
    cleanup.env = None;
    cleanup.ports = None;
    cleanup.liveness_probe = None;
    cleanup.readiness_probe = None;
    cleanup.startup_probe = None;
    let mut mounts = cleanup.volume_mounts.take().unwrap_or_default();
    for m in pod.init_containers.iter().flatten().flat_map(|c| c.volume_mounts.iter().flatten()) {
        mounts.push(m.clone());
    }
    cleanup.volume_mounts = Some(mounts);
    let mut done = pod.containers[0].clone();
    done.name = "done".into();
    done.command = Some(vec!["sleep".into(), "infinity".into()]);
    done.args = None;
    done.env = None;
    done.ports = None;
    done.liveness_probe = None;
    done.readiness_probe = None;
    done.startup_probe = None;
    done.volume_mounts = None;
    done.security_context = pod.init_containers.as_ref().and_then(|c| c[0].security_context.clone());
    done.resources = pod.init_containers.as_ref().and_then(|c| c[0].resources.clone());
    pod.init_containers = Some(vec![cleanup]);
    pod.containers = vec![done];
    ds
}

fn api(client: &Client, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &kind.resource()),
        None => Api::all_with(client.clone(), &kind.resource()),
    }
}

fn describe(kind: &Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", kind.kind),
        None => format!("{} {name}", kind.kind),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Deletes one object; `Ok(false)` when it was not there or is being deleted already (a
/// namespace that is terminating: a second run has nothing to add).
async fn delete(client: &Client, kind: &Kind, namespace: Option<&str>, name: &str) -> Result<bool> {
    let objects = api(client, kind, namespace);
    match objects.get_opt(name).await {
        Ok(None) => return Ok(false),
        // Being deleted: a terminating namespace, or an object whose controller still has to
        // release its finalizer (the hub's, on a leaving MemberCluster).
        Ok(Some(obj)) if obj.metadata.deletion_timestamp.is_some() => return Ok(false),
        // Deleting tells more than a refused read (or a kind the API does not serve).
        Ok(Some(_)) | Err(_) => {}
    }
    match objects.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting {}", describe(kind, namespace, name))),
    }
}

/// The objects of `kind` in every namespace (none when the API does not serve the kind).
async fn list(client: &Client, kind: &Kind, selector: Option<&str>) -> Result<Vec<DynamicObject>> {
    list_with(client, kind, None, selector).await
}

/// The objects of `kind` in `namespace` (or every namespace).
async fn list_in(client: &Client, kind: &Kind, namespace: Option<&str>) -> Result<Vec<DynamicObject>> {
    list_with(client, kind, namespace, None).await
}

async fn list_with(
    client: &Client,
    kind: &Kind,
    namespace: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<DynamicObject>> {
    let params = selector.map_or_else(ListParams::default, |s| ListParams::default().labels(s));
    match api(client, kind, namespace).list(&params).await {
        Ok(list) => Ok(list.items),
        Err(e) if is_not_found(&e) => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", kind.plural)),
    }
}

/// How long [`run`] waits for the node cleanup on every node.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub node_cleanup: Duration,
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { node_cleanup: Duration::from_secs(300), poll: Duration::from_secs(2) }
    }
}

/// Runs `steps` (or with `dry_run`, says what they would do); returns one line per object.
///
/// # Errors
/// Every step that failed, after all were tried.
pub async fn run(client: &Client, steps: &[Step], dry_run: bool, timing: Timing) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for step in steps {
        if let Err(e) = run_step(client, step, dry_run, timing, &mut lines).await {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("{} step(s) failed: {}", failures.len(), failures.join("; "));
    }
    Ok(lines)
}

async fn run_step(client: &Client, step: &Step, dry_run: bool, timing: Timing, lines: &mut Vec<String>) -> Result<()> {
    let verb = if dry_run { "would delete" } else { "deleted" };
    match step {
        Step::Delete { kind, namespace, name } => {
            let what = describe(kind, namespace.as_deref(), name);
            if dry_run {
                if api(client, kind, namespace.as_deref()).get_opt(name).await.ok().flatten().is_some() {
                    lines.push(format!("{verb} {what}"));
                }
            } else if delete(client, kind, namespace.as_deref(), name).await? {
                lines.push(format!("{verb} {what}"));
            }
        }
        Step::DeleteSelected { kind, selector } => {
            for obj in list(client, kind, Some(selector)).await? {
                let (ns, name) = (obj.namespace(), obj.name_any());
                if dry_run || delete(client, kind, ns.as_deref(), &name).await? {
                    lines.push(format!("{verb} {}", describe(kind, ns.as_deref(), &name)));
                }
            }
        }
        Step::ReleaseAndDelete { kind, namespace } => {
            for obj in list_in(client, kind, namespace.as_deref()).await? {
                let (ns, name) = (obj.namespace(), obj.name_any());
                let what = describe(kind, ns.as_deref(), &name);
                if dry_run {
                    lines.push(format!("{verb} {what} (finalizers released)"));
                    continue;
                }
                let released = !obj.finalizers().is_empty();
                if released {
                    let patch = json!({"metadata": {"finalizers": null}});
                    match api(client, kind, ns.as_deref())
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => continue,
                        Err(e) => return Err(e).with_context(|| format!("releasing the finalizers of {what}")),
                    }
                }
                if delete(client, kind, ns.as_deref(), &name).await? || released {
                    lines.push(format!("{verb} {what} (finalizers released)"));
                }
            }
        }
        Step::UnlabelNamespaces => {
            let kind = Kind::new("v1", "Namespace");
            let labelled = slice_operator::worker::objects::LABELLED_BY_ANNOTATION;
            for ns in list(client, &kind, None).await? {
                if !ns.annotations().contains_key(labelled) {
                    continue;
                }
                let name = ns.name_any();
                if !dry_run {
                    let patch = json!({"metadata": {
                        "labels": {slice_api::names::SLICE_LABEL: null},
                        "annotations": {labelled: null},
                    }});
                    match api(client, &kind, None).patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => continue,
                        Err(e) => {
                            return Err(e).with_context(|| format!("removing the slice label of namespace {name}"));
                        }
                    }
                }
                let verb = if dry_run { "would remove" } else { "removed" };
                lines.push(format!("{verb} the label {} of Namespace {name}", slice_api::names::SLICE_LABEL));
            }
        }
        Step::RemoveDnsStanza => remove_dns_stanza(client, dry_run, lines).await?,
        Step::NodeCleanup { daemonset } => node_cleanup(client, daemonset, dry_run, timing, lines).await?,
    }
    Ok(())
}

async fn remove_dns_stanza(client: &Client, dry_run: bool, lines: &mut Vec<String>) -> Result<()> {
    use slice_api::corefile::{COREFILE_KEY, without_stanza};
    use slice_api::names::{COREDNS_CONFIG_MAP, KUBE_SYSTEM_NAMESPACE, NODE_LOCAL_DNS_CONFIG_MAP};
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), KUBE_SYSTEM_NAMESPACE);
    for name in [COREDNS_CONFIG_MAP, NODE_LOCAL_DNS_CONFIG_MAP] {
        let what = format!("ConfigMap {KUBE_SYSTEM_NAMESPACE}/{name}");
        let Some(cm) = maps.get_opt(name).await.with_context(|| format!("reading {what}"))? else { continue };
        let Some(current) = cm.data.as_ref().and_then(|d| d.get(COREFILE_KEY)) else { continue };
        let next = without_stanza(current).with_context(|| format!("the Corefile of {what}"))?;
        if &next == current {
            continue;
        }
        if !dry_run {
            let patch =
                json!({"metadata": {"resourceVersion": cm.metadata.resource_version}, "data": {COREFILE_KEY: next}});
            maps.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("removing the slice DNS stanza from {what}"))?;
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        lines.push(format!("{verb} the slice DNS stanza from {what}"));
    }
    Ok(())
}

async fn node_cleanup(
    client: &Client,
    daemonset: &serde_json::Value,
    dry_run: bool,
    timing: Timing,
    lines: &mut Vec<String>,
) -> Result<()> {
    let kind = Kind::new("apps/v1", "DaemonSet");
    let ns = slice_api::names::NODE_NAMESPACE;
    // The namespace goes only after every node was cleaned (the steps after this one): when it
    // is gone, so is everything the cleanup would remove, and the DaemonSet could not be made.
    let namespaces = api(client, &Kind::new("v1", "Namespace"), None);
    match namespaces.get_opt(ns).await.with_context(|| format!("reading Namespace {ns}"))? {
        None => return Ok(()),
        Some(n) if n.metadata.deletion_timestamp.is_some() => return Ok(()),
        Some(_) => {}
    }
    if dry_run {
        lines.push(format!(
            "would run `slicectl node-uninstall` on every node (DaemonSet {ns}/{NODE_CLEANUP_NAME}), then delete it"
        ));
        return Ok(());
    }
    let daemonsets = api(client, &kind, Some(ns));
    let object: DynamicObject = serde_json::from_value(daemonset.clone()).context("the node cleanup DaemonSet")?;
    daemonsets
        .patch(NODE_CLEANUP_NAME, &PatchParams::apply(crate::register::FIELD_MANAGER).force(), &Patch::Apply(&object))
        .await
        .with_context(|| format!("applying DaemonSet {ns}/{NODE_CLEANUP_NAME}"))?;
    let deadline = Instant::now() + timing.node_cleanup;
    loop {
        let ds = daemonsets.get(NODE_CLEANUP_NAME).await.context("reading the node cleanup DaemonSet")?;
        let status = ds.data.get("status");
        let number = |key: &str| status.and_then(|s| s.get(key)).and_then(serde_json::Value::as_i64);
        let observed = number("observedGeneration").unwrap_or(0) >= ds.metadata.generation.unwrap_or(1);
        if let (true, Some(desired), Some(ready)) = (observed, number("desiredNumberScheduled"), number("numberReady"))
            && ready >= desired
        {
            lines.push(format!("cleaned {desired} node(s) (DaemonSet {ns}/{NODE_CLEANUP_NAME})"));
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the node cleanup did not finish on every node within {:?}: see `kubectl -n {ns} get pods -l \
                 app.kubernetes.io/name={NODE_CLEANUP_NAME}` and their init container's log; the DaemonSet is left \
                 for you to look at",
                timing.node_cleanup
            );
        }
        tokio::time::sleep(timing.poll).await;
    }
    delete(client, &kind, Some(ns), NODE_CLEANUP_NAME).await?;
    Ok(())
}
