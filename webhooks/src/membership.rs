//! Where the mutating webhook learns which namespaces belong to which slice in this cluster.
//!
//! At run time the worker maintains the ConfigMap [`MEMBERSHIP_CONFIGMAP`] in
//! [`MEMBERSHIP_NAMESPACE`] (its format: `slice_api::membership`), mounted into the webhook pod
//! as a directory: one file per key, the key a slice name, the value the comma-separated
//! namespaces that joined that slice here. The
//! worker lists a namespace only when it is labelled `slicenet.io/slice=<slice>` *and* the slice's
//! `SliceConfig` allows it in this cluster, so for a listed namespace the label is implied.
//! Kubernetes updates a mounted ConfigMap by swapping a `..data` symlink; [`ConfigMapDir`] simply
//! re-reads the directory when asked to [`ConfigMapDir::refresh`] and keeps the last good view
//! when a read fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use slice_api::names::SLICE_LABEL;

/// Name and namespace of the ConfigMap the worker maintains (`slice_api::membership`).
pub use slice_api::membership::{
    CONFIG_MAP_NAME as MEMBERSHIP_CONFIGMAP, CONFIG_MAP_NAMESPACE as MEMBERSHIP_NAMESPACE,
};

/// What the webhook knows about one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub labels: BTreeMap<String, String>,
    /// Slices that allow the namespace in this cluster.
    pub member_slices: Vec<String>,
}

/// Why membership is not known.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("slice membership has not been loaded yet from {0}")]
    NotLoaded(PathBuf),
    #[error("this webhook has no slice membership (started without --membership-dir): it mutates no pods")]
    NotConfigured,
    #[error("cannot read slice membership from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A source of namespace membership.
pub trait MembershipSource: Send + Sync {
    /// What is known about `namespace`.
    ///
    /// # Errors
    /// When membership is not known (the webhook then answers 500 and the failure policy applies).
    fn namespace(&self, namespace: &str) -> Result<NamespaceInfo, MembershipError>;

    /// Whether the source can answer (for `/readyz`).
    fn ready(&self) -> bool;
}

/// Fixed membership, for tests and for clusters without a worker.
#[derive(Debug, Clone, Default)]
pub struct StaticMembership {
    namespaces: BTreeMap<String, NamespaceInfo>,
}

impl StaticMembership {
    /// Builds the membership of slices → namespaces, with the label implied as in the ConfigMap.
    #[must_use]
    pub fn from_slices(slices: &BTreeMap<String, Vec<String>>) -> Self {
        Self { namespaces: invert(slices) }
    }

    /// Sets one namespace's labels and member slices explicitly.
    #[must_use]
    pub fn with_namespace(mut self, namespace: &str, info: NamespaceInfo) -> Self {
        self.namespaces.insert(namespace.to_owned(), info);
        self
    }
}

impl MembershipSource for StaticMembership {
    fn namespace(&self, namespace: &str) -> Result<NamespaceInfo, MembershipError> {
        Ok(self.namespaces.get(namespace).cloned().unwrap_or_default())
    }

    fn ready(&self) -> bool {
        true
    }
}

/// No membership at all: the webhook on the hub, which validates SliceConfigs and is sent no
/// pods. Ready (it needs nothing), but every pod review is answered 500, so a pod webhook
/// pointed at it by mistake refuses pods (`Fail`) instead of letting them in unmarked.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMembership;

impl MembershipSource for NoMembership {
    fn namespace(&self, _namespace: &str) -> Result<NamespaceInfo, MembershipError> {
        Err(MembershipError::NotConfigured)
    }

    fn ready(&self) -> bool {
        true
    }
}

/// slice → namespaces into namespace → info. A namespace listed by several slices (which the
/// validating webhook prevents) gets no implied label, so it joins none of them.
fn invert(slices: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, NamespaceInfo> {
    let mut out: BTreeMap<String, NamespaceInfo> = BTreeMap::new();
    for (slice, namespaces) in slices {
        for ns in namespaces {
            let info = out.entry(ns.clone()).or_default();
            if !info.member_slices.contains(slice) {
                info.member_slices.push(slice.clone());
            }
        }
    }
    for info in out.values_mut() {
        if let [only] = info.member_slices.as_slice() {
            info.labels.insert(SLICE_LABEL.to_owned(), only.clone());
        }
    }
    out
}

/// The ConfigMap mounted as a directory.
#[derive(Debug)]
pub struct ConfigMapDir {
    dir: PathBuf,
    current: ArcSwapOption<(BTreeMap<String, String>, BTreeMap<String, NamespaceInfo>)>,
}

impl ConfigMapDir {
    /// A source over `dir`; call [`Self::refresh`] to load it.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), current: ArcSwapOption::empty() }
    }

    /// The directory read.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory; returns whether the data changed. On error the last good view stays.
    ///
    /// # Errors
    /// When the directory or a file cannot be read.
    pub fn refresh(&self) -> Result<bool, MembershipError> {
        let read_err = |path: &Path, source| MembershipError::Read { path: path.to_owned(), source };
        let mut data = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| read_err(&self.dir, e))? {
            let entry = entry.map_err(|e| read_err(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // `..data`, `..2026_…` are the kubelet's atomic-update machinery, not keys.
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let value = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
            data.insert(name, value);
        }
        let unchanged = self.current.load().as_ref().is_some_and(|c| c.0 == data);
        if unchanged {
            return Ok(false);
        }
        let view = invert(&slice_api::membership::parse(&data));
        self.current.store(Some(Arc::new((data, view))));
        Ok(true)
    }

    /// Refreshes every `interval` until the returned task is aborted; errors are logged.
    pub fn spawn_refresh(self: &Arc<Self>, interval: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let me2 = Arc::clone(&me);
                match tokio::task::spawn_blocking(move || me2.refresh()).await {
                    Ok(Ok(true)) => tracing::info!(dir = %me.dir.display(), "slice membership reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(err)) => tracing::warn!(error = %err, "slice membership not reloaded"),
                    Err(err) => tracing::warn!(?err, "membership refresh task failed"),
                }
            }
        })
    }
}

impl MembershipSource for ConfigMapDir {
    fn namespace(&self, namespace: &str) -> Result<NamespaceInfo, MembershipError> {
        let current = self.current.load();
        let view = current.as_ref().ok_or_else(|| MembershipError::NotLoaded(self.dir.clone()))?;
        Ok(view.1.get(namespace).cloned().unwrap_or_default())
    }

    fn ready(&self) -> bool {
        self.current.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_dir_is_read_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let src = ConfigMapDir::new(dir.path());
        assert!(!src.ready());
        assert!(matches!(src.namespace("shop"), Err(MembershipError::NotLoaded(_))));
        std::fs::write(dir.path().join("blue"), "shop, cart ,").unwrap();
        std::fs::write(dir.path().join("red"), "bank,cart").unwrap();
        std::fs::create_dir(dir.path().join("..2026_11_23")).unwrap();
        assert!(src.refresh().unwrap());
        assert!(!src.refresh().unwrap(), "unchanged");
        let shop = src.namespace("shop").unwrap();
        assert_eq!(shop.member_slices, ["blue"]);
        assert_eq!(shop.labels[SLICE_LABEL], "blue");
        // Claimed twice: no implied label, so the pod joins neither.
        let cart = src.namespace("cart").unwrap();
        assert_eq!(cart.member_slices, ["blue", "red"]);
        assert!(cart.labels.is_empty());
        assert_eq!(src.namespace("other").unwrap(), NamespaceInfo::default());

        std::fs::write(dir.path().join("blue"), "").unwrap();
        assert!(src.refresh().unwrap());
        assert_eq!(src.namespace("shop").unwrap(), NamespaceInfo::default());
        // A vanished directory keeps the last good view.
        let path = dir.path().to_owned();
        drop(dir);
        assert!(src.refresh().is_err());
        assert!(src.ready());
        assert_eq!(src.namespace("bank").unwrap().member_slices, ["red"]);
        assert!(!path.exists());
    }
}
