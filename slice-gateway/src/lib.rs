//! slicenet's slice gateway: one userspace WireGuard interface per slice per cluster, built on
//! boringtun's sans-IO `noise::Tunn` with our own TUN/UDP loops ([`device`]), configured in the
//! `wg(8)` format (`slice_api::wireguard`, turned into a change by [`config`]) and through the
//! WireGuard UAPI socket ([`uapi`], [`uapi_server`]); every change goes through the sans-IO peer
//! state ([`peers`]); observed through Prometheus metrics ([`metrics`]).

pub mod allowed_ips;
pub mod config;
pub mod device;
pub mod metrics;
pub mod multipath;
pub mod offload;
pub mod pathprobe;
pub mod peers;
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
    /// Route every peer's AllowedIPs into the TUN device (as wg-quick does), following changes.
    pub routes: bool,
    /// Handshake messages per second before cookies are required ([`device::DEFAULT_HANDSHAKE_RATE_LIMIT`]).
    pub handshake_rate_limit: u64,
    /// Links to forward IPv4 between, with the TUN device: per-link forwarding is turned on for
    /// each and for the TUN device (CAP_NET_ADMIN; no namespace-wide `ip_forward` needed).
    pub forward: Vec<String>,
    /// The DSCP class of the outer packets (the slice's QoS profile).
    pub dscp: Option<slice_api::qos::DscpClass>,
    /// Peer groups with this probe interval (ms); `None`: wg(8)'s one holder per prefix.
    pub multipath_probe_ms: Option<u64>,
    /// How long to drain on SIGTERM/SIGINT before exiting (ms; 0: exit at once).
    pub drain_ms: u64,
}

/// How often the configuration file is checked for changes when inotify has said nothing.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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

/// Where the network namespace's IPv6 forwarding switch is.
pub const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Makes sure IPv6 forwarding is on in this network namespace (`switch`: its sysctl file): on
/// already (a pod's `net.ipv6.conf.all.forwarding` sysctl), or turned on here where the file
/// can be written (a gateway outside a container runtime's read-only `/proc/sys`).
///
/// # Errors
/// When it is off and cannot be turned on, saying what the pod needs.
pub fn ensure_ipv6_forwarding(switch: &Path) -> anyhow::Result<()> {
    let on = |text: &str| text.trim() == "1";
    let now = std::fs::read_to_string(switch).with_context(|| format!("reading {}", switch.display()))?;
    if on(&now) {
        return Ok(());
    }
    match std::fs::write(switch, "1") {
        Ok(()) => Ok(()),
        Err(e) => anyhow::bail!(
            "IPv6 forwarding is off in this network namespace and {} cannot be written ({e}): the slice interface \
             has an IPv6 address, so the pod needs the sysctl net.ipv6.conf.all.forwarding=1 (the worker sets it \
             on the gateway pods of slices with an IPv6 subnet; the kubelets must allow it: \
             --allowed-unsafe-sysctls=net.ipv6.conf.all.forwarding)",
            switch.display()
        ),
    }
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
        if !opts.forward.is_empty() {
            for link in std::iter::once(&opts.interface).chain(&opts.forward) {
                nl.enable_ipv4_forwarding(link)
                    .with_context(|| format!("turning IPv4 forwarding on for {link} (--forward)"))?;
            }
            // A slice with an IPv6 subnet gives the slice interface a global IPv6 address: its
            // packets need IPv6 forwarding, which Linux has per network namespace only.
            let mut v6 = false;
            for link in &opts.forward {
                let addrs = nl.addrs(link).with_context(|| format!("listing the addresses of {link} (--forward)"))?;
                v6 |= addrs.iter().any(|a| matches!(a, ipnet::IpNet::V6(n) if !n.addr().is_unicast_link_local()));
            }
            if v6 {
                ensure_ipv6_forwarding(Path::new(IPV6_FORWARDING))?;
            }
        }
    }
    let gw = device::Gateway::new(tun).context("binding the UDP socket")?;
    gw.set_mtu(opts.mtu);
    gw.set_handshake_rate_limit(opts.handshake_rate_limit);
    if let Some(dscp) = opts.dscp {
        gw.set_dscp(dscp).with_context(|| format!("setting DSCP {dscp} on the UDP socket"))?;
    }
    if let Some(ms) = opts.multipath_probe_ms {
        gw.set_multipath(std::time::Duration::from_millis(ms));
    }
    if opts.routes {
        gw.set_on_change(route_hook(&opts.interface));
    }
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
    if let Some(path) = &opts.config {
        watch_config(path.clone(), std::sync::Arc::clone(&gw)).context("starting the configuration watcher")?;
    }
    tracing::info!(
        interface = %opts.interface,
        listen_port = gw.status().listen_port,
        public_key = ?gw.public_key().map(|k| k.to_base64()),
        socket = %uapi.path().display(),
        "slice-gateway running"
    );

    let signal = signals.wait().context("waiting for signals")?;
    let drain = opts.drain_ms;
    if drain > 0 {
        // The node agents first (`/healthz` 503), then the peers' gateways (silence); packets
        // keep flowing both ways until each side has moved them. A second signal waits too:
        // SIGKILL is the way to cut a drain short.
        tracing::info!(?signal, drain_ms = drain, "draining: /healthz answers 503, then the peers hear nothing");
        gw.start_draining();
        std::thread::sleep(std::time::Duration::from_millis(drain / 2));
        gw.mute_peers();
        std::thread::sleep(std::time::Duration::from_millis(drain - drain / 2));
    }
    tracing::info!(?signal, "shutting down");
    gw.stop();
    drop(uapi);
    Ok(())
}

/// Keeps the kernel's routes into `interface` equal to the peers' AllowedIPs: adds what is new,
/// removes what it added before and is gone. Failures are logged (the next change retries).
fn route_hook(interface: &str) -> device::AllowedIpsHook {
    let interface = interface.to_owned();
    let installed = std::sync::Mutex::new(std::collections::BTreeSet::<IpNet>::new());
    Box::new(move |nets: &[IpNet]| {
        let mut installed = installed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let wanted: std::collections::BTreeSet<IpNet> = nets.iter().map(IpNet::trunc).collect();
        let mut nl = match dataplane::Netlink::new() {
            Ok(nl) => nl,
            Err(e) => {
                tracing::warn!(error = %e, "routes: cannot open netlink");
                return;
            }
        };
        let route = |dst: IpNet| dataplane::netlink::Route {
            dst,
            gateway: None,
            dev: Some(interface.clone()),
            src: None,
            onlink: false,
            scope_link: true,
        };
        for gone in installed.difference(&wanted).copied().collect::<Vec<_>>() {
            match nl.del_route(&route(gone)) {
                Ok(_) => {
                    installed.remove(&gone);
                }
                Err(e) => tracing::warn!(route = %gone, error = %e, "routes: cannot remove"),
            }
        }
        for new in wanted.difference(&installed).copied().collect::<Vec<_>>() {
            match nl.replace_route(&route(new)) {
                Ok(()) => {
                    installed.insert(new);
                }
                Err(e) => tracing::warn!(route = %new, error = %e, "routes: cannot add"),
            }
        }
    })
}

/// The identity of a file's content as far as a reload cares: follows symlinks (a mounted
/// Secret changes by swapping a symlink), so a new inode, size or mtime is a change.
fn file_stamp(path: &Path) -> Option<(u64, u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

/// Re-reads `path` when it changed and applies it as `wg setconf` would (peers not in it are
/// removed; unchanged peers keep their sessions). A file that does not load is logged and the
/// running configuration stays.
///
/// The change is noticed at once through inotify on the file's directory (a mounted Secret
/// changes by a rename of its `..data` link there; an editor or the lab renames a new file into
/// place), and at the latest after [`RELOAD_INTERVAL`], which also covers a directory inotify
/// cannot watch.
fn watch_config(path: PathBuf, gw: std::sync::Arc<device::Gateway>) -> std::io::Result<()> {
    let mut last = file_stamp(&path);
    let changes = ConfigChanges::watch(&path);
    std::thread::Builder::new().name("config-watch".into()).spawn(move || {
        loop {
            changes.wait(RELOAD_INTERVAL);
            let now = file_stamp(&path);
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            match load_config(&path) {
                Ok(update) => match gw.apply(&update) {
                    Ok(()) => tracing::info!(path = %path.display(), "configuration reloaded"),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "reloaded configuration refused"),
                },
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "configuration not reloaded"),
            }
        }
    })?;
    Ok(())
}

/// Events in the configuration file's directory (none when inotify is not available there).
struct ConfigChanges(Option<nix::sys::inotify::Inotify>);

impl ConfigChanges {
    fn watch(path: &Path) -> Self {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let flags = AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .and_then(|i| i.add_watch(dir, flags).map(|_| i));
        match inotify {
            Ok(i) => Self(Some(i)),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no inotify on the configuration's directory: polling only");
                Self(None)
            }
        }
    }

    /// Returns after an event in the directory or after `timeout`, whichever comes first.
    fn wait(&self, timeout: std::time::Duration) {
        use std::os::fd::AsFd;
        let Some(inotify) = &self.0 else {
            std::thread::sleep(timeout);
            return;
        };
        let mut fds = [nix::poll::PollFd::new(inotify.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        if let Ok(n) = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms))
            && n > 0
        {
            // Drain the events; the file's stamp decides whether it changed.
            while inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn ipv6_forwarding_is_kept_turned_on_or_named_as_what_the_pod_needs() {
        let dir = std::env::temp_dir().join(format!("sg-fwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let switch = dir.join("forwarding");
        std::fs::write(&switch, "1\n").unwrap();
        ensure_ipv6_forwarding(&switch).unwrap();
        std::fs::write(&switch, "0\n").unwrap();
        ensure_ipv6_forwarding(&switch).unwrap();
        assert_eq!(std::fs::read_to_string(&switch).unwrap(), "1", "turned on where it can be written");
        // A switch that is off and cannot be written: a read-only sysctl (mode 0444, not even
        // root writes it), as /proc/sys is in a container.
        let e = format!("{:#}", ensure_ipv6_forwarding(Path::new("/proc/sys/fs/file-nr")).unwrap_err());
        assert!(e.contains("the pod needs the sysctl net.ipv6.conf.all.forwarding=1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use super::*;

    /// A file renamed into the directory ends the wait through inotify, long before the
    /// (deliberately huge) timeout would.
    #[test]
    fn a_renamed_configuration_wakes_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.conf");
        std::fs::write(&path, "old").unwrap();
        let changes = ConfigChanges::watch(&path);
        assert!(changes.0.is_some(), "inotify works on a temporary directory");
        let tmp = dir.path().join("next");
        std::fs::write(&tmp, "new").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let t = std::time::Instant::now();
        changes.wait(std::time::Duration::from_secs(600));
        assert!(t.elapsed() < std::time::Duration::from_secs(300), "the wait ended by the event, not the timeout");
    }
}
