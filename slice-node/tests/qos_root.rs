//! Root test of the uplink's QoS on the real kernel, on namespaces this test builds (not the
//! full lab: docs/decisions.md, "QoS per slice"): two "gateway pod" namespaces (`gwblue`,
//! `gwred`) and one "other pod" namespace, each joined by a veth to a "node" namespace that
//! forwards to its uplink `up0`, whose peer is a "wan" namespace running iperf3 servers. The node
//! agent's QoS pass (`slice_node::qos::reconcile`, the kernel `tc` and `nft`) shapes `up0` to
//! 40 Mbit/s with blue guaranteed 10 (ceiling 30, prio 1) and red guaranteed 20 (ceiling 40, prio
//! 3); each gateway's traffic is UDP from its gateway port (51820, 51821), several iperf3
//! streams per slice (one per source address, all from the gateway port), offered at twice the
//! uplink, bounded to 5 s; the rates are what the wan side received.
//!
//! The rates are far below what this machine moves (a veth does Gbit/s), so the results depend
//! on the shaper, not on the machine. Tolerance: a slice gets at least 85 % of its guarantee and
//! at most 105 % of its ceiling (UDP/IP/Ethernet headers count against the HTB rate but not in
//! iperf3's figure: about 3 % at 1470-byte datagrams).
//!
//! Namespaces are `hkq-<pid>-<n>-…`, deleted by a `Drop` guard (which also stops the iperf3
//! servers) even when the test panics. It fails (never skips) without root.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dataplane::Netns;
use dataplane::tc::{MAJOR, Tc, TcChange};
use serde_json::{Value, json};
use slice_api::node::NodeAgentConfig;
use slice_node::qos::{self, NftQosTable};

static COUNTER: AtomicUsize = AtomicUsize::new(0);
const UPLINK_KBPS: u64 = 40_000;
const WAN: &str = "198.18.250.1";
const NODE: &str = "198.18.250.2";
const BLUE_PORT: u16 = 51820;
const RED_PORT: u16 = 51821;
/// Offered per stream, Mbit/s (two streams per slice: twice the uplink per slice).
const STREAM_MBIT: u64 = 40;
const SECONDS: u64 = 5;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn output(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Lab {
    prefix: String,
    servers: Vec<Child>,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// node ⇄ wan on `up0`; three sender namespaces with two addresses each, routed via node.
    fn build() -> Self {
        // SAFETY: geteuid has no preconditions.
        assert!(unsafe { libc::geteuid() } == 0, "qos_root needs root (network namespaces, tc, nft)");
        let prefix = format!("hkq-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let lab = Lab { prefix, servers: Vec::new() };
        let (node, wan) = (lab.ns("node"), lab.ns("wan"));
        for n in [&node, &wan] {
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "-n", &node, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &wan]);
        sh(&["ip", "-n", &node, "addr", "add", &format!("{NODE}/24"), "dev", "up0"]);
        sh(&["ip", "-n", &wan, "addr", "add", &format!("{WAN}/24"), "dev", "eth0"]);
        sh(&["ip", "-n", &node, "link", "set", "up0", "up"]);
        sh(&["ip", "-n", &wan, "link", "set", "eth0", "up"]);
        sh(&["ip", "netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for (i, pod) in ["gwblue", "gwred", "other"].iter().enumerate() {
            let p = lab.ns(pod);
            sh(&["ip", "netns", "add", &p]);
            let host = format!("v{pod}");
            sh(&["ip", "-n", &node, "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &p]);
            sh(&["ip", "-n", &node, "addr", "add", &format!("10.244.{i}.1/24"), "dev", &host]);
            sh(&["ip", "-n", &node, "link", "set", &host, "up"]);
            for a in [2, 3] {
                sh(&["ip", "-n", &p, "addr", "add", &format!("10.244.{i}.{a}/24"), "dev", "eth0"]);
            }
            sh(&["ip", "-n", &p, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", &p, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", &p, "route", "add", "default", "via", &format!("10.244.{i}.1")]);
            sh(&["ip", "-n", &wan, "route", "add", &format!("10.244.{i}.0/24"), "via", NODE]);
        }
        lab
    }

    /// An iperf3 server in the wan namespace on `port`, waited for (its port listening).
    fn server(&mut self, port: u16) {
        let wan = self.ns("wan");
        let child = Command::new("ip")
            .args(["netns", "exec", &wan, "iperf3", "-s", "-1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 (make deps installs it)");
        self.servers.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !output(&["ip", "netns", "exec", &wan, "ss", "-ltn"]).contains(&format!(":{port} ")) {
            assert!(Instant::now() < deadline, "iperf3 server on {port} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts one UDP stream from `pod`'s address `.a` and source port `cport`.
    fn stream(&mut self, pod: &str, pod_index: usize, a: u8, cport: u16, server_port: u16, mbit: u64) -> Child {
        self.server(server_port);
        Command::new("ip")
            .args(["netns", "exec", &self.ns(pod), "iperf3", "-J", "-u", "-c", WAN, "-p", &server_port.to_string()])
            .args(["-B", &format!("10.244.{pod_index}.{a}"), "--cport", &cport.to_string()])
            .args(["-b", &format!("{mbit}M"), "-t", &SECONDS.to_string(), "-l", "1400", "-i", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iperf3 client")
    }

    fn config(&self, slices: &[(&str, u32, u64, u64, u8, u16)]) -> NodeAgentConfig {
        let slices: Vec<Value> = slices
            .iter()
            .enumerate()
            .map(|(i, (name, vni, g, c, prio, port))| {
                json!({"name": name, "vni": vni, "sliceSubnet": format!("10.{}.0.0/16", 80 + i),
                       "nodePrefix": format!("10.{}.0.0/26", 80 + i),
                       "qos": {"guaranteedKbps": g, "ceilingKbps": c, "priority": prio, "gatewayPort": port,
                               "uplinkKbps": UPLINK_KBPS}})
            })
            .collect();
        let c: NodeAgentConfig = serde_json::from_value(json!({
            "node": "n1", "underlayAddress": NODE, "stateDir": std::env::temp_dir().join(&self.prefix), "slices": slices,
        }))
        .unwrap();
        c.validate().unwrap();
        c
    }

    fn reconcile(&self, config: &NodeAgentConfig) -> qos::QosOutcome {
        let node = Netns::open(&std::path::PathBuf::from(format!("/run/netns/{}", self.ns("node")))).unwrap();
        let node2 = Netns::open(&std::path::PathBuf::from(format!("/run/netns/{}", self.ns("node")))).unwrap();
        qos::reconcile(config, &mut Tc::new(node), &mut NftQosTable(node2)).expect("QoS reconcile")
    }

    fn classes(&self) -> String {
        output(&["ip", "netns", "exec", &self.ns("node"), "tc", "-s", "class", "show", "dev", "up0"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for n in ["gwblue", "gwred", "other", "node", "wan"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(n)]).status();
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&self.prefix));
    }
}

/// What the server received, Mbit/s, from a finished client's JSON (`sum_received`, the
/// server's own count, which iperf3 3.12 reports back to the client).
fn received_mbit(child: Child) -> f64 {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {text}"));
    assert!(v.get("error").is_none(), "iperf3: {}", v["error"]);
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or_else(|| panic!("no sum_received: {text}")) / 1e6
}

fn assert_between(what: &str, mbit: f64, low: f64, high: f64) {
    assert!(mbit >= low && mbit <= high, "{what}: {mbit:.2} Mbit/s, expected {low:.2}..={high:.2}");
}

/// Both slices saturating, then each alone, then unclassified traffic beside them; a profile
/// change in place; the slice deleted.
#[test]
fn slices_get_their_guarantee_borrow_up_to_their_ceiling_and_the_rest_still_flows() {
    let mut lab = Lab::build();
    let both = [("blue", 100, 10_000, 30_000, 1, BLUE_PORT), ("red", 101, 20_000, 40_000, 3, RED_PORT)];
    let config = lab.config(&both);
    let first = lab.reconcile(&config);
    assert_eq!(first.leaf.as_deref(), Some(dataplane::tc::probe_leaf_kind().unwrap().as_str()));
    println!("leaf qdisc in use: {:?}", first.leaf);
    assert!(lab.reconcile(&config).tc.is_empty(), "a second pass changes nothing");
    let minors = qos::minors(["blue", "red"]);

    // 1. Both saturate (two streams each, 2× the uplink per slice), nothing else.
    let streams: Vec<(&str, Child)> = vec![
        ("blue", lab.stream("gwblue", 0, 2, BLUE_PORT, 5301, STREAM_MBIT)),
        ("blue", lab.stream("gwblue", 0, 3, BLUE_PORT, 5302, STREAM_MBIT)),
        ("red", lab.stream("gwred", 1, 2, RED_PORT, 5303, STREAM_MBIT)),
        ("red", lab.stream("gwred", 1, 3, RED_PORT, 5304, STREAM_MBIT)),
    ];
    let mut rates = std::collections::BTreeMap::<&str, f64>::new();
    for (slice, child) in streams {
        *rates.entry(slice).or_default() += received_mbit(child);
    }
    println!("both saturating: {rates:?}");
    assert_between("blue (g 10, c 30)", rates["blue"], 0.85 * 10.0, 1.05 * 30.0);
    assert_between("red (g 20, c 40)", rates["red"], 0.85 * 20.0, 1.05 * 40.0);
    assert_between("blue + red (uplink 40)", rates["blue"] + rates["red"], 0.85 * 40.0, 1.05 * 40.0);
    let stats = lab.classes();
    for m in minors.values() {
        assert!(stats.contains(&format!("class htb {MAJOR:x}:{m:x} ")), "{stats}");
    }

    // 2. Red idle: blue borrows up to its ceiling, not beyond.
    let alone: f64 = [
        lab.stream("gwblue", 0, 2, BLUE_PORT, 5305, STREAM_MBIT),
        lab.stream("gwblue", 0, 3, BLUE_PORT, 5306, STREAM_MBIT),
    ]
    .into_iter()
    .map(received_mbit)
    .sum();
    println!("blue alone: {alone:.2}");
    assert_between("blue alone (c 30)", alone, 0.85 * 30.0, 1.05 * 30.0);
    // Blue idle: red takes its ceiling, the whole uplink.
    let alone: f64 = [
        lab.stream("gwred", 1, 2, RED_PORT, 5307, STREAM_MBIT),
        lab.stream("gwred", 1, 3, RED_PORT, 5308, STREAM_MBIT),
    ]
    .into_iter()
    .map(received_mbit)
    .sum();
    println!("red alone: {alone:.2}");
    assert_between("red alone (c 40)", alone, 0.85 * 40.0, 1.05 * 40.0);

    // 3. Unclassified traffic (another source port) beside both saturating slices gets the
    // default class's rate (the uplink less the guarantees: 10).
    let streams: Vec<(&str, Child)> = vec![
        ("blue", lab.stream("gwblue", 0, 2, BLUE_PORT, 5309, STREAM_MBIT)),
        ("blue", lab.stream("gwblue", 0, 3, BLUE_PORT, 5310, STREAM_MBIT)),
        ("red", lab.stream("gwred", 1, 2, RED_PORT, 5311, STREAM_MBIT)),
        ("red", lab.stream("gwred", 1, 3, RED_PORT, 5312, STREAM_MBIT)),
        ("other", lab.stream("other", 2, 2, 40000, 5313, 20)),
    ];
    let mut rates = std::collections::BTreeMap::<&str, f64>::new();
    for (slice, child) in streams {
        *rates.entry(slice).or_default() += received_mbit(child);
    }
    println!("with unclassified traffic: {rates:?}");
    assert_between("unclassified (default class, rate 10)", rates["other"], 0.85 * 10.0, 1.05 * 40.0);
    assert_between("blue beside it", rates["blue"], 0.85 * 10.0, 1.05 * 30.0);
    assert_between("red beside it", rates["red"], 0.85 * 20.0, 1.05 * 40.0);

    // 4. A profile change while blue's stream runs: made in place (the class and its counters
    // stay, the stream goes on), and in force for the rest of the stream.
    let running = lab.stream("gwblue", 0, 2, BLUE_PORT, 5314, STREAM_MBIT);
    std::thread::sleep(Duration::from_secs(2));
    let sent_before = class_bytes(&lab.classes(), minors["blue"]);
    let lower = lab.config(&[("blue", 100, 10_000, 15_000, 1, BLUE_PORT), both[1]]);
    let change = lab.reconcile(&lower);
    assert!(
        change.tc.iter().all(|c| matches!(c, TcChange::ChangeClass(_))) && !change.tc.is_empty(),
        "{:?}",
        change.tc
    );
    let out = running.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("error").is_none(), "the stream survived the change: {}", v["error"]);
    assert!(class_bytes(&lab.classes(), minors["blue"]) > sent_before, "same class, still counting");
    // The last full second of the stream was under the new ceiling (sender side: what left the
    // socket; the shaper drops the excess, so use the class's own rate instead).
    let stats = lab.classes();
    let blue_line =
        stats.lines().find(|l| l.starts_with(&format!("class htb {MAJOR:x}:{:x} ", minors["blue"]))).unwrap();
    assert!(blue_line.contains("ceil 15Mbit"), "{blue_line}");

    // 5. Deleting blue removes its class and its rule; red keeps its own.
    let red_only = lab.config(&[both[1]]);
    lab.reconcile(&red_only);
    let stats = lab.classes();
    assert!(!stats.contains(&format!("class htb {MAJOR:x}:{:x} ", minors["blue"])), "{stats}");
    assert!(stats.contains(&format!("class htb {MAJOR:x}:{:x} ", minors["red"])), "{stats}");
    let table = output(&["ip", "netns", "exec", &lab.ns("node"), "nft", "list", "table", "inet", "slicenet_qos"]);
    assert!(!table.contains("51820") && table.contains("51821"), "{table}");

    // 6. No QoS slice left: no tree, no table.
    let mut none = red_only.clone();
    none.slices.iter_mut().for_each(|s| s.qos = None);
    lab.reconcile(&none);
    let qdisc = output(&["ip", "netns", "exec", &lab.ns("node"), "tc", "qdisc", "show", "dev", "up0"]);
    assert!(!qdisc.contains("htb"), "{qdisc}");
    let tables = output(&["ip", "netns", "exec", &lab.ns("node"), "nft", "list", "tables"]);
    assert!(!tables.contains("slicenet_qos"), "{tables}");
}

/// Bytes sent by class `minor` in `tc -s class show` output.
fn class_bytes(stats: &str, minor: u16) -> u64 {
    let head = format!("class htb {MAJOR:x}:{minor:x} ");
    let mut lines = stats.lines().skip_while(|l| !l.starts_with(&head));
    lines.next().expect("the class");
    let sent = lines.next().expect("its statistics");
    sent.split_whitespace().nth(1).and_then(|b| b.parse().ok()).unwrap_or_else(|| panic!("{sent}"))
}
