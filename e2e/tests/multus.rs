//! The Multus path in the lab. There is no Multus here (LAB-FACTS.md), so these tests do what
//! Multus does with a delegate: take the `NetworkAttachmentDefinition` the worker generates
//! (`slice_api::multus`), parse its `spec.config`, and run `slice-cni` with it on stdin and the
//! `CNI_*` environment Multus sets (`CNI_IFNAME` `net1` by default or `slice0` when requested,
//! `CNI_ARGS` with the `K8S_POD_*` keys in any order), against pods created through the node's
//! containerd CRI whose conflist is the plain primary CNI, as in a Multus cluster.
//!
//! Also the chained mode's network-status record for a pod created through CRI.
//! Every lab here uses a prefix starting with "mu". Needs root; fails (does not skip) without it.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{Lab, LabOptions, LabSlice, Node, Pod, PodSpec};
use serde_json::{Value, json};
use slice_api::multus::{NetworkAttachmentDefinition, nad_name};

const READY: Duration = Duration::from_secs(30);

fn blue() -> LabSlice {
    LabSlice::new("blue", 100, "10.80.0.0/16", &["shop"])
}

/// The delegate config exactly as Multus gets it: the NAD as the worker builds it, through JSON
/// (as stored by the API server), `spec.config` parsed. It names no path: the node's come from
/// the environment ([`delegate`]).
fn delegate_config(namespace: &str) -> Value {
    let nad = NetworkAttachmentDefinition::for_slice("blue", namespace);
    let stored = serde_json::to_string(&nad).unwrap();
    let fetched: NetworkAttachmentDefinition = serde_json::from_str(&stored).unwrap();
    assert_eq!(fetched.metadata.name, nad_name("blue"));
    assert_eq!(fetched.metadata.namespace, namespace);
    let config = fetched.delegate_config().expect("spec.config is JSON");
    assert_eq!(config["type"], "slice-cni");
    assert_eq!(config["slice"], "blue");
    for key in ["stateDir", "ipamDir", "statusDir", "logFile"] {
        assert!(config.get(key).is_none(), "the NAD names {key}: {config}");
    }
    config
}

/// `K8S_POD_*` in a different order for each call (the runtime's order is not fixed).
fn cni_args(pod: &Pod, rotation: usize) -> String {
    let mut pairs = [
        "IgnoreUnknown=1".to_owned(),
        format!("K8S_POD_NAMESPACE={}", pod.namespace),
        format!("K8S_POD_NAME={}", pod.name),
        format!("K8S_POD_INFRA_CONTAINER_ID={}", pod.sandbox_id),
        format!("K8S_POD_UID={}", pod.uid),
    ];
    let n = pairs.len();
    pairs.rotate_left(rotation % n);
    if rotation % 2 == 1 {
        pairs.reverse();
    }
    pairs.join(";")
}

/// Runs `slice-cni` as Multus runs a delegate; returns (success, stdout JSON or Null).
fn delegate(
    node: &Node,
    command: &str,
    pod: &Pod,
    netns: &str,
    ifname: &str,
    config: &Value,
    rotation: usize,
) -> (bool, Value) {
    let plugin = e2e::bin_dir().join("slice-cni");
    let mut child = Command::new(&plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.sandbox_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", cni_args(pod, rotation))
        .env("CNI_PATH", plugin.parent().unwrap())
        // The node's paths, from the environment Multus inherits from the runtime.
        .env("SLICENET_STATE_DIR", node.state_dir())
        .env("SLICENET_IPAM_DIR", node.ipam_dir())
        .env("SLICENET_CNI_LOG_FILE", node.dir().join("slice-cni-delegate.log"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (build the bins first)", plugin.display()));
    if let Err(e) = child.stdin.take().unwrap().write_all(config.to_string().as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).expect("JSON") };
    (out.status.success(), json)
}

fn netns(pod: &Pod) -> String {
    pod.netns_path.display().to_string()
}

fn links(pod: &Pod) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(&pod.exec_ok(&["ip", "-j", "link", "show"]).unwrap()).unwrap();
    v.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_owned)).collect()
}

fn pings(from: &Pod, to: Ipv4Addr) -> bool {
    from.exec(&["ping", "-n", "-q", "-c", "2", "-W", "2", &to.to_string()]).unwrap().status.success()
}

fn ipam_files(node: &Node) -> BTreeSet<String> {
    std::fs::read_dir(node.ipam_dir().join("blue"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect())
        .unwrap_or_default()
}

fn router_veths(node: &Node) -> BTreeSet<String> {
    let ns = format!("{}blue", node.router_netns_prefix());
    let out = Command::new("ip").args(["-n", &ns, "-j", "link", "show"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("sn"))
        .map(str::to_owned)
        .collect()
}

/// What Multus reads from a delegate's result for `network-status`: the interface named
/// `ifname` inside the sandbox, and the addresses that point at it. Returns that address.
fn multus_view(result: &Value, ifname: &str, netns: &str) -> IpAddr {
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 1, "a delegate reports its own interface only: {result}");
    assert_eq!(interfaces[0]["name"], ifname, "{result}");
    assert_eq!(interfaces[0]["sandbox"], netns, "{result}");
    assert!(interfaces[0]["mac"].as_str().is_some_and(|m| m.len() == 17), "{result}");
    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{result}");
    assert_eq!(ips[0]["interface"], 0, "{result}");
    let addr = ips[0]["address"].as_str().unwrap();
    assert!(addr.ends_with("/32"), "{addr}");
    addr.trim_end_matches("/32").parse().unwrap()
}

/// Two nodes without `slice-cni` in their conflist (the Multus setup): `slice-cni` run as the
/// delegate of the worker's NAD gives one pod `net1` (Multus's default name) and another
/// `slice0` (requested by the webhook's `@slice0`); the slice works between them across nodes;
/// a pod of a non-member namespace is refused; DEL (with and without a netns) leaves nothing.
#[test]
fn slice_cni_as_a_multus_delegate() {
    let mut lab = Lab::with_options("mu1x", LabOptions::without_slice_cni()).expect("lab (root; bins built)");
    lab.add_cluster("c1", 2).expect("cluster");
    lab.cluster("c1").start_agents(&[blue()]).expect("agents");
    let (n1, n2) = (lab.node("c1", "n1"), lab.node("c1", "n2"));
    let state1 = n1.wait_slice_ready("blue", READY).unwrap();
    let state2 = n2.wait_slice_ready("blue", READY).unwrap();

    let web = n1.run_pod(PodSpec::new("shop", "web")).unwrap();
    let api = n2.run_pod(PodSpec::new("shop", "api")).unwrap();
    assert_eq!(links(&web), BTreeSet::from(["lo".into(), "eth0".into()]), "no slice without Multus");

    let (ok, result) = delegate(n1, "ADD", &web, &netns(&web), "net1", &delegate_config("shop"), 0);
    assert!(ok, "ADD net1: {result}");
    assert_eq!(result["cniVersion"], "1.0.0");
    let web_ip = multus_view(&result, "net1", &netns(&web));
    assert!(state1.node_prefix.contains(&web_ip), "{web_ip} not in {}", state1.node_prefix);
    assert_eq!(result["routes"], json!([{"dst": "10.80.0.0/16", "gw": state1.router_address.to_string()}]));

    let (ok, result) = delegate(n2, "ADD", &api, &netns(&api), "slice0", &delegate_config("shop"), 1);
    assert!(ok, "ADD slice0: {result}");
    let api_ip = multus_view(&result, "slice0", &netns(&api));
    assert!(state2.node_prefix.contains(&api_ip));

    // The interfaces carry the addresses the results report, under the requested names.
    assert_eq!(links(&web), BTreeSet::from(["lo".into(), "eth0".into(), "net1".into()]));
    assert_eq!(links(&api), BTreeSet::from(["lo".into(), "eth0".into(), "slice0".into()]));
    assert_eq!(IpAddr::V4(web.ipv4("net1").unwrap()), web_ip);
    assert_eq!(IpAddr::V4(api.ipv4("slice0").unwrap()), api_ip);
    let (IpAddr::V4(web_v4), IpAddr::V4(api_v4)) = (web_ip, api_ip) else { panic!("IPv4 slice") };
    assert!(pings(&web, api_v4), "net1 → slice0 across nodes");
    assert!(pings(&api, web_v4), "slice0 → net1 across nodes");

    // CHECK as a runtime may call it.
    let (ok, out) = delegate(n1, "CHECK", &web, &netns(&web), "net1", &delegate_config("shop"), 2);
    assert!(ok, "CHECK: {out}");

    // A namespace that is not a member: refused with 101, nothing allocated.
    let teller = n1.run_pod(PodSpec::new("bank", "teller")).unwrap();
    let (ok, err) = delegate(n1, "ADD", &teller, &netns(&teller), "net1", &delegate_config("bank"), 3);
    assert!(!ok);
    assert_eq!(err["code"], 101, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("namespace bank is not a member of slice blue"), "{err}");
    assert_eq!(links(&teller), BTreeSet::from(["lo".into(), "eth0".into()]));
    assert_eq!(ipam_files(n1), BTreeSet::from([web_ip.to_string()]));
    // Multus calls DEL after a failed ADD: fine.
    assert!(delegate(n1, "DEL", &teller, &netns(&teller), "net1", &delegate_config("bank"), 4).0);

    // DEL with the netns, then again without (the pod's namespace already gone), as runtimes do.
    for (pod, node, ifname) in [(&web, n1, "net1"), (&api, n2, "slice0")] {
        let config = delegate_config("shop");
        let (ok, out) = delegate(node, "DEL", pod, &netns(pod), ifname, &config, 0);
        assert!(ok, "DEL: {out}");
        assert!(!links(pod).contains(ifname), "{ifname} left in {}", pod.lab_name());
        let (ok, out) = delegate(node, "DEL", pod, "", ifname, &config, 1);
        assert!(ok, "second DEL without netns: {out}");
        assert_eq!(ipam_files(node), BTreeSet::new(), "IPAM files left on {}", node.netns_name());
        assert_eq!(router_veths(node), BTreeSet::new(), "host ends left on {}", node.netns_name());
    }
    for (pod, node) in [(&web, n1), (&api, n2), (&teller, n1)] {
        node.remove_pod(pod).unwrap();
    }
    lab.teardown().unwrap();
}

/// Chained mode (no Multus): `slice-cni` records the pod's network-status entry under the
/// node's `network-status` dir (next to its IPAM dir), with the slice address the pod has; the
/// record goes away with the pod.
#[test]
fn chained_mode_records_network_status_for_the_pod() {
    let mut lab = Lab::new("mu2x").expect("lab (root; bins built)");
    lab.add_cluster("c1", 1).expect("cluster");
    lab.cluster("c1").start_agents(&[blue()]).expect("agents");
    let node = lab.node("c1", "n1");
    node.wait_slice_ready("blue", READY).unwrap();
    let web = node.run_pod(PodSpec::new("shop", "web")).unwrap();
    let other = node.run_pod(PodSpec::new("bank", "teller")).unwrap();
    let status_dir: PathBuf = node.dir().join("network-status");
    let record_path = status_dir.join(format!("{}.json", web.sandbox_id));
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    let addr = web.ipv4("slice0").unwrap();
    let mac = {
        let v: Value = serde_json::from_str(&web.exec_ok(&["ip", "-j", "link", "show", "slice0"]).unwrap()).unwrap();
        v[0]["address"].as_str().unwrap().to_owned()
    };
    assert_eq!(record["containerID"], web.sandbox_id.as_str());
    assert_eq!(record["network"], "lab");
    assert_eq!((record["namespace"].as_str(), record["pod"].as_str()), (Some("shop"), Some("web")));
    assert_eq!(record["podUid"], web.uid.as_str());
    assert_eq!(
        record["networkStatus"],
        json!([{"name": "shop/slice-blue", "interface": "slice0", "ips": [addr.to_string()], "mac": mac, "dns": {}}])
    );
    assert!(!status_dir.join(format!("{}.json", other.sandbox_id)).exists(), "non-member pod recorded");
    node.remove_pod(&web).unwrap();
    assert!(!Path::new(&record_path).exists(), "record outlived the pod");
    node.remove_pod(&other).unwrap();
    lab.teardown().unwrap();
}
