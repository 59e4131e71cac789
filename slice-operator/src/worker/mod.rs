//! The worker controller (`slice-operator worker`): runs, in one member cluster, the WorkerSlices
//! the hub wrote for it (in `slicenet-cluster-<cluster>` on the hub).
//!
//! - [`plan`]: node prefixes, each node's share of a slice, the gateway's wg(8) file (pure);
//! - [`keys`]: the gateway key pair (made here; the private key never leaves the cluster);
//! - [`objects`]: the Kubernetes objects wanted in the cluster (pure);
//! - [`decide`]: observed → ordered writes, then statuses, then finalizer releases (pure);
//! - [`services`]: multi-cluster services: exports resolved to slice addresses, ServiceExport
//!   conditions, ServiceImports and MCS EndpointSlices, the node agents' ClusterSetIP rules and
//!   the CoreDNS stanza (pure);
//! - [`tunnels`]: the gateway's metrics → each peer's tunnel state (and, per gateway replica,
//!   the peer clusters it has a live tunnel to), and the rule that keeps the clock alone from
//!   rewriting statuses (pure);
//! - [`scrape`]: reads a gateway's `/metrics` over HTTP;
//! - [`reconcile`]: the thin shell: one pass reads everything, decides, writes;
//! - [`run`]: watches the hub's WorkerSlices and the cluster's Nodes, Namespaces and gateway
//!   pods, ServiceExports and Services' EndpointSlices and runs a pass after each change (and every resync), retrying failed passes with
//!   backoff; a heartbeat on the MemberCluster's status. Tunnel states are not watched but
//!   checked: every `--tunnel-check-secs` the gateways of the last pass are scraped again and a
//!   changed state (or a replica reaching another set of clusters) runs a pass; `connectedPods` is refreshed by every pass. Only the replica
//!   that holds the `slicenet-worker` Lease in the member cluster runs it
//!   ([`crate::leader::run_while_leading`]).
//!
//! One pass covers every slice at once rather than one reconcile per WorkerSlice: the node
//! agents' ConfigMaps and the membership ConfigMap hold all slices together, and a namespace
//! claimed by two slices is decided between them, so a per-object controller would have to
//! read all slices anyway.

pub mod agents;
pub mod credential;
pub mod decide;
pub mod dnsprobe;
pub mod keys;
pub mod objects;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod scrape;
pub mod services;
pub mod tunnels;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use slice_api::backoff::Backoff;
use slice_api::crd::{WorkerSlice, cluster_namespace};
use slice_api::error_chain::chain;

use crate::kubeconfig::client_from_kubeconfig;

pub use reconcile::{MetricsSource, PassOutcome, Worker, WorkerError, http_metrics};

/// How often the leader looks at its hub token (`worker::credential`).
pub const CREDENTIAL_CHECK: Duration = Duration::from_secs(600);

/// Options of `slice-operator worker`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This member cluster's name (its MemberCluster on the hub).
    pub cluster: String,
    /// Kubeconfig file for the hub (mounted from a Secret).
    pub hub_kubeconfig: PathBuf,
    /// The member cluster's kubeconfig; `None` for in-cluster config (or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Settings of the decision (node defaults, gateway image, Multus).
    pub settings: decide::Settings,
    /// Full pass even when nothing was seen to change.
    pub resync: Duration,
    /// How often the MemberCluster's `status.lastHeartbeat` is written.
    pub heartbeat: Duration,
    /// How often, between passes, the gateways' tunnel states are read again
    /// ([`Worker::tunnels_changed`]).
    pub tunnel_check: Duration,
    /// The election on the `slicenet-worker` Lease in the member cluster.
    pub leader_election: crate::leader::LeaderElectionArgs,
    /// Where to serve /healthz and /readyz.
    pub health_addr: std::net::SocketAddr,
}

/// RFC 3339 now, to the second.
#[must_use]
pub fn now_rfc3339() -> String {
    format!("{:.0}", k8s_openapi::jiff::Timestamp::now())
}

/// Runs the worker until SIGTERM or SIGINT: clients, the probes' endpoint, the leader election
/// in the member cluster, and while leading the watches and passes.
///
/// # Errors
/// When the clients cannot be built, the health address cannot be bound, or leadership is
/// lost; failed passes are logged and retried, never returned.
pub async fn run(options: WorkerOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let hub = client_from_kubeconfig(&options.hub_kubeconfig, None).await?;
    let local = match &options.kubeconfig {
        Some(path) => client_from_kubeconfig(path, None).await?,
        None => Client::try_default().await.context("building the member cluster's client")?,
    };
    let health = crate::health::Health::new();
    let _server = crate::health::spawn(options.health_addr, &health)
        .map_err(|e| anyhow::anyhow!("listening on {} for the probes: {e}", options.health_addr))?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: exiting"),
            _ = sigint.recv() => tracing::info!("SIGINT: exiting"),
        }
    };
    run_with_clients(hub, local, &options, health, shutdown).await
}

/// Runs the worker on `hub` and `local` until `shutdown` completes, while this replica holds
/// the `slicenet-worker` Lease in the member cluster (always with `--no-leader-election`).
/// `health` turns ready after the first successful pass (or as a standby).
///
/// # Errors
/// When leadership is lost, or the watches end.
pub async fn run_with_clients(
    hub: Client,
    local: Client,
    options: &WorkerOptions,
    health: crate::health::Health,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let _alive = health.alive_while();
    let election = options.leader_election.election(crate::leader::WORKER_LEASE);
    let instance = election.as_ref().map_or_else(crate::leader::hostname, |e| e.identity.clone());
    let controller = |leadership: crate::leader::Leadership| {
        let (hub, local, health) = (hub.clone(), local.clone(), health.clone());
        async move {
            // The pod webhook's serving certificate in this cluster, renewed by the leader.
            let rotator = crate::cert_rotation::Rotator::new(local.clone(), crate::cert_rotation::MEMBER)
                .with_leadership(leadership.clone())
                .with_recorder(crate::events::Recorder::new(reconcile::EVENT_CONTROLLER, instance.clone()));
            let worker = Worker::new(hub.clone(), local.clone(), options.settings.clone())
                .with_leadership(leadership)
                .with_recorder(crate::events::Recorder::new(reconcile::EVENT_CONTROLLER, instance));
            pass_loop(&worker, &rotator, hub, local, options, &health).await
        }
    };
    crate::leader::run_while_leading(local.clone(), election, health.clone(), shutdown, controller).await
}

/// The leader's loop: watches wake it, passes run after changes, every resync, and after the
/// backoff when one failed; the heartbeat on its own interval.
async fn pass_loop(
    worker: &Worker,
    rotator: &crate::cert_rotation::Rotator,
    hub: Client,
    local: Client,
    options: &WorkerOptions,
    health: &crate::health::Health,
) -> anyhow::Result<()> {
    let cluster = options.cluster.clone();
    // Every watch event only wakes the loop; a pass reads everything afresh.
    let slices = watcher(Api::<WorkerSlice>::namespaced(hub, &cluster_namespace(&cluster)), watcher::Config::default());
    let nodes = watcher(Api::<Node>::all(local.clone()), watcher::Config::default());
    let namespaces = watcher(Api::<Namespace>::all(local.clone()), watcher::Config::default());
    // Multi-cluster services: an export made or removed, an endpoint turning ready or not. The
    // exports are watched in the version served when leading starts; every pass asks again
    // (`reconcile::served_mcs_version`), so after the CRDs change versions the passes follow
    // at once and the watch from the next leadership (until then, each resync).
    let mcs_version = match reconcile::served_mcs_version(&local).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "discovering the MCS API version; watching v1alpha1");
            slice_api::mcs::McsVersion::default()
        }
    };
    let exports = watcher(
        Api::<kube::core::DynamicObject>::all_with(local.clone(), &mcs_version.service_exports()),
        watcher::Config::default(),
    );
    // An exported Service's ports, type or session affinity changed; the slice-dns Service's
    // address (the Corefile stanza forwards there).
    let services = watcher(Api::<k8s_openapi::api::core::v1::Service>::all(local.clone()), watcher::Config::default());
    let endpoint_slices = watcher(
        Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::all(local.clone()),
        watcher::Config::default().labels(services::SERVICE_NAME_LABEL),
    );
    // Policy: a pod that starts, stops or changes labels (the pod directory), a policy made,
    // changed or removed. Every pod of the cluster: member namespaces are any namespaces.
    let pods = watcher(Api::<Pod>::all(local.clone()), watcher::Config::default());
    let policies = watcher(
        Api::<kube::core::DynamicObject>::all_with(local.clone(), &policy::mnp_resource()),
        watcher::Config::default(),
    );
    let mut events = futures::stream::select_all([
        slices.default_backoff().map(|e| e.map(|_| "WorkerSlice")).boxed(),
        nodes.default_backoff().map(|e| e.map(|_| "Node")).boxed(),
        namespaces.default_backoff().map(|e| e.map(|_| "Namespace")).boxed(),
        pods.default_backoff().map(|e| e.map(|_| "Pod")).boxed(),
        policies.default_backoff().map(|e| e.map(|_| "MultiNetworkPolicy")).boxed(),
        exports.default_backoff().map(|e| e.map(|_| "ServiceExport")).boxed(),
        endpoint_slices.default_backoff().map(|e| e.map(|_| "EndpointSlice")).boxed(),
        services.default_backoff().map(|e| e.map(|_| "Service")).boxed(),
    ]);

    let mut heartbeat = tokio::time::interval(options.heartbeat.max(Duration::from_secs(1)));
    let mut tunnel_check = tokio::time::interval(options.tunnel_check.max(Duration::from_secs(1)));
    tunnel_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The hub token is looked at when leading starts and then every few minutes; a renewal
    // is due days ahead of its expiry (`slice_api::hub_credential::decide`).
    let mut credential = tokio::time::interval(CREDENTIAL_CHECK);
    // The first tick is at once: the certificate is checked when leading starts, then hourly.
    let mut certificate = tokio::time::interval(crate::cert_rotation::CHECK_INTERVAL);
    let mut retry = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    // When the next pass runs: soon after a change (a burst of events settles into one pass),
    // after `resync` when all is quiet, after the backoff when a pass failed.
    let mut next_pass = tokio::time::Instant::now();
    tracing::info!(cluster = %cluster, "worker leading");
    loop {
        tokio::select! {
            _ = heartbeat.tick() => match worker.heartbeat(&cluster, &now_rfc3339()).await {
                Ok(()) => {}
                Err(WorkerError::NotLeading(e)) => return Err(e.into()),
                Err(e) => tracing::warn!(error = %chain(&e), "heartbeat failed"),
            },
            _ = credential.tick() => {
                let now = k8s_openapi::jiff::Timestamp::now().as_second();
                match worker.check_hub_credential(&cluster, now).await {
                    Ok(credential::Checked::Kept { at }) => tracing::debug!(renew_at = at, "hub token kept"),
                    Ok(checked) => tracing::info!(?checked, "hub token checked"),
                    Err(credential::CredentialCheckError::Api(WorkerError::NotLeading(e))) => return Err(e.into()),
                    Err(e) => tracing::warn!(error = %chain(&e), "hub token renewal failed; tried again later"),
                }
            }
            _ = certificate.tick() => {
                rotator.check().await?;
            }
            _ = tunnel_check.tick() => {
                if worker.tunnels_changed().await {
                    tracing::debug!("a tunnel's state changed");
                    next_pass = tokio::time::Instant::now();
                }
            }
            event = events.next() => match event {
                Some(Ok(kind)) => {
                    tracing::debug!(kind, "change seen");
                    next_pass = next_pass.min(tokio::time::Instant::now() + Duration::from_millis(200));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watch failed; retrying"),
                None => anyhow::bail!("the watches ended"),
            },
            () = tokio::time::sleep_until(next_pass) => {
                match worker.reconcile_once(&cluster, &now_rfc3339()).await {
                    Ok(outcome) => {
                        health.set_ready();
                        retry.reset();
                        if outcome.writes > 0 {
                            tracing::info!(writes = outcome.writes, "reconciled");
                        }
                        next_pass = tokio::time::Instant::now() + options.resync;
                    }
                    Err(WorkerError::NotLeading(e)) => return Err(e.into()),
                    Err(e) => {
                        let delay = retry.next_delay();
                        tracing::error!(error = %chain(&e), retry_in = ?delay, "reconcile failed; requeued");
                        next_pass = tokio::time::Instant::now() + delay;
                    }
                }
            }
        }
    }
}
