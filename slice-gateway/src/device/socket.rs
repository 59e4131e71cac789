//! The WireGuard UDP socket: binding it (dual-stack, large buffers, fwmark) and sending one
//! datagram to a peer, counted for it.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::live::{Peer, add, inc};

/// Socket buffers: large, so bursts under BBR do not overflow the receive queue (LAB-FACTS:
/// boringtun never sets them and loses packets to `UdpRcvbufErrors`).
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Binds the WireGuard UDP socket: dual-stack `[::]:port`, or `0.0.0.0:port` where IPv6 is off;
/// `tos` (the slice's DSCP class, 0 for none) on its packets.
pub(super) fn bind_udp(port: u16, fwmark: u32, tos: u8) -> io::Result<UdpSocket> {
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
    if tos != 0 {
        set_tos(&sock, tos)?;
    }
    // The receive loop wakes up now and then to notice a rebind or shutdown.
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(sock)
}

/// Writes `tos` (DSCP << 2) on the socket's outgoing packets: `IP_TOS` for IPv4 (also what a
/// dual-stack socket sends to IPv4-mapped peers) and `IPV6_TCLASS` for IPv6. The outer packets
/// carry it, so the network between clusters can honour the slice's class (verified with
/// `tcpdump -v` in slice-node's `qos_root` test).
pub(super) fn set_tos(sock: &UdpSocket, tos: u8) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let v4 = setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TOS, libc::c_int::from(tos));
    let v6 = setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, libc::c_int::from(tos));
    match (sock.local_addr()?, v4, v6) {
        (SocketAddr::V4(_), Err(e), _) | (SocketAddr::V6(_), _, Err(e)) => Err(e),
        _ => Ok(()),
    }
}

fn setsockopt_int(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed; the fd is open.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&raw const value).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Sends one datagram to `to` on `socket` and counts it for `peer`.
pub(super) fn send_to(socket: &UdpSocket, peer: &Peer, datagram: &[u8], to: SocketAddr) {
    if peer.muted.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let to = match (to, socket.local_addr()) {
        (SocketAddr::V4(v4), Ok(SocketAddr::V6(_))) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        _ => to,
    };
    match socket.send_to(datagram, to) {
        Ok(n) => {
            if is_initiation(datagram) {
                peer.note_initiation_sent();
            }
            add(&peer.counters.tx_bytes, n);
            inc(&peer.counters.tx_packets);
        }
        Err(err) => {
            inc(&peer.counters.drop_io);
            tracing::debug!(peer = %peer.public_key, %to, %err, "send failed");
        }
    }
}

/// Sends one datagram to the peer's endpoint, or counts it as dropped when there is none yet.
pub(super) fn send_to_endpoint(socket: &UdpSocket, peer: &Peer, datagram: &[u8]) {
    match peer.endpoint() {
        Some(ep) => send_to(socket, peer, datagram, ep),
        None => inc(&peer.counters.drop_no_endpoint),
    }
}

/// Whether a datagram is a WireGuard handshake initiation (message type 1, 148 bytes).
pub(super) fn is_initiation(datagram: &[u8]) -> bool {
    datagram.len() == 148 && datagram[..4] == [1, 0, 0, 0]
}
