//! Section 9: `slice-dns` against an authoritative anchor, Debian's Knot DNS (`knotd`), serving
//! the same records: `slice-dns --objects FILE` and `knotd` with the zone files that
//! `slice-dns --dump-zones` writes from that same file. Both run at once in one namespace made
//! for the section ([`NS`]), on 127.0.0.1 and 127.0.0.2; `dnsperf` runs there too and asks
//! each the same mix of questions, one server after the other:
//!
//! - as fast as they answer (`dnsperf -c 4 -T 2 -q 200`): queries per second;
//! - at a fixed 10,000 queries per second (`-Q 10000`, one client): the latency of every
//!   answer (`-v`), from which the p50 / p99 / max here are computed (dnsperf 2.10 prints only
//!   the mean).
//!
//! Every run is bounded by `-l` seconds and `-n` passes over the questions, and the process
//! by a deadline. The two servers, dnsperf and the kernel share this machine's CPUs: compare
//! the ratio.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::process;
use super::stats::{Summary, ratio};

/// The namespace of this section.
pub(crate) const NS: &str = "snbenchd";
pub(crate) const BEGIN: &str = "<!-- slicenet-bench dns: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench dns: end -->";
const SLICE_DNS: &str = "127.0.0.1";
const KNOT: &str = "127.0.0.2";
/// Services of each kind in the records.
const SERVICES: usize = 100;
/// The fixed rate of the latency runs.
const FIXED_QPS: u32 = 10_000;

/// What one server did.
#[derive(Debug, Clone)]
pub(crate) struct ServerFigures {
    pub(crate) name: &'static str,
    /// As fast as it answers.
    pub(crate) max: Run,
    /// At [`FIXED_QPS`].
    pub(crate) fixed: Run,
    /// Latency of each answer of the fixed-rate run.
    pub(crate) fixed_latency: Summary,
}

/// One dnsperf run's statistics.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Run {
    pub(crate) sent: u64,
    pub(crate) completed: u64,
    pub(crate) lost: u64,
    pub(crate) qps: f64,
    pub(crate) mean_ms: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct DnsSection {
    pub(crate) seconds: u32,
    pub(crate) records: usize,
    pub(crate) questions: usize,
    pub(crate) rows: Vec<ServerFigures>,
    pub(crate) versions: Vec<String>,
}

/// A process started in [`NS`], killed by its PID on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The namespace, deleted on drop (after the daemons, which are declared later and dropped
/// first where both live in one scope).
struct Netns;

impl Netns {
    fn new() -> Result<Self> {
        // Leftovers of a crashed run.
        let _ = Command::new("ip").args(["netns", "del", NS]).stderr(Stdio::null()).status();
        process::run_ok(&["ip", "netns", "add", NS], Duration::from_secs(10))?;
        let ns = Self;
        process::run_ok(&["ip", "-n", NS, "link", "set", "lo", "up"], Duration::from_secs(10))?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

fn start(argv: &[&str], log: &Path) -> Result<Daemon> {
    let log = std::fs::File::create(log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", NS])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", argv[0]))?;
    Ok(Daemon(child))
}

/// Waits until `server` answers the SOA of `clusterset.local`.
fn wait_answering(server: &str, daemon: &mut Daemon, log: &Path) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(status) = daemon.0.try_wait()? {
            bail!("the server at {server} exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        let out = Command::new("ip")
            .args(["netns", "exec", NS, "dig", &format!("@{server}"), "+short", "+tries=1", "+time=1"])
            .args(["clusterset.local", "SOA"])
            .output()?;
        if out.status.success() && !out.stdout.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the server at {server} did not answer within 30 s: {}", std::fs::read_to_string(log).unwrap_or_default())
}

/// The objects: [`SERVICES`] headless services with four endpoints in two clusters and as many
/// ClusterSetIP services with two named ports, over ten namespaces.
fn objects() -> String {
    let mut t = String::new();
    for i in 0..SERVICES {
        let ns = format!("ns{}", i % 10);
        let _ = write!(
            t,
            "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {{name: db{i}, namespace: {ns}}}\n\
             spec: {{type: Headless, ports: [{{name: pg, protocol: TCP, port: 5432}}]}}\n"
        );
        for (c, cluster) in ["east", "west"].iter().enumerate() {
            let _ = write!(
                t,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db{i}-{cluster}\n  namespace: {ns}\n  \
                 labels: {{multicluster.kubernetes.io/service-name: db{i}, multicluster.kubernetes.io/source-cluster: {cluster}}}\n\
                 addressType: IPv4\nendpoints:\n"
            );
            for pod in 0..2 {
                let _ = writeln!(
                    t,
                    "  - {{addresses: [\"10.80.{}.{}\"], hostname: db{i}-{pod}, conditions: {{ready: true}}}}",
                    c * 16 + i / 100,
                    (i % 100) * 2 + pod + 1
                );
            }
        }
        let _ = write!(
            t,
            "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {{name: api{i}, namespace: {ns}}}\n\
             spec: {{type: ClusterSetIP, ips: [\"10.80.255.{}\"], ports: [{{name: http, protocol: TCP, port: 80}}, \
             {{name: grpc, protocol: TCP, port: 9090}}]}}\n",
            i + 1
        );
        for (c, cluster) in ["east", "west"].iter().enumerate() {
            let _ = write!(
                t,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: api{i}-{cluster}\n  namespace: {ns}\n  \
                 labels: {{multicluster.kubernetes.io/service-name: api{i}, multicluster.kubernetes.io/source-cluster: {cluster}}}\n\
                 addressType: IPv4\nendpoints:\n  - {{addresses: [\"10.80.{}.{}\"], conditions: {{ready: true}}}}\n",
                c * 16 + 8,
                i + 1
            );
        }
    }
    t
}

/// The questions, in dnsperf's format (`name type` per line): answers of each kind (A of a
/// service in both zones, a pod's name, one cluster's endpoints, SRV, the version TXT), NODATA
/// and NXDOMAIN, in the proportions a resolver in front of pods would see roughly.
fn questions() -> Vec<String> {
    let mut q = Vec::new();
    for i in 0..SERVICES {
        let ns = format!("ns{}", i % 10);
        q.push(format!("db{i}.{ns}.svc.clusterset.local A"));
        q.push(format!("db{i}.{ns}.svc.slice.local A"));
        q.push(format!("db{i}-{}.east.db{i}.{ns}.svc.clusterset.local A", i % 2));
        q.push(format!("_pg._tcp.db{i}.{ns}.svc.clusterset.local SRV"));
        q.push(format!("api{i}.{ns}.svc.clusterset.local A"));
        q.push(format!("api{i}.{ns}.svc.slice.local A"));
        q.push(format!("west.api{i}.{ns}.svc.slice.local A"));
        q.push(format!("_http._tcp.api{i}.{ns}.svc.clusterset.local SRV"));
        // NODATA (a resolver's AAAA next to every A) and NXDOMAIN (search-path misses).
        q.push(format!("api{i}.{ns}.svc.clusterset.local AAAA"));
        q.push(format!("missing{i}.{ns}.svc.clusterset.local A"));
    }
    q.push("dns-version.clusterset.local TXT".to_owned());
    q
}

fn knot_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "server:\n    rundir: \"{d}/run\"\n    listen: {KNOT}@53\n\
         database:\n    storage: \"{d}/db\"\n\
         log:\n  - target: stderr\n    any: warning\n\
         template:\n  - id: default\n    storage: \"{d}\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\n    \
         journal-content: none\n\
         zone:\n  - domain: clusterset.local\n  - domain: slice.local\n"
    )
}

/// Runs dnsperf against `server`; with `rate`, at that rate and with every answer's latency.
fn dnsperf(server: &str, questions: &Path, seconds: u32, rate: Option<u32>) -> Result<(Run, Option<Summary>)> {
    let seconds_arg = seconds.to_string();
    let mut argv: Vec<String> =
        ["ip", "netns", "exec", NS, "dnsperf", "-s", server, "-d"].iter().map(|s| (*s).to_owned()).collect();
    argv.push(questions.display().to_string());
    argv.extend(["-l".into(), seconds_arg, "-n".into(), "1000".into(), "-t".into(), "2".into()]);
    match rate {
        Some(qps) => argv.extend(["-Q".into(), qps.to_string(), "-q".into(), "1000".into(), "-v".into()]),
        None => argv.extend(["-c", "4", "-T", "2", "-q", "200"].map(str::to_owned)),
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let (_, out) = process::timed(&mut cmd, b"", Duration::from_secs(u64::from(seconds) + 60))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "dnsperf against {server} failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    let run = parse_statistics(&text).with_context(|| format!("dnsperf against {server} printed:\n{text}"))?;
    ensure!(run.sent > 0 && run.completed > 0, "dnsperf against {server} had no answer:\n{text}");
    let latency = rate.map(|_| {
        let samples: Vec<Duration> = text
            .lines()
            .filter_map(|l| l.strip_prefix("> "))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .collect();
        Summary::of(&samples)
    });
    Ok((run, latency))
}

/// The statistics block dnsperf prints at the end.
fn parse_statistics(text: &str) -> Result<Run> {
    let field = |label: &str| -> Result<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
            .with_context(|| format!("no {label:?} line"))
    };
    let first = |s: &str| s.split_whitespace().next().unwrap_or_default().to_owned();
    Ok(Run {
        sent: first(field("Queries sent:")?).parse()?,
        completed: first(field("Queries completed:")?).parse()?,
        lost: first(field("Queries lost:")?).parse()?,
        qps: first(field("Queries per second:")?).parse()?,
        mean_ms: first(field("Average Latency (s):")?).parse::<f64>()? * 1e3,
    })
}

/// Runs section 9.
pub(crate) fn run(seconds: u32) -> Result<DnsSection> {
    let bin = crate::bin_dir().join("slice-dns");
    let dir = tempfile::Builder::new().prefix("snbenchd").tempdir()?;
    let d = dir.path();
    std::fs::write(d.join("objects.yaml"), objects())?;
    let dump = process::run_ok(
        &[
            bin.as_os_str(),
            "--objects".as_ref(),
            d.join("objects.yaml").as_os_str(),
            "--dump-zones".as_ref(),
            d.as_os_str(),
        ],
        Duration::from_secs(30),
    );
    dump.context("slice-dns --dump-zones")?;
    let mut records = 0;
    for zone in ["clusterset.local", "slice.local"] {
        let text = std::fs::read_to_string(d.join(format!("{zone}.zone")))?;
        records += text.lines().filter(|l| !l.starts_with(';')).count();
    }
    let questions = questions();
    let questions_file: PathBuf = d.join("questions.txt");
    std::fs::write(&questions_file, questions.join("\n") + "\n")?;
    std::fs::create_dir_all(d.join("run"))?;
    std::fs::write(d.join("knot.conf"), knot_config(d))?;

    let _ns = Netns::new()?;
    let slice_log = d.join("slice-dns.log");
    let knot_log = d.join("knotd.log");
    let objects = d.join("objects.yaml");
    let listen = format!("{SLICE_DNS}:53");
    let mut slice_dns =
        start(&[&bin.to_string_lossy(), "--objects", &objects.to_string_lossy(), "--listen", &listen], &slice_log)?;
    let mut knot = start(&["knotd", "-c", &d.join("knot.conf").to_string_lossy()], &knot_log)?;
    wait_answering(SLICE_DNS, &mut slice_dns, &slice_log)?;
    wait_answering(KNOT, &mut knot, &knot_log)?;
    // Both give the same answers to the same questions (first line of each, as a check that
    // the comparison is of like with like).
    for q in [&questions[0], &questions[3], &questions[9]] {
        let (name, rtype) = q.split_once(' ').expect("name type");
        let answer = |server: &str| -> Result<String> {
            let out = process::run_ok(
                &[
                    "ip",
                    "netns",
                    "exec",
                    NS,
                    "dig",
                    &format!("@{server}"),
                    "+noall",
                    "+answer",
                    "+authority",
                    name,
                    rtype,
                ],
                Duration::from_secs(10),
            )?;
            let mut lines: Vec<String> = out
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|l| !l.is_empty())
                .collect();
            lines.sort();
            Ok(lines.join("\n"))
        };
        let (ours, theirs) = (answer(SLICE_DNS)?, answer(KNOT)?);
        ensure!(ours == theirs, "{q}: slice-dns answers\n{ours}\nKnot answers\n{theirs}");
    }

    let mut rows = Vec::new();
    for (name, server) in [("Knot DNS (knotd)", KNOT), ("slice-dns", SLICE_DNS)] {
        process::check_interrupted()?;
        eprintln!(
            "slicenet-bench: 9. dnsperf against {name}: {seconds} s as fast as it answers, {seconds} s at {FIXED_QPS}/s"
        );
        let (max, _) = dnsperf(server, &questions_file, seconds, None)?;
        let (fixed, latency) = dnsperf(server, &questions_file, seconds, Some(FIXED_QPS))?;
        rows.push(ServerFigures { name, max, fixed, fixed_latency: latency.unwrap_or(Summary::of(&[])) });
    }
    drop(slice_dns);
    drop(knot);
    let versions = vec![
        super::command_output(&["knotd", "--version"]),
        super::command_output(&["dnsperf", "-h"])
            .lines()
            .find(|l| l.starts_with("Version"))
            .map_or("dnsperf ?".into(), |v| format!("dnsperf {v}")),
    ];
    Ok(DnsSection { seconds, records, questions: questions.len(), rows, versions })
}

fn fmt_ms(v: f64) -> String {
    format!("{v:.3}")
}

/// The markdown table of section 9 with its heading.
pub(crate) fn table(s: &DnsSection) -> String {
    let mut t = format!(
        "### 9. slice-dns against Knot DNS ({} records, {} questions, dnsperf -l {})\n\n",
        s.records, s.questions, s.seconds
    );
    t += "| server | max queries/s | lost | mean ms | at 10,000/s: achieved | lost | p50 ms | p99 ms | max ms |\n";
    t += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for r in &s.rows {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} |",
            r.name,
            r.max.qps,
            r.max.lost,
            fmt_ms(r.max.mean_ms),
            r.fixed.qps,
            r.fixed.lost,
            fmt_ms(r.fixed_latency.p50),
            fmt_ms(r.fixed_latency.p99),
            fmt_ms(r.fixed_latency.max)
        );
    }
    if let [anchor, ours] = s.rows.as_slice() {
        let share = ratio(ours.max.qps, anchor.max.qps);
        let _ = write!(
            t,
            "\n**slice-dns / Knot: {share:.2}× the rate** (goal ≥ 0.5×: {}); p99 at 10,000/s {} ms (goal < 1 ms: {}).\n",
            if share >= 0.5 { "met" } else { "not met" },
            fmt_ms(ours.fixed_latency.p99),
            if ours.fixed_latency.p99 < 1.0 && ours.fixed.lost == 0 { "met" } else { "not met" }
        );
    }
    t
}

/// The section as it goes into `docs/benchmarks.md`, between [`BEGIN`] and [`END`].
pub(crate) fn doc_section(s: &DnsSection, command: &str) -> String {
    let mut r = format!("{BEGIN}\n## 9. slice-dns against Knot DNS\n\n");
    let _ = write!(
        r,
        "The same records in both servers: `slice-dns --objects` (release build) serves a file of {SERVICES} \
         headless services (two endpoints in each of two clusters, a named port) and {SERVICES} ClusterSetIP \
         services (two named ports) over ten namespaces; `knotd` serves the zone files `slice-dns --dump-zones` \
         wrote from that file (`clusterset.local`, `slice.local`; PTR records are not in the mix). Both run at \
         once in the namespace `{NS}` ({SLICE_DNS} and {KNOT}) with their default threads; `dnsperf` runs there \
         too and sends the same {} questions (A of services in both zones, pod names, one cluster's endpoints, \
         SRV, the version TXT, AAAA that is NODATA, NXDOMAIN), first to Knot, then to slice-dns: as fast as \
         each answers (`-c 4 -T 2 -q 200`), then at a fixed 10,000 queries/s (`-Q 10000`, one client) with \
         every answer's latency printed (`-v`), from which p50/p99/max are computed (dnsperf 2.10 prints only \
         the mean). Before measuring, three answers are compared between the servers and must be equal. Both \
         servers, dnsperf and the kernel share this machine's two CPUs: these are CPU-cost figures, compare the \
         ratio. Software: {}. {command}\n\n",
        s.questions,
        s.versions.join("; ")
    );
    r += super::body(&table(s));
    r += &format!("{END}\n");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dnsperfs_statistics() {
        let text = "Statistics:\n\n  Queries sent:         76778\n  Queries completed:    76772 (99.99%)\n  \
                    Queries lost:         6 (0.01%)\n\n  Queries per second:   25549.072776\n\n  \
                    Average Latency (s):  0.007336 (min 0.000083, max 0.024658)\n";
        let r = parse_statistics(text).unwrap();
        assert_eq!((r.sent, r.completed, r.lost), (76778, 76772, 6));
        assert!((r.qps - 25549.072776).abs() < 1e-6 && (r.mean_ms - 7.336).abs() < 1e-9);
        assert!(parse_statistics("nothing").is_err());
    }

    #[test]
    fn the_questions_name_the_objects_services() {
        let objects = objects();
        let q = questions();
        assert_eq!(q.len(), SERVICES * 10 + 1);
        assert!(objects.contains("name: db7, namespace: ns7"));
        assert!(q.contains(&"db7.ns7.svc.clusterset.local A".to_owned()));
    }
}
