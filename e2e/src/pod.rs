//! Pods: what a test asks for ([`PodSpec`]), what it gets back ([`Pod`]), and commands inside a
//! pod's network namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

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

    /// Whether the pod's network namespace file still exists.
    pub fn netns_exists(&self) -> bool {
        Path::new(&self.netns_path).exists()
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
