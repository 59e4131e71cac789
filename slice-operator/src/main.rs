//! `slice-operator hub|worker|node-agent`: parses the command line and hands over to the library
//! ([`slice_operator::cli`]).

use std::process::ExitCode;

use clap::Parser as _;
use slice_operator::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    cli::run(cli)
}
