//! The router namespace's nftables table, `inet slicenet`: slicenet owns it whole, builds all of
//! it here from the slice's configuration (pure), and the agent replaces it in one transaction
//! whenever what the kernel lists differs from what is built here (`dataplane::nft`).
//!
//! Layout: one table, one base chain per job, each job in its own module that returns its
//! chains, sets and rules; [`table`] puts them together in the order `nft -j list` prints them.
//! Priorities keep the jobs ordered without jumps between them:
//!
//! | chain | type, hook, priority | job |
//! | --- | --- | --- |
//! | `anti-spoof` | filter, prerouting, raw (-300) | drop an IPv6 packet whose source is not routed back out of its input interface; IPv4 has the kernel's strict `rp_filter` ([`anti_spoof`]) |
//! | `services` | nat, prerouting, dstnat (-100) | DNAT a new connection to a ClusterSetIP port to one backend ([`services`]) |
//! | `services-unserved` | filter, prerouting, dstnat + 10 | refuse what still goes to a ClusterSetIP (no backend, no such port) |
//! | `policy-forward` | filter, forward, filter (0) | MultiNetworkPolicy for this node's pods ([`policy`]) |
//!
//! The policy chain on `forward` sees packets after the DNAT (destination = the chosen backend),
//! which is what a policy on the backend pods must see. The table exists when the slice has
//! services or policies; the anti-spoof chain is in every table.

pub mod anti_spoof;
pub mod policy;
pub mod render;
pub mod services;

use dataplane::nft::TableId;
use serde_json::{Value, json};
use slice_api::node::SliceOnNode;

/// The one table slicenet owns in each router namespace.
pub const TABLE: TableId = TableId { family: "inet", name: "slicenet" };

/// Priority of the `dstnat` hook slot (nft's `priority dstnat`).
pub const PRIORITY_DSTNAT: i32 = -100;

/// Longest rule comment nft keeps (libnftnl's `NFTNL_UDATA_COMMENT_MAXLEN`, 128 with its NUL).
const COMMENT_MAX: usize = 127;

/// The objects of the router's table for `slice`, in the form `nft -j list table` prints them
/// ([`canonical`]); `None` when the slice needs no rule (the table is then removed).
///
/// # Errors
/// A policy that cannot be compiled: the caller keeps the table in force.
pub fn table(slice: &SliceOnNode) -> Result<Option<Vec<Value>>, policy::CompileError> {
    let services = services::chains(slice);
    let (policies, _) = policy::compile(slice)?;
    // IPv6 has no rp_filter: a slice with an IPv6 family needs the table for its anti-spoof
    // chain even without services or policies.
    let has_ipv6 = slice.families().any(|(subnet, _)| subnet.addr().is_ipv6());
    if services.is_empty() && policies.is_empty() && !has_ipv6 {
        return Ok(None);
    }
    let mut objects = vec![TABLE.object()];
    objects.extend(anti_spoof::chains());
    objects.extend(services);
    objects.extend(policies);
    Ok(Some(canonical(objects)))
}

/// `objects` in the order and form `nft -j list table` prints them, so that a built table and a
/// listing compare as plain JSON: tables, then sets and maps, then chains, each in the order
/// given (nft lists them in creation order), then rules grouped by chain in chain order; the
/// elements of every named set and map sorted (the kernel's hash sets list in no fixed order).
pub fn canonical(objects: Vec<Value>) -> Vec<Value> {
    let rank = |o: &Value| match () {
        () if o.get("table").is_some() => 0,
        () if o.get("set").is_some() || o.get("map").is_some() => 1,
        () if o.get("chain").is_some() => 2,
        () if o.get("rule").is_some() => 3,
        () => 4,
    };
    let mut objects: Vec<Value> = objects
        .into_iter()
        .map(|mut o| {
            for kind in ["set", "map"] {
                if let Some(Value::Array(elem)) = o.get_mut(kind).and_then(|s| s.get_mut("elem")) {
                    elem.sort_by_cached_key(Value::to_string);
                }
            }
            o
        })
        .collect();
    let chain_order: Vec<String> =
        objects.iter().filter_map(|o| o.get("chain").and_then(|c| c["name"].as_str()).map(str::to_string)).collect();
    let position = |o: &Value| {
        o.get("rule")
            .and_then(|r| r["chain"].as_str())
            .and_then(|c| chain_order.iter().position(|n| n == c))
            .unwrap_or(usize::MAX)
    };
    // Stable: the order within each kind (and of the rules within a chain) is kept.
    objects.sort_by_cached_key(|o| (rank(o), if rank(o) == 3 { position(o) } else { 0 }));
    objects
}

/// A base chain of [`TABLE`] with policy accept.
pub(crate) fn base_chain(name: &str, kind: &str, hook: &str, prio: i32) -> Value {
    json!({"chain": {
        "family": TABLE.family, "table": TABLE.name, "name": name,
        "type": kind, "hook": hook, "prio": prio, "policy": "accept",
    }})
}

/// A rule of `chain` in [`TABLE`], with an optional comment (cut to what nft keeps).
pub(crate) fn rule(chain: &str, expr: Vec<Value>, comment: Option<&str>) -> Value {
    let mut rule = json!({"family": TABLE.family, "table": TABLE.name, "chain": chain});
    if let Some(comment) = comment {
        let mut end = comment.len().min(COMMENT_MAX);
        while !comment.is_char_boundary(end) {
            end -= 1;
        }
        rule["comment"] = json!(&comment[..end]);
    }
    rule["expr"] = Value::Array(expr);
    json!({ "rule": rule })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100);
        let r = rule("c", vec![], Some(&long));
        let kept = r["rule"]["comment"].as_str().unwrap();
        assert!(kept.len() <= COMMENT_MAX && long.starts_with(kept), "{kept}");
        assert!(rule("c", vec![], None)["rule"].get("comment").is_none());
    }
}
