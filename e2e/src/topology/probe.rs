//! Probes the tests run from inside pods: a closure on a thread inside a network namespace, and a
//! TCP exchange between two pods.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    tcp_exchange_to(server, port, client, to.into())
}

/// [`tcp_exchange`] to an address of either family (the server listens on that family's
/// wildcard address).
///
/// # Errors
/// As [`tcp_exchange`].
pub fn tcp_exchange_to(
    server: &Pod,
    port: u16,
    client: &Pod,
    to: std::net::SocketAddr,
) -> std::io::Result<(String, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let wildcard: std::net::IpAddr =
        if to.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let listener = in_netns(&server.netns_path, move || -> std::io::Result<String> {
        let listener = TcpListener::bind((wildcard, port))?;
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
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(30))?;
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
    /// Listens on `[::]:port` in `pod` (both families), or `0.0.0.0:port` where IPv6 is off.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub fn start(pod: &Pod, port: u16, tag: &str) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (flag, tag) = (stop.clone(), tag.to_owned());
        let thread = in_netns(&pod.netns_path, move || -> std::io::Result<usize> {
            let bound = TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, port))
                .or_else(|_| TcpListener::bind(("0.0.0.0", port)));
            let listener = match bound {
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

/// A UDP server of the test's own in a pod: it answers every datagram with `tag` and records
/// where each came from, until dropped.
#[derive(Debug)]
pub struct UdpResponder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sources: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
    thread: Option<JoinHandle<std::io::Result<usize>>>,
}

impl UdpResponder {
    /// Listens on `0.0.0.0:port` in `pod` (a reply leaves from the address the pod's route to
    /// the client gives, so a client on the slice sees the pod's slice address).
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub fn start(pod: &Pod, port: u16, tag: &str) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let sources = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (flag, tag, seen) = (stop.clone(), tag.to_owned(), sources.clone());
        let thread = in_netns(&pod.netns_path, move || -> std::io::Result<usize> {
            let socket = match std::net::UdpSocket::bind(("0.0.0.0", port)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            // The stop flag is looked at between reads.
            socket.set_read_timeout(Some(Duration::from_millis(200)))?;
            let _ = tx.send(Ok(()));
            let mut served = 0;
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::SeqCst) {
                match socket.recv_from(&mut buf) {
                    Ok((_, from)) => {
                        seen.lock().expect("sources lock").push(from);
                        let _ = socket.send_to(tag.as_bytes(), from);
                        served += 1;
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(served)
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(Self { stop, sources, thread: Some(thread) }),
            Ok(Err(e)) => Err(std::io::Error::other(format!("{}: bind UDP port {port}: {e}", pod.lab_name()))),
            Err(_) => Err(std::io::Error::other(format!("{}: the UDP listener did not start", pod.lab_name()))),
        }
    }
}

impl UdpResponder {
    /// The source of every datagram received so far, in order.
    ///
    /// # Panics
    /// When the listener thread panicked holding the list.
    pub fn sources(&self) -> Vec<std::net::SocketAddr> {
        self.sources.lock().expect("sources lock").clone()
    }
}

impl Drop for UdpResponder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The transport of a [`probe_many`] target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// What a [`probe_many`] target answered: the responder's tag, `None` when nothing came by the
/// deadline, or the errno of a failure (a refused connection, an unreachable host).
pub type ProbeOutcome = Result<Option<String>, i32>;

/// Source ports of [`probe_many`], never reused within a test process (60,000 of them): a reused
/// (address, port) pair could find the conntrack entry of an earlier allowed probe and pass as
/// an established flow.
static NEXT_SOURCE_PORT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn source_port() -> u16 {
    let n = NEXT_SOURCE_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 60_000;
    2_000 + u16::try_from(n).expect("below 60,000")
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits"),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

enum ProbeState {
    Connecting,
    Reading(Vec<u8>),
    Done(ProbeOutcome),
}

/// Probes every target from `client` at once (non-blocking sockets, each from its own source
/// port, a UDP datagram sent again every half second so one lost datagram is no denial) and
/// returns each one's outcome in order: a TCP target's answer is what it wrote before closing,
/// a UDP target's its first datagram. So a set of probes costs one `deadline`, however many.
///
/// # Panics
/// When a socket cannot be made or bound (no resources), or the namespace cannot be entered.
pub fn probe_many(client: &Pod, targets: &[(SocketAddrV4, Transport)], deadline: Duration) -> Vec<ProbeOutcome> {
    let targets = targets.to_vec();
    in_netns(&client.netns_path, move || probe_here(&targets, deadline)).join().expect("the probe thread")
}

#[allow(clippy::too_many_lines)] // One poll loop over the sockets' states.
fn probe_here(targets: &[(SocketAddrV4, Transport)], deadline: Duration) -> Vec<ProbeOutcome> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).expect("fits");
    let mut fds = Vec::new();
    let mut states = Vec::new();
    for (addr, transport) in targets {
        let kind = if *transport == Transport::Tcp { libc::SOCK_STREAM } else { libc::SOCK_DGRAM };
        let local = sockaddr_in(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, source_port()));
        let to = sockaddr_in(*addr);
        // SAFETY: plain socket calls on a fresh fd with valid sockaddrs of `len` bytes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: errno {}", errno());
            assert_eq!(libc::bind(fd, (&raw const local).cast(), len), 0, "bind: errno {}", errno());
            let r = libc::connect(fd, (&raw const to).cast(), len);
            let state = match transport {
                Transport::Tcp if r == 0 || errno() == libc::EINPROGRESS => ProbeState::Connecting,
                Transport::Tcp => ProbeState::Done(Err(errno())),
                Transport::Udp if r != 0 => ProbeState::Done(Err(errno())),
                Transport::Udp => {
                    libc::send(fd, b"probe".as_ptr().cast(), 5, 0);
                    ProbeState::Reading(Vec::new())
                }
            };
            fds.push(fd);
            states.push(state);
        }
    }
    let start = std::time::Instant::now();
    let mut last_udp_send = std::time::Instant::now();
    loop {
        let pending: Vec<usize> = (0..fds.len()).filter(|i| !matches!(states[*i], ProbeState::Done(_))).collect();
        let elapsed = start.elapsed();
        if pending.is_empty() || elapsed >= deadline {
            break;
        }
        if last_udp_send.elapsed() >= Duration::from_millis(500) {
            for &i in pending.iter().filter(|i| targets[**i].1 == Transport::Udp) {
                // SAFETY: a valid connected fd and buffer.
                unsafe { libc::send(fds[i], b"probe".as_ptr().cast(), 5, 0) };
            }
            last_udp_send = std::time::Instant::now();
        }
        let mut polls: Vec<libc::pollfd> = pending
            .iter()
            .map(|&i| libc::pollfd {
                fd: fds[i],
                events: if matches!(states[i], ProbeState::Connecting) { libc::POLLOUT } else { libc::POLLIN },
                revents: 0,
            })
            .collect();
        let wait = i32::try_from((deadline - elapsed).min(Duration::from_millis(100)).as_millis()).expect("fits");
        let count = libc::nfds_t::try_from(polls.len()).expect("fits");
        // SAFETY: `polls` is a valid array of `count` entries.
        unsafe { libc::poll(polls.as_mut_ptr(), count, wait) };
        for (p, &i) in polls.iter().zip(&pending) {
            if p.revents == 0 {
                continue;
            }
            let fd = fds[i];
            let udp = targets[i].1 == Transport::Udp;
            let next = match &mut states[i] {
                ProbeState::Connecting => {
                    let mut err: libc::c_int = 0;
                    let mut l = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("fits");
                    // SAFETY: valid fd and out-pointers.
                    unsafe {
                        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &raw mut l)
                    };
                    Some(if err == 0 { ProbeState::Reading(Vec::new()) } else { ProbeState::Done(Err(err)) })
                }
                ProbeState::Reading(got) => {
                    let mut b = [0u8; 512];
                    // SAFETY: valid fd and buffer.
                    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), 0) };
                    let text = |v: &[u8]| Ok(Some(String::from_utf8_lossy(v).into_owned()));
                    match usize::try_from(n) {
                        // A datagram is the whole answer.
                        Ok(n) if n > 0 && udp => Some(ProbeState::Done(text(&b[..n]))),
                        Ok(n) if n > 0 => {
                            got.extend_from_slice(&b[..n]);
                            None
                        }
                        // TCP: the responder wrote its tag and closed.
                        Ok(_) => Some(ProbeState::Done(text(got))),
                        Err(_) if errno() == libc::EAGAIN => None,
                        Err(_) => Some(ProbeState::Done(Err(errno()))),
                    }
                }
                ProbeState::Done(_) => None,
            };
            if let Some(next) = next {
                states[i] = next;
            }
        }
    }
    let out = states
        .into_iter()
        .map(|s| match s {
            ProbeState::Done(r) => r,
            ProbeState::Reading(got) if !got.is_empty() => Ok(Some(String::from_utf8_lossy(&got).into_owned())),
            _ => Ok(None),
        })
        .collect();
    for fd in fds {
        // SAFETY: our own fds, closed once.
        unsafe { libc::close(fd) };
    }
    out
}

/// A TCP echo server of the test's own in a pod, counting the connections it accepted, until
/// stopped or dropped.
pub struct EchoServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    #[must_use]
    pub fn start(pod: &Pod, port: u16) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = in_netns(&pod.netns_path, move || {
            let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the echo server");
            listener.set_nonblocking(true).expect("non-blocking");
            tx.send(()).expect("the test waits");
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        conn.set_nonblocking(false).expect("blocking");
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("the echo server listens");
        Self { stop, accepted, thread: Some(thread) }
    }

    /// Stops listening; the connections it accepted.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One TCP connection from a pod carrying 1 KiB round trips back to back until stopped: traffic
/// that must survive a change (30 s read timeout: a busy machine is not a broken connection).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Load {
    #[must_use]
    pub fn start(pod: &Pod, to: SocketAddrV4) -> Self {
        Self::every(pod, to, Duration::ZERO)
    }

    /// The same with a pause of `pause` after each round trip: a connection that must survive
    /// without loading the machine (many of them beside a ping that must lose nothing).
    #[must_use]
    pub fn every(pod: &Pod, to: SocketAddrV4, pause: Duration) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let thread = in_netns(&pod.netns_path, move || {
            let mut conn = match std::net::TcpStream::connect_timeout(&to.into(), Duration::from_secs(30)) {
                Ok(conn) => conn,
                Err(e) => return Some(format!("connect: {e}")),
            };
            // Generous: a busy machine is not a broken connection.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
            let out = [7u8; 1024];
            let mut back = [0u8; 1024];
            while !s.load(Ordering::SeqCst) {
                if let Err(e) = conn.write_all(&out).and_then(|()| conn.read_exact(&mut back)) {
                    return Some(format!("round trip {}: {e}", c.load(Ordering::SeqCst) + 1));
                }
                if back != out {
                    return Some("the echo differs from what was sent".to_owned());
                }
                c.fetch_add(1, Ordering::SeqCst);
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            None
        });
        Self { stop, count, thread: Some(thread) }
    }

    #[must_use]
    pub fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` round trips are done (or the connection failed: `stop` tells).
    ///
    /// # Panics
    /// When `n` round trips are not done within 60 s.
    pub fn wait_for(&self, n: usize, what: &str) {
        let end = Instant::now() + Duration::from_secs(60);
        while self.count() < n && !self.thread.as_ref().is_some_and(std::thread::JoinHandle::is_finished) {
            assert!(Instant::now() < end, "{what}: {} of {n} round trips within 60 s", self.count());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it: the round trips done, and the error that ended it early.
    pub fn stop(mut self) -> (usize, Option<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let error =
            self.thread.take().and_then(|t| t.join().unwrap_or_else(|_| Some("the load thread panicked".into())));
        (self.count(), error)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From a `ping` log (without `-q`) of `count` pings: how many were answered and the longest
/// run of pings without an answer (a leading or trailing run included). At `-i 0.01` the run
/// times 10 ms is the longest gap.
#[must_use]
pub fn ping_outcome(log: &str, count: u32) -> (u32, u32) {
    let mut seqs: Vec<u32> = log
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("icmp_seq=")?.parse().ok()))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut longest = 0;
    let mut last = 0; // icmp_seq starts at 1
    for s in &seqs {
        longest = longest.max(s.saturating_sub(last + 1));
        last = *s;
    }
    longest = longest.max(count.saturating_sub(last));
    (u32::try_from(seqs.len()).unwrap_or(u32::MAX), longest)
}

#[cfg(test)]
mod ping_tests {
    use super::ping_outcome;

    #[test]
    fn ping_outcomes_are_read() {
        let reply = |seq: u32| format!("64 bytes from 10.80.16.3: icmp_seq={seq} ttl=62 time=0.5 ms\n");
        let log: String = std::iter::once("PING 10.80.16.3 56(84) bytes of data.\n".to_owned())
            .chain([1, 2, 7, 8, 2].map(reply))
            .collect();
        assert_eq!(ping_outcome(&log, 8), (4, 4), "3 to 6 lost; a duplicate counts once");
        assert_eq!(ping_outcome(&log, 12), (4, 4), "9 to 12 lost too: as long");
        assert_eq!(ping_outcome(&log, 14), (4, 6), "the trailing run is the longest");
        assert_eq!(ping_outcome("", 5), (0, 5));
    }
}
