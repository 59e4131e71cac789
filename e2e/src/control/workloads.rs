//! The users' objects in a lab cluster, as `kubectl apply --context <cluster>` would write them
//! and as a cluster runs them: the kinds the lab takes ([`KINDS`]), their parsing from YAML, the
//! API server's defaults (a ClusterIP for a Service that asks for one), the scheduler and the
//! kubelet for Pods (a pod through CRI on the node it names or the least loaded one, its status
//! and network-status published), and the EndpointSlice controller for Services with a
//! selector (one EndpointSlice per Service: the matching pods' addresses, hostnames of
//! StatefulSet-style pods, readiness from the pod's `Ready` condition, named ports resolved).
//!
//! A pod turns unready as a failing readiness probe would make it: its `Ready` condition set to
//! `False` ([`super::ControlPlane::set_pod_ready`]); the kubelet never overwrites it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use slice_api::crd::GATEWAY_NAMESPACE;
use slice_api::names::NETWORK_STATUS_ANNOTATION;
use slice_kube::memory::{MemoryApi, object_path};

use crate::{Lab, Pod, PodSpec};

/// The kinds `apply`/`delete` take, by `apiVersion` and `kind`.
/// MultiNetworkPolicy is only stored (the lab has no CRD semantics beyond that): the workers read
/// it and the node agents enforce it.
pub const KINDS: [(&str, &str); 5] = [
    ("v1", "Namespace"),
    ("v1", "Pod"),
    ("v1", "Service"),
    ("multicluster.x-k8s.io/v1alpha1", "ServiceExport"),
    ("k8s.cni.cncf.io/v1beta1", "MultiNetworkPolicy"),
];

/// The label of the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The EndpointSlice controller's value of `endpointslice.kubernetes.io/managed-by`.
const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// First ClusterIP the lab hands out (the API server's service range, `10.96.0.0/16`).
const SERVICE_RANGE_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The multi-cluster services the test and the demo export from cluster number `n`: in
/// namespace `shop`, a headless `db` (StatefulSet-style pod `db-<n>`, port `pg` 5432) and a
/// ClusterIP `web` (pod `web-<n>`, port `http` 80 → 8080), each with its ServiceExport.
///
/// # Errors
/// None in practice (the text is fixed); see [`parse_objects`].
pub fn exported_services(n: usize) -> Result<Vec<Value>> {
    parse_objects(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: pg, port: 5432, targetPort: pg}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: db-{n}, namespace: shop, labels: {{app: db}}}}
spec: {{hostname: db-{n}, subdomain: db, containers: [{{name: pg, ports: [{{name: pg, containerPort: 5432}}]}}]}}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {{name: db, namespace: shop}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: web-{n}, namespace: shop, labels: {{app: web}}}}
spec: {{containers: [{{name: web, ports: [{{name: http, containerPort: 8080}}]}}]}}
---
apiVersion: multicluster.x-k8s.io/v1alpha1
kind: ServiceExport
metadata: {{name: web, namespace: shop}}
"#
    ))
}

/// Parses multi-document YAML of the kinds in [`KINDS`]; a namespaced object without a
/// namespace gets `default`.
///
/// # Errors
/// Which document is wrong and why: not YAML, a kind the lab does not run, no name.
pub fn parse_objects(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let mut value: Value =
            serde::Deserialize::deserialize(doc).with_context(|| format!("document {n} is not valid YAML"))?;
        if value.is_null() {
            continue;
        }
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        if !KINDS.contains(&(api_version.as_str(), kind.as_str())) {
            let known: Vec<String> = KINDS.iter().map(|(v, k)| format!("{k} ({v})")).collect();
            bail!("document {n}: {kind} ({api_version}) is not a kind the lab runs: {}", known.join(", "));
        }
        let name = value["metadata"]["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            bail!("document {n}: {kind} without metadata.name");
        }
        if kind != "Namespace" && value["metadata"]["namespace"].as_str().is_none_or(str::is_empty) {
            value["metadata"]["namespace"] = json!("default");
        }
        out.push(value);
    }
    Ok(out)
}

/// The next free ClusterIP of a cluster's API.
pub(crate) fn next_cluster_ip(api: &MemoryApi<String>, cluster: &str) -> Ipv4Addr {
    let used: Vec<Ipv4Addr> = api
        .list(&cluster.to_owned(), "/api/v1/services")
        .iter()
        .filter_map(|s| s["spec"]["clusterIP"].as_str()?.parse().ok())
        .collect();
    let mut ip = u32::from(SERVICE_RANGE_BASE);
    while used.contains(&Ipv4Addr::from(ip)) {
        ip += 1;
    }
    Ipv4Addr::from(ip)
}

/// The users' pods the lab runs in one cluster, by `namespace/name`.
#[derive(Default)]
pub(crate) struct Workloads {
    pub pods: BTreeMap<String, Pod>,
}

fn key(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Whether a Pod object is one of the worker's gateway pods (the kubelet's gateway part runs
/// those).
fn is_gateway(pod: &Value) -> bool {
    pod["metadata"]["namespace"] == GATEWAY_NAMESPACE
}

/// Whether a Pod object stands for a pod that runs nowhere ([`super::SIMULATED_ANNOTATION`]).
fn is_simulated(pod: &Value) -> bool {
    pod["metadata"]["annotations"][super::SIMULATED_ANNOTATION] == "true"
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

impl Workloads {
    /// Removes every pod it runs.
    ///
    /// # Errors
    /// When a pod cannot be removed.
    pub fn teardown(&mut self, lab: &Lab, cluster: &str) -> Result<()> {
        for (_, pod) in std::mem::take(&mut self.pods) {
            lab.cluster(cluster).node(&pod.node).remove_pod(&pod)?;
        }
        Ok(())
    }

    /// Runs the Pod objects that have no lab pod yet, removes the lab pods whose object is
    /// gone, and keeps each Service's EndpointSlice. True when something changed or a pod
    /// still waits to start.
    ///
    /// # Errors
    /// When a pod cannot be started or removed (a CNI "try again later" waits for the next
    /// round instead).
    pub fn step(&mut self, lab: &Lab, api: &MemoryApi<String>, cluster: &str) -> Result<bool> {
        let side = cluster.to_owned();
        let objects: Vec<Value> = api.list_where(&side, "/api/v1/pods", |p| !is_gateway(p) && !is_simulated(p));
        let mut changed = false;
        let gone: Vec<String> = self.pods.keys().filter(|k| !objects.iter().any(|o| key(o) == **k)).cloned().collect();
        for k in gone {
            let pod = self.pods.remove(&k).expect("listed above");
            lab.cluster(cluster).node(&pod.node).remove_pod(&pod)?;
            changed = true;
        }
        for obj in &objects {
            if self.pods.contains_key(&key(obj)) {
                continue;
            }
            changed |= self.start(lab, api, cluster, obj)?;
        }
        changed |= endpoint_slices(api, cluster)?;
        Ok(changed)
    }

    fn start(&mut self, lab: &Lab, api: &MemoryApi<String>, cluster: &str, obj: &Value) -> Result<bool> {
        let c = lab.cluster(cluster);
        // The scheduler: the node the pod names, else the node with the fewest of our pods.
        let node = match obj["spec"]["nodeName"].as_str() {
            Some(name) => c
                .nodes()
                .iter()
                .find(|n| n.name() == name)
                .with_context(|| format!("pod {}: no node {name} in cluster {cluster}", key(obj)))?,
            None => c
                .nodes()
                .iter()
                .min_by_key(|n| self.pods.values().filter(|p| p.node == n.name()).count())
                .context("a cluster without nodes")?,
        };
        let (namespace, name) = (
            obj["metadata"]["namespace"].as_str().unwrap_or_default(),
            obj["metadata"]["name"].as_str().unwrap_or_default(),
        );
        let mut spec = PodSpec::new(namespace, name);
        for (k, v) in obj["metadata"]["labels"].as_object().into_iter().flatten() {
            spec = spec.label(k.clone(), v.as_str().unwrap_or_default());
        }
        for (k, v) in obj["metadata"]["annotations"].as_object().into_iter().flatten() {
            spec = spec.annotation(k.clone(), v.as_str().unwrap_or_default());
        }
        let pod = match node.run_pod(spec) {
            Ok(pod) => pod,
            // slice-cni's "try again later": the node's slice state is not there yet. Not
            // settled: the next round tries again.
            Err(e) if format!("{e:#}").contains("try again") => return Ok(true),
            Err(e) => return Err(e),
        };
        let pod_ip = pod.ipv4("eth0")?;
        let mut annotations = obj["metadata"]["annotations"].clone();
        if let Some((slice, addresses)) = slice_attachment(node, namespace, &pod)? {
            let ips: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            let status = json!([{"name": slice_api::multus::network_name(namespace, &slice),
                                 "interface": slice_api::names::DEFAULT_SLICE_INTERFACE, "ips": ips}]);
            annotations[NETWORK_STATUS_ANNOTATION] = json!(status.to_string());
        }
        let patch = json!({
            "metadata": {"annotations": annotations},
            "spec": {"nodeName": node.name()},
            "status": {"phase": "Running", "podIP": pod_ip.to_string(), "podIPs": [{"ip": pod_ip.to_string()}],
                       "hostIP": node.underlay_address().to_string(),
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let path = object_path(obj);
        let (code, body) = api.request(&cluster.to_owned(), "PATCH", &path, "application/merge-patch+json", &patch);
        if code >= 300 {
            bail!("publishing pod {}: {code} {body}", key(obj));
        }
        self.pods.insert(key(obj), pod);
        Ok(true)
    }
}

/// The slice a pod's `slice0` belongs to (the slice whose node state lists its namespace) and
/// its address; what the node agent publishes as network-status in a cluster.
fn slice_attachment(node: &crate::Node, namespace: &str, pod: &Pod) -> Result<Option<(String, Vec<IpAddr>)>> {
    // Every address of the slice interface, IPv4 first (one per family of the slice).
    let addresses = pod.ips(slice_api::names::DEFAULT_SLICE_INTERFACE).unwrap_or_default();
    if addresses.is_empty() {
        return Ok(None);
    }
    let states = slice_api::node::NodeState::load_all(&node.state_dir())?;
    Ok(states.into_iter().find(|s| s.namespaces.iter().any(|n| n == namespace)).map(|s| (s.slice, addresses)))
}

/// The EndpointSlice controller: one EndpointSlice (`<service>-lab`) per Service with a
/// selector, deleted with its Service. True when one was written or deleted.
fn endpoint_slices(api: &MemoryApi<String>, cluster: &str) -> Result<bool> {
    let side = cluster.to_owned();
    let services = api.list(&side, "/api/v1/services");
    // Simulated pods have no endpoints here (and are many: not copied).
    let pods =
        if services.is_empty() { Vec::new() } else { api.list_where(&side, "/api/v1/pods", |p| !is_simulated(p)) };
    let existing = api.list(&side, "/apis/discovery.k8s.io/v1/endpointslices");
    let mut changed = false;
    let mut wanted = Vec::new();
    for svc in services.iter().filter(|s| s["metadata"]["namespace"] != GATEWAY_NAMESPACE) {
        let Some(selector) = svc["spec"]["selector"].as_object().filter(|s| !s.is_empty()) else { continue };
        let (namespace, name) = (
            svc["metadata"]["namespace"].as_str().unwrap_or_default(),
            svc["metadata"]["name"].as_str().unwrap_or_default(),
        );
        let members: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["namespace"] == namespace && p["status"]["podIP"].is_string())
            .filter(|p| selector.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v))
            .collect();
        let endpoints: Vec<Value> = members
            .iter()
            .map(|p| {
                let mut e = json!({
                    "addresses": [p["status"]["podIP"]],
                    "conditions": {"ready": ready(p)},
                    "targetRef": {"kind": "Pod", "namespace": namespace, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]},
                    "nodeName": p["spec"]["nodeName"],
                });
                // A StatefulSet's pods: their hostname under the headless Service named as
                // their subdomain.
                if p["spec"]["subdomain"] == name && p["spec"]["hostname"].is_string() {
                    e["hostname"] = p["spec"]["hostname"].clone();
                }
                e
            })
            .collect();
        let ports: Vec<Value> = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let target = match &p["targetPort"] {
                    Value::Number(n) => n.as_u64(),
                    Value::String(port_name) => members.iter().find_map(|m| container_port(m, port_name)),
                    _ => p["port"].as_u64(),
                };
                json!({"name": p["name"], "protocol": p["protocol"].as_str().unwrap_or("TCP"), "port": target})
            })
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-lab"), "namespace": namespace,
                         "labels": {SERVICE_NAME_LABEL: name, slice_api::mcs::MANAGED_BY_LABEL: ENDPOINTSLICE_CONTROLLER}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
        });
        let path = object_path(&slice);
        let current = existing.iter().find(|e| object_path(e) == path);
        let same = current.is_some_and(|c| c["endpoints"] == slice["endpoints"] && c["ports"] == slice["ports"]);
        if !same {
            api.put(side.clone(), slice);
            changed = true;
        }
        wanted.push(path);
    }
    for e in &existing {
        let ours = e["metadata"]["labels"][slice_api::mcs::MANAGED_BY_LABEL] == ENDPOINTSLICE_CONTROLLER;
        let path = object_path(e);
        if ours && !wanted.contains(&path) {
            api.remove(side.clone(), &path);
            changed = true;
        }
    }
    Ok(changed)
}

/// The number of the container port named `name`.
fn container_port(pod: &Value, name: &str) -> Option<u64> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find_map(|p| (p["name"] == name).then(|| p["containerPort"].as_u64()).flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_with_their_namespace_and_unknown_kinds_are_refused() {
        let objects = parse_objects(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: None}\n",
        )
        .expect("parses");
        assert_eq!(objects.len(), 2);
        assert!(objects[0]["metadata"].get("namespace").is_none());
        assert_eq!(objects[1]["metadata"]["namespace"], "default");
        let e = parse_objects("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n").unwrap_err();
        assert!(format!("{e:#}").contains("Deployment (apps/v1) is not a kind the lab runs"), "{e:#}");
        let mnp = parse_objects(
            "apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata: {name: deny, namespace: x}\n\
             spec: {podSelector: {}}\n",
        )
        .expect("a MultiNetworkPolicy is a kind the lab takes");
        assert_eq!(mnp[0]["metadata"]["namespace"], "x");
        let e = parse_objects("apiVersion: v1\nkind: Pod\nmetadata: {}\n").unwrap_err();
        assert!(format!("{e:#}").contains("document 1: Pod without metadata.name"), "{e:#}");
    }

    fn api_with(objects: &[Value]) -> MemoryApi<String> {
        static ALL: &[slice_api::rbac::Access] = &[];
        let api = MemoryApi::new([("c1".to_owned(), ALL, "x".to_owned())]);
        for o in objects {
            api.put("c1".to_owned(), o.clone());
        }
        api
    }

    #[test]
    fn endpoint_slices_follow_pods_readiness_hostnames_and_named_ports() {
        let pod = |name: &str, ip: &str, ready: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": "db"}},
                   "spec": {"hostname": name, "subdomain": "db", "nodeName": "n1",
                            "containers": [{"name": "c", "ports": [{"name": "pg", "containerPort": 5432}]}]},
                   "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}})
        };
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
                         "spec": {"clusterIP": "None", "selector": {"app": "db"},
                                  "ports": [{"name": "pg", "port": 5432, "targetPort": "pg"}]}});
        let api = api_with(&[pod("db-0", "10.244.1.5", "True"), pod("db-1", "10.244.1.6", "False"), svc]);
        assert!(endpoint_slices(&api, "c1").unwrap());
        assert!(!endpoint_slices(&api, "c1").unwrap(), "a second pass changes nothing");
        let slices = api.list(&"c1".to_owned(), "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices");
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s["metadata"]["labels"][SERVICE_NAME_LABEL], "db");
        assert_eq!(s["ports"][0]["port"], 5432);
        let eps = s["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!((eps[0]["hostname"].as_str(), eps[0]["conditions"]["ready"].as_bool()), (Some("db-0"), Some(true)));
        assert_eq!(eps[1]["conditions"]["ready"], false);
        api.remove("c1".to_owned(), "/api/v1/namespaces/shop/services/db");
        assert!(endpoint_slices(&api, "c1").unwrap());
        assert!(api.list(&"c1".to_owned(), "/apis/discovery.k8s.io/v1/endpointslices").is_empty());
    }
}
