//! The worker's whole decision, pure: from what the hub and the member cluster show
//! ([`Observed`]) to the ordered list of [`Write`]s that brings the cluster in line, and then
//! (once those are applied and the gateway Services have their ports) the WorkerSlice statuses.
//!
//! Order of the writes, so that a failure part way leaves nothing dangling:
//! 1. the finalizer on each new WorkerSlice (before anything is made for it);
//! 2. namespace labels (set, then removed);
//! 3. per slice in name order: the key Secret of each gateway replica (created once), the
//!    gateway configuration Secret, the StatefulSet, each replica's Service;
//! 4. node agent ConfigMaps (node order), the membership ConfigMap, the NADs;
//! 5. deletions: whatever the worker made that is no longer wanted (a deleted slice's objects,
//!    a removed node's ConfigMap, a NAD of a namespace that left, the key Secrets and Services of
//!    replicas scaled away, the gateway Deployment of earlier versions once the StatefulSet's
//!    ordinal 0 is ready);
//!
//! then [`decide_status`] (statuses, with each peer's tunnel state from [`super::tunnels`] and
//! the count of pods on the slice from [`connected_pods`]), then [`decide_release`] (finalizers
//! of deleted slices whose objects are gone). Objects are compared field by field with what the
//! API returned (fields the server adds are ignored), so a pass over an unchanged cluster writes
//! nothing; a status that only the clock changed is written at most once a minute.
//!
//! **Gateway replicas (issue 13).** The node agents route each remote prefix via the replicas
//! that are ready and have a slice address ([`live_gateway_pods`]): `via` the first, `alsoVia`
//! the others, in ordinal order. Migration from the single gateway Deployment of earlier
//! versions: the StatefulSet is made beside it, and while the StatefulSet's ordinal 0 is not
//! ready the Deployment's running pod stands in for it (it holds ordinal 0's key); once ordinal
//! 0 is ready the Deployment is no longer wanted and is deleted (one handshake's interruption,
//! at upgrade only). With HostPort exposure the Deployment is deleted at once: its pod holds
//! the host port a replica needs on its node. The slice's tunnels (`status.peers`) come from the
//! metrics of one replica, the lowest live ordinal ([`gateway_metrics_address`]); with several
//! replicas every running one's metrics are read too ([`replicas_to_scrape`]) and each replica's
//! status says how many peer clusters it has a live tunnel to and which it has none to
//! ([`replica_tunnels`]).
//!
//! A WorkerSlice is `Ready` only when a gateway replica has its slice address *and* the tunnel to
//! every peer in its spec is `Up` (from the gateway's metrics); otherwise `Ready=False` with the
//! first problem: the slice's own (`InvalidSpec`, `KeySecretInvalid`, …), `GatewayPending`, or
//! `TunnelsDown` naming the peers whose tunnel is not up.
//!
//! Events: [`Decision::notices`] (a namespace joining or leaving a slice, a gateway key made),
//! [`status_notices`] (Ready flips, tunnels coming up or going down), [`release_notice`] and
//! [`write_subject`] (what a failed write is about) — all from changes, never from a state that
//! merely persists.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::DynamicObject;
use serde_json::Value;
use slice_api::crd::{
    Condition, GATEWAY_NAMESPACE, GatewayExposure, MemberCluster, WORKER_FINALIZER, WorkerSlice, WorkerSliceStatus,
    condition, set_condition,
};
use slice_api::mcs::{McsVersion, ServiceExport};
use slice_api::multus;
use slice_api::names::{NETWORK_STATUS_ANNOTATION, SLICE_LABEL};
use slice_api::wireguard::Key;

use super::keys::{self, KeyPair};
use super::objects::{self, GatewayDefaults, NodeDefaults, ObservedNamespace, PlannedSlice};
use super::plan::{self, ClusterNode, TypedGateway, TypedSpec};
use super::policy::POLICIES_ACCEPTED;
use super::tunnels::{self, TunnelState};
use crate::events::{Notice, reason, reference, reference_to};
use k8s_openapi::api::core::v1::ObjectReference;

/// The kinds of object the worker writes in its cluster (besides namespace labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Secret,
    ConfigMap,
    /// The gateway Deployment of earlier versions: only ever kept (during the migration) or
    /// deleted.
    Deployment,
    /// The gateway StatefulSet of each slice.
    StatefulSet,
    Service,
    NetworkAttachmentDefinition,
    /// `multicluster.x-k8s.io` ServiceImports in member namespaces.
    ServiceImport,
    /// MCS EndpointSlices (`discovery.k8s.io`) in member namespaces.
    EndpointSlice,
    /// `networking.k8s.io` NetworkPolicies of namespace isolation, in member namespaces.
    NetworkPolicy,
}

/// One write the worker makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Hub: set the WorkerSlice's finalizers (ours added), guarded by its resourceVersion.
    AddFinalizer { name: String, finalizers: Vec<String>, resource_version: Option<String> },
    /// Member cluster: set or remove a namespace's slice label.
    LabelNamespace(objects::LabelChange),
    /// Member cluster: create an object once (the key Secret).
    Create { kind: Kind, namespace: String, name: String, body: Value },
    /// Member cluster: server-side apply of an object.
    Apply { kind: Kind, namespace: String, name: String, body: Value },
    /// Member cluster: delete an object the worker made.
    Delete { kind: Kind, namespace: String, name: String },
    /// Hub: the WorkerSlice's status.
    PatchStatus { name: String, status: WorkerSliceStatus },
    /// Hub: set the WorkerSlice's finalizers (ours removed), guarded by its resourceVersion.
    RemoveFinalizer { name: String, finalizers: Vec<String>, resource_version: Option<String> },
    /// Member cluster: the status of a ServiceImport the worker made (`status.clusters`).
    PatchImportStatus { namespace: String, name: String, status: Value },
    /// Member cluster: the conditions of a user's ServiceExport.
    PatchExportStatus { namespace: String, name: String, conditions: Vec<Condition> },
    /// Member cluster: one key of a ConfigMap the worker does not own (the CoreDNS Corefile),
    /// guarded by its resourceVersion.
    PatchConfigData { namespace: String, name: String, key: String, value: String, resource_version: Option<String> },
}

/// Everything the decision reads.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// This cluster's WorkerSlices on the hub.
    pub worker_slices: Vec<WorkerSlice>,
    /// This cluster's MemberCluster on the hub (published gateway addresses, Multus).
    pub member_cluster: Option<MemberCluster>,
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    /// The worker's Secrets, Deployments, StatefulSets and Services in `slicenet-gateway`, its
    /// ConfigMaps in `slicenet-system`.
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    /// Gateway pods in `slicenet-system`.
    pub pods: Vec<Pod>,
    /// The worker's NADs (all namespaces); empty when the cluster does not use Multus.
    pub nads: Vec<DynamicObject>,
    /// Running pods of the namespaces [`namespaces_to_count`] names (for `connectedPods`).
    pub member_pods: Vec<Pod>,
    /// By slice: the text its gateway serves on `/metrics`, or why it could not be read (the
    /// replica that speaks for the slice's tunnels: [`gateway_metrics_address`]).
    pub gateway_metrics: BTreeMap<String, Result<String, String>>,
    /// By slice, then ordinal: the metrics of each running replica of a slice with several
    /// ([`replicas_to_scrape`]), or why they could not be read.
    pub replica_metrics: BTreeMap<String, BTreeMap<u32, Result<String, String>>>,
    /// The version of the MCS API the cluster serves, in which the worker reads and writes.
    pub mcs_version: McsVersion,
    /// Every ServiceExport of the cluster (none when the MCS CRDs are not installed), in
    /// whichever version it was read.
    pub service_exports: Vec<ServiceExport>,
    /// The Services of the namespaces with a ServiceExport.
    pub exported_services: Vec<Service>,
    /// The EndpointSlices (`kubernetes.io/service-name`) of the namespaces with a ServiceExport.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// The worker's ServiceImports and MCS EndpointSlices (all namespaces).
    pub service_imports: Vec<DynamicObject>,
    pub mcs_endpoint_slices: Vec<DynamicObject>,
    /// The slice-dns Service in `slicenet-system`, if any.
    pub dns_service: Option<Service>,
    /// `kube-system`'s `coredns` and `node-local-dns` ConfigMaps, those that exist.
    pub dns_config_maps: Vec<ConfigMap>,
    /// Every MultiNetworkPolicy of the cluster (none when its CRD is not installed).
    pub multi_network_policies: Vec<DynamicObject>,
    /// The worker's NetworkPolicies (namespace isolation), all namespaces.
    pub network_policies: Vec<DynamicObject>,
}

/// Settings of the decision that come from the command line.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// This member cluster's name.
    pub cluster: String,
    pub node_defaults: NodeDefaults,
    pub gateway: GatewayDefaults,
    /// Whether to write NADs; `None` follows the MemberCluster's `spec.multus`.
    pub multus: Option<bool>,
    /// RFC 3339 time of the pass (condition transitions); set by the pass.
    pub now: String,
}

impl Settings {
    /// Whether NADs are wanted, given what the hub says.
    #[must_use]
    pub fn uses_multus(&self, member: Option<&MemberCluster>) -> bool {
        self.multus.unwrap_or_else(|| member.is_some_and(|m| m.spec.multus))
    }
}

/// Why a slice is not ready, for its Ready condition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    reason: &'static str,
    message: String,
}

/// What the first phase decided, carried to the status phase.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub writes: Vec<Write>,
    /// Active slices as planned (with their allocations), by WorkerSlice name.
    pub planned: BTreeMap<String, PlannedSlice>,
    /// Public keys of active slices (ordinal 0's), by WorkerSlice name.
    pub public_keys: BTreeMap<String, String>,
    /// Public keys of every gateway replica of active slices, in ordinal order, by WorkerSlice
    /// name.
    pub replica_keys: BTreeMap<String, Vec<String>>,
    /// The Events worth publishing, each once the write at its index succeeded.
    pub notices: Vec<(usize, Notice)>,
    problems: BTreeMap<String, Problem>,
    notes: BTreeMap<String, String>,
    /// What each active slice exports (its WorkerSlice's `status.exports`), by WorkerSlice name.
    pub exports: BTreeMap<String, Vec<slice_api::crd::ExportedService>>,
    /// This cluster's part of each active slice's pod directory (`status.pods`), by WorkerSlice
    /// name.
    pub pods: BTreeMap<String, Vec<slice_api::policy::PodGroup>>,
    /// Each active slice's policies: how many, and those the node agents refuse, by WorkerSlice
    /// name (its `PoliciesAccepted` condition).
    pub policies: BTreeMap<String, (usize, Vec<super::policy::Rejected>)>,
    /// Events of the pass that no write stands for (a refused policy), published every pass
    /// (the recorder folds repeats into a series).
    pub pass_notices: Vec<Notice>,
}

fn is_deleting(ws: &WorkerSlice) -> bool {
    ws.metadata.deletion_timestamp.is_some()
}

fn has_finalizer(ws: &WorkerSlice) -> bool {
    ws.finalizers().iter().any(|f| f == WORKER_FINALIZER)
}

/// The nodes the worker plans for: each Node with a usable `InternalIP` (else `ExternalIP`), by
/// name. Nodes without one are left out until they have one.
#[must_use]
pub fn cluster_nodes(nodes: &[Node]) -> Vec<ClusterNode> {
    let mut out: Vec<ClusterNode> = nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| {
            let addresses = n.status.as_ref()?.addresses.as_ref()?;
            let pick = |t: &str| {
                addresses.iter().filter(|a| a.type_ == t).find_map(|a| a.address.trim().parse::<IpAddr>().ok())
            };
            let address = pick("InternalIP").or_else(|| pick("ExternalIP"))?;
            Some(ClusterNode::new(n.name_any(), address))
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.name == b.name);
    out
}

fn is_running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn pod_condition<'a>(p: &'a Pod, type_: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

/// Running and ready: its `Ready` condition is true (a running pod that reports no conditions —
/// the lab's — counts as ready).
fn is_ready(p: &Pod) -> bool {
    is_running(p) && pod_condition(p, "Ready").is_none_or(|c| c.status == "True")
}

/// A slice's gateway pods (StatefulSet or earlier Deployment), not deleting, by name.
fn gateway_pods<'a>(pods: &'a [Pod], slice: &str) -> Vec<&'a Pod> {
    let mut out: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.labels().get(SLICE_LABEL).map(String::as_str) == Some(slice))
        .filter(|p| p.labels().get(objects::NAME_LABEL).map(String::as_str) == Some(objects::GATEWAY_NAME))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    out.sort_by_key(|p| p.name_any());
    out
}

/// The gateway replicas of a slice that carry traffic, in ordinal order: each ordinal below
/// `replicas` whose StatefulSet pod is ready; for ordinal 0, while its pod is not, a running pod
/// of the gateway Deployment of earlier versions (the migration: it holds ordinal 0's key).
#[must_use]
pub fn live_gateway_pods<'a>(pods: &'a [Pod], slice: &str, replicas: u32) -> Vec<(u32, &'a Pod)> {
    let candidates = gateway_pods(pods, slice);
    let mut out = Vec::new();
    for ordinal in 0..replicas.max(1) {
        let name = objects::replica_pod_name(slice, ordinal);
        let replica = candidates.iter().find(|p| p.name_any() == name && is_ready(p));
        let legacy = || {
            candidates
                .iter()
                .find(|p| objects::replica_ordinal(slice, &p.name_any()).is_none() && is_running(p))
                .filter(|_| ordinal == 0)
        };
        if let Some(p) = replica.or_else(legacy) {
            out.push((ordinal, *p));
        }
    }
    out
}

/// Whether the StatefulSet's pod of `ordinal` is ready.
fn replica_ready(pods: &[Pod], slice: &str, ordinal: u32) -> bool {
    let name = objects::replica_pod_name(slice, ordinal);
    gateway_pods(pods, slice).iter().any(|p| p.name_any() == name && is_ready(p))
}

/// Every gateway replica of a slice as the status reports it (issue 13): for each ordinal below
/// `replicas`, its key (`public_keys`, by ordinal), endpoint (`endpoints`, by ordinal), the
/// node its pod runs on, and `Up` (running and ready), `Down` (with the container's waiting or
/// last termination reason) or `Pending` (no pod yet, or not scheduled: the scheduler's
/// message, e.g. no node left that the anti-affinity allows).
#[must_use]
pub fn replica_statuses(
    pods: &[Pod],
    slice: &str,
    replicas: u32,
    public_keys: &[String],
    endpoints: &[Option<String>],
) -> Vec<slice_api::crd::GatewayReplicaStatus> {
    use slice_api::crd::GatewayReplicaStatus;
    let candidates = gateway_pods(pods, slice);
    (0..replicas.max(1))
        .map(|ordinal| {
            let name = objects::replica_pod_name(slice, ordinal);
            let index = usize::try_from(ordinal).unwrap_or(usize::MAX);
            let (state, reason, node) = match candidates.iter().find(|p| p.name_any() == name) {
                None => ("Pending", "no gateway pod yet".to_owned(), None),
                Some(pod) => pod_state(pod),
            };
            GatewayReplicaStatus {
                ordinal,
                public_key: public_keys.get(index).cloned(),
                endpoint: endpoints.get(index).cloned().flatten(),
                node,
                state: state.to_owned(),
                reason,
                ..GatewayReplicaStatus::default()
            }
        })
        .collect()
}

/// (state, reason, node) of a gateway replica's pod.
fn pod_state(pod: &Pod) -> (&'static str, String, Option<String>) {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let status = pod.status.as_ref();
    let container = status.and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first());
    let waiting = container.and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let last = container.and_then(|c| c.last_state.as_ref()?.terminated.as_ref()?.reason.clone());
    if node.is_none() {
        let why = pod_condition(pod, "PodScheduled")
            .and_then(|c| c.message.clone())
            .unwrap_or_else(|| "not scheduled yet".to_owned());
        ("Pending", format!("not scheduled: {why}"), None)
    } else if is_ready(pod) {
        ("Up", String::new(), node)
    } else {
        let why = match (waiting, last) {
            (Some(w), Some(l)) => format!("{w} (last exit: {l})"),
            (Some(w), None) => w,
            (None, Some(l)) => format!("not ready (last exit: {l})"),
            (None, None) => "not running and ready".to_owned(),
        };
        ("Down", why, node)
    }
}

/// The entries of a pod's `k8s.v1.cni.cncf.io/network-status` annotation (none when it is
/// missing or not a JSON list).
fn network_status(pod: &Pod) -> Vec<Value> {
    pod.annotations().get(NETWORK_STATUS_ANNOTATION).and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default()
}

/// A pod's slice address inside `cluster_prefix`, from its `k8s.v1.cni.cncf.io/network-status`
/// annotation.
fn slice_address(pod: &Pod, cluster_prefix: ipnet::IpNet) -> Option<IpAddr> {
    network_status(pod).iter().find_map(|e| {
        e.get("ips")?
            .as_array()?
            .iter()
            .filter_map(|ip| ip.as_str()?.parse::<IpAddr>().ok())
            .find(|ip| cluster_prefix.contains(ip))
    })
}

/// The slice addresses inside `cluster_prefix` of a slice's live gateway replicas
/// ([`live_gateway_pods`]), in ordinal order: a replica without one yet is left out.
#[must_use]
pub fn gateway_replica_addresses(
    pods: &[Pod],
    slice: &str,
    replicas: u32,
    cluster_prefix: ipnet::IpNet,
) -> Vec<IpAddr> {
    live_gateway_pods(pods, slice, replicas).into_iter().filter_map(|(_, p)| slice_address(p, cluster_prefix)).collect()
}

/// Where the worker reads a slice's gateway metrics: the pod IP (its primary network,
/// `status.podIP`) and [`objects::GATEWAY_METRICS_PORT`] of the first live replica
/// ([`live_gateway_pods`]) with one, else of any running gateway pod of the slice. One replica
/// speaks for the slice's tunnels (`status.peers`); each replica's own tunnels are read at
/// [`replicas_to_scrape`]'s addresses.
#[must_use]
pub fn gateway_metrics_address(pods: &[Pod], slice: &str, replicas: u32) -> Option<std::net::SocketAddr> {
    let pod_ip = |p: &Pod| {
        let ip = p.status.as_ref()?.pod_ip.as_deref()?.trim().parse::<IpAddr>().ok()?;
        Some(std::net::SocketAddr::new(ip, objects::GATEWAY_METRICS_PORT))
    };
    live_gateway_pods(pods, slice, replicas)
        .into_iter()
        .find_map(|(_, p)| pod_ip(p))
        .or_else(|| gateway_pods(pods, slice).into_iter().filter(|p| is_running(p)).find_map(pod_ip))
}

/// Every running replica of a slice with several (`gateway.replicas` > 1), where its metrics
/// are read: (slice, ordinal, pod IP and [`objects::GATEWAY_METRICS_PORT`]), by slice then
/// ordinal. Each replica's own tunnels come from them ([`replica_tunnels`]); a one-replica
/// slice has none here (its gateway's metrics are [`gateways_to_scrape`]'s).
#[must_use]
pub fn replicas_to_scrape(
    worker_slices: &[WorkerSlice],
    cluster: &str,
    pods: &[Pod],
) -> Vec<(String, u32, std::net::SocketAddr)> {
    let mut out = Vec::new();
    for ws in active_slices(worker_slices, cluster) {
        let slice = &ws.spec.slice;
        let replicas = ws.spec.gateway.replicas;
        if replicas <= 1 {
            continue;
        }
        for pod in gateway_pods(pods, slice).into_iter().filter(|p| is_running(p)) {
            let Some(ordinal) = objects::replica_ordinal(slice, &pod.name_any()).filter(|o| *o < replicas) else {
                continue;
            };
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.trim().parse().ok());
            if let Some(ip) = ip {
                out.push((slice.clone(), ordinal, std::net::SocketAddr::new(ip, objects::GATEWAY_METRICS_PORT)));
            }
        }
    }
    out.sort();
    out
}

/// Each replica's own tunnels (issue 13), from its metrics (`metrics`, by ordinal; a replica
/// without an entry was not scraped: its pod does not run, and its state says why): how many
/// peer clusters it reaches (`liveTunnels`), those it does not (`unreachable`), and, for an
/// `Up` replica, the reason `no live tunnel to c3, …` or `metrics not read: <error>`. A `Down`
/// or `Pending` replica keeps its pod's reason.
pub fn replica_tunnels(
    replicas: &mut [slice_api::crd::GatewayReplicaStatus],
    peers: &[slice_api::crd::WorkerPeer],
    metrics: &BTreeMap<u32, Result<String, String>>,
    now: Timestamp,
) {
    for r in replicas {
        let Some(scrape) = metrics.get(&r.ordinal) else { continue };
        let up = r.state == TunnelState::Up.to_string();
        match scrape
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|text| tunnels::parse_peers(text).map_err(|e| format!("reading its metrics: {e}")))
        {
            Err(e) => {
                if up {
                    r.reason = format!("{}: {e}", tunnels::REPLICA_METRICS_UNREAD);
                }
            }
            Ok(readings) => {
                let reach = tunnels::replica_reach(peers, &readings, now);
                r.live_tunnels = Some(u32::try_from(reach.live.len()).unwrap_or(u32::MAX));
                if up && !reach.unreachable.is_empty() {
                    r.reason = format!("{} {}", tunnels::NO_LIVE_TUNNEL, reach.unreachable.join(", "));
                }
                r.unreachable = reach.unreachable;
            }
        }
    }
}

/// By slice address (of either family) of each live replica ([`live_gateway_pods`]) whose
/// metrics were read: the remote prefixes of the peer clusters its gateway has no live peer of
/// ([`tunnels::replica_reach`]), for the node agents to route those prefixes via the other
/// replicas (issue 13: a replica whose node lost its way to one cluster). A replica whose
/// metrics were not read is not listed (its liveness is the node agents' probes' business).
fn replica_unreachable_prefixes(
    pods: &[Pod],
    spec: &TypedSpec,
    peers: &[slice_api::crd::WorkerPeer],
    replicas: u32,
    metrics: Option<&BTreeMap<u32, Result<String, String>>>,
    now: Option<Timestamp>,
) -> BTreeMap<IpAddr, Vec<ipnet::IpNet>> {
    let mut out = BTreeMap::new();
    let (Some(metrics), Some(now)) = (metrics, now) else { return out };
    for (ordinal, pod) in live_gateway_pods(pods, &spec.slice, replicas) {
        let Some(Ok(text)) = metrics.get(&ordinal) else { continue };
        let Ok(readings) = tunnels::parse_peers(text) else { continue };
        let unreachable = tunnels::replica_reach(peers, &readings, now).unreachable;
        let prefixes: Vec<ipnet::IpNet> = peers
            .iter()
            .filter(|p| unreachable.contains(&p.cluster))
            .flat_map(|p| std::iter::once(p.prefix.as_str()).chain(p.secondary_prefix.as_deref()))
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        if prefixes.is_empty() {
            continue;
        }
        let families = std::iter::once(spec.cluster_prefix).chain(spec.secondary.as_ref().map(|f| f.cluster_prefix));
        for address in families.filter_map(|prefix| slice_address(pod, prefix)) {
            out.insert(address, prefixes.clone());
        }
    }
    out
}

/// The slices this cluster runs: its WorkerSlices that are not being deleted, by slice name.
fn active_slices<'a>(worker_slices: &'a [WorkerSlice], cluster: &str) -> Vec<&'a WorkerSlice> {
    let mut active: Vec<&WorkerSlice> =
        worker_slices.iter().filter(|ws| !is_deleting(ws) && ws.spec.cluster == cluster).collect();
    active.sort_by_key(|ws| ws.spec.slice.clone());
    active.dedup_by(|a, b| a.spec.slice == b.spec.slice);
    active
}

/// The namespaces whose pods the worker lists to count `connectedPods`: every namespace of this
/// cluster that an active WorkerSlice names, sorted. (A namespace another slice holds is listed
/// too, and then not counted: [`connected_pods`] counts only effective members.)
#[must_use]
pub fn namespaces_to_count(worker_slices: &[WorkerSlice], cluster: &str, namespaces: &[Namespace]) -> Vec<String> {
    let existing: BTreeSet<String> =
        namespaces.iter().filter(|n| n.metadata.deletion_timestamp.is_none()).map(ResourceExt::name_any).collect();
    let wanted: BTreeSet<String> = active_slices(worker_slices, cluster)
        .into_iter()
        .flat_map(|ws| ws.spec.namespaces.iter().cloned())
        .filter(|n| existing.contains(n))
        .collect();
    wanted.into_iter().collect()
}

/// The slices whose gateway metrics a pass reads, with where to read them (`None`: no running
/// gateway pod with an IP).
#[must_use]
pub fn gateways_to_scrape(
    worker_slices: &[WorkerSlice],
    cluster: &str,
    pods: &[Pod],
) -> Vec<(String, Option<std::net::SocketAddr>)> {
    active_slices(worker_slices, cluster)
        .into_iter()
        .map(|ws| (ws.spec.slice.clone(), gateway_metrics_address(pods, &ws.spec.slice, ws.spec.gateway.replicas)))
        .collect()
}

/// How many pods have `slice`'s interface: running, not-deleting pods of the slice's effective
/// member `namespaces` whose network-status has the slice's entry, named
/// `<namespace>/slice-<slice>` (`slice_api::multus::network_name`) as Multus writes it and the
/// node agent writes it in chained mode. The gateway pod (in `slicenet-system`) is not counted:
/// the count is of the workloads on the slice.
#[must_use]
pub fn connected_pods(pods: &[Pod], slice: &str, namespaces: &[String]) -> u32 {
    let count = pods
        .iter()
        .filter(|p| is_running(p))
        .filter(|p| {
            let ns = p.namespace().unwrap_or_default();
            let name = multus::network_name(&ns, slice);
            namespaces.contains(&ns)
                && network_status(p).iter().any(|e| e.get("name").and_then(Value::as_str) == Some(name.as_str()))
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Whether `desired` is contained in `observed`: every field the worker sets has the same value
/// (objects recursively, arrays element by element with the same length). `apiVersion` and
/// `kind` are skipped at the top (list items may lack them). The top-level `data` of ConfigMaps
/// and Secrets must be equal, not only contained: a key the worker dropped (a deleted slice in
/// the membership ConfigMap) must go, and the server adds no keys there.
#[must_use]
pub fn is_applied(desired: &Value, observed: &Value) -> bool {
    fn sub(d: &Value, o: &Value) -> bool {
        match (d, o) {
            (Value::Object(d), Value::Object(o)) => d.iter().all(|(k, v)| o.get(k).is_some_and(|ov| sub(v, ov))),
            (Value::Array(d), Value::Array(o)) => d.len() == o.len() && d.iter().zip(o).all(|(a, b)| sub(a, b)),
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            _ => d == o,
        }
    }
    match (desired, observed) {
        (Value::Object(d), Value::Object(_)) => {
            d.iter().filter(|(k, _)| *k != "apiVersion" && *k != "kind").all(|(k, v)| {
                match (k.as_str(), observed.get(k)) {
                    ("data", None) => v.as_object().is_some_and(serde_json::Map::is_empty),
                    ("data", Some(ov)) => sub(v, ov) && sub(ov, v),
                    (_, ov) => ov.is_some_and(|ov| sub(v, ov)),
                }
            })
        }
        _ => false,
    }
}

fn key_pair_from_secret(secret: &Secret) -> Option<KeyPair> {
    let data = secret.data.as_ref()?;
    let private = String::from_utf8(data.get(objects::PRIVATE_KEY_KEY)?.0.clone()).ok()?;
    let public = keys::public_key_of(private.trim())?;
    Some(KeyPair { private_key: private.trim().to_owned(), public_key: public })
}

/// An observed object, as JSON, by (kind, namespace, name).
type ObservedObjects = BTreeMap<(Kind, String, String), Value>;

fn index(observed: &Observed) -> ObservedObjects {
    let mut out = BTreeMap::new();
    let mut put = |kind: Kind, ns: Option<String>, name: String, v: Result<Value, serde_json::Error>| {
        if let Ok(v) = v {
            out.insert((kind, ns.unwrap_or_default(), name), v);
        }
    };
    for o in &observed.secrets {
        put(Kind::Secret, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    for o in &observed.config_maps {
        put(Kind::ConfigMap, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    for o in &observed.deployments {
        put(Kind::Deployment, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    for o in &observed.stateful_sets {
        put(Kind::StatefulSet, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    for o in &observed.services {
        put(Kind::Service, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    for o in &observed.nads {
        put(Kind::NetworkAttachmentDefinition, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    for o in &observed.service_imports {
        put(Kind::ServiceImport, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    for o in &observed.mcs_endpoint_slices {
        put(Kind::EndpointSlice, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    for o in &observed.network_policies {
        put(Kind::NetworkPolicy, o.namespace(), o.name_any(), serde_json::to_value(o));
    }
    out
}

fn key_of(body: &Value, kind: Kind) -> (Kind, String, String) {
    let s = |p: &str| body["metadata"][p].as_str().unwrap_or_default().to_owned();
    (kind, s("namespace"), s("name"))
}

/// Decides the writes of the first phase. `new_key` makes a key pair for a slice that has no
/// key Secret yet (the only input that is not observed: tests pass fixed keys).
pub fn decide(observed: &Observed, settings: &Settings, new_key: &mut dyn FnMut(&str) -> KeyPair) -> Decision {
    let now = settings.now.as_str();
    let mut d = Decision::default();
    let active = active_slices(&observed.worker_slices, &settings.cluster);

    // 1. Finalizers.
    for ws in &active {
        if !has_finalizer(ws) {
            let mut finalizers = ws.finalizers().to_vec();
            finalizers.push(WORKER_FINALIZER.to_owned());
            d.writes.push(Write::AddFinalizer {
                name: ws.name_any(),
                finalizers,
                resource_version: ws.resource_version(),
            });
        }
    }

    // 2. Namespaces.
    let wanted: BTreeMap<String, Vec<String>> =
        active.iter().map(|ws| (ws.spec.slice.clone(), ws.spec.namespaces.clone())).collect();
    let observed_ns: Vec<ObservedNamespace> = observed
        .namespaces
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .map(|n| ObservedNamespace {
            name: n.name_any(),
            slice_label: n.labels().get(SLICE_LABEL).cloned(),
            labelled_by_worker: n.annotations().get(objects::LABELLED_BY_ANNOTATION).map(String::as_str)
                == Some(objects::MANAGED_BY),
        })
        .collect();
    let ns_decision = objects::decide_namespaces(&wanted, &observed_ns);
    let (sets, removes): (Vec<_>, Vec<_>) = ns_decision.changes.iter().cloned().partition(|c| c.slice.is_some());
    for change in sets.into_iter().chain(removes) {
        let namespace = observed.namespaces.iter().find(|n| n.name_any() == change.namespace);
        let regarding =
            namespace.map_or_else(|| reference_to("v1", "Namespace", None, &change.namespace, None), reference);
        let notice = match &change.slice {
            Some(slice) => Notice::normal(
                regarding,
                reason::NAMESPACE_JOINED_SLICE,
                "Label",
                format!("namespace {} joined slice {slice} (label {SLICE_LABEL}={slice})", change.namespace),
            ),
            None => {
                let was = namespace.and_then(|n| n.labels().get(SLICE_LABEL).cloned()).unwrap_or_default();
                Notice::normal(
                    regarding,
                    reason::NAMESPACE_LEFT_SLICE,
                    "Label",
                    format!("namespace {} left slice {was} (label {SLICE_LABEL} removed)", change.namespace),
                )
            }
        };
        d.writes.push(Write::LabelNamespace(change));
        d.notices.push((d.writes.len() - 1, notice));
    }

    // Plan each active slice: node prefixes, members, gateway address, key.
    let nodes = cluster_nodes(&observed.nodes);
    let node_names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let existing = index(observed);
    let mut desired: Vec<(Kind, Value, bool)> = Vec::new(); // (kind, body, create-only)
    // What creating an object is worth announcing (the key Secret: a new gateway key).
    let mut on_create: BTreeMap<(Kind, String, String), Notice> = BTreeMap::new();
    for ws in &active {
        let spec = &ws.spec;
        let name = ws.name_any();
        let previous = ws.status.as_ref().map(|s| s.nodes.clone()).unwrap_or_default();
        // The spec's strings are read here, once for this pass.
        let typed = TypedSpec::parse(spec);
        let invalid = |e: &plan::WorkerPlanError| Problem { reason: "InvalidSpec", message: e.to_string() };
        let allocations = match &typed {
            Ok(t) => match plan::allocate_node_prefixes(t, &node_names, &previous) {
                Ok(a) => Some(a),
                Err(e @ plan::WorkerPlanError::ClusterPrefixFull { .. }) => {
                    // Nodes that had a prefix keep it; the new ones wait.
                    let problem = Problem { reason: "NodePrefixesExhausted", message: e.to_string() };
                    d.problems.insert(name.clone(), problem);
                    let kept: Vec<String> =
                        node_names.iter().filter(|n| previous.iter().any(|p| &p.node == *n)).cloned().collect();
                    plan::allocate_node_prefixes(t, &kept, &previous).ok()
                }
                Err(e) => {
                    d.problems.insert(name.clone(), invalid(&e));
                    None
                }
            },
            Err(e) => {
                d.problems.insert(name.clone(), invalid(e));
                None
            }
        };
        let replicas = spec.gateway.replicas.max(1);
        let addresses = |prefix: ipnet::IpNet| gateway_replica_addresses(&observed.pods, &spec.slice, replicas, prefix);
        let gateways = typed.as_ref().map_or_else(
            |_| plan::GatewayAddresses::default(),
            |t| plan::GatewayAddresses {
                primary: addresses(t.cluster_prefix),
                secondary: t.secondary.as_ref().map(|f| addresses(f.cluster_prefix)).unwrap_or_default(),
                unreachable: replica_unreachable_prefixes(
                    &observed.pods,
                    t,
                    &spec.peers,
                    replicas,
                    observed.replica_metrics.get(&spec.slice),
                    now.parse().ok(),
                ),
            },
        );
        // The gateway's configuration does not depend on the prefixes: an invalid spec keeps it.
        let parsed_gateway;
        let gateway = match &typed {
            Ok(t) => &t.gateway,
            Err(_) => {
                parsed_gateway = TypedGateway::parse(spec);
                &parsed_gateway
            }
        };
        let members = ns_decision.members.get(&spec.slice).cloned().unwrap_or_default();
        if let Some(conflicts) = ns_decision.conflicts.get(&spec.slice) {
            d.problems.entry(name.clone()).or_insert(Problem {
                reason: "NamespaceConflict",
                message: format!(
                    "namespaces labelled {SLICE_LABEL} for another slice are left out: {}",
                    conflicts.join(", ")
                ),
            });
        }
        if let Some(reserved) = ns_decision.reserved.get(&spec.slice) {
            d.problems.entry(name.clone()).or_insert(Problem {
                reason: "ReservedNamespace",
                message: format!("slicenet's own namespaces never join a slice; left out: {}", reserved.join(", ")),
            });
        }
        if let Some(missing) = ns_decision.missing.get(&spec.slice) {
            d.notes.insert(name.clone(), format!("namespaces not in the cluster yet: {}", missing.join(", ")));
        }

        // Keys, one per replica: the existing Secret's, or a new one created once. Secrets of
        // ordinals beyond `replicas` are not wanted any more (scaled down): deleted below.
        let mut keys: Vec<(Key, String)> = Vec::new();
        let mut bad_key = None;
        for ordinal in 0..replicas {
            let key_name = objects::replica_key_secret_name(&spec.slice, ordinal);
            let pair = match existing.get(&(Kind::Secret, GATEWAY_NAMESPACE.to_owned(), key_name.clone())) {
                Some(secret) => {
                    // Wanted as it is: never rewritten, so the key never changes.
                    desired.push((Kind::Secret, secret.clone(), true));
                    observed
                        .secrets
                        .iter()
                        .find(|s| s.name_any() == key_name && s.namespace().as_deref() == Some(GATEWAY_NAMESPACE))
                        .and_then(key_pair_from_secret)
                }
                None => {
                    let pair = new_key(&key_name);
                    desired.push((Kind::Secret, objects::key_secret(&spec.slice, ordinal, &pair), true));
                    let note = format!(
                        "gateway key pair made for replica {ordinal} (public key {}); the private key stays in Secret {GATEWAY_NAMESPACE}/{key_name}",
                        pair.public_key
                    );
                    on_create.insert(
                        (Kind::Secret, GATEWAY_NAMESPACE.to_owned(), key_name.clone()),
                        Notice::normal(reference(*ws), reason::GATEWAY_KEY_CREATED, "CreateKey", note),
                    );
                    Some(pair)
                }
            };
            // A key source that hands out something that is not a key counts as an invalid Secret.
            match pair.and_then(|pair| Some((pair.private_key.parse::<Key>().ok()?, pair.public_key))) {
                Some(key) => keys.push(key),
                None => {
                    bad_key.get_or_insert(key_name);
                }
            }
        }
        let gateway_name = objects::gateway_name(&spec.slice);
        match bad_key {
            None => {
                d.public_keys.insert(name.clone(), keys[0].1.clone());
                d.replica_keys.insert(name.clone(), keys.iter().map(|(_, public)| public.clone()).collect());
                // The gateway Deployment of earlier versions stays until the StatefulSet's
                // ordinal 0 is ready (see the module's documentation), and so does its file.
                let legacy = existing
                    .get(&(Kind::Deployment, GATEWAY_NAMESPACE.to_owned(), gateway_name.clone()))
                    .filter(|_| spec.gateway.exposure != GatewayExposure::HostPort)
                    .filter(|_| !replica_ready(&observed.pods, &spec.slice, 0));
                let private_keys: Vec<Key> = keys.iter().map(|(private, _)| *private).collect();
                let config = objects::gateway_config_secret(&spec.slice, gateway, &private_keys, legacy.is_some());
                desired.push((Kind::Secret, config, false));
                desired.push((Kind::StatefulSet, objects::gateway_statefulset(spec, &settings.gateway), false));
                if let Some(deployment) = legacy {
                    desired.push((Kind::Deployment, deployment.clone(), true));
                }
                for ordinal in 0..replicas {
                    if let Some(svc) = objects::gateway_service(spec, ordinal) {
                        desired.push((Kind::Service, svc, false));
                    }
                }
            }
            Some(key_name) => {
                d.problems.insert(
                    name.clone(),
                    Problem {
                        reason: "KeySecretInvalid",
                        message: format!(
                            "Secret {GATEWAY_NAMESPACE}/{key_name} has no valid {}: delete it to make a new key",
                            objects::PRIVATE_KEY_KEY
                        ),
                    },
                );
                // Keep whatever gateway objects of the slice exist: mark them wanted as they are.
                for ((kind, namespace, _), v) in &existing {
                    let ours = v["metadata"]["labels"][SLICE_LABEL].as_str() == Some(spec.slice.as_str());
                    let gateway_kind =
                        matches!(kind, Kind::Secret | Kind::Deployment | Kind::StatefulSet | Kind::Service);
                    if ours && gateway_kind && namespace == GATEWAY_NAMESPACE {
                        desired.push((*kind, v.clone(), true));
                    }
                }
            }
        }
        if let (Ok(typed), Some(allocations)) = (&typed, allocations) {
            d.planned.insert(
                name.clone(),
                PlannedSlice {
                    secondary_allocations: typed.secondary_allocations(&allocations),
                    typed: typed.clone(),
                    allocations,
                    namespaces: members,
                    gateways,
                },
            );
        }
    }

    // 4. Node configurations, membership, NADs.
    let planned: Vec<PlannedSlice> = d.planned.values().cloned().collect();
    // Multi-cluster services: exports resolved, imports written, ClusterSetIPs to the nodes.
    let mcs = super::services::decide(observed, &active, &d.planned, &settings.cluster, now);
    d.exports = mcs.exports;
    // Policy: each slice's MultiNetworkPolicies, its pod directory, namespace isolation.
    let mut node_policies: BTreeMap<String, Vec<slice_api::policy::SlicePolicy>> = BTreeMap::new();
    let mut node_pods: BTreeMap<String, Vec<slice_api::policy::PodGroup>> = BTreeMap::new();
    for ws in &active {
        let Some(p) = d.planned.get(&ws.name_any()) else { continue };
        let slice = &ws.spec.slice;
        let previous = super::policy::previous_policies(&observed.config_maps, slice);
        let (policies, rejected) =
            super::policy::slice_policies(&observed.multi_network_policies, slice, &p.namespaces, &previous);
        for r in &rejected {
            let regarding = reference_to(
                slice_api::policy::API_VERSION,
                slice_api::policy::KIND,
                Some(&r.namespace),
                &r.name,
                r.uid.as_deref(),
            );
            let note = format!(
                "{}/{} is not applied on slice {slice}: {}; the node agents keep their previous rules",
                r.namespace, r.name, r.reason
            );
            d.pass_notices.push(Notice::warning(regarding, reason::POLICY_REJECTED, "Compile", note));
        }
        d.policies.insert(ws.name_any(), (policies.len(), rejected));
        node_policies.insert(slice.clone(), policies);
        let members = super::services::SliceMembers {
            slice,
            namespaces: &p.namespaces,
            allocations: &p.allocations,
            secondary: &p.secondary_allocations,
        };
        let (report, notes) = super::policy::pod_report(&observed.member_pods, &observed.namespaces, &members);
        for note in notes {
            tracing::warn!(slice = %slice, "pod directory: {note}");
        }
        node_pods.insert(slice.clone(), super::policy::node_directory(&report, &ws.spec.pods, &p.typed.families()));
        d.pods.insert(ws.name_any(), report);
        if let Some(isolation) = &ws.spec.isolation {
            let mut allowed: Vec<String> = p.namespaces.iter().chain(&isolation.allowed_namespaces).cloned().collect();
            allowed.sort();
            allowed.dedup();
            for ns in &p.namespaces {
                desired.push((Kind::NetworkPolicy, super::policy::isolation_policy(slice, ns, &allowed), false));
            }
        }
    }
    match objects::node_agent_configs(&planned, &nodes, &settings.node_defaults) {
        Ok(mut configs) => {
            for c in &mut configs {
                for s in &mut c.slices {
                    s.services = mcs.node_services.get(&s.name).cloned().unwrap_or_default();
                    s.policies = node_policies.get(&s.name).cloned().unwrap_or_default();
                    s.pods = node_pods.get(&s.name).cloned().unwrap_or_default();
                }
            }
            for c in &configs {
                desired.push((Kind::ConfigMap, objects::node_config_map(c), false));
            }
        }
        Err(e) => {
            // Should not happen (allocations come from the same nodes); keep what runs.
            tracing::error!(error = %e, "cannot build node configurations; keeping the current ones");
            for ((kind, _, n), v) in &existing {
                if *kind == Kind::ConfigMap && n.starts_with(objects::NODE_CONFIG_PREFIX) {
                    desired.push((Kind::ConfigMap, v.clone(), true));
                }
            }
        }
    }
    desired.push((Kind::ConfigMap, objects::membership_config_map(&planned), false));
    if settings.uses_multus(observed.member_cluster.as_ref()) {
        for p in &planned {
            for nad in objects::nads(p) {
                desired.push((Kind::NetworkAttachmentDefinition, nad, false));
            }
        }
    }

    for (kind, body) in mcs.objects {
        desired.push((kind, body, false));
    }
    let mut wanted_keys = BTreeSet::new();
    for (kind, body, create_only) in desired {
        let key = key_of(&body, kind);
        if !wanted_keys.insert(key.clone()) {
            continue;
        }
        let (_, namespace, name) = key.clone();
        match existing.get(&key) {
            Some(_) if create_only => {}
            Some(o) if is_applied(&body, o) => {}
            None if create_only => {
                let notice = on_create.remove(&key);
                d.writes.push(Write::Create { kind, namespace, name, body });
                if let Some(n) = notice {
                    d.notices.push((d.writes.len() - 1, n));
                }
            }
            _ => d.writes.push(Write::Apply { kind, namespace, name, body }),
        }
    }

    // 5. Deletions of what the worker made and no longer wants.
    for (kind, namespace, name) in existing.keys() {
        if !wanted_keys.contains(&(*kind, namespace.clone(), name.clone())) {
            d.writes.push(Write::Delete { kind: *kind, namespace: namespace.clone(), name: name.clone() });
        }
    }
    // 6. Statuses of ServiceImports (once they exist), conditions of ServiceExports, Corefiles.
    for (write, notice) in mcs.status_writes {
        d.writes.push(write);
        if let Some(n) = notice {
            d.notices.push((d.writes.len() - 1, n));
        }
    }
    d
}

/// The public `host:port` of gateway replica `ordinal`: its Service's LoadBalancer ingress
/// address, else the MemberCluster's first published gateway address, with its Service's
/// nodePort (NodePort), its port (LoadBalancer) or the gateway port (HostPort, ordinal 0 only:
/// the published address is not the further replicas' nodes'; they reach their peers
/// themselves, which learn their endpoints from the handshakes). `None` when there is no
/// address (the cluster is behind NAT) or no port yet.
#[must_use]
pub fn gateway_endpoint(
    ws: &WorkerSlice,
    member: Option<&MemberCluster>,
    services: &[Service],
    ordinal: u32,
) -> Option<String> {
    let spec = &ws.spec;
    let published = member
        .and_then(|m| m.status.as_ref())
        .and_then(|s| s.gateway_addresses.iter().map(|a| a.trim()).find(|a| !a.is_empty()))
        .map(str::to_owned);
    let svc = services.iter().find(|s| {
        s.name_any() == objects::replica_service_name(&spec.slice, ordinal)
            && s.namespace().as_deref() == Some(GATEWAY_NAMESPACE)
    });
    let (host, port) = match spec.gateway.exposure {
        GatewayExposure::HostPort if ordinal > 0 => return None,
        GatewayExposure::HostPort => (published?, spec.gateway.port),
        GatewayExposure::NodePort => {
            let port = svc?.spec.as_ref()?.ports.as_ref()?.iter().find(|p| p.protocol.as_deref() == Some("UDP"))?;
            (published?, u16::try_from(port.node_port?).ok()?)
        }
        GatewayExposure::LoadBalancer => {
            let ingress = svc
                .and_then(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first().cloned())
                .and_then(|i| i.ip.or(i.hostname));
            (ingress.or(published)?, spec.gateway.port)
        }
    };
    Some(match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]:{port}"),
        _ => format!("{host}:{port}"),
    })
}

/// The status writes of active slices whose status changed. `services` are the gateway
/// Services after the first phase (so a new NodePort is known); `now` is RFC 3339.
///
/// `status.peers` comes from the slice's gateway metrics in [`Observed::gateway_metrics`]
/// ([`tunnels::peer_statuses`]), each replica's tunnels in `status.gatewayReplicas` from
/// [`Observed::replica_metrics`] ([`replica_tunnels`]), `status.connectedPods` from
/// [`connected_pods`].
///
/// **Churn rule.** A status whose only changes are handshake times
/// ([`tunnels::only_times_changed`]) is not written when `last_written` (when this process last
/// wrote each WorkerSlice's status, by name) is less than
/// [`tunnels::TIME_ONLY_WRITE_INTERVAL_SECS`] before `now`; a later pass (the resync) writes it.
/// After a restart the map is empty and the first such change is written.
#[must_use]
pub fn decide_status(
    observed: &Observed,
    decision: &Decision,
    services: &[Service],
    now: &str,
    last_written: &BTreeMap<String, Timestamp>,
) -> Vec<Write> {
    let now_ts = now.parse::<Timestamp>().ok();
    let mut writes = Vec::new();
    let mut active: Vec<&WorkerSlice> = observed.worker_slices.iter().filter(|ws| !is_deleting(ws)).collect();
    active.sort_by_key(|ws| ws.name_any());
    active.dedup_by_key(|ws| ws.name_any());
    for ws in active {
        let name = ws.name_any();
        let public_key = decision.public_keys.get(&name);
        if public_key.is_none() && !decision.problems.contains_key(&name) {
            continue; // not planned here (a WorkerSlice for another cluster)
        }
        let old = ws.status.clone().unwrap_or_default();
        let mut status = old.clone();
        let replicas = ws.spec.gateway.replicas.max(1);
        let endpoint = |ordinal| gateway_endpoint(ws, observed.member_cluster.as_ref(), services, ordinal);
        if let Some(key) = public_key {
            status.gateway_public_key = Some(key.clone());
            status.gateway_endpoint = endpoint(0);
        }
        // Per replica only when the slice asks for several (a one-replica status stays as it
        // was): each replica's key and endpoint (the hub hands them to the peers) and state.
        status.gateway_replicas = if replicas > 1 {
            let keys: Vec<String> = match decision.replica_keys.get(&name) {
                Some(keys) => keys.clone(),
                // A slice whose keys cannot be read keeps publishing the keys it published.
                None => old.gateway_replicas.iter().filter_map(|r| r.public_key.clone()).collect(),
            };
            let endpoints: Vec<Option<String>> = (0..replicas).map(endpoint).collect();
            let mut statuses = replica_statuses(&observed.pods, &ws.spec.slice, replicas, &keys, &endpoints);
            if let (Some(now_ts), Some(metrics)) = (now_ts, observed.replica_metrics.get(&ws.spec.slice)) {
                replica_tunnels(&mut statuses, &ws.spec.peers, metrics, now_ts);
            }
            statuses
        } else {
            Vec::new()
        };
        if let Some(p) = decision.planned.get(&name) {
            status.exports = decision.exports.get(&name).cloned().unwrap_or_default();
            status.pods = decision.pods.get(&name).cloned().unwrap_or_default();
            if let Some((count, rejected)) = decision.policies.get(&name) {
                let c = super::policy::policies_condition(*count, rejected);
                if c.status != "True" || condition(&status.conditions, POLICIES_ACCEPTED).is_some() || *count > 0 {
                    set_condition(&mut status.conditions, c, now);
                }
            }
            status.nodes = p.allocations.clone();
            status.connected_pods = connected_pods(&observed.member_pods, &ws.spec.slice, &p.namespaces);
        }
        if let Some(now_ts) = now_ts {
            // Without a metrics read for the slice (its WorkerSlice names another cluster), the
            // peers stay as they are.
            if let Some(scrape) = observed.gateway_metrics.get(&ws.spec.slice) {
                let handshakes = scrape
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|text| tunnels::parse_peers(text).map_err(|e| format!("reading its metrics: {e}")));
                status.peers =
                    tunnels::peer_statuses(&ws.spec.peers, handshakes.as_ref().map_err(String::as_str), now_ts);
            }
        }
        status.observed_generation = ws.metadata.generation;
        let condition = match decision.problems.get(&name) {
            Some(p) => ready(ws, false, p.reason, &p.message),
            None => match decision.planned.get(&name) {
                Some(p) if p.gateways.primary.is_empty() => ready(
                    ws,
                    false,
                    "GatewayPending",
                    "waiting for a ready gateway pod's slice address (network-status)",
                ),
                _ => match tunnels_down(&ws.spec.peers, &status.peers) {
                    Some(message) => ready(ws, false, TUNNELS_DOWN, &message),
                    None => ready(ws, true, "Ready", decision.notes.get(&name).map_or("", String::as_str)),
                },
            },
        };
        set_condition(&mut status.conditions, condition, now);
        let recently_written = match (now_ts, last_written.get(&name)) {
            (Some(now), Some(at)) => now.as_second() - at.as_second() < tunnels::TIME_ONLY_WRITE_INTERVAL_SECS,
            _ => false,
        };
        if status != old && !(recently_written && tunnels::only_times_changed(&old, &status)) {
            writes.push(Write::PatchStatus { name, status });
        }
    }
    writes
}

/// The reason of `Ready=False` while some peer tunnel is not up.
pub const TUNNELS_DOWN: &str = "TunnelsDown";

/// `None` when the tunnel to every peer of the spec is `Up` in `peers`; otherwise the message
/// naming those that are not, with their state (not their reasons: an age in a reason would
/// change the condition at every pass).
#[must_use]
pub fn tunnels_down(
    spec_peers: &[slice_api::crd::WorkerPeer],
    peers: &[slice_api::crd::PeerTunnelStatus],
) -> Option<String> {
    let up = TunnelState::Up.to_string();
    let down: Vec<String> = spec_peers
        .iter()
        .map(|sp| {
            let state = peers.iter().find(|p| p.cluster == sp.cluster).map_or("Pending", |p| p.state.as_str());
            (sp.cluster.as_str(), state)
        })
        .filter(|(_, state)| *state != up)
        .map(|(cluster, state)| format!("{cluster} ({state})"))
        .collect();
    (!down.is_empty()).then(|| format!("tunnels not up: {}", down.join(", ")))
}

/// The Events of a status change of `ws` (read) to `new` (written): `Ready` turning true, or
/// false (a `Warning` when it was true, otherwise `Normal` with the new reason: how a new slice
/// progresses); and each peer tunnel that comes up or stops being up.
#[must_use]
pub fn status_notices(ws: &WorkerSlice, new: &WorkerSliceStatus) -> Vec<Notice> {
    let old = ws.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    let ready_of = |s: &WorkerSliceStatus| slice_api::crd::condition(&s.conditions, "Ready").cloned();
    if let Some(r) = ready_of(new) {
        let before = ready_of(&old);
        let was_ready = before.as_ref().is_some_and(|b| b.status == "True");
        let same = before.as_ref().is_some_and(|b| (&b.status, &b.reason) == (&r.status, &r.reason));
        if r.status == "True" && !was_ready {
            let note =
                if r.message.is_empty() { "gateway running, every tunnel up".to_owned() } else { r.message.clone() };
            out.push(Notice::normal(reference(ws), reason::WORKER_SLICE_READY, "Reconcile", note));
        } else if r.status != "True" && !same {
            let note = format!("{}: {}", r.reason, r.message);
            let ctor = if was_ready { Notice::warning } else { Notice::normal };
            out.push(ctor(reference(ws), reason::WORKER_SLICE_NOT_READY, "Reconcile", note));
        }
    }
    let up = TunnelState::Up.to_string();
    for p in &new.peers {
        let was_up = old.peers.iter().any(|o| o.cluster == p.cluster && o.state == up);
        if p.state == up && !was_up {
            let note = format!("tunnel to cluster {} is up", p.cluster);
            out.push(Notice::normal(reference(ws), reason::TUNNEL_UP, "Reconcile", note));
        } else if p.state != up && was_up {
            let note = format!("tunnel to cluster {} is {}: {}", p.cluster, p.state, tunnels::stable_reason(&p.reason));
            out.push(Notice::warning(reference(ws), reason::TUNNEL_DOWN, "Reconcile", note));
        }
    }
    out
}

/// The Event of a finalizer release: everything made for the deleted slice is gone.
#[must_use]
pub fn release_notice(ws: &WorkerSlice) -> Notice {
    let note = format!(
        "slice {} torn down in cluster {}: gateway, keys and node configuration removed",
        ws.spec.slice, ws.spec.cluster
    );
    Notice::normal(reference(ws), reason::SLICE_TORN_DOWN, "TearDown", note)
}

/// What a write is about, for its failure's Event: the WorkerSlice of the slice it is made for
/// (by the object's `slicenet.io/slice` label), else the object itself.
#[must_use]
pub fn write_subject(write: &Write, observed: &Observed) -> ObjectReference {
    let by_name = |name: &str| observed.worker_slices.iter().find(|ws| ws.name_any() == name).map(reference);
    let by_slice = |slice: &str| observed.worker_slices.iter().find(|ws| ws.spec.slice == slice).map(reference);
    let mcs = observed.mcs_version.api_version();
    let api_version = |kind: Kind| match kind {
        Kind::Deployment | Kind::StatefulSet => "apps/v1",
        Kind::NetworkAttachmentDefinition => "k8s.cni.cncf.io/v1",
        Kind::ServiceImport => mcs.as_str(),
        Kind::EndpointSlice => "discovery.k8s.io/v1",
        Kind::NetworkPolicy => "networking.k8s.io/v1",
        _ => "v1",
    };
    let object = |kind: Kind, namespace: &str, name: &str, existing: Option<&Value>| {
        let slice = existing.and_then(|v| v["metadata"]["labels"][SLICE_LABEL].as_str().map(str::to_owned));
        slice.and_then(|s| by_slice(&s)).unwrap_or_else(|| {
            let uid = existing.and_then(|v| v["metadata"]["uid"].as_str());
            reference_to(api_version(kind), &format!("{kind:?}"), Some(namespace), name, uid)
        })
    };
    match write {
        Write::AddFinalizer { name, .. } | Write::RemoveFinalizer { name, .. } | Write::PatchStatus { name, .. } => {
            by_name(name).unwrap_or_else(|| reference_to("slicenet.io/v1alpha1", "WorkerSlice", None, name, None))
        }
        Write::LabelNamespace(change) => observed
            .namespaces
            .iter()
            .find(|n| n.name_any() == change.namespace)
            .map_or_else(|| reference_to("v1", "Namespace", None, &change.namespace, None), reference),
        Write::Create { kind, namespace, name, body } | Write::Apply { kind, namespace, name, body } => {
            object(*kind, namespace, name, Some(body))
        }
        Write::Delete { kind, namespace, name } => {
            let existing = index(observed).remove(&(*kind, namespace.clone(), name.clone()));
            object(*kind, namespace, name, existing.as_ref())
        }
        Write::PatchImportStatus { namespace, name, .. } => {
            reference_to(&mcs, "ServiceImport", Some(namespace), name, None)
        }
        Write::PatchExportStatus { namespace, name, .. } => {
            let export = observed
                .service_exports
                .iter()
                .find(|e| e.namespace().as_deref() == Some(namespace.as_str()) && &e.name_any() == name);
            let uid = export.and_then(|e| e.metadata.uid.as_deref());
            reference_to(&mcs, "ServiceExport", Some(namespace), name, uid)
        }
        Write::PatchConfigData { namespace, name, .. } => observed
            .dns_config_maps
            .iter()
            .find(|c| &c.name_any() == name)
            .map_or_else(|| reference_to("v1", "ConfigMap", Some(namespace), name, None), reference),
    }
}

fn ready(ws: &WorkerSlice, ok: bool, reason: &str, message: &str) -> Condition {
    let mut c = Condition::new("Ready", ok, reason, message);
    c.observed_generation = ws.metadata.generation;
    c
}

/// The finalizer releases: every deleted WorkerSlice that still has the worker's finalizer.
/// Call it only once the first phase's writes (which delete everything made for deleted
/// slices) all succeeded.
#[must_use]
pub fn decide_release(observed: &Observed) -> Vec<Write> {
    let mut out: Vec<Write> = observed
        .worker_slices
        .iter()
        .filter(|ws| is_deleting(ws) && has_finalizer(ws))
        .map(|ws| Write::RemoveFinalizer {
            name: ws.name_any(),
            finalizers: ws.finalizers().iter().filter(|f| *f != WORKER_FINALIZER).cloned().collect(),
            resource_version: ws.resource_version(),
        })
        .collect();
    out.sort_by_key(|w| match w {
        Write::RemoveFinalizer { name, .. } => name.clone(),
        _ => String::new(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A gateway pod of slice `blue` named `name` with `status` and, when scheduled, `node`.
    fn gw(name: &str, status: serde_json::Value, node: Option<&str>) -> Pod {
        let mut spec = json!({"containers": [{"name": "gateway"}]});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "slicenet-gateway",
                         "labels": {"app.kubernetes.io/name": "slice-gateway", "slicenet.io/slice": "blue"}},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    fn ready_status(ready: bool) -> serde_json::Value {
        json!({"phase": "Running", "podIP": "10.244.0.9",
               "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]})
    }

    /// Issue 13: the replicas' status says which is up and why one is not, per ordinal.
    #[test]
    fn replica_statuses_say_why_a_replica_is_not_up() {
        let keys = ["K0".to_owned(), "K1".to_owned()];
        let endpoints = [Some("198.18.0.1:31820".to_owned()), Some("198.18.0.1:31821".to_owned())];
        let two = |pods: &[Pod]| replica_statuses(pods, "blue", 2, &keys, &endpoints);
        let none = two(&[]);
        assert_eq!(none.len(), 2);
        assert_eq!((none[0].state.as_str(), none[0].reason.as_str()), ("Pending", "no gateway pod yet"));
        assert_eq!(none[0].public_key.as_deref(), Some("K0"));
        assert_eq!((none[1].ordinal, none[1].public_key.as_deref()), (1, Some("K1")));
        assert_eq!(none[1].endpoint.as_deref(), Some("198.18.0.1:31821"));
        let up = two(&[gw("slicenet-gw-blue-1", ready_status(true), Some("n1"))]);
        assert_eq!((up[1].state.as_str(), up[1].node.as_deref()), ("Up", Some("n1")));
        assert_eq!(up[0].state, "Pending", "another ordinal's pod is not ordinal 0's");
        let crashing = two(&[gw(
            "slicenet-gw-blue-0",
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                   "containerStatuses": [{"name": "gateway", "image": "i", "imageID": "", "ready": false,
                       "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                       "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
            Some("n1"),
        )]);
        assert_eq!(
            (crashing[0].state.as_str(), crashing[0].reason.as_str()),
            ("Down", "CrashLoopBackOff (last exit: OOMKilled)")
        );
        let unscheduled = two(&[gw(
            "slicenet-gw-blue-1",
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                   "message": "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules."}]}),
            None,
        )]);
        assert_eq!(unscheduled[1].state, "Pending");
        assert!(
            unscheduled[1].reason.starts_with("not scheduled: 0/1 nodes are available"),
            "{}",
            unscheduled[1].reason
        );
    }

    /// Issue 13: the replicas that carry traffic are the ready ones, in ordinal order; during
    /// the migration the Deployment's pod stands in for ordinal 0 until that one is ready.
    #[test]
    fn live_replicas_are_the_ready_ones_and_the_old_deployment_stands_in_for_ordinal_0() {
        let names = |pods: &[Pod], replicas| {
            live_gateway_pods(pods, "blue", replicas).into_iter().map(|(o, p)| (o, p.name_any())).collect::<Vec<_>>()
        };
        let legacy = gw("slicenet-gw-blue-7d9f8c5b-x2x4z", json!({"phase": "Running"}), Some("n1"));
        let r0 = |ready| gw("slicenet-gw-blue-0", ready_status(ready), Some("n2"));
        let r1 = |ready| gw("slicenet-gw-blue-1", ready_status(ready), Some("n1"));
        assert_eq!(names(std::slice::from_ref(&legacy), 2), [(0, "slicenet-gw-blue-7d9f8c5b-x2x4z".to_owned())]);
        assert_eq!(
            names(&[legacy.clone(), r0(false), r1(true)], 2),
            [(0, "slicenet-gw-blue-7d9f8c5b-x2x4z".to_owned()), (1, "slicenet-gw-blue-1".to_owned())]
        );
        assert_eq!(
            names(&[legacy.clone(), r0(true), r1(true)], 2),
            [(0, "slicenet-gw-blue-0".to_owned()), (1, "slicenet-gw-blue-1".to_owned())]
        );
        assert!(replica_ready(&[r0(true)], "blue", 0));
        assert!(!replica_ready(&[r0(false), legacy.clone()], "blue", 0));
        // A replica scaled away (ordinal ≥ replicas) carries nothing.
        assert_eq!(names(&[r0(true), r1(true)], 1), [(0, "slicenet-gw-blue-0".to_owned())]);
        assert!(names(&[r0(false), r1(false)], 2).is_empty());
    }

    /// Issue 13: every running StatefulSet pod of a slice with several replicas is scraped
    /// at its pod IP, by ordinal; a one-replica slice, a pending pod, a pod without an IP, an
    /// ordinal scaled away and the Deployment of earlier versions are not.
    #[test]
    fn every_running_replica_of_a_multi_replica_slice_is_scraped() {
        let ws = |replicas: u32| -> WorkerSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "blue", "namespace": "slicenet-cluster-c2"},
                "spec": {"slice": "blue", "cluster": "c2", "sliceSubnet": "10.80.0.0/16",
                         "clusterPrefix": "10.80.16.0/20", "nodePrefixLength": 26, "vni": 100,
                         "gateway": {"replicas": replicas}},
            }))
            .unwrap()
        };
        let with_ip = |name: &str, ip: &str| {
            let mut status = ready_status(true);
            status["podIP"] = json!(ip);
            gw(name, status, Some("n1"))
        };
        let pods = [
            with_ip("slicenet-gw-blue-1", "10.244.0.8"),
            with_ip("slicenet-gw-blue-0", "10.244.0.7"),
            with_ip("slicenet-gw-blue-2", "10.244.0.9"), // beyond replicas: 2
            with_ip("slicenet-gw-blue-7d9f8c5b-x2x4z", "10.244.0.6"), // the old Deployment's
            gw("slicenet-gw-blue-3", json!({"phase": "Pending"}), None),
        ];
        let addr = |a: &str| -> std::net::SocketAddr { a.parse().unwrap() };
        assert_eq!(
            replicas_to_scrape(&[ws(2)], "c2", &pods),
            [("blue".to_owned(), 0, addr("10.244.0.7:9586")), ("blue".to_owned(), 1, addr("10.244.0.8:9586"))]
        );
        assert_eq!(replicas_to_scrape(&[ws(1)], "c2", &pods), [], "one replica: the slice's scrape is enough");
        assert_eq!(replicas_to_scrape(&[ws(2)], "c3", &pods), [], "another cluster's WorkerSlice");
        let mut without_ip = ready_status(true);
        without_ip.as_object_mut().unwrap().remove("podIP");
        let no_ip = [gw("slicenet-gw-blue-0", without_ip, Some("n1"))];
        assert_eq!(replicas_to_scrape(&[ws(4)], "c2", &no_ip), []);
        // A running replica that is not ready is read too: its own tunnels say more of it.
        let mut not_ready = ready_status(false);
        not_ready["podIP"] = json!("10.244.0.8");
        let pods = [gw("slicenet-gw-blue-1", not_ready, Some("n1"))];
        assert_eq!(replicas_to_scrape(&[ws(2)], "c2", &pods), [("blue".to_owned(), 1, addr("10.244.0.8:9586"))]);
    }

    /// Issue 13: each replica's tunnels from its own metrics. A peer cluster is reached when any
    /// of its replicas' keys is live for this replica (probes answered; without probes, a
    /// handshake within 180 s); an Up replica missing one says which, an Up replica whose
    /// metrics cannot be read says so, and a Down one keeps its pod's reason.
    #[test]
    fn replica_tunnels_count_clusters_reached_through_any_of_their_replicas() {
        use slice_api::crd::{GatewayReplicaStatus, PeerReplica, WorkerPeer};
        use slice_gateway::metrics::{PeerSample, Sample, render};
        const C1_0: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
        const C1_1: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
        const C3_0: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";
        let now: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        let ago = |secs: i64| (now.as_second() - secs) as f64;
        let peer = |cluster: &str, key: Option<&str>, replica: Option<&str>| WorkerPeer {
            cluster: cluster.into(),
            prefix: "10.80.0.0/20".into(),
            secondary_prefix: None,
            public_key: key.map(Into::into),
            endpoint: None,
            replicas: replica
                .map(|k| PeerReplica { ordinal: 1, public_key: k.into(), endpoint: None })
                .into_iter()
                .collect(),
        };
        let peers = [peer("c1", Some(C1_0), Some(C1_1)), peer("c3", Some(C3_0), None), peer("c4", None, None)];
        // (key, last handshake, live: None when the gateway does not probe)
        let text = |samples: &[(&str, f64, Option<bool>)]| {
            render(&Sample {
                interface: "sg-blue".into(),
                peers: samples
                    .iter()
                    .map(|(k, at, live)| PeerSample {
                        public_key: (*k).into(),
                        last_handshake: *at,
                        live: *live,
                        ..PeerSample::default()
                    })
                    .collect(),
                ..Sample::default()
            })
        };
        let replica = |ordinal: u32, state: &str, reason: &str| GatewayReplicaStatus {
            ordinal,
            state: state.into(),
            reason: reason.into(),
            ..GatewayReplicaStatus::default()
        };
        let mut replicas = vec![
            replica(0, "Up", ""),
            replica(1, "Up", ""),
            replica(2, "Down", "CrashLoopBackOff"),
            replica(3, "Up", ""),
            replica(4, "Pending", "no gateway pod yet"),
        ];
        let metrics: BTreeMap<u32, Result<String, String>> = [
            // c1 through its first replica, c3 too: everything but c4, which has no key.
            (0, Ok(text(&[(C1_0, ago(5), Some(true)), (C1_1, ago(5), Some(false)), (C3_0, ago(5), Some(true))]))),
            // c1 through its second replica only; c3 silent however fresh its handshake.
            (1, Ok(text(&[(C1_0, ago(5), Some(false)), (C1_1, ago(5), Some(true)), (C3_0, ago(1), Some(false))]))),
            // Runs (not ready): counted, its pod's reason kept. No probes: handshake age rules.
            (2, Ok(text(&[(C1_0, ago(180), None), (C3_0, ago(181), None)]))),
            (3, Err("connecting to 10.244.0.10:9586: Connection refused".to_owned())),
        ]
        .into_iter()
        .collect();
        replica_tunnels(&mut replicas, &peers, &metrics, now);
        let got: Vec<(u32, Option<u32>, Vec<String>, &str)> =
            replicas.iter().map(|r| (r.ordinal, r.live_tunnels, r.unreachable.clone(), r.reason.as_str())).collect();
        let v = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                (0, Some(2), v(&["c4"]), "no live tunnel to c4"),
                (1, Some(1), v(&["c3", "c4"]), "no live tunnel to c3, c4"),
                (2, Some(1), v(&["c3", "c4"]), "CrashLoopBackOff"),
                (3, None, v(&[]), "metrics not read: connecting to 10.244.0.10:9586: Connection refused"),
                (4, None, v(&[]), "no gateway pod yet"),
            ]
        );
        // Not a slice-gateway's text: read, but unusable.
        let mut one = vec![replica(0, "Up", "")];
        let garbage = [(0, Ok("# TYPE up gauge\nup 1\n".to_owned()))].into_iter().collect();
        replica_tunnels(&mut one, &peers, &garbage, now);
        assert!(one[0].reason.starts_with("metrics not read: reading its metrics: no "), "{}", one[0].reason);
        // Every cluster reached: no reason, nothing unreachable, and nothing in the JSON but
        // the count (a one-replica status never has these fields).
        let mut all = vec![replica(0, "Up", "")];
        let fine = [(0, Ok(text(&[(C1_1, ago(5), Some(true)), (C3_0, ago(5), Some(true))])))].into_iter().collect();
        replica_tunnels(&mut all, &peers[..2], &fine, now);
        let json = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(json, json!({"ordinal": 0, "state": "Up", "liveTunnels": 2}));
    }

    #[test]
    fn an_invalid_spec_is_a_problem_but_keeps_its_gateway_configured() {
        let spec = serde_json::from_value(serde_json::json!({
            "slice": "blue", "cluster": "c2", "sliceSubnet": "10.80.0.0/16",
            "clusterPrefix": "10.81.0.0/20", "nodePrefixLength": 26, "vni": 100,
            "peers": [{"cluster": "c1", "prefix": "10.80.0.0/20",
                       "publicKey": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="}],
        }))
        .unwrap();
        let observed = Observed { worker_slices: vec![WorkerSlice::new("c2-blue", spec)], ..Observed::default() };
        let settings = Settings { cluster: "c2".into(), ..Settings::default() };
        let d = decide(&observed, &settings, &mut |_| KeyPair {
            private_key: "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".into(),
            public_key: "pub".into(),
        });
        let problem = &d.problems["c2-blue"];
        assert_eq!(problem.reason, "InvalidSpec");
        assert_eq!(
            problem.message,
            "WorkerSlice blue: clusterPrefix (not inside sliceSubnet) \"10.81.0.0/20\" is not a CIDR"
        );
        assert!(d.planned.is_empty());
        let config = d
            .writes
            .iter()
            .find_map(|w| match w {
                Write::Apply { kind: Kind::Secret, name, body, .. } if name == "slicenet-gw-blue" => Some(body),
                _ => None,
            })
            .expect("the gateway configuration is still written");
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD
            .decode(config["data"]["slicenet-gw-blue-0.conf"].as_str().unwrap());
        assert!(String::from_utf8(text.unwrap()).unwrap().contains("# cluster c1\n[Peer]\n"));
    }

    #[test]
    fn applied_means_contained() {
        let d = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [{"port": 1}]}});
        let o = json!({"metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}}, "spec": {"ports": [{"port": 1, "nodePort": 30000}]}});
        assert!(is_applied(&d, &o));
        let o2 = json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "spec": {"ports": [{"port": 1}]}});
        assert!(!is_applied(&d, &o2));
        let o3 =
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [{"port": 1}, {"port": 2}]}});
        assert!(!is_applied(&d, &o3));
    }

    #[test]
    fn gateway_address_comes_from_network_status() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "slicenet-gw-blue-0", "namespace": "slicenet-gateway",
                "labels": {"slicenet.io/slice": "blue", "app.kubernetes.io/name": "slice-gateway"},
                "annotations": {"k8s.v1.cni.cncf.io/network-status":
                    r#"[{"name":"cbr0","interface":"eth0","ips":["10.244.1.5"]},{"name":"slicenet-system/slice-blue","interface":"slice0","ips":["10.80.16.70"]}]"#}},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let prefix = "10.80.16.0/20".parse().unwrap();
        let ip = |a: &str| -> IpAddr { a.parse().unwrap() };
        assert_eq!(gateway_replica_addresses(std::slice::from_ref(&pod), "blue", 1, prefix), [ip("10.80.16.70")]);
        assert_eq!(gateway_replica_addresses(std::slice::from_ref(&pod), "red", 1, prefix), Vec::<IpAddr>::new());
        let mut pending = pod.clone();
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert_eq!(gateway_replica_addresses(&[pending], "blue", 1, prefix), Vec::<IpAddr>::new());
        // Two replicas, in ordinal order whatever the pods' order.
        let mut second = pod.clone();
        second.metadata.name = Some("slicenet-gw-blue-1".into());
        second.metadata.annotations.as_mut().unwrap().insert(
            NETWORK_STATUS_ANNOTATION.into(),
            r#"[{"name":"slicenet-gateway/slice-blue","interface":"slice0","ips":["10.80.16.9"]}]"#.into(),
        );
        assert_eq!(
            gateway_replica_addresses(&[second, pod.clone()], "blue", 2, prefix),
            [ip("10.80.16.70"), ip("10.80.16.9")]
        );

        // Its metrics are read at the pod IP, once it has one.
        assert_eq!(gateway_metrics_address(std::slice::from_ref(&pod), "blue", 1), None);
        let mut with_ip = pod;
        with_ip.status.as_mut().unwrap().pod_ip = Some("10.244.1.5".into());
        assert_eq!(gateway_metrics_address(&[with_ip], "blue", 1), Some("10.244.1.5:9586".parse().unwrap()));
    }

    fn app_pod(ns: &str, name: &str, phase: &str, networks: &[&str]) -> Pod {
        let entries: Vec<Value> = std::iter::once(json!({"name": "cbr0", "interface": "eth0", "ips": ["10.244.0.9"]}))
            .chain(networks.iter().map(|n| json!({"name": n, "interface": "slice0", "ips": ["10.80.16.5"]})))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns,
                "annotations": {NETWORK_STATUS_ANNOTATION: Value::Array(entries).to_string()}},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn connected_pods_are_running_members_with_the_slice_entry() {
        let mut deleting = app_pod("shop", "d", "Running", &["shop/slice-blue"]);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2026-11-23T20:00:00Z".parse().unwrap()));
        let mut garbled = app_pod("shop", "g", "Running", &[]);
        garbled.metadata.annotations.as_mut().unwrap().insert(NETWORK_STATUS_ANNOTATION.into(), "{not json".into());
        let pods = [
            app_pod("shop", "a", "Running", &["shop/slice-blue"]),
            app_pod("web", "b", "Running", &["web/slice-blue"]),
            app_pod("shop", "c", "Running", &[]), // no slice interface
            app_pod("shop", "e", "Running", &["shop/slice-red"]), // another slice's
            app_pod("shop", "f", "Running", &["web/slice-blue"]), // another namespace's NAD
            app_pod("shop", "h", "Succeeded", &["shop/slice-blue"]),
            app_pod("db", "i", "Running", &["db/slice-blue"]), // not an effective member
            deleting,
            garbled,
        ];
        let members = ["shop".to_owned(), "web".to_owned()];
        assert_eq!(connected_pods(&pods, "blue", &members), 2);
        assert_eq!(connected_pods(&pods, "red", &members), 1);
        assert_eq!(connected_pods(&pods, "blue", &[]), 0);
    }

    fn peer(cluster: &str) -> slice_api::crd::WorkerPeer {
        serde_json::from_value(json!({"cluster": cluster, "prefix": "10.80.0.0/20"})).unwrap()
    }

    fn tunnel(cluster: &str, state: &str, reason: &str) -> slice_api::crd::PeerTunnelStatus {
        serde_json::from_value(json!({"cluster": cluster, "state": state, "reason": reason})).unwrap()
    }

    #[test]
    fn ready_needs_every_peer_tunnel_up() {
        let spec = [peer("c1"), peer("c3")];
        assert_eq!(tunnels_down(&[], &[]), None, "no peers: nothing to wait for");
        assert_eq!(tunnels_down(&spec, &[tunnel("c1", "Up", ""), tunnel("c3", "Up", "")]), None);
        assert_eq!(
            tunnels_down(&spec, &[tunnel("c1", "Up", ""), tunnel("c3", "Down", "no handshake for 200 s")]).as_deref(),
            Some("tunnels not up: c3 (Down)"),
            "the state, not the ageing reason: the message must not change with the clock"
        );
        assert_eq!(
            tunnels_down(&spec, &[tunnel("c1", "Up", "")]).as_deref(),
            Some("tunnels not up: c3 (Pending)"),
            "a peer without a reported state is not up"
        );
    }

    #[test]
    fn status_notices_follow_flips_only() {
        let mut ws: WorkerSlice = serde_json::from_value(json!({
            "metadata": {"name": "blue", "namespace": "slicenet-cluster-c2", "uid": "u"},
            "spec": {"slice": "blue", "cluster": "c2", "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.16.0/20",
                     "nodePrefixLength": 26, "vni": 100, "namespaces": [], "peers": []},
        }))
        .unwrap();
        let status = |ready: bool, reason: &str, peers: Vec<slice_api::crd::PeerTunnelStatus>| WorkerSliceStatus {
            conditions: vec![Condition::new("Ready", ready, reason, "m")],
            peers,
            ..WorkerSliceStatus::default()
        };
        let reasons = |n: Vec<Notice>| n.into_iter().map(|n| (n.reason, n.type_.as_str())).collect::<Vec<_>>();
        let pending = status(false, "GatewayPending", vec![tunnel("c1", "Pending", "")]);
        assert_eq!(reasons(status_notices(&ws, &pending)), [("WorkerSliceNotReady", "Normal")]);
        ws.status = Some(pending.clone());
        assert_eq!(reasons(status_notices(&ws, &pending)), [], "nothing changed");
        let up = status(true, "Ready", vec![tunnel("c1", "Up", "")]);
        assert_eq!(reasons(status_notices(&ws, &up)), [("WorkerSliceReady", "Normal"), ("TunnelUp", "Normal")]);
        ws.status = Some(up);
        let down = status(false, TUNNELS_DOWN, vec![tunnel("c1", "Down", "no handshake for 181 s")]);
        let notices = status_notices(&ws, &down);
        assert_eq!(notices[1].note, "tunnel to cluster c1 is Down: no handshake for over 180 s");
        assert_eq!(reasons(notices), [("WorkerSliceNotReady", "Warning"), ("TunnelDown", "Warning")]);
    }
}
