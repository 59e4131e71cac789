//! Probes the tests run from inside pods: a closure on a thread inside a network namespace, and a
//! TCP exchange between two pods.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::Pod;

/// Runs `f` on a new thread that entered the network namespace at `netns`.
///
/// # Panics
/// When the namespace cannot be opened (on the caller's thread) or entered (on the new one).
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let file = std::fs::File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A TCP exchange: a listener in `server` on `0.0.0.0:port` answering `<what it read> from
/// <source ip>`, a client in `client` connecting to `to` and sending `hello`. Returns (what the
/// client read, the source address the server saw).
///
/// # Errors
/// When binding, connecting, reading or writing fails (30 s timeouts: generous, so a busy machine is not mistaken for a broken path).
pub fn tcp_exchange(server: &Pod, port: u16, client: &Pod, to: SocketAddrV4) -> std::io::Result<(String, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = in_netns(&server.netns_path, move || -> std::io::Result<String> {
        let listener = TcpListener::bind(("0.0.0.0", port))?;
        tx.send(()).unwrap();
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf)?;
        conn.write_all(format!("{} from {}", String::from_utf8_lossy(&buf[..n]), peer.ip()).as_bytes())?;
        Ok(peer.ip().to_string())
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("listener up");
    let reply = in_netns(&client.netns_path, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(30))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(b"hello")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .unwrap()?;
    Ok((reply, listener.join().unwrap()?))
}
