//! An in-memory [`NetlinkOps`]: namespaces of links, addresses and routes that behave like the
//! kernel's where callers depend on it (`EEXIST` on a duplicate, `ENODEV` on a missing link, a
//! veth's peer and its routes gone with it), every call recorded, and any call made to fail
//! once with a chosen errno. For tests of what code does around netlink (the order of its
//! requests, what it undoes after a failure) without root.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use crate::netlink::{Link, Route, VethRequest};
use crate::ops::NetlinkOps;
use crate::{Error, Result};

#[derive(Debug, Default)]
struct Namespace {
    links: BTreeMap<String, Link>,
    addrs: BTreeMap<String, Vec<IpNet>>,
    routes: Vec<Route>,
}

#[derive(Debug, Default)]
struct World {
    namespaces: BTreeMap<String, Namespace>,
    /// Each veth end → its peer, both as (namespace, link).
    peers: BTreeMap<(String, String), (String, String)>,
    calls: Vec<String>,
    /// (call prefix, errno): the next call whose record starts with the prefix fails.
    failures: Vec<(String, i32)>,
    next_index: u32,
}

impl World {
    fn ns(&mut self, ns: &str) -> &mut Namespace {
        self.namespaces.entry(ns.to_owned()).or_default()
    }

    fn new_link(&mut self, ns: &str, name: &str, mtu: Option<u32>, mac: Option<[u8; 6]>) -> Result<()> {
        if self.ns(ns).links.contains_key(name) {
            return Err(fail(&format!("creating {name}"), libc::EEXIST));
        }
        self.next_index += 1;
        let index = self.next_index;
        let link = Link {
            index,
            name: name.to_owned(),
            mtu: mtu.unwrap_or(1500),
            mac: Some(mac.unwrap_or([0x0a, 0x58, 0, 0, (index >> 8) as u8, index as u8])),
            up: false,
            kind: Some("veth".to_owned()),
            vxlan_id: None,
            vxlan_local: None,
            vxlan_port: None,
            vxlan_learning: None,
        };
        self.ns(ns).links.insert(name.to_owned(), link);
        Ok(())
    }

    /// Removes a link with its addresses and the routes through it.
    fn remove_link(&mut self, ns: &str, name: &str) -> bool {
        let space = self.ns(ns);
        let existed = space.links.remove(name).is_some();
        space.addrs.remove(name);
        space.routes.retain(|r| r.dev.as_deref() != Some(name));
        existed
    }
}

fn fail(op: &str, errno: i32) -> Error {
    Error::Netlink { op: op.to_owned(), errno, message: "(fake)".to_owned() }
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

    /// The link names of namespace `ns`.
    #[must_use]
    pub fn links(&self, ns: &str) -> Vec<String> {
        self.lock().ns(ns).links.keys().cloned().collect()
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
        let record = format!("{}: {what}", self.ns);
        world.calls.push(record.clone());
        if let Some(at) = world.failures.iter().position(|(prefix, _)| record.starts_with(prefix.as_str())) {
            let (_, errno) = world.failures.remove(at);
            return Err(fail(&what, errno));
        }
        Ok(world)
    }

    fn require_link(world: &mut World, ns: &str, name: &str) -> Result<()> {
        if world.ns(ns).links.contains_key(name) {
            Ok(())
        } else {
            Err(Error::NotFound(format!("link {name} does not exist")))
        }
    }
}

impl NetlinkOps for FakeNetlink {
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

    fn delete_link(&mut self, name: &str) -> Result<bool> {
        let mut w = self.call(format!("delete_link {name}"))?;
        let existed = w.remove_link(&self.ns, name);
        if let Some((ns, peer)) = w.peers.remove(&(self.ns.clone(), name.to_owned())) {
            w.peers.remove(&(ns.clone(), peer.clone()));
            w.remove_link(&ns, &peer);
        }
        Ok(existed)
    }

    fn set_up(&mut self, name: &str) -> Result<()> {
        let mut w = self.call(format!("set_up {name}"))?;
        let link =
            w.ns(&self.ns).links.get_mut(name).ok_or_else(|| fail(&format!("setting {name} up"), libc::ENODEV))?;
        link.up = true;
        Ok(())
    }

    fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()> {
        let mut w = self.call(format!("set_mtu {name} {mtu}"))?;
        let link = w.ns(&self.ns).links.get_mut(name).ok_or_else(|| fail(&format!("MTU of {name}"), libc::ENODEV))?;
        link.mtu = mtu;
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
        let routes = &mut w.ns(&self.ns).routes;
        if routes.iter().any(|r| r.dst == route.dst) {
            return Err(fail(&format!("adding route {}", route.dst), libc::EEXIST));
        }
        routes.push(route.clone());
        Ok(())
    }

    fn replace_route(&mut self, route: &Route) -> Result<()> {
        let mut w = self.call(format!("replace_route {}", route.dst))?;
        if let Some(dev) = &route.dev
            && !w.ns(&self.ns).links.contains_key(dev)
        {
            return Err(fail(&format!("replacing route {}", route.dst), libc::ENODEV));
        }
        let routes = &mut w.ns(&self.ns).routes;
        routes.retain(|r| r.dst != route.dst);
        routes.push(route.clone());
        Ok(())
    }

    fn del_route(&mut self, route: &Route) -> Result<bool> {
        let mut w = self.call(format!("del_route {}", route.dst))?;
        let routes = &mut w.ns(&self.ns).routes;
        let before = routes.len();
        routes.retain(|r| r.dst != route.dst);
        Ok(routes.len() != before)
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
}
