//! The kernel operations slicenet's components decide about, as traits: [`NetlinkOps`] (links,
//! addresses, routes, neighbours and FDB entries of one network namespace) and
//! [`NamespaceOps`] (named namespaces, a netlink handle inside one, its sysctls). [`Netlink`]
//! and [`Kernel`] do them in the kernel; [`crate::fake::FakeNetlink`] and
//! [`crate::fake::FakeNamespaces`] in memory while recording every call. Code written against the
//! traits (the CNI plugin's attach, the node agent's router observe and apply: what they create,
//! in which order, and what they undo when a step fails) is tested without root through the
//! fake, and with root through the real thing.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::netlink::{Fdb, Link, Neigh, Netlink, Nexthop, NexthopRoute, Route, Rule, VethRequest, VxlanRequest};
use crate::nft::TableId;
use crate::{Error, Netns, Result};

/// Links, addresses, routes, neighbours, FDB entries, nexthop objects and rules of one network
/// namespace.
pub trait NetlinkOps {
    /// An open namespace that [`NetlinkOps::set_netns`] can move a link into.
    type Ns;

    /// The link called `name`, if any.
    fn link(&mut self, name: &str) -> Result<Option<Link>>;
    /// Every link.
    fn links(&mut self) -> Result<Vec<Link>>;
    /// Creates a veth pair; each end may go straight into another namespace.
    fn create_veth(&mut self, req: &VethRequest<'_>) -> Result<()>;
    /// Creates a VXLAN device (its UDP socket lives in this namespace, wherever the device moves).
    fn create_vxlan(&mut self, req: &VxlanRequest) -> Result<()>;
    /// Deletes a link (and, for a veth, its peer); `Ok(false)` when it was not there.
    fn delete_link(&mut self, name: &str) -> Result<bool>;
    /// Sets a link up.
    fn set_up(&mut self, name: &str) -> Result<()>;
    /// Sets a link's MTU.
    fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()>;
    /// Moves a link into namespace `ns`.
    fn set_netns(&mut self, name: &str, ns: &Self::Ns) -> Result<()>;
    /// Addresses on a link.
    fn addrs(&mut self, link: &str) -> Result<Vec<IpNet>>;
    /// Adds an address (`EEXIST` when it is there).
    fn add_addr(&mut self, link: &str, addr: IpNet) -> Result<()>;
    /// Deletes an address; `Ok(false)` when it was not there.
    fn del_addr(&mut self, link: &str, addr: IpNet) -> Result<bool>;
    /// Routes of the main table of one family, but those through a nexthop object.
    fn routes(&mut self, v6: bool) -> Result<Vec<Route>>;
    /// Adds a route that must not exist yet (`EEXIST` when one to the same destination does).
    fn add_route(&mut self, route: &Route) -> Result<()>;
    /// Adds or replaces a route.
    fn replace_route(&mut self, route: &Route) -> Result<()>;
    /// Deletes a route; `Ok(false)` when it was not there.
    fn del_route(&mut self, route: &Route) -> Result<bool>;
    /// Neighbour entries on a link.
    fn neighs(&mut self, link: &str) -> Result<Vec<Neigh>>;
    /// Adds or replaces a permanent neighbour entry.
    fn replace_neigh(&mut self, link: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()>;
    /// Deletes a neighbour entry; `Ok(false)` when it (or the link) was not there.
    fn del_neigh(&mut self, link: &str, ip: IpAddr) -> Result<bool>;
    /// FDB entries with a remote destination on a VXLAN link.
    fn fdb(&mut self, link: &str) -> Result<Vec<Fdb>>;
    /// Adds or replaces a permanent FDB entry.
    fn replace_fdb(&mut self, link: &str, entry: &Fdb) -> Result<()>;
    /// Deletes an FDB entry; `Ok(false)` when it (or the link) was not there.
    fn del_fdb(&mut self, link: &str, entry: &Fdb) -> Result<bool>;
    /// Every nexthop object (gateways and groups).
    fn nexthops(&mut self) -> Result<Vec<Nexthop>>;
    /// Creates a nexthop whose id is free (`EEXIST` when it is taken).
    fn add_nexthop(&mut self, nh: &Nexthop) -> Result<()>;
    /// Creates a nexthop or replaces the one with its id (a gateway cannot become a group or
    /// back: `EINVAL`).
    fn replace_nexthop(&mut self, nh: &Nexthop) -> Result<()>;
    /// Deletes a nexthop (out of its groups; an emptied group and the routes through what goes
    /// go with it); `Ok(false)` when it was not there.
    fn del_nexthop(&mut self, id: u32) -> Result<bool>;
    /// Routes through a nexthop object, of one family, in every table.
    fn nexthop_routes(&mut self, v6: bool) -> Result<Vec<NexthopRoute>>;
    /// Adds or replaces the route to `route.dst` in `route.table` with one through `route.nhid`.
    fn replace_nexthop_route(&mut self, route: &NexthopRoute) -> Result<()>;
    /// Deletes the route to `route.dst` in `route.table` if it goes through `route.nhid`;
    /// `Ok(false)` when there was none.
    fn del_nexthop_route(&mut self, route: &NexthopRoute) -> Result<bool>;
    /// The `iif <dev> lookup <table>` rules of one family.
    fn rules(&mut self, v6: bool) -> Result<Vec<Rule>>;
    /// Adds a rule (`EEXIST` when it is there).
    fn add_rule(&mut self, rule: &Rule) -> Result<()>;
    /// Deletes a rule; `Ok(false)` when it was not there.
    fn del_rule(&mut self, rule: &Rule) -> Result<bool>;
}

impl NetlinkOps for Netlink {
    type Ns = Netns;

    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        Netlink::link(self, name)
    }
    fn links(&mut self) -> Result<Vec<Link>> {
        Netlink::links(self)
    }
    fn create_veth(&mut self, req: &VethRequest<'_>) -> Result<()> {
        Netlink::create_veth(self, req)
    }
    fn create_vxlan(&mut self, req: &VxlanRequest) -> Result<()> {
        Netlink::create_vxlan(self, req)
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
    fn set_netns(&mut self, name: &str, ns: &Netns) -> Result<()> {
        Netlink::set_netns(self, name, ns)
    }
    fn addrs(&mut self, link: &str) -> Result<Vec<IpNet>> {
        Netlink::addrs(self, link)
    }
    fn add_addr(&mut self, link: &str, addr: IpNet) -> Result<()> {
        Netlink::add_addr(self, link, addr)
    }
    fn del_addr(&mut self, link: &str, addr: IpNet) -> Result<bool> {
        Netlink::del_addr(self, link, addr)
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
    fn neighs(&mut self, link: &str) -> Result<Vec<Neigh>> {
        Netlink::neighs(self, link)
    }
    fn replace_neigh(&mut self, link: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        Netlink::replace_neigh(self, link, ip, mac)
    }
    fn del_neigh(&mut self, link: &str, ip: IpAddr) -> Result<bool> {
        Netlink::del_neigh(self, link, ip)
    }
    fn fdb(&mut self, link: &str) -> Result<Vec<Fdb>> {
        Netlink::fdb(self, link)
    }
    fn replace_fdb(&mut self, link: &str, entry: &Fdb) -> Result<()> {
        Netlink::replace_fdb(self, link, entry)
    }
    fn del_fdb(&mut self, link: &str, entry: &Fdb) -> Result<bool> {
        Netlink::del_fdb(self, link, entry)
    }
    fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        Netlink::nexthops(self)
    }
    fn add_nexthop(&mut self, nh: &Nexthop) -> Result<()> {
        Netlink::add_nexthop(self, nh)
    }
    fn replace_nexthop(&mut self, nh: &Nexthop) -> Result<()> {
        Netlink::replace_nexthop(self, nh)
    }
    fn del_nexthop(&mut self, id: u32) -> Result<bool> {
        Netlink::del_nexthop(self, id)
    }
    fn nexthop_routes(&mut self, v6: bool) -> Result<Vec<NexthopRoute>> {
        Netlink::nexthop_routes(self, v6)
    }
    fn replace_nexthop_route(&mut self, route: &NexthopRoute) -> Result<()> {
        Netlink::replace_nexthop_route(self, route)
    }
    fn del_nexthop_route(&mut self, route: &NexthopRoute) -> Result<bool> {
        Netlink::del_nexthop_route(self, route)
    }
    fn rules(&mut self, v6: bool) -> Result<Vec<Rule>> {
        Netlink::rules(self, v6)
    }
    fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        Netlink::add_rule(self, rule)
    }
    fn del_rule(&mut self, rule: &Rule) -> Result<bool> {
        Netlink::del_rule(self, rule)
    }
}

/// Named network namespaces (as `ip netns` keeps them: a file per namespace in a directory),
/// netlink handles inside them, their sysctls and their nftables tables.
pub trait NamespaceOps {
    /// An open namespace.
    type Ns;
    /// A netlink handle bound to one namespace, able to move links into an [`Self::Ns`].
    type Netlink: NetlinkOps<Ns = Self::Ns>;

    /// The names of the namespace files in `dir` (none when `dir` does not exist).
    fn list_named(&mut self, dir: &Path) -> Result<Vec<String>>;
    /// Opens the namespace at `path` ([`Error::NotFound`] when there is none).
    fn open(&mut self, path: &Path) -> Result<Self::Ns>;
    /// Creates the named namespace at `path` unless it exists; true when it was created.
    fn ensure_named(&mut self, path: &Path) -> Result<bool>;
    /// Deletes the named namespace at `path`; `Ok(false)` when there was none.
    fn delete_named(&mut self, path: &Path) -> Result<bool>;
    /// A netlink handle inside `ns`.
    fn netlink(&mut self, ns: &Self::Ns) -> Result<Self::Netlink>;
    /// Reads a sysctl of `ns` (key under `/proc/sys`, trimmed value).
    fn sysctl(&mut self, ns: &Self::Ns, key: &str) -> Result<String>;
    /// Writes a sysctl of `ns`.
    fn set_sysctl(&mut self, ns: &Self::Ns, key: &str, value: &str) -> Result<()>;
    /// The objects of nftables table `table` in `ns` as [`crate::nft::list_table`] returns them;
    /// `None` when there is no such table.
    fn nft_table(&mut self, ns: &Self::Ns, table: TableId) -> Result<Option<Vec<serde_json::Value>>>;
    /// Replaces `table` in `ns` with `objects` (the table's own object first) in one transaction;
    /// on failure the previous table stays.
    fn nft_replace_table(&mut self, ns: &Self::Ns, table: TableId, objects: &[serde_json::Value]) -> Result<()>;
    /// Deletes `table` in `ns` (nothing to do when it is absent).
    fn nft_delete_table(&mut self, ns: &Self::Ns, table: TableId) -> Result<()>;
}

/// The kernel's namespaces: [`Netns`] and [`Netlink::in_netns`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl NamespaceOps for Kernel {
    type Ns = Netns;
    type Netlink = Netlink;

    fn list_named(&mut self, dir: &Path) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Io { op: format!("listing netns dir {}", dir.display()), source }),
        };
        Ok(entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
    }
    fn open(&mut self, path: &Path) -> Result<Netns> {
        Netns::open(path)
    }
    fn ensure_named(&mut self, path: &Path) -> Result<bool> {
        Netns::ensure_named(path).map(|(_, created)| created)
    }
    fn delete_named(&mut self, path: &Path) -> Result<bool> {
        Netns::delete_named(path)
    }
    fn netlink(&mut self, ns: &Netns) -> Result<Netlink> {
        Netlink::in_netns(ns)
    }
    fn sysctl(&mut self, ns: &Netns, key: &str) -> Result<String> {
        ns.sysctl(key)
    }
    fn set_sysctl(&mut self, ns: &Netns, key: &str, value: &str) -> Result<()> {
        ns.set_sysctl(key, value)
    }
    fn nft_table(&mut self, ns: &Netns, table: TableId) -> Result<Option<Vec<serde_json::Value>>> {
        crate::nft::list_table(ns, table)
    }
    fn nft_replace_table(&mut self, ns: &Netns, table: TableId, objects: &[serde_json::Value]) -> Result<()> {
        crate::nft::replace_table(ns, table, objects)
    }
    fn nft_delete_table(&mut self, ns: &Netns, table: TableId) -> Result<()> {
        crate::nft::delete_table(ns, table)
    }
}
