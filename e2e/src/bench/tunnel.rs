//! Section 4: tunnels side by side over one veth between two namespaces made for the purpose
//! (`sntun-a`, `sntun-b`, underlay 198.18.100.1/24 ↔ 198.18.100.2/24, MTU 1500): plain veth
//! (the limit), `slice-gateway` ↔ `slice-gateway`, `wireguard-go` ↔ `wireguard-go` (Debian's,
//! configured with `wg setconf`), OpenVPN UDP with AES-256-GCM and with KubeSlice's gateway
//! settings (AES-256-CBC + SHA256, MTU 1300). One tunnel runs at a time (started, measured,
//! stopped), so the tunnels do not share the CPUs with each other.
//!
//! Per tunnel: `ping -c N -i 0.2`, `iperf3 -t T` one stream and `-P 4` (BBR, the namespaces'
//! default), and the CPU time (utime + stime from `/proc/PID/stat`) of both tunnel processes
//! over each iperf3 run, divided by the Gbit/s it carried.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::process::check_interrupted;

const NS_A: &str = "sntun-a";
const NS_B: &str = "sntun-b";
const UNDER_A: &str = "198.18.100.1";
const UNDER_B: &str = "198.18.100.2";

/// Markers around this section in `docs/benchmarks.md` (the section rewrites only itself).
pub(crate) const BEGIN: &str = "<!-- slicenet-bench tunnel: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench tunnel: end -->";

/// One tunnel's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelFigures {
    pub(crate) name: String,
    pub(crate) mtu: u32,
    /// Gbit/s received: one stream, four streams.
    pub(crate) gbits: [f64; 2],
    pub(crate) retransmits: [u64; 2],
    /// CPU seconds of the tunnel processes per Gbit carried (one stream, four streams).
    pub(crate) cpu_per_gbit: [Option<f64>; 2],
    /// ping min/avg/max/mdev in ms.
    pub(crate) rtt: [f64; 4],
    /// Why it was not measured.
    pub(crate) skipped: Option<String>,
    /// Whether it is a competitor (counts for "best competitor").
    pub(crate) competitor: bool,
    pub(crate) ours: bool,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct TunnelSection {
    pub(crate) rows: Vec<TunnelFigures>,
    pub(crate) congestion: String,
    pub(crate) seconds: u32,
    pub(crate) pings: u32,
    pub(crate) versions: Vec<String>,
}

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("bash").arg("-c").arg(cmd).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("`{cmd}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns(ns: &str, cmd: &str) -> Result<String> {
    sh(&format!("ip netns exec {ns} bash -c '{}'", cmd.replace('\'', r"'\''")))
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The two namespaces and their veth; deleted on drop (with everything in them).
struct Pair {
    dir: tempfile::TempDir,
}

impl Pair {
    fn new() -> Result<Self> {
        // Leftovers of a crashed run.
        for n in [NS_A, NS_B] {
            let _ = Command::new("ip").args(["netns", "del", n]).stderr(Stdio::null()).status();
        }
        let pair = Self { dir: tempfile::Builder::new().prefix("sntun").tempdir()? };
        sh(&format!(
            "ip netns add {NS_A} && ip netns add {NS_B} && \
             ip -n {NS_A} link add ul0 type veth peer name ul0 netns {NS_B} && \
             ip -n {NS_A} addr add {UNDER_A}/24 dev ul0 && ip -n {NS_B} addr add {UNDER_B}/24 dev ul0 && \
             ip -n {NS_A} link set ul0 up && ip -n {NS_B} link set ul0 up && \
             ip -n {NS_A} link set lo up && ip -n {NS_B} link set lo up"
        ))?;
        Ok(pair)
    }

    fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts `argv` in namespace `netns` (the process itself, not a wrapper: `ip netns exec`
    /// execs it, so the PID is the tunnel's).
    fn spawn(&self, netns: &str, argv: &[&str], name: &str, env: &[(&str, &str)]) -> Result<Proc> {
        let log = std::fs::File::create(self.log(name))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { child, log: self.log(name) })
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for n in [NS_A, NS_B] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A process we started; SIGTERM then SIGKILL by its PID on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            if !wait_until(Duration::from_secs(3), || matches!(self.child.try_wait(), Ok(Some(_)))) {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

/// One iperf3 run from A to B's `to`: (Gbit/s received, retransmits, congestion, CPU s per Gbit).
fn iperf(pair: &Pair, to: &str, seconds: u32, streams: u32, pids: &[i32]) -> Result<(f64, u64, String, Option<f64>)> {
    let server = pair.spawn(NS_B, &["iperf3", "-s", "-1", "-B", to], "iperf3-server", &[])?;
    if !wait_until(Duration::from_secs(5), || ns(NS_B, &format!("ss -ltn | grep -q '{to}:5201'")).is_ok()) {
        bail!("iperf3 server did not listen: {}", server.log_text());
    }
    let before = super::process::cpu_sum(pids.iter().map(|p| p.unsigned_abs()));
    let out = ns(NS_A, &format!("timeout {} iperf3 -c {to} -t {seconds} -P {streams} -J", seconds + 30))?;
    let after = super::process::cpu_sum(pids.iter().map(|p| p.unsigned_abs()));
    drop(server);
    let json: Value = serde_json::from_str(&out).context("iperf3 -J output is not JSON")?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &json["end"];
    let gbits = end["sum_received"]["bits_per_second"].as_f64().context("no sum_received")? / 1e9;
    let retr = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let cc = end["sender_tcp_congestion"].as_str().unwrap_or("?").to_owned();
    let cpu = match (before, after) {
        // CPU seconds per Gbit carried: CPU over the run / (Gbit/s × seconds).
        (Some(b), Some(a)) if gbits > 0.0 && !pids.is_empty() => Some((a - b) / (gbits * f64::from(seconds))),
        _ => None,
    };
    Ok((gbits, retr, cc, cpu))
}

fn ping(to: &str, count: u32) -> Result<[f64; 4]> {
    let out = ns(NS_A, &format!("ping -q -c {count} -i 0.2 -w {} {to}", count / 5 + 10))?;
    super::path::parse_ping(&out).with_context(|| format!("cannot read ping's summary: {out}"))
}

fn measure(pair: &Pair, f: &mut TunnelFigures, to: &str, pids: &[i32], seconds: u32, pings: u32) -> Result<String> {
    if !wait_until(Duration::from_secs(20), || ns(NS_A, &format!("ping -c 1 -W 1 {to}")).is_ok()) {
        bail!("{to} not reachable through {}", f.name);
    }
    f.rtt = ping(to, pings)?;
    let (g1, r1, cc, c1) = iperf(pair, to, seconds, 1, pids)?;
    check_interrupted()?;
    let (g4, r4, _, c4) = iperf(pair, to, seconds, 4, pids)?;
    f.gbits = [g1, g4];
    f.retransmits = [r1, r4];
    f.cpu_per_gbit = [c1, c4];
    eprintln!(
        "slicenet-bench:   {}: {g1:.2} / {g4:.2} Gbit/s (1 / 4 streams), RTT {:.3} ms, CPU s/Gbit {:?}",
        f.name, f.rtt[1], f.cpu_per_gbit
    );
    Ok(cc)
}

fn keypair() -> Result<(String, String)> {
    let private = sh("wg genkey")?.trim().to_owned();
    let public = sh(&format!("echo {private} | wg pubkey"))?.trim().to_owned();
    Ok((private, public))
}

fn wg_conf(private: &str, peer_public: &str, peer_overlay: &str, endpoint: &str) -> String {
    format!(
        "[Interface]\nPrivateKey = {private}\nListenPort = 51820\n\n[Peer]\nPublicKey = {peer_public}\n\
         AllowedIPs = {peer_overlay}/32\nEndpoint = {endpoint}:51820\n"
    )
}

fn socket(ifname: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{ifname}.sock"))
}

fn slice_gateway(pair: &Pair, f: &mut TunnelFigures, seconds: u32, pings: u32) -> Result<String> {
    let bin = crate::bin_dir().join("slice-gateway");
    let bin = bin.to_str().context("binary path is not UTF-8")?;
    let (ka, kb) = (keypair()?, keypair()?);
    let ca = pair.file("sg-a.conf", &wg_conf(&ka.0, &kb.1, "10.201.0.2", UNDER_B))?;
    let cb = pair.file("sg-b.conf", &wg_conf(&kb.0, &ka.1, "10.201.0.1", UNDER_A))?;
    let mut procs = Vec::new();
    for (netns, ifname, conf, addr) in
        [(NS_A, "sntunsga", &ca, "10.201.0.1/24"), (NS_B, "sntunsgb", &cb, "10.201.0.2/24")]
    {
        let conf = conf.to_str().context("path")?;
        let p = pair.spawn(
            netns,
            &[bin, "--interface", ifname, "--config", conf, "--address", addr, "--mtu", "1420"],
            ifname,
            &[("RUST_LOG", "warn")],
        )?;
        if !wait_until(Duration::from_secs(10), || socket(ifname).exists()) {
            bail!("slice-gateway {ifname} did not start: {}", p.log_text());
        }
        procs.push(p);
    }
    let pids: Vec<i32> = procs.iter().map(Proc::pid).collect();
    measure(pair, f, "10.201.0.2", &pids, seconds, pings)
}

fn wireguard_go(pair: &Pair, f: &mut TunnelFigures, seconds: u32, pings: u32) -> Result<String> {
    let (ka, kb) = (keypair()?, keypair()?);
    let ca = pair.file("wg-a.conf", &wg_conf(&ka.0, &kb.1, "10.203.0.2", UNDER_B))?;
    let cb = pair.file("wg-b.conf", &wg_conf(&kb.0, &ka.1, "10.203.0.1", UNDER_A))?;
    let mut procs = Vec::new();
    for (netns, ifname, conf, addr) in
        [(NS_A, "sntunwga", &ca, "10.203.0.1/24"), (NS_B, "sntunwgb", &cb, "10.203.0.2/24")]
    {
        let p = pair.spawn(netns, &["wireguard-go", "-f", ifname], ifname, &[("WG_PROCESS_FOREGROUND", "1")])?;
        if !wait_until(Duration::from_secs(10), || socket(ifname).exists()) {
            bail!("wireguard-go {ifname} did not start: {}", p.log_text());
        }
        ns(
            netns,
            &format!(
                "wg setconf {ifname} {} && ip link set {ifname} mtu 1420 && ip addr add {addr} dev {ifname} && \
                 ip link set {ifname} up",
                conf.display()
            ),
        )?;
        procs.push(p);
    }
    let pids: Vec<i32> = procs.iter().map(Proc::pid).collect();
    let cc = measure(pair, f, "10.203.0.2", &pids, seconds, pings);
    for ifname in ["sntunwga", "sntunwgb"] {
        let _ = std::fs::remove_file(socket(ifname));
    }
    cc
}

/// A throw-away CA and one certificate both ends present (OpenVPN's TLS mode is the only one
/// that supports AES-256-GCM; static keys are deprecated in 2.6).
fn openvpn_pki(pair: &Pair) -> Result<()> {
    let d = pair.dir.path().display();
    sh(&format!(
        "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
         -out ca.pem -days 2 -subj /CN=sntun-ca 2>/dev/null && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout peer.key -out peer.csr \
         -subj /CN=sntun-peer 2>/dev/null && \
         openssl x509 -req -in peer.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out peer.pem -days 2 2>/dev/null"
    ))?;
    Ok(())
}

fn openvpn(pair: &Pair, f: &mut TunnelFigures, cbc: bool, seconds: u32, pings: u32) -> Result<String> {
    let d = pair.dir.path().to_str().context("path")?.to_owned();
    if !Path::new(&format!("{d}/peer.pem")).exists() {
        openvpn_pki(pair)?;
    }
    let (mtu, crypto, net) = if cbc {
        ("1300", ["--data-ciphers", "AES-256-CBC", "--cipher", "AES-256-CBC", "--auth", "SHA256"], "10.205.0")
    } else {
        ("1420", ["--data-ciphers", "AES-256-GCM", "--cipher", "AES-256-GCM", "--auth", "SHA256"], "10.204.0")
    };
    let mut procs = Vec::new();
    for (netns, ifname, local, remote, me, peer, role) in [
        (NS_A, "sntunova", UNDER_A, UNDER_B, format!("{net}.1"), format!("{net}.2"), "--tls-server"),
        (NS_B, "sntunovb", UNDER_B, UNDER_A, format!("{net}.2"), format!("{net}.1"), "--tls-client"),
    ] {
        let mut argv: Vec<&str> = vec![
            "openvpn",
            "--dev",
            ifname,
            "--dev-type",
            "tun",
            "--proto",
            "udp",
            "--local",
            local,
            "--lport",
            "1194",
            "--remote",
            remote,
            "--rport",
            "1194",
            "--ifconfig",
            &me,
            &peer,
            role,
            "--dh",
            "none",
            "--ca",
        ];
        let (ca, cert, key) = (format!("{d}/ca.pem"), format!("{d}/peer.pem"), format!("{d}/peer.key"));
        argv.extend([ca.as_str(), "--cert", cert.as_str(), "--key", key.as_str(), "--tun-mtu", mtu]);
        argv.extend(crypto);
        argv.extend(["--verb", "3", "--ping", "5", "--sndbuf", "4194304", "--rcvbuf", "4194304"]);
        procs.push(pair.spawn(netns, &argv, ifname, &[])?);
    }
    let to = format!("{net}.2");
    let reachable = wait_until(Duration::from_secs(30), || ns(NS_A, &format!("ping -c 1 -W 1 {to}")).is_ok());
    if !reachable {
        bail!("OpenVPN did not come up: {}", procs[0].log_text().lines().rev().take(5).collect::<Vec<_>>().join(" | "));
    }
    let pids: Vec<i32> = procs.iter().map(Proc::pid).collect();
    measure(pair, f, &to, &pids, seconds, pings)
}

/// Runs section 4.
pub(crate) fn run(seconds: u32, pings: u32) -> Result<TunnelSection> {
    let pair = Pair::new()?;
    let have = |tool: &str| sh(&format!("command -v {tool}")).is_ok();
    let mut section = TunnelSection { seconds, pings, ..TunnelSection::default() };
    let version = |cmd: &str| sh(cmd).map(|s| s.lines().next().unwrap_or("").trim().to_owned()).unwrap_or_default();
    section.versions.push(format!("wireguard-go {}", version("dpkg-query -W -f '${Version}' wireguard-go")));
    if have("openvpn") {
        section.versions.push(version("openvpn --version"));
    }
    section.versions.push(version("iperf3 --version"));

    type Runner = fn(&Pair, &mut TunnelFigures, u32, u32) -> Result<String>;
    let plain: Runner = |pair, f, s, p| measure(pair, f, UNDER_B, &[], s, p);
    let sg: Runner = slice_gateway;
    let wg: Runner = wireguard_go;
    let gcm: Runner = |pair, f, s, p| openvpn(pair, f, false, s, p);
    let cbc: Runner = |pair, f, s, p| openvpn(pair, f, true, s, p);
    /// (name, MTU, competitor, ours, runner, tool that must be installed)
    type Row = (&'static str, u32, bool, bool, Runner, Option<&'static str>);
    let rows: [Row; 5] = [
        ("plain veth (the limit)", 1500, false, false, plain, None),
        ("`slice-gateway` ↔ `slice-gateway`", 1420, false, true, sg, None),
        ("`wireguard-go` ↔ `wireguard-go` (Debian)", 1420, true, false, wg, Some("wireguard-go")),
        ("OpenVPN UDP AES-256-GCM", 1420, true, false, gcm, Some("openvpn")),
        ("OpenVPN UDP AES-256-CBC + SHA256 (KubeSlice)", 1300, true, false, cbc, Some("openvpn")),
    ];
    // SLICENET_BENCH_TUNNELS=veth,slice-gateway,wireguard-go,openvpn picks rows (default all).
    let pick = std::env::var("SLICENET_BENCH_TUNNELS").ok();
    let keys = ["veth", "slice-gateway", "wireguard-go", "openvpn", "openvpn"];
    for ((name, mtu, competitor, ours, runner, tool), key) in rows.into_iter().zip(keys) {
        check_interrupted()?;
        if pick.as_deref().is_some_and(|p| !p.split(',').any(|k| k.trim() == key)) {
            continue;
        }
        let mut f = TunnelFigures { name: name.to_owned(), mtu, competitor, ours, ..TunnelFigures::default() };
        if let Some(tool) = tool.filter(|t| !have(t)) {
            f.skipped = Some(format!("`{tool}` is not installed"));
        } else {
            eprintln!("slicenet-bench:   {name} …");
            match runner(&pair, &mut f, seconds, pings) {
                Ok(cc) => section.congestion = cc,
                Err(e) => {
                    eprintln!("slicenet-bench:   {name}: {e:#}");
                    f.skipped = Some(format!("failed: {e:#}"));
                }
            }
        }
        section.rows.push(f);
    }
    Ok(section)
}

fn cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |c| format!("{c:.2}"))
}

/// The markdown table with ratios slice-gateway / best competitor.
pub(crate) fn table(s: &TunnelSection) -> String {
    let mut t = format!(
        "### 4. Tunnels over one veth (iperf3 -t {} BBR, 1 and 4 streams; ping -c {} -i 0.2)\n\n\
         | path | MTU | 1 stream Gbit/s | 4 streams Gbit/s | retransmits (1 / 4) | RTT avg ms | added RTT ms | \
         CPU s per Gbit (1 / 4) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        s.seconds, s.pings
    );
    let base_rtt = s.rows.first().filter(|r| r.skipped.is_none()).map(|r| r.rtt[1]);
    for r in &s.rows {
        if let Some(why) = &r.skipped {
            let _ = writeln!(t, "| {} | {} | — | — | — | — | — | — ({why}) |", r.name, r.mtu);
            continue;
        }
        let added = base_rtt.map_or_else(|| "—".to_owned(), |b| format!("{:.3}", r.rtt[1] - b));
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} | {:.2} | {} / {} | {:.3} | {added} | {} / {} |",
            r.name,
            r.mtu,
            r.gbits[0],
            r.gbits[1],
            r.retransmits[0],
            r.retransmits[1],
            r.rtt[1],
            cpu(r.cpu_per_gbit[0]),
            cpu(r.cpu_per_gbit[1])
        );
    }
    let ours = s.rows.iter().find(|r| r.ours && r.skipped.is_none());
    let best = |i: usize| {
        s.rows.iter().filter(|r| r.competitor && r.skipped.is_none()).max_by(|a, b| a.gbits[i].total_cmp(&b.gbits[i]))
    };
    if let (Some(o), Some(b1), Some(b4)) = (ours, best(0), best(1)) {
        let _ = writeln!(
            t,
            "| **slice-gateway / best competitor** | | {:.2}× | {:.2}× | | | | |",
            o.gbits[0] / b1.gbits[0],
            o.gbits[1] / b4.gbits[1]
        );
        let limit = &s.rows[0];
        let goal = o.gbits[0] >= 4.0 * b1.gbits[0] && o.gbits[1] >= 4.0 * b4.gbits[1];
        let added = limit.skipped.is_none().then(|| o.rtt[1] - limit.rtt[1]);
        let _ = write!(
            t,
            "\nBest competitor: {} (1 stream), {} (4 streams). Goal ≥ 4× the best competitor: **{}**. \
             Added RTT over the plain veth: {} (goal < 0.2 ms: **{}**). slice-gateway reaches {:.0} % of the \
             plain veth with one stream.\n",
            b1.name,
            b4.name,
            if goal { "met" } else { "not met" },
            added.map_or_else(|| "?".to_owned(), |a| format!("{a:.3} ms")),
            if added.is_some_and(|a| a < 0.2) { "met" } else { "not met" },
            100.0 * o.gbits[0] / limit.gbits[0].max(1e-9),
        );
    }
    let _ = write!(
        t,
        "\nCongestion control: {}. Both ends, both tunnel processes and iperf3 share this machine's CPUs, \
         so these are CPU-cost figures: compare the ratios. CPU s per Gbit: utime + stime of both tunnel \
         processes over the iperf3 run divided by the Gbit it carried (kernel work done on their behalf in \
         softirq is not counted; plain veth has no process).\n",
        s.congestion
    );
    t
}

/// The section as it goes into `docs/benchmarks.md`, between [`BEGIN`] and [`END`].
pub(crate) fn doc_section(s: &TunnelSection, steps: &str) -> String {
    let mut r = format!("{BEGIN}\n## 4. Tunnels: slice-gateway against wireguard-go and OpenVPN\n\n");
    let _ = write!(
        r,
        "Two namespaces made for this section (`{NS_A}`, `{NS_B}`) joined by one veth (MTU 1500, \
         {UNDER_A} ↔ {UNDER_B}); one tunnel at a time is started between them, measured and stopped, \
         in the order of the table. The tunnels: `slice-gateway` (release build) with a wg(8) config \
         file; Debian's `wireguard-go` configured with `wg setconf`; OpenVPN in point-to-point TLS mode \
         (a throw-away CA made with `openssl`, `--dh none`, UDP, `--sndbuf/--rcvbuf 4 MiB`) with \
         AES-256-GCM and with KubeSlice's gateway settings (AES-256-CBC, `--auth SHA256`, `--tun-mtu 1300`). \
         Software: {}.\n\n",
        s.versions.join("; ")
    );
    r += super::body(&table(s));
    r += "\n";
    r += steps;
    r += &format!("{END}\n");
    r
}
