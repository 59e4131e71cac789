//! The Deployments and the DaemonSet that run slicenet's binaries.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use slice_api::crd::SYSTEM_NAMESPACE;
#[cfg(doc)]
use slice_api::names::DEFAULT_IPAM_DIR;
use slice_api::names::DEFAULT_STATE_DIR;

use super::objects::{labels, meta, selector};
use super::{HUB_KUBECONFIG_KEY, HUB_KUBECONFIG_SECRET, HUB_NAME, NODE_AGENT_NAME, WORKER_NAME};

/// Where the image keeps the binaries.
const BIN: &str = "/usr/local/bin";
/// slicenet's persistent host dir; slice-cni's IPAM store ([`DEFAULT_IPAM_DIR`]) is inside it.
pub const VAR_LIB_DIR: &str = "/var/lib/slicenet";
/// Where the worker finds its hub kubeconfig.
const HUB_KUBECONFIG_DIR: &str = "/etc/slicenet/hub";

/// Comment printed above the node agent DaemonSet.
pub const NODE_AGENT_COMMENT: &[&str] = &[
    "The node agent runs on every node, in the host's network namespace and privileged: it creates",
    "the slice router namespaces under /run/netns (mounted Bidirectional so the mounts it makes are",
    "seen by the host and by the container runtime), VXLAN devices, routes and nftables rules, and",
    "writes the node-state files slice-cni reads. Its init container installs slice-cni and chains",
    "it after the cluster's CNI (/etc/cni/net.d/00-slicenet.conflist).",
];

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

/// The security context of an unprivileged controller: not root, no privilege escalation, no
/// capabilities, read-only root filesystem.
pub fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
        ..SecurityContext::default()
    }
}

/// A one-replica Deployment of `name` in slicenet-system running `container` as
/// ServiceAccount `name`.
pub fn deployment(name: &str, container: Container, volumes: Vec<Volume>) -> Deployment {
    Deployment {
        metadata: meta(name, Some(SYSTEM_NAMESPACE), name),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(selector(name)), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(name)), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.to_owned()),
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            localhost_profile: None,
                        }),
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

fn controller(name: &str, image: &str, args: &[&str], mut env_vars: Vec<EnvVar>) -> Container {
    env_vars.insert(0, env_from_field("POD_NAMESPACE", "metadata.namespace"));
    env_vars.push(env("RUST_LOG", "info"));
    Container {
        name: name.trim_start_matches("slicenet-").to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![format!("{BIN}/slice-operator")]),
        args: Some(args.iter().map(|a| (*a).to_owned()).collect()),
        env: Some(env_vars),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// `slice-operator hub`.
pub fn hub_deployment(image: &str) -> Deployment {
    deployment(HUB_NAME, controller(HUB_NAME, image, &["hub"], Vec::new()), Vec::new())
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
        pod.security_context.get_or_insert_with(PodSecurityContext::default).fs_group = Some(65532);
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

/// The node agent on every node, with the slice-cni install as its init container.
pub fn node_agent_daemonset(image: &str) -> DaemonSet {
    // Root as well as privileged: the image's default user is 65532, and a non-root process
    // gets no effective capabilities from `privileged`.
    let privileged = SecurityContext { privileged: Some(true), run_as_user: Some(0), ..SecurityContext::default() };
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
        // Writes root-owned host directories.
        security_context: Some(SecurityContext { run_as_user: Some(0), ..SecurityContext::default() }),
        ..Container::default()
    };
    let agent = Container {
        name: "node-agent".to_owned(),
        image: Some(image.to_owned()),
        command: Some(vec![format!("{BIN}/slice-operator")]),
        // --kube: the configuration comes from the ConfigMap the worker writes for this node.
        args: Some(vec!["node-agent".to_owned(), "--kube".to_owned()]),
        env: Some(vec![
            env_from_field("NODE_NAME", "spec.nodeName"),
            env_from_field("POD_NAMESPACE", "metadata.namespace"),
            env("RUST_LOG", "info"),
        ]),
        security_context: Some(privileged),
        volume_mounts: Some(vec![
            mount("netns", "/run/netns", Some("Bidirectional")),
            mount("state", DEFAULT_STATE_DIR, None),
            mount("var-lib", VAR_LIB_DIR, None),
        ]),
        ..Container::default()
    };
    DaemonSet {
        metadata: meta(NODE_AGENT_NAME, Some(SYSTEM_NAMESPACE), NODE_AGENT_NAME),
        spec: DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(selector(NODE_AGENT_NAME)), match_expressions: None },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(NODE_AGENT_NAME)), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(NODE_AGENT_NAME.to_owned()),
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".to_owned()),
                    priority_class_name: Some("system-node-critical".to_owned()),
                    // Every node, tainted or not: a pod there may join a slice.
                    tolerations: Some(vec![Toleration {
                        operator: Some("Exists".to_owned()),
                        ..Toleration::default()
                    }]),
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
            ..DaemonSetSpec::default()
        },
        status: None,
    }
}
