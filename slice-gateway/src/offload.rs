//! Pure packet work for the offloads: the `virtio_net_hdr` in front of every TUN packet
//! (`IFF_VNET_HDR`), Internet checksums, segmenting a TSO super-packet from TUN into MSS-sized
//! IP packets, coalescing decrypted TCP segments back into one super-packet for TUN, splitting
//! a UDP GRO buffer into datagrams, and MSS clamping. No I/O here: everything is unit-tested.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Size of `struct virtio_net_hdr` (the TUN default, `TUNSETVNETHDRSZ` not used).
pub const VNET_HDR_LEN: usize = 10;

pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr` (native endian: TUN on a little-endian host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    #[must_use]
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(Self { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
    }

    #[must_use]
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// One's-complement sum of `data` (big-endian 16-bit words, odd byte padded) added to `acc`,
/// not folded.
#[must_use]
pub fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes(c.try_into().expect("8 bytes"));
        acc = acc.wrapping_add(v >> 32).wrapping_add(v & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits (not inverted).
#[must_use]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` (inverted, ready to store).
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// Sum of the TCP/UDP pseudo-header.
fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
        _ => 0,
    };
    acc += u64::from(proto) + len as u64;
    acc
}

/// Parsed IP header: version, header length, L4 protocol, addresses.
#[derive(Debug, Clone, Copy)]
struct Ip {
    v6: bool,
    hlen: usize,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
}

fn parse_ip(p: &[u8]) -> Option<Ip> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let hlen = usize::from(p[0] & 0x0f) * 4;
            if hlen < 20 || p.len() < hlen {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
            Some(Ip { v6: false, hlen, proto: p[9], src, dst })
        }
        6 if p.len() >= 40 => {
            let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?));
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?));
            // Extension headers are not parsed: only TCP directly after the fixed header counts.
            Some(Ip { v6: true, hlen: 40, proto: p[6], src, dst })
        }
        _ => None,
    }
}

/// Writes the IP length field for a packet of `total` bytes and refreshes the IPv4 header
/// checksum.
fn set_ip_len(p: &mut [u8], ip: &Ip, total: usize) {
    if ip.v6 {
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&p[..ip.hlen]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// Computes the full TCP checksum of `p` (an IP packet holding one TCP segment) in place.
fn tcp_checksum(p: &mut [u8], ip: &Ip) {
    let l4 = &mut p[ip.hlen..];
    l4[16..18].copy_from_slice(&[0, 0]);
    let acc = sum16(l4, pseudo_sum(ip.src, ip.dst, PROTO_TCP, l4.len()));
    let c = !fold(acc);
    l4[16..18].copy_from_slice(&c.to_be_bytes());
}

/// Finishes a `NEEDS_CSUM` packet: the field at `csum_start + csum_offset` holds the
/// pseudo-header sum; the checksum over `csum_start..` goes there. Returns false when the
/// offsets do not fit the packet.
pub fn complete_checksum(p: &mut [u8], h: &VnetHdr) -> bool {
    let start = usize::from(h.csum_start);
    let at = start + usize::from(h.csum_offset);
    if at + 2 > p.len() || start > p.len() {
        return false;
    }
    let c = checksum(&p[start..]);
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Why a packet from TUN could not be turned into plain IP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentError {
    /// Not IPv4/IPv6 TCP as the GSO type says, or headers cut short.
    Malformed,
    /// A GSO type we did not ask for (UDP).
    Unsupported,
}

/// Turns what one TUN read returned (`vnet` header + `packet`) into plain IP packets with
/// valid checksums, calling `emit` for each: a packet without GSO is finished in place
/// (checksum completed if the kernel left it partial) and emitted as is; a TSO super-packet is
/// cut into segments of at most `gso_size` payload bytes, each with its own IP header (length,
/// IPv4 id + i, header checksum) and TCP header (sequence number advanced, FIN/PSH only on the
/// last segment, CWR only on the first) and a full TCP checksum. `scratch` must hold the
/// largest segment (headers + `gso_size`).
///
/// # Errors
/// [`SegmentError`] for packets that cannot be segmented; nothing is emitted then.
pub fn segment(
    h: &VnetHdr,
    packet: &mut [u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&mut [u8]),
) -> Result<(), SegmentError> {
    let gso = h.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
    if gso == VIRTIO_NET_HDR_GSO_NONE {
        if h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !complete_checksum(packet, h) {
            return Err(SegmentError::Malformed);
        }
        emit(packet);
        return Ok(());
    }
    if gso != VIRTIO_NET_HDR_GSO_TCPV4 && gso != VIRTIO_NET_HDR_GSO_TCPV6 {
        return Err(SegmentError::Unsupported);
    }
    let ip = parse_ip(packet).ok_or(SegmentError::Malformed)?;
    if ip.proto != PROTO_TCP || ip.v6 != (gso == VIRTIO_NET_HDR_GSO_TCPV6) || packet.len() < ip.hlen + 20 {
        return Err(SegmentError::Malformed);
    }
    let tcp_hlen = usize::from(packet[ip.hlen + 12] >> 4) * 4;
    let hdr_len = ip.hlen + tcp_hlen;
    let mss = usize::from(h.gso_size);
    if tcp_hlen < 20 || packet.len() < hdr_len || mss == 0 || scratch.len() < hdr_len + mss {
        return Err(SegmentError::Malformed);
    }
    let payload_len = packet.len() - hdr_len;
    if payload_len <= mss {
        // Nothing to cut: finish the checksum and send as is.
        let total = packet.len();
        set_ip_len(packet, &ip, total);
        tcp_checksum(packet, &ip);
        emit(packet);
        return Ok(());
    }
    let (headers, payload) = packet.split_at(hdr_len);
    let seq0 = u32::from_be_bytes(headers[ip.hlen + 4..ip.hlen + 8].try_into().expect("4 bytes"));
    let id0 = if ip.v6 { 0 } else { u16::from_be_bytes([headers[4], headers[5]]) };
    let flags0 = headers[ip.hlen + 13];
    let n = payload_len.div_ceil(mss);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let total = hdr_len + chunk.len();
        let seg = &mut scratch[..total];
        seg[..hdr_len].copy_from_slice(headers);
        seg[hdr_len..].copy_from_slice(chunk);
        if !ip.v6 {
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        }
        set_ip_len(seg, &ip, total);
        let tcp = &mut seg[ip.hlen..];
        tcp[4..8].copy_from_slice(&seq0.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut flags = flags0;
        if i + 1 < n {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        tcp[13] = flags;
        tcp_checksum(seg, &ip);
        emit(seg);
    }
    Ok(())
}

/// Splits a buffer that UDP GRO filled with coalesced datagrams: `gso_size` from the
/// `UDP_GRO` control message (0 or absent: one datagram), the last one may be shorter.
pub fn split_gro(buf: &[u8], gso_size: usize) -> impl Iterator<Item = &[u8]> {
    let size = if gso_size == 0 { buf.len().max(1) } else { gso_size };
    buf.chunks(size)
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) in `p` (an IP packet with a complete
/// checksum) so that its segments fit an `mtu` (MTU − IP header − 20), updating the TCP
/// checksum incrementally (RFC 1624). Returns whether the packet changed.
pub fn clamp_mss(p: &mut [u8], mtu: u16) -> bool {
    let Some(ip) = parse_ip(p) else { return false };
    if ip.proto != PROTO_TCP || p.len() < ip.hlen + 20 {
        return false;
    }
    let max_mss = mtu.saturating_sub(if ip.v6 { 40 } else { 20 } + 20);
    // Only the first fragment carries the TCP header.
    if !ip.v6 && u16::from_be_bytes([p[6], p[7]]) & 0x1fff != 0 {
        return false;
    }
    let tcp_start = ip.hlen;
    if p[tcp_start + 13] & TCP_SYN == 0 {
        return false;
    }
    let tcp_hlen = usize::from(p[tcp_start + 12] >> 4) * 4;
    if tcp_hlen < 20 || p.len() < tcp_start + tcp_hlen {
        return false;
    }
    let mut i = tcp_start + 20;
    let end = tcp_start + tcp_hlen;
    while i < end {
        match p[i] {
            0 => return false,
            1 => i += 1,
            kind => {
                let Some(&len) = p.get(i + 1) else { return false };
                let len = usize::from(len);
                if len < 2 || i + len > end {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([p[i + 2], p[i + 3]]);
                    if old <= max_mss {
                        return false;
                    }
                    p[i + 2..i + 4].copy_from_slice(&max_mss.to_be_bytes());
                    // HC' = ~(~HC + ~m + m')
                    let c = tcp_start + 16;
                    let hc = u16::from_be_bytes([p[c], p[c + 1]]);
                    let acc = u64::from(!hc) + u64::from(!old) + u64::from(max_mss);
                    p[c..c + 2].copy_from_slice(&(!fold(acc)).to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

/// Coalesces consecutive in-order TCP segments of one flow into TSO super-packets for a TUN
/// opened with `IFF_VNET_HDR` (the receive-side counterpart of [`segment`], as the kernel's GRO
/// does). Packets are pushed one by one; whatever cannot join the pending super-packet flushes it.
pub struct Coalescer {
    /// `vnet` header space + the packet being built.
    buf: Vec<u8>,
    /// Packets in `buf` (0: empty).
    count: usize,
    ip: Option<CoalesceKey>,
    /// Payload size of the first segment (the GSO size); later ones must be equal, the last
    /// may be shorter (then nothing more joins).
    seg: usize,
    closed: bool,
    next_seq: u32,
    limit: usize,
    /// For packets passed through on their own.
    single: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CoalesceKey {
    v6: bool,
    hlen: usize,
    tcp_hlen: usize,
    src: IpAddr,
    dst: IpAddr,
    ports: [u8; 4],
    ack: [u8; 4],
    window: [u8; 2],
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new(65_535)
    }
}

impl Coalescer {
    /// A coalescer that builds IP packets up to `limit` bytes.
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::with_capacity(VNET_HDR_LEN + limit),
            count: 0,
            ip: None,
            seg: 0,
            closed: false,
            next_seq: 0,
            limit,
            single: Vec::with_capacity(VNET_HDR_LEN + limit),
        }
    }

    /// Adds `p` (a complete, valid IP packet). When `p` cannot join, the pending packet is
    /// handed to `flush` first (`vnet` header included). Packets that are not plain TCP data
    /// segments are passed through `flush` on their own.
    pub fn push(&mut self, p: &[u8], flush: &mut impl FnMut(&[u8])) {
        let Some((key, seq, payload)) = Self::classify(p) else {
            self.flush(flush);
            self.single.clear();
            self.single.extend_from_slice(&plain_hdr().encode());
            self.single.extend_from_slice(p);
            flush(&self.single);
            return;
        };
        let hdr_len = key.hlen + key.tcp_hlen;
        let fits = self.count > 0
            && !self.closed
            && self.ip == Some(key)
            && seq == self.next_seq
            && payload <= self.seg
            && self.buf.len() - VNET_HDR_LEN + payload <= self.limit
            && p[key.hlen + 13] & !(TCP_ACK | TCP_PSH) == 0
            && self.options_match(p, &key);
        if fits {
            self.buf.extend_from_slice(&p[hdr_len..]);
            self.count += 1;
            self.next_seq = seq.wrapping_add(payload as u32);
            // PSH on any part goes onto the super-packet; a short segment ends it.
            if p[key.hlen + 13] & TCP_PSH != 0 {
                let at = VNET_HDR_LEN + key.hlen + 13;
                self.buf[at] |= TCP_PSH;
            }
            if payload < self.seg {
                self.closed = true;
            }
            return;
        }
        self.flush(flush);
        self.buf.clear();
        self.buf.extend_from_slice(&[0; VNET_HDR_LEN]);
        self.buf.extend_from_slice(p);
        self.count = 1;
        self.ip = Some(key);
        self.seg = payload;
        self.closed = false;
        self.next_seq = seq.wrapping_add(payload as u32);
    }

    /// TCP options (timestamps) must be identical except the timestamps themselves may equal.
    fn options_match(&self, p: &[u8], key: &CoalesceKey) -> bool {
        let first = &self.buf[VNET_HDR_LEN + key.hlen + 20..VNET_HDR_LEN + key.hlen + key.tcp_hlen];
        first == &p[key.hlen + 20..key.hlen + key.tcp_hlen]
    }

    /// Plain TCP data segment with only ACK (and PSH): (flow key, seq, payload length).
    fn classify(p: &[u8]) -> Option<(CoalesceKey, u32, usize)> {
        let ip = parse_ip(p)?;
        if ip.proto != PROTO_TCP || p.len() < ip.hlen + 20 {
            return None;
        }
        if ip.v6 {
            if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
                return None;
            }
        } else {
            // No fragments, no IP options, exact length.
            if ip.hlen != 20 || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
                return None;
            }
            if usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len() {
                return None;
            }
        }
        let t = &p[ip.hlen..];
        let tcp_hlen = usize::from(t[12] >> 4) * 4;
        if tcp_hlen < 20 || t.len() < tcp_hlen {
            return None;
        }
        let flags = t[13];
        if flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR) != 0 || flags & TCP_ACK == 0 {
            return None;
        }
        let payload = t.len() - tcp_hlen;
        if payload == 0 {
            return None;
        }
        let key = CoalesceKey {
            v6: ip.v6,
            hlen: ip.hlen,
            tcp_hlen,
            src: ip.src,
            dst: ip.dst,
            ports: t[..4].try_into().ok()?,
            ack: t[8..12].try_into().ok()?,
            window: t[14..16].try_into().ok()?,
        };
        Some((key, u32::from_be_bytes(t[4..8].try_into().ok()?), payload))
    }

    /// Hands the pending packet (if any) to `flush`: one segment as a plain packet, several as a
    /// TSO super-packet with a partial checksum for the kernel to finish.
    pub fn flush(&mut self, flush: &mut impl FnMut(&[u8])) {
        if self.count == 0 {
            return;
        }
        let key = self.ip.expect("set with count");
        if self.count == 1 {
            self.buf[..VNET_HDR_LEN].copy_from_slice(&plain_hdr().encode());
        } else {
            let ip = Ip { v6: key.v6, hlen: key.hlen, proto: PROTO_TCP, src: key.src, dst: key.dst };
            let total = self.buf.len() - VNET_HDR_LEN;
            let pkt = &mut self.buf[VNET_HDR_LEN..];
            set_ip_len(pkt, &ip, total);
            let tcp_len = total - key.hlen;
            let c = key.hlen + 16;
            let partial = fold(pseudo_sum(key.src, key.dst, PROTO_TCP, tcp_len));
            pkt[c..c + 2].copy_from_slice(&partial.to_be_bytes());
            let h = VnetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: if key.v6 { VIRTIO_NET_HDR_GSO_TCPV6 } else { VIRTIO_NET_HDR_GSO_TCPV4 },
                hdr_len: (key.hlen + key.tcp_hlen) as u16,
                gso_size: self.seg as u16,
                csum_start: key.hlen as u16,
                csum_offset: 16,
            };
            self.buf[..VNET_HDR_LEN].copy_from_slice(&h.encode());
        }
        flush(&self.buf);
        self.count = 0;
        self.ip = None;
    }
}

/// The header for a plain packet whose checksum WireGuard's authentication vouches for.
#[must_use]
pub fn plain_hdr() -> VnetHdr {
    VnetHdr { flags: VIRTIO_NET_HDR_F_DATA_VALID, ..VnetHdr::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 packet with the given payload, flags and seq; full checksums.
    fn tcp4(payload: &[u8], flags: u8, seq: u32, options: &[u8]) -> Vec<u8> {
        let tcp_hlen = 20 + options.len();
        let total = 20 + tcp_hlen + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let t = 20;
        p[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        p[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
        p[t + 12] = ((tcp_hlen / 4) as u8) << 4;
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
        p[t + 20..t + tcp_hlen].copy_from_slice(options);
        p[t + tcp_hlen..].copy_from_slice(payload);
        let ip = parse_ip(&p).unwrap();
        set_ip_len(&mut p, &ip, total);
        tcp_checksum(&mut p, &ip);
        p
    }

    fn tcp6(payload: &[u8], flags: u8, seq: u32) -> Vec<u8> {
        let total = 40 + 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x60;
        p[6] = PROTO_TCP;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        p[40 + 4..40 + 8].copy_from_slice(&seq.to_be_bytes());
        p[40 + 12] = 5 << 4;
        p[40 + 13] = flags;
        p[40 + 20..].copy_from_slice(payload);
        let ip = parse_ip(&p).unwrap();
        set_ip_len(&mut p, &ip, total);
        tcp_checksum(&mut p, &ip);
        p
    }

    /// Verifies IPv4 header and TCP checksums the way a receiver does (sum over all = 0xffff).
    fn valid(p: &[u8]) -> bool {
        let ip = parse_ip(p).unwrap();
        let ip_ok = ip.v6 || fold(sum16(&p[..ip.hlen], 0)) == 0xffff;
        let l4 = &p[ip.hlen..];
        let tcp_ok = fold(sum16(l4, pseudo_sum(ip.src, ip.dst, PROTO_TCP, l4.len()))) == 0xffff;
        let len_ok = if ip.v6 {
            usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 == p.len()
        } else {
            usize::from(u16::from_be_bytes([p[2], p[3]])) == p.len()
        };
        ip_ok && tcp_ok && len_ok
    }

    /// Turns a packet with full checksums into what TUN hands over for TSO: partial checksum.
    fn as_partial(mut p: Vec<u8>, gso_type: u8, mss: u16) -> (VnetHdr, Vec<u8>) {
        let ip = parse_ip(&p).unwrap();
        let tcp_len = p.len() - ip.hlen;
        let partial = fold(pseudo_sum(ip.src, ip.dst, PROTO_TCP, tcp_len));
        p[ip.hlen + 16..ip.hlen + 18].copy_from_slice(&partial.to_be_bytes());
        let tcp_hlen = usize::from(p[ip.hlen + 12] >> 4) * 4;
        let h = VnetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len: (ip.hlen + tcp_hlen) as u16,
            gso_size: mss,
            csum_start: ip.hlen as u16,
            csum_offset: 16,
        };
        (h, p)
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071's example words sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum16(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
        assert_eq!(fold(sum16(&[0xab], 0)), 0xab00);
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr { flags: 1, gso_type: 4, hdr_len: 60, gso_size: 1380, csum_start: 40, csum_offset: 16 };
        assert_eq!(VnetHdr::parse(&h.encode()), Some(h));
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
    }

    #[test]
    fn segments_a_tso4_super_packet_into_valid_packets() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]; // NOP NOP timestamps
        let whole = tcp4(&payload, TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR, 1000, &opts);
        let (h, mut p) = as_partial(whole, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 1368);
        let mut scratch = vec![0u8; 2000];
        let mut segs = Vec::new();
        segment(&h, &mut p, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(valid(s), "segment {i} checksums");
            let payload_len = s.len() - 52;
            assert_eq!(payload_len, if i < 2 { 1368 } else { 4000 - 2 * 1368 });
            assert_eq!(u32::from_be_bytes(s[24..28].try_into().unwrap()), 1000 + (i * 1368) as u32);
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16, "IPv4 id");
            let flags = s[33];
            assert_eq!(flags & (TCP_FIN | TCP_PSH) != 0, i == 2, "FIN/PSH only on the last");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only on the first");
            assert_eq!(&s[40..52], &opts, "options copied");
            joined.extend_from_slice(&s[52..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn segments_a_tso6_super_packet() {
        let payload = vec![0x5au8; 3000];
        let (h, mut p) = as_partial(tcp6(&payload, TCP_ACK, u32::MAX - 10), VIRTIO_NET_HDR_GSO_TCPV6, 1400);
        let mut scratch = vec![0u8; 1500];
        let mut segs = Vec::new();
        segment(&h, &mut p, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        assert_eq!(segs.iter().map(|s| s.len() - 60).collect::<Vec<_>>(), [1400, 1400, 200]);
        assert!(segs.iter().all(|s| valid(s)));
        // Sequence numbers wrap.
        assert_eq!(u32::from_be_bytes(segs[1][44..48].try_into().unwrap()), 1400 - 11);
    }

    #[test]
    fn completes_a_partial_checksum_without_gso() {
        let (mut h, mut p) = as_partial(tcp4(b"hello", TCP_ACK, 1, &[]), VIRTIO_NET_HDR_GSO_NONE, 0);
        h.gso_size = 0;
        assert!(!valid(&p));
        let mut out = Vec::new();
        segment(&h, &mut p, &mut [], |s| out.push(s.to_vec())).unwrap();
        assert_eq!(out.len(), 1);
        assert!(valid(&out[0]));
    }

    #[test]
    fn rejects_malformed_and_udp_gso() {
        let mut scratch = vec![0u8; 2000];
        let h = VnetHdr { gso_type: VIRTIO_NET_HDR_GSO_TCPV4, gso_size: 1000, ..VnetHdr::default() };
        assert_eq!(segment(&h, &mut [0x45, 0, 0], &mut scratch, |_| {}), Err(SegmentError::Malformed));
        let h = VnetHdr { gso_type: 5, gso_size: 1000, ..VnetHdr::default() };
        let mut p = tcp4(&[0; 3000], TCP_ACK, 1, &[]);
        assert_eq!(segment(&h, &mut p, &mut scratch, |_| {}), Err(SegmentError::Unsupported));
        // TCPv6 GSO type on an IPv4 packet.
        let h = VnetHdr { gso_type: VIRTIO_NET_HDR_GSO_TCPV6, gso_size: 1000, ..VnetHdr::default() };
        assert_eq!(segment(&h, &mut p, &mut scratch, |_| {}), Err(SegmentError::Malformed));
    }

    #[test]
    fn splits_gro_buffers() {
        let buf: Vec<u8> = (0..10).collect();
        let parts: Vec<&[u8]> = split_gro(&buf, 4).collect();
        assert_eq!(parts, [&[0, 1, 2, 3][..], &[4, 5, 6, 7], &[8, 9]]);
        assert_eq!(split_gro(&buf, 0).count(), 1);
        assert_eq!(split_gro(&buf, 10).count(), 1);
        assert_eq!(split_gro(&[], 0).count(), 0);
    }

    #[test]
    fn clamps_mss_of_syns_only_and_keeps_checksums_valid() {
        let mss_opt = |mss: u16| {
            let b = mss.to_be_bytes();
            [2, 4, b[0], b[1], 1, 1, 4, 2]
        };
        let mut syn = tcp4(&[], TCP_SYN, 1, &mss_opt(1460));
        assert!(clamp_mss(&mut syn, 1420));
        assert!(valid(&syn));
        assert_eq!(&syn[40..44], &[2, 4, 0x05, 0x64], "1420 − 40 = 1380");
        // Already small enough: untouched.
        assert!(!clamp_mss(&mut syn, 1440));
        let mut synack = tcp4(&[], TCP_SYN | TCP_ACK, 1, &mss_opt(65495));
        assert!(clamp_mss(&mut synack, 1420) && valid(&synack));
        // Not a SYN.
        let mut data = tcp4(&[1, 2, 3], TCP_ACK, 1, &mss_opt(1460));
        assert!(!clamp_mss(&mut data, 1420));
        // Truncated options do not panic.
        let mut bad = tcp4(&[], TCP_SYN, 1, &[2, 9, 0, 0]);
        assert!(!clamp_mss(&mut bad, 1420));
    }

    #[test]
    fn coalesces_in_order_segments_and_round_trips_through_segment() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let opts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let whole = tcp4(&payload, TCP_ACK | TCP_PSH, 7, &opts);
        let (h, mut p) = as_partial(whole, VIRTIO_NET_HDR_GSO_TCPV4, 1368);
        let mut scratch = vec![0u8; 2000];
        let mut segs = Vec::new();
        segment(&h, &mut p, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| out.push(b.to_vec());
        for s in &segs {
            c.push(s, &mut sink);
        }
        // A pure ACK passes through on its own and flushes the pending super-packet.
        c.push(&tcp4(&[], TCP_ACK, 9, &[]), &mut sink);
        c.flush(&mut sink);
        assert_eq!(out.len(), 2);
        let h2 = VnetHdr::parse(&out[0]).unwrap();
        assert_eq!(h2.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(h2.gso_size, 1368);
        let mut again = out[0][VNET_HDR_LEN..].to_vec();
        assert_eq!(again.len(), 52 + 5000);
        let mut resegs = Vec::new();
        segment(&h2, &mut again, &mut scratch, |s| resegs.push(s.to_vec())).unwrap();
        assert_eq!(resegs, segs, "coalesce then segment gives the same packets");
        assert_eq!(VnetHdr::parse(&out[1]).unwrap(), plain_hdr());
    }

    #[test]
    fn does_not_coalesce_gaps_or_other_flows() {
        let a = tcp4(&[1; 100], TCP_ACK, 1, &[]);
        let gap = tcp4(&[2; 100], TCP_ACK, 500, &[]);
        let mut other = tcp4(&[3; 100], TCP_ACK, 601, &[]);
        other[19] = 9; // another destination (checksums irrelevant to the coalescer)
        let mut c = Coalescer::default();
        let mut n = 0;
        let mut sink = |b: &[u8]| {
            assert_eq!(VnetHdr::parse(b).unwrap().gso_type, VIRTIO_NET_HDR_GSO_NONE);
            n += 1;
        };
        for p in [&a, &gap, &other] {
            c.push(p, &mut sink);
        }
        c.flush(&mut sink);
        assert_eq!(n, 3);
    }
}
