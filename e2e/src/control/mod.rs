//! The control plane in process, for the lab: the same planner the hub runs and the same
//! worker logic a member cluster runs, driven from `SliceConfig` YAML, acting on lab clusters
//! instead of the Kubernetes API. `slicectl lab up -f FILE` uses it, so a slice in the lab and in
//! a real cluster go the same way from SliceConfig to data plane:
//!
//! ```text
//! YAML ─► SliceConfig, MemberCluster ─► slice_api::planner::plan ─► WorkerSlice per cluster
//!      ─► slice_operator::worker::plan (node prefixes, node agent config, gateway config)
//!      ─► lab: agent config files, gateway pods (CRI + slice-cni), slice-gateway, edge port forwards
//!      ─► WorkerSlice status (gateway key and endpoint) ─► re-plan: peers learn each other
//! ```
//!
//! What the API server and the controllers' watches do in a cluster is a loop here:
//! [`ControlPlane::apply`] takes the new objects and runs hub and worker steps until nothing
//! changes.
//!
//! Lab-only settings ride on MemberCluster annotations: `lab.slicenet.io/nodes` (default 2) and
//! `lab.slicenet.io/behind-nat: "true"` (no inbound forwarding). A cluster a SliceConfig names
//! without a MemberCluster document joins with the defaults.

pub mod convergence;
pub mod gateway;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use kube::ResourceExt;
use slice_api::crd::{
    Condition, GATEWAY_NAMESPACE, MemberCluster, MemberClusterSpec, MemberClusterStatus, NodeAllocation, SliceConfig,
    SliceConfigStatus, WorkerSlice, WorkerSliceSpec, WorkerSliceStatus, cluster_namespace, set_condition,
};
use slice_api::node::{NodeAgentConfig, SliceOnNode};
use slice_api::planner::{self, SlicePlan};
use slice_operator::worker::plan as worker_plan;

use crate::gateway::{KeyPair, keypair};
use crate::{ClusterOptions, Lab, Pod, PodProcess};

/// Annotation: how many nodes the lab gives a member cluster.
pub const NODES_ANNOTATION: &str = "lab.slicenet.io/nodes";
/// Annotation: the lab puts the member cluster behind NAT.
pub const BEHIND_NAT_ANNOTATION: &str = "lab.slicenet.io/behind-nat";
/// Nodes of a member cluster without [`NODES_ANNOTATION`].
pub const DEFAULT_NODES: usize = 2;
/// First public UDP port the lab's edges forward to gateways (NodePort-like).
pub const FIRST_PUBLIC_PORT: u16 = 31820;
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

/// Reads and parses a YAML file (see [`parse_manifest`]).
///
/// # Errors
/// When the file cannot be read or parsed.
pub fn read_manifest(path: &std::path::Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_manifest(&text).with_context(|| path.display().to_string())
}

/// One slice's gateway in one cluster.
struct GatewayRun {
    pod: Pod,
    process: Option<PodProcess>,
    interface: String,
    config: PathBuf,
    slice_address: Ipv4Addr,
    public_port: Option<u16>,
    routes: BTreeSet<IpNet>,
}

/// What one cluster's worker keeps for one slice.
struct WorkerRun {
    keys: KeyPair,
    /// The WorkerSlice spec as the worker's plan reads it, parsed once per worker step.
    typed: worker_plan::TypedSpec,
    nodes: Vec<NodeAllocation>,
    gateway: Option<GatewayRun>,
}

/// The hub and every member cluster's worker, in process, over a [`Lab`].
pub struct ControlPlane {
    slices: Vec<SliceConfig>,
    clusters: Vec<MemberCluster>,
    workers: Vec<WorkerSlice>,
    runs: BTreeMap<(String, String), WorkerRun>,
    next_port: BTreeMap<String, u16>,
    generation: i64,
    timeout: Duration,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("slices", &self.slices.len())
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    k8s_openapi::jiff::Timestamp::from_second(secs.try_into().unwrap_or(0)).map(|t| t.to_string()).unwrap_or_default()
}

impl ControlPlane {
    /// An empty control plane.
    pub fn new() -> Self {
        Self {
            slices: Vec::new(),
            clusters: Vec::new(),
            workers: Vec::new(),
            runs: BTreeMap::new(),
            next_port: BTreeMap::new(),
            generation: 0,
            timeout: Duration::from_secs(30),
        }
    }

    /// The SliceConfigs with the status the hub wrote.
    pub fn slices(&self) -> &[SliceConfig] {
        &self.slices
    }

    /// The WorkerSlices with the status the workers wrote.
    pub fn workers(&self) -> &[WorkerSlice] {
        &self.workers
    }

    /// The MemberClusters.
    pub fn clusters(&self) -> &[MemberCluster] {
        &self.clusters
    }

    /// The WorkerSlice of `slice` in `cluster`.
    pub fn worker(&self, slice: &str, cluster: &str) -> Option<&WorkerSlice> {
        self.workers.iter().find(|w| w.spec.slice == slice && w.spec.cluster == cluster)
    }

    /// The gateway pod's slice address of `slice` in `cluster`.
    pub fn gateway_address(&self, slice: &str, cluster: &str) -> Option<Ipv4Addr> {
        self.runs.get(&(slice.to_owned(), cluster.to_owned()))?.gateway.as_ref().map(|g| g.slice_address)
    }

    /// The gateway's TUN interface (and UAPI socket) name of `slice` in `cluster`.
    pub fn gateway_interface(&self, slice: &str, cluster: &str) -> Option<String> {
        self.runs.get(&(slice.to_owned(), cluster.to_owned()))?.gateway.as_ref().map(|g| g.interface.clone())
    }

    /// `wg ARGS…` in the gateway pod of `slice` in `cluster`.
    ///
    /// # Errors
    /// When there is no such gateway or `wg` fails.
    pub fn gateway_wg(&self, slice: &str, cluster: &str, args: &[&str]) -> Result<String> {
        let run = self.runs.get(&(slice.to_owned(), cluster.to_owned())).context("no such worker")?;
        let gw = run.gateway.as_ref().context("no gateway")?;
        let mut argv = vec!["wg"];
        argv.extend_from_slice(args);
        gw.pod.exec_ok(&argv)
    }

    /// PIDs of the running gateways.
    pub fn gateway_pids(&self) -> Vec<u32> {
        self.runs.values().filter_map(|r| r.gateway.as_ref()?.process.as_ref().map(PodProcess::id)).collect()
    }

    /// Makes `manifest` the desired state (SliceConfigs not in it are deleted; MemberClusters
    /// are added or updated, never removed here) and converges: adds lab clusters for new member
    /// clusters, then runs hub and worker steps until nothing changes.
    ///
    /// # Errors
    /// When a step fails; the objects keep what was done so far.
    pub fn apply(&mut self, lab: &mut Lab, manifest: &Manifest) -> Result<()> {
        self.generation += 1;
        let mut slices = Vec::new();
        for new in &manifest.slices {
            let mut s = new.clone();
            let old = self.slices.iter().find(|o| o.name_any() == s.name_any());
            s.status = old.and_then(|o| o.status.clone());
            let changed = old.is_none_or(|o| o.spec != s.spec);
            let generation = old.and_then(|o| o.metadata.generation).unwrap_or(0) + i64::from(changed);
            s.metadata.generation = Some(generation);
            s.metadata.creation_timestamp = old.and_then(|o| o.metadata.creation_timestamp.clone()).or_else(|| {
                let t = k8s_openapi::jiff::Timestamp::from_second(self.generation).ok()?;
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t))
            });
            slices.push(s);
        }
        self.slices = slices;
        for c in &manifest.clusters {
            match self.clusters.iter_mut().find(|o| o.name_any() == c.name_any()) {
                Some(o) => o.spec = c.spec.clone(),
                None => self.clusters.push(c.clone()),
            }
        }
        let named: BTreeSet<String> = self.slices.iter().flat_map(|s| s.spec.clusters.iter().cloned()).collect();
        for name in named {
            if !self.clusters.iter().any(|c| c.name_any() == name) {
                self.clusters.push(MemberCluster::new(&name, MemberClusterSpec::default()));
            }
        }
        self.join_clusters(lab)?;
        self.converge(lab)
    }

    /// Creates a lab cluster for every member cluster that has none yet and publishes its
    /// gateway address (none behind NAT).
    fn join_clusters(&mut self, lab: &mut Lab) -> Result<()> {
        for member in &mut self.clusters {
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
                    node.start_agent(&empty_agent_config(node))?;
                }
            }
            let cluster = lab.cluster(&name);
            let status = member.status.get_or_insert_with(MemberClusterStatus::default);
            status.gateway_addresses = cluster.public_address().iter().map(ToString::to_string).collect();
            status.last_heartbeat = Some(now());
        }
        Ok(())
    }

    fn converge(&mut self, lab: &Lab) -> Result<()> {
        for _ in 0..6 {
            let plans = planner::plan(&self.slices, &self.clusters, &self.workers);
            let hub_changed = self.hub_step(&plans);
            let worker_changed = self.worker_step(lab)?;
            if !hub_changed && !worker_changed {
                return Ok(());
            }
        }
        bail!("the control plane did not settle after 6 rounds")
    }

    /// The hub: records allocations and conditions, makes the WorkerSlices match the plan.
    fn hub_step(&mut self, plans: &[SlicePlan]) -> bool {
        let mut changed = false;
        let now = now();
        // Each member cluster's Healthy condition by the hub's own rule (the heartbeat's age).
        let at = now.parse().unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now());
        let stale_after = Duration::from_secs(slice_operator::hub::DEFAULT_HEARTBEAT_TIMEOUT_SECS);
        for c in &mut self.clusters {
            let (healthy, _) = slice_operator::hub::healthy_condition(c.status.as_ref(), at, stale_after);
            set_condition(&mut c.status.get_or_insert_with(MemberClusterStatus::default).conditions, healthy, &now);
        }
        for p in plans {
            let Some(s) = self.slices.iter_mut().find(|s| s.name_any() == p.name) else { continue };
            let mut status = s.status.clone().unwrap_or_else(SliceConfigStatus::default);
            status.vni = p.vni;
            status.clusters = p.allocations.clone();
            for c in &p.conditions {
                set_condition(&mut status.conditions, c.clone(), &now);
            }
            status.observed_generation = s.metadata.generation;
            if s.status.as_ref() != Some(&status) {
                s.status = Some(status);
            }
            for spec in &p.workers {
                match self.workers.iter_mut().find(|w| w.spec.slice == p.name && w.spec.cluster == spec.cluster) {
                    Some(w) if w.spec == *spec => {}
                    Some(w) => {
                        w.spec = spec.clone();
                        w.metadata.generation = Some(w.metadata.generation.unwrap_or(1) + 1);
                        changed = true;
                    }
                    None => {
                        let mut w = WorkerSlice::new(&p.name, spec.clone());
                        w.metadata.namespace = Some(cluster_namespace(&spec.cluster));
                        w.metadata.generation = Some(1);
                        self.workers.push(w);
                        changed = true;
                    }
                }
            }
            let before = self.workers.len();
            self.workers.retain(|w| w.spec.slice != p.name || p.workers.iter().any(|s| s.cluster == w.spec.cluster));
            changed |= self.workers.len() != before;
        }
        let before = self.workers.len();
        let names: BTreeSet<String> = self.slices.iter().map(ResourceExt::name_any).collect();
        self.workers.retain(|w| names.contains(&w.spec.slice));
        changed | (self.workers.len() != before)
    }

    /// Every cluster's worker: tears down what is no longer planned, then runs each WorkerSlice
    /// (node prefixes, agent configs, gateway) and reports its status. True when a status
    /// changed (the hub must re-plan).
    fn worker_step(&mut self, lab: &Lab) -> Result<bool> {
        let wanted: BTreeSet<(String, String)> =
            self.workers.iter().map(|w| (w.spec.slice.clone(), w.spec.cluster.clone())).collect();
        let gone: Vec<(String, String)> = self.runs.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
        for key in &gone {
            let run = self.runs.remove(key).expect("listed above");
            teardown(lab, &key.1, run)?;
        }
        let mut changed = false;
        let mut touched: BTreeSet<String> = gone.iter().map(|k| k.1.clone()).collect();
        for i in 0..self.workers.len() {
            let spec = self.workers[i].spec.clone();
            let cluster = lab.cluster(&spec.cluster);
            let key = (spec.slice.clone(), spec.cluster.clone());
            let typed = worker_plan::TypedSpec::parse(&spec)
                .with_context(|| format!("slice {} in {}", spec.slice, spec.cluster))?;
            let run = self.runs.entry(key.clone()).or_insert_with(|| WorkerRun {
                keys: keypair(),
                typed: typed.clone(),
                nodes: Vec::new(),
                gateway: None,
            });
            run.typed = typed;
            let names: Vec<String> = cluster.nodes().iter().map(|n| n.name().to_owned()).collect();
            let nodes = worker_plan::allocate_node_prefixes(&run.typed, &names, &run.nodes)
                .with_context(|| format!("slice {} in {}", spec.slice, spec.cluster))?;
            if nodes != run.nodes {
                run.nodes = nodes;
                touched.insert(spec.cluster.clone());
            }
            touched.insert(spec.cluster.clone());
        }
        // Agent configs first (the gateway pod needs its node's slice state), then gateways,
        // then the agents again with the routes via the gateways.
        for cluster in &touched {
            self.write_agent_configs(lab, cluster)?;
        }
        for i in 0..self.workers.len() {
            let spec = self.workers[i].spec.clone();
            let key = (spec.slice.clone(), spec.cluster.clone());
            let started = self.ensure_gateway(lab, &spec, &key)?;
            let status = self.worker_status(&spec, &key);
            let w = &mut self.workers[i];
            if w.status.as_ref() != Some(&status) {
                w.status = Some(status);
                changed = true;
            }
            changed |= started;
        }
        let mut written = Vec::new();
        for cluster in &touched {
            written.extend(self.write_agent_configs(lab, cluster)?);
        }
        wait_agents(&written, self.timeout)?;
        Ok(changed)
    }

    /// Writes every node's agent config of `cluster` (every slice that cluster runs) and
    /// returns them.
    fn write_agent_configs(&self, lab: &Lab, cluster: &str) -> Result<Vec<NodeAgentConfig>> {
        let mut written = Vec::new();
        let c = lab.cluster(cluster);
        let nodes: Vec<worker_plan::ClusterNode> = c
            .nodes()
            .iter()
            .map(|n| worker_plan::ClusterNode {
                name: n.name().to_owned(),
                underlay_address: IpAddr::V4(n.underlay_address()),
            })
            .collect();
        for node in c.nodes() {
            let mut config = empty_agent_config(node);
            for w in self.workers.iter().filter(|w| w.spec.cluster == cluster) {
                let key = (w.spec.slice.clone(), w.spec.cluster.clone());
                let Some(run) = self.runs.get(&key) else { continue };
                let gateway = run.gateway.as_ref().map(|g| IpAddr::V4(g.slice_address));
                let on_node: SliceOnNode =
                    worker_plan::node_agent_slice(&run.typed, node.name(), &nodes, &run.nodes, gateway)
                        .with_context(|| format!("slice {} on {cluster}/{}", w.spec.slice, node.name()))?;
                config.slices.push(on_node);
            }
            config.validate().map_err(|e| anyhow::anyhow!("{cluster}/{}: {e}", node.name()))?;
            node.update_agent_config(&config)?;
            written.push(config);
        }
        Ok(written)
    }

    /// Starts the gateway of `spec` if it does not run, and (re)configures its peers and the
    /// routes into its TUN device. True when it was started.
    fn ensure_gateway(&mut self, lab: &Lab, spec: &WorkerSliceSpec, key: &(String, String)) -> Result<bool> {
        let cluster = lab.cluster(&spec.cluster);
        let run = self.runs.get_mut(key).expect("worker run exists");
        let mut started = false;
        if run.gateway.is_none() {
            let node = cluster.nodes().first().context("cluster without nodes")?;
            node.wait_slice_ready(&spec.slice, self.timeout)?;
            let pod = node
                .run_pod(
                    // As the worker's Deployment makes it: in the gateways' namespace, the
                    // slice named by its annotation.
                    crate::PodSpec::new(GATEWAY_NAMESPACE, format!("gw-{}", spec.slice))
                        .label("app.kubernetes.io/name", "slice-gateway")
                        .annotation(slice_api::names::SLICE_ANNOTATION, spec.slice.clone()),
                )
                .with_context(|| format!("gateway pod of {} in {}", spec.slice, spec.cluster))?;
            let public_port = if cluster.behind_nat() {
                None
            } else {
                let port = spec.gateway.node_port.unwrap_or_else(|| {
                    let next = self.next_port.entry(spec.cluster.clone()).or_insert(FIRST_PUBLIC_PORT);
                    *next += 1;
                    *next - 1
                });
                cluster.forward_udp(port, pod.ipv4("eth0")?, spec.gateway.port)?;
                Some(port)
            };
            let interface = format!("{}{}g{}", lab.prefix(), cluster.index(), spec.vni % 10_000);
            if interface.len() > 15 {
                bail!("gateway interface name {interface} is longer than 15 bytes: use a shorter lab prefix");
            }
            let dir = lab.root().join("gateways");
            std::fs::create_dir_all(&dir)?;
            run.gateway = Some(GatewayRun {
                slice_address: pod.ipv4("slice0")?,
                pod,
                process: None,
                config: dir.join(format!("{}-{}.conf", spec.slice, spec.cluster)),
                interface,
                public_port,
                routes: BTreeSet::new(),
            });
            started = true;
        }
        let gw = run.gateway.as_mut().expect("set above");
        let conf = worker_plan::gateway_config(&run.typed.gateway, &run.keys.private).render();
        let old = std::fs::read_to_string(&gw.config).unwrap_or_default();
        if old != conf {
            std::fs::write(&gw.config, &conf).with_context(|| format!("cannot write {}", gw.config.display()))?;
            std::fs::set_permissions(&gw.config, std::fs::Permissions::from_mode(0o600))?;
            if gw.process.is_some() {
                // syncconf changes only what differs: the other peers keep their sessions.
                gw.pod.exec_ok(&["wg", "syncconf", &gw.interface, &gw.config.display().to_string()])?;
            }
        }
        if gw.process.is_none() {
            start_gateway(lab, gw, self.timeout)?;
        }
        // The prefixes the gateway lists as AllowedIPs, routed into its TUN device.
        let wanted: BTreeSet<IpNet> = run.typed.gateway.peers.iter().map(|p| p.prefix.trunc()).collect();
        for prefix in gw.routes.difference(&wanted) {
            let _ = gw.pod.exec(&["ip", "route", "del", &prefix.to_string(), "dev", &gw.interface]);
        }
        for prefix in wanted.difference(&gw.routes) {
            gw.pod.exec_ok(&["ip", "route", "replace", &prefix.to_string(), "dev", &gw.interface])?;
        }
        gw.routes = wanted;
        Ok(started)
    }

    /// The WorkerSlice status the worker reports: gateway key and endpoint, nodes, tunnels.
    fn worker_status(&self, spec: &WorkerSliceSpec, key: &(String, String)) -> WorkerSliceStatus {
        let run = &self.runs[key];
        let gw = run.gateway.as_ref();
        let endpoint = self.clusters.iter().find(|c| c.name_any() == spec.cluster).and_then(|c| {
            let address = c.status.as_ref()?.gateway_addresses.first()?.clone();
            Some(format!("{address}:{}", gw?.public_port?))
        });
        // The gateway's handshakes through its UAPI (`wg show IFACE latest-handshakes`: "<public
        // key>\t<unix seconds>" per peer, 0 for none) rather than its /metrics, which the test
        // process cannot reach in the pod's namespace; the tunnel states and reasons then come
        // from the worker's own rules (`worker::tunnels::peer_statuses`).
        let handshakes: Result<slice_operator::worker::tunnels::Handshakes, &str> = gw
            .and_then(|g| g.pod.exec_ok(&["wg", "show", &g.interface, "latest-handshakes"]).ok())
            .map(|text| {
                text.lines()
                    .filter_map(|l| {
                        let (key, t) = l.split_once('\t')?;
                        let t: i64 = t.trim().parse().ok()?;
                        Some((
                            key.to_owned(),
                            (t > 0).then(|| k8s_openapi::jiff::Timestamp::from_second(t).ok()).flatten(),
                        ))
                    })
                    .collect()
            })
            .ok_or("its UAPI did not answer");
        let now = k8s_openapi::jiff::Timestamp::now();
        let peers =
            slice_operator::worker::tunnels::peer_statuses(&spec.peers, handshakes.as_ref().map_err(|e| *e), now);
        let running = gw.is_some_and(|g| g.process.is_some());
        let conditions = vec![if running {
            Condition::new(planner::READY, true, "GatewayRunning", "")
        } else {
            Condition::new(planner::READY, false, "GatewayPending", "the gateway is not running")
        }];
        WorkerSliceStatus {
            gateway_public_key: Some(run.keys.public.to_base64()),
            gateway_endpoint: endpoint.filter(|_| running),
            nodes: run.nodes.clone(),
            connected_pods: 0,
            peers,
            conditions,
            observed_generation: None,
        }
    }

    /// Reads every gateway's tunnel state again into its WorkerSlice status (handshakes happen
    /// after [`ControlPlane::apply`] returns, with the first traffic or keepalive).
    pub fn refresh_status(&mut self) {
        for i in 0..self.workers.len() {
            let spec = self.workers[i].spec.clone();
            let key = (spec.slice.clone(), spec.cluster.clone());
            if self.runs.contains_key(&key) {
                let status = self.worker_status(&spec, &key);
                self.workers[i].status = Some(status);
            }
        }
    }

    /// Deletes every slice and waits until the lab holds nothing of them: gateways stopped,
    /// their pods removed, port forwards gone, agents configured with no slice.
    ///
    /// # Errors
    /// When a teardown step fails.
    pub fn delete_all(&mut self, lab: &mut Lab) -> Result<()> {
        let clusters = self.clusters.iter().map(|c| {
            let mut c = c.clone();
            c.status = None;
            c
        });
        let manifest = Manifest { slices: Vec::new(), clusters: clusters.collect() };
        self.apply(lab, &manifest)
    }
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

fn empty_agent_config(node: &crate::Node) -> NodeAgentConfig {
    NodeAgentConfig {
        node: node.name().to_owned(),
        underlay_address: IpAddr::V4(node.underlay_address()),
        underlay_mtu: 1500,
        state_dir: node.state_dir(),
        netns_dir: crate::netns::NETNS_DIR.into(),
        router_netns_prefix: node.router_netns_prefix(),
        vxlan_port: slice_api::names::DEFAULT_VXLAN_PORT,
        slices: Vec::new(),
    }
}

fn start_gateway(lab: &Lab, gw: &mut GatewayRun, timeout: Duration) -> Result<()> {
    let bin = lab.options().bin_dir.join("slice-gateway");
    if !bin.exists() {
        bail!("{} does not exist: build it or set SLICENET_BIN_DIR", bin.display());
    }
    gw.process = Some(crate::gateway::spawn_gateway(&gw.pod, &bin, &gw.interface, &gw.config, GATEWAY_MTU, timeout)?);
    gw.routes.clear();
    Ok(())
}

/// Stops a slice's gateway in `cluster`, removes its pod (CNI DEL frees its address) and its
/// port forward.
fn teardown(lab: &Lab, cluster: &str, run: WorkerRun) -> Result<()> {
    let Some(mut gw) = run.gateway else { return Ok(()) };
    if let Some(mut p) = gw.process.take() {
        p.stop()?;
    }
    let c = lab.cluster(cluster);
    let node = c.nodes().first().context("cluster without nodes")?;
    node.remove_pod(&gw.pod)?;
    if let Some(port) = gw.public_port {
        c.remove_forward_udp(port)?;
    }
    let _ = std::fs::remove_file(&gw.config);
    Ok(())
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
    pub fn hub_view(&self) -> slice_api::hub_view::HubView {
        slice_api::hub_view::HubView {
            slices: self.slices().to_vec(),
            clusters: self.clusters().to_vec(),
            workers: self.workers().to_vec(),
        }
        .sorted()
    }
}

impl ControlPlane {
    /// What a person debugging a slice looks at first: per gateway `wg show` and the routes in
    /// its pod, per node the slice router's routes.
    pub fn diagnose(&self, lab: &Lab) -> String {
        let mut out = String::new();
        for ((slice, cluster), run) in &self.runs {
            let Some(gw) = &run.gateway else { continue };
            let wg =
                gw.pod.exec(&["wg", "show", &gw.interface]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let routes = gw.pod.exec(&["ip", "route"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            // The gateway's own log: warnings about peers, handshakes and drops.
            let log = gw.process.as_ref().map(|p| p.log_text()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            out.push_str(&format!(
                "== gateway {slice} in {cluster} ({}):\n{}\n{}\n-- its log (last 20 lines):\n{}\n",
                gw.slice_address,
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
        out
    }
}
