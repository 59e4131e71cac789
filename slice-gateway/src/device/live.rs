//! What the packet path reads: the live peers (a `Tunn` each, behind the peer's own lock; the
//! endpoint, which follows roaming; the counters) and the immutable [`Snapshot`] of the peer
//! table, the routes, the identity and the socket, which the device replaces as a whole on every
//! change. Readers load it without a lock (`arc_swap`); only a peer's `Tunn` is locked, per peer.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use slice_api::wireguard::Key;

use crate::allowed_ips::AllowedIps;
use crate::pathprobe::PathState;
use crate::peers::TunnSettings;

/// Device-wide counters (all monotonic).
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Datagrams that are not WireGuard messages or fail mac1.
    pub garbage: AtomicU64,
    /// Well-formed messages for no known peer (unknown key or receiver index).
    pub unknown_peer: AtomicU64,
    /// Cookie replies sent because the device was under load.
    pub cookie_replies: AtomicU64,
    /// Datagrams dropped because the device has no private key.
    pub no_private_key: AtomicU64,
    /// Packets from TUN whose destination matches no peer's AllowedIPs.
    pub no_route: AtomicU64,
    /// TUN packets that are not IPv4/IPv6.
    pub tun_invalid: AtomicU64,
}

/// Per-peer counters (wire bytes: what crosses the UDP socket).
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub rx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    /// Authenticated decryption or handshake failed (replay, bad tag, bad timestamp, …).
    pub drop_auth: AtomicU64,
    /// Decrypted packet whose source is not in this peer's AllowedIPs.
    pub drop_source: AtomicU64,
    /// Something to send but no endpoint known yet.
    pub drop_no_endpoint: AtomicU64,
    /// `sendto`/TUN `write` failed.
    pub drop_io: AtomicU64,
}

pub(super) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One live peer. Its configuration (settings, AllowedIPs) is in [`crate::peers::PeerState`].
pub struct Peer {
    pub public_key: Key,
    /// See [`crate::peers::PeerConfig::index`].
    pub(super) index: u32,
    /// `None` without a private key, and once the peer is removed (its sessions die with it even
    /// if a packet thread still holds the `Arc` for a moment).
    pub(super) tunn: Mutex<Option<Tunn>>,
    /// Follows the source of the last authenticated datagram (roaming).
    pub(super) endpoint: Mutex<Option<SocketAddr>>,
    /// Held while the TUN path sends what it encrypted for this peer, taken before `tunn` is
    /// released: datagrams leave in the order of their counters even when two packet threads
    /// (two TUN queues) encrypt for the peer one after the other. Without it a thread that is
    /// preempted between encrypting and sending lets the other send over a thousand later
    /// counters first, and the receiver's replay window (1024 in boringtun) drops the late ones
    /// (seen as `auth` drops and TCP retransmits with two queues).
    pub(super) send: Mutex<()>,
    pub(super) last_handshake: Mutex<Option<SystemTime>>,
    pub counters: PeerCounters,
    /// [`now_ms`] of the last authenticated datagram from the peer (0: none yet): its liveness
    /// in a peer group ([`crate::multipath`]).
    pub(super) last_rx_ms: AtomicU64,
    /// [`now_ms`] of the last forced handshake initiation to it while it was dead.
    pub(super) last_revive_ms: AtomicU64,
    /// This peer's identity in rendezvous hashing (FNV-1a of its public key).
    pub(super) hrw_id: u64,
    /// The throughput figures' last sample ([`crate::metrics::Rate`]).
    pub(crate) rate: Mutex<crate::metrics::Rate>,
    /// Path MTU probing towards the peer ([`crate::pathprobe`]).
    pub(super) path: Mutex<PathState>,
    /// Unix ms of the first handshake initiation sent to the peer since the last completed
    /// handshake (0: none waits for an answer). Counted where single datagrams go out
    /// (`socket::send_to`: the timers' retries every 5 s, revivals, replies), not in the TUN
    /// path's batches, so the packet loop pays nothing for it; an initiation that traffic
    /// started is counted from its first retry.
    pub(super) unanswered_since_ms: AtomicU64,
    /// Unix ms of the last handshake initiation received from the peer (0: never).
    pub(super) last_initiation_rx_ms: AtomicU64,
    /// Set in the last phase of draining ([`super::Gateway::mute_peers`]): nothing more is sent
    /// to the peer, so its gateway finds this one silent and moves its flows to the other
    /// replicas, while what it still sends here is delivered.
    pub(super) muted: AtomicBool,
}

impl Peer {
    pub(super) fn new(public_key: Key, index: u32, tunn: Option<Tunn>) -> Self {
        Self {
            public_key,
            index,
            tunn: Mutex::new(tunn),
            endpoint: Mutex::new(None),
            send: Mutex::new(()),
            last_handshake: Mutex::new(None),
            counters: PeerCounters::default(),
            last_rx_ms: AtomicU64::new(0),
            last_revive_ms: AtomicU64::new(0),
            hrw_id: slice_api::fnv::fnv1a_64(public_key.0),
            rate: Mutex::new(crate::metrics::Rate::default()),
            path: Mutex::new(PathState::default()),
            unanswered_since_ms: AtomicU64::new(0),
            last_initiation_rx_ms: AtomicU64::new(0),
            muted: AtomicBool::new(false),
        }
    }

    /// A handshake initiation went to the peer: it waits for an answer from now, unless an
    /// earlier one already does.
    pub(super) fn note_initiation_sent(&self) {
        let _ = self.unanswered_since_ms.compare_exchange(0, unix_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A handshake initiation came from the peer.
    pub(super) fn note_initiation_received(&self) {
        self.last_initiation_rx_ms.store(unix_ms(), Ordering::Relaxed);
    }

    /// How long the first unanswered handshake initiation to the peer has waited, if one does.
    #[must_use]
    pub fn unanswered_for(&self) -> Option<Duration> {
        match self.unanswered_since_ms.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(unix_ms().saturating_sub(since))),
        }
    }

    /// When the peer last sent a handshake initiation (Unix ms, 0: never).
    #[must_use]
    pub fn last_initiation_received_ms(&self) -> u64 {
        self.last_initiation_rx_ms.load(Ordering::Relaxed)
    }

    /// The largest inner packet the path to the peer carried in the last probe round that says
    /// ([`PathState::largest`]).
    #[must_use]
    pub fn path_mtu(&self) -> Option<u16> {
        lock(&self.path).largest()
    }

    /// An authenticated datagram arrived from the peer.
    pub(super) fn note_rx(&self) {
        self.last_rx_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the peer spoke within the dead-after time of `probe_ms` probes.
    #[must_use]
    pub fn is_live(&self, probe_ms: u64) -> bool {
        crate::multipath::is_live(self.last_rx_ms.load(Ordering::Relaxed), now_ms(), probe_ms)
    }

    pub(super) fn endpoint(&self) -> Option<SocketAddr> {
        *lock(&self.endpoint)
    }

    /// The round-trip time of the last handshake this side initiated (boringtun's, whole
    /// milliseconds) and the estimated loss (0–1) of the packets the peer sent, from the gaps
    /// in the current sessions' receive counters. `(None, 0.0)` without a `Tunn`.
    #[must_use]
    pub fn health(&self) -> (Option<u32>, f32) {
        lock(&self.tunn).as_ref().map_or((None, 0.0), |t| {
            let (_, _, _, loss, rtt) = t.stats();
            (rtt, loss)
        })
    }

    /// Refreshes the cached wall-clock handshake time from boringtun's age of the session.
    /// boringtun reports only an age (and nothing once the sessions expire); `wg` wants a Unix
    /// time that stays after expiry, so we keep our own.
    pub(super) fn note_handshake(&self, tunn: &Tunn) {
        if let Some(age) = tunn.time_since_last_handshake() {
            let at = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
            let mut last = lock(&self.last_handshake);
            // Only move on a new handshake; recomputing `now - age` jitters by microseconds.
            if last.is_none_or(|prev| at.duration_since(prev).is_ok_and(|d| d > Duration::from_millis(50))) {
                *last = Some(at);
                // Whichever side initiated it, the peer answers now.
                self.unanswered_since_ms.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Milliseconds since the Unix epoch on the wall clock (what the metrics report times in).
#[must_use]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds on a monotonic clock started with the process, never 0 (0 means "never").
#[must_use]
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1)
}

/// The interface key pair with the rate limiter bound to it.
pub(super) struct Identity {
    pub(super) secret: StaticSecret,
    pub(super) public: PublicKey,
    pub(super) rate_limiter: Arc<RateLimiter>,
}

impl Identity {
    pub(super) fn new(key: Key, handshake_rate_limit: u64) -> Self {
        let secret = StaticSecret::from(key.0);
        let public = PublicKey::from(&secret);
        let rate_limiter = Arc::new(RateLimiter::new(&public, handshake_rate_limit));
        Self { secret, public, rate_limiter }
    }

    /// A `Tunn` for a peer under this identity.
    pub(super) fn tunn(&self, peer_key: Key, index: u32, settings: TunnSettings) -> Tunn {
        Tunn::new(
            self.secret.clone(),
            PublicKey::from(peer_key.0),
            settings.preshared_key.map(|k| k.0),
            (settings.persistent_keepalive > 0).then_some(settings.persistent_keepalive),
            index,
            Some(Arc::clone(&self.rate_limiter)),
        )
    }
}

/// A peer's `Tunn` under `identity`, or none without a private key.
pub(super) fn new_tunn(identity: Option<&Identity>, peer_key: Key, index: u32, settings: TunnSettings) -> Option<Tunn> {
    identity.map(|id| id.tunn(peer_key, index, settings))
}

/// Everything the packet threads and the timers look up, immutable once published.
pub(super) struct Snapshot {
    /// The current socket (a receive loop on another one stops).
    pub(super) socket: Arc<UdpSocket>,
    pub(super) identity: Option<Arc<Identity>>,
    pub(super) peers: HashMap<Key, Arc<Peer>>,
    pub(super) by_index: HashMap<u32, Arc<Peer>>,
    /// Cryptokey routing onto the live peers: a prefix's holder, or with multipath its group.
    pub(super) routes: AllowedIps<Vec<Arc<Peer>>>,
}

impl Snapshot {
    /// The snapshot of `peers` (the live objects by key) routed as `routes` says.
    pub(super) fn new(
        socket: Arc<UdpSocket>,
        identity: Option<Arc<Identity>>,
        peers: &HashMap<Key, Arc<Peer>>,
        routes: &AllowedIps<Vec<Key>>,
    ) -> Self {
        let by_index = peers.values().map(|p| (p.index, Arc::clone(p))).collect();
        // Every routed key is a live peer (the state removes a peer's routes with it).
        let routes = routes.filter_map(|keys| {
            let group: Vec<Arc<Peer>> = keys.iter().filter_map(|k| peers.get(k).map(Arc::clone)).collect();
            (!group.is_empty()).then_some(group)
        });
        Self { socket, identity, peers: peers.clone(), by_index, routes }
    }
}
