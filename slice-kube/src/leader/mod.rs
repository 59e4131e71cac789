//! Leader election for the hub and the worker, so that their Deployments can run two replicas:
//! one `coordination.k8s.io/v1` Lease per controller (`slicenet-hub`, `slicenet-worker`) in the
//! pod's namespace; the replica that holds it runs the controller, the other waits.
//!
//! - [`elector`]: the decision, pure (what was read + the time → create, acquire, renew, wait,
//!   lost), with its rules and why;
//! - [`Candidate::step`]: one read and at most one conditional write (create, or replace with
//!   the `resourceVersion` read), so two candidates cannot both win;
//! - [`campaign`]: steps forever, publishing the result into a [`Leadership`] handle;
//! - [`run_while_leading`]: waits as a standby, runs the controller while leading, stops it the
//!   moment leadership is lost (the controller's future is dropped, cancelling any request in
//!   flight) and returns an error, so the process exits non-zero and Kubernetes restarts it as a
//!   candidate. On SIGTERM the leader releases the lease so the standby takes over at once.
//!
//! Besides that, controllers check [`Leadership::is_leading`] before every write (it also turns
//! false by itself when the renew deadline passes, even if the campaign is stuck), so no write
//! leaves a replica that is not sure it leads.
//!
//! kube-rs 5 (kube-runtime, kube-client) has no leader election. The third-party crates follow
//! older kube releases, and `kube-leader-election` decides expiry from the record's timestamps
//! (so clock skew between nodes matters) and has no fencing. The rules that matter here (expiry
//! from local observation, a renew deadline shorter than the lease, conditional writes, stop on
//! loss) fit in this module and are tested with injected time.

pub mod elector;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};
use slice_api::crd::SYSTEM_NAMESPACE;
use tokio::sync::watch;

pub use elector::{Action, Elector, LeaseRecord, LeaseTiming, Loss};

use crate::health::Health;

/// The hub controller's Lease.
pub const HUB_LEASE: &str = "slicenet-hub";
/// The worker controller's Lease.
pub const WORKER_LEASE: &str = "slicenet-worker";

/// The leader-election flags of `slice-operator hub` and `slice-operator worker`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LeaderElectionArgs {
    /// Namespace of the Lease (the pod's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub leader_election_namespace: String,
    /// This replica's name in the Lease (default: the host name, which is the pod name).
    #[arg(long, env = "POD_NAME")]
    pub leader_election_identity: Option<String>,
    /// Run without a Lease: only for a single replica (or the lab).
    #[arg(long)]
    pub no_leader_election: bool,
    /// The election's timing (not a flag: the defaults are right for a cluster; tests shorten
    /// them).
    #[arg(skip)]
    pub timing: LeaseTiming,
}

impl Default for LeaderElectionArgs {
    fn default() -> Self {
        Self {
            leader_election_namespace: SYSTEM_NAMESPACE.to_owned(),
            leader_election_identity: None,
            no_leader_election: false,
            timing: LeaseTiming::default(),
        }
    }
}

impl LeaderElectionArgs {
    /// The election on Lease `lease` these flags ask for (`None` with `--no-leader-election`).
    #[must_use]
    pub fn election(&self, lease: &str) -> Option<Election> {
        (!self.no_leader_election).then(|| Election {
            namespace: self.leader_election_namespace.clone(),
            name: lease.to_owned(),
            identity: self.leader_election_identity.clone().filter(|i| !i.is_empty()).unwrap_or_else(hostname),
            timing: self.timing,
        })
    }
}

/// The host name (in a pod: the pod's name), for the default identity.
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("slice-operator-{}", std::process::id()))
}

/// One election: which Lease, who we are, and the timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub timing: LeaseTiming,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Candidate,
    Leading(Instant),
    Lost(String),
    Unconditional,
}

/// Whether this replica may write: shared between the campaign (which sets it) and the
/// controller (which checks it before every write).
#[derive(Debug, Clone)]
pub struct Leadership {
    state: Arc<watch::Sender<State>>,
}

/// A write refused because this replica does not lead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not the leader: {0}")]
pub struct NotLeading(pub String);

impl Leadership {
    /// A candidate that does not lead yet.
    #[must_use]
    pub fn candidate() -> Self {
        Self { state: Arc::new(watch::Sender::new(State::Candidate)) }
    }

    /// Always leading: `--no-leader-election`.
    #[must_use]
    pub fn unconditional() -> Self {
        Self { state: Arc::new(watch::Sender::new(State::Unconditional)) }
    }

    /// Leading until `until` (unless renewed).
    pub fn lead_until(&self, until: Instant) {
        self.state.send_if_modified(|s| {
            if matches!(s, State::Lost(_)) {
                return false; // a loss is final
            }
            *s = State::Leading(until);
            true
        });
    }

    /// Leadership is lost for good.
    pub fn lose(&self, reason: impl Into<String>) {
        self.state.send_replace(State::Lost(reason.into()));
    }

    /// Whether writes are allowed now: leading and the renew deadline not passed.
    #[must_use]
    pub fn is_leading(&self) -> bool {
        match &*self.state.borrow() {
            State::Unconditional => true,
            State::Leading(until) => Instant::now() < *until,
            State::Candidate | State::Lost(_) => false,
        }
    }

    /// `Ok` when writes are allowed now.
    ///
    /// # Errors
    /// [`NotLeading`] with why.
    pub fn check(&self) -> Result<(), NotLeading> {
        if self.is_leading() {
            return Ok(());
        }
        Err(NotLeading(match &*self.state.borrow() {
            State::Lost(reason) => reason.clone(),
            State::Leading(_) => "the lease was not renewed in time".to_owned(),
            _ => "the lease is not held".to_owned(),
        }))
    }

    /// Resolves once leading; `Err` with the reason when leadership was lost instead.
    ///
    /// # Errors
    /// The reason of the loss.
    pub async fn acquired(&self) -> Result<(), String> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Unconditional | State::Leading(_) => return Ok(()),
                State::Lost(reason) => return Err(reason.clone()),
                State::Candidate => {}
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The election's view of a Lease.
#[must_use]
pub fn record_of(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity,
        lease_duration: spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs),
        transitions: spec.lease_transitions.unwrap_or(0),
        resource_version: lease.resource_version(),
    }
}

/// The Lease to write for `action` (create, acquire or renew) at wall time `now`, from the
/// Lease read (`None` for a create). A replace carries the read `resourceVersion`, so it fails
/// with 409 if anyone wrote in between.
#[must_use]
pub fn lease_to_write(election: &Election, read: Option<&Lease>, action: &Action, now: Timestamp) -> Lease {
    let mut lease = read.cloned().unwrap_or_else(|| {
        let mut l = Lease::default();
        l.metadata.name = Some(election.name.clone());
        l.metadata.namespace = Some(election.namespace.clone());
        l
    });
    let old = lease.spec.take().unwrap_or_default();
    let duration = i32::try_from(election.timing.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1);
    let (acquire_time, transitions) = match action {
        Action::Renew => (old.acquire_time.clone().or(Some(MicroTime(now))), old.lease_transitions.unwrap_or(0)),
        Action::Acquire { transitions } => (Some(MicroTime(now)), *transitions),
        _ => (Some(MicroTime(now)), 0),
    };
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(election.identity.clone()),
        lease_duration_seconds: Some(duration),
        acquire_time,
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..old
    });
    lease
}

/// What one [`Candidate::step`] ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// We hold the lease (created, acquired or renewed in this step).
    Leading,
    /// Another holds it.
    Standby { holder: String, expires_in: Duration },
    /// We led and lost.
    Lost(Loss),
}

/// A candidate in one election: the Lease API and the [`Elector`].
#[derive(Debug, Clone)]
pub struct Candidate {
    api: Api<Lease>,
    election: Election,
    elector: Elector,
}

impl Candidate {
    /// A candidate for `election` on `client`.
    #[must_use]
    pub fn new(client: Client, election: Election) -> Self {
        let api = Api::namespaced(client, &election.namespace);
        let elector = Elector::new(election.identity.clone(), election.timing);
        Self { api, election, elector }
    }

    /// The pure part.
    #[must_use]
    pub fn elector(&self) -> &Elector {
        &self.elector
    }

    /// One step at `now` (wall time `wall` for the Lease's times): GET the Lease, decide, and
    /// make at most one conditional write.
    ///
    /// # Errors
    /// A failed read or write (409 included) that is not a loss: try again after the retry
    /// period.
    pub async fn step(&mut self, now: Instant, wall: Timestamp) -> Result<Step, kube::Error> {
        let read = match self.api.get_opt(&self.election.name).await {
            Ok(read) => read,
            Err(e) => return self.failed(now, e),
        };
        let action = self.elector.decide(now, read.as_ref().map(record_of).as_ref());
        let written = match &action {
            Action::Lost(loss) => return Ok(Step::Lost(loss.clone())),
            Action::Wait { holder, expires_in } => {
                return Ok(Step::Standby { holder: holder.clone(), expires_in: *expires_in });
            }
            Action::Create => {
                let lease = lease_to_write(&self.election, None, &action, wall);
                self.api.create(&PostParams::default(), &lease).await
            }
            Action::Acquire { .. } | Action::Renew => {
                let lease = lease_to_write(&self.election, read.as_ref(), &action, wall);
                self.api.replace(&self.election.name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.elector.written(now, record_of(&lease));
                Ok(Step::Leading)
            }
            Err(e) => self.failed(now, e),
        }
    }

    fn failed(&mut self, now: Instant, e: kube::Error) -> Result<Step, kube::Error> {
        match self.elector.failed(now) {
            Some(loss) => Ok(Step::Lost(loss)),
            None => Err(e),
        }
    }
}

/// Campaigns for `election` until leadership is lost: publishes every result into
/// `leadership` (and marks `health` ready once this replica is a standby that can read the
/// Lease). Returns only on a loss, with it.
pub async fn campaign(client: Client, election: Election, leadership: Leadership, health: Health) -> Loss {
    let mut candidate = Candidate::new(client, election.clone());
    let mut standby_of: Option<String> = None;
    loop {
        let now = Instant::now();
        // A step never outlives leading: past the deadline it is a loss, whatever hangs.
        let limit = match candidate.elector.leading_until() {
            Some(until) => until.saturating_duration_since(now),
            None => election.timing.lease_duration,
        };
        let outcome = match tokio::time::timeout(limit, candidate.step(now, Timestamp::now())).await {
            Ok(outcome) => outcome,
            Err(_) => match candidate.elector.failed(Instant::now()) {
                Some(loss) => Ok(Step::Lost(loss)),
                None => {
                    tracing::warn!(lease = %election.name, timeout = ?limit, "lease request timed out; retrying");
                    tokio::time::sleep(candidate.elector.next_wait(Instant::now())).await;
                    continue;
                }
            },
        };
        match outcome {
            Ok(Step::Leading) => {
                if let Some(until) = candidate.elector.leading_until() {
                    if !leadership.is_leading() {
                        tracing::info!(lease = %election.name, identity = %election.identity, "leading");
                    }
                    leadership.lead_until(until);
                }
                standby_of = None;
            }
            Ok(Step::Standby { holder, expires_in }) => {
                health.set_ready();
                if standby_of.as_deref() != Some(holder.as_str()) {
                    tracing::info!(lease = %election.name, %holder, ?expires_in, "standby: another replica leads");
                    standby_of = Some(holder);
                }
            }
            Ok(Step::Lost(loss)) => {
                tracing::error!(lease = %election.name, reason = %loss, "leadership lost: stopping");
                leadership.lose(loss.to_string());
                return loss;
            }
            Err(e) => {
                tracing::warn!(lease = %election.name, error = %slice_api::error_chain::chain(&e), "lease request failed; retrying");
            }
        }
        tokio::time::sleep(candidate.elector.next_wait(Instant::now())).await;
    }
}

/// Gives the lease up if `election`'s identity holds it (a leader shutting down), so that a
/// standby takes over without waiting for it to expire. `Ok(true)` when released.
///
/// # Errors
/// A failed read or replace (409 when it changed meanwhile).
pub async fn release(client: Client, election: &Election) -> Result<bool, kube::Error> {
    let api = Api::<Lease>::namespaced(client, &election.namespace);
    let Some(mut lease) = api.get_opt(&election.name).await? else { return Ok(false) };
    if record_of(&lease).holder() != Some(election.identity.as_str()) {
        return Ok(false);
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(&election.name, &PostParams::default(), &lease).await?;
    Ok(true)
}

/// How long a leader shutting down tries to release its lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `controller` while this replica leads `election` (at once, and always, with `None`):
/// waits as a standby until the lease is won, runs the controller with the [`Leadership`] to
/// check before writes, and
/// - returns the controller's own result if it ends;
/// - returns an error as soon as leadership is lost: the controller's future is dropped at
///   once, cancelling what it was doing;
/// - returns `Ok` when `shutdown` completes, after releasing the lease if it was held.
///
/// # Errors
/// The loss of leadership, or the controller's error.
pub async fn run_while_leading<F, Fut>(
    client: Client,
    election: Option<Election>,
    health: Health,
    shutdown: impl Future<Output = ()>,
    controller: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Leadership) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut shutdown = pin!(shutdown);
    let Some(election) = election else {
        return tokio::select! {
            () = &mut shutdown => Ok(()),
            result = controller(Leadership::unconditional()) => result,
        };
    };
    let leadership = Leadership::candidate();
    let mut campaign = pin!(campaign(client.clone(), election.clone(), leadership.clone(), health));
    tokio::select! {
        () = &mut shutdown => return Ok(()),
        loss = &mut campaign => anyhow::bail!("lease {}/{}: {loss}", election.namespace, election.name),
        acquired = leadership.acquired() => {
            if let Err(reason) = acquired {
                anyhow::bail!("lease {}/{}: {reason}", election.namespace, election.name);
            }
        }
    }
    let result = tokio::select! {
        () = &mut shutdown => None,
        loss = &mut campaign => Some(Err(anyhow::anyhow!("lease {}/{}: {loss}", election.namespace, election.name))),
        result = controller(leadership.clone()) => Some(result),
    };
    match result {
        Some(result) => result,
        None => {
            match tokio::time::timeout(RELEASE_TIMEOUT, release(client, &election)).await {
                Ok(Ok(true)) => tracing::info!(lease = %election.name, "lease released"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %slice_api::error_chain::chain(&e), "releasing the lease failed"),
                Err(_) => tracing::warn!("releasing the lease timed out"),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_ends_at_its_deadline_and_a_loss_is_final() {
        let l = Leadership::candidate();
        assert!(!l.is_leading());
        assert_eq!(l.check(), Err(NotLeading("the lease is not held".into())));
        l.lead_until(Instant::now() + Duration::from_secs(3600));
        assert!(l.is_leading());
        l.lead_until(Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(Instant::now));
        assert_eq!(l.check(), Err(NotLeading("the lease was not renewed in time".into())), "no renewal: no writes");
        l.lose("the lease is now held by \"b\"");
        l.lead_until(Instant::now() + Duration::from_secs(3600));
        assert!(!l.is_leading(), "a loss is final");
        assert!(Leadership::unconditional().is_leading());
    }

    #[tokio::test]
    async fn acquired_waits_for_leading_or_reports_the_loss() {
        let l = Leadership::candidate();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.acquired().await }
        });
        l.lead_until(Instant::now() + Duration::from_secs(3600));
        assert_eq!(waiter.await.expect("no panic"), Ok(()));
        let lost = Leadership::candidate();
        lost.lose("gone");
        assert_eq!(lost.acquired().await, Err("gone".to_owned()));
        assert_eq!(Leadership::unconditional().acquired().await, Ok(()));
    }

    #[test]
    fn the_lease_written_keeps_what_it_must() {
        let election =
            Election { namespace: "ns".into(), name: "l".into(), identity: "a".into(), timing: LeaseTiming::default() };
        let t = |s| Timestamp::from_second(s).expect("valid");
        let created = lease_to_write(&election, None, &Action::Create, t(10));
        let spec = created.spec.clone().expect("spec");
        assert_eq!((created.metadata.name.as_deref(), created.metadata.namespace.as_deref()), (Some("l"), Some("ns")));
        assert_eq!(
            (spec.holder_identity.as_deref(), spec.lease_duration_seconds, spec.lease_transitions),
            (Some("a"), Some(15), Some(0))
        );
        let mut read = created;
        read.metadata.resource_version = Some("7".into());
        let renewed = lease_to_write(&election, Some(&read), &Action::Renew, t(15));
        assert_eq!(renewed.metadata.resource_version.as_deref(), Some("7"), "conditional on what was read");
        let spec = renewed.spec.expect("spec");
        assert_eq!(spec.acquire_time, Some(MicroTime(t(10))), "a renewal keeps the acquire time");
        assert_eq!(spec.renew_time, Some(MicroTime(t(15))));
        let taken =
            lease_to_write(&election, Some(&read), &Action::Acquire { transitions: 5 }, t(20)).spec.expect("spec");
        assert_eq!((spec_time(&taken.acquire_time), taken.lease_transitions), (Some(t(20)), Some(5)));
    }

    fn spec_time(t: &Option<MicroTime>) -> Option<Timestamp> {
        t.as_ref().map(|m| m.0)
    }
}
