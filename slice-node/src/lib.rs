//! The node agent: on each node, one router namespace per slice, joined to the same slice's
//! routers on the other nodes by a VXLAN (flannel's static scheme), and a node-state file per
//! slice for the CNI plugin. In each router namespace one nftables table ([`firewall`]) holds
//! the anti-spoof check, the slice's ClusterSetIP DNAT and its MultiNetworkPolicies.
//!
//! A reconcile observes ([`router::observe`]), decides ([`plan::plan`], pure) and applies
//! ([`router::apply`]). One loop ([`daemon`]) runs it, fed by the configuration file (polled) or
//! the node's ConfigMap ([`kube`], watched): at start, whenever the configuration changes, and
//! every [`RESYNC`] to repair drift; failures are logged and retried, and on SIGTERM/SIGINT it
//! exits leaving the data plane in place, for the next start to adopt.

pub mod daemon;
pub mod firewall;
pub mod kube;
pub mod lease;
pub mod liveness;
pub mod network_status;
pub mod plan;
pub mod qos;
pub mod router;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dataplane::{Kernel, NamespaceOps, Netlink};
use slice_api::error_chain::chain;
use slice_api::node::{NodeAgentConfig, NodeFileError};

pub use plan::{Action, Observed, RouterSpec};

/// How often the daemon re-reconciles an unchanged configuration.
pub const RESYNC: Duration = Duration::from_secs(10);

/// What went wrong in the node agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeAgentError {
    /// The configuration could not be read or is invalid.
    #[error(transparent)]
    Config(NodeFileError),
    /// Writing a node-state file failed.
    #[error(transparent)]
    StateFile(NodeFileError),
    /// Reading the kernel's state of a slice failed.
    #[error("slice {slice}: {what}")]
    Observe {
        slice: String,
        what: String,
        #[source]
        source: dataplane::Error,
    },
    /// A data-plane step failed.
    #[error("{what}")]
    Apply {
        what: String,
        #[source]
        source: dataplane::Error,
    },
    /// A file-system step failed.
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// A MultiNetworkPolicy of the slice cannot be compiled; the router's rules in force were
    /// kept.
    #[error("{0}; the rules in force are kept")]
    Policy(String),
    /// Something the plan depends on is not there yet (e.g. a gateway pod); retried.
    #[error("{0}")]
    Waiting(String),
    /// Some slices could not be reconciled; the others were.
    #[error("{} slice(s) failed: {}", failures.len(), summary(failures))]
    Reconcile { failures: Vec<SliceFailure> },
}

impl NodeAgentError {
    /// True when nothing failed but something the plan depends on is not there yet (e.g. a
    /// gateway pod): worth a retry, not an alarm.
    pub fn is_only_waiting(&self) -> bool {
        match self {
            NodeAgentError::Waiting(_) => true,
            NodeAgentError::Reconcile { failures } => failures.iter().all(|f| f.error.is_only_waiting()),
            _ => false,
        }
    }
}

/// One slice whose reconcile stopped, and why.
#[derive(Debug)]
pub struct SliceFailure {
    pub slice: String,
    pub action: String,
    pub error: NodeAgentError,
}

fn summary(failures: &[SliceFailure]) -> String {
    failures
        .iter()
        .map(|f| format!("slice {}: {}: {}", f.slice, f.action, chain(&f.error)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Brings the node in line with `config`, from the calling thread's network namespace (the
/// node's). Returns the actions applied (empty when nothing had to change).
///
/// # Errors
/// When observing fails, or [`NodeAgentError::Reconcile`] naming each slice that could not be
/// completed (the other slices are reconciled regardless).
pub fn reconcile(config: &NodeAgentConfig) -> Result<Vec<Action>, NodeAgentError> {
    reconcile_live(config, &DeadGateways::new())
}

/// The local gateway replicas found dead, by slice ([`liveness`]).
pub type DeadGateways = std::collections::BTreeMap<String, std::collections::BTreeSet<std::net::IpAddr>>;

/// [`reconcile`] with the local gateway replicas the probes found dead ([`liveness`]): their
/// nexthops leave the groups (unless every replica of a route is dead).
///
/// # Errors
/// See [`reconcile`].
pub fn reconcile_live(config: &NodeAgentConfig, dead: &DeadGateways) -> Result<Vec<Action>, NodeAgentError> {
    let mut node = Netlink::new()
        .map_err(|source| NodeAgentError::Apply { what: "opening netlink in the node namespace".into(), source })?;
    let routers = reconcile_with_liveness(config, &mut Kernel, &mut node, dead);
    let qos = reconcile_qos(config);
    match (routers, qos) {
        (Ok(actions), Ok(())) => Ok(actions),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(e)) => Err(NodeAgentError::Reconcile {
            failures: vec![SliceFailure { slice: "(uplink)".into(), action: "QoS".into(), error: e }],
        }),
        (Err(NodeAgentError::Reconcile { mut failures }), Err(e)) => {
            failures.push(SliceFailure { slice: "(uplink)".into(), action: "QoS".into(), error: e });
            Err(NodeAgentError::Reconcile { failures })
        }
        (Err(e), Err(q)) => {
            tracing::error!(error = %chain(&q), "QoS failed too");
            Err(e)
        }
    }
}

/// The uplink's QoS tree and classifying table ([`qos`]) in the calling thread's namespace
/// (the node's), and the status file that says which tree (and leaf qdisc) is in force.
///
/// # Errors
/// See [`qos::reconcile`].
pub fn reconcile_qos(config: &NodeAgentConfig) -> Result<(), NodeAgentError> {
    let ns = |what: &str| {
        dataplane::Netns::current()
            .map_err(|source| NodeAgentError::Apply { what: format!("opening the node namespace for {what}"), source })
    };
    let mut tc = dataplane::tc::Tc::new(ns("tc")?);
    let mut table = qos::NftQosTable(ns("nft")?);
    let outcome = qos::reconcile(config, &mut tc, &mut table)?;
    let status = qos::status(qos::desired(config).as_ref(), &outcome);
    qos::write_status(&config.state_dir, &status).map_err(|source| NodeAgentError::Io {
        op: format!("writing {}", config.state_dir.join(qos::STATUS_FILE).display()),
        source,
    })
}

/// [`reconcile`] through any [`NamespaceOps`], with `node` a netlink handle in the node
/// namespace (the in-memory `dataplane::fake` in the tests without root).
///
/// # Errors
/// See [`reconcile`].
pub fn reconcile_with<H: NamespaceOps>(
    config: &NodeAgentConfig,
    host: &mut H,
    node: &mut H::Netlink,
) -> Result<Vec<Action>, NodeAgentError> {
    reconcile_with_liveness(config, host, node, &DeadGateways::new())
}

/// [`reconcile_with`] with the local gateway replicas found dead (see [`reconcile_live`]).
///
/// # Errors
/// See [`reconcile`].
pub fn reconcile_with_liveness<H: NamespaceOps>(
    config: &NodeAgentConfig,
    host: &mut H,
    node: &mut H::Netlink,
    dead: &DeadGateways,
) -> Result<Vec<Action>, NodeAgentError> {
    let (mut observed, unobservable) = router::observe(config, host, node)?;
    observed.dead_gateways = dead.clone();
    let actions = plan::plan(config, &observed);
    let unobservable: Vec<SliceFailure> = unobservable
        .into_iter()
        .map(|(slice, error)| SliceFailure { slice, action: "observe the router".into(), error })
        .collect();
    if actions.is_empty() && unobservable.is_empty() {
        tracing::debug!("node is up to date");
        return Ok(actions);
    }
    let failures = router::apply(config, host, node, &actions);
    if failures.is_empty() && unobservable.is_empty() {
        tracing::info!(actions = actions.len(), "reconciled");
        Ok(actions)
    } else {
        Err(NodeAgentError::Reconcile {
            failures: unobservable
                .into_iter()
                .chain(failures.into_iter().map(|(slice, action, error)| SliceFailure { slice, action, error }))
                .collect(),
        })
    }
}

/// Loads the configuration and reconciles once.
///
/// # Errors
/// See [`NodeAgentConfig::load`] and [`reconcile`].
pub fn run_once(config_path: &Path) -> Result<Vec<Action>, NodeAgentError> {
    let config = NodeAgentConfig::load(config_path).map_err(NodeAgentError::Config)?;
    reconcile(&config)
}

/// Options of the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config_path: PathBuf,
    /// How often the configuration file is checked for changes (and failures retried).
    pub interval: Duration,
    /// How often an unchanged configuration is reconciled again.
    pub resync: Duration,
    /// Where to serve /healthz and /readyz (ready once a configuration was loaded).
    pub health_addr: Option<std::net::SocketAddr>,
}

/// Runs the agent on its configuration file until SIGTERM or SIGINT (the loop of
/// [`daemon`]): a configuration that cannot be read keeps the last good one in force; a failed
/// reconcile is retried at the next interval.
///
/// # Errors
/// When the runtime, the probes' listener or the signal handlers cannot be set up.
pub fn run_daemon(opts: &DaemonOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let health = slice_kube::health::Health::new();
        let _server = opts.health_addr.map(|a| slice_kube::health::spawn(a, &health)).transpose()?;
        tracing::info!(config = %opts.config_path.display(), "node agent starting");
        let updates = daemon::file_updates(opts.config_path.clone(), opts.interval);
        let timing = daemon::Timing { retry: opts.interval, resync: opts.resync };
        daemon::run(updates, timing, &health, daemon::Readiness::OnConfig).await
    })
}

/// One reconcile of `config` on a blocking thread (netlink handles run their own runtimes; the
/// thread is in the process's, the node's, network namespace), logged. True when it must be
/// retried: it failed, panicked, or only waits for something (a gateway pod) to appear.
pub(crate) async fn reconcile_logged(config: NodeAgentConfig, dead: DeadGateways) -> bool {
    match tokio::task::spawn_blocking(move || reconcile_live(&config, &dead)).await {
        Ok(Ok(_)) => false,
        Ok(Err(e)) if e.is_only_waiting() => {
            tracing::info!(reason = %chain(&e), "waiting; retrying");
            true
        }
        Ok(Err(e)) => {
            tracing::error!(error = %chain(&e), "reconcile failed; retrying");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "reconcile panicked; retrying");
            true
        }
    }
}
