//! The reply rules, on requests parsed from wire bytes as the server parses them.

use std::net::SocketAddr;
use std::str::FromStr;

use hickory_server::proto::op::{Message, Query};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use slice_api::mcs::ServiceImportType;

use super::*;
use crate::model::fixtures::{import, slice};
use crate::records::Settings;

/// A headless service `big` with `n` endpoints in one cluster and `api`, a ClusterSetIP one.
fn snapshot(n: u8) -> Snapshot {
    let endpoints: Vec<(Option<&str>, String, Option<bool>)> =
        (1..=n).map(|i| (None, format!("10.80.0.{i}"), Some(true))).collect();
    let endpoints: Vec<(Option<&str>, &str, Option<bool>)> =
        endpoints.iter().map(|(h, a, r)| (*h, a.as_str(), *r)).collect();
    let slices: Vec<EndpointSlice> = vec![slice("shop", "big", "east", "IPv4", &endpoints)];
    Snapshot::build(
        &[
            import("shop", "big", ServiceImportType::Headless, &[]),
            import("shop", "api", ServiceImportType::ClusterSetIP, &["10.80.255.1"]),
        ],
        &slices,
        &Settings::default(),
    )
}

fn request(name: &str, qtype: RecordType, edns: Option<(u16, u8)>, protocol: Protocol) -> Request {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if let Some((size, version)) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        e.set_version(version);
        m.set_edns(e);
    }
    Request::from_bytes(m.to_vec().unwrap(), SocketAddr::from(([10, 0, 0, 1], 5353)), protocol).unwrap()
}

/// The reply as a client reads it.
fn wire(reply: &Reply<'_>, request: &Request) -> Message {
    let mut bytes = Vec::new();
    let mut encoder = BinEncoder::new(&mut bytes);
    let response = response_builder(request, reply.edns.as_ref()).build(
        reply.metadata(&request.metadata),
        reply.answers.iter(),
        std::iter::empty(),
        reply.soa,
        std::iter::empty(),
    );
    response.destructive_emit(&mut encoder).unwrap();
    Message::from_vec(&bytes).unwrap()
}

#[test]
fn a_small_answer_goes_out_whole_over_udp_without_edns() {
    let s = snapshot(3);
    let r = request("big.shop.svc.clusterset.local.", RecordType::A, None, Protocol::Udp);
    let reply = decide(&s, &r, Protocol::Udp);
    assert!(!reply.truncated && reply.authoritative);
    let m = wire(&reply, &r);
    assert_eq!(m.metadata.id, 4242);
    assert_eq!(m.answers.len(), 3);
    assert!(m.edns.is_none());
}

#[test]
fn over_512_bytes_without_edns_is_truncated_with_no_records() {
    let s = snapshot(60);
    let r = request("big.shop.svc.clusterset.local.", RecordType::A, None, Protocol::Udp);
    let reply = decide(&s, &r, Protocol::Udp);
    assert!(reply.truncated);
    let m = wire(&reply, &r);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty() && m.authorities.is_empty());
    assert_eq!(m.queries.len(), 1, "the question stays");
    // The same question over TCP gets everything.
    let r = request("big.shop.svc.clusterset.local.", RecordType::A, None, Protocol::Tcp);
    let m = wire(&decide(&s, &r, Protocol::Tcp), &r);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
}

#[test]
fn compression_is_counted_before_truncating() {
    // 26 A records of one name: 1,170 bytes with every name in full (45 bytes each), 492 with
    // compression (the first record's name in full, then 16 bytes each). (hickory's encoder
    // writes a name in full before it points it back, so a reply within a name's length of
    // the limit counts as too big: a few more TCP retries, never a partial answer.)
    let s = snapshot(26);
    let r = request("big.shop.svc.clusterset.local.", RecordType::A, None, Protocol::Udp);
    let reply = decide(&s, &r, Protocol::Udp);
    assert!(!reply.truncated, "{} records", reply.answers.len());
    let bytes = encoded_len(&reply, &r, 512).unwrap();
    assert!(bytes <= 512, "{bytes}");
}

#[test]
fn edns_raises_the_limit_to_the_clients_size_and_is_answered_with_opt() {
    let s = snapshot(60);
    let r = request("big.shop.svc.clusterset.local.", RecordType::A, Some((4096, 0)), Protocol::Udp);
    let reply = decide(&s, &r, Protocol::Udp);
    assert!(!reply.truncated);
    let m = wire(&reply, &r);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(4096));
    // A client offering 1232 bytes gets TC for a bigger set, and keeps its OPT.
    let many = snapshot(100);
    let r = request("big.shop.svc.clusterset.local.", RecordType::A, Some((1232, 0)), Protocol::Udp);
    let reply = decide(&many, &r, Protocol::Udp);
    assert!(reply.truncated);
    let m = wire(&reply, &r);
    assert!(m.metadata.truncation && m.answers.is_empty());
    assert_eq!(m.edns.as_ref().map(Edns::max_payload), Some(1232));
}

#[test]
fn the_clients_size_is_capped_and_floored() {
    let s = snapshot(1);
    for (offered, used) in [(65000, MAX_UDP_PAYLOAD), (100, 512)] {
        let r = request("api.shop.svc.clusterset.local.", RecordType::A, Some((offered, 0)), Protocol::Udp);
        assert_eq!(decide(&s, &r, Protocol::Udp).edns.map(|e| e.max_payload()), Some(used));
    }
}

#[test]
fn an_edns_version_above_0_gets_badvers() {
    let s = snapshot(1);
    let r = request("api.shop.svc.clusterset.local.", RecordType::A, Some((1232, 1)), Protocol::Udp);
    let reply = decide(&s, &r, Protocol::Udp);
    assert_eq!(reply.code, ResponseCode::BADVERS);
    let m = wire(&reply, &r);
    // BADVERS and BADSIG share the code 16; the high bits travel in the OPT record.
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert_eq!(m.edns.as_ref().map(Edns::version), Some(0));
}

#[test]
fn nxdomain_nodata_and_refused_reach_the_wire_with_their_soa() {
    let s = snapshot(1);
    let cases = [
        ("nothing.shop.svc.clusterset.local.", RecordType::A, ResponseCode::NXDomain, true, 1),
        ("api.shop.svc.slice.local.", RecordType::TXT, ResponseCode::NoError, true, 1),
        ("svc.clusterset.local.", RecordType::A, ResponseCode::NoError, true, 1),
        ("example.com.", RecordType::A, ResponseCode::Refused, false, 0),
    ];
    for (name, qtype, code, aa, authorities) in cases {
        let r = request(name, qtype, None, Protocol::Udp);
        let m = wire(&decide(&s, &r, Protocol::Udp), &r);
        assert_eq!(m.metadata.response_code, code, "{name}");
        assert_eq!(m.metadata.authoritative, aa, "{name}");
        assert!(m.answers.is_empty(), "{name}");
        assert_eq!(m.authorities.len(), authorities, "{name}");
        if authorities == 1 {
            assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        }
    }
}

#[test]
fn other_opcodes_and_question_counts_are_refused_with_their_codes() {
    let s = snapshot(1);
    let mut m = Message::query();
    m.metadata.op_code = OpCode::Notify;
    m.add_query(Query::query(Name::from_str("clusterset.local.").unwrap(), RecordType::SOA));
    let r = Request::from_bytes(m.to_vec().unwrap(), SocketAddr::from(([10, 0, 0, 1], 53)), Protocol::Udp).unwrap();
    assert_eq!(decide(&s, &r, Protocol::Udp).code, ResponseCode::NotImp);

    let mut m = Message::query();
    m.add_query(Query::query(Name::from_str("clusterset.local.").unwrap(), RecordType::SOA));
    m.add_query(Query::query(Name::from_str("slice.local.").unwrap(), RecordType::SOA));
    let r = Request::from_bytes(m.to_vec().unwrap(), SocketAddr::from(([10, 0, 0, 1], 53)), Protocol::Udp).unwrap();
    assert_eq!(decide(&s, &r, Protocol::Udp).code, ResponseCode::FormErr);

    let m = Message::query();
    let r = Request::from_bytes(m.to_vec().unwrap(), SocketAddr::from(([10, 0, 0, 1], 53)), Protocol::Udp).unwrap();
    assert_eq!(decide(&s, &r, Protocol::Udp).code, ResponseCode::FormErr);
}

#[test]
fn the_question_is_echoed_as_asked() {
    let s = snapshot(1);
    let mut q = Query::query(Name::from_ascii("API.Shop.svc.ClusterSet.local.").unwrap(), RecordType::A);
    q.set_query_class(DNSClass::IN);
    let mut m = Message::query();
    m.add_query(q);
    let r = Request::from_bytes(m.to_vec().unwrap(), SocketAddr::from(([10, 0, 0, 1], 53)), Protocol::Udp).unwrap();
    let reply = wire(&decide(&s, &r, Protocol::Udp), &r);
    assert_eq!(reply.queries[0].name().to_string(), "API.Shop.svc.ClusterSet.local.");
    assert_eq!(reply.answers.len(), 1);
}
