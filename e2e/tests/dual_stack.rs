//! Dual-stack and IPv6-only slices through the real kubelet path (issue 17): pods are CRI
//! sandboxes made by each node's containerd running `bridge` + `host-local` → `slice-cni`, node
//! agents are real `slice-operator node-agent` processes. Each test builds its own 1-cluster
//! 2-node lab (prefixes `hv6`, `hw6`). Needs root; fails (does not skip) without it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{Lab, LabSlice, Node, Pod, PodSpec};
use serde_json::Value;
use slice_api::NodeState;

const READY: Duration = Duration::from_secs(30);

fn two_node_lab(prefix: &str, slice: &LabSlice) -> Lab {
    let mut lab = Lab::new(prefix).expect("lab (needs root; build the bins first)");
    lab.add_cluster("c1", 2).expect("cluster c1");
    lab.cluster("c1").start_agents(std::slice::from_ref(slice)).expect("start agents");
    for node in lab.cluster("c1").nodes() {
        node.wait_slice_ready(&slice.name, READY).expect("slice ready");
    }
    lab
}

/// The pod's addresses on `slice0`, IPv4 first.
fn slice_addrs(pod: &Pod) -> Vec<IpAddr> {
    pod.ips("slice0").unwrap()
}

/// `ip [-6] -n <router> -j ARGS…` in the router namespace of `slice` on `node`, parsed.
fn router_ip_json(node: &Node, slice: &str, v6: bool, args: &[&str]) -> Value {
    let ns = format!("{}{slice}", node.router_netns_prefix());
    let mut cmd = Command::new("ip");
    if v6 {
        cmd.arg("-6");
    }
    let out = cmd.args(["-n", &ns, "-j"]).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() { Value::Array(Vec::new()) } else { serde_json::from_str(&text).unwrap() }
}

/// Host routes (`/32`, `/128`: `ip` prints them without a length) in the router namespace that
/// lead to a pod-facing veth, both families.
fn router_pod_routes(node: &Node, slice: &str) -> BTreeSet<String> {
    [false, true]
        .into_iter()
        .flat_map(|v6| router_ip_json(node, slice, v6, &["route", "show"]).as_array().unwrap().clone())
        .filter(|r| r["dev"].as_str().is_some_and(|d| d.starts_with("sn")))
        .filter_map(|r| r["dst"].as_str().filter(|d| !d.contains('/')).map(str::to_owned))
        .collect()
}

/// Pod-facing host ends in the router namespace.
fn router_veths(node: &Node, slice: &str) -> BTreeSet<String> {
    let v = router_ip_json(node, slice, false, &["link", "show"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().filter(|n| n.starts_with("sn")).map(str::to_owned))
        .collect()
}

/// Addresses allocated by `slice-cni` on `node` for `slice` (file names under the IPAM dir).
fn ipam_files(node: &Node, slice: &str) -> BTreeSet<String> {
    let dir = node.ipam_dir().join(slice);
    std::fs::read_dir(&dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect())
        .unwrap_or_default()
}

fn pings(from: &Pod, to: IpAddr) -> bool {
    from.exec(&["ping", "-n", "-q", "-c", "2", "-W", "2", &to.to_string()]).unwrap().status.success()
}

/// A TCP exchange to `to` on `port`; checks the server saw `client_addr` as the source.
fn tcp_round_trip(server: &Pod, client: &Pod, to: IpAddr, client_addr: IpAddr, port: u16) {
    let (reply, peer) = e2e::probe::tcp_exchange_to(server, port, client, SocketAddr::new(to, port))
        .unwrap_or_else(|e| panic!("TCP {} → {to}:{port}: {e}", client.lab_name()));
    assert_eq!(peer, client_addr.to_string(), "the server saw another source than the client's slice0");
    assert_eq!(reply, format!("hello from {client_addr}"));
}

/// The pod's routes of one family (`ip [-6] -j route`).
fn pod_routes(pod: &Pod, v6: bool) -> Vec<Value> {
    let args: &[&str] = if v6 { &["ip", "-6", "-j", "route", "show"] } else { &["ip", "-j", "route", "show"] };
    serde_json::from_str::<Value>(&pod.exec_ok(args).unwrap()).unwrap().as_array().unwrap().clone()
}

/// Each pod has one address per family of `state` on `slice0`, inside this node's prefixes,
/// and a route to each family's subnet on `slice0` from that address.
fn assert_layout(pod: &Pod, state: &NodeState) {
    let addrs = slice_addrs(pod);
    let families: Vec<_> = state.families().collect();
    assert_eq!(addrs.len(), families.len(), "{}: {addrs:?}", pod.lab_name());
    for ((subnet, prefix, router), addr) in families.into_iter().zip(&addrs) {
        assert!(prefix.contains(addr), "{}: {addr} not in {prefix}", pod.lab_name());
        assert_ne!(*addr, router);
        let routes = pod_routes(pod, addr.is_ipv6());
        let route = routes
            .iter()
            .find(|r| r["dst"] == subnet.to_string())
            .unwrap_or_else(|| panic!("{}: no route to {subnet}: {routes:?}", pod.lab_name()));
        assert_eq!(route["dev"], "slice0");
        assert_eq!(route["prefsrc"], addr.to_string());
        let gateway = if addr.is_ipv6() { "fe80::1".to_owned() } else { router.to_string() };
        assert_eq!(route["gateway"], gateway, "{route}");
    }
    // eth0 keeps the default route.
    let default = pod_routes(pod, false).into_iter().find(|r| r["dst"] == "default").expect("default route");
    assert_eq!(default["dev"], "eth0");
}

/// Echo requests the pod's kernel received, per family (`Icmp`/`Icmp6` `InEchos` of its own
/// namespace's `/proc/net`).
fn echo_requests_in(pod: &Pod) -> (u64, u64) {
    let snmp = pod.exec_ok(&["cat", "/proc/net/snmp"]).unwrap();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let index = names.split_whitespace().position(|n| n == "InEchos").unwrap();
    let v4 = values.split_whitespace().nth(index).unwrap().parse().unwrap();
    let snmp6 = pod.exec_ok(&["cat", "/proc/net/snmp6"]).unwrap();
    let v6 = snmp6.lines().find_map(|l| l.strip_prefix("Icmp6InEchos")).map(|v| v.trim().parse().unwrap()).unwrap();
    (v4, v6)
}

/// `from` sends `count` echo requests to `to` from `forged` (an address it added, another pod's):
/// the router must drop them (IPv4: rp_filter; IPv6: the nft fib check), so `to` never sees
/// them. The replies would go to the address's owner anyway: only `to`'s counters tell.
fn assert_forged_source_dropped(from: &Pod, forged: IpAddr, to: &Pod, to_addr: IpAddr) {
    let len = if forged.is_ipv4() { 32 } else { 128 };
    from.exec_ok(&["ip", "addr", "add", &format!("{forged}/{len}"), "dev", "slice0", "nodad"]).unwrap();
    let before = echo_requests_in(to);
    let _ = from.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        &forged.to_string(),
        &to_addr.to_string(),
    ]);
    let after = echo_requests_in(to);
    from.exec_ok(&["ip", "addr", "del", &format!("{forged}/{len}"), "dev", "slice0"]).unwrap();
    assert_eq!(after, before, "echo requests from forged {forged} reached {to_addr}");
    // The same pod from its own address does reach it (the counters can move).
    assert!(pings(from, to_addr));
    let moved = echo_requests_in(to);
    assert!(if to_addr.is_ipv4() { moved.0 > after.0 } else { moved.1 > after.1 }, "{to_addr}: counters did not move");
}

/// Nothing of any pod is left on `node` for `slice`, in either family.
fn assert_no_pod_leftovers(node: &Node, slice: &str) {
    let name = node.netns_name();
    assert_eq!(router_veths(node, slice), BTreeSet::new(), "{name}: host veths left in router {slice}");
    assert_eq!(ipam_files(node, slice), BTreeSet::new(), "{name}: IPAM files left for {slice}");
    assert_eq!(router_pod_routes(node, slice), BTreeSet::new(), "{name}: pod routes left in router {slice}");
}

/// A dual-stack slice: every pod gets an IPv4 and an IPv6 address on `slice0`; ping and TCP
/// work over both families on one node and across the two (the VXLAN over the IPv4 underlay
/// carries both); DEL leaves nothing of either family.
#[test]
fn a_dual_stack_slice_carries_both_families_and_leaves_nothing() {
    let slice = LabSlice::new("blue", 100, "10.80.0.0/16", &["shop"]).with_secondary("fd00:80::/48");
    let lab = two_node_lab("hv6", &slice);
    let (n1, n2) = (lab.node("c1", "n1"), lab.node("c1", "n2"));
    let (state1, state2) = (n1.wait_slice_ready("blue", READY).unwrap(), n2.wait_slice_ready("blue", READY).unwrap());
    assert!(state1.secondary.is_some() && state2.secondary.is_some(), "the agents wrote both families");
    let web = n1.run_pod(PodSpec::new("shop", "web")).unwrap();
    let near = n1.run_pod(PodSpec::new("shop", "near")).unwrap();
    let api = n2.run_pod(PodSpec::new("shop", "api")).unwrap();
    assert_layout(&web, &state1);
    assert_layout(&near, &state1);
    assert_layout(&api, &state2);
    let (web_a, near_a, api_a) = (slice_addrs(&web), slice_addrs(&near), slice_addrs(&api));
    assert_eq!(
        ipam_files(n1, "blue"),
        web_a.iter().chain(&near_a).map(ToString::to_string).collect::<BTreeSet<_>>(),
        "one IPAM file per address"
    );

    for family in 0..2 {
        // Same node, across nodes, and the far router's own address.
        assert!(pings(&web, near_a[family]), "web → near {}", near_a[family]);
        assert!(pings(&web, api_a[family]), "web → api {}", api_a[family]);
        assert!(pings(&api, web_a[family]), "api → web {}", web_a[family]);
        let far_router = state2.families().nth(family).unwrap().2;
        assert!(pings(&web, far_router), "web → n2's router {far_router}");
        let port = 8080 + u16::try_from(family).unwrap() * 2;
        tcp_round_trip(&api, &web, api_a[family], web_a[family], port);
        tcp_round_trip(&near, &api, near_a[family], api_a[family], port + 1);
    }

    // Anti-spoofing per family: web sending from near's addresses is dropped by n1's router.
    for family in 0..2 {
        assert_forged_source_dropped(&web, near_a[family], &api, api_a[family]);
    }

    // DEL (stop) and the second DEL (remove, no netns) leave nothing of either family.
    for (node, pods) in [(n1, vec![&web, &near]), (n2, vec![&api])] {
        for pod in pods {
            node.stop_pod(pod).unwrap();
            node.remove_pod(pod).unwrap();
        }
        assert_no_pod_leftovers(node, "blue");
    }
    lab.teardown().unwrap();
}

/// An IPv6-only slice: one IPv6 address per pod, reachable on one node and across nodes.
#[test]
fn an_ipv6_only_slice_works_across_nodes() {
    let slice = LabSlice::new("green", 300, "fd00:90::/48", &["shop"]);
    let lab = two_node_lab("hw6", &slice);
    let (n1, n2) = (lab.node("c1", "n1"), lab.node("c1", "n2"));
    let (state1, state2) = (n1.wait_slice_ready("green", READY).unwrap(), n2.wait_slice_ready("green", READY).unwrap());
    let web = n1.run_pod(PodSpec::new("shop", "web")).unwrap();
    let near = n1.run_pod(PodSpec::new("shop", "near")).unwrap();
    let api = n2.run_pod(PodSpec::new("shop", "api")).unwrap();
    assert_layout(&web, &state1);
    assert_layout(&api, &state2);
    let (web_a, near_a, api_a) = (slice_addrs(&web)[0], slice_addrs(&near)[0], slice_addrs(&api)[0]);
    assert!(web_a.is_ipv6() && api_a.is_ipv6());
    assert!(pings(&web, near_a), "same node");
    assert!(pings(&web, api_a), "across nodes");
    assert!(pings(&api, state1.router_address), "n1's router");
    tcp_round_trip(&api, &web, api_a, web_a, 8090);
    tcp_round_trip(&web, &api, web_a, api_a, 8091);
    for (node, pods) in [(n1, vec![&web, &near]), (n2, vec![&api])] {
        for pod in pods {
            node.stop_pod(pod).unwrap();
            node.remove_pod(pod).unwrap();
        }
        assert_no_pod_leftovers(node, "green");
    }
    lab.teardown().unwrap();
}

/// The isolation matrix for IPv6: two IPv6-only slices with the same subnet (`fd00:80::/48`) in
/// one cluster number their pods alike, reach their own pods and never each other's, on one node
/// and across nodes; a pod in no slice reaches neither (it has no route into them).
#[test]
fn ipv6_slices_with_the_same_subnet_are_isolated() {
    let blue = LabSlice::new("blue", 100, "fd00:80::/48", &["shop"]);
    let red = LabSlice::new("red", 200, "fd00:80::/48", &["bank"]);
    let mut lab = Lab::new("hz6").expect("lab (needs root; build the bins first)");
    lab.add_cluster("c1", 2).expect("cluster c1");
    lab.cluster("c1").start_agents(&[blue.clone(), red.clone()]).expect("start agents");
    for node in lab.cluster("c1").nodes() {
        for s in [&blue, &red] {
            node.wait_slice_ready(&s.name, READY).expect("slice ready");
        }
    }
    let (n1, n2) = (lab.node("c1", "n1"), lab.node("c1", "n2"));
    let web = n1.run_pod(PodSpec::new("shop", "web")).unwrap();
    let api = n2.run_pod(PodSpec::new("shop", "api")).unwrap();
    let ledger = n1.run_pod(PodSpec::new("bank", "ledger")).unwrap();
    let vault = n2.run_pod(PodSpec::new("bank", "vault")).unwrap();
    let v6 = |p: &Pod| {
        let a = slice_addrs(p);
        assert!(a.len() == 1 && a[0].is_ipv6(), "{}: {a:?}", p.lab_name());
        a[0]
    };
    // Both slices number from the same node prefixes.
    assert_eq!(v6(&web), v6(&ledger), "same address in both slices on n1");
    assert_eq!(v6(&api), v6(&vault), "same address in both slices on n2");
    assert!(pings(&web, v6(&api)), "blue works across nodes");
    assert!(pings(&vault, v6(&ledger)), "red works across nodes");

    // An address only red has (a second red pod on n1) is unreachable from blue, and the
    // reverse; on the same node and across nodes.
    let teller = n1.run_pod(PodSpec::new("bank", "teller")).unwrap();
    assert!(pings(&vault, v6(&teller)), "red reaches its new pod");
    assert!(!pings(&api, v6(&teller)), "blue must not reach red's {}", v6(&teller));
    assert!(!pings(&web, v6(&teller)), "blue must not reach red's {} on the same node", v6(&teller));
    let cart = n2.run_pod(PodSpec::new("shop", "cart")).unwrap();
    assert!(pings(&web, v6(&cart)), "blue reaches its new pod");
    assert!(!pings(&ledger, v6(&cart)), "red must not reach blue's {}", v6(&cart));
    assert!(!pings(&vault, v6(&cart)), "red must not reach blue's {} on the same node", v6(&cart));

    // A pod in no slice: no slice interface, and no way into either slice.
    let outsider = n1.run_pod(PodSpec::new("default", "outsider")).unwrap();
    assert!(outsider.addresses("slice0").is_err() || outsider.addresses("slice0").unwrap().is_empty());
    for to in [v6(&api), v6(&teller), v6(&cart)] {
        assert!(!pings(&outsider, to), "a pod in no slice reached {to}");
    }
    lab.teardown().unwrap();
}
