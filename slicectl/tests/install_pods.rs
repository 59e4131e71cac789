//! Issue 20, high 3: the pods that `slicectl install worker` prints, and the gateway pods the
//! worker creates for two slices, run through a lab node's containerd CRI and the real CNI chain
//! (Debian's bridge, then slice-cni) with two slices on the node. None of slicenet's own pods is
//! swept into a slice (no error 103 "claimed by slices …", no `slice0`); each gateway pod joins
//! exactly the slice its Deployment names; an unannotated pod in the gateways' namespace joins
//! none. Root only: fails, does not skip, without it. Its lab prefix is "ip".

mod common;
use common::KUBECONFIG;

use std::collections::BTreeMap;

use e2e::{Lab, LabSlice, PodSpec};
use serde_json::{Value, json};
use slice_api::crd::WorkerSliceSpec;
use slice_api::names::{GATEWAY_NAMESPACE, SYSTEM_NAMESPACE};
use slice_operator::worker::objects::{
    GatewayDefaults, NodeDefaults, PlannedSlice, gateway_statefulset, node_agent_configs,
};
use slice_operator::worker::plan;
use slicectl::install::{self, Options};

/// A pod as a workload's template makes it: namespace, name, template annotations.
struct TemplatePod {
    namespace: String,
    name: String,
    annotations: BTreeMap<String, String>,
}

/// The pod templates of the Deployments and DaemonSets in `docs` that use the pod network
/// (host-network pods never reach a CNI plugin).
fn pod_network_templates(docs: &[Value]) -> Vec<TemplatePod> {
    docs.iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "DaemonSet" | "StatefulSet")))
        .filter(|d| d["spec"]["template"]["spec"]["hostNetwork"] != json!(true))
        .map(|d| TemplatePod {
            namespace: d["metadata"]["namespace"].as_str().expect("namespaced").to_owned(),
            name: d["metadata"]["name"].as_str().expect("named").to_owned(),
            annotations: serde_json::from_value(d["spec"]["template"]["metadata"]["annotations"].clone())
                .unwrap_or_default(),
        })
        .collect()
}

fn worker_slice(slice: &str, vni: u32, subnet: &str, namespace: &str) -> WorkerSliceSpec {
    serde_json::from_value(json!({
        "slice": slice, "cluster": "c1", "sliceSubnet": subnet, "clusterPrefix": subnet,
        "nodePrefixLength": 26, "vni": vni, "namespaces": [namespace],
    }))
    .expect("a WorkerSlice spec")
}

#[test]
fn slicenet_pods_join_no_slice_and_gateways_join_their_own_with_two_slices() {
    let options = Options::generate("slicenet:test").expect("options");
    let printed = install::worker(&options, "c1", KUBECONFIG, None).expect("install worker");
    let yaml = printed.to_yaml().expect("YAML");
    let docs: Vec<Value> = slicectl::manifest::parse_documents(&yaml)
        .expect("parses")
        .into_iter()
        .map(|d| serde_json::to_value(d).expect("JSON"))
        .collect();
    let system = pod_network_templates(&docs);
    assert!(
        system.iter().any(|p| p.name.contains("webhook")) && system.iter().any(|p| p.name.contains("worker")),
        "the webhook and the worker run on the pod network: {:?}",
        system.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    assert!(system.iter().all(|p| p.namespace == SYSTEM_NAMESPACE));
    let slices = [("blue", 100, "10.80.0.0/16", "shop"), ("red", 200, "10.90.0.0/16", "bank")];
    let gateways: Vec<Value> = slices
        .iter()
        .map(|(s, vni, subnet, ns)| {
            gateway_statefulset(&worker_slice(s, *vni, subnet, ns), &GatewayDefaults::default())
        })
        .collect();
    let gateway_pods = pod_network_templates(&gateways);
    assert_eq!(gateway_pods.len(), 2);

    let mut lab = Lab::new("ip").expect("lab (needs root; build the bins first)");
    lab.add_cluster("c1", 1).expect("cluster c1");
    let lab_slices: Vec<LabSlice> =
        slices.iter().map(|(s, vni, subnet, ns)| LabSlice::new(s, *vni, subnet, &[ns])).collect();
    // The node's configuration: the lab's paths and prefixes, with membership exactly as the
    // worker plans it for these WorkerSlices (member namespaces and the gateway namespace).
    let mut config = lab.cluster("c1").agent_configs(&lab_slices).expect("configs").remove(0);
    let planned: Vec<PlannedSlice> = slices
        .iter()
        .map(|(s, vni, subnet, ns)| {
            let spec = worker_slice(s, *vni, subnet, ns);
            let typed = plan::TypedSpec::parse(&spec).expect("a valid spec");
            let allocations = plan::allocate_node_prefixes(&typed, &[config.node.clone()], &[]).expect("prefix");
            PlannedSlice {
                typed,
                allocations,
                namespaces: vec![(*ns).to_owned()],
                gateways: plan::GatewayAddresses::default(),
                secondary_allocations: Vec::new(),
            }
        })
        .collect();
    let by_worker = node_agent_configs(
        &planned,
        &[plan::ClusterNode::new(config.node.clone(), config.underlay_address)],
        &NodeDefaults::default(),
    )
    .expect("the worker's node configuration");
    for slice in &mut config.slices {
        let planned = by_worker[0].slices.iter().find(|p| p.name == slice.name).expect("planned by the worker");
        slice.namespaces.clone_from(&planned.namespaces);
        slice.gateway_namespace.clone_from(&planned.gateway_namespace);
    }
    let node = lab.node("c1", "n1");
    node.start_agent(&config).expect("agent");
    for s in &lab_slices {
        node.wait_slice_ready(&s.name, std::time::Duration::from_secs(60)).expect("slice ready");
    }

    let run = |p: &TemplatePod, name: &str| {
        let mut spec = PodSpec::new(&p.namespace, name);
        for (k, v) in &p.annotations {
            spec = spec.annotation(k, v);
        }
        node.run_pod(spec).unwrap_or_else(|e| panic!("{}/{name} through the CNI chain: {e:#}", p.namespace))
    };
    for p in &system {
        let pod = run(p, &p.name);
        assert!(pod.ipv4("eth0").is_ok(), "{} has its primary interface", p.name);
        assert!(pod.ipv4("slice0").is_err(), "{}/{} joined a slice", p.namespace, p.name);
    }
    for (p, (slice, _, subnet, _)) in gateway_pods.iter().zip(&slices) {
        assert_eq!(p.namespace, GATEWAY_NAMESPACE);
        let pod = run(p, &p.name);
        let addr = pod.ipv4("slice0").unwrap_or_else(|e| panic!("gateway of {slice} has no slice0: {e:#}"));
        let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
        assert!(subnet.contains(&addr), "gateway of {slice} got {addr}, outside {subnet}");
    }
    let stray = run(
        &TemplatePod { namespace: GATEWAY_NAMESPACE.into(), name: String::new(), annotations: BTreeMap::new() },
        "stray",
    );
    assert!(stray.ipv4("slice0").is_err(), "an unannotated pod in {GATEWAY_NAMESPACE} joined a slice");
    lab.teardown().expect("teardown");
}
