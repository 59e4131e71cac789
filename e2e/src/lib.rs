//! slicenet's lab: whole Kubernetes-like clusters built from network namespaces on one machine.
//!
//! A [`Lab`] owns clusters ([`Cluster`]); a cluster is an underlay namespace holding a bridge plus
//! one namespace per [`Node`]. Every node runs its own containerd (own root, state, socket and CNI
//! configuration, started inside the node's namespace with `nsenter --net`), and pods are real CRI
//! pod sandboxes created through containerd's CRI exactly as a kubelet creates them (see
//! [`Node::run_pod`]). Node agents run as real `slice-operator node-agent` processes.
//! [`Lab::add_wan`] adds a shared WAN namespace and puts every cluster behind an edge namespace
//! (masquerade, port forwards, behind-NAT clusters, WAN loss and delay; see [`wan`]).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let mut lab = e2e::Lab::new("sn3ax")?;
//! lab.add_cluster("c1", 2)?;
//! let pod = lab.node("c1", "n1").run_pod(e2e::PodSpec::new("shop", "web"))?;
//! let out = pod.exec(&["ip", "addr"])?;
//! # let _ = out; Ok(()) }
//! ```
//!
//! # Binaries
//! `slice-cni` and `slice-operator` are taken from the directory named by the environment
//! variable `SLICENET_BIN_DIR` when it is set; otherwise from the cargo target directory of the
//! running test executable (`target/debug/deps/<test>` → `target/debug`). Build them first
//! (`cargo build --bins`); [`bin_dir`] tells where they are looked up.
//!
//! # Blocking API
//! Everything here blocks; the CRI client runs on a small tokio runtime owned by the [`Lab`]. Call
//! it from ordinary `#[test]` functions, not from inside an async runtime (use `spawn_blocking`
//! there).
//!
//! # Cleanup
//! Dropping a [`Lab`] tears it down; [`cleanup`] does the same from what is left on disk and in
//! `/run/netns` after a crash (it is also called by [`Lab::new`] for its prefix).

//! # Wings
//! The library is organised by what it is for, and `slicectl lab` (the CLI), `make demo` and
//! `make bench` use it:
//! - [`topology`]: the lab itself — clusters, nodes with their containerd, pods through the CRI,
//!   probes, node agents, the WAN with its edges, cleanup.
//! - [`control`]: the control plane run in process over a lab (YAML → planner → worker plan →
//!   agents and gateways), the gateways of a slice across clusters, convergence timing.
//! - [`demo`]: `make demo` and `slicectl lab demo|up` — one cluster, across clusters, from YAML.
//! - [`bench`]: `make bench` (`slicenet-bench`).
//!
//! The modules keep their short paths at the crate root (`e2e::wan`, `e2e::gateway`,
//! `e2e::demo_yaml`, …).

pub mod bench;
pub mod control;
pub mod demo;
pub mod topology;

pub use control::{convergence, gateway};
pub use demo::{across as demo_across, dual as demo_dual, yaml as demo_yaml};
pub use topology::{browser, probe, wan};
// The topology's own modules, under their short paths inside this crate.
use topology::{agent, cleanup, cmd, containerd, cri, lab, netns, pause, pod};

use std::path::PathBuf;

pub use agent::LabSlice;
pub use cleanup::cleanup;
pub use lab::{Cluster, Lab, LabOptions, NODE_LOCAL_DNS, Node};
pub use netns::command_with_resolv_conf;
pub use pause::PAUSE_IMAGE;
pub use pod::{Pod, PodProcess, PodSpec, PodSummary, spawn_in};
pub use wan::{ClusterOptions, WAN_HOST};

/// Where every lab keeps its files: `<LAB_BASE>/<prefix>/`.
pub const LAB_BASE: &str = "/run/slicenet-lab";

/// The directory holding `slice-cni` and `slice-operator`: `$SLICENET_BIN_DIR`, else the cargo
/// target directory of the running executable (`target/debug/deps/x` → `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLICENET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().map(PathBuf::from).unwrap_or(dir) } else { dir }
}

/// Fails unless the process runs as root: the lab needs namespaces, mounts and containerd.
///
/// # Errors
/// When the effective user is not root.
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!("the slicenet lab needs root (network namespaces, mounts, containerd)")
    }
}
