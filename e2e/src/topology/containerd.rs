//! One containerd per lab node: its configuration file, CNI bin/conf dirs, start-up inside the
//! node's namespace, and the pause-image import.
//!
//! Every path containerd would otherwise share with the host or with other lab nodes is moved
//! under the node's directory: root, state, gRPC/ttrpc sockets, runc's state (`Root`), CNI
//! directories, host-local's `dataDir`, and the pods' network namespaces
//! (`netns_mounts_under_state_dir`, so no `cni-*` file of this lab ever lands in `/run/netns`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use serde_json::json;

use crate::{cmd, netns};

/// Reference CNI plugins linked into every node's CNI bin dir.
const REFERENCE_PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];
/// Where Debian's `containernetworking-plugins` installs them.
const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Paths of one node's containerd, all under the node's directory.
#[derive(Debug, Clone)]
pub(crate) struct ContainerdPaths {
    pub(crate) dir: PathBuf,
}

impl ContainerdPaths {
    pub(crate) fn new(node_dir: &Path) -> Self {
        Self { dir: node_dir.join("containerd") }
    }
    pub(crate) fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    pub(crate) fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub(crate) fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub(crate) fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
    pub(crate) fn cni_bin(&self) -> PathBuf {
        self.dir.join("cni-bin")
    }
    pub(crate) fn cni_conf(&self) -> PathBuf {
        self.dir.join("cni-conf")
    }
    pub(crate) fn host_local_dir(&self) -> PathBuf {
        self.dir.join("host-local")
    }
    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
    pub(crate) fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }
}

/// containerd's configuration (format version 2) for one lab node.
pub(crate) fn config_toml(paths: &ContainerdPaths, sandbox_image: &str) -> String {
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        r#"# Written by the slicenet lab (e2e crate).
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{sandbox_image}"
  # Root lacks CAP_SYS_RESOURCE here; without this runc fails with
  # "can't get final child's PID from pipe" (LAB-FACTS.md).
  restrict_oom_score_adj = true
  # Pod namespaces under the node's state dir instead of the shared /run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{runc_root}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
"#,
        root = paths.root().display(),
        state = paths.state().display(),
        socket = paths.socket().display(),
        runc_root = paths.runc_root().display(),
        cni_bin = paths.cni_bin().display(),
        cni_conf = paths.cni_conf().display(),
    )
}

/// The node's conflist: `bridge` + `host-local` (per-node `dataDir`), then optionally
/// `slice-cni` chained after it with the pod-annotations capability.
pub(crate) fn conflist(
    paths: &ContainerdPaths,
    pod_cidrs: &[String],
    slice_cni: Option<(&Path, &Path)>,
) -> serde_json::Value {
    // One host-local range set per family, each with its default route.
    let ranges: Vec<serde_json::Value> = pod_cidrs.iter().map(|c| json!([{ "subnet": c }])).collect();
    let routes: Vec<serde_json::Value> = pod_cidrs
        .iter()
        .map(|c| if c.contains(':') { json!({ "dst": "::/0" }) } else { json!({ "dst": "0.0.0.0/0" }) })
        .collect();
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            // The default /var/lib/cni/networks would be shared by every lab node.
            "dataDir": paths.host_local_dir(),
        },
    })];
    if let Some((state_dir, ipam_dir)) = slice_cni {
        plugins.push(json!({
            "type": "slice-cni",
            "stateDir": state_dir,
            "ipamDir": ipam_dir,
            "capabilities": { (slice_api::names::POD_ANNOTATIONS_CAPABILITY): true },
        }));
    }
    json!({ "cniVersion": "1.0.0", "name": "lab", "plugins": plugins })
}

/// Creates the directories, CNI bin links, conflist and config file of a node's containerd.
pub(crate) fn prepare(
    paths: &ContainerdPaths,
    conflist: &serde_json::Value,
    slice_cni_binary: Option<&Path>,
    sandbox_image: &str,
) -> Result<()> {
    for dir in [paths.dir.clone(), paths.cni_bin(), paths.cni_conf(), paths.host_local_dir()] {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut links: Vec<(PathBuf, PathBuf)> =
        REFERENCE_PLUGINS.iter().map(|p| (Path::new(REFERENCE_PLUGIN_DIR).join(p), paths.cni_bin().join(p))).collect();
    // Linked even when not built yet: it is resolved only when the chain runs it. Not linked
    // when the chain has no slice-cni: the node is then as before an install (the uninstall
    // test installs it with `slicectl cni-install` and checks that it goes).
    if let Some(binary) = slice_cni_binary {
        links.push((binary.to_path_buf(), paths.cni_bin().join("slice-cni")));
    }
    for (target, link) in links {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("cannot link {} → {}", link.display(), target.display()))?;
    }
    let conf = paths.cni_conf().join("10-lab.conflist");
    std::fs::write(&conf, serde_json::to_vec_pretty(conflist)?)
        .with_context(|| format!("cannot write {}", conf.display()))?;
    std::fs::write(paths.config(), config_toml(paths, sandbox_image))
        .with_context(|| format!("cannot write {}", paths.config().display()))?;
    Ok(())
}

/// Starts containerd inside `netns` (`nsenter --net`, so it sees the host's `/sys` and cgroups),
/// logging to the node's file and recording its PID.
pub(crate) fn start(paths: &ContainerdPaths, netns: &Path) -> Result<Child> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(paths.log())
        .with_context(|| format!("cannot open {}", paths.log().display()))?;
    let mut command = netns::command(netns, &[Path::new("containerd"), Path::new("--config"), &paths.config()]);
    command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let child = command.spawn().with_context(|| format!("cannot start `{}`", cmd::describe(&command)))?;
    // nsenter without --pid execs in place: this PID is containerd's.
    std::fs::write(paths.pid_file(), child.id().to_string())
        .with_context(|| format!("cannot write {}", paths.pid_file().display()))?;
    Ok(child)
}

/// Imports an OCI archive into the `k8s.io` namespace (where the CRI plugin looks).
pub(crate) fn import_image(paths: &ContainerdPaths, archive: &Path) -> Result<()> {
    cmd::run(
        Command::new("ctr")
            .arg("--address")
            .arg(paths.socket())
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive),
    )?;
    Ok(())
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_chains_slice_cni_only_when_asked() {
        let paths = ContainerdPaths::new(Path::new("/lab/c1/n1"));
        let plain = conflist(&paths, &["10.244.1.0/24".into()], None);
        assert_eq!(plain["cniVersion"], "1.0.0");
        assert_eq!(plain["plugins"].as_array().unwrap().len(), 1);
        assert_eq!(plain["plugins"][0]["ipam"]["dataDir"], "/lab/c1/n1/containerd/host-local");
        let chained = conflist(&paths, &["10.244.1.0/24".into()], Some((Path::new("/s"), Path::new("/i"))));
        let dual = conflist(&paths, &["10.244.1.0/24".into(), "fd44:0:0:1::/64".into()], None);
        assert_eq!(dual["plugins"][0]["ipam"]["ranges"][1][0]["subnet"], "fd44:0:0:1::/64");
        assert_eq!(dual["plugins"][0]["ipam"]["routes"][1]["dst"], "::/0");
        let slice = &chained["plugins"][1];
        assert_eq!(slice["type"], "slice-cni");
        assert_eq!(slice["stateDir"], "/s");
        assert_eq!(slice["ipamDir"], "/i");
        assert_eq!(slice["capabilities"]["io.kubernetes.cri.pod-annotations"], true);
        let toml = config_toml(&paths, "x/pause:1");
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains(r#"sandbox_image = "x/pause:1""#));
    }
}
