//! Which slice, if any, a pod joins: a pure decision over the config, the pod's namespace and
//! annotations, and the node states. DESIGN.md "Contracts": membership is always checked against
//! the slice's member namespaces in the node state — an annotation or a NAD can narrow membership
//! (opt out) but never grant it. The one place where naming the slice is what admits a pod is
//! the slice's gateway namespace (`NodeState::gateway_namespace`), where only the worker
//! creates pods; that namespace is in no member list, so it never joins a slice wholesale.

use std::collections::BTreeMap;

use slice_api::NodeState;
use slice_api::names::{EXCLUDE_KEY, SLICE_ANNOTATION};

use crate::spec::{CniError, Result, code};

/// What ADD should do with the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Attach the pod to this slice.
    Attach(NodeState),
    /// Leave the pod alone; the reason is logged.
    Skip(String),
}

/// Node states by slice name: the parsed state, or why it could not be read.
pub type States = BTreeMap<String, std::result::Result<NodeState, String>>;

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Pod<'a> {
    /// Standalone (Multus delegate) mode: the config's `slice`.
    pub requested_by_config: Option<&'a str>,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<&'a str>,
    /// Pod annotations from `runtimeConfig`.
    pub annotations: Option<&'a BTreeMap<String, String>>,
}

impl Pod<'_> {
    fn excluded(&self) -> bool {
        self.annotation(EXCLUDE_KEY).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.and_then(|a| a.get(key)).map(String::as_str).filter(|s| !s.is_empty())
    }
}

/// Decides membership in the order DESIGN.md gives: the config's `slice`, the pod's
/// `slicenet.io/slice` annotation, the namespace lists of the node states.
///
/// # Errors
/// - 11 when the pod asks for a slice whose node state is not here (yet);
/// - 101 when a Multus delegate asks for a slice the namespace is not a member of, or for a pod
///   that opted out;
/// - 103 when the namespace is claimed by more than one slice on this node;
/// - 4 when a delegate call lacks `K8S_POD_NAMESPACE`.
pub fn decide(pod: Pod<'_>, states: &States) -> Result<Decision> {
    if let Some(slice) = pod.requested_by_config {
        let ns = pod.namespace.ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS has no K8S_POD_NAMESPACE, so membership of slice {slice} cannot be checked"),
            )
        })?;
        if pod.excluded() {
            return Err(CniError::new(
                code::NOT_A_MEMBER,
                format!(
                    "pod opted out of slices ({EXCLUDE_KEY}=true) but its networks ask for slice {slice}; remove one of the two"
                ),
            ));
        }
        let state = ready_state(slice, states)?;
        if !state.admits_by_name(ns) {
            return Err(CniError::new(
                code::NOT_A_MEMBER,
                format!(
                    "namespace {ns} is not a member of slice {slice} in this cluster; add it to the slice's namespaces or remove the network from the pod"
                ),
            ));
        }
        return Ok(Decision::Attach(state.clone()));
    }

    if pod.excluded() {
        return Ok(Decision::Skip(format!("pod opted out with {EXCLUDE_KEY}=true")));
    }
    let Some(ns) = pod.namespace else {
        return Ok(Decision::Skip("no K8S_POD_NAMESPACE in CNI_ARGS".into()));
    };
    if let Some(slice) = pod.annotation(SLICE_ANNOTATION) {
        let state = ready_state(slice, states)?;
        return Ok(if state.admits_by_name(ns) {
            Decision::Attach(state.clone())
        } else {
            Decision::Skip(format!(
                "annotation {SLICE_ANNOTATION}={slice} ignored: namespace {ns} is not a member of slice {slice}"
            ))
        });
    }
    let mut claimed: Vec<&NodeState> =
        states.values().filter_map(|s| s.as_ref().ok()).filter(|s| s.namespaces.iter().any(|n| n == ns)).collect();
    match claimed.len() {
        0 => unclaimed(ns, states),
        1 => Ok(Decision::Attach(claimed.remove(0).clone())),
        _ => Err(CniError::new(
            code::AMBIGUOUS_SLICE,
            format!(
                "namespace {ns} is claimed by slices {}; a namespace may join one slice per cluster",
                claimed.iter().map(|s| s.slice.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// A namespace no readable state claims. A state that cannot be read may list it: the pod must
/// not start without its slice interface because of that (fail closed, naming what to fix).
fn unclaimed(ns: &str, states: &States) -> Result<Decision> {
    let (names, whys): (Vec<&str>, Vec<&str>) =
        states.iter().filter_map(|(name, s)| s.as_ref().err().map(|why| (name.as_str(), why.as_str()))).unzip();
    if names.is_empty() {
        return Ok(Decision::Skip(format!("namespace {ns} is in no slice on this node")));
    }
    Err(CniError::new(
        code::TRY_AGAIN,
        format!(
            "cannot tell whether namespace {ns} is a member of slice {}: its node state cannot be read; try again later",
            names.join(", ")
        ),
    )
    .with_details(whys.join("; ")))
}

fn ready_state<'s>(slice: &str, states: &'s States) -> Result<&'s NodeState> {
    match states.get(slice) {
        Some(Ok(state)) => Ok(state),
        Some(Err(why)) => Err(CniError::new(
            code::TRY_AGAIN,
            format!("slice {slice} is not ready on this node: its node state cannot be read; try again later"),
        )
        .with_details(why.clone())),
        None => Err(CniError::new(
            code::TRY_AGAIN,
            format!("slice {slice} is not ready on this node yet (no node state from the node agent); try again later"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(slice: &str, namespaces: &[&str]) -> NodeState {
        NodeState {
            slice: slice.into(),
            vni: 1,
            router_netns: "/run/netns/x".into(),
            node_prefix: "10.80.0.0/26".parse().unwrap(),
            router_address: "10.80.0.1".parse().unwrap(),
            slice_subnet: "10.80.0.0/16".parse().unwrap(),
            mtu: 1450,
            namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            gateway_namespace: Some(slice_api::names::GATEWAY_NAMESPACE.into()),
            secondary: None,
        }
    }

    fn states() -> States {
        let mut s = States::new();
        s.insert("blue".into(), Ok(state("blue", &["shop"])));
        s.insert("red".into(), Ok(state("red", &["bank"])));
        s.insert("broken".into(), Err("bad json".into()));
        s
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn pod<'a>(ns: Option<&'a str>, a: Option<&'a BTreeMap<String, String>>, cfg: Option<&'a str>) -> Pod<'a> {
        Pod { requested_by_config: cfg, namespace: ns, annotations: a }
    }

    fn attached(d: Decision) -> String {
        match d {
            Decision::Attach(s) => s.slice,
            Decision::Skip(why) => panic!("skipped: {why}"),
        }
    }

    #[test]
    fn namespace_list_decides_without_annotation() {
        assert_eq!(attached(decide(pod(Some("shop"), None, None), &states()).unwrap()), "blue");
        let mut readable = states();
        readable.remove("broken");
        assert!(matches!(decide(pod(Some("other"), None, None), &readable).unwrap(), Decision::Skip(_)));
        assert!(matches!(decide(pod(None, None, None), &states()).unwrap(), Decision::Skip(_)));
    }

    /// Issue 20: an unreadable state file let a member pod start without its slice interface.
    /// A namespace that no readable state claims is undecidable while one cannot be read.
    #[test]
    fn an_unreadable_state_is_try_again_not_a_silent_skip() {
        let e = decide(pod(Some("other"), None, None), &states()).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN);
        assert!(e.msg.contains("broken") && e.msg.contains("other"), "{e}");
        assert_eq!(e.details, "bad json");
        // A namespace a readable state claims is decided as before.
        assert_eq!(attached(decide(pod(Some("bank"), None, None), &states()).unwrap()), "red");
    }

    #[test]
    fn annotation_narrows_but_never_grants() {
        let a = annotations(&[(SLICE_ANNOTATION, "red")]);
        // shop is not in red: the annotation does not grant red, and the pod is not put on blue.
        assert!(matches!(decide(pod(Some("shop"), Some(&a), None), &states()).unwrap(), Decision::Skip(_)));
        assert_eq!(attached(decide(pod(Some("bank"), Some(&a), None), &states()).unwrap()), "red");
    }

    #[test]
    fn opt_out() {
        let a = annotations(&[(EXCLUDE_KEY, "true")]);
        assert!(matches!(decide(pod(Some("shop"), Some(&a), None), &states()).unwrap(), Decision::Skip(_)));
        let e = decide(pod(Some("shop"), Some(&a), Some("blue")), &states()).unwrap_err();
        assert_eq!(e.code, code::NOT_A_MEMBER);
    }

    #[test]
    fn missing_state_is_try_again_naming_the_slice() {
        let a = annotations(&[(SLICE_ANNOTATION, "green")]);
        let e = decide(pod(Some("shop"), Some(&a), None), &states()).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN);
        assert!(e.msg.contains("green"));
        let e = decide(pod(Some("shop"), None, Some("broken")), &states()).unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN);
        assert_eq!(e.details, "bad json");
    }

    #[test]
    fn delegate_mode() {
        assert_eq!(attached(decide(pod(Some("shop"), None, Some("blue")), &states()).unwrap()), "blue");
        let e = decide(pod(Some("bank"), None, Some("blue")), &states()).unwrap_err();
        assert_eq!(e.code, code::NOT_A_MEMBER);
        assert!(e.msg.contains("bank") && e.msg.contains("blue"));
        assert_eq!(decide(pod(None, None, Some("blue")), &states()).unwrap_err().code, code::INVALID_ENV);
    }

    /// Issue 20, high 3: with several slices on a node, a gateway pod joins the one slice it
    /// names and nothing else; an unannotated pod in the gateway namespace joins none (no 103),
    /// and slicenet-system is in no slice.
    #[test]
    fn gateway_pods_join_the_slice_they_name_and_the_namespace_joins_none() {
        let gw = slice_api::names::GATEWAY_NAMESPACE;
        let mut readable = states();
        readable.remove("broken");
        for slice in ["blue", "red"] {
            let a = annotations(&[(SLICE_ANNOTATION, slice)]);
            assert_eq!(attached(decide(pod(Some(gw), Some(&a), None), &readable).unwrap()), slice);
            assert_eq!(attached(decide(pod(Some(gw), None, Some(slice)), &readable).unwrap()), slice);
        }
        assert!(matches!(decide(pod(Some(gw), None, None), &readable).unwrap(), Decision::Skip(_)));
        let system = slice_api::names::SYSTEM_NAMESPACE;
        assert!(matches!(decide(pod(Some(system), None, None), &readable).unwrap(), Decision::Skip(_)));
        let a = annotations(&[(SLICE_ANNOTATION, "blue")]);
        assert!(matches!(decide(pod(Some(system), Some(&a), None), &readable).unwrap(), Decision::Skip(_)));
        // Naming a slice admits a gateway pod only in its slice's gateway namespace.
        let mut s = readable;
        s.insert("green".into(), Ok(NodeState { gateway_namespace: None, ..state("green", &["web"]) }));
        let a = annotations(&[(SLICE_ANNOTATION, "green")]);
        assert!(matches!(decide(pod(Some(gw), Some(&a), None), &s).unwrap(), Decision::Skip(_)));
    }

    #[test]
    fn ambiguous_namespace() {
        let mut s = states();
        s.insert("green".into(), Ok(state("green", &["shop"])));
        assert_eq!(decide(pod(Some("shop"), None, None), &s).unwrap_err().code, code::AMBIGUOUS_SLICE);
    }
}
