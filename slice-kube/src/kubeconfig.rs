//! An API client from a kubeconfig file, as the hub (`--kubeconfig`), the worker (its hub's and
//! its own cluster's files) and `slicectl status --hub-kubeconfig` build theirs.

use std::path::Path;

use anyhow::Context as _;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A client for the cluster of the kubeconfig at `path`, in `context` (its current context
/// when `None`).
///
/// # Errors
/// When the file cannot be read, names no usable context, or the client cannot be built.
pub async fn client_from_kubeconfig(path: &Path, context: Option<&str>) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let options = KubeConfigOptions { context: context.map(str::to_owned), ..KubeConfigOptions::default() };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .with_context(|| format!("using kubeconfig {}", path.display()))?;
    Client::try_from(config).context("building the API client")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing file and a context the file does not have are errors naming the file.
    #[tokio::test]
    async fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = client_from_kubeconfig(&missing, None).await.err().expect("no file");
        assert!(format!("{e:#}").starts_with(&format!("reading kubeconfig {}", missing.display())), "{e:#}");

        let file = dir.path().join("config");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: c\n  cluster:\n    server: https://198.18.0.1:6443\n\
             contexts:\n- name: a\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n",
        )
        .unwrap();
        client_from_kubeconfig(&file, None).await.unwrap();
        let e = client_from_kubeconfig(&file, Some("b")).await.err().expect("no context b");
        assert!(format!("{e:#}").starts_with(&format!("using kubeconfig {}", file.display())), "{e:#}");
    }
}
