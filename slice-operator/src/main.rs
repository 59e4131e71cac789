//! `slice-operator hub|worker|node-agent`: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use slice_operator::node_agent::{self, DaemonOptions};
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
    Hub,
    /// The worker controller (WorkerSlice → namespaces, gateway, node config).
    Worker,
    /// The node agent: slice router namespaces, VXLAN between nodes, node-state files.
    NodeAgent {
        /// The node agent's configuration (JSON).
        #[arg(long)]
        config: PathBuf,
        /// Reconcile once and exit (nonzero on error).
        #[arg(long)]
        once: bool,
        /// How often to check the configuration for changes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Hub | Command::Worker => {
            eprintln!("slice-operator: not implemented yet: see issue 4");
            ExitCode::from(2)
        }
        Command::NodeAgent { config, once: true, .. } => match node_agent::run_once(&config) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("slice-operator node-agent: {}", node_agent::chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::NodeAgent { config, interval_ms, .. } => {
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
