//! Node agents: their configuration planned from a small slice list ([`LabSlice`]) with the
//! worker's own plan, and the
//! `slice-operator node-agent` process inside a node's namespace.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use slice_api::node::{NodeAgentConfig, RemoteRoute};

use crate::{cmd, netns};

/// `maxClusters` the lab carves slice subnets with.
pub const LAB_MAX_CLUSTERS: u32 = 16;
/// Node prefix length the lab uses.
pub const LAB_NODE_PREFIX_LEN: u8 = 26;
/// Node prefix length the lab uses for IPv6 subnets.
pub const LAB_NODE_PREFIX_LEN_V6: u8 = 120;

/// The lab's node prefix length for `subnet`'s family.
fn node_prefix_len(subnet: IpNet) -> u8 {
    if subnet.addr().is_ipv4() { LAB_NODE_PREFIX_LEN } else { LAB_NODE_PREFIX_LEN_V6 }
}

/// A slice as a lab test describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSlice {
    pub name: String,
    pub vni: u32,
    pub subnet: IpNet,
    /// Member namespaces (in this cluster).
    pub namespaces: Vec<String>,
    /// Other clusters' prefixes via this cluster's gateway pod (the same on every node).
    pub remote_routes: Vec<RemoteRoute>,
    /// The second family's subnet of a dual-stack slice (split like `subnet`).
    pub secondary: Option<IpNet>,
}

impl LabSlice {
    /// A slice with the given members.
    ///
    /// # Panics
    /// When `subnet` is not a valid prefix (test input).
    pub fn new(name: &str, vni: u32, subnet: &str, namespaces: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            vni,
            subnet: subnet.parse().expect("LabSlice subnet is a prefix"),
            namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            remote_routes: Vec::new(),
            secondary: None,
        }
    }

    /// The same slice, dual-stack with `subnet` as its second family.
    ///
    /// # Panics
    /// When `subnet` is not a valid prefix (test input).
    #[must_use]
    pub fn with_secondary(mut self, subnet: &str) -> Self {
        self.secondary = Some(subnet.parse().expect("LabSlice secondary subnet is a prefix"));
        self
    }

    /// Cluster prefix number `cluster_index` of the slice subnet, as the lab carves it
    /// (16 parts, `LAB_MAX_CLUSTERS`).
    ///
    /// # Errors
    /// When the subnet is too small or the index out of range.
    pub fn cluster_prefix(&self, cluster_index: usize) -> Result<IpNet> {
        slice_api::prefix::cluster_prefix(self.subnet, LAB_MAX_CLUSTERS, cluster_index as u64)
            .with_context(|| format!("slice {}", self.name))
    }

    /// This slice with explicit remote routes.
    #[must_use]
    pub fn with_remote_routes(mut self, routes: Vec<RemoteRoute>) -> Self {
        self.remote_routes = routes;
        self
    }

    /// This slice as cluster `this_cluster` sees it: the cluster prefixes of `other_clusters`
    /// (cluster indexes; `this_cluster` itself is skipped) via the local gateway pod's slice
    /// address `gateway`.
    ///
    /// # Errors
    /// When a cluster prefix cannot be carved.
    pub fn via_gateway(mut self, this_cluster: usize, other_clusters: &[usize], gateway: IpAddr) -> Result<Self> {
        let mut routes = Vec::new();
        for &c in other_clusters.iter().filter(|c| **c != this_cluster) {
            routes.push(RemoteRoute::new(self.cluster_prefix(c)?, gateway));
        }
        self.remote_routes = routes;
        Ok(self)
    }
}

/// What the config builder needs to know about one node.
#[derive(Debug, Clone)]
pub(crate) struct AgentNode {
    pub(crate) name: String,
    /// 1-based.
    pub(crate) index: usize,
    pub(crate) underlay: IpAddr,
    pub(crate) state_dir: PathBuf,
    pub(crate) router_netns_prefix: String,
}

/// The node agent configuration of every node of one cluster, planned as the worker plans it
/// (`slice_operator::worker::plan::node_agent_slice`): cluster prefix `cluster_index` of each
/// slice subnet split into [`LAB_MAX_CLUSTERS`], node prefix /26 number `index − 1`, the other
/// nodes of the cluster as peers, the slice's remote routes as the prefixes of peer clusters
/// via their (one) gateway.
pub(crate) fn agent_configs(
    cluster_index: usize,
    nodes: &[AgentNode],
    slices: &[LabSlice],
) -> Result<Vec<NodeAgentConfig>> {
    use slice_api::crd::{NodeAllocation, WorkerPeer, WorkerSliceSpec};
    use slice_operator::worker::plan::{ClusterNode, TypedSpec, node_agent_slice};

    let cluster_nodes: Vec<ClusterNode> = nodes.iter().map(|n| ClusterNode::new(n.name.clone(), n.underlay)).collect();
    let mut planned = Vec::new();
    for slice in slices {
        let cluster = slice.cluster_prefix(cluster_index)?;
        let mut allocations = Vec::new();
        for n in nodes {
            let prefix = slice_api::prefix::node_prefix(cluster, node_prefix_len(slice.subnet), (n.index - 1) as u64)
                .with_context(|| format!("slice {} node {}", slice.name, n.name))?;
            allocations.push(NodeAllocation { node: n.name.clone(), prefix: prefix.to_string() });
        }
        let mut vias: Vec<IpAddr> = slice.remote_routes.iter().map(|r| r.via).collect();
        vias.dedup();
        if vias.len() > 1 {
            bail!("slice {}: remote routes via more than one gateway ({vias:?})", slice.name);
        }
        let spec = WorkerSliceSpec {
            slice: slice.name.clone(),
            cluster: format!("lab{cluster_index}"),
            slice_subnet: slice.subnet.to_string(),
            cluster_prefix: cluster.to_string(),
            node_prefix_length: node_prefix_len(slice.subnet),
            secondary_family: match slice.secondary {
                Some(subnet) => Some(slice_api::crd::WorkerSliceFamily {
                    slice_subnet: subnet.to_string(),
                    cluster_prefix: slice_api::prefix::cluster_prefix(subnet, LAB_MAX_CLUSTERS, cluster_index as u64)?
                        .to_string(),
                    node_prefix_length: node_prefix_len(subnet),
                }),
                None => None,
            },
            vni: slice.vni,
            mtu: None,
            namespaces: slice.namespaces.clone(),
            gateway: slice_api::crd::GatewaySpec::default(),
            peers: slice
                .remote_routes
                .iter()
                .enumerate()
                .map(|(i, r)| WorkerPeer {
                    cluster: format!("remote{i}"),
                    prefix: r.prefix.to_string(),
                    secondary_prefix: None,
                    public_key: None,
                    endpoint: None,
                    replicas: Vec::new(),
                })
                .collect(),
            imports: Vec::new(),
            pods: Vec::new(),
            isolation: None,
            qos: None,
            peer_pages: None,
        };
        let typed = TypedSpec::parse(&spec).with_context(|| format!("slice {}", slice.name))?;
        planned.push((typed, allocations, vias.first().copied()));
    }
    let mut configs = Vec::new();
    for node in nodes {
        let mut on_node = Vec::new();
        for (typed, allocations, gateway) in &planned {
            let gateway = slice_operator::worker::plan::GatewayAddresses::primary(*gateway);
            let s = node_agent_slice(typed, &node.name, &cluster_nodes, allocations, gateway)
                .with_context(|| format!("slice {} on {}", typed.slice, node.name))?;
            on_node.push(s);
        }
        let config = NodeAgentConfig {
            node: node.name.clone(),
            underlay_address: node.underlay,
            underlay_mtu: 1500,
            state_dir: node.state_dir.clone(),
            netns_dir: netns::NETNS_DIR.into(),
            router_netns_prefix: node.router_netns_prefix.clone(),
            vxlan_port: slice_api::names::DEFAULT_VXLAN_PORT,
            slices: on_node,
        };
        config.validate().map_err(|e| anyhow::anyhow!("node {}: {e}", node.name))?;
        configs.push(config);
    }
    Ok(configs)
}

/// Files of one node's agent.
#[derive(Debug, Clone)]
pub(crate) struct AgentPaths {
    pub(crate) config: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) pid_file: PathBuf,
}

impl AgentPaths {
    pub(crate) fn new(node_dir: &Path) -> Self {
        Self {
            config: node_dir.join("agent.json"),
            log: node_dir.join("agent.log"),
            pid_file: node_dir.join("agent.pid"),
        }
    }
}

/// Writes the agent configuration atomically (the agent polls the file).
pub(crate) fn write_config(paths: &AgentPaths, config: &NodeAgentConfig) -> Result<()> {
    let json = serde_json::to_vec_pretty(config)?;
    slice_api::node::write_atomic(&paths.config, &json)?;
    Ok(())
}

/// Starts `slice-operator node-agent --config FILE` inside `netns`.
pub(crate) fn start(paths: &AgentPaths, operator: &Path, netns: &Path) -> Result<Child> {
    if !operator.exists() {
        bail!(
            "{} does not exist: build it (`cargo build -p slice-operator`) or set SLICENET_BIN_DIR",
            operator.display()
        );
    }
    let log = File::options()
        .create(true)
        .append(true)
        .open(&paths.log)
        .with_context(|| format!("cannot open {}", paths.log.display()))?;
    // The agent polls its file every 100 ms: the lab stands in for a watch on the API.
    let argv = [
        operator,
        Path::new("node-agent"),
        Path::new("--config"),
        &paths.config,
        Path::new("--interval-ms"),
        Path::new("100"),
    ];
    let mut command = netns::command(netns, &argv);
    command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let child = command.spawn().with_context(|| format!("cannot start `{}`", cmd::describe(&command)))?;
    std::fs::write(&paths.pid_file, child.id().to_string())
        .with_context(|| format!("cannot write {}", paths.pid_file.display()))?;
    Ok(child)
}

/// SIGTERM, wait up to `grace`, then SIGKILL; reaps the child.
pub(crate) fn stop_child(child: &mut Child, grace: Duration) -> Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().context("cannot reap a killed child")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: usize) -> AgentNode {
        AgentNode {
            name: format!("n{i}"),
            index: i,
            underlay: format!("198.18.1.{}", 10 + i).parse().unwrap(),
            state_dir: format!("/lab/c2/n{i}/state").into(),
            router_netns_prefix: format!("lab-c2-n{i}-"),
        }
    }

    #[test]
    fn configs_carve_cluster_and_node_prefixes() {
        let slices = [LabSlice::new("blue", 100, "10.80.0.0/16", &["shop"])];
        let configs = agent_configs(1, &[node(1), node(2)], &slices).unwrap();
        assert_eq!(configs.len(), 2);
        let n2 = &configs[1];
        assert_eq!(n2.node, "n2");
        assert_eq!(n2.slices[0].node_prefix.to_string(), "10.80.16.64/26");
        assert_eq!(n2.slices[0].peers.len(), 1);
        assert_eq!(n2.slices[0].peers[0].name, "n1");
        assert_eq!(n2.slices[0].peers[0].node_prefix.to_string(), "10.80.16.0/26");
        assert_eq!(n2.router_netns("blue"), PathBuf::from("/run/netns/lab-c2-n2-blue"));
        assert!(n2.slices[0].remote_routes.is_empty());
    }

    #[test]
    fn remote_routes_lead_to_the_other_clusters_via_the_gateway() {
        let gw: IpAddr = "10.80.16.2".parse().unwrap();
        let slice = LabSlice::new("blue", 100, "10.80.0.0/16", &["shop"]).via_gateway(1, &[0, 1, 2], gw).unwrap();
        let prefixes: Vec<String> = slice.remote_routes.iter().map(|r| r.prefix.to_string()).collect();
        assert_eq!(prefixes, ["10.80.0.0/20", "10.80.32.0/20"]);
        let configs = agent_configs(1, &[node(1), node(2)], &[slice]).unwrap();
        for c in &configs {
            assert_eq!(c.slices[0].remote_routes.len(), 2);
            assert!(c.slices[0].remote_routes.iter().all(|r| r.via == gw));
        }
    }
}
