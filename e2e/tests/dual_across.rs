//! Dual-stack and IPv6-only slices across three clusters (issue 17), on the real path the lab's
//! control plane makes (the hub's and the workers' own passes, `e2e::control`): pods through
//! containerd's CRI and `slice-cni`, node agents routing each family of the other clusters'
//! prefixes to the gateway pod's address of that family, gateways carrying both families over
//! the lab's IPv4 WAN (c3 behind NAT). Slice `blue` has 10.80.0.0/16 and fd00:80::/48 (namespace
//! `shop`), slice `green` fd00:81::/48 only (namespace `web`). Every pod reaches every pod of its
//! slice in the other clusters over each family it has (ping, and an IPv6 TCP transfer through
//! the tunnel's IPv6 MSS clamp); a MultiNetworkPolicy on the dual-stack slice holds over IPv4
//! and IPv6 alike; a pod of one slice reaches no pod of the other. Namespaces `hx6-*`.
//!
//! The same two slices in a dual-stack lab (`LabOptions::dual_stack`, namespaces `hu6-*`): the
//! WAN, the edges and the pod network gain IPv6, the clusters publish their IPv6 address, so the
//! tunnels run over an IPv6 WAN, c3 behind NAT66 (its edge masquerades, forwards nothing in); the
//! node agents' VXLAN runs over the IPv6 underlay between c1's two nodes.
//! Needs root and the binaries; fails (does not skip) without them.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use e2e::control::LabEnv as Env;
use e2e::control::workloads::parse_objects;
use e2e::control::{self, BEHIND_NAT_ANNOTATION, ControlPlane, NODES_ANNOTATION, PUBLIC_PORT, parse_manifest};
use e2e::probe::{Responder, connect_count};
use e2e::{Lab, LabOptions, Pod, PodSpec};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The manifest: three clusters (c1 with two nodes, c3 behind NAT), slices blue and green.
fn manifest() -> control::Manifest {
    let mut text = String::new();
    for (c, nodes, nat) in [("c1", 2, false), ("c2", 1, false), ("c3", 1, true)] {
        text += &format!(
            "apiVersion: slicenet.io/v1alpha1\nkind: MemberCluster\nmetadata:\n  name: {c}\n  annotations: \
             {{{NODES_ANNOTATION}: \"{nodes}\", {BEHIND_NAT_ANNOTATION}: \"{nat}\"}}\nspec: {{}}\n---\n"
        );
    }
    text += &format!(
        "apiVersion: slicenet.io/v1alpha1\nkind: SliceConfig\nmetadata: {{name: blue}}\nspec:\n  \
         sliceSubnet: 10.80.0.0/16\n  secondarySliceSubnet: fd00:80::/48\n  clusters: [c1, c2, c3]\n  \
         namespaces: [{{namespace: shop}}]\n  gateway: {{nodePort: {PUBLIC_PORT}, persistentKeepalive: 5, replicas: 1}}\n---\n\
         apiVersion: slicenet.io/v1alpha1\nkind: SliceConfig\nmetadata: {{name: green}}\nspec:\n  \
         sliceSubnet: fd00:81::/48\n  clusters: [c1, c2, c3]\n  namespaces: [{{namespace: web}}]\n  \
         gateway: {{port: 51821, nodePort: {}, persistentKeepalive: 5, replicas: 1}}\n",
        PUBLIC_PORT + 1
    );
    parse_manifest(&text).expect("the test's YAML parses")
}

/// `lab` with its control plane and the manifest applied (both slices up), in the test's guard.
fn up(lab: Lab) -> Env {
    let mut env = Env { cp: ControlPlane::new(), lab: Some(lab) };
    env.apply(&manifest()).unwrap_or_else(|e| panic!("{e:#}"));
    env
}

fn run(lab: &Lab, cluster: &str, node: &str, ns: &str, name: &str) -> Pod {
    control::run_pod_retrying(lab.node(cluster, node), &PodSpec::new(ns, name), WAIT).unwrap()
}

/// Pods of slice `blue`: two in c1 (one per node), one in c2, one in c3.
fn blue_pods(lab: &Lab) -> [Pod; 4] {
    [
        run(lab, "c1", "n1", "shop", "a1"),
        run(lab, "c1", "n2", "shop", "a2"),
        run(lab, "c2", "n1", "shop", "b"),
        run(lab, "c3", "n1", "shop", "c"),
    ]
}

/// `from` pings every slice address of `to` (each family) within [`WAIT`].
fn assert_reaches(cp: &ControlPlane, lab: &Lab, from: &Pod, to: &Pod) {
    for addr in slice_addrs(to) {
        assert!(
            ping_within(from, addr, WAIT),
            "ping {} → {} ({addr}):\n{}",
            from.lab_name(),
            to.lab_name(),
            cp.diagnose(lab)
        );
    }
}

/// The pod's addresses on `slice0`, IPv4 first.
fn slice_addrs(pod: &Pod) -> Vec<IpAddr> {
    pod.ips("slice0").unwrap_or_default()
}

fn ping(pod: &Pod, to: IpAddr) -> bool {
    let family = if to.is_ipv6() { "-6" } else { "-4" };
    pod.exec(&["ping", family, "-n", "-q", "-c", "1", "-W", "1", &to.to_string()]).is_ok_and(|o| o.status.success())
}

fn ping_within(pod: &Pod, to: IpAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ping(pod, to) {
            return true;
        }
    }
    false
}

/// 5 MB of TCP from `client` to `server`'s `to` with iperf3 (retried while the server starts).
fn transfer(server: &Pod, client: &Pod, to: IpAddr, port: u16) -> Result<(), String> {
    let port = port.to_string();
    let mut srv = server.spawn(&["iperf3", "-s", "-1", "-p", &port]).map_err(|e| format!("{e:#}"))?;
    let mut last = String::new();
    for _ in 0..20 {
        let out = client
            .exec(&["timeout", "60", "iperf3", "-c", &to.to_string(), "-p", &port, "-n", "5M"])
            .map_err(|e| format!("{e:#}"))?;
        if out.status.success() {
            let _ = srv.stop();
            return Ok(());
        }
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("{last}\nserver: {}", srv.log_text()))
}

#[test]
fn dual_stack_and_ipv6_only_slices_cross_three_clusters() {
    let mut env = up(Lab::new("hx6").expect("lab (needs root)"));
    let Env { cp, lab } = &mut env;
    let lab = lab.as_mut().expect("the lab");
    let blue = blue_pods(lab);
    let green =
        [run(lab, "c1", "n2", "web", "g1"), run(lab, "c2", "n1", "web", "g2"), run(lab, "c3", "n1", "web", "g3")];
    for p in &blue {
        let a = slice_addrs(p);
        assert!(a.len() == 2 && a[0].is_ipv4() && a[1].is_ipv6(), "{}: {a:?}", p.lab_name());
    }
    for p in &green {
        let a = slice_addrs(p);
        assert!(a.len() == 1 && a[0].is_ipv6(), "{}: {a:?}", p.lab_name());
    }

    // Every pod reaches every pod of its slice in another cluster over each family.
    for pods in [&blue[..], &green[..]] {
        for from in pods {
            for to in pods.iter().filter(|p| p.cluster != from.cluster) {
                assert_reaches(cp, lab, from, to);
            }
        }
    }
    // The IPv6 prefixes of the other clusters are routed in the routers (to the gateway pod's
    // IPv6 address or over the VXLAN to its node), beside the IPv4 ones.
    for (slice, want) in [("blue", "fd00:80:0:1000::/52"), ("green", "fd00:81:0:2000::/52")] {
        for node in lab.cluster("c1").nodes() {
            let ns = format!("{}{slice}", node.router_netns_prefix());
            let out = std::process::Command::new("ip").args(["-6", "-n", &ns, "route", "show", want]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(want.trim_end_matches("/52")),
                "{slice} on c1/{}: no route to {want}: {text}",
                node.name()
            );
        }
    }
    eprintln!(
        "blue a1 {:?}, c {:?}; green g1 {:?}, g3 {:?}",
        slice_addrs(&blue[0]),
        slice_addrs(&blue[3]),
        slice_addrs(&green[0]),
        slice_addrs(&green[2])
    );
    // TCP over IPv6 from c1 to the cluster behind NAT and back, in both slices.
    let v6 = |p: &Pod| slice_addrs(p).into_iter().find(IpAddr::is_ipv6).expect("an IPv6 address");
    transfer(&blue[3], &blue[0], v6(&blue[3]), 7101).unwrap_or_else(|e| panic!("blue c1 → c3 over IPv6: {e}"));
    transfer(&blue[0], &blue[3], v6(&blue[0]), 7102).unwrap_or_else(|e| panic!("blue c3 → c1 over IPv6: {e}"));
    transfer(&green[2], &green[0], v6(&green[2]), 7103).unwrap_or_else(|e| panic!("green c1 → c3: {e}"));

    // A MultiNetworkPolicy on the dual-stack slice holds in both families: in c2, `server`
    // admits only pods labelled role=client; c1's `client` reaches it over IPv4 and IPv6, c1's
    // `other` over neither. (Pods applied as a user applies them, so that the workers' pod
    // directory lists both of their addresses.)
    let pod_yaml = |name: &str, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{{labels}}}}}\nspec: {{containers: [{{name: app}}]}}\n---\n"
        )
    };
    let c1_pods = parse_objects(&(pod_yaml("client", "role: client") + &pod_yaml("other", "role: other"))).unwrap();
    cp.apply_in(lab, "c1", &c1_pods).unwrap_or_else(|e| panic!("{e:#}"));
    cp.apply_in(lab, "c2", &parse_objects(&pod_yaml("server", "app: server")).unwrap())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let policy = json!({
        "apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
        "metadata": {"name": "server-ingress", "namespace": "shop",
                     "annotations": {slice_api::policy::POLICY_FOR_ANNOTATION: slice_api::multus::nad_name("blue")}},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}
    });
    cp.apply_in(lab, "c2", &[policy]).unwrap_or_else(|e| panic!("{e:#}"));
    let (client, other, server) = (
        cp.pod("c1", "shop", "client").expect("client").clone(),
        cp.pod("c1", "shop", "other").expect("other").clone(),
        cp.pod("c2", "shop", "server").expect("server").clone(),
    );
    let client_v6 = v6(&client).to_string();
    // Enforced: c2's router table is its configuration's, and that names the client's IPv6.
    let deadline = Instant::now() + WAIT;
    loop {
        cp.tick(lab).expect("a round");
        let (want, got) = control::policy_tables(lab.node("c2", "n1"), "blue").expect("the tables");
        if want == got && serde_json::to_string(&want).is_ok_and(|w| w.contains(&client_v6)) {
            break;
        }
        assert!(Instant::now() < deadline, "the policy is not in force with {client_v6}: want {want:?}\ngot {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for addr in slice_addrs(&server) {
        assert!(ping_within(&client, addr, WAIT), "the client must reach the server at {addr}:\n{}", cp.diagnose(lab));
        assert!(!ping(&other, addr), "another pod reached the isolated server at {addr}");
    }

    // A pod of one slice reaches no pod of the other, in its cluster or another.
    for (from, to) in [(&blue[0], &green[1]), (&blue[2], &green[0]), (&green[0], &blue[2]), (&green[2], &blue[1])] {
        for addr in slice_addrs(to) {
            assert!(!ping(from, addr), "{} reached {} ({addr}) of another slice", from.lab_name(), to.lab_name());
        }
    }
}

/// Issue 17: a dual-stack slice and an IPv6-only slice over an IPv6 WAN, one cluster behind
/// NAT66, and VXLAN over an IPv6 underlay inside a cluster.
#[test]
fn slices_cross_an_ipv6_wan_and_an_ipv6_underlay() {
    let mut env = up(Lab::with_options("hu6", LabOptions::dual_stack()).expect("lab (needs root)"));
    let Env { cp, lab } = &mut env;
    let lab = lab.as_mut().expect("the lab");
    let blue = blue_pods(lab);
    let green =
        [run(lab, "c1", "n1", "web", "g0"), run(lab, "c1", "n2", "web", "g1"), run(lab, "c3", "n1", "web", "g3")];

    // Every pod reaches every other pod of its slice, in its cluster across the IPv6 underlay
    // and in the other clusters across the IPv6 WAN, over each family it has.
    for pods in [&blue[..], &green[..]] {
        for from in pods {
            for to in pods.iter().filter(|p| p.lab_name() != from.lab_name()) {
                assert_reaches(cp, lab, from, to);
            }
        }
    }

    // The node agents' VXLAN runs over the IPv6 underlay.
    for node in lab.cluster("c1").nodes() {
        for slice in ["blue", "green"] {
            let ns = format!("{}{slice}", node.router_netns_prefix());
            let out =
                std::process::Command::new("ip").args(["-d", "-n", &ns, "link", "show", "type", "vxlan"]).output();
            let text = String::from_utf8_lossy(&out.expect("ip link").stdout).into_owned();
            let local = format!("local {}", node.vxlan_address());
            assert!(node.vxlan_address().is_ipv6() && text.contains(&local), "{ns}: want {local}: {text}");
        }
    }

    // The tunnels run over the IPv6 WAN: the public clusters forward their IPv6 address to the
    // gateway pods' IPv6 addresses, every endpoint a gateway holds is an IPv6 WAN address, and
    // c3's gateways are seen at c3's edge (NAT66), which forwards nothing in.
    let c1 = lab.cluster("c1");
    let forwards = c1.forwards().expect("c1's forwards");
    assert!(forwards.iter().any(|f| f.contains("dnat to [fd44:")), "c1 forwards no IPv6: {forwards:?}");
    assert!(lab.cluster("c3").forwards().expect("c3's forwards").is_empty(), "c3 is behind NAT66");
    let c3_public = lab.cluster("c3").public_address6().expect("c3's IPv6 address").to_string();
    for slice in ["blue", "green"] {
        let interface = cp.gateway_interface(slice, "c1").expect("c1's gateway");
        let endpoints = cp.gateway_wg(slice, "c1", &["show", &interface, "endpoints"]).expect("wg show");
        let held: Vec<&str> = endpoints.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
        assert!(held.len() == 2 && held.iter().all(|e| e.starts_with("[2001:db8:2::")), "{slice} c1: {endpoints}");
        assert!(
            held.iter().any(|e| e.starts_with(&format!("[{c3_public}]:"))),
            "{slice}: c3 not via NAT66: {endpoints}"
        );
    }

    // TCP over IPv6 to the cluster behind NAT66 and back.
    let v6 = |p: &Pod| slice_addrs(p).into_iter().find(IpAddr::is_ipv6).expect("an IPv6 address");
    transfer(&blue[3], &blue[1], v6(&blue[3]), 7111).unwrap_or_else(|e| panic!("blue c1 → c3 over IPv6: {e}"));
    transfer(&green[1], &green[2], v6(&green[1]), 7112).unwrap_or_else(|e| panic!("green c3 → c1: {e}"));

    // A multi-cluster service on the IPv6-only slice: exported from c1 and c2, its ClusterSetIP
    // an IPv6 address of the slice (AAAA from slice-dns in c3), connections to it reach both.
    for (cluster, n) in [("c1", 0), ("c2", 1)] {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: api, namespace: web}}\n\
             spec: {{selector: {{app: api}}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: api-{n}, namespace: web, labels: {{app: api}}}}\n\
             spec: {{containers: [{{name: api, ports: [{{name: http, containerPort: 8080}}]}}]}}\n---\n\
             apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata: {{name: api, namespace: web}}\n"
        );
        cp.apply_in(lab, cluster, &parse_objects(&text).unwrap()).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let client =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: web}\nspec: {containers: [{name: c}]}\n";
    cp.apply_in(lab, "c3", &parse_objects(client).unwrap()).unwrap_or_else(|e| panic!("{e:#}"));
    let _servers: Vec<Responder> = [("c1", "api-0"), ("c2", "api-1")]
        .into_iter()
        .map(|(c, p)| Responder::start(cp.pod(c, "web", p).expect("api pod"), 8080, c).expect("responder"))
        .collect();
    let deadline = Instant::now() + WAIT;
    let vip = loop {
        let argv = ["dig", "+short", "+time=2", "+tries=2", "AAAA", "api.web.svc.clusterset.local"];
        let out = cp.exec(lab, "c3", "web", "client", &argv).unwrap_or_else(|e| panic!("{e:#}"));
        let answer: Vec<IpAddr> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.parse().ok()).collect();
        if let [vip] = answer[..] {
            break vip;
        }
        assert!(Instant::now() < deadline, "no AAAA for api: {answer:?}\n{}", cp.diagnose(lab));
        cp.tick(lab).expect("a round");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!("fd00:81::/48".parse::<ipnet::IpNet>().unwrap().contains(&vip), "ClusterSetIP {vip}");
    let seen = connect_count(cp.pod("c3", "web", "client").expect("client"), SocketAddr::new(vip, 80), 40);
    assert_eq!(seen.values().sum::<usize>(), 40, "{seen:?}");
    assert!(seen.get("c1").is_some_and(|n| *n > 0) && seen.get("c2").is_some_and(|n| *n > 0), "{seen:?}");

    // Still two slices: no pod of one reaches a pod of the other.
    for (from, to) in [(&blue[0], &green[1]), (&green[2], &blue[3]), (&green[0], &blue[2])] {
        for addr in slice_addrs(to) {
            assert!(!ping(from, addr), "{} reached {} ({addr}) of another slice", from.lab_name(), to.lab_name());
        }
    }
}
