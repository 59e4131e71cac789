//! `slicectl`: slicenet's CLI. A thin shell: parse the command line (clap derive), call one
//! library function, map its error to a message and exit code. The work lives in
//! [`commands`] and the `e2e` crate (the lab, the demo and the status table).

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "slicectl", version, about = "slicenet's command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The lab: clusters of network namespaces on this machine (needs root).
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
    /// Prints the slices of one node from its files: node-state files and slice-cni's IPAM dir.
    Status {
        /// The node agent's state dir (node-state files).
        #[arg(long, default_value = slice_api::names::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// slice-cni's IPAM dir.
        #[arg(long, default_value = slice_api::names::DEFAULT_IPAM_DIR)]
        ipam_dir: PathBuf,
        /// Node name for the table.
        #[arg(long, default_value = "this node")]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum LabCmd {
    /// Builds the demo (two slices with the same subnet on a 2-node cluster), shows pods,
    /// reachability and status, and tears it down. Exits non-zero when reachability differs
    /// from what slicenet promises.
    Demo,
    /// Builds the demo lab and its pods and leaves them running (`slicectl lab down` removes it).
    Up {
        /// Lab name prefix ([a-z][a-z0-9]{0,9}).
        #[arg(long, default_value = e2e::demo::PREFIX)]
        prefix: String,
    },
    /// Removes everything a lab made (also after a crash). Idempotent.
    Down {
        /// Lab name prefix ([a-z][a-z0-9]{0,9}).
        #[arg(long, default_value = e2e::demo::PREFIX, conflicts_with = "all")]
        prefix: String,
        /// Every lab found under /run/slicenet-lab.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Cmd::Lab { command: LabCmd::Demo } => e2e::demo::run(),
        Cmd::Lab { command: LabCmd::Up { prefix } } => e2e::demo::up(&prefix),
        Cmd::Lab { command: LabCmd::Down { prefix, all } } => commands::lab_down(&prefix, all),
        Cmd::Status { state_dir, ipam_dir, node } => commands::status(&node, &state_dir, &ipam_dir),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slicectl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
