//! The command line of `slice-webhooks` and what it starts; `main.rs` only parses and calls
//! [`run`]. `slicectl install` builds the webhook Deployment's arguments from the names here,
//! and its tests parse them back with [`Args`].
//!
//! The binary reads only its flags and, from the environment, `RUST_LOG` (the log filter) and,
//! with `--hub-api`, what kube-rs reads to reach the API server: the pod's ServiceAccount
//! (`KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted token), or `KUBECONFIG` outside a pod.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::hub::{DirHub, HubView, StaticHub};
use crate::kube_hub::KubeHub;
use crate::membership::{ConfigMapDir, MembershipSource, NoMembership};
use crate::mutate::Mode;
use crate::server::{self, AppState, Settings};
use crate::tls::CertStore;

/// The port served by default.
pub const LISTEN_PORT: u16 = 8443;
/// Where the TLS Secret ([`crate::config::TLS_SECRET`]) is mounted by default.
pub const TLS_DIR: &str = "/etc/slicenet/webhook-tls";
/// Where `slicectl install worker` mounts the membership ConfigMap
/// ([`crate::membership::MEMBERSHIP_CONFIGMAP`]).
pub const MEMBERSHIP_DIR: &str = "/etc/slicenet/membership";

/// slicenet's admission webhooks.
#[derive(Debug, Clone, Parser)]
#[command(name = "slice-webhooks", version)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, LISTEN_PORT)))]
    pub listen: SocketAddr,
    /// PEM certificate chain (reloaded when it changes).
    #[arg(long, default_value_os_t = PathBuf::from(TLS_DIR).join("tls.crt"))]
    pub tls_cert: PathBuf,
    /// PEM private key (reloaded when it changes).
    #[arg(long, default_value_os_t = PathBuf::from(TLS_DIR).join("tls.key"))]
    pub tls_key: PathBuf,
    /// How pods get the slice interface in this cluster.
    #[arg(long, value_enum, default_value = "chained")]
    pub mode: Mode,
    /// Name of the slice interface in pods.
    #[arg(long, default_value = slice_api::names::DEFAULT_SLICE_INTERFACE)]
    pub slice_interface: String,
    /// The `slicenet-membership` ConfigMap mounted as a directory (member clusters). Without
    /// it no pod is mutated: pod reviews are answered 500 and the failure policy applies.
    #[arg(long)]
    pub membership_dir: Option<PathBuf>,
    /// Directory of SliceConfig and MemberCluster JSON manifests for validation.
    #[arg(long, conflicts_with = "hub_api")]
    pub hub_dir: Option<PathBuf>,
    /// Read the SliceConfigs and MemberClusters for validation from the API server this runs
    /// against (on the hub). Without this or `--hub-dir`, SliceConfigs are validated on their own.
    #[arg(long)]
    pub hub_api: bool,
    /// How often the certificate and the membership are re-read.
    #[arg(long, default_value = "2", value_name = "SECONDS")]
    pub reload_interval: u64,
    /// Timeout of one request, body included.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    pub request_timeout: u64,
    /// Largest AdmissionReview body accepted.
    #[arg(long, default_value_t = 6 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

/// Serves until SIGINT.
///
/// # Errors
/// When the certificate cannot be loaded, the address cannot be bound, or (`--hub-api`) no
/// API server configuration is found.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let certs = CertStore::load(&args.tls_cert, &args.tls_key).context("serving certificate")?;
    let interval = Duration::from_secs(args.reload_interval.max(1));
    let _cert_watch = certs.spawn_watch(interval);
    let mut tasks = Vec::new();
    let membership: Arc<dyn MembershipSource> = match &args.membership_dir {
        Some(dir) => {
            let dir = Arc::new(ConfigMapDir::new(dir));
            if let Err(err) = dir.refresh() {
                // Not fatal: /readyz stays false until the worker's ConfigMap is there.
                tracing::warn!(error = %err, "slice membership not loaded yet");
            }
            tasks.push(dir.spawn_refresh(interval));
            dir
        }
        None => Arc::new(NoMembership),
    };
    let hub: Arc<dyn HubView> = if args.hub_api {
        let client = kube::Client::try_default().await.context("--hub-api: cannot reach the API server")?;
        let (view, task) = KubeHub::start(client);
        tasks.push(task);
        Arc::new(view)
    } else if let Some(dir) = &args.hub_dir {
        Arc::new(DirHub::new(dir))
    } else {
        Arc::new(StaticHub::default())
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
    tracing::info!(listen = %args.listen, mode = ?args.mode, hub_api = args.hub_api, "slice-webhooks serving");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    let served = server::serve(listener, state, shutdown).await;
    for task in tasks {
        task.abort();
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_conflicts() {
        let a = Args::try_parse_from(["slice-webhooks"]).unwrap();
        assert_eq!(a.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(a.tls_cert, PathBuf::from("/etc/slicenet/webhook-tls/tls.crt"));
        assert_eq!(a.tls_key, PathBuf::from("/etc/slicenet/webhook-tls/tls.key"));
        assert!(a.membership_dir.is_none() && !a.hub_api);
        assert!(Args::try_parse_from(["slice-webhooks", "--hub-api", "--hub-dir", "/x"]).is_err());
        assert!(Args::try_parse_from(["slice-webhooks", "--no-such-flag"]).is_err());
    }
}
