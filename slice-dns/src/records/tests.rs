//! One test per rule of the module doc.

use std::str::FromStr;

use super::*;
use crate::model::fixtures::{import, slice};

fn snapshot() -> Snapshot {
    let imports = [
        import("shop", "db", ServiceImportType::Headless, &[]),
        import("shop", "api", ServiceImportType::ClusterSetIP, &["10.80.255.1", "fd00::ff"]),
        import("shop", "empty", ServiceImportType::Headless, &[]),
    ];
    let slices = [
        slice(
            "shop",
            "db",
            "east",
            "IPv4",
            &[(Some("db-0"), "10.80.0.5", Some(true)), (Some("db-1"), "10.80.0.6", Some(false))],
        ),
        slice("shop", "db", "west", "IPv4", &[(Some("db-0"), "10.80.16.5", None), (None, "10.80.16.6", Some(true))]),
        slice("shop", "db", "west", "IPv6", &[(Some("db-0"), "fd00::5", None)]),
        slice("shop", "api", "east", "IPv4", &[(Some("a"), "10.80.0.7", Some(true))]),
        slice("shop", "api", "west", "IPv4", &[(None, "10.80.16.8", Some(true))]),
        slice("shop", "empty", "east", "IPv4", &[(Some("x"), "10.80.0.9", Some(false))]),
    ];
    Snapshot::build(&imports, &slices, &Settings { ttl: 7 })
}

fn ask<'a>(s: &'a Snapshot, name: &str, qtype: RecordType) -> Answer<'a> {
    s.lookup(&LowerName::from_str(name).unwrap(), qtype, DNSClass::IN)
}

fn data(answer: &Answer<'_>) -> Vec<String> {
    let mut v: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

#[track_caller]
fn assert_nxdomain(s: &Snapshot, name: &str, zone: &str) {
    let a = ask(s, name, RecordType::A);
    assert_eq!(a.code, ResponseCode::NXDomain, "{name}");
    assert!(a.authoritative && a.answers.is_empty());
    assert_eq!(a.soa.map(|r| r.name.to_string()), Some(zone.to_owned()), "{name}");
}

#[track_caller]
fn assert_nodata(s: &Snapshot, name: &str, qtype: RecordType, zone: &str) {
    let a = ask(s, name, qtype);
    assert!(a.is_nodata(), "{name} {qtype}: {a:?}");
    assert!(a.authoritative);
    assert_eq!(a.soa.map(|r| r.name.to_string()), Some(zone.to_owned()), "{name}");
}

#[test]
fn the_version_record_is_1_0_0_and_only_in_clusterset_local() {
    let s = snapshot();
    let a = ask(&s, "dns-version.clusterset.local.", RecordType::TXT);
    assert_eq!(data(&a), ["1.0.0"]);
    assert_eq!(a.answers[0].ttl, 7);
    assert_nxdomain(&s, "dns-version.slice.local.", "slice.local.");
}

#[test]
fn a_clusterset_ip_service_answers_its_addresses() {
    let s = snapshot();
    assert_eq!(data(&ask(&s, "api.shop.svc.clusterset.local.", RecordType::A)), ["10.80.255.1"]);
    assert_eq!(data(&ask(&s, "api.shop.svc.clusterset.local.", RecordType::AAAA)), ["fd00::ff"]);
    assert_eq!(data(&ask(&s, "api.shop.svc.slice.local.", RecordType::A)), ["10.80.255.1"]);
}

#[test]
fn a_clusterset_ip_service_has_no_per_cluster_name_in_clusterset_local() {
    let s = snapshot();
    assert_nxdomain(&s, "east.api.shop.svc.clusterset.local.", "clusterset.local.");
    assert_nxdomain(&s, "a.east.api.shop.svc.clusterset.local.", "clusterset.local.");
}

#[test]
fn a_headless_service_answers_every_ready_endpoint_of_every_cluster() {
    let s = snapshot();
    let a = ask(&s, "db.shop.svc.clusterset.local.", RecordType::A);
    assert_eq!(data(&a), ["10.80.0.5", "10.80.16.5", "10.80.16.6"]);
    assert!(a.authoritative && a.soa.is_none());
    assert_eq!(data(&ask(&s, "db.shop.svc.clusterset.local.", RecordType::AAAA)), ["fd00::5"]);
    assert_eq!(data(&ask(&s, "db.shop.svc.slice.local.", RecordType::A)).len(), 3);
}

#[test]
fn a_headless_service_without_ready_endpoints_is_nxdomain() {
    let s = snapshot();
    assert_nxdomain(&s, "empty.shop.svc.clusterset.local.", "clusterset.local.");
    assert_nxdomain(&s, "empty.shop.svc.slice.local.", "slice.local.");
}

#[test]
fn each_endpoint_has_its_name_under_its_cluster() {
    let s = snapshot();
    assert_eq!(data(&ask(&s, "db-0.east.db.shop.svc.clusterset.local.", RecordType::A)), ["10.80.0.5"]);
    assert_eq!(data(&ask(&s, "db-0.west.db.shop.svc.clusterset.local.", RecordType::A)), ["10.80.16.5"]);
    assert_eq!(data(&ask(&s, "db-0.west.db.shop.svc.clusterset.local.", RecordType::AAAA)), ["fd00::5"]);
    // No hostname: the dashed address names the endpoint.
    assert_eq!(data(&ask(&s, "10-80-16-6.west.db.shop.svc.clusterset.local.", RecordType::A)), ["10.80.16.6"]);
    assert_eq!(data(&ask(&s, "db-0.east.db.shop.svc.slice.local.", RecordType::A)), ["10.80.0.5"]);
    // The unready one has no name.
    assert_nxdomain(&s, "db-1.east.db.shop.svc.clusterset.local.", "clusterset.local.");
}

#[test]
fn the_cluster_level_name_of_a_headless_service_is_an_empty_non_terminal_in_clusterset_local() {
    let s = snapshot();
    assert_nodata(&s, "east.db.shop.svc.clusterset.local.", RecordType::A, "clusterset.local.");
    assert_nxdomain(&s, "north.db.shop.svc.clusterset.local.", "clusterset.local.");
}

#[test]
fn slice_local_answers_one_clusters_endpoints_by_cluster_name() {
    let s = snapshot();
    assert_eq!(data(&ask(&s, "east.db.shop.svc.slice.local.", RecordType::A)), ["10.80.0.5"]);
    assert_eq!(data(&ask(&s, "west.db.shop.svc.slice.local.", RecordType::A)), ["10.80.16.5", "10.80.16.6"]);
    assert_eq!(data(&ask(&s, "west.db.shop.svc.slice.local.", RecordType::AAAA)), ["fd00::5"]);
    // For a ClusterSetIP service the cluster name gives that cluster's endpoints.
    assert_eq!(data(&ask(&s, "east.api.shop.svc.slice.local.", RecordType::A)), ["10.80.0.7"]);
    assert_eq!(data(&ask(&s, "west.api.shop.svc.slice.local.", RecordType::A)), ["10.80.16.8"]);
}

#[test]
fn srv_of_a_named_port_targets_the_service_or_each_endpoint() {
    let s = snapshot();
    assert_eq!(
        data(&ask(&s, "_web._tcp.api.shop.svc.clusterset.local.", RecordType::SRV)),
        ["0 100 80 api.shop.svc.clusterset.local."]
    );
    assert_eq!(
        data(&ask(&s, "_web._tcp.db.shop.svc.clusterset.local.", RecordType::SRV)),
        [
            "0 33 80 10-80-16-6.west.db.shop.svc.clusterset.local.",
            "0 33 80 db-0.east.db.shop.svc.clusterset.local.",
            "0 33 80 db-0.west.db.shop.svc.clusterset.local.",
        ]
    );
    assert_eq!(
        data(&ask(&s, "_web._tcp.db.shop.svc.slice.local.", RecordType::SRV))[1],
        "0 33 80 db-0.east.db.shop.svc.slice.local."
    );
    // Unnamed ports have no `_<port>._<proto>` name; `_tcp` is an empty non-terminal.
    assert_nxdomain(&s, "_dns._udp.api.shop.svc.clusterset.local.", "clusterset.local.");
    assert_nodata(&s, "_tcp.api.shop.svc.clusterset.local.", RecordType::SRV, "clusterset.local.");
}

#[test]
fn srv_at_the_bare_service_name_lists_every_port() {
    let s = snapshot();
    assert_eq!(
        data(&ask(&s, "api.shop.svc.clusterset.local.", RecordType::SRV)),
        ["0 100 53 api.shop.svc.clusterset.local.", "0 100 80 api.shop.svc.clusterset.local."]
    );
    assert_eq!(data(&ask(&s, "db.shop.svc.clusterset.local.", RecordType::SRV)).len(), 6);
}

#[test]
fn ptr_names_the_service_or_the_endpoint_in_clusterset_local() {
    let s = snapshot();
    assert_eq!(data(&ask(&s, "1.255.80.10.in-addr.arpa.", RecordType::PTR)), ["api.shop.svc.clusterset.local."]);
    assert_eq!(data(&ask(&s, "5.0.80.10.in-addr.arpa.", RecordType::PTR)), ["db-0.east.db.shop.svc.clusterset.local."]);
    let v6 = Name::from(IpAddr::from_str("fd00::5").unwrap()).to_string();
    assert_eq!(data(&ask(&s, &v6, RecordType::PTR)), ["db-0.west.db.shop.svc.clusterset.local."]);
    let v6 = Name::from(IpAddr::from_str("fd00::ff").unwrap()).to_string();
    assert_eq!(data(&ask(&s, &v6, RecordType::PTR)), ["api.shop.svc.clusterset.local."]);
    // Endpoints of a ClusterSetIP service have no PTR (their names do not exist); nor has an
    // address we do not know: that is not our zone.
    assert_eq!(ask(&s, "7.0.80.10.in-addr.arpa.", RecordType::PTR).code, ResponseCode::Refused);
    assert_eq!(ask(&s, "6.0.80.10.in-addr.arpa.", RecordType::PTR).code, ResponseCode::Refused);
}

#[test]
fn soa_and_ns_at_each_apex() {
    let s = snapshot();
    for zone in ["clusterset.local.", "slice.local."] {
        let soa = ask(&s, zone, RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
        let RData::SOA(data) = &soa.answers[0].data else { panic!("{soa:?}") };
        assert_eq!(data.minimum, 7);
        assert_eq!(data.serial, s.serial());
        assert_eq!(data.mname.to_string(), format!("ns.dns.{zone}"));
        let ns = ask(&s, zone, RecordType::NS);
        assert_eq!(ns.answers.len(), 1);
        assert_eq!(ns.answers[0].data.to_string(), format!("ns.dns.{zone}"));
    }
}

#[test]
fn nxdomain_nodata_and_refused_carry_what_rfc_2308_asks() {
    let s = snapshot();
    assert_nxdomain(&s, "nothing.shop.svc.clusterset.local.", "clusterset.local.");
    assert_nxdomain(&s, "nothing.slice.local.", "slice.local.");
    // The name exists, the type does not.
    assert_nodata(&s, "api.shop.svc.clusterset.local.", RecordType::TXT, "clusterset.local.");
    assert_nodata(&s, "db-0.east.db.shop.svc.clusterset.local.", RecordType::MX, "clusterset.local.");
    assert_nodata(&s, "dns-version.clusterset.local.", RecordType::A, "clusterset.local.");
    for outside in ["example.com.", "local.", "svc.cluster.local.", "clusterset.local.example."] {
        let a = ask(&s, outside, RecordType::A);
        assert_eq!(a.code, ResponseCode::Refused, "{outside}");
        assert!(!a.authoritative && a.soa.is_none());
    }
}

#[test]
fn empty_non_terminals_are_nodata_not_nxdomain() {
    let s = snapshot();
    for zone in ["clusterset.local.", "slice.local."] {
        assert_nodata(&s, &format!("svc.{zone}"), RecordType::A, zone);
        assert_nodata(&s, &format!("shop.svc.{zone}"), RecordType::A, zone);
        assert_nxdomain(&s, &format!("other.svc.{zone}"), zone);
    }
}

#[test]
fn names_compare_case_insensitively() {
    let s = snapshot();
    assert_eq!(data(&ask(&s, "DB-0.East.DB.Shop.SVC.ClusterSet.LOCAL.", RecordType::A)), ["10.80.0.5"]);
    assert_eq!(ask(&s, "API.shop.svc.SLICE.local.", RecordType::A).answers.len(), 1);
}

#[test]
fn any_returns_every_record_of_the_name_and_other_classes_are_refused() {
    let s = snapshot();
    let any = ask(&s, "api.shop.svc.clusterset.local.", RecordType::ANY);
    assert_eq!(any.answers.len(), 4, "A, AAAA and two SRV: {any:?}");
    let chaos = s.lookup(&LowerName::from_str("api.shop.svc.clusterset.local.").unwrap(), RecordType::A, DNSClass::CH);
    assert_eq!(chaos.code, ResponseCode::Refused);
    assert_eq!(ask(&s, "clusterset.local.", RecordType::AXFR).code, ResponseCode::Refused);
}

#[test]
fn the_wire_bound_covers_the_answer() {
    let s = snapshot();
    let a = ask(&s, "db.shop.svc.clusterset.local.", RecordType::A);
    let alone: usize = a.answers.iter().map(wire_size).sum();
    assert_eq!(a.wire_bound, alone);
    let n = ask(&s, "nothing.clusterset.local.", RecordType::A);
    assert_eq!(n.wire_bound, wire_size(n.soa.unwrap()));
}

#[test]
fn the_serial_follows_the_records_only() {
    let a = snapshot();
    assert_eq!(a.serial(), snapshot().serial());
    let other = Snapshot::build(
        &[import("shop", "api", ServiceImportType::ClusterSetIP, &["10.80.255.2"])],
        &[],
        &Settings::default(),
    );
    assert_ne!(a.serial(), other.serial());
    assert_eq!(a.services(), 3);
}

#[test]
fn one_address_has_one_ptr_the_first_services() {
    let imports =
        [import("a", "one", ServiceImportType::Headless, &[]), import("b", "two", ServiceImportType::Headless, &[])];
    let slices = [
        slice("a", "one", "east", "IPv4", &[(Some("p"), "10.80.0.5", None)]),
        slice("b", "two", "east", "IPv4", &[(Some("q"), "10.80.0.5", None)]),
    ];
    let s = Snapshot::build(&imports, &slices, &Settings::default());
    assert_eq!(data(&ask(&s, "5.0.80.10.in-addr.arpa.", RecordType::PTR)), ["p.east.one.a.svc.clusterset.local."]);
    assert_eq!(data(&ask(&s, "q.east.two.b.svc.clusterset.local.", RecordType::A)), ["10.80.0.5"]);
}

#[test]
fn an_empty_snapshot_has_the_apexes_and_the_version() {
    let s = Snapshot::empty(&Settings::default());
    assert_eq!(ask(&s, "clusterset.local.", RecordType::SOA).answers.len(), 1);
    assert_eq!(data(&ask(&s, "dns-version.clusterset.local.", RecordType::TXT)), ["1.0.0"]);
    assert_nxdomain(&s, "svc.clusterset.local.", "clusterset.local.");
    assert_eq!(s.records().len(), 5, "2 SOA, 2 NS, TXT");
}

#[test]
fn a_zone_file_holds_the_zones_records_soa_first() {
    let s = snapshot();
    let text = s.zone_file("clusterset.local").unwrap();
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert!(
        lines[0].starts_with("clusterset.local. 7 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. "),
        "{text}"
    );
    assert!(lines.contains(&"db-0.east.db.shop.svc.clusterset.local. 7 IN A 10.80.0.5"), "{text}");
    assert!(lines.contains(&"dns-version.clusterset.local. 7 IN TXT \"1.0.0\""), "{text}");
    assert!(lines.iter().all(|l| l.split(' ').next().unwrap().ends_with("clusterset.local.")), "{text}");
    assert!(!text.contains("in-addr.arpa"));
    assert!(s.zone_file("slice.local.").unwrap().contains("east.api.shop.svc.slice.local. 7 IN A 10.80.0.7"));
    assert!(s.zone_file("example.com").is_none());
}
