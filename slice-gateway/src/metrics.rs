//! Prometheus text exposition on `/metrics` and a `/healthz`, from a tiny HTTP/1.1 responder.
//! Labels are bounded: the interface, the peer public key (as WireGuard exporters do) and a
//! fixed set of drop reasons; nothing per packet or per address.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

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
    /// (reason, count) for a fixed set of reasons.
    pub drops: Vec<(&'static str, u64)>,
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
    pub peers: Vec<PeerSample>,
}

/// Renders the Prometheus text format (version 0.0.4).
#[must_use]
pub fn render(s: &Sample) -> String {
    let mut out = String::new();
    let i = &s.interface;
    let device = [
        (
            "slice_gateway_garbage_packets_total",
            "UDP datagrams that are not WireGuard messages or fail mac1.",
            s.garbage,
        ),
        ("slice_gateway_unknown_peer_packets_total", "WireGuard messages for no configured peer.", s.unknown_peer),
        ("slice_gateway_cookie_replies_total", "Cookie replies sent under handshake load.", s.cookie_replies),
        (
            "slice_gateway_no_private_key_packets_total",
            "Packets dropped because no private key is set.",
            s.no_private_key,
        ),
        (
            "slice_gateway_no_route_packets_total",
            "TUN packets whose destination is in no peer's AllowedIPs.",
            s.no_route,
        ),
        ("slice_gateway_tun_invalid_packets_total", "TUN packets that are not IPv4 or IPv6.", s.tun_invalid),
    ];
    for (name, help, value) in device {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{interface=\"{i}\"}} {value}");
    }
    let _ = writeln!(out, "# HELP slice_gateway_peers Configured peers.\n# TYPE slice_gateway_peers gauge");
    let _ = writeln!(out, "slice_gateway_peers{{interface=\"{i}\"}} {}", s.peers.len());
    type Field = fn(&PeerSample) -> String;
    let per_peer: [(&str, &str, &str, Field); 5] = [
        ("slice_gateway_peer_rx_bytes_total", "counter", "Bytes received from the peer (UDP payload).", |p| {
            p.rx_bytes.to_string()
        }),
        ("slice_gateway_peer_rx_packets_total", "counter", "Authenticated datagrams received from the peer.", |p| {
            p.rx_packets.to_string()
        }),
        ("slice_gateway_peer_tx_bytes_total", "counter", "Bytes sent to the peer (UDP payload).", |p| {
            p.tx_bytes.to_string()
        }),
        ("slice_gateway_peer_tx_packets_total", "counter", "Datagrams sent to the peer.", |p| p.tx_packets.to_string()),
        ("slice_gateway_peer_last_handshake_seconds", "gauge", "Unix time of the last handshake (0: never).", |p| {
            format!("{:.3}", p.last_handshake)
        }),
    ];
    for (name, kind, help, field) in per_peer {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in &s.peers {
            let _ = writeln!(out, "{name}{{interface=\"{i}\",public_key=\"{}\"}} {}", p.public_key, field(p));
        }
    }
    let name = "slice_gateway_peer_drops_total";
    let _ = writeln!(out, "# HELP {name} Packets of the peer dropped, by reason.\n# TYPE {name} counter");
    for p in &s.peers {
        for (reason, n) in &p.drops {
            let _ =
                writeln!(out, "{name}{{interface=\"{i}\",public_key=\"{}\",reason=\"{reason}\"}} {n}", p.public_key);
        }
    }
    out
}

/// Takes a sample of the gateway's counters.
#[must_use]
pub fn sample(gw: &Gateway) -> Sample {
    let c = &gw.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut peers = Vec::new();
    gw.for_each_peer(|p, last| {
        let pc = &p.counters;
        peers.push(PeerSample {
            public_key: p.public_key.to_base64(),
            rx_bytes: load(&pc.rx_bytes),
            rx_packets: load(&pc.rx_packets),
            tx_bytes: load(&pc.tx_bytes),
            tx_packets: load(&pc.tx_packets),
            last_handshake: last
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
            drops: vec![
                ("auth", load(&pc.drop_auth)),
                ("source_not_allowed", load(&pc.drop_source)),
                ("no_endpoint", load(&pc.drop_no_endpoint)),
                ("io", load(&pc.drop_io)),
            ],
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
        peers,
    }
}

/// Serves `/metrics` and `/healthz` on `addr` from a background thread.
///
/// # Errors
/// When the address cannot be bound.
pub fn serve(addr: SocketAddr, gw: Arc<Gateway>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = respond(&gw, conn);
        }
    })?;
    Ok(local)
}

fn respond(gw: &Gateway, conn: TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 0 && header.trim_end() != "" {
        header.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(&sample(gw))),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_labels() {
        let s = Sample {
            interface: "sg0".into(),
            garbage: 3,
            peers: vec![PeerSample {
                public_key: "AAAA".into(),
                rx_bytes: 10,
                last_handshake: 1.5,
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
        // Every sample line has a TYPE line for its family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
    }
}
