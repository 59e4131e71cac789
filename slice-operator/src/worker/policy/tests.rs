//! Policies, the pod report and the node directory on objects built in memory.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde_json::json;
use slice_api::crd::NodeAllocation;

use super::*;

fn mnp(namespace: &str, name: &str, policy_for: Option<&str>, spec: serde_json::Value) -> DynamicObject {
    let mut meta = json!({"name": name, "namespace": namespace, "uid": format!("uid-{name}")});
    if let Some(v) = policy_for {
        meta["annotations"] = json!({ policy::POLICY_FOR_ANNOTATION: v });
    }
    serde_json::from_value(json!({"apiVersion": policy::API_VERSION, "kind": policy::KIND, "metadata": meta,
        "spec": spec}))
    .unwrap()
}

#[test]
fn policies_are_those_for_the_slice_in_member_namespaces_and_bad_ones_are_reported() {
    let deny = json!({"podSelector": {}});
    let mnps = [
        mnp("shop", "deny", Some("slice-blue"), deny.clone()),
        mnp("shop", "other-net", Some("slice-red"), deny.clone()),
        mnp("shop", "no-annotation", None, deny.clone()),
        mnp("outside", "deny", Some("slice-blue"), deny.clone()),
        mnp(
            "shop",
            "bad-op",
            Some("shop/slice-blue"),
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}}),
        ),
        mnp("shop", "unparsable", Some("slice-blue"), json!({"podSelector": {}, "ingres": []})),
    ];
    let ns = vec!["shop".to_owned()];
    let (policies, rejected) = slice_policies(&mnps, "blue", &ns, &[]);
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    // The one that does not compile goes to the agents (they keep their previous table); the
    // unparsable one, new, is not applied at all.
    assert_eq!(names, ["bad-op", "deny"]);
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0].name, "bad-op");
    assert!(rejected[0].reason.contains("\"Equals\" is none of"), "{:?}", rejected[0]);
    assert_eq!(rejected[0].uid.as_deref(), Some("uid-bad-op"));
    assert!(rejected[1].reason.contains("does not parse") && rejected[1].reason.contains("not applied"));
    // An unparsable change of a policy the agents have keeps its previous version.
    let before = SlicePolicy { namespace: "shop".into(), name: "unparsable".into(), spec: Default::default() };
    let (policies, rejected) = slice_policies(&mnps, "blue", &ns, std::slice::from_ref(&before));
    assert!(policies.contains(&before));
    assert!(rejected[1].reason.contains("its previous version stays"));
    let c = policies_condition(3, &rejected);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "PolicyRejected"));
    assert!(c.message.contains("shop/bad-op: "), "{}", c.message);
    assert_eq!(policies_condition(2, &[]).status, "True");
}

fn pod(name: &str, node: &str, ip: &str, labels: serde_json::Value) -> Pod {
    pod_with(name, node, &[ip], labels)
}

/// A running pod of `shop` on `node` whose slice interface has `ips`.
fn pod_with(name: &str, node: &str, ips: &[&str], labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "labels": labels,
        "annotations": {"k8s.v1.cni.cncf.io/network-status": json!([
            {"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.9"]},
            {"name": "shop/slice-blue", "interface": "slice0", "ips": ips}]).to_string()}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080}, {"containerPort": 9}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        "status": {"phase": "Running"}}))
    .unwrap()
}

#[test]
fn the_report_groups_checked_addresses() {
    let allocations = vec![
        NodeAllocation { node: "n1".into(), prefix: "10.80.16.0/26".into() },
        NodeAllocation { node: "n2".into(), prefix: "10.80.16.64/26".into() },
    ];
    let namespaces = vec!["shop".to_owned()];
    let members = SliceMembers { slice: "blue", namespaces: &namespaces, allocations: &allocations, secondary: &[] };
    let web = json!({"app": "web"});
    let pods = [
        pod("web-1", "n1", "10.80.16.2", web.clone()),
        pod("web-2", "n2", "10.80.16.66", web.clone()),
        pod("db", "n1", "10.80.16.3", json!({"app": "db"})),
        pod("liar", "n1", "10.80.16.70", web.clone()), // outside its node's prefix
        pod("router", "n1", "10.80.16.1", web.clone()), // the router's address
        pod("twin-a", "n2", "10.80.16.67", web.clone()), // two pods claim one address
        pod("twin-b", "n2", "10.80.16.67", web.clone()),
    ];
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop", "labels": {"team": "a"}}})).unwrap();
    let (groups, notes) = pod_report(&pods, &[ns], &members);
    assert_eq!(groups.len(), 2, "{groups:?}");
    let web_group = groups.iter().find(|g| g.labels.get("app").map(String::as_str) == Some("web")).unwrap();
    assert_eq!(web_group.addresses, ["10.80.16.2".parse::<IpAddr>().unwrap(), "10.80.16.66".parse().unwrap()]);
    assert_eq!(web_group.namespace_labels.get("team").map(String::as_str), Some("a"));
    let ports: Vec<(&str, u16, &str)> =
        web_group.ports.iter().map(|p| (p.name.as_str(), p.port, p.protocol.as_str())).collect();
    assert_eq!(ports, [("dns", 53, "UDP"), ("http", 8080, "TCP")]);
    assert!(notes.iter().any(|n| n.contains("slice-router address 10.80.16.1")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("10.80.16.67 is claimed by more than one pod")), "{notes:?}");
}

#[test]
fn a_dual_stack_report_lists_both_addresses_of_each_pod() {
    let allocations = vec![NodeAllocation { node: "n1".into(), prefix: "10.80.16.0/26".into() }];
    let secondary = vec![NodeAllocation { node: "n1".into(), prefix: "fd00:80:0:1000::/120".into() }];
    let namespaces = vec!["shop".to_owned()];
    let members =
        SliceMembers { slice: "blue", namespaces: &namespaces, allocations: &allocations, secondary: &secondary };
    let web = json!({"app": "web"});
    let pods = [
        pod_with("web-1", "n1", &["10.80.16.2", "fd00:80:0:1000::2"], web.clone()),
        // An IPv6 address outside its node's prefix is not the pod's: its IPv4 one stays.
        pod_with("web-2", "n1", &["10.80.16.3", "fd00:80:0:2000::3"], web.clone()),
        // The router's IPv6 address: the pod is left out.
        pod_with("odd", "n1", &["10.80.16.4", "fd00:80:0:1000::1"], web.clone()),
    ];
    let (groups, notes) = pod_report(&pods, &[], &members);
    let addrs: Vec<String> = groups[0].addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["10.80.16.2", "10.80.16.3", "fd00:80:0:1000::2"], "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("slice-router address fd00:80:0:1000::1")), "{notes:?}");
    // The node directory keeps both families: this cluster's own, and the others' of neither
    // of this cluster's prefixes.
    let families: Vec<(IpNet, IpNet)> = vec![
        ("10.80.0.0/16".parse().unwrap(), "10.80.16.0/20".parse().unwrap()),
        ("fd00:80::/48".parse().unwrap(), "fd00:80:0:1000::/52".parse().unwrap()),
    ];
    let g = |addresses: &[&str]| -> PodGroup {
        serde_json::from_value(json!({"namespace": "shop", "labels": {"app": "x"}, "addresses": addresses})).unwrap()
    };
    let dir = node_directory(&groups, &[g(&["10.80.0.2", "fd00:80::2", "fd00:80:0:1000::9"])], &families);
    assert_eq!(dir[0], groups[0]);
    assert_eq!(dir[1], g(&["10.80.0.2", "fd00:80::2"]));
}

#[test]
fn the_node_directory_takes_own_pods_here_and_others_elsewhere_once() {
    let g = |app: &str, addresses: &[&str]| -> PodGroup {
        serde_json::from_value(json!({"namespace": "shop", "labels": {"app": app}, "addresses": addresses})).unwrap()
    };
    let own = [g("a", &["10.80.16.2"])];
    // The hub's groups: one claims an address of this cluster, one repeats another's.
    let others = [g("b", &["10.80.0.2", "10.80.16.9"]), g("c", &["10.80.0.2", "10.80.32.5"]), g("d", &["10.81.0.1"])];
    let dir = node_directory(&own, &others, &[("10.80.0.0/16".parse().unwrap(), "10.80.16.0/20".parse().unwrap())]);
    assert_eq!(dir, vec![g("a", &["10.80.16.2"]), g("b", &["10.80.0.2"]), g("c", &["10.80.32.5"])]);
}

#[test]
fn the_isolation_policy_admits_only_the_listed_namespaces() {
    let v = isolation_policy("blue", "shop", &["shop".to_owned(), "monitoring".to_owned()]);
    assert_eq!(v["metadata"]["name"], "slicenet-isolation-blue");
    assert_eq!(v["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(v["spec"]["podSelector"], json!({}));
    assert_eq!(v["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        v["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchExpressions"][0],
        json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop", "monitoring"]})
    );
    // It parses as a NetworkPolicy.
    serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(v).unwrap();
}
