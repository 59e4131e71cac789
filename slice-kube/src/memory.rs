//! An in-memory Kubernetes API, served to kube-rs clients (`kube::Client::new` over a tower
//! service): one or more API servers (a hub and member clusters), each keeping JSON objects by
//! path. The lab runs the hub's and the workers' real passes against it (`e2e::control`), and
//! the controllers' tests check their requests with it.
//!
//! What it does as the API server does: list (label and field selectors, across namespaces),
//! get, create (409 when it exists), update (409 on a stale `resourceVersion`), JSON merge
//! patch (409 when the patch names a stale `resourceVersion`), server-side apply (taken as a
//! merge of the applied object: the callers here are each the only manager of what they apply),
//! status patches, delete (an object with finalizers gets a `deletionTimestamp` and goes when
//! its last finalizer does), `metadata.generation` (1 on create, +1 when `spec` changes),
//! `resourceVersion`s, a `nodePort` for each NodePort Service port, TokenRequest (an unsigned
//! JWT from [`State::now`]). Watches answer [`State::watch_events`] once.
//!
//! Custom resources as the API server serves them: where a server holds the
//! `CustomResourceDefinition` of a resource (`<plural>.<group>`), only its served versions answer
//! (others 404), and every served version is a view of one collection, kept at the storage
//! version's path, with `apiVersion` rewritten to the version asked for (`conversion: None`).
//! The group's discovery document (`GET /apis/<group>`) lists the served versions, newest first;
//! without a CRD of the group it is 404. Without a CRD, any version of a path is its own
//! collection (the lab and most tests hold no CRDs).
//!
//! What it checks: every request against the declared access list of the server it went to
//! ([`slice_api::rbac::covers`]); an undeclared request is answered but recorded in
//! [`State::violations`]. Failures can be injected ([`MemoryApi::fail`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use slice_api::rbac::{Access, RequestAttributes, covers, granted_in, request_attributes};

/// A name for each API server of a [`MemoryApi`]: a `String`, or a test's own enum.
pub trait Server: Clone + Ord + fmt::Debug + Send + Sync + 'static {
    /// What [`Recorded::line`] puts before the method (e.g. `"hub "`; empty for the server a
    /// test talks to most).
    fn line_prefix(&self) -> String;
}

impl Server for String {
    fn line_prefix(&self) -> String {
        format!("{self} ")
    }
}

/// One request as a server saw it.
#[derive(Debug, Clone)]
pub struct Recorded<S> {
    pub side: S,
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    pub status: u16,
}

impl<S: Server> Recorded<S> {
    /// `"<METHOD> <path>"` after the server's [`Server::line_prefix`].
    #[must_use]
    pub fn line(&self) -> String {
        format!("{}{} {}", self.side.line_prefix(), self.method, self.path)
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

impl fmt::Debug for AfterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AfterRequest")
    }
}

/// A failure to inject.
#[derive(Debug, Clone)]
pub struct Fault<S> {
    pub side: S,
    pub method: &'static str,
    pub path_prefix: String,
    /// Fails the n-th matching request (0 = the first).
    pub nth: usize,
    pub status: u16,
}

/// The state of every server.
#[derive(Debug)]
pub struct State<S> {
    /// Objects by (server, path of the object).
    pub objects: BTreeMap<(S, String), Value>,
    pub requests: Vec<Recorded<S>>,
    /// Whether requests are recorded (the lab turns it off: its passes never end).
    pub record: bool,
    pub faults: Vec<Fault<S>>,
    pub violations: Vec<String>,
    /// Events (`{"type": …, "object": …}`) every watch request gets, newline-delimited.
    pub watch_events: Vec<Value>,
    /// See [`AfterRequest`].
    pub after_request: Option<AfterRequest>,
    resource_version: u64,
    node_port: u16,
    /// The API server's clock for the tokens it issues (seconds since the epoch).
    pub now: i64,
    /// Tokens issued by TokenRequest.
    pub tokens_issued: u64,
}

impl<S> Default for State<S> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            requests: Vec::new(),
            record: true,
            faults: Vec::new(),
            violations: Vec::new(),
            watch_events: Vec::new(),
            after_request: None,
            resource_version: 0,
            node_port: 0,
            now: 0,
            tokens_issued: 0,
        }
    }
}

/// An unsigned JWT with `claims` (the shape of a ServiceAccount token).
#[must_use]
pub fn jwt(claims: &Value) -> String {
    use base64::Engine as _;
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!("{}.{}.{}", enc(br#"{"alg":"RS256"}"#), enc(claims.to_string().as_bytes()), enc(b"unsigned"))
}

/// Shared handle to the servers' state.
#[derive(Debug, Clone)]
pub struct MemoryApi<S: Server> {
    pub state: Arc<Mutex<State<S>>>,
    /// Declared access per server, and the "own namespace" of each.
    pub access: Arc<BTreeMap<S, (&'static [Access], String)>>,
}

/// Where a path points: a collection, or one object (maybe a subresource of it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// `/api/v1` or `/apis/<group>/<version>`.
    base: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (base, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let owned = |s: &&str| (*s).to_owned();
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, rest @ ..] => (Some((*ns).to_owned()), [&[*r][..], rest].concat()),
        other => (None, other.to_vec()),
    };
    match rest.as_slice() {
        [resource] => Some(Target { base, namespace, resource: (*resource).to_owned(), name: None, subresource: None }),
        [resource, name] => {
            Some(Target { base, namespace, resource: owned(resource), name: Some(owned(name)), subresource: None })
        }
        [resource, name, sub] => Some(Target {
            base,
            namespace,
            resource: owned(resource),
            name: Some(owned(name)),
            subresource: Some(owned(sub)),
        }),
        _ => None,
    }
}

impl Target {
    fn collection(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/namespaces/{ns}/{}", self.base, self.resource),
            None => format!("{}/{}", self.base, self.resource),
        }
    }

    fn object(&self) -> Option<String> {
        Some(format!("{}/{}", self.collection(), self.name.as_ref()?))
    }
}

/// The plural of a kind (lowercase + `s`, with the exceptions slicenet meets).
#[must_use]
pub fn plural(kind: &str) -> String {
    match kind {
        "NetworkAttachmentDefinition" => "network-attachment-definitions".into(),
        "Endpoints" => "endpoints".into(),
        "NetworkPolicy" => "networkpolicies".into(),
        "SlicePeers" => "slicepeers".into(),
        "MultiNetworkPolicy" => "multi-networkpolicies".into(),
        k => format!("{}s", k.to_lowercase()),
    }
}

/// Kinds without a namespace.
const CLUSTER_SCOPED: [&str; 8] = [
    "Namespace",
    "Node",
    "MemberCluster",
    "SliceConfig",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
];

/// The path of an object (from its apiVersion, kind and metadata).
#[must_use]
pub fn object_path(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str().filter(|_| !CLUSTER_SCOPED.contains(&kind));
    let base = if api_version.contains('/') { format!("/apis/{api_version}") } else { format!("/api/{api_version}") };
    match ns {
        Some(ns) => format!("{base}/namespaces/{ns}/{}/{name}", plural(kind)),
        None => format!("{base}/{}/{name}", plural(kind)),
    }
}

fn selector_matches(obj: &Value, selector: &str, field: bool) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v, equal) = match term.split_once("!=") {
            Some((k, v)) => (k, v, false),
            None => {
                let (k, v) = term.split_once("==").or_else(|| term.split_once('=')).unwrap_or((term, ""));
                (k, v, true)
            }
        };
        let value = if field {
            let mut at = obj;
            for part in k.split('.') {
                at = &at[part];
            }
            at.as_str()
        } else if !term.contains('=') {
            // `key` alone: the label exists.
            return obj["metadata"]["labels"].get(k).is_some();
        } else {
            obj["metadata"]["labels"][k].as_str()
        };
        (value == Some(v)) == equal
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

/// A `Status` body.
#[must_use]
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

enum Reply {
    Json(Value),
    Lines(Vec<Value>),
}

fn now_rfc3339() -> String {
    format!("{:.0}", k8s_openapi::jiff::Timestamp::now())
}

impl<S: Server> MemoryApi<S> {
    /// Servers named by `access`: each with its declared access list and its own namespace.
    #[must_use]
    pub fn new(access: impl IntoIterator<Item = (S, &'static [Access], String)>) -> Self {
        let access = access.into_iter().map(|(s, a, ns)| (s, (a, ns))).collect();
        Self { state: Arc::default(), access: Arc::new(access) }
    }

    /// The state, locked.
    ///
    /// # Panics
    /// When a holder of the lock panicked.
    pub fn lock(&self) -> MutexGuard<'_, State<S>> {
        self.state.lock().expect("the in-memory API's state lock")
    }

    /// Puts an object (JSON with apiVersion, kind, metadata) on `side`, as its owner would
    /// write it (a new `resourceVersion`; a `uid` and `creationTimestamp` when it has none).
    pub fn put(&self, side: S, mut obj: Value) {
        let mut st = self.lock();
        st.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
        if obj["metadata"].get("uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", st.resource_version));
        }
        let path = object_path(&obj);
        let path = match stored_at(&st, &side, &path) {
            Ok(Stored { path, storage: Some(storage), .. }) => {
                obj["apiVersion"] = json!(storage);
                path
            }
            Ok(stored) => stored.path,
            Err(()) => path,
        };
        st.objects.insert((side, path), obj);
    }

    /// The object at `path` on `side` (as a served version of a custom resource shows it;
    /// `None` in a version not served).
    #[must_use]
    pub fn get(&self, side: S, path: &str) -> Option<Value> {
        let st = self.lock();
        let stored = stored_at(&st, &side, path).ok()?;
        let mut obj = st.objects.get(&(side, stored.path)).cloned()?;
        if let Some(asked) = stored.asked {
            obj["apiVersion"] = json!(asked);
        }
        Some(obj)
    }

    /// Changes the object at `path` with `f` (bumping its resourceVersion).
    ///
    /// # Panics
    /// When there is no such object.
    pub fn edit(&self, side: S, path: &str, f: impl FnOnce(&mut Value)) {
        let mut obj = self.get(side.clone(), path).unwrap_or_else(|| panic!("no object {path}"));
        f(&mut obj);
        self.put(side, obj);
    }

    /// Removes the object at `path` (at once, finalizers or not).
    pub fn remove(&self, side: S, path: &str) {
        let mut st = self.lock();
        let path = stored_at(&st, &side, path).map_or_else(|()| path.to_owned(), |s| s.path);
        st.objects.remove(&(side, path));
    }

    /// Paths of the objects on `side` under `prefix` (custom resources at their storage
    /// version's path).
    #[must_use]
    pub fn paths(&self, side: &S, prefix: &str) -> Vec<String> {
        let st = self.lock();
        st.objects.keys().filter(|(s, p)| s == side && p.starts_with(prefix)).map(|(_, p)| p.clone()).collect()
    }

    /// The objects of a collection on `side` (`/api/v1/namespaces/x/pods`, or across
    /// namespaces without the `namespaces/x` part).
    #[must_use]
    pub fn list(&self, side: &S, collection: &str) -> Vec<Value> {
        self.list_where(side, collection, |_| true)
    }

    /// The objects of a collection on `side` for which `keep` holds (only those are copied).
    #[must_use]
    pub fn list_where(&self, side: &S, collection: &str, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
        let st = self.lock();
        let Ok(stored) = stored_at(&st, side, collection) else { return Vec::new() };
        let Some(target) = parse_target(&stored.path) else { return Vec::new() };
        let mut items = list_items(&st, side, &target, keep);
        if let Some(asked) = stored.asked {
            for item in &mut items {
                item["apiVersion"] = json!(asked);
            }
        }
        items
    }

    /// Takes the recorded requests (and clears them).
    pub fn take_requests(&self) -> Vec<Recorded<S>> {
        std::mem::take(&mut self.lock().requests)
    }

    /// Access violations seen so far.
    #[must_use]
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Makes the n-th matching request fail with `status`.
    pub fn fail(&self, side: S, method: &'static str, path_prefix: &str, nth: usize, status: u16) {
        self.lock().faults.push(Fault { side, method, path_prefix: path_prefix.to_owned(), nth, status });
    }

    /// A client of the server `side`. Requests are answered inline (no task), so requests of
    /// several clients are recorded in the order they were made. Needs a Tokio runtime.
    #[must_use]
    pub fn client(&self, side: S) -> Client {
        self.client_with(side, None)
    }

    /// A client of the server `side` whose requests are checked against `access` (own
    /// namespace `own_namespace`) instead of the server's list: one component among several
    /// talking to one server (the hub and every worker on the hub).
    #[must_use]
    pub fn client_as(&self, side: S, access: &'static [Access], own_namespace: &str) -> Client {
        self.client_with(side, Some((access, own_namespace.to_owned())))
    }

    fn client_with(&self, side: S, access: Option<(&'static [Access], String)>) -> Client {
        let me = self.clone();
        let access = Arc::new(access);
        let service = tower::service_fn(move |req: Request<Body>| {
            let (me, side, access) = (me.clone(), side.clone(), access.clone());
            async move { Ok::<_, Infallible>(me.serve(side, access.as_ref().as_ref(), req).await) }
        });
        Client::new(service, "default")
    }

    /// A request made as the cluster's administrator (`kubectl`): not checked, not recorded.
    /// Returns the status code and the body the API server answers.
    pub fn request(&self, side: &S, method: &str, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        let mut st = self.lock();
        handle_object(&mut st, side, method, path, "", content_type, body)
    }

    async fn serve(&self, side: S, access: Option<&(&'static [Access], String)>, req: Request<Body>) -> Response<Body> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content_type =
            req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = req.into_body().collect_bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        let body: Value =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        let (code, reply) = self.handle(&side, access, &method, &path, &query, &content_type, &body);
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
        let mut st = self.lock();
        let recorded = Recorded { side, method, path, query, content_type, body, status: code };
        let line = recorded.line();
        if st.record {
            st.requests.push(recorded);
        }
        let hook = st.after_request.take();
        drop(st);
        if let Some(mut hook) = hook {
            (hook.0)(&line);
            self.lock().after_request = Some(hook);
        }
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(reply_bytes))
            .expect("a response builds")
    }

    fn check_access(
        &self,
        side: &S,
        access: Option<&(&'static [Access], String)>,
        method: &str,
        path: &str,
        query: &str,
    ) {
        let path_and_query = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
        let Some((declared, own)) = access.or_else(|| self.access.get(side)) else {
            self.lock().violations.push(format!("{side:?}: no such server for {method} {path_and_query}"));
            return;
        };
        // Discovery is every authenticated user's (the `system:discovery` ClusterRole).
        let ok = (method == "GET" && is_discovery(path))
            || request_attributes(method, &path_and_query).is_some_and(|a| {
                covers(declared, &a, Some(own))
                    || granted_in(declared, &a).is_some_and(|ns| roles_grant(&self.lock(), side, ns, own, &a))
            });
        if !ok {
            self.lock().violations.push(format!("{side:?}: {method} {path_and_query}"));
        }
    }

    #[allow(clippy::too_many_arguments)] // The parts of one request.
    fn handle(
        &self,
        side: &S,
        access: Option<&(&'static [Access], String)>,
        method: &str,
        path: &str,
        query: &str,
        ct: &str,
        body: &Value,
    ) -> (u16, Reply) {
        self.check_access(side, access, method, path, query);
        // A server-side apply that creates its object is authorized for `create` as well as
        // `patch` (the API server's patch handler checks both), so the list must declare both.
        let creates = method == "PATCH" && ct.starts_with("application/apply-patch") && {
            let st = self.lock();
            let stored = stored_at(&st, side, path).map_or_else(|()| path.to_owned(), |s| s.path);
            !st.objects.contains_key(&(side.clone(), stored))
        };
        if creates {
            let path_and_query = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
            if let Some((declared, own)) = access.or_else(|| self.access.get(side)) {
                let ok = request_attributes(method, &path_and_query)
                    .is_some_and(|a| covers(declared, &RequestAttributes { verb: "create", ..a }, Some(own)));
                if !ok {
                    self.lock().violations.push(format!("{side:?}: create by apply {path}"));
                }
            }
        }
        if method == "GET" && query.split('&').any(|kv| kv == "watch=true") {
            return (200, Reply::Lines(self.lock().watch_events.clone()));
        }
        if method == "GET"
            && let ["apis", group] = path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice()
        {
            let (code, v) = api_group(&self.lock(), side, group);
            return (code, Reply::Json(v));
        }
        let mut st = self.lock();
        let (code, v) = handle_object(&mut st, side, method, path, query, ct, body);
        (code, Reply::Json(v))
    }
}

/// Whether the Roles in `namespace` on `side` that a RoleBinding there binds to a
/// ServiceAccount of `own` (the requester's namespace) grant the request `a`, as RBAC reads
/// them: a rule with the group, the resource (`resource/subresource`) and the verb, and, when
/// it lists `resourceNames`, the object's name among them (a request without a name is not
/// granted by a rule with names). The [`slice_api::rbac::Scope::Granted`] accesses are checked
/// this way: against the Roles another controller keeps, at the time of the request.
fn roles_grant<S: Server>(st: &State<S>, side: &S, namespace: &str, own: &str, a: &RequestAttributes) -> bool {
    const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces";
    let prefix = format!("{RBAC}/{namespace}/rolebindings/");
    let resource =
        if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let has = |v: &Value, what: &str| v.as_array().is_some_and(|l| l.iter().any(|x| x == what || x == "*"));
    st.objects
        .range((side.clone(), prefix.clone())..)
        .take_while(|((s, p), _)| s == side && p.starts_with(&prefix))
        .filter(|(_, b)| {
            b["subjects"]
                .as_array()
                .is_some_and(|subjects| subjects.iter().any(|x| x["kind"] == "ServiceAccount" && x["namespace"] == own))
                && b["roleRef"]["kind"] == "Role"
        })
        .filter_map(|(_, b)| {
            let role = format!("{RBAC}/{namespace}/roles/{}", b["roleRef"]["name"].as_str()?);
            st.objects.get(&(side.clone(), role))
        })
        .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
        .any(|rule| {
            has(&rule["apiGroups"], &a.group)
                && has(&rule["resources"], &resource)
                && has(&rule["verbs"], a.verb)
                && match rule["resourceNames"].as_array() {
                    Some(names) if !names.is_empty() => a.name.as_deref().is_some_and(|n| names.iter().any(|x| x == n)),
                    _ => true,
                }
        })
}

fn list_items<S: Server>(st: &State<S>, side: &S, target: &Target, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    // The objects under a path prefix, by a range of the ordered map (not a scan of every
    // object: the scale benchmarks hold tens of thousands).
    let under = |prefix: String| {
        st.objects
            .range((side.clone(), prefix.clone())..)
            .take_while(move |((s, p), _)| s == side && p.starts_with(&prefix))
            .map(|((_, p), o)| (p, o))
    };
    let collection = target.collection();
    let direct = collection.len() + 1;
    let mut found: Vec<(&String, &Value)> =
        under(format!("{collection}/")).filter(|(p, _)| !p[direct..].contains('/')).collect();
    // Across namespaces: `<base>/namespaces/<ns>/<resource>/<name>` belongs to
    // `<base>/<resource>` as well.
    if target.namespace.is_none() {
        let namespaced = target.base.len() + "/namespaces/".len();
        found.extend(under(format!("{}/namespaces/", target.base)).filter(|(p, _)| {
            let mut parts = p[namespaced..].split('/');
            matches!((parts.next(), parts.next(), parts.next(), parts.next()),
                (Some(_), Some(resource), Some(_), None) if resource == target.resource)
        }));
        found.sort_by(|a, b| a.0.cmp(b.0));
    }
    found.into_iter().filter(|(_, o)| keep(o)).map(|(_, o)| o.clone()).collect()
}

/// Whether an object goes once it has no finalizers left.
fn releases(obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some()
        && obj["metadata"]["finalizers"].as_array().is_none_or(Vec::is_empty)
}

fn bump<S>(st: &mut State<S>, obj: &mut Value) {
    st.resource_version += 1;
    obj["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
}

/// `metadata.generation` of `new` (replacing `old`): +1 when the spec changed.
fn generation(old: &Value, new: &mut Value) {
    if new.get("spec").is_none() {
        return;
    }
    let was = old["metadata"]["generation"].as_i64().unwrap_or(0);
    let changed = old.get("spec") != new.get("spec");
    new["metadata"]["generation"] = json!(if changed || was == 0 { was + 1 } else { was });
}

/// Whether `path` is a discovery document (`/api`, `/apis`, a group, a group version).
fn is_discovery(path: &str) -> bool {
    matches!(
        path.trim_matches('/').split('/').collect::<Vec<_>>().as_slice(),
        ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _]
    )
}

const CRD_COLLECTION: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

/// Where a request's object or collection is kept.
struct Stored {
    /// The path at the storage version (the path asked for when no CRD manages it).
    path: String,
    /// `<group>/<version>` asked for, when a CRD manages the resource.
    asked: Option<String>,
    /// `<group>/<storage version>`, when a CRD manages the resource.
    storage: Option<String>,
}

/// Where `path` is kept on `side`: `Err` when a CRD of its resource does not serve its version.
fn stored_at<S: Server>(st: &State<S>, side: &S, path: &str) -> Result<Stored, ()> {
    let unmanaged = || Ok(Stored { path: path.to_owned(), asked: None, storage: None });
    let Some(target) = parse_target(path) else { return unmanaged() };
    let Some((group, version)) = target.base.strip_prefix("/apis/").and_then(|gv| gv.split_once('/')) else {
        return unmanaged();
    };
    let crd = format!("{CRD_COLLECTION}/{}.{group}", target.resource);
    let Some(crd) = st.objects.get(&(side.clone(), crd)) else { return unmanaged() };
    let versions = crd["spec"]["versions"].as_array().cloned().unwrap_or_default();
    if !versions.iter().any(|v| v["name"] == version && v["served"] == true) {
        return Err(());
    }
    let storage = versions.iter().find(|v| v["storage"] == true).and_then(|v| v["name"].as_str()).unwrap_or(version);
    let rest = &path[target.base.len()..];
    Ok(Stored {
        path: format!("/apis/{group}/{storage}{rest}"),
        asked: Some(format!("{group}/{version}")),
        storage: Some(format!("{group}/{storage}")),
    })
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first.
fn version_priority(version: &str) -> (u8, u64, u64) {
    let Some(rest) = version.strip_prefix('v') else { return (0, 0, 0) };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let major = rest[..digits].parse().unwrap_or(0);
    let (stability, minor) = match &rest[digits..] {
        "" => (3, 0),
        tail => match (tail.strip_prefix("beta"), tail.strip_prefix("alpha")) {
            (Some(n), _) => (2, n.parse().unwrap_or(0)),
            (_, Some(n)) => (1, n.parse().unwrap_or(0)),
            _ => (0, 0),
        },
    };
    (stability, major, minor)
}

/// The `APIGroup` discovery document of `group` from the CRDs on `side` (404 without any).
fn api_group<S: Server>(st: &State<S>, side: &S, group: &str) -> (u16, Value) {
    let mut versions: Vec<String> = st
        .objects
        .iter()
        .filter(|((s, p), crd)| s == side && p.starts_with(CRD_COLLECTION) && crd["spec"]["group"] == group)
        .flat_map(|(_, crd)| crd["spec"]["versions"].as_array().cloned().unwrap_or_default())
        .filter(|v| v["served"] == true)
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
    versions.dedup();
    if versions.is_empty() {
        return (404, status(404, "NotFound", "the server could not find the requested resource"));
    }
    let entry = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    let listed: Vec<Value> = versions.iter().map(entry).collect();
    (
        200,
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": listed,
               "preferredVersion": entry(&versions[0])}),
    )
}

/// A request on `path`, custom resources routed to their storage version ([`stored_at`]).
fn handle_object<S: Server>(
    st: &mut State<S>,
    side: &S,
    method: &str,
    path: &str,
    query: &str,
    ct: &str,
    body: &Value,
) -> (u16, Value) {
    // Injected faults.
    let mut fault = None;
    for f in &mut st.faults {
        if &f.side == side && f.method == method && path.starts_with(&f.path_prefix) {
            if f.nth == 0 {
                fault = Some(f.status);
                f.nth = usize::MAX;
            } else if f.nth != usize::MAX {
                f.nth -= 1;
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
    let Ok(stored) = stored_at(st, side, path) else {
        return (404, status(404, "NotFound", "the server could not find the requested resource"));
    };
    let mut body = body.clone();
    if let (Some(storage), Some(_)) = (&stored.storage, body.get("apiVersion")) {
        body["apiVersion"] = json!(storage);
    }
    let (code, mut reply) = handle_stored(st, side, method, &stored.path, query, ct, &body);
    if let Some(asked) = &stored.asked {
        if let Some(items) = reply.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                item["apiVersion"] = json!(asked);
            }
        } else if reply["kind"] != "Status" && reply.get("apiVersion").is_some() {
            reply["apiVersion"] = json!(asked);
        }
    }
    (code, reply)
}

#[allow(clippy::too_many_lines)] // One arm per verb, as the API server's handlers.
fn handle_stored<S: Server>(
    st: &mut State<S>,
    side: &S,
    method: &str,
    path: &str,
    query: &str,
    ct: &str,
    body: &Value,
) -> (u16, Value) {
    let Some(target) = parse_target(path) else {
        return (404, status(404, "NotFound", &format!("{path} is not an API path")));
    };
    let key = (side.clone(), path.to_owned());
    match method {
        "GET" => {
            if target.name.is_some() {
                return match st.objects.get(&key) {
                    Some(obj) => (200, obj.clone()),
                    None => (404, status(404, "NotFound", &format!("{path} not found"))),
                };
            }
            let label = query_param(query, "labelSelector").unwrap_or_default();
            let field = query_param(query, "fieldSelector").unwrap_or_default();
            let items: Vec<Value> = list_items(st, side, &target, |_| true)
                .into_iter()
                .filter(|o| selector_matches(o, &label, false) && selector_matches(o, &field, true))
                .collect();
            let rv = st.resource_version.to_string();
            (200, json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}))
        }
        "POST" if target.resource == "serviceaccounts" && target.subresource.as_deref() == Some("token") => {
            // TokenRequest: a JWT issued now for the asked lifetime (unsigned: callers read only
            // its times), counted so that tests can tell tokens apart.
            let account = target.name.clone().unwrap_or_default();
            st.tokens_issued += 1;
            let iat = st.now;
            let exp = iat + body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
            let token = jwt(&json!({"iat": iat, "exp": exp, "sub": account, "jti": st.tokens_issued}));
            let mut answer = body.clone();
            let expires = k8s_openapi::jiff::Timestamp::from_second(exp).map(|t| t.to_string()).unwrap_or_default();
            answer["status"] = json!({"token": token, "expirationTimestamp": expires});
            (201, answer)
        }
        "POST" => {
            let name = body["metadata"]["name"].as_str().unwrap_or_default();
            let key = (side.clone(), format!("{path}/{name}"));
            if st.objects.contains_key(&key) {
                return (409, status(409, "AlreadyExists", &format!("{name} already exists")));
            }
            let mut obj = body.clone();
            if obj["metadata"].get("creationTimestamp").is_none() {
                obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            }
            generation(&Value::Null, &mut obj);
            bump(st, &mut obj);
            if obj["metadata"].get("uid").is_none() {
                obj["metadata"]["uid"] = json!(format!("uid-{}", st.resource_version));
            }
            st.objects.insert(key, obj.clone());
            (201, obj)
        }
        "PUT" => {
            let Some(old) = st.objects.get(&key).cloned() else {
                return (404, status(404, "NotFound", &format!("{path} not found")));
            };
            if body["metadata"]["resourceVersion"].as_str() != old["metadata"]["resourceVersion"].as_str() {
                return (409, status(409, "Conflict", "the object has been modified"));
            }
            let mut obj = body.clone();
            generation(&old, &mut obj);
            bump(st, &mut obj);
            st.objects.insert(key, obj.clone());
            (200, obj)
        }
        "PATCH" => {
            let is_status = target.subresource.as_deref() == Some("status");
            let Some(object_path) = target.object() else {
                return (405, status(405, "MethodNotAllowed", "PATCH of a collection"));
            };
            let okey = (side.clone(), object_path.clone());
            let apply = ct.starts_with("application/apply-patch");
            let Some(old) = st.objects.get(&okey).cloned().or_else(|| apply.then(|| json!({}))) else {
                return (404, status(404, "NotFound", &format!("{object_path} not found")));
            };
            if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
                && old["metadata"]["resourceVersion"].as_str() != Some(rv)
            {
                return (409, status(409, "Conflict", "the object has been modified"));
            }
            let mut patch = body.clone();
            if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            let mut obj = old.clone();
            if is_status {
                json_patch::merge(&mut obj["status"], &patch["status"]);
            } else if apply {
                // The caller is the only field manager here: what it applies replaces what it
                // applied before (fields it drops go), server-set fields stay.
                obj = patch;
                for key in ["uid", "creationTimestamp", "generation", "finalizers", "deletionTimestamp"] {
                    if let Some(v) = old["metadata"].get(key) {
                        obj["metadata"][key] = v.clone();
                    }
                }
                if obj["metadata"].get("creationTimestamp").is_none() {
                    obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
                }
                if let Some(v) = old.get("status") {
                    obj["status"] = v.clone();
                }
                assign_node_ports(st, &old, &mut obj);
            } else {
                json_patch::merge(&mut obj, &patch);
            }
            if !is_status {
                generation(&old, &mut obj);
            }
            bump(st, &mut obj);
            if obj["metadata"].get("uid").is_none() {
                obj["metadata"]["uid"] = json!(format!("uid-{}", st.resource_version));
            }
            if releases(&obj) {
                st.objects.remove(&okey);
            } else {
                st.objects.insert(okey, obj.clone());
            }
            (200, obj)
        }
        "DELETE" => {
            let Some(mut obj) = st.objects.get(&key).cloned() else {
                return (404, status(404, "NotFound", &format!("{path} not found")));
            };
            let finalized = obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
            if finalized {
                if obj["metadata"].get("deletionTimestamp").is_none() {
                    obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                    bump(st, &mut obj);
                    st.objects.insert(key, obj.clone());
                }
                return (200, obj);
            }
            st.objects.remove(&key);
            (200, obj)
        }
        _ => (405, status(405, "MethodNotAllowed", method)),
    }
}

/// A NodePort Service's ports keep their `nodePort`, or get the next free one from 31001 on.
fn assign_node_ports<S>(st: &mut State<S>, old: &Value, obj: &mut Value) {
    let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if obj["kind"] != "Service" || obj["spec"]["type"] != "NodePort" {
        return;
    }
    let Some(ports) = obj["spec"]["ports"].as_array_mut() else { return };
    for p in ports {
        if p.get("nodePort").is_some() {
            continue;
        }
        let kept = old_ports.iter().find(|o| o["name"] == p["name"]).and_then(|o| o.get("nodePort"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_collections_and_objects() {
        let t = parse_target("/api/v1/namespaces/a/pods/p/status").expect("parses");
        assert_eq!(t.collection(), "/api/v1/namespaces/a/pods");
        assert_eq!(t.object().as_deref(), Some("/api/v1/namespaces/a/pods/p"));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse_target("/api/v1/namespaces").expect("parses");
        assert_eq!((t.resource.as_str(), t.name.as_deref()), ("namespaces", None));
        let t = parse_target("/api/v1/namespaces/a").expect("parses");
        assert_eq!((t.resource.as_str(), t.name.as_deref()), ("namespaces", Some("a")));
        let t = parse_target("/apis/slicenet.io/v1alpha1/memberclusters/c1/status").expect("parses");
        assert_eq!(t.object().as_deref(), Some("/apis/slicenet.io/v1alpha1/memberclusters/c1"));
        assert!(parse_target("/version").is_none());
    }

    #[test]
    fn selectors_match_labels_and_fields() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "x"}}, "status": {"phase": "Running"}});
        assert!(selector_matches(&pod, "app=x", false));
        assert!(selector_matches(&pod, "app", false));
        assert!(!selector_matches(&pod, "app!=x", false));
        assert!(selector_matches(&pod, "status.phase=Running,metadata.name=p", true));
        assert!(!selector_matches(&pod, "status.phase=Pending", true));
    }

    fn api() -> MemoryApi<String> {
        static ALL: &[Access] = &[];
        MemoryApi::new([("hub".to_owned(), ALL, "ns".to_owned())])
    }

    #[test]
    fn a_finalized_object_is_marked_on_delete_and_goes_with_its_last_finalizer() {
        let api = api();
        let mut st = api.lock();
        let hub = "hub".to_owned();
        let path = "/apis/slicenet.io/v1alpha1/namespaces/n/workerslices";
        let body = json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
            "metadata": {"name": "w", "namespace": "n", "finalizers": ["x"]}, "spec": {"a": 1}});
        assert_eq!(handle_object(&mut st, &hub, "POST", path, "", "", &body).0, 201);
        let w = format!("{path}/w");
        let (code, obj) = handle_object(&mut st, &hub, "DELETE", &w, "", "", &Value::Null);
        assert_eq!(code, 200);
        assert!(obj["metadata"]["deletionTimestamp"].is_string());
        assert!(st.objects.contains_key(&(hub.clone(), w.clone())));
        let release = json!({"metadata": {"finalizers": []}});
        assert_eq!(handle_object(&mut st, &hub, "PATCH", &w, "", "application/merge-patch+json", &release).0, 200);
        assert!(!st.objects.contains_key(&(hub, w)));
    }

    #[test]
    fn the_generation_counts_spec_changes_only() {
        let api = api();
        let mut st = api.lock();
        let hub = "hub".to_owned();
        let path = "/apis/slicenet.io/v1alpha1/sliceconfigs";
        let body = json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig",
            "metadata": {"name": "s"}, "spec": {"a": 1}});
        let (_, obj) = handle_object(&mut st, &hub, "POST", path, "", "", &body);
        assert_eq!(obj["metadata"]["generation"], 1);
        let s = format!("{path}/s");
        let ct = "application/merge-patch+json";
        let (_, obj) = handle_object(&mut st, &hub, "PATCH", &s, "", ct, &json!({"metadata": {"labels": {"l": "v"}}}));
        assert_eq!(obj["metadata"]["generation"], 1);
        let (_, obj) = handle_object(&mut st, &hub, "PATCH", &s, "", ct, &json!({"spec": {"a": 2}}));
        assert_eq!(obj["metadata"]["generation"], 2);
        let (_, obj) =
            handle_object(&mut st, &hub, "PATCH", &format!("{s}/status"), "", ct, &json!({"status": {"x": 1}}));
        assert_eq!(obj["metadata"]["generation"], 2);
        assert_eq!(obj["status"]["x"], 1);
    }

    fn crd(versions: &[(&str, bool)]) -> Value {
        let versions: Vec<Value> =
            versions.iter().map(|(v, storage)| json!({"name": v, "served": true, "storage": storage})).collect();
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "things.example.org"},
            "spec": {"group": "example.org", "names": {"plural": "things", "kind": "Thing"}, "versions": versions}})
    }

    #[test]
    fn a_crd_serves_its_versions_as_views_of_one_collection() {
        let api = api();
        let hub = "hub".to_owned();
        api.put(hub.clone(), crd(&[("v1alpha1", false), ("v1beta1", true)]));
        let mut st = api.lock();
        let alpha = "/apis/example.org/v1alpha1/namespaces/n/things";
        let body = json!({"apiVersion": "example.org/v1alpha1", "kind": "Thing", "metadata": {"name": "t"}});
        assert_eq!(handle_object(&mut st, &hub, "POST", alpha, "", "", &body).0, 201);
        let beta = "/apis/example.org/v1beta1/namespaces/n/things/t";
        assert!(st.objects.contains_key(&(hub.clone(), beta.to_owned())), "kept at the storage version");
        let (code, obj) = handle_object(&mut st, &hub, "GET", beta, "", "", &Value::Null);
        assert_eq!((code, obj["apiVersion"].as_str()), (200, Some("example.org/v1beta1")));
        let (_, list) = handle_object(&mut st, &hub, "GET", alpha, "", "", &Value::Null);
        assert_eq!(list["items"][0]["apiVersion"], "example.org/v1alpha1");
        let (code, _) = handle_object(&mut st, &hub, "GET", "/apis/example.org/v1/things", "", "", &Value::Null);
        assert_eq!(code, 404, "a version the CRD does not serve");
        let (code, group) = api_group(&st, &hub, "example.org");
        assert_eq!(code, 200);
        assert_eq!(group["preferredVersion"]["version"], "v1beta1");
        assert_eq!(group["versions"].as_array().map(Vec::len), Some(2));
        assert_eq!(api_group(&st, &hub, "other.org").0, 404);
        drop(st);
        assert_eq!(api.get(hub.clone(), &format!("{alpha}/t")).unwrap()["apiVersion"], "example.org/v1alpha1");
        assert!(api.get(hub, "/apis/example.org/v1/namespaces/n/things/t").is_none());
    }

    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut v = vec!["v1alpha1", "v2beta1", "v1", "v1beta2", "v1beta1", "v2"];
        v.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(v, ["v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1"]);
        assert!(is_discovery("/apis/example.org") && is_discovery("/apis/example.org/v1") && is_discovery("/api"));
        assert!(!is_discovery("/apis/example.org/v1/things"));
    }

    #[test]
    fn lists_span_namespaces_unless_one_is_named() {
        let api = api();
        let hub = "hub".to_owned();
        for (ns, name) in [("a", "p"), ("b", "q")] {
            api.put(
                hub.clone(),
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}}),
            );
        }
        api.put(hub.clone(), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}));
        assert_eq!(api.list(&hub, "/api/v1/pods").len(), 2);
        assert_eq!(api.list(&hub, "/api/v1/namespaces/a/pods").len(), 1);
        assert_eq!(api.list(&hub, "/api/v1/namespaces").len(), 1);
    }
}
