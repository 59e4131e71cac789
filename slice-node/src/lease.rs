//! The node agent's Lease (`slicenet-agent-<node>` in `slicenet-node`), as the kubelet's node
//! lease: renewed every [`AGENT_LEASE_RENEW_SECS`], it tells the worker that the agent runs,
//! which version it is and whether the CNI configuration its node's runtime uses chains
//! slice-cni. The worker sums them into the MemberCluster's status, where `slicectl diagnose`
//! and the console read them from the hub.
//!
//! The object is pure ([`lease`]); [`run`] applies it (server-side apply, field manager
//! `slice-node`) until it is aborted, logging failures and trying again at the next renewal.

use std::path::PathBuf;
use std::time::Duration;

use ::kube::api::{Patch, PatchParams};
use ::kube::{Api, Client};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use slice_api::names::{
    AGENT_CNI_ANNOTATION, AGENT_CNI_CHAINED, AGENT_LEASE_LABEL, AGENT_LEASE_PREFIX, AGENT_LEASE_RENEW_SECS,
    AGENT_LEASE_SECS, AGENT_VERSION_ANNOTATION, NODE_NAMESPACE,
};

/// The value of [`AGENT_LEASE_LABEL`] on the agents' Leases.
pub const LEASE_LABEL_VALUE: &str = "slice-node";
/// The field manager of the agent's applies.
pub const FIELD_MANAGER: &str = "slice-node";

/// The name of node `node`'s agent Lease.
#[must_use]
pub fn lease_name(node: &str) -> String {
    format!("{AGENT_LEASE_PREFIX}{node}")
}

/// Where the agent looks at its node's CNI chain: the runtime's configuration directory and
/// the CNI binaries' directory, as the DaemonSet mounts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniDirs {
    pub conf: PathBuf,
    pub bin: PathBuf,
}

/// `chained`, or why the configuration the runtime uses does not chain slice-cni
/// ([`slice_api::diagnose::cni_chain_problem`]).
#[must_use]
pub fn cni_state(dirs: &CniDirs) -> String {
    let files: Vec<(String, String)> = std::fs::read_dir(&dirs.conf)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), std::fs::read_to_string(e.path()).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    slice_api::diagnose::cni_chain_problem(&files, dirs.bin.join("slice-cni").exists())
        .unwrap_or_else(|| AGENT_CNI_CHAINED.to_owned())
}

/// The Lease node `node`'s agent applies at `now`: held by the node, renewed now, with the
/// agent's version and (when it checks) its node's CNI chain.
#[must_use]
pub fn lease(node: &str, version: &str, cni: Option<&str>, now: Timestamp) -> Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert(AGENT_VERSION_ANNOTATION.to_owned(), json!(version));
    if let Some(cni) = cni {
        annotations.insert(AGENT_CNI_ANNOTATION.to_owned(), json!(cni));
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(node),
            "namespace": NODE_NAMESPACE,
            "labels": { AGENT_LEASE_LABEL: LEASE_LABEL_VALUE },
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": AGENT_LEASE_SECS,
            // MicroTime: RFC 3339 with microseconds.
            "renewTime": format!("{now:.6}"),
        }
    })
}

/// Applies node `node`'s Lease every [`AGENT_LEASE_RENEW_SECS`] until aborted.
pub async fn run(client: Client, node: String, cni: Option<CniDirs>) {
    let api = Api::<Lease>::namespaced(client, NODE_NAMESPACE);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut tick = tokio::time::interval(Duration::from_secs(AGENT_LEASE_RENEW_SECS));
    loop {
        tick.tick().await;
        let state = cni.as_ref().map(cni_state);
        let object = lease(&node, env!("CARGO_PKG_VERSION"), state.as_deref(), Timestamp::now());
        if let Err(e) = api.patch(&lease_name(&node), &params, &Patch::Apply(&object)).await {
            tracing::warn!(error = %e, "renewing the node agent's Lease failed; tried again at the next renewal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_names_the_node_its_version_and_its_cni_chain() {
        let now: Timestamp = "2026-12-04T20:00:00.25Z".parse().unwrap();
        let l = lease("n1", "0.4.0", Some("chained"), now);
        assert_eq!(l["metadata"]["name"], "slicenet-agent-n1");
        assert_eq!(l["metadata"]["namespace"], "slicenet-node");
        assert_eq!(l["metadata"]["annotations"]["slicenet.io/version"], "0.4.0");
        assert_eq!(l["metadata"]["annotations"]["slicenet.io/cni"], "chained");
        assert_eq!(l["spec"]["holderIdentity"], "n1");
        assert_eq!(l["spec"]["renewTime"], "2026-12-04T20:00:00.250000Z");
        let typed: Lease = serde_json::from_value(l).expect("a Lease");
        assert_eq!(typed.spec.and_then(|s| s.lease_duration_seconds), Some(AGENT_LEASE_SECS));
        // Without the check (Multus mode) there is no CNI annotation.
        let multus = lease("n1", "0.4.0", None, now);
        assert!(multus["metadata"]["annotations"].get("slicenet.io/cni").is_none());
    }

    #[test]
    fn the_cni_state_is_read_from_the_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (conf, bin) = (dir.path().join("net.d"), dir.path().join("bin"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let dirs = CniDirs { conf: conf.clone(), bin: bin.clone() };
        assert_eq!(cni_state(&dirs), "the node has no CNI configuration");
        std::fs::write(
            conf.join("00-slicenet.conflist"),
            r#"{"plugins": [{"type": "bridge"}, {"type": "slice-cni"}]}"#,
        )
        .unwrap();
        assert!(cni_state(&dirs).contains("binary is not"), "{}", cni_state(&dirs));
        std::fs::write(bin.join("slice-cni"), b"").unwrap();
        assert_eq!(cni_state(&dirs), "chained");
    }
}
