//! `slice-gateway --interface NAME [--config FILE] [--metrics ADDR]`: a userspace WireGuard
//! interface in the foreground, configured like any WireGuard interface (`wg`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ipnet::IpNet;
use slice_api::gateway::{HANDSHAKE_RATE_LIMIT_ENV, flag};

#[derive(Debug, Parser)]
#[command(version, about = "slicenet slice gateway: userspace WireGuard (boringtun) between clusters")]
struct Cli {
    /// Name of the TUN interface to create (≤ 15 bytes); also names the UAPI socket
    /// /var/run/wireguard/NAME.sock.
    #[arg(short, long = flag::INTERFACE)]
    interface: String,
    /// Configuration in the wg(8) format (`wg setconf` syntax). Must not be readable by group or
    /// others when it holds the private key.
    #[arg(short, long = flag::CONFIG)]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics (/metrics) and /healthz on this address, e.g. 127.0.0.1:9586,
    /// [fd00::1]:9586, or [::]:9586 for every IPv6 and IPv4 address.
    #[arg(long = flag::METRICS)]
    metrics: Option<SocketAddr>,
    /// MTU of the TUN interface.
    #[arg(long = flag::MTU, default_value_t = 1420)]
    mtu: u32,
    /// Add this address to the interface (repeatable).
    #[arg(long = flag::ADDRESS)]
    addresses: Vec<IpNet>,
    /// Route every peer's AllowedIPs into the interface and follow changes (as wg-quick does);
    /// without it, routes are the caller's job. The configuration file, when given, is re-read
    /// whenever it changes either way.
    #[arg(long = flag::ROUTES)]
    routes: bool,
    /// Handshake messages per second (a handshake counts twice) before the gateway answers
    /// initiations with cookie replies, so that under a flood only peers that prove their address
    /// cost a Diffie-Hellman. 0 makes every handshake prove its address first: a peer's handshake
    /// then takes a cookie round trip and WireGuard's retry (about 5 s) instead of one round trip.
    /// At most 1000000.
    #[arg(
        long = flag::HANDSHAKE_RATE_LIMIT,
        env = HANDSHAKE_RATE_LIMIT_ENV,
        allow_negative_numbers = true,
        default_value_t = slice_gateway::device::DEFAULT_HANDSHAKE_RATE_LIMIT,
        value_parser = clap::value_parser!(u64).range(0..=slice_gateway::device::MAX_HANDSHAKE_RATE_LIMIT),
    )]
    handshake_rate_limit: u64,
    /// Forward IPv4 between this link (repeatable; e.g. the pod's slice interface) and the TUN
    /// device: turns per-link forwarding on for both over netlink, so the pod needs neither the
    /// unsafe sysctl `net.ipv4.ip_forward` nor a writable /proc/sys, only CAP_NET_ADMIN.
    #[arg(long = flag::FORWARD, value_name = "LINK")]
    forward: Vec<String>,
    /// Write this DSCP class (AF41, EF, CS1, …) on the outer (encrypted) packets, so the network
    /// between clusters can honour the slice's QoS class.
    #[arg(long = flag::DSCP, value_name = "CLASS")]
    dscp: Option<slice_api::qos::DscpClass>,
    /// Probes and peer groups: every peer is sent a keepalive each interval (in milliseconds,
    /// 50–10000) and one silent for three intervals is dead (`slice_gateway_peer_live` 0);
    /// several peers may hold the same AllowedIPs (a remote cluster's gateway replicas), each
    /// flow going to one live member (rendezvous hash).
    #[arg(long = flag::MULTIPATH_PROBE_MS, value_name = "MS",
        value_parser = clap::value_parser!(u64).range(50..=10_000))]
    multipath_probe_ms: Option<u64>,
    /// On SIGTERM or SIGINT, drain this long (ms) before exiting: the first half `/healthz`
    /// answers 503 (node agents and readiness take this replica out), the second half nothing
    /// is sent to the peers (their gateways find it silent and move its flows), packets keep
    /// flowing both ways throughout. The worker gives 2000 to the replicas of a slice with
    /// several; 0 exits at once.
    #[arg(long = flag::DRAIN_MS, value_name = "MS", default_value_t = 0,
        value_parser = clap::value_parser!(u64).range(0..=60_000))]
    drain_ms: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let opts = slice_gateway::Options {
        interface: cli.interface,
        config: cli.config,
        metrics: cli.metrics,
        mtu: cli.mtu,
        addresses: cli.addresses,
        routes: cli.routes,
        handshake_rate_limit: cli.handshake_rate_limit,
        forward: cli.forward,
        dscp: cli.dscp,
        multipath_probe_ms: cli.multipath_probe_ms,
        drain_ms: cli.drain_ms,
    };
    match slice_gateway::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("slice-gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}
