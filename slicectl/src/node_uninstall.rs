//! `slicectl node-uninstall`: removes everything slicenet made on one node, run in the node's
//! network namespace (the cleanup DaemonSet of `slicectl uninstall worker` runs it on every node
//! after the node agents are gone; in the lab, the node's namespace).
//!
//! What goes, in this order:
//! 1. slice-cni's conflist (`00-slicenet.conflist`, which `cni-install` wrote beside the primary
//!    CNI's, never editing it) and a temporary file of a crashed install, so that the runtime
//!    stops calling slice-cni before anything else goes; the primary conflist is what the node
//!    had before the install, byte for byte.
//! 2. The `slice-cni` binary in the CNI bin dir.
//! 3. The node agent's state: node-state files, then the router namespaces (with them their
//!    VXLAN devices, routes, neighbour and FDB entries, the nftables table `inet slicenet` and the
//!    host ends of the pods' `slice0` veths), and VXLAN devices of ours stranded in the node
//!    namespace — the node agent's own removal steps ([`slice_node::plan::plan`] of an empty
//!    configuration).
//! 4. QoS on the uplink: the nftables table `inet slicenet_qos` first (nothing classifies into a
//!    class that is going), then slicenet's HTB tree (root `5c:`) on every device that has one.
//! 5. The state dir, slice-cni's IPAM dir and the network-status dir (emptied, and kept, where
//!    one is a mount point: the cleanup pod's volumes).
//!
//! Every step is observed first ([`plan`]) and skipped when its object is already gone, so a
//! second run, or a run after a crashed one, finishes what is left and then finds nothing. A
//! failing step does not stop the others; all failures are reported together.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use dataplane::tc::{Tc, TcChange, TcOps as _};
use dataplane::{Kernel, Netlink, Netns};
use slice_api::node::NodeAgentConfig;
use slice_node::qos::{NftQosTable, QosTable as _};

use crate::cni_install::{CONFLIST_NAME, PLUGIN_TYPE};

/// Where slicenet's files and namespaces are on the node (the node agent's and slice-cni's
/// settings; the defaults are theirs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub state_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub status_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub router_netns_prefix: String,
}

impl Default for NodeLayout {
    fn default() -> Self {
        use slice_api::names::{
            DEFAULT_IPAM_DIR, DEFAULT_NETNS_DIR, DEFAULT_ROUTER_NETNS_PREFIX, DEFAULT_STATE_DIR, DEFAULT_STATUS_DIR,
        };
        Self {
            cni_bin_dir: "/opt/cni/bin".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            ipam_dir: DEFAULT_IPAM_DIR.into(),
            status_dir: DEFAULT_STATUS_DIR.into(),
            netns_dir: DEFAULT_NETNS_DIR.into(),
            router_netns_prefix: DEFAULT_ROUTER_NETNS_PREFIX.into(),
        }
    }
}

impl NodeLayout {
    /// The node agent configuration with no slices: the agent's plan for it removes every
    /// slice's router (the underlay address is not used by removals).
    fn empty_agent_config(&self) -> NodeAgentConfig {
        NodeAgentConfig {
            node: "uninstall".into(),
            underlay_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            underlay_mtu: 1500,
            state_dir: self.state_dir.clone(),
            netns_dir: self.netns_dir.clone(),
            router_netns_prefix: self.router_netns_prefix.clone(),
            vxlan_port: slice_api::names::DEFAULT_VXLAN_PORT,
            slices: Vec::new(),
        }
    }
}

/// One thing [`uninstall`] removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A file of ours in the CNI dirs (our conflist, the plugin binary, a temporary file).
    File(PathBuf),
    /// A node agent removal step (state file, router namespace, stranded VXLAN).
    Router(slice_node::Action),
    /// The nftables table `inet slicenet_qos` of the node namespace.
    QosTable,
    /// slicenet's HTB tree on a device's egress.
    QosTree { device: String },
    /// A directory of ours, with what is in it.
    Dir(PathBuf),
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removal::File(p) => write!(f, "remove file {}", p.display()),
            Removal::Router(a) => write!(f, "{a}"),
            Removal::QosTable => write!(f, "delete nftables table inet slicenet_qos"),
            Removal::QosTree { device } => {
                write!(f, "delete the HTB tree {:x}: (QoS classes) on {device}", dataplane::tc::MAJOR)
            }
            Removal::Dir(p) => write!(f, "remove dir {}", p.display()),
        }
    }
}

/// True when `path` holds a conflist with a slice-cni entry (ours to remove).
fn is_our_conflist(path: &Path) -> bool {
    let Ok(text) = std::fs::read(path) else { return false };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&text) else { return false };
    value["plugins"].as_array().is_some_and(|p| p.iter().any(|p| p["type"] == PLUGIN_TYPE))
}

/// What is left on this node (the calling thread's network namespace), in removal order.
///
/// # Errors
/// When a directory or the kernel's state cannot be read.
pub fn plan(layout: &NodeLayout) -> Result<Vec<Removal>> {
    let mut out = Vec::new();
    let conflist = layout.cni_conf_dir.join(CONFLIST_NAME);
    if is_our_conflist(&conflist) {
        out.push(Removal::File(conflist));
    }
    for file in [
        layout.cni_conf_dir.join(format!(".{CONFLIST_NAME}.tmp")),
        layout.cni_bin_dir.join(PLUGIN_TYPE),
        layout.cni_bin_dir.join(format!(".{PLUGIN_TYPE}.tmp")),
    ] {
        if file.symlink_metadata().is_ok() {
            out.push(Removal::File(file));
        }
    }

    let config = layout.empty_agent_config();
    let mut node = Netlink::new().context("opening netlink in the node namespace")?;
    let (observed, unobservable) =
        slice_node::router::observe(&config, &mut Kernel, &mut node).context("reading the node's slice routers")?;
    if let Some((slice, e)) = unobservable.first() {
        bail!("slice {slice}: {}", slice_api::error_chain::chain(e));
    }
    out.extend(slice_node::plan::plan(&config, &observed).into_iter().map(Removal::Router));

    let ns = || Netns::current().context("opening the node namespace");
    if NftQosTable(ns()?).list().context("listing inet slicenet_qos")?.is_some() {
        out.push(Removal::QosTable);
    }
    let mut tc = Tc::new(ns()?);
    for device in link_names()? {
        if tc.observe(&device).with_context(|| format!("reading the qdiscs of {device}"))?.is_ours() {
            out.push(Removal::QosTree { device });
        }
    }

    for dir in [&layout.state_dir, &layout.ipam_dir, &layout.status_dir] {
        // A mount point (the cleanup pod's volumes) cannot go; it is emptied. Empty, it is done.
        let left = if is_mount_point(dir) { !is_empty_dir(dir) } else { dir.symlink_metadata().is_ok() };
        if left {
            out.push(Removal::Dir(dir.clone()));
        }
    }
    Ok(out)
}

/// True when `path` is a mount point in this process's mount namespace (`/proc/self/mountinfo`'s
/// fifth field, with its octal escapes).
#[must_use]
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let Ok(path) = path.canonicalize() else { return false };
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|p| Path::new(&unescape_mountinfo(p)) == path)
}

fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Removes what is in `dir`, and `dir` itself unless it is a mount point.
fn remove_dir(dir: &Path) -> std::io::Result<()> {
    if !is_mount_point(dir) {
        return std::fs::remove_dir_all(dir);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.symlink_metadata()?.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
    }
    Ok(())
}

/// The names of the links of the calling thread's namespace.
fn link_names() -> Result<Vec<String>> {
    let out = std::process::Command::new("ip").args(["-j", "link", "show"]).output().context("running ip link")?;
    if !out.status.success() {
        bail!("ip link: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing ip -j link")?;
    Ok(links.as_array().into_iter().flatten().filter_map(|l| l["ifname"].as_str().map(str::to_owned)).collect())
}

/// Makes one removal (in the calling thread's namespace). Gone already is success.
///
/// # Errors
/// When the removal fails.
pub fn remove(layout: &NodeLayout, removal: &Removal) -> Result<()> {
    let gone_ok = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    match removal {
        Removal::File(path) => {
            gone_ok(std::fs::remove_file(path)).with_context(|| format!("removing {}", path.display()))
        }
        Removal::Router(action) => {
            let config = layout.empty_agent_config();
            let mut node = Netlink::new().context("opening netlink in the node namespace")?;
            let failures = slice_node::router::apply(&config, &mut Kernel, &mut node, std::slice::from_ref(action));
            match failures.into_iter().next() {
                None => Ok(()),
                Some((_, what, e)) => bail!("{what}: {}", slice_api::error_chain::chain(&e)),
            }
        }
        Removal::QosTable => {
            let ns = Netns::current().context("opening the node namespace")?;
            NftQosTable(ns).delete().context("deleting inet slicenet_qos")
        }
        Removal::QosTree { device } => {
            let mut tc = Tc::new(Netns::current().context("opening the node namespace")?);
            // Checked again: only our own tree goes, never a root qdisc someone put there since.
            if tc.observe(device)?.is_ours() {
                tc.apply(device, &[TcChange::DeleteRoot])?;
            }
            Ok(())
        }
        Removal::Dir(path) => gone_ok(remove_dir(path)).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes everything [`plan`] finds (or with `dry_run`, only lists it); returns the list.
///
/// # Errors
/// When the node cannot be read, or naming every removal that failed (the others are made).
pub fn uninstall(layout: &NodeLayout, dry_run: bool) -> Result<Vec<Removal>> {
    let removals = plan(layout)?;
    if dry_run {
        return Ok(removals);
    }
    let failures: Vec<String> =
        removals.iter().filter_map(|r| remove(layout, r).err().map(|e| format!("{r}: {e:#}"))).collect();
    if !failures.is_empty() {
        bail!("{} of {} removals failed: {}", failures.len(), removals.len(), failures.join("; "));
    }
    Ok(removals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_conflist_with_slice_cni_is_ours() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("ours.conflist");
        std::fs::write(&ours, r#"{"name":"k","plugins":[{"type":"ptp"},{"type":"slice-cni"}]}"#).unwrap();
        let theirs = dir.path().join("theirs.conflist");
        std::fs::write(&theirs, r#"{"name":"k","plugins":[{"type":"ptp"}]}"#).unwrap();
        let broken = dir.path().join("broken.conflist");
        std::fs::write(&broken, "{").unwrap();
        assert!(is_our_conflist(&ours));
        assert!(!is_our_conflist(&theirs));
        assert!(!is_our_conflist(&broken));
        assert!(!is_our_conflist(&dir.path().join("none")));
    }

    #[test]
    fn mount_points_are_read_from_mountinfo() {
        assert!(is_mount_point(Path::new("/")));
        assert!(is_mount_point(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()));
        assert!(!is_mount_point(&dir.path().join("none")));
        assert_eq!(unescape_mountinfo("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape_mountinfo("/odd\\x"), "/odd\\x");
    }

    #[test]
    fn removals_say_what_goes() {
        assert_eq!(Removal::File("/opt/cni/bin/slice-cni".into()).to_string(), "remove file /opt/cni/bin/slice-cni");
        assert_eq!(
            Removal::QosTree { device: "eth0".into() }.to_string(),
            "delete the HTB tree 5c: (QoS classes) on eth0"
        );
        assert_eq!(Removal::Dir("/run/slicenet".into()).to_string(), "remove dir /run/slicenet");
    }
}
