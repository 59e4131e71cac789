//! The node agent's requests in its member cluster.

use crate::names::SYSTEM_NAMESPACE;
use crate::rbac::Access;
use crate::rbac::Scope::{Cluster, Namespace, OwnNamespace};

/// The node agent (in `slicenet-node`): watches its node's configuration (a ConfigMap the worker
/// writes in `slicenet-system`) and writes the slice interface's network-status onto its pods, in any
/// namespace: it reads a pod (the annotation to merge into, its UID and node) and merge-patches
/// the annotation (`node_agent::network_status`).
pub const NODE_AGENT: &[Access] = &[
    Access::new("get", "", "configmaps", Namespace(SYSTEM_NAMESPACE)),
    Access::new("list", "", "configmaps", Namespace(SYSTEM_NAMESPACE)),
    Access::new("watch", "", "configmaps", Namespace(SYSTEM_NAMESPACE)),
    // Every pod by RBAC (which cannot name a node); the admission policy `slicenet-node-agent-pods`
    // (`slicectl install worker`) lets a patch through only for pods on the agent's own node (its
    // token's node) and only for the network-status annotation. Reads stay cluster-wide.
    Access::new("get", "", "pods", Cluster),
    Access::new("patch", "", "pods", Cluster),
    // Events about those pods (in the pods' namespaces): the slice interface recorded, or not.
    Access::new("create", "events.k8s.io", "events", Cluster),
    Access::new("patch", "events.k8s.io", "events", Cluster),
    // Its Lease `slicenet-agent-<node>` (server-side apply: `create` when new): liveness,
    // version and the node's CNI chain for the worker. Any Lease of the namespace by RBAC; the
    // admission policy `slicenet-node-agent-leases` keeps each agent to its own node's.
    Access::new("create", "coordination.k8s.io", "leases", OwnNamespace),
    Access::new("patch", "coordination.k8s.io", "leases", OwnNamespace),
];
