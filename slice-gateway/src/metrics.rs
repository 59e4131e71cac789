//! Prometheus text exposition on `/metrics` and a `/healthz`, from a tiny HTTP/1.1 responder.
//! Labels are bounded: the interface, the peer public key (as WireGuard exporters do) and a
//! fixed set of drop reasons; nothing per packet or per address.
//!
//! The responder is bounded too ([`Limits`]): a thread per connection up to a cap, one deadline
//! per request (not per read), and a request head refused (414/431) as soon as it outgrows its
//! limit, so a slow client cannot stall a scrape and a huge request cannot grow memory.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use slice_api::gateway::{HEALTH_PATH, METRICS_PATH, metric};

use crate::device::Gateway;

/// Per-peer figures for one scrape.
#[derive(Debug, Clone, Default)]
pub struct PeerSample {
    pub public_key: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    /// Unix seconds, 0 if never.
    pub last_handshake: f64,
    /// Round-trip time of the last handshake this gateway initiated, in milliseconds.
    pub handshake_rtt_ms: Option<u32>,
    /// Estimated share (0–1) of the peer's packets lost on the way here.
    pub rx_loss: f64,
    /// (reason, count) for a fixed set of reasons.
    pub drops: Vec<(&'static str, u64)>,
    /// With multipath: whether the peer spoke within three probe intervals.
    pub live: Option<bool>,
    /// Bits per second each way (received, sent) over the last window ([`Rate`]); `None`
    /// until two samples were taken.
    pub bits_per_second: Option<(u64, u64)>,
    /// The largest inner packet the path carried in the last probe round that says.
    pub path_mtu: Option<u16>,
    /// Seconds an unanswered handshake initiation has waited, if one does.
    pub unanswered_secs: Option<f64>,
    /// Unix seconds of the last handshake initiation from the peer, 0 if never.
    pub last_initiation_received: f64,
}

/// One peer's throughput: the byte counters at the last sample and the rate measured between
/// the two latest samples at least [`slice_api::gateway::RATE_MIN_WINDOW_MS`] apart. Pure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rate {
    /// (ms of the sample on the caller's clock, rx bytes, tx bytes).
    last: Option<(u64, u64, u64)>,
    bits_per_second: Option<(u64, u64)>,
}

impl Rate {
    /// Takes a sample of the counters at `now_ms`, returns the rate to report.
    pub fn sample(&mut self, now_ms: u64, rx_bytes: u64, tx_bytes: u64) -> Option<(u64, u64)> {
        match self.last {
            Some((at, rx, tx)) if now_ms.saturating_sub(at) >= slice_api::gateway::RATE_MIN_WINDOW_MS => {
                let ms = now_ms - at;
                // Counters only grow; a peer rebuilt with fresh counters restarts from 0.
                let bps = |now: u64, then: u64| now.saturating_sub(then).saturating_mul(8_000) / ms;
                self.bits_per_second = Some((bps(rx_bytes, rx), bps(tx_bytes, tx)));
                self.last = Some((now_ms, rx_bytes, tx_bytes));
            }
            Some(_) => {}
            None => self.last = Some((now_ms, rx_bytes, tx_bytes)),
        }
        self.bits_per_second
    }
}

/// Device-wide figures for one scrape.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub interface: String,
    pub garbage: u64,
    pub unknown_peer: u64,
    pub cookie_replies: u64,
    pub no_private_key: u64,
    pub no_route: u64,
    pub tun_invalid: u64,
    /// The TUN device's MTU, if known.
    pub mtu: Option<u16>,
    pub peers: Vec<PeerSample>,
}

/// Renders the Prometheus text format (version 0.0.4).
#[must_use]
pub fn render(s: &Sample) -> String {
    use metric::{LABEL_INTERFACE as IFACE, LABEL_PUBLIC_KEY as KEY, LABEL_REASON as REASON};
    let mut out = String::new();
    let i = &s.interface;
    let device = [
        (metric::GARBAGE_PACKETS, "UDP datagrams that are not WireGuard messages or fail mac1.", s.garbage),
        (metric::UNKNOWN_PEER_PACKETS, "WireGuard messages for no configured peer.", s.unknown_peer),
        (metric::COOKIE_REPLIES, "Cookie replies sent under handshake load.", s.cookie_replies),
        (metric::NO_PRIVATE_KEY_PACKETS, "Packets dropped because no private key is set.", s.no_private_key),
        (metric::NO_ROUTE_PACKETS, "TUN packets whose destination is in no peer's AllowedIPs.", s.no_route),
        (metric::TUN_INVALID_PACKETS, "TUN packets that are not IPv4 or IPv6.", s.tun_invalid),
    ];
    for (name, help, value) in device {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{IFACE}=\"{i}\"}} {value}");
    }
    let name = metric::PEERS;
    let _ = writeln!(out, "# HELP {name} Configured peers.\n# TYPE {name} gauge");
    let _ = writeln!(out, "{name}{{{IFACE}=\"{i}\"}} {}", s.peers.len());
    type Field = fn(&PeerSample) -> String;
    let per_peer: [(&str, &str, &str, Field); 5] = [
        (metric::PEER_RX_BYTES, "counter", "Bytes received from the peer (UDP payload).", |p| p.rx_bytes.to_string()),
        (metric::PEER_RX_PACKETS, "counter", "Authenticated datagrams received from the peer.", |p| {
            p.rx_packets.to_string()
        }),
        (metric::PEER_TX_BYTES, "counter", "Bytes sent to the peer (UDP payload).", |p| p.tx_bytes.to_string()),
        (metric::PEER_TX_PACKETS, "counter", "Datagrams sent to the peer.", |p| p.tx_packets.to_string()),
        (metric::PEER_LAST_HANDSHAKE_SECONDS, "gauge", "Unix time of the last handshake (0: never).", |p| {
            format!("{:.3}", p.last_handshake)
        }),
    ];
    for (name, kind, help, field) in per_peer {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in &s.peers {
            let _ = writeln!(out, "{name}{{{IFACE}=\"{i}\",{KEY}=\"{}\"}} {}", p.public_key, field(p));
        }
    }
    per_peer_gauges(
        &mut out,
        s,
        &[
            (
                metric::PEER_HANDSHAKE_RTT_SECONDS,
                "Round-trip time of the last handshake this gateway initiated.",
                |p| p.handshake_rtt_ms.map(|ms| format!("{:.3}", f64::from(ms) / 1000.0)),
            ),
            (metric::PEER_RX_LOSS_RATIO, "Estimated share of the peer's packets lost on the way here.", |p| {
                Some(format!("{:.4}", p.rx_loss.clamp(0.0, 1.0)))
            }),
        ],
    );
    if s.peers.iter().any(|p| p.live.is_some()) {
        let name = metric::PEER_LIVE;
        let _ =
            writeln!(out, "# HELP {name} 1 while the peer spoke within three probe intervals (--multipath-probe-ms).");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for p in &s.peers {
            if let Some(live) = p.live {
                let _ = writeln!(out, "{name}{{{IFACE}=\"{i}\",{KEY}=\"{}\"}} {}", p.public_key, u8::from(live));
            }
        }
    }
    if s.peers.iter().any(|p| p.bits_per_second.is_some()) {
        let families =
            [(metric::PEER_RX_BITS_PER_SECOND, "received from", 0), (metric::PEER_TX_BITS_PER_SECOND, "sent to", 1)];
        for (name, way, index) in families {
            let _ = writeln!(out, "# HELP {name} Bits per second {way} the peer between the latest samples.");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for p in &s.peers {
                if let Some(bps) = p.bits_per_second {
                    let v = if index == 0 { bps.0 } else { bps.1 };
                    let _ = writeln!(out, "{name}{{{IFACE}=\"{i}\",{KEY}=\"{}\"}} {v}", p.public_key);
                }
            }
        }
    }
    if let Some(mtu) = s.mtu {
        let name = metric::MTU_BYTES;
        let _ =
            writeln!(out, "# HELP {name} The TUN device's MTU.\n# TYPE {name} gauge\n{name}{{{IFACE}=\"{i}\"}} {mtu}");
    }
    per_peer_gauges(
        &mut out,
        s,
        &[
            (
                metric::PEER_PATH_MTU_BYTES,
                "The largest inner packet the path to the peer carried in the last round of path probes.",
                |p| p.path_mtu.map(|bytes| bytes.to_string()),
            ),
            (
                metric::PEER_HANDSHAKE_UNANSWERED_SECONDS,
                "How long a handshake initiation to the peer has waited for an answer.",
                |p| p.unanswered_secs.map(|secs| format!("{secs:.3}")),
            ),
            (
                metric::PEER_LAST_INITIATION_RECEIVED_SECONDS,
                "Unix time of the last handshake initiation from the peer (0: never).",
                |p| Some(format!("{:.3}", p.last_initiation_received)),
            ),
        ],
    );
    let name = metric::PEER_DROPS;
    let _ = writeln!(out, "# HELP {name} Packets of the peer dropped, by reason.\n# TYPE {name} counter");
    for p in &s.peers {
        for (reason, n) in &p.drops {
            let _ = writeln!(out, "{name}{{{IFACE}=\"{i}\",{KEY}=\"{}\",{REASON}=\"{reason}\"}} {n}", p.public_key);
        }
    }
    out
}

/// A per-peer gauge family: its name, its help, and the sample of a peer (`None`: no sample).
type Gauge = (&'static str, &'static str, fn(&PeerSample) -> Option<String>);

/// Writes `families` (each announced, then one sample per peer that has one).
fn per_peer_gauges(out: &mut String, s: &Sample, families: &[Gauge]) {
    use metric::{LABEL_INTERFACE as IFACE, LABEL_PUBLIC_KEY as KEY};
    let i = &s.interface;
    for (name, help, sample) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for p in &s.peers {
            if let Some(value) = sample(p) {
                let _ = writeln!(out, "{name}{{{IFACE}=\"{i}\",{KEY}=\"{}\"}} {value}", p.public_key);
            }
        }
    }
}

/// Takes a sample of the gateway's counters.
#[must_use]
pub fn sample(gw: &Gateway) -> Sample {
    let c = &gw.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut peers = Vec::new();
    let probe_ms = gw.probe_interval_ms();
    let now_ms = crate::device::now_ms();
    gw.for_each_peer(|p, last| {
        let pc = &p.counters;
        let (handshake_rtt_ms, rx_loss) = p.health();
        let bits_per_second = p.rate.lock().unwrap_or_else(std::sync::PoisonError::into_inner).sample(
            now_ms,
            load(&pc.rx_bytes),
            load(&pc.tx_bytes),
        );
        peers.push(PeerSample {
            public_key: p.public_key.to_base64(),
            rx_bytes: load(&pc.rx_bytes),
            rx_packets: load(&pc.rx_packets),
            tx_bytes: load(&pc.tx_bytes),
            tx_packets: load(&pc.tx_packets),
            last_handshake: last
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
            handshake_rtt_ms,
            rx_loss: f64::from(rx_loss),
            drops: vec![
                ("auth", load(&pc.drop_auth)),
                ("source_not_allowed", load(&pc.drop_source)),
                ("no_endpoint", load(&pc.drop_no_endpoint)),
                ("io", load(&pc.drop_io)),
            ],
            live: (probe_ms > 0).then(|| p.is_live(probe_ms)),
            bits_per_second,
            path_mtu: p.path_mtu(),
            unanswered_secs: p.unanswered_for().map(|d| d.as_secs_f64()),
            // Millisecond counts fit an f64 exactly for the next 280,000 years.
            #[allow(clippy::cast_precision_loss)]
            last_initiation_received: p.last_initiation_received_ms() as f64 / 1000.0,
        });
    });
    peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
    Sample {
        interface: gw.name.clone(),
        garbage: load(&c.garbage),
        unknown_peer: load(&c.unknown_peer),
        cookie_replies: load(&c.cookie_replies),
        no_private_key: load(&c.no_private_key),
        no_route: load(&c.no_route),
        tun_invalid: load(&c.tun_invalid),
        mtu: gw.tun_mtu(),
        peers,
    }
}

/// Bounds of the HTTP endpoint: whatever a client sends or withholds, it holds at most one
/// thread and a few KiB for at most `request_deadline`, and it cannot stall another scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; one more is answered 503 and closed at once.
    pub max_connections: usize,
    /// Time from accepting a connection to having answered it (not per read: a client that
    /// sends a byte now and then is closed all the same).
    pub request_deadline: Duration,
    /// Longest request line (`GET /metrics HTTP/1.1`); longer is answered 414.
    pub max_request_line: usize,
    /// Most bytes of header lines after the request line; more is answered 431.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A Prometheus server scrapes one connection at a time with a request head of a few
        // hundred bytes; these leave room for a few scrapers and health checkers at once.
        Self {
            max_connections: 16,
            request_deadline: Duration::from_secs(10),
            max_request_line: 8 * 1024,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Why a request is answered with an error, and with which status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    MethodNotAllowed,
    RequestLineTooLong,
    HeadersTooLarge,
    Timeout,
    Busy,
}

impl Refusal {
    /// The status line's code and reason.
    #[must_use]
    pub fn status(self) -> &'static str {
        match self {
            Self::Malformed => "400 Bad Request",
            Self::MethodNotAllowed => "405 Method Not Allowed",
            Self::RequestLineTooLong => "414 URI Too Long",
            Self::HeadersTooLarge => "431 Request Header Fields Too Large",
            Self::Timeout => "408 Request Timeout",
            Self::Busy => "503 Service Unavailable",
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head<'a> {
    /// Not a whole request head yet, and within the limits.
    Partial,
    /// A whole request head; `path` is the target without a query.
    Request {
        head_only: bool,
        path: &'a str,
    },
    Refuse(Refusal),
}

/// Decides what the bytes received so far are (a pure function of the bytes and the limits).
/// A head that cannot fit the limits is refused as soon as that is known, whether or not its
/// end has arrived, so the caller never needs more than the limits' worth of buffer.
#[must_use]
pub fn examine<'a>(buf: &'a [u8], limits: &Limits) -> Head<'a> {
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > limits.max_request_line {
            Head::Refuse(Refusal::RequestLineTooLong)
        } else {
            Head::Partial
        };
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    if line.len() > limits.max_request_line {
        return Head::Refuse(Refusal::RequestLineTooLong);
    }
    // Header lines up to and including the empty line that ends the head.
    let rest = &buf[eol + 1..];
    let mut at = 0;
    let end = loop {
        let Some(n) = rest[at..].iter().position(|&b| b == b'\n') else {
            break None;
        };
        let header = &rest[at..at + n];
        at += n + 1;
        if header.is_empty() || header == b"\r" {
            break Some(at);
        }
    };
    match end {
        Some(len) if len > limits.max_header_bytes => return Head::Refuse(Refusal::HeadersTooLarge),
        None if rest.len() > limits.max_header_bytes => return Head::Refuse(Refusal::HeadersTooLarge),
        None => return Head::Partial,
        Some(_) => {}
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return Head::Refuse(Refusal::Malformed);
    };
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (words.next(), words.next(), words.next(), words.next())
    else {
        return Head::Refuse(Refusal::Malformed);
    };
    if !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Head::Refuse(Refusal::Malformed);
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match method {
        "GET" => Head::Request { head_only: false, path },
        "HEAD" => Head::Request { head_only: true, path },
        _ => Head::Refuse(Refusal::MethodNotAllowed),
    }
}

/// Binds a listening TCP socket. An unspecified IPv6 address (`[::]`) serves IPv4 as well,
/// whatever `net.ipv6.bindv6only` says, and falls back to `0.0.0.0` on a kernel without IPv6
/// (booted with `ipv6.disable=1`: no IPv6 socket at all), so `[::]` is a safe default; any other
/// IPv6 address serves only itself.
///
/// # Errors
/// When the socket cannot be created or bound (the address is in use or not local).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, sockopt};
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = match socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None) {
        Err(nix::errno::Errno::EAFNOSUPPORT) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED => {
            return bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port())));
        }
        other => other?,
    };
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if let SocketAddr::V6(v6) = addr {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &!v6.ip().is_unspecified())?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(64).map_err(std::io::Error::from)?)?;
    Ok(TcpListener::from(fd))
}

/// Serves `/metrics` and `/healthz` on `addr` from background threads, within
/// [`Limits::default`].
///
/// # Errors
/// When the address cannot be bound.
pub fn serve(addr: SocketAddr, gw: Arc<Gateway>) -> std::io::Result<SocketAddr> {
    serve_with(addr, gw, Limits::default())
}

/// [`serve`] within the given limits.
///
/// # Errors
/// When the address cannot be bound.
pub fn serve_with(addr: SocketAddr, gw: Arc<Gateway>, limits: Limits) -> std::io::Result<SocketAddr> {
    let listener = bind(addr)?;
    let local = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and the like: do not spin on it.
                    tracing::debug!(error = %e, "metrics: accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            // Counted here, in accept order, so the cap holds however the threads are scheduled.
            if active.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
                active.fetch_sub(1, Ordering::AcqRel);
                refuse_busy(conn);
                continue;
            }
            let slot = Slot(Arc::clone(&active));
            let gw = Arc::clone(&gw);
            let spawned =
                std::thread::Builder::new().name("metrics-conn".into()).stack_size(256 * 1024).spawn(move || {
                    let _slot = slot;
                    let _ = handle(&gw, conn, &limits);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "metrics: cannot start a connection thread");
            }
        }
    })?;
    Ok(local)
}

/// One connection's place under [`Limits::max_connections`], given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers 503 from the accept loop without ever waiting for the client.
fn refuse_busy(mut conn: TcpStream) {
    if conn.set_nonblocking(true).is_ok() {
        // A fresh socket's send buffer takes these few bytes; if not, the client gets a reset.
        let _ = conn.write_all(response_head(Refusal::Busy.status(), "text/plain", 5).as_bytes());
        let _ = conn.write_all(b"busy\n");
    }
}

fn response_head(status: &str, ctype: &str, len: usize) -> String {
    format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
}

/// Reads one request head within the deadline and the size limits, answers it and closes.
fn handle(gw: &Gateway, mut conn: TcpStream, limits: &Limits) -> std::io::Result<()> {
    let deadline = Instant::now() + limits.request_deadline;
    let left = || deadline.saturating_duration_since(Instant::now());
    // Never more than the limits plus one read: a longer head is refused before it grows.
    let mut buf = Vec::with_capacity(limits.max_request_line + limits.max_header_bytes + 2);
    let mut chunk = [0u8; 4096];
    let head = loop {
        match examine(&buf, limits) {
            Head::Partial => {}
            head => break head,
        }
        let wait = left();
        if wait.is_zero() {
            break Head::Refuse(Refusal::Timeout);
        }
        conn.set_read_timeout(Some(wait))?;
        match conn.read(&mut chunk) {
            // The client gave up before a whole head: nobody to answer.
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break Head::Refuse(Refusal::Timeout);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };
    // Writing gets what is left of the deadline, and a moment even when nothing is.
    conn.set_write_timeout(Some(left().max(Duration::from_secs(1))))?;
    match head {
        Head::Request { head_only, path } => {
            let (status, ctype, body) = match path {
                METRICS_PATH => ("200 OK", "text/plain; version=0.0.4", render(&sample(gw))),
                HEALTH_PATH if gw.draining() => ("503 Service Unavailable", "text/plain", "draining\n".to_string()),
                HEALTH_PATH => ("200 OK", "text/plain", "ok\n".to_string()),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            conn.write_all(response_head(status, ctype, body.len()).as_bytes())?;
            if !head_only {
                conn.write_all(body.as_bytes())?;
            }
            Ok(())
        }
        Head::Refuse(refusal) => {
            let body = format!("{}\n", refusal.status());
            conn.write_all(response_head(refusal.status(), "text/plain", body.len()).as_bytes())?;
            conn.write_all(body.as_bytes())?;
            // Let a client that already sent its whole (oversized) head read the answer instead
            // of a reset: stop sending, then discard a bounded amount of what it still sends.
            conn.shutdown(Shutdown::Write)?;
            conn.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut drained = 0usize;
            while drained < 256 * 1024 {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            Ok(())
        }
        Head::Partial => unreachable!("the loop ends only with a whole head or a refusal"),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_measured_between_samples_a_window_apart() {
        let mut r = Rate::default();
        assert_eq!(r.sample(10_000, 1_000, 500), None, "one sample is no rate");
        assert_eq!(r.sample(10_500, 9_000, 900), None, "too soon: not a window");
        // 2 s after the first sample: 1,000,000 bytes in, 250,000 out.
        assert_eq!(r.sample(12_000, 1_001_000, 250_500), Some((4_000_000, 1_000_000)));
        // A scrape right after reports the same figure.
        assert_eq!(r.sample(12_100, 2_000_000, 250_500), Some((4_000_000, 1_000_000)));
        // Idle for a second: zero.
        assert_eq!(r.sample(13_000, 1_001_000, 250_500), Some((0, 0)));
        // Counters that went back (a peer rebuilt) do not underflow.
        assert_eq!(r.sample(14_000, 10, 10), Some((0, 0)));
        let text = render(&Sample {
            interface: "sg0".into(),
            peers: vec![PeerSample {
                public_key: "AAAA".into(),
                bits_per_second: Some((8, 16)),
                ..PeerSample::default()
            }],
            ..Sample::default()
        });
        assert!(
            text.contains("slice_gateway_peer_rx_bits_per_second{interface=\"sg0\",public_key=\"AAAA\"} 8\n"),
            "{text}"
        );
        assert!(
            text.contains("slice_gateway_peer_tx_bits_per_second{interface=\"sg0\",public_key=\"AAAA\"} 16\n"),
            "{text}"
        );
        assert!(!render(&Sample::default()).contains("bits_per_second"), "no family without a figure");
    }

    #[test]
    fn renders_bounded_labels() {
        let s = Sample {
            interface: "sg0".into(),
            garbage: 3,
            peers: vec![PeerSample {
                public_key: "AAAA".into(),
                rx_bytes: 10,
                last_handshake: 1.5,
                handshake_rtt_ms: Some(12),
                rx_loss: 0.25,
                drops: vec![("auth", 2)],
                ..PeerSample::default()
            }],
            ..Sample::default()
        };
        let text = render(&s);
        assert!(text.contains("slice_gateway_garbage_packets_total{interface=\"sg0\"} 3\n"));
        assert!(text.contains("slice_gateway_peer_rx_bytes_total{interface=\"sg0\",public_key=\"AAAA\"} 10\n"));
        assert!(
            text.contains("slice_gateway_peer_last_handshake_seconds{interface=\"sg0\",public_key=\"AAAA\"} 1.500\n")
        );
        assert!(
            text.contains("slice_gateway_peer_drops_total{interface=\"sg0\",public_key=\"AAAA\",reason=\"auth\"} 2\n")
        );
        assert!(text.contains("slice_gateway_peers{interface=\"sg0\"} 1\n"));
        assert!(
            text.contains("slice_gateway_peer_handshake_rtt_seconds{interface=\"sg0\",public_key=\"AAAA\"} 0.012\n")
        );
        assert!(text.contains("slice_gateway_peer_rx_loss_ratio{interface=\"sg0\",public_key=\"AAAA\"} 0.2500\n"));
        // Every sample line has a TYPE line for its family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
    }

    fn small() -> Limits {
        Limits { max_request_line: 32, max_header_bytes: 64, ..Limits::default() }
    }

    #[test]
    fn whole_heads_are_requests_and_partial_ones_wait() {
        let l = small();
        assert_eq!(
            examine(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &l),
            Head::Request { head_only: false, path: "/metrics" }
        );
        assert_eq!(examine(b"HEAD /healthz?x=1 HTTP/1.0\n\n", &l), Head::Request { head_only: true, path: "/healthz" });
        for partial in [&b""[..], b"GET /met", b"GET /metrics HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n"] {
            assert_eq!(examine(partial, &l), Head::Partial, "{}", String::from_utf8_lossy(partial));
        }
    }

    #[test]
    fn oversized_heads_are_refused_before_they_end() {
        let l = small();
        // A request line over the limit, with or without its end.
        assert_eq!(examine(&[b'A'; 33], &l), Head::Refuse(Refusal::RequestLineTooLong));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(40));
        assert_eq!(examine(long.as_bytes(), &l), Head::Refuse(Refusal::RequestLineTooLong));
        // Exactly at the limit is fine.
        let at = format!("GET /{} HTTP/1.1", "a".repeat(32 - 14));
        assert_eq!(at.len(), 32);
        assert!(matches!(examine(format!("{at}\r\n\r\n").as_bytes(), &l), Head::Request { .. }));
        // Headers over the limit, ended or not.
        let headers = format!("GET / HTTP/1.1\r\nX: {}\r\n", "b".repeat(70));
        assert_eq!(examine(headers.as_bytes(), &l), Head::Refuse(Refusal::HeadersTooLarge));
        assert_eq!(examine(format!("{headers}\r\n").as_bytes(), &l), Head::Refuse(Refusal::HeadersTooLarge));
        let many = format!("GET / HTTP/1.1\r\n{}", "X: y\r\n".repeat(20));
        assert_eq!(examine(many.as_bytes(), &l), Head::Refuse(Refusal::HeadersTooLarge));
    }

    #[test]
    fn malformed_heads_and_other_methods_are_refused() {
        let l = small();
        for bad in [
            &b"GET\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2\r\n\r\n",
            b"GET  / HTTP/1.1\n\n",
            b"\xff / HTTP/1.1\n\n",
        ] {
            assert_eq!(examine(bad, &l), Head::Refuse(Refusal::Malformed), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(examine(b"POST /metrics HTTP/1.1\r\n\r\n", &l), Head::Refuse(Refusal::MethodNotAllowed));
        assert!(Refusal::HeadersTooLarge.status().starts_with("431 "));
        assert!(Refusal::RequestLineTooLong.status().starts_with("414 "));
    }
}
