//! The `--kube` source: the cluster's `ServiceImport`s and MCS `EndpointSlice`s (those labelled
//! `multicluster.kubernetes.io/service-name`) read from the Kubernetes API, in every namespace.
//!
//! A periodic list, not a watch (`docs/decisions.md`): every interval both collections are
//! listed (`resourceVersion=0`, so the API server answers from its watch cache), and when the
//! objects' names and resource versions differ from the last successful list a new snapshot is
//! built and swapped in. A failed list keeps the snapshot in force; the failure is logged once
//! per streak, and its end too.
//!
//! The requests are exactly [`ACCESS`] (two `list`s, cluster-wide): `slicectl install worker`
//! turns that list into the slice-dns ClusterRole, and the tests check every request against it.

use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use slice_api::mcs::{GROUP, SERVICE_NAME_LABEL, ServiceImport};
use slice_api::rbac::{Access, Scope};

use crate::handler::SharedSnapshot;
use crate::objects::Objects;
use crate::records::{Settings, Snapshot};

/// What slice-dns does on the Kubernetes API: read-only, two lists.
pub const ACCESS: &[Access] = &[
    Access::new("list", GROUP, "serviceimports", Scope::Cluster),
    Access::new("list", "discovery.k8s.io", "endpointslices", Scope::Cluster),
];

/// The default interval between two lists.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Why a list failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list ServiceImports")]
    ServiceImports(#[source] kube::Error),
    #[error("cannot list the MCS EndpointSlices (label {SERVICE_NAME_LABEL})")]
    EndpointSlices(#[source] kube::Error),
}

/// Lists the objects slice-dns serves.
///
/// # Errors
/// When either list fails.
pub async fn list(client: &Client) -> Result<Objects, Error> {
    let any = ListParams::default().match_any();
    let imports = Api::<ServiceImport>::all(client.clone()).list(&any).await.map_err(Error::ServiceImports)?.items;
    let slices = Api::<EndpointSlice>::all(client.clone())
        .list(&any.clone().labels(SERVICE_NAME_LABEL))
        .await
        .map_err(Error::EndpointSlices)?
        .items;
    Ok(Objects { imports, slices })
}

/// One object as far as "did anything change" is concerned.
type Key = (&'static str, String, String, String);

fn keys(objects: &Objects) -> Vec<Key> {
    let key = |kind, ns: Option<String>, name: String, rv: Option<String>| {
        (kind, ns.unwrap_or_default(), name, rv.unwrap_or_default())
    };
    let mut all: Vec<Key> = objects
        .imports
        .iter()
        .map(|o| key("ServiceImport", o.namespace(), o.name_any(), o.resource_version()))
        .chain(objects.slices.iter().map(|o| key("EndpointSlice", o.namespace(), o.name_any(), o.resource_version())))
        .collect();
    all.sort_unstable();
    all
}

/// Lists when asked and says whether the records changed.
pub struct ClusterSource {
    client: Client,
    settings: Settings,
    /// The objects of the last successful list.
    last: Option<Vec<Key>>,
    /// Whether the last list failed (failures are logged once per streak).
    failing: bool,
}

impl std::fmt::Debug for ClusterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSource").field("objects", &self.last.as_ref().map(Vec::len)).finish_non_exhaustive()
    }
}

impl ClusterSource {
    #[must_use]
    pub fn new(client: Client, settings: Settings) -> Self {
        Self { client, settings, last: None, failing: false }
    }

    /// Lists both collections; `Some` snapshot when the objects differ from the last
    /// successful list (always on the first).
    ///
    /// # Errors
    /// When a list fails; the next poll tries again.
    pub async fn poll(&mut self) -> Result<Option<Snapshot>, Error> {
        let objects = list(&self.client).await?;
        let keys = keys(&objects);
        if self.last.as_ref() == Some(&keys) {
            return Ok(None);
        }
        self.last = Some(keys);
        Ok(Some(Snapshot::build(&objects.imports, &objects.slices, &self.settings)))
    }

    /// [`Self::poll`], logging a failure once per streak and its end.
    pub async fn poll_logged(&mut self) -> Option<Snapshot> {
        match self.poll().await {
            Ok(snapshot) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("the Kubernetes API answers again");
                }
                snapshot
            }
            Err(error) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::error!(
                        error = %slice_api::error_chain::chain(&error),
                        "the records loaded before are still served; trying again every interval"
                    );
                }
                None
            }
        }
    }

    /// The first snapshot: lists every `interval` until a list succeeds (a server that started
    /// with nothing would answer NXDOMAIN for every service, which resolvers cache).
    pub async fn first(&mut self, interval: Duration) -> Snapshot {
        loop {
            if let Some(snapshot) = self.poll_logged().await {
                return snapshot;
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// Lists every `interval` for ever, storing each new snapshot into `shared`.
pub async fn watch(mut source: ClusterSource, shared: SharedSnapshot, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Some(snapshot) = source.poll_logged().await {
            crate::reload::log_snapshot(&snapshot, &"the Kubernetes API");
            shared.store(std::sync::Arc::new(snapshot));
        }
    }
}
