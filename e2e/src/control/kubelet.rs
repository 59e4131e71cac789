//! What runs a member cluster's objects, for the lab: the parts of Kubernetes that turn the
//! objects the worker writes into processes and kernel state, kept as small as the lab allows.
//!
//! - **Node agents' ConfigMaps** (`slicenet-node-<node>` in `slicenet-system`): the node
//!   agent's configuration, written to the lab node agent's config file. The node-local paths
//!   (state dir, netns dir, router namespace prefix) are the lab node's: in a cluster every node
//!   has its own filesystem and the same paths, in the lab the nodes share one.
//! - **Gateway StatefulSets** (`slicenet-gateway`, issue 13): a pod per ordinal,
//!   `<set>-<ordinal>` (as the StatefulSet controller names them, with its
//!   `statefulset.kubernetes.io/pod-name` label), placed as the scheduler would: on the
//!   cluster's nodes in order, and with the template's required pod anti-affinity on
//!   `kubernetes.io/hostname` never beside another pod of the set; a replica that finds no node
//!   stays `Pending` with the scheduler's message in its `Pod` object. Each pod has the
//!   template's labels and annotations (the slice annotation makes slice-cni give it `slice0`)
//!   and runs the container's command and arguments, `$(VAR)` expanded from the container's
//!   `fieldRef: metadata.name` variables as a kubelet does, with two lab substitutions — the
//!   configuration path (the pod's file of the mounted Secret, written atomically as a mounted
//!   Secret changes) and the interface name (unique in the lab, since every gateway's WireGuard
//!   UAPI socket lands in the one host `/var/run/wireguard`). Its `Pod` object is published with
//!   `spec.nodeName`, `status.podIP`, `Ready` and the `network-status` annotation (what the node
//!   agent publishes in a cluster), so the worker finds its slice address and its metrics. When
//!   the template's command line changes (a QoS profile's DSCP class is a flag), a cluster rolls
//!   the pod; the lab replaces the process in the same pod (same network namespace and
//!   addresses), which is as much of a roll as the tunnels see. Fewer replicas: the pods of the
//!   ordinals beyond stop.
//! - **Gateway Services** (NodePort, one per replica): the edge forwards each Service's
//!   `nodePort` on the cluster's public address to the pod its selector picks (none behind
//!   NAT), as kube-proxy would.
//! - **Users' objects** (`super::workloads`): Pods through CRI with their status and
//!   network-status, and an EndpointSlice per Service with a selector.
//! - **DNS** (`super::dns`): slice-dns serving the cluster's MCS objects, and the cluster's
//!   resolver on every node.
//! - **Metrics**: the worker scrapes each gateway's `/metrics` at `podIP:9586` with its own
//!   scrape code, run inside the pod's network namespace (the pod network is not reachable
//!   from the test process).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use slice_api::crd::{GATEWAY_NAMESPACE, SYSTEM_NAMESPACE};
use slice_api::gateway::{arg, flag, uapi_socket};
use slice_api::names::{NETWORK_STATUS_ANNOTATION, SLICE_ANNOTATION};
use slice_api::node::NodeAgentConfig;
use slice_kube::memory::MemoryApi;
use slice_operator::worker::dnsprobe::{self, DnsSource};
use slice_operator::worker::objects::{self, NODE_CONFIG_KEY};
use slice_operator::worker::{MetricsSource, scrape};

use crate::{Cluster, Lab, Node, Pod, PodProcess, PodSpec};

/// One gateway replica's pod and process.
pub(crate) struct GatewayRun {
    pub pod: Pod,
    pub process: PodProcess,
    pub interface: String,
    pub slice: String,
    /// Its slice addresses, IPv4 first (one per family of the slice).
    pub slice_addresses: Vec<IpAddr>,
    /// The StatefulSet it belongs to and its ordinal there.
    pub set: String,
    pub ordinal: u32,
    /// Its pod's labels (what Services select).
    labels: serde_json::Map<String, Value>,
    /// The command line it runs (the template's, with the lab's substitutions).
    argv: Vec<String>,
    /// How often it was restarted after it exited.
    pub restarts: u32,
    /// How often its process was replaced because the template's command line changed.
    pub rolled: u32,
    config: PathBuf,
    /// The Pod object's path in the cluster's API.
    object: String,
}

/// What the lab runs for one member cluster.
#[derive(Default)]
pub(crate) struct Kubelet {
    /// Gateway replicas by pod name (`<set>-<ordinal>`).
    pub gateways: BTreeMap<String, GatewayRun>,
    /// The `Pod` objects of replicas that found no node, by pod name.
    pending: BTreeMap<String, String>,
    /// The configuration last written to each node's agent.
    agents: BTreeMap<String, NodeAgentConfig>,
    /// Edge forwards: public port → (pod address, pod port).
    forwards: BTreeMap<u16, (Ipv4Addr, u16)>,
    /// Gateways started so far (their interface names are numbered).
    started: usize,
    /// The users' pods and the Services' EndpointSlices.
    pub workloads: super::workloads::Workloads,
    /// slice-dns and the resolvers.
    pub dns: super::dns::ClusterDns,
}

/// Where each gateway's metrics are, for the workers' scrapes: (cluster, `podIP:port`) → the
/// pod's network namespace. By cluster: the lab's clusters have the same pod network (as
/// clusters with overlapping pod CIDRs do), so the same address is a different pod in each.
pub(crate) type MetricsAddresses = Arc<Mutex<BTreeMap<(String, SocketAddr), PathBuf>>>;

/// The worker's metrics source in the lab: its own scrape ([`scrape::fetch_metrics`]) made
/// from inside the gateway pod's network namespace, in a thread of its own; an address the
/// lab does not know is refused, as a port nobody listens on.
pub(crate) fn metrics_source(addresses: MetricsAddresses, cluster: &str) -> MetricsSource {
    let cluster = cluster.to_owned();
    Box::new(move |addr| {
        let netns = addresses.lock().expect("metrics addresses lock").get(&(cluster.clone(), addr)).cloned();
        let answer = match netns {
            None => Err(format!("connecting to {addr}: Connection refused (no such pod in the lab)")),
            Some(netns) => scrape_in(&netns, addr),
        };
        Box::pin(async move { answer })
    })
}

/// The worker's scrape of `addr`, made from inside the network namespace at `netns`.
///
/// # Errors
/// Why the metrics could not be read, as the worker words it.
pub(crate) fn scrape_in(netns: &std::path::Path, addr: SocketAddr) -> Result<String, String> {
    run_in(netns, async move {
        scrape::fetch_metrics(addr, scrape::TIMEOUT).await.map_err(|e| slice_api::error_chain::chain(&e))
    })
}

/// Runs `work` to its end on a runtime of its own in a thread that entered `netns`.
fn run_in<T: Send + 'static>(
    netns: &std::path::Path,
    work: impl std::future::Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    let netns = netns.to_owned();
    std::thread::spawn(move || -> Result<T, String> {
        let file = std::fs::File::open(&netns).map_err(|e| format!("{}: {e}", netns.display()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
        runtime.block_on(work)
    })
    .join()
    .unwrap_or_else(|_| Err("the thread panicked".to_owned()))
}

/// Where each cluster's slice-dns answers, for the workers' DNS checks: cluster → (the network
/// namespace of the cluster's first node, the slice-dns pod's address). Only clusters that run
/// slice-dns are here.
pub(crate) type DnsTargets = Arc<Mutex<BTreeMap<String, (PathBuf, SocketAddr)>>>;

/// The worker's DNS check in the lab: its own probe ([`dnsprobe::probe`]) of the slice-dns pod
/// behind the Service address it asks (the lab has no kube-proxy: the pod stands in for the
/// Service, as the resolvers' forwards do), from the cluster's first node; nothing in a cluster
/// that runs no slice-dns.
pub(crate) fn dns_source(targets: DnsTargets, cluster: &str) -> DnsSource {
    let cluster = cluster.to_owned();
    Box::new(move |_service| {
        let target = targets.lock().expect("dns targets lock").get(&cluster).cloned();
        let answer = target.map(|(netns, pod)| run_in(&netns, dnsprobe::probe(pod)));
        Box::pin(async move { answer })
    })
}

/// The node agent configuration of a lab node with nothing on it.
pub(crate) fn empty_agent_config(node: &Node) -> NodeAgentConfig {
    NodeAgentConfig {
        node: node.name().to_owned(),
        underlay_address: node.vxlan_address(),
        underlay_mtu: 1500,
        state_dir: node.state_dir(),
        netns_dir: crate::netns::NETNS_DIR.into(),
        router_netns_prefix: node.router_netns_prefix(),
        vxlan_port: slice_api::names::DEFAULT_VXLAN_PORT,
        slices: Vec::new(),
    }
}

/// The objects a lab cluster has before any slice: its Nodes (with their underlay address as
/// `InternalIP`) and the namespaces slicenet and the slices use.
pub(crate) fn cluster_objects(cluster: &Cluster, namespaces: &[String]) -> Vec<Value> {
    let mut out: Vec<Value> = cluster
        .nodes()
        .iter()
        .map(|n| {
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name()},
                   "status": {"addresses": [{"type": "InternalIP", "address": n.vxlan_address().to_string()}]}})
        })
        .collect();
    for ns in [SYSTEM_NAMESPACE, GATEWAY_NAMESPACE].into_iter().chain(namespaces.iter().map(String::as_str)) {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    out.extend(super::dns::cluster_objects());
    out
}

fn decode_secret(secret: &Value, key: &str) -> Result<String> {
    use base64::Engine as _;
    let data = secret["data"][key].as_str().with_context(|| format!("the Secret has no key {key}"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(data).context("the Secret's data is not base64")?;
    String::from_utf8(bytes).context("the Secret's data is not UTF-8")
}

/// Writes `text` to `path` with mode 0600 through a rename (a new inode, as a mounted Secret
/// changes), when it differs.
fn write_config(path: &std::path::Path, text: &str) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    Ok(true)
}

impl Kubelet {
    /// Makes the lab cluster run what its API holds. True when something changed.
    ///
    /// # Errors
    /// When a step fails; what was done so far stays recorded.
    pub fn step(
        &mut self,
        lab: &Lab,
        api: &MemoryApi<String>,
        cluster: &str,
        metrics: &MetricsAddresses,
        timeout: Duration,
    ) -> Result<bool> {
        let mut changed = self.agents(lab, api, cluster, timeout)?;
        changed |= self.gateways(lab, api, cluster, metrics, timeout)?;
        changed |= self.services(lab, api, cluster)?;
        changed |= self.workloads.step(lab, api, cluster)?;
        changed |= self.dns.step(lab, api, cluster, timeout)?;
        Ok(changed)
    }

    /// Node agent ConfigMaps → the lab agents' config files; waits until each applied.
    fn agents(&mut self, lab: &Lab, api: &MemoryApi<String>, cluster: &str, timeout: Duration) -> Result<bool> {
        let side = cluster.to_owned();
        let maps = api.list(&side, &format!("/api/v1/namespaces/{SYSTEM_NAMESPACE}/configmaps"));
        let mut written = Vec::new();
        for node in lab.cluster(cluster).nodes() {
            let map = maps
                .iter()
                .find(|m| m["metadata"]["name"] == slice_operator::worker::objects::node_config_name(node.name()));
            let mut config = empty_agent_config(node);
            if let Some(map) = map {
                let text = map["data"][NODE_CONFIG_KEY].as_str().unwrap_or_default();
                let from: NodeAgentConfig = serde_json::from_str(text)
                    .with_context(|| format!("{cluster}: the agent ConfigMap of {} does not parse", node.name()))?;
                // The node-local paths are the lab node's (see the module's documentation).
                config.slices = from.slices;
                config.underlay_mtu = from.underlay_mtu;
                config.vxlan_port = from.vxlan_port;
            }
            if self.agents.get(node.name()) == Some(&config) {
                continue;
            }
            config.validate().map_err(|e| anyhow::anyhow!("{cluster}/{}: {e}", node.name()))?;
            node.update_agent_config(&config)?;
            self.agents.insert(node.name().to_owned(), config.clone());
            written.push(config);
        }
        wait_agents(&written, timeout)?;
        Ok(!written.is_empty())
    }

    /// Gateway StatefulSets → a pod running `slice-gateway` per ordinal, their Pod objects.
    fn gateways(
        &mut self,
        lab: &Lab,
        api: &MemoryApi<String>,
        cluster: &str,
        metrics: &MetricsAddresses,
        timeout: Duration,
    ) -> Result<bool> {
        let side = cluster.to_owned();
        let sets = api.list(&side, &format!("/apis/apps/v1/namespaces/{GATEWAY_NAMESPACE}/statefulsets"));
        let secrets = api.list(&side, &format!("/api/v1/namespaces/{GATEWAY_NAMESPACE}/secrets"));
        // Each wanted pod: (set, ordinal) by pod name.
        let mut wanted: BTreeMap<String, (&Value, u32)> = BTreeMap::new();
        for set in &sets {
            let name = set["metadata"]["name"].as_str().unwrap_or_default();
            let replicas = u32::try_from(set["spec"]["replicas"].as_u64().unwrap_or(1)).unwrap_or(1);
            for ordinal in 0..replicas {
                wanted.insert(format!("{name}-{ordinal}"), (set, ordinal));
            }
        }
        let mut changed = false;
        let gone: Vec<String> = self.gateways.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();
        for name in gone {
            let run = self.gateways.remove(&name).expect("listed above");
            self.stop(lab, api, cluster, run, metrics)?;
            changed = true;
        }
        let unplaced: Vec<String> = self.pending.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();
        for name in unplaced {
            if let Some(object) = self.pending.remove(&name) {
                api.remove(side.clone(), &object);
                changed = true;
            }
        }
        for (pod_name, (set, ordinal)) in wanted {
            let set_name = set["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let template = &set["spec"]["template"];
            let container = &template["spec"]["containers"][0];
            let secret_name = template["spec"]["volumes"]
                .as_array()
                .and_then(|v| v.iter().find_map(|v| v["secret"]["secretName"].as_str()))
                .with_context(|| format!("{cluster}: StatefulSet {set_name} mounts no Secret"))?;
            let Some(secret) = secrets.iter().find(|s| s["metadata"]["name"] == secret_name) else {
                continue; // a pod waits for its Secret
            };
            let args = expanded_args(container, &pod_name);
            let file = config_file_name(&args).with_context(|| format!("{cluster}: {pod_name} has no --config"))?;
            let Ok(text) = decode_secret(secret, &file) else {
                continue; // its file is not in the Secret yet: the mounted volume waits too
            };
            if let Some(run) = self.gateways.get_mut(&pod_name) {
                changed |= write_config(&run.config, &text)?;
                let argv = gateway_argv(lab, &args, &run.interface, &run.config)?;
                if argv != run.argv {
                    // The template changed (e.g. `--dscp` after a QoS profile change): a cluster
                    // rolls the pod; the lab keeps the pod (its network namespace and addresses)
                    // and replaces the process.
                    run.process.stop().with_context(|| format!("{cluster}: stopping gateway {pod_name}"))?;
                    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
                    run.process = spawn_gateway(&run.pod, &args, &run.interface, timeout)
                        .with_context(|| format!("{cluster}: rolling gateway {pod_name}"))?;
                    run.argv = argv;
                    run.rolled += 1;
                    changed = true;
                } else if !run.process.is_running() {
                    // As a kubelet restarts a container that exited: the same pod, its
                    // network namespace and addresses, a new process.
                    let argv: Vec<&str> = run.argv.iter().map(String::as_str).collect();
                    run.process = spawn_gateway(&run.pod, &argv, &run.interface, timeout)
                        .with_context(|| format!("{cluster}: restarting gateway {pod_name}"))?;
                    run.restarts += 1;
                    changed = true;
                }
                continue;
            }
            let slice = template["metadata"]["annotations"][SLICE_ANNOTATION].as_str().unwrap_or_default().to_owned();
            // The scheduler: the first node (in order) that the anti-affinity allows.
            let spread =
                template["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                    .as_array()
                    .is_some_and(|terms| terms.iter().any(|t| t["topologyKey"] == objects::HOSTNAME_TOPOLOGY));
            let nodes = lab.cluster(cluster).nodes();
            let taken = |node: &Node| self.gateways.values().any(|g| g.set == set_name && g.pod.node == node.name());
            let Some(node) = nodes.iter().find(|n| !spread || !taken(n)) else {
                changed |= self.unschedulable(api, cluster, &pod_name, template, nodes.len());
                continue;
            };
            if slice_api::node::NodeState::load(&node.state_dir(), &slice)?.is_none() {
                continue; // slice-cni would answer "try again later": the next step runs it
            }
            let replica = Replica { set: &set_name, ordinal, pod_name: &pod_name, slice: &slice };
            let run = self.start(lab, api, cluster, node, &replica, template, &args, &text, metrics, timeout)?;
            self.pending.remove(&pod_name);
            self.gateways.insert(pod_name, run);
            changed = true;
        }
        Ok(changed)
    }

    /// Publishes the `Pod` object of a replica no node can take, as the scheduler leaves it:
    /// `Pending`, `PodScheduled=False` with the scheduler's message. True when it was new.
    fn unschedulable(
        &mut self,
        api: &MemoryApi<String>,
        cluster: &str,
        pod_name: &str,
        template: &Value,
        nodes: usize,
    ) -> bool {
        if self.pending.contains_key(pod_name) {
            return false;
        }
        let mut labels = template["metadata"]["labels"].clone();
        labels[objects::POD_NAME_LABEL] = json!(pod_name);
        let message = format!("0/{nodes} nodes are available: {nodes} node(s) didn't match pod anti-affinity rules.");
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": GATEWAY_NAMESPACE,
                         "labels": labels, "annotations": template["metadata"]["annotations"]},
            "spec": {},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                          "reason": "Unschedulable", "message": message}]},
        });
        let path = slice_kube::memory::object_path(&object);
        api.put(cluster.to_owned(), object);
        self.pending.insert(pod_name.to_owned(), path);
        true
    }

    #[allow(clippy::too_many_arguments)] // The parts of one pod.
    fn start(
        &mut self,
        lab: &Lab,
        api: &MemoryApi<String>,
        cluster: &str,
        node: &Node,
        replica: &Replica<'_>,
        template: &Value,
        args: &[String],
        config_text: &str,
        metrics: &MetricsAddresses,
        timeout: Duration,
    ) -> Result<GatewayRun> {
        let name = replica.pod_name;
        let slice = replica.slice;
        let mut labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        labels.insert(objects::POD_NAME_LABEL.to_owned(), json!(name));
        let mut spec = PodSpec::new(GATEWAY_NAMESPACE, name);
        for (k, v) in &labels {
            spec = spec.label(k.clone(), v.as_str().unwrap_or_default());
        }
        for (k, v) in template["metadata"]["annotations"].as_object().into_iter().flatten() {
            spec = spec.annotation(k.clone(), v.as_str().unwrap_or_default());
        }
        let pod = node.run_pod(spec).with_context(|| format!("{cluster}: the pod {name}"))?;
        let c = lab.cluster(cluster);
        self.started += 1;
        let interface = format!("{}{}g{}", lab.prefix(), c.index(), self.started);
        if interface.len() > 15 {
            bail!("gateway interface name {interface} is longer than 15 bytes: use a shorter lab prefix");
        }
        let dir = lab.root().join("gateways");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join(format!("{cluster}-{name}.conf"));
        write_config(&config, config_text)?;
        let argv = gateway_argv(lab, args, &interface, &config)?;
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let process =
            spawn_gateway(&pod, &argv_ref, &interface, timeout).with_context(|| format!("{cluster}: {name}"))?;
        let slice_addresses = pod.ips("slice0")?;
        anyhow::ensure!(!slice_addresses.is_empty(), "{cluster}: {name}'s pod has no address on slice0");
        let pod_ip = pod.ipv4("eth0")?;
        // The Pod object as the API server and the node agent would show it.
        let ips: Vec<String> = slice_addresses.iter().map(ToString::to_string).collect();
        let status = json!([{"name": slice_api::multus::network_name(GATEWAY_NAMESPACE, slice),
                             "interface": slice_api::names::DEFAULT_SLICE_INTERFACE, "ips": ips}]);
        let mut annotations = template["metadata"]["annotations"].clone();
        annotations[NETWORK_STATUS_ANNOTATION] = json!(status.to_string());
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": GATEWAY_NAMESPACE,
                         "labels": labels, "annotations": annotations},
            "spec": {"nodeName": node.name()},
            "status": {"phase": "Running", "podIP": pod_ip.to_string(),
                       "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]},
        });
        let path = slice_kube::memory::object_path(&object);
        api.put(cluster.to_owned(), object);
        if let Some(port) = metrics_port(&template["spec"]["containers"][0]) {
            let addr = SocketAddr::new(IpAddr::V4(pod_ip), port);
            metrics.lock().expect("metrics addresses lock").insert((cluster.to_owned(), addr), pod.netns_path.clone());
        }
        Ok(GatewayRun {
            pod,
            process,
            interface,
            slice: slice.to_owned(),
            slice_addresses,
            set: replica.set.to_owned(),
            ordinal: replica.ordinal,
            labels,
            argv,
            restarts: 0,
            rolled: 0,
            config,
            object: path,
        })
    }

    fn stop(
        &mut self,
        lab: &Lab,
        api: &MemoryApi<String>,
        cluster: &str,
        mut run: GatewayRun,
        metrics: &MetricsAddresses,
    ) -> Result<()> {
        run.process.stop()?;
        metrics.lock().expect("metrics addresses lock").retain(|_, netns| *netns != run.pod.netns_path);
        api.remove(cluster.to_owned(), &run.object);
        lab.cluster(cluster).node(&run.pod.node).remove_pod(&run.pod)?;
        let _ = std::fs::remove_file(&run.config);
        Ok(())
    }

    /// Gateway NodePort Services → edge forwards to the gateway pods.
    fn services(&mut self, lab: &Lab, api: &MemoryApi<String>, cluster: &str) -> Result<bool> {
        let c = lab.cluster(cluster);
        if c.behind_nat() {
            return Ok(false);
        }
        let services = api.list(&cluster.to_owned(), &format!("/api/v1/namespaces/{GATEWAY_NAMESPACE}/services"));
        let mut wanted = BTreeMap::new();
        // In a dual-stack lab the public IPv6 address forwards to the pod's IPv6 address too.
        let mut wanted6 = BTreeMap::new();
        for svc in &services {
            let Some(selector) = svc["spec"]["selector"].as_object().filter(|s| !s.is_empty()) else { continue };
            let Some(run) = self.gateways.values().find(|g| selector.iter().all(|(k, v)| g.labels.get(k) == Some(v)))
            else {
                continue;
            };
            for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
                let (Some(node_port), Some(target)) = (p["nodePort"].as_u64(), p["targetPort"].as_u64()) else {
                    continue;
                };
                let (Ok(node_port), Ok(target)) = (u16::try_from(node_port), u16::try_from(target)) else { continue };
                wanted.insert(node_port, (run.pod.ipv4("eth0")?, target));
                if c.public_address6().is_some() {
                    let ip6 = run.pod.ips("eth0")?.into_iter().find_map(|a| match a {
                        IpAddr::V6(a) => Some(a),
                        IpAddr::V4(_) => None,
                    });
                    wanted6.insert(node_port, ip6.context("the gateway pod has no IPv6 address on eth0")?);
                }
            }
        }
        let mut changed = false;
        let stale: Vec<u16> =
            self.forwards.iter().filter(|(port, to)| wanted.get(*port) != Some(*to)).map(|(port, _)| *port).collect();
        for port in stale {
            c.remove_forward_udp(port)?;
            self.forwards.remove(&port);
            changed = true;
        }
        for (port, (ip, target)) in wanted {
            if self.forwards.contains_key(&port) {
                continue;
            }
            c.forward_udp(port, ip, target)?;
            if let Some(ip6) = wanted6.get(&port) {
                c.forward_udp6(port, *ip6, target)?;
            }
            self.forwards.insert(port, (ip, target));
            changed = true;
        }
        Ok(changed)
    }

    /// Stops every gateway and removes every forward (the cluster leaves the lab's control
    /// plane).
    ///
    /// # Errors
    /// When a pod or forward cannot be removed.
    pub fn teardown(
        &mut self,
        lab: &Lab,
        api: &MemoryApi<String>,
        cluster: &str,
        metrics: &MetricsAddresses,
    ) -> Result<()> {
        for (_, run) in std::mem::take(&mut self.gateways) {
            self.stop(lab, api, cluster, run, metrics)?;
        }
        for (_, object) in std::mem::take(&mut self.pending) {
            api.remove(cluster.to_owned(), &object);
        }
        for port in std::mem::take(&mut self.forwards).into_keys() {
            lab.cluster(cluster).remove_forward_udp(port)?;
        }
        self.dns.teardown(lab, cluster)?;
        self.workloads.teardown(lab, cluster)
    }
}

/// One replica to start: its StatefulSet, ordinal, pod name and slice.
struct Replica<'a> {
    set: &'a str,
    ordinal: u32,
    pod_name: &'a str,
    slice: &'a str,
}

/// The container's arguments with `$(VAR)` expanded as a kubelet does, from the container's
/// variables: those from `fieldRef: metadata.name` are the pod's name, plain `value`s
/// themselves; an unknown reference stays as it is.
fn expanded_args(container: &Value, pod_name: &str) -> Vec<String> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let Some(name) = e["name"].as_str() else { continue };
        let value = match (e["value"].as_str(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Some(v), _) => v.to_owned(),
            (None, Some("metadata.name")) => pod_name.to_owned(),
            _ => continue,
        };
        vars.push((format!("$({name})"), value));
    }
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|a| vars.iter().fold(a.to_owned(), |a, (from, to)| a.replace(from.as_str(), to)))
        .collect()
}

/// The file name of the `--config` argument: its key in the mounted configuration Secret.
fn config_file_name(args: &[String]) -> Option<String> {
    let at = args.iter().position(|a| *a == arg(flag::CONFIG))?;
    let path = std::path::Path::new(args.get(at + 1)?);
    Some(path.file_name()?.to_str()?.to_owned())
}

/// The container's command line as the lab runs it: the lab's `slice-gateway`, its config
/// path and interface name in place of the template's.
fn gateway_argv(lab: &Lab, args: &[String], interface: &str, config: &std::path::Path) -> Result<Vec<String>> {
    let bin = lab.options().bin_dir.join("slice-gateway");
    if !bin.exists() {
        bail!("{} does not exist: build it or set SLICENET_BIN_DIR", bin.display());
    }
    let mut argv = vec![bin.display().to_string()];
    let mut replace = None;
    for a in args {
        match replace.take() {
            Some(value) => argv.push(value),
            None => {
                if *a == arg(flag::INTERFACE) {
                    replace = Some(interface.to_owned());
                } else if *a == arg(flag::CONFIG) {
                    replace = Some(config.display().to_string());
                }
                argv.push(a.clone());
            }
        }
    }
    Ok(argv)
}

/// Runs the gateway's command line in `pod` and waits until its TUN device and UAPI socket
/// exist (it sets the device up itself).
fn spawn_gateway(pod: &Pod, argv: &[&str], interface: &str, timeout: Duration) -> Result<PodProcess> {
    let mut process = pod.spawn(argv)?;
    let deadline = Instant::now() + timeout;
    while !(pod.exec(&["ip", "link", "show", interface])?.status.success() && uapi_socket(interface).exists()) {
        if !process.is_running() || Instant::now() > deadline {
            let log = process.log_text();
            let _ = process.stop();
            bail!("gateway {interface} did not come up; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(process)
}

/// The container port named `metrics`.
fn metrics_port(container: &Value) -> Option<u16> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "metrics")
        .and_then(|p| u16::try_from(p["containerPort"].as_u64()?).ok())
}

/// Waits until every agent has applied its configuration: the node-state files in its state
/// dir are exactly its slices, with their node prefixes and member namespaces (what the CNI
/// plugin decides by). A watch on the API stands behind this in a cluster; here it is the file.
fn wait_agents(configs: &[NodeAgentConfig], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for config in configs {
        loop {
            let states = slice_api::node::NodeState::load_all(&config.state_dir).unwrap_or_default();
            let applied = states.len() == config.slices.len()
                && config.slices.iter().all(|want| {
                    let st = states.iter().find(|st| st.slice == want.name);
                    st.is_some_and(|st| {
                        let mut a = st.namespaces.clone();
                        let mut b = want.namespaces.clone();
                        a.sort();
                        b.sort();
                        st.node_prefix == want.node_prefix && a == b
                    })
                });
            if applied {
                break;
            }
            if Instant::now() > deadline {
                bail!("node {}: the agent did not apply its configuration within {timeout:?}", config.node);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
