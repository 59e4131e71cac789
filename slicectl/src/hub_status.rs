//! `slicectl status --hub-kubeconfig FILE`: slices, member clusters and tunnels as the hub
//! sees them, and why anything is not healthy.
//!
//! [`fetch`] makes three list requests on the hub (SliceConfigs, MemberClusters, WorkerSlices
//! in every namespace); the report is `slice_api::hub_view`'s, the same the lab's demo prints.

use anyhow::{Context, Result};
use kube::Client;
use kube::api::{Api, ListParams};
use slice_api::crd::{MemberCluster, SliceConfig, WorkerSlice};
pub use slice_api::hub_view::{HubView, problems, render};

/// Lists SliceConfigs, MemberClusters and WorkerSlices, sorted by name.
///
/// # Errors
/// The first request that fails (with its API error: forbidden, CRDs not installed, …).
pub async fn fetch(client: Client) -> Result<HubView> {
    let lp = ListParams::default();
    let slices = Api::<SliceConfig>::all(client.clone()).list(&lp).await.context("listing SliceConfigs")?.items;
    let clusters = Api::<MemberCluster>::all(client.clone()).list(&lp).await.context("listing MemberClusters")?.items;
    let workers = Api::<WorkerSlice>::all(client).list(&lp).await.context("listing WorkerSlices")?.items;
    Ok(HubView { slices, clusters, workers, ..HubView::default() }.sorted())
}
