//! Several clusters on one WAN, and the node agents' remote routes: clusters with identical pod
//! CIDRs behind edges that masquerade and forward public ports (one behind NAT, with no inbound
//! forwarding at all); remote routes to a gateway pod on the same and on another node; teardown
//! and crash cleanup of edges, the WAN and processes started in pods. Needs root; fails (does
//! not skip) without it. Each test has its own lab prefix.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::probe::{in_netns, tcp_exchange};
use e2e::{ClusterOptions, Lab, LabOptions, LabSlice, Node, Pod, PodSpec};
use serde_json::Value;
use slice_api::node::RemoteRoute;

const READY: Duration = Duration::from_secs(30);

/// A UDP echo server in `pod` on `port`: answers each datagram with `echo <source>` until
/// stopped. It stops when told, not after an idle time, so a slow machine cannot end it early.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl UdpEcho {
    fn start(pod: &Pod, port: u16) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let handle = in_netns(&pod.netns_path, move || {
            let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
            sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            tx.send(()).unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    seen.push(format!("{} {}", from.ip(), String::from_utf8_lossy(&buf[..n])));
                    let _ = sock.send_to(format!("echo {}", from.ip()).as_bytes(), from);
                }
            }
            seen
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("udp server up");
        Self { stop, handle }
    }

    /// Stops the server; what it received.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("udp echo thread")
    }
}

/// Sends UDP from `pod` to `to` until an answer comes (up to `tries` × 1 s); returns it.
fn udp_ask(pod: &Pod, to: SocketAddrV4, tries: u32) -> Option<String> {
    in_netns(&pod.netns_path, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..tries {
            let _ = sock.send_to(b"hello", to);
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    })
    .join()
    .unwrap()
}

fn ping(pod: &Pod, to: &str) -> bool {
    pod.exec(&["ping", "-n", "-q", "-c", "1", "-W", "1", to]).unwrap().status.success()
}

/// Pings until one answer, up to `timeout`.
fn ping_within(pod: &Pod, to: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ping(pod, to) {
            return true;
        }
    }
    false
}

/// Nothing of lab `prefix` is left: namespaces, processes, mounts, directory, and none of
/// `pids` alive.
fn assert_no_leftovers(prefix: &str, pids: &[u32]) {
    let root = format!("{}/{prefix}", e2e::LAB_BASE);
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    let ours: Vec<&String> = netns.iter().filter(|n| n.starts_with(&format!("{prefix}-"))).collect();
    assert!(ours.is_empty(), "namespaces left: {ours:?}");
    for pid in pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()));
        assert!(matches!(state, None | Some('Z') | Some('X')), "process {pid} still runs ({state:?})");
    }
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&format!("{root}/")) {
                procs.push(format!("{:?}: {cmdline}", entry.file_name()));
            }
        }
    }
    assert!(procs.is_empty(), "processes left: {procs:#?}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.lines().any(|l| l.contains(&root)), "mounts left under {root}");
    assert!(!Path::new(&root).exists(), "{root} left");
    // The edges' nftables tables lived in their namespaces; the host has none of ours.
    let host = std::process::Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&host.stdout).contains(e2e::wan::NFT_TABLE), "an nft table leaked to the host");
}

fn edge_counter(lab: &Lab, cluster: &str, chain: &str) -> u64 {
    let out =
        lab.cluster(cluster).edge_exec(&["nft", "-j", "list", "chain", "ip", e2e::wan::NFT_TABLE, chain]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

#[test]
fn three_clusters_on_a_wan_one_behind_nat() {
    let prefix = "mc1w";
    let mut lab = Lab::with_options(prefix, LabOptions::without_slice_cni()).expect("lab (needs root)");
    lab.add_wan().unwrap();
    lab.add_cluster("c1", 1).unwrap();
    lab.add_cluster("c2", 1).unwrap();
    lab.add_cluster_with("c3", 1, ClusterOptions::behind_nat()).unwrap();
    assert_eq!(lab.wan_netns(), Some("mc1w-wan"));
    let c1_public = lab.cluster("c1").public_address().unwrap();
    let c3_public = lab.cluster("c3").public_address().unwrap();
    assert_eq!(c1_public, Ipv4Addr::new(198, 19, 0, 10));
    assert_eq!(c3_public, Ipv4Addr::new(198, 19, 0, 12));
    assert_eq!(lab.cluster("c3").edge_netns(), Some("mc1w-c3-edge"));

    let p1 = lab.node("c1", "n1").run_pod(PodSpec::new("app", "srv")).unwrap();
    let p2 = lab.node("c2", "n1").run_pod(PodSpec::new("app", "srv")).unwrap();
    let p3 = lab.node("c3", "n1").run_pod(PodSpec::new("app", "cli")).unwrap();
    let ip1 = p1.ipv4("eth0").unwrap();
    assert_eq!(ip1, p2.ipv4("eth0").unwrap(), "pod CIDRs are the same in every cluster");
    assert_eq!(ip1, p3.ipv4("eth0").unwrap(), "pod CIDRs are the same in every cluster");

    // Public ports of c1 lead to the pod; c3 (behind NAT) has none to give.
    lab.cluster("c1").forward_udp(31000, ip1, 5000).unwrap();
    lab.cluster("c1").forward_tcp(31001, ip1, 5001).unwrap();
    let err = lab.cluster("c3").forward_udp(31000, ip1, 5000).unwrap_err();
    assert!(format!("{err:#}").contains("behind NAT"), "{err:#}");

    // c3 → c1 over UDP: the server sees c3's public address (masqueraded), the answer comes back.
    let server = UdpEcho::start(&p1, 5000);
    let answer = udp_ask(&p3, SocketAddrV4::new(c1_public, 31000), 10).expect("UDP from c3 reaches c1's pod");
    assert_eq!(answer, format!("echo {c3_public}"));
    // And from c2 (not behind NAT) too.
    let c2_public = lab.cluster("c2").public_address().unwrap();
    assert_eq!(udp_ask(&p2, SocketAddrV4::new(c1_public, 31000), 10), Some(format!("echo {c2_public}")));
    let seen = server.stop();
    assert!(seen.iter().all(|s| s.starts_with("198.19.0.")), "the pod saw a non-public source: {seen:?}");

    // c3 → c1 over TCP.
    let (reply, peer) = tcp_exchange(&p1, 5001, &p3, SocketAddrV4::new(c1_public, 31001)).expect("TCP c3 → c1");
    assert_eq!(reply, format!("hello from {c3_public}"));
    assert_eq!(peer, c3_public.to_string());

    // Nothing gets into c3 from the WAN: not through its public address (no forward) ...
    let listener = UdpEcho::start(&p3, 5000);
    assert_eq!(udp_ask(&p1, SocketAddrV4::new(c3_public, 31000), 2), None);
    assert_eq!(udp_ask(&p1, SocketAddrV4::new(c3_public, 5000), 2), None);
    assert!(listener.stop().is_empty(), "something reached c3's pod from the WAN");
    // ... nor by routing pod addresses at its edge from the WAN host.
    let wan = lab.wan_netns().unwrap().to_string();
    let via = format!("{c3_public}");
    let out = std::process::Command::new("ip")
        .args(["-n", &wan, "route", "add", "10.244.0.0/16", "via", &via])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = edge_counter(&lab, "c3", "forward");
    let ping = std::process::Command::new("nsenter")
        .args([format!("--net=/run/netns/{wan}"), "ping".into(), "-c2".into(), "-W1".into(), ip1.to_string()])
        .output()
        .unwrap();
    assert!(!ping.status.success(), "the WAN host reached a pod in c3");
    assert!(edge_counter(&lab, "c3", "forward") > before, "c3's edge did not drop the unsolicited packets");

    // WAN loss on the way into c1: total loss stops the exchange, none restores it.
    lab.cluster("c1").set_wan_loss(1.0).unwrap();
    let server = UdpEcho::start(&p1, 5000);
    assert_eq!(udp_ask(&p3, SocketAddrV4::new(c1_public, 31000), 2), None);
    lab.cluster("c1").set_wan_loss(0.0).unwrap();
    assert!(udp_ask(&p3, SocketAddrV4::new(c1_public, 31000), 5).is_some());
    server.stop();

    // WAN delay on the way into c1 (and into c3 for the answers): the round trip takes 2 × 30 ms.
    lab.cluster("c1").set_wan_delay(30).unwrap();
    lab.cluster("c3").set_wan_delay(30).unwrap();
    // A delay is a floor whatever the machine's speed; no upper bound is asserted (a busy
    // machine adds its own).
    let server = UdpEcho::start(&p1, 5000);
    let started = Instant::now();
    assert!(udp_ask(&p3, SocketAddrV4::new(c1_public, 31000), 10).is_some(), "UDP through the delayed WAN");
    let rtt = started.elapsed();
    assert!(rtt >= Duration::from_millis(60), "delayed RTT {rtt:?}");
    server.stop();
    let (reply, _) = tcp_exchange(&p1, 5001, &p3, SocketAddrV4::new(c1_public, 31001)).expect("TCP with delay");
    assert_eq!(reply, format!("hello from {c3_public}"));
    // Removing c1's delay stops its delay program and its queue rule (states, not timings);
    // c3's delay still holds the answers for at least 30 ms.
    lab.cluster("c1").set_wan_delay(0).unwrap();
    assert_eq!(delay_pid("mc1w-c1-edge"), None, "c1's delay program outlived set_wan_delay(0)");
    assert!(!raw_prerouting("mc1w-c1-edge").contains("NFQUEUE"), "c1's queue rule outlived set_wan_delay(0)");
    assert!(raw_prerouting("mc1w-c3-edge").contains("NFQUEUE"), "c3's queue rule is gone");
    let server = UdpEcho::start(&p1, 5000);
    let started = Instant::now();
    assert!(udp_ask(&p3, SocketAddrV4::new(c1_public, 31000), 10).is_some());
    let rtt = started.elapsed();
    assert!(rtt >= Duration::from_millis(30), "half-delayed RTT {rtt:?}");
    server.stop();
    // c3's delay program is left running: teardown must stop it.

    // A long-lived process in a pod goes with the lab.
    let mut sleeper = p3.spawn(&["sleep", "600"]).unwrap();
    assert!(sleeper.is_running());
    let pid = sleeper.id();
    let delay_pid = find_delay_pid("mc1w-c3-edge");
    lab.teardown().expect("teardown");
    assert!(!sleeper.is_running());
    assert_no_leftovers(prefix, &[pid, delay_pid]);
}

/// The PID of the delay program running in namespace `netns`.
/// The iptables raw PREROUTING rules of a lab namespace.
fn raw_prerouting(netns: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "iptables", "-t", "raw", "-S", "PREROUTING"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn find_delay_pid(netns: &str) -> u32 {
    delay_pid(netns).unwrap_or_else(|| panic!("no delay program in {netns}"))
}

/// The delay program running in `netns`, if any.
fn delay_pid(netns: &str) -> Option<u32> {
    let target = std::fs::metadata(format!("/run/netns/{netns}")).unwrap();
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let Ok(ns) = std::fs::metadata(entry.path().join("ns/net")) else { continue };
        if comm.starts_with("delay-") && ns.ino() == target.ino() && ns.dev() == target.dev() {
            return Some(pid);
        }
    }
    None
}

fn router_route(node: &Node, slice: &str, prefix: &str) -> Option<Value> {
    let ns = format!("{}{slice}", node.router_netns_prefix());
    let out = std::process::Command::new("ip").args(["-n", &ns, "-j", "route", "show", prefix]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.first().cloned()
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn remote_routes_reach_a_gateway_on_the_same_and_another_node() {
    let prefix = "mc2r";
    let mut lab = Lab::new(prefix).expect("lab (needs root; build the bins first)");
    lab.add_cluster("c1", 2).unwrap();
    let remote = "10.80.16.0/20";
    let route = |via: IpAddr| RemoteRoute::new(remote.parse().unwrap(), via);
    // The gateway pod does not exist yet: its address is the first n1 gives out.
    let expected_gw: IpAddr = "10.80.0.2".parse().unwrap();
    let slice = |via| LabSlice::new("blue", 100, "10.80.0.0/16", &["gw", "app"]).with_remote_routes(vec![route(via)]);
    let c1 = lab.cluster("c1");
    c1.start_agents(&[slice(expected_gw)]).unwrap();
    let (n1, n2) = (c1.node("n1"), c1.node("n2"));
    // The state file is written although the gateway is missing (the gateway needs it to start).
    for node in [n1, n2] {
        node.wait_slice_ready("blue", READY).unwrap();
    }
    // n2 routes the remote prefix to n1's router over the VXLAN right away.
    let r = wait_for(Duration::from_secs(10), || router_route(n2, "blue", remote)).expect("route on n2");
    assert_eq!(r["gateway"], "10.80.0.1", "{r}");
    assert_eq!(r["dev"], "sv100", "{r}");
    assert!(r["flags"].as_array().unwrap().iter().any(|f| f == "onlink"), "{r}");
    // n1 waits for the gateway pod and says so.
    assert!(router_route(n1, "blue", remote).is_none());
    let waiting = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(n1.agent_log()).ok().filter(|l| l.contains("wait for the gateway pod"))
    });
    assert!(waiting.is_some(), "n1's agent does not report the missing gateway");

    // The fake gateway: a slice member with forwarding on and an address of the remote prefix.
    let gw = n1.run_gateway_pod("gw", "fakegw").unwrap();
    let gw_ip = IpAddr::V4(gw.ipv4("slice0").unwrap());
    gw.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    // This kernel has no dummy devices: the remote address goes on lo.
    gw.exec_ok(&["ip", "addr", "add", "10.80.16.1/32", "dev", "lo"]).unwrap();
    if gw_ip != expected_gw {
        eprintln!("the gateway got {gw_ip}, not {expected_gw}: updating the configuration");
        c1.update_agent_configs(&[slice(gw_ip)]).unwrap();
    }
    let r = wait_for(Duration::from_secs(10), || {
        router_route(n1, "blue", remote).filter(|r| r["gateway"] == gw_ip.to_string())
    })
    .expect("n1 routes the remote prefix to the gateway pod");
    assert!(r["dev"].as_str().unwrap().starts_with("sn"), "via the gateway's veth: {r}");

    // Pods on both nodes reach the remote address through the gateway.
    let a = n1.run_pod(PodSpec::new("app", "a")).unwrap();
    let b = n2.run_pod(PodSpec::new("app", "b")).unwrap();
    assert!(ping_within(&a, "10.80.16.1", Duration::from_secs(20)), "pod on the gateway's node");
    assert!(ping_within(&b, "10.80.16.1", Duration::from_secs(20)), "pod on another node");
    // The gateway sees the pods' own slice addresses.
    let seen = gw.exec_ok(&["ip", "-j", "neigh"]).unwrap();
    assert!(!seen.is_empty());

    // The gateway pod goes: its route goes with its veth, and the agent waits again.
    n1.remove_pod(&gw).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || router_route(n1, "blue", remote).is_none().then_some(())).is_some(),
        "route to a removed gateway left behind"
    );
    assert!(!ping(&a, "10.80.16.1"));
    // Remote routes removed from the configuration: n2's route goes too.
    c1.update_agent_configs(&[LabSlice::new("blue", 100, "10.80.0.0/16", &["gw", "app"])]).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || router_route(n2, "blue", remote).is_none().then_some(())).is_some(),
        "n2 kept the remote route"
    );
    // Pods of the slice still reach each other.
    assert!(ping_within(&a, &b.ipv4("slice0").unwrap().to_string(), Duration::from_secs(20)));
    lab.teardown().expect("teardown");
    assert_no_leftovers(prefix, &[]);
}

#[test]
fn crash_cleanup_removes_wan_edges_and_pod_processes() {
    let prefix = "mc3c";
    let mut lab = Lab::with_options(prefix, LabOptions::without_slice_cni()).expect("lab (needs root)");
    lab.add_cluster("c1", 1).unwrap();
    // A WAN added after the cluster gives it an edge too.
    lab.add_wan().unwrap();
    assert!(lab.cluster("c1").edge_netns().is_some());
    let pod = lab.node("c1", "n1").run_pod(PodSpec::new("app", "p")).unwrap();
    lab.cluster("c1").forward_udp(31000, pod.ipv4("eth0").unwrap(), 5000).unwrap();
    // Half the packets into c1 are lost: pings from the WAN host to c1's public address.
    lab.cluster("c1").set_wan_loss(0.5).unwrap();
    let wan = format!("--net=/run/netns/{}", lab.wan_netns().unwrap());
    let public = lab.cluster("c1").public_address().unwrap().to_string();
    let out = std::process::Command::new("nsenter")
        .args([wan.as_str(), "ping", "-n", "-q", "-c", "200", "-i", "0.005", "-W", "1", &public])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let received: u32 = text
        .split(", ")
        .find_map(|part| part.strip_suffix(" received").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    assert!((60..=140).contains(&received), "50% loss let {received} of 200 through");
    lab.cluster("c1").set_wan_delay(20).unwrap();
    let sleeper = pod.spawn(&["sleep", "600"]).unwrap();
    let pid = sleeper.id();
    // A crash: nothing is dropped.
    let delay_pid = find_delay_pid(&format!("{prefix}-c1-edge"));
    std::mem::forget(sleeper);
    std::mem::forget(lab);
    e2e::cleanup(prefix).expect("cleanup after a crash");
    assert_no_leftovers(prefix, &[pid, delay_pid]);
}
