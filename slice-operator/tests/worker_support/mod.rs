//! A small in-memory Kubernetes API server for the worker's tests, on kube-rs's mock service
//! (`tower_test::mock`): two of them (the hub and the member cluster) behind one task, so that
//! the requests of a pass are recorded in their real order across both clients.
//!
//! It keeps objects and answers list (with label and field selectors), get, create, JSON merge
//! patch, server-side apply (taken as a merge of the applied object, which is what the worker's
//! flat objects need), status patches and deletes, with resourceVersions (a merge patch that
//! names a stale resourceVersion gets 409) and finalizers (an object with a deletionTimestamp
//! goes when its last finalizer does). A NodePort Service gets a nodePort on apply, as the API
//! server assigns one.
//!
//! Every request is checked against the component's declared access list with
//! `slice_api::rbac::{request_attributes, covers}`; an undeclared request fails the test.
//! Failures can be injected: the n-th request matching a method and path prefix gets a 500.
//!
//! It also stands in for the gateways' `/metrics` endpoints ([`FakeApi::metrics_source`]):
//! canned text per address, a connection refused elsewhere, every scrape recorded.

#![allow(dead_code)] // Each test uses a different part of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use slice_api::rbac::{Access, RequestAttributes, covers, request_attributes};
use slice_operator::worker::MetricsSource;

/// Which API server a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Hub,
    Cluster,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub side: Side,
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

impl Recorded {
    /// `"<METHOD> <path>"`, prefixed with `hub ` for the hub: how tests list expected requests.
    #[must_use]
    pub fn line(&self) -> String {
        let side = match self.side {
            Side::Hub => "hub ",
            Side::Cluster => "",
        };
        format!("{side}{} {}", self.method, self.path)
    }

    /// Whether the request writes.
    #[must_use]
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// Whether it is an `events.k8s.io` request.
    #[must_use]
    pub fn is_event(&self) -> bool {
        self.path.starts_with("/apis/events.k8s.io/")
    }
}

/// Called with each request's [`Recorded::line`] once it was answered (tests use it to change
/// the world at a precise point of a pass).
pub struct AfterRequest(pub Box<dyn FnMut(&str) + Send>);

impl std::fmt::Debug for AfterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterRequest")
    }
}

/// A failure to inject.
#[derive(Debug, Clone)]
pub struct Fault {
    pub side: Side,
    pub method: &'static str,
    pub path_prefix: String,
    /// Fails the n-th matching request (0 = the first).
    pub nth: usize,
    pub status: u16,
}

enum Reply {
    Json(Value),
    Lines(Vec<Value>),
}

/// Object key: (side, path of the object without the query).
type Key = (Side, String);

/// The state of both API servers.
#[derive(Debug, Default)]
pub struct State {
    pub objects: BTreeMap<Key, Value>,
    pub requests: Vec<Recorded>,
    pub faults: Vec<Fault>,
    pub violations: Vec<String>,
    /// Events (`{"type": …, "object": …}`) every watch request gets, newline-delimited.
    pub watch_events: Vec<Value>,
    /// What each gateway address answers on `/metrics` (text, or the error of the scrape).
    pub metrics: BTreeMap<SocketAddr, Result<String, String>>,
    /// The addresses scraped, in order.
    pub scrapes: Vec<SocketAddr>,
    /// See [`AfterRequest`].
    pub after_request: Option<AfterRequest>,
    resource_version: u64,
    node_port: u16,
    /// The API server's clock for the tokens it issues (seconds since the epoch).
    pub now: i64,
    /// Tokens issued by TokenRequest.
    pub tokens_issued: u64,
}

/// An unsigned JWT with `claims` (the shape of a ServiceAccount token).
#[must_use]
pub fn jwt(claims: &Value) -> String {
    use base64::Engine as _;
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!("{}.{}.{}", enc(br#"{"alg":"RS256"}"#), enc(claims.to_string().as_bytes()), enc(b"unsigned"))
}

/// Shared handle to the fake servers' state.
#[derive(Debug, Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
    /// Declared access per side, and the "own namespace" of each.
    pub access: Arc<BTreeMap<Side, (&'static [Access], String)>>,
}

fn plural_path(api_version: &str, plural: &str, namespace: Option<&str>) -> String {
    let base = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
    match namespace {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}"),
        None => format!("{base}/{plural}"),
    }
}

/// The plural of the kinds the tests use.
fn plural(kind: &str) -> String {
    match kind {
        "NetworkAttachmentDefinition" => "network-attachment-definitions".into(),
        "WorkerSlice" => "workerslices".into(),
        "MemberCluster" => "memberclusters".into(),
        k => format!("{}s", k.to_lowercase()),
    }
}

/// The object path of an object (from its apiVersion, kind and metadata).
#[must_use]
pub fn object_path(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ns = if kind == "Namespace" || kind == "Node" || kind == "MemberCluster" { None } else { ns };
    format!("{}/{name}", plural_path(api_version, &plural(kind), ns))
}

fn selector_matches(obj: &Value, selector: &str, field: bool) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        if field {
            match k {
                "metadata.name" => obj["metadata"]["name"].as_str() == Some(v),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str() == Some(v),
                "status.phase" => obj["status"]["phase"].as_str() == Some(v),
                _ => false,
            }
        } else {
            obj["metadata"]["labels"][k].as_str() == Some(v)
        }
    })
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(x) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| decode(v)))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    /// A fake hub and member cluster; requests are checked against `hub_access` (own namespace
    /// `hub_ns`) and `cluster_access` (own namespace `cluster_ns`).
    #[must_use]
    pub fn new(
        hub_access: &'static [Access],
        hub_ns: &str,
        cluster_access: &'static [Access],
        cluster_ns: &str,
    ) -> Self {
        let mut access = BTreeMap::new();
        access.insert(Side::Hub, (hub_access, hub_ns.to_owned()));
        access.insert(Side::Cluster, (cluster_access, cluster_ns.to_owned()));
        Self { state: Arc::default(), access: Arc::new(access) }
    }

    /// Puts an object (JSON with apiVersion, kind, metadata) on `side`.
    pub fn put(&self, side: Side, mut obj: Value) {
        let mut st = self.state.lock().expect("state lock");
        st.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        if obj["metadata"].get("uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", st.resource_version));
        }
        let path = object_path(&obj);
        st.objects.insert((side, path), obj);
    }

    /// The object at `path` on `side`.
    #[must_use]
    pub fn get(&self, side: Side, path: &str) -> Option<Value> {
        self.state.lock().expect("state lock").objects.get(&(side, path.to_owned())).cloned()
    }

    /// Changes the object at `path` with `f` (bumping its resourceVersion).
    pub fn edit(&self, side: Side, path: &str, f: impl FnOnce(&mut Value)) {
        let mut obj = self.get(side, path).unwrap_or_else(|| panic!("no object {path}"));
        f(&mut obj);
        self.put(side, obj);
    }

    /// Removes the object at `path`.
    pub fn remove(&self, side: Side, path: &str) {
        self.state.lock().expect("state lock").objects.remove(&(side, path.to_owned()));
    }

    /// Paths of the objects on `side` under `prefix`.
    #[must_use]
    pub fn paths(&self, side: Side, prefix: &str) -> Vec<String> {
        let st = self.state.lock().expect("state lock");
        st.objects.keys().filter(|(s, p)| *s == side && p.starts_with(prefix)).map(|(_, p)| p.clone()).collect()
    }

    /// Takes the recorded requests (and clears them).
    pub fn take_requests(&self) -> Vec<Recorded> {
        std::mem::take(&mut self.state.lock().expect("state lock").requests)
    }

    /// Access violations seen so far.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().expect("state lock").violations.clone()
    }

    /// Makes the n-th matching request fail with `status`.
    pub fn fail(&self, side: Side, method: &'static str, path_prefix: &str, nth: usize, status: u16) {
        self.state.lock().expect("state lock").faults.push(Fault {
            side,
            method,
            path_prefix: path_prefix.to_owned(),
            nth,
            status,
        });
    }

    /// Makes the gateway at `addr` answer `/metrics` with `answer` from now on.
    pub fn set_metrics(&self, addr: &str, answer: Result<String, String>) {
        let addr = addr.parse().expect("a socket address");
        self.state.lock().expect("state lock").metrics.insert(addr, answer);
    }

    /// Takes the scraped addresses (and clears them).
    pub fn take_scrapes(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.state.lock().expect("state lock").scrapes)
    }

    /// A metrics source for the worker that answers from [`State::metrics`]; an address without
    /// an answer refuses the connection, as a port nobody listens on does.
    #[must_use]
    pub fn metrics_source(&self) -> MetricsSource {
        let me = self.clone();
        Box::new(move |addr| {
            let mut st = me.state.lock().expect("state lock");
            st.scrapes.push(addr);
            let answer = st
                .metrics
                .get(&addr)
                .cloned()
                .unwrap_or_else(|| Err(format!("connecting to {addr}: Connection refused (os error 111)")));
            Box::pin(async move { answer })
        })
    }

    /// Two clients (hub, member cluster) served by this fake until both are dropped.
    #[must_use]
    pub fn clients(&self) -> (Client, Client, tokio::task::JoinHandle<()>) {
        let (hub_svc, mut hub) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let (local_svc, mut local) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        let task = tokio::spawn(async move {
            let (mut hub_open, mut local_open) = (true, true);
            while hub_open || local_open {
                tokio::select! {
                    r = hub.next_request(), if hub_open => match r {
                        Some((req, send)) => me.serve(Side::Hub, req, send).await,
                        None => hub_open = false,
                    },
                    r = local.next_request(), if local_open => match r {
                        Some((req, send)) => me.serve(Side::Cluster, req, send).await,
                        None => local_open = false,
                    },
                }
            }
        });
        (Client::new(hub_svc, "default"), Client::new(local_svc, "default"), task)
    }

    async fn serve(&self, side: Side, req: Request<Body>, send: tower_test::mock::SendResponse<Response<Body>>) {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content_type =
            req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = req.into_body().collect_bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let body: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        let (code, reply) = self.handle(side, &method, &path, &query, &content_type, &body);
        let reply_bytes = match reply {
            Reply::Json(v) => serde_json::to_vec(&v).unwrap_or_default(),
            Reply::Lines(lines) => lines
                .iter()
                .flat_map(|l| {
                    let mut b = serde_json::to_vec(l).unwrap_or_default();
                    b.push(b'\n');
                    b
                })
                .collect(),
        };
        let mut st = self.state.lock().expect("state lock");
        let recorded = Recorded { side, method, path, query, content_type, body, status: code };
        let line = recorded.line();
        st.requests.push(recorded);
        let hook = st.after_request.take();
        drop(st);
        if let Some(mut hook) = hook {
            (hook.0)(&line);
            self.state.lock().expect("state lock").after_request = Some(hook);
        }
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(reply_bytes))
            .expect("a response builds");
        send.send_response(response);
    }

    fn check_access(&self, side: Side, method: &str, path: &str, query: &str) {
        let path_and_query = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
        let (declared, own) = &self.access[&side];
        let ok = request_attributes(method, &path_and_query).is_some_and(|a| covers(declared, &a, Some(own)));
        if !ok {
            self.state.lock().expect("state lock").violations.push(format!("{side:?}: {method} {path_and_query}"));
        }
    }

    fn handle(&self, side: Side, method: &str, path: &str, query: &str, ct: &str, body: &Value) -> (u16, Reply) {
        self.check_access(side, method, path, query);
        // A server-side apply that creates its object is authorized for `create` as well as
        // `patch` (the API server's patch handler checks both), so the list must declare both.
        let creates = method == "PATCH"
            && ct.starts_with("application/apply-patch")
            && !self.state.lock().expect("state lock").objects.contains_key(&(side, path.to_owned()));
        if creates {
            let path_and_query = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
            let (declared, own) = &self.access[&side];
            let ok = request_attributes(method, &path_and_query)
                .is_some_and(|a| covers(declared, &RequestAttributes { verb: "create", ..a }, Some(own)));
            if !ok {
                self.state.lock().expect("state lock").violations.push(format!("{side:?}: create by apply {path}"));
            }
        }
        if method == "GET" && query.split('&').any(|kv| kv == "watch=true") {
            return (200, Reply::Lines(self.state.lock().expect("state lock").watch_events.clone()));
        }
        let (code, v) = self.handle_object(side, method, path, query, ct, body);
        (code, Reply::Json(v))
    }

    fn handle_object(&self, side: Side, method: &str, path: &str, query: &str, ct: &str, body: &Value) -> (u16, Value) {
        let mut st = self.state.lock().expect("state lock");
        // Injected faults.
        let mut fault = None;
        for f in &mut st.faults {
            if f.side == side && f.method == method && path.starts_with(&f.path_prefix) {
                if f.nth == 0 {
                    fault = Some(f.status);
                    f.nth = usize::MAX;
                } else if f.nth != usize::MAX {
                    f.nth -= 1;
                }
            }
        }
        if let Some(code) = fault {
            return (code, status(code, "InternalError", "injected failure"));
        }
        let key = (side, path.to_owned());
        match method {
            "GET" => {
                if let Some(obj) = st.objects.get(&key) {
                    return (200, obj.clone());
                }
                const COLLECTIONS: [&str; 10] = [
                    "workerslices",
                    "memberclusters",
                    "nodes",
                    "namespaces",
                    "secrets",
                    "configmaps",
                    "deployments",
                    "services",
                    "pods",
                    "network-attachment-definitions",
                ];
                let Some((base, resource)) = path.rsplit_once('/').filter(|(_, r)| COLLECTIONS.contains(r)) else {
                    return (404, status(404, "NotFound", &format!("{path} not found")));
                };
                let label = query_param(query, "labelSelector").unwrap_or_default();
                let field = query_param(query, "fieldSelector").unwrap_or_default();
                // An object is in the collection when its path minus the name is the
                // collection's, or (a list across namespaces) `<base>/namespaces/<ns>/<resource>`.
                let in_collection = |p: &str| {
                    let Some((coll, _)) = p.rsplit_once('/') else { return false };
                    coll == path
                        || (!path.contains("/namespaces/")
                            && coll
                                .strip_prefix(&format!("{base}/namespaces/"))
                                .is_some_and(|rest| rest.split_once('/').is_some_and(|(_, r)| r == resource)))
                };
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((s, p), _)| *s == side && in_collection(p))
                    .map(|(_, o)| o.clone())
                    .filter(|o| selector_matches(o, &label, false) && selector_matches(o, &field, true))
                    .collect();
                let rv = st.resource_version.to_string();
                (200, json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}))
            }
            "POST" if path.contains("/serviceaccounts/") && path.ends_with("/token") => {
                // TokenRequest: a JWT issued now for the asked lifetime (unsigned: the worker
                // reads only its times), counted so that tests can tell tokens apart.
                let account = path.trim_end_matches("/token").rsplit('/').next().unwrap_or_default().to_owned();
                st.tokens_issued += 1;
                let iat = st.now;
                let exp = iat + body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
                let token = jwt(&json!({"iat": iat, "exp": exp, "sub": account, "jti": st.tokens_issued}));
                let mut answer = body.clone();
                let expires = k8s_openapi::jiff::Timestamp::from_second(exp).map(|t| t.to_string()).unwrap_or_default();
                answer["status"] = json!({"token": token, "expirationTimestamp": expires});
                (201, answer)
            }
            "PUT" => {
                let Some(old) = st.objects.get(&key) else {
                    return (404, status(404, "NotFound", &format!("{path} not found")));
                };
                if body["metadata"]["resourceVersion"].as_str() != old["metadata"]["resourceVersion"].as_str() {
                    return (409, status(409, "Conflict", "the object has been modified"));
                }
                st.resource_version += 1;
                let mut obj = body.clone();
                obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
                st.objects.insert(key, obj.clone());
                (200, obj)
            }
            "POST" => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let key = (side, format!("{path}/{name}"));
                if st.objects.contains_key(&key) {
                    return (409, status(409, "AlreadyExists", &format!("{name} already exists")));
                }
                st.resource_version += 1;
                let mut obj = body.clone();
                obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
                st.objects.insert(key, obj.clone());
                (201, obj)
            }
            "PATCH" => {
                let (object_path, is_status) = match path.strip_suffix("/status") {
                    Some(p) => (p.to_owned(), true),
                    None => (path.to_owned(), false),
                };
                let okey = (side, object_path.clone());
                let apply = ct.starts_with("application/apply-patch");
                let Some(mut obj) = st.objects.get(&okey).cloned().or_else(|| apply.then(|| json!({}))) else {
                    return (404, status(404, "NotFound", &format!("{object_path} not found")));
                };
                if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
                    && obj["metadata"]["resourceVersion"].as_str() != Some(rv)
                {
                    return (409, status(409, "Conflict", "the object has been modified"));
                }
                let mut patch = body.clone();
                if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                if is_status {
                    json_patch::merge(&mut obj["status"], &patch["status"]);
                } else if apply {
                    // The worker is the only field manager here: what it applies replaces what
                    // it applied before (fields it drops go), server-set fields stay.
                    let old = obj;
                    obj = patch;
                    for key in ["uid", "creationTimestamp"] {
                        if let Some(v) = old["metadata"].get(key) {
                            obj["metadata"][key] = v.clone();
                        }
                    }
                    if let Some(v) = old.get("status") {
                        obj["status"] = v.clone();
                    }
                    let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
                    if obj["kind"] == "Service"
                        && obj["spec"]["type"] == "NodePort"
                        && let Some(ports) = obj["spec"]["ports"].as_array_mut()
                    {
                        for p in ports {
                            if p.get("nodePort").is_some() {
                                continue;
                            }
                            let kept =
                                old_ports.iter().find(|o| o["name"] == p["name"]).and_then(|o| o.get("nodePort"));
                            let port = match kept {
                                Some(np) => np.clone(),
                                None => {
                                    st.node_port += 1;
                                    json!(31_000 + st.node_port)
                                }
                            };
                            p["nodePort"] = port;
                        }
                    }
                } else {
                    json_patch::merge(&mut obj, &patch);
                }
                st.resource_version += 1;
                obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
                let gone = obj["metadata"].get("deletionTimestamp").is_some()
                    && obj["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty);
                if gone {
                    st.objects.remove(&okey);
                } else {
                    st.objects.insert(okey, obj.clone());
                }
                (200, obj)
            }
            "DELETE" => match st.objects.remove(&key) {
                Some(obj) => (200, obj),
                None => (404, status(404, "NotFound", &format!("{path} not found"))),
            },
            _ => (405, status(405, "MethodNotAllowed", method)),
        }
    }
}
