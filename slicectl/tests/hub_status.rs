//! `slicectl status --hub-kubeconfig`'s requests against kube-rs's mock service: exactly the
//! three list requests, answers turned into the view, API errors reported with what was asked.

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use slicectl::hub_status::{fetch, problems};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn list(kind: &str, items: Value) -> Value {
    json!({"apiVersion": "slicenet.io/v1alpha1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Answers the expected (path, status, body) exchanges in order, then checks that nothing more
/// is asked.
async fn serve(mut handle: Handle, script: Vec<(&'static str, u16, Value)>) {
    for (path, status, body) in script {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(req.method(), "GET");
        assert_eq!(req.uri().path(), path);
        let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap();
        send.send_response(response);
    }
}

fn mock() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

#[tokio::test]
async fn fetch_lists_the_three_kinds_and_sorts_them() {
    let (client, handle) = mock();
    let mc = |name: &str| json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name}, "spec": {}});
    let ws = |cluster: &str| {
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
        "metadata": {"name": "blue", "namespace": format!("slicenet-cluster-{cluster}")},
        "spec": {"slice": "blue", "cluster": cluster, "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.0.0/20",
                 "nodePrefixLength": 26, "vni": 7}})
    };
    let script = vec![
        (
            "/apis/slicenet.io/v1alpha1/sliceconfigs",
            200,
            list(
                "SliceConfig",
                json!([{"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
                "metadata": {"name": "blue"}, "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1"]}}]),
            ),
        ),
        ("/apis/slicenet.io/v1alpha1/memberclusters", 200, list("MemberCluster", json!([mc("c2"), mc("c1")]))),
        ("/apis/slicenet.io/v1alpha1/workerslices", 200, list("WorkerSlice", json!([ws("c2"), ws("c1")]))),
    ];
    let server = tokio::spawn(serve(handle, script));
    let view = fetch(client).await.unwrap();
    server.await.unwrap();
    assert_eq!(view.slices.len(), 1);
    let names: Vec<_> = view.clusters.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["c1", "c2"]);
    let clusters: Vec<_> = view.workers.iter().map(|w| w.spec.cluster.as_str()).collect();
    assert_eq!(clusters, ["c1", "c2"]);
    // Nothing reported yet: every object says so.
    let p = problems(&view);
    assert!(p.iter().any(|l| l == "slice blue: no Ready condition yet"), "{p:?}");
    assert!(p.iter().any(|l| l == "slice blue in cluster c2: no status from the cluster's worker yet"), "{p:?}");
}

#[tokio::test]
async fn api_errors_name_the_request() {
    let (client, handle) = mock();
    let forbidden = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "sliceconfigs.slicenet.io is forbidden: User \"bob\" cannot list resource \"sliceconfigs\""});
    let server = tokio::spawn(serve(handle, vec![("/apis/slicenet.io/v1alpha1/sliceconfigs", 403, forbidden)]));
    let e = fetch(client).await.unwrap_err();
    server.await.unwrap();
    let text = format!("{e:#}");
    assert!(text.contains("listing SliceConfigs") && text.contains("forbidden"), "{text}");
}

#[test]
fn the_cli_loads_the_kubeconfig_and_reports_an_unreachable_hub() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.yaml");
    // Port 1 on loopback: nothing listens, so the first request fails fast.
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: hub\nclusters:\n- name: hub\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\ncontexts:\n- name: hub\n  context: {cluster: hub, user: u}\nusers:\n- name: u\n  user: {token: t}\n",
    )
    .unwrap();
    let run = |kubeconfig: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_slicectl"))
            .args(["status", "--hub-kubeconfig"])
            .arg(kubeconfig)
            .output()
            .unwrap()
    };
    let out = run(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listing SliceConfigs"), "{err}");
    let out = run(&dir.path().join("missing.yaml"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}
