//! Multi-document YAML manifests built from typed Kubernetes objects.
//!
//! Every object is serialised from its k8s-openapi (or kube `CustomResource`) type, so a
//! misspelt field cannot be written. The output is canonical: every mapping's keys are sorted,
//! as `kubectl get -o yaml` prints them. That also makes the bytes independent of whether
//! `serde_json`'s `preserve_order` feature is on in a given build (it changes the key order of
//! the `serde_json::Value`s inside CRD schemas, e.g. `default`), which the CRD staleness check
//! relies on.

use serde::Serialize;
use serde::de::DeserializeOwned;
use yaml_serde::{Mapping, Value};

/// Why a manifest could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serialising {kind} {name:?}: {source}")]
    Serialise { kind: String, name: String, source: yaml_serde::Error },
    #[error("YAML document {index}: {source}")]
    Parse { index: usize, source: yaml_serde::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One object of a manifest, with the comment lines printed above it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Lines printed as `# line` above the object (why it is there, how to change it).
    pub comment: Vec<String>,
    /// The object, canonicalised (sorted keys).
    pub object: Value,
}

impl Document {
    /// `apiVersion` and `kind` of the object ("" when absent).
    #[must_use]
    pub fn type_meta(&self) -> (&str, &str) {
        let get = |k: &str| self.object.get(k).and_then(Value::as_str).unwrap_or("");
        (get("apiVersion"), get("kind"))
    }

    /// `metadata.name` of the object ("" when absent).
    #[must_use]
    pub fn name(&self) -> &str {
        self.object.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("")
    }
}

/// An ordered list of objects, printed as multi-document YAML for `kubectl apply -f -`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    documents: Vec<Document>,
}

impl Manifest {
    /// An empty manifest.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a typed object.
    ///
    /// # Errors
    /// When the object cannot be serialised (a non-string map key, in practice never).
    pub fn push<K: Serialize>(&mut self, object: &K) -> Result<()> {
        self.push_commented(&[], object)
    }

    /// Appends a typed object with comment lines above it.
    ///
    /// # Errors
    /// See [`Manifest::push`].
    pub fn push_commented<K: Serialize>(&mut self, comment: &[&str], object: &K) -> Result<()> {
        let value = yaml_serde::to_value(object).map_err(|source| Error::Serialise {
            kind: std::any::type_name::<K>().to_owned(),
            name: String::new(),
            source,
        })?;
        self.documents
            .push(Document { comment: comment.iter().map(|l| (*l).to_owned()).collect(), object: canonical(value) });
        Ok(())
    }

    /// Appends every document of `other`.
    pub fn extend(&mut self, other: Manifest) {
        self.documents.extend(other.documents);
    }

    /// The documents in order.
    #[must_use]
    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    /// Multi-document YAML: each document starts with `---`, then its comment lines.
    ///
    /// # Errors
    /// When an object cannot be serialised.
    pub fn to_yaml(&self) -> Result<String> {
        let mut out = String::new();
        for doc in &self.documents {
            out.push_str("---\n");
            for line in &doc.comment {
                out.push_str(if line.is_empty() { "#" } else { "# " });
                out.push_str(line);
                out.push('\n');
            }
            let (_, kind) = doc.type_meta();
            let text = yaml_serde::to_string(&doc.object).map_err(|source| Error::Serialise {
                kind: kind.to_owned(),
                name: doc.name().to_owned(),
                source,
            })?;
            out.push_str(&text);
        }
        Ok(out)
    }
}

/// `value` with every mapping's entries sorted by key (recursively).
#[must_use]
pub fn canonical(value: Value) -> Value {
    match value {
        Value::Mapping(map) => {
            let mut entries: Vec<(Value, Value)> = map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            entries.sort_by_key(|(a, _)| key_text(a));
            let mut sorted = Mapping::with_capacity(entries.len());
            for (k, v) in entries {
                sorted.insert(k, v);
            }
            Value::Mapping(sorted)
        }
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(canonical).collect()),
        Value::Tagged(tagged) => {
            let tagged = *tagged;
            Value::Tagged(Box::new(yaml_serde::value::TaggedValue { tag: tagged.tag, value: canonical(tagged.value) }))
        }
        other => other,
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => yaml_serde::to_string(other).unwrap_or_default(),
    }
}

/// Splits multi-document YAML into its documents (empty documents are skipped).
///
/// # Errors
/// The first document that is not valid YAML.
pub fn parse_documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (index, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = <Value as serde::Deserialize>::deserialize(doc).map_err(|source| Error::Parse { index, source })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Deserialises `value` as `K` and serialises it back: equal to `value` (canonicalised) only
/// when every field of `value` is a field of `K` (k8s-openapi's types ignore unknown fields on
/// input, so this is how a misspelt field is caught) and `apiVersion`/`kind` are `K`'s.
///
/// # Errors
/// When `value` does not deserialise as `K`, or the round trip loses or changes something;
/// the message names the first difference.
pub fn round_trip<K: DeserializeOwned + Serialize>(value: &Value) -> std::result::Result<K, String> {
    let typed: K = yaml_serde::from_value(value.clone()).map_err(|e| format!("does not deserialise: {e}"))?;
    let back = canonical(yaml_serde::to_value(&typed).map_err(|e| format!("does not serialise: {e}"))?);
    let original = canonical(value.clone());
    match first_difference(&original, &back, "") {
        None => Ok(typed),
        Some(path) => Err(format!("field {path} does not survive a round trip through the typed object")),
    }
}

fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Mapping(ma), Value::Mapping(mb)) => {
            for (k, va) in ma {
                let p = format!("{path}.{}", key_text(k));
                match mb.get(k) {
                    Some(vb) => {
                        if let Some(d) = first_difference(va, vb, &p) {
                            return Some(d);
                        }
                    }
                    None => return Some(p),
                }
            }
            mb.keys().find(|k| !ma.contains_key(*k)).map(|k| format!("{path}.{} (added)", key_text(k)))
        }
        (Value::Sequence(sa), Value::Sequence(sb)) if sa.len() == sb.len() => {
            sa.iter().zip(sb).enumerate().find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]")))
        }
        _ if a == b => None,
        _ => Some(if path.is_empty() { ".".to_owned() } else { path.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn namespace(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
            ..Namespace::default()
        }
    }

    #[test]
    fn prints_documents_with_comments_and_sorted_keys() {
        let mut m = Manifest::new();
        m.push_commented(&["why", ""], &namespace("a")).unwrap();
        m.push(&namespace("b")).unwrap();
        let yaml = m.to_yaml().unwrap();
        assert_eq!(
            yaml,
            "---\n# why\n#\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n"
        );
        let docs = parse_documents(&yaml).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1], m.documents()[1].object);
    }

    #[test]
    fn canonical_output_does_not_depend_on_insertion_order() {
        // What serde_json's preserve_order feature changes inside CRD schemas.
        let mut a = Mapping::new();
        let mut b = Mapping::new();
        for k in ["port", "exposure", "b", "a"] {
            a.insert(k.into(), Value::Null);
        }
        for k in ["a", "b", "exposure", "port"] {
            b.insert(k.into(), Value::Null);
        }
        let wrap = |m: Mapping| Value::Sequence(vec![Value::Mapping(m)]);
        let (a, b) = (canonical(wrap(a)), canonical(wrap(b)));
        assert_eq!(yaml_serde::to_string(&a).unwrap(), yaml_serde::to_string(&b).unwrap());
        assert_eq!(yaml_serde::to_string(&a).unwrap(), "- a: null\n  b: null\n  exposure: null\n  port: null\n");
    }

    #[test]
    fn round_trip_catches_misspelt_and_foreign_fields() {
        let good: Value = yaml_serde::from_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n").unwrap();
        assert!(round_trip::<Namespace>(&good).is_ok());
        let bad: Value = yaml_serde::from_str("apiVersion: v1\nkind: Namespace\nmetadata: {nmae: a}\n").unwrap();
        let e = round_trip::<Namespace>(&bad).unwrap_err();
        assert!(e.contains(".metadata.nmae"), "{e}");
        let wrong_kind: Value = yaml_serde::from_str("apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n").unwrap();
        assert!(round_trip::<Namespace>(&wrong_kind).is_err());
    }
}
