//! The hub's loop: watches on SliceConfigs, MemberClusters and WorkerSlices (and on the pages,
//! Roles and RoleBindings of `slicenet-peers`) feed the hub's
//! index with the objects they report; changes close together are coalesced into one pass over
//! what they touched ([`Schedule`], [`Hub::reconcile_changes`]); a whole pass at the start and
//! every resync period repairs anything a watch missed; a failed reconcile is retried with
//! exponential backoff (`slice_api::backoff::Backoff`) and never ends the loop. Only the replica that holds the
//! Lease runs the loop (see [`crate::leader::run_while_leading`]); losing it ends the loop.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::ResourceExt;
use kube::api::Api;
use kube::config::KubeConfigOptions;
use kube::runtime::{WatchStreamExt, watcher};
use slice_api::crd::{MemberCluster, PEERS_NAMESPACE, SliceConfig, SlicePeers, WorkerSlice};

use slice_api::backoff::Backoff;
use slice_api::error_chain::chain;

use super::{Change, Context, Hub, HubOptions};
use crate::events::Recorder;
use crate::health::Health;
use crate::leader::Leadership;

/// When the next reconcile is due (pure: times are arguments).
#[derive(Debug, Clone)]
pub struct Schedule {
    due: Instant,
    not_before: Instant,
    debounce: Duration,
    resync: Duration,
    backoff: Backoff,
}

impl Schedule {
    /// A schedule whose first reconcile is due at `now`.
    #[must_use]
    pub fn new(now: Instant, options: &HubOptions) -> Self {
        Self {
            due: now,
            not_before: now,
            debounce: options.debounce(),
            resync: options.resync(),
            backoff: Backoff::new(options.backoff_min(), options.backoff_max()),
        }
    }

    /// When the next reconcile is due.
    #[must_use]
    pub fn due(&self) -> Instant {
        self.due
    }

    /// A watch reported a change at `now`: reconcile `debounce` after the first of a burst of
    /// changes (later ones in the burst ride along), but not before a running backoff ends.
    pub fn on_change(&mut self, now: Instant) {
        self.due = self.due.min((now + self.debounce).max(self.not_before));
    }

    /// A reconcile succeeded at `now`: the next one comes with the next change, or after
    /// `requeue_after` (capped by the resync period).
    pub fn on_success(&mut self, now: Instant, requeue_after: Option<Duration>) {
        self.backoff.reset();
        self.not_before = now;
        self.due = now + requeue_after.map_or(self.resync, |r| r.min(self.resync));
    }

    /// A reconcile failed at `now`: the next one comes after the backoff, whatever changes.
    /// Returns the wait.
    pub fn on_error(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.next_delay();
        self.not_before = now + delay;
        self.due = self.not_before;
        delay
    }
}

/// Builds the hub's client: from `--kubeconfig` (and `--context`) when given, otherwise as
/// kubectl does (`$KUBECONFIG`, `~/.kube/config`) and then from the in-cluster service account.
///
/// # Errors
/// When no configuration can be loaded.
pub async fn client(options: &HubOptions) -> anyhow::Result<Client> {
    if let Some(path) = &options.kubeconfig {
        return crate::kubeconfig::client_from_kubeconfig(path, options.context.as_deref()).await;
    }
    let config = match &options.context {
        Some(context) => {
            let kube_options = KubeConfigOptions { context: Some(context.clone()), ..KubeConfigOptions::default() };
            kube::Config::from_kubeconfig(&kube_options)
                .await
                .with_context(|| format!("loading context {context} from the default kubeconfig"))?
        }
        None => kube::Config::infer().await.context("no kubeconfig and not in a cluster: cannot reach the hub")?,
    };
    Client::try_from(config).context("building the API client")
}

/// One stream of the changes the watches on the three kinds report, with the objects (the
/// hub's index learns them). Watch errors are logged; the watches recover by themselves with
/// their default backoff. A re-list after a lost watch reports every object again; one deleted
/// while the watch was lost is forgotten at the next whole pass.
/// Also the `SlicePeers` pages, Roles and RoleBindings in `slicenet-peers`, whether the hub
/// pages the peers (it keeps them) or not (it deletes what paging left).
pub fn changes(client: &Client) -> impl Stream<Item = Change> + Send + use<> {
    fn watch<K>(api: Api<K>, kind: &'static str, to: fn(K, bool) -> Change) -> BoxStream<'static, Change>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        watcher(api, watcher::Config::default())
            .default_backoff()
            .filter_map(move |event| async move {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Some(to(o, true)),
                    Ok(watcher::Event::Delete(o)) => Some(to(o, false)),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(e) => {
                        tracing::warn!(kind, error = %chain(&e), "watch failed; it restarts by itself");
                        None
                    }
                }
            })
            .boxed()
    }
    let watches = vec![
        watch(Api::<SliceConfig>::all(client.clone()), "SliceConfig", |s, here| {
            if here { Change::Slice(Box::new(s)) } else { Change::SliceGone(s.name_any()) }
        }),
        watch(Api::<MemberCluster>::all(client.clone()), "MemberCluster", |c, here| {
            if here { Change::Cluster(Box::new(c)) } else { Change::ClusterGone(c.name_any()) }
        }),
        watch(Api::<WorkerSlice>::all(client.clone()), "WorkerSlice", |w, here| {
            if here {
                Change::Worker(Box::new(w))
            } else {
                Change::WorkerGone(w.namespace().unwrap_or_default(), w.name_any())
            }
        }),
        watch(Api::<SlicePeers>::namespaced(client.clone(), PEERS_NAMESPACE), "SlicePeers", |p, here| {
            if here { Change::Peers(Box::new(p)) } else { Change::PeersGone(p.name_any()) }
        }),
        watch(Api::<Role>::namespaced(client.clone(), PEERS_NAMESPACE), "Role", |r, here| {
            if here { Change::Role(Box::new(r)) } else { Change::RoleGone(r.name_any()) }
        }),
        watch(Api::<RoleBinding>::namespaced(client.clone(), PEERS_NAMESPACE), "RoleBinding", |b, here| {
            if here { Change::Binding(Box::new(b)) } else { Change::BindingGone(b.name_any()) }
        }),
    ];
    stream::select_all(watches)
}

/// Runs the hub with `client` until `shutdown` completes: campaigns for the `slicenet-hub`
/// Lease (unless `--no-leader-election`), and while leading watches and reconciles. `health`
/// turns ready after the first successful reconcile (or as a standby), and stops being alive
/// when this returns.
///
/// # Errors
/// When leadership is lost (the process should exit and be restarted as a candidate), or the
/// watches end; API errors are retried.
pub async fn run_with_client(
    client: Client,
    options: &HubOptions,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let _alive = health.alive_while();
    let election = options.leader_election.election(crate::leader::HUB_LEASE);
    let instance = election.as_ref().map_or_else(crate::leader::hostname, |e| e.identity.clone());
    let controller = |leadership: Leadership| {
        let client = client.clone();
        let health = health.clone();
        async move {
            // The hub webhook's serving certificate, renewed by the leader.
            let rotator = crate::cert_rotation::Rotator::new(client.clone(), crate::cert_rotation::HUB)
                .with_leadership(leadership.clone())
                .with_recorder(Recorder::new(super::EVENT_CONTROLLER, instance.clone()));
            let ctx = Context {
                heartbeat_timeout: options.heartbeat_timeout(),
                recorder: Recorder::new(super::EVENT_CONTROLLER, instance),
                leadership,
                console: options.console_sink.clone(),
                peer_lists: options.peer_lists(),
            };
            reconcile_loop(&client, options, &ctx, &rotator, &health).await
        }
    };
    crate::leader::run_while_leading(client.clone(), election, health.clone(), shutdown, controller).await
}

/// The leader's loop: changes from the watches, debounced, the schedule's reconciles, and the
/// webhook certificate's checks (at once, then every [`crate::cert_rotation::CHECK_INTERVAL`]).
async fn reconcile_loop(
    client: &Client,
    options: &HubOptions,
    ctx: &Context,
    rotator: &crate::cert_rotation::Rotator,
    health: &Health,
) -> anyhow::Result<()> {
    let mut changes = pin!(changes(client));
    let mut schedule = Schedule::new(Instant::now(), options);
    let mut certificate = tokio::time::interval(crate::cert_rotation::CHECK_INTERVAL);
    let mut hub = Hub::default();
    let mut last_whole = Instant::now();
    loop {
        tokio::select! {
            _ = certificate.tick() => {
                rotator.check().await?;
            }
            change = changes.next() => match change {
                Some(change) => {
                    hub.observe(change);
                    schedule.on_change(Instant::now());
                }
                None => anyhow::bail!("the watches on the hub ended"),
            },
            () = tokio::time::sleep_until(schedule.due().into()) => {
                // A whole pass at the start, after a failure (the hub then has no index) and
                // every resync period; a pass over what changed otherwise.
                let result = if hub.is_indexed() && last_whole.elapsed() < options.resync() {
                    hub.reconcile_changes(client, ctx, Timestamp::now()).await
                } else {
                    last_whole = Instant::now();
                    hub.resync(client, ctx, Timestamp::now()).await
                };
                match result {
                    Ok(outcome) => {
                        health.set_ready();
                        tracing::debug!(writes = outcome.writes, "hub reconciled");
                        schedule.on_success(Instant::now(), outcome.requeue_after);
                    }
                    Err(super::Error::NotLeading(e)) => return Err(e.into()),
                    Err(e) => {
                        let delay = schedule.on_error(Instant::now());
                        tracing::warn!(error = %chain(&e), retry_in = ?delay, "hub reconcile failed");
                    }
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> HubOptions {
        HubOptions {
            debounce_ms: 150,
            resync_secs: 300,
            backoff_min_ms: 500,
            backoff_max_ms: 4_000,
            ..HubOptions::default()
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_of_changes_makes_one_reconcile_after_the_debounce() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, &options());
        s.on_success(t0, None);
        assert_eq!(s.due(), t0 + Duration::from_secs(300), "idle: the resync");
        s.on_change(t0 + 10 * MS);
        s.on_change(t0 + 50 * MS);
        s.on_change(t0 + 140 * MS);
        assert_eq!(s.due(), t0 + 160 * MS, "due 150 ms after the first change of the burst");
        s.on_success(t0 + 200 * MS, Some(Duration::from_secs(7)));
        assert_eq!(s.due(), t0 + 200 * MS + Duration::from_secs(7), "a heartbeat deadline comes before the resync");
        s.on_success(t0, Some(Duration::from_secs(900)));
        assert_eq!(s.due(), t0 + Duration::from_secs(300), "never later than the resync");
    }

    #[test]
    fn failures_back_off_exponentially_and_changes_wait_for_the_backoff() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, &options());
        let delays: Vec<Duration> = (0..5).map(|_| s.on_error(t0)).collect();
        assert_eq!(delays, [500 * MS, 1_000 * MS, 2_000 * MS, 4_000 * MS, 4_000 * MS]);
        assert_eq!(s.due(), t0 + 4_000 * MS);
        s.on_change(t0 + 10 * MS);
        assert_eq!(s.due(), t0 + 4_000 * MS, "a change does not cut a backoff short");
        s.on_success(t0 + 5_000 * MS, None);
        assert_eq!(s.on_error(t0), 500 * MS, "a success resets the backoff");
    }
}
