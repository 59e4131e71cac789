//! One DNS request → one reply, from the snapshot current when the request arrives.
//!
//! [`decide`] is pure (request + snapshot → [`Reply`]); [`Handler`] is hickory-server's
//! `RequestHandler` over a snapshot that others swap ([`SharedSnapshot`]), used by the UDP server
//! and by our TCP loop alike.
//!
//! What a reply honours beyond the records:
//! - EDNS (RFC 6891): a request with an OPT record gets one back; its UDP payload size is the
//!   client's, capped at [`MAX_UDP_PAYLOAD`] and never under 512; EDNS versions above 0 get
//!   BADVERS.
//! - Truncation (RFC 1035 §4.2.1, RFC 2181 §9): a UDP reply that does not fit the client's size
//!   (512 bytes without EDNS) goes out with TC set and no records, so the client asks again over
//!   TCP and never caches a partial set. hickory-server 0.26.3 would cut the answer section
//!   itself, mid-set and possibly without the OPT record; deciding here keeps the rule ours.
//! - One question per request (FORMERR otherwise), opcode QUERY only (NOTIMP otherwise).

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder};

use crate::records::Snapshot;

/// The snapshot the server answers from; whoever rebuilds it stores a new one.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// The largest UDP reply we send, whatever the client offers: 4096 bytes is the usual ceiling
/// of resolvers (BIND's and Knot's default `max-udp-size`), and larger datagrams fragment.
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// Bytes of the OPT record we add (root name, type, class, TTL, empty RDATA).
const OPT_SIZE: usize = 11;
/// Bytes of a DNS header.
const HEADER_SIZE: usize = 12;

/// What to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<'a> {
    pub code: ResponseCode,
    pub authoritative: bool,
    /// TC: the reply did not fit the client's UDP size; `answers` and `soa` are then empty.
    pub truncated: bool,
    pub answers: &'a [Record],
    pub soa: Option<&'a Record>,
    /// The reply's OPT record (when the request had one).
    pub edns: Option<Edns>,
}

impl Reply<'_> {
    fn code(code: ResponseCode, edns: Option<Edns>) -> Self {
        Self { code, authoritative: false, truncated: false, answers: &[], soa: None, edns }
    }

    /// The reply's header fields for `request`.
    #[must_use]
    pub fn metadata(&self, request: &Metadata) -> Metadata {
        let mut metadata = Metadata::response_from_request(request);
        metadata.response_code = self.code;
        metadata.authoritative = self.authoritative;
        metadata.truncation = self.truncated;
        metadata
    }
}

/// The reply to `request` received over `protocol`, from `snapshot` (pure).
#[must_use]
pub fn decide<'a>(snapshot: &'a Snapshot, request: &MessageRequest, protocol: Protocol) -> Reply<'a> {
    let edns = request.edns.as_ref().map(|theirs| {
        let mut ours = Edns::new();
        // The size we answer within; a client that offers less than 512 still gets 512
        // (RFC 6891 §6.2.3).
        ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        ours.set_version(0);
        ours
    });
    if request.metadata.op_code != OpCode::Query {
        return Reply::code(ResponseCode::NotImp, edns);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Reply::code(ResponseCode::BADVERS, edns);
    }
    let [query] = request.queries.queries() else {
        return Reply::code(ResponseCode::FormErr, edns);
    };
    let answer = snapshot.lookup(query.name(), query.query_type(), query.query_class());
    let mut reply = Reply {
        code: answer.code,
        authoritative: answer.authoritative,
        truncated: false,
        answers: answer.answers,
        soa: answer.soa,
        edns,
    };
    if protocol == Protocol::Udp {
        let limit = usize::from(reply.edns.as_ref().map_or(512, Edns::max_payload));
        let bound = HEADER_SIZE
            + request.queries.as_bytes().len()
            + answer.wire_bound
            + if reply.edns.is_some() { OPT_SIZE } else { 0 };
        // The bound counts every record's names in full; only when it is over the limit is
        // the exact (compressed) size worth an encoding.
        if bound > limit && encoded_len(&reply, request, limit).is_none() {
            reply.truncated = true;
            reply.answers = &[];
            reply.soa = None;
        }
    }
    reply
}

/// The length of `reply` encoded with name compression, or `None` when it exceeds `limit`.
fn encoded_len(reply: &Reply<'_>, request: &MessageRequest, limit: usize) -> Option<usize> {
    let mut bytes = Vec::with_capacity(limit);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(u16::try_from(limit).unwrap_or(u16::MAX));
    let response = response_builder(request, reply.edns.as_ref()).build(
        reply.metadata(&request.metadata),
        reply.answers.iter(),
        std::iter::empty(),
        reply.soa,
        std::iter::empty(),
    );
    match response.destructive_emit(&mut encoder) {
        // The offset, not the buffer's length: a record rolled back leaves bytes behind it.
        Ok(info) if !info.truncation => Some(encoder.offset()),
        _ => None,
    }
}

fn response_builder<'q>(request: &'q MessageRequest, edns: Option<&'q Edns>) -> MessageResponseBuilder<'q> {
    MessageResponseBuilder::new(&request.queries, edns)
}

/// hickory-server's request handler over the shared snapshot.
#[derive(Clone)]
pub struct Handler {
    snapshot: SharedSnapshot,
}

impl Handler {
    #[must_use]
    pub fn new(snapshot: SharedSnapshot) -> Self {
        Self { snapshot }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // The server drops responses before they get here; our TCP loop does the same.
        debug_assert_eq!(request.metadata.message_type, MessageType::Query);
        // `load_full`: the snapshot stays alive across the await below even if it is swapped.
        let snapshot = self.snapshot.load_full();
        let reply = decide(&snapshot, request, request.protocol());
        let metadata = reply.metadata(&request.metadata);
        let response = response_builder(request, reply.edns.as_ref()).build(
            metadata,
            reply.answers.iter(),
            std::iter::empty(),
            reply.soa,
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "reply not sent");
                let mut failed = metadata;
                failed.response_code = ResponseCode::ServFail;
                hickory_server::proto::op::Header { metadata: failed, counts: Default::default() }.into()
            }
        }
    }
}

#[cfg(test)]
mod tests;
