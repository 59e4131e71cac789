//! The command line of `slice-operator hub|worker|node-agent` (clap derive) and what each
//! command runs. A library module, so that other crates' tests can parse the arguments that
//! `slicectl install` prints into its Deployments against the real definitions
//! (`Cli::try_parse_from`); `main.rs` only parses and calls [`run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::leader::LeaderElectionArgs;
use crate::node_agent::{self, DaemonOptions};
use crate::worker;

/// `slice-operator`.
#[derive(Debug, Parser)]
#[command(name = "slice-operator", version, about = "slicenet controllers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The three controllers.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The hub controller (SliceConfig → WorkerSlice per cluster).
    Hub(crate::hub::HubOptions),
    /// The worker controller (WorkerSlice → namespaces, gateway, node config).
    Worker(Box<WorkerArgs>),
    /// The node agent: slice router namespaces, VXLAN between nodes, node-state files.
    NodeAgent(NodeAgentArgs),
}

/// Arguments of `slice-operator worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// This member cluster's name (its MemberCluster on the hub).
    #[arg(long, env = "SLICENET_CLUSTER")]
    pub cluster: String,
    /// Kubeconfig of the hub (mounted from a Secret).
    #[arg(long, env = "SLICENET_HUB_KUBECONFIG")]
    pub hub_kubeconfig: PathBuf,
    /// Kubeconfig of this cluster; in-cluster configuration (or KUBECONFIG) when absent.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Image of the gateway pods (with `slice-gateway` on its PATH).
    #[arg(long, default_value = worker::objects::DEFAULT_GATEWAY_IMAGE)]
    pub gateway_image: String,
    /// MTU of the gateways' TUN devices.
    #[arg(long, default_value_t = 1420)]
    pub gateway_mtu: u32,
    /// Write Multus NetworkAttachmentDefinitions: `auto` follows the MemberCluster's spec.multus.
    /// NADs the worker wrote are deleted when this turns false.
    #[arg(long, default_value = "auto", value_parser = ["auto", "true", "false"])]
    pub multus: String,
    /// Underlay MTU of the nodes (node agent configuration).
    #[arg(long, default_value_t = 1500)]
    pub underlay_mtu: u32,
    /// Where the node agents write node-state files. slice-cni finds them there when chained
    /// (the conflist says so); as a Multus delegate it takes no path from the NAD, so a
    /// non-default dir must also be in the runtime's (or Multus') `SLICENET_STATE_DIR`.
    #[arg(long, default_value = slice_api::names::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where named network namespaces live on the nodes.
    #[arg(long, default_value = slice_api::names::DEFAULT_NETNS_DIR)]
    pub netns_dir: PathBuf,
    /// Prefix of the slice router namespaces' names.
    #[arg(long, default_value = slice_api::names::DEFAULT_ROUTER_NETNS_PREFIX)]
    pub router_netns_prefix: String,
    /// VXLAN UDP port on the underlay.
    #[arg(long, default_value_t = slice_api::names::DEFAULT_VXLAN_PORT)]
    pub vxlan_port: u16,
    /// Full pass every this many seconds even when nothing changed.
    #[arg(long, default_value_t = 60)]
    pub resync_secs: u64,
    /// Heartbeat on the MemberCluster's status every this many seconds.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Between passes, read the gateways' metrics every this many seconds and run a pass when a
    /// tunnel's state changed (a cut link shows within seconds, not at the next resync).
    #[arg(long, default_value_t = 5)]
    pub tunnel_check_secs: u64,
    #[command(flatten)]
    pub leader_election: LeaderElectionArgs,
    /// Where to serve /healthz and /readyz.
    #[arg(long, default_value = crate::health::DEFAULT_ADDR)]
    pub health_addr: SocketAddr,
}

impl WorkerArgs {
    /// The worker's options.
    #[must_use]
    pub fn into_options(self) -> worker::WorkerOptions {
        worker::WorkerOptions {
            settings: worker::decide::Settings {
                cluster: self.cluster.clone(),
                now: String::new(),
                node_defaults: worker::objects::NodeDefaults {
                    underlay_mtu: self.underlay_mtu,
                    state_dir: self.state_dir,
                    netns_dir: self.netns_dir,
                    router_netns_prefix: self.router_netns_prefix,
                    vxlan_port: self.vxlan_port,
                },
                gateway: worker::objects::GatewayDefaults { image: self.gateway_image, mtu: self.gateway_mtu },
                multus: match self.multus.as_str() {
                    "true" => Some(true),
                    "false" => Some(false),
                    _ => None,
                },
            },
            cluster: self.cluster,
            hub_kubeconfig: self.hub_kubeconfig,
            kubeconfig: self.kubeconfig,
            resync: Duration::from_secs(self.resync_secs.max(1)),
            heartbeat: Duration::from_secs(self.heartbeat_secs.max(1)),
            tunnel_check: Duration::from_secs(self.tunnel_check_secs.max(1)),
            leader_election: self.leader_election,
            health_addr: self.health_addr,
        }
    }
}

/// Arguments of `slice-operator node-agent`.
#[derive(Debug, clap::Args)]
pub struct NodeAgentArgs {
    /// The node agent's configuration (JSON file); or use --kube.
    #[arg(long, required_unless_present = "kube", conflicts_with = "kube")]
    pub config: Option<PathBuf>,
    /// Take the configuration from the ConfigMap `slicenet-node-<node>` in slicenet-system
    /// (watched through the API) instead of a file.
    #[arg(long, requires = "node")]
    pub kube: bool,
    /// This node's name (with --kube).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Reconcile once and exit (nonzero on error; file mode only).
    #[arg(long, conflicts_with_all = ["kube", "health_addr"])]
    pub once: bool,
    /// How often to check the configuration file for changes (and to retry a failed
    /// reconcile), in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// slice-cni's `statusDir` (with --kube): chained mode's per-pod network-status records,
    /// published onto the pods' `k8s.v1.cni.cncf.io/network-status` annotation. Scanned
    /// every --interval-ms.
    #[arg(long, requires = "kube", default_value = node_agent::network_status::DEFAULT_STATUS_DIR)]
    pub status_dir: PathBuf,
    /// Where to serve /healthz and /readyz (not served unless given).
    #[arg(long)]
    pub health_addr: Option<SocketAddr>,
    /// The node's CNI configuration directory as mounted (with --kube): the agent reports on
    /// its Lease whether the configuration the runtime uses chains slice-cni (not checked
    /// unless given).
    #[arg(long, requires_all = ["kube", "cni_bin_dir"])]
    pub cni_conf_dir: Option<PathBuf>,
    /// The node's CNI binary directory as mounted (with --cni-conf-dir).
    #[arg(long, requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,
}

/// Parses `args` (the program name first, as in `argv`) without exiting: what other crates'
/// tests use to check the arguments they print into manifests.
///
/// # Errors
/// clap's error, which displays as clap would print it.
pub fn try_parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

/// Prints `error` (with its causes) for `command` and returns the failure exit code.
fn failed(command: &str, error: &anyhow::Error) -> ExitCode {
    eprintln!("slice-operator {command}: {}", slice_api::error_chain::chain(error.as_ref()));
    ExitCode::FAILURE
}

/// Runs the parsed command line to its end.
#[must_use]
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Hub(options) => {
            match tokio_runtime().map_err(anyhow::Error::from).and_then(|rt| rt.block_on(crate::hub::run(options))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed("hub", &e),
            }
        }
        Command::Worker(args) => {
            let result = tokio_runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(worker::run(args.into_options())));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed("worker", &e),
            }
        }
        Command::NodeAgent(args) => run_node_agent(args),
    }
}

fn run_node_agent(args: NodeAgentArgs) -> ExitCode {
    let interval = Duration::from_millis(args.interval_ms.max(10));
    match args {
        NodeAgentArgs { kube: true, node, status_dir, health_addr, cni_conf_dir, cni_bin_dir, .. } => {
            let options = node_agent::kube::KubeAgentOptions {
                node: node.unwrap_or_default(),
                interval,
                resync: node_agent::RESYNC,
                status_dir,
                status_interval: interval,
                cni: cni_conf_dir.zip(cni_bin_dir).map(|(conf, bin)| node_agent::lease::CniDirs { conf, bin }),
            };
            let result = tokio_runtime().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async {
                    let health = crate::health::Health::new();
                    let _server = health_addr.map(|a| crate::health::spawn(a, &health)).transpose()?;
                    let client = kube::Client::try_default().await?;
                    node_agent::kube::run(client, options, health).await
                })
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed("node-agent", &e),
            }
        }
        NodeAgentArgs { config: None, .. } => {
            eprintln!("slice-operator node-agent: give --config FILE or --kube --node NAME");
            ExitCode::from(2)
        }
        NodeAgentArgs { config: Some(config), once: true, .. } => match node_agent::run_once(&config) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("slice-operator node-agent: {}", slice_api::error_chain::chain(&e));
                ExitCode::FAILURE
            }
        },
        NodeAgentArgs { config: Some(config), health_addr, .. } => {
            let opts = DaemonOptions { config_path: config, interval, resync: node_agent::RESYNC, health_addr };
            match node_agent::run_daemon(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slice-operator node-agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        try_parse(std::iter::once("slice-operator").chain(args.iter().copied()))
    }

    #[test]
    fn hub_and_worker_take_the_leader_election_and_health_flags() {
        let cli = parse(&[
            "hub",
            "--leader-election-namespace",
            "ops",
            "--leader-election-identity",
            "hub-0",
            "--health-addr",
            "127.0.0.1:9000",
        ])
        .unwrap();
        let Command::Hub(h) = cli.command else { panic!("hub") };
        assert_eq!(h.leader_election.leader_election_namespace, "ops");
        let election = h.leader_election.election(crate::leader::HUB_LEASE).expect("on by default");
        assert_eq!((election.name.as_str(), election.identity.as_str()), ("slicenet-hub", "hub-0"));
        assert_eq!(h.health_addr, "127.0.0.1:9000".parse().unwrap());

        let cli = parse(&["worker", "--cluster", "c1", "--hub-kubeconfig", "/k", "--no-leader-election"]).unwrap();
        let Command::Worker(w) = cli.command else { panic!("worker") };
        assert!(w.leader_election.no_leader_election);
        assert_eq!(w.leader_election.election(crate::leader::WORKER_LEASE), None);
        assert_eq!(w.health_addr, "[::]:8081".parse().unwrap(), "both families by default");
    }

    #[test]
    fn the_hub_pages_the_peers_unless_told_to_keep_them_inline() {
        use slice_api::planner::PeerLists;
        let hub = |args: &[&str]| match parse(args).unwrap().command {
            Command::Hub(h) => h,
            other => panic!("hub: {other:?}"),
        };
        assert_eq!(hub(&["hub"]).peer_lists(), PeerLists::Paged);
        assert_eq!(crate::hub::HubOptions::default().peer_lists(), PeerLists::Paged);
        assert_eq!(hub(&["hub", "--inline-peers"]).peer_lists(), PeerLists::Inline);
        assert!(parse(&["hub", "--peer-pages"]).is_err(), "the default now: no such flag");
    }

    #[test]
    fn the_node_agent_serves_probes_only_when_asked() {
        let cli = parse(&["node-agent", "--kube", "--node", "n1"]).unwrap();
        let Command::NodeAgent(a) = cli.command else { panic!("node-agent") };
        assert_eq!(a.health_addr, None);
        let cli = parse(&["node-agent", "--kube", "--node", "n1", "--health-addr", "[::]:8082"]).unwrap();
        let Command::NodeAgent(a) = cli.command else { panic!("node-agent") };
        assert_eq!(a.health_addr, Some("[::]:8082".parse().unwrap()));
        assert!(parse(&["node-agent", "--config", "/c", "--once", "--health-addr", "[::]:1"]).is_err());
        assert!(parse(&["hub", "--health-addr", "nowhere"]).is_err());
    }
}
