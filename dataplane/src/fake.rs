//! An in-memory [`NetlinkOps`] and [`NamespaceOps`]: namespaces of links, addresses, routes,
//! neighbours, FDB entries and sysctls that behave like the kernel's where callers depend on it
//! (`EEXIST` on a duplicate, `ENODEV` on a missing link, a veth's peer and its routes gone with
//! it, a VXLAN's VNI held by the namespace it was created in wherever the device moves, a moved
//! link arriving without addresses, routes or neighbours, a deleted namespace taking its links,
//! nexthops: a gateway's device and a group's members must exist, a nexthop deleted (or gone with
//! its device) leaves its groups, an emptied group goes, and the routes through what went go too;
//! a route through a nexthop and a plain route to the same destination in the main table replace
//! each other),
//! every call recorded, and any call made to fail once with a chosen errno. For tests of what
//! code does around netlink (the order of its requests, what it undoes after a failure) without
//! root.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use crate::netlink::{
    Fdb, Link, Neigh, Nexthop, NexthopKind, NexthopRoute, Route, Rule, VethRequest, VxlanRequest, format_mac,
};
use crate::nft::TableId;
use crate::ops::{NamespaceOps, NetlinkOps};
use crate::{Error, Result};

#[derive(Debug, Default)]
struct Namespace {
    links: BTreeMap<String, Link>,
    addrs: BTreeMap<String, Vec<IpNet>>,
    routes: Vec<Route>,
    neighs: BTreeMap<String, Vec<Neigh>>,
    fdb: BTreeMap<String, Vec<Fdb>>,
    sysctls: BTreeMap<String, String>,
    /// nftables tables, by (family, name): their objects as listed.
    nft: BTreeMap<(String, String), Vec<serde_json::Value>>,
    nexthops: BTreeMap<u32, Nexthop>,
    nexthop_routes: Vec<NexthopRoute>,
    rules: Vec<Rule>,
}

/// The main routing table's number.
const MAIN_TABLE: u32 = 254;

impl Namespace {
    /// Forgets what hangs off a link (when it goes away or moves to another namespace).
    fn flush(&mut self, link: &str) {
        self.addrs.remove(link);
        self.routes.retain(|r| r.dev.as_deref() != Some(link));
        self.neighs.remove(link);
        self.fdb.remove(link);
        let on_link: Vec<u32> = self
            .nexthops
            .values()
            .filter(|nh| matches!(&nh.kind, NexthopKind::Gateway { dev, .. } if dev == link))
            .map(|nh| nh.id)
            .collect();
        for id in on_link {
            self.remove_nexthop(id);
        }
    }

    /// Removes a nexthop as the kernel does: out of every group (a group left empty goes too),
    /// and the routes through whatever went.
    fn remove_nexthop(&mut self, id: u32) -> bool {
        if self.nexthops.remove(&id).is_none() {
            return false;
        }
        self.nexthop_routes.retain(|r| r.nhid != id);
        let mut emptied = Vec::new();
        for nh in self.nexthops.values_mut() {
            if let NexthopKind::Group { members } = &mut nh.kind {
                members.retain(|m| *m != id);
                if members.is_empty() {
                    emptied.push(nh.id);
                }
            }
        }
        for group in emptied {
            self.remove_nexthop(group);
        }
        true
    }

    /// Checks a nexthop as the kernel does before creating it.
    fn check_nexthop(&self, nh: &Nexthop, op: &str) -> Result<()> {
        match &nh.kind {
            NexthopKind::Gateway { dev, .. } if !self.links.contains_key(dev) => Err(fail(op, libc::ENODEV)),
            NexthopKind::Gateway { .. } => Ok(()),
            NexthopKind::Group { members } => {
                let usable = |m: &u32| {
                    self.nexthops.get(m).is_some_and(|n| matches!(n.kind, NexthopKind::Gateway { .. })) && *m != nh.id
                };
                if members.is_empty() || !members.iter().all(usable) {
                    return Err(fail(op, libc::EINVAL));
                }
                Ok(())
            }
            NexthopKind::Other => Err(fail(op, libc::EINVAL)),
        }
    }
}

#[derive(Debug, Default)]
struct World {
    namespaces: BTreeMap<String, Namespace>,
    /// Each veth end → its peer, both as (namespace, link).
    peers: BTreeMap<(String, String), (String, String)>,
    /// Named namespaces: file → namespace.
    named: BTreeMap<PathBuf, String>,
    /// VXLAN link index → the namespace it was created in (where its UDP socket, and so its
    /// VNI, stays).
    vxlan_sockets: BTreeMap<u32, String>,
    calls: Vec<String>,
    /// (call prefix, errno): the next call whose record starts with the prefix fails.
    failures: Vec<(String, i32)>,
    next_index: u32,
}

/// The namespace a named namespace's file stands for: its file name.
fn ns_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

impl World {
    fn ns(&mut self, ns: &str) -> &mut Namespace {
        self.namespaces.entry(ns.to_owned()).or_default()
    }

    /// Records `"<ns>: <what>"`; fails it when a failure was planted for it.
    fn record(&mut self, ns: &str, what: &str) -> Result<()> {
        let record = format!("{ns}: {what}");
        self.calls.push(record.clone());
        if let Some(at) = self.failures.iter().position(|(prefix, _)| record.starts_with(prefix.as_str())) {
            let (_, errno) = self.failures.remove(at);
            return Err(fail(what, errno));
        }
        Ok(())
    }

    /// Adds `link` under a fresh index; `EEXIST` when the name is taken. Returns the index.
    fn insert_link(&mut self, ns: &str, mut link: Link) -> Result<u32> {
        if self.ns(ns).links.contains_key(&link.name) {
            return Err(fail(&format!("creating {}", link.name), libc::EEXIST));
        }
        self.next_index += 1;
        link.index = self.next_index;
        if link.mac.is_none() {
            link.mac = Some([0x0a, 0x58, 0, 0, (link.index >> 8) as u8, link.index as u8]);
        }
        self.ns(ns).links.insert(link.name.clone(), link);
        Ok(self.next_index)
    }

    fn new_link(&mut self, ns: &str, name: &str, mtu: Option<u32>, mac: Option<[u8; 6]>) -> Result<()> {
        let link = Link { mtu: mtu.unwrap_or(1500), mac, kind: Some("veth".to_owned()), ..bare_link(name) };
        self.insert_link(ns, link).map(drop)
    }

    /// Removes a link with its addresses, neighbours, FDB entries and the routes through it.
    fn remove_link(&mut self, ns: &str, name: &str) -> bool {
        let space = self.ns(ns);
        let removed = space.links.remove(name);
        space.flush(name);
        if let Some(link) = &removed {
            self.vxlan_sockets.remove(&link.index);
        }
        removed.is_some()
    }

    /// Removes a link and, for a veth, its peer.
    fn remove_link_and_peer(&mut self, ns: &str, name: &str) -> bool {
        let existed = self.remove_link(ns, name);
        if let Some((peer_ns, peer)) = self.peers.remove(&(ns.to_owned(), name.to_owned())) {
            self.peers.remove(&(peer_ns.clone(), peer.clone()));
            self.remove_link(&peer_ns, &peer);
        }
        existed
    }
}

fn bare_link(name: &str) -> Link {
    Link {
        index: 0,
        name: name.to_owned(),
        mtu: 1500,
        mac: None,
        up: false,
        kind: None,
        vxlan_id: None,
        vxlan_local: None,
        vxlan_port: None,
        vxlan_learning: None,
    }
}

fn fail(op: &str, errno: i32) -> Error {
    Error::Netlink { op: op.to_owned(), errno, message: "(fake)".to_owned() }
}

fn no_link(name: &str) -> Error {
    Error::NotFound(format!("link {name} does not exist"))
}

/// Namespaces shared by the handles made from it.
#[derive(Debug, Clone, Default)]
pub struct FakeWorld(Arc<Mutex<World>>);

impl FakeWorld {
    /// No namespace, no call yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A handle on namespace `ns`. A veth end the caller sends to another namespace (a
    /// `VethRequest`'s `netns` or `peer_netns`) lands in namespace `elsewhere`.
    #[must_use]
    pub fn handle(&self, ns: &str, elsewhere: &str) -> FakeNetlink {
        self.lock().ns(ns);
        FakeNetlink { world: self.clone(), ns: ns.to_owned(), elsewhere: elsewhere.to_owned() }
    }

    /// The named namespaces of this world ([`NamespaceOps`]); their calls are recorded as
    /// `"netns: <call>"`, a sysctl's as `"<namespace>: <call>"`. The namespace of a file is
    /// called by the file's name.
    #[must_use]
    pub fn host(&self) -> FakeNamespaces {
        FakeNamespaces { world: self.clone() }
    }

    /// Every call so far, in order, as `"<namespace>: <call>"`.
    #[must_use]
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Makes the next call whose record starts with `prefix` (e.g. `"router: add_route"`) fail
    /// with `errno`.
    pub fn fail_next(&self, prefix: &str, errno: i32) {
        self.lock().failures.push((prefix.to_owned(), errno));
    }

    /// The files of the named namespaces.
    #[must_use]
    pub fn named(&self) -> Vec<PathBuf> {
        self.lock().named.keys().cloned().collect()
    }

    /// The link names of namespace `ns`.
    #[must_use]
    pub fn links(&self, ns: &str) -> Vec<String> {
        self.lock().ns(ns).links.keys().cloned().collect()
    }

    /// The link `name` of namespace `ns`.
    #[must_use]
    pub fn link(&self, ns: &str, name: &str) -> Option<Link> {
        self.lock().ns(ns).links.get(name).cloned()
    }

    /// The addresses of `link` in `ns`.
    #[must_use]
    pub fn addrs(&self, ns: &str, link: &str) -> Vec<IpNet> {
        self.lock().ns(ns).addrs.get(link).cloned().unwrap_or_default()
    }

    /// The routes of `ns`.
    #[must_use]
    pub fn routes(&self, ns: &str) -> Vec<Route> {
        self.lock().ns(ns).routes.clone()
    }

    /// The neighbour entries of `link` in `ns`.
    #[must_use]
    pub fn neighs(&self, ns: &str, link: &str) -> Vec<Neigh> {
        self.lock().ns(ns).neighs.get(link).cloned().unwrap_or_default()
    }

    /// The FDB entries of `link` in `ns`.
    #[must_use]
    pub fn fdb(&self, ns: &str, link: &str) -> Vec<Fdb> {
        self.lock().ns(ns).fdb.get(link).cloned().unwrap_or_default()
    }

    /// The nexthop objects of `ns`.
    #[must_use]
    pub fn nexthops(&self, ns: &str) -> Vec<Nexthop> {
        self.lock().ns(ns).nexthops.values().cloned().collect()
    }

    /// The routes through nexthop objects of `ns`, every table.
    #[must_use]
    pub fn nexthop_routes(&self, ns: &str) -> Vec<NexthopRoute> {
        self.lock().ns(ns).nexthop_routes.clone()
    }

    /// The rules of `ns`.
    #[must_use]
    pub fn rules(&self, ns: &str) -> Vec<Rule> {
        self.lock().ns(ns).rules.clone()
    }

    /// Puts a nexthop into `ns` as someone else would, without recording a call.
    pub fn put_nexthop(&self, ns: &str, nh: Nexthop) {
        self.lock().ns(ns).nexthops.insert(nh.id, nh);
    }

    /// The sysctls written in `ns`.
    #[must_use]
    pub fn sysctls(&self, ns: &str) -> BTreeMap<String, String> {
        self.lock().ns(ns).sysctls.clone()
    }

    /// The objects of nftables table `table` in `ns`, if it exists.
    #[must_use]
    pub fn nft_table(&self, ns: &str, table: TableId) -> Option<Vec<serde_json::Value>> {
        self.lock().ns(ns).nft.get(&nft_key(table)).cloned()
    }

    /// Puts `table` in `ns` as someone else would (`None` deletes it), without recording a call:
    /// drift for the code under test to find.
    pub fn set_nft_table(&self, ns: &str, table: TableId, objects: Option<Vec<serde_json::Value>>) {
        let mut w = self.lock();
        match objects {
            Some(objects) => w.ns(ns).nft.insert(nft_key(table), objects),
            None => w.ns(ns).nft.remove(&nft_key(table)),
        };
    }
}

fn nft_key(table: TableId) -> (String, String) {
    (table.family.to_owned(), table.name.to_owned())
}

/// A handle on one fake namespace; see [`FakeWorld::handle`].
#[derive(Debug, Clone)]
pub struct FakeNetlink {
    world: FakeWorld,
    ns: String,
    elsewhere: String,
}

impl FakeNetlink {
    /// Records the call; fails it when a failure was planted for it.
    fn call(&self, what: String) -> Result<MutexGuard<'_, World>> {
        let mut world = self.world.lock();
        world.record(&self.ns, &what)?;
        Ok(world)
    }

    fn require_link(world: &mut World, ns: &str, name: &str) -> Result<()> {
        if world.ns(ns).links.contains_key(name) { Ok(()) } else { Err(no_link(name)) }
    }
}

/// An open fake namespace, by name; see [`FakeWorld::host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeNetns(String);

impl FakeNetns {
    /// The namespace's name (its file's name).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl NetlinkOps for FakeNetlink {
    type Ns = FakeNetns;

    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        let mut w = self.call(format!("link {name}"))?;
        Ok(w.ns(&self.ns).links.get(name).cloned())
    }

    fn links(&mut self) -> Result<Vec<Link>> {
        let mut w = self.call("links".to_owned())?;
        Ok(w.ns(&self.ns).links.values().cloned().collect())
    }

    fn create_veth(&mut self, req: &VethRequest<'_>) -> Result<()> {
        let here = if req.netns.is_some() { self.elsewhere.clone() } else { self.ns.clone() };
        let there = if req.peer_netns.is_some() { self.elsewhere.clone() } else { self.ns.clone() };
        let mut w = self.call(format!("create_veth {} (peer {} in {there})", req.name, req.peer_name))?;
        if w.ns(&there).links.contains_key(req.peer_name) {
            return Err(fail(&format!("creating veth {} (peer {})", req.name, req.peer_name), libc::EEXIST));
        }
        w.new_link(&here, req.name, req.mtu, req.mac)?;
        w.new_link(&there, req.peer_name, req.mtu, req.peer_mac)?;
        let (a, b) = ((here, req.name.to_owned()), (there, req.peer_name.to_owned()));
        w.peers.insert(a.clone(), b.clone());
        w.peers.insert(b, a);
        Ok(())
    }

    fn create_vxlan(&mut self, req: &VxlanRequest) -> Result<()> {
        let mut w =
            self.call(format!("create_vxlan {} (VNI {}, local {}, port {})", req.name, req.vni, req.local, req.port))?;
        let w = &mut *w;
        // The namespace's VXLAN socket for this port holds each VNI once, whichever namespace
        // the device holding it was moved to.
        let held = w.namespaces.values().flat_map(|n| n.links.values()).any(|l| {
            l.vxlan_id == Some(req.vni)
                && l.vxlan_port == Some(req.port)
                && w.vxlan_sockets.get(&l.index) == Some(&self.ns)
        });
        if held {
            return Err(fail(&format!("creating vxlan {} (VNI {} is taken)", req.name, req.vni), libc::EEXIST));
        }
        let link = Link {
            mtu: req.mtu,
            mac: Some(req.mac),
            kind: Some("vxlan".to_owned()),
            vxlan_id: Some(req.vni),
            vxlan_local: Some(req.local),
            vxlan_port: Some(req.port),
            vxlan_learning: Some(false),
            ..bare_link(&req.name)
        };
        let index = w.insert_link(&self.ns, link)?;
        w.vxlan_sockets.insert(index, self.ns.clone());
        Ok(())
    }

    fn delete_link(&mut self, name: &str) -> Result<bool> {
        let mut w = self.call(format!("delete_link {name}"))?;
        Ok(w.remove_link_and_peer(&self.ns, name))
    }

    fn set_up(&mut self, name: &str) -> Result<()> {
        let mut w = self.call(format!("set_up {name}"))?;
        let space = w.ns(&self.ns);
        let link = space.links.get_mut(name).ok_or_else(|| fail(&format!("setting {name} up"), libc::ENODEV))?;
        link.up = true;
        // The kernel gives a loopback its address when it comes up.
        if name == "lo" {
            let addrs = space.addrs.entry(name.to_owned()).or_default();
            let loopback: IpNet = "127.0.0.1/8".parse().expect("valid prefix");
            if !addrs.contains(&loopback) {
                addrs.push(loopback);
            }
        }
        Ok(())
    }

    fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()> {
        let mut w = self.call(format!("set_mtu {name} {mtu}"))?;
        let link = w.ns(&self.ns).links.get_mut(name).ok_or_else(|| fail(&format!("MTU of {name}"), libc::ENODEV))?;
        link.mtu = mtu;
        Ok(())
    }

    fn set_netns(&mut self, name: &str, ns: &FakeNetns) -> Result<()> {
        let there = ns.name().to_owned();
        let mut w = self.call(format!("set_netns {name} {there}"))?;
        if !w.ns(&self.ns).links.contains_key(name) {
            return Err(fail(&format!("moving {name} into {there}"), libc::ENODEV));
        }
        if w.ns(&there).links.contains_key(name) {
            return Err(fail(&format!("moving {name} into {there}"), libc::EEXIST));
        }
        let space = w.ns(&self.ns);
        let mut link = space.links.remove(name).expect("checked above");
        space.flush(name);
        // A moved link arrives down, without addresses, routes or neighbours.
        link.up = false;
        w.ns(&there).links.insert(name.to_owned(), link);
        if let Some(peer) = w.peers.remove(&(self.ns.clone(), name.to_owned())) {
            w.peers.insert(peer.clone(), (there.clone(), name.to_owned()));
            w.peers.insert((there, name.to_owned()), peer);
        }
        Ok(())
    }

    fn addrs(&mut self, link: &str) -> Result<Vec<IpNet>> {
        let mut w = self.call(format!("addrs {link}"))?;
        Self::require_link(&mut w, &self.ns, link)?;
        Ok(w.ns(&self.ns).addrs.get(link).cloned().unwrap_or_default())
    }

    fn add_addr(&mut self, link: &str, addr: IpNet) -> Result<()> {
        let mut w = self.call(format!("add_addr {link} {addr}"))?;
        Self::require_link(&mut w, &self.ns, link)?;
        let addrs = w.ns(&self.ns).addrs.entry(link.to_owned()).or_default();
        if addrs.contains(&addr) {
            return Err(fail(&format!("adding {addr} to {link}"), libc::EEXIST));
        }
        addrs.push(addr);
        Ok(())
    }

    fn del_addr(&mut self, link: &str, addr: IpNet) -> Result<bool> {
        let mut w = self.call(format!("del_addr {link} {addr}"))?;
        let Some(addrs) = w.ns(&self.ns).addrs.get_mut(link) else { return Ok(false) };
        let before = addrs.len();
        addrs.retain(|a| *a != addr);
        Ok(addrs.len() != before)
    }

    fn routes(&mut self, v6: bool) -> Result<Vec<Route>> {
        let mut w = self.call(format!("routes v{}", if v6 { 6 } else { 4 }))?;
        Ok(w.ns(&self.ns).routes.iter().filter(|r| matches!(r.dst, IpNet::V6(_)) == v6).cloned().collect())
    }

    fn add_route(&mut self, route: &Route) -> Result<()> {
        let mut w = self.call(format!("add_route {}", route.dst))?;
        if let Some(dev) = &route.dev
            && !w.ns(&self.ns).links.contains_key(dev)
        {
            return Err(fail(&format!("adding route {}", route.dst), libc::ENODEV));
        }
        let space = w.ns(&self.ns);
        let through_nexthop = space.nexthop_routes.iter().any(|r| r.dst == route.dst && r.table == MAIN_TABLE);
        if through_nexthop || space.routes.iter().any(|r| r.dst == route.dst) {
            return Err(fail(&format!("adding route {}", route.dst), libc::EEXIST));
        }
        space.routes.push(route.clone());
        Ok(())
    }

    fn replace_route(&mut self, route: &Route) -> Result<()> {
        let mut w = self.call(format!("replace_route {}", route.dst))?;
        if let Some(dev) = &route.dev
            && !w.ns(&self.ns).links.contains_key(dev)
        {
            return Err(fail(&format!("replacing route {}", route.dst), libc::ENODEV));
        }
        let space = w.ns(&self.ns);
        space.nexthop_routes.retain(|r| !(r.dst == route.dst && r.table == MAIN_TABLE));
        space.routes.retain(|r| r.dst != route.dst);
        space.routes.push(route.clone());
        Ok(())
    }

    fn del_route(&mut self, route: &Route) -> Result<bool> {
        let mut w = self.call(format!("del_route {}", route.dst))?;
        let routes = &mut w.ns(&self.ns).routes;
        let before = routes.len();
        routes.retain(|r| r.dst != route.dst);
        Ok(routes.len() != before)
    }

    fn neighs(&mut self, link: &str) -> Result<Vec<Neigh>> {
        let mut w = self.call(format!("neighs {link}"))?;
        Self::require_link(&mut w, &self.ns, link)?;
        Ok(w.ns(&self.ns).neighs.get(link).cloned().unwrap_or_default())
    }

    fn replace_neigh(&mut self, link: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let mut w = self.call(format!("replace_neigh {link} {ip} {}", format_mac(&mac)))?;
        Self::require_link(&mut w, &self.ns, link)?;
        let neighs = w.ns(&self.ns).neighs.entry(link.to_owned()).or_default();
        neighs.retain(|n| n.ip != ip);
        neighs.push(Neigh { ip, mac, permanent: true });
        Ok(())
    }

    fn del_neigh(&mut self, link: &str, ip: IpAddr) -> Result<bool> {
        let mut w = self.call(format!("del_neigh {link} {ip}"))?;
        let Some(neighs) = w.ns(&self.ns).neighs.get_mut(link) else { return Ok(false) };
        let before = neighs.len();
        neighs.retain(|n| n.ip != ip);
        Ok(neighs.len() != before)
    }

    fn fdb(&mut self, link: &str) -> Result<Vec<Fdb>> {
        let mut w = self.call(format!("fdb {link}"))?;
        Self::require_link(&mut w, &self.ns, link)?;
        Ok(w.ns(&self.ns).fdb.get(link).cloned().unwrap_or_default())
    }

    fn replace_fdb(&mut self, link: &str, entry: &Fdb) -> Result<()> {
        let mut w = self.call(format!("replace_fdb {link} {} dst {}", format_mac(&entry.mac), entry.dst))?;
        Self::require_link(&mut w, &self.ns, link)?;
        // A VXLAN's FDB holds one remote per MAC: a replace moves it.
        let fdb = w.ns(&self.ns).fdb.entry(link.to_owned()).or_default();
        fdb.retain(|e| e.mac != entry.mac);
        fdb.push(entry.clone());
        Ok(())
    }

    fn del_fdb(&mut self, link: &str, entry: &Fdb) -> Result<bool> {
        let mut w = self.call(format!("del_fdb {link} {} dst {}", format_mac(&entry.mac), entry.dst))?;
        let Some(fdb) = w.ns(&self.ns).fdb.get_mut(link) else { return Ok(false) };
        let before = fdb.len();
        fdb.retain(|e| e != entry);
        Ok(fdb.len() != before)
    }

    fn nexthops(&mut self) -> Result<Vec<Nexthop>> {
        let mut w = self.call("nexthops".to_owned())?;
        Ok(w.ns(&self.ns).nexthops.values().cloned().collect())
    }

    fn add_nexthop(&mut self, nh: &Nexthop) -> Result<()> {
        let mut w = self.call(format!("add_nexthop {nh}"))?;
        let space = w.ns(&self.ns);
        let op = format!("creating {nh}");
        if space.nexthops.contains_key(&nh.id) {
            return Err(fail(&op, libc::EEXIST));
        }
        space.check_nexthop(nh, &op)?;
        space.nexthops.insert(nh.id, nh.clone());
        Ok(())
    }

    fn replace_nexthop(&mut self, nh: &Nexthop) -> Result<()> {
        let mut w = self.call(format!("replace_nexthop {nh}"))?;
        let space = w.ns(&self.ns);
        let op = format!("replacing {nh}");
        let is_group = |n: &Nexthop| matches!(n.kind, NexthopKind::Group { .. });
        if space.nexthops.get(&nh.id).is_some_and(|old| is_group(old) != is_group(nh)) {
            return Err(fail(&op, libc::EINVAL));
        }
        space.check_nexthop(nh, &op)?;
        space.nexthops.insert(nh.id, nh.clone());
        Ok(())
    }

    fn del_nexthop(&mut self, id: u32) -> Result<bool> {
        let mut w = self.call(format!("del_nexthop {id}"))?;
        Ok(w.ns(&self.ns).remove_nexthop(id))
    }

    fn nexthop_routes(&mut self, v6: bool) -> Result<Vec<NexthopRoute>> {
        let mut w = self.call(format!("nexthop_routes v{}", if v6 { 6 } else { 4 }))?;
        Ok(w.ns(&self.ns).nexthop_routes.iter().filter(|r| matches!(r.dst, IpNet::V6(_)) == v6).cloned().collect())
    }

    fn replace_nexthop_route(&mut self, route: &NexthopRoute) -> Result<()> {
        let mut w = self.call(format!("replace_nexthop_route {route}"))?;
        let space = w.ns(&self.ns);
        if !space.nexthops.contains_key(&route.nhid) {
            return Err(fail(&format!("replacing {route}"), libc::EINVAL));
        }
        if route.table == MAIN_TABLE {
            space.routes.retain(|r| r.dst != route.dst);
        }
        space.nexthop_routes.retain(|r| !(r.dst == route.dst && r.table == route.table));
        space.nexthop_routes.push(route.clone());
        Ok(())
    }

    fn del_nexthop_route(&mut self, route: &NexthopRoute) -> Result<bool> {
        let mut w = self.call(format!("del_nexthop_route {route}"))?;
        let routes = &mut w.ns(&self.ns).nexthop_routes;
        let before = routes.len();
        routes.retain(|r| r != route);
        Ok(routes.len() != before)
    }

    fn rules(&mut self, v6: bool) -> Result<Vec<Rule>> {
        let mut w = self.call(format!("rules v{}", if v6 { 6 } else { 4 }))?;
        Ok(w.ns(&self.ns).rules.iter().filter(|r| r.v6 == v6).cloned().collect())
    }

    fn add_rule(&mut self, rule: &Rule) -> Result<()> {
        let mut w = self.call(format!("add_rule {rule}"))?;
        let rules = &mut w.ns(&self.ns).rules;
        if rules.contains(rule) {
            return Err(fail(&format!("adding {rule}"), libc::EEXIST));
        }
        rules.push(rule.clone());
        Ok(())
    }

    fn del_rule(&mut self, rule: &Rule) -> Result<bool> {
        let mut w = self.call(format!("del_rule {rule}"))?;
        let rules = &mut w.ns(&self.ns).rules;
        let before = rules.len();
        rules.retain(|r| r != rule);
        Ok(rules.len() != before)
    }
}

/// The named namespaces of a [`FakeWorld`]; see [`FakeWorld::host`].
#[derive(Debug, Clone)]
pub struct FakeNamespaces {
    world: FakeWorld,
}

impl NamespaceOps for FakeNamespaces {
    type Ns = FakeNetns;
    type Netlink = FakeNetlink;

    fn list_named(&mut self, dir: &Path) -> Result<Vec<String>> {
        let mut w = self.world.lock();
        w.record("netns", &format!("list_named {}", dir.display()))?;
        Ok(w.named.keys().filter(|p| p.parent() == Some(dir)).map(|p| ns_name(p)).collect())
    }

    fn open(&mut self, path: &Path) -> Result<FakeNetns> {
        let mut w = self.world.lock();
        w.record("netns", &format!("open {}", path.display()))?;
        w.named
            .get(path)
            .map(|name| FakeNetns(name.clone()))
            .ok_or_else(|| Error::NotFound(format!("network namespace {} does not exist", path.display())))
    }

    fn ensure_named(&mut self, path: &Path) -> Result<bool> {
        let mut w = self.world.lock();
        w.record("netns", &format!("ensure_named {}", path.display()))?;
        if w.named.contains_key(path) {
            return Ok(false);
        }
        let name = ns_name(path);
        // A new namespace has its loopback, down.
        if !w.ns(&name).links.contains_key("lo") {
            let lo = Link { mtu: 65536, mac: Some([0; 6]), ..bare_link("lo") };
            w.insert_link(&name, lo)?;
        }
        w.named.insert(path.to_path_buf(), name);
        Ok(true)
    }

    fn delete_named(&mut self, path: &Path) -> Result<bool> {
        let mut w = self.world.lock();
        w.record("netns", &format!("delete_named {}", path.display()))?;
        let Some(name) = w.named.remove(path) else { return Ok(false) };
        // The namespace goes with its links (and the peers of its veth ends).
        let links: Vec<String> = w.ns(&name).links.keys().cloned().collect();
        for link in links {
            w.remove_link_and_peer(&name, &link);
        }
        w.namespaces.remove(&name);
        Ok(true)
    }

    fn netlink(&mut self, ns: &FakeNetns) -> Result<FakeNetlink> {
        self.world.lock().record("netns", &format!("netlink {}", ns.name()))?;
        Ok(FakeNetlink { world: self.world.clone(), ns: ns.name().to_owned(), elsewhere: ns.name().to_owned() })
    }

    fn sysctl(&mut self, ns: &FakeNetns, key: &str) -> Result<String> {
        let mut w = self.world.lock();
        w.record(ns.name(), &format!("sysctl {key}"))?;
        // A key never written reads as a new namespace's value of the router's keys; a
        // device's IPv4 key as the namespace's `default` (what a new device starts with).
        let sysctls = &w.ns(ns.name()).sysctls;
        let inherited = || {
            let (dev, name) = key.strip_prefix("net/ipv4/conf/")?.split_once('/')?;
            (dev != "all" && dev != "default").then(|| sysctls.get(&format!("net/ipv4/conf/default/{name}")))?.cloned()
        };
        Ok(sysctls.get(key).cloned().or_else(inherited).unwrap_or_else(|| "0".to_owned()))
    }

    fn set_sysctl(&mut self, ns: &FakeNetns, key: &str, value: &str) -> Result<()> {
        let mut w = self.world.lock();
        w.record(ns.name(), &format!("set_sysctl {key}={value}"))?;
        w.ns(ns.name()).sysctls.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn nft_table(&mut self, ns: &FakeNetns, table: TableId) -> Result<Option<Vec<serde_json::Value>>> {
        let mut w = self.world.lock();
        w.record(ns.name(), &format!("nft_table {} {}", table.family, table.name))?;
        Ok(w.ns(ns.name()).nft.get(&nft_key(table)).cloned())
    }

    /// Like nft, refuses a table whose first object is not the table itself; a planted failure
    /// leaves the previous table, as the kernel's transaction does.
    fn nft_replace_table(&mut self, ns: &FakeNetns, table: TableId, objects: &[serde_json::Value]) -> Result<()> {
        let mut w = self.world.lock();
        let what = format!("nft_replace_table {} {} ({} objects)", table.family, table.name, objects.len());
        w.record(ns.name(), &what).map_err(|_| Error::Nft { op: what.clone(), stderr: "(fake)".into() })?;
        if objects.first() != Some(&table.object()) {
            return Err(Error::Nft { op: what, stderr: "the table's own object must come first".into() });
        }
        w.ns(ns.name()).nft.insert(nft_key(table), objects.to_vec());
        Ok(())
    }

    fn nft_delete_table(&mut self, ns: &FakeNetns, table: TableId) -> Result<()> {
        let mut w = self.world.lock();
        let what = format!("nft_delete_table {} {}", table.family, table.name);
        w.record(ns.name(), &what).map_err(|_| Error::Nft { op: what, stderr: "(fake)".into() })?;
        w.ns(ns.name()).nft.remove(&nft_key(table));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, dev: &str) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: None,
            dev: Some(dev.into()),
            src: None,
            onlink: false,
            scope_link: true,
        }
    }

    #[test]
    fn behaves_like_the_kernel_where_callers_depend_on_it() {
        let world = FakeWorld::new();
        let mut a = world.handle("a", "b");
        let here = Some(crate::Netns::current().unwrap());
        let req = VethRequest {
            name: "va",
            netns: None,
            peer_name: "vb",
            peer_netns: here.as_ref(),
            mtu: Some(1400),
            mac: None,
            peer_mac: None,
        };
        a.create_veth(&req).unwrap();
        assert_eq!((world.links("a"), world.links("b")), (vec!["va".to_owned()], vec!["vb".to_owned()]));
        assert_eq!(a.create_veth(&req).unwrap_err().errno(), Some(libc::EEXIST));
        a.add_addr("va", "198.18.0.1/32".parse().unwrap()).unwrap();
        assert_eq!(a.add_addr("va", "198.18.0.1/32".parse().unwrap()).unwrap_err().errno(), Some(libc::EEXIST));
        a.add_route(&route("198.18.0.2/32", "va")).unwrap();
        assert_eq!(a.add_route(&route("198.18.0.2/32", "va")).unwrap_err().errno(), Some(libc::EEXIST));
        assert_eq!(a.add_route(&route("198.18.0.3/32", "nope")).unwrap_err().errno(), Some(libc::ENODEV));
        assert_eq!(a.set_up("nope").unwrap_err().errno(), Some(libc::ENODEV));
        // Deleting one end takes the peer, the addresses and the routes through it.
        assert!(a.delete_link("va").unwrap());
        assert!(world.links("a").is_empty() && world.links("b").is_empty());
        assert!(world.routes("a").is_empty() && world.addrs("a", "va").is_empty());
        assert!(!a.delete_link("va").unwrap());
        world.fail_next("a: set_up", libc::EPERM);
        a.create_veth(&req).unwrap();
        assert_eq!(a.set_up("va").unwrap_err().errno(), Some(libc::EPERM));
        a.set_up("va").unwrap();
        assert!(world.calls().iter().any(|c| c == "a: create_veth va (peer vb in b)"), "{:?}", world.calls());
    }

    fn gateway(id: u32, via: &str, dev: &str) -> Nexthop {
        Nexthop { id, kind: NexthopKind::Gateway { gateway: via.parse().unwrap(), dev: dev.into(), onlink: false } }
    }

    #[test]
    fn nexthops_groups_and_their_routes_behave_like_the_kernel() {
        let world = FakeWorld::new();
        let mut a = world.handle("a", "b");
        let here = Some(crate::Netns::current().unwrap());
        for (name, peer) in [("v1", "p1"), ("v2", "p2")] {
            let req = VethRequest {
                name,
                netns: None,
                peer_name: peer,
                peer_netns: here.as_ref(),
                mtu: None,
                mac: None,
                peer_mac: None,
            };
            a.create_veth(&req).unwrap();
        }
        assert_eq!(a.add_nexthop(&gateway(1, "10.0.0.2", "nope")).unwrap_err().errno(), Some(libc::ENODEV));
        a.add_nexthop(&gateway(1, "10.0.0.2", "v1")).unwrap();
        a.add_nexthop(&gateway(2, "10.0.0.3", "v2")).unwrap();
        assert_eq!(a.add_nexthop(&gateway(2, "10.0.0.3", "v2")).unwrap_err().errno(), Some(libc::EEXIST));
        let group = |members: Vec<u32>| Nexthop { id: 10, kind: NexthopKind::Group { members } };
        assert_eq!(a.add_nexthop(&group(vec![1, 9])).unwrap_err().errno(), Some(libc::EINVAL));
        a.add_nexthop(&group(vec![1, 2])).unwrap();
        assert_eq!(a.replace_nexthop(&gateway(10, "10.0.0.4", "v1")).unwrap_err().errno(), Some(libc::EINVAL));
        let dst: IpNet = "10.99.0.0/16".parse().unwrap();
        a.add_route(&route("10.99.0.0/16", "v1")).unwrap();
        let main = NexthopRoute { dst, table: 254, nhid: 10 };
        let side = NexthopRoute { dst, table: 92, nhid: 1 };
        a.replace_nexthop_route(&main).unwrap();
        a.replace_nexthop_route(&side).unwrap();
        assert!(world.routes("a").is_empty(), "the route through the group replaced the plain one");
        assert_eq!(a.add_route(&route("10.99.0.0/16", "v1")).unwrap_err().errno(), Some(libc::EEXIST));
        assert!(!a.del_nexthop_route(&NexthopRoute { nhid: 2, ..main.clone() }).unwrap());
        // A device going takes its nexthop out of the group; the group and its route stay.
        assert!(a.delete_link("v1").unwrap());
        assert_eq!(world.nexthops("a"), [gateway(2, "10.0.0.3", "v2"), group(vec![2])]);
        assert_eq!(world.nexthop_routes("a"), std::slice::from_ref(&main));
        // The last member going takes the group and its route.
        assert!(a.del_nexthop(2).unwrap() && !a.del_nexthop(2).unwrap());
        assert!(world.nexthops("a").is_empty() && world.nexthop_routes("a").is_empty());
        let rule = Rule { v6: false, priority: 92, iif: "sv100".into(), table: 92 };
        a.add_rule(&rule).unwrap();
        assert_eq!(a.add_rule(&rule).unwrap_err().errno(), Some(libc::EEXIST));
        assert_eq!(a.rules(false).unwrap(), std::slice::from_ref(&rule));
        assert!(a.rules(true).unwrap().is_empty());
        assert!(a.del_rule(&rule).unwrap() && !a.del_rule(&rule).unwrap());
    }

    fn vxlan(name: &str, vni: u32) -> VxlanRequest {
        VxlanRequest {
            name: name.into(),
            vni,
            local: "198.18.250.1".parse().unwrap(),
            port: 4789,
            mtu: 1450,
            mac: [0x0a, 0x58, 10, 80, 0, 1],
        }
    }

    #[test]
    fn named_namespaces_vxlans_neighbours_and_fdb_behave_like_the_kernel() {
        let world = FakeWorld::new();
        let mut host = world.host();
        let mut node = world.handle("node", "node");
        let path = Path::new("/fake/netns/r1");
        assert!(host.list_named(Path::new("/fake/netns")).unwrap().is_empty());
        assert!(matches!(host.open(path), Err(Error::NotFound(_))));
        assert!(host.ensure_named(path).unwrap());
        assert!(!host.ensure_named(path).unwrap());
        assert_eq!(host.list_named(Path::new("/fake/netns")).unwrap(), ["r1"]);
        let ns = host.open(path).unwrap();
        let mut r1 = host.netlink(&ns).unwrap();
        assert_eq!(r1.links().unwrap().iter().map(|l| (l.name.as_str(), l.up)).collect::<Vec<_>>(), [("lo", false)]);
        r1.set_up("lo").unwrap();
        assert_eq!(r1.addrs("lo").unwrap(), ["127.0.0.1/8".parse::<IpNet>().unwrap()]);
        assert_eq!(host.sysctl(&ns, "net/ipv4/ip_forward").unwrap(), "0");
        host.set_sysctl(&ns, "net/ipv4/ip_forward", "1").unwrap();
        assert_eq!(host.sysctl(&ns, "net/ipv4/ip_forward").unwrap(), "1");

        // Created in the node namespace, moved in: it arrives down; its VNI stays taken on
        // the node's socket, under any name.
        node.create_vxlan(&vxlan("sv100", 100)).unwrap();
        node.set_netns("sv100", &ns).unwrap();
        assert_eq!((world.links("node"), world.links("r1")), (vec![], vec!["lo".to_owned(), "sv100".to_owned()]));
        assert_eq!(node.create_vxlan(&vxlan("sv100", 100)).unwrap_err().errno(), Some(libc::EEXIST));
        assert_eq!(node.create_vxlan(&vxlan("other", 100)).unwrap_err().errno(), Some(libc::EEXIST));
        assert_eq!(node.set_netns("sv100", &ns).unwrap_err().errno(), Some(libc::ENODEV));
        let link = world.link("r1", "sv100").unwrap();
        assert_eq!((link.kind.as_deref(), link.vxlan_id, link.up, link.mtu), (Some("vxlan"), Some(100), false, 1450));

        let mac = [0x0a, 0x58, 10, 80, 0, 65];
        let ip: IpAddr = "10.80.0.65".parse().unwrap();
        let entry = Fdb { mac, dst: "198.18.250.2".parse().unwrap() };
        r1.replace_neigh("sv100", ip, mac).unwrap();
        r1.replace_neigh("sv100", ip, mac).unwrap();
        r1.replace_fdb("sv100", &entry).unwrap();
        r1.replace_fdb("sv100", &entry).unwrap();
        assert_eq!(r1.neighs("sv100").unwrap(), [Neigh { ip, mac, permanent: true }]);
        assert_eq!(r1.fdb("sv100").unwrap(), std::slice::from_ref(&entry));
        assert!(matches!(r1.neighs("nope"), Err(Error::NotFound(_))));
        assert!(matches!(r1.replace_fdb("nope", &entry), Err(Error::NotFound(_))));
        assert!(r1.del_neigh("sv100", ip).unwrap() && !r1.del_neigh("sv100", ip).unwrap());
        assert!(r1.del_fdb("sv100", &entry).unwrap() && !r1.del_fdb("sv100", &entry).unwrap());
        assert!(!r1.del_addr("lo", "10.80.0.1/32".parse().unwrap()).unwrap());

        // Deleting the namespace takes its links: the VNI is free again.
        world.fail_next("netns: delete_named", libc::EBUSY);
        assert_eq!(host.delete_named(path).unwrap_err().errno(), Some(libc::EBUSY));
        assert!(host.delete_named(path).unwrap());
        assert!(!host.delete_named(path).unwrap());
        assert!(world.named().is_empty());
        node.create_vxlan(&vxlan("sv100", 100)).unwrap();
        world.fail_next("node: set_netns sv100", libc::EPERM);
        assert_eq!(node.set_netns("sv100", &ns).unwrap_err().errno(), Some(libc::EPERM));
        assert!(world.calls().iter().any(|c| c == "node: set_netns sv100 r1"), "{:?}", world.calls());
    }
}
