//! The timer thread: every [`TIMER_TICK`] each peer's `update_timers` (handshake retries,
//! rekeying, keepalives, expiry), every second the device rate limiter's reset (a `Tunn`
//! given a shared limiter stops resetting it itself, see docs/decisions.md), the multipath
//! probes, and every [`pathprobe::EVERY_MS`] a round of path MTU probes.

use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::noise::errors::WireGuardError;

use std::sync::atomic::Ordering;

use super::live::{Snapshot, lock, now_ms};
use super::socket::send_to_endpoint;
use super::{Gateway, MAX_PACKET, TIMER_TICK};
use crate::multipath::DEAD_HANDSHAKE_EVERY_MS;
use crate::pathprobe;

impl Gateway {
    /// Drives every peer's timers until the device stops.
    pub(super) fn timer_loop(&self) {
        let mut out = vec![0u8; MAX_PACKET];
        let mut last_reset = Instant::now();
        let mut last_probe = Instant::now();
        let mut last_path_round = Instant::now();
        while !self.stopping() {
            std::thread::sleep(TIMER_TICK);
            let snap = self.snapshot.load_full();
            if last_reset.elapsed() >= Duration::from_secs(1) {
                if let Some(id) = &snap.identity {
                    id.rate_limiter.reset_count();
                }
                last_reset = Instant::now();
            }
            for peer in snap.peers.values() {
                let mut tunn = lock(&peer.tunn);
                let Some(t) = tunn.as_mut() else { continue };
                match t.update_timers(&mut out) {
                    TunnResult::WriteToNetwork(datagram) => send_to_endpoint(&snap.socket, peer, datagram),
                    TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
                    TunnResult::Err(err) => tracing::debug!(peer = %peer.public_key, ?err, "timer error"),
                    _ => {}
                }
                peer.note_handshake(t);
            }
            let probe_ms = self.probe_interval_ms();
            if probe_ms > 0 && last_probe.elapsed() >= Duration::from_millis(probe_ms) {
                last_probe = Instant::now();
                self.probe_peers(&snap, probe_ms, &mut out);
            }
            if last_path_round.elapsed() >= Duration::from_millis(pathprobe::EVERY_MS) {
                last_path_round = Instant::now();
                self.probe_paths(&snap, &mut out);
            }
        }
    }

    /// A round of path MTU probes ([`pathprobe`]) to every peer with a session; a peer without
    /// one forgets what it knew of its path (probing it would start a handshake).
    fn probe_paths(&self, snap: &Snapshot, out: &mut [u8]) {
        let mtu = self.mtu();
        if mtu == u16::MAX {
            return;
        }
        let mut probe = vec![0u8; usize::from(mtu).max(pathprobe::REPLY_SIZE)];
        for peer in snap.peers.values() {
            let mut tunn = lock(&peer.tunn);
            let Some(t) = tunn.as_mut() else { continue };
            let mut path = lock(&peer.path);
            if t.time_since_last_handshake().is_none() || peer.endpoint().is_none() {
                path.reset();
                continue;
            }
            let (round, sizes) = path.start_round(mtu);
            drop(path);
            for size in sizes {
                let packet = pathprobe::encode(&mut probe, pathprobe::Probe { reply: false, round, size });
                if let TunnResult::WriteToNetwork(datagram) = t.encapsulate(packet, out) {
                    send_to_endpoint(&snap.socket, peer, datagram);
                }
            }
        }
    }

    /// Multipath probing: a keepalive to every peer (the other end's liveness of us), and to a
    /// dead one a fresh handshake initiation every [`DEAD_HANDSHAKE_EVERY_MS`], so a restarted
    /// replica (same key, no session) is back once it answers, without waiting for WireGuard's
    /// own retry timers. Also keeps NAT mappings open.
    fn probe_peers(&self, snap: &Snapshot, probe_ms: u64, out: &mut [u8]) {
        let now = now_ms();
        for peer in snap.peers.values() {
            if peer.endpoint().is_none() {
                // Behind NAT on the other side: it will come to us.
                continue;
            }
            let mut tunn = lock(&peer.tunn);
            let Some(t) = tunn.as_mut() else { continue };
            let revive = !peer.is_live(probe_ms)
                && now.saturating_sub(peer.last_revive_ms.load(Ordering::Relaxed)) >= DEAD_HANDSHAKE_EVERY_MS;
            let result = if revive {
                peer.last_revive_ms.store(now, Ordering::Relaxed);
                t.format_handshake_initiation(out, true)
            } else {
                t.encapsulate(&[], out)
            };
            if let TunnResult::WriteToNetwork(datagram) = result {
                send_to_endpoint(&snap.socket, peer, datagram);
            }
        }
    }
}
