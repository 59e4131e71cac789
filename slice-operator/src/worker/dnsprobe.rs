//! Whether the cluster's slice-dns answers: at each heartbeat the worker asks the slice-dns
//! Service for the MCS zone's `dns-version` TXT record (which the MCS DNS specification has every
//! implementation serve) and reports what came back in `MemberCluster.status.dns`, so that
//! `slicectl diagnose` on the hub names a slice-dns that does not answer.
//!
//! The query is built and the answer read with hickory-proto, the DNS library slice-dns is
//! built on (one UDP question, the answer's TXT records looked at, nothing cached).

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use slice_api::mcs::{CLUSTERSET_ZONE, DNS_SPEC_VERSION};

/// How long one try may wait for the answer.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Tries before the worker reports no answer (a datagram may be lost).
pub const TRIES: usize = 2;

/// Asks slice-dns at an address: `None` when the lab has no slice-dns to ask (a cluster of the
/// lab without multi-cluster services runs none), else `Ok` when it answered with the record.
pub type DnsSource = Box<dyn Fn(SocketAddr) -> BoxFuture<'static, Option<Result<(), String>>> + Send + Sync>;

/// The [`DnsSource`] that sends the query over UDP.
#[must_use]
pub fn udp_dns() -> DnsSource {
    Box::new(|addr| Box::pin(async move { Some(probe(addr).await) }))
}

/// The name asked: `dns-version.clusterset.local`.
#[must_use]
pub fn version_name() -> String {
    format!("dns-version.{CLUSTERSET_ZONE}")
}

/// A query (recursion not desired) for the TXT record of `name` with `id`.
#[must_use]
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    if let Ok(name) = Name::from_ascii(name) {
        message.add_query(Query::query(name, RecordType::TXT));
    }
    message.to_vec().unwrap_or_default()
}

/// What is wrong with `response` to the query with `id`: `None` when it is an answer holding
/// the version record.
#[must_use]
pub fn answer_problem(id: u16, response: &[u8]) -> Option<String> {
    const RCODES: [&str; 6] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];
    let not_the_answer = || Some("a datagram that is not the answer".to_owned());
    let Ok(message) = Message::from_vec(response) else { return not_the_answer() };
    if message.metadata.id != id || message.metadata.message_type != MessageType::Response {
        return not_the_answer();
    }
    let rcode = message.metadata.response_code.low();
    if rcode != 0 {
        let code = usize::from(rcode);
        return Some(RCODES.get(code).map_or_else(|| format!("response code {code}"), |r| (*r).to_owned()));
    }
    let version = DNS_SPEC_VERSION.as_bytes();
    let has_version = message.answers.iter().any(|record| match &record.data {
        RData::TXT(txt) => txt.txt_data.iter().any(|s| &**s == version),
        _ => false,
    });
    (!has_version).then(|| "an answer without the version record".to_owned())
}

/// Asks `addr` up to [`TRIES`] times, each within [`TIMEOUT`].
///
/// # Errors
/// What came instead of the record, worded for the status.
pub async fn probe(addr: SocketAddr) -> Result<(), String> {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|_| "bind address")?;
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| format!("no socket: {e}"))?;
    socket.connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
    let name = version_name();
    let mut buf = [0u8; 1500];
    for attempt in 0..TRIES {
        let id = u16::try_from(std::process::id() & 0xffff).unwrap_or(0) ^ u16::try_from(attempt).unwrap_or(0);
        socket.send(&query(id, &name)).await.map_err(|e| format!("sending to {addr}: {e}"))?;
        match tokio::time::timeout(TIMEOUT, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => return answer_problem(id, &buf[..n]).map_or(Ok(()), Err),
            // Refused (nothing listens): no use trying again.
            Ok(Err(e)) => return Err(format!("no answer: {e}")),
            Err(_) => {}
        }
    }
    let secs = TIMEOUT.as_secs() * TRIES as u64;
    Err(format!("no answer within {secs} s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_and_the_answers_are_read() {
        let q = query(0x1234, "dns-version.clusterset.local");
        assert_eq!(&q[..4], &[0x12, 0x34, 0, 0]);
        assert_eq!(&q[12..24], b"\x0bdns-version");
        assert_eq!(&q[q.len() - 4..], &[0, 16, 0, 1]);
        // An answer: the query echoed with QR set, one TXT answer holding "1.0.0".
        let mut a = q.clone();
        a[2] = 0x84;
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 0x0c, 0, 16, 0, 1, 0, 0, 0, 5, 0, 6, 5]);
        a.extend_from_slice(DNS_SPEC_VERSION.as_bytes());
        assert_eq!(answer_problem(0x1234, &a), None);
        assert_eq!(answer_problem(0x4321, &a).as_deref(), Some("a datagram that is not the answer"));
        let mut nx = q.clone();
        nx[2] = 0x84;
        nx[3] = 3;
        assert_eq!(answer_problem(0x1234, &nx).as_deref(), Some("NXDOMAIN"));
        let mut empty = q;
        empty[2] = 0x84;
        assert_eq!(answer_problem(0x1234, &empty).as_deref(), Some("an answer without the version record"));
        assert!(answer_problem(0x1234, &[1, 2]).is_some());
    }

    #[tokio::test]
    async fn nothing_listening_is_no_answer() {
        // A port of our own socket, closed again: nothing listens there.
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = probe(port).await.unwrap_err();
        assert!(err.starts_with("no answer"), "{err}");
    }
}
