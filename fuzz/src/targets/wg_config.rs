//! The gateway's `wg(8)` configuration parser (`slice-gateway --config`, `wg setconf` format).
//! Property: a configuration that parses renders (`wg showconf` format) to one that parses to
//! the same thing; a refusal names a line of the input.

use slice_gateway::config::{self, DeviceUpdate};
use slice_gateway::uapi::{DeviceStatus, PeerStatus};

use crate::MAX_INPUT;

pub const DICTIONARY: &[&str] = &[
    "[Interface]",
    "[Peer]",
    "PrivateKey",
    "ListenPort",
    "FwMark",
    "PublicKey",
    "PresharedKey",
    "AllowedIPs",
    "Endpoint",
    "PersistentKeepalive",
    " = ",
    "=",
    "#",
    ",",
    "off",
    "0x",
    "/32",
    "/0",
    "/129",
    "::",
    "[::1]:51820",
    "[fe80::1%2]:1",
    "192.0.2.1:51820",
    "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "\n",
];

/// What `wg showconf` would print for the device after `update` (the fields it prints).
fn as_status(update: &DeviceUpdate) -> DeviceStatus {
    DeviceStatus {
        private_key: update.private_key,
        listen_port: update.listen_port.unwrap_or(0),
        fwmark: 0,
        peers: update
            .peers
            .iter()
            .map(|p| PeerStatus {
                public_key: p.public_key,
                preshared_key: p.preshared_key,
                endpoint: p.endpoint,
                persistent_keepalive: p.persistent_keepalive.unwrap_or(0),
                allowed_ips: p.allowed_ips.clone(),
                ..PeerStatus::default()
            })
            .collect(),
    }
}

pub fn run(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    // The gateway reads the file as UTF-8 text and refuses anything else before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let update = match config::parse(text) {
        Ok(u) => u,
        Err(e) => {
            assert!(
                e.line >= 1 && e.line <= text.lines().count(),
                "error names line {} of {}: {e}",
                e.line,
                text.lines().count()
            );
            assert!(!e.message.is_empty());
            return;
        }
    };
    assert!(update.replace_peers, "a configuration file replaces the peers");
    let rendered = config::render(&as_status(&update));
    let again = config::parse(&rendered).unwrap_or_else(|e| panic!("rendered config does not parse: {e}\n{rendered}"));
    assert_eq!(again.private_key, update.private_key, "{rendered}");
    assert_eq!(again.listen_port, Some(update.listen_port.unwrap_or(0)), "{rendered}");
    assert_eq!(again.peers.len(), update.peers.len(), "{rendered}");
    for (a, b) in again.peers.iter().zip(&update.peers) {
        assert_eq!(a.public_key, b.public_key, "{rendered}");
        assert_eq!(a.preshared_key, b.preshared_key, "{rendered}");
        assert_eq!(a.endpoint, b.endpoint, "{rendered}");
        assert_eq!(a.allowed_ips, b.allowed_ips, "{rendered}");
        assert_eq!(a.persistent_keepalive.unwrap_or(0), b.persistent_keepalive.unwrap_or(0), "{rendered}");
    }
}
