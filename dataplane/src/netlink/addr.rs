//! Addresses on links.

use super::*;

impl Netlink {
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
}
