//! The hub controller against a scripted API server (kube-rs's mock service): the exact
//! requests of each scenario, in order, with their bodies' essentials, each checked against
//! the hub's declared access list.
//!
//! [`Hub`] holds the API server's objects as JSON between reconciles and takes in what the hub
//! really sent (merge patches, creates, deletes), so each scenario starts from the world the
//! previous reconciles made.

mod hub_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_support::{Declared, Exchange, Seen, apply_merge_patch, run_script, serve_with};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use slice_api::crd::{MemberClusterStatus, WORKER_FINALIZER, set_condition};
use slice_operator::access::HUB;
use slice_operator::health::Health;
use slice_operator::hub::{self, HubOptions, Schedule, healthy_condition};

const HUB_ACCESS: Declared<'static> = Declared { access: HUB, own_namespace: Some("slicenet-system") };
const NOW: i64 = 1_800_000_000;
const TIMEOUT: Duration = Duration::from_secs(60);
const SC: &str = "/apis/slicenet.io/v1alpha1/sliceconfigs";
const MC: &str = "/apis/slicenet.io/v1alpha1/memberclusters";
const WS: &str = "/apis/slicenet.io/v1alpha1/workerslices";
const FM: &str = "fieldManager=slicenet-hub";
const PAGES: &str = "/apis/slicenet.io/v1alpha1/namespaces/slicenet-peers/slicepeers";
const PEER_ROLES: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/slicenet-peers/roles";
const PEER_BINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/slicenet-peers/rolebindings";

fn now() -> Timestamp {
    Timestamp::from_second(NOW).expect("valid time")
}

fn time(second: i64) -> String {
    Timestamp::from_second(second).expect("valid time").to_string()
}

fn ns(cluster: &str) -> String {
    format!("slicenet-cluster-{cluster}")
}

fn ws(cluster: &str, slice: &str) -> String {
    format!("/apis/slicenet.io/v1alpha1/namespaces/{}/workerslices/{slice}", ns(cluster))
}

fn ws_collection(cluster: &str) -> String {
    format!("/apis/slicenet.io/v1alpha1/namespaces/{}/workerslices", ns(cluster))
}

/// A SliceConfig as the API server returns it.
fn slice_config(name: &str, clusters: &[&str]) -> Value {
    json!({
        "apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "10", "generation": 1,
                     "creationTimestamp": time(NOW - 3600)},
        "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": clusters, "namespaces": [{"namespace": "web"}]},
    })
}

/// A registered, finalized MemberCluster with a fresh heartbeat and the `Healthy` condition the
/// hub wrote at its first sight of it.
fn member_cluster(name: &str) -> Value {
    let mut status = MemberClusterStatus { last_heartbeat: Some(time(NOW - 10)), ..MemberClusterStatus::default() };
    let (mut healthy, _) = healthy_condition(Some(&status), now(), Duration::from_secs(60));
    healthy.observed_generation = Some(1);
    set_condition(&mut status.conditions, healthy, &time(NOW - 600));
    json!({
        "apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster",
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "5", "generation": 1,
                     "finalizers": ["slicenet.io/hub"]},
        "spec": {},
        "status": status,
    })
}

fn list(kind: &str, items: &[Value]) -> Value {
    json!({"apiVersion": "slicenet.io/v1alpha1", "kind": kind, "metadata": {"resourceVersion": "100"}, "items": items})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

/// The hub cluster's objects between reconciles, the hub's context (its event log lives on
/// from pass to pass) and the event requests of every pass.
#[derive(Debug, Clone)]
struct Hub {
    slices: Vec<Value>,
    clusters: Vec<Value>,
    workers: Vec<Value>,
    namespaces: BTreeSet<String>,
    ctx: Arc<hub::Context>,
    events: Vec<Seen>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            slices: Vec::new(),
            clusters: Vec::new(),
            workers: Vec::new(),
            namespaces: BTreeSet::new(),
            // The scenarios write the peers inline (`--inline-peers`); `paged_access` pages them.
            ctx: Arc::new(hub::Context {
                peer_lists: slice_api::planner::PeerLists::Inline,
                ..hub::Context::new(TIMEOUT, "hub-0")
            }),
            events: Vec::new(),
        }
    }
}

impl Hub {
    fn new(slices: &[Value], clusters: &[&str]) -> Self {
        Self {
            slices: slices.to_vec(),
            clusters: clusters.iter().map(|c| member_cluster(c)).collect(),
            ..Self::default()
        }
    }

    fn slice_mut(&mut self, name: &str) -> &mut Value {
        self.slices.iter_mut().find(|s| name_of(s) == name).expect("slice exists")
    }

    fn cluster_mut(&mut self, name: &str) -> &mut Value {
        self.clusters.iter_mut().find(|s| name_of(s) == name).expect("cluster exists")
    }

    fn worker_mut(&mut self, cluster: &str, slice: &str) -> &mut Value {
        let namespace = ns(cluster);
        self.workers
            .iter_mut()
            .find(|w| w["metadata"]["namespace"] == namespace.as_str() && name_of(w) == slice)
            .expect("worker exists")
    }

    fn object(&self, path: &str) -> Value {
        let name = path.rsplit('/').next().unwrap_or_default();
        let found = if path.starts_with(SC) {
            self.slices.iter().find(|s| name_of(s) == name)
        } else if path.starts_with(MC) {
            self.clusters.iter().find(|s| name_of(s) == name)
        } else {
            self.workers.iter().find(|w| path_of(w) == path)
        };
        found.cloned().unwrap_or_else(|| panic!("no object at {path}"))
    }

    /// The lists every reconcile starts with: the three kinds, then what `slicenet-peers`
    /// holds (nothing in these scenarios: their hub keeps the peers inline and never paged).
    fn lists(&self) -> Vec<Exchange> {
        let rbac = |kind: &str| {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
                                       "metadata": {"resourceVersion": "100"}, "items": []})
        };
        vec![
            Exchange::get(SC).ok(list("SliceConfigList", &self.slices)),
            Exchange::get(MC).ok(list("MemberClusterList", &self.clusters)),
            Exchange::get(WS).ok(list("WorkerSliceList", &self.workers)),
            Exchange::get(PAGES).ok(list("SlicePeersList", &[])),
            Exchange::get(PEER_ROLES).ok(rbac("RoleList")),
            Exchange::get(PEER_BINDINGS).ok(rbac("RoleBindingList")),
        ]
    }

    /// The namespace checks of the registered clusters (namespaces that exist).
    fn namespace_checks(&self) -> Vec<Exchange> {
        let mut out = Vec::new();
        for c in self.clusters.iter().filter(|c| c["metadata"]["deletionTimestamp"].is_null()) {
            let name = ns(name_of(c));
            assert!(self.namespaces.contains(&name), "namespace {name} exists in this scenario");
            out.push(Exchange::get(format!("/api/v1/namespaces/{name}")).ok(namespace(&name)));
        }
        out
    }

    /// A reconcile that only reads.
    fn reads(&self) -> Vec<Exchange> {
        [self.lists(), self.namespace_checks()].concat()
    }

    /// A merge patch answered with the object as it is (the hub does not read the answer).
    fn patch(&self, path: &str) -> Exchange {
        let object = self.object(path.trim_end_matches("/status"));
        Exchange::merge_patch(path).query(FM).ok(object)
    }

    /// A delete of a WorkerSlice its worker holds: answered with the object marked for deletion.
    fn delete_held(&self, path: &str) -> Exchange {
        let mut object = self.object(path);
        object["metadata"]["deletionTimestamp"] = json!(time(NOW));
        Exchange::delete(path).ok(object)
    }

    /// Takes in the writes the hub made: workers hold the WorkerSlices they are given.
    fn record(&mut self, seen: &[Seen]) {
        for s in seen.iter().filter(|s| s.is_write() && s.succeeded()) {
            let status_write = s.path.ends_with("/status");
            let path = s.path.trim_end_matches("/status");
            match (s.method.as_str(), path) {
                ("POST", "/api/v1/namespaces") => {
                    self.namespaces.insert(name_of(&s.body).to_owned());
                }
                ("DELETE", p) if p.starts_with("/api/v1/namespaces/") => {
                    self.namespaces.remove(p.trim_start_matches("/api/v1/namespaces/"));
                }
                ("POST", _) => {
                    let mut w = s.body.clone();
                    w["metadata"]["resourceVersion"] = json!("20");
                    w["metadata"]["finalizers"] = json!([WORKER_FINALIZER]);
                    self.workers.push(w);
                }
                ("DELETE", p) => {
                    let w = self.workers.iter_mut().find(|w| path_of(w) == p);
                    w.expect("deleted worker exists")["metadata"]["deletionTimestamp"] = json!(time(NOW));
                }
                ("PATCH", p) => {
                    let list = if p.starts_with(SC) {
                        &mut self.slices
                    } else if p.starts_with(MC) {
                        &mut self.clusters
                    } else {
                        &mut self.workers
                    };
                    let i = list.iter().position(|o| path_of(o) == p).expect("patched object exists");
                    let mut patch = s.body.clone();
                    if !status_write && let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("resourceVersion");
                    }
                    apply_merge_patch(&mut list[i], &patch);
                    let released = list[i]["metadata"]["finalizers"] == json!([]);
                    if released && !list[i]["metadata"]["deletionTimestamp"].is_null() {
                        list.remove(i);
                    }
                }
                other => panic!("cannot record {other:?}"),
            }
        }
    }

    /// Runs one reconcile against `script` and takes in its writes; its event requests go to
    /// [`Hub::events`], the others are returned.
    async fn reconcile(&mut self, script: Vec<Exchange>) -> (Result<hub::Outcome, hub::Error>, Vec<Seen>) {
        self.reconcile_at(script, now()).await
    }

    /// The same at `at`.
    async fn reconcile_at(
        &mut self,
        script: Vec<Exchange>,
        at: Timestamp,
    ) -> (Result<hub::Outcome, hub::Error>, Vec<Seen>) {
        let ctx = Arc::clone(&self.ctx);
        let (result, seen) =
            run_script(HUB_ACCESS, script, |client| async move { hub::reconcile(&client, &ctx, at).await }).await;
        let (events, seen): (Vec<Seen>, Vec<Seen>) = seen.into_iter().partition(Seen::is_event);
        self.events.extend(events);
        self.record(&seen);
        (result, seen)
    }

    /// Takes the event requests seen so far.
    fn take_events(&mut self) -> Vec<Seen> {
        std::mem::take(&mut self.events)
    }
}

/// The API path of a SliceConfig, MemberCluster or WorkerSlice.
fn path_of(obj: &Value) -> String {
    match obj["kind"].as_str() {
        Some("SliceConfig") => format!("{SC}/{}", name_of(obj)),
        Some("MemberCluster") => format!("{MC}/{}", name_of(obj)),
        _ => format!(
            "/apis/slicenet.io/v1alpha1/namespaces/{}/workerslices/{}",
            obj["metadata"]["namespace"].as_str().unwrap_or(""),
            name_of(obj)
        ),
    }
}

fn writes(seen: &[Seen]) -> Vec<String> {
    seen.iter().filter(|s| s.is_write()).map(|s| format!("{} {}", s.method, s.path)).collect()
}

fn peer(cluster: &str, prefix: &str) -> Value {
    json!({"cluster": cluster, "prefix": prefix})
}

/// The first reconcile of slice `blue` over c1, c2, c3: every request of it.
fn create_script(hub: &Hub) -> Vec<Exchange> {
    let mut script = hub.lists();
    let mut finalized = slice_config("blue", &["c1", "c2", "c3"]);
    finalized["metadata"]["finalizers"] = json!(["slicenet.io/hub"]);
    script.push(
        Exchange::merge_patch(format!("{SC}/blue"))
            .query(FM)
            .body(json!({"metadata": {"finalizers": ["slicenet.io/hub"], "resourceVersion": "10"}}))
            .ok(finalized.clone()),
    );
    for c in ["c1", "c2", "c3"] {
        script.push(Exchange::get(format!("/api/v1/namespaces/{}", ns(c))).fail(404, "NotFound"));
        script.push(Exchange::post("/api/v1/namespaces").query(FM).body_contains(json!({
            "metadata": {"name": ns(c), "labels": {"slicenet.io/cluster": c, "app.kubernetes.io/managed-by": "slicenet-hub"}},
        })));
    }
    let prefixes = [("c1", "10.80.0.0/20"), ("c2", "10.80.16.0/20"), ("c3", "10.80.32.0/20")];
    for (c, prefix) in prefixes {
        let peers: Vec<Value> = prefixes.iter().filter(|(p, _)| *p != c).map(|(p, pp)| peer(p, pp)).collect();
        script.push(Exchange::post(ws_collection(c)).query(FM).body_contains(json!({
            "apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
            "metadata": {"name": "blue", "namespace": ns(c), "labels": {"slicenet.io/slice": "blue", "slicenet.io/cluster": c}},
            "spec": {
                "slice": "blue", "cluster": c, "sliceSubnet": "10.80.0.0/16", "clusterPrefix": prefix,
                "nodePrefixLength": 26, "vni": 4096, "namespaces": ["web"],
                "gateway": {"exposure": "NodePort", "port": 51820, "persistentKeepalive": 25},
                "peers": peers,
            },
        })));
    }
    let not_created = |c: &str, i: u32, prefix: &str| json!({"cluster": c, "index": i, "prefix": prefix, "ready": false, "reason": "WorkerSlice not created yet"});
    script.push(Exchange::merge_patch(format!("{SC}/blue/status")).query(FM).body_contains(json!({"status": {
        "vni": 4096,
        "observedGeneration": 1,
        "clusters": [not_created("c1", 0, "10.80.0.0/20"), not_created("c2", 1, "10.80.16.0/20"), not_created("c3", 2, "10.80.32.0/20")],
        "conditions": [
            {"type": "Planned", "status": "True", "reason": "Planned", "message": "3 member clusters",
             "lastTransitionTime": time(NOW), "observedGeneration": 1},
            {"type": "Ready", "status": "False", "reason": "ClustersNotReady", "lastTransitionTime": time(NOW)},
        ],
    }})).ok(finalized));
    script
}

/// `blue` over c1, c2, c3, created and converged (the second reconcile catches the status up
/// with the WorkerSlices the first one created).
async fn converged() -> Hub {
    let mut hub = Hub::new(&[slice_config("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"]);
    let script = create_script(&hub);
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("create succeeds").writes, 8);
    let mut script = hub.reads();
    script.push(hub.patch(&format!("{SC}/blue/status")).body(json!({"status": {
        "clusters": [
            {"cluster": "c1", "index": 0, "prefix": "10.80.0.0/20", "ready": false, "reason": "the worker has not reported yet"},
            {"cluster": "c2", "index": 1, "prefix": "10.80.16.0/20", "ready": false, "reason": "the worker has not reported yet"},
            {"cluster": "c3", "index": 2, "prefix": "10.80.32.0/20", "ready": false, "reason": "the worker has not reported yet"},
        ],
        "conditions": [
            {"type": "Planned", "status": "True", "reason": "Planned", "message": "3 member clusters",
             "lastTransitionTime": time(NOW), "observedGeneration": 1},
            {"type": "Ready", "status": "False", "reason": "ClustersNotReady",
             "message": "c1: the worker has not reported yet; c2: the worker has not reported yet; c3: the worker has not reported yet",
             "lastTransitionTime": time(NOW), "observedGeneration": 1},
        ],
    }})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("catching up succeeds").writes, 1);
    hub
}

#[tokio::test]
async fn create_makes_the_finalizer_namespaces_three_worker_slices_and_the_status() {
    let mut hub = Hub::new(&[slice_config("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"]);
    let script = create_script(&hub);
    let (result, seen) = hub.reconcile(script).await;
    let outcome = result.expect("reconcile succeeds");
    assert_eq!(outcome.writes, 8, "finalizer, 3 namespaces, 3 WorkerSlices, status");
    assert_eq!(outcome.requeue_after, Some(Duration::from_secs(51)), "back when the first heartbeat goes stale");
    assert_eq!(seen.len(), 6 + 1 + 6 + 3 + 1, "6 lists, the finalizer, 3 namespaces, 3 creates, the status");
}

#[tokio::test]
async fn idempotent_on_repeat_a_converged_hub_only_reads() {
    let mut hub = converged().await;
    let before = (hub.slices.clone(), hub.workers.clone());
    let script = hub.reads();
    let (result, seen) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 0);
    assert_eq!(writes(&seen), Vec::<String>::new());
    assert_eq!((hub.slices.clone(), hub.workers.clone()), before);
}

#[tokio::test]
async fn update_an_added_namespace_patches_only_the_worker_slice_that_changes() {
    let mut hub = converged().await;
    let slice = hub.slice_mut("blue");
    slice["spec"]["namespaces"] = json!([{"namespace": "web"}, {"namespace": "db", "clusters": ["c2"]}]);
    slice["metadata"]["generation"] = json!(2);
    let mut script = hub.reads();
    script.push(hub.patch(&ws("c2", "blue")).body(json!({"spec": {"namespaces": ["db", "web"]}})));
    script.push(hub.patch(&format!("{SC}/blue/status")).body_contains(json!({"status": {
        "observedGeneration": 2,
        "conditions": [{"type": "Planned", "observedGeneration": 2}, {"type": "Ready", "observedGeneration": 2}],
    }})));
    let (result, seen) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 2);
    assert_eq!(writes(&seen), [format!("PATCH {}", ws("c2", "blue")), format!("PATCH {SC}/blue/status")]);
}

#[tokio::test]
async fn peer_change_a_published_gateway_key_is_copied_to_the_peers() {
    let mut hub = converged().await;
    hub.worker_mut("c1", "blue")["status"] = json!({"gatewayPublicKey": "S0VZMQ==", "gatewayEndpoint": "198.18.1.1:31000", "nodes": [], "connectedPods": 0, "peers": [], "conditions": []});
    let c1 =
        json!({"cluster": "c1", "prefix": "10.80.0.0/20", "publicKey": "S0VZMQ==", "endpoint": "198.18.1.1:31000"});
    let mut script = hub.reads();
    script.push(hub.patch(&ws("c2", "blue")).body(json!({"spec": {"peers": [c1, peer("c3", "10.80.32.0/20")]}})));
    script.push(hub.patch(&ws("c3", "blue")).body(json!({"spec": {"peers": [c1, peer("c2", "10.80.16.0/20")]}})));
    script.push(hub.patch(&format!("{SC}/blue/status")).body_contains(json!({"status": {
        "clusters": [
            {"cluster": "c1", "reason": "the worker has not reported readiness yet"},
            {"cluster": "c2", "reason": "the worker has not reported yet"},
            {"cluster": "c3", "reason": "the worker has not reported yet"},
        ],
    }})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 3);
    // And once every worker reports ready, the slice is Ready.
    for c in ["c1", "c2", "c3"] {
        hub.worker_mut(c, "blue")["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True", "reason": "Up", "message": ""}]);
    }
    let mut script = hub.reads();
    script.push(hub.patch(&format!("{SC}/blue/status")).body_contains(json!({"status": {
        "conditions": [{"type": "Planned"}, {"type": "Ready", "status": "True", "reason": "AllClustersReady", "lastTransitionTime": time(NOW)}],
    }})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 1);
}

#[tokio::test]
async fn cluster_removal_deletes_its_worker_slice_and_the_peers_forget_it() {
    let mut hub = converged().await;
    let slice = hub.slice_mut("blue");
    slice["spec"]["clusters"] = json!(["c1", "c3"]);
    slice["metadata"]["generation"] = json!(2);
    let mut script = hub.reads();
    script.push(hub.patch(&ws("c1", "blue")).body(json!({"spec": {"peers": [peer("c3", "10.80.32.0/20")]}})));
    script.push(hub.patch(&ws("c3", "blue")).body(json!({"spec": {"peers": [peer("c1", "10.80.0.0/20")]}})));
    script.push(hub.delete_held(&ws("c2", "blue")));
    script.push(hub.patch(&format!("{SC}/blue/status")).body_contains(json!({"status": {
        "clusters": [{"cluster": "c1", "index": 0}, {"cluster": "c3", "index": 2}],
        "observedGeneration": 2,
    }})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 4);
    // c2's worker still tears down: the hub does not delete it again.
    let script = hub.reads();
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 0);
}

#[tokio::test]
async fn slice_deletion_removes_the_finalizer_only_once_the_worker_slices_are_gone() {
    let mut hub = converged().await;
    hub.slice_mut("blue")["metadata"]["deletionTimestamp"] = json!(time(NOW));
    let mut script = hub.reads();
    for c in ["c1", "c2", "c3"] {
        script.push(hub.delete_held(&ws(c, "blue")));
    }
    script.push(hub.patch(&format!("{SC}/blue/status")).body_contains(json!({"status": {
        "clusters": [],
        "conditions": [
            {"type": "Planned", "status": "False", "reason": "Deleting"},
            {"type": "Ready", "status": "False", "reason": "Deleting"},
        ],
    }})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 4);

    // The workers still hold their WorkerSlices: the finalizer stays, nothing is deleted twice.
    let script = hub.reads();
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 0);

    // Two workers let go, one is left: still waiting.
    hub.workers.retain(|w| w["spec"]["cluster"] == "c3");
    let script = hub.reads();
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 0);

    hub.workers.clear();
    let mut script = hub.reads();
    script
        .push(hub.patch(&format!("{SC}/blue")).body(json!({"metadata": {"finalizers": [], "resourceVersion": "10"}})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 1);
    assert!(hub.slices.is_empty(), "the API server let the SliceConfig go");
    let script = hub.reads();
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 0);
}

#[tokio::test]
async fn member_cluster_deletion_removes_its_worker_slices_then_its_namespace_and_finalizer() {
    let mut hub = converged().await;
    hub.cluster_mut("c3")["metadata"]["deletionTimestamp"] = json!(time(NOW));
    let mut script = hub.reads();
    assert_eq!(script.len(), 6 + 2, "no namespace check for a cluster being deleted");
    script.push(hub.patch(&ws("c1", "blue")).body(json!({"spec": {"peers": [peer("c2", "10.80.16.0/20")]}})));
    script.push(hub.patch(&ws("c2", "blue")).body(json!({"spec": {"peers": [peer("c1", "10.80.0.0/20")]}})));
    script.push(hub.delete_held(&ws("c3", "blue")));
    script.push(hub.patch(&format!("{SC}/blue/status")).body_contains(json!({"status": {
        "conditions": [{"type": "Planned", "status": "True", "reason": "ClustersNotRegistered"}, {"type": "Ready"}],
    }})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 4);

    let script = hub.reads();
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 0, "c3's worker still holds its WorkerSlice");

    hub.workers.retain(|w| w["spec"]["cluster"] != "c3");
    let mut script = hub.reads();
    script.push(Exchange::delete(format!("/api/v1/namespaces/{}", ns("c3"))).ok(namespace(&ns("c3"))));
    script.push(hub.patch(&format!("{MC}/c3")).body(json!({"metadata": {"finalizers": [], "resourceVersion": "5"}})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 2);
    assert_eq!(hub.clusters.len(), 2);
    assert!(!hub.namespaces.contains(&ns("c3")));
}

#[tokio::test]
async fn a_stale_heartbeat_turns_the_cluster_unhealthy_once() {
    let mut hub = converged().await;
    hub.cluster_mut("c2")["status"]["lastHeartbeat"] = json!(time(NOW - 61));
    let mut script = hub.reads();
    script.push(hub.patch(&format!("{MC}/c2/status")).body(json!({"status": {"conditions": [{
        "type": "Healthy", "status": "False", "reason": "HeartbeatStale",
        "message": format!("no heartbeat from the cluster's worker since {} (stale after 60 s)", time(NOW - 61)),
        "lastTransitionTime": time(NOW), "observedGeneration": 1,
    }]}})));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 1);
    let script = hub.reads();
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("reconcile succeeds").writes, 0);
}

#[tokio::test]
async fn errors_requeue_a_failed_write_fails_the_reconcile_after_trying_the_rest() {
    let mut hub = Hub::new(&[slice_config("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"]);
    let mut script = create_script(&hub);
    // The WorkerSlice of c2 meets a 500; c3's is still created and the status still written.
    let c2 = script.iter().position(|e| e.method == "POST" && e.path == ws_collection("c2")).expect("c2 create");
    script[c2] = script[c2].clone().fail(500, "InternalError");
    let (result, seen) = hub.reconcile(script).await;
    let error = result.expect_err("the reconcile fails");
    let message = slice_api::error_chain::chain(&error);
    assert!(message.contains("1 of the hub's requests failed"), "{message}");
    assert!(message.contains("creating WorkerSlice slicenet-cluster-c2/blue"), "{message}");
    assert_eq!(writes(&seen).len(), 8);

    // The runner's error policy: retry after a backoff that grows, not at once and not never.
    let options = HubOptions::default();
    let t0 = Instant::now();
    let mut schedule = Schedule::new(t0, &options);
    assert_eq!(schedule.on_error(t0), Duration::from_millis(500));
    assert_eq!(schedule.due(), t0 + Duration::from_millis(500));
    assert_eq!(schedule.on_error(t0), Duration::from_secs(1));

    // The retry finds c2's WorkerSlice missing and creates it, and nothing else.
    let mut script = hub.reads();
    script.push(Exchange::post(ws_collection("c2")).query(FM).body_contains(json!({"spec": {"cluster": "c2"}})));
    script.push(hub.patch(&format!("{SC}/blue/status")));
    let (result, _) = hub.reconcile(script).await;
    assert_eq!(result.expect("the retry succeeds").writes, 2);
}

#[tokio::test]
async fn errors_requeue_a_conflict_on_a_finalizer_and_a_failed_list() {
    let mut hub = Hub::new(&[slice_config("blue", &["c1"])], &["c1"]);
    hub.namespaces.insert(ns("c1"));
    let mut script = hub.lists();
    script.push(Exchange::merge_patch(format!("{SC}/blue")).query(FM).fail(409, "Conflict"));
    script.extend(hub.namespace_checks());
    script.push(Exchange::post(ws_collection("c1")).query(FM));
    script.push(hub.patch(&format!("{SC}/blue/status")));
    let (result, _) = hub.reconcile(script).await;
    let message = slice_api::error_chain::chain(&result.expect_err("a 409 fails the reconcile"));
    assert!(message.contains("setting the finalizers of SliceConfig blue"), "{message}");

    let script = vec![Exchange::get(SC).fail(500, "InternalError")];
    let (result, seen) = hub.reconcile(script).await;
    let message = slice_api::error_chain::chain(&result.expect_err("a failed list fails the reconcile"));
    assert!(message.starts_with("listing SliceConfigs"), "{message}");
    assert_eq!(seen.len(), 1, "nothing is decided without the whole world");
}

/// The runner against a server that answers in any order: watches on the three kinds, a first
/// reconcile that meets a 500, the retry after the backoff, and a clean stop.
#[tokio::test]
async fn the_runner_watches_retries_with_backoff_and_stops_on_request() {
    use std::sync::{Arc, Mutex};
    let started = Instant::now();
    let reconcile_lists: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let lists = Arc::clone(&reconcile_lists);
    let health = Health::new();
    let probe = health.clone();
    // Whether /readyz said ready when each reconcile started listing.
    let ready_at_lists: Arc<Mutex<Vec<bool>>> = Arc::default();
    let ready_seen = Arc::clone(&ready_at_lists);
    let server_probe = health.clone();
    let (client, server) = serve_with(HUB_ACCESS, move |seen| {
        if seen.attributes.resource == "secrets" {
            return Some((404, hub_support::status(404, "NotFound"))); // no webhook CA Secret
        }
        let kind = seen.path.rsplit('/').next().unwrap_or_default().to_owned();
        let list_kind = match kind.as_str() {
            "sliceconfigs" => "SliceConfigList",
            "memberclusters" => "MemberClusterList",
            _ => "WorkerSliceList",
        };
        if seen.query.contains("watch=true") {
            return None; // A watch that stays open with no events.
        }
        if kind == "sliceconfigs" && seen.query.is_empty() {
            let mut lists = lists.lock().expect("lock");
            lists.push(started.elapsed());
            ready_seen.lock().expect("lock").push(server_probe.is_ready());
            if lists.len() == 1 {
                return Some((500, hub_support::status(500, "InternalError")));
            }
        }
        Some((200, list(list_kind, &[])))
    });
    let mut options = HubOptions { debounce_ms: 20, backoff_min_ms: 300, ..HubOptions::default() };
    options.leader_election.no_leader_election = true;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        hub::run_with_client(client, &options, health, async {
            let _ = stopped.await;
        })
        .await
    });
    // Ready once a reconcile succeeded, which is the retry.
    wait_for("the retry succeeds", || probe.is_ready()).await;
    assert!(probe.is_alive());
    let _ = stop.send(());
    let result =
        tokio::time::timeout(Duration::from_secs(60), runner).await.expect("the runner stops").expect("no panic");
    result.expect("the runner stops cleanly");
    assert!(!probe.is_alive(), "/healthz fails once the main loop is gone");
    assert_eq!(ready_at_lists.lock().expect("lock")[..2], [false, false], "not ready before a reconcile succeeded");
    let seen = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the client is gone")
        .expect("no panic")
        .unwrap_or_else(|e| panic!("{e}"));
    let times = reconcile_lists.lock().expect("lock").clone();
    assert!(times.len() >= 2, "the runner retried after the 500: {times:?}");
    assert!(times[1] - times[0] >= Duration::from_millis(300), "the retry waited for the backoff: {times:?}");
    for kind in ["sliceconfigs", "memberclusters", "workerslices", "slicepeers", "roles", "rolebindings"] {
        assert!(seen.iter().any(|s| s.path.ends_with(kind) && s.query.contains("watch=true")), "{kind} is watched");
    }
}

/// Every request of every scenario above needs only what `access::HUB` declares (checked per
/// request by the scripted server); and every declared access is used by some scenario, so the
/// RBAC built from the list grants nothing the hub does not need.
#[tokio::test]
async fn the_declared_access_is_exactly_what_the_requests_need() {
    use slice_api::rbac::request_attributes;
    let mut used = BTreeSet::new();
    let mut note = |seen: &[Seen]| {
        for s in seen {
            used.insert((
                s.attributes.verb,
                s.attributes.group.clone(),
                s.attributes.resource.clone(),
                s.attributes.subresource.clone(),
            ));
        }
    };
    let mut hub = converged().await;
    // Deleting a cluster, all the way: patch/delete WorkerSlices, delete its namespace, patch
    // MemberCluster finalizers.
    hub.cluster_mut("c3")["metadata"]["deletionTimestamp"] = json!(time(NOW));
    let mut script = hub.reads();
    script.push(hub.patch(&ws("c1", "blue")));
    script.push(hub.patch(&ws("c2", "blue")));
    script.push(hub.delete_held(&ws("c3", "blue")));
    script.push(hub.patch(&format!("{SC}/blue/status")));
    let (_, seen) = hub.reconcile(script).await;
    note(&seen);
    hub.workers.retain(|w| w["spec"]["cluster"] != "c3");
    hub.cluster_mut("c2")["status"]["lastHeartbeat"] = json!(time(NOW - 300));
    let mut script = hub.reads();
    script.push(hub.patch(&format!("{MC}/c2/status")));
    script.push(Exchange::delete(format!("/api/v1/namespaces/{}", ns("c3"))).ok(namespace(&ns("c3"))));
    script.push(hub.patch(&format!("{MC}/c3")));
    let (_, seen) = hub.reconcile(script).await;
    note(&seen);
    // Creating: namespaces, WorkerSlices, SliceConfig finalizers.
    let mut fresh = Hub::new(&[slice_config("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"]);
    let script = create_script(&fresh);
    let (_, seen) = fresh.reconcile(script).await;
    note(&seen);
    // The election and the events (their own scenarios below).
    used.extend(lease_and_event_access().await);
    // Paged peers: pages, peer Roles and their bindings (the in-memory API scenario below).
    used.extend(paged_access().await);
    // `get` on the pages is held, never asked for: a Role may grant only what its writer holds.
    used.insert(("get", "slicenet.io".to_owned(), "slicepeers".to_owned(), String::new()));
    // The webhook certificate's renewal: its own scenarios against this same list in
    // tests/cert_rotation.rs (a GET of each Secret, one PUT of the TLS Secret).
    for (verb, path) in [
        ("GET", "/api/v1/namespaces/slicenet-system/secrets/x"),
        ("PUT", "/api/v1/namespaces/slicenet-system/secrets/x"),
    ] {
        let a = request_attributes(verb, path).expect("resource path");
        used.insert((a.verb, a.group, a.resource, a.subresource));
    }
    // The runner's watches (on the pages, Roles and RoleBindings of `slicenet-peers` too).
    for kind in [SC, MC, WS, PAGES, PEER_ROLES, PEER_BINDINGS] {
        let a = request_attributes("GET", &format!("{kind}?watch=true")).expect("resource path");
        used.insert((a.verb, a.group, a.resource, a.subresource));
    }
    let declared: BTreeSet<_> =
        HUB.iter().map(|a| (a.verb, a.group.to_owned(), a.resource.to_owned(), a.subresource.to_owned())).collect();
    assert_eq!(declared, used);
}

/// (method, namespace, regarding kind/name, type, reason) of each event request.
fn event_lines(events: &[Seen]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let ns = e.path.split('/').nth(5).unwrap_or_default();
            let r = &e.body["regarding"];
            format!(
                "{} {ns} {}/{} {} {}",
                e.method,
                r["kind"].as_str().unwrap_or("-"),
                r["name"].as_str().unwrap_or("-"),
                e.body["type"].as_str().unwrap_or("-"),
                e.body["reason"].as_str().unwrap_or("-"),
            )
        })
        .collect()
}

#[tokio::test]
async fn events_announce_what_a_pass_changed_and_a_converged_hub_announces_nothing() {
    let mut hub = Hub::new(&[slice_config("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"]);
    let script = create_script(&hub);
    hub.reconcile(script).await.0.expect("create");
    let events = hub.take_events();
    assert_eq!(
        event_lines(&events),
        [
            "POST default SliceConfig/blue Normal WorkerSliceCreated",
            "POST default SliceConfig/blue Normal WorkerSliceCreated",
            "POST default SliceConfig/blue Normal WorkerSliceCreated",
            "POST default SliceConfig/blue Normal SlicePlanned",
        ]
    );
    let first = &events[0].body;
    assert_eq!(first["apiVersion"], "events.k8s.io/v1");
    assert_eq!(first["regarding"]["uid"], "uid-blue", "kubectl describe finds events by uid");
    assert_eq!(first["related"]["namespace"], "slicenet-cluster-c1");
    assert_eq!(first["reportingController"], "slicenet.io/hub");
    assert_eq!(first["reportingInstance"], "hub-0");
    assert_eq!(first["eventTime"], format!("{:.6}", now()));
    assert_eq!(events[3].body["note"], "3 member clusters");

    // The catch-up pass changes a message, not a state: no event; nor does a converged pass.
    let mut script = hub.reads();
    script.push(hub.patch(&format!("{SC}/blue/status")));
    hub.reconcile(script).await.0.expect("catch up");
    let script = hub.reads();
    hub.reconcile(script).await.0.expect("converged");
    assert_eq!(event_lines(&hub.take_events()), Vec::<String>::new());

    // All workers report ready: the slice is ready, said once.
    for c in ["c1", "c2", "c3"] {
        hub.worker_mut(c, "blue")["status"] =
            json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}]});
    }
    let mut script = hub.reads();
    script.push(hub.patch(&format!("{SC}/blue/status")));
    hub.reconcile(script).await.0.expect("ready");
    assert_eq!(event_lines(&hub.take_events()), ["POST default SliceConfig/blue Normal SliceReady"]);
    let script = hub.reads();
    hub.reconcile(script).await.0.expect("converged");
    assert_eq!(event_lines(&hub.take_events()), Vec::<String>::new());
}

#[tokio::test]
async fn a_cluster_leaving_and_going_stale_is_announced_on_the_cluster() {
    let mut hub = converged().await;
    hub.take_events();
    hub.cluster_mut("c2")["status"]["lastHeartbeat"] = json!(time(NOW - 61));
    let mut script = hub.reads();
    script.push(hub.patch(&format!("{MC}/c2/status")));
    hub.reconcile(script).await.0.expect("stale");
    let events = hub.take_events();
    assert_eq!(event_lines(&events), ["POST default MemberCluster/c2 Warning ClusterUnhealthy"]);
    assert!(events[0].body["note"].as_str().unwrap_or_default().starts_with("HeartbeatStale: no heartbeat"));

    hub.cluster_mut("c3")["metadata"]["deletionTimestamp"] = json!(time(NOW));
    let mut script = hub.reads();
    script.push(hub.patch(&ws("c1", "blue")));
    script.push(hub.patch(&ws("c2", "blue")));
    script.push(hub.delete_held(&ws("c3", "blue")));
    script.push(hub.patch(&format!("{SC}/blue/status")));
    hub.reconcile(script).await.0.expect("c3 leaves its slices");
    assert_eq!(
        event_lines(&hub.take_events()),
        [
            "POST slicenet-cluster-c1 WorkerSlice/blue Normal WorkerSliceUpdated",
            "POST slicenet-cluster-c2 WorkerSlice/blue Normal WorkerSliceUpdated",
            "POST default SliceConfig/blue Normal WorkerSliceDeleted",
            // Planned still, but with c3 no longer registered: the condition says so.
            "POST default SliceConfig/blue Normal SlicePlanned",
        ]
    );
    hub.workers.retain(|w| w["spec"]["cluster"] != "c3");
    let mut script = hub.reads();
    script.push(Exchange::delete(format!("/api/v1/namespaces/{}", ns("c3"))).ok(namespace(&ns("c3"))));
    script.push(hub.patch(&format!("{MC}/c3")));
    hub.reconcile(script).await.0.expect("c3 goes");
    let events = hub.take_events();
    assert_eq!(event_lines(&events), ["POST default MemberCluster/c3 Normal ClusterLeft"]);
    assert_eq!(events[0].body["note"], "member cluster c3 left: namespace slicenet-cluster-c3 deleted");
}

#[tokio::test]
async fn a_repeated_error_is_one_event_whose_series_counts_the_repeats() {
    let mut hub = Hub::new(&[slice_config("blue", &["c1", "c2", "c3"])], &["c1", "c2", "c3"]);
    let mut script = create_script(&hub);
    let c2 = script.iter().position(|e| e.method == "POST" && e.path == ws_collection("c2")).expect("c2 create");
    script[c2] = script[c2].clone().fail(500, "InternalError");
    hub.reconcile(script).await.0.expect_err("c2 fails");
    let events = hub.take_events();
    let failed: Vec<&Seen> = events.iter().filter(|e| e.body["reason"] == "WriteFailed").collect();
    assert_eq!(
        event_lines(&failed.iter().map(|s| (*s).clone()).collect::<Vec<_>>()),
        ["POST default SliceConfig/blue Warning WriteFailed"]
    );
    let note = failed[0].body["note"].as_str().unwrap_or_default();
    assert!(note.starts_with("creating WorkerSlice slicenet-cluster-c2/blue: "), "{note}");
    let name = failed[0].body["metadata"]["name"].as_str().expect("a name").to_owned();

    // The retries fail the same way: 10 s later only counted, 5 minutes later one patch. (The
    // workers keep their heartbeats fresh meanwhile.)
    let later = |s: i64| Timestamp::from_second(NOW + s).expect("valid time");
    let retry = |hub: &mut Hub, s: i64| {
        for c in ["c1", "c2", "c3"] {
            hub.cluster_mut(c)["status"]["lastHeartbeat"] = json!(time(NOW + s - 10));
        }
        let mut script = hub.reads();
        script.push(Exchange::post(ws_collection("c2")).query(FM).fail(500, "InternalError"));
        script
    };
    let mut script = retry(&mut hub, 10);
    script.push(hub.patch(&format!("{SC}/blue/status")));
    hub.reconcile_at(script, later(10)).await.0.expect_err("still failing");
    assert_eq!(event_lines(&hub.take_events()), Vec::<String>::new(), "a repeat within the interval is counted");
    for s in [20, 40, 80] {
        let script = retry(&mut hub, s);
        hub.reconcile_at(script, later(s)).await.0.expect_err("still failing");
    }
    assert_eq!(hub.take_events().len(), 0);
    let script = retry(&mut hub, 300);
    hub.reconcile_at(script, later(300)).await.0.expect_err("still failing");
    let events = hub.take_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].method, "PATCH");
    assert_eq!(events[0].path, format!("/apis/events.k8s.io/v1/namespaces/default/events/{name}"));
    assert_eq!(
        events[0].body,
        json!({"series": {"count": 6, "lastObservedTime": format!("{:.6}", later(300))}}),
        "six failures, one event"
    );
}

/// The Lease and Event requests: a lease created, read and renewed; an event created and its
/// series patched. Returned as the access they use.
/// The hub with paged peers (its default) on the in-memory API, whole passes until it writes
/// nothing after each change: two slices, a member that joins, one that leaves (its Role goes
/// with its access), a slice deleted (its page goes). Returns the requests' (verb, group,
/// resource, subresource); every request is checked against `access::HUB`.
async fn paged_access() -> BTreeSet<(&'static str, String, String, String)> {
    use slice_kube::memory::MemoryApi;
    let side = "hub".to_owned();
    let api = MemoryApi::new([(side.clone(), HUB, "slicenet-system".to_owned())]);
    let put = |v: Value| api.put(side.clone(), v);
    for c in ["c1", "c2", "c3"] {
        put(json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": c},
                   "spec": {}, "status": {"lastHeartbeat": time(NOW)}}));
    }
    for (s, members) in [("blue", json!(["c1", "c2"])), ("green", json!(["c1"]))] {
        put(json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
                   "metadata": {"name": s, "creationTimestamp": time(NOW - 100)},
                   "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": members, "namespaces": [{"namespace": "web"}]}}));
    }
    let client = api.client(side.clone());
    let ctx = hub::Context::new(Duration::from_secs(60), "test");
    assert_eq!(ctx.peer_lists, slice_api::planner::PeerLists::Paged, "the default");
    let settle = || async {
        for _ in 0..6 {
            let now = Timestamp::from_second(NOW).expect("a valid time");
            if hub::reconcile(&client, &ctx, now).await.expect("a pass").writes == 0 {
                return;
            }
        }
        panic!("no convergence");
    };
    let role_names = |api: &MemoryApi<String>, cluster: &str| -> Option<Value> {
        let role = api.get(side.clone(), &format!("{PEER_ROLES}/slicenet-peers-{cluster}"))?;
        Some(role["rules"][0]["resourceNames"].clone())
    };
    settle().await;
    assert_eq!(role_names(&api, "c1"), Some(json!(["blue-0", "green-0"])));
    assert_eq!(role_names(&api, "c2"), Some(json!(["blue-0"])));
    assert!(api.get(side.clone(), &format!("{PEER_BINDINGS}/slicenet-peers-c2")).is_some(), "bound");
    let page = api.get(side.clone(), &format!("{PAGES}/blue-0")).expect("blue's page");
    assert_eq!(page["spec"]["peers"].as_array().map(Vec::len), Some(2));
    let ws = api
        .get(side.clone(), &format!("/apis/slicenet.io/v1alpha1/namespaces/{}/workerslices/blue", ns("c1")))
        .expect("c1's WorkerSlice");
    assert_eq!(ws["spec"]["peers"], json!([]), "no peers in the WorkerSlice");
    assert_eq!(ws["spec"]["peerPages"]["pages"], 1);

    // c3 joins blue, c2 leaves it: c2's Role and binding go, c3's come.
    api.edit(side.clone(), &format!("{SC}/blue"), |s| s["spec"]["clusters"] = json!(["c1", "c3"]));
    settle().await;
    assert_eq!(role_names(&api, "c2"), None, "c2 left: it can read no page");
    assert!(api.get(side.clone(), &format!("{PEER_BINDINGS}/slicenet-peers-c2")).is_none());
    assert_eq!(role_names(&api, "c3"), Some(json!(["blue-0"])));
    // green is deleted: its page goes, and c1 keeps only blue's.
    let (code, body) = api.request(&side, "DELETE", &format!("{SC}/green"), "application/json", &json!({}));
    assert!(code < 300, "{body}");
    settle().await;
    assert!(api.get(side.clone(), &format!("{PAGES}/green-0")).is_none(), "green's page is gone");
    assert_eq!(role_names(&api, "c1"), Some(json!(["blue-0"])));
    assert_eq!(api.violations(), Vec::<String>::new(), "every request within the hub's access list");

    let mut used = BTreeSet::new();
    for r in api.take_requests() {
        let query = if r.query.is_empty() { String::new() } else { format!("?{}", r.query) };
        if let Some(a) = slice_api::rbac::request_attributes(&r.method, &format!("{}{query}", r.path)) {
            let paged = matches!(a.resource.as_str(), "slicepeers" | "roles" | "rolebindings");
            if paged {
                used.insert((a.verb, a.group, a.resource, a.subresource));
            }
        }
    }
    used
}

/// The hub on the in-memory API, paged (its default): a member's RoleBinding that someone
/// deletes is made again, by a whole pass and by a pass over what the watches reported; one
/// that someone binds to another account is replaced. Then the same hub run inline
/// (`--inline-peers`): its passes give the WorkerSlices their peers back, then delete every
/// page, peer Role and binding, and leave the hub's own Role in `slicenet-peers` alone.
#[tokio::test]
async fn a_deleted_binding_comes_back_and_an_inline_hub_leaves_no_page_behind() {
    use slice_kube::memory::MemoryApi;
    use slice_operator::hub::Change;
    let side = "hub".to_owned();
    let api = MemoryApi::new([(side.clone(), HUB, "slicenet-system".to_owned())]);
    let put = |v: Value| api.put(side.clone(), v);
    for c in ["c1", "c2"] {
        put(json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": c},
                   "spec": {}, "status": {"lastHeartbeat": time(NOW)}}));
    }
    put(json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
               "metadata": {"name": "blue", "creationTimestamp": time(NOW - 100)},
               "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"], "namespaces": [{"namespace": "web"}]}}));
    // What `slicectl install hub` puts there: the hub's own Role and binding.
    for kind in ["Role", "RoleBinding"] {
        let mut own = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
                             "metadata": {"name": "slicenet-hub", "namespace": "slicenet-peers"}});
        if kind == "RoleBinding" {
            own["roleRef"] = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "slicenet-hub"});
        }
        put(own);
    }
    let client = api.client(side.clone());
    let now = Timestamp::from_second(NOW).expect("a valid time");
    let paged = hub::Context::new(Duration::from_secs(60), "test");
    async fn settle(client: &kube::Client, ctx: &hub::Context, now: Timestamp) {
        for _ in 0..6 {
            if hub::reconcile(client, ctx, now).await.expect("a pass").writes == 0 {
                return;
            }
        }
        panic!("no convergence");
    }
    let binding = |cluster: &str| api.get(side.clone(), &format!("{PEER_BINDINGS}/slicenet-peers-{cluster}"));
    settle(&client, &paged, now).await;
    let planned = binding("c1").expect("c1 bound");
    assert_eq!(
        planned["subjects"],
        json!([{"kind": "ServiceAccount", "name": "slicenet-worker", "namespace": ns("c1")}])
    );

    // Deleted by someone: the next whole pass binds it again.
    api.remove(side.clone(), &format!("{PEER_BINDINGS}/slicenet-peers-c1"));
    settle(&client, &paged, now).await;
    assert_eq!(binding("c1").expect("bound again")["subjects"], planned["subjects"]);

    // Deleted again, while the hub passes over what its watches report: the deletion alone
    // brings it back, and the pass makes that one request.
    let mut scoped = hub::Hub::default();
    scoped.reconcile_changes(&client, &paged, now).await.expect("the first pass is whole");
    api.remove(side.clone(), &format!("{PEER_BINDINGS}/slicenet-peers-c1"));
    scoped.observe(Change::BindingGone("slicenet-peers-c1".into()));
    api.take_requests();
    let outcome = scoped.reconcile_changes(&client, &paged, now).await.expect("a pass");
    let lines: Vec<String> = api.take_requests().iter().filter(|r| !r.is_event()).map(|r| r.line()).collect();
    assert_eq!(lines, [format!("hub POST {PEER_BINDINGS}")], "{outcome:?}");
    assert_eq!(binding("c1").expect("bound again")["subjects"], planned["subjects"]);

    // Bound to another account by someone: deleted and made again as planned.
    api.edit(side.clone(), &format!("{PEER_BINDINGS}/slicenet-peers-c1"), |b| {
        b["subjects"][0]["namespace"] = json!(ns("c2"));
    });
    settle(&client, &paged, now).await;
    assert_eq!(binding("c1").expect("bound")["subjects"], planned["subjects"]);

    // The hub run inline: peers back in the WorkerSlices, then nothing of the pages left.
    let inline = hub::Context { peer_lists: slice_api::planner::PeerLists::Inline, ..paged };
    settle(&client, &inline, now).await;
    let ws = api.get(side.clone(), &ws("c1", "blue")).expect("c1's WorkerSlice");
    assert_eq!(ws["spec"]["peers"].as_array().map(Vec::len), Some(1), "{ws}");
    assert!(ws["spec"].get("peerPages").is_none(), "{ws}");
    assert_eq!(api.paths(&side, PAGES), Vec::<String>::new(), "no page left");
    assert_eq!(api.paths(&side, PEER_ROLES), [format!("{PEER_ROLES}/slicenet-hub")], "the hub's own Role only");
    assert_eq!(api.paths(&side, PEER_BINDINGS), [format!("{PEER_BINDINGS}/slicenet-hub")]);
    assert_eq!(api.violations(), Vec::<String>::new(), "every request within the hub's access list");
}

async fn lease_and_event_access() -> BTreeSet<(&'static str, String, String, String)> {
    use slice_operator::events::{Notice, Recorder, reason, reference_to};
    use slice_operator::leader::{Candidate, Election, Leadership, LeaseTiming};
    let leases = "/apis/coordination.k8s.io/v1/namespaces/slicenet-system/leases";
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "slicenet-hub", "namespace": "slicenet-system", "resourceVersion": "1"},
        "spec": {"holderIdentity": "hub-0", "leaseDurationSeconds": 15}});
    let events = "/apis/events.k8s.io/v1/namespaces/default/events";
    let script = vec![
        Exchange::get(format!("{leases}/slicenet-hub")).fail(404, "NotFound"),
        Exchange::post(leases).reply(201, lease.clone()),
        Exchange::get(format!("{leases}/slicenet-hub")).ok(lease.clone()),
        Exchange::put(format!("{leases}/slicenet-hub")).reply(200, lease),
    ];
    let ((), mut seen) = run_script(HUB_ACCESS, script, |client| async move {
        let election = Election {
            namespace: "slicenet-system".into(),
            name: "slicenet-hub".into(),
            identity: "hub-0".into(),
            timing: LeaseTiming::default(),
        };
        let mut candidate = Candidate::new(client.clone(), election);
        let t0 = Instant::now();
        candidate.step(t0, now()).await.expect("create");
        candidate.step(t0 + Duration::from_secs(5), now()).await.expect("renew");
        let recorder = Recorder::new(hub::EVENT_CONTROLLER, "hub-0");
        let notice = Notice::warning(
            reference_to("slicenet.io/v1alpha1", "SliceConfig", None, "blue", Some("uid-blue")),
            reason::WRITE_FAILED,
            "Reconcile",
            "x".into(),
        );
        let leading = Leadership::unconditional();
        recorder.publish(&client, std::slice::from_ref(&notice), now(), &leading).await;
        let later = Timestamp::from_second(NOW + 600).expect("valid time");
        recorder.publish(&client, std::slice::from_ref(&notice), later, &leading).await;
    })
    .await;
    seen.retain(|s| !s.path.starts_with(events) || s.is_event());
    assert_eq!(
        seen.iter().filter(|s| s.is_event()).map(|s| s.method.as_str()).collect::<Vec<_>>(),
        ["POST", "PATCH"],
        "one create, one series patch"
    );
    seen.iter()
        .map(|s| {
            (
                s.attributes.verb,
                s.attributes.group.clone(),
                s.attributes.resource.clone(),
                s.attributes.subresource.clone(),
            )
        })
        .collect()
}

/// The runner with leader election, against a server that answers in any order: it takes the
/// free lease, reconciles, and while its first write is in flight another replica takes the
/// lease. The campaign sees it, the runner stops at once (the write in flight is abandoned,
/// no other is made) and returns the loss, so the process exits non-zero.
#[tokio::test]
async fn a_hub_that_loses_its_lease_stops_writing_at_once() {
    use std::sync::Mutex;
    #[derive(Default)]
    struct Api {
        lease: Option<Value>,
        version: u64,
        taken: bool,
    }
    let state: Arc<Mutex<Api>> = Arc::default();
    let api = Arc::clone(&state);
    let slices = vec![slice_config("blue", &["c1"])];
    let clusters = vec![member_cluster("c1")];
    let (client, server) = serve_with(HUB_ACCESS, move |seen| {
        let mut api = api.lock().expect("lock");
        if seen.path.contains("/leases") {
            return match seen.method.as_str() {
                "GET" => match &api.lease {
                    Some(l) => Some((200, l.clone())),
                    None => Some((404, hub_support::status(404, "NotFound"))),
                },
                // A replace with a stale resourceVersion: 409, as the API server answers.
                "PUT"
                    if api.lease.as_ref().map(|l| &l["metadata"]["resourceVersion"])
                        != Some(&seen.body["metadata"]["resourceVersion"]) =>
                {
                    Some((409, hub_support::status(409, "Conflict")))
                }
                _ => {
                    api.version += 1;
                    let mut l = seen.body.clone();
                    l["metadata"]["resourceVersion"] = json!(api.version.to_string());
                    api.lease = Some(l.clone());
                    Some((if seen.method == "POST" { 201 } else { 200 }, l))
                }
            };
        }
        if seen.query.contains("watch=true") {
            return None;
        }
        match (seen.method.as_str(), seen.path.rsplit('/').next().unwrap_or_default()) {
            ("GET", "sliceconfigs") => Some((200, list("SliceConfigList", &slices))),
            ("GET", "memberclusters") => Some((200, list("MemberClusterList", &clusters))),
            ("GET", "workerslices") => Some((200, list("WorkerSliceList", &[]))),
            // The hub pages the peers: the pages and peer Roles of `slicenet-peers`, none yet.
            ("GET", "slicepeers" | "roles" | "rolebindings") => Some((200, list("List", &[]))),
            // The webhook certificate's check when leading starts: no CA Secret, nothing to do.
            ("GET", _) if seen.attributes.resource == "secrets" => Some((404, hub_support::status(404, "NotFound"))),
            _ => {
                // The first write: another replica takes the lease meanwhile, and this write
                // never gets an answer.
                if !api.taken {
                    api.taken = true;
                    api.version += 1;
                    let version = api.version.to_string();
                    let lease = api.lease.as_mut().expect("the hub took the lease before writing");
                    lease["spec"]["holderIdentity"] = json!("hub-1");
                    lease["metadata"]["resourceVersion"] = json!(version);
                }
                None
            }
        }
    });
    let options = leading_as("hub-0", Duration::from_secs(120), Duration::from_secs(90));
    let health = Health::new();
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        hub::run_with_client(client, &options, health.clone(), std::future::pending()),
    )
    .await
    .expect("the runner stops by itself");
    let message = format!("{:#}", result.expect_err("a lost lease is an error"));
    assert!(message.contains(r#"the lease is now held by "hub-1""#), "{message}");
    assert!(!health.is_alive());
    let seen = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the client is gone")
        .expect("no panic")
        .unwrap_or_else(|e| panic!("{e}"));
    let writes: Vec<String> = seen
        .iter()
        .filter(|s| s.is_write() && !s.path.contains("/leases"))
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(writes, [format!("PATCH {SC}/blue")], "the write in flight, and nothing after it");
    let taken_at = seen.iter().position(|s| s.is_write() && !s.path.contains("/leases")).expect("the write");
    assert!(
        seen[taken_at + 1..].iter().all(|s| !s.is_write() || s.reply_code == 409),
        "nothing written after the lease was taken (a renewal already on its way gets 409)"
    );
    assert!(
        seen[..taken_at].iter().any(|s| s.method == "POST" && s.path.contains("/leases")),
        "it took the lease first"
    );
}

/// Waits until `done` holds; the deadline only bounds a broken test.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The runner as a standby: another replica holds the lease, so it is ready (for the
/// readiness probe) but does not reconcile; when the holder releases the lease it takes over
/// at once and reconciles; on shutdown it releases the lease for the next one.
#[tokio::test]
async fn a_standby_is_ready_reconciles_only_once_it_leads_and_releases_on_shutdown() {
    use std::sync::Mutex;
    let lease: Arc<Mutex<Value>> = Arc::new(Mutex::new(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "slicenet-hub", "namespace": "slicenet-system", "resourceVersion": "1"},
        "spec": {"holderIdentity": "hub-1", "leaseDurationSeconds": 15, "leaseTransitions": 2},
    })));
    let stored = Arc::clone(&lease);
    let version = Arc::new(Mutex::new(1_u64));
    let (client, server) = serve_with(HUB_ACCESS, move |seen| {
        if seen.path.contains("/leases") {
            let mut lease = stored.lock().expect("lock");
            return match seen.method.as_str() {
                "GET" => Some((200, lease.clone())),
                _ if lease["metadata"]["resourceVersion"] != seen.body["metadata"]["resourceVersion"] => {
                    Some((409, hub_support::status(409, "Conflict")))
                }
                _ => {
                    let mut v = version.lock().expect("lock");
                    *v += 1;
                    *lease = seen.body.clone();
                    lease["metadata"]["resourceVersion"] = json!(v.to_string());
                    Some((200, lease.clone()))
                }
            };
        }
        if seen.query.contains("watch=true") {
            return None;
        }
        if seen.attributes.resource == "secrets" {
            return Some((404, hub_support::status(404, "NotFound"))); // no webhook CA Secret
        }
        let kind = match seen.path.rsplit('/').next().unwrap_or_default() {
            "sliceconfigs" => "SliceConfigList",
            "memberclusters" => "MemberClusterList",
            _ => "WorkerSliceList",
        };
        Some((200, list(kind, &[])))
    });
    let options = leading_as("hub-0", Duration::from_secs(3600), Duration::from_secs(1800));
    let health = Health::new();
    let probe = health.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        hub::run_with_client(client, &options, health, async {
            let _ = stopped.await;
        })
        .await
    });
    // A standby (hub-1's lease lasts an hour): ready, and it keeps looking.
    wait_for("the standby is ready", || probe.is_ready()).await;
    // hub-1 shuts down and releases the lease: hub-0 takes it at once and reconciles.
    {
        let mut l = lease.lock().expect("lock");
        l["spec"]["holderIdentity"] = Value::Null;
        l["spec"]["leaseDurationSeconds"] = json!(1);
        l["metadata"]["resourceVersion"] = json!("100");
    }
    wait_for("hub-0 takes the lease", || lease.lock().expect("lock")["spec"]["holderIdentity"] == "hub-0").await;
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(60), runner).await.expect("stops").expect("no panic");
    result.expect("a clean stop");
    let seen = tokio::time::timeout(Duration::from_secs(60), server)
        .await
        .expect("the client is gone")
        .expect("no panic")
        .unwrap_or_else(|e| panic!("{e}"));
    let acquired = seen
        .iter()
        .position(|s| s.method == "PUT" && s.body["spec"]["holderIdentity"] == "hub-0")
        .expect("the take-over");
    let first_list = seen.iter().position(|s| s.path == SC && !s.query.contains("watch")).expect("a reconcile");
    assert!(first_list > acquired, "no reconcile before leading");
    let last = seen.last().expect("requests");
    assert_eq!(last.method, "PUT", "the last request releases the lease");
    assert!(last.body["spec"].get("holderIdentity").is_none(), "{}", last.body);
    assert_eq!(lease.lock().expect("lock")["spec"]["leaseTransitions"], 3, "one more transition");
}

/// Hub options that campaign as `identity`, renewing (and so looking) every 20 ms; the lease
/// and renew deadline stay long, so a slow machine loses nothing.
fn leading_as(identity: &str, lease_duration: Duration, renew_deadline: Duration) -> HubOptions {
    let mut options = HubOptions::default();
    options.leader_election.leader_election_identity = Some(identity.into());
    options.leader_election.timing = slice_operator::leader::LeaseTiming {
        lease_duration,
        renew_deadline,
        renew_period: Duration::from_millis(20),
        retry_period: Duration::from_millis(20),
    };
    options
}
