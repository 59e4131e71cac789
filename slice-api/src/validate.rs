//! Admission checks of a `SliceConfig` (feature `crd`): everything the API server's schema and CEL
//! rules cannot see, because it needs the other slices, the member clusters or the old object.
//! Pure: the validating webhook gathers `others` and `clusters` and calls
//! [`validate_slice_config`]; the hub may call it too before planning.
//!
//! Every [`Violation`] names the field and says what is wrong and how to fix it, since its text is
//! what `kubectl apply` prints when the webhook refuses the object.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;

use crate::crd::{MemberCluster, PRIMARY_FIELDS, SliceConfig, SliceConfigSpec, SpecError};
use crate::names;
use crate::prefix::PrefixError;

/// Which rule a [`Violation`] breaks (stable, for tests and metrics labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `metadata.name` is not a valid slice name.
    SliceName,
    /// `sliceSubnet` is not a CIDR.
    UnparsableSubnet,
    /// `sliceSubnet` has host bits set.
    MisalignedSubnet,
    /// `maxClusters` is zero or not a power of two.
    MaxClustersNotPowerOfTwo,
    /// The subnet cannot be split into `maxClusters` parts, or lists more clusters than that.
    MaxClustersDoesNotFit,
    /// `nodePrefixLength` does not fit the cluster prefix.
    NodePrefixDoesNotFit,
    /// `sliceSubnet` or `secondarySliceSubnet` changed on update (or the secondary one was added
    /// or removed).
    SubnetImmutable,
    /// `secondarySliceSubnet` is of the same family as `sliceSubnet`, or
    /// `secondaryNodePrefixLength` is set without it.
    SecondaryFamily,
    /// `maxClusters` changed on update.
    MaxClustersImmutable,
    /// A namespace is claimed by this slice and another one in the same cluster.
    NamespaceClaimedTwice,
    /// The slice subnet overlaps a member cluster's pod or service CIDR.
    OverlapsClusterCidr,
    /// In a member cluster with an uplink rate, the guarantees of the slices there add up to
    /// more than it, or this slice's ceiling exceeds it.
    QosExceedsUplink,
    /// Two QoS slices in one cluster have the same gateway port: their traffic on the uplink
    /// cannot be told apart.
    QosGatewayPortShared,
    /// `guaranteedKbps` above `ceilingKbps` (the schema's CEL rule, checked here as well).
    QosGuaranteeAboveCeiling,
}

/// One reason to refuse a `SliceConfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    /// JSON path of the offending field, e.g. `spec.sliceSubnet`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Violation {
    fn new(rule: Rule, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { rule, field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Joins violations into the one message an admission response carries.
#[must_use]
pub fn message(violations: &[Violation]) -> String {
    violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Checks `new` (and, on update, the change from `old`) against every other slice and the member
/// clusters the hub knows. `others` may contain `new` itself (an informer cache does); entries
/// with the same name are skipped. Clusters not in `clusters` are not checked for overlap.
///
/// # Errors
/// Every violation found, not only the first.
pub fn validate_slice_config(
    new: &SliceConfig,
    old: Option<&SliceConfig>,
    others: &[SliceConfig],
    clusters: &[MemberCluster],
) -> Result<(), Vec<Violation>> {
    let mut out = Vec::new();
    let name = new.metadata.name.as_deref().unwrap_or_default();
    if let Err(m) = names::validate_slice_name(name) {
        out.push(Violation::new(
            Rule::SliceName,
            "metadata.name",
            format!("{m} (it names the router namespace and state files on every node)"),
        ));
    }
    let subnets = check_address_plan(&new.spec, &mut out);
    if let Some(old) = old {
        check_immutable(&new.spec, &old.spec, &mut out);
    }
    check_namespaces(name, &new.spec, others, &mut out);
    for (field, subnet) in subnets {
        check_cluster_cidrs(field, subnet, &new.spec, clusters, &mut out);
    }
    check_qos(name, &new.spec, others, clusters, &mut out);
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// The address plans through [`SliceConfigSpec::address_plans`], their errors turned into
/// violations on the field at fault; returns each sound family's subnet with its field.
fn check_address_plan(spec: &SliceConfigSpec, out: &mut Vec<Violation>) -> Vec<(&'static str, IpNet)> {
    match spec.address_plans() {
        Ok(plans) => {
            let listed = spec.clusters.iter().collect::<BTreeSet<_>>().len();
            if listed > plans.primary.max_clusters as usize {
                out.push(Violation::new(
                    Rule::MaxClustersDoesNotFit,
                    "spec.clusters",
                    format!(
                        "the slice lists {listed} clusters but maxClusters is {}: remove clusters, or recreate the slice with a larger power-of-two maxClusters",
                        plans.primary.max_clusters
                    ),
                ));
            }
            let mut subnets = vec![("spec.sliceSubnet", plans.primary.subnet)];
            subnets.extend(plans.secondary.map(|p| ("spec.secondarySliceSubnet", p.subnet)));
            subnets
        }
        Err(e) => {
            out.push(spec_violation(e));
            Vec::new()
        }
    }
}

/// The violation a [`SpecError`] stands for, on the field it names.
fn spec_violation(e: SpecError) -> Violation {
    let on = |field: &str| format!("spec.{field}");
    match e {
        SpecError::BadSubnet { field, value } => Violation::new(
            Rule::UnparsableSubnet,
            on(field),
            format!("{value:?} is not a CIDR: write an aligned network such as 10.80.0.0/16 or fd00:80::/48"),
        ),
        SpecError::Prefix { field, error: error @ PrefixError::Misaligned(..) } => Violation::new(
            Rule::MisalignedSubnet,
            on(field),
            format!("{error} (a slice subnet may not have host bits set)"),
        ),
        SpecError::Prefix { error: error @ PrefixError::NotPowerOfTwo(_), .. } => {
            Violation::new(Rule::MaxClustersNotPowerOfTwo, "spec.maxClusters", error.to_string())
        }
        SpecError::Prefix { field, error: PrefixError::TooSmall { subnet, parts, max } } => Violation::new(
            Rule::MaxClustersDoesNotFit,
            "spec.maxClusters",
            format!(
                "{subnet}{} cannot be split into {parts} cluster prefixes (they would be longer than /{max}): use a larger subnet or a smaller maxClusters",
                if field == PRIMARY_FIELDS.subnet { String::new() } else { format!(" ({field})") }
            ),
        ),
        SpecError::Prefix { field, error } => Violation::new(Rule::UnparsableSubnet, on(field), error.to_string()),
        e @ SpecError::NodePrefixTooShort { field, .. } => {
            Violation::new(Rule::NodePrefixDoesNotFit, on(field), e.to_string())
        }
        e @ SpecError::NodePrefix { field, .. } => Violation::new(
            Rule::NodePrefixDoesNotFit,
            on(field),
            format!("{e}; change {field}, or split the subnet into fewer clusters"),
        ),
        e @ SpecError::SameFamily { .. } => {
            Violation::new(Rule::SecondaryFamily, "spec.secondarySliceSubnet", e.to_string())
        }
        e @ SpecError::SecondaryNodePrefixWithoutSubnet(_) => {
            Violation::new(Rule::SecondaryFamily, "spec.secondaryNodePrefixLength", e.to_string())
        }
    }
}

fn check_immutable(new: &SliceConfigSpec, old: &SliceConfigSpec, out: &mut Vec<Violation>) {
    // Compare parsed networks where both parse, so "10.80.0.0/16 " and "10.80.0.0/16" are equal.
    let parsed = |s: &str| s.trim().parse::<IpNet>().ok();
    let same = |new: &str, old: &str| match (parsed(new), parsed(old)) {
        (Some(a), Some(b)) => a == b,
        _ => new.trim() == old.trim(),
    };
    if !same(&new.slice_subnet, &old.slice_subnet) {
        out.push(Violation::new(
            Rule::SubnetImmutable,
            "spec.sliceSubnet",
            format!(
                "is immutable (was {}, now {}): changing it would renumber every pod; put it back, or create a new slice with the new subnet",
                old.slice_subnet, new.slice_subnet
            ),
        ));
    }
    match (&new.secondary_slice_subnet, &old.secondary_slice_subnet) {
        (Some(a), Some(b)) if !same(a, b) => out.push(Violation::new(
            Rule::SubnetImmutable,
            "spec.secondarySliceSubnet",
            format!(
                "is immutable (was {b}, now {a}): changing it would renumber every pod; put it back, or create a new slice with the new subnet"
            ),
        )),
        (Some(a), None) => out.push(Violation::new(
            Rule::SubnetImmutable,
            "spec.secondarySliceSubnet",
            format!(
                "cannot be added to an existing slice (now {a}): running pods would keep a single family; remove it, or create a new dual-stack slice"
            ),
        )),
        (None, Some(b)) => out.push(Violation::new(
            Rule::SubnetImmutable,
            "spec.secondarySliceSubnet",
            format!(
                "cannot be removed from an existing slice (was {b}): running pods hold addresses of it; put it back, or create a new slice"
            ),
        )),
        _ => {}
    }
    if new.max_clusters != old.max_clusters {
        out.push(Violation::new(
            Rule::MaxClustersImmutable,
            "spec.maxClusters",
            format!(
                "is immutable (was {}, now {}): changing it would move every cluster prefix; put it back, or create a new slice",
                old.max_clusters, new.max_clusters
            ),
        ));
    }
}

/// The clusters a namespace entry covers: `*` stands for the slice's member clusters.
fn entry_clusters<'a>(entry_clusters: &'a [String], slice_clusters: &'a [String]) -> BTreeSet<&'a str> {
    let mut out = BTreeSet::new();
    for c in entry_clusters {
        if c == "*" {
            out.extend(slice_clusters.iter().map(String::as_str));
        } else {
            out.insert(c.as_str());
        }
    }
    out
}

fn check_namespaces(name: &str, spec: &SliceConfigSpec, others: &[SliceConfig], out: &mut Vec<Violation>) {
    let mut reported = BTreeSet::new();
    for (i, entry) in spec.namespaces.iter().enumerate() {
        let mine = entry_clusters(&entry.clusters, &spec.clusters);
        for other in others {
            let other_name = other.metadata.name.as_deref().unwrap_or_default();
            if other_name == name {
                continue;
            }
            for theirs in other.spec.namespaces.iter().filter(|n| n.namespace == entry.namespace) {
                let both: Vec<&str> =
                    mine.intersection(&entry_clusters(&theirs.clusters, &other.spec.clusters)).copied().collect();
                if both.is_empty() || !reported.insert((entry.namespace.clone(), other_name.to_owned())) {
                    continue;
                }
                out.push(Violation::new(
                    Rule::NamespaceClaimedTwice,
                    format!("spec.namespaces[{i}]"),
                    format!(
                        "namespace {} already belongs to slice {other_name} in cluster{} {}; a namespace joins at most one slice per cluster: remove it from one of the slices, or give the two entries clusters that do not overlap",
                        entry.namespace,
                        if both.len() > 1 { "s" } else { "" },
                        both.join(", ")
                    ),
                ));
            }
        }
    }
}

/// The QoS profile against the member clusters' uplink rates and the other QoS slices there:
/// the sum of guarantees in a cluster fits under its uplink (or no guarantee holds), the ceiling
/// does too, and no two QoS slices in a cluster share a gateway port (the node agent tells their
/// traffic apart by it).
fn check_qos(
    name: &str,
    spec: &SliceConfigSpec,
    others: &[SliceConfig],
    clusters: &[MemberCluster],
    out: &mut Vec<Violation>,
) {
    let Some(qos) = &spec.qos else { return };
    if let (Some(g), Some(c)) = (qos.guaranteed_kbps, qos.ceiling_kbps)
        && g > c
    {
        out.push(Violation::new(
            Rule::QosGuaranteeAboveCeiling,
            "spec.qos.guaranteedKbps",
            format!("guaranteedKbps {g} is above ceilingKbps {c}: the guarantee must fit under the ceiling"),
        ));
    }
    fn sharing<'a>(
        name: &'a str,
        others: &'a [SliceConfig],
        cluster: &'a str,
    ) -> impl Iterator<Item = &'a SliceConfig> {
        others.iter().filter(move |o| {
            o.metadata.name.as_deref().unwrap_or_default() != name
                && o.spec.qos.is_some()
                && o.spec.clusters.iter().any(|c| c == cluster)
        })
    }
    for cluster in spec.clusters.iter().collect::<BTreeSet<_>>() {
        for other in sharing(name, others, cluster).filter(|o| o.spec.gateway.port == spec.gateway.port) {
            out.push(Violation::new(
                Rule::QosGatewayPortShared,
                "spec.gateway.port",
                format!(
                    "slice {} also has a QoS profile and gateway port {} in cluster {cluster}: give this slice another gateway port (the node agent tells the slices' traffic apart by it)",
                    other.metadata.name.as_deref().unwrap_or_default(),
                    spec.gateway.port
                ),
            ));
        }
        let Some(uplink) =
            clusters.iter().find(|c| c.metadata.name.as_deref() == Some(cluster)).and_then(|c| c.spec.uplink_kbps)
        else {
            continue;
        };
        if let Some(ceiling) = qos.ceiling_kbps.filter(|c| *c > uplink) {
            out.push(Violation::new(
                Rule::QosExceedsUplink,
                "spec.qos.ceilingKbps",
                format!("ceilingKbps {ceiling} is above cluster {cluster}'s uplink of {uplink} kbit/s"),
            ));
        }
        let mine = qos.guaranteed_kbps.unwrap_or(0);
        let theirs: u64 =
            sharing(name, others, cluster).filter_map(|o| o.spec.qos.as_ref().and_then(|q| q.guaranteed_kbps)).sum();
        if mine + theirs > uplink {
            out.push(Violation::new(
                Rule::QosExceedsUplink,
                "spec.qos.guaranteedKbps",
                format!(
                    "cluster {cluster}'s uplink is {uplink} kbit/s and the other slices there are guaranteed {theirs}: {mine} more does not fit; lower the guarantee or raise the cluster's uplinkKbps"
                ),
            ));
        }
    }
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn check_cluster_cidrs(
    field: &str,
    subnet: IpNet,
    spec: &SliceConfigSpec,
    clusters: &[MemberCluster],
    out: &mut Vec<Violation>,
) {
    for cluster in clusters {
        let cname = cluster.metadata.name.as_deref().unwrap_or_default();
        if !spec.clusters.iter().any(|c| c == cname) {
            continue;
        }
        let kinds = [("pod", &cluster.spec.pod_cidrs), ("service", &cluster.spec.service_cidrs)];
        for (kind, cidrs) in kinds {
            // A cluster's own unparsable CIDR is that MemberCluster's problem, not this slice's.
            for cidr in cidrs.iter().filter_map(|c| c.trim().parse::<IpNet>().ok()) {
                if overlaps(subnet, cidr) {
                    out.push(Violation::new(
                        Rule::OverlapsClusterCidr,
                        field,
                        format!(
                            "{subnet} overlaps the {kind} CIDR {cidr} of member cluster {cname}: pods would route that {kind} traffic into the slice; choose a slice subnet outside the clusters' pod and service CIDRs"
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MemberClusterSpec;
    use serde_json::json;

    fn slice(name: &str, spec: serde_json::Value) -> SliceConfig {
        SliceConfig::new(name, serde_json::from_value(spec).expect("spec fixture"))
    }

    fn blue() -> SliceConfig {
        slice(
            "blue",
            json!({"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"],
                   "namespaces": [{"namespace": "shop"}]}),
        )
    }

    fn cluster(name: &str, pods: &[&str], services: &[&str]) -> MemberCluster {
        MemberCluster::new(
            name,
            MemberClusterSpec {
                pod_cidrs: pods.iter().map(|s| s.to_string()).collect(),
                service_cidrs: services.iter().map(|s| s.to_string()).collect(),
                multus: false,
                uplink_kbps: None,
            },
        )
    }

    /// Validates and returns the only violation, checking its rule.
    fn only(result: Result<(), Vec<Violation>>, rule: Rule) -> Violation {
        let v = result.expect_err("must be rejected");
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].rule, rule, "{v:?}");
        v[0].clone()
    }

    fn check(new: &SliceConfig) -> Result<(), Vec<Violation>> {
        validate_slice_config(new, None, &[], &[])
    }

    fn with(mut s: SliceConfig, f: impl FnOnce(&mut SliceConfigSpec)) -> SliceConfig {
        f(&mut s.spec);
        s
    }

    #[test]
    fn qos_fits_each_clusters_uplink() {
        let qos = |name: &str, port: u16, g: u64, c: u64| {
            slice(
                name,
                json!({"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"], "gateway": {"port": port},
                       "qos": {"guaranteedKbps": g, "ceilingKbps": c, "priority": 1, "dscpClass": "AF41"}}),
            )
        };
        let mut c1 = cluster("c1", &[], &[]);
        c1.spec.uplink_kbps = Some(40_000);
        let clusters = [c1, cluster("c2", &[], &[])];
        let red = qos("red", 51821, 20_000, 40_000);
        let ok = qos("blue", 51820, 10_000, 30_000);
        assert_eq!(validate_slice_config(&ok, None, &[red.clone(), ok.clone()], &clusters), Ok(()));

        let v = only(
            validate_slice_config(&qos("blue", 51820, 25_000, 30_000), None, std::slice::from_ref(&red), &clusters),
            Rule::QosExceedsUplink,
        );
        assert!(
            v.message
                .contains("c1's uplink is 40000 kbit/s and the other slices there are guaranteed 20000: 25000 more"),
            "{v}"
        );
        let v = only(
            validate_slice_config(&qos("blue", 51820, 10_000, 50_000), None, &[], &clusters),
            Rule::QosExceedsUplink,
        );
        assert_eq!(v.field, "spec.qos.ceilingKbps");
        let v = validate_slice_config(&qos("blue", 51821, 10_000, 30_000), None, &[red], &clusters).unwrap_err();
        assert_eq!(v.len(), 2, "shared in c1 and c2: {v:?}");
        assert!(v.iter().all(|v| v.rule == Rule::QosGatewayPortShared && v.message.contains("slice red")), "{v:?}");
        only(check(&qos("blue", 51820, 30_000, 10_000)), Rule::QosGuaranteeAboveCeiling);
        // Slices without QoS share ports freely.
        assert_eq!(validate_slice_config(&ok, None, &[blue()], &clusters), Ok(()));
    }

    #[test]
    fn slice_name() {
        assert_eq!(check(&blue()), Ok(()));
        let v = only(check(&slice("Blue_1", json!({"sliceSubnet": "10.80.0.0/16"}))), Rule::SliceName);
        assert_eq!(v.field, "metadata.name");
        assert!(v.message.contains("\"Blue_1\" must be lower-case letters, digits and '-'"), "{v}");
    }

    #[test]
    fn unparsable_subnet() {
        let v = only(check(&with(blue(), |s| s.slice_subnet = "10.80.0.0/33".into())), Rule::UnparsableSubnet);
        assert_eq!(
            v.to_string(),
            "spec.sliceSubnet: \"10.80.0.0/33\" is not a CIDR: write an aligned network such as 10.80.0.0/16 or fd00:80::/48"
        );
        assert_eq!(check(&with(blue(), |s| s.slice_subnet = "fd00:80::/48".into())), Ok(()));
    }

    #[test]
    fn misaligned_subnet() {
        let v = only(check(&with(blue(), |s| s.slice_subnet = "10.80.3.0/16".into())), Rule::MisalignedSubnet);
        assert!(v.message.contains("10.80.3.0/16 is not aligned: did you mean 10.80.0.0/16?"), "{v}");
    }

    #[test]
    fn max_clusters_power_of_two() {
        let v = only(check(&with(blue(), |s| s.max_clusters = 12)), Rule::MaxClustersNotPowerOfTwo);
        assert_eq!(v.to_string(), "spec.maxClusters: maxClusters 12 must be a power of two (1, 2, 4, 8, …)");
        assert_eq!(check(&with(blue(), |s| s.max_clusters = 8)), Ok(()));
    }

    #[test]
    fn max_clusters_fit() {
        let small = with(blue(), |s| {
            s.slice_subnet = "10.80.0.0/28".into();
            s.max_clusters = 64;
        });
        let v = only(check(&small), Rule::MaxClustersDoesNotFit);
        assert!(v.message.contains("10.80.0.0/28 cannot be split into 64 cluster prefixes"), "{v}");
        assert!(v.message.contains("use a larger subnet or a smaller maxClusters"), "{v}");
        let crowded = with(blue(), |s| {
            s.max_clusters = 2;
            s.clusters = vec!["c1".into(), "c2".into(), "c3".into()];
        });
        let v = only(check(&crowded), Rule::MaxClustersDoesNotFit);
        assert_eq!(v.field, "spec.clusters");
        assert!(v.message.contains("lists 3 clusters but maxClusters is 2"), "{v}");
        assert_eq!(check(&with(blue(), |s| s.max_clusters = 2)), Ok(()));
    }

    #[test]
    fn node_prefix_fit() {
        let v = only(check(&with(blue(), |s| s.node_prefix_length = Some(19))), Rule::NodePrefixDoesNotFit);
        assert!(v.message.contains("nodePrefixLength /19 does not fit the cluster prefix /20"), "{v}");
        assert_eq!(v.field, "spec.nodePrefixLength");
        let v = only(check(&with(blue(), |s| s.node_prefix_length = Some(31))), Rule::NodePrefixDoesNotFit);
        assert!(v.message.contains("at most /30"), "{v}");
        assert_eq!(check(&with(blue(), |s| s.node_prefix_length = Some(24))), Ok(()));
    }

    /// Issue 20: an IPv6 node prefix of /64 or /96 passed and then crashed slice-cni.
    #[test]
    fn node_prefixes_larger_than_2_to_the_16_are_refused() {
        let v6 = |len| {
            with(blue(), |s| {
                s.slice_subnet = "fd00:80::/48".into();
                s.node_prefix_length = Some(len);
            })
        };
        for len in [64, 96, 111] {
            let v = only(check(&v6(len)), Rule::NodePrefixDoesNotFit);
            assert!(v.message.contains("at least /112"), "{v}");
        }
        assert_eq!(check(&v6(112)), Ok(()));
        let v = only(check(&with(blue(), |s| s.node_prefix_length = Some(15))), Rule::NodePrefixDoesNotFit);
        assert!(v.message.contains("at least /16"), "{v}");
    }

    #[test]
    fn subnet_immutable() {
        let old = blue();
        let new = with(blue(), |s| s.slice_subnet = "10.81.0.0/16".into());
        let v = only(validate_slice_config(&new, Some(&old), &[], &[]), Rule::SubnetImmutable);
        assert!(v.message.starts_with("is immutable (was 10.80.0.0/16, now 10.81.0.0/16)"), "{v}");
        // Other fields may change.
        let grown = with(blue(), |s| s.clusters.push("c3".into()));
        assert_eq!(validate_slice_config(&grown, Some(&old), &[], &[]), Ok(()));
    }

    #[test]
    fn max_clusters_immutable() {
        let old = blue();
        let new = with(blue(), |s| s.max_clusters = 32);
        let v = only(validate_slice_config(&new, Some(&old), &[], &[]), Rule::MaxClustersImmutable);
        assert!(v.message.starts_with("is immutable (was 16, now 32)"), "{v}");
    }

    #[test]
    fn namespace_claimed_twice() {
        let red = |ns: serde_json::Value| {
            slice("red", json!({"sliceSubnet": "10.90.0.0/16", "clusters": ["c2", "c3"], "namespaces": ns}))
        };
        // blue has shop in "*" = c1, c2; red has shop in "*" = c2, c3: both in c2.
        let others = [blue(), red(json!([{"namespace": "shop"}]))];
        let new_red = red(json!([{"namespace": "shop"}]));
        let v = only(validate_slice_config(&new_red, None, &others, &[]), Rule::NamespaceClaimedTwice);
        assert_eq!(v.field, "spec.namespaces[0]");
        assert!(v.message.starts_with("namespace shop already belongs to slice blue in cluster c2;"), "{v}");
        // Limited to c3 only, where blue is not: fine. Itself in `others` does not count.
        let ok_red = red(json!([{"namespace": "shop", "clusters": ["c3"]}]));
        assert_eq!(validate_slice_config(&ok_red, None, &others, &[]), Ok(()));
        // An explicit list meets a "*".
        let explicit = red(json!([{"namespace": "shop", "clusters": ["c1", "c2"]}]));
        let v = only(validate_slice_config(&explicit, None, &others, &[]), Rule::NamespaceClaimedTwice);
        assert!(v.message.contains("in clusters c1, c2;"), "{v}");
    }

    #[test]
    fn overlap_with_cluster_cidrs() {
        let clusters = [cluster("c1", &["10.244.0.0/16"], &["10.96.0.0/12"]), cluster("c9", &["10.80.0.0/16"], &[])];
        // c9 is not a member of blue: its overlap does not matter.
        assert_eq!(validate_slice_config(&blue(), None, &[], &clusters), Ok(()));
        let clash = with(blue(), |s| s.slice_subnet = "10.96.0.0/16".into());
        let v = only(validate_slice_config(&clash, None, &[], &clusters), Rule::OverlapsClusterCidr);
        assert!(
            v.message.starts_with("10.96.0.0/16 overlaps the service CIDR 10.96.0.0/12 of member cluster c1"),
            "{v}"
        );
        let clash = with(blue(), |s| s.slice_subnet = "10.244.8.0/21".into());
        let v = only(validate_slice_config(&clash, None, &[], &clusters), Rule::OverlapsClusterCidr);
        assert!(v.message.contains("the pod CIDR 10.244.0.0/16 of member cluster c1"), "{v}");
    }

    fn dual() -> SliceConfig {
        with(blue(), |s| s.secondary_slice_subnet = Some("fd00:80::/48".into()))
    }

    #[test]
    fn a_dual_stack_slice_is_valid_and_each_family_is_checked_on_its_own_field() {
        assert_eq!(check(&dual()), Ok(()));
        assert_eq!(check(&with(dual(), |s| s.secondary_node_prefix_length = Some(112))), Ok(()));
        let v = only(
            check(&with(dual(), |s| s.secondary_slice_subnet = Some("10.81.0.0/16".into()))),
            Rule::SecondaryFamily,
        );
        assert_eq!(v.field, "spec.secondarySliceSubnet");
        assert!(v.message.contains("same family as sliceSubnet 10.80.0.0/16"), "{v}");
        let v = only(check(&with(blue(), |s| s.secondary_node_prefix_length = Some(120))), Rule::SecondaryFamily);
        assert_eq!(v.field, "spec.secondaryNodePrefixLength");
        let v = only(
            check(&with(dual(), |s| s.secondary_slice_subnet = Some("fd00:80::9/48".into()))),
            Rule::MisalignedSubnet,
        );
        assert_eq!(v.field, "spec.secondarySliceSubnet");
        assert!(v.message.contains("did you mean fd00:80::/48"), "{v}");
        let v = only(
            check(&with(dual(), |s| s.secondary_slice_subnet = Some("fd00::/48 x".into()))),
            Rule::UnparsableSubnet,
        );
        assert_eq!(v.field, "spec.secondarySliceSubnet");
        let v = only(check(&with(dual(), |s| s.secondary_node_prefix_length = Some(96))), Rule::NodePrefixDoesNotFit);
        assert_eq!(v.field, "spec.secondaryNodePrefixLength");
        let v = only(
            check(&with(dual(), |s| s.secondary_slice_subnet = Some("fd00:80::/126".into()))),
            Rule::MaxClustersDoesNotFit,
        );
        assert!(v.message.starts_with("fd00:80::/126 (secondarySliceSubnet) cannot be split into 16"), "{v}");
    }

    #[test]
    fn the_secondary_subnet_is_immutable_and_cannot_come_or_go() {
        let v = only(validate_slice_config(&dual(), Some(&blue()), &[], &[]), Rule::SubnetImmutable);
        assert_eq!(v.field, "spec.secondarySliceSubnet");
        assert!(v.message.starts_with("cannot be added to an existing slice (now fd00:80::/48)"), "{v}");
        let v = only(validate_slice_config(&blue(), Some(&dual()), &[], &[]), Rule::SubnetImmutable);
        assert!(v.message.starts_with("cannot be removed from an existing slice (was fd00:80::/48)"), "{v}");
        let moved = with(dual(), |s| s.secondary_slice_subnet = Some("fd00:81::/48".into()));
        let v = only(validate_slice_config(&moved, Some(&dual()), &[], &[]), Rule::SubnetImmutable);
        assert!(v.message.starts_with("is immutable (was fd00:80::/48, now fd00:81::/48)"), "{v}");
        let spaced = with(dual(), |s| s.secondary_slice_subnet = Some(" fd00:80::/48".into()));
        assert_eq!(validate_slice_config(&spaced, Some(&dual()), &[], &[]), Ok(()));
    }

    #[test]
    fn the_secondary_subnet_may_not_overlap_a_clusters_cidrs() {
        let clusters = [cluster("c1", &["10.244.0.0/16", "fd00:80:0:8::/64"], &[])];
        let v = only(validate_slice_config(&dual(), None, &[], &clusters), Rule::OverlapsClusterCidr);
        assert_eq!(v.field, "spec.secondarySliceSubnet");
        assert!(
            v.message.starts_with("fd00:80::/48 overlaps the pod CIDR fd00:80:0:8::/64 of member cluster c1"),
            "{v}"
        );
    }

    #[test]
    fn every_violation_is_reported() {
        let bad = slice("X", json!({"sliceSubnet": "nope", "maxClusters": 3}));
        let v = validate_slice_config(&bad, Some(&blue()), &[], &[]).unwrap_err();
        let rules: Vec<Rule> = v.iter().map(|v| v.rule).collect();
        assert_eq!(rules, [Rule::SliceName, Rule::UnparsableSubnet, Rule::SubnetImmutable, Rule::MaxClustersImmutable]);
        assert!(message(&v).contains("; spec.sliceSubnet: \"nope\" is not a CIDR"));
    }
}
