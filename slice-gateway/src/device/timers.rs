//! The timer thread: every [`TIMER_TICK`] each peer's `update_timers` (handshake retries,
//! rekeying, keepalives, expiry), and every second the device rate limiter's reset (a `Tunn`
//! given a shared limiter stops resetting it itself, see docs/decisions.md).

use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::noise::errors::WireGuardError;

use super::live::lock;
use super::socket::send_to_endpoint;
use super::{Gateway, MAX_PACKET, TIMER_TICK};

impl Gateway {
    /// Drives every peer's timers until the device stops.
    pub(super) fn timer_loop(&self) {
        let mut out = vec![0u8; MAX_PACKET];
        let mut last_reset = Instant::now();
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
        }
    }
}
