//! The cross-platform WireGuard UAPI (<https://www.wireguard.com/xplatform/>): `get=1` and
//! `set=1` over a unix socket, `key=value` lines ended by an empty line, answered with
//! `errno=N`. Pure: parsing of `set` bodies and formatting of `get` replies; the socket lives
//! in [`crate::device`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::config::{DeviceUpdate, PeerUpdate, parse_cidr, parse_endpoint};
use slice_api::wireguard::Key;

/// What `get=1` reports about the device.
#[derive(Debug, Clone, Default)]
pub struct DeviceStatus {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerStatus>,
}

/// What `get=1` reports about one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerStatus {
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// Wall-clock time of the last completed handshake (a Unix time on the wire, not an age).
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
}

/// A rejected `set` request. `errno` is what the reply carries (positive, as `wg` expects).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct SetError {
    pub errno: i32,
    pub message: String,
}

fn invalid(message: impl Into<String>) -> SetError {
    SetError { errno: libc::EINVAL, message: message.into() }
}

/// Formats the `get=1` reply, including the terminating `errno=0` and empty line.
#[must_use]
pub fn format_get(status: &DeviceStatus) -> String {
    let mut out = String::new();
    if let Some(k) = status.private_key {
        let _ = writeln!(out, "private_key={}", k.to_hex());
    }
    let _ = writeln!(out, "listen_port={}", status.listen_port);
    if status.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", status.fwmark);
    }
    for p in &status.peers {
        let _ = writeln!(out, "public_key={}", p.public_key.to_hex());
        if let Some(psk) = p.preshared_key {
            let _ = writeln!(out, "preshared_key={}", psk.to_hex());
        }
        let _ = writeln!(out, "protocol_version=1");
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "endpoint={ep}");
        }
        let (sec, nsec) = match p.last_handshake.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
            Some(d) => (d.as_secs(), d.subsec_nanos()),
            None => (0, 0),
        };
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(out, "persistent_keepalive_interval={}", p.persistent_keepalive);
        for ip in &p.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
    }
    out.push_str("errno=0\n\n");
    out
}

/// Parses the body of a `set=1` request (the lines after `set=1`, without the empty line).
///
/// # Errors
/// `EINVAL` with a message on an unknown key, a malformed value, or a peer key before
/// `public_key`; `EPROTO` for `protocol_version` other than 1.
pub fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<DeviceUpdate, SetError> {
    let mut update = DeviceUpdate::default();
    let mut peer: Option<PeerUpdate> = None;
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            return Err(invalid(format!("malformed line {line:?}")));
        };
        let hex = |v: &str| Key::from_hex(v).map_err(|e| invalid(format!("{key}: {e}")));
        let flag = |v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(invalid(format!("{key}: expected true or false, got {v:?}"))),
        };
        match (key, peer.as_mut()) {
            ("public_key", _) => {
                if let Some(done) = peer.take() {
                    update.peers.push(done);
                }
                peer = Some(PeerUpdate { public_key: hex(value)?, ..PeerUpdate::default() });
            }
            ("private_key", None) => update.private_key = Some(hex(value)?),
            ("listen_port", None) => {
                update.listen_port = Some(value.parse().map_err(|_| invalid(format!("listen_port: {value:?}")))?);
            }
            ("fwmark", None) => {
                update.fwmark = Some(if value.is_empty() {
                    0
                } else {
                    value.parse().map_err(|_| invalid(format!("fwmark: {value:?}")))?
                });
            }
            ("replace_peers", None) => update.replace_peers = flag(value)?,
            ("remove", Some(p)) => p.remove = flag(value)?,
            ("update_only", Some(p)) => p.update_only = flag(value)?,
            ("preshared_key", Some(p)) => p.preshared_key = Some(hex(value)?),
            ("endpoint", Some(p)) => p.endpoint = Some(parse_endpoint(value).map_err(invalid)?),
            ("persistent_keepalive_interval", Some(p)) => {
                p.persistent_keepalive =
                    Some(value.parse().map_err(|_| invalid(format!("persistent_keepalive_interval: {value:?}")))?);
            }
            ("replace_allowed_ips", Some(p)) => p.replace_allowed_ips = flag(value)?,
            ("allowed_ip", Some(p)) => p.allowed_ips.push(parse_cidr(value).map_err(invalid)?),
            ("protocol_version", Some(_)) => {
                if value != "1" {
                    return Err(SetError { errno: libc::EPROTO, message: format!("protocol_version {value}") });
                }
            }
            (_, None) => return Err(invalid(format!("unknown or misplaced device key {key:?}"))),
            (_, Some(_)) => return Err(invalid(format!("unknown peer key {key:?}"))),
        }
    }
    if let Some(done) = peer.take() {
        update.peers.push(done);
    }
    Ok(update)
}

/// The `set` reply.
#[must_use]
pub fn format_errno(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn parses_what_wg_set_sends() {
        // As `wg set wg0 private-key … listen-port 51820 peer X allowed-ips … endpoint …` sends it.
        let k1 = Key([1; 32]);
        let k2 = Key([2; 32]);
        let body = format!(
            "private_key={}\nlisten_port=51820\nreplace_peers=true\npublic_key={}\nreplace_allowed_ips=true\n\
             allowed_ip=10.1.0.0/16\nallowed_ip=fd00::/64\nendpoint=198.18.0.2:51820\n\
             persistent_keepalive_interval=25\nprotocol_version=1\npublic_key={}\nremove=true",
            k1.to_hex(),
            k2.to_hex(),
            k1.to_hex()
        );
        let u = parse_set(body.lines()).unwrap();
        assert_eq!(u.private_key, Some(k1));
        assert_eq!(u.listen_port, Some(51820));
        assert!(u.replace_peers);
        assert_eq!(u.peers.len(), 2);
        let p = &u.peers[0];
        assert_eq!(p.public_key, k2);
        assert!(p.replace_allowed_ips && !p.remove);
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(p.endpoint, Some("198.18.0.2:51820".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(u.peers[1].remove);
    }

    #[test]
    fn rejects_bad_set_requests() {
        assert_eq!(parse_set(["remove=true"]).unwrap_err().errno, libc::EINVAL);
        assert_eq!(parse_set(["bogus=1"]).unwrap_err().errno, libc::EINVAL);
        assert_eq!(parse_set(["listen_port=x"]).unwrap_err().errno, libc::EINVAL);
        assert_eq!(parse_set(["private_key=00"]).unwrap_err().errno, libc::EINVAL);
        let pk = format!("public_key={}", Key([3; 32]).to_hex());
        assert_eq!(parse_set([pk.as_str(), "protocol_version=2"]).unwrap_err().errno, libc::EPROTO);
        assert_eq!(parse_set([pk.as_str(), "endpoint=nohost"]).unwrap_err().errno, libc::EINVAL);
        assert_eq!(parse_set([pk.as_str(), "remove=yes"]).unwrap_err().errno, libc::EINVAL);
    }

    #[test]
    fn get_reports_unix_time_and_private_key() {
        let status = DeviceStatus {
            private_key: Some(Key([9; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerStatus {
                public_key: Key([2; 32]),
                endpoint: Some("[fd00::1]:51820".parse().unwrap()),
                last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 5)),
                rx_bytes: 10,
                tx_bytes: 20,
                persistent_keepalive: 25,
                allowed_ips: vec!["10.1.0.0/16".parse().unwrap()],
                ..PeerStatus::default()
            }],
        };
        let text = format_get(&status);
        let expected = format!(
            "private_key={}\nlisten_port=51820\npublic_key={}\nprotocol_version=1\nendpoint=[fd00::1]:51820\n\
             last_handshake_time_sec=1800000000\nlast_handshake_time_nsec=5\ntx_bytes=20\nrx_bytes=10\n\
             persistent_keepalive_interval=25\nallowed_ip=10.1.0.0/16\nerrno=0\n\n",
            "09".repeat(32),
            "02".repeat(32)
        );
        assert_eq!(text, expected);
    }
}
