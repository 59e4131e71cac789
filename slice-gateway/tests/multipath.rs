//! Root test: peer groups (`--multipath-probe-ms`, issue 13). Gateway A has the two replicas
//! B1 and B2 of one remote "cluster" as peers that share its prefix 10.78.0.0/24; both replicas
//! answer on the same address 10.78.0.1 (as the cluster's pods answer through either). Flows
//! spread over both; killing the replica that carries a ping (SIGKILL) moves the ping to the
//! other; the replica restarted with its key is live again; killing the other replica then
//! leaves the ping on the first. Gaps are printed as FIGURE lines, never asserted. A replica
//! stopped with SIGTERM under `--drain-ms` drains: `/healthz` 503 first, then silence towards
//! A (which calls it dead while it still runs), then a clean exit.

mod common;

use common::{KeyPair, Lab, PORT, WAIT, keypair, socket_path, wait_until};

const CLUSTER_B: &str = "10.78.0.0/24";
const ANYCAST: &str = "10.78.0.1";
const PROBE_MS: &str = "200";
const METRICS: &str = "127.0.0.1:9586";

/// A's file: B1 (node 1) and B2 (node 2) both hold cluster B's prefix (and their own /32).
fn config_a(a: &KeyPair, b1: &KeyPair, b2: &KeyPair) -> String {
    let mut s = format!("[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n", a.private);
    for (k, i) in [(b1, 1), (b2, 2)] {
        s += &format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {CLUSTER_B}, {}/32\nEndpoint = {}:{PORT}\n",
            k.public,
            Lab::overlay(i),
            Lab::underlay(i)
        );
    }
    s
}

/// A replica's file: A alone.
fn config_b(own: &KeyPair, a: &KeyPair) -> String {
    format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\nEndpoint = {}:{PORT}\n",
        own.private,
        a.public,
        Lab::overlay(0),
        Lab::underlay(0)
    )
}

fn start_replica(lab: &mut Lab, i: usize, own: &KeyPair, a: &KeyPair) -> anyhow::Result<usize> {
    // A SIGKILLed gateway leaves its UAPI socket file behind.
    let _ = std::fs::remove_file(socket_path(&lab.ifname(i)));
    lab.start_gateway(i, &config_b(own, a), &["--multipath-probe-ms", PROBE_MS, "--address", &format!("{ANYCAST}/32")])
}

/// Packets the replica's TUN device received (decrypted traffic only: probes never reach it).
fn tun_rx_packets(lab: &Lab, i: usize) -> u64 {
    lab.exec(i, &format!("cat /sys/class/net/{}/statistics/rx_packets", lab.ifname(i)))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether A's metrics say peer `key` is live.
fn live_on_a(lab: &Lab, key: &KeyPair) -> bool {
    let text = lab
        .exec(0, &format!("python3 -c \"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())\""))
        .unwrap_or_default();
    text.lines().any(|l| l.starts_with("slice_gateway_peer_live{") && l.contains(&key.public) && l.ends_with(" 1"))
}

/// The sequence numbers answered so far in a ping log.
fn answered(log: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq=")))
        .filter_map(|s| s.parse().ok())
        .collect();
    seqs.sort_unstable();
    seqs
}

/// The longest run of unanswered sequence numbers after `from` (in pings; ×10 ms at 100/s).
fn longest_gap_after(seqs: &[u64], from: u64) -> u64 {
    seqs.windows(2).filter(|w| w[1] > from).map(|w| w[1] - w[0] - 1).max().unwrap_or(0)
}

/// Sends one UDP datagram from each of `n` source ports to the anycast address.
fn udp_flows(lab: &Lab, n: u16) -> anyhow::Result<()> {
    lab.exec(
        0,
        &format!(
            "python3 -c \"
import socket
for p in range(41000, 41000 + {n}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('{src}', p))
    s.sendto(b'x' * 100, ('{ANYCAST}', 9))
    s.close()
\"",
            src = Lab::overlay(0)
        ),
    )?;
    Ok(())
}

#[test]
fn flows_spread_over_replicas_and_a_killed_replica_fails_over() -> anyhow::Result<()> {
    let mut lab = Lab::named("hfo", 3)?;
    let (a, b1, b2) = (keypair()?, keypair()?, keypair()?);
    let keys = [&b1, &b2];
    lab.start_gateway(
        0,
        &config_a(&a, &b1, &b2),
        &["--multipath-probe-ms", PROBE_MS, "--routes", "--metrics", METRICS],
    )?;
    let mut replica = [start_replica(&mut lab, 1, &b1, &a)?, start_replica(&mut lab, 2, &b2, &a)?];
    assert!(lab.pings(0, 1, WAIT) && lab.pings(0, 2, WAIT), "each replica answers on its own address");
    assert!(wait_until(WAIT, || live_on_a(&lab, &b1) && live_on_a(&lab, &b2)), "both replicas live on A");
    let warnings = lab.log(&lab.ifname(0));
    assert!(!warnings.contains("AllowedIPs given to two peers"), "a group is no mistake: {warnings}");

    // 64 UDP flows: both replicas get some (64 flows all on one: 2^-63).
    let before = [tun_rx_packets(&lab, 1), tun_rx_packets(&lab, 2)];
    udp_flows(&lab, 64)?;
    let carried = |lab: &Lab| [tun_rx_packets(lab, 1) - before[0], tun_rx_packets(lab, 2) - before[1]];
    assert!(wait_until(WAIT, || carried(&lab).iter().sum::<u64>() >= 64), "{:?}", carried(&lab));
    let spread = carried(&lab);
    println!("FIGURE multipath udp flows per replica: {} / {} of 64", spread[0], spread[1]);
    assert!(spread[0] > 0 && spread[1] > 0, "both replicas carry flows: {spread:?}");

    // A ping at 100/s; the replica that carries it is killed.
    let pinger = lab.spawn_plain(0, "ping", &["-i", "0.01", "-c", "12000", "-W", "10", ANYCAST], "ping")?;
    assert!(wait_until(WAIT, || answered(&lab.log("ping")).len() >= 100), "{}", lab.log("ping"));
    let rx = [tun_rx_packets(&lab, 1), tun_rx_packets(&lab, 2)];
    assert!(wait_until(WAIT, || answered(&lab.log("ping")).len() >= 200));
    let grew = [tun_rx_packets(&lab, 1) - rx[0], tun_rx_packets(&lab, 2) - rx[1]];
    // One replica carries the flow; on a loaded machine a late probe can make its member look
    // dead for a moment and the flow visit the other, so only "which carried more" is used.
    let first = usize::from(grew[1] > grew[0]);
    println!("FIGURE multipath ping packets through B1 / B2 over 100 pings: {} / {}", grew[0], grew[1]);
    assert!(grew[first] > 0, "the ping crosses a replica: {grew:?}");

    let mut events = Vec::new();
    for (event, victim) in [("kill the replica carrying the ping", first), ("kill the other replica", 1 - first)] {
        let at = answered(&lab.log("ping")).last().copied().unwrap_or(0);
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(lab.pid(replica[victim]), libc::SIGKILL) };
        assert!(
            wait_until(WAIT, || answered(&lab.log("ping")).last().is_some_and(|s| *s > at + 100)),
            "{event}: the ping must go on through the other replica: {}",
            lab.log("ping")
        );
        let gap = longest_gap_after(&answered(&lab.log("ping")), at);
        println!("FIGURE multipath {event}: {gap} pings lost in a row at 100/s (~{} ms)", gap * 10);
        events.push(gap);
        // Back with the same key (its Secret outlives the pod): live again on A.
        replica[victim] = start_replica(&mut lab, victim + 1, keys[victim], &a)?;
        assert!(wait_until(WAIT, || live_on_a(&lab, keys[victim])), "{event}: the restarted replica is live again");
    }
    // The ping flow returns to the replica it hashes to; every flow still arrives somewhere.
    let at = answered(&lab.log("ping")).last().copied().unwrap_or(0);
    assert!(wait_until(WAIT, || answered(&lab.log("ping")).last().is_some_and(|s| *s > at + 100)));
    let before = [tun_rx_packets(&lab, 1), tun_rx_packets(&lab, 2)];
    udp_flows(&lab, 64)?;
    assert!(wait_until(WAIT, || carried_since(&lab, before) >= 64), "all flows arrive after both restarts");
    lab.procs[pinger].terminate();
    Ok(())
}

fn carried_since(lab: &Lab, before: [u64; 2]) -> u64 {
    tun_rx_packets(lab, 1) - before[0] + tun_rx_packets(lab, 2) - before[1]
}

/// A "pod" namespace behind replicas B1 and B2 (a veth to each), replying over a multipath
/// route (L4 hash) as a node's slice router would; removed on drop. The route uses a nexthop
/// group (`ip nexthop`): when a nexthop's device goes away the kernel takes it out of the
/// group and the route stays, whereas a classic multipath route (`nexthop via … nexthop via
/// …`) is deleted whole when one of its devices is unregistered (measured here: the return
/// traffic stopped and iperf3 hung).
struct PodBehind {
    ns: String,
}

impl Drop for PodBehind {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

const POD: &str = "10.78.0.9";

impl PodBehind {
    fn new(lab: &Lab) -> anyhow::Result<Self> {
        let pod = PodBehind { ns: format!("hfa-{}-p", lab.tag) };
        let p = &pod.ns;
        common::sh(&format!("ip netns add {p} && ip -n {p} link set lo up && ip -n {p} addr add {POD}/32 dev lo"))?;
        for i in [1usize, 2] {
            let b = &lab.nodes[i];
            common::sh(&format!(
                "ip -n {p} link add r{i} type veth peer name pod netns {b} && \
                 ip -n {p} addr add 10.78.{i}.2/30 dev r{i} && ip -n {p} link set r{i} up && \
                 ip -n {b} addr add 10.78.{i}.1/30 dev pod && ip -n {b} link set pod up && \
                 ip -n {b} route add {POD}/32 via 10.78.{i}.2 && \
                 ip netns exec {b} sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0"
            ))?;
        }
        common::sh(&format!(
            "ip netns exec {p} sysctl -qw net.ipv4.fib_multipath_hash_policy=1 net.ipv4.conf.all.rp_filter=0 \
             net.ipv4.conf.r1.rp_filter=0 net.ipv4.conf.r2.rp_filter=0 && \
             ip -n {p} nexthop add id 1 via 10.78.1.1 dev r1 && ip -n {p} nexthop add id 2 via 10.78.2.1 dev r2 && \
             ip -n {p} nexthop add id 10 group 1/2 && ip -n {p} route add 10.77.0.0/24 nhid 10"
        ))?;
        Ok(pod)
    }
}

/// The "gateway node lost" with the router's multipath route: TCP connections from A
/// to a pod behind both replicas (16 streams: with a fair hash all 16 on one replica has odds of 2 in 65,536, where 4 streams had 1 in 8) survive the loss of
/// B1's whole node (its gateway SIGKILLed, its namespace deleted, so the pod's route to it
/// goes): A's peer group moves the forward direction, the pod's multipath route the return.
#[test]
fn established_tcp_survives_the_loss_of_one_replicas_node() -> anyhow::Result<()> {
    let mut lab = Lab::named("hfa", 3)?;
    let (a, b1, b2) = (keypair()?, keypair()?, keypair()?);
    lab.start_gateway(
        0,
        &config_a(&a, &b1, &b2),
        &["--multipath-probe-ms", PROBE_MS, "--routes", "--metrics", METRICS],
    )?;
    let r1 = start_replica(&mut lab, 1, &b1, &a)?;
    start_replica(&mut lab, 2, &b2, &a)?;
    let pod = PodBehind::new(&lab)?;
    assert!(wait_until(WAIT, || live_on_a(&lab, &b1) && live_on_a(&lab, &b2)), "both replicas live on A");

    let iperf_server = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pod.ns))
        .args(["iperf3", "-s", "-1", "-B", POD])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    lab.procs.push(common::Proc { child: iperf_server, what: "iperf3-server".into(), socket: None });
    assert!(
        wait_until(WAIT, || common::sh(&format!("ip netns exec {} ss -ltn | grep -q '{POD}:5201'", pod.ns)).is_ok())
    );
    // Bounded: 16 streams at 5 Mbit/s each for 20 s.
    let client = lab.spawn_plain(
        0,
        "iperf3",
        &["-c", POD, "-B", &Lab::overlay(0), "-P", "16", "-b", "5M", "-t", "20", "--connect-timeout", "10000"],
        "iperf3-client",
    )?;
    let before = [tun_rx_packets(&lab, 1), tun_rx_packets(&lab, 2)];
    assert!(
        wait_until(WAIT, || lab.log("iperf3-client").matches("sec").count() >= 12),
        "iperf3 runs: {}",
        lab.log("iperf3-client")
    );
    let carried = [tun_rx_packets(&lab, 1) - before[0], tun_rx_packets(&lab, 2) - before[1]];
    println!("FIGURE multipath tcp: packets through B1 / B2 before the loss: {} / {}", carried[0], carried[1]);
    assert!(carried[0] > 0 && carried[1] > 0, "the 16 streams use both replicas: {carried:?}");

    // B1's node is lost: its gateway SIGKILLed, then its namespace (and the veth to the pod).
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(lab.pid(r1), libc::SIGKILL) };
    assert!(wait_until(WAIT, || !lab.procs[r1].alive()));
    common::sh(&format!("ip netns del {}", lab.nodes[1]))?;
    assert!(wait_until(WAIT, || !lab.procs[client].alive()), "iperf3 ended: {}", lab.log("iperf3-client"));
    let out = lab.log("iperf3-client");
    assert!(lab.procs[client].child.wait()?.success(), "every established connection survived: {out}");
    assert!(out.contains("iperf Done."), "{out}");
    assert!(!live_on_a(&lab, &b1), "A sees B1 dead");
    Ok(())
}

/// The status of B's `GET /healthz` on `METRICS` in node `i`'s namespace (`None`: no answer).
fn health(lab: &Lab, i: usize) -> Option<u16> {
    let script = format!(
        "import urllib.request, urllib.error\ntry:\n    print(urllib.request.urlopen('http://{METRICS}/healthz', \
         timeout=5).status)\nexcept urllib.error.HTTPError as e:\n    print(e.code)\n"
    );
    lab.exec(i, &format!("python3 -c \"{script}\"")).ok()?.trim().parse().ok()
}

/// Rolling restarts (issue 13): a replica stopped with SIGTERM under `--drain-ms` first
/// answers `/healthz` with 503 (for the node agents and the readiness probe) while A still
/// counts it live, then sends nothing more, so A calls it dead while it still runs (and still
/// delivers what A sends), then exits on its own, successfully. Long phases (15 s each) so
/// that a loaded machine sees each one; the states are asserted, never their timing.
#[test]
fn a_stopped_replica_drains_before_it_exits() -> anyhow::Result<()> {
    let mut lab = Lab::named("hfd", 3)?;
    let (a, b1, b2) = (keypair()?, keypair()?, keypair()?);
    lab.start_gateway(0, &config_a(&a, &b1, &b2), &["--multipath-probe-ms", PROBE_MS, "--metrics", METRICS])?;
    let address = format!("{ANYCAST}/32");
    let extra = ["--multipath-probe-ms", PROBE_MS, "--address", &address, "--metrics", METRICS, "--drain-ms", "30000"];
    let b1_proc = lab.start_gateway(1, &config_b(&b1, &a), &extra)?;
    start_replica(&mut lab, 2, &b2, &a)?;
    assert!(wait_until(WAIT, || live_on_a(&lab, &b1) && live_on_a(&lab, &b2)), "both replicas live on A");
    assert_eq!(health(&lab, 1), Some(200));

    // SAFETY: kill(2) on our own child's PID, not reaped yet.
    unsafe { libc::kill(lab.pid(b1_proc), libc::SIGTERM) };
    assert!(wait_until(WAIT, || health(&lab, 1) == Some(503)), "draining: /healthz answers 503");
    assert!(lab.procs[b1_proc].alive(), "the first phase keeps the replica running");
    assert!(wait_until(WAIT, || !live_on_a(&lab, &b1)), "A finds the muted replica silent");
    assert!(lab.procs[b1_proc].alive(), "A calls it dead before it exits");
    // A probe answered late on a busy machine can make a member look dead for a moment: wait.
    assert!(wait_until(WAIT, || live_on_a(&lab, &b2)), "the other replica is live");
    assert!(wait_until(WAIT, || !lab.procs[b1_proc].alive()), "the replica exits at the end of its drain");
    let status = lab.procs[b1_proc].child.try_wait()?.expect("exited");
    assert!(status.success(), "a drained exit is a clean one: {status}");
    Ok(())
}
