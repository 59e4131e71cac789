//! Teardown that never leaks, usable after a crash: everything is found again from the lab's
//! directory (PID files, sockets), `/run/netns` (by name prefix), `/proc` and
//! `/proc/self/mountinfo`. Every step runs even when an earlier one failed; the errors are
//! collected and reported together.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::containerd::ContainerdPaths;
use crate::cri::CriClient;
use crate::{agent, netns};

/// Tears down everything lab `prefix` made, whether or not a [`crate::Lab`] value still exists:
/// sandboxes (through CRI while containerd lives), agents and containerd (by recorded PID),
/// leftover shims and pod processes of this lab (and only this lab), mounts under the lab root
/// (deepest first), the lab's namespaces in `/run/netns`, its cgroups and its directory.
/// Idempotent: cleaning a lab that does not exist succeeds.
///
/// # Errors
/// Every step that failed, in one message (all steps are attempted).
pub fn cleanup(prefix: &str) -> Result<()> {
    crate::lab::validate_prefix(prefix)?;
    let errors = cleanup_collect(prefix, None);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "cleanup of lab {prefix} had {} error(s):\n  {}",
            errors.len(),
            errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("\n  ")
        ))
    }
}

/// The lab's root directory.
pub(crate) fn lab_root(prefix: &str) -> PathBuf {
    Path::new(crate::LAB_BASE).join(prefix)
}

/// The cgroup parent of this lab's pods (cgroupfs driver).
pub(crate) fn cgroup_parent(prefix: &str) -> String {
    format!("/slicenet-lab/{prefix}")
}

pub(crate) fn cleanup_collect(prefix: &str, rt: Option<Arc<tokio::runtime::Runtime>>) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let root = lab_root(prefix);
    let root_str = format!("{}/", root.display());
    let node_dirs = node_dirs(&root);

    // 0. Processes started in pods (`Pod::spawn`), by recorded PID and start time.
    errors.extend(stop_pod_processes(&root));

    // 1. Sandboxes, through CRI, while containerd still runs (CNI DEL for every pod).
    for dir in &node_dirs {
        let paths = ContainerdPaths::new(dir);
        let pid = read_pid(&paths.pid_file());
        if !paths.socket().exists() || !pid.is_some_and(|p| alive_and_ours(p, &root_str)) {
            continue;
        }
        if let Err(e) = remove_all_sandboxes(&paths, rt.clone()) {
            errors.push(e.context(format!("removing the sandboxes of {}", dir.display())));
        }
    }

    // 2. Agents and containerd, gracefully, by recorded PID (checked against the command line so
    //    a reused PID is never hit).
    let mut pids = Vec::new();
    for dir in &node_dirs {
        for pid_file in [agent::AgentPaths::new(dir).pid_file, ContainerdPaths::new(dir).pid_file()] {
            if let Some(pid) = read_pid(&pid_file).filter(|p| alive_and_ours(*p, &root_str)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                pids.push(pid);
            }
        }
    }
    wait_gone(&pids, Duration::from_secs(10));

    // 3. Anything left that is this lab's: a process inside one of its namespaces (pause, test
    //    servers), or one whose command line, root or cwd lies under the lab root (shims name our
    //    containerd's socket). Nothing else is touched.
    let leftovers = lab_processes(prefix, &root);
    for pid in &leftovers {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let stubborn = wait_gone(&leftovers, Duration::from_secs(5));
    for pid in &stubborn {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let survivors = wait_gone(&stubborn, Duration::from_secs(5));
    if !survivors.is_empty() {
        errors.push(anyhow!("processes of lab {prefix} survived SIGKILL: {survivors:?}"));
    }

    // 4. Mounts under the lab root (overlay rootfs, shm, pod netns), deepest first.
    if let Err(e) = unmount_under(&root) {
        errors.push(e);
    }

    // 5. The lab's named namespaces.
    for name in netns::list_with_prefix(&format!("{prefix}-")) {
        if let Err(e) = netns::remove_mount_file(&netns::path(&name)) {
            errors.push(e);
        }
    }

    // 6. cgroups of the lab's pods (runc removes them on delete; a crash can leave them).
    remove_cgroups(&cgroup_parent(prefix), &mut errors);

    // 7. libcni's result cache (one directory for every containerd on the machine) for the
    //    sandboxes this lab's containerds knew; DEL clears it, a crash may not have.
    for dir in &node_dirs {
        remove_cni_cache(&ContainerdPaths::new(dir), &mut errors);
    }

    // 8. The directory.
    match std::fs::remove_dir_all(&root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(anyhow!("cannot remove {}: {e}", root.display())),
    }
    errors
}

/// Where [`crate::Pod::spawn`] records its processes: one file per PID holding the process's
/// start time (so a reused PID is never hit).
pub(crate) fn pod_process_dir(root: &Path) -> PathBuf {
    root.join("pod-processes")
}

/// The start time of `pid` (field 22 of `/proc/PID/stat`), in clock ticks since boot.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // `rest` starts at field 3 (state); start time is field 22.
    rest.split(' ').nth(19)?.parse().ok()
}

/// Records a process started in a pod; returns the record's path.
pub(crate) fn record_pod_process(root: &Path, pid: i32) -> Result<PathBuf> {
    let dir = pod_process_dir(root);
    std::fs::create_dir_all(&dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    let record = dir.join(pid.to_string());
    let start = start_time(pid).ok_or_else(|| anyhow!("process {pid} is gone"))?;
    std::fs::write(&record, format!("{start}\n")).map_err(|e| anyhow!("cannot write {}: {e}", record.display()))?;
    Ok(record)
}

/// Stops every recorded process of the lab at `root` that is still the same process (SIGTERM,
/// SIGKILL after 5 s) and removes the records.
pub(crate) fn stop_pod_processes(root: &Path) -> Vec<anyhow::Error> {
    let mut errors = Vec::new();
    let dir = pod_process_dir(root);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return errors;
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let recorded = std::fs::read_to_string(entry.path()).ok().and_then(|s| s.trim().parse::<u64>().ok());
        if recorded.is_some() && recorded == start_time(pid) && alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            pids.push(pid);
        }
        let _ = std::fs::remove_file(entry.path());
    }
    let stubborn = wait_gone(&pids, Duration::from_secs(5));
    for pid in &stubborn {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let survivors = wait_gone(&stubborn, Duration::from_secs(5));
    if !survivors.is_empty() {
        errors.push(anyhow!("pod processes survived SIGKILL: {survivors:?}"));
    }
    errors
}

/// libcni's default cache directory (containerd 1.6 does not make it configurable).
const CNI_CACHE_DIR: &str = "/var/lib/cni/results";

/// Removes `CNI_CACHE_DIR/<network>-<sandbox id>-<ifname>` for every sandbox in containerd's
/// CRI metadata of this node.
fn remove_cni_cache(paths: &ContainerdPaths, errors: &mut Vec<anyhow::Error>) {
    let sandboxes = paths.root().join("io.containerd.grpc.v1.cri").join("sandboxes");
    let Ok(ids) = std::fs::read_dir(&sandboxes) else {
        return;
    };
    let ids: Vec<String> = ids.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    if ids.is_empty() {
        return;
    }
    let Ok(cached) = std::fs::read_dir(CNI_CACHE_DIR) else {
        return;
    };
    for entry in cached.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.contains(&format!("-{id}-")))
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            errors.push(anyhow!("cannot remove {}: {e}", entry.path().display()));
        }
    }
}

/// `ROOT/<cluster>/<node>` directories that hold a node (a `containerd` dir).
pub(crate) fn node_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(clusters) = std::fs::read_dir(root) else {
        return out;
    };
    for cluster in clusters.flatten() {
        let Ok(nodes) = std::fs::read_dir(cluster.path()) else {
            continue;
        };
        for node in nodes.flatten() {
            if node.path().join("containerd").is_dir() {
                out.push(node.path());
            }
        }
    }
    out.sort();
    out
}

fn remove_all_sandboxes(paths: &ContainerdPaths, rt: Option<Arc<tokio::runtime::Runtime>>) -> Result<()> {
    let rt = match rt {
        Some(rt) => rt,
        None => Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?),
    };
    let cri = CriClient::new(rt, &paths.socket())?;
    let mut errors = Vec::new();
    for sandbox in cri.list_pod_sandboxes(Duration::from_secs(10))? {
        if let Err(e) = cri.stop_pod_sandbox(&sandbox.id).and_then(|()| cri.remove_pod_sandbox(&sandbox.id)) {
            errors.push(format!("{}: {e:#}", sandbox.id));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(anyhow!("{}", errors.join("; "))) }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Alive (not a zombie) and its command line mentions the lab root.
fn alive_and_ours(pid: i32, root_str: &str) -> bool {
    alive(pid) && cmdline(pid).contains(root_str)
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // State is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Waits until every pid is gone (or a zombie); returns those still alive at the deadline.
fn wait_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// PIDs that belong to this lab (see step 3 of [`cleanup`]).
pub(crate) fn lab_processes(prefix: &str, root: &Path) -> Vec<i32> {
    let root_str = format!("{}/", root.display());
    let mut lab_netns: HashSet<(u64, u64)> = HashSet::new();
    for name in netns::list_with_prefix(&format!("{prefix}-")) {
        lab_netns.extend(netns::ns_id(&netns::path(&name)));
    }
    for mount in mounts_under(root) {
        if mount.fs_type == "nsfs" {
            lab_netns.extend(netns::ns_id(&mount.point));
        }
    }
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || !alive(pid) {
            continue;
        }
        let in_lab_netns = netns::ns_id(&entry.path().join("ns/net")).is_some_and(|id| lab_netns.contains(&id));
        let under_root = |link: &str| {
            std::fs::read_link(entry.path().join(link))
                .is_ok_and(|p| format!("{}/", p.display()).starts_with(&root_str))
        };
        if in_lab_netns || cmdline(pid).contains(&root_str) || under_root("root") || under_root("cwd") {
            out.push(pid);
        }
    }
    out
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    pub(crate) point: PathBuf,
    pub(crate) fs_type: String,
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = unescape_mount(fields.get(4)?);
            let sep = fields.iter().position(|f| *f == "-")?;
            let fs_type = (*fields.get(sep + 1)?).to_owned();
            Some(Mount { point: PathBuf::from(point), fs_type })
        })
        .collect()
}

/// Mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts at or under `root`.
pub(crate) fn mounts_under(root: &Path) -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text).into_iter().filter(|m| m.point.starts_with(root)).collect()
}

/// Unmounts everything at or under `root`, deepest first, repeating for stacked mounts.
fn unmount_under(root: &Path) -> Result<()> {
    for _ in 0..8 {
        let mut mounts = mounts_under(root);
        if mounts.is_empty() {
            return Ok(());
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.point.components().count()));
        for m in mounts {
            if nix::mount::umount2(&m.point, nix::mount::MntFlags::empty()).is_err() {
                let _ = nix::mount::umount2(&m.point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let left = mounts_under(root);
    if left.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "mounts left under {}: {:?}",
            root.display(),
            left.iter().map(|m| m.point.display().to_string()).collect::<Vec<_>>()
        ))
    }
}

/// Removes `<hierarchy><parent>` and everything below in every cgroup hierarchy, deepest first.
fn remove_cgroups(parent: &str, errors: &mut Vec<anyhow::Error>) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut hierarchy_roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    // cgroup v2 mounted directly on /sys/fs/cgroup.
    hierarchy_roots.push(PathBuf::from("/sys/fs/cgroup"));
    for hierarchy in hierarchy_roots {
        let top = hierarchy.join(parent.trim_start_matches('/'));
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            if let Err(e) = std::fs::remove_dir(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                errors.push(anyhow!("cannot remove cgroup {}: {e}", dir.display()));
            }
        }
        // The shared `/slicenet-lab` parent goes when no other lab uses it.
        if let Some(shared) = top.parent() {
            let _ = std::fs::remove_dir(shared);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 /mnt1 /run/slicenet-lab/x/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 0:4 net:[4026532] /run/netns/x-c1-n1 rw shared:5 - nsfs nsfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m[0].point, PathBuf::from("/run/slicenet-lab/x/a b"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[1].fs_type, "nsfs");
    }
}
