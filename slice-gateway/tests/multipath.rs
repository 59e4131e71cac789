//! Root test: peer groups (`--multipath-probe-ms`, issue 13). Gateway A has the two replicas
//! B1 and B2 of one remote "cluster" as peers that share its prefix 10.78.0.0/24; both replicas
//! answer on the same address 10.78.0.1 (as the cluster's pods answer through either). Flows
//! spread over both; killing the replica that carries a ping (SIGKILL) moves the ping to the
//! other; the replica restarted with its key is live again; killing the other replica then
//! leaves the ping on the first. Gaps are printed as FIGURE lines, never asserted.

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
    let first = usize::from(grew[1] > grew[0]);
    assert!(grew[first] >= 90 && grew[1 - first] < 10, "one replica carries the ping flow: {grew:?}");

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
