//! The hub controller (`slice-operator hub`): SliceConfigs and MemberClusters → one WorkerSlice
//! per slice per member cluster, in the hub namespace `slicenet-cluster-<cluster>`.
//!
//! The hub keeps what it has seen indexed ([`HubIndex`], pure, on top of
//! `slice_api::planner::index`), learns each object its watches report ([`Hub::observe`]) and
//! decides only for the slices and clusters the changes touched ([`Hub::reconcile_changes`]):
//! a heartbeat decides one cluster's `Healthy` and plans nothing. VNIs must stay unique across
//! slices, so a whole pass ([`reconcile`], [`Hub::resync`]: lists the three kinds and what
//! `slicenet-peers` holds, decides every request, [`decide::decide`]) runs at the start,
//! periodically and after a failure; the requests are made by [`execute::execute`] (thin). Peer
//! keys and endpoints that workers publish in their WorkerSlice's status reach the other
//! members through the planner: in each slice's `SlicePeers` pages, which each member's worker
//! may read through a Role and RoleBinding the hub keeps for it (the default), or in every
//! WorkerSlice (`--inline-peers`, which deletes what paging left once nothing reads it); status
//! and conditions flow back into each SliceConfig; finalizers hold SliceConfigs and
//! MemberClusters until what the hub made for them is gone. [`run`] drives it from watches with
//! debouncing, a periodic resync and backoff on errors ([`runner`]), while this replica holds
//! the `slicenet-hub` Lease ([`crate::leader`]); each pass publishes the Events its changes are
//! worth ([`crate::events`]).
//!
//! Every request the hub makes is declared in [`crate::access::HUB`], from which `slicectl
//! install` builds the hub's RBAC; the mock-API tests (`tests/hub.rs`) check each request
//! against it.

pub mod decide;
pub mod execute;
pub mod health;
pub mod pods;
pub mod runner;
pub mod services;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ListParams};
use slice_api::crd::{MemberCluster, PEERS_NAMESPACE, SliceConfig, SlicePeers, WorkerSlice};
use slice_api::planner::PeerLists;

use crate::events::Recorder;
use crate::leader::{LeaderElectionArgs, Leadership, NotLeading};

pub use decide::{
    Action, Coverage, Decision, FinalizedKind, HubIndex, World, action_subject, decide, decide_with, failure_notice,
    merge_diff,
};
pub use health::{HEALTHY, healthy_condition};
pub use runner::{Schedule, run_with_client};
use slice_api::error_chain::chain;

/// The field manager the hub writes as.
pub const FIELD_MANAGER: &str = "slicenet-hub";
/// The reporting controller of the hub's Events.
pub const EVENT_CONTROLLER: &str = "slicenet.io/hub";

/// Options of `slice-operator hub`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HubOptions {
    /// Kubeconfig of the hub cluster (default: $KUBECONFIG or ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Context to use from the kubeconfig (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Changes closer together than this are handled by one reconcile, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_DEBOUNCE_MS)]
    pub debounce_ms: u64,
    /// Reconcile at least this often even without changes, in seconds.
    #[arg(long, default_value_t = DEFAULT_RESYNC_SECS)]
    pub resync_secs: u64,
    /// A member cluster whose worker's heartbeat is older than this is not Healthy, in seconds.
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_TIMEOUT_SECS)]
    pub heartbeat_timeout_secs: u64,
    /// First wait after a failed reconcile, in milliseconds (doubles on each failure).
    #[arg(long, default_value_t = DEFAULT_BACKOFF_MIN_MS)]
    pub backoff_min_ms: u64,
    /// Longest wait after failed reconciles, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_BACKOFF_MAX_MS)]
    pub backoff_max_ms: u64,
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
    /// Where to serve /healthz and /readyz.
    #[arg(long, default_value = crate::health::DEFAULT_ADDR)]
    pub health_addr: SocketAddr,
    /// Serve the read-only web console here (e.g. `127.0.0.1:8090`; off when absent). It has no
    /// authentication of its own: keep it on loopback or a pod-internal address and reach it
    /// through the API server (`kubectl port-forward`, or the Service proxy).
    #[arg(long)]
    pub console: Option<SocketAddr>,
    /// Keep each slice's peer list in every member's WorkerSlice (`spec.peers`: a join rewrites
    /// every member's whole list) instead of in `SlicePeers` pages in `slicenet-peers`, the
    /// default (a join rewrites one page and each member's small `peerPages` revision). For
    /// workers older than the pages, which read `spec.peers` only: upgrade them, then drop the
    /// flag.
    #[arg(long)]
    pub inline_peers: bool,
    /// The console's document, published after every reconcile's reads (set by [`run`] when
    /// `--console` is given; tests set it to read what would be served).
    #[arg(skip)]
    pub console_sink: Option<slice_kube::console::Console>,
}

const DEFAULT_DEBOUNCE_MS: u64 = 150;
const DEFAULT_RESYNC_SECS: u64 = 300;
/// How old a member cluster's heartbeat may be for it to count as Healthy (`--heartbeat-timeout-secs`).
pub const DEFAULT_HEARTBEAT_TIMEOUT_SECS: u64 = 60;
const DEFAULT_BACKOFF_MIN_MS: u64 = 500;
const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            debounce_ms: DEFAULT_DEBOUNCE_MS,
            resync_secs: DEFAULT_RESYNC_SECS,
            heartbeat_timeout_secs: DEFAULT_HEARTBEAT_TIMEOUT_SECS,
            backoff_min_ms: DEFAULT_BACKOFF_MIN_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            leader_election: LeaderElectionArgs::default(),
            health_addr: crate::health::DEFAULT_ADDR.parse().expect("the default address parses"),
            console: None,
            console_sink: None,
            inline_peers: false,
        }
    }
}

impl HubOptions {
    /// The debounce window.
    #[must_use]
    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }
    /// The periodic resync.
    #[must_use]
    pub fn resync(&self) -> Duration {
        Duration::from_secs(self.resync_secs.max(1))
    }
    /// How old a heartbeat may be for the cluster to be Healthy.
    #[must_use]
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_secs)
    }
    /// The first backoff.
    #[must_use]
    pub fn backoff_min(&self) -> Duration {
        Duration::from_millis(self.backoff_min_ms.max(1))
    }
    /// The longest backoff.
    #[must_use]
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
    /// Where the peer lists go: pages unless `--inline-peers`.
    #[must_use]
    pub fn peer_lists(&self) -> PeerLists {
        if self.inline_peers { PeerLists::Inline } else { PeerLists::Paged }
    }
}

/// Runs the hub controller until SIGINT or SIGTERM: a client from `options` (or the
/// environment), the probes' endpoint, the leader election, watches, and the reconcile loop.
///
/// Needs a tokio runtime (with the time and signal drivers, e.g. `#[tokio::main]`).
///
/// # Errors
/// When no client can be built, the health address cannot be bound, or leadership is lost; API
/// errors while running are retried, never returned.
pub async fn run(mut options: HubOptions) -> anyhow::Result<()> {
    let client = runner::client(&options).await?;
    if let Some(addr) = options.console {
        let console = slice_kube::console::Console::new();
        let (bound, _task) = slice_kube::console::spawn(addr, console.clone())
            .await
            .map_err(|e| anyhow::anyhow!("listening on {addr} for the console: {e}"))?;
        tracing::info!(%bound, "console serving");
        options.console_sink = Some(console);
    }
    tracing::info!(?options, "hub starting");
    let health = crate::health::Health::new();
    let _server = crate::health::spawn(options.health_addr, &health)
        .map_err(|e| anyhow::anyhow!("listening on {} for the probes: {e}", options.health_addr))?;
    run_with_client(client, &options, health, runner::shutdown_signal()).await
}

/// What a reconcile needs besides the client.
#[derive(Debug)]
pub struct Context {
    /// A member cluster whose heartbeat is older is not `Healthy`.
    pub heartbeat_timeout: Duration,
    /// Publishes the Events of each pass (and remembers them across passes, to aggregate).
    pub recorder: Recorder,
    /// Checked before every write.
    pub leadership: Leadership,
    /// Gets the console's document from every pass's reads (`--console`).
    pub console: Option<slice_kube::console::Console>,
    /// Where the peer lists go (pages unless `--inline-peers`).
    pub peer_lists: PeerLists,
}

impl Context {
    /// A context that always leads (no election), reports Events as `instance` and pages the
    /// peers, as the hub does by default.
    #[must_use]
    pub fn new(heartbeat_timeout: Duration, instance: &str) -> Self {
        Self {
            heartbeat_timeout,
            recorder: Recorder::new(EVENT_CONTROLLER, instance),
            leadership: Leadership::unconditional(),
            console: None,
            peer_lists: PeerLists::Paged,
        }
    }
}

/// What went wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Listing one of the kinds failed: nothing was decided or written.
    #[error("listing {kind}")]
    List {
        kind: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A request failed.
    #[error("{action}")]
    Request {
        action: String,
        #[source]
        source: kube::Error,
    },
    /// A cluster's namespace is being deleted, so no WorkerSlice can go in until it is gone.
    #[error("namespace {0} is being deleted; its WorkerSlices wait until it is gone")]
    NamespaceTerminating(String),
    /// Some actions failed; all the others were made.
    #[error("{} of the hub's requests failed: {}", .0.len(), summary(.0))]
    Writes(Vec<Error>),
    /// This replica stopped leading: the pass was abandoned before its next write.
    #[error(transparent)]
    NotLeading(#[from] NotLeading),
}

fn summary(errors: &[Error]) -> String {
    errors.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; ")
}

/// What a successful reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How many writes it made (0 when the hub was converged).
    pub writes: usize,
    /// When to reconcile again even without a change (a heartbeat about to go stale).
    pub requeue_after: Option<Duration>,
}

/// One global reconcile at `now`: lists SliceConfigs, MemberClusters and WorkerSlices (all
/// namespaces), decides, makes the requests (each only while `ctx.leadership` allows), then
/// publishes the Events of what changed and of what failed.
///
/// # Errors
/// A failed list (nothing written), [`Error::NotLeading`] (the pass stopped at once), or
/// [`Error::Writes`] with every request that failed.
#[tracing::instrument(skip_all)]
pub async fn reconcile(client: &Client, ctx: &Context, now: Timestamp) -> Result<Outcome, Error> {
    let mut index = HubIndex::new_with(&list_world(client).await?, ctx.peer_lists, ctx.heartbeat_timeout);
    reconcile_index(client, ctx, &mut index, now).await
}

/// Lists what the hub decides from: the three kinds, and in `slicenet-peers` the pages, Roles
/// and RoleBindings (paged, what it keeps there; inline, what paging left, to delete).
async fn list_world(client: &Client) -> Result<World, Error> {
    let params = ListParams::default();
    let slices = Api::<SliceConfig>::all(client.clone())
        .list(&params)
        .await
        .map_err(|source| Error::List { kind: "SliceConfigs", source })?;
    let clusters = Api::<MemberCluster>::all(client.clone())
        .list(&params)
        .await
        .map_err(|source| Error::List { kind: "MemberClusters", source })?;
    let workers = Api::<WorkerSlice>::all(client.clone())
        .list(&params)
        .await
        .map_err(|source| Error::List { kind: "WorkerSlices", source })?;
    let pages = Api::<SlicePeers>::namespaced(client.clone(), PEERS_NAMESPACE)
        .list(&params)
        .await
        .map_err(|source| Error::List { kind: "SlicePeers", source })?
        .items;
    let peer_roles = Api::<Role>::namespaced(client.clone(), PEERS_NAMESPACE)
        .list(&params)
        .await
        .map_err(|source| Error::List { kind: "Roles", source })?
        .items;
    let peer_bindings = Api::<RoleBinding>::namespaced(client.clone(), PEERS_NAMESPACE)
        .list(&params)
        .await
        .map_err(|source| Error::List { kind: "RoleBindings", source })?
        .items;
    Ok(World {
        slices: slices.items,
        clusters: clusters.items,
        workers: workers.items,
        pages,
        peer_roles,
        peer_bindings,
    })
}

/// Decides what `index` has in scope at `now`, makes the requests and publishes the Events.
async fn reconcile_index(
    client: &Client,
    ctx: &Context,
    index: &mut HubIndex,
    now: Timestamp,
) -> Result<Outcome, Error> {
    if let Some(console) = &ctx.console {
        // The console's document from what the index holds (the watches' objects as of now).
        let plans = index.plans();
        let view = World {
            slices: plans.slices().cloned().collect(),
            clusters: plans.clusters().cloned().collect(),
            workers: plans.workers().cloned().collect(),
            pages: plans.peers_pages().cloned().collect(),
            ..World::default()
        };
        let view = view.with_peers_from_pages();
        console.publish(&slice_api::console::Model::from_view(&view.sorted()));
    }
    let (decision, coverage) = index.decide_with_coverage(now);
    tracing::debug!(planned = coverage.planned, slices = coverage.slices, clusters = coverage.clusters, "decided");
    for plan in &decision.plans {
        tracing::debug!(slice = %plan.name, vni = ?plan.vni, clusters = plan.clusters, "planned");
    }
    let executed = execute::execute(client, &decision.actions, &ctx.leadership).await?;
    let mut notices: Vec<_> =
        decision.notices.iter().filter(|(i, _)| executed.done[*i]).map(|(_, n)| n.clone()).collect();
    notices.extend(executed.failures.iter().map(|(i, e)| {
        let action = &decision.actions[*i];
        decide::failure_notice_about(index.action_subject(action), e)
    }));
    ctx.recorder.publish(client, &notices, now, &ctx.leadership).await;
    if !executed.failures.is_empty() {
        return Err(Error::Writes(executed.failures.into_iter().map(|(_, e)| e).collect()));
    }
    Ok(Outcome { writes: executed.writes, requeue_after: decision.requeue_after })
}

/// A change a watch reported, with the object as it is now.
#[derive(Debug, Clone)]
pub enum Change {
    Slice(Box<SliceConfig>),
    SliceGone(String),
    Cluster(Box<MemberCluster>),
    ClusterGone(String),
    Worker(Box<WorkerSlice>),
    /// (namespace, name).
    WorkerGone(String, String),
    Peers(Box<SlicePeers>),
    PeersGone(String),
    Role(Box<Role>),
    RoleGone(String),
    Binding(Box<RoleBinding>),
    BindingGone(String),
}

/// The hub that decides only what changed: an index fed by the watches' objects
/// ([`Hub::observe`]), a pass over what they touched ([`Hub::reconcile_changes`]), and a whole
/// pass from fresh lists ([`Hub::resync`]) at the start, periodically and after a failed pass
/// (which repairs anything a watch missed or a request left undone).
#[derive(Debug, Default)]
pub struct Hub {
    index: Option<HubIndex>,
}

impl Hub {
    /// Learns a change (before the first whole pass there is nothing to learn it into: that
    /// pass lists everything).
    pub fn observe(&mut self, change: Change) {
        let Some(index) = &mut self.index else { return };
        match change {
            Change::Slice(s) => index.observe_slice(*s),
            Change::SliceGone(name) => index.forget_slice(&name),
            Change::Cluster(c) => index.observe_cluster(*c),
            Change::ClusterGone(name) => index.forget_cluster(&name),
            Change::Worker(w) => index.observe_worker(*w),
            Change::WorkerGone(namespace, name) => index.forget_worker(&namespace, &name),
            Change::Peers(p) => index.observe_peers(*p),
            Change::PeersGone(name) => index.forget_peers(&name),
            Change::Role(r) => index.observe_role(*r),
            Change::RoleGone(name) => index.forget_role(&name),
            Change::Binding(b) => index.observe_binding(*b),
            Change::BindingGone(name) => index.forget_binding(&name),
        }
    }

    /// Whether the hub has made its first whole pass.
    #[must_use]
    pub fn is_indexed(&self) -> bool {
        self.index.is_some()
    }

    /// A whole pass: lists everything into a new index and decides it all.
    ///
    /// # Errors
    /// As [`reconcile`]; after a failure the next pass is whole again.
    pub async fn resync(&mut self, client: &Client, ctx: &Context, now: Timestamp) -> Result<Outcome, Error> {
        self.index = None;
        let world = list_world(client).await?;
        let mut index = HubIndex::new_with(&world, ctx.peer_lists, ctx.heartbeat_timeout);
        let outcome = reconcile_index(client, ctx, &mut index, now).await?;
        self.index = Some(index);
        Ok(outcome)
    }

    /// A pass over what changed since the last one (a whole pass when there was none, or the
    /// last one failed).
    ///
    /// # Errors
    /// As [`reconcile`]; after a failure the next pass is whole.
    pub async fn reconcile_changes(
        &mut self,
        client: &Client,
        ctx: &Context,
        now: Timestamp,
    ) -> Result<Outcome, Error> {
        let Some(mut index) = self.index.take() else {
            return self.resync(client, ctx, now).await;
        };
        let outcome = reconcile_index(client, ctx, &mut index, now).await?;
        self.index = Some(index);
        Ok(outcome)
    }
}
