//! `slicenet-bench` (run by `make bench`): what `slice-cni` costs and what the slice path
//! delivers, measured side by side in one run against the same machine's reference, with
//! ratios. Figures are printed (and written to `docs/benchmarks.md`), never asserted.
//!
//! 1. CNI ADD/DEL latency of the plugin binaries invoked directly as a runtime does:
//!    `bridge` + `host-local` against `slice-cni` chained after it ([`cni`]).
//! 2. CRI RunPodSandbox time through containerd with and without `slice-cni` in the chain
//!    ([`cri`]).
//! 3. Pod to pod across two nodes, `iperf3` and `ping`, over `slice0` and over the primary
//!    network ([`path`]).
//! 4. Tunnels over one veth: `slice-gateway` against wireguard-go and OpenVPN ([`tunnel`]).
//! 5. Across two clusters over the lab's WAN, side by side over the same WAN namespaces: the WAN
//!    without a tunnel, `slice-gateway` pod to pod through the whole slice path and between the
//!    gateway pods, wireguard-go and OpenVPN between the gateway pods ([`across`]).
//! 9. `slice-dns` against Knot DNS on the same records, with `dnsperf` ([`dns`]).
//! 10. MultiNetworkPolicy at 1,000 and 10,000 pods × 100 policies: compile + apply on a node,
//!     a label change to enforcement on another cluster's node, throughput with and without
//!     policies ([`policy`]).
//! 11. QoS per slice over a 40 Mbit/s uplink, on and off: rates against the profiles and a
//!     high-priority slice's ping under a saturating low-priority one ([`qos`]).
//! 12. The control plane at scale: simulated clusters on the in-memory API against the real hub
//!     and the workers' writes, 16–512 clusters × 1–64 slices, and the gateway's peer lookup
//!     ([`scale`]; no lab, no root needed by the section itself).
//! 13. One gateway serving 1, 8 and 64 peers, against `gotatun` the same way ([`peers`]).
//! 14. The web console in headless Chromium for 3 and 50 simulated clusters: page weight, time
//!     to first render, the serving process's CPU and memory with a page open ([`console`]).
//! 15. Gateway replicas between namespaces: failover gap over 10 kills, 1 vs 2 replicas ([`failover`]).
//!
//! Everything runs in two labs made for the purpose (prefixes [`SLICE_LAB`] and [`PLAIN_LAB`]);
//! nothing is sent outside their namespaces. The labs are torn down on every path: on return,
//! on error, and on Ctrl-C (SIGINT/SIGTERM stop the run at the next step).

mod across;
mod cni;
mod console;
mod cri;
mod crypto;
mod dns;
mod doc;
mod failover;
mod path;
mod peers;
mod place;
mod policy;
mod process;
mod qos;
mod scale;
mod stats;
mod tunnel;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::{Lab, LabOptions, LabSlice};
pub use scale::CountingAllocator;
use stats::{Summary, added_percent, ratio};

/// Prefix of the lab with `slice-cni` in the chain and node agents running the bench slice.
pub const SLICE_LAB: &str = "snbenchs";
/// Prefix of the lab without `slice-cni`.
pub const PLAIN_LAB: &str = "snbenchp";
/// The slice every bench pod (namespace `bench`) is a member of.
const SLICE: &str = "bench";
const SLICE_VNI: u32 = 4242;
const SLICE_SUBNET: &str = "10.80.0.0/16";

/// Which parts to run and how many samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Timed iterations of section 1 (each: bridge ADD, slice-cni ADD, DEL, DEL).
    pub cni_iterations: usize,
    /// Timed pods per lab in section 2.
    pub pods: usize,
    /// Duration of one iperf3 run in section 3.
    pub iperf_seconds: u32,
    /// iperf3 runs per path (alternating between the paths).
    pub iperf_runs: usize,
    /// Echo requests per path.
    pub pings: u32,
    pub run_cni: bool,
    pub run_cri: bool,
    pub run_path: bool,
    pub run_tunnel: bool,
    pub run_across: bool,
    pub run_convergence: bool,
    pub run_dns: bool,
    pub run_policy: bool,
    pub run_qos: bool,
    pub run_scale: bool,
    pub run_peers: bool,
    pub run_console: bool,
    pub run_failover: bool,
    /// Length of one dnsperf run in section 9.
    pub dns_seconds: u32,
    /// Cluster joins timed in section 6.
    pub joins: usize,
    /// Where to write the report (`None`: nowhere).
    pub doc: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cni_iterations: 200,
            pods: 100,
            iperf_seconds: 5,
            iperf_runs: 3,
            pings: 20,
            run_cni: true,
            run_cri: true,
            run_path: true,
            run_tunnel: true,
            run_across: true,
            run_convergence: true,
            run_dns: true,
            run_policy: true,
            run_qos: true,
            run_scale: true,
            run_peers: true,
            run_console: true,
            run_failover: true,
            dns_seconds: 10,
            joins: 10,
            doc: Some(PathBuf::from("docs/benchmarks.md")),
        }
    }
}

/// `--help` text.
pub const USAGE: &str = "\
usage: slicenet-bench [options]    (as root; `make bench` builds and runs it)

Measures slice-cni against the reference CNI plugins and the slice path against the primary
network, side by side in one run, and prints markdown tables with ratios.

options:
  --quick               small samples (30 CNI iterations, 10 pods, 2 s iperf3, 10 pings);
                        writes no report unless --doc is given
  --cni-iterations N    timed CNI ADD/DEL iterations (default 200)
  --pods N              timed RunPodSandbox calls per lab (default 100)
  --iperf-seconds S     length of one iperf3 run (default 5)
  --iperf-runs N        iperf3 runs per path (default 3)
  --pings N             echo requests per path (default 20)
  --joins N             timed cluster joins in section 6, label changes per size in section 10
                        (default 10)
  --dns-seconds S       length of one dnsperf run in section 9 (default 10)
  --only LIST           sections to run, comma-separated: cni,cri,path,tunnel,across,convergence,
                        dns,policy,qos,scale,peers,console,failover
                        (default all)
  --doc PATH            write the report there (default docs/benchmarks.md)
  --no-doc              write no report
  -h, --help            this text

SLICENET_BIN_DIR names the directory of slice-cni, slice-operator and slice-gateway (make bench:
target/release). SLICENET_BENCH_TUNNELS=veth,slice-gateway,wireguard-go,openvpn limits sections 4
and 5 to those paths (veth: the untunnelled path of either). SLICENET_BENCH_GATEWAY_VARIANTS adds
slice-gateway rows to section 4 run with switches, e.g. 'A=1;A=0 B=2' (`;` between rows).";

impl Options {
    /// Parses the command line (without the program name). `Ok(None)` means `--help`.
    ///
    /// # Errors
    /// An unknown option or a bad value.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Self>> {
        let mut o = Self::default();
        let mut quick = false;
        let mut doc_given = false;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = || -> Result<String> {
                inline.clone().or_else(|| args.next()).ok_or_else(|| anyhow!("{name} needs a value"))
            };
            fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T> {
                v.parse().map_err(|_| anyhow!("{name}: {v:?} is not a number"))
            }
            match name.as_str() {
                "-h" | "--help" => return Ok(None),
                "--quick" => quick = true,
                "--cni-iterations" => o.cni_iterations = num(&name, value()?)?,
                "--pods" => o.pods = num(&name, value()?)?,
                "--iperf-seconds" => o.iperf_seconds = num(&name, value()?)?,
                "--iperf-runs" => o.iperf_runs = num(&name, value()?)?,
                "--pings" => o.pings = num(&name, value()?)?,
                "--joins" => o.joins = num(&name, value()?)?,
                "--dns-seconds" => o.dns_seconds = num(&name, value()?)?,
                "--only" => {
                    let list = value()?;
                    (o.run_cni, o.run_cri, o.run_path, o.run_tunnel, o.run_across, o.run_convergence, o.run_dns) =
                        (false, false, false, false, false, false, false);
                    (o.run_policy, o.run_qos) = (false, false);
                    (o.run_scale, o.run_peers) = (false, false);
                    (o.run_console, o.run_failover) = (false, false);
                    for part in list.split(',').map(str::trim) {
                        match part {
                            "cni" => o.run_cni = true,
                            "cri" => o.run_cri = true,
                            "path" => o.run_path = true,
                            "tunnel" => o.run_tunnel = true,
                            "across" => o.run_across = true,
                            "convergence" => o.run_convergence = true,
                            "dns" => o.run_dns = true,
                            "policy" => o.run_policy = true,
                            "qos" => o.run_qos = true,
                            "scale" => o.run_scale = true,
                            "peers" => o.run_peers = true,
                            "console" => o.run_console = true,
                            "failover" => o.run_failover = true,
                            other => {
                                bail!(
                                    "--only: unknown section {other:?} (cni, cri, path, tunnel, across, convergence, dns, policy, qos, scale, peers, console, failover)"
                                )
                            }
                        }
                    }
                }
                "--doc" => {
                    o.doc = Some(PathBuf::from(value()?));
                    doc_given = true;
                }
                "--no-doc" => {
                    o.doc = None;
                    doc_given = true;
                }
                other => bail!("unknown option {other:?} (see --help)"),
            }
        }
        if quick {
            // Only what was not set explicitly after the defaults… kept simple: --quick wins
            // for values still at their defaults.
            let d = Self::default();
            if o.cni_iterations == d.cni_iterations {
                o.cni_iterations = 30;
            }
            if o.pods == d.pods {
                o.pods = 10;
            }
            if o.iperf_seconds == d.iperf_seconds {
                o.iperf_seconds = 2;
            }
            if o.iperf_runs == d.iperf_runs {
                o.iperf_runs = 1;
            }
            if o.pings == d.pings {
                o.pings = 10;
            }
            if o.joins == d.joins {
                o.joins = 3;
            }
            if o.dns_seconds == d.dns_seconds {
                o.dns_seconds = 3;
            }
            if !doc_given {
                o.doc = None;
            }
        }
        if o.cni_iterations == 0
            || o.pods == 0
            || o.iperf_seconds == 0
            || o.iperf_runs == 0
            || o.pings == 0
            || o.joins == 0
            || o.dns_seconds == 0
        {
            bail!("sample counts and durations must be at least 1");
        }
        Ok(Some(o))
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
struct Figures {
    cni: Option<cni::CniFigures>,
    cri: Option<cri::CriFigures>,
    path: Option<path::PodToPod>,
    tunnel: Option<tunnel::TunnelSection>,
    across: Option<tunnel::TunnelSection>,
    convergence: Option<(Vec<crate::convergence::Join>, Vec<crate::convergence::NameChange>)>,
    dns: Option<dns::DnsSection>,
    policy: Option<policy::PolicySection>,
    qos: Option<qos::QosSection>,
    scale: Option<scale::ScaleSection>,
    peers: Option<peers::PeersSection>,
    console: Option<console::ConsoleSection>,
    failover: Option<failover::FailoverSection>,
}

/// Runs the benchmark: builds the labs, runs the sections, prints a table per section on
/// stdout (progress goes to stderr), tears the labs down and writes the report.
///
/// # Errors
/// When not root, a tool is missing, a lab cannot be built or a measurement fails. The labs are
/// torn down in every case.
pub fn run(options: &Options) -> Result<()> {
    crate::require_root()?;
    process::catch_interrupts();
    preflight(options)?;
    let started = Instant::now();
    let load_start = load_average();
    let figures = measure(options)?;
    let elapsed = started.elapsed();
    let load_end = load_average();
    eprintln!("slicenet-bench: done in {:.0} s", elapsed.as_secs_f64());
    if let Some(doc) = &options.doc {
        let old = std::fs::read_to_string(doc).unwrap_or_default();
        let labs = options.run_cni || options.run_cri || options.run_path;
        let mut text = if labs { report(options, &figures, elapsed)? } else { old.clone() };
        let command = format!(
            "Command: `{}`, run {}; load average (1 / 5 / 15 min) {load_start} at the start and {load_end} at the end \
             of the run (other work on this machine shows here).",
            command_line(),
            command_output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
        );
        let tunnel_doc = figures.tunnel.as_ref().map(|t| tunnel::doc_section(t, TUNNEL_STEPS, &command));
        text = doc::Marked { begin: tunnel::BEGIN, end: tunnel::END }.update(&text, tunnel_doc, &old);
        let across_doc = figures.across.as_ref().map(|a| across::doc_section(a, &command));
        text = doc::Marked { begin: across::BEGIN, end: across::END }.update(&text, across_doc, &old);
        let convergence_doc = figures.convergence.as_ref().map(|j| convergence_doc(j, &command));
        text = doc::Marked { begin: CONVERGENCE_BEGIN, end: CONVERGENCE_END }.update(&text, convergence_doc, &old);
        let dns_doc = figures.dns.as_ref().map(|d| dns::doc_section(d, &command));
        text = doc::Marked { begin: dns::BEGIN, end: dns::END }.update(&text, dns_doc, &old);
        let policy_doc = figures.policy.as_ref().map(|p| policy::doc_section(p, &command));
        text = doc::Marked { begin: policy::BEGIN, end: policy::END }.update(&text, policy_doc, &old);
        let qos_doc = figures.qos.as_ref().map(|q| qos::doc_section(q, &command));
        text = doc::Marked { begin: qos::BEGIN, end: qos::END }.update(&text, qos_doc, &old);
        let scale_doc = figures.scale.as_ref().map(|s| scale::doc_section(s, &command));
        text = doc::Marked { begin: scale::BEGIN, end: scale::END }.update(&text, scale_doc, &old);
        let peers_doc = figures.peers.as_ref().map(|p| peers::doc_section(p, &command));
        text = doc::Marked { begin: peers::BEGIN, end: peers::END }.update(&text, peers_doc, &old);
        let console_doc = figures.console.as_ref().map(|c| console::doc_section(c, &command));
        text = doc::Marked { begin: console::BEGIN, end: console::END }.update(&text, console_doc, &old);
        let failover_doc = figures.failover.as_ref().map(|f| failover::doc_section(f, &command));
        text = doc::Marked { begin: failover::BEGIN, end: failover::END }.update(&text, failover_doc, &old);
        if let Some(dir) = doc.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(doc, text).with_context(|| format!("cannot write {}", doc.display()))?;
        eprintln!("slicenet-bench: wrote {}", doc.display());
    }
    Ok(())
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// This run's command line as it can be typed again: the `SLICENET_*` variables it read, the
/// program and its arguments.
fn command_line() -> String {
    let mut words: Vec<String> =
        ["SLICENET_BIN_DIR", "SLICENET_BENCH_TUNNELS", "SLICENET_BENCH_GATEWAY_VARIANTS", "SLICENET_BENCH_SCALE_SIZES"]
            .into_iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={}", quote(&v))))
            .collect();
    words.extend(std::env::args().map(|a| quote(&a)));
    words.join(" ")
}

fn quote(word: &str) -> String {
    if word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=,:".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The per-step history of the gateway's speed work (written by hand from this section's runs).
const TUNNEL_STEPS: &str = include_str!("tunnel_steps.md");

fn preflight(options: &Options) -> Result<()> {
    let bin = crate::bin_dir();
    let labs = options.run_cni || options.run_cri || options.run_path;
    let mut needed = Vec::new();
    let control = options.run_policy || options.run_qos;
    if labs || options.run_across || control {
        needed.extend(["slice-cni", "slice-operator"]);
    }
    if options.run_tunnel || options.run_across || options.run_peers || control || options.run_failover {
        needed.push("slice-gateway");
    }
    if options.run_dns {
        needed.push("slice-dns");
    }
    if options.run_console {
        for browser in [crate::browser::CHROMIUM, crate::browser::CHROMEDRIVER] {
            if !std::path::Path::new(browser).exists() {
                bail!("{browser} is missing (make deps installs chromium and chromium-driver)");
            }
        }
    }
    for name in needed {
        if !bin.join(name).exists() {
            bail!(
                "{} is missing: build it (`cargo build --release --bins`) or set SLICENET_BIN_DIR",
                bin.join(name).display()
            );
        }
    }
    let mut tools = vec!["ip"];
    if labs || options.run_across || control {
        tools.extend(["containerd", "nsenter"]);
    }
    if options.run_qos {
        tools.push("tc");
    }
    if options.run_failover {
        tools.extend(["iperf3", "ping", "ss", "timeout", "nsenter", "wg", "python3", "containerd"]);
    }
    if options.run_policy {
        tools.push("nft");
    }
    if options.run_path || options.run_tunnel || options.run_across || options.run_peers || control {
        tools.extend(["iperf3", "ping", "ss", "timeout"]);
    }
    if options.run_tunnel || options.run_across || options.run_peers {
        tools.extend(["wg", "openssl"]);
    }
    if options.run_dns {
        tools.extend(["dnsperf", "knotd", "dig"]);
    }
    for tool in tools {
        let found =
            std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).exists()));
        if !found {
            bail!("`{tool}` is not installed (make deps installs what the lab needs)");
        }
    }
    if labs && !std::path::Path::new("/usr/lib/cni/bridge").exists() {
        bail!("/usr/lib/cni/bridge is missing: install containernetworking-plugins");
    }
    Ok(())
}

/// Builds a lab with one cluster `c1` of `nodes` nodes.
fn build_lab(prefix: &str, options: LabOptions, nodes: usize) -> Result<Lab> {
    let mut lab = Lab::with_options(prefix, options)?;
    lab.add_cluster("c1", nodes).with_context(|| format!("lab {prefix}"))?;
    Ok(lab)
}

fn measure(options: &Options) -> Result<Figures> {
    let mut figures = if options.run_cni || options.run_cri || options.run_path {
        measure_labs(options)?
    } else {
        Figures::default()
    };
    if options.run_tunnel {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 4. tunnels over one veth (namespaces {}, {})", tunnel::NS_A, tunnel::NS_B);
        let t = tunnel::run(options.iperf_seconds, options.pings)?;
        println!("{}", tunnel::table(&t));
        figures.tunnel = Some(t);
    }
    if options.run_across {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 5. across clusters over one WAN (lab {}, c1 + c2), every tunnel", across::LAB);
        let a = across::run(options.iperf_seconds, options.pings)?;
        println!("{}", across::table(&a));
        figures.across = Some(a);
    }
    if options.run_convergence {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 6. convergence, {} joins of a cluster (lab {CONVERGENCE_LAB})", options.joins);
        let joins = crate::convergence::measure(CONVERGENCE_LAB, options.joins)?;
        println!("{}", convergence_table(&joins));
        eprintln!("slicenet-bench: 6. names, {} endpoint changes (lab {NAMES_LAB})", options.joins);
        let names = crate::convergence::measure_names(NAMES_LAB, options.joins)?;
        println!("{}", names_table(&names));
        figures.convergence = Some((joins, names));
    }
    if options.run_dns {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 9. slice-dns against Knot DNS (namespace {})", dns::NS);
        let d = dns::run(options.dns_seconds)?;
        println!("{}", dns::table(&d));
        figures.dns = Some(d);
    }
    if options.run_policy {
        process::check_interrupted()?;
        eprintln!(
            "slicenet-bench: 10. MultiNetworkPolicy at {:?} pods × 100 policies (namespace {}, lab {})",
            policy::SIZES,
            policy::NS,
            policy::LAB
        );
        let p = policy::run(options.joins, options.iperf_runs, options.iperf_seconds)?;
        println!("{}", policy::table(&p));
        figures.policy = Some(p);
    }
    if options.run_qos {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 11. QoS per slice, on and off (lab {})", qos::LAB);
        let q = qos::run(options.iperf_seconds, options.pings)?;
        println!("{}", qos::table(&q));
        figures.qos = Some(q);
    }
    if options.run_scale {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 12. the control plane at scale (in memory, no lab)");
        let s = scale::run()?;
        println!("{}", scale::table(&s));
        figures.scale = Some(s);
    }
    if options.run_peers {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 13. one gateway, 1, 8 and 64 peers (namespaces {}-*)", peers::PREFIX);
        let p = peers::run(options.iperf_seconds, options.pings)?;
        println!("{}", peers::table(&p));
        figures.peers = Some(p);
    }
    if options.run_console {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 14. web console in headless Chromium, {:?} simulated clusters", console::SIZES);
        let c = console::run()?;
        println!("{}", console::table(&c));
        figures.console = Some(c);
    }
    if options.run_failover {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 15. gateway replicas: failover gap and 1 vs 2 replicas (lab {})", failover::LAB);
        let mut f = failover::run(options.iperf_seconds)?;
        eprintln!("slicenet-bench:   the same in the full lab (lab {})", failover::LAB_FULL);
        failover::run_lab(options.iperf_seconds, &mut f)?;
        println!("{}", failover::table(&f));
        figures.failover = Some(f);
    }
    Ok(figures)
}

/// Prefix of the lab of section 6.
pub const CONVERGENCE_LAB: &str = "snbenchv";
/// Prefix of the names lab of section 6.
pub const NAMES_LAB: &str = "snbenchn";
const CONVERGENCE_BEGIN: &str = "<!-- slicenet-bench convergence: begin -->";
const CONVERGENCE_END: &str = "<!-- slicenet-bench convergence: end -->";

fn convergence_table(joins: &[crate::convergence::Join]) -> String {
    let cp = stats::Summary::of(&joins.iter().map(|j| j.control_plane).collect::<Vec<_>>());
    let fp = stats::Summary::of(&joins.iter().map(|j| j.first_packet).collect::<Vec<_>>());
    crate::demo::table(
        &["from applying the change to", "p50 ms", "max ms", "goal"],
        &[
            vec!["the control plane done (every WorkerSlice Ready)".into(), fmt1(cp.p50), fmt1(cp.max), "—".into()],
            vec![
                "the first packet across the new path".into(),
                fmt1(fp.p50),
                fmt1(fp.max),
                format!("< 2000 ms: {}", if fp.max < 2000.0 { "met" } else { "not met" }),
            ],
        ],
    )
}

fn names_table(changes: &[crate::convergence::NameChange]) -> String {
    let gone = stats::Summary::of(&changes.iter().map(|c| c.removed).collect::<Vec<_>>());
    let back = stats::Summary::of(&changes.iter().map(|c| c.restored).collect::<Vec<_>>());
    let goal = |s: &stats::Summary| format!("< 2000 ms: {}", if s.max < 2000.0 { "met" } else { "not met" });
    crate::demo::table(
        &["from an endpoint's readiness change in c2 to c3's slice-dns answer", "p50 ms", "max ms", "goal"],
        &[
            vec!["unready: the endpoint gone".into(), fmt1(gone.p50), fmt1(gone.max), goal(&gone)],
            vec!["ready again: the endpoint back".into(), fmt1(back.p50), fmt1(back.max), goal(&back)],
        ],
    )
}

fn fmt1(v: f64) -> String {
    format!("{v:.0}")
}

fn convergence_doc(
    (joins, names): &(Vec<crate::convergence::Join>, Vec<crate::convergence::NameChange>),
    command: &str,
) -> String {
    format!(
        "{CONVERGENCE_BEGIN}\n## 6. Convergence of the control plane in the lab\n\n\
         A registered cluster (c3, one node) joins a slice over c1 (two nodes) and c2: the SliceConfig's \
         `clusters` gains it and the lab's control plane (`e2e::control`: the hub controller's and the \
         workers' own passes against the in-memory API, the lab's kubelet running what they write) runs \
         rounds. Timed from that change to the control plane being done (every WorkerSlice `Ready`: node \
         agents applied, c3's gateway pod up, every tunnel up by the worker's rule) and to the first packet \
         from a pod in c1 to the new slice member in c3 (its gateway pod; pings every 20 ms). Each round c3 leaves \
         again; {} rounds.\n\n{}\n\n\
         Names: `db` is exported from c1 (pod `db-0`) and c2 (`db-1`) over the three-cluster lab (c3 behind \
         NAT); `db-1`'s `Ready` condition turns false (as a failing readiness probe makes it) and the rounds of \
         the control plane run back to back (c2's worker reports the export, the hub merges, c3's worker writes \
         its EndpointSlices, the lab writes them for c3's slice-dns, which re-reads its file) until c3's \
         slice-dns, asked from a pod in c3 after every round, answers `db.shop.svc.clusterset.local` without \
         it; then back. A cluster's resolver may keep an answer for the records' TTL (5 s) on top of this. \
         {} rounds.\n\n{}\n\n{command}\n{CONVERGENCE_END}\n",
        joins.len(),
        convergence_table(joins),
        names.len(),
        names_table(names)
    )
}

fn measure_labs(options: &Options) -> Result<Figures> {
    let nodes = if options.run_path { 2 } else { 1 };
    eprintln!(
        "slicenet-bench: building lab {SLICE_LAB} ({nodes} node(s), slice-cni chained){}",
        if options.run_cri { format!(" and lab {PLAIN_LAB} (1 node, without slice-cni)") } else { String::new() }
    );
    let t = Instant::now();
    let (slice_lab, plain_lab) = std::thread::scope(|s| {
        let plain = options.run_cri.then(|| s.spawn(|| build_lab(PLAIN_LAB, LabOptions::without_slice_cni(), 1)));
        let slice_lab = build_lab(SLICE_LAB, LabOptions::default(), nodes);
        let plain_lab = plain.map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("building lab {PLAIN_LAB} panicked"))));
        (slice_lab, plain_lab)
    });
    let slice_lab = slice_lab?;
    let plain_lab = plain_lab.transpose()?;
    let cluster = slice_lab.cluster("c1");
    cluster.start_agents(&[LabSlice::new(SLICE, SLICE_VNI, SLICE_SUBNET, &[cni::MEMBER_NAMESPACE])])?;
    for node in cluster.nodes() {
        node.wait_slice_ready(SLICE, Duration::from_secs(60))?;
    }
    eprintln!("slicenet-bench: labs up in {:.1} s", t.elapsed().as_secs_f64());

    let mut figures = Figures::default();
    let n1 = cluster.node("n1");
    if options.run_cni {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 1. CNI ADD/DEL, {} iterations (+5 warm-up)", options.cni_iterations);
        let work = slice_lab.root().join("bench-cni");
        let netns_prefix = format!("{SLICE_LAB}-");
        let f = cni::run(n1, &work, &netns_prefix, options.cni_iterations)?;
        println!("{}", cni_table(&f));
        figures.cni = Some(f);
    }
    if let Some(plain_lab) = &plain_lab {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 2. RunPodSandbox, {} pods per lab (+2 warm-up), interleaved", options.pods);
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("cannot build a tokio runtime")?,
        );
        let f = cri::run((n1, SLICE_LAB), (plain_lab.node("c1", "n1"), PLAIN_LAB), options.pods, &rt)?;
        println!("{}", cri_table(&f));
        figures.cri = Some(f);
    }
    if options.run_path {
        process::check_interrupted()?;
        eprintln!("slicenet-bench: 3. pod to pod across nodes");
        let f = path::run(n1, cluster.node("n2"), options.iperf_seconds, options.iperf_runs, options.pings)?;
        println!("{}", path_table(&f));
        figures.path = Some(f);
    }

    eprintln!("slicenet-bench: tearing the labs down");
    let mut errors = Vec::new();
    if let Some(lab) = plain_lab
        && let Err(e) = lab.teardown()
    {
        errors.push(format!("{e:#}"));
    }
    if let Err(e) = slice_lab.teardown() {
        errors.push(format!("{e:#}"));
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(figures)
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn times(v: f64) -> String {
    format!("{v:.2}×")
}

fn row(what: &str, s: &Summary) -> String {
    format!("| {what} | {} | {} | {} | {} |\n", ms(s.p50), ms(s.p99), ms(s.mean), s.n)
}

fn ratio_row(what: &str, a: &Summary, b: &Summary) -> String {
    format!(
        "| {what} | {} | {} | {} | |\n",
        times(ratio(a.p50, b.p50)),
        times(ratio(a.p99, b.p99)),
        times(ratio(a.mean, b.mean))
    )
}

fn cni_table(f: &cni::CniFigures) -> String {
    let mut t = String::from(
        "### 1. CNI ADD/DEL latency (plugin process spawn to exit, in the node's namespace, no nsenter)\n\n\
         | invocation | p50 ms | p99 ms | mean ms | n |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    t += &row("`bridge` + `host-local` ADD (reference)", &f.bridge_add);
    t += &row("`slice-cni` ADD, chained (member pod: veth, IPAM, routes)", &f.slice_add);
    t += &ratio_row("**ADD ratio slice-cni / bridge**", &f.slice_add, &f.bridge_add);
    t += &row("`bridge` + `host-local` DEL (reference)", &f.bridge_del);
    t += &row("`slice-cni` DEL, chained", &f.slice_del);
    t += &ratio_row("**DEL ratio slice-cni / bridge**", &f.slice_del, &f.bridge_del);
    t += &row("*floor:* `/bin/true`", &f.spawn_true);
    t += &row("*floor:* `bridge` VERSION", &f.bridge_version);
    t += &row("*floor:* `slice-cni` VERSION", &f.slice_version);
    t += &row("`slice-cni` ADD, pod in no slice (config + node state, no netlink)", &f.slice_add_skip);
    let _ = write!(
        t,
        "\nWhere `slice-cni`'s ADD goes (differences of p50s, rough):\n\n\
         | part | ms |\n| --- | ---: |\n\
         | process start-up (exec, dynamic linking, Rust runtime) = VERSION | {} |\n\
         | config, `runtimeConfig`, node-state files, membership = no-slice ADD − VERSION | {} |\n\
         | IPAM (file lock, two renames), two netlink handles (one per namespace), veth, address, \
         routes = member ADD − no-slice ADD | {} |\n",
        ms(f.slice_version.p50),
        ms(f.slice_add_skip.p50 - f.slice_version.p50),
        ms(f.slice_add.p50 - f.slice_add_skip.p50)
    );
    let goal = f.slice_add.p50 <= 5.0;
    let no_slower = f.slice_add.p50 <= f.bridge_add.p50;
    let _ = write!(
        t,
        "\nGoal p50 ADD ≤ 5 ms: **{}** ({} ms). No slower than the reference plugins: **{}** \
         (p50 {} vs {} ms).\n",
        if goal { "met" } else { "not met" },
        ms(f.slice_add.p50),
        if no_slower { "yes" } else { "no" },
        ms(f.slice_add.p50),
        ms(f.bridge_add.p50)
    );
    t
}

fn cri_table(f: &cri::CriFigures) -> String {
    let mut t = String::from(
        "### 2. CRI RunPodSandbox through containerd, with and without slice-cni in the chain\n\n\
         | chain | mean ms | p50 ms | p99 ms | n |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    let line =
        |what: &str, s: &Summary| format!("| {what} | {} | {} | {} | {} |\n", ms(s.mean), ms(s.p50), ms(s.p99), s.n);
    let pct = |a: f64, b: f64| format!("{:+.1} %", added_percent(a, b));
    t += &line("`bridge` + `host-local` (reference)", &f.run_without);
    t += &line("`bridge` + `host-local` → `slice-cni` (member pod)", &f.run_with);
    let _ = writeln!(
        t,
        "| **added by slice-cni** | {} | {} | {} | |",
        pct(f.run_with.mean, f.run_without.mean),
        pct(f.run_with.p50, f.run_without.p50),
        pct(f.run_with.p99, f.run_without.p99)
    );
    t += &line("StopPodSandbox + RemovePodSandbox, reference", &f.remove_without);
    t += &line("StopPodSandbox + RemovePodSandbox, with slice-cni", &f.remove_with);
    let added = added_percent(f.run_with.mean, f.run_without.mean);
    let _ = write!(
        t,
        "\nGoal ≤ 10 % added to RunPodSandbox: **{}** (mean {:+.1} %, p50 {:+.1} %; {} ms absolute at p50).\n",
        if added <= 10.0 { "met" } else { "not met" },
        added,
        added_percent(f.run_with.p50, f.run_without.p50),
        ms(f.run_with.p50 - f.run_without.p50)
    );
    t
}

fn path_table(f: &path::PodToPod) -> String {
    let mut t = String::from(
        "### 3. Pod to pod across two nodes (one TCP stream, iperf3; ping -i 0.2)\n\n\
         | path | MTU | Gbit/s | runs (Gbit/s) | retransmits | RTT avg ms | RTT min / max / mdev ms |\n\
         | --- | ---: | ---: | --- | ---: | ---: | --- |\n",
    );
    let line = |what: &str, p: &path::PathFigures| {
        format!(
            "| {what} | {} | {:.2} | {} | {} | {:.3} | {:.3} / {:.3} / {:.3} |\n",
            p.mtu,
            p.mean_gbits(),
            p.gbits.iter().map(|g| format!("{g:.2}")).collect::<Vec<_>>().join(", "),
            p.retransmits,
            p.rtt[1],
            p.rtt[0],
            p.rtt[2],
            p.rtt[3]
        )
    };
    t += &line(
        if f.added_routes {
            "primary: `eth0` → `cni0` → node → underlay → node (host routes added by the bench)"
        } else {
            "primary: `eth0` → `cni0` → node → underlay → node"
        },
        &f.primary,
    );
    t += &line("slice: `slice0` → router netns → VXLAN → router netns", &f.slice);
    let _ = writeln!(
        t,
        "| **slice / primary** | | {} | | | {} | |",
        times(ratio(f.slice.mean_gbits(), f.primary.mean_gbits())),
        times(ratio(f.slice.rtt[1], f.primary.rtt[1]))
    );
    let cc: Vec<&str> = [f.primary.congestion.as_str(), f.slice.congestion.as_str()].into_iter().collect();
    let _ = write!(
        t,
        "\nCongestion control: {} (the namespaces' default here; BBR). Both ends and iperf3 share the \
         machine's CPUs, so these are CPU-cost figures: compare the ratio, not the absolute rate.\n",
        if cc[0] == cc[1] { cc[0].to_owned() } else { format!("{} / {}", cc[0], cc[1]) }
    );
    t
}

/// A section's table without its `###` heading (the report has its own).
fn body(table: &str) -> &str {
    table.split_once("\n\n").map_or(table, |(_, rest)| rest)
}

fn command_output(argv: &[&str]) -> String {
    process::run_ok(argv, Duration::from_secs(10)).map(|s| s.trim().to_owned()).unwrap_or_else(|_| "?".into())
}

/// The report: machine, versions, command, the tables and how each was measured.
fn report(options: &Options, f: &Figures, elapsed: Duration) -> Result<String> {
    let date = command_output(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]);
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let containerd = command_output(&["containerd", "--version"]);
    let plugins = command_output(&["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"]);
    let iperf = command_output(&["iperf3", "--version"]).lines().next().unwrap_or("?").to_owned();
    let mut r = String::new();
    let _ = write!(
        r,
        "# Benchmarks\n\n\
         Written by `slicenet-bench` (`e2e/src/bench.rs`); rerun with `make bench` to refresh. Figures \
         are measured, never asserted; compare only figures taken side by side in one run.\n\n\
         - Date: {date}\n\
         - Machine: {nproc} CPUs (`nproc`), {cpu}; kernel `{kernel}` (`uname -r`)\n\
         - Software: {containerd}; containernetworking-plugins {plugins}; {iperf}\n\
         - Command: `{}` (`make bench` runs `cargo build --release --workspace --bins && \
         SLICENET_BIN_DIR=$PWD/target/release target/release/slicenet-bench`)\n\
         - Samples: {} CNI iterations, {} pods per lab, {} × {} s iperf3 per path, {} pings per path; \
         whole run {:.0} s including lab set-up and teardown\n\
         - The machine may be shared with other work; sections 1–3 interleave their two sides and \
         sections 4 and 5 measure one path after the other (each gives the load average around the run), \
         so the ratios are the figures to compare\n\n",
        command_line(),
        options.cni_iterations,
        options.pods,
        options.iperf_runs,
        options.iperf_seconds,
        options.pings,
        elapsed.as_secs_f64()
    );
    r += "## Set-up\n\n\
          Two labs (`e2e` crate): clusters of network namespaces on this machine, one containerd per node \
          driven through its CRI exactly as a kubelet does, CNI chain `bridge` + `host-local` (Debian's \
          reference plugins). In lab `snbenchs` `slice-cni` is chained after `bridge` and real node agents \
          (`slice-operator node-agent`) run slice `bench` (VNI 4242, 10.80.0.0/16, node prefixes /26) with \
          namespace `bench` as its member; lab `snbenchp` has no `slice-cni` in its chain. Release builds.\n\n";
    if let Some(c) = &f.cni {
        r += "## 1. CNI ADD/DEL latency\n\n\
              Each iteration makes a fresh pod namespace and runs the chain a runtime runs for one pod: \
              `bridge` ADD (own bridge `bnch0`, `host-local` on its own subnet), `slice-cni` ADD with the \
              bridge's result as `prevResult` and `runtimeConfig` with the pod annotations, then DEL in \
              reverse order with the chain's result as `prevResult`. Each plugin is a fresh process with \
              the `CNI_*` environment and its configuration on stdin, spawned from a thread that entered \
              the node's namespace (`setns`), timed from just before the spawn to the reaped exit with \
              stdout read; no `nsenter` in the timing. `slice-cni` works on the node state, router \
              namespace and IPAM dir the node agent of lab node `n1` made. Five warm-up iterations are \
              not counted. The floors show what starting a process and answering VERSION cost; the \
              no-slice ADD (same pod, namespace in no slice) is `slice-cni` without IPAM or netlink, so \
              full ADD − no-slice ADD is roughly what the veth, addresses and routes cost.\n\n";
        r += body(&cni_table(c));
        r += "\nNotes (from an `strace -f -T` of single invocations, outside the timed run, so only the \
              proportions mean anything): beyond start-up and files (table above), a member ADD spends its time \
              on netlink: two handles \
              (router and pod namespace), each set up on a thread that enters the namespace and builds a \
              runtime and socket before joining, together about as long as the kernel's veth creation \
              (`RTM_NEWLINK` with the peer placed in the pod, the single most expensive call), then a \
              dozen request/ack round trips (address, link up, two pod routes, router route, four link \
              lookups by name). Both plugins' DEL is dominated by the kernel deleting a veth: the \
              `RTM_DELLINK` alone took 5–31 ms (netdevice unregistration waits for RCU grace periods), \
              which no plugin can avoid except by not deleting.\n\n";
    }
    if let Some(c) = &f.cri {
        r += "## 2. CRI RunPodSandbox with and without slice-cni\n\n\
              One node of each lab, the same kubelet-like sandbox configs (namespace `bench`), pods \
              interleaved one by one between the labs with the order alternating, two warm-up pods each. \
              Only the RunPodSandbox call is timed (containerd: netns, CNI chain, pause container via \
              runc); each pod is then stopped and removed before the next, so every call sees an empty \
              node. The first pod of each lab is checked to have (or lack) `slice0`.\n\n";
        r += body(&cri_table(c));
        if let Some(n) = &f.cni {
            let added = c.run_with.p50 - c.run_without.p50;
            let around = added - n.slice_add.p50;
            let containerd = if around > 0.5 {
                format!(
                    "containerd adds about {} ms around one more plugin in the chain (its exec of the plugin, \
                     its result cache, the larger result)",
                    ms(around)
                )
            } else {
                "the time added to RunPodSandbox is no more than the plugin's own ADD (within this run's \
                 noise): containerd adds nothing measurable around one more plugin"
                    .to_owned()
            };
            let _ = write!(
                r,
                "\nFor scale: `slice-cni`'s own ADD is {} ms at p50 (section 1) and RunPodSandbox grew by {} ms \
                 at p50, so {containerd}. StopPodSandbox + RemovePodSandbox grow by {} ms at p50: `slice-cni` \
                 DEL deletes the pod's slice veth, and deleting a veth costs the kernel a netdevice \
                 unregistration (the same cost `bridge` DEL pays for `eth0`, {} ms at p50 in section 1).\n",
                ms(n.slice_add.p50),
                ms(added),
                ms(c.remove_with.p50 - c.remove_without.p50),
                ms(n.bridge_del.p50),
            );
        }
        r += "\n";
    }
    if let Some(p) = &f.path {
        r += "## 3. Pod to pod across nodes\n\n\
              Two member pods of slice `bench` on nodes `n1` and `n2` of lab `snbenchs`. The slice path \
              is `slice0` → veth → router namespace → VXLAN (socket in the node namespace, over the \
              underlay bridge) → the peer's router namespace → veth → pod. The primary path is `eth0` → \
              `cni0` → node namespace → underlay bridge → node → `cni0` → pod; the lab routes no pod CIDR \
              between nodes, so the bench adds a host route per node to the other node's pod CIDR via its \
              underlay address for this section and removes it afterwards (no encapsulation on that path: \
              it is the routed baseline, MTU 1500). iperf3: one TCP stream, `iperf3 -s -1` in the server \
              pod, `iperf3 -c … -t T -J` from the client pod, both through `nsenter`; runs alternate \
              between the paths; the table shows received Gbit/s. ping: `ping -c N -i 0.2`.\n\n";
        r += body(&path_table(p));
        r += "\n";
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>> {
        Options::parse(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn options() {
        assert_eq!(parse(&[]).unwrap().unwrap(), Options::default());
        assert_eq!(parse(&["--help"]).unwrap(), None);
        let quick = parse(&["--quick"]).unwrap().unwrap();
        assert_eq!((quick.cni_iterations, quick.pods, quick.doc), (30, 10, None));
        let o = parse(&["--quick", "--pods=5", "--only", "cni,path", "--doc", "x.md"]).unwrap().unwrap();
        assert_eq!(
            (o.pods, o.run_cni, o.run_cri, o.run_path, o.run_tunnel, o.run_across),
            (5, true, false, true, false, false)
        );
        assert!(parse(&["--only", "across"]).unwrap().unwrap().run_across);
        assert_eq!(o.doc, Some(PathBuf::from("x.md")));
        assert!(parse(&["--pods", "x"]).is_err());
        assert!(parse(&["--pods"]).is_err());
        assert!(parse(&["--only", "foo"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--pings", "0"]).is_err());
    }
}
