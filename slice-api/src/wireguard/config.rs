//! The `wg(8)` configuration file (`wg setconf`/`wg showconf`), as one typed model
//! ([`WgConfig`]) with its parser ([`WgConfig::parse`]) and renderer ([`WgConfig::render`]).
//! The worker renders the gateway's file from a WorkerSlice, the lab renders its own, and the
//! gateway parses what either wrote, so writer and reader cannot drift apart.
//!
//! Pure: no I/O, host names are not resolved (endpoints must be `IP:port` or `[IPv6]:port`).
//! A full-line comment right above a `[Peer]` line is that peer's [`WgPeer::comment`] (the
//! worker names the peer cluster there); other comments are skipped.

use std::fmt::Write as _;
use std::net::SocketAddr;

use ipnet::IpNet;

use super::key::Key;

/// A whole `wg(8)` configuration: what `wg setconf` replaces the device's configuration with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgConfig {
    pub interface: WgInterface,
    pub peers: Vec<WgPeer>,
}

/// The `[Interface]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgInterface {
    pub private_key: Option<Key>,
    pub listen_port: Option<u16>,
    /// `FwMark`; `off` reads as `Some(0)`.
    pub fwmark: Option<u32>,
}

/// One `[Peer]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgPeer {
    /// The comment line written right above `[Peer]` (one line, without the `#`).
    pub comment: Option<String>,
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    /// Written on one `AllowedIPs` line; read with host bits cleared, as `wg` does.
    pub allowed_ips: Vec<IpNet>,
    pub endpoint: Option<SocketAddr>,
    /// Seconds; `off` reads as `Some(0)`.
    pub persistent_keepalive: Option<u16>,
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

/// The peer being read: the peer, the line its section started on, whether it had a key.
struct OpenPeer {
    peer: WgPeer,
    line: usize,
    has_key: bool,
}

impl WgConfig {
    /// Parses a `wg(8)` configuration.
    ///
    /// # Errors
    /// On the first malformed line: unknown section or key, bad key, port, CIDR or endpoint, a
    /// `[Peer]` without `PublicKey` or with the `PublicKey` of an earlier one, a duplicate
    /// `[Interface]`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut config = WgConfig::default();
        let mut section = Section::None;
        let mut seen_interface = false;
        let mut current: Option<OpenPeer> = None;
        // A full-line comment on the line just read, for the `[Peer]` that may follow it.
        let mut last_comment: Option<String> = None;

        let finish = |current: &mut Option<OpenPeer>, config: &mut WgConfig| {
            if let Some(OpenPeer { peer, line, has_key }) = current.take() {
                if !has_key {
                    return Err(err(line, "[Peer] section without PublicKey"));
                }
                if config.peers.iter().any(|p| p.public_key == peer.public_key) {
                    return Err(err(line, "duplicate [Peer] with the same PublicKey"));
                }
                config.peers.push(peer);
            }
            Ok(())
        };

        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let comment = raw.trim_start().strip_prefix('#').map(|c| c.trim().to_owned());
            let line = raw.split('#').next().unwrap_or("").trim();
            let comment_above = std::mem::replace(&mut last_comment, comment);
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                finish(&mut current, &mut config)?;
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
                        let peer = WgPeer { comment: comment_above.filter(|c| !c.is_empty()), ..WgPeer::default() };
                        current = Some(OpenPeer { peer, line: line_no, has_key: false });
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
                Section::Interface => {
                    let interface = &mut config.interface;
                    match lkey.as_str() {
                        "privatekey" => {
                            let k = Key::from_base64(value).map_err(|e| err(line_no, format!("PrivateKey: {e}")))?;
                            interface.private_key = Some(k);
                        }
                        "listenport" => {
                            let port = value
                                .parse::<u16>()
                                .map_err(|_| err(line_no, format!("ListenPort: not a port: {value}")))?;
                            interface.listen_port = Some(port);
                        }
                        "fwmark" => {
                            interface.fwmark =
                                Some(parse_fwmark(value).ok_or_else(|| err(line_no, format!("FwMark: {value}")))?);
                        }
                        _ => return Err(err(line_no, format!("unknown key {key} in [Interface]"))),
                    }
                }
                Section::Peer => {
                    let open = current.as_mut().expect("a [Peer] section is open");
                    let peer = &mut open.peer;
                    match lkey.as_str() {
                        "publickey" => {
                            peer.public_key =
                                Key::from_base64(value).map_err(|e| err(line_no, format!("PublicKey: {e}")))?;
                            open.has_key = true;
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
        finish(&mut current, &mut config)?;
        Ok(config)
    }

    /// Renders the configuration in the `wg showconf` layout: `[Interface]` first, then each
    /// peer after a blank line, its comment (line breaks folded to spaces) right above
    /// `[Peer]`; only the fields that are set; keys base64; `AllowedIPs` joined by `, `.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::from("[Interface]\n");
        let interface = &self.interface;
        if let Some(k) = interface.private_key {
            let _ = writeln!(out, "PrivateKey = {k}");
        }
        if let Some(port) = interface.listen_port {
            let _ = writeln!(out, "ListenPort = {port}");
        }
        if let Some(mark) = interface.fwmark {
            let _ = writeln!(out, "FwMark = {mark:#x}");
        }
        for p in &self.peers {
            out.push('\n');
            if let Some(comment) = &p.comment {
                let _ = writeln!(out, "# {}", comment.replace(['\n', '\r'], " "));
            }
            let _ = writeln!(out, "[Peer]\nPublicKey = {}", p.public_key);
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
            if let Some(secs) = p.persistent_keepalive {
                let _ = writeln!(out, "PersistentKeepalive = {secs}");
            }
        }
        out
    }
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

/// A CIDR, or a bare address meaning a host prefix (as `wg` accepts); host bits cleared.
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    const C: &str = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=";

    fn parse(text: &str) -> Result<WgConfig, ParseError> {
        WgConfig::parse(text)
    }

    #[test]
    fn parses_the_wg8_example() {
        let text = format!(
            "[Interface]\nPrivateKey = {A}\nListenPort = 51820\n\n# comment\n[Peer]\nPublicKey = {B}\n\
             Endpoint = 192.95.5.67:1234\nAllowedIPs = 10.192.122.3/32, 10.192.124.1/24\n\n\
             [Peer]\nPublicKey = {C}\nPresharedKey = {A}\nEndpoint = [2607:5300:60:6b0::c05f:543]:2468\n\
             AllowedIPs = 10.192.122.4/32,192.168.0.0/16\nPersistentKeepalive = 25 # NAT\n"
        );
        let u = parse(&text).unwrap();
        assert_eq!(u.interface.private_key, Some(Key::from_base64(A).unwrap()));
        assert_eq!(u.interface.listen_port, Some(51820));
        assert_eq!(u.peers.len(), 2);
        assert_eq!(u.peers[0].comment.as_deref(), Some("comment"));
        assert_eq!(u.peers[1].comment, None);
        assert_eq!(u.peers[0].endpoint, Some("192.95.5.67:1234".parse().unwrap()));
        // Host bits are cleared, as wg does.
        assert_eq!(u.peers[0].allowed_ips[1], "10.192.124.0/24".parse::<IpNet>().unwrap());
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
            ("[Interface]\nFwMark = 0xg\n", 2, "FwMark"),
            ("PrivateKey = x\n", 1, "outside of a section"),
            ("[Interface]\n[Bogus]\n", 2, "unknown section"),
            ("[Interface]\n\n[Peer]\nAllowedIPs = 10.0.0.0/8\n", 3, "without PublicKey"),
            (&format!("[Peer]\nPublicKey = {B}\nAllowedIPs = 10.0.0.0/33\n"), 3, "AllowedIPs"),
            (&format!("[Peer]\nPublicKey = {B}\nEndpoint = host.example:51820\n"), 3, "hostnames"),
            (&format!("[Peer]\nPublicKey = {B}\nPersistentKeepalive = -1\n"), 3, "PersistentKeepalive"),
            (&format!("[Peer]\nPublicKey = {B}\nPresharedKey = {B}x\n"), 3, "PresharedKey"),
            (&format!("[Peer]\nPublicKey = {B}\nName = x\n"), 3, "unknown key Name in [Peer]"),
            ("[Interface]\njunk\n", 2, "Key = Value"),
            ("[Interface]\n[Interface]\n", 2, "duplicate [Interface]"),
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
        assert_eq!(u.interface.private_key, None);
    }

    /// A comment counts only on the line right above `[Peer]`; a blank line or a key between
    /// them, or a trailing comment, is not the peer's.
    #[test]
    fn only_the_comment_right_above_a_peer_is_kept() {
        let text = format!(
            "# file\n[Interface]\nListenPort = 1 # port\n# not above\n\n[Peer]\nPublicKey = {A}\n\
             # cluster c1\n[Peer] # trailing\nPublicKey = {B}\n  #   spaced  \n[Peer]\nPublicKey = {C}\n"
        );
        let u = parse(&text).unwrap();
        let comments: Vec<Option<&str>> = u.peers.iter().map(|p| p.comment.as_deref()).collect();
        assert_eq!(comments, [None, Some("cluster c1"), Some("spaced")]);
    }

    #[test]
    fn renders_in_the_showconf_layout() {
        let config = WgConfig {
            interface: WgInterface {
                private_key: Some(Key::from_base64(A).unwrap()),
                listen_port: Some(51820),
                fwmark: Some(0x20),
            },
            peers: vec![
                WgPeer {
                    comment: Some("cluster\nc1".into()),
                    public_key: Key::from_base64(B).unwrap(),
                    preshared_key: Some(Key::from_base64(C).unwrap()),
                    allowed_ips: vec!["10.80.0.0/20".parse().unwrap(), "fd00::/64".parse().unwrap()],
                    endpoint: Some("198.18.100.1:31820".parse().unwrap()),
                    persistent_keepalive: Some(25),
                },
                WgPeer { public_key: Key::from_base64(C).unwrap(), ..WgPeer::default() },
            ],
        };
        assert_eq!(
            config.render(),
            format!(
                "[Interface]\nPrivateKey = {A}\nListenPort = 51820\nFwMark = 0x20\n\n# cluster c1\n[Peer]\n\
                 PublicKey = {B}\nPresharedKey = {C}\nAllowedIPs = 10.80.0.0/20, fd00::/64\n\
                 Endpoint = 198.18.100.1:31820\nPersistentKeepalive = 25\n\n[Peer]\nPublicKey = {C}\n"
            )
        );
        assert_eq!(WgConfig::default().render(), "[Interface]\n");
    }

    fn keys() -> impl Strategy<Value = Key> {
        any::<[u8; 32]>().prop_map(Key)
    }

    fn nets() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, l)| IpNet::new(std::net::Ipv4Addr::from(a).into(), l).unwrap()),
            (any::<u128>(), 0u8..=128).prop_map(|(a, l)| IpNet::new(std::net::Ipv6Addr::from(a).into(), l).unwrap()),
        ]
        .prop_map(|n| n.trunc())
    }

    fn endpoints() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<u32>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((std::net::Ipv4Addr::from(a), p))),
            (any::<u128>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((std::net::Ipv6Addr::from(a), p))),
        ]
    }

    fn peers() -> impl Strategy<Value = WgPeer> {
        (
            proptest::option::of("[a-z0-9][a-z0-9 .-]{0,20}[a-z0-9]"),
            keys(),
            proptest::option::of(keys()),
            proptest::collection::vec(nets(), 0..4),
            proptest::option::of(endpoints()),
            proptest::option::of(any::<u16>()),
        )
            .prop_map(|(comment, public_key, preshared_key, allowed_ips, endpoint, persistent_keepalive)| {
                WgPeer { comment, public_key, preshared_key, allowed_ips, endpoint, persistent_keepalive }
            })
    }

    fn configs() -> impl Strategy<Value = WgConfig> {
        (
            proptest::option::of(keys()),
            proptest::option::of(any::<u16>()),
            proptest::option::of(any::<u32>()),
            proptest::collection::vec(peers(), 0..5),
        )
            .prop_map(|(private_key, listen_port, fwmark, mut peers)| {
                // A file names each peer once.
                let mut seen = std::collections::BTreeSet::new();
                peers.retain(|p| seen.insert(p.public_key));
                WgConfig { interface: WgInterface { private_key, listen_port, fwmark }, peers }
            })
    }

    proptest! {
        /// Writer and reader agree: whatever the model holds, rendering it and parsing the
        /// text gives the same model back.
        #[test]
        fn render_then_parse_is_the_same_config(config in configs()) {
            let text = config.render();
            let again = WgConfig::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            prop_assert_eq!(again, config);
        }
    }
}
