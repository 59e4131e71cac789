//! Names every component agrees on. DESIGN.md "Names" is the source; change both together.

/// API group of slicenet's custom resources.
pub const API_GROUP: &str = "slicenet.io";
/// Namespace of slicenet's own components in every cluster. Never a slice member.
pub const SYSTEM_NAMESPACE: &str = "slicenet-system";
/// Namespace of the slice gateways in every member cluster: each gateway pod joins the one
/// slice its annotation names (only the worker creates pods here), and the namespace is in no
/// slice's member list, so it is never claimed by several slices and sweeps no other pod in.
pub const GATEWAY_NAMESPACE: &str = "slicenet-gateway";
/// The hub namespace of the `SlicePeers` pages (the slices' peer lists). Each member
/// cluster's worker may `get` the pages of the slices it is a member of, by name, through the
/// Role `slicenet-peers-<cluster>` the hub keeps there for it.
pub const PEERS_NAMESPACE: &str = "slicenet-peers";
/// Prefix of the hub Role and RoleBinding in [`PEERS_NAMESPACE`] of each member cluster.
pub const PEERS_ROLE_PREFIX: &str = "slicenet-peers-";
/// The worker's ServiceAccount, in the member cluster and in its namespace on the hub.
pub const WORKER_SERVICE_ACCOUNT: &str = "slicenet-worker";
/// Namespace of the node agent in every member cluster: the one slicenet namespace whose Pod
/// Security level is `privileged` (host network, host paths, the agent's capabilities), so that
/// `slicenet-system` can be `restricted`.
pub const NODE_NAMESPACE: &str = "slicenet-node";
/// Each node agent's Lease in [`NODE_NAMESPACE`]: `slicenet-agent-<node>`, renewed every
/// [`AGENT_LEASE_RENEW_SECS`] with the agent's version and its node's CNI chain in annotations;
/// the worker reads them for the MemberCluster's status (`status.agents`).
pub const AGENT_LEASE_PREFIX: &str = "slicenet-agent-";
/// How long a node agent's Lease holds without renewal (`leaseDurationSeconds`).
pub const AGENT_LEASE_SECS: i32 = 40;
/// How often a node agent renews its Lease.
pub const AGENT_LEASE_RENEW_SECS: u64 = 10;
/// Annotation on a node agent's Lease: the slicenet version it runs.
pub const AGENT_VERSION_ANNOTATION: &str = "slicenet.io/version";
/// Annotation on a node agent's Lease: `chained`, or why the CNI configuration the node's
/// runtime uses does not chain slice-cni (absent when the agent does not check: Multus mode).
pub const AGENT_CNI_ANNOTATION: &str = "slicenet.io/cni";
/// The value of [`AGENT_CNI_ANNOTATION`] when the chain is in place.
pub const AGENT_CNI_CHAINED: &str = "chained";
/// The label on every node agent's Lease (value `slice-node`), which the worker lists by.
pub const AGENT_LEASE_LABEL: &str = "app.kubernetes.io/name";

/// slicenet's own namespaces: never slice members, never sent to the pod webhook.
pub const RESERVED_NAMESPACES: [&str; 3] = [SYSTEM_NAMESPACE, GATEWAY_NAMESPACE, NODE_NAMESPACE];
/// The member clusters' pod webhook's serving certificate: a `kubernetes.io/tls` Secret in
/// [`SYSTEM_NAMESPACE`] (`tls.crt`, `tls.key`, and `ca.crt` for the `caBundle`), mounted by the
/// webhook, renewed by the worker from [`WEBHOOK_CA_SECRET`].
pub const WEBHOOK_TLS_SECRET: &str = "slicenet-webhook-tls";
/// The hub's SliceConfig webhook's serving certificate (as [`WEBHOOK_TLS_SECRET`]), renewed by
/// the hub controller from [`HUB_WEBHOOK_CA_SECRET`].
pub const HUB_WEBHOOK_TLS_SECRET: &str = "slicenet-hub-webhook-tls";
/// The CA that `slicectl install worker` made for the pod webhook (an `Opaque` Secret in
/// [`SYSTEM_NAMESPACE`] under [`CA_CERT_KEY`] and [`CA_KEY_KEY`]), kept so that the serving
/// certificate can be renewed without changing the `caBundle`. Not printed when the user brings
/// the certificate (`--webhook-tls-dir`): then nothing is renewed.
pub const WEBHOOK_CA_SECRET: &str = "slicenet-webhook-ca";
/// The hub webhook's CA (as [`WEBHOOK_CA_SECRET`], printed by `slicectl install hub`).
pub const HUB_WEBHOOK_CA_SECRET: &str = "slicenet-hub-webhook-ca";
/// The CA certificate's key in a webhook CA Secret. Not `tls.crt`: the CA Secret must never be
/// mistaken for (or mounted as) a serving pair.
pub const CA_CERT_KEY: &str = "ca.crt";
/// The CA private key's key in a webhook CA Secret.
pub const CA_KEY_KEY: &str = "ca.key";
/// API version of slicenet's custom resources.
pub const API_VERSION: &str = "v1alpha1";
/// Namespace label that asks for a namespace to join a slice.
pub const SLICE_LABEL: &str = "slicenet.io/slice";
/// Pod annotation written by the webhook naming the pod's slice.
pub const SLICE_ANNOTATION: &str = "slicenet.io/slice";
/// Pod label or annotation (`"true"`) that opts a pod out of its namespace's slice.
pub const EXCLUDE_KEY: &str = "slicenet.io/exclude";
/// runtimeConfig capability under which containerd and CRI-O pass pod annotations.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";
/// Multus-style network status annotation.
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
/// Default name of the slice interface inside the pod.
pub const DEFAULT_SLICE_INTERFACE: &str = "slice0";
/// Default directory of node-state files.
pub const DEFAULT_STATE_DIR: &str = "/run/slicenet";
/// Default IPAM directory (one subdirectory per slice).
pub const DEFAULT_IPAM_DIR: &str = "/var/lib/slicenet/ipam";
/// Name of slice-cni's network-status directory, next to its IPAM dir.
pub const STATUS_DIR_NAME: &str = "network-status";
/// slice-cni's default network-status directory (next to [`DEFAULT_IPAM_DIR`]), where the node
/// agent reads the records it publishes onto pods.
pub const DEFAULT_STATUS_DIR: &str = "/var/lib/slicenet/network-status";
/// Default directory of named network namespaces (as `ip netns` uses).
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";
/// Default prefix of slice router namespace names: `slice-<slice>`.
pub const DEFAULT_ROUTER_NETNS_PREFIX: &str = "slice-";
/// IANA VXLAN port.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// Bytes VXLAN adds over IPv6 (outer IP 40 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD_V6: u32 = 70;

/// Checks that `name` can name a slice: an RFC 1123 label of at most 40 characters (the
/// router namespace and state file names are derived from it).
///
/// # Errors
/// A message saying what is wrong with the name.
pub fn validate_slice_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 40 {
        return Err(format!("slice name {name:?} must have 1 to 40 characters"));
    }
    let ok_chars = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = !name.starts_with('-') && !name.ends_with('-');
    if ok_chars && ends_ok {
        Ok(())
    } else {
        Err(format!(
            "slice name {name:?} must be lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// The slice DNS Service (in [`SYSTEM_NAMESPACE`]): the worker forwards `clusterset.local` and
/// `slice.local` from the cluster's CoreDNS to its cluster IP (`slice_api::corefile`).
pub const SLICE_DNS_SERVICE: &str = "slice-dns";
/// Where a cluster's CoreDNS and NodeLocal DNSCache keep their Corefiles.
pub const KUBE_SYSTEM_NAMESPACE: &str = "kube-system";
/// CoreDNS's ConfigMap (kubeadm, k3s, most distributions).
pub const COREDNS_CONFIG_MAP: &str = "coredns";
/// NodeLocal DNSCache's ConfigMap, when the cluster runs it.
pub const NODE_LOCAL_DNS_CONFIG_MAP: &str = "node-local-dns";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_dir_sits_next_to_the_ipam_dir() {
        let ipam = std::path::Path::new(DEFAULT_IPAM_DIR);
        assert_eq!(ipam.parent().unwrap().join(STATUS_DIR_NAME), std::path::Path::new(DEFAULT_STATUS_DIR));
    }

    #[test]
    fn slice_names() {
        assert!(validate_slice_name("blue-1").is_ok());
        for bad in ["", "-a", "a-", "Blue", "a/b", "a.b", &"x".repeat(41)] {
            assert!(validate_slice_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
