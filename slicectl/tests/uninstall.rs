//! `slicectl uninstall worker|hub` against the in-memory API (`slice_kube::memory`): a cluster
//! holding what `slicectl install` (and `join`) printed plus what the controllers made since;
//! the uninstall removes all of it — admission first, then the controllers, then their
//! objects (finalizers released on the hub), the node cleanup DaemonSet waited for and removed —
//! and leaves the user's objects alone. A second run finds nothing; a run after a half-done one
//! ends the same. (The API server deletes a namespace's objects with it; the in-memory API does
//! not, so objects inside a deleted namespace count as gone.)

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use slice_kube::memory::MemoryApi;
use slicectl::uninstall::{self, Timing};

const IMAGE: &str = "slicenet:test";
const CLEANUP_DS: &str = "/apis/apps/v1/namespaces/slicenet-node/daemonsets/slicenet-node-cleanup";

fn timing() -> Timing {
    Timing { node_cleanup: Duration::from_secs(60), poll: Duration::from_millis(5) }
}

fn server(side: &str) -> MemoryApi<String> {
    MemoryApi::new([(side.to_owned(), &[][..], "slicenet-system".to_owned())])
}

/// Stands in for the DaemonSet controller and the kubelets: the cleanup DaemonSet becomes ready
/// on two nodes (its init container, `slicectl node-uninstall`, is tested for real in
/// tests/node_uninstall.rs).
fn daemonset_controller(api: &MemoryApi<String>, side: &str) -> tokio::task::JoinHandle<()> {
    let (api, side) = (api.clone(), side.to_owned());
    tokio::spawn(async move {
        loop {
            if let Some(ds) = api.get(side.clone(), CLEANUP_DS)
                && ds.get("status").is_none()
            {
                let generation = ds["metadata"]["generation"].as_i64().unwrap_or(1);
                api.edit(side.clone(), CLEANUP_DS, |o| {
                    o["status"] =
                        json!({"observedGeneration": generation, "desiredNumberScheduled": 2, "numberReady": 2});
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// Paths of every object on `side`, without those inside a namespace that is gone.
fn left(api: &MemoryApi<String>, side: &str) -> BTreeSet<String> {
    let all = api.paths(&side.to_owned(), "/");
    let namespaces: BTreeSet<String> = all
        .iter()
        .filter_map(|p| p.strip_prefix("/api/v1/namespaces/").filter(|r| !r.contains('/')).map(str::to_owned))
        .collect();
    all.into_iter()
        .filter(|p| match p.split('/').skip_while(|s| *s != "namespaces").nth(1) {
            Some(ns) if p.split('/').filter(|s| !s.is_empty()).count() > 4 => namespaces.contains(ns),
            _ => true,
        })
        .collect()
}

fn member_cluster_objects(api: &MemoryApi<String>) {
    let side = "member".to_owned();
    let worker_made = json!({"app.kubernetes.io/managed-by": "slicenet-worker"});
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop",
            "labels": {"slicenet.io/slice": "blue", "team": "shop"}, "annotations": {"slicenet.io/labelled-by": "slicenet-worker"}}}),
        // Labelled by its owner to ask for a slice: not the worker's label, not removed.
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mine", "labels": {"slicenet.io/slice": "red"}}}),
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "blue", "namespace": "shop", "labels": worker_made}, "spec": {"config": "{}"}}),
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "users-own", "namespace": "shop"}, "spec": {"config": "{}"}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "db-c2", "namespace": "shop", "labels": worker_made}, "addressType": "IPv4", "endpoints": []}),
        json!({"apiVersion": "multicluster.x-k8s.io/v1beta1", "kind": "ServiceImport",
            "metadata": {"name": "db", "namespace": "shop", "labels": worker_made}, "spec": {"type": "ClusterSetIP", "ports": []}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "slicenet-node-n1", "namespace": "slicenet-system", "labels": worker_made}, "data": {}}),
        // The cluster's CoreDNS with the worker's slice DNS stanza.
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": with_dns_stanza()}}),
    ];
    for o in objects {
        api.put(side.clone(), o);
    }
}

const COREFILE: &str =
    ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n    forward . /etc/resolv.conf\n}\n";

fn with_dns_stanza() -> String {
    let stanza = slice_api::corefile::Stanza::coredns(vec!["10.96.0.53".parse().unwrap()]);
    slice_api::corefile::with_stanza(COREFILE, &stanza).unwrap()
}

async fn install_worker(api: &MemoryApi<String>) {
    let opts = slicectl::install::Options::generate(IMAGE).unwrap();
    let join = slicectl::join_file::JoinFile::new("east", "https://hub:6443", "Q0E=", "a.b.c");
    let manifest = slicectl::install::worker(&opts, "east", &join.kubeconfig(), None).unwrap();
    slicectl::register::apply(&api.client("member".into()), &manifest).await.unwrap();
    member_cluster_objects(api);
}

fn users_objects() -> BTreeSet<String> {
    [
        "/api/v1/namespaces/shop",
        "/api/v1/namespaces/mine",
        "/api/v1/namespaces/kube-system",
        "/api/v1/namespaces/kube-system/configmaps/coredns",
        "/apis/k8s.cni.cncf.io/v1/namespaces/shop/network-attachment-definitions/users-own",
    ]
    .map(str::to_owned)
    .into()
}

#[tokio::test]
async fn uninstall_worker_removes_the_install_and_what_the_worker_made() {
    let api = server("member");
    let client = api.client("member".into());
    let _controller = daemonset_controller(&api, "member");
    install_worker(&api).await;
    let before = left(&api, "member");
    let steps = uninstall::worker_plan(IMAGE).unwrap();

    let dry = uninstall::run(&client, &steps, true, timing()).await.unwrap();
    assert_eq!(left(&api, "member"), before, "--dry-run changes nothing");
    assert!(api.get("member".into(), CLEANUP_DS).is_none());
    for want in [
        "would delete MutatingWebhookConfiguration",
        "would delete Deployment slicenet-system/slicenet-worker",
        "would run `slicectl node-uninstall` on every node",
        "would remove the label slicenet.io/slice of Namespace shop",
        "would delete NetworkAttachmentDefinition shop/blue",
    ] {
        assert!(dry.iter().any(|l| l.starts_with(want)), "{want:?} not in {dry:#?}");
    }

    let done = uninstall::run(&client, &steps, false, timing()).await.unwrap();
    let position = |prefix: &str| {
        done.iter().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix:?} not in {done:#?}"))
    };
    assert!(
        position("deleted MutatingWebhookConfiguration")
            < position("deleted Deployment slicenet-system/slicenet-worker")
    );
    assert!(
        position("deleted ValidatingAdmissionPolic") < position("deleted DaemonSet slicenet-node/slicenet-node-agent")
    );
    assert!(position("deleted DaemonSet slicenet-node/slicenet-node-agent") < position("cleaned 2 node(s)"));
    assert!(position("deleted NetworkAttachmentDefinition shop/blue") < position("cleaned 2 node(s)"));
    assert!(position("cleaned 2 node(s)") < position("deleted Namespace slicenet-system"));
    assert_eq!(done.iter().filter(|l| l.contains("slicenet-node-cleanup")).count(), 1, "{done:#?}");
    assert!(api.get("member".into(), CLEANUP_DS).is_none(), "the cleanup DaemonSet is removed when done");
    assert_eq!(left(&api, "member"), users_objects());
    let shop = api.get("member".into(), "/api/v1/namespaces/shop").unwrap();
    assert_eq!(shop["metadata"]["labels"], json!({"team": "shop"}), "only the worker's label went");
    let coredns = api.get("member".into(), "/api/v1/namespaces/kube-system/configmaps/coredns").unwrap();
    assert_ne!(with_dns_stanza(), COREFILE);
    assert_eq!(coredns["data"]["Corefile"], COREFILE, "the Corefile as before the worker edited it");
    let mine = api.get("member".into(), "/api/v1/namespaces/mine").unwrap();
    assert_eq!(mine["metadata"]["labels"]["slicenet.io/slice"], "red");

    // Again: nothing to do.
    assert_eq!(uninstall::run(&client, &steps, false, timing()).await.unwrap(), Vec::<String>::new());

    // After a half-done run (some of it gone, the cleanup DaemonSet left behind): the same end.
    install_worker(&api).await;
    for path in [
        "/apis/apps/v1/namespaces/slicenet-system/deployments/slicenet-worker",
        "/apis/k8s.cni.cncf.io/v1/namespaces/shop/network-attachment-definitions/blue",
        "/api/v1/namespaces/slicenet-gateway",
    ] {
        assert!(api.get("member".into(), path).is_some(), "{path}");
        api.remove("member".into(), path);
    }
    api.put("member".into(), serde_json::to_value(uninstall::node_cleanup_daemonset(IMAGE)).unwrap());
    let put = api.get("member".into(), CLEANUP_DS).unwrap();
    assert_eq!(put["kind"], "DaemonSet");
    uninstall::run(&client, &steps, false, timing()).await.unwrap();
    assert_eq!(left(&api, "member"), users_objects());

    // Right after a run on a real API server, slicenet's namespaces are still terminating: a run
    // then neither deletes them again nor starts the node cleanup in them.
    for ns in ["slicenet-system", "slicenet-node", "slicenet-gateway"] {
        api.put(
            "member".into(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "deletionTimestamp": "2026-12-04T00:00:00Z"},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Terminating"}}),
        );
    }
    assert_eq!(uninstall::run(&client, &steps, false, timing()).await.unwrap(), Vec::<String>::new());
    assert!(api.get("member".into(), CLEANUP_DS).is_none());
}

#[tokio::test]
async fn a_node_cleanup_that_does_not_finish_is_reported_and_left_for_a_look() {
    let api = server("member");
    let client = api.client("member".into());
    install_worker(&api).await;
    // No DaemonSet controller: no node ever reports the cleanup done.
    let steps = uninstall::worker_plan(IMAGE).unwrap();
    let quick = Timing { node_cleanup: Duration::from_millis(50), poll: Duration::from_millis(5) };
    let e = uninstall::run(&client, &steps, false, quick).await.unwrap_err();
    assert!(format!("{e:#}").contains("did not finish on every node"), "{e:#}");
    assert!(api.get("member".into(), CLEANUP_DS).is_some());
    // The other steps were made regardless.
    assert!(api.get("member".into(), "/api/v1/namespaces/slicenet-system").is_none());
}

fn with_finalizer(mut obj: Value, finalizer: &str) -> Value {
    obj["metadata"]["finalizers"] = json!([finalizer]);
    obj
}

/// Registers `cluster` on the in-memory hub as `slicectl join` does, with the hub's finalizer on
/// its MemberCluster and a WorkerSlice `blue` carrying the worker's finalizer.
async fn join_with_a_slice(api: &MemoryApi<String>, client: &kube::Client, cluster: &str) {
    let opts = slicectl::join::JoinOptions { cluster: cluster.into(), ..Default::default() };
    slicectl::register::apply(client, &slicectl::register::hub_objects(&opts).unwrap()).await.unwrap();
    let path = format!("/apis/slicenet.io/v1alpha1/memberclusters/{cluster}");
    api.edit("hub".into(), &path, |o| *o = with_finalizer(o.clone(), "slicenet.io/hub"));
    api.put(
        "hub".into(),
        with_finalizer(
            json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
                "metadata": {"name": "blue", "namespace": format!("slicenet-cluster-{cluster}")},
                "spec": {"slice": "blue", "cluster": cluster, "sliceSubnet": "10.80.0.0/16",
                         "clusterPrefix": "10.80.0.0/20", "nodePrefixLength": 26, "vni": 7}}),
            "slicenet.io/worker",
        ),
    );
}

#[tokio::test]
async fn uninstall_hub_releases_finalizers_and_removes_every_cluster_access() {
    let api = server("hub");
    let client = api.client("hub".into());
    let hub_manifest = slicectl::install::hub(&slicectl::install::Options::generate(IMAGE).unwrap()).unwrap();
    slicectl::register::apply(&client, &hub_manifest).await.unwrap();
    for cluster in ["east", "west"] {
        join_with_a_slice(&api, &client, cluster).await;
    }
    api.put(
        "hub".into(),
        with_finalizer(
            json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": "blue"},
                "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["east", "west"]}}),
            "slicenet.io/hub",
        ),
    );
    api.put("hub".into(), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "users"}}));

    let steps = uninstall::hub_plan(IMAGE).unwrap();
    let done = uninstall::run(&client, &steps, false, timing()).await.unwrap();
    let position = |prefix: &str| {
        done.iter().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix:?} not in {done:#?}"))
    };
    assert!(
        position("deleted ValidatingWebhookConfiguration")
            < position("deleted Deployment slicenet-system/slicenet-hub")
    );
    assert!(
        position("deleted Deployment slicenet-system/slicenet-hub")
            < position("deleted WorkerSlice slicenet-cluster-east/blue (finalizers released)")
    );
    assert!(
        position("deleted MemberCluster west (finalizers released)") < position("deleted CustomResourceDefinition")
    );
    for gone in [
        "Namespace slicenet-cluster-east",
        "Namespace slicenet-cluster-west",
        "ClusterRole slicenet-worker-east",
        "ClusterRoleBinding slicenet-worker-west",
    ] {
        assert!(done.iter().any(|l| l == &format!("deleted {gone}")), "{gone} not in {done:#?}");
    }
    assert!(done.last().unwrap().starts_with("deleted CustomResourceDefinition"), "CRDs last: {done:#?}");
    assert_eq!(left(&api, "hub"), BTreeSet::from(["/api/v1/namespaces/users".to_owned()]));
    assert_eq!(uninstall::run(&client, &steps, false, timing()).await.unwrap(), Vec::<String>::new());
}

#[test]
fn the_node_cleanup_daemonset_runs_node_uninstall_with_the_agents_host_dirs() {
    let ds = uninstall::node_cleanup_daemonset(IMAGE);
    let agent = slicectl::install::workloads::node_agent_daemonset(IMAGE);
    let pod = ds.spec.template.spec.as_ref().unwrap();
    let init = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.args.as_ref().unwrap()[0], "node-uninstall");
    assert_eq!(init.security_context.as_ref().unwrap().privileged, Some(true));
    let mounts: BTreeSet<&str> = init.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
    for path in ["/run/netns", "/run/slicenet", "/var/lib/slicenet", "/host/opt/cni/bin", "/host/etc/cni/net.d"] {
        assert!(mounts.contains(path), "{path} not mounted: {mounts:?}");
    }
    assert_eq!(pod.volumes, agent.spec.template.spec.as_ref().unwrap().volumes, "the same host dirs as the agent");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.automount_service_account_token, Some(false), "no API access");
    assert_eq!(pod.containers[0].command.as_deref(), Some(&["sleep".to_owned(), "infinity".to_owned()][..]));
    let labels = ds.spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    for (k, v) in ds.spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(labels.get(k), Some(v));
    }
    assert_ne!(ds.spec.selector, agent.spec.selector, "never selects the agent's pods");
}

/// One member leaving a hub that keeps running: east's MemberCluster is deleted (its finalizer
/// left to the hub controller, which is not running here), east's WorkerSlices go with the gone
/// worker's finalizer released, east's access goes; west is untouched.
#[tokio::test]
async fn a_member_leaves_the_hub_and_the_others_stay() {
    let api = server("hub");
    let client = api.client("hub".into());
    let mut west_before = Vec::new();
    for cluster in ["east", "west"] {
        join_with_a_slice(&api, &client, cluster).await;
        if cluster == "west" {
            west_before = api.paths(&"hub".to_owned(), "/").into_iter().filter(|p| p.contains("west")).collect();
        }
    }
    let steps = uninstall::leave_plan("east").unwrap();
    let dry = uninstall::run(&client, &steps, true, timing()).await.unwrap();
    assert!(dry.iter().any(|l| l == "would delete MemberCluster east"), "{dry:#?}");
    let done = uninstall::run(&client, &steps, false, timing()).await.unwrap();
    assert_eq!(done[0], "deleted MemberCluster east", "the hub stops planning east first: {done:#?}");
    assert_eq!(done[1], "deleted WorkerSlice slicenet-cluster-east/blue (finalizers released)");
    let east: Vec<String> = api.paths(&"hub".to_owned(), "/").into_iter().filter(|p| p.contains("east")).collect();
    assert_eq!(east, ["/apis/slicenet.io/v1alpha1/memberclusters/east"], "only the MemberCluster, for the hub");
    let mc = api.get("hub".into(), "/apis/slicenet.io/v1alpha1/memberclusters/east").unwrap();
    assert!(mc["metadata"]["deletionTimestamp"].is_string(), "being deleted: {mc}");
    let west: Vec<String> = api.paths(&"hub".to_owned(), "/").into_iter().filter(|p| p.contains("west")).collect();
    assert_eq!(west, west_before);
    // Again before the hub released it: nothing to add.
    assert_eq!(uninstall::run(&client, &steps, false, timing()).await.unwrap(), Vec::<String>::new());
    // The hub controller releases its finalizer: east is gone; a second run finds nothing.
    api.edit("hub".into(), "/apis/slicenet.io/v1alpha1/memberclusters/east", |o| {
        o["metadata"]["finalizers"] = json!([]);
    });
    api.remove("hub".into(), "/apis/slicenet.io/v1alpha1/memberclusters/east");
    assert_eq!(uninstall::run(&client, &steps, false, timing()).await.unwrap(), Vec::<String>::new());
    assert!(uninstall::leave_plan("East").is_err());
}
