//! Typed rtnetlink operations in one network namespace. A [`Netlink`] is bound to the namespace
//! it was opened in for its whole life (a netlink socket belongs to the namespace that created it).
//!
//! Requests are built as raw `netlink-packet-route` messages and sent through the rtnetlink
//! [`rtnetlink::Handle`], so every request carries exactly the flags we mean
//! (`NLM_F_CREATE|NLM_F_EXCL` for creates, `NLM_F_CREATE|NLM_F_REPLACE` for replaces) and the
//! kernel's errno comes back with the request's description attached. The socket has
//! `NETLINK_EXT_ACK` on, so the kernel's own explanation (when it gives one) ends up in the
//! message too.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use futures::StreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::sys::AsyncSocket;

use crate::{Error, Netns, Result};

mod addr;
mod link;
mod neigh;
mod nexthop;
mod route;
mod rule;

pub use nexthop::{Nexthop, NexthopKind};
pub use route::NexthopRoute;
pub use rule::Rule;

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    /// `IFLA_INFO_KIND` ("veth", "vxlan", "bridge"), if any.
    pub kind: Option<String>,
    /// VNI, for a VXLAN link.
    pub vxlan_id: Option<u32>,
    /// Local (underlay) address, for a VXLAN link.
    pub vxlan_local: Option<IpAddr>,
    /// UDP destination port, for a VXLAN link.
    pub vxlan_port: Option<u16>,
    /// Whether the VXLAN learns source addresses (`learning`), for a VXLAN link.
    pub vxlan_learning: Option<bool>,
}

/// A veth pair to create; each end may be placed straight into a namespace.
#[derive(Debug)]
pub struct VethRequest<'a> {
    pub name: &'a str,
    /// Namespace of `name`; `None` = the handle's own namespace.
    pub netns: Option<&'a Netns>,
    pub peer_name: &'a str,
    /// Namespace of `peer_name`; `None` = the handle's own namespace.
    pub peer_netns: Option<&'a Netns>,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub peer_mac: Option<[u8; 6]>,
}

/// A VXLAN device to create in the handle's namespace (no learning, fixed MAC).
#[derive(Debug, Clone)]
pub struct VxlanRequest {
    pub name: String,
    pub vni: u32,
    pub local: IpAddr,
    pub port: u16,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// A route in the main table (through a gateway or a device; a route through a nexthop object is
/// a [`NexthopRoute`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output link by name.
    pub dev: Option<String>,
    pub src: Option<IpAddr>,
    pub onlink: bool,
    /// `scope link` (a directly connected destination) instead of universe.
    pub scope_link: bool,
}

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub permanent: bool,
}

/// A bridge forwarding entry of a VXLAN device: inner MAC → outer destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fdb {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

/// A netlink handle bound to one network namespace.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
    /// A plain rtnetlink socket in the same namespace for the messages netlink-packet-route
    /// does not know (nexthops, [`nexthop`]), with its last sequence number.
    raw: rtnetlink::sys::Socket,
    raw_seq: u32,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn errno_text(errno: i32) -> String {
    nix::errno::Errno::from_raw(errno).desc().to_string()
}

/// The `NLMSGERR_ATTR_MSG` string of an extended ACK, if the kernel sent one.
///
/// With `NETLINK_CAP_ACK` the error payload is the request's 16-byte header followed by the
/// TLVs (when the error message carries `NLM_F_ACK_TLVS`).
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let mut tlvs = &payload[16..];
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]);
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &tlvs[4..len];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            let msg = String::from_utf8_lossy(&value[..end]).trim().to_string();
            return (!msg.is_empty()).then_some(msg);
        }
        let padded = (len + 3) & !3;
        tlvs = &tlvs[padded.min(tlvs.len())..];
    }
    None
}

/// True for the errnos that mean "there is no such object" in a delete.
fn is_absent(err: &Error) -> bool {
    matches!(err.errno(), Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL))
        || matches!(err, Error::NotFound(_))
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn mac_from(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))),
        _ => None,
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan_id: None,
        vxlan_local: None,
        vxlan_port: None,
        vxlan_learning: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(a) => link.mac = mac_from(a),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(vx)) => {
                            for v in vx {
                                match v {
                                    InfoVxlan::Id(id) => link.vxlan_id = Some(*id),
                                    InfoVxlan::Local(a) => link.vxlan_local = Some(IpAddr::V4(*a)),
                                    InfoVxlan::Local6(a) => {
                                        link.vxlan_local = Some(IpAddr::V6(*a));
                                    }
                                    InfoVxlan::Port(p) => link.vxlan_port = Some(*p),
                                    InfoVxlan::Learning(l) => link.vxlan_learning = Some(*l),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

impl Netlink {
    /// A handle in the calling thread's namespace.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn new() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::Io { op: "starting the netlink runtime".into(), source: e })?;
        let (mut connection, handle, _) = {
            // The socket registers with this runtime's reactor.
            let _guard = runtime.enter();
            rtnetlink::new_connection().map_err(|e| Error::Io { op: "opening a netlink socket".into(), source: e })?
        };
        {
            let socket = connection.socket_mut().socket_mut();
            // Kernel explanations in error replies (best effort: older kernels lack them), and
            // no copy of our request in them.
            let _ = socket.set_ext_ack(true);
            let _ = socket.set_cap_ack(true);
        }
        // The connection task runs whenever we block_on a request on this runtime.
        runtime.spawn(connection);
        let mut raw = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
            .map_err(|e| Error::Io { op: "opening a netlink socket".into(), source: e })?;
        raw.bind_auto().map_err(|e| Error::Io { op: "binding a netlink socket".into(), source: e })?;
        let _ = raw.set_ext_ack(true);
        let _ = raw.set_cap_ack(true);
        Ok(Self { runtime, handle, raw, raw_seq: 0 })
    }

    /// A handle in `ns`, opened from a thread inside it.
    ///
    /// # Errors
    /// When entering the namespace or opening the socket fails.
    pub fn in_netns(ns: &Netns) -> Result<Self> {
        ns.run(Self::new)?
    }

    /// Sends one request and collects the messages of the answer. A NACK becomes
    /// [`Error::Netlink`] with `op` as its description.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut req = NetlinkMessage::from(message);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let outcome: std::result::Result<Vec<RouteNetlinkMessage>, (i32, Option<String>)> =
            self.runtime.block_on(async move {
                let mut stream = match handle.request(req) {
                    Ok(s) => s,
                    Err(_) => return Err((0, None)),
                };
                let mut out = Vec::new();
                while let Some(msg) = stream.next().await {
                    let (header, payload) = msg.into_parts();
                    match payload {
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        NetlinkPayload::Error(e) => {
                            if let Some(code) = e.code {
                                let text = ext_ack_message(header.flags, &e.header);
                                return Err((code.get().abs(), text));
                            }
                        }
                        _ => {}
                    }
                }
                Ok(out)
            });
        match outcome {
            Ok(out) => Ok(out),
            Err((0, _)) => Err(Error::Other { op: op(), message: "the netlink connection is closed".into() }),
            Err((errno, ext)) => {
                let mut message = errno_text(errno);
                if let Some(ext) = ext {
                    message = format!("{message} (kernel: {ext})");
                }
                Err(Error::Netlink { op: op(), errno, message })
            }
        }
    }

    fn dump(&mut self, message: RouteNetlinkMessage, op: impl FnOnce() -> String) -> Result<Vec<RouteNetlinkMessage>> {
        self.request(message, NLM_F_REQUEST | NLM_F_DUMP, op)
    }

    fn ack(&mut self, message: RouteNetlinkMessage, flags: u16, op: impl FnOnce() -> String) -> Result<()> {
        self.request(message, NLM_F_REQUEST | NLM_F_ACK | flags, op).map(drop)
    }

    /// The index of link `name`, or [`Error::NotFound`].
    fn index(&mut self, name: &str) -> Result<u32> {
        self.link(name)?.map(|l| l.index).ok_or_else(|| Error::NotFound(format!("link {name} does not exist")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_ack_message_is_read_from_tlvs() {
        let mut payload = vec![0u8; 16];
        let text = b"Invalid prefix\0";
        let len = (4 + text.len()) as u16;
        payload.extend_from_slice(&len.to_ne_bytes());
        payload.extend_from_slice(&1u16.to_ne_bytes());
        payload.extend_from_slice(text);
        assert_eq!(ext_ack_message(NLM_F_ACK_TLVS, &payload).as_deref(), Some("Invalid prefix"));
        assert_eq!(ext_ack_message(0, &payload), None);
    }

    #[test]
    fn mac_formats() {
        assert_eq!(format_mac(&[0x0a, 0x58, 1, 2, 0xab, 0xff]), "0a:58:01:02:ab:ff");
    }
}
