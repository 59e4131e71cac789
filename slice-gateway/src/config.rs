//! The `wg(8)` configuration format (`wg setconf`/`wg showconf`), parsed into a
//! [`DeviceUpdate`] — the same change set the UAPI `set=1` operation produces, so a file and
//! the socket configure the device through one path.
//!
//! Pure: no I/O, hostnames are not resolved (endpoints must be `IP:port` or `[IPv6]:port`).

use std::net::SocketAddr;

use ipnet::IpNet;

use crate::key::Key;

/// A change to the device, as `wg set`/`wg setconf` (UAPI `set=1`) express it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// `Some(zero key)` removes the private key.
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    /// Remove every peer not named in `peers` first.
    pub replace_peers: bool,
    pub peers: Vec<PeerUpdate>,
}

/// A change to one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerUpdate {
    pub public_key: Key,
    pub remove: bool,
    /// Only change an existing peer; never create one.
    pub update_only: bool,
    /// `Some(zero key)` removes the preshared key.
    pub preshared_key: Option<Key>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; `Some(0)` turns it off.
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
}

/// A configuration file error, naming the 1-based line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError { line, message: message.into() }
}

#[derive(PartialEq)]
enum Section {
    None,
    Interface,
    Peer,
}

/// Parses a `wg(8)` configuration. The result replaces the whole device configuration
/// (`replace_peers`, and `replace_allowed_ips` on each peer), as `wg setconf` does.
///
/// # Errors
/// On the first malformed line: unknown section or key, bad key, port, CIDR or endpoint, a
/// `[Peer]` without `PublicKey`, a duplicate `[Interface]`.
pub fn parse(text: &str) -> Result<DeviceUpdate, ParseError> {
    let mut update = DeviceUpdate { replace_peers: true, ..DeviceUpdate::default() };
    let mut section = Section::None;
    let mut seen_interface = false;
    // The peer being read and the line its section started on.
    let mut current: Option<(PeerUpdate, usize, bool)> = None;

    let finish = |current: &mut Option<(PeerUpdate, usize, bool)>, update: &mut DeviceUpdate| {
        if let Some((peer, line, has_key)) = current.take() {
            if !has_key {
                return Err(err(line, "[Peer] section without PublicKey"));
            }
            if update.peers.iter().any(|p| p.public_key == peer.public_key) {
                return Err(err(line, "duplicate [Peer] with the same PublicKey"));
            }
            update.peers.push(peer);
        }
        Ok(())
    };

    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            finish(&mut current, &mut update)?;
            match line.to_ascii_lowercase().as_str() {
                "[interface]" => {
                    if seen_interface {
                        return Err(err(line_no, "duplicate [Interface] section"));
                    }
                    seen_interface = true;
                    section = Section::Interface;
                }
                "[peer]" => {
                    section = Section::Peer;
                    current = Some((PeerUpdate { replace_allowed_ips: true, ..PeerUpdate::default() }, line_no, false));
                }
                _ => return Err(err(line_no, format!("unknown section {line}"))),
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(line_no, "expected Key = Value"));
        };
        let (key, value) = (key.trim(), value.trim());
        let lkey = key.to_ascii_lowercase();
        match section {
            Section::None => return Err(err(line_no, format!("{key} outside of a section"))),
            Section::Interface => match lkey.as_str() {
                "privatekey" => {
                    let k = Key::from_base64(value).map_err(|e| err(line_no, format!("PrivateKey: {e}")))?;
                    update.private_key = Some(k);
                }
                "listenport" => {
                    let port =
                        value.parse::<u16>().map_err(|_| err(line_no, format!("ListenPort: not a port: {value}")))?;
                    update.listen_port = Some(port);
                }
                "fwmark" => {
                    update.fwmark = Some(parse_fwmark(value).ok_or_else(|| err(line_no, format!("FwMark: {value}")))?)
                }
                _ => return Err(err(line_no, format!("unknown key {key} in [Interface]"))),
            },
            Section::Peer => {
                let (peer, _, has_key) = current.as_mut().expect("a [Peer] section is open");
                match lkey.as_str() {
                    "publickey" => {
                        peer.public_key =
                            Key::from_base64(value).map_err(|e| err(line_no, format!("PublicKey: {e}")))?;
                        *has_key = true;
                    }
                    "presharedkey" => {
                        peer.preshared_key =
                            Some(Key::from_base64(value).map_err(|e| err(line_no, format!("PresharedKey: {e}")))?);
                    }
                    "allowedips" => {
                        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                            peer.allowed_ips
                                .push(parse_cidr(part).map_err(|m| err(line_no, format!("AllowedIPs: {m}")))?);
                        }
                    }
                    "endpoint" => {
                        peer.endpoint =
                            Some(parse_endpoint(value).map_err(|m| err(line_no, format!("Endpoint: {m}")))?);
                    }
                    "persistentkeepalive" => {
                        let secs = if value.eq_ignore_ascii_case("off") {
                            0
                        } else {
                            value.parse::<u16>().map_err(|_| {
                                err(line_no, format!("PersistentKeepalive: not 0-65535 or off: {value}"))
                            })?
                        };
                        peer.persistent_keepalive = Some(secs);
                    }
                    _ => return Err(err(line_no, format!("unknown key {key} in [Peer]"))),
                }
            }
        }
    }
    finish(&mut current, &mut update)?;
    Ok(update)
}

fn parse_fwmark(value: &str) -> Option<u32> {
    if value.eq_ignore_ascii_case("off") {
        return Some(0);
    }
    match value.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// A CIDR, or a bare address meaning a host prefix (as `wg` accepts).
///
/// # Errors
/// A message naming the bad text.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<std::net::IpAddr>().map(IpNet::from).map_err(|_| format!("not an address or CIDR: {s}"))
}

/// `IP:port` or `[IPv6]:port`.
///
/// # Errors
/// A message naming the bad text (hostnames are not resolved).
pub fn parse_endpoint(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| format!("not IP:port or [IPv6]:port (hostnames are not resolved): {s}"))
}

/// Renders a configuration in the `wg showconf` format (keys base64).
#[must_use]
pub fn render(status: &crate::uapi::DeviceStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("[Interface]\n");
    if let Some(k) = status.private_key {
        let _ = writeln!(out, "PrivateKey = {k}");
    }
    let _ = writeln!(out, "ListenPort = {}", status.listen_port);
    for p in &status.peers {
        let _ = writeln!(out, "\n[Peer]\nPublicKey = {}", p.public_key);
        if let Some(psk) = p.preshared_key {
            let _ = writeln!(out, "PresharedKey = {psk}");
        }
        if !p.allowed_ips.is_empty() {
            let ips: Vec<String> = p.allowed_ips.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "AllowedIPs = {}", ips.join(", "));
        }
        if let Some(ep) = p.endpoint {
            let _ = writeln!(out, "Endpoint = {ep}");
        }
        if p.persistent_keepalive != 0 {
            let _ = writeln!(out, "PersistentKeepalive = {}", p.persistent_keepalive);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const C: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

    #[test]
    fn parses_the_wg8_example() {
        let text = format!(
            "[Interface]\nPrivateKey = {A}\nListenPort = 51820\n\n# comment\n[Peer]\nPublicKey = {B}\n\
             Endpoint = 192.95.5.67:1234\nAllowedIPs = 10.192.122.3/32, 10.192.124.1/24\n\n\
             [Peer]\nPublicKey = {C}\nPresharedKey = {A}\nEndpoint = [2607:5300:60:6b0::c05f:543]:2468\n\
             AllowedIPs = 10.192.122.4/32,192.168.0.0/16\nPersistentKeepalive = 25 # NAT\n"
        );
        let u = parse(&text).unwrap();
        assert_eq!(u.private_key, Some(Key::from_base64(A).unwrap()));
        assert_eq!(u.listen_port, Some(51820));
        assert!(u.replace_peers);
        assert_eq!(u.peers.len(), 2);
        assert_eq!(u.peers[0].endpoint, Some("192.95.5.67:1234".parse().unwrap()));
        // Host bits are cleared, as wg does.
        assert_eq!(u.peers[0].allowed_ips[1], "10.192.124.0/24".parse::<IpNet>().unwrap());
        assert!(u.peers[0].replace_allowed_ips);
        assert_eq!(u.peers[1].persistent_keepalive, Some(25));
        assert_eq!(u.peers[1].preshared_key, Some(Key::from_base64(A).unwrap()));
        assert_eq!(u.peers[1].endpoint.unwrap().port(), 2468);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("[Interface]\nPrivateKey = nope\n", 2, "PrivateKey"),
            ("[Interface]\nListenPort = 70000\n", 2, "ListenPort"),
            ("[Interface]\nAddress = 10.0.0.1/24\n", 2, "unknown key Address"),
            ("PrivateKey = x\n", 1, "outside of a section"),
            ("[Interface]\n[Bogus]\n", 2, "unknown section"),
            ("[Interface]\n\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", 3, "without PublicKey"),
            (&format!("[Peer]\nPublicKey = {B}\nAllowedIPs = 10.0.0.0/33\n"), 3, "AllowedIPs"),
            (&format!("[Peer]\nPublicKey = {B}\nEndpoint = host.example:51820\n"), 3, "hostnames"),
            (&format!("[Peer]\nPublicKey = {B}\nPersistentKeepalive = -1\n"), 3, "PersistentKeepalive"),
            ("[Interface]\njunk\n", 2, "Key = Value"),
            (&format!("[Peer]\nPublicKey = {B}\n[Peer]\nPublicKey = {B}\n"), 3, "duplicate"),
        ];
        for (text, line, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?} → {e}");
            assert!(e.to_string().contains(needle), "{text:?} → {e}");
        }
    }

    #[test]
    fn keepalive_off_and_bare_address() {
        let u = parse(&format!("[Peer]\npublickey={B}\nPersistentKeepalive=off\nAllowedIPs=10.0.0.1\n")).unwrap();
        assert_eq!(u.peers[0].persistent_keepalive, Some(0));
        assert_eq!(u.peers[0].allowed_ips, vec!["10.0.0.1/32".parse::<IpNet>().unwrap()]);
        assert_eq!(u.private_key, None);
    }
}
