//! The HTTPS server: TLS from [`CertStore`] (rustls), HTTP/1.1 and HTTP/2 (hyper), and the routes
//! `/mutate-pod`, `/validate-sliceconfig`, `/healthz`, `/readyz`.
//!
//! Limits on every request: a TLS handshake timeout, a header read timeout, a body size limit
//! (an oversized body is drained, within the request timeout, so the client reads the 400 instead
//! of a reset) and a whole-request timeout. Every refusal carries a plain-text reason.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
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

/// Reads the body up to `max` bytes. A larger body is read to its end and dropped (the request
/// timeout bounds how long), then refused.
async fn read_body(body: Incoming, declared: Option<u64>, max: usize) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        text(StatusCode::BAD_REQUEST, format!("bad AdmissionReview: the body is larger than the limit of {max} bytes"))
    };
    let mut body = body;
    let mut buf: Vec<u8> = Vec::with_capacity(declared.map_or(8192, |d| d.min(max as u64) as usize));
    let mut oversized = declared.is_some_and(|d| d > max as u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            text(StatusCode::BAD_REQUEST, format!("bad AdmissionReview: the body could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if !oversized && buf.len() + data.len() > max {
                oversized = true;
                buf = Vec::new();
            }
            if !oversized {
                buf.extend_from_slice(&data);
            }
        }
    }
    if oversized { Err(too_large()) } else { Ok(Bytes::from(buf)) }
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

async fn serve_connection(
    state: Arc<AppState>,
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let handshake = state.settings.handshake_timeout;
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
    builder.http2().timer(TokioTimer::new());
    let service = service_fn(move |req| handle(Arc::clone(&state), req));
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
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
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(Arc::clone(&state), acceptor.clone(), stream, peer));
            }
        }
    }
}
