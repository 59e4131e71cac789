//! Typed rtnetlink operations in one network namespace. A [`Netlink`] is bound to the namespace
//! it was opened in for its whole life (a netlink socket belongs to the namespace that created it).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Netns, Result};

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
    _private: (),
}

impl Netlink {
    /// A handle in the calling thread's namespace.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn new() -> Result<Self> {
        todo!("implement")
    }

    /// A handle in `ns`, opened from a thread inside it.
    ///
    /// # Errors
    /// When entering the namespace or opening the socket fails.
    pub fn in_netns(ns: &Netns) -> Result<Self> {
        let _ = ns;
        todo!("implement")
    }

    /// The link called `name`, if any.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let _ = name;
        todo!("implement")
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        todo!("implement")
    }

    /// Creates a veth pair, each end in its namespace, in one request.
    pub fn create_veth(&mut self, req: &VethRequest<'_>) -> Result<()> {
        let _ = req;
        todo!("implement")
    }

    /// Creates a VXLAN device.
    pub fn create_vxlan(&mut self, req: &VxlanRequest) -> Result<()> {
        let _ = req;
        todo!("implement")
    }

    /// Deletes a link; `Ok(false)` when it did not exist.
    pub fn delete_link(&mut self, name: &str) -> Result<bool> {
        let _ = name;
        todo!("implement")
    }

    /// Sets a link up.
    pub fn set_up(&mut self, name: &str) -> Result<()> {
        let _ = name;
        todo!("implement")
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()> {
        let _ = (name, mtu);
        todo!("implement")
    }

    /// Moves a link into another namespace.
    pub fn set_netns(&mut self, name: &str, ns: &Netns) -> Result<()> {
        let _ = (name, ns);
        todo!("implement")
    }

    /// Addresses on a link.
    pub fn addrs(&mut self, link: &str) -> Result<Vec<IpNet>> {
        let _ = link;
        todo!("implement")
    }

    /// Adds an address (replacing an equal one, so it is idempotent).
    pub fn add_addr(&mut self, link: &str, addr: IpNet) -> Result<()> {
        let _ = (link, addr);
        todo!("implement")
    }

    /// Removes an address; `Ok(false)` when it was not there.
    pub fn del_addr(&mut self, link: &str, addr: IpNet) -> Result<bool> {
        let _ = (link, addr);
        todo!("implement")
    }

    /// Routes of the main table of one family (`v6 = false` for IPv4).
    pub fn routes(&mut self, v6: bool) -> Result<Vec<Route>> {
        let _ = v6;
        todo!("implement")
    }

    /// Adds or replaces a route.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        let _ = route;
        todo!("implement")
    }

    /// Deletes a route; `Ok(false)` when it was not there.
    pub fn del_route(&mut self, route: &Route) -> Result<bool> {
        let _ = route;
        todo!("implement")
    }

    /// Neighbour entries on a link.
    pub fn neighs(&mut self, link: &str) -> Result<Vec<Neigh>> {
        let _ = link;
        todo!("implement")
    }

    /// Adds or replaces a permanent neighbour entry.
    pub fn replace_neigh(&mut self, link: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let _ = (link, ip, mac);
        todo!("implement")
    }

    /// Deletes a neighbour entry; `Ok(false)` when it was not there.
    pub fn del_neigh(&mut self, link: &str, ip: IpAddr) -> Result<bool> {
        let _ = (link, ip);
        todo!("implement")
    }

    /// FDB entries with a remote destination on a VXLAN link.
    pub fn fdb(&mut self, link: &str) -> Result<Vec<Fdb>> {
        let _ = link;
        todo!("implement")
    }

    /// Adds or replaces a permanent FDB entry (`bridge fdb replace MAC dev LINK dst IP self permanent`).
    pub fn replace_fdb(&mut self, link: &str, entry: &Fdb) -> Result<()> {
        let _ = (link, entry);
        todo!("implement")
    }

    /// Deletes an FDB entry; `Ok(false)` when it was not there.
    pub fn del_fdb(&mut self, link: &str, entry: &Fdb) -> Result<bool> {
        let _ = (link, entry);
        todo!("implement")
    }
}
