//! Slices end to end through the real kubelet path: pods are CRI sandboxes created by each node's
//! containerd, which runs the conflist `bridge` + `host-local` → `slice-cni`; node agents are real
//! `slice-operator node-agent` processes. Every test builds its own 1-cluster 2-node lab under its
//! own prefix, so the tests run in parallel. Needs root; fails (does not skip) without it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::{Lab, LabSlice, Node, Pod, PodSpec};
use serde_json::Value;

const READY: Duration = Duration::from_secs(30);
const SLICE_ANNOTATION: &str = "slicenet.io/slice";
const EXCLUDE: &str = "slicenet.io/exclude";
/// libcni's result cache (containerd 1.6 uses the default; the lab's network is named `lab`).
const CNI_CACHE_DIR: &str = "/var/lib/cni/results";

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

fn blue(namespaces: &[&str]) -> LabSlice {
    LabSlice::new("blue", 100, "10.80.0.0/16", namespaces)
}

fn red(namespaces: &[&str]) -> LabSlice {
    LabSlice::new("red", 200, "10.80.0.0/16", namespaces)
}

/// A lab with cluster `c1` of two nodes, no agents yet.
fn two_node_lab_without_agents(prefix: &str) -> Lab {
    let mut lab = Lab::new(prefix).expect("lab (needs root; build the bins first)");
    lab.add_cluster("c1", 2).expect("cluster c1");
    lab
}

/// A lab with cluster `c1` of two nodes whose agents run `slices`, every slice ready on both.
fn two_node_lab(prefix: &str, slices: &[LabSlice]) -> Lab {
    let lab = two_node_lab_without_agents(prefix);
    lab.cluster("c1").start_agents(slices).expect("start agents");
    for node in lab.cluster("c1").nodes() {
        for slice in slices {
            node.wait_slice_ready(&slice.name, READY).expect("slice ready");
        }
    }
    lab
}

fn n1(lab: &Lab) -> &Node {
    lab.node("c1", "n1")
}

fn n2(lab: &Lab) -> &Node {
    lab.node("c1", "n2")
}

/// The pod's IPv4 address on `slice0` (panics with the pod's name when it has none).
fn slice_addr(pod: &Pod) -> Ipv4Addr {
    pod.ipv4("slice0").unwrap_or_else(|e| panic!("{e:#}"))
}

/// Interface names inside the pod.
fn pod_links(pod: &Pod) -> BTreeSet<String> {
    let json = pod.exec_ok(&["ip", "-j", "link", "show"]).unwrap();
    link_names(&json)
}

fn link_names(json: &str) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(json).expect("ip -j link is JSON");
    v.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_owned)).collect()
}

fn has_slice0(pod: &Pod) -> bool {
    pod_links(pod).contains("slice0")
}

/// Name of the router namespace of `slice` on `node` (in `/run/netns`).
fn router_netns(node: &Node, slice: &str) -> String {
    format!("{}{slice}", node.router_netns_prefix())
}

fn router_exists(node: &Node, slice: &str) -> bool {
    Path::new("/run/netns").join(router_netns(node, slice)).exists()
}

/// `ip -n <router netns> -j ARGS…`, parsed.
fn router_ip_json(node: &Node, slice: &str, args: &[&str]) -> Value {
    let ns = router_netns(node, slice);
    let out = Command::new("ip").args(["-n", &ns, "-j"]).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() { Value::Array(Vec::new()) } else { serde_json::from_str(&text).unwrap() }
}

/// Interface names in the router namespace of `slice` on `node`.
fn router_links(node: &Node, slice: &str) -> BTreeSet<String> {
    let v = router_ip_json(node, slice, &["link", "show"]);
    v.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str().map(str::to_owned)).collect()
}

/// Pod-facing host ends (`sn<hash>`) in the router namespace.
fn router_veths(node: &Node, slice: &str) -> BTreeSet<String> {
    router_links(node, slice).into_iter().filter(|l| l.starts_with("sn")).collect()
}

/// `dst → dev` of the host routes (`/32`, `ip` prints them without a length) in the router
/// namespace that point at a pod-facing veth.
fn router_pod_routes(node: &Node, slice: &str) -> BTreeMap<String, String> {
    let v = router_ip_json(node, slice, &["route", "show"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|r| Some((r["dst"].as_str()?.to_owned(), r["dev"].as_str()?.to_owned())))
        .filter(|(dst, dev)| !dst.contains('/') && dev.starts_with("sn"))
        .collect()
}

/// ifindex of the slice's VXLAN device in its router namespace.
fn vxlan_ifindex(node: &Node, slice: &str, vni: u32) -> u64 {
    let v = router_ip_json(node, slice, &["link", "show", &format!("sv{vni}")]);
    v[0]["ifindex"].as_u64().expect("vxlan ifindex")
}

/// Addresses allocated by `slice-cni` on `node` for `slice` (file names under the IPAM dir).
fn ipam_files(node: &Node, slice: &str) -> BTreeSet<String> {
    let dir = node.ipam_dir().join(slice);
    std::fs::read_dir(&dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| !n.starts_with('.')).collect())
        .unwrap_or_default()
}

/// The pod's network namespaces that containerd still has mounted on `node`.
fn pod_netns_files(node: &Node) -> BTreeSet<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = format!("{}/", node.dir().display());
    mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir) && p.contains("/netns/cni-"))
        .map(str::to_owned)
        .collect()
}

/// Nothing of any pod is left on `node` for `slice`: no host veth, no IPAM file, no `/32`
/// route, no pod namespace.
fn assert_no_pod_leftovers(node: &Node, slice: &str) {
    let name = node.netns_name();
    assert_eq!(router_veths(node, slice), BTreeSet::new(), "{name}: host veths left in router {slice}");
    assert_eq!(ipam_files(node, slice), BTreeSet::new(), "{name}: IPAM files left for {slice}");
    assert_eq!(router_pod_routes(node, slice), BTreeMap::new(), "{name}: /32 routes left in router {slice}");
    assert_eq!(pod_netns_files(node), BTreeSet::new(), "{name}: pod namespaces left");
}

/// `ping -c2 -W2` from the pod to `to`; true when it answered.
fn pings(from: &Pod, to: Ipv4Addr) -> bool {
    from.exec(&["ping", "-n", "-q", "-c", "2", "-W", "2", &to.to_string()]).unwrap().status.success()
}

/// One-packet ping with a short deadline (for the restart test's continuous probing).
fn ping_once(from: &Pod, to: Ipv4Addr) -> bool {
    from.exec(&["ping", "-n", "-q", "-c", "1", "-W", "2", &to.to_string()]).unwrap().status.success()
}

/// A TCP exchange over the slice (`e2e::probe::tcp_exchange`): the client connects to the
/// server pod's slice address; returns what the client read back, after checking that the
/// server saw the client's slice address as the source.
fn tcp_round_trip(server: &Pod, client: &Pod, port: u16) -> std::io::Result<String> {
    let addr = SocketAddrV4::new(slice_addr(server), port);
    let (reply, peer) = e2e::probe::tcp_exchange(server, port, client, addr)?;
    assert_eq!(peer, slice_addr(client).to_string(), "server saw a source other than the client's slice0");
    Ok(reply)
}

/// The pod's routes (`ip -j route`).
fn pod_routes(pod: &Pod) -> Vec<Value> {
    let v: Value = serde_json::from_str(&pod.exec_ok(&["ip", "-j", "route", "show"]).unwrap()).unwrap();
    v.as_array().unwrap().clone()
}

fn pod_mtu(pod: &Pod, ifname: &str) -> u64 {
    let v: Value = serde_json::from_str(&pod.exec_ok(&["ip", "-j", "link", "show", ifname]).unwrap()).unwrap();
    v[0]["mtu"].as_u64().unwrap()
}

fn cached_cni_result(pod: &Pod) -> Value {
    let path = PathBuf::from(CNI_CACHE_DIR).join(format!("lab-{}-eth0", pod.sandbox_id));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Names of every interface in a CNI result.
fn result_ifnames(result: &Value) -> Vec<String> {
    result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Pods of one slice on two nodes reach each other over `slice0` (ICMP and TCP); `slice0` is
/// laid out as designed and `eth0` keeps the default route.
#[test]
fn pods_of_a_slice_reach_each_other_across_nodes() {
    let lab = two_node_lab("sl1x", &[blue(&["shop"])]);
    let state1 = n1(&lab).wait_slice_ready("blue", READY).unwrap();
    let state2 = n2(&lab).wait_slice_ready("blue", READY).unwrap();
    let web = n1(&lab).run_pod(PodSpec::new("shop", "web")).unwrap();
    let api = n2(&lab).run_pod(PodSpec::new("shop", "api")).unwrap();

    for (pod, state, node) in [(&web, &state1, n1(&lab)), (&api, &state2, n2(&lab))] {
        let addrs = pod.addresses("slice0").unwrap();
        assert_eq!(addrs.len(), 1, "{}: {addrs:?}", pod.lab_name());
        assert_eq!(addrs[0].prefix_len(), 32, "{}: slice0 holds IP/32", pod.lab_name());
        assert!(state.node_prefix.contains(&addrs[0].addr()), "{} not in {}", addrs[0], state.node_prefix);
        assert_ne!(addrs[0].addr(), state.router_address);
        assert_eq!(pod_mtu(pod, "slice0"), u64::from(state.mtu), "{}: slice0 MTU", pod.lab_name());
        assert_eq!(state.mtu, 1450, "underlay 1500 − VXLAN 50");
        assert!(node.pod_cidr().contains(&pod.ipv4("eth0").unwrap()), "eth0 from the node's pod CIDR");
        assert_eq!(pod_links(pod), BTreeSet::from(["lo".into(), "eth0".into(), "slice0".into()]));

        let routes = pod_routes(pod);
        let find = |dst: &str| routes.iter().find(|r| r["dst"] == dst).cloned();
        let default = find("default").expect("default route");
        assert_eq!(default["dev"], "eth0", "default route stays on eth0: {routes:?}");
        let subnet = find(&state.slice_subnet.to_string()).expect("slice subnet route");
        assert_eq!(subnet["gateway"], state.router_address.to_string(), "{subnet}");
        assert_eq!(subnet["dev"], "slice0");
        assert_eq!(subnet["prefsrc"], addrs[0].addr().to_string());
        let router = find(&state.router_address.to_string()).expect("link route to the router");
        assert_eq!((router["dev"].as_str(), router["scope"].as_str()), (Some("slice0"), Some("link")));

        // The router side: one host end and a /32 route to the pod through it.
        let routes = router_pod_routes(node, "blue");
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes.keys().next().unwrap(), &addrs[0].addr().to_string());
        assert_eq!(router_veths(node, "blue"), routes.values().cloned().collect());
        assert_eq!(ipam_files(node, "blue"), BTreeSet::from([addrs[0].addr().to_string()]));
    }

    let (a, b) = (slice_addr(&web), slice_addr(&api));
    assert!(pings(&web, b), "web → api over slice0");
    assert!(pings(&api, a), "api → web over slice0");
    // The routers' own addresses answer too.
    assert!(pings(&web, state2.router_address.to_string().parse().unwrap()));
    let reply = tcp_round_trip(&api, &web, 8080).expect("TCP web → api over the slice");
    assert_eq!(reply, format!("hello from {a}"));
    let reply = tcp_round_trip(&web, &api, 8081).expect("TCP api → web over the slice");
    assert_eq!(reply, format!("hello from {b}"));
    lab.teardown().unwrap();
}

/// blue and red share 10.80.0.0/16 with different VNIs: each works inside, neither reaches the
/// other, even where both slices handed out the same address.
#[test]
fn slices_with_the_same_subnet_are_isolated() {
    let lab = two_node_lab("sl2x", &[blue(&["shop"]), red(&["bank"])]);
    let web = n1(&lab).run_pod(PodSpec::new("shop", "web")).unwrap();
    let api = n2(&lab).run_pod(PodSpec::new("shop", "api")).unwrap();
    let ledger = n1(&lab).run_pod(PodSpec::new("bank", "ledger")).unwrap();
    let vault = n2(&lab).run_pod(PodSpec::new("bank", "vault")).unwrap();
    let addr: BTreeMap<&str, Ipv4Addr> =
        [("web", &web), ("api", &api), ("ledger", &ledger), ("vault", &vault)].map(|(n, p)| (n, slice_addr(p))).into();
    eprintln!("slice addresses: {addr:?}");
    // Both slices number from the same node prefixes: the first pod on each node gets the same
    // address in blue and in red.
    assert_eq!(addr["web"], addr["ledger"], "same address in both slices on n1");
    assert_eq!(addr["api"], addr["vault"], "same address in both slices on n2");

    assert!(pings(&web, addr["api"]), "blue works");
    assert!(pings(&vault, addr["ledger"]), "red works");
    // TCP inside blue: the server sees the client's slice address as the source.
    let reply = tcp_round_trip(&api, &web, 9000).unwrap();
    assert!(reply.starts_with("hello from"), "{reply}");

    // A red pod that exists only in red (a second red pod on n1) is unreachable from blue.
    let teller = n1(&lab).run_pod(PodSpec::new("bank", "teller")).unwrap();
    let teller_addr = slice_addr(&teller);
    assert!(pings(&vault, teller_addr), "red reaches its new pod");
    assert!(!pings(&api, teller_addr), "blue must not reach red's {teller_addr}");
    assert!(!pings(&web, teller_addr), "blue must not reach red's {teller_addr} on the same node");
    // And the reverse: a blue-only address.
    let cart = n2(&lab).run_pod(PodSpec::new("shop", "cart")).unwrap();
    let cart_addr = slice_addr(&cart);
    assert!(pings(&web, cart_addr));
    assert!(!pings(&ledger, cart_addr), "red must not reach blue's {cart_addr}");
    assert!(!pings(&vault, cart_addr), "red must not reach blue's {cart_addr} on the same node");

    // Routers are separate namespaces with their own VXLAN (VNI) each.
    for node in [n1(&lab), n2(&lab)] {
        assert!(router_links(node, "blue").contains("sv100"));
        assert!(router_links(node, "red").contains("sv200"));
        assert!(!router_links(node, "blue").contains("sv200"));
    }
    lab.teardown().unwrap();
}

/// A pod in no slice: only `lo` and `eth0`, and its CNI result is the primary plugin's. Also
/// `slice-cni` run directly for a non-member pod prints prevResult unchanged.
#[test]
fn non_member_pods_are_untouched() {
    let lab = two_node_lab("sl3x", &[blue(&["shop"])]);
    let node = n1(&lab);
    let tools = node.run_pod(PodSpec::new("plain", "tools")).unwrap();
    assert_eq!(pod_links(&tools), BTreeSet::from(["lo".into(), "eth0".into()]));
    assert!(node.pod_cidr().contains(&tools.ipv4("eth0").unwrap()));
    assert!(router_veths(node, "blue").is_empty());
    assert!(ipam_files(node, "blue").is_empty());

    // libcni's cached chain result for the sandbox: bridge's interfaces only.
    let cached = cached_cni_result(&tools);
    let result = cached.get("result").unwrap_or(&cached);
    let names = result_ifnames(result);
    assert!(!names.is_empty(), "{cached}");
    assert!(names.iter().all(|n| n != "slice0" && !n.starts_with("sn")), "{names:?}");
    assert!(names.contains(&"eth0".to_string()), "{names:?}");
    assert!(result["ips"].as_array().unwrap().len() == 1, "{result}");

    // The plugin itself: for a non-member pod, stdout is exactly prevResult (a real one, from
    // the cache above, plus some key order that must survive).
    let mut prev = result.clone();
    prev["zzz-unknown-key"] = serde_json::json!({"b": 1, "a": [2, 1]});
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "lab",
        "type": "slice-cni",
        "stateDir": node.state_dir(),
        "ipamDir": node.ipam_dir(),
        "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"team": "ops"}},
        "prevResult": prev,
    });
    let stdout = run_slice_cni(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "directcall0123"),
            ("CNI_NETNS", tools.netns_path.to_str().unwrap()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=tools;K8S_POD_NAMESPACE=plain"),
        ],
        &serde_json::to_vec(&conf).unwrap(),
    )
    .expect("ADD for a non-member succeeds");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(printed, prev, "stdout must be prevResult unchanged");
    assert_eq!(stdout.trim(), serde_json::to_string(&prev).unwrap(), "byte-for-byte, in the same key order");
    assert_eq!(pod_links(&tools), BTreeSet::from(["lo".into(), "eth0".into()]), "the direct call changed nothing");
    assert!(ipam_files(node, "blue").is_empty());
    lab.teardown().unwrap();
}

/// Runs target/debug/slice-cni with `env` and `stdin`; Ok(stdout) on exit 0, Err(stdout) else.
fn run_slice_cni(env: &[(&str, &str)], stdin: &[u8]) -> Result<String, String> {
    let mut child = Command::new(e2e::bin_dir().join("slice-cni"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("slice-cni runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() { Ok(stdout) } else { Err(stdout) }
}

/// Opt-outs: the exclude annotation in a member namespace; an annotation naming another slice
/// neither grants that slice nor falls back to the namespace's own.
#[test]
fn pods_opt_out_and_annotations_never_grant() {
    let lab = two_node_lab("sl4x", &[blue(&["shop"]), red(&["bank"])]);
    let node = n1(&lab);
    let member = node.run_pod(PodSpec::new("shop", "member")).unwrap();
    assert!(has_slice0(&member), "control: a shop pod joins blue");
    let excluded = node.run_pod(PodSpec::new("shop", "excluded").annotation(EXCLUDE, "true")).unwrap();
    assert_eq!(pod_links(&excluded), BTreeSet::from(["lo".into(), "eth0".into()]));
    let sneaky = node.run_pod(PodSpec::new("shop", "sneaky").annotation(SLICE_ANNOTATION, "red")).unwrap();
    assert_eq!(pod_links(&sneaky), BTreeSet::from(["lo".into(), "eth0".into()]), "neither red nor blue");
    // Only the member pod holds anything on either slice.
    assert_eq!(router_veths(node, "blue").len(), 1);
    assert_eq!(ipam_files(node, "blue"), BTreeSet::from([slice_addr(&member).to_string()]));
    assert!(router_veths(node, "red").is_empty());
    assert!(ipam_files(node, "red").is_empty());
    // The matching annotation is fine.
    let asked = node.run_pod(PodSpec::new("bank", "asked").annotation(SLICE_ANNOTATION, "red")).unwrap();
    assert!(has_slice0(&asked));
    assert_eq!(ipam_files(node, "red"), BTreeSet::from([slice_addr(&asked).to_string()]));
    lab.teardown().unwrap();
}

/// Stop + remove (two DELs, the second without a netns) leaves nothing: no host veth, no IPAM
/// file, no /32 route.
#[test]
fn stop_and_remove_leave_nothing_behind() {
    let lab = two_node_lab("sl5x", &[blue(&["shop"])]);
    let node = n2(&lab);
    let keep = node.run_pod(PodSpec::new("shop", "keep")).unwrap();
    let gone = node.run_pod(PodSpec::new("shop", "gone")).unwrap();
    let (keep_ip, gone_ip) = (slice_addr(&keep).to_string(), slice_addr(&gone).to_string());
    assert_eq!(router_veths(node, "blue").len(), 2);
    assert_eq!(ipam_files(node, "blue"), BTreeSet::from([keep_ip.clone(), gone_ip.clone()]));

    // Stop alone: DEL with the namespace already cleans up.
    node.stop_pod(&gone).unwrap();
    assert_eq!(router_veths(node, "blue").len(), 1);
    assert_eq!(ipam_files(node, "blue"), BTreeSet::from([keep_ip.clone()]));
    assert_eq!(router_pod_routes(node, "blue").keys().cloned().collect::<Vec<_>>(), vec![keep_ip.clone()]);
    // Remove: the second DEL (empty CNI_NETNS, no prevResult) finds nothing and succeeds.
    node.remove_pod(&gone).unwrap();
    assert!(!gone.netns_exists());
    assert_eq!(ipam_files(node, "blue"), BTreeSet::from([keep_ip.clone()]));
    assert!(pings(&keep, node.wait_slice_ready("blue", READY).unwrap().router_address.to_string().parse().unwrap()));

    node.remove_pod(&keep).unwrap();
    assert_no_pod_leftovers(node, "blue");
    assert!(!Path::new(CNI_CACHE_DIR).join(format!("lab-{}-eth0", keep.sandbox_id)).exists());
    lab.teardown().unwrap();
}

/// 200 sequential create/delete cycles on one node, then 20 concurrent ones over both nodes:
/// every pod got an address, no two live pods shared one, and nothing leaked.
#[test]
fn many_pod_cycles_leak_nothing() {
    let lab = two_node_lab("sl6x", &[blue(&["shop"])]);
    let started = Instant::now();
    let node = n1(&lab);
    let prefix = node.wait_slice_ready("blue", READY).unwrap().node_prefix;
    let mut seen = BTreeSet::new();
    let mut sandboxes = Vec::new();
    for i in 0..200 {
        let pod = node.run_pod(PodSpec::new("shop", format!("seq{i}"))).unwrap();
        let ip = slice_addr(&pod);
        assert!(prefix.contains(&std::net::IpAddr::V4(ip)), "{ip} outside {prefix}");
        seen.insert(ip);
        node.remove_pod(&pod).unwrap();
        sandboxes.push(pod.sandbox_id);
    }
    let sequential = started.elapsed();
    eprintln!("200 sequential cycles in {sequential:?}; {} distinct addresses used", seen.len());
    // Round-robin allocation walks the prefix: all 61 pod addresses of the /26 were used.
    assert_eq!(seen.len(), 61, "round robin over the /26's pod addresses");
    assert_no_pod_leftovers(node, "blue");

    // 20 at once: all live together, then all removed at once.
    let t = Instant::now();
    let nodes = [n1(&lab), n2(&lab)];
    let live: Vec<(Pod, Ipv4Addr)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let node = nodes[i % 2];
                s.spawn(move || {
                    let pod = node.run_pod(PodSpec::new("shop", format!("par{i}"))).unwrap();
                    let ip = slice_addr(&pod);
                    (pod, ip)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let per_node = |n: &str| live.iter().filter(|(p, _)| p.node == n).map(|(_, ip)| *ip).collect::<BTreeSet<_>>();
    assert_eq!(per_node("n1").len(), 10, "no duplicate among live pods on n1");
    assert_eq!(per_node("n2").len(), 10, "no duplicate among live pods on n2");
    assert!(per_node("n1").is_disjoint(&per_node("n2")), "node prefixes are disjoint");
    for node in nodes {
        assert_eq!(router_veths(node, "blue").len(), 10);
        assert_eq!(ipam_files(node, "blue").len(), 10);
        assert_eq!(router_pod_routes(node, "blue").len(), 10);
    }
    // A sample of them talk across nodes.
    assert!(pings(&live[0].0, live[1].1));
    std::thread::scope(|s| {
        for (pod, _) in &live {
            let node = if pod.node == "n1" { nodes[0] } else { nodes[1] };
            s.spawn(move || node.remove_pod(pod).unwrap());
        }
    });
    eprintln!("20 concurrent pods up, checked and removed in {:?}", t.elapsed());
    for node in nodes {
        assert_no_pod_leftovers(node, "blue");
    }
    sandboxes.extend(live.iter().map(|(p, _)| p.sandbox_id.clone()));
    let cached: Vec<&String> =
        sandboxes.iter().filter(|id| Path::new(CNI_CACHE_DIR).join(format!("lab-{id}-eth0")).exists()).collect();
    assert!(cached.is_empty(), "libcni cache entries left for removed sandboxes: {cached:?}");
    eprintln!("whole stress test {:?}", started.elapsed());
    lab.teardown().unwrap();
}

/// Restarting a node agent with live pods: traffic keeps flowing during and after, and the
/// router namespace (and its VXLAN) is adopted, not recreated.
#[test]
fn agent_restart_keeps_pods_connected() {
    let lab = two_node_lab("sl7x", &[blue(&["shop"])]);
    let web = n1(&lab).run_pod(PodSpec::new("shop", "web")).unwrap();
    let api = n2(&lab).run_pod(PodSpec::new("shop", "api")).unwrap();
    let (a, b) = (slice_addr(&web), slice_addr(&api));
    assert!(pings(&web, b));
    let before = [vxlan_ifindex(n1(&lab), "blue", 100), vxlan_ifindex(n2(&lab), "blue", 100)];
    let state_before = n1(&lab).wait_slice_ready("blue", READY).unwrap();

    let stop = AtomicBool::new(false);
    let (sent, lost) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                if !ping_once(&web, b) || !ping_once(&api, a) {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Stops the prober however this closure ends (a failed assertion included), or the
        // scope would wait for it forever.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        for node in [n1(&lab), n2(&lab)] {
            let passes = |n: &Node| {
                std::fs::read_to_string(n.agent_log())
                    .unwrap_or_default()
                    .matches("first reconcile pass complete")
                    .count()
            };
            let before = passes(node);
            node.restart_agent().unwrap();
            // Wait (a state, not a time) for the restarted agent's first full observe/plan/apply
            // pass, probing all along.
            let deadline = Instant::now() + READY;
            while passes(node) <= before {
                assert!(Instant::now() < deadline, "the restarted agent never reconciled");
                assert!(node.agent_running(), "the restarted agent exited");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // At least three probe rounds ran while (or after) the agents restarted.
        let deadline = Instant::now() + READY;
        while sent.load(Ordering::Relaxed) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let (sent, lost) = (sent.into_inner(), lost.into_inner());
    eprintln!("probes during restarts: {sent} rounds, {lost} lost");
    assert!(sent >= 3, "too few probes ({sent})");
    assert_eq!(lost, 0, "pods lost connectivity during agent restarts");

    assert!(pings(&web, b) && pings(&api, a), "after the restarts");
    let after = [vxlan_ifindex(n1(&lab), "blue", 100), vxlan_ifindex(n2(&lab), "blue", 100)];
    assert_eq!(before, after, "the VXLAN devices (and router namespaces) were recreated");
    assert_eq!(n1(&lab).wait_slice_ready("blue", READY).unwrap(), state_before);
    assert_eq!(router_veths(n1(&lab), "blue").len(), 1, "the pod's host end survived");
    // New pods still work with the restarted agents.
    let cart = n2(&lab).run_pod(PodSpec::new("shop", "cart")).unwrap();
    assert!(pings(&web, slice_addr(&cart)));
    let log = std::fs::read_to_string(n1(&lab).agent_log()).unwrap();
    assert!(log.matches("node agent starting").count() >= 2, "{log}");
    lab.teardown().unwrap();
}

/// Removing a slice from the agents' configuration removes its state files and routers; the
/// other slice keeps working; the namespace's new pods start without `slice0`, and a pod that
/// asks for the removed slice is told to try again later.
#[test]
fn slice_removal() {
    let slices = [blue(&["shop"]), red(&["bank"])];
    let lab = two_node_lab("sl8x", &slices);
    let cluster = lab.cluster("c1");
    let web = n1(&lab).run_pod(PodSpec::new("shop", "web")).unwrap();
    let api = n2(&lab).run_pod(PodSpec::new("shop", "api")).unwrap();
    let ledger = n1(&lab).run_pod(PodSpec::new("bank", "ledger")).unwrap();
    assert!(has_slice0(&ledger));
    assert!(pings(&web, slice_addr(&api)));

    cluster.update_agent_configs(&slices[..1]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in cluster.nodes() {
        while slice_api::NodeState::load(&node.state_dir(), "red").unwrap().is_some() || router_exists(node, "red") {
            assert!(Instant::now() < deadline, "{}: red still there", node.netns_name());
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(router_exists(node, "blue"));
        assert!(node.wait_slice_ready("blue", READY).is_ok());
    }
    // The red pod lost its slice with the router (its veth peer died with the namespace; the
    // kernel frees a namespace asynchronously).
    let deadline = Instant::now() + Duration::from_secs(10);
    while has_slice0(&ledger) {
        assert!(Instant::now() < deadline, "ledger's slice0 outlived red's router: {:?}", pod_links(&ledger));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pings(&web, slice_addr(&api)), "blue keeps working");
    assert!(pings(&api, slice_addr(&web)), "blue keeps working");

    let record = record_slice_cni_output(n2(&lab));
    let plain = n2(&lab).run_pod(PodSpec::new("bank", "after")).unwrap();
    assert_eq!(pod_links(&plain), BTreeSet::from(["lo".into(), "eth0".into()]), "no slice for bank any more");

    let err = n2(&lab)
        .run_pod(PodSpec::new("bank", "asks").annotation(SLICE_ANNOTATION, "red"))
        .expect_err("a pod asking for a removed slice must not start");
    let msg = format!("{err:#}");
    assert!(msg.contains("slice red") && msg.contains("try again later"), "{msg}");
    assert_last_error_is_try_again(&record, "red");
    // The removed slice's pods can still be deleted cleanly (DEL without a state file).
    n1(&lab).remove_pod(&ledger).unwrap();
    assert!(ipam_files(n1(&lab), "red").is_empty(), "red's IPAM file released on DEL");
    lab.teardown().unwrap();
}

/// Puts a recorder in front of `slice-cni` in the node's CNI bin dir: containerd runs it like
/// the plugin, it runs the plugin and appends every line the plugin printed on stdout (the
/// protocol: result or error JSON) to `<node dir>/slice-cni.stdout`. CRI reports only the error
/// message; this shows the code the kubelet's runtime got.
fn record_slice_cni_output(node: &Node) -> PathBuf {
    let record = node.dir().join("slice-cni.stdout");
    let wrapper = node.dir().join("slice-cni-recorder");
    let script = format!(
        "#!/bin/sh\nout=$({real})\nrc=$?\nprintf '%s' \"$out\"\nprintf '%s\\n' \"$out\" >> {record}\nexit $rc\n",
        real = e2e::bin_dir().join("slice-cni").display(),
        record = record.display(),
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let link = node.cni_bin_dir().join("slice-cni");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&wrapper, &link).unwrap();
    record
}

/// The last CNI error `slice-cni` printed (from [`record_slice_cni_output`]) is "try again
/// later" (code 11) naming `slice`.
fn assert_last_error_is_try_again(record: &Path, slice: &str) {
    let text = std::fs::read_to_string(record).unwrap();
    let last_error = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v.get("code").is_some())
        .unwrap_or_else(|| panic!("slice-cni printed no error: {text}"));
    assert_eq!(last_error["code"], 11, "{last_error}");
    let msg = last_error["msg"].as_str().unwrap();
    assert!(msg.contains(&format!("slice {slice}")) && msg.contains("try again later"), "{msg}");
}

/// A pod that asks for a slice before the node's agent made its state fails with "try again
/// later" naming the slice (so the kubelet retries); after the agent starts it succeeds.
#[test]
fn pod_waits_for_the_slice_state() {
    let lab = two_node_lab_without_agents("sl9x");
    let node = n1(&lab);
    let record = record_slice_cni_output(node);
    let spec = PodSpec::new("shop", "early").annotation(SLICE_ANNOTATION, "blue");
    let err = node.run_pod(spec.clone()).expect_err("no state yet: the pod must not start");
    let msg = format!("{err:#}");
    assert!(msg.contains("slice blue") && msg.contains("try again later"), "{msg}");
    assert_last_error_is_try_again(&record, "blue");
    // containerd cleaned up the failed sandbox (DEL after a failed ADD).
    assert!(node.list_pods().unwrap().is_empty());
    // A pod that asks for nothing is never held up.
    let plain = node.run_pod(PodSpec::new("shop", "plain")).unwrap();
    assert_eq!(pod_links(&plain), BTreeSet::from(["lo".into(), "eth0".into()]));

    lab.cluster("c1").start_agents(&[blue(&["shop"])]).unwrap();
    node.wait_slice_ready("blue", READY).unwrap();
    let pod = node.run_pod(spec).expect("the kubelet's retry succeeds once the state is there");
    assert!(has_slice0(&pod));
    assert!(pings(&pod, node.wait_slice_ready("blue", READY).unwrap().router_address.to_string().parse().unwrap()));
    lab.teardown().unwrap();
}

/// `make demo`'s scenario runs and every reachability cell matches (under its own prefix).
#[test]
fn demo_scenario_matches_expectations() {
    e2e::demo::run_with_prefix("sldemo").expect("demo");
    assert!(!Path::new(e2e::LAB_BASE).join("sldemo").exists(), "the demo tears its lab down");
}
