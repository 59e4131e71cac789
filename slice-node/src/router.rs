//! The node agent's side effects: observe the slice routers (router namespaces, their VXLAN,
//! routes, neighbours, FDB, sysctls, nftables table, nexthops and rules) and the state dir, and apply [`Action`]s through
//! `dataplane`'s traits ([`NamespaceOps`], [`NetlinkOps`]): [`dataplane::Kernel`] and
//! [`dataplane::Netlink`] in the daemon, the in-memory `dataplane::fake` in the tests without
//! root. The node namespace is the calling thread's; router namespaces are entered only through
//! `dataplane` (a netlink socket opened inside them, or a dedicated thread), so the caller never
//! changes namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use dataplane::{Link, NamespaceOps, NetlinkOps, VxlanRequest};
use slice_api::node::{NodeAgentConfig, NodeState};

use super::NodeAgentError;
use super::plan::multipath::{self, MULTIPATH_SYSCTLS, ObservedMultipath};
use super::plan::{
    Action, Observed, ObservedFirewall, ObservedRouter, ObservedStateFile, ObservedVxlan, ROUTER_SYSCTLS, rp_filter,
    vni_of_vxlan_name, vxlan_name,
};

fn observed_vxlan(link: &Link) -> ObservedVxlan {
    ObservedVxlan {
        name: link.name.clone(),
        vni: link.vxlan_id,
        local: link.vxlan_local,
        port: link.vxlan_port,
        learning: link.vxlan_learning,
        mtu: link.mtu,
        mac: link.mac,
        up: link.up,
    }
}

fn is_vxlan(link: &Link) -> bool {
    link.kind.as_deref() == Some("vxlan")
}

fn observe_error(slice: &str, what: &str, source: dataplane::Error) -> NodeAgentError {
    NodeAgentError::Observe { slice: slice.to_string(), what: what.to_string(), source }
}

/// Slice names that have a state file (`<slice>.json`) in `state_dir`.
fn state_file_slices(state_dir: &Path) -> Result<Vec<String>, NodeAgentError> {
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NodeAgentError::Io { op: format!("listing state dir {}", state_dir.display()), source });
        }
    };
    let mut slices = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(slice) = name.strip_suffix(".json")
            && slice_api::names::validate_slice_name(slice).is_ok()
        {
            slices.push(slice.to_string());
        }
    }
    Ok(slices)
}

/// Slice names that have a router namespace file (`<prefix><slice>`) in `netns_dir`.
/// Only names with our prefix are considered: the same directory holds containerd's `cni-*`
/// namespaces and others that are not ours.
fn router_netns_slices(config: &NodeAgentConfig, host: &mut impl NamespaceOps) -> Result<Vec<String>, NodeAgentError> {
    let names = host.list_named(&config.netns_dir).map_err(|e| match e {
        dataplane::Error::Io { op, source } => NodeAgentError::Io { op, source },
        other => observe_error("(node)", &format!("listing netns dir {}", config.netns_dir.display()), other),
    })?;
    Ok(names
        .into_iter()
        .filter_map(|name| name.strip_prefix(&config.router_netns_prefix).map(str::to_string))
        .filter(|slice| slice_api::names::validate_slice_name(slice).is_ok())
        .collect())
}

/// Looks into one router namespace: sysctls, `lo`, VXLAN devices and what sits on the desired
/// VXLAN, the reverse-path filter of the VXLAN and the pods' veths; and its multipath routing
/// when `multipath_wanted` or its hash policy says to ([`ObservedMultipath::worth_looking`]).
fn observe_router<H: NamespaceOps>(
    slice: &str,
    host: &mut H,
    ns: &H::Ns,
    desired_vxlan: &str,
    multipath_wanted: bool,
) -> Result<(ObservedRouter, ObservedMultipath), NodeAgentError> {
    let err = |what: &str, e| observe_error(slice, what, e);
    let mut router = ObservedRouter::default();
    for (key, _) in ROUTER_SYSCTLS {
        if let Ok(value) = host.sysctl(ns, key) {
            router.sysctls.insert(key.to_string(), value);
        }
    }
    let mut multipath = ObservedMultipath::default();
    for key in MULTIPATH_SYSCTLS {
        if let Ok(value) = host.sysctl(ns, key) {
            multipath.sysctls.insert(key.to_string(), value);
        }
    }
    let mut nl = host.netlink(ns).map_err(|e| err("opening netlink", e))?;
    let links = nl.links().map_err(|e| err("listing links", e))?;
    router.lo_up = links.iter().any(|l| l.name == "lo" && l.up);
    router.lo_addrs = nl.addrs("lo").map_err(|e| err("listing lo addresses", e))?;
    router.vxlans = links.iter().filter(|l| is_vxlan(l)).map(observed_vxlan).collect();
    for v6 in [false, true] {
        for r in nl.routes(v6).map_err(|e| err("listing routes", e))? {
            let on_vxlan = r.dev.as_deref() == Some(desired_vxlan);
            if on_vxlan {
                // The kernel's own fe80::/64 on the device is not ours to manage.
                if !matches!(r.dst, ipnet::IpNet::V6(n) if n.addr().is_unicast_link_local()) {
                    router.routes.push(r);
                }
            } else if r.gateway.is_some() {
                router.gateway_routes.push(r);
            } else if let (true, Some(dev)) = (r.dst.prefix_len() == r.dst.max_prefix_len(), &r.dev) {
                router.local_hosts.insert(r.dst.addr());
                multipath.local_host_devs.insert(r.dst.addr(), dev.clone());
            }
        }
    }
    router.firewall = match host.nft_table(ns, crate::firewall::TABLE) {
        Ok(Some(objects)) => ObservedFirewall::Present(crate::firewall::canonical(objects)),
        Ok(None) => ObservedFirewall::Absent,
        Err(e) => {
            let reason = slice_api::error_chain::chain(&e);
            tracing::warn!(slice = %slice, error = %reason, "cannot list the router's nftables table");
            ObservedFirewall::Unreadable(reason)
        }
    };
    let vxlan_there = links.iter().any(|l| l.name == desired_vxlan && is_vxlan(l));
    if vxlan_there {
        router.neighs = nl.neighs(desired_vxlan).map_err(|e| err("listing neighbours", e))?;
        router.fdb = nl.fdb(desired_vxlan).map_err(|e| err("listing FDB entries", e))?;
    }
    let devs: BTreeSet<&str> = vxlan_there
        .then_some(desired_vxlan)
        .into_iter()
        .chain(multipath.local_host_devs.values().map(String::as_str))
        .collect();
    for dev in devs {
        if let Ok(value) = host.sysctl(ns, &rp_filter::key(dev)) {
            router.rp_filter.insert(dev.to_owned(), value);
        }
    }
    if ObservedMultipath::worth_looking(multipath_wanted, &multipath.sysctls) {
        multipath.looked = true;
        multipath.nexthops = nl.nexthops().map_err(|e| err("listing nexthops", e))?;
        for v6 in [false, true] {
            multipath.routes.extend(nl.nexthop_routes(v6).map_err(|e| err("listing routes through nexthops", e))?);
            multipath.rules.extend(nl.rules(v6).map_err(|e| err("listing rules", e))?);
        }
    }
    Ok((router, multipath))
}

/// Observes the node: state files, router namespaces (and inside the desired ones), and our
/// VXLAN devices left in the node namespace. A router that cannot be observed is listed in
/// [`Observed::unobservable`] and its error returned beside, by slice.
///
/// # Errors
/// When a directory or the node namespace cannot be read.
pub fn observe<H: NamespaceOps>(
    config: &NodeAgentConfig,
    host: &mut H,
    node: &mut H::Netlink,
) -> Result<(Observed, Vec<(String, NodeAgentError)>), NodeAgentError> {
    let mut observed = Observed::default();
    let mut unobservable = Vec::new();
    for slice in state_file_slices(&config.state_dir)? {
        let file = match NodeState::load(&config.state_dir, &slice) {
            Ok(Some(state)) => ObservedStateFile::Valid(Box::new(state)),
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(slice = %slice, error = %e, "unreadable node-state file");
                ObservedStateFile::Unreadable
            }
        };
        observed.state_files.insert(slice, file);
    }
    for slice in router_netns_slices(config, host)? {
        observed.router_netns.insert(slice);
    }

    for slice in &config.slices {
        if !observed.router_netns.contains(&slice.name) {
            continue;
        }
        let path = config.router_netns(&slice.name);
        let ns = match host.open(&path) {
            Ok(ns) => ns,
            // A file without a namespace on it (a crash mid-create): treat as absent, the
            // create step finishes it.
            Err(dataplane::Error::NotFound(_)) | Err(dataplane::Error::Io { .. }) => {
                observed.router_netns.remove(&slice.name);
                continue;
            }
            Err(e) => {
                tracing::warn!(slice = %slice.name, error = %slice_api::error_chain::chain(&e), "cannot open the router namespace; leaving it alone this round");
                observed.unobservable.insert(slice.name.clone());
                unobservable.push((slice.name.clone(), observe_error(&slice.name, "opening the router namespace", e)));
                continue;
            }
        };
        let multipath_wanted = !multipath::specs(slice).is_empty();
        match observe_router(&slice.name, host, &ns, &vxlan_name(slice.vni), multipath_wanted) {
            Ok((router, multipath)) => {
                observed.routers.insert(slice.name.clone(), router);
                observed.multipath.insert(slice.name.clone(), multipath);
            }
            Err(e) => {
                tracing::warn!(slice = %slice.name, error = %slice_api::error_chain::chain(&e), "cannot observe the router; leaving it alone this round");
                observed.unobservable.insert(slice.name.clone());
                unobservable.push((slice.name.clone(), e));
            }
        }
    }

    let links = node.links().map_err(|e| observe_error("(node)", "listing node links", e))?;
    observed.node_vxlans =
        links.iter().filter(|l| is_vxlan(l) && vni_of_vxlan_name(&l.name).is_some()).map(observed_vxlan).collect();
    Ok((observed, unobservable))
}

/// Applies actions in order. A slice's remaining actions are skipped after its first failure
/// (its state file is never written over a half-built router); other slices go on. Returns the
/// failures, one per failed slice.
pub fn apply<H: NamespaceOps>(
    config: &NodeAgentConfig,
    host: &mut H,
    node: &mut H::Netlink,
    actions: &[Action],
) -> Vec<(String, String, NodeAgentError)> {
    let mut routers = RouterHandles::<H> { open: BTreeMap::new() };
    let mut failed: BTreeMap<String, ()> = BTreeMap::new();
    let mut failures = Vec::new();
    for action in actions {
        let slice = action.slice().to_string();
        if failed.contains_key(&slice) {
            continue;
        }
        tracing::info!(slice = %slice, action = %action, "applying");
        if let Err(e) = apply_one(config, host, node, &mut routers, action) {
            tracing::warn!(slice = %slice, action = %action, error = %e, "action failed");
            failed.insert(slice.clone(), ());
            failures.push((slice, action.to_string(), e));
        }
    }
    failures
}

/// Open router namespaces and netlink handles in them, by slice, for one apply pass.
struct RouterHandles<H: NamespaceOps> {
    open: BTreeMap<String, (H::Ns, H::Netlink)>,
}

impl<H: NamespaceOps> RouterHandles<H> {
    fn get(
        &mut self,
        config: &NodeAgentConfig,
        host: &mut H,
        slice: &str,
    ) -> Result<&mut (H::Ns, H::Netlink), NodeAgentError> {
        if !self.open.contains_key(slice) {
            let path = config.router_netns(slice);
            let ns = host.open(&path).map_err(|source| NodeAgentError::Apply {
                what: format!("opening router namespace {}", path.display()),
                source,
            })?;
            let nl = host.netlink(&ns).map_err(|source| NodeAgentError::Apply {
                what: format!("opening netlink in {}", path.display()),
                source,
            })?;
            self.open.insert(slice.to_string(), (ns, nl));
        }
        Ok(self.open.get_mut(slice).expect("inserted above"))
    }
}

fn apply_one<H: NamespaceOps>(
    config: &NodeAgentConfig,
    host: &mut H,
    node: &mut H::Netlink,
    routers: &mut RouterHandles<H>,
    action: &Action,
) -> Result<(), NodeAgentError> {
    let dp = |what: String| move |source| NodeAgentError::Apply { what, source };
    let what = action.to_string();
    match action {
        Action::RemoveStateFile { slice } => {
            let path = NodeState::path(&config.state_dir, slice);
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(NodeAgentError::Io { op: format!("removing {}", path.display()), source }),
            }
        }
        Action::DeleteRouterNetns { slice, netns } => {
            routers.open.remove(slice);
            // Delete the VXLAN first, synchronously: a namespace is destroyed asynchronously
            // after its last reference goes, and until then its VXLAN keeps the VNI on the node's
            // socket ("A VXLAN device with the specified VNI already exists" on a quick re-add).
            if let Ok(ns) = host.open(netns)
                && let Ok(mut nl) = host.netlink(&ns)
                && let Ok(links) = nl.links()
            {
                for link in links.iter().filter(|l| is_vxlan(l)) {
                    let _ = nl.delete_link(&link.name);
                }
            }
            host.delete_named(netns).map(drop).map_err(dp(what))
        }
        Action::DeleteNodeVxlan { name, .. } => node.delete_link(name).map(drop).map_err(dp(what)),
        Action::CreateRouterNetns { slice, netns } => {
            routers.open.remove(slice);
            host.ensure_named(netns).map(drop).map_err(dp(what))
        }
        Action::SetSysctl { slice, key, value } => {
            let (ns, _) = routers.get(config, host, slice)?;
            host.set_sysctl(ns, key, value).map_err(dp(what))
        }
        Action::SetLoopbackUp { slice } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.set_up("lo").map_err(dp(what))
        }
        Action::AddLoopbackAddress { slice, addr } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.add_addr("lo", *addr).map_err(dp(what))
        }
        Action::DeleteLoopbackAddress { slice, addr } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.del_addr("lo", *addr).map(drop).map_err(dp(what))
        }
        Action::DeleteVxlan { slice, name } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.delete_link(name).map(drop).map_err(dp(what))
        }
        Action::CreateVxlan { slice, spec } => {
            let (ns, nl) = routers.get(config, host, slice)?;
            // Created in the node namespace so that its UDP socket lives there (on the
            // underlay), then moved into the router namespace (LAB-FACTS: verified).
            create_vxlan_in_node(
                node,
                &VxlanRequest {
                    name: spec.name.clone(),
                    vni: spec.vni,
                    local: spec.local,
                    port: spec.port,
                    mtu: spec.mtu,
                    mac: spec.mac,
                },
            )
            .map_err(dp(what.clone()))?;
            if let Err(e) = node.set_netns(&spec.name, ns) {
                // Do not leave it in the node namespace, where it would hold the VNI.
                let _ = node.delete_link(&spec.name);
                return Err(dp(what)(e));
            }
            nl.set_up(&spec.name).map_err(dp(what))
        }
        Action::SetVxlanMtu { slice, name, mtu } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.set_mtu(name, *mtu).map_err(dp(what))
        }
        Action::SetVxlanUp { slice, name } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.set_up(name).map_err(dp(what))
        }
        Action::DeleteRoute { slice, route } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.del_route(route).map(drop).map_err(dp(what))
        }
        Action::ReplaceRoute { slice, route } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.replace_route(route).map_err(dp(what))
        }
        Action::DeleteNeigh { slice, dev, ip } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.del_neigh(dev, *ip).map(drop).map_err(dp(what))
        }
        Action::ReplaceNeigh { slice, dev, neigh } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.replace_neigh(dev, neigh.ip, neigh.mac).map_err(dp(what))
        }
        Action::DeleteFdb { slice, dev, entry } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.del_fdb(dev, entry).map(drop).map_err(dp(what))
        }
        Action::ReplaceFdb { slice, dev, entry } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.replace_fdb(dev, entry).map_err(dp(what))
        }
        Action::ReplaceFirewall { slice, objects, services } => {
            let (ns, _) = routers.get(config, host, slice)?;
            host.nft_replace_table(ns, crate::firewall::TABLE, objects).map_err(dp(what))?;
            tracing::info!(slice = %slice, services = services.0, ports = services.1, "router firewall programmed");
            Ok(())
        }
        Action::DeleteFirewall { slice } => {
            let (ns, _) = routers.get(config, host, slice)?;
            host.nft_delete_table(ns, crate::firewall::TABLE).map_err(dp(what))
        }
        Action::ReplaceNexthop { slice, nexthop } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.replace_nexthop(nexthop).map_err(dp(what))
        }
        Action::DeleteNexthop { slice, id } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.del_nexthop(*id).map(drop).map_err(dp(what))
        }
        Action::ReplaceNexthopRoute { slice, route } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.replace_nexthop_route(route).map_err(dp(what))
        }
        Action::DeleteNexthopRoute { slice, route } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.del_nexthop_route(route).map(drop).map_err(dp(what))
        }
        Action::AddRule { slice, rule } => {
            let (_, nl) = routers.get(config, host, slice)?;
            match nl.add_rule(rule) {
                // Added meanwhile (by the kernel's view): what we wanted.
                Err(e) if e.is_exists() => Ok(()),
                other => other.map_err(dp(what)),
            }
        }
        Action::DeleteRule { slice, rule } => {
            let (_, nl) = routers.get(config, host, slice)?;
            nl.del_rule(rule).map(drop).map_err(dp(what))
        }
        Action::WriteStateFile { state, .. } => state.store(&config.state_dir).map_err(NodeAgentError::StateFile),
        Action::KeepFirewall { reason, .. } => Err(NodeAgentError::Policy(reason.clone())),
        Action::AwaitGateway { .. } => Err(NodeAgentError::Waiting(
            "the gateway pod is not on this node yet (no route to it in the router namespace); retrying".into(),
        )),
    }
}

/// Creates the VXLAN in the node namespace. EEXIST with no such device in the node namespace
/// means the VNI is still held by a VXLAN in a router namespace being destroyed (namespaces die
/// asynchronously): wait for it, up to two seconds.
fn create_vxlan_in_node(node: &mut impl NetlinkOps, req: &VxlanRequest) -> dataplane::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match node.create_vxlan(req) {
            Err(e)
                if e.is_exists()
                    && std::time::Instant::now() < deadline
                    && matches!(node.link(&req.name), Ok(None)) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
