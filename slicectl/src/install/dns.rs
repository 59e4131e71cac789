//! slice-dns in a member cluster (`slicectl install worker`): its ServiceAccount with read-only
//! access to ServiceImports and EndpointSlices (exactly [`slice_dns::cluster::ACCESS`]: two
//! cluster-wide `list`s), a Deployment of two replicas running `slice-dns --kube`, the
//! `slicenet-system/slice-dns` Service the worker's Corefile stanza forwards to, its
//! PodDisruptionBudget and the NetworkPolicy that opens its DNS port.
//!
//! The container listens on [`DNS_PORT`] (5353), not 53: binding a port below 1024 would need
//! `NET_BIND_SERVICE`, and slicenet-system's pods have no capability at all; the Service maps
//! port 53 to it.

use anyhow::Result;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use slice_api::crd::SYSTEM_NAMESPACE;

use super::objects::{Component, component_rbac, meta, selector};
use super::workloads::{self, Budget, CONTROLLER_HEALTH_PORT, HEALTH_PORT_NAME};
use crate::manifest::Manifest;

/// The ServiceAccount, Deployment, Service and policies: the Service's name is the one the
/// worker looks up ([`slice_api::names::SLICE_DNS_SERVICE`]).
pub const NAME: &str = slice_api::names::SLICE_DNS_SERVICE;
/// Its ClusterRole (cluster-scoped names are global, hence the prefix).
pub const CLUSTER_ROLE: &str = "slicenet-slice-dns";
/// The container's DNS port, UDP and TCP.
pub const DNS_PORT: u16 = 5353;
/// `slice-dns --kube`: not measured in `docs/benchmarks.md` section 8 yet. Its snapshot holds
/// every name of the cluster's imports (a few hundred bytes per endpoint), and a list every
/// second costs little CPU; the limit leaves room for clusters with thousands of endpoints.
pub const BUDGET: Budget =
    Budget { cpu_request: "10m", cpu_limit: "500m", memory_request: "32Mi", memory_limit: "128Mi" };

/// Printed above the NetworkPolicy.
pub const POLICY_NOTE: &[&str] = &[
    "slice-dns: DNS (UDP and TCP 5353, the Service's port 53) from every source: CoreDNS pods and",
    "NodeLocal DNSCache on the host network of any node forward clusterset.local and slice.local here.",
];

fn port(name: &str, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(DNS_PORT),
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    }
}

fn container(image: &str) -> Container {
    let listen = format!("0.0.0.0:{DNS_PORT}");
    let health = format!("[::]:{CONTROLLER_HEALTH_PORT}");
    Container {
        name: NAME.to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec!["/usr/local/bin/slice-dns".to_owned()]),
        args: Some(["--kube", "--listen", &listen, "--health-addr", &health].map(str::to_owned).to_vec()),
        env: Some(vec![workloads::env("RUST_LOG", "info")]),
        ports: Some(vec![
            port("dns", "UDP"),
            port("dns-tcp", "TCP"),
            workloads::tcp_port(HEALTH_PORT_NAME, CONTROLLER_HEALTH_PORT),
        ]),
        resources: Some(BUDGET.requirements()),
        security_context: Some(workloads::restricted()),
        liveness_probe: Some(workloads::http_probe("/healthz", HEALTH_PORT_NAME, "HTTP", 10)),
        readiness_probe: Some(workloads::http_probe("/readyz", HEALTH_PORT_NAME, "HTTP", 5)),
        ..Container::default()
    }
}

fn service() -> Service {
    let port = |name: &str, protocol: &str| ServicePort {
        name: Some(name.to_owned()),
        port: 53,
        protocol: Some(protocol.to_owned()),
        target_port: Some(IntOrString::String(name.to_owned())),
        ..ServicePort::default()
    };
    Service {
        metadata: meta(NAME, Some(SYSTEM_NAMESPACE), NAME),
        spec: Some(ServiceSpec {
            selector: Some(selector(NAME)),
            ports: Some(vec![port("dns", "UDP"), port("dns-tcp", "TCP")]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn policy() -> NetworkPolicy {
    let port = |protocol: &str| NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(i32::from(DNS_PORT))),
        end_port: None,
    };
    NetworkPolicy {
        metadata: meta(NAME, Some(SYSTEM_NAMESPACE), NAME),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector(NAME)), match_expressions: None }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule { from: None, ports: Some(vec![port("UDP"), port("TCP")]) }]),
            egress: None,
        }),
    }
}

/// Every object of slice-dns in a member cluster.
///
/// # Errors
/// When an object cannot be serialised.
pub fn manifest(image: &str) -> Result<Manifest> {
    let mut m = Manifest::new();
    let component = Component { name: NAME, namespace: SYSTEM_NAMESPACE, access: slice_dns::cluster::ACCESS };
    m.extend(component_rbac(&component, CLUSTER_ROLE, None)?);
    m.push(&workloads::deployment(NAME, container(image), Vec::new()))?;
    m.push(&workloads::disruption_budget(NAME))?;
    m.push(&service())?;
    m.push_commented(POLICY_NOTE, &policy())?;
    Ok(m)
}
