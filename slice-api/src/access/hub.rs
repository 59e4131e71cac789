//! The hub controller's requests on the hub cluster.

use crate::names::{HUB_WEBHOOK_CA_SECRET, HUB_WEBHOOK_TLS_SECRET, PEERS_NAMESPACE};
use crate::rbac::Access;
use crate::rbac::Scope::{Cluster, Namespace, OwnNamespace};

const G: &str = "slicenet.io";
const RBAC: &str = "rbac.authorization.k8s.io";
/// Where the hub keeps the slices' peer pages and each member's Role to read its slices' pages.
const PEERS: crate::rbac::Scope = Namespace(PEERS_NAMESPACE);

/// The hub controller: plans SliceConfigs into WorkerSlices in one namespace per member cluster.
pub const HUB: &[Access] = &[
    Access::new("list", G, "sliceconfigs", Cluster),
    Access::new("watch", G, "sliceconfigs", Cluster),
    Access::new("patch", G, "sliceconfigs", Cluster),
    Access::new("patch", G, "sliceconfigs", Cluster).sub("status"),
    Access::new("list", G, "memberclusters", Cluster),
    Access::new("watch", G, "memberclusters", Cluster),
    Access::new("patch", G, "memberclusters", Cluster),
    Access::new("patch", G, "memberclusters", Cluster).sub("status"),
    Access::new("list", G, "workerslices", Cluster),
    Access::new("watch", G, "workerslices", Cluster),
    Access::new("create", G, "workerslices", Cluster),
    Access::new("patch", G, "workerslices", Cluster),
    Access::new("delete", G, "workerslices", Cluster),
    // The slices' peer pages (the hub pages the peers unless `--inline-peers`), and per member
    // cluster a Role `slicenet-peers-<cluster>` granting `get` on the pages of its slices by
    // name, with its RoleBinding to the cluster's worker. `get` on the pages is never requested:
    // RBAC lets a Role (and its binding) grant only what its writer holds itself. Listed and
    // watched in both modes: a binding deleted by someone is made again, and an inline hub
    // deletes what paging left. A binding is never patched: one that binds something else is
    // deleted and created again (its `roleRef` cannot change).
    Access::new("get", G, "slicepeers", PEERS),
    Access::new("list", G, "slicepeers", PEERS),
    Access::new("watch", G, "slicepeers", PEERS),
    Access::new("create", G, "slicepeers", PEERS),
    Access::new("patch", G, "slicepeers", PEERS),
    Access::new("delete", G, "slicepeers", PEERS),
    Access::new("list", RBAC, "roles", PEERS),
    Access::new("watch", RBAC, "roles", PEERS),
    Access::new("create", RBAC, "roles", PEERS),
    Access::new("patch", RBAC, "roles", PEERS),
    Access::new("delete", RBAC, "roles", PEERS),
    Access::new("list", RBAC, "rolebindings", PEERS),
    Access::new("watch", RBAC, "rolebindings", PEERS),
    Access::new("create", RBAC, "rolebindings", PEERS),
    Access::new("delete", RBAC, "rolebindings", PEERS),
    Access::new("get", "", "namespaces", Cluster),
    // Namespaces by verb only: the admission policy `slicenet-hub-namespaces` (`slicectl install
    // hub`) keeps creation and deletion to `slicenet-cluster-*`.
    Access::new("create", "", "namespaces", Cluster),
    Access::new("delete", "", "namespaces", Cluster),
    // The hub webhook's serving certificate (`cert_rotation`): the CA Secret `slicectl install
    // hub` printed and the serving Secret are read; the serving Secret is replaced with the
    // resourceVersion read. By name: no other Secret of `slicenet-system` is readable.
    Access::new("get", "", "secrets", OwnNamespace).named(&[HUB_WEBHOOK_CA_SECRET, HUB_WEBHOOK_TLS_SECRET]),
    Access::new("update", "", "secrets", OwnNamespace).named(&[HUB_WEBHOOK_TLS_SECRET]),
    // Leader election: the `slicenet-hub` Lease in its own namespace (read, created once,
    // replaced with its resourceVersion to renew, take over or release).
    Access::new("get", "coordination.k8s.io", "leases", OwnNamespace),
    Access::new("create", "coordination.k8s.io", "leases", OwnNamespace),
    Access::new("update", "coordination.k8s.io", "leases", OwnNamespace),
    // Events: about SliceConfigs and MemberClusters (cluster-scoped, so in `default`) and
    // WorkerSlices (in every cluster's namespace); created once, repeats patch the series.
    Access::new("create", "events.k8s.io", "events", Cluster),
    Access::new("patch", "events.k8s.io", "events", Cluster),
];
