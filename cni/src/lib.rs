//! `slice-cni`: the CNI plugin that puts a pod on its slice. Chained after any primary CNI it
//! adds `slice0`; as a Multus delegate it creates the interface Multus names. See
//! `docs/architecture.md` for where it sits.
//!
//! - [`spec`]: versions, commands, environment, error codes.
//! - [`config`]: the network configuration on stdin.
//! - [`membership`]: which slice a pod joins (pure).
//! - [`ipam`]: addresses from the node prefix (pure choice, file store under a lock).
//! - [`attach`]: the veth, address and routes (netlink through `dataplane`).
//! - [`result`]: the ADD result.
//! - [`network_status`]: the Multus network-status entry; chained mode's per-pod record.
//! - [`commands`]: ADD, DEL, CHECK, STATUS, GC, VERSION.

pub mod attach;
pub mod commands;
pub mod config;
pub mod ipam;
pub mod log;
pub mod membership;
pub mod network_status;
pub mod result;
pub mod spec;

use std::io::Read;

use serde_json::Value;

use spec::{CniError, Command, Env, LATEST_VERSION, code};

/// One plugin invocation: reads the environment (through `get`) and stdin, runs the command.
/// Returns what to print on stdout and whether it is an error.
pub fn invoke(get: impl Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> (Value, bool) {
    let mut version_hint = LATEST_VERSION.to_string();
    match invoke_inner(get, stdin, &mut version_hint) {
        Ok(Some(v)) => (v, false),
        Ok(None) => (Value::Null, false),
        Err(mut e) => {
            e.cni_version = version_hint;
            (serde_json::to_value(&e).expect("error serializes"), true)
        }
    }
}

fn invoke_inner(
    get: impl Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    version_hint: &mut String,
) -> spec::Result<Option<Value>> {
    let env = Env::from_lookup(&get)?;
    let command = Command::parse(env.command.as_deref().ok_or_else(|| {
        CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set; this is a CNI plugin, run by a container runtime")
    })?)?;
    let mut input = Vec::new();
    stdin
        .read_to_end(&mut input)
        .map_err(|e| CniError::new(code::IO, "cannot read the configuration from stdin").with_details(e.to_string()))?;
    if command == Command::Version {
        // VERSION may come with only {"cniVersion": …}, or nothing. The reply is written in the
        // asked version only when it is one we speak (never echo a version we do not know).
        let asked = serde_json::from_slice::<Value>(&input)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
            .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| LATEST_VERSION.to_string());
        return Ok(Some(commands::version(&asked)));
    }
    let node_paths = config::NodePaths::from_lookup(&get)?;
    let conf = config::NetConf::parse(&input)?.with_node_paths(&node_paths);
    if spec::SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        version_hint.clone_from(&conf.cni_version);
    }
    let log = log::Log::new(conf.log_file.clone());
    if !conf.ignored_path_keys.is_empty() {
        log.info(&format!(
            "{command:?} {}: ignored {} of delegate config {:?}: paths come only from the node",
            env.container_id.as_deref().unwrap_or("-"),
            conf.ignored_path_keys.join(", "),
            conf.name
        ));
    }
    let outcome = commands::run(command, &conf, &env, &log);
    if let Err(e) = &outcome {
        log.info(&format!("{command:?} {} failed: {e}", env.container_id.as_deref().unwrap_or("-")));
    }
    outcome
}
