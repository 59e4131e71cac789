//! `slice-dns (--objects FILE | --kube) --listen ADDR:PORT [--ttl S]`: serves
//! `clusterset.local` and `slice.local` on UDP and TCP from ServiceImport and MCS EndpointSlice
//! objects — a YAML stream re-read when it changes, or the cluster's objects listed from the
//! Kubernetes API every interval. See the crate documentation.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use clap::{ArgGroup, Parser};
use slice_dns::cluster::{self, ClusterSource};
use slice_dns::records::Settings;
use slice_dns::reload::{self, Reloader};
use slice_dns::server::{self, DnsServer};

/// The slice DNS server: clusterset.local (MCS DNS specification 1.0.0) and slice.local.
#[derive(Debug, Parser)]
#[command(name = "slice-dns", version, group(ArgGroup::new("source").required(true).args(["objects", "kube"])))]
struct Args {
    /// YAML stream (`---` between documents) of ServiceImport and EndpointSlice objects; read
    /// again when it changes.
    #[arg(long, value_name = "FILE")]
    objects: Option<PathBuf>,
    /// Read the cluster's ServiceImports and MCS EndpointSlices from the Kubernetes API (the
    /// in-cluster configuration, or KUBECONFIG), listed again every `--kube-interval-ms`.
    #[arg(long)]
    kube: bool,
    /// How often the Kubernetes API is listed, in milliseconds (100 to 60000).
    #[arg(long, value_name = "MS", default_value_t = cluster::DEFAULT_INTERVAL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    kube_interval_ms: u64,
    /// Address and port for UDP and TCP.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// TTL of every record and of negative answers, in seconds.
    #[arg(long, value_name = "S", default_value_t = Settings::default().ttl)]
    ttl: u32,
    /// How often the objects file is checked for changes, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..))]
    reload_interval_ms: u64,
    /// TCP connections served at once; more are closed at once.
    #[arg(long, value_name = "N", default_value_t = server::Options::default().tcp_max_connections)]
    tcp_max_connections: usize,
    /// Seconds after which a silent TCP connection is closed.
    #[arg(long, value_name = "S", default_value_t = server::Options::default().tcp_idle_timeout.as_secs())]
    tcp_idle_timeout: u64,
    /// Write the records as zone files (`DIR/clusterset.local.zone`, `DIR/slice.local.zone`)
    /// and exit instead of serving: to read what would be answered, or to load the same records
    /// into another server.
    #[arg(long, value_name = "DIR")]
    dump_zones: Option<PathBuf>,
    /// Where to answer the kubelet's probes: `/healthz` while the process runs, `/readyz` once
    /// the first records are served. None when not given.
    #[arg(long, value_name = "ADDR:PORT")]
    health_addr: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // hickory-server logs every request at info.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn,hickory_net=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("slice-dns: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the records come from once the server runs.
enum Source {
    File(Reloader),
    Cluster(ClusterSource),
}

fn run(args: &Args) -> Result<()> {
    let settings = Settings { ttl: args.ttl };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the runtime")?;
    runtime.block_on(async {
        let kube_interval = Duration::from_millis(args.kube_interval_ms);
        let health = slice_kube::health::Health::new();
        let _probes = match args.health_addr {
            Some(addr) if args.dump_zones.is_none() => Some(
                slice_kube::health::spawn(addr, &health)
                    .with_context(|| format!("cannot listen on {addr} for probes"))?,
            ),
            _ => None,
        };
        // The first snapshot must exist before serving: a server that starts with nothing would
        // answer NXDOMAIN for every service, which resolvers cache.
        let (first, source) = match &args.objects {
            Some(path) => {
                let mut reloader = Reloader::new(path, settings);
                let first = match reloader.poll() {
                    Some(reload::Change::Snapshot(snapshot)) => snapshot,
                    Some(reload::Change::Failed(error)) => return Err(error.into()),
                    None => unreachable!("the first poll always reads"),
                };
                reload::log_snapshot(&first, &path.display());
                (first, Source::File(reloader))
            }
            None => {
                let client = kube::Client::try_default().await.context("cannot configure the Kubernetes client")?;
                let mut source = ClusterSource::new(client, settings);
                let first = source.first(kube_interval).await;
                reload::log_snapshot(&first, &"the Kubernetes API");
                (first, Source::Cluster(source))
            }
        };
        if let Some(dir) = &args.dump_zones {
            for zone in [slice_api::mcs::CLUSTERSET_ZONE, slice_api::mcs::SLICE_ZONE] {
                let path = dir.join(format!("{zone}.zone"));
                let text = first.zone_file(zone).context("a zone we serve")?;
                std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            }
            return Ok(());
        }
        let shared = Arc::new(ArcSwap::from_pointee(first));
        let options = server::Options {
            listen: args.listen,
            tcp_max_connections: args.tcp_max_connections,
            tcp_idle_timeout: Duration::from_secs(args.tcp_idle_timeout),
        };
        let dns = DnsServer::bind(&options, shared.clone()).await?;
        tracing::info!(listen = %dns.local_addr(), "serving clusterset.local and slice.local on UDP and TCP");
        health.set_ready();
        match source {
            Source::File(reloader) => {
                tokio::spawn(reload::watch(reloader, shared, Duration::from_millis(args.reload_interval_ms)));
            }
            Source::Cluster(source) => {
                tokio::spawn(cluster::watch(source, shared, kube_interval));
            }
        }
        dns.run_until(shutdown_signal()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGTERM (Kubernetes, the tests) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process still stops on the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
