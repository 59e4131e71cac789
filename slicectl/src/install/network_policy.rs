//! The NetworkPolicies of `slicenet-system` and `slicenet-gateway`: ingress is denied to every
//! pod there except what each component serves to someone else.
//!
//! What NetworkPolicy does and does not cover, and why these rules are enough:
//! - Traffic from the node a pod runs on is always allowed, whatever the policies say: the
//!   kubelet's probes need no rule.
//! - Host-network pods (the node agent) are not selected by any policy.
//! - The API server calling a webhook is usually not a pod (a static pod on the host network or
//!   a managed control plane outside the cluster), so no pod or namespace selector can name it:
//!   the webhook port is open to every source, and TLS plus the AdmissionReview protocol guard it.
//! - The gateways' WireGuard port differs per slice (`WorkerSlice.spec.gateway.port`) and comes
//!   through a NodePort, LoadBalancer or host port from anywhere: every UDP port of the gateway
//!   pods is open to every source (WireGuard answers nothing to a packet without a valid key).
//! - The gateways' metrics port is read by the worker (tunnel state) and by Prometheus in a
//!   namespace labelled [`METRICS_SCRAPER_LABEL`]`=true`.
//! - The slice interface (`slice0`) of a gateway is not the primary CNI's: its traffic goes
//!   through the slice router, never through these policies.
//!
//! Policies add up: each component's own policy opens its ports on top of the default deny.
//! The default deny is the same object in `install hub` and `install worker`, so both can be
//! applied to one cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use slice_api::crd::{GATEWAY_NAMESPACE, SYSTEM_NAMESPACE};
use slice_operator::worker::objects::{GATEWAY_METRICS_PORT, GATEWAY_NAME, NAME_LABEL};

use super::WORKER_NAME;
use super::objects::meta;

/// The default deny's name.
pub const DEFAULT_DENY: &str = "slicenet-default-deny-ingress";
/// The gateways' policy's name.
pub const GATEWAYS: &str = "slicenet-gateways";
/// Label of a namespace whose pods (Prometheus) may read the gateways' metrics, with value
/// `"true"`.
pub const METRICS_SCRAPER_LABEL: &str = "slicenet.io/metrics-scraper";

/// Printed above the default deny.
pub const DEFAULT_DENY_NOTE: &[&str] = &[
    "No pod in this namespace accepts connections but those the policies below allow. Kubelet",
    "probes come from the pod's own node, which NetworkPolicy always allows; the host-network",
    "node agent is not subject to NetworkPolicy.",
];
/// Printed above a webhook's policy.
pub const WEBHOOK_NOTE: &[&str] = &[
    "The API server calls the webhook from the control plane's host network or from outside the",
    "cluster, which no selector names: the webhook port is open to every source (TLS, and the",
    "AdmissionReview protocol, guard it).",
];
/// Printed above the gateways' policy.
pub const GATEWAYS_NOTE: &[&str] = &[
    "Gateways: WireGuard (UDP, one port per slice) from anywhere; metrics (TCP 9586) from the worker",
    "and from pods of namespaces labelled slicenet.io/metrics-scraper=true (label your Prometheus",
    "namespace so).",
];

fn selects(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>()),
        match_expressions: None,
    }
}

fn port(protocol: &str, port: Option<u16>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: port.map(|p| IntOrString::Int(i32::from(p))),
        end_port: None,
    }
}

fn ingress_policy(
    name: &str,
    namespace: &str,
    pods: LabelSelector,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(name, Some(namespace), name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: None,
        }),
    }
}

/// Every pod of `namespace` (slicenet-system or slicenet-gateway), no ingress.
#[must_use]
pub fn default_deny(namespace: &str) -> NetworkPolicy {
    ingress_policy(DEFAULT_DENY, namespace, LabelSelector::default(), Vec::new())
}

/// Webhook Deployment `name`'s pods: TCP `port` from every source.
#[must_use]
pub fn webhook(name: &str, port_number: u16) -> NetworkPolicy {
    let rule = NetworkPolicyIngressRule { from: None, ports: Some(vec![port("TCP", Some(port_number))]) };
    ingress_policy(name, SYSTEM_NAMESPACE, selects(&[(super::objects::NAME_LABEL, name)]), vec![rule])
}

/// The gateway pods (in slicenet-gateway): every UDP port from every source; the metrics port
/// from the worker (in slicenet-system) and from namespaces labelled [`METRICS_SCRAPER_LABEL`].
#[must_use]
pub fn gateways() -> NetworkPolicy {
    let wireguard = NetworkPolicyIngressRule { from: None, ports: Some(vec![port("UDP", None)]) };
    let metrics = NetworkPolicyIngressRule {
        from: Some(vec![
            NetworkPolicyPeer {
                namespace_selector: Some(selects(&[("kubernetes.io/metadata.name", SYSTEM_NAMESPACE)])),
                pod_selector: Some(selects(&[(super::objects::NAME_LABEL, WORKER_NAME)])),
                ..NetworkPolicyPeer::default()
            },
            NetworkPolicyPeer {
                namespace_selector: Some(selects(&[(METRICS_SCRAPER_LABEL, "true")])),
                ..NetworkPolicyPeer::default()
            },
        ]),
        ports: Some(vec![port("TCP", Some(GATEWAY_METRICS_PORT))]),
    };
    ingress_policy(GATEWAYS, GATEWAY_NAMESPACE, selects(&[(NAME_LABEL, GATEWAY_NAME)]), vec![wireguard, metrics])
}
