//! Routes of the main table: list, add (exclusive), replace, delete; and routes through a
//! nexthop object (`nhid`), in any table.

use super::*;

impl Netlink {
    /// Routes of the main table of one family (`v6 = false` for IPv4), but those through a
    /// nexthop object ([`Netlink::nexthop_routes`] lists them): with the kernel's default
    /// `nexthop_compat_mode` such a route also shows its nexthop's gateway and device, and
    /// would pass for a route it is not.
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
            let mut nhid = None;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::NhId(id) => nhid = Some(*id),
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(a) => dst = route_ip(a),
                    RouteAttribute::Gateway(a) => gateway = route_ip(a),
                    RouteAttribute::PrefSource(a) => src = route_ip(a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN)
                || nhid.is_some()
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
}

/// A route through a nexthop object (`<dst> nhid <id> table <table>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexthopRoute {
    pub dst: IpNet,
    /// The routing table (254 is main).
    pub table: u32,
    /// The nexthop (or group) it goes through.
    pub nhid: u32,
}

impl std::fmt::Display for NexthopRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "route {} nhid {}", self.dst, self.nhid)?;
        if self.table != u32::from(RouteHeader::RT_TABLE_MAIN) {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

impl Netlink {
    /// Routes through a nexthop object, of one family, in every table.
    pub fn nexthop_routes(&mut self, v6: bool) -> Result<Vec<NexthopRoute>> {
        let mut query = RouteMessage::default();
        query.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        let msgs = self.dump(RouteNetlinkMessage::GetRoute(query), || {
            format!("listing IPv{} routes through nexthops", if v6 { 6 } else { 4 })
        })?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            if r.header.kind != RouteType::Unicast || r.header.flags.contains(RouteFlags::Cloned) {
                continue;
            }
            let mut table = u32::from(r.header.table);
            let mut dst = None;
            let mut nhid = None;
            for attr in &r.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(a) => dst = route_ip(a),
                    RouteAttribute::NhId(id) => nhid = Some(*id),
                    _ => {}
                }
            }
            let Some(nhid) = nhid else { continue };
            let dst_ip =
                dst.unwrap_or(if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) });
            let Ok(dst) = IpNet::new(dst_ip, r.header.destination_prefix_length) else {
                continue;
            };
            out.push(NexthopRoute { dst, table, nhid });
        }
        Ok(out)
    }

    fn nexthop_route_message(route: &NexthopRoute) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let v6 = route.dst.addr().is_ipv6();
        msg.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.destination_prefix_length = route.dst.prefix_len();
        msg.header.table = u8::try_from(route.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Table(route.table));
        if route.dst.prefix_len() > 0 {
            msg.attributes.push(RouteAttribute::Destination(route.dst.network().into()));
        }
        msg.attributes.push(RouteAttribute::NhId(route.nhid));
        msg
    }

    /// Adds or replaces the route to `route.dst` in its table (whatever it went through before,
    /// a gateway or another nexthop) with one through `route.nhid`.
    pub fn replace_nexthop_route(&mut self, route: &NexthopRoute) -> Result<()> {
        let msg = Self::nexthop_route_message(route);
        self.ack(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE, || format!("replacing {route}"))
    }

    /// Deletes the route to `route.dst` in its table if it goes through `route.nhid` (a route to
    /// the same destination through anything else stays); `Ok(false)` when there was none.
    pub fn del_nexthop_route(&mut self, route: &NexthopRoute) -> Result<bool> {
        let mut msg = Self::nexthop_route_message(route);
        // iproute2's `ip route del`: any protocol, any scope, any type.
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        match self.ack(RouteNetlinkMessage::DelRoute(msg), 0, || format!("deleting {route}")) {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
