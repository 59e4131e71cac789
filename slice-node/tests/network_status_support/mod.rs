//! The node agent's network-status tests on the shared in-memory API (`slice_kube::memory`):
//! one server holding pods, every request recorded in order and checked against the node
//! agent's declared access (an undeclared request is a violation the tests assert on).
//!
//! Scripted disturbances: the n-th request of a method to a path gets an error status, and a
//! write by "someone else" can be slipped in right after a GET is served, so that the client's
//! next patch is based on a stale read.

#![allow(dead_code)] // Each test uses a different part of it.

use std::sync::{Arc, Mutex};

use kube::Client;
use serde_json::Value;
use slice_api::rbac::Access;
use slice_kube::memory::{AfterRequest, MemoryApi};

/// The one server's name.
const SERVER: &str = "node";

/// One request as the server saw it.
pub type Recorded = slice_kube::memory::Recorded<String>;

/// Handle to the in-memory pods.
#[derive(Debug, Clone)]
pub struct FakePods {
    api: MemoryApi<String>,
    /// (path, merge patch): applied once, right after a GET of path is served.
    after_get: Arc<Mutex<Vec<(String, Value)>>>,
}

/// The object path of pod `namespace/name`.
#[must_use]
pub fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

/// `"<METHOD> <path> <status>"`: how tests list expected requests.
#[must_use]
pub fn line(r: &Recorded) -> String {
    format!("{} {} {}", r.method, r.path, r.status)
}

impl FakePods {
    /// An empty server whose requests are checked against `access` (own namespace
    /// `own_namespace`).
    #[must_use]
    pub fn new(access: &'static [Access], own_namespace: &'static str) -> Self {
        let api = MemoryApi::new([(SERVER.to_owned(), access, own_namespace.to_owned())]);
        let after_get: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let hook = {
            let (api, after_get) = (api.clone(), after_get.clone());
            AfterRequest(Box::new(move |request: &str| {
                let Some(path) = request.strip_prefix(&format!("{SERVER} GET ")) else { return };
                let mut pending = after_get.lock().expect("after-get lock");
                if let Some(i) = pending.iter().position(|(p, _)| p == path) {
                    let (_, patch) = pending.remove(i);
                    drop(pending);
                    api.edit(SERVER.to_owned(), path, |pod| json_patch::merge(pod, &patch));
                }
            }))
        };
        api.lock().after_request = Some(hook);
        Self { api, after_get }
    }

    /// Puts a pod (JSON with metadata.namespace and name), giving it a new resourceVersion.
    pub fn put(&self, mut pod: Value) {
        pod["apiVersion"] = "v1".into();
        pod["kind"] = "Pod".into();
        self.api.put(SERVER.to_owned(), pod);
    }

    /// The pod at `path`.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<Value> {
        self.api.get(SERVER.to_owned(), path)
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
        self.api.edit(SERVER.to_owned(), path, |pod| json_patch::merge(pod, patch));
    }

    /// Takes the recorded requests (and clears them).
    pub fn take_requests(&self) -> Vec<Recorded> {
        self.api.take_requests()
    }

    /// The recorded requests as lines (and clears them).
    pub fn take_lines(&self) -> Vec<String> {
        self.take_requests().iter().map(line).collect()
    }

    /// Requests that the access list does not cover, so far.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        self.api.violations()
    }

    /// The request of `method` to `path` after `skip` others of it gets `status`.
    pub fn fail(&self, method: &'static str, path: &str, skip: usize, status: u16) {
        self.api.fail(SERVER.to_owned(), method, path, skip, status);
    }

    /// Right after the next GET of `path` is served, `patch` is merged into the object.
    pub fn write_after_get(&self, path: &str, patch: Value) {
        self.after_get.lock().expect("after-get lock").push((path.to_owned(), patch));
    }

    /// A client of the pods.
    #[must_use]
    pub fn client(&self) -> Client {
        self.api.client(SERVER.to_owned())
    }
}
