//! Issue 13's failover events with two gateway replicas per cluster, in the three-cluster lab
//! (c1, c2 and c3 behind NAT, two nodes each, every cluster running replicas 0 and 1 on
//! different nodes; namespaces `hrf-*`). While pods ping each other at 100/s across clusters
//! (c1 → c2, and c3 → c1 through the NAT) and hold TCP connections carrying round trips, the
//! test
//! - runs iperf3 (16 streams) from c1 to c2 and counts the bytes on each replica of both
//!   clusters: both replicas of each carry traffic;
//! - SIGKILLs each replica of c2 and of c3 in turn under iperf3, each after the one before came
//!   back (the lab restarts it, as a kubelet restarts a container);
//! - loses a gateway node of c2 (its node agent and its replica SIGKILLed, its router left as
//!   it was);
//! - restarts every node agent, one at a time: no ping is lost;
//! - restarts every gateway replica, one at a time (SIGTERM, then started again).
//!
//! After every event the paths work again and iperf3 finished without an error; at the end no
//! established TCP connection was reset. Each event's longest ping gap is printed (the figure;
//! `make bench`'s failover section measures the gaps in numbers), never asserted: a busy machine
//! stretches them. Needs root and the binaries; fails (does not skip) without them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use e2e::control::{self, ControlPlane, LabEnv};
use e2e::probe::{EchoServer, Load, ping_outcome};
use e2e::{Lab, Pod, PodProcess, PodSpec};

const PREFIX: &str = "hrf";
const WAIT: Duration = Duration::from_secs(30);
/// Pings per event at 100/s (8 s): the event happens [`EVENT_AFTER`] into them.
const PINGS: u32 = 800;
const EVENT_AFTER: Duration = Duration::from_secs(2);
/// How long a replica gets to come back (start, handshakes, the peers' probes).
const BACK: Duration = Duration::from_secs(90);
/// TCP connections held open c1 → c2 (spread over the replicas by their ports).
const CONNECTIONS: usize = 8;
/// Each connection's pause between round trips: they must survive, not load the machine (the
/// iperf3 runs load it, bounded).
const PAUSE: Duration = Duration::from_millis(20);
/// iperf3 during an event: streams × rate, seconds.
const IPERF_STREAMS: &str = "16";
const IPERF_RATE: &str = "4M";
const IPERF_SECONDS: &str = "10";

fn slice_addr(pod: &Pod) -> Ipv4Addr {
    pod.ipv4("slice0").unwrap_or_else(|e| panic!("{e:#}"))
}

/// One pair's pings of an event: (pair, answered, longest run without an answer).
type PingOutcome = (String, u32, u32);

/// Pings at 100/s between pods, one `ping` per pair.
struct Pings(Vec<(String, PodProcess)>);

impl Pings {
    fn start(pairs: &[(&Pod, &Pod)]) -> Self {
        let count = PINGS.to_string();
        Self(
            pairs
                .iter()
                .map(|(from, to)| {
                    let to_addr = slice_addr(to).to_string();
                    let argv = ["ping", "-n", "-D", "-i", "0.01", "-W", "5", "-c", &count, &to_addr];
                    (format!("{} → {}", from.lab_name(), to.lab_name()), from.spawn(&argv).expect("ping"))
                })
                .collect(),
        )
    }

    /// Waits for every ping to end: (pair, answered, longest gap in pings).
    fn finish(self) -> Vec<PingOutcome> {
        self.finish_with_logs().into_iter().map(|(outcome, _)| outcome).collect()
    }

    /// [`Pings::finish`], each outcome with ping's output (timestamped replies).
    fn finish_with_logs(self) -> Vec<(PingOutcome, String)> {
        self.0
            .into_iter()
            .map(|(pair, mut ping)| {
                let deadline = Instant::now() + Duration::from_secs(120);
                while ping.is_running() {
                    assert!(Instant::now() < deadline, "{pair}: ping still running");
                    std::thread::sleep(Duration::from_millis(100));
                }
                let log = ping.log_text();
                let (answered, gap) = ping_outcome(&log, PINGS);
                ((pair, answered, gap), log)
            })
            .collect()
    }
}

/// An iperf3 run from `client` to `server` over the slice (a server of its own, one run).
struct Iperf {
    server: PodProcess,
    client: PodProcess,
}

impl Iperf {
    fn start(client: &Pod, server: &Pod, port: u16) -> Self {
        let port = port.to_string();
        let srv = server.spawn(&["iperf3", "-s", "-1", "-p", &port]).expect("iperf3 server");
        let deadline = Instant::now() + WAIT;
        while !server.exec_ok(&["ss", "-Hltn", &format!("sport = :{port}")]).is_ok_and(|o| !o.trim().is_empty()) {
            assert!(Instant::now() < deadline, "the iperf3 server never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let to = slice_addr(server).to_string();
        let argv = [
            "iperf3",
            "-c",
            &to,
            "-p",
            &port,
            "-P",
            IPERF_STREAMS,
            "-b",
            IPERF_RATE,
            "-t",
            IPERF_SECONDS,
            "--connect-timeout",
            "5000",
        ];
        Self { server: srv, client: client.spawn(&argv).expect("iperf3 client") }
    }

    /// Waits for the client: its log when it succeeded, the log as the error otherwise.
    fn finish(mut self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.client.is_running() {
            if Instant::now() > deadline {
                return Err(format!("iperf3 still running after 120 s:\n{}", self.client.log_text()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = self.client.try_wait().ok().flatten();
        let log = self.client.log_text();
        let _ = self.server.stop();
        match status {
            Some(s) if s.success() => Ok(log),
            other => Err(format!("iperf3 ended with {other:?}:\n{log}")),
        }
    }
}

/// Bytes (received + sent) of every peer of replica `ordinal` of `cluster`.
fn replica_bytes(cp: &ControlPlane, cluster: &str, ordinal: u32) -> u64 {
    let text = cp.replica_wg("blue", cluster, ordinal, &["show", "{if}", "transfer"]).unwrap_or_default();
    text.lines().flat_map(|l| l.split_whitespace().skip(1).filter_map(|n| n.parse::<u64>().ok())).sum()
}

/// The public key replica `ordinal` of `cluster` runs with.
fn replica_key(cp: &ControlPlane, cluster: &str, ordinal: u32) -> String {
    cp.replica_wg("blue", cluster, ordinal, &["show", "{if}", "public-key"]).expect("wg").trim().to_owned()
}

fn wait_back(cp: &mut ControlPlane, lab: &Lab, cluster: &str, ordinal: u32) {
    cp.wait_replica_back(lab, "blue", cluster, ordinal, BACK).unwrap_or_else(|e| panic!("{e:#}"));
}

/// A UNIX time as UTC `HH:MM:SS.mmm`, the agents' log clock.
fn utc(unix: f64) -> String {
    let ms = (unix * 1000.0) as u64 % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// Where a ping run (`ping -D`) lost its pings: each run of missing sequence numbers with the
/// time of the answers around it.
fn lost_runs(log: &str) -> String {
    let answers: std::collections::BTreeMap<u32, f64> = log
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let time = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq=")?.parse().ok())?;
            Some((seq, time))
        })
        .collect();
    let mut out = Vec::new();
    let mut seq = 1;
    while seq <= PINGS {
        if answers.contains_key(&seq) {
            seq += 1;
            continue;
        }
        let first = seq;
        while seq <= PINGS && !answers.contains_key(&seq) {
            seq += 1;
        }
        let around = |s: Option<(&u32, &f64)>| s.map_or_else(|| "-".to_owned(), |(_, t)| utc(*t));
        out.push(format!(
            "icmp_seq {first}..{} lost between {} and {}",
            seq - 1,
            around(answers.range(..first).next_back()),
            around(answers.range(seq..).next())
        ));
    }
    out.join("\n")
}

/// Every agent's changes of a replica's liveness and its routing actions, the last of each.
fn agents_story(lab: &Lab) -> String {
    let mut out = Vec::new();
    for cluster in CLUSTERS {
        for node in ["n1", "n2"] {
            let text = std::fs::read_to_string(lab.node(cluster, node).agent_log()).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains("liveness") || l.contains("nexthop") || l.contains("starting"))
                .map(strip_ansi)
                .collect();
            out.push(format!("{cluster}/{node}:\n{}", lines[lines.len().saturating_sub(12)..].join("\n")));
        }
    }
    out.join("\n")
}

/// A log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last 40 lines of a log file.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The node of `cluster` that runs replica `ordinal`.
fn replica_node(cp: &ControlPlane, cluster: &str, ordinal: u32) -> String {
    let replicas = cp.gateway_replicas("blue", cluster);
    replicas.iter().find(|r| r.0 == ordinal).map(|r| r.1.clone()).unwrap_or_else(|| panic!("{cluster}: {replicas:?}"))
}

const CLUSTERS: [&str; 3] = ["c1", "c2", "c3"];

#[test]
fn a_slice_with_two_replicas_rides_through_replica_node_agent_and_gateway_failures() {
    e2e::require_root().expect("root");
    let mut env = LabEnv { cp: ControlPlane::new(), lab: Some(Lab::new(PREFIX).expect("lab (needs root)")) };
    let members = [("c1", 2, false), ("c2", 2, false), ("c3", 2, true)];
    let mut manifest = control::across_manifest("blue", "10.80.0.0/16", &["shop"], &members).expect("manifest");
    manifest.slices[0].spec.gateway.replicas = 2;
    env.apply(&manifest).unwrap_or_else(|e| panic!("{e:#}"));
    let LabEnv { cp, lab } = &mut env;
    let lab = lab.as_ref().expect("the lab");
    for cluster in CLUSTERS {
        let running = cp.gateway_replicas("blue", cluster);
        assert_eq!(running.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1], "{cluster}: {running:?}");
        assert_ne!(running[0].1, running[1].1, "{cluster}: the replicas share a node");
    }
    let run = |cluster: &str, name: &str| {
        control::run_pod_retrying(lab.node(cluster, "n1"), &PodSpec::new("shop", name), WAIT).expect("a pod")
    };
    let (a, b, c) = (run("c1", "a"), run("c2", "b"), run("c3", "c"));
    for (from, to) in [(&a, &b), (&c, &a), (&b, &c)] {
        if let Err(e) = control::first_packet(from, slice_addr(to), Instant::now(), WAIT) {
            panic!("{} → {}: {e:#}\n{}", from.lab_name(), to.lab_name(), cp.diagnose(lab));
        }
    }
    for cluster in CLUSTERS {
        for ordinal in [0, 1] {
            wait_back(cp, lab, cluster, ordinal);
        }
    }
    let echo_b = EchoServer::start(&b, 7300);
    let echo_a = EchoServer::start(&a, 7301);
    let mut loads: Vec<Load> =
        (0..CONNECTIONS).map(|_| Load::every(&a, SocketAddrV4::new(slice_addr(&b), 7300), PAUSE)).collect();
    loads.extend((0..CONNECTIONS / 2).map(|_| Load::every(&c, SocketAddrV4::new(slice_addr(&a), 7301), PAUSE)));
    for load in &loads {
        load.wait_for(10, "round trips before the events");
    }

    // Both replicas of c1 (sending) and of c2 (receiving) carry iperf3's streams.
    let before: Vec<u64> = ["c1", "c2"].iter().flat_map(|c| [0, 1].map(|o| replica_bytes(cp, c, o))).collect();
    Iperf::start(&a, &b, 5201).finish().unwrap_or_else(|e| panic!("iperf3 with every replica up: {e}"));
    let after: Vec<u64> = ["c1", "c2"].iter().flat_map(|c| [0, 1].map(|o| replica_bytes(cp, c, o))).collect();
    for (i, (b0, a0)) in before.iter().zip(&after).enumerate() {
        let (cluster, ordinal) = (["c1", "c2"][i / 2], i % 2);
        assert!(a0 - b0 > 1_000_000, "{cluster} replica {ordinal} carried {} bytes of the iperf3 run", a0 - b0);
    }

    let mut figures: Vec<(String, Vec<PingOutcome>)> = Vec::new();
    let mut port = 5202;

    // A replica SIGKILLed, then the other once the first came back; in c2 and in the NAT'd c3.
    for (cluster, ordinal) in [("c2", 0), ("c2", 1), ("c3", 0), ("c3", 1)] {
        let key = replica_key(cp, cluster, ordinal);
        let pings = Pings::start(&[(&a, &b), (&c, &a)]);
        let iperf = Iperf::start(&a, &b, port);
        port += 1;
        std::thread::sleep(EVENT_AFTER);
        cp.kill_replica("blue", cluster, ordinal).unwrap_or_else(|e| panic!("{e:#}"));
        let outcome = pings.finish();
        iperf.finish().unwrap_or_else(|e| panic!("iperf3 across the kill of {cluster} replica {ordinal}: {e}"));
        wait_back(cp, lab, cluster, ordinal);
        assert_eq!(replica_key(cp, cluster, ordinal), key, "a restarted replica keeps its key");
        figures.push((format!("SIGKILL {cluster} replica {ordinal}"), outcome));
    }

    // A gateway node of c2 lost: its agent and its replica killed, its router left as it was.
    {
        let node = replica_node(cp, "c2", 1);
        assert_ne!(node, "n1", "b's node runs replica 0");
        let n = lab.node("c2", &node);
        let pings = Pings::start(&[(&a, &b), (&c, &a)]);
        let iperf = Iperf::start(&a, &b, port);
        std::thread::sleep(EVENT_AFTER);
        n.kill_agent().unwrap_or_else(|e| panic!("{e:#}"));
        cp.kill_replica("blue", "c2", 1).unwrap_or_else(|e| panic!("{e:#}"));
        let outcome = pings.finish();
        iperf.finish().unwrap_or_else(|e| panic!("iperf3 across the loss of c2/{node}: {e}"));
        n.restart_agent().unwrap_or_else(|e| panic!("{e:#}"));
        wait_back(cp, lab, "c2", 1);
        figures.push((format!("c2/{node} lost (agent + replica 1)"), outcome));
    }

    // Every node agent restarted, one at a time: not one ping lost.
    for cluster in CLUSTERS {
        for node in ["n1", "n2"] {
            let pings = Pings::start(&[(&a, &b), (&c, &a)]);
            std::thread::sleep(EVENT_AFTER);
            let n = lab.node(cluster, node);
            let before = n.agent_pid();
            let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
            n.restart_agent().unwrap_or_else(|e| panic!("restarting {cluster}/{node}'s agent: {e:#}"));
            assert!(n.agent_running() && n.agent_pid() != before, "{cluster}/{node}: a new agent runs");
            let outcome = pings.finish_with_logs();
            for ((pair, answered, gap), log) in &outcome {
                assert_eq!(
                    *answered,
                    PINGS,
                    "{pair} across the restart of {cluster}/{node}'s agent at {}: pings lost (longest run {gap})\n\
                     {}\n{}\n{}",
                    utc(at),
                    lost_runs(log),
                    agents_story(lab),
                    log_tail(&n.agent_log())
                );
            }
            figures.push((format!("restart agent {cluster}/{node}"), outcome.into_iter().map(|(o, _)| o).collect()));
        }
    }

    // Every gateway replica restarted, one at a time (SIGTERM, started again).
    for cluster in CLUSTERS {
        for ordinal in [0, 1] {
            let pings = Pings::start(&[(&a, &b), (&c, &a)]);
            std::thread::sleep(EVENT_AFTER);
            cp.stop_replica("blue", cluster, ordinal).unwrap_or_else(|e| panic!("{e:#}"));
            cp.tick(lab).expect("a round: the replica starts again");
            let outcome = pings.finish();
            wait_back(cp, lab, cluster, ordinal);
            figures.push((format!("restart {cluster} replica {ordinal}"), outcome));
        }
    }

    eprintln!("event | pair | answered of {PINGS} | longest gap (ms)");
    for (event, outcome) in &figures {
        for (pair, answered, gap) in outcome {
            eprintln!("{event} | {pair} | {answered} | {}", gap * 10);
        }
    }
    // Every path works after the events, and no established connection was reset.
    for (from, to) in [(&a, &b), (&c, &a), (&b, &c)] {
        if let Err(e) = control::first_packet(from, slice_addr(to), Instant::now(), WAIT) {
            panic!("{} → {} after the events: {e:#}\n{}", from.lab_name(), to.lab_name(), cp.diagnose(lab));
        }
    }
    let counts: Vec<usize> = loads.iter().map(Load::count).collect();
    for (load, done) in loads.iter().zip(&counts) {
        load.wait_for(done + 10, "round trips after the events");
    }
    for (i, load) in loads.into_iter().enumerate() {
        let (round_trips, error) = load.stop();
        assert!(error.is_none(), "TCP connection {i} broke: {error:?} after {round_trips} round trips");
    }
    assert_eq!(echo_b.stop(), CONNECTIONS, "c1 → c2: the same connections the whole time");
    assert_eq!(echo_a.stop(), CONNECTIONS / 2, "c3 → c1: the same connections the whole time");
}
