//! MultiNetworkPolicy on the slice, end to end over two clusters, in the shape of the upstream
//! NetworkPolicy e2e truth table: namespaces x/y/z (labelled `ns=<name>` in both clusters),
//! pods a/b/c in each (labelled `pod=<name>`, named ports `web` = TCP 80 on a and b, 81 on c,
//! and `dns` = UDP 81), spread over c1 and c2 so that more than half of the probes cross the
//! gateways; ports 80/81 × TCP/UDP; every cell measured through a real connection to a
//! listener of this test's own that answers with its pod, protocol and port, so an answer
//! proves which pod and port it reached.
//!
//! Policies are applied as a user applies them (`ControlPlane::apply_in`, `kubectl apply
//! --context`), in the cluster that holds them, and flow as in a cluster: the workers hand them
//! to their node agents, the hub carries each cluster's pod directory to the others, the agents
//! compile them into their routers' tables. **Which policies govern which pods:** a policy is a
//! namespaced object of the cluster that holds it and selects pods of that cluster only (one
//! scenario shows a policy in c1 leaving the same namespace's pods in c2 open); its peers match
//! pods in any cluster of the slice, through the pod directory. So a cell's egress half is
//! decided by the policies of the source's cluster and its ingress half by those of the
//! destination's cluster.
//!
//! Each cell's expected outcome comes from the MODEL in `slice-node/tests/support/model.rs`
//! (std and serde_json only, no code of the compiler). Before probing, the test waits until the
//! table in every router is the one its agent's current configuration yields (the agent applies
//! its file asynchronously; without that wait a cell that should be denied could pass before
//! the rules land). A denied cell is one without an answer by a deadline far above any real
//! answer; all cells of a scenario are probed at once, so a scenario costs one deadline; an
//! allowed cell that got no answer is probed again until a longer deadline before it counts as
//! denied. Only outcomes are asserted.
//!
//! After the table: a pod's label change in one cluster changes what the other enforces, a
//! forged source is dropped under allow-all, and a policy change under load (an allowed
//! connection across the gateways carrying round trips back to back) leaves the established
//! connection going while a new one gets nothing through once the change is in force.
//!
//! Needs root and the binaries (`slice-cni`, `slice-operator`, `slice-gateway`); fails (does
//! not skip) without them. The lab is torn down on every path (a guard deletes the slice and
//! the lab's `Drop` removes the rest when a check panics).

#[path = "../../slice-node/tests/support/model.rs"]
mod model;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use e2e::Lab;
use e2e::control::{self, ControlPlane, workloads};
use e2e::probe::{EchoServer, Load, ProbeOutcome, Responder, Transport, UdpResponder, probe_many};
use model::Proto;
use serde_json::{Value, json};

const PREFIX: &str = "hrpol";
const SLICE: &str = "blue";
const CLUSTERS: [&str; 2] = ["c1", "c2"];
const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];
const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];
/// A probe without an answer by then is denied: far above any real answer here.
const DEADLINE: Duration = Duration::from_secs(3);
/// How long an allowed cell without an answer is probed again before it counts as denied.
const ALLOWED_DEADLINE: Duration = Duration::from_secs(20);
/// How long the agents get to bring their tables to their configuration.
const ENFORCED_DEADLINE: Duration = Duration::from_secs(30);

/// One pod of the table: where it runs and what policies see of it.
#[derive(Debug, Clone)]
struct TablePod {
    cluster: &'static str,
    name: &'static str,
    model: model::Pod,
}

impl TablePod {
    fn id(&self) -> String {
        format!("{}/{}@{}", self.model.ns, self.name, self.cluster)
    }
}

/// The cluster of pod number `i` (x/a, x/b, … z/c): alternately c1 and c2.
fn cluster_of(i: usize) -> &'static str {
    CLUSTERS[i % 2]
}

/// The named ports of pod `name`: `web` is TCP 80 on a and b and 81 on c (a named port
/// resolves per pod), `dns` is UDP 81.
fn named_ports(name: &str) -> Vec<(String, u16, String)> {
    let web = if name == "c" { 81 } else { 80 };
    vec![("web".into(), web, "TCP".into()), ("dns".into(), 81, "UDP".into())]
}

/// The Namespaces (in every cluster) and the Pods of `cluster`.
fn workload_objects(cluster: &str) -> Vec<Value> {
    let mut text = String::new();
    for ns in NAMESPACES {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n---\n"
        ));
    }
    for (i, (ns, name)) in NAMESPACES.iter().flat_map(|ns| PODS.map(|p| (*ns, p))).enumerate() {
        if cluster_of(i) != cluster {
            continue;
        }
        let ports: Vec<String> = named_ports(name)
            .iter()
            .map(|(n, port, proto)| format!("{{name: {n}, containerPort: {port}, protocol: {proto}}}"))
            .collect();
        text.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\n\
             spec: {{containers: [{{name: server, ports: [{}]}}]}}\n---\n",
            ports.join(", ")
        ));
    }
    workloads::parse_objects(&text).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A policy as the model reads it (`podSelector` made explicit: the object needs it).
fn policy(ns: &str, name: &str, mut spec: Value) -> Value {
    if spec.get("podSelector").is_none() {
        spec["podSelector"] = json!({});
    }
    json!({"namespace": ns, "name": name, "spec": spec})
}

/// A policy and the cluster that holds it.
#[derive(Debug, Clone)]
struct Placed {
    cluster: &'static str,
    policy: Value,
}

/// The same policy in both clusters (it governs the namespace's pods wherever they run).
fn both(ns: &str, name: &str, spec: Value) -> Vec<Placed> {
    CLUSTERS.iter().map(|c| Placed { cluster: c, policy: policy(ns, name, spec.clone()) }).collect()
}

/// A policy in one cluster only.
fn only(cluster: &'static str, ns: &str, name: &str, spec: Value) -> Vec<Placed> {
    vec![Placed { cluster, policy: policy(ns, name, spec) }]
}

/// The MultiNetworkPolicy object of a model policy, for the slice's network.
fn object(policy: &Value) -> Value {
    json!({
        "apiVersion": "k8s.cni.cncf.io/v1beta1",
        "kind": "MultiNetworkPolicy",
        "metadata": {
            "name": policy["name"], "namespace": policy["namespace"],
            "annotations": {slice_api::policy::POLICY_FOR_ANNOTATION: slice_api::multus::nad_name(SLICE)},
        },
        "spec": policy["spec"],
    })
}

/// The scenarios, in the order applied, each a whole set of policies (the last three: a stack,
/// its update, a delete). `addr` gives a pod's slice address by `ns/name`.
#[allow(clippy::too_many_lines)] // A table of scenarios.
fn scenarios(addr: &dyn Fn(&str) -> Ipv4Addr) -> Vec<(&'static str, Vec<Placed>)> {
    let stack: Vec<Placed> = [
        both("x", "deny-all", json!({})),
        both(
            "x",
            "a-from-y",
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        ),
        both("x", "tcp-81", json!({"ingress": [{"ports": [{"port": 81}]}]})),
    ]
    .concat();
    let mut updated = stack.clone();
    for p in &mut updated {
        if p.policy["name"] == "a-from-y" {
            p.policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["ns"] = json!("z");
        }
    }
    let deleted: Vec<Placed> = updated.iter().filter(|p| p.policy["name"] != "tcp-81").cloned().collect();
    vec![
        ("no policy", vec![]),
        ("default deny both ways in x", both("x", "deny", json!({"policyTypes": ["Ingress", "Egress"]}))),
        ("a policy of c1 governs c1's pods only", only("c1", "y", "deny", json!({}))),
        ("allow all in x", both("x", "all", json!({"ingress": [{}], "egress": [{}]}))),
        (
            "pod selector with labels",
            both(
                "x",
                "a-from-b",
                json!({"podSelector": {"matchLabels": {"pod": "a"}},
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            ),
        ),
        (
            "pod and namespace selectors with expressions",
            both(
                "y",
                "expr",
                json!({
                "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]},
                "ingress": [{"from": [{
                    "namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]},
                    "podSelector": {"matchExpressions": [
                        {"key": "pod", "operator": "Exists"}, {"key": "pod", "operator": "NotIn", "values": ["a"]}]}
                }]}]}),
            ),
        ),
        (
            "namespace selector alone",
            both("y", "from-z", json!({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]})),
        ),
        (
            "peers ORed",
            both(
                "x",
                "or",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                    {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            ),
        ),
        (
            "peer selectors ANDed",
            both(
                "x",
                "and",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
                    {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            ),
        ),
        (
            "ports and endPort",
            both(
                "x",
                "ports",
                json!({"ingress": [{"ports": [
                    {"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 80, "endPort": 81}]}]}),
            ),
        ),
        (
            "named ports, ingress and egress",
            [
                both("x", "web", json!({"ingress": [{"ports": [{"port": "web"}]}]})),
                both(
                    "y",
                    "out-dns",
                    json!({"policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}],
                           "ports": [{"protocol": "UDP", "port": "dns"}, {"port": "web"}]}]}),
                ),
            ]
            .concat(),
        ),
        (
            "ipBlock with except, and another peer",
            both(
                "z",
                "block",
                json!({"ingress": [{"from": [
                    {"ipBlock": {"cidr": "10.80.0.0/16", "except": [format!("{}/32", addr("x/b")), format!("{}/32", addr("z/a"))]}},
                    {"podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
            ),
        ),
        (
            "egress only",
            both(
                "y",
                "out",
                json!({"policyTypes": ["Egress"], "egress": [
                    {"to": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"protocol": "UDP"}]},
                    {"to": [{"ipBlock": {"cidr": format!("{}/32", addr("x/b"))}}]}]}),
            ),
        ),
        ("stacked policies", stack),
        ("a policy updated", updated),
        ("a policy deleted", deleted),
    ]
}

/// The lab and its control plane; on a panic the slice is deleted (best effort) before the lab's
/// `Drop` removes the rest.
struct Env {
    cp: ControlPlane,
    lab: Option<Lab>,
}

impl Env {
    fn lab(&self) -> &Lab {
        self.lab.as_ref().expect("the lab until the end")
    }

    fn finish(mut self) {
        let mut lab = self.lab.take().expect("the lab");
        self.cp.delete_all(&mut lab).unwrap_or_else(|e| panic!("{e:#}"));
        lab.teardown().expect("teardown");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.as_mut()
            && let Err(e) = self.cp.delete_all(lab)
        {
            eprintln!("deleting the slice after a failure: {e:#}");
        }
    }
}

/// Waits until the table in the router of every node of both clusters is the one its agent's
/// configuration file yields now (the agent applies the file asynchronously). The compiler is
/// used here only to know when the agents are done; what is expected of traffic comes from the
/// model.
fn wait_enforced(lab: &Lab, what: &str) {
    let deadline = Instant::now() + ENFORCED_DEADLINE;
    for cluster in CLUSTERS {
        for node in lab.cluster(cluster).nodes() {
            loop {
                let (want, got) = e2e::control::policy_tables(node, SLICE).unwrap_or_else(|e| panic!("{what}: {e:#}"));
                if got == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: the table of {} is not its configuration's after {ENFORCED_DEADLINE:?}:\n{}",
                    node.netns_name(),
                    table_difference(want.as_deref(), got.as_deref())
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What one table has that the other has not, one object a line.
fn table_difference(want: Option<&[Value]>, got: Option<&[Value]>) -> String {
    let (want, got) = (want.unwrap_or_default(), got.unwrap_or_default());
    let missing = want.iter().filter(|o| !got.contains(o)).map(|o| format!("  wanted, not listed: {o}"));
    let extra = got.iter().filter(|o| !want.contains(o)).map(|o| format!("  listed, not wanted: {o}"));
    missing.chain(extra).collect::<Vec<_>>().join("\n")
}

/// One cell of the table: source, destination, protocol, port.
type Cell = (usize, usize, Proto, u16);

fn tag(pod: &TablePod, proto: Proto, port: u16) -> String {
    format!("{}/{} {}/{port}", pod.model.ns, pod.name, proto.name())
}

fn transport(proto: Proto) -> Transport {
    match proto {
        Proto::Tcp => Transport::Tcp,
        Proto::Udp => Transport::Udp,
    }
}

/// Probes `cells` at once (one thread per source pod) and returns each one's outcome.
fn probe(cp: &ControlPlane, pods: &[TablePod], cells: &[Cell]) -> BTreeMap<Cell, ProbeOutcome> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..pods.len())
            .map(|src| {
                let mine: Vec<Cell> = cells.iter().filter(|c| c.0 == src).copied().collect();
                let targets: Vec<(SocketAddrV4, Transport)> = mine
                    .iter()
                    .map(|(_, d, proto, port)| (SocketAddrV4::new(pods[*d].model.address, *port), transport(*proto)))
                    .collect();
                let from = cp.pod(pods[src].cluster, &pods[src].model.ns, pods[src].name).expect("the pod").clone();
                s.spawn(move || {
                    let results = if targets.is_empty() { Vec::new() } else { probe_many(&from, &targets, DEADLINE) };
                    mine.into_iter().zip(results).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a probe thread")).collect()
    })
}

/// Probes every cell and returns those that differ from the model, described, and how many
/// cells the model allows of how many.
fn mismatches(cp: &ControlPlane, pods: &[TablePod], placed: &[Placed]) -> (Vec<String>, usize, usize) {
    let governing = |cluster: &str| -> Vec<Value> {
        placed.iter().filter(|p| p.cluster == cluster).map(|p| p.policy.clone()).collect()
    };
    let by_cluster: BTreeMap<&str, Vec<Value>> = CLUSTERS.iter().map(|c| (*c, governing(c))).collect();
    let all: Vec<Cell> = (0..pods.len())
        .flat_map(|s| (0..pods.len()).filter(move |d| *d != s).map(move |d| (s, d)))
        .flat_map(|(s, d)| PROTOS.into_iter().flat_map(move |p| PORTS.map(|port| (s, d, p, port))))
        .collect();
    let want: BTreeMap<Cell, bool> = all
        .iter()
        .map(|&(s, d, proto, port)| {
            let (src, dst) = (&pods[s], &pods[d]);
            let w = model::expect(
                Some(&by_cluster[src.cluster]),
                Some(&by_cluster[dst.cluster]),
                &src.model,
                &dst.model,
                proto,
                port,
            );
            ((s, d, proto, port), w)
        })
        .collect();
    let mut got = probe(cp, pods, &all);
    // An allowed cell without an answer is probed again (a lost packet on a busy machine is no
    // denial) until the longer deadline.
    let end = Instant::now() + ALLOWED_DEADLINE;
    loop {
        let unanswered: Vec<Cell> = all.iter().filter(|c| want[c] && matches!(got[c], Ok(None))).copied().collect();
        if unanswered.is_empty() || Instant::now() > end {
            break;
        }
        got.extend(probe(cp, pods, &unanswered));
    }
    let mut out = Vec::new();
    for cell in &all {
        let (s, d, proto, port) = *cell;
        let ok = match &got[cell] {
            Ok(Some(answer)) => want[cell] && *answer == tag(&pods[d], proto, port),
            Ok(None) => !want[cell],
            Err(_) => false,
        };
        if !ok {
            out.push(format!(
                "{} -> {} {}/{port}: expected {}, got {:?}",
                pods[s].id(),
                pods[d].id(),
                proto.name(),
                if want[cell] { "allowed" } else { "denied" },
                got[cell]
            ));
        }
    }
    (out, want.values().filter(|w| **w).count(), all.len())
}

/// Makes `placed` the policies of the slice: deletes those of `current` it does not hold, applies
/// its own in their clusters, and waits until every router enforces them.
fn apply_policies(env: &mut Env, current: &[Placed], placed: &[Placed], what: &str) {
    let key = |p: &Placed| (p.cluster, p.policy["namespace"].clone(), p.policy["name"].clone());
    for cluster in CLUSTERS {
        let gone: Vec<Value> = current
            .iter()
            .filter(|p| p.cluster == cluster && !placed.iter().any(|n| key(n) == key(p)))
            .map(|p| object(&p.policy))
            .collect();
        let lab = env.lab.as_ref().expect("the lab");
        if !gone.is_empty() {
            env.cp.delete_in(lab, cluster, &gone).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        }
        let objects: Vec<Value> = placed.iter().filter(|p| p.cluster == cluster).map(|p| object(&p.policy)).collect();
        if !objects.is_empty() {
            env.cp.apply_in(lab, cluster, &objects).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        }
    }
    wait_enforced(env.lab(), what);
}

#[test]
#[allow(clippy::too_many_lines)] // One story: the lab is built once for all of it.
fn the_truth_table_holds_across_two_clusters() {
    e2e::require_root().expect("root");
    let lab = Lab::new(PREFIX).expect("lab (needs root; build the bins first)");
    let mut env = Env { cp: ControlPlane::new(), lab: Some(lab) };
    let manifest = control::across_manifest(SLICE, "10.80.0.0/16", &NAMESPACES, &[("c1", 1, false), ("c2", 1, false)])
        .expect("manifest");
    {
        let Env { cp, lab } = &mut env;
        let lab = lab.as_mut().expect("the lab");
        cp.apply(lab, &manifest).unwrap_or_else(|e| panic!("{e:#}\n{}", cp.diagnose(lab)));
        for cluster in CLUSTERS {
            cp.apply_in(lab, cluster, &workload_objects(cluster)).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    let mut pods = Vec::new();
    for (i, (ns, name)) in NAMESPACES.iter().flat_map(|ns| PODS.map(|p| (*ns, p))).enumerate() {
        let cluster = cluster_of(i);
        let pod = env.cp.pod(cluster, ns, name).unwrap_or_else(|| panic!("no pod {ns}/{name} in {cluster}"));
        let address = pod.ipv4("slice0").unwrap_or_else(|e| panic!("{}: {e:#}", pod.lab_name()));
        pods.push(TablePod {
            cluster,
            name,
            model: model::Pod {
                ns: ns.to_owned(),
                ns_labels: BTreeMap::from([("ns".to_owned(), ns.to_owned())]),
                labels: BTreeMap::from([("pod".to_owned(), name.to_owned())]),
                address,
                named: named_ports(name),
            },
        });
    }
    // Listeners, dropped (stopped) before the lab goes.
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for p in &pods {
        let pod = env.cp.pod(p.cluster, &p.model.ns, p.name).expect("the pod");
        for port in PORTS {
            tcp.push(Responder::start(pod, port, &tag(p, Proto::Tcp, port)).expect("TCP responder"));
            udp.push(UdpResponder::start(pod, port, &tag(p, Proto::Udp, port)).expect("UDP responder"));
        }
    }
    let addresses: BTreeMap<String, Ipv4Addr> =
        pods.iter().map(|p| (format!("{}/{}", p.model.ns, p.name), p.model.address)).collect();
    let addr = |id: &str| *addresses.get(id).unwrap_or_else(|| panic!("no pod {id}"));

    let mut failures = Vec::new();
    let mut current: Vec<Placed> = Vec::new();
    for (name, placed) in scenarios(&addr) {
        apply_policies(&mut env, &current, &placed, name);
        let (wrong, allowed, cells) = mismatches(&env.cp, &pods, &placed);
        eprintln!(
            "scenario {name:?}: {allowed} of {cells} cells allowed by the model, {} measured otherwise",
            wrong.len()
        );
        if !wrong.is_empty() {
            failures.push(format!("scenario {name:?}: {} cell(s) wrong:\n  {}", wrong.len(), wrong.join("\n  ")));
        }
        current = placed;
    }

    // A label change of a pod in c2 changes what c1's node enforces: x/a (c1) admits only
    // pods labelled role=client, of any namespace; y/a (c2) gets the label.
    let client_only = only(
        "c1",
        "x",
        "clients",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    );
    apply_policies(&mut env, &current, &client_only, "clients only");
    let (before, _, _) = mismatches(&env.cp, &pods, &client_only);
    failures.extend(before.into_iter().map(|w| format!("clients only, before the label: {w}")));
    let y_a = pods.iter().position(|p| p.model.ns == "y" && p.name == "a").expect("y/a");
    assert_eq!(pods[y_a].cluster, "c2");
    let path = "/api/v1/namespaces/y/pods/a";
    let mut object = env.cp.api().get("c2".to_owned(), path).expect("the Pod object of y/a");
    object["metadata"]["labels"]["role"] = json!("client");
    env.cp.apply_in(env.lab.as_ref().expect("the lab"), "c2", &[object]).unwrap_or_else(|e| panic!("{e:#}"));
    let x_a = pods.iter().position(|p| p.model.ns == "x" && p.name == "a").expect("x/a");
    let y_a_to_x_a = |pods: &[TablePod]| {
        let policies: Vec<Value> = client_only.iter().map(|p| p.policy.clone()).collect();
        model::expect(Some(&[]), Some(&policies), &pods[y_a].model, &pods[x_a].model, Proto::Tcp, 80)
    };
    assert!(!y_a_to_x_a(&pods), "the model denies y/a -> x/a before the label");
    pods[y_a].model.labels.insert("role".to_owned(), "client".to_owned());
    assert!(y_a_to_x_a(&pods), "the model admits y/a -> x/a after the label");
    wait_enforced(env.lab(), "after the label change");
    let (after, _, _) = mismatches(&env.cp, &pods, &client_only);
    failures.extend(after.into_iter().map(|w| format!("clients only, after the label: {w}")));

    // A pod cannot send from another pod's address, even where policy allows everything: x/a
    // (c1) takes x/b's address (a pod of c2, whose address does arrive at c1's router from the
    // gateway) and sends from it to y/b (c1) and y/a (c2), then from its own address; once the
    // genuine datagrams are in, the forged ones would be too.
    let allow_all = [
        both("x", "all", json!({"ingress": [{}], "egress": [{}]})),
        both("y", "all", json!({"ingress": [{}], "egress": [{}]})),
    ]
    .concat();
    apply_policies(&mut env, &client_only, &allow_all, "allow all in x and y");
    let x_b = pods.iter().position(|p| p.model.ns == "x" && p.name == "b").expect("x/b");
    let y_b = pods.iter().position(|p| p.model.ns == "y" && p.name == "b").expect("y/b");
    let forged = pods[x_b].model.address;
    let genuine = pods[x_a].model.address;
    let spoofer = env.cp.pod(pods[x_a].cluster, "x", "a").expect("x/a").clone();
    spoofer.exec_ok(&["ip", "addr", "add", &format!("{forged}/32"), "dev", "slice0"]).expect("a second address");
    // UDP responders: two per pod (80, 81), in pod order; what they got before is the probes'.
    let earlier: Vec<usize> = [y_b, y_a].iter().map(|t| udp[t * 2].sources().len()).collect();
    for target in [y_b, y_a] {
        let to = SocketAddrV4::new(pods[target].model.address, 80);
        for from in [forged, genuine] {
            e2e::probe::in_netns(&spoofer.netns_path, move || {
                let socket = std::net::UdpSocket::bind((from, 0)).expect("bind");
                socket.send_to(b"spoof", to).expect("send");
            })
            .join()
            .expect("the sending thread");
        }
    }
    for (target, earlier) in [y_b, y_a].into_iter().zip(earlier) {
        let responder = &udp[target * 2];
        let sources = || responder.sources().split_off(earlier);
        let end = Instant::now() + ALLOWED_DEADLINE;
        while !sources().iter().any(|s| s.ip() == genuine) {
            assert!(Instant::now() < end, "{}: the genuine datagram never came", pods[target].id());
            std::thread::sleep(Duration::from_millis(50));
        }
        let sources = sources();
        if sources.iter().any(|s| s.ip() == forged) {
            failures.push(format!("{}: a datagram from a forged source passed: {sources:?}", pods[target].id()));
        }
    }

    // Update under load: an allowed connection x/a (c1) → y/a (c2), across the gateways, carries
    // round trips without pause while y's policies turn to deny all ingress; once every router
    // enforces the change (the apply returned), a new connection gets nothing through (the
    // server accepts none) and the established one goes on.
    spoofer
        .exec_ok(&["ip", "addr", "del", &format!("{forged}/32"), "dev", "slice0"])
        .expect("the second address removed");
    let y_a_pod = env.cp.pod("c2", "y", "a").expect("y/a").clone();
    let echo = EchoServer::start(&y_a_pod, ECHO_PORT);
    let load = Load::start(&spoofer, SocketAddrV4::new(pods[y_a].model.address, ECHO_PORT));
    load.wait_for(10, "before the change");
    let deny_y = [both("x", "all", json!({"ingress": [{}], "egress": [{}]})), both("y", "deny", json!({}))].concat();
    apply_policies(&mut env, &allow_all, &deny_y, "y denies all ingress, under load");
    let at_change = load.count();
    let to = std::net::SocketAddr::from((pods[y_a].model.address, ECHO_PORT));
    let attempt = e2e::probe::in_netns(&spoofer.netns_path, move || {
        std::net::TcpStream::connect_timeout(&to, DEADLINE).map(drop).map_err(|e| e.kind())
    })
    .join()
    .expect("the connecting thread");
    if attempt != Err(std::io::ErrorKind::TimedOut) {
        failures.push(format!("a new connection x/a -> y/a after y denied all ingress: {attempt:?}"));
    }
    load.wait_for(at_change + 200, "after the change");
    let (round_trips, error) = load.stop();
    if let Some(e) = error {
        failures.push(format!("the established connection broke under the policy change: {e}"));
    }
    let accepted = echo.stop();
    if accepted != 1 {
        failures.push(format!("the echo server accepted {accepted} connections (1 expected: the established one)"));
    }
    eprintln!("under load: {round_trips} round trips, {at_change} before the change was enforced");

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(tcp);
    drop(udp);
    env.finish();
}

/// The port of the update-under-load connection.
const ECHO_PORT: u16 = 7000;
