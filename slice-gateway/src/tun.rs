//! The TUN device: `/dev/net/tun` opened with `IFF_TUN | IFF_NO_PI | IFF_VNET_HDR` and
//! `TUNSETOFFLOAD` (checksum offload, TSO4/TSO6 with ECN): every read and write starts with a
//! `virtio_net_hdr` ([`crate::offload::VnetHdr`]), a read may return a TCP super-packet of up to
//! 64 KiB that the gateway segments, and a write may hand the kernel one. Where the kernel
//! refuses the offloads the device falls back to plain packets ([`Tun::vnet_hdr`] says which).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// `_IOW('T', 202, int)` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device; the interface disappears when this is dropped (it is not persistent).
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
    vnet_hdr: bool,
}

impl Tun {
    /// Creates (or attaches to) the TUN interface `name`.
    ///
    /// # Errors
    /// When the name is longer than 15 bytes, `/dev/net/tun` cannot be opened, or `TUNSETIFF`
    /// fails (EBUSY: another process holds an interface with this name).
    pub fn create(name: &str) -> io::Result<Self> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name {name:?} (1-15 bytes)"),
            ));
        }
        let offload = std::env::var_os("SLICE_GATEWAY_NO_OFFLOAD").is_none();
        if offload {
            match Self::open(name, true) {
                Ok(tun) => return Ok(tun),
                Err(err) => tracing::warn!(%err, "TUN offloads refused; using plain packets"),
            }
        }
        Self::open(name, false)
    }

    fn open(name: &str, vnet_hdr: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        let flags = IFF_TUN | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a valid `struct ifreq` prefix (name + flags, padded to its 40 bytes)
        // and outlives the call; the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if vnet_hdr {
            let offloads: libc::c_uint = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
            // SAFETY: TUNSETOFFLOAD takes the flags by value; the fd is an attached TUN.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, libc::c_ulong::from(offloads)) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // Non-blocking: both packet threads read it (see `device`), waiting in poll(2).
        // SAFETY: fcntl on an open fd.
        unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(Self { file, name: name.to_string(), vnet_hdr })
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

    /// Reads one packet if one is queued (`WouldBlock` otherwise: the fd is non-blocking).
    ///
    /// # Errors
    /// As `read(2)`.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.file, buf)
    }

    /// Waits until a packet can be read or `timeout_ms` passes; returns whether one can.
    ///
    /// # Errors
    /// As `poll(2)`.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc > 0) }
    }

    /// Writes one packet.
    ///
    /// # Errors
    /// As `write(2)`.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &self.file, packet)
    }
}
