//! The CNI protocol as this plugin speaks it: supported versions, commands, environment, error
//! codes and the error JSON. Spec: containernetworking/cni SPEC.md, version 1.1.0.

use std::collections::BTreeMap;

use serde::Serialize;

/// Versions whose configs and results this plugin serves. GC and STATUS exist from 1.1.0 on.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The newest version served.
pub const LATEST_VERSION: &str = "1.1.0";

/// Error codes: 1–99 are the spec's, 100+ are ours.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// No free address left in the node prefix.
    pub const PREFIX_EXHAUSTED: u32 = 100;
    /// The pod's namespace is not a member of the slice it asks for.
    pub const NOT_A_MEMBER: u32 = 101;
    /// CHECK found the attachment different from what ADD made.
    pub const CHECK_FAILED: u32 = 102;
    /// The pod's namespace is claimed by more than one slice on this node.
    pub const AMBIGUOUS_SLICE: u32 = 103;
    /// The address chosen for the pod is routed to another interface in the router namespace:
    /// another pod holds it (an IPAM store lost or tampered with), and it is not taken over.
    pub const ADDRESS_IN_USE: u32 = 104;
}

/// A CNI error: printed as JSON on stdout, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with `code` and message; details empty, version filled in by the caller.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self { cni_version: LATEST_VERSION.into(), code, msg: msg.into(), details: String::new() }
    }

    /// Adds details (the underlying cause).
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// `Result` of a CNI operation.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// A CNI command from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    ///
    /// # Errors
    /// Code 4 for an unknown command.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
                ));
            }
        })
    }

    /// The first spec version that has this command.
    pub fn since(self) -> &'static str {
        match self {
            Self::Add | Self::Del | Self::Version => "0.1.0",
            Self::Check => "0.4.0",
            Self::Status | Self::Gc => "1.1.0",
        }
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: BTreeMap<String, String>,
    pub path: Option<String>,
}

impl Env {
    /// Reads the `CNI_*` variables from a lookup function (the process environment in `main`).
    ///
    /// # Errors
    /// Code 4 when `CNI_ARGS` is malformed.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
        Ok(Self {
            command: non_empty("CNI_COMMAND"),
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS"),
            ifname: non_empty("CNI_IFNAME"),
            args: parse_args(&get("CNI_ARGS").unwrap_or_default())?,
            path: non_empty("CNI_PATH"),
        })
    }

    /// `CNI_CONTAINERID`, checked as the spec says (non-empty; letters, digits, `_`, `.`, `-`).
    ///
    /// # Errors
    /// Code 4 when missing or malformed.
    pub fn require_container_id(&self) -> Result<&str> {
        let id = self.container_id.as_deref().ok_or_else(|| missing("CNI_CONTAINERID"))?;
        let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(id)
        } else {
            Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_CONTAINERID {id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
                ),
            ))
        }
    }

    /// `CNI_IFNAME`, checked as a Linux interface name.
    ///
    /// # Errors
    /// Code 4 when missing or not a valid interface name.
    pub fn require_ifname(&self) -> Result<&str> {
        let name = self.ifname.as_deref().ok_or_else(|| missing("CNI_IFNAME"))?;
        validate_ifname(name).map_err(|m| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {m}")))?;
        Ok(name)
    }

    /// `CNI_NETNS`.
    ///
    /// # Errors
    /// Code 4 when missing.
    pub fn require_netns(&self) -> Result<&str> {
        self.netns.as_deref().ok_or_else(|| missing("CNI_NETNS"))
    }

    /// The pod's namespace from `CNI_ARGS` (`K8S_POD_NAMESPACE`).
    pub fn pod_namespace(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAMESPACE").map(String::as_str).filter(|s| !s.is_empty())
    }

    /// The pod's name from `CNI_ARGS` (`K8S_POD_NAME`).
    pub fn pod_name(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAME").map(String::as_str).filter(|s| !s.is_empty())
    }
}

fn missing(var: &str) -> CniError {
    CniError::new(code::INVALID_ENV, format!("{var} is not set; the runtime must pass it for this command"))
}

/// Checks a Linux interface name (at most 15 bytes, no '/', ':' or whitespace, not "." or "..").
///
/// # Errors
/// What is wrong with it.
pub fn validate_ifname(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("interface name {name:?} must have 1 to 15 characters"));
    }
    if name == "." || name == ".." || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("interface name {name:?} may not be '.', '..' or contain '/', ':' or spaces"));
    }
    Ok(())
}

/// Parses `CNI_ARGS` (`K=V;K=V`), in any order.
///
/// # Errors
/// Code 4 for a pair without '='.
pub fn parse_args(raw: &str) -> Result<BTreeMap<String, String>> {
    let mut args = BTreeMap::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CniError::new(code::INVALID_ENV, format!("CNI_ARGS: {pair:?} is not KEY=VALUE")))?;
        args.insert(k.to_string(), v.to_string());
    }
    Ok(args)
}

/// Checks that `version` is one this plugin serves and that `command` exists in it.
///
/// # Errors
/// Code 1 naming the supported versions.
pub fn check_version(version: &str, command: Command) -> Result<()> {
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cniVersion {version:?} is not supported; slice-cni serves {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if version_lt(version, command.since()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{command:?} needs cniVersion {} or later; the config says {version}", command.since()),
        ));
    }
    Ok(())
}

fn version_lt(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_in_any_order() {
        let a = parse_args("K8S_POD_NAME=p;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns").unwrap();
        assert_eq!(a["K8S_POD_NAMESPACE"], "ns");
        assert_eq!(a["K8S_POD_NAME"], "p");
        assert_eq!(parse_args("oops").unwrap_err().code, code::INVALID_ENV);
    }

    #[test]
    fn versions() {
        assert!(check_version("1.0.0", Command::Add).is_ok());
        assert!(check_version("0.4.0", Command::Check).is_ok());
        assert_eq!(check_version("0.3.1", Command::Add).unwrap_err().code, 1);
        assert_eq!(check_version("1.0.0", Command::Gc).unwrap_err().code, 1);
        assert!(check_version("1.1.0", Command::Status).is_ok());
    }

    #[test]
    fn env_checks() {
        let env = Env::from_lookup(|k| match k {
            "CNI_CONTAINERID" => Some("Abc_1.2-3".into()),
            "CNI_IFNAME" => Some("a/b".into()),
            _ => None,
        })
        .unwrap();
        assert!(env.require_container_id().is_ok());
        assert_eq!(env.require_ifname().unwrap_err().code, code::INVALID_ENV);
        assert_eq!(env.require_netns().unwrap_err().code, code::INVALID_ENV);
        assert!(validate_ifname("0123456789abcdef").is_err());
    }
}
