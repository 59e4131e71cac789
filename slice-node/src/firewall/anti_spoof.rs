//! Anti-spoofing, the router's first check: a packet that arrives on any interface but `lo`
//! with a source address that the router would not route back out of that same interface is
//! dropped (strict reverse-path filtering). A pod's veth has exactly one route, the CNI
//! plugin's `/32` (`/128`) to the pod's slice address, so a pod can send only from its own
//! address; the VXLAN carries the peer nodes' prefixes (and the remote clusters' behind a
//! peer's gateway), and the local gateway pod's veth the remote clusters' prefixes routed via
//! it. Using the routing table instead of a list of addresses per veth keeps the check true
//! the moment the CNI plugin adds a pod, with no rule to rewrite.
//!
//! **IPv4:** the kernel does it. The agent sets `rp_filter` to 1 (strict) on every pod's veth
//! (`plan::rp_filter`; off only on the veths of gateway replicas and the VXLAN of a slice with
//! several replicas, whose sources are pinned elsewhere), which the kernel checks at the routing decision,
//! before the forward hook where policy runs: a forged packet is never forwarded and its
//! connection-tracking entry is never confirmed, so no policy can allow it. **IPv6** has no
//! `rp_filter`: this chain does the same check with nft's `fib saddr . iif oif missing`, at
//! priority `raw`, before conntrack, for IPv6 packets only, and skips it on the same devices as
//! IPv4 ([`exempt`]). Doing it here for IPv4 as well would be the same route lookup twice per
//! packet (what each costs: docs/decisions.md).

use serde_json::{Value, json};

use super::{base_chain, rule};

/// The chain.
pub const CHAIN: &str = "anti-spoof";
/// nft's `raw` priority: before conntrack (-200) and the DNAT (-100).
pub const PRIORITY_RAW: i32 = -300;

/// Why a device skips the check (the rule's comment).
pub const EXEMPT_COMMENT: &str =
    "a gateway replica's interface: its sources are pinned by WireGuard or the peer router";

/// `table` (built by [`super::table`]) with the check skipped on `devs`, the interfaces
/// `plan::rp_filter` turns IPv4's filter off on (a slice's replicas' veths and VXLAN): an
/// `accept` per device before the check, in the order given. A table without the chain is
/// left alone.
pub fn exempt(table: &mut Vec<Value>, devs: &[&str]) {
    let Some(at) = table.iter().position(|o| o["rule"]["chain"] == CHAIN) else { return };
    let rules = devs.iter().map(|dev| {
        rule(
            CHAIN,
            vec![
                json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": dev}}),
                json!({"accept": null}),
            ],
            Some(EXEMPT_COMMENT),
        )
    });
    table.splice(at..at, rules);
}

/// The chain and its one rule.
pub fn chains() -> Vec<Value> {
    vec![
        base_chain(CHAIN, "filter", "prerouting", PRIORITY_RAW),
        rule(
            CHAIN,
            vec![
                json!({"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}}),
                json!({"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}}),
                json!({"match": {"op": "==", "left": {"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, "right": false}}),
                json!({"drop": null}),
            ],
            Some("IPv6 source address not routed back through the interface it came in on (IPv4: rp_filter)"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exempt_devices_come_before_the_check_in_the_order_given() {
        let mut table = vec![json!({"table": {}}), base_chain(CHAIN, "filter", "prerouting", PRIORITY_RAW)];
        table.extend(chains().into_iter().skip(1));
        let check = table.last().cloned().unwrap();
        exempt(&mut table, &["sv100", "vethgw"]);
        let rules: Vec<&Value> = table.iter().filter(|o| o["rule"]["chain"] == CHAIN).collect();
        assert_eq!(rules.len(), 3);
        for (rule, dev) in rules.iter().zip(["sv100", "vethgw"]) {
            assert_eq!(rule["rule"]["expr"][0]["match"]["right"], dev);
            assert_eq!(rule["rule"]["expr"][1], json!({"accept": null}));
        }
        assert_eq!(*rules[2], check, "the check stays last");
        // Nothing to exempt, or no chain: unchanged.
        let before = table.clone();
        exempt(&mut table, &[]);
        assert_eq!(table, before);
        let mut other = vec![json!({"table": {}})];
        exempt(&mut other, &["sv100"]);
        assert_eq!(other, [json!({"table": {}})]);
    }
}
