//! Section 1: CNI ADD/DEL latency of the plugin binaries, invoked directly as a runtime does
//! (`CNI_*` environment, configuration on stdin, a fresh process each time).
//!
//! Every iteration makes a fresh pod namespace and runs the chain of a real node: `bridge`
//! (with `host-local`) ADD, `slice-cni` ADD with the bridge's result as `prevResult`, then DEL in
//! reverse order with the chain's result as `prevResult` (libcni's order). All four are timed
//! from spawn to exit on a thread that entered the node's namespace, so no `nsenter` is in the
//! timing. `slice-cni` uses the node state and router namespace a real node agent made, and the
//! node's IPAM dir; `bridge` uses its own bridge (`bnch0`) and subnet so it never touches what
//! containerd uses. Floors (process start-up) and `slice-cni`'s no-slice path are timed too, as
//! a rough split of where an ADD's time goes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::Digest;

use super::Summary;
use super::process::{self, check_interrupted};
use crate::Node;

/// No plugin call may take longer than this.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(20);
/// The pod namespace that is a member of the bench slice.
pub(crate) const MEMBER_NAMESPACE: &str = "bench";
/// A pod namespace that is in no slice.
const OTHER_NAMESPACE: &str = "bench-other";
const BRIDGE: &str = "bnch0";
const BRIDGE_SUBNET: &str = "10.245.0.0/24";

/// Section 1's figures.
#[derive(Debug, Clone)]
pub(crate) struct CniFigures {
    pub(crate) bridge_add: Summary,
    pub(crate) bridge_del: Summary,
    pub(crate) slice_add: Summary,
    pub(crate) slice_del: Summary,
    /// `slice-cni` ADD for a pod in no slice (config, state files, prevResult passed through).
    pub(crate) slice_add_skip: Summary,
    /// `/bin/true`: the cost of starting any process here.
    pub(crate) spawn_true: Summary,
    pub(crate) bridge_version: Summary,
    pub(crate) slice_version: Summary,
}

/// One plugin and what every invocation of it shares.
struct Plugin {
    binary: PathBuf,
    cni_path: PathBuf,
}

impl Plugin {
    /// One invocation; fails unless the plugin exits 0. Returns the time and the parsed stdout
    /// (`Null` when empty).
    fn invoke(&self, command: &str, env: &PodEnv<'_>, conf: &Value) -> Result<(Duration, Value)> {
        let mut cmd = Command::new(&self.binary);
        cmd.env("CNI_COMMAND", command).env("CNI_PATH", &self.cni_path);
        if let Some(env) = env.vars() {
            cmd.envs(env);
        }
        let input = serde_json::to_vec(conf)?;
        let (took, out) = process::timed(&mut cmd, &input, PLUGIN_TIMEOUT)?;
        if !out.status.success() {
            bail!(
                "{} {command} failed ({}): {}{}",
                self.binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let value = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout)
                .with_context(|| format!("{} {command}: stdout is not JSON", self.binary.display()))?
        };
        Ok((took, value))
    }
}

/// The pod-specific `CNI_*` variables (none for VERSION).
enum PodEnv<'a> {
    None,
    Pod { container_id: &'a str, netns: &'a Path, namespace: &'a str, name: &'a str, uid: &'a str },
}

impl PodEnv<'_> {
    fn vars(&self) -> Option<Vec<(&'static str, String)>> {
        match self {
            PodEnv::None => None,
            PodEnv::Pod { container_id, netns, namespace, name, uid } => Some(vec![
                ("CNI_CONTAINERID", (*container_id).to_owned()),
                ("CNI_NETNS", netns.display().to_string()),
                ("CNI_IFNAME", "eth0".to_owned()),
                (
                    "CNI_ARGS",
                    format!(
                        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
                         K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID={uid}"
                    ),
                ),
            ]),
        }
    }
}

/// A containerd-like 64-hex container id.
fn container_id(seed: &str) -> String {
    sha2::Sha256::digest(seed.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn bridge_conf(host_local_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": BRIDGE_SUBNET }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": host_local_dir,
        },
    })
}

/// `slice-cni`'s entry of the chain as libcni hands it over: the list's name and version, the
/// declared capability turned into `runtimeConfig` (containerd passes the pod's annotations),
/// and the previous result.
fn slice_conf(node: &Node, prev_result: &Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "slice-cni",
        "stateDir": node.state_dir(),
        "ipamDir": node.ipam_dir(),
        "runtimeConfig": { (slice_api::names::POD_ANNOTATIONS_CAPABILITY): {
            "io.kubernetes.cri.sandbox-id": "x",
        } },
        "prevResult": prev_result,
    })
}

fn with_prev(conf: &Value, prev_result: &Value) -> Value {
    let mut conf = conf.clone();
    conf["prevResult"] = prev_result.clone();
    conf
}

/// Whether an ADD result names interface `ifname` inside the pod's namespace.
fn has_interface(result: &Value, ifname: &str, netns: &Path) -> bool {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| i["name"] == ifname && i["sandbox"].as_str().is_some_and(|s| Path::new(s) == netns))
}

/// Samples of one iteration.
#[derive(Default)]
struct Samples {
    bridge_add: Vec<Duration>,
    bridge_del: Vec<Duration>,
    slice_add: Vec<Duration>,
    slice_del: Vec<Duration>,
    slice_add_skip: Vec<Duration>,
}

/// Runs section 1 on `node` (which must run a node agent with the bench slice ready):
/// `warmup` untimed iterations, then `iterations` timed ones. `netns_prefix` names the pod
/// namespaces (`<prefix>bp<i>` in `/run/netns`, so the lab's cleanup finds any leftover).
pub(crate) fn run(node: &Node, work_dir: &Path, netns_prefix: &str, iterations: usize) -> Result<CniFigures> {
    let warmup = 5.min(iterations);
    let host_local_dir = work_dir.join("host-local");
    std::fs::create_dir_all(&host_local_dir)?;
    let cni_path = node.cni_bin_dir();
    let bridge = Plugin { binary: cni_path.join("bridge"), cni_path: cni_path.clone() };
    let slice = Plugin { binary: cni_path.join("slice-cni"), cni_path: cni_path.clone() };
    let bridge_conf = bridge_conf(&host_local_dir);

    let netns_path = node.netns_path();
    process::in_netns(&netns_path, || {
        let mut samples = Samples::default();
        for i in 0..warmup + iterations {
            check_interrupted()?;
            let timed = i >= warmup;
            let name = format!("{netns_prefix}bp{i}");
            crate::cmd::ip(&["netns", "add", &name])?;
            let pod_netns = crate::netns::path(&name);
            let id = container_id(&format!("{netns_prefix}-{i}"));
            let uid = format!("00000000-0000-0000-0000-{i:012}");
            let pod_name = format!("p{i}");
            let result = iteration(&bridge, &slice, &bridge_conf, node, &id, &pod_netns, &pod_name, &uid);
            let removed = crate::cmd::ip(&["netns", "delete", &name]);
            let one = result.with_context(|| format!("CNI iteration {i}"))?;
            removed?;
            if timed {
                samples.bridge_add.push(one.bridge_add);
                samples.slice_add_skip.push(one.slice_add_skip);
                samples.slice_add.push(one.slice_add);
                samples.slice_del.push(one.slice_del);
                samples.bridge_del.push(one.bridge_del);
            }
        }
        // Floors: starting a process at all, and each plugin's VERSION.
        let (mut spawn_true, mut bridge_version, mut slice_version) = (Vec::new(), Vec::new(), Vec::new());
        let version = json!({ "cniVersion": "1.0.0" });
        for i in 0..warmup + iterations {
            check_interrupted()?;
            let (t, out) = process::timed(&mut Command::new("/bin/true"), b"", PLUGIN_TIMEOUT)?;
            if !out.status.success() {
                bail!("/bin/true failed");
            }
            let (b, _) = bridge.invoke("VERSION", &PodEnv::None, &version)?;
            let (s, _) = slice.invoke("VERSION", &PodEnv::None, &version)?;
            if i >= warmup {
                spawn_true.push(t);
                bridge_version.push(b);
                slice_version.push(s);
            }
        }
        Ok(CniFigures {
            bridge_add: Summary::of(&samples.bridge_add),
            bridge_del: Summary::of(&samples.bridge_del),
            slice_add: Summary::of(&samples.slice_add),
            slice_del: Summary::of(&samples.slice_del),
            slice_add_skip: Summary::of(&samples.slice_add_skip),
            spawn_true: Summary::of(&spawn_true),
            bridge_version: Summary::of(&bridge_version),
            slice_version: Summary::of(&slice_version),
        })
    })
}

struct One {
    bridge_add: Duration,
    slice_add_skip: Duration,
    slice_add: Duration,
    slice_del: Duration,
    bridge_del: Duration,
}

/// One pod through the chain. On failure, DELs what may have been added (best effort).
#[allow(clippy::too_many_arguments)]
fn iteration(
    bridge: &Plugin,
    slice: &Plugin,
    bridge_conf: &Value,
    node: &Node,
    id: &str,
    netns: &Path,
    pod_name: &str,
    uid: &str,
) -> Result<One> {
    let member = PodEnv::Pod { container_id: id, netns, namespace: MEMBER_NAMESPACE, name: pod_name, uid };
    let other = PodEnv::Pod { container_id: id, netns, namespace: OTHER_NAMESPACE, name: pod_name, uid };
    let attempt = || -> Result<One> {
        let (bridge_add, bridge_result) = bridge.invoke("ADD", &member, bridge_conf)?;
        if !has_interface(&bridge_result, "eth0", netns) {
            bail!("bridge ADD result has no eth0 in the pod: {bridge_result}");
        }
        // The same pod in a namespace of no slice: slice-cni passes prevResult through.
        let (slice_add_skip, skipped) = slice.invoke("ADD", &other, &slice_conf(node, &bridge_result))?;
        if has_interface(&skipped, "slice0", netns) {
            bail!("slice-cni attached a pod of namespace {OTHER_NAMESPACE}, which is in no slice");
        }
        let (slice_add, chain_result) = slice.invoke("ADD", &member, &slice_conf(node, &bridge_result))?;
        if !has_interface(&chain_result, "slice0", netns) {
            bail!("slice-cni ADD result has no slice0 in the pod (is the bench slice ready?): {chain_result}");
        }
        let (slice_del, _) = slice.invoke("DEL", &member, &slice_conf(node, &chain_result))?;
        let (bridge_del, _) = bridge.invoke("DEL", &member, &with_prev(bridge_conf, &chain_result))?;
        Ok(One { bridge_add, slice_add_skip, slice_add, slice_del, bridge_del })
    };
    let result = attempt();
    if result.is_err() {
        let _ = slice.invoke("DEL", &member, &slice_conf(node, &json!({})));
        let _ = bridge.invoke("DEL", &member, bridge_conf);
    }
    result
}
