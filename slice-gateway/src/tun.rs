//! The TUN device: `/dev/net/tun` opened with `IFF_TUN | IFF_NO_PI` (one IP packet per
//! read/write). A later step adds `IFF_VNET_HDR` + `TUNSETOFFLOAD` and `IFF_MULTI_QUEUE`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;

/// `_IOW('T', 202, int)` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

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
        let file = OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TUN | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: `req` is a valid `struct ifreq` prefix (name + flags, padded to its 40 bytes)
        // and outlives the call; the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { file, name: name.to_string() })
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet (blocking).
    ///
    /// # Errors
    /// As `read(2)`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.file, buf)
    }

    /// Writes one packet.
    ///
    /// # Errors
    /// As `write(2)`.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &self.file, packet)
    }
}
