//! From the MCS objects to the services DNS answers for (pure).
//!
//! A `ServiceImport` names a service of a namespace; the MCS `EndpointSlice`s of the same
//! namespace whose `multicluster.kubernetes.io/service-name` label is that name hold its
//! endpoints, one or more slices per exporting cluster (`multicluster.kubernetes.io/source-cluster`).
//! Only *ready* endpoints count (`conditions.ready` not `false`, as the Kubernetes DNS
//! specification reads an absent condition). An endpoint's *hostname* is its `hostname` field,
//! else its address with dashes (`10-1-2-3`), the stable identifier the specification allows.
//!
//! What cannot be named in DNS (a label that is not a DNS label, an address that does not parse,
//! a slice without its labels) is left out with a warning, so one bad object never hides the
//! others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use slice_api::mcs::{SERVICE_NAME_LABEL, SOURCE_CLUSTER_LABEL, ServiceImport, ServiceImportType};

/// One imported service as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace (a lower-case DNS label).
    pub namespace: String,
    /// Service name (a lower-case DNS label).
    pub name: String,
    pub kind: ServiceImportType,
    /// The ClusterSetIPs (empty for a Headless service).
    pub ips: Vec<IpAddr>,
    /// The service's ports, in the import's order.
    pub ports: Vec<Port>,
    /// Ready endpoints per exporting cluster (cluster id → hosts, by hostname). A cluster
    /// without ready endpoints is absent.
    pub clusters: BTreeMap<String, BTreeMap<String, BTreeSet<IpAddr>>>,
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The port's name as an SRV label (lower case), if it has one.
    pub name: Option<String>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub number: u16,
}

impl Service {
    /// Every ready address of every cluster, each once.
    #[must_use]
    pub fn endpoint_addresses(&self) -> BTreeSet<IpAddr> {
        self.clusters.values().flat_map(|hosts| hosts.values().flatten().copied()).collect()
    }
}

/// The services and what was left out on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    /// Sorted by namespace, then name.
    pub services: Vec<Service>,
    /// One sentence per thing left out.
    pub warnings: Vec<String>,
}

/// Whether `label` can stand as one DNS label in our names: 1–63 letters, digits and dashes.
/// (A dashed IPv6 address may begin with a dash; resolvers carry such labels unchanged.)
#[must_use]
pub fn is_dns_label(label: &str) -> bool {
    (1..=63).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The hostname of an endpoint without one: its address with `.` and `:` made dashes.
#[must_use]
pub fn dashed(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        // The full form, so that `fd00::1` and `fd00:0::1` name the same endpoint.
        IpAddr::V6(v6) => v6.segments().iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join("-"),
    }
}

/// Builds the services from the imports and the MCS EndpointSlices.
#[must_use]
pub fn services(imports: &[ServiceImport], slices: &[EndpointSlice]) -> Services {
    let mut warnings = Vec::new();
    let mut by_key: BTreeMap<(String, String), Service> = BTreeMap::new();
    for import in imports {
        let (Some(namespace), Some(name)) = (import.metadata.namespace.as_deref(), import.metadata.name.as_deref())
        else {
            warnings.push("a ServiceImport without namespace or name is left out".to_owned());
            continue;
        };
        let (namespace, name) = (namespace.to_ascii_lowercase(), name.to_ascii_lowercase());
        if !is_dns_label(&namespace) || !is_dns_label(&name) {
            warnings.push(format!("ServiceImport {namespace}/{name}: not a DNS label, left out"));
            continue;
        }
        let key = (namespace.clone(), name.clone());
        if by_key.contains_key(&key) {
            warnings.push(format!("ServiceImport {namespace}/{name} appears twice: the first one is served"));
            continue;
        }
        let mut ips = Vec::new();
        if import.spec.type_ == ServiceImportType::ClusterSetIP {
            for ip in &import.spec.ips {
                match ip.parse::<IpAddr>() {
                    Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                    Ok(_) => {}
                    Err(_) => warnings.push(format!("ServiceImport {namespace}/{name}: ip {ip:?} is not an address")),
                }
            }
        }
        let mut ports = Vec::new();
        for port in &import.spec.ports {
            let name_label = match port.name.as_deref().map(str::to_ascii_lowercase) {
                Some(n) if is_dns_label(&n) => Some(n),
                Some(n) if n.is_empty() => None,
                Some(n) => {
                    warnings.push(format!("ServiceImport {namespace}/{name}: port name {n:?} is not a DNS label"));
                    None
                }
                None => None,
            };
            let protocol = port.protocol.to_ascii_lowercase();
            if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                warnings.push(format!(
                    "ServiceImport {namespace}/{name}: port {} has protocol {:?} (TCP, UDP or SCTP)",
                    port.port, port.protocol
                ));
                continue;
            }
            ports.push(Port { name: name_label, protocol, number: port.port });
        }
        by_key.insert(key, Service { namespace, name, kind: import.spec.type_, ips, ports, clusters: BTreeMap::new() });
    }
    for slice in slices {
        add_slice(&mut by_key, slice, &mut warnings);
    }
    Services { services: by_key.into_values().collect(), warnings }
}

fn add_slice(by_key: &mut BTreeMap<(String, String), Service>, slice: &EndpointSlice, warnings: &mut Vec<String>) {
    let meta = &slice.metadata;
    let what = format!(
        "EndpointSlice {}/{}",
        meta.namespace.as_deref().unwrap_or("?"),
        meta.name.as_deref().or(meta.generate_name.as_deref()).unwrap_or("?")
    );
    let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).map(|v| v.to_ascii_lowercase());
    let (Some(service), Some(cluster)) = (label(SERVICE_NAME_LABEL), label(SOURCE_CLUSTER_LABEL)) else {
        // Not an MCS slice (the cluster's own slices carry no source-cluster label).
        return;
    };
    let Some(namespace) = meta.namespace.as_deref().map(str::to_ascii_lowercase) else {
        warnings.push(format!("{what}: no namespace, left out"));
        return;
    };
    if !is_dns_label(&cluster) {
        warnings.push(format!("{what}: source cluster {cluster:?} is not a DNS label, left out"));
        return;
    }
    let Some(target) = by_key.get_mut(&(namespace.clone(), service.clone())) else {
        // Endpoints without their import are not a service (yet): the worker writes the
        // import first, so this is a moment of a change, not a fault.
        return;
    };
    match slice.address_type.as_str() {
        "IPv4" | "IPv6" => {}
        // FQDN slices have no addresses to answer with.
        _ => return,
    }
    for endpoint in slice.endpoints.iter().flatten() {
        if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        let mut addresses = Vec::new();
        for address in &endpoint.addresses {
            match address.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => warnings.push(format!("{what}: endpoint address {address:?} is not an address")),
            }
        }
        let Some(first) = addresses.first().copied() else { continue };
        let hostname = match endpoint.hostname.as_deref().map(str::to_ascii_lowercase) {
            Some(h) if is_dns_label(&h) => h,
            Some(h) => {
                warnings.push(format!("{what}: hostname {h:?} is not a DNS label, the address names the endpoint"));
                dashed(first)
            }
            None => dashed(first),
        };
        target.clusters.entry(cluster.clone()).or_default().entry(hostname).or_default().extend(addresses);
    }
}

/// Object builders for the tests of this crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use slice_api::mcs::{ServiceImportSpec, ServicePort};

    /// An import with a named TCP port `web` (80) and an unnamed UDP port 53.
    pub(crate) fn import(ns: &str, name: &str, kind: ServiceImportType, ips: &[&str]) -> ServiceImport {
        ServiceImport {
            metadata: ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() },
            spec: ServiceImportSpec {
                ips: ips.iter().map(|s| (*s).to_owned()).collect(),
                type_: kind,
                ports: vec![
                    ServicePort { name: Some("Web".into()), protocol: "TCP".into(), app_protocol: None, port: 80 },
                    ServicePort { name: None, protocol: "UDP".into(), app_protocol: None, port: 53 },
                ],
                session_affinity: None,
            },
            status: None,
        }
    }

    /// An MCS slice of `cluster` for `service` with (hostname, address, ready) endpoints.
    pub(crate) fn slice(
        ns: &str,
        service: &str,
        cluster: &str,
        family: &str,
        endpoints: &[(Option<&str>, &str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(format!("{service}-{cluster}")),
                labels: Some(
                    [
                        (SERVICE_NAME_LABEL.to_owned(), service.to_owned()),
                        (SOURCE_CLUSTER_LABEL.to_owned(), cluster.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: family.into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(host, addr, ready)| Endpoint {
                        addresses: vec![(*addr).to_owned()],
                        hostname: host.map(str::to_owned),
                        conditions: Some(EndpointConditions { ready: *ready, ..Default::default() }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{import, slice};
    use super::*;

    #[test]
    fn endpoints_group_by_service_label_and_cluster_and_only_ready_ones_count() {
        let imports = [import("shop", "db", ServiceImportType::Headless, &[])];
        let slices = [
            slice(
                "shop",
                "db",
                "east",
                "IPv4",
                &[(Some("db-0"), "10.80.0.5", Some(true)), (Some("db-1"), "10.80.0.6", Some(false))],
            ),
            slice("shop", "db", "west", "IPv4", &[(None, "10.80.16.7", None)]),
            // Another namespace's slice of the same service name is not ours.
            slice("other", "db", "east", "IPv4", &[(Some("x"), "10.80.0.9", Some(true))]),
        ];
        let s = services(&imports, &slices);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let db = &s.services[0];
        assert_eq!(db.clusters["east"].keys().collect::<Vec<_>>(), ["db-0"]);
        assert_eq!(db.clusters["west"].keys().collect::<Vec<_>>(), ["10-80-16-7"]);
        assert_eq!(db.endpoint_addresses().len(), 2);
        assert_eq!(db.ports[0], Port { name: Some("web".into()), protocol: "tcp".into(), number: 80 });
        assert_eq!(db.ports[1].name, None);
    }

    #[test]
    fn a_slice_without_mcs_labels_or_import_is_ignored_and_bad_values_warn() {
        let imports = [import("shop", "api", ServiceImportType::ClusterSetIP, &["10.80.255.1", "nope"])];
        let mut plain = slice("shop", "api", "east", "IPv4", &[(None, "10.80.0.5", None)]);
        plain.metadata.labels.as_mut().unwrap().remove(SOURCE_CLUSTER_LABEL);
        let slices = [
            plain,
            slice("shop", "gone", "east", "IPv4", &[(None, "10.80.0.5", None)]),
            slice("shop", "api", "Bad_Cluster", "IPv4", &[(None, "10.80.0.5", None)]),
            slice(
                "shop",
                "api",
                "east",
                "IPv4",
                &[(Some("UPPER"), "10.80.0.8", None), (Some("no_underscore"), "10.80.0.9", None)],
            ),
        ];
        let s = services(&imports, &slices);
        let api = &s.services[0];
        assert_eq!(api.ips, vec!["10.80.255.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(api.clusters["east"].keys().collect::<Vec<_>>(), ["10-80-0-9", "upper"]);
        assert_eq!(s.warnings.len(), 3, "{:?}", s.warnings);
        assert!(s.warnings.iter().any(|w| w.contains("\"nope\"")));
        assert!(s.warnings.iter().any(|w| w.contains("Bad_Cluster") || w.contains("bad_cluster")));
    }

    #[test]
    fn ipv6_endpoints_are_dashed_in_full() {
        assert_eq!(dashed("fd00::1".parse().unwrap()), "fd00-0-0-0-0-0-0-1");
        assert_eq!(dashed("10.1.2.3".parse().unwrap()), "10-1-2-3");
        assert!(is_dns_label("fd00-0-0-0-0-0-0-1"));
        assert!(!is_dns_label("") && !is_dns_label(&"a".repeat(64)) && !is_dns_label("a.b"));
    }

    #[test]
    fn a_second_import_of_the_same_name_is_left_out() {
        let imports = [
            import("shop", "db", ServiceImportType::Headless, &[]),
            import("shop", "DB", ServiceImportType::ClusterSetIP, &["10.80.255.1"]),
        ];
        let s = services(&imports, &[]);
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.services[0].kind, ServiceImportType::Headless);
        assert_eq!(s.warnings.len(), 1);
    }
}
