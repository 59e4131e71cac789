//! `slicectl version`: slicectl's own version and, with a kubeconfig, the version every
//! slicenet component of that cluster runs, read from its pods (the running truth: a pod of an
//! old ReplicaSet still shows the old version during a rollout), and the version skew policy
//! checked against it (docs/upgrade.md).
//!
//! A pod's version is its `app.kubernetes.io/version` label (set by `slicectl install`), else
//! the tag of its image. slice-cni has no pod: the node agent's init container copies it from
//! the same image on the same node, so a node agent pod's version is its node's slice-cni too.
//! Gateways are made by the worker from its `--gateway-image`.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt as _};

/// The namespaces slicenet's pods run in.
pub const NAMESPACES: [&str; 3] =
    [slice_api::crd::SYSTEM_NAMESPACE, slice_api::names::NODE_NAMESPACE, slice_api::crd::GATEWAY_NAMESPACE];

/// This slicectl's version.
pub const SLICECTL: &str = env!("CARGO_PKG_VERSION");

/// One running pod of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub component: String,
    pub pod: String,
    pub node: String,
    pub version: String,
    pub image: String,
    pub ready: bool,
}

/// The tag of an image reference (`repo:tag`, `repo:tag@sha256:…`), or `""`.
fn image_tag(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':').map_or("", |(_, tag)| tag)
}

/// The rows for `pods`, sorted by component, version and pod.
#[must_use]
pub fn running(pods: &[Pod]) -> Vec<Running> {
    let mut rows: Vec<Running> = pods
        .iter()
        .map(|p| {
            let labels = p.labels();
            let image =
                p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default();
            let version = labels
                .get("app.kubernetes.io/version")
                .cloned()
                .unwrap_or_else(|| image_tag(&image).trim_start_matches('v').to_owned());
            let mut component = labels.get("app.kubernetes.io/name").cloned().unwrap_or_else(|| "(unknown)".into());
            if component == crate::install::NODE_AGENT_NAME {
                component = format!("{component} + slice-cni");
            }
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Running {
                component,
                pod: format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
                version,
                image,
                ready,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.component, &a.version, &a.pod).cmp(&(&b.component, &b.version, &b.pod)));
    rows
}

/// `major.minor` of a version (`0.1.3` → `0.1`); the whole string when it has no dot.
fn minor(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

/// What breaks the skew policy: every component of a cluster on one `major.minor`, the same
/// as slicectl's (patch versions may differ, as they do during a rolling upgrade).
#[must_use]
pub fn skew(rows: &[Running], slicectl: &str) -> Vec<String> {
    let minors: BTreeSet<&str> = rows.iter().map(|r| minor(&r.version)).collect();
    let mut problems = Vec::new();
    if minors.len() > 1 {
        problems.push(format!(
            "components run {} minor versions ({}): finish the upgrade (`slicectl install … | kubectl apply \
             --server-side -f -` with one slicectl)",
            minors.len(),
            minors.iter().copied().collect::<Vec<_>>().join(", ")
        ));
    }
    for m in &minors {
        if *m != minor(slicectl) {
            problems.push(format!("components run {m}.*, this slicectl is {slicectl}: use slicectl {m}.* here"));
        }
    }
    problems
}

/// The table `slicectl version` prints.
#[must_use]
pub fn render(rows: &[Running], slicectl: &str) -> String {
    let mut out = format!("slicectl {slicectl}\n");
    if rows.is_empty() {
        out.push_str("no slicenet pods in this cluster\n");
        return out;
    }
    let header = ["COMPONENT", "VERSION", "READY", "NODE", "POD", "IMAGE"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.component.clone(),
                r.version.clone(),
                if r.ready { "yes" } else { "no" }.into(),
                r.node.clone(),
                r.pod.clone(),
                r.image.clone(),
            ]
        })
        .collect();
    let widths: Vec<usize> =
        (0..6).map(|i| cells.iter().map(|c| c[i].len()).chain([header[i].len()]).max().unwrap_or(0)).collect();
    let line = |c: &[&str]| -> String {
        let mut l: String = c.iter().zip(&widths).map(|(s, w)| format!("{s:<w$}  ")).collect();
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    out.push_str(&line(&header));
    for c in &cells {
        out.push_str(&line(&c.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    for p in skew(rows, slicectl) {
        out.push_str(&format!("skew: {p}\n"));
    }
    out
}

/// The pods of slicenet's namespaces.
///
/// # Errors
/// When a list request fails (a namespace that does not exist has no pods).
pub async fn fetch(client: &Client) -> Result<Vec<Pod>> {
    let mut pods = Vec::new();
    for ns in NAMESPACES {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        pods.extend(api.list(&ListParams::default()).await.with_context(|| format!("listing pods in {ns}"))?.items);
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ns: &str, name: &str, component: Option<&str>, version: Option<&str>, image: &str, ready: bool) -> Pod {
        let mut labels = serde_json::Map::new();
        if let Some(c) = component {
            labels.insert("app.kubernetes.io/name".into(), json!(c));
        }
        if let Some(v) = version {
            labels.insert("app.kubernetes.io/version".into(), json!(v));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": image}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn versions_come_from_the_label_else_the_image_tag() {
        let pods = [
            pod("slicenet-node", "agent-x", Some("slicenet-node-agent"), Some("0.1.0"), "r/slicenet:0.1.0", true),
            pod("slicenet-gateway", "gw", Some("slice-gateway"), None, "r/slicenet:v0.1.2@sha256:ab", false),
            pod("slicenet-system", "w", Some("slicenet-worker"), Some("0.1.1"), "r/slicenet:0.1.1", true),
        ];
        let rows = running(&pods);
        let got: Vec<(&str, &str, bool)> =
            rows.iter().map(|r| (r.component.as_str(), r.version.as_str(), r.ready)).collect();
        assert_eq!(
            got,
            [
                ("slice-gateway", "0.1.2", false),
                ("slicenet-node-agent + slice-cni", "0.1.0", true),
                ("slicenet-worker", "0.1.1", true)
            ]
        );
        assert!(skew(&rows, "0.1.5").is_empty(), "patch versions may differ");
        assert_eq!(image_tag("localhost:5000/slicenet"), "");
        assert_eq!(image_tag("slicenet:e2e"), "e2e");
    }

    #[test]
    fn a_second_minor_version_or_another_slicectl_is_skew() {
        let rows = running(&[
            pod("slicenet-system", "w", Some("slicenet-worker"), Some("0.2.0"), "i", true),
            pod("slicenet-node", "a", Some("slicenet-node-agent"), Some("0.1.4"), "i", true),
        ]);
        let problems = skew(&rows, "0.2.1");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("2 minor versions (0.1, 0.2)"), "{problems:?}");
        assert!(problems[1].contains("components run 0.1.*, this slicectl is 0.2.1"), "{problems:?}");
        let table = render(&rows, "0.2.1");
        assert!(table.starts_with("slicectl 0.2.1\nCOMPONENT"), "{table}");
        assert!(table.contains("skew: components run 2 minor versions"), "{table}");
        assert_eq!(render(&[], "0.2.1"), "slicectl 0.2.1\nno slicenet pods in this cluster\n");
    }
}
