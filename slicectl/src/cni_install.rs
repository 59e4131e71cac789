//! `slicectl cni-install`: what the node agent DaemonSet's init container runs on every node.
//! It copies `slice-cni` into the host's CNI bin dir and writes a conflist that chains
//! `slice-cni` after the node's primary CNI (the first other conflist of the conf dir), as
//! `00-slicenet.conflist` so that the container runtime picks it before the original.
//!
//! The chaining itself ([`chain`]) is pure and tested; the file steps write to a temporary
//! name and rename, so the runtime never reads a half-written binary or conflist.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The conflist this installer writes.
pub const CONFLIST_NAME: &str = "00-slicenet.conflist";
/// The plugin type (binary name) of slicenet's CNI plugin.
pub const PLUGIN_TYPE: &str = "slice-cni";
/// slice-cni speaks CNI 0.4.0 and later; an older list version is raised to it.
const MIN_CNI_VERSION: &str = "0.4.0";

/// slice-cni's entry in a conflist: it asks the runtime for the pod annotations (containerd ≥
/// 1.5 and CRI-O pass them in `runtimeConfig` only when the capability is declared).
#[must_use]
pub fn plugin_entry() -> Value {
    plugin_entry_with(&PluginPaths::default())
}

/// Where slice-cni finds the node agent's state and keeps its IPAM files, when not at its
/// defaults (`/run/slicenet`, `/var/lib/slicenet/ipam`): a lab node sharing the machine with
/// others has its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginPaths {
    pub state_dir: Option<PathBuf>,
    pub ipam_dir: Option<PathBuf>,
}

/// slice-cni's entry with `paths` (`stateDir`, `ipamDir` only where given).
#[must_use]
pub fn plugin_entry_with(paths: &PluginPaths) -> Value {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(slice_api::names::POD_ANNOTATIONS_CAPABILITY.to_owned(), Value::Bool(true));
    let mut entry = json!({ "type": PLUGIN_TYPE, "capabilities": capabilities });
    if let Some(dir) = &paths.state_dir {
        entry["stateDir"] = json!(dir);
    }
    if let Some(dir) = &paths.ipam_dir {
        entry["ipamDir"] = json!(dir);
    }
    entry
}

/// The primary network configuration (a `.conflist`, or a single-plugin `.conf`) with
/// slice-cni chained last. An existing slice-cni entry is replaced, so running twice gives the
/// same list.
///
/// # Errors
/// When `primary` has no plugins or no name.
pub fn chain(primary: &Value) -> Result<Value> {
    chain_with(primary, plugin_entry())
}

/// [`chain`] with a given slice-cni entry.
///
/// # Errors
/// See [`chain`].
pub fn chain_with(primary: &Value, entry: Value) -> Result<Value> {
    let mut list = if primary.get("plugins").is_some() {
        primary.clone()
    } else if primary.get("type").is_some() {
        // A single-plugin .conf: the list takes its name and version.
        let mut plugin = primary.clone();
        let obj = plugin.as_object_mut().context("the primary network configuration is not a JSON object")?;
        let name = obj.remove("name").unwrap_or(Value::Null);
        let version = obj.remove("cniVersion").unwrap_or(Value::Null);
        json!({ "cniVersion": version, "name": name, "plugins": [plugin] })
    } else {
        bail!("the primary network configuration has neither `plugins` nor `type`");
    };
    if !list.get("name").is_some_and(Value::is_string) {
        bail!("the primary network configuration has no name");
    }
    let version = list.get("cniVersion").and_then(Value::as_str).unwrap_or("0.3.1").to_owned();
    if version_lt(&version, MIN_CNI_VERSION) {
        // The reference plugins (kindnet's ptp, bridge, portmap) all speak 0.4.0; slice-cni
        // refuses older versions.
        list["cniVersion"] = Value::String(MIN_CNI_VERSION.to_owned());
    }
    let plugins = list.get_mut("plugins").and_then(Value::as_array_mut).context("`plugins` is not a list")?;
    if plugins.iter().all(|p| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)) {
        bail!("the primary network configuration has no plugin before slice-cni");
    }
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    plugins.push(entry);
    Ok(list)
}

fn version_lt(a: &str, b: &str) -> bool {
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    parse(a) < parse(b)
}

/// The primary configuration of `conf_dir`: the first `.conflist`/`.conf`/`.json` in name order
/// that is not ours (the order in which container runtimes pick one).
///
/// # Errors
/// When the dir cannot be read or holds no other configuration.
pub fn find_primary(conf_dir: &Path) -> Result<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("reading {}", conf_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            matches!(ext, "conflist" | "conf" | "json") && p.file_name().and_then(|n| n.to_str()) != Some(CONFLIST_NAME)
        })
        .collect();
    names.sort();
    names.into_iter().next().with_context(|| {
        format!("no primary CNI configuration in {}: slice-cni is chained after the cluster's CNI", conf_dir.display())
    })
}

/// Copies `plugin` into `bin_dir` and writes the chained conflist into `conf_dir`. Returns the
/// primary configuration it chained after.
///
/// # Errors
/// When a file cannot be read, parsed or written.
pub fn install(plugin: &Path, bin_dir: &Path, conf_dir: &Path) -> Result<PathBuf> {
    install_with(plugin, bin_dir, conf_dir, &PluginPaths::default())
}

/// [`install`] with slice-cni's `paths`.
///
/// # Errors
/// See [`install`].
pub fn install_with(plugin: &Path, bin_dir: &Path, conf_dir: &Path, paths: &PluginPaths) -> Result<PathBuf> {
    // Copied, not read into memory: the release plugin is tens of MB and the init container's
    // memory limit is sized for a copy (docs/benchmarks.md, section 8).
    let target = bin_dir.join(PLUGIN_TYPE);
    place_atomically(&target, 0o755, |tmp| {
        std::fs::copy(plugin, tmp)
            .map(drop)
            .with_context(|| format!("copying {} to {}", plugin.display(), tmp.display()))
    })?;

    let primary = find_primary(conf_dir)?;
    let text = std::fs::read(&primary).with_context(|| format!("reading {}", primary.display()))?;
    let value: Value = serde_json::from_slice(&text).with_context(|| format!("parsing {}", primary.display()))?;
    let chained = chain_with(&value, plugin_entry_with(paths))
        .with_context(|| format!("chaining after {}", primary.display()))?;
    let mut out = serde_json::to_vec_pretty(&chained).context("serialising the conflist")?;
    out.push(b'\n');
    place_atomically(&conf_dir.join(CONFLIST_NAME), 0o644, |tmp| {
        std::fs::write(tmp, &out).with_context(|| format!("writing {}", tmp.display()))
    })?;
    Ok(primary)
}

/// Makes `path` appear whole or not at all: `fill` writes a temporary file beside it, which
/// gets `mode` and is renamed onto `path`.
fn place_atomically(path: &Path, mode: u32, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().context("target has no parent dir")?;
    let name = path.file_name().and_then(|n| n.to_str()).context("target has no file name")?;
    let tmp = dir.join(format!(".{name}.tmp"));
    fill(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kindnet() -> Value {
        json!({"cniVersion": "0.3.1", "name": "kindnet", "plugins": [
            {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}]})
    }

    #[test]
    fn chains_last_raises_old_versions_and_is_idempotent() {
        let once = chain(&kindnet()).unwrap();
        assert_eq!(once["cniVersion"], "0.4.0");
        assert_eq!(once["name"], "kindnet");
        let types: Vec<&str> =
            once["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["ptp", "portmap", "slice-cni"]);
        assert_eq!(once["plugins"][2]["capabilities"]["io.kubernetes.cri.pod-annotations"], true);
        assert_eq!(chain(&once).unwrap(), once);
        let mut newer = kindnet();
        newer["cniVersion"] = json!("1.0.0");
        assert_eq!(chain(&newer).unwrap()["cniVersion"], "1.0.0");
    }

    #[test]
    fn a_single_plugin_conf_becomes_a_list() {
        let conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge", "bridge": "cni0"});
        let list = chain(&conf).unwrap();
        assert_eq!(list["name"], "net");
        assert_eq!(list["plugins"][0], json!({"type": "bridge", "bridge": "cni0"}));
        assert_eq!(list["plugins"][1]["type"], "slice-cni");
        assert!(chain(&json!({"name": "x"})).is_err());
        assert!(chain(&json!({"name": "x", "plugins": [plugin_entry()]})).is_err(), "nothing to chain after");
    }

    #[test]
    fn install_writes_plugin_and_conflist_before_the_primary() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&conf).unwrap();
        let plugin = dir.path().join("slice-cni-src");
        std::fs::write(&plugin, b"#!binary").unwrap();
        assert!(install(&plugin, &bin, &conf).unwrap_err().to_string().contains("no primary CNI configuration"));
        std::fs::write(conf.join("10-kindnet.conflist"), kindnet().to_string()).unwrap();
        std::fs::write(conf.join("99-later.conflist"), "{}").unwrap();
        let primary = install(&plugin, &bin, &conf).unwrap();
        assert_eq!(primary, conf.join("10-kindnet.conflist"));
        assert_eq!(std::fs::read(bin.join("slice-cni")).unwrap(), b"#!binary");
        let written: Value = serde_json::from_slice(&std::fs::read(conf.join(CONFLIST_NAME)).unwrap()).unwrap();
        assert_eq!(written, chain(&kindnet()).unwrap());
        // Again: our own conflist is never taken as the primary.
        assert_eq!(install(&plugin, &bin, &conf).unwrap(), conf.join("10-kindnet.conflist"));
    }
}
