//! What the validating webhook needs to know of the hub besides the object under review: every
//! other `SliceConfig` (namespace claims) and the `MemberCluster`s (pod and service CIDRs).
//!
//! [`StaticHub`] serves tests. [`DirHub`] reads JSON manifests from a directory on every request
//! (SliceConfig writes are rare, so freshness beats caching). [`crate::kube_hub::KubeHub`] reads
//! them from the hub's API server (`slice-webhooks --hub-api`, as `slicectl install hub` runs it).

use std::path::{Path, PathBuf};

use serde_json::Value;
use slice_api::crd::{MemberCluster, SliceConfig};

/// Why the hub's view could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a SliceConfig or MemberCluster manifest: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("the hub's {kind}s have not been listed from the API server yet")]
    NotSynced { kind: &'static str },
}

/// The hub's objects, as the validating webhook sees them.
pub trait HubView: Send + Sync {
    /// Every SliceConfig (the one under review may be among them).
    ///
    /// # Errors
    /// When the view cannot be read.
    fn slice_configs(&self) -> Result<Vec<SliceConfig>, HubError>;

    /// Every MemberCluster.
    ///
    /// # Errors
    /// When the view cannot be read.
    fn member_clusters(&self) -> Result<Vec<MemberCluster>, HubError>;

    /// Whether the view can answer (for `/readyz`); sources that read on demand always can.
    fn ready(&self) -> bool {
        true
    }
}

/// A fixed view.
#[derive(Debug, Clone, Default)]
pub struct StaticHub {
    pub slices: Vec<SliceConfig>,
    pub clusters: Vec<MemberCluster>,
}

impl HubView for StaticHub {
    fn slice_configs(&self) -> Result<Vec<SliceConfig>, HubError> {
        Ok(self.slices.clone())
    }

    fn member_clusters(&self) -> Result<Vec<MemberCluster>, HubError> {
        Ok(self.clusters.clone())
    }
}

/// `*.json` manifests in a directory, each one SliceConfig or MemberCluster (told apart by
/// `kind`; other kinds are ignored).
#[derive(Debug, Clone)]
pub struct DirHub {
    dir: PathBuf,
}

impl DirHub {
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn manifests(&self, kind: &str) -> Result<Vec<(PathBuf, Value)>, HubError> {
        let read = |path: &Path, source| HubError::Read { path: path.to_owned(), source };
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| read(&self.dir, e))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| read(&path, e))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| HubError::Decode { path: path.clone(), reason: e.to_string() })?;
            if value.get("kind").and_then(Value::as_str) == Some(kind) {
                out.push((path, value));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, HubError> {
        self.manifests(kind)?
            .into_iter()
            .map(|(path, v)| serde_json::from_value(v).map_err(|e| HubError::Decode { path, reason: e.to_string() }))
            .collect()
    }
}

impl HubView for DirHub {
    fn slice_configs(&self) -> Result<Vec<SliceConfig>, HubError> {
        self.typed("SliceConfig")
    }

    fn member_clusters(&self) -> Result<Vec<MemberCluster>, HubError> {
        self.typed("MemberCluster")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_hub_reads_both_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let hub = DirHub::new(dir.path().join("missing"));
        assert!(hub.slice_configs().unwrap().is_empty());
        let hub = DirHub::new(dir.path());
        std::fs::write(
            dir.path().join("blue.json"),
            r#"{"apiVersion":"slicenet.io/v1alpha1","kind":"SliceConfig","metadata":{"name":"blue"},"spec":{"sliceSubnet":"10.80.0.0/16"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c1.json"),
            r#"{"apiVersion":"slicenet.io/v1alpha1","kind":"MemberCluster","metadata":{"name":"c1"},"spec":{"podCidrs":["10.244.0.0/16"]}}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        assert_eq!(hub.slice_configs().unwrap()[0].metadata.name.as_deref(), Some("blue"));
        assert_eq!(hub.member_clusters().unwrap()[0].spec.pod_cidrs, ["10.244.0.0/16"]);
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        assert!(matches!(hub.slice_configs(), Err(HubError::Decode { .. })));
    }
}
