//! The probes' endpoint over real sockets on the loopback: a `[::]` listener answers IPv4 and
//! IPv6 clients, `/readyz` follows the controller, and the bounds hold (a request head too large
//! gets 431, a client that sends nothing is dropped after the deadline and frees its slot).
//! Nothing here asserts a duration: waits end on a condition, deadlines only bound a hang.

use std::net::SocketAddr;
use std::time::Duration;

use slice_operator::health::{self, Health, Limits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Bounds a broken test, never a working one.
const HANG: Duration = Duration::from_secs(60);

/// Sends `request` and returns the whole answer (the server closes after it).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let talk = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request).await.expect("send");
        stream.shutdown().await.expect("end of the request");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        String::from_utf8(answer).expect("UTF-8")
    };
    tokio::time::timeout(HANG, talk).await.expect("an answer")
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: probe\r\nUser-Agent: kube-probe/1.33\r\n\r\n").into_bytes()
}

fn status_of(answer: &str) -> &str {
    answer.split_whitespace().nth(1).unwrap_or_default()
}

#[tokio::test]
async fn a_dual_stack_listener_answers_both_families() {
    let health = Health::new();
    let listener = health::bind("[::]:0".parse().expect("address")).expect("bind [::]");
    let port = listener.local_addr().expect("address").port();
    let server = tokio::spawn(health::serve(listener, health.clone()));
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let v6: SocketAddr = format!("[::1]:{port}").parse().expect("address");
    for addr in [v4, v6] {
        let answer = exchange(addr, &get("/healthz")).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{addr}: {answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{addr}: {answer}");
        assert_eq!(status_of(&exchange(addr, &get("/readyz")).await), "503", "{addr}: not ready yet");
    }
    health.set_ready();
    for addr in [v4, v6] {
        assert_eq!(status_of(&exchange(addr, &get("/readyz")).await), "200", "{addr}");
        assert_eq!(status_of(&exchange(addr, &get("/metrics")).await), "404", "{addr}");
    }
    let head = exchange(v4, b"HEAD /readyz HTTP/1.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    {
        let _main_loop = health.alive_while();
        assert_eq!(status_of(&exchange(v6, &get("/healthz")).await), "200");
    }
    assert_eq!(status_of(&exchange(v6, &get("/healthz")).await), "503", "the main loop ended");
    server.abort();
}

#[tokio::test]
async fn an_ipv4_address_binds_ipv4_only() {
    let listener = health::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    assert!(listener.local_addr().expect("address").is_ipv4());
}

#[tokio::test]
async fn oversized_and_silent_requests_are_cut_and_free_their_slot() {
    let health = Health::new();
    let listener = health::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr().expect("address");
    let limits = Limits { request_deadline: Duration::from_millis(200), max_request: 1024, max_connections: 1 };
    let server = tokio::spawn(health::serve_within(listener, health.clone(), limits));

    // A head that never ends: 431 after 1 KiB, whatever follows.
    let mut huge = b"GET /healthz HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 4096));
    let answer = exchange(addr, &huge).await;
    assert_eq!(status_of(&answer), "431", "{answer}");

    // A client that sends nothing holds the only slot until the deadline drops it …
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // … after which a probe is served (it waited in the backlog meanwhile).
    assert_eq!(status_of(&exchange(addr, &get("/healthz")).await), "200");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(HANG, silent.read_to_end(&mut rest)).await.expect("closed by the server");
    assert_eq!(closed.expect("EOF"), 0, "dropped without an answer");
    server.abort();
}
