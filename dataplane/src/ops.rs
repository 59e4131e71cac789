//! The rtnetlink operations on links, addresses and routes that slicenet's components decide
//! about, as a trait: [`Netlink`] does them in the kernel, [`crate::fake::FakeNetlink`] in
//! memory while recording every call. Code written against the trait (the CNI plugin's attach:
//! what it creates, and what it undoes when a step fails) is tested without root through the
//! fake, and with root through the real thing.

use ipnet::IpNet;

use crate::Result;
use crate::netlink::{Link, Netlink, Route, VethRequest};

/// Links, addresses and routes of one network namespace.
pub trait NetlinkOps {
    /// The link called `name`, if any.
    fn link(&mut self, name: &str) -> Result<Option<Link>>;
    /// Every link.
    fn links(&mut self) -> Result<Vec<Link>>;
    /// Creates a veth pair; each end may go straight into another namespace.
    fn create_veth(&mut self, req: &VethRequest<'_>) -> Result<()>;
    /// Deletes a link (and, for a veth, its peer); `Ok(false)` when it was not there.
    fn delete_link(&mut self, name: &str) -> Result<bool>;
    /// Sets a link up.
    fn set_up(&mut self, name: &str) -> Result<()>;
    /// Sets a link's MTU.
    fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()>;
    /// Addresses on a link.
    fn addrs(&mut self, link: &str) -> Result<Vec<IpNet>>;
    /// Adds an address (`EEXIST` when it is there).
    fn add_addr(&mut self, link: &str, addr: IpNet) -> Result<()>;
    /// Routes of the main table of one family.
    fn routes(&mut self, v6: bool) -> Result<Vec<Route>>;
    /// Adds a route that must not exist yet (`EEXIST` when one to the same destination does).
    fn add_route(&mut self, route: &Route) -> Result<()>;
    /// Adds or replaces a route.
    fn replace_route(&mut self, route: &Route) -> Result<()>;
    /// Deletes a route; `Ok(false)` when it was not there.
    fn del_route(&mut self, route: &Route) -> Result<bool>;
}

impl NetlinkOps for Netlink {
    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Netlink::link(self, name)
    }
    fn links(&mut self) -> Result<Vec<Link>> {
        Netlink::links(self)
    }
    fn create_veth(&mut self, req: &VethRequest<'_>) -> Result<()> {
        Netlink::create_veth(self, req)
    }
    fn delete_link(&mut self, name: &str) -> Result<bool> {
        Netlink::delete_link(self, name)
    }
    fn set_up(&mut self, name: &str) -> Result<()> {
        Netlink::set_up(self, name)
    }
    fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()> {
        Netlink::set_mtu(self, name, mtu)
    }
    fn addrs(&mut self, link: &str) -> Result<Vec<IpNet>> {
        Netlink::addrs(self, link)
    }
    fn add_addr(&mut self, link: &str, addr: IpNet) -> Result<()> {
        Netlink::add_addr(self, link, addr)
    }
    fn routes(&mut self, v6: bool) -> Result<Vec<Route>> {
        Netlink::routes(self, v6)
    }
    fn add_route(&mut self, route: &Route) -> Result<()> {
        Netlink::add_route(self, route)
    }
    fn replace_route(&mut self, route: &Route) -> Result<()> {
        Netlink::replace_route(self, route)
    }
    fn del_route(&mut self, route: &Route) -> Result<bool> {
        Netlink::del_route(self, route)
    }
}
