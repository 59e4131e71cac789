//! ValidatingAdmissionPolicies (`admissionregistration.k8s.io/v1`, GA since Kubernetes 1.30)
//! that narrow what RBAC cannot: RBAC names verbs and resources (at most by object name), never
//! which labels, annotations or fields a patch may touch, nor which node's pods. Each policy
//! applies only to requests of one slicenet ServiceAccount (`matchConditions` on
//! `request.userInfo.username`), refuses with `failurePolicy: Fail` (an expression that cannot
//! be evaluated refuses too), and its binding acts with `validationActions: [Deny]`.
//!
//! - [`hub`] (`install hub`): the hub controller creates and deletes only the namespaces
//!   `slicenet-cluster-<cluster>`; a worker's hub credential (any `slicenet-cluster-*`
//!   namespace's `slicenet-worker`) changes on its WorkerSlices' main resource only its own
//!   finalizer: never `spec` (the hub's plan: cluster, slice, peers), labels, annotations or
//!   owners. Its status goes through the `status` subresource, where the API server ignores
//!   every other field.
//! - [`member`] (`install worker`): the worker sets or removes only the `slicenet.io/slice`
//!   label and its `slicenet.io/labelled-by` annotation on namespaces (never a Pod Security
//!   label), never adds `slicenet-system` or `slicenet-gateway` to a slice, and writes or
//!   deletes only the NetworkAttachmentDefinitions labelled as its own, keeping that label;
//!   each node agent patches only pods on its own node, and only their
//!   `k8s.v1.cni.cncf.io/network-status` annotation, and writes only its own node's Lease.
//!
//! What stays: reads are not admission requests (the node agent still reads every pod, the
//! worker lists every pod for `connectedPods`).
//!
//! The expressions are plain CEL (`has`, `in`, `all`, `filter`, `startsWith`, `endsWith`,
//! conditionals), without Kubernetes' extension libraries; `slicectl/tests/admission_policies.rs`
//! evaluates every one against the requests the controllers really send and against refused
//! ones.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, Validation,
    Variable,
};
use slice_api::crd::{CLUSTER_NAMESPACE_PREFIX, SYSTEM_NAMESPACE, WORKER_FINALIZER};
use slice_api::names::{AGENT_LEASE_PREFIX, NODE_NAMESPACE, RESERVED_NAMESPACES};
use slice_api::names::{NETWORK_STATUS_ANNOTATION, SLICE_LABEL};
use slice_operator::worker::objects::{LABELLED_BY_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};

use super::objects::meta;
use super::{HUB_NAME, NODE_AGENT_NAME, WORKER_NAME};
use crate::manifest::{Manifest, Result};

/// The user-info extra key of a ServiceAccount token bound to a pod that names the pod's node.
/// The API server adds it (feature `ServiceAccountTokenPodNodeInfo`: beta and on by default in
/// 1.30, GA and locked on since 1.32), so every supported cluster (1.33 and later) sets it on
/// the node agent's projected token.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The refusal's reason (the HTTP status is 403).
const REASON: &str = "Forbidden";

/// One check of a policy: the CEL expression that must be true, a fixed message, and a message
/// expression naming the object (the fixed message is used if that one fails).
#[derive(Debug, Clone)]
struct Check {
    expression: String,
    message: String,
    message_expression: String,
}

/// What a policy applies to and checks.
#[derive(Debug, Clone)]
struct Policy {
    name: String,
    /// The first comment line printed above it (the second points to docs/security.md).
    note: &'static str,
    /// CEL on `request`: whose requests it checks.
    who: String,
    /// (API group, resource, operations).
    rules: Vec<(&'static str, &'static str, &'static [&'static str])>,
    /// (name, CEL), usable in the checks as `variables.<name>`.
    variables: Vec<(&'static str, String)>,
    checks: Vec<Check>,
}

/// The username of ServiceAccount `name` in `namespace`.
#[must_use]
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// `'text'` as a CEL string literal (our names have no quote or backslash).
fn lit(text: &str) -> String {
    debug_assert!(!text.contains(['\'', '\\']));
    format!("'{text}'")
}

/// `obj.metadata.<field>`, or `empty` when the field is absent (the API leaves out an empty
/// map or list).
fn or_empty(obj: &str, field: &str, empty: &str) -> String {
    format!("(has({obj}.metadata.{field}) ? {obj}.metadata.{field} : {empty})")
}

/// The list or map `metadata.<field>` is the same in `object` and `oldObject`.
fn unchanged(field: &str, empty: &str) -> String {
    format!("{} == {}", or_empty("object", field, empty), or_empty("oldObject", field, empty))
}

/// The maps `variables.<new>` and `variables.<old>` differ at most in key `key`.
fn same_but(new: &str, old: &str, key: &str) -> String {
    let key = lit(key);
    format!(
        "variables.{new}.all(k, k == {key} || (k in variables.{old} && variables.{old}[k] == variables.{new}[k])) \
         && variables.{old}.all(k, k == {key} || k in variables.{new})"
    )
}

/// `obj` carries the worker's `app.kubernetes.io/managed-by` label.
fn managed_by_worker(obj: &str) -> String {
    let (label, value) = (lit(MANAGED_BY_LABEL), lit(MANAGED_BY));
    format!(
        "has({obj}.metadata.labels) && {label} in {obj}.metadata.labels && {obj}.metadata.labels[{label}] == {value}"
    )
}

/// CEL for `<namespace>/<name>` of the object a request is about.
const OBJECT_NAME: &str = "request.namespace + '/' + request.name";

fn hub_namespaces() -> Policy {
    let prefix = lit(CLUSTER_NAMESPACE_PREFIX);
    let why = format!("{HUB_NAME} may create and delete only the namespaces {CLUSTER_NAMESPACE_PREFIX}<cluster>");
    Policy {
        name: format!("{HUB_NAME}-namespaces"),
        note: "RBAC lets the hub create and delete namespaces by verb only; this keeps it to its own.",
        who: format!("request.userInfo.username == {}", lit(&service_account_user(SYSTEM_NAMESPACE, HUB_NAME))),
        rules: vec![("", "namespaces", &["CREATE", "DELETE"])],
        variables: vec![],
        checks: vec![
            Check {
                expression: format!("request.operation != 'CREATE' || object.metadata.name.startsWith({prefix})"),
                message: format!("{why}, one per member cluster"),
                message_expression: format!("'{why}, not ' + request.name"),
            },
            Check {
                expression: format!("request.operation != 'DELETE' || oldObject.metadata.name.startsWith({prefix})"),
                message: format!("{why}, one per member cluster"),
                message_expression: format!("'{why}, not ' + request.name"),
            },
        ],
    }
}

fn worker_workerslices() -> Policy {
    let who = format!(
        "request.userInfo.username.startsWith({}) && request.userInfo.username.endsWith({})",
        lit(&format!("system:serviceaccount:{CLUSTER_NAMESPACE_PREFIX}")),
        lit(&format!(":{WORKER_NAME}"))
    );
    let others = |obj: &str| format!("{}.filter(f, f != {})", or_empty(obj, "finalizers", "[]"), lit(WORKER_FINALIZER));
    Policy {
        name: format!("{WORKER_NAME}-hub-workerslices"),
        note: "A worker writes its WorkerSlices' status and its finalizer, never the hub's plan (spec).",
        who,
        rules: vec![("slicenet.io", "workerslices", &["UPDATE"])],
        variables: vec![("newFinalizers", others("object")), ("oldFinalizers", others("oldObject"))],
        checks: vec![
            Check {
                expression: format!(
                    "request.userInfo.username == 'system:serviceaccount:' + request.namespace + ':{WORKER_NAME}'"
                ),
                message: "a member cluster's worker may write only the WorkerSlices of its own namespace".into(),
                message_expression: format!(
                    "request.userInfo.username + ' may write only the WorkerSlices of its own namespace, not WorkerSlice ' + {OBJECT_NAME}"
                ),
            },
            Check {
                expression: "object.spec == oldObject.spec".into(),
                message: "the worker may not change a WorkerSlice's spec: the hub writes it (cluster, slice, peers)"
                    .into(),
                message_expression: format!(
                    "'the worker may not change the spec of WorkerSlice ' + {OBJECT_NAME} + ': the hub writes it (cluster, slice, peers); the \
                     worker writes only status and its finalizer {WORKER_FINALIZER}'"
                ),
            },
            Check {
                expression: "variables.newFinalizers == variables.oldFinalizers".into(),
                message: format!("the worker may add or remove only its own finalizer {WORKER_FINALIZER}"),
                message_expression: format!(
                    "'the worker may add or remove only its own finalizer {WORKER_FINALIZER} on WorkerSlice ' + {OBJECT_NAME}"
                ),
            },
            Check {
                expression: [
                    unchanged("labels", "{}"),
                    unchanged("annotations", "{}"),
                    unchanged("ownerReferences", "[]"),
                ]
                .join(" && "),
                message: "the worker may not change a WorkerSlice's labels, annotations or owners".into(),
                message_expression: format!(
                    "'the worker may not change the labels, annotations or owners of WorkerSlice ' + {OBJECT_NAME}"
                ),
            },
        ],
    }
}

fn worker_namespaces() -> Policy {
    let worker = service_account_user(SYSTEM_NAMESPACE, WORKER_NAME);
    let what = format!("the label {SLICE_LABEL} and the annotation {LABELLED_BY_ANNOTATION}");
    Policy {
        name: format!("{WORKER_NAME}-namespaces"),
        note: "RBAC lets the worker patch any namespace; this keeps it to the slice label and its marker.",
        who: format!("request.userInfo.username == {}", lit(&worker)),
        rules: vec![("", "namespaces", &["UPDATE"])],
        variables: vec![
            ("newLabels", or_empty("object", "labels", "{}")),
            ("oldLabels", or_empty("oldObject", "labels", "{}")),
            ("newAnnotations", or_empty("object", "annotations", "{}")),
            ("oldAnnotations", or_empty("oldObject", "annotations", "{}")),
        ],
        checks: vec![
            Check {
                expression: same_but("newLabels", "oldLabels", SLICE_LABEL),
                message: format!(
                    "{WORKER_NAME} may change on a namespace only {what}: no other label (Pod Security labels included)"
                ),
                message_expression: format!(
                    "'{WORKER_NAME} may change on a namespace only {what}; it changed another label of namespace ' + request.name"
                ),
            },
            Check {
                expression: same_but("newAnnotations", "oldAnnotations", LABELLED_BY_ANNOTATION),
                message: format!("{WORKER_NAME} may change on a namespace only {what}: no other annotation"),
                message_expression: format!(
                    "'{WORKER_NAME} may change on a namespace only {what}; it changed another annotation of namespace ' + request.name"
                ),
            },
            Check {
                expression: format!(
                    "!({key} in variables.newAnnotations) || variables.newAnnotations[{key}] == {value}",
                    key = lit(LABELLED_BY_ANNOTATION),
                    value = lit(MANAGED_BY)
                ),
                message: format!("{WORKER_NAME} may set {LABELLED_BY_ANNOTATION} only to {MANAGED_BY}"),
                message_expression: format!(
                    "'{WORKER_NAME} may set {LABELLED_BY_ANNOTATION} only to {MANAGED_BY}, on namespace ' + request.name"
                ),
            },
            Check {
                expression: format!(
                    "!(object.metadata.name in [{}]) || !({key} in variables.newLabels) || {key} in variables.oldLabels",
                    RESERVED_NAMESPACES.map(lit).join(", "),
                    key = lit(SLICE_LABEL)
                ),
                message: format!("{} never join a slice", RESERVED_NAMESPACES.join(", ")),
                message_expression: format!(
                    "'{WORKER_NAME} may not add namespace ' + request.name + ' to a slice: the namespaces of slicenet never join one'"
                ),
            },
            Check {
                expression: [unchanged("finalizers", "[]"), unchanged("ownerReferences", "[]")].join(" && "),
                message: format!("{WORKER_NAME} may not change a namespace's finalizers or owners"),
                message_expression: format!(
                    "'{WORKER_NAME} may not change the finalizers or owners of namespace ' + request.name"
                ),
            },
        ],
    }
}

fn worker_nads() -> Policy {
    let worker = service_account_user(SYSTEM_NAMESPACE, WORKER_NAME);
    let label = format!("{MANAGED_BY_LABEL}: {MANAGED_BY}");
    Policy {
        name: format!("{WORKER_NAME}-network-attachment-definitions"),
        note: "RBAC lets the worker write any NetworkAttachmentDefinition; this keeps it to its own.",
        who: format!("request.userInfo.username == {}", lit(&worker)),
        rules: vec![("k8s.cni.cncf.io", "network-attachment-definitions", &["CREATE", "UPDATE", "DELETE"])],
        variables: vec![],
        checks: vec![
            Check {
                expression: format!("request.operation == 'CREATE' || ({})", managed_by_worker("oldObject")),
                message: format!(
                    "{WORKER_NAME} may change or delete only the NetworkAttachmentDefinitions labelled {label}"
                ),
                message_expression: format!(
                    "'{WORKER_NAME} may change or delete only the NetworkAttachmentDefinitions labelled {label}; NetworkAttachmentDefinition ' + {OBJECT_NAME} \
                     + ' is not one'"
                ),
            },
            Check {
                expression: format!("request.operation == 'DELETE' || ({})", managed_by_worker("object")),
                message: format!(
                    "{WORKER_NAME} must keep the label {label} on the NetworkAttachmentDefinitions it writes"
                ),
                message_expression: format!(
                    "'{WORKER_NAME} must keep the label {label} on NetworkAttachmentDefinition ' + {OBJECT_NAME}"
                ),
            },
        ],
    }
}

fn node_agent_pods() -> Policy {
    let agent = service_account_user(NODE_NAMESPACE, NODE_AGENT_NAME);
    let node = lit(NODE_NAME_EXTRA);
    Policy {
        name: format!("{NODE_AGENT_NAME}-pods"),
        note: "RBAC lets every node agent patch every pod; this keeps each to its node's pods' network-status.",
        who: format!("request.userInfo.username == {}", lit(&agent)),
        rules: vec![("", "pods", &["UPDATE"])],
        variables: vec![
            (
                "nodeNames",
                format!(
                    "(has(request.userInfo.extra) && {node} in request.userInfo.extra) ? request.userInfo.extra[{node}] : []"
                ),
            ),
            ("newAnnotations", or_empty("object", "annotations", "{}")),
            ("oldAnnotations", or_empty("oldObject", "annotations", "{}")),
        ],
        checks: vec![
            Check {
                expression: "has(oldObject.spec.nodeName) && oldObject.spec.nodeName in variables.nodeNames".into(),
                message: format!(
                    "a node agent may patch only the pods on its own node (its token's {NODE_NAME_EXTRA})"
                ),
                message_expression: format!(
                    "'the node agent of node ' + (variables.nodeNames.size() > 0 ? variables.nodeNames[0] : '(none in its \
                     token)') + ' may patch only pods on that node, not pod ' + {OBJECT_NAME} + ' on node ' + \
                     (has(oldObject.spec.nodeName) ? oldObject.spec.nodeName : '(none)')"
                ),
            },
            Check {
                expression: same_but("newAnnotations", "oldAnnotations", NETWORK_STATUS_ANNOTATION),
                message: format!("a node agent may change on a pod only the annotation {NETWORK_STATUS_ANNOTATION}"),
                message_expression: format!(
                    "'the node agent may change only the annotation {NETWORK_STATUS_ANNOTATION}; it changed another \
                     annotation of pod ' + {OBJECT_NAME}"
                ),
            },
            Check {
                expression: [
                    unchanged("labels", "{}"),
                    unchanged("finalizers", "[]"),
                    unchanged("ownerReferences", "[]"),
                    "object.spec == oldObject.spec".to_owned(),
                ]
                .join(" && "),
                message: format!(
                    "a node agent may change on a pod only the annotation {NETWORK_STATUS_ANNOTATION}: no label, \
                     finalizer, owner or spec field"
                ),
                message_expression: format!(
                    "'the node agent may change only the annotation {NETWORK_STATUS_ANNOTATION}; it changed the labels, \
                     finalizers, owners or spec of pod ' + {OBJECT_NAME}"
                ),
            },
        ],
    }
}

fn node_agent_leases() -> Policy {
    let agent = service_account_user(NODE_NAMESPACE, NODE_AGENT_NAME);
    let node = lit(NODE_NAME_EXTRA);
    let prefix = lit(AGENT_LEASE_PREFIX);
    Policy {
        name: format!("{NODE_AGENT_NAME}-leases"),
        note: "RBAC lets every node agent write every Lease of its namespace; this keeps each to its own node's.",
        who: format!("request.userInfo.username == {}", lit(&agent)),
        rules: vec![("coordination.k8s.io", "leases", &["CREATE", "UPDATE"])],
        variables: vec![(
            "nodeNames",
            format!(
                "(has(request.userInfo.extra) && {node} in request.userInfo.extra) ? request.userInfo.extra[{node}] : []"
            ),
        )],
        checks: vec![Check {
            expression: format!("variables.nodeNames.size() > 0 && request.name == {prefix} + variables.nodeNames[0]"),
            message: format!(
                "a node agent may write only its own node's Lease {AGENT_LEASE_PREFIX}<node> (its token's {NODE_NAME_EXTRA})"
            ),
            message_expression: format!(
                "'the node agent of node ' + (variables.nodeNames.size() > 0 ? variables.nodeNames[0] : '(none in its \
                 token)') + ' may write only the Lease {AGENT_LEASE_PREFIX}<its node>, not ' + {OBJECT_NAME}"
            ),
        }],
    }
}

fn policy_object(p: &Policy) -> ValidatingAdmissionPolicy {
    let rules = p
        .rules
        .iter()
        .map(|(group, resource, operations)| NamedRuleWithOperations {
            api_groups: Some(vec![(*group).to_owned()]),
            api_versions: Some(vec!["*".to_owned()]),
            operations: Some(operations.iter().map(|o| (*o).to_owned()).collect()),
            resources: Some(vec![(*resource).to_owned()]),
            ..NamedRuleWithOperations::default()
        })
        .collect();
    ValidatingAdmissionPolicy {
        metadata: meta(&p.name, None, &p.name),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".to_owned()),
            match_conditions: Some(vec![MatchCondition { name: "requester".to_owned(), expression: p.who.clone() }]),
            match_constraints: Some(MatchResources {
                resource_rules: Some(rules),
                match_policy: Some("Equivalent".to_owned()),
                ..MatchResources::default()
            }),
            variables: (!p.variables.is_empty()).then(|| {
                p.variables
                    .iter()
                    .map(|(name, expression)| Variable { name: (*name).to_owned(), expression: expression.clone() })
                    .collect()
            }),
            validations: Some(
                p.checks
                    .iter()
                    .map(|c| Validation {
                        expression: c.expression.clone(),
                        message: Some(c.message.clone()),
                        message_expression: Some(c.message_expression.clone()),
                        reason: Some(REASON.to_owned()),
                    })
                    .collect(),
            ),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

fn binding(p: &Policy) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: meta(&p.name, None, &p.name),
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: p.name.clone(),
            validation_actions: vec!["Deny".to_owned()],
            ..ValidatingAdmissionPolicyBindingSpec::default()
        },
    }
}

fn manifest(policies: &[Policy]) -> Result<Manifest> {
    let mut m = Manifest::new();
    for p in policies {
        let note = [p.note, "RBAC cannot say which fields or which node may change: see docs/security.md."];
        m.push_commented(&note, &policy_object(p))?;
        m.push(&binding(p))?;
    }
    Ok(m)
}

/// The hub's policies and bindings: the hub controller's namespaces, the workers' WorkerSlices.
///
/// # Errors
/// When an object cannot be serialised.
pub fn hub() -> Result<Manifest> {
    manifest(&[hub_namespaces(), worker_workerslices()])
}

/// A member cluster's policies and bindings: the worker's namespaces and
/// NetworkAttachmentDefinitions, the node agents' pods.
///
/// # Errors
/// When an object cannot be serialised.
pub fn member() -> Result<Manifest> {
    manifest(&[worker_namespaces(), worker_nads(), node_agent_pods(), node_agent_leases()])
}
