//! Links: lookup, veth and VXLAN creation, deletion, state, MTU, namespace, per-link forwarding.

use super::*;

impl Netlink {
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

    pub(super) fn index_names(&mut self) -> Result<HashMap<u32, String>> {
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
}
