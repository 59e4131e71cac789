//! The join file: what `slicectl join` hands to `slicectl install worker --join`, so that nobody
//! builds a hub kubeconfig by hand.
//!
//! It holds the cluster's name, the hub API server's URL (as the member cluster's pods reach
//! it), the hub's CA certificate and the worker's first hub token (a ServiceAccount token bound
//! in time, which the worker renews itself). The token is a credential: the file is written
//! with mode 0600 and read only when it is not readable by others (as ssh treats a key).
//!
//! [`JoinFile::kubeconfig`] writes exactly the kubeconfig the hand-made path builds with
//! `kubectl config set-cluster hub …; set-credentials slicenet-worker-<cluster> …; set-context
//! hub …; use-context hub` (the same names, the same key order), so the manifests of `install
//! worker --join` and of `install worker --hub-kubeconfig` are the same bytes.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The `kind` of a join file.
pub const KIND: &str = "SlicenetJoin";
/// The `apiVersion` of a join file.
pub const API_VERSION: &str = "slicenet.io/v1alpha1";
/// The name of the kubeconfig's cluster and context for the hub.
pub const HUB_CONTEXT: &str = "hub";

/// What `slicectl join` writes and `slicectl install worker --join` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinFile {
    pub api_version: String,
    pub kind: String,
    /// The member cluster's name, as registered on the hub.
    pub cluster: String,
    /// The hub API server's URL as the member cluster's pods reach it.
    pub hub_server: String,
    /// The hub's CA certificate(s), PEM, base64 (a kubeconfig's `certificate-authority-data`).
    pub certificate_authority_data: String,
    /// The worker's hub token (a ServiceAccount token bound in time).
    pub token: String,
}

impl JoinFile {
    /// A join file of the current version.
    #[must_use]
    pub fn new(cluster: &str, hub_server: &str, certificate_authority_data: &str, token: &str) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            cluster: cluster.to_owned(),
            hub_server: hub_server.to_owned(),
            certificate_authority_data: certificate_authority_data.to_owned(),
            token: token.to_owned(),
        }
    }

    /// The user name of the worker in the kubeconfig.
    #[must_use]
    pub fn user(&self) -> String {
        format!("{}-{}", crate::install::WORKER_NAME, self.cluster)
    }

    /// Checks what `install worker` relies on.
    ///
    /// # Errors
    /// Names the field that is wrong.
    pub fn check(&self) -> Result<()> {
        if self.kind != KIND || self.api_version != API_VERSION {
            bail!(
                "not a join file of this slicectl: kind {:?}, apiVersion {:?} (want {KIND:?}, {API_VERSION:?})",
                self.kind,
                self.api_version
            );
        }
        crate::install::check_cluster_name(&self.cluster)?;
        if !self.hub_server.starts_with("https://") {
            bail!("hubServer {:?} is not an https:// URL", self.hub_server);
        }
        if self.token.trim().is_empty() {
            bail!("the join file has no token");
        }
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(self.certificate_authority_data.trim())
            .context("certificateAuthorityData is not base64")?;
        Ok(())
    }

    /// The worker's hub kubeconfig, as `kubectl config set-cluster/set-credentials/set-context/
    /// use-context` writes it (same names, same key order).
    #[must_use]
    pub fn kubeconfig(&self) -> String {
        let user = self.user();
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: {HUB_CONTEXT}\n\
             contexts:\n- context:\n    cluster: {HUB_CONTEXT}\n    user: {user}\n  name: {HUB_CONTEXT}\n\
             current-context: {HUB_CONTEXT}\nkind: Config\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            ca = self.certificate_authority_data.trim(),
            server = self.hub_server,
            token = self.token.trim(),
        )
    }

    /// Writes the file with mode 0600 (replacing an older one atomically: a temporary file
    /// beside it, renamed).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = yaml_serde::to_string(self).context("serialising the join file")?;
        let name = path.file_name().and_then(|n| n.to_str()).context("the join file path has no file name")?;
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let comment = format!(
            "# slicenet join file for cluster {:?}: holds a hub token (see docs/security.md).\n\
             # Use: slicectl install worker --join {} | kubectl apply --server-side -f -\n",
            self.cluster,
            path.display()
        );
        file.write_all(comment.as_bytes())
            .and_then(|()| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }

    /// Reads and checks a join file; refuses one that others can read.
    ///
    /// # Errors
    /// When the file cannot be read, is readable by group or others, or is not a valid join file.
    pub fn read(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading join file {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "join file {} has mode {mode:03o}: it holds a hub token, make it private (chmod 600 {})",
                path.display(),
                path.display()
            );
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading join file {}", path.display()))?;
        let file: Self =
            yaml_serde::from_str(&text).with_context(|| format!("join file {} is not valid", path.display()))?;
        file.check().with_context(|| format!("join file {}", path.display()))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinFile {
        JoinFile::new("east", "https://hub.example:6443", "Q0E=", "a.b.c")
    }

    #[test]
    fn written_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("east.join");
        sample().write(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(JoinFile::read(&path).unwrap(), sample());
        // Replaced in place, still private.
        JoinFile { token: "d.e.f".into(), ..sample() }.write(&path).unwrap();
        assert_eq!(JoinFile::read(&path).unwrap().token, "d.e.f");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = JoinFile::read(&path).unwrap_err();
        assert!(format!("{e:#}").contains("chmod 600"), "{e:#}");
    }

    #[test]
    fn bad_files_are_refused_with_the_field() {
        let cases = [
            (JoinFile { kind: "Config".into(), ..sample() }, "not a join file"),
            (JoinFile { cluster: "East".into(), ..sample() }, "cluster name"),
            (JoinFile { hub_server: "http://hub".into(), ..sample() }, "not an https:// URL"),
            (JoinFile { token: " ".into(), ..sample() }, "no token"),
            (JoinFile { certificate_authority_data: "%%".into(), ..sample() }, "not base64"),
        ];
        for (file, want) in cases {
            let e = file.check().unwrap_err();
            assert!(format!("{e:#}").contains(want), "{want}: {e:#}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.join");
        std::fs::write(&path, "kind: SlicenetJoin\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(format!("{:#}", JoinFile::read(&path).unwrap_err()).contains("is not valid"));
        assert!(format!("{:#}", JoinFile::read(&dir.path().join("none")).unwrap_err()).contains("reading join file"));
    }

    #[test]
    fn kubeconfig_is_usable_by_the_worker() {
        let creds = crate::kubeconfig::for_worker(&sample().kubeconfig(), None).unwrap();
        assert_eq!(creds.token.as_deref(), Some("a.b.c"));
        assert!(creds.kubeconfig.contains("server: https://hub.example:6443"), "{}", creds.kubeconfig);
    }
}
