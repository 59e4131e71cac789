//! One slice across three clusters on the real path, made by the lab's control plane (the hub's
//! and the workers' own passes, `e2e::control`): pods through containerd's CRI and `slice-cni`,
//! node agents routing the other clusters' prefixes to a gateway pod per cluster running
//! `slice-gateway` as the worker's Deployment says (WireGuard over the lab's WAN; c3 behind NAT). One lab, phases in
//! order: reachability (ICMP, TCP, 50 MB), the WAN holding only WireGuard UDP (nft counters and a
//! tcpdump capture with no cleartext slice payload), a transfer through
//! a lossy delayed WAN, a gateway killed and restarted, a cluster removed from the slice.
//! Needs root and `slice-gateway`, `slice-cni`, `slice-operator` (see `e2e::bin_dir`); fails
//! (does not skip) without them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::control::{self, ControlPlane, PUBLIC_PORT};
use e2e::probe::tcp_exchange;
use e2e::{Lab, Pod, PodSpec};

const WIRE_TABLE: &str = "xcwire";

fn slice_addr(pod: &Pod) -> Ipv4Addr {
    pod.ipv4("slice0").unwrap_or_else(|e| panic!("{e:#}"))
}

fn ping(pod: &Pod, to: Ipv4Addr) -> bool {
    pod.exec(&["ping", "-n", "-q", "-c", "1", "-W", "1", &to.to_string()]).unwrap().status.success()
}

fn ping_within(pod: &Pod, to: Ipv4Addr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ping(pod, to) {
            return true;
        }
    }
    false
}

/// `bytes` of TCP from `client` to `server` over the slice with iperf3, within `timeout`.
/// Returns (seconds, Mbit/s as the receiver saw it).
fn transfer(server: &Pod, client: &Pod, port: u16, bytes: &str, timeout: Duration) -> (f64, f64) {
    let port_s = port.to_string();
    let mut srv = server.spawn(&["iperf3", "-s", "-1", "-p", &port_s]).unwrap();
    let to = slice_addr(server).to_string();
    let secs = timeout.as_secs().to_string();
    let started = Instant::now();
    let mut last = String::new();
    for _ in 0..20 {
        let out = client.exec(&["timeout", &secs, "iperf3", "-c", &to, "-p", &port_s, "-n", bytes, "-J"]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_str(&text).expect("iperf3 JSON");
            let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0);
            let _ = srv.stop();
            return (started.elapsed().as_secs_f64(), bps / 1e6);
        }
        last = format!("{} {text}", String::from_utf8_lossy(&out.stderr));
        if !text.contains("connect") && !last.contains("Connection refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "transfer {bytes} {} → {} failed: {last}\nserver log: {}",
        client.lab_name(),
        server.lab_name(),
        srv.log_text()
    );
}

fn wan_nft(lab: &Lab, args: &[&str]) -> String {
    let wan = format!("--net=/run/netns/{}", lab.wan_netns().unwrap());
    let out = Command::new("nsenter").arg(wan).arg("nft").args(args).output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Counters on the WAN bridge: `wg` = UDP between public addresses with the gateways' public
/// port on one side; `unreachable` = ICMP port unreachable between public addresses (a
/// forwarded port whose gateway is down answers so); `other` = every other IPv4 packet and every
/// IPv6 packet but ICMPv6 (neighbour discovery, multicast listener reports: the kernel sends them
/// on any new link).
fn install_wire_counters(lab: &Lab, public_port: u16) {
    let rules = format!(
        "table bridge {WIRE_TABLE} {{\n\
         \tcounter wg {{}}\n\tcounter unreachable {{}}\n\tcounter other {{}}\n\
         \tchain wire {{ type filter hook forward priority 0; policy accept;\n\
         \t\tether type ip ip saddr 198.19.0.0/24 ip daddr 198.19.0.0/24 udp sport {public_port} counter name wg accept\n\
         \t\tether type ip ip saddr 198.19.0.0/24 ip daddr 198.19.0.0/24 udp dport {public_port} counter name wg accept\n\
         \t\tether type ip ip saddr 198.19.0.0/24 ip daddr 198.19.0.0/24 icmp type destination-unreachable icmp code port-unreachable counter name unreachable accept\n\
         \t\tether type ip counter name other accept\n\
         \t\tether type ip6 meta l4proto != ipv6-icmp counter name other accept\n\
         \t}}\n}}\n"
    );
    let file = lab.root().join("wire.nft");
    std::fs::write(&file, rules).unwrap();
    wan_nft(lab, &["-f", &file.display().to_string()]);
}

/// (packets, bytes) of a counter of [`install_wire_counters`].
fn wire_counter(lab: &Lab, name: &str) -> (u64, u64) {
    let out = wan_nft(lab, &["list", "counter", "bridge", WIRE_TABLE, name]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let after = |k: &str| words.iter().position(|w| *w == k).and_then(|p| words[p + 1].parse().ok()).unwrap_or(0);
    (after("packets"), after("bytes"))
}

/// A packet capture in the WAN namespace by Debian's `tcpdump` on every interface (frames the
/// bridge forwards between ports never reach `br0` itself), whole packets, stopped by PID. `-Z root`: Debian's tcpdump otherwise drops to its own user and
/// cannot write into the lab's root-owned directory; `--immediate-mode`: without it packets still
/// in the kernel's ring when tcpdump is stopped are never written ("0 packets captured, 201
/// received by filter" here). Its stderr goes to `tcpdump.log` in the lab root.
struct WanCapture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl WanCapture {
    fn start(lab: &Lab) -> Self {
        let file = lab.root().join("wan.pcap");
        let wan = format!("--net=/run/netns/{}", lab.wan_netns().unwrap());
        let child = Command::new("nsenter")
            .arg(wan)
            .args(["tcpdump", "-Z", "root", "--immediate-mode", "-i", "any", "-nn", "-U", "-s", "0", "-w"])
            .arg(&file)
            .stderr(std::fs::File::create(lab.root().join("tcpdump.log")).unwrap())
            .spawn()
            .expect("tcpdump (make test installs it)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300)); // the capture is live once the file exists
        Self { child, file }
    }

    /// Stops the capture (SIGTERM by PID, so tcpdump flushes the file) and returns its path.
    fn stop(mut self) -> std::path::PathBuf {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        self.file.clone()
    }
}

/// The packets of a capture file that match `filter`, one line each, as `tcpdump -r` prints them.
fn read_capture(file: &Path, filter: &str) -> Vec<String> {
    let out = Command::new("tcpdump").arg("-r").arg(file).args(["-nn", filter]).output().unwrap();
    assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

impl Drop for WanCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ping summary's received count.
fn received(text: &str) -> u32 {
    text.split(", ")
        .find_map(|part| part.strip_suffix(" received").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no ping summary: {text}"))
}

struct Pods {
    a1: Pod,
    a2: Pod,
    b: Pod,
    c: Pod,
}

impl Pods {
    fn all(&self) -> [&Pod; 4] {
        [&self.a1, &self.a2, &self.b, &self.c]
    }
}

fn build(prefix: &str) -> (Lab, ControlPlane, Pods) {
    let t0 = Instant::now();
    let mut lab = Lab::new(prefix).expect("lab (needs root; build the bins first)");
    let mut cp = ControlPlane::new();
    let manifest = control::blue_over(&["c1", "c2", "c3"]).unwrap();
    cp.apply(&mut lab, &manifest).unwrap_or_else(|e| panic!("{e:#}"));
    install_wire_counters(&lab, PUBLIC_PORT);
    let step = Duration::from_secs(20);
    let run = |cluster: &str, node: &str, name: &str| {
        control::run_pod_retrying(lab.node(cluster, node), &PodSpec::new("shop", name), step).unwrap()
    };
    let pods =
        Pods { a1: run("c1", "n1", "a1"), a2: run("c1", "n2", "a2"), b: run("c2", "n1", "b"), c: run("c3", "n1", "c") };
    // The planner's cluster prefixes (16 clusters at most: /20), in the clusters' order.
    for (pod, net) in [(&pods.a1, "10.80.0."), (&pods.a2, "10.80.0."), (&pods.b, "10.80.16."), (&pods.c, "10.80.32.")] {
        assert!(slice_addr(pod).to_string().starts_with(net), "{}: {}", pod.lab_name(), slice_addr(pod));
    }
    eprintln!("TIMING lab + slice across 3 clusters + pods: {:.1} s", t0.elapsed().as_secs_f64());
    (lab, cp, pods)
}

#[test]
fn slice_across_three_clusters_with_gateways() {
    let (mut lab, mut cp, pods) = build("xc1");
    let clusters = ["c1", "c2", "c3"];

    // (1) Every pod reaches every other pod and every other cluster's gateway pod over slice0.
    let t = Instant::now();
    for from in pods.all() {
        for to in pods.all().into_iter().filter(|p| p.sandbox_id != from.sandbox_id) {
            assert!(
                ping_within(from, slice_addr(to), Duration::from_secs(30)),
                "ping {} → {} ({}):\n{}",
                from.lab_name(),
                to.lab_name(),
                slice_addr(to),
                cp.diagnose(&lab)
            );
        }
        for cluster in clusters.into_iter().filter(|c| *c != from.cluster) {
            let gw = cp.gateway_address("blue", cluster).expect("a gateway");
            assert!(ping_within(from, gw, Duration::from_secs(30)), "{} → gateway {cluster}", from.lab_name());
        }
    }
    eprintln!("TIMING pings, all pairs: {:.1} s", t.elapsed().as_secs_f64());
    // A capture on the WAN while slice TCP crosses it: only WireGuard UDP, no slice payload.
    let capture = WanCapture::start(&lab);
    let mut port = 7000;
    for client in pods.all() {
        for server in pods.all().into_iter().filter(|p| p.cluster != client.cluster) {
            port += 1;
            let (reply, seen) = tcp_exchange(server, port, client, SocketAddrV4::new(slice_addr(server), port))
                .unwrap_or_else(|e| panic!("TCP {} → {}: {e}", client.lab_name(), server.lab_name()));
            assert_eq!(reply, format!("hello from {}", slice_addr(client)));
            assert_eq!(seen, slice_addr(client).to_string(), "the server sees the client's own slice address");
        }
    }
    let listen_port = slice_api::crd::GatewaySpec::default().port;
    let gw_ports = format!("udp port {PUBLIC_PORT} or udp port {listen_port}");
    let file = capture.stop();
    let wireguard = read_capture(&file, &gw_ports);
    let others = read_capture(&file, &format!("ip and not ({gw_ports})"));
    let raw = std::fs::read(&file).unwrap();
    assert!(!wireguard.is_empty(), "the capture saw no WireGuard packets");
    assert!(others.is_empty(), "IPv4 packets other than WireGuard UDP crossed the WAN:\n{}", others.join("\n"));
    assert!(
        !raw.windows(b"hello from 10.80.".len()).any(|w| w == b"hello from 10.80."),
        "a slice TCP payload crossed the WAN in the clear"
    );
    eprintln!("FIGURE WAN capture: {} WireGuard UDP packets, 0 others, no cleartext slice payload", wireguard.len());
    // Nobody was told c3's endpoint (it is behind NAT): c1 learnt it by roaming.
    let c1_interface = cp.gateway_interface("blue", "c1").unwrap();
    let eps = cp.gateway_wg("blue", "c1", &["show", &c1_interface, "endpoints"]).unwrap();
    let c3_public = lab.cluster("c3").public_address().unwrap().to_string();
    assert!(eps.contains(&format!("{c3_public}:")), "c1 learnt c3's NATed endpoint: {eps}");
    let (secs, mbps) = transfer(&pods.c, &pods.a1, 5201, "50M", Duration::from_secs(120));
    eprintln!("FIGURE 50 MB TCP c1/n1 → c3 (behind NAT): {secs:.1} s, {mbps:.0} Mbit/s");
    let (secs, mbps) = transfer(&pods.a2, &pods.c, 5202, "50M", Duration::from_secs(120));
    eprintln!("FIGURE 50 MB TCP c3 → c1/n2: {secs:.1} s, {mbps:.0} Mbit/s");

    // (2) The WAN held only WireGuard UDP between the gateways' public endpoints.
    let (wg_packets, wg_bytes) = wire_counter(&lab, "wg");
    let (other_packets, _) = wire_counter(&lab, "other");
    assert_eq!(wire_counter(&lab, "unreachable").0, 0, "ICMP port unreachable while every gateway runs");
    eprintln!("FIGURE WAN: {wg_packets} WireGuard UDP packets ({wg_bytes} bytes), {other_packets} others");
    assert_eq!(other_packets, 0, "non-WireGuard packets crossed the WAN");
    assert!(wg_bytes > 100_000_000, "100 MB crossed the WAN as WireGuard: {wg_bytes} bytes");

    // (5) 1% loss and 50 ms delay into c1 and c3: 10 MB c1 → c3 still completes.
    for c in ["c1", "c3"] {
        lab.cluster(c).set_wan_loss(0.01).unwrap();
        lab.cluster(c).set_wan_delay(50).unwrap();
    }
    let t = Instant::now();
    let out = pods.a1.exec(&["ping", "-n", "-q", "-c", "3", &slice_addr(&pods.c).to_string()]).unwrap();
    eprintln!(
        "FIGURE ping c1 → c3 with WAN delay: {}",
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("")
    );
    let (secs, mbps) = transfer(&pods.c, &pods.a1, 5203, "10M", Duration::from_secs(180));
    eprintln!("FIGURE 10 MB TCP c1 → c3, WAN 1% loss + 50 ms each way: {secs:.1} s, {mbps:.1} Mbit/s");
    for c in ["c1", "c3"] {
        lab.cluster(c).set_wan_loss(0.0).unwrap();
        lab.cluster(c).set_wan_delay(0).unwrap();
    }
    eprintln!("TIMING impaired phase: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(wire_counter(&lab, "other").0, 0, "non-WireGuard packets crossed the WAN");

    // (3) Kill c2's gateway (SIGKILL by PID); the lab's kubelet starts it again in its pod (as
    // a container restart), with the configuration the worker wrote.
    let old_pid = cp.gateway_pid("blue", "c2").unwrap();
    cp.kill_gateway("blue", "c2").unwrap();
    assert!(!Path::new(&format!("/proc/{old_pid}/cmdline")).exists() || !ping(&pods.a1, slice_addr(&pods.b)));
    assert!(!ping(&pods.a1, slice_addr(&pods.b)), "c1 → c2 without c2's gateway");
    let restarted = Instant::now();
    cp.reconcile(&lab).unwrap_or_else(|e| panic!("{e:#}"));
    let started = restarted.elapsed();
    assert_eq!(cp.gateway_restarts("blue", "c2"), Some(1));
    assert_ne!(cp.gateway_pid("blue", "c2"), Some(old_pid));
    let mut recovered = None;
    while restarted.elapsed() < Duration::from_secs(60) {
        if ping(&pods.a1, slice_addr(&pods.b)) {
            recovered = Some(restarted.elapsed());
            break;
        }
    }
    let recovered = recovered.unwrap_or_else(|| {
        panic!("c1 → c2 did not recover within 60 s; c2 gateway log:\n{}", cp.gateway_log("blue", "c2"))
    });
    eprintln!(
        "FIGURE gateway c2 killed and restarted: running again after {:.2} s, c1 → c2 ping answered {:.2} s after the restart",
        started.as_secs_f64(),
        recovered.as_secs_f64()
    );
    assert!(ping_within(&pods.b, slice_addr(&pods.a2), Duration::from_secs(30)), "c2 → c1/n2 after the restart");
    // c3 is behind NAT: the restarted c2 has no endpoint for it until c3 handshakes again. c3
    // keeps sending keepalives on its old session (which c2 cannot read); it starts a new
    // handshake once its data has gone unanswered (WireGuard: keepalive + rekey timeout, 15 s).
    assert!(ping_within(&pods.c, slice_addr(&pods.b), Duration::from_secs(40)), "c3 → c2 after the restart");
    eprintln!(
        "FIGURE gateway c2 restarted: c3 (behind NAT) → c2 ping answered {:.2} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    assert!(ping_within(&pods.b, slice_addr(&pods.c), Duration::from_secs(30)), "c2 → c3 after the restart");

    // (4) Remove c2 from the slice while c1 pings c3 continuously: not one packet lost.
    let steady = {
        let netns = pods.a1.netns_path.clone();
        let to = slice_addr(&pods.c).to_string();
        std::thread::spawn(move || {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                // -W: how long ping waits for the last answers; a busy machine may be slow to
                // answer, which is not a loss.
                .args(["ping", "-n", "-q", "-c", "200", "-i", "0.02", "-W", "10", &to])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    let t = Instant::now();
    let c2 = cp.worker("blue", "c2").unwrap().clone();
    // c2's slice goes entirely (its routers, and with them b's slice0): remember b's address.
    let b_addr = slice_addr(&pods.b);
    let prefix: ipnet::IpNet = c2.spec.cluster_prefix.parse().unwrap();
    let c2_key = c2.status.and_then(|s| s.gateway_public_key).unwrap();
    let without_c2 = control::blue_over(&["c1", "c3"]).unwrap();
    cp.apply(&mut lab, &without_c2).unwrap_or_else(|e| panic!("{e:#}"));
    for c in ["c1", "c3"] {
        e2e::gateway::wait_router_route(&lab, c, "blue", &prefix, false, Duration::from_secs(15)).unwrap();
    }
    eprintln!("TIMING c2 removed from gateways and agents: {:.2} s", t.elapsed().as_secs_f64());
    let summary = steady.join().unwrap();
    assert_eq!(received(&summary), 200, "c1 → c3 lost packets while c2 was removed: {summary}");
    assert!(!ping(&pods.a1, b_addr), "c1 → c2 after c2 was removed");
    assert!(!ping(&pods.c, b_addr), "c3 → c2 after c2 was removed");
    assert!(ping(&pods.a2, slice_addr(&pods.c)), "c1/n2 → c3 after c2 was removed");
    let peers = cp.gateway_wg("blue", "c1", &["show", &c1_interface, "peers"]).unwrap();
    assert!(!peers.contains(&c2_key), "{peers}");

    // While c2's gateway was down, its edge still forwarded the port: the WireGuard datagrams
    // sent to it were answered with ICMP port unreachable between public addresses.
    let unreachable = wire_counter(&lab, "unreachable").0;
    eprintln!(
        "FIGURE WAN after all phases: {} WireGuard UDP packets, {unreachable} ICMP port unreachable between public addresses, {} others",
        wire_counter(&lab, "wg").0,
        wire_counter(&lab, "other").0
    );
    assert_eq!(wire_counter(&lab, "other").0, 0, "non-WireGuard packets crossed the WAN");

    cp.delete_all(&mut lab).expect("delete");
    for pod in pods.all() {
        lab.node(&pod.cluster, &pod.node).remove_pod(pod).expect("remove pod");
    }
    lab.teardown().expect("teardown");
}
