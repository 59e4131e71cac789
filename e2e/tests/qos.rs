//! QoS per slice in the lab, end to end: two member clusters with a 40 Mbit/s uplink
//! (`MemberCluster.spec.uplinkKbps`), slices `blue` (guaranteed 10, ceiling 30 Mbit/s,
//! priority 1, DSCP AF41) and `red` (guaranteed 20, ceiling 40, priority 3, DSCP CS1) over
//! both, applied as a user applies them. The hub, the workers and the node agents do the rest:
//! the tree on c1's node uplink (HTB, a class per slice, a default class), the nftables table
//! that classifies each gateway's UDP port, the gateways' `--dscp`. Traffic is iperf3 UDP from
//! pods in c1 to pods in c2 through the real gateways over the lab's WAN, offered at twice the
//! uplink per slice (two streams), bounded to 5 s.
//!
//! Shown: both slices saturating get at least their guarantee and at most their ceiling;
//! blue alone borrows up to its ceiling; traffic of no slice (the node's own, to the other
//! cluster's public address) still flows beside them and counts in the default class; the
//! outer packets leaving c1 carry each slice's DSCP (tcpdump in the WAN namespace, filtered by
//! c1's public address, the slice's ports and its DSCP); a rate change is made in place while a
//! TCP connection of the slice carries round trips, which goes on, through the same gateway
//! process; a DSCP change replaces the gateway process (its command line changed: a cluster
//! rolls the pod) and the new class shows on the WAN; deleting a slice removes its class and
//! its classification; with no QoS slice left the tree and the table are gone.
//!
//! The rates are far below what this machine moves through a gateway (Gbit/s), so they depend
//! on the shaper, not on the machine's speed. Tolerance: at least 80 % of a guarantee (the HTB
//! class counts the outer packet: WireGuard, UDP, IP and Ethernet headers add about 8 % to
//! iperf3's 1,200-byte datagrams) and at most 105 % of a ceiling.
//!
//! Needs root and the binaries; fails (does not skip) without them. The lab is torn down on
//! every path.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::Lab;
use e2e::control::LabEnv as Env;
use e2e::control::{
    BEHIND_NAT_ANNOTATION, ControlPlane, Manifest, NODES_ANNOTATION, parse_manifest, workloads::parse_objects,
};
use e2e::probe::{EchoServer, Load};
use serde_json::Value;

const PREFIX: &str = "hqos";
const UPLINK_KBPS: u64 = 40_000;
const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7000;
/// Offered per stream, two streams per slice: twice the uplink per slice.
const STREAM_MBIT: u64 = 40;
const SECONDS: u32 = 5;

/// One slice of the test: name, subnet, member namespace, gateway port, NodePort,
/// guaranteed / ceiling kbit/s, priority, DSCP class and its TOS byte.
struct Slice {
    name: &'static str,
    subnet: &'static str,
    namespace: &'static str,
    port: u16,
    node_port: u16,
    guaranteed: u64,
    ceiling: u64,
    priority: u8,
    dscp: &'static str,
    tos: u8,
}

const BLUE: Slice = Slice {
    name: "blue",
    subnet: "10.80.0.0/16",
    namespace: "b",
    port: 51820,
    node_port: 31820,
    guaranteed: 10_000,
    ceiling: 30_000,
    priority: 1,
    dscp: "AF41",
    tos: 0x88,
};
/// Blue with another DSCP class (the profile change that changes the gateway's command line).
const BLUE_EF: Slice = Slice { dscp: "EF", tos: 0xb8, ..BLUE };
const RED: Slice = Slice {
    name: "red",
    subnet: "10.81.0.0/16",
    namespace: "r",
    port: 51821,
    node_port: 31821,
    guaranteed: 20_000,
    ceiling: 40_000,
    priority: 3,
    dscp: "CS1",
    tos: 0x20,
};

fn manifest(slices: &[(&Slice, u64)]) -> Manifest {
    let mut text = String::new();
    for c in ["c1", "c2"] {
        text += &format!(
            "apiVersion: slicenet.io/v1alpha1\nkind: MemberCluster\nmetadata:\n  name: {c}\n  annotations: \
             {{{NODES_ANNOTATION}: \"1\", {BEHIND_NAT_ANNOTATION}: \"false\"}}\nspec: {{uplinkKbps: {UPLINK_KBPS}}}\n---\n"
        );
    }
    for (s, ceiling) in slices {
        text += &format!(
            "apiVersion: slicenet.io/v1alpha1\nkind: SliceConfig\nmetadata: {{name: {}}}\nspec:\n  sliceSubnet: {}\n  \
             clusters: [c1, c2]\n  namespaces: [{{namespace: {}}}]\n  \
             gateway: {{port: {}, nodePort: {}, persistentKeepalive: 5, replicas: 1}}\n  \
             qos: {{guaranteedKbps: {}, ceilingKbps: {ceiling}, priority: {}, dscpClass: {}}}\n---\n",
            s.name, s.subnet, s.namespace, s.port, s.node_port, s.guaranteed, s.priority, s.dscp
        );
    }
    parse_manifest(&text).expect("the test's YAML parses")
}

fn workloads(cluster: &str) -> Vec<Value> {
    let role = if cluster == "c1" { "client" } else { "server" };
    let mut text = String::new();
    for ns in [BLUE.namespace, RED.namespace] {
        text += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: {role}, namespace: {ns}}}\nspec: {{containers: [{{name: app}}]}}\n---\n"
        );
    }
    parse_objects(&text).expect("the test's objects parse")
}

/// What the QoS test asks of its lab and control plane.
trait QosEnv {
    fn apply_or_panic(&mut self, m: &Manifest);
    fn pod(&self, cluster: &str, ns: &str, name: &str) -> e2e::Pod;
    fn on_node(&self, argv: &[&str]) -> String;
    fn tree(&self) -> (String, String);
    fn wait_tree(&self, what: &str, cond: impl Fn(&str) -> bool) -> String;
}

impl QosEnv for Env {
    fn apply_or_panic(&mut self, m: &Manifest) {
        self.apply(m).unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn pod(&self, cluster: &str, ns: &str, name: &str) -> e2e::Pod {
        self.cp.pod(cluster, ns, name).unwrap_or_else(|| panic!("no pod {ns}/{name} in {cluster}")).clone()
    }

    /// `argv` in c1's node namespace.
    fn on_node(&self, argv: &[&str]) -> String {
        let out = self.lab().node("c1", "n1").exec(argv).unwrap_or_else(|e| panic!("{argv:?}: {e:#}"));
        assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// c1's node agent's QoS status: (uplink device, classes as `tc -s class show` prints them).
    fn tree(&self) -> (String, String) {
        let node = self.lab().node("c1", "n1");
        let path = node.state_dir().join(slice_node::qos::STATUS_FILE);
        let status: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| panic!("no QoS status at {}", path.display()));
        let device = status["device"].as_str().unwrap_or_else(|| panic!("no device in {status}")).to_owned();
        let classes = self.on_node(&["tc", "-s", "class", "show", "dev", &device]);
        (device, classes)
    }

    /// Waits until `cond` holds of c1's tree (the agent applies its file asynchronously).
    fn wait_tree(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let node = self.lab().node("c1", "n1");
            let present = node.state_dir().join(slice_node::qos::STATUS_FILE).exists();
            let classes = if present { self.tree().1 } else { String::new() };
            if cond(&classes) {
                return classes;
            }
            assert!(Instant::now() < end, "{what}: not within 60 s; classes:\n{classes}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The line of class `5c:<minor>` whose `rate`/`ceil` match a slice (by its rates).
fn class_line(classes: &str, rate_mbit: u64, ceil_mbit: u64) -> Option<&str> {
    classes
        .lines()
        .find(|l| l.starts_with("class htb") && l.contains(&format!("rate {rate_mbit}Mbit ceil {ceil_mbit}Mbit")))
}

/// Bytes sent by the class on the line after `line` in `tc -s class show`.
fn sent_after(classes: &str, line: &str) -> u64 {
    let mut lines = classes.lines().skip_while(|l| *l != line);
    lines.next();
    lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no counters after {line:?} in\n{classes}"))
}

fn default_class_sent(classes: &str) -> u64 {
    let line = classes
        .lines()
        .find(|l| l.starts_with(&format!("class htb {:x}:{:x} ", dataplane::tc::MAJOR, slice_node::qos::DEFAULT_CLASS)))
        .unwrap_or_else(|| panic!("no default class in\n{classes}"));
    sent_after(classes, line)
}

/// An iperf3 UDP run from `client` to `to`, two streams at [`STREAM_MBIT`]: what the server
/// received, Mbit/s (iperf3 reports the server's count back: `sum_received`).
fn iperf_udp(client: &e2e::Pod, to: Ipv4Addr) -> f64 {
    let (b, t, p) = (format!("{STREAM_MBIT}M"), SECONDS.to_string(), IPERF_PORT.to_string());
    let limit = (SECONDS + 30).to_string();
    let to = to.to_string();
    let out = client
        .exec(&[
            "timeout", "-k", "2", &limit, "iperf3", "-c", &to, "-p", &p, "-u", "-b", &b, "-P", "2", "-l", "1200", "-t",
            &t, "-J",
        ])
        .expect("iperf3 client");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("iperf3 -J: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(v.get("error").is_none(), "iperf3 to {to}: {}", v["error"]);
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or_else(|| panic!("no sum_received: {v}")) / 1e6
}

fn assert_between(what: &str, mbit: f64, low: f64, high: f64) {
    assert!(mbit >= low && mbit <= high, "{what}: {mbit:.2} Mbit/s, expected {low:.2}..={high:.2}");
    eprintln!("FIGURE {what}: {mbit:.2} Mbit/s");
}

fn mbit(kbps: u64) -> f64 {
    kbps as f64 / 1000.0
}

/// tcpdump in the WAN namespace: waits for 3 outer packets of slice `s` leaving c1 (from c1's
/// public address, to or from one of the slice's gateway ports: its NodePort, or its listen
/// port, which the edges' NAT keeps and WireGuard's roaming then uses) carrying `tos` (the DSCP
/// bits) and returns whether they came within 60 s.
fn spawn_capture(lab: &Lab, s: &Slice, tos: u8) -> std::process::Child {
    let wan = lab.wan_netns().expect("the lab's WAN");
    let from = lab.cluster("c1").public_address().expect("c1's public address");
    let filter =
        format!("udp and src host {from} and (port {} or port {}) and (ip[1] & 0xfc) == {tos:#x}", s.port, s.node_port);
    Command::new("ip")
        .args(["netns", "exec", wan, "timeout", "60", "tcpdump", "-i", "any", "-nn", "-c", "3", &filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump")
}

#[test]
#[allow(clippy::too_many_lines)] // One story: the lab is built once for all of it.
fn slices_share_an_uplink_by_their_profiles_across_the_wan() {
    e2e::require_root().expect("root");
    let lab = Lab::new(PREFIX).expect("lab (needs root; build the bins first)");
    let mut cp = ControlPlane::new();
    // Four gateways start in this lab: on a loaded machine the first convergence was seen to
    // take longer than the default 60 s (load average 23 on 2 cores).
    cp.set_timeout(Duration::from_secs(180));
    let mut env = Env { cp, lab: Some(lab) };
    env.apply_or_panic(&manifest(&[(&BLUE, BLUE.ceiling), (&RED, RED.ceiling)]));
    for c in ["c1", "c2"] {
        let Env { cp, lab } = &mut env;
        cp.apply_in(lab.as_ref().expect("the lab"), c, &workloads(c)).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let classes =
        env.wait_tree("a class per slice", |c| class_line(c, 10, 30).is_some() && class_line(c, 20, 40).is_some());
    assert!(classes.contains("class htb 5c:1 root"), "the root class at the uplink rate:\n{classes}");

    let clients = [env.pod("c1", "b", "client"), env.pod("c1", "r", "client")];
    let servers = [env.pod("c2", "b", "server"), env.pod("c2", "r", "server")];
    let targets: Vec<Ipv4Addr> = servers.iter().map(|s| s.ipv4("slice0").expect("slice0")).collect();
    let _iperf_servers: Vec<e2e::PodProcess> = servers
        .iter()
        .map(|s| s.spawn(&["iperf3", "-s", "-p", &IPERF_PORT.to_string()]).expect("iperf3 server"))
        .collect();
    for (c, t) in clients.iter().zip(&targets) {
        let end = Instant::now() + Duration::from_secs(60);
        while !c.exec(&["ping", "-c", "1", "-W", "2", &t.to_string()]).is_ok_and(|o| o.status.success()) {
            assert!(Instant::now() < end, "{} cannot reach {t} across the slice", c.lab_name());
        }
    }

    // Both saturating, with each slice's DSCP captured on the WAN and the node's own traffic
    // beside them.
    let (_, before) = env.tree();
    let default_before = default_class_sent(&before);
    let captures = [spawn_capture(env.lab(), &BLUE, BLUE.tos), spawn_capture(env.lab(), &RED, RED.tos)];
    let other = env.lab().cluster("c2").public_address().expect("c2's public address");
    let (rates, pinged) = std::thread::scope(|s| {
        let runs: Vec<_> = clients.iter().zip(&targets).map(|(c, t)| s.spawn(move || iperf_udp(c, *t))).collect();
        let ping = s.spawn(|| {
            let node = env.lab().node("c1", "n1");
            node.exec(&["ping", "-c", "5", "-i", "0.5", "-W", "10", &other.to_string()])
                .is_ok_and(|o| o.status.success())
        });
        (runs.into_iter().map(|r| r.join().expect("iperf3 thread")).collect::<Vec<f64>>(), ping.join().expect("ping"))
    });
    assert_between("blue beside red (g 10, c 30)", rates[0], 0.8 * mbit(BLUE.guaranteed), 1.05 * mbit(BLUE.ceiling));
    assert_between("red beside blue (g 20, c 40)", rates[1], 0.8 * mbit(RED.guaranteed), 1.05 * mbit(RED.ceiling));
    assert!(rates[0] + rates[1] <= 1.05 * mbit(UPLINK_KBPS), "together above the uplink: {rates:?}");
    assert!(pinged, "the node's own traffic (default class) did not get through beside the slices");
    let (_, after) = env.tree();
    assert!(default_class_sent(&after) > default_before, "the default class carried nothing:\n{after}");
    for (capture, s) in captures.into_iter().zip([&BLUE, &RED]) {
        let out = capture.wait_with_output().expect("tcpdump");
        assert!(
            out.status.success(),
            "no outer packet of {} with DSCP {} on the WAN: {}",
            s.name,
            s.dscp,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Blue alone borrows up to its ceiling.
    let alone = iperf_udp(&clients[0], targets[0]);
    assert_between("blue alone (c 30)", alone, 0.8 * mbit(BLUE.ceiling), 1.05 * mbit(BLUE.ceiling));

    // A profile change in place: blue's ceiling to 15 Mbit/s while a TCP connection of blue
    // carries round trips.
    let gateway = env.cp.gateway_pid(BLUE.name, "c1").expect("blue's gateway in c1");
    let echo = EchoServer::start(&servers[0], ECHO_PORT);
    let load = Load::start(&clients[0], SocketAddrV4::new(targets[0], ECHO_PORT));
    load.wait_for(10, "blue's connection before the change");
    env.apply_or_panic(&manifest(&[(&BLUE, 15_000), (&RED, RED.ceiling)]));
    env.wait_tree("blue's ceiling changed in place", |c| class_line(c, 10, 15).is_some());
    let at = load.count();
    load.wait_for(at + 100, "blue's connection after the change");
    let (_, error) = load.stop();
    assert_eq!(error, None, "blue's connection broke across the profile change");
    assert_eq!(echo.stop(), 1, "one connection, kept");
    // Made in place: the same gateway process carried it (a rate change rolls no pod).
    assert_eq!(env.cp.gateway_pid(BLUE.name, "c1"), Some(gateway), "blue's gateway was replaced");
    assert_eq!(env.cp.gateway_restarts(BLUE.name, "c1"), Some(0), "blue's gateway restarted");

    // Blue's DSCP class changed on the SliceConfig: the gateway's command line changes
    // (`--dscp EF`), its process is replaced (a cluster rolls the pod), and blue's outer packets
    // leave c1 with the new class (none did before: it was AF41).
    let capture = spawn_capture(env.lab(), &BLUE, BLUE_EF.tos);
    env.apply_or_panic(&manifest(&[(&BLUE_EF, 15_000), (&RED, RED.ceiling)]));
    assert_eq!(env.cp.gateway_rolls(BLUE.name, "c1"), Some(1), "blue's gateway kept its old command line");
    assert_eq!(env.cp.gateway_rolls(RED.name, "c1"), Some(0), "red's gateway was replaced");
    let pinger =
        clients[0].spawn(&["ping", "-n", "-q", "-c", "60", "-W", "10", &targets[0].to_string()]).expect("ping");
    let out = capture.wait_with_output().expect("tcpdump");
    drop(pinger);
    assert!(
        out.status.success(),
        "no outer packet of blue with DSCP EF on the WAN after the change: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Deleting red removes its class and its classification; blue stays.
    env.apply_or_panic(&manifest(&[(&BLUE_EF, 15_000)]));
    let classes = env.wait_tree("red's class removed", |c| class_line(c, 20, 40).is_none());
    assert!(class_line(&classes, 10, 15).is_some(), "blue's class stays:\n{classes}");
    let table = env.on_node(&["nft", "list", "table", "inet", "slicenet_qos"]);
    assert!(
        table.contains(&BLUE.port.to_string()) && !table.contains(&RED.port.to_string()),
        "classification of blue only:\n{table}"
    );

    // No QoS slice left: the agent takes the tree off the uplink and the table away, and says so.
    let (device, _) = env.tree();
    env.apply_or_panic(&manifest(&[]));
    let node = env.lab().node("c1", "n1");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let qdisc = env.on_node(&["tc", "qdisc", "show", "dev", &device]);
        let tables = env.on_node(&["nft", "list", "tables"]);
        if !qdisc.contains("htb") && !tables.contains("slicenet_qos") {
            break;
        }
        assert!(Instant::now() < end, "the tree or the table stays without QoS slices:\n{qdisc}\n{tables}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = std::fs::read_to_string(node.state_dir().join(slice_node::qos::STATUS_FILE)).expect("QoS status");
    let status: Value = serde_json::from_str(&status).expect("QoS status JSON");
    assert_eq!(status["enabled"], false, "{status}");
    drop(env);
}
