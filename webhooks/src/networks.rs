//! Merging the slice's network into a pod's Multus `k8s.v1.cni.cncf.io/networks` annotation.
//!
//! The annotation has two forms (Multus "network selection elements"):
//! - text: comma-separated `[namespace/]name[@interface]`, e.g. `macvlan, other/sriov@net5`;
//! - JSON: a list of objects `{"name": …, "namespace": …, "interface": …, …}`.
//!
//! The merge keeps the form the pod uses, keeps every entry it already has (text entries
//! verbatim, JSON entries with all their keys in order), never adds the slice twice, and names the
//! slice's interface. An entry for the slice's NAD that already names another interface is the
//! user's explicit choice and is left as it is.

use serde_json::{Map, Value};

/// What the slice's entry must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceNetwork<'a> {
    /// The pod's namespace (where the worker put the NAD).
    pub namespace: &'a str,
    /// The NAD name (`slice-<slice>`).
    pub nad: &'a str,
    /// Interface name in the pod (`slice0`).
    pub interface: &'a str,
}

/// Why the existing annotation cannot be merged into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "annotation k8s.v1.cni.cncf.io/networks is not valid: {0}; fix it to a comma-separated list such as \"ns/name@net1\" or a JSON list of {{\"name\": …}} objects"
)]
pub struct BadNetworks(pub String);

/// The annotation's new value, or `None` when it already holds the slice's entry.
///
/// # Errors
/// [`BadNetworks`] when the existing value is in neither form.
pub fn merge(existing: Option<&str>, slice: SliceNetwork<'_>) -> Result<Option<String>, BadNetworks> {
    let text = existing.unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(Some(format!("{}/{}@{}", slice.namespace, slice.nad, slice.interface)));
    }
    if text.starts_with('[') { merge_json(text, slice) } else { merge_text(text, slice) }
}

/// One parsed text entry.
struct TextEntry<'t> {
    namespace: Option<&'t str>,
    name: &'t str,
    interface: Option<&'t str>,
}

fn parse_text_entry(raw: &str) -> Result<TextEntry<'_>, BadNetworks> {
    let (rest, interface) = match raw.split_once('@') {
        Some((r, i)) => (r, Some(i)),
        None => (raw, None),
    };
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, n)) => (Some(ns), n),
        None => (None, rest),
    };
    let bad = |s: &str| s.is_empty() || s.contains(['/', '@', ' ']);
    if bad(name) || namespace.is_some_and(bad) || interface.is_some_and(bad) {
        return Err(BadNetworks(format!("entry {raw:?} is not [namespace/]name[@interface]")));
    }
    Ok(TextEntry { namespace, name, interface })
}

fn is_slice(namespace: Option<&str>, name: &str, slice: SliceNetwork<'_>) -> bool {
    name == slice.nad && namespace.is_none_or(|ns| ns == slice.namespace)
}

fn merge_text(text: &str, slice: SliceNetwork<'_>) -> Result<Option<String>, BadNetworks> {
    let raw: Vec<&str> = text.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
    let entries = raw.iter().map(|e| parse_text_entry(e)).collect::<Result<Vec<_>, _>>()?;
    match entries.iter().position(|e| is_slice(e.namespace, e.name, slice)) {
        Some(i) if entries[i].interface.is_some() => Ok(None),
        Some(i) => {
            // The slice is asked for without an interface name: name it, keep the rest verbatim.
            let named = format!("{}@{}", raw[i], slice.interface);
            let out: Vec<&str> = raw.iter().enumerate().map(|(j, e)| if j == i { named.as_str() } else { e }).collect();
            Ok(Some(out.join(", ")))
        }
        None => Ok(Some(format!("{}, {}/{}@{}", raw.join(", "), slice.namespace, slice.nad, slice.interface))),
    }
}

fn merge_json(text: &str, slice: SliceNetwork<'_>) -> Result<Option<String>, BadNetworks> {
    let mut list: Vec<Value> = serde_json::from_str(text).map_err(|e| BadNetworks(format!("JSON list: {e}")))?;
    let mut found = None;
    for (i, entry) in list.iter().enumerate() {
        let obj = entry.as_object().ok_or_else(|| BadNetworks(format!("JSON entry {i} is not an object")))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| BadNetworks(format!("JSON entry {i} has no \"name\" string")))?;
        let namespace = match obj.get("namespace") {
            None | Some(Value::Null) => None,
            Some(Value::String(ns)) => Some(ns.as_str()),
            Some(_) => return Err(BadNetworks(format!("JSON entry {i}: \"namespace\" is not a string"))),
        };
        if found.is_none() && is_slice(namespace, name, slice) {
            found = Some(i);
        }
    }
    match found {
        Some(i) => {
            let obj = list[i].as_object_mut().expect("checked above");
            match obj.get("interface") {
                Some(Value::String(s)) if !s.is_empty() => return Ok(None),
                _ => {
                    obj.insert("interface".into(), Value::String(slice.interface.into()));
                }
            }
        }
        None => {
            let mut entry = Map::new();
            entry.insert("name".into(), slice.nad.into());
            entry.insert("namespace".into(), slice.namespace.into());
            entry.insert("interface".into(), slice.interface.into());
            list.push(Value::Object(entry));
        }
    }
    Ok(Some(serde_json::to_string(&list).expect("JSON values serialize")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLUE: SliceNetwork<'static> = SliceNetwork { namespace: "shop", nad: "slice-blue", interface: "slice0" };

    fn merged(existing: Option<&str>) -> Option<String> {
        merge(existing, BLUE).unwrap()
    }

    #[test]
    fn empty_gets_text_form() {
        assert_eq!(merged(None).as_deref(), Some("shop/slice-blue@slice0"));
        assert_eq!(merged(Some("  ")).as_deref(), Some("shop/slice-blue@slice0"));
    }

    #[test]
    fn text_form_keeps_everything_and_never_duplicates() {
        let out = merged(Some("macvlan-conf,other/sriov@net5")).unwrap();
        assert_eq!(out, "macvlan-conf, other/sriov@net5, shop/slice-blue@slice0");
        assert_eq!(merged(Some(&out)), None, "idempotent");
        assert_eq!(merged(Some("slice-blue@slice0")), None, "unqualified name is the pod's namespace");
        assert_eq!(merged(Some("a, slice-blue, b")).as_deref(), Some("a, slice-blue@slice0, b"));
        assert_eq!(merged(Some("shop/slice-blue@mine")), None, "explicit interface kept");
        // Another namespace's NAD of the same name is a different network.
        assert_eq!(merged(Some("x/slice-blue")).as_deref(), Some("x/slice-blue, shop/slice-blue@slice0"));
    }

    #[test]
    fn json_form_keeps_keys_and_order() {
        let existing = r#"[{"name":"sriov","namespace":"other","interface":"net5","ips":["1.2.3.4/24"]}]"#;
        let out = merged(Some(existing)).unwrap();
        assert_eq!(
            out,
            r#"[{"name":"sriov","namespace":"other","interface":"net5","ips":["1.2.3.4/24"]},{"name":"slice-blue","namespace":"shop","interface":"slice0"}]"#
        );
        assert_eq!(merged(Some(&out)), None, "idempotent");
        assert_eq!(
            merged(Some(r#"[{"name":"slice-blue","mac":"02:00:00:00:00:01"}]"#)).unwrap(),
            r#"[{"name":"slice-blue","mac":"02:00:00:00:00:01","interface":"slice0"}]"#
        );
        assert_eq!(
            merged(Some(" [ ] ")).unwrap(),
            r#"[{"name":"slice-blue","namespace":"shop","interface":"slice0"}]"#
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for bad in ["[{\"name\":1}]", "[1]", "[oops", "a,,b@", "a b"] {
            let e = merge(Some(bad), BLUE).unwrap_err();
            assert!(e.to_string().starts_with("annotation k8s.v1.cni.cncf.io/networks is not valid:"), "{e}");
        }
    }
}
