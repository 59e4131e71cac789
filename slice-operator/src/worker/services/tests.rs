//! The worker's export resolution, conditions, import objects and ClusterSetIP rules on objects
//! built in memory.

use serde_json::json;
use slice_api::crd::{ExportConflict, ImportedCluster};

use super::*;

fn pod(name: &str, node: &str, ready_ip: Option<&str>) -> Pod {
    let mut entries = vec![json!({"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.9"]})];
    if let Some(ip) = ready_ip {
        entries.push(json!({"name": "shop/slice-blue", "interface": "slice0", "ips": [ip]}));
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop",
            "annotations": {"k8s.v1.cni.cncf.io/network-status": Value::Array(entries).to_string()}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"phase": "Running"},
    }))
    .unwrap()
}

fn service(name: &str, type_: &str, cluster_ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"type": type_, "clusterIP": cluster_ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    .unwrap()
}

fn endpoints(service: &str, eps: &[(&str, bool)]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-x1"), "namespace": "shop", "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps.iter().map(|(pod, ready)| json!({
            "addresses": ["10.244.1.9"], "conditions": {"ready": ready},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn export(name: &str) -> ServiceExport {
    let mut e = ServiceExport::new(name, Default::default());
    e.metadata.namespace = Some("shop".into());
    e
}

fn allocations() -> Vec<NodeAllocation> {
    vec![
        NodeAllocation { node: "n1".into(), prefix: "10.80.16.0/26".into() },
        NodeAllocation { node: "n2".into(), prefix: "10.80.16.64/26".into() },
    ]
}

fn resolve(
    exports: &[ServiceExport],
    services: &[Service],
    slices: &[EndpointSlice],
    pods: &[Pod],
) -> (Vec<ExportVerdict>, BTreeMap<String, Vec<ExportedService>>) {
    let ns = vec!["shop".to_owned()];
    let alloc = allocations();
    let members = [SliceMembers { slice: "blue", namespaces: &ns, allocations: &alloc, secondary: &[] }];
    let sources = ExportSources { exports, services, endpoint_slices: slices, pods };
    resolve_exports(&members, sources, "2027-01-01T00:00:00Z")
}

#[test]
fn ready_endpoints_become_slice_addresses_with_hostnames() {
    let mut web1 = pod("web-1", "n1", Some("10.80.16.5"));
    web1.spec.as_mut().unwrap().hostname = Some("db-0".into());
    let pods = [web1, pod("web-2", "n2", Some("10.80.16.70")), pod("web-3", "n1", Some("10.80.16.6"))];
    let eps = endpoints("web", &[("web-1", true), ("web-2", true), ("web-3", false)]);
    let (verdicts, out) = resolve(&[export("web")], &[service("web", "ClusterIP", "10.96.0.9")], &[eps], &pods);
    assert_eq!(verdicts[0].valid, Ok(()));
    let e = &out["blue"][0];
    assert_eq!(e.type_, ServiceImportType::ClusterSetIP);
    assert_eq!(e.ports[0].port, 80);
    assert_eq!(e.endpoints.len(), 1);
    assert_eq!(e.endpoints[0].ports[0].port, 8080, "endpoint groups carry the target port");
    let got: Vec<(&str, Option<&str>)> =
        e.endpoints[0].endpoints.iter().map(|x| (x.address.as_str(), x.hostname.as_deref())).collect();
    assert_eq!(got, [("10.80.16.5", Some("db-0")), ("10.80.16.70", Some("web-2"))], "unready web-3 is left out");
}

#[test]
fn forged_and_duplicate_addresses_are_not_endpoints() {
    // web-1 claims an address of n2's prefix while on n1; web-2 and web-3 claim the same one;
    // web-4 has no slice interface.
    let pods = [
        pod("web-1", "n1", Some("10.80.16.70")),
        pod("web-2", "n2", Some("10.80.16.71")),
        pod("web-3", "n2", Some("10.80.16.71")),
        pod("web-4", "n1", None),
        pod("web-5", "n1", Some("10.80.16.9")),
    ];
    let eps = endpoints("web", &[("web-1", true), ("web-2", true), ("web-4", true), ("web-5", true)]);
    let (verdicts, out) = resolve(&[export("web")], &[service("web", "ClusterIP", "10.96.0.9")], &[eps], &pods);
    let addrs: Vec<&str> = out["blue"][0].endpoints[0].endpoints.iter().map(|e| e.address.as_str()).collect();
    assert_eq!(addrs, ["10.80.16.9"]);
    let notes = verdicts[0].notes.join("\n");
    assert!(notes.contains("web-1 claims a slice address outside its node n1's prefix"), "{notes}");
    assert!(notes.contains("10.80.16.71 is claimed by pods web-2, web-3"), "{notes}");
    assert!(notes.contains("web-4 has no slice interface"), "{notes}");
}

#[test]
fn invalid_exports_get_the_mcs_reasons() {
    let mut other = export("x");
    other.metadata.namespace = Some("elsewhere".into());
    let (verdicts, out) =
        resolve(&[export("ext"), export("missing"), other], &[service("ext", "ExternalName", "")], &[], &[]);
    let reasons: Vec<&str> = verdicts.iter().map(|v| v.valid.as_ref().unwrap_err().0).collect();
    assert_eq!(reasons, [reason::NO_SLICE, reason::INVALID_SERVICE_TYPE, reason::NO_SERVICE]);
    assert!(out.is_empty());
    let c = export_conditions(&[], &verdicts[1], &[], "c2", "2027-01-01T00:00:00Z");
    let valid = slice_api::crd::condition(&c, mcs::VALID).unwrap();
    assert_eq!((valid.status.as_str(), valid.reason.as_str()), ("False", reason::INVALID_SERVICE_TYPE));
    assert_eq!(slice_api::crd::condition(&c, mcs::EXPORT_READY).unwrap().status, "False");
}

fn imported(conflict: Option<ExportConflict>) -> ImportedService {
    let port = |name: &str, n: u16| ServicePort {
        name: Some(name.into()),
        protocol: "TCP".into(),
        app_protocol: None,
        port: n,
    };
    ImportedService {
        namespace: "shop".into(),
        name: "web".into(),
        type_: ServiceImportType::ClusterSetIP,
        ips: vec!["10.80.255.1".into()],
        ports: vec![port("http", 80), port("admin", 9000)],
        session_affinity: None,
        clusters: vec![
            ImportedCluster {
                cluster: "c1".into(),
                endpoints: vec![EndpointGroup {
                    ports: vec![port("http", 8080)],
                    endpoints: vec![SliceEndpoint { address: "10.80.0.5".into(), hostname: Some("a".into()) }],
                }],
            },
            ImportedCluster {
                cluster: "c2".into(),
                endpoints: vec![EndpointGroup {
                    ports: vec![port("admin", 9090), port("http", 8081)],
                    endpoints: vec![SliceEndpoint { address: "10.80.16.5".into(), hostname: None }],
                }],
            },
        ],
        conflict,
    }
}

#[test]
fn conditions_follow_the_hubs_imports() {
    let v = ExportVerdict {
        namespace: "shop".into(),
        name: "web".into(),
        slice: Some("blue".into()),
        valid: Ok(()),
        notes: vec![],
    };
    let pending = export_conditions(&[], &v, &[], "c2", "2027-01-01T00:00:00Z");
    assert_eq!(slice_api::crd::condition(&pending, mcs::EXPORT_READY).unwrap().reason, reason::PENDING);
    let conflict = ExportConflict { reason: reason::PORT_CONFLICT.into(), message: "ports differ".into() };
    let c = export_conditions(&pending, &v, &[imported(Some(conflict))], "c2", "2027-01-01T00:00:05Z");
    assert_eq!(slice_api::crd::condition(&c, mcs::EXPORT_READY).unwrap().reason, reason::EXPORTED);
    let k = slice_api::crd::condition(&c, mcs::CONFLICT).unwrap();
    assert_eq!((k.status.as_str(), k.reason.as_str()), ("True", reason::PORT_CONFLICT));
    // The same verdict and imports again change nothing (so nothing is written).
    let conflict = ExportConflict { reason: reason::PORT_CONFLICT.into(), message: "ports differ".into() };
    assert_eq!(export_conditions(&c, &v, &[imported(Some(conflict))], "c2", "2027-01-01T00:01:00Z"), c);
}

#[test]
fn imports_become_a_service_import_and_one_endpoint_slice_per_cluster() {
    let (si, status, slices) = import_objects("blue", &imported(None), McsVersion::V1alpha1);
    assert_eq!(si["spec"]["ips"], json!(["10.80.255.1"]));
    assert_eq!(si["spec"]["type"], "ClusterSetIP");
    assert_eq!(status, json!({"clusters": [{"cluster": "c1"}, {"cluster": "c2"}]}));
    assert_eq!(slices.len(), 2);
    let c1 = &slices[0];
    assert_eq!(c1["metadata"]["labels"][mcs::SERVICE_NAME_LABEL], "web");
    assert_eq!(c1["metadata"]["labels"][mcs::SOURCE_CLUSTER_LABEL], "c1");
    assert_eq!(c1["metadata"]["labels"][mcs::MANAGED_BY_LABEL], mcs::MANAGED_BY);
    assert!(c1["metadata"]["labels"].get(SERVICE_NAME_LABEL).is_none(), "kube-proxy must not take it");
    assert_eq!(c1["endpoints"][0], json!({"addresses": ["10.80.0.5"], "conditions": {"ready": true}, "hostname": "a"}));
    assert_eq!(c1["ports"], json!([{"name": "http", "port": 8080, "protocol": "TCP"}]));
    assert!(endpoint_slice_name(&"s".repeat(60), "cluster", 0, "v4").len() <= 63);
}

#[test]
fn cluster_set_rules_match_target_ports_by_name() {
    let rules = cluster_set_services(&[imported(None)]);
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].name, "shop/web");
    let by_port: Vec<(u16, Vec<String>)> =
        rules[0].ports.iter().map(|r| (r.port, r.backends.iter().map(ToString::to_string).collect())).collect();
    assert_eq!(
        by_port,
        [
            (80, vec!["10.80.0.5:8080".to_owned(), "10.80.16.5:8081".to_owned()]),
            (9000, vec!["10.80.16.5:9090".to_owned()])
        ]
    );
    let mut headless = imported(None);
    headless.type_ = ServiceImportType::Headless;
    assert!(cluster_set_services(&[headless]).is_empty());
}
