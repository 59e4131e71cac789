//! TUN → UDP. A TUN read (with `IFF_VNET_HDR` + TSO: up to 64 KiB of one TCP flow) is routed by
//! its destination (longest prefix over AllowedIPs, in the published [`Snapshot`]), cut into
//! MSS-sized packets with valid checksums ([`offload::segment`]), MSS-clamped if it is a SYN,
//! encrypted under one lock of the peer's `Tunn`, and sent to the peer's endpoint as one
//! `UDP_SEGMENT` send ([`TxBatch`]).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use boringtun::noise::{Tunn, TunnResult};

use super::live::{Peer, Snapshot, add, inc, lock};
use super::{Gateway, MAX_PACKET};
use crate::offload::{self, VNET_HDR_LEN, VnetHdr};
use crate::udp::{self, RawAddr};

/// WireGuard's overhead on a data packet (header 16 + tag 16) plus padding to 16 bytes.
const WG_OVERHEAD: usize = 32 + 16;

/// What reading TUN needs: the read buffer, room for one segment, the send batch.
pub(super) struct TxState {
    buf: Vec<u8>,
    scratch: Vec<u8>,
    batch: TxBatch,
}

impl TxState {
    pub(super) fn new() -> Self {
        Self { buf: vec![0u8; VNET_HDR_LEN + MAX_PACKET], scratch: vec![0u8; MAX_PACKET], batch: TxBatch::default() }
    }
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

impl Gateway {
    /// TUN → peers. With offloads a read returns a `virtio_net_hdr` and possibly a TCP
    /// super-packet: it is cut into MSS-sized packets ([`offload::segment`]), all encrypted
    /// under one lock of the peer, and sent as one `UDP_SEGMENT` batch ([`TxBatch`]).
    ///
    /// This thread waits in poll(2) and drains the (non-blocking) TUN fd under the `tx` lock;
    /// the receive thread also drains it after each batch it wrote to TUN when the lock is free
    /// ([`Self::drain_tun`]): the ACKs that the local TCP answered to the data just written
    /// leave at once, without waking this thread (a wake-up on the ACK path is round-trip time
    /// for the sender's congestion control). The lock keeps packets in TUN order.
    ///
    /// This loop serves a device of one queue; with several, [`Self::queue_loop`] runs per queue.
    pub(super) fn tun_loop(&self) {
        let drain = std::env::var_os("SLICE_GATEWAY_NO_RX_DRAIN").is_none();
        while !self.stopping() {
            match self.tun.wait_readable(0, 500) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    tracing::error!(%err, "waiting for the TUN device failed; stopping its loop");
                    return;
                }
            }
            let mut st = lock(&self.tx[0]);
            if let Err(err) = self.drain_tun(0, &mut st, usize::MAX) {
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

    /// Reads and sends up to `max` packets from TUN queue `queue`, until none is queued.
    pub(super) fn drain_tun(&self, queue: usize, st: &mut TxState, max: usize) -> io::Result<()> {
        let vnet = self.tun.vnet_hdr();
        let TxState { buf, scratch, batch } = st;
        for _ in 0..max {
            let n = match self.tun.try_recv(queue, buf) {
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
        // Lock-free: the peers as last published (one read per TUN read, as the lock was).
        let snap = self.snapshot.load();
        let Some(group) = snap.routes.lookup(dst) else {
            inc(&self.counters.no_route);
            return;
        };
        let peer = self.member_for(group, packet);
        let Some(endpoint) = peer.endpoint() else {
            // Still encapsulate: boringtun queues the packet and starts a handshake.
            tx.endpoint = None;
            self.encapsulate_read(&snap, h, packet, scratch, peer, tx);
            return;
        };
        tx.start(&snap.socket, endpoint);
        self.encapsulate_read(&snap, h, packet, scratch, peer, tx);
    }

    /// The peer of `group` that carries `packet`: the only one, or with several the live
    /// member its flow hashes to ([`crate::multipath::choose`]).
    fn member_for<'a>(&self, group: &'a [Arc<Peer>], packet: &[u8]) -> &'a Arc<Peer> {
        if group.len() == 1 {
            return &group[0];
        }
        let probe_ms = self.probe_interval_ms();
        let members: Vec<(u64, bool)> = group.iter().map(|p| (p.hrw_id, p.is_live(probe_ms))).collect();
        let flow = crate::multipath::flow_hash(packet).unwrap_or(0);
        &group[crate::multipath::choose(flow, &members).unwrap_or(0)]
    }

    fn encapsulate_read(
        &self,
        snap: &Snapshot,
        h: Option<VnetHdr>,
        packet: &mut [u8],
        scratch: &mut [u8],
        peer: &Arc<Peer>,
        tx: &mut TxBatch,
    ) {
        let mtu = self.mtu();
        let socket = &snap.socket;
        let mut tunn = lock(&peer.tunn);
        let Some(t) = tunn.as_mut() else {
            inc(&self.counters.no_private_key);
            return;
        };
        // Taken (after `tunn`) before the first send and kept until the last: see `Peer::send`.
        let mut sending = None;
        let mut flush = |tx: &mut TxBatch| {
            sending.get_or_insert_with(|| lock(&peer.send));
            self.flush_tx(socket, peer, tx);
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
                        flush(tx);
                        tx.data = tail;
                    }
                    tx.push(len);
                    if tx.full() {
                        flush(tx);
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
        if tx.count == 0 {
            return;
        }
        // The rest goes out after `tunn` is released (another thread may encrypt for the peer
        // meanwhile), under `send`, which keeps the datagrams in counter order.
        let sending = sending.unwrap_or_else(|| lock(&peer.send));
        drop(tunn);
        self.flush_tx(socket, peer, tx);
        drop(sending);
    }

    /// Sends the batched datagrams: one `sendmsg` with `UDP_SEGMENT` when there are several,
    /// falling back to one datagram per call if the kernel refuses GSO.
    fn flush_tx(&self, socket: &UdpSocket, peer: &Peer, tx: &mut TxBatch) {
        let Some(to) = tx.to.as_ref().filter(|_| !peer.muted.load(Ordering::Relaxed)) else {
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
}
