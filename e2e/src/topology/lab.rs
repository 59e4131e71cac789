//! The topology: a [`Lab`] of [`Cluster`]s of [`Node`]s, each node a network namespace on its
//! cluster's underlay bridge with its own containerd, and the pod and agent API on a node.
//!
//! Names and addresses (prefix `P`, cluster `C` with 0-based index `c`, node `nK` with 1-based
//! index `k`):
//!
//! | what | value |
//! | --- | --- |
//! | lab directory | `/run/slicenet-lab/P/` |
//! | underlay namespace (bridge `br0`) | `P-C-ul` |
//! | node namespace | `P-C-nK`, `eth0` = `198.18.c.(10+k)/24`, `lo` up |
//! | node directory | `/run/slicenet-lab/P/C/nK/` (`state/`, `ipam/`, `containerd/`, agent files) |
//! | pod CIDR of node `nK` (same in every cluster) | `10.244.k.0/24`, routed by the other nodes of its cluster via `198.18.c.(10+k)` |
//! | the cluster's resolver on every node | [`NODE_LOCAL_DNS`] on the node's `lo` |
//! | slice router namespaces of a node | `P-C-nK-<slice>` |
//!
//! With a WAN ([`Lab::add_wan`]) every cluster also gets an edge namespace `P-C-edge` on the
//! shared WAN namespace `P-wan` (see [`crate::wan`] for its addresses and rules).
//!
//! A dual-stack lab ([`LabOptions::ipv6`]) adds IPv6 beside every IPv4 address above:
//!
//! | what | value |
//! | --- | --- |
//! | node `eth0` | also `2001:db8:1:c::(10+k)/64` (hex) |
//! | pod CIDR of node `nK` | also `fd44:0:0:k::/64`, routed by the other nodes via their IPv6 underlay address |
//! | VXLAN between a cluster's nodes (the node agents' underlay address, the Nodes' `InternalIP`) | the IPv6 underlay address |

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::{Ipv4Net, Ipv6Net};
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxState,
};
use sha2::Digest;
use slice_api::node::{NodeAgentConfig, NodeState};
use tokio::runtime::Runtime;

use crate::agent::{self, AgentNode, AgentPaths, LabSlice};
use crate::cleanup::{self, cgroup_parent, lab_root};
use crate::containerd::{self, ContainerdPaths};
use crate::cri::{self, CriClient};
use crate::pod::{Pod, PodSpec, PodSummary};
use crate::wan::{self, ClusterOptions, Edge, EdgeNode, Proto};
use crate::{cmd, netns, pause};

/// The address of the cluster's resolver on every node (NodeLocal DNSCache's link-local
/// address), on the node namespace's `lo` (NodeLocal DNSCache puts it on a dummy link; the lab
/// machines have no dummy driver): pods reach it through their default route.
pub const NODE_LOCAL_DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);

/// How a lab is built.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Chain `slice-cni` after `bridge` in every node's conflist (default `true`). Off gives the
    /// plain primary CNI, for tests of the lab itself and for with/without benchmarks.
    pub slice_cni: bool,
    /// Where `slice-cni` and `slice-operator` are (default [`crate::bin_dir`]).
    pub bin_dir: PathBuf,
    /// How long a node's containerd may take to become ready (default 60 s).
    pub start_timeout: Duration,
    /// A dual-stack lab (default `false`): the underlay, the pod network, the edges and the WAN
    /// gain IPv6 (underlay and WAN from `2001:db8::/32`, pods from `fd44::/16`), the node agents'
    /// VXLAN runs over the IPv6 underlay, and the clusters publish their IPv6 public address.
    pub ipv6: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self { slice_cni: true, bin_dir: crate::bin_dir(), start_timeout: Duration::from_secs(60), ipv6: false }
    }
}

impl LabOptions {
    /// The default options with `slice-cni` left out of the CNI chain.
    pub fn without_slice_cni() -> Self {
        Self { slice_cni: false, ..Self::default() }
    }

    /// The default options in a dual-stack lab ([`LabOptions::ipv6`]).
    pub fn dual_stack() -> Self {
        Self { ipv6: true, ..Self::default() }
    }
}

/// A lab: clusters of network namespaces on this machine. Dropping it tears everything down.
pub struct Lab {
    prefix: String,
    root: PathBuf,
    options: LabOptions,
    rt: Arc<Runtime>,
    pause_archive: PathBuf,
    clusters: Vec<Cluster>,
    /// The WAN namespace, once [`Lab::add_wan`] made it.
    wan: Option<String>,
    torn_down: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("prefix", &self.prefix).field("clusters", &self.clusters).finish()
    }
}

/// Checks a lab prefix: a lowercase letter, then up to 9 lowercase letters or digits. No `-`, so
/// that `P-` never matches another lab's names.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    let ok = (1..=10).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok { Ok(()) } else { bail!("lab prefix {prefix:?} must be [a-z][a-z0-9]{{0,9}}") }
}

fn validate_cluster_name(name: &str) -> Result<()> {
    let ok = (1..=6).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok { Ok(()) } else { bail!("cluster name {name:?} must be [a-z][a-z0-9]{{0,5}}") }
}

impl Lab {
    /// A new, empty lab with default options (cleans up any leftovers of a lab with this prefix).
    ///
    /// # Errors
    /// When not root, the prefix is invalid, leftovers cannot be removed or the pause image
    /// cannot be built.
    pub fn new(prefix: &str) -> Result<Self> {
        Self::with_options(prefix, LabOptions::default())
    }

    /// A new, empty lab.
    ///
    /// # Errors
    /// See [`Lab::new`].
    pub fn with_options(prefix: &str, options: LabOptions) -> Result<Self> {
        crate::require_root()?;
        validate_prefix(prefix)?;
        cleanup::cleanup(prefix).context("cannot clean up leftovers of an earlier lab")?;
        let root = lab_root(prefix);
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let pause_archive = pause::pause_archive()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("lab-{prefix}"))
            .enable_all()
            .build()
            .context("cannot build the lab's tokio runtime")?;
        Ok(Self {
            prefix: prefix.to_owned(),
            root,
            options,
            rt: Arc::new(rt),
            pause_archive,
            clusters: Vec::new(),
            wan: None,
            torn_down: false,
        })
    }

    /// The lab's name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's directory (`/run/slicenet-lab/<prefix>`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The options the lab was built with.
    pub fn options(&self) -> &LabOptions {
        &self.options
    }

    /// Adds cluster `name` with `nodes` nodes (`n1`, `n2`, …): the underlay namespace and bridge,
    /// the node namespaces, and a ready containerd with the pause image on every node (nodes
    /// start in parallel).
    ///
    /// # Errors
    /// When a name is invalid or taken, or any node fails to come up (with containerd's log
    /// tail). What was made so far is still torn down with the lab.
    pub fn add_cluster(&mut self, name: &str, nodes: usize) -> Result<&Cluster> {
        self.add_cluster_with(name, nodes, ClusterOptions::default())
    }

    /// [`Lab::add_cluster`] with options (how the cluster sits on the WAN). With a WAN, the
    /// cluster gets its edge right away.
    ///
    /// # Errors
    /// See [`Lab::add_cluster`]; also when the edge cannot be built.
    pub fn add_cluster_with(&mut self, name: &str, nodes: usize, options: ClusterOptions) -> Result<&Cluster> {
        validate_cluster_name(name)?;
        if self.clusters.iter().any(|c| c.name == name) {
            bail!("cluster {name} already exists");
        }
        if nodes == 0 || nodes > 200 {
            bail!("a cluster needs 1..=200 nodes, not {nodes}");
        }
        let index = self.clusters.len();
        if index > 255 {
            bail!("too many clusters");
        }
        let ul = format!("{}-{name}-ul", self.prefix);
        let mut cluster = Cluster {
            name: name.to_owned(),
            index,
            underlay_netns: ul.clone(),
            nodes: Vec::new(),
            options,
            edge: None,
            delay_child: Mutex::new(None),
        };
        for k in 1..=nodes {
            cluster.nodes.push(self.new_node(name, index, k)?);
        }
        self.clusters.push(cluster);
        let cluster = self.clusters.last().expect("just pushed");

        netns::add(&ul)?;
        cmd::ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        cmd::ip(&["-n", &ul, "link", "set", "br0", "up"])?;
        for node in &cluster.nodes {
            netns::add(&node.netns_name)?;
            cmd::ip(&[
                "-n",
                &ul,
                "link",
                "add",
                &node.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns_name,
            ])?;
            cmd::ip(&["-n", &ul, "link", "set", &node.name, "master", "br0", "up"])?;
            let addr = format!("{}/24", node.underlay);
            cmd::ip(&["-n", &node.netns_name, "addr", "add", &addr, "dev", "eth0"])?;
            if let Some(v6) = node.underlay6 {
                let addr = format!("{v6}/64");
                cmd::ip(&["-n", &node.netns_name, "addr", "add", &addr, "dev", "eth0", "nodad"])?;
            }
            cmd::ip(&["-n", &node.netns_name, "link", "set", "eth0", "up"])?;
            // The node-local DNS address (NodeLocal DNSCache's), where the cluster's resolver
            // on this node listens for its pods: on `lo`, as the machine has no dummy links.
            let local_dns = format!("{NODE_LOCAL_DNS}/32");
            cmd::ip(&["-n", &node.netns_name, "addr", "add", &local_dns, "dev", "lo"])?;
        }
        // The cluster's pod network: each node routes the other nodes' pod CIDRs to them over
        // the underlay (as a host-gateway CNI does), so pods reach pods on other nodes.
        for node in &cluster.nodes {
            cmd::run(&mut netns::command(&node.netns_path(), &["sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
            if node.underlay6.is_some() {
                let forwarding = "net.ipv6.conf.all.forwarding=1";
                cmd::run(&mut netns::command(&node.netns_path(), &["sysctl", "-qw", forwarding]))?;
            }
            for other in cluster.nodes.iter().filter(|o| o.name != node.name) {
                let (cidr, via) = (other.pod_cidr.to_string(), other.underlay.to_string());
                cmd::ip(&["-n", &node.netns_name, "route", "replace", &cidr, "via", &via])?;
                if let (Some(cidr), Some(via)) = (other.pod_cidr6, other.underlay6) {
                    let (cidr, via) = (cidr.to_string(), via.to_string());
                    cmd::ip(&["-n", &node.netns_name, "-6", "route", "replace", &cidr, "via", &via])?;
                }
            }
        }

        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = cluster
                .nodes
                .iter()
                .map(|node| s.spawn(|| node.start_containerd(&self.options, &self.pause_archive)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("node start panicked")))).collect()
        });
        let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
        if !errors.is_empty() {
            bail!("cluster {name}: {}", errors.join("\n"));
        }
        if self.wan.is_some() {
            self.attach_edge(index)?;
        }
        Ok(&self.clusters[index])
    }

    /// Adds the WAN: the shared namespace `<prefix>-wan` (a bridge, and [`wan::WAN_HOST`] as an
    /// outside host), and an edge for every cluster, now and added later. Without it the lab is
    /// the single-cluster lab it always was.
    ///
    /// # Errors
    /// When the WAN exists already or a namespace, link or rule cannot be made.
    pub fn add_wan(&mut self) -> Result<()> {
        if self.wan.is_some() {
            bail!("lab {}: the WAN exists already", self.prefix);
        }
        self.wan = Some(wan::create_wan(&self.prefix, self.options.ipv6)?);
        for index in 0..self.clusters.len() {
            self.attach_edge(index)?;
        }
        Ok(())
    }

    /// The WAN namespace's name, once there is a WAN.
    pub fn wan_netns(&self) -> Option<&str> {
        self.wan.as_deref()
    }

    fn attach_edge(&mut self, index: usize) -> Result<()> {
        let wan = self.wan.clone().context("no WAN")?;
        let cluster = &self.clusters[index];
        let nodes: Vec<EdgeNode<'_>> = cluster
            .nodes
            .iter()
            .map(|n| EdgeNode {
                netns: &n.netns_name,
                underlay: n.underlay,
                pod_cidr: n.pod_cidr.to_string(),
                ipv6: n.underlay6.zip(n.pod_cidr6),
            })
            .collect();
        let edge = wan::attach_edge(
            &self.prefix,
            &cluster.name,
            cluster.index,
            &cluster.underlay_netns,
            &wan,
            &nodes,
            &self.root,
        )
        .with_context(|| format!("cluster {}: edge", cluster.name))?;
        self.clusters[index].edge = Some(edge);
        Ok(())
    }

    fn new_node(&self, cluster: &str, cluster_index: usize, index: usize) -> Result<Node> {
        let name = format!("n{index}");
        let dir = self.root.join(cluster).join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let containerd = ContainerdPaths::new(&dir);
        let cri = CriClient::new(self.rt.clone(), &containerd.socket())?;
        Ok(Node {
            prefix: self.prefix.clone(),
            cluster: cluster.to_owned(),
            cluster_index,
            netns_name: format!("{}-{cluster}-{name}", self.prefix),
            underlay: Ipv4Addr::new(198, 18, cluster_index as u8, (10 + index) as u8),
            pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 244, index as u8, 0), 24).expect("valid /24"),
            underlay6: self
                .options
                .ipv6
                .then(|| Ipv6Addr::new(0x2001, 0xdb8, 1, cluster_index as u16, 0, 0, 0, (10 + index) as u16)),
            pod_cidr6: self
                .options
                .ipv6
                .then(|| Ipv6Net::new(Ipv6Addr::new(0xfd44, 0, 0, index as u16, 0, 0, 0, 0), 64).expect("valid /64")),
            agent_paths: AgentPaths::new(&dir),
            bin_dir: self.options.bin_dir.clone(),
            name,
            index,
            dir,
            containerd,
            cri,
            containerd_child: Mutex::new(None),
            agent_child: Mutex::new(None),
        })
    }

    /// Cluster `name`.
    ///
    /// # Panics
    /// When there is no such cluster (a test bug).
    pub fn cluster(&self, name: &str) -> &Cluster {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("lab {}: no cluster {name}", self.prefix))
    }

    /// All clusters, in the order they were added.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// Node `node` (e.g. `"n1"`) of cluster `cluster`.
    ///
    /// # Panics
    /// When there is no such node (a test bug).
    pub fn node(&self, cluster: &str, node: &str) -> &Node {
        self.cluster(cluster).node(node)
    }

    /// Tears the lab down now and reports every problem (dropping the lab does the same but can
    /// only print them).
    ///
    /// # Errors
    /// Every step that failed.
    pub fn teardown(mut self) -> Result<()> {
        let errors = self.teardown_collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!(
                "teardown of lab {} had {} error(s):\n  {}",
                self.prefix,
                errors.len(),
                errors.iter().map(|e| format!("{e:#}")).collect::<Vec<_>>().join("\n  ")
            ))
        }
    }

    fn teardown_collect(&mut self) -> Vec<anyhow::Error> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        // Processes started in pods first: they hold pod namespaces open.
        errors.extend(cleanup::stop_pod_processes(&self.root));
        for cluster in &self.clusters {
            if let Some(mut child) = cluster.delay_child.lock().expect("lock").take()
                && let Err(e) = agent::stop_child(&mut child, Duration::from_secs(5))
            {
                errors.push(e.context(format!("cluster {}: the WAN delay program", cluster.name)));
            }
        }
        let nodes: Vec<&Node> = self.clusters.iter().flat_map(|c| c.nodes.iter()).collect();
        // Sandboxes first, while containerd and the agents live (CNI DEL may need both).
        std::thread::scope(|s| {
            let handles: Vec<_> = nodes.iter().map(|n| s.spawn(|| n.remove_all_pods())).collect();
            for h in handles {
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => errors.push(e),
                    Err(_) => errors.push(anyhow!("sandbox removal panicked")),
                }
            }
        });
        for node in &nodes {
            if let Err(e) = node.stop_agent() {
                errors.push(e.context(format!("node {}", node.netns_name)));
            }
        }
        for node in &nodes {
            if let Err(e) = node.stop_containerd() {
                errors.push(e.context(format!("node {}", node.netns_name)));
            }
        }
        errors.extend(cleanup::cleanup_collect(&self.prefix, Some(self.rt.clone())));
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown_collect() {
            eprintln!("lab {} teardown: {e:#}", self.prefix);
        }
    }
}

/// One cluster: an underlay namespace with a bridge, and its nodes; with a WAN, its edge.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    index: usize,
    underlay_netns: String,
    nodes: Vec<Node>,
    options: ClusterOptions,
    edge: Option<Edge>,
    /// The WAN delay program in the edge namespace, while a delay is set.
    delay_child: Mutex<Option<Child>>,
}

impl Cluster {
    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 0-based index (the third octet of its underlay addresses).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Name of the underlay namespace (`<prefix>-<cluster>-ul`, bridge `br0`).
    pub fn underlay_netns(&self) -> &str {
        &self.underlay_netns
    }

    /// The nodes, `n1` first.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `name` (e.g. `"n2"`).
    ///
    /// # Panics
    /// When there is no such node (a test bug).
    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("cluster {}: no node {name}", self.name))
    }

    /// Whether the cluster is behind NAT (no inbound forwarding).
    pub fn behind_nat(&self) -> bool {
        self.options.behind_nat
    }

    /// The edge namespace's name (`<prefix>-<cluster>-edge`), once the lab has a WAN.
    pub fn edge_netns(&self) -> Option<&str> {
        self.edge.as_ref().map(|e| e.netns.as_str())
    }

    /// The public address on the WAN (`198.19.0.(10+index)`), once the lab has a WAN.
    pub fn public_address(&self) -> Option<Ipv4Addr> {
        self.edge.as_ref().map(|e| e.public)
    }

    /// The edge's public IPv6 address (a dual-stack lab with a WAN only).
    pub fn public_address6(&self) -> Option<Ipv6Addr> {
        self.edge.as_ref().and_then(|e| e.public6)
    }

    /// The address the cluster publishes for its gateways (`MemberCluster.status.gatewayAddresses`):
    /// none behind NAT, the IPv6 public address in a dual-stack lab, else the IPv4 one.
    pub fn published_address(&self) -> Option<IpAddr> {
        if self.behind_nat() {
            return None;
        }
        self.public_address6().map(IpAddr::V6).or_else(|| self.public_address().map(IpAddr::V4))
    }

    fn edge(&self) -> Result<&Edge> {
        self.edge.as_ref().with_context(|| format!("cluster {} has no edge: call Lab::add_wan first", self.name))
    }

    /// Runs `argv` in the edge namespace, whatever the exit status.
    ///
    /// # Errors
    /// When there is no edge or the command cannot be started.
    pub fn edge_exec(&self, argv: &[&str]) -> Result<Output> {
        netns::exec(&netns::path(&self.edge()?.netns), argv)
    }

    /// Forwards UDP `public_port` on the public address to `pod_ip:pod_port` (NodePort-like).
    ///
    /// # Errors
    /// When the cluster is behind NAT, has no edge, or the rule cannot be added.
    pub fn forward_udp(&self, public_port: u16, pod_ip: Ipv4Addr, pod_port: u16) -> Result<()> {
        self.forward(Proto::Udp, public_port, pod_ip, pod_port)
    }

    /// Forwards UDP `public_port` on the public IPv6 address to `[pod_ip]:pod_port` (a
    /// dual-stack lab).
    ///
    /// # Errors
    /// When the cluster is behind NAT, has no IPv6 edge, or the rule cannot be added.
    pub fn forward_udp6(&self, public_port: u16, pod_ip: Ipv6Addr, pod_port: u16) -> Result<()> {
        if self.options.behind_nat {
            bail!("cluster {} is behind NAT: no inbound forwarding", self.name);
        }
        self.edge()?.forward6(Proto::Udp, public_port, pod_ip, pod_port)
    }

    /// Forwards TCP `public_port` on the public address to `pod_ip:pod_port`.
    ///
    /// # Errors
    /// See [`Cluster::forward_udp`].
    pub fn forward_tcp(&self, public_port: u16, pod_ip: Ipv4Addr, pod_port: u16) -> Result<()> {
        self.forward(Proto::Tcp, public_port, pod_ip, pod_port)
    }

    /// Removes the UDP forwards of `public_port`, of every family (none is fine).
    ///
    /// # Errors
    /// When there is no edge or the rules cannot be listed or deleted.
    pub fn remove_forward_udp(&self, public_port: u16) -> Result<()> {
        self.edge()?.remove_forward(Proto::Udp, public_port)
    }

    /// The edge's port forwards (its nftables prerouting chain), for checks and status.
    ///
    /// # Errors
    /// When there is no edge or `nft` fails.
    pub fn forwards(&self) -> Result<Vec<String>> {
        self.edge()?.forwards()
    }

    fn forward(&self, proto: Proto, public_port: u16, pod_ip: Ipv4Addr, pod_port: u16) -> Result<()> {
        if self.options.behind_nat {
            bail!("cluster {} is behind NAT: no inbound forwarding", self.name);
        }
        self.edge()?.forward(proto, public_port, pod_ip, pod_port)
    }

    /// WAN loss on the way *into* this cluster: each packet arriving at the edge from the WAN is
    /// dropped with probability `loss` (0.0 removes it).
    ///
    /// # Errors
    /// When there is no edge, `loss` is not in 0..=1, or the rule cannot be set.
    pub fn set_wan_loss(&self, loss: f64) -> Result<()> {
        self.edge()?.set_loss(loss)
    }

    /// WAN delay on the way *into* this cluster: every packet arriving at the edge from the WAN
    /// is held `ms` milliseconds (0 removes it). Set it on both ends for a symmetric RTT.
    ///
    /// # Errors
    /// When there is no edge or the delay program or its rule cannot be set up.
    pub fn set_wan_delay(&self, ms: u32) -> Result<()> {
        let edge = self.edge()?;
        let mut child = self.delay_child.lock().expect("lock");
        edge.set_delay(ms, &mut child)
    }

    /// Node agent configurations for every node (in node order) running `slices`: cluster
    /// prefix number [`Cluster::index`] of each slice subnet split into 16, node prefix /26
    /// number `k − 1` for node `nK`, the other nodes as peers, the node's state dir and router
    /// namespace prefix.
    ///
    /// # Errors
    /// When a slice subnet is too small to carve or the result fails validation.
    pub fn agent_configs(&self, slices: &[LabSlice]) -> Result<Vec<NodeAgentConfig>> {
        let nodes: Vec<AgentNode> = self
            .nodes
            .iter()
            .map(|n| AgentNode {
                name: n.name.clone(),
                index: n.index,
                underlay: IpAddr::V4(n.underlay),
                state_dir: n.state_dir(),
                router_netns_prefix: n.router_netns_prefix(),
            })
            .collect();
        agent::agent_configs(self.index, &nodes, slices)
    }

    /// Starts the agent of every node with [`Cluster::agent_configs`].
    ///
    /// # Errors
    /// When a configuration cannot be built or an agent cannot start.
    pub fn start_agents(&self, slices: &[LabSlice]) -> Result<()> {
        for (node, config) in self.nodes.iter().zip(self.agent_configs(slices)?) {
            node.start_agent(&config)?;
        }
        Ok(())
    }

    /// Rewrites every node's agent configuration for `slices` (the agents poll their files).
    ///
    /// # Errors
    /// When a configuration cannot be built or written.
    pub fn update_agent_configs(&self, slices: &[LabSlice]) -> Result<()> {
        for (node, config) in self.nodes.iter().zip(self.agent_configs(slices)?) {
            node.update_agent_config(&config)?;
        }
        Ok(())
    }
}

/// One lab node: a network namespace with its own containerd (and optionally a node agent).
/// All methods take `&self`, so tests can use `lab.node("c1", "n1").run_pod(…)` directly.
pub struct Node {
    prefix: String,
    cluster: String,
    cluster_index: usize,
    name: String,
    index: usize,
    netns_name: String,
    dir: PathBuf,
    underlay: Ipv4Addr,
    pod_cidr: Ipv4Net,
    /// In a dual-stack lab: the IPv6 underlay address and pod CIDR.
    underlay6: Option<Ipv6Addr>,
    pod_cidr6: Option<Ipv6Net>,
    bin_dir: PathBuf,
    containerd: ContainerdPaths,
    agent_paths: AgentPaths,
    cri: CriClient,
    containerd_child: Mutex<Option<Child>>,
    agent_child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("netns", &self.netns_name).field("underlay", &self.underlay).finish()
    }
}

static UID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh UUID-shaped pod uid.
fn new_uid() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = format!("{}-{nanos}-{}", std::process::id(), UID_COUNTER.fetch_add(1, Ordering::Relaxed));
    let h: String = sha2::Sha256::digest(seed.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

impl Node {
    /// The node's name (`n1`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// 1-based node index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// 0-based index of the node's cluster.
    pub fn cluster_index(&self) -> usize {
        self.cluster_index
    }

    /// Name of the node's namespace (`<prefix>-<cluster>-<node>`).
    pub fn netns_name(&self) -> &str {
        &self.netns_name
    }

    /// `/run/netns/<netns_name>`.
    pub fn netns_path(&self) -> PathBuf {
        netns::path(&self.netns_name)
    }

    /// The node's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The slicenet state dir (node-state files; `stateDir` of `slice-cni`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `slice-cni`'s IPAM dir.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// The underlay address on `eth0`.
    pub fn underlay_address(&self) -> Ipv4Addr {
        self.underlay
    }

    /// The IPv6 underlay address on `eth0` (a dual-stack lab only).
    pub fn underlay_address6(&self) -> Option<Ipv6Addr> {
        self.underlay6
    }

    /// The address the node's VXLAN runs over (and its Node object's `InternalIP`): the IPv6
    /// underlay address in a dual-stack lab, else the IPv4 one.
    pub fn vxlan_address(&self) -> IpAddr {
        self.underlay6.map_or(IpAddr::V4(self.underlay), IpAddr::V6)
    }

    /// The pod CIDR `10.244.<k>.0/24`.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.pod_cidr
    }

    /// The IPv6 pod CIDR `fd44:0:0:<k>::/64` (a dual-stack lab only).
    pub fn pod_cidr6(&self) -> Option<Ipv6Net> {
        self.pod_cidr6
    }

    /// Router namespaces of this node are `/run/netns/<this><slice>`.
    pub fn router_netns_prefix(&self) -> String {
        format!("{}-{}-{}-", self.prefix, self.cluster, self.name)
    }

    /// containerd's gRPC socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd.socket()
    }

    /// containerd's log file.
    pub fn containerd_log(&self) -> PathBuf {
        self.containerd.log()
    }

    /// The CNI configuration directory containerd reads.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.containerd.cni_conf()
    }

    /// The CNI plugin directory containerd runs plugins from.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.containerd.cni_bin()
    }

    /// Runs `argv` in the node's namespace (`nsenter --net`), whatever the exit status.
    ///
    /// # Errors
    /// When the command cannot be started.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        netns::exec(&self.netns_path(), argv)
    }

    fn start_containerd(&self, options: &LabOptions, pause_archive: &Path) -> Result<()> {
        let ctx = || format!("node {}", self.netns_name);
        let slice_cni_binary = options.bin_dir.join("slice-cni");
        let (state, ipam) = (self.state_dir(), self.ipam_dir());
        for d in [&state, &ipam] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        if options.slice_cni && !slice_cni_binary.exists() {
            bail!(
                "{} does not exist: build it (`cargo build -p cni`) or set SLICENET_BIN_DIR, or use \
                 LabOptions::without_slice_cni()",
                slice_cni_binary.display()
            );
        }
        let chain = options.slice_cni.then_some((state.as_path(), ipam.as_path()));
        let cidrs: Vec<String> =
            std::iter::once(self.pod_cidr.to_string()).chain(self.pod_cidr6.map(|c| c.to_string())).collect();
        let conflist = containerd::conflist(&self.containerd, &cidrs, chain);
        containerd::prepare(
            &self.containerd,
            &conflist,
            options.slice_cni.then_some(slice_cni_binary.as_path()),
            crate::PAUSE_IMAGE,
        )
        .with_context(ctx)?;
        let child = containerd::start(&self.containerd, &self.netns_path()).with_context(ctx)?;
        *self.containerd_child.lock().expect("lock") = Some(child);
        self.wait_containerd_ready(options.start_timeout).with_context(ctx)?;
        containerd::import_image(&self.containerd, pause_archive).with_context(ctx)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.cri.image_present(crate::PAUSE_IMAGE, Duration::from_secs(5))? {
            if Instant::now() > deadline {
                bail!("{}: imported {} but CRI does not list it", ctx(), crate::PAUSE_IMAGE);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until CRI reports both RuntimeReady and NetworkReady (the conflist is loaded).
    fn wait_containerd_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            let exited = self.containerd_child.lock().expect("lock").as_mut().map(Child::try_wait);
            if let Some(status) = exited.transpose()?.flatten() {
                bail!(
                    "containerd exited ({status}); log {}:\n{}",
                    self.containerd.log().display(),
                    containerd::log_tail(&self.containerd.log(), 20)
                );
            }
            if self.containerd.socket().exists() {
                match self.cri.readiness(Duration::from_secs(2)) {
                    Ok(r) if r.runtime_ready && r.network_ready => return Ok(()),
                    Ok(r) => last = r.message,
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd not ready after {timeout:?}: {last}; log {}:\n{}",
                    self.containerd.log().display(),
                    containerd::log_tail(&self.containerd.log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_containerd(&self) -> Result<()> {
        if let Some(mut child) = self.containerd_child.lock().expect("lock").take() {
            agent::stop_child(&mut child, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// A gateway pod: an ordinary pod in `slice_namespace` (a member namespace of the slice, so
    /// it gets `slice0`), labelled `app.kubernetes.io/name=slice-gateway`. Run the gateway in it
    /// with [`Pod::spawn`].
    ///
    /// # Errors
    /// See [`Node::run_pod`].
    pub fn run_gateway_pod(&self, slice_namespace: &str, name: &str) -> Result<Pod> {
        self.run_pod(PodSpec::new(slice_namespace, name).label("app.kubernetes.io/name", "slice-gateway"))
    }

    /// The kubelet-like sandbox config [`Node::run_pod`] sends for `spec` (the benchmarks send
    /// the same one).
    pub(crate) fn sandbox_config(&self, spec: &PodSpec, uid: &str) -> Result<PodSandboxConfig> {
        let log_dir = self.dir.join("pods").join(format!("{}_{}_{uid}", spec.namespace, spec.name));
        std::fs::create_dir_all(&log_dir).with_context(|| format!("cannot create {}", log_dir.display()))?;
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        for (k, v) in [
            ("io.kubernetes.pod.name", &spec.name),
            ("io.kubernetes.pod.namespace", &spec.namespace),
            ("io.kubernetes.pod.uid", &uid.to_owned()),
        ] {
            labels.entry(k.to_owned()).or_insert_with(|| v.clone());
        }
        let pod_ns = NamespaceMode::Pod as i32;
        Ok(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: uid.to_owned(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: spec.name.chars().take(63).collect(),
            log_directory: log_dir.display().to_string(),
            labels,
            annotations: spec.annotations.clone().into_iter().collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent(&self.prefix),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: pod_ns,
                        pid: pod_ns,
                        ipc: pod_ns,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Creates a pod sandbox through CRI exactly as a kubelet does (RunPodSandbox with metadata,
    /// a fresh uid, hostname, log directory, pod-level network/pid/ipc namespaces, the given
    /// labels plus the kubelet's `io.kubernetes.pod.*` labels, the given annotations) and reads
    /// back its network namespace.
    ///
    /// # Errors
    /// containerd's message (which carries the CNI plugin's error) when RunPodSandbox fails.
    pub fn run_pod(&self, spec: PodSpec) -> Result<Pod> {
        let uid = new_uid();
        let lab_name = format!("{}/{}/{}", self.cluster, spec.namespace, spec.name);
        let config = self.sandbox_config(&spec, &uid)?;
        let sandbox_id =
            self.cri.run_pod_sandbox(config).map_err(|e| anyhow!("pod {lab_name} on node {}: {e:#}", self.name))?;
        let status = self.cri.pod_sandbox_status(&sandbox_id).with_context(|| format!("pod {lab_name}"))?;
        let netns_path = cri::netns_from_info(&status.info).with_context(|| format!("pod {lab_name}"))?;
        Ok(Pod {
            lab_root: self.dir.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default(),
            sandbox_id,
            netns_path,
            cluster: self.cluster.clone(),
            node: self.name.clone(),
            namespace: spec.namespace,
            name: spec.name,
            uid,
        })
    }

    /// StopPodSandbox (CNI DEL with the namespace; the namespace is then gone).
    ///
    /// # Errors
    /// containerd's message.
    pub fn stop_pod(&self, pod: &Pod) -> Result<()> {
        self.cri.stop_pod_sandbox(&pod.sandbox_id).map_err(|e| anyhow!("pod {}: {e:#}", pod.lab_name()))
    }

    /// StopPodSandbox then RemovePodSandbox (containerd calls CNI DEL twice, the second time
    /// with an empty `CNI_NETNS`).
    ///
    /// # Errors
    /// containerd's message.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.remove_sandbox(&pod.sandbox_id).map_err(|e| anyhow!("pod {}: {e:#}", pod.lab_name()))
    }

    /// StopPodSandbox then RemovePodSandbox by sandbox id.
    ///
    /// # Errors
    /// containerd's message.
    pub fn remove_sandbox(&self, sandbox_id: &str) -> Result<()> {
        self.cri.stop_pod_sandbox(sandbox_id)?;
        self.cri.remove_pod_sandbox(sandbox_id)
    }

    /// Every sandbox on this node (ListPodSandbox).
    ///
    /// # Errors
    /// containerd's message.
    pub fn list_pods(&self) -> Result<Vec<PodSummary>> {
        let items = self.cri.list_pod_sandboxes(Duration::from_secs(30))?;
        Ok(items
            .into_iter()
            .map(|s| {
                let meta = s.metadata.unwrap_or_default();
                PodSummary {
                    sandbox_id: s.id,
                    namespace: meta.namespace,
                    name: meta.name,
                    uid: meta.uid,
                    ready: s.state == PodSandboxState::SandboxReady as i32,
                }
            })
            .collect())
    }

    /// The verbose PodSandboxStatus `info` of a sandbox, parsed (containerd's JSON: pid,
    /// runtime spec, CNI result, …).
    ///
    /// # Errors
    /// containerd's message, or when the info is not JSON.
    pub fn pod_info(&self, sandbox_id: &str) -> Result<serde_json::Value> {
        let status = self.cri.pod_sandbox_status(sandbox_id)?;
        let raw = status.info.get("info").context("no verbose info")?;
        serde_json::from_str(raw).context("verbose info is not JSON")
    }

    fn remove_all_pods(&self) -> Result<()> {
        let alive =
            self.containerd_child.lock().expect("lock").as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !alive {
            return Ok(());
        }
        let mut errors = Vec::new();
        for pod in self.list_pods()? {
            if let Err(e) = self.remove_sandbox(&pod.sandbox_id) {
                errors.push(format!("{}/{} ({}): {e:#}", pod.namespace, pod.name, pod.sandbox_id));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("node {}: cannot remove sandboxes: {}", self.netns_name, errors.join("; "))
        }
    }

    /// Writes `config` to the node's agent file and starts `slice-operator node-agent --config
    /// FILE` inside the node's namespace (log: `agent.log` in the node dir).
    ///
    /// # Errors
    /// When an agent already runs, the binary is missing, or it cannot be started.
    pub fn start_agent(&self, config: &NodeAgentConfig) -> Result<()> {
        agent::write_config(&self.agent_paths, config)?;
        self.spawn_agent()
    }

    fn spawn_agent(&self) -> Result<()> {
        let mut slot = self.agent_child.lock().expect("lock");
        if let Some(child) = slot.as_mut()
            && child.try_wait()?.is_none()
        {
            bail!("node {}: the agent already runs (pid {})", self.netns_name, child.id());
        }
        let operator = self.bin_dir.join("slice-operator");
        *slot = Some(agent::start(&self.agent_paths, &operator, &self.netns_path())?);
        Ok(())
    }

    /// SIGTERM to the agent, wait (SIGKILL after 10 s). No agent is fine.
    ///
    /// # Errors
    /// When the agent cannot be reaped.
    pub fn stop_agent(&self) -> Result<()> {
        if let Some(mut child) = self.agent_child.lock().expect("lock").take() {
            agent::stop_child(&mut child, Duration::from_secs(10))?;
            let _ = std::fs::remove_file(&self.agent_paths.pid_file);
        }
        Ok(())
    }

    /// SIGKILL to the agent (a crash, or its node lost), reaped; the data path stays as it was.
    /// [`Node::restart_agent`] starts it again. No agent is fine.
    ///
    /// # Errors
    /// When the agent cannot be reaped.
    pub fn kill_agent(&self) -> Result<()> {
        if let Some(mut child) = self.agent_child.lock().expect("lock").take() {
            let _ = child.kill();
            child.wait().with_context(|| format!("node {}: reaping the agent", self.netns_name))?;
            let _ = std::fs::remove_file(&self.agent_paths.pid_file);
        }
        Ok(())
    }

    /// The agent's process id while it runs (not once it exited).
    pub fn agent_pid(&self) -> Option<u32> {
        let mut slot = self.agent_child.lock().expect("lock");
        let child = slot.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// Stops the agent and starts it again with its current configuration file.
    ///
    /// # Errors
    /// See [`Node::stop_agent`] and [`Node::start_agent`].
    pub fn restart_agent(&self) -> Result<()> {
        self.stop_agent()?;
        self.spawn_agent()
    }

    /// Rewrites the agent's configuration file atomically (the agent polls it).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn update_agent_config(&self, config: &NodeAgentConfig) -> Result<()> {
        agent::write_config(&self.agent_paths, config)
    }

    /// The agent's configuration as its file holds it now (what the agent applies next).
    ///
    /// # Errors
    /// When the file cannot be read or does not parse.
    pub fn agent_config(&self) -> Result<NodeAgentConfig> {
        let path = &self.agent_paths.config;
        let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("{} does not parse", path.display()))
    }

    /// Whether the agent process runs.
    pub fn agent_running(&self) -> bool {
        self.agent_child.lock().expect("lock").as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The agent's log file.
    pub fn agent_log(&self) -> PathBuf {
        self.agent_paths.log.clone()
    }

    /// Waits until the agent wrote `<state_dir>/<slice>.json` and returns it.
    ///
    /// # Errors
    /// On timeout or when the agent exits first (with the agent's log tail).
    pub fn wait_slice_ready(&self, slice: &str, timeout: Duration) -> Result<NodeState> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(state) = NodeState::load(&self.state_dir(), slice)? {
                return Ok(state);
            }
            let exited = self.agent_child.lock().expect("lock").as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "node {}: the agent exited ({status}) before slice {slice} was ready; log:\n{}",
                    self.netns_name,
                    containerd::log_tail(&self.agent_paths.log, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {}: slice {slice} not ready after {timeout:?}; agent log:\n{}",
                    self.netns_name,
                    containerd::log_tail(&self.agent_paths.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_uids() {
        assert!(validate_prefix("sn3a").is_ok());
        assert!(validate_prefix("sn3a-x").is_err());
        assert!(validate_prefix("3a").is_err());
        assert!(validate_prefix("abcdefghijk").is_err());
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }
}
