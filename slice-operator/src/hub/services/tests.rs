//! The merge of exports on reports built in memory.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;
use slice_api::crd::{NodeAllocation, SliceConfigSpec, SliceConfigStatus, WorkerSliceStatus};
use slice_api::planner;

use super::*;

fn slice(clusters: &[&str]) -> SliceConfig {
    let spec: SliceConfigSpec = serde_json::from_value(json!({
        "sliceSubnet": "10.80.0.0/16",
        "clusters": clusters,
        "namespaces": [{"namespace": "web"}],
    }))
    .expect("valid spec");
    let mut s = SliceConfig::new("blue", spec);
    s.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_800_000_000).expect("time")));
    s
}

fn members(clusters: &[&str]) -> Vec<slice_api::crd::MemberCluster> {
    clusters
        .iter()
        .map(|c| slice_api::crd::MemberCluster::new(c, slice_api::crd::MemberClusterSpec::default()))
        .collect()
}

fn plan_of(s: &SliceConfig, clusters: &[&str], workers: &[WorkerSlice]) -> SlicePlan {
    planner::plan(std::slice::from_ref(s), &members(clusters), workers).remove(0)
}

fn port(name: &str, n: u16) -> ServicePort {
    ServicePort { name: Some(name.to_owned()), protocol: "TCP".to_owned(), app_protocol: None, port: n }
}

fn export(name: &str, at: &str, ports: Vec<ServicePort>, addresses: &[&str]) -> ExportedService {
    ExportedService {
        namespace: "web".to_owned(),
        name: name.to_owned(),
        type_: ServiceImportType::ClusterSetIP,
        ports: ports.clone(),
        session_affinity: None,
        exported_at: at.to_owned(),
        endpoints: vec![EndpointGroup {
            ports,
            endpoints: addresses
                .iter()
                .map(|a| SliceEndpoint {
                    address: (*a).to_owned(),
                    hostname: Some(format!("h{}", a.replace('.', "-"))),
                })
                .collect(),
        }],
    }
}

/// The WorkerSlice of `cluster` as the plan makes it, with `exports` in its status.
fn worker(plan: &SlicePlan, cluster: &str, exports: Vec<ExportedService>) -> WorkerSlice {
    let spec = plan.workers.iter().find(|w| w.cluster == cluster).expect("a member").clone();
    let mut w = WorkerSlice::new(&plan.name, spec);
    w.metadata.namespace = Some(slice_api::crd::cluster_namespace(cluster));
    w.status = Some(WorkerSliceStatus { exports, ..Default::default() });
    w
}

/// Cluster prefixes: a → 10.80.0.0/20, b → 10.80.16.0/20 (lowest free index in name order).
fn world() -> (SliceConfig, SlicePlan) {
    let s = slice(&["a", "b", "c"]);
    let p = plan_of(&s, &["a", "b", "c"], &[]);
    (s, p)
}

#[test]
fn one_export_reaches_every_member_with_a_cluster_set_ip() {
    let (s, p) = world();
    let a = worker(&p, "a", vec![export("db", "2027-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.0.5"])]);
    let m = merge(&s, &p, &[a]);
    assert!(m.refusals.is_empty(), "{:?}", m.refusals);
    assert_eq!(m.imports.len(), 1);
    let i = &m.imports[0];
    assert_eq!(i.clusters.len(), 1);
    assert_eq!(i.clusters[0].cluster, "a");
    assert_eq!(i.clusters[0].endpoints[0].endpoints[0].address, "10.80.0.5");
    assert!(i.conflict.is_none());
    let block = s.spec.address_plan().unwrap().cluster_set_ip_block();
    let ip: IpAddr = i.ips[0].parse().unwrap();
    assert!(block.contains(&ip) && ip != block.network());
    assert_eq!(
        m.services,
        vec![ServiceAllocation {
            namespace: "web".into(),
            name: "db".into(),
            ip: Some(ip.to_string()),
            defined_by: "a".into()
        }]
    );
    assert_eq!(m.exporting_clusters, 1);
    // Every member with the namespace gets it; one without gets nothing.
    assert_eq!(imports_for(&m.imports, &["web".into()]).len(), 1);
    assert!(imports_for(&m.imports, &["other".into()]).is_empty());
}

#[test]
fn the_cluster_set_ip_is_stable_and_released_on_unexport() {
    let (mut s, p) = world();
    let db = export("db", "2027-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.0.5"]);
    let api = export("api", "2027-01-01T00:00:00Z", vec![port("http", 80)], &["10.80.0.6"]);
    let m = merge(&s, &p, &[worker(&p, "a", vec![db.clone(), api.clone()])]);
    let ip_of = |m: &Merged, n: &str| m.services.iter().find(|x| x.name == n).and_then(|x| x.ip.clone());
    let db_ip = ip_of(&m, "db").unwrap();
    s.status = Some(SliceConfigStatus { services: m.services.clone(), ..Default::default() });
    // api goes: db keeps its address; a new service does not take api's old one before others.
    let m2 = merge(&s, &p, &[worker(&p, "a", vec![db.clone()])]);
    assert_eq!(ip_of(&m2, "db").unwrap(), db_ip);
    assert!(ip_of(&m2, "api").is_none());
    // Recorded status lost: the address comes back from the specs the hub wrote.
    let mut a = worker(&p, "a", vec![db.clone()]);
    a.spec.imports = m2.imports.clone();
    s.status = None;
    let m3 = merge(&s, &p, &[a]);
    assert_eq!(ip_of(&m3, "db").unwrap(), db_ip);
}

#[test]
fn different_ports_make_the_union_and_a_conflict() {
    let (s, p) = world();
    let a = worker(&p, "a", vec![export("db", "2027-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.0.5"])]);
    let b = worker(&p, "b", vec![export("db", "2027-01-02T00:00:00Z", vec![port("admin", 8080)], &["10.80.16.7"])]);
    let m = merge(&s, &p, &[b, a]);
    let i = &m.imports[0];
    assert_eq!(i.ports, vec![port("sql", 5432), port("admin", 8080)], "the oldest export's ports first");
    let c = i.conflict.as_ref().expect("a conflict");
    assert_eq!(c.reason, reason::PORT_CONFLICT);
    assert!(c.message.contains("cluster a's export defines"), "{}", c.message);
    assert_eq!(i.clusters.iter().map(|c| c.cluster.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(m.services[0].defined_by, "a");
}

#[test]
fn a_newcomer_claiming_an_older_time_does_not_take_the_definition() {
    let (mut s, p) = world();
    let a = worker(&p, "a", vec![export("db", "2027-01-05T00:00:00Z", vec![port("sql", 5432)], &["10.80.0.5"])]);
    let m = merge(&s, &p, std::slice::from_ref(&a));
    s.status = Some(SliceConfigStatus { services: m.services, ..Default::default() });
    let mut old = export("db", "2000-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.16.7"]);
    old.type_ = ServiceImportType::Headless;
    let b = worker(&p, "b", vec![old]);
    let m = merge(&s, &p, &[a, b]);
    assert_eq!(m.imports[0].type_, ServiceImportType::ClusterSetIP);
    assert_eq!(m.imports[0].conflict.as_ref().unwrap().reason, reason::TYPE_CONFLICT);
    assert_eq!(m.services[0].defined_by, "a");
}

#[test]
fn endpoints_outside_the_cluster_prefix_and_foreign_namespaces_are_refused() {
    let (s, p) = world();
    // b claims an address of a's prefix and one of its own.
    let mut other_ns = export("x", "2027-01-01T00:00:00Z", vec![port("p", 1)], &["10.80.16.8"]);
    other_ns.namespace = "kube-system".into();
    let b = worker(
        &p,
        "b",
        vec![export("db", "2027-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.0.5", "10.80.16.7"]), other_ns],
    );
    let m = merge(&s, &p, &[b]);
    assert_eq!(m.imports.len(), 1);
    let eps = &m.imports[0].clusters[0].endpoints[0].endpoints;
    assert_eq!(eps.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), ["10.80.16.7"]);
    assert_eq!(m.refusals.len(), 2, "{:?}", m.refusals);
    assert!(m.refusals.iter().any(|r| r.contains("10.80.0.5") && r.contains("not inside")));
    assert!(m.refusals.iter().any(|r| r.contains("kube-system") && r.contains("not a member")));
}

#[test]
fn a_cluster_that_leaves_takes_its_endpoints_out() {
    let (s, p) = world();
    let a = worker(&p, "a", vec![export("db", "2027-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.0.5"])]);
    let b = worker(&p, "b", vec![export("db", "2027-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.16.7"])]);
    assert_eq!(merge(&s, &p, &[a.clone(), b.clone()]).imports[0].clusters.len(), 2);
    // b leaves the slice: planned without it, its WorkerSlice still there (being torn down).
    let s2 = slice(&["a", "c"]);
    let p2 = plan_of(&s2, &["a", "b", "c"], std::slice::from_ref(&a));
    let m = merge(&s2, &p2, &[a.clone(), b.clone()]);
    assert_eq!(m.imports[0].clusters.iter().map(|c| c.cluster.as_str()).collect::<Vec<_>>(), ["a"]);
    // A WorkerSlice being deleted speaks no more either.
    let mut b_gone = b;
    b_gone.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1_800_000_100).unwrap()));
    let m = merge(&s, &p, &[a, b_gone]);
    assert_eq!(m.imports[0].clusters.len(), 1);
}

#[test]
fn a_worker_slice_in_another_namespace_speaks_for_no_one() {
    let (s, p) = world();
    let mut a = worker(&p, "a", vec![export("db", "2027-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.0.5"])]);
    a.metadata.namespace = Some(slice_api::crd::cluster_namespace("b"));
    assert!(merge(&s, &p, &[a]).imports.is_empty());
}

#[test]
fn node_prefixes_inside_the_block_keep_their_addresses() {
    let (s, p) = world();
    let block = s.spec.address_plan().unwrap().cluster_set_ip_block();
    let mut a = worker(&p, "a", vec![export("db", "2027-01-01T00:00:00Z", vec![port("sql", 5432)], &["10.80.0.5"])]);
    // Only a cluster's own node prefix counts: a claims one in the block that is not in its prefix.
    let first_quarter = IpNet::new(block.network(), 26).unwrap();
    a.status.as_mut().unwrap().nodes = vec![NodeAllocation { node: "n".into(), prefix: first_quarter.to_string() }];
    let m = merge(&s, &p, &[a]);
    let ip: IpAddr = m.imports[0].ips[0].parse().unwrap();
    assert!(first_quarter.contains(&ip), "a's claim outside its prefix reserves nothing");
}

#[test]
fn malformed_reports_are_refused_whole_with_a_reason() {
    let (s, p) = world();
    let mut bad_time = export("db", "yesterday", vec![port("sql", 5432)], &["10.80.0.5"]);
    let mut dup_ports = export("api", "2027-01-01T00:00:00Z", vec![port("a", 80), port("b", 80)], &["10.80.0.6"]);
    let mut bad_name = export("Not_A_Name", "2027-01-01T00:00:00Z", vec![port("a", 80)], &["10.80.0.7"]);
    bad_time.session_affinity = None;
    dup_ports.session_affinity = None;
    bad_name.session_affinity = None;
    let m = merge(&s, &p, &[worker(&p, "a", vec![bad_time, dup_ports, bad_name])]);
    assert!(m.imports.is_empty());
    assert_eq!(m.refusals.len(), 3, "{:?}", m.refusals);
}
