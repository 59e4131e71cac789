//! A small in-memory API server for pods, on kube-rs's mock service (`tower_test::mock`), for
//! the node agent's network-status publisher: it answers get and JSON merge patch of pods with
//! resourceVersions (a patch that names a stale resourceVersion gets 409, as the API server
//! answers), records every request in order, and checks each one against the node agent's
//! declared access (`NODE_AGENT`) with `slice_api::rbac::{request_attributes, covers}`: an
//! undeclared request is a violation the tests assert on.
//!
//! Scripted disturbances: the n-th request of a method to a path gets an error status, and a
//! write by "someone else" can be slipped in right after a GET is served, so that the client's
//! next patch is based on a stale read.

#![allow(dead_code)] // Each test uses a different part of it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use slice_api::rbac::{Access, covers, request_attributes};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

impl Recorded {
    /// `"<METHOD> <path> <status>"`: how tests list expected requests.
    #[must_use]
    pub fn line(&self) -> String {
        format!("{} {} {}", self.method, self.path, self.status)
    }
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    violations: Vec<String>,
    /// (method, path, requests of it to let through first, status).
    faults: Vec<(String, String, usize, u16)>,
    /// (path, merge patch): applied once, right after a GET of path is served.
    after_get: Vec<(String, Value)>,
    resource_version: u64,
}

/// Handle to the fake server's state.
#[derive(Debug, Clone)]
pub struct FakePods {
    state: Arc<Mutex<State>>,
    access: &'static [Access],
    own_namespace: &'static str,
}

/// The object path of pod `namespace/name`.
#[must_use]
pub fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakePods {
    /// An empty server whose requests are checked against `access` (own namespace
    /// `own_namespace`).
    #[must_use]
    pub fn new(access: &'static [Access], own_namespace: &'static str) -> Self {
        Self { state: Arc::default(), access, own_namespace }
    }

    /// Puts a pod (JSON with metadata.namespace and name), giving it a new resourceVersion.
    pub fn put(&self, mut pod: Value) {
        let mut st = self.state.lock().expect("state lock");
        st.resource_version += 1;
        pod["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        let path = pod_path(
            pod["metadata"]["namespace"].as_str().expect("pod namespace"),
            pod["metadata"]["name"].as_str().expect("pod name"),
        );
        st.objects.insert(path, pod);
    }

    /// The pod at `path`.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().expect("state lock").objects.get(path).cloned()
    }

    /// The pod's network-status annotation, parsed.
    #[must_use]
    pub fn network_status(&self, path: &str) -> Option<Value> {
        let pod = self.get(path)?;
        let text = pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"].as_str()?.to_owned();
        Some(serde_json::from_str(&text).expect("the annotation is JSON"))
    }

    /// Changes the pod at `path` with a merge patch, as another writer would.
    pub fn write_as_someone_else(&self, path: &str, patch: &Value) {
        let mut pod = self.get(path).expect("pod to edit");
        json_patch::merge(&mut pod, patch);
        self.put(pod);
    }

    /// Takes the recorded requests (and clears them).
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().expect("state lock").requests)
    }

    /// The recorded requests as lines (and clears them).
    pub fn take_lines(&self) -> Vec<String> {
        self.take_requests().iter().map(Recorded::line).collect()
    }

    /// Requests that `NODE_AGENT` does not cover, so far.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().expect("state lock").violations.clone()
    }

    /// The request of `method` to `path` after `skip` others of it gets `status`.
    pub fn fail(&self, method: &str, path: &str, skip: usize, status: u16) {
        self.state.lock().expect("state lock").faults.push((method.to_owned(), path.to_owned(), skip, status));
    }

    /// Right after the next GET of `path` is served, `patch` is merged into the object.
    pub fn write_after_get(&self, path: &str, patch: Value) {
        self.state.lock().expect("state lock").after_get.push((path.to_owned(), patch));
    }

    /// A client served by this fake until it is dropped.
    #[must_use]
    pub fn client(&self) -> (Client, tokio::task::JoinHandle<()>) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        let task = tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                me.serve(req, send).await;
            }
        });
        (Client::new(svc, "default"), task)
    }

    async fn serve(&self, req: Request<Body>, send: tower_test::mock::SendResponse<Response<Body>>) {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let path_and_query = req.uri().path_and_query().map(ToString::to_string).unwrap_or_default();
        let content_type =
            req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = req.into_body().collect_bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let covered = request_attributes(&method, &path_and_query)
            .is_some_and(|a| covers(self.access, &a, Some(self.own_namespace)));
        let (code, reply) = self.handle(&method, &path, &content_type, &body);
        {
            let mut st = self.state.lock().expect("state lock");
            if !covered {
                st.violations.push(format!("{method} {path_and_query}"));
            }
            st.requests.push(Recorded { method, path, content_type, body, status: code });
        }
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&reply).expect("JSON")))
            .expect("a response builds");
        send.send_response(response);
    }

    fn handle(&self, method: &str, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        let mut st = self.state.lock().expect("state lock");
        let mut fault = None;
        for (m, p, skip, code) in &mut st.faults {
            if m == method && p == path && fault.is_none() {
                if *skip == 0 {
                    fault = Some(*code);
                    *skip = usize::MAX;
                } else if *skip != usize::MAX {
                    *skip -= 1;
                }
            }
        }
        if let Some(code) = fault {
            let reason = match code {
                404 => "NotFound",
                409 => "Conflict",
                _ => "InternalError",
            };
            return (code, status(code, reason, "injected failure"));
        }
        let not_found = || (404, status(404, "NotFound", &format!("{path} not found")));
        match method {
            "GET" => {
                let Some(obj) = st.objects.get(path).cloned() else { return not_found() };
                if let Some(i) = st.after_get.iter().position(|(p, _)| p == path) {
                    let (_, patch) = st.after_get.remove(i);
                    drop(st);
                    self.write_as_someone_else(path, &patch);
                }
                (200, obj)
            }
            "PATCH" => {
                if content_type != "application/merge-patch+json" {
                    return (415, status(415, "UnsupportedMediaType", content_type));
                }
                let Some(mut obj) = st.objects.get(path).cloned() else { return not_found() };
                if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
                    && obj["metadata"]["resourceVersion"].as_str() != Some(rv)
                {
                    return (409, status(409, "Conflict", "the object has been modified"));
                }
                let mut patch = body.clone();
                if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                json_patch::merge(&mut obj, &patch);
                st.resource_version += 1;
                obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
                st.objects.insert(path.to_owned(), obj.clone());
                (200, obj)
            }
            _ => (405, status(405, "MethodNotAllowed", method)),
        }
    }
}
