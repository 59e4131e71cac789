//! The hub kubeconfig that a worker mounts from a Secret: checked and, with `--hub-server`,
//! pointed at an address that the member cluster's pods can reach.
//!
//! A kubeconfig that works on an admin's machine often does not work inside a pod: it names
//! files (`certificate-authority`, `client-key`, …) that the pod does not have, runs an `exec`
//! credential plugin that the image does not have, or points at `https://127.0.0.1:…` (kind).
//! Those are refused or fixed here rather than found out from a crash-looping worker.

use thiserror::Error;
use yaml_serde::Value;

/// Why a hub kubeconfig cannot be used by a worker.
#[derive(Debug, Error)]
pub enum Error {
    #[error("the hub kubeconfig is not YAML: {0}")]
    Yaml(#[from] yaml_serde::Error),
    #[error("the hub kubeconfig has no current-context (set one with `kubectl config use-context`)")]
    NoCurrentContext,
    #[error("the hub kubeconfig has no {what} named {name:?}")]
    Missing { what: &'static str, name: String },
    #[error(
        "the hub kubeconfig's {entry} refers to the file {field} = {path:?}, which the worker pod does not have: \
         embed it (`kubectl config view --raw --minify --flatten`)"
    )]
    FileReference { entry: String, field: &'static str, path: String },
    #[error(
        "the hub kubeconfig's user {0:?} runs an exec or auth-provider credential plugin, which the worker image \
         does not have: use a ServiceAccount token (see `slicectl install worker-hub-access`)"
    )]
    Plugin(String),
    #[error("--hub-server {0:?} is not an https:// URL")]
    BadServer(String),
}

/// Fields of a kubeconfig that name files.
const FILE_FIELDS: &[&str] = &["certificate-authority", "client-certificate", "client-key", "tokenFile"];

/// What goes into the worker's Secret `slicenet-hub-kubeconfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCredentials {
    /// The kubeconfig; with a token, its user reads it from the token file
    /// (`slice_api::hub_credential::token_file`).
    pub kubeconfig: String,
    /// The user's token, moved out of the kubeconfig so that the worker can renew it
    /// (`slice_api::hub_credential`); `None` for another kind of credential.
    pub token: Option<String>,
}

/// Checks `raw` for use inside a pod and, with `server`, replaces the server of the current
/// context's cluster. A token of the current user moves into its own Secret key, which the
/// kubeconfig names as its `tokenFile`, so that the worker can renew it.
///
/// # Errors
/// An [`enum@Error`] that says how to fix the kubeconfig.
pub fn for_worker(raw: &str, server: Option<&str>) -> Result<WorkerCredentials, Error> {
    let mut config: Value = yaml_serde::from_str(raw)?;
    let context_name = config
        .get("current-context")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(Error::NoCurrentContext)?
        .to_owned();
    let context = named(&config, "contexts", &context_name)
        .and_then(|c| c.get("context"))
        .ok_or_else(|| Error::Missing { what: "context", name: context_name.clone() })?;
    let cluster_name = context.get("cluster").and_then(Value::as_str).unwrap_or_default().to_owned();
    let user_name = context.get("user").and_then(Value::as_str).unwrap_or_default().to_owned();

    let cluster = named(&config, "clusters", &cluster_name)
        .and_then(|c| c.get("cluster"))
        .ok_or_else(|| Error::Missing { what: "cluster", name: cluster_name.clone() })?;
    check_files(cluster, &format!("cluster {cluster_name:?}"))?;
    if let Some(user) = named(&config, "users", &user_name).and_then(|u| u.get("user")) {
        check_files(user, &format!("user {user_name:?}"))?;
        if user.get("exec").is_some() || user.get("auth-provider").is_some() {
            return Err(Error::Plugin(user_name));
        }
    } else if !user_name.is_empty() {
        return Err(Error::Missing { what: "user", name: user_name });
    }

    if let Some(server) = server {
        if !server.starts_with("https://") {
            return Err(Error::BadServer(server.to_owned()));
        }
        let cluster = named_mut(&mut config, "clusters", &cluster_name)
            .and_then(|c| c.get_mut("cluster"))
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| Error::Missing { what: "cluster", name: cluster_name.clone() })?;
        cluster.insert("server".into(), server.into());
    }
    let mut token = None;
    if let Some(user) =
        named_mut(&mut config, "users", &user_name).and_then(|u| u.get_mut("user")).and_then(Value::as_mapping_mut)
        && let Some(Value::String(value)) = user.remove("token")
    {
        user.insert("tokenFile".into(), slice_api::hub_credential::token_file().into());
        token = Some(value);
    }
    Ok(WorkerCredentials { kubeconfig: yaml_serde::to_string(&config)?, token })
}

fn check_files(entry: &Value, what: &str) -> Result<(), Error> {
    for field in FILE_FIELDS {
        if let Some(path) = entry.get(*field).and_then(Value::as_str) {
            return Err(Error::FileReference { entry: what.to_owned(), field, path: path.to_owned() });
        }
    }
    Ok(())
}

fn named<'a>(config: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    config.get(list)?.as_sequence()?.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(name))
}

fn named_mut<'a>(config: &'a mut Value, list: &str, name: &str) -> Option<&'a mut Value> {
    config.get_mut(list)?.as_sequence_mut()?.iter_mut().find(|e| e.get("name").and_then(Value::as_str) == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: &str = "apiVersion: v1
kind: Config
current-context: kind-hub
clusters:
- name: kind-hub
  cluster:
    certificate-authority-data: Q0E=
    server: https://127.0.0.1:40001
- name: other
  cluster:
    server: https://10.0.0.1
contexts:
- name: kind-hub
  context: {cluster: kind-hub, user: worker}
users:
- name: worker
  user: {token: abc}
";

    #[test]
    fn server_is_replaced_in_the_current_cluster_only() {
        let out = for_worker(KIND, Some("https://hub-control-plane:6443")).unwrap();
        let v: Value = yaml_serde::from_str(&out.kubeconfig).unwrap();
        assert_eq!(v["clusters"][0]["cluster"]["server"].as_str(), Some("https://hub-control-plane:6443"));
        assert_eq!(v["clusters"][1]["cluster"]["server"].as_str(), Some("https://10.0.0.1"));
        let same: Value = yaml_serde::from_str(&for_worker(KIND, None).unwrap().kubeconfig).unwrap();
        let want = KIND.replace("{token: abc}", "{tokenFile: /etc/slicenet/hub/token}");
        assert_eq!(same, yaml_serde::from_str::<Value>(&want).unwrap());
    }

    /// The token leaves the kubeconfig for its own key, which the kubeconfig reads as a file:
    /// the worker renews it there, and kube-rs reads the file again.
    #[test]
    fn the_token_moves_to_its_own_file() {
        let out = for_worker(KIND, None).unwrap();
        assert_eq!(out.token.as_deref(), Some("abc"));
        let v: Value = yaml_serde::from_str(&out.kubeconfig).unwrap();
        assert!(v["users"][0]["user"].get("token").is_none());
        assert_eq!(v["users"][0]["user"]["tokenFile"].as_str(), Some("/etc/slicenet/hub/token"));
        let certs = KIND.replace("{token: abc}", "{client-certificate-data: Qw==, client-key-data: Sw==}");
        let out = for_worker(&certs, None).unwrap();
        assert_eq!(out.token, None);
        assert_eq!(
            yaml_serde::from_str::<Value>(&out.kubeconfig).unwrap(),
            yaml_serde::from_str::<Value>(&certs).unwrap()
        );
    }

    #[test]
    fn unusable_kubeconfigs_are_refused_with_the_fix() {
        let e = for_worker(&KIND.replace("certificate-authority-data: Q0E=", "certificate-authority: /ca.crt"), None)
            .unwrap_err();
        assert!(e.to_string().contains("--flatten"), "{e}");
        let e = for_worker(&KIND.replace("{token: abc}", "{exec: {command: aws}}"), None).unwrap_err();
        assert!(matches!(e, Error::Plugin(_)), "{e}");
        let e = for_worker(&KIND.replace("current-context: kind-hub", "current-context: nope"), None).unwrap_err();
        assert!(e.to_string().contains("no context named \"nope\""), "{e}");
        let e = for_worker(&KIND.replace("current-context: kind-hub\n", ""), None).unwrap_err();
        assert!(matches!(e, Error::NoCurrentContext));
        assert!(matches!(for_worker(KIND, Some("http://x")).unwrap_err(), Error::BadServer(_)));
        assert!(matches!(for_worker("a: [", None).unwrap_err(), Error::Yaml(_)));
    }
}
