//! The crypto floor of any ChaCha20-Poly1305 tunnel on this machine (issue 14): how long
//! boringtun's own data path — `noise::Tunn::encapsulate` on one end, `decapsulate` on the
//! other, ChaCha20-Poly1305 from `ring`'s assembly — takes per full-size packet on one CPU, in
//! memory, with no I/O at all. No tunnel can spend less CPU per Gbit than that, so it bounds
//! what the machine's CPUs could carry even if they did nothing else.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// The inner packet size measured: the tunnels' inner MTU.
pub(crate) const PACKET: usize = 1420;
/// Packets per measurement (each sealed on one end and opened on the other).
const PACKETS: u32 = 100_000;

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CryptoFloor {
    /// Seal on one end and open on the other of one [`PACKET`]-byte packet, on one CPU.
    pub(crate) per_packet: Duration,
    /// The CPUs this machine has.
    pub(crate) cpus: usize,
}

impl CryptoFloor {
    /// CPU seconds per Gbit of inner traffic for both ends' crypto together.
    pub(crate) fn cpu_per_gbit(&self) -> f64 {
        let packets_per_gbit = 1e9 / (PACKET as f64 * 8.0);
        self.per_packet.as_secs_f64() * packets_per_gbit
    }

    /// The most any ChaCha20-Poly1305 tunnel could carry here if every CPU did only its crypto
    /// (no TCP, no copies, no system calls, no iperf3), in Gbit/s.
    pub(crate) fn ceiling_gbits(&self) -> f64 {
        self.cpus as f64 / self.cpu_per_gbit()
    }

    /// The most a tunnel could carry when its traffic also costs what the plain veth's costs per
    /// Gbit (iperf3 and TCP at both ends, taken as the whole machine over `veth` Gbit/s: the veth
    /// run is CPU-bound), in Gbit/s.
    pub(crate) fn bound_with_tcp(&self, veth: f64) -> f64 {
        let cpus = self.cpus as f64;
        cpus / (cpus / veth + self.cpu_per_gbit())
    }
}

/// Measures [`CryptoFloor`]: a handshake between two `Tunn`s in memory, then [`PACKETS`]
/// packets through both (the best of three rounds, so that a busy moment on a shared machine
/// shows less).
///
/// # Errors
/// When the handshake or a packet does not go through (a boringtun change).
pub(crate) fn measure() -> Result<CryptoFloor> {
    let (a_secret, b_secret) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
    let (a_public, b_public) = (PublicKey::from(&a_secret), PublicKey::from(&b_secret));
    let mut a = Tunn::new(a_secret, b_public, None, None, 1, None);
    let mut b = Tunn::new(b_secret, a_public, None, None, 2, None);
    let (mut out_a, mut out_b) = (vec![0u8; PACKET + 64], vec![0u8; PACKET + 64]);
    let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut out_a, false) else {
        bail!("boringtun made no handshake initiation");
    };
    let init = init.to_vec();
    let TunnResult::WriteToNetwork(response) = b.decapsulate(None, &init, &mut out_b) else {
        bail!("boringtun did not answer its own handshake initiation");
    };
    let response = response.to_vec();
    if let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, &response, &mut out_a) {
        let keepalive = keepalive.to_vec();
        let _ = b.decapsulate(None, &keepalive, &mut out_b);
    }
    // An IPv4/UDP packet 10.0.0.1 → 10.0.0.2 of the inner MTU (the receiver checks the header).
    let mut packet = vec![0u8; PACKET];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&u16::try_from(PACKET).unwrap_or(u16::MAX).to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&[10, 0, 0, 1]);
    packet[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        for _ in 0..PACKETS {
            let TunnResult::WriteToNetwork(sealed) = a.encapsulate(&packet, &mut out_a) else {
                bail!("boringtun did not seal a packet");
            };
            let sealed = sealed.len();
            if !matches!(b.decapsulate(None, &out_a[..sealed], &mut out_b), TunnResult::WriteToTunnelV4(..)) {
                bail!("boringtun did not open its own packet");
            }
        }
        best = best.min(started.elapsed());
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Ok(CryptoFloor { per_packet: best / PACKETS, cpus })
}

/// The floor as sentences for section 4, against the plain veth's and slice-gateway's figures
/// of the same run (`veth` Gbit/s one stream; `ours` CPU s per Gbit one stream).
pub(crate) fn text(floor: &CryptoFloor, veth: Option<f64>, ours: Option<f64>) -> String {
    let mut t = format!(
        "The crypto floor (measured in this run): boringtun's own data path — `Tunn::encapsulate` on one \
         end, `decapsulate` on the other, ChaCha20-Poly1305 from `ring`'s AVX2 assembly — takes {:.0} ns \
         per {PACKET}-byte packet on one CPU in memory, with no I/O: {:.3} CPU s per Gbit for both ends' \
         crypto. With all {} CPUs doing nothing else, no ChaCha20-Poly1305 tunnel could carry more than \
         {:.1} Gbit/s here",
        floor.per_packet.as_secs_f64() * 1e9,
        floor.cpu_per_gbit(),
        floor.cpus,
        floor.ceiling_gbits(),
    );
    if let Some(veth) = veth.filter(|v| *v > 0.0) {
        t += &format!(" ({:.0} % of the plain veth's one stream)", 100.0 * floor.ceiling_gbits() / veth);
        let bound = floor.bound_with_tcp(veth);
        t += &format!(
            ". But the plain veth's run already keeps the CPUs busy (iperf3 and the kernel's TCP at both ends \
             on {} CPUs): a tunnel carrying T Gbit/s needs that work per Gbit too, plus the crypto, so here \
             T ≤ {} / ({} / {veth:.2} + {:.3}) = {bound:.1} Gbit/s, {:.0} % of the plain veth, before a single \
             system call or copy of the tunnel's own",
            floor.cpus,
            floor.cpus,
            floor.cpus,
            floor.cpu_per_gbit(),
            100.0 * bound / veth
        );
    }
    t += ".";
    if let Some(ours) = ours.filter(|o| *o > 0.0) {
        t += &format!(
            " slice-gateway spends {ours:.2} CPU s per Gbit in all (one stream), of which the crypto floor is \
             {:.0} %; the rest is system calls, copies, segmentation and coalescing.",
            100.0 * floor.cpu_per_gbit() / ours
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_follows_from_the_cost_per_packet() {
        // 2 µs per 1420-byte packet: 88,028 packets per Gbit → 0.176 CPU s per Gbit.
        let floor = CryptoFloor { per_packet: Duration::from_micros(2), cpus: 2 };
        assert!((floor.cpu_per_gbit() - 0.176).abs() < 0.001, "{}", floor.cpu_per_gbit());
        assert!((floor.ceiling_gbits() - 11.36).abs() < 0.01, "{}", floor.ceiling_gbits());
        let t = text(&floor, Some(18.0), Some(0.35));
        assert!(t.contains("11.4 Gbit/s") && t.contains("(63 % of the plain veth") && t.contains("is 50 %"), "{t}");
        // 2 / (2 / 18 + 0.176) = 6.96 Gbit/s, 39 % of the veth.
        assert!((floor.bound_with_tcp(18.0) - 6.96).abs() < 0.01, "{}", floor.bound_with_tcp(18.0));
        assert!(t.contains("= 7.0 Gbit/s, 39 % of the plain veth"), "{t}");
    }

    #[test]
    fn boringtun_seals_and_opens_in_memory() {
        let floor = measure().expect("the floor");
        assert!(floor.per_packet > Duration::ZERO && floor.cpus >= 1);
    }
}
