//! `slicectl version --kubeconfig`'s reading of a cluster, against the in-memory API: the pods
//! `slicectl install worker` makes (their template labels) and a gateway pod the worker made,
//! in the middle of an upgrade of the node agents.

use serde_json::json;
use slice_kube::memory::MemoryApi;
use slicectl::version::{fetch, render, running};

#[tokio::test]
async fn every_component_as_its_pods_run_it() {
    let api: MemoryApi<String> = MemoryApi::new([("member".to_owned(), &[][..], "slicenet-system".to_owned())]);
    let opts = slicectl::install::Options::generate("r/slicenet:0.1.0").unwrap();
    let join = slicectl::join_file::JoinFile::new("east", "https://hub:6443", "Q0E=", "a.b.c");
    let manifest = slicectl::install::worker(&opts, "east", &join.kubeconfig(), None).unwrap();
    // One pod per Deployment and DaemonSet of the install, from its template (as the controllers
    // make them), on node n1.
    let mut components = Vec::new();
    for doc in manifest.documents().iter().filter(|d| matches!(d.type_meta().1, "Deployment" | "DaemonSet")) {
        let object: serde_json::Value = serde_json::to_value(&doc.object).unwrap();
        let template = &object["spec"]["template"];
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{}-abc", doc.name()), "namespace": object["metadata"]["namespace"],
                         "labels": template["metadata"]["labels"]},
            "spec": template["spec"], "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        pod["spec"]["nodeName"] = json!("n1");
        components.push(template["metadata"]["labels"]["app.kubernetes.io/name"].as_str().unwrap().to_owned());
        api.put("member".into(), pod);
    }
    // A node agent already on the next minor version, not ready yet; a gateway (no version label).
    api.put(
        "member".into(),
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "slicenet-node-agent-new", "namespace": "slicenet-node",
                     "labels": {"app.kubernetes.io/name": "slicenet-node-agent", "app.kubernetes.io/version": "0.2.0"}},
        "spec": {"nodeName": "n2", "containers": [{"name": "node-agent", "image": "r/slicenet:0.2.0"}]}}),
    );
    api.put("member".into(), json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gw-blue-1", "namespace": "slicenet-gateway",
                     "labels": {"app.kubernetes.io/name": "slice-gateway", "app.kubernetes.io/managed-by": "slicenet-worker"}},
        "spec": {"nodeName": "n2", "containers": [{"name": "gateway", "image": "r/slicenet:0.1.0"}]}}));
    // Not slicenet's.
    api.put(
        "member".into(),
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "shop"}, "spec": {"containers": [{"name": "a", "image": "x:9"}]}}),
    );

    let pods = fetch(&api.client("member".into())).await.unwrap();
    let rows = running(&pods);
    assert_eq!(rows.len(), components.len() + 2, "{rows:#?}");
    for c in &components {
        assert!(rows.iter().any(|r| r.component.starts_with(c.as_str())), "{c} missing: {rows:#?}");
    }
    let install_version = env!("CARGO_PKG_VERSION");
    assert!(
        rows.iter()
            .filter(|r| r.pod != "slicenet-node/slicenet-node-agent-new")
            .all(|r| r.version == install_version || r.component == "slice-gateway")
    );
    let table = render(&rows, install_version);
    assert!(table.contains("slicenet-node-agent + slice-cni"), "{table}");
    assert!(table.contains("0.2.0    no"), "{table}");
    assert!(table.contains("skew: components run 2 minor versions (0.1, 0.2)"), "{table}");
}
