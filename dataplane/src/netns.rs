//! Network namespaces: open by path, create and delete named ones (as `ip netns add/del` do),
//! run a closure inside one on a dedicated thread, set per-namespace sysctls.
//!
//! `setns` only ever happens on a thread spawned for that purpose, which ends with the closure:
//! the caller's thread (and any tokio worker) never changes namespace.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use crate::{Error, Result};

/// An open network namespace (a file descriptor on its nsfs inode).
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: Option<PathBuf>,
}

fn io_err(op: impl Into<String>, source: io::Error) -> Error {
    Error::Io { op: op.into(), source }
}

fn errno_err(op: impl Into<String>, errno: Errno) -> Error {
    io_err(op, io::Error::from_raw_os_error(errno as i32))
}

/// True when `fd` is an nsfs inode (an open namespace), not a plain file.
fn is_nsfs(fd: BorrowedFd<'_>) -> bool {
    fstatfs(fd).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/run/netns/slice-blue`, `/var/run/netns/cni-…`).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] when there is no such file, `Io` when it is not a namespace.
    pub fn open(path: &Path) -> Result<Self> {
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("network namespace {} does not exist", path.display())));
            }
            Err(e) => {
                return Err(io_err(format!("opening network namespace {}", path.display()), e));
            }
        };
        let fd = OwnedFd::from(file);
        if !is_nsfs(fd.as_fd()) {
            return Err(io_err(
                format!("opening network namespace {}", path.display()),
                io::Error::new(io::ErrorKind::InvalidInput, "not a namespace (no nsfs bind mount on this file)"),
            ));
        }
        Ok(Self { fd, path: Some(path.to_path_buf()) })
    }

    /// The namespace of the calling thread.
    ///
    /// # Errors
    /// When `/proc/thread-self/ns/net` cannot be opened.
    pub fn current() -> Result<Self> {
        let path = Path::new("/proc/thread-self/ns/net");
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_err("opening /proc/thread-self/ns/net", e))?;
        Ok(Self { fd: OwnedFd::from(file), path: None })
    }

    /// Creates a named namespace at `path`, as `ip netns add` does (the directory is made a
    /// shared mount point so the bind mount propagates), or opens it if it already exists.
    /// Returns the namespace and whether it was created.
    ///
    /// # Errors
    /// When the directory, file, unshare or bind mount fails; a half-made file is removed.
    pub fn ensure_named(path: &Path) -> Result<(Self, bool)> {
        match Self::open(path) {
            Ok(ns) => return Ok((ns, false)),
            Err(Error::NotFound(_)) => {}
            // A file without a namespace mounted on it: left over from a crash between the
            // create and the bind mount. Finish the job below.
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::InvalidInput => {}
            Err(e) => return Err(e),
        }
        let dir = path.parent().ok_or_else(|| {
            io_err(
                format!("creating network namespace {}", path.display()),
                io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory"),
            )
        })?;
        fs::create_dir_all(dir).map_err(|e| io_err(format!("creating directory {}", dir.display()), e))?;
        make_shared_mount_point(dir)?;

        let created_file =
            match OpenOptions::new().write(true).create_new(true).mode(0o0).custom_flags(libc::O_CLOEXEC).open(path) {
                Ok(_) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Someone else created it meanwhile (or a stale, unmounted file): use it if it is
                    // a namespace by now, otherwise mount onto it.
                    if let Ok(ns) = Self::open(path) {
                        return Ok((ns, false));
                    }
                    false
                }
                Err(e) => {
                    return Err(io_err(format!("creating network namespace file {}", path.display()), e));
                }
            };

        let target = path.to_path_buf();
        let mounted = std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| errno_err("unshare(CLONE_NEWNET)", e))?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    Some("none"),
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| errno_err(format!("bind-mounting the new network namespace onto {}", target.display()), e))
            })
            .join()
        });
        let mounted = match mounted {
            Ok(r) => r,
            Err(_) => Err(Error::Other {
                op: format!("creating network namespace {}", path.display()),
                message: "namespace thread panicked".into(),
            }),
        };
        if let Err(e) = mounted {
            if created_file {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        let ns = Self::open(path)?;
        Ok((ns, true))
    }

    /// Deletes a named namespace (unmount and unlink). `Ok(false)` when there was none.
    ///
    /// # Errors
    /// When unmount or unlink fails for another reason than absence.
    pub fn delete_named(path: &Path) -> Result<bool> {
        if fs::symlink_metadata(path).is_err() {
            return Ok(false);
        }
        match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a half-made file); remove it anyway.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(errno_err(format!("unmounting network namespace {}", path.display()), e));
            }
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(format!("removing network namespace file {}", path.display()), e)),
        }
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
        let fd = self.fd.as_fd();
        let joined = std::thread::scope(|s| {
            s.spawn(move || -> Result<T> {
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| errno_err(format!("entering {}", self.describe()), e))?;
                Ok(f())
            })
            .join()
        });
        match joined {
            Ok(r) => r,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(Error::Other {
                    op: format!("running in {}", self.describe()),
                    message: format!("thread panicked: {message}"),
                })
            }
        }
    }

    /// Writes a sysctl of this namespace, e.g. `set_sysctl("net/ipv4/ip_forward", "1")`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        // /proc/sys/net belongs to the network namespace of the task that opens it, so the
        // file is opened from a thread inside the namespace.
        let file = Path::new("/proc/sys").join(key.trim_start_matches('/'));
        self.run(|| fs::write(&file, value))?
            .map_err(|e| io_err(format!("setting sysctl {key}={value} in {}", self.describe()), e))
    }

    /// Reads a sysctl of this namespace (trimmed), e.g. `sysctl("net/ipv4/ip_forward")`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let file = Path::new("/proc/sys").join(key.trim_start_matches('/'));
        self.run(|| fs::read_to_string(&file))?
            .map(|s| s.trim().to_string())
            .map_err(|e| io_err(format!("reading sysctl {key} in {}", self.describe()), e))
    }

    /// The path it was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Words for messages: "namespace /run/netns/x" or "the namespace of fd N".
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("namespace {}", p.display()),
            None => "an unnamed namespace".to_string(),
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Makes `dir` a shared mount point, as iproute2 does for `/run/netns`: try `--make-shared`;
/// when `dir` is not a mount point yet (EINVAL), bind-mount it onto itself first.
fn make_shared_mount_point(dir: &Path) -> Result<()> {
    let make_shared =
        || nix::mount::mount(Some("none"), dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match make_shared() {
        Ok(()) => return Ok(()),
        Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(errno_err(format!("making {} a shared mount", dir.display()), e));
        }
    }
    nix::mount::mount(Some(dir), dir, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| errno_err(format!("bind-mounting {} onto itself", dir.display()), e))?;
    make_shared().map_err(|e| errno_err(format!("making {} a shared mount", dir.display()), e))
}
