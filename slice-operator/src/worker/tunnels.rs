//! Tunnel state towards each peer cluster, pure: from the text a slice's gateway serves on
//! `/metrics` (see `slice_gateway::metrics::render`) to the WorkerSlice's `status.peers`, and the
//! rule that keeps time alone from rewriting that status.
//!
//! The state comes from one family of the gateway's metrics:
//! `slice_gateway_peer_last_handshake_seconds{interface, public_key}`, the Unix time of the
//! peer's last completed handshake (0 when there was none). The per-peer figures (`health`:
//! bytes and packets each way, the last initiated handshake's round trip, the estimated loss)
//! come from the other per-peer families of `slice_api::gateway::metric`; they never change the
//! state. Neither do the path facts: the tunnel's MTU and the largest packet the path carries
//! (`tunnelMtu`, `pathMtu`, from the gateway's path probes), and, while the tunnel is not up,
//! whether this side's handshake initiations have gone unanswered for
//! [`UNANSWERED_AFTER_SECS`] (`handshakeUnanswered`) and whether the peer's arrived within
//! [`INITIATION_RECENT_SECS`] (`peerInitiating`): what `slicectl diagnose` reads on the hub to
//! tell a blocked port from a wrong key or a narrow path. A peer's state follows, in order:
//!
//! | state | reason | when |
//! | --- | --- | --- |
//! | `Pending` | `peer has not published a key` | the spec has no public key for the peer |
//! | `Pending` | `gateway not running: <error>` | the gateway's metrics could not be read |
//! | `Down` | [`WRONG_KEY`]`: <keys>` | the metrics do not list the key but list keys no peer of the spec has |
//! | `Pending` | `gateway has not loaded the peer's key yet` | the metrics do not list the key (the pod still runs an older configuration) |
//! | `Down` | `no handshake yet` | the handshake time is 0 |
//! | `Down` | `no handshake for N s` | the last handshake is more than [`HANDSHAKE_STALE_AFTER_SECS`] old |
//! | `Down` | [`SILENT`] | the gateway probes its peers (`--multipath-probe-ms`) and this one sent nothing for three probe intervals |
//! | `Up` | (none) | otherwise |
//!
//! The probe rule is what makes a cut link show within seconds: the handshake rule alone waits
//! for WireGuard to give up on the session (180 s). The probes are keepalives each way, so it
//! needs the peer's gateway to probe too (every gateway the worker runs does).
//!
//! `lastHandshake` (RFC 3339, to the second) is set whenever there was a handshake.
//!
//! **Per replica (issue 13).** With several gateway replicas, each replica's own metrics say
//! which peer clusters it reaches ([`replica_reach`]): a cluster whose replicas are several
//! WireGuard peers sharing its prefix (a peer group) is reached when any of them is
//! [`peer_live`] for this replica. The worker puts the count and the clusters not reached in
//! `status.gatewayReplicas[]` (`liveTunnels`, `unreachable`, and the reason
//! [`NO_LIVE_TUNNEL`]` c3` of an `Up` replica).
//!
//! **Churn.** A handshake time advances at every rekey (every 120 s while traffic flows), the
//! age in a `no handshake for N s` reason and the traffic counters at every pass, so a status
//! would be rewritten on the hub at every pass for nothing but the clock and the traffic. [`only_times_changed`] recognises such a change;
//! the worker writes it only when it has not written that WorkerSlice's status in the last
//! [`TIME_ONLY_WRITE_INTERVAL_SECS`] (see `decide::decide_status`). Any other change (a state, a
//! reason, a count, a condition) is written at once.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use slice_api::crd::{PeerTunnelStatus, TunnelHealth, WorkerPeer, WorkerSliceStatus};

/// The metric family that carries each peer's last handshake.
pub use slice_api::gateway::metric::PEER_LAST_HANDSHAKE_SECONDS as LAST_HANDSHAKE_METRIC;
use slice_api::gateway::metric::{self, LABEL_PUBLIC_KEY};

/// How old a handshake may be while the tunnel counts as up: WireGuard starts a new handshake
/// 120 s after the last one while traffic flows (`REKEY_AFTER_TIME`) and gives up on a session
/// after 180 s (`REJECT_AFTER_TIME`), so a tunnel in use never shows an older one. An idle
/// tunnel without persistent keepalive also shows an older one: it is reported `Down` too,
/// because nothing shows that it would still carry traffic.
pub const HANDSHAKE_STALE_AFTER_SECS: i64 = 180;

/// The shortest time between two status writes of one WorkerSlice when the later one changes
/// nothing but handshake times and tunnel figures (see [`only_times_changed`]).
pub const TIME_ONLY_WRITE_INTERVAL_SECS: i64 = 60;

/// Reason of a peer without a public key.
pub const NO_KEY: &str = "peer has not published a key";
/// Prefix of the reason when the gateway's metrics cannot be read (the error follows).
pub const GATEWAY_NOT_RUNNING: &str = "gateway not running";
/// Reason of a peer whose key the gateway does not list.
pub const NOT_LOADED: &str = "gateway has not loaded the peer's key yet";
/// Prefix of the reason of a peer whose key the gateway does not hold while it holds keys the
/// spec does not name: it runs another configuration than the worker's (a hand edit over UAPI,
/// or a key rotation it has not loaded yet). The keys it holds instead follow.
pub const WRONG_KEY: &str = slice_api::diagnose::WRONG_KEY_REASON;
/// Reason of a peer that never completed a handshake.
pub const NO_HANDSHAKE_YET: &str = "no handshake yet";
/// Reason of a peer that the gateway probes and that has sent nothing (not even a keepalive)
/// for three probe intervals: the link is cut, UDP is blocked, or the peer's gateway is gone.
pub const SILENT: &str = "peer silent: no packet for three probe intervals";
/// Prefix of an `Up` gateway replica's reason when some peer cluster has no live peer for it
/// (the clusters follow, comma-separated): `no live tunnel to c3`.
pub const NO_LIVE_TUNNEL: &str = "no live tunnel to";
/// Prefix of an `Up` gateway replica's reason when its metrics cannot be read (the error
/// follows).
pub const REPLICA_METRICS_UNREAD: &str = "metrics not read";
/// Prefix of the reason of a peer whose last handshake is too old: `no handshake for N s`.
const STALE_PREFIX: &str = "no handshake for ";

/// How long a handshake initiation may wait for its answer before `handshakeUnanswered`:
/// WireGuard retries every 5 s, so this much means at least one retry went unanswered too.
pub const UNANSWERED_AFTER_SECS: u64 = 5;
/// How recent the peer's last handshake initiation must be for `peerInitiating` (a peer whose
/// handshakes fail retries every 5 s).
pub const INITIATION_RECENT_SECS: i64 = 15;

/// The state of a tunnel, as `status.peers[].state` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelState {
    Up,
    Down,
    Pending,
}

impl fmt::Display for TunnelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "Up",
            Self::Down => "Down",
            Self::Pending => "Pending",
        })
    }
}

/// Why a gateway's metrics text cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// A sample line of the handshake family does not parse.
    #[error("line {line}: {problem}: {text:?}")]
    BadLine { line: usize, problem: &'static str, text: String },
    /// The text has no handshake family at all: not a slice-gateway (or a different version).
    #[error("no {LAST_HANDSHAKE_METRIC} in the metrics (is this a slice-gateway?)")]
    NotGateway,
}

/// What the gateway's metrics say of one peer: its last handshake (`None`: it never completed
/// one), whether it spoke within three probe intervals (`None`: the gateway does not probe) and
/// the tunnel's figures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerReading {
    pub last_handshake: Option<Timestamp>,
    pub live: Option<bool>,
    pub health: TunnelHealth,
    /// The gateway's TUN MTU (a device-wide family, copied to every peer).
    pub tunnel_mtu: Option<u32>,
    /// The largest inner packet the path carried in the gateway's last probe round that says.
    pub path_mtu: Option<u32>,
    /// How long (ms) a handshake initiation to the peer has waited for an answer, if one does.
    pub unanswered_millis: Option<u64>,
    /// The last handshake initiation received from the peer.
    pub last_initiation_received: Option<Timestamp>,
}

/// Every peer the gateway knows (those its handshake family lists), by public key (base64).
pub type PeerReadings = BTreeMap<String, PeerReading>;

/// The per-peer families read besides the handshake family.
#[derive(Debug, Clone, Copy)]
enum Figure {
    RxBytes,
    TxBytes,
    RxPackets,
    TxPackets,
    RttSeconds,
    LossRatio,
    Live,
    RxBitsPerSecond,
    TxBitsPerSecond,
    PathMtu,
    UnansweredSeconds,
    LastInitiationReceived,
}

const FIGURES: [(&str, Figure); 12] = [
    (metric::PEER_RX_BYTES, Figure::RxBytes),
    (metric::PEER_TX_BYTES, Figure::TxBytes),
    (metric::PEER_RX_PACKETS, Figure::RxPackets),
    (metric::PEER_TX_PACKETS, Figure::TxPackets),
    (metric::PEER_HANDSHAKE_RTT_SECONDS, Figure::RttSeconds),
    (metric::PEER_RX_LOSS_RATIO, Figure::LossRatio),
    (metric::PEER_LIVE, Figure::Live),
    (metric::PEER_RX_BITS_PER_SECOND, Figure::RxBitsPerSecond),
    (metric::PEER_TX_BITS_PER_SECOND, Figure::TxBitsPerSecond),
    (metric::PEER_PATH_MTU_BYTES, Figure::PathMtu),
    (metric::PEER_HANDSHAKE_UNANSWERED_SECONDS, Figure::UnansweredSeconds),
    (metric::PEER_LAST_INITIATION_RECEIVED_SECONDS, Figure::LastInitiationReceived),
];

impl Figure {
    /// Sets this figure of `r` from a sample value (finite, not negative).
    fn set(self, r: &mut PeerReading, value: f64) {
        // `as` saturates, and the values are checked finite and not negative.
        let count = value.round() as u64;
        let h = &mut r.health;
        match self {
            Self::RxBytes => h.rx_bytes = count,
            Self::TxBytes => h.tx_bytes = count,
            Self::RxPackets => h.rx_packets = count,
            Self::TxPackets => h.tx_packets = count,
            Self::RttSeconds => h.rtt_millis = Some((value * 1000.0).round() as u32),
            Self::LossRatio => h.rx_loss_permille = (value.min(1.0) * 1000.0).round() as u32,
            Self::Live => r.live = Some(count > 0),
            Self::RxBitsPerSecond => h.rx_bits_per_second = Some(count),
            Self::TxBitsPerSecond => h.tx_bits_per_second = Some(count),
            Self::PathMtu => r.path_mtu = u32::try_from(count).ok(),
            Self::UnansweredSeconds => r.unanswered_millis = Some((value * 1000.0).round() as u64),
            Self::LastInitiationReceived => {
                r.last_initiation_received = (count > 0).then(|| Timestamp::from_second(count as i64).ok()).flatten();
            }
        }
    }
}

/// The family a sample line belongs to, if it is one of `names`, and the rest of the line.
fn family_of<'a, T: Copy>(line: &'a str, names: &[(&str, T)]) -> Option<(T, &'a str)> {
    names.iter().find_map(|(name, what)| {
        let rest = line.strip_prefix(name)?;
        // Another family whose name starts the same is not this one.
        (rest.starts_with('{') || rest.starts_with(char::is_whitespace)).then_some((*what, rest))
    })
}

/// Reads every peer's last handshake and figures from the gateway's Prometheus text. A peer is
/// listed when the handshake family lists it; the other families only add figures (a gateway
/// older than a family leaves its figure at zero or none).
///
/// # Errors
/// [`MetricsError::BadLine`] for a sample of a read family that does not parse (a bad label
/// set, a value that is not a number or not a possible time or count, no `public_key` label);
/// [`MetricsError::NotGateway`] when the handshake family is missing (the gateway always
/// announces it, with or without peers).
pub fn parse_peers(text: &str) -> Result<PeerReadings, MetricsError> {
    let mut seen_family = false;
    let mut out = PeerReadings::new();
    let mut figures: Vec<(String, Figure, f64)> = Vec::new();
    let mut tunnel_mtu = None;
    let families: Vec<(&str, Option<Figure>)> =
        std::iter::once((LAST_HANDSHAKE_METRIC, None)).chain(FIGURES.iter().map(|(n, f)| (*n, Some(*f)))).collect();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            // `# TYPE <family> gauge` announces the family even when there is no sample.
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") && words.next() == Some(LAST_HANDSHAKE_METRIC) {
                seen_family = true;
            }
            continue;
        }
        if let Some((_, rest)) = family_of(line, &[(metric::MTU_BYTES, ())]) {
            // Device-wide: no public_key label.
            tunnel_mtu = rest.split_whitespace().last().and_then(|v| v.parse::<u32>().ok());
            continue;
        }
        let Some((figure, rest)) = family_of(line, &families) else { continue };
        let bad = |problem| MetricsError::BadLine { line: index + 1, problem, text: line.to_owned() };
        let (labels, value) = parse_labels(rest).map_err(bad)?;
        let key = labels.get(LABEL_PUBLIC_KEY).ok_or_else(|| bad("no public_key label"))?;
        let value = value.split_whitespace().next().ok_or_else(|| bad("no value"))?;
        let number: f64 = value.parse().map_err(|_| bad("the value is not a number"))?;
        if let Some(figure) = figure {
            if !number.is_finite() || number < 0.0 {
                return Err(bad("the value is not a possible count"));
            }
            figures.push((key.clone(), figure, number));
            continue;
        }
        seen_family = true;
        let at = if number.is_finite() && number > 0.0 {
            // `as` saturates; from_second refuses what is out of range.
            let whole = number.floor() as i64;
            Some(Timestamp::from_second(whole).map_err(|_| bad("the value is not a possible time"))?)
        } else if number == 0.0 {
            None
        } else {
            return Err(bad("the value is not a possible time"));
        };
        out.entry(key.clone()).or_default().last_handshake = at;
    }
    if !seen_family {
        return Err(MetricsError::NotGateway);
    }
    for (key, figure, value) in figures {
        if let Some(reading) = out.get_mut(&key) {
            figure.set(reading, value);
        }
    }
    for reading in out.values_mut() {
        reading.tunnel_mtu = tunnel_mtu;
    }
    Ok(out)
}

/// Splits `{name="value",…} rest` into the labels and the rest (after the closing brace), or
/// returns `rest` whole when there is no label set. Values may hold the format's escapes
/// (`\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), &'static str> {
    let mut labels = BTreeMap::new();
    let Some(body) = s.strip_prefix('{') else { return Ok((labels, s)) };
    let mut chars = body.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace() || *c == ',').is_some() {}
        match chars.peek() {
            Some((i, '}')) => return Ok((labels, &body[i + 1..])),
            Some(_) => {}
            None => return Err("the label set is not closed"),
        }
        let mut name = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| c.is_ascii_alphanumeric() || *c == '_') {
            name.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if name.is_empty() || chars.next().map(|(_, c)| c) != Some('=') {
            return Err("a label is not name=\"value\"");
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("a label value is not quoted");
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some((_, '"')) => break,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("a label value has a bad escape"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("a label value is not closed"),
            }
        }
        labels.insert(name, value);
    }
}

/// The tunnel state towards each peer of the spec, in the spec's order, from the gateway's
/// metrics (`Err` holds why they could not be read) at time `now`; see the module's table.
#[must_use]
pub fn peer_statuses(
    peers: &[WorkerPeer],
    metrics: Result<&PeerReadings, &str>,
    now: Timestamp,
) -> Vec<PeerTunnelStatus> {
    peers
        .iter()
        .map(|peer| {
            let status = |state: TunnelState, reason: String, at: Option<Timestamp>| PeerTunnelStatus {
                cluster: peer.cluster.clone(),
                state: state.to_string(),
                reason,
                last_handshake: at.map(|t| format!("{t:.0}")),
                health: None,
                tunnel_mtu: None,
                path_mtu: None,
                handshake_unanswered: false,
                peer_initiating: false,
            };
            let Some(key) = peer.public_key.as_deref().map(str::trim).filter(|k| !k.is_empty()) else {
                return status(TunnelState::Pending, NO_KEY.to_owned(), None);
            };
            let readings = match metrics {
                Ok(r) => r,
                Err(e) => return status(TunnelState::Pending, format!("{GATEWAY_NOT_RUNNING}: {e}"), None),
            };
            let Some(reading) = readings.get(key) else {
                let spec_keys: Vec<&str> =
                    peers.iter().filter_map(|p| p.public_key.as_deref().map(str::trim)).collect();
                let stray: Vec<&str> = readings.keys().map(String::as_str).filter(|k| !spec_keys.contains(k)).collect();
                if stray.is_empty() {
                    return status(TunnelState::Pending, NOT_LOADED.to_owned(), None);
                }
                return status(TunnelState::Down, format!("{WRONG_KEY}: {}", stray.join(", ")), None);
            };
            let mut out = match reading.last_handshake {
                None => status(TunnelState::Down, NO_HANDSHAKE_YET.to_owned(), None),
                Some(at) => {
                    // A handshake "in the future" (clocks of two nodes apart) counts as fresh.
                    let age = (now.as_second() - at.as_second()).max(0);
                    if age > HANDSHAKE_STALE_AFTER_SECS {
                        status(TunnelState::Down, format!("{STALE_PREFIX}{age} s"), Some(at))
                    } else if reading.live == Some(false) {
                        status(TunnelState::Down, SILENT.to_owned(), Some(at))
                    } else {
                        status(TunnelState::Up, String::new(), Some(at))
                    }
                }
            };
            out.health = Some(reading.health.clone());
            out.tunnel_mtu = reading.tunnel_mtu;
            out.path_mtu = reading.path_mtu;
            if out.state != TunnelState::Up.to_string() {
                out.handshake_unanswered =
                    reading.unanswered_millis.is_some_and(|ms| ms >= UNANSWERED_AFTER_SECS * 1000);
                out.peer_initiating = reading
                    .last_initiation_received
                    .is_some_and(|t| (now.as_second() - t.as_second()).abs() <= INITIATION_RECENT_SECS);
            }
            out
        })
        .collect()
}

/// Each peer's cluster, state and [`stable_reason`] with the path facts from one scrape of the gateway (`Err`: why
/// it could not be read): what the worker's tunnel check compares between two scrapes, so that
/// only a change of state or reason (not the clock, not the traffic) starts a pass.
#[must_use]
pub fn states(peers: &[WorkerPeer], scrape: Result<&str, &str>, now: Timestamp) -> Vec<(String, String, String)> {
    let readings = scrape.and_then(|text| parse_peers(text).map_err(|_| "unreadable"));
    peer_statuses(peers, readings.as_ref().map_err(|e| *e), now)
        .into_iter()
        .map(|p| {
            // A read error's text (a port, an errno) may differ between scrapes: only that
            // there was one counts.
            let reason = if p.reason.starts_with(GATEWAY_NOT_RUNNING) {
                GATEWAY_NOT_RUNNING.to_owned()
            } else {
                stable_reason(&p.reason)
            };
            // The path facts are written at once too: a change of them starts a pass.
            let mut facts = reason;
            if let Some(path) = p.path_mtu {
                facts += &format!(" | path {path}");
            }
            if p.handshake_unanswered {
                facts += " | unanswered";
            }
            if p.peer_initiating {
                facts += " | peer initiating";
            }
            (p.cluster, p.state, facts)
        })
        .collect()
}

/// Whether one WireGuard peer is live for the gateway that reports `reading`: its probes are
/// answered (`slice_gateway_peer_live` 1: a session, and a datagram within three probe
/// intervals), or, from a gateway that does not probe, it shook hands within
/// [`HANDSHAKE_STALE_AFTER_SECS`] of `now`.
#[must_use]
pub fn peer_live(reading: &PeerReading, now: Timestamp) -> bool {
    match reading.live {
        Some(live) => live,
        None => reading.last_handshake.is_some_and(|at| now.as_second() - at.as_second() <= HANDSHAKE_STALE_AFTER_SECS),
    }
}

/// Which peer clusters one gateway replica reaches (issue 13), from its own metrics: a peer
/// cluster is reached when at least one of its WireGuard peers — its first key
/// (`publicKey`) or a further replica's (`replicas[].publicKey`), all holding the cluster's
/// prefix as one peer group — is [`peer_live`]. Both lists are in the spec's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub live: Vec<String>,
    pub unreachable: Vec<String>,
}

/// The [`Reach`] of the gateway whose metrics gave `readings`, towards each peer of the spec
/// (a peer without any published key is unreachable: the gateway has no peer of it).
#[must_use]
pub fn replica_reach(peers: &[WorkerPeer], readings: &PeerReadings, now: Timestamp) -> Reach {
    let mut reach = Reach::default();
    for peer in peers {
        let keys = peer.public_key.as_deref().into_iter().chain(peer.replicas.iter().map(|r| r.public_key.as_str()));
        let live =
            keys.map(str::trim).filter(|k| !k.is_empty()).any(|k| readings.get(k).is_some_and(|r| peer_live(r, now)));
        if live { &mut reach.live } else { &mut reach.unreachable }.push(peer.cluster.clone());
    }
    reach
}

/// What the tunnel check compares of a replica between two scrapes: the clusters it does not
/// reach, or `None` when its metrics cannot be read (whatever the error's text).
#[must_use]
pub fn reach_state(peers: &[WorkerPeer], scrape: Result<&str, &str>, now: Timestamp) -> Option<Vec<String>> {
    let readings = parse_peers(scrape.ok()?).ok()?;
    Some(replica_reach(peers, &readings, now).unreachable)
}

/// `reason` without the age that `no handshake for N s` carries (for an Event's note, which must
/// not change with the clock).
#[must_use]
pub fn stable_reason(reason: &str) -> String {
    if reason.starts_with(STALE_PREFIX) {
        format!("{STALE_PREFIX}over {HANDSHAKE_STALE_AFTER_SECS} s")
    } else {
        reason.to_owned()
    }
}

/// Whether `new` differs from `old` only in what the clock and the traffic alone change: the
/// peers' `lastHandshake`, their `health` figures and the age in `no handshake for N s`. Such a change is written at most once
/// per [`TIME_ONLY_WRITE_INTERVAL_SECS`]; everything else at once.
#[must_use]
pub fn only_times_changed(old: &WorkerSliceStatus, new: &WorkerSliceStatus) -> bool {
    fn without_times(s: &WorkerSliceStatus) -> WorkerSliceStatus {
        let mut s = s.clone();
        for p in &mut s.peers {
            p.last_handshake = None;
            p.health = None;
            if p.reason.starts_with(STALE_PREFIX) {
                p.reason = STALE_PREFIX.to_owned();
            }
        }
        s
    }
    old != new && without_times(old) == without_times(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slice_gateway::metrics::{PeerSample, Sample, render};

    const A: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
    const B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const C: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn peer(cluster: &str, key: Option<&str>) -> WorkerPeer {
        WorkerPeer {
            cluster: cluster.into(),
            prefix: "10.80.0.0/20".into(),
            secondary_prefix: None,
            public_key: key.map(Into::into),
            endpoint: None,
            replicas: Vec::new(),
        }
    }

    /// The gateway's own rendering of peers with these handshake times (Unix seconds, 0: none).
    fn gateway_text(peers: &[(&str, f64)]) -> String {
        render(&Sample {
            interface: "sg-blue".into(),
            peers: peers
                .iter()
                .map(|(k, t)| PeerSample {
                    public_key: (*k).into(),
                    rx_bytes: 100,
                    tx_packets: 7,
                    handshake_rtt_ms: Some(3),
                    rx_loss: 0.0125,
                    last_handshake: *t,
                    drops: vec![("auth", 1)],
                    ..PeerSample::default()
                })
                .collect(),
            ..Sample::default()
        })
    }

    #[test]
    fn the_gateways_own_metrics_parse() {
        let now = ts("2026-11-23T20:00:00Z");
        let fresh = now.as_second() as f64 - 30.25;
        let h = parse_peers(&gateway_text(&[(A, fresh), (B, 0.0)])).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[A].last_handshake, Some(ts("2026-11-23T19:59:29Z")), "fractions are cut to the second");
        assert_eq!(h[B].last_handshake, None);
        // A gateway without peers still announces the family.
        assert_eq!(parse_peers(&gateway_text(&[])).unwrap(), PeerReadings::new());
    }

    #[test]
    fn a_probed_peer_silent_for_three_intervals_is_down_even_with_a_fresh_handshake() {
        let now = ts("2026-11-23T20:00:00Z");
        let fresh = now.as_second() as f64 - 5.0;
        let probed = |live: [bool; 2], at: f64| {
            render(&Sample {
                interface: "sg-blue".into(),
                peers: [(A, live[0]), (B, live[1])]
                    .iter()
                    .map(|(k, l)| PeerSample {
                        public_key: (*k).into(),
                        last_handshake: at,
                        live: Some(*l),
                        ..PeerSample::default()
                    })
                    .collect(),
                ..Sample::default()
            })
        };
        let peers = [peer("c1", Some(A)), peer("c2", Some(B))];
        let r = parse_peers(&probed([true, false], fresh)).unwrap();
        assert_eq!((r[A].live, r[B].live), (Some(true), Some(false)));
        let got: Vec<(String, String)> =
            peer_statuses(&peers, Ok(&r), now).into_iter().map(|p| (p.state, p.reason)).collect();
        assert_eq!(got, [("Up".to_owned(), String::new()), ("Down".to_owned(), SILENT.to_owned())]);
        // The reason does not change with the clock: an Event's note can carry it as it is.
        assert_eq!(stable_reason(SILENT), SILENT);
        // A gateway that does not probe says nothing of liveness: the handshake rule alone.
        let unprobed = parse_peers(&gateway_text(&[(A, fresh)])).unwrap();
        assert_eq!(unprobed[A].live, None);
        assert_eq!(peer_statuses(&peers[..1], Ok(&unprobed), now)[0].state, "Up");
        // A stale handshake keeps its own reason, silent or not.
        let old = now.as_second() as f64 - 600.0;
        let stale = peer_statuses(&peers[..1], Ok(&parse_peers(&probed([false, false], old)).unwrap()), now);
        assert!(stale[0].reason.starts_with(STALE_PREFIX), "{stale:?}");
    }

    #[test]
    fn path_facts_and_a_wrong_key_reach_the_status() {
        let now = ts("2026-12-05T04:00:00Z");
        let n = now.as_second() as f64;
        let text = render(&Sample {
            interface: "sg-blue".into(),
            mtu: Some(1380),
            peers: vec![
                PeerSample {
                    public_key: A.into(),
                    last_handshake: n - 5.0,
                    path_mtu: Some(1240),
                    ..PeerSample::default()
                },
                // Silent (probed, nothing for three intervals): its initiations wait for 12 s,
                // and the peer's own arrived 3 s ago.
                PeerSample {
                    public_key: B.into(),
                    last_handshake: n - 60.0,
                    live: Some(false),
                    unanswered_secs: Some(12.0),
                    last_initiation_received: n - 3.0,
                    ..PeerSample::default()
                },
            ],
            ..Sample::default()
        });
        let r = parse_peers(&text).unwrap();
        assert_eq!((r[A].tunnel_mtu, r[A].path_mtu, r[B].path_mtu), (Some(1380), Some(1240), None));
        let peers = [peer("c1", Some(A)), peer("c2", Some(B)), peer("c3", Some(C))];
        let got = peer_statuses(&peers, Ok(&r), now);
        assert_eq!((got[0].state.as_str(), got[0].path_mtu, got[0].tunnel_mtu), ("Up", Some(1240), Some(1380)));
        assert!(!got[0].handshake_unanswered && !got[0].peer_initiating, "an up tunnel says neither");
        assert_eq!(got[1].state, "Down");
        assert!(got[1].handshake_unanswered && got[1].peer_initiating, "{:?}", got[1]);
        // c3's key is not held, and no other stray key either: not loaded yet.
        assert_eq!((got[2].state.as_str(), got[2].reason.as_str()), ("Pending", NOT_LOADED));
        // The gateway holds a key no peer has instead of c3's: a wrong key, naming it.
        let peers = [peer("c1", Some(A)), peer("c3", Some(C))];
        let got = peer_statuses(&peers, Ok(&r), now);
        assert_eq!(got[1].state, "Down");
        assert_eq!(got[1].reason, format!("{WRONG_KEY}: {B}"));
        // A change of the path facts is a change of state for the tunnel check.
        let narrower = text.replace("} 1240", "} 1232");
        assert_ne!(states(&peers, Ok(&text), now), states(&peers, Ok(&narrower), now));
    }

    #[test]
    fn states_change_with_a_state_or_reason_only() {
        let now = ts("2026-11-23T20:00:00Z");
        let n = now.as_second() as f64;
        let peers = [peer("c1", Some(A))];
        let up = states(&peers, Ok(&gateway_text(&[(A, n - 5.0)])), now);
        assert_eq!(up, [("c1".to_owned(), "Up".to_owned(), String::new())]);
        // Another handshake, other traffic, a later clock: the same.
        let later = ts("2026-11-23T20:01:00Z");
        assert_eq!(states(&peers, Ok(&gateway_text(&[(A, n + 50.0)])), later), up);
        // The age of a stale handshake does not count; the state does.
        let stale = states(&peers, Ok(&gateway_text(&[(A, n - 400.0)])), now);
        assert_eq!(stale[0].1, "Down");
        assert_eq!(stale, states(&peers, Ok(&gateway_text(&[(A, n - 500.0)])), now));
        // Any read error is one state, whatever its text.
        let refused = states(&peers, Err("connecting to 10.1.2.3:9586: refused"), now);
        assert_eq!(refused, states(&peers, Err("10.1.2.4:9586 did not answer within 2s"), now));
        assert_eq!(refused[0].1, "Pending");
        assert_ne!(states(&peers, Ok("garbage"), now), up);
    }

    /// Issue 13: what the tunnel check compares of a replica: the clusters it does not reach
    /// (a cluster reached through any of its keys), or that its metrics cannot be read.
    #[test]
    fn a_replicas_reach_is_by_cluster_through_any_of_its_keys() {
        let now = ts("2026-11-23T20:00:00Z");
        let n = now.as_second() as f64;
        let mut c1 = peer("c1", Some(A));
        c1.replicas.push(slice_api::crd::PeerReplica { ordinal: 1, public_key: B.into(), endpoint: None });
        let peers = [c1, peer("c3", Some(C))];
        // No probes: the handshake's age decides; c1 through its second replica.
        let text = gateway_text(&[(A, n - 400.0), (B, n - 10.0), (C, 0.0)]);
        let r = parse_peers(&text).unwrap();
        assert!(!peer_live(&r[A], now) && peer_live(&r[B], now) && !peer_live(&r[C], now));
        assert_eq!(replica_reach(&peers, &r, now), Reach { live: vec!["c1".into()], unreachable: vec!["c3".into()] });
        assert_eq!(reach_state(&peers, Ok(&text), now), Some(vec!["c3".to_owned()]));
        assert_eq!(reach_state(&peers, Err("refused"), now), None);
        assert_eq!(reach_state(&peers, Ok("garbage"), now), None, "unreadable is one state");
        // The same handshakes, later: c1's second replica is stale too.
        let later = ts("2026-11-23T20:05:00Z");
        assert_eq!(reach_state(&peers, Ok(&text), later), Some(vec!["c1".to_owned(), "c3".to_owned()]));
    }

    #[test]
    fn the_gateways_figures_parse_into_health() {
        let now = ts("2026-11-23T20:00:00Z");
        let n = now.as_second() as f64;
        let r = parse_peers(&gateway_text(&[(A, n - 5.0)])).unwrap();
        let want = TunnelHealth {
            rtt_millis: Some(3),
            rx_bytes: 100,
            tx_packets: 7,
            rx_loss_permille: 13,
            ..TunnelHealth::default()
        };
        assert_eq!(r[A].health, want);
        let got = peer_statuses(&[peer("c1", Some(A))], Ok(&r), now);
        assert_eq!(got[0].health.as_ref(), Some(&want));
        let json = serde_json::to_value(&got[0]).unwrap();
        assert_eq!(json["health"]["rttMillis"], 3, "{json}");
        assert_eq!(json["health"]["rxLossPermille"], 13, "{json}");
        // A gateway without the newer families: figures at zero, no round trip; figures of a
        // key the handshake family does not list are ignored.
        let old = "# TYPE slice_gateway_peer_last_handshake_seconds gauge\n\
            slice_gateway_peer_last_handshake_seconds{public_key=\"a\"} 0\n\
            slice_gateway_peer_rx_bytes_total{public_key=\"b\"} 5\n";
        let r = parse_peers(old).unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(r["a"].health, TunnelHealth::default());
    }

    #[test]
    fn labels_with_escapes_spaces_and_timestamps_parse() {
        let text = "# TYPE slice_gateway_peer_last_handshake_seconds gauge\n\
            slice_gateway_peer_last_handshake_seconds{ public_key = \"a\\\"b\\\\c\" , interface=\"x,}\"} 1700000000 1700000001000\n\
            slice_gateway_peer_last_handshake_seconds_other{public_key=\"zzz\"} nope\n";
        let h = parse_peers(text).unwrap();
        assert_eq!(h.keys().collect::<Vec<_>>(), ["a\"b\\c"]);
        assert_eq!(h["a\"b\\c"].last_handshake, Some(Timestamp::from_second(1_700_000_000).unwrap()));
    }

    #[test]
    fn bad_metrics_are_refused() {
        let family = "# TYPE slice_gateway_peer_last_handshake_seconds gauge\n";
        let cases = [
            ("slice_gateway_peer_last_handshake_seconds{public_key=\"a\"} soon", "not a number"),
            ("slice_gateway_peer_last_handshake_seconds{interface=\"x\"} 1", "no public_key"),
            ("slice_gateway_peer_last_handshake_seconds{public_key=\"a} 1", "not closed"),
            ("slice_gateway_peer_last_handshake_seconds{public_key=a} 1", "not quoted"),
            ("slice_gateway_peer_last_handshake_seconds{public_key=\"a\\t\"} 1", "bad escape"),
            ("slice_gateway_peer_last_handshake_seconds{public_key=\"a\"}", "no value"),
            ("slice_gateway_peer_last_handshake_seconds{public_key=\"a\"} -5", "not a possible time"),
            ("slice_gateway_peer_last_handshake_seconds{public_key=\"a\"} 1e300", "not a possible time"),
            ("slice_gateway_peer_rx_bytes_total{public_key=\"a\"} -1", "not a possible count"),
            ("slice_gateway_peer_rx_loss_ratio{public_key=\"a\"} NaN", "not a possible count"),
            ("slice_gateway_peer_handshake_rtt_seconds{interface=\"x\"} 1", "no public_key"),
        ];
        for (line, problem) in cases {
            let err = parse_peers(&format!("{family}{line}\n")).unwrap_err();
            assert!(matches!(err, MetricsError::BadLine { line: 2, .. }), "{line}: {err}");
            assert!(err.to_string().contains(problem), "{line}: {err}");
        }
        assert_eq!(parse_peers("up 1\n# TYPE up gauge\n"), Err(MetricsError::NotGateway));
        assert_eq!(parse_peers(""), Err(MetricsError::NotGateway));
    }

    #[test]
    fn peer_states_follow_the_table() {
        let now = ts("2026-11-23T20:00:00Z");
        let n = now.as_second() as f64;
        let text = gateway_text(&[(A, n - 30.0), (B, 0.0), (C, n - 181.0)]);
        let h = parse_peers(&text).unwrap();
        let peers = [
            peer("c1", Some(A)),
            peer("c3", Some(B)),
            peer("c4", Some(C)),
            peer("c5", None),
            peer("c6", Some("bm90LWxvYWRlZC1rZXktLS0tLS0tLS0tLS0tLS0tLS0=")),
        ];
        let got: Vec<(String, String, String, Option<String>)> = peer_statuses(&peers, Ok(&h), now)
            .into_iter()
            .map(|p| (p.cluster, p.state, p.reason, p.last_handshake))
            .collect();
        let s = |x: &str| x.to_owned();
        assert_eq!(
            got,
            [
                (s("c1"), s("Up"), s(""), Some(s("2026-11-23T19:59:30Z"))),
                (s("c3"), s("Down"), s("no handshake yet"), None),
                (s("c4"), s("Down"), s("no handshake for 181 s"), Some(s("2026-11-23T19:56:59Z"))),
                (s("c5"), s("Pending"), s("peer has not published a key"), None),
                (s("c6"), s("Pending"), s("gateway has not loaded the peer's key yet"), None),
            ]
        );
        // 180 s exactly is still up; a handshake ahead of our clock too.
        let edge = parse_peers(&gateway_text(&[(A, n - 180.0), (B, n + 5.0)])).unwrap();
        let states: Vec<String> = peer_statuses(&peers[..2], Ok(&edge), now).into_iter().map(|p| p.state).collect();
        assert_eq!(states, ["Up", "Up"]);
    }

    #[test]
    fn unreadable_metrics_leave_keyed_peers_pending_with_the_error() {
        let peers = [peer("c1", Some(A)), peer("c3", None)];
        let got = peer_statuses(&peers, Err("connecting to 10.1.2.3:9586: connection refused"), Timestamp::UNIX_EPOCH);
        assert_eq!(got[0].state, "Pending");
        assert_eq!(got[0].reason, "gateway not running: connecting to 10.1.2.3:9586: connection refused");
        assert_eq!(got[1].reason, NO_KEY, "a missing key is the first reason");
        let json = serde_json::to_value(&got[0]).unwrap();
        assert!(json.get("lastHandshake").is_none(), "{json}");
    }

    #[test]
    fn only_clock_changes_are_recognised() {
        let now = ts("2026-11-23T20:00:00Z");
        let n = now.as_second() as f64;
        let peers = [peer("c1", Some(A)), peer("c4", Some(C))];
        let at = |a: f64, c: f64, now: Timestamp| {
            let h = parse_peers(&gateway_text(&[(A, a), (C, c)])).unwrap();
            WorkerSliceStatus { peers: peer_statuses(&peers, Ok(&h), now), ..WorkerSliceStatus::default() }
        };
        let old = at(n - 10.0, n - 200.0, now);
        let later = ts("2026-11-23T20:00:30Z");
        // c1 rekeyed, c4 is 30 s staler: time only.
        let new = at(n + 20.0, n - 200.0, later);
        assert_ne!(old, new);
        assert!(only_times_changed(&old, &new));
        // Only the figures moved (traffic flowed): a measurement, like the times.
        let mut busier = old.clone();
        if let Some(h) = busier.peers[0].health.as_mut() {
            h.rx_bytes += 1_000;
            h.rtt_millis = Some(9);
        }
        assert!(only_times_changed(&old, &busier));
        // Nothing changed at all is not a change.
        assert!(!only_times_changed(&old, &old));
        // c4 came up: a state change.
        assert!(!only_times_changed(&old, &at(n + 20.0, n + 25.0, later)));
        // c1 went stale: a state change.
        assert!(!only_times_changed(&old, &at(n - 200.0, n - 200.0, later)));
        // Another field changed beside the times.
        let mut counted = new.clone();
        counted.connected_pods = 3;
        assert!(!only_times_changed(&old, &counted));
    }
}
