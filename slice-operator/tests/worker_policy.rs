//! Policy on the slice through the worker against the in-memory API: MultiNetworkPolicies of
//! member namespaces that name the slice reach every node agent's configuration; the cluster's
//! pods are reported in its WorkerSlice's status (`status.pods`) and, with the other clusters'
//! pods the hub hands over in the spec, reach the node agents' pod directory; a policy that
//! does not compile is reported (Event on the policy, `PoliciesAccepted` on the WorkerSlice);
//! namespace isolation writes a NetworkPolicy per member namespace and removes only its own.
//! Every request is checked against the worker's access lists.

mod worker_support;

use serde_json::{Value, json};
use slice_api::crd::{SliceConfig, WorkerSlice};
use worker_support::{FakeApi, Side};

const NOW: &str = "2026-11-23T20:00:00Z";
const WS: &str = "/apis/slicenet.io/v1alpha1/namespaces/slicenet-cluster-c2/workerslices";
const MNP: &str = "/apis/k8s.cni.cncf.io/v1beta1/namespaces/shop/multi-networkpolicies";
const NP: &str = "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies";
const N1: &str = "/api/v1/namespaces/slicenet-system/configmaps/slicenet-node-n1";

fn worker_slice(isolation: bool) -> Value {
    let s: SliceConfig = serde_json::from_value(json!({
        "apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": "blue"},
        "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"], "namespaces": [{"namespace": "shop"}],
                 "isolation": {"enabled": isolation, "allowedNamespaces": [{"namespace": "monitoring"},
                     {"namespace": "c1-only", "clusters": ["c1"]}]}},
    }))
    .unwrap();
    let clusters: Vec<slice_api::crd::MemberCluster> =
        ["c1", "c2"].iter().map(|c| slice_api::crd::MemberCluster::new(c, Default::default())).collect();
    let plan = slice_api::planner::plan(&[s], &clusters, &[]).remove(0);
    let spec = plan.workers.iter().find(|w| w.cluster == "c2").unwrap().clone();
    let mut ws = WorkerSlice::new("blue", spec);
    ws.metadata.namespace = Some("slicenet-cluster-c2".into());
    serde_json::to_value(ws).unwrap()
}

fn pod(name: &str, node: &str, ip: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app},
            "annotations": {"k8s.v1.cni.cncf.io/network-status": json!([
                {"name": "shop/slice-blue", "interface": "slice0", "ips": [ip]}]).to_string()}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
        "status": {"phase": "Running"}})
}

fn mnp(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "annotations": {"k8s.v1.cni.cncf.io/policy-for": "slice-blue"}},
        "spec": spec})
}

fn fixture(isolation: bool) -> FakeApi {
    let api = FakeApi::member_c2(worker_slice(isolation));
    for ns in ["shop", "slicenet-system", "monitoring"] {
        api.put(
            Side::Cluster,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": ns}}}),
        );
    }
    api
}

async fn pass(api: &FakeApi) {
    api.pass_ok("c2", NOW).await;
}

fn node_slice(api: &FakeApi) -> Value {
    let cm = api.get(Side::Cluster, N1).expect("n1's configuration");
    let config: Value = serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap();
    config["slices"][0].clone()
}

fn condition(api: &FakeApi, type_: &str) -> Option<Value> {
    let ws = api.get(Side::Hub, &format!("{WS}/blue")).unwrap();
    ws["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
}

#[tokio::test]
async fn policies_and_the_pod_directory_reach_the_node_agents() {
    let api = fixture(false);
    // n1 10.80.16.0/26, n2 10.80.16.64/26 after the first pass.
    pass(&api).await;
    api.put(Side::Cluster, pod("web-1", "n1", "10.80.16.5", "web"));
    api.put(Side::Cluster, pod("db-1", "n2", "10.80.16.70", "db"));
    api.put(Side::Cluster, mnp("deny", json!({"podSelector": {"matchLabels": {"app": "db"}}})));
    pass(&api).await;
    let slice = node_slice(&api);
    assert_eq!(slice["policies"][0]["name"], "deny");
    assert_eq!(slice["policies"][0]["spec"]["podSelector"], json!({"matchLabels": {"app": "db"}}));
    let report = api.get(Side::Hub, &format!("{WS}/blue")).unwrap()["status"]["pods"].clone();
    assert_eq!(
        report,
        json!([
            {"namespace": "shop", "namespaceLabels": {"slicenet.io/slice": "blue", "team": "shop"}, "labels": {"app": "db"},
             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "addresses": ["10.80.16.70"]},
            {"namespace": "shop", "namespaceLabels": {"slicenet.io/slice": "blue", "team": "shop"}, "labels": {"app": "web"},
             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "addresses": ["10.80.16.5"]},
        ])
    );
    assert_eq!(slice["pods"], report, "the node agents get the cluster's own pods at once");
    assert_eq!(condition(&api, "PoliciesAccepted").unwrap()["status"], "True");

    // The hub hands over c1's pods (and, lying, one of c2's addresses): they join the directory.
    api.edit(Side::Hub, &format!("{WS}/blue"), |w| {
        w["spec"]["pods"] = json!([{"namespace": "shop", "labels": {"app": "web"},
            "addresses": ["10.80.0.7", "10.80.16.9"]}]);
    });
    // A label change here: web-1 becomes a db.
    api.put(Side::Cluster, pod("web-1", "n1", "10.80.16.5", "db"));
    pass(&api).await;
    let pods = node_slice(&api)["pods"].clone();
    assert_eq!(pods.as_array().unwrap().len(), 2, "{pods}");
    assert_eq!(pods[0]["addresses"], json!(["10.80.16.5", "10.80.16.70"]));
    assert_eq!(pods[1], json!({"namespace": "shop", "labels": {"app": "web"}, "addresses": ["10.80.0.7"]}));

    // A policy that does not compile: still handed on (the agents keep their old table), and
    // reported on the policy and the WorkerSlice.
    api.put(Side::Cluster, mnp("bad", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]})));
    pass(&api).await;
    assert_eq!(node_slice(&api)["policies"].as_array().unwrap().len(), 2);
    let c = condition(&api, "PoliciesAccepted").unwrap();
    assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("PolicyRejected")));
    assert!(c["message"].as_str().unwrap().contains("shop/bad: "), "{c}");
    let events: Vec<Value> = api
        .paths(Side::Cluster, "/apis/events.k8s.io/v1/namespaces/shop/events")
        .iter()
        .filter_map(|p| api.get(Side::Cluster, p))
        .filter(|e| e["reason"] == "PolicyRejected")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["regarding"]["kind"], "MultiNetworkPolicy");
    assert_eq!(events[0]["regarding"]["name"], "bad");
    assert!(events[0]["note"].as_str().unwrap().contains("port 0 is not in 1..65535"), "{}", events[0]);

    // Removed: gone from the configurations, the condition turns true.
    api.remove(Side::Cluster, &format!("{MNP}/bad"));
    api.remove(Side::Cluster, &format!("{MNP}/deny"));
    pass(&api).await;
    assert!(node_slice(&api).get("policies").is_none());
    assert_eq!(condition(&api, "PoliciesAccepted").unwrap()["status"], "True");
}

#[tokio::test]
async fn namespace_isolation_writes_and_removes_only_its_own_network_policies() {
    let api = fixture(true);
    // Someone else's NetworkPolicy in the member namespace.
    api.put(
        Side::Cluster,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "users", "namespace": "shop"}, "spec": {"podSelector": {}}}),
    );
    pass(&api).await;
    let np = api.get(Side::Cluster, &format!("{NP}/slicenet-isolation-blue")).expect("the isolation policy");
    assert_eq!(np["metadata"]["labels"]["app.kubernetes.io/managed-by"], "slicenet-worker");
    assert_eq!(
        np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["monitoring", "shop"]),
        "members here and the allowed namespaces that apply to c2"
    );
    // Isolation off: ours goes, theirs stays.
    api.put(Side::Hub, worker_slice(false));
    pass(&api).await;
    assert!(api.get(Side::Cluster, &format!("{NP}/slicenet-isolation-blue")).is_none());
    assert!(api.get(Side::Cluster, &format!("{NP}/users")).is_some());
}
