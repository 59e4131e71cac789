//! `slicectl status --hub-kubeconfig FILE`: slices, member clusters and tunnels as the hub
//! sees them, and why anything is not healthy.
//!
//! [`fetch`] makes three list requests on the hub (SliceConfigs, MemberClusters, WorkerSlices
//! in every namespace), and a fourth when a WorkerSlice is paged (the hub's default): the
//! `SlicePeers` pages of `slicenet-peers`, from which each paged WorkerSlice's peers are
//! rebuilt as its worker rebuilds them. The report is `slice_api::hub_view`'s, the same the
//! lab's demo prints.

use anyhow::{Context, Result};
use kube::Client;
use kube::api::{Api, ListParams};
use slice_api::crd::{MemberCluster, PEERS_NAMESPACE, SliceConfig, SlicePeers, WorkerSlice};
pub use slice_api::hub_view::{HubView, problems, render};

/// Lists SliceConfigs, MemberClusters and WorkerSlices, sorted by name; when a WorkerSlice
/// carries `peerPages` instead of its peers, also the pages, and fills in the peers from them.
///
/// # Errors
/// The first request that fails (with its API error: forbidden, CRDs not installed, …).
pub async fn fetch(client: Client) -> Result<HubView> {
    let lp = ListParams::default();
    let slices = Api::<SliceConfig>::all(client.clone()).list(&lp).await.context("listing SliceConfigs")?.items;
    let clusters = Api::<MemberCluster>::all(client.clone()).list(&lp).await.context("listing MemberClusters")?.items;
    let workers = Api::<WorkerSlice>::all(client.clone()).list(&lp).await.context("listing WorkerSlices")?.items;
    let pages = if workers.iter().any(|w| w.spec.peer_pages.is_some()) {
        Api::<SlicePeers>::namespaced(client, PEERS_NAMESPACE)
            .list(&lp)
            .await
            .with_context(|| format!("listing SlicePeers in {PEERS_NAMESPACE}"))?
            .items
    } else {
        Vec::new()
    };
    Ok(HubView { slices, clusters, workers, pages, ..HubView::default() }.with_peers_from_pages().sorted())
}
