//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them) and running commands
//! inside one with `nsenter --net` (never `ip netns exec`, which remounts `/sys` and hides the
//! host's cgroups from containerd and runc).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result};

use crate::cmd;

/// Where `ip netns` keeps named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// Path of a named namespace.
pub(crate) fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates a named namespace with `lo` up.
pub(crate) fn add(name: &str) -> Result<()> {
    cmd::ip(&["netns", "add", name])?;
    cmd::ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// A command that runs `argv` inside the namespace at `netns`.
pub(crate) fn command<S: AsRef<OsStr>>(netns: &Path, argv: &[S]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display()));
    c.args(argv);
    c
}

/// A command that runs `argv` inside the network namespace at `netns` with `resolv_conf`
/// bind-mounted on `/etc/resolv.conf` in a mount namespace of its own (as `ip netns exec` does
/// with `/etc/netns/NAME/resolv.conf`, and as a pod sees the file its kubelet wrote).
pub fn command_with_resolv_conf<S: AsRef<OsStr>>(netns: &Path, resolv_conf: &Path, argv: &[S]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
    c.arg(r#"f=$1; n=$2; shift 2; mount --bind "$f" /etc/resolv.conf && exec nsenter --net="$n" -- "$@""#);
    c.arg("sh").arg(resolv_conf).arg(netns);
    c.args(argv);
    c
}

/// Runs `argv` inside the namespace at `netns` and returns its output whatever the exit status.
pub(crate) fn exec<S: AsRef<OsStr>>(netns: &Path, argv: &[S]) -> Result<Output> {
    cmd::output(&mut command(netns, argv)).with_context(|| format!("cannot run a command in {}", netns.display()))
}

/// Names in `/run/netns` that start with `prefix`.
pub(crate) fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Unmounts a namespace bind mount and removes the file (what `ip netns delete` does). A file
/// that is not mounted is only removed; a missing one is fine.
pub(crate) fn remove_mount_file(path: &Path) -> Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot unmount {}", path.display())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// The (device, inode) identifying the network namespace a file refers to (a netns bind mount
/// or `/proc/PID/ns/net`).
pub(crate) fn ns_id(path: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::stat::stat(path).ok()?;
    // A bind-mounted nsfs file has the nsfs magic device; a plain file does not identify a netns.
    #[allow(clippy::unnecessary_cast)]
    Some((st.st_dev as u64, st.st_ino as u64))
}
