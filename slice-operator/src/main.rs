//! `slice-operator hub|worker|node-agent`: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use slice_operator::node_agent::{self, DaemonOptions};
use slice_operator::worker;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "slice-operator", version, about = "slicenet controllers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The hub controller (SliceConfig → WorkerSlice per cluster).
    Hub(slice_operator::hub::HubOptions),
    /// The worker controller (WorkerSlice → namespaces, gateway, node config).
    Worker(Box<WorkerArgs>),
    /// The node agent: slice router namespaces, VXLAN between nodes, node-state files.
    NodeAgent {
        /// The node agent's configuration (JSON file); or use --kube.
        #[arg(long, required_unless_present = "kube", conflicts_with = "kube")]
        config: Option<PathBuf>,
        /// Take the configuration from the ConfigMap `slicenet-node-<node>` in slicenet-system
        /// (watched through the API) instead of a file.
        #[arg(long, requires = "node")]
        kube: bool,
        /// This node's name (with --kube).
        #[arg(long, env = "NODE_NAME")]
        node: Option<String>,
        /// Reconcile once and exit (nonzero on error; file mode only).
        #[arg(long, conflicts_with = "kube")]
        once: bool,
        /// How often to check the configuration file for changes (and to retry a failed
        /// reconcile), in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// slice-cni's `statusDir` (with --kube): chained mode's per-pod network-status records,
        /// published onto the pods' `k8s.v1.cni.cncf.io/network-status` annotation. Scanned
        /// every --interval-ms.
        #[arg(long, requires = "kube", default_value = node_agent::network_status::DEFAULT_STATUS_DIR)]
        status_dir: PathBuf,
    },
}

/// Arguments of `slice-operator worker`.
#[derive(Debug, clap::Args)]
struct WorkerArgs {
    /// This member cluster's name (its MemberCluster on the hub).
    #[arg(long, env = "SLICENET_CLUSTER")]
    cluster: String,
    /// Kubeconfig of the hub (mounted from a Secret).
    #[arg(long, env = "SLICENET_HUB_KUBECONFIG")]
    hub_kubeconfig: PathBuf,
    /// Kubeconfig of this cluster; in-cluster configuration (or KUBECONFIG) when absent.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Image of the gateway pods (with `slice-gateway` on its PATH).
    #[arg(long, default_value = "ghcr.io/slicenet/slice-gateway:latest")]
    gateway_image: String,
    /// MTU of the gateways' TUN devices.
    #[arg(long, default_value_t = 1420)]
    gateway_mtu: u32,
    /// Write Multus NetworkAttachmentDefinitions: `auto` follows the MemberCluster's spec.multus.
    #[arg(long, default_value = "auto", value_parser = ["auto", "true", "false"])]
    multus: String,
    /// Underlay MTU of the nodes (node agent configuration).
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: u32,
    /// Where the node agents write node-state files.
    #[arg(long, default_value = slice_api::names::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Where named network namespaces live on the nodes.
    #[arg(long, default_value = slice_api::names::DEFAULT_NETNS_DIR)]
    netns_dir: PathBuf,
    /// Prefix of the slice router namespaces' names.
    #[arg(long, default_value = slice_api::names::DEFAULT_ROUTER_NETNS_PREFIX)]
    router_netns_prefix: String,
    /// VXLAN UDP port on the underlay.
    #[arg(long, default_value_t = slice_api::names::DEFAULT_VXLAN_PORT)]
    vxlan_port: u16,
    /// Full pass every this many seconds even when nothing changed.
    #[arg(long, default_value_t = 60)]
    resync_secs: u64,
    /// Heartbeat on the MemberCluster's status every this many seconds.
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
}

impl WorkerArgs {
    fn into_options(self) -> worker::WorkerOptions {
        let delegate = slice_api::multus::DelegateOptions {
            state_dir: (self.state_dir != std::path::Path::new(slice_api::names::DEFAULT_STATE_DIR))
                .then(|| self.state_dir.clone()),
            ..Default::default()
        };
        worker::WorkerOptions {
            settings: worker::decide::Settings {
                cluster: self.cluster.clone(),
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
                delegate,
            },
            cluster: self.cluster,
            hub_kubeconfig: self.hub_kubeconfig,
            kubeconfig: self.kubeconfig,
            resync: Duration::from_secs(self.resync_secs.max(1)),
            heartbeat: Duration::from_secs(self.heartbeat_secs.max(1)),
        }
    }
}

fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Hub(options) => {
            let result = tokio_runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(slice_operator::hub::run(options)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slice-operator hub: {}", node_agent::chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Worker(args) => {
            let result = tokio_runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(worker::run(args.into_options())));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slice-operator worker: {}", node_agent::chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::NodeAgent { kube: true, node, interval_ms, status_dir, .. } => {
            let interval = Duration::from_millis(interval_ms.max(10));
            let options = node_agent::kube::KubeAgentOptions {
                node: node.unwrap_or_default(),
                interval,
                resync: node_agent::RESYNC,
                status_dir,
                status_interval: interval,
            };
            let result = tokio_runtime().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async {
                    let client = kube::Client::try_default().await?;
                    node_agent::kube::run(client, options).await
                })
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slice-operator node-agent: {}", node_agent::chain(e.as_ref()));
                    ExitCode::FAILURE
                }
            }
        }
        Command::NodeAgent { config: None, .. } => {
            eprintln!("slice-operator node-agent: give --config FILE or --kube --node NAME");
            ExitCode::from(2)
        }
        Command::NodeAgent { config: Some(config), once: true, .. } => match node_agent::run_once(&config) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("slice-operator node-agent: {}", node_agent::chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::NodeAgent { config: Some(config), interval_ms, .. } => {
            let opts = DaemonOptions {
                config_path: config,
                interval: Duration::from_millis(interval_ms.max(10)),
                resync: node_agent::RESYNC,
            };
            match node_agent::run_daemon(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slice-operator node-agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
