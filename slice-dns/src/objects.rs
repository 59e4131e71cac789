//! The `--objects FILE` input: a YAML stream (documents separated by `---`) of `ServiceImport`
//! (`multicluster.x-k8s.io`) and `EndpointSlice` (`discovery.k8s.io/v1`) objects, as
//! `kubectl get -o yaml` prints them one by one. A `List` of such objects is read as its items.
//!
//! Every error names the document (counted from 1) and, where it has one, the object, so a
//! bad edit is found without guessing; the server keeps its old records when a re-read fails.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use slice_api::mcs::{GROUP, ServiceImport};
use yaml_serde::Value;

/// The objects of one file.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub imports: Vec<ServiceImport>,
    pub slices: Vec<EndpointSlice>,
}

/// Why a file could not be read as objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("document {document}: not YAML: {source}")]
    Yaml { document: usize, source: yaml_serde::Error },
    #[error("document {document}{object}: {message}")]
    Object { document: usize, object: String, message: String },
}

/// Reads every object of `text`.
///
/// # Errors
/// A document that is not YAML, not an object of a kind we read, or whose fields do not fit
/// its kind (the first such document is named).
pub fn parse(text: &str) -> Result<Objects, Error> {
    let mut objects = Objects::default();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let document_number = index + 1;
        let value = Value::deserialize(document).map_err(|source| Error::Yaml { document: document_number, source })?;
        if value.is_null() {
            // An empty document (a trailing `---`, a file of comments).
            continue;
        }
        add(&mut objects, value, document_number)?;
    }
    Ok(objects)
}

fn add(objects: &mut Objects, value: Value, document: usize) -> Result<(), Error> {
    let field = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let namespace = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str);
    let object = match (kind.as_deref(), namespace, name) {
        (Some(kind), Some(ns), Some(name)) => format!(" ({kind} {ns}/{name})"),
        (Some(kind), None, Some(name)) => format!(" ({kind} {name})"),
        (Some(kind), _, None) => format!(" ({kind})"),
        (None, ..) => String::new(),
    };
    let fail = |message: String| Error::Object { document, object: object.clone(), message };
    let group = api_version.as_deref().map(|v| v.split_once('/').map_or("", |(group, _)| group));
    match (group, kind.as_deref()) {
        (Some(GROUP), Some("ServiceImport")) => {
            let import: ServiceImport = yaml_serde::from_value(value).map_err(|e| fail(e.to_string()))?;
            if import.metadata.namespace.is_none() || import.metadata.name.is_none() {
                return Err(fail("metadata.namespace and metadata.name are required".to_owned()));
            }
            objects.imports.push(import);
        }
        (Some("discovery.k8s.io"), Some("EndpointSlice")) => {
            let slice: EndpointSlice = yaml_serde::from_value(value).map_err(|e| fail(e.to_string()))?;
            if slice.metadata.namespace.is_none() {
                return Err(fail("metadata.namespace is required".to_owned()));
            }
            objects.slices.push(slice);
        }
        (_, Some("List")) => {
            let items = value.get("items").and_then(Value::as_sequence).cloned().unwrap_or_default();
            for item in items {
                add(objects, item, document)?;
            }
        }
        _ => {
            return Err(fail(format!(
                "apiVersion {:?} kind {:?} is neither a ServiceImport ({GROUP}) nor an EndpointSlice \
                 (discovery.k8s.io/v1)",
                api_version.unwrap_or_default(),
                kind.unwrap_or_default()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
# a comment
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceImport
metadata: {name: db, namespace: shop}
spec: {type: Headless, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-east
  namespace: shop
  labels:
    multicluster.kubernetes.io/service-name: db
    multicluster.kubernetes.io/source-cluster: east
addressType: IPv4
endpoints:
  - addresses: ["10.80.0.5"]
    hostname: db-0
    conditions: {ready: true}
---
apiVersion: v1
kind: List
items:
  - apiVersion: multicluster.x-k8s.io/v1alpha1
    kind: ServiceImport
    metadata: {name: api, namespace: shop}
    spec: {type: ClusterSetIP, ips: ["10.80.255.1"]}
---
"#;

    #[test]
    fn reads_imports_slices_and_lists_and_skips_empty_documents() {
        let o = parse(GOOD).unwrap();
        assert_eq!(o.imports.len(), 2);
        assert_eq!(o.slices.len(), 1);
        assert_eq!(o.slices[0].endpoints.as_ref().unwrap()[0].hostname.as_deref(), Some("db-0"));
        assert!(parse("").unwrap().imports.is_empty());
    }

    #[test]
    fn errors_name_the_document_and_the_object() {
        let bad_field = GOOD.replace("type: ClusterSetIP", "type: Sideways");
        let e = parse(&bad_field).unwrap_err().to_string();
        assert!(e.starts_with("document 3 (ServiceImport shop/api): "), "{e}");
        assert!(e.contains("Sideways"), "{e}");

        let e = parse("kind: Service\napiVersion: v1\nmetadata: {name: x, namespace: y}\n").unwrap_err().to_string();
        assert!(e.starts_with("document 1 (Service y/x): apiVersion \"v1\" kind \"Service\" is neither"), "{e}");

        let e = parse("---\na: [\n").unwrap_err().to_string();
        assert!(e.starts_with("document 1: not YAML"), "{e}");

        let no_ns = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\nmetadata: {name: x}\nspec: {type: Headless}\n";
        let e = parse(&format!("{GOOD}---\n{no_ns}")).unwrap_err().to_string();
        assert_eq!(e, "document 5 (ServiceImport x): metadata.namespace and metadata.name are required");
    }
}
