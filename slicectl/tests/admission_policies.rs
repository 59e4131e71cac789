//! The ValidatingAdmissionPolicies `slicectl install` prints, evaluated: every CEL expression
//! of the printed objects (match conditions, variables, validations, message expressions) runs
//! in the `cel` crate (cel-rust) against admission requests built the way the API server builds
//! them (`object` after the change, `oldObject` before, `request` with the operation, names and
//! user info), and the verdict is checked:
//!
//! - allowed: every write the real worker makes in a pass against the fake API servers of its
//!   own tests (first pass with Multus, a namespace leaving the slice, Multus turned off, the
//!   slice deleted), and the real node agent's network-status patch of a pod on its node;
//! - refused, with a message saying what and why: the same writes changed into what the policies
//!   exist to stop (a Pod Security label, someone else's NetworkAttachmentDefinition, a
//!   WorkerSlice's `spec.cluster`, another node's pod, …);
//! - not concerned: other users' requests, and the `status` subresource.
//!
//! cel-rust interprets CEL without Kubernetes' type checker: a type error the API server would
//! refuse when the policy is created is not caught here (see docs/decisions.md); the
//! expressions keep to the standard macros and functions both implement.

#[path = "../../slice-node/tests/network_status_support/mod.rs"]
mod network_status_support;
#[path = "../../slice-operator/tests/worker_support/mod.rs"]
mod worker_support;

mod common;
use common::KUBECONFIG;

use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use serde_json::{Value, json};
use slice_api::rbac::request_attributes;
use slice_operator::access::{NODE_AGENT, WORKER_CLUSTER, WORKER_HUB};
use slice_operator::node_agent::network_status::{Outcome, StatusPublisher};
use slice_operator::worker::Worker;
use slice_operator::worker::decide::Settings;
use slice_operator::worker::keys::KeyPair;
use slicectl::install::admission_policy::NODE_NAME_EXTRA;
use slicectl::manifest::{parse_documents, round_trip};
use worker_support::{FakeApi, Side};

const HUB_CONTROLLER: &str = "system:serviceaccount:slicenet-system:slicenet-hub";
const WORKER: &str = "system:serviceaccount:slicenet-system:slicenet-worker";
const WORKER_ON_HUB: &str = "system:serviceaccount:slicenet-cluster-c2:slicenet-worker";
const NODE_AGENT_USER: &str = "system:serviceaccount:slicenet-node:slicenet-node-agent";
const ADMIN: &str = "kubernetes-admin";

const WS: &str = "/apis/slicenet.io/v1alpha1/namespaces/slicenet-cluster-c2/workerslices";
const NADS: &str = "/apis/k8s.cni.cncf.io/v1/namespaces/shop/network-attachment-definitions";
const MC: &str = "/apis/slicenet.io/v1alpha1/memberclusters/c2";
const NOW: &str = "2026-11-23T20:00:00Z";

fn slicectl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl")).args(args).output().unwrap();
    assert!(out.status.success(), "slicectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The policies of a printed manifest, each checked to have its Deny binding.
fn policies(yaml: &str) -> Vec<ValidatingAdmissionPolicy> {
    let docs = parse_documents(yaml).unwrap();
    let kind = |d: &yaml_serde::Value, k: &str| {
        d["apiVersion"].as_str() == Some("admissionregistration.k8s.io/v1") && d["kind"].as_str() == Some(k)
    };
    let policies: Vec<ValidatingAdmissionPolicy> =
        docs.iter().filter(|d| kind(d, "ValidatingAdmissionPolicy")).map(|d| round_trip(d).unwrap()).collect();
    let bindings: Vec<ValidatingAdmissionPolicyBinding> =
        docs.iter().filter(|d| kind(d, "ValidatingAdmissionPolicyBinding")).map(|d| round_trip(d).unwrap()).collect();
    assert_eq!(policies.len(), bindings.len(), "one binding per policy");
    for p in &policies {
        let name = p.metadata.name.clone().unwrap();
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"), "{name}");
        let conditions = spec.match_conditions.as_deref().unwrap_or_default();
        assert!(
            conditions.iter().any(|c| c.expression.contains("request.userInfo.username")),
            "{name} is keyed on the requesting account"
        );
        for v in spec.validations.iter().flatten() {
            assert!(v.message.is_some() && v.message_expression.is_some(), "{name}: {}", v.expression);
        }
        let b = bindings.iter().find(|b| b.spec.policy_name == name).unwrap_or_else(|| panic!("{name} is not bound"));
        assert_eq!(b.spec.validation_actions, ["Deny"], "{name}");
        assert!(b.spec.param_ref.is_none() && b.spec.match_resources.is_none(), "{name}");
    }
    policies
}

fn hub_policies() -> Vec<ValidatingAdmissionPolicy> {
    policies(&slicectl(&["install", "hub"]))
}

fn member_policies() -> Vec<ValidatingAdmissionPolicy> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.yaml");
    std::fs::write(&path, KUBECONFIG).unwrap();
    policies(&slicectl(&["install", "worker", "--cluster", "c2", "--hub-kubeconfig", path.to_str().unwrap()]))
}

// ---- CEL -----------------------------------------------------------------------------------

fn cel_value(v: &Value) -> cel::Value {
    cel::to_value(v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// Evaluates `expr` with `vars` bound.
fn eval(expr: &str, vars: &[(&str, cel::Value)]) -> Result<cel::Value, String> {
    let env = Arc::new(cel::Env::stdlib());
    let program = env.compile(expr).map_err(|e| format!("parsing {expr:?}: {e}"))?;
    let mut ctx = cel::Context::with_env(env);
    for (name, value) in vars {
        ctx.add_variable_from_value(*name, value.clone());
    }
    program.execute(&ctx).map_err(|e| format!("evaluating {expr:?}: {e}"))
}

/// One admission request as a policy sees it.
#[derive(Debug, Clone)]
struct Admission {
    operation: &'static str,
    group: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
    user: String,
    /// `request.userInfo.extra`.
    extra: Option<Value>,
    /// `object`: null on DELETE.
    object: Value,
    /// `oldObject`: null on CREATE.
    old_object: Value,
}

impl Admission {
    fn request(&self) -> Value {
        let mut user_info = json!({"username": self.user, "groups": ["system:authenticated"]});
        if let Some(extra) = &self.extra {
            user_info["extra"] = extra.clone();
        }
        let mut r = json!({
            "operation": self.operation,
            "resource": {"group": self.group, "version": "v1", "resource": self.resource},
            "name": self.name,
            "namespace": self.namespace,
            "userInfo": user_info,
        });
        if !self.subresource.is_empty() {
            r["subResource"] = json!(self.subresource);
        }
        r
    }

    fn with_user(mut self, user: &str) -> Self {
        user.clone_into(&mut self.user);
        self
    }
}

/// What the policies say about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// No policy applies to it.
    NotConcerned,
    /// The named policies applied and allowed it.
    Allowed(Vec<String>),
    /// Policy `.0` refused it with message `.1`.
    Refused(String, String),
}

/// What the API server does with `a` under `policies`: each policy whose resource rules and
/// match conditions select it evaluates its variables and validations in order; the first
/// false validation refuses with its message expression (or its message, if that fails). An
/// expression that cannot be evaluated refuses (`failurePolicy: Fail`).
fn admit(policies: &[ValidatingAdmissionPolicy], a: &Admission) -> Verdict {
    let mut applied = Vec::new();
    let base = [
        ("object", cel_value(&a.object)),
        ("oldObject", cel_value(&a.old_object)),
        ("request", cel_value(&a.request())),
    ];
    for p in policies {
        let name = p.metadata.name.clone().unwrap();
        let spec = p.spec.as_ref().unwrap();
        let rules = spec.match_constraints.as_ref().and_then(|m| m.resource_rules.as_deref()).unwrap_or_default();
        let selected = rules.iter().any(|r| {
            let has = |list: &Option<Vec<String>>, v: &str| list.iter().flatten().any(|x| x == v || x == "*");
            let resource =
                if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
            has(&r.api_groups, &a.group) && has(&r.resources, &resource) && has(&r.operations, a.operation)
        });
        if !selected {
            continue;
        }
        let mut matched = true;
        for c in spec.match_conditions.iter().flatten() {
            match eval(&c.expression, &base) {
                Ok(cel::Value::Bool(b)) => matched &= b,
                other => return Verdict::Refused(name, format!("match condition {}: {other:?}", c.name)),
            }
        }
        if !matched {
            continue;
        }
        // Variables, each seeing the ones before it (the API server evaluates them lazily; ours
        // never fail, so evaluating all of them first gives the same results).
        let mut variables = serde_json::Map::new();
        let mut vars: Vec<(&str, cel::Value)> = base.to_vec();
        for v in spec.variables.iter().flatten() {
            let mut with_vars = vars.clone();
            with_vars.push(("variables", cel_value(&Value::Object(variables.clone()))));
            match eval(&v.expression, &with_vars) {
                Ok(value) => {
                    variables.insert(v.name.clone(), cel_json(&value));
                }
                Err(e) => return Verdict::Refused(name, format!("variable {}: {e}", v.name)),
            }
        }
        vars.push(("variables", cel_value(&Value::Object(variables))));
        for v in spec.validations.iter().flatten() {
            match eval(&v.expression, &vars) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let message = v.message_expression.as_deref().map(|m| eval(m, &vars));
                    let message = match message {
                        Some(Ok(cel::Value::String(s))) => s.to_string(),
                        Some(other) => panic!("{name}: message expression of {:?} gave {other:?}", v.expression),
                        None => v.message.clone().unwrap_or_default(),
                    };
                    return Verdict::Refused(name, message);
                }
                other => return Verdict::Refused(name, format!("{}: {other:?}", v.expression)),
            }
        }
        applied.push(name);
    }
    if applied.is_empty() { Verdict::NotConcerned } else { Verdict::Allowed(applied) }
}

/// A CEL value (from JSON, a list, a map of strings) back as JSON, to bind it as a variable.
fn cel_json(v: &cel::Value) -> Value {
    match v {
        cel::Value::List(l) => Value::Array(l.iter().map(cel_json).collect()),
        cel::Value::Map(m) => Value::Object(
            m.map
                .iter()
                .map(|(k, v)| {
                    let k = match k {
                        cel::objects::Key::String(s) => s.to_string(),
                        other => panic!("map key {other:?}"),
                    };
                    (k, cel_json(v))
                })
                .collect(),
        ),
        cel::Value::String(s) => json!(s.as_str()),
        cel::Value::Bool(b) => json!(b),
        cel::Value::Int(i) => json!(i),
        cel::Value::UInt(u) => json!(u),
        cel::Value::Float(f) => json!(f),
        cel::Value::Null => Value::Null,
        other => panic!("unexpected CEL value {other:?}"),
    }
}

fn assert_allowed_by(verdict: &Verdict, policy: &str, what: &str) {
    match verdict {
        Verdict::Allowed(names) if names.iter().any(|n| n == policy) => {}
        other => panic!("{what}: expected {policy} to apply and allow it, got {other:?}"),
    }
}

fn assert_refused_by(verdict: &Verdict, policy: &str, message_has: &[&str], what: &str) {
    match verdict {
        Verdict::Refused(name, message) if name == policy => {
            for part in message_has {
                assert!(message.contains(part), "{what}: message {message:?} lacks {part:?}");
            }
        }
        other => panic!("{what}: expected {policy} to refuse it, got {other:?}"),
    }
}

// ---- requests ------------------------------------------------------------------------------

fn patched(old: &Value, patch: &Value) -> Value {
    // RFC 7386, as the fake API servers apply merge patches and (for the worker's flat
    // objects) server-side applies.
    let mut new = old.clone();
    json_patch::merge(&mut new, patch);
    new
}

/// The admission request of an HTTP write `method path` with `body`, by `user`, on an object
/// that was `old` (None: absent) before it.
fn admission(method: &str, path: &str, body: &Value, old: Option<&Value>, user: &str) -> Admission {
    let attrs = request_attributes(method, path).unwrap_or_else(|| panic!("{method} {path}"));
    let (operation, object, old_object) = match (method, old) {
        ("DELETE", Some(old)) => ("DELETE", Value::Null, old.clone()),
        ("POST", None) | ("PATCH", None) => ("CREATE", body.clone(), Value::Null),
        ("PATCH", Some(old)) => ("UPDATE", patched(old, body), old.clone()),
        other => panic!("no admission request for {other:?} {path}"),
    };
    let name = attrs.name.clone().unwrap_or_default();
    // The API server gives a Namespace's own name as the request's namespace.
    let namespace = attrs
        .namespace
        .clone()
        .unwrap_or_else(|| if attrs.resource == "namespaces" { name.clone() } else { String::new() });
    Admission {
        operation,
        group: attrs.group.clone(),
        resource: attrs.resource.clone(),
        subresource: attrs.subresource.clone(),
        namespace,
        name,
        user: user.to_owned(),
        extra: None,
        object,
        old_object,
    }
}

// ---- the worker's real writes --------------------------------------------------------------

fn worker_slice() -> Value {
    json!({
        "apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
        "metadata": {"name": "blue", "namespace": "slicenet-cluster-c2", "generation": 1},
        "spec": {
            "slice": "blue", "cluster": "c2", "sliceSubnet": "10.80.0.0/16",
            "clusterPrefix": "10.80.16.0/20", "nodePrefixLength": 26, "vni": 100,
            "namespaces": ["shop"],
            "peers": [{"cluster": "c1", "prefix": "10.80.0.0/20",
                       "publicKey": "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", "endpoint": "198.18.100.1:31820"}],
        },
    })
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// A hub with WorkerSlice `blue` and MemberCluster `c2` (Multus on), a cluster with nodes n1,
/// n2 and namespaces shop (enforcing the baseline Pod Security level), db, default and
/// slicenet-system.
fn fixture() -> FakeApi {
    let api = FakeApi::new(WORKER_HUB, "slicenet-cluster-c2", WORKER_CLUSTER, "slicenet-system");
    api.put(Side::Hub, worker_slice());
    api.put(
        Side::Hub,
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": "c2"},
               "spec": {"multus": true}, "status": {"gatewayAddresses": ["198.18.100.2"]}}),
    );
    for (node, ip) in [("n1", "198.18.2.11"), ("n2", "198.18.2.12")] {
        api.put(
            Side::Cluster,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                   "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
        );
    }
    api.put(Side::Cluster, namespace("shop", json!({"pod-security.kubernetes.io/enforce": "baseline"})));
    api.put(Side::Cluster, namespace("db", json!({"team": "data"})));
    api.put(Side::Cluster, namespace("default", json!({})));
    api.put(Side::Cluster, namespace("slicenet-system", json!({"pod-security.kubernetes.io/enforce": "privileged"})));
    api
}

/// One worker pass; returns each write as the admission request the API server would make of
/// it (by the worker's account on each side), with the HTTP line.
async fn worker_pass(api: &FakeApi) -> Vec<(String, Side, Admission)> {
    // Every object before the pass: the worker writes each at most once per pass.
    let before = |side: Side, path: &str| api.get(side, path);
    let snapshot: Vec<(Side, String, Value)> = [Side::Hub, Side::Cluster]
        .into_iter()
        .flat_map(|side| api.paths(side, "/").into_iter().map(move |p| (side, p)))
        .filter_map(|(side, p)| before(side, &p).map(|v| (side, p, v)))
        .collect();
    let (hub, local) = api.clients();
    let worker = Worker::with_key_source(
        hub,
        local,
        Settings { cluster: "c2".into(), ..Settings::default() },
        Box::new(|_| KeyPair {
            private_key: "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".into(),
            public_key: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=".into(),
        }),
    )
    .with_metrics_source(api.metrics_source());
    worker.reconcile_once("c2", NOW).await.expect("the worker's pass");
    drop(worker);
    assert_eq!(api.violations(), Vec::<String>::new());
    api.take_requests()
        .into_iter()
        .filter(|r| r.is_write() && !r.is_event() && r.status < 300)
        .map(|r| {
            let old = snapshot.iter().find(|(s, p, _)| *s == r.side && *p == r.path).map(|(_, _, v)| v);
            let user = if r.side == Side::Hub { WORKER_ON_HUB } else { WORKER };
            (r.line(), r.side, admission(&r.method, &r.path, &r.body, old, user))
        })
        .collect()
}

/// Every write of the pass passes every policy of its side; returns the names of the policies
/// that applied to at least one write.
fn assert_all_allowed(
    writes: &[(String, Side, Admission)],
    hub: &[ValidatingAdmissionPolicy],
    member: &[ValidatingAdmissionPolicy],
) -> Vec<String> {
    let mut applied = Vec::new();
    for (line, side, a) in writes {
        let policies = if *side == Side::Hub { hub } else { member };
        match admit(policies, a) {
            Verdict::Allowed(names) => applied.extend(names),
            Verdict::NotConcerned => {}
            refused @ Verdict::Refused(..) => panic!("the worker's own write {line} is refused: {refused:?}"),
        }
    }
    applied.sort();
    applied.dedup();
    applied
}

fn find<'a>(writes: &'a [(String, Side, Admission)], line: &str) -> &'a Admission {
    writes
        .iter()
        .find(|(l, _, _)| l == line)
        .map(|(_, _, a)| a)
        .unwrap_or_else(|| panic!("no write {line} in {:?}", writes.iter().map(|w| &w.0).collect::<Vec<_>>()))
}

#[tokio::test]
async fn the_workers_real_writes_pass_and_their_forbidden_variants_are_refused() {
    let hub = hub_policies();
    let member = member_policies();
    let api = fixture();

    // First pass: finalizer, namespace label, NAD (apply that creates), status.
    let writes = worker_pass(&api).await;
    let applied = assert_all_allowed(&writes, &hub, &member);
    assert_eq!(
        applied,
        [
            "slicenet-worker-hub-workerslices",
            "slicenet-worker-namespaces",
            "slicenet-worker-network-attachment-definitions"
        ]
    );
    // The status subresource is no policy's concern: the API server ignores all but status there.
    assert_eq!(admit(&hub, find(&writes, &format!("hub PATCH {WS}/blue/status"))), Verdict::NotConcerned);

    // The namespace label patch, and variants of it.
    let label = find(&writes, "PATCH /api/v1/namespaces/shop").clone();
    assert_eq!(label.object["metadata"]["labels"]["slicenet.io/slice"], "blue");
    assert_eq!(label.object["metadata"]["annotations"]["slicenet.io/labelled-by"], "slicenet-worker");
    let policy = "slicenet-worker-namespaces";
    let mut privileged = label.clone();
    privileged.object["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = json!("privileged");
    assert_refused_by(
        &admit(&member, &privileged),
        policy,
        &["only the label slicenet.io/slice", "namespace shop"],
        "raising shop's Pod Security level",
    );
    let mut unenforced = label.clone();
    unenforced.object["metadata"]["labels"].as_object_mut().unwrap().remove("pod-security.kubernetes.io/enforce");
    assert_refused_by(&admit(&member, &unenforced), policy, &["another label"], "removing shop's Pod Security label");
    let mut annotated = label.clone();
    annotated.object["metadata"]["annotations"]["owner"] = json!("me");
    assert_refused_by(&admit(&member, &annotated), policy, &["another annotation"], "another annotation");
    let mut marker = label.clone();
    marker.object["metadata"]["annotations"]["slicenet.io/labelled-by"] = json!("someone");
    assert_refused_by(&admit(&member, &marker), policy, &["only to slicenet-worker"], "a forged marker");
    let mut finalized = label.clone();
    finalized.object["metadata"]["finalizers"] = json!(["example.com/keep"]);
    assert_refused_by(&admit(&member, &finalized), policy, &["finalizers or owners"], "a namespace finalizer");
    // The same patch on slicenet's own namespace: it never joins a slice.
    let system = api.get(Side::Cluster, "/api/v1/namespaces/slicenet-system").unwrap();
    let body = json!({"metadata": {"labels": {"slicenet.io/slice": "blue"},
                                    "annotations": {"slicenet.io/labelled-by": "slicenet-worker"}}});
    let joins = admission("PATCH", "/api/v1/namespaces/slicenet-system", &body, Some(&system), WORKER);
    assert_refused_by(&admit(&member, &joins), policy, &["slicenet-system", "never join"], "slicenet-system joining");
    // A cluster admin's Pod Security change is not this policy's business.
    assert_eq!(admit(&member, &privileged.clone().with_user(ADMIN)), Verdict::NotConcerned);

    // The NAD the worker applied (created), and variants.
    let nad = find(&writes, &format!("PATCH {NADS}/slice-blue")).clone();
    assert_eq!(nad.operation, "CREATE");
    let policy = "slicenet-worker-network-attachment-definitions";
    let mut unlabelled = nad.clone();
    unlabelled.object["metadata"]["labels"].as_object_mut().unwrap().remove("app.kubernetes.io/managed-by");
    assert_refused_by(
        &admit(&member, &unlabelled),
        policy,
        &["must keep the label", "shop/slice-blue"],
        "an unlabelled NAD",
    );
    let stored = api.get(Side::Cluster, &format!("{NADS}/slice-blue")).unwrap();
    let relabel = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "helm"}}});
    let taken = admission("PATCH", &format!("{NADS}/slice-blue"), &relabel, Some(&stored), WORKER);
    assert_refused_by(&admit(&member, &taken), policy, &["must keep the label"], "giving its NAD away");
    let macvlan = json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                         "metadata": {"name": "macvlan", "namespace": "shop", "labels": {"team": "net"}},
                         "spec": {"config": "{}"}});
    let delete = admission("DELETE", &format!("{NADS}/macvlan"), &Value::Null, Some(&macvlan), WORKER);
    assert_refused_by(
        &admit(&member, &delete),
        policy,
        &["only the NetworkAttachmentDefinitions labelled", "shop/macvlan is not one"],
        "deleting someone else's NAD",
    );
    let mut overwrite = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "slicenet-worker"}}});
    overwrite["spec"] = json!({"config": "{\"type\": \"slice-cni\"}"});
    let seized = admission("PATCH", &format!("{NADS}/macvlan"), &overwrite, Some(&macvlan), WORKER);
    assert_refused_by(&admit(&member, &seized), policy, &["shop/macvlan is not one"], "taking over someone else's NAD");
    assert_eq!(admit(&member, &delete.clone().with_user(ADMIN)), Verdict::NotConcerned);

    // The finalizer patch on the hub, and the issue-20 hijack: c2 claims to be c1.
    let finalizer = find(&writes, &format!("hub PATCH {WS}/blue")).clone();
    assert_eq!(finalizer.object["metadata"]["finalizers"], json!(["slicenet.io/worker"]));
    let policy = "slicenet-worker-hub-workerslices";
    let mut hijack = finalizer.clone();
    hijack.object["spec"]["cluster"] = json!("c1");
    assert_refused_by(
        &admit(&hub, &hijack),
        policy,
        &["may not change the spec", "slicenet-cluster-c2/blue"],
        "spec.cluster = c1",
    );
    let mut peers = finalizer.clone();
    peers.object["spec"]["peers"][0]["endpoint"] = json!("198.18.9.9:51820");
    assert_refused_by(&admit(&hub, &peers), policy, &["may not change the spec"], "a peer's endpoint");
    let mut hub_finalizer = finalizer.clone();
    hub_finalizer.old_object["metadata"]["finalizers"] = json!(["slicenet.io/hub"]);
    assert_refused_by(
        &admit(&hub, &hub_finalizer),
        policy,
        &["only its own finalizer"],
        "dropping the hub's finalizer",
    );
    let mut labelled = finalizer.clone();
    labelled.object["metadata"]["labels"] = json!({"slicenet.io/cluster": "c1"});
    assert_refused_by(&admit(&hub, &labelled), policy, &["labels, annotations or owners"], "a label");
    let mut elsewhere = finalizer.clone();
    elsewhere.namespace = "slicenet-cluster-c3".into();
    assert_refused_by(
        &admit(&hub, &elsewhere),
        policy,
        &["own namespace", "slicenet-cluster-c3/blue"],
        "another cluster's WorkerSlice",
    );
    // The hub controller (the planner) changes specs: not this policy's business.
    assert_eq!(admit(&hub, &hijack.clone().with_user(HUB_CONTROLLER)), Verdict::NotConcerned);

    // Second pass: shop leaves the slice (the worker removes its label), db joins, Multus off
    // (the worker deletes its NAD).
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| {
        ws["spec"]["namespaces"] = json!(["db"]);
        ws["metadata"]["generation"] = json!(2);
    });
    api.edit(Side::Hub, MC, |mc| mc["spec"]["multus"] = json!(false));
    let writes = worker_pass(&api).await;
    let unlabel = find(&writes, "PATCH /api/v1/namespaces/shop");
    assert!(unlabel.object["metadata"]["labels"].get("slicenet.io/slice").is_none());
    assert_eq!(unlabel.object["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "baseline");
    assert_eq!(find(&writes, &format!("DELETE {NADS}/slice-blue")).operation, "DELETE");
    find(&writes, "PATCH /api/v1/namespaces/db");
    let applied = assert_all_allowed(&writes, &hub, &member);
    assert_eq!(applied, ["slicenet-worker-namespaces", "slicenet-worker-network-attachment-definitions"]);

    // Third pass: the slice is deleted; the worker cleans up and removes its finalizer.
    api.edit(Side::Hub, &format!("{WS}/blue"), |ws| ws["metadata"]["deletionTimestamp"] = json!(NOW));
    let writes = worker_pass(&api).await;
    let removed = find(&writes, &format!("hub PATCH {WS}/blue"));
    assert_eq!(removed.object["metadata"]["finalizers"], json!([]));
    let applied = assert_all_allowed(&writes, &hub, &member);
    assert!(applied.contains(&"slicenet-worker-hub-workerslices".to_owned()), "{applied:?}");
}

// ---- the node agent's real patch -----------------------------------------------------------

fn pod(name: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("u-{name}"),
                        "labels": {"app": "web"},
                        "annotations": {"slicenet.io/slice": "blue",
                                        "k8s.v1.cni.cncf.io/network-status":
                                            json!([{"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.5"]}]).to_string()}},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
           "status": {"phase": "Running"}})
}

/// The patch the node agent of n1 sends for pod shop/web (on n1), from a slice-cni record.
async fn node_agent_patch() -> (Value, Value) {
    let api = network_status_support::FakePods::new(NODE_AGENT, "slicenet-node");
    let web = pod("web", "n1");
    api.put(web.clone());
    let old = api.get("/api/v1/namespaces/shop/pods/web").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let record = json!({"containerID": "c1", "network": "k8s-pod-network", "namespace": "shop", "pod": "web",
                        "podUid": "u-web",
                        "networkStatus": [{"name": "shop/slice-blue", "interface": "slice0", "ips": ["10.80.16.9"]}]});
    std::fs::write(dir.path().join("c1.json"), serde_json::to_vec(&record).unwrap()).unwrap();
    let client = api.client();
    let mut publisher = StatusPublisher::new(client, dir.path().to_owned(), "n1".to_owned());
    let report = publisher.scan(false).await.unwrap();
    assert_eq!(report.pods.get("shop/web"), Some(&Outcome::Patched), "{report:?}");
    let patch = api.take_requests().into_iter().find(|r| r.method == "PATCH").expect("the agent's patch").body;
    assert_eq!(api.violations(), Vec::<String>::new());
    (old, patch)
}

fn node_extra(node: &str) -> Option<Value> {
    Some(json!({NODE_NAME_EXTRA: [node], "authentication.kubernetes.io/pod-name": ["slicenet-node-agent-x"]}))
}

#[tokio::test]
async fn the_node_agent_patches_only_network_status_on_its_own_node() {
    let member = member_policies();
    let policy = "slicenet-node-agent-pods";
    let (old, patch) = node_agent_patch().await;
    let path = "/api/v1/namespaces/shop/pods/web";
    let mut own = admission("PATCH", path, &patch, Some(&old), NODE_AGENT_USER);
    own.extra = node_extra("n1");
    assert_allowed_by(&admit(&member, &own), policy, "the agent's patch on its node");

    // The same patch from the agent of n2 (or of n1 on a pod of n2).
    let mut other = own.clone();
    other.extra = node_extra("n2");
    assert_refused_by(&admit(&member, &other), policy, &["node n2", "pod shop/web on node n1"], "another node's pod");
    // A token without the node claim (a legacy Secret token) gets nothing.
    let mut legacy = own.clone();
    legacy.extra = None;
    assert_refused_by(&admit(&member, &legacy), policy, &["(none in its token)"], "a token without its node");
    // Other fields.
    let mut annotated = own.clone();
    annotated.object["metadata"]["annotations"]["slicenet.io/slice"] = json!("red");
    assert_refused_by(&admit(&member, &annotated), policy, &["another annotation", "shop/web"], "the slice annotation");
    let mut labelled = own.clone();
    labelled.object["metadata"]["labels"]["app"] = json!("db");
    assert_refused_by(&admit(&member, &labelled), policy, &["labels, finalizers, owners or spec"], "a label");
    let mut image = own.clone();
    image.object["spec"]["containers"][0]["image"] = json!("evil");
    assert_refused_by(&admit(&member, &image), policy, &["spec"], "the image");
    // Someone else patching pods is not this policy's business.
    assert_eq!(admit(&member, &image.clone().with_user(ADMIN)), Verdict::NotConcerned);
}

#[test]
fn the_node_agent_writes_only_its_own_nodes_lease() {
    let member = member_policies();
    let policy = "slicenet-node-agent-leases";
    let now = "2026-12-04T20:00:00Z".parse().unwrap();
    // The object the agent applies (its own code), first created then renewed.
    let lease = slice_operator::node_agent::lease::lease("n1", "0.4.0", Some("chained"), now);
    let path = "/apis/coordination.k8s.io/v1/namespaces/slicenet-node/leases/slicenet-agent-n1";
    let mut create = admission("PATCH", path, &lease, None, NODE_AGENT_USER);
    create.extra = node_extra("n1");
    assert_allowed_by(&admit(&member, &create), policy, "creating its Lease");
    let mut renew = admission("PATCH", path, &lease, Some(&lease), NODE_AGENT_USER);
    renew.extra = node_extra("n1");
    assert_allowed_by(&admit(&member, &renew), policy, "renewing its Lease");
    // The agent of n2 writing n1's Lease (to pass a dead agent off as alive).
    let mut other = renew.clone();
    other.extra = node_extra("n2");
    assert_refused_by(&admit(&member, &other), policy, &["node n2", "slicenet-node/slicenet-agent-n1"], "n1's Lease");
    let mut legacy = renew.clone();
    legacy.extra = None;
    assert_refused_by(&admit(&member, &legacy), policy, &["(none in its token)"], "a token without its node");
    assert_eq!(admit(&member, &renew.with_user(ADMIN)), Verdict::NotConcerned);
}

#[test]
fn the_hub_controller_creates_and_deletes_only_cluster_namespaces() {
    let hub = hub_policies();
    let policy = "slicenet-hub-namespaces";
    let ns = slice_api::crd::cluster_namespace("east");
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    let create = admission("POST", "/api/v1/namespaces", &body, None, HUB_CONTROLLER);
    let create = Admission { name: ns.clone(), namespace: ns.clone(), ..create };
    assert_allowed_by(&admit(&hub, &create), policy, "creating a cluster namespace");
    let delete = admission("DELETE", &format!("/api/v1/namespaces/{ns}"), &Value::Null, Some(&body), HUB_CONTROLLER);
    assert_allowed_by(&admit(&hub, &delete), policy, "deleting a cluster namespace");

    let kube_system = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}});
    let delete =
        admission("DELETE", "/api/v1/namespaces/kube-system", &Value::Null, Some(&kube_system), HUB_CONTROLLER);
    assert_refused_by(
        &admit(&hub, &delete),
        policy,
        &["only the namespaces slicenet-cluster-<cluster>", "kube-system"],
        "deleting kube-system",
    );
    let shop = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}});
    let create =
        Admission { name: "shop".into(), ..admission("POST", "/api/v1/namespaces", &shop, None, HUB_CONTROLLER) };
    assert_refused_by(&admit(&hub, &create), policy, &["not shop"], "creating shop");
    assert_eq!(admit(&hub, &delete.with_user(ADMIN)), Verdict::NotConcerned);
}

/// The evaluator is not blind: an expression that cannot hold refuses, and one that cannot be
/// evaluated refuses too (as `failurePolicy: Fail` does).
#[test]
fn the_evaluator_refuses_false_and_failing_expressions() {
    assert!(matches!(eval("has({'a': 1}.a) && !has({'a': 1}.b)", &[]), Ok(cel::Value::Bool(true))));
    assert!(matches!(eval("{'a': 'x'}.all(k, k in {'a': 'y'})", &[]), Ok(cel::Value::Bool(true))));
    assert!(matches!(eval("['x', 'y'].filter(f, f != 'x') == ['y']", &[]), Ok(cel::Value::Bool(true))));
    assert!(matches!(eval("{'a': [1, {'b': 2}]} == {'a': [1, {'b': 3}]}", &[]), Ok(cel::Value::Bool(false))));
    assert!(matches!(eval("true || {}.missing", &[]), Ok(cel::Value::Bool(true))));
    assert!(eval("{}.missing == 1", &[]).is_err());
    let mut p = member_policies().remove(0);
    let a = Admission {
        operation: "UPDATE",
        group: String::new(),
        resource: "namespaces".into(),
        subresource: String::new(),
        namespace: "shop".into(),
        name: "shop".into(),
        user: WORKER.into(),
        extra: None,
        object: namespace("shop", json!({})),
        old_object: namespace("shop", json!({})),
    };
    assert!(matches!(admit(std::slice::from_ref(&p), &a), Verdict::Allowed(_)));
    let spec = p.spec.as_mut().unwrap();
    spec.validations.as_mut().unwrap()[0].expression = "object.metadata.missing == 1".into();
    assert!(matches!(admit(std::slice::from_ref(&p), &a), Verdict::Refused(..)));
}
