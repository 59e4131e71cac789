//! Liveness of the gateway replicas (issue 13): the agent asks each replica's `/healthz` (the
//! gateway's metrics port, [`slice_api::gateway::METRICS_PORT`]) — the ones on this node and
//! the ones on peer nodes, over the VXLAN, so that a lost peer node's replica is judged without
//! its agent — from inside the slice's router namespace every [`PROBE_INTERVAL`], each probe
//! given [`PROBE_TIMEOUT`];
//! [`MISSES_TO_DEAD`] misses in a row make the replica dead (its nexthop leaves the groups,
//! [`crate::plan::multipath`]), the next answer makes it live again.
//!
//! [`Liveness`] is the sans-IO part, a state machine fed the time: which probes are due, what
//! each outcome changes. [`probe`] is the I/O (one HTTP request in a namespace), and the daemon
//! ([`crate::daemon`]) runs the two. A replica never probed yet counts as live, but the agent's
//! first pass waits until every replica has an answer or [`MISSES_TO_DEAD`] misses
//! ([`Liveness::settled`]), so that a restarted agent wants what is installed and touches
//! nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use slice_api::node::NodeAgentConfig;

use crate::DeadGateways;

/// How often each replica is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long one probe may take (connect, request, status line).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Misses in a row that make a replica dead.
pub const MISSES_TO_DEAD: u32 = 2;

/// A replica: (slice, its slice address).
pub type Replica = (String, IpAddr);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not answered nor missed enough yet: counts as live.
    Unknown,
    Live,
    Dead,
}

#[derive(Debug, Clone)]
struct ReplicaState {
    verdict: Verdict,
    misses: u32,
    next_probe: Instant,
    in_flight: bool,
}

/// The replicas' probe schedule and verdicts.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    replicas: BTreeMap<Replica, ReplicaState>,
}

/// The replicas to probe under `config`: every gateway of each slice's multi-gateway routes,
/// on this node or a peer.
pub fn targets(config: &NodeAgentConfig) -> BTreeSet<Replica> {
    config
        .slices
        .iter()
        .flat_map(|s| crate::plan::multipath::all_gateways(s).into_iter().map(|gw| (s.name.clone(), gw)))
        .collect()
}

impl Liveness {
    /// No replica.
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows the configuration: new replicas are due at once (unknown until probed), those
    /// that left are forgotten; the others keep their verdict.
    pub fn set_targets(&mut self, targets: &BTreeSet<Replica>, now: Instant) {
        self.replicas.retain(|r, _| targets.contains(r));
        for r in targets {
            self.replicas.entry(r.clone()).or_insert(ReplicaState {
                verdict: Verdict::Unknown,
                misses: 0,
                next_probe: now,
                in_flight: false,
            });
        }
    }

    /// The probes due at `now`; each is in flight until [`Liveness::record`] gets its outcome,
    /// and the replica's next probe is one interval later.
    pub fn due(&mut self, now: Instant) -> Vec<Replica> {
        let mut out = Vec::new();
        for (r, state) in &mut self.replicas {
            if !state.in_flight && state.next_probe <= now {
                state.in_flight = true;
                state.next_probe = now + PROBE_INTERVAL;
                out.push(r.clone());
            }
        }
        out
    }

    /// When the next probe is due (`None`: nothing to probe, or all in flight).
    pub fn next_due(&self) -> Option<Instant> {
        self.replicas.values().filter(|s| !s.in_flight).map(|s| s.next_probe).min()
    }

    /// Takes a probe's outcome in. True when the set of dead replicas changed (the routes must
    /// follow).
    pub fn record(&mut self, replica: &Replica, answered: bool) -> bool {
        let Some(state) = self.replicas.get_mut(replica) else { return false };
        state.in_flight = false;
        let was_dead = state.verdict == Verdict::Dead;
        if answered {
            state.misses = 0;
            state.verdict = Verdict::Live;
        } else {
            state.misses = state.misses.saturating_add(1);
            if state.misses >= MISSES_TO_DEAD {
                state.verdict = Verdict::Dead;
            }
        }
        was_dead != (state.verdict == Verdict::Dead)
    }

    /// True when every replica has a verdict (an answer, or enough misses).
    pub fn settled(&self) -> bool {
        self.replicas.values().all(|s| s.verdict != Verdict::Unknown)
    }

    /// The dead replicas, by slice.
    pub fn dead(&self) -> DeadGateways {
        let mut out = DeadGateways::new();
        for ((slice, gw), state) in &self.replicas {
            if state.verdict == Verdict::Dead {
                out.entry(slice.clone()).or_default().insert(*gw);
            }
        }
        out
    }
}

/// Asks `GET /healthz` of the gateway at `gateway` on the metrics port, from inside the
/// namespace at `netns` (the slice's router, which routes to its pods): true when it answers
/// `200` within `timeout`. Blocking (a thread inside the namespace); a namespace that cannot be
/// entered is a miss.
pub fn probe(netns: &Path, gateway: IpAddr, timeout: Duration) -> bool {
    let Ok(ns) = dataplane::Netns::open(netns) else { return false };
    let addr = SocketAddr::new(gateway, slice_api::gateway::METRICS_PORT);
    ns.run(move || ask_health(addr, timeout)).unwrap_or(false)
}

fn ask_health(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else { return false };
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let _ = stream.set_write_timeout(Some(left()));
    let request =
        format!("GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n", slice_api::gateway::HEALTH_PATH);
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // The status line: "HTTP/1.1 200 …".
    let mut head = Vec::with_capacity(32);
    let mut byte = [0u8; 64];
    while head.len() < 12 {
        if Instant::now() >= deadline || stream.set_read_timeout(Some(left())).is_err() {
            return false;
        }
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&byte[..n]),
        }
    }
    head.starts_with(b"HTTP/1.") && head.get(9..12) == Some(b"200")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(slice: &str, gw: &str) -> Replica {
        (slice.to_owned(), gw.parse().unwrap())
    }

    #[test]
    fn two_misses_make_a_replica_dead_and_one_answer_live_again() {
        let t0 = Instant::now();
        let a = replica("blue", "10.80.0.5");
        let b = replica("blue", "10.80.0.6");
        let mut live = Liveness::new();
        live.set_targets(&BTreeSet::from([a.clone(), b.clone()]), t0);
        assert!(!live.settled(), "never probed");
        assert!(live.dead().is_empty(), "unknown counts as live");
        assert_eq!(live.due(t0), [a.clone(), b.clone()]);
        // In flight: not due again until answered, whatever the time.
        assert!(live.due(t0 + PROBE_INTERVAL * 3).is_empty());
        assert_eq!(live.next_due(), None);
        assert!(!live.record(&a, true));
        assert!(!live.record(&b, false), "one miss is not death");
        assert!(!live.settled(), "b has no verdict yet");
        assert_eq!(live.next_due(), Some(t0 + PROBE_INTERVAL));
        assert!(live.due(t0 + PROBE_INTERVAL - Duration::from_millis(1)).is_empty());

        let t1 = t0 + PROBE_INTERVAL;
        assert_eq!(live.due(t1), [a.clone(), b.clone()]);
        assert!(!live.record(&a, true));
        assert!(live.record(&b, false), "the second miss kills");
        assert!(live.settled());
        assert_eq!(live.dead(), DeadGateways::from([("blue".to_owned(), BTreeSet::from([b.1]))]));

        // Still dead: no change; then one answer brings it back.
        let t2 = t1 + PROBE_INTERVAL;
        assert_eq!(live.due(t2), [a.clone(), b.clone()]);
        assert!(!live.record(&b, false));
        assert!(!live.record(&a, true));
        assert_eq!(live.due(t2 + PROBE_INTERVAL), [a.clone(), b.clone()]);
        assert!(live.record(&b, true));
        assert!(live.dead().is_empty());

        // A miss between answers is forgiven by the next answer.
        let t3 = t2 + PROBE_INTERVAL * 2;
        live.due(t3);
        assert!(!live.record(&a, false));
        live.due(t3 + PROBE_INTERVAL);
        assert!(!live.record(&a, true));
        live.due(t3 + PROBE_INTERVAL * 2);
        assert!(!live.record(&a, false), "misses count in a row only");
    }

    #[test]
    fn targets_follow_the_configuration() {
        let t0 = Instant::now();
        let a = replica("blue", "10.80.0.5");
        let b = replica("blue", "10.80.0.6");
        let mut live = Liveness::new();
        live.set_targets(&BTreeSet::from([a.clone(), b.clone()]), t0);
        live.due(t0);
        live.record(&b, false);
        live.due(t0 + PROBE_INTERVAL);
        live.record(&b, false);
        assert!(!live.dead().is_empty());
        // b leaves the configuration: forgotten (and its outcome ignored); c is new and due.
        let c = replica("blue", "10.80.0.7");
        live.set_targets(&BTreeSet::from([a.clone(), c.clone()]), t0 + PROBE_INTERVAL * 2);
        assert!(live.dead().is_empty());
        assert!(!live.record(&b, true));
        assert_eq!(live.due(t0 + PROBE_INTERVAL * 2), [c]);
    }

    #[test]
    fn the_targets_are_every_replica_of_multi_gateway_routes() {
        let config: NodeAgentConfig = serde_json::from_value(serde_json::json!({
            "node": "n1", "underlayAddress": "198.18.250.1",
            "slices": [{
                "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.0.0/26",
                "peers": [{"name": "n2", "underlayAddress": "198.18.250.2", "nodePrefix": "10.80.0.64/26"}],
                "remoteRoutes": [
                    {"prefix": "10.80.16.0/20", "via": "10.80.0.5", "alsoVia": ["10.80.0.70", "10.80.0.6"]},
                    {"prefix": "10.80.32.0/20", "via": "10.80.0.9"}
                ]
            }]
        }))
        .unwrap();
        config.validate().unwrap();
        // The one on peer n2 (.70) too; the single-gateway route's (.9) has nothing to choose.
        assert_eq!(
            targets(&config),
            BTreeSet::from([replica("blue", "10.80.0.5"), replica("blue", "10.80.0.6"), replica("blue", "10.80.0.70")])
        );
    }

    /// The probe's HTTP: a 200 is an answer, anything else (another status, a refusal, silence
    /// past the timeout) a miss. Against listeners of this test on loopback.
    #[test]
    fn a_probe_wants_a_200_in_time() {
        use std::net::TcpListener;
        let serve = |reply: &'static [u8]| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || {
                if let Ok((mut s, _)) = listener.accept() {
                    let _ = s.read(&mut [0u8; 256]);
                    let _ = s.write_all(reply);
                    // Hold the connection until the client gives up.
                    let _ = s.read(&mut [0u8; 1]);
                }
            });
            addr
        };
        let long = Duration::from_secs(10);
        assert!(ask_health(serve(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), long));
        assert!(!ask_health(serve(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"), long));
        // Accepts, never answers: a miss once the timeout is up.
        assert!(!ask_health(serve(b""), Duration::from_millis(100)));
        // Nobody listening.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(!ask_health(closed, long));
    }
}
