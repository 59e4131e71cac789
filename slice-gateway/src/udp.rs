//! Batched UDP I/O: `recvmmsg` with `UDP_GRO` (each buffer may hold several coalesced
//! datagrams of `gso_size` bytes, see [`crate::offload::split_gro`]) and `sendmsg` with
//! `UDP_SEGMENT` (equal-sized datagrams concatenated, cut by the kernel or the NIC).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// `UDP_SEGMENT` and `UDP_GRO` from `<linux/udp.h>`.
pub const UDP_SEGMENT: libc::c_int = 103;
pub const UDP_GRO: libc::c_int = 104;
/// The kernel refuses more segments per `UDP_SEGMENT` send.
pub const UDP_MAX_SEGMENTS: usize = 64;
/// Largest UDP payload of one GSO send (64 KiB IP packet minus headers, with room to spare).
pub const GSO_MAX_BYTES: usize = 65_000;

const CMSG_SPACE: usize = 64;

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&raw const value).cast(), size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Turns on `UDP_GRO`; false when the kernel refuses.
#[must_use]
pub fn enable_gro(fd: RawFd) -> bool {
    setsockopt_int(fd, libc::SOL_UDP, UDP_GRO, 1).is_ok()
}

/// Waits until `fd` is readable or `timeout_ms` passes; returns whether it is.
///
/// # Errors
/// As `poll(2)`.
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, timeout_ms) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc > 0) }
}

/// A socket address in C form.
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    /// `to` for a socket of family v6 (`v6_socket`: IPv4 becomes v4-mapped) or v4.
    #[must_use]
    pub fn new(to: SocketAddr, v6_socket: bool) -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let to = match to {
            SocketAddr::V4(v4) if v6_socket => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            other => other,
        };
        let len = match to {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: as above.
                unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        Self { storage, len: len as libc::socklen_t }
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(std::ptr::from_ref(s).cast()) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 = unsafe { &*(std::ptr::from_ref(s).cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let addr = match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), u16::from_be(sin6.sin6_port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), 0, sin6.sin6_scope_id)),
            };
            Some(addr)
        }
        _ => None,
    }
}

/// One received buffer: its bytes, the sender, and the GRO segment size (0: one datagram).
pub struct Received<'a> {
    pub data: &'a [u8],
    pub from: SocketAddr,
    pub gso_size: usize,
}

/// Buffers for `recvmmsg`.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u64; CMSG_SPACE / 8]>,
    lens: Vec<usize>,
    gso: Vec<usize>,
    n: usize,
}

impl RecvBatch {
    /// `count` buffers of `size` bytes.
    #[must_use]
    pub fn new(count: usize, size: usize) -> Self {
        Self {
            bufs: vec![vec![0u8; size]; count],
            // SAFETY: all-zero is a valid sockaddr_storage.
            addrs: vec![unsafe { zeroed() }; count],
            cmsgs: vec![[0u64; CMSG_SPACE / 8]; count],
            lens: vec![0; count],
            gso: vec![0; count],
            n: 0,
        }
    }

    /// Takes what is queued, up to the batch size, without blocking.
    ///
    /// # Errors
    /// As `recvmmsg(2)` (`WouldBlock` when nothing is queued).
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let count = self.bufs.len();
        let mut iovs: Vec<libc::iovec> =
            self.bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        // SAFETY: all-zero mmsghdrs are valid; every pointer set below outlives the call.
        let mut msgs: Vec<libc::mmsghdr> = (0..count).map(|_| unsafe { zeroed() }).collect();
        for i in 0..count {
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE;
        }
        // SAFETY: `msgs` describes `count` valid buffers.
        let n = unsafe {
            libc::recvmmsg(fd, msgs.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            self.n = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, m) in msgs.iter().enumerate().take(n) {
            self.lens[i] = m.msg_len as usize;
            self.gso[i] = 0;
            let h = &m.msg_hdr;
            // SAFETY: the kernel filled `msg_control` up to `msg_controllen`.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let v: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        self.gso[i] = usize::try_from(v).unwrap_or(0);
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        self.n = n;
        Ok(n)
    }

    /// The `i`-th buffer of the last [`Self::recv`].
    #[must_use]
    pub fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.n {
            return None;
        }
        Some(Received {
            data: &self.bufs[i][..self.lens[i]],
            from: from_storage(&self.addrs[i])?,
            gso_size: self.gso[i],
        })
    }
}

/// Sends `data` (datagrams of `segment` bytes concatenated, the last may be shorter) to `to`
/// in one `sendmsg` with `UDP_SEGMENT` (`segment == data.len()` or 0: one plain datagram).
///
/// # Errors
/// As `sendmsg(2)`.
pub fn send_gso(fd: RawFd, data: &[u8], segment: usize, to: &RawAddr) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
    let mut cmsg = [0u64; CMSG_SPACE / 8];
    // SAFETY: all-zero msghdr is valid; pointers outlive the call.
    let mut h: libc::msghdr = unsafe { zeroed() };
    h.msg_name = std::ptr::from_ref(&to.storage).cast_mut().cast();
    h.msg_namelen = to.len;
    h.msg_iov = &raw mut iov;
    h.msg_iovlen = 1;
    if segment > 0 && segment < data.len() {
        h.msg_control = cmsg.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        // SAFETY: the control buffer holds one cmsg with a u16.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&raw const h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment as u16);
        }
    }
    // SAFETY: `h` describes valid memory.
    let n = unsafe { libc::sendmsg(fd, &raw const h, 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}
