//! slicenet's slice gateway: one userspace WireGuard interface per slice per cluster, built on
//! boringtun's sans-IO `noise::Tunn` with our own TUN/UDP loops ([`device`]), configured in the
//! `wg(8)` format ([`config`]) and through the WireGuard UAPI socket ([`uapi`],
//! [`uapi_server`]), observed through Prometheus metrics ([`metrics`]).

pub mod allowed_ips;
pub mod config;
pub mod device;
pub mod key;
pub mod metrics;
pub mod offload;
pub mod tun;
pub mod uapi;
pub mod uapi_server;
pub mod udp;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ipnet::IpNet;
use nix::sys::signal::{SigSet, Signal};

/// What `main` parsed from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub interface: String,
    pub config: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

/// Reads and parses a configuration file; refuses a file that holds a private key and is
/// readable by group or others.
///
/// # Errors
/// When the file cannot be read, has unsafe permissions, or does not parse (the message names
/// the line).
pub fn load_config(path: &Path) -> anyhow::Result<config::DeviceUpdate> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let update = config::parse(&text).with_context(|| format!("in {}", path.display()))?;
    if update.private_key.is_some() {
        let mode = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "{} holds a private key but is accessible by group or others (mode {:03o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
    Ok(update)
}

/// Runs the gateway until SIGTERM or SIGINT.
///
/// # Errors
/// When any setup step fails (configuration, TUN, netlink, sockets).
pub fn run(opts: &Options) -> anyhow::Result<()> {
    // Validate before creating anything.
    let initial = opts.config.as_deref().map(load_config).transpose()?;

    // Block the signals in every thread; the main thread waits for them below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking SIGTERM/SIGINT")?;

    let tun = tun::Tun::create(&opts.interface).with_context(|| format!("creating TUN device {}", opts.interface))?;
    {
        let mut nl = dataplane::Netlink::new().context("opening netlink")?;
        nl.set_mtu(&opts.interface, opts.mtu)
            .with_context(|| format!("setting MTU {} on {}", opts.mtu, opts.interface))?;
        for addr in &opts.addresses {
            nl.add_addr(&opts.interface, *addr).with_context(|| format!("adding {addr} to {}", opts.interface))?;
        }
        nl.set_up(&opts.interface).with_context(|| format!("setting {} up", opts.interface))?;
    }
    let gw = device::Gateway::new(tun).context("binding the UDP socket")?;
    gw.set_mtu(opts.mtu);
    if let Some(update) = &initial {
        gw.apply(update).map_err(|e| anyhow::anyhow!("applying the configuration: {e}"))?;
    }
    let uapi = uapi_server::UapiSocket::bind(Path::new(uapi_server::SOCKET_DIR), &opts.interface)
        .context("creating the UAPI socket")?;
    uapi.serve(std::sync::Arc::clone(&gw)).context("starting the UAPI server")?;
    if let Some(addr) = opts.metrics {
        let bound =
            metrics::serve(addr, std::sync::Arc::clone(&gw)).with_context(|| format!("serving metrics on {addr}"))?;
        tracing::info!(%bound, "metrics listening");
    }
    gw.start().context("starting the packet loops")?;
    tracing::info!(
        interface = %opts.interface,
        listen_port = gw.status().listen_port,
        public_key = ?gw.public_key().map(|k| k.to_base64()),
        socket = %uapi.path().display(),
        "slice-gateway running"
    );

    let signal = signals.wait().context("waiting for signals")?;
    tracing::info!(?signal, "shutting down");
    gw.stop();
    drop(uapi);
    Ok(())
}
