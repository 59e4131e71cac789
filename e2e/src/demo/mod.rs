//! The `make demo` scenario (`slicectl lab demo`), part one: two slices with the *same* subnet on a
//! 1-cluster 2-node lab, pods in and out of them, a reachability matrix checked against what
//! slicenet promises, and the nodes' status table. Also the status table itself, shared with
//! `slicectl status`. Part two, one slice across three clusters, is [`crate::demo_across`]; part
//! three, a slice from YAML, [`crate::demo_yaml`]; part four, a dual-stack slice over an IPv6 WAN,
//! [`crate::demo_dual`].
//!
//! | slice | VNI | subnet | member namespaces |
//! | --- | --- | --- | --- |
//! | blue | 100 | 10.80.0.0/16 | shop |
//! | red | 200 | 10.80.0.0/16 | bank |
//!
//! Pods: `shop/web` (n1), `shop/api` (n2), `bank/ledger` (n1), `bank/vault` (n2), `plain/tools`
//! (n1, in no slice) and `shop/excluded` (n2, opted out with `slicenet.io/exclude: "true"`).
//!
//! Reachability is checked twice per cell: `ping` to the target's slice address, and a TCP
//! "who are you" probe to the same address (every slice pod runs a tiny identity server on its
//! slice address). Since blue and red hand out the same addresses, a ping can be answered by a
//! *different* pod of the source's own slice (or the source itself); a cell is ✓ only when the
//! target itself answered.

pub mod across;
pub mod dual;
pub mod yaml;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use slice_api::NodeState;
use slice_api::names::EXCLUDE_KEY;

use crate::{Lab, LabSlice, Pod, PodSpec};

/// The demo lab's prefix.
pub const PREFIX: &str = "demo";
/// Port of the identity server each slice pod runs on its slice address.
const WHOAMI_PORT: u16 = 7777;
const SLICE_IF: &str = slice_api::names::DEFAULT_SLICE_INTERFACE;

/// The demo's slices.
pub fn slices() -> Vec<LabSlice> {
    vec![LabSlice::new("blue", 100, "10.80.0.0/16", &["shop"]), LabSlice::new("red", 200, "10.80.0.0/16", &["bank"])]
}

/// One demo pod: where it runs, what it is, and which slice it should be on.
struct PodPlan {
    node: &'static str,
    namespace: &'static str,
    name: &'static str,
    exclude: bool,
    /// The slice slicenet should put it on (None: no `slice0`).
    slice: Option<&'static str>,
    why: &'static str,
}

const PODS: [PodPlan; 6] = [
    PodPlan { node: "n1", namespace: "shop", name: "web", exclude: false, slice: Some("blue"), why: "shop ∈ blue" },
    PodPlan { node: "n2", namespace: "shop", name: "api", exclude: false, slice: Some("blue"), why: "shop ∈ blue" },
    PodPlan { node: "n1", namespace: "bank", name: "ledger", exclude: false, slice: Some("red"), why: "bank ∈ red" },
    PodPlan { node: "n2", namespace: "bank", name: "vault", exclude: false, slice: Some("red"), why: "bank ∈ red" },
    PodPlan { node: "n1", namespace: "plain", name: "tools", exclude: false, slice: None, why: "plain is in no slice" },
    PodPlan {
        node: "n2",
        namespace: "shop",
        name: "excluded",
        exclude: true,
        slice: None,
        why: "opted out: slicenet.io/exclude=\"true\"",
    },
];

/// A running demo pod.
struct DemoPod {
    plan: &'static PodPlan,
    pod: Pod,
    eth0: Ipv4Addr,
    slice0: Option<Ipv4Addr>,
}

impl DemoPod {
    fn label(&self) -> String {
        format!("{}/{}", self.plan.namespace, self.plan.name)
    }
}

/// `make demo`: builds the lab (prefix [`PREFIX`]), shows pods, reachability and status, tears
/// the lab down.
///
/// # Errors
/// When the lab cannot be built, or any reachability cell differs from the expectation.
pub fn run() -> Result<()> {
    run_with_prefix(PREFIX)
}

/// [`run`] under another lab prefix (tests run it beside other labs).
///
/// # Errors
/// See [`run`].
pub fn run_with_prefix(prefix: &str) -> Result<()> {
    let started = Instant::now();
    let (lab, pods) = build(prefix)?;
    let servers = WhoamiServers::start(&pods)?;
    let mismatches = reachability(&pods);
    servers.stop();
    println!();
    print_status(&lab, &pods)?;
    println!("\n▶ Tearing the lab down (CNI DEL for every pod, agents, containerd, namespaces)…");
    let t = Instant::now();
    lab.teardown()?;
    println!("  done in {:.1} s (whole demo {:.1} s)", t.elapsed().as_secs_f64(), started.elapsed().as_secs_f64());
    if mismatches > 0 {
        bail!("{mismatches} reachability cell(s) differ from what slicenet promises");
    }
    crate::demo_across::run(&format!("{prefix}x"))?;
    crate::demo_yaml::run(&format!("{prefix}y"))?;
    crate::demo_dual::run(&format!("{prefix}6"))
}

/// `slicectl lab up`: builds the demo lab and its pods and leaves them running (the processes
/// and namespaces outlive this call); `slicectl lab down --prefix <prefix>` removes them.
///
/// # Errors
/// When the lab cannot be built.
pub fn up(prefix: &str) -> Result<()> {
    let (lab, pods) = build(prefix)?;
    println!();
    print_status(&lab, &pods)?;
    println!("\nThe lab stays up. Try, for example:");
    let web = pods.iter().find(|p| p.plan.name == "web").context("no web pod")?;
    if let Some(api) = pods.iter().find(|p| p.plan.name == "api").and_then(|p| p.slice0) {
        println!("  nsenter --net={} ping -c2 {api}     # shop/web → shop/api over blue", web.pod.netns_path.display());
    }
    println!("  ip netns list | grep ^{prefix}-");
    println!("  target/debug/slicectl lab down --prefix {prefix}");
    // Leave every process and namespace running: no teardown.
    std::mem::forget(lab);
    Ok(())
}

fn build(prefix: &str) -> Result<(Lab, Vec<DemoPod>)> {
    println!("slicenet demo: two slices with the same subnet, isolated from each other\n");
    println!("▶ Building lab {prefix:?}: 1 cluster (c1) × 2 nodes (n1, n2), each node a network namespace");
    println!("  with its own containerd; pods are real CRI sandboxes; CNI chain bridge+host-local → slice-cni");
    let t = Instant::now();
    let mut lab = Lab::new(prefix)?;
    lab.add_cluster("c1", 2)?;
    println!("  up in {:.1} s", t.elapsed().as_secs_f64());

    let slices = slices();
    println!("\n▶ Starting the node agents with {} slices:", slices.len());
    for s in &slices {
        println!(
            "  {:<5} VNI {:<4} subnet {}  member namespaces: {}",
            s.name,
            s.vni,
            s.subnet,
            s.namespaces.join(", ")
        );
    }
    let t = Instant::now();
    let cluster = lab.cluster("c1");
    cluster.start_agents(&slices)?;
    for node in cluster.nodes() {
        for s in &slices {
            node.wait_slice_ready(&s.name, Duration::from_secs(30))?;
        }
    }
    println!(
        "  router namespaces, VXLANs and node-state files ready on both nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    println!("\n▶ Creating pods through containerd's CRI (RunPodSandbox, as a kubelet does):");
    let mut pods = Vec::new();
    for plan in &PODS {
        let mut spec = PodSpec::new(plan.namespace, plan.name);
        if plan.exclude {
            spec = spec.annotation(EXCLUDE_KEY, "true");
        }
        let pod = lab.node("c1", plan.node).run_pod(spec)?;
        let eth0 = pod.ipv4("eth0")?;
        let slice0 = if has_link(&pod, SLICE_IF)? { Some(pod.ipv4(SLICE_IF)?) } else { None };
        pods.push(DemoPod { plan, pod, eth0, slice0 });
    }
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            vec![
                p.label(),
                p.plan.node.to_string(),
                p.eth0.to_string(),
                p.slice0.map_or("—".into(), |a| format!("{a}/32")),
                p.plan.slice.unwrap_or("—").to_string(),
                p.plan.why.to_string(),
            ]
        })
        .collect();
    print!("{}", indent(&table(&["pod", "node", "eth0", "slice0", "slice", "why"], &rows)));
    let mut wrong = Vec::new();
    for p in &pods {
        if p.slice0.is_some() != p.plan.slice.is_some() {
            wrong.push(p.label());
        }
    }
    if !wrong.is_empty() {
        bail!("pods with the wrong slice0: {}", wrong.join(", "));
    }
    let same: Vec<String> = pods
        .iter()
        .filter_map(|a| {
            let addr = a.slice0?;
            let twin = pods.iter().find(|b| b.plan.slice != a.plan.slice && b.slice0 == Some(addr))?;
            (a.plan.slice < twin.plan.slice).then(|| format!("{} and {} both have {addr}", a.label(), twin.label()))
        })
        .collect();
    if !same.is_empty() {
        println!("  Note: the slices share 10.80.0.0/16, so addresses repeat across slices: {}.", same.join("; "));
    }
    Ok((lab, pods))
}

fn has_link(pod: &Pod, ifname: &str) -> Result<bool> {
    Ok(pod.exec(&["ip", "link", "show", "dev", ifname])?.status.success())
}

/// Prints the matrix; returns the number of cells that differ from the expectation.
fn reachability(pods: &[DemoPod]) -> usize {
    let targets: Vec<&DemoPod> = pods.iter().filter(|p| p.slice0.is_some()).collect();
    println!("\n▶ Reachability over the slice addresses (ping -c2 to the target's slice0 address, then a TCP");
    println!("  \"who are you?\" to the same address: ✓ only when the target itself answered)");
    let cells: Vec<(usize, &DemoPod)> = pods
        .iter()
        .enumerate()
        .flat_map(|(i, from)| targets.iter().filter(move |to| to.pod != from.pod).map(move |to| (i, *to)))
        .collect();
    // Probes in parallel: a failing ping waits for its timeout.
    let results: Vec<Probe> = std::thread::scope(|s| {
        let handles: Vec<_> = cells.iter().map(|(i, to)| s.spawn(|| probe(&pods[*i], to))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut rows = Vec::new();
    let mut mismatches = 0;
    for ((i, to), result) in cells.iter().zip(&results) {
        let from = &pods[*i];
        let expected = from.plan.slice.is_some() && from.plan.slice == to.plan.slice;
        let reached = result.ping && result.answered_by.as_deref() == Some(&to.label());
        let ok = reached == expected;
        if !ok {
            mismatches += 1;
        }
        let answered = match (&result.answered_by, result.ping) {
            (Some(who), _) if *who == to.label() => who.clone(),
            (Some(who), _) => format!("{who} (not the target)"),
            (None, true) => "ping only".into(),
            (None, false) => "nobody".into(),
        };
        rows.push(vec![
            from.label(),
            to.label(),
            to.slice0.map(|a| a.to_string()).unwrap_or_default(),
            mark(result.ping).into(),
            answered,
            mark(reached).into(),
            mark(expected).into(),
            if ok { "ok".into() } else { "MISMATCH".into() },
        ]);
    }
    print!("{}", indent(&table(&["from", "to", "address", "ping", "answered by", "reached", "expected", ""], &rows)));

    // The same as a compact grid.
    println!("\n  reached (rows: from, columns: to; expected in brackets when it differs):");
    let mut grid_rows = Vec::new();
    for (i, from) in pods.iter().enumerate() {
        let mut row = vec![from.label()];
        for to in &targets {
            let cell = cells.iter().zip(&results).find(|((ci, t), _)| *ci == i && t.pod == to.pod);
            row.push(match cell {
                None => "·".into(),
                Some((_, r)) => {
                    let expected = from.plan.slice.is_some() && from.plan.slice == to.plan.slice;
                    let reached = r.ping && r.answered_by.as_deref() == Some(&to.label());
                    if reached == expected {
                        mark(reached).into()
                    } else {
                        format!("{} [{}]", mark(reached), mark(expected))
                    }
                }
            });
        }
        grid_rows.push(row);
    }
    let mut headers = vec!["from \\ to".to_string()];
    headers.extend(targets.iter().map(|t| t.label()));
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    print!("{}", indent(&table(&headers, &grid_rows)));
    println!();
    if mismatches == 0 {
        println!(
            "✓ All {} cells match: each slice reaches itself across nodes, blue and red never reach each other, \
             pods outside slices reach nobody.",
            rows.len()
        );
    } else {
        println!("✗ {mismatches} of {} cells differ from the expectation.", rows.len());
    }
    mismatches
}

fn mark(b: bool) -> &'static str {
    if b { "✓" } else { "✗" }
}

#[derive(Debug, Default, Clone)]
struct Probe {
    ping: bool,
    answered_by: Option<String>,
}

fn probe(from: &DemoPod, to: &DemoPod) -> Probe {
    let Some(addr) = to.slice0 else { return Probe::default() };
    let ping = from
        .pod
        .exec(&["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", &addr.to_string()])
        .is_ok_and(|o| o.status.success());
    let answered_by = whoami(&from.pod.netns_path, addr).ok();
    Probe { ping, answered_by }
}

/// Asks `addr:WHOAMI_PORT` who it is, from inside the namespace at `netns`.
fn whoami(netns: &Path, addr: Ipv4Addr) -> Result<String> {
    let file = std::fs::File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    std::thread::spawn(move || -> Result<String> {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let target = SocketAddr::V4(SocketAddrV4::new(addr, WHOAMI_PORT));
        let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut name = String::new();
        stream.read_to_string(&mut name)?;
        Ok(name)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("whoami thread panicked"))?
}

/// One identity server per slice pod, on its slice address, in its namespace.
struct WhoamiServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl WhoamiServers {
    fn start(pods: &[DemoPod]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for p in pods {
            let Some(addr) = p.slice0 else { continue };
            let file = std::fs::File::open(&p.pod.netns_path)?;
            let (name, stop) = (p.label(), stop.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                let bound = nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| Ok(TcpListener::bind(SocketAddrV4::new(addr, WHOAMI_PORT))?));
                let listener = match bound {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = listener.set_nonblocking(true);
                let _ = tx.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.write_all(name.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
            rx.recv_timeout(Duration::from_secs(5))
                .context("identity server did not start")?
                .with_context(|| format!("identity server of {}", p.label()))?;
        }
        Ok(Self { stop, threads })
    }

    /// Stops the servers (they hold the pods' namespaces open while they run).
    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn print_status(lab: &Lab, pods: &[DemoPod]) -> Result<()> {
    println!("▶ Status from each node's files (node-state files written by the agent, slice-cni's IPAM dir):");
    let names: BTreeMap<String, String> = pods.iter().map(|p| (p.pod.sandbox_id.clone(), p.label())).collect();
    let mut rows = Vec::new();
    for node in lab.cluster("c1").nodes() {
        rows.extend(node_status(node.name(), &node.state_dir(), &node.ipam_dir(), &names)?);
    }
    print!("{}", indent(&status_table(&rows)));
    Ok(())
}

/// One line of the status table: one slice on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub slice: String,
    pub vni: u32,
    pub subnet: IpNet,
    pub node: String,
    pub node_prefix: IpNet,
    pub router_address: IpAddr,
    pub router_netns: PathBuf,
    pub mtu: u32,
    pub namespaces: Vec<String>,
    /// `(address, pod)` of every attachment in the IPAM dir; the pod is its name when known,
    /// else the first 12 characters of its container id.
    pub pods: Vec<(IpAddr, String)>,
}

/// An address allocation read from `slice-cni`'s IPAM dir (`<ipam dir>/<slice>/<address>`, the
/// file holding container id, interface name and network name, one per line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamEntry {
    pub address: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// Reads the allocations of `slice` from an IPAM dir (missing dir: none), sorted by address.
///
/// # Errors
/// When the directory or a file cannot be read.
pub fn ipam_entries(ipam_dir: &Path, slice: &str) -> Result<Vec<IpamEntry>> {
    let dir = ipam_dir.join(slice);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let Some(address) = entry.file_name().to_str().and_then(|n| n.parse::<IpAddr>().ok()) else { continue };
        let body =
            std::fs::read_to_string(entry.path()).with_context(|| format!("cannot read {}", entry.path().display()))?;
        let mut lines = body.lines();
        out.push(IpamEntry {
            address,
            container_id: lines.next().unwrap_or_default().to_owned(),
            ifname: lines.next().unwrap_or_default().to_owned(),
        });
    }
    out.sort_by_key(|e| e.address);
    Ok(out)
}

/// The status of one node from its files: every node-state file under `state_dir`, with the
/// attachments of that slice in `ipam_dir`. `names` maps container (sandbox) ids to pod names.
///
/// # Errors
/// When a file cannot be read or parsed.
pub fn node_status(
    node: &str,
    state_dir: &Path,
    ipam_dir: &Path,
    names: &BTreeMap<String, String>,
) -> Result<Vec<StatusRow>> {
    let states = NodeState::load_all(state_dir)?;
    let mut rows = Vec::new();
    for s in states {
        let pods = ipam_entries(ipam_dir, &s.slice)?
            .into_iter()
            .map(|e| {
                let who =
                    names.get(&e.container_id).cloned().unwrap_or_else(|| e.container_id.chars().take(12).collect());
                (e.address, who)
            })
            .collect();
        rows.push(StatusRow {
            slice: s.slice,
            vni: s.vni,
            subnet: s.slice_subnet,
            node: node.to_owned(),
            node_prefix: s.node_prefix,
            router_address: s.router_address,
            router_netns: s.router_netns,
            mtu: s.mtu,
            namespaces: s.namespaces,
            pods,
        });
    }
    rows.sort_by(|a, b| (&a.slice, &a.node).cmp(&(&b.slice, &b.node)));
    Ok(rows)
}

/// The status table (sorted by slice, then node).
pub fn status_table(rows: &[StatusRow]) -> String {
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| (&a.slice, &a.node).cmp(&(&b.slice, &b.node)));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let pods = if r.pods.is_empty() {
                "—".to_string()
            } else {
                let list: Vec<String> = r.pods.iter().map(|(ip, who)| format!("{who} {ip}")).collect();
                format!("{}: {}", r.pods.len(), list.join(", "))
            };
            vec![
                r.slice.clone(),
                r.vni.to_string(),
                r.subnet.to_string(),
                r.node.clone(),
                r.node_prefix.to_string(),
                r.router_address.to_string(),
                r.mtu.to_string(),
                r.namespaces.join(","),
                pods,
            ]
        })
        .collect();
    if cells.is_empty() {
        return "no slices on this node (no node-state files)\n".into();
    }
    table(&["slice", "VNI", "subnet", "node", "node prefix", "router", "MTU", "namespaces", "pods attached"], &cells)
}

pub use slice_api::hub_view::table;

/// `text` with every line indented by two spaces (the demo's tables under their headings).
pub(crate) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_by_characters() {
        let t = table(&["a", "bb"], &[vec!["✓".into(), "x".into()], vec!["long".into(), "y".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "a     bb");
        assert_eq!(lines[2], "✓     x");
        assert_eq!(lines[3], "long  y");
    }

    #[test]
    fn status_from_files() {
        let state_dir = tempfile::tempdir().unwrap();
        let ipam_dir = tempfile::tempdir().unwrap();
        let state = NodeState {
            slice: "blue".into(),
            vni: 100,
            router_netns: "/run/netns/x-blue".into(),
            node_prefix: "10.80.0.0/26".parse().unwrap(),
            router_address: "10.80.0.1".parse().unwrap(),
            slice_subnet: "10.80.0.0/16".parse().unwrap(),
            mtu: 1450,
            namespaces: vec!["shop".into()],
            gateway_namespace: None,
            secondary: None,
        };
        state.store(state_dir.path()).unwrap();
        std::fs::create_dir_all(ipam_dir.path().join("blue")).unwrap();
        std::fs::write(ipam_dir.path().join("blue/10.80.0.3"), "abcdef0123456789\nslice0\nlab\n").unwrap();
        std::fs::write(ipam_dir.path().join("blue/10.80.0.2"), "feed\nslice0\nlab\n").unwrap();
        std::fs::write(ipam_dir.path().join("blue/.lock"), "").unwrap();
        let names = BTreeMap::from([("feed".to_string(), "shop/web".to_string())]);
        let rows = node_status("n1", state_dir.path(), ipam_dir.path(), &names).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].pods,
            vec![
                ("10.80.0.2".parse().unwrap(), "shop/web".to_string()),
                ("10.80.0.3".parse().unwrap(), "abcdef012345".to_string())
            ]
        );
        let text = status_table(&rows);
        assert!(text.contains("blue"), "{text}");
        assert!(text.contains("2: shop/web 10.80.0.2, abcdef012345 10.80.0.3"), "{text}");
        assert!(status_table(&[]).contains("no slices"));
    }
}
