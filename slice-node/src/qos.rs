//! QoS on the node's uplink: one HTB tree on the egress of the device that holds the node's
//! underlay address, its root at the cluster's uplink rate, a class per slice with a QoS
//! profile (rate = guarantee, ceil = ceiling, prio = priority) and a default class for
//! everything else; and one nftables table in the node's namespace, [`TABLE`], that puts each
//! slice's gateway traffic into its class (`meta priority set`, matched on the gateway's UDP
//! source port as it leaves through the uplink).
//!
//! Why nftables in the node's namespace and not `SO_PRIORITY` on the gateway's socket
//! (docs/decisions.md, "QoS per slice"): measured here, a priority set on a socket in the
//! gateway pod's namespace survives the veth into the node's namespace but is overwritten when
//! the node forwards the packet (`ip_forward` sets it from the TOS byte), so the packet reaches
//! the uplink in the default class; the same socket option in the node's own namespace works.
//!
//! Observe ([`dataplane::tc::TcOps::observe`], the table's listing) → plan ([`desired`],
//! [`plan`], pure) → apply. A second pass with nothing changed applies nothing. A class whose
//! parameters change is changed in place (`tc class change`): its queue and the connections
//! through it stay. A slice that goes loses its class; the last one takes the tree and the table
//! with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use dataplane::nft::TableId;
use dataplane::tc::{HtbClass, MAJOR, TcChange, TcOps, TcState, rate_matches};
use serde_json::{Value, json};
use slice_api::node::NodeAgentConfig;

use crate::NodeAgentError;

/// The nftables table of the node's namespace that classifies the gateways' traffic.
pub const TABLE: TableId = TableId { family: "inet", name: "slicenet_qos" };
/// The root class (`5c:1`): rate = ceil = the uplink.
pub const ROOT_CLASS: u16 = 1;
/// The default class (`5c:2`): everything no rule classifies.
pub const DEFAULT_CLASS: u16 = 2;
/// Priority of the default class (served last when classes borrow).
pub const DEFAULT_PRIORITY: u8 = 7;
/// The least rate HTB is given for a class (a slice with no guarantee, the default class when
/// the guarantees take the whole uplink): it still moves.
pub const MIN_RATE_KBPS: u64 = 8;
/// The file under the state dir that says what the tree is (device, leaf qdisc, classes): in
/// its own directory, since every `*.json` directly in the state dir is a slice's state file.
pub const STATUS_FILE: &str = "qos/tree.json";
/// Slice classes take minors from here (below: root and default).
const FIRST_SLICE_MINOR: u16 = 0x10;

/// One slice's class in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceClass {
    pub slice: String,
    pub class: HtbClass,
    /// The UDP source port of the slice's gateway.
    pub gateway_port: u16,
}

/// The tree a node's configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub uplink_kbps: u64,
    /// Root class first, then the default class.
    pub classes: Vec<HtbClass>,
    pub slices: Vec<SliceClass>,
}

/// A stable minor per slice name: FNV-1a into `0x10..0xfff0`, the next free one on a
/// collision (names taken in sorted order, so the outcome depends only on the set of names).
#[must_use]
pub fn minors<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u16> {
    let names: BTreeSet<&str> = names.into_iter().collect();
    let span = 0xfff0 - u64::from(FIRST_SLICE_MINOR);
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in names {
        let mut m = slice_api::fnv::fnv1a_64(name.bytes()) % span;
        while used.contains(&m) {
            m = (m + 1) % span;
        }
        used.insert(m);
        out.insert(name.to_owned(), FIRST_SLICE_MINOR + u16::try_from(m).expect("below 0xfff0"));
    }
    out
}

/// The tree `config` asks for; `None` when no slice has QoS (no tree at all then).
#[must_use]
pub fn desired(config: &NodeAgentConfig) -> Option<Tree> {
    let uplink = config.uplink_kbps()?;
    let with_qos: Vec<_> = config.slices.iter().filter_map(|s| s.qos.as_ref().map(|q| (s.name.as_str(), q))).collect();
    let minors = minors(with_qos.iter().map(|(n, _)| *n));
    let guaranteed: u64 = with_qos.iter().map(|(_, q)| q.guaranteed_kbps).sum();
    let root = HtbClass { minor: ROOT_CLASS, parent: None, rate_kbps: uplink, ceil_kbps: uplink, prio: 0 };
    let default = HtbClass {
        minor: DEFAULT_CLASS,
        parent: Some(ROOT_CLASS),
        rate_kbps: uplink.saturating_sub(guaranteed).max(uplink / 100).max(MIN_RATE_KBPS),
        ceil_kbps: uplink,
        prio: DEFAULT_PRIORITY,
    };
    let mut slices: Vec<SliceClass> = with_qos
        .iter()
        .map(|(name, q)| {
            let rate = q.guaranteed_kbps.max(MIN_RATE_KBPS);
            SliceClass {
                slice: (*name).to_owned(),
                class: HtbClass {
                    minor: minors[*name],
                    parent: Some(ROOT_CLASS),
                    rate_kbps: rate,
                    ceil_kbps: q.ceiling_kbps.unwrap_or(uplink).min(uplink).max(rate),
                    prio: q.priority,
                },
                gateway_port: q.gateway_port,
            }
        })
        .collect();
    slices.sort_by_key(|s| s.class.minor);
    Some(Tree { uplink_kbps: uplink, classes: vec![root, default], slices })
}

impl Tree {
    /// Every class: root, default, then the slices'.
    pub fn all_classes(&self) -> impl Iterator<Item = &HtbClass> {
        self.classes.iter().chain(self.slices.iter().map(|s| &s.class))
    }
}

fn same(have: &HtbClass, want: &HtbClass) -> bool {
    have.parent == want.parent
        && rate_matches(have.rate_kbps, want.rate_kbps)
        && rate_matches(have.ceil_kbps, want.ceil_kbps)
        // HTB prints no prio for inner classes.
        && (want.minor == ROOT_CLASS || have.prio == want.prio)
}

/// The changes that turn `observed` into `tree` (`None`: no tree) with leaf qdiscs of `leaf`.
/// Deletions first (they free bandwidth), then the root, then the other classes.
#[must_use]
pub fn plan(tree: Option<&Tree>, observed: &TcState, leaf: &str) -> Vec<TcChange> {
    let Some(tree) = tree else {
        return if observed.is_ours() { vec![TcChange::DeleteRoot] } else { Vec::new() };
    };
    let mut changes = Vec::new();
    let fresh = !observed.is_ours() || observed.default_minor != Some(DEFAULT_CLASS);
    if fresh {
        changes.push(TcChange::ReplaceRoot { default_minor: DEFAULT_CLASS });
    } else {
        for gone in observed.classes.iter().filter(|c| !tree.all_classes().any(|w| w.minor == c.minor)) {
            changes.push(TcChange::DeleteClass { minor: gone.minor });
        }
    }
    for want in tree.all_classes() {
        let have = if fresh { None } else { observed.classes.iter().find(|c| c.minor == want.minor) };
        match have {
            None => changes.push(TcChange::AddClass(want.clone())),
            Some(have) if !same(have, want) => changes.push(TcChange::ChangeClass(want.clone())),
            Some(_) => {}
        }
        let has_leaf = !fresh && observed.leaves.iter().any(|(m, k)| *m == want.minor && k == leaf);
        if want.minor != ROOT_CLASS && !has_leaf {
            changes.push(TcChange::ReplaceLeaf { minor: want.minor, kind: leaf.to_owned() });
        }
    }
    changes
}

/// The objects of [`TABLE`] for `tree` on `dev`, in the form `nft -j list table` prints them:
/// one postrouting chain (after forwarding, which sets the priority from the TOS byte) with a
/// rule per slice: leaving through `dev` from the slice's gateway port → its class.
#[must_use]
pub fn table(tree: &Tree, dev: &str) -> Vec<Value> {
    let (family, name) = (TABLE.family, TABLE.name);
    let mut objects = vec![
        TABLE.object(),
        json!({"chain": {"family": family, "table": name, "name": "classify",
            "type": "filter", "hook": "postrouting", "prio": 0, "policy": "accept"}}),
    ];
    for s in &tree.slices {
        objects.push(json!({"rule": {"family": family, "table": name, "chain": "classify",
            "comment": format!("slice {}", s.slice),
            "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": dev}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "sport"}}, "right": s.gateway_port}},
                {"mangle": {"key": {"meta": {"key": "priority"}}, "value": format!("{MAJOR:x}:{:x}", s.class.minor)}},
            ]}}));
    }
    objects
}

/// The node's nftables table [`TABLE`]: listed, replaced whole, deleted.
pub trait QosTable {
    /// # Errors
    /// When nft fails.
    fn list(&mut self) -> Result<Option<Vec<Value>>, dataplane::Error>;
    /// # Errors
    /// When nft refuses the table (the one in force stays).
    fn replace(&mut self, objects: &[Value]) -> Result<(), dataplane::Error>;
    /// # Errors
    /// When nft fails.
    fn delete(&mut self) -> Result<(), dataplane::Error>;
}

/// [`TABLE`] in a namespace, through `nft`.
pub struct NftQosTable(pub dataplane::Netns);

impl QosTable for NftQosTable {
    fn list(&mut self) -> Result<Option<Vec<Value>>, dataplane::Error> {
        dataplane::nft::list_table(&self.0, TABLE)
    }
    fn replace(&mut self, objects: &[Value]) -> Result<(), dataplane::Error> {
        dataplane::nft::replace_table(&self.0, TABLE, objects)
    }
    fn delete(&mut self) -> Result<(), dataplane::Error> {
        dataplane::nft::delete_table(&self.0, TABLE)
    }
}

/// What one QoS pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QosOutcome {
    /// The uplink device, when there is a tree.
    pub device: Option<String>,
    /// The leaf qdisc in use, when there is a tree.
    pub leaf: Option<String>,
    pub tc: Vec<TcChange>,
    /// Whether the table was written or deleted.
    pub table_changed: bool,
}

/// Brings the uplink's tree and the classifying table in line with `config`.
///
/// # Errors
/// [`NodeAgentError::Apply`] naming the step that failed.
pub fn reconcile<T: TcOps, N: QosTable>(
    config: &NodeAgentConfig,
    tc: &mut T,
    nft: &mut N,
) -> Result<QosOutcome, NodeAgentError> {
    let step = |what: String| move |source| NodeAgentError::Apply { what, source };
    let tree = desired(config);
    let device = tc
        .device_with_address(config.underlay_address)
        .map_err(step(format!("finding the device of {}", config.underlay_address)))?;
    let Some(device) = device else {
        if tree.is_some() {
            return Err(NodeAgentError::Waiting(format!(
                "QoS: no device holds the underlay address {}",
                config.underlay_address
            )));
        }
        return Ok(QosOutcome::default());
    };
    let observed = tc.observe(&device).map_err(step(format!("reading the QoS tree on {device}")))?;
    let mut outcome = QosOutcome::default();
    if tree.is_none() && !observed.is_ours() {
        // Nothing wanted, nothing of ours (the table goes before the tree, so it is gone too):
        // a node without QoS never runs nft for it.
        return Ok(outcome);
    }
    let listed = nft.list().map_err(step(format!("listing {TABLE}")))?;
    match &tree {
        Some(tree) => {
            let leaf = tc.leaf_kind().map_err(step("probing leaf qdiscs".into()))?;
            outcome.tc = plan(Some(tree), &observed, &leaf);
            tc.apply(&device, &outcome.tc).map_err(step(format!("changing the QoS tree on {device}")))?;
            let want = table(tree, &device);
            if listed.as_ref() != Some(&want) {
                nft.replace(&want).map_err(step(format!("replacing {TABLE}")))?;
                outcome.table_changed = true;
            }
            outcome.device = Some(device);
            outcome.leaf = Some(leaf);
        }
        None => {
            // Classification first, so nothing points at a class that is going.
            if listed.is_some() {
                nft.delete().map_err(step(format!("deleting {TABLE}")))?;
                outcome.table_changed = true;
            }
            outcome.tc = plan(None, &observed, "");
            tc.apply(&device, &outcome.tc).map_err(step(format!("removing the QoS tree on {device}")))?;
        }
    }
    if !outcome.tc.is_empty() || outcome.table_changed {
        tracing::info!(device = ?outcome.device, leaf = ?outcome.leaf, changes = outcome.tc.len(), "QoS tree reconciled");
    }
    Ok(outcome)
}

/// What [`STATUS_FILE`] holds: the tree in force, for `slicectl status` and people.
#[must_use]
pub fn status(tree: Option<&Tree>, outcome: &QosOutcome) -> Value {
    let Some(tree) = tree else { return json!({"enabled": false}) };
    json!({
        "enabled": true,
        "device": outcome.device,
        "leafQdisc": outcome.leaf,
        "uplinkKbps": tree.uplink_kbps,
        "defaultClass": format!("{MAJOR:x}:{DEFAULT_CLASS:x}"),
        "slices": tree.slices.iter().map(|s| json!({
            "slice": s.slice, "class": format!("{MAJOR:x}:{:x}", s.class.minor), "gatewayPort": s.gateway_port,
            "rateKbps": s.class.rate_kbps, "ceilKbps": s.class.ceil_kbps, "prio": s.class.prio,
        })).collect::<Vec<_>>(),
    })
}

/// Writes [`STATUS_FILE`] under `state_dir` (temp file + rename).
///
/// # Errors
/// When it cannot be written.
pub fn write_status(state_dir: &Path, status: &Value) -> std::io::Result<()> {
    let path = state_dir.join(STATUS_FILE);
    let dir = path.parent().expect("STATUS_FILE has a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".tmp-tree.json");
    std::fs::write(&tmp, serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
