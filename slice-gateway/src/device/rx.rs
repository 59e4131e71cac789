//! UDP → TUN. `recvmmsg` with `UDP_GRO` (a buffer holds many datagrams), MACs verified with the
//! device rate limiter (cookies under load), the peer found (handshake initiation: by the static
//! key `parse_handshake_anon` reveals; everything else: by the receiver index), decapsulated,
//! the inner source checked against that peer's AllowedIPs, TCP segments coalesced into one
//! super-packet per flow ([`Coalescer`]) and written to TUN.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use slice_api::wireguard::Key;

use super::live::{Peer, Snapshot, add, inc, lock};
use super::socket::send_to;
use super::{Gateway, MAX_PACKET};
use crate::offload::{self, Coalescer};
use crate::pathprobe;
use crate::udp::{self, RecvBatch};

/// Buffers per `recvmmsg` (each up to 64 KiB: with UDP GRO one buffer holds many datagrams).
const RECV_BATCH: usize = 16;

/// What reading the socket needs: the receive buffers, the decryption buffer, the TUN sink.
pub(super) struct RxState {
    batch: RecvBatch,
    out: Vec<u8>,
    sink: RxSink,
}

impl RxState {
    /// `vnet`: the TUN device takes a `virtio_net_hdr` (coalesced super-packets).
    pub(super) fn new(vnet: bool) -> Self {
        Self {
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
        }
    }
}

/// Where decrypted packets go until the receive batch is done.
struct RxSink {
    coalescer: Coalescer,
    /// The peer whose packets the coalescer holds (for the drop counter).
    peer: Option<Arc<Peer>>,
    vnet: bool,
}

/// Turns `UDP_GRO` on for `socket` unless `SLICE_GATEWAY_NO_GRO` is set (done by the loop
/// that starts receiving on it).
pub(super) fn enable_gro(socket: &UdpSocket) {
    if std::env::var_os("SLICE_GATEWAY_NO_GRO").is_none() && !udp::enable_gro(socket.as_raw_fd()) {
        tracing::warn!("UDP_GRO refused; receiving datagrams one by one");
    }
}

impl Gateway {
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
    ///
    /// This loop serves a device of one TUN queue; with several, [`Self::queue_loop`] receives.
    pub(super) fn udp_loop(&self, socket: &Arc<UdpSocket>) {
        let fd = socket.as_raw_fd();
        enable_gro(socket);
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
                        && let Ok(mut st) = self.tx[0].try_lock()
                        && let Err(err) = self.drain_tun(0, &mut st, 64)
                    {
                        tracing::debug!(%err, "reading the TUN device failed");
                    }
                }
                Ok(false) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => tracing::debug!(%err, "poll failed"),
            }
            if !Arc::ptr_eq(socket, &self.snapshot.load().socket) {
                return;
            }
        }
    }

    /// Receives what is queued on `socket` (without blocking), decrypts it and writes it to TUN.
    /// Returns how many buffers it received.
    pub(super) fn receive(&self, socket: &UdpSocket, rx: &mut RxState) -> io::Result<usize> {
        let RxState { batch, out, sink } = rx;
        let n = match batch.recv(socket.as_raw_fd()) {
            Ok(n) => n,
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return Ok(0),
            Err(err) => return Err(err),
        };
        // Lock-free: the peers as last published, once per batch (at most RECV_BATCH buffers).
        let snap = self.snapshot.load();
        for i in 0..n {
            let Some(r) = batch.get(i) else { continue };
            for d in offload::split_gro(r.data, r.gso_size) {
                self.handle_datagram_into(&snap, socket, d, r.from, out, sink);
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
        snap: &Snapshot,
        socket: &UdpSocket,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
        rx: &mut RxSink,
    ) {
        let Some(id) = snap.identity.as_ref() else {
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
                .and_then(|half| snap.peers.get(&Key(half.peer_static_public))),
            Packet::HandshakeResponse(p) => snap.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketCookieReply(p) => snap.by_index.get(&(p.receiver_idx >> 8)),
            Packet::PacketData(p) => snap.by_index.get(&(p.receiver_idx >> 8)),
        };
        let Some(peer) = peer else {
            inc(&self.counters.unknown_peer);
            return;
        };
        let is_handshake = matches!(packet, Packet::HandshakeInit(_) | Packet::HandshakeResponse(_));
        if matches!(packet, Packet::HandshakeInit(_)) {
            peer.note_initiation_received();
        }
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
                send_to(socket, peer, reply, from);
                // Packets queued while the handshake was pending go out now.
                while let TunnResult::WriteToNetwork(queued) = t.decapsulate(None, &[], out) {
                    send_to(socket, peer, queued, from);
                }
            }
            TunnResult::WriteToTunnelV4(inner, src) if src.is_unspecified() => {
                if let Some(probe) = pathprobe::parse(inner) {
                    self.answer_probe(socket, peer, t, probe, from);
                } else {
                    inc(&peer.counters.drop_source);
                }
            }
            TunnResult::WriteToTunnelV4(inner, src) => self.deliver(snap, peer, inner, IpAddr::V4(src), rx),
            TunnResult::WriteToTunnelV6(inner, src) => self.deliver(snap, peer, inner, IpAddr::V6(src), rx),
        }
        if is_handshake {
            peer.note_handshake(t);
        }
        drop(tunn);
        peer.note_rx();
        // Authenticated: count it and let the endpoint follow the peer (roaming).
        add(&peer.counters.rx_bytes, datagram.len());
        inc(&peer.counters.rx_packets);
        let mut ep = lock(&peer.endpoint);
        if *ep != Some(from) {
            *ep = Some(from);
        }
    }

    /// A path probe from `peer` ([`pathprobe`]): a request is answered at once with a small
    /// reply naming its size; a reply is noted in the peer's probing state. Neither goes to TUN.
    fn answer_probe(&self, socket: &UdpSocket, peer: &Peer, t: &mut Tunn, probe: pathprobe::Probe, from: SocketAddr) {
        if probe.reply {
            lock(&peer.path).on_reply(probe.round, probe.size);
            return;
        }
        let mut packet = [0u8; pathprobe::REPLY_SIZE];
        let reply = pathprobe::encode(&mut packet, pathprobe::Probe { reply: true, ..probe });
        let mut out = [0u8; pathprobe::REPLY_SIZE + 64];
        if let TunnResult::WriteToNetwork(datagram) = t.encapsulate(reply, &mut out) {
            send_to(socket, peer, datagram, from);
        }
    }

    /// Writes a decrypted packet to TUN if its source belongs to `peer` (cryptokey routing).
    fn deliver(&self, snap: &Snapshot, peer: &Arc<Peer>, inner: &mut [u8], src: IpAddr, rx: &mut RxSink) {
        if !snap.routes.lookup(src).is_some_and(|group| group.iter().any(|owner| Arc::ptr_eq(owner, peer))) {
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
}
