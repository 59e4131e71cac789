//! The TUN device: `/dev/net/tun` opened with `IFF_TUN | IFF_NO_PI | IFF_VNET_HDR` and
//! `TUNSETOFFLOAD` (checksum offload, TSO4/TSO6 with ECN): every read and write starts with a
//! `virtio_net_hdr` ([`crate::offload::VnetHdr`]), a read may return a TCP super-packet of up to
//! 64 KiB that the gateway segments, and a write may hand the kernel one. Where the kernel
//! refuses the offloads the device falls back to plain packets ([`Tun::vnet_hdr`] says which).
//!
//! With several queues (`IFF_MULTI_QUEUE`, [`Tun::create_with_queues`]; two by default,
//! `SLICE_GATEWAY_TUN_QUEUES=1` for one) the device has one fd per queue: the kernel puts each outgoing flow on one queue (its flow table, else a hash), so
//! each packet thread reads its own queue. A write may go through any queue; the kernel then
//! sends that flow's packets the other way out of the queue it was written through (it learns
//! the queue per flow on every write), so [`Tun::send`] writes each flow through the queue its
//! hash picks ([`queue_for`]) and a flow's outgoing packets stay on one queue, in order.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::offload::VNET_HDR_LEN;

/// `_IOW('T', 202, int)` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
/// The most queues the gateway opens (the kernel allows 256; a packet thread each).
pub const MAX_QUEUES: usize = 16;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device; the interface disappears when this is dropped (it is not persistent).
#[derive(Debug)]
pub struct Tun {
    /// One fd per queue; one without `IFF_MULTI_QUEUE`.
    queues: Vec<File>,
    name: String,
    vnet_hdr: bool,
}

/// The queues of the device when `SLICE_GATEWAY_TUN_QUEUES` does not say: two, a packet thread
/// each. Against one queue shared by the two threads, in the same runs of section 4 of
/// `docs/benchmarks.md` ("Multi-queue TUN"): 14 % (one stream) and 6 % (four streams) more
/// throughput on a quiet 2-vCPU machine, 6–15 % less CPU per Gbit, half the context switches of
/// the sending gateway.
pub const DEFAULT_QUEUES: usize = 2;

/// How many TUN queues `SLICE_GATEWAY_TUN_QUEUES` asks for ([`DEFAULT_QUEUES`] when unset or
/// unparsable; `1`: the single-queue device and its two shared loops).
#[must_use]
pub fn queues_from_env() -> usize {
    std::env::var("SLICE_GATEWAY_TUN_QUEUES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(DEFAULT_QUEUES, |n| n.clamp(1, MAX_QUEUES))
}

/// The queue of `n` that a packet (an IP packet, without `virtio_net_hdr`) is written through:
/// by its flow key ([`crate::multipath::flow_hash`]), mixed; 0 for what is not IP.
#[must_use]
pub fn queue_for(packet: &[u8], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    crate::multipath::flow_hash(packet).map_or(0, |flow| {
        let mixed = crate::multipath::weight(flow, 0);
        usize::try_from(mixed % n as u64).unwrap_or(0)
    })
}

/// Refuses a name the kernel would not take for an interface.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?} (1-15 bytes)")));
    }
    Ok(())
}

impl Tun {
    /// Creates (or attaches to) the TUN interface `name` with the queues
    /// `SLICE_GATEWAY_TUN_QUEUES` asks for ([`queues_from_env`], default [`DEFAULT_QUEUES`]).
    ///
    /// # Errors
    /// As [`Tun::create_with_queues`].
    pub fn create(name: &str) -> io::Result<Self> {
        Self::create_with_queues(name, queues_from_env())
    }

    /// Creates (or attaches to) the TUN interface `name`; with `queues` > 1 a multi-queue device
    /// with that many queues (falling back to one where the kernel refuses `IFF_MULTI_QUEUE`).
    ///
    /// # Errors
    /// When the name is longer than 15 bytes, `/dev/net/tun` cannot be opened, or `TUNSETIFF`
    /// fails (EBUSY: another process holds an interface with this name).
    pub fn create_with_queues(name: &str, queues: usize) -> io::Result<Self> {
        check_name(name)?;
        let queues = queues.clamp(1, MAX_QUEUES);
        if queues > 1 {
            match Self::open_all(name, queues) {
                Ok(tun) => return Ok(tun),
                Err(err) => tracing::warn!(%err, queues, "multi-queue TUN refused; using one queue"),
            }
        }
        Self::open_all(name, 1)
    }

    /// Creates (or attaches to) the TUN interface `name` with one queue and no offloads: one
    /// plain IP packet per read and write (the bench's relay without encryption, the floor of
    /// any userspace TUN tunnel, uses it).
    ///
    /// # Errors
    /// As [`Tun::create_with_queues`].
    pub fn create_plain(name: &str) -> io::Result<Self> {
        check_name(name)?;
        Self::open(name, false, 1)
    }

    /// Every queue with offloads, or every queue without where the kernel refuses them.
    fn open_all(name: &str, queues: usize) -> io::Result<Self> {
        let offload = std::env::var_os("SLICE_GATEWAY_NO_OFFLOAD").is_none();
        if offload {
            match Self::open(name, true, queues) {
                Ok(tun) => return Ok(tun),
                Err(err) => tracing::warn!(%err, "TUN offloads refused; using plain packets"),
            }
        }
        Self::open(name, false, queues)
    }

    fn open(name: &str, vnet_hdr: bool, queues: usize) -> io::Result<Self> {
        let multi = queues > 1;
        let files = (0..queues).map(|_| Self::open_queue(name, vnet_hdr, multi)).collect::<io::Result<Vec<_>>>()?;
        if vnet_hdr {
            // The offloads are the device's (its features), so setting them through one queue
            // is enough; the `virtio_net_hdr` size is the default on every fd.
            let offloads: libc::c_uint = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
            // SAFETY: TUNSETOFFLOAD takes the flags by value; the fd is an attached TUN.
            let rc = unsafe { libc::ioctl(files[0].as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(offloads)) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self { queues: files, name: name.to_string(), vnet_hdr })
    }

    /// Opens one queue of `name` (the first creates the device, the others attach to it: the
    /// kernel wants the same `IFF_MULTI_QUEUE` and feature flags on each).
    fn open_queue(name: &str, vnet_hdr: bool, multi: bool) -> io::Result<File> {
        let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        let flags =
            IFF_TUN | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 } | if multi { IFF_MULTI_QUEUE } else { 0 };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a valid `struct ifreq` prefix (name + flags, padded to its 40 bytes)
        // and outlives the call; the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Non-blocking: the packet threads read it (see `device`), waiting in poll(2).
        // SAFETY: fcntl on an open fd.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(file)
    }

    /// Whether reads and writes carry a `virtio_net_hdr` (offloads on).
    #[must_use]
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many queues the device has (1 without `IFF_MULTI_QUEUE`).
    #[must_use]
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// The fd of `queue`, to wait on with others in poll(2).
    ///
    /// # Panics
    /// When `queue` is not below [`Tun::queues`].
    #[must_use]
    pub fn queue_fd(&self, queue: usize) -> RawFd {
        self.queues[queue].as_raw_fd()
    }

    /// Reads one packet from `queue` if one is queued (`WouldBlock` otherwise: the fds are
    /// non-blocking).
    ///
    /// # Errors
    /// As `read(2)`.
    ///
    /// # Panics
    /// When `queue` is not below [`Tun::queues`].
    pub fn try_recv(&self, queue: usize, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.queues[queue], buf)
    }

    /// Waits until a packet can be read from `queue` or `timeout_ms` passes; returns whether
    /// one can.
    ///
    /// # Errors
    /// As `poll(2)`.
    pub fn wait_readable(&self, queue: usize, timeout_ms: i32) -> io::Result<bool> {
        crate::udp::wait_readable(self.queue_fd(queue), timeout_ms)
    }

    /// Writes one packet (with its `virtio_net_hdr` when offloads are on), through the queue
    /// its flow hashes to ([`queue_for`]).
    ///
    /// # Errors
    /// As `write(2)`.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        let queue = match self.queues.len() {
            1 => 0,
            n => queue_for(packet.get(if self.vnet_hdr { VNET_HDR_LEN } else { 0 }..).unwrap_or(&[]), n),
        };
        io::Write::write(&mut &self.queues[queue], packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::multipath::tests::tcp4;

    #[test]
    fn one_queue_takes_everything() {
        assert_eq!(queue_for(&tcp4([10, 0, 0, 1], [10, 0, 0, 2], 1, 2), 1), 0);
        assert_eq!(queue_for(&[], 4), 0);
    }

    #[test]
    fn a_flow_keeps_its_queue_and_flows_spread() {
        let mut seen = [0usize; 2];
        for port in 40_000..40_064 {
            let p = tcp4([10, 0, 0, 1], [10, 0, 0, 2], port, 5201);
            let q = queue_for(&p, 2);
            assert_eq!(q, queue_for(&p, 2), "deterministic");
            // The payload does not move the flow.
            let mut longer = p.clone();
            longer.extend_from_slice(&[7u8; 100]);
            assert_eq!(q, queue_for(&longer, 2));
            seen[q] += 1;
        }
        assert!(seen.iter().all(|n| *n >= 16), "64 flows over two queues: {seen:?}");
    }
}
