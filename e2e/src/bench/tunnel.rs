//! The tunnels we compare and section 4.
//!
//! [`Kind`] starts one tunnel between two [`Place`]s ([`Ends`]): `slice-gateway` with a wg(8)
//! config file, Debian's `wireguard-go` configured with `wg setconf`, OpenVPN UDP in
//! point-to-point TLS mode with AES-256-GCM and with KubeSlice's gateway settings (AES-256-CBC +
//! SHA256, MTU 1300). Section 4 runs them over one veth between two namespaces made for the
//! purpose ([`NS_A`], [`NS_B`], 198.18.100.1/24 ↔ 198.18.100.2/24, MTU 1500); section 5
//! ([`super::across`]) runs the competitors between the gateway pods of two lab clusters, over
//! the lab's WAN. One tunnel runs at a time (started, measured, stopped), so the tunnels do not
//! share the CPUs with each other.
//!
//! Per path ([`measure`]): `ping -c N -i 0.2`, `iperf3 -t T` one stream and `-P 4` (BBR, the
//! namespaces' default), and the CPU time (utime + stime from `/proc/PID/stat`) of both tunnel
//! processes over each iperf3 run, divided by the Gbit it carried.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use slice_api::gateway::{self as gateway_cli, arg, flag};
use slice_api::wireguard::{WgConfig, WgInterface, WgPeer};

use super::place::{Daemon, Iperf, Place, ping, wait_reachable, wait_until};
use super::process::check_interrupted;

pub(crate) const NS_A: &str = "bxtun-a";
pub(crate) const NS_B: &str = "bxtun-b";
const UNDER_A: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
const UNDER_B: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 2);
/// The veth's IPv6 addresses (documentation prefix), for the gateway over IPv6.
const UNDER6_A: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
const UNDER6_B: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);
/// Marks the plan's row of `slice-gateway` over IPv6 (not passed to the gateway).
const OVER_IPV6: &str = "over-ipv6";
/// The port iperf3 listens on.
pub(crate) const IPERF_PORT: u16 = 5201;

/// Markers around this section in `docs/benchmarks.md` (the section rewrites only itself).
pub(crate) const BEGIN: &str = "<!-- slicenet-bench tunnel: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench tunnel: end -->";

/// One path's figures (a row of the tables of sections 4 and 5).
#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelFigures {
    pub(crate) name: String,
    /// MTU as the table shows it.
    pub(crate) mtu: String,
    /// Gbit/s received: one stream, four streams.
    pub(crate) gbits: [f64; 2],
    pub(crate) retransmits: [u64; 2],
    /// CPU seconds of the tunnel processes per Gbit carried (one stream, four streams).
    pub(crate) cpu_per_gbit: [Option<f64>; 2],
    /// ping min/avg/max/mdev in ms.
    pub(crate) rtt: [f64; 4],
    /// The median of the ping replies, in ms (robust to the outliers of a shared machine).
    pub(crate) rtt_median: f64,
    /// Why it was not measured.
    pub(crate) skipped: Option<String>,
    /// Whether it is a competitor (counts for "best competitor").
    pub(crate) competitor: bool,
    /// Whether it is the row the goals are about.
    pub(crate) ours: bool,
    /// Only the round trip was measured (no iperf3: a floor that holds the CPUs).
    pub(crate) rtt_only: bool,
    /// For such a row: the median round trip over the plain veth, pinged while it ran.
    pub(crate) veth_median_during: Option<f64>,
}

impl TunnelFigures {
    pub(crate) fn new(name: impl Into<String>, mtu: impl ToString) -> Self {
        Self { name: name.into(), mtu: mtu.to_string(), ..Self::default() }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelSection {
    pub(crate) rows: Vec<TunnelFigures>,
    pub(crate) congestion: String,
    pub(crate) seconds: u32,
    pub(crate) pings: u32,
    pub(crate) versions: Vec<String>,
    /// What boringtun's crypto alone costs here (none when it could not be measured).
    pub(crate) crypto: Option<super::crypto::CryptoFloor>,
}

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("`{cmd}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `tool` is on the PATH.
pub(crate) fn have(tool: &str) -> bool {
    sh(&format!("command -v {tool}")).is_ok()
}

/// The versions of the competitors and of iperf3, for the report.
pub(crate) fn versions() -> Vec<String> {
    let version = |cmd: &str| sh(cmd).map(|s| s.lines().next().unwrap_or("").trim().to_owned()).unwrap_or_default();
    let mut v = vec![format!("wireguard-go {}", version("dpkg-query -W -f '${Version}' wireguard-go"))];
    for tool in ["gotatun", "boringtun-cli"] {
        if have(tool) {
            v.push(format!("{tool} {}", version(&format!("{tool} --version"))));
        }
    }
    if have("openvpn") {
        v.push(version("openvpn --version"));
    }
    v.push(version("iperf3 --version"));
    v
}

/// Pings `to` from `client`, then runs iperf3 with one and with four streams (`iperf` says
/// where), filling `f`; returns the congestion control iperf3 reported.
pub(crate) fn measure(
    f: &mut TunnelFigures,
    iperf: &Iperf<'_>,
    pids: &[u32],
    seconds: u32,
    pings: u32,
) -> Result<String> {
    wait_reachable(&iperf.client, iperf.to, iperf.bind, Duration::from_secs(20))
        .with_context(|| format!("through {}", f.name))?;
    (f.rtt, f.rtt_median) = ping(&iperf.client, iperf.to, iperf.bind, pings)?;
    let mut cc = String::new();
    if f.rtt_only {
        eprintln!("slicenet-bench:   {}: RTT avg {:.3} median {:.3} ms", f.name, f.rtt[1], f.rtt_median);
        return Ok(cc);
    }
    for (i, streams) in [1u32, 4].into_iter().enumerate() {
        check_interrupted()?;
        let r = iperf.run(seconds, streams, pids)?;
        (f.gbits[i], f.retransmits[i], f.cpu_per_gbit[i], cc) = (r.gbits, r.retransmits, r.cpu_per_gbit, r.congestion);
    }
    eprintln!(
        "slicenet-bench:   {}: {:.2} / {:.2} Gbit/s (1 / 4 streams), RTT avg {:.3} median {:.3} ms, CPU s/Gbit {:?}",
        f.name, f.gbits[0], f.gbits[1], f.rtt[1], f.rtt_median, f.cpu_per_gbit
    );
    Ok(cc)
}

/// Starts `kind` between `ends` (`env`: `slice-gateway`'s switches), measures it through
/// `iperf(B's tunnel address)` ([`measure`]) and stops it. A tunnel that is not installed or
/// fails is recorded in `f.skipped` and the run goes on; the congestion control when measured.
pub(crate) fn measure_tunnel<'a>(
    f: &mut TunnelFigures,
    kind: Kind,
    ends: &Ends<'a>,
    env: &[(String, String)],
    iperf: impl Fn(Ipv4Addr) -> Iperf<'a>,
    seconds: u32,
    pings: u32,
) -> Option<String> {
    if let Some(tool) = kind.tool().filter(|t| !have(t)) {
        f.skipped = Some(format!("`{tool}` is not installed"));
        return None;
    }
    eprintln!("slicenet-bench:   {} …", f.name);
    let run = |f: &mut TunnelFigures| {
        let t = kind.start(ends, env)?;
        let cc = measure(f, &iperf(t.to), &t.pids(), seconds, pings)?;
        if f.rtt_only {
            // What the veth's own round trip is while the row's processes hold the vCPUs.
            if let std::net::IpAddr::V4(under) = (ends.reach_b)(kind.port())?.ip() {
                f.veth_median_during = Some(ping(&ends.a, under, None, pings)?.1);
            }
        }
        Ok::<_, anyhow::Error>(cc)
    };
    match run(f) {
        Ok(cc) => Some(cc),
        Err(e) => {
            eprintln!("slicenet-bench:   {}: {e:#}", f.name);
            f.skipped = Some(format!("failed: {e:#}"));
            None
        }
    }
}

/// The two ends of a tunnel: A initiates and runs the iperf3 client, B the server.
pub(crate) struct Ends<'a> {
    pub(crate) a: Place<'a>,
    pub(crate) b: Place<'a>,
    /// Where configuration files, keys and certificates go.
    pub(crate) dir: &'a Path,
    /// Start of the interface names (unique on the machine: the UAPI sockets share one
    /// directory).
    pub(crate) tag: &'a str,
    /// How A reaches B's UDP port (setting up a port forward where one is needed).
    pub(crate) reach_b: &'a dyn Fn(u16) -> Result<SocketAddr>,
    /// How B reaches A's UDP port; `None`: it cannot (A behind NAT), B learns A's address.
    pub(crate) reach_a: Option<&'a dyn Fn(u16) -> SocketAddr>,
}

impl Ends<'_> {
    fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }
}

/// A tunnel that runs; dropping it stops its processes and removes their UAPI sockets.
pub(crate) struct Running {
    daemons: Vec<Daemon>,
    /// B's and A's addresses inside the tunnel.
    pub(crate) to: Ipv4Addr,
    sockets: Vec<PathBuf>,
}

impl Running {
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.daemons.iter().map(Daemon::pid).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.daemons.clear();
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// The tunnels compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    SliceGateway,
    WireguardGo,
    /// Mullvad's maintained boringtun fork (`cargo install gotatun-cli`, binary `gotatun`).
    Gotatun,
    /// boringtun's own command line (`cargo install boringtun-cli`).
    BoringtunCli,
    OpenVpnGcm,
    OpenVpnCbc,
    /// Not a tunnel but its floor: `bench-null-relay`, TUN ↔ UDP without encryption, one packet
    /// per system call, sleeping in poll(2) between packets.
    NullRelay,
    /// The same relay polling without sleeping (ping only: it holds a vCPU per end).
    NullRelaySpin,
}

impl Kind {
    pub(crate) const ALL: [Kind; 8] = [
        Kind::SliceGateway,
        Kind::WireguardGo,
        Kind::Gotatun,
        Kind::BoringtunCli,
        Kind::OpenVpnGcm,
        Kind::OpenVpnCbc,
        Kind::NullRelay,
        Kind::NullRelaySpin,
    ];
    pub(crate) const COMPETITORS: [Kind; 5] =
        [Kind::WireguardGo, Kind::Gotatun, Kind::BoringtunCli, Kind::OpenVpnGcm, Kind::OpenVpnCbc];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::SliceGateway => "`slice-gateway` ↔ `slice-gateway`",
            Kind::WireguardGo => "`wireguard-go` ↔ `wireguard-go` (Debian's, 2022: no TUN offloads, no UDP GSO/GRO)",
            Kind::Gotatun => "`gotatun` ↔ `gotatun` (Mullvad's boringtun fork, crates.io)",
            Kind::BoringtunCli => "`boringtun-cli` ↔ `boringtun-cli` (crates.io)",
            Kind::OpenVpnGcm => "OpenVPN UDP AES-256-GCM",
            Kind::OpenVpnCbc => "OpenVPN UDP AES-256-CBC + SHA256 (KubeSlice)",
            Kind::NullRelay => {
                "*floor:* TUN ↔ UDP relay without encryption, one packet per system call, sleeping in poll(2) \
                 (`bench-null-relay`)"
            }
            Kind::NullRelaySpin => "*floor:* the same relay polling without sleeping (a vCPU per end; ping only)",
        }
    }

    /// Whether it is a floor row (the relay without encryption), not a tunnel.
    pub(crate) fn is_floor(self) -> bool {
        matches!(self, Kind::NullRelay | Kind::NullRelaySpin)
    }

    /// Its name in `SLICENET_BENCH_TUNNELS`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Kind::SliceGateway => "slice-gateway",
            Kind::WireguardGo => "wireguard-go",
            Kind::Gotatun => "gotatun",
            Kind::BoringtunCli => "boringtun-cli",
            Kind::OpenVpnGcm | Kind::OpenVpnCbc => "openvpn",
            Kind::NullRelay | Kind::NullRelaySpin => "null-relay",
        }
    }

    /// The program that must be installed.
    pub(crate) fn tool(self) -> Option<&'static str> {
        match self {
            Kind::SliceGateway | Kind::NullRelay | Kind::NullRelaySpin => None,
            Kind::WireguardGo => Some("wireguard-go"),
            Kind::Gotatun => Some("gotatun"),
            Kind::BoringtunCli => Some("boringtun-cli"),
            Kind::OpenVpnGcm | Kind::OpenVpnCbc => Some("openvpn"),
        }
    }

    pub(crate) fn mtu(self) -> u32 {
        if self == Kind::OpenVpnCbc { 1300 } else { 1420 }
    }

    /// The UDP port each end listens on.
    pub(crate) fn port(self) -> u16 {
        match self {
            Kind::SliceGateway => 51820,
            Kind::WireguardGo => 51821,
            Kind::Gotatun => 51822,
            Kind::BoringtunCli => 51823,
            Kind::OpenVpnGcm => 1194,
            Kind::OpenVpnCbc => 1195,
            Kind::NullRelay => 51824,
            Kind::NullRelaySpin => 51825,
        }
    }

    /// Tunnel addresses: `10.<net>.0.1` (A) and `.2` (B).
    fn net(self) -> u8 {
        match self {
            Kind::SliceGateway => 201,
            Kind::WireguardGo => 203,
            Kind::Gotatun => 206,
            Kind::BoringtunCli => 207,
            Kind::OpenVpnGcm => 204,
            Kind::OpenVpnCbc => 205,
            Kind::NullRelay => 208,
            Kind::NullRelaySpin => 209,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Kind::SliceGateway => "sg",
            Kind::WireguardGo => "wg",
            Kind::Gotatun => "gt",
            Kind::BoringtunCli => "bt",
            Kind::OpenVpnGcm => "og",
            Kind::OpenVpnCbc => "oc",
            Kind::NullRelay => "nr",
            Kind::NullRelaySpin => "ns",
        }
    }

    /// Starts the tunnel between `ends` and waits until B answers through it. `env` goes to
    /// `slice-gateway` (its measurement switches).
    pub(crate) fn start(self, ends: &Ends<'_>, env: &[(String, String)]) -> Result<Running> {
        let addr = |host: u8| Ipv4Addr::new(10, self.net(), 0, host);
        let mut running = Running { daemons: Vec::new(), to: addr(2), sockets: Vec::new() };
        match self {
            Kind::SliceGateway | Kind::WireguardGo | Kind::Gotatun | Kind::BoringtunCli => {
                self.start_wireguard(ends, env, &mut running)?;
            }
            Kind::OpenVpnGcm | Kind::OpenVpnCbc => self.start_openvpn(ends, &mut running)?,
            Kind::NullRelay | Kind::NullRelaySpin => self.start_null_relay(ends, &mut running)?,
        }
        if !wait_until(Duration::from_secs(30), || {
            ends.a.exec(&["ping", "-c", "1", "-W", "1", &addr(2).to_string()]).is_ok_and(|o| o.status.success())
        }) {
            let logs: Vec<String> = running.daemons.iter().map(|d| d.log_tail(4)).collect();
            bail!("{} did not come up: {}", self.name(), logs.join(" || "));
        }
        Ok(running)
    }

    /// `slice-gateway`, or a userspace WireGuard configured with `wg setconf` (`wireguard-go`,
    /// `gotatun`, `boringtun-cli`: each in the foreground, keeping root in the namespace).
    fn start_wireguard(self, ends: &Ends<'_>, env: &[(String, String)], running: &mut Running) -> Result<()> {
        let (ka, kb) = (crate::gateway::keypair(), crate::gateway::keypair());
        let port = self.port();
        let to_b = (ends.reach_b)(port)?;
        let to_a = ends.reach_a.map(|f| f(port));
        let net = self.net();
        let conf = |me: &crate::gateway::KeyPair, peer: &crate::gateway::KeyPair, host: u8, ep: Option<SocketAddr>| {
            WgConfig {
                interface: WgInterface { private_key: Some(me.private), listen_port: Some(port), fwmark: None },
                peers: vec![WgPeer {
                    public_key: peer.public,
                    allowed_ips: vec![IpNet::from(std::net::IpAddr::from(Ipv4Addr::new(10, net, 0, host)))],
                    endpoint: ep,
                    ..WgPeer::default()
                }],
            }
            .render()
        };
        let sides = [
            (ends.a, "a", ends.file(&format!("{}-a.conf", self.code()), &conf(&ka, &kb, 2, Some(to_b)))?, 1),
            (ends.b, "b", ends.file(&format!("{}-b.conf", self.code()), &conf(&kb, &ka, 1, to_a))?, 2),
        ];
        for (place, side, conf, host) in sides {
            let ifname = format!("{}{}{side}", ends.tag, self.code());
            let socket = gateway_cli::uapi_socket(&ifname);
            let conf = conf.to_str().context("path is not UTF-8")?.to_owned();
            let address = format!("10.{net}.0.{host}/24");
            let mtu = self.mtu().to_string();
            let daemon = if self == Kind::SliceGateway {
                let bin = crate::bin_dir().join("slice-gateway");
                let bin = bin.to_str().context("path is not UTF-8")?.to_owned();
                let mut argv: Vec<String> = vec!["env".into(), "RUST_LOG=warn".into()];
                argv.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
                argv.extend([bin, arg(flag::INTERFACE), ifname.clone(), arg(flag::CONFIG), conf.clone()]);
                argv.extend([arg(flag::ADDRESS), address.clone(), arg(flag::MTU), mtu.clone()]);
                place.spawn(&argv.iter().map(String::as_str).collect::<Vec<_>>(), &ifname)?
            } else {
                let tool = self.tool().context("a userspace WireGuard")?;
                let mut argv = vec![tool, "-f"];
                if self != Kind::WireguardGo {
                    argv.push("--disable-drop-privileges");
                }
                argv.push(&ifname);
                place.spawn(&argv, &ifname)?
            };
            running.sockets.push(socket.clone());
            running.daemons.push(daemon);
            let d = running.daemons.last_mut().expect("just pushed");
            if !wait_until(Duration::from_secs(10), || socket.exists()) || !d.running() {
                bail!("{} {ifname} did not start in {}: {}", self.key(), place.label(), d.log_tail(4));
            }
            if self != Kind::SliceGateway {
                place.exec_ok(&[
                    "sh",
                    "-c",
                    &format!("wg setconf {ifname} {conf} && {}", link_up(&ifname, &mtu, &address)),
                ])?;
            }
        }
        Ok(())
    }

    /// `bench-null-relay` at both ends, each sending to the other's veth address.
    fn start_null_relay(self, ends: &Ends<'_>, running: &mut Running) -> Result<()> {
        let port = self.port();
        let reach_a = ends.reach_a.context("the relay needs both ends reachable")?;
        let bin = crate::bin_dir().join("bench-null-relay");
        let bin = bin.to_str().context("path is not UTF-8")?.to_owned();
        let net = self.net();
        let sides = [(ends.a, "a", (ends.reach_b)(port)?, 1), (ends.b, "b", reach_a(port), 2)];
        for (place, side, peer, host) in sides {
            let ifname = format!("{}{}{side}", ends.tag, self.code());
            let (listen, peer) = (format!("0.0.0.0:{port}"), peer.to_string());
            let mut argv = vec![bin.as_str(), "--tun", &ifname, "--listen", &listen, "--peer", &peer];
            if self == Kind::NullRelaySpin {
                argv.push("--spin");
            }
            running.daemons.push(place.spawn(&argv, &ifname)?);
            let d = running.daemons.last_mut().expect("just pushed");
            if !wait_until(Duration::from_secs(10), || {
                place.exec(&["ip", "link", "show", &ifname]).is_ok_and(|o| o.status.success())
            }) || !d.running()
            {
                bail!("bench-null-relay {ifname} did not start in {}: {}", place.label(), d.log_tail(4));
            }
            place.exec_ok(&[
                "sh",
                "-c",
                &link_up(&ifname, &self.mtu().to_string(), &format!("10.{net}.0.{host}/24")),
            ])?;
        }
        Ok(())
    }

    /// OpenVPN point to point with TLS (its only mode with AES-256-GCM; static keys are
    /// deprecated in 2.6): A is the TLS client and knows B's address; B, the TLS server,
    /// knows A's where it can reach it and otherwise takes the first authenticated peer.
    fn start_openvpn(self, ends: &Ends<'_>, running: &mut Running) -> Result<()> {
        let d = ends.dir.to_str().context("path is not UTF-8")?;
        if !ends.dir.join("peer.pem").exists() {
            sh(&format!(
                "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
                 -out ca.pem -days 2 -subj /CN=bx-bench-ca 2>/dev/null && \
                 openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout peer.key -out peer.csr \
                 -subj /CN=bx-bench-peer 2>/dev/null && \
                 openssl x509 -req -in peer.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out peer.pem -days 2 \
                 2>/dev/null"
            ))?;
        }
        let cipher = if self == Kind::OpenVpnCbc { "AES-256-CBC" } else { "AES-256-GCM" };
        let port = self.port();
        let to_b = (ends.reach_b)(port)?;
        let to_a = ends.reach_a.map(|f| f(port));
        let net = self.net();
        let sides = [(ends.a, "a", 1, 2, Some(to_b), "--tls-client"), (ends.b, "b", 2, 1, to_a, "--tls-server")];
        for (place, side, me, peer, remote, role) in sides {
            let ifname = format!("{}{}{side}", ends.tag, self.code());
            let mut argv: Vec<String> = ["openvpn", "--dev", &ifname, "--dev-type", "tun", "--proto", "udp4"]
                .into_iter()
                .map(String::from)
                .collect();
            argv.extend(["--lport".into(), port.to_string()]);
            match remote {
                Some(r) => argv.extend(["--remote".into(), r.ip().to_string(), "--rport".into(), r.port().to_string()]),
                // No --remote: the first authenticated peer, wherever its NAT sends it from.
                None => argv.push("--float".into()),
            }
            argv.extend([
                "--ifconfig".into(),
                format!("10.{net}.0.{me}"),
                format!("10.{net}.0.{peer}"),
                role.into(),
                "--dh".into(),
                "none".into(),
                "--ca".into(),
                format!("{d}/ca.pem"),
                "--cert".into(),
                format!("{d}/peer.pem"),
                "--key".into(),
                format!("{d}/peer.key"),
                "--tun-mtu".into(),
                self.mtu().to_string(),
                "--data-ciphers".into(),
                cipher.into(),
                "--cipher".into(),
                cipher.into(),
                "--auth".into(),
                "SHA256".into(),
            ]);
            for a in ["--verb", "3", "--ping", "5", "--sndbuf", "4194304", "--rcvbuf", "4194304"] {
                argv.push(a.into());
            }
            running.daemons.push(place.spawn(&argv.iter().map(String::as_str).collect::<Vec<_>>(), &ifname)?);
        }
        Ok(())
    }
}

/// The shell commands that give a tunnel's device its MTU and address and set it up.
pub(crate) fn link_up(ifname: &str, mtu: &str, address: &str) -> String {
    format!("ip link set {ifname} mtu {mtu} && ip addr add {address} dev {ifname} && ip link set {ifname} up")
}

/// The two namespaces of section 4 and their veth; deleted on drop (with everything in them).
struct Pair {
    dir: tempfile::TempDir,
}

impl Pair {
    fn new() -> Result<Self> {
        // Leftovers of a crashed run.
        for n in [NS_A, NS_B] {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
        let pair = Self { dir: tempfile::Builder::new().prefix("bxtun").tempdir()? };
        sh(&format!(
            "ip netns add {NS_A} && ip netns add {NS_B} && \
             ip -n {NS_A} link add ul0 type veth peer name ul0 netns {NS_B} && \
             ip -n {NS_A} addr add {UNDER_A}/24 dev ul0 && ip -n {NS_B} addr add {UNDER_B}/24 dev ul0 && \
             ip -n {NS_A} -6 addr add {UNDER6_A}/64 dev ul0 nodad && ip -n {NS_B} -6 addr add {UNDER6_B}/64 dev ul0 nodad && \
             ip -n {NS_A} link set ul0 up && ip -n {NS_B} link set ul0 up && \
             ip -n {NS_A} link set lo up && ip -n {NS_B} link set lo up"
        ))?;
        Ok(pair)
    }

    fn place(&self, name: &'static str) -> Place<'_> {
        Place::Netns { name, dir: self.dir.path() }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in [NS_A, NS_B] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Extra `slice-gateway` rows with measurement switches, from `SLICENET_BENCH_GATEWAY_VARIANTS`
/// (`;`-separated, each a space-separated list of `VAR=value`), e.g.
/// `SLICE_GATEWAY_IDLE_POLL_US=0;SLICE_GATEWAY_IDLE_POLL_US=150`: before/after in one run.
fn gateway_variants() -> Vec<Vec<(String, String)>> {
    let Ok(spec) = std::env::var("SLICENET_BENCH_GATEWAY_VARIANTS") else { return Vec::new() };
    spec.split(';')
        .map(|v| {
            v.split_whitespace()
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .collect()
}

/// Runs section 4.
pub(crate) fn run(seconds: u32, pings: u32) -> Result<TunnelSection> {
    let pair = Pair::new()?;
    let crypto = super::crypto::measure().map_err(|e| eprintln!("slicenet-bench: the crypto floor: {e:#}")).ok();
    let mut section = TunnelSection { seconds, pings, versions: versions(), crypto, ..TunnelSection::default() };
    let reach_b = |port: u16| Ok(SocketAddr::from((UNDER_B, port)));
    let reach_a = |port: u16| SocketAddr::from((UNDER_A, port));
    let ends = Ends {
        a: pair.place(NS_A),
        b: pair.place(NS_B),
        dir: pair.dir.path(),
        tag: "bxt",
        reach_b: &reach_b,
        reach_a: Some(&reach_a),
    };
    let reach_b6 = |port: u16| Ok(SocketAddr::from((UNDER6_B, port)));
    let reach_a6 = |port: u16| SocketAddr::from((UNDER6_A, port));
    let ends6 = Ends { reach_b: &reach_b6, reach_a: Some(&reach_a6), tag: "bx6", ..ends };
    let iperf =
        |to: Ipv4Addr| Iperf { client: ends.a, server: ends.b, to, port: IPERF_PORT, listen: IPERF_PORT, bind: None };
    // SLICENET_BENCH_TUNNELS=veth,slice-gateway,wireguard-go,openvpn picks rows (default all).
    let pick = std::env::var("SLICENET_BENCH_TUNNELS").ok();
    let picked = |key: &str| pick.as_deref().is_none_or(|p| p.split(',').any(|k| k.trim() == key));

    // (kind, switches for slice-gateway, row name): the veth first, then every tunnel, then
    // the slice-gateway variants.
    /// A row to measure: the tunnel (none: the veth), `slice-gateway`'s switches, the name.
    type Planned = (Option<Kind>, Vec<(String, String)>, String);
    let mut plan: Vec<Planned> = vec![(None, Vec::new(), String::new())];
    plan.extend(Kind::ALL.into_iter().map(|k| (Some(k), Vec::new(), k.name().to_owned())));
    // The same gateway with WireGuard over IPv6 (endpoints on the veth's IPv6 addresses).
    plan.push((
        Some(Kind::SliceGateway),
        vec![(OVER_IPV6.to_owned(), "1".to_owned())],
        format!("{} over IPv6", Kind::SliceGateway.name()),
    ));
    for v in gateway_variants() {
        let label: Vec<String> = v.iter().map(|(k, val)| format!("{k}={val}")).collect();
        plan.push((Some(Kind::SliceGateway), v, format!("{} (`{}`)", Kind::SliceGateway.name(), label.join(" "))));
    }
    for (kind, env, name) in plan {
        check_interrupted()?;
        let Some(kind) = kind else {
            if picked("veth") {
                let mut f = TunnelFigures::new("plain veth (the limit)", 1500);
                eprintln!("slicenet-bench:   {} …", f.name);
                section.congestion = measure(&mut f, &iperf(UNDER_B), &[], seconds, pings)?;
                section.rows.push(f);
            }
            continue;
        };
        if !picked(kind.key()) {
            continue;
        }
        let mut f = TunnelFigures::new(name, kind.mtu());
        f.competitor = kind != Kind::SliceGateway && !kind.is_floor();
        f.rtt_only = kind == Kind::NullRelaySpin;
        f.ours = kind == Kind::SliceGateway && env.is_empty();
        // The IPv6 row is the gateway's own, not a switch of its: it changes the endpoints.
        let over_ipv6 = env.iter().any(|(k, _)| k == OVER_IPV6);
        let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k != OVER_IPV6).collect();
        let ends = if over_ipv6 { &ends6 } else { &ends };
        if let Some(cc) = measure_tunnel(&mut f, kind, ends, &env, iperf, seconds, pings) {
            section.congestion = cc;
        }
        section.rows.push(f);
    }
    Ok(section)
}

fn cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |c| format!("{c:.2}"))
}

/// The rows as a markdown table (added RTT over the first row, the limit), the ratio row
/// slice-gateway / best competitor, and one sentence on the goals (`limit` names the first row
/// in it).
pub(crate) fn comparison(rows: &[TunnelFigures], limit: &str) -> String {
    let mut t = String::from(
        "| path | MTU | 1 stream Gbit/s | 4 streams Gbit/s | retransmits (1 / 4) | RTT avg / median ms | \
         added RTT avg / median ms | CPU s per Gbit (1 / 4) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let base = rows.first().filter(|r| r.skipped.is_none() && !r.competitor && !r.ours);
    for r in rows {
        if let Some(why) = &r.skipped {
            let _ = writeln!(t, "| {} | {} | — | — | — | — | — | — ({why}) |", r.name, r.mtu);
            continue;
        }
        let added = base.map_or_else(
            || "—".to_owned(),
            |b| format!("{:.3} / {:.3}", r.rtt[1] - b.rtt[1], r.rtt_median - b.rtt_median),
        );
        if r.rtt_only {
            // Over the veth pinged while this row's processes ran, where it was.
            let added = r.veth_median_during.map_or(added, |d| format!("— / {:.3}", r.rtt_median - d));
            let _ = writeln!(
                t,
                "| {} | {} | — | — | — | {:.3} / {:.3} | {added} | — / — |",
                r.name, r.mtu, r.rtt[1], r.rtt_median
            );
            continue;
        }
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} | {:.2} | {} / {} | {:.3} / {:.3} | {added} | {} / {} |",
            r.name,
            r.mtu,
            r.gbits[0],
            r.gbits[1],
            r.retransmits[0],
            r.retransmits[1],
            r.rtt[1],
            r.rtt_median,
            cpu(r.cpu_per_gbit[0]),
            cpu(r.cpu_per_gbit[1])
        );
    }
    let ours = rows.iter().find(|r| r.ours && r.skipped.is_none());
    let best = |i: usize| {
        rows.iter().filter(|r| r.competitor && r.skipped.is_none()).max_by(|a, b| a.gbits[i].total_cmp(&b.gbits[i]))
    };
    if let (Some(o), Some(b1), Some(b4)) = (ours, best(0), best(1)) {
        let _ = writeln!(
            t,
            "| **slice-gateway / best competitor** | | {:.2}× | {:.2}× | | | | |",
            o.gbits[0] / b1.gbits[0],
            o.gbits[1] / b4.gbits[1]
        );
        let goal = o.gbits[0] >= 3.0 * b1.gbits[0] && o.gbits[1] >= 3.0 * b4.gbits[1];
        let _ = write!(
            t,
            "\nBest competitor: {} (1 stream), {} (4 streams). Goal ≥ 3× the best competitor: **{}**.",
            b1.name,
            b4.name,
            if goal { "met" } else { "not met" },
        );
        if let Some(b) = base {
            let (avg, median) = (o.rtt[1] - b.rtt[1], o.rtt_median - b.rtt_median);
            let share = [0, 1].map(|i| 100.0 * o.gbits[i] / b.gbits[i].max(1e-9));
            let _ = write!(
                t,
                " Added RTT of {} over the {limit}: {avg:.3} ms mean, {median:.3} ms median (goal < 0.1 ms \
                 median: **{}**). It carries {:.0} % (1 stream) and {:.0} % (4 streams) of the {limit} (goal \
                 ≥ 60 %: **{}**).",
                o.name,
                if median < 0.1 { "met" } else { "not met" },
                share[0],
                share[1],
                if share.iter().all(|s| *s >= 60.0) { "met" } else { "not met" },
            );
        }
        t += "\n";
    }
    t
}

/// What the relay without encryption (the floor rows) says of the gateway's added RTT; empty
/// when they were not measured.
fn floor_text(rows: &[TunnelFigures]) -> String {
    let measured = |kind: Kind| rows.iter().find(|r| r.name == kind.name() && r.skipped.is_none());
    let (Some(base), Some(ours), Some(relay)) = (
        rows.first().filter(|r| r.skipped.is_none() && !r.competitor && !r.ours),
        rows.iter().find(|r| r.ours),
        measured(Kind::NullRelay),
    ) else {
        return String::new();
    };
    let added = |r: &TunnelFigures| r.rtt_median - base.rtt_median;
    let mut t = format!(
        "\nThe floor of the round trip: the relay without encryption, which does nothing a tunnel could \
         leave out (a TUN read and a `sendto` one way, a `recvfrom` and a TUN write the other, one thread \
         per end sleeping in poll(2)), adds {:.3} ms (median) to the plain veth's round trip in this run; \
         `slice-gateway` adds {:.3} ms ({:.2}× the relay's).",
        added(relay),
        added(ours),
        added(ours) / added(relay).max(1e-9),
    );
    if let Some(spin) = measured(Kind::NullRelaySpin) {
        let during = spin.veth_median_during.unwrap_or(base.rtt_median);
        let _ = write!(
            t,
            " Polling without sleeping (both vCPUs busy), the same relay's median round trip is {:.3} ms against \
             {during:.3} ms over the plain veth pinged while it spun: {:.3} ms added once no thread sleeps, the \
             system calls and the hops through TUN alone.",
            spin.rtt_median,
            spin.rtt_median - during
        );
    }
    t + "\n"
}

/// The markdown table of section 4 with its heading.
pub(crate) fn table(s: &TunnelSection) -> String {
    let mut t = format!(
        "### 4. Tunnels over one veth (iperf3 -t {} BBR, 1 and 4 streams; ping -c {} -i 0.2)\n\n",
        s.seconds, s.pings
    );
    t += &comparison(&s.rows, "plain veth");
    t += &floor_text(&s.rows);
    let _ = write!(
        t,
        "\nCongestion control: {}. Both ends, both tunnel processes and iperf3 share this machine's CPUs, \
         so these are CPU-cost figures: compare the ratios. CPU s per Gbit: utime + stime of both tunnel \
         processes over the iperf3 run divided by the Gbit it carried (kernel work done on their behalf in \
         softirq is not counted; plain veth has no process).\n",
        s.congestion
    );
    if let Some(floor) = &s.crypto {
        let veth = s.rows.first().filter(|r| r.skipped.is_none() && !r.competitor && !r.ours).map(|r| r.gbits[0]);
        let ours = s.rows.iter().find(|r| r.ours && r.skipped.is_none()).and_then(|r| r.cpu_per_gbit[0]);
        t += "\n";
        t += &super::crypto::text(floor, veth, ours);
        t += "\n";
    }
    t
}

/// The section as it goes into `docs/benchmarks.md`, between [`BEGIN`] and [`END`].
pub(crate) fn doc_section(s: &TunnelSection, steps: &str, command: &str) -> String {
    let mut r = format!(
        "{BEGIN}\n## 4. Tunnels over one veth: slice-gateway against current userspace WireGuard and OpenVPN\n\n"
    );
    let _ = write!(
        r,
        "Two namespaces made for this section (`{NS_A}`, `{NS_B}`) joined by one veth (MTU 1500, \
         {UNDER_A} ↔ {UNDER_B}); one tunnel at a time is started between them, measured and stopped, \
         in the order of the table. The tunnels: `slice-gateway` (release build) with a wg(8) config \
         file; Debian's `wireguard-go` (0.0.20220316: it predates wireguard-go's TUN offloads and UDP \
         GSO/GRO of 2023, which roughly tripled its throughput, so it is not the wireguard-go a user would \
         deploy today); the current userspace WireGuard implementations on crates.io, installed by `make \
         bench` under `target/bench-tools` — `gotatun` (Mullvad's maintained boringtun fork, `gotatun-cli`) \
         (0.10.2: batches with `sendmmsg`/`recvmmsg`, no UDP GSO/GRO, no TUN offloads) and `boringtun-cli` \
         (0.7.1: one packet per system call, no offloads) — each in the foreground as root in the namespace \
         (`--disable-drop-privileges`) and configured with `wg setconf`; OpenVPN in point-to-point TLS mode \
         (a throw-away CA made with `openssl`, `--dh none`, UDP, `--sndbuf/--rcvbuf 4 MiB`) with \
         AES-256-GCM and with KubeSlice's gateway settings (AES-256-CBC, `--auth SHA256`, `--tun-mtu 1300`). \
         The row `slice-gateway` over IPv6 is the same gateway with WireGuard between the veth's IPv6 \
         addresses ({UNDER6_A} ↔ {UNDER6_B}: 80 bytes of outer headers instead of 60, the same 1420-byte \
         inner MTU, IPv4 inside) (issue 17). This is the tunnels alone, without the slice path or a WAN around them; section 5 has the \
         same comparison across clusters. Software: {}. {command}\n\n",
        s.versions.join("; ")
    );
    r += super::body(&table(s));
    r += "\n";
    r += steps;
    r += &format!("{END}\n");
    r
}
