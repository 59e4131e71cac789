//! The listening side: UDP through hickory-server's `Server` and TCP through our own loop, both
//! answering with [`Handler`].
//!
//! TCP is ours because hickory-server's listener accepts without limit (one task per
//! connection, kept as long as the client keeps sending within the timeout): here at most
//! `tcp_max_connections` connections are served at once, a connection beyond that is closed at
//! once (the client retries; a resolver falls back to another server), and a connection that
//! sends nothing for `tcp_idle_timeout` — or trickles a message slower than that — is closed.
//! Memory per connection is one message (at most 64 KiB, the DNS length prefix's limit).
//!
//! Malformed packets: hickory-server drops a UDP datagram whose header does not parse and
//! answers FORMERR when only the rest is bad; the TCP loop does the same and closes the
//! connection when even the header is missing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::handler::{Handler, SharedSnapshot};

/// How the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// UDP and TCP on the same address and port (port 0: any free port, the same for both).
    pub listen: SocketAddr,
    /// TCP connections served at once.
    pub tcp_max_connections: usize,
    /// A TCP connection that is silent this long is closed.
    pub tcp_idle_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 53)),
            tcp_max_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {protocol} {address}: {source}")]
    Bind { protocol: &'static str, address: SocketAddr, source: std::io::Error },
    #[error("the UDP server stopped: {0}")]
    Udp(#[from] NetError),
}

/// A bound server (UDP and TCP), not yet serving.
pub struct DnsServer {
    udp: Server<Handler>,
    tcp: JoinHandle<()>,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `options.listen` and starts answering from `snapshot`.
    ///
    /// # Errors
    /// A socket that cannot be bound (address in use, no permission).
    pub async fn bind(options: &Options, snapshot: SharedSnapshot) -> Result<Self, Error> {
        let handler = Handler::new(snapshot);
        let bind_error = |address| move |source| Error::Bind { protocol: "UDP", address, source };
        let first = reuse_port_udp(options.listen).map_err(bind_error(options.listen))?;
        let local_addr = first.local_addr().map_err(bind_error(options.listen))?;
        // One UDP socket per CPU on the same port (SO_REUSEPORT): the kernel spreads clients
        // over them by their addresses, and each socket's receive loop runs on its own task.
        let mut udp_sockets = vec![first];
        for _ in 1..udp_socket_count() {
            udp_sockets.push(reuse_port_udp(local_addr).map_err(bind_error(local_addr))?);
        }
        let tcp_listener = TcpListener::bind(local_addr).await.map_err(|source| Error::Bind {
            protocol: "TCP",
            address: local_addr,
            source,
        })?;
        let mut udp = Server::new(handler.clone());
        for socket in udp_sockets {
            udp.register_socket(socket);
        }
        let limits = Arc::new(Semaphore::new(options.tcp_max_connections));
        let tcp = tokio::spawn(serve_tcp(tcp_listener, handler, limits, options.tcp_idle_timeout));
        Ok(Self { udp, tcp, local_addr })
    }

    /// The address both sockets listen on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes.
    ///
    /// # Errors
    /// The UDP socket failed.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let result = tokio::select! {
            () = shutdown => self.udp.shutdown_gracefully().await,
            result = self.udp.block_until_done() => result,
        };
        self.tcp.abort();
        Ok(result?)
    }
}

/// How many UDP sockets serve one address: one per CPU the process may run on, at most 8.
fn udp_socket_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).clamp(1, 8)
}

/// A non-blocking UDP socket bound to `addr` with `SO_REUSEPORT` (and `IPV6_V6ONLY` off for
/// an IPv6 wildcard, as `std` binds it).
fn reuse_port_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

async fn serve_tcp(listener: TcpListener, handler: Handler, limits: Arc<Semaphore>, idle: Duration) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and the like: wait a little instead of spinning on the error.
                tracing::warn!(%error, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "TCP connection closed: the connection limit is reached");
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(reason) = serve_connection(stream, peer, &handler, idle).await {
                tracing::debug!(%peer, reason, "TCP connection closed");
            }
            drop(permit);
        });
    }
}

/// Answers the messages of one connection in order until it closes, idles or misbehaves.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: &Handler,
    idle: Duration,
) -> Result<(), &'static str> {
    loop {
        let mut length = [0_u8; 2];
        match timeout(idle, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Ok(()),
            Err(_) => return Err("idle"),
        }
        let mut message = vec![0_u8; usize::from(u16::from_be_bytes(length))];
        match timeout(idle, stream.read_exact(&mut message)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err("closed within a message"),
            Err(_) => return Err("a message slower than the idle timeout"),
        }
        let reply = match Request::from_bytes(message.clone(), peer, Protocol::Tcp) {
            Ok(request) if request.metadata.message_type == MessageType::Response => continue,
            Ok(request) => {
                let out = TcpReply::default();
                handler.handle_request::<_, TokioTime>(&request, out.clone()).await;
                out.take().ok_or("no reply encoded")?
            }
            Err(_) => form_error(&message).ok_or("not a DNS message")?,
        };
        let Ok(length) = u16::try_from(reply.len()) else { return Err("reply over 64 KiB") };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&reply);
        match timeout(idle, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return Err("reply not written"),
        }
    }
}

/// FORMERR for a message whose header parses but whose body does not (none for less than a
/// header, or for a response).
fn form_error(message: &[u8]) -> Option<Vec<u8>> {
    let header = message.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let mut reply = vec![0_u8; 12];
    reply[..2].copy_from_slice(&header[..2]);
    // QR, the request's opcode and RD; RCODE 1.
    reply[2] = 0x80 | (header[2] & 0x79);
    reply[3] = 1;
    Some(reply)
}

/// Keeps the encoded reply for the TCP loop to frame and write.
#[derive(Clone, Default)]
struct TcpReply(Arc<Mutex<Option<Vec<u8>>>>);

impl TcpReply {
    fn take(&self) -> Option<Vec<u8>> {
        self.0.lock().ok()?.take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for TcpReply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        let info = response.destructive_emit(&mut encoder)?;
        let length = encoder.offset();
        bytes.truncate(length);
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(bytes);
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_error_echoes_the_id_and_opcode_and_skips_what_is_not_a_query() {
        let query = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
        assert_eq!(form_error(&query), Some(vec![0xab, 0xcd, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(form_error(&query[..11]), None);
        let mut response = query;
        response[2] |= 0x80;
        assert_eq!(form_error(&response), None);
    }
}
