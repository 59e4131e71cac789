//! Root tests of ClusterSetIP services on the real kernel: a "node" namespace, the slice router
//! namespace the agent builds from it (library reconcile, as the daemon runs it), and pod
//! namespaces attached to the router as the CNI plugin attaches them (`slice0` with an IP/32,
//! routes via the router address; a /32 route to the pod on its veth in the router). Backends
//! are std listeners of this test, each entered into its pod namespace, answering with their own
//! number; the client connects from its pod namespace. Every namespace has this file's prefix
//! `hs-<pid>-<n>-`, and a `Drop` guard deletes them (and stops the listeners) even when a test
//! panics. They fail (never skip) without root.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dataplane::{Netlink, Netns, Route, VethRequest};
use ipnet::IpNet;
use serde_json::json;
use slice_api::node::NodeAgentConfig;
use slice_node::Action;
use slice_node::firewall::TABLE;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Deadline of one connection attempt: far above any real answer; an answer that never comes
/// fails the assertion on the error's kind (a timeout is not a refusal).
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

const VIP: &str = "10.80.255.10";
const ROUTER: &str = "10.80.0.1";

/// A TCP listener in a pod namespace that writes its `id` to every connection, until dropped.
struct Backend {
    listener: std::sync::Arc<TcpListener>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(ns: &Netns, addr: SocketAddr, id: u8) -> Self {
        // The socket belongs to the namespace it was created in, whichever thread uses it later.
        let listener = ns.run(|| TcpListener::bind(addr)).unwrap().expect("bind the backend listener");
        let listener = std::sync::Arc::new(listener);
        let accepting = listener.clone();
        let thread = std::thread::spawn(move || {
            // Ends when Drop shuts the socket down (accept fails).
            while let Ok((mut stream, _)) = accepting.accept() {
                let _ = stream.write_all(&[id]);
            }
        });
        Self { listener, thread: Some(thread) }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // shutdown(2) on a listening socket wakes a blocked accept with an error.
        // SAFETY: the fd is open for as long as `self.listener` lives.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A test namespace under /run/netns.
struct TestNs {
    ns: Netns,
}

struct Lab {
    prefix: String,
    node: TestNs,
    state_dir: tempfile::TempDir,
    /// Every namespace made (and the router the agent makes), deleted on drop.
    paths: Vec<PathBuf>,
    backends: Vec<Backend>,
}

impl Lab {
    fn new() -> Self {
        assert!(nix_is_root(), "these tests need root (network namespaces, nftables)");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("hs-{}-{n}-", std::process::id());
        let mut paths = vec![PathBuf::from(format!("/run/netns/{prefix}r-blue"))];
        let node = make_ns(&format!("{prefix}node"), &mut paths);
        // The underlay address the VXLAN binds to.
        let mut nl = Netlink::in_netns(&node.ns).unwrap();
        nl.set_up("lo").unwrap();
        nl.add_addr("lo", "198.18.251.1/32".parse().unwrap()).unwrap();
        Self { prefix, node, state_dir: tempfile::tempdir().unwrap(), paths, backends: Vec::new() }
    }

    fn router_name(&self) -> String {
        format!("{}r-blue", self.prefix)
    }

    fn router(&self) -> Netns {
        Netns::open(&self.paths[0]).expect("the router namespace exists")
    }

    /// The node configuration with slice blue and `services`.
    fn config(&self, services: serde_json::Value) -> NodeAgentConfig {
        let config: NodeAgentConfig = serde_json::from_value(json!({
            "node": "n1",
            "underlayAddress": "198.18.251.1",
            "stateDir": self.state_dir.path(),
            "netnsDir": "/run/netns",
            "routerNetnsPrefix": format!("{}r-", self.prefix),
            "slices": [{
                "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16",
                "nodePrefix": "10.80.0.0/26", "namespaces": ["shop"],
                "services": services,
            }]
        }))
        .unwrap();
        config.validate().expect("test config is valid");
        config
    }

    fn reconcile(&self, config: &NodeAgentConfig) -> Vec<Action> {
        self.node
            .ns
            .run(|| slice_node::reconcile(config))
            .unwrap()
            .unwrap_or_else(|e| panic!("reconcile: {}", slice_api::error_chain::chain(&e)))
    }

    /// A pod namespace attached to the router with `ip`.
    fn pod(&mut self, name: &str, index: u32, ip: &str) -> TestNs {
        let pod = make_ns(&format!("{}{name}", self.prefix), &mut self.paths);
        let ip: IpAddr = ip.parse().unwrap();
        let host = format!("hsv{index}");
        let mut rnl = Netlink::in_netns(&self.router()).unwrap();
        rnl.create_veth(&VethRequest {
            name: &host,
            netns: None,
            peer_name: "slice0",
            peer_netns: Some(&pod.ns),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .unwrap();
        rnl.set_up(&host).unwrap();
        rnl.add_route(&route(&format!("{ip}/32"), None, &host, None)).unwrap();
        let mut pnl = Netlink::in_netns(&pod.ns).unwrap();
        pnl.set_up("lo").unwrap();
        pnl.set_up("slice0").unwrap();
        pnl.add_addr("slice0", format!("{ip}/32").parse().unwrap()).unwrap();
        pnl.add_route(&route(&format!("{ROUTER}/32"), None, "slice0", None)).unwrap();
        pnl.add_route(&route("10.80.0.0/16", Some(ROUTER), "slice0", Some(ip))).unwrap();
        pod
    }

    fn backend(&mut self, pod: &TestNs, addr: &str, id: u8) {
        self.backends.push(Backend::start(&pod.ns, addr.parse().unwrap(), id));
    }

    /// `nft ARGS` in the router namespace (someone else editing the table).
    fn nft_in_router(&self, args: &[&str]) {
        let out = Command::new("ip").args(["netns", "exec", &self.router_name(), "nft"]).args(args).output().unwrap();
        assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn table(&self) -> Option<Vec<serde_json::Value>> {
        dataplane::nft::list_table(&self.router(), TABLE).unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.backends.clear();
        for path in self.paths.iter().rev() {
            let _ = Netns::delete_named(path);
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn make_ns(name: &str, paths: &mut Vec<PathBuf>) -> TestNs {
    let path = PathBuf::from(format!("/run/netns/{name}"));
    let (ns, created) = Netns::ensure_named(&path).expect("create test namespace");
    paths.push(path.clone());
    assert!(created, "{} existed already", path.display());
    TestNs { ns }
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

/// `count` connections to `addr` from `client`: how many each backend id answered.
fn connect_many(client: &TestNs, addr: &str, count: usize) -> BTreeMap<u8, usize> {
    let addr: SocketAddr = addr.parse().unwrap();
    client
        .ns
        .run(|| {
            let mut seen = BTreeMap::new();
            for i in 0..count {
                let mut stream = TcpStream::connect_timeout(&addr, CONNECT_DEADLINE)
                    .unwrap_or_else(|e| panic!("connection {i} to {addr}: {e}"));
                stream.set_read_timeout(Some(CONNECT_DEADLINE)).unwrap();
                let mut id = [0u8];
                stream.read_exact(&mut id).unwrap_or_else(|e| panic!("reply {i} from {addr}: {e}"));
                *seen.entry(id[0]).or_insert(0) += 1;
            }
            seen
        })
        .unwrap()
}

/// The error kind of one TCP connection attempt (`None` when it connected).
fn tcp_error(client: &TestNs, addr: &str) -> Option<std::io::ErrorKind> {
    let addr: SocketAddr = addr.parse().unwrap();
    client.ns.run(|| TcpStream::connect_timeout(&addr, CONNECT_DEADLINE).err().map(|e| e.kind())).unwrap()
}

/// The error kind of a UDP exchange with `addr` (the ICMP error comes back on a connected socket).
fn udp_error(client: &TestNs, addr: &str) -> Option<std::io::ErrorKind> {
    let addr: SocketAddr = addr.parse().unwrap();
    client
        .ns
        .run(|| {
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.connect(addr).unwrap();
            socket.set_read_timeout(Some(CONNECT_DEADLINE)).unwrap();
            socket.send(b"ping").unwrap();
            socket.recv(&mut [0u8; 16]).err().map(|e| e.kind())
        })
        .unwrap()
}

fn web(backends: &[&str]) -> serde_json::Value {
    json!([{"name": "shop/web", "ip": VIP, "ports": [
        {"protocol": "TCP", "port": 80, "backends": backends},
        {"protocol": "TCP", "port": 81, "backends": []},
        {"protocol": "UDP", "port": 53, "backends": []}
    ]}])
}

fn replaced_firewall_only(actions: &[Action]) -> bool {
    matches!(actions, [Action::ReplaceFirewall { .. }])
}

#[test]
fn a_cluster_set_ip_reaches_every_backend_refuses_what_has_none_and_is_repaired_and_removed() {
    let mut lab = Lab::new();
    let both = ["10.80.0.3:8080", "10.80.0.4:8080"];
    let config = lab.config(web(&both));
    assert!(lab.reconcile(&config).iter().any(|a| matches!(a, Action::ReplaceFirewall { .. })));
    let client = lab.pod("client", 2, "10.80.0.2");
    let b1 = lab.pod("b1", 3, "10.80.0.3");
    let b2 = lab.pod("b2", 4, "10.80.0.4");
    lab.backend(&b1, "10.80.0.3:8080", 1);
    lab.backend(&b2, "10.80.0.4:8080", 2);

    // 100 connections, each DNAT-ed on its own: both backends answer, and every one is answered.
    let seen = connect_many(&client, &format!("{VIP}:80"), 100);
    assert_eq!(seen.values().sum::<usize>(), 100);
    assert!(seen.get(&1).is_some_and(|n| *n > 0) && seen.get(&2).is_some_and(|n| *n > 0), "{seen:?}");

    // No backend, or no such port: refused at once, as kube-proxy does.
    assert_eq!(tcp_error(&client, &format!("{VIP}:81")), Some(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(tcp_error(&client, &format!("{VIP}:9999")), Some(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(udp_error(&client, &format!("{VIP}:53")), Some(std::io::ErrorKind::ConnectionRefused));

    // Already right: the agent leaves the table alone.
    assert_eq!(lab.reconcile(&config), Vec::<Action>::new());

    // Someone deletes the table, then edits it: each time the agent restores it, alone.
    lab.nft_in_router(&["delete", "table", "inet", "slicenet"]);
    assert_eq!(lab.table(), None);
    assert!(replaced_firewall_only(&lab.reconcile(&config)));
    assert_eq!(connect_many(&client, &format!("{VIP}:80"), 10).values().sum::<usize>(), 10);
    lab.nft_in_router(&["flush", "chain", "inet", "slicenet", "services"]);
    assert_eq!(tcp_error(&client, &format!("{VIP}:80")), Some(std::io::ErrorKind::ConnectionRefused));
    assert!(replaced_firewall_only(&lab.reconcile(&config)));
    assert_eq!(lab.reconcile(&config), Vec::<Action>::new());

    // A backend leaves: every new connection goes to the other.
    let config = lab.config(web(&both[1..]));
    assert!(replaced_firewall_only(&lab.reconcile(&config)));
    assert_eq!(connect_many(&client, &format!("{VIP}:80"), 20), BTreeMap::from([(2, 20)]));

    // The service goes: the table goes.
    let config = lab.config(json!([]));
    assert_eq!(lab.reconcile(&config), vec![Action::DeleteFirewall { slice: "blue".into() }]);
    assert_eq!(lab.table(), None);
    assert_eq!(lab.reconcile(&config), Vec::<Action>::new());

    // The slice goes: its router (and anything in it) goes.
    let mut config = lab.config(web(&both));
    lab.reconcile(&config);
    assert!(lab.table().is_some());
    config.slices.clear();
    lab.reconcile(&config);
    assert!(!lab.paths[0].exists(), "the router namespace is gone");
}

#[test]
fn a_batch_nft_refuses_leaves_the_previous_table_and_says_why() {
    let lab = Lab::new();
    let config = lab.config(web(&["10.80.0.3:8080"]));
    lab.reconcile(&config);
    let before = lab.table().expect("the table is there");
    // A rule in a chain that does not exist: nft refuses the whole transaction.
    let mut objects = before.clone();
    objects
        .push(json!({"rule": {"family": "inet", "table": "slicenet", "chain": "nowhere", "expr": [{"accept": null}]}}));
    let err = dataplane::nft::replace_table(&lab.router(), TABLE, &objects).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, dataplane::Error::Nft { .. }) && message.contains("No such file or directory"), "{message}");
    assert!(message.contains("replacing table inet slicenet"), "{message}");
    assert_eq!(lab.table(), Some(before), "the previous table is in force");
}
