//! The web console's server (issue 16): read-only, its page, script and style compiled into the
//! binary (no CDN, works offline), the data as one JSON document (`slice_api::console::Model`)
//! that the owner publishes whenever it changes ([`Console::publish`]).
//!
//! | path | answer |
//! | --- | --- |
//! | `/` | the page |
//! | `/console.js`, `/console.css` | its script and style |
//! | `/api/model` | the current document (`application/json`) |
//! | `/api/events` | server-sent events: the document at once and after every change, a comment every [`KEEPALIVE`] |
//! | `/healthz` | `ok` |
//!
//! Only GET and HEAD (405 otherwise). Like the health endpoint it is a small HTTP/1.1 responder:
//! one request per connection, its head read within [`REQUEST_DEADLINE`] and at most
//! [`MAX_REQUEST`] bytes, at most [`MAX_CONNECTIONS`] connections at once (an event stream holds
//! one for as long as the page is open; beyond the cap new ones wait in the backlog).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use slice_api::console::Model;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// The page.
pub const INDEX_HTML: &str = include_str!("../assets/console/index.html");
/// Its script.
pub const CONSOLE_JS: &str = include_str!("../assets/console/console.js");
/// Its style.
pub const CONSOLE_CSS: &str = include_str!("../assets/console/console.css");

/// The most bytes of a request head read.
pub const MAX_REQUEST: usize = 8192;
/// How long a client has to send its request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once (event streams included).
pub const MAX_CONNECTIONS: usize = 64;
/// How often an idle event stream gets a comment (keeps proxies from closing it).
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// The document the console serves; clones share it.
#[derive(Debug, Clone)]
pub struct Console {
    tx: Arc<watch::Sender<Arc<String>>>,
}

/// Two handles are equal when they publish to the same pages.
impl PartialEq for Console {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.tx, &other.tx)
    }
}

impl Eq for Console {}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    /// A console serving an empty document until the first [`Console::publish`].
    #[must_use]
    pub fn new() -> Self {
        let empty = serde_json::to_string(&Model::default()).unwrap_or_default();
        Self { tx: Arc::new(watch::Sender::new(Arc::new(empty))) }
    }

    /// Publishes `model`; open pages get it at once if it differs from the last one.
    pub fn publish(&self, model: &Model) {
        let Ok(text) = serde_json::to_string(model) else { return };
        self.tx.send_if_modified(|current| {
            if **current == text {
                false
            } else {
                *current = Arc::new(text);
                true
            }
        });
    }

    /// The document as served now.
    #[must_use]
    pub fn current(&self) -> Arc<String> {
        self.tx.borrow().clone()
    }

    /// Serves the console on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let rx = self.tx.subscribe();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, rx).await {
                    tracing::debug!(%peer, error = %e, "console connection");
                }
                drop(permit);
            });
        }
    }
}

/// Binds `addr` and serves `console` on it in a task; returns the bound address.
///
/// # Errors
/// When the address cannot be bound.
pub async fn spawn(addr: SocketAddr, console: Console) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(console.serve(listener))))
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Index,
    Script,
    Style,
    Model,
    Events,
    Health,
    NotFound,
}

/// The route of a request target (a query is ignored).
#[must_use]
pub fn route(target: &str) -> Route {
    match target.split('?').next().unwrap_or_default() {
        "/" | "/index.html" => Route::Index,
        "/console.js" => Route::Script,
        "/console.css" => Route::Style,
        "/api/model" => Route::Model,
        "/api/events" => Route::Events,
        "/healthz" => Route::Health,
        _ => Route::NotFound,
    }
}

/// Parses a request head: `(method, target)`, or the status to answer with.
///
/// # Errors
/// The status line of the refusal (400, 405).
pub fn parse_head(head: &str) -> Result<(bool, &str), &'static str> {
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next()) else {
        return Err("400 Bad Request");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err("400 Bad Request");
    }
    match method {
        "GET" => Ok((false, target)),
        "HEAD" => Ok((true, target)),
        _ => Err("405 Method Not Allowed"),
    }
}

async fn read_head(stream: &mut TcpStream) -> Result<String, &'static str> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(());
            }
            if buf.len() > MAX_REQUEST {
                return Err("431 Request Header Fields Too Large");
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Err("400 Bad Request"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(REQUEST_DEADLINE, read).await.map_err(|_| "408 Request Timeout")??;
    String::from_utf8(buf).map_err(|_| "400 Bad Request")
}

async fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str, head_only: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'self'\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.flush().await
}

/// Answers a refused request, then reads what the client still sends (a bounded amount, for a
/// short while) before closing: closing with unread bytes would reset the connection and the
/// client could lose the answer.
async fn refuse(stream: &mut TcpStream, status: &str) -> std::io::Result<()> {
    respond(stream, status, "text/plain", status, false).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0usize;
        while total < 1 << 20 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    Ok(())
}

async fn answer(mut stream: TcpStream, mut rx: watch::Receiver<Arc<String>>) -> std::io::Result<()> {
    let head = match read_head(&mut stream).await {
        Ok(h) => h,
        Err(status) => return refuse(&mut stream, status).await,
    };
    let (head_only, target) = match parse_head(&head) {
        Ok(x) => x,
        Err(status) => return refuse(&mut stream, status).await,
    };
    let (kind, body): (&str, String) = match route(target) {
        Route::Index => ("text/html; charset=utf-8", INDEX_HTML.to_owned()),
        Route::Script => ("text/javascript; charset=utf-8", CONSOLE_JS.to_owned()),
        Route::Style => ("text/css; charset=utf-8", CONSOLE_CSS.to_owned()),
        Route::Model => ("application/json", rx.borrow_and_update().to_string()),
        Route::Health => ("text/plain", "ok".to_owned()),
        Route::NotFound => return respond(&mut stream, "404 Not Found", "text/plain", "not found", head_only).await,
        Route::Events => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
                      X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
                )
                .await?;
            if head_only {
                return Ok(());
            }
            loop {
                let doc = rx.borrow_and_update().clone();
                // One `data:` line: the JSON has no newlines (serde_json's compact form).
                stream.write_all(format!("data: {doc}\n\n").as_bytes()).await?;
                stream.flush().await?;
                loop {
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() { return Ok(()) }
                            break;
                        }
                        () = tokio::time::sleep(KEEPALIVE) => {
                            stream.write_all(b": keepalive\n\n").await?;
                            stream.flush().await?;
                        }
                    }
                }
            }
        }
    };
    respond(&mut stream, "200 OK", kind, &body, head_only).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_heads() {
        assert_eq!(route("/"), Route::Index);
        assert_eq!(route("/api/model?x=1"), Route::Model);
        assert_eq!(route("/api/events"), Route::Events);
        assert_eq!(route("/../etc/passwd"), Route::NotFound);
        assert_eq!(parse_head("GET / HTTP/1.1\r\n\r\n"), Ok((false, "/")));
        assert_eq!(parse_head("HEAD /healthz HTTP/1.0\r\n\r\n"), Ok((true, "/healthz")));
        assert_eq!(parse_head("POST /api/model HTTP/1.1\r\n\r\n"), Err("405 Method Not Allowed"));
        assert_eq!(parse_head("GET http://x/ HTTP/1.1\r\n\r\n"), Err("400 Bad Request"));
        assert_eq!(parse_head("GET /\r\n\r\n"), Err("400 Bad Request"));
    }

    #[test]
    fn assets_are_self_contained() {
        for asset in [INDEX_HTML, CONSOLE_JS, CONSOLE_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"), "no external resources");
        }
        assert!(INDEX_HTML.contains("console.js") && INDEX_HTML.contains("viewport"));
    }
}
