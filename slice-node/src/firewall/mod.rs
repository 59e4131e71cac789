//! The router namespace's nftables table, `inet slicenet`: slicenet owns it whole, builds all of
//! it here from the slice's configuration (pure), and the agent replaces it in one transaction
//! whenever what the kernel lists differs from what is built here (`dataplane::nft`).
//!
//! Layout: one table, one base chain per job, each job in its own module that returns its
//! chains and rules. Today's job is [`services`] (ClusterSetIP DNAT); MultiNetworkPolicy adds its
//! own module with its own chains (e.g. `policy-forward`, a filter chain on the forward hook) and
//! one more line in [`table`]. Priorities keep the jobs ordered without jumps between them:
//!
//! | chain | type, hook, priority | job |
//! | --- | --- | --- |
//! | `services` | nat, prerouting, dstnat (-100) | DNAT a new connection to a ClusterSetIP port to one backend |
//! | `services-unserved` | filter, prerouting, dstnat + 10 | refuse what still goes to a ClusterSetIP (no backend, no such port) |
//!
//! A policy chain on `forward` sees packets after the DNAT (destination = the chosen backend),
//! which is what a policy on the backend pods must see.

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
/// (table first); `None` when the slice needs no rule (the table is then removed).
pub fn table(slice: &SliceOnNode) -> Option<Vec<Value>> {
    let chains = services::chains(slice);
    if chains.is_empty() {
        return None;
    }
    let mut objects = vec![TABLE.object()];
    objects.extend(chains);
    Some(objects)
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
