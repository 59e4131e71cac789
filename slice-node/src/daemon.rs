//! The node agent's one loop, fed by a stream of configuration updates: the file that
//! `--config` names (polled, [`file_updates`]) or the node's ConfigMap (watched,
//! [`crate::kube::config_updates`]). Whatever the source:
//!
//! - a configuration that cannot be used is rejected and the last good one stays in force;
//! - a source that says the configuration is gone (the ConfigMap deleted) leaves the node clean:
//!   the last configuration with no slices;
//! - a failed reconcile is retried every `retry`; an unchanged configuration is reconciled again
//!   every `resync` to repair drift;
//! - on SIGTERM/SIGINT the loop ends and the data plane stays in place, for the next start to
//!   adopt;
//! - the local gateway replicas of multi-gateway routes are probed ([`crate::liveness`]); a
//!   replica found dead or live again is a reconcile at once, and the first pass waits (at most
//!   [`FIRST_PASS_WAIT`]) until every replica has a verdict, so that a restarted agent wants
//!   what is installed.

use std::path::PathBuf;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use slice_api::node::NodeAgentConfig;
use slice_kube::health::Health;

use crate::liveness::{self, Liveness, Replica};

/// The longest the first pass waits for the local gateway replicas' verdicts (two probe
/// intervals make one; a namespace or pod that is slow to answer must not hold the node up).
pub const FIRST_PASS_WAIT: Duration = Duration::from_secs(2);

/// A change of the configuration, from either source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigUpdate {
    /// A (new or changed) valid configuration.
    Config(Box<NodeAgentConfig>),
    /// The source holds something unusable; keep the last good configuration.
    Rejected(String),
    /// The configuration is gone (its ConfigMap was deleted).
    Deleted,
}

/// What the agent holds between updates: the configuration in force and whether it must be
/// reconciled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentState {
    pub config: Option<NodeAgentConfig>,
    pub needs_reconcile: bool,
}

impl AgentState {
    /// Takes an update in; pure but for its log lines.
    pub fn apply(&mut self, update: ConfigUpdate) {
        match update {
            ConfigUpdate::Config(c) => {
                if self.config.as_ref() != Some(&*c) {
                    if self.config.is_some() {
                        tracing::info!("configuration changed");
                    }
                    self.config = Some(*c);
                    self.needs_reconcile = true;
                }
            }
            ConfigUpdate::Rejected(why) => {
                tracing::error!(reason = %why, "configuration rejected; keeping the last good one");
            }
            ConfigUpdate::Deleted => {
                // Leave the node clean: the last configuration without slices.
                if let Some(c) = &mut self.config
                    && !c.slices.is_empty()
                {
                    c.slices.clear();
                    self.needs_reconcile = true;
                }
            }
        }
    }
}

/// When the agent reports ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Once a usable configuration was read (the file: there is always meant to be one).
    OnConfig,
    /// Once the source answered at all, found or not (the ConfigMap's first list).
    OnFirstAnswer,
}

impl Readiness {
    fn after(self, update: &ConfigUpdate) -> bool {
        matches!((self, update), (Readiness::OnFirstAnswer, _) | (Readiness::OnConfig, ConfigUpdate::Config(_)))
    }
}

/// How often the loop acts without an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// After a failed (or waiting) reconcile.
    pub retry: Duration,
    /// Reconcile an unchanged configuration this often.
    pub resync: Duration,
}

/// The configuration file's updates: read every `interval`, an update each time its content
/// changes (a usable configuration or a rejection), an error each time it cannot be read.
pub fn file_updates(path: PathBuf, interval: Duration) -> impl Stream<Item = Result<ConfigUpdate, String>> {
    futures::stream::unfold((path, None::<Vec<u8>>, true), move |(path, mut last, first)| async move {
        if !first {
            tokio::time::sleep(interval).await;
        }
        loop {
            match tokio::fs::read(&path).await {
                Ok(bytes) if last.as_ref() != Some(&bytes) => {
                    let update = match NodeAgentConfig::load(&path) {
                        Ok(c) => ConfigUpdate::Config(Box::new(c)),
                        Err(e) => ConfigUpdate::Rejected(slice_api::error_chain::chain(&e).to_string()),
                    };
                    last = Some(bytes);
                    return Some((Ok(update), (path, last, false)));
                }
                Ok(_) => tokio::time::sleep(interval).await,
                Err(e) => {
                    let message = format!("cannot read the configuration {}: {e}", path.display());
                    return Some((Err(message), (path, last, false)));
                }
            }
        }
    })
}

/// Runs the agent on `updates` until SIGTERM or SIGINT. `health` turns ready as `readiness`
/// says and stops being alive when this returns.
///
/// # Errors
/// When the signal handlers cannot be set up, or the stream of updates ends.
pub async fn run<S>(updates: S, timing: Timing, health: &Health, readiness: Readiness) -> anyhow::Result<()>
where
    S: Stream<Item = Result<ConfigUpdate, String>>,
{
    use tokio::signal::unix::{SignalKind, signal};

    let _alive = health.alive_while();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut updates = std::pin::pin!(updates);
    let mut state = AgentState::default();
    let mut next_resync = tokio::time::Instant::now() + timing.resync;
    let mut first_pass_done = false;
    let mut liveness = Liveness::new();
    let first_pass_deadline = std::time::Instant::now() + FIRST_PASS_WAIT;
    let (probe_tx, mut probe_rx) = tokio::sync::mpsc::unbounded_channel::<(Replica, bool)>();
    loop {
        // The first pass waits for the replicas' verdicts (restart adoption).
        let adopting = !first_pass_done && !liveness.settled() && std::time::Instant::now() < first_pass_deadline;
        if let (true, false, Some(c)) = (state.needs_reconcile, adopting, state.config.clone()) {
            state.needs_reconcile = crate::reconcile_logged(c, liveness.dead()).await;
            next_resync = tokio::time::Instant::now() + timing.resync;
            // Said once per start, also when nothing had to change (a restart adopts the
            // router): tests and operators wait for this line instead of guessing a time.
            if !state.needs_reconcile && !first_pass_done {
                first_pass_done = true;
                tracing::info!("first reconcile pass complete");
            }
        }
        let retry = tokio::time::sleep(if state.needs_reconcile { timing.retry } else { timing.resync });
        let next_probe = liveness.next_due();
        let probe_due = async move {
            match next_probe {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: exiting, data plane left in place");
                return Ok(());
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: exiting, data plane left in place");
                return Ok(());
            }
            update = updates.next() => match update {
                Some(Ok(u)) => {
                    if readiness.after(&u) {
                        health.set_ready();
                    }
                    state.apply(u);
                    if let Some(c) = &state.config {
                        liveness.set_targets(&liveness::targets(c), std::time::Instant::now());
                    }
                }
                Some(Err(e)) => tracing::error!(error = %e, "configuration source failed; the last good configuration stays"),
                None => anyhow::bail!("the configuration source ended"),
            },
            () = retry => {}
            () = probe_due => {
                if let Some(c) = &state.config {
                    for replica in liveness.due(std::time::Instant::now()) {
                        let netns = c.router_netns(&replica.0);
                        let tx = probe_tx.clone();
                        tokio::task::spawn_blocking(move || {
                            let answered = liveness::probe(&netns, replica.1, liveness::PROBE_TIMEOUT);
                            let _ = tx.send((replica, answered));
                        });
                    }
                }
            }
            Some((replica, answered)) = probe_rx.recv() => {
                if liveness.record(&replica, answered) {
                    tracing::warn!(slice = %replica.0, gateway = %replica.1, live = answered, "gateway replica changed liveness");
                    state.needs_reconcile = true;
                }
            }
            () = tokio::time::sleep_until(next_resync) => {
                state.needs_reconcile = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node: &str, slices: usize) -> NodeAgentConfig {
        let blue = serde_json::json!({"name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.16.0/26"});
        let c: NodeAgentConfig = serde_json::from_value(serde_json::json!({
            "node": node, "underlayAddress": "198.18.1.11", "slices": vec![blue; slices]
        }))
        .expect("a configuration");
        c.validate().expect("valid");
        c
    }

    #[test]
    fn readiness_follows_the_source() {
        let c = ConfigUpdate::Config(Box::new(config("n1", 0)));
        let gone = ConfigUpdate::Deleted;
        let bad = ConfigUpdate::Rejected("x".into());
        assert!(Readiness::OnConfig.after(&c) && !Readiness::OnConfig.after(&gone) && !Readiness::OnConfig.after(&bad));
        assert!(Readiness::OnFirstAnswer.after(&c) && Readiness::OnFirstAnswer.after(&gone));
        assert!(Readiness::OnFirstAnswer.after(&bad));
    }

    /// The file's updates: the first content, nothing while it stays the same, a rejection for
    /// garbage (the last good configuration stays in the state), the next good content, and an
    /// error while it is missing.
    #[tokio::test]
    async fn the_file_gives_an_update_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        let good = config("n1", 0);
        std::fs::write(&path, serde_json::to_vec(&good).unwrap()).unwrap();
        let mut updates = std::pin::pin!(file_updates(path.clone(), Duration::from_millis(10)));
        let mut state = AgentState::default();
        let first = updates.next().await.unwrap().unwrap();
        assert_eq!(first, ConfigUpdate::Config(Box::new(good.clone())));
        state.apply(first);
        assert!(state.needs_reconcile);

        std::fs::write(&path, b"{ not json").unwrap();
        let rejected = updates.next().await.unwrap().unwrap();
        assert!(matches!(rejected, ConfigUpdate::Rejected(_)), "{rejected:?}");
        state.apply(rejected);
        assert_eq!(state.config.as_ref(), Some(&good), "the last good configuration stays");

        let other = config("n1", 1);
        std::fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert_eq!(updates.next().await.unwrap().unwrap(), ConfigUpdate::Config(Box::new(other)));

        std::fs::remove_file(&path).unwrap();
        let err = updates.next().await.unwrap().unwrap_err();
        assert!(err.contains("cannot read the configuration"), "{err}");
    }
}
