//! Address management from the node prefix. The choice is pure ([`choose`]); the store keeps
//! one file per allocated address under `<ipamDir>/<slice>/`, named by the address and holding
//! the key (container id, interface name) and the network name, all under one `flock`.
//!
//! Crash safety: a file appears by rename of a fully written temp file, so a plugin killed at
//! any point leaves either no allocation or a complete one that DEL and GC find by its key.
//! Temp files of dead writers are removed by the next writer (it holds the lock, so they are dead).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

use crate::spec::{CniError, Result, code};

const LOCK_FILE: &str = ".lock";
const LAST_FILE: &str = ".last-reserved";
const LAST_FILE_V6: &str = ".last-reserved-v6";
/// How long an operation waits for the store's lock. Holders keep it for a few file operations,
/// so only a stuck holder comes near this; generous, so that a loaded node never trips it.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const TMP_PREFIX: &str = ".tmp-";

/// What identifies an attachment: DEL and GC find ADD's allocation by it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub container_id: String,
    pub ifname: String,
}

/// One allocated address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub slice: String,
    pub ip: IpAddr,
    pub key: Key,
    pub network: String,
}

/// Picks the next free pod address of `prefix` after `last` (round robin, so a released address
/// is not handed out again at once), or `None` when every address is taken.
pub fn choose(prefix: IpNet, taken: &BTreeSet<IpAddr>, last: Option<IpAddr>) -> Option<IpAddr> {
    // Works on offsets into the prefix, never on a list of its addresses: a prefix may be far
    // larger than memory (an IPv6 /64), while at most `taken.len() + 1` candidates are looked at.
    let pods = slice_api::prefix::pod_offsets(prefix);
    let count = pods.end.checked_sub(pods.start).filter(|c| *c > 0)?;
    let offset_of = |ip: IpAddr| -> Option<u128> {
        let offset = slice_api::prefix::offset_in(prefix, ip)?;
        pods.contains(&offset).then_some(offset)
    };
    let start = last.and_then(offset_of).map_or(0, |o| o - pods.start + 1);
    let probes = count.min(u128::try_from(taken.len()).unwrap_or(u128::MAX).saturating_add(1));
    (0..probes)
        .map(|i| slice_api::prefix::address_at(prefix, pods.start + (start + i) % count))
        .find(|c| !taken.contains(c))
}

/// The file store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    lock_wait: std::time::Duration,
}

fn io_error(what: String, e: std::io::Error) -> CniError {
    CniError::new(code::IO, what).with_details(e.to_string())
}

impl Store {
    /// A store rooted at the config's `ipamDir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, lock_wait: LOCK_WAIT }
    }

    /// The same store, waiting at most `wait` for its lock.
    #[must_use]
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Takes the store's lock for the life of the returned guard, waiting at most
    /// [`LOCK_WAIT`]: a holder that never lets go (a stuck process) gets this ADD an error 11
    /// to retry, not a hang that holds the runtime's sandbox creation.
    fn lock(&self) -> Result<Flock<File>> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| io_error(format!("cannot create IPAM dir {}", self.dir.display()), e))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(format!("cannot open IPAM lock {}", path.display()), e))?;
        let deadline = std::time::Instant::now() + self.lock_wait;
        let mut file = file;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(guard) => return Ok(guard),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(CniError::new(
                        code::TRY_AGAIN,
                        format!(
                            "the IPAM store {} stayed locked for {:?} by another process; try again later",
                            self.dir.display(),
                            self.lock_wait
                        ),
                    ));
                }
                Err((_, e)) => return Err(io_error(format!("cannot lock {}", path.display()), e.into())),
            }
        }
    }

    /// Allocates an address of `node_prefix` for `key` on `slice`, or returns the one it already
    /// has. The boolean is true when the address was allocated by this call.
    ///
    /// # Errors
    /// Code 100 when the prefix is exhausted, 5 on I/O failure.
    pub fn allocate(&self, slice: &str, node_prefix: IpNet, key: &Key, network: &str) -> Result<(IpAddr, bool)> {
        let mut got = self.allocate_all(slice, &[node_prefix], key, network)?;
        Ok(got.remove(0))
    }

    /// Allocates one address of each of `node_prefixes` (one per address family) for `key` on
    /// `slice` under one lock, keeping an address the key already has in a prefix: all of them
    /// or none. When one prefix has no free address, the addresses this call took in the others
    /// are released before the error returns. The booleans are true for addresses allocated by
    /// this call, in the order of `node_prefixes`.
    ///
    /// # Errors
    /// Code 100 when a prefix is exhausted, 5 on I/O failure.
    pub fn allocate_all(
        &self,
        slice: &str,
        node_prefixes: &[IpNet],
        key: &Key,
        network: &str,
    ) -> Result<Vec<(IpAddr, bool)>> {
        let _guard = self.lock()?;
        let dir = self.dir.join(slice);
        fs::create_dir_all(&dir).map_err(|e| io_error(format!("cannot create {}", dir.display()), e))?;
        let existing = self.read_slice(slice)?;
        let mut got: Vec<(IpAddr, bool)> = Vec::new();
        for &node_prefix in node_prefixes {
            match allocate_one(&dir, slice, node_prefix, key, network, &existing) {
                Ok(one) => got.push(one),
                Err(e) => {
                    // All or nothing: what this call wrote goes (we hold the lock).
                    for (ip, _) in got.iter().filter(|(_, now)| *now) {
                        let _ = fs::remove_file(dir.join(ip.to_string()));
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    /// Every allocation of `key`, in any slice.
    ///
    /// # Errors
    /// Code 5 on I/O failure.
    pub fn find(&self, key: &Key) -> Result<Vec<Allocation>> {
        let _guard = self.lock()?;
        Ok(self.read_all()?.into_iter().filter(|a| a.key == *key).collect())
    }

    /// Every allocation in the store.
    ///
    /// # Errors
    /// Code 5 on I/O failure.
    pub fn list(&self) -> Result<Vec<Allocation>> {
        let _guard = self.lock()?;
        self.read_all()
    }

    /// Releases the allocations for which `release` returns true and returns them.
    ///
    /// # Errors
    /// Code 5 on I/O failure.
    pub fn release_where(&self, release: impl Fn(&Allocation) -> bool) -> Result<Vec<Allocation>> {
        let _guard = self.lock()?;
        let mut released = Vec::new();
        for alloc in self.read_all()? {
            if release(&alloc) {
                let path = self.dir.join(&alloc.slice).join(alloc.ip.to_string());
                match fs::remove_file(&path) {
                    Ok(()) => released.push(alloc),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(format!("cannot release {}", path.display()), e)),
                }
            }
        }
        Ok(released)
    }

    /// Releases every allocation of `key`; releasing nothing is not an error.
    ///
    /// # Errors
    /// Code 5 on I/O failure.
    pub fn release(&self, key: &Key) -> Result<Vec<Allocation>> {
        self.release_where(|a| a.key == *key)
    }

    fn read_all(&self) -> Result<Vec<Allocation>> {
        let mut all = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
            Err(e) => return Err(io_error(format!("cannot read IPAM dir {}", self.dir.display()), e)),
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir())
                && let Some(slice) = entry.file_name().to_str()
            {
                all.extend(self.read_slice(slice)?);
            }
        }
        Ok(all)
    }

    fn read_slice(&self, slice: &str) -> Result<Vec<Allocation>> {
        let dir = self.dir.join(slice);
        let mut allocations = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(allocations),
            Err(e) => return Err(io_error(format!("cannot read {}", dir.display()), e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                // A writer died between write and rename; we hold the lock, so it is gone.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Ok(ip) = name.parse::<IpAddr>() else { continue };
            let body = fs::read_to_string(entry.path())
                .map_err(|e| io_error(format!("cannot read {}", entry.path().display()), e))?;
            let mut lines = body.lines();
            let (Some(container_id), Some(ifname)) = (lines.next(), lines.next()) else { continue };
            allocations.push(Allocation {
                slice: slice.to_string(),
                ip,
                key: Key { container_id: container_id.into(), ifname: ifname.into() },
                network: lines.next().unwrap_or_default().to_string(),
            });
        }
        Ok(allocations)
    }
}

/// The round-robin marker of a family: IPv4 keeps the name it always had.
fn last_file(node_prefix: IpNet) -> &'static str {
    if node_prefix.addr().is_ipv4() { LAST_FILE } else { LAST_FILE_V6 }
}

/// One family's address for `key` (the lock held, `existing` read under it).
fn allocate_one(
    dir: &Path,
    slice: &str,
    node_prefix: IpNet,
    key: &Key,
    network: &str,
    existing: &[Allocation],
) -> Result<(IpAddr, bool)> {
    if let Some(mine) = existing.iter().find(|a| a.key == *key && node_prefix.contains(&a.ip)) {
        return Ok((mine.ip, false));
    }
    let taken: BTreeSet<IpAddr> = existing.iter().map(|a| a.ip).filter(|ip| node_prefix.contains(ip)).collect();
    let last_path = dir.join(last_file(node_prefix));
    let last = fs::read_to_string(&last_path).ok().and_then(|s| s.trim().parse().ok());
    let ip = choose(node_prefix, &taken, last).ok_or_else(|| {
        CniError::new(
            code::PREFIX_EXHAUSTED,
            format!(
                "no free address for slice {slice}: all {} pod addresses of node prefix {node_prefix} are allocated",
                taken.len()
            ),
        )
    })?;
    let body = format!("{}\n{}\n{network}\n", key.container_id, key.ifname);
    write_by_rename(dir, &ip.to_string(), body.as_bytes())?;
    // Best effort: losing it only weakens round robin.
    let _ = write_by_rename(dir, last_file(node_prefix), ip.to_string().as_bytes());
    Ok((ip, true))
}

fn write_by_rename(dir: &Path, name: &str, body: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
    let dst = dir.join(name);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(body)?;
        fs::rename(&tmp, &dst)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(format!("cannot write {}", dst.display()), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        Key { container_id: id.into(), ifname: "slice0".into() }
    }

    /// Issue 20: the IPAM lock had no timeout, so a stuck holder hung every ADD on the node.
    #[test]
    fn a_lock_held_too_long_is_try_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned()).with_lock_wait(std::time::Duration::from_millis(200));
        let held = store.lock().unwrap();
        let p: IpNet = "10.80.0.0/29".parse().unwrap();
        let e = store.allocate("blue", p, &key("a"), "lab").unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN, "{e}");
        assert!(e.msg.contains("stayed locked"), "{e}");
        drop(held);
        assert!(store.allocate("blue", p, &key("a"), "lab").is_ok());
    }

    /// Issue 20: a /64 (or /96) node prefix made `choose` collect every address ("capacity
    /// overflow", or an allocation of tens of GB). Now it looks at a handful.
    #[test]
    fn huge_prefixes_are_never_enumerated() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for prefix in ["fd00:80::/64", "fd00:80::/96", "fd00::/8"] {
            let p: IpNet = prefix.parse().unwrap();
            let first = choose(p, &BTreeSet::new(), None).unwrap();
            assert_eq!(first, slice_api::prefix::address_at(p, 2));
            let taken: BTreeSet<_> = [first].into();
            assert_eq!(choose(p, &taken, None), Some(slice_api::prefix::address_at(p, 3)));
            assert_eq!(choose(p, &taken, Some(first)), Some(slice_api::prefix::address_at(p, 3)));
        }
        // Round robin wraps at the end of a large prefix too.
        let p: IpNet = "fd00:80::/96".parse().unwrap();
        assert_eq!(choose(p, &BTreeSet::new(), Some(ip("fd00:80::ffff:ffff"))), Some(ip("fd00:80::2")));
        // A `last` outside the prefix is ignored.
        assert_eq!(choose(p, &BTreeSet::new(), Some(ip("10.0.0.1"))), Some(ip("fd00:80::2")));
    }

    #[test]
    fn choose_round_robin_and_exhaustion() {
        let p: IpNet = "10.80.0.0/29".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(choose(p, &BTreeSet::new(), None), Some(ip("10.80.0.2")));
        assert_eq!(choose(p, &BTreeSet::new(), Some(ip("10.80.0.3"))), Some(ip("10.80.0.4")));
        assert_eq!(choose(p, &BTreeSet::new(), Some(ip("10.80.0.6"))), Some(ip("10.80.0.2")));
        let taken: BTreeSet<_> = ["10.80.0.2", "10.80.0.3", "10.80.0.4", "10.80.0.5", "10.80.0.6"].map(ip).into();
        assert_eq!(choose(p, &taken, None), None);
    }

    #[test]
    fn allocate_is_idempotent_and_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().into());
        let p: IpNet = "10.80.0.0/29".parse().unwrap();
        let (a, new) = store.allocate("blue", p, &key("a"), "lab").unwrap();
        assert!(new);
        assert_eq!(store.allocate("blue", p, &key("a"), "lab").unwrap(), (a, false));
        for id in ["b", "c", "d", "e"] {
            store.allocate("blue", p, &key(id), "lab").unwrap();
        }
        let e = store.allocate("blue", p, &key("f"), "lab").unwrap_err();
        assert_eq!(e.code, code::PREFIX_EXHAUSTED);
        assert_eq!(store.release(&key("a")).unwrap().len(), 1);
        assert!(store.release(&key("a")).unwrap().is_empty());
        assert_eq!(store.find(&key("b")).unwrap()[0].network, "lab");
        let gone = store.release_where(|a| a.key.container_id != "c").unwrap();
        assert_eq!(gone.len(), 3);
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn dead_writer_temp_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().into());
        fs::create_dir_all(dir.path().join("blue")).unwrap();
        fs::write(dir.path().join("blue").join(".tmp-10.80.0.2"), "half").unwrap();
        let p: IpNet = "10.80.0.0/29".parse().unwrap();
        store.allocate("blue", p, &key("a"), "lab").unwrap();
        assert!(!dir.path().join("blue").join(".tmp-10.80.0.2").exists());
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let p: IpNet = "10.80.0.0/24".parse().unwrap();
        let ips: Vec<IpAddr> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..40)
                .map(|i| {
                    let store = Store::new(dir.path().into());
                    s.spawn(move || store.allocate("blue", p, &key(&format!("c{i}")), "lab").unwrap().0)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let unique: BTreeSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), ips.len());
    }

    #[test]
    fn both_families_or_neither() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().into());
        let v4: IpNet = "10.80.0.0/29".parse().unwrap();
        let v6: IpNet = "fd00:80::/126".parse().unwrap();
        let got = store.allocate_all("blue", &[v4, v6], &key("a"), "lab").unwrap();
        assert_eq!(got, [("10.80.0.2".parse().unwrap(), true), ("fd00:80::2".parse().unwrap(), true)]);
        // Again: the same two, nothing new; each family's round robin on its own.
        assert_eq!(
            store.allocate_all("blue", &[v4, v6], &key("a"), "lab").unwrap()[1],
            ("fd00:80::2".parse().unwrap(), false)
        );
        let b = store.allocate_all("blue", &[v4, v6], &key("b"), "lab").unwrap();
        assert_eq!((b[0].0.to_string(), b[1].0.to_string()), ("10.80.0.3".to_owned(), "fd00:80::3".to_owned()));
        // fd00:80::/126 has two pod addresses (::2, ::3): a and b hold them.
        let before = store.list().unwrap().len();
        // Exhausted in the second family: the first family's fresh address is not kept.
        let v4_big: IpNet = "10.80.0.0/24".parse().unwrap();
        let e = store.allocate_all("blue", &[v4_big, v6], &key("f"), "lab").unwrap_err();
        assert_eq!(e.code, code::PREFIX_EXHAUSTED, "{e}");
        assert!(e.msg.contains("node prefix fd00:80::/126"), "{e}");
        assert_eq!(store.list().unwrap().len(), before, "nothing leaked");
        assert!(store.find(&key("f")).unwrap().is_empty());
        // A key that already had its first family keeps it when the second fails.
        let g_v4 = store.allocate("blue", v4_big, &key("g"), "lab").unwrap().0;
        assert!(store.allocate_all("blue", &[v4_big, v6], &key("g"), "lab").is_err());
        assert_eq!(store.find(&key("g")).unwrap().iter().map(|a| a.ip).collect::<Vec<_>>(), [g_v4]);
        // Release takes both families of a key.
        assert_eq!(store.release(&key("a")).unwrap().len(), 2);
    }
}
