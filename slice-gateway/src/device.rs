//! The gateway device: peer state, cryptokey routing, and the I/O loops around boringtun's
//! sans-IO `noise::Tunn`.
//!
//! Threads (no async runtime: every loop blocks on one fd, which keeps the per-packet path a
//! plain function that later batching — `recvmmsg`/`sendmmsg`, TUN offloads, one loop pair per
//! queue — can wrap):
//! - TUN → UDP: read a packet, longest-prefix-match its destination to a peer, encapsulate,
//!   send to the peer's endpoint ([`Gateway::tun_loop`]);
//! - UDP → TUN: verify MACs with the device rate limiter (cookies under load), find the peer
//!   (handshake initiation: by the static key `parse_handshake_anon` reveals; everything else:
//!   by the receiver index), decapsulate, check the inner source against that peer's AllowedIPs,
//!   write to TUN ([`Gateway::udp_loop`]);
//! - timers: `update_timers` per peer every 100 ms, the rate limiter reset every second
//!   ([`Gateway::timer_loop`]).
//!
//! Lock order: `state` (read or write) before a peer's `tunn`; nothing else nests.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;

use crate::allowed_ips::AllowedIps;
use crate::config::DeviceUpdate;
use crate::key::Key;
use crate::tun::Tun;
use crate::uapi::{DeviceStatus, PeerStatus, SetError};

/// Handshakes per second before the device answers with cookies (boringtun's device uses 100).
/// Doubled because each handshake is counted twice: once by our peer lookup and once inside
/// `Tunn::decapsulate` (boringtun keeps `handle_verified_packet` crate-private, so an external
/// I/O loop cannot skip the second verification).
const HANDSHAKE_RATE_LIMIT: u64 = 2 * 100;
/// How often `update_timers` runs for every peer.
pub const TIMER_TICK: Duration = Duration::from_millis(100);
/// Largest UDP datagram / TUN packet we handle.
const MAX_PACKET: usize = 65_536;
/// Socket buffers: large, so bursts under BBR do not overflow the receive queue (LAB-FACTS:
/// boringtun never sets them and loses packets to `UdpRcvbufErrors`).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

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

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Ordering::Relaxed);
}

/// Settings of a peer that shape its `Tunn` (changing them rebuilds it: boringtun has no setter
/// for the keepalive or the preshared key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct TunnSettings {
    preshared_key: Option<Key>,
    persistent_keepalive: u16,
}

/// One peer.
pub struct Peer {
    pub public_key: Key,
    /// 24-bit index; boringtun puts it in the top bits of every session index (`index << 8`), so
    /// `receiver_idx >> 8` of an incoming message names the peer.
    index: u32,
    tunn: Mutex<Option<Tunn>>,
    settings: Mutex<TunnSettings>,
    /// Follows the source of the last authenticated datagram (roaming).
    endpoint: Mutex<Option<SocketAddr>>,
    /// This peer's prefixes, in the order they were added (for `get`).
    allowed_ips: Mutex<Vec<IpNet>>,
    last_handshake: Mutex<Option<SystemTime>>,
    pub counters: PeerCounters,
}

impl Peer {
    fn endpoint(&self) -> Option<SocketAddr> {
        *lock(&self.endpoint)
    }

    /// Refreshes the cached wall-clock handshake time from boringtun's age of the session.
    /// boringtun reports only an age (and nothing once the sessions expire); `wg` wants a Unix
    /// time that stays after expiry, so we keep our own.
    fn note_handshake(&self, tunn: &Tunn) {
        if let Some(age) = tunn.time_since_last_handshake() {
            let at = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
            let mut last = lock(&self.last_handshake);
            // Only move on a new handshake; recomputing `now - age` jitters by microseconds.
            if last.is_none_or(|prev| at.duration_since(prev).is_ok_and(|d| d > Duration::from_millis(50))) {
                *last = Some(at);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The interface key pair with the rate limiter bound to it.
struct Identity {
    key: Key,
    secret: StaticSecret,
    public: PublicKey,
    rate_limiter: Arc<RateLimiter>,
}

struct State {
    identity: Option<Identity>,
    listen_port: u16,
    fwmark: u32,
    peers: HashMap<Key, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    routes: AllowedIps<Arc<Peer>>,
    next_index: u32,
}

impl State {
    fn new_tunn(&self, peer_key: Key, index: u32, settings: TunnSettings) -> Option<Tunn> {
        let id = self.identity.as_ref()?;
        Some(Tunn::new(
            id.secret.clone(),
            PublicKey::from(peer_key.0),
            settings.preshared_key.map(|k| k.0),
            (settings.persistent_keepalive > 0).then_some(settings.persistent_keepalive),
            index,
            Some(Arc::clone(&id.rate_limiter)),
        ))
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.by_index.contains_key(&self.next_index) {
                return self.next_index;
            }
        }
    }

    fn remove_peer(&mut self, key: &Key) {
        if let Some(peer) = self.peers.remove(key) {
            self.by_index.remove(&peer.index);
            self.routes.retain(|p| !Arc::ptr_eq(p, &peer));
            // Sessions die with the Tunn even if a loop still holds the Arc for a moment.
            *lock(&peer.tunn) = None;
        }
    }
}

/// The running gateway.
pub struct Gateway {
    pub name: String,
    tun: Tun,
    socket: RwLock<Arc<UdpSocket>>,
    state: RwLock<State>,
    pub counters: DeviceCounters,
    shutdown: AtomicBool,
}

/// Binds the WireGuard UDP socket: dual-stack `[::]:port`, or `0.0.0.0:port` where IPv6 is off.
fn bind_udp(port: u16, fwmark: u32) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).or_else(|_| UdpSocket::bind(("0.0.0.0", port)))?;
    let fd = sock.as_raw_fd();
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            // Not root: the plain option, capped by net.core.[rw]mem_max.
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    if fwmark != 0 {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, fwmark as libc::c_int)?;
    }
    // The receive loop wakes up now and then to notice a rebind or shutdown.
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(sock)
}

fn setsockopt_int(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed; the fd is open.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&raw const value).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// v4-mapped IPv6 (from a dual-stack socket) back to IPv4, so endpoints print and compare as
/// `wg` shows them.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

impl Gateway {
    /// Opens the TUN device and binds the UDP socket (ephemeral port until configured).
    ///
    /// # Errors
    /// When the TUN device cannot be created or the socket cannot be bound.
    pub fn new(tun: Tun) -> io::Result<Arc<Self>> {
        let socket = bind_udp(0, 0)?;
        let listen_port = socket.local_addr()?.port();
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.subsec_nanos());
        Ok(Arc::new(Self {
            name: tun.name().to_string(),
            tun,
            socket: RwLock::new(Arc::new(socket)),
            state: RwLock::new(State {
                identity: None,
                listen_port,
                fwmark: 0,
                peers: HashMap::new(),
                by_index: HashMap::new(),
                routes: AllowedIps::new(),
                next_index: seed & 0x00ff_ffff,
            }),
            counters: DeviceCounters::default(),
            shutdown: AtomicBool::new(false),
        }))
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn socket(&self) -> Arc<UdpSocket> {
        Arc::clone(&self.socket.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Asks the loops to stop (they notice within their poll interval).
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Starts the packet and timer threads.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let gw = Arc::clone(self);
        std::thread::Builder::new().name("tun-rx".into()).spawn(move || gw.tun_loop())?;
        self.spawn_udp_loop(self.socket())?;
        let gw = Arc::clone(self);
        std::thread::Builder::new().name("timers".into()).spawn(move || gw.timer_loop())?;
        Ok(())
    }

    fn spawn_udp_loop(self: &Arc<Self>, socket: Arc<UdpSocket>) -> io::Result<()> {
        let gw = Arc::clone(self);
        std::thread::Builder::new().name("udp-rx".into()).spawn(move || gw.udp_loop(&socket))?;
        Ok(())
    }

    /// Sends one datagram to `to` on the current socket and counts it for `peer`.
    fn send_to(&self, socket: &UdpSocket, peer: &Peer, datagram: &[u8], to: SocketAddr) {
        let to = match (to, socket.local_addr()) {
            (SocketAddr::V4(v4), Ok(SocketAddr::V6(_))) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => to,
        };
        match socket.send_to(datagram, to) {
            Ok(n) => {
                add(&peer.counters.tx_bytes, n);
                inc(&peer.counters.tx_packets);
            }
            Err(err) => {
                inc(&peer.counters.drop_io);
                tracing::debug!(peer = %peer.public_key, %to, %err, "send failed");
            }
        }
    }

    fn send_to_endpoint(&self, socket: &UdpSocket, peer: &Peer, datagram: &[u8]) {
        match peer.endpoint() {
            Some(ep) => self.send_to(socket, peer, datagram, ep),
            None => inc(&peer.counters.drop_no_endpoint),
        }
    }

    /// TUN → peers.
    fn tun_loop(&self) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; MAX_PACKET + 64];
        while !self.stopping() {
            let n = match self.tun.recv(&mut buf) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::error!(%err, "reading the TUN device failed; stopping its loop");
                    return;
                }
            };
            self.handle_tun_packet(&buf[..n], &mut out);
        }
    }

    /// One packet from TUN: route, encapsulate, send. (The unit a batched loop will call.)
    pub fn handle_tun_packet(&self, packet: &[u8], out: &mut [u8]) {
        let Some(dst) = Tunn::dst_address(packet) else {
            inc(&self.counters.tun_invalid);
            return;
        };
        let state = self.state();
        let Some(peer) = state.routes.lookup(dst) else {
            inc(&self.counters.no_route);
            return;
        };
        let mut tunn = lock(&peer.tunn);
        let Some(t) = tunn.as_mut() else {
            inc(&self.counters.no_private_key);
            return;
        };
        match t.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => {
                drop(tunn);
                self.send_to_endpoint(&self.socket(), peer, datagram);
            }
            TunnResult::Err(err) => tracing::debug!(peer = %peer.public_key, ?err, "encapsulate failed"),
            _ => {}
        }
    }

    /// UDP → TUN, on `socket` until it is replaced (listen port change) or the device stops.
    fn udp_loop(&self, socket: &Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_PACKET];
        let mut out = vec![0u8; MAX_PACKET + 64];
        while !self.stopping() {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => self.handle_datagram(socket, &buf[..n], canonical(from), &mut out),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(err) => tracing::debug!(%err, "recv failed"),
            }
            if !Arc::ptr_eq(socket, &self.socket()) {
                return;
            }
        }
    }

    /// One datagram from the network. (The unit a batched loop will call.)
    pub fn handle_datagram(&self, socket: &UdpSocket, datagram: &[u8], from: SocketAddr, out: &mut [u8]) {
        let state = self.state();
        let Some(id) = state.identity.as_ref() else {
            inc(&self.counters.no_private_key);
            return;
        };
        let packet = match id.rate_limiter.verify_packet(Some(from.ip()), datagram, out) {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                inc(&self.counters.cookie_replies);
                let _ = socket.send_to(cookie, from);
                return;
            }
            Err(_) => {
                // Not a WireGuard message, or bad mac1 (UnderLoad needs no source: never here).
                inc(&self.counters.garbage);
                return;
            }
        };
        let peer = match &packet {
            Packet::HandshakeInit(p) => parse_handshake_anon(&id.secret, &id.public, p)
                .ok()
                .and_then(|half| state.peers.get(&Key(half.peer_static_public))),
            Packet::HandshakeResponse(p) => state.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketCookieReply(p) => state.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketData(p) => state.by_index.get(&(p.receiver_idx >> 8)),
        };
        let Some(peer) = peer else {
            inc(&self.counters.unknown_peer);
            return;
        };
        let is_handshake = matches!(packet, Packet::HandshakeInit(_) | Packet::HandshakeResponse(_));
        let mut tunn = lock(&peer.tunn);
        let Some(t) = tunn.as_mut() else { return };
        match t.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::Done => {}
            TunnResult::Err(err) => {
                inc(&peer.counters.drop_auth);
                tracing::trace!(peer = %peer.public_key, ?err, "datagram rejected");
                return;
            }
            TunnResult::WriteToNetwork(reply) => {
                self.send_to(socket, peer, reply, from);
                // Packets queued while the handshake was pending go out now.
                while let TunnResult::WriteToNetwork(queued) = t.decapsulate(None, &[], out) {
                    self.send_to(socket, peer, queued, from);
                }
            }
            TunnResult::WriteToTunnelV4(inner, src) => self.deliver(&state, peer, inner, IpAddr::V4(src)),
            TunnResult::WriteToTunnelV6(inner, src) => self.deliver(&state, peer, inner, IpAddr::V6(src)),
        }
        if is_handshake {
            peer.note_handshake(t);
        }
        drop(tunn);
        // Authenticated: count it and let the endpoint follow the peer (roaming).
        add(&peer.counters.rx_bytes, datagram.len());
        inc(&peer.counters.rx_packets);
        let mut ep = lock(&peer.endpoint);
        if *ep != Some(from) {
            *ep = Some(from);
        }
    }

    /// Writes a decrypted packet to TUN if its source belongs to `peer` (cryptokey routing).
    fn deliver(&self, state: &State, peer: &Arc<Peer>, inner: &[u8], src: IpAddr) {
        if !state.routes.lookup(src).is_some_and(|owner| Arc::ptr_eq(owner, peer)) {
            inc(&peer.counters.drop_source);
            return;
        }
        if self.tun.send(inner).is_err() {
            inc(&peer.counters.drop_io);
        }
    }

    /// Drives every peer's timers (handshake retries, rekeying, keepalives, expiry).
    fn timer_loop(&self) {
        let mut out = vec![0u8; MAX_PACKET];
        let mut last_reset = Instant::now();
        while !self.stopping() {
            std::thread::sleep(TIMER_TICK);
            let state = self.state();
            if last_reset.elapsed() >= Duration::from_secs(1) {
                if let Some(id) = &state.identity {
                    id.rate_limiter.reset_count();
                }
                last_reset = Instant::now();
            }
            let socket = self.socket();
            for peer in state.peers.values() {
                let mut tunn = lock(&peer.tunn);
                let Some(t) = tunn.as_mut() else { continue };
                match t.update_timers(&mut out) {
                    TunnResult::WriteToNetwork(datagram) => self.send_to_endpoint(&socket, peer, datagram),
                    TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
                    TunnResult::Err(err) => tracing::debug!(peer = %peer.public_key, ?err, "timer error"),
                    _ => {}
                }
                peer.note_handshake(t);
            }
        }
    }

    /// Applies a `set` (or a configuration file): validates what can fail first (binding the
    /// new port), then changes only what differs, so untouched peers keep their sessions.
    ///
    /// # Errors
    /// `EADDRINUSE` & co. when the new listen port cannot be bound.
    pub fn apply(self: &Arc<Self>, update: &DeviceUpdate) -> Result<(), SetError> {
        let mut state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fwmark = update.fwmark.unwrap_or(state.fwmark);
        if update.listen_port.is_some_and(|p| p != state.listen_port) || fwmark != state.fwmark {
            let port = update.listen_port.unwrap_or(state.listen_port);
            let socket = bind_udp(port, fwmark).map_err(|e| SetError {
                errno: e.raw_os_error().unwrap_or(libc::EIO),
                message: format!("binding UDP port {port}: {e}"),
            })?;
            state.listen_port = socket.local_addr().map_or(port, |a| a.port());
            state.fwmark = fwmark;
            let socket = Arc::new(socket);
            *self.socket.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&socket);
            self.spawn_udp_loop(socket)
                .map_err(|e| SetError { errno: libc::EIO, message: format!("starting the receive loop: {e}") })?;
        }

        if let Some(key) = update.private_key {
            let changed =
                state.identity.as_ref().map(|id| id.key) != Some(key) && !(key.is_zero() && state.identity.is_none());
            if changed {
                state.identity = (!key.is_zero()).then(|| {
                    let secret = StaticSecret::from(key.0);
                    let public = PublicKey::from(&secret);
                    let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
                    Identity { key, secret, public, rate_limiter }
                });
                // A peer with our own public key is meaningless (wg drops it too).
                if let Some(own) = state.identity.as_ref().map(|id| Key(id.public.to_bytes())) {
                    state.remove_peer(&own);
                }
                for peer in state.peers.values() {
                    let settings = *lock(&peer.settings);
                    *lock(&peer.tunn) = state.new_tunn(peer.public_key, peer.index, settings);
                }
            }
        }

        if update.replace_peers {
            let keep: Vec<Key> = update.peers.iter().filter(|p| !p.remove).map(|p| p.public_key).collect();
            let gone: Vec<Key> = state.peers.keys().filter(|k| !keep.contains(k)).copied().collect();
            for key in gone {
                state.remove_peer(&key);
            }
        }

        let own = state.identity.as_ref().map(|id| Key(id.public.to_bytes()));
        for pu in &update.peers {
            if pu.remove {
                state.remove_peer(&pu.public_key);
                continue;
            }
            if Some(pu.public_key) == own {
                continue;
            }
            let peer = match state.peers.get(&pu.public_key) {
                Some(p) => Arc::clone(p),
                None if pu.update_only => continue,
                None => {
                    let index = state.alloc_index();
                    let peer = Arc::new(Peer {
                        public_key: pu.public_key,
                        index,
                        tunn: Mutex::new(state.new_tunn(pu.public_key, index, TunnSettings::default())),
                        settings: Mutex::new(TunnSettings::default()),
                        endpoint: Mutex::new(None),
                        allowed_ips: Mutex::new(Vec::new()),
                        last_handshake: Mutex::new(None),
                        counters: PeerCounters::default(),
                    });
                    state.peers.insert(pu.public_key, Arc::clone(&peer));
                    state.by_index.insert(index, Arc::clone(&peer));
                    peer
                }
            };
            if let Some(ep) = pu.endpoint {
                *lock(&peer.endpoint) = Some(ep);
            }
            let old = *lock(&peer.settings);
            // `wg setconf` (replace_peers) states the whole peer: what it omits is off.
            let mut new = if update.replace_peers { TunnSettings::default() } else { old };
            if let Some(psk) = pu.preshared_key {
                new.preshared_key = (!psk.is_zero()).then_some(psk);
            }
            if let Some(ka) = pu.persistent_keepalive {
                new.persistent_keepalive = ka;
            }
            if new != old {
                *lock(&peer.settings) = new;
                *lock(&peer.tunn) = state.new_tunn(peer.public_key, peer.index, new);
            }
            if pu.replace_allowed_ips {
                state.routes.retain(|p| !Arc::ptr_eq(p, &peer));
                lock(&peer.allowed_ips).clear();
            }
            for net in &pu.allowed_ips {
                if let Some(prev) = state.routes.insert(*net, Arc::clone(&peer))
                    && !Arc::ptr_eq(&prev, &peer)
                {
                    lock(&prev.allowed_ips).retain(|n| n != net);
                }
                let mut mine = lock(&peer.allowed_ips);
                if !mine.contains(net) {
                    mine.push(*net);
                }
            }
        }
        Ok(())
    }

    /// What `get=1` reports.
    #[must_use]
    pub fn status(&self) -> DeviceStatus {
        let state = self.state();
        let mut peers: Vec<&Arc<Peer>> = state.peers.values().collect();
        peers.sort_by_key(|p| p.index);
        DeviceStatus {
            private_key: state.identity.as_ref().map(|id| id.key),
            listen_port: state.listen_port,
            fwmark: state.fwmark,
            peers: peers
                .into_iter()
                .map(|p| {
                    if let Some(t) = lock(&p.tunn).as_ref() {
                        p.note_handshake(t);
                    }
                    let settings = *lock(&p.settings);
                    PeerStatus {
                        public_key: p.public_key,
                        preshared_key: settings.preshared_key,
                        endpoint: p.endpoint(),
                        last_handshake: *lock(&p.last_handshake),
                        rx_bytes: p.counters.rx_bytes.load(Ordering::Relaxed),
                        tx_bytes: p.counters.tx_bytes.load(Ordering::Relaxed),
                        persistent_keepalive: settings.persistent_keepalive,
                        allowed_ips: lock(&p.allowed_ips).clone(),
                    }
                })
                .collect(),
        }
    }

    /// Calls `f` with every peer (for metrics).
    pub fn for_each_peer(&self, mut f: impl FnMut(&Peer, Option<SystemTime>)) {
        let state = self.state();
        for p in state.peers.values() {
            let last = *lock(&p.last_handshake);
            f(p, last);
        }
    }

    /// The interface public key, if a private key is set.
    #[must_use]
    pub fn public_key(&self) -> Option<Key> {
        self.state().identity.as_ref().map(|id| Key(id.public.to_bytes()))
    }
}
