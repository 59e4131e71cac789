//! Neighbour entries and the VXLAN forwarding database (FDB).

use super::*;

impl Netlink {
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
