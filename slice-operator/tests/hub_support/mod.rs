//! A scripted Kubernetes API server for controller tests, on kube-rs's mock service
//! (`tower_test::mock`): the test lists the requests it expects, in order, each with the
//! answer to give; the server checks each request's method, path, query and body, checks that
//! the controller's declared [`Access`] list covers it (so the RBAC built from that list is
//! enough), and fails the test on anything unexpected, including a request too many.
//!
//! Events (`events.k8s.io`) are a side channel: they are answered as the API server would
//! (a create echoed with 201, a series patch with 200), checked against the access list and
//! returned among the requests seen, but not matched against the script, so that each scenario
//! scripts the controller's object requests and the event tests look at the events apart.
//!
//! Reusable as it is by other controllers' tests: copy the folder, or `#[path]` it in.

#![allow(dead_code)] // Each test crate uses a different part of it.

use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use slice_api::rbac::{Access, RequestAttributes, covers, request_attributes};

/// Content type of JSON merge patches.
pub const MERGE_PATCH: &str = "application/merge-patch+json";

/// How a request's body is checked.
#[derive(Debug, Clone)]
pub enum BodyCheck {
    /// Not checked.
    Any,
    /// Must equal this JSON.
    Exact(Value),
    /// Must contain this JSON ([`contains`]).
    Contains(Value),
}

/// What the server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status and JSON body.
    Json(u16, Value),
    /// The request's own body, with this status (what a create returns).
    Echo(u16),
}

/// One expected request and its answer.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: &'static str,
    pub path: String,
    pub query: String,
    pub content_type: Option<&'static str>,
    pub body: BodyCheck,
    pub reply: Reply,
}

impl Exchange {
    fn new(method: &'static str, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: String::new(),
            content_type: None,
            body: BodyCheck::Any,
            reply: Reply::Json(200, json!({})),
        }
    }

    /// A GET (list or get).
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }

    /// A POST (create); answers with the body sent, 201.
    pub fn post(path: impl Into<String>) -> Self {
        Self { reply: Reply::Echo(201), ..Self::new("POST", path) }
    }

    /// A PATCH with a JSON merge patch.
    pub fn merge_patch(path: impl Into<String>) -> Self {
        Self { content_type: Some(MERGE_PATCH), ..Self::new("PATCH", path) }
    }

    /// A DELETE.
    pub fn delete(path: impl Into<String>) -> Self {
        Self::new("DELETE", path)
    }

    /// A PUT (replace); answers with the body sent, 200.
    pub fn put(path: impl Into<String>) -> Self {
        Self { reply: Reply::Echo(200), ..Self::new("PUT", path) }
    }

    /// Answer `code` with `body`.
    #[must_use]
    pub fn reply(mut self, code: u16, body: Value) -> Self {
        self.reply = Reply::Json(code, body);
        self
    }

    /// The exact query string expected (default: none).
    #[must_use]
    pub fn query(mut self, query: &str) -> Self {
        self.query = query.to_owned();
        self
    }

    /// The body must equal `body`.
    #[must_use]
    pub fn body(mut self, body: Value) -> Self {
        self.body = BodyCheck::Exact(body);
        self
    }

    /// The body must contain `body`.
    #[must_use]
    pub fn body_contains(mut self, body: Value) -> Self {
        self.body = BodyCheck::Contains(body);
        self
    }

    /// Answer 200 with `body`.
    #[must_use]
    pub fn ok(mut self, body: Value) -> Self {
        self.reply = Reply::Json(200, body);
        self
    }

    /// Answer with an API error: `code` and a `Status` with `reason`.
    #[must_use]
    pub fn fail(mut self, code: u16, reason: &str) -> Self {
        self.reply = Reply::Json(code, status(code, reason));
        self
    }
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}?{}", self.method, self.path, self.query)?;
        match &self.body {
            BodyCheck::Any => Ok(()),
            BodyCheck::Exact(b) => write!(f, " body == {b}"),
            BodyCheck::Contains(b) => write!(f, " body ⊇ {b}"),
        }
    }
}

/// A Kubernetes `Status` error body.
#[must_use]
pub fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("scripted {reason}"), "reason": reason, "code": code,
    })
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub body: Value,
    pub attributes: RequestAttributes,
    /// The status code the server answered with (0 while unanswered).
    pub reply_code: u16,
}

impl Seen {
    /// Whether it is an `events.k8s.io` request.
    #[must_use]
    pub fn is_event(&self) -> bool {
        self.path.starts_with("/apis/events.k8s.io/")
    }

    /// Whether the request writes.
    #[must_use]
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// Whether the server answered with success.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.reply_code)
    }
}

/// Whether `actual` contains `expected`: objects contain every expected key with a containing
/// value, arrays have the same length and contain element by element, anything else is equal.
#[must_use]
pub fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        (Value::Array(a), Value::Array(e)) => a.len() == e.len() && a.iter().zip(e).all(|(av, ev)| contains(av, ev)),
        _ => actual == expected,
    }
}

/// Applies a JSON merge patch (RFC 7386) to `target`, as the API server does.
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                apply_merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The access check of one request: the declared list and the namespace a
/// [`slice_api::rbac::Scope::OwnNamespace`] access is for.
#[derive(Debug, Clone, Copy)]
pub struct Declared<'a> {
    pub access: &'a [Access],
    pub own_namespace: Option<&'a str>,
}

/// Runs `controller` against a server that expects exactly `script`, and returns the
/// controller's result and the requests seen. Panics with a message naming the first request
/// that differs, one that is not declared in `declared`, a missing one, or an extra one.
pub async fn run_script<F, Fut, T>(declared: Declared<'static>, script: Vec<Exchange>, controller: F) -> (T, Vec<Seen>)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = T>,
{
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(serve(handle, declared, script));
    // Deadlines only bound how long a broken test hangs: generous, so a loaded machine never
    // trips them.
    let result = tokio::time::timeout(Duration::from_secs(120), controller(client))
        .await
        .expect("the controller finished within 120 s");
    let seen = server.await.expect("the scripted server did not panic");
    match seen {
        Ok(seen) => (result, seen),
        Err(message) => panic!("{message}"),
    }
}

enum Next {
    Request(Box<Seen>, tower_test::mock::SendResponse<Response<Body>>),
    /// The client is gone.
    Closed,
    /// Nothing came in time.
    Silent,
}

/// Waits for the next request that is not an event; events met on the way are answered and
/// pushed onto `seen`.
async fn next_scripted(
    handle: &mut Handle,
    declared: Declared<'static>,
    seen: &mut Vec<Seen>,
    wait: Duration,
) -> Result<Next, String> {
    loop {
        let (request, respond) = match tokio::time::timeout(wait, handle.next_request()).await {
            Ok(Some(next)) => next,
            Ok(None) => return Ok(Next::Closed),
            Err(_) => return Ok(Next::Silent),
        };
        let mut got = read(request, declared).await?;
        if got.is_event() {
            let (code, body) = event_reply(&got);
            got.reply_code = code;
            respond.send_response(response(code, &body));
            seen.push(got);
            continue;
        }
        return Ok(Next::Request(Box::new(got), respond));
    }
}

/// What the API server answers to an event request: a create returns the event, a patch the
/// patched part.
fn event_reply(seen: &Seen) -> (u16, Value) {
    match seen.method.as_str() {
        "POST" => (201, seen.body.clone()),
        _ => (200, seen.body.clone()),
    }
}

const SCRIPT_WAIT: Duration = Duration::from_secs(60);

async fn serve(mut handle: Handle, declared: Declared<'static>, script: Vec<Exchange>) -> Result<Vec<Seen>, String> {
    let mut seen = Vec::new();
    let total = script.len();
    for (i, expected) in script.into_iter().enumerate() {
        let Next::Request(got, respond) = next_scripted(&mut handle, declared, &mut seen, SCRIPT_WAIT).await? else {
            return Err(format!(
                "request {}/{total} never came: expected {expected}\nseen before:\n{}",
                i + 1,
                list(&seen)
            ));
        };
        let problem = mismatch(&expected, &got);
        let line = format!("{} {}?{} {}", got.method, got.path, got.query, got.body);
        seen.push(*got);
        if let Some(problem) = problem {
            return Err(format!(
                "request {}/{total}: {problem}\nexpected {expected}\ngot      {line}\nseen:\n{}",
                i + 1,
                list(&seen)
            ));
        }
        let (code, body) = match expected.reply {
            Reply::Json(code, body) => (code, body),
            Reply::Echo(code) => (code, seen.last().map(|s| s.body.clone()).unwrap_or_default()),
        };
        if let Some(last) = seen.last_mut() {
            last.reply_code = code;
        }
        respond.send_response(response(code, &body));
    }
    // Nothing more may come but events: the client is dropped when the controller returns.
    match next_scripted(&mut handle, declared, &mut seen, SCRIPT_WAIT).await? {
        Next::Closed => Ok(seen),
        Next::Silent => Err(format!("the client was still alive {SCRIPT_WAIT:?} after the script ended")),
        Next::Request(got, _) => Err(format!(
            "unexpected request after the script: {} {}?{} {}\nseen:\n{}",
            got.method,
            got.path,
            got.query,
            got.body,
            list(&seen)
        )),
    }
}

/// Serves requests as `answer` decides, in any order, until the client is gone, and returns
/// what was seen. `answer` returns `None` to leave a request pending (a watch that stays open).
/// Requests not covered by `declared` fail the server with a message.
pub fn serve_with<A>(
    declared: Declared<'static>,
    mut answer: A,
) -> (Client, tokio::task::JoinHandle<Result<Vec<Seen>, String>>)
where
    A: FnMut(&Seen) -> Option<(u16, Value)> + Send + 'static,
{
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut pending = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let mut got = read(request, declared).await?;
            match answer(&got) {
                Some((code, body)) => {
                    got.reply_code = code;
                    respond.send_response(response(code, &body));
                }
                None => pending.push(respond),
            }
            seen.push(got);
        }
        Ok(seen)
    });
    (client, server)
}

async fn read(request: Request<Body>, declared: Declared<'_>) -> Result<Seen, String> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let content_type =
        request.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = request.into_body().collect_bytes().await.map_err(|e| format!("reading a request body: {e}"))?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| format!("{method} {path}: body is not JSON: {e}"))?
    };
    let attributes = request_attributes(&method, &format!("{path}?{query}"))
        .ok_or_else(|| format!("{method} {path}: not a resource request"))?;
    if !covers(declared.access, &attributes, declared.own_namespace) {
        return Err(format!(
            "{method} {path}?{query} needs {} {}/{}{} which the access list does not declare",
            attributes.verb,
            if attributes.group.is_empty() { "core" } else { &attributes.group },
            attributes.resource,
            if attributes.subresource.is_empty() { String::new() } else { format!("/{}", attributes.subresource) },
        ));
    }
    Ok(Seen { method, path, query, content_type, body, attributes, reply_code: 0 })
}

fn mismatch(expected: &Exchange, got: &Seen) -> Option<String> {
    if got.method != expected.method || got.path != expected.path {
        return Some("another request".to_owned());
    }
    if query_pairs(&got.query) != query_pairs(&expected.query) {
        return Some(format!("query {:?} instead of {:?}", got.query, expected.query));
    }
    if let Some(ct) = expected.content_type
        && got.content_type.as_deref() != Some(ct)
    {
        return Some(format!("content type {:?} instead of {ct:?}", got.content_type));
    }
    match &expected.body {
        BodyCheck::Any => None,
        BodyCheck::Exact(b) if &got.body != b => Some("body differs".to_owned()),
        BodyCheck::Contains(b) if !contains(&got.body, b) => Some("body lacks what was expected".to_owned()),
        _ => None,
    }
}

/// The query's `key=value` pairs in order, without empty ones (kube-rs writes `?&fieldManager=…`
/// for a request whose only parameter comes after an empty one).
fn query_pairs(query: &str) -> Vec<&str> {
    query.split('&').filter(|p| !p.is_empty()).collect()
}

fn response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_else(|e| panic!("building a response: {e}"))
}

fn list(seen: &[Seen]) -> String {
    seen.iter().map(|s| format!("  {} {}?{}\n", s.method, s.path, s.query)).collect()
}
