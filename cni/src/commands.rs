//! One function per CNI command. Each returns what goes on stdout (or nothing) or a
//! [`CniError`]; `main` prints it.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use slice_api::NodeState;
use slice_api::names::DEFAULT_SLICE_INTERFACE;

use crate::attach;
use crate::config::NetConf;
use crate::ipam::{Allocation, Key, Store};
use crate::log::Log;
use crate::membership::{self, Decision, States};
use crate::network_status;
use crate::result::{self, SliceInterface};
use crate::spec::{CniError, Command, Env, Result, SUPPORTED_VERSIONS, code};

/// Runs `command` with its config and environment; `Some(json)` is printed on stdout.
///
/// # Errors
/// The CNI error to print.
pub fn run(command: Command, conf: &NetConf, env: &Env, log: &Log) -> Result<Option<Value>> {
    crate::spec::check_version(&conf.cni_version, command)?;
    match command {
        Command::Add => add(conf, env, log).map(Some),
        Command::Del => del(conf, env, log).map(|()| None),
        Command::Check => check(conf, env).map(|()| None),
        Command::Status => status(conf).map(|()| None),
        Command::Gc => gc(conf, log).map(|()| None),
        Command::Version => Ok(Some(version(&conf.cni_version))),
    }
}

/// The VERSION reply.
pub fn version(asked: &str) -> Value {
    json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The interface this attachment uses: `CNI_IFNAME` for a Multus delegate, `sliceInterface`
/// (default `slice0`) when chained (where `CNI_IFNAME` is the primary interface).
fn slice_ifname<'a>(conf: &'a NetConf, env: &'a Env) -> Result<&'a str> {
    if conf.standalone() {
        env.require_ifname()
    } else {
        Ok(conf.slice_interface.as_deref().unwrap_or(DEFAULT_SLICE_INTERFACE))
    }
}

fn key(conf: &NetConf, env: &Env) -> Result<Key> {
    Ok(Key { container_id: env.require_container_id()?.to_string(), ifname: slice_ifname(conf, env)?.to_string() })
}

/// Reads every node state; one that cannot be read is recorded with the reason.
fn load_states(conf: &NetConf) -> Result<States> {
    let dir = conf.state_dir();
    let mut states = States::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(states),
        Err(e) => {
            return Err(CniError::new(code::IO, format!("cannot read node-state dir {}", dir.display()))
                .with_details(e.to_string()));
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(slice) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let state = NodeState::load(&dir, &slice)
            .map_err(|e| e.to_string())
            .and_then(|s| s.ok_or_else(|| "vanished while reading".to_string()));
        states.insert(slice, state);
    }
    Ok(states)
}

fn add(conf: &NetConf, env: &Env, log: &Log) -> Result<Value> {
    let key = key(conf, env)?;
    let pod = membership::Pod {
        requested_by_config: conf.slice.as_deref(),
        namespace: env.pod_namespace(),
        annotations: conf.annotations(),
    };
    let states = load_states(conf)?;
    let state = match membership::decide(pod, &states)? {
        Decision::Skip(why) => {
            log.info(&format!("ADD {}: no slice interface: {why}", key.container_id));
            return Ok(conf.prev_result.clone().unwrap_or_else(|| result::empty(&conf.cni_version)));
        }
        Decision::Attach(state) => state,
    };
    let netns = env.require_netns()?;
    let store = Store::new(conf.ipam_dir());
    // One address per family of the slice, all or none.
    let prefixes: Vec<_> = state.families().map(|(_, prefix, _)| prefix).collect();
    let allocated = store.allocate_all(&state.slice, &prefixes, &key, &conf.name)?;
    let ips: Vec<std::net::IpAddr> = allocated.iter().map(|(ip, _)| *ip).collect();
    let attached = match attach::attach(&state, netns, &key.ifname, &ips, &key) {
        Ok(a) => a,
        Err(e) => {
            let now: BTreeSet<std::net::IpAddr> = allocated.iter().filter(|(_, now)| *now).map(|(ip, _)| *ip).collect();
            let _ = store.release_where(|a| a.key == key && now.contains(&a.ip));
            return Err(e);
        }
    };
    let shown: Vec<String> = ips.iter().map(ToString::to_string).collect();
    log.info(&format!(
        "ADD {} pod {}/{}: {} {} on slice {}",
        key.container_id,
        env.pod_namespace().unwrap_or("-"),
        env.pod_name().unwrap_or("-"),
        key.ifname,
        shown.join(" "),
        state.slice
    ));
    let base = if conf.standalone() { None } else { conf.prev_result.clone() };
    let slice = SliceInterface { ifname: &key.ifname, sandbox: netns, ips: &ips, attached: &attached, state: &state };
    let result =
        result::with_slice(base.unwrap_or_else(|| result::empty(&conf.cni_version)), &conf.cni_version, &slice);
    if !conf.standalone() {
        record_network_status(conf, env, &key, &state.slice, &result, log);
    }
    Ok(result)
}

/// Chained mode: records the pod's network-status entry (Multus records it in delegate mode).
/// Best effort: the record is a report for an agent, and the attachment works without it, so a
/// failure is logged and does not fail ADD.
fn record_network_status(conf: &NetConf, env: &Env, key: &Key, slice: &str, result: &Value, log: &Log) {
    let namespace = env.pod_namespace().unwrap_or_default();
    let network = slice_api::multus::network_name(namespace, slice);
    let Some(entry) = network_status::entry(&network, result, &key.ifname) else {
        log.info(&format!("ADD {}: no {} in the result to record", key.container_id, key.ifname));
        return;
    };
    let record = network_status::PodRecord {
        container_id: key.container_id.clone(),
        network: conf.name.clone(),
        namespace: namespace.to_owned(),
        pod: env.pod_name().unwrap_or_default().to_owned(),
        pod_uid: env.args.get("K8S_POD_UID").cloned().unwrap_or_default(),
        network_status: vec![entry],
    };
    let dir = conf.status_dir();
    if let Err(e) = network_status::store(&dir, &record) {
        log.info(&format!("ADD {}: cannot record network status in {}: {e}", key.container_id, dir.display()));
    }
}

/// Chained mode: removes the pod's network-status record (logged, never fails DEL or GC).
fn forget_network_status(conf: &NetConf, container_id: &str, log: &Log) {
    if conf.standalone() {
        return;
    }
    let dir = conf.status_dir();
    if let Err(e) = network_status::remove(&dir, container_id) {
        log.info(&format!("{container_id}: cannot remove network-status record in {}: {e}", dir.display()));
    }
}

/// Removes the attachments of `allocations` (host ends first, so an address is never free while
/// its interface still exists), then their addresses.
fn remove(conf: &NetConf, allocations: &[Allocation]) -> Result<()> {
    let mut errors = Vec::new();
    for alloc in allocations {
        match NodeState::load(&conf.state_dir(), &alloc.slice) {
            Ok(Some(state)) => {
                if let Err(e) = attach::detach(&state, &alloc.key) {
                    errors.push(e.to_string());
                }
            }
            // No state: the slice is gone from this node and its router namespace with it.
            Ok(None) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(CniError::new(code::IO, "cannot remove slice interface").with_details(errors.join("; ")));
    }
    let released: BTreeSet<(String, std::net::IpAddr)> = allocations.iter().map(|a| (a.slice.clone(), a.ip)).collect();
    Store::new(conf.ipam_dir()).release_where(|a| released.contains(&(a.slice.clone(), a.ip)))?;
    Ok(())
}

fn del(conf: &NetConf, env: &Env, log: &Log) -> Result<()> {
    let key = key(conf, env)?;
    let allocations = Store::new(conf.ipam_dir()).find(&key)?;
    remove(conf, &allocations)?;
    if allocations.is_empty()
        && let Some(slice) = &conf.slice
    {
        // A delegate names its slice: its host end goes even when the IPAM store has lost the
        // record (the name comes from the key alone), so no veth outlives its pod.
        if let Ok(Some(state)) = NodeState::load(&conf.state_dir(), slice) {
            attach::detach(&state, &key)?;
        }
    }
    forget_network_status(conf, &key.container_id, log);
    for a in &allocations {
        log.info(&format!("DEL {}: released {} {} on slice {}", key.container_id, key.ifname, a.ip, a.slice));
    }
    Ok(())
}

fn check(conf: &NetConf, env: &Env) -> Result<()> {
    let key = key(conf, env)?;
    if conf.prev_result.is_none() && !conf.standalone() {
        return Err(CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult in a chained configuration"));
    }
    let allocations = Store::new(conf.ipam_dir()).find(&key)?;
    let Some(alloc) = allocations.first() else {
        // Not a member at ADD (or opted out): there must be no slice interface.
        if conf.standalone() {
            return Err(CniError::new(code::CHECK_FAILED, format!("no address is allocated to {}", key.ifname)));
        }
        return Ok(());
    };
    let state = NodeState::load(&conf.state_dir(), &alloc.slice)
        .map_err(|e| CniError::new(code::IO, e.to_string()))?
        .ok_or_else(|| {
        CniError::new(code::CHECK_FAILED, format!("slice {} has no node state on this node any more", alloc.slice))
    })?;
    let ips: Vec<std::net::IpAddr> = allocations.iter().filter(|a| a.slice == alloc.slice).map(|a| a.ip).collect();
    let mut diffs = Vec::new();
    // Each family of the slice has its address (a dual-stack pod with one is not what ADD made).
    for (subnet, prefix, _) in state.families() {
        if !ips.iter().any(|ip| prefix.contains(ip)) {
            diffs.push(format!("no address of node prefix {prefix} (slice subnet {subnet}) is allocated"));
        }
    }
    diffs.extend(attach::differences(&state, env.require_netns()?, &key.ifname, &ips, &key)?);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            format!("slice attachment {} differs from what ADD made: {}", key.ifname, diffs.join("; ")),
        ))
    }
}

fn status(conf: &NetConf) -> Result<()> {
    let not_available = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg).with_details(e.details);
    Store::new(conf.ipam_dir()).list().map_err(not_available)?;
    load_states(conf).map_err(not_available)?;
    Ok(())
}

fn gc(conf: &NetConf, log: &Log) -> Result<()> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments in the configuration")
    })?;
    let valid: BTreeSet<(&str, &str)> = valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
    let stale: Vec<Allocation> = Store::new(conf.ipam_dir())
        .list()?
        .into_iter()
        .filter(|a| a.network == conf.name)
        .filter(|a| !valid.contains(&(a.key.container_id.as_str(), a.key.ifname.as_str())))
        .collect();
    remove(conf, &stale)?;
    for a in &stale {
        log.info(&format!("GC: released {} {} of {} on slice {}", a.key.ifname, a.ip, a.key.container_id, a.slice));
    }
    // This network's records of containers the runtime no longer has.
    if !conf.standalone() {
        let live: BTreeSet<&str> = valid.iter().map(|(id, _)| *id).collect();
        let dir = conf.status_dir();
        let records = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        for name in records.filter_map(|e| e.file_name().into_string().ok()) {
            let Some(id) = network_status::record_file_container_id(&name).filter(|id| !live.contains(id)) else {
                continue;
            };
            // An unreadable record is left for its own DEL; another network's is not ours.
            if let Ok(Some(record)) = network_status::load(&dir, id)
                && record.network == conf.name
            {
                forget_network_status(conf, id, log);
            }
        }
    }
    Ok(())
}
