//! `slicectl join`: the MemberCluster that registers a cluster with the hub.
//!
//! The hub controller, on seeing it, creates the cluster's namespace `slicenet-cluster-<name>`
//! and plans the cluster into the slices that name it. With the hub admin's kubeconfig,
//! `slicectl join` applies it together with the worker's access on the hub and writes the join
//! file ([`crate::register`]).

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use slice_api::crd::{MemberCluster, MemberClusterSpec};

use crate::manifest::Manifest;

/// What `slicectl join` is told about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOptions {
    pub cluster: String,
    pub pod_cidrs: Vec<String>,
    pub service_cidrs: Vec<String>,
    pub multus: bool,
    /// The cluster's gateway uplink rate, kbit/s (QoS).
    pub uplink_kbps: Option<u64>,
}

/// The MemberCluster for `opts`, CIDRs normalised (`10.244.0.0/16`).
///
/// # Errors
/// When the name is not a valid cluster name or a CIDR does not parse or has host bits set.
pub fn member_cluster(opts: &JoinOptions) -> Result<MemberCluster> {
    crate::install::check_cluster_name(&opts.cluster)?;
    let cidrs = |flag: &str, list: &[String]| -> Result<Vec<String>> {
        list.iter()
            .map(|c| {
                let net: IpNet = c.trim().parse().with_context(|| format!("{flag} {c:?} is not a CIDR"))?;
                if net.trunc() != net {
                    bail!("{flag} {c:?} has host bits set: did you mean {}?", net.trunc());
                }
                Ok(net.to_string())
            })
            .collect()
    };
    let spec = MemberClusterSpec {
        pod_cidrs: cidrs("--pod-cidr", &opts.pod_cidrs)?,
        service_cidrs: cidrs("--service-cidr", &opts.service_cidrs)?,
        multus: opts.multus,
        uplink_kbps: opts.uplink_kbps,
    };
    let mut mc = MemberCluster::new(&opts.cluster, spec);
    mc.metadata = ObjectMeta {
        name: Some(opts.cluster.clone()),
        labels: Some(crate::install::labels("slicenet")),
        ..ObjectMeta::default()
    };
    Ok(mc)
}

/// The MemberCluster as YAML for `kubectl apply -f -` on the hub.
///
/// # Errors
/// See [`member_cluster`].
pub fn manifest(opts: &JoinOptions) -> Result<Manifest> {
    let mut m = Manifest::new();
    m.push_commented(
        &[&format!("Registers cluster {:?} with the hub: apply on the hub.", opts.cluster)],
        &member_cluster(opts)?,
    )?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> JoinOptions {
        JoinOptions {
            cluster: "east".to_owned(),
            pod_cidrs: vec!["10.244.0.0/16".to_owned()],
            service_cidrs: vec!["fd00:10:96::/112".to_owned()],
            multus: true,
            uplink_kbps: None,
        }
    }

    #[test]
    fn builds_the_member_cluster() {
        let mc = member_cluster(&opts()).unwrap();
        assert_eq!(mc.metadata.name.as_deref(), Some("east"));
        assert_eq!(mc.spec.pod_cidrs, ["10.244.0.0/16"]);
        assert_eq!(mc.spec.service_cidrs, ["fd00:10:96::/112"]);
        assert!(mc.spec.multus);
        let yaml = manifest(&opts()).unwrap().to_yaml().unwrap();
        assert!(
            yaml.contains("kind: MemberCluster\n") && yaml.contains("apiVersion: slicenet.io/v1alpha1\n"),
            "{yaml}"
        );
        let back: MemberCluster = yaml_serde::from_str(&yaml).unwrap();
        assert_eq!(back.spec, mc.spec);
    }

    #[test]
    fn refuses_bad_names_and_cidrs() {
        let e = member_cluster(&JoinOptions { pod_cidrs: vec!["10.244.0.1/16".to_owned()], ..opts() }).unwrap_err();
        assert!(e.to_string().contains("did you mean 10.244.0.0/16"), "{e}");
        let e = member_cluster(&JoinOptions { service_cidrs: vec!["nope".to_owned()], ..opts() }).unwrap_err();
        assert!(e.to_string().contains("--service-cidr \"nope\" is not a CIDR"), "{e}");
        for bad in ["", "East", "-a", "a-", "a_b", &"x".repeat(47)] {
            assert!(member_cluster(&JoinOptions { cluster: bad.to_owned(), ..opts() }).is_err(), "{bad:?}");
        }
        assert!(member_cluster(&JoinOptions { cluster: "x".repeat(46), ..opts() }).is_ok());
    }
}
