//! Nexthop objects and groups (`ip nexthop`): list, add (exclusive), replace, delete.
//!
//! netlink-packet-route 0.34 (the version in Cargo.lock) has no nexthop messages: its
//! `RouteNetlinkMessage` stops at the types it knows (no `RTM_NEWNEXTHOP` = 104,
//! `RTM_DELNEXTHOP` = 105, `RTM_GETNEXTHOP` = 106, no `nhmsg`, no `NHA_*`), and rtnetlink's
//! handle only carries those messages. Routes do know `RTA_NH_ID` (`RouteAttribute::NhId`).
//! So nexthop requests are built here by hand from `<linux/nexthop.h>` and go over a second,
//! synchronous rtnetlink socket that [`Netlink`] opens beside rtnetlink's, in the same
//! namespace; errors come back the same way ([`Error::Netlink`] with the kernel's extended ACK).

use super::*;

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;

/// `RTNH_F_ONLINK` in `nh_flags`.
const RTNH_F_ONLINK: u32 = 4;
/// `RTPROT_STATIC`: what our nexthops are created with (iproute2 shows "proto static").
const RTPROT_STATIC: u8 = 4;

/// A nexthop object of the kernel (`ip nexthop`), referenced by routes through its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nexthop {
    /// Unique in the namespace; chosen by whoever creates it (never 0).
    pub id: u32,
    pub kind: NexthopKind,
}

/// What a nexthop is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NexthopKind {
    /// `via <gateway> dev <dev> [onlink]`.
    Gateway { gateway: IpAddr, dev: String, onlink: bool },
    /// `group A/B/…`: the kernel hashes each flow to one member (equal weights). The order is
    /// the kernel's order, which is the order it was given in.
    Group { members: Vec<u32> },
    /// Anything else (blackhole, no gateway, an unknown device): listed so that callers can
    /// see the id is taken, never created here.
    Other,
}

impl std::fmt::Display for Nexthop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nexthop id {}", self.id)?;
        match &self.kind {
            NexthopKind::Gateway { gateway, dev, onlink } => {
                write!(f, " via {gateway} dev {dev}{}", if *onlink { " onlink" } else { "" })
            }
            NexthopKind::Group { members } => {
                let list: Vec<String> = members.iter().map(u32::to_string).collect();
                write!(f, " group {}", list.join("/"))
            }
            NexthopKind::Other => write!(f, " (not a gateway or a group)"),
        }
    }
}

/// Appends one netlink attribute (`struct nlattr`, padded to 4 bytes).
fn push_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(4 + value.len()).expect("attribute fits in a netlink message");
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The attributes of a message body: (type without the nested/byte-order bits, value).
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

fn u32_of(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

/// One `nhmsg` (family, scope, protocol, reserved, flags) with its attributes, as the kernel
/// reports it; `None` for what is not a nexthop we can read.
fn parse_nexthop(body: &[u8], names: &HashMap<u32, String>) -> Option<Nexthop> {
    if body.len() < 8 {
        return None;
    }
    let flags = u32::from_ne_bytes(body[4..8].try_into().ok()?);
    let mut id = None;
    let mut gateway = None;
    let mut oif = None;
    let mut members = None;
    let mut blackhole = false;
    for (kind, value) in attrs(&body[8..]) {
        match kind {
            NHA_ID => id = u32_of(value),
            NHA_GATEWAY => gateway = ip_from_bytes(value),
            NHA_OIF => oif = u32_of(value),
            NHA_BLACKHOLE => blackhole = true,
            // `struct nexthop_grp`: u32 id, u8 weight - 1, u8 weight_high, u16 reserved.
            NHA_GROUP => members = Some(value.chunks_exact(8).filter_map(u32_of).collect::<Vec<_>>()),
            _ => {}
        }
    }
    let kind = match (members, gateway, oif.and_then(|i| names.get(&i))) {
        (Some(members), _, _) => NexthopKind::Group { members },
        (None, Some(gateway), Some(dev)) if !blackhole => {
            NexthopKind::Gateway { gateway, dev: dev.clone(), onlink: flags & RTNH_F_ONLINK != 0 }
        }
        _ => NexthopKind::Other,
    };
    Some(Nexthop { id: id?, kind })
}

impl Netlink {
    /// Sends one hand-built rtnetlink message on the raw socket and reads its answer: the
    /// bodies of the messages of type `reply` (for a dump), or nothing (for an ACK). A NACK
    /// becomes [`Error::Netlink`] with `op` as its description.
    fn raw_request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
        reply: u16,
        op: impl Fn() -> String,
    ) -> Result<Vec<Vec<u8>>> {
        self.raw_seq = self.raw_seq.wrapping_add(1);
        let seq = self.raw_seq;
        let mut msg = Vec::with_capacity(16 + body.len());
        let len = u32::try_from(16 + body.len()).expect("request fits in a netlink message");
        msg.extend_from_slice(&len.to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        let io = |source: std::io::Error| Error::Io { op: op(), source };
        let kernel = rtnetlink::sys::SocketAddr::new(0, 0);
        self.raw.send_to(&msg, &kernel, 0).map_err(io)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        loop {
            let (datagram, _) = self.raw.recv_from_full().map_err(io)?;
            let mut rest = datagram.as_slice();
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let msg_flags = u16::from_ne_bytes([rest[6], rest[7]]);
                let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < 16 || len > rest.len() {
                    break;
                }
                let payload = &rest[16..len];
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                if msg_seq != seq {
                    // An answer to an earlier request that gave up: not ours.
                    continue;
                }
                match ty {
                    NLMSG_ERROR => {
                        let code = payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                        if code == 0 {
                            return Ok(out);
                        }
                        let errno = code.abs();
                        let mut message = errno_text(errno);
                        if let Some(ext) = ext_ack_message(msg_flags, &payload[4..]) {
                            message = format!("{message} (kernel: {ext})");
                        }
                        return Err(Error::Netlink { op: op(), errno, message });
                    }
                    NLMSG_DONE => return Ok(out),
                    t if t == reply => {
                        out.push(payload.to_vec());
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every nexthop object of the namespace (both families and the groups).
    pub fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        let bodies = self.raw_request(RTM_GETNEXTHOP, NLM_F_REQUEST | NLM_F_DUMP, &[0u8; 8], RTM_NEWNEXTHOP, || {
            "listing nexthops".to_string()
        })?;
        let names = if bodies.is_empty() { HashMap::new() } else { self.index_names()? };
        Ok(bodies.iter().filter_map(|b| parse_nexthop(b, &names)).collect())
    }

    fn nexthop_body(&mut self, nh: &Nexthop) -> Result<Vec<u8>> {
        let mut body = Vec::with_capacity(64);
        let (family, flags) = match &nh.kind {
            NexthopKind::Gateway { gateway, onlink, .. } => {
                let family = if gateway.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
                (family as u8, if *onlink { RTNH_F_ONLINK } else { 0 })
            }
            NexthopKind::Group { .. } => (libc::AF_UNSPEC as u8, 0),
            NexthopKind::Other => {
                return Err(Error::Other { op: format!("creating {nh}"), message: "only gateways and groups".into() });
            }
        };
        // nhmsg: family, scope (must be 0), protocol, reserved, flags.
        body.extend_from_slice(&[family, 0, RTPROT_STATIC, 0]);
        body.extend_from_slice(&flags.to_ne_bytes());
        push_attr(&mut body, NHA_ID, &nh.id.to_ne_bytes());
        match &nh.kind {
            NexthopKind::Gateway { gateway, dev, .. } => {
                let index = self.index(dev)?;
                push_attr(&mut body, NHA_OIF, &index.to_ne_bytes());
                push_attr(&mut body, NHA_GATEWAY, &ip_bytes(gateway));
            }
            NexthopKind::Group { members } => {
                let mut group = Vec::with_capacity(members.len() * 8);
                for id in members {
                    // Weight 1 is sent as 0 (the kernel stores weight - 1).
                    group.extend_from_slice(&id.to_ne_bytes());
                    group.extend_from_slice(&[0, 0, 0, 0]);
                }
                push_attr(&mut body, NHA_GROUP, &group);
            }
            NexthopKind::Other => unreachable!("refused above"),
        }
        Ok(body)
    }

    /// Creates a nexthop that must not exist yet (`EEXIST` when its id is taken).
    pub fn add_nexthop(&mut self, nh: &Nexthop) -> Result<()> {
        let body = self.nexthop_body(nh)?;
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.raw_request(RTM_NEWNEXTHOP, flags, &body, RTM_NEWNEXTHOP, || format!("creating {nh}")).map(drop)
    }

    /// Creates a nexthop or replaces the one with its id in place (routes through it, and
    /// groups holding it, follow at once). The kernel refuses to turn a gateway into a group
    /// or back (`EINVAL`): delete and create for that.
    pub fn replace_nexthop(&mut self, nh: &Nexthop) -> Result<()> {
        let body = self.nexthop_body(nh)?;
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.raw_request(RTM_NEWNEXTHOP, flags, &body, RTM_NEWNEXTHOP, || format!("replacing {nh}")).map(drop)
    }

    /// Deletes nexthop `id`; `Ok(false)` when there was none. The kernel takes it out of every
    /// group, deletes a group left empty, and deletes the routes through what it deleted.
    pub fn del_nexthop(&mut self, id: u32) -> Result<bool> {
        let mut body = vec![0u8; 8];
        push_attr(&mut body, NHA_ID, &id.to_ne_bytes());
        match self.raw_request(RTM_DELNEXTHOP, NLM_F_REQUEST | NLM_F_ACK, &body, RTM_DELNEXTHOP, || {
            format!("deleting nexthop id {id}")
        }) {
            Ok(_) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut buf = Vec::new();
        push_attr(&mut buf, NHA_ID, &7u32.to_ne_bytes());
        push_attr(&mut buf, NHA_GATEWAY, &[10, 0, 0, 2]);
        push_attr(&mut buf, 9, &[1]);
        assert_eq!(buf.len(), 8 + 8 + 8);
        let parsed = attrs(&buf);
        assert_eq!(parsed, vec![(NHA_ID, &7u32.to_ne_bytes()[..]), (NHA_GATEWAY, &[10, 0, 0, 2][..]), (9, &[1][..])]);
    }

    #[test]
    fn a_group_and_a_gateway_are_read_back() {
        let names = HashMap::from([(3, "veth1".to_string())]);
        let mut body = vec![libc::AF_INET as u8, 0, 4, 0];
        body.extend_from_slice(&RTNH_F_ONLINK.to_ne_bytes());
        push_attr(&mut body, NHA_ID, &11u32.to_ne_bytes());
        push_attr(&mut body, NHA_OIF, &3u32.to_ne_bytes());
        push_attr(&mut body, NHA_GATEWAY, &[10, 80, 0, 65]);
        let gateway =
            NexthopKind::Gateway { gateway: "10.80.0.65".parse().unwrap(), dev: "veth1".into(), onlink: true };
        assert_eq!(parse_nexthop(&body, &names), Some(Nexthop { id: 11, kind: gateway }));

        let mut body = vec![0u8; 8];
        push_attr(&mut body, NHA_ID, &20u32.to_ne_bytes());
        let mut group = Vec::new();
        for id in [11u32, 12] {
            group.extend_from_slice(&id.to_ne_bytes());
            group.extend_from_slice(&[0; 4]);
        }
        push_attr(&mut body, NHA_GROUP, &group);
        assert_eq!(
            parse_nexthop(&body, &names),
            Some(Nexthop { id: 20, kind: NexthopKind::Group { members: vec![11, 12] } })
        );
    }
}
