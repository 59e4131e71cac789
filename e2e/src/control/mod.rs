//! The control plane in process, for the lab: the hub controller's and the workers' own
//! passes (`slice_operator::hub::reconcile`, `slice_operator::worker::Worker::reconcile_once`)
//! against an in-memory API (`slice_kube::memory`: a hub and one server per member cluster),
//! and the lab's [`kubelet`] running what the workers write. `slicectl lab up -f FILE` uses it,
//! so a slice in the lab and in a real cluster go the same way from SliceConfig to data plane:
//!
//! ```text
//! YAML ─► hub API: SliceConfig, MemberCluster (as kubectl apply)
//!      ─► hub pass: plan, WorkerSlices, finalizers, conditions (its real Actions, its RBAC)
//!      ─► each worker's pass: key and config Secrets, gateway Deployment and Service, node
//!         agent ConfigMaps, statuses from the gateway's /metrics (its real Writes, its RBAC)
//!      ─► kubelet: agent config files, gateway pods (CRI + slice-cni) running the Deployment's
//!         command, Pod objects with their network-status, edge forwards for the nodePorts
//!      ─► the next passes: peers learn each other's keys and endpoints, tunnels come up
//! ```
//!
//! What the API server's watches do in a cluster is a loop here: [`ControlPlane::apply`]
//! writes the new objects and runs rounds until one changes nothing and every WorkerSlice is
//! `Ready`. Every request is checked against the components' declared access lists, as the
//! worker's and hub's tests do.
//!
//! Lab-only settings ride on MemberCluster annotations: `lab.slicenet.io/nodes` (default 2) and
//! `lab.slicenet.io/behind-nat: "true"` (no inbound forwarding). A cluster a SliceConfig names
//! without a MemberCluster document joins with the defaults.

pub mod checks;
pub mod convergence;
pub mod dns;
pub mod gateway;
pub mod kubelet;
pub mod serve;
pub mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::ResourceExt;
use serde_json::{Value, json};
use slice_api::access;
use slice_api::crd::{
    MemberCluster, MemberClusterSpec, SYSTEM_NAMESPACE, SliceConfig, WorkerSlice, cluster_namespace, condition,
};
use slice_api::hub_view::HubView;
use slice_api::planner;
use slice_kube::memory::MemoryApi;
use slice_operator::hub;
use slice_operator::worker::Worker;
use slice_operator::worker::decide::Settings;
use slice_operator::worker::objects::GatewayDefaults;

use crate::{ClusterOptions, Lab, Pod};
use kubelet::Kubelet;

/// Annotation: how many nodes the lab gives a member cluster.
pub const NODES_ANNOTATION: &str = "lab.slicenet.io/nodes";
/// On a Pod object written straight to a cluster's API: a pod that runs nowhere, which the
/// lab's kubelet leaves alone (the scale benchmarks fill pod directories with them; the
/// workers, the hub and the node agents see them as running pods).
pub const SIMULATED_ANNOTATION: &str = "lab.slicenet.io/simulated";
/// Annotation: the lab puts the member cluster behind NAT.
pub const BEHIND_NAT_ANNOTATION: &str = "lab.slicenet.io/behind-nat";
/// Nodes of a member cluster without [`NODES_ANNOTATION`].
pub const DEFAULT_NODES: usize = 2;
/// MTU of the gateways' TUN devices.
pub const GATEWAY_MTU: u32 = 1380;

/// The objects of a YAML file.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub slices: Vec<SliceConfig>,
    pub clusters: Vec<MemberCluster>,
}

/// Parses multi-document YAML holding `SliceConfig` and `MemberCluster` objects of
/// `slicenet.io/v1alpha1`.
///
/// # Errors
/// Which document is wrong and why: not YAML, another kind or version, a field that does not
/// fit the schema, or an object named twice.
pub fn parse_manifest(text: &str) -> Result<Manifest> {
    let mut manifest = Manifest::default();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value: serde_json::Value =
            serde::Deserialize::deserialize(doc).with_context(|| format!("document {n} is not valid YAML"))?;
        if value.is_null() {
            continue;
        }
        let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
        if api_version != "slicenet.io/v1alpha1" {
            bail!("document {n}: apiVersion {api_version:?} is not slicenet.io/v1alpha1");
        }
        match kind {
            "SliceConfig" => {
                let s: SliceConfig =
                    serde_json::from_value(value).with_context(|| format!("document {n}: SliceConfig"))?;
                if manifest.slices.iter().any(|o| o.name_any() == s.name_any()) {
                    bail!("document {n}: SliceConfig {} appears twice", s.name_any());
                }
                manifest.slices.push(s);
            }
            "MemberCluster" => {
                let c: MemberCluster =
                    serde_json::from_value(value).with_context(|| format!("document {n}: MemberCluster"))?;
                if manifest.clusters.iter().any(|o| o.name_any() == c.name_any()) {
                    bail!("document {n}: MemberCluster {} appears twice", c.name_any());
                }
                manifest.clusters.push(c);
            }
            other => bail!("document {n}: kind {other:?} is not SliceConfig or MemberCluster"),
        }
    }
    Ok(manifest)
}

/// The gateways' NodePort in [`across_manifest`]: the same in every cluster (each has its own
/// public address), so a capture on the WAN can name it.
pub const PUBLIC_PORT: u16 = 31820;
/// The keepalive of [`across_manifest`]'s gateways: short, so that a gateway behind NAT is
/// found again soon after its peer restarts.
pub const LAB_KEEPALIVE: u16 = 5;

/// The YAML a user writes for one slice over `members` (name, nodes, behind NAT), every
/// member cluster registered, the slice's gateways on NodePort [`PUBLIC_PORT`] with keepalive
/// [`LAB_KEEPALIVE`], one gateway replica per cluster (`gateway.replicas: 1`: the tests of
/// other capabilities count one gateway per cluster and its peers; the replica tests and
/// `make demo`'s part three run the default, two).
///
/// # Errors
/// When the result does not parse (a name that is not a DNS label, a bad subnet).
pub fn across_manifest(
    slice: &str,
    subnet: &str,
    namespaces: &[&str],
    members: &[(&str, usize, bool)],
) -> Result<Manifest> {
    let mut text = String::new();
    for (name, nodes, behind_nat) in members {
        text.push_str(&format!(
            "apiVersion: slicenet.io/v1alpha1\nkind: MemberCluster\nmetadata:\n  name: {name}\n  annotations: \
             {{{NODES_ANNOTATION}: \"{nodes}\", {BEHIND_NAT_ANNOTATION}: \"{behind_nat}\"}}\nspec: {{}}\n---\n"
        ));
    }
    let clusters: Vec<&str> = members.iter().map(|m| m.0).collect();
    let namespaces: Vec<String> = namespaces.iter().map(|n| format!("{{namespace: {n}}}")).collect();
    text.push_str(&format!(
        "apiVersion: slicenet.io/v1alpha1\nkind: SliceConfig\nmetadata:\n  name: {slice}\nspec:\n  sliceSubnet: {subnet}\n  \
         clusters: [{}]\n  namespaces: [{}]\n  gateway: {{nodePort: {PUBLIC_PORT}, persistentKeepalive: {LAB_KEEPALIVE}, replicas: 1}}\n",
        clusters.join(", "),
        namespaces.join(", ")
    ));
    parse_manifest(&text)
}

/// A lab with its control plane, for a test: when it drops (however the test ends), every slice
/// is deleted and the lab torn down.
pub struct LabEnv {
    pub cp: ControlPlane,
    pub lab: Option<Lab>,
}

impl LabEnv {
    /// The lab (until the guard drops).
    ///
    /// # Panics
    /// After the lab was taken out of the guard.
    #[must_use]
    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().expect("the lab is in the guard")
    }

    /// [`ControlPlane::apply`] on the guarded lab.
    ///
    /// # Errors
    /// As it fails, with the control plane's diagnosis.
    pub fn apply(&mut self, m: &Manifest) -> Result<()> {
        let Self { cp, lab } = self;
        let lab = lab.as_mut().context("the lab was taken out of the guard")?;
        cp.apply(lab, m).map_err(|e| anyhow::anyhow!("{e:#}\n{}", cp.diagnose(lab)))
    }
}

impl Drop for LabEnv {
    fn drop(&mut self) {
        if let Some(mut lab) = self.lab.take() {
            if let Err(e) = self.cp.delete_all(&mut lab) {
                eprintln!("deleting the slices: {e:#}");
            }
            if let Err(e) = lab.teardown() {
                eprintln!("tearing the lab down: {e:#}");
            }
        }
    }
}

/// The lab's three clusters for one slice: c1 with two nodes, c2 with one, c3 with one behind
/// NAT (name, nodes, behind NAT), as the three-cluster test and the demo use them.
pub const THREE_CLUSTERS: [(&str, usize, bool); 3] = [("c1", 2, false), ("c2", 1, false), ("c3", 1, true)];

/// Slice `blue` (10.80.0.0/16, namespace `shop`) over `clusters` of [`THREE_CLUSTERS`].
///
/// # Errors
/// See [`across_manifest`].
pub fn blue_over(clusters: &[&str]) -> Result<Manifest> {
    let mut m = across_manifest("blue", "10.80.0.0/16", &["shop"], &THREE_CLUSTERS)?;
    m.slices[0].spec.clusters.retain(|c| clusters.contains(&c.as_str()));
    Ok(m)
}

/// An nftables table as JSON objects (`None`: no table).
pub type NftTable = Option<Vec<Value>>;

/// The nftables table node `node`'s agent compiles for `slice` from its current configuration
/// (`want`) and the one its router holds (`got`, canonical as the agent compares them: set
/// elements sorted); `None` for no table. Equal once the agent has applied its file.
///
/// # Errors
/// When the agent's configuration cannot be read, has no such slice, or does not compile.
pub fn policy_tables(node: &crate::Node, slice: &str) -> Result<(NftTable, NftTable)> {
    let config = node.agent_config()?;
    let on_node = config.slices.iter().find(|s| s.name == slice).context("the slice is not on the node")?;
    let want = slice_node::firewall::table(on_node).map_err(|e| anyhow::anyhow!("{e}"))?;
    let router = std::path::PathBuf::from(format!("/run/netns/{}{slice}", node.router_netns_prefix()));
    let got = dataplane::Netns::open(&router)
        .ok()
        .and_then(|ns| dataplane::nft::list_table(&ns, slice_node::firewall::TABLE).ok())
        .flatten()
        .map(slice_node::firewall::canonical);
    Ok((want, got))
}

/// Reads and parses a YAML file (see [`parse_manifest`]).
///
/// # Errors
/// When the file cannot be read or parsed.
pub fn read_manifest(path: &std::path::Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_manifest(&text).with_context(|| path.display().to_string())
}

/// The hub's API server in the in-memory API (the member clusters' servers are their names).
const HUB: &str = "hub";

/// The hub controller, every member cluster's worker and what runs their objects, in process,
/// over a [`Lab`].
pub struct ControlPlane {
    api: MemoryApi<String>,
    runtime: tokio::runtime::Runtime,
    hub: hub::Context,
    workers: BTreeMap<String, Worker>,
    kubelets: BTreeMap<String, Kubelet>,
    metrics: kubelet::MetricsAddresses,
    dns_targets: kubelet::DnsTargets,
    /// The hub's objects after the last step.
    view: HubView,
    /// When each cluster's worker last wrote its heartbeat.
    heartbeats: BTreeMap<String, Instant>,
    /// The last error of each component in the current convergence (for the diagnosis).
    errors: BTreeMap<String, String>,
    timeout: Duration,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("slices", &self.view.slices.len())
            .field("workers", &self.view.workers.len())
            .finish_non_exhaustive()
    }
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self::new()
    }
}

/// How often a worker writes its heartbeat while the lab converges.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// A WorkerSlice `Ready=False` reason that goes away by itself as the lab converges.
fn transient(reason: &str) -> bool {
    reason == "GatewayPending" || reason == slice_operator::worker::decide::TUNNELS_DOWN
}

impl ControlPlane {
    /// An empty control plane: a hub without objects.
    ///
    /// # Panics
    /// When a Tokio runtime cannot be built.
    pub fn new() -> Self {
        let api = MemoryApi::new([(HUB.to_owned(), access::HUB, SYSTEM_NAMESPACE.to_owned())]);
        api.lock().record = false;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a Tokio runtime");
        let heartbeat_timeout = Duration::from_secs(hub::DEFAULT_HEARTBEAT_TIMEOUT_SECS);
        Self {
            api,
            runtime,
            // The lab's hub pages the peers, as the hub does by default: its workers read their
            // slices' pages through the Roles the hub keeps, checked by the in-memory API.
            hub: hub::Context::new(heartbeat_timeout, "lab"),
            workers: BTreeMap::new(),
            kubelets: BTreeMap::new(),
            metrics: kubelet::MetricsAddresses::default(),
            dns_targets: kubelet::DnsTargets::default(),
            view: HubView::default(),
            heartbeats: BTreeMap::new(),
            errors: BTreeMap::new(),
            timeout: Duration::from_secs(60),
        }
    }

    /// How long [`ControlPlane::apply`] and the other convergences wait for the lab to come to
    /// rest (60 s unless set): a test that starts many gateways on a loaded machine gives more.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The SliceConfigs with the status the hub wrote.
    pub fn slices(&self) -> &[SliceConfig] {
        &self.view.slices
    }

    /// The WorkerSlices with the status the workers wrote.
    pub fn workers(&self) -> &[WorkerSlice] {
        &self.view.workers
    }

    /// The MemberClusters.
    pub fn clusters(&self) -> &[MemberCluster] {
        &self.view.clusters
    }

    /// The WorkerSlice of `slice` in `cluster`.
    pub fn worker(&self, slice: &str, cluster: &str) -> Option<&WorkerSlice> {
        self.view.workers.iter().find(|w| w.spec.slice == slice && w.spec.cluster == cluster)
    }

    /// The in-memory API the hub and the workers run against (server `"hub"`, and one per
    /// member cluster by its name).
    pub fn api(&self) -> &MemoryApi<String> {
        &self.api
    }

    /// The gateway of `slice` in `cluster`: its replica of the lowest ordinal.
    fn gateway(&self, slice: &str, cluster: &str) -> Option<&kubelet::GatewayRun> {
        self.kubelets.get(cluster)?.gateways.values().filter(|g| g.slice == slice).min_by_key(|g| g.ordinal)
    }

    /// The gateway replicas of `slice` that `cluster` runs (issue 13): (ordinal, node,
    /// interface), by ordinal. A replica that found no node is not among them.
    #[must_use]
    pub fn gateway_replicas(&self, slice: &str, cluster: &str) -> Vec<(u32, String, String)> {
        let mut out: Vec<(u32, String, String)> = self
            .kubelets
            .get(cluster)
            .into_iter()
            .flat_map(|k| k.gateways.values())
            .filter(|g| g.slice == slice)
            .map(|g| (g.ordinal, g.pod.node.clone(), g.interface.clone()))
            .collect();
        out.sort();
        out
    }

    /// `wg ARGS…` in the pod of gateway replica `ordinal` of `slice` in `cluster`; `{if}` in
    /// `args` stands for its interface.
    ///
    /// # Errors
    /// When there is no such replica or `wg` fails.
    pub fn replica_wg(&self, slice: &str, cluster: &str, ordinal: u32, args: &[&str]) -> Result<String> {
        let gw = self
            .kubelets
            .get(cluster)
            .and_then(|k| k.gateways.values().find(|g| g.slice == slice && g.ordinal == ordinal))
            .with_context(|| format!("no gateway replica {ordinal} of {slice} in {cluster}"))?;
        let mut argv = vec!["wg"];
        argv.extend(args.iter().map(|a| if *a == "{if}" { gw.interface.as_str() } else { a }));
        gw.pod.exec_ok(&argv)
    }

    /// The gateway pod's IPv4 slice address of `slice` in `cluster`.
    pub fn gateway_address(&self, slice: &str, cluster: &str) -> Option<Ipv4Addr> {
        self.gateway(slice, cluster)?.slice_addresses.iter().find_map(|a| match a {
            std::net::IpAddr::V4(v4) => Some(*v4),
            std::net::IpAddr::V6(_) => None,
        })
    }

    /// The gateway's TUN interface (and UAPI socket) name of `slice` in `cluster`.
    pub fn gateway_interface(&self, slice: &str, cluster: &str) -> Option<String> {
        self.gateway(slice, cluster).map(|g| g.interface.clone())
    }

    /// `wg ARGS…` in the gateway pod of `slice` in `cluster`.
    ///
    /// # Errors
    /// When there is no such gateway or `wg` fails.
    pub fn gateway_wg(&self, slice: &str, cluster: &str, args: &[&str]) -> Result<String> {
        let gw = self.gateway(slice, cluster).with_context(|| format!("no gateway of {slice} in {cluster}"))?;
        let mut argv = vec!["wg"];
        argv.extend_from_slice(args);
        gw.pod.exec_ok(&argv)
    }

    /// The gateway pod of `slice` in `cluster`.
    pub fn gateway_pod(&self, slice: &str, cluster: &str) -> Option<&Pod> {
        self.gateway(slice, cluster).map(|g| &g.pod)
    }

    /// The PID of the gateway process of `slice` in `cluster`.
    pub fn gateway_pid(&self, slice: &str, cluster: &str) -> Option<u32> {
        self.gateway(slice, cluster).map(|g| g.process.id())
    }

    /// How often the lab restarted the gateway of `slice` in `cluster` after it exited.
    pub fn gateway_restarts(&self, slice: &str, cluster: &str) -> Option<u32> {
        self.gateway(slice, cluster).map(|g| g.restarts)
    }

    /// How often the lab replaced the gateway process of `slice` in `cluster` because its
    /// Deployment's command line changed (a cluster would roll the pod).
    pub fn gateway_rolls(&self, slice: &str, cluster: &str) -> Option<u32> {
        self.gateway(slice, cluster).map(|g| g.rolled)
    }

    /// The gateway's log of `slice` in `cluster`.
    pub fn gateway_log(&self, slice: &str, cluster: &str) -> String {
        self.gateway(slice, cluster).map(|g| g.process.log_text()).unwrap_or_default()
    }

    /// Writes the users' `objects` ([`workloads::parse_objects`]) into `cluster`'s API as
    /// `kubectl apply --context <cluster>` would (created, or their spec, labels and
    /// annotations replaced; a Service that asks for a ClusterIP gets one), and runs rounds
    /// until nothing changes: pods started, EndpointSlices written, the workers' passes done.
    ///
    /// # Errors
    /// When there is no such cluster, a write is refused, or the lab does not come to rest.
    pub fn apply_in(&mut self, lab: &Lab, cluster: &str, objects: &[Value]) -> Result<()> {
        if !self.workers.contains_key(cluster) {
            bail!("no member cluster {cluster} in the lab");
        }
        let side = cluster.to_owned();
        for obj in objects {
            let mut obj = obj.clone();
            if obj["kind"] == "Service" && obj["spec"]["clusterIP"].as_str().is_none() {
                obj["spec"]["clusterIP"] = json!(workloads::next_cluster_ip(&self.api, cluster).to_string());
            }
            let path = slice_kube::memory::object_path(&obj);
            let (collection, _) = path.rsplit_once('/').expect("an object path has a name");
            let (code, body) = match self.api.get(side.clone(), &path) {
                None => self.api.request(&side, "POST", collection, "application/json", &obj),
                Some(mut old) => {
                    for key in ["labels", "annotations"] {
                        old["metadata"][key] = obj["metadata"].get(key).cloned().unwrap_or(Value::Null);
                    }
                    if let Some(spec) = obj.get("spec") {
                        old["spec"] = spec.clone();
                    }
                    self.api.request(&side, "PUT", &path, "application/json", &old)
                }
            };
            if code >= 300 {
                bail!("applying {path} in {cluster}: {code} {body}");
            }
        }
        self.reconcile(lab)
    }

    /// Deletes `objects` from `cluster`'s API (those that exist) and runs rounds until
    /// nothing changes: pods removed, EndpointSlices updated, the workers' passes done.
    ///
    /// # Errors
    /// When there is no such cluster or the lab does not come to rest.
    pub fn delete_in(&mut self, lab: &Lab, cluster: &str, objects: &[Value]) -> Result<()> {
        if !self.workers.contains_key(cluster) {
            bail!("no member cluster {cluster} in the lab");
        }
        for obj in objects {
            let path = slice_kube::memory::object_path(obj);
            self.api.request(&cluster.to_owned(), "DELETE", &path, "", &Value::Null);
        }
        self.reconcile(lab)
    }

    /// The lab pod of the Pod object `namespace/name` in `cluster`.
    pub fn pod(&self, cluster: &str, namespace: &str, name: &str) -> Option<&Pod> {
        self.kubelets.get(cluster)?.workloads.pods.get(&format!("{namespace}/{name}"))
    }

    /// Runs `argv` in pod `namespace/name` of `cluster` as a container of it would run: in its
    /// network namespace, with the `/etc/resolv.conf` the kubelet writes for it (the cluster's
    /// resolver, the namespace's search path); starts the cluster's DNS when it does not run yet.
    /// The output whatever the exit status.
    ///
    /// # Errors
    /// When there is no such pod, the DNS cannot start or the command cannot be run.
    pub fn exec(&mut self, lab: &Lab, cluster: &str, namespace: &str, name: &str, argv: &[&str]) -> Result<Output> {
        let (netns, resolv_conf) = self.pod_context(lab, cluster, namespace, name)?;
        crate::cmd::output(&mut crate::command_with_resolv_conf(&netns, &resolv_conf, argv))
    }

    /// The network namespace of pod `namespace/name` in `cluster` and its `/etc/resolv.conf`
    /// (see [`ControlPlane::exec`]); starts the cluster's DNS when it does not run yet.
    ///
    /// # Errors
    /// When there is no such pod or the DNS cannot start.
    pub fn pod_context(&mut self, lab: &Lab, cluster: &str, namespace: &str, name: &str) -> Result<(PathBuf, PathBuf)> {
        let netns = self
            .pod(cluster, namespace, name)
            .with_context(|| format!("no pod {namespace}/{name} in cluster {cluster}"))?;
        let netns = netns.netns_path.clone();
        let kubelet = self.kubelets.get_mut(cluster).with_context(|| format!("no cluster {cluster}"))?;
        kubelet.dns.want();
        kubelet.dns.step(lab, &self.api, cluster, self.timeout)?;
        Ok((netns, dns::resolv_conf(lab, namespace)?))
    }

    /// Starts `cluster`'s DNS (slice-dns and the nodes' resolvers) when it does not run yet,
    /// as its first multi-cluster service would.
    ///
    /// # Errors
    /// When there is no such cluster or the DNS cannot start.
    pub fn start_dns(&mut self, lab: &Lab, cluster: &str) -> Result<()> {
        let kubelet = self.kubelets.get_mut(cluster).with_context(|| format!("no cluster {cluster}"))?;
        kubelet.dns.want();
        kubelet.dns.step(lab, &self.api, cluster, self.timeout)?;
        Ok(())
    }

    /// The PID of `cluster`'s slice-dns process, once it runs.
    pub fn dns_server_pid(&self, cluster: &str) -> Option<u32> {
        self.kubelets.get(cluster)?.dns.server_pid()
    }

    /// Where `cluster`'s slice-dns listens, once it runs.
    pub fn dns_server(&self, cluster: &str) -> Option<std::net::SocketAddr> {
        self.kubelets.get(cluster)?.dns.server()
    }

    /// Sets the `Ready` condition of pod `namespace/name` in `cluster`, as its readiness
    /// probe would, and runs rounds until nothing changes.
    ///
    /// # Errors
    /// When there is no such pod or the lab does not come to rest.
    pub fn set_pod_ready(&mut self, lab: &Lab, cluster: &str, namespace: &str, name: &str, ready: bool) -> Result<()> {
        self.mark_pod_ready(cluster, namespace, name, ready)?;
        self.reconcile(lab)
    }

    /// Sets the `Ready` condition of pod `namespace/name` in `cluster` (the kubelet's status
    /// write) and nothing more: the next rounds ([`ControlPlane::tick`]) carry it on.
    ///
    /// # Errors
    /// When there is no such pod.
    pub fn mark_pod_ready(&self, cluster: &str, namespace: &str, name: &str, ready: bool) -> Result<()> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        let status = if ready { "True" } else { "False" };
        let patch = json!({"status": {"conditions": [{"type": "Ready", "status": status}]}});
        let (code, body) = self.api.request(
            &cluster.to_owned(),
            "PATCH",
            &format!("{path}/status"),
            "application/merge-patch+json",
            &patch,
        );
        if code >= 300 {
            bail!("pod {namespace}/{name} in {cluster}: {code} {body}");
        }
        Ok(())
    }

    /// Kills the gateway process of `slice` in `cluster` (SIGKILL by PID) and waits until it
    /// is gone; the next round restarts it in the same pod, as a kubelet restarts a container.
    ///
    /// # Errors
    /// When there is no such gateway or it cannot be killed.
    pub fn kill_gateway(&mut self, slice: &str, cluster: &str) -> Result<()> {
        let kubelet = self.kubelets.get_mut(cluster).with_context(|| format!("no cluster {cluster}"))?;
        let gw = kubelet
            .gateways
            .values_mut()
            .find(|g| g.slice == slice)
            .with_context(|| format!("no gateway of {slice} in {cluster}"))?;
        gw.process.kill()
    }

    /// Kills gateway replica `ordinal` of `slice` in `cluster` (SIGKILL by PID) and waits until
    /// it is gone; the next round restarts it in the same pod (issue 13's failover events).
    ///
    /// # Errors
    /// When there is no such replica or it cannot be killed.
    pub fn kill_replica(&mut self, slice: &str, cluster: &str, ordinal: u32) -> Result<()> {
        self.replica_mut(slice, cluster, ordinal)?.process.kill()
    }

    /// Stops gateway replica `ordinal` of `slice` in `cluster` as a rolling restart does
    /// (SIGTERM, SIGKILL after 5 s); the next round starts it again in the same pod.
    ///
    /// # Errors
    /// When there is no such replica or it cannot be reaped.
    pub fn stop_replica(&mut self, slice: &str, cluster: &str, ordinal: u32) -> Result<()> {
        self.replica_mut(slice, cluster, ordinal)?.process.stop()
    }

    fn replica_mut(&mut self, slice: &str, cluster: &str, ordinal: u32) -> Result<&mut kubelet::GatewayRun> {
        self.kubelets
            .get_mut(cluster)
            .with_context(|| format!("no cluster {cluster}"))?
            .gateways
            .values_mut()
            .find(|g| g.slice == slice && g.ordinal == ordinal)
            .with_context(|| format!("no gateway replica {ordinal} of {slice} in {cluster}"))
    }

    /// The Prometheus text of gateway replica `ordinal` of `slice` in `cluster`, read from
    /// inside its pod.
    ///
    /// # Errors
    /// When there is no such replica or it does not answer.
    pub fn replica_metrics(&self, slice: &str, cluster: &str, ordinal: u32) -> Result<String> {
        let gw = self
            .kubelets
            .get(cluster)
            .and_then(|k| k.gateways.values().find(|g| g.slice == slice && g.ordinal == ordinal))
            .with_context(|| format!("no gateway replica {ordinal} of {slice} in {cluster}"))?;
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, slice_api::gateway::METRICS_PORT));
        kubelet::scrape_in(&gw.pod.netns_path, addr).map_err(|e| anyhow::anyhow!("{cluster} replica {ordinal}: {e}"))
    }

    /// Waits until gateway replica `ordinal` of `slice` in `cluster` runs again and every
    /// replica of the slice's other clusters counts it live (`slice_gateway_peer_live` 1: its
    /// multipath probes are answered), running rounds meanwhile (the lab's kubelet restarts a
    /// replica that exited).
    ///
    /// # Errors
    /// When a round fails, or the replica is not back within `timeout` (with what is wrong).
    pub fn wait_replica_back(
        &mut self,
        lab: &Lab,
        slice: &str,
        cluster: &str,
        ordinal: u32,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut key = None;
        loop {
            self.tick(lab)?;
            if key.is_none() {
                key = self.replica_wg(slice, cluster, ordinal, &["show", "{if}", "public-key"]).ok();
            }
            let others: Vec<(String, u32)> = self
                .kubelets
                .iter()
                .filter(|(c, _)| c.as_str() != cluster)
                .flat_map(|(c, k)| k.gateways.values().filter(|g| g.slice == slice).map(|g| (c.clone(), g.ordinal)))
                .collect();
            let live = key.as_ref().is_some_and(|key| {
                let line = format!("public_key=\"{}\"}} 1", key.trim());
                others.iter().all(|(c, o)| self.replica_metrics(slice, c, *o).is_ok_and(|m| m.contains(&line)))
            });
            if live {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{cluster} replica {ordinal} of {slice} not back within {timeout:?}\n{}", self.diagnose(lab));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// PIDs of the running gateways.
    pub fn gateway_pids(&self) -> Vec<u32> {
        self.kubelets.values().flat_map(|k| k.gateways.values().map(|g| g.process.id())).collect()
    }

    /// Makes `manifest` the desired state, as `kubectl apply` on the hub would (SliceConfigs not
    /// in it are deleted; MemberClusters are added or updated, never removed here), and
    /// converges: adds lab clusters for new member clusters, then runs the hub's and the
    /// workers' passes and the lab's [`Kubelet`] until nothing changes and every WorkerSlice is
    /// `Ready` (or not ready for a reason that waiting does not cure).
    ///
    /// # Errors
    /// When a lab step fails, an access list does not cover a request, or the control plane
    /// does not settle within the timeout (with what is wrong).
    pub fn apply(&mut self, lab: &mut Lab, manifest: &Manifest) -> Result<()> {
        let hub = HUB.to_owned();
        let path = "/apis/slicenet.io/v1alpha1";
        for old in self.api.list(&hub, &format!("{path}/sliceconfigs")) {
            let name = old["metadata"]["name"].as_str().unwrap_or_default();
            if !manifest.slices.iter().any(|s| s.name_any() == name) {
                self.api.request(&hub, "DELETE", &format!("{path}/sliceconfigs/{name}"), "", &Value::Null);
            }
        }
        for s in &manifest.slices {
            self.put_spec(&format!("{path}/sliceconfigs"), serde_json::to_value(s)?)?;
        }
        let mut clusters: Vec<MemberCluster> = manifest.clusters.clone();
        let named: BTreeSet<String> = manifest.slices.iter().flat_map(|s| s.spec.clusters.iter().cloned()).collect();
        for name in named {
            if !clusters.iter().any(|c| c.name_any() == name) {
                clusters.push(MemberCluster::new(&name, MemberClusterSpec::default()));
            }
        }
        for c in &clusters {
            self.put_spec(&format!("{path}/memberclusters"), serde_json::to_value(c)?)?;
        }
        let namespaces: Vec<String> = manifest
            .slices
            .iter()
            .flat_map(|s| s.spec.namespaces.iter().map(|n| n.namespace.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.join_clusters(lab, &clusters, &namespaces)?;
        self.converge(lab, |_| true)
    }

    /// Creates `obj` on the hub, or replaces its spec, labels and annotations (status,
    /// finalizers and the rest stay), as `kubectl apply` does.
    fn put_spec(&self, collection: &str, mut obj: Value) -> Result<()> {
        let hub = HUB.to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.retain(|k, _| k == "name" || k == "labels" || k == "annotations");
        }
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
        let (code, body) = match self.api.get(hub.clone(), &format!("{collection}/{name}")) {
            None => self.api.request(&hub, "POST", collection, "application/json", &obj),
            Some(mut old) => {
                old["spec"] = obj["spec"].clone();
                for key in ["labels", "annotations"] {
                    old["metadata"][key] = obj["metadata"].get(key).cloned().unwrap_or(Value::Null);
                }
                self.api.request(&hub, "PUT", &format!("{collection}/{name}"), "application/json", &old)
            }
        };
        if code >= 300 {
            bail!("applying {collection}/{name}: {code} {body}");
        }
        Ok(())
    }

    /// Creates a lab cluster (its nodes, agents and objects) and a worker for every member
    /// cluster that has none yet, and publishes its gateway address (none behind NAT).
    fn join_clusters(&mut self, lab: &mut Lab, clusters: &[MemberCluster], namespaces: &[String]) -> Result<()> {
        for member in clusters {
            let name = member.name_any();
            let annotations = member.annotations();
            let nodes = match annotations.get(NODES_ANNOTATION) {
                Some(n) => n.parse().with_context(|| format!("MemberCluster {name}: {NODES_ANNOTATION} {n:?}"))?,
                None => DEFAULT_NODES,
            };
            let behind_nat = annotations.get(BEHIND_NAT_ANNOTATION).is_some_and(|v| v == "true");
            if !lab.clusters().iter().any(|c| c.name() == name) {
                if lab.wan_netns().is_none() {
                    lab.add_wan()?;
                }
                let options = if behind_nat { ClusterOptions::behind_nat() } else { ClusterOptions::default() };
                lab.add_cluster_with(&name, nodes, options)?;
                for node in lab.cluster(&name).nodes() {
                    node.start_agent(&kubelet::empty_agent_config(node))?;
                }
            }
            let cluster = lab.cluster(&name);
            for obj in kubelet::cluster_objects(cluster, namespaces) {
                if self.api.get(name.clone(), &slice_kube::memory::object_path(&obj)).is_none() {
                    self.api.put(name.clone(), obj);
                }
            }
            if !self.workers.contains_key(&name) {
                let _runtime = self.runtime.enter();
                let hub = self.api.client_as(HUB.to_owned(), access::WORKER_HUB, &cluster_namespace(&name));
                let local = self.api.client_as(name.clone(), access::WORKER_CLUSTER, SYSTEM_NAMESPACE);
                let settings = Settings {
                    cluster: name.clone(),
                    gateway: GatewayDefaults { mtu: GATEWAY_MTU, ..GatewayDefaults::default() },
                    ..Settings::default()
                };
                let worker = Worker::new(hub, local, settings)
                    .with_metrics_source(kubelet::metrics_source(self.metrics.clone(), &name))
                    .with_dns_source(kubelet::dns_source(self.dns_targets.clone(), &name));
                self.workers.insert(name.clone(), worker);
                self.kubelets.insert(name.clone(), Kubelet::default());
            }
            // What `slicectl join` publishes: the cluster's public gateway address (IPv6 in a
            // dual-stack lab), none behind NAT (its gateways dial out; the others cannot reach it).
            let addresses: Vec<String> = cluster.published_address().iter().map(ToString::to_string).collect();
            let status = json!({"status": {"gatewayAddresses": addresses}});
            let path = format!("/apis/slicenet.io/v1alpha1/memberclusters/{name}/status");
            self.api.request(&HUB.to_owned(), "PATCH", &path, "application/merge-patch+json", &status);
        }
        Ok(())
    }

    /// Runs hub passes, worker passes (with heartbeats) and kubelet steps until a round
    /// changes nothing and the view satisfies `done` as well as the readiness rule of
    /// [`ControlPlane::apply`].
    fn converge(&mut self, lab: &Lab, done: impl Fn(&HubView) -> bool) -> Result<()> {
        self.rounds(lab, |cp| cp.settled() && done(&cp.view))
    }

    /// Runs rounds until one changes nothing, nothing failed, and `done` holds.
    fn rounds(&mut self, lab: &Lab, done: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        self.errors.clear();
        loop {
            let quiet = self.round(lab)?;
            let violations = self.api.violations();
            if !violations.is_empty() {
                bail!("requests the access lists do not cover: {violations:?}");
            }
            if quiet && self.errors.is_empty() && done(self) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the control plane did not settle within {:?}:\n{}", self.timeout, self.diagnose(lab));
            }
            // A round that changed something is followed at once (as a watch event would be);
            // a quiet one waits a little for what happens outside (handshakes, reloads).
            if quiet {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Every WorkerSlice that is not being deleted is `Ready`, or not for a lasting reason.
    fn settled(&self) -> bool {
        self.view.workers.iter().filter(|w| w.metadata.deletion_timestamp.is_none()).all(|w| {
            let ready = w.status.as_ref().and_then(|s| condition(&s.conditions, planner::READY));
            ready.is_some_and(|c| c.status == "True" || !transient(&c.reason))
        })
    }

    /// One round: the hub's pass, each worker's heartbeat (when due) and pass, each kubelet's
    /// step. True when none of them changed anything.
    fn round(&mut self, lab: &Lab) -> Result<bool> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut writes = 0;
        let hub_client = {
            let _runtime = self.runtime.enter();
            self.api.client_as(HUB.to_owned(), access::HUB, SYSTEM_NAMESPACE)
        };
        match self.runtime.block_on(hub::reconcile(&hub_client, &self.hub, now)) {
            Ok(outcome) => {
                writes += outcome.writes;
                self.errors.remove(HUB);
            }
            Err(e) => {
                self.errors.insert(HUB.to_owned(), slice_api::error_chain::chain(&e));
                writes += 1;
            }
        }
        let stamp = slice_operator::worker::now_rfc3339();
        for (cluster, worker) in &self.workers {
            let due = self.heartbeats.get(cluster).is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY);
            if due {
                self.runtime.block_on(worker.heartbeat(cluster, &stamp)).map_err(|e| anyhow::anyhow!(e))?;
                self.heartbeats.insert(cluster.clone(), Instant::now());
            }
            let key = format!("worker {cluster}");
            match self.runtime.block_on(worker.reconcile_once(cluster, &stamp)) {
                Ok(outcome) => {
                    writes += outcome.writes;
                    self.errors.remove(&key);
                }
                Err(e) => {
                    self.errors.insert(key, slice_api::error_chain::chain(&e));
                    writes += 1;
                }
            }
        }
        for (cluster, kubelet) in &mut self.kubelets {
            if kubelet.step(lab, &self.api, cluster, &self.metrics, self.timeout)? {
                writes += 1;
            }
        }
        let mut targets = self.dns_targets.lock().expect("dns targets lock");
        targets.clear();
        for (cluster, kubelet) in &self.kubelets {
            let first =
                lab.clusters().iter().find(|c| c.name() == cluster).and_then(|c| Some(c.nodes().first()?.netns_path()));
            if let (Some(server), Some(netns)) = (kubelet.dns.server(), first) {
                targets.insert(cluster.clone(), (netns, server));
            }
        }
        drop(targets);
        self.view = self.read_view()?;
        Ok(writes == 0)
    }

    /// One round (the hub's pass, the workers' heartbeats and passes, the kubelets' steps), as
    /// the controllers' resyncs run them; a failed pass is kept for [`ControlPlane::diagnose`].
    /// True when it changed nothing.
    ///
    /// # Errors
    /// When a lab step fails.
    pub fn tick(&mut self, lab: &Lab) -> Result<bool> {
        self.round(lab)
    }

    fn read_view(&self) -> Result<HubView> {
        let hub = HUB.to_owned();
        let list = |plural: &str| self.api.list(&hub, &format!("/apis/slicenet.io/v1alpha1/{plural}"));
        Ok(HubView {
            slices: serde_json::from_value(Value::Array(list("sliceconfigs")))?,
            clusters: serde_json::from_value(Value::Array(list("memberclusters")))?,
            workers: serde_json::from_value(Value::Array(list("workerslices")))?,
            pages: serde_json::from_value(Value::Array(list("slicepeers")))?,
            ..HubView::default()
        }
        .with_peers_from_pages()
        .sorted())
    }

    /// Runs the passes (as the controllers' watches and resyncs do) until a round changes
    /// nothing, without waiting for the tunnels: a restarted gateway runs again, the statuses
    /// say what is up and what is not.
    ///
    /// # Errors
    /// When a lab step fails or the control plane does not come to rest.
    pub fn reconcile(&mut self, lab: &Lab) -> Result<()> {
        self.rounds(lab, |_| true)
    }

    /// Runs the passes again (as the controllers' resyncs do) until a round changes nothing
    /// and every WorkerSlice is `Ready`: tunnel states follow the handshakes that happened
    /// since.
    ///
    /// # Errors
    /// When a lab step fails or the control plane does not settle.
    pub fn refresh_status(&mut self, lab: &Lab) -> Result<()> {
        self.converge(lab, |_| true)
    }

    /// Deletes every slice and waits until the lab holds nothing of them: SliceConfigs and
    /// WorkerSlices gone (the finalizers released by the hub and the workers), gateways
    /// stopped, their pods removed, port forwards gone, agents configured with no slice.
    ///
    /// # Errors
    /// When a teardown step fails.
    pub fn delete_all(&mut self, lab: &mut Lab) -> Result<()> {
        let clusters = self.view.clusters.iter().map(|c| {
            let mut c = c.clone();
            c.status = None;
            c
        });
        let manifest = Manifest { slices: Vec::new(), clusters: clusters.collect() };
        self.apply(lab, &manifest)?;
        self.converge(lab, |v| v.slices.is_empty() && v.workers.is_empty())?;
        for (cluster, kubelet) in &mut self.kubelets {
            kubelet.teardown(lab, &self.api, cluster, &self.metrics)?;
        }
        Ok(())
    }
}

/// The first packet across a path: pings `to` from `from` every 20 ms until one answers;
/// the time from `since`.
///
/// # Errors
/// When no answer comes within `timeout`.
pub fn first_packet(from: &Pod, to: Ipv4Addr, since: Instant, timeout: Duration) -> Result<Duration> {
    let deadline = since + timeout;
    loop {
        let ok =
            from.exec(&["ping", "-n", "-q", "-c", "1", "-W", "0.2", &to.to_string()]).is_ok_and(|o| o.status.success());
        if ok {
            return Ok(since.elapsed());
        }
        if Instant::now() > deadline {
            bail!("{} never reached {to} within {timeout:?}", from.lab_name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a pod as a kubelet would, retrying while the CNI plugin answers "try again later"
/// (code 11: the node's slice state is not there yet).
///
/// # Errors
/// Another error, or still code 11 after `timeout`.
pub fn run_pod_retrying(node: &crate::Node, spec: &crate::PodSpec, timeout: Duration) -> Result<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        match node.run_pod(spec.clone()) {
            Ok(pod) => return Ok(pod),
            Err(e) if format!("{e:#}").contains("try again") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

impl ControlPlane {
    /// The hub's view of this control plane's objects, as `slicectl status --hub-kubeconfig`
    /// reads it from a hub.
    pub fn hub_view(&self) -> HubView {
        self.view.clone()
    }

    /// What a person debugging a slice looks at first: what did not settle, per gateway
    /// `wg show`, the routes in its pod and its log, per node the slice router's routes.
    pub fn diagnose(&self, lab: &Lab) -> String {
        let mut out = String::new();
        for (k, v) in &self.errors {
            out.push_str(&format!("== {k}: {v}\n"));
        }
        out.push_str(&slice_api::hub_view::render(&self.view));
        for (cluster, kubelet) in &self.kubelets {
            for gw in kubelet.gateways.values() {
                let slice = &gw.slice;
                let wg = gw
                    .pod
                    .exec(&["wg", "show", &gw.interface])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                let routes = gw.pod.exec(&["ip", "route"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                // What the worker reads: the handshake of each peer key on /metrics.
                let metrics = self.metrics.lock().expect("metrics addresses lock").clone();
                for ((_, addr), netns) in metrics.iter().filter(|(_, n)| **n == gw.pod.netns_path) {
                    let text = kubelet::scrape_in(netns, *addr).unwrap_or_else(|e| e);
                    let lines: Vec<&str> = text
                        .lines()
                        .filter(|l| l.starts_with(slice_operator::worker::tunnels::LAST_HANDSHAKE_METRIC))
                        .collect();
                    out.push_str(&format!("-- /metrics at {addr}:\n{}\n", lines.join("\n")));
                }
                // The gateway's own log: warnings about peers, handshakes and drops.
                let log = gw.process.log_text();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                out.push_str(&format!(
                    "== gateway {slice} in {cluster} ({}):\n{}\n{}\n-- its log (last 20 lines):\n{}\n",
                    gw.slice_addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    wg.unwrap_or_default(),
                    routes.unwrap_or_default(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
                for node in lab.cluster(cluster).nodes() {
                    let router = format!("{}{slice}", node.router_netns_prefix());
                    let r = std::process::Command::new("ip").args(["-n", &router, "route"]).output();
                    out.push_str(&format!(
                        "-- router {router}:\n{}\n",
                        r.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
                    ));
                }
            }
            if let Some(server) = kubelet.dns.server() {
                let log = kubelet.dns.server_log();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                out.push_str(&format!("== slice-dns in {cluster} ({server}), its log (last 10 lines):\n{tail}\n"));
            }
        }
        out
    }
}
