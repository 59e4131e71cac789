//! What `slicectl install` and `slicectl join` print, run through the real binary:
//! every document parses back into its typed kind without losing a field, the RBAC rules
//! grant exactly what the controllers' (and the webhook's) access lists declare, and the webhook
//! Deployment starts `slice-webhooks` with flags its own parser accepts, pointing at files the
//! manifest mounts.

mod common;
use common::KUBECONFIG;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, Secret, Service, ServiceAccount, Volume};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use slice_api::crd::MemberCluster;
use slice_api::rbac::{Access, Scope};
use slice_operator::access::{HUB, NODE_AGENT, WEBHOOK_HUB, WORKER_CLUSTER, WORKER_HUB};
use slicectl::manifest::{parse_documents, round_trip};
use slicectl::rbac::{Grant, declared, declared_named, grants, named_grants};
use yaml_serde::Value;

/// Runs slicectl; panics with its stderr on failure.
fn run_slicectl(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl")).args(args).output().unwrap();
    assert!(out.status.success(), "slicectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs slicectl and returns its stdout; panics with stderr on failure.
fn slicectl(args: &[&str]) -> String {
    String::from_utf8(run_slicectl(args).stdout).unwrap()
}

/// Runs slicectl and returns what it said on stderr; panics on failure.
fn slicectl_stderr(args: &[&str]) -> String {
    String::from_utf8(run_slicectl(args).stderr).unwrap()
}

fn install_worker(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.yaml");
    std::fs::write(&path, KUBECONFIG).unwrap();
    let path = path.to_str().unwrap();
    let mut args = vec!["install", "worker", "--cluster", "east", "--hub-kubeconfig", path];
    args.extend_from_slice(extra);
    slicectl(&args)
}

/// Every object of a manifest, parsed into its typed kind.
#[derive(Debug, Default)]
struct Parsed {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    secrets: Vec<Secret>,
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    stateful_sets: Vec<StatefulSet>,
    daemonsets: Vec<DaemonSet>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    mutating: Vec<MutatingWebhookConfiguration>,
    validating: Vec<ValidatingWebhookConfiguration>,
    crds: Vec<CustomResourceDefinition>,
    member_clusters: Vec<MemberCluster>,
    disruption_budgets: Vec<PodDisruptionBudget>,
    network_policies: Vec<NetworkPolicy>,
    admission_policies: Vec<ValidatingAdmissionPolicy>,
    admission_policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
}

/// Parses every document by its apiVersion/kind into the k8s-openapi type, failing on an
/// unknown kind and on any field the type does not have (round trip).
fn parse(yaml: &str) -> Parsed {
    fn typed<K: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value, what: &str) -> K {
        round_trip::<K>(doc).unwrap_or_else(|e| panic!("{what}: {e}"))
    }
    let mut p = Parsed::default();
    let docs = parse_documents(yaml).unwrap();
    assert!(!docs.is_empty());
    for doc in &docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let what = format!("{api_version} {kind} {:?}", doc["metadata"]["name"].as_str().unwrap_or_default());
        match (api_version, kind) {
            ("v1", "Namespace") => p.namespaces.push(typed(doc, &what)),
            ("v1", "ServiceAccount") => p.service_accounts.push(typed(doc, &what)),
            ("v1", "Secret") => p.secrets.push(typed(doc, &what)),
            ("v1", "Service") => p.services.push(typed(doc, &what)),
            ("apps/v1", "Deployment") => p.deployments.push(typed(doc, &what)),
            ("apps/v1", "StatefulSet") => p.stateful_sets.push(typed(doc, &what)),
            ("apps/v1", "DaemonSet") => p.daemonsets.push(typed(doc, &what)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => p.cluster_roles.push(typed(doc, &what)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => p.cluster_role_bindings.push(typed(doc, &what)),
            ("rbac.authorization.k8s.io/v1", "Role") => p.roles.push(typed(doc, &what)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => p.role_bindings.push(typed(doc, &what)),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => p.mutating.push(typed(doc, &what)),
            ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
                p.validating.push(typed(doc, &what))
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => p.crds.push(typed(doc, &what)),
            ("slicenet.io/v1alpha1", "MemberCluster") => p.member_clusters.push(typed(doc, &what)),
            ("policy/v1", "PodDisruptionBudget") => p.disruption_budgets.push(typed(doc, &what)),
            ("networking.k8s.io/v1", "NetworkPolicy") => p.network_policies.push(typed(doc, &what)),
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                p.admission_policies.push(typed(doc, &what))
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                p.admission_policy_bindings.push(typed(doc, &what))
            }
            _ => panic!("unexpected kind in a manifest: {what}"),
        }
    }
    p
}

/// (namespace, name) of a ServiceAccount → (scope → grants), from the bindings.
fn granted(p: &Parsed) -> BTreeMap<(String, String), BTreeMap<Scope, BTreeSet<Grant>>> {
    let mut out: BTreeMap<(String, String), BTreeMap<Scope, BTreeSet<Grant>>> = BTreeMap::new();
    let no_wildcards = |rules: &[PolicyRule], role: &str| {
        for r in rules {
            let all = r.api_groups.iter().flatten().chain(r.resources.iter().flatten()).chain(&r.verbs);
            assert!(all.into_iter().all(|s| s != "*"), "wildcard in {role}");
            assert!(r.non_resource_urls.is_none(), "non-resource URLs in {role}");
        }
    };
    for b in &p.cluster_role_bindings {
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role = p
            .cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
            .unwrap_or_else(|| panic!("ClusterRole {} is bound but not in the manifest", b.role_ref.name));
        let rules = role.rules.as_deref().unwrap_or_default();
        no_wildcards(rules, &b.role_ref.name);
        for s in b.subjects.iter().flatten() {
            let key = (s.namespace.clone().unwrap_or_default(), s.name.clone());
            out.entry(key).or_default().entry(Scope::Cluster).or_default().extend(grants(rules));
        }
    }
    for b in &p.role_bindings {
        assert_eq!(b.role_ref.kind, "Role");
        let ns = b.metadata.namespace.clone().unwrap();
        let role = p
            .roles
            .iter()
            .find(|r| {
                r.metadata.name.as_deref() == Some(b.role_ref.name.as_str()) && r.metadata.namespace == Some(ns.clone())
            })
            .unwrap_or_else(|| panic!("Role {ns}/{} is bound but not in the manifest", b.role_ref.name));
        let rules = role.rules.as_deref().unwrap_or_default();
        no_wildcards(rules, &b.role_ref.name);
        for s in b.subjects.iter().flatten() {
            let home = s.namespace.clone().expect("a ServiceAccount subject names its namespace");
            // A Role in the account's own namespace, or in another one its list names.
            let scope = if home == ns { Scope::OwnNamespace } else { Scope::Namespace(leak(&ns)) };
            out.entry((home, s.name.clone())).or_default().entry(scope).or_default().extend(grants(rules));
        }
    }
    out
}

/// A namespace name for [`Scope::Namespace`], which holds a `&'static str` (tests only).
fn leak(ns: &str) -> &'static str {
    Box::leak(ns.to_owned().into_boxed_str())
}

/// Asserts that the account has exactly `list`'s grants in each scope, and exists.
fn assert_grants_exactly(p: &Parsed, namespace: &str, account: &str, list: &[Access]) {
    assert!(
        p.service_accounts
            .iter()
            .any(|sa| sa.metadata.name.as_deref() == Some(account)
                && sa.metadata.namespace.as_deref() == Some(namespace)),
        "ServiceAccount {namespace}/{account} missing"
    );
    let all = granted(p);
    let got = all.get(&(namespace.to_owned(), account.to_owned())).cloned().unwrap_or_default();
    let mut scopes = vec![Scope::Cluster, Scope::OwnNamespace];
    scopes.extend(list.iter().map(|a| a.scope).filter(|s| matches!(s, Scope::Namespace(_))));
    scopes.extend(got.keys().copied());
    scopes.sort();
    scopes.dedup();
    for scope in scopes {
        let want = declared(list, scope);
        let have = got.get(&scope).cloned().unwrap_or_default();
        let missing: Vec<_> = want.difference(&have).collect();
        let extra: Vec<_> = have.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{namespace}/{account} {scope:?}: missing {missing:?}, extra {extra:?}"
        );
    }
    // What is granted by name in the account's namespace is exactly what the list names (the
    // webhook certificate's Secrets).
    let named: BTreeSet<_> = p
        .role_bindings
        .iter()
        .filter(|b| b.metadata.namespace.as_deref() == Some(namespace))
        .filter(|b| b.subjects.iter().flatten().any(|s| s.name == account && s.namespace.as_deref() == Some(namespace)))
        .filter_map(|b| {
            p.roles.iter().find(|r| {
                r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                    && r.metadata.namespace.as_deref() == Some(namespace)
            })
        })
        .flat_map(|r| named_grants(r.rules.as_deref().unwrap_or_default()))
        .collect();
    assert_eq!(named, declared_named(list, Scope::OwnNamespace), "{namespace}/{account}: rules by name");
}

/// The webhook's CA Secret `name`: Opaque, `ca.crt` the caBundle of the TLS Secret and `ca.key`
/// its key (the serving certificate verifies against it and is renewable from it).
fn assert_webhook_ca(p: &Parsed, name: &str) {
    use slice_operator::cert_rotation::{Decision, decide};
    let tls = webhook_tls_secret(p).data.as_ref().unwrap();
    let ca = p.secrets.iter().find(|s| s.metadata.name.as_deref() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(ca.type_.as_deref(), Some("Opaque"));
    assert_eq!(ca.metadata.namespace.as_deref(), Some("slicenet-system"));
    let data = ca.data.as_ref().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt", "ca.key"]);
    assert_eq!(data.get("ca.crt"), tls.get("ca.crt"), "the caBundle's CA");
    assert!(String::from_utf8_lossy(&data["ca.key"].0).starts_with("-----BEGIN PRIVATE KEY-----"));
    let text = |b: &k8s_openapi::ByteString| String::from_utf8(b.0.clone()).unwrap();
    let now = k8s_openapi::jiff::Timestamp::now();
    assert!(
        matches!(decide(now, &text(&tls["tls.crt"]), &text(&data["ca.crt"])), Decision::Keep { .. }),
        "the serving certificate is fresh and the CA's"
    );
}

fn pod_specs(p: &Parsed) -> Vec<(String, &PodSpec)> {
    let d = p.deployments.iter().map(|d| (d.metadata.name.clone().unwrap(), d.spec.template.spec.as_ref().unwrap()));
    let ds = p.daemonsets.iter().map(|d| (d.metadata.name.clone().unwrap(), d.spec.template.spec.as_ref().unwrap()));
    d.chain(ds).collect()
}

/// Every workload runs as a ServiceAccount of the manifest, with the chosen image, and its
/// selector matches its template.
fn assert_workloads_consistent(p: &Parsed, image: &str) {
    for (name, spec) in pod_specs(p) {
        let sa = spec.service_account_name.as_deref().unwrap_or_else(|| panic!("{name} has no ServiceAccount"));
        assert!(
            p.service_accounts.iter().any(|a| a.metadata.name.as_deref() == Some(sa)),
            "{name}: no ServiceAccount {sa}"
        );
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            assert_eq!(c.image.as_deref(), Some(image), "{name}/{}", c.name);
        }
    }
    for d in &p.deployments {
        let spec = &d.spec;
        let labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        for (k, v) in spec.selector.match_labels.iter().flatten() {
            assert_eq!(labels.get(k), Some(v));
        }
    }
}

/// Containers that run as root, and why: the node agent (privileged, see its comment), the CNI
/// install (writes root-owned host directories, no capability) and the gateway (`NET_ADMIN`
/// takes effect only for root in Kubernetes).
const ROOT_CONTAINERS: &[&str] = &["node-agent", "install-cni", "gateway"];
/// Capabilities a non-privileged container may add, per container name.
const ADDED_CAPABILITIES: &[(&str, &str)] = &[("gateway", "NET_ADMIN")];

/// A CPU or memory quantity in milli-units or bytes (the forms the manifests use).
fn quantity(q: &str) -> u64 {
    let (digits, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("quantity {q:?}"));
    match unit {
        "" => n * 1000,
        "m" => n,
        "Ki" => n << 10,
        "Mi" => n << 20,
        "Gi" => n << 30,
        _ => panic!("unexpected unit in quantity {q:?}"),
    }
}

/// Requests and limits of CPU and memory, each limit at least its request.
fn assert_budget(what: &str, c: &Container) {
    let r = c.resources.as_ref().unwrap_or_else(|| panic!("{what}: no resources"));
    for resource in ["cpu", "memory"] {
        let request = r
            .requests
            .as_ref()
            .and_then(|m| m.get(resource))
            .unwrap_or_else(|| panic!("{what}: no {resource} request"));
        let limit =
            r.limits.as_ref().and_then(|m| m.get(resource)).unwrap_or_else(|| panic!("{what}: no {resource} limit"));
        assert!(quantity(&limit.0) >= quantity(&request.0), "{what}: {resource} limit below its request");
    }
}

/// The probe's HTTP port is a port the container declares.
fn assert_probe(what: &str, c: &Container, probe: Option<&k8s_openapi::api::core::v1::Probe>, path: &str) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let get = probe.and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{what}: no HTTP probe for {path}"));
    assert_eq!(get.path.as_deref(), Some(path), "{what}");
    let declared = c.ports.iter().flatten().any(|p| match &get.port {
        IntOrString::String(name) => p.name.as_ref() == Some(name),
        IntOrString::Int(n) => p.container_port == *n,
    });
    assert!(declared, "{what}: probe port {:?} is not a port of the container", get.port);
}

/// What production checks ask of every pod: requests and limits on every container, liveness
/// and readiness probes on every long-running one, the runtime's seccomp profile, read-only root
/// filesystems, no privilege escalation and every capability dropped (but the few listed
/// above), non-root but where listed, a ServiceAccount token only where the account has RBAC,
/// the slice opt-out on slicenet-system's pod-network pods.
fn assert_pods_production_ready(p: &Parsed) {
    let granted = granted(p);
    for (name, spec, annotations) in pod_templates(p) {
        let seccomp = spec.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref());
        assert_eq!(seccomp.map(|s| s.type_.as_str()), Some("RuntimeDefault"), "{name}: pod seccomp");
        let account = spec.service_account_name.clone().unwrap_or_default();
        let has_rbac = granted.keys().any(|(_, a)| *a == account);
        assert_eq!(spec.automount_service_account_token, Some(has_rbac), "{name}: token exactly where RBAC is granted");
        let slice_member = annotations.is_some_and(|a| a.contains_key(slice_api::names::SLICE_ANNOTATION));
        if spec.host_network != Some(true) && !slice_member {
            assert_eq!(
                annotations.and_then(|a| a.get(slice_api::names::EXCLUDE_KEY)).map(String::as_str),
                Some("true"),
                "{name}: slicenet-system pods opt out of slices"
            );
        }
        let init = spec.init_containers.iter().flatten().map(|c| (c, false));
        for (c, long_running) in spec.containers.iter().map(|c| (c, true)).chain(init) {
            let what = format!("{name}/{}", c.name);
            assert_budget(&what, c);
            if long_running {
                assert_probe(&what, c, c.liveness_probe.as_ref(), "/healthz");
                let ready = c.readiness_probe.as_ref();
                let path = ready.and_then(|r| r.http_get.as_ref()).and_then(|g| g.path.clone()).unwrap_or_default();
                assert!(path == "/readyz" || (c.name == "gateway" && path == "/healthz"), "{what}: readiness {path:?}");
                assert_probe(&what, c, ready, &path);
            }
            let sc = c.security_context.as_ref().unwrap_or_else(|| panic!("{what}: no securityContext"));
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{what}: read-only root filesystem");
            assert!(sc.seccomp_profile.as_ref().is_none_or(|s| s.type_ == "RuntimeDefault"), "{what}: seccomp");
            let root = sc.run_as_user == Some(0);
            assert_eq!(root, ROOT_CONTAINERS.contains(&c.name.as_str()), "{what}: root only where listed");
            assert_eq!(sc.run_as_non_root, Some(!root), "{what}: runAsNonRoot");
            if sc.privileged == Some(true) {
                assert_eq!(c.name, "node-agent", "{what}: only the node agent is privileged");
                continue;
            }
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}: privilege escalation");
            let caps = sc.capabilities.as_ref().unwrap_or_else(|| panic!("{what}: capabilities"));
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]), "{what}: drop ALL");
            for add in caps.add.iter().flatten() {
                assert!(ADDED_CAPABILITIES.contains(&(c.name.as_str(), add.as_str())), "{what}: adds {add}");
            }
        }
    }
}

/// Every printed namespace names its Pod Security level (enforce, audit and warn alike), and every
/// pod template meets its namespace's level: `slicenet-system` is `restricted` (hub, worker,
/// webhooks), only `slicenet-node` (the node agent) and `slicenet-gateway` are `privileged`. The
/// `restricted` rules checked are those of the Pod Security Standards that the printed pods could
/// break: host namespaces and ports, volume types, privilege, escalation, non-root, seccomp and
/// capabilities.
fn assert_pod_security_levels(p: &Parsed) {
    let mut level = BTreeMap::new();
    for ns in &p.namespaces {
        let name = ns.metadata.name.clone().unwrap();
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        let modes: BTreeSet<_> = ["enforce", "audit", "warn"]
            .map(|m| labels.get(&format!("pod-security.kubernetes.io/{m}")).cloned())
            .into();
        assert_eq!(modes.len(), 1, "{name}: one level for enforce, audit and warn: {labels:?}");
        let want =
            if ["slicenet-node", "slicenet-gateway"].contains(&name.as_str()) { "privileged" } else { "restricted" };
        if name.starts_with(slice_api::crd::CLUSTER_NAMESPACE_PREFIX) {
            continue; // a member cluster's namespace on the hub: no pods of slicenet.
        }
        assert_eq!(modes.first().cloned().flatten().as_deref(), Some(want), "{name}");
        level.insert(name, want);
    }
    let templates = p
        .deployments
        .iter()
        .map(|d| (&d.metadata, &d.spec.template))
        .chain(p.daemonsets.iter().map(|d| (&d.metadata, &d.spec.template)));
    for (meta, template) in templates {
        let (name, namespace) = (meta.name.clone().unwrap(), meta.namespace.clone().unwrap());
        let spec = template.spec.as_ref().unwrap();
        match level.get(&namespace).copied() {
            Some("privileged") => continue,
            Some("restricted") => {}
            other => panic!("{name}: in namespace {namespace} of level {other:?}"),
        }
        let what = format!("{name} in {namespace} (restricted)");
        for host in [spec.host_network, spec.host_pid, spec.host_ipc] {
            assert_ne!(host, Some(true), "{what}: a host namespace");
        }
        const VOLUMES: [&str; 8] = [
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ];
        for v in spec.volumes.iter().flatten() {
            let json = serde_json::to_value(v).unwrap();
            let kinds: Vec<_> = json.as_object().unwrap().keys().filter(|k| *k != "name").cloned().collect();
            assert!(kinds.iter().all(|k| VOLUMES.contains(&k.as_str())), "{what}: volume {kinds:?}");
        }
        let pod_sc = spec.security_context.clone().unwrap_or_default();
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            let what = format!("{what}/{}", c.name);
            let sc = c.security_context.clone().unwrap_or_default();
            assert_ne!(sc.privileged, Some(true), "{what}: privileged");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{what}: privilege escalation");
            assert_eq!(sc.run_as_non_root.or(pod_sc.run_as_non_root), Some(true), "{what}: runAsNonRoot");
            assert_ne!(sc.run_as_user.or(pod_sc.run_as_user), Some(0), "{what}: runAsUser 0");
            let seccomp = sc.seccomp_profile.or(pod_sc.seccomp_profile.clone()).map(|s| s.type_);
            assert!(matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")), "{what}: seccomp {seccomp:?}");
            let caps = sc.capabilities.unwrap_or_default();
            assert!(caps.drop.iter().flatten().any(|d| d == "ALL"), "{what}: drop ALL");
            assert!(caps.add.iter().flatten().all(|a| a == "NET_BIND_SERVICE"), "{what}: adds {:?}", caps.add);
            let host_ports = c.ports.iter().flatten().filter(|p| p.host_port.is_some_and(|h| h != 0)).count();
            assert_eq!(host_ports, 0, "{what}: host ports");
        }
    }
}

/// A workload's name, pod spec and pod template annotations.
type PodTemplate<'a> = (String, &'a PodSpec, Option<&'a BTreeMap<String, String>>);

/// Every pod template of the manifest.
fn pod_templates(p: &Parsed) -> Vec<PodTemplate<'_>> {
    let d = p.deployments.iter().map(|d| (&d.metadata, &d.spec.template));
    let ds = p.daemonsets.iter().map(|d| (&d.metadata, &d.spec.template));
    let sts = p.stateful_sets.iter().map(|d| (&d.metadata, &d.spec.template));
    d.chain(ds)
        .chain(sts)
        .map(|(m, t)| {
            (
                m.name.clone().unwrap(),
                t.spec.as_ref().unwrap(),
                t.metadata.as_ref().and_then(|m| m.annotations.as_ref()),
            )
        })
        .collect()
}

/// Every Deployment of more than one replica has a PodDisruptionBudget of its pods that lets
/// one go at a time; slicenet-system denies ingress by default and the webhook's port is open.
fn assert_production_ready(p: &Parsed) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_pods_production_ready(p);
    assert_pod_security_levels(p);
    for d in &p.deployments {
        let name = d.metadata.name.clone().unwrap();
        assert_eq!(d.spec.replicas, Some(2), "{name}: two replicas");
        let labels = d.spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
        let pdb = p
            .disruption_budgets
            .iter()
            .find(|b| {
                let sel = b.spec.as_ref().unwrap().selector.as_ref().unwrap();
                sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
                    && b.metadata.namespace == d.metadata.namespace
            })
            .unwrap_or_else(|| panic!("{name}: no PodDisruptionBudget"));
        assert_eq!(pdb.spec.as_ref().unwrap().min_available, Some(IntOrString::Int(1)), "{name}");
    }
    assert_eq!(p.disruption_budgets.len(), p.deployments.len(), "one PodDisruptionBudget per Deployment");
    let deny = p.network_policies.iter().find(|n| n.metadata.name.as_deref() == Some("slicenet-default-deny-ingress"));
    let deny = deny.and_then(|n| n.spec.as_ref()).expect("a default deny");
    assert_eq!(deny.pod_selector, Some(Default::default()), "selects every pod");
    assert_eq!(deny.policy_types.as_deref(), Some(&["Ingress".to_owned()][..]));
    assert!(deny.ingress.is_none() && deny.egress.is_none());
    // The API server reaches the webhook's port from wherever it is.
    let hook = webhook_deployment(p);
    let labels = hook.spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let port = hook.spec.template.spec.as_ref().unwrap().containers[0].ports.as_ref().unwrap()[0].container_port;
    let open = p.network_policies.iter().filter_map(|n| n.spec.as_ref()).any(|n| {
        let selected =
            n.pod_selector.iter().flat_map(|s| s.match_labels.iter().flatten()).all(|(k, v)| labels.get(k) == Some(v));
        selected
            && n.ingress
                .iter()
                .flatten()
                .any(|r| r.from.is_none() && r.ports.iter().flatten().any(|pp| pp.port == Some(IntOrString::Int(port))))
    });
    assert!(open, "no policy opens the webhook's port {port}");
}

/// `slice-operator`'s own parse of the container's arguments, with the environment variables
/// its flags read (clap's `env`) given as those flags, so that the parse does not depend on the
/// test's environment; a downward-API value stands in as `from-<field>`.
fn parse_operator(c: &Container) -> slice_operator::cli::Cli {
    const FROM_ENV: &[(&str, &str)] = &[
        ("SLICENET_CLUSTER", "--cluster"),
        ("SLICENET_HUB_KUBECONFIG", "--hub-kubeconfig"),
        ("NODE_NAME", "--node"),
        ("POD_NAME", "--leader-election-identity"),
        ("POD_NAMESPACE", "--leader-election-namespace"),
    ];
    let mut argv = vec!["slice-operator".to_owned()];
    argv.extend(c.command.iter().flatten().skip(1).cloned());
    argv.extend(c.args.iter().flatten().cloned());
    let command = argv.get(1).cloned().unwrap_or_default();
    for e in c.env.iter().flatten() {
        let Some((_, flag)) = FROM_ENV.iter().find(|(var, _)| *var == e.name) else { continue };
        // The node agent has no leader election.
        if command == "node-agent" && flag.starts_with("--leader") {
            continue;
        }
        let value = e.value.clone().unwrap_or_else(|| {
            let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.clone());
            format!("from-{}", field.unwrap_or_default())
        });
        argv.extend([(*flag).to_owned(), value]);
    }
    slice_operator::cli::try_parse(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

/// A controller Deployment (`slice-operator hub|worker`): its arguments parse with the
/// binary's own parser, leader election on through a Lease named by the pod (`POD_NAME`) in the
/// pod's namespace (`POD_NAMESPACE`), and the probes read the port `--health-addr` serves.
fn assert_controller(d: &Deployment, command: &str) {
    let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
    let field = |var: &str| {
        let e = c.env.iter().flatten().find(|e| e.name == var).unwrap_or_else(|| panic!("{command}: no {var}"));
        e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path.clone()
    };
    assert_eq!(field("POD_NAME"), "metadata.name");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
    let cli = parse_operator(c);
    let (health, election) = match cli.command {
        slice_operator::cli::Command::Hub(h) if command == "hub" => (h.health_addr, h.leader_election),
        slice_operator::cli::Command::Worker(w) if command == "worker" => (w.health_addr, w.leader_election),
        other => panic!("{command}: parsed as {other:?}"),
    };
    assert!(!election.no_leader_election, "{command}: two replicas need the Lease");
    let port = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some("health")).unwrap();
    assert_eq!(i32::from(health.port()), port.container_port, "{command}: probes read --health-addr");
    assert!(health.ip().is_unspecified(), "{command}: the kubelet reaches the pod address");
}

#[test]
fn install_hub_parses_and_grants_exactly_the_hub_list() {
    let p = parse(&slicectl(&["install", "hub", "--image", "registry.test/slicenet:dev"]));
    assert_eq!(p.crds.len(), slice_api::crd::crds().len());
    assert_eq!(p.crds, slice_api::crd::crds());
    assert_grants_exactly(&p, "slicenet-system", "slicenet-hub", HUB);
    assert_grants_exactly(&p, "slicenet-system", "slicenet-hub-webhook", WEBHOOK_HUB);
    assert_webhook_ca(&p, "slicenet-hub-webhook-ca");
    assert_workloads_consistent(&p, "registry.test/slicenet:dev");
    assert_production_ready(&p);
    let hub = p.deployments.iter().find(|d| d.metadata.name.as_deref() == Some("slicenet-hub")).unwrap();
    let hub_account = hub.spec.template.spec.as_ref().unwrap().service_account_name.clone().unwrap();
    let c = &hub.spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.args.as_deref().unwrap()[0], "hub");
    assert_controller(hub, "hub");
    // The hub pages the peers (its default): the namespace of the pages is in the manifest, and
    // the hub's Role there (granted exactly above) is what lets it write the pages and the
    // members' Roles and RoleBindings.
    let slice_operator::cli::Command::Hub(options) = parse_operator(c).command else { unreachable!("a hub") };
    assert_eq!(options.peer_lists(), slice_api::planner::PeerLists::Paged);
    let peers = slice_api::names::PEERS_NAMESPACE;
    assert!(p.namespaces.iter().any(|n| n.metadata.name.as_deref() == Some(peers)), "no namespace {peers}");
    for r in &p.roles {
        let ns = r.metadata.namespace.clone().unwrap();
        let made = p.namespaces.iter().any(|n| n.metadata.name.as_ref() == Some(&ns));
        assert!(made, "Role {ns}/{:?} in a namespace the manifest does not make", r.metadata.name);
    }
    assert!(
        p.roles
            .iter()
            .any(|r| r.metadata.namespace.as_deref() == Some(peers)
                && r.metadata.name.as_deref() == Some("slicenet-hub")),
        "the hub's Role in {peers}"
    );
    assert!(p.mutating.is_empty(), "pods are mutated in member clusters only");

    let v = &p.validating[0].webhooks.as_ref().unwrap()[0];
    assert_eq!(v.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(v.side_effects, "None");
    assert_eq!(v.client_config.service.as_ref().unwrap().path.as_deref(), Some("/validate-sliceconfig"));
    let rule = &v.rules.as_ref().unwrap()[0];
    assert_eq!(rule.resources.as_deref(), Some(&["sliceconfigs".to_owned()][..]));
    assert_webhook_tls(&p, &v.client_config);
    // The controller whose writes skip validation is the hub Deployment's account.
    let skip = &v.match_conditions.as_ref().unwrap()[0].expression;
    assert_eq!(skip, &format!("request.userInfo.username != 'system:serviceaccount:slicenet-system:{hub_account}'"));

    let args = assert_webhook_deployment(&p);
    assert!(args.hub_api && args.hub_dir.is_none(), "the hub's webhook reads the hub from the API: {args:?}");
    assert!(args.membership_dir.is_none(), "no membership ConfigMap on the hub: {args:?}");
    let pod = webhook_pod(&p);
    assert_ne!(pod.automount_service_account_token, Some(false), "--hub-api needs the ServiceAccount token");

    // The hub controller's namespaces; every member cluster's worker (an account named
    // slicenet-worker in a slicenet-cluster-* namespace) on its WorkerSlices.
    assert_admission_policies(
        &p,
        &[
            ("slicenet-hub-namespaces", format!("'system:serviceaccount:slicenet-system:{hub_account}'")),
            ("slicenet-worker-hub-workerslices", "':slicenet-worker'".to_owned()),
        ],
    );
}

/// The admission policies are exactly `want` (name, the account its match condition names),
/// each bound with Deny; the accounts come from the workloads of the manifest.
fn assert_admission_policies(p: &Parsed, want: &[(&str, String)]) {
    let names: Vec<&str> = p.admission_policies.iter().map(|a| a.metadata.name.as_deref().unwrap()).collect();
    assert_eq!(names, want.iter().map(|(n, _)| *n).collect::<Vec<_>>());
    for (name, account) in want {
        let policy = p.admission_policies.iter().find(|a| a.metadata.name.as_deref() == Some(name)).unwrap();
        let condition = &policy.spec.as_ref().unwrap().match_conditions.as_ref().unwrap()[0].expression;
        assert!(condition.contains(account.as_str()), "{name} is keyed on {account}: {condition}");
        let binding = p.admission_policy_bindings.iter().find(|b| b.spec.policy_name == *name).unwrap();
        assert_eq!(binding.spec.validation_actions, ["Deny"]);
    }
    assert_eq!(p.admission_policy_bindings.len(), want.len());
}

/// The one Deployment that runs `slice-webhooks`.
fn webhook_deployment(p: &Parsed) -> &Deployment {
    let mut hooks = p.deployments.iter().filter(|d| {
        let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
        c.command.iter().flatten().next().is_some_and(|c| c.ends_with("/slice-webhooks"))
    });
    let d = hooks.next().expect("a webhook Deployment");
    assert!(hooks.next().is_none(), "one webhook Deployment per install");
    d
}

fn webhook_pod(p: &Parsed) -> &PodSpec {
    webhook_deployment(p).spec.template.spec.as_ref().unwrap()
}

/// The Secret the webhook Deployment serves its certificate from.
fn webhook_tls_secret(p: &Parsed) -> &Secret {
    let pod = webhook_pod(p);
    let volume = pod.volumes.iter().flatten().find(|v| v.name == "tls").unwrap();
    let name = volume.secret.as_ref().unwrap().secret_name.clone().unwrap();
    p.secrets.iter().find(|s| s.metadata.name.as_deref() == Some(name.as_str())).unwrap()
}

/// The webhook Deployment runs `slice-webhooks` with arguments that `webhooks::cli::Args` (the
/// binary's own parser) accepts, on the port the container declares, with no environment but
/// `RUST_LOG`; its certificate and key are mounted from the manifest's TLS Secret named after
/// it, and a membership directory, when given, is the `slicenet-membership` ConfigMap in the
/// namespace where the worker writes it. Returns the parsed arguments.
fn assert_webhook_deployment(p: &Parsed) -> webhooks::cli::Args {
    use clap::Parser as _;
    let d = webhook_deployment(p);
    let name = d.metadata.name.clone().unwrap();
    let pod = webhook_pod(p);
    let c = &pod.containers[0];
    let argv: Vec<String> = c.command.iter().flatten().chain(c.args.iter().flatten()).cloned().collect();
    assert_eq!(argv[0], "/usr/local/bin/slice-webhooks");
    let args = webhooks::cli::Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(i32::from(args.listen.port()), port.container_port);
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(env, ["RUST_LOG"], "slice-webhooks reads no other environment");

    // The volume a file is read from: the mount whose path holds it.
    let volume_of = |file: &Path| -> (&Volume, String) {
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| file.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| panic!("{} is not on a mounted volume", file.display()));
        let rest = file.strip_prefix(&m.mount_path).unwrap().to_str().unwrap().to_owned();
        let v = pod.volumes.iter().flatten().find(|v| v.name == m.name).unwrap();
        (v, rest)
    };
    let tls = webhook_tls_secret(p);
    assert_eq!(tls.metadata.name, Some(format!("{name}-tls")));
    for file in [&args.tls_cert, &args.tls_key] {
        let (v, key) = volume_of(file);
        assert_eq!(v.secret.as_ref().unwrap().secret_name, tls.metadata.name);
        assert_eq!(v.secret.as_ref().unwrap().items, None, "every key of the Secret is a file");
        assert!(tls.data.as_ref().unwrap().contains_key(&key), "{} is not a key of the Secret", file.display());
    }
    if let Some(dir) = &args.membership_dir {
        let (v, rest) = volume_of(dir);
        assert_eq!(rest, "", "the ConfigMap is the directory itself");
        let cm = v.config_map.as_ref().unwrap();
        assert_eq!(cm.name, slice_operator::worker::objects::MEMBERSHIP_CONFIG_MAP);
        assert_eq!(cm.name, webhooks::membership::MEMBERSHIP_CONFIGMAP);
        assert_ne!(cm.optional, Some(true), "not ready until the worker wrote it");
        assert_eq!(d.metadata.namespace.as_deref(), Some(webhooks::membership::MEMBERSHIP_NAMESPACE));
    }
    for (probe, path) in [(&c.readiness_probe, "/readyz"), (&c.liveness_probe, "/healthz")] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!((get.path.as_deref(), get.scheme.as_deref()), (Some(path), Some("HTTPS")));
        assert_eq!(get.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("https".to_owned()));
    }
    args
}

/// The caBundle is the CA of the Secret the webhook serves with, and the Service reaches the
/// container's HTTPS port.
fn assert_webhook_tls(p: &Parsed, cc: &k8s_openapi::api::admissionregistration::v1::WebhookClientConfig) {
    let secret = webhook_tls_secret(p);
    let data = secret.data.as_ref().unwrap();
    assert_eq!(cc.ca_bundle.as_ref(), data.get("ca.crt"));
    assert!(data.contains_key("tls.crt") && data.contains_key("tls.key"));
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let svc_ref = cc.service.as_ref().unwrap();
    let svc = p.services.iter().find(|s| s.metadata.name.as_deref() == Some(svc_ref.name.as_str())).unwrap();
    let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(Some(port.port), svc_ref.port);
    let d = webhook_deployment(p);
    assert_eq!(svc.metadata.name, d.metadata.name, "each webhook configuration calls its own webhook");
    let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
    let cport = &c.ports.as_ref().unwrap()[0];
    assert_eq!(cport.container_port, 8443);
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(cport.name.clone().unwrap()))
    );
}

/// slice-dns: `--kube` with flags its own parser takes, the Service the worker's Corefile stanza
/// forwards to (port 53, UDP and TCP, to the container's DNS ports), and a policy opening them.
fn assert_slice_dns(p: &Parsed) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let d = p.deployments.iter().find(|d| d.metadata.name.as_deref() == Some("slice-dns")).expect("slice-dns");
    let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.command.as_deref(), Some(&["/usr/local/bin/slice-dns".to_owned()][..]));
    let args = c.args.clone().unwrap();
    assert!(args.contains(&"--kube".to_owned()), "{args:?}");
    let service = p.services.iter().find(|s| s.metadata.name.as_deref() == Some("slice-dns")).expect("Service");
    let spec = service.spec.as_ref().unwrap();
    let ports: Vec<(i32, String, String)> = spec
        .ports
        .iter()
        .flatten()
        .map(|sp| {
            let IntOrString::String(target) = sp.target_port.clone().unwrap() else { panic!("a named target port") };
            (sp.port, sp.protocol.clone().unwrap(), target)
        })
        .collect();
    assert_eq!(ports, [(53, "UDP".to_owned(), "dns".to_owned()), (53, "TCP".to_owned(), "dns-tcp".to_owned())]);
    for (_, protocol, target) in &ports {
        let port = c.ports.iter().flatten().find(|cp| cp.name.as_ref() == Some(target)).expect("the target port");
        assert_eq!(port.protocol.as_ref(), Some(protocol));
        let listen = args.iter().skip_while(|a| *a != "--listen").nth(1).unwrap();
        assert!(listen.ends_with(&format!(":{}", port.container_port)), "{listen} vs {port:?}");
        let open = p.network_policies.iter().filter_map(|n| n.spec.as_ref()).any(|n| {
            n.pod_selector.iter().flat_map(|s| s.match_labels.iter().flatten()).any(|(_, v)| v == "slice-dns")
                && n.ingress.iter().flatten().any(|r| {
                    r.from.is_none()
                        && r.ports.iter().flatten().any(|pp| {
                            pp.port == Some(IntOrString::Int(port.container_port))
                                && pp.protocol.as_ref() == Some(protocol)
                        })
                })
        });
        assert!(open, "no policy opens slice-dns's {protocol} port");
    }
}

#[test]
fn install_worker_parses_and_grants_exactly_the_worker_and_agent_lists() {
    let yaml = install_worker(&["--hub-server", "https://hub-control-plane:6443"]);
    let p = parse(&yaml);
    assert!(p.crds.is_empty(), "CRDs live on the hub");
    assert_grants_exactly(&p, "slicenet-system", "slicenet-worker", WORKER_CLUSTER);
    assert_grants_exactly(&p, "slicenet-node", "slicenet-node-agent", NODE_AGENT);
    assert_grants_exactly(&p, "slicenet-system", "slicenet-webhook", &[]);
    // slice-dns reads ServiceImports and EndpointSlices, nothing else.
    assert_grants_exactly(&p, "slicenet-system", "slice-dns", slice_dns::cluster::ACCESS);
    assert_webhook_ca(&p, "slicenet-webhook-ca");
    assert_workloads_consistent(&p, &slicectl::install::default_image());
    assert_production_ready(&p);
    assert_slice_dns(&p);

    // The hub kubeconfig Secret holds the kubeconfig with the server replaced.
    let secret = p.secrets.iter().find(|s| s.metadata.name.as_deref() == Some("slicenet-hub-kubeconfig")).unwrap();
    let data = secret.data.as_ref().unwrap();
    let kc = String::from_utf8(data["kubeconfig"].0.clone()).unwrap();
    assert!(kc.contains("https://hub-control-plane:6443") && !kc.contains("secret-token"), "{kc}");
    // The token in its own key, read as a file where the Secret is mounted (the worker renews it).
    assert_eq!(data[slice_api::hub_credential::TOKEN_KEY].0, b"secret-token");
    let kc: Value = yaml_serde::from_str(&kc).unwrap();
    assert_eq!(kc["users"][0]["user"]["tokenFile"].as_str(), Some(slice_api::hub_credential::token_file().as_str()));
    let worker = p.deployments.iter().find(|d| d.metadata.name.as_deref() == Some("slicenet-worker")).unwrap();
    let spec = worker.spec.template.spec.as_ref().unwrap();
    let env: BTreeMap<_, _> = spec.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env["SLICENET_CLUSTER"], "east");
    // The worker starts the gateway pods with the same image.
    let args = spec.containers[0].args.clone().unwrap();
    assert_eq!(args[..3], ["worker", "--gateway-image", &slicectl::install::default_image()]);
    assert_controller(worker, "worker");
    assert_eq!(
        spec.volumes.as_ref().unwrap()[0].secret.as_ref().unwrap().secret_name.as_deref(),
        Some("slicenet-hub-kubeconfig")
    );

    // The node agent: in its own namespace, host network, privileged, the host dirs, /run/netns
    // shared both ways.
    let ds = &p.daemonsets[0];
    assert_eq!(ds.metadata.namespace.as_deref(), Some(slice_api::names::NODE_NAMESPACE));
    // Rolled one node at a time, the old agent gone before the new one starts (issue 13).
    let rolling = ds.spec.update_strategy.as_ref().expect("an update strategy");
    assert_eq!(rolling.type_.as_deref(), Some("RollingUpdate"));
    let r = rolling.rolling_update.as_ref().expect("rolling update");
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        (r.max_unavailable.clone(), r.max_surge.clone()),
        (Some(IntOrString::Int(1)), Some(IntOrString::Int(0)))
    );
    let spec = ds.spec.template.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    let agent = &spec.containers[0];
    let sc = agent.security_context.as_ref().unwrap();
    assert_eq!((sc.privileged, sc.run_as_user), (Some(true), Some(0)), "the image's user is not root");
    // Its probes read the port its own parser takes from --health-addr.
    let slice_operator::cli::Command::NodeAgent(args) = parse_operator(agent).command else {
        panic!("{:?} is not the node agent", agent.args)
    };
    let health = args.health_addr.expect("the node agent serves its probes");
    let port = agent.ports.iter().flatten().find(|p| p.name.as_deref() == Some("health")).unwrap();
    assert_eq!(i32::from(health.port()), port.container_port);
    // The install step has no capability at all.
    let init = &spec.init_containers.as_ref().unwrap()[0];
    let caps = init.security_context.as_ref().unwrap().capabilities.as_ref().unwrap();
    assert_eq!((caps.add.as_ref(), caps.drop.as_deref()), (None, Some(&["ALL".to_owned()][..])));
    let netns = agent.volume_mounts.iter().flatten().find(|m| m.mount_path == "/run/netns").unwrap();
    assert_eq!(netns.mount_propagation.as_deref(), Some("Bidirectional"));
    // The admission policies name the accounts the worker and the node agent run as.
    let account = |d: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, spec: &PodSpec| {
        format!(
            "'system:serviceaccount:{}:{}'",
            d.namespace.clone().unwrap(),
            spec.service_account_name.clone().unwrap()
        )
    };
    let agent_user = account(&ds.metadata, spec);
    let worker_user = account(&worker.metadata, worker.spec.template.spec.as_ref().unwrap());
    assert_admission_policies(
        &p,
        &[
            ("slicenet-worker-namespaces", worker_user.clone()),
            ("slicenet-worker-network-attachment-definitions", worker_user),
            ("slicenet-node-agent-pods", agent_user.clone()),
            ("slicenet-node-agent-leases", agent_user),
        ],
    );
    let host_paths: BTreeSet<&str> =
        spec.volumes.iter().flatten().filter_map(|v| v.host_path.as_ref()).map(|h| h.path.as_str()).collect();
    assert_eq!(
        host_paths,
        BTreeSet::from(["/run/netns", "/run/slicenet", "/var/lib/slicenet", "/opt/cni/bin", "/etc/cni/net.d"])
    );
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert!(init.args.as_ref().unwrap().contains(&"cni-install".to_owned()));
    // Every mount names a volume of the pod.
    let volumes: BTreeSet<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for m in c.volume_mounts.iter().flatten() {
            assert!(volumes.contains(m.name.as_str()), "{}: no volume {}", c.name, m.name);
        }
    }

    let hooks = p.mutating[0].webhooks.as_ref().unwrap();
    let m = &hooks[0];
    assert_eq!(m.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(m.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(m.side_effects, "None");
    assert_eq!(m.client_config.service.as_ref().unwrap().path.as_deref(), Some("/mutate-pod"));
    let sel = m.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap();
    assert_eq!((sel[0].key.as_str(), sel[0].operator.as_str()), (slice_api::names::SLICE_LABEL, "Exists"));
    assert_eq!(
        (sel[1].key.as_str(), sel[1].operator.as_str(), sel[1].values.as_deref()),
        (
            "kubernetes.io/metadata.name",
            "NotIn",
            Some(&["slicenet-system".to_owned(), "slicenet-gateway".to_owned(), "slicenet-node".to_owned()][..])
        ),
        "slicenet's own namespaces (the webhook's, the gateways', the node agent's) are never sent"
    );
    assert_webhook_tls(&p, &m.client_config);
    // Elsewhere, only pods with a hand-set slice annotation, to remove it.
    let annotated = &hooks[1];
    assert_eq!(annotated.failure_policy.as_deref(), Some("Fail"));
    let sel = annotated.namespace_selector.as_ref().unwrap().match_expressions.as_ref().unwrap();
    assert_eq!(sel[0].operator, "DoesNotExist");
    assert!(annotated.match_conditions.as_ref().unwrap()[0].expression.contains("'slicenet.io/slice' in"));
    assert_webhook_tls(&p, &annotated.client_config);
    assert!(p.validating.is_empty(), "SliceConfigs live on the hub");

    let args = assert_webhook_deployment(&p);
    assert!(args.membership_dir.is_some(), "member clusters mutate pods from the membership ConfigMap");
    assert!(!args.hub_api && args.hub_dir.is_none());
    assert_eq!(webhook_pod(&p).automount_service_account_token, Some(false), "no API access in member clusters");
}

#[test]
fn worker_hub_access_grants_exactly_the_worker_hub_list_for_its_own_cluster() {
    let p = parse(&slicectl(&["install", "worker-hub-access", "--cluster", "east"]));
    assert_grants_exactly(&p, "slicenet-cluster-east", "slicenet-worker", WORKER_HUB);
    assert_eq!(p.namespaces[0].metadata.name.as_deref(), Some("slicenet-cluster-east"));
    // Its cluster-wide access is to its own MemberCluster only.
    for role in &p.cluster_roles {
        for rule in role.rules.iter().flatten() {
            assert_eq!(rule.resource_names.as_deref(), Some(&["east".to_owned()][..]), "{rule:?}");
        }
    }
    assert!(!p.cluster_roles.is_empty());
    // No long-lived token Secret: the first token is made with `kubectl create token` (bound in
    // time), as the command prints, and the worker renews it (`worker::credential`).
    assert!(p.secrets.is_empty(), "{:?}", p.secrets);
    let hint = slicectl_stderr(&["install", "worker-hub-access", "--cluster", "east"]);
    assert!(
        hint.contains("kubectl -n slicenet-cluster-east create token slicenet-worker --duration=2592000s"),
        "{hint}"
    );
    // Two clusters' objects do not collide where names are global.
    let west = parse(&slicectl(&["install", "worker-hub-access", "--cluster", "west"]));
    assert_ne!(west.cluster_roles[0].metadata.name, p.cluster_roles[0].metadata.name);
    assert_ne!(west.cluster_role_bindings[0].metadata.name, p.cluster_role_bindings[0].metadata.name);
}

#[test]
fn install_crds_and_join_parse() {
    let p = parse(&slicectl(&["install", "crds"]));
    assert_eq!(p.crds, slice_api::crd::crds());
    let mcs = slicectl::manifest::parse_documents(&slicectl(&["install", "mcs-crds"])).unwrap();
    let mcs: Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        mcs.into_iter().map(|d| yaml_serde::from_value(d).unwrap()).collect();
    assert_eq!(mcs, slice_api::mcs::crds());
    let p = parse(&slicectl(&["join", "--cluster", "east", "--pod-cidr", "10.244.0.0/16", "--multus"]));
    assert_eq!(p.member_clusters[0].spec.pod_cidrs, ["10.244.0.0/16"]);
    assert!(p.member_clusters[0].spec.multus);
}

#[test]
fn bad_input_fails_with_a_message() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_slicectl")).args(args).output().unwrap();
    let out = run(&["install", "worker", "--cluster", "east", "--hub-kubeconfig", "/nonexistent/kubeconfig"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kubeconfig"));
    let out = run(&["join", "--cluster", "Bad_Name"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster name"));
    let out = run(&["join", "--cluster", "east", "--rotate"]);
    assert!(!out.status.success(), "--rotate needs --hub-kubeconfig");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hub-kubeconfig"));
    let out = run(&["install", "worker", "--hub-kubeconfig", "/k"]);
    assert!(!out.status.success(), "--hub-kubeconfig needs --cluster");
}

#[test]
fn webhook_tls_dir_is_used_as_given() {
    let tls =
        slicectl::tls::generate(&slicectl::tls::service_dns_names("slicenet-webhook", "slicenet-system")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), &tls.ca_pem).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &tls.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &tls.key_pem).unwrap();
    let d = dir.path().to_str().unwrap();
    let hub = parse(&slicectl(&["install", "hub", "--webhook-tls-dir", d]));
    let worker = parse(&install_worker(&["--webhook-tls-dir", d]));
    let bundle = |c: &k8s_openapi::api::admissionregistration::v1::WebhookClientConfig| c.ca_bundle.clone().unwrap().0;
    assert_eq!(bundle(&hub.validating[0].webhooks.as_ref().unwrap()[0].client_config), tls.ca_pem.as_bytes());
    assert_eq!(bundle(&worker.mutating[0].webhooks.as_ref().unwrap()[0].client_config), tls.ca_pem.as_bytes());
    // A certificate brought in is not slicenet's to renew: no CA Secret, only the TLS Secret.
    for p in [&hub, &worker] {
        let secrets: Vec<_> = p.secrets.iter().filter_map(|s| s.metadata.name.as_deref()).collect();
        assert!(secrets.iter().all(|s| !s.ends_with("-ca")), "{secrets:?}");
        assert!(secrets.iter().any(|s| s.ends_with("webhook-tls")), "{secrets:?}");
    }
}

#[test]
fn install_worker_multus_runs_the_pod_webhook_in_multus_mode() {
    let chained = assert_webhook_deployment(&parse(&install_worker(&[])));
    assert_eq!(chained.mode, webhooks::mutate::Mode::Chained);
    let multus = assert_webhook_deployment(&parse(&install_worker(&["--multus"])));
    assert_eq!(multus.mode, webhooks::mutate::Mode::Multus);
}

/// The gateway StatefulSet the worker creates (not printed by `install`, built by the worker's
/// own code) passes the same checks, and the worker's install opens exactly its ports.
#[test]
fn the_gateway_the_worker_creates_is_production_ready_and_reachable() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use slice_operator::worker::objects::{GATEWAY_METRICS_PORT, GatewayDefaults, gateway_statefulset};
    let spec: slice_api::crd::WorkerSliceSpec = serde_json::from_value(serde_json::json!({
        "slice": "blue", "cluster": "east", "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.16.0/20",
        "nodePrefixLength": 26, "vni": 100, "namespaces": ["shop"], "peers": [],
    }))
    .unwrap();
    let gateway: StatefulSet = serde_json::from_value(gateway_statefulset(&spec, &GatewayDefaults::default())).unwrap();
    let labels = gateway.spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let gateways = Parsed { stateful_sets: vec![gateway], ..Parsed::default() };
    assert_pods_production_ready(&gateways);

    let p = parse(&install_worker(&[]));
    let policy = p.network_policies.iter().find(|n| n.metadata.name.as_deref() == Some("slicenet-gateways")).unwrap();
    let policy = policy.spec.as_ref().unwrap();
    let selector = policy.pod_selector.as_ref().unwrap().match_labels.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "the policy selects the gateway pods");
    let rules = policy.ingress.as_ref().unwrap();
    // WireGuard: every UDP port (one per slice), from anywhere.
    assert!(rules.iter().any(|r| r.from.is_none()
        && r.ports.iter().flatten().any(|pp| pp.protocol.as_deref() == Some("UDP") && pp.port.is_none())));
    // Metrics: from the worker's pods (it reads the tunnels there) and the labelled namespaces.
    let worker = p.deployments.iter().find(|d| d.metadata.name.as_deref() == Some("slicenet-worker")).unwrap();
    let worker_labels = worker.spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let metrics = rules
        .iter()
        .find(|r| r.ports.iter().flatten().any(|pp| pp.port == Some(IntOrString::Int(i32::from(GATEWAY_METRICS_PORT)))))
        .expect("a rule for the metrics port");
    let from = metrics.from.as_ref().expect("not from anywhere");
    // The worker runs in slicenet-system, the gateways in slicenet-gateway: the peer names both.
    let gateway_ns = gateways.stateful_sets[0].metadata.namespace.clone().unwrap();
    assert_eq!(gateway_ns, "slicenet-gateway");
    assert_eq!(
        p.network_policies
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some("slicenet-gateways"))
            .unwrap()
            .metadata
            .namespace,
        Some(gateway_ns)
    );
    assert!(from.iter().any(|peer| {
        peer.namespace_selector.as_ref().is_some_and(|n| {
            n.match_labels.as_ref().unwrap().get("kubernetes.io/metadata.name").map(String::as_str)
                == Some("slicenet-system")
        }) && peer
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| worker_labels.get(k) == Some(v))
    }));
    assert!(from.iter().any(|peer| {
        peer.namespace_selector.as_ref().is_some_and(|n| {
            n.match_labels.as_ref().unwrap().get("slicenet.io/metrics-scraper").map(String::as_str) == Some("true")
        })
    }));
}

/// A hub that is also a member cluster: `install hub`, `install worker` and its own
/// `install worker-hub-access`, applied to one cluster, never give two different objects the
/// same identity (apiVersion, kind, namespace, name); the objects they share (the namespace and
/// its default deny) are byte-identical, so applying one after the other changes nothing.
/// What a cluster holds by (API group, kind, namespace, name), the identity the API server
/// keys objects by (the version is not part of it), with the object.
type Objects = BTreeMap<(String, String, String, String), Value>;

fn identities(docs: impl IntoIterator<Item = Value>) -> Objects {
    docs.into_iter()
        .map(|doc| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let api_version = text(&doc["apiVersion"]);
            let group = api_version.rsplit_once('/').map_or("", |(g, _)| g).to_owned();
            let key = (group, text(&doc["kind"]), text(&doc["metadata"]["namespace"]), text(&doc["metadata"]["name"]));
            assert!(!key.1.is_empty() && !key.3.is_empty(), "an object without kind or name: {doc:?}");
            (key, doc)
        })
        .collect()
}

/// What the hub and worker controllers create at run time in their own cluster: their Leases,
/// and the worker's gateway Deployment, Service and Secret, membership and node ConfigMaps.
fn runtime_objects() -> (Vec<Value>, Vec<Value>) {
    use slice_operator::leader::{HUB_LEASE, WORKER_LEASE};
    use slice_operator::worker::objects as o;
    let lease = |name: &str| {
        let json = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "slicenet-system"}});
        yaml_serde::to_value(json).unwrap()
    };
    let spec: slice_api::crd::WorkerSliceSpec = serde_json::from_value(serde_json::json!({
        "slice": "blue", "cluster": "east", "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.16.0/20",
        "nodePrefixLength": 26, "vni": 100, "namespaces": ["shop"], "peers": [],
    }))
    .unwrap();
    let node: slice_api::node::NodeAgentConfig =
        serde_json::from_value(serde_json::json!({"node": "n1", "underlayAddress": "198.18.0.11", "slices": []}))
            .unwrap();
    let worker = [
        o::gateway_statefulset(&spec, &o::GatewayDefaults::default()),
        o::gateway_service(&spec, 0).unwrap(),
        o::gateway_config_secret(
            &spec.slice,
            &slice_operator::worker::plan::TypedGateway::parse(&spec),
            &[slice_api::wireguard::Key([7; 32])],
            false,
        ),
        o::membership_config_map(&[]),
        o::node_config_map(&node),
    ];
    let mut worker: Vec<Value> = worker.iter().map(|v| yaml_serde::to_value(v).unwrap()).collect();
    worker.push(lease(WORKER_LEASE));
    (vec![lease(HUB_LEASE)], worker)
}

/// A hub that is also a member cluster: everything `install hub` (with the `worker-hub-access`
/// of its own cluster) and the hub controller put there, against everything `install worker`
/// (chained or `--multus`) and the worker controller put there. Every object of each side is
/// compared by its identity; the only ones both sides hold are the same object, printed
/// identically, so applying the second install changes nothing of the first.
#[test]
fn hub_and_worker_on_one_cluster_do_not_collide() {
    let docs = |yaml: &str| parse_documents(yaml).unwrap();
    let (hub_runtime, worker_runtime) = runtime_objects();
    let mut hub_docs = docs(&slicectl(&["install", "hub"]));
    hub_docs.extend(docs(&slicectl(&["install", "worker-hub-access", "--cluster", "east"])));
    hub_docs.extend(hub_runtime);
    let hub = identities(hub_docs);
    assert!(hub.len() > 20, "the hub side: {:?}", hub.keys());
    for flags in [&[][..], &["--multus"][..]] {
        let mut worker_docs = docs(&install_worker(flags));
        worker_docs.extend(worker_runtime.clone());
        let worker = identities(worker_docs);
        assert!(worker.len() > 20, "the worker side: {:?}", worker.keys());
        let mut shared = Vec::new();
        for (key, doc) in &worker {
            if let Some(before) = hub.get(key) {
                assert_eq!(
                    yaml_serde::to_string(before).unwrap(),
                    yaml_serde::to_string(doc).unwrap(),
                    "{key:?} is on both sides ({flags:?}) and differs"
                );
                shared.push((key.1.as_str(), key.3.as_str()));
            }
        }
        assert_eq!(
            shared,
            [("Namespace", "slicenet-system"), ("NetworkPolicy", "slicenet-default-deny-ingress")],
            "{flags:?}"
        );
    }
}

/// The node agent's init container runs `slicectl cni-install` as root with every capability
/// dropped and no privilege escalation: the same here (util-linux `setpriv`), into root-owned
/// directories as on a node, and the plugin and the chained conflist are in place.
#[test]
fn cni_install_needs_no_capability() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    assert!(root, "this test runs slicectl as root without capabilities: run it as root");
    let dir = tempfile::tempdir().unwrap();
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir(&bin).unwrap();
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(
        conf.join("10-bridge.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let plugin = dir.path().join("plugin");
    std::fs::write(&plugin, b"#!plugin bytes").unwrap();
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--", env!("CARGO_BIN_EXE_slicectl")])
        .args(["cni-install", "--plugin"])
        .args([&plugin, Path::new("--bin-dir"), &bin, Path::new("--conf-dir"), &conf])
        .output()
        .unwrap();
    assert!(out.status.success(), "cni-install without capabilities: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(bin.join("slice-cni")).unwrap(), b"#!plugin bytes");
    let chained: serde_json::Value =
        serde_json::from_slice(&std::fs::read(conf.join("00-slicenet.conflist")).unwrap()).unwrap();
    assert_eq!(chained["plugins"][1]["type"], "slice-cni");
}

/// The worker's default gateway image is the install's default image: one pinned release,
/// never `:latest` (issue 20).
#[test]
fn the_default_gateway_image_is_the_pinned_release_image() {
    assert_eq!(slicectl::install::default_image(), slice_operator::worker::objects::DEFAULT_GATEWAY_IMAGE);
    assert!(!slice_operator::worker::objects::DEFAULT_GATEWAY_IMAGE.ends_with(":latest"));
}
