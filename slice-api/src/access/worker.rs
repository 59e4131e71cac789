//! The worker controller's requests: on the hub (its own cluster's namespace only) and in its
//! own member cluster.

use crate::hub_credential::SECRET as HUB_CREDENTIAL_SECRET;
use crate::names::{
    COREDNS_CONFIG_MAP, GATEWAY_NAMESPACE, KUBE_SYSTEM_NAMESPACE, NODE_LOCAL_DNS_CONFIG_MAP, SLICE_DNS_SERVICE,
    WEBHOOK_CA_SECRET, WEBHOOK_TLS_SECRET,
};
use crate::rbac::Access;
use crate::rbac::Scope::{Cluster, Granted, Namespace, OwnNamespace};

/// The gateways' namespace, where the worker runs each slice's gateway objects.
const GW: crate::rbac::Scope = Namespace(GATEWAY_NAMESPACE);

const G: &str = "slicenet.io";
/// The Multi-Cluster Services API group.
const MCS: &str = "multicluster.x-k8s.io";

/// On the hub, with credentials limited to `slicenet-cluster-<cluster>` (and its own
/// MemberCluster's status, for the heartbeat and gateway addresses).
pub const WORKER_HUB: &[Access] = &[
    Access::new("list", G, "workerslices", OwnNamespace),
    Access::new("watch", G, "workerslices", OwnNamespace),
    // The main resource for its finalizer only: the admission policy
    // `slicenet-worker-hub-workerslices` (`slicectl install hub`) refuses any other change there
    // (spec, labels, annotations, owners, other finalizers).
    Access::new("patch", G, "workerslices", OwnNamespace),
    Access::new("patch", G, "workerslices", OwnNamespace).sub("status"),
    // The `SlicePeers` pages of its slices (a hub that pages the peers), by name: the Role
    // `slicenet-peers-<cluster>` the hub keeps in `slicenet-peers` lists exactly the pages of
    // the slices the cluster is planned in, so a cluster that leaves a slice can no longer read
    // its pages (`slice_operator::hub`), and a member never writes them.
    Access::new("get", G, "slicepeers", Granted(crate::names::PEERS_NAMESPACE)),
    Access::new("get", G, "memberclusters", Cluster),
    Access::new("patch", G, "memberclusters", Cluster).sub("status"),
    // A new token for its own ServiceAccount, the only one in its namespace on the hub
    // (`worker::credential`).
    Access::new("create", "", "serviceaccounts", OwnNamespace).sub("token"),
    // Events about its WorkerSlices, in its namespace on the hub.
    Access::new("create", "events.k8s.io", "events", OwnNamespace),
    Access::new("patch", "events.k8s.io", "events", OwnNamespace),
];

/// In the member cluster: namespaces, nodes, the node configurations in `slicenet-system`, the
/// gateway and key objects in `slicenet-gateway`, NetworkAttachmentDefinitions in member
/// namespaces, and the multi-cluster services' objects (ServiceExports read, ServiceImports and
/// MCS EndpointSlices written).
pub const WORKER_CLUSTER: &[Access] = &[
    Access::new("list", "", "namespaces", Cluster),
    Access::new("watch", "", "namespaces", Cluster),
    // Any namespace by RBAC; the admission policy `slicenet-worker-namespaces` (`slicectl install
    // worker`) lets the patch change only the `slicenet.io/slice` label and the
    // `slicenet.io/labelled-by` annotation.
    Access::new("patch", "", "namespaces", Cluster),
    Access::new("list", "", "nodes", Cluster),
    Access::new("watch", "", "nodes", Cluster),
    // The node agents' Leases (liveness, version, CNI chain) for the MemberCluster's status.
    Access::new("list", "coordination.k8s.io", "leases", Namespace(crate::names::NODE_NAMESPACE)),
    // The key Secret is created once; the gateway configuration Secret is applied.
    Access::new("list", "", "secrets", GW),
    Access::new("create", "", "secrets", GW),
    Access::new("patch", "", "secrets", GW),
    Access::new("delete", "", "secrets", GW),
    // Applied (server-side apply): the API server checks `create` too when the object is new.
    Access::new("list", "", "configmaps", OwnNamespace),
    Access::new("create", "", "configmaps", OwnNamespace),
    Access::new("patch", "", "configmaps", OwnNamespace),
    Access::new("delete", "", "configmaps", OwnNamespace),
    Access::new("list", "", "services", GW),
    Access::new("create", "", "services", GW),
    Access::new("patch", "", "services", GW),
    Access::new("delete", "", "services", GW),
    // The gateway replicas (issue 13): a StatefulSet per slice, applied. The gateway Deployments
    // of earlier versions are only listed and deleted (replaced by the StatefulSets).
    Access::new("list", "apps", "statefulsets", GW),
    Access::new("create", "apps", "statefulsets", GW),
    Access::new("patch", "apps", "statefulsets", GW),
    Access::new("delete", "apps", "statefulsets", GW),
    Access::new("list", "apps", "deployments", GW),
    Access::new("delete", "apps", "deployments", GW),
    // Pods: the gateway pods (their slice address in network-status is the next hop of remote
    // routes; their pod IP serves the tunnels' metrics), and the running pods of each member
    // namespace, whose network-status entries give `connectedPods` and the pod directory of
    // MultiNetworkPolicy (`worker::policy`). Member namespaces are any namespaces, so listing
    // is cluster-wide; so is watching, since a pod that starts or changes labels anywhere on
    // the slice must reach every node's rules within seconds.
    Access::new("list", "", "pods", Cluster),
    Access::new("watch", "", "pods", Cluster),
    Access::new("list", "k8s.cni.cncf.io", "network-attachment-definitions", Cluster),
    // Any NAD by RBAC; the admission policy `slicenet-worker-network-attachment-definitions`
    // keeps writes and deletes to those labelled `app.kubernetes.io/managed-by: slicenet-worker`.
    Access::new("create", "k8s.cni.cncf.io", "network-attachment-definitions", Cluster),
    Access::new("patch", "k8s.cni.cncf.io", "network-attachment-definitions", Cluster),
    Access::new("delete", "k8s.cni.cncf.io", "network-attachment-definitions", Cluster),
    // Multi-cluster services (`worker::services`): every ServiceExport is read and gets its
    // conditions (`Valid`, `Ready`, `Conflict`); the Services and EndpointSlices of the
    // namespaces that export are read (their endpoints' pods are among the member pods listed
    // above); ServiceImports and MCS EndpointSlices are written into member namespaces (any
    // namespace, so cluster-wide) and listed by the worker's label to delete what is no longer
    // imported. EndpointSlices, ServiceExports and Services are watched: an endpoint turning
    // ready or unready, an export made or removed, or an exported Service's ports or type
    // changed (and the slice-dns Service's address) starts a pass.
    // (An apply that makes the object needs `create` as well as `patch`.)
    Access::new("list", MCS, "serviceexports", Cluster),
    Access::new("watch", MCS, "serviceexports", Cluster),
    Access::new("patch", MCS, "serviceexports", Cluster).sub("status"),
    Access::new("list", MCS, "serviceimports", Cluster),
    Access::new("create", MCS, "serviceimports", Cluster),
    Access::new("patch", MCS, "serviceimports", Cluster),
    Access::new("patch", MCS, "serviceimports", Cluster).sub("status"),
    Access::new("delete", MCS, "serviceimports", Cluster),
    Access::new("list", "", "services", Cluster),
    Access::new("watch", "", "services", Cluster),
    Access::new("list", "discovery.k8s.io", "endpointslices", Cluster),
    Access::new("watch", "discovery.k8s.io", "endpointslices", Cluster),
    Access::new("create", "discovery.k8s.io", "endpointslices", Cluster),
    Access::new("patch", "discovery.k8s.io", "endpointslices", Cluster),
    Access::new("delete", "discovery.k8s.io", "endpointslices", Cluster),
    // Policy on the slice (`worker::policy`): MultiNetworkPolicies read (any member namespace)
    // and watched; the NetworkPolicies of namespace isolation written into member namespaces
    // and listed by the worker's label to delete only those it wrote.
    Access::new("list", "k8s.cni.cncf.io", "multi-networkpolicies", Cluster),
    Access::new("watch", "k8s.cni.cncf.io", "multi-networkpolicies", Cluster),
    Access::new("list", "networking.k8s.io", "networkpolicies", Cluster),
    Access::new("create", "networking.k8s.io", "networkpolicies", Cluster),
    Access::new("patch", "networking.k8s.io", "networkpolicies", Cluster),
    Access::new("delete", "networking.k8s.io", "networkpolicies", Cluster),
    // Slice DNS: the slice-dns Service's address, read by name, and the cluster's Corefiles
    // (CoreDNS's, NodeLocal DNSCache's), read and patched by name to add and remove the
    // marked stanza that forwards the slice zones to it (`slice_api::corefile`).
    Access::new("get", "", "services", OwnNamespace).named(&[SLICE_DNS_SERVICE]),
    Access::new("get", "", "configmaps", Namespace(KUBE_SYSTEM_NAMESPACE))
        .named(&[COREDNS_CONFIG_MAP, NODE_LOCAL_DNS_CONFIG_MAP]),
    Access::new("patch", "", "configmaps", Namespace(KUBE_SYSTEM_NAMESPACE))
        .named(&[COREDNS_CONFIG_MAP, NODE_LOCAL_DNS_CONFIG_MAP]),
    // Secrets of its own namespace, by name (no other Secret of `slicenet-system` is readable):
    // the pod webhook's serving certificate (`cert_rotation`: the CA Secret `slicectl install
    // worker` printed is read, the serving Secret read and replaced with the resourceVersion
    // read) and its hub token (`worker::credential`: read from, and renewed into,
    // `slicenet-hub-kubeconfig`).
    Access::new("get", "", "secrets", OwnNamespace).named(&[
        WEBHOOK_CA_SECRET,
        WEBHOOK_TLS_SECRET,
        HUB_CREDENTIAL_SECRET,
    ]),
    Access::new("update", "", "secrets", OwnNamespace).named(&[WEBHOOK_TLS_SECRET, HUB_CREDENTIAL_SECRET]),
    // Leader election: the `slicenet-worker` Lease in its own namespace.
    Access::new("get", "coordination.k8s.io", "leases", OwnNamespace),
    Access::new("create", "coordination.k8s.io", "leases", OwnNamespace),
    Access::new("update", "coordination.k8s.io", "leases", OwnNamespace),
    // Events about Namespaces (cluster-scoped, so in `default`) and, for failed writes, the
    // objects it writes (in `slicenet-system` and member namespaces).
    Access::new("create", "events.k8s.io", "events", Cluster),
    Access::new("patch", "events.k8s.io", "events", Cluster),
];
