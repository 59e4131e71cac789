//! One pass of the worker, the thin shell around [`super::decide`]: read what the hub and the
//! cluster show, decide, write in order, stopping at the first failure (the pass is then retried
//! with backoff by [`super::run`]; every write is idempotent, so a retry redoes only what is
//! still missing).
//!
//! Requests of a pass, in order (each declared in `access::WORKER_HUB` / `WORKER_CLUSTER`):
//! hub: list WorkerSlices in `slicenet-cluster-<cluster>`, get the MemberCluster; cluster: list
//! Nodes, Namespaces, then the worker's Secrets, ConfigMaps, Deployments (the gateway's of
//! earlier versions, until replaced), StatefulSets, Services and the gateway Pods (by label), the running Pods of each member namespace
//! (for `connectedPods`), and NADs in all namespaces when Multus is used; the MCS API group's
//! discovery document and the multi-cluster services' objects in the version it serves
//! ([`served_mcs_version`]); then the writes.
//!
//! Besides the API, a pass reads each slice's gateway metrics over HTTP (at the gateway pod's IP,
//! all gateways at once, each within [`scrape::TIMEOUT`]) for the tunnels' state: the replica
//! that speaks for the slice's tunnels, and, for a slice with several replicas, every running
//! replica for its own tunnels (each address once).
//!
//! NADs are listed in every pass, Multus or not, so that those the worker wrote are deleted
//! when Multus is turned off (a cluster without the NAD CRD answers 404: none).
//!
//! Every write is made only while this replica leads ([`Leadership::check`]); a pass that finds
//! it does not stops at once with [`WorkerError::NotLeading`]. After the writes (or the first
//! failed one) the pass publishes its Events: WorkerSlice ones on the hub, the others in the
//! member cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::json;
use slice_api::crd::{GATEWAY_NAMESPACE, MemberCluster, SYSTEM_NAMESPACE, WorkerSlice, cluster_namespace};
use slice_api::mcs::{GROUP as MCS_GROUP, McsVersion, ServiceExport};
use slice_api::multus;
use slice_api::names::{
    self, COREDNS_CONFIG_MAP, KUBE_SYSTEM_NAMESPACE, NODE_LOCAL_DNS_CONFIG_MAP, SLICE_DNS_SERVICE, SLICE_LABEL,
};

use super::decide::{self, Kind, Observed, Settings, Write};
use super::keys::{self, KeyPair};
use super::{objects, scrape, tunnels};
use crate::events::{Notice, Recorder, reason};
use crate::leader::{Leadership, NotLeading};

/// Field manager of the worker's server-side applies.
pub const FIELD_MANAGER: &str = "slicenet-worker";
/// The reporting controller of the worker's Events.
pub const EVENT_CONTROLLER: &str = "slicenet.io/worker";

/// A pass that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Reading the hub or the cluster failed.
    #[error("reading {what}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// A write failed; the writes before it were made.
    #[error("{what}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// An object could not be encoded for the API (a bug).
    #[error("encoding {what}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// This replica stopped leading: the pass stopped before its next write.
    #[error(transparent)]
    NotLeading(#[from] NotLeading),
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Number of writes made.
    pub writes: usize,
}

type KeySource = Box<dyn FnMut(&str) -> KeyPair + Send>;

/// Reads the metrics text a gateway serves at an address, or says why it could not (the
/// message goes into the peers' reasons). The worker's own is [`http_metrics`]; tests pass
/// canned text.
pub type MetricsSource = Box<dyn Fn(SocketAddr) -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// The [`MetricsSource`] that GETs `http://<address>/metrics` within [`scrape::TIMEOUT`].
#[must_use]
pub fn http_metrics() -> MetricsSource {
    Box::new(|addr| {
        Box::pin(async move {
            scrape::fetch_metrics(addr, scrape::TIMEOUT).await.map_err(|e| slice_api::error_chain::chain(&e))
        })
    })
}

/// The local clock at `sent` minus the API server's, in whole seconds, from an object the
/// server returned for a status write sent at `sent`: the server stamps every write in
/// `metadata.managedFields[].time` (to the second), and the latest status entry is this write
/// (or one made after it). `None` without such a stamp (an API that keeps no managed fields).
/// The round trip and the rounding make it exact to a second or two, no better.
#[must_use]
pub fn clock_offset(meta: &kube::api::ObjectMeta, sent: Timestamp) -> Option<i64> {
    let stamped = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.time.as_ref())
        .map(|t| t.0)
        .max()?;
    Some(sent.as_second() - stamped.as_second())
}

/// One gateway address as the last pass saw it: where its metrics are, the slice's peers, and
/// what the status took from them — each peer's state ([`tunnels::states`]) when it speaks for
/// the slice's tunnels, the clusters it does not reach ([`tunnels::reach_state`]) when it is one
/// of several replicas (both when the replica that speaks is one of them).
#[derive(Debug, Clone)]
struct WatchedGateway {
    address: SocketAddr,
    peers: Vec<slice_api::crd::WorkerPeer>,
    states: Option<Vec<(String, String, String)>>,
    reach: Option<Option<Vec<String>>>,
}

impl WatchedGateway {
    /// Whether `scrape` (the same address read again) says something else than the pass saw.
    fn changed(&self, scrape: Result<&str, &str>, now: Timestamp) -> bool {
        self.states.as_ref().is_some_and(|s| *s != tunnels::states(&self.peers, scrape, now))
            || self.reach.as_ref().is_some_and(|r| *r != tunnels::reach_state(&self.peers, scrape, now))
    }
}

/// The worker's clients and settings.
pub struct Worker {
    hub: Client,
    local: Client,
    settings: Settings,
    new_key: Mutex<KeySource>,
    metrics: MetricsSource,
    /// When this process last wrote each WorkerSlice's status (the churn rule of
    /// [`decide::decide_status`]).
    status_written: Mutex<BTreeMap<String, Timestamp>>,
    /// The gateways the last pass scraped, with the tunnel states it saw: what
    /// [`Worker::tunnels_changed`] scrapes again between passes.
    tunnel_watch: Mutex<Vec<WatchedGateway>>,
    /// Each paged slice's peer list as last read from its pages, with the revision it matched
    /// (a pass reads the pages again only when the WorkerSlice's revision moved).
    peer_pages: Mutex<BTreeMap<String, (String, Vec<slice_api::crd::WorkerPeer>)>>,
    /// This worker's clock minus the hub API server's, from the last heartbeat ([`clock_offset`]).
    clock_offset: Mutex<Option<i64>>,
    /// The optional CRDs the last pass found missing in the cluster (`None` before a pass).
    missing_crds: Mutex<Option<Vec<String>>>,
    /// The cluster's nodes as the last pass saw them (`None` before a pass): whose agents the
    /// heartbeat reports.
    node_names: Mutex<Option<Vec<String>>>,
    /// How the heartbeat asks slice-dns ([`super::dnsprobe`]).
    dns: super::dnsprobe::DnsSource,
    /// The slice-dns Service's address as the last pass read it (none: no such Service).
    dns_target: Mutex<Option<SocketAddr>>,
    recorder: Recorder,
    leadership: Leadership,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("settings", &self.settings).finish_non_exhaustive()
    }
}

fn nad_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", multus::NAD_KIND);
    ApiResource::from_gvk_with_plural(&gvk, "network-attachment-definitions")
}

fn resource(kind: Kind, mcs: McsVersion) -> ApiResource {
    match kind {
        Kind::Secret => ApiResource::erase::<Secret>(&()),
        Kind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        Kind::Service => ApiResource::erase::<Service>(&()),
        Kind::NetworkAttachmentDefinition => nad_resource(),
        Kind::ServiceImport => mcs.service_imports(),
        Kind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        Kind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
    }
}

/// The version of the MCS API to read and write in the cluster of `client`: the newest that
/// the group's discovery document (`GET /apis/multicluster.x-k8s.io`) lists and slicenet knows.
/// CRDs installed by someone else may serve `v1alpha1` only (older mcs-api) or `v1beta1` only.
/// A 404 (no MCS CRDs, or an API without discovery such as the lab's in-memory one), or a
/// group serving only versions slicenet does not know: `v1alpha1`, as before `v1beta1`
/// existed (reads then find nothing where the CRDs are missing).
///
/// # Errors
/// When the discovery request fails otherwise.
pub async fn served_mcs_version(client: &Client) -> Result<McsVersion, kube::Error> {
    let request = http::Request::get(format!("/apis/{MCS_GROUP}"))
        .body(Vec::new())
        .map_err(|e| kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
    match client.request::<k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroup>(request).await {
        Ok(group) => {
            let served = group.versions.iter().map(|v| v.version.as_str());
            Ok(McsVersion::served(served.clone()).unwrap_or_else(|| {
                let listed: Vec<&str> = served.collect();
                tracing::warn!(?listed, "the cluster serves no version of {MCS_GROUP} slicenet knows");
                McsVersion::default()
            }))
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(McsVersion::default()),
        Err(e) => Err(e),
    }
}

/// The address of the slice-dns Service: its cluster IP and DNS port (53 unless it says).
fn dns_address(service: &Service) -> Option<SocketAddr> {
    let spec = service.spec.as_ref()?;
    let ip: std::net::IpAddr = spec.cluster_ip.as_deref()?.parse().ok()?;
    let port = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.protocol.as_deref().is_none_or(|proto| proto == "UDP"))
        .and_then(|p| u16::try_from(p.port).ok())
        .unwrap_or(53);
    Some(SocketAddr::new(ip, port))
}

/// Adds `crd` to `missing` when `result` is the 404 of a cluster without that CRD.
fn note_missing<T: Clone>(
    missing: &mut Vec<String>,
    crd: &str,
    result: &Result<kube::core::ObjectList<T>, kube::Error>,
) {
    if matches!(result, Err(kube::Error::Api(status)) if status.code == 404) {
        missing.push(crd.to_owned());
    }
}

/// A list that answers 404 when the cluster lacks the kind's CRD: none.
fn none_if_missing<T>(result: Result<kube::core::ObjectList<T>, kube::Error>) -> Result<Vec<T>, kube::Error>
where
    T: Clone,
{
    match result {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

impl Worker {
    /// A worker with fresh random gateway keys.
    #[must_use]
    pub fn new(hub: Client, local: Client, settings: Settings) -> Self {
        Self::with_key_source(hub, local, settings, Box::new(|_| keys::generate_key_pair()))
    }

    /// A worker whose new gateway keys come from `new_key` (tests pass fixed keys).
    #[must_use]
    pub fn with_key_source(hub: Client, local: Client, settings: Settings, new_key: KeySource) -> Self {
        Self {
            hub,
            local,
            settings,
            new_key: Mutex::new(new_key),
            metrics: http_metrics(),
            status_written: Mutex::new(BTreeMap::new()),
            tunnel_watch: Mutex::new(Vec::new()),
            peer_pages: Mutex::new(BTreeMap::new()),
            clock_offset: Mutex::new(None),
            missing_crds: Mutex::new(None),
            node_names: Mutex::new(None),
            dns: super::dnsprobe::udp_dns(),
            dns_target: Mutex::new(None),
            recorder: Recorder::new(EVENT_CONTROLLER, crate::leader::hostname()),
            leadership: Leadership::unconditional(),
        }
    }

    /// The same worker writing only while `leadership` allows.
    #[must_use]
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    /// The same worker publishing its Events through `recorder`.
    #[must_use]
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = recorder;
        self
    }

    /// The same worker reading gateway metrics from `source` (tests pass canned text).
    #[must_use]
    pub fn with_metrics_source(mut self, source: MetricsSource) -> Self {
        self.metrics = source;
        self
    }

    /// The same worker asking slice-dns through `source` (the lab's enters a namespace).
    #[must_use]
    pub fn with_dns_source(mut self, source: super::dnsprobe::DnsSource) -> Self {
        self.dns = source;
        self
    }

    /// Keeps the gateways just scraped, with their tunnels' states (and each replica's
    /// unreached clusters), for [`Worker::tunnels_changed`].
    fn watch_tunnels(
        &self,
        worker_slices: &[WorkerSlice],
        targets: &[(String, Option<SocketAddr>)],
        replica_targets: &[(String, u32, SocketAddr)],
        scraped: &BTreeMap<SocketAddr, Result<String, String>>,
    ) {
        let now = Timestamp::now();
        let mut watched: BTreeMap<SocketAddr, WatchedGateway> = BTreeMap::new();
        let speakers = targets.iter().filter_map(|(slice, address)| Some((slice, (*address)?, true)));
        let replicas = replica_targets.iter().map(|(slice, _, address)| (slice, *address, false));
        for (slice, address, speaks) in speakers.chain(replicas) {
            let Some(ws) = worker_slices.iter().find(|ws| &ws.spec.slice == slice) else { continue };
            let Some(text) = scraped.get(&address) else { continue };
            let text = text.as_deref().map_err(String::as_str);
            let entry = watched.entry(address).or_insert_with(|| WatchedGateway {
                address,
                peers: ws.spec.peers.clone(),
                states: None,
                reach: None,
            });
            if speaks {
                entry.states = Some(tunnels::states(&ws.spec.peers, text, now));
            } else {
                entry.reach = Some(tunnels::reach_state(&ws.spec.peers, text, now));
            }
        }
        *self.tunnel_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = watched.into_values().collect();
    }

    /// Scrapes the gateways of the last pass again and says whether a tunnel's state or reason
    /// (or the clusters a replica reaches) changed since (the worker then runs a pass at once).
    /// Only HTTP to the gateway pods, no API request: cheap enough every few seconds, so a cut
    /// link shows in the WorkerSlice status within seconds, not at the next resync.
    pub async fn tunnels_changed(&self) -> bool {
        let watched = self.tunnel_watch.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let now = Timestamp::now();
        let checks = watched.into_iter().map(|w| async move {
            let text = (self.metrics)(w.address).await;
            w.changed(text.as_deref().map_err(String::as_str), now)
        });
        futures::future::join_all(checks).await.into_iter().any(|changed| changed)
    }

    /// Fills in the peers of every WorkerSlice that points at pages (`spec.peerPages`) from its
    /// slice's `SlicePeers` pages on the hub, as an inline `spec.peers` would list them, so that
    /// everything after this reads the peers as before. The pages are read again only when the
    /// revision moved since they were last read; a page that is not there holds no peer. Pages
    /// whose entries do not match the revision (the hub is between two writes) are used, and
    /// read again at the next pass. A WorkerSlice being deleted needs none: its slice is torn
    /// down (and the hub has taken its read access away).
    ///
    /// # Errors
    /// [`WorkerError::Read`] when a page cannot be read.
    async fn read_peer_pages(&self, worker_slices: &mut [WorkerSlice]) -> Result<(), WorkerError> {
        use slice_api::crd::{PEERS_NAMESPACE, SlicePeers, peer_page_name, peers_from_pages};
        let api = Api::<SlicePeers>::namespaced(self.hub.clone(), PEERS_NAMESPACE);
        let mut cache = std::mem::take(&mut *self.peer_pages.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let mut kept = BTreeMap::new();
        for ws in worker_slices.iter_mut() {
            let Some(pointer) = ws.spec.peer_pages.clone() else { continue };
            if ws.metadata.deletion_timestamp.is_some() || !ws.spec.peers.is_empty() {
                continue;
            }
            let slice = ws.spec.slice.clone();
            let (peers, matched) = match cache.remove(&slice) {
                Some((revision, peers)) if revision == pointer.revision => (peers, true),
                _ => {
                    let mut pages = Vec::new();
                    for page in 0..pointer.pages {
                        let name = peer_page_name(&slice, page);
                        let got = api.get_opt(&name).await.map_err(|source| WorkerError::Read {
                            what: format!("SlicePeers {PEERS_NAMESPACE}/{name} on the hub"),
                            source,
                        })?;
                        pages.extend(got.filter(|p| p.spec.slice == slice).map(|p| p.spec.peers));
                    }
                    // Every entry, this cluster's too: the revision covers them all.
                    let (all, revision) = peers_from_pages("", pages.iter());
                    let matched = revision == pointer.revision;
                    if !matched {
                        tracing::debug!(%slice, %revision, wanted = %pointer.revision, "peer pages not at the WorkerSlice's revision yet");
                    }
                    (all, matched)
                }
            };
            ws.spec.peers = peers.iter().filter(|p| p.cluster != ws.spec.cluster).cloned().collect();
            if matched {
                kept.insert(slice, (pointer.revision, peers));
            }
        }
        *self.peer_pages.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = kept;
        Ok(())
    }

    /// Reads everything a pass decides from.
    ///
    /// # Errors
    /// [`WorkerError::Read`] naming what could not be read.
    pub async fn observe(&self, cluster: &str) -> Result<Observed, WorkerError> {
        let read = |what: &str| {
            let what = what.to_owned();
            move |source| WorkerError::Read { what, source }
        };
        let managed = ListParams::default().labels(&objects::managed_selector());
        let hub_ns = cluster_namespace(cluster);
        let worker_slices =
            Api::<WorkerSlice>::namespaced(self.hub.clone(), &hub_ns).list(&ListParams::default()).await;
        let mut worker_slices = worker_slices.map_err(read(&format!("WorkerSlices in {hub_ns} on the hub")))?.items;
        self.read_peer_pages(&mut worker_slices).await?;
        let member_cluster = Api::<MemberCluster>::all(self.hub.clone())
            .get_opt(cluster)
            .await
            .map_err(read(&format!("MemberCluster {cluster} on the hub")))?;
        let nodes = Api::<Node>::all(self.local.clone()).list(&ListParams::default()).await.map_err(read("Nodes"))?;
        *self.node_names.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(nodes.items.iter().map(kube::ResourceExt::name_any).collect());
        let namespaces =
            Api::<Namespace>::all(self.local.clone()).list(&ListParams::default()).await.map_err(read("Namespaces"))?;
        let (sys, gw) = (SYSTEM_NAMESPACE, GATEWAY_NAMESPACE);
        let secrets =
            Api::<Secret>::namespaced(self.local.clone(), gw).list(&managed).await.map_err(read("Secrets"))?;
        let config_maps =
            Api::<ConfigMap>::namespaced(self.local.clone(), sys).list(&managed).await.map_err(read("ConfigMaps"))?;
        let deployments =
            Api::<Deployment>::namespaced(self.local.clone(), gw).list(&managed).await.map_err(read("Deployments"))?;
        let stateful_sets = Api::<StatefulSet>::namespaced(self.local.clone(), gw)
            .list(&managed)
            .await
            .map_err(read("StatefulSets"))?;
        let services =
            Api::<Service>::namespaced(self.local.clone(), gw).list(&managed).await.map_err(read("Services"))?;
        let gateway_pods = ListParams::default().labels(&format!("{}={}", objects::NAME_LABEL, objects::GATEWAY_NAME));
        let pods =
            Api::<Pod>::namespaced(self.local.clone(), gw).list(&gateway_pods).await.map_err(read("gateway Pods"))?;
        // Only running pods can have the slice interface; the API server filters them.
        let running = ListParams::default().fields("status.phase=Running");
        let mut member_pods = Vec::new();
        for ns in decide::namespaces_to_count(&worker_slices, cluster, &namespaces.items) {
            let list = Api::<Pod>::namespaced(self.local.clone(), &ns)
                .list(&running)
                .await
                .map_err(read(&format!("Pods in {ns}")))?;
            member_pods.extend(list.items);
        }
        // Listed with or without Multus: NADs left from when it was on must go.
        let nads = match Api::<DynamicObject>::all_with(self.local.clone(), &nad_resource()).list(&managed).await {
            Ok(list) => list.items,
            // No NAD CRD in this cluster: there are none.
            Err(kube::Error::Api(status))
                if status.code == 404 && !self.settings.uses_multus(member_cluster.as_ref()) =>
            {
                Vec::new()
            }
            Err(e) => return Err(read("NetworkAttachmentDefinitions")(e)),
        };
        let targets = decide::gateways_to_scrape(&worker_slices, cluster, &pods.items);
        let replica_targets = decide::replicas_to_scrape(&worker_slices, cluster, &pods.items);
        // Every address once (the replica that speaks for the slice is one of the replicas).
        let addresses: BTreeSet<SocketAddr> =
            targets.iter().filter_map(|(_, a)| *a).chain(replica_targets.iter().map(|(_, _, a)| *a)).collect();
        let scrapes = addresses.into_iter().map(|addr| async move { (addr, (self.metrics)(addr).await) });
        let scraped: BTreeMap<SocketAddr, Result<String, String>> =
            futures::future::join_all(scrapes).await.into_iter().collect();
        let text_at = |addr: &SocketAddr| scraped.get(addr).cloned().unwrap_or_else(|| Err("not scraped".to_owned()));
        let gateway_metrics: BTreeMap<String, Result<String, String>> = targets
            .iter()
            .map(|(slice, address)| {
                let text =
                    address.as_ref().map_or_else(|| Err("no running gateway pod with an IP".to_owned()), text_at);
                (slice.clone(), text)
            })
            .collect();
        let mut replica_metrics: BTreeMap<String, BTreeMap<u32, Result<String, String>>> = BTreeMap::new();
        for (slice, ordinal, address) in &replica_targets {
            replica_metrics.entry(slice.clone()).or_default().insert(*ordinal, text_at(address));
        }
        self.watch_tunnels(&worker_slices, &targets, &replica_targets, &scraped);
        // Multi-cluster services: every ServiceExport (the MCS CRDs may be missing: none), the
        // Services and EndpointSlices of the namespaces that export, what the worker imported,
        // the slice-dns Service and the cluster's Corefiles.
        let mcs_version =
            served_mcs_version(&self.local).await.map_err(read(&format!("the served versions of {MCS_GROUP}")))?;
        // The optional CRDs this cluster lacks (reported with the heartbeat).
        let mut missing = Vec::new();
        let service_exports = Api::<DynamicObject>::all_with(self.local.clone(), &mcs_version.service_exports())
            .list(&ListParams::default())
            .await;
        note_missing(&mut missing, &format!("serviceexports.{MCS_GROUP}"), &service_exports);
        let service_exports = none_if_missing(service_exports).map_err(read("ServiceExports"))?;
        // Read in any version: the fields the worker reads (metadata, status.conditions) are
        // the same in all.
        let service_exports: Vec<ServiceExport> = service_exports
            .into_iter()
            .filter_map(|o| serde_json::to_value(o).and_then(serde_json::from_value).ok())
            .collect();
        let mut exporting: Vec<String> = service_exports.iter().filter_map(kube::ResourceExt::namespace).collect();
        exporting.sort();
        exporting.dedup();
        let member_namespaces = decide::namespaces_to_count(&worker_slices, cluster, &namespaces.items);
        exporting.retain(|ns| member_namespaces.contains(ns));
        let (mut exported_services, mut endpoint_slices) = (Vec::new(), Vec::new());
        let owned_by_service = ListParams::default().labels(super::services::SERVICE_NAME_LABEL);
        for ns in &exporting {
            let svcs = Api::<Service>::namespaced(self.local.clone(), ns)
                .list(&ListParams::default())
                .await
                .map_err(read(&format!("Services in {ns}")))?;
            exported_services.extend(svcs.items);
            let slices = Api::<EndpointSlice>::namespaced(self.local.clone(), ns)
                .list(&owned_by_service)
                .await
                .map_err(read(&format!("EndpointSlices in {ns}")))?;
            endpoint_slices.extend(slices.items);
        }
        let service_imports =
            Api::<DynamicObject>::all_with(self.local.clone(), &resource(Kind::ServiceImport, mcs_version))
                .list(&managed)
                .await;
        note_missing(&mut missing, &format!("serviceimports.{MCS_GROUP}"), &service_imports);
        let service_imports = none_if_missing(service_imports).map_err(read("ServiceImports"))?;
        let mcs_managed = ListParams::default().labels(&format!(
            "{},{}={}",
            objects::managed_selector(),
            slice_api::mcs::MANAGED_BY_LABEL,
            slice_api::mcs::MANAGED_BY
        ));
        let mcs_endpoint_slices =
            Api::<DynamicObject>::all_with(self.local.clone(), &resource(Kind::EndpointSlice, mcs_version))
                .list(&mcs_managed)
                .await
                .map_err(read("MCS EndpointSlices"))?
                .items;
        let dns_service = Api::<Service>::namespaced(self.local.clone(), sys)
            .get_opt(SLICE_DNS_SERVICE)
            .await
            .map_err(read(&format!("Service {sys}/{SLICE_DNS_SERVICE}")))?;
        *self.dns_target.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            dns_service.as_ref().and_then(dns_address);
        let mut dns_config_maps = Vec::new();
        for name in [COREDNS_CONFIG_MAP, NODE_LOCAL_DNS_CONFIG_MAP] {
            let cm = Api::<ConfigMap>::namespaced(self.local.clone(), KUBE_SYSTEM_NAMESPACE)
                .get_opt(name)
                .await
                .map_err(read(&format!("ConfigMap {KUBE_SYSTEM_NAMESPACE}/{name}")))?;
            dns_config_maps.extend(cm);
        }
        // Policy: every MultiNetworkPolicy (its CRD may be missing: none); the worker's
        // NetworkPolicies of namespace isolation.
        let multi_network_policies = Api::<DynamicObject>::all_with(self.local.clone(), &super::policy::mnp_resource())
            .list(&ListParams::default())
            .await;
        let mnp = super::policy::mnp_resource();
        note_missing(&mut missing, &format!("{}.{}", mnp.plural, mnp.group), &multi_network_policies);
        let multi_network_policies = none_if_missing(multi_network_policies).map_err(read("MultiNetworkPolicies"))?;
        *self.missing_crds.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(missing);
        let network_policies =
            Api::<DynamicObject>::all_with(self.local.clone(), &resource(Kind::NetworkPolicy, mcs_version))
                .list(&managed)
                .await
                .map_err(read("NetworkPolicies"))?
                .items;
        Ok(Observed {
            multi_network_policies,
            network_policies,
            worker_slices,
            member_cluster,
            nodes: nodes.items,
            namespaces: namespaces.items,
            secrets: secrets.items,
            config_maps: config_maps.items,
            deployments: deployments.items,
            stateful_sets: stateful_sets.items,
            services: services.items,
            pods: pods.items,
            nads,
            member_pods,
            gateway_metrics,
            replica_metrics,
            mcs_version,
            service_exports,
            exported_services,
            endpoint_slices,
            service_imports,
            mcs_endpoint_slices,
            dns_service,
            dns_config_maps,
        })
    }

    /// One pass: observe, decide, write the objects, then the statuses, then release the
    /// finalizers of deleted slices; then publish the pass's Events. `now` (RFC 3339) stamps
    /// condition transitions and Events.
    ///
    /// # Errors
    /// The first read or write that failed (the writes before it were made), or
    /// [`WorkerError::NotLeading`].
    pub async fn reconcile_once(&self, cluster: &str, now: &str) -> Result<PassOutcome, WorkerError> {
        let observed = self.observe(cluster).await?;
        let mut notices = Vec::new();
        let mut failing = None;
        let result = self.write_pass(cluster, now, &observed, &mut notices, &mut failing).await;
        match (&result, failing) {
            (Err(WorkerError::NotLeading(_)), _) => return result,
            (Err(e), Some(write)) => notices.push(Notice::warning(
                decide::write_subject(&write, &observed),
                reason::WRITE_FAILED,
                "Reconcile",
                slice_api::error_chain::chain(e),
            )),
            _ => {}
        }
        self.publish(&notices, now).await;
        result
    }

    /// The writes of a pass; each success adds the notices it is worth to `notices`, and the
    /// write being made is in `failing` when an error comes back.
    async fn write_pass(
        &self,
        cluster: &str,
        now: &str,
        observed: &Observed,
        notices: &mut Vec<Notice>,
        failing: &mut Option<Write>,
    ) -> Result<PassOutcome, WorkerError> {
        let mut settings_cluster = self.settings.clone();
        settings_cluster.cluster = cluster.to_owned();
        now.clone_into(&mut settings_cluster.now);
        let decision = {
            let mut new_key = self.new_key.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            decide::decide(observed, &settings_cluster, &mut **new_key)
        };
        let mut outcome = PassOutcome::default();
        let mut services = observed.services.clone();
        for (i, write) in decision.writes.iter().enumerate() {
            *failing = Some(write.clone());
            if let Some(applied) = self.write(cluster, write, observed.mcs_version).await? {
                // Keep the Service the API returned: it carries the assigned nodePort.
                if let Ok(svc) = serde_json::from_value::<Service>(applied) {
                    services.retain(|s| s.metadata.name != svc.metadata.name);
                    services.push(svc);
                }
            }
            outcome.writes += 1;
            notices.extend(decision.notices.iter().filter(|(at, _)| *at == i).map(|(_, n)| n.clone()));
        }
        let written = {
            let mut written = self.status_written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            written.retain(|name, _| observed.worker_slices.iter().any(|ws| ws.metadata.name.as_ref() == Some(name)));
            written.clone()
        };
        for write in decide::decide_status(observed, &decision, &services, now, &written) {
            *failing = Some(write.clone());
            self.write(cluster, &write, observed.mcs_version).await?;
            outcome.writes += 1;
            if let Write::PatchStatus { name, status } = &write {
                if let Ok(at) = now.parse::<Timestamp>() {
                    self.status_written
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(name.clone(), at);
                }
                if let Some(ws) = observed.worker_slices.iter().find(|ws| ws.metadata.name.as_ref() == Some(name)) {
                    notices.extend(decide::status_notices(ws, status));
                }
            }
        }
        for write in decide::decide_release(observed) {
            *failing = Some(write.clone());
            self.write(cluster, &write, observed.mcs_version).await?;
            outcome.writes += 1;
            if let Write::RemoveFinalizer { name, .. } = &write
                && let Some(ws) = observed.worker_slices.iter().find(|ws| ws.metadata.name.as_ref() == Some(name))
            {
                notices.push(decide::release_notice(ws));
            }
        }
        *failing = None;
        notices.extend(decision.pass_notices.iter().cloned());
        Ok(outcome)
    }

    /// The hub's client.
    pub(super) fn hub_client(&self) -> Client {
        self.hub.clone()
    }

    /// The member cluster's client.
    pub(super) fn local_client(&self) -> Client {
        self.local.clone()
    }

    /// This replica's leadership, checked before every write.
    pub(super) fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Publishes `notices`: those about WorkerSlices on the hub, the others in the cluster.
    pub(super) async fn publish(&self, notices: &[Notice], now: &str) {
        let now = now.parse::<Timestamp>().unwrap_or_else(|_| Timestamp::now());
        let (hub, local): (Vec<Notice>, Vec<Notice>) =
            notices.iter().cloned().partition(|n| n.regarding.kind.as_deref() == Some("WorkerSlice"));
        self.recorder.publish(&self.hub, &hub, now, &self.leadership).await;
        self.recorder.publish(&self.local, &local, now, &self.leadership).await;
    }

    /// Writes `lastHeartbeat`, the worker's version, its clock offset (measured on the previous
    /// heartbeat), whether slice-dns answers, and the optional CRDs the last pass found missing into the MemberCluster's status on the hub, then measures the offset
    /// again from the time the API server stamped on this write.
    ///
    /// # Errors
    /// When the patch fails.
    pub async fn heartbeat(&self, cluster: &str, now: &str) -> Result<(), WorkerError> {
        self.leadership.check()?;
        let offset = *self.clock_offset.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut status = json!({ "lastHeartbeat": now, "workerVersion": env!("CARGO_PKG_VERSION") });
        if let Some(offset) = offset {
            status["clockOffsetSeconds"] = json!(offset);
        }
        // The node agents, from their Leases, once a pass has listed the nodes.
        let nodes = self.node_names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let (Some(nodes), Ok(at)) = (nodes, now.parse::<Timestamp>()) {
            let by_label = ListParams::default().labels(&format!(
                "{}={}",
                names::AGENT_LEASE_LABEL,
                slice_node::lease::LEASE_LABEL_VALUE
            ));
            match Api::<Lease>::namespaced(self.local.clone(), names::NODE_NAMESPACE).list(&by_label).await {
                Ok(leases) => {
                    if let Some(agents) = super::agents::agents_status(&nodes, &leases.items, at) {
                        status["agents"] = json!(agents);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listing the node agents' Leases; the heartbeat goes without them")
                }
            }
        }
        // slice-dns, where the cluster has its Service (null clears an earlier report).
        let target = *self.dns_target.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        status["dns"] = serde_json::Value::Null;
        if let Some(addr) = target
            && let Some(result) = (self.dns)(addr).await
        {
            // `problem: null` clears an earlier one (a merge patch keeps a key it does not name).
            status["dns"] = json!({ "address": addr.to_string(), "problem": result.err() });
        }
        // A merge patch keeps a list it does not name: an empty one is written to clear it.
        if let Some(missing) = self.missing_crds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            status["missingCrds"] = json!(missing);
        }
        let written = Api::<MemberCluster>::all(self.hub.clone())
            .patch_status(cluster, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .map_err(|source| WorkerError::Write { what: format!("heartbeat on MemberCluster {cluster}"), source })?;
        *self.clock_offset.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            now.parse().ok().and_then(|now| clock_offset(&written.metadata, now));
        Ok(())
    }

    /// Makes one write (multi-cluster services' objects in `mcs`); returns the applied Service's
    /// body for [`Kind::Service`] applies.
    async fn write(
        &self,
        cluster: &str,
        write: &Write,
        mcs: McsVersion,
    ) -> Result<Option<serde_json::Value>, WorkerError> {
        self.leadership.check()?;
        let hub_slices = || Api::<WorkerSlice>::namespaced(self.hub.clone(), &cluster_namespace(cluster));
        let dynamic =
            |kind: Kind, ns: &str| Api::<DynamicObject>::namespaced_with(self.local.clone(), ns, &resource(kind, mcs));
        let failed = |what: String| move |source| WorkerError::Write { what, source };
        match write {
            Write::AddFinalizer { name, finalizers, resource_version }
            | Write::RemoveFinalizer { name, finalizers, resource_version } => {
                let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": resource_version } });
                hub_slices()
                    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(failed(format!("setting the finalizers of WorkerSlice {name}")))?;
            }
            Write::LabelNamespace(change) => {
                let (label, owner) = match &change.slice {
                    Some(s) => (json!(s), json!(objects::MANAGED_BY)),
                    None => (serde_json::Value::Null, serde_json::Value::Null),
                };
                let patch = json!({ "metadata": {
                    "labels": { SLICE_LABEL: label },
                    "annotations": { objects::LABELLED_BY_ANNOTATION: owner },
                }});
                Api::<Namespace>::all(self.local.clone())
                    .patch(&change.namespace, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(failed(format!("labelling namespace {}", change.namespace)))?;
            }
            Write::Create { kind, namespace, name, body } => {
                let obj: DynamicObject = serde_json::from_value(body.clone())
                    .map_err(|source| WorkerError::Encode { what: format!("{kind:?} {namespace}/{name}"), source })?;
                dynamic(*kind, namespace)
                    .create(&PostParams::default(), &obj)
                    .await
                    .map_err(failed(format!("creating {kind:?} {namespace}/{name}")))?;
            }
            Write::Apply { kind, namespace, name, body } => {
                let applied = dynamic(*kind, namespace)
                    .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body))
                    .await
                    .map_err(failed(format!("applying {kind:?} {namespace}/{name}")))?;
                if *kind == Kind::Service {
                    return Ok(serde_json::to_value(applied).ok());
                }
            }
            Write::Delete { kind, namespace, name } => {
                match dynamic(*kind, namespace).delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(source) => {
                        return Err(WorkerError::Write {
                            what: format!("deleting {kind:?} {namespace}/{name}"),
                            source,
                        });
                    }
                }
            }
            Write::PatchImportStatus { namespace, name, status } => {
                dynamic(Kind::ServiceImport, namespace)
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
                    .await
                    .map_err(failed(format!("writing the status of ServiceImport {namespace}/{name}")))?;
            }
            Write::PatchExportStatus { namespace, name, conditions } => {
                Api::<DynamicObject>::namespaced_with(self.local.clone(), namespace, &mcs.service_exports())
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": { "conditions": conditions } })),
                    )
                    .await
                    .map_err(failed(format!("writing the conditions of ServiceExport {namespace}/{name}")))?;
            }
            Write::PatchConfigData { namespace, name, key, value, resource_version } => {
                let patch = json!({ "metadata": { "resourceVersion": resource_version }, "data": { key: value } });
                Api::<ConfigMap>::namespaced(self.local.clone(), namespace)
                    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(failed(format!("editing {key} of ConfigMap {namespace}/{name}")))?;
            }
            Write::PatchStatus { name, status } => {
                // A merge patch leaves out what serde skips: clear those fields explicitly.
                let mut body = serde_json::to_value(status)
                    .map_err(|source| WorkerError::Encode { what: format!("status of {name}"), source })?;
                if let Some(map) = body.as_object_mut() {
                    for key in [
                        "gatewayPublicKey",
                        "gatewayEndpoint",
                        "gatewayReplicas",
                        "observedGeneration",
                        "exports",
                        "pods",
                    ] {
                        map.entry(key).or_insert(serde_json::Value::Null);
                    }
                }
                hub_slices()
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": body })))
                    .await
                    .map_err(failed(format!("writing the status of WorkerSlice {name}")))?;
            }
        }
        Ok(None)
    }
}
