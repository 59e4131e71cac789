//! The node side of `slicectl uninstall worker`, for real, in the lab: nodes with their own
//! containerd and a plain primary CNI (`bridge` + `host-local`), slicenet installed on them as
//! the node agent's init container does it (`slicectl cni-install`), node agents running a slice
//! with QoS (router namespaces, VXLAN, `inet slicenet`, `inet slicenet_qos`, the HTB tree on the
//! uplink) and pods on the slice; then `slicectl node-uninstall` in each node's namespace.
//!
//! Afterwards each node has the CNI conflist bytes it had before the install, no slice-cni
//! binary, the links, routes, nftables tables and qdiscs it had before, no router namespaces;
//! a pod that kept running has lost `slice0` and kept `eth0`; a pod created afterwards starts
//! with `eth0` only. A second run finds nothing, and a run after a half-done uninstall (every
//! other removal made, as a crash would leave it) ends in the same clean state.
//!
//! Needs root and the binaries (`cargo build --bins`); fails (does not skip) without them.
//! Lab prefix `huni`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{Lab, LabOptions, LabSlice, Node, Pod, PodSpec};
use slice_api::qos::SliceQos;
use slicectl::node_uninstall::{self, NodeLayout};

const PREFIX: &str = "huni";
const READY: Duration = Duration::from_secs(60);
const SLICE: &str = "blue";
const MEMBER_NAMESPACE: &str = "shop";

/// What a node looks like from its own namespace, for before/after comparisons.
#[derive(Debug, PartialEq, Eq)]
struct NodeSnapshot {
    conf_files: BTreeMap<String, String>,
    bin_files: Vec<String>,
    links: Vec<String>,
    routes: String,
    nft_tables: String,
    qdiscs: String,
    router_namespaces: Vec<String>,
}

fn exec_ok(node: &Node, argv: &[&str]) -> String {
    let out = node.exec(argv).unwrap_or_else(|e| panic!("{argv:?} on {}: {e:#}", node.name()));
    assert!(out.status.success(), "{argv:?} on {}: {}", node.name(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// File name → contents (bytes as text, lossless for the JSON conflists; binaries are only
/// named).
fn dir_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                String::from_utf8(bytes).unwrap_or_else(|_| "(binary)".into()),
            )
        })
        .collect()
}

fn snapshot(node: &Node) -> NodeSnapshot {
    let links: serde_json::Value = serde_json::from_str(&exec_ok(node, &["ip", "-j", "-d", "link", "show"])).unwrap();
    let mut links: Vec<String> = links
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{} {}", l["ifname"].as_str().unwrap(), l["linkinfo"]["info_kind"].as_str().unwrap_or("")))
        .collect();
    links.sort();
    let prefix = format!("{}-", node.netns_name());
    let mut router_namespaces: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    router_namespaces.sort();
    NodeSnapshot {
        conf_files: dir_files(&node.cni_conf_dir()),
        bin_files: dir_files(&node.cni_bin_dir()).into_keys().collect(),
        links,
        // Without the local routes of IPv6 link-local addresses: the kernel adds them once
        // duplicate address detection ends on a new veth, whenever that is.
        routes: exec_ok(node, &["ip", "route", "show", "table", "all"])
            .lines()
            .filter(|l| !l.starts_with("local fe80::"))
            .map(|l| format!("{l}\n"))
            .collect(),
        nft_tables: exec_ok(node, &["nft", "list", "tables"]),
        qdiscs: exec_ok(node, &["tc", "qdisc", "show"]),
        router_namespaces,
    }
}

fn layout(node: &Node) -> NodeLayout {
    NodeLayout {
        cni_bin_dir: node.cni_bin_dir(),
        cni_conf_dir: node.cni_conf_dir(),
        state_dir: node.state_dir(),
        ipam_dir: node.ipam_dir(),
        status_dir: node.dir().join("network-status"),
        netns_dir: PathBuf::from("/run/netns"),
        router_netns_prefix: node.router_netns_prefix(),
    }
}

fn layout_args(l: &NodeLayout) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, value) in [
        ("--bin-dir", &l.cni_bin_dir),
        ("--conf-dir", &l.cni_conf_dir),
        ("--state-dir", &l.state_dir),
        ("--ipam-dir", &l.ipam_dir),
        ("--status-dir", &l.status_dir),
        ("--netns-dir", &l.netns_dir),
    ] {
        args.push(flag.to_owned());
        args.push(value.display().to_string());
    }
    args.extend(["--router-netns-prefix".to_owned(), l.router_netns_prefix.clone()]);
    args
}

/// `slicectl node-uninstall` in the node's namespace; its stdout.
fn node_uninstall(node: &Node, dry_run: bool) -> String {
    let slicectl = env!("CARGO_BIN_EXE_slicectl");
    let mut argv: Vec<String> = vec![slicectl.to_owned(), "node-uninstall".to_owned()];
    if dry_run {
        argv.push("--dry-run".to_owned());
    }
    argv.extend(layout_args(&layout(node)));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    exec_ok(node, &argv)
}

/// What the node agent DaemonSet's init container does: slice-cni copied and chained.
fn cni_install(node: &Node) {
    let plugin = e2e::bin_dir().join("slice-cni");
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl"))
        .arg("cni-install")
        .args(["--plugin", plugin.to_str().unwrap()])
        .args(["--bin-dir", node.cni_bin_dir().to_str().unwrap()])
        .args(["--conf-dir", node.cni_conf_dir().to_str().unwrap()])
        .args(["--state-dir", node.state_dir().to_str().unwrap()])
        .args(["--ipam-dir", node.ipam_dir().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "cni-install: {}", String::from_utf8_lossy(&out.stderr));
    for dir in [node.state_dir(), node.ipam_dir()] {
        std::fs::create_dir_all(dir).unwrap();
    }
}

/// Node agents on every node with slice blue and a QoS class for it; waits for the router and
/// the tree.
fn start_agents(lab: &Lab) {
    let cluster = lab.cluster("c1");
    let configs = cluster.agent_configs(&[LabSlice::new(SLICE, 100, "10.80.0.0/16", &[MEMBER_NAMESPACE])]).unwrap();
    for (node, mut config) in cluster.nodes().iter().zip(configs) {
        config.slices[0].qos = Some(SliceQos {
            guaranteed_kbps: 10_000,
            ceiling_kbps: None,
            priority: 1,
            gateway_port: 51_820,
            uplink_kbps: 100_000,
        });
        node.start_agent(&config).unwrap();
    }
    for node in cluster.nodes() {
        node.wait_slice_ready(SLICE, READY).unwrap();
        wait_for(&format!("the QoS tree on {}", node.name()), || {
            exec_ok(node, &["tc", "qdisc", "show", "dev", "eth0"]).contains("htb 5c:")
                && exec_ok(node, &["nft", "list", "tables"]).contains("slicenet_qos")
        });
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod of the slice's member namespace that got `slice0` (containerd reads the new conflist
/// shortly after it appears: pods made before that are removed and made again).
fn slice_pod(node: &Node, name: &str) -> Pod {
    let deadline = Instant::now() + READY;
    loop {
        let pod = node.run_pod(PodSpec::new(MEMBER_NAMESPACE, name)).unwrap();
        if pod.addresses("slice0").is_ok_and(|a| !a.is_empty()) {
            return pod;
        }
        node.remove_pod(&pod).unwrap();
        assert!(Instant::now() < deadline, "no pod on {} got slice0", node.name());
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn has_link(pod: &Pod, name: &str) -> bool {
    pod.exec(&["ip", "link", "show", name]).is_ok_and(|o| o.status.success())
}

/// Removes the lab however the test ends.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = e2e::cleanup(PREFIX);
    }
}

/// Installs slicenet on every node, runs agents and a slice pod per node (slice0 reachable from
/// the other node); returns the running pods.
fn install_and_use(lab: &Lab) -> Vec<Pod> {
    let cluster = lab.cluster("c1");
    for node in cluster.nodes() {
        cni_install(node);
    }
    start_agents(lab);
    let pods: Vec<Pod> = cluster.nodes().iter().map(|n| slice_pod(n, &format!("app-{}", n.name()))).collect();
    let peer = pods[1].ipv4("slice0").unwrap().to_string();
    let out = pods[0].exec(&["ping", "-c", "1", "-W", "5", "-I", "slice0", &peer]).unwrap();
    assert!(out.status.success(), "slice0 across nodes before the uninstall: {}", String::from_utf8_lossy(&out.stdout));
    pods
}

#[test]
fn node_uninstall_leaves_the_node_as_before_the_install() {
    e2e::require_root().expect("root");
    let _down = Down;
    let mut lab = Lab::with_options(PREFIX, LabOptions::without_slice_cni()).expect("lab (needs root; bins built)");
    lab.add_cluster("c1", 2).expect("cluster c1");
    let nodes: Vec<&Node> = lab.cluster("c1").nodes().iter().collect();

    // A pod that runs through everything: made before the install, on the primary CNI only.
    let before_pods: Vec<Pod> =
        nodes.iter().map(|n| n.run_pod(PodSpec::new("default", format!("old-{}", n.name()))).unwrap()).collect();
    let before: Vec<NodeSnapshot> = nodes.iter().map(|n| snapshot(n)).collect();
    assert!(before[0].bin_files.iter().all(|f| f != "slice-cni"), "{:?}", before[0].bin_files);

    // --- install, use, uninstall ---
    let slice_pods = install_and_use(&lab);
    let installed = snapshot(nodes[0]);
    assert!(installed.conf_files.contains_key("00-slicenet.conflist"));
    assert_eq!(installed.router_namespaces, [format!("{}-{SLICE}", nodes[0].netns_name())]);
    assert!(installed.nft_tables.contains("slicenet_qos"));

    for node in &nodes {
        node.stop_agent().unwrap();
    }
    let dry = node_uninstall(nodes[0], true);
    for want in [
        "would remove file",
        "00-slicenet.conflist",
        "slice-cni",
        "would delete router namespace",
        "inet slicenet_qos",
        "HTB tree 5c: (QoS classes) on eth0",
        "would remove dir",
    ] {
        assert!(dry.contains(want), "dry run lacks {want:?}:\n{dry}");
    }
    assert_eq!(snapshot(nodes[0]), installed, "--dry-run changes nothing");

    for node in &nodes {
        let done = node_uninstall(node, false);
        assert!(done.contains("done: delete router namespace"), "{done}");
    }
    // The pods that kept running: slice0 went with the router namespace (its veth peer was
    // there); eth0 is untouched.
    for pod in slice_pods.iter().chain(&before_pods) {
        assert!(!has_link(pod, "slice0"), "{} still has slice0", pod.lab_name());
        assert!(pod.ipv4("eth0").is_ok(), "{} lost eth0", pod.lab_name());
    }
    // A pod made now, in the namespace that was on the slice, starts on the primary CNI alone.
    for node in &nodes {
        let pod = node.run_pod(PodSpec::new(MEMBER_NAMESPACE, "after")).expect("a pod starts after the uninstall");
        assert!(pod.ipv4("eth0").is_ok());
        assert!(!has_link(&pod, "slice0"));
        node.remove_pod(&pod).unwrap();
    }
    for (node, pod) in nodes.iter().zip(&slice_pods) {
        node.remove_pod(pod).expect("a pod of the slice is removed after the uninstall");
    }
    for (node, want) in nodes.iter().zip(&before) {
        assert_eq!(&snapshot(node), want, "node {} after the uninstall", node.name());
        assert!(!node.state_dir().exists() && !node.ipam_dir().exists());
    }
    // Twice: nothing left to do, nothing changes.
    for node in &nodes {
        assert_eq!(node_uninstall(node, false), "nothing of slicenet's on this node\n");
        assert_eq!(node_uninstall(node, true), "nothing of slicenet's on this node\n");
    }

    // --- again, and a crash half way through the uninstall ---
    let slice_pods = install_and_use(&lab);
    for node in &nodes {
        node.stop_agent().unwrap();
    }
    let ns = dataplane::Netns::open(&nodes[0].netns_path()).unwrap();
    let l = layout(nodes[0]);
    let (planned, made) = ns
        .run(|| {
            let plan = node_uninstall::plan(&l).unwrap();
            // Every other removal: the conflist, the router namespace, the QoS table… of a
            // process that died in between.
            for r in plan.iter().step_by(2) {
                node_uninstall::remove(&l, r).unwrap();
            }
            (plan.len(), plan.len().div_ceil(2))
        })
        .unwrap();
    assert!(planned >= 6, "{planned} removals planned");
    let left = node_uninstall(nodes[0], true);
    assert_eq!(left.lines().count(), planned - made, "what is left after the crash:\n{left}");
    for node in &nodes {
        node_uninstall(node, false);
        assert_eq!(node_uninstall(node, true), "nothing of slicenet's on this node\n");
    }
    for (node, pod) in nodes.iter().zip(&slice_pods) {
        node.remove_pod(pod).unwrap();
    }
    for (node, want) in nodes.iter().zip(&before) {
        assert_eq!(&snapshot(node), want, "node {} after the uninstall that followed a crash", node.name());
    }
    for (node, pod) in nodes.iter().zip(&before_pods) {
        node.remove_pod(pod).unwrap();
    }
    lab.teardown().unwrap();
}

/// Unmounts and deletes what `the_cleanup_pods_mounted_dirs_are_emptied_and_kept` made.
struct MountGuard {
    mount: PathBuf,
    netns: &'static str,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = Command::new("ip").args(["netns", "delete", self.netns]).status();
    }
}

/// In the cleanup pod the state and IPAM dirs are volumes (mount points): they cannot be
/// removed, so they are emptied, and a run then counts them as done.
#[test]
fn the_cleanup_pods_mounted_dirs_are_emptied_and_kept() {
    e2e::require_root().expect("root");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // Not `huni-…`: the lab test beside this one removes those when it starts.
    let netns = "hunimnt";
    let _ = Command::new("ip").args(["netns", "delete", netns]).status();
    assert!(Command::new("ip").args(["netns", "add", netns]).status().unwrap().success());
    let status = Command::new("mount").args(["-t", "tmpfs", "slicenet-test"]).arg(&state).status().unwrap();
    let _guard = MountGuard { mount: state.clone(), netns };
    assert!(status.success(), "mount tmpfs");
    std::fs::create_dir_all(state.join("qos")).unwrap();
    std::fs::write(state.join("qos/tree.json"), "{}").unwrap();
    std::fs::write(state.join("blue.json"), "not a state file").unwrap();
    let layout = NodeLayout {
        cni_bin_dir: dir.path().join("bin"),
        cni_conf_dir: dir.path().join("conf"),
        state_dir: state.clone(),
        ipam_dir: dir.path().join("ipam"),
        status_dir: dir.path().join("status"),
        netns_dir: dir.path().join("netns"),
        router_netns_prefix: "hunimnt-".into(),
    };
    std::fs::create_dir_all(layout.ipam_dir.join("blue")).unwrap();
    // In a namespace of its own: the plan also reads links, nftables and qdiscs.
    let ns = dataplane::Netns::open(Path::new("/run/netns").join(netns).as_path()).unwrap();
    let (first, second) = ns
        .run(|| {
            let done = node_uninstall::uninstall(&layout, false).unwrap();
            (done, node_uninstall::plan(&layout).unwrap())
        })
        .unwrap();
    let texts: Vec<String> = first.iter().map(ToString::to_string).collect();
    assert!(texts.contains(&format!("remove dir {}", state.display())), "{texts:?}");
    assert!(texts.contains(&format!("remove dir {}", layout.ipam_dir.display())), "{texts:?}");
    assert!(node_uninstall::is_mount_point(&state));
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "the mounted state dir is emptied");
    assert!(!layout.ipam_dir.exists(), "a dir that is not a mount point goes");
    assert_eq!(second, Vec::new(), "nothing left: an empty mount point is done");
}
