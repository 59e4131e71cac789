//! `slice-webhooks`: serves the pod mutating webhook and the SliceConfig validating webhook over
//! HTTPS. The flags are [`webhooks::cli::Args`]; see the library's docs for what each does.

use clap::Parser;
use webhooks::cli::{self, Args};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(cli::run(args))
}
