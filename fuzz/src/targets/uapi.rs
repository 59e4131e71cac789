//! The gateway's UAPI protocol (the `wg` tool's unix socket): an operation line, then `key=value`
//! lines up to an empty line, framed as `uapi_server` frames them. Property: a `set` body that
//! parses prints back to one that parses equal; a refusal carries EINVAL or EPROTO.

use std::fmt::Write as _;

use slice_gateway::config::DeviceUpdate;
use slice_gateway::uapi::{self, DeviceStatus, PeerStatus};

use crate::MAX_INPUT;

pub const DICTIONARY: &[&str] = &[
    "set=1",
    "get=1",
    "private_key=",
    "listen_port=",
    "fwmark=",
    "replace_peers=",
    "public_key=",
    "remove=",
    "update_only=",
    "preshared_key=",
    "endpoint=",
    "persistent_keepalive_interval=",
    "replace_allowed_ips=",
    "allowed_ip=",
    "protocol_version=",
    "true",
    "false",
    "\n",
    "\n\n",
    "[::1]:51820",
    "[fe80::1%2]:1",
    "10.0.0.0/8",
    "fd00::/64",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a",
];

/// The `set=1` body that makes `update` (every field it holds, in the order `wg` writes them).
fn set_body(update: &DeviceUpdate) -> String {
    let mut out = String::new();
    if let Some(k) = update.private_key {
        let _ = writeln!(out, "private_key={}", k.to_hex());
    }
    if let Some(port) = update.listen_port {
        let _ = writeln!(out, "listen_port={port}");
    }
    if let Some(mark) = update.fwmark {
        let _ = writeln!(out, "fwmark={mark}");
    }
    let _ = writeln!(out, "replace_peers={}", update.replace_peers);
    for p in &update.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        let _ = writeln!(out, "remove={}\nupdate_only={}", p.remove, p.update_only);
        if let Some(k) = p.preshared_key {
            let _ = writeln!(out, "preshared_key={}", k.to_hex());
        }
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        if let Some(secs) = p.persistent_keepalive {
            let _ = writeln!(out, "persistent_keepalive_interval={secs}");
        }
        let _ = writeln!(out, "replace_allowed_ips={}", p.replace_allowed_ips);
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out
}

pub fn run(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    // The server reads lines into a String: a connection sending other bytes is dropped.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let Some(op) = lines.next() else { return };
    let body: Vec<&str> = lines.take_while(|l| !l.is_empty()).collect();
    if op.trim_end() != "set=1" {
        return;
    }
    let update = match uapi::parse_set(body.iter().copied()) {
        Ok(u) => u,
        Err(e) => {
            assert!(e.errno == libc::EINVAL || e.errno == libc::EPROTO, "errno {}: {e}", e.errno);
            assert!(!e.message.is_empty());
            return;
        }
    };
    let printed = set_body(&update);
    let again = uapi::parse_set(printed.lines()).unwrap_or_else(|e| panic!("printed set body refused: {e}\n{printed}"));
    assert_eq!(again, update, "{printed}");
    // A device in that state answers `get` with a reply that ends the protocol's way.
    let status = DeviceStatus {
        private_key: update.private_key,
        listen_port: update.listen_port.unwrap_or(0),
        fwmark: update.fwmark.unwrap_or(0),
        peers: update
            .peers
            .iter()
            .map(|p| PeerStatus {
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
                ..PeerStatus::default()
            })
            .collect(),
    };
    let reply = uapi::format_get(&status);
    assert!(reply.ends_with("errno=0\n\n"), "{reply}");
    assert!(reply.trim_end().lines().all(|l| l.contains('=')), "{reply}");
}
