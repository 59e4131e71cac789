//! The hub's SliceConfigs and MemberClusters as its API server has them, for the validating
//! webhook on the hub (`slice-webhooks --hub-api`). Its requests are declared in
//! `slice_api::access::WEBHOOK_HUB`, from which `slicectl install hub` builds its RBAC.
//!
//! Two reflectors (kube-runtime: a list, then a watch; a re-list with backoff when the watch
//! breaks) keep both kinds in memory, and a review reads the in-memory stores. Why that and not
//! a list on each request behind a short cache:
//! - The review runs inside the API server's handling of a SliceConfig write, under a 5 s
//!   timeout and `failurePolicy: Fail`. A list per request adds two round trips to that same API
//!   server to every write, and turns an API server that is slow to list into refused writes.
//! - A watch brings a change in within the API server's watch latency (milliseconds), so the
//!   view is as fresh as a cache a few milliseconds old, without the cache's choice between
//!   staleness and load. Reading the stores is synchronous and in memory, which is what
//!   [`HubView`] asks for.
//! - The cost is two watches and a copy of every SliceConfig and MemberCluster: a handful of
//!   small objects on a hub.
//!
//! Neither design makes validation transactional: two SliceConfigs written at the same moment
//! can each pass without seeing the other; the hub's planner still refuses such a plan.
//!
//! The view is not ready, and every review is answered 500 (so the failure policy applies),
//! until both kinds have been listed once. After that it stays ready through watch errors,
//! answering from the last complete listing while the watcher re-lists.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use slice_api::crd::{MemberCluster, SliceConfig};

use crate::hub::{HubError, HubView};

/// The hub view kept by reflectors; see the module docs.
pub struct KubeHub {
    slices: Store<SliceConfig>,
    clusters: Store<MemberCluster>,
    slices_listed: Arc<AtomicBool>,
    clusters_listed: Arc<AtomicBool>,
}

impl Debug for KubeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeHub")
            .field("slice_configs", &self.slices.len())
            .field("member_clusters", &self.clusters.len())
            .field("ready", &self.ready())
            .finish()
    }
}

impl KubeHub {
    /// Starts the two reflectors on `client` (on the current tokio runtime) and returns the
    /// view and the task that drives them; abort the task to stop watching.
    #[must_use]
    pub fn start(client: Client) -> (Self, tokio::task::JoinHandle<()>) {
        let (slices, slices_writer) = reflector::store();
        let (clusters, clusters_writer) = reflector::store();
        let slices_listed = Arc::new(AtomicBool::new(false));
        let clusters_listed = Arc::new(AtomicBool::new(false));
        let watch_slices =
            drive(Api::<SliceConfig>::all(client.clone()), slices_writer, Arc::clone(&slices_listed), "SliceConfig");
        let watch_clusters =
            drive(Api::<MemberCluster>::all(client), clusters_writer, Arc::clone(&clusters_listed), "MemberCluster");
        let task = tokio::spawn(async move {
            tokio::join!(watch_slices, watch_clusters);
        });
        (Self { slices, clusters, slices_listed, clusters_listed }, task)
    }
}

/// Runs one reflector until its stream ends (it does not: the watcher retries for ever),
/// marking `listed` once the first listing is in the store.
async fn drive<K>(api: Api<K>, writer: reflector::store::Writer<K>, listed: Arc<AtomicBool>, kind: &'static str)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let events = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                if !listed.swap(true, Ordering::AcqRel) {
                    tracing::info!(kind, "hub view listed");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(kind, error = %err, "hub view: watch failed, retrying"),
        }
    }
}

/// Every object of `store`, by name, once it has been listed.
fn snapshot<K>(store: &Store<K>, listed: &AtomicBool, kind: &'static str) -> Result<Vec<K>, HubError>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    if !listed.load(Ordering::Acquire) {
        return Err(HubError::NotSynced { kind });
    }
    let mut objects: Vec<K> = store.state().iter().map(|o| K::clone(o)).collect();
    objects.sort_by_key(ResourceExt::name_any);
    Ok(objects)
}

impl HubView for KubeHub {
    fn slice_configs(&self) -> Result<Vec<SliceConfig>, HubError> {
        snapshot(&self.slices, &self.slices_listed, "SliceConfig")
    }

    fn member_clusters(&self) -> Result<Vec<MemberCluster>, HubError> {
        snapshot(&self.clusters, &self.clusters_listed, "MemberCluster")
    }

    fn ready(&self) -> bool {
        self.slices_listed.load(Ordering::Acquire) && self.clusters_listed.load(Ordering::Acquire)
    }
}
