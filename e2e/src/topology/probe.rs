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

/// A TCP server of the test's own in a pod: it answers every connection with `tag` and closes
/// it, until dropped.
#[derive(Debug)]
pub struct Responder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<usize>>>,
}

impl Responder {
    /// Listens on `0.0.0.0:port` in `pod`.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub fn start(pod: &Pod, port: u16, tag: &str) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (flag, tag) = (stop.clone(), tag.to_owned());
        let thread = in_netns(&pod.netns_path, move || -> std::io::Result<usize> {
            let listener = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            listener.set_nonblocking(true)?;
            let _ = tx.send(Ok(()));
            let mut served = 0;
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false)?;
                        let _ = conn.write_all(tag.as_bytes());
                        served += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(served)
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(Self { stop, thread: Some(thread) }),
            Ok(Err(e)) => Err(std::io::Error::other(format!("{}: bind port {port}: {e}", pod.lab_name()))),
            Err(_) => Err(std::io::Error::other(format!("{}: the listener did not start", pod.lab_name()))),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes `count` TCP connections from `client` to `to`, one after the other, and counts the
/// tags [`Responder`]s answered with (a connection that fails counts under its error).
pub fn connect_count(
    client: &Pod,
    to: std::net::SocketAddr,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    in_netns(&client.netns_path, move || {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..count {
            let tag = TcpStream::connect_timeout(&to, Duration::from_secs(10)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            });
            *seen.entry(tag.unwrap_or_else(|e| format!("error: {}", e.kind()))).or_insert(0) += 1;
        }
        seen
    })
    .join()
    .unwrap_or_default()
}
