//! Path MTU probes between two slice-gateways, inside the tunnel, pure.
//!
//! A gateway learns whether its tunnel's full-size packets cross the path to each peer: every
//! [`EVERY_MS`] it sends each peer with a live session [`FULL_PROBES`] probes as large as the
//! TUN device's MTU (the outer datagram is then as large as any the tunnel sends); the peer's
//! gateway answers each with a small reply naming the size it received. A round in which no
//! full-size probe came back is followed by a round that also sends a ladder of sizes from
//! [`MIN_SIZE`] up in steps of [`STEP`]: the largest answered is the largest inner packet the
//! path carries. A path that drops large datagrams without telling anyone (a link with a smaller
//! MTU and no ICMP, a firewall dropping fragments) is the case this finds; where the path sends
//! ICMP "fragmentation needed", the kernel fragments the outer datagrams and the probes pass.
//!
//! A probe is an IPv4 packet of protocol [`PROTOCOL`] (253, RFC 3692's experimentation number)
//! from `0.0.0.0` to `0.0.0.0` carrying [`MAGIC`]: no peer's AllowedIPs holds `0.0.0.0`, so a
//! probe can never reach a TUN device even at a gateway that does not know them (it is dropped
//! as a source not allowed). Replies are smaller than the requests: a peer cannot use them to
//! amplify anything, and only an authenticated peer gets one.

/// IP protocol number of the probes (RFC 3692: for experimentation).
pub const PROTOCOL: u8 = 253;
/// Marks a probe's payload (after the IPv4 header).
pub const MAGIC: [u8; 8] = *b"slcnMTU1";
/// How often a round of probes starts.
pub const EVERY_MS: u64 = 5_000;
/// Full-size probes per round: one lost to chance does not make a path look narrow.
pub const FULL_PROBES: usize = 2;
/// The smallest inner packet the ladder tries (IPv4's minimum reassembly size).
pub const MIN_SIZE: u16 = 576;
/// The ladder's step in bytes.
pub const STEP: u16 = 8;

const IPV4_HEADER: usize = 20;
/// IPv4 header, magic, kind (1), round (4), size (2).
pub const REPLY_SIZE: usize = IPV4_HEADER + MAGIC.len() + 1 + 4 + 2;

/// A probe or its reply, as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub reply: bool,
    pub round: u32,
    /// A request: its own size; a reply: the size of the request it answers.
    pub size: u16,
}

/// Writes a probe into `buf` (at least `size` bytes for a request): a request `size` bytes
/// long, or a reply ([`REPLY_SIZE`] bytes) naming `size`. Returns the packet.
///
/// # Panics
/// When `buf` is too small (a caller's bug: the device's buffers hold any packet).
pub fn encode(buf: &mut [u8], probe: Probe) -> &[u8] {
    let len = if probe.reply { REPLY_SIZE } else { usize::from(probe.size).max(REPLY_SIZE) };
    let p = &mut buf[..len];
    p.fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    // Don't fragment: the probe is about what passes whole.
    p[6] = 0x40;
    p[8] = 1;
    p[9] = PROTOCOL;
    let sum = checksum(&p[..IPV4_HEADER]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let body = &mut p[IPV4_HEADER..];
    body[..8].copy_from_slice(&MAGIC);
    body[8] = u8::from(probe.reply);
    body[9..13].copy_from_slice(&probe.round.to_be_bytes());
    body[13..15].copy_from_slice(&probe.size.to_be_bytes());
    p
}

/// The probe in a decrypted packet, if it is one.
#[must_use]
pub fn parse(packet: &[u8]) -> Option<Probe> {
    if packet.len() < REPLY_SIZE || packet[0] != 0x45 || packet[9] != PROTOCOL || packet[12..20] != [0; 8] {
        return None;
    }
    let body = &packet[IPV4_HEADER..];
    if body[..8] != MAGIC || body[8] > 1 {
        return None;
    }
    let round = u32::from_be_bytes([body[9], body[10], body[11], body[12]]);
    let size = u16::from_be_bytes([body[13], body[14]]);
    let len = u16::from_be_bytes([packet[2], packet[3]]);
    // A request names its own length (what arrived is what was sent).
    if body[8] == 0 && (size != len || usize::from(len) > packet.len()) {
        return None;
    }
    Some(Probe { reply: body[8] == 1, round, size })
}

/// The Internet checksum of an IPv4 header (its checksum field zero).
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// One peer's probing: the round in flight and the result of the last one that said something.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathState {
    /// The round in flight (0: none yet) and the MTU it probes.
    round: u32,
    mtu: u16,
    /// Whether the round in flight sends the ladder.
    ladder: bool,
    full_acked: bool,
    largest_acked: u16,
    /// The next round sends the ladder (the last full-size probes were lost).
    want_ladder: bool,
    result: Option<u16>,
}

impl PathState {
    /// Ends the round in flight and starts the next at `mtu`: its number and the sizes to send.
    pub fn start_round(&mut self, mtu: u16) -> (u32, Vec<u16>) {
        if self.round != 0 {
            if self.full_acked {
                self.result = Some(self.mtu);
                self.want_ladder = false;
            } else {
                self.want_ladder = true;
                if self.ladder {
                    // Nothing at all came back: the tunnel is down, not narrow (said elsewhere).
                    self.result = (self.largest_acked > 0).then_some(self.largest_acked);
                }
            }
        }
        self.round = self.round.wrapping_add(1).max(1);
        self.mtu = mtu;
        self.ladder = self.want_ladder;
        self.full_acked = false;
        self.largest_acked = 0;
        let mut sizes = vec![mtu; FULL_PROBES];
        if self.ladder {
            sizes.extend((MIN_SIZE..mtu).step_by(usize::from(STEP)));
        }
        (self.round, sizes)
    }

    /// A reply to a probe of `size` bytes in `round` arrived.
    pub fn on_reply(&mut self, round: u32, size: u16) {
        if round != self.round {
            return;
        }
        if size >= self.mtu {
            self.full_acked = true;
        }
        self.largest_acked = self.largest_acked.max(size);
    }

    /// The largest inner packet the path carried in the last round that says (the MTU when
    /// full-size probes pass); `None` until one does, or after a round in which nothing came back.
    #[must_use]
    pub fn largest(&self) -> Option<u16> {
        self.result
    }

    /// Forgets the result (the session ended: nothing is known of the path any more).
    pub fn reset(&mut self) {
        *self = Self { round: self.round, ..Self::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_other_packets_are_not_probes() {
        let mut buf = [0u8; 2000];
        let req = Probe { reply: false, round: 7, size: 1380 };
        let p = encode(&mut buf, req).to_vec();
        assert_eq!(p.len(), 1380);
        assert_eq!(checksum(&p[..20]), 0, "a valid header sums to zero");
        assert_eq!(parse(&p), Some(req));
        let rep = Probe { reply: true, round: 7, size: 1380 };
        let r = encode(&mut buf, rep).to_vec();
        assert_eq!(r.len(), REPLY_SIZE);
        assert_eq!(parse(&r), Some(rep));
        // Truncated on the way: not a probe of the size it claims.
        assert_eq!(parse(&p[..1000]), None);
        let mut other = p.clone();
        other[9] = 6;
        assert_eq!(parse(&other), None, "TCP");
        let mut other = p.clone();
        other[15] = 1;
        assert_eq!(parse(&other), None, "a real destination");
        let mut other = p;
        other[20] = b'x';
        assert_eq!(parse(&other), None, "no magic");
        assert_eq!(parse(&[0x45; 10]), None);
    }

    #[test]
    fn a_narrow_path_is_measured_by_the_ladder() {
        let mut s = PathState::default();
        let (r1, sizes) = s.start_round(1380);
        assert_eq!(sizes, [1380, 1380]);
        s.on_reply(r1, 1380);
        let (r2, sizes) = s.start_round(1380);
        assert_eq!(s.largest(), Some(1380));
        assert_eq!(sizes.len(), 2, "no ladder while full size passes");
        // The path narrows to 1240: full-size probes are lost, nothing is concluded yet.
        let _ = r2;
        let (r3, sizes) = s.start_round(1380);
        assert_eq!(s.largest(), Some(1380), "one lost round alone says nothing of the size");
        assert_eq!(sizes.len(), 2 + usize::from((1380 - MIN_SIZE).div_ceil(STEP)));
        assert!(sizes.contains(&1240) && !sizes.contains(&1244));
        for &size in sizes.iter().filter(|&&z| z <= 1240) {
            s.on_reply(r3, size);
        }
        s.on_reply(r3 - 1, 1380);
        let (r4, sizes) = s.start_round(1380);
        assert_eq!(s.largest(), Some(1240));
        assert!(sizes.len() > 2, "the ladder goes on while the path is narrow");
        // Nothing comes back at all: the tunnel is down, the size is unknown.
        let (r5, _) = s.start_round(1380);
        assert_eq!(s.largest(), None);
        let _ = r4;
        // Wide again.
        s.on_reply(r5, 1380);
        let (_, sizes) = s.start_round(1380);
        assert_eq!((s.largest(), sizes.len()), (Some(1380), 2));
        s.reset();
        assert_eq!(s.largest(), None);
    }
}
