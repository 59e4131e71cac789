//! The gateway device: peer state, cryptokey routing, and the I/O loops around boringtun's
//! sans-IO `noise::Tunn`.
//!
//! Two packet threads and a timer thread (no async runtime):
//! - TUN → UDP ([`Gateway::tun_loop`]): a TUN read (with `IFF_VNET_HDR` + TSO: up to 64 KiB of
//!   one TCP flow) is routed by its destination (longest prefix over AllowedIPs), cut into
//!   MSS-sized packets with valid checksums ([`offload::segment`]), MSS-clamped if it is a SYN,
//!   encrypted under one lock of the peer's `Tunn`, and sent to the peer's endpoint as one
//!   `UDP_SEGMENT` send ([`TxBatch`]).
//! - UDP → TUN ([`Gateway::udp_loop`]): `recvmmsg` with `UDP_GRO` (a buffer holds many
//!   datagrams), MACs verified with the device rate limiter (cookies under load), the peer found
//!   (handshake initiation: by the static key `parse_handshake_anon` reveals; everything else: by
//!   the receiver index), decapsulated, the inner source checked against that peer's AllowedIPs,
//!   TCP segments coalesced into one super-packet per flow ([`Coalescer`]) and written to TUN.
//! - Each packet thread also serves the other direction when it is awake and that direction's
//!   lock is free: after a receive batch the TUN fd is drained (the ACKs the local TCP just
//!   produced leave at once), after a TUN batch the socket is. Both fds are non-blocking and
//!   waited on with poll(2); the `tx` and `rx` locks keep each direction in order.
//! - timers: `update_timers` per peer every 100 ms, the rate limiter reset every second
//!   ([`Gateway::timer_loop`]).
//!
//! Lock order: `tx` or `rx` (never both: the other is only `try_lock`ed after release), then
//! `state` (read or write), then a peer's `tunn`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
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
use crate::offload::{self, Coalescer, VNET_HDR_LEN, VnetHdr};
use crate::tun::Tun;
use crate::uapi::{DeviceStatus, PeerStatus, SetError};
use crate::udp::{self, RawAddr, RecvBatch};
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
/// WireGuard's overhead on a data packet (header 16 + tag 16) plus padding to 16 bytes.
const WG_OVERHEAD: usize = 32 + 16;
/// Buffers per `recvmmsg` (each up to 64 KiB: with UDP GRO one buffer holds many datagrams).
const RECV_BATCH: usize = 16;
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
    /// The TUN MTU: TCP SYNs crossing the tunnel get their MSS clamped to fit it.
    mtu: AtomicU32,
    /// Handshake messages per second before the gateway answers with cookies (counted twice
    /// per handshake, see `DEFAULT_HANDSHAKE_RATE_LIMIT`); applies to the next identity.
    handshake_rate_limit: std::sync::atomic::AtomicU64,
    /// `UDP_SEGMENT` works on the current socket (cleared after a failed GSO send).
    gso: AtomicBool,
    /// Buffers of the TUN → UDP path; whoever holds it reads TUN.
    tx: Mutex<TxState>,
    /// Buffers of the UDP → TUN path; whoever holds it reads the socket.
    rx: Mutex<RxState>,
    /// Called after every applied change with every peer's AllowedIPs (the routes into TUN).
    on_change: Mutex<Option<AllowedIpsHook>>,
}

/// What [`Gateway::set_on_change`] takes.
pub type AllowedIpsHook = Box<dyn Fn(&[IpNet]) + Send>;

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

/// What reading TUN needs: the read buffer, room for one segment, the send batch.
struct TxState {
    buf: Vec<u8>,
    scratch: Vec<u8>,
    batch: TxBatch,
}

/// Encrypted datagrams for one endpoint, concatenated for one `UDP_SEGMENT` send.
#[derive(Default)]
struct TxBatch {
    data: Vec<u8>,
    /// Size of every datagram but the last.
    seg: usize,
    count: usize,
    /// A datagram shorter than `seg` was added: it must be the last.
    closed: bool,
    endpoint: Option<SocketAddr>,
    to: Option<RawAddr>,
}

impl TxBatch {
    fn start(&mut self, socket: &UdpSocket, endpoint: SocketAddr) {
        if self.endpoint != Some(endpoint) {
            let v6 = matches!(socket.local_addr(), Ok(SocketAddr::V6(_)));
            self.to = Some(RawAddr::new(endpoint, v6));
            self.endpoint = Some(endpoint);
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.data.clear();
        self.seg = 0;
        self.count = 0;
        self.closed = false;
    }

    /// Whether a datagram of `len` bytes may follow the batched ones.
    fn accepts(&self, len: usize) -> bool {
        self.count == 0 || (!self.closed && len <= self.seg)
    }

    fn push(&mut self, len: usize) {
        if self.count == 0 {
            self.seg = len;
        } else if len < self.seg {
            self.closed = true;
        }
        self.count += 1;
    }

    fn full(&self) -> bool {
        self.closed || self.count >= gso_segments() || self.data.len() + self.seg > udp::GSO_MAX_BYTES
    }
}

/// Datagrams per GSO send (`SLICE_GATEWAY_GSO_SEGS`, default the kernel's maximum).
fn gso_segments() -> usize {
    static SEGS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SEGS.get_or_init(|| {
        std::env::var("SLICE_GATEWAY_GSO_SEGS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(udp::UDP_MAX_SEGMENTS, |n: usize| n.clamp(1, udp::UDP_MAX_SEGMENTS))
    })
}

/// What reading the socket needs: the receive buffers, the decryption buffer, the TUN sink.
struct RxState {
    batch: RecvBatch,
    out: Vec<u8>,
    sink: RxSink,
}

/// Where decrypted packets go until the receive batch is done.
struct RxSink {
    coalescer: Coalescer,
    /// The peer whose packets the coalescer holds (for the drop counter).
    peer: Option<Arc<Peer>>,
    vnet: bool,
}

impl Gateway {
    /// Opens the TUN device and binds the UDP socket (ephemeral port until configured).
    ///
    /// # Errors
    /// When the TUN device cannot be created or the socket cannot be bound.
    pub fn new(tun: Tun) -> io::Result<Arc<Self>> {
        let socket = bind_udp(0, 0)?;
        let listen_port = socket.local_addr()?.port();
        let vnet = tun.vnet_hdr();
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
            on_change: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            mtu: AtomicU32::new(1420),
            handshake_rate_limit: std::sync::atomic::AtomicU64::new(DEFAULT_HANDSHAKE_RATE_LIMIT),
            gso: AtomicBool::new(std::env::var_os("SLICE_GATEWAY_NO_GSO").is_none()),
            tx: Mutex::new(TxState {
                buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET],
                scratch: vec![0u8; MAX_PACKET],
                batch: TxBatch::default(),
            }),
            rx: Mutex::new(RxState {
                batch: RecvBatch::new(RECV_BATCH, MAX_PACKET),
                out: vec![0u8; MAX_PACKET + 64],
                sink: RxSink {
                    // SLICE_GATEWAY_NO_COALESCE: every packet on its own (for measuring the step).
                    coalescer: Coalescer::new(if std::env::var_os("SLICE_GATEWAY_NO_COALESCE").is_some() {
                        0
                    } else {
                        65_535
                    }),
                    peer: None,
                    vnet,
                },
            }),
        }))
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

    fn mtu(&self) -> u16 {
        static NO_CLAMP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        // SLICE_GATEWAY_NO_MSS_CLAMP: leave SYNs alone (to show what the clamp prevents).
        if *NO_CLAMP.get_or_init(|| std::env::var_os("SLICE_GATEWAY_NO_MSS_CLAMP").is_some()) {
            return u16::MAX;
        }
        u16::try_from(self.mtu.load(Ordering::Relaxed)).unwrap_or(u16::MAX)
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

    /// TUN → peers. With offloads a read returns a `virtio_net_hdr` and possibly a TCP
    /// super-packet: it is cut into MSS-sized packets ([`offload::segment`]), all encrypted
    /// under one lock of the peer, and sent as one `UDP_SEGMENT` batch ([`TxBatch`]).
    ///
    /// This thread waits in poll(2) and drains the (non-blocking) TUN fd under the `tx` lock;
    /// the receive thread also drains it after each batch it wrote to TUN when the lock is free
    /// ([`Self::drain_tun`]): the ACKs that the local TCP answered to the data just written
    /// leave at once, without waking this thread (a wake-up on the ACK path is round-trip time
    /// for the sender's congestion control). The lock keeps packets in TUN order.
    fn tun_loop(&self) {
        let drain = std::env::var_os("SLICE_GATEWAY_NO_RX_DRAIN").is_none();
        while !self.stopping() {
            match self.tun.wait_readable(500) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::error!(%err, "waiting for the TUN device failed; stopping its loop");
                    return;
                }
            }
            let mut st = lock(&self.tx);
            if let Err(err) = self.drain_tun(&mut st, usize::MAX) {
                tracing::error!(%err, "reading the TUN device failed; stopping its loop");
                return;
            }
            drop(st);
            if !drain {
                continue;
            }
            if let Ok(mut rx) = self.rx.try_lock()
                && let Err(err) = self.receive(&self.socket(), &mut rx)
            {
                tracing::debug!(%err, "recv failed");
            }
        }
    }

    /// Reads and sends up to `max` TUN packets, until none is queued.
    fn drain_tun(&self, st: &mut TxState, max: usize) -> io::Result<()> {
        let vnet = self.tun.vnet_hdr();
        let TxState { buf, scratch, batch } = st;
        for _ in 0..max {
            let n = match self.tun.try_recv(buf) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            };
            if vnet {
                let Some(h) = VnetHdr::parse(&buf[..n]) else {
                    inc(&self.counters.tun_invalid);
                    continue;
                };
                self.handle_tun_read(Some(h), &mut buf[VNET_HDR_LEN..n], scratch, batch);
            } else {
                self.handle_tun_read(None, &mut buf[..n], scratch, batch);
            }
        }
        Ok(())
    }

    /// What one TUN read returned (`h`: its `virtio_net_hdr` when offloads are on).
    fn handle_tun_read(&self, h: Option<VnetHdr>, packet: &mut [u8], scratch: &mut [u8], tx: &mut TxBatch) {
        let Some(dst) = Tunn::dst_address(packet) else {
            inc(&self.counters.tun_invalid);
            return;
        };
        let state = self.state();
        let Some(peer) = state.routes.lookup(dst) else {
            inc(&self.counters.no_route);
            return;
        };
        let Some(endpoint) = peer.endpoint() else {
            // Still encapsulate: boringtun queues the packet and starts a handshake.
            tx.endpoint = None;
            self.encapsulate_read(h, packet, scratch, peer, tx);
            return;
        };
        let socket = self.socket();
        tx.start(&socket, endpoint);
        self.encapsulate_read(h, packet, scratch, peer, tx);
        self.flush_tx(&socket, peer, tx);
    }

    fn encapsulate_read(
        &self,
        h: Option<VnetHdr>,
        packet: &mut [u8],
        scratch: &mut [u8],
        peer: &Arc<Peer>,
        tx: &mut TxBatch,
    ) {
        let mtu = self.mtu();
        let socket = self.socket();
        let mut tunn = lock(&peer.tunn);
        let Some(t) = tunn.as_mut() else {
            inc(&self.counters.no_private_key);
            return;
        };
        let mut one = |seg: &mut [u8]| {
            offload::clamp_mss(seg, mtu);
            let start = tx.data.len();
            // Room for the data message, or a handshake initiation (148 bytes) in its place.
            tx.data.resize(start + (seg.len() + WG_OVERHEAD).max(256), 0);
            let len = match t.encapsulate(seg, &mut tx.data[start..]) {
                TunnResult::WriteToNetwork(d) => Some(d.len()),
                TunnResult::Err(err) => {
                    tracing::debug!(peer = %peer.public_key, ?err, "encapsulate failed");
                    None
                }
                _ => None,
            };
            match len {
                Some(len) if tx.endpoint.is_some() => {
                    tx.data.truncate(start + len);
                    if !tx.accepts(len) {
                        // Does not fit the GSO rule (equal sizes, the last may be shorter):
                        // send what is batched, then this one starts a new batch.
                        let tail = tx.data.split_off(start);
                        self.flush_tx(&socket, peer, tx);
                        tx.data = tail;
                    }
                    tx.push(len);
                    if tx.full() {
                        self.flush_tx(&socket, peer, tx);
                    }
                }
                Some(_) => {
                    tx.data.truncate(start);
                    inc(&peer.counters.drop_no_endpoint);
                }
                None => tx.data.truncate(start),
            }
        };
        let result = match h {
            Some(h) => offload::segment(&h, packet, scratch, &mut one),
            None => {
                one(packet);
                Ok(())
            }
        };
        if let Err(err) = result {
            inc(&self.counters.tun_invalid);
            tracing::debug!(?err, "TUN packet not segmentable");
        }
    }

    /// Sends the batched datagrams: one `sendmsg` with `UDP_SEGMENT` when there are several,
    /// falling back to one datagram per call if the kernel refuses GSO.
    fn flush_tx(&self, socket: &UdpSocket, peer: &Peer, tx: &mut TxBatch) {
        let Some(to) = tx.to.as_ref() else {
            tx.clear();
            return;
        };
        if tx.count == 0 {
            return;
        }
        let fd = socket.as_raw_fd();
        let sent = if tx.count > 1 && self.gso.load(Ordering::Relaxed) {
            match udp::send_gso(fd, &tx.data, tx.seg, to) {
                Ok(n) => Some(n),
                Err(err) if matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)) => {
                    tracing::warn!(%err, "UDP GSO refused; sending datagrams one by one");
                    self.gso.store(false, Ordering::Relaxed);
                    None
                }
                Err(err) => {
                    add(&peer.counters.drop_io, tx.count);
                    tracing::debug!(%err, "GSO send failed");
                    tx.clear();
                    return;
                }
            }
        } else {
            None
        };
        if let Some(n) = sent {
            add(&peer.counters.tx_bytes, n);
            add(&peer.counters.tx_packets, tx.count);
        } else {
            for d in tx.data.chunks(tx.seg.max(1)) {
                match udp::send_gso(fd, d, 0, to) {
                    Ok(n) => {
                        add(&peer.counters.tx_bytes, n);
                        inc(&peer.counters.tx_packets);
                    }
                    Err(err) => {
                        inc(&peer.counters.drop_io);
                        tracing::debug!(%err, "send failed");
                    }
                }
            }
        }
        tx.clear();
    }

    /// UDP → TUN, on `socket` until it is replaced (listen port change) or the device stops.
    /// `recvmmsg` takes up to [`RECV_BATCH`] buffers per call, each possibly several datagrams
    /// coalesced by UDP GRO; decrypted TCP segments are coalesced again into super-packets for
    /// TUN ([`Coalescer`]) and written when the batch is done.
    ///
    /// Like TUN (see [`Self::tun_loop`]), the socket is read by whichever packet thread is
    /// awake: this one waits in poll(2) and receives under the `rx` lock (which keeps datagrams
    /// in order); the TUN thread also receives after each TUN batch it sent, so the ACKs that
    /// come back are handed to the local TCP without a wake-up, and the data it then sends is
    /// read by the same thread.
    fn udp_loop(&self, socket: &Arc<UdpSocket>) {
        let fd = socket.as_raw_fd();
        if std::env::var_os("SLICE_GATEWAY_NO_GRO").is_none() && !udp::enable_gro(fd) {
            tracing::warn!("UDP_GRO refused; receiving datagrams one by one");
        }
        let drain = std::env::var_os("SLICE_GATEWAY_NO_RX_DRAIN").is_none();
        while !self.stopping() {
            match udp::wait_readable(fd, 500) {
                Ok(true) => {
                    let mut rx = lock(&self.rx);
                    if let Err(err) = self.receive(socket, &mut rx) {
                        tracing::debug!(%err, "recv failed");
                    }
                    drop(rx);
                    if drain
                        && let Ok(mut st) = self.tx.try_lock()
                        && let Err(err) = self.drain_tun(&mut st, 64)
                    {
                        tracing::debug!(%err, "reading the TUN device failed");
                    }
                }
                Ok(false) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => tracing::debug!(%err, "poll failed"),
            }
            if !Arc::ptr_eq(socket, &self.socket()) {
                return;
            }
        }
    }

    /// Receives what is queued on `socket` (without blocking), decrypts it and writes it to TUN.
    /// Returns how many buffers it received.
    fn receive(&self, socket: &UdpSocket, rx: &mut RxState) -> io::Result<usize> {
        let RxState { batch, out, sink } = rx;
        let n = match batch.recv(socket.as_raw_fd()) {
            Ok(n) => n,
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return Ok(0),
            Err(err) => return Err(err),
        };
        for i in 0..n {
            let Some(r) = batch.get(i) else { continue };
            for d in offload::split_gro(r.data, r.gso_size) {
                self.handle_datagram_into(socket, d, r.from, out, sink);
            }
        }
        self.flush_rx(sink);
        Ok(n)
    }

    /// Writes what the coalescer holds to TUN.
    fn flush_rx(&self, rx: &mut RxSink) {
        let tun = &self.tun;
        let peer = rx.peer.take();
        let mut failed = 0usize;
        rx.coalescer.flush(&mut |b: &[u8]| {
            if tun.send(b).is_err() {
                failed += 1;
            }
        });
        if let Some(p) = peer {
            add(&p.counters.drop_io, failed);
        }
    }

    /// One datagram from the network; a decrypted packet goes to `rx`.
    fn handle_datagram_into(
        &self,
        socket: &UdpSocket,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
        rx: &mut RxSink,
    ) {
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
            TunnResult::WriteToTunnelV4(inner, src) => self.deliver(&state, peer, inner, IpAddr::V4(src), rx),
            TunnResult::WriteToTunnelV6(inner, src) => self.deliver(&state, peer, inner, IpAddr::V6(src), rx),
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
    fn deliver(&self, state: &State, peer: &Arc<Peer>, inner: &mut [u8], src: IpAddr, rx: &mut RxSink) {
        if !state.routes.lookup(src).is_some_and(|owner| Arc::ptr_eq(owner, peer)) {
            inc(&peer.counters.drop_source);
            return;
        }
        offload::clamp_mss(inner, self.mtu());
        if !rx.vnet {
            if self.tun.send(inner).is_err() {
                inc(&peer.counters.drop_io);
            }
            return;
        }
        if rx.peer.as_ref().is_some_and(|p| !Arc::ptr_eq(p, peer)) {
            self.flush_rx(rx);
        }
        rx.peer = Some(Arc::clone(peer));
        let tun = &self.tun;
        let mut failed = 0usize;
        rx.coalescer.push(inner, &mut |b: &[u8]| {
            if tun.send(b).is_err() {
                failed += 1;
            }
        });
        add(&peer.counters.drop_io, failed);
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
                    let limit = self.handshake_rate_limit.load(Ordering::Relaxed);
                    let rate_limiter = Arc::new(RateLimiter::new(&public, limit));
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
        let mut kick = Vec::new();
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
                    // As wg(8) does, the prefix moves; said aloud, since a config that gives
                    // one prefix to two peers is a mistake that silently reroutes traffic.
                    tracing::warn!(allowed_ip = %net, from = %prev.public_key, to = %peer.public_key,
                        "AllowedIPs given to two peers: the later takes it");
                    lock(&prev.allowed_ips).retain(|n| n != net);
                }
                let mut mine = lock(&peer.allowed_ips);
                if !mine.contains(net) {
                    mine.push(*net);
                }
            }
            if pu.persistent_keepalive.is_some_and(|k| k > 0) {
                kick.push(peer);
            }
        }
        let by_peer: Vec<(Key, Vec<IpNet>)> =
            state.peers.values().map(|p| (p.public_key, lock(&p.allowed_ips).clone())).collect();
        for (a, b) in overlapping_allowed_ips(&by_peer) {
            tracing::warn!(%a, %b, "AllowedIPs of two peers overlap: the longer prefix wins for the addresses both hold");
        }
        let mut nets: Vec<IpNet> = by_peer.into_iter().flat_map(|(_, nets)| nets).collect();
        drop(state);
        // As the kernel's WireGuard does: setting a persistent keepalive sends one at once, so a
        // gateway behind NAT opens its path (and its handshake) now rather than an interval later.
        let socket = self.socket();
        let mut out = vec![0u8; MAX_PACKET];
        for peer in kick {
            if peer.endpoint().is_none() {
                continue;
            }
            let mut tunn = lock(&peer.tunn);
            if let Some(t) = tunn.as_mut()
                && let TunnResult::WriteToNetwork(datagram) = t.encapsulate(&[], &mut out)
            {
                self.send_to_endpoint(&socket, &peer, datagram);
            }
        }
        nets.sort();
        nets.dedup();
        if let Some(hook) = lock(&self.on_change).as_ref() {
            hook(&nets);
        }
        Ok(())
    }

    /// Calls `hook` with every peer's AllowedIPs now and after every applied change (the
    /// gateway uses it to route those prefixes into its TUN device).
    pub fn set_on_change(&self, hook: AllowedIpsHook) {
        let nets: Vec<IpNet> = {
            let state = self.state();
            let mut v: Vec<IpNet> = state.peers.values().flat_map(|p| lock(&p.allowed_ips).clone()).collect();
            v.sort();
            v.dedup();
            v
        };
        hook(&nets);
        *lock(&self.on_change) = Some(hook);
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

/// Pairs of prefixes held by different peers that overlap (one contains the other), each pair
/// once: what a configuration that routes the same addresses to two peers looks like.
fn overlapping_allowed_ips(by_peer: &[(Key, Vec<IpNet>)]) -> Vec<(IpNet, IpNet)> {
    let mut out = Vec::new();
    for (i, (_, mine)) in by_peer.iter().enumerate() {
        for (_, theirs) in &by_peer[i + 1..] {
            for a in mine {
                for b in theirs {
                    if a.contains(&b.network()) || b.contains(&a.network()) {
                        out.push((*a, *b));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod overlap_tests {
    use super::*;

    #[test]
    fn overlapping_allowed_ips_of_different_peers_are_found() {
        let key = |b: u8| Key([b; 32]);
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let peers = vec![
            (key(1), vec![net("10.80.0.0/20"), net("fd00::/64")]),
            (key(2), vec![net("10.80.16.0/20")]),
            (key(3), vec![net("10.80.1.0/24"), net("10.80.17.0/24")]),
        ];
        assert_eq!(
            overlapping_allowed_ips(&peers),
            [(net("10.80.0.0/20"), net("10.80.1.0/24")), (net("10.80.16.0/20"), net("10.80.17.0/24"))]
        );
        // The planner's carving (disjoint cluster prefixes) has none; one peer's own nets never count.
        let disjoint =
            vec![(key(1), vec![net("10.80.0.0/20"), net("10.80.0.0/24")]), (key(2), vec![net("10.80.16.0/20")])];
        assert!(overlapping_allowed_ips(&disjoint).is_empty());
    }
}
