//! Section 13 of `slicenet-bench`: one gateway serving many peers (issue 14).
//!
//! A slice's gateway has every other member cluster of the slice as a WireGuard peer, so what it
//! does per packet must not grow with the number of peers. This section makes a star of
//! namespaces for the purpose — a hub (`bxpeer-h`) and up to [`MAX_PEERS`] peers
//! (`bxpeer-1` …), each joined by a veth to one bridge in `bxpeer-sw` (198.18.110.0/24, MTU
//! 1500) — and, for 1, 8 and 64 peers in turn, starts a tunnel process in the hub with that many
//! peers and one in each peer, waits until every peer answers through its tunnel (so every peer
//! of the hub has a live session), then measures from peer 1: the median RTT to the hub's tunnel
//! address, one TCP stream (iperf3), and the aggregate of [`SPREAD`] peers (or all, when fewer)
//! sending one stream each to the hub at once. The plain bridge (no tunnel) is measured the same
//! way first, as the limit. Each kind of tunnel is measured the same way: `slice-gateway` and,
//! when installed, `gotatun` (the best current competitor of section 4).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use slice_api::gateway::{self as gateway_cli, arg, flag};
use slice_api::wireguard::{WgConfig, WgInterface, WgPeer};

use super::place::{Daemon, Iperf, Place, ping, wait_reachable, wait_until};
use super::process::check_interrupted;
use super::tunnel::{Kind, have};

/// Start of the namespaces' names.
pub(crate) const PREFIX: &str = "bxpeer";
/// The peer counts measured.
pub(crate) const COUNTS: [usize; 3] = [1, 8, 64];
pub(crate) const MAX_PEERS: usize = 64;
/// How many peers send at once in the aggregate run.
pub(crate) const SPREAD: usize = 8;
/// The first iperf3 port in the hub (one per sending peer).
const IPERF_BASE: u16 = 5300;

/// Markers around this section in `docs/benchmarks.md`.
pub(crate) const BEGIN: &str = "<!-- slicenet-bench peers: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench peers: end -->";

/// The hub's underlay address; peer `i` (1-based) has `198.18.110.(10 + i)`.
const HUB_UNDER: Ipv4Addr = Ipv4Addr::new(198, 18, 110, 1);

fn peer_under(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 110, u8::try_from(10 + i).expect("at most 64 peers"))
}

/// The hub's tunnel address: `10.211.0.1/16`; peer `i` has `10.211.<i>.2/16`.
const HUB_TUNNEL: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);

fn peer_tunnel(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 211, u8::try_from(i).expect("at most 64 peers"), 2)
}

fn ns_hub() -> String {
    format!("{PREFIX}-h")
}

fn ns_peer(i: usize) -> String {
    format!("{PREFIX}-{i}")
}

fn ns_switch() -> String {
    format!("{PREFIX}-sw")
}

/// One row: a path with a number of peers configured.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeersRow {
    /// `plain bridge`, or the tunnel's key.
    pub(crate) path: String,
    /// Peers configured in the hub (0: no tunnel).
    pub(crate) peers: usize,
    pub(crate) rtt_median: f64,
    /// Gbit/s of one stream from peer 1.
    pub(crate) one: f64,
    /// Gbit/s summed over the peers sending at once, and how many they were.
    pub(crate) aggregate: f64,
    pub(crate) senders: usize,
    /// CPU seconds of the hub's tunnel process per Gbit over the aggregate run.
    pub(crate) hub_cpu_per_gbit: Option<f64>,
    /// Why it was not measured.
    pub(crate) skipped: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PeersSection {
    pub(crate) rows: Vec<PeersRow>,
    pub(crate) seconds: u32,
    pub(crate) pings: u32,
}

/// The namespaces of the section; deleted on drop (with everything in them).
struct Star {
    dir: tempfile::TempDir,
    names: Vec<String>,
}

impl Star {
    fn new() -> Result<Self> {
        let mut names = vec![ns_switch(), ns_hub()];
        names.extend((1..=MAX_PEERS).map(ns_peer));
        // Leftovers of a crashed run.
        for n in &names {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
        let star = Self { dir: tempfile::Builder::new().prefix("bxpeer").tempdir()?, names };
        let sw = ns_switch();
        let mut script = format!(
            "set -e; ip netns add {sw}; ip -n {sw} link set lo up; \
             ip -n {sw} link add br0 type bridge; ip -n {sw} link set br0 up\n"
        );
        let mut join = |ns: &str, port: &str, address: Ipv4Addr| {
            let _ = writeln!(
                script,
                "ip netns add {ns}; ip -n {ns} link set lo up; \
                 ip -n {ns} link add ul0 type veth peer name {port} netns {sw}; \
                 ip -n {sw} link set {port} master br0 up; \
                 ip -n {ns} addr add {address}/24 dev ul0; ip -n {ns} link set ul0 up"
            );
        };
        join(&ns_hub(), "ph", HUB_UNDER);
        for i in 1..=MAX_PEERS {
            join(&ns_peer(i), &format!("p{i}"), peer_under(i));
        }
        let out = Command::new("sh").arg("-c").arg(&script).output().context("making the star")?;
        if !out.status.success() {
            bail!("making the star of namespaces failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(star)
    }

    fn place<'a>(&'a self, name: &'a str) -> Place<'a> {
        Place::Netns { name, dir: self.dir.path() }
    }
}

impl Drop for Star {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
    }
}

/// A hub and its peers running; dropping it stops them and removes their UAPI sockets.
struct Running {
    hub: Daemon,
    peers: Vec<Daemon>,
    sockets: Vec<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.peers.clear();
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}

/// Starts `kind` in the hub with `n` peers and in peers 1..=n; waits until every peer answers
/// through its tunnel.
fn start(star: &Star, kind: Kind, n: usize) -> Result<Running> {
    let hub_ns = ns_hub();
    let port = kind.port();
    let hub_key = crate::gateway::keypair();
    let keys: Vec<_> = (0..n).map(|_| crate::gateway::keypair()).collect();
    let net = |a: Ipv4Addr, len: u8| IpNet::from(ipnet::Ipv4Net::new(a, len).expect("a prefix"));
    let hub_conf = WgConfig {
        interface: WgInterface { private_key: Some(hub_key.private), listen_port: Some(port), fwmark: None },
        peers: keys
            .iter()
            .enumerate()
            .map(|(i, k)| WgPeer {
                public_key: k.public,
                allowed_ips: vec![net(Ipv4Addr::new(10, 211, u8::try_from(i + 1).expect("≤ 64"), 0), 24)],
                endpoint: Some(std::net::SocketAddr::from((peer_under(i + 1), port))),
                ..WgPeer::default()
            })
            .collect(),
    };
    let peer_conf = |i: usize| WgConfig {
        interface: WgInterface { private_key: Some(keys[i - 1].private), listen_port: Some(port), fwmark: None },
        peers: vec![WgPeer {
            public_key: hub_key.public,
            allowed_ips: vec![net(Ipv4Addr::new(10, 211, 0, 0), 24)],
            endpoint: Some(std::net::SocketAddr::from((HUB_UNDER, port))),
            ..WgPeer::default()
        }],
    };
    let (hub, socket) = launch(star, kind, &hub_ns, "h", &hub_conf, HUB_TUNNEL)?;
    let mut running = Running { hub, peers: Vec::new(), sockets: vec![socket] };
    for i in 1..=n {
        let ns = ns_peer(i);
        let (d, socket) = launch(star, kind, &ns, &i.to_string(), &peer_conf(i), peer_tunnel(i))?;
        running.peers.push(d);
        running.sockets.push(socket);
    }
    for i in 1..=n {
        check_interrupted()?;
        let ns = ns_peer(i);
        wait_reachable(&star.place(&ns), HUB_TUNNEL, None, Duration::from_secs(60))
            .with_context(|| format!("{} with {n} peers: peer {i}", kind.key()))?;
    }
    Ok(running)
}

/// Starts one tunnel process of `kind` in `ns` with `conf` and `address`/16; the process and
/// its UAPI socket (removed with the socket's file by whoever drops them).
fn launch(
    star: &Star,
    kind: Kind,
    ns: &str,
    tag: &str,
    conf: &WgConfig,
    address: Ipv4Addr,
) -> Result<(Daemon, PathBuf)> {
    let place = star.place(ns);
    let ifname = format!("bxp{}{tag}", kind.code());
    let file = star.dir.path().join(format!("{ifname}.conf"));
    std::fs::write(&file, conf.render()).with_context(|| format!("cannot write {}", file.display()))?;
    // It holds a private key: the gateway refuses a file others can read.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    let file = file.to_str().context("path is not UTF-8")?.to_owned();
    let address = format!("{address}/16");
    let mtu = kind.mtu().to_string();
    let socket = gateway_cli::uapi_socket(&ifname);
    let mut daemon = if kind == Kind::SliceGateway {
        let bin = crate::bin_dir().join("slice-gateway");
        let bin = bin.to_str().context("path is not UTF-8")?.to_owned();
        let argv = [
            "env".to_owned(),
            "RUST_LOG=warn".to_owned(),
            bin,
            arg(flag::INTERFACE),
            ifname.clone(),
            arg(flag::CONFIG),
            file.clone(),
            arg(flag::ADDRESS),
            address.clone(),
            arg(flag::MTU),
            mtu.clone(),
        ];
        place.spawn(&argv.iter().map(String::as_str).collect::<Vec<_>>(), &ifname)?
    } else {
        let tool = kind.tool().context("a userspace WireGuard")?;
        let mut argv = vec![tool, "-f"];
        if kind != Kind::WireguardGo {
            argv.push("--disable-drop-privileges");
        }
        argv.push(&ifname);
        place.spawn(&argv, &ifname)?
    };
    if !wait_until(Duration::from_secs(20), || socket.exists()) || !daemon.running() {
        let _ = std::fs::remove_file(&socket);
        bail!("{} {ifname} did not start in {}: {}", kind.key(), place.label(), daemon.log_tail(4));
    }
    if kind != Kind::SliceGateway {
        let configured = place.exec_ok(&[
            "sh",
            "-c",
            &format!("wg setconf {ifname} {file} && {}", super::tunnel::link_up(&ifname, &mtu, &address)),
        ]);
        if let Err(e) = configured {
            drop(daemon);
            let _ = std::fs::remove_file(&socket);
            return Err(e);
        }
    }
    Ok((daemon, socket))
}

/// Measures from peer 1 (RTT, one stream) and from the first `senders` peers at once, to
/// `to` in the hub; `hub_pid`: the hub's tunnel process, for its CPU.
fn measure(
    star: &Star,
    row: &mut PeersRow,
    to: Ipv4Addr,
    senders: usize,
    hub_pid: Option<u32>,
    seconds: u32,
    pings: u32,
) -> Result<()> {
    let (hub, first) = (ns_hub(), ns_peer(1));
    let (hub, first) = (star.place(&hub), star.place(&first));
    row.rtt_median = ping(&first, to, None, pings)?.1;
    fn iperf<'a>(client: Place<'a>, server: Place<'a>, to: Ipv4Addr, i: usize) -> Iperf<'a> {
        let port = IPERF_BASE + u16::try_from(i).expect("few senders");
        Iperf { client, server, to, port, listen: port, bind: None }
    }
    check_interrupted()?;
    row.one = iperf(first, hub, to, 1).run(seconds, 1, &[])?.gbits;
    check_interrupted()?;
    let names: Vec<String> = (1..=senders).map(ns_peer).collect();
    let pids: Vec<u32> = hub_pid.into_iter().collect();
    let before = super::process::cpu_sum(pids.iter().copied());
    let results: Vec<Result<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let run = iperf(star.place(ns), hub, to, i + 1);
                scope.spawn(move || run.run(seconds, 1, &[]).map(|r| r.gbits))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("iperf3 thread panicked"))))
            .collect()
    });
    let after = super::process::cpu_sum(pids.iter().copied());
    row.aggregate = results.into_iter().sum::<Result<f64>>()?;
    row.senders = senders;
    row.hub_cpu_per_gbit = match (before, after) {
        (Some(b), Some(a)) if row.aggregate > 0.0 => Some((a - b) / (row.aggregate * f64::from(seconds))),
        _ => None,
    };
    eprintln!(
        "slicenet-bench:   {} with {} peers: RTT median {:.3} ms, one stream {:.2} Gbit/s, {} senders {:.2} Gbit/s",
        row.path, row.peers, row.rtt_median, row.one, row.senders, row.aggregate
    );
    Ok(())
}

/// Runs the section.
pub(crate) fn run(seconds: u32, pings: u32) -> Result<PeersSection> {
    let star = Star::new()?;
    let mut section = PeersSection { seconds, pings, ..PeersSection::default() };
    let mut plain = PeersRow { path: "plain bridge (the limit)".into(), ..PeersRow::default() };
    eprintln!("slicenet-bench:   plain bridge …");
    wait_reachable(&star.place(&ns_peer(1)), HUB_UNDER, None, Duration::from_secs(20))?;
    measure(&star, &mut plain, HUB_UNDER, SPREAD, None, seconds, pings)?;
    section.rows.push(plain);
    for kind in [Kind::SliceGateway, Kind::Gotatun] {
        for n in COUNTS {
            check_interrupted()?;
            let mut row = PeersRow { path: kind.key().to_owned(), peers: n, ..PeersRow::default() };
            if let Some(tool) = kind.tool().filter(|t| !have(t)) {
                row.skipped = Some(format!("`{tool}` is not installed"));
                section.rows.push(row);
                continue;
            }
            eprintln!("slicenet-bench:   {} with {n} peers …", kind.key());
            let measured = start(&star, kind, n).and_then(|running| {
                let pid = running.hub.pid();
                measure(&star, &mut row, HUB_TUNNEL, n.min(SPREAD), Some(pid), seconds, pings)
            });
            if let Err(e) = measured {
                eprintln!("slicenet-bench:   {} with {n} peers: {e:#}", kind.key());
                row.skipped = Some(format!("failed: {e:#}"));
            }
            section.rows.push(row);
        }
    }
    Ok(section)
}

fn cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |c| format!("{c:.2}"))
}

/// The markdown table of the section with its heading, the ratios and the goal.
pub(crate) fn table(s: &PeersSection) -> String {
    let mut t = format!(
        "### 13. One gateway, many peers (iperf3 -t {} one stream per sender; ping -c {} -i 0.2)\n\n\
         | path | peers in the hub | RTT median ms | added RTT ms | one stream Gbit/s | senders | \
         aggregate Gbit/s | hub CPU s per Gbit |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        s.seconds, s.pings
    );
    let base = s.rows.first().filter(|r| r.skipped.is_none() && r.peers == 0);
    for r in &s.rows {
        let peers = if r.peers == 0 { "—".to_owned() } else { r.peers.to_string() };
        if let Some(why) = &r.skipped {
            let _ = writeln!(t, "| {} | {peers} | — | — | — | — | — | — ({why}) |", r.path);
            continue;
        }
        let added = base
            .filter(|_| r.peers > 0)
            .map_or_else(|| "—".to_owned(), |b| format!("{:.3}", r.rtt_median - b.rtt_median));
        let _ = writeln!(
            t,
            "| {} | {peers} | {:.3} | {added} | {:.2} | {} | {:.2} | {} |",
            r.path,
            r.rtt_median,
            r.one,
            r.senders,
            r.aggregate,
            cpu(r.hub_cpu_per_gbit)
        );
    }
    let find = |path: &str, n: usize| s.rows.iter().find(|r| r.path == path && r.peers == n && r.skipped.is_none());
    t += "\n";
    for path in [Kind::SliceGateway.key(), Kind::Gotatun.key()] {
        if let (Some(one), Some(many)) = (find(path, 1), find(path, MAX_PEERS)) {
            let _ = writeln!(
                t,
                "- `{path}` with {MAX_PEERS} peers / with 1 peer: one stream {:.2}×, aggregate {:.2}×, RTT median \
                 {:+.3} ms.",
                many.one / one.one.max(1e-9),
                many.aggregate / one.aggregate.max(1e-9),
                many.rtt_median - one.rtt_median
            );
        }
    }
    for n in COUNTS {
        if let (Some(ours), Some(theirs)) = (find(Kind::SliceGateway.key(), n), find(Kind::Gotatun.key(), n)) {
            let _ = writeln!(
                t,
                "- {n} peers, `slice-gateway` / `gotatun`: one stream {:.2}×, aggregate {:.2}×.",
                ours.one / theirs.one.max(1e-9),
                ours.aggregate / theirs.aggregate.max(1e-9)
            );
        }
    }
    if let Some(b) = base {
        for n in COUNTS {
            if let Some(o) = find(Kind::SliceGateway.key(), n) {
                let _ = writeln!(
                    t,
                    "- `slice-gateway`, {n} peers: {:.0} % of the plain bridge with one stream, {:.0} % in aggregate.",
                    100.0 * o.one / b.one.max(1e-9),
                    100.0 * o.aggregate / b.aggregate.max(1e-9)
                );
            }
        }
    }
    t
}

/// The section as it goes into `docs/benchmarks.md`, between [`BEGIN`] and [`END`].
pub(crate) fn doc_section(s: &PeersSection, command: &str) -> String {
    let mut r = format!("{BEGIN}\n## 13. One gateway, many peers (issue 14)\n\n");
    let _ = write!(
        r,
        "A star of namespaces made for this section: a hub (`{PREFIX}-h`) and {MAX_PEERS} peers \
         (`{PREFIX}-1` … `{PREFIX}-{MAX_PEERS}`), each joined by a veth to one bridge (`{PREFIX}-sw`, \
         198.18.110.0/24, MTU 1500). For 1, 8 and 64 peers in turn, one tunnel process runs in the hub with \
         that many peers (each peer its own key, endpoint and /24 of allowed IPs) and one in each of those \
         peers; every peer pings the hub through its tunnel before anything is measured, so every peer of \
         the hub has a live session. Measured from peer 1: the median RTT to the hub's tunnel address and one \
         iperf3 stream; then up to {SPREAD} peers send one stream each at once (aggregate). All processes \
         share this machine's two CPUs: with 8 senders, 9 tunnel processes and 16 iperf3 processes compete \
         for them, so the aggregate is a CPU-cost figure — compare the ratios in one run. {command}\n\n"
    );
    r += super::body(&table(s));
    r += &format!("{END}\n");
    r
}
