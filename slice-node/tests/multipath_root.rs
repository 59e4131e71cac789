//! Root test of a remote prefix through two gateway replicas on the real kernel (issue 13): a
//! "node" namespace running the agent's daemon loop (the library's `daemon::run`, fed its
//! configuration through a channel), the slice router it builds, two "replica" namespaces
//! attached to the router as the CNI plugin attaches pods, each serving the gateway's
//! `/healthz` and receiving the remote prefix's traffic, and a client pod namespace sending UDP
//! flows to the remote prefix. Flows are counted per replica by the flow id they carry (never
//! rates or timings); every wait is for a condition, with a deadline. Names start with
//! `mp-<pid>-<n>-` and a `Drop` guard stops the daemon, the servers and deletes every
//! namespace, also when the test panics. It fails (never skips) without root.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::{Netlink, Netns, NexthopKind, Route, VethRequest};
use ipnet::IpNet;
use serde_json::json;
use slice_api::node::NodeAgentConfig;
use slice_node::daemon::{ConfigUpdate, Readiness, Timing};
use slice_node::plan::multipath::{GATEWAY_NEXTHOP_BASE, GROUP_BASE, LOCAL_GROUP_BASE};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// How long any condition may take to hold: far above what it needs, so that a loaded machine
/// only makes the test slower.
const DEADLINE: Duration = Duration::from_secs(20);
const FLOWS: u16 = 32;
const ROUTER: &str = "10.113.0.1";
const CLIENT: &str = "10.113.0.2";
const REPLICA_A: &str = "10.113.0.5";
const REPLICA_B: &str = "10.113.0.6";
/// An address of the remote prefix (10.113.64.0/20), on both replicas' `lo`.
const REMOTE: &str = "10.113.64.1";
const FLOW_PORT: u16 = 7000;
/// Where the client receives what comes back from the remote prefix.
const BACK_PORT: u16 = 7001;
/// The nexthop ids of the two replicas (sorted addresses: .5 first).
const NH_A: u32 = GATEWAY_NEXTHOP_BASE;
const NH_B: u32 = GATEWAY_NEXTHOP_BASE + 1;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Waits until `check` holds, or panics with `what` after [`DEADLINE`].
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A thread serving something on a socket until dropped (shutdown wakes the blocked call).
struct Server {
    fd: i32,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _socket: Box<dyn std::any::Any + Send>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: the fd is open for as long as `_socket` lives.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The gateway's `/healthz` on `addr` in `ns`: `200 ok` to every request.
fn health_server(ns: &Netns, addr: SocketAddr) -> Server {
    let listener = Arc::new(ns.run(|| TcpListener::bind(addr)).unwrap().expect("bind the health endpoint"));
    let stop = Arc::new(AtomicBool::new(false));
    let accepting = listener.clone();
    let thread = std::thread::spawn(move || {
        while let Ok((mut stream, _)) = accepting.accept() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = stream.read(&mut [0u8; 512]);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    Server { fd: listener.as_raw_fd(), stop, thread: Some(thread), _socket: Box::new(listener) }
}

/// A UDP receiver on `addr` in `ns` that records the flow id (first two bytes) of each datagram.
fn flow_receiver(ns: &Netns, addr: SocketAddr, seen: Arc<Mutex<BTreeSet<u16>>>) -> Server {
    let socket = Arc::new(ns.run(|| UdpSocket::bind(addr)).unwrap().expect("bind the flow receiver"));
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (receiving, stopping) = (socket.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stopping.load(Ordering::SeqCst) {
            if let Ok(n) = receiving.recv(&mut buf)
                && n >= 2
            {
                seen.lock().unwrap().insert(u16::from_be_bytes([buf[0], buf[1]]));
            }
        }
    });
    Server { fd: socket.as_raw_fd(), stop, thread: Some(thread), _socket: Box::new(socket) }
}

/// The agent's daemon loop on a thread inside the node namespace, until dropped (the
/// configuration channel closes, and the loop ends).
struct Daemon {
    updates: Option<futures::channel::mpsc::UnboundedSender<Result<ConfigUpdate, String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    fn start(node: PathBuf, config: &NodeAgentConfig) -> Self {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tx.unbounded_send(Ok(ConfigUpdate::Config(Box::new(config.clone())))).unwrap();
        let thread = std::thread::spawn(move || {
            let ns = Netns::open(&node).unwrap();
            // Every thread the loop starts (blocking pool, probes) is created from this one, in
            // the node namespace.
            ns.run(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let health = slice_kube::health::Health::new();
                let timing = Timing { retry: Duration::from_millis(100), resync: Duration::from_secs(10) };
                // Ends with an error when the channel closes: that is how the test stops it.
                let _ = runtime.block_on(slice_node::daemon::run(rx, timing, &health, Readiness::OnConfig));
            })
            .unwrap();
        });
        Self { updates: Some(tx), thread: Some(thread) }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.updates.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Lab {
    prefix: String,
    state_dir: tempfile::TempDir,
    /// Every namespace made (the router the agent makes first), deleted on drop, last first.
    paths: Vec<PathBuf>,
    daemon: Option<Daemon>,
    servers: Vec<Server>,
}

impl Lab {
    fn new() -> Self {
        assert!(is_root(), "this test needs root (network namespaces, nexthops)");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("mp-{}-{n}-", std::process::id());
        let mut lab = Self {
            paths: vec![PathBuf::from(format!("/run/netns/{prefix}r-blue"))],
            prefix,
            state_dir: tempfile::tempdir().unwrap(),
            daemon: None,
            servers: Vec::new(),
        };
        let node = lab.make_ns("node");
        let mut nl = Netlink::in_netns(&node).unwrap();
        nl.set_up("lo").unwrap();
        nl.add_addr("lo", "198.18.252.1/32".parse().unwrap()).unwrap();
        lab
    }

    fn make_ns(&mut self, name: &str) -> Netns {
        let path = PathBuf::from(format!("/run/netns/{}{name}", self.prefix));
        let (ns, created) = Netns::ensure_named(&path).expect("create test namespace");
        self.paths.push(path.clone());
        assert!(created, "{} existed already", path.display());
        ns
    }

    fn node_path(&self) -> PathBuf {
        self.paths[1].clone()
    }

    fn router(&self) -> Netns {
        Netns::open(&self.paths[0]).expect("the router namespace exists")
    }

    /// Slice blue on this node, its remote prefix 10.113.64.0/20 through replicas A and B.
    fn config(&self) -> NodeAgentConfig {
        let config: NodeAgentConfig = serde_json::from_value(json!({
            "node": "n1",
            "underlayAddress": "198.18.252.1",
            "stateDir": self.state_dir.path(),
            "netnsDir": "/run/netns",
            "routerNetnsPrefix": format!("{}r-", self.prefix),
            "slices": [{
                "name": "blue", "vni": 113, "sliceSubnet": "10.113.0.0/16",
                "nodePrefix": "10.113.0.0/26", "namespaces": ["shop"],
                // Dual-stack: the router's table, with its IPv6 anti-spoof check.
                "secondary": {"sliceSubnet": "fd00:113::/48", "nodePrefix": "fd00:113::/120"},
                "remoteRoutes": [{"prefix": "10.113.64.0/20", "via": REPLICA_A, "alsoVia": [REPLICA_B]}]
            }]
        }))
        .unwrap();
        config.validate().expect("test config is valid");
        config
    }

    /// A pod namespace attached to the router with `ip` (the CNI plugin's way).
    fn pod(&mut self, name: &str, host_veth: &str, ip: &str) -> Netns {
        let pod = self.make_ns(name);
        let mut rnl = Netlink::in_netns(&self.router()).unwrap();
        rnl.create_veth(&VethRequest {
            name: host_veth,
            netns: None,
            peer_name: "slice0",
            peer_netns: Some(&pod),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .unwrap();
        rnl.set_up(host_veth).unwrap();
        rnl.add_route(&route(&format!("{ip}/32"), None, host_veth, None)).unwrap();
        let ip: IpAddr = ip.parse().unwrap();
        let mut pnl = Netlink::in_netns(&pod).unwrap();
        pnl.set_up("lo").unwrap();
        pnl.set_up("slice0").unwrap();
        pnl.add_addr("slice0", format!("{ip}/32").parse().unwrap()).unwrap();
        pnl.add_route(&route(&format!("{ROUTER}/32"), None, "slice0", None)).unwrap();
        pnl.add_route(&route("10.113.0.0/16", Some(ROUTER), "slice0", Some(ip))).unwrap();
        pod
    }

    /// The members of nexthop group `id` in the router (empty when there is no such group).
    fn members(&self, id: u32) -> Vec<u32> {
        let nexthops = Netlink::in_netns(&self.router()).unwrap().nexthops().unwrap();
        nexthops
            .into_iter()
            .find_map(|n| match n.kind {
                NexthopKind::Group { members } if n.id == id => Some(members),
                _ => None,
            })
            .unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The daemon first: it would rebuild the router.
        self.daemon.take();
        self.servers.clear();
        for path in self.paths.iter().rev() {
            let _ = Netns::delete_named(path);
        }
    }
}

fn route(dst: &str, via: Option<&str>, dev: &str, src: Option<IpAddr>) -> Route {
    Route {
        dst: dst.parse::<IpNet>().unwrap(),
        gateway: via.map(|v| v.parse().unwrap()),
        dev: Some(dev.into()),
        src,
        onlink: false,
        scope_link: via.is_none(),
    }
}

/// Sends one datagram of each of [`FLOWS`] flows (each its own socket, so its own source port)
/// from `client` to the remote address, again every half second until `done` holds.
fn send_flows(client: &Netns, mut done: impl FnMut() -> bool) {
    let sockets: Vec<UdpSocket> =
        client.run(|| (0..FLOWS).map(|_| UdpSocket::bind(format!("{CLIENT}:0")).unwrap()).collect()).unwrap();
    let target: SocketAddr = format!("{REMOTE}:{FLOW_PORT}").parse().unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Resent (same flows) in case the first datagrams met an unresolved neighbour.
        for (flow, socket) in (0..FLOWS).zip(&sockets) {
            let _ = socket.send_to(&flow.to_be_bytes(), target);
        }
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(Instant::now() < deadline, "timed out waiting for the flows to arrive");
    }
}

/// Sends a datagram (flow id 0) from `socket` to `to` every 100 ms until `done` holds.
fn resend_until(socket: &UdpSocket, to: String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out sending to {to}");
        let _ = socket.send_to(&0u16.to_be_bytes(), &to);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel's count of packets `ns` dropped by its reverse-path filter
/// (`TcpExt: IPReversePathFilter`; `/proc/thread-self/net` is the namespace's).
fn rp_filter_drops(ns: &Netns) -> u64 {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/netstat")).unwrap().unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (lines[0].split_whitespace(), lines[1].split_whitespace());
    names.zip(values).find(|(n, _)| *n == "IPReversePathFilter").and_then(|(_, v)| v.parse().ok()).expect("the counter")
}

#[test]
fn flows_spread_over_two_replicas_a_dead_one_leaves_the_group_and_rejoins() {
    let mut lab = Lab::new();
    let config = lab.config();
    // The router first (the pods are attached to it), as a fresh node builds it: the agent
    // waits for the gateway pods.
    let node = Netns::open(&lab.node_path()).unwrap();
    let first = node.run(|| slice_node::reconcile(&config)).unwrap();
    assert!(first.is_err_and(|e| e.is_only_waiting()));

    let client = lab.pod("client", "mpc", CLIENT);
    let a = lab.pod("ra", "mpa", REPLICA_A);
    let b = lab.pod("rb", "mpb", REPLICA_B);
    let at_a = Arc::new(Mutex::new(BTreeSet::new()));
    let at_b = Arc::new(Mutex::new(BTreeSet::new()));
    let metrics = |ip: &str| SocketAddr::new(ip.parse().unwrap(), slice_api::gateway::METRICS_PORT);
    for (ns, ip, seen) in [(&a, REPLICA_A, &at_a), (&b, REPLICA_B, &at_b)] {
        let mut nl = Netlink::in_netns(ns).unwrap();
        nl.add_addr("lo", format!("{REMOTE}/32").parse().unwrap()).unwrap();
        lab.servers.push(flow_receiver(ns, format!("{REMOTE}:{FLOW_PORT}").parse().unwrap(), seen.clone()));
        lab.servers.push(health_server(ns, metrics(ip)));
    }
    // The health endpoint of A is the third server pushed.
    let a_health = 1;

    lab.daemon = Some(Daemon::start(lab.node_path(), &config));
    wait_for("both replicas in the group", || lab.members(GROUP_BASE) == [NH_A, NH_B]);
    assert_eq!(lab.members(LOCAL_GROUP_BASE), [NH_A, NH_B]);

    // 32 flows: every one arrives, and both replicas carry some.
    let all: BTreeSet<u16> = (0..FLOWS).collect();
    let union = |a: &Mutex<BTreeSet<u16>>, b: &Mutex<BTreeSet<u16>>| -> BTreeSet<u16> {
        a.lock().unwrap().union(&b.lock().unwrap()).copied().collect()
    };
    send_flows(&client, || union(&at_a, &at_b) == all);
    let (via_a, via_b) = (at_a.lock().unwrap().len(), at_b.lock().unwrap().len());
    assert!(via_a > 0 && via_b > 0, "flows via A: {via_a}, via B: {via_b}");

    // A's health endpoint dies (its process would; its veth stays up): its nexthop leaves both
    // groups, and every new flow goes via B.
    lab.servers.remove(a_health);
    wait_for("A out of the group", || lab.members(GROUP_BASE) == [NH_B]);
    assert_eq!(lab.members(LOCAL_GROUP_BASE), [NH_B]);
    at_a.lock().unwrap().clear();
    at_b.lock().unwrap().clear();
    send_flows(&client, || *at_b.lock().unwrap() == all);
    assert!(at_a.lock().unwrap().is_empty(), "flows still via A: {:?}", at_a.lock().unwrap());

    // What the remote side still sends through A (its peers have not seen it go) comes in on
    // A's veth while A is out of the groups: the router forwards it (no reverse-path filter on
    // a replica's veth), where the strict check would drop it (the route back no longer uses
    // that veth). The client's veth stays strict: a datagram it sends from the remote prefix's
    // address is dropped by the reverse-path filter.
    let router = lab.router();
    let sysctl = |key: &str| router.run(|| std::fs::read_to_string(format!("/proc/sys/{key}"))).unwrap().unwrap();
    for (dev, value) in [("mpa", "0"), ("mpb", "0"), ("mpc", "1"), ("sv113", "0"), ("all", "0"), ("default", "1")] {
        assert_eq!(sysctl(&format!("net/ipv4/conf/{dev}/rp_filter")).trim(), value, "{dev}");
    }
    // IPv6's anti-spoof check (nft) skips the same devices, before the check.
    let table = dataplane::nft::list_table(&router, slice_node::firewall::TABLE).unwrap().expect("the table");
    let chain: Vec<String> = table
        .iter()
        .filter(|o| o["rule"]["chain"] == slice_node::firewall::anti_spoof::CHAIN)
        .map(|o| o["rule"]["expr"].to_string())
        .collect();
    let at = |needle: &str| {
        chain.iter().position(|r| r.contains(needle)).unwrap_or_else(|| panic!("no {needle} in {chain:#?}"))
    };
    for dev in ["mpa", "mpb", "sv113"] {
        assert!(at(&format!("\"right\":\"{dev}\"}}")) < at("\"fib\""), "{chain:#?}");
    }
    assert!(!chain.iter().any(|r| r.contains("\"mpc\"")), "the client's veth is checked: {chain:#?}");
    let back = Arc::new(Mutex::new(BTreeSet::new()));
    lab.servers.push(flow_receiver(&client, format!("{CLIENT}:{BACK_PORT}").parse().unwrap(), back.clone()));
    let from_remote = a.run(|| UdpSocket::bind(format!("{REMOTE}:0"))).unwrap().unwrap();
    resend_until(&from_remote, format!("{CLIENT}:{BACK_PORT}"), || back.lock().unwrap().contains(&0));
    // Another address of the remote prefix (the flows still go to REMOTE).
    let forged = "10.113.64.7";
    Netlink::in_netns(&client).unwrap().add_addr("lo", format!("{forged}/32").parse().unwrap()).unwrap();
    let spoofing = client.run(|| UdpSocket::bind(format!("{forged}:0"))).unwrap().unwrap();
    let dropped = rp_filter_drops(&router);
    resend_until(&spoofing, format!("{REPLICA_B}:{FLOW_PORT}"), || rp_filter_drops(&router) > dropped);

    // An agent that knows A is dead (a restart that probed first) finds nothing to change; a
    // replica's veth and a pod's veth someone else changed get their filter back.
    let dead = slice_node::DeadGateways::from([("blue".to_owned(), BTreeSet::from([REPLICA_A.parse().unwrap()]))]);
    let second = node.run(|| slice_node::reconcile_live(&config, &dead)).unwrap();
    assert_eq!(second.unwrap(), Vec::<slice_node::Action>::new());
    for (dev, value) in [("mpa", "1"), ("mpc", "2")] {
        router.run(|| std::fs::write(format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter"), value)).unwrap().unwrap();
    }
    let third = node.run(|| slice_node::reconcile_live(&config, &dead)).unwrap().unwrap();
    assert_eq!(
        third.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["set sysctl net/ipv4/conf/mpa/rp_filter=0", "set sysctl net/ipv4/conf/mpc/rp_filter=1"]
    );
    assert_eq!(
        (sysctl("net/ipv4/conf/mpa/rp_filter").trim(), sysctl("net/ipv4/conf/mpc/rp_filter").trim()),
        ("0", "1")
    );

    // A answers again: it rejoins, and flows spread again.
    lab.servers.push(health_server(&a, metrics(REPLICA_A)));
    wait_for("A back in the group", || lab.members(GROUP_BASE) == [NH_A, NH_B]);
    assert_eq!(lab.members(LOCAL_GROUP_BASE), [NH_A, NH_B]);
    at_a.lock().unwrap().clear();
    at_b.lock().unwrap().clear();
    send_flows(&client, || union(&at_a, &at_b) == all);
    let (via_a, via_b) = (at_a.lock().unwrap().len(), at_b.lock().unwrap().len());
    assert!(via_a > 0 && via_b > 0, "flows via A: {via_a}, via B: {via_b}");
}
