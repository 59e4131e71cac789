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

/// A route in the main table.
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
        Ok(Self { runtime, handle })
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

    /// The link called `name`, if any.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST, || format!("looking up link {name}")) {
            Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })),
            Err(e) if matches!(e.errno(), Some(libc::ENODEV) | Some(libc::ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), || "listing links".to_string())?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
                _ => None,
            })
            .collect())
    }

    fn index_names(&mut self) -> Result<HashMap<u32, String>> {
        Ok(self.links()?.into_iter().map(|l| (l.index, l.name)).collect())
    }

    /// Creates a veth pair, each end in its namespace, in one request.
    pub fn create_veth(&mut self, req: &VethRequest<'_>) -> Result<()> {
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(req.peer_name.to_string()));
        if let Some(ns) = req.peer_netns {
            peer.attributes.push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        }
        if let Some(mtu) = req.mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = req.peer_mac {
            peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }

        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(req.name.to_string()));
        if let Some(ns) = req.netns {
            msg.attributes.push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        }
        if let Some(mtu) = req.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = req.mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        let where_ = |ns: Option<&Netns>| match ns {
            Some(ns) => format!(" in {}", ns.describe()),
            None => String::new(),
        };
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, || {
            format!(
                "creating veth {}{} (peer {}{})",
                req.name,
                where_(req.netns),
                req.peer_name,
                where_(req.peer_netns)
            )
        })
    }

    /// Creates a VXLAN device.
    pub fn create_vxlan(&mut self, req: &VxlanRequest) -> Result<()> {
        let mut data = vec![InfoVxlan::Id(req.vni)];
        match req.local {
            IpAddr::V4(a) => data.push(InfoVxlan::Local(a)),
            IpAddr::V6(a) => data.push(InfoVxlan::Local6(a)),
        }
        data.push(InfoVxlan::Port(req.port));
        data.push(InfoVxlan::Learning(false));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(req.name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(req.mtu));
        msg.attributes.push(LinkAttribute::Address(req.mac.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, || {
            format!("creating vxlan {} (VNI {}, local {}, port {})", req.name, req.vni, req.local, req.port)
        })
    }

    /// Deletes a link; `Ok(false)` when it did not exist.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.ack(RouteNetlinkMessage::DelLink(msg), 0, || format!("deleting link {name}")) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets a link up.
    pub fn set_up(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, || format!("setting link {name} up"))
    }

    /// Turns IPv4 forwarding on for packets that arrive on this one link (the per-device
    /// `net.ipv4.conf.<link>.forwarding`, set over netlink as `IFLA_INET_CONF`), without the
    /// namespace-wide `net.ipv4.ip_forward` or a writable `/proc/sys`: CAP_NET_ADMIN is enough.
    pub fn enable_ipv4_forwarding(&mut self, name: &str) -> Result<()> {
        let mut conf = InetDevConf::default();
        // A request carries only the non-zero entries: this sets forwarding and nothing else.
        conf.forwarding = 1;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(conf)])]));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, || format!("turning IPv4 forwarding on for link {name}"))
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, || format!("setting the MTU of link {name} to {mtu}"))
    }

    /// Moves a link into another namespace.
    pub fn set_netns(&mut self, name: &str, ns: &Netns) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, || format!("moving link {name} into {}", ns.describe()))
    }

    /// Addresses on a link.
    pub fn addrs(&mut self, link: &str) -> Result<Vec<IpNet>> {
        let index = self.index(link)?;
        let msgs = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()), || {
            format!("listing addresses of {link}")
        })?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on a
            // point-to-point link); IPv6 only sends IFA_ADDRESS.
            let mut local = None;
            let mut address = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(net) = IpNet::new(ip, a.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    fn addr_message(index: u32, addr: IpNet) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.family = family_of(&addr.addr());
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.header.scope = AddressScope::Universe;
        match addr.addr() {
            IpAddr::V4(_) => {
                msg.attributes.push(AddressAttribute::Local(addr.addr()));
                msg.attributes.push(AddressAttribute::Address(addr.addr()));
            }
            IpAddr::V6(_) => {
                msg.attributes.push(AddressAttribute::Address(addr.addr()));
            }
        }
        msg
    }

    /// Adds an address (replacing an equal one, so it is idempotent). IPv6 addresses are
    /// added with `nodad`: they are ours by construction (IPAM), and a tentative address could
    /// not be used as a source for the first second or so.
    pub fn add_addr(&mut self, link: &str, addr: IpNet) -> Result<()> {
        let index = self.index(link)?;
        let mut msg = Self::addr_message(index, addr);
        if addr.addr().is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
        }
        self.ack(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE, || {
            format!("adding address {addr} to {link}")
        })
    }

    /// Removes an address; `Ok(false)` when it was not there.
    pub fn del_addr(&mut self, link: &str, addr: IpNet) -> Result<bool> {
        let index = match self.index(link) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let msg = Self::addr_message(index, addr);
        match self.ack(RouteNetlinkMessage::DelAddress(msg), 0, || format!("removing address {addr} from {link}")) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Routes of the main table of one family (`v6 = false` for IPv4).
    pub fn routes(&mut self, v6: bool) -> Result<Vec<Route>> {
        let mut query = RouteMessage::default();
        query.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let msgs = self
            .dump(RouteNetlinkMessage::GetRoute(query), || format!("listing IPv{} routes", if v6 { 6 } else { 4 }))?;
        let names = self.index_names()?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let mut table = u32::from(r.header.table);
            let mut dst = None;
            let mut gateway = None;
            let mut src = None;
            let mut oif = None;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(a) => dst = route_ip(a),
                    RouteAttribute::Gateway(a) => gateway = route_ip(a),
                    RouteAttribute::PrefSource(a) => src = route_ip(a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || r.header.kind != RouteType::Unicast
                || r.header.flags.contains(RouteFlags::Cloned)
            {
                continue;
            }
            let dst_ip =
                dst.unwrap_or(if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) });
            let Ok(dst) = IpNet::new(dst_ip, r.header.destination_prefix_length) else {
                continue;
            };
            out.push(Route {
                dst,
                gateway,
                dev: oif.and_then(|i| names.get(&i).cloned()),
                src,
                onlink: r.header.flags.contains(RouteFlags::Onlink),
                scope_link: r.header.scope == RouteScope::Link,
            });
        }
        Ok(out)
    }

    fn route_message(&mut self, route: &Route, for_delete: bool) -> Result<RouteMessage> {
        let mut msg = RouteMessage::default();
        let v6 = route.dst.addr().is_ipv6();
        msg.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.destination_prefix_length = route.dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        if for_delete {
            // iproute2's `ip route del`: any protocol, any scope, any type.
            msg.header.scope = RouteScope::NoWhere;
        } else {
            msg.header.protocol = RouteProtocol::Static;
            msg.header.scope = if route.scope_link { RouteScope::Link } else { RouteScope::Universe };
            msg.header.kind = RouteType::Unicast;
        }
        if route.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
        if route.dst.prefix_len() > 0 {
            msg.attributes.push(RouteAttribute::Destination(route.dst.network().into()));
        }
        if let Some(gw) = route.gateway {
            msg.attributes.push(RouteAttribute::Gateway(gw.into()));
        }
        if let Some(src) = route.src {
            msg.attributes.push(RouteAttribute::PrefSource(src.into()));
        }
        if let Some(dev) = &route.dev {
            let index = self.index(dev)?;
            msg.attributes.push(RouteAttribute::Oif(index));
        }
        Ok(msg)
    }

    fn describe_route(route: &Route) -> String {
        let mut s = format!("route {}", route.dst);
        if let Some(gw) = route.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(dev) = &route.dev {
            s.push_str(&format!(" dev {dev}"));
        }
        if let Some(src) = route.src {
            s.push_str(&format!(" src {src}"));
        }
        if route.scope_link {
            s.push_str(" scope link");
        }
        if route.onlink {
            s.push_str(" onlink");
        }
        s
    }

    /// Adds a route that must not exist yet: a route to the same destination (in the same
    /// table, with the same metric) fails with `EEXIST` instead of being taken over.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let msg = self.route_message(route, false)?;
        self.ack(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL, || {
            format!("adding {}", Self::describe_route(route))
        })
    }

    /// Adds or replaces a route.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        let msg = self.route_message(route, false)?;
        self.ack(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE, || {
            format!("replacing {}", Self::describe_route(route))
        })
    }

    /// Deletes a route; `Ok(false)` when it was not there.
    pub fn del_route(&mut self, route: &Route) -> Result<bool> {
        let msg = match self.route_message(route, true) {
            Ok(m) => m,
            Err(Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match self.ack(RouteNetlinkMessage::DelRoute(msg), 0, || format!("deleting {}", Self::describe_route(route))) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Neighbour entries on a link.
    pub fn neighs(&mut self, link: &str) -> Result<Vec<Neigh>> {
        let index = self.index(link)?;
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = NeighbourMessage::default();
            query.header.family = family;
            let msgs =
                self.dump(RouteNetlinkMessage::GetNeighbour(query), || format!("listing neighbours of {link}"))?;
            for m in msgs {
                let RouteNetlinkMessage::NewNeighbour(n) = m else {
                    continue;
                };
                if n.header.ifindex != index || n.header.family != family {
                    continue;
                }
                let mut ip = None;
                let mut mac = None;
                for attr in &n.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            ip = Some(IpAddr::V4(*a));
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                            ip = Some(IpAddr::V6(*a));
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => mac = mac_from(l),
                        _ => {}
                    }
                }
                if let (Some(ip), Some(mac)) = (ip, mac) {
                    out.push(Neigh { ip, mac, permanent: n.header.state == NeighbourState::Permanent });
                }
            }
        }
        Ok(out)
    }

    /// Adds or replaces a permanent neighbour entry.
    pub fn replace_neigh(&mut self, link: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let index = self.index(link)?;
        let mut msg = NeighbourMessage::default();
        msg.header.family = family_of(&ip);
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::Destination(ip.into()));
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.ack(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE, || {
            format!("replacing neighbour {ip} lladdr {} on {link}", format_mac(&mac))
        })
    }

    /// Deletes a neighbour entry; `Ok(false)` when it was not there.
    pub fn del_neigh(&mut self, link: &str, ip: IpAddr) -> Result<bool> {
        let index = match self.index(link) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut msg = NeighbourMessage::default();
        msg.header.family = family_of(&ip);
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(ip.into()));
        match self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0, || format!("deleting neighbour {ip} on {link}")) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// FDB entries with a remote destination on a VXLAN link.
    pub fn fdb(&mut self, link: &str) -> Result<Vec<Fdb>> {
        let index = self.index(link)?;
        let mut query = NeighbourMessage::default();
        query.header.family = AddressFamily::Bridge;
        let msgs = self.dump(RouteNetlinkMessage::GetNeighbour(query), || format!("listing FDB entries of {link}"))?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(n) = m else {
                continue;
            };
            if n.header.ifindex != index || n.header.family != AddressFamily::Bridge {
                continue;
            }
            let mut dst = None;
            let mut mac = None;
            for attr in &n.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = ip_from_bytes(b);
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        dst = Some(IpAddr::V4(*a));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        dst = Some(IpAddr::V6(*a));
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac_from(l),
                    _ => {}
                }
            }
            if let (Some(dst), Some(mac)) = (dst, mac) {
                out.push(Fdb { mac, dst });
            }
        }
        Ok(out)
    }

    fn fdb_message(index: u32, entry: &Fdb) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Other(ip_bytes(&entry.dst))));
        msg
    }

    /// Adds or replaces a permanent FDB entry (`bridge fdb replace MAC dev LINK dst IP self permanent`).
    pub fn replace_fdb(&mut self, link: &str, entry: &Fdb) -> Result<()> {
        let index = self.index(link)?;
        let msg = Self::fdb_message(index, entry);
        self.ack(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE, || {
            format!("replacing FDB entry {} dst {} on {link}", format_mac(&entry.mac), entry.dst)
        })
    }

    /// Deletes an FDB entry; `Ok(false)` when it was not there.
    pub fn del_fdb(&mut self, link: &str, entry: &Fdb) -> Result<bool> {
        let index = match self.index(link) {
            Ok(i) => i,
            Err(Error::NotFound(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let msg = Self::fdb_message(index, entry);
        match self.ack(RouteNetlinkMessage::DelNeighbour(msg), 0, || {
            format!("deleting FDB entry {} dst {} on {link}", format_mac(&entry.mac), entry.dst)
        }) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
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
