//! The UAPI unix socket `/var/run/wireguard/NAME.sock`, which `wg` finds for userspace
//! interfaces. Each connection may carry several `get=1`/`set=1` operations.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::device::Gateway;
use crate::uapi;

/// The directory `wg` looks in (one for all network namespaces).
pub use slice_api::gateway::UAPI_SOCKET_DIR as SOCKET_DIR;

/// The bound socket; its file is removed on drop.
#[derive(Debug)]
pub struct UapiSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl UapiSocket {
    /// Binds `dir/NAME.sock`. A stale socket (nobody answering) is replaced; a live one is an
    /// error, since that interface name is in use by another process.
    ///
    /// # Errors
    /// When the name is in use or the socket cannot be created.
    pub fn bind(dir: &Path, name: &str) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        let path = dir.join(format!("{name}.sock"));
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { listener, path })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections on a background thread, one thread per connection.
    ///
    /// # Errors
    /// When the listener cannot be cloned or the thread cannot start.
    pub fn serve(&self, gw: Arc<Gateway>) -> io::Result<()> {
        let listener = self.listener.try_clone()?;
        std::thread::Builder::new().name("uapi".into()).spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let gw = Arc::clone(&gw);
                let _ = std::thread::Builder::new().name("uapi-conn".into()).spawn(move || {
                    if let Err(err) = handle(&gw, conn) {
                        tracing::debug!(%err, "UAPI connection ended with an error");
                    }
                });
            }
        })?;
        Ok(())
    }
}

impl Drop for UapiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn handle(gw: &Arc<Gateway>, conn: UnixStream) -> io::Result<()> {
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        // The operation's body: lines up to the empty line.
        let mut body = Vec::new();
        loop {
            let mut l = String::new();
            if reader.read_line(&mut l)? == 0 {
                break;
            }
            let l = l.trim_end_matches('\n').to_string();
            if l.is_empty() {
                break;
            }
            body.push(l);
        }
        let reply = match line.trim_end() {
            "get=1" => uapi::format_get(&gw.status()),
            "set=1" => match uapi::parse_set(body.iter().map(String::as_str)).and_then(|u| gw.apply(&u)) {
                Ok(()) => uapi::format_errno(0),
                Err(err) => {
                    tracing::warn!(errno = err.errno, %err, "UAPI set rejected");
                    uapi::format_errno(err.errno)
                }
            },
            other => {
                tracing::debug!(op = other, "unknown UAPI operation");
                uapi::format_errno(libc::EINVAL)
            }
        };
        writer.write_all(reply.as_bytes())?;
    }
}
