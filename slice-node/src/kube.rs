//! The node agent on Kubernetes (`slice-operator node-agent --kube --node NAME`, a DaemonSet):
//! the same loop as the file-driven daemon ([`crate::daemon`]), fed from the ConfigMap
//! `slicenet-node-<node>` in `slicenet-system` that the worker writes, through a watch (no
//! polling). The ConfigMap's `config.json` is a [`NodeAgentConfig`].
//!
//! - a configuration that does not parse, fails validation or names another node is rejected
//!   and the last good one stays in force (as with the file);
//! - when the ConfigMap is deleted, the agent applies the last configuration with no slices, so
//!   the node is left clean;
//! - alongside, the network-status records slice-cni keeps in chained mode are published onto
//!   their pods ([`super::network_status`]): the directory is scanned every `status_interval`,
//!   and every pod is re-checked every `resync`;
//! - and its Lease is renewed ([`crate::lease`]).

use std::path::PathBuf;
use std::time::Duration;

use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::{WatchStreamExt as _, watcher as watch};
use ::kube::{Api, Client, ResourceExt as _};
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use slice_api::crd::SYSTEM_NAMESPACE;
use slice_api::node::NodeAgentConfig;

pub use crate::daemon::{AgentState, ConfigUpdate};
use crate::daemon::{Readiness, Timing};
use crate::network_status::{self, StatusPublisher};
use slice_kube::health::Health;

/// Name of node `node`'s configuration ConfigMap (written by the worker).
#[must_use]
pub fn config_map_name(node: &str) -> String {
    format!("slicenet-node-{node}")
}

/// Key of the configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "config.json";

/// Options of the agent on Kubernetes.
#[derive(Debug, Clone)]
pub struct KubeAgentOptions {
    /// This node's name (the DaemonSet passes `spec.nodeName`).
    pub node: String,
    /// Retry interval after a failed reconcile.
    pub interval: Duration,
    /// Reconcile an unchanged configuration this often (and re-check every pod's
    /// network-status annotation).
    pub resync: Duration,
    /// slice-cni's `statusDir` on this node: chained mode's network-status records.
    pub status_dir: PathBuf,
    /// How often to scan `status_dir` for new or changed records.
    pub status_interval: Duration,
    /// The node's CNI directories, to report its chain on the agent's Lease (`None`: not
    /// checked, as in Multus mode).
    pub cni: Option<crate::lease::CniDirs>,
}

/// The configuration a ConfigMap holds for `node`.
///
/// # Errors
/// A message when the key is missing, the JSON does not parse or validate, or it is for
/// another node.
pub fn config_from_config_map(cm: &ConfigMap, node: &str) -> Result<NodeAgentConfig, String> {
    let name = cm.name_any();
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .ok_or_else(|| format!("ConfigMap {name} has no {CONFIG_KEY}"))?;
    let config: NodeAgentConfig =
        serde_json::from_str(text).map_err(|e| format!("ConfigMap {name}: {CONFIG_KEY} is not valid: {e}"))?;
    if config.node != node {
        return Err(format!("ConfigMap {name} is for node {:?}, this is node {node:?}", config.node));
    }
    config.validate().map_err(|e| format!("ConfigMap {name}: {e}"))?;
    Ok(config)
}

/// The configuration updates of `node`, from a watch on its ConfigMap (list then watch,
/// restarted with backoff when the API server drops it).
pub fn config_updates(client: Client, node: &str) -> impl Stream<Item = Result<ConfigUpdate, watcher::Error>> {
    let api = Api::<ConfigMap>::namespaced(client, SYSTEM_NAMESPACE);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", config_map_name(node)));
    let node = node.to_owned();
    let mut seen_in_init = false;
    watch(api, config).default_backoff().filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(Event::Init) => {
                seen_in_init = false;
                None
            }
            Ok(Event::InitApply(cm)) => {
                seen_in_init = true;
                Some(Ok(update_from(&cm, &node)))
            }
            // A relist that no longer finds the ConfigMap means it was deleted meanwhile.
            Ok(Event::InitDone) => (!seen_in_init).then_some(Ok(ConfigUpdate::Deleted)),
            Ok(Event::Apply(cm)) => Some(Ok(update_from(&cm, &node))),
            Ok(Event::Delete(_)) => Some(Ok(ConfigUpdate::Deleted)),
        };
        std::future::ready(out)
    })
}

fn update_from(cm: &ConfigMap, node: &str) -> ConfigUpdate {
    match config_from_config_map(cm, node) {
        Ok(c) => ConfigUpdate::Config(Box::new(c)),
        Err(e) => ConfigUpdate::Rejected(e),
    }
}

/// Runs the agent from the API until SIGTERM or SIGINT (the loop of [`crate::daemon`]). `health`
/// turns ready once the watch has listed the configuration (found or not), and stops being
/// alive when this returns.
///
/// # Errors
/// When the signal handlers cannot be set up, or the watch ends.
pub async fn run(client: Client, options: KubeAgentOptions, health: Health) -> anyhow::Result<()> {
    let publisher = StatusPublisher::new(client.clone(), options.status_dir.clone(), options.node.clone());
    let statuses = tokio::spawn(network_status::run(publisher, options.status_interval, options.resync));
    // Stops the publisher however this function returns.
    let _statuses = AbortOnDrop(statuses);
    // The agent's Lease: liveness, version and the node's CNI chain, for the worker.
    let _lease =
        AbortOnDrop(tokio::spawn(crate::lease::run(client.clone(), options.node.clone(), options.cni.clone())));
    let updates = config_updates(client, &options.node).map(|u| u.map_err(|e| format!("watch failed: {e}")));
    tracing::info!(node = %options.node, configmap = %config_map_name(&options.node), "node agent starting (kube)");
    let timing = Timing { retry: options.interval, resync: options.resync };
    crate::daemon::run(updates, timing, &health, Readiness::OnFirstAnswer).await
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(node_in_config: &str, extra: serde_json::Value) -> ConfigMap {
        let mut config = json!({
            "node": node_in_config, "underlayAddress": "198.18.1.11",
            "slices": [{"name": "blue", "vni": 100, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.16.0/26"}]
        });
        if let Some(map) = extra.as_object() {
            for (k, v) in map {
                config[k] = v.clone();
            }
        }
        serde_json::from_value(json!({
            "metadata": {"name": "slicenet-node-n1", "namespace": "slicenet-system"},
            "data": {"config.json": config.to_string()}
        }))
        .unwrap()
    }

    #[test]
    fn config_maps_are_checked() {
        let c = config_from_config_map(&cm("n1", json!({})), "n1").unwrap();
        assert_eq!(c.slices[0].name, "blue");
        assert!(config_from_config_map(&cm("n2", json!({})), "n1").unwrap_err().contains("for node \"n2\""));
        assert!(config_from_config_map(&cm("n1", json!({"bogus": 1})), "n1").unwrap_err().contains("not valid"));
        let bad_vni = json!({"slices": [{"name": "blue", "vni": 0, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.16.0/26"}]});
        assert!(config_from_config_map(&cm("n1", bad_vni), "n1").unwrap_err().contains("vni"));
        let empty: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert!(config_from_config_map(&empty, "n1").unwrap_err().contains("no config.json"));
    }

    #[test]
    fn state_keeps_the_last_good_config_and_cleans_up_on_delete() {
        let good = config_from_config_map(&cm("n1", json!({})), "n1").unwrap();
        let mut s = AgentState::default();
        s.apply(ConfigUpdate::Deleted);
        assert_eq!(s, AgentState::default(), "nothing to clean before any configuration");
        s.apply(ConfigUpdate::Config(Box::new(good.clone())));
        assert!(s.needs_reconcile);
        s.needs_reconcile = false;
        s.apply(ConfigUpdate::Config(Box::new(good.clone())));
        assert!(!s.needs_reconcile, "an unchanged configuration is not a change");
        s.apply(ConfigUpdate::Rejected("bad".into()));
        assert_eq!(s.config.as_ref(), Some(&good));
        s.apply(ConfigUpdate::Deleted);
        assert!(s.needs_reconcile);
        assert!(s.config.as_ref().unwrap().slices.is_empty());
    }
}
