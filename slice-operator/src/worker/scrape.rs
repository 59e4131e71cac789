//! Reads a gateway's `/metrics` over plain HTTP/1.1: one GET with `Connection: close`, the
//! response read to its end (at most [`MAX_RESPONSE`] bytes) within a timeout. That is all the
//! gateway's responder speaks (`slice_gateway::metrics`: one response with `Content-Length`,
//! then it closes), so a full HTTP client would add nothing but dependencies.

use std::net::SocketAddr;
use std::time::Duration;

use slice_api::gateway::METRICS_PATH;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long one scrape may take: the worker scrapes each slice's gateway in every pass, and a
/// gateway that does not answer in this time is reported as not running.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// The largest response read (a gateway with a few hundred peers renders well under this).
pub const MAX_RESPONSE: usize = 1 << 20;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("the response is larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("the response is not HTTP: {0}")]
    Malformed(&'static str),
    #[error("HTTP status {0}")]
    Status(u16),
}

/// `GET http://<addr>/metrics`: the body of a 200 response.
///
/// # Errors
/// See [`ScrapeError`]; any status but 200 is an error.
pub async fn fetch_metrics(addr: SocketAddr, timeout: Duration) -> Result<String, ScrapeError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|source| ScrapeError::Connect { addr, source })?;
        let request =
            format!("GET {METRICS_PATH} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n");
        let io = |source| ScrapeError::Io { addr, source };
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut response = Vec::new();
        let limit = u64::try_from(MAX_RESPONSE).unwrap_or(u64::MAX).saturating_add(1);
        (&mut stream).take(limit).read_to_end(&mut response).await.map_err(io)?;
        if response.len() > MAX_RESPONSE {
            return Err(ScrapeError::TooLarge);
        }
        parse_response(&response)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| ScrapeError::Timeout { addr, timeout })?
}

/// The body of a complete HTTP/1.x response, if its status is 200. The body is cut at
/// `Content-Length` when there is one; chunked bodies are refused (the gateway never sends one).
///
/// # Errors
/// [`ScrapeError::Malformed`] or [`ScrapeError::Status`].
pub fn parse_response(bytes: &[u8]) -> Result<String, ScrapeError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ScrapeError::Malformed("not UTF-8"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or(ScrapeError::Malformed("no end of the headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ScrapeError::Malformed("no HTTP/1 status line"));
    }
    let code: u16 = parts.next().and_then(|c| c.parse().ok()).ok_or(ScrapeError::Malformed("no status code"))?;
    if code != 200 {
        return Err(ScrapeError::Status(code));
    }
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            return Err(ScrapeError::Malformed("a transfer encoding other than identity"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| ScrapeError::Malformed("a bad Content-Length"))?);
        }
    }
    match length {
        Some(n) => body.get(..n).map(str::to_owned).ok_or(ScrapeError::Malformed("a body shorter than Content-Length")),
        None => Ok(body.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The scrape timeout where a local server answers: long, so a loaded machine never trips
    /// it (only the silent server's test wants a timeout, and waits for it).
    const ANSWERS: Duration = Duration::from_secs(60);

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn responses_parse() {
        assert_eq!(parse_response(ok("a 1\n").as_bytes()).unwrap(), "a 1\n");
        let longer = format!("{}trailing junk", ok("a 1\n"));
        assert_eq!(parse_response(longer.as_bytes()).unwrap(), "a 1\n", "cut at Content-Length");
        assert_eq!(parse_response(b"HTTP/1.0 200 OK\r\n\r\nx").unwrap(), "x", "to the end without a length");
        let cases: [(&[u8], &str); 6] = [
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "HTTP status 404"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "shorter than Content-Length"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "transfer encoding"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3", "no end of the headers"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "no HTTP/1 status line"),
            (b"HTTP/1.1 OK\r\n\r\n", "no status code"),
        ];
        for (bytes, want) in cases {
            let err = parse_response(bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{}: {err}", String::from_utf8_lossy(bytes));
        }
    }

    /// Serves one connection: reads the request head, answers `response`; returns the request.
    async fn serve_once(response: String) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn fetches_the_gateways_metrics() {
        let body = slice_gateway::metrics::render(&slice_gateway::metrics::Sample {
            interface: "sg-blue".into(),
            ..Default::default()
        });
        let (addr, server) = serve_once(ok(&body)).await;
        assert_eq!(fetch_metrics(addr, ANSWERS).await.unwrap(), body);
        let request = server.await.unwrap();
        assert!(request.starts_with(&format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n")), "{request}");
        assert!(request.contains("Connection: close\r\n"), "{request}");
    }

    #[tokio::test]
    async fn a_closed_port_a_silent_server_and_an_error_status_fail() {
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let err = fetch_metrics(closed, ANSWERS).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Connect { .. }), "{err:?}");
        // What the peers' reason shows (the worker tests' fake refuses with the same words).
        let reason = slice_api::error_chain::chain(&err);
        assert!(reason.starts_with(&format!("connecting to {closed}: Connection refused")), "{reason}");

        // Accepts (the kernel's backlog does) and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = fetch_metrics(silent.local_addr().unwrap(), Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, ScrapeError::Timeout { .. }), "{err:?}");
        drop(silent);

        let (addr, server) = serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()).await;
        assert!(matches!(fetch_metrics(addr, ANSWERS).await, Err(ScrapeError::Status(404))));
        server.await.unwrap();
    }
}
