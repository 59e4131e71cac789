//! nftables tables, through the `nft` binary's JSON interface (`nft -j`), inside a network
//! namespace: list one table back as JSON objects, replace it whole in one transaction, delete it.
//!
//! A table is handled as a list of objects in the form `nft -j list table` prints them
//! (`{"table": …}`, `{"chain": …}`, `{"rule": …}`, …) without their kernel handles. Replacing is
//! one batch `add table; delete table; add table; add <each object>`: the kernel commits all of
//! it or none (LAB-FACTS.md), so there is never a moment without rules and a refused batch leaves
//! the previous table in force. nft 1.0.6 lists back exactly what it was given in this form
//! (checked for the shapes slicenet uses; a one-element set reads back as the bare element), so
//! a caller that renders its desired table in that form compares it with the listing as plain
//! JSON and rewrites only when they differ.
//!
//! `nft` runs as a child of a thread that entered the namespace ([`Netns::run`]): the caller never
//! changes namespace. Its messages go to [`Error::Nft`] word for word.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::{Error, Netns, Result};

/// The `nft` binary, from `PATH` (Debian's `nftables` package).
pub const NFT: &str = "nft";

/// One table: family (`inet`, `ip`, `ip6`, …) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableId {
    pub family: &'static str,
    pub name: &'static str,
}

impl TableId {
    /// The table's own object, `{"table": {"family": …, "name": …}}`, as listed.
    pub fn object(&self) -> Value {
        json!({"table": {"family": self.family, "name": self.name}})
    }
}

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {} {}", self.family, self.name)
    }
}

/// The batch that replaces `table` with `objects` (the table's own object first, as
/// [`list_table`] returns them) in one transaction.
///
/// A listing prints maps before chains, but a verdict map's elements (`jump <chain>`) can only
/// be added once their chains exist: such a map is added empty in its place and its elements
/// at the end of the batch, so that a listing can be given back as it is.
pub fn replace_batch(table: TableId, objects: &[Value]) -> Value {
    let mut commands = vec![json!({"add": table.object()}), json!({"delete": table.object()})];
    let mut elements = Vec::new();
    for o in objects {
        let mut o = o.clone();
        if let Some(map) = o.get_mut("map").and_then(Value::as_object_mut)
            && map.get("map").and_then(Value::as_str) == Some("verdict")
            && let Some(elem) = map.remove("elem")
        {
            elements.push(json!({"add": {"element": {
                "family": map.get("family"), "table": map.get("table"), "name": map.get("name"), "elem": elem,
            }}}));
        }
        commands.push(json!({ "add": o }));
    }
    commands.extend(elements);
    json!({ "nftables": commands })
}

/// The batch that deletes `table` whether or not it exists (`add` first: deleting an absent
/// table is an error).
pub fn delete_batch(table: TableId) -> Value {
    json!({"nftables": [{"add": table.object()}, {"delete": table.object()}]})
}

/// Removes what the kernel adds to a listing (the `metainfo` object, every `handle`), so that a
/// listing compares equal to what was applied.
pub fn strip_listing(listing: &Value) -> Vec<Value> {
    let Some(objects) = listing.get("nftables").and_then(Value::as_array) else { return Vec::new() };
    objects
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .map(|o| {
            let mut o = o.clone();
            if let Some(map) = o.as_object_mut() {
                for inner in map.values_mut() {
                    if let Some(inner) = inner.as_object_mut() {
                        inner.remove("handle");
                    }
                }
            }
            o
        })
        .collect()
}

/// Runs `nft ARGS` in `ns` with `stdin`, and returns its stdout. `LC_ALL=C` keeps its messages
/// (which callers match, e.g. for an absent table) in English.
fn run(ns: &Netns, args: &[&str], stdin: Option<&[u8]>, op: &str) -> Result<Vec<u8>> {
    let output = ns.run(|| -> std::io::Result<std::process::Output> {
        let mut child = Command::new(NFT)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(bytes)?;
        }
        child.wait_with_output()
    })?;
    let output = output.map_err(|source| Error::Io {
        op: format!("{op}: running {NFT} in {} (is the nftables package installed?)", ns.describe()),
        source,
    })?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let stderr = if stderr.is_empty() { format!("exited with {}", output.status) } else { stderr };
        Err(Error::Nft { op: format!("{op} in {}", ns.describe()), stderr })
    }
}

/// The objects of `table` in `ns` (see [`strip_listing`]), `None` when there is no such table.
///
/// # Errors
/// When `nft` cannot run, fails otherwise, or prints something that is not JSON.
pub fn list_table(ns: &Netns, table: TableId) -> Result<Option<Vec<Value>>> {
    let op = format!("listing {table}");
    match run(ns, &["-j", "list", "table", table.family, table.name], None, &op) {
        Ok(stdout) => {
            let listing: Value = serde_json::from_slice(&stdout)
                .map_err(|e| Error::Other { op, message: format!("nft printed no JSON: {e}") })?;
            Ok(Some(strip_listing(&listing)))
        }
        Err(Error::Nft { stderr, .. }) if stderr.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Applies a JSON batch in `ns` in one transaction (all or nothing).
///
/// # Errors
/// [`Error::Nft`] with nft's own message when it refuses the batch (nothing changed then).
pub fn apply(ns: &Netns, batch: &Value, op: &str) -> Result<()> {
    let bytes = serde_json::to_vec(batch).expect("a JSON value serializes");
    run(ns, &["-j", "-f", "-"], Some(&bytes), op).map(drop)
}

/// Replaces `table` in `ns` with `objects`, in one transaction.
///
/// # Errors
/// See [`apply`]; the previous table stays in force.
pub fn replace_table(ns: &Netns, table: TableId, objects: &[Value]) -> Result<()> {
    apply(ns, &replace_batch(table, objects), &format!("replacing {table}"))
}

/// Deletes `table` in `ns`; nothing to do when it is not there.
///
/// # Errors
/// See [`apply`].
pub fn delete_table(ns: &Netns, table: TableId) -> Result<()> {
    apply(ns, &delete_batch(table), &format!("deleting {table}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TableId = TableId { family: "inet", name: "slicenet" };

    #[test]
    fn a_replacement_is_one_batch_that_starts_from_an_empty_table() {
        let chain = json!({"chain": {"family": "inet", "table": "slicenet", "name": "c"}});
        let batch = replace_batch(T, &[T.object(), chain.clone()]);
        let commands = batch["nftables"].as_array().unwrap();
        assert_eq!(commands.len(), 4);
        assert_eq!(commands[0], json!({"add": T.object()}));
        assert_eq!(commands[1], json!({"delete": T.object()}));
        assert_eq!(commands[2], json!({"add": T.object()}));
        assert_eq!(commands[3], json!({"add": chain}));
        assert_eq!(delete_batch(T)["nftables"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn verdict_map_elements_come_after_the_chains_they_jump_to() {
        let jump = json!([["10.0.0.5", {"jump": {"target": "c"}}]]);
        let map = json!({"map": {"family": "inet", "table": "slicenet", "name": "m", "type": "ipv4_addr",
            "map": "verdict", "elem": jump}});
        let set = json!({"set": {"family": "inet", "table": "slicenet", "name": "s", "type": "ipv4_addr",
            "elem": ["10.0.0.1"]}});
        let chain = json!({"chain": {"family": "inet", "table": "slicenet", "name": "c"}});
        let batch = replace_batch(T, &[T.object(), map, set.clone(), chain.clone()]);
        let commands = batch["nftables"].as_array().unwrap();
        assert_eq!(commands.len(), 7);
        assert!(commands[3]["add"]["map"].get("elem").is_none(), "the map is added empty");
        assert_eq!(commands[4], json!({"add": set}), "other sets keep their elements");
        assert_eq!(commands[5], json!({"add": chain}));
        assert_eq!(
            commands[6],
            json!({"add": {"element": {"family": "inet", "table": "slicenet", "name": "m", "elem": jump}}})
        );
    }

    #[test]
    fn a_listing_loses_its_handles_and_metainfo_only() {
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "slicenet", "handle": 7}},
            {"rule": {"family": "inet", "table": "slicenet", "chain": "c", "handle": 3, "expr": [{"accept": null}]}}
        ]});
        assert_eq!(
            strip_listing(&listing),
            vec![
                T.object(),
                json!({"rule": {"family": "inet", "table": "slicenet", "chain": "c", "expr": [{"accept": null}]}})
            ]
        );
        assert!(strip_listing(&json!({})).is_empty());
    }
}
