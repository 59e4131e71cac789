//! Network namespaces: open by path, create and delete named ones (as `ip netns add/del` do),
//! run a closure inside one on a dedicated thread, set per-namespace sysctls.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::Result;

/// An open network namespace (a file descriptor on its nsfs inode).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: Option<PathBuf>,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/run/netns/slice-blue`, `/var/run/netns/cni-…`).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] when there is no such file, `Io` when it is not a namespace.
    pub fn open(path: &Path) -> Result<Self> {
        let _ = path;
        todo!("implement")
    }

    /// The namespace of the calling thread.
    ///
    /// # Errors
    /// When `/proc/thread-self/ns/net` cannot be opened.
    pub fn current() -> Result<Self> {
        todo!("implement")
    }

    /// Creates a named namespace at `path`, as `ip netns add` does (the directory is made a
    /// shared mount point so the bind mount propagates), or opens it if it already exists.
    /// Returns the namespace and whether it was created.
    ///
    /// # Errors
    /// When the directory, file, unshare or bind mount fails; a half-made file is removed.
    pub fn ensure_named(path: &Path) -> Result<(Self, bool)> {
        let _ = path;
        todo!("implement")
    }

    /// Deletes a named namespace (unmount and unlink). `Ok(false)` when there was none.
    ///
    /// # Errors
    /// When unmount or unlink fails for another reason than absence.
    pub fn delete_named(path: &Path) -> Result<bool> {
        let _ = path;
        todo!("implement")
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// The calling thread never changes namespace.
    ///
    /// # Errors
    /// When `setns` fails or the thread panics.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let _ = f;
        todo!("implement")
    }

    /// Writes a sysctl of this namespace, e.g. `set_sysctl("net/ipv4/ip_forward", "1")`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let _ = (key, value);
        todo!("implement")
    }

    /// The path it was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
