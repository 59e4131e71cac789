//! Root integration tests of the node agent: "nodes" are network namespaces joined by a veth
//! pair on 198.18.250.0/24; slices use 198.19.0.0/16. Each test has its own namespace names
//! (pid + counter), state dirs and router-namespace prefix, so tests run in parallel; a `Drop`
//! guard kills the daemons it started (by PID) and deletes every namespace it made, even when a
//! test panics. They fail (never skip) without root.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dataplane::{Netlink, Netns, Route, VethRequest};
use serde_json::json;
use slice_api::node::{NodeAgentConfig, NodeState};
use slice_operator::node_agent;

static COUNTER: AtomicUsize = AtomicUsize::new(0);
const BIN: &str = env!("CARGO_BIN_EXE_slice-operator");

struct Node {
    name: String,
    path: PathBuf,
    ns: Netns,
    underlay: &'static str,
    router_prefix: String,
    state_dir: tempfile::TempDir,
    config_dir: tempfile::TempDir,
}

impl Node {
    fn config_path(&self) -> PathBuf {
        self.config_dir.path().join("node-agent.json")
    }

    fn router_path(&self, slice: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}{slice}", self.router_prefix))
    }

    fn router_name(&self, slice: &str) -> String {
        format!("{}{slice}", self.router_prefix)
    }

    /// Writes this node's configuration: `slices` as (name, vni, node prefix index, peers),
    /// peers as (peer node, peer prefix index).
    fn write_config(&self, slices: &[SliceDef<'_>]) -> NodeAgentConfig {
        let slices: Vec<_> = slices
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "vni": s.vni,
                    "sliceSubnet": "198.19.0.0/16",
                    "nodePrefix": prefix(s.index),
                    "namespaces": ["shop"],
                    "peers": s.peers.iter().map(|(underlay, idx)| json!({
                        "name": format!("peer-{idx}"),
                        "underlayAddress": underlay,
                        "nodePrefix": prefix(*idx),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let config = json!({
            "node": self.name,
            "underlayAddress": self.underlay,
            "underlayMtu": 1500,
            "stateDir": self.state_dir.path(),
            "netnsDir": "/run/netns",
            "routerNetnsPrefix": self.router_prefix,
            "slices": slices,
        });
        let path = self.config_path();
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        NodeAgentConfig::load(&path).expect("test config is valid")
    }

    /// `slice-operator node-agent --config F --once`, inside the node namespace.
    fn run_once(&self) -> Output {
        self.run_once_after(&[])
    }

    /// [`Node::run_once`] with no capability but `caps` (util-linux `setpriv`: the bounding set
    /// limits what root gets at exec, and nothing is inheritable), as a container that drops
    /// every capability and adds `caps` runs it.
    fn run_once_with_only(&self, caps: &[&str]) -> Output {
        self.run_once_after(&setpriv_only(caps))
    }

    /// [`Node::run_once`] as the arguments of `wrapper` (nothing, or `setpriv …`).
    fn run_once_after(&self, wrapper: &[String]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .args(wrapper)
            .arg(BIN)
            .args(["node-agent", "--config"])
            .arg(self.config_path())
            .arg("--once")
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    }

    fn run_once_ok(&self) {
        let out = self.run_once();
        assert!(
            out.status.success(),
            "node-agent --once failed on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The library reconcile, from a thread inside the node namespace.
    fn reconcile(&self) -> Vec<node_agent::Action> {
        let config = NodeAgentConfig::load(&self.config_path()).unwrap();
        self.ns
            .run(|| node_agent::reconcile(&config))
            .unwrap()
            .unwrap_or_else(|e| panic!("reconcile on {}: {}", self.name, slice_api::error_chain::chain(&e)))
    }

    fn router_nl(&self, slice: &str) -> Netlink {
        let ns = Netns::open(&self.router_path(slice)).unwrap();
        Netlink::in_netns(&ns).unwrap()
    }

    fn vxlan_index(&self, slice: &str, vni: u32) -> u32 {
        self.router_nl(slice)
            .link(&format!("sv{vni}"))
            .unwrap()
            .unwrap_or_else(|| panic!("no sv{vni} in {}", self.router_name(slice)))
            .index
    }

    /// `ip netns exec ROUTER ping -c1 -W1 -I FROM TO`, true when answered.
    fn ping(&self, slice: &str, from: &str, to: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.router_name(slice)])
            .args(["ping", "-c1", "-W1", "-I", from, to])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn spawn_daemon(&self) -> Daemon {
        self.spawn_daemon_with(&[])
    }

    fn spawn_daemon_with(&self, extra: &[&str]) -> Daemon {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .arg(BIN)
            .args(["node-agent", "--config"])
            .arg(self.config_path())
            .args(["--interval-ms", "100"])
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }
}

/// `setpriv` arguments that leave a root process only `caps` (e.g. `net_admin`).
fn setpriv_only(caps: &[&str]) -> Vec<String> {
    let keep: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec!["setpriv".into(), format!("--bounding-set=-all{keep}"), "--inh-caps=-all".into(), "--".into()]
}

/// The effective capability mask a process started with [`setpriv_only`]`(caps)` gets.
fn effective_caps_with_only(caps: &[&str]) -> u64 {
    let out = Command::new(&setpriv_only(caps)[0])
        .args(&setpriv_only(caps)[1..])
        .args(["cat", "/proc/self/status"])
        .output()
        .unwrap();
    assert!(out.status.success(), "setpriv: {}", String::from_utf8_lossy(&out.stderr));
    let status = String::from_utf8(out.stdout).unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff line").trim();
    u64::from_str_radix(hex, 16).unwrap()
}

struct SliceDef<'a> {
    name: &'a str,
    vni: u32,
    index: u32,
    peers: Vec<(&'a str, u32)>,
}

/// The node prefix number `i` of 198.19.0.0/16 (/26s).
fn prefix(i: u32) -> String {
    format!("198.19.{}.{}/26", i / 4, (i % 4) * 64)
}

/// The router address of node prefix `i`.
fn router(i: u32) -> String {
    format!("198.19.{}.{}", i / 4, (i % 4) * 64 + 1)
}

struct Daemon {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Daemon {
    fn log(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(self.log.path()).unwrap().read_to_string(&mut s).unwrap();
        s
    }

    /// Waits until the log has `count` lines containing any of `needles` (the deadline only
    /// bounds a hang: generous, so a loaded machine never reaches it).
    fn wait_log(&self, needles: &[&str], count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            let n = log.lines().filter(|l| needles.iter().any(|n| l.contains(n))).count();
            if n >= count {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {needles:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait; the exit status must be success.
    fn terminate(mut self) -> String {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "daemon exited with {status}:\n{log}");
        log
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two nodes on a veth "underlay", removed with everything they hold on drop.
struct Lab {
    nodes: Vec<Node>,
    tag: String,
}

impl Lab {
    fn new() -> Self {
        assert!(nix::unistd::geteuid().is_root(), "these tests need root (network namespaces, netlink)");
        let tag = format!("sna{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let mut lab = Lab { nodes: Vec::new(), tag: tag.clone() };
        for (i, underlay) in [(1, "198.18.250.1"), (2, "198.18.250.2")] {
            let name = format!("n{i}");
            let path = PathBuf::from(format!("/run/netns/{tag}-{name}"));
            let (ns, created) = Netns::ensure_named(&path).unwrap();
            assert!(created);
            lab.nodes.push(Node {
                router_prefix: format!("{tag}-{name}-"),
                name,
                path,
                ns,
                underlay,
                state_dir: tempfile::tempdir().unwrap(),
                config_dir: tempfile::tempdir().unwrap(),
            });
        }
        let (n1, n2) = (&lab.nodes[0], &lab.nodes[1]);
        let mut nl1 = Netlink::in_netns(&n1.ns).unwrap();
        nl1.create_veth(&VethRequest {
            name: "u1",
            netns: None,
            peer_name: "u2",
            peer_netns: Some(&n2.ns),
            mtu: Some(1500),
            mac: None,
            peer_mac: None,
        })
        .unwrap();
        let mut nl2 = Netlink::in_netns(&n2.ns).unwrap();
        for (nl, dev, addr) in [(&mut nl1, "u1", "198.18.250.1/24"), (&mut nl2, "u2", "198.18.250.2/24")] {
            nl.set_up("lo").unwrap();
            nl.add_addr(dev, addr.parse().unwrap()).unwrap();
            nl.set_up(dev).unwrap();
        }
        lab
    }

    fn n1(&self) -> &Node {
        &self.nodes[0]
    }

    fn n2(&self) -> &Node {
        &self.nodes[1]
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Router namespaces first, then the nodes.
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(&format!("{}-", self.tag)) {
                    let _ = Netns::delete_named(&e.path());
                }
            }
        }
        for node in &self.nodes {
            let _ = Netns::delete_named(&node.path);
        }
    }
}

fn blue(index: u32, peer_underlay: &str, peer_index: u32) -> SliceDef<'_> {
    SliceDef { name: "blue", vni: 100, index, peers: vec![(peer_underlay, peer_index)] }
}

fn routes_on(nl: &mut Netlink, dev: &str) -> Vec<Route> {
    nl.routes(false).unwrap().into_iter().filter(|r| r.dev.as_deref() == Some(dev)).collect()
}

fn permanent_neighs(nl: &mut Netlink, dev: &str) -> Vec<dataplane::Neigh> {
    nl.neighs(dev).unwrap().into_iter().filter(|n| n.permanent).collect()
}

#[test]
fn routers_on_two_nodes_reach_each_other_and_a_second_run_changes_nothing() {
    let lab = Lab::new();
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1)]);
    lab.n2().write_config(&[blue(1, "198.18.250.1", 0)]);
    lab.n1().run_once_ok();
    lab.n2().run_once_ok();

    assert!(lab.n1().ping("blue", &router(0), &router(1)));
    assert!(lab.n2().ping("blue", &router(1), &router(0)));

    // The state file is there, with what the CNI plugin needs.
    let state = NodeState::load(lab.n1().state_dir.path(), "blue").unwrap().expect("state file");
    assert_eq!(state.router_address.to_string(), router(0));
    assert_eq!(state.router_netns, lab.n1().router_path("blue"));
    assert_eq!(state.mtu, 1450);

    // Router namespace as specified.
    let ns = Netns::open(&lab.n1().router_path("blue")).unwrap();
    assert_eq!(ns.sysctl("net/ipv4/ip_forward").unwrap(), "1");
    // The reverse-path filter per device: every new device strict, the VXLAN of a slice with
    // one gateway too (slice_node::plan::rp_filter).
    assert_eq!(ns.sysctl("net/ipv4/conf/all/rp_filter").unwrap(), "0");
    assert_eq!(ns.sysctl("net/ipv4/conf/default/rp_filter").unwrap(), "1");
    assert_eq!(ns.sysctl("net/ipv4/conf/sv100/rp_filter").unwrap(), "1");
    let mut nl = lab.n1().router_nl("blue");
    let vx = nl.link("sv100").unwrap().unwrap();
    assert_eq!(vx.mtu, 1450);
    assert_eq!(vx.mac, Some([0x0a, 0x58, 198, 19, 0, 1]));
    assert_eq!(vx.vxlan_learning, Some(false));
    assert!(
        Netlink::in_netns(&lab.n1().ns).unwrap().link("sv100").unwrap().is_none(),
        "the vxlan must live in the router namespace"
    );

    // A second run (binary and library) changes nothing.
    let index = lab.n1().vxlan_index("blue", 100);
    let mtime = std::fs::metadata(NodeState::path(lab.n1().state_dir.path(), "blue")).unwrap().modified().unwrap();
    lab.n1().run_once_ok();
    assert_eq!(lab.n1().reconcile(), vec![]);
    assert_eq!(lab.n2().reconcile(), vec![]);
    assert_eq!(lab.n1().vxlan_index("blue", 100), index);
    assert_eq!(
        std::fs::metadata(NodeState::path(lab.n1().state_dir.path(), "blue")).unwrap().modified().unwrap(),
        mtime
    );

    // A VNI change on both sides recreates the VXLAN; the routers reach each other again.
    lab.n1().write_config(&[SliceDef { vni: 101, ..blue(0, "198.18.250.2", 1) }]);
    lab.n2().write_config(&[SliceDef { vni: 101, ..blue(1, "198.18.250.1", 0) }]);
    lab.n1().reconcile();
    lab.n2().reconcile();
    assert!(lab.n1().router_nl("blue").link("sv100").unwrap().is_none());
    lab.n1().vxlan_index("blue", 101);
    assert!(lab.n1().ping("blue", &router(0), &router(1)));
}

#[test]
fn a_restarted_daemon_adopts_and_follows_config_changes() {
    let lab = Lab::new();
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1)]);
    lab.n2().write_config(&[blue(1, "198.18.250.1", 0)]);
    lab.n2().run_once_ok();

    let daemon = lab.n1().spawn_daemon();
    daemon.wait_log(&["reconciled"], 1);
    assert!(lab.n1().ping("blue", &router(0), &router(1)));
    let index = lab.n1().vxlan_index("blue", 100);

    // A CNI-style per-pod route on another device: the agent must never touch it.
    let mut nl = lab.n1().router_nl("blue");
    let pod_route = Route {
        dst: "198.19.0.5/32".parse().unwrap(),
        gateway: None,
        dev: Some("lo".into()),
        src: None,
        onlink: false,
        scope_link: true,
    };
    nl.replace_route(&pod_route).unwrap();

    let log = daemon.terminate();
    assert!(log.contains("SIGTERM"), "{log}");
    // The data plane stays after the daemon exits.
    assert!(lab.n1().ping("blue", &router(0), &router(1)));

    // A new daemon adopts: nothing recreated, nothing applied.
    let daemon = lab.n1().spawn_daemon();
    daemon.wait_log(&["node is up to date"], 1);
    let log = daemon.log();
    assert!(!log.contains("applying"), "restart changed things:\n{log}");
    assert_eq!(lab.n1().vxlan_index("blue", 100), index);
    assert!(lab.n1().ping("blue", &router(0), &router(1)));

    // A configuration change is picked up without a restart: the peer goes away.
    lab.n1().write_config(&[SliceDef { peers: vec![], ..blue(0, "198.18.250.2", 1) }]);
    daemon.wait_log(&["reconciled"], 1);
    let mut nl = lab.n1().router_nl("blue");
    assert_eq!(routes_on(&mut nl, "sv100"), vec![]);
    assert!(nl.routes(false).unwrap().contains(&pod_route));
    assert_eq!(lab.n1().vxlan_index("blue", 100), index);

    // And back.
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1)]);
    daemon.wait_log(&["reconciled"], 2);
    assert!(lab.n1().ping("blue", &router(0), &router(1)));
    let log = daemon.terminate();
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn removing_a_peer_removes_its_route_neighbour_and_fdb_only() {
    let lab = Lab::new();
    // n1 knows the real n2 and a third node (never contacted).
    let with_both =
        SliceDef { name: "blue", vni: 100, index: 0, peers: vec![("198.18.250.2", 1), ("198.18.250.3", 2)] };
    lab.n1().write_config(&[with_both]);
    lab.n2().write_config(&[blue(1, "198.18.250.1", 0)]);
    lab.n1().run_once_ok();
    lab.n2().run_once_ok();
    let mut nl = lab.n1().router_nl("blue");
    assert_eq!(routes_on(&mut nl, "sv100").len(), 2);
    assert_eq!(permanent_neighs(&mut nl, "sv100").len(), 2);
    assert_eq!(nl.fdb("sv100").unwrap().len(), 2);
    let index = lab.n1().vxlan_index("blue", 100);

    lab.n1().write_config(&[blue(0, "198.18.250.2", 1)]);
    let actions = lab.n1().reconcile();
    assert_eq!(actions.len(), 3, "{actions:#?}");

    let routes = routes_on(&mut nl, "sv100");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].dst.to_string(), prefix(1));
    assert!(routes[0].onlink);
    // (The kernel's own IPv6 multicast entries on the device are not permanent.)
    let neighs = permanent_neighs(&mut nl, "sv100");
    assert_eq!(neighs.len(), 1, "{neighs:?}");
    assert_eq!(neighs[0].ip.to_string(), router(1));
    let fdb = nl.fdb("sv100").unwrap();
    assert_eq!(fdb.len(), 1);
    assert_eq!(fdb[0].dst.to_string(), "198.18.250.2");
    assert_eq!(lab.n1().vxlan_index("blue", 100), index);
    assert!(lab.n1().ping("blue", &router(0), &router(1)));

    // Drift (a route deleted by hand) is repaired by the next reconcile, and only that.
    assert!(nl.del_route(&routes[0]).unwrap());
    assert!(!lab.n1().ping("blue", &router(0), &router(1)));
    let actions = lab.n1().reconcile();
    assert_eq!(actions.len(), 1, "{actions:#?}");
    assert!(lab.n1().ping("blue", &router(0), &router(1)));
}

#[test]
fn removing_a_slice_removes_its_state_and_router_and_leaves_the_other_working() {
    let lab = Lab::new();
    let red = |i, peer, pi| SliceDef { name: "red", vni: 200, index: i, peers: vec![(peer, pi)] };
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1), red(4, "198.18.250.2", 5)]);
    lab.n2().write_config(&[blue(1, "198.18.250.1", 0), red(5, "198.18.250.1", 4)]);
    lab.n1().run_once_ok();
    lab.n2().run_once_ok();
    assert!(lab.n1().ping("red", &router(4), &router(5)));
    assert!(lab.n1().ping("blue", &router(0), &router(1)));
    let blue_index = lab.n1().vxlan_index("blue", 100);

    lab.n1().write_config(&[blue(0, "198.18.250.2", 1)]);
    lab.n1().run_once_ok();
    assert!(!NodeState::path(lab.n1().state_dir.path(), "red").exists());
    assert!(!lab.n1().router_path("red").exists());
    assert!(NodeState::path(lab.n1().state_dir.path(), "blue").exists());
    assert_eq!(lab.n1().vxlan_index("blue", 100), blue_index);
    assert!(lab.n1().ping("blue", &router(0), &router(1)));
    // n2's red router no longer reaches n1's (gone).
    assert!(!lab.n2().ping("red", &router(5), &router(4)));

    // Re-adding it at once works (the old VXLAN must not hold the VNI any more).
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1), red(4, "198.18.250.2", 5)]);
    lab.n1().run_once_ok();
    assert!(lab.n1().ping("red", &router(4), &router(5)));
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1)]);
    lab.n1().run_once_ok();
    assert!(!lab.n1().router_path("red").exists());

    // A router namespace with our prefix but no state file and no config is stale too;
    // other namespaces in the same directory are never touched.
    let stray = lab.n1().router_path("green");
    Netns::ensure_named(&stray).unwrap();
    let foreign = PathBuf::from(format!("/run/netns/{}-cni-foreign", lab.tag));
    Netns::ensure_named(&foreign).unwrap();
    lab.n1().run_once_ok();
    assert!(!stray.exists());
    assert!(foreign.exists());
}

#[test]
fn two_slices_with_the_same_subnet_stay_isolated() {
    let lab = Lab::new();
    let red = |i, peer, pi| SliceDef { name: "red", vni: 200, index: i, peers: vec![(peer, pi)] };
    // Same subnet, same node prefixes, same router addresses; only the VNI differs.
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1), red(0, "198.18.250.2", 1)]);
    lab.n2().write_config(&[blue(1, "198.18.250.1", 0), red(1, "198.18.250.1", 0)]);
    lab.n1().run_once_ok();
    lab.n2().run_once_ok();
    assert!(lab.n1().ping("blue", &router(0), &router(1)));
    assert!(lab.n1().ping("red", &router(0), &router(1)));

    // An address only n2's red router has: red on n1 reaches it, blue on n1 does not.
    let marker = "198.19.0.70";
    let status = Command::new("ip")
        .args(["-n", &lab.n2().router_name("red")])
        .args(["addr", "add", &format!("{marker}/32"), "dev", "lo"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(lab.n1().ping("red", &router(0), marker));
    assert!(!lab.n1().ping("blue", &router(0), marker));
}

#[test]
fn once_exits_nonzero_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, br#"{"node": "n1"}"#).unwrap();
    let out = Command::new(BIN).args(["node-agent", "--config"]).arg(&path).arg("--once").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.json"), "{stderr}");
    let missing = dir.path().join("missing-kubeconfig.yaml");
    let out = Command::new(BIN).arg("hub").arg("--kubeconfig").arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing-kubeconfig.yaml"));
}

/// `GET path` from inside `ns` (the node's own namespace, made by the test) to its loopback;
/// the status code, or the connection error.
fn probe_in(ns: &Netns, port: u16, path: &str) -> Result<u16, String> {
    use std::io::Write as _;
    let path = path.to_owned();
    ns.run(move || {
        let mut s = std::net::TcpStream::connect(("::1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: n\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(answer)
    })
    .unwrap()
}

#[test]
fn the_daemon_serves_its_probes_when_asked() {
    let lab = Lab::new();
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1)]);
    // Dual-stack `[::]` in the node's own namespace: no other test's port can collide.
    let daemon = lab.n1().spawn_daemon_with(&["--health-addr", "[::]:8081"]);
    daemon.wait_log(&["health endpoint listening"], 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe_in(&lab.n1().ns, 8081, "/readyz") != Ok(200) {
        assert!(Instant::now() < deadline, "never ready:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(probe_in(&lab.n1().ns, 8081, "/healthz"), Ok(200));
    assert_eq!(probe_in(&lab.n1().ns, 8081, "/nothing"), Ok(404));
    daemon.terminate();
    // Without the flag nothing listens.
    let daemon = lab.n1().spawn_daemon();
    daemon.wait_log(&["node is up to date", "reconciled"], 1);
    assert!(probe_in(&lab.n1().ns, 8081, "/healthz").is_err(), "no endpoint unless asked");
    daemon.terminate();
}

/// The capabilities the node agent needs, and why (the DaemonSet's comment in
/// `slicectl/src/install/workloads.rs` and docs/security.md cite this test):
/// - `net_admin`: netlink writes (VXLAN, links, addresses, routes, neighbours, FDB) and the
///   router namespaces' sysctls;
/// - `sys_admin`: `unshare(CLONE_NEWNET)` and `setns` into the router namespaces, the bind mount
///   that names each one under /run/netns and making that directory a shared mount.
///
/// The real binary with only these two does its whole job (routers made, configured and
/// reaching each other, state files written); without either it fails and says what it could
/// not do.
#[test]
fn the_agent_needs_only_net_admin_and_sys_admin() {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let only = ["net_admin", "sys_admin"];
    // setpriv does restrict: exactly these two are effective.
    assert_eq!(effective_caps_with_only(&only), (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN));

    let lab = Lab::new();
    lab.n1().write_config(&[blue(0, "198.18.250.2", 1)]);
    lab.n2().write_config(&[blue(1, "198.18.250.1", 0)]);

    // Without SYS_ADMIN it cannot make the router namespace; without NET_ADMIN it cannot
    // configure one (n1's is made by the first run, so the second gets to netlink).
    let out = lab.n1().run_once_with_only(&["net_admin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Operation not permitted"), "without sys_admin: {err}");
    assert!(NodeState::load(lab.n1().state_dir.path(), "blue").unwrap().is_none(), "no state without a router");
    let out = lab.n1().run_once_with_only(&["sys_admin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Operation not permitted"), "without net_admin: {err}");
    assert!(NodeState::load(lab.n1().state_dir.path(), "blue").unwrap().is_none(), "no state without a router");

    for node in [lab.n1(), lab.n2()] {
        let out = node.run_once_with_only(&only);
        assert!(
            out.status.success(),
            "node-agent with {only:?} on {}: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(lab.n1().ping("blue", &router(0), &router(1)));
    assert!(lab.n2().ping("blue", &router(1), &router(0)));
    let state = NodeState::load(lab.n1().state_dir.path(), "blue").unwrap().expect("state file");
    assert_eq!(state.router_netns, lab.n1().router_path("blue"));
    let ns = Netns::open(&lab.n1().router_path("blue")).unwrap();
    assert_eq!(ns.sysctl("net/ipv4/ip_forward").unwrap(), "1");
    assert_eq!(ns.sysctl("net/ipv4/conf/default/rp_filter").unwrap(), "1");
    assert_eq!(ns.sysctl("net/ipv4/conf/sv100/rp_filter").unwrap(), "1");
    // And what the full run made, a run with the two capabilities finds in place.
    assert!(lab.n1().run_once_with_only(&only).status.success());
    assert_eq!(lab.n1().reconcile(), vec![]);
}
