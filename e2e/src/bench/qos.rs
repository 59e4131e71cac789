//! Section 11: QoS per slice across the lab's WAN, with the profiles enforced and without, in
//! one run. Two clusters (lab [`LAB`]); c1's link to the WAN is made a 40 Mbit/s link (a token
//! bucket on its edge's WAN side, [`LINK_KBPS`]), the physical bottleneck the uplink rate
//! describes. Slices `gold` (guaranteed 10, ceiling 40 Mbit/s, priority 1) and `bulk`
//! (guaranteed 20, ceiling 40, priority 5) over c1 and c2; pods in c1 send to pods in c2
//! through the real gateways.
//!
//! - **QoS on**: `MemberCluster.spec.uplinkKbps` 40,000 (c1's node agent builds the HTB tree on
//!   its uplink); **off**: no `uplinkKbps` (no tree: the slices meet only in the link's queue).
//! - **Rates**: both slices offered twice the link (iperf3 UDP, two streams each, `-t T`): what
//!   each received against its profile.
//! - **Latency**: `gold`'s ping (`-i 0.2`) to its peer pod idle, then while `bulk` saturates the
//!   link: the added median RTT.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::process::check_interrupted;
use crate::Lab;
use crate::control::{BEHIND_NAT_ANNOTATION, ControlPlane, Manifest, NODES_ANNOTATION, parse_manifest};

pub(crate) const LAB: &str = "snbenchq";
pub(crate) const BEGIN: &str = "<!-- slicenet-bench qos: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench qos: end -->";
/// The uplink rate the profiles are planned against.
const UPLINK_KBPS: u64 = 40_000;
/// The emulated link: a little faster than the uplink rate, so that with QoS on the node's
/// tree, not the link, is the bottleneck.
const LINK_KBPS: u64 = 42_000;
const IPERF_PORT: u16 = 5201;
const STREAM_MBIT: u64 = 40;

/// (name, subnet, namespace, gateway port, guaranteed, ceiling, priority)
const SLICES: [(&str, &str, &str, u16, u64, u64, u8); 2] =
    [("gold", "10.80.0.0/16", "g", 51820, 10_000, 40_000, 1), ("bulk", "10.81.0.0/16", "k", 51821, 20_000, 40_000, 5)];

/// One side of the comparison.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QosRun {
    /// Mbit/s received by gold and bulk, both saturating.
    pub(crate) rates: [f64; 2],
    /// gold's ping median / mean ms: idle, and while bulk saturates the link.
    pub(crate) idle: [f64; 2],
    pub(crate) loaded: [f64; 2],
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QosSection {
    pub(crate) on: QosRun,
    pub(crate) off: QosRun,
    pub(crate) seconds: u32,
}

fn manifest(qos: bool) -> Result<Manifest> {
    let mut text = String::new();
    for c in ["c1", "c2"] {
        let spec = if qos { format!("{{uplinkKbps: {UPLINK_KBPS}}}") } else { "{}".to_owned() };
        text += &format!(
            "apiVersion: slicenet.io/v1alpha1\nkind: MemberCluster\nmetadata:\n  name: {c}\n  annotations: \
             {{{NODES_ANNOTATION}: \"1\", {BEHIND_NAT_ANNOTATION}: \"false\"}}\nspec: {spec}\n---\n"
        );
    }
    for (i, (name, subnet, ns, port, g, c, prio)) in SLICES.iter().enumerate() {
        text += &format!(
            "apiVersion: slicenet.io/v1alpha1\nkind: SliceConfig\nmetadata: {{name: {name}}}\nspec:\n  sliceSubnet: {subnet}\n  \
             clusters: [c1, c2]\n  namespaces: [{{namespace: {ns}}}]\n  \
             gateway: {{port: {port}, nodePort: {}, persistentKeepalive: 5, replicas: 1}}\n  \
             qos: {{guaranteedKbps: {g}, ceilingKbps: {c}, priority: {prio}}}\n---\n",
            31820 + i
        );
    }
    parse_manifest(&text)
}

fn workloads(cluster: &str) -> Result<Vec<Value>> {
    let role = if cluster == "c1" { "client" } else { "server" };
    let mut text = String::new();
    for (_, _, ns, ..) in SLICES {
        text += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: {role}, namespace: {ns}}}\nspec: {{containers: [{{name: app}}]}}\n---\n"
        );
    }
    crate::control::workloads::parse_objects(&text)
}

/// Runs the section.
///
/// # Errors
/// A lab that cannot be built, a tool that fails.
pub(crate) fn run(seconds: u32, pings: u32) -> Result<QosSection> {
    let mut lab = Lab::new(LAB)?;
    let mut cp = ControlPlane::new();
    let result = measure(&mut cp, &mut lab, seconds, pings);
    let cleanup = cp.delete_all(&mut lab).and_then(|()| lab.teardown());
    let section = result?;
    cleanup?;
    Ok(section)
}

fn measure(cp: &mut ControlPlane, lab: &mut Lab, seconds: u32, pings: u32) -> Result<QosSection> {
    eprintln!("slicenet-bench: 11. building lab {LAB} (c1, c2; slices gold and bulk)");
    cp.apply(lab, &manifest(true)?)?;
    for c in ["c1", "c2"] {
        cp.apply_in(lab, c, &workloads(c)?)?;
    }
    // The link: a token bucket on c1's edge, towards the WAN.
    let other = lab.cluster("c2").public_address().context("c2's public address")?;
    let route = lab.cluster("c1").edge_exec(&["ip", "-j", "route", "get", &other.to_string()])?;
    let route: Value = serde_json::from_slice(&route.stdout).context("`ip -j route get` is not JSON")?;
    let dev = route[0]["dev"].as_str().context("no device towards the WAN on c1's edge")?.to_owned();
    let link = format!("{LINK_KBPS}kbit");
    let out = lab.cluster("c1").edge_exec(&[
        "tc", "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", &link, "burst", "32kb", "latency", "100ms",
    ])?;
    ensure!(out.status.success(), "tbf on c1's edge: {}", String::from_utf8_lossy(&out.stderr));

    let pod = |c: &str, ns: &str, n: &str| cp.pod(c, ns, n).cloned().with_context(|| format!("no pod {ns}/{n} in {c}"));
    let clients = [pod("c1", "g", "client")?, pod("c1", "k", "client")?];
    let servers = [pod("c2", "g", "server")?, pod("c2", "k", "server")?];
    let targets = [servers[0].ipv4("slice0")?, servers[1].ipv4("slice0")?];
    let _iperf: Vec<crate::PodProcess> =
        servers.iter().map(|s| s.spawn(&["iperf3", "-s", "-p", &IPERF_PORT.to_string()])).collect::<Result<_>>()?;
    for (c, t) in clients.iter().zip(targets) {
        let end = Instant::now() + Duration::from_secs(60);
        while !c.exec(&["ping", "-c", "1", "-W", "2", &t.to_string()]).is_ok_and(|o| o.status.success()) {
            ensure!(Instant::now() < end, "{} cannot reach {t} across its slice", c.lab_name());
        }
    }
    let mut section = QosSection { seconds, ..QosSection::default() };
    for qos in [true, false] {
        check_interrupted()?;
        cp.apply(lab, &manifest(qos)?)?;
        wait_tree(lab, qos)?;
        eprintln!("slicenet-bench: 11. QoS {}", if qos { "on" } else { "off" });
        let mut run = QosRun::default();
        let rates = std::thread::scope(|s| {
            let runs: Vec<_> =
                clients.iter().zip(targets).map(|(c, t)| s.spawn(move || iperf_udp(c, t, seconds))).collect();
            runs.into_iter()
                .map(|r| r.join().map_err(|_| anyhow::anyhow!("iperf3 thread"))?)
                .collect::<Result<Vec<f64>>>()
        })?;
        run.rates = [rates[0], rates[1]];
        run.idle = ping(&clients[0], targets[0], pings)?;
        run.loaded = std::thread::scope(|s| {
            let bulk = s.spawn(|| iperf_udp(&clients[1], targets[1], seconds + pings / 5 + 2));
            std::thread::sleep(Duration::from_secs(1));
            let p = ping(&clients[0], targets[0], pings);
            bulk.join().map_err(|_| anyhow::anyhow!("iperf3 thread"))??;
            p
        })?;
        if qos { section.on = run } else { section.off = run }
    }
    let _ = lab.cluster("c1").edge_exec(&["tc", "qdisc", "del", "dev", &dev, "root"]);
    Ok(section)
}

/// Waits until c1's node has its tree (QoS on) or none (off).
fn wait_tree(lab: &Lab, on: bool) -> Result<()> {
    let node = lab.node("c1", "n1");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let out = node.exec(&["tc", "qdisc", "show"])?;
        if String::from_utf8_lossy(&out.stdout).contains("qdisc htb 5c:") == on {
            return Ok(());
        }
        ensure!(Instant::now() < end, "c1's tree did not {} within 60 s", if on { "come" } else { "go" });
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// iperf3 UDP, two streams at [`STREAM_MBIT`], `seconds`: Mbit/s received.
fn iperf_udp(client: &crate::Pod, to: Ipv4Addr, seconds: u32) -> Result<f64> {
    let (b, t, p, limit) =
        (format!("{STREAM_MBIT}M"), seconds.to_string(), IPERF_PORT.to_string(), (seconds + 30).to_string());
    let to = to.to_string();
    let out = client.exec(&[
        "timeout", "-k", "2", &limit, "iperf3", "-c", &to, "-p", &p, "-u", "-b", &b, "-P", "2", "-l", "1200", "-t", &t,
        "-J",
    ])?;
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 -J: {}", String::from_utf8_lossy(&out.stderr)))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 to {to}: {e}");
    }
    Ok(v["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received")? / 1e6)
}

/// `ping -c N -i 0.2`: [median, mean] ms.
fn ping(client: &crate::Pod, to: Ipv4Addr, count: u32) -> Result<[f64; 2]> {
    let out = client.exec_ok(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "10", &to.to_string()])?;
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    ensure!(!rtts.is_empty(), "no ping reply: {out}");
    rtts.sort_by(f64::total_cmp);
    let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
    Ok([rtts[rtts.len() / 2], mean])
}

pub(crate) fn table(s: &QosSection) -> String {
    let mbit = |k: u64| k as f64 / 1000.0;
    let mut t = format!(
        "### 11. QoS per slice over a 40 Mbit/s uplink, on and off (iperf3 UDP -t {}, ping -i 0.2)\n\n\
         | | gold Mbit/s (g {} c {}) | bulk Mbit/s (g {} c {}) | gold ping idle median ms | gold ping, bulk saturating: median / mean ms | added median ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
        s.seconds,
        mbit(SLICES[0].4),
        mbit(SLICES[0].5),
        mbit(SLICES[1].4),
        mbit(SLICES[1].5)
    );
    for (what, r) in [("QoS on", &s.on), ("QoS off", &s.off)] {
        let _ = writeln!(
            t,
            "| {what} | {:.1} | {:.1} | {:.2} | {:.2} / {:.2} | {:.2} |",
            r.rates[0],
            r.rates[1],
            r.idle[0],
            r.loaded[0],
            r.loaded[1],
            r.loaded[0] - r.idle[0]
        );
    }
    let (on, off) = (s.on.loaded[0] - s.on.idle[0], s.off.loaded[0] - s.off.idle[0]);
    let _ = write!(
        t,
        "\nGuarantees with QoS on (at least 90 % of each, iperf3's payload against the class's outer bytes): gold \
         **{}**, bulk **{}**. gold's added median latency under bulk's load: {off:.2} ms without QoS (bulk's \
         queue in the link), {on:.2} ms with it ({}).\n",
        if s.on.rates[0] >= 0.9 * mbit(SLICES[0].4) { "met" } else { "not met" },
        if s.on.rates[1] >= 0.9 * mbit(SLICES[1].4) { "met" } else { "not met" },
        if on < 0.1 { "nothing beyond this machine's noise".to_owned() } else { format!("{:.0}× less", off / on) }
    );
    // The anchor of the same run: gold's median RTT while bulk saturates, without QoS against with.
    let _ = writeln!(
        t,
        "gold's median RTT while bulk saturates, QoS off / on: **{:.0}×** ({:.2} / {:.2} ms).",
        super::stats::ratio(s.off.loaded[0], s.on.loaded[0]),
        s.off.loaded[0],
        s.on.loaded[0]
    );
    t
}

pub(crate) fn doc_section(s: &QosSection, command: &str) -> String {
    format!(
        "{BEGIN}\n## 11. QoS per slice across the WAN, on and off\n\n\
         Lab `{LAB}`: c1 and c2 (one node each) over the lab's WAN; c1's edge sends to the WAN through a \
         token bucket of {LINK_KBPS} kbit/s (`tc … tbf`, 32 kB burst, 100 ms queue), the physical link. Slices \
         `gold` (guaranteed 10, ceiling 40 Mbit/s, priority 1) and `bulk` (guaranteed 20, ceiling 40, \
         priority 5), applied as YAML; pods in c1 send through the real gateways to pods in c2. QoS on: \
         `uplinkKbps: {UPLINK_KBPS}` on the MemberClusters (c1's node agent builds the HTB tree on its \
         uplink, leaf `pfifo`: the only leaf qdisc this kernel has); off: no `uplinkKbps`, no tree, the \
         slices meet in the link's queue. Rates: both slices at once, iperf3 UDP, two streams of \
         {STREAM_MBIT} Mbit/s each, 1,200-byte datagrams, what the servers received (the class counts the \
         outer packets, about 8 % more). Latency: gold's ping to its peer pod idle, then while bulk alone \
         saturates.\n\n{}\n{command}\n{END}\n",
        super::body(&table(s))
    )
}
