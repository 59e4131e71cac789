//! Section 15: gateway replicas (issue 13), first at the gateways' level — namespaces and our
//! `slice-gateway` processes —, then in the full lab ([`run_lab`]): the workers' replicas, the
//! node agents' nexthop groups, pod to pod.
//!
//! Topology (lab [`LAB`]): a WAN bridge; `a` runs gateway A (the client's side, one replica);
//! `b1` and `b2` run the two replicas of the other cluster, peers of A that share that
//! cluster's prefix (a peer group, `--multipath-probe-ms`); `p` is a "pod" behind both, on a
//! veth to each replica, whose replies leave by a multipath route over both (L4 hash), as a
//! node's slice router would send them.
//!
//! - **Failover gap**: a ping at 100/s from A to an address both replicas answer on; the
//!   replica that carries it is SIGKILLed, the longest run of lost pings is the gap; the
//!   replica is restarted with its key and, once A sees it live, the next round starts. p50 and
//!   max over [`KILLS`] kills.
//! - **Throughput, 1 vs 2 replicas**: iperf3 from A's address to the pod `p`, 8 TCP streams,
//!   with A knowing one replica (and `p` routing by it alone), then both.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::process::check_interrupted;

pub(crate) const LAB: &str = "snbenchf";
pub(crate) const BEGIN: &str = "<!-- slicenet-bench failover: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench failover: end -->";
/// Kills measured for the failover gap.
pub(crate) const KILLS: usize = 10;
const PORT: u16 = 51820;
const PROBE_MS: &str = "200";
const ANYCAST: &str = "10.78.0.1";
const POD: &str = "10.78.0.9";
const CLIENT: &str = "10.77.0.1";
const WAIT: Duration = Duration::from_secs(60);
const METRICS: &str = "127.0.0.1:9586";

/// The full lab of the second part: clusters c1 and c2, two nodes each.
pub(crate) const LAB_FULL: &str = "snbenchg";
/// Pings per kill in the full lab (6 s at 100/s).
const LAB_PINGS: u32 = 600;

#[derive(Debug, Clone, Default)]
pub(crate) struct FailoverSection {
    /// Pings lost in a row at each kill (×10 ms).
    pub(crate) gaps: Vec<u64>,
    /// Gbit/s with one and with two replicas.
    pub(crate) gbits: [f64; 2],
    pub(crate) seconds: u32,
    /// The same in the full lab: pod to pod through the workers' StatefulSets and the node
    /// agents' nexthop groups.
    pub(crate) lab_gaps: Vec<u64>,
    pub(crate) lab_gbits: [f64; 2],
}

fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("`{cmd}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The namespaces and processes of one run; everything goes on drop, processes by PID.
struct Bed {
    tag: String,
    dir: tempfile::TempDir,
    procs: Vec<(String, Child)>,
    keys: Vec<(String, String)>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for (_, mut c) in self.procs.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in ["a", "b1", "b2", "p", "wan"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(n)]).status();
        }
        for i in 0..3 {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.ifname(i)));
        }
    }
}

impl Bed {
    fn ns(&self, n: &str) -> String {
        format!("{LAB}-{}-{n}", self.tag)
    }
    fn ifname(&self, i: usize) -> String {
        format!("sf{}g{i}", self.tag)
    }
    fn exec(&self, n: &str, cmd: &str) -> Result<String> {
        sh(&format!("ip netns exec {} sh -c '{}'", self.ns(n), cmd.replace('\'', r"'\''")))
    }

    fn new() -> Result<Self> {
        let tag = format!("{:x}", std::process::id() & 0xffff);
        let mut bed = Bed { tag, dir: tempfile::tempdir()?, procs: Vec::new(), keys: Vec::new() };
        for _ in 0..3 {
            let private = sh("wg genkey")?.trim().to_owned();
            let public = sh(&format!("echo {private} | wg pubkey"))?.trim().to_owned();
            bed.keys.push((private, public));
        }
        let w = bed.ns("wan");
        sh(&format!("ip netns add {w} && ip -n {w} link add br0 type bridge && ip -n {w} link set br0 up"))?;
        for (i, n) in ["a", "b1", "b2"].iter().enumerate() {
            let ns = bed.ns(n);
            sh(&format!(
                "ip netns add {ns} && ip -n {ns} link set lo up && \
                 ip -n {ns} link add wan0 type veth peer name w{i} netns {w} && ip -n {w} link set w{i} master br0 up && \
                 ip -n {ns} addr add 198.18.0.{}/24 dev wan0 && ip -n {ns} link set wan0 up",
                i + 1
            ))?;
        }
        // The pod behind both replicas, its replies over both (L4 hash).
        let p = bed.ns("p");
        sh(&format!("ip netns add {p} && ip -n {p} link set lo up && ip -n {p} addr add {POD}/32 dev lo"))?;
        for (i, n) in [(1, "b1"), (2, "b2")] {
            let b = bed.ns(n);
            sh(&format!(
                "ip -n {p} link add r{i} type veth peer name pod netns {b} && \
                 ip -n {p} addr add 10.78.{i}.2/30 dev r{i} && ip -n {p} link set r{i} up && \
                 ip -n {b} addr add 10.78.{i}.1/30 dev pod && ip -n {b} link set pod up && \
                 ip -n {b} route add {POD}/32 via 10.78.{i}.2 && \
                 ip netns exec {b} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0"
            ))?;
        }
        sh(&format!(
            "ip netns exec {p} sysctl -qw net.ipv4.fib_multipath_hash_policy=1 net.ipv4.conf.all.rp_filter=0 && \
             ip netns exec {p} sysctl -qw net.ipv4.conf.r1.rp_filter=0 net.ipv4.conf.r2.rp_filter=0"
        ))?;
        Ok(bed)
    }

    /// Routes `p`'s replies over `replicas` (1: b1 only; 2: both).
    fn pod_route(&self, replicas: usize) -> Result<()> {
        let hops = if replicas == 1 {
            "via 10.78.1.1 dev r1".to_owned()
        } else {
            "nexthop via 10.78.1.1 dev r1 nexthop via 10.78.2.1 dev r2".to_owned()
        };
        self.exec("p", &format!("ip route replace 10.77.0.0/24 {hops}"))?;
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }

    /// Starts gateway `i` (0: A, 1 and 2: the replicas); A knows `replicas` of them.
    fn start(&mut self, i: usize, replicas: usize) -> Result<()> {
        let ifname = self.ifname(i);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{ifname}.sock"));
        let mut conf = format!("[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n", self.keys[i].0);
        let mut args: Vec<String> =
            vec!["--multipath-probe-ms".into(), PROBE_MS.into(), "--routes".into(), "--mtu".into(), "1420".into()];
        if i == 0 {
            for r in 1..=replicas {
                let _ = write!(
                    conf,
                    "\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.78.0.0/24\nEndpoint = 198.18.0.{}:{PORT}\n",
                    self.keys[r].1,
                    r + 1
                );
            }
            args.extend(["--address".into(), format!("{CLIENT}/24"), "--metrics".into(), METRICS.into()]);
        } else {
            let _ = write!(
                conf,
                "\n[Peer]\nPublicKey = {}\nAllowedIPs = {CLIENT}/32\nEndpoint = 198.18.0.1:{PORT}\n",
                self.keys[0].1
            );
            args.extend(["--address".into(), format!("{ANYCAST}/32")]);
        }
        let path = self.write(&format!("{ifname}.conf"), &conf)?;
        let log = std::fs::File::create(self.dir.path().join(format!("{ifname}.log")))?;
        let ns = self.ns(["a", "b1", "b2"][i]);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(crate::bin_dir().join("slice-gateway"))
            .args(["--interface", &ifname, "--config"])
            .arg(&path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting slice-gateway")?;
        self.procs.push((ifname.clone(), child));
        if !wait_until(|| std::path::Path::new(&format!("/var/run/wireguard/{ifname}.sock")).exists()) {
            bail!("gateway {ifname} did not start");
        }
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        let ifname = self.ifname(i);
        if let Some(pos) = self.procs.iter().position(|(n, _)| *n == ifname) {
            let (_, mut c) = self.procs.remove(pos);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop_all(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }

    fn live_on_a(&self, replica: usize) -> bool {
        let key = &self.keys[replica].1;
        let text = self
            .exec("a", &format!("python3 -c \"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())\""))
            .unwrap_or_default();
        text.lines().any(|l| l.starts_with("slice_gateway_peer_live{") && l.contains(key.as_str()) && l.ends_with(" 1"))
    }

    fn tun_rx(&self, replica: usize) -> u64 {
        self.exec(
            ["a", "b1", "b2"][replica],
            &format!("cat /sys/class/net/{}/statistics/rx_packets", self.ifname(replica)),
        )
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    }
}

fn answered(log: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq=")))
        .filter_map(|s| s.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Runs the section.
///
/// # Errors
/// When the bed cannot be built or a step never happens within its deadline.
pub(crate) fn run(seconds: u32) -> Result<FailoverSection> {
    let mut bed = Bed::new()?;
    let mut out = FailoverSection { seconds, ..FailoverSection::default() };

    // Throughput: one replica, then two.
    for (slot, replicas) in [(0usize, 1usize), (1, 2)] {
        check_interrupted()?;
        bed.stop_all();
        bed.pod_route(replicas)?;
        bed.start(0, replicas)?;
        for r in 1..=replicas {
            bed.start(r, replicas)?;
        }
        if !wait_until(|| (1..=replicas).all(|r| bed.live_on_a(r))) {
            bail!("replicas never live on A");
        }
        let p = bed.ns("p");
        let server = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{p}"))
            .args(["iperf3", "-s", "-1", "-B", POD])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        bed.procs.push(("iperf3".into(), server));
        if !wait_until(|| bed.exec("p", &format!("ss -ltn | grep -q '{POD}:5201'")).is_ok()) {
            bail!("iperf3 server did not start");
        }
        let json = bed.exec("a", &format!("timeout 600 iperf3 -c {POD} -B {CLIENT} -P 8 -t {seconds} -J"))?;
        let v: serde_json::Value = serde_json::from_str(&json).context("iperf3 -J")?;
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received")?;
        out.gbits[slot] = bps / 1e9;
        eprintln!("slicenet-bench:   {replicas} replica(s): {:.2} Gbit/s (8 streams)", out.gbits[slot]);
        if let Some(pos) = bed.procs.iter().position(|(n, _)| n == "iperf3") {
            let (_, mut c) = bed.procs.remove(pos);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    // Failover: the replica carrying a 100/s ping is killed, KILLS times.
    let log = bed.dir.path().join("ping.log");
    let a = bed.ns("a");
    let ping = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{a}"))
        .args(["ping", "-i", "0.01", "-W", "10", "-c", "100000", ANYCAST])
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::null())
        .spawn()?;
    bed.procs.push(("ping".into(), ping));
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    if !wait_until(|| answered(&read()).len() >= 100) {
        bail!("the ping never got through");
    }
    for round in 0..KILLS {
        check_interrupted()?;
        let before = [bed.tun_rx(1), bed.tun_rx(2)];
        let seen = answered(&read()).len();
        if !wait_until(|| answered(&read()).len() >= seen + 50) {
            bail!("round {round}: the ping stalled");
        }
        let grew = [bed.tun_rx(1) - before[0], bed.tun_rx(2) - before[1]];
        let victim = if grew[1] > grew[0] { 2 } else { 1 };
        let at = answered(&read()).last().copied().unwrap_or(0);
        bed.kill(victim);
        if !wait_until(|| answered(&read()).last().is_some_and(|s| *s > at + 100)) {
            bail!("round {round}: the ping did not go on after the kill");
        }
        let seqs = answered(&read());
        let gap = seqs.windows(2).filter(|w| w[1] > at).map(|w| w[1] - w[0] - 1).max().unwrap_or(0);
        eprintln!("slicenet-bench:   kill {}: replica {victim}, {gap} pings lost in a row", round + 1);
        out.gaps.push(gap);
        bed.start(victim, 2)?;
        if !wait_until(|| bed.live_on_a(victim)) {
            bail!("round {round}: the restarted replica never became live");
        }
    }
    Ok(out)
}

/// The second part, in the full lab: c1 and c2 with two nodes each, a client pod on c1/n1 and
/// a server pod on c2/n1. Throughput pod to pod (iperf3 -P 8) with `gateway.replicas` 1, then
/// 2; then [`KILLS`] times: a 100/s ping from the client to the server, the c2 replica that
/// carries it (the one whose peers' bytes grow most over half a second) SIGKILLed, the
/// longest run of lost pings; the lab's kubelet restarts it and the next round waits until
/// c1's replicas count it live.
///
/// # Errors
/// When the lab cannot be built or a step fails; the lab is torn down either way.
pub(crate) fn run_lab(seconds: u32, out: &mut FailoverSection) -> Result<()> {
    let mut lab = crate::Lab::new(LAB_FULL)?;
    let mut cp = crate::control::ControlPlane::new();
    let measured = measure_lab(&mut lab, &mut cp, seconds, out);
    let deleted = cp.delete_all(&mut lab);
    let torn = lab.teardown();
    measured?;
    deleted?;
    torn
}

fn measure_lab(
    lab: &mut crate::Lab,
    cp: &mut crate::control::ControlPlane,
    seconds: u32,
    out: &mut FailoverSection,
) -> Result<()> {
    use crate::control;
    let members = [("c1", 2, false), ("c2", 2, false)];
    let mut manifest = control::across_manifest("blue", "10.80.0.0/16", &["shop"], &members)?;
    manifest.slices[0].spec.gateway.replicas = 1;
    cp.apply(lab, &manifest)?;
    let step = Duration::from_secs(20);
    let client = control::run_pod_retrying(lab.node("c1", "n1"), &crate::PodSpec::new("shop", "client"), step)?;
    let server = control::run_pod_retrying(lab.node("c2", "n1"), &crate::PodSpec::new("shop", "server"), step)?;
    let to = server.ipv4("slice0")?;
    control::first_packet(&client, to, Instant::now(), WAIT)?;
    for (slot, replicas) in [(0usize, 1u32), (1, 2)] {
        check_interrupted()?;
        if replicas == 2 {
            manifest.slices[0].spec.gateway.replicas = 2;
            cp.apply(lab, &manifest)?;
            for cluster in ["c1", "c2"] {
                for ordinal in [0, 1] {
                    cp.wait_replica_back(lab, "blue", cluster, ordinal, WAIT)?;
                }
            }
        }
        out.lab_gbits[slot] = lab_iperf(&client, &server, seconds)?;
        eprintln!("slicenet-bench:   full lab, {replicas} replica(s): {:.2} Gbit/s (8 streams)", out.lab_gbits[slot]);
    }
    let bytes = |cp: &control::ControlPlane, ordinal: u32| -> u64 {
        let text = cp.replica_wg("blue", "c2", ordinal, &["show", "{if}", "transfer"]).unwrap_or_default();
        text.lines().flat_map(|l| l.split_whitespace().skip(1).filter_map(|n| n.parse::<u64>().ok())).sum()
    };
    for round in 0..KILLS {
        check_interrupted()?;
        let count = LAB_PINGS.to_string();
        let mut ping = client.spawn(&["ping", "-n", "-i", "0.01", "-W", "5", "-c", &count, &to.to_string()])?;
        std::thread::sleep(Duration::from_millis(1000));
        let before = [bytes(cp, 0), bytes(cp, 1)];
        std::thread::sleep(Duration::from_millis(500));
        let grew = [bytes(cp, 0) - before[0], bytes(cp, 1) - before[1]];
        let victim = u32::from(grew[1] > grew[0]);
        cp.kill_replica("blue", "c2", victim)?;
        let deadline = Instant::now() + WAIT;
        while ping.is_running() {
            if Instant::now() > deadline {
                bail!("round {round}: the ping still runs");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (answered, gap) = crate::probe::ping_outcome(&ping.log_text(), LAB_PINGS);
        if answered == 0 {
            bail!("round {round}: no ping answered");
        }
        eprintln!("slicenet-bench:   full lab, kill {}: c2 replica {victim}, {gap} pings lost in a row", round + 1);
        out.lab_gaps.push(u64::from(gap));
        cp.wait_replica_back(lab, "blue", "c2", victim, WAIT)?;
    }
    Ok(())
}

/// iperf3 -P 8 from `client` to `server`'s slice address: Gbit/s received.
fn lab_iperf(client: &crate::Pod, server: &crate::Pod, seconds: u32) -> Result<f64> {
    let _server = server.spawn(&["iperf3", "-s", "-1", "-p", "5201"])?;
    if !wait_until(|| server.exec_ok(&["ss", "-Hltn", "sport = :5201"]).is_ok_and(|o| !o.trim().is_empty())) {
        bail!("the iperf3 server never listened");
    }
    let to = server.ipv4("slice0")?.to_string();
    let limit = (seconds + 30).to_string();
    let secs = seconds.to_string();
    let json = client.exec_ok(&["timeout", &limit, "iperf3", "-c", &to, "-P", "8", "-t", &secs, "-J"])?;
    let v: serde_json::Value = serde_json::from_str(&json).context("iperf3 -J")?;
    Ok(v["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received")? / 1e9)
}

fn ms(pings: u64) -> u64 {
    pings * 10
}

/// The median and the maximum gap in ms.
pub(crate) fn gap_stats(gaps: &[u64]) -> (u64, u64) {
    let mut v = gaps.to_vec();
    v.sort_unstable();
    let p50 = v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0);
    (ms(p50), ms(v.last().copied().unwrap_or(0)))
}

/// The section's table.
pub(crate) fn table(s: &FailoverSection) -> String {
    let (p50, max) = gap_stats(&s.gaps);
    let gaps: Vec<String> = s.gaps.iter().map(|g| ms(*g).to_string()).collect();
    let (lab_p50, lab_max) = gap_stats(&s.lab_gaps);
    let lab_gaps: Vec<String> = s.lab_gaps.iter().map(|g| ms(*g).to_string()).collect();
    format!(
        "| figure | value |\n| --- | --- |\n\
         | failover gap, p50 / max over {} kills (ms, ping at 100/s) | {p50} / {max} |\n\
         | each kill's gap (ms) | {} |\n\
         | throughput, 1 replica (Gbit/s, iperf3 -P 8, {} s) | {:.2} |\n\
         | throughput, 2 replicas (Gbit/s) | {:.2} |\n\
         | full lab: failover gap, p50 / max over {} kills (ms) | {lab_p50} / {lab_max} |\n\
         | full lab: each kill's gap (ms) | {} |\n\
         | full lab: throughput pod to pod, 1 replica (Gbit/s, iperf3 -P 8) | {:.2} |\n\
         | full lab: throughput pod to pod, 2 replicas (Gbit/s) | {:.2} |\n",
        s.gaps.len(),
        gaps.join(", "),
        s.seconds,
        s.gbits[0],
        s.gbits[1],
        s.lab_gaps.len(),
        lab_gaps.join(", "),
        s.lab_gbits[0],
        s.lab_gbits[1]
    )
}

/// The section of `docs/benchmarks.md`.
pub(crate) fn doc_section(s: &FailoverSection, command: &str) -> String {
    format!(
        "{BEGIN}\n## 15. Gateway replicas: failover gap and 1 vs 2 replicas (issue 13)\n\n\
         Two parts. First lab `{LAB}`, the gateways alone (namespaces and `slice-gateway` processes). Gateway A has the two \
         replicas of the other side as one peer group (`--multipath-probe-ms {PROBE_MS}`); a \"pod\" behind \
         both replies over a multipath route (L4 hash). Failover: the replica carrying a 100/s ping is \
         SIGKILLed, the longest run of lost pings ×10 ms is the gap; it is restarted with its key before the \
         next kill. Throughput: iperf3 from A to the pod, 8 TCP streams, A knowing one replica then both: one gateway on A's \
         side carries every stream in both runs, so the difference is what a second replica on the far side \
         adds (this 2-core machine runs every process, so the figure is a lower bound of what separate nodes \
         give); `slice-gateway` is the release build when SLICENET_BIN_DIR points at one. The gap is the \
         detection time (a member silent for three {PROBE_MS} ms probe intervals is dead) plus the ping's own \
         interval. Then lab `{LAB_FULL}`, the full lab (\"full lab\" rows): clusters c1 and c2 with two nodes \
         each, the workers running `gateway.replicas` as StatefulSets, the node agents routing over nexthop groups \
         of the live replicas (their probes: 200 ms, two misses); pod to pod from c1/n1 to c2/n1. Throughput with \
         `replicas: 1`, then 2. Failover: a {LAB_PINGS}-ping run at 100/s per kill, the c2 replica carrying it \
         SIGKILLed 1.5 s in, the longest run of lost pings ×10 ms; the lab restarts it and waits until c1's \
         replicas count it live before the next kill.\n\n{}\n{command}\n{END}\n",
        super::body(&table(s))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_reported_as_median_and_max_in_ms() {
        assert_eq!(gap_stats(&[30, 10, 20]), (200, 300));
        assert_eq!(gap_stats(&[10, 40]), (100, 400));
        assert_eq!(gap_stats(&[]), (0, 0));
        let t = table(&FailoverSection {
            gaps: vec![3, 5],
            gbits: [1.5, 2.25],
            seconds: 5,
            lab_gaps: vec![40, 20, 60],
            lab_gbits: [0.75, 1.25],
        });
        assert!(t.contains("| 30 / 50 |") && t.contains("| 30, 50 |") && t.contains("| 2.25 |"), "{t}");
        assert!(t.contains("| 400 / 600 |") && t.contains("| 400, 200, 600 |") && t.contains("| 1.25 |"), "{t}");
    }
}
