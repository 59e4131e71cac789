//! Traffic control: one HTB tree on a device's egress, through the `tc` binary (iproute2) run in
//! a network namespace, read back and changed class by class ([`TcOps`]; the kernel in [`Tc`],
//! an in-memory model in [`FakeTc`] that the node agent's QoS plans are tested against).
//!
//! The tree slicenet owns has the root qdisc handle [`MAJOR`]`:` — a handle nothing else uses, so
//! that the agent recognises (and removes) only its own tree. Classes are `MAJOR:minor`; each leaf
//! class gets a leaf qdisc `minor:`. Packets are put into a class by `skb->priority` (HTB selects
//! the class whose id equals the priority), set by nftables `meta priority set MAJOR:minor`, so no
//! tc filter is needed (this kernel has only the u32 and bpf classifiers: LAB-FACTS.md).
//!
//! `tc -j class show` prints no JSON for HTB classes in iproute2 6.1, so classes are read from
//! the text form; its rates are rounded for display (`12.35Mbit`), so a rate read back equals a
//! wanted one within [`RATE_TOLERANCE`].

use std::net::IpAddr;
use std::process::Command;

use crate::{Error, Netns, Result};

/// The root qdisc's major number (`5c:`, "slicenet").
pub const MAJOR: u16 = 0x5c;
/// The `tc` binary, from `PATH` (Debian's `iproute2`).
pub const TC: &str = "tc";
/// Relative difference under which a rate read back counts as the rate wanted (display
/// rounding of `tc`, at most 3 significant digits after the unit change).
pub const RATE_TOLERANCE: f64 = 0.005;
/// HTB quantum (bytes a class sends per round when it borrows): one full-size frame, so that
/// classes of the same priority share borrowed bandwidth evenly whatever their rates.
pub const QUANTUM: u32 = 1514;

/// Leaf qdiscs, best first: the agent uses the first the kernel has (this kernel has only pfifo
/// and bfifo of these, LAB-FACTS.md).
pub const LEAF_KINDS: [&str; 3] = ["fq_codel", "sfq", "pfifo"];

/// An HTB class of the tree (`MAJOR:minor`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HtbClass {
    pub minor: u16,
    /// The parent class's minor; `None`: the root qdisc itself.
    pub parent: Option<u16>,
    pub rate_kbps: u64,
    pub ceil_kbps: u64,
    /// 0 (first) to 7; inner classes have none (HTB ignores it there).
    pub prio: u8,
}

/// What a device's egress holds, as far as the tree is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcState {
    /// The root qdisc: kind and handle major (`None`: the kernel's default root).
    pub root: Option<(String, u16)>,
    /// HTB's `default` minor, when the root is HTB.
    pub default_minor: Option<u16>,
    /// Classes of the root (when it is HTB), in any order.
    pub classes: Vec<HtbClass>,
    /// Leaf qdiscs: the class minor they hang from and their kind.
    pub leaves: Vec<(u16, String)>,
}

impl TcState {
    /// True when the root is slicenet's tree.
    #[must_use]
    pub fn is_ours(&self) -> bool {
        matches!(&self.root, Some((kind, major)) if kind == "htb" && *major == MAJOR)
    }
}

/// One change to the tree, in the order they are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcChange {
    /// Replace the root qdisc by an empty HTB `MAJOR:` with this default minor (drops every
    /// class there was).
    ReplaceRoot {
        default_minor: u16,
    },
    /// Remove the root qdisc (the kernel's default comes back).
    DeleteRoot,
    AddClass(HtbClass),
    /// Change rate, ceil, prio in place (the class and its queue stay: no packet is lost).
    ChangeClass(HtbClass),
    /// Remove a leaf class (and its leaf qdisc).
    DeleteClass {
        minor: u16,
    },
    /// Put a leaf qdisc of `kind` under class `minor` (replacing one there).
    ReplaceLeaf {
        minor: u16,
        kind: String,
    },
}

impl TcChange {
    /// The `tc` arguments that make this change on `dev`.
    #[must_use]
    pub fn args(&self, dev: &str) -> Vec<String> {
        let id = |minor: u16| format!("{MAJOR:x}:{minor:x}");
        let class = |verb: &str, c: &HtbClass| {
            let parent = c.parent.map_or_else(|| format!("{MAJOR:x}:"), id);
            let mut a = vec!["class", verb, "dev", dev, "parent", &parent, "classid", &id(c.minor), "htb"]
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            a.extend(["rate".into(), format!("{}kbit", c.rate_kbps), "ceil".into(), format!("{}kbit", c.ceil_kbps)]);
            a.extend(["prio".into(), c.prio.to_string(), "quantum".into(), QUANTUM.to_string()]);
            a
        };
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self {
            TcChange::ReplaceRoot { default_minor } => {
                let handle = format!("{MAJOR:x}:");
                let default = format!("{default_minor:x}");
                own(&["qdisc", "replace", "dev", dev, "root", "handle", &handle, "htb", "default", &default])
            }
            TcChange::DeleteRoot => own(&["qdisc", "del", "dev", dev, "root"]),
            TcChange::AddClass(c) => class("add", c),
            TcChange::ChangeClass(c) => class("change", c),
            TcChange::DeleteClass { minor } => own(&["class", "del", "dev", dev, "classid", &id(*minor)]),
            TcChange::ReplaceLeaf { minor, kind } => {
                own(&["qdisc", "replace", "dev", dev, "parent", &id(*minor), "handle", &format!("{minor:x}:"), kind])
            }
        }
    }
}

/// True when `have` is `want` as `tc` displays it.
#[must_use]
pub fn rate_matches(have_kbps: u64, want_kbps: u64) -> bool {
    let (h, w) = (have_kbps as f64, want_kbps as f64);
    (h - w).abs() <= w * RATE_TOLERANCE + 1.0
}

/// The traffic control a caller needs, in one namespace.
pub trait TcOps {
    /// What `dev`'s egress holds.
    ///
    /// # Errors
    /// When `tc` fails or prints what cannot be read.
    fn observe(&mut self, dev: &str) -> Result<TcState>;
    /// Makes `changes` in order; stops at the first failure.
    ///
    /// # Errors
    /// `tc`'s own message for the change that failed.
    fn apply(&mut self, dev: &str, changes: &[TcChange]) -> Result<()>;
    /// The best of [`LEAF_KINDS`] the kernel has.
    ///
    /// # Errors
    /// When none works.
    fn leaf_kind(&mut self) -> Result<String>;
    /// The device that holds `addr`, if any.
    ///
    /// # Errors
    /// When the addresses cannot be listed.
    fn device_with_address(&mut self, addr: IpAddr) -> Result<Option<String>>;
}

/// `tc` in a namespace.
#[derive(Debug)]
pub struct Tc {
    ns: Netns,
    leaf: Option<String>,
}

impl Tc {
    /// `tc` in `ns`.
    #[must_use]
    pub fn new(ns: Netns) -> Self {
        Self { ns, leaf: None }
    }

    fn run(&self, program: &str, args: &[String], op: &str) -> Result<String> {
        let output = self.ns.run(|| Command::new(program).args(args).env("LC_ALL", "C").output())?;
        let output = output.map_err(|source| Error::Io {
            op: format!("{op}: running {program} in {} (is iproute2 installed?)", self.ns.describe()),
            source,
        })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            Err(Error::Other {
                op: format!("{op} in {} ({program} {})", self.ns.describe(), args.join(" ")),
                message: stderr,
            })
        }
    }
}

impl TcOps for Tc {
    fn observe(&mut self, dev: &str) -> Result<TcState> {
        let args = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let qdiscs = self.run(TC, &args(&["-j", "qdisc", "show", "dev", dev]), &format!("listing qdiscs of {dev}"))?;
        let mut state = parse_qdiscs(&qdiscs)
            .map_err(|message| Error::Other { op: format!("reading qdiscs of {dev}"), message })?;
        if state.is_ours() {
            let classes = self.run(TC, &args(&["class", "show", "dev", dev]), &format!("listing classes of {dev}"))?;
            state.classes = parse_classes(&classes)
                .map_err(|message| Error::Other { op: format!("reading classes of {dev}"), message })?;
        }
        Ok(state)
    }

    fn apply(&mut self, dev: &str, changes: &[TcChange]) -> Result<()> {
        for change in changes {
            self.run(TC, &change.args(dev), &format!("{change:?} on {dev}"))?;
        }
        Ok(())
    }

    fn leaf_kind(&mut self) -> Result<String> {
        // The kernel's qdiscs do not change while a process runs: probed once per process.
        static PROBED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        if let Some(kind) = &self.leaf {
            return Ok(kind.clone());
        }
        let kind = match PROBED.get() {
            Some(kind) => kind.clone(),
            None => {
                let kind = probe_leaf_kind()?;
                tracing::info!(leaf = %kind, "QoS leaf qdisc (the best of {LEAF_KINDS:?} this kernel has)");
                PROBED.get_or_init(|| kind).clone()
            }
        };
        self.leaf = Some(kind.clone());
        Ok(kind)
    }

    fn device_with_address(&mut self, addr: IpAddr) -> Result<Option<String>> {
        let out = self.run("ip", &["-j".into(), "addr".into(), "show".into()], "listing addresses")?;
        let links: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| Error::Other { op: "listing addresses".into(), message: e.to_string() })?;
        let addr = addr.to_string();
        Ok(links.as_array().into_iter().flatten().find_map(|l| {
            let has = l["addr_info"].as_array().into_iter().flatten().any(|a| a["local"].as_str() == Some(&addr));
            has.then(|| l["ifname"].as_str().map(str::to_owned)).flatten()
        }))
    }
}

/// Which of [`LEAF_KINDS`] the kernel has: each is tried on the loopback of a throwaway network
/// namespace (a qdisc the kernel does not know fails with "Specified qdisc kind is unknown").
///
/// # Errors
/// When the probe namespace cannot be made, or no kind works.
pub fn probe_leaf_kind() -> Result<String> {
    let path = std::path::PathBuf::from(format!("/run/netns/slicenet-qos-probe-{}", std::process::id()));
    let (ns, _) = Netns::ensure_named(&path)?;
    let found = LEAF_KINDS.into_iter().find_map(|kind| {
        let ok = ns.run(|| {
            Command::new(TC)
                .args(["qdisc", "add", "dev", "lo", "root", "handle", "1:", kind])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        match ok {
            Ok(true) => Some(Ok(kind.to_owned())),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    });
    drop(ns);
    Netns::delete_named(&path)?;
    found.unwrap_or_else(|| {
        Err(Error::Other { op: "probing leaf qdiscs".into(), message: format!("none of {LEAF_KINDS:?} works") })
    })
}

fn parse_handle(text: &str) -> Option<(u16, Option<u16>)> {
    let (major, minor) = text.split_once(':')?;
    let major = u16::from_str_radix(major, 16).ok()?;
    let minor = if minor.is_empty() { None } else { Some(u16::from_str_radix(minor, 16).ok()?) };
    Some((major, minor))
}

/// Reads `tc -j qdisc show dev X`.
///
/// # Errors
/// When it is not the JSON `tc` prints.
pub fn parse_qdiscs(json: &str) -> std::result::Result<TcState, String> {
    let list: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("tc printed no JSON: {e}"))?;
    let mut state = TcState::default();
    for q in list.as_array().ok_or("tc printed no list")? {
        let kind = q["kind"].as_str().unwrap_or_default().to_owned();
        let handle = q["handle"].as_str().and_then(parse_handle);
        if q["root"].as_bool() == Some(true) {
            if let Some((major, _)) = handle {
                state.root = Some((kind.clone(), major));
            }
            if kind == "htb" {
                state.default_minor = q["options"]["default"]
                    .as_str()
                    .and_then(|d| u16::from_str_radix(d.trim_start_matches("0x"), 16).ok());
            }
        } else if let Some((MAJOR, Some(minor))) = q["parent"].as_str().and_then(parse_handle) {
            state.leaves.push((minor, kind));
        }
    }
    Ok(state)
}

/// A rate as `tc` prints it (`40Mbit`, `12.5Kbit`, `800bit`), in kbit/s.
fn parse_rate(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "bit" => 0.001,
        "kbit" => 1.0,
        "mbit" => 1e3,
        "gbit" => 1e6,
        "tbit" => 1e9,
        _ => return None,
    };
    Some((number * scale).round() as u64)
}

/// Reads `tc class show dev X` (text: iproute2 prints no JSON for HTB classes).
///
/// # Errors
/// When an HTB class line of the tree cannot be read.
pub fn parse_classes(text: &str) -> std::result::Result<Vec<HtbClass>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("class htb ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
        let bad = || format!("cannot read {line:?}");
        let Some((MAJOR, Some(minor))) = words.get(2).and_then(|h| parse_handle(h)) else { continue };
        let parent = match after("parent").map(parse_handle) {
            Some(Some((MAJOR, Some(p)))) => Some(p),
            Some(_) => return Err(bad()),
            None => None,
        };
        out.push(HtbClass {
            minor,
            parent,
            rate_kbps: after("rate").and_then(parse_rate).ok_or_else(bad)?,
            ceil_kbps: after("ceil").and_then(parse_rate).ok_or_else(bad)?,
            prio: after("prio").and_then(|p| p.parse().ok()).unwrap_or(0),
        });
    }
    Ok(out)
}

/// An in-memory device egress per name that takes [`TcChange`]s as the kernel does (adding an
/// existing class fails, deleting the root drops every class and leaf), records each change,
/// and fails the `fail_at`-th change on demand.
#[derive(Debug, Default)]
pub struct FakeTc {
    pub devices: std::collections::BTreeMap<String, TcState>,
    pub addresses: Vec<(IpAddr, String)>,
    /// Every change applied, with its device.
    pub log: Vec<(String, TcChange)>,
    /// Leaf kind the fake kernel has.
    pub leaf: String,
    /// Fail the change with this index in `log` (counting from 0), once.
    pub fail_at: Option<usize>,
}

impl TcOps for FakeTc {
    fn observe(&mut self, dev: &str) -> Result<TcState> {
        Ok(self.devices.get(dev).cloned().unwrap_or_default())
    }

    fn apply(&mut self, dev: &str, changes: &[TcChange]) -> Result<()> {
        for change in changes {
            if self.fail_at == Some(self.log.len()) {
                self.fail_at = None;
                return Err(Error::Other { op: format!("{change:?} on {dev}"), message: "injected failure".into() });
            }
            self.log.push((dev.to_owned(), change.clone()));
            let state = self.devices.entry(dev.to_owned()).or_default();
            let fail = |m: &str| Err(Error::Other { op: format!("{change:?} on {dev}"), message: m.to_owned() });
            match change {
                TcChange::ReplaceRoot { default_minor } => {
                    *state = TcState {
                        root: Some(("htb".into(), MAJOR)),
                        default_minor: Some(*default_minor),
                        ..TcState::default()
                    };
                }
                TcChange::DeleteRoot => *state = TcState::default(),
                TcChange::AddClass(c) => {
                    if !state.is_ours() || state.classes.iter().any(|x| x.minor == c.minor) {
                        return fail("File exists");
                    }
                    state.classes.push(c.clone());
                }
                TcChange::ChangeClass(c) => match state.classes.iter_mut().find(|x| x.minor == c.minor) {
                    Some(x) => *x = c.clone(),
                    None => return fail("No such file or directory"),
                },
                TcChange::DeleteClass { minor } => {
                    let before = state.classes.len();
                    state.classes.retain(|x| x.minor != *minor);
                    if state.classes.len() == before {
                        return fail("No such file or directory");
                    }
                    state.leaves.retain(|(m, _)| m != minor);
                }
                TcChange::ReplaceLeaf { minor, kind } => {
                    if !state.classes.iter().any(|x| x.minor == *minor) {
                        return fail("No such file or directory");
                    }
                    state.leaves.retain(|(m, _)| m != minor);
                    state.leaves.push((*minor, kind.clone()));
                }
            }
        }
        Ok(())
    }

    fn leaf_kind(&mut self) -> Result<String> {
        Ok(self.leaf.clone())
    }

    fn device_with_address(&mut self, addr: IpAddr) -> Result<Option<String>> {
        Ok(self.addresses.iter().find(|(a, _)| *a == addr).map(|(_, d)| d.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qdiscs_and_classes_read_back() {
        let q = r#"[{"kind":"htb","handle":"5c:","root":true,"refcnt":3,"options":{"r2q":10,"default":"0x2","direct_packets_stat":0}},
                    {"kind":"pfifo","handle":"2:","parent":"5c:2","options":{"limit":1000}}]"#;
        let s = parse_qdiscs(q).unwrap();
        assert!(s.is_ours());
        assert_eq!(s.default_minor, Some(2));
        assert_eq!(s.leaves, [(2, "pfifo".to_owned())]);
        let other = parse_qdiscs(r#"[{"kind":"noqueue","handle":"0:","root":true,"refcnt":2,"options":{}}]"#).unwrap();
        assert!(!other.is_ours());

        let text = "class htb 5c:1 root rate 40Mbit ceil 40Mbit burst 1600b cburst 1600b \n\
                    class htb 5c:2 parent 5c:1 leaf 2: prio 7 rate 10Mbit ceil 40Mbit burst 1600b cburst 1600b \n\
                    class htb 5c:a1 parent 5c:1 leaf a1: prio 2 rate 12.35Mbit ceil 30Mbit burst 1600b cburst 1600b \n";
        let c = parse_classes(text).unwrap();
        assert_eq!(c[0], HtbClass { minor: 1, parent: None, rate_kbps: 40_000, ceil_kbps: 40_000, prio: 0 });
        assert_eq!(c[1], HtbClass { minor: 2, parent: Some(1), rate_kbps: 10_000, ceil_kbps: 40_000, prio: 7 });
        assert_eq!(c[2].minor, 0xa1);
        assert!(rate_matches(c[2].rate_kbps, 12_345) && !rate_matches(c[2].rate_kbps, 12_500));
        assert!(parse_classes("class htb 5c:3 parent 5c:1 rate fast ceil 1Mbit").is_err());
        assert_eq!(parse_rate("800bit"), Some(1));
        assert_eq!(parse_rate("2Gbit"), Some(2_000_000));
    }

    #[test]
    fn changes_render_as_tc_commands() {
        let c = HtbClass { minor: 0x10, parent: Some(1), rate_kbps: 10_000, ceil_kbps: 30_000, prio: 2 };
        assert_eq!(
            TcChange::AddClass(c).args("eth0").join(" "),
            "class add dev eth0 parent 5c:1 classid 5c:10 htb rate 10000kbit ceil 30000kbit prio 2 quantum 1514"
        );
        assert_eq!(
            TcChange::ReplaceRoot { default_minor: 2 }.args("eth0").join(" "),
            "qdisc replace dev eth0 root handle 5c: htb default 2"
        );
        assert_eq!(
            TcChange::ReplaceLeaf { minor: 0x10, kind: "pfifo".into() }.args("eth0").join(" "),
            "qdisc replace dev eth0 parent 5c:10 handle 10: pfifo"
        );
        assert_eq!(TcChange::DeleteClass { minor: 0x10 }.args("eth0").join(" "), "class del dev eth0 classid 5c:10");
    }
}
