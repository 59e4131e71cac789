//! Section 5: pod to pod across clusters. A lab made for the purpose (prefix [`LAB`]) with a WAN
//! and two clusters of one node each (`c1`, `c2`), slice `bench` across them built by
//! [`crate::gateway::build_slice_across_clusters`] (a gateway pod per cluster running
//! `slice-gateway`, UDP port forward on each edge), one member pod per cluster.
//!
//! Two paths, side by side in one run:
//!
//! - slice: pod (c1) `slice0` → router namespace → gateway pod → `slice-gateway` (WireGuard) →
//!   edge NAT → WAN → edge port forward → gateway pod (c2) → `slice-gateway` → router → pod;
//! - reference: the two gateway pods over the same WAN without a tunnel: from c1's gateway pod
//!   to c2's public address, TCP forwarded by c2's edge to its gateway pod's `eth0`.
//!
//! Per path: `iperf3 -t T` one stream and `-P 4` (BBR, the namespaces' default), `ping -c N -i
//! 0.2` and the time of N TCP connects (SYN → SYN-ACK: one round trip over the whole path, also
//! through the port forward, where ICMP ends at the edge). CPU of both `slice-gateway`
//! processes over the slice path's iperf3 runs, per Gbit carried.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::process::check_interrupted;
use crate::gateway::{SliceAcrossOptions, build_slice_across_clusters};
use crate::{Lab, LabSlice, Pod, PodSpec};

/// The section's lab prefix.
pub(crate) const LAB: &str = "snbx";
const GW_NS: &str = "slicenet-gw";
const MEMBER_NS: &str = "bench";
const SLICE_VNI: u32 = 4243;
const SLICE_SUBNET: &str = "10.81.0.0/16";
const IPERF_PORT: u16 = 5201;
/// c2's public TCP port forwarded to the iperf3 server in its gateway pod.
const WAN_IPERF_PORT: u16 = 35201;
const CONNECT_PORT: u16 = 5301;
/// c2's public TCP port forwarded to the connect listener in its gateway pod.
const WAN_CONNECT_PORT: u16 = 35301;

/// Markers around this section in `docs/benchmarks.md` (the section rewrites only itself).
pub(crate) const BEGIN: &str = "<!-- slicenet-bench across: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench across: end -->";

/// One path's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathFigures {
    /// Gbit/s received: one stream, four streams.
    pub(crate) gbits: [f64; 2],
    pub(crate) retransmits: [u64; 2],
    /// ping min/avg/max/mdev in ms.
    pub(crate) rtt: [f64; 4],
    /// TCP connect time min/avg/max in ms.
    pub(crate) connect: [f64; 3],
    /// MTU of the sending interface.
    pub(crate) mtu: u32,
    /// CPU s of the two `slice-gateway` processes per Gbit (one stream, four streams).
    pub(crate) cpu_per_gbit: [Option<f64>; 2],
}

#[derive(Debug, Clone, Default)]
pub(crate) struct AcrossSection {
    pub(crate) slice: PathFigures,
    pub(crate) wan: PathFigures,
    pub(crate) gateway_mtu: u32,
    pub(crate) congestion: String,
    pub(crate) seconds: u32,
    pub(crate) pings: u32,
}

fn mtu(pod: &Pod, ifname: &str) -> Result<u32> {
    let json = pod.exec_ok(&["ip", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&json).context("`ip -j link` output is not JSON")?;
    v[0]["mtu"].as_u64().map(|m| m as u32).context("no mtu in `ip -j link`")
}

fn ping(from: &Pod, to: Ipv4Addr, count: u32) -> Result<[f64; 4]> {
    let deadline = (f64::from(count) * 0.2 + 10.0).ceil().to_string();
    let out = from.exec_ok(&["ping", "-q", "-c", &count.to_string(), "-i", "0.2", "-w", &deadline, &to.to_string()])?;
    super::path::parse_ping(&out).with_context(|| format!("cannot read ping's summary: {out}"))
}

fn wait_reachable(from: &Pod, to: Ipv4Addr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !from.exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])?.status.success() {
        if Instant::now() > deadline {
            bail!("{to} is not reachable from pod {} within {timeout:?}", from.lab_name());
        }
        check_interrupted()?;
    }
    Ok(())
}

/// Runs `f` on a thread that entered the network namespace at `netns`.
fn spawn_in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let file = std::fs::File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    }))
}

/// A TCP listener in a pod accepting and closing connections until dropped.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Acceptor {
    fn start(pod: &Pod, port: u16) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = spawn_in_netns(&pod.netns_path, move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).context("bind")?;
            listener.set_nonblocking(true)?;
            let _ = tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })?;
        let mut acceptor = Self { stop, thread: Some(thread) };
        if rx.recv_timeout(Duration::from_secs(5)).is_err() {
            let why = acceptor.finish().err().map_or_else(|| "no reason".to_owned(), |e| format!("{e:#}"));
            bail!("the connect listener in {} did not start: {why}", pod.lab_name());
        }
        Ok(acceptor)
    }

    fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("the connect listener panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// `count` TCP connects from `from` to `to`, 0.2 s apart: min/avg/max ms.
fn connects(from: &Pod, to: SocketAddrV4, count: u32) -> Result<[f64; 3]> {
    let handle = spawn_in_netns(&from.netns_path, move || {
        let mut ms = Vec::new();
        for i in 0..count + 2 {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(3))
                .with_context(|| format!("connect to {to}"))?;
            let d = t.elapsed().as_secs_f64() * 1e3;
            drop(s);
            // The first two warm up (ARP, conntrack, the gateways' handshake).
            if i >= 2 {
                ms.push(d);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(ms)
    })?;
    let ms = handle.join().map_err(|_| anyhow!("the connect thread panicked"))??;
    let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ms.iter().copied().fold(0.0, f64::max);
    Ok([min, ms.iter().sum::<f64>() / ms.len().max(1) as f64, max])
}

/// One iperf3 run from `client` to `to:port` against a one-off server in `server` on
/// [`IPERF_PORT`]: (Gbit/s received, retransmits, congestion, CPU s per Gbit of `pids`).
fn iperf(
    client: &Pod,
    server: &Pod,
    to: Ipv4Addr,
    port: u16,
    seconds: u32,
    streams: u32,
    pids: &[u32],
) -> Result<(f64, u64, String, Option<f64>)> {
    let port_s = IPERF_PORT.to_string();
    let mut srv = server.spawn(&["iperf3", "-s", "-1", "-p", &port_s])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss = server.exec_ok(&["ss", "-Hltn", &format!("sport = :{IPERF_PORT}")])?;
        if !ss.trim().is_empty() {
            break;
        }
        if !srv.is_running() || Instant::now() > deadline {
            bail!("the iperf3 server in {} does not listen: {}", server.lab_name(), srv.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let limit = (seconds + 20).to_string();
    let before = super::process::cpu_sum(pids.iter().copied());
    let out = client.exec(&[
        "timeout",
        "-k",
        "2",
        &limit,
        "iperf3",
        "-c",
        &to.to_string(),
        "-p",
        &port.to_string(),
        "-t",
        &seconds.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
    ])?;
    let after = super::process::cpu_sum(pids.iter().copied());
    let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!("iperf3 -J output is not JSON ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))
    })?;
    if let Some(error) = json["error"].as_str() {
        bail!("iperf3 to {to}:{port}: {error}");
    }
    let end = &json["end"];
    let gbits = end["sum_received"]["bits_per_second"].as_f64().context("iperf3: no end.sum_received")? / 1e9;
    let retransmits = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let congestion = end["sender_tcp_congestion"].as_str().unwrap_or("?").to_owned();
    let cpu = match (before, after) {
        (Some(b), Some(a)) if gbits > 0.0 && !pids.is_empty() => Some((a - b) / (gbits * f64::from(seconds))),
        _ => None,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((gbits, retransmits, congestion, cpu))
}

/// Runs section 5. The lab is torn down on every path (its `Drop` on error).
pub(crate) fn run(seconds: u32, pings: u32) -> Result<AcrossSection> {
    let t = Instant::now();
    let mut lab = Lab::new(LAB)?;
    lab.add_wan()?;
    lab.add_cluster("c1", 1)?;
    lab.add_cluster("c2", 1)?;
    let slice = LabSlice::new("bench", SLICE_VNI, SLICE_SUBNET, &[MEMBER_NS, GW_NS]);
    let options = SliceAcrossOptions::new(slice, GW_NS);
    let figures = {
        let across = build_slice_across_clusters(&lab, &options)?;
        eprintln!("slicenet-bench:   lab {LAB} and slice across c1, c2 up in {:.1} s", t.elapsed().as_secs_f64());
        measure(&lab, &across, seconds, pings)
    };
    let torn = lab.teardown();
    let figures = figures?;
    torn?;
    Ok(figures)
}

fn measure(lab: &Lab, across: &crate::gateway::SliceAcross, seconds: u32, pings: u32) -> Result<AcrossSection> {
    let client = lab.node("c1", "n1").run_pod(PodSpec::new(MEMBER_NS, "client"))?;
    let server = lab.node("c2", "n1").run_pod(PodSpec::new(MEMBER_NS, "server"))?;
    let (gw1, gw2) = (across.gateway("c1"), across.gateway("c2"));
    let pids: Vec<u32> = [gw1.pid(), gw2.pid()].into_iter().flatten().collect();
    let c2 = lab.cluster("c2");
    let public = c2.public_address().context("the lab has no WAN")?;
    c2.forward_tcp(WAN_IPERF_PORT, gw2.eth0, IPERF_PORT)?;
    c2.forward_tcp(WAN_CONNECT_PORT, gw2.eth0, CONNECT_PORT)?;
    let slice_ip = server.ipv4("slice0")?;
    wait_reachable(&client, slice_ip, Duration::from_secs(30))?;
    wait_reachable(&gw1.pod, public, Duration::from_secs(10))?;

    let mut s = AcrossSection {
        seconds,
        pings,
        gateway_mtu: across.options.mtu,
        slice: PathFigures { mtu: mtu(&client, "slice0")?, ..PathFigures::default() },
        wan: PathFigures { mtu: mtu(&gw1.pod, "eth0")?, ..PathFigures::default() },
        ..AcrossSection::default()
    };
    eprintln!("slicenet-bench:   ping ×{pings} over the slice ({slice_ip}) and the WAN ({public})");
    s.wan.rtt = ping(&gw1.pod, public, pings)?;
    check_interrupted()?;
    s.slice.rtt = ping(&client, slice_ip, pings)?;
    check_interrupted()?;
    {
        let _a = Acceptor::start(&gw2.pod, CONNECT_PORT)?;
        s.wan.connect = connects(&gw1.pod, SocketAddrV4::new(public, WAN_CONNECT_PORT), pings)?;
    }
    check_interrupted()?;
    {
        let _a = Acceptor::start(&server, CONNECT_PORT)?;
        s.slice.connect = connects(&client, SocketAddrV4::new(slice_ip, CONNECT_PORT), pings)?;
    }
    for (i, streams) in [1u32, 4].into_iter().enumerate() {
        check_interrupted()?;
        eprintln!("slicenet-bench:   iperf3 -P {streams} over the WAN ({public}:{WAN_IPERF_PORT}, {seconds} s)");
        let (g, r, _, _) = iperf(&gw1.pod, &gw2.pod, public, WAN_IPERF_PORT, seconds, streams, &[])?;
        (s.wan.gbits[i], s.wan.retransmits[i]) = (g, r);
        check_interrupted()?;
        eprintln!("slicenet-bench:   iperf3 -P {streams} over the slice ({slice_ip}, {seconds} s)");
        let (g, r, cc, cpu) = iperf(&client, &server, slice_ip, IPERF_PORT, seconds, streams, &pids)?;
        (s.slice.gbits[i], s.slice.retransmits[i], s.slice.cpu_per_gbit[i]) = (g, r, cpu);
        s.congestion = cc;
    }
    eprintln!(
        "slicenet-bench:   slice {:.2} / {:.2} Gbit/s, WAN {:.2} / {:.2} Gbit/s (1 / 4 streams)",
        s.slice.gbits[0], s.slice.gbits[1], s.wan.gbits[0], s.wan.gbits[1]
    );
    Ok(s)
}

fn cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |c| format!("{c:.2}"))
}

/// The markdown table with the ratios slice path / WAN path.
pub(crate) fn table(s: &AcrossSection) -> String {
    let mut t = format!(
        "### 5. Pod to pod across clusters (iperf3 -t {} BBR, 1 and 4 streams; ping -c {} -i 0.2; {} TCP connects)\n\n\
         | path | MTU | 1 stream Gbit/s | 4 streams Gbit/s | retransmits (1 / 4) | ping avg ms | \
         ping min / max / mdev ms | TCP connect avg ms (min / max) | CPU s per Gbit of both slice-gateways (1 / 4) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |\n",
        s.seconds, s.pings, s.pings
    );
    let line = |what: &str, mtu: String, p: &PathFigures, cpus: String| {
        format!(
            "| {what} | {mtu} | {:.2} | {:.2} | {} / {} | {:.3} | {:.3} / {:.3} / {:.3} | {:.3} ({:.3} / {:.3}) | {cpus} |\n",
            p.gbits[0],
            p.gbits[1],
            p.retransmits[0],
            p.retransmits[1],
            p.rtt[1],
            p.rtt[0],
            p.rtt[2],
            p.rtt[3],
            p.connect[1],
            p.connect[0],
            p.connect[2],
        )
    };
    t += &line(
        "WAN without a tunnel: gateway pod (c1) `eth0` → edge NAT → WAN → edge TCP port forward → gateway pod (c2) \
         (ping: to c2's public address, ends at its edge)",
        s.wan.mtu.to_string(),
        &s.wan,
        "—".to_owned(),
    );
    t += &line(
        "slice: pod (c1) `slice0` → router → gateway pod → `slice-gateway` → edge NAT → WAN → edge UDP port \
         forward → gateway pod (c2) → `slice-gateway` → router → pod",
        format!("{} (gateway TUN {})", s.slice.mtu, s.gateway_mtu),
        &s.slice,
        format!("{} / {}", cpu(s.slice.cpu_per_gbit[0]), cpu(s.slice.cpu_per_gbit[1])),
    );
    let r = |a: f64, b: f64| if b > 0.0 { format!("{:.2}×", a / b) } else { "—".to_owned() };
    let _ = writeln!(
        t,
        "| **slice / WAN** | | {} | {} | | {} | | {} | |",
        r(s.slice.gbits[0], s.wan.gbits[0]),
        r(s.slice.gbits[1], s.wan.gbits[1]),
        r(s.slice.rtt[1], s.wan.rtt[1]),
        r(s.slice.connect[1], s.wan.connect[1]),
    );
    let _ = write!(
        t,
        "\nAdded by the slice path: {:+.3} ms TCP connect round trip (the like-for-like figure: both go pod to \
         pod through the far edge's port forward), {:+.3} ms ping (the WAN ping ends at c2's edge, so the difference \
         also counts c2's edge → node → gateway pod leg). The slice path carries {:.0} % (1 stream) and \
         {:.0} % (4 streams) of the unencrypted WAN path.\n\n\
         Congestion control: {}. Everything (both clusters, the WAN, both gateways, iperf3) shares this \
         machine's CPUs, so these are CPU-cost figures: compare the ratios. CPU s per Gbit: utime + stime of \
         both `slice-gateway` processes over the slice path's iperf3 run divided by the Gbit it carried \
         (kernel softirq work is not counted).\n",
        s.slice.connect[1] - s.wan.connect[1],
        s.slice.rtt[1] - s.wan.rtt[1],
        100.0 * s.slice.gbits[0] / s.wan.gbits[0].max(1e-9),
        100.0 * s.slice.gbits[1] / s.wan.gbits[1].max(1e-9),
        s.congestion
    );
    t
}

/// The section as it goes into `docs/benchmarks.md`, between [`BEGIN`] and [`END`].
pub(crate) fn doc_section(s: &AcrossSection) -> String {
    let mut r = format!("{BEGIN}\n## 5. Pod to pod across clusters\n\n");
    let _ = write!(
        r,
        "A lab made for this section (prefix `{LAB}`): a WAN bridge and two clusters of one node each, \
         `c1` and `c2`, each behind its own edge namespace (public addresses on the WAN, NAT outbound, \
         port forwards inbound). Slice `bench` (VNI {SLICE_VNI}, {SLICE_SUBNET}) is built across both by \
         `e2e::gateway::build_slice_across_clusters`: real node agents, a gateway pod per cluster (namespace \
         `{GW_NS}`, through containerd's CRI and `slice-cni`) running `slice-gateway` (release build, TUN \
         MTU {}), each edge forwarding UDP 31820 to its gateway pod. One member pod per cluster (namespace \
         `{MEMBER_NS}`). The reference is the same WAN without a tunnel: from c1's gateway pod to c2's \
         public address, with TCP ports {WAN_IPERF_PORT} and {WAN_CONNECT_PORT} forwarded by c2's edge to \
         an `iperf3 -s -1` and a plain accept loop in c2's gateway pod. iperf3: `-t {}` with one stream, \
         then `-P 4`, alternating between the paths (WAN first); the table shows received Gbit/s. TCP \
         connect: {} `connect()`s 0.2 s apart after two warm-ups, timed to the SYN-ACK.\n\n",
        s.gateway_mtu, s.seconds, s.pings
    );
    r += super::body(&table(s));
    r += &format!("{END}\n");
    r
}
