//! The lab driven from SliceConfig YAML through the same planner and worker logic as a real
//! cluster (`e2e::control`): create a slice over three clusters (c3 behind NAT), add a
//! namespace, add a fourth cluster, remove a cluster, delete the slice. Connectivity follows each
//! step, allocations never move, and nothing is left at the end. Needs root and the binaries
//! (`slice-cni`, `slice-operator`, `slice-gateway`); fails (does not skip) without them.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::control::{self, ControlPlane, Manifest, parse_manifest, run_pod_retrying};
use e2e::{Lab, Pod, PodSpec};
use slice_api::crd::condition;

const PREFIX: &str = "cpl";
const STEP: Duration = Duration::from_secs(20);

fn manifest(clusters: &[&str], namespaces: &str) -> Manifest {
    let text = format!(
        r#"
apiVersion: slicenet.io/v1alpha1
kind: MemberCluster
metadata:
  name: c1
spec: {{}}
---
apiVersion: slicenet.io/v1alpha1
kind: MemberCluster
metadata:
  name: c2
  annotations: {{lab.slicenet.io/nodes: "1"}}
spec: {{}}
---
apiVersion: slicenet.io/v1alpha1
kind: MemberCluster
metadata:
  name: c3
  annotations: {{lab.slicenet.io/nodes: "1", lab.slicenet.io/behind-nat: "true"}}
spec: {{}}
---
apiVersion: slicenet.io/v1alpha1
kind: MemberCluster
metadata:
  name: c4
  annotations: {{lab.slicenet.io/nodes: "1"}}
spec: {{}}
---
apiVersion: slicenet.io/v1alpha1
kind: SliceConfig
metadata:
  name: blue
spec:
  sliceSubnet: 10.80.0.0/16
  maxClusters: 4
  gateway: {{persistentKeepalive: 5, replicas: 1}}
  clusters: [{}]
  namespaces: {namespaces}
"#,
        clusters.join(", ")
    );
    // Every cluster is registered from the start (so the lab builds it once); the slice names
    // some of them.
    parse_manifest(&text).expect("test YAML parses")
}

fn addr(pod: &Pod) -> Ipv4Addr {
    pod.ipv4("slice0").unwrap_or_else(|e| panic!("{}: {e:#}", pod.lab_name()))
}

fn ping(from: &Pod, to: Ipv4Addr) -> bool {
    from.exec(&["ping", "-n", "-q", "-c", "1", "-W", "1", &to.to_string()]).is_ok_and(|o| o.status.success())
}

fn reaches(cp: &ControlPlane, lab: &Lab, from: &Pod, to: &Pod) {
    if let Err(e) = control::first_packet(from, addr(to), Instant::now(), STEP) {
        panic!("{} → {}: {e:#}\n{}", from.lab_name(), to.lab_name(), cp.diagnose(lab));
    }
}

fn prefixes(cp: &ControlPlane) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> =
        cp.workers().iter().map(|w| (w.spec.cluster.clone(), w.spec.cluster_prefix.clone())).collect();
    v.sort();
    v
}

#[test]
fn slice_from_yaml_follows_every_change_and_leaves_nothing() {
    e2e::require_root().expect("root");
    let mut lab = Lab::new(PREFIX).expect("lab (needs root; build the bins first)");
    let mut cp = ControlPlane::new();
    let shop = r#"[{namespace: shop}]"#;

    // 1. Three clusters, c3 behind NAT.
    cp.apply(&mut lab, &manifest(&["c1", "c2", "c3"], shop)).expect("apply v1");
    let s = &cp.slices()[0];
    let st = s.status.as_ref().expect("status");
    assert_eq!(st.vni, Some(slice_api::planner::VNI_BASE));
    assert_eq!(condition(&st.conditions, "Planned").map(|c| c.status.as_str()), Some("True"));
    assert_eq!(condition(&st.conditions, "Ready").map(|c| c.status.as_str()), Some("True"), "{st:?}");
    // The report `slicectl status --hub-kubeconfig` prints for a hub finds nothing wrong: the
    // clusters are Healthy by the hub's heartbeat rule, every share Ready, every tunnel Up.
    let problems = slice_api::hub_view::problems(&cp.hub_view());
    assert!(problems.is_empty(), "{problems:?}\n{}", slice_api::hub_view::render(&cp.hub_view()));
    let c1 = lab.node("c1", "n2");
    let a = run_pod_retrying(c1, &PodSpec::new("shop", "a"), STEP).expect("pod a");
    let b = run_pod_retrying(lab.node("c2", "n1"), &PodSpec::new("shop", "b"), STEP).expect("pod b");
    let c = run_pod_retrying(lab.node("c3", "n1"), &PodSpec::new("shop", "c"), STEP).expect("pod c");
    for (x, y) in [(&a, &b), (&a, &c), (&b, &c), (&b, &a), (&c, &a), (&c, &b)] {
        reaches(&cp, &lab, x, y);
    }
    let outsider = lab.node("c1", "n1").run_pod(PodSpec::new("other", "o")).expect("outsider");
    assert!(outsider.addresses("slice0").is_err() || outsider.addresses("slice0").unwrap().is_empty());
    let before = prefixes(&cp);
    let wg = cp.gateway_wg("blue", "c1", &["show", &cp.gateway_interface("blue", "c1").unwrap(), "peers"]).unwrap();
    assert_eq!(wg.lines().count(), 2, "c1's gateway has c2 and c3 as peers: {wg}");

    // 2. A namespace joins in c1 and c2 only.
    cp.apply(&mut lab, &manifest(&["c1", "c2", "c3"], r#"[{namespace: shop}, {namespace: db, clusters: [c1, c2]}]"#))
        .expect("apply v2");
    let x = run_pod_retrying(lab.node("c1", "n1"), &PodSpec::new("db", "x"), STEP).expect("pod x");
    let y = run_pod_retrying(lab.node("c2", "n1"), &PodSpec::new("db", "y"), STEP).expect("pod y");
    reaches(&cp, &lab, &x, &y);
    reaches(&cp, &lab, &x, &c);
    let z = lab.node("c3", "n1").run_pod(PodSpec::new("db", "z")).expect("pod z");
    assert!(z.addresses("slice0").map(|v| v.is_empty()).unwrap_or(true), "db is not a member in c3");
    assert_eq!(prefixes(&cp), before, "adding a namespace moved a prefix");

    // 3. The registered c4 joins the slice. Convergence: apply → the first packet from a pod in
    // c1 to the slice member that appears in c4 (its gateway pod).
    let t0 = Instant::now();
    cp.apply(&mut lab, &manifest(&["c1", "c2", "c3", "c4"], shop)).expect("apply v3");
    let applied = t0.elapsed();
    let gw4 = cp.gateway_address("blue", "c4").expect("c4 gateway");
    let first = control::first_packet(&a, gw4, t0, STEP).expect("a → c4");
    println!(
        "convergence (c4 joins): control plane done {:.0} ms, first packet c1→c4 {:.0} ms after apply",
        applied.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3
    );
    let d = run_pod_retrying(lab.node("c4", "n1"), &PodSpec::new("shop", "d"), STEP).expect("pod d");
    reaches(&cp, &lab, &a, &d);
    reaches(&cp, &lab, &d, &c);
    let after: Vec<(String, String)> = prefixes(&cp).into_iter().filter(|(c, _)| c != "c4").collect();
    assert_eq!(after, before, "adding a cluster moved a prefix");

    // 4. c2 leaves: traffic to it stops (its routers go, and with them its pods' slice0), a ↔ c
    // and a ↔ d keep working without a lost ping.
    let b_addr = addr(&b);
    let mut pinger =
        a.spawn(&["ping", "-n", "-q", "-i", "0.05", "-c", "100", "-W", "10", &addr(&c).to_string()]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cp.apply(&mut lab, &manifest(&["c1", "c3", "c4"], shop)).expect("apply v4");
    // Waits for the pinger's summary (a busy machine may need much longer than 100 × 50 ms).
    let deadline = Instant::now() + Duration::from_secs(90);
    while pinger.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = pinger.log_text();
    let _ = pinger.stop();
    assert!(
        log.contains("100 packets transmitted, 100 received"),
        "a → c blinked while c2 left:\n{log}\n{}",
        cp.diagnose(&lab)
    );
    assert!(cp.worker("blue", "c2").is_none());
    let stopped = Instant::now() + STEP;
    while ping(&a, b_addr) {
        assert!(Instant::now() < stopped, "a still reaches b in the removed cluster");
    }
    reaches(&cp, &lab, &a, &d);
    reaches(&cp, &lab, &c, &d);

    // 5. Delete the slice: gateways, forwards, routers go; after the pods, no address is held.
    let pids = cp.gateway_pids();
    assert_eq!(pids.len(), 3);
    cp.delete_all(&mut lab).expect("delete");
    assert!(cp.workers().is_empty());
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "gateway {pid} still runs");
    }
    for cluster in lab.clusters() {
        if !cluster.behind_nat() {
            assert_eq!(cluster.forwards().unwrap(), Vec::<String>::new(), "{} keeps a forward", cluster.name());
        }
        for node in cluster.nodes() {
            let router = format!("{}blue", node.router_netns_prefix());
            let deadline = Instant::now() + STEP;
            while std::path::Path::new("/run/netns").join(&router).exists() {
                assert!(Instant::now() < deadline, "{router} still exists");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    for pod in [&a, &b, &c, &d, &x, &y, &z, &outsider] {
        lab.node(&pod.cluster, &pod.node).remove_pod(pod).expect("remove pod");
    }
    for cluster in lab.clusters() {
        for node in cluster.nodes() {
            let dir = node.ipam_dir().join("blue");
            let held: Vec<String> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            assert!(held.iter().all(|f| f.starts_with('.')), "{}: addresses still held: {held:?}", dir.display());
        }
    }
    let tuns = Command::new("ls").arg("/var/run/wireguard").output().unwrap();
    let left = String::from_utf8_lossy(&tuns.stdout);
    assert!(!left.lines().any(|l| l.starts_with(PREFIX)), "UAPI sockets left: {left}");
    lab.teardown().expect("teardown");
}

#[test]
fn bad_yaml_is_refused_with_the_document_named() {
    let e = parse_manifest("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
    assert!(format!("{e:#}").contains("document 1: apiVersion \"v1\""), "{e:#}");
    let e = parse_manifest("apiVersion: slicenet.io/v1alpha1\nkind: Pod\n").unwrap_err();
    assert!(format!("{e:#}").contains("kind \"Pod\""), "{e:#}");
    let two =
        "apiVersion: slicenet.io/v1alpha1\nkind: SliceConfig\nmetadata: {name: a}\nspec: {sliceSubnet: 10.0.0.0/16}\n";
    let e = parse_manifest(&format!("{two}---\n{two}")).unwrap_err();
    assert!(format!("{e:#}").contains("document 2: SliceConfig a appears twice"), "{e:#}");
    let e = parse_manifest(
        "apiVersion: slicenet.io/v1alpha1\nkind: SliceConfig\nmetadata: {name: a}\nspec: {maxClusters: x}\n",
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("document 1: SliceConfig"), "{e:#}");
    let e = parse_manifest("a: [").unwrap_err();
    assert!(format!("{e:#}").contains("document 1 is not valid YAML"), "{e:#}");
}

/// The users' objects in a lab cluster, as `kubectl apply --context` would write them: pods
/// started through CRI on the slice (network-status published), a headless Service's
/// EndpointSlice following the pods' readiness and hostnames, a Service given a ClusterIP, and
/// everything removed with the objects.
#[test]
fn users_objects_run_as_a_cluster_runs_them() {
    e2e::require_root().expect("root");
    let mut lab = Lab::new("cpw").expect("lab (needs root; build the bins first)");
    let mut cp = ControlPlane::new();
    let manifest = control::across_manifest("blue", "10.80.0.0/16", &["shop"], &[("c1", 2, false), ("c2", 1, false)])
        .expect("manifest");
    cp.apply(&mut lab, &manifest).unwrap_or_else(|e| panic!("{e:#}"));
    let objects = control::workloads::parse_objects(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, targetPort: pg}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec: {hostname: db-0, subdomain: db, containers: [{name: pg, ports: [{name: pg, containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec: {hostname: db-1, subdomain: db, containers: [{name: pg, ports: [{name: pg, containerPort: 5432}]}]}
"#,
    )
    .expect("objects parse");
    cp.apply_in(&lab, "c1", &objects).unwrap_or_else(|e| panic!("{e:#}"));
    // A handle on the same in-memory API (it is shared, like a client).
    let api = cp.api().clone();
    let c1 = "c1".to_owned();
    let pods = api.list(&c1, "/api/v1/namespaces/shop/pods");
    assert_eq!(pods.len(), 2);
    let nodes: std::collections::BTreeSet<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    assert_eq!(nodes.len(), 2, "the two pods are spread over c1's two nodes: {nodes:?}");
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap();
        let pod = cp.pod("c1", "shop", name).expect("a lab pod");
        let status =
            p["metadata"]["annotations"][slice_api::names::NETWORK_STATUS_ANNOTATION].as_str().expect("network-status");
        assert!(status.contains(&addr(pod).to_string()), "{status}");
        assert_eq!(p["status"]["podIP"].as_str(), Some(pod.ipv4("eth0").unwrap().to_string().as_str()));
    }
    let web = api.get(c1.clone(), "/api/v1/namespaces/shop/services/web").expect("web");
    assert!(web["spec"]["clusterIP"].as_str().is_some_and(|ip| ip.starts_with("10.96.")), "{web}");
    let slice_of =
        |svc: &str| api.get(c1.clone(), &format!("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/{svc}-lab"));
    let db = slice_of("db").expect("db's EndpointSlice");
    let hostnames: Vec<&str> =
        db["endpoints"].as_array().unwrap().iter().filter_map(|e| e["hostname"].as_str()).collect();
    assert_eq!(hostnames, ["db-0", "db-1"]);
    assert_eq!(db["ports"][0]["port"], 5432);
    // db-1's readiness probe fails: its endpoint turns unready.
    cp.set_pod_ready(&lab, "c1", "shop", "db-1", false).unwrap();
    let db = slice_of("db").expect("db's EndpointSlice");
    let ready: Vec<bool> =
        db["endpoints"].as_array().unwrap().iter().map(|e| e["conditions"]["ready"] == true).collect();
    assert_eq!(ready, [true, false]);
    // Deleting the objects removes the pods (their sandboxes) and the EndpointSlices.
    let sandboxes: Vec<e2e::Pod> = ["db-0", "db-1"].iter().map(|n| cp.pod("c1", "shop", n).unwrap().clone()).collect();
    cp.delete_in(&lab, "c1", &objects).unwrap();
    assert!(cp.pod("c1", "shop", "db-0").is_none());
    assert!(slice_of("db").is_none());
    for p in sandboxes {
        assert!(!p.netns_exists(), "{} keeps its network namespace", p.lab_name());
    }
    cp.delete_all(&mut lab).expect("delete");
    lab.teardown().expect("teardown");
}
