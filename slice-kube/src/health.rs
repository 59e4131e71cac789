//! The probes' endpoint (`--health-addr`): `GET /healthz` answers 200 `ok` while the main loop
//! runs, `GET /readyz` 200 once the controller has had its first successful sync (a standby
//! replica is ready as soon as it can read its Lease); anything else 404, or 503 for a probe
//! that fails.
//!
//! A tiny HTTP/1.1 responder rather than a server framework: one request per connection, its
//! head read within [`REQUEST_DEADLINE`] (else the connection is dropped) and at most
//! [`MAX_REQUEST`] bytes (else 431), a fixed answer, then the connection closes; at most
//! [`MAX_CONNECTIONS`] at once (more wait in the kernel's backlog). [`bind`] listens on both
//! IPv4 and IPv6 when given `[::]`.

use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The default `--health-addr` of the hub and the worker: every address, both families.
pub const DEFAULT_ADDR: &str = "[::]:8081";
/// The most bytes of a request read (a probe's request is a few dozen).
pub const MAX_REQUEST: usize = 4096;
/// How long a client has to send its request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 32;

#[derive(Debug)]
struct Flags {
    alive: AtomicBool,
    ready: AtomicBool,
}

/// What the probes report, shared by the main loop (which sets it) and the responder.
#[derive(Debug, Clone)]
pub struct Health(Arc<Flags>);

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Alive, not ready.
    #[must_use]
    pub fn new() -> Self {
        Self(Arc::new(Flags { alive: AtomicBool::new(true), ready: AtomicBool::new(false) }))
    }

    /// The first sync succeeded (or this is a standby): ready from now on.
    pub fn set_ready(&self) {
        self.0.ready.store(true, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Relaxed)
    }

    /// Whether `/healthz` answers 200.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.0.alive.load(Ordering::Relaxed)
    }

    /// A guard held by the main loop: when it is dropped (the loop ended, or panicked),
    /// `/healthz` fails.
    #[must_use]
    pub fn alive_while(&self) -> AliveGuard {
        self.0.alive.store(true, Ordering::Relaxed);
        AliveGuard(self.clone())
    }
}

/// See [`Health::alive_while`].
#[derive(Debug)]
pub struct AliveGuard(Health);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        (self.0).0.alive.store(false, Ordering::Relaxed);
    }
}

/// The answer to a request head (pure): status code and body.
#[must_use]
pub fn answer(head: &[u8], health: &Health) -> (u16, &'static str) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next()) else {
        return (400, "bad request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return (400, "bad request\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    let probe = match path {
        "/healthz" | "/livez" => health.is_alive(),
        "/readyz" => health.is_ready(),
        _ => return (404, "not found\n"),
    };
    if method != "GET" && method != "HEAD" {
        return (405, "method not allowed\n");
    }
    if probe { (200, "ok\n") } else { (503, "not ok\n") }
}

/// Listens on `addr`. `[::]` is made dual-stack explicitly (`IPV6_V6ONLY` off), so IPv4 probes
/// reach it whatever the host's `net.ipv6.bindv6only`; on a host without IPv6 it falls back to
/// `0.0.0.0` on the same port.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => match TcpSocket::new_v6() {
            Ok(s) => {
                nix::sys::socket::setsockopt(&s.as_fd(), nix::sys::socket::sockopt::Ipv6V6Only, &false)
                    .map_err(std::io::Error::from)?;
                s
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {
                tracing::warn!(%addr, "no IPv6 on this host: listening on IPv4 only");
                return bind(SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), addr.port()));
            }
            Err(e) => return Err(e),
        },
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// The responder's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a client has to send its request head (and read the answer).
    pub request_deadline: Duration,
    /// The most bytes of a request head.
    pub max_request: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { request_deadline: REQUEST_DEADLINE, max_request: MAX_REQUEST, max_connections: MAX_CONNECTIONS }
    }
}

/// Serves the probes on `listener` forever, within the default [`Limits`].
pub async fn serve(listener: TcpListener, health: Health) {
    serve_within(listener, health, Limits::default()).await;
}

/// Serves the probes on `listener` forever, within `limits`.
pub async fn serve_within(listener: TcpListener, health: Health, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _)) => {
                let health = health.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let answered = respond(stream, &health, limits.max_request);
                    let _ = tokio::time::timeout(limits.request_deadline, answered).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds `addr` and serves the probes in a task (aborted when the handle is dropped).
///
/// # Errors
/// When the address cannot be bound.
pub fn spawn(addr: SocketAddr, health: &Health) -> std::io::Result<ServerHandle> {
    let listener = bind(addr)?;
    tracing::info!(addr = %listener.local_addr()?, "health endpoint listening (/healthz, /readyz)");
    Ok(ServerHandle(tokio::spawn(serve(listener, health.clone()))))
}

/// Stops the probes' server when dropped.
#[derive(Debug)]
pub struct ServerHandle(tokio::task::JoinHandle<()>);

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn respond(mut stream: TcpStream, health: &Health, max_request: usize) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    let complete = |h: &[u8]| h.windows(4).any(|w| w == b"\r\n\r\n") || h.windows(2).any(|w| w == b"\n\n");
    while !complete(&head) && head.len() < max_request {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n.min(max_request - head.len())]);
    }
    let (code, body) =
        if complete(&head) || head.len() < max_request { answer(&head, health) } else { (431, "request too large\n") };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head_only = head.starts_with(b"HEAD ");
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Read what the client still sends (a head cut at the limit), a bounded amount, so that
    // closing does not reset the connection before the client has read the answer.
    let mut drained = 0;
    while drained < DRAIN {
        match stream.read(&mut buf).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

/// The most bytes read and dropped after the answer.
const DRAIN: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_flags() {
        let h = Health::new();
        assert_eq!(answer(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", &h), (200, "ok\n"));
        assert_eq!(answer(b"GET /readyz HTTP/1.1\r\n\r\n", &h).0, 503, "not ready before the first sync");
        h.set_ready();
        assert_eq!(answer(b"GET /readyz?verbose HTTP/1.0\r\n\r\n", &h), (200, "ok\n"));
        {
            let _guard = h.alive_while();
            assert_eq!(answer(b"GET /healthz HTTP/1.1\r\n\r\n", &h).0, 200);
        }
        assert_eq!(answer(b"GET /healthz HTTP/1.1\r\n\r\n", &h).0, 503, "the main loop ended");
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\n\r\n", &h).0, 404);
        assert_eq!(answer(b"POST /readyz HTTP/1.1\r\n\r\n", &h).0, 405);
        assert_eq!(answer(b"GET /readyz SPDY/3\r\n\r\n", &h).0, 400);
        assert_eq!(answer(b"\x00\x01garbage", &h).0, 400);
        assert_eq!(answer(b"", &h).0, 400);
    }
}
