//! The Kubernetes objects the worker wants in its member cluster, built as pure values from
//! WorkerSlices and what the cluster shows (nodes, namespaces, the gateway pod's address):
//!
//! | object | where | name |
//! | --- | --- | --- |
//! | key Secret per gateway replica (`privateKey`, `publicKey`), created once | `slicenet-gateway` | ordinal 0: `slicenet-gw-<slice>-key`; ordinal *i* ≥ 1: `slicenet-gw-<slice>-key-<i>` |
//! | gateway configuration Secret (a wg(8) file per replica, `<pod name>.conf`, each holding its replica's private key, mode 0600) | `slicenet-gateway` | `slicenet-gw-<slice>` |
//! | gateway StatefulSet (`spec.gateway.replicas` pods `slicenet-gw-<slice>-<i>`, one per node) | `slicenet-gateway` | `slicenet-gw-<slice>` |
//! | gateway Service per replica (NodePort or LoadBalancer, UDP, selecting its pod by name; none for HostPort) | `slicenet-gateway` | ordinal 0: `slicenet-gw-<slice>`; ordinal *i* ≥ 1: `slicenet-gw-<slice>-<i>` |
//! | node agent configuration (`config.json`: all slices on that node) | `slicenet-system` | `slicenet-node-<node>` |
//! | membership (slice → comma-separated member namespaces), for the webhook | `slicenet-system` | `slicenet-membership` |
//! | Multus NetworkAttachmentDefinition (when the cluster uses Multus) | each member namespace | `slice-<slice>` |
//!
//! Every object carries `app.kubernetes.io/managed-by: slicenet-worker` and, when it belongs to
//! one slice, `slicenet.io/slice: <slice>`, so that the worker finds what it made (and only
//! that) when it cleans up.
//!
//! **Gateway replicas (issue 13).** A StatefulSet gives each replica an identity (its ordinal)
//! that outlives its pod, so each has its own key Secret and its own Service (its endpoint).
//! Ordinal 0 keeps the names a single gateway had before replicas (`slicenet-gw-<slice>-key`,
//! Service `slicenet-gw-<slice>`): an upgrade keeps the cluster's key and nodePort, so its peers
//! see no change. Every pod of the StatefulSet has the same template, so a pod picks its own
//! configuration by name: the configuration Secret holds one file per replica named after its
//! pod, mounted whole, and the container runs `--config …/$(POD_NAME).conf` (the pod's name from
//! the downward API, expanded by the kubelet in the arguments). A projected volume or an init
//! step would not do better: neither can choose a Secret per pod, and a `subPath` mount would
//! not follow the Secret's updates (the gateway re-reads its file when it changes). So every
//! replica's pod can read every replica's private key of its slice — the replicas are one trust
//! domain; one key per replica is for WireGuard (two processes with one key steal each other's
//! sessions), not for isolation.
//!
//! The Deployment of earlier versions (`slicenet-gw-<slice>`, one replica) is replaced once: the
//! StatefulSet is made beside it and the Deployment deleted when ordinal 0 is ready (see
//! `super::decide`); until then the configuration Secret also holds the Deployment's file
//! (`gateway.conf`, ordinal 0's).
//!
//! The gateway pod joins its slice through a path of its own: it runs in `slicenet-gateway` with
//! the pod annotation `slicenet.io/slice`, and the node agents' configuration names that
//! namespace as the slice's gateway namespace, where a pod joins only the slice its annotation
//! names. Neither `slicenet-gateway` nor `slicenet-system` is ever a member namespace, so no
//! other slicenet pod is swept into a slice and several slices never claim one namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};
use slice_api::crd::{GATEWAY_NAMESPACE, GatewayExposure, NodeAllocation, SYSTEM_NAMESPACE, WorkerSliceSpec};
use slice_api::gateway::{self as gateway_cli, arg, flag};
use slice_api::names::{self, SLICE_ANNOTATION, SLICE_LABEL};
use slice_api::node::NodeAgentConfig;
use slice_api::wireguard::Key;
use slice_api::{membership, multus};

use super::keys::KeyPair;
use super::plan::{self, ClusterNode, TypedGateway, TypedSpec, WorkerPlanError};

/// Label naming who manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value on everything the worker makes.
pub const MANAGED_BY: &str = "slicenet-worker";
/// Label naming the component of a gateway's objects.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Its value on gateway objects.
pub const GATEWAY_NAME: &str = "slice-gateway";
/// Annotation the worker sets beside the namespace label it sets, so that it only ever removes
/// labels it set itself (a user may label a namespace to ask for a slice).
pub const LABELLED_BY_ANNOTATION: &str = "slicenet.io/labelled-by";
/// Prefix of the node agents' ConfigMaps: `slicenet-node-<node>`.
pub const NODE_CONFIG_PREFIX: &str = "slicenet-node-";
/// Key of the node agent configuration (JSON) in its ConfigMap.
pub const NODE_CONFIG_KEY: &str = "config.json";
/// The ConfigMap the webhook reads: slice → comma-separated member namespaces.
pub use slice_api::membership::CONFIG_MAP_NAME as MEMBERSHIP_CONFIG_MAP;
/// File name of the gateway configuration the Deployment of earlier versions reads; kept in the
/// configuration Secret (ordinal 0's) while that Deployment runs. Each replica reads its own
/// file ([`replica_config_key`]).
pub const GATEWAY_CONFIG_KEY: &str = "gateway.conf";
/// Label the StatefulSet controller puts on each of its pods: the pod's name (what each
/// replica's Service selects).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label on the gateway StatefulSet's pods only (not on the pods of the Deployment of earlier
/// versions): the StatefulSet's selector and its pods' anti-affinity take in no other pod.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Its value on the gateway replicas.
pub const GATEWAY_REPLICA: &str = "gateway-replica";
/// The gateway container's variable holding its pod's name (downward API), which picks its
/// configuration file.
pub const POD_NAME_ENV: &str = "POD_NAME";
/// The node label the replicas are spread over (one per node).
pub const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";
/// Where the gateway's configuration Secret is mounted in its pod.
pub const GATEWAY_CONFIG_DIR: &str = "/etc/slicenet/gateway";
/// The port the gateway pod serves `/metrics` on (the port WireGuard exporters use), on all
/// its IPv4 addresses: the worker reads it at the pod IP (see `super::scrape`).
pub const GATEWAY_METRICS_PORT: u16 = slice_api::gateway::METRICS_PORT;
/// Keys in the key Secret.
pub const PRIVATE_KEY_KEY: &str = "privateKey";
/// See [`PRIVATE_KEY_KEY`].
pub const PUBLIC_KEY_KEY: &str = "publicKey";

/// Name of the gateway's StatefulSet, configuration Secret and ordinal 0's Service of `slice`
/// (and of the Deployment earlier versions made).
#[must_use]
pub fn gateway_name(slice: &str) -> String {
    format!("slicenet-gw-{slice}")
}

/// Name of the key Secret of `slice`'s gateway replica 0 (the name a single gateway's key had
/// before replicas, kept so that an upgrade keeps the key).
#[must_use]
pub fn key_secret_name(slice: &str) -> String {
    format!("slicenet-gw-{slice}-key")
}

/// Name of the key Secret of `slice`'s gateway replica `ordinal`.
#[must_use]
pub fn replica_key_secret_name(slice: &str, ordinal: u32) -> String {
    match ordinal {
        0 => key_secret_name(slice),
        i => format!("slicenet-gw-{slice}-key-{i}"),
    }
}

/// Name of the Service of `slice`'s gateway replica `ordinal` (ordinal 0 keeps the name, and so
/// the nodePort, of the single gateway's Service before replicas).
#[must_use]
pub fn replica_service_name(slice: &str, ordinal: u32) -> String {
    match ordinal {
        0 => gateway_name(slice),
        i => format!("slicenet-gw-{slice}-{i}"),
    }
}

/// Name of the pod of `slice`'s gateway replica `ordinal`, as the StatefulSet controller names it.
#[must_use]
pub fn replica_pod_name(slice: &str, ordinal: u32) -> String {
    format!("{}-{ordinal}", gateway_name(slice))
}

/// The ordinal of a pod of `slice`'s gateway StatefulSet, from its name; `None` for any other
/// name (the pod of the Deployment of earlier versions: `slicenet-gw-<slice>-<hash>-<id>`).
#[must_use]
pub fn replica_ordinal(slice: &str, pod_name: &str) -> Option<u32> {
    let rest = pod_name.strip_prefix(&gateway_name(slice))?.strip_prefix('-')?;
    let ordinal: u32 = rest.parse().ok()?;
    (ordinal.to_string() == rest).then_some(ordinal)
}

/// The file (key of the configuration Secret) of replica `ordinal`: its pod's name.
#[must_use]
pub fn replica_config_key(slice: &str, ordinal: u32) -> String {
    format!("{}.conf", replica_pod_name(slice, ordinal))
}

/// Name of node `node`'s configuration ConfigMap.
#[must_use]
pub fn node_config_name(node: &str) -> String {
    format!("{NODE_CONFIG_PREFIX}{node}")
}

/// The label selector of everything the worker makes.
#[must_use]
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

fn labels(slice: Option<&str>) -> Value {
    let mut l = json!({ MANAGED_BY_LABEL: MANAGED_BY });
    if let Some(s) = slice {
        l[SLICE_LABEL] = json!(s);
    }
    l
}

fn gateway_labels(slice: &str) -> Value {
    json!({ MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: GATEWAY_NAME, SLICE_LABEL: slice })
}

/// The labels of the gateway StatefulSet's pods and its selector.
fn replica_selector(slice: &str) -> Value {
    json!({ NAME_LABEL: GATEWAY_NAME, SLICE_LABEL: slice, COMPONENT_LABEL: GATEWAY_REPLICA })
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Node-wide settings of the node agents' configuration that the WorkerSlice does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDefaults {
    pub underlay_mtu: u32,
    pub state_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub router_netns_prefix: String,
    pub vxlan_port: u16,
}

impl Default for NodeDefaults {
    fn default() -> Self {
        Self {
            underlay_mtu: 1500,
            state_dir: names::DEFAULT_STATE_DIR.into(),
            netns_dir: names::DEFAULT_NETNS_DIR.into(),
            router_netns_prefix: names::DEFAULT_ROUTER_NETNS_PREFIX.into(),
            vxlan_port: names::DEFAULT_VXLAN_PORT,
        }
    }
}

/// How gateway pods are run.
/// The gateway pods' default image: slicenet's one image (every binary, `slice-gateway` on its
/// `PATH`) of this very release — pinned, never `:latest`, so a gateway never runs another
/// version than the worker that made it.
pub const DEFAULT_GATEWAY_IMAGE: &str = concat!("ghcr.io/slicenet/slicenet:", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayDefaults {
    /// Image with `slice-gateway` on its `PATH`.
    pub image: String,
    /// TUN MTU (`slice-gateway --mtu`).
    pub mtu: u32,
}

impl Default for GatewayDefaults {
    fn default() -> Self {
        Self { image: DEFAULT_GATEWAY_IMAGE.into(), mtu: 1420 }
    }
}

/// The key Secret of `slice`'s gateway replica `ordinal` (created once; never updated, so the
/// key never changes).
#[must_use]
pub fn key_secret(slice: &str, ordinal: u32, keys: &KeyPair) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": replica_key_secret_name(slice, ordinal), "namespace": GATEWAY_NAMESPACE, "labels": labels(Some(slice)) },
        "type": "Opaque",
        "data": { PRIVATE_KEY_KEY: b64(&keys.private_key), PUBLIC_KEY_KEY: b64(&keys.public_key) },
    })
}

/// The gateway's configuration Secret of `slice`: for each replica (`private_keys` in ordinal
/// order) [`plan::gateway_config`] with its key, under [`replica_config_key`]; with `legacy`
/// (the Deployment of earlier versions still runs) ordinal 0's under [`GATEWAY_CONFIG_KEY`] too.
#[must_use]
pub fn gateway_config_secret(slice: &str, gateway: &TypedGateway, private_keys: &[Key], legacy: bool) -> Value {
    let mut data = serde_json::Map::new();
    for (ordinal, key) in (0..).zip(private_keys) {
        let text = b64(&plan::gateway_config(gateway, key).render());
        if ordinal == 0 && legacy {
            data.insert(GATEWAY_CONFIG_KEY.to_owned(), json!(text));
        }
        data.insert(replica_config_key(slice, ordinal), json!(text));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": gateway_name(slice), "namespace": GATEWAY_NAMESPACE, "labels": labels(Some(slice)) },
        "type": "Opaque",
        "data": data,
    })
}

/// CPU and memory requests and limits of a gateway container (`cpu request`, `cpu limit`,
/// `memory request`, `memory limit`), from the lab (`docs/benchmarks.md`, section 8): 7.3 MiB
/// peak RSS at 2 Gbit/s plus up to 32 MiB of UDP socket buffers (8 MiB asked, doubled by the
/// kernel, receive and send), charged to the pod; 0.23 CPU s per Gbit carried, so two cores
/// (its two packet threads) carry about 8 Gbit/s. The request covers an idle gateway with a few
/// hundred Mbit/s; the limit lets it use both packet threads fully.
pub const GATEWAY_RESOURCES: [&str; 4] = ["100m", "2", "48Mi", "128Mi"];
/// Where the gateway creates its WireGuard UAPI socket (an emptyDir: the root filesystem is
/// read-only).
pub use slice_api::gateway::UAPI_SOCKET_DIR as GATEWAY_UAPI_DIR;

/// An HTTP probe of the gateway's `/healthz` on its metrics port (the only health endpoint it
/// serves), with timeouts generous enough for a busy node.
fn gateway_probe(period_seconds: u32) -> Value {
    json!({
        "httpGet": { "path": gateway_cli::HEALTH_PATH, "port": "metrics", "scheme": "HTTP" },
        "periodSeconds": period_seconds, "timeoutSeconds": 5, "failureThreshold": 3,
    })
}

/// The gateway StatefulSet: `spec.gateway.replicas` pods of `slice-gateway --interface
/// sg-<slice> --config …/$(POD_NAME).conf` (each replica its own file, so its own key: see the
/// module's documentation), each a member of its slice through the pod annotation, the
/// configuration Secret mounted with mode 0600 (the gateway refuses a private key readable by
/// others), a host port when the exposure is HostPort, and its metrics on
/// [`GATEWAY_METRICS_PORT`] (the worker reads the tunnels' state there; the probes read
/// `/healthz` there).
///
/// Placement and updates (issue 13, `docs/decisions.md` "Replica identity"):
/// - required pod anti-affinity on [`HOSTNAME_TOPOLOGY`] among the replicas: one per node, so
///   a node's loss takes one replica; a replica that finds no node stays `Pending` (the status
///   says so) and the slice works on the others;
/// - `podManagementPolicy: Parallel`: replicas start and stop together, not in ordinal order
///   (none waits for another to be ready);
/// - `RollingUpdate`: one pod at a time, the next once the updated one is ready (its
///   readiness probe), so with two replicas one path is always up. `maxUnavailable: 1` is that
///   default; it is not written, because the field is behind the `MaxUnavailableStatefulSet`
///   feature gate and an API server without it drops it, which would make the worker see a
///   difference and apply again at every pass.
///
/// Privileges, the least it runs with (proven by slice-gateway's test
/// `net_admin_alone_is_enough_and_needed`; docs/security.md):
/// - root with every capability dropped but `NET_ADMIN`: creating the TUN device
///   (`TUNSETIFF`), its address, link state and routes (netlink), and `SO_RCVBUFFORCE` /
///   `SO_SNDBUFFORCE` for large socket buffers. Root because Kubernetes gives a non-root
///   container no effective capabilities (no ambient capabilities); no privilege escalation.
/// - `/dev/net/tun` from the host (the runtime's default device rules allow it).
/// - IPv4 forwarding between its slice interface and its TUN device: turned on per link by the
///   gateway itself over netlink (`--forward slice0`: `IFLA_INET_CONF`, with the `NET_ADMIN` it
///   has), so the pod needs no sysctl — not the unsafe `net.ipv4.ip_forward`, which kubelets
///   would have to allow — and no writable `/proc/sys`.
/// - a read-only root filesystem, the UAPI socket directory an emptyDir, the runtime's default
///   seccomp profile, and no ServiceAccount token (it makes no API request).
///
/// The metrics listen on `[::]`: IPv6 and IPv4 (dual stack) on every address of the pod, so
/// IPv6-only pod networks get the tunnels' state too; on a kernel without IPv6 the gateway
/// falls back to `0.0.0.0` (`slice_gateway::metrics::bind`).
#[must_use]
pub fn gateway_statefulset(spec: &WorkerSliceSpec, gateway: &GatewayDefaults) -> Value {
    let slice = spec.slice.as_str();
    let mut port = json!({ "name": "wireguard", "containerPort": spec.gateway.port, "protocol": "UDP" });
    if spec.gateway.exposure == GatewayExposure::HostPort {
        port["hostPort"] = json!(spec.gateway.port);
    }
    // The kubelet expands `$(POD_NAME)` in the arguments from the container's environment.
    let config = format!("{GATEWAY_CONFIG_DIR}/$({POD_NAME_ENV}).conf");
    let [cpu_request, cpu_limit, memory_request, memory_limit] = GATEWAY_RESOURCES;
    let seccomp = json!({ "type": "RuntimeDefault" });
    let mut args = vec![
        arg(flag::INTERFACE),
        plan::gateway_interface(slice),
        arg(flag::CONFIG),
        config,
        arg(flag::MTU),
        gateway.mtu.to_string(),
        arg(flag::METRICS),
        format!("[::]:{GATEWAY_METRICS_PORT}"),
        // Peers' prefixes into the TUN device; the mounted config is re-read
        // when the worker changes the Secret.
        arg(flag::ROUTES),
        // Forwarding between the slice interface and the TUN device.
        arg(flag::FORWARD),
        names::DEFAULT_SLICE_INTERFACE.to_owned(),
    ];
    // The gateway probes its peers: several replicas per cluster (issue 13) share their
    // cluster's prefix and the gateway spreads flows over the live ones, with failover within a
    // second; with one, the probes only tell a silent peer (a cut link) within seconds.
    let probe_ms = if spec.gateway.replicas > 1 {
        slice_api::gateway::DEFAULT_MULTIPATH_PROBE_MS
    } else {
        slice_api::gateway::SINGLE_GATEWAY_PROBE_MS
    };
    args.extend([arg(flag::MULTIPATH_PROBE_MS), probe_ms.to_string()]);
    // With several replicas a stopping one drains first (issue 13, rolling restarts): its
    // flows move to the others before it exits (well inside the pod's 30 s grace period).
    if spec.gateway.replicas > 1 {
        args.extend([arg(flag::DRAIN_MS), slice_api::gateway::DEFAULT_DRAIN_MS.to_string()]);
    }
    // The slice's DSCP class on the outer packets (IP_TOS on the gateway's socket).
    if let Some(dscp) = spec.qos.as_ref().and_then(|q| q.profile.dscp_class) {
        args.extend([arg(flag::DSCP), dscp.name().to_owned()]);
    }
    // A slice with an IPv6 subnet: IPv6 forwarding in the pod (Linux has no per-link switch
    // for it that netlink sets); an unsafe sysctl the kubelets must allow.
    let mut pod_security = json!({ "seccompProfile": seccomp });
    let ipv6 = std::iter::once(&spec.slice_subnet)
        .chain(spec.secondary_family.as_ref().map(|f| &f.slice_subnet))
        .any(|s| s.contains(':'));
    if ipv6 {
        pod_security["sysctls"] = json!([{ "name": "net.ipv6.conf.all.forwarding", "value": "1" }]);
    }
    let mut pod_labels = gateway_labels(slice);
    pod_labels[COMPONENT_LABEL] = json!(GATEWAY_REPLICA);
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": gateway_name(slice), "namespace": GATEWAY_NAMESPACE, "labels": gateway_labels(slice) },
        "spec": {
            "replicas": spec.gateway.replicas,
            "podManagementPolicy": "Parallel",
            "updateStrategy": { "type": "RollingUpdate" },
            "selector": { "matchLabels": replica_selector(slice) },
            "template": {
                "metadata": { "labels": pod_labels, "annotations": { SLICE_ANNOTATION: slice } },
                "spec": {
                    "automountServiceAccountToken": false,
                    "affinity": { "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": { "matchLabels": replica_selector(slice) },
                        "topologyKey": HOSTNAME_TOPOLOGY,
                    }] } },
                    "containers": [{
                        "name": "gateway",
                        "image": gateway.image,
                        "command": ["slice-gateway"],
                        "args": args,
                        "env": [{ "name": POD_NAME_ENV, "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                        "ports": [port, { "name": "metrics", "containerPort": GATEWAY_METRICS_PORT, "protocol": "TCP" }],
                        "resources": {
                            "requests": { "cpu": cpu_request, "memory": memory_request },
                            "limits": { "cpu": cpu_limit, "memory": memory_limit },
                        },
                        "livenessProbe": gateway_probe(10),
                        "readinessProbe": gateway_probe(5),
                        "securityContext": {
                            "runAsUser": 0,
                            "runAsGroup": 0,
                            "runAsNonRoot": false,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"], "add": ["NET_ADMIN"] },
                            "seccompProfile": seccomp,
                        },
                        "volumeMounts": [
                            { "name": "config", "mountPath": GATEWAY_CONFIG_DIR, "readOnly": true },
                            { "name": "tun", "mountPath": "/dev/net/tun" },
                            { "name": "uapi", "mountPath": GATEWAY_UAPI_DIR },
                        ],
                    }],
                    "securityContext": pod_security,
                    "volumes": [
                        { "name": "config", "secret": { "secretName": gateway_name(slice), "defaultMode": 0o600 } },
                        { "name": "tun", "hostPath": { "path": "/dev/net/tun", "type": "CharDevice" } },
                        { "name": "uapi", "emptyDir": { "medium": "Memory", "sizeLimit": "1Mi" } },
                    ],
                },
            },
        },
    })
}

/// The Service of `slice`'s gateway replica `ordinal` (UDP, NodePort or LoadBalancer): its own
/// endpoint, selecting its pod by name; `None` for HostPort exposure. A fixed
/// `spec.gateway.nodePort` is ordinal 0's (a port is one Service's); the others' are assigned.
#[must_use]
pub fn gateway_service(spec: &WorkerSliceSpec, ordinal: u32) -> Option<Value> {
    let slice = spec.slice.as_str();
    let mut port =
        json!({ "name": "wireguard", "protocol": "UDP", "port": spec.gateway.port, "targetPort": spec.gateway.port });
    let type_ = match spec.gateway.exposure {
        GatewayExposure::HostPort => return None,
        GatewayExposure::LoadBalancer => "LoadBalancer",
        GatewayExposure::NodePort => {
            if let Some(np) = spec.gateway.node_port.filter(|_| ordinal == 0) {
                port["nodePort"] = json!(np);
            }
            "NodePort"
        }
    };
    Some(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": replica_service_name(slice, ordinal), "namespace": GATEWAY_NAMESPACE, "labels": gateway_labels(slice) },
        "spec": {
            "type": type_,
            "selector": { SLICE_LABEL: slice, POD_NAME_LABEL: replica_pod_name(slice, ordinal) },
            "ports": [port],
        },
    }))
}

/// One slice as the worker runs it in this cluster: the WorkerSlice (parsed), its node
/// prefixes, its effective member namespaces and its live gateway replicas' slice addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSlice {
    pub typed: TypedSpec,
    pub allocations: Vec<NodeAllocation>,
    /// Member namespaces after conflicts are taken out, sorted.
    pub namespaces: Vec<String>,
    /// The slice addresses of the gateway replicas that are ready, per family, in ordinal order
    /// (see `super::decide::gateway_replica_addresses`).
    pub gateways: plan::GatewayAddresses,
    /// Each node's prefix of the secondary family ([`TypedSpec::secondary_allocations`]).
    pub secondary_allocations: Vec<NodeAllocation>,
}

/// Every node's agent configuration: each node of `nodes` with every slice that has a node
/// prefix for it (slices in name order, nodes in name order).
///
/// # Errors
/// When a slice cannot be planned for a node (see [`plan::node_agent_slice`]).
pub fn node_agent_configs(
    slices: &[PlannedSlice],
    nodes: &[ClusterNode],
    defaults: &NodeDefaults,
) -> Result<Vec<NodeAgentConfig>, WorkerPlanError> {
    let mut sorted_nodes: Vec<&ClusterNode> = nodes.iter().collect();
    sorted_nodes.sort();
    sorted_nodes.dedup_by(|a, b| a.name == b.name);
    let mut sorted_slices: Vec<&PlannedSlice> = slices.iter().collect();
    sorted_slices.sort_by(|a, b| a.typed.slice.cmp(&b.typed.slice));
    let mut out = Vec::new();
    for node in sorted_nodes {
        let mut on_node = Vec::new();
        for slice in &sorted_slices {
            if !slice.allocations.iter().any(|a| a.node == node.name) {
                continue;
            }
            let mut s =
                plan::node_agent_slice(&slice.typed, &node.name, nodes, &slice.allocations, slice.gateways.clone())?;
            s.namespaces.clone_from(&slice.namespaces);
            on_node.push(s);
        }
        out.push(NodeAgentConfig {
            node: node.name.clone(),
            underlay_address: node.underlay_address,
            underlay_mtu: defaults.underlay_mtu,
            state_dir: defaults.state_dir.clone(),
            netns_dir: defaults.netns_dir.clone(),
            router_netns_prefix: defaults.router_netns_prefix.clone(),
            vxlan_port: defaults.vxlan_port,
            slices: on_node,
        });
    }
    Ok(out)
}

/// The ConfigMap holding one node agent's configuration as JSON under [`NODE_CONFIG_KEY`].
#[must_use]
pub fn node_config_map(config: &NodeAgentConfig) -> Value {
    let text = serde_json::to_string_pretty(config).unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": node_config_name(&config.node), "namespace": SYSTEM_NAMESPACE, "labels": labels(None) },
        "data": { NODE_CONFIG_KEY: text },
    })
}

/// The membership ConfigMap the webhook reads: one key per slice, its member namespaces
/// comma-separated (the gateway namespace is not among them: the webhook leaves it alone and
/// the gateway Deployment carries its slice annotation itself).
#[must_use]
pub fn membership_config_map(slices: &[PlannedSlice]) -> Value {
    let data = membership::render(slices.iter().map(|s| (s.typed.slice.as_str(), s.namespaces.as_slice())));
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": membership::CONFIG_MAP_NAME, "namespace": membership::CONFIG_MAP_NAMESPACE, "labels": labels(None) },
        "data": data,
    })
}

/// The Multus NetworkAttachmentDefinitions of a slice, one per member namespace (built by
/// `slice_api::multus`), labelled as the worker's.
#[must_use]
pub fn nads(slice: &PlannedSlice) -> Vec<Value> {
    multus::nads_for_slice(&slice.typed.slice, &slice.namespaces)
        .into_iter()
        .filter_map(|mut nad| {
            nad.metadata.labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
            serde_json::to_value(nad).ok()
        })
        .collect()
}

/// A namespace as the label decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedNamespace {
    pub name: String,
    /// Value of the `slicenet.io/slice` label.
    pub slice_label: Option<String>,
    /// Whether the worker set that label (annotation [`LABELLED_BY_ANNOTATION`]).
    pub labelled_by_worker: bool,
}

/// A change of one namespace's slice label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelChange {
    pub namespace: String,
    /// `Some(slice)` sets `slicenet.io/slice=<slice>`; `None` removes it.
    pub slice: Option<String>,
}

/// What the namespace decision found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceDecision {
    /// Label writes, in namespace order.
    pub changes: Vec<LabelChange>,
    /// Per slice: member namespaces it gets (existing or not yet created), sorted.
    pub members: BTreeMap<String, Vec<String>>,
    /// Per slice: member namespaces held by another slice's label, sorted.
    pub conflicts: BTreeMap<String, Vec<String>>,
    /// Per slice: member namespaces that do not exist (yet), sorted.
    pub missing: BTreeMap<String, Vec<String>>,
    /// Per slice: slicenet's own namespaces it lists, which never join a slice.
    pub reserved: BTreeMap<String, Vec<String>>,
}

/// Decides the namespace labels: each member namespace of a slice gets `slicenet.io/slice=<slice>`
/// unless it is labelled for another slice (never touched: a conflict, reported on the slice);
/// when two slices list the same unlabelled namespace, the first by name takes it. A label the
/// worker set (see [`LABELLED_BY_ANNOTATION`]) is removed from a namespace that is no longer a
/// member of that slice; labels set by others are left alone.
///
/// `wanted` maps each active slice to its namespaces in this cluster.
#[must_use]
pub fn decide_namespaces(
    wanted: &BTreeMap<String, Vec<String>>,
    namespaces: &[ObservedNamespace],
) -> NamespaceDecision {
    let by_name: BTreeMap<&str, &ObservedNamespace> = namespaces.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut decision = NamespaceDecision::default();
    // Who holds each namespace after this pass.
    let mut holder: BTreeMap<String, String> = BTreeMap::new();
    for ns in namespaces {
        if let Some(s) = &ns.slice_label {
            holder.insert(ns.name.clone(), s.clone());
        }
    }
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    for (slice, members) in wanted {
        let members: BTreeSet<&String> = members.iter().collect();
        let mut got = Vec::new();
        for ns in members {
            if names::RESERVED_NAMESPACES.contains(&ns.as_str()) {
                decision.reserved.entry(slice.clone()).or_default().push(ns.clone());
                continue;
            }
            match holder.get(ns.as_str()) {
                Some(h) if h != slice => {
                    // Held by another slice: leave it, unless the worker set that label for a
                    // slice that no longer lists it (it is freed below, then taken next pass).
                    decision.conflicts.entry(slice.clone()).or_default().push(ns.clone());
                    continue;
                }
                Some(_) => {}
                None => {
                    holder.insert(ns.clone(), slice.clone());
                    if by_name.contains_key(ns.as_str()) {
                        set.insert(ns.clone(), slice.clone());
                    }
                }
            }
            if !by_name.contains_key(ns.as_str()) {
                decision.missing.entry(slice.clone()).or_default().push(ns.clone());
            }
            got.push(ns.clone());
        }
        decision.members.insert(slice.clone(), got);
    }
    for ns in namespaces {
        if let Some(slice) = set.remove(&ns.name) {
            decision.changes.push(LabelChange { namespace: ns.name.clone(), slice: Some(slice) });
            continue;
        }
        let Some(label) = &ns.slice_label else { continue };
        let still_member = wanted.get(label).is_some_and(|m| m.contains(&ns.name));
        if ns.labelled_by_worker && !still_member {
            decision.changes.push(LabelChange { namespace: ns.name.clone(), slice: None });
        }
    }
    decision.changes.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(slice: &str) -> WorkerSliceSpec {
        serde_json::from_value(json!({
            "slice": slice, "cluster": "c2", "sliceSubnet": "10.80.0.0/16",
            "clusterPrefix": "10.80.16.0/20", "nodePrefixLength": 26, "vni": 100,
            "namespaces": ["shop"],
            "peers": [{"cluster": "c1", "prefix": "10.80.0.0/20",
                       "publicKey": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=", "endpoint": "198.18.100.1:31820"}],
        }))
        .unwrap()
    }

    fn ns(name: &str, label: Option<&str>, ours: bool) -> ObservedNamespace {
        ObservedNamespace { name: name.into(), slice_label: label.map(Into::into), labelled_by_worker: ours }
    }

    fn wanted(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs.iter().map(|(s, n)| ((*s).to_owned(), n.iter().map(|x| (*x).to_owned()).collect())).collect()
    }

    #[test]
    fn members_are_labelled_and_others_never_touched() {
        let observed = [
            ns("shop", None, false),
            ns("db", Some("red"), false),    // another slice's, set by a user
            ns("old", Some("blue"), true),   // ours, no longer a member
            ns("mine", Some("blue"), false), // a user's request for blue: left alone
            ns("cache", Some("blue"), true), // ours and still a member: no write
        ];
        let d = decide_namespaces(&wanted(&[("blue", &["shop", "db", "cache", "later"])]), &observed);
        assert_eq!(
            d.changes,
            [
                LabelChange { namespace: "old".into(), slice: None },
                LabelChange { namespace: "shop".into(), slice: Some("blue".into()) },
            ]
        );
        assert_eq!(d.members["blue"], ["cache", "later", "shop"]);
        assert_eq!(d.conflicts["blue"], ["db"]);
        assert_eq!(d.missing["blue"], ["later"]);
    }

    #[test]
    fn first_slice_by_name_takes_a_shared_namespace() {
        let d = decide_namespaces(&wanted(&[("blue", &["x"]), ("red", &["x"])]), &[ns("x", None, false)]);
        assert_eq!(d.changes, [LabelChange { namespace: "x".into(), slice: Some("blue".into()) }]);
        assert_eq!(d.conflicts["red"], ["x"]);
        assert!(d.members["red"].is_empty());
    }

    /// Issue 20, high 3: slicenet's own namespaces never join a slice, even when listed.
    #[test]
    fn slicenet_namespaces_are_never_members() {
        let observed =
            [ns("shop", None, false), ns("slicenet-system", None, false), ns("slicenet-gateway", None, false)];
        let d = decide_namespaces(
            &wanted(&[("blue", &["shop", "slicenet-system"]), ("red", &["slicenet-gateway"])]),
            &observed,
        );
        assert_eq!(d.members["blue"], ["shop"]);
        assert!(d.members["red"].is_empty());
        assert_eq!(d.reserved["blue"], ["slicenet-system"]);
        assert_eq!(d.reserved["red"], ["slicenet-gateway"]);
        assert_eq!(d.changes, [LabelChange { namespace: "shop".into(), slice: Some("blue".into()) }]);
        let dep = gateway_statefulset(&spec("blue"), &GatewayDefaults::default());
        assert_eq!(dep["metadata"]["namespace"], "slicenet-gateway");
        assert_eq!(dep["spec"]["template"]["metadata"]["annotations"]["slicenet.io/slice"], "blue");
    }

    #[test]
    fn gateway_pods_of_ipv6_slices_get_the_ipv6_forwarding_sysctl() {
        let sysctls = |s: &WorkerSliceSpec| {
            gateway_statefulset(s, &GatewayDefaults::default())["spec"]["template"]["spec"]["securityContext"]["sysctls"]
                .clone()
        };
        assert!(sysctls(&spec("blue")).is_null(), "an IPv4 slice needs none");
        let mut dual = spec("blue");
        dual.secondary_family = Some(slice_api::crd::WorkerSliceFamily {
            slice_subnet: "fd00:80::/48".into(),
            cluster_prefix: "fd00:80::/52".into(),
            node_prefix_length: 120,
        });
        let want = serde_json::json!([{"name": "net.ipv6.conf.all.forwarding", "value": "1"}]);
        assert_eq!(sysctls(&dual), want);
        let mut v6 = spec("blue");
        v6.slice_subnet = "fd00:81::/48".into();
        assert_eq!(sysctls(&v6), want);
    }

    #[test]
    fn gateway_objects() {
        let mut s = spec("blue");
        s.gateway.replicas = 1;
        let dep = gateway_statefulset(&s, &GatewayDefaults::default());
        let pod = &dep["spec"]["template"];
        assert_eq!(pod["metadata"]["annotations"]["slicenet.io/slice"], "blue");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(
            c["args"],
            json!([
                "--interface",
                "sg-blue",
                "--config",
                "/etc/slicenet/gateway/$(POD_NAME).conf",
                "--mtu",
                "1420",
                "--metrics",
                "[::]:9586",
                "--routes",
                "--forward",
                "slice0",
                "--multipath-probe-ms",
                "1000"
            ])
        );
        assert_eq!(c["ports"][1], json!({"name": "metrics", "containerPort": 9586, "protocol": "TCP"}));
        // With several replicas per cluster (the default, two) the gateway groups the peers'
        // replicas and probes faster (failover within a second).
        let dep2 = gateway_statefulset(&spec("blue"), &GatewayDefaults::default());
        let args2 = &dep2["spec"]["template"]["spec"]["containers"][0]["args"];
        assert_eq!(args2[11], "--multipath-probe-ms");
        assert_eq!(args2[12], "200");
        assert_eq!((&args2[13], &args2[14]), (&json!("--drain-ms"), &json!("2000")), "a stopping replica drains");
        // slice-gateway's `--metrics` takes a socket address.
        assert!(c["args"][7].as_str().unwrap().parse::<std::net::SocketAddr>().is_ok());
        assert_eq!(pod["spec"]["volumes"][0]["secret"]["defaultMode"], 0o600);
        // Forwarding comes from the gateway (`--forward`), not from a sysctl kubelets must allow.
        assert!(pod["spec"]["securityContext"].get("sysctls").is_none());
        // The least privilege: only NET_ADMIN, read-only root, no token, the runtime's seccomp.
        let sc = &c["securityContext"];
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"], "add": ["NET_ADMIN"]}));
        assert_eq!((&sc["allowPrivilegeEscalation"], &sc["readOnlyRootFilesystem"]), (&json!(false), &json!(true)));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(pod["spec"]["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
        // The UAPI socket's directory is writable (an emptyDir) under the read-only root.
        let uapi = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "uapi").unwrap();
        assert_eq!(uapi["mountPath"], slice_gateway::uapi_server::SOCKET_DIR);
        assert!(
            pod["spec"]["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "uapi" && v["emptyDir"].is_object())
        );
        // Probes on the metrics port, the one that serves /healthz.
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
            assert_eq!(c[probe]["httpGet"]["port"], c["ports"][1]["name"], "{probe}");
        }
        for kind in ["requests", "limits"] {
            assert!(c["resources"][kind]["cpu"].is_string() && c["resources"][kind]["memory"].is_string(), "{kind}");
        }
        // Only fields that exist: a round trip through the typed objects keeps everything.
        use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Service};
        let back = serde_json::to_value(serde_json::from_value::<StatefulSet>(dep.clone()).unwrap()).unwrap();
        assert!(crate::worker::decide::is_applied(&dep, &back), "{back:#}");
        let svc = gateway_service(&s, 0).unwrap();
        let back = serde_json::to_value(serde_json::from_value::<Service>(svc.clone()).unwrap()).unwrap();
        assert!(crate::worker::decide::is_applied(&svc, &back), "{back:#}");
        assert!(c["ports"][0].get("hostPort").is_none());
        let svc = gateway_service(&s, 0).unwrap();
        assert_eq!(svc["spec"]["type"], "NodePort");
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "UDP");
        let mut lb = spec("blue");
        lb.gateway.exposure = GatewayExposure::LoadBalancer;
        assert_eq!(gateway_service(&lb, 1).unwrap()["spec"]["type"], "LoadBalancer");
        let mut hp = spec("blue");
        hp.gateway.exposure = GatewayExposure::HostPort;
        assert!(gateway_service(&hp, 0).is_none());
        assert_eq!(
            gateway_statefulset(&hp, &GatewayDefaults::default())["spec"]["template"]["spec"]["containers"][0]["ports"]
                [0]["hostPort"],
            51820
        );
    }

    /// A QoS profile reaches the gateway (its DSCP class as a flag) and the node agents (the
    /// slice's class and the cluster's uplink), and passes the agent's validation.
    #[test]
    fn qos_reaches_the_gateway_and_the_node_agents() {
        let mut s = spec("blue");
        let args = |s: &WorkerSliceSpec| {
            gateway_statefulset(s, &GatewayDefaults::default())["spec"]["template"]["spec"]["containers"][0]["args"]
                .clone()
        };
        assert!(!args(&s).as_array().unwrap().iter().any(|a| a == "--dscp"));
        s.qos = Some(
            serde_json::from_value(json!({
                "profile": {"guaranteedKbps": 10000, "ceilingKbps": 30000, "priority": 2, "dscpClass": "AF41"},
                "uplinkKbps": 40000
            }))
            .unwrap(),
        );
        let a = args(&s);
        let a: Vec<&str> = a.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(a.windows(2).any(|w| w == ["--dscp", "AF41"]), "{a:?}");

        let nodes = [ClusterNode::new("n1", "198.18.1.11".parse().unwrap())];
        let typed = TypedSpec::parse(&s).unwrap();
        let allocations = plan::allocate_node_prefixes(&typed, &["n1".into()], &[]).unwrap();
        let planned = PlannedSlice {
            typed,
            allocations,
            namespaces: vec!["shop".into()],
            gateways: plan::GatewayAddresses::default(),
            secondary_allocations: Vec::new(),
        };
        let configs = node_agent_configs(std::slice::from_ref(&planned), &nodes, &NodeDefaults::default()).unwrap();
        configs[0].validate().unwrap();
        assert_eq!(configs[0].uplink_kbps(), Some(40_000));
        assert_eq!(
            configs[0].slices[0].qos,
            Some(slice_api::qos::SliceQos {
                guaranteed_kbps: 10_000,
                ceiling_kbps: Some(30_000),
                priority: 2,
                gateway_port: 51820,
                uplink_kbps: 40_000,
            })
        );
        // Without an uplink rate in the cluster only the DSCP class applies.
        s.qos.as_mut().unwrap().uplink_kbps = None;
        let typed = TypedSpec::parse(&s).unwrap();
        assert!(typed.qos.is_none());
        assert_eq!(typed.dscp, Some(slice_api::qos::DscpClass::AF41));
    }

    #[test]
    fn node_configs_and_membership() {
        let s = spec("blue");
        let nodes = [
            ClusterNode::new("n2", "198.18.1.12".parse().unwrap()),
            ClusterNode::new("n1", "198.18.1.11".parse().unwrap()),
        ];
        let typed = TypedSpec::parse(&s).unwrap();
        let allocations = plan::allocate_node_prefixes(&typed, &["n1".into(), "n2".into()], &[]).unwrap();
        let planned = PlannedSlice {
            typed,
            allocations,
            namespaces: vec!["shop".into()],
            gateways: plan::GatewayAddresses::primary(Some("10.80.16.66".parse().unwrap())),
            secondary_allocations: Vec::new(),
        };
        let configs = node_agent_configs(std::slice::from_ref(&planned), &nodes, &NodeDefaults::default()).unwrap();
        assert_eq!(configs.iter().map(|c| c.node.as_str()).collect::<Vec<_>>(), ["n1", "n2"]);
        for c in &configs {
            c.validate().unwrap();
            // slicenet-system is in no slice; the gateway pods join through their own namespace.
            assert_eq!(c.slices[0].namespaces, ["shop"]);
            assert_eq!(c.slices[0].gateway_namespace.as_deref(), Some("slicenet-gateway"));
            assert_eq!(c.slices[0].remote_routes.len(), 1);
        }
        let cm = node_config_map(&configs[0]);
        assert_eq!(cm["metadata"]["name"], "slicenet-node-n1");
        let back: NodeAgentConfig = serde_json::from_str(cm["data"]["config.json"].as_str().unwrap()).unwrap();
        assert_eq!(back, configs[0]);
        let m = membership_config_map(std::slice::from_ref(&planned));
        assert_eq!(m["data"], json!({"blue": "shop"}));
        let n = nads(&planned);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"], "slicenet-worker");
        assert_eq!(n[0]["metadata"]["namespace"], "shop");
    }

    #[test]
    fn secrets_hold_base64() {
        let keys =
            KeyPair { private_key: "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".into(), public_key: "pub".into() };
        let k = key_secret("blue", 0, &keys);
        let back =
            serde_json::to_value(serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(k.clone()).unwrap());
        assert!(crate::worker::decide::is_applied(&k, &back.unwrap()));
        assert_eq!(k["metadata"]["name"], "slicenet-gw-blue-key");
        assert_eq!(k["data"]["publicKey"], b64("pub"));
        assert_eq!(key_secret("blue", 2, &keys)["metadata"]["name"], "slicenet-gw-blue-key-2");
        let other: Key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".parse().unwrap();
        let gateway = TypedGateway::parse(&spec("blue"));
        let c = gateway_config_secret("blue", &gateway, &[keys.private_key.parse().unwrap(), other], false);
        use base64::Engine as _;
        let file = |c: &Value, key: &str| {
            let text = base64::engine::general_purpose::STANDARD.decode(c["data"][key].as_str().unwrap()).unwrap();
            String::from_utf8(text).unwrap()
        };
        // One file per replica, named after its pod, each with its own key.
        let keys_of = |c: &Value| c["data"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys_of(&c), ["slicenet-gw-blue-0.conf", "slicenet-gw-blue-1.conf"]);
        assert!(file(&c, "slicenet-gw-blue-0.conf").starts_with("[Interface]\nPrivateKey = yAnz"));
        assert!(file(&c, "slicenet-gw-blue-1.conf").starts_with("[Interface]\nPrivateKey = xTIB"));
        // While the Deployment of earlier versions runs, its file too (ordinal 0's).
        let legacy = gateway_config_secret("blue", &gateway, &[keys.private_key.parse().unwrap()], true);
        assert_eq!(keys_of(&legacy), ["gateway.conf", "slicenet-gw-blue-0.conf"]);
        assert_eq!(file(&legacy, "gateway.conf"), file(&c, "slicenet-gw-blue-0.conf"));
        let back =
            serde_json::to_value(serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(c.clone()).unwrap());
        assert!(crate::worker::decide::is_applied(&c, &back.unwrap()));
    }

    /// Issue 13: the replicas' identity — names by ordinal (ordinal 0 keeps the single gateway's
    /// names), the StatefulSet's placement and rollout, a Service per replica selecting its pod.
    #[test]
    fn replicas_are_a_statefulset_with_a_service_and_key_per_ordinal() {
        assert_eq!(replica_key_secret_name("blue", 0), "slicenet-gw-blue-key");
        assert_eq!(replica_key_secret_name("blue", 1), "slicenet-gw-blue-key-1");
        assert_eq!(replica_service_name("blue", 0), "slicenet-gw-blue");
        assert_eq!(replica_service_name("blue", 3), "slicenet-gw-blue-3");
        assert_eq!(replica_pod_name("blue", 0), "slicenet-gw-blue-0");
        assert_eq!(replica_ordinal("blue", "slicenet-gw-blue-2"), Some(2));
        for other in ["slicenet-gw-blue-7d9f8c5b-x2x4z", "slicenet-gw-blue-02", "slicenet-gw-blue", "slicenet-gw-red-1"]
        {
            assert_eq!(replica_ordinal("blue", other), None, "{other}");
        }

        let mut s = spec("blue");
        s.gateway.replicas = 2;
        s.gateway.node_port = Some(31820);
        let set = gateway_statefulset(&s, &GatewayDefaults::default());
        let typed: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(set.clone()).unwrap();
        let back = serde_json::to_value(&typed).unwrap();
        assert!(crate::worker::decide::is_applied(&set, &back), "{back:#}");
        let spec_ = typed.spec;
        assert_eq!(spec_.replicas, Some(2));
        assert_eq!(spec_.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec_.update_strategy.unwrap().type_.as_deref(), Some("RollingUpdate"));
        let selector = spec_.selector.match_labels.unwrap();
        let template = spec_.template;
        let pod_labels = template.metadata.unwrap().labels.unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the selector takes its own pods");
        assert_eq!(selector.get(COMPONENT_LABEL).map(String::as_str), Some(GATEWAY_REPLICA));
        let pod = template.spec.unwrap();
        let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        let required = anti.required_during_scheduling_ignored_during_execution.unwrap();
        assert_eq!(required[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(required[0].label_selector.as_ref().unwrap().match_labels.as_ref(), Some(&selector));
        let container = &pod.containers[0];
        assert_eq!(
            container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
            Some("/healthz")
        );
        // Each pod reads the file named after it.
        let env = &container.env.as_ref().unwrap()[0];
        assert_eq!(env.name, POD_NAME_ENV);
        assert_eq!(env.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "metadata.name");
        let args = container.args.as_ref().unwrap();
        let at = args.iter().position(|a| a == "--config").unwrap();
        assert_eq!(args[at + 1], "/etc/slicenet/gateway/$(POD_NAME).conf");
        assert_eq!(pod.volumes.unwrap()[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("slicenet-gw-blue"));

        let svc1 = gateway_service(&s, 1).unwrap();
        assert_eq!(svc1["metadata"]["name"], "slicenet-gw-blue-1");
        assert_eq!(
            svc1["spec"]["selector"],
            json!({"slicenet.io/slice": "blue", "statefulset.kubernetes.io/pod-name": "slicenet-gw-blue-1"})
        );
        // A fixed nodePort is ordinal 0's; the others' are assigned.
        assert_eq!(gateway_service(&s, 0).unwrap()["spec"]["ports"][0]["nodePort"], 31820);
        assert!(svc1["spec"]["ports"][0].get("nodePort").is_none());
    }
}
