//! The pod mutation, pure: given the pod, its namespace's labels and the slices that allow that
//! namespace in this cluster, the JSON Patch to apply (DESIGN.md "Names" and "Contracts").
//!
//! For a pod in a namespace labelled `slicenet.io/slice=<slice>` whose slice allows it here:
//! - the annotation `slicenet.io/slice: <slice>`;
//! - in Multus mode, the slice's NAD in `k8s.v1.cni.cncf.io/networks` (see [`crate::networks`]).
//!
//! Always, whatever the namespace:
//! - the opt-out label `slicenet.io/exclude=true` becomes the annotation (the CNI plugin sees only
//!   annotations), and an opted-out pod gets nothing else;
//! - a hand-set `slicenet.io/slice` annotation naming a slice the namespace does not belong to is
//!   removed, with a warning to the client (an annotation narrows membership, never grants it).
//!
//! Idempotent: run again on its own output it returns an empty patch (`reinvocationPolicy:
//! IfNeeded`).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use slice_api::multus::{NETWORKS_ANNOTATION, nad_name};
use slice_api::names::{EXCLUDE_KEY, SLICE_ANNOTATION, SLICE_LABEL};

use crate::networks::{self, BadNetworks, SliceNetwork};

/// How pods get the slice interface in this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `slice-cni` is chained after the primary CNI and reads the pod annotation.
    Chained,
    /// Multus runs `slice-cni` as a delegate for the NAD listed in the pod's networks annotation.
    Multus,
}

/// What the mutation looks at besides the pod.
#[derive(Debug, Clone, Copy)]
pub struct MutationContext<'a> {
    /// The pod's namespace (from the admission request).
    pub namespace: &'a str,
    /// The namespace's labels.
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// The slices whose `SliceConfig` allows the namespace in this cluster.
    pub member_slices: &'a [String],
    pub mode: Mode,
    /// The slice interface's name in the pod (`slice0`).
    pub interface: &'a str,
}

impl MutationContext<'_> {
    /// The slice the namespace belongs to: its label, when that slice allows it.
    #[must_use]
    pub fn slice(&self) -> Option<&str> {
        let labelled = self.namespace_labels.get(SLICE_LABEL)?;
        self.member_slices.iter().find(|s| *s == labelled).map(String::as_str)
    }
}

/// The result: a patch (empty when there is nothing to do) and warnings for the client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mutation {
    pub patch: Patch,
    pub warnings: Vec<String>,
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Computes the patch for `pod`.
///
/// # Errors
/// [`BadNetworks`] when the pod's own networks annotation is unreadable in Multus mode (the pod
/// would fail at Multus anyway; refusing it says why now).
pub fn mutate(pod: &Pod, ctx: &MutationContext<'_>) -> Result<Mutation, BadNetworks> {
    let current = pod.metadata.annotations.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut desired = current.clone();
    let mut warnings = Vec::new();
    let slice = ctx.slice();

    if let Some(asked) = current.get(SLICE_ANNOTATION)
        && Some(asked.as_str()) != slice
    {
        desired.remove(SLICE_ANNOTATION);
        warnings.push(format!(
            "slicenet removed annotation {SLICE_ANNOTATION}={asked:?}: namespace {} is not a member of slice {asked:?} in this cluster",
            ctx.namespace
        ));
    }

    let excluded = is_true(labels.get(EXCLUDE_KEY)) || is_true(current.get(EXCLUDE_KEY));
    if is_true(labels.get(EXCLUDE_KEY)) && !is_true(current.get(EXCLUDE_KEY)) {
        desired.insert(EXCLUDE_KEY.to_owned(), "true".to_owned());
    }

    if let (Some(slice), false) = (slice, excluded) {
        desired.insert(SLICE_ANNOTATION.to_owned(), slice.to_owned());
        if ctx.mode == Mode::Multus {
            let nad = nad_name(slice);
            let network = SliceNetwork { namespace: ctx.namespace, nad: &nad, interface: ctx.interface };
            if let Some(value) = networks::merge(current.get(NETWORKS_ANNOTATION).map(String::as_str), network)? {
                desired.insert(NETWORKS_ANNOTATION.to_owned(), value);
            }
        }
    }

    let patch = annotations_patch(pod.metadata.annotations.as_ref(), &desired);
    Ok(Mutation { patch, warnings })
}

fn annotation_path(key: &str) -> PointerBuf {
    PointerBuf::from_tokens(["metadata", "annotations", key])
}

/// The JSON Patch that turns the pod's annotations into `desired`.
fn annotations_patch(current: Option<&BTreeMap<String, String>>, desired: &BTreeMap<String, String>) -> Patch {
    let mut ops = Vec::new();
    match current {
        None if desired.is_empty() => {}
        None => ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: serde_json::to_value(desired).expect("string map serializes"),
        })),
        Some(current) => {
            for key in current.keys().filter(|k| !desired.contains_key(*k)) {
                ops.push(PatchOperation::Remove(RemoveOperation { path: annotation_path(key) }));
            }
            for (key, value) in desired {
                match current.get(key) {
                    Some(old) if old == value => {}
                    Some(_) => ops.push(PatchOperation::Replace(ReplaceOperation {
                        path: annotation_path(key),
                        value: Value::String(value.clone()),
                    })),
                    None => ops.push(PatchOperation::Add(AddOperation {
                        path: annotation_path(key),
                        value: Value::String(value.clone()),
                    })),
                }
            }
        }
    }
    Patch(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value, annotations: Value) -> Pod {
        let mut metadata = json!({"name": "web", "namespace": "shop"});
        if !labels.is_null() {
            metadata["labels"] = labels;
        }
        if !annotations.is_null() {
            metadata["annotations"] = annotations;
        }
        serde_json::from_value(json!({"metadata": metadata, "spec": {"containers": [{"name": "c", "image": "i"}]}}))
            .unwrap()
    }

    struct Ns {
        labels: BTreeMap<String, String>,
        members: Vec<String>,
    }

    fn shop_in_blue() -> Ns {
        Ns { labels: BTreeMap::from([(SLICE_LABEL.into(), "blue".into())]), members: vec!["blue".into()] }
    }

    fn ctx(ns: &Ns, mode: Mode) -> MutationContext<'_> {
        MutationContext {
            namespace: "shop",
            namespace_labels: &ns.labels,
            member_slices: &ns.members,
            mode,
            interface: "slice0",
        }
    }

    /// Applies the mutation and returns the pod's annotations afterwards (and checks idempotence).
    fn apply(p: &Pod, c: &MutationContext<'_>) -> (Value, Vec<String>) {
        let m = mutate(p, c).unwrap();
        let mut doc = serde_json::to_value(p).unwrap();
        json_patch::patch(&mut doc, &m.patch).unwrap();
        let after: Pod = serde_json::from_value(doc.clone()).unwrap();
        let again = mutate(&after, c).unwrap();
        assert!(again.patch.0.is_empty(), "not idempotent: {:?}", again.patch);
        (doc["metadata"]["annotations"].clone(), m.warnings)
    }

    #[test]
    fn member_pod_gets_the_slice_annotation() {
        let ns = shop_in_blue();
        let (a, w) = apply(&pod(Value::Null, Value::Null), &ctx(&ns, Mode::Chained));
        assert_eq!(a, json!({"slicenet.io/slice": "blue"}));
        assert!(w.is_empty());
        let (a, _) = apply(&pod(Value::Null, json!({"x": "1"})), &ctx(&ns, Mode::Chained));
        assert_eq!(a, json!({"x": "1", "slicenet.io/slice": "blue"}));
    }

    #[test]
    fn unrelated_pod_gets_no_patch() {
        let none = Ns { labels: BTreeMap::new(), members: vec![] };
        assert!(mutate(&pod(Value::Null, json!({"x": "1"})), &ctx(&none, Mode::Multus)).unwrap().patch.0.is_empty());
        // Labelled, but the slice does not allow the namespace here.
        let not_allowed = Ns { labels: shop_in_blue().labels, members: vec!["red".into()] };
        assert!(mutate(&pod(Value::Null, Value::Null), &ctx(&not_allowed, Mode::Chained)).unwrap().patch.0.is_empty());
    }

    #[test]
    fn exclude_label_becomes_annotation_and_nothing_else() {
        let ns = shop_in_blue();
        let (a, _) = apply(&pod(json!({"slicenet.io/exclude": "true"}), Value::Null), &ctx(&ns, Mode::Multus));
        assert_eq!(a, json!({"slicenet.io/exclude": "true"}));
        let m = mutate(&pod(Value::Null, json!({"slicenet.io/exclude": "TRUE"})), &ctx(&ns, Mode::Chained)).unwrap();
        assert!(m.patch.0.is_empty());
    }

    #[test]
    fn hand_set_foreign_slice_is_removed() {
        let ns = shop_in_blue();
        let (a, w) = apply(&pod(Value::Null, json!({"slicenet.io/slice": "red"})), &ctx(&ns, Mode::Chained));
        assert_eq!(a, json!({"slicenet.io/slice": "blue"}));
        assert!(w[0].contains("namespace shop is not a member of slice \"red\""), "{w:?}");
        let none = Ns { labels: BTreeMap::new(), members: vec![] };
        let (a, _) =
            apply(&pod(Value::Null, json!({"slicenet.io/slice": "red", "k": "v"})), &ctx(&none, Mode::Chained));
        assert_eq!(a, json!({"k": "v"}));
    }

    #[test]
    fn multus_adds_the_network_in_both_forms() {
        let ns = shop_in_blue();
        let (a, _) = apply(&pod(Value::Null, Value::Null), &ctx(&ns, Mode::Multus));
        assert_eq!(a[NETWORKS_ANNOTATION], "shop/slice-blue@slice0");
        let (a, _) = apply(&pod(Value::Null, json!({NETWORKS_ANNOTATION: "macvlan@net1"})), &ctx(&ns, Mode::Multus));
        assert_eq!(a[NETWORKS_ANNOTATION], "macvlan@net1, shop/slice-blue@slice0");
        let (a, _) =
            apply(&pod(Value::Null, json!({NETWORKS_ANNOTATION: r#"[{"name":"macvlan"}]"#})), &ctx(&ns, Mode::Multus));
        assert_eq!(
            a[NETWORKS_ANNOTATION],
            r#"[{"name":"macvlan"},{"name":"slice-blue","namespace":"shop","interface":"slice0"}]"#
        );
        let bad = mutate(&pod(Value::Null, json!({NETWORKS_ANNOTATION: "[nope"})), &ctx(&ns, Mode::Multus));
        assert!(bad.is_err());
    }

    #[test]
    fn keys_with_slashes_are_escaped_in_the_patch() {
        let ns = shop_in_blue();
        let m = mutate(&pod(Value::Null, json!({"a": "b"})), &ctx(&ns, Mode::Chained)).unwrap();
        let json = serde_json::to_value(&m.patch).unwrap();
        assert_eq!(json, json!([{"op": "add", "path": "/metadata/annotations/slicenet.io~1slice", "value": "blue"}]));
    }
}
