//! `slicectl status --hub-kubeconfig FILE`: slices, member clusters and tunnels as the hub
//! sees them, and why anything is not healthy.
//!
//! [`fetch`] makes three list requests on the hub (SliceConfigs, MemberClusters, WorkerSlices
//! in every namespace); [`render`] and [`problems`] are pure and turn them into the report.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use slice_api::crd::{Condition, MemberCluster, SliceConfig, WorkerSlice, condition};

/// What the hub holds.
#[derive(Debug, Clone, Default)]
pub struct HubView {
    pub slices: Vec<SliceConfig>,
    pub clusters: Vec<MemberCluster>,
    pub workers: Vec<WorkerSlice>,
}

/// Lists SliceConfigs, MemberClusters and WorkerSlices, sorted by name.
///
/// # Errors
/// The first request that fails (with its API error: forbidden, CRDs not installed, …).
pub async fn fetch(client: Client) -> Result<HubView> {
    let lp = ListParams::default();
    let mut slices = Api::<SliceConfig>::all(client.clone()).list(&lp).await.context("listing SliceConfigs")?.items;
    let mut clusters =
        Api::<MemberCluster>::all(client.clone()).list(&lp).await.context("listing MemberClusters")?.items;
    let mut workers = Api::<WorkerSlice>::all(client).list(&lp).await.context("listing WorkerSlices")?.items;
    slices.sort_by_key(ResourceExt::name_any);
    clusters.sort_by_key(ResourceExt::name_any);
    workers.sort_by(|a, b| (&a.spec.slice, &a.spec.cluster).cmp(&(&b.spec.slice, &b.spec.cluster)));
    Ok(HubView { slices, clusters, workers })
}

fn status_of(conditions: &[Condition], type_: &str) -> String {
    condition(conditions, type_).map_or_else(|| "Unknown".to_owned(), |c| c.status.clone())
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The status report: slices, clusters, tunnels, then the problems.
#[must_use]
pub fn render(view: &HubView) -> String {
    let mut out = String::new();
    let slices: Vec<Vec<String>> = view
        .slices
        .iter()
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            let ready = st.clusters.iter().filter(|c| c.ready).count();
            vec![
                s.name_any(),
                s.spec.slice_subnet.clone(),
                st.vni.map_or_else(|| "-".to_owned(), |v| v.to_string()),
                format!("{ready}/{}", s.spec.clusters.len()),
                status_of(&st.conditions, "Ready"),
            ]
        })
        .collect();
    out.push_str(&table(&["SLICE", "SUBNET", "VNI", "CLUSTERS READY", "READY"], &slices));
    out.push('\n');
    let clusters: Vec<Vec<String>> = view
        .clusters
        .iter()
        .map(|c| {
            let st = c.status.clone().unwrap_or_default();
            vec![
                c.name_any(),
                status_of(&st.conditions, "Healthy"),
                st.last_heartbeat.unwrap_or_else(|| "-".to_owned()),
                if st.gateway_addresses.is_empty() { "-".to_owned() } else { st.gateway_addresses.join(",") },
            ]
        })
        .collect();
    out.push_str(&table(&["CLUSTER", "HEALTHY", "LAST HEARTBEAT", "GATEWAY ADDRESSES"], &clusters));
    out.push('\n');
    let mut tunnels = Vec::new();
    for w in &view.workers {
        for p in w.status.iter().flat_map(|s| &s.peers) {
            tunnels.push(vec![
                w.spec.slice.clone(),
                w.spec.cluster.clone(),
                p.cluster.clone(),
                p.state.clone(),
                p.last_handshake.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
    }
    out.push_str(&table(&["SLICE", "CLUSTER", "PEER", "TUNNEL", "LAST HANDSHAKE"], &tunnels));
    let problems = problems(view);
    if problems.is_empty() {
        out.push_str("\nno problems\n");
    } else {
        out.push_str("\nproblems:\n");
        for p in problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}

fn not_true(what: &str, conditions: &[Condition], type_: &str) -> Option<String> {
    match condition(conditions, type_) {
        Some(c) if c.status == "True" => None,
        Some(c) if c.message.is_empty() => Some(format!("{what}: {type_}={} ({})", c.status, c.reason)),
        Some(c) => Some(format!("{what}: {type_}={} ({}): {}", c.status, c.reason, c.message)),
        None => Some(format!("{what}: no {type_} condition yet")),
    }
}

/// Everything that is not healthy, each with the reason the controllers gave.
#[must_use]
pub fn problems(view: &HubView) -> Vec<String> {
    let mut out = Vec::new();
    for s in &view.slices {
        let what = format!("slice {}", s.name_any());
        let st = s.status.clone().unwrap_or_default();
        // Planned=False (refused: more clusters than maxClusters, a bad subnet, …) says why
        // better than the Ready=False that follows from it.
        if condition(&st.conditions, "Planned").is_some() {
            out.extend(not_true(&what, &st.conditions, "Planned"));
        }
        out.extend(not_true(&what, &st.conditions, "Ready"));
        for c in st.clusters.iter().filter(|c| !c.ready) {
            let why = if c.reason.is_empty() { "no reason given" } else { c.reason.as_str() };
            out.push(format!("{what}: cluster {} not ready: {why}", c.cluster));
        }
        for name in &s.spec.clusters {
            if !view.clusters.iter().any(|c| c.name_any() == *name) {
                out.push(format!("{what}: cluster {name} is not registered (slicectl join --cluster {name})"));
            }
        }
    }
    for c in &view.clusters {
        let st = c.status.clone().unwrap_or_default();
        out.extend(not_true(&format!("cluster {}", c.name_any()), &st.conditions, "Healthy"));
    }
    for w in &view.workers {
        let what = format!("slice {} in cluster {}", w.spec.slice, w.spec.cluster);
        let Some(st) = &w.status else {
            out.push(format!("{what}: no status from the cluster's worker yet"));
            continue;
        };
        out.extend(not_true(&what, &st.conditions, "Ready"));
        for p in st.peers.iter().filter(|p| p.state != "Up") {
            let why = if p.reason.is_empty() { String::new() } else { format!(": {}", p.reason) };
            out.push(format!("{what}: tunnel to {} is {}{why}", p.cluster, p.state));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn view() -> HubView {
        let slice: SliceConfig = serde_json::from_value(json!({
            "apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": "blue"},
            "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2", "c3"]},
            "status": {"vni": 4097,
                "clusters": [{"cluster": "c1", "index": 0, "prefix": "10.80.0.0/20", "ready": true},
                             {"cluster": "c2", "index": 1, "prefix": "10.80.16.0/20", "ready": false, "reason": "GatewayPending"}],
                "conditions": [{"type": "Planned", "status": "True", "reason": "Planned"},
                               {"type": "Ready", "status": "False", "reason": "ClustersNotReady", "message": "1 of 3 clusters ready"}]}
        }))
        .unwrap();
        let cluster = |name: &str, healthy: &str| -> MemberCluster {
            serde_json::from_value(json!({
                "apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name},
                "spec": {}, "status": {"gatewayAddresses": ["172.18.0.2"], "lastHeartbeat": "2026-11-23T20:00:00Z",
                "conditions": [{"type": "Healthy", "status": healthy, "reason": "Heartbeat"}]}
            }))
            .unwrap()
        };
        let worker: WorkerSlice = serde_json::from_value(json!({
            "apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
            "metadata": {"name": "blue", "namespace": "slicenet-cluster-c1"},
            "spec": {"slice": "blue", "cluster": "c1", "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.0.0/20",
                     "nodePrefixLength": 26, "vni": 4097},
            "status": {"peers": [{"cluster": "c2", "state": "Down", "reason": "no handshake for 180 s"},
                                 {"cluster": "c3", "state": "Up", "lastHandshake": "2026-11-23T20:00:01Z"}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Up"}]}
        }))
        .unwrap();
        let unreported: WorkerSlice = serde_json::from_value(json!({
            "apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
            "metadata": {"name": "blue", "namespace": "slicenet-cluster-c2"},
            "spec": {"slice": "blue", "cluster": "c2", "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.16.0/20",
                     "nodePrefixLength": 26, "vni": 4097}
        }))
        .unwrap();
        HubView {
            slices: vec![slice],
            clusters: vec![cluster("c1", "True"), cluster("c2", "False")],
            workers: vec![worker, unreported],
        }
    }

    #[test]
    fn problems_say_why() {
        assert_eq!(
            problems(&view()),
            [
                "slice blue: Ready=False (ClustersNotReady): 1 of 3 clusters ready",
                "slice blue: cluster c2 not ready: GatewayPending",
                "slice blue: cluster c3 is not registered (slicectl join --cluster c3)",
                "cluster c2: Healthy=False (Heartbeat)",
                "slice blue in cluster c1: tunnel to c2 is Down: no handshake for 180 s",
                "slice blue in cluster c2: no status from the cluster's worker yet",
            ]
        );
        assert!(problems(&HubView::default()).is_empty());
        let mut refused = view();
        let st = refused.slices[0].status.as_mut().unwrap();
        st.conditions[0] = Condition::new("Planned", false, "TooManyClusters", "3 clusters, maxClusters 2");
        assert_eq!(problems(&refused)[0], "slice blue: Planned=False (TooManyClusters): 3 clusters, maxClusters 2");
    }

    #[test]
    fn render_shows_tables_and_problems() {
        let text = render(&view());
        assert!(
            text.contains("SLICE  SUBNET        VNI   CLUSTERS READY  READY\nblue   10.80.0.0/16  4097  1/3"),
            "{text}"
        );
        assert!(text.contains("c2       False    2026-11-23T20:00:00Z  172.18.0.2"), "{text}");
        assert!(text.contains("blue   c1       c2    Down    -"), "{text}");
        assert!(text.contains("problems:\n- slice blue: Ready=False"), "{text}");
        assert!(render(&HubView::default()).ends_with("no problems\n"));
    }
}
