//! The worker controller against the in-memory API (`slice_kube::memory`): the exact requests
//! of each pass, in order, for create, the gateway pod appearing, a namespace added, a peer's key
//! and endpoint changing, a node added and removed, Multus, deletion through the finalizer, a
//! repeat pass (no writes), failures (the pass stops and the retry finishes the job), tunnel
//! states from the gateway's metrics (rendered by slice-gateway itself), `connectedPods`, and
//! the churn rule (an advancing handshake alone is written at most once a minute). Every
//! request is checked against the declared access lists (`WORKER_HUB` on the hub with its own
//! namespace `slicenet-cluster-c2`, `WORKER_CLUSTER` in the cluster with `slicenet-system`); the
//! node agent's watch against `NODE_AGENT`.

mod worker_support;

use futures::StreamExt as _;
use serde_json::{Value, json};
use slice_gateway::metrics::{PeerSample, Sample, render};
use slice_operator::access::{NODE_AGENT, WORKER_CLUSTER, WORKER_HUB};
use slice_operator::node_agent::kube::{ConfigUpdate, config_updates};
use slice_operator::worker::decide::Settings;
use slice_operator::worker::keys::KeyPair;
use slice_operator::worker::{Worker, WorkerError};
use worker_support::{FakeApi, Recorded, Side};

const NOW: &str = "2026-11-23T20:00:00Z";
const PRIVATE: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
const PUBLIC: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";
const PEER_KEY: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const PEER_KEY_2: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

const WS: &str = "/apis/slicenet.io/v1alpha1/namespaces/slicenet-cluster-c2/workerslices";
const SYS: &str = "/api/v1/namespaces/slicenet-system";
const GW: &str = "/api/v1/namespaces/slicenet-gateway";
const DEPLOY: &str = "/apis/apps/v1/namespaces/slicenet-gateway/deployments";
const STS: &str = "/apis/apps/v1/namespaces/slicenet-gateway/statefulsets";
const NADS: &str = "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions";
/// Where the worker reads the gateway pod's metrics: its pod IP, the fixed port.
const GATEWAY_METRICS: &str = "10.244.0.7:9586";

fn worker_slice() -> Value {
    json!({
        "apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
        "metadata": {"name": "blue", "namespace": "slicenet-cluster-c2", "generation": 1},
        "spec": {
            "slice": "blue", "cluster": "c2", "sliceSubnet": "10.80.0.0/16",
            "clusterPrefix": "10.80.16.0/20", "nodePrefixLength": 26, "vni": 100,
            "namespaces": ["shop"],
            // One gateway (the default is two): the passes' writes in order; two replicas have
            // their own tests below.
            "gateway": {"replicas": 1},
            "peers": [
                {"cluster": "c1", "prefix": "10.80.0.0/20", "publicKey": PEER_KEY, "endpoint": "198.18.100.1:31820"},
                {"cluster": "c3", "prefix": "10.80.32.0/20"},
            ],
        },
    })
}

fn node(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn gateway_pod(ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "slicenet-gw-blue-0", "namespace": "slicenet-gateway",
            "labels": {"app.kubernetes.io/name": "slice-gateway", "slicenet.io/slice": "blue"},
            "annotations": {"k8s.v1.cni.cncf.io/network-status":
                json!([{"name": "cbr0", "interface": "eth0", "ips": ["10.244.0.7"]},
                       {"name": "slicenet-gateway/slice-blue", "interface": "slice0", "ips": [ip]}]).to_string()}},
        "status": {"phase": "Running", "podIP": "10.244.0.7"},
    })
}

/// A pod in `ns` whose network-status has the primary network and `networks`.
fn app_pod(ns: &str, name: &str, phase: &str, networks: &[&str]) -> Value {
    let mut entries = vec![json!({"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.9"]})];
    entries.extend(networks.iter().map(|n| json!({"name": n, "interface": "slice0", "ips": ["10.80.16.9"]})));
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
            "annotations": {"k8s.v1.cni.cncf.io/network-status": Value::Array(entries).to_string()}},
        "status": {"phase": phase},
    })
}

/// Unix seconds of `NOW` plus `offset`.
fn now_plus(offset: f64) -> f64 {
    NOW.parse::<k8s_openapi::jiff::Timestamp>().expect("NOW").as_second() as f64 + offset
}

/// What slice-gateway's own renderer serves for peers with these last handshakes (Unix
/// seconds, 0: none), with the tunnel figures of [`HEALTH`] (`rx_bytes` set apart).
fn gateway_metrics_with(peers: &[(&str, f64)], rx_bytes: u64) -> String {
    render(&Sample {
        interface: "sg-blue".into(),
        peers: peers
            .iter()
            .map(|(key, at)| PeerSample {
                public_key: (*key).into(),
                rx_bytes,
                rx_packets: 12,
                tx_bytes: 900,
                tx_packets: 8,
                handshake_rtt_ms: Some(2),
                rx_loss: 0.004,
                last_handshake: *at,
                drops: vec![("auth", 0)],
                live: None,
                bits_per_second: Some((16_000, 8_000)),
                ..PeerSample::default()
            })
            .collect(),
        ..Sample::default()
    })
}

fn gateway_metrics(peers: &[(&str, f64)]) -> String {
    gateway_metrics_with(peers, 1500)
}

/// `status.peers[].health` for the figures of [`gateway_metrics`].
fn health() -> Value {
    json!({"rttMillis": 2, "rxBytes": 1500, "txBytes": 900, "rxPackets": 12, "txPackets": 8, "rxLossPermille": 4,
           "rxBitsPerSecond": 16000, "txBitsPerSecond": 8000})
}

/// A hub with WorkerSlice `blue` and MemberCluster `c2` (published address 198.18.100.2), a
/// cluster with nodes n1, n2 and namespaces shop, default, slicenet-system.
fn fixture() -> FakeApi {
    let api = FakeApi::new(WORKER_HUB, "slicenet-cluster-c2", WORKER_CLUSTER, "slicenet-system");
    api.put(Side::Hub, worker_slice());
    api.put(
        Side::Hub,
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": "c2"},
               "spec": {}, "status": {"gatewayAddresses": ["198.18.100.2"]}}),
    );
    api.put(Side::Cluster, node("n1", "198.18.2.11"));
    api.put(Side::Cluster, node("n2", "198.18.2.12"));
    for ns in ["shop", "default", "slicenet-system"] {
        api.put(Side::Cluster, namespace(ns));
    }
    api
}

fn settings() -> Settings {
    Settings { cluster: "c2".into(), ..Settings::default() }
}

/// A worker on `api`'s clients with the fixed key pair, reading gateway metrics from `api`.
fn worker_on(api: &FakeApi) -> Worker {
    let (hub, local) = api.clients();
    Worker::with_key_source(
        hub,
        local,
        settings(),
        Box::new(|_| KeyPair { private_key: PRIVATE.into(), public_key: PUBLIC.into() }),
    )
    .with_metrics_source(api.metrics_source())
}

/// Runs one pass against `api` with a new worker; returns its result and requests.
async fn pass(api: &FakeApi) -> (Result<usize, WorkerError>, Vec<Recorded>) {
    let worker = worker_on(api);
    let result = worker.reconcile_once("c2", NOW).await.map(|o| o.writes);
    drop(worker);
    assert_eq!(api.violations(), Vec::<String>::new(), "requests not covered by the access lists");
    (result, api.take_requests())
}

/// Runs one pass of `worker` (which remembers its earlier passes) at `now`.
async fn pass_at(api: &FakeApi, worker: &Worker, now: &str) -> (Result<usize, WorkerError>, Vec<Recorded>) {
    let result = worker.reconcile_once("c2", now).await.map(|o| o.writes);
    assert_eq!(api.violations(), Vec::<String>::new(), "requests not covered by the access lists");
    (result, api.take_requests())
}

/// The reads every pass starts with, when the slice's member namespaces are `shop`.
fn reads() -> Vec<String> {
    reads_counting(&["shop"])
}

/// The reads of a pass that counts the pods of `member_namespaces`.
fn reads_counting(member_namespaces: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        format!("hub GET {WS}"),
        "hub GET /apis/slicenet.io/v1alpha1/memberclusters/c2".into(),
        "GET /api/v1/nodes".into(),
        "GET /api/v1/namespaces".into(),
        format!("GET {GW}/secrets"),
        format!("GET {SYS}/configmaps"),
        format!("GET {DEPLOY}"),
        format!("GET {STS}"),
        format!("GET {GW}/services"),
        format!("GET {GW}/pods"),
    ]
    .into();
    v.extend(member_namespaces.iter().map(|ns| format!("GET /api/v1/namespaces/{ns}/pods")));
    // NADs are listed whether Multus is on or not (those left from when it was on must go).
    v.push(format!("GET {NADS}"));
    v.extend(mcs_reads());
    v
}

/// The multi-cluster services' reads at the end of every pass (no namespace exports here):
/// the served MCS version, ServiceExports, the worker's ServiceImports and MCS EndpointSlices, the slice-dns Service
/// and the cluster's Corefiles.
fn mcs_reads() -> Vec<String> {
    vec![
        // The MCS API group's discovery document: 404 here (no MCS CRDs), so v1alpha1.
        "GET /apis/multicluster.x-k8s.io".into(),
        "GET /apis/multicluster.x-k8s.io/v1alpha1/serviceexports".into(),
        "GET /apis/multicluster.x-k8s.io/v1alpha1/serviceimports".into(),
        "GET /apis/discovery.k8s.io/v1/endpointslices".into(),
        format!("GET {SYS}/services/slice-dns"),
        "GET /api/v1/namespaces/kube-system/configmaps/coredns".into(),
        "GET /api/v1/namespaces/kube-system/configmaps/node-local-dns".into(),
        // Policy: every MultiNetworkPolicy, the worker's NetworkPolicies.
        "GET /apis/k8s.cni.cncf.io/v1beta1/multi-networkpolicies".into(),
        "GET /apis/networking.k8s.io/v1/networkpolicies".into(),
    ]
}

/// The requests' lines, events left out (see [`event_lines`]).
fn lines(requests: &[Recorded]) -> Vec<String> {
    requests.iter().filter(|r| !r.is_event()).map(Recorded::line).collect()
}

/// (side, method, namespace, regarding kind/name, type, reason) of each event request.
fn event_lines(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.is_event())
        .map(|e| {
            let side = if e.side == Side::Hub { "hub " } else { "" };
            let ns = e.path.split('/').nth(5).unwrap_or_default();
            let r = &e.body["regarding"];
            format!(
                "{side}{} {ns} {}/{} {} {}",
                e.method,
                r["kind"].as_str().unwrap_or("-"),
                r["name"].as_str().unwrap_or("-"),
                e.body["type"].as_str().unwrap_or("-"),
                e.body["reason"].as_str().unwrap_or("-"),
            )
        })
        .collect()
}

fn with_reads(writes: &[String]) -> Vec<String> {
    let mut v = reads();
    v.extend_from_slice(writes);
    v
}

fn body_of<'a>(requests: &'a [Recorded], line: &str) -> &'a Value {
    &requests.iter().find(|r| r.line() == line).unwrap_or_else(|| panic!("no request {line}")).body
}

fn node_config(api: &FakeApi, node: &str) -> Value {
    let cm = api.get(Side::Cluster, &format!("{SYS}/configmaps/slicenet-node-{node}")).expect("node ConfigMap");
    serde_json::from_str(cm["data"]["config.json"].as_str().expect("config.json")).expect("JSON")
}

fn status(api: &FakeApi) -> Value {
    api.get(Side::Hub, &format!("{WS}/blue")).expect("WorkerSlice")["status"].clone()
}

fn create_writes() -> Vec<String> {
    vec![
        format!("hub PATCH {WS}/blue"),
        "PATCH /api/v1/namespaces/shop".into(),
        format!("POST {GW}/secrets"),
        format!("PATCH {GW}/secrets/slicenet-gw-blue"),
        format!("PATCH {STS}/slicenet-gw-blue"),
        format!("PATCH {GW}/services/slicenet-gw-blue"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n1"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n2"),
        format!("PATCH {SYS}/configmaps/slicenet-membership"),
        format!("hub PATCH {WS}/blue/status"),
    ]
}

/// The fixture after a first pass and with the gateway pod running on n2.
async fn running() -> FakeApi {
    let api = fixture();
    let (r, _) = pass(&api).await;
    r.expect("first pass");
    api.put(Side::Cluster, gateway_pod("10.80.16.66"));
    let (r, _) = pass(&api).await;
    r.expect("gateway pass");
    api
}

#[tokio::test]
async fn create_makes_everything_in_order_and_publishes_the_public_key() {
    let api = fixture();
    let (result, requests) = pass(&api).await;
    assert_eq!(result.expect("pass"), create_writes().len());
    assert_eq!(lines(&requests), with_reads(&create_writes()));

    let finalizer = body_of(&requests, &format!("hub PATCH {WS}/blue"));
    assert_eq!(finalizer["metadata"]["finalizers"], json!(["slicenet.io/worker"]));
    assert!(finalizer["metadata"]["resourceVersion"].is_string(), "guarded by the resourceVersion");
    let label = body_of(&requests, "PATCH /api/v1/namespaces/shop");
    assert_eq!(label["metadata"]["labels"], json!({"slicenet.io/slice": "blue"}));
    let key = body_of(&requests, &format!("POST {GW}/secrets"));
    assert_eq!(key["metadata"]["name"], "slicenet-gw-blue-key");
    let apply = requests.iter().find(|r| r.line() == format!("PATCH {STS}/slicenet-gw-blue")).expect("apply");
    assert_eq!(apply.content_type, "application/apply-patch+yaml");
    assert!(
        apply.query.contains("fieldManager=slicenet-worker") && apply.query.contains("force=true"),
        "{}",
        apply.query
    );

    // The gateway configuration: our key, peer c1 (c3 has no key yet).
    let secret = api.get(Side::Cluster, &format!("{GW}/secrets/slicenet-gw-blue")).expect("config Secret");
    let conf = decode_b64(secret["data"]["slicenet-gw-blue-0.conf"].as_str().expect("ordinal 0's file"));
    assert!(conf.starts_with(&format!("[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 51820\n")), "{conf}");
    assert_eq!(conf.matches("[Peer]").count(), 1, "{conf}");
    assert!(
        conf.contains(&format!("PublicKey = {PEER_KEY}\nAllowedIPs = 10.80.0.0/20\nEndpoint = 198.18.100.1:31820\n"))
    );

    // Node agents: prefixes, the peer node, the gateway namespace; no remote routes before the
    // gateway pod has a slice address.
    let n2 = node_config(&api, "n2");
    assert_eq!(n2["underlayAddress"], "198.18.2.12");
    assert_eq!(n2["slices"][0]["nodePrefix"], "10.80.16.64/26");
    assert_eq!(n2["slices"][0]["namespaces"], json!(["shop"]));
    assert_eq!(
        n2["slices"][0]["peers"],
        json!([{"name": "n1", "underlayAddress": "198.18.2.11", "nodePrefix": "10.80.16.0/26"}])
    );
    assert!(n2["slices"][0].get("remoteRoutes").is_none());
    let membership = api.get(Side::Cluster, &format!("{SYS}/configmaps/slicenet-membership")).expect("membership");
    assert_eq!(membership["data"], json!({"blue": "shop"}));

    // Status: public key, endpoint = published address + the assigned nodePort, nodes.
    let s = status(&api);
    assert_eq!(s["gatewayPublicKey"], PUBLIC);
    assert_eq!(s["gatewayEndpoint"], "198.18.100.2:31001");
    assert_eq!(
        s["nodes"],
        json!([{"node": "n1", "prefix": "10.80.16.0/26"}, {"node": "n2", "prefix": "10.80.16.64/26"}])
    );
    assert_eq!(s["observedGeneration"], 1);
    assert_eq!(s["conditions"][0]["type"], "Ready");
    assert_eq!(s["conditions"][0]["status"], "False");
    assert_eq!(s["conditions"][0]["reason"], "GatewayPending");
    // No gateway pod yet: nothing to scrape; c3 has no key at all.
    assert_eq!(api.take_scrapes(), []);
    assert_eq!(
        s["peers"],
        json!([
            {"cluster": "c1", "state": "Pending", "reason": "gateway not running: no running gateway pod with an IP"},
            {"cluster": "c3", "state": "Pending", "reason": "peer has not published a key"},
        ])
    );
    assert_eq!(s["connectedPods"], 0);
    // The gateway serves its metrics on the fixed port.
    let deployment = api.get(Side::Cluster, &format!("{STS}/slicenet-gw-blue")).expect("StatefulSet");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert!(container["args"].to_string().contains(r#""--metrics","[::]:9586""#), "{}", container["args"]);
    assert_eq!(container["ports"][1]["containerPort"], 9586);

    // The private key never goes to the hub.
    for r in requests.iter().filter(|r| r.side == Side::Hub) {
        assert!(!r.body.to_string().contains(PRIVATE), "private key sent to the hub: {}", r.line());
    }
}

#[tokio::test]
async fn a_repeat_pass_writes_nothing() {
    let api = running().await;
    let (result, requests) = pass(&api).await;
    assert_eq!(result.expect("pass"), 0);
    assert_eq!(lines(&requests), reads());
}

#[tokio::test]
async fn the_gateway_address_brings_remote_routes_and_ready() {
    let api = fixture();
    pass(&api).await.0.expect("first pass");
    api.put(Side::Cluster, gateway_pod("10.80.16.66"));
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    let writes = [
        format!("PATCH {SYS}/configmaps/slicenet-node-n1"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n2"),
        format!("hub PATCH {WS}/blue/status"),
    ];
    assert_eq!(lines(&requests), with_reads(&writes));
    let routes = &node_config(&api, "n1")["slices"][0]["remoteRoutes"];
    assert_eq!(
        *routes,
        json!([{"prefix": "10.80.0.0/20", "via": "10.80.16.66"}, {"prefix": "10.80.32.0/20", "via": "10.80.16.66"}])
    );
    // The gateway runs, but no tunnel is up yet (its metrics refuse, c3 has no key): not ready.
    let ready = |api: &FakeApi| {
        let s = status(api);
        let c = &s["conditions"][0];
        (c["status"].as_str().map(str::to_owned), c["reason"].as_str().map(str::to_owned), c["message"].clone())
    };
    assert_eq!(
        ready(&api),
        (Some("False".into()), Some("TunnelsDown".into()), json!("tunnels not up: c1 (Pending), c3 (Pending)"))
    );

    // c3 publishes its key and the gateway shakes hands with c1 only: still not ready.
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["spec"]["peers"][1]["publicKey"] = json!(PEER_KEY_2));
    api.set_metrics(GATEWAY_METRICS, Ok(gateway_metrics(&[(PEER_KEY, now_plus(-5.0)), (PEER_KEY_2, 0.0)])));
    pass(&api).await.0.expect("pass");
    assert_eq!(ready(&api), (Some("False".into()), Some("TunnelsDown".into()), json!("tunnels not up: c3 (Down)")));

    // Every tunnel up: ready.
    api.set_metrics(GATEWAY_METRICS, Ok(gateway_metrics(&[(PEER_KEY, now_plus(-5.0)), (PEER_KEY_2, now_plus(-3.0))])));
    pass(&api).await.0.expect("pass");
    assert_eq!(ready(&api), (Some("True".into()), Some("Ready".into()), json!("")));
}

#[tokio::test]
async fn a_namespace_added_is_labelled_and_handed_to_the_nodes() {
    let api = running().await;
    api.put(Side::Cluster, namespace("db"));
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| {
        ws["spec"]["namespaces"] = json!(["shop", "db"]);
        ws["metadata"]["generation"] = json!(2);
    });
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    let writes = [
        "PATCH /api/v1/namespaces/db".to_owned(),
        format!("PATCH {SYS}/configmaps/slicenet-node-n1"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n2"),
        format!("PATCH {SYS}/configmaps/slicenet-membership"),
        format!("hub PATCH {WS}/blue/status"),
    ];
    let mut expected = reads_counting(&["db", "shop"]);
    expected.extend(writes);
    assert_eq!(lines(&requests), expected);
    assert_eq!(node_config(&api, "n1")["slices"][0]["namespaces"], json!(["db", "shop"]));
    assert_eq!(status(&api)["observedGeneration"], 2);
}

#[tokio::test]
async fn a_peer_change_rewrites_only_the_gateway_configuration() {
    let api = running().await;
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| {
        ws["spec"]["peers"][0]["publicKey"] = json!(PEER_KEY_2);
        ws["spec"]["peers"][0]["endpoint"] = json!("198.18.100.9:32000");
        ws["metadata"]["generation"] = json!(2);
    });
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    // The gateway configuration, and the status for the new generation: nothing else.
    let writes = [format!("PATCH {GW}/secrets/slicenet-gw-blue"), format!("hub PATCH {WS}/blue/status")];
    assert_eq!(lines(&requests), with_reads(&writes));
    let secret = api.get(Side::Cluster, &format!("{GW}/secrets/slicenet-gw-blue")).expect("config Secret");
    let conf = decode_b64(secret["data"]["slicenet-gw-blue-0.conf"].as_str().expect("ordinal 0's file"));
    assert!(
        conf.contains(&format!("PublicKey = {PEER_KEY_2}\nAllowedIPs = 10.80.0.0/20\nEndpoint = 198.18.100.9:32000\n")),
        "{conf}"
    );
    assert!(!conf.contains(PEER_KEY), "{conf}");
    let status_body = body_of(&requests, &format!("hub PATCH {WS}/blue/status"));
    assert_eq!(status_body["status"]["observedGeneration"], 2);
    assert_eq!(status_body["status"]["gatewayPublicKey"], PUBLIC, "our key does not change");
}

#[tokio::test]
async fn a_node_added_gets_a_prefix_and_the_others_learn_it() {
    let api = running().await;
    api.put(Side::Cluster, node("n3", "198.18.2.13"));
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    let writes = [
        format!("PATCH {SYS}/configmaps/slicenet-node-n1"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n2"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n3"),
        format!("hub PATCH {WS}/blue/status"),
    ];
    assert_eq!(lines(&requests), with_reads(&writes));
    assert_eq!(node_config(&api, "n3")["slices"][0]["nodePrefix"], "10.80.16.128/26");
    assert_eq!(node_config(&api, "n1")["slices"][0]["peers"][1]["name"], "n3");
    assert_eq!(status(&api)["nodes"][2], json!({"node": "n3", "prefix": "10.80.16.128/26"}));
}

#[tokio::test]
async fn a_node_removed_loses_its_config_and_nobody_is_renumbered() {
    let api = running().await;
    api.put(Side::Cluster, node("n3", "198.18.2.13"));
    pass(&api).await.0.expect("n3 pass");
    api.remove(Side::Cluster, "/api/v1/nodes/n1");
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    let writes = [
        format!("PATCH {SYS}/configmaps/slicenet-node-n2"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n3"),
        format!("DELETE {SYS}/configmaps/slicenet-node-n1"),
        format!("hub PATCH {WS}/blue/status"),
    ];
    assert_eq!(lines(&requests), with_reads(&writes));
    assert_eq!(
        status(&api)["nodes"],
        json!([{"node": "n2", "prefix": "10.80.16.64/26"}, {"node": "n3", "prefix": "10.80.16.128/26"}])
    );
}

#[tokio::test]
async fn multus_clusters_get_a_nad_per_member_namespace() {
    let api = fixture();
    api.edit(Side::Hub, "/apis/slicenet.io/v1alpha1/memberclusters/c2", |mc| mc["spec"]["multus"] = json!(true));
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    let nad = "/apis/k8s.cni.cncf.io/v1/namespaces/shop/network-attachment-definitions/slice-blue";
    let mut expected = reads();
    let mut writes = create_writes();
    writes.insert(9, format!("PATCH {nad}"));
    expected.extend(writes);
    assert_eq!(lines(&requests), expected);
    let stored = api.get(Side::Cluster, nad).expect("NAD");
    let config: Value = serde_json::from_str(stored["spec"]["config"].as_str().expect("config")).expect("JSON");
    assert_eq!(config["slice"], "blue");
    // Repeat: the NAD is read back and not written again.
    let (_, requests) = pass(&api).await;
    assert!(requests.iter().all(|r| !r.is_write()), "{:?}", lines(&requests));
}

#[tokio::test]
async fn deletion_removes_what_the_worker_made_then_the_finalizer() {
    let api = running().await;
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["metadata"]["deletionTimestamp"] = json!(NOW));
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    let writes = [
        "PATCH /api/v1/namespaces/shop".to_owned(),
        format!("PATCH {SYS}/configmaps/slicenet-node-n1"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n2"),
        format!("PATCH {SYS}/configmaps/slicenet-membership"),
        format!("DELETE {GW}/secrets/slicenet-gw-blue"),
        format!("DELETE {GW}/secrets/slicenet-gw-blue-key"),
        format!("DELETE {STS}/slicenet-gw-blue"),
        format!("DELETE {GW}/services/slicenet-gw-blue"),
        format!("hub PATCH {WS}/blue"),
    ];
    // A slice being deleted has no pods to count.
    let mut expected = reads_counting(&[]);
    expected.extend(writes);
    assert_eq!(lines(&requests), expected);
    let unlabel = body_of(&requests, "PATCH /api/v1/namespaces/shop");
    assert_eq!(unlabel["metadata"]["labels"]["slicenet.io/slice"], Value::Null);
    assert_eq!(body_of(&requests, &format!("hub PATCH {WS}/blue"))["metadata"]["finalizers"], json!([]));
    assert!(api.get(Side::Hub, &format!("{WS}/blue")).is_none(), "the WorkerSlice is gone");
    assert_eq!(node_config(&api, "n1")["slices"], json!([]), "the node agents tear the slice down");
    assert!(api.paths(Side::Cluster, &format!("{GW}/secrets")).is_empty());
    // And a pass after that has nothing left to do.
    let (result, requests) = pass(&api).await;
    assert_eq!(result.expect("pass"), 0);
    assert_eq!(lines(&requests), reads_counting(&[]));
}

#[tokio::test]
async fn a_failed_write_stops_the_pass_and_the_retry_finishes() {
    let api = fixture();
    api.fail(Side::Cluster, "PATCH", STS, 0, 500);
    let (result, requests) = pass(&api).await;
    let err = result.expect_err("the pass fails");
    assert!(err.to_string().contains("applying StatefulSet slicenet-gateway/slicenet-gw-blue"), "{err}");
    assert_eq!(lines(&requests), with_reads(&create_writes()[..5]));
    // The retry (what `run` does after the backoff) makes only what is still missing, with the
    // key made in the first pass.
    let (result, requests) = pass(&api).await;
    result.expect("retry");
    assert_eq!(lines(&requests), with_reads(&create_writes()[4..]));
    assert_eq!(status(&api)["gatewayPublicKey"], PUBLIC);
}

#[tokio::test]
async fn a_conflict_on_the_hub_stops_before_anything_is_made() {
    let api = fixture();
    api.fail(Side::Hub, "PATCH", &format!("{WS}/blue"), 0, 409);
    let (result, requests) = pass(&api).await;
    let err = result.expect_err("the pass fails");
    assert!(err.to_string().contains("setting the finalizers of WorkerSlice blue"), "{err}");
    assert_eq!(lines(&requests), with_reads(&create_writes()[..1]));
    // Nothing exists in the cluster without the finalizer on the hub.
    assert!(
        api.paths(Side::Cluster, GW).iter().all(|p| !p.contains("/secrets/")),
        "{:?}",
        api.paths(Side::Cluster, GW)
    );
    let (result, requests) = pass(&api).await;
    result.expect("retry");
    assert_eq!(lines(&requests), with_reads(&create_writes()));
}

#[tokio::test]
async fn a_failed_read_makes_no_writes() {
    let api = fixture();
    api.fail(Side::Cluster, "GET", "/api/v1/nodes", 0, 500);
    let (result, requests) = pass(&api).await;
    let err = result.expect_err("the pass fails");
    assert!(matches!(err, WorkerError::Read { .. }), "{err}");
    assert!(requests.iter().all(|r| !r.is_write()));
    assert_eq!(lines(&requests), reads()[..3].to_vec());
}

#[tokio::test]
async fn a_namespace_of_another_slice_is_never_touched() {
    let api = fixture();
    api.put(
        Side::Cluster,
        json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "db", "labels": {"slicenet.io/slice": "red"}}}),
    );
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["spec"]["namespaces"] = json!(["shop", "db"]));
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    assert!(!lines(&requests).contains(&"PATCH /api/v1/namespaces/db".to_owned()));
    let s = status(&api);
    assert_eq!(s["conditions"][0]["reason"], "NamespaceConflict");
    assert!(s["conditions"][0]["message"].as_str().unwrap_or_default().contains("db"));
    assert_eq!(node_config(&api, "n1")["slices"][0]["namespaces"], json!(["shop"]));
}

#[tokio::test]
async fn heartbeat_patches_the_member_cluster_status() {
    let api = fixture();
    let (hub, local) = api.clients();
    let worker = Worker::new(hub, local, settings());
    worker.heartbeat("c2", NOW).await.expect("heartbeat");
    drop(worker);
    assert_eq!(api.violations(), Vec::<String>::new());
    let requests = api.take_requests();
    assert_eq!(lines(&requests), ["hub PATCH /apis/slicenet.io/v1alpha1/memberclusters/c2/status"]);
    let mc = api.get(Side::Hub, "/apis/slicenet.io/v1alpha1/memberclusters/c2").expect("MemberCluster");
    assert_eq!(mc["status"]["lastHeartbeat"], NOW);
    assert_eq!(mc["status"]["workerVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(mc["status"].get("clockOffsetSeconds"), None, "nothing measured yet");
    assert_eq!(mc["status"]["gatewayAddresses"], json!(["198.18.100.2"]), "the rest of the status stays");
}

#[tokio::test]
async fn the_heartbeat_carries_the_clock_offset_measured_on_the_previous_one() {
    let api = fixture();
    // The API server stamps status writes in managedFields: here 30 s before the worker's NOW
    // (the in-memory API keeps what it is given), so the worker's clock is 30 s ahead.
    api.edit(Side::Hub, "/apis/slicenet.io/v1alpha1/memberclusters/c2", |mc| {
        mc["metadata"]["managedFields"] = json!([
            {"manager": "slice-operator", "operation": "Update", "subresource": "status", "time": "2026-11-23T19:59:30Z",
             "apiVersion": "slicenet.io/v1alpha1", "fieldsType": "FieldsV1", "fieldsV1": {}},
            {"manager": "kubectl", "operation": "Update", "time": "2026-11-23T21:00:00Z",
             "apiVersion": "slicenet.io/v1alpha1", "fieldsType": "FieldsV1", "fieldsV1": {}}
        ]);
    });
    let (hub, local) = api.clients();
    let worker = Worker::new(hub, local, settings());
    worker.heartbeat("c2", NOW).await.expect("heartbeat");
    let path = "/apis/slicenet.io/v1alpha1/memberclusters/c2";
    assert_eq!(api.get(Side::Hub, path).expect("MemberCluster")["status"].get("clockOffsetSeconds"), None);
    worker.heartbeat("c2", NOW).await.expect("heartbeat");
    assert_eq!(
        api.get(Side::Hub, path).expect("MemberCluster")["status"]["clockOffsetSeconds"],
        30,
        "the spec's write (no subresource) is not the server's stamp of a status write"
    );
    assert_eq!(api.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn the_heartbeat_names_the_crds_the_last_pass_found_missing() {
    let api = running().await;
    // The cluster has no MultiNetworkPolicy CRD: its list answers 404.
    api.fail(Side::Cluster, "GET", "/apis/k8s.cni.cncf.io/v1beta1/multi-networkpolicies", 0, 404);
    let worker = worker_on(&api);
    let (result, _) = pass_at(&api, &worker, NOW).await;
    result.expect("a missing optional CRD is no error");
    worker.heartbeat("c2", NOW).await.expect("heartbeat");
    let path = "/apis/slicenet.io/v1alpha1/memberclusters/c2";
    let mc = api.get(Side::Hub, path).expect("MemberCluster");
    assert_eq!(mc["status"]["missingCrds"], json!(["multi-networkpolicies.k8s.cni.cncf.io"]));
    // Installed since: the next pass finds it and the heartbeat clears the list.
    let (result, _) = pass_at(&api, &worker, NOW).await;
    result.expect("pass");
    worker.heartbeat("c2", NOW).await.expect("heartbeat");
    assert_eq!(api.get(Side::Hub, path).expect("MemberCluster")["status"]["missingCrds"], json!([]));
    assert_eq!(api.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn the_heartbeat_sums_up_the_node_agents_leases() {
    let api = running().await;
    let worker = worker_on(&api);
    // Before any pass the worker does not know the nodes: no Lease is read.
    worker.heartbeat("c2", NOW).await.expect("heartbeat");
    assert!(lines(&api.take_requests()).iter().all(|l| !l.contains("leases")));
    let (result, _) = pass_at(&api, &worker, NOW).await;
    result.expect("pass");
    api.take_requests();
    // No agent has a Lease (agents older than this version): nothing is reported.
    worker.heartbeat("c2", NOW).await.expect("heartbeat");
    let path = "/apis/slicenet.io/v1alpha1/memberclusters/c2";
    assert_eq!(api.get(Side::Hub, path).expect("MemberCluster")["status"].get("agents"), None);
    // n1's agent renewed 5 s ago and its node chains slice-cni; n2's stopped a minute ago.
    let at = |s: &str| s.parse::<k8s_openapi::jiff::Timestamp>().expect("time");
    api.put(
        Side::Cluster,
        slice_operator::node_agent::lease::lease("n1", "0.4.0", Some("chained"), at("2026-11-23T19:59:55Z")),
    );
    api.put(
        Side::Cluster,
        slice_operator::node_agent::lease::lease("n2", "0.4.0", Some("chained"), at("2026-11-23T19:59:00Z")),
    );
    worker.heartbeat("c2", NOW).await.expect("heartbeat");
    let requests = lines(&api.take_requests());
    assert!(
        requests.iter().any(|l| l.starts_with("GET /apis/coordination.k8s.io/v1/namespaces/slicenet-node/leases")),
        "{requests:?}"
    );
    let agents = &api.get(Side::Hub, path).expect("MemberCluster")["status"]["agents"];
    assert_eq!((agents["nodes"].as_u64(), agents["ready"].as_u64()), (Some(2), Some(1)), "{agents}");
    assert_eq!(agents["versions"], json!(["0.4.0"]));
    assert_eq!(agents["problems"][0]["node"], "n2");
    assert_eq!(agents["problems"][0]["reason"], "LeaseExpired");
    assert_eq!(api.violations(), Vec::<String>::new(), "the worker may list the agents' Leases");
}

#[tokio::test]
async fn node_agent_watches_its_config_map() {
    let api = FakeApi::new(NODE_AGENT, "slicenet-system", NODE_AGENT, "slicenet-system");
    let config = |vni: u32| {
        json!({"node": "n1", "underlayAddress": "198.18.2.11",
               "slices": [{"name": "blue", "vni": vni, "sliceSubnet": "10.80.0.0/16", "nodePrefix": "10.80.16.0/26"}]})
    };
    let cm = |vni: u32| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "slicenet-node-n1", "namespace": "slicenet-system", "resourceVersion": "7"},
               "data": {"config.json": config(vni).to_string()}})
    };
    api.put(Side::Cluster, cm(100));
    let mut other = cm(100);
    other["metadata"]["name"] = json!("slicenet-node-n2");
    api.put(Side::Cluster, other);
    api.state.lock().expect("state").watch_events =
        vec![json!({"type": "MODIFIED", "object": cm(200)}), json!({"type": "DELETED", "object": cm(200)})];
    let (_hub, local) = api.clients();
    let updates: Vec<ConfigUpdate> =
        config_updates(local, "n1").take(3).map(|u| u.expect("no watch error")).collect().await;
    drop(_hub);
    let vni = |u: &ConfigUpdate| match u {
        ConfigUpdate::Config(c) => Some(c.slices[0].vni),
        _ => None,
    };
    assert_eq!(updates.iter().map(vni).collect::<Vec<_>>(), [Some(100), Some(200), None]);
    assert_eq!(updates[2], ConfigUpdate::Deleted);
    assert_eq!(api.violations(), Vec::<String>::new());
    let requests = api.take_requests();
    assert_eq!(requests.len(), 2, "{:?}", lines(&requests));
    for r in &requests {
        assert_eq!(r.line(), format!("GET {SYS}/configmaps"));
        assert!(r.query.contains("fieldSelector=metadata.name%3Dslicenet-node-n1"), "{}", r.query);
    }
    assert!(requests[1].query.contains("watch=true"));
}

#[tokio::test]
async fn tunnel_states_come_from_the_gateway_metrics() {
    let api = running().await;
    // c3 publishes its key; the gateway knows both peers: c1 shook hands 30 s ago, c3 never.
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| {
        ws["spec"]["peers"][1]["publicKey"] = json!(PEER_KEY_2);
        ws["metadata"]["generation"] = json!(2);
    });
    api.set_metrics(GATEWAY_METRICS, Ok(gateway_metrics(&[(PEER_KEY, now_plus(-30.4)), (PEER_KEY_2, 0.0)])));
    api.take_scrapes();
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    let writes = [format!("PATCH {GW}/secrets/slicenet-gw-blue"), format!("hub PATCH {WS}/blue/status")];
    assert_eq!(lines(&requests), with_reads(&writes));
    assert_eq!(api.take_scrapes(), [GATEWAY_METRICS.parse().expect("address")], "the pod IP, the fixed port");
    assert_eq!(
        status(&api)["peers"],
        json!([
            {"cluster": "c1", "state": "Up", "lastHandshake": "2026-11-23T19:59:29Z", "health": health()},
            {"cluster": "c3", "state": "Down", "reason": "no handshake yet", "health": health()},
        ])
    );

    // Three minutes and a bit later c1's handshake is stale, and c3 came up.
    api.set_metrics(
        GATEWAY_METRICS,
        Ok(gateway_metrics(&[(PEER_KEY, now_plus(-200.0)), (PEER_KEY_2, now_plus(-5.0))])),
    );
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    assert_eq!(lines(&requests), with_reads(&[format!("hub PATCH {WS}/blue/status")]));
    assert_eq!(
        status(&api)["peers"],
        json!([
            {"cluster": "c1", "state": "Down", "reason": "no handshake for 200 s", "lastHandshake": "2026-11-23T19:56:40Z",
             "health": health()},
            {"cluster": "c3", "state": "Up", "lastHandshake": "2026-11-23T19:59:55Z", "health": health()},
        ])
    );
}

/// The gateway's metrics for peer c1 (`PEER_KEY`) with a handshake a few seconds before the
/// real clock's now (the tunnel check reads it) and the probe's verdict `live`.
fn probed_metrics(live: bool) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second() as f64;
    render(&Sample {
        interface: "sg-blue".into(),
        peers: vec![PeerSample {
            public_key: PEER_KEY.into(),
            last_handshake: now - 5.0,
            live: Some(live),
            ..PeerSample::default()
        }],
        ..Sample::default()
    })
}

#[tokio::test]
async fn the_tunnel_check_sees_a_silent_peer_between_passes_without_an_api_request() {
    let api = running().await;
    api.set_metrics(GATEWAY_METRICS, Ok(probed_metrics(true)));
    let worker = worker_on(&api);
    let now = format!("{:.0}", k8s_openapi::jiff::Timestamp::now());
    let (result, _) = pass_at(&api, &worker, &now).await;
    result.expect("pass");
    assert_eq!(status(&api)["peers"][0]["state"], "Up");
    api.take_scrapes();
    // Nothing changed: no pass is asked for; the check only scraped the gateway.
    assert!(!worker.tunnels_changed().await);
    assert_eq!(api.take_scrapes(), [GATEWAY_METRICS.parse().expect("address")]);
    assert_eq!(lines(&api.take_requests()), Vec::<String>::new(), "the check reads nothing from the API");

    // The link is cut: the gateway's probes hear nothing from c1 any more.
    api.set_metrics(GATEWAY_METRICS, Ok(probed_metrics(false)));
    assert!(worker.tunnels_changed().await, "a peer gone silent is a change");
    assert_eq!(lines(&api.take_requests()), Vec::<String>::new());
    let (result, requests) = pass_at(&api, &worker, &now).await;
    result.expect("pass");
    assert!(lines(&requests).contains(&format!("hub PATCH {WS}/blue/status")), "{:?}", lines(&requests));
    assert_eq!(status(&api)["peers"][0]["state"], "Down");
    assert_eq!(status(&api)["peers"][0]["reason"], "peer silent: no packet for three probe intervals");
    // The pass saw it: nothing more to do until it changes again.
    assert!(!worker.tunnels_changed().await);
    // A gateway that stops answering is a change too.
    api.set_metrics(GATEWAY_METRICS, Err("refused".into()));
    assert!(worker.tunnels_changed().await);
}

#[tokio::test]
async fn unreadable_metrics_leave_the_peers_pending_with_the_reason() {
    // `running` scraped a gateway that refuses the connection (no canned answer).
    let api = running().await;
    assert_eq!(api.take_scrapes(), [GATEWAY_METRICS.parse().expect("address")]);
    let refused = "gateway not running: connecting to 10.244.0.7:9586: Connection refused (os error 111)";
    assert_eq!(
        status(&api)["peers"],
        json!([
            {"cluster": "c1", "state": "Pending", "reason": refused},
            {"cluster": "c3", "state": "Pending", "reason": "peer has not published a key"},
        ])
    );

    // Something answers that is not a slice-gateway: the error says so.
    api.set_metrics(GATEWAY_METRICS, Ok("# TYPE up gauge\nup 1\n".into()));
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    assert_eq!(lines(&requests), with_reads(&[format!("hub PATCH {WS}/blue/status")]));
    let reason = status(&api)["peers"][0]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.starts_with("gateway not running: reading its metrics: no slice_gateway_peer_last_handshake_seconds"),
        "{reason}"
    );

    // A gateway pod that is gone leaves nothing to scrape.
    api.remove(Side::Cluster, &format!("{GW}/pods/slicenet-gw-blue-0"));
    api.take_scrapes();
    let (result, _) = pass(&api).await;
    result.expect("pass");
    assert_eq!(api.take_scrapes(), []);
    assert_eq!(status(&api)["peers"][0]["reason"], "gateway not running: no running gateway pod with an IP");
}

#[tokio::test]
async fn connected_pods_count_the_pods_with_the_slice_entry() {
    let api = running().await;
    api.put(Side::Cluster, app_pod("shop", "web-1", "Running", &["shop/slice-blue"]));
    api.put(Side::Cluster, app_pod("shop", "web-2", "Running", &["shop/slice-blue"]));
    api.put(Side::Cluster, app_pod("shop", "excluded", "Running", &[]));
    // Not counted: a finished pod (filtered by the API server), a pod outside the members.
    api.put(Side::Cluster, app_pod("shop", "job", "Succeeded", &["shop/slice-blue"]));
    api.put(Side::Cluster, app_pod("default", "other", "Running", &["default/slice-blue"]));
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    assert_eq!(lines(&requests), with_reads(&[format!("hub PATCH {WS}/blue/status")]));
    let list = requests.iter().find(|r| r.line() == "GET /api/v1/namespaces/shop/pods").expect("the member list");
    assert!(list.query.contains("fieldSelector=status.phase%3DRunning"), "{}", list.query);
    assert_eq!(status(&api)["connectedPods"], 2);
    // Nothing changed: nothing written.
    let (result, _) = pass(&api).await;
    assert_eq!(result.expect("pass"), 0);
}

#[tokio::test]
async fn an_advancing_handshake_alone_is_written_at_most_once_a_minute() {
    let api = running().await;
    api.set_metrics(GATEWAY_METRICS, Ok(gateway_metrics(&[(PEER_KEY, now_plus(-10.0))])));
    let worker = worker_on(&api);
    let handshake = |api: &FakeApi| status(api)["peers"][0]["lastHandshake"].as_str().map(str::to_owned);
    let status_write = [format!("hub PATCH {WS}/blue/status")];

    // 20:00:00: c1 comes up: written.
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    assert_eq!(result.expect("pass"), 1);
    assert_eq!(lines(&requests), with_reads(&status_write));
    assert_eq!(handshake(&api).as_deref(), Some("2026-11-23T19:59:50Z"));

    // 20:00:30: a rekey and more traffic, nothing else: held.
    api.set_metrics(GATEWAY_METRICS, Ok(gateway_metrics_with(&[(PEER_KEY, now_plus(25.0))], 9_000)));
    let (result, requests) = pass_at(&api, &worker, "2026-11-23T20:00:30Z").await;
    assert_eq!(result.expect("pass"), 0);
    assert_eq!(lines(&requests), reads());
    assert_eq!(handshake(&api).as_deref(), Some("2026-11-23T19:59:50Z"));

    // 20:01:00: a minute after the last write: written.
    let (result, requests) = pass_at(&api, &worker, "2026-11-23T20:01:00Z").await;
    assert_eq!(result.expect("pass"), 1);
    assert_eq!(lines(&requests), with_reads(&status_write));
    assert_eq!(handshake(&api).as_deref(), Some("2026-11-23T20:00:25Z"));
    assert_eq!(status(&api)["peers"][0]["health"]["rxBytes"], 9_000, "the figures go with the times");

    // 20:01:10: another rekey and a pod joins: not only the clock, written at once.
    api.set_metrics(GATEWAY_METRICS, Ok(gateway_metrics(&[(PEER_KEY, now_plus(68.0))])));
    api.put(Side::Cluster, app_pod("shop", "web-1", "Running", &["shop/slice-blue"]));
    let (result, requests) = pass_at(&api, &worker, "2026-11-23T20:01:10Z").await;
    assert_eq!(result.expect("pass"), 1);
    assert_eq!(lines(&requests), with_reads(&status_write));
    assert_eq!(status(&api)["connectedPods"], 1);
    assert_eq!(handshake(&api).as_deref(), Some("2026-11-23T20:01:08Z"));

    // 20:01:40: a rekey again, within a minute of that write: held.
    api.set_metrics(GATEWAY_METRICS, Ok(gateway_metrics(&[(PEER_KEY, now_plus(95.0))])));
    let (result, _) = pass_at(&api, &worker, "2026-11-23T20:01:40Z").await;
    assert_eq!(result.expect("pass"), 0);

    // 20:04:50: no handshake for 195 s: a state change, written.
    let (result, _) = pass_at(&api, &worker, "2026-11-23T20:04:50Z").await;
    assert_eq!(result.expect("pass"), 1);
    assert_eq!(status(&api)["peers"][0]["state"], "Down");
    assert_eq!(status(&api)["peers"][0]["reason"], "no handshake for 195 s");
    // 20:05:20: 30 s staler, nothing else: held.
    let (result, _) = pass_at(&api, &worker, "2026-11-23T20:05:20Z").await;
    assert_eq!(result.expect("pass"), 0);

    drop(worker);
}

fn decode_b64(s: &str) -> String {
    use base64::Engine as _;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s).expect("base64")).expect("UTF-8")
}

/// The access check itself: with the hub's list standing in for the cluster's, the cluster
/// requests are reported.
#[tokio::test]
async fn undeclared_requests_are_caught() {
    let api = FakeApi::new(WORKER_HUB, "slicenet-cluster-c2", WORKER_HUB, "slicenet-system");
    api.put(Side::Hub, worker_slice());
    api.put(Side::Cluster, node("n1", "198.18.2.11"));
    let (hub, local) = api.clients();
    let worker = Worker::new(hub, local, settings());
    let _ = worker.reconcile_once("c2", NOW).await;
    drop(worker);
    let violations = api.violations();
    assert!(violations.iter().any(|v| v.contains("GET /api/v1/nodes")), "{violations:?}");
    assert!(violations.iter().all(|v| v.starts_with("Cluster")), "{violations:?}");
}

#[tokio::test]
async fn events_announce_what_changed_and_nothing_when_nothing_did() {
    let api = fixture();
    let worker = worker_on(&api);
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    result.expect("create");
    assert_eq!(
        event_lines(&requests),
        [
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Normal GatewayKeyCreated",
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Normal WorkerSliceNotReady",
            "POST default Namespace/shop Normal NamespaceJoinedSlice",
        ]
    );
    let joined = requests.iter().rev().find(|r| r.is_event()).expect("the namespace's event");
    assert_eq!(
        joined.body["regarding"]["uid"],
        api.get(Side::Cluster, "/api/v1/namespaces/shop").expect("shop")["metadata"]["uid"]
    );
    assert_eq!(joined.body["note"], "namespace shop joined slice blue (label slicenet.io/slice=blue)");
    assert_eq!(joined.body["reportingController"], "slicenet.io/worker");
    let key = requests.iter().find(|r| r.is_event()).expect("the key's event");
    assert!(key.body["note"].as_str().unwrap_or_default().contains(PUBLIC), "{}", key.body["note"]);
    assert!(!key.body.to_string().contains(PRIVATE), "the private key is never in an event");

    // The gateway pod: a new reason for not being ready.
    api.put(Side::Cluster, gateway_pod("10.80.16.66"));
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    result.expect("gateway");
    assert_eq!(event_lines(&requests), ["hub POST slicenet-cluster-c2 WorkerSlice/blue Normal WorkerSliceNotReady"]);
    let note = requests.iter().find(|r| r.is_event()).expect("event").body["note"].clone();
    assert_eq!(note, "TunnelsDown: tunnels not up: c1 (Pending), c3 (Pending)");

    // Nothing changed: no event.
    let (_, requests) = pass_at(&api, &worker, NOW).await;
    assert_eq!(event_lines(&requests), Vec::<String>::new());

    // Both tunnels come up: ready, and each tunnel said once.
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["spec"]["peers"][1]["publicKey"] = json!(PEER_KEY_2));
    api.set_metrics(GATEWAY_METRICS, Ok(gateway_metrics(&[(PEER_KEY, now_plus(-5.0)), (PEER_KEY_2, now_plus(-3.0))])));
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    result.expect("up");
    assert_eq!(
        event_lines(&requests),
        [
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Normal WorkerSliceReady",
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Normal TunnelUp",
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Normal TunnelUp",
        ]
    );
    let (_, requests) = pass_at(&api, &worker, "2026-11-23T20:00:10Z").await;
    assert_eq!(event_lines(&requests), Vec::<String>::new());

    // c1's handshake goes stale: a warning for the tunnel and for the slice.
    let (result, requests) = pass_at(&api, &worker, "2026-11-23T20:03:30Z").await;
    result.expect("stale");
    assert_eq!(
        event_lines(&requests),
        [
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Warning WorkerSliceNotReady",
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Warning TunnelDown",
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Warning TunnelDown",
        ]
    );
    let notes: Vec<Value> = requests.iter().filter(|r| r.is_event()).map(|r| r.body["note"].clone()).collect();
    assert_eq!(notes[0], "TunnelsDown: tunnels not up: c1 (Down), c3 (Down)");
    assert_eq!(notes[1], "tunnel to cluster c1 is Down: no handshake for over 180 s");
    drop(worker);
}

#[tokio::test]
async fn a_deleted_slice_announces_its_namespace_leaving_and_its_teardown() {
    let api = running().await;
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["metadata"]["deletionTimestamp"] = json!(NOW));
    let (result, requests) = pass(&api).await;
    result.expect("pass");
    assert_eq!(
        event_lines(&requests),
        [
            "hub POST slicenet-cluster-c2 WorkerSlice/blue Normal SliceTornDown",
            "POST default Namespace/shop Normal NamespaceLeftSlice",
        ]
    );
    let left = requests.iter().filter(|r| r.is_event()).nth(1).expect("event");
    assert_eq!(left.body["note"], "namespace shop left slice blue (label slicenet.io/slice removed)");
}

#[tokio::test]
async fn a_repeated_failure_is_one_event_whose_series_counts_the_repeats() {
    let api = fixture();
    let worker = worker_on(&api);
    let at = |s: i64| {
        (NOW.parse::<k8s_openapi::jiff::Timestamp>().expect("NOW") + k8s_openapi::jiff::SignedDuration::from_secs(s))
            .to_string()
    };
    let mut event_requests = Vec::new();
    for s in [0, 10, 30, 70, 150, 300] {
        api.fail(Side::Cluster, "PATCH", STS, 0, 500);
        let (result, requests) = pass_at(&api, &worker, &at(s)).await;
        let err = result.expect_err("the StatefulSet fails");
        assert!(err.to_string().contains("applying StatefulSet"), "{err}");
        event_requests.push(
            requests
                .into_iter()
                .filter(|r| {
                    r.is_event()
                        && r.body["reason"] != "GatewayKeyCreated"
                        && r.body["reason"] != "NamespaceJoinedSlice"
                })
                .collect::<Vec<_>>(),
        );
    }
    let first = &event_requests[0];
    assert_eq!(event_lines(first), ["hub POST slicenet-cluster-c2 WorkerSlice/blue Warning WriteFailed"]);
    let note = first[0].body["note"].as_str().unwrap_or_default();
    assert!(note.starts_with("applying StatefulSet slicenet-gateway/slicenet-gw-blue: "), "{note}");
    assert!(event_requests[1..5].iter().all(Vec::is_empty), "repeats within 5 minutes are counted: {event_requests:?}");
    let name = first[0].body["metadata"]["name"].as_str().expect("name");
    let patch = &event_requests[5];
    assert_eq!(patch.len(), 1);
    assert_eq!(
        patch[0].line(),
        format!("hub PATCH /apis/events.k8s.io/v1/namespaces/slicenet-cluster-c2/events/{name}")
    );
    assert_eq!(patch[0].body["series"]["count"], 6);
    drop(worker);
}

#[tokio::test]
async fn nads_the_worker_wrote_go_when_multus_is_turned_off() {
    let api = fixture();
    let mc = "/apis/slicenet.io/v1alpha1/memberclusters/c2";
    let nad = "/apis/k8s.cni.cncf.io/v1/namespaces/shop/network-attachment-definitions/slice-blue";
    api.edit(Side::Hub, mc, |mc| mc["spec"]["multus"] = json!(true));
    pass(&api).await.0.expect("with Multus");
    assert!(api.get(Side::Cluster, nad).is_some());
    // Someone else's NAD (not labelled as the worker's) stays whatever happens.
    api.put(
        Side::Cluster,
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": "macvlan", "namespace": "shop"}, "spec": {"config": "{}"}}),
    );
    api.edit(Side::Hub, mc, |mc| mc["spec"]["multus"] = json!(false));
    let (result, requests) = pass(&api).await;
    result.expect("without Multus");
    let mut expected = reads();
    expected.push(format!("DELETE {nad}"));
    assert_eq!(lines(&requests), expected);
    assert!(api.get(Side::Cluster, nad).is_none());
    assert!(
        api.get(Side::Cluster, "/apis/k8s.cni.cncf.io/v1/namespaces/shop/network-attachment-definitions/macvlan")
            .is_some()
    );
    let (result, requests) = pass(&api).await;
    assert_eq!(result.expect("repeat"), 0);
    assert_eq!(lines(&requests), reads());

    // The same when the command line turns it off (`--multus false`) on a cluster that asks for it.
    let api = fixture();
    api.edit(Side::Hub, mc, |mc| mc["spec"]["multus"] = json!(true));
    pass(&api).await.0.expect("with Multus");
    let (hub, local) = api.clients();
    let off = Worker::new(hub, local, Settings { multus: Some(false), ..settings() })
        .with_metrics_source(api.metrics_source());
    api.take_requests();
    off.reconcile_once("c2", NOW).await.expect("with --multus false");
    drop(off);
    assert!(lines(&api.take_requests()).contains(&format!("DELETE {nad}")));
    assert!(api.get(Side::Cluster, nad).is_none());
}

#[tokio::test]
async fn a_replica_that_stops_leading_mid_pass_makes_no_further_write() {
    use slice_operator::leader::Leadership;
    let api = fixture();
    let leadership = Leadership::candidate();
    leadership.lead_until(std::time::Instant::now() + std::time::Duration::from_secs(3600));
    let lose = leadership.clone();
    // Right after the key Secret is created, the lease is lost.
    api.state.lock().expect("state").after_request = Some(worker_support::AfterRequest(Box::new(move |line| {
        if line == format!("POST {GW}/secrets") {
            lose.lose(r#"the lease is now held by "worker-1""#);
        }
    })));
    let worker = worker_on(&api);
    let worker = worker.with_leadership(leadership);
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    let err = result.expect_err("the pass stops");
    assert!(matches!(err, WorkerError::NotLeading(_)), "{err}");
    assert!(err.to_string().contains("held by \"worker-1\""), "{err}");
    assert_eq!(lines(&requests), with_reads(&create_writes()[..3]), "nothing after the loss");
    assert!(requests.iter().all(|r| !r.is_event()), "no events either: they are writes");
    // Nor does the heartbeat write.
    assert!(matches!(worker.heartbeat("c2", NOW).await, Err(WorkerError::NotLeading(_))));
    assert_eq!(api.take_requests().len(), 0);
    drop(worker);
}

#[tokio::test]
async fn a_cluster_without_the_nad_crd_is_fine_without_multus_only() {
    // No NetworkAttachmentDefinition CRD: listing NADs answers 404.
    let api = fixture();
    api.fail(Side::Cluster, "GET", NADS, 0, 404);
    let (result, _) = pass(&api).await;
    assert_eq!(result.expect("no CRD, no Multus: nothing to delete"), create_writes().len());

    let api = fixture();
    api.edit(Side::Hub, "/apis/slicenet.io/v1alpha1/memberclusters/c2", |mc| mc["spec"]["multus"] = json!(true));
    api.fail(Side::Cluster, "GET", NADS, 0, 404);
    let (result, requests) = pass(&api).await;
    let err = result.expect_err("Multus asked for, but no CRD");
    assert!(err.to_string().contains("NetworkAttachmentDefinitions"), "{err}");
    assert!(requests.iter().all(|r| !r.is_write()));
}

/// The hub token Secret in the member cluster, holding `token`.
fn hub_kubeconfig_secret(token: &str) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "slicenet-hub-kubeconfig", "namespace": "slicenet-system"},
           "type": "Opaque",
           "data": {"kubeconfig": b64("kubeconfig naming the token file"), "token": b64(token)}})
}

fn secret_token(api: &FakeApi) -> String {
    use base64::Engine as _;
    let secret = api.get(Side::Cluster, "/api/v1/namespaces/slicenet-system/secrets/slicenet-hub-kubeconfig").unwrap();
    let bytes = base64::engine::general_purpose::STANDARD.decode(secret["data"]["token"].as_str().unwrap()).unwrap();
    String::from_utf8(bytes).unwrap()
}

/// Issue 20 (low): the worker's hub credential was a token that never expires. The worker keeps
/// a bound token until two thirds of its life are gone, then asks the hub for a new one for its
/// own ServiceAccount and writes it into its Secret with the version it read (a Secret changed
/// meanwhile is a conflict, not overwritten); a legacy token without expiry is replaced at
/// once. Every request is in the worker's declared access lists.
#[tokio::test]
async fn the_hub_token_is_renewed_before_it_expires() {
    use slice_api::hub_credential::{REQUESTED_LIFETIME_SECONDS as LIFE, RenewReason};
    use slice_operator::worker::credential::{Checked, CredentialCheckError};
    let api = fixture();
    let issued = 1_000_000;
    let first = worker_support::jwt(&json!({"iat": issued, "exp": issued + LIFE}));
    api.put(Side::Cluster, hub_kubeconfig_secret(&first));
    api.state.lock().unwrap().now = issued + LIFE / 2;
    let worker = worker_on(&api);

    // Half way: kept, nothing written, nothing asked of the hub.
    let kept = worker.check_hub_credential("c2", issued + LIFE / 2).await.unwrap();
    assert_eq!(kept, Checked::Kept { at: issued + LIFE * 2 / 3 });
    assert_eq!(secret_token(&api), first);
    assert_eq!(api.state.lock().unwrap().tokens_issued, 0);

    // Two thirds gone: a new token, issued by the hub now, in the Secret.
    let now = issued + LIFE * 2 / 3;
    api.state.lock().unwrap().now = now;
    let renewed = worker.check_hub_credential("c2", now).await.unwrap();
    assert_eq!(renewed, Checked::Renewed { reason: RenewReason::Due, expires: Some(now + LIFE) });
    let second = secret_token(&api);
    assert_ne!(second, first);
    assert_eq!(slice_api::hub_credential::TokenTimes::of(&second).unwrap().issued, now);
    let secret = api.get(Side::Cluster, "/api/v1/namespaces/slicenet-system/secrets/slicenet-hub-kubeconfig").unwrap();
    assert!(secret["data"]["kubeconfig"].is_string(), "the kubeconfig stays beside the token");
    assert_eq!(worker.check_hub_credential("c2", now + 1).await.unwrap(), Checked::Kept { at: now + LIFE * 2 / 3 });

    // A Secret changed between the read and the write: a conflict, the other writer's token stays.
    let due = now + LIFE;
    api.state.lock().unwrap().now = due;
    let theirs = worker_support::jwt(&json!({"iat": due, "exp": due + 60, "jti": "theirs"}));
    let mut edited = false;
    api.state.lock().unwrap().after_request = Some(worker_support::AfterRequest(Box::new({
        let api = api.clone();
        move |line: &str| {
            if !edited && line.contains("serviceaccounts/slicenet-worker/token") {
                edited = true;
                api.put(Side::Cluster, hub_kubeconfig_secret(&theirs));
            }
        }
    })));
    let err = worker.check_hub_credential("c2", due).await.unwrap_err();
    assert!(
        matches!(&err, CredentialCheckError::Api(WorkerError::Write { source: kube::Error::Api(s), .. }) if s.code == 409),
        "{err:?}"
    );
    assert!(secret_token(&api).contains('.'));
    assert_eq!(slice_api::hub_credential::TokenTimes::of(&secret_token(&api)).unwrap().expires, Some(due + 60));
    api.state.lock().unwrap().after_request = None;

    // A legacy token (no expiry) is replaced at once.
    api.put(Side::Cluster, hub_kubeconfig_secret(&worker_support::jwt(&json!({"iat": issued}))));
    let migrated = worker.check_hub_credential("c2", due).await.unwrap();
    assert_eq!(migrated, Checked::Renewed { reason: RenewReason::NeverExpires, expires: Some(due + LIFE) });

    // No token key (a client certificate): nothing to renew; garbage: an error, nothing written.
    api.edit(Side::Cluster, "/api/v1/namespaces/slicenet-system/secrets/slicenet-hub-kubeconfig", |s| {
        s["data"].as_object_mut().unwrap().remove("token");
    });
    assert_eq!(worker.check_hub_credential("c2", due).await.unwrap(), Checked::NoToken);
    api.put(Side::Cluster, hub_kubeconfig_secret("not-a-jwt"));
    let before = api.state.lock().unwrap().tokens_issued;
    let err = worker.check_hub_credential("c2", due).await.unwrap_err();
    assert!(matches!(err, CredentialCheckError::Unreadable(_)), "{err:?}");
    assert_eq!(api.state.lock().unwrap().tokens_issued, before);

    let requests = api.take_requests();
    let events = requests.iter().filter(|r| r.is_event()).count();
    assert!(
        events >= 2,
        "renewals and failures are reported: {:?}",
        requests.iter().map(Recorded::line).collect::<Vec<_>>()
    );
    drop(worker);
    assert_eq!(api.violations(), Vec::<String>::new(), "requests outside the declared access");
}

/// Another fixed private key, for gateway replica 1 (ordinal 0 has [`PRIVATE`]).
const PRIVATE_1: &str = "cD4HGyQ8ZN7nY0J9P5mXb3a2HkQ5yXz1V9c0eW3bF2o=";

/// A worker whose new keys differ by key Secret: [`PRIVATE`] for ordinal 0's, [`PRIVATE_1`]
/// for any other.
fn replica_worker_on(api: &FakeApi) -> Worker {
    let (hub, local) = api.clients();
    Worker::with_key_source(
        hub,
        local,
        settings(),
        Box::new(|secret| {
            let private = if secret == "slicenet-gw-blue-key" { PRIVATE } else { PRIVATE_1 };
            let public = slice_operator::worker::keys::public_key_of(private).expect("a key");
            KeyPair { private_key: private.into(), public_key: public }
        }),
    )
    .with_metrics_source(api.metrics_source())
}

/// A StatefulSet pod of `blue`'s gateway: ordinal `ordinal` on `node` with slice address `ip`,
/// ready or not.
fn replica_pod(ordinal: u32, node: &str, ip: &str, ready: bool) -> Value {
    let mut pod = gateway_pod(ip);
    pod["metadata"]["name"] = json!(format!("slicenet-gw-blue-{ordinal}"));
    pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"] = json!(format!("slicenet-gw-blue-{ordinal}"));
    pod["metadata"]["labels"]["app.kubernetes.io/component"] = json!("gateway-replica");
    pod["spec"] = json!({"nodeName": node, "containers": [{"name": "gateway"}]});
    pod["status"]["podIP"] = json!(format!("10.244.0.{}", 7 + ordinal));
    pod["status"]["conditions"] = json!([{"type": "Ready", "status": if ready { "True" } else { "False" }}]);
    pod
}

/// Where the worker reads replica `ordinal`'s metrics ([`replica_pod`]'s pod IP).
fn replica_metrics_address(ordinal: u32) -> std::net::SocketAddr {
    format!("10.244.0.{}:9586", 7 + ordinal).parse().expect("an address")
}

/// The reason of an Up replica whose metrics nobody answers (the fake refuses).
fn refused(ordinal: u32) -> String {
    format!("metrics not read: connecting to {}: Connection refused (os error 111)", replica_metrics_address(ordinal))
}

fn routes(api: &FakeApi, node: &str) -> Value {
    node_config(api, node)["slices"][0]["remoteRoutes"].clone()
}

fn replica_states(api: &FakeApi) -> Vec<(u64, String, String, String)> {
    let s = status(api);
    s["gatewayReplicas"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|r| {
                    let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                    (r["ordinal"].as_u64().unwrap_or(99), text("state"), text("node"), text("reason"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 13: with `gateway.replicas: 2` the worker makes a key Secret and a Service per
/// replica and a StatefulSet of two, publishes each replica's key, endpoint and state, routes
/// via every ready replica in ordinal order (`via`, `alsoVia`), and on scaling down removes the
/// extra replica's key and Service.
#[tokio::test]
async fn two_replicas_get_a_key_a_service_and_a_route_each() {
    let api = fixture();
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["spec"]["gateway"] = json!({"replicas": 2}));
    let worker = replica_worker_on(&api);
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    result.expect("first pass");
    let writes = [
        format!("hub PATCH {WS}/blue"),
        "PATCH /api/v1/namespaces/shop".into(),
        format!("POST {GW}/secrets"),
        format!("POST {GW}/secrets"),
        format!("PATCH {GW}/secrets/slicenet-gw-blue"),
        format!("PATCH {STS}/slicenet-gw-blue"),
        format!("PATCH {GW}/services/slicenet-gw-blue"),
        format!("PATCH {GW}/services/slicenet-gw-blue-1"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n1"),
        format!("PATCH {SYS}/configmaps/slicenet-node-n2"),
        format!("PATCH {SYS}/configmaps/slicenet-membership"),
        format!("hub PATCH {WS}/blue/status"),
    ];
    assert_eq!(lines(&requests), with_reads(&writes));
    assert!(api.get(Side::Cluster, &format!("{GW}/secrets/slicenet-gw-blue-key-1")).is_some());
    let set = api.get(Side::Cluster, &format!("{STS}/slicenet-gw-blue")).expect("StatefulSet");
    assert_eq!(set["spec"]["replicas"], 2);
    // Each replica's file holds its own key.
    let secret = api.get(Side::Cluster, &format!("{GW}/secrets/slicenet-gw-blue")).expect("config Secret");
    let file = |ordinal: u32| decode_b64(secret["data"][format!("slicenet-gw-blue-{ordinal}.conf")].as_str().unwrap());
    assert!(file(0).contains(&format!("PrivateKey = {PRIVATE}\n")), "{}", file(0));
    assert!(file(1).contains(&format!("PrivateKey = {PRIVATE_1}\n")), "{}", file(1));
    let svc = api.get(Side::Cluster, &format!("{GW}/services/slicenet-gw-blue-1")).expect("replica 1's Service");
    assert_eq!(svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"], "slicenet-gw-blue-1");
    // The status: each replica's key and endpoint (its own nodePort), Pending without a pod.
    let s = status(&api);
    let public_1 = slice_operator::worker::keys::public_key_of(PRIVATE_1).unwrap();
    assert_eq!(s["gatewayReplicas"][0]["publicKey"], PUBLIC);
    assert_eq!(s["gatewayReplicas"][1]["publicKey"], public_1.as_str());
    assert_eq!(s["gatewayReplicas"][0]["endpoint"], s["gatewayEndpoint"]);
    assert_eq!(s["gatewayReplicas"][1]["endpoint"], "198.18.100.2:31002");
    assert_eq!(
        replica_states(&api),
        [
            (0, "Pending".into(), String::new(), "no gateway pod yet".into()),
            (1, "Pending".into(), String::new(), "no gateway pod yet".into())
        ]
    );

    // Both replicas ready, on different nodes: every remote prefix via both, ordinal 0 first.
    // Each replica's metrics are read (at its own pod IP); nothing answers here, and each
    // Up replica says so.
    api.put(Side::Cluster, replica_pod(1, "n1", "10.80.16.5", true));
    api.put(Side::Cluster, replica_pod(0, "n2", "10.80.16.66", true));
    api.take_scrapes();
    pass_at(&api, &worker, NOW).await.0.expect("pass");
    assert_eq!(api.take_scrapes(), [replica_metrics_address(0), replica_metrics_address(1)], "each once");
    let both = json!([
        {"prefix": "10.80.0.0/20", "via": "10.80.16.66", "alsoVia": ["10.80.16.5"]},
        {"prefix": "10.80.32.0/20", "via": "10.80.16.66", "alsoVia": ["10.80.16.5"]},
    ]);
    assert_eq!(routes(&api, "n1"), both);
    assert_eq!(routes(&api, "n2"), both);
    assert_eq!(
        replica_states(&api),
        [(0, "Up".into(), "n2".into(), refused(0)), (1, "Up".into(), "n1".into(), refused(1))]
    );
    let (r, requests) = pass_at(&api, &worker, NOW).await;
    r.expect("pass");
    assert_eq!(lines(&requests), reads(), "a repeat pass writes nothing");

    // Ordinal 0 not ready: the routes go via ordinal 1 alone; its status says why.
    api.put(Side::Cluster, replica_pod(0, "n2", "10.80.16.66", false));
    pass_at(&api, &worker, NOW).await.0.expect("pass");
    let via_1 =
        json!([{"prefix": "10.80.0.0/20", "via": "10.80.16.5"}, {"prefix": "10.80.32.0/20", "via": "10.80.16.5"}]);
    assert_eq!(routes(&api, "n1"), via_1);
    assert_eq!(replica_states(&api)[0], (0, "Down".into(), "n2".into(), "not running and ready".into()));

    // Scaled down to one: replica 1's key Secret and Service go, the StatefulSet shrinks, the
    // per-replica status is cleared (a merge patch needs the explicit null).
    api.put(Side::Cluster, replica_pod(0, "n2", "10.80.16.66", true));
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["spec"]["gateway"] = json!({"replicas": 1}));
    let (r, requests) = pass_at(&api, &worker, NOW).await;
    r.expect("scale-down pass");
    let lines = lines(&requests);
    for gone in
        [format!("DELETE {GW}/secrets/slicenet-gw-blue-key-1"), format!("DELETE {GW}/services/slicenet-gw-blue-1")]
    {
        assert!(lines.contains(&gone), "{gone} in {lines:#?}");
    }
    assert_eq!(api.get(Side::Cluster, &format!("{STS}/slicenet-gw-blue")).unwrap()["spec"]["replicas"], 1);
    let secret = api.get(Side::Cluster, &format!("{GW}/secrets/slicenet-gw-blue")).expect("config Secret");
    assert_eq!(secret["data"].as_object().unwrap().keys().collect::<Vec<_>>(), ["slicenet-gw-blue-0.conf"]);
    assert!(status(&api).get("gatewayReplicas").is_none_or(Value::is_null), "{}", status(&api));
    let via_0 =
        json!([{"prefix": "10.80.0.0/20", "via": "10.80.16.66"}, {"prefix": "10.80.32.0/20", "via": "10.80.16.66"}]);
    assert_eq!(routes(&api, "n1"), via_0);
}

/// Issue 13: a replica the anti-affinity leaves without a node stays `Pending` with the
/// scheduler's message, and the slice runs on the other.
#[tokio::test]
async fn a_replica_without_a_node_is_pending_with_the_schedulers_message() {
    let api = fixture();
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["spec"]["gateway"] = json!({"replicas": 2}));
    let worker = replica_worker_on(&api);
    pass_at(&api, &worker, NOW).await.0.expect("first pass");
    api.put(Side::Cluster, replica_pod(0, "n2", "10.80.16.66", true));
    let mut unscheduled = replica_pod(1, "n1", "10.80.16.5", false);
    unscheduled["spec"] = json!({"containers": [{"name": "gateway"}]});
    unscheduled["metadata"]["annotations"] = json!({});
    let message = "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.";
    unscheduled["status"] = json!({"phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]});
    api.put(Side::Cluster, unscheduled);
    pass_at(&api, &worker, NOW).await.0.expect("pass");
    assert_eq!(
        replica_states(&api),
        [
            (0, "Up".into(), "n2".into(), refused(0)),
            (1, "Pending".into(), String::new(), format!("not scheduled: {message}"))
        ]
    );
    assert_eq!(routes(&api, "n1")[0], json!({"prefix": "10.80.0.0/20", "via": "10.80.16.66"}));
}

/// A gateway's metrics at `NOW` for peers with a handshake 5 s ago and the probes' verdict
/// (`slice_gateway_peer_live`) for each.
fn replica_metrics(peers: &[(&str, bool)]) -> String {
    render(&Sample {
        interface: "sg-blue".into(),
        peers: peers
            .iter()
            .map(|(key, live)| PeerSample {
                public_key: (*key).into(),
                last_handshake: now_plus(-5.0),
                live: Some(*live),
                ..PeerSample::default()
            })
            .collect(),
        ..Sample::default()
    })
}

/// Each replica's (ordinal, liveTunnels, unreachable, reason) in the status.
fn replica_tunnels(api: &FakeApi) -> Vec<(u64, Value, Value, String)> {
    status(api)["gatewayReplicas"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|r| {
                    let reason = r["reason"].as_str().unwrap_or_default().to_owned();
                    (r["ordinal"].as_u64().unwrap_or(99), r["liveTunnels"].clone(), r["unreachable"].clone(), reason)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 13: with two replicas the worker reads each replica's own metrics (each address once)
/// and reports per replica how many peer clusters it has a live tunnel to and which it has
/// none to — a peer cluster is reached through any of its replicas, each a WireGuard peer of
/// its own — with `no live tunnel to c3` as the reason of an Up replica that misses one;
/// `status.peers` still comes from the lowest live ordinal alone. The node agents route c3's
/// prefix via the replica that reaches c3 alone while the other does not. A replica that stops
/// answering says so; the tunnel check between passes sees a replica's change too.
#[tokio::test]
async fn each_replica_reports_its_own_tunnels_from_its_own_metrics() {
    let key_of = |private: &str| slice_operator::worker::keys::public_key_of(private).expect("a key");
    let c1_replica_key = key_of("RxCb1SlfauYIJ3CfteDQK3svHfsZ2YWsh15FlMjEWuM=");
    let c3_key = key_of("WAmgVYXkbT2bCtdcDwolI88/iVi/aV3/PHcUBTQSYmo=");
    let api = fixture();
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| {
        ws["spec"]["gateway"] = json!({"replicas": 2});
        ws["spec"]["peers"][0]["replicas"] = json!([{"ordinal": 1, "publicKey": c1_replica_key}]);
        ws["spec"]["peers"][1]["publicKey"] = json!(c3_key);
    });
    api.put(Side::Cluster, replica_pod(0, "n2", "10.80.16.66", true));
    api.put(Side::Cluster, replica_pod(1, "n1", "10.80.16.5", true));
    // Replica 0 hears c1's first replica and c3. Replica 1 hears c1 only through c1's second
    // replica (its first is silent for it), and nothing from c3.
    let at = |ordinal: u32| replica_metrics_address(ordinal).to_string();
    api.set_metrics(&at(0), Ok(replica_metrics(&[(PEER_KEY, true), (&c1_replica_key, false), (&c3_key, true)])));
    api.set_metrics(&at(1), Ok(replica_metrics(&[(PEER_KEY, false), (&c1_replica_key, true), (&c3_key, false)])));
    let worker = replica_worker_on(&api);
    api.take_scrapes();
    pass_at(&api, &worker, NOW).await.0.expect("pass");
    assert_eq!(api.take_scrapes(), [replica_metrics_address(0), replica_metrics_address(1)], "each address once");
    assert_eq!(
        replica_tunnels(&api),
        [(0, json!(2), Value::Null, String::new()), (1, json!(1), json!(["c3"]), "no live tunnel to c3".to_owned()),]
    );
    assert_eq!(replica_states(&api)[1].1, "Up", "the pod is ready: the replica is Up, with its reason");
    // c1's prefix via both replicas, c3's via replica 0 alone (replica 1 has no live peer there).
    let routes = |api: &FakeApi| -> Vec<(String, String, Value)> {
        node_config(api, "n1")["slices"][0]["remoteRoutes"]
            .as_array()
            .expect("remoteRoutes")
            .iter()
            .map(|r| {
                (r["prefix"].as_str().unwrap().to_owned(), r["via"].as_str().unwrap().to_owned(), r["alsoVia"].clone())
            })
            .collect()
    };
    let both = [
        ("10.80.0.0/20".to_owned(), "10.80.16.66".to_owned(), json!(["10.80.16.5"])),
        ("10.80.32.0/20".to_owned(), "10.80.16.66".to_owned(), json!(["10.80.16.5"])),
    ];
    assert_eq!(routes(&api), [both[0].clone(), ("10.80.32.0/20".to_owned(), "10.80.16.66".to_owned(), Value::Null)]);
    // The slice's tunnels as before: from the lowest live ordinal (replica 0), by c1's first key.
    let peers = status(&api)["peers"].clone();
    assert_eq!((peers[0]["state"].as_str(), peers[1]["state"].as_str()), (Some("Up"), Some("Up")), "{peers}");
    let (r, requests) = pass_at(&api, &worker, NOW).await;
    r.expect("pass");
    assert_eq!(lines(&requests), reads(), "a repeat pass writes nothing");

    // Between passes, replica 1 starts hearing c3: the tunnel check asks for a pass, which
    // clears the reason.
    assert!(!worker.tunnels_changed().await, "nothing changed yet");
    api.set_metrics(&at(1), Ok(replica_metrics(&[(PEER_KEY, false), (&c1_replica_key, true), (&c3_key, true)])));
    assert!(worker.tunnels_changed().await, "a replica reaching another cluster is a change");
    pass_at(&api, &worker, NOW).await.0.expect("pass");
    assert_eq!(replica_tunnels(&api)[1], (1, json!(2), Value::Null, String::new()));
    assert_eq!(routes(&api), both, "c3's prefix via both again");

    // Replica 1's metrics stop answering: it says so, with no count it cannot know.
    api.set_metrics(&at(1), Err(format!("{} did not answer within 2s", at(1))));
    assert!(worker.tunnels_changed().await);
    pass_at(&api, &worker, NOW).await.0.expect("pass");
    assert_eq!(
        replica_tunnels(&api)[1],
        (1, Value::Null, Value::Null, format!("metrics not read: {} did not answer within 2s", at(1)))
    );
    assert_eq!(replica_tunnels(&api)[0], (0, json!(2), Value::Null, String::new()), "replica 0 unaffected");
    assert_eq!(routes(&api), both, "unread metrics take no replica out (the node agents' probes judge it)");
}

/// Issue 13, the upgrade: the gateway Deployment of earlier versions stays (and its pod carries
/// the traffic, with the key kept in its Secret) beside the new StatefulSet until the
/// StatefulSet's ordinal 0 is ready; then it is deleted, and so is its file in the Secret.
#[tokio::test]
async fn the_gateway_deployment_of_earlier_versions_goes_once_ordinal_0_is_ready() {
    let api = fixture();
    let managed = json!({"app.kubernetes.io/managed-by": "slicenet-worker", "slicenet.io/slice": "blue"});
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    api.put(
        Side::Cluster,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "slicenet-gw-blue-key", "namespace": "slicenet-gateway", "labels": managed},
               "type": "Opaque", "data": {"privateKey": b64(PRIVATE), "publicKey": b64(PUBLIC)}}),
    );
    api.put(
        Side::Cluster,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "slicenet-gw-blue", "namespace": "slicenet-gateway",
                            "labels": {"app.kubernetes.io/managed-by": "slicenet-worker", "app.kubernetes.io/name": "slice-gateway", "slicenet.io/slice": "blue"}},
               "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                        "selector": {"matchLabels": {"app.kubernetes.io/name": "slice-gateway", "slicenet.io/slice": "blue"}},
                        "template": {"metadata": {"labels": {"app.kubernetes.io/name": "slice-gateway", "slicenet.io/slice": "blue"}},
                                     "spec": {"containers": [{"name": "gateway", "image": "i"}]}}}}),
    );
    let mut old = gateway_pod("10.80.16.66");
    old["metadata"]["name"] = json!("slicenet-gw-blue-5d8f9c7b4-q2w3e");
    api.put(Side::Cluster, old);
    let worker = worker_on(&api);
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    result.expect("upgrade pass");
    let lines_ = lines(&requests);
    assert!(!lines_.iter().any(|l| l.starts_with(&format!("POST {GW}/secrets"))), "the key is kept: {lines_:#?}");
    assert!(!lines_.iter().any(|l| l.starts_with("DELETE")), "nothing deleted yet: {lines_:#?}");
    assert!(lines_.contains(&format!("PATCH {STS}/slicenet-gw-blue")));
    let secret = api.get(Side::Cluster, &format!("{GW}/secrets/slicenet-gw-blue")).expect("config Secret");
    let data = secret["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["gateway.conf", "slicenet-gw-blue-0.conf"]);
    assert_eq!(data["gateway.conf"], data["slicenet-gw-blue-0.conf"]);
    // The old pod carries the traffic meanwhile, and the status keeps the key.
    assert_eq!(routes(&api, "n1")[0]["via"], "10.80.16.66");
    assert_eq!(status(&api)["gatewayPublicKey"], PUBLIC);

    // Ordinal 0 runs but is not ready: nothing changes.
    api.put(Side::Cluster, replica_pod(0, "n1", "10.80.16.5", false));
    let (r, requests) = pass_at(&api, &worker, NOW).await;
    r.expect("pass");
    assert!(!lines(&requests).iter().any(|l| l.starts_with("DELETE")));
    assert_eq!(routes(&api, "n1")[0]["via"], "10.80.16.66");

    // Ready: the Deployment goes, its file too, the routes move to ordinal 0.
    api.put(Side::Cluster, replica_pod(0, "n1", "10.80.16.5", true));
    let (r, requests) = pass_at(&api, &worker, NOW).await;
    r.expect("pass");
    assert!(lines(&requests).contains(&format!("DELETE {DEPLOY}/slicenet-gw-blue")), "{:#?}", lines(&requests));
    let secret = api.get(Side::Cluster, &format!("{GW}/secrets/slicenet-gw-blue")).expect("config Secret");
    assert_eq!(secret["data"].as_object().unwrap().keys().collect::<Vec<_>>(), ["slicenet-gw-blue-0.conf"]);
    assert_eq!(routes(&api, "n1")[0]["via"], "10.80.16.5");
    assert_eq!(status(&api)["gatewayPublicKey"], PUBLIC, "the same key throughout");
}

// Paged peers (the hub's default): the WorkerSlice carries `peerPages` instead of `peers`; the
// worker reads its slice's `SlicePeers` pages in `slicenet-peers`, through the Role the hub keeps
// for its cluster there (the in-memory API checks the `get` against that Role), and rebuilds the
// same peer list.

const PAGE: &str = "/apis/slicenet.io/v1alpha1/namespaces/slicenet-peers/slicepeers/blue-0";
const PEERS_ROLES: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/slicenet-peers";

/// Every member's entry of the slice, c2's own included, in cluster order.
fn page_entries(c1_key: &str) -> Value {
    json!([
        {"cluster": "c1", "prefix": "10.80.0.0/20", "publicKey": c1_key, "endpoint": "198.18.100.1:31820"},
        {"cluster": "c2", "prefix": "10.80.16.0/20", "publicKey": PUBLIC},
        {"cluster": "c3", "prefix": "10.80.32.0/20"},
    ])
}

fn revision(entries: &Value) -> String {
    let entries: Vec<slice_api::crd::WorkerPeer> = serde_json::from_value(entries.clone()).expect("entries");
    slice_api::crd::peers_revision(&entries)
}

/// The WorkerSlice and page as a paging hub writes them, and the Role and RoleBinding it keeps
/// for c2 (`get` on `pages` by name).
fn paged_fixture(pages: &[&str]) -> FakeApi {
    let api = fixture();
    let entries = page_entries(PEER_KEY);
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| {
        ws["spec"]["peers"] = json!([]);
        ws["spec"]["peerPages"] = json!({"pages": 1, "revision": revision(&entries)});
    });
    api.put(
        Side::Hub,
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SlicePeers",
               "metadata": {"name": "blue-0", "namespace": "slicenet-peers"},
               "spec": {"slice": "blue", "page": 0, "peers": entries}}),
    );
    api.put(
        Side::Hub,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "slicenet-peers-c2", "namespace": "slicenet-peers"},
               "rules": [{"apiGroups": ["slicenet.io"], "resources": ["slicepeers"], "verbs": ["get"], "resourceNames": pages}]}),
    );
    api.put(
        Side::Hub,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "slicenet-peers-c2", "namespace": "slicenet-peers"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "slicenet-peers-c2"},
               "subjects": [{"kind": "ServiceAccount", "name": "slicenet-worker", "namespace": "slicenet-cluster-c2"}]}),
    );
    api
}

/// The configuration of the gateway's replica 0 (its file in the configuration Secret).
fn gateway_conf(api: &FakeApi) -> String {
    let secret = api.get(Side::Cluster, &format!("{GW}/secrets/slicenet-gw-blue")).expect("config Secret");
    decode_b64(secret["data"]["slicenet-gw-blue-0.conf"].as_str().expect("replica 0's file"))
}

#[tokio::test]
async fn paged_peers_are_read_from_the_page_and_configure_the_gateway_as_inline_ones_do() {
    let inline = fixture();
    pass(&inline).await.0.expect("inline pass");
    let paged = paged_fixture(&["blue-0"]);
    let (result, requests) = pass(&paged).await;
    assert_eq!(result.expect("paged pass"), create_writes().len());
    let mut expected = vec![format!("hub GET {WS}"), format!("hub GET {PAGE}")];
    expected.extend(with_reads(&create_writes()).into_iter().skip(1));
    assert_eq!(lines(&requests), expected, "one read of the page, right after the WorkerSlices");
    assert_eq!(gateway_conf(&paged), gateway_conf(&inline));
    assert_eq!(node_config(&paged, "n1"), node_config(&inline, "n1"));
    assert_eq!(status(&paged)["peers"], status(&inline)["peers"], "c2's own entry is no peer of its own");
}

#[tokio::test]
async fn the_page_is_read_again_only_when_the_revision_moves() {
    let api = paged_fixture(&["blue-0"]);
    let worker = worker_on(&api);
    pass_at(&api, &worker, NOW).await.0.expect("first pass");
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    result.expect("repeat pass");
    assert!(!lines(&requests).contains(&format!("hub GET {PAGE}")), "the revision did not move: no read");

    // c1 publishes another key and endpoint: the hub rewrites the page, then the revision.
    let entries = page_entries(PEER_KEY_2);
    api.edit(Side::Hub, PAGE, |p| p["spec"]["peers"] = entries.clone());
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| {
        ws["spec"]["peerPages"]["revision"] = json!(revision(&entries));
        ws["metadata"]["generation"] = json!(2);
    });
    let (result, requests) = pass_at(&api, &worker, NOW).await;
    result.expect("pass after the change");
    assert!(lines(&requests).contains(&format!("hub GET {PAGE}")), "read again");
    let conf = gateway_conf(&api);
    assert!(conf.contains(&format!("PublicKey = {PEER_KEY_2}\nAllowedIPs = 10.80.0.0/20\n")), "{conf}");
    assert!(!conf.contains(PEER_KEY), "{conf}");
}

#[tokio::test]
async fn a_page_the_role_does_not_name_is_refused_by_the_access_check() {
    // The hub's Role for c2 names another slice's page only (c2 left blue): the read is not
    // covered, and the in-memory API reports it.
    let api = paged_fixture(&["green-0"]);
    let worker = worker_on(&api);
    let _ = worker.reconcile_once("c2", NOW).await;
    let violations = api.violations();
    assert_eq!(violations, [format!("Hub: GET {PAGE}")], "only the page read, refused");
    // Without the RoleBinding, the Role grants nothing either.
    let api = paged_fixture(&["blue-0"]);
    api.remove(Side::Hub, &format!("{PEERS_ROLES}/rolebindings/slicenet-peers-c2"));
    let _ = worker_on(&api).reconcile_once("c2", NOW).await;
    assert_eq!(api.violations(), [format!("Hub: GET {PAGE}")]);
}
