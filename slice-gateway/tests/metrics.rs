//! Root tests of the metrics endpoint against the real gateway in a network namespace, with
//! bounded clients: IPv6 and dual-stack listening, a slow client beside a scrape, the request
//! deadline, oversized requests and the connection cap (issue 20).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{Lab, WAIT, in_netns, keypair, proc_status_kib, wg_config};

/// The gateway's defaults (`slice_gateway::metrics::Limits::default`), which the tests rely on.
const MAX_CONNECTIONS: usize = 16;

/// Starts a gateway without peers in node `i`, serving metrics on `listen`.
fn gateway(lab: &mut Lab, i: usize, listen: &str) -> Result<usize> {
    let key = keypair()?;
    lab.start_gateway(i, &wg_config(&key, &[]), &["--metrics", listen])
}

/// A TCP connection to `addr` from inside `ns`, with generous timeouts so nothing hangs.
fn connect(ns: &str, addr: SocketAddr) -> Result<TcpStream> {
    in_netns(ns, move || {
        let conn = TcpStream::connect_timeout(&addr, WAIT).with_context(|| format!("connecting to {addr}"))?;
        conn.set_read_timeout(Some(WAIT))?;
        conn.set_write_timeout(Some(WAIT))?;
        Ok(conn)
    })
}

/// Sends `request` and reads the whole answer: (status code, body).
fn exchange(conn: &mut TcpStream, request: &[u8]) -> Result<(u16, String)> {
    conn.write_all(request)?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    parse(&answer)
}

fn parse(answer: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("no HTTP head in {text:?}"))?;
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("no status in {head:?}"))?;
    Ok((code, body.to_string()))
}

/// GET `path` from `addr` in `ns`.
fn get(ns: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut conn = connect(ns, addr)?;
    exchange(&mut conn, format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n").as_bytes())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// Whether the server has neither answered nor closed `conn` yet. Peeks without blocking and
/// without changing the socket's mode (a clone used by another thread shares it).
fn still_waiting(conn: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv(2) into one live byte on an open socket; MSG_PEEK leaves the data queued.
    let n = unsafe { libc::recv(conn.as_raw_fd(), (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock
}

#[test]
fn metrics_listen_on_ipv6_dual_stack_and_on_a_single_ipv6_address() -> Result<()> {
    let mut lab = Lab::new(2)?;
    // [::] serves IPv6 and IPv4, whatever net.ipv6.bindv6only says.
    lab.exec(0, "sysctl -qw net.ipv6.bindv6only=1")?;
    gateway(&mut lab, 0, "[::]:9586")?;
    let n0 = lab.nodes[0].clone();
    for a in ["[::1]:9586", "127.0.0.1:9586"] {
        let (code, body) = get(&n0, addr(a), "/metrics")?;
        assert_eq!(code, 200, "{a}: {body}");
        assert!(body.contains("slice_gateway_peers{interface="), "{a}: {body}");
        assert_eq!(get(&n0, addr(a), "/healthz")?, (200, "ok\n".to_string()), "{a}");
    }
    // An IPv6 address serves only itself.
    lab.exec(1, "ip -6 addr add fd00:5107::1/64 dev wan0 nodad")?;
    gateway(&mut lab, 1, "[fd00:5107::1]:9586")?;
    let n1 = lab.nodes[1].clone();
    let (code, body) = get(&n1, addr("[fd00:5107::1]:9586"), "/metrics")?;
    assert_eq!(code, 200, "{body}");
    for other in ["[::1]:9586", "127.0.0.1:9586"] {
        let err = connect(&n1, addr(other)).expect_err(other);
        let refused = err
            .chain()
            .any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == ErrorKind::ConnectionRefused));
        assert!(refused, "{other}: {err:#}");
    }
    Ok(())
}

#[test]
fn a_slow_client_does_not_stall_a_scrape_and_is_closed_by_the_request_deadline() -> Result<()> {
    let mut lab = Lab::new(1)?;
    gateway(&mut lab, 0, "127.0.0.1:9586")?;
    let ns = lab.nodes[0].clone();
    let target = addr("127.0.0.1:9586");
    // The slow client sends a request head a byte at a time, each byte well within any per-read
    // timeout, and never finishes it. It stops when the server closes the connection (or
    // answers), or after a bound far beyond the gateway's 10 s request deadline.
    let mut slow = connect(&ns, target)?;
    slow.write_all(b"GET /metrics HTTP/1.1\r\n")?;
    let trickler = {
        let mut slow = slow.try_clone()?;
        std::thread::spawn(move || -> Result<Vec<u8>> {
            let start = Instant::now();
            slow.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while start.elapsed() < 2 * WAIT {
                if slow.write_all(b"X").is_err() {
                    return Ok(answer);
                }
                match slow.read(&mut buf) {
                    Ok(0) => return Ok(answer),
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return Ok(answer),
                }
            }
            bail!("the server kept a request that never completes open for {:?}", start.elapsed())
        })
    };
    // Make sure the slow client holds its connection at the server before scraping.
    assert!(still_waiting(&slow), "the server answered an unfinished request");
    let (code, body) = get(&ns, target, "/metrics").context("a scrape beside a slow client")?;
    // The scrape really ran while the slow client was held (the deadline is 10 s, a scrape takes
    // milliseconds), so it was served beside it, not after it.
    let held = still_waiting(&slow);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("slice_gateway_garbage_packets_total"), "{body}");
    let answer = trickler.join().expect("trickler thread")?;
    // Within the request deadline, the server answers 408 (or just closes if it could not).
    if !answer.is_empty() {
        assert_eq!(parse(&answer)?.0, 408, "{}", String::from_utf8_lossy(&answer));
    }
    assert!(held, "the slow client was closed before the scrape ended");
    assert_eq!(get(&ns, target, "/healthz")?.0, 200);
    Ok(())
}

#[test]
fn a_huge_request_line_is_refused_without_growing_memory_and_oversized_headers_get_431() -> Result<()> {
    const HUGE: usize = 128 << 20;
    const CHUNK: usize = 64 << 10;
    let mut lab = Lab::new(1)?;
    let gw = gateway(&mut lab, 0, "127.0.0.1:9586")?;
    let pid = lab.pid(gw);
    let ns = lab.nodes[0].clone();
    let target = addr("127.0.0.1:9586");
    assert_eq!(get(&ns, target, "/metrics")?.0, 200);
    let peak_before = proc_status_kib(pid, "VmHWM")?;

    // 128 MiB of request line in 64 KiB chunks. The server may refuse and close long before the
    // end: then a write fails (reset or broken pipe), which ends the sending.
    let mut conn = connect(&ns, target)?;
    let chunk = vec![b'a'; CHUNK];
    conn.write_all(b"GET /")?;
    let mut sent = 0usize;
    while sent < HUGE {
        if conn.write_all(&chunk).is_err() {
            break;
        }
        sent += CHUNK;
    }
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    drop(conn);
    let peak_after = proc_status_kib(pid, "VmHWM")?;
    let growth = peak_after.saturating_sub(peak_before);
    eprintln!(
        "FIGURE huge request line: {} MiB sent of {}, answer {:?}, peak RSS {peak_before} → {peak_after} KiB",
        sent >> 20,
        HUGE >> 20,
        String::from_utf8_lossy(&answer[..answer.len().min(40)])
    );
    // Refused: answered 414, or cut off before the server read it all.
    let refused = parse(&answer).is_ok_and(|(code, _)| code == 414) || sent < HUGE;
    assert!(refused, "a {} MiB request line was read to its end and not refused", HUGE >> 20);
    // The peak, not the current RSS: a freed buffer would not show in VmRSS afterwards.
    assert!(growth < 64 << 10, "the gateway's peak RSS grew by {growth} KiB for one request");

    // Headers over 16 KiB in all (each line small), sent whole: 431.
    let mut conn = connect(&ns, target)?;
    let headers = "X-Filler: 0123456789abcdef0123456789abcdef\r\n".repeat(512);
    let (code, body) = exchange(&mut conn, format!("GET /metrics HTTP/1.1\r\n{headers}\r\n").as_bytes())?;
    assert_eq!(code, 431, "{body}");
    // And the endpoint still serves.
    assert_eq!(get(&ns, target, "/metrics")?.0, 200);
    assert!(lab.procs[gw].alive(), "{}", lab.log(&lab.ifname(0)));
    Ok(())
}

#[test]
fn connections_beyond_the_cap_get_503_and_slots_come_back() -> Result<()> {
    let mut lab = Lab::new(1)?;
    gateway(&mut lab, 0, "127.0.0.1:9586")?;
    let ns = lab.nodes[0].clone();
    let target = addr("127.0.0.1:9586");
    // Idle connections fill every slot; one more is refused at once. The outcome only counts if
    // the idle ones were all still held when the extra one was answered (the request deadline
    // is 10 s; this takes milliseconds, but a loaded machine gets more tries).
    let mut outcome = None;
    for _ in 0..3 {
        let idle = (0..MAX_CONNECTIONS).map(|_| connect(&ns, target)).collect::<Result<Vec<_>>>()?;
        let mut extra = connect(&ns, target)?;
        let mut answer = Vec::new();
        extra.read_to_end(&mut answer)?;
        if idle.iter().all(still_waiting) {
            outcome = Some(parse(&answer)?);
            break;
        }
    }
    let (code, body) = outcome.context("the idle connections never stayed held long enough")?;
    assert_eq!(code, 503, "{body}");
    // The idle connections are closed (dropped above): their slots come back.
    let mut last = None;
    let served = common::wait_until(WAIT, || {
        last = Some(get(&ns, target, "/metrics").map(|(code, _)| code));
        matches!(last, Some(Ok(200)))
    });
    assert!(served, "no scrape served after the idle connections closed: {last:?}");
    Ok(())
}
