//! Cryptokey routing: the AllowedIPs table.
//!
//! An outgoing packet goes to the peer whose AllowedIPs hold the longest prefix matching its
//! destination; an incoming packet is accepted only if its source maps back to the peer it came
//! from. One hash map per prefix length, probed from the longest length present down: the cost is
//! the number of distinct lengths (a handful in practice), not the number of peers.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Prefix → value, with longest-prefix match. Prefixes are stored truncated (host bits cleared),
/// as `wg` does.
#[derive(Debug, Clone)]
pub struct AllowedIps<V> {
    v4: Family<V>,
    v6: Family<V>,
}

#[derive(Debug, Clone)]
struct Family<V> {
    /// `by_len[len]`: network address bits (as u128, masked) → value.
    by_len: Vec<HashMap<u128, V>>,
    /// Lengths with at least one entry, longest first.
    lens: Vec<u8>,
    bits: u8,
}

impl<V> Family<V> {
    fn new(bits: u8) -> Self {
        Self { by_len: (0..=bits).map(|_| HashMap::new()).collect(), lens: Vec::new(), bits }
    }

    fn mask(&self, addr: u128, len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            let width = u32::from(self.bits);
            let full = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
            addr & (full << (width - u32::from(len))) & full
        }
    }

    fn refresh_lens(&mut self) {
        self.lens = (0..=self.bits).rev().filter(|&l| !self.by_len[usize::from(l)].is_empty()).collect();
    }

    fn insert(&mut self, addr: u128, len: u8, value: V) -> Option<V> {
        let key = self.mask(addr, len);
        let old = self.by_len[usize::from(len)].insert(key, value);
        self.refresh_lens();
        old
    }

    fn remove(&mut self, addr: u128, len: u8) -> Option<V> {
        let key = self.mask(addr, len);
        let old = self.by_len[usize::from(len)].remove(&key);
        self.refresh_lens();
        old
    }

    fn get_mut(&mut self, addr: u128, len: u8) -> Option<&mut V> {
        let key = self.mask(addr, len);
        self.by_len[usize::from(len)].get_mut(&key)
    }

    fn lookup(&self, addr: u128) -> Option<&V> {
        self.lens.iter().find_map(|&len| self.by_len[usize::from(len)].get(&self.mask(addr, len)))
    }

    fn filter_map<W>(&self, f: &mut impl FnMut(&V) -> Option<W>) -> Family<W> {
        let mut out = Family {
            by_len: self.by_len.iter().map(|m| m.iter().filter_map(|(k, v)| Some((*k, f(v)?))).collect()).collect(),
            lens: Vec::new(),
            bits: self.bits,
        };
        out.refresh_lens();
        out
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl<V> Default for AllowedIps<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> AllowedIps<V> {
    #[must_use]
    pub fn new() -> Self {
        Self { v4: Family::new(32), v6: Family::new(128) }
    }

    fn family_mut(&mut self, net: &IpNet) -> &mut Family<V> {
        match net {
            IpNet::V4(_) => &mut self.v4,
            IpNet::V6(_) => &mut self.v6,
        }
    }

    /// Maps `net` to `value`, returning the value it replaces (a prefix belongs to one peer: the
    /// last one to claim it wins, as in `wg`).
    pub fn insert(&mut self, net: IpNet, value: V) -> Option<V> {
        let (addr, len) = (bits(net.addr()), net.prefix_len());
        self.family_mut(&net).insert(addr, len, value)
    }

    /// Removes exactly `net` (not covered or covering prefixes).
    pub fn remove(&mut self, net: IpNet) -> Option<V> {
        let (addr, len) = (bits(net.addr()), net.prefix_len());
        self.family_mut(&net).remove(addr, len)
    }

    /// Removes every prefix whose value satisfies `pred`.
    pub fn retain(&mut self, mut pred: impl FnMut(&V) -> bool) {
        for fam in [&mut self.v4, &mut self.v6] {
            for map in &mut fam.by_len {
                map.retain(|_, v| pred(v));
            }
            fam.refresh_lens();
        }
    }

    /// Like [`Self::retain`], with the value mutable (a peer group loses one member).
    pub fn retain_mut(&mut self, mut pred: impl FnMut(&mut V) -> bool) {
        for fam in [&mut self.v4, &mut self.v6] {
            for map in &mut fam.by_len {
                map.retain(|_, v| pred(v));
            }
            fam.refresh_lens();
        }
    }

    /// The value of exactly `net`, mutable.
    pub fn get_mut(&mut self, net: IpNet) -> Option<&mut V> {
        let (addr, len) = (bits(net.addr()), net.prefix_len());
        self.family_mut(&net).get_mut(addr, len)
    }

    /// The same prefixes with every value replaced by `f(value)`, without those for which it
    /// is `None` (the device turns the peer table's keys into its live peers this way).
    #[must_use]
    pub fn filter_map<W>(&self, mut f: impl FnMut(&V) -> Option<W>) -> AllowedIps<W> {
        AllowedIps { v4: self.v4.filter_map(&mut f), v6: self.v6.filter_map(&mut f) }
    }

    /// Longest-prefix match.
    #[must_use]
    pub fn lookup(&self, addr: IpAddr) -> Option<&V> {
        match addr {
            IpAddr::V4(_) => self.v4.lookup(bits(addr)),
            IpAddr::V6(_) => self.v6.lookup(bits(addr)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 'a');
        t.insert(net("10.1.0.0/16"), 'b');
        t.insert(net("10.1.2.3/32"), 'c');
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(&'a'));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(&'b'));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&'c'));
        assert_eq!(t.lookup(ip("11.0.0.1")), None);
        assert_eq!(t.lookup(ip("fd00::1")), None);
    }

    #[test]
    fn host_bits_are_ignored_and_default_route_matches_all() {
        let mut t = AllowedIps::new();
        t.insert(net("10.1.2.3/16"), 1);
        assert_eq!(t.lookup(ip("10.1.200.1")), Some(&1));
        t.insert(net("0.0.0.0/0"), 2);
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&2));
        assert_eq!(t.remove(net("10.1.0.0/16")), Some(1));
        assert_eq!(t.lookup(ip("10.1.200.1")), Some(&2));
    }

    #[test]
    fn ipv6_and_reassignment() {
        let mut t = AllowedIps::new();
        t.insert(net("fd00::/64"), 'a');
        t.insert(net("fd00::1/128"), 'b');
        t.insert(net("::/0"), 'z');
        assert_eq!(t.lookup(ip("fd00::1")), Some(&'b'));
        assert_eq!(t.lookup(ip("fd00::2")), Some(&'a'));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(&'z'));
        // A prefix claimed again moves to the new owner.
        assert_eq!(t.insert(net("fd00::/64"), 'c'), Some('a'));
        assert_eq!(t.lookup(ip("fd00::2")), Some(&'c'));
        t.retain(|v| *v != 'c');
        assert_eq!(t.lookup(ip("fd00::2")), Some(&'z'));
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
    }

    #[test]
    fn filter_map_keeps_the_longest_match_among_what_it_keeps() {
        let mut t = AllowedIps::new();
        t.insert(net("10.0.0.0/8"), 1);
        t.insert(net("10.1.0.0/16"), 2);
        t.insert(net("10.1.2.0/24"), 4);
        t.insert(net("fd00::/64"), 3);
        let m = t.filter_map(|v| (*v != 4).then_some(v * 10));
        assert_eq!(m.lookup(ip("10.9.9.9")), Some(&10));
        assert_eq!(m.lookup(ip("10.1.9.9")), Some(&20));
        assert_eq!(m.lookup(ip("10.1.2.9")), Some(&20), "the /24 is gone, the /16 covers it");
        assert_eq!(m.lookup(ip("fd00::5")), Some(&30));
        assert_eq!(m.lookup(ip("11.0.0.1")), None);
    }
}
