//! The gateway device: the owner that wires boringtun's sans-IO `noise::Tunn` to the TUN device
//! and the UDP socket.
//!
//! - [`crate::peers`] holds the configuration as data (peer table, AllowedIPs) and turns every
//!   change into effects; [`Gateway::apply`] carries them out (bind, `Tunn`s built or ended,
//!   endpoints, keepalives, routes) and publishes an immutable [`live::Snapshot`] of the live
//!   peers, routes, identity and socket. The packet threads load it without a lock; only a
//!   peer's `Tunn` (and endpoint) has a lock of its own.
//! - [`tx`]: TUN → UDP; [`rx`]: UDP → TUN; [`timers`]: `update_timers` and the rate limiter
//!   reset; [`socket`]: binding the socket and sending to a peer.
//!
//! Two packet threads and a timer thread (no async runtime). By default the TUN device has two
//! queues and each packet thread owns one ([`queues`]): it reads its queue under that queue's
//! `tx` lock and shares the socket (and the `rx` lock) with the other. With one queue
//! (`SLICE_GATEWAY_TUN_QUEUES=1`) one thread waits on TUN, the other on the socket, and each
//! also serves the other direction when it is awake and that direction's lock is free. Either
//! way, after a receive batch TUN is drained (the ACKs the local TCP just produced leave at
//! once), after a TUN batch the socket is. The fds are non-blocking and waited on with poll(2);
//! the `tx` and `rx` locks keep each direction in order.
//!
//! Lock order: `control` (changes only) before any peer lock; in the packet path a `tx` or `rx`
//! (never two: the others are only `try_lock`ed after release), then a peer's `tunn`, then its
//! `send` (kept after `tunn` is released, see [`Peer`]), `endpoint` or `last_handshake`.

mod live;
pub use live::now_ms;
mod queues;
mod rx;
mod socket;
mod timers;
mod tx;

use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use boringtun::noise::TunnResult;
use ipnet::IpNet;

pub use self::live::{DeviceCounters, Peer, PeerCounters};
use self::live::{Identity, Snapshot, lock, new_tunn};
use self::rx::RxState;
use self::tx::TxState;
use crate::config::DeviceUpdate;
use crate::peers::{PeerState, Warning};
use crate::tun::Tun;
use crate::uapi::{DeviceStatus, PeerStatus, SetError};
use slice_api::wireguard::Key;

/// Handshakes per second before the device answers with cookies (boringtun's device uses 100).
/// Doubled because each handshake is counted twice: once by our peer lookup and once inside
/// `Tunn::decapsulate` (boringtun keeps `handle_verified_packet` crate-private, so an external
/// I/O loop cannot skip the second verification).
pub const DEFAULT_HANDSHAKE_RATE_LIMIT: u64 = 2 * 100;
/// The largest handshake limit accepted: far more handshakes than a gateway can compute per
/// second, so a larger figure can only be a mistake.
pub const MAX_HANDSHAKE_RATE_LIMIT: u64 = 1_000_000;
/// How often `update_timers` runs for every peer.
pub const TIMER_TICK: Duration = Duration::from_millis(100);
/// Largest UDP datagram / TUN packet we handle.
const MAX_PACKET: usize = 65_536;

/// The control side: the configuration and the live objects it maps to. Locked only by changes
/// and by `status`; never by the packet path.
struct Control {
    state: PeerState,
    identity: Option<Arc<Identity>>,
    peers: HashMap<Key, Arc<Peer>>,
}

/// The running gateway.
pub struct Gateway {
    pub name: String,
    tun: Tun,
    control: Mutex<Control>,
    /// What the packet path reads; replaced as a whole under `control`.
    snapshot: ArcSwap<Snapshot>,
    pub counters: DeviceCounters,
    shutdown: AtomicBool,
    /// Draining before an exit ([`Self::start_draining`]): `/healthz` answers 503.
    draining: AtomicBool,
    /// The TUN MTU: TCP SYNs crossing the tunnel get their MSS clamped to fit it.
    mtu: AtomicU32,
    /// The TOS byte (DSCP class << 2) of the outer packets; 0: none set.
    tos: std::sync::atomic::AtomicU8,
    /// Handshake messages per second before the gateway answers with cookies (counted twice
    /// per handshake, see `DEFAULT_HANDSHAKE_RATE_LIMIT`); applies to the next identity.
    handshake_rate_limit: AtomicU64,
    /// `UDP_SEGMENT` works on the current socket (cleared after a failed GSO send).
    gso: AtomicBool,
    /// Buffers of the TUN → UDP path, one per TUN queue; whoever holds one reads its queue.
    tx: Vec<Mutex<TxState>>,
    /// Buffers of the UDP → TUN path; whoever holds it reads the socket.
    rx: Mutex<RxState>,
    /// Called after every applied change with every peer's AllowedIPs (the routes into TUN).
    on_change: Mutex<Option<AllowedIpsHook>>,
    /// Peer groups' probe interval in ms; 0: multipath off ([`Gateway::set_multipath`]).
    probe_interval_ms: AtomicU64,
}

/// What [`Gateway::set_on_change`] takes.
pub type AllowedIpsHook = Box<dyn Fn(&[IpNet]) + Send>;

impl Gateway {
    /// Opens the TUN device and binds the UDP socket (ephemeral port until configured).
    ///
    /// # Errors
    /// When the TUN device cannot be created or the socket cannot be bound.
    pub fn new(tun: Tun) -> io::Result<Arc<Self>> {
        let socket = Arc::new(socket::bind_udp(0, 0, 0)?);
        let listen_port = socket.local_addr()?.port();
        let vnet = tun.vnet_hdr();
        let queues = tun.queues();
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.subsec_nanos());
        let state = PeerState::new(listen_port, seed);
        let snapshot = Snapshot::new(socket, None, &HashMap::new(), state.routes());
        Ok(Arc::new(Self {
            name: tun.name().to_string(),
            tun,
            control: Mutex::new(Control { state, identity: None, peers: HashMap::new() }),
            snapshot: ArcSwap::from_pointee(snapshot),
            counters: DeviceCounters::default(),
            on_change: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            mtu: AtomicU32::new(1420),
            tos: std::sync::atomic::AtomicU8::new(0),
            handshake_rate_limit: AtomicU64::new(DEFAULT_HANDSHAKE_RATE_LIMIT),
            gso: AtomicBool::new(std::env::var_os("SLICE_GATEWAY_NO_GSO").is_none()),
            tx: (0..queues).map(|_| Mutex::new(TxState::new())).collect(),
            rx: Mutex::new(RxState::new(vnet)),
            probe_interval_ms: AtomicU64::new(0),
        }))
    }

    /// Turns peer groups on (`--multipath`, see [`crate::multipath`]): a prefix given to
    /// several peers routes each flow to one live member; every peer gets a keepalive every
    /// `probe` (so each end sees the other live) and, once dead, a fresh handshake initiation
    /// every second. Call before the first configuration.
    pub fn set_multipath(&self, probe: Duration) {
        let ms = u64::try_from(probe.as_millis()).unwrap_or(u64::MAX).max(1);
        lock(&self.control).state.set_multipath(true);
        self.probe_interval_ms.store(ms, Ordering::Relaxed);
    }

    /// The probe interval in ms, 0 when multipath is off.
    #[must_use]
    pub fn probe_interval_ms(&self) -> u64 {
        self.probe_interval_ms.load(Ordering::Relaxed)
    }

    /// Sets how many handshake messages per second pass before the gateway answers with cookies
    /// (0: every handshake must first prove its address with a cookie). Call before the first
    /// configuration: it applies when the private key is set.
    pub fn set_handshake_rate_limit(&self, limit: u64) {
        self.handshake_rate_limit.store(limit, Ordering::Relaxed);
    }

    /// Sets the MTU that MSS clamping fits TCP to (the TUN device's MTU).
    pub fn set_mtu(&self, mtu: u32) {
        self.mtu.store(mtu, Ordering::Relaxed);
    }

    /// Writes `dscp` on every outer packet from now on: on the current socket and on every
    /// socket a later listen port binds.
    ///
    /// # Errors
    /// When the socket refuses `IP_TOS`/`IPV6_TCLASS`.
    pub fn set_dscp(&self, dscp: slice_api::qos::DscpClass) -> io::Result<()> {
        self.tos.store(dscp.tos(), Ordering::Relaxed);
        socket::set_tos(&self.snapshot.load().socket, dscp.tos())
    }

    /// The TUN device's MTU as set with [`Gateway::set_mtu`], if it was.
    #[must_use]
    pub fn tun_mtu(&self) -> Option<u16> {
        u16::try_from(self.mtu.load(Ordering::Relaxed)).ok().filter(|m| *m > 0 && *m < u16::MAX)
    }

    fn mtu(&self) -> u16 {
        static NO_CLAMP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // SLICE_GATEWAY_NO_MSS_CLAMP: leave SYNs alone (to show what the clamp prevents).
        if *NO_CLAMP.get_or_init(|| std::env::var_os("SLICE_GATEWAY_NO_MSS_CLAMP").is_some()) {
            return u16::MAX;
        }
        u16::try_from(self.mtu.load(Ordering::Relaxed)).unwrap_or(u16::MAX)
    }

    fn socket(&self) -> Arc<UdpSocket> {
        Arc::clone(&self.snapshot.load().socket)
    }

    /// Asks the loops to stop (they notice within their poll interval).
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    /// The first phase of draining (a replica asked to stop while others carry the slice):
    /// `/healthz` answers 503, so the node agents take this replica out of their routes (and
    /// Kubernetes marks the pod not ready); packets still flow both ways.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the gateway drains ([`Self::start_draining`]).
    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The last phase of draining: nothing more is sent to any current peer (no data, no
    /// keepalive, no handshake answer), so the peers' gateways find this one silent within
    /// three probe intervals and move its flows to the other replicas; what they still send
    /// here meanwhile is delivered.
    pub fn mute_peers(&self) {
        for peer in self.snapshot.load().peers.values() {
            peer.muted.store(true, Ordering::Relaxed);
        }
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Starts the packet and timer threads.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        if self.multi_queue() {
            for queue in 0..self.tun.queues() {
                let gw = Arc::clone(self);
                std::thread::Builder::new().name(format!("queue-{queue}")).spawn(move || gw.queue_loop(queue))?;
            }
        } else {
            let gw = Arc::clone(self);
            std::thread::Builder::new().name("tun-rx".into()).spawn(move || gw.tun_loop())?;
            self.spawn_udp_loop(self.socket())?;
        }
        let gw = Arc::clone(self);
        std::thread::Builder::new().name("timers".into()).spawn(move || gw.timer_loop())?;
        Ok(())
    }

    /// Whether the TUN device has several queues: one packet thread per queue
    /// ([`Self::queue_loop`]), each following the current socket, instead of `tun-rx` and
    /// `udp-rx`.
    fn multi_queue(&self) -> bool {
        self.tun.queues() > 1
    }

    fn spawn_udp_loop(self: &Arc<Self>, socket: Arc<UdpSocket>) -> io::Result<()> {
        let gw = Arc::clone(self);
        std::thread::Builder::new().name("udp-rx".into()).spawn(move || gw.udp_loop(&socket))?;
        Ok(())
    }

    /// Applies a `set` (or a configuration file): [`PeerState::apply`] decides, this carries it
    /// out. What can fail (binding the new port) is done before anything changes; only what
    /// differs is touched, so untouched peers keep their sessions.
    ///
    /// # Errors
    /// `EADDRINUSE` & co. when the new listen port cannot be bound.
    pub fn apply(self: &Arc<Self>, update: &DeviceUpdate) -> Result<(), SetError> {
        let mut guard = lock(&self.control);
        let mut state = guard.state.clone();
        let fx = state.apply(update);
        let new_socket = match fx.bind {
            Some(bind) => {
                let socket =
                    socket::bind_udp(bind.port, bind.fwmark, self.tos.load(Ordering::Relaxed)).map_err(|e| {
                        SetError {
                            errno: e.raw_os_error().unwrap_or(libc::EIO),
                            message: format!("binding UDP port {}: {e}", bind.port),
                        }
                    })?;
                state.set_listen_port(socket.local_addr().map_or(bind.port, |a| a.port()));
                Some(Arc::new(socket))
            }
            None => None,
        };

        let control = &mut *guard;
        if fx.identity_changed {
            let limit = self.handshake_rate_limit.load(Ordering::Relaxed);
            control.identity = state.private_key().map(|key| Arc::new(Identity::new(key, limit)));
        }
        let identity = control.identity.as_deref();
        let ended: Vec<Arc<Peer>> = fx.removed.iter().filter_map(|k| control.peers.remove(k)).collect();
        for key in &fx.added {
            if let Some(cfg) = state.peer(key) {
                let tunn = new_tunn(identity, *key, cfg.index, cfg.settings);
                control.peers.insert(*key, Arc::new(Peer::new(*key, cfg.index, tunn)));
            }
        }
        for key in &fx.retunn {
            if let (Some(peer), Some(cfg)) = (control.peers.get(key), state.peer(key)) {
                *lock(&peer.tunn) = new_tunn(identity, *key, cfg.index, cfg.settings);
            }
        }
        for (key, endpoint) in &fx.endpoints {
            if let Some(peer) = control.peers.get(key) {
                *lock(&peer.endpoint) = Some(*endpoint);
            }
        }
        for w in &fx.warnings {
            match w {
                // As wg(8) does, the prefix moves; said aloud, since a config that gives one
                // prefix to two peers is a mistake that silently reroutes traffic.
                Warning::AllowedIpMoved { net, from, to } => tracing::warn!(allowed_ip = %net, %from, %to,
                    "AllowedIPs given to two peers: the later takes it"),
                Warning::AllowedIpsOverlap { a, b } => tracing::warn!(%a, %b,
                    "AllowedIPs of two peers overlap: the longer prefix wins for the addresses both hold"),
            }
        }
        let socket = new_socket.clone().unwrap_or_else(|| self.socket());
        self.snapshot.store(Arc::new(Snapshot::new(
            Arc::clone(&socket),
            control.identity.clone(),
            &control.peers,
            state.routes(),
        )));
        // Sessions die with the Tunn even if a packet thread still holds the old snapshot.
        for peer in ended {
            *lock(&peer.tunn) = None;
        }
        let kick: Vec<Arc<Peer>> = fx.kick.iter().filter_map(|k| control.peers.get(k).cloned()).collect();
        control.state = state;
        drop(guard);
        if let Some(socket) = new_socket.filter(|_| !self.multi_queue()) {
            // The old receive loop sees the new socket in the snapshot and ends (the queue
            // loops of a multi-queue device follow the snapshot themselves).
            self.spawn_udp_loop(socket)
                .map_err(|e| SetError { errno: libc::EIO, message: format!("starting the receive loop: {e}") })?;
        }
        // As the kernel's WireGuard does: setting a persistent keepalive sends one at once, so a
        // gateway behind NAT opens its path (and its handshake) now rather than an interval later.
        let mut out = vec![0u8; MAX_PACKET];
        for peer in kick {
            if peer.endpoint().is_none() {
                continue;
            }
            let mut tunn = lock(&peer.tunn);
            if let Some(t) = tunn.as_mut()
                && let TunnResult::WriteToNetwork(datagram) = t.encapsulate(&[], &mut out)
            {
                socket::send_to_endpoint(&socket, &peer, datagram);
            }
        }
        if let Some(hook) = lock(&self.on_change).as_ref() {
            hook(&fx.routes);
        }
        Ok(())
    }

    /// Calls `hook` with every peer's AllowedIPs now and after every applied change (the
    /// gateway uses it to route those prefixes into its TUN device).
    pub fn set_on_change(&self, hook: AllowedIpsHook) {
        let nets = lock(&self.control).state.all_allowed_ips();
        hook(&nets);
        *lock(&self.on_change) = Some(hook);
    }

    /// What `get=1` reports.
    #[must_use]
    pub fn status(&self) -> DeviceStatus {
        let control = lock(&self.control);
        let state = &control.state;
        DeviceStatus {
            private_key: state.private_key(),
            listen_port: state.listen_port(),
            fwmark: state.fwmark(),
            peers: state
                .peers()
                .into_iter()
                .filter_map(|(key, cfg)| {
                    let p = control.peers.get(&key)?;
                    if let Some(t) = lock(&p.tunn).as_ref() {
                        p.note_handshake(t);
                    }
                    Some(PeerStatus {
                        public_key: key,
                        preshared_key: cfg.settings.preshared_key,
                        endpoint: p.endpoint(),
                        last_handshake: *lock(&p.last_handshake),
                        rx_bytes: p.counters.rx_bytes.load(Ordering::Relaxed),
                        tx_bytes: p.counters.tx_bytes.load(Ordering::Relaxed),
                        persistent_keepalive: cfg.settings.persistent_keepalive,
                        allowed_ips: cfg.allowed_ips.clone(),
                    })
                })
                .collect(),
        }
    }

    /// Calls `f` with every peer (for metrics).
    pub fn for_each_peer(&self, mut f: impl FnMut(&Peer, Option<SystemTime>)) {
        let snap = self.snapshot.load();
        for p in snap.peers.values() {
            let last = *lock(&p.last_handshake);
            f(p, last);
        }
    }

    /// The interface public key, if a private key is set.
    #[must_use]
    pub fn public_key(&self) -> Option<Key> {
        self.snapshot.load().identity.as_ref().map(|id| Key(id.public.to_bytes()))
    }
}
