//! The hub's decisions on worlds built in memory. [`Server`] plays the API server just enough to
//! apply the decided actions (merge patches, finalizers holding deletions), so that sequences of
//! changes can be followed to convergence.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use slice_api::crd::{MemberClusterSpec, MemberClusterStatus, SliceConfigSpec, WORKER_FINALIZER, WorkerSliceStatus};

use super::*;
use slice_api::crd::cluster_namespace;
use slice_api::planner;

const MINUTE: Duration = Duration::from_secs(60);

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("valid test time")
}

const NOW: i64 = 1_800_000_000;

fn slice(name: &str, clusters: &[&str]) -> SliceConfig {
    let spec: SliceConfigSpec = serde_json::from_value(json!({
        "sliceSubnet": "10.80.0.0/16",
        "clusters": clusters,
        "namespaces": [{"namespace": "web"}],
    }))
    .expect("valid spec");
    let mut s = SliceConfig::new(name, spec);
    s.metadata.creation_timestamp = Some(Time(at(NOW - 100)));
    s.metadata.generation = Some(1);
    s.metadata.resource_version = Some("1".into());
    s
}

fn member(name: &str) -> MemberCluster {
    let mut c = MemberCluster::new(name, MemberClusterSpec::default());
    c.metadata.generation = Some(1);
    c.metadata.resource_version = Some("1".into());
    c.status = Some(MemberClusterStatus { last_heartbeat: Some(at(NOW - 10).to_string()), ..Default::default() });
    c
}

fn world(clusters: &[&str]) -> World {
    World { clusters: clusters.iter().map(|c| member(c)).collect(), ..World::default() }
}

/// Applies a merge patch (RFC 7386) to `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(map) = target else { unreachable!("made an object above") };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn patched<T: Serialize + serde::de::DeserializeOwned>(obj: &T, patch: &Value) -> T {
    let mut v = to_json(obj);
    merge(&mut v, patch);
    serde_json::from_value(v).expect("the patched object still parses")
}

/// Just enough of an API server to apply the hub's actions. Workers hold their WorkerSlices with
/// their finalizer when `workers_hold` is set.
struct Server {
    world: World,
    workers_hold: bool,
}

impl Server {
    fn apply(&mut self, actions: &[Action]) {
        for a in actions {
            match a {
                Action::SetFinalizers { kind: FinalizedKind::SliceConfig, name, finalizers, .. } => {
                    let i = self.world.slices.iter().position(|s| s.name_any() == *name).expect("slice exists");
                    self.world.slices[i].metadata.finalizers = Some(finalizers.clone());
                    if finalizers.is_empty() && self.world.slices[i].metadata.deletion_timestamp.is_some() {
                        self.world.slices.remove(i);
                    }
                }
                Action::SetFinalizers { kind: FinalizedKind::MemberCluster, name, finalizers, .. } => {
                    let i = self.world.clusters.iter().position(|s| s.name_any() == *name).expect("cluster exists");
                    self.world.clusters[i].metadata.finalizers = Some(finalizers.clone());
                    if finalizers.is_empty() && self.world.clusters[i].metadata.deletion_timestamp.is_some() {
                        self.world.clusters.remove(i);
                    }
                }
                Action::EnsureNamespace { .. } | Action::DeleteNamespace { .. } => {}
                Action::CreateWorkerSlice(w) => {
                    let mut w = w.clone();
                    if self.workers_hold {
                        w.metadata.finalizers = Some(vec![WORKER_FINALIZER.to_owned()]);
                    }
                    self.world.workers.push(*w);
                }
                Action::PatchWorkerSlice { namespace, name, patch } => {
                    let w = self.worker_mut(namespace, name);
                    *w = patched(w, patch);
                }
                Action::DeleteWorkerSlice { namespace, name } => {
                    if self.workers_hold {
                        self.worker_mut(namespace, name).metadata.deletion_timestamp = Some(Time(at(NOW)));
                    } else {
                        self.world
                            .workers
                            .retain(|w| !(w.namespace().as_deref() == Some(namespace) && w.name_any() == *name));
                    }
                }
                Action::PatchSliceStatus { name, patch } => {
                    let s = self.world.slices.iter_mut().find(|s| s.name_any() == *name).expect("slice exists");
                    *s = patched(s, patch);
                }
                Action::PatchClusterStatus { name, patch } => {
                    let c = self.world.clusters.iter_mut().find(|c| c.name_any() == *name).expect("cluster exists");
                    *c = patched(c, patch);
                }
                Action::CreatePeers(page) => {
                    assert!(self.world.pages.iter().all(|p| p.name_any() != page.name_any()), "created twice");
                    self.world.pages.push(*page.clone());
                }
                Action::PatchPeers { name, patch } => {
                    let p = self.world.pages.iter_mut().find(|p| p.name_any() == *name).expect("page exists");
                    *p = patched(p, patch);
                }
                Action::DeletePeers { name } => self.world.pages.retain(|p| p.name_any() != *name),
                Action::GrantPeers { role, create, .. } => {
                    let found = self.world.peer_roles.iter_mut().find(|r| r.name_any() == role.name_any());
                    match (found, create) {
                        (None, true) => self.world.peer_roles.push(*role.clone()),
                        (Some(r), false) => r.rules.clone_from(&role.rules),
                        (found, _) => {
                            panic!("Role {} created twice or patched while missing: {found:?}", role.name_any())
                        }
                    }
                }
                Action::BindPeers { binding, replace, .. } => {
                    let name = binding.name_any();
                    let found = self.world.peer_bindings.iter().position(|b| b.name_any() == name);
                    match (found, replace) {
                        (None, false) => {}
                        (Some(i), true) => drop(self.world.peer_bindings.remove(i)),
                        (found, _) => panic!("RoleBinding {name} created twice or replaced while missing: {found:?}"),
                    }
                    self.world.peer_bindings.push(*binding.clone());
                }
                Action::RevokePeers { cluster } => {
                    let name = slice_api::crd::peers_role_name(cluster);
                    self.world.peer_roles.retain(|r| r.name_any() != name);
                    self.world.peer_bindings.retain(|b| b.name_any() != name);
                }
            }
        }
    }

    fn worker_mut(&mut self, namespace: &str, name: &str) -> &mut WorkerSlice {
        self.world
            .workers
            .iter_mut()
            .find(|w| w.namespace().as_deref() == Some(namespace) && w.name_any() == name)
            .expect("worker exists")
    }

    fn worker(&self, cluster: &str, slice: &str) -> Option<&WorkerSlice> {
        let ns = cluster_namespace(cluster);
        self.world.workers.iter().find(|w| w.namespace().as_deref() == Some(ns.as_str()) && w.name_any() == slice)
    }

    /// Decides at `NOW` and applies; returns the actions.
    fn step(&mut self) -> Vec<Action> {
        let d = decide(&self.world, at(NOW), MINUTE);
        self.apply(&d.actions);
        d.actions
    }

    /// Steps until only reads are left (at most 5 times) and returns the writes of each step.
    fn converge(&mut self) -> Vec<Vec<Action>> {
        let mut steps = Vec::new();
        for _ in 0..5 {
            let writes = writes(&self.step());
            if writes.is_empty() {
                return steps;
            }
            steps.push(writes);
        }
        panic!("no convergence after 5 steps: {steps:#?}");
    }
}

fn writes(actions: &[Action]) -> Vec<Action> {
    actions.iter().filter(|a| !matches!(a, Action::EnsureNamespace { .. })).cloned().collect()
}

fn names(actions: &[Action]) -> Vec<String> {
    actions.iter().map(ToString::to_string).collect()
}

fn started(slices: Vec<SliceConfig>, clusters: &[&str], workers_hold: bool) -> Server {
    let mut server = Server { world: World { slices, ..world(clusters) }, workers_hold };
    server.converge();
    server
}

#[test]
fn a_new_slice_gets_its_finalizer_namespaces_worker_slices_and_status_in_order() {
    let mut w = world(&["c1", "c2", "c3"]);
    w.slices.push(slice("blue", &["c3", "c1", "c2"]));
    let d = decide(&w, at(NOW), MINUTE);
    assert_eq!(
        names(&d.actions),
        [
            r#"setting the finalizers of SliceConfig blue to ["slicenet.io/hub"]"#,
            r#"setting the finalizers of MemberCluster c1 to ["slicenet.io/hub"]"#,
            r#"setting the finalizers of MemberCluster c2 to ["slicenet.io/hub"]"#,
            r#"setting the finalizers of MemberCluster c3 to ["slicenet.io/hub"]"#,
            "making sure namespace slicenet-cluster-c1 exists",
            "making sure namespace slicenet-cluster-c2 exists",
            "making sure namespace slicenet-cluster-c3 exists",
            "creating WorkerSlice slicenet-cluster-c1/blue",
            "creating WorkerSlice slicenet-cluster-c2/blue",
            "creating WorkerSlice slicenet-cluster-c3/blue",
            "patching the status of SliceConfig blue",
            "patching the status of MemberCluster c1",
            "patching the status of MemberCluster c2",
            "patching the status of MemberCluster c3",
        ]
    );
    let Action::CreateWorkerSlice(c2) = &d.actions[8] else { panic!("{:?}", d.actions[8]) };
    assert_eq!(c2.labels(), &owner_labels("blue", "c2"));
    assert_eq!((c2.spec.cluster_prefix.as_str(), c2.spec.vni), ("10.80.16.0/20", planner::VNI_BASE));
    assert_eq!(c2.spec.peers.iter().map(|p| p.cluster.as_str()).collect::<Vec<_>>(), ["c1", "c3"]);
    let Action::SetFinalizers { resource_version, .. } = &d.actions[0] else { panic!() };
    assert_eq!(resource_version.as_deref(), Some("1"), "the finalizer patch is guarded by the version read");
    let Action::PatchSliceStatus { patch, .. } = &d.actions[10] else { panic!() };
    assert_eq!(patch["status"]["vni"], 4096);
    assert_eq!(patch["status"]["observedGeneration"], 1);
    assert_eq!(patch["status"]["clusters"][2]["prefix"], "10.80.32.0/20");
    assert_eq!(patch["status"]["conditions"][0]["type"], "Planned");
    assert_eq!(patch["status"]["conditions"][0]["lastTransitionTime"], at(NOW).to_string());
}

#[test]
fn a_converged_world_needs_only_reads_and_time_alone_changes_nothing() {
    let mut s = slice("blue", &["c1", "c2", "c3"]);
    s.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    let server = started(vec![s], &["c1", "c2", "c3"], true);
    assert_eq!(
        server.world.slices[0].finalizers(),
        ["example.com/keep", HUB_FINALIZER],
        "someone else's finalizer stays"
    );
    let later = decide(&server.world, at(NOW + 30), MINUTE);
    assert_eq!(writes(&later.actions), []);
    assert_eq!(later.actions.len(), 3, "one namespace check per cluster");
}

#[test]
fn an_added_namespace_patches_only_the_clusters_it_joins() {
    let mut server = started(vec![slice("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"], true);
    server.world.slices[0]
        .spec
        .namespaces
        .push(serde_json::from_value(json!({"namespace": "db", "clusters": ["c2"]})).expect("valid"));
    server.world.slices[0].metadata.generation = Some(2);
    let d = decide(&server.world, at(NOW), MINUTE);
    let w = writes(&d.actions);
    assert_eq!(
        w[0],
        Action::PatchWorkerSlice {
            namespace: "slicenet-cluster-c2".into(),
            name: "blue".into(),
            patch: json!({"spec": {"namespaces": ["db", "web"]}}),
        }
    );
    assert_eq!(names(&w[1..]), ["patching the status of SliceConfig blue"]);
    let Action::PatchSliceStatus { patch, .. } = &w[1] else { panic!() };
    assert_eq!(patch["status"]["observedGeneration"], 2);
    assert!(patch["status"].get("vni").is_none(), "only what changed: {patch}");
}

#[test]
fn a_published_gateway_key_reaches_the_peers_only() {
    let mut server = started(vec![slice("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"], true);
    let ns = cluster_namespace("c1");
    server.worker_mut(&ns, "blue").status = Some(WorkerSliceStatus {
        gateway_public_key: Some("KEY1".into()),
        gateway_endpoint: Some("198.18.1.1:31000".into()),
        ..WorkerSliceStatus::default()
    });
    let w = writes(&decide(&server.world, at(NOW), MINUTE).actions);
    assert_eq!(
        w[0],
        Action::PatchWorkerSlice {
            namespace: "slicenet-cluster-c2".into(),
            name: "blue".into(),
            patch: json!({"spec": {"peers": [
                {"cluster": "c1", "prefix": "10.80.0.0/20", "publicKey": "KEY1", "endpoint": "198.18.1.1:31000"},
                {"cluster": "c3", "prefix": "10.80.32.0/20"},
            ]}}),
        }
    );
    assert_eq!(
        names(&w[1..]),
        ["patching WorkerSlice slicenet-cluster-c3/blue", "patching the status of SliceConfig blue"],
        "c1's own WorkerSlice is not touched"
    );
    server.converge();
    assert_eq!(server.worker("c3", "blue").expect("c3").spec.peers[0].public_key.as_deref(), Some("KEY1"));
}

#[test]
fn a_dropped_cluster_loses_its_worker_slice_and_the_peers_forget_it() {
    let mut server = started(vec![slice("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"], false);
    server.world.slices[0].spec.clusters.retain(|c| c != "c2");
    let w = writes(&server.step());
    assert_eq!(
        names(&w),
        [
            "patching WorkerSlice slicenet-cluster-c1/blue",
            "patching WorkerSlice slicenet-cluster-c3/blue",
            "deleting WorkerSlice slicenet-cluster-c2/blue",
            "patching the status of SliceConfig blue",
        ]
    );
    assert!(server.worker("c2", "blue").is_none());
    assert_eq!(server.worker("c3", "blue").expect("c3").spec.cluster_prefix, "10.80.32.0/20", "not renumbered");
    assert_eq!(server.converge(), Vec::<Vec<Action>>::new());
}

#[test]
fn a_deleted_slice_keeps_its_finalizer_until_the_workers_let_go() {
    let mut server = started(vec![slice("blue", &["c1", "c2"])], &["c1", "c2"], true);
    server.world.slices[0].metadata.deletion_timestamp = Some(Time(at(NOW)));
    let w = writes(&server.step());
    assert_eq!(
        names(&w),
        [
            "deleting WorkerSlice slicenet-cluster-c1/blue",
            "deleting WorkerSlice slicenet-cluster-c2/blue",
            "patching the status of SliceConfig blue",
        ]
    );
    // The workers still hold their WorkerSlices: nothing more to do, nothing deleted twice.
    assert_eq!(writes(&server.step()), []);
    server.world.workers.retain(|w| w.spec.cluster != "c1");
    assert_eq!(writes(&server.step()), [], "one WorkerSlice is left");
    server.world.workers.clear();
    assert_eq!(
        writes(&server.step()),
        [Action::SetFinalizers {
            kind: FinalizedKind::SliceConfig,
            name: "blue".into(),
            finalizers: vec![],
            resource_version: Some("1".into()),
        }]
    );
    assert!(server.world.slices.is_empty());
}

#[test]
fn a_deleted_cluster_leaves_the_slices_then_loses_its_namespace_and_finalizer() {
    let mut server = started(vec![slice("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"], true);
    server.world.clusters[2].metadata.deletion_timestamp = Some(Time(at(NOW)));
    let d = server.step();
    assert!(!names(&d).contains(&"making sure namespace slicenet-cluster-c3 exists".to_owned()));
    assert_eq!(
        names(&writes(&d)),
        [
            "patching WorkerSlice slicenet-cluster-c1/blue",
            "patching WorkerSlice slicenet-cluster-c2/blue",
            "deleting WorkerSlice slicenet-cluster-c3/blue",
            "patching the status of SliceConfig blue",
        ]
    );
    let status = server.world.slices[0].status.as_ref().expect("status");
    let planned = slice_api::crd::condition(&status.conditions, planner::PLANNED).expect("planned");
    assert_eq!(planned.reason, "ClustersNotRegistered");
    assert_eq!(writes(&server.step()), [], "c3's worker still holds its WorkerSlice");
    server.world.workers.retain(|w| w.spec.cluster != "c3");
    assert_eq!(
        names(&writes(&server.step())),
        ["deleting namespace slicenet-cluster-c3", "setting the finalizers of MemberCluster c3 to []",]
    );
    assert_eq!(server.world.clusters.len(), 2);
}

#[test]
fn a_worker_slice_being_deleted_is_neither_patched_nor_created_again() {
    let mut server = started(vec![slice("blue", &["c1", "c2"])], &["c1", "c2"], true);
    server.worker_mut(&cluster_namespace("c2"), "blue").metadata.deletion_timestamp = Some(Time(at(NOW)));
    server.world.slices[0].spec.namespaces.push(serde_json::from_value(json!({"namespace": "db"})).expect("valid"));
    server.world.slices[0].metadata.generation = Some(2);
    assert_eq!(
        names(&writes(&server.step())),
        ["patching WorkerSlice slicenet-cluster-c1/blue", "patching the status of SliceConfig blue"]
    );
    server.world.workers.retain(|w| w.spec.cluster != "c2");
    assert_eq!(
        names(&writes(&server.step())),
        ["creating WorkerSlice slicenet-cluster-c2/blue", "patching the status of SliceConfig blue"]
    );
}

#[test]
fn worker_slices_outside_cluster_namespaces_are_not_the_hubs() {
    let mut server = started(vec![slice("blue", &["c1"])], &["c1"], false);
    let mut stray = server.world.workers[0].clone();
    stray.metadata.namespace = Some("default".into());
    stray.spec.vni = 4096 + 7;
    server.world.workers.push(stray);
    assert_eq!(writes(&server.step()), []);
}

#[test]
fn removed_optional_fields_are_patched_to_null_and_foreign_labels_stay() {
    let mut s = slice("blue", &["c1"]);
    s.spec.mtu = Some(1400);
    let mut server = started(vec![s], &["c1"], false);
    server.world.workers[0].metadata.labels.as_mut().expect("labels").insert("team".into(), "net".into());
    server.world.slices[0].spec.mtu = None;
    let w = writes(&server.step());
    let Action::PatchWorkerSlice { patch, .. } = &w[0] else { panic!("{w:?}") };
    assert_eq!(patch, &json!({"spec": {"mtu": null}}));
    assert_eq!(server.world.workers[0].spec.mtu, None);
    assert_eq!(server.world.workers[0].labels().get("team").map(String::as_str), Some("net"));
    // A hub label someone changed is put back, alone.
    server.world.workers[0].metadata.labels.as_mut().expect("labels").insert(CLUSTER_LABEL_FOR_TEST.into(), "x".into());
    let w = writes(&server.step());
    let Action::PatchWorkerSlice { patch, .. } = &w[0] else { panic!("{w:?}") };
    assert_eq!(patch, &json!({"metadata": {"labels": {CLUSTER_LABEL_FOR_TEST: "c1"}}}));
}

const CLUSTER_LABEL_FOR_TEST: &str = slice_api::crd::CLUSTER_LABEL;

#[test]
fn health_follows_the_heartbeat_and_the_hub_comes_back_when_it_goes_stale() {
    let mut server = started(vec![], &["c1", "c2"], false);
    let healthy = |server: &Server, i: usize| {
        let c = &server.world.clusters[i];
        slice_api::crd::condition(&c.status.as_ref().expect("status").conditions, crate::hub::HEALTHY)
            .expect("Healthy")
            .clone()
    };
    assert_eq!(healthy(&server, 0).status, "True");
    server.world.clusters[1].status.as_mut().expect("status").last_heartbeat = Some(at(NOW - 40).to_string());
    let d = decide(&server.world, at(NOW), MINUTE);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(21)), "c2 goes stale in 20 s");
    assert_eq!(writes(&d.actions), []);
    let d = decide(&server.world, at(NOW + 21), MINUTE);
    assert_eq!(names(&writes(&d.actions)), ["patching the status of MemberCluster c2"]);
    server.apply(&d.actions);
    let c2 = healthy(&server, 1);
    assert_eq!((c2.status.as_str(), c2.reason.as_str()), ("False", "HeartbeatStale"));
    assert_eq!(c2.last_transition_time, Some(at(NOW + 21).to_string()));
    assert_eq!(healthy(&server, 0).last_transition_time, Some(at(NOW).to_string()));
}

#[test]
fn a_cluster_without_status_gets_only_its_condition_written() {
    let mut w = world(&["c1"]);
    w.clusters[0].status = None;
    w.clusters[0].metadata.finalizers = Some(vec![HUB_FINALIZER.to_owned()]);
    let d = decide(&w, at(NOW), MINUTE);
    let Some(Action::PatchClusterStatus { patch, .. }) = d.actions.last() else { panic!("{:?}", d.actions) };
    assert_eq!(
        patch,
        &json!({"status": {"conditions": [{
            "type": "Healthy", "status": "Unknown", "reason": "NoHeartbeat",
            "message": "the cluster's worker has not reported yet",
            "lastTransitionTime": at(NOW).to_string(), "observedGeneration": 1,
        }]}}),
        "no empty gatewayAddresses over what the worker may have written meanwhile"
    );
    assert_eq!(d.requeue_after, None);
}

#[test]
fn vnis_stay_unique_across_slices_planned_together() {
    let mut server = started(vec![slice("blue", &["c1"]), slice("red", &["c1"])], &["c1"], false);
    let mut vnis: Vec<u32> = server.world.workers.iter().map(|w| w.spec.vni).collect();
    vnis.sort_unstable();
    assert_eq!(vnis, [4096, 4097]);
    server.world.slices.push(slice("green", &["c1"]));
    server.converge();
    let green = server.worker("c1", "green").expect("green");
    assert_eq!(green.spec.vni, 4098);
}

#[test]
fn merge_diff_carries_only_changes_and_nulls_removals() {
    let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2], "gone": true});
    let new = json!({"a": 1, "b": {"c": 2, "d": 4}, "l": [1], "new": "x"});
    assert_eq!(merge_diff(&old, &new), Some(json!({"b": {"d": 4}, "l": [1], "new": "x", "gone": null})));
    assert_eq!(merge_diff(&old, &old), None);
    assert_eq!(merge_diff(&Value::Null, &new), Some(new.clone()));
    let mut applied = old.clone();
    merge(&mut applied, &merge_diff(&old, &new).expect("differs"));
    assert_eq!(applied, new);
}

/// (reason, type, regarding kind/name, the index of the action it waits for) of each notice.
fn notices(d: &Decision) -> Vec<(&'static str, &'static str, String, usize)> {
    d.notices
        .iter()
        .map(|(i, n)| {
            let r = &n.regarding;
            let what = format!("{}/{}", r.kind.as_deref().unwrap_or(""), r.name.as_deref().unwrap_or(""));
            (n.reason, n.type_.as_str(), what, *i)
        })
        .collect()
}

#[test]
fn notices_come_from_changes_and_wait_for_their_action() {
    let mut w = world(&["c1", "c2"]);
    w.slices.push(slice("blue", &["c1", "c2"]));
    let d = decide(&w, at(NOW), MINUTE);
    assert_eq!(
        notices(&d),
        [
            ("ClusterJoined", "Normal", "MemberCluster/c1".into(), 1),
            ("ClusterJoined", "Normal", "MemberCluster/c2".into(), 2),
            ("WorkerSliceCreated", "Normal", "SliceConfig/blue".into(), 5),
            ("WorkerSliceCreated", "Normal", "SliceConfig/blue".into(), 6),
            ("SlicePlanned", "Normal", "SliceConfig/blue".into(), 7),
            ("ClusterHealthy", "Normal", "MemberCluster/c1".into(), 8),
            ("ClusterHealthy", "Normal", "MemberCluster/c2".into(), 9),
        ]
    );
    let created = &d.notices[2].1;
    assert_eq!(created.related.as_ref().and_then(|r| r.namespace.as_deref()), Some("slicenet-cluster-c1"));
    assert_eq!(created.namespace(), "default", "SliceConfigs are cluster-scoped");
    assert_eq!(d.notices[4].1.note, "2 member clusters");

    // Converged: nothing to say, at any later time.
    let server = started(vec![slice("blue", &["c1", "c2"])], &["c1", "c2"], true);
    assert_eq!(notices(&decide(&server.world, at(NOW + 30), MINUTE)), []);
}

#[test]
fn a_refused_plan_a_stale_cluster_and_readiness_are_announced_once() {
    let mut server = started(vec![slice("blue", &["c1", "c2"])], &["c1", "c2"], true);
    // Three clusters where only two fit: refused (the slice keeps running as it was).
    let s = &mut server.world.slices[0];
    s.spec = serde_json::from_value(json!({
        "sliceSubnet": "10.80.0.0/16", "maxClusters": 2, "clusters": ["c1", "c2", "c3"],
        "namespaces": [{"namespace": "web"}],
    }))
    .expect("spec");
    server.world.clusters.push(member("c3"));
    let d = decide(&server.world, at(NOW), MINUTE);
    let refused: Vec<_> = d.notices.iter().filter(|(_, n)| n.reason == "SliceRefused").collect();
    assert_eq!(refused.len(), 1, "{:?}", notices(&d));
    assert_eq!(refused[0].1.type_.as_str(), "Warning");
    assert!(refused[0].1.note.contains("maxClusters is 2"), "{}", refused[0].1.note);
    server.apply(&d.actions);
    let again = decide(&server.world, at(NOW), MINUTE);
    assert!(again.notices.iter().all(|(_, n)| n.reason != "SliceRefused"), "once: {:?}", notices(&again));

    // A heartbeat going stale: unhealthy once; fresh again: healthy once.
    let mut server = started(vec![slice("blue", &["c1"])], &["c1"], true);
    server.world.clusters[0].status.as_mut().unwrap().last_heartbeat = Some(at(NOW - 61).to_string());
    let d = decide(&server.world, at(NOW), MINUTE);
    assert_eq!(notices(&d), [("ClusterUnhealthy", "Warning", "MemberCluster/c1".into(), d.actions.len() - 1)]);
    server.apply(&d.actions);
    assert_eq!(notices(&decide(&server.world, at(NOW + 5), MINUTE)), []);
    server.world.clusters[0].status.as_mut().unwrap().last_heartbeat = Some(at(NOW).to_string());
    let d = decide(&server.world, at(NOW), MINUTE);
    assert_eq!(notices(&d), [("ClusterHealthy", "Normal", "MemberCluster/c1".into(), d.actions.len() - 1)]);

    // The workers report ready: the slice is ready, once; one stops: not ready, a warning.
    let mut server = started(vec![slice("blue", &["c1"])], &["c1"], true);
    let ready = |ok: bool| WorkerSliceStatus {
        conditions: vec![Condition::new("Ready", ok, if ok { "Ready" } else { "TunnelsDown" }, "")],
        ..WorkerSliceStatus::default()
    };
    server.world.workers[0].status = Some(ready(true));
    let d = decide(&server.world, at(NOW), MINUTE);
    assert_eq!(notices(&d), [("SliceReady", "Normal", "SliceConfig/blue".into(), d.actions.len() - 1)]);
    server.apply(&d.actions);
    assert_eq!(notices(&decide(&server.world, at(NOW), MINUTE)), []);
    server.world.workers[0].status = Some(ready(false));
    let d = decide(&server.world, at(NOW), MINUTE);
    assert_eq!(notices(&d), [("SliceNotReady", "Warning", "SliceConfig/blue".into(), d.actions.len() - 1)]);
}

#[test]
fn failed_actions_are_warnings_about_the_object_they_are_for() {
    let mut w = world(&["c1"]);
    w.slices.push(slice("blue", &["c1"]));
    w.slices[0].metadata.uid = Some("uid-blue".into());
    let d = decide(&w, at(NOW), MINUTE);
    let create = d.actions.iter().find(|a| matches!(a, Action::CreateWorkerSlice(_))).expect("a create");
    let error = super::super::Error::NamespaceTerminating("slicenet-cluster-c1".into());
    let n = failure_notice(create, &w, &error);
    assert_eq!((n.reason, n.type_.as_str()), ("NamespaceTerminating", "Warning"));
    assert_eq!(n.regarding.uid.as_deref(), Some("uid-blue"), "a WorkerSlice not created: its SliceConfig");
    let ensure = d.actions.iter().find(|a| matches!(a, Action::EnsureNamespace { .. })).expect("a namespace");
    assert_eq!(action_subject(ensure, &w).kind.as_deref(), Some("MemberCluster"));
}

// The scoped decision ([`HubIndex`], fed each change as a watch reports it) against the whole
// one ([`decide`]) on the same world: after any change, and through convergence, both make the
// same writes (namespaces aside: the whole decision makes sure of every one), the same Events
// and the same requeue; a heartbeat that keeps a cluster healthy plans nothing, writes nothing.

mod scoped {
    use proptest::prelude::*;

    use super::*;

    const CLUSTERS: [&str; 4] = ["c0", "c1", "c2", "c3"];
    const SLICES: [&str; 3] = ["s0", "s1", "s2"];

    #[derive(Debug, Clone)]
    pub(super) enum Change {
        /// A slice created, or its members set (bit mask).
        Members(usize, u8),
        /// A slice deleted (it carries the hub finalizer, so it waits).
        DeleteSlice(usize),
        /// A worker reports: gateway key (shared pool), endpoint, readiness.
        Report {
            s: usize,
            c: usize,
            key: usize,
            endpoint: bool,
            ready: bool,
        },
        /// A worker's heartbeat, `age` seconds before the decision.
        Heartbeat(usize, i64),
        /// A cluster registers, or starts leaving.
        Register(usize),
        Leave(usize),
        /// Time goes on by this many seconds (heartbeats go stale).
        Wait(i64),
        /// Someone deletes a cluster's peer RoleBinding, binds it to another account, or
        /// deletes its peer Role; or deletes a slice's first page.
        DeleteBinding(usize),
        Rebind(usize),
        DeleteRole(usize),
        DeletePage(usize),
    }

    pub(super) fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0..3usize, any::<u8>()).prop_map(|(s, m)| Change::Members(s, m)),
            (0..3usize).prop_map(Change::DeleteSlice),
            (0..3usize, 0..4usize, 0..3usize, any::<bool>(), any::<bool>())
                .prop_map(|(s, c, key, endpoint, ready)| Change::Report { s, c, key, endpoint, ready }),
            (0..4usize, 0..90i64).prop_map(|(c, age)| Change::Heartbeat(c, age)),
            (0..4usize).prop_map(Change::Register),
            (0..4usize).prop_map(Change::Leave),
            (0..40i64).prop_map(Change::Wait),
            (0..4usize).prop_map(Change::DeleteBinding),
            (0..4usize).prop_map(Change::Rebind),
            (0..4usize).prop_map(Change::DeleteRole),
            (0..3usize).prop_map(Change::DeletePage),
        ]
    }

    /// Feeds the index every object `actions` wrote, as the hub's watches would.
    fn observe_writes(index: &mut HubIndex, server: &Server, actions: &[Action]) {
        for a in actions {
            match a {
                Action::SetFinalizers { kind: FinalizedKind::SliceConfig, name, .. }
                | Action::PatchSliceStatus { name, .. } => observe_slice(index, server, name),
                Action::SetFinalizers { kind: FinalizedKind::MemberCluster, name, .. }
                | Action::PatchClusterStatus { name, .. } => observe_cluster(index, server, name),
                Action::CreateWorkerSlice(w) => {
                    observe_worker(index, server, &w.namespace().unwrap_or_default(), &w.name_any());
                }
                Action::PatchWorkerSlice { namespace, name, .. } | Action::DeleteWorkerSlice { namespace, name } => {
                    observe_worker(index, server, namespace, name);
                }
                Action::EnsureNamespace { .. } | Action::DeleteNamespace { .. } => {}
                Action::CreatePeers(p) => observe_page(index, server, &p.name_any()),
                Action::PatchPeers { name, .. } | Action::DeletePeers { name } => observe_page(index, server, name),
                Action::GrantPeers { cluster, .. }
                | Action::BindPeers { cluster, .. }
                | Action::RevokePeers { cluster } => observe_peer_access(index, server, cluster),
            }
        }
    }

    fn observe_page(index: &mut HubIndex, server: &Server, name: &str) {
        match server.world.pages.iter().find(|p| p.name_any() == name) {
            Some(p) => index.observe_peers(p.clone()),
            None => index.forget_peers(name),
        }
    }

    fn observe_slice(index: &mut HubIndex, server: &Server, name: &str) {
        match server.world.slices.iter().find(|s| s.name_any() == name) {
            Some(s) => index.observe_slice(s.clone()),
            None => index.forget_slice(name),
        }
    }

    fn observe_cluster(index: &mut HubIndex, server: &Server, name: &str) {
        match server.world.clusters.iter().find(|c| c.name_any() == name) {
            Some(c) => index.observe_cluster(c.clone()),
            None => index.forget_cluster(name),
        }
    }

    fn observe_worker(index: &mut HubIndex, server: &Server, namespace: &str, name: &str) {
        let found =
            server.world.workers.iter().find(|w| w.namespace().as_deref() == Some(namespace) && w.name_any() == name);
        match found {
            Some(w) => index.observe_worker(w.clone()),
            None => index.forget_worker(namespace, name),
        }
    }

    /// Applies `change` to the server's world at `now` and tells the index.
    pub(super) fn apply(server: &mut Server, index: &mut HubIndex, change: &Change, now: &mut i64) {
        match *change {
            Change::Members(s, mask) => {
                let members: Vec<&str> = (0..4).filter(|i| mask & (1 << i) != 0).map(|i| CLUSTERS[i]).collect();
                match server.world.slices.iter_mut().find(|x| x.name_any() == SLICES[s]) {
                    Some(x) if x.metadata.deletion_timestamp.is_none() => {
                        x.spec.clusters = members.iter().map(|c| (*c).to_owned()).collect();
                    }
                    Some(_) => return,
                    None => server.world.slices.push(slice(SLICES[s], &members)),
                }
                observe_slice(index, server, SLICES[s]);
            }
            Change::DeleteSlice(s) => {
                let Some(x) = server.world.slices.iter_mut().find(|x| x.name_any() == SLICES[s]) else { return };
                x.metadata.deletion_timestamp = Some(Time(at(*now)));
                observe_slice(index, server, SLICES[s]);
            }
            Change::Report { s, c, key, endpoint, ready } => {
                let Some(w) = server.world.workers.iter_mut().find(|w| {
                    w.namespace().as_deref() == Some(cluster_namespace(CLUSTERS[c]).as_str())
                        && w.name_any() == SLICES[s]
                }) else {
                    return;
                };
                w.status = Some(WorkerSliceStatus {
                    gateway_public_key: Some(format!("key-{key}")),
                    gateway_endpoint: endpoint.then(|| format!("198.18.0.{}:51820", c + 1)),
                    conditions: vec![Condition::new("Ready", ready, if ready { "Up" } else { "TunnelsDown" }, "")],
                    ..WorkerSliceStatus::default()
                });
                observe_worker(index, server, &cluster_namespace(CLUSTERS[c]), SLICES[s]);
            }
            Change::Heartbeat(c, age) => {
                let Some(m) = server.world.clusters.iter_mut().find(|m| m.name_any() == CLUSTERS[c]) else { return };
                m.status.get_or_insert_with(MemberClusterStatus::default).last_heartbeat =
                    Some(at(*now - age).to_string());
                observe_cluster(index, server, CLUSTERS[c]);
            }
            Change::Register(c) => {
                if server.world.clusters.iter().any(|m| m.name_any() == CLUSTERS[c]) {
                    return;
                }
                let mut m = member(CLUSTERS[c]);
                m.status =
                    Some(MemberClusterStatus { last_heartbeat: Some(at(*now).to_string()), ..Default::default() });
                server.world.clusters.push(m);
                observe_cluster(index, server, CLUSTERS[c]);
            }
            Change::Leave(c) => {
                let Some(m) = server.world.clusters.iter_mut().find(|m| m.name_any() == CLUSTERS[c]) else { return };
                m.metadata.deletion_timestamp = Some(Time(at(*now)));
                observe_cluster(index, server, CLUSTERS[c]);
            }
            Change::Wait(seconds) => *now += seconds,
            Change::DeleteBinding(c) | Change::Rebind(c) | Change::DeleteRole(c) => {
                let name = slice_api::crd::peers_role_name(CLUSTERS[c]);
                match *change {
                    Change::DeleteBinding(_) => server.world.peer_bindings.retain(|b| b.name_any() != name),
                    Change::Rebind(_) => {
                        let Some(b) = server.world.peer_bindings.iter_mut().find(|b| b.name_any() == name) else {
                            return;
                        };
                        b.subjects.iter_mut().flatten().for_each(|s| s.name = "intruder".into());
                    }
                    _ => server.world.peer_roles.retain(|r| r.name_any() != name),
                }
                observe_peer_access(index, server, CLUSTERS[c]);
            }
            Change::DeletePage(s) => {
                let name = peer_page_name(SLICES[s], 0);
                server.world.pages.retain(|p| p.name_any() != name);
                index.forget_peers(&name);
            }
        }
    }

    /// What paging leaves in `slicenet-peers`, and the WorkerSlices (not being deleted) that
    /// still point at pages.
    fn paged_leftovers(server: &Server) -> (usize, usize, usize, usize) {
        let readers = server
            .world
            .workers
            .iter()
            .filter(|w| w.spec.peer_pages.is_some() && w.metadata.deletion_timestamp.is_none())
            .count();
        let world = &server.world;
        (world.pages.len(), world.peer_roles.len(), world.peer_bindings.len(), readers)
    }

    /// With paged peers: a WorkerSlice is created or patched only after the pages of its slice
    /// and the grant of its cluster's Role in the same decision; no Role grants a page of a
    /// slice whose plan has no WorkerSlice for its cluster (checked on what the server holds
    /// once the actions are applied).
    fn paged_invariants(actions: &[Action], server: &Server) -> Result<(), TestCaseError> {
        let mut after = Server { world: server.world.clone(), workers_hold: server.workers_hold };
        after.apply(actions);
        let last_page_or_role = actions.iter().rposition(|a| {
            matches!(
                a,
                Action::CreatePeers(_)
                    | Action::PatchPeers { .. }
                    | Action::DeletePeers { .. }
                    | Action::GrantPeers { .. }
                    | Action::BindPeers { .. }
                    | Action::RevokePeers { .. }
            )
        });
        let first_worker =
            actions.iter().position(|a| matches!(a, Action::CreateWorkerSlice(_) | Action::PatchWorkerSlice { .. }));
        if let (Some(p), Some(w)) = (last_page_or_role, first_worker) {
            prop_assert!(p < w, "pages and Roles before WorkerSlices: {:?}", names(actions));
        }
        for role in &after.world.peer_roles {
            let cluster =
                role.name_any().strip_prefix(slice_api::names::PEERS_ROLE_PREFIX).unwrap_or_default().to_owned();
            for rule in role.rules.iter().flatten() {
                prop_assert!(
                    rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()),
                    "a rule without names grants every page"
                );
                for name in rule.resource_names.iter().flatten() {
                    let member = after.world.workers.iter().any(|w| {
                        w.spec.cluster == cluster && w.metadata.deletion_timestamp.is_none() && name.starts_with(&format!("{}-", w.spec.slice))
                    }) || actions.iter().any(|a| matches!(a, Action::CreateWorkerSlice(w) if w.spec.cluster == cluster && name.starts_with(&format!("{}-", w.spec.slice))));
                    let slice = name.rsplit_once('-').map_or("", |(s, _)| s);
                    let planned =
                        after.world.slices.iter().any(|s| s.name_any() == slice && s.spec.clusters.contains(&cluster));
                    prop_assert!(member || planned, "{} may read {} without being in the slice", cluster, name);
                }
            }
        }
        Ok(())
    }

    /// The writes, and each Event with the write it waits for.
    fn outcome(d: &Decision) -> (Vec<Action>, Vec<(String, Notice)>, Option<Duration>) {
        let notices = d.notices.iter().map(|(i, n)| (d.actions[*i].to_string(), n.clone())).collect();
        (writes(&d.actions), notices, d.requeue_after)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// With `inline_after`, a paged run is followed by an inline hub (`--inline-peers`) on
        /// the world it left: the scoped and the whole decisions still agree, and once they
        /// converge no page, peer Role or binding is left, and no WorkerSlice points at pages.
        #[test]
        fn the_scoped_decision_makes_the_writes_of_the_whole_one(changes in proptest::collection::vec(change(), 1..30), paged in any::<bool>(), inline_after in any::<bool>()) {
            let lists = if paged { PeerLists::Paged } else { PeerLists::Inline };
            let mut server = Server { world: world(&["c0", "c1"]), workers_hold: true };
            let mut now = NOW;
            let mut index = HubIndex::new_with(&server.world, lists, MINUTE);
            for change in &changes {
                apply(&mut server, &mut index, change, &mut now);
                converge_both(&mut server, &mut index, lists, now, &format!("after {change:?}"))?;
            }
            if paged && inline_after {
                let mut index = HubIndex::new_with(&server.world, PeerLists::Inline, MINUTE);
                converge_both(&mut server, &mut index, PeerLists::Inline, now, "inline after paged")?;
                prop_assert_eq!(paged_leftovers(&server), (0, 0, 0, 0), "pages, Roles, bindings, readers left");
            }
        }
    }

    /// Decides, step by step through convergence, with the scoped index and the whole decision,
    /// which must agree; applies the scoped one and feeds its writes back.
    fn converge_both(
        server: &mut Server,
        index: &mut HubIndex,
        lists: PeerLists,
        now: i64,
        what: &str,
    ) -> Result<(), TestCaseError> {
        for _ in 0..6 {
            let whole = decide_with(&server.world, lists, at(now), MINUTE);
            let scoped = index.decide(at(now));
            prop_assert_eq!(outcome(&scoped), outcome(&whole), "{}", what);
            if lists == PeerLists::Paged {
                paged_invariants(&scoped.actions, server)?;
            }
            // A WorkerSlice goes only into a namespace made sure of before it.
            for (i, a) in scoped.actions.iter().enumerate() {
                if let Action::CreateWorkerSlice(w) = a {
                    let ns = w.namespace().unwrap_or_default();
                    let ensured = scoped.actions[..i]
                        .iter()
                        .any(|b| matches!(b, Action::EnsureNamespace { namespace, .. } if *namespace == ns));
                    prop_assert!(ensured, "{} created before its namespace was made sure of", ns);
                }
            }
            if writes(&scoped.actions).is_empty() {
                return Ok(());
            }
            server.apply(&scoped.actions);
            observe_writes(index, server, &scoped.actions);
        }
        Ok(())
    }
}

#[test]
fn a_heartbeat_that_keeps_a_cluster_healthy_plans_nothing_and_writes_nothing() {
    let mut server = started(vec![slice("blue", &["c1", "c2"]), slice("green", &["c1"])], &["c1", "c2"], true);
    let mut index = HubIndex::new(&server.world, MINUTE);
    let (first, coverage) = index.decide_with_coverage(at(NOW));
    assert!(writes(&first.actions).is_empty(), "converged: {:?}", names(&first.actions));
    assert_eq!(coverage, Coverage { planned: 2, slices: 2, clusters: 2 });
    let planned = index.plans().planned();

    let c1 = server.world.clusters.iter_mut().find(|c| c.name_any() == "c1").expect("c1");
    c1.status.as_mut().expect("status").last_heartbeat = Some(at(NOW + 5).to_string());
    index.observe_cluster(c1.clone());
    let (d, coverage) = index.decide_with_coverage(at(NOW + 5));
    assert_eq!(coverage, Coverage { planned: 0, slices: 0, clusters: 1 }, "only c1's health is looked at");
    assert_eq!(index.plans().planned(), planned, "no slice planned");
    assert!(d.actions.is_empty(), "nothing written: {:?}", names(&d.actions));
    assert!(d.plans.is_empty());

    // 60 s on, c2's heartbeat (10 s old at the start) has gone stale and c1's has not: c2's
    // Healthy flips, still no plan.
    let (d, coverage) = index.decide_with_coverage(at(NOW + 60));
    assert_eq!(coverage, Coverage { planned: 0, slices: 0, clusters: 1 });
    assert_eq!(names(&d.actions), ["patching the status of MemberCluster c2"]);
    assert_eq!(index.plans().planned(), planned);
}

/// The WorkerSlice spec patch, built without turning unchanged lists into JSON, is the merge
/// diff of the whole specs.
#[test]
fn the_spec_patch_is_the_merge_diff_of_the_whole_specs() {
    let mut w = world(&["c1", "c2", "c3"]);
    w.slices.push(slice("blue", &["c1", "c2", "c3"]));
    let d = decide(&w, at(NOW), MINUTE);
    let base = d
        .actions
        .iter()
        .find_map(|a| match a {
            Action::CreateWorkerSlice(w) => Some(w.spec.clone()),
            _ => None,
        })
        .expect("a WorkerSlice created");
    let pod = |ns: &str| -> slice_api::policy::PodGroup {
        serde_json::from_value(json!({"namespace": ns, "addresses": ["10.80.0.5"]})).expect("a pod group")
    };
    type Edit = Box<dyn Fn(&mut WorkerSliceSpec)>;
    let variants: Vec<Edit> = vec![
        Box::new(|s| s.peers.pop().map(drop).unwrap_or_default()),
        Box::new(|s| s.peers[0].public_key = Some("k".into())),
        Box::new(|s| s.vni += 1),
        Box::new(|s| s.mtu = Some(1400)),
        Box::new(|s| s.namespaces.push("shop".into())),
        Box::new(move |s| s.pods = vec![pod("web")]),
        Box::new(|s| s.isolation = Some(slice_api::crd::WorkerIsolation { allowed_namespaces: vec!["x".into()] })),
        Box::new(|_| {}),
    ];
    for (i, a) in variants.iter().enumerate() {
        for (j, b) in variants.iter().enumerate() {
            let (mut old, mut new) = (base.clone(), base.clone());
            a(&mut old);
            b(&mut new);
            let lists = SpecLists { imports: new.imports.clone(), pods: new.pods.clone() };
            assert_eq!(
                spec_patch(&old, &new, &lists),
                merge_diff(&to_json(&old), &to_json(&new)),
                "variants {i} → {j}"
            );
        }
    }
}

/// Paged peers: a slice of three clusters converges to one page, a Role per member naming it
/// and WorkerSlices without peers; a fourth cluster joining writes the page once, grants its
/// own Role, creates its WorkerSlice and patches only the revision of the others; a cluster
/// leaving loses its Role in the same decision that deletes its WorkerSlice.
#[test]
fn paged_peers_a_join_writes_one_page_and_a_leaver_loses_its_role() {
    let paged = |server: &mut Server| -> Vec<Vec<Action>> {
        let mut steps = Vec::new();
        for _ in 0..5 {
            let d = decide_with(&server.world, PeerLists::Paged, at(NOW), MINUTE);
            server.apply(&d.actions);
            let w = writes(&d.actions);
            if w.is_empty() {
                break;
            }
            steps.push(w);
        }
        steps
    };
    let mut server = Server {
        world: World { slices: vec![slice("blue", &["c1", "c2", "c3"])], ..world(&["c1", "c2", "c3", "c4"]) },
        workers_hold: true,
    };
    paged(&mut server);
    assert_eq!(server.world.pages.len(), 1);
    assert_eq!(
        server.world.pages[0].spec.peers.iter().map(|p| p.cluster.as_str()).collect::<Vec<_>>(),
        ["c1", "c2", "c3"]
    );
    assert!(
        server
            .world
            .workers
            .iter()
            .all(|w| w.spec.peers.is_empty() && w.spec.peer_pages.as_ref().is_some_and(|p| p.pages == 1))
    );
    let roles: Vec<String> = server.world.peer_roles.iter().map(ResourceExt::name_any).collect();
    assert_eq!(roles, ["slicenet-peers-c1", "slicenet-peers-c2", "slicenet-peers-c3"]);
    assert_eq!(server.world.peer_roles[0].rules.as_ref().unwrap()[0].resource_names, Some(vec!["blue-0".to_owned()]));

    server.world.slices[0].spec.clusters.push("c4".into());
    let d = decide_with(&server.world, PeerLists::Paged, at(NOW), MINUTE);
    let join = writes(&d.actions);
    assert_eq!(
        names(&join),
        [
            "patching SlicePeers slicenet-peers/blue-0",
            "creating Role slicenet-peers/slicenet-peers-c4",
            "creating RoleBinding slicenet-peers/slicenet-peers-c4",
            "patching WorkerSlice slicenet-cluster-c1/blue",
            "patching WorkerSlice slicenet-cluster-c2/blue",
            "patching WorkerSlice slicenet-cluster-c3/blue",
            "creating WorkerSlice slicenet-cluster-c4/blue",
            "patching the status of SliceConfig blue",
        ]
    );
    for a in &join {
        if let Action::PatchWorkerSlice { patch, .. } = a {
            let spec = patch["spec"].as_object().unwrap();
            assert_eq!(spec.keys().collect::<Vec<_>>(), ["peerPages"], "only the revision: {patch}");
            assert!(patch.to_string().len() < 100, "{patch}");
        }
    }
    server.apply(&d.actions);
    paged(&mut server);

    server.world.slices[0].spec.clusters.retain(|c| c != "c2");
    let d = decide_with(&server.world, PeerLists::Paged, at(NOW), MINUTE);
    let leave = names(&writes(&d.actions));
    assert!(leave.contains(&"deleting RoleBinding and Role slicenet-peers/slicenet-peers-c2".to_owned()), "{leave:?}");
    let revoke = leave.iter().position(|a| a.contains("slicenet-peers-c2")).unwrap();
    let delete = leave.iter().position(|a| a == "deleting WorkerSlice slicenet-cluster-c2/blue").unwrap();
    assert!(revoke < delete, "access goes before the WorkerSlice: {leave:?}");
}

/// Decides with the peers where `lists` says and applies, until only reads are left.
fn converge_with(server: &mut Server, lists: PeerLists) {
    for _ in 0..5 {
        let d = decide_with(&server.world, lists, at(NOW), MINUTE);
        server.apply(&d.actions);
        if writes(&d.actions).is_empty() {
            return;
        }
    }
    panic!("no convergence after 5 steps");
}

/// Feeds the index `cluster`'s peer Role and RoleBinding as `server` holds them (or their
/// absence), as the watches would.
fn observe_peer_access(index: &mut HubIndex, server: &Server, cluster: &str) {
    let name = slice_api::crd::peers_role_name(cluster);
    match server.world.peer_roles.iter().find(|r| r.name_any() == name) {
        Some(r) => index.observe_role(r.clone()),
        None => index.forget_role(&name),
    }
    match server.world.peer_bindings.iter().find(|b| b.name_any() == name) {
        Some(b) => index.observe_binding(b.clone()),
        None => index.forget_binding(&name),
    }
}

/// Feeds the index the objects of `server` that `actions` wrote, as the watches would.
fn observe(index: &mut HubIndex, server: &Server, actions: &[Action]) {
    for a in actions {
        match a {
            Action::PatchWorkerSlice { namespace, name, .. } => {
                let w = server
                    .world
                    .workers
                    .iter()
                    .find(|w| w.namespace().as_deref() == Some(namespace) && w.name_any() == *name);
                index.observe_worker(w.expect("patched WorkerSlice").clone());
            }
            Action::DeletePeers { name } => index.forget_peers(name),
            Action::GrantPeers { cluster, .. }
            | Action::BindPeers { cluster, .. }
            | Action::RevokePeers { cluster } => observe_peer_access(index, server, cluster),
            other => panic!("not expected here: {other}"),
        }
    }
}

/// An inline hub (`--inline-peers`) after a paged one: its first decision gives every
/// WorkerSlice its peers back and deletes nothing a worker still reads; the next, once the
/// WorkerSlices' echo is in, deletes the pages and each member's RoleBinding and Role; then
/// nothing. The scoped index decides as the whole decision does at each step.
#[test]
fn an_inline_hub_after_a_paged_one_gives_the_peers_back_then_deletes_what_paging_left() {
    let mut server = Server {
        world: World { slices: vec![slice("blue", &["c1", "c2"]), slice("green", &["c2"])], ..world(&["c1", "c2"]) },
        workers_hold: true,
    };
    converge_with(&mut server, PeerLists::Paged);
    assert_eq!(
        (server.world.pages.len(), server.world.peer_roles.len(), server.world.peer_bindings.len()),
        (2, 2, 2),
        "a page per slice, a Role and a binding per member"
    );

    let mut index = HubIndex::new_with(&server.world, PeerLists::Inline, MINUTE);
    let d = index.decide(at(NOW));
    assert_eq!(d.actions, decide_with(&server.world, PeerLists::Inline, at(NOW), MINUTE).actions);
    let first = writes(&d.actions);
    assert_eq!(
        names(&first),
        [
            "patching WorkerSlice slicenet-cluster-c1/blue",
            "patching WorkerSlice slicenet-cluster-c2/blue",
            "patching WorkerSlice slicenet-cluster-c2/green",
        ],
        "the peers back first; nothing deleted while a worker reads pages"
    );
    for a in &first {
        let Action::PatchWorkerSlice { name, patch, .. } = a else { unreachable!() };
        assert_eq!(patch["spec"]["peerPages"], Value::Null, "{patch}");
        // green has one member: no peer to write back.
        assert_eq!(patch["spec"]["peers"].is_array(), name == "blue", "{patch}");
    }
    server.apply(&d.actions);
    observe(&mut index, &server, &first);

    let d = index.decide(at(NOW));
    assert_eq!(writes(&d.actions), writes(&decide_with(&server.world, PeerLists::Inline, at(NOW), MINUTE).actions));
    let second = writes(&d.actions);
    assert_eq!(
        names(&second),
        [
            "deleting SlicePeers slicenet-peers/blue-0",
            "deleting SlicePeers slicenet-peers/green-0",
            "deleting RoleBinding and Role slicenet-peers/slicenet-peers-c1",
            "deleting RoleBinding and Role slicenet-peers/slicenet-peers-c2",
        ]
    );
    server.apply(&d.actions);
    observe(&mut index, &server, &second);
    assert!(
        server.world.pages.is_empty() && server.world.peer_roles.is_empty() && server.world.peer_bindings.is_empty()
    );
    assert_eq!(names(&writes(&index.decide(at(NOW)).actions)), Vec::<String>::new());
    for w in &server.world.workers {
        assert!(w.spec.peer_pages.is_none() && w.spec.peers.len() == usize::from(w.spec.slice == "blue"), "{w:?}");
    }
}

/// Paged: a member's RoleBinding that someone deletes is created again, one bound to another
/// account is replaced (its `roleRef` cannot change, so it is deleted and created), and a
/// deleted Role comes back under the binding that stayed; through the scoped index fed as the
/// watches report the changes, as the whole decision does.
#[test]
fn a_binding_deleted_or_rebound_by_someone_is_bound_again() {
    let mut server = Server {
        world: World { slices: vec![slice("blue", &["c1", "c2"])], ..world(&["c1", "c2"]) },
        workers_hold: true,
    };
    converge_with(&mut server, PeerLists::Paged);
    let name = "slicenet-peers-c1";
    let mut index = HubIndex::new_with(&server.world, PeerLists::Paged, MINUTE);
    assert_eq!(names(&writes(&index.decide(at(NOW)).actions)), Vec::<String>::new(), "converged");
    let planned = server.world.peer_bindings.iter().find(|b| b.name_any() == name).cloned().expect("c1's binding");

    let step = |server: &mut Server, index: &mut HubIndex, want: &[&str]| {
        let d = index.decide(at(NOW));
        assert_eq!(names(&writes(&d.actions)), want);
        assert_eq!(writes(&d.actions), writes(&decide_with(&server.world, PeerLists::Paged, at(NOW), MINUTE).actions));
        server.apply(&d.actions);
        observe(index, server, &writes(&d.actions));
        assert_eq!(names(&writes(&index.decide(at(NOW)).actions)), Vec::<String>::new(), "converged again");
    };

    server.world.peer_bindings.retain(|b| b.name_any() != name);
    index.forget_binding(name);
    step(&mut server, &mut index, &["creating RoleBinding slicenet-peers/slicenet-peers-c1"]);

    let binding = server.world.peer_bindings.iter_mut().find(|b| b.name_any() == name).expect("bound again");
    binding.subjects.as_mut().expect("subjects")[0].namespace = Some("slicenet-cluster-c2".into());
    index.observe_binding(binding.clone());
    step(&mut server, &mut index, &["replacing RoleBinding slicenet-peers/slicenet-peers-c1"]);
    let binding = server.world.peer_bindings.iter().find(|b| b.name_any() == name).expect("replaced");
    assert_eq!((&binding.role_ref, &binding.subjects), (&planned.role_ref, &planned.subjects));

    // The same binding read back with an empty API group on its subject (as some servers
    // default it) binds as planned: nothing to do.
    let binding = server.world.peer_bindings.iter_mut().find(|b| b.name_any() == name).expect("bound");
    binding.subjects.as_mut().expect("subjects")[0].api_group = Some(String::new());
    index.observe_binding(binding.clone());
    step(&mut server, &mut index, &[]);

    server.world.peer_roles.retain(|r| r.name_any() != name);
    index.forget_role(name);
    step(&mut server, &mut index, &["creating Role slicenet-peers/slicenet-peers-c1"]);
}
