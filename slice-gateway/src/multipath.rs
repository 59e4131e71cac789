//! Peer groups (`--multipath`, issue 13): when several peers hold the same prefix (the replicas
//! of one remote cluster's gateway), an outgoing packet goes to one *live* member, chosen per
//! flow by rendezvous hashing. Pure: the flow key of a packet, the choice, the liveness rule.
//!
//! Rendezvous (highest random weight) rather than `hash % live`: a flow keeps its member while
//! that member lives; a member's death moves only the flows that were on it, and its return
//! takes back only those (with a modulo, a change of the live count reshuffles most flows).

/// The flow key of an IP packet: addresses, protocol and, for TCP and UDP (first fragment or
/// unfragmented), the ports. Packets of one TCP connection or UDP flow give one key in each
/// direction's own order. `None` when the packet is not IPv4/IPv6 or too short.
#[must_use]
pub fn flow_hash(packet: &[u8]) -> Option<u64> {
    let version = packet.first()? >> 4;
    let (addrs, proto, l4): (&[u8], u8, Option<&[u8]>) = match version {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            if packet.len() < 20 || ihl < 20 {
                return None;
            }
            let frag_offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
            let l4 = (frag_offset == 0).then(|| packet.get(ihl..)).flatten();
            (&packet[12..20], packet[9], l4)
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            // Extension headers are not walked: their flows hash on addresses and next header.
            (&packet[8..40], packet[6], packet.get(40..))
        }
        _ => return None,
    };
    let ports: &[u8] = match (proto, l4) {
        (6 | 17, Some(l4)) if l4.len() >= 4 => &l4[..4],
        _ => &[],
    };
    Some(slice_api::fnv::fnv1a_64(addrs.iter().chain(std::iter::once(&proto)).chain(ports).copied()))
}

/// The weight of `member` (its identity hash, e.g. of its public key) for `flow`: a 64-bit
/// mix (splitmix64's finaliser), so that close flow keys spread evenly.
#[must_use]
pub fn weight(flow: u64, member: u64) -> u64 {
    let mut z = flow ^ member.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The member for `flow` among `members` (identity hash, live): the live one of highest weight;
/// with none live, the highest of all (a handshake then starts towards it: better than
/// dropping). `None` only for an empty group.
#[must_use]
pub fn choose(flow: u64, members: &[(u64, bool)]) -> Option<usize> {
    let best = |live_only: bool| {
        members
            .iter()
            .enumerate()
            .filter(|(_, (_, live))| !live_only || *live)
            .max_by_key(|(_, (id, _))| weight(flow, *id))
            .map(|(i, _)| i)
    };
    best(true).or_else(|| best(false))
}

/// Whether a member from which the last authenticated datagram arrived at `last_rx_ms` (0:
/// never) is live at `now_ms`, with probes every `probe_ms`: three probe intervals without a
/// word make it dead.
#[must_use]
pub fn is_live(last_rx_ms: u64, now_ms: u64, probe_ms: u64) -> bool {
    last_rx_ms != 0 && now_ms.saturating_sub(last_rx_ms) <= dead_after_ms(probe_ms)
}

/// How long a member may stay silent before it is dead: three probe intervals.
#[must_use]
pub fn dead_after_ms(probe_ms: u64) -> u64 {
    probe_ms.saturating_mul(3)
}

/// How often a dead member is sent a fresh handshake initiation.
pub const DEAD_HANDSHAKE_EVERY_MS: u64 = 1000;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 40-byte IPv4 TCP header pair from `src`:`sport` to `dst`:`dport` (also the TUN queue
    /// tests' packets).
    pub(crate) fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn flows_differ_by_port_and_fragments_hash_on_addresses() {
        let a = flow_hash(&tcp4([10, 0, 0, 1], [10, 1, 0, 1], 40000, 5201)).unwrap();
        let b = flow_hash(&tcp4([10, 0, 0, 1], [10, 1, 0, 1], 40001, 5201)).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, flow_hash(&tcp4([10, 0, 0, 1], [10, 1, 0, 1], 40000, 5201)).unwrap());
        // A later fragment has no ports: it hashes as the addresses and protocol alone.
        let mut frag = tcp4([10, 0, 0, 1], [10, 1, 0, 1], 40000, 5201);
        frag[7] = 8;
        let mut noports = tcp4([10, 0, 0, 1], [10, 1, 0, 1], 0, 0);
        noports.truncate(20);
        assert_eq!(flow_hash(&frag), flow_hash(&noports));
        // ICMP: no ports.
        let mut icmp = tcp4([10, 0, 0, 1], [10, 1, 0, 1], 1, 2);
        icmp[9] = 1;
        let mut icmp2 = icmp.clone();
        icmp2[20] = 99;
        assert_eq!(flow_hash(&icmp), flow_hash(&icmp2));
        assert_eq!(flow_hash(&[0x45, 0, 0]), None);
        assert_eq!(flow_hash(&[]), None);
        assert_eq!(flow_hash(&[0x20; 40]), None);
    }

    #[test]
    fn ipv6_flows_hash_on_addresses_and_ports() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[6] = 17;
        p[8] = 0xfd;
        p[24] = 0xfd;
        p[40..42].copy_from_slice(&5353u16.to_be_bytes());
        let a = flow_hash(&p).unwrap();
        p[41] ^= 1;
        assert_ne!(a, flow_hash(&p).unwrap());
    }

    #[test]
    fn both_members_get_flows_and_a_death_moves_only_its_own() {
        let members =
            [(slice_api::fnv::fnv1a_64(*b"replica-0"), true), (slice_api::fnv::fnv1a_64(*b"replica-1"), true)];
        let flows: Vec<u64> = (0..1000u16)
            .map(|port| flow_hash(&tcp4([10, 0, 0, 1], [10, 1, 0, 1], 30000 + port, 5201)).unwrap())
            .collect();
        let before: Vec<usize> = flows.iter().map(|f| choose(*f, &members).unwrap()).collect();
        let on_1 = before.iter().filter(|&&m| m == 1).count();
        assert!((300..=700).contains(&on_1), "flows spread over both members: {on_1} of 1000 on member 1");
        // Member 1 dies: its flows go to 0, member 0's flows stay.
        let dead = [members[0], (members[1].0, false)];
        for (f, b) in flows.iter().zip(&before) {
            assert_eq!(choose(*f, &dead), Some(0));
            let _ = b;
        }
        // Member 0 dies instead: only its flows move; member 1's stay where they were.
        let dead0 = [(members[0].0, false), members[1]];
        assert!(flows.iter().all(|f| choose(*f, &dead0) == Some(1)));
        // Back alive: every flow returns to where it was.
        let after: Vec<usize> = flows.iter().map(|f| choose(*f, &members).unwrap()).collect();
        assert_eq!(before, after);
        // A third member takes flows only from the others, never swaps them between 0 and 1.
        let three = [members[0], members[1], (slice_api::fnv::fnv1a_64(*b"replica-2"), true)];
        for (f, b) in flows.iter().zip(&before) {
            let now = choose(*f, &three).unwrap();
            assert!(now == *b || now == 2);
        }
    }

    #[test]
    fn no_live_member_still_picks_one_and_empty_picks_none() {
        let all_dead = [(1, false), (2, false)];
        assert!(choose(7, &all_dead).is_some());
        assert_eq!(choose(7, &[]), None);
        assert_eq!(choose(7, &[(9, false)]), Some(0));
    }

    #[test]
    fn liveness_is_three_probe_intervals() {
        assert!(!is_live(0, 10_000, 200), "never heard from: dead");
        assert!(is_live(9_400, 10_000, 200));
        assert!(!is_live(9_399, 10_000, 200));
        assert!(is_live(10_000, 10_000, 200));
        assert_eq!(dead_after_ms(200), 600);
    }
}
