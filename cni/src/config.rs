//! The network configuration slice-cni reads on stdin: the standard keys, ours (`slice`,
//! `sliceInterface`, `stateDir`, `ipamDir`, `statusDir`, `logFile`), the runtime's `runtimeConfig`
//! and, when chained, the previous plugin's result, kept as raw JSON so nothing of it is lost or
//! reordered. The path keys count only in the node's own conflist (chained mode); a Multus
//! delegate config (a NAD) cannot set them: [`NodePaths`] from the environment or the defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use slice_api::names;

use crate::spec::{CniError, Result, code};

/// Name of the default network-status dir, next to the IPAM dir.
pub use slice_api::names::STATUS_DIR_NAME;

/// One network configuration (a conflist entry with the list's name and version filled in, or a
/// Multus delegate config).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Standalone (Multus delegate) mode: the slice this attachment is for.
    #[serde(default)]
    pub slice: Option<String>,
    /// Chained mode: the name of the slice interface in the pod.
    #[serde(default)]
    pub slice_interface: Option<String>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub ipam_dir: Option<PathBuf>,
    /// Chained mode: where the per-pod network-status records go.
    #[serde(default)]
    pub status_dir: Option<PathBuf>,
    /// Where to append log lines; stderr when unset.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still uses.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Path keys a delegate config named and [`NetConf::with_node_paths`] ignored.
    #[serde(skip)]
    pub ignored_path_keys: Vec<&'static str>,
}

/// The node's own settings for the paths slice-cni uses, from the plugin's environment: the
/// container runtime's (or the Multus daemon's) environment, which only the node's
/// administrator sets. A delegate config is a NetworkAttachmentDefinition that namespace users
/// write, so in delegate mode these and the defaults are the only paths used
/// (`docs/security.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePaths {
    /// `SLICENET_STATE_DIR`.
    pub state_dir: Option<PathBuf>,
    /// `SLICENET_IPAM_DIR`.
    pub ipam_dir: Option<PathBuf>,
    /// `SLICENET_STATUS_DIR`.
    pub status_dir: Option<PathBuf>,
    /// `SLICENET_CNI_LOG_FILE`.
    pub log_file: Option<PathBuf>,
}

/// The environment variables of [`NodePaths`], in field order.
pub const NODE_PATH_VARS: [&str; 4] =
    ["SLICENET_STATE_DIR", "SLICENET_IPAM_DIR", "SLICENET_STATUS_DIR", "SLICENET_CNI_LOG_FILE"];

/// The config keys of the same paths, in the same order.
pub const PATH_KEYS: [&str; 4] = ["stateDir", "ipamDir", "statusDir", "logFile"];

impl NodePaths {
    /// Reads the node's paths from a lookup function (the process environment in `main`);
    /// unset or empty variables are `None`.
    ///
    /// # Errors
    /// Code 4 for a path that is not absolute.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let read = |var: &str| -> Result<Option<PathBuf>> {
            match get(var).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) if v.starts_with('/') => Ok(Some(PathBuf::from(v))),
                Some(v) => Err(CniError::new(code::INVALID_ENV, format!("{var} must be an absolute path, not {v:?}"))),
            }
        };
        let [state_dir, ipam_dir, status_dir, log_file] = NODE_PATH_VARS;
        Ok(Self {
            state_dir: read(state_dir)?,
            ipam_dir: read(ipam_dir)?,
            status_dir: read(status_dir)?,
            log_file: read(log_file)?,
        })
    }
}

/// What the runtime passes for declared capabilities.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(rename = "io.kubernetes.cri.pod-annotations", default)]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

/// A (container, interface) pair from `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Parses and checks the config from stdin bytes.
    ///
    /// # Errors
    /// Code 6 for bytes that are not a JSON object of this shape (including a missing `name` or
    /// `type`, which the spec requires), code 7 for values that are wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let conf: Self = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(code::DECODE, "the network configuration on stdin is not valid JSON for slice-cni")
                .with_details(e.to_string())
        })?;
        // A required field that is absent (or empty) is a config of the wrong shape, code 6 as
        // for any other; one that is present but malformed is a wrong value, code 7.
        fn required(value: &str, what: &'static str) -> impl FnOnce(String) -> CniError {
            let code = if value.is_empty() { code::DECODE } else { code::INVALID_CONFIG };
            move |m| CniError::new(code, format!("config field \"{what}\": {m}"))
        }
        validate_network_name(&conf.name).map_err(required(&conf.name, "name"))?;
        validate_plugin_type(&conf.plugin_type).map_err(required(&conf.plugin_type, "type"))?;
        if let Some(slice) = &conf.slice {
            names::validate_slice_name(slice)
                .map_err(|m| CniError::new(code::INVALID_CONFIG, format!("config field \"slice\": {m}")))?;
        }
        if let Some(name) = &conf.slice_interface {
            crate::spec::validate_ifname(name)
                .map_err(|m| CniError::new(code::INVALID_CONFIG, format!("config field \"sliceInterface\": {m}")))?;
        }
        if let Some(prev) = &conf.prev_result
            && !prev.is_object()
        {
            return Err(CniError::new(code::INVALID_CONFIG, "prevResult must be a JSON object"));
        }
        Ok(conf)
    }

    /// Settles where the paths come from. Chained, the config is the node's own conflist: its
    /// path keys win over `node`'s. As a Multus delegate the config is a NAD that a namespace
    /// user may write, so its path keys are dropped (and listed in `ignored_path_keys`): a NAD
    /// must never choose which node state grants membership, which IPAM store hands out
    /// addresses, or which file root appends to.
    #[must_use]
    pub fn with_node_paths(mut self, node: &NodePaths) -> Self {
        if self.standalone() {
            let given = [&mut self.state_dir, &mut self.ipam_dir, &mut self.status_dir, &mut self.log_file];
            for (key, field) in PATH_KEYS.into_iter().zip(given) {
                if field.take().is_some() {
                    self.ignored_path_keys.push(key);
                }
            }
        }
        let NodePaths { state_dir, ipam_dir, status_dir, log_file } = node;
        for (field, node) in [
            (&mut self.state_dir, state_dir),
            (&mut self.ipam_dir, ipam_dir),
            (&mut self.status_dir, status_dir),
            (&mut self.log_file, log_file),
        ] {
            if field.is_none() {
                field.clone_from(node);
            }
        }
        self
    }

    /// Node-state dir (config `stateDir`, default `/run/slicenet`).
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| names::DEFAULT_STATE_DIR.into())
    }

    /// IPAM dir (config `ipamDir`, default `/var/lib/slicenet/ipam`).
    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam_dir.clone().unwrap_or_else(|| names::DEFAULT_IPAM_DIR.into())
    }

    /// Network-status records dir (config `statusDir`, default `network-status` next to the
    /// IPAM dir: `/var/lib/slicenet/network-status`).
    pub fn status_dir(&self) -> PathBuf {
        if let Some(dir) = &self.status_dir {
            return dir.clone();
        }
        let ipam = self.ipam_dir();
        ipam.parent().map_or_else(|| ipam.join(STATUS_DIR_NAME), |p| p.join(STATUS_DIR_NAME))
    }

    /// Standalone mode is a Multus delegate: the config names its slice.
    pub fn standalone(&self) -> bool {
        self.slice.is_some()
    }

    /// The pod's annotations, as the runtime passed them.
    pub fn annotations(&self) -> Option<&BTreeMap<String, String>> {
        self.runtime_config.pod_annotations.as_ref()
    }
}

/// Checks a network name as the CNI spec (1.1.0, "Configuration format") requires it:
/// present, starting with a letter or digit, then letters, digits, '_', '.' and '-'. Absent and
/// empty are one case: `name` is `#[serde(default)]` so that the refusal names the field
/// precisely instead of serde's generic "missing field". GC releases the allocations recorded
/// under this name, so an empty name must never get that far.
fn validate_network_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("missing or empty; the CNI spec requires a network name".into());
    }
    let starts_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if starts_ok && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(format!(
            "network name {name:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        ))
    }
}

/// Checks `type`: present, and a file name (the spec: no characters a path forbids, such as '/').
/// Any name is accepted, as the binary may be installed under another one.
fn validate_plugin_type(plugin_type: &str) -> std::result::Result<(), String> {
    if plugin_type.is_empty() {
        return Err("missing or empty; the CNI spec requires the plugin type (its binary's name)".into());
    }
    if plugin_type == "." || plugin_type == ".." || plugin_type.contains(['/', '\\', '\0']) {
        return Err(format!("plugin type {plugin_type:?} is not a file name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_conf_with_runtime_config() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"lab","type":"slice-cni","stateDir":"/tmp/s",
                "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"slicenet.io/slice":"blue"}},
                "prevResult":{"interfaces":[]},"unknownKey":1}"#,
        )
        .unwrap();
        assert!(!conf.standalone());
        assert_eq!(conf.annotations().unwrap()["slicenet.io/slice"], "blue");
        assert_eq!(conf.ipam_dir(), PathBuf::from("/var/lib/slicenet/ipam"));
        assert_eq!(conf.status_dir(), PathBuf::from("/var/lib/slicenet/network-status"));
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","ipamDir":"/lab/n1/ipam"}"#).unwrap();
        assert_eq!(conf.status_dir(), PathBuf::from("/lab/n1/network-status"));
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","statusDir":"/s"}"#).unwrap();
        assert_eq!(conf.status_dir(), PathBuf::from("/s"));
    }

    #[test]
    fn a_delegate_config_never_chooses_a_path() {
        let node = NodePaths::from_lookup(|k| match k {
            "SLICENET_STATE_DIR" => Some("/lab/n1/state".into()),
            "SLICENET_CNI_LOG_FILE" => Some("/lab/n1/cni.log".into()),
            _ => None,
        })
        .unwrap();
        let nad = br#"{"cniVersion":"1.0.0","name":"x","type":"slice-cni","slice":"blue",
            "stateDir":"/tmp/evil","ipamDir":"/tmp/fresh","statusDir":"/etc","logFile":"/etc/passwd"}"#;
        let conf = NetConf::parse(nad).unwrap().with_node_paths(&node);
        assert_eq!(conf.ignored_path_keys, PATH_KEYS);
        assert_eq!(conf.state_dir(), PathBuf::from("/lab/n1/state"));
        assert_eq!(conf.ipam_dir(), PathBuf::from(names::DEFAULT_IPAM_DIR));
        assert_eq!(conf.status_dir(), PathBuf::from(names::DEFAULT_STATUS_DIR));
        assert_eq!(conf.log_file, Some(PathBuf::from("/lab/n1/cni.log")));

        // Chained, the conflist is the node's: its keys win, the environment fills the rest.
        let conflist = br#"{"cniVersion":"1.0.0","name":"x","type":"slice-cni","ipamDir":"/lab/n1/ipam"}"#;
        let conf = NetConf::parse(conflist).unwrap().with_node_paths(&node);
        assert!(conf.ignored_path_keys.is_empty());
        assert_eq!(conf.state_dir(), PathBuf::from("/lab/n1/state"));
        assert_eq!(conf.ipam_dir(), PathBuf::from("/lab/n1/ipam"));

        let e = NodePaths::from_lookup(|k| (k == "SLICENET_IPAM_DIR").then(|| "relative/ipam".into())).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("SLICENET_IPAM_DIR"), "{e}");
    }

    #[test]
    fn bad_configs() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, code::DECODE);
        assert_eq!(NetConf::parse(br#"{"name":"x"}"#).unwrap_err().code, code::DECODE);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","slice":"Bad/Name"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("\"slice\""), "{e}");
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":[1]}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    /// The spec requires `name` and `type`; a config without them was accepted (issue 10).
    #[test]
    fn name_and_type_are_required_and_checked() {
        for (conf, field, want) in [
            (r#"{"cniVersion":"1.1.0"}"#, "\"name\"", code::DECODE),
            (r#"{"cniVersion":"1.1.0","type":"slice-cni"}"#, "\"name\"", code::DECODE),
            (r#"{"cniVersion":"1.1.0","name":"","type":"slice-cni"}"#, "\"name\"", code::DECODE),
            (r#"{"cniVersion":"1.1.0","name":"-lab","type":"slice-cni"}"#, "\"name\"", code::INVALID_CONFIG),
            (r#"{"cniVersion":"1.1.0","name":"a b","type":"slice-cni"}"#, "\"name\"", code::INVALID_CONFIG),
            (r#"{"cniVersion":"1.1.0","name":"lab"}"#, "\"type\"", code::DECODE),
            (r#"{"cniVersion":"1.1.0","name":"lab","type":""}"#, "\"type\"", code::DECODE),
            (r#"{"cniVersion":"1.1.0","name":"lab","type":"../bin/sh"}"#, "\"type\"", code::INVALID_CONFIG),
            (r#"{"cniVersion":"1.1.0","name":"lab","type":".."}"#, "\"type\"", code::INVALID_CONFIG),
        ] {
            let e = NetConf::parse(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code, want, "{conf}: {e}");
            assert!(e.msg.starts_with(&format!("config field {field}")), "{conf}: {e}");
        }
        // A JSON null is not a string: decoding fails (code 6), as for any mistyped field.
        let e = NetConf::parse(br#"{"cniVersion":"1.1.0","name":null,"type":"slice-cni"}"#).unwrap_err();
        assert_eq!(e.code, code::DECODE, "{e}");
        let conf = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"k8s-pod_network.1","type":"slice-cni"}"#).unwrap();
        assert_eq!((conf.name.as_str(), conf.plugin_type.as_str()), ("k8s-pod_network.1", "slice-cni"));
    }
}
