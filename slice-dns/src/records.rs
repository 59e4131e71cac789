//! The records of both zones, built once per change into an immutable [`Snapshot`] that answers
//! a question without allocating (pure; the server swaps whole snapshots).
//!
//! `clusterset.local` follows the MCS DNS specification 1.0.0 (KEP-1645, `specification.md`):
//! - `dns-version.clusterset.local. TXT "1.0.0"` (§2.2);
//! - ClusterSetIP: `<svc>.<ns>.svc` A/AAAA of the import's `ips` (§2.3.1); `SRV` at
//!   `_<port>._<proto>.<svc>.<ns>.svc` for each named port with the service name as target
//!   (§2.3.2); `PTR` of each ClusterSetIP to the service name (§2.3.3); no
//!   `<clusterid>.<svc>…` name (§2.3.4);
//! - Headless: `<svc>.<ns>.svc` A/AAAA of every ready endpoint of every cluster, NXDOMAIN when
//!   there is none (§2.4.1); `<hostname>.<clusterid>.<svc>.<ns>.svc` A/AAAA per endpoint;
//!   `SRV` per named port × endpoint with the endpoint's name as target (§2.4.2); `PTR` of each
//!   endpoint address to its name (§2.4.3); no records at `<clusterid>.<svc>…` (§2.4.4), which is
//!   an empty non-terminal there (NODATA, since names exist below it).
//!
//! Beyond the specification, as the cluster-local Kubernetes DNS does: `SRV` at the bare service
//! name lists every port (named or not) for every target, so a client that knows only the
//! service name still finds its ports.
//!
//! `slice.local` has the same service names, plus `<cluster>.<svc>.<ns>.svc.slice.local` with one
//! cluster's ready endpoints (the names KubeSlice users know). Its PTR records stay those of
//! `clusterset.local`: one address has one PTR.
//!
//! Each apex has `SOA` and `NS`; the SOA's serial is a hash of the records, so every replica
//! built from the same objects announces the same serial, and its minimum (the negative-caching
//! TTL, RFC 2308) is the records' TTL.
//!
//! Reverse names (`in-addr.arpa`, `ip6.arpa`) are answered for the addresses we know; any other
//! reverse name is outside our zones (REFUSED), since we are not the authority for the address
//! space.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Range;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV, TXT};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use slice_api::mcs::{CLUSTERSET_ZONE, DNS_SPEC_VERSION, SLICE_ZONE, ServiceImport, ServiceImportType};

use crate::model::{self, Service};

/// What a snapshot is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// TTL of every record, and the SOA minimum (negative answers are cached as long).
    pub ttl: u32,
}

impl Default for Settings {
    fn default() -> Self {
        // Short, because endpoints come and go with pods; KubeSlice's 60 s keeps a dead pod's
        // address in caches for a minute.
        Self { ttl: 5 }
    }
}

/// The answer to one question.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer<'a> {
    /// `NoError` (with answers, or NODATA without), `NXDomain` or `Refused`.
    pub code: ResponseCode,
    /// Whether the name lies in a zone (or a reverse name) we are the authority for.
    pub authoritative: bool,
    pub answers: &'a [Record],
    /// The zone's SOA for the authority section of NXDOMAIN and NODATA answers (RFC 2308).
    pub soa: Option<&'a Record>,
    /// An upper bound of the wire size of `answers` and `soa` (each record encoded alone, so
    /// with less name compression than in a message).
    pub wire_bound: usize,
}

impl Answer<'_> {
    /// NOERROR without answers: the name exists, the type does not.
    #[must_use]
    pub fn is_nodata(&self) -> bool {
        self.code == ResponseCode::NoError && self.answers.is_empty()
    }

    fn refused() -> Self {
        Self { code: ResponseCode::Refused, authoritative: false, answers: &[], soa: None, wire_bound: 0 }
    }
}

/// A zone we are the authority for.
#[derive(Debug, Clone)]
struct Zone {
    apex: LowerName,
    soa: Record,
    soa_size: usize,
}

/// The records of one name, sorted by type, with the prefix sums of their wire sizes.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Index into `Snapshot::zones`; `None` for a reverse name.
    zone: Option<usize>,
    records: Vec<Record>,
    /// `sizes[i]` = wire size of `records[..i]`.
    sizes: Vec<usize>,
}

impl Node {
    fn range(&self, qtype: RecordType) -> Range<usize> {
        if qtype == RecordType::ANY {
            return 0..self.records.len();
        }
        let t = u16::from(qtype);
        let start = self.records.partition_point(|r| u16::from(r.record_type()) < t);
        let end = self.records.partition_point(|r| u16::from(r.record_type()) <= t);
        start..end
    }
}

/// Every name of both zones and its records, immutable once built.
#[derive(Debug, Clone)]
pub struct Snapshot {
    names: HashMap<LowerName, Node>,
    zones: Vec<Zone>,
    serial: u32,
    services: usize,
    warnings: Vec<String>,
}

impl Snapshot {
    /// The snapshot of no services (only the apexes and the version record).
    #[must_use]
    pub fn empty(settings: &Settings) -> Self {
        Self::build(&[], &[], settings)
    }

    /// Builds both zones from the imports and the MCS EndpointSlices (see the module doc).
    /// Objects that cannot be named are left out and listed in [`Snapshot::warnings`].
    #[must_use]
    pub fn build(imports: &[ServiceImport], slices: &[EndpointSlice], settings: &Settings) -> Self {
        let model = model::services(imports, slices);
        let mut b = Builder { names: BTreeMap::new(), ttl: settings.ttl };
        let clusterset = zone_name(CLUSTERSET_ZONE);
        let slice = zone_name(SLICE_ZONE);
        b.name(&clusterset, Some(CLUSTERSET));
        b.name(&slice, Some(SLICE));
        b.add(
            &name_under(&["dns-version"], &clusterset),
            CLUSTERSET,
            RData::TXT(TXT::new(vec![DNS_SPEC_VERSION.to_owned()])),
        );
        let mut reverse: BTreeMap<IpAddr, Name> = BTreeMap::new();
        for service in &model.services {
            b.service(service, &clusterset, CLUSTERSET, Some(&mut reverse));
            b.service(service, &slice, SLICE, None);
        }
        for (address, target) in reverse {
            let owner = Name::from(address);
            b.names.entry(owner.clone()).or_default().records.push(Record::from_rdata(
                owner,
                b.ttl,
                RData::PTR(PTR(target)),
            ));
        }
        b.empty_non_terminals(&[&clusterset, &slice]);
        let serial = b.serial();
        let mut zones = Vec::new();
        for (index, apex) in [(CLUSTERSET, &clusterset), (SLICE, &slice)] {
            let ns = name_under(&["ns", "dns"], apex);
            let soa = Record::from_rdata(
                apex.clone(),
                b.ttl,
                RData::SOA(SOA::new(
                    ns.clone(),
                    name_under(&["hostmaster"], apex),
                    serial,
                    7200,
                    1800,
                    86400,
                    settings.ttl,
                )),
            );
            b.add(apex, index, RData::NS(NS(ns)));
            b.names.get_mut(apex).expect("apex added").records.push(soa.clone());
            let soa_size = wire_size(&soa);
            zones.push(Zone { apex: LowerName::new(apex), soa, soa_size });
        }
        let names = b
            .names
            .into_iter()
            .map(|(name, mut node)| {
                node.records.sort_by_key(|r| u16::from(r.record_type()));
                node.records.dedup();
                node.sizes = std::iter::once(0)
                    .chain(node.records.iter().scan(0, |sum, r| {
                        *sum += wire_size(r);
                        Some(*sum)
                    }))
                    .collect();
                (LowerName::new(&name), node)
            })
            .collect();
        Self { names, zones, serial, services: model.services.len(), warnings: model.warnings }
    }

    /// The answer to `name`/`qtype`/`class`. Names compare case-insensitively ([`LowerName`]).
    #[must_use]
    pub fn lookup(&self, name: &LowerName, qtype: RecordType, class: DNSClass) -> Answer<'_> {
        // Only the Internet class exists here; zone transfers are not offered.
        if class != DNSClass::IN || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer::refused();
        }
        if let Some(node) = self.names.get(name) {
            let range = node.range(qtype);
            let zone = node.zone.map(|z| &self.zones[z]);
            let soa = zone.filter(|_| range.is_empty());
            return Answer {
                code: ResponseCode::NoError,
                authoritative: true,
                wire_bound: node.sizes[range.end] - node.sizes[range.start] + soa.map_or(0, |z| z.soa_size),
                answers: &node.records[range],
                soa: soa.map(|z| &z.soa),
            };
        }
        match self.zones.iter().find(|z| z.apex.zone_of(name)) {
            Some(zone) => Answer {
                code: ResponseCode::NXDomain,
                authoritative: true,
                answers: &[],
                soa: Some(&zone.soa),
                wire_bound: zone.soa_size,
            },
            None => Answer::refused(),
        }
    }

    /// The SOA serial (a hash of the records).
    #[must_use]
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// How many services the zones hold.
    #[must_use]
    pub fn services(&self) -> usize {
        self.services
    }

    /// How many names (with empty non-terminals and reverse names).
    #[must_use]
    pub fn names(&self) -> usize {
        self.names.len()
    }

    /// What was left out while building, one sentence each.
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Every record, sorted by name then type.
    #[must_use]
    pub fn records(&self) -> Vec<&Record> {
        let mut all: Vec<&Record> = self.names.values().flat_map(|n| n.records.iter()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name).then(u16::from(a.record_type()).cmp(&u16::from(b.record_type()))));
        all
    }

    /// The records of `zone` (`clusterset.local` or `slice.local`) as a zone file (RFC 1035
    /// §5.1, absolute names), SOA first: the same records for another server (the benchmark's
    /// anchor) or for a reader. `None` for a zone we do not serve. Reverse names belong to no
    /// zone of ours and are not included.
    #[must_use]
    pub fn zone_file(&self, zone: &str) -> Option<String> {
        let apex = LowerName::new(&zone_name(zone.trim_end_matches('.')));
        let index = self.zones.iter().position(|z| z.apex == apex)?;
        let mut records: Vec<&Record> =
            self.names.values().filter(|n| n.zone == Some(index)).flat_map(|n| n.records.iter()).collect();
        records.sort_by(|a, b| {
            let soa_first = |r: &Record| r.record_type() != RecordType::SOA;
            soa_first(a)
                .cmp(&soa_first(b))
                .then(a.name.cmp(&b.name))
                .then(u16::from(a.record_type()).cmp(&u16::from(b.record_type())))
        });
        let mut text = format!("; {zone}: {} records, serial {}\n", records.len(), self.serial);
        for record in records {
            match &record.data {
                // hickory prints TXT strings bare; a zone file needs them quoted.
                RData::TXT(txt) => {
                    let strings: Vec<String> = txt
                        .txt_data
                        .iter()
                        .map(|s| {
                            format!("\"{}\"", String::from_utf8_lossy(s).replace('\\', "\\\\").replace('"', "\\\""))
                        })
                        .collect();
                    text.push_str(&format!("{} {} IN TXT {}", record.name, record.ttl, strings.join(" ")));
                }
                _ => text.push_str(&record.to_string()),
            }
            text.push('\n');
        }
        Some(text)
    }
}

const CLUSTERSET: usize = 0;
const SLICE: usize = 1;

struct Builder {
    names: BTreeMap<Name, Node>,
    ttl: u32,
}

impl Builder {
    fn name(&mut self, name: &Name, zone: Option<usize>) -> &mut Node {
        let node = self.names.entry(name.clone()).or_default();
        node.zone = zone;
        node
    }

    fn add(&mut self, name: &Name, zone: usize, rdata: RData) {
        let ttl = self.ttl;
        self.name(name, Some(zone)).records.push(Record::from_rdata(name.clone(), ttl, rdata));
    }

    fn address(&mut self, name: &Name, zone: usize, ip: IpAddr) {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        self.add(name, zone, rdata);
    }

    /// The records of one service in one zone; `reverse` collects the PTR targets (first one
    /// wins: one address, one PTR) when given.
    fn service(&mut self, s: &Service, apex: &Name, zone: usize, mut reverse: Option<&mut BTreeMap<IpAddr, Name>>) {
        let base = name_under(&[&s.name, &s.namespace, "svc"], apex);
        // Targets of the SRV records: the service name (ClusterSetIP) or each endpoint's name.
        let mut targets: Vec<Name> = Vec::new();
        match s.kind {
            ServiceImportType::ClusterSetIP => {
                if s.ips.is_empty() {
                    // Nothing to answer with: no name at all rather than SRV to nowhere.
                    return;
                }
                for ip in &s.ips {
                    self.address(&base, zone, *ip);
                    if let Some(reverse) = reverse.as_deref_mut() {
                        reverse.entry(*ip).or_insert_with(|| base.clone());
                    }
                }
                targets.push(base.clone());
            }
            ServiceImportType::Headless => {
                for ip in s.endpoint_addresses() {
                    self.address(&base, zone, ip);
                }
                for (cluster, hosts) in &s.clusters {
                    for (hostname, addresses) in hosts {
                        let host = name_under(&[hostname, cluster], &base);
                        for ip in addresses {
                            self.address(&host, zone, *ip);
                            if let Some(reverse) = reverse.as_deref_mut() {
                                reverse.entry(*ip).or_insert_with(|| host.clone());
                            }
                        }
                        targets.push(host);
                    }
                }
            }
        }
        if zone == SLICE {
            for (cluster, hosts) in &s.clusters {
                let per_cluster = name_under(&[cluster], &base);
                let mut addresses: Vec<IpAddr> = hosts.values().flatten().copied().collect();
                addresses.sort_unstable();
                addresses.dedup();
                for ip in addresses {
                    self.address(&per_cluster, zone, ip);
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        // Equal weights that add up to about 100 (RFC 2782 leaves them to us).
        let weight = u16::try_from((100 / targets.len()).max(1)).unwrap_or(1);
        for port in &s.ports {
            let proto = format!("_{}", port.protocol);
            let named = port.name.as_ref().map(|n| name_under(&[&format!("_{n}"), &proto], &base));
            for target in &targets {
                let srv = RData::SRV(SRV::new(0, weight, port.number, target.clone()));
                if let Some(named) = &named {
                    self.add(named, zone, srv.clone());
                }
                self.add(&base, zone, srv);
            }
        }
    }

    /// Adds every name between a record's owner and its apex that has no records of its own
    /// (`svc.clusterset.local`, `<ns>.svc.clusterset.local`, `_tcp.<svc>…`): such names exist
    /// (NODATA), they are not NXDOMAIN (RFC 8020).
    fn empty_non_terminals(&mut self, apexes: &[&Name]) {
        let mut missing = Vec::new();
        for (name, node) in &self.names {
            let Some(zone) = node.zone else { continue };
            let apex = apexes[zone];
            let mut parent = name.base_name();
            while parent.num_labels() > apex.num_labels() {
                if !self.names.contains_key(&parent) {
                    missing.push((parent.clone(), zone));
                }
                parent = parent.base_name();
            }
        }
        for (name, zone) in missing {
            self.name(&name, Some(zone));
        }
    }

    /// FNV-1a over the records in name order, folded to 32 bits: the same objects give the
    /// same serial.
    fn serial(&self) -> u32 {
        let text = self.names.values().flat_map(|n| n.records.iter()).map(|r| r.to_string() + "\n");
        let hash = slice_api::fnv::fnv1a_64(text.flat_map(String::into_bytes));
        (hash >> 32) as u32 ^ hash as u32
    }
}

fn zone_name(zone: &str) -> Name {
    Name::from_ascii(format!("{zone}.")).expect("the zone names are valid")
}

/// `labels` (leftmost first) prepended to `apex`. The labels were checked by
/// [`model::is_dns_label`] or are our own.
fn name_under(labels: &[&str], apex: &Name) -> Name {
    let mut name = apex.clone();
    for label in labels.iter().rev() {
        name = name.prepend_label(*label).expect("labels are checked before they get here");
    }
    name
}

/// The size of `record` encoded alone.
fn wire_size(record: &Record) -> usize {
    let mut bytes = Vec::with_capacity(64);
    let mut encoder = BinEncoder::new(&mut bytes);
    record.emit(&mut encoder).expect("a record we built encodes");
    bytes.len()
}

#[cfg(test)]
mod tests;
