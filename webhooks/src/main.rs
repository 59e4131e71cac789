//! `slice-webhooks`: serves the pod mutating webhook and the SliceConfig validating webhook over
//! HTTPS. See the library's docs for what each does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use webhooks::hub::{DirHub, HubView, StaticHub};
use webhooks::membership::ConfigMapDir;
use webhooks::mutate::Mode;
use webhooks::server::{self, AppState, Settings};
use webhooks::tls::CertStore;

/// slicenet's admission webhooks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain (reloaded when it changes).
    #[arg(long, default_value = "/etc/slicenet/webhook-tls/tls.crt")]
    tls_cert: PathBuf,
    /// PEM private key (reloaded when it changes).
    #[arg(long, default_value = "/etc/slicenet/webhook-tls/tls.key")]
    tls_key: PathBuf,
    /// How pods get the slice interface in this cluster.
    #[arg(long, value_enum, default_value = "chained")]
    mode: Mode,
    /// Name of the slice interface in pods.
    #[arg(long, default_value = slice_api::names::DEFAULT_SLICE_INTERFACE)]
    slice_interface: String,
    /// The `slicenet-membership` ConfigMap mounted as a directory.
    #[arg(long, default_value = "/etc/slicenet/membership")]
    membership_dir: PathBuf,
    /// Directory of SliceConfig and MemberCluster JSON manifests for validation (hub only);
    /// without it, SliceConfigs are validated on their own.
    #[arg(long)]
    hub_dir: Option<PathBuf>,
    /// How often the certificate and the membership are re-read.
    #[arg(long, default_value = "2", value_name = "SECONDS")]
    reload_interval: u64,
    /// Timeout of one request, body included.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    request_timeout: u64,
    /// Largest AdmissionReview body accepted.
    #[arg(long, default_value_t = 6 * 1024 * 1024)]
    max_body_bytes: usize,
}

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
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let certs = CertStore::load(&args.tls_cert, &args.tls_key).context("serving certificate")?;
    let membership = Arc::new(ConfigMapDir::new(&args.membership_dir));
    if let Err(err) = membership.refresh() {
        // Not fatal: /readyz stays false until the worker's ConfigMap is there.
        tracing::warn!(error = %err, "slice membership not loaded yet");
    }
    let interval = Duration::from_secs(args.reload_interval.max(1));
    let _cert_watch = certs.spawn_watch(interval);
    let _membership_watch = membership.spawn_refresh(interval);
    let hub: Arc<dyn HubView> = match &args.hub_dir {
        Some(dir) => Arc::new(DirHub::new(dir)),
        None => Arc::new(StaticHub::default()),
    };
    let state = Arc::new(AppState {
        settings: Settings {
            request_timeout: Duration::from_secs(args.request_timeout.max(1)),
            max_body_bytes: args.max_body_bytes,
            mode: args.mode,
            interface: args.slice_interface.clone(),
            ..Settings::default()
        },
        membership,
        hub,
        certs,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, mode = ?args.mode, "slice-webhooks serving");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    server::serve(listener, state, shutdown).await
}
