//! The device's configuration as data: the interface key, port and fwmark, the peer table and
//! the AllowedIPs (cryptokey routing), and [`PeerState::apply`], which turns a change
//! ([`DeviceUpdate`], a UAPI `set` or a wg(8) file) into the new state and the [`Effects`] the
//! device must carry out: a socket to bind, peers whose sessions start or end, endpoints to set,
//! keepalives to send at once, routes into TUN, warnings to log.
//!
//! Sans-IO: no socket, no TUN, no `Tunn`, no clock. The device ([`crate::device`]) owns the
//! live objects (one `Tunn` per peer, the socket), carries out the effects and publishes what
//! the packet path reads as an immutable snapshot.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;

use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use slice_api::wireguard::Key;

use crate::allowed_ips::AllowedIps;
use crate::config::DeviceUpdate;

/// Settings of a peer that shape its `Tunn` (changing them rebuilds it: boringtun has no setter
/// for the keepalive or the preshared key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TunnSettings {
    pub preshared_key: Option<Key>,
    pub persistent_keepalive: u16,
}

/// One peer's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// 24-bit index; boringtun puts it in the top bits of every session index (`index << 8`), so
    /// `receiver_idx >> 8` of an incoming message names the peer. A new index is a new peer
    /// (fresh sessions), even under a key that was there before.
    pub index: u32,
    pub settings: TunnSettings,
    /// This peer's prefixes, in the order they were added (for `get`).
    pub allowed_ips: Vec<IpNet>,
}

/// The whole configuration of the device.
#[derive(Debug, Clone)]
pub struct PeerState {
    private_key: Option<Key>,
    /// The public key of `private_key`.
    public_key: Option<Key>,
    listen_port: u16,
    fwmark: u32,
    peers: BTreeMap<Key, PeerConfig>,
    /// Indices in use (by `peers`).
    indices: HashSet<u32>,
    /// Prefix → the peers that hold it: one, as in wg(8); several only with `multipath` (a
    /// peer group, in the order they took it).
    routes: AllowedIps<Vec<Key>>,
    next_index: u32,
    /// A prefix given to a second peer joins it to a group instead of moving (`--multipath`).
    multipath: bool,
}

/// A new UDP socket the change needs; if it cannot be bound the whole change is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind {
    pub port: u16,
    pub fwmark: u32,
}

/// Something a change did that deserves a warning in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A prefix another peer held was given to this one (as wg(8) does, the later takes it).
    AllowedIpMoved { net: IpNet, from: Key, to: Key },
    /// Prefixes of two peers overlap: the longer prefix wins for the addresses both hold.
    AllowedIpsOverlap { a: IpNet, b: IpNet },
}

/// What the device must do after [`PeerState::apply`], in this order: bind, new identity,
/// end `removed`, start `added`, rebuild `retunn`, set `endpoints`, publish, send `kick`,
/// route `routes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Bind a new socket first (listen port or fwmark changed).
    pub bind: Option<Bind>,
    /// The private key changed (or went): a new identity, and every peer's `Tunn` rebuilt (they
    /// are in `retunn` or `added`).
    pub identity_changed: bool,
    /// Peers that were there before and whose sessions end (gone, or replaced by a new peer
    /// under the same key).
    pub removed: Vec<Key>,
    /// Peers that are new (a fresh index), with their final settings.
    pub added: Vec<Key>,
    /// Peers kept whose `Tunn` is rebuilt (settings or identity changed).
    pub retunn: Vec<Key>,
    /// Endpoints to set on the peers after the change, in order.
    pub endpoints: Vec<(Key, SocketAddr)>,
    /// Peers given a persistent keepalive: one is sent at once, as the kernel's WireGuard does,
    /// so a gateway behind NAT opens its path now rather than an interval later.
    pub kick: Vec<Key>,
    /// Every peer's AllowedIPs after the change, sorted, once each (the routes into TUN).
    pub routes: Vec<IpNet>,
    /// `routes` that were not there before.
    pub routes_added: Vec<IpNet>,
    /// Prefixes that were routed before and are not any more.
    pub routes_removed: Vec<IpNet>,
    pub warnings: Vec<Warning>,
}

/// The X25519 public key of a private key.
fn public_of(private: &Key) -> Key {
    Key(PublicKey::from(&StaticSecret::from(private.0)).to_bytes())
}

impl PeerState {
    /// No key, no peers, bound to `listen_port`; peer indices are allocated from `seed` on (any
    /// value: it only makes indices differ between runs).
    #[must_use]
    pub fn new(listen_port: u16, seed: u32) -> Self {
        Self {
            private_key: None,
            public_key: None,
            listen_port,
            fwmark: 0,
            peers: BTreeMap::new(),
            indices: HashSet::new(),
            routes: AllowedIps::new(),
            next_index: seed & 0x00ff_ffff,
            multipath: false,
        }
    }

    /// Peer groups on or off (see [`crate::multipath`]); set before the first change: it does
    /// not regroup prefixes already given.
    pub fn set_multipath(&mut self, on: bool) {
        self.multipath = on;
    }

    #[must_use]
    pub fn multipath(&self) -> bool {
        self.multipath
    }

    #[must_use]
    pub fn private_key(&self) -> Option<Key> {
        self.private_key
    }

    #[must_use]
    pub fn public_key(&self) -> Option<Key> {
        self.public_key
    }

    #[must_use]
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Records the port a [`Bind`] got (the kernel picks one for port 0).
    pub fn set_listen_port(&mut self, port: u16) {
        self.listen_port = port;
    }

    #[must_use]
    pub fn fwmark(&self) -> u32 {
        self.fwmark
    }

    #[must_use]
    pub fn peer(&self, key: &Key) -> Option<&PeerConfig> {
        self.peers.get(key)
    }

    /// Every peer, in the order they were created (by index).
    #[must_use]
    pub fn peers(&self) -> Vec<(Key, &PeerConfig)> {
        let mut v: Vec<(Key, &PeerConfig)> = self.peers.iter().map(|(k, c)| (*k, c)).collect();
        v.sort_by_key(|(_, c)| c.index);
        v
    }

    /// Prefix → the peer (or, with multipath, the peers) holding it (longest-prefix match).
    #[must_use]
    pub fn routes(&self) -> &AllowedIps<Vec<Key>> {
        &self.routes
    }

    /// Every peer's AllowedIPs, sorted, once each.
    #[must_use]
    pub fn all_allowed_ips(&self) -> Vec<IpNet> {
        let set: BTreeSet<IpNet> = self.peers.values().flat_map(|c| c.allowed_ips.iter().copied()).collect();
        set.into_iter().collect()
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.indices.contains(&self.next_index) {
                return self.next_index;
            }
        }
    }

    fn remove_peer(&mut self, key: &Key, fx: &mut Effects) {
        if let Some(peer) = self.peers.remove(key) {
            self.indices.remove(&peer.index);
            self.drop_routes_of(key);
            // What was pending for the peer object that ends is moot.
            fx.endpoints.retain(|(k, _)| k != key);
            fx.kick.retain(|k| k != key);
        }
    }

    /// Takes `key` out of every prefix's holders; a prefix nobody holds any more goes.
    fn drop_routes_of(&mut self, key: &Key) {
        self.routes.retain_mut(|holders| {
            holders.retain(|k| k != key);
            !holders.is_empty()
        });
    }

    /// Gives `net` to `key`: in wg(8)'s way it moves from its previous holder (returned); with
    /// multipath `key` joins its holders.
    fn give(&mut self, net: IpNet, key: Key) -> Option<Key> {
        if self.multipath {
            match self.routes.get_mut(net) {
                Some(holders) if !holders.contains(&key) => holders.push(key),
                Some(_) => {}
                None => {
                    self.routes.insert(net, vec![key]);
                }
            }
            return None;
        }
        let prev = self.routes.insert(net, vec![key])?;
        prev.into_iter().find(|k| *k != key)
    }

    /// Applies a `set` (or a configuration file) as wg(8) does, changing only what differs so
    /// untouched peers keep their sessions, and says what the device must do.
    ///
    /// When [`Effects::bind`] is set and binding fails, the device must keep the state it had
    /// (apply to a clone, commit after the bind).
    pub fn apply(&mut self, update: &DeviceUpdate) -> Effects {
        let before: BTreeMap<Key, PeerConfig> = self.peers.clone();
        let routes_before = self.all_allowed_ips();
        let mut fx = Effects::default();

        let fwmark = update.fwmark.unwrap_or(self.fwmark);
        if update.listen_port.is_some_and(|p| p != self.listen_port) || fwmark != self.fwmark {
            fx.bind = Some(Bind { port: update.listen_port.unwrap_or(self.listen_port), fwmark });
            self.fwmark = fwmark;
        }

        if let Some(key) = update.private_key {
            let changed = self.private_key != Some(key) && !(key.is_zero() && self.private_key.is_none());
            if changed {
                self.private_key = (!key.is_zero()).then_some(key);
                self.public_key = self.private_key.as_ref().map(public_of);
                fx.identity_changed = true;
                // A peer with our own public key is meaningless (wg drops it too).
                if let Some(own) = self.public_key {
                    self.remove_peer(&own, &mut fx);
                }
            }
        }

        if update.replace_peers {
            let keep: Vec<Key> = update.peers.iter().filter(|p| !p.remove).map(|p| p.public_key).collect();
            let gone: Vec<Key> = self.peers.keys().filter(|k| !keep.contains(k)).copied().collect();
            for key in gone {
                self.remove_peer(&key, &mut fx);
            }
        }

        for pu in &update.peers {
            let key = pu.public_key;
            if pu.remove {
                self.remove_peer(&key, &mut fx);
                continue;
            }
            if Some(key) == self.public_key {
                continue;
            }
            if !self.peers.contains_key(&key) {
                if pu.update_only {
                    continue;
                }
                let index = self.alloc_index();
                self.indices.insert(index);
                self.peers
                    .insert(key, PeerConfig { index, settings: TunnSettings::default(), allowed_ips: Vec::new() });
            }
            if let Some(ep) = pu.endpoint {
                fx.endpoints.push((key, ep));
            }
            let replace = update.replace_peers;
            let Some(peer) = self.peers.get_mut(&key) else { continue };
            // `wg setconf` (replace_peers) states the whole peer: what it omits is off.
            let mut settings = if replace { TunnSettings::default() } else { peer.settings };
            if let Some(psk) = pu.preshared_key {
                settings.preshared_key = (!psk.is_zero()).then_some(psk);
            }
            if let Some(ka) = pu.persistent_keepalive {
                settings.persistent_keepalive = ka;
            }
            peer.settings = settings;
            if pu.replace_allowed_ips {
                peer.allowed_ips.clear();
                self.drop_routes_of(&key);
            }
            for net in &pu.allowed_ips {
                if let Some(prev) = self.give(*net, key) {
                    fx.warnings.push(Warning::AllowedIpMoved { net: *net, from: prev, to: key });
                    if let Some(p) = self.peers.get_mut(&prev) {
                        p.allowed_ips.retain(|n| n != net);
                    }
                }
                if let Some(mine) = self.peers.get_mut(&key)
                    && !mine.allowed_ips.contains(net)
                {
                    mine.allowed_ips.push(*net);
                }
            }
            if pu.persistent_keepalive.is_some_and(|k| k > 0) {
                fx.kick.push(key);
            }
        }

        // Which peer objects end, start, or get a new `Tunn`.
        for (key, old) in &before {
            if self.peers.get(key).is_none_or(|now| now.index != old.index) {
                fx.removed.push(*key);
            }
        }
        for (key, now) in &self.peers {
            match before.get(key) {
                Some(old) if old.index == now.index => {
                    if fx.identity_changed || old.settings != now.settings {
                        fx.retunn.push(*key);
                    }
                }
                _ => fx.added.push(*key),
            }
        }

        let by_peer: Vec<(Key, Vec<IpNet>)> =
            self.peers().into_iter().map(|(k, c)| (k, c.allowed_ips.clone())).collect();
        for (a, b) in overlapping_allowed_ips(&by_peer) {
            if self.multipath && a == b {
                // A peer group, not a mistake.
                continue;
            }
            fx.warnings.push(Warning::AllowedIpsOverlap { a, b });
        }
        fx.routes = self.all_allowed_ips();
        fx.routes_added = fx.routes.iter().filter(|n| routes_before.binary_search(n).is_err()).copied().collect();
        fx.routes_removed = routes_before.iter().filter(|n| fx.routes.binary_search(n).is_err()).copied().collect();
        fx
    }
}

/// Pairs of prefixes held by different peers that overlap (one contains the other), each pair
/// once: what a configuration that routes the same addresses to two peers looks like.
#[must_use]
pub fn overlapping_allowed_ips(by_peer: &[(Key, Vec<IpNet>)]) -> Vec<(IpNet, IpNet)> {
    let mut out = Vec::new();
    for (i, (_, mine)) in by_peer.iter().enumerate() {
        for (_, theirs) in &by_peer[i + 1..] {
            for a in mine {
                for b in theirs {
                    if a.contains(&b.network()) || b.contains(&a.network()) {
                        out.push((*a, *b));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerUpdate;

    fn key(b: u8) -> Key {
        Key([b; 32])
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn peer(k: u8, nets: &[&str]) -> PeerUpdate {
        PeerUpdate {
            public_key: key(k),
            replace_allowed_ips: true,
            allowed_ips: nets.iter().map(|n| net(n)).collect(),
            ..PeerUpdate::default()
        }
    }
    /// A wg(8) file: the whole device.
    fn file(private: u8, peers: Vec<PeerUpdate>) -> DeviceUpdate {
        DeviceUpdate { private_key: Some(key(private)), replace_peers: true, peers, ..DeviceUpdate::default() }
    }

    #[test]
    fn with_multipath_one_prefix_on_several_peers_is_a_group_without_warnings() {
        let mut s = PeerState::new(4000, 7);
        s.set_multipath(true);
        let fx =
            s.apply(&file(9, vec![peer(1, &["10.1.0.0/16"]), peer(2, &["10.1.0.0/16"]), peer(3, &["10.2.0.0/16"])]));
        assert!(fx.warnings.is_empty(), "{:?}", fx.warnings);
        assert_eq!(s.routes().lookup("10.1.2.3".parse().unwrap()), Some(&vec![key(1), key(2)]));
        assert_eq!(s.peer(&key(1)).unwrap().allowed_ips, [net("10.1.0.0/16")]);
        assert_eq!(s.peer(&key(2)).unwrap().allowed_ips, [net("10.1.0.0/16")]);
        assert_eq!(fx.routes, [net("10.1.0.0/16"), net("10.2.0.0/16")]);
        // A member leaves: the group shrinks, the route stays.
        let fx = s.apply(&file(9, vec![peer(2, &["10.1.0.0/16"]), peer(3, &["10.2.0.0/16"])]));
        assert_eq!(fx.removed, [key(1)]);
        assert_eq!(s.routes().lookup("10.1.2.3".parse().unwrap()), Some(&vec![key(2)]));
        assert!(fx.routes_removed.is_empty());
        // The last member leaves: the route goes.
        let fx = s.apply(&file(9, vec![peer(3, &["10.2.0.0/16"])]));
        assert_eq!(s.routes().lookup("10.1.2.3".parse().unwrap()), None);
        assert_eq!(fx.routes_removed, [net("10.1.0.0/16")]);
        // Overlapping but different prefixes are still reported.
        let fx = s.apply(&file(9, vec![peer(3, &["10.2.0.0/16"]), peer(4, &["10.2.1.0/24"])]));
        assert_eq!(fx.warnings, [Warning::AllowedIpsOverlap { a: net("10.2.0.0/16"), b: net("10.2.1.0/24") }]);
    }

    #[test]
    fn a_first_file_adds_its_peers_with_their_routes_endpoints_and_keepalive_kicks() {
        let mut s = PeerState::new(4000, 7);
        let mut a = peer(1, &["10.1.0.0/16"]);
        a.endpoint = Some(ep("198.18.0.1:51820"));
        a.persistent_keepalive = Some(25);
        let fx = s.apply(&file(9, vec![a, peer(2, &["10.2.0.0/16", "fd00:2::/64"])]));
        assert!(fx.identity_changed);
        assert_eq!(fx.bind, None, "same port, same fwmark");
        assert_eq!(fx.added, [key(1), key(2)]);
        assert!(fx.removed.is_empty() && fx.retunn.is_empty());
        assert_eq!(fx.endpoints, [(key(1), ep("198.18.0.1:51820"))]);
        assert_eq!(fx.kick, [key(1)]);
        assert_eq!(fx.routes, [net("10.1.0.0/16"), net("10.2.0.0/16"), net("fd00:2::/64")]);
        assert_eq!(fx.routes_added, fx.routes);
        assert!(fx.routes_removed.is_empty() && fx.warnings.is_empty());
        assert_eq!(s.public_key(), Some(public_of(&key(9))));
        let (i1, i2) = (s.peer(&key(1)).unwrap().index, s.peer(&key(2)).unwrap().index);
        assert_ne!(i1, i2);
        assert!(i1 <= 0x00ff_ffff && i2 <= 0x00ff_ffff);
        assert_eq!(s.peer(&key(1)).unwrap().settings.persistent_keepalive, 25);
        assert_eq!(s.routes().lookup("10.2.3.4".parse().unwrap()), Some(&vec![key(2)]));
        assert_eq!(s.peers().iter().map(|(k, _)| *k).collect::<Vec<_>>(), [key(1), key(2)], "creation order");
    }

    #[test]
    fn the_same_file_again_changes_nothing_so_sessions_stay() {
        let mut s = PeerState::new(4000, 1);
        let f = file(9, vec![peer(1, &["10.1.0.0/16"]), peer(2, &["10.2.0.0/16"])]);
        s.apply(&f);
        let before = s.peers().into_iter().map(|(k, c)| (k, c.clone())).collect::<Vec<_>>();
        let fx = s.apply(&f);
        assert!(!fx.identity_changed);
        assert!(fx.added.is_empty() && fx.removed.is_empty() && fx.retunn.is_empty(), "{fx:?}");
        assert!(fx.routes_added.is_empty() && fx.routes_removed.is_empty());
        assert_eq!(fx.routes.len(), 2);
        assert_eq!(s.peers().into_iter().map(|(k, c)| (k, c.clone())).collect::<Vec<_>>(), before);
    }

    #[test]
    fn a_file_without_a_peer_removes_it_and_its_routes_a_set_does_not() {
        let mut s = PeerState::new(4000, 1);
        s.apply(&file(9, vec![peer(1, &["10.1.0.0/16"]), peer(2, &["10.2.0.0/16"])]));
        // `wg set` of one peer leaves the other alone.
        let set = DeviceUpdate { peers: vec![peer(1, &["10.1.0.0/16"])], ..DeviceUpdate::default() };
        let fx = s.apply(&set);
        assert!(fx.removed.is_empty() && fx.added.is_empty());
        let fx = s.apply(&file(9, vec![peer(1, &["10.1.0.0/16"])]));
        assert_eq!(fx.removed, [key(2)]);
        assert_eq!(fx.routes_removed, [net("10.2.0.0/16")]);
        assert!(s.peer(&key(2)).is_none());
        assert_eq!(s.routes().lookup("10.2.0.1".parse().unwrap()), None);
        // An explicit remove, and an update_only of an unknown peer creates nothing.
        let fx = s.apply(&DeviceUpdate {
            peers: vec![
                PeerUpdate { public_key: key(1), remove: true, ..PeerUpdate::default() },
                PeerUpdate { update_only: true, ..peer(3, &["10.3.0.0/16"]) },
            ],
            ..DeviceUpdate::default()
        });
        assert_eq!(fx.removed, [key(1)]);
        assert!(fx.added.is_empty() && fx.routes.is_empty());
        assert!(s.peers().is_empty());
    }

    #[test]
    fn a_prefix_given_to_a_second_peer_moves_with_a_warning_and_overlaps_are_reported() {
        let mut s = PeerState::new(4000, 1);
        s.apply(&file(9, vec![peer(1, &["10.1.0.0/16", "10.9.0.0/16"])]));
        let set = DeviceUpdate {
            peers: vec![PeerUpdate { replace_allowed_ips: false, ..peer(2, &["10.9.0.0/16", "10.1.4.0/24"]) }],
            ..DeviceUpdate::default()
        };
        let fx = s.apply(&set);
        assert_eq!(
            fx.warnings,
            [
                Warning::AllowedIpMoved { net: net("10.9.0.0/16"), from: key(1), to: key(2) },
                Warning::AllowedIpsOverlap { a: net("10.1.0.0/16"), b: net("10.1.4.0/24") },
            ]
        );
        assert_eq!(s.peer(&key(1)).unwrap().allowed_ips, [net("10.1.0.0/16")]);
        assert_eq!(s.peer(&key(2)).unwrap().allowed_ips, [net("10.9.0.0/16"), net("10.1.4.0/24")]);
        assert_eq!(s.routes().lookup("10.9.1.1".parse().unwrap()), Some(&vec![key(2)]));
        assert_eq!(s.routes().lookup("10.1.4.1".parse().unwrap()), Some(&vec![key(2)]), "longest prefix");
        assert_eq!(s.routes().lookup("10.1.5.1".parse().unwrap()), Some(&vec![key(1)]));
        assert_eq!(fx.routes_added, [net("10.1.4.0/24")]);
        assert!(fx.routes_removed.is_empty(), "10.9.0.0/16 is still routed, by the other peer");
    }

    #[test]
    fn settings_rebuild_only_the_changed_peer_and_setconf_turns_omitted_settings_off() {
        let mut s = PeerState::new(4000, 1);
        let mut a = peer(1, &["10.1.0.0/16"]);
        a.preshared_key = Some(key(7));
        a.persistent_keepalive = Some(25);
        s.apply(&file(9, vec![a.clone(), peer(2, &["10.2.0.0/16"])]));
        // A `set` naming only the keepalive keeps the preshared key.
        let set = DeviceUpdate {
            peers: vec![PeerUpdate { public_key: key(1), persistent_keepalive: Some(0), ..PeerUpdate::default() }],
            ..DeviceUpdate::default()
        };
        let fx = s.apply(&set);
        assert_eq!(fx.retunn, [key(1)]);
        assert!(fx.kick.is_empty(), "keepalive turned off sends nothing");
        assert_eq!(
            s.peer(&key(1)).unwrap().settings,
            TunnSettings { preshared_key: Some(key(7)), persistent_keepalive: 0 }
        );
        assert_eq!(s.peer(&key(1)).unwrap().allowed_ips, [net("10.1.0.0/16")], "a set without allowed_ips keeps them");
        // A file that omits them turns both off; a zero key removes the preshared key too.
        let fx = s.apply(&file(9, vec![peer(1, &["10.1.0.0/16"]), peer(2, &["10.2.0.0/16"])]));
        assert_eq!(fx.retunn, [key(1)]);
        assert_eq!(s.peer(&key(1)).unwrap().settings, TunnSettings::default());
        let fx = s.apply(&DeviceUpdate {
            peers: vec![PeerUpdate { public_key: key(2), preshared_key: Some(Key([0; 32])), ..PeerUpdate::default() }],
            ..DeviceUpdate::default()
        });
        assert!(fx.retunn.is_empty(), "already without a preshared key");
    }

    #[test]
    fn a_new_private_key_rebuilds_every_peer_and_drops_a_peer_with_our_own_key() {
        let mut s = PeerState::new(4000, 1);
        let own = public_of(&key(8));
        let mut p = peer(0, &["10.8.0.0/16"]);
        p.public_key = own;
        s.apply(&file(9, vec![peer(1, &["10.1.0.0/16"]), p.clone()]));
        assert!(s.peer(&own).is_some(), "not our key yet");
        let fx = s.apply(&file(8, vec![peer(1, &["10.1.0.0/16"]), p]));
        assert!(fx.identity_changed);
        assert_eq!(fx.removed, [own]);
        assert_eq!(fx.retunn, [key(1)]);
        assert!(fx.added.is_empty(), "our own key is skipped, not re-added");
        assert_eq!(fx.routes, [net("10.1.0.0/16")]);
        // Removing the key; a zero key when there is none changes nothing.
        let fx = s.apply(&DeviceUpdate { private_key: Some(Key([0; 32])), ..DeviceUpdate::default() });
        assert!(fx.identity_changed);
        assert_eq!((s.private_key(), s.public_key()), (None, None));
        let fx = s.apply(&DeviceUpdate { private_key: Some(Key([0; 32])), ..DeviceUpdate::default() });
        assert!(!fx.identity_changed && fx.retunn.is_empty());
    }

    #[test]
    fn a_new_port_or_fwmark_asks_for_a_bind() {
        let mut s = PeerState::new(4000, 1);
        let fx = s.apply(&DeviceUpdate { listen_port: Some(4000), ..DeviceUpdate::default() });
        assert_eq!(fx.bind, None);
        let fx = s.apply(&DeviceUpdate { listen_port: Some(51820), ..DeviceUpdate::default() });
        assert_eq!(fx.bind, Some(Bind { port: 51820, fwmark: 0 }));
        s.set_listen_port(51820);
        let fx = s.apply(&DeviceUpdate { fwmark: Some(0x10), ..DeviceUpdate::default() });
        assert_eq!(fx.bind, Some(Bind { port: 51820, fwmark: 0x10 }));
        assert_eq!(s.fwmark(), 0x10);
        let fx = s.apply(&DeviceUpdate { fwmark: Some(0x10), listen_port: Some(51820), ..DeviceUpdate::default() });
        assert_eq!(fx.bind, None);
    }

    #[test]
    fn removed_and_added_again_in_one_change_is_a_new_peer_without_the_old_pending_endpoint() {
        let mut s = PeerState::new(4000, 1);
        s.apply(&file(9, vec![peer(1, &["10.1.0.0/16"])]));
        let old = s.peer(&key(1)).unwrap().index;
        let mut with_ep = PeerUpdate { replace_allowed_ips: false, ..peer(1, &[]) };
        with_ep.endpoint = Some(ep("198.18.0.1:1"));
        with_ep.persistent_keepalive = Some(5);
        let fx = s.apply(&DeviceUpdate {
            peers: vec![
                with_ep,
                PeerUpdate { public_key: key(1), remove: true, ..PeerUpdate::default() },
                peer(1, &["10.1.0.0/16"]),
            ],
            ..DeviceUpdate::default()
        });
        assert_eq!((fx.removed.as_slice(), fx.added.as_slice()), ([key(1)].as_slice(), [key(1)].as_slice()));
        assert_ne!(s.peer(&key(1)).unwrap().index, old);
        assert!(fx.endpoints.is_empty() && fx.kick.is_empty(), "they were for the peer that ended: {fx:?}");
        assert!(fx.routes_added.is_empty() && fx.routes_removed.is_empty());
    }

    #[test]
    fn indices_wrap_at_24_bits() {
        let mut s = PeerState::new(4000, 0x00ff_fffe);
        s.apply(&file(9, vec![peer(1, &[]), peer(2, &[]), peer(3, &[])]));
        let idx: Vec<u32> = s.peers().iter().map(|(_, c)| c.index).collect();
        assert_eq!(idx, [0, 1, 0x00ff_ffff]);
    }

    #[test]
    fn overlapping_allowed_ips_of_different_peers_are_found() {
        let peers = vec![
            (key(1), vec![net("10.80.0.0/20"), net("fd00::/64")]),
            (key(2), vec![net("10.80.16.0/20")]),
            (key(3), vec![net("10.80.1.0/24"), net("10.80.17.0/24")]),
        ];
        assert_eq!(
            overlapping_allowed_ips(&peers),
            [(net("10.80.0.0/20"), net("10.80.1.0/24")), (net("10.80.16.0/20"), net("10.80.17.0/24"))]
        );
        // The planner's carving (disjoint cluster prefixes) has none; one peer's own nets never count.
        let disjoint =
            vec![(key(1), vec![net("10.80.0.0/20"), net("10.80.0.0/24")]), (key(2), vec![net("10.80.16.0/20")])];
        assert!(overlapping_allowed_ips(&disjoint).is_empty());
    }
}
