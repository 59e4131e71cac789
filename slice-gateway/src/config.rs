//! The device's change set ([`DeviceUpdate`]: what the UAPI `set=1` operation expresses), and
//! the `wg(8)` configuration file turned into one, so a file and the socket configure the
//! device through one path. The file format itself (model, parser, renderer) is the shared
//! contract `slice_api::wireguard::config`, which the worker and the lab write with.
//!
//! Pure: no I/O.

use std::net::SocketAddr;

use ipnet::IpNet;
pub use slice_api::wireguard::config::{ParseError, parse_cidr, parse_endpoint};
use slice_api::wireguard::{Key, WgConfig, WgInterface, WgPeer};

use crate::uapi::DeviceStatus;

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

impl From<WgConfig> for DeviceUpdate {
    /// A whole file replaces the whole device configuration (`replace_peers`, and
    /// `replace_allowed_ips` on each peer), as `wg setconf` does.
    fn from(config: WgConfig) -> Self {
        DeviceUpdate {
            private_key: config.interface.private_key,
            listen_port: config.interface.listen_port,
            fwmark: config.interface.fwmark,
            replace_peers: true,
            peers: config
                .peers
                .into_iter()
                .map(|p| PeerUpdate {
                    public_key: p.public_key,
                    remove: false,
                    update_only: false,
                    preshared_key: p.preshared_key,
                    endpoint: p.endpoint,
                    persistent_keepalive: p.persistent_keepalive,
                    replace_allowed_ips: true,
                    allowed_ips: p.allowed_ips,
                })
                .collect(),
        }
    }
}

/// Parses a `wg(8)` configuration ([`WgConfig::parse`]) into the change that replaces the whole
/// device configuration.
///
/// # Errors
/// On the first malformed line, naming it (see [`WgConfig::parse`]).
pub fn parse(text: &str) -> Result<DeviceUpdate, ParseError> {
    WgConfig::parse(text).map(DeviceUpdate::from)
}

/// What `wg showconf` prints for a device: the running configuration as a [`WgConfig`]
/// (listen port always, keepalive only when on; no FwMark, which the gateway does not use).
#[must_use]
pub fn showconf(status: &DeviceStatus) -> WgConfig {
    WgConfig {
        interface: WgInterface { private_key: status.private_key, listen_port: Some(status.listen_port), fwmark: None },
        peers: status
            .peers
            .iter()
            .map(|p| WgPeer {
                comment: None,
                public_key: p.public_key,
                preshared_key: p.preshared_key,
                allowed_ips: p.allowed_ips.clone(),
                endpoint: p.endpoint,
                persistent_keepalive: (p.persistent_keepalive != 0).then_some(p.persistent_keepalive),
            })
            .collect(),
    }
}

/// Renders a device's configuration in the `wg showconf` format (keys base64).
#[must_use]
pub fn render(status: &DeviceStatus) -> String {
    showconf(status).render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::PeerStatus;

    const A: &str = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    const B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    /// A file replaces the whole device: every peer not in it goes, and each peer's AllowedIPs
    /// replace the old ones; nothing in it removes or only updates a peer.
    #[test]
    fn a_file_replaces_the_whole_configuration() {
        let text = format!(
            "[Interface]\nPrivateKey = {A}\nListenPort = 51820\nFwMark = 0x10\n\n# c1\n[Peer]\nPublicKey = {B}\n\
             AllowedIPs = 10.0.0.0/8\nEndpoint = 198.18.0.1:1\nPersistentKeepalive = off\n"
        );
        let u = parse(&text).unwrap();
        assert!(u.replace_peers);
        assert_eq!(u.private_key, Some(Key::from_base64(A).unwrap()));
        assert_eq!((u.listen_port, u.fwmark), (Some(51820), Some(0x10)));
        let p = &u.peers[0];
        assert!(p.replace_allowed_ips && !p.remove && !p.update_only);
        assert_eq!(p.public_key, Key::from_base64(B).unwrap());
        assert_eq!(p.allowed_ips, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(p.endpoint, Some("198.18.0.1:1".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(0));
        assert_eq!(parse("").unwrap(), DeviceUpdate { replace_peers: true, ..DeviceUpdate::default() });
    }

    /// The gateway's errors are the shared parser's, with the line.
    #[test]
    fn errors_name_the_line() {
        let e =
            parse(&format!("[Interface]\nListenPort = 1\n\n[Peer]\nPublicKey = {B}\nEndpoint = gw:1\n")).unwrap_err();
        assert_eq!(e.line, 6);
        assert!(e.to_string().starts_with("line 6: Endpoint: "), "{e}");
    }

    /// What `wg showconf` prints parses back to the running configuration.
    #[test]
    fn showconf_parses_back() {
        let status = DeviceStatus {
            private_key: Some(Key::from_base64(A).unwrap()),
            listen_port: 4500,
            fwmark: 0,
            peers: vec![
                PeerStatus {
                    public_key: Key::from_base64(B).unwrap(),
                    preshared_key: Some(Key([5; 32])),
                    endpoint: Some("[fd00::1]:51820".parse().unwrap()),
                    persistent_keepalive: 25,
                    allowed_ips: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()],
                    rx_bytes: 7,
                    ..PeerStatus::default()
                },
                PeerStatus { public_key: Key([6; 32]), ..PeerStatus::default() },
            ],
        };
        let text = render(&status);
        assert!(text.starts_with(&format!("[Interface]\nPrivateKey = {A}\nListenPort = 4500\n\n[Peer]\n")), "{text}");
        assert_eq!(text.matches("PersistentKeepalive").count(), 1, "{text}");
        let u = parse(&text).unwrap();
        assert_eq!(u.listen_port, Some(4500));
        assert_eq!(u.peers.len(), 2);
        for (p, s) in u.peers.iter().zip(&status.peers) {
            assert_eq!((p.public_key, p.preshared_key, p.endpoint), (s.public_key, s.preshared_key, s.endpoint));
            assert_eq!(p.allowed_ips, s.allowed_ips);
            assert_eq!(p.persistent_keepalive.unwrap_or(0), s.persistent_keepalive);
        }
    }
}
