//! Section 10: MultiNetworkPolicy on the slice path, at 1,000 and 10,000 pods × 100 policies.
//!
//! 1. **Compile + apply** on one node, the node agent's own steps: `slice_node::firewall::table`
//!    (pure) on a slice whose pod directory holds N pods (100 of them on this node) and 100
//!    policies, `dataplane::nft::replace_table` (one `nft -j -f` transaction) into a namespace
//!    made for the section ([`NS`]), and the listing the agent compares with what it built
//!    (`nft -j list table`, put in canonical order) — checked equal, or the agent would apply
//!    again on every pass.
//! 2. **A label change to enforcement on another cluster's node**, through the whole control
//!    plane in the three-cluster lab ([`LAB`]): a pod in c2 gains the label a policy of c1
//!    admits; the time runs from the change being written to c2's API to the first new TCP
//!    connection from that pod that c1's node admits (a new connection attempt every 10 ms, so
//!    the first completed one marks the rules in force). The pod directory holds N pods: the
//!    lab's real pods and simulated Pod objects in every cluster's API (running, on a lab node,
//!    with a slice address in that node's prefix) that the lab's kubelet leaves alone, so
//!    every worker, the hub and every node agent handle N pods.
//! 3. **Throughput through the router** between two pods of c1 on different nodes (iperf3, one
//!    TCP stream), with the 100 policies in force (a 10,000-pod directory, the server isolated
//!    for ingress, iperf3 allowed by one of its rules) and with no policy at all, runs
//!    alternating.
//!
//! Everything runs in namespaces made for the section; nothing leaves them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ipnet::{IpNet, Ipv4Net};
use serde_json::{Value, json};
use slice_api::node::SliceOnNode;

use super::process::check_interrupted;
use super::stats::{Summary, added_percent};
use crate::control::{self, ControlPlane, SIMULATED_ANNOTATION};
use crate::{Lab, Pod};

/// The three-cluster lab of part 2 and 3.
pub(crate) const LAB: &str = "snbenchy";
/// The namespace part 1 applies its tables in.
pub(crate) const NS: &str = "snbenchy-fw";
pub(crate) const BEGIN: &str = "<!-- slicenet-bench policy: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench policy: end -->";
/// Pod directory sizes measured.
pub(crate) const SIZES: [usize; 2] = [1_000, 10_000];
/// Policies in force.
const POLICIES: usize = 100;
/// Namespaces of the simulated pods (`s0`…).
const SIM_NAMESPACES: usize = 10;
/// Distinct `app` labels (a Deployment each, per namespace).
const APPS: usize = 50;
/// This node's pods in part 1.
const LOCAL_PODS: usize = 100;
const SLICE: &str = "blue";
/// The port the target admits clients on, and iperf3's.
const TARGET_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
/// How long a label change may take before the section gives up.
const ENFORCE_DEADLINE: Duration = Duration::from_secs(120);

/// Part 1 at one size.
#[derive(Debug, Clone)]
pub(crate) struct CompileRow {
    pub(crate) pods: usize,
    pub(crate) compile: Summary,
    pub(crate) apply: Summary,
    pub(crate) list: Summary,
    /// Rules and set/map elements of the table.
    pub(crate) rules: usize,
    pub(crate) elements: usize,
}

/// Part 2 at one size.
#[derive(Debug, Clone)]
pub(crate) struct LabelRow {
    pub(crate) pods: usize,
    /// From the label written to the first admitted connection.
    pub(crate) admitted: Summary,
    /// Of which the control plane's rounds (the lab's `apply_in` returning: workers, hub,
    /// workers, node agents' configuration written and applied).
    pub(crate) control_plane: Summary,
}

#[derive(Debug, Clone)]
pub(crate) struct PolicySection {
    pub(crate) compile: Vec<CompileRow>,
    pub(crate) label: Vec<LabelRow>,
    /// iperf3 Gbit/s per run: no policy, 100 policies.
    pub(crate) none: Vec<f64>,
    pub(crate) with: Vec<f64>,
}

/// Runs the section: `rounds` label changes per size, `iperf_runs` × `iperf_seconds` per side.
///
/// # Errors
/// A lab that cannot be built, a table the kernel refuses, a change never enforced.
pub(crate) fn run(rounds: usize, iperf_runs: usize, iperf_seconds: u32) -> Result<PolicySection> {
    let compile = SIZES.iter().map(|&n| compile_and_apply(n, rounds.max(3))).collect::<Result<Vec<_>>>()?;
    for row in &compile {
        eprintln!(
            "slicenet-bench: 10. {} pods: compile p50 {:.0} ms, apply p50 {:.0} ms",
            row.pods, row.compile.p50, row.apply.p50
        );
    }
    check_interrupted()?;
    let mut lab = Lab::new(LAB)?;
    let mut cp = ControlPlane::new();
    let result = in_lab(&mut cp, &mut lab, rounds, iperf_runs, iperf_seconds);
    let cleanup = cp.delete_all(&mut lab).and_then(|()| lab.teardown());
    let (label, none, with) = result?;
    cleanup?;
    Ok(PolicySection { compile, label, none, with })
}

// ---- The simulated workloads, the same in parts 1 and 2 ----

fn sim_namespace(i: usize) -> String {
    format!("s{}", i % SIM_NAMESPACES)
}

fn sim_app(i: usize) -> String {
    format!("a{}", (i / SIM_NAMESPACES) % APPS)
}

fn team(namespace_index: usize) -> String {
    format!("t{}", namespace_index % 3)
}

/// Policy `k` of the 100 (`k` < 98 in the lab, where two more govern the measured pods): its
/// namespace's pods of one app admit two other apps of the namespaces of one team on the named
/// port `web` and a port range; every fourth also limits egress to the slice but one /24, DNS
/// ports only.
fn sim_policy(k: usize) -> Value {
    let mut spec = json!({
        "podSelector": {"matchLabels": {"app": format!("a{}", k % APPS)}},
        "ingress": [{
            "from": [{
                "namespaceSelector": {"matchLabels": {"team": team(k)}},
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "In",
                    "values": [format!("a{}", (k + 1) % APPS), format!("a{}", (k + 7) % APPS)]}]},
            }],
            "ports": [{"protocol": "TCP", "port": "web"}, {"protocol": "TCP", "port": 9000, "endPort": 9010}],
        }],
    });
    if k.is_multiple_of(4) {
        spec["policyTypes"] = json!(["Ingress", "Egress"]);
        spec["egress"] = json!([{
            "to": [{"ipBlock": {"cidr": "10.80.0.0/16", "except": [format!("10.80.{}.0/24", k % 250)]}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }]);
    }
    json!({"namespace": sim_namespace(k), "name": format!("p{k}"), "spec": spec})
}

/// The named port every simulated pod has.
fn web_port() -> Value {
    json!({"name": "web", "port": 8080, "protocol": "TCP"})
}

// ---- Part 1 ----

/// Part 1's slice: `pods` pods, the first [`LOCAL_PODS`] on this node (10.80.0.0/24), the rest
/// in 10.80.1.0 and up.
fn node_slice(pods: usize) -> Result<SliceOnNode> {
    let mut groups: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for i in 0..pods {
        let address = if i < LOCAL_PODS {
            Ipv4Addr::new(10, 80, 0, u8::try_from(i + 2)?)
        } else {
            let j = i - LOCAL_PODS;
            Ipv4Addr::new(10, 80, u8::try_from(1 + j / 250)?, u8::try_from(j % 250 + 2)?)
        };
        groups.entry((sim_namespace(i), sim_app(i))).or_default().push(address.to_string());
    }
    let pods: Vec<Value> = groups
        .into_iter()
        .map(|((ns, app), addresses)| {
            let ns_index: usize = ns[1..].parse().unwrap_or_default();
            json!({"namespace": ns, "namespaceLabels": {"team": team(ns_index)}, "labels": {"app": app},
                   "ports": [web_port()], "addresses": addresses})
        })
        .collect();
    let policies: Vec<Value> = (0..POLICIES).map(sim_policy).collect();
    serde_json::from_value(json!({
        "name": SLICE, "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.0.0/24",
        "policies": policies, "pods": pods,
    }))
    .context("the simulated slice does not parse")
}

/// The namespace of part 1, deleted on drop.
struct FirewallNs(dataplane::Netns, PathBuf);

impl Drop for FirewallNs {
    fn drop(&mut self) {
        if let Err(e) = dataplane::Netns::delete_named(&self.1) {
            eprintln!("slicenet-bench: cannot delete {}: {e:#}", self.1.display());
        }
    }
}

fn compile_and_apply(pods: usize, iterations: usize) -> Result<CompileRow> {
    let slice = node_slice(pods)?;
    let path = PathBuf::from(format!("/run/netns/{NS}"));
    let (ns, _) = dataplane::Netns::ensure_named(&path).with_context(|| format!("cannot make {}", path.display()))?;
    let ns = FirewallNs(ns, path);
    let (mut compile, mut apply, mut list) = (Vec::new(), Vec::new(), Vec::new());
    let mut built = Vec::new();
    for _ in 0..iterations {
        check_interrupted()?;
        let t = Instant::now();
        built = slice_node::firewall::table(&slice)?.context("100 policies make a table")?;
        compile.push(t.elapsed());
        let t = Instant::now();
        dataplane::nft::replace_table(&ns.0, slice_node::firewall::TABLE, &built)?;
        apply.push(t.elapsed());
        let t = Instant::now();
        let listed = dataplane::nft::list_table(&ns.0, slice_node::firewall::TABLE)?
            .map(slice_node::firewall::canonical)
            .context("the table is not there after the apply")?;
        list.push(t.elapsed());
        ensure!(listed == built, "{pods} pods: the kernel lists another table than the one applied");
    }
    dataplane::nft::delete_table(&ns.0, slice_node::firewall::TABLE)?;
    let rules = built.iter().filter(|o| o.get("rule").is_some()).count();
    let elements = built
        .iter()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .filter_map(|s| s["elem"].as_array())
        .map(Vec::len)
        .sum();
    Ok(CompileRow {
        pods,
        compile: Summary::of(&compile),
        apply: Summary::of(&apply),
        list: Summary::of(&list),
        rules,
        elements,
    })
}

// ---- Parts 2 and 3 ----

/// Member namespaces: the real pods' and the simulated ones'.
fn namespaces() -> Vec<String> {
    let mut ns = vec!["x".to_owned(), "y".to_owned()];
    ns.extend((0..SIM_NAMESPACES).map(|i| format!("s{i}")));
    ns
}

fn manifest() -> Result<control::Manifest> {
    let names = namespaces();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut m = control::across_manifest(SLICE, "10.80.0.0/16", &refs, &control::THREE_CLUSTERS)?;
    // Room for 10,000 pods: four cluster prefixes of /18, node prefixes of /20.
    m.slices[0].spec.max_clusters = 4;
    m.slices[0].spec.node_prefix_length = Some(20);
    Ok(m)
}

fn real_objects(cluster: &str) -> Vec<Value> {
    let mut objects: Vec<Value> = namespaces()
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let labels = if i < 2 { json!({"ns": ns}) } else { json!({"ns": ns, "team": team(i - 2)}) };
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
        })
        .collect();
    let pod = |ns: &str, name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
               "spec": {"nodeName": node, "containers": [{"name": "app"}]}})
    };
    match cluster {
        "c1" => {
            objects.extend([pod("x", "target", "n1"), pod("x", "iperf-server", "n1"), pod("x", "iperf-client", "n2")])
        }
        "c2" => objects.push(pod("y", "source", "n1")),
        _ => {}
    }
    objects
}

/// The policies of c1: 98 of [`sim_policy`], the target admitting `role=client` pods of any
/// namespace, the iperf3 server admitting its client.
fn lab_policies() -> Vec<Value> {
    let mut policies: Vec<Value> = (0..POLICIES - 2).map(sim_policy).collect();
    policies.push(json!({"namespace": "x", "name": "clients", "spec": {
        "podSelector": {"matchLabels": {"pod": "target"}},
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}],
                     "ports": [{"protocol": "TCP", "port": TARGET_PORT}]}]}}));
    policies.push(json!({"namespace": "x", "name": "iperf", "spec": {
        "podSelector": {"matchLabels": {"pod": "iperf-server"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "iperf-client"}}}],
                     "ports": [{"protocol": "TCP", "port": IPERF_PORT}]}]}}));
    policies
        .into_iter()
        .map(|p| {
            json!({"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
                   "metadata": {"name": p["name"], "namespace": p["namespace"],
                                "annotations": {slice_api::policy::POLICY_FOR_ANNOTATION: slice_api::multus::nad_name(SLICE)}},
                   "spec": p["spec"]})
        })
        .collect()
}

/// Where simulated pods go: (cluster, node, node prefix) for every lab node.
fn lab_nodes(lab: &Lab) -> Result<Vec<(String, String, Ipv4Net)>> {
    let mut out = Vec::new();
    for cluster in lab.clusters() {
        for node in cluster.nodes() {
            let config = node.agent_config()?;
            let slice = config.slices.iter().find(|s| s.name == SLICE).context("the slice on a lab node")?;
            let IpNet::V4(prefix) = slice.node_prefix else { bail!("an IPv6 node prefix") };
            out.push((cluster.name().to_owned(), node.name().to_owned(), prefix));
        }
    }
    Ok(out)
}

/// Simulated Pod objects `from..to`, spread over the clusters evenly (then over a cluster's
/// nodes), addresses from the top of each node's prefix down (the lab's IPAM hands out from
/// the bottom).
fn simulated(nodes: &[(String, String, Ipv4Net)], from: usize, to: usize) -> Vec<(String, Value)> {
    let clusters: Vec<&String> = {
        let mut c: Vec<&String> = nodes.iter().map(|n| &n.0).collect();
        c.dedup();
        c
    };
    let mut next: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..to {
        let cluster = clusters[i % clusters.len()];
        let in_cluster: Vec<&(String, String, Ipv4Net)> = nodes.iter().filter(|n| &n.0 == cluster).collect();
        let (_, node, prefix) = in_cluster[(i / clusters.len()) % in_cluster.len()];
        let used = next.entry((cluster.as_str(), node.as_str())).or_default();
        *used += 1;
        if i < from {
            continue;
        }
        let address = Ipv4Addr::from(u32::from(prefix.broadcast()) - *used);
        let ns = sim_namespace(i);
        let status = json!([{"name": slice_api::multus::network_name(&ns, SLICE),
                             "interface": slice_api::names::DEFAULT_SLICE_INTERFACE, "ips": [address.to_string()]}]);
        out.push((
            cluster.clone(),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("sim-{i}"), "namespace": ns, "labels": {"app": sim_app(i)},
                                "annotations": {SIMULATED_ANNOTATION: "true",
                                                slice_api::names::NETWORK_STATUS_ANNOTATION: status.to_string()}},
                   "spec": {"nodeName": node, "containers": [{"name": "app", "ports": [
                       {"name": "web", "containerPort": 8080, "protocol": "TCP"}]}]},
                   "status": {"phase": "Running", "podIP": "192.0.2.1",
                              "conditions": [{"type": "Ready", "status": "True"}]}}),
        ));
    }
    out
}

type LabFigures = (Vec<LabelRow>, Vec<f64>, Vec<f64>);

fn in_lab(cp: &mut ControlPlane, lab: &mut Lab, rounds: usize, iperf_runs: usize, seconds: u32) -> Result<LabFigures> {
    eprintln!("slicenet-bench: 10. building lab {LAB} (c1 with two nodes, c2, c3 behind NAT)");
    cp.apply(lab, &manifest()?)?;
    for cluster in ["c1", "c2", "c3"] {
        cp.apply_in(lab, cluster, &real_objects(cluster))?;
    }
    let policies = lab_policies();
    cp.apply_in(lab, "c1", &policies)?;
    let nodes = lab_nodes(lab)?;
    let source = cp.pod("c2", "y", "source").context("pod y/source")?.clone();
    let target = cp.pod("c1", "x", "target").context("pod x/target")?.clone();
    let target_addr = SocketAddrV4::new(target.ipv4("slice0")?, TARGET_PORT);
    let _responder = crate::probe::Responder::start(&target, TARGET_PORT, "target")?;
    let real_pods = 4;
    let mut label = Vec::new();
    let mut have = 0;
    for size in SIZES {
        check_interrupted()?;
        let want = size - real_pods;
        eprintln!("slicenet-bench: 10. {size} pods in the directory ({want} simulated)");
        for (cluster, obj) in simulated(&nodes, have, want) {
            cp.api().put(cluster, obj);
        }
        have = want;
        cp.reconcile(lab)?;
        let directory: usize =
            cp.worker(SLICE, "c1").map_or(0, |w| w.spec.pods.iter().map(|g| g.addresses.len()).sum());
        eprintln!("slicenet-bench: 10. c1's WorkerSlice lists {directory} pods of the other clusters");
        let (mut admitted, mut control_plane) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            check_interrupted()?;
            ensure!(
                !connects_within(&source, target_addr, Duration::from_secs(2)),
                "y/source reaches the target before its label"
            );
            let (a, c) = label_change(cp, lab, &source, target_addr)?;
            admitted.push(a);
            control_plane.push(c);
            set_role(cp, lab, None)?;
        }
        label.push(LabelRow {
            pods: size,
            admitted: Summary::of(&admitted),
            control_plane: Summary::of(&control_plane),
        });
    }
    let (none, with) = throughput(cp, lab, &policies, iperf_runs, seconds)?;
    Ok((label, none, with))
}

/// Sets (or removes) `role=client` on y/source in c2 through the control plane.
fn set_role(cp: &mut ControlPlane, lab: &Lab, role: Option<&str>) -> Result<()> {
    let path = "/api/v1/namespaces/y/pods/source";
    let mut object = cp.api().get("c2".to_owned(), path).context("the Pod object of y/source")?;
    match role {
        Some(r) => object["metadata"]["labels"]["role"] = json!(r),
        None => {
            if let Some(labels) = object["metadata"]["labels"].as_object_mut() {
                labels.remove("role");
            }
        }
    }
    cp.apply_in(lab, "c2", &[object])
}

/// One label change: (to the first admitted connection, to the control plane at rest).
fn label_change(cp: &mut ControlPlane, lab: &Lab, source: &Pod, target: SocketAddrV4) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let prober = crate::probe::in_netns(&source.netns_path, move || first_admitted(target, t0, ENFORCE_DEADLINE));
    let applied = set_role(cp, lab, Some("client"));
    let control_plane = t0.elapsed();
    let admitted = prober.join().map_err(|_| anyhow::anyhow!("the prober panicked"))?;
    applied?;
    let admitted = admitted.with_context(|| format!("no connection admitted within {ENFORCE_DEADLINE:?}"))?;
    Ok((admitted, control_plane))
}

/// Whether a TCP connection from `pod` to `to` completes within `within`.
fn connects_within(pod: &Pod, to: SocketAddrV4, within: Duration) -> bool {
    crate::probe::in_netns(&pod.netns_path, move || std::net::TcpStream::connect_timeout(&to.into(), within).is_ok())
        .join()
        .unwrap_or(false)
}

/// In the caller's namespace: a new non-blocking connection to `to` every 10 ms until one
/// completes; its completion time since `t0` (`None` past `deadline`). Attempts older than 3 s
/// are closed (a dropped SYN's retransmission would complete late and say nothing of when the
/// rules changed).
fn first_admitted(to: SocketAddrV4, t0: Instant, deadline: Duration) -> Option<Duration> {
    let mut attempts: Vec<(std::os::fd::OwnedFd, Instant)> = Vec::new();
    let mut last = Instant::now() - Duration::from_secs(1);
    while t0.elapsed() < deadline {
        if last.elapsed() >= Duration::from_millis(10) {
            last = Instant::now();
            if let Some(fd) = connect_nonblocking(to) {
                attempts.push((fd, last));
            }
        }
        attempts.retain(|(_, started)| started.elapsed() < Duration::from_secs(3));
        if let Some(done) = poll_connected(&attempts, 5) {
            return Some(done.duration_since(t0));
        }
    }
    None
}

fn connect_nonblocking(to: SocketAddrV4) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let addr = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).ok()?,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).ok()?;
    // SAFETY: a fresh socket owned at once; connect with a valid sockaddr_in of `len` bytes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let r = libc::connect(fd, (&raw const addr).cast(), len);
        (r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS)).then_some(owned)
    }
}

/// Polls `attempts` for up to `ms`; the time one of them completed its handshake.
fn poll_connected(attempts: &[(std::os::fd::OwnedFd, Instant)], ms: i32) -> Option<Instant> {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> =
        attempts.iter().map(|(fd, _)| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 }).collect();
    if fds.is_empty() {
        std::thread::sleep(Duration::from_millis(u64::try_from(ms).unwrap_or(5)));
        return None;
    }
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), libc::nfds_t::try_from(fds.len()).ok()?, ms) };
    let now = Instant::now();
    if n <= 0 {
        return None;
    }
    fds.iter().filter(|p| p.revents & libc::POLLOUT != 0).find_map(|p| {
        let mut err: libc::c_int = 0;
        let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
        // SAFETY: SO_ERROR into a c_int of `len` bytes.
        let r =
            unsafe { libc::getsockopt(p.fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &raw mut len) };
        (r == 0 && err == 0).then_some(now)
    })
}

/// Part 3: iperf3 from x/iperf-client (c1/n2) to x/iperf-server (c1/n1), with no policy and
/// with the 100, alternating.
fn throughput(
    cp: &mut ControlPlane,
    lab: &Lab,
    policies: &[Value],
    runs: usize,
    seconds: u32,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let client = cp.pod("c1", "x", "iperf-client").context("pod x/iperf-client")?.clone();
    let server = cp.pod("c1", "x", "iperf-server").context("pod x/iperf-server")?.clone();
    let to = server.ipv4("slice0")?;
    let router = PathBuf::from(format!("/run/netns/{}{SLICE}", lab.node("c1", "n1").router_netns_prefix()));
    let table = || -> Result<bool> {
        let ns = dataplane::Netns::open(&router)?;
        Ok(dataplane::nft::list_table(&ns, slice_node::firewall::TABLE)?.is_some())
    };
    let (mut none, mut with) = (Vec::new(), Vec::new());
    for i in 0..runs * 2 {
        check_interrupted()?;
        let policed = i % 2 == 1;
        if policed {
            cp.apply_in(lab, "c1", policies)?;
        } else {
            cp.delete_in(lab, "c1", policies)?;
        }
        let end = Instant::now() + Duration::from_secs(60);
        while table()? != policed {
            ensure!(Instant::now() < end, "c1/n1's router table did not follow the policies within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "slicenet-bench: 10. iperf3 {} policies, run {}",
            if policed { "with" } else { "without" },
            i / 2 + 1
        );
        let (gbits, _, _) = super::path::iperf(&client, &server, to, seconds)?;
        if policed { with.push(gbits) } else { none.push(gbits) }
    }
    Ok((none, with))
}

// ---- Report ----

fn ms(v: f64) -> String {
    if v < 10.0 { format!("{v:.1}") } else { format!("{v:.0}") }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

pub(crate) fn table(s: &PolicySection) -> String {
    let mut t = String::from(
        "### 10. MultiNetworkPolicy: compile, apply, enforce, and what it costs the path\n\n\
         | on one node, 100 policies | pods in directory | compile p50 ms | apply p50 ms | list p50 ms | \
         compile + apply max ms | rules | set elements |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in &s.compile {
        let _ = writeln!(
            t,
            "| `firewall::table` + `nft -j -f` | {} | {} | {} | {} | {} | {} | {} |",
            r.pods,
            ms(r.compile.p50),
            ms(r.apply.p50),
            ms(r.list.p50),
            ms(r.compile.max + r.apply.max),
            r.rules,
            r.elements
        );
    }
    t += "\n| a pod's label change in c2 → admitted by c1's node | pods in directory | p50 ms | max ms | \
          control plane at rest p50 ms | n |\n| --- | ---: | ---: | ---: | ---: | ---: |\n";
    for r in &s.label {
        let _ = writeln!(
            t,
            "| through workers, hub, node agents | {} | {} | {} | {} | {} |",
            r.pods,
            ms(r.admitted.p50),
            ms(r.admitted.max),
            ms(r.control_plane.p50),
            r.admitted.n
        );
    }
    let (none, with) = (mean(&s.none), mean(&s.with));
    let runs = |v: &[f64]| v.iter().map(|g| format!("{g:.2}")).collect::<Vec<_>>().join(", ");
    let _ = write!(
        t,
        "\n| iperf3 c1/n2 → c1/n1 over the slice | Gbit/s (mean) | runs |\n| --- | ---: | --- |\n\
         | no policy (no table in the routers) | {none:.2} | {} |\n\
         | 100 policies, 10,000-pod directory | {with:.2} | {} |\n\
         | **with / without** | {:+.1} % | |\n",
        runs(&s.none),
        runs(&s.with),
        added_percent(with, none)
    );
    let big = s.compile.iter().find(|r| r.pods == 10_000);
    let label = s.label.iter().find(|r| r.pods == 10_000);
    let _ = write!(
        t,
        "\nGoals: compile + apply < 1 s at 10,000 pods: **{}**{}; a label change enforced on another \
         cluster's node < 1 s at 10,000 pods: **{}**{}; throughput less than 5 % lower with 100 policies: **{}** \
         ({:+.1} %).\n",
        big.map_or("not measured", |r| met(r.compile.max + r.apply.max < 1000.0)),
        big.map(|r| format!(" (max {} ms)", ms(r.compile.max + r.apply.max))).unwrap_or_default(),
        label.map_or("not measured", |r| met(r.admitted.max < 1000.0)),
        label.map(|r| format!(" (max {} ms)", ms(r.admitted.max))).unwrap_or_default(),
        met(added_percent(with, none) > -5.0),
        added_percent(with, none)
    );
    t
}

pub(crate) fn doc_section(s: &PolicySection, command: &str) -> String {
    format!(
        "{BEGIN}\n## 10. MultiNetworkPolicy at 1,000 and 10,000 pods\n\n\
         Policies: 100 MultiNetworkPolicies of the same mix (a Deployment's pods by `app`, admitting two \
         other apps of one team's namespaces by `matchExpressions` with a `namespaceSelector`, on the named \
         port `web` and a port range with `endPort`; every fourth also egress-isolated to the slice minus one \
         `/24` by `ipBlock`/`except`, DNS ports only). Pods: ten namespaces × 50 apps, each with the named \
         port `web`.\n\n\
         - **On one node** (the node agent's steps, no control plane): `slice_node::firewall::table` builds \
         the router's table from a slice whose directory holds N pods, 100 of them on this node; \
         `dataplane::nft::replace_table` applies it in one `nft -j -f` transaction in a namespace made for \
         this; `nft -j list table`, put in canonical order, is what the agent compares on every pass (checked \
         equal to what was built). The agent rebuilds and replaces the whole table on any change, so a label \
         change costs the same.\n\
         - **A label change across clusters:** the three-cluster lab (`snbenchy`, real hub and worker passes \
         on the in-memory API, real node agents and gateways); the pod directory holds N pods, the lab's four \
         real pods and simulated Pod objects spread over every node of every cluster (running, with a slice \
         address in the node's prefix; the lab's kubelet starts no process for them), so every worker \
         reports, the hub merges and every node agent compiles N pods. c1 holds the 100 policies (98 of the \
         mix, one admitting `role=client` pods of any namespace to `x/target`, one for iperf3). Timed from \
         writing `role=client` on `y/source`'s Pod object in c2 to the first TCP connection from it that c1's \
         node admits (a new attempt every 10 ms), and to the lab's control plane at rest (workers, hub, \
         workers, node agents' configuration written and applied, every WorkerSlice `Ready`).\n\
         - **Throughput:** iperf3, one TCP stream, 5 s, `x/iperf-client` (c1/n2) → `x/iperf-server` (c1/n1) \
         over the slice (router, VXLAN, router), with no policy (no table in the routers) and with the 100 \
         policies and the 10,000-pod directory, runs alternating.\n\n{}\n{command}\n{END}\n",
        table(s).split_once("\n\n").map_or("", |(_, rest)| rest),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_slice_is_a_valid_node_configuration() {
        for pods in SIZES {
            let slice = node_slice(pods).unwrap();
            assert_eq!(slice.pods.iter().map(|g| g.addresses.len()).sum::<usize>(), pods);
            let config = slice_api::node::NodeAgentConfig::example(vec![slice]);
            config.validate().unwrap();
        }
    }

    #[test]
    fn simulated_pods_get_distinct_addresses_in_their_nodes_prefixes() {
        let nodes: Vec<(String, String, Ipv4Net)> =
            [("c1", "n1", "10.80.0.0/20"), ("c1", "n2", "10.80.16.0/20"), ("c2", "n1", "10.80.64.0/20")]
                .iter()
                .map(|(c, n, p)| ((*c).to_owned(), (*n).to_owned(), p.parse().unwrap()))
                .collect();
        let first = simulated(&nodes, 0, 10);
        let rest = simulated(&nodes, 10, 3000);
        assert_eq!((first.len(), rest.len()), (10, 2990));
        let mut seen = std::collections::BTreeSet::new();
        for (cluster, pod) in first.iter().chain(&rest) {
            let node = pod["spec"]["nodeName"].as_str().unwrap();
            let status: Value = serde_json::from_str(
                pod["metadata"]["annotations"][slice_api::names::NETWORK_STATUS_ANNOTATION].as_str().unwrap(),
            )
            .unwrap();
            let ip: Ipv4Addr = status[0]["ips"][0].as_str().unwrap().parse().unwrap();
            let (_, _, prefix) = nodes.iter().find(|(c, n, _)| c == cluster && n == node).unwrap();
            assert!(prefix.contains(&ip) && ip != prefix.broadcast(), "{ip} outside {prefix}");
            assert!(seen.insert(ip), "{ip} twice");
        }
        // c1's pods spread over its two nodes.
        let on = |n: &str| first.iter().chain(&rest).filter(|(c, p)| c == "c1" && p["spec"]["nodeName"] == n).count();
        assert_eq!(on("n1") + on("n2"), 1500);
        assert!(on("n1").abs_diff(on("n2")) <= 1);
    }

    #[test]
    fn the_table_of_the_report_names_every_goal() {
        let summary = Summary::of(&[Duration::from_millis(300)]);
        let s = PolicySection {
            compile: vec![CompileRow {
                pods: 10_000,
                compile: summary,
                apply: summary,
                list: summary,
                rules: 1,
                elements: 2,
            }],
            label: vec![LabelRow { pods: 10_000, admitted: summary, control_plane: summary }],
            none: vec![10.0],
            with: vec![9.7],
        };
        let t = table(&s);
        assert!(t.contains("compile + apply < 1 s at 10,000 pods: **met** (max 600 ms)"), "{t}");
        assert!(t.contains("< 1 s at 10,000 pods: **met** (max 300 ms)"), "{t}");
        assert!(t.contains("less than 5 % lower with 100 policies: **met** (-3.0 %)"), "{t}");
    }
}
