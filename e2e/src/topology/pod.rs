//! Pods: what a test asks for ([`PodSpec`]), what it gets back ([`Pod`]), and commands inside a
//! pod's network namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;

use crate::netns;

/// A pod to create: its Kubernetes namespace and name, labels and annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl PodSpec {
    /// A pod `namespace/name` without labels or annotations.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into(), ..Self::default() }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an annotation.
    #[must_use]
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }
}

/// A running pod sandbox on a lab node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// containerd's sandbox id.
    pub sandbox_id: String,
    /// The pod's network namespace (a bind mount under the node's containerd state dir).
    pub netns_path: PathBuf,
    pub cluster: String,
    pub node: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The lab's directory (where [`Pod::spawn`] records its processes).
    pub(crate) lab_root: PathBuf,
}

impl Pod {
    /// The pod's name in the lab: `<cluster>/<namespace>/<pod>`.
    pub fn lab_name(&self) -> String {
        format!("{}/{}/{}", self.cluster, self.namespace, self.name)
    }

    /// Runs `argv` inside the pod's network namespace (`nsenter --net=NETNS`) and returns its
    /// output whatever the exit status.
    ///
    /// # Errors
    /// When the command cannot be started.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        netns::exec(&self.netns_path, argv).with_context(|| format!("pod {}", self.lab_name()))
    }

    /// Runs `argv` in the pod's network namespace and returns its stdout; fails (naming the pod,
    /// the command and its stderr) unless it exits 0.
    ///
    /// # Errors
    /// When the command cannot be started or exits non-zero.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let out = self.exec(argv)?;
        if !out.status.success() {
            bail!(
                "pod {}: `{}` failed ({}): {}{}",
                self.lab_name(),
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The addresses on interface `ifname` inside the pod (from `ip -j addr`), scope global.
    ///
    /// # Errors
    /// When `ip` fails (e.g. no such interface) or its JSON cannot be read.
    pub fn addresses(&self, ifname: &str) -> Result<Vec<IpNet>> {
        let json = self.exec_ok(&["ip", "-j", "addr", "show", "dev", ifname])?;
        parse_ip_addr_json(&json).with_context(|| format!("pod {}: {ifname}", self.lab_name()))
    }

    /// The addresses on interface `ifname` inside the pod without their prefix length, IPv4
    /// first (a slice interface has one per family of its slice).
    ///
    /// # Errors
    /// As [`Pod::addresses`].
    pub fn ips(&self, ifname: &str) -> Result<Vec<std::net::IpAddr>> {
        let mut ips: Vec<std::net::IpAddr> = self.addresses(ifname)?.iter().map(IpNet::addr).collect();
        ips.sort_by_key(std::net::IpAddr::is_ipv6);
        Ok(ips)
    }

    /// The first IPv4 address on interface `ifname` inside the pod.
    ///
    /// # Errors
    /// When the interface does not exist or has no IPv4 address.
    pub fn ipv4(&self, ifname: &str) -> Result<std::net::Ipv4Addr> {
        self.addresses(ifname)?
            .into_iter()
            .find_map(|a| match a.addr() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .with_context(|| format!("pod {}: {ifname} has no IPv4 address", self.lab_name()))
    }

    /// Starts `argv` as a long-lived process inside the pod's network namespace (`nsenter
    /// --net`, which execs it: the PID is the program's), stdout and stderr to a log file. The
    /// PID is recorded under the lab directory, so the lab's teardown and [`crate::cleanup`]
    /// (after a crash) kill it; dropping the handle kills it too.
    ///
    /// # Errors
    /// When the log or record cannot be written or the process cannot be started.
    pub fn spawn(&self, argv: &[&str]) -> Result<PodProcess> {
        spawn_in(&self.lab_root, Path::new(&self.netns_path), &self.lab_name(), argv)
    }

    /// Whether the pod's network namespace file still exists.
    pub fn netns_exists(&self) -> bool {
        Path::new(&self.netns_path).exists()
    }
}

/// Starts `argv` in the network namespace at `netns` as [`Pod::spawn`] does (`label` names it
/// in its log file and errors): for processes of the lab's own that run on a node's network
/// rather than in a pod.
///
/// # Errors
/// When the log or record cannot be written or the process cannot be started.
pub fn spawn_in(lab_root: &Path, netns: &Path, label: &str, argv: &[&str]) -> Result<PodProcess> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = crate::cleanup::pod_process_dir(lab_root);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let file_label = label.replace('/', "-");
    let log = dir.join(format!("{file_label}-{}-{n}.log", std::process::id()));
    let file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = netns::command(netns, argv);
    command.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
    let child =
        command.spawn().with_context(|| format!("{label}: cannot start `{}`", crate::cmd::describe(&command)))?;
    let record = crate::cleanup::record_pod_process(lab_root, child.id() as i32)
        .with_context(|| format!("{label}: cannot record pid {}", child.id()))?;
    Ok(PodProcess { child: Some(child), record, log, pod: label.to_owned() })
}

/// A process started in a pod with [`Pod::spawn`]. Dropping it stops it (SIGTERM, then
/// SIGKILL after 5 s).
#[derive(Debug)]
pub struct PodProcess {
    child: Option<Child>,
    record: PathBuf,
    log: PathBuf,
    pod: String,
}

impl PodProcess {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The log file (stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The log file's content so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if it exited.
    ///
    /// # Errors
    /// When the child cannot be polled.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("process in pod {} was stopped", self.pod),
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// SIGKILL (a crash), then reaps it; it stays known as exited ([`PodProcess::is_running`]
    /// is false), so that whoever watches it can start it again.
    ///
    /// # Errors
    /// When it was stopped already or cannot be reaped.
    pub fn kill(&mut self) -> Result<()> {
        let child = self.child.as_mut().with_context(|| format!("process in pod {} was stopped", self.pod))?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        child.wait().with_context(|| format!("reaping process {} in pod {}", child.id(), self.pod))?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 5 s; reaps it and removes its record.
    ///
    /// # Errors
    /// When it cannot be reaped.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            crate::agent::stop_child(&mut child, Duration::from_secs(5))
                .with_context(|| format!("process {} in pod {}", child.id(), self.pod))?;
        }
        let _ = std::fs::remove_file(&self.record);
        Ok(())
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("{e:#}");
        }
    }
}

/// One sandbox as `ListPodSandbox` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSummary {
    pub sandbox_id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `SANDBOX_READY` (false once stopped).
    pub ready: bool,
}

pub(crate) fn parse_ip_addr_json(json: &str) -> Result<Vec<IpNet>> {
    let links: serde_json::Value = serde_json::from_str(json).context("`ip -j addr` output is not JSON")?;
    let mut out = Vec::new();
    for link in links.as_array().into_iter().flatten() {
        for info in link["addr_info"].as_array().into_iter().flatten() {
            if info["scope"] != "global" {
                continue;
            }
            let (Some(local), Some(len)) = (info["local"].as_str(), info["prefixlen"].as_u64()) else {
                continue;
            };
            out.push(format!("{local}/{len}").parse().with_context(|| format!("bad address {local}/{len}"))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let json = r#"[{"ifname":"eth0","addr_info":[
            {"family":"inet","local":"10.244.1.2","prefixlen":24,"scope":"global"},
            {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;
        assert_eq!(parse_ip_addr_json(json).unwrap(), vec!["10.244.1.2/24".parse::<IpNet>().unwrap()]);
    }
}
