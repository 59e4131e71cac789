//! The custom resources of group `slicenet.io/v1alpha1` (feature `crd`).
//!
//! - [`SliceConfig`] (hub, cluster-scoped): what the user declares.
//! - [`MemberCluster`] (hub, cluster-scoped): a registered cluster and what it publishes.
//! - [`WorkerSlice`] (hub, in the namespace [`cluster_namespace`] of each member cluster, named
//!   after the slice): what that cluster must run (spec, written by the hub) and what it runs
//!   (status, written by that cluster's worker).
//!
//! Subnets and endpoints are strings in the schema (with CEL checks where the API server can
//! check them) and parsed with the helpers here, so that one bad object gives a condition
//! instead of a watch that cannot decode.

use std::collections::BTreeMap;

use ipnet::IpNet;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mcs::{ServiceImportType, ServicePort};
use crate::prefix;

/// Default `maxClusters`.
pub const DEFAULT_MAX_CLUSTERS: u32 = 16;
/// Default node prefix length for IPv4 slice subnets.
pub const DEFAULT_NODE_PREFIX_LEN_V4: u8 = 26;
/// Default node prefix length for IPv6 slice subnets.
pub const DEFAULT_NODE_PREFIX_LEN_V6: u8 = 120;
/// Host bits of the largest node prefix accepted (/16 for IPv4, /112 for IPv6).
pub const MAX_NODE_HOST_BITS: u8 = 16;
/// Default UDP port of slice gateways.
pub const DEFAULT_GATEWAY_PORT: u16 = 51820;

/// Gateway replicas per slice per cluster when the SliceConfig names none: two, so that the loss
/// of one gateway pod or node leaves the slice flowing through the other (issue 13). A cluster
/// with one node runs one and reports the other `Pending` with the scheduler's reason;
/// `gateway.replicas: 1` asks for a single gateway.
pub const DEFAULT_GATEWAY_REPLICAS: u32 = 2;
/// The most gateway replicas a slice may ask for per cluster (each peer cluster holds one
/// WireGuard peer per replica: a full mesh of replicas between every two clusters).
pub const MAX_GATEWAY_REPLICAS: u32 = 4;
/// Finalizer the hub puts on SliceConfigs and MemberClusters.
pub const HUB_FINALIZER: &str = "slicenet.io/hub";
/// Finalizer the worker puts on its WorkerSlices.
pub const WORKER_FINALIZER: &str = "slicenet.io/worker";
/// Label on hub objects naming the slice they belong to.
pub const SLICE_OWNER_LABEL: &str = "slicenet.io/slice";
/// Label on hub objects naming the member cluster they are for.
pub const CLUSTER_LABEL: &str = "slicenet.io/cluster";
/// Prefix of the hub namespace that holds one member cluster's WorkerSlices.
pub const CLUSTER_NAMESPACE_PREFIX: &str = "slicenet-cluster-";
pub use crate::names::{GATEWAY_NAMESPACE, PEERS_NAMESPACE, SYSTEM_NAMESPACE};

/// The hub namespace that holds the WorkerSlices of `cluster`.
#[must_use]
pub fn cluster_namespace(cluster: &str) -> String {
    format!("{CLUSTER_NAMESPACE_PREFIX}{cluster}")
}

/// A slice: one overlay network across member clusters.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[kube(
    group = "slicenet.io",
    version = "v1alpha1",
    kind = "SliceConfig",
    plural = "sliceconfigs",
    shortname = "slc",
    status = "SliceConfigStatus",
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.sliceSubnet"}"#,
    printcolumn = r#"{"name":"VNI","type":"integer","jsonPath":".status.vni"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = "self.metadata.name.size() <= 40",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.nodePrefixLength) || self.nodePrefixLength >= (self.sliceSubnet.contains(':') ? 112 : 16)"
).message("nodePrefixLength must be at least /16 for IPv4 and /112 for IPv6 (at most 65,536 addresses per node)"))]
#[x_kube(validation = Rule::new(
    "!has(self.secondarySliceSubnet) || self.secondarySliceSubnet.contains(':') != self.sliceSubnet.contains(':')"
).message("secondarySliceSubnet must be of the other family than sliceSubnet (one IPv4 and one IPv6 subnet)"))]
#[x_kube(validation = Rule::new("!has(self.secondaryNodePrefixLength) || has(self.secondarySliceSubnet)")
    .message("secondaryNodePrefixLength needs a secondarySliceSubnet"))]
#[x_kube(validation = Rule::new(
    "!has(self.secondaryNodePrefixLength) || !has(self.secondarySliceSubnet) || self.secondaryNodePrefixLength >= (self.secondarySliceSubnet.contains(':') ? 112 : 16)"
).message("secondaryNodePrefixLength must be at least /16 for IPv4 and /112 for IPv6 (at most 65,536 addresses per node)"))]
#[x_kube(validation = Rule::new("has(self.secondarySliceSubnet) == has(oldSelf.secondarySliceSubnet)")
    .message("secondarySliceSubnet cannot be added to or removed from an existing slice"))]
pub struct SliceConfigSpec {
    /// The slice's own subnet (IPv4 or IPv6), split into `maxClusters` cluster prefixes.
    /// Immutable.
    #[x_kube(validation = Rule::new("isCIDR(self)").message("must be a CIDR such as 10.80.0.0/16"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("sliceSubnet is immutable"))]
    pub slice_subnet: String,
    /// A second subnet, of the other family (a dual-stack slice: pods get one address of each).
    /// Split like `sliceSubnet`: the same `maxClusters`, the same cluster and node indexes.
    /// Immutable, and cannot be added or removed later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("must be a CIDR such as fd00:80::/48"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("secondarySliceSubnet is immutable"))]
    pub secondary_slice_subnet: Option<String>,
    /// How many clusters the subnet is split for: a power of two. Immutable.
    #[serde(default = "default_max_clusters")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("maxClusters is immutable"))]
    #[schemars(range(min = 1, max = 4096))]
    pub max_clusters: u32,
    /// Length of each node's prefix inside its cluster prefix (default /26 for IPv4, /120 for IPv6;
    /// at least /16 and /112: at most 65,536 addresses per node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    pub node_prefix_length: Option<u8>,
    /// `nodePrefixLength` of the secondary subnet (same defaults and bounds for its family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 128))]
    pub secondary_node_prefix_length: Option<u8>,
    /// Member clusters (names of `MemberCluster`s).
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Namespaces that join the slice, and in which clusters.
    #[serde(default)]
    pub namespaces: Vec<SliceNamespace>,
    /// How each cluster's gateway is reached from the others.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// Upper bound for the MTU of the pods' slice interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1280, max = 9000))]
    pub mtu: Option<u32>,
    /// Quality of service of the slice: guaranteed and ceiling bandwidth on each cluster's gateway
    /// uplink, priority, DSCP class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<QosProfile>,
    /// Isolation of member namespaces from non-slice traffic on the primary network.
    #[serde(default)]
    pub isolation: IsolationSpec,
}

fn default_max_clusters() -> u32 {
    DEFAULT_MAX_CLUSTERS
}

/// A namespace that joins the slice in some clusters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SliceNamespace {
    pub namespace: String,
    /// Cluster names, or `["*"]` for every member cluster.
    #[serde(default = "all_clusters")]
    pub clusters: Vec<String>,
}

fn all_clusters() -> Vec<String> {
    vec!["*".to_owned()]
}

impl SliceNamespace {
    /// Whether this namespace joins in `cluster`.
    #[must_use]
    pub fn applies_to(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|c| c == "*" || c == cluster)
    }
}

/// How a gateway is exposed to the other clusters.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum GatewayExposure {
    /// A NodePort Service (the default, works everywhere).
    #[default]
    NodePort,
    /// A LoadBalancer Service.
    LoadBalancer,
    /// A host port on the gateway's node.
    HostPort,
}

/// Gateway settings of a slice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub exposure: GatewayExposure,
    /// UDP port the gateway listens on.
    #[serde(default = "default_gateway_port")]
    pub port: u16,
    /// Fixed NodePort (30000–32767) when `exposure` is NodePort; chosen by Kubernetes otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// PersistentKeepalive in seconds towards peers (for gateways behind NAT); 0 disables.
    #[serde(default = "default_keepalive")]
    pub persistent_keepalive: u16,
    /// Gateway replicas in each member cluster (1–4, default 2), on different nodes, all carrying
    /// traffic; each its own WireGuard key and endpoint, and a peer of every replica of the other
    /// clusters.
    #[serde(default = "default_replicas", skip_serializing_if = "is_default_replicas")]
    #[schemars(range(min = 1, max = 4))]
    pub replicas: u32,
}

fn default_replicas() -> u32 {
    DEFAULT_GATEWAY_REPLICAS
}
#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if takes a reference
fn is_default_replicas(n: &u32) -> bool {
    *n == DEFAULT_GATEWAY_REPLICAS
}

fn default_gateway_port() -> u16 {
    DEFAULT_GATEWAY_PORT
}
fn default_keepalive() -> u16 {
    25
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            exposure: GatewayExposure::default(),
            port: DEFAULT_GATEWAY_PORT,
            node_port: None,
            persistent_keepalive: default_keepalive(),
            replicas: DEFAULT_GATEWAY_REPLICAS,
        }
    }
}

/// Quality of service of a slice in each member cluster: its share of the cluster's gateway
/// uplink (`MemberCluster.spec.uplinkKbps`) and the DSCP class of its tunnel packets. Enforced
/// by the node agents (an HTB class per slice on the uplink) and the gateways (`IP_TOS`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.guaranteedKbps) || !has(self.ceilingKbps) || self.guaranteedKbps <= self.ceilingKbps"
).message("guaranteedKbps must not exceed ceilingKbps"))]
pub struct QosProfile {
    /// Bandwidth the slice gets in each cluster whatever other slices send, kbit/s (HTB rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub guaranteed_kbps: Option<u64>,
    /// Bandwidth the slice may take when others leave it idle, kbit/s (HTB ceil); the cluster's
    /// uplink rate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub ceiling_kbps: Option<u64>,
    /// 0 (served first when slices borrow idle bandwidth) to 7.
    #[serde(default = "default_qos_priority")]
    #[schemars(range(min = 0, max = 7))]
    pub priority: u8,
    /// DSCP class written on the slice's tunnel (outer) packets, e.g. `AF41`, `EF`, `CS1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp_class: Option<crate::qos::DscpClass>,
}

fn default_qos_priority() -> u8 {
    crate::qos::DEFAULT_PRIORITY
}

/// Namespace isolation of a slice on the clusters' primary networks: the worker of each member
/// cluster writes NetworkPolicies (`networking.k8s.io/v1`) into the member namespaces so that
/// their pods accept traffic on the primary network only from the slice's own namespaces and
/// `allowedNamespaces` (those that apply to that cluster).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IsolationSpec {
    /// When true, member namespaces accept traffic on their primary network only from
    /// `allowedNamespaces`.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub allowed_namespaces: Vec<SliceNamespace>,
}

/// A condition in the Kubernetes style.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition with `status` "True" or "False".
    #[must_use]
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            last_transition_time: None,
            observed_generation: None,
        }
    }
}

/// What the hub has planned and observed for a slice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SliceConfigStatus {
    /// VNI allocated to the slice (never changes while the slice exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// Cluster prefixes allocated so far (never renumbered).
    #[serde(default)]
    pub clusters: Vec<ClusterAllocation>,
    /// The services exported on the slice, with their ClusterSetIP and the cluster whose
    /// export defines them (kept while they are exported, so that neither changes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceAllocation>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What the hub keeps for one exported service of a slice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    pub namespace: String,
    pub name: String,
    /// The ClusterSetIP (none for a Headless service, or while none is free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The cluster whose export gave the service its type, session affinity and first ports
    /// (the oldest export when it was first seen): it keeps that role while it exports.
    pub defined_by: String,
}

/// One cluster's share of a slice subnet, with its state as reported by its worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAllocation {
    pub cluster: String,
    /// Index of the cluster prefix in the slice subnet.
    pub index: u32,
    pub prefix: String,
    /// Whether that cluster's worker reports the slice ready.
    #[serde(default)]
    pub ready: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A cluster registered with the hub.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[kube(
    group = "slicenet.io",
    version = "v1alpha1",
    kind = "MemberCluster",
    plural = "memberclusters",
    shortname = "mc",
    status = "MemberClusterStatus",
    printcolumn = r#"{"name":"Healthy","type":"string","jsonPath":".status.conditions[?(@.type==\"Healthy\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterSpec {
    /// The cluster's pod CIDRs (so slice subnets can be checked against them).
    #[serde(default)]
    pub pod_cidrs: Vec<String>,
    /// The cluster's service CIDRs.
    #[serde(default)]
    pub service_cidrs: Vec<String>,
    /// Whether the cluster's network uses Multus (the worker then writes NetworkAttachmentDefinitions).
    #[serde(default)]
    pub multus: bool,
    /// Rate of the uplink the cluster's gateways send through, kbit/s: the root of the QoS tree
    /// on its gateway nodes, and the bound the slices' guarantees in this cluster must fit
    /// under. Absent: slices' QoS profiles are not enforced in this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub uplink_kbps: Option<u64>,
}

/// What a member cluster publishes and how healthy it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// Public addresses at which this cluster's gateways can be reached (host or IP, no port).
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
    /// RFC 3339 time of the worker's last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// The slicenet version the cluster's worker runs (written with each heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_version: Option<String>,
    /// The worker's clock minus the hub API server's, in whole seconds, as the worker measured
    /// it on its previous heartbeat (against the time the API server stamped on that write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_seconds: Option<i64>,
    /// The optional CRDs the worker found missing in its cluster (`plural.group`): the
    /// features that need them are off there (multi-cluster services, MultiNetworkPolicies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_crds: Vec<String>,
    /// The node agents, from their Leases (none reported while no agent has a Lease: agents
    /// older than this version, or a cluster without the DaemonSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<AgentsStatus>,
    /// The cluster's slice-dns as the worker's heartbeat found it: asked for the MCS zone's
    /// `dns-version` record at its Service address (none where the cluster runs no slice-dns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStatus>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Whether a member cluster's slice-dns answers, from the worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsStatus {
    /// The address asked (the slice-dns Service's cluster IP and port).
    pub address: String,
    /// What went wrong (no answer, a response code, an answer without the record); none when
    /// it answered with the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A member cluster's node agents, as the worker sums their Leases up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentsStatus {
    /// The cluster's nodes.
    pub nodes: u32,
    /// Nodes whose agent renewed its Lease in time.
    pub ready: u32,
    /// The versions the ready agents run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// What is wrong, per node (at most [`AgentsStatus::MAX_PROBLEMS`], by node name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<AgentProblem>,
}

impl AgentsStatus {
    /// The most problems listed (the counts stay exact).
    pub const MAX_PROBLEMS: usize = 20;
}

/// One node's agent problem.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentProblem {
    pub node: String,
    /// `NoLease`, `LeaseExpired` or `CniNotChained`.
    pub reason: String,
    pub message: String,
}

/// What one member cluster must run for one slice (spec) and what it runs (status).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "slicenet.io",
    version = "v1alpha1",
    kind = "WorkerSlice",
    plural = "workerslices",
    shortname = "ws",
    namespaced,
    status = "WorkerSliceStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".spec.clusterPrefix"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSliceSpec {
    pub slice: String,
    pub cluster: String,
    pub slice_subnet: String,
    pub cluster_prefix: String,
    pub node_prefix_length: u8,
    /// The slice's second family (dual-stack slices): its subnet, this cluster's prefix of it
    /// (the same index as `clusterPrefix`) and its node prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_family: Option<WorkerSliceFamily>,
    pub vni: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Member namespaces in this cluster.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// The other clusters of the slice, when the hub writes them here. A hub that pages the
    /// peer lists (`peerPages`) leaves this empty: the worker reads the slice's [`SlicePeers`]
    /// pages instead and rebuilds this list in memory.
    #[serde(default)]
    pub peers: Vec<WorkerPeer>,
    /// Where the peers are when the hub pages them: how many [`SlicePeers`] pages the slice
    /// has and a digest of what they hold, which changes with every peer change so that the
    /// worker, which watches its WorkerSlices, wakes up and reads the pages again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_pages: Option<PeerPages>,
    /// The services exported on the slice (by any member cluster, this one included) in this
    /// cluster's member namespaces: what its worker writes as ServiceImports and MCS
    /// EndpointSlices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub imports: Vec<ImportedService>,
    /// The pod directory of the *other* member clusters (what their workers reported in
    /// `status.pods`, after the hub's checks): with this cluster's own pods, what the node
    /// agents match MultiNetworkPolicy selectors against.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<crate::policy::PodGroup>,
    /// Namespace isolation on the primary network, when the slice asks for it: the namespaces
    /// of this cluster (besides the slice's own) whose pods may still reach the member
    /// namespaces (the worker writes NetworkPolicies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<WorkerIsolation>,
    /// The slice's QoS profile, and this cluster's uplink rate it is enforced under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<WorkerSliceQos>,
}

/// The pages of a slice's peer list, as a WorkerSlice points at them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerPages {
    /// The number of pages: `SlicePeers` `<slice>-0` … `<slice>-<pages - 1>` in
    /// [`PEERS_NAMESPACE`] (a page with no peer may be absent).
    pub pages: u32,
    /// [`peers_revision`] of every member's entry, all pages together.
    pub revision: String,
}

/// At most this many peers on one page: a page stays under 128 × ~150 bytes whatever the
/// slice's size.
pub const PEERS_PER_PAGE: u32 = 128;

/// The number of pages of a slice of `max_clusters`: a cluster's page is its prefix index
/// divided by [`PEERS_PER_PAGE`], so the count is fixed by `maxClusters` (immutable).
#[must_use]
pub fn peer_page_count(max_clusters: u32) -> u32 {
    max_clusters.div_ceil(PEERS_PER_PAGE).max(1)
}

/// The page a cluster of prefix index `index` is listed on.
#[must_use]
pub fn peer_page_of(index: u32) -> u32 {
    index / PEERS_PER_PAGE
}

/// The name of page `page` of `slice`'s peer list.
#[must_use]
pub fn peer_page_name(slice: &str, page: u32) -> String {
    format!("{slice}-{page}")
}

/// The hub Role (and RoleBinding) in [`PEERS_NAMESPACE`] that lets `cluster`'s worker read the
/// pages of its slices.
#[must_use]
pub fn peers_role_name(cluster: &str) -> String {
    format!("{}{cluster}", crate::names::PEERS_ROLE_PREFIX)
}

/// The digest the WorkerSlices carry of a slice's peer entries (every member, in cluster
/// order): FNV-1a over their JSON, in hex. The worker compares it with the pages it read.
#[must_use]
pub fn peers_revision(entries: &[WorkerPeer]) -> String {
    let json = serde_json::to_vec(entries).expect("peer entries serialize");
    format!("{:016x}", crate::fnv::fnv1a_64(json))
}

/// A member's peer list rebuilt from its slice's pages: every entry of every page but its own,
/// in cluster order (the order of an inline `spec.peers`), and the [`peers_revision`] of all
/// entries, its own included, to compare with the WorkerSlice's `peerPages.revision`.
#[must_use]
pub fn peers_from_pages<'a>(
    cluster: &str,
    pages: impl IntoIterator<Item = &'a Vec<WorkerPeer>>,
) -> (Vec<WorkerPeer>, String) {
    let mut all: Vec<WorkerPeer> = pages.into_iter().flatten().cloned().collect();
    all.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    let revision = peers_revision(&all);
    all.retain(|p| p.cluster != cluster);
    (all, revision)
}

/// One page of a slice's peer list (hub, namespace [`PEERS_NAMESPACE`], named
/// [`peer_page_name`]): written by the hub only, read by the slice's member clusters, so that
/// a cluster joining rewrites one page instead of every member's WorkerSlice.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "slicenet.io",
    version = "v1alpha1",
    kind = "SlicePeers",
    plural = "slicepeers",
    namespaced,
    printcolumn = r#"{"name":"Slice","type":"string","jsonPath":".spec.slice"}"#,
    printcolumn = r#"{"name":"Page","type":"integer","jsonPath":".spec.page"}"#,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct SlicePeersSpec {
    pub slice: String,
    pub page: u32,
    /// The members of the slice on this page, each as the other members' gateways must know
    /// it, in cluster order.
    #[serde(default)]
    pub peers: Vec<WorkerPeer>,
}

/// One address family of a slice in one member cluster, besides the primary one that
/// [`WorkerSliceSpec`]'s own `sliceSubnet`, `clusterPrefix` and `nodePrefixLength` carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSliceFamily {
    pub slice_subnet: String,
    pub cluster_prefix: String,
    pub node_prefix_length: u8,
}

/// A slice's QoS in one member cluster (the hub writes it from the SliceConfig's profile and
/// the MemberCluster's uplink rate).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSliceQos {
    pub profile: QosProfile,
    /// `MemberCluster.spec.uplinkKbps`; absent: only the DSCP class is enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink_kbps: Option<u64>,
}

/// Namespace isolation as one member cluster applies it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerIsolation {
    /// Namespaces of this cluster allowed besides the slice's member namespaces, sorted.
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
}

/// A service exported on a slice, merged from every member cluster that exports it (the hub
/// writes it into each member cluster's WorkerSlice spec).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedService {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ServiceImportType,
    /// The ClusterSetIP (none for Headless, or while none is free).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// The service's ports: the union over the exports (the defining export's first).
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `None` or `ClientIP`, from the defining export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// The exporting clusters, by name, each with its ready endpoints.
    #[serde(default)]
    pub clusters: Vec<ImportedCluster>,
    /// Set when the exports differ (ports, type, session affinity): the MCS `Conflict`
    /// condition every exporting cluster puts on its ServiceExport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ExportConflict>,
}

/// One exporting cluster of an [`ImportedService`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedCluster {
    pub cluster: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointGroup>,
}

/// Why the exports of a service conflict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportConflict {
    /// MCS reasons, comma-separated: `PortConflict`, `TypeConflict`, `SessionAffinityConflict`.
    pub reason: String,
    /// Which fields differ, which cluster's values are used and why.
    pub message: String,
}

/// A service one member cluster exports on a slice, as its worker reports it (WorkerSlice
/// status). The hub takes it only after its checks (namespace, addresses, names).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportedService {
    pub namespace: String,
    pub name: String,
    /// `ClusterSetIP` for a Service with a cluster IP, `Headless` for `clusterIP: None`.
    #[serde(rename = "type")]
    pub type_: ServiceImportType,
    /// The Service's ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `None` or `ClientIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// RFC 3339: when the ServiceExport was made (the oldest export defines the service).
    pub exported_at: String,
    /// The ready endpoints, by their slice addresses, grouped by the ports they serve.
    #[serde(default)]
    pub endpoints: Vec<EndpointGroup>,
}

/// Endpoints that serve the same ports (an EndpointSlice's worth).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointGroup {
    /// The ports as the endpoints serve them (target ports, named as the Service's ports).
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
}

/// One ready endpoint: a pod's slice address and its DNS hostname.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    pub address: String,
    /// The endpoint's hostname, the pod's `spec.hostname` (StatefulSets), else its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Another cluster of the slice, as one cluster's gateway must know it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPeer {
    pub cluster: String,
    pub prefix: String,
    /// The peer's cluster prefix of the slice's secondary subnet (dual-stack slices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_prefix: Option<String>,
    /// The peer gateway's public key (base64), once it has published one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The peer gateway's `host:port`, once it has published one (none for a peer behind NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The peer's other gateway replicas (ordinals 1…), each a WireGuard peer of its own that
    /// holds the same prefix: the gateway groups them and spreads flows over the live ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<PeerReplica>,
}

/// A peer cluster's gateway replica beyond the first, as the hub hands it out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerReplica {
    pub ordinal: u32,
    pub public_key: String,
    /// `host:port`; none behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// One gateway replica as its cluster reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayReplicaStatus {
    pub ordinal: u32,
    /// The replica's public key (base64), once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The replica's public `host:port`; none behind NAT or before its Service has a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The node its pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `Up`, `Down` or `Pending`.
    pub state: String,
    /// Why it is not `Up`; for an `Up` replica, why it does not carry every peer cluster's
    /// traffic (`no live tunnel to c3`) or that its metrics could not be read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// How many of the slice's peer clusters this replica has a live tunnel to: at least one of
    /// the cluster's replicas (each a WireGuard peer of its own) answers its probes, or, from a
    /// gateway that does not probe, shook hands within 180 s. From the replica's own metrics;
    /// none when they were not read (its pod does not run, or they did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_tunnels: Option<u32>,
    /// The peer clusters this replica has no live tunnel to (from its own metrics, as
    /// `liveTunnels`): the nodes route them via the other replicas while one reaches them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// What a member cluster runs for a slice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSliceStatus {
    /// The gateway's public key (base64); the private key never leaves the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_public_key: Option<String>,
    /// The gateway's public `host:port`; none when the cluster is behind NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_endpoint: Option<String>,
    /// Every gateway replica: key, endpoint, node, state and why it is not up. Ordinal 0's key
    /// and endpoint are also `gatewayPublicKey` and `gatewayEndpoint`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_replicas: Vec<GatewayReplicaStatus>,
    /// Node prefixes handed out in this cluster (never renumbered).
    #[serde(default)]
    pub nodes: Vec<NodeAllocation>,
    /// How many pods have the slice interface.
    #[serde(default)]
    pub connected_pods: u32,
    /// Tunnel state towards each peer cluster.
    #[serde(default)]
    pub peers: Vec<PeerTunnelStatus>,
    /// The services this cluster exports on the slice (its valid ServiceExports in member
    /// namespaces), with their ready endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<ExportedService>,
    /// This cluster's pods on the slice (running, in member namespaces, with a checked slice
    /// address), grouped by namespace, namespace labels, labels and named ports: its part of the
    /// slice's pod directory, which the hub checks and hands to the other members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<crate::policy::PodGroup>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A node's prefix of the cluster prefix.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAllocation {
    pub node: String,
    pub prefix: String,
}

/// Tunnel state towards one peer cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerTunnelStatus {
    pub cluster: String,
    /// `Up`, `Down` or `Pending`.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// RFC 3339 time of the last handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<String>,
    /// The tunnel's figures as this cluster's gateway measures them (none until its metrics
    /// list the peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<TunnelHealth>,
    /// The tunnel's MTU (the inner packets it must carry), as the gateway reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_mtu: Option<u32>,
    /// The largest inner packet the path to the peer carries, from the gateway's path probes
    /// inside the tunnel (none until a round of them says; `tunnelMtu` when the path is wide).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
    /// The tunnel is not up and this gateway's handshake initiations to the peer have gone
    /// unanswered for a while (they do not arrive, or the answers do not come back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handshake_unanswered: bool,
    /// The tunnel is not up and the peer's handshake initiations arrive here: the way from the
    /// peer works (so whatever is lost is lost on the way back to it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub peer_initiating: bool,
}

/// One tunnel's figures from this side's gateway: bounded (one per peer), no floats (the API
/// conventions avoid them), counters since the gateway started.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TunnelHealth {
    /// Round-trip time of the last handshake this gateway initiated, in milliseconds (none until
    /// it has initiated one; the peer's status then carries it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_millis: Option<u32>,
    /// Bytes received from the peer (UDP payload).
    #[serde(default)]
    pub rx_bytes: u64,
    /// Bytes sent to the peer (UDP payload).
    #[serde(default)]
    pub tx_bytes: u64,
    /// Authenticated datagrams received from the peer.
    #[serde(default)]
    pub rx_packets: u64,
    /// Datagrams sent to the peer.
    #[serde(default)]
    pub tx_packets: u64,
    /// Estimated loss of the peer's packets on the way here, in thousandths (0–1000).
    #[serde(default)]
    pub rx_loss_permille: u32,
    /// Throughput from the peer, bits per second, between the gateway's two latest samples
    /// (a second or more apart; written with the other figures, so up to a minute old).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bits_per_second: Option<u64>,
    /// Throughput to the peer, bits per second, as `rxBitsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bits_per_second: Option<u64>,
}

/// Why a SliceConfig's fields cannot be used. `field` is the camelCase spec field at fault
/// (`sliceSubnet`, `secondaryNodePrefixLength`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field} {value:?} is not a CIDR (write it like 10.80.0.0/16 or fd00:80::/48)")]
    BadSubnet { field: &'static str, value: String },
    #[error("{field}: {error}")]
    Prefix { field: &'static str, error: prefix::PrefixError },
    #[error(
        "{field} /{node} does not fit the cluster prefix /{cluster}: it must be longer than /{cluster} and at most /{max}"
    )]
    NodePrefix { field: &'static str, node: u8, cluster: u8, max: u8 },
    #[error(
        "{field} /{node} gives a node more addresses than it can use: it must be at least /{min} (at most {} addresses per node)",
        1u32 << MAX_NODE_HOST_BITS
    )]
    NodePrefixTooShort { field: &'static str, node: u8, min: u8 },
    #[error(
        "secondarySliceSubnet {secondary} is of the same family as sliceSubnet {primary}: a slice has at most one subnet per family, so the second one must be IPv{}",
        if primary.addr().is_ipv4() { 6 } else { 4 }
    )]
    SameFamily { primary: IpNet, secondary: IpNet },
    #[error(
        "secondaryNodePrefixLength /{0} is set but secondarySliceSubnet is not: remove it, or add a secondarySliceSubnet"
    )]
    SecondaryNodePrefixWithoutSubnet(u8),
}

/// The spec fields of one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyFields {
    pub subnet: &'static str,
    pub node_prefix_length: &'static str,
}

/// `sliceSubnet` and `nodePrefixLength`.
pub const PRIMARY_FIELDS: FamilyFields = FamilyFields { subnet: "sliceSubnet", node_prefix_length: "nodePrefixLength" };
/// `secondarySliceSubnet` and `secondaryNodePrefixLength`.
pub const SECONDARY_FIELDS: FamilyFields =
    FamilyFields { subnet: "secondarySliceSubnet", node_prefix_length: "secondaryNodePrefixLength" };

/// The parsed shape of a slice's address plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPlan {
    pub subnet: IpNet,
    pub max_clusters: u32,
    pub cluster_prefix_len: u8,
    pub node_prefix_len: u8,
}

/// Every family's address plan of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPlans {
    /// The plan of `sliceSubnet`.
    pub primary: AddressPlan,
    /// The plan of `secondarySliceSubnet` (of the other family), when there is one.
    pub secondary: Option<AddressPlan>,
}

impl AddressPlans {
    /// The plans, primary first.
    pub fn iter(&self) -> impl Iterator<Item = &AddressPlan> {
        std::iter::once(&self.primary).chain(self.secondary.as_ref())
    }
}

/// Parses and checks one family's subnet and node prefix length against `maxClusters`.
fn family_plan(
    fields: FamilyFields,
    subnet: &str,
    node_prefix_length: Option<u8>,
    max_clusters: u32,
) -> Result<AddressPlan, SpecError> {
    let bad = |error| SpecError::Prefix { field: fields.subnet, error };
    let subnet: IpNet =
        subnet.trim().parse().map_err(|_| SpecError::BadSubnet { field: fields.subnet, value: subnet.to_owned() })?;
    prefix::check_aligned(subnet).map_err(bad)?;
    let cluster_prefix_len = prefix::cluster_prefix_len(subnet, max_clusters).map_err(bad)?;
    let node_prefix_len = node_prefix_length.unwrap_or(match subnet {
        IpNet::V4(_) => DEFAULT_NODE_PREFIX_LEN_V4,
        IpNet::V6(_) => DEFAULT_NODE_PREFIX_LEN_V6,
    });
    // A node prefix holds at most 2^16 addresses: more than any node runs pods, and what the
    // CNI plugin's IPAM is built for (an IPv6 /64 per node once crashed it).
    let min = subnet.max_prefix_len() - MAX_NODE_HOST_BITS;
    if node_prefix_len < min {
        return Err(SpecError::NodePrefixTooShort { field: fields.node_prefix_length, node: node_prefix_len, min });
    }
    // A node prefix needs room for the router address and at least one pod.
    let max = subnet.max_prefix_len() - 2;
    if node_prefix_len <= cluster_prefix_len || node_prefix_len > max {
        return Err(SpecError::NodePrefix {
            field: fields.node_prefix_length,
            node: node_prefix_len,
            cluster: cluster_prefix_len,
            max,
        });
    }
    Ok(AddressPlan { subnet, max_clusters, cluster_prefix_len, node_prefix_len })
}

impl AddressPlan {
    /// Cluster prefix number `index`.
    ///
    /// # Errors
    /// When `index` is not below `max_clusters`.
    pub fn cluster_prefix(&self, index: u32) -> Result<IpNet, prefix::PrefixError> {
        prefix::cluster_prefix(self.subnet, self.max_clusters, u64::from(index))
    }

    /// The block reserved for the slice's ClusterSetIPs ([`prefix::cluster_set_ip_block`]).
    #[must_use]
    pub fn cluster_set_ip_block(&self) -> IpNet {
        prefix::cluster_set_ip_block(self.subnet, self.cluster_prefix_len, self.node_prefix_len)
    }
}

impl SliceConfigSpec {
    /// Parses and checks the (primary) subnet, `maxClusters` and `nodePrefixLength`.
    ///
    /// # Errors
    /// A [`SpecError`] that says what to change.
    pub fn address_plan(&self) -> Result<AddressPlan, SpecError> {
        family_plan(PRIMARY_FIELDS, &self.slice_subnet, self.node_prefix_length, self.max_clusters)
    }

    /// The address plan of every family: the primary one, and the secondary one of a
    /// dual-stack slice (the other family, the same `maxClusters`).
    ///
    /// # Errors
    /// The first [`SpecError`] of either family, or the secondary family's own errors.
    pub fn address_plans(&self) -> Result<AddressPlans, SpecError> {
        let primary = self.address_plan()?;
        let secondary = match (&self.secondary_slice_subnet, self.secondary_node_prefix_length) {
            (None, None) => None,
            (None, Some(len)) => return Err(SpecError::SecondaryNodePrefixWithoutSubnet(len)),
            (Some(subnet), len) => {
                let plan = family_plan(SECONDARY_FIELDS, subnet, len, self.max_clusters)?;
                if plan.subnet.addr().is_ipv4() == primary.subnet.addr().is_ipv4() {
                    return Err(SpecError::SameFamily { primary: primary.subnet, secondary: plan.subnet });
                }
                Some(plan)
            }
        };
        Ok(AddressPlans { primary, secondary })
    }

    /// Member namespaces of the slice in `cluster`, sorted and without repeats.
    #[must_use]
    pub fn namespaces_in(&self, cluster: &str) -> Vec<String> {
        let mut out: Vec<String> =
            self.namespaces.iter().filter(|n| n.applies_to(cluster)).map(|n| n.namespace.clone()).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Kubernetes-style condition list update: replaces the condition of the same type, keeping its
/// `lastTransitionTime` when the status did not change and setting it to `now` when it did.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition, now: &str) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time =
                if old.status == new.status { old.last_transition_time.clone() } else { Some(now.to_owned()) };
            *old = new;
        }
        None => {
            new.last_transition_time = Some(now.to_owned());
            conditions.push(new);
        }
    }
}

/// The condition of `type_`, if present.
#[must_use]
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Every CRD of slicenet, in the order they are installed.
#[must_use]
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![SliceConfig::crd(), MemberCluster::crd(), WorkerSlice::crd(), SlicePeers::crd()]
}

/// Labels for hub objects of a slice and cluster.
#[must_use]
pub fn owner_labels(slice: &str, cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(SLICE_OWNER_LABEL.to_owned(), slice.to_owned()), (CLUSTER_LABEL.to_owned(), cluster.to_owned())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str, max: u32, node: Option<u8>) -> SliceConfigSpec {
        serde_json::from_value(serde_json::json!({
            "sliceSubnet": subnet, "maxClusters": max, "nodePrefixLength": node,
        }))
        .unwrap()
    }

    #[test]
    fn defaults_fill_in() {
        let s: SliceConfigSpec = serde_json::from_str(r#"{"sliceSubnet":"10.80.0.0/16"}"#).unwrap();
        assert_eq!(s.max_clusters, 16);
        assert_eq!(s.gateway.port, 51820);
        assert_eq!(s.gateway.exposure, GatewayExposure::NodePort);
        let plan = s.address_plan().unwrap();
        assert_eq!((plan.cluster_prefix_len, plan.node_prefix_len), (20, 26));
        assert_eq!(plan.cluster_prefix(1).unwrap().to_string(), "10.80.16.0/20");
    }

    #[test]
    fn address_plan_errors_say_what_to_change() {
        let e = spec("10.80.0.1/16", 16, None).address_plan().unwrap_err();
        assert!(e.to_string().contains("did you mean 10.80.0.0/16"), "{e}");
        let e = spec("10.80.0.0/16", 12, None).address_plan().unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = spec("10.80.0.0/16", 16, Some(18)).address_plan().unwrap_err();
        assert!(e.to_string().contains("/18 does not fit the cluster prefix /20"), "{e}");
        let e = spec("banana", 16, None).address_plan().unwrap_err();
        assert!(e.to_string().contains("not a CIDR"), "{e}");
        assert_eq!(spec("fd00:80::/48", 16, None).address_plan().unwrap().node_prefix_len, 120);
    }

    fn dual(primary: &str, secondary: Option<&str>, len: Option<u8>) -> SliceConfigSpec {
        serde_json::from_value(serde_json::json!({
            "sliceSubnet": primary, "maxClusters": 16,
            "secondarySliceSubnet": secondary, "secondaryNodePrefixLength": len,
        }))
        .unwrap()
    }

    #[test]
    fn a_dual_stack_slice_plans_both_families_with_the_same_indexes() {
        let plans = dual("10.80.0.0/16", Some("fd00:80::/48"), None).address_plans().unwrap();
        let v6 = plans.secondary.unwrap();
        assert_eq!((v6.cluster_prefix_len, v6.node_prefix_len), (52, 120));
        assert_eq!(v6.cluster_prefix(1).unwrap().to_string(), "fd00:80:0:1000::/52");
        assert_eq!(plans.iter().count(), 2);
        // IPv6 first, IPv4 second works as well.
        let plans = dual("fd00:80::/48", Some("10.80.0.0/16"), Some(24)).address_plans().unwrap();
        assert_eq!(plans.secondary.unwrap().node_prefix_len, 24);
        // A single-family slice (an old object) has no secondary plan.
        assert_eq!(spec("10.80.0.0/16", 16, None).address_plans().unwrap().secondary, None);
        assert_eq!(
            serde_json::to_value(spec("10.80.0.0/16", 16, None)).unwrap().get("secondarySliceSubnet"),
            None,
            "an absent secondary family is not written"
        );
    }

    #[test]
    fn a_bad_secondary_family_names_its_own_fields() {
        let e = dual("10.80.0.0/16", Some("10.81.0.0/16"), None).address_plans().unwrap_err();
        assert!(matches!(e, SpecError::SameFamily { .. }), "{e}");
        assert!(e.to_string().contains("at most one subnet per family, so the second one must be IPv6"), "{e}");
        let e = dual("fd00:80::/48", Some("fd00:81::/48"), None).address_plans().unwrap_err();
        assert!(e.to_string().contains("must be IPv4"), "{e}");
        let e = dual("10.80.0.0/16", Some("fd00:80::1/48"), None).address_plans().unwrap_err();
        assert!(e.to_string().starts_with("secondarySliceSubnet: fd00:80::1/48 is not aligned"), "{e}");
        let e = dual("10.80.0.0/16", Some("pear"), None).address_plans().unwrap_err();
        assert!(e.to_string().starts_with("secondarySliceSubnet \"pear\" is not a CIDR"), "{e}");
        let e = dual("10.80.0.0/16", Some("fd00:80::/48"), Some(64)).address_plans().unwrap_err();
        assert!(e.to_string().starts_with("secondaryNodePrefixLength /64 gives a node more addresses"), "{e}");
        let e = dual("10.80.0.0/16", Some("fd00:80::/48"), Some(127)).address_plans().unwrap_err();
        assert!(e.to_string().starts_with("secondaryNodePrefixLength /127 does not fit"), "{e}");
        let e = dual("10.80.0.0/16", None, Some(120)).address_plans().unwrap_err();
        assert_eq!(e, SpecError::SecondaryNodePrefixWithoutSubnet(120));
        // The primary family's errors still name the primary fields.
        let e = dual("10.80.0.1/16", Some("fd00:80::/48"), None).address_plans().unwrap_err();
        assert!(e.to_string().starts_with("sliceSubnet: 10.80.0.1/16 is not aligned"), "{e}");
    }

    #[test]
    fn namespaces_per_cluster() {
        let s: SliceConfigSpec = serde_json::from_value(serde_json::json!({
            "sliceSubnet": "10.80.0.0/16",
            "namespaces": [{"namespace": "web"}, {"namespace": "db", "clusters": ["c2"]}, {"namespace": "web", "clusters": ["c1"]}],
        }))
        .unwrap();
        assert_eq!(s.namespaces_in("c1"), ["web"]);
        assert_eq!(s.namespaces_in("c2"), ["db", "web"]);
    }

    #[test]
    fn conditions_keep_transition_time_when_status_holds() {
        let mut c = Vec::new();
        set_condition(&mut c, Condition::new("Ready", false, "Pending", "x"), "t1");
        set_condition(&mut c, Condition::new("Ready", false, "Pending", "y"), "t2");
        assert_eq!(c[0].last_transition_time.as_deref(), Some("t1"));
        set_condition(&mut c, Condition::new("Ready", true, "Up", ""), "t3");
        assert_eq!(c[0].last_transition_time.as_deref(), Some("t3"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn crds_have_schemas_and_cel_rules() {
        let crds = crds();
        let json = serde_json::to_string(&crds).unwrap();
        assert!(json.contains("isCIDR(self)"));
        assert!(json.contains("sliceSubnet is immutable"));
        assert!(json.contains("secondarySliceSubnet is immutable"));
        assert!(json.contains("has(self.secondarySliceSubnet) == has(oldSelf.secondarySliceSubnet)"));
        assert!(json.contains("secondarySliceSubnet must be of the other family"));
        assert_eq!(crds[2].spec.scope, "Namespaced");
        assert_eq!(crds[0].spec.scope, "Cluster");
    }
}
