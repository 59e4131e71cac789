//! Multi-cluster services end to end in the lab over three clusters (c3 behind NAT), as a user
//! works: Services and ServiceExports applied per cluster (`ControlPlane::apply_in`, what
//! `slicectl lab apply --cluster` does), the hub and the workers merging and importing them,
//! slice-dns answering from the imports, `dig` run in a pod of another cluster with the pod's
//! own resolver configuration, and connections made to what it answers. Needs root and the
//! binaries (`slice-cni`, `slice-operator`, `slice-gateway`, `slice-dns`) and `dig`, `dnsmasq`
//! (`make deps`); fails (does not skip) without them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use e2e::control::{self, ControlPlane, workloads};
use e2e::probe::{Responder, connect_count};
use e2e::{Lab, Pod};
use serde_json::Value;

const PREFIX: &str = "mcs";
const WAIT: Duration = Duration::from_secs(30);

fn objects(text: &str) -> Vec<Value> {
    workloads::parse_objects(text).unwrap_or_else(|e| panic!("{e:#}"))
}

fn slice_address(cp: &ControlPlane, cluster: &str, pod: &str) -> IpAddr {
    let p = cp.pod(cluster, "shop", pod).unwrap_or_else(|| panic!("no pod {cluster}/shop/{pod}"));
    IpAddr::V4(p.ipv4("slice0").unwrap_or_else(|e| panic!("{}: {e:#}", p.lab_name())))
}

/// `dig +short ARGS` in c3's client pod (through its resolv.conf): the answer lines, sorted.
fn dig(cp: &mut ControlPlane, lab: &Lab, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["dig", "+short", "+time=2", "+tries=2"];
    argv.extend_from_slice(args);
    let out = cp.exec(lab, "c3", "shop", "client", &argv).unwrap_or_else(|e| panic!("{e:#}"));
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The response code (`status: …`) of `dig ARGS` in c3's client pod.
fn rcode(cp: &mut ControlPlane, lab: &Lab, args: &[&str]) -> String {
    let mut argv = vec!["dig", "+time=2", "+tries=2"];
    argv.extend_from_slice(args);
    let out = cp.exec(lab, "c3", "shop", "client", &argv).unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("no answer").to_owned()
}

/// Runs rounds and asks again until `want` holds of the answer (the lab's resolvers cache for
/// the records' TTL); the last answer in the panic.
fn eventually<T: std::fmt::Debug>(
    cp: &mut ControlPlane,
    lab: &Lab,
    what: &str,
    ask: impl Fn(&mut ControlPlane, &Lab) -> T,
    want: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = ask(cp, lab);
        if want(&got) {
            return got;
        }
        if Instant::now() > deadline {
            panic!("{what}: still {got:?} after {WAIT:?}\n{}", cp.diagnose(lab));
        }
        cp.tick(lab).unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn addresses(list: &[IpAddr]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

fn condition<'a>(export: &'a Value, kind: &str) -> Option<&'a Value> {
    export["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

#[test]
#[allow(clippy::too_many_lines)] // One story: the lab is built once for all of it.
fn services_exported_in_two_clusters_answer_by_name_in_the_third() {
    e2e::require_root().expect("root");
    let mut lab = Lab::new(PREFIX).expect("lab (needs root; build the bins first)");
    let mut cp = ControlPlane::new();
    let manifest = control::blue_over(&["c1", "c2", "c3"]).expect("manifest");
    cp.apply(&mut lab, &manifest).unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnose(&lab)));
    cp.apply_in(&lab, "c1", &workloads::exported_services(0).expect("objects")).unwrap_or_else(|e| panic!("{e:#}"));
    cp.apply_in(&lab, "c2", &workloads::exported_services(1).expect("objects")).unwrap_or_else(|e| panic!("{e:#}"));
    let client = objects(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: shop}\nspec: {containers: [{name: c}]}\n",
    );
    cp.apply_in(&lab, "c3", &client).unwrap_or_else(|e| panic!("{e:#}"));

    let pod = |cp: &ControlPlane, cluster: &str, name: &str| -> Pod {
        cp.pod(cluster, "shop", name).unwrap_or_else(|| panic!("no pod {name} in {cluster}")).clone()
    };
    let _servers: Vec<Responder> = [("c1", "db-0", 5432, "db-0"), ("c2", "db-1", 5432, "db-1")]
        .into_iter()
        .chain([("c1", "web-0", 8080, "c1"), ("c2", "web-1", 8080, "c2")])
        .map(|(c, p, port, tag)| Responder::start(&pod(&cp, c, p), port, tag).expect("responder"))
        .collect();
    let db0 = slice_address(&cp, "c1", "db-0");
    let db1 = slice_address(&cp, "c2", "db-1");

    // The headless service: every ready endpoint of both clusters, under both zones.
    let both = addresses(&[db0, db1]);
    for zone in ["clusterset.local", "slice.local"] {
        let name = format!("db.shop.svc.{zone}");
        eventually(&mut cp, &lab, &name, |cp, lab| dig(cp, lab, &[&name]), |a| *a == both);
    }
    // The search path of the pod's namespace works as in a cluster.
    assert_eq!(dig(&mut cp, &lab, &["+search", "db.shop.svc.clusterset.local"]), both);
    // Per-host names, and the addresses they give answer.
    for (cluster, host, addr) in [("c1", "db-0", db0), ("c2", "db-1", db1)] {
        let name = format!("{host}.{cluster}.db.shop.svc.clusterset.local");
        assert_eq!(dig(&mut cp, &lab, &[&name]), [addr.to_string()], "{name}");
        let one = format!("{cluster}.db.shop.svc.slice.local");
        assert_eq!(dig(&mut cp, &lab, &[&one]), [addr.to_string()], "{one}");
        let seen = connect_count(&pod(&cp, "c3", "client"), SocketAddr::new(addr, 5432), 1);
        assert_eq!(seen, BTreeMap::from([(host.to_owned(), 1)]), "connecting to {name}");
    }
    // SRV names the port by its name, with a target per endpoint.
    let srv = dig(&mut cp, &lab, &["SRV", "_pg._tcp.db.shop.svc.clusterset.local"]);
    assert_eq!(srv.len(), 2, "{srv:?}");
    assert!(srv.iter().all(|r| r.contains(" 5432 ")), "{srv:?}");
    // The spec forbids records at <clusterid>.<svc>.<ns>.svc.clusterset.local: it is an empty
    // non-terminal (names exist below it), so NOERROR without an answer (RFC 8020), no address.
    assert_eq!(rcode(&mut cp, &lab, &["c1.db.shop.svc.clusterset.local"]), "NOERROR");
    assert!(dig(&mut cp, &lab, &["c1.db.shop.svc.clusterset.local"]).is_empty());
    // A name that exists nowhere: NXDOMAIN, never silence.
    assert_eq!(rcode(&mut cp, &lab, &["nothere.shop.svc.clusterset.local"]), "NXDOMAIN");

    // The ClusterSetIP service: its virtual address, the same in every cluster, and 100
    // connections to it reach both clusters.
    let vip = eventually(
        &mut cp,
        &lab,
        "web's ClusterSetIP",
        |cp, lab| dig(cp, lab, &["web.shop.svc.clusterset.local"]),
        |a| a.len() == 1,
    );
    let api = cp.api().clone();
    let import = |cluster: &str| {
        api.get(cluster.to_owned(), "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports/web")
            .unwrap_or_else(|| panic!("no ServiceImport web in {cluster}"))
    };
    for cluster in ["c1", "c2", "c3"] {
        assert_eq!(import(cluster)["spec"]["ips"][0].as_str(), Some(vip[0].as_str()), "{cluster}");
        let import = import(cluster);
        let clusters: BTreeSet<&str> = import["status"]["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["cluster"].as_str())
            .collect();
        assert_eq!(clusters, BTreeSet::from(["c1", "c2"]), "{cluster}");
    }
    let vip: IpAddr = vip[0].parse().expect("an address");
    let seen = connect_count(&pod(&cp, "c3", "client"), SocketAddr::new(vip, 80), 100);
    assert_eq!(seen.values().sum::<usize>(), 100, "{seen:?}");
    assert!(seen.get("c1").is_some_and(|n| *n > 0) && seen.get("c2").is_some_and(|n| *n > 0), "{seen:?}");

    // db-1 turns unready: it leaves the answers.
    cp.set_pod_ready(&lab, "c2", "shop", "db-1", false).unwrap_or_else(|e| panic!("{e:#}"));
    let only_db0 = vec![db0.to_string()];
    eventually(
        &mut cp,
        &lab,
        "db without db-1",
        |cp, lab| dig(cp, lab, &["db.shop.svc.clusterset.local"]),
        |a| *a == only_db0,
    );
    cp.set_pod_ready(&lab, "c2", "shop", "db-1", true).unwrap_or_else(|e| panic!("{e:#}"));
    eventually(
        &mut cp,
        &lab,
        "db with db-1 again",
        |cp, lab| dig(cp, lab, &["db.shop.svc.clusterset.local"]),
        |a| *a == both,
    );

    // Two clusters export `api` with different ports: the union, and Conflict on both.
    let api_service = |port: u16| {
        objects(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: shop}}\n\
             spec: {{selector: {{app: web}}, ports: [{{name: p{port}, port: {port}, targetPort: 8080}}]}}\n---\n\
             apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {{name: api, namespace: shop}}\n"
        ))
    };
    cp.apply_in(&lab, "c1", &api_service(80)).unwrap_or_else(|e| panic!("{e:#}"));
    cp.apply_in(&lab, "c2", &api_service(81)).unwrap_or_else(|e| panic!("{e:#}"));
    let export_path = "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceexports/api";
    for cluster in ["c1", "c2"] {
        let export = api.get(cluster.to_owned(), export_path).expect("the export");
        let conflict = condition(&export, "Conflict").unwrap_or_else(|| panic!("{cluster}: no Conflict in {export}"));
        assert_eq!(conflict["status"], "True", "{cluster}: {conflict}");
        assert!(conflict["reason"].as_str().is_some_and(|r| r.contains("PortConflict")), "{conflict}");
    }
    let import = api
        .get("c3".to_owned(), "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports/api")
        .expect("api imported in c3");
    let ports: BTreeSet<u64> =
        import["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| p["port"].as_u64()).collect();
    assert_eq!(ports, BTreeSet::from([80, 81]), "{import}");

    // An ExternalName Service cannot be exported.
    let external = objects(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: shop}\n\
         spec: {type: ExternalName, externalName: example.org}\n---\n\
         apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: ext, namespace: shop}\n",
    );
    cp.apply_in(&lab, "c1", &external).unwrap_or_else(|e| panic!("{e:#}"));
    let export = api
        .get("c1".to_owned(), "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceexports/ext")
        .expect("the export");
    let valid = condition(&export, "Valid").unwrap_or_else(|| panic!("no Valid in {export}"));
    assert_eq!(valid["status"], "False", "{valid}");
    assert_eq!(valid["reason"], "InvalidServiceType", "{valid}");

    // c2 leaves the slice: its records go with it.
    cp.apply(&mut lab, &control::blue_over(&["c1", "c3"]).expect("manifest")).unwrap_or_else(|e| panic!("{e:#}"));
    eventually(
        &mut cp,
        &lab,
        "db after c2 left",
        |cp, lab| dig(cp, lab, &["db.shop.svc.clusterset.local"]),
        |a| *a == only_db0,
    );
    assert_eq!(rcode(&mut cp, &lab, &["db-1.c2.db.shop.svc.clusterset.local"]), "NXDOMAIN");

    // Un-export: the names go (NXDOMAIN), and the ClusterSetIP is released.
    let export_db = objects(
        "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {name: db, namespace: shop}\n",
    );
    cp.delete_in(&lab, "c1", &export_db).unwrap_or_else(|e| panic!("{e:#}"));
    eventually(
        &mut cp,
        &lab,
        "db un-exported",
        |cp, lab| rcode(cp, lab, &["db.shop.svc.clusterset.local"]),
        |r| r == "NXDOMAIN",
    );

    cp.delete_all(&mut lab).unwrap_or_else(|e| panic!("{e:#}"));
    lab.teardown().expect("teardown");
}
