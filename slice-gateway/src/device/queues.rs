//! The packet loop of a multi-queue TUN device (the default, two queues; see [`crate::tun`]):
//! one thread per TUN queue, each waiting in poll(2) on its own queue and on the UDP socket.
//!
//! - TUN → UDP: a thread reads only its own queue, under that queue's `tx` lock, so two threads
//!   encrypt and send the flows of different queues side by side (the one-queue device has one
//!   `tx` lock that both packet threads share). The kernel keeps each flow on one queue, so a
//!   flow's packets stay in order; a peer's `Tunn` lock still orders its encryptions.
//! - UDP → TUN: one socket, so one `rx` lock as with one queue; whichever thread is awake
//!   receives. A thread that finds it taken leaves the socket out of its next wait: the holder
//!   waits on the socket again when it is done, so no datagram waits for nobody, and the two
//!   threads are not both woken by every datagram while one of them receives.
//! - After a receive batch the thread drains every queue whose lock is free (up to 64 reads
//!   each): the ACKs the local TCP just answered went to their flows' queues (the ones
//!   [`crate::tun::Tun::send`] wrote them through), and leave without a wake-up, as step d of
//!   the one-queue loops does.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::Gateway;
use super::live::lock;
use super::rx::enable_gro;

impl Gateway {
    /// Serves TUN queue `queue` and, when it is free, the socket, until the device stops.
    pub(super) fn queue_loop(&self, queue: usize) {
        let drain = std::env::var_os("SLICE_GATEWAY_NO_RX_DRAIN").is_none();
        let queues = self.tx.len();
        let tun_fd = self.tun.queue_fd(queue);
        let mut socket = self.socket();
        enable_gro(&socket);
        let mut watch_socket = true;
        while !self.stopping() {
            let current = self.socket();
            if !Arc::ptr_eq(&current, &socket) {
                // A new listen port: GRO on the new socket (every thread sets it; harmless).
                socket = current;
                enable_gro(&socket);
            }
            let mut fds = [
                libc::pollfd { fd: tun_fd, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            let nfds: libc::nfds_t = if watch_socket { 2 } else { 1 };
            // SAFETY: `fds` holds `nfds` valid pollfds and outlives the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, 500) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    tracing::debug!(%err, queue, "poll failed");
                }
                continue;
            }
            watch_socket = true;
            let tun_ready = fds[0].revents != 0;
            let socket_ready = nfds == 2 && fds[1].revents != 0;
            if tun_ready {
                let mut st = lock(&self.tx[queue]);
                if let Err(err) = self.drain_tun(queue, &mut st, usize::MAX) {
                    tracing::error!(%err, queue, "reading the TUN queue failed; stopping its loop");
                    return;
                }
            }
            // When the socket is ready, and after a TUN batch (its answers may be queued already).
            let receive = socket_ready || (tun_ready && drain);
            if !receive {
                continue;
            }
            match self.rx.try_lock() {
                Ok(mut rx) => {
                    if let Err(err) = self.receive(&socket, &mut rx) {
                        tracing::debug!(%err, "recv failed");
                    }
                }
                Err(_) => {
                    // Another thread receives and waits on the socket again when done.
                    watch_socket = !socket_ready;
                    continue;
                }
            }
            if !drain {
                continue;
            }
            for q in (0..queues).map(|i| (queue + i) % queues) {
                if let Ok(mut st) = self.tx[q].try_lock()
                    && let Err(err) = self.drain_tun(q, &mut st, 64)
                {
                    tracing::debug!(%err, queue = q, "reading the TUN queue failed");
                }
            }
        }
    }
}
