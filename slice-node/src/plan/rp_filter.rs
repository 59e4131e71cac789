//! The router's IPv4 reverse-path filter, per device: the IPv4 anti-spoofing
//! ([`crate::firewall::anti_spoof`] says why it is the kernel's check and not nft's).
//!
//! | device | `rp_filter` |
//! | --- | --- |
//! | a pod's veth (the CNI plugin's `/32` route names it) | 1, strict |
//! | the VXLAN | 1; 0 when the slice has multi-gateway routes |
//! | the veth of a replica on this node, in a multi-gateway route | 0 |
//!
//! The router's `all` is 0 and its `default` 1 ([`super::ROUTER_SYSCTLS`]): the kernel takes the
//! higher of `all` and the device's own value, so each device counts alone, and every device
//! made after the router — each pod's veth — is strict from its creation; the agent keeps
//! every pod's veth at 1 whoever changed it.
//!
//! Why the replicas' interfaces are off: a remote cluster's gateways choose one of our replicas
//! per flow by their own hashing and probes, so a packet may come in through a replica this
//! router's groups leave out at that moment (the agent's probes missed it, it just came back,
//! it drains). The strict check would drop that packet, since the route back to its source no
//! longer goes through that device; so does loose mode (2) here, which drops on a device with
//! no IPv4 address, as the router's veths and VXLAN are. Their sources are pinned elsewhere: a
//! replica's by WireGuard's cryptokey routing (a peer's packets carry only its allowed
//! prefixes), the VXLAN's by the peer nodes' own strict pod veths.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::Action;
use super::multipath::{MultipathSpec, Reach};

/// Source checked against the route back through the same device.
pub const STRICT: &str = "1";
/// No check.
pub const OFF: &str = "0";

/// The sysctl of a device's IPv4 reverse-path filter.
pub fn key(dev: &str) -> String {
    format!("net/ipv4/conf/{dev}/rp_filter")
}

/// What each device wants: the VXLAN `vxlan`, and every local pod's veth
/// (`local_host_devs`: the device of each `/32` or `/128` route).
pub(super) fn wanted(
    vxlan: &str,
    specs: &[MultipathSpec],
    local_host_devs: &BTreeMap<IpAddr, String>,
) -> BTreeMap<String, &'static str> {
    let replicas = specs.iter().flat_map(|s| &s.gateways).filter(|g| g.reach == Reach::Local);
    let off: Vec<&String> = replicas.filter_map(|g| local_host_devs.get(&g.address)).collect();
    let mut out: BTreeMap<String, &'static str> = local_host_devs.values().map(|d| (d.clone(), STRICT)).collect();
    out.insert(vxlan.to_owned(), if specs.is_empty() { STRICT } else { OFF });
    for dev in off {
        out.insert(dev.clone(), OFF);
    }
    out
}

/// Sets each device whose value differs from what it wants (a device not observed yet — the
/// VXLAN made in this pass — starts at the router's default, strict).
pub(super) fn plan(
    slice: &str,
    wanted: &BTreeMap<String, &'static str>,
    observed: &BTreeMap<String, String>,
    actions: &mut Vec<Action>,
) {
    for (dev, value) in wanted {
        let have = observed.get(dev).map_or(STRICT, String::as_str);
        if have != *value {
            actions.push(Action::SetSysctl { slice: slice.to_owned(), key: key(dev), value: (*value).to_owned() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slice_api::node::NodeAgentConfig;

    /// Blue on n1 with peer n2: 10.80.16.0/20 through replicas .5 (here) and .70 (on n2).
    fn specs(also_via: &[&str]) -> Vec<MultipathSpec> {
        let c: NodeAgentConfig = serde_json::from_value(serde_json::json!({
            "node": "n1", "underlayAddress": "198.18.250.1",
            "slices": [{
                "name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.0.0/26",
                "peers": [{"name": "n2", "underlayAddress": "198.18.250.2", "nodePrefix": "10.80.0.64/26"}],
                "remoteRoutes": [{"prefix": "10.80.16.0/20", "via": "10.80.0.5", "alsoVia": also_via}]
            }]
        }))
        .unwrap();
        c.validate().unwrap();
        super::super::multipath::specs(&c.slices[0])
    }

    fn devs() -> BTreeMap<IpAddr, String> {
        [("10.80.0.5", "vethgw"), ("10.80.0.9", "vethpod")].map(|(a, d)| (a.parse().unwrap(), d.to_owned())).into()
    }

    fn planned(wanted: &BTreeMap<String, &'static str>, observed: &[(&str, &str)]) -> Vec<String> {
        let observed = observed.iter().map(|(d, v)| ((*d).to_owned(), (*v).to_owned())).collect();
        let mut actions = Vec::new();
        plan("blue", wanted, &observed, &mut actions);
        actions.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn replicas_and_the_vxlan_are_off_with_several_gateways_and_pods_stay_strict() {
        let several = wanted("sv100", &specs(&["10.80.0.70"]), &devs());
        assert_eq!(
            several,
            BTreeMap::from([("sv100".into(), OFF), ("vethgw".into(), OFF), ("vethpod".into(), STRICT)])
        );
        // A fresh router: the VXLAN (not there yet) and the replica's veth are turned off; the
        // pod's veth is strict from its creation.
        let fresh = planned(&several, &[("vethgw", "1"), ("vethpod", "1")]);
        assert_eq!(
            fresh,
            ["set sysctl net/ipv4/conf/sv100/rp_filter=0", "set sysctl net/ipv4/conf/vethgw/rp_filter=0"]
        );
        assert!(planned(&several, &[("sv100", "0"), ("vethgw", "0"), ("vethpod", "1")]).is_empty());
        // A pod's veth someone turned off (or made loose) is made strict again.
        assert_eq!(
            planned(&several, &[("sv100", "0"), ("vethgw", "0"), ("vethpod", "2")]),
            ["set sysctl net/ipv4/conf/vethpod/rp_filter=1"]
        );

        // One gateway: no multipath, every device strict, the VXLAN back to strict too.
        let one = wanted("sv100", &[], &devs());
        assert!(one.values().all(|v| *v == STRICT), "{one:?}");
        assert_eq!(
            planned(&one, &[("sv100", "0"), ("vethgw", "0"), ("vethpod", "1")]),
            ["set sysctl net/ipv4/conf/sv100/rp_filter=1", "set sysctl net/ipv4/conf/vethgw/rp_filter=1"]
        );
        // The local replica's pod not on the node yet: the VXLAN off, no veth to set.
        let waiting = wanted("sv100", &specs(&["10.80.0.70"]), &BTreeMap::new());
        assert_eq!(waiting, BTreeMap::from([("sv100".into(), OFF)]));
    }
}
