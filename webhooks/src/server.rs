//! The HTTPS server: TLS from [`CertStore`] (rustls), HTTP/1.1 and HTTP/2 (hyper), and the routes
//! `/mutate-pod`, `/validate-sliceconfig`, `/healthz`, `/readyz`.
//!
//! Limits on every request: a TLS handshake timeout, a header read timeout, a body size limit
//! (a body whose `Content-Length` exceeds it is refused before a byte of it is read; a chunked
//! body is refused as soon as it crosses it) and a whole-request timeout. Limits on connections:
//! at most `max_connections` at once (more are closed at once), an idle connection (no request
//! in flight for `idle_timeout`) is closed gracefully, HTTP/2 peers that stop answering pings are
//! dropped, and an HTTP/2 connection carries a bounded number of concurrent streams. Every
//! refusal carries a plain-text reason.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::hub::HubView;
use crate::membership::MembershipSource;
use crate::mutate::Mode;
use crate::review::{self, ReviewError};
use crate::tls::CertStore;

/// Path of the mutating webhook for pods.
pub const MUTATE_POD_PATH: &str = "/mutate-pod";
/// Path of the validating webhook for SliceConfigs.
pub const VALIDATE_SLICECONFIG_PATH: &str = "/validate-sliceconfig";

/// Limits and behaviour of the server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whole request, body included.
    pub request_timeout: Duration,
    /// TLS handshake and request headers.
    pub handshake_timeout: Duration,
    /// Largest AdmissionReview body accepted.
    pub max_body_bytes: usize,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// A connection with no request in flight for this long is closed (gracefully).
    pub idle_timeout: Duration,
    /// HTTP/2: a PING this often, and the connection dropped when one is not answered within
    /// [`Settings::handshake_timeout`].
    pub http2_keep_alive_interval: Duration,
    /// HTTP/2: concurrent streams per connection.
    pub http2_max_concurrent_streams: u32,
    pub mode: Mode,
    /// The slice interface's name in pods.
    pub interface: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            // An AdmissionReview holds object and oldObject, each up to etcd's 1.5 MiB.
            max_body_bytes: 6 * 1024 * 1024,
            // The API servers keep a few connections each; 256 leaves room for many replicas
            // of them while bounding what idle clients can hold (a few KiB each).
            max_connections: 256,
            // Shorter than Go's default idle timeout (90 s), so the API server's pool sees the
            // close while idle rather than on a request.
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_max_concurrent_streams: 64,
            mode: Mode::Chained,
            interface: slice_api::names::DEFAULT_SLICE_INTERFACE.to_owned(),
        }
    }
}

/// Everything a request handler needs.
pub struct AppState {
    pub settings: Settings,
    pub membership: Arc<dyn MembershipSource>,
    pub hub: Arc<dyn HubView>,
    pub certs: Arc<CertStore>,
}

type Body = Full<Bytes>;

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut body = msg.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn json(body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn too_large(max: usize) -> Response<Body> {
    let mut resp =
        text(StatusCode::BAD_REQUEST, format!("bad AdmissionReview: the body is larger than the limit of {max} bytes"));
    // The rest of the body is never read: the connection cannot carry another request.
    resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    resp
}

/// Reads the body up to `max` bytes. A body declared larger is refused before it is read; one
/// that grows past `max` (chunked, or longer than declared) is refused when it does.
async fn read_body(body: Incoming, declared: Option<u64>, max: usize) -> Result<Bytes, Response<Body>> {
    if declared.is_some_and(|d| d > max as u64) {
        return Err(too_large(max));
    }
    let mut body = body;
    let mut buf: Vec<u8> = Vec::with_capacity(declared.map_or(8192, |d| d as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            text(StatusCode::BAD_REQUEST, format!("bad AdmissionReview: the body could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(too_large(max));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

async fn route(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/readyz") => {
            if !state.membership.ready() {
                text(StatusCode::SERVICE_UNAVAILABLE, "slice membership not loaded yet")
            } else if !state.hub.ready() {
                text(StatusCode::SERVICE_UNAVAILABLE, "the hub's SliceConfigs and MemberClusters not listed yet")
            } else {
                text(StatusCode::OK, "ok")
            }
        }
        (&Method::POST, MUTATE_POD_PATH | VALIDATE_SLICECONFIG_PATH) => {
            let declared =
                req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            let body = match read_body(req.into_body(), declared, state.settings.max_body_bytes).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            // Mutation is in-memory work of microseconds: inline. Validation may read the hub's
            // directory: off the async workers.
            let outcome = if path == MUTATE_POD_PATH {
                let s = &state.settings;
                Ok(review::review_pod(&body, state.membership.as_ref(), s.mode, &s.interface))
            } else {
                let hub = Arc::clone(&state.hub);
                tokio::task::spawn_blocking(move || review::review_slice_config(&body, hub.as_ref())).await
            };
            match outcome {
                Ok(Ok(answer)) => json(answer),
                Ok(Err(ReviewError::BadRequest(why))) => {
                    text(StatusCode::BAD_REQUEST, format!("bad AdmissionReview: {why}"))
                }
                Ok(Err(ReviewError::Unavailable(why))) => {
                    tracing::warn!(reason = %why, "cannot decide an admission review");
                    text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot decide now: {why}"))
                }
                Err(e) => {
                    tracing::error!(error = %e, "admission handler failed");
                    text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                }
            }
        }
        (_, "/healthz" | "/readyz" | MUTATE_POD_PATH | VALIDATE_SLICECONFIG_PATH) => {
            text(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {path}", req.method()))
        }
        _ => text(StatusCode::NOT_FOUND, format!("no such endpoint {path}")),
    }
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let timeout = state.settings.request_timeout;
    Ok(match tokio::time::timeout(timeout, route(state, req)).await {
        Ok(resp) => resp,
        Err(_) => text(StatusCode::REQUEST_TIMEOUT, format!("request not completed within {timeout:?}")),
    })
}

/// What a connection's idle watcher needs: requests in flight and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `start` at the end of the last request.
    last_ms: AtomicU64,
    start: Instant,
}

impl Activity {
    fn new() -> Self {
        Self { in_flight: AtomicUsize::new(0), last_ms: AtomicU64::new(0), start: Instant::now() }
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        Some(self.start.elapsed().saturating_sub(last))
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(
    state: Arc<AppState>,
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let handshake = state.settings.handshake_timeout;
    let idle_timeout = state.settings.idle_timeout;
    let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(handshake);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(state.settings.http2_keep_alive_interval))
        .keep_alive_timeout(handshake)
        .max_concurrent_streams(state.settings.http2_max_concurrent_streams);
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let (state, activity) = (Arc::clone(&state), Arc::clone(&activity));
            async move {
                activity.begin();
                let resp = handle(state, req).await;
                activity.end();
                resp
            }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick(), if !closing => {
                if activity.idle_for().is_some_and(|idle| idle >= idle_timeout) {
                    tracing::debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Serves on `listener` until `shutdown` completes. Each connection runs on its own task.
///
/// # Errors
/// Never for a single bad connection; only when accepting fails for good.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(state.certs.server_config()));
    let slots = Arc::new(Semaphore::new(state.settings.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over the limit: closed at once (the client sees the close and may retry),
                // rather than left waiting in the backlog while others hold every slot.
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::debug!(%peer, "connection limit reached: closing a new connection");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (state, acceptor) = (Arc::clone(&state), acceptor.clone());
                tokio::spawn(async move {
                    serve_connection(state, acceptor, stream, peer).await;
                    drop(slot);
                });
            }
        }
    }
}
