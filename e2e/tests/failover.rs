//! Issue 13 in the three-cluster lab (c3 behind NAT), the part that holds with today's one
//! gateway replica per cluster: restarting every node agent, one at a time, never touches the
//! data path. The agent adopts the router it finds (its first pass over an unchanged
//! configuration changes nothing), so across each restart a ping at 100/s between clusters —
//! both ways through the NAT'd cluster too — loses no packet, and one established TCP
//! connection carrying round trips the whole time is never reset. The replica events of the
//! issue (a replica SIGKILLed, a gateway node lost, gateways restarted one by one while another
//! replica carries on) wait for the node agents' routes over several replicas (README).
//! Namespaces `hfl-*`. Needs root and the binaries; fails (does not skip) without them.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use e2e::control::{self, ControlPlane, LabEnv};
use e2e::probe::{EchoServer, Load};
use e2e::{Lab, Pod, PodSpec};

const WAIT: Duration = Duration::from_secs(30);
/// Pings per restart, at 100/s: long enough to cover the agent's stop, start and first pass.
const PINGS: u32 = 800;

fn slice_addr(pod: &Pod) -> Ipv4Addr {
    pod.ipv4("slice0").unwrap_or_else(|e| panic!("{e:#}"))
}

/// `ping`'s summary: (transmitted, received).
fn ping_summary(log: &str) -> Option<(u32, u32)> {
    let line = log.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line.split(',').map(|part| part.split_whitespace().next().and_then(|n| n.parse().ok()));
    Some((numbers.next()??, numbers.next()??))
}

#[test]
fn node_agent_restarts_never_touch_the_data_path() {
    e2e::require_root().expect("root");
    let mut env = LabEnv { cp: ControlPlane::new(), lab: Some(Lab::new("hfl").expect("lab (needs root)")) };
    env.apply(&control::blue_over(&["c1", "c2", "c3"]).expect("manifest")).unwrap_or_else(|e| panic!("{e:#}"));
    let (cp, lab) = (&env.cp, env.lab());
    let run = |cluster: &str, node: &str, name: &str| {
        control::run_pod_retrying(lab.node(cluster, node), &PodSpec::new("shop", name), WAIT).expect("a pod")
    };
    let (a, b, c) = (run("c1", "n2", "a"), run("c2", "n1", "b"), run("c3", "n1", "c"));
    for (from, to) in [(&a, &b), (&c, &a), (&b, &c)] {
        if let Err(e) = control::first_packet(from, slice_addr(to), Instant::now(), WAIT) {
            panic!("{} → {}: {e:#}\n{}", from.lab_name(), to.lab_name(), cp.diagnose(lab));
        }
    }
    let echo = EchoServer::start(&b, 7300);
    let load = Load::start(&a, SocketAddrV4::new(slice_addr(&b), 7300));
    load.wait_for(20, "round trips before the restarts");

    let nodes: Vec<(String, String)> = lab
        .clusters()
        .iter()
        .flat_map(|c| c.nodes().iter().map(|n| (c.name().to_owned(), n.name().to_owned())))
        .collect();
    assert_eq!(nodes.len(), 4, "every node of the three clusters");
    for (cluster, node) in &nodes {
        let count = PINGS.to_string();
        let pings: Vec<_> = [(&a, &b), (&c, &a)]
            .into_iter()
            .map(|(from, to)| {
                let argv = ["ping", "-n", "-q", "-i", "0.01", "-W", "5", "-c", &count, &slice_addr(to).to_string()];
                (from.lab_name(), to.lab_name(), from.spawn(&argv).expect("ping"))
            })
            .collect();
        let n = lab.node(cluster, node);
        let before = n.agent_pid();
        n.restart_agent().unwrap_or_else(|e| panic!("restarting {cluster}/{node}'s agent: {e:#}"));
        assert!(n.agent_running() && n.agent_pid() != before, "{cluster}/{node}: a new agent runs");
        for (from, to, mut ping) in pings {
            let deadline = Instant::now() + Duration::from_secs(120);
            while ping.is_running() {
                assert!(Instant::now() < deadline, "{from} → {to}: ping still running");
                std::thread::sleep(Duration::from_millis(100));
            }
            let log = ping.log_text();
            let (sent, received) = ping_summary(&log).unwrap_or_else(|| panic!("{from} → {to}: no summary: {log}"));
            assert_eq!(
                (sent, received),
                (PINGS, PINGS),
                "{from} → {to} across the restart of {cluster}/{node}'s agent: pings lost\n{log}"
            );
        }
    }
    let done = load.count();
    load.wait_for(done + 20, "round trips after the restarts");
    let (round_trips, error) = load.stop();
    assert!(error.is_none(), "the TCP connection broke: {error:?} after {round_trips} round trips");
    assert_eq!(echo.stop(), 1, "one connection the whole time");
}

#[test]
fn ping_summaries_are_read() {
    let log =
        "--- 10.80.16.3 ping statistics ---\n800 packets transmitted, 798 received, 0.25% packet loss, time 8123ms\n";
    assert_eq!(ping_summary(log), Some((800, 798)));
    assert_eq!(ping_summary("nothing"), None);
}
