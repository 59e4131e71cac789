//! Root tests of MultiNetworkPolicy on the real kernel, in the shape of the upstream
//! NetworkPolicy e2e "truth table": namespaces x/y/z × pods a/b/c on one node (plus z/d, a pod of
//! another cluster behind a gateway pod), ports 80/81 × TCP/UDP, every cell measured through a
//! real connection and compared with a small MODEL of NetworkPolicy semantics on the policies'
//! JSON (`tests/support/model.rs`, shared with the lab's two-cluster test and with no code of the
//! compiler).
//!
//! The router namespace is built by the library reconcile (as the daemon runs it), pods are
//! attached as the CNI plugin attaches them, listeners are this test's own threads, each
//! entered into its pod's namespace and answering with its own identity byte, so an answer
//! proves which pod and port it reached. Every namespace has the prefix `hp-<pid>-<n>-` and a
//! `Drop` guard deletes them (and stops the listeners) even when a test panics. They fail
//! (never skip) without root.
//!
//! A denied cell is one that got no answer by a deadline far above any real answer; all cells
//! of a scenario are probed at once (one thread per source pod, non-blocking sockets), so a
//! scenario costs one deadline. Only outcomes are asserted.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::{Netlink, Netns, Route, VethRequest};
use ipnet::IpNet;
use serde_json::{Value, json};
use slice_api::node::NodeAgentConfig;
use slice_node::Action;
use slice_node::firewall::TABLE;

use model::Proto;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// How long a probe waits for an answer: far above any real answer here; a cell without an
/// answer by then is denied.
const DEADLINE: Duration = Duration::from_secs(3);
const ROUTER: &str = "10.80.0.1";
const GATEWAY: &str = "10.80.0.40";
const PORTS: [u16; 2] = [80, 81];

/// One pod of the table.
#[derive(Debug, Clone)]
struct PodDef {
    ns: &'static str,
    name: &'static str,
    address: Ipv4Addr,
    /// On this node (else in another cluster, behind the gateway pod).
    local: bool,
    /// Named container ports: name → (port, protocol).
    named: Vec<(&'static str, u16, &'static str)>,
}

impl PodDef {
    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("pod".to_string(), self.name.to_string())])
    }
    fn ns_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("ns".to_string(), self.ns.to_string())])
    }
    fn id(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
    fn model(&self) -> model::Pod {
        model::Pod {
            ns: self.ns.to_string(),
            ns_labels: self.ns_labels(),
            labels: self.labels(),
            address: self.address,
            named: self.named.iter().map(|(n, p, proto)| ((*n).to_string(), *p, (*proto).to_string())).collect(),
        }
    }
}

fn pods() -> Vec<PodDef> {
    let mut out = Vec::new();
    let mut n = 10;
    for ns in ["x", "y", "z"] {
        for name in ["a", "b", "c"] {
            // Port name "web" is 80 on a and b, 81 on c: a named port resolves per pod.
            let web = if name == "c" { 81 } else { 80 };
            out.push(PodDef {
                ns,
                name,
                address: Ipv4Addr::new(10, 80, 0, n),
                local: true,
                named: vec![("web", web, "TCP"), ("dns", 81, "UDP")],
            });
            n += 1;
        }
    }
    out.push(PodDef {
        ns: "z",
        name: "d",
        address: Ipv4Addr::new(10, 80, 16, 5),
        local: false,
        named: vec![("web", 80, "TCP"), ("dns", 81, "UDP")],
    });
    out
}

/// The pod directory the agent gets for `pods`.
fn directory(pods: &[PodDef]) -> Value {
    Value::Array(
        pods.iter()
            .map(|p| {
                let ports: Vec<Value> = p
                    .named
                    .iter()
                    .map(|(n, port, proto)| json!({"name": n, "port": port, "protocol": proto}))
                    .collect();
                json!({"namespace": p.ns, "namespaceLabels": p.ns_labels(), "labels": p.labels(),
                    "ports": ports, "addresses": [p.address.to_string()]})
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// The model: NetworkPolicy semantics on the policies' JSON, independent of the compiler (one
// file shared with the lab's two-cluster test, e2e/tests/policy.rs).

#[path = "support/model.rs"]
mod model;

// ---------------------------------------------------------------------------------------------
// The lab.

/// One cell of the table: source pod, destination pod, protocol, port.
type Cell = (usize, usize, Proto, u16);

/// The identity byte a listener answers with.
fn identity(pod: usize, proto: Proto, port: u16) -> u8 {
    (pod * 4 + usize::from(proto == Proto::Udp) * 2 + usize::from(port == 81)) as u8
}

/// Listeners of one pod: TCP and UDP on 80 and 81 answering their identity, a TCP echo on 82,
/// and a log of the sources of UDP datagrams to 83.
struct Listeners {
    stop: Arc<AtomicBool>,
    tcp: Vec<Arc<TcpListener>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    accepted_echo: Arc<AtomicUsize>,
    udp_sources: Arc<Mutex<Vec<IpAddr>>>,
}

impl Listeners {
    fn start(ns: &Netns, index: usize, address: Ipv4Addr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut me = Self {
            stop: stop.clone(),
            tcp: Vec::new(),
            threads: Vec::new(),
            accepted_echo: Arc::new(AtomicUsize::new(0)),
            udp_sources: Arc::new(Mutex::new(Vec::new())),
        };
        for port in PORTS {
            let tcp = Arc::new(ns.run(|| TcpListener::bind((address, port))).unwrap().expect("bind TCP"));
            let (accepting, id) = (tcp.clone(), identity(index, Proto::Tcp, port));
            me.threads.push(std::thread::spawn(move || {
                while let Ok((mut s, _)) = accepting.accept() {
                    let _ = s.write_all(&[id]);
                }
            }));
            me.tcp.push(tcp);
            let udp = ns.run(|| UdpSocket::bind((address, port))).unwrap().expect("bind UDP");
            udp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let (stop, id) = (stop.clone(), identity(index, Proto::Udp, port));
            me.threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&[id], from);
                    }
                }
            }));
        }
        let echo = Arc::new(ns.run(|| TcpListener::bind((address, 82))).unwrap().expect("bind echo"));
        let (accepting, count) = (echo.clone(), me.accepted_echo.clone());
        me.threads.push(std::thread::spawn(move || {
            while let Ok((mut s, _)) = accepting.accept() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        }));
        me.tcp.push(echo);
        let log = ns.run(|| UdpSocket::bind((address, 83))).unwrap().expect("bind UDP log");
        log.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (stop, sources) = (stop.clone(), me.udp_sources.clone());
        me.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = log.recv_from(&mut buf) {
                    sources.lock().unwrap().push(from.ip());
                }
            }
        }));
        me
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for l in &self.tcp {
            // shutdown(2) on a listening socket wakes a blocked accept with an error.
            // SAFETY: the fd is open for as long as the listener lives.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Lab {
    prefix: String,
    node: Netns,
    state_dir: tempfile::TempDir,
    /// Every namespace made (the router first), deleted on drop.
    paths: Vec<PathBuf>,
    pods: Vec<PodDef>,
    /// The namespace of each pod (z/d: the gateway pod's).
    pod_ns: Vec<Netns>,
    listeners: Vec<Listeners>,
}

impl Lab {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        assert!(unsafe { libc::geteuid() } == 0, "these tests need root (network namespaces, nftables)");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("hp-{}-{n}-", std::process::id());
        let mut paths = vec![PathBuf::from(format!("/run/netns/{prefix}r-blue"))];
        let node = make_ns(&format!("{prefix}node"), &mut paths);
        let mut nl = Netlink::in_netns(&node).unwrap();
        nl.set_up("lo").unwrap();
        nl.add_addr("lo", "198.18.252.1/32".parse().unwrap()).unwrap();
        let mut lab = Self {
            prefix,
            node,
            state_dir: tempfile::tempdir().unwrap(),
            paths,
            pods: pods(),
            pod_ns: Vec::new(),
            listeners: Vec::new(),
        };
        // The router first (no policy, no remote route yet), then the pods, then the gateway's
        // remote route (the agent adds it once the gateway pod is there).
        lab.reconcile(&lab.config(json!([]), false));
        let gateway = lab.attach("gw", 99, GATEWAY.parse().unwrap());
        Netlink::in_netns(&gateway).unwrap().add_addr("lo", "10.80.16.5/32".parse().unwrap()).unwrap();
        for (i, pod) in lab.pods.clone().iter().enumerate() {
            // z/d, in another cluster, answers in the gateway pod's namespace on an address
            // routed via the gateway pod.
            let ns = if pod.local {
                lab.attach(&format!("{}-{}", pod.ns, pod.name), i, pod.address)
            } else {
                Netns::open(&PathBuf::from(format!("/run/netns/{}gw", lab.prefix))).unwrap()
            };
            lab.listeners.push(Listeners::start(&ns, i, pod.address));
            lab.pod_ns.push(ns);
        }
        lab
    }

    fn router(&self) -> Netns {
        Netns::open(&self.paths[0]).expect("the router namespace exists")
    }

    fn config(&self, policies: Value, remote: bool) -> NodeAgentConfig {
        let routes = if remote { json!([{"prefix": "10.80.16.0/20", "via": GATEWAY}]) } else { json!([]) };
        let config: NodeAgentConfig = serde_json::from_value(json!({
            "node": "n1",
            "underlayAddress": "198.18.252.1",
            "stateDir": self.state_dir.path(),
            "netnsDir": "/run/netns",
            "routerNetnsPrefix": format!("{}r-", self.prefix),
            "slices": [{
                "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16",
                "nodePrefix": "10.80.0.0/26", "namespaces": ["x", "y", "z"],
                "remoteRoutes": routes,
                "policies": policies,
                "pods": directory(&self.pods),
            }]
        }))
        .unwrap();
        config.validate().expect("test config is valid");
        config
    }

    fn try_reconcile(&self, config: &NodeAgentConfig) -> Result<Vec<Action>, slice_node::NodeAgentError> {
        self.node.run(|| slice_node::reconcile(config)).unwrap()
    }

    fn reconcile(&self, config: &NodeAgentConfig) -> Vec<Action> {
        self.try_reconcile(config).unwrap_or_else(|e| panic!("reconcile: {}", slice_api::error_chain::chain(&e)))
    }

    /// Applies `policies` and checks that the table the kernel lists is the one built (a
    /// second reconcile has nothing to do).
    fn apply(&self, policies: &[Value]) {
        let config = self.config(Value::Array(policies.to_vec()), true);
        self.reconcile(&config);
        assert_eq!(self.reconcile(&config), Vec::<Action>::new(), "the listed table differs from the built one");
    }

    /// A pod namespace attached to the router with `ip`, as the CNI plugin attaches it.
    fn attach(&mut self, name: &str, index: usize, ip: Ipv4Addr) -> Netns {
        let pod = make_ns(&format!("{}{name}", self.prefix), &mut self.paths);
        let host = format!("hpv{index}");
        let mut rnl = Netlink::in_netns(&self.router()).unwrap();
        rnl.create_veth(&VethRequest {
            name: &host,
            netns: None,
            peer_name: "slice0",
            peer_netns: Some(&pod),
            mtu: None,
            mac: None,
            peer_mac: None,
        })
        .unwrap();
        rnl.set_up(&host).unwrap();
        rnl.add_route(&route(&format!("{ip}/32"), None, &host, None)).unwrap();
        let mut pnl = Netlink::in_netns(&pod).unwrap();
        pnl.set_up("lo").unwrap();
        pnl.set_up("slice0").unwrap();
        pnl.add_addr("slice0", format!("{ip}/32").parse().unwrap()).unwrap();
        pnl.add_route(&route(&format!("{ROUTER}/32"), None, "slice0", None)).unwrap();
        pnl.add_route(&route("10.80.0.0/16", Some(ROUTER), "slice0", Some(IpAddr::V4(ip)))).unwrap();
        pod
    }

    fn table(&self) -> Option<Vec<Value>> {
        dataplane::nft::list_table(&self.router(), TABLE).unwrap()
    }

    /// Every cell (source ≠ destination, 80/81, TCP/UDP) probed at once: the answering
    /// identity, or `None` when nothing answered by the deadline.
    fn probe_all(&self) -> BTreeMap<Cell, probe::Outcome> {
        let n = self.pods.len();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|src| {
                    let cells: Vec<(usize, Proto, u16)> = (0..n)
                        .filter(|d| *d != src)
                        .flat_map(|d| {
                            [Proto::Tcp, Proto::Udp].into_iter().flat_map(move |p| PORTS.map(|port| (d, p, port)))
                        })
                        .collect();
                    let from = self.pods[src].address;
                    let targets: Vec<(SocketAddr, Proto)> = cells
                        .iter()
                        .map(|(d, p, port)| (SocketAddr::from((self.pods[*d].address, *port)), *p))
                        .collect();
                    let ns = &self.pod_ns[src];
                    s.spawn(move || {
                        let results = ns.run(|| probe::run(from, &targets, DEADLINE)).unwrap();
                        cells
                            .into_iter()
                            .zip(results)
                            .map(|((d, p, port), r)| ((src, d, p, port), r))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        })
    }

    /// Probes every cell and returns the cells that differ from the model, described.
    fn mismatches(&self, policies: &[Value]) -> Vec<String> {
        let mut out = Vec::new();
        for ((s, d, proto, port), got) in self.probe_all() {
            let (src, dst) = (&self.pods[s], &self.pods[d]);
            // Egress is enforced at the source's node and ingress at the destination's: a pod of
            // another cluster has its half enforced there, not here.
            let want = model::expect(
                src.local.then_some(policies),
                dst.local.then_some(policies),
                &src.model(),
                &dst.model(),
                proto,
                port,
            );
            let ok = match got {
                Ok(Some(id)) => want && id == identity(d, proto, port),
                Ok(None) => !want,
                Err(_) => false,
            };
            if !ok {
                out.push(format!(
                    "{} -> {} {proto:?}/{port}: expected {}, got {got:?}",
                    src.id(),
                    dst.id(),
                    if want { "allowed" } else { "denied" }
                ));
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.listeners.clear();
        for path in self.paths.iter().rev() {
            let _ = Netns::delete_named(path);
        }
    }
}

fn make_ns(name: &str, paths: &mut Vec<PathBuf>) -> Netns {
    let path = PathBuf::from(format!("/run/netns/{name}"));
    let (ns, created) = Netns::ensure_named(&path).expect("create test namespace");
    paths.push(path.clone());
    assert!(created, "{} existed already", path.display());
    ns
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

/// Non-blocking probes from one source address, all at once (libc: std cannot make an
/// unconnected or non-blocking-connecting socket).
mod probe {
    use super::*;

    fn sockaddr(addr: SocketAddr) -> libc::sockaddr_in {
        let SocketAddr::V4(v4) = addr else { panic!("IPv4 only") };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        }
    }

    /// The answering identity, `None` without an answer by the deadline, or an errno.
    pub type Outcome = Result<Option<u8>, i32>;

    enum State {
        Connecting,
        Reading,
        Done(Outcome),
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Each target's answer (the identity byte), `Ok(None)` without an answer by `deadline`,
    /// `Err(errno)` on an error (a refusal: never expected here).
    /// Source ports, never reused within a test run: a reused (address, port) pair would find the
    /// conntrack entry of an earlier, allowed probe and pass as an established flow.
    static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

    fn source_port() -> u16 {
        10_000 + (NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 20_000) as u16
    }

    pub fn run(from: Ipv4Addr, targets: &[(SocketAddr, Proto)], deadline: Duration) -> Vec<Outcome> {
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let mut fds = Vec::new();
        let mut states = Vec::new();
        for (addr, proto) in targets {
            let kind = if *proto == Proto::Tcp { libc::SOCK_STREAM } else { libc::SOCK_DGRAM };
            let local = sockaddr(SocketAddr::from((from, source_port())));
            // SAFETY: plain socket calls on a fresh fd with a valid sockaddr of `len` bytes.
            unsafe {
                let fd = libc::socket(libc::AF_INET, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
                assert!(fd >= 0, "socket: {}", errno());
                assert_eq!(libc::bind(fd, (&raw const local).cast(), len), 0, "bind: {}", errno());
                let to = sockaddr(*addr);
                let r = libc::connect(fd, (&raw const to).cast(), len);
                let state = if *proto == Proto::Tcp {
                    if r == 0 || errno() == libc::EINPROGRESS { State::Connecting } else { State::Done(Err(errno())) }
                } else {
                    assert_eq!(r, 0, "connect UDP: {}", errno());
                    libc::send(fd, b"probe".as_ptr().cast(), 5, 0);
                    State::Reading
                };
                fds.push(fd);
                states.push(state);
            }
        }
        let start = Instant::now();
        let mut last_udp_send = Instant::now();
        loop {
            let pending: Vec<usize> = (0..fds.len()).filter(|i| !matches!(states[*i], State::Done(_))).collect();
            let elapsed = start.elapsed();
            if pending.is_empty() || elapsed >= deadline {
                break;
            }
            // A UDP probe is sent again every half second: one lost datagram is not a denial.
            if last_udp_send.elapsed() >= Duration::from_millis(500) {
                for &i in &pending {
                    if targets[i].1 == Proto::Udp {
                        // SAFETY: a valid connected fd and buffer.
                        unsafe { libc::send(fds[i], b"probe".as_ptr().cast(), 5, 0) };
                    }
                }
                last_udp_send = Instant::now();
            }
            let mut polls: Vec<libc::pollfd> = pending
                .iter()
                .map(|&i| libc::pollfd {
                    fd: fds[i],
                    events: if matches!(states[i], State::Connecting) { libc::POLLOUT } else { libc::POLLIN },
                    revents: 0,
                })
                .collect();
            let wait = (deadline - elapsed).min(Duration::from_millis(100)).as_millis() as i32;
            // SAFETY: `polls` is a valid array of its length.
            unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, wait) };
            for (p, &i) in polls.iter().zip(&pending) {
                if p.revents == 0 {
                    continue;
                }
                let fd = fds[i];
                match states[i] {
                    State::Connecting => {
                        let mut err: libc::c_int = 0;
                        let mut l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                        // SAFETY: valid fd and out-pointers.
                        unsafe {
                            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &raw mut l)
                        };
                        states[i] = if err == 0 { State::Reading } else { State::Done(Err(err)) };
                    }
                    State::Reading => {
                        let mut b = [0u8; 8];
                        // SAFETY: valid fd and buffer.
                        let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), 0) };
                        if n > 0 {
                            states[i] = State::Done(Ok(Some(b[0])));
                        } else if n < 0 && errno() != libc::EAGAIN {
                            states[i] = State::Done(Err(errno()));
                        }
                    }
                    State::Done(_) => {}
                }
            }
        }
        let out = states
            .into_iter()
            .map(|s| match s {
                State::Done(r) => r,
                _ => Ok(None),
            })
            .collect();
        for fd in fds {
            // SAFETY: our own fds, closed once.
            unsafe { libc::close(fd) };
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"namespace": ns, "name": name, "spec": spec})
}

/// The scenarios, each a whole set of policies, in the order applied (the last three: a
/// stack, its update, a delete).
fn scenarios() -> Vec<(&'static str, Vec<Value>)> {
    let stack = vec![
        policy("x", "deny-all", json!({})),
        policy(
            "x",
            "a-from-y",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        ),
        policy("x", "tcp-81", json!({"ingress": [{"ports": [{"port": 81}]}]})),
    ];
    let mut updated = stack.clone();
    updated[1] = policy(
        "x",
        "a-from-y",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
    );
    let mut deleted = updated.clone();
    deleted.remove(2);
    vec![
        ("no policy", vec![]),
        ("default deny both ways in x", vec![policy("x", "deny", json!({"policyTypes": ["Ingress", "Egress"]}))]),
        ("allow all in x", vec![policy("x", "all", json!({"ingress": [{}], "egress": [{}]}))]),
        (
            "pod selector with labels",
            vec![policy(
                "x",
                "a-from-b",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
        ),
        (
            "pod and namespace selectors with expressions",
            vec![policy(
                "y",
                "expr",
                json!({
                "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                "ingress": [{"from": [{
                    "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]},
                    "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"}, {"key": "pod", "operator": "NotIn", "values": ["a"]}]}
                }]}]}),
            )],
        ),
        (
            "namespace selector alone, across clusters",
            vec![policy(
                "y",
                "from-z",
                json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
            )],
        ),
        (
            "peers ORed",
            vec![policy(
                "x",
                "or",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
        ),
        (
            "peer selectors ANDed",
            vec![policy(
                "x",
                "and",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
        ),
        (
            "ports and endPort",
            vec![policy(
                "x",
                "ports",
                json!({"ingress": [{"ports": [
                {"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 80, "endPort": 81}]}]}),
            )],
        ),
        (
            "named ports, ingress and egress",
            vec![
                policy("x", "web", json!({"ingress": [{"ports": [{"port": "web"}]}]})),
                policy(
                    "y",
                    "out-dns",
                    json!({"policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}],
                    "ports": [{"protocol": "UDP", "port": "dns"}, {"port": "web"}]}]}),
                ),
            ],
        ),
        (
            "ipBlock with except, and another peer",
            vec![policy(
                "z",
                "block",
                json!({"ingress": [{"from": [
                {"ipBlock": {"cidr": "10.80.0.0/24", "except": ["10.80.0.12/32", "10.80.0.16/30"]}},
                {"podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
            )],
        ),
        (
            "egress only",
            vec![policy(
                "y",
                "out",
                json!({"policyTypes": ["Egress"], "egress": [
                {"to": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"protocol": "UDP"}]},
                {"to": [{"ipBlock": {"cidr": "10.80.16.0/20"}}]}]}),
            )],
        ),
        ("stacked policies", stack),
        ("a policy updated", updated),
        ("a policy deleted", deleted),
    ]
}

#[test]
fn the_truth_table_holds_for_every_scenario() {
    let lab = Lab::new();
    let mut failures = Vec::new();
    for (name, policies) in scenarios() {
        lab.apply(&policies);
        if !policies.is_empty() {
            assert!(lab.table().is_some(), "{name}: a table");
        }
        let wrong = lab.mismatches(&policies);
        if !wrong.is_empty() {
            failures.push(format!("scenario {name:?}: {} cell(s) wrong:\n  {}", wrong.len(), wrong.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Sends one UDP datagram to `to` from `from` (which must be an address of the namespace).
fn send_udp(ns: &Netns, from: Ipv4Addr, to: SocketAddr) {
    ns.run(|| UdpSocket::bind((from, 0)).unwrap().send_to(b"hello", to).unwrap()).unwrap();
}

/// Waits until `cond` holds, up to a deadline far above any real delivery.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "{what}: not within the deadline");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_forged_source_is_dropped_even_when_policy_allows_everything() {
    let lab = Lab::new();
    lab.apply(&[
        policy("x", "all", json!({"ingress": [{}], "egress": [{}]})),
        policy("y", "all", json!({"ingress": [{}]})),
    ]);
    let router = lab.router();
    // IPv4's check is the kernel's strict reverse-path filter on each pod's veth, which the
    // agent keeps on (the table's fib check is for IPv6 only: see firewall::anti_spoof).
    let (x_a, y_a) = (0, 3);
    assert_eq!(router.sysctl(&format!("net/ipv4/conf/hpv{x_a}/rp_filter")).unwrap().trim(), "1");
    let forged: Ipv4Addr = lab.pods[1].address; // x/b's address, from x/a's interface
    Netlink::in_netns(&lab.pod_ns[x_a]).unwrap().add_addr("slice0", format!("{forged}/32").parse().unwrap()).unwrap();
    let target = SocketAddr::from((lab.pods[y_a].address, 83));
    let log = lab.listeners[y_a].udp_sources.clone();
    for from in [forged, lab.pods[x_a].address] {
        send_udp(&lab.pod_ns[x_a], from, target);
    }
    // The genuine datagram went second over the same path: once it is in, the forged one
    // would be too.
    wait_for("the genuine datagram", || log.lock().unwrap().contains(&IpAddr::V4(lab.pods[x_a].address)));
    assert!(!log.lock().unwrap().contains(&IpAddr::V4(forged)), "a forged source passed: {:?}", log.lock().unwrap());
    // x/b's own address from its own interface still passes.
    send_udp(&lab.pod_ns[1], forged, target);
    wait_for("x/b's datagram", || log.lock().unwrap().contains(&IpAddr::V4(forged)));
}

#[test]
fn established_connections_survive_a_policy_that_denies_new_ones() {
    let lab = Lab::new();
    // y open to all: the router tracks connections from the start (with no table at all the
    // namespace has no conntrack, and a connection first seen mid-stream is new to it).
    lab.apply(&[policy("y", "open", json!({"ingress": [{}]}))]);
    let (x_a, y_a) = (0, 3);
    let echo = SocketAddr::from((lab.pods[y_a].address, 82));
    let mut stream = lab.pod_ns[x_a].run(|| TcpStream::connect_timeout(&echo, DEADLINE)).unwrap().expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let round_trip = |s: &mut TcpStream, what: &[u8]| {
        s.write_all(what).unwrap();
        let mut buf = vec![0u8; what.len()];
        s.read_exact(&mut buf).map(|()| buf)
    };
    assert_eq!(round_trip(&mut stream, b"before").unwrap(), b"before");
    let accepted = lab.listeners[y_a].accepted_echo.clone();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // y now denies all ingress; the apply returns with the table in force.
    lab.apply(&[policy("y", "open", json!({}))]);
    // The established connection goes on (conntrack), in both directions, many times.
    for i in 0..20 {
        let msg = format!("after-{i}");
        assert_eq!(round_trip(&mut stream, msg.as_bytes()).unwrap(), msg.as_bytes());
    }
    // A new connection gets nothing through: no handshake, nothing accepted.
    let new = lab.pod_ns[x_a].run(|| TcpStream::connect_timeout(&echo, DEADLINE)).unwrap();
    assert_eq!(new.err().map(|e| e.kind()), Some(std::io::ErrorKind::TimedOut));
    // The established connection's round trip after the attempt: the attempt's packets are ahead.
    assert_eq!(round_trip(&mut stream, b"last").unwrap(), b"last");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "a newly denied connection was accepted");
    // Nor does a new UDP flow.
    let log = lab.listeners[y_a].udp_sources.clone();
    send_udp(&lab.pod_ns[x_a], lab.pods[x_a].address, SocketAddr::from((lab.pods[y_a].address, 83)));
    assert_eq!(round_trip(&mut stream, b"marker").unwrap(), b"marker");
    assert!(log.lock().unwrap().is_empty(), "a denied datagram passed");
}

#[test]
fn a_policy_that_does_not_compile_keeps_the_rules_in_force_and_is_reported() {
    let lab = Lab::new();
    let deny = vec![policy("y", "deny", json!({}))];
    lab.apply(&deny);
    let before = lab.table().expect("a table");
    let mut broken = deny.clone();
    broken.push(policy(
        "x",
        "broken",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "Equals", "values": ["a"]}]}}),
    ));
    let err = lab.try_reconcile(&lab.config(Value::Array(broken), true)).expect_err("reported");
    let message = slice_api::error_chain::chain(&err);
    assert!(message.contains("policy x/broken cannot be compiled") && message.contains("\"Equals\""), "{message}");
    assert!(message.contains("the rules in force are kept"), "{message}");
    assert_eq!(lab.table(), Some(before), "the table in force is unchanged");
    // And it still holds: y denies, x is open (the broken policy changed nothing).
    let wrong = lab.mismatches(&deny);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
