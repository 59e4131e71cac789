//! The Deployments, the DaemonSet and the PodDisruptionBudgets that run slicenet's binaries,
//! with what production checks ask of each container: CPU and memory requests and limits
//! (measured in the lab, see `docs/benchmarks.md`, section 8), probes on every long-running process, the
//! runtime's default seccomp profile, a read-only root filesystem, and no user, capability or
//! privilege beyond what the component uses.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, Deployment, DeploymentSpec, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource,
    ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use slice_api::crd::SYSTEM_NAMESPACE;
#[cfg(doc)]
use slice_api::names::DEFAULT_IPAM_DIR;
use slice_api::names::{DEFAULT_STATE_DIR, EXCLUDE_KEY};

use super::objects::{labels, meta, selector};
use super::{HUB_KUBECONFIG_SECRET, HUB_NAME, NODE_AGENT_NAME, WORKER_NAME};
use slice_api::hub_credential::{KUBECONFIG_KEY as HUB_KUBECONFIG_KEY, MOUNT_DIR as HUB_KUBECONFIG_DIR};

/// Where the image keeps the binaries.
const BIN: &str = "/usr/local/bin";
/// slicenet's persistent host dir; slice-cni's IPAM store ([`DEFAULT_IPAM_DIR`]) is inside it.
pub const VAR_LIB_DIR: &str = "/var/lib/slicenet";
/// The image's unprivileged user and group (see `deploy/Dockerfile`).
pub const NON_ROOT_ID: i64 = 65532;
/// Replicas of the hub and worker controllers (one leads through its Lease, one stands by)
/// and of the webhooks.
pub const REPLICAS: i32 = 2;
/// The port of the controllers' `/healthz` and `/readyz` (`--health-addr`).
pub const CONTROLLER_HEALTH_PORT: u16 = 8081;
/// The node agent's probe port, on the node's own addresses (host network): one that no
/// Kubernetes component or common node agent listens on.
pub const NODE_AGENT_HEALTH_PORT: u16 = 9543;
/// The name of the probe port in every container that has one.
pub const HEALTH_PORT_NAME: &str = "health";

/// Comment printed above the node agent DaemonSet.
pub const NODE_AGENT_COMMENT: &[&str] = &[
    "The node agent runs on every node, in the host's network namespace: it creates the slice",
    "router namespaces under /run/netns (mounted Bidirectional so the mounts it makes are seen by",
    "the host and by the container runtime), VXLAN devices, routes and sysctls in the router",
    "namespaces, and writes the node-state files slice-cni reads.",
    "",
    "node-agent: privileged, because the API server accepts Bidirectional mount propagation only",
    "for privileged containers, and a privileged container is also the only kind whose /proc/sys is",
    "writable (the router namespaces' ip_forward and rp_filter). What the process itself uses, as",
    "proven by the_agent_needs_only_net_admin_and_sys_admin in slice-operator/tests/node_agent.rs",
    "(the real agent, run with only these, does its whole job, and fails without either):",
    "  CAP_NET_ADMIN  netlink: VXLAN, links, addresses, routes, neighbours, FDB; router sysctls",
    "  CAP_SYS_ADMIN  unshare(CLONE_NEWNET), setns into router namespaces, the bind mounts that",
    "                 name them under /run/netns, making /run/netns a shared mount",
    "No other capability (no NET_RAW, SYS_PTRACE, DAC_OVERRIDE): see docs/security.md.",
    "It is the only pod of slicenet-node, the namespace whose Pod Security level allows this;",
    "slicenet-system (hub, worker, webhooks) is restricted.",
    "",
    "install-cni (init): root without any capability, no privilege escalation, read-only root",
    "filesystem; it copies slice-cni into /opt/cni/bin and writes 00-slicenet.conflist chaining",
    "it after the cluster's CNI, both root-owned host directories that root may write as owner.",
];

/// CPU and memory of one container: what the scheduler reserves (requests) and the most it
/// may use (limits). The figures and how they were measured are in `docs/benchmarks.md`, section 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub cpu_request: &'static str,
    pub cpu_limit: &'static str,
    pub memory_request: &'static str,
    pub memory_limit: &'static str,
}

impl Budget {
    /// The container's `resources`.
    #[must_use]
    pub fn requirements(&self) -> ResourceRequirements {
        let pair = |cpu: &str, memory: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.to_owned())),
                ("memory".to_owned(), Quantity(memory.to_owned())),
            ])
        };
        ResourceRequirements {
            requests: Some(pair(self.cpu_request, self.memory_request)),
            limits: Some(pair(self.cpu_limit, self.memory_limit)),
            ..ResourceRequirements::default()
        }
    }
}

// The budgets below come from docs/benchmarks.md, section 8 (peak VmHWM and CPU time of each
// process in the lab); each comment gives the measured figure and the headroom.

/// `slice-operator hub`: 11 MiB peak over the 17 mock-API scenarios; its watch caches grow with
/// the SliceConfigs, MemberClusters and WorkerSlices, so the limit leaves 20× for large hubs.
pub const HUB_BUDGET: Budget =
    Budget { cpu_request: "20m", cpu_limit: "500m", memory_request: "32Mi", memory_limit: "256Mi" };
/// `slice-operator worker`: 14 MiB peak over the 26 mock-API scenarios; it caches every Node and
/// Namespace of its cluster, so the limit leaves 18× for large clusters.
pub const WORKER_BUDGET: Budget =
    Budget { cpu_request: "20m", cpu_limit: "500m", memory_request: "32Mi", memory_limit: "256Mi" };
/// `slice-operator node-agent`: 10 MiB peak and 0.08 CPU s over a 27 s three-cluster lab run
/// (release build); request 3×, limit 13× (the API client of `--kube` is not in that figure).
pub const NODE_AGENT_BUDGET: Budget =
    Budget { cpu_request: "10m", cpu_limit: "250m", memory_request: "32Mi", memory_limit: "128Mi" };
/// `slicectl cni-install` (the node agent's init container): 14 MiB peak copying the release
/// plugin (73 MiB before it streamed the copy); limit 4.5×.
pub const INSTALL_CNI_BUDGET: Budget =
    Budget { cpu_request: "10m", cpu_limit: "200m", memory_request: "16Mi", memory_limit: "64Mi" };
/// `slice-webhooks`: 21 MiB peak (debug build); 0.19 CPU ms per request (client and server
/// together) at 1,000 requests/s, so 0.2 cores at that rate: the limit leaves 2.5×.
pub const WEBHOOK_BUDGET: Budget =
    Budget { cpu_request: "20m", cpu_limit: "500m", memory_request: "32Mi", memory_limit: "128Mi" };

/// An environment variable with a value.
pub fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.to_owned()), value_from: None }
}

/// An environment variable from a field of the pod (downward API).
pub fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field_path.to_owned(), api_version: None }),
            ..EnvVarSource::default()
        }),
    }
}

/// The container runtime's default seccomp profile.
pub fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }
}

/// The security context of an unprivileged component: not root, no privilege escalation, no
/// capabilities, read-only root filesystem, the runtime's seccomp profile.
pub fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

/// A probe: `GET path` on the container's port `port_name` over `scheme`. Generous timeouts:
/// a probe that times out on a busy node restarts a healthy process.
pub fn http_probe(path: &str, port_name: &str, scheme: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port_name.to_owned()),
            scheme: Some(scheme.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// Liveness on `/healthz` and readiness on `/readyz` at the container's [`HEALTH_PORT_NAME`]
/// port (plain HTTP).
fn health_probes(c: &mut Container) {
    c.liveness_probe = Some(http_probe("/healthz", HEALTH_PORT_NAME, "HTTP", 10));
    c.readiness_probe = Some(http_probe("/readyz", HEALTH_PORT_NAME, "HTTP", 5));
}

/// A named TCP container port.
pub fn tcp_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// The pod template's labels, with the opt-out annotation: the gateways make
/// `slicenet-system` a member of their slices, and slicenet's other pods there must not join
/// one (slice-cni honours the annotation before it looks at namespace membership).
fn template_meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        labels: Some(labels(name)),
        annotations: Some(BTreeMap::from([(EXCLUDE_KEY.to_owned(), "true".to_owned())])),
        ..ObjectMeta::default()
    }
}

/// A Deployment of [`REPLICAS`] replicas of `name` in slicenet-system running `container` as
/// ServiceAccount `name`, not root, spread over nodes where it can be.
pub fn deployment(name: &str, container: Container, volumes: Vec<Volume>) -> Deployment {
    let spread = PodAntiAffinity {
        preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: PodAffinityTerm {
                label_selector: Some(LabelSelector { match_labels: Some(selector(name)), match_expressions: None }),
                topology_key: "kubernetes.io/hostname".to_owned(),
                ..PodAffinityTerm::default()
            },
        }]),
        ..PodAntiAffinity::default()
    };
    Deployment {
        metadata: meta(name, Some(SYSTEM_NAMESPACE), name),
        spec: DeploymentSpec {
            replicas: Some(REPLICAS),
            selector: LabelSelector { match_labels: Some(selector(name)), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(template_meta(name)),
                spec: Some(PodSpec {
                    service_account_name: Some(name.to_owned()),
                    // The controllers talk to the API; a component that does not turns it off.
                    automount_service_account_token: Some(true),
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    affinity: Some(Affinity { pod_anti_affinity: Some(spread), ..Affinity::default() }),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(NON_ROOT_ID),
                        run_as_group: Some(NON_ROOT_ID),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// A PodDisruptionBudget keeping one pod of Deployment `name` up through voluntary disruptions
/// (node drains): with [`REPLICAS`] replicas, one may go at a time.
pub fn disruption_budget(name: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(name, Some(SYSTEM_NAMESPACE), name),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector(name)), match_expressions: None }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

fn controller(name: &str, image: &str, args: &[&str], mut env_vars: Vec<EnvVar>, budget: Budget) -> Container {
    // The Lease names the replica holding it (POD_NAME) in the pod's namespace (POD_NAMESPACE).
    env_vars.insert(0, env_from_field("POD_NAME", "metadata.name"));
    env_vars.insert(1, env_from_field("POD_NAMESPACE", "metadata.namespace"));
    env_vars.push(env("RUST_LOG", "info"));
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.extend(["--health-addr".to_owned(), format!("[::]:{CONTROLLER_HEALTH_PORT}")]);
    let mut c = Container {
        name: name.trim_start_matches("slicenet-").to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![format!("{BIN}/slice-operator")]),
        args: Some(args),
        env: Some(env_vars),
        ports: Some(vec![tcp_port(HEALTH_PORT_NAME, CONTROLLER_HEALTH_PORT)]),
        resources: Some(budget.requirements()),
        security_context: Some(restricted()),
        ..Container::default()
    };
    health_probes(&mut c);
    c
}

/// `slice-operator hub`.
pub fn hub_deployment(image: &str) -> Deployment {
    deployment(HUB_NAME, controller(HUB_NAME, image, &["hub"], Vec::new(), HUB_BUDGET), Vec::new())
}

/// `slice-operator worker` with the hub kubeconfig mounted from its Secret.
pub fn worker_deployment(image: &str, cluster: &str) -> Deployment {
    // The gateway pods the worker starts run the same image (it has slice-gateway on its PATH).
    let mut c = controller(
        WORKER_NAME,
        image,
        &["worker", "--gateway-image", image],
        vec![
            env("SLICENET_CLUSTER", cluster),
            env("SLICENET_HUB_KUBECONFIG", &format!("{HUB_KUBECONFIG_DIR}/{HUB_KUBECONFIG_KEY}")),
        ],
        WORKER_BUDGET,
    );
    c.volume_mounts = Some(vec![VolumeMount {
        name: "hub-kubeconfig".to_owned(),
        mount_path: HUB_KUBECONFIG_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }]);
    let volume = Volume {
        name: "hub-kubeconfig".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(HUB_KUBECONFIG_SECRET.to_owned()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    // The restricted container runs as 65532; let it read the 0440 Secret files.
    let mut d = deployment(WORKER_NAME, c, vec![volume]);
    if let Some(pod) = d.spec.template.spec.as_mut() {
        pod.security_context.get_or_insert_with(PodSecurityContext::default).fs_group = Some(NON_ROOT_ID);
    }
    d
}

/// A host directory volume, created when missing.
fn host_dir(name: &str, path: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource { path: path.to_owned(), type_: Some("DirectoryOrCreate".to_owned()) }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, propagation: Option<&str>) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        mount_propagation: propagation.map(str::to_owned),
        ..VolumeMount::default()
    }
}

/// The node agent on every node, with the slice-cni install as its init container. See
/// [`NODE_AGENT_COMMENT`] for the privileges of each.
pub fn node_agent_daemonset(image: &str) -> DaemonSet {
    let install_cni = Container {
        name: "install-cni".to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![format!("{BIN}/slicectl")]),
        args: Some(
            [
                "cni-install",
                "--plugin",
                &format!("{BIN}/slice-cni"),
                "--bin-dir",
                "/host/opt/cni/bin",
                "--conf-dir",
                "/host/etc/cni/net.d",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        volume_mounts: Some(vec![
            mount("cni-bin", "/host/opt/cni/bin", None),
            mount("cni-conf", "/host/etc/cni/net.d", None),
        ]),
        resources: Some(INSTALL_CNI_BUDGET.requirements()),
        // Root, to write the root-owned host directories as their owner; no capability at
        // all (cni_install_needs_no_capability in slicectl/tests/install.rs runs it so).
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            ..restricted()
        }),
        ..Container::default()
    };
    let mut agent = Container {
        name: "node-agent".to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![format!("{BIN}/slice-operator")]),
        // --kube: the configuration comes from the ConfigMap the worker writes for this node.
        args: Some(vec![
            "node-agent".to_owned(),
            "--kube".to_owned(),
            "--health-addr".to_owned(),
            format!("[::]:{NODE_AGENT_HEALTH_PORT}"),
            // Read-only: the agent reports on its Lease whether the node's runtime chains
            // slice-cni (the init container wrote the chain).
            "--cni-conf-dir".to_owned(),
            "/host/etc/cni/net.d".to_owned(),
            "--cni-bin-dir".to_owned(),
            "/host/opt/cni/bin".to_owned(),
        ]),
        env: Some(vec![
            env_from_field("NODE_NAME", "spec.nodeName"),
            env_from_field("POD_NAMESPACE", "metadata.namespace"),
            env("RUST_LOG", "info"),
        ]),
        ports: Some(vec![tcp_port(HEALTH_PORT_NAME, NODE_AGENT_HEALTH_PORT)]),
        resources: Some(NODE_AGENT_BUDGET.requirements()),
        // Root as well as privileged: the image's default user is 65532, and a non-root process
        // gets no effective capabilities from `privileged`. Privileged for the two reasons of
        // NODE_AGENT_COMMENT; the root filesystem stays read-only (it writes only to the host
        // directories below).
        security_context: Some(SecurityContext {
            privileged: Some(true),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("netns", "/run/netns", Some("Bidirectional")),
            mount("state", DEFAULT_STATE_DIR, None),
            mount("var-lib", VAR_LIB_DIR, None),
            VolumeMount { read_only: Some(true), ..mount("cni-bin", "/host/opt/cni/bin", None) },
            VolumeMount { read_only: Some(true), ..mount("cni-conf", "/host/etc/cni/net.d", None) },
        ]),
        ..Container::default()
    };
    health_probes(&mut agent);
    DaemonSet {
        metadata: meta(NODE_AGENT_NAME, Some(slice_api::names::NODE_NAMESPACE), NODE_AGENT_NAME),
        spec: DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(selector(NODE_AGENT_NAME)), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(NODE_AGENT_NAME)), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(NODE_AGENT_NAME.to_owned()),
                    // The agent watches its ConfigMap and patches pods' network-status.
                    automount_service_account_token: Some(true),
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".to_owned()),
                    priority_class_name: Some("system-node-critical".to_owned()),
                    // Every node, tainted or not: a pod there may join a slice.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".to_owned()),
                        ..Toleration::default()
                    }]),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    init_containers: Some(vec![install_cni]),
                    containers: vec![agent],
                    volumes: Some(vec![
                        host_dir("netns", "/run/netns"),
                        host_dir("state", DEFAULT_STATE_DIR),
                        host_dir("var-lib", VAR_LIB_DIR),
                        host_dir("cni-bin", "/opt/cni/bin"),
                        host_dir("cni-conf", "/etc/cni/net.d"),
                    ]),
                    ..PodSpec::default()
                }),
            },
            // One node at a time, the old agent gone before the new one starts (maxSurge 0: two
            // agents must never reconcile one node's routers at once). A restart does not touch
            // the data path — the agent adopts the routers it finds (e2e/tests/failover.rs) —
            // so every slice keeps flowing through a rolling update (issue 13).
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    max_surge: Some(IntOrString::Int(0)),
                }),
            }),
            ..DaemonSetSpec::default()
        },
        status: None,
    }
}
