//! The hub's view of the world, once for everyone who reads it: the hub's decision
//! (`slice_operator::hub::decide`), `slicectl status --hub-kubeconfig`, and the lab's control
//! plane and demo. [`render`] and [`problems`] are pure: slices, member clusters, each
//! cluster's share of each slice, tunnels, and why anything is not healthy, with the reasons
//! the controllers gave.

use std::fmt::Write as _;

use kube::ResourceExt;

use crate::crd::{Condition, MemberCluster, SliceConfig, TunnelHealth, WorkerSlice, condition};

/// What the hub holds: every SliceConfig and MemberCluster, and the WorkerSlices of every
/// namespace (only those in `slicenet-cluster-*` namespaces are the hub's; the planner ignores
/// the others).
#[derive(Debug, Clone, Default)]
pub struct HubView {
    pub slices: Vec<SliceConfig>,
    pub clusters: Vec<MemberCluster>,
    pub workers: Vec<WorkerSlice>,
    /// The slices' `SlicePeers` pages in `slicenet-peers` (a hub that pages the peers).
    pub pages: Vec<crate::crd::SlicePeers>,
    /// The Roles in `slicenet-peers` that let each member read its slices' pages.
    pub peer_roles: Vec<k8s_openapi::api::rbac::v1::Role>,
    /// The RoleBindings in `slicenet-peers` of those Roles to each member's worker.
    pub peer_bindings: Vec<k8s_openapi::api::rbac::v1::RoleBinding>,
}

impl HubView {
    /// The same view sorted as reports show it: slices and clusters by name, WorkerSlices by
    /// slice then cluster.
    #[must_use]
    pub fn sorted(mut self) -> Self {
        self.slices.sort_by_key(ResourceExt::name_any);
        self.clusters.sort_by_key(ResourceExt::name_any);
        self.workers.sort_by(|a, b| (&a.spec.slice, &a.spec.cluster).cmp(&(&b.spec.slice, &b.spec.cluster)));
        self
    }

    /// The same view with every paged WorkerSlice's `spec.peers` filled in from the pages of
    /// its slice, as its worker rebuilds them (for the reports, which read the peers there).
    #[must_use]
    pub fn with_peers_from_pages(mut self) -> Self {
        for w in &mut self.workers {
            if w.spec.peer_pages.is_some() && w.spec.peers.is_empty() {
                let pages: Vec<&crate::crd::SlicePeers> =
                    self.pages.iter().filter(|p| p.spec.slice == w.spec.slice).collect();
                w.spec.peers = crate::crd::peers_from_pages(&w.spec.cluster, pages.iter().map(|p| &p.spec.peers)).0;
            }
        }
        self
    }
}

fn status_of(conditions: &[Condition], type_: &str) -> String {
    condition(conditions, type_).map_or_else(|| "Unknown".to_owned(), |c| c.status.clone())
}

/// A plain-text table: a header, a rule under it, and rows, columns two spaces apart and padded
/// to their widest cell (counted in characters, so `…` and `─` count once). Every report of
/// slicenet is printed with it: `slicectl status`, the demo, the benchmarks.
#[must_use]
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(cell);
            if i + 1 < columns {
                s.push_str(&" ".repeat(widths[i].saturating_sub(cell.chars().count())));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "─".repeat(*w)).collect();
    out.push_str(&line(&mut rule.iter().map(String::as_str)));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
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
                // Both families of a dual-stack slice, the primary first.
                std::iter::once(s.spec.slice_subnet.as_str())
                    .chain(s.spec.secondary_slice_subnet.as_deref())
                    .collect::<Vec<_>>()
                    .join(","),
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
    let members: Vec<Vec<String>> = view
        .workers
        .iter()
        .map(|w| {
            let st = w.status.clone().unwrap_or_default();
            let nodes: Vec<String> = st.nodes.iter().map(|n| format!("{}={}", n.node, n.prefix)).collect();
            vec![
                w.spec.slice.clone(),
                w.spec.cluster.clone(),
                // Both families of a dual-stack slice.
                std::iter::once(w.spec.cluster_prefix.clone())
                    .chain(w.spec.secondary_family.as_ref().map(|f| f.cluster_prefix.clone()))
                    .collect::<Vec<_>>()
                    .join(","),
                st.gateway_endpoint.unwrap_or_else(|| "-".to_owned()),
                if nodes.is_empty() { "-".to_owned() } else { nodes.join(" ") },
                status_of(&st.conditions, "Ready"),
            ]
        })
        .collect();
    out.push_str(&table(&["SLICE", "CLUSTER", "PREFIX", "GATEWAY ENDPOINT", "NODE PREFIXES", "READY"], &members));
    out.push('\n');
    // Slices with several gateway replicas (issue 13): each replica's node, state, the peer
    // clusters it has a live tunnel to, and why it is not up or misses one.
    let replicas: Vec<Vec<String>> = view
        .workers
        .iter()
        .flat_map(|w| w.status.iter().flat_map(|s| &s.gateway_replicas).map(move |r| (w, r)))
        .map(|(w, r)| {
            vec![
                w.spec.slice.clone(),
                w.spec.cluster.clone(),
                r.ordinal.to_string(),
                r.node.clone().unwrap_or_else(|| "-".to_owned()),
                r.state.clone(),
                r.live_tunnels.map_or_else(
                    || "-".to_owned(),
                    |live| {
                        let all = usize::try_from(live).unwrap_or(usize::MAX).saturating_add(r.unreachable.len());
                        format!("{live}/{all}")
                    },
                ),
                if r.reason.is_empty() { "-".to_owned() } else { r.reason.clone() },
            ]
        })
        .collect();
    if !replicas.is_empty() {
        out.push_str(&table(
            &["SLICE", "CLUSTER", "GATEWAY REPLICA", "NODE", "STATE", "LIVE TUNNELS", "REASON"],
            &replicas,
        ));
        out.push('\n');
    }
    let mut tunnels = Vec::new();
    for w in &view.workers {
        let reported: Vec<&crate::crd::PeerTunnelStatus> = w.status.iter().flat_map(|s| &s.peers).collect();
        for p in &reported {
            let health = p.health.clone().unwrap_or_default();
            let measured = p.health.is_some();
            let figure = |f: &dyn Fn(&TunnelHealth) -> String| if measured { f(&health) } else { "-".to_owned() };
            tunnels.push(vec![
                w.spec.slice.clone(),
                w.spec.cluster.clone(),
                p.cluster.clone(),
                p.state.clone(),
                tunnel_rtt(view, &w.spec.slice, &w.spec.cluster, &p.cluster)
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
                figure(&|h| format!("{} / {}", bytes(h.rx_bytes), h.rx_packets)),
                figure(&|h| format!("{} / {}", bytes(h.tx_bytes), h.tx_packets)),
                figure(&|h| format!("{}.{} %", h.rx_loss_permille / 10, h.rx_loss_permille % 10)),
                p.last_handshake.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        // The peers the hub planned for this member that its worker has not reported (yet):
        // from the WorkerSlice's peers, inline or rebuilt from its slice's pages.
        for peer in w.spec.peers.iter().filter(|q| reported.iter().all(|p| p.cluster != q.cluster)) {
            let mut row =
                vec![w.spec.slice.clone(), w.spec.cluster.clone(), peer.cluster.clone(), "Unknown".to_owned()];
            row.push(
                tunnel_rtt(view, &w.spec.slice, &w.spec.cluster, &peer.cluster)
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            );
            row.extend(std::iter::repeat_n("-".to_owned(), 4));
            tunnels.push(row);
        }
    }
    out.push_str(&table(
        &[
            "SLICE",
            "CLUSTER",
            "PEER",
            "TUNNEL",
            "RTT",
            "RX BYTES / PKTS",
            "TX BYTES / PKTS",
            "RX LOSS",
            "LAST HANDSHAKE",
        ],
        &tunnels,
    ));
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

/// The round-trip time of the tunnel between `cluster` and `peer` in `slice`, in milliseconds:
/// as `cluster`'s gateway measured it, else as `peer`'s did (each gateway measures only the
/// handshakes it initiates, so one side may have none).
#[must_use]
pub fn tunnel_rtt(view: &HubView, slice: &str, cluster: &str, peer: &str) -> Option<u32> {
    let measured = |from: &str, to: &str| {
        view.workers
            .iter()
            .filter(|w| w.spec.slice == slice && w.spec.cluster == from)
            .flat_map(|w| w.status.iter().flat_map(|s| &s.peers))
            .filter(|p| p.cluster == to)
            .find_map(|p| p.health.as_ref().and_then(|h| h.rtt_millis))
    };
    measured(cluster, peer).or_else(|| measured(peer, cluster))
}

/// A byte count in binary units (`512 B`, `1.5 KiB`, `3.0 GiB`).
#[must_use]
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Display only: the rounding of a float is fine here.
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
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
        // Set only once the slice has exports: what member clusters reported and the hub
        // dropped (a namespace or an address that is not theirs, no ClusterSetIP left).
        if condition(&st.conditions, crate::planner::EXPORTS_ACCEPTED).is_some() {
            out.extend(not_true(&what, &st.conditions, crate::planner::EXPORTS_ACCEPTED));
        }
        // Set once a cluster's pod report was refused (issue 12's pod directory).
        if condition(&st.conditions, "PodsAccepted").is_some() {
            out.extend(not_true(&what, &st.conditions, "PodsAccepted"));
        }
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
        // A MultiNetworkPolicy the node agents refuse (they keep their previous rules).
        if condition(&st.conditions, "PoliciesAccepted").is_some() {
            out.extend(not_true(&what, &st.conditions, "PoliciesAccepted"));
        }
        for p in st.peers.iter().filter(|p| p.state != "Up") {
            let why = if p.reason.is_empty() { String::new() } else { format!(": {}", p.reason) };
            out.push(format!("{what}: tunnel to {} is {}{why}", p.cluster, p.state));
        }
        // A replica that is not up, or is up with a reason (a peer cluster it has no live
        // tunnel to, metrics that cannot be read).
        for r in st.gateway_replicas.iter().filter(|r| r.state != "Up" || !r.reason.is_empty()) {
            let why = if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) };
            out.push(format!("{what}: gateway replica {} is {}{why}", r.ordinal, r.state));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
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
                                 {"cluster": "c3", "state": "Up", "lastHandshake": "2026-11-23T20:00:01Z",
                                  "health": {"rttMillis": 4, "rxBytes": 1536, "txBytes": 100, "rxPackets": 12,
                                             "txPackets": 3, "rxLossPermille": 25}}],
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
            ..HubView::default()
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
        // A policy the node agents refuse shows under its cluster.
        let mut rejected = view();
        let st = rejected.workers[0].status.as_mut().unwrap();
        st.conditions.push(Condition::new("PoliciesAccepted", false, "PolicyRejected", "refused: shop/bad: port 0"));
        assert!(
            problems(&rejected).contains(
                &"slice blue in cluster c1: PoliciesAccepted=False (PolicyRejected): refused: shop/bad: port 0"
                    .to_owned()
            ),
            "{:?}",
            problems(&rejected)
        );
    }

    #[test]
    fn render_shows_tables_and_problems() {
        let text = render(&view());
        assert!(
            text.contains(
                "SLICE  SUBNET        VNI   CLUSTERS READY  READY\n─────  ────────────  ────  ──────────────  ─────\n\
                 blue   10.80.0.0/16  4097  1/3"
            ),
            "{text}"
        );
        assert!(text.contains("c2       False    2026-11-23T20:00:00Z  172.18.0.2"), "{text}");
        assert!(text.contains("blue   c1       c2    Down    -     -                -"), "{text}");
        assert!(
            text.contains(
                "blue   c1       c3    Up      4 ms  1.5 KiB / 12     100 B / 3        2.5 %    2026-11-23T20:00:01Z"
            ),
            "{text}"
        );
        assert!(text.contains("blue   c1       10.80.0.0/20   -                 -              True"), "{text}");
        assert!(text.contains("problems:\n- slice blue: Ready=False"), "{text}");
        assert!(render(&HubView::default()).ends_with("no problems\n"));
        // A dual-stack slice shows each cluster's prefix of both families.
        let mut dual = view();
        dual.workers[0].spec.secondary_family = Some(crate::crd::WorkerSliceFamily {
            slice_subnet: "fd00:80::/48".into(),
            cluster_prefix: "fd00:80::/52".into(),
            node_prefix_length: 120,
        });
        let text = render(&dual);
        assert!(text.contains("blue   c1       10.80.0.0/20,fd00:80::/52"), "{text}");
    }

    /// `view()` with three gateway replicas in c1: 0 reaching both peer clusters, 1 up without
    /// a live tunnel to c3, 2 not scheduled.
    pub(crate) fn with_replicas() -> HubView {
        let mut v = view();
        let replicas = json!([
            {"ordinal": 0, "node": "n1", "state": "Up", "liveTunnels": 2},
            {"ordinal": 1, "node": "n2", "state": "Up", "liveTunnels": 1, "unreachable": ["c3"],
             "reason": "no live tunnel to c3"},
            {"ordinal": 2, "state": "Pending", "reason": "not scheduled: 0/2 nodes are available"},
        ]);
        v.workers[0].status.as_mut().unwrap().gateway_replicas = serde_json::from_value(replicas).unwrap();
        v
    }

    /// Issue 13: the report shows each replica (node, state, the peer clusters it has a live
    /// tunnel to, why not) and names a replica that is not up or misses a cluster; a view
    /// without replicas has no such table.
    #[test]
    fn replicas_show_with_their_tunnels_and_their_problems() {
        let text = render(&with_replicas());
        let table = "SLICE  CLUSTER  GATEWAY REPLICA  NODE  STATE    LIVE TUNNELS  REASON\n\
                     ─────  ───────  ───────────────  ────  ───────  ────────────  ──────────────────────────────────────\n\
                     blue   c1       0                n1    Up       2/2           -\n\
                     blue   c1       1                n2    Up       1/2           no live tunnel to c3\n\
                     blue   c1       2                -     Pending  -             not scheduled: 0/2 nodes are available\n";
        assert!(text.contains(table), "{text}");
        assert!(!render(&view()).contains("GATEWAY REPLICA"), "no replicas, no table");
        let p = problems(&with_replicas());
        let replica_lines: Vec<&String> = p.iter().filter(|l| l.contains("gateway replica")).collect();
        assert_eq!(
            replica_lines,
            [
                "slice blue in cluster c1: gateway replica 1 is Up: no live tunnel to c3",
                "slice blue in cluster c1: gateway replica 2 is Pending: not scheduled: 0/2 nodes are available",
            ]
        );
    }

    /// The view of `view()` with the hub's peer entries of blue (c1, c2, c3), inline in each
    /// WorkerSlice or (`paged`) in the page `blue-0` with each WorkerSlice pointing at it.
    fn with_peers(paged: bool) -> HubView {
        let entry = |c: &str, prefix: &str| crate::crd::WorkerPeer {
            cluster: c.into(),
            prefix: prefix.into(),
            secondary_prefix: None,
            public_key: Some(format!("{c}-key")),
            endpoint: None,
            replicas: Vec::new(),
        };
        let entries = vec![entry("c1", "10.80.0.0/20"), entry("c2", "10.80.16.0/20"), entry("c3", "10.80.32.0/20")];
        let mut v = view();
        for w in &mut v.workers {
            if paged {
                let revision = crate::crd::peers_revision(&entries);
                w.spec.peer_pages = Some(crate::crd::PeerPages { pages: 1, revision });
            } else {
                w.spec.peers = entries.iter().filter(|e| e.cluster != w.spec.cluster).cloned().collect();
            }
        }
        if paged {
            let spec = crate::crd::SlicePeersSpec { slice: "blue".into(), page: 0, peers: entries };
            v.pages.push(crate::crd::SlicePeers::new(&crate::crd::peer_page_name("blue", 0), spec));
        }
        v
    }

    #[test]
    fn a_paged_view_reports_the_peers_an_inline_one_does() {
        let inline = render(&with_peers(false));
        // c1 reported both its tunnels; c2 reported nothing: its planned peers show, unknown.
        assert!(inline.contains("blue   c2       c1    Unknown  -     -"), "{inline}");
        assert!(inline.contains("blue   c2       c3    Unknown  -     -"), "{inline}");
        assert!(!inline.contains("blue   c1       c2    Unknown"), "a reported tunnel shows once: {inline}");
        let paged = with_peers(true);
        assert!(!render(&paged).contains("blue   c2       c1"), "no peer without the pages");
        let rebuilt = paged.with_peers_from_pages();
        let peers = |v: &HubView| v.workers.iter().map(|w| w.spec.peers.clone()).collect::<Vec<_>>();
        assert_eq!(peers(&rebuilt), peers(&with_peers(false)), "each member's peers, its own entry left out");
        assert_eq!(render(&rebuilt), inline);
        // Pages of another slice are not blue's.
        let mut other = with_peers(true);
        other.pages[0].spec.slice = "red".into();
        assert!(other.with_peers_from_pages().workers.iter().all(|w| w.spec.peers.is_empty()));
    }

    #[test]
    fn a_tunnels_rtt_comes_from_either_side() {
        let mut v = view();
        assert_eq!(tunnel_rtt(&v, "blue", "c1", "c3"), Some(4));
        assert_eq!(tunnel_rtt(&v, "blue", "c3", "c1"), Some(4), "c3 has no status: c1's figure");
        assert_eq!(tunnel_rtt(&v, "blue", "c1", "c2"), None);
        assert_eq!(tunnel_rtt(&v, "red", "c1", "c3"), None);
        v.workers[0].status.as_mut().unwrap().peers[1].health.as_mut().unwrap().rtt_millis = None;
        assert_eq!(tunnel_rtt(&v, "blue", "c1", "c3"), None);
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn a_dual_stack_slice_shows_both_subnets() {
        let mut dual = view();
        dual.slices[0].spec.secondary_slice_subnet = Some("fd00:80::/48".into());
        let text = render(&dual);
        assert!(text.contains("blue   10.80.0.0/16,fd00:80::/48  4097"), "{text}");
    }
}
