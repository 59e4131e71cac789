//! Section 3: pod to pod across two nodes, over the slice (`slice0`: pod → router namespace →
//! VXLAN over the underlay → router namespace → pod) and over the primary network (`eth0`:
//! pod → `cni0` → node → underlay → node → `cni0` → pod, routed by host routes this section
//! adds to the node namespaces when the lab has none, and removes afterwards).
//!
//! Throughput is one TCP stream of `iperf3` (`-s -1` in one pod, `-c … -t T -J` from the
//! other), with the namespace's default congestion control (BBR here), runs alternating
//! between the paths; latency is `ping -c N -i 0.2`.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::process::check_interrupted;
use crate::{Node, Pod, PodSpec};

/// One path's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathFigures {
    /// Gbit/s received, one value per run.
    pub(crate) gbits: Vec<f64>,
    pub(crate) retransmits: u64,
    pub(crate) congestion: String,
    /// ping min/avg/max/mdev in ms.
    pub(crate) rtt: [f64; 4],
    pub(crate) mtu: u32,
}

impl PathFigures {
    pub(crate) fn mean_gbits(&self) -> f64 {
        if self.gbits.is_empty() { 0.0 } else { self.gbits.iter().sum::<f64>() / self.gbits.len() as f64 }
    }
}

/// Section 3's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct PodToPod {
    pub(crate) slice: PathFigures,
    pub(crate) primary: PathFigures,
    /// Whether this section had to add node routes for the primary path.
    pub(crate) added_routes: bool,
}

/// How long one measurement may take beyond its nominal duration.
const SLACK: Duration = Duration::from_secs(20);
const IPERF_PORT: &str = "5201";

/// Host routes between two nodes' pod CIDRs over the underlay, removed on drop.
struct NodeRoutes<'a> {
    added: Vec<(&'a Node, String)>,
}

impl<'a> NodeRoutes<'a> {
    fn add(a: &'a Node, b: &'a Node) -> Result<Self> {
        let mut routes = Self { added: Vec::new() };
        for (node, peer) in [(a, b), (b, a)] {
            let dst = peer.pod_cidr().to_string();
            let via = peer.underlay_address().to_string();
            let out = node.exec(&["ip", "route", "add", &dst, "via", &via, "dev", "eth0"])?;
            if !out.status.success() {
                bail!(
                    "node {}: cannot add a route to {dst} via {via}: {}",
                    node.netns_name(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            routes.added.push((node, dst));
        }
        Ok(routes)
    }
}

impl Drop for NodeRoutes<'_> {
    fn drop(&mut self) {
        for (node, dst) in &self.added {
            if let Ok(out) = node.exec(&["ip", "route", "del", dst, "dev", "eth0"])
                && !out.status.success()
            {
                eprintln!(
                    "slicenet-bench: node {}: cannot remove the route to {dst}: {}",
                    node.netns_name(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
}

/// An iperf3 server in a pod, killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn reachable(from: &Pod, to: Ipv4Addr) -> Result<bool> {
    Ok(from.exec(&["ping", "-c", "1", "-W", "1", &to.to_string()])?.status.success())
}

fn mtu(pod: &Pod, ifname: &str) -> Result<u32> {
    let json = pod.exec_ok(&["ip", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&json).context("`ip -j link` output is not JSON")?;
    v[0]["mtu"].as_u64().map(|m| m as u32).context("no mtu in `ip -j link`")
}

/// `ping -c count -i 0.2` → min/avg/max/mdev.
fn ping(from: &Pod, to: Ipv4Addr, count: u32) -> Result<[f64; 4]> {
    let deadline = (f64::from(count) * 0.2 + 10.0).ceil().to_string();
    let out = from.exec_ok(&["ping", "-q", "-c", &count.to_string(), "-i", "0.2", "-w", &deadline, &to.to_string()])?;
    parse_ping(&out).with_context(|| format!("cannot read ping's summary: {out}"))
}

pub(crate) fn parse_ping(out: &str) -> Option<[f64; 4]> {
    let line = out.lines().find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))?;
    let values = line.split('=').nth(1)?.split_whitespace().next()?;
    let v: Vec<f64> = values.split('/').filter_map(|x| x.parse().ok()).collect();
    (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
}

/// One iperf3 run from `client` to `server` at `to`: (Gbit/s received, retransmits, congestion).
pub(crate) fn iperf(client: &Pod, server: &Pod, to: Ipv4Addr, seconds: u32) -> Result<(f64, u64, String)> {
    let mut command = crate::netns::command(&server.netns_path, &["iperf3", "-s", "-1", "-p", IPERF_PORT]);
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut srv = Server(command.spawn().context("cannot start the iperf3 server")?);
    // Wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ss = server.exec_ok(&["ss", "-Hltn", &format!("sport = :{IPERF_PORT}")])?;
        if !ss.trim().is_empty() {
            break;
        }
        if let Some(status) = srv.0.try_wait()? {
            bail!("the iperf3 server exited ({status}) before listening");
        }
        if Instant::now() > deadline {
            bail!("the iperf3 server does not listen after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let limit = (Duration::from_secs(u64::from(seconds)) + SLACK).as_secs().to_string();
    let out = client.exec(&[
        "timeout",
        "-k",
        "2",
        &limit,
        "iperf3",
        "-c",
        &to.to_string(),
        "-p",
        IPERF_PORT,
        "-t",
        &seconds.to_string(),
        "-J",
    ])?;
    let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!("iperf3 -J output is not JSON ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))
    })?;
    if let Some(error) = json["error"].as_str() {
        bail!("iperf3 to {to}: {error}");
    }
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"].as_f64().context("iperf3: no end.sum_received")?;
    let retransmits = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let congestion = end["sender_tcp_congestion"].as_str().unwrap_or("?").to_owned();
    // The one-off server exits by itself after the test.
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((bps / 1e9, retransmits, congestion))
}

/// Runs section 3 between a pod on `a` and a pod on `b` (nodes of one cluster whose agents run
/// the bench slice with namespace `bench` as a member).
pub(crate) fn run(a: &Node, b: &Node, iperf_seconds: u32, iperf_runs: usize, pings: u32) -> Result<PodToPod> {
    let client = a.run_pod(PodSpec::new(super::cni::MEMBER_NAMESPACE, "client"))?;
    let server = b.run_pod(PodSpec::new(super::cni::MEMBER_NAMESPACE, "server"))?;
    let result = measure(a, b, &client, &server, iperf_seconds, iperf_runs, pings);
    let removed = a.remove_pod(&client).and(b.remove_pod(&server));
    let figures = result?;
    removed?;
    Ok(figures)
}

fn measure(
    a: &Node,
    b: &Node,
    client: &Pod,
    server: &Pod,
    iperf_seconds: u32,
    iperf_runs: usize,
    pings: u32,
) -> Result<PodToPod> {
    let slice_ip = server.ipv4("slice0")?;
    let primary_ip = server.ipv4("eth0")?;
    let mut figures = PodToPod::default();
    let _routes = if reachable(client, primary_ip)? {
        None
    } else {
        let routes = NodeRoutes::add(a, b)?;
        figures.added_routes = true;
        if !reachable(client, primary_ip)? {
            bail!("{primary_ip} (eth0 of the server pod) is unreachable even with node routes");
        }
        Some(routes)
    };
    if !reachable(client, slice_ip)? {
        bail!("{slice_ip} (slice0 of the server pod) is unreachable from the client pod");
    }
    figures.slice.mtu = mtu(client, "slice0")?;
    figures.primary.mtu = mtu(client, "eth0")?;
    eprintln!("  ping ×{pings} over eth0 ({primary_ip}) and slice0 ({slice_ip})");
    figures.primary.rtt = ping(client, primary_ip, pings)?;
    check_interrupted()?;
    figures.slice.rtt = ping(client, slice_ip, pings)?;
    for run in 0..iperf_runs {
        for (path, to) in [(&mut figures.primary, primary_ip), (&mut figures.slice, slice_ip)] {
            check_interrupted()?;
            eprintln!("  iperf3 run {} to {to} ({iperf_seconds} s)", run + 1);
            let (gbits, retransmits, congestion) = iperf(client, server, to, iperf_seconds)?;
            path.gbits.push(gbits);
            path.retransmits += retransmits;
            path.congestion = congestion;
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ping_summary() {
        let out = "--- 10.0.0.2 ping statistics ---\n20 packets transmitted, 20 received, 0% packet loss, time 3800ms\n\
                   rtt min/avg/max/mdev = 0.041/0.062/0.101/0.014 ms\n";
        assert_eq!(parse_ping(out), Some([0.041, 0.062, 0.101, 0.014]));
        assert_eq!(parse_ping("nothing"), None);
    }
}
