//! Convergence of the control plane in the lab: from applying a changed SliceConfig to the
//! first packet across the new path. The change is a registered cluster joining the slice; the
//! packet goes from a pod in c1 to the slice member that appears in the new cluster (its
//! gateway pod), so pod start-up is not counted. Each round the cluster joins, the time is
//! taken, and it leaves again.
//!
//! And names ([`measure_names`]): an endpoint of an exported service turning unready in one
//! cluster, to the changed answer of another cluster's slice-dns.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::control::{self, ControlPlane, parse_manifest, run_pod_retrying};
use crate::{Lab, PodSpec};

/// One join: when the control plane had done its part, and when the first packet got through.
#[derive(Debug, Clone, Copy)]
pub struct Join {
    pub control_plane: Duration,
    pub first_packet: Duration,
}

const YAML: &str = r#"
apiVersion: slicenet.io/v1alpha1
kind: MemberCluster
metadata: {name: c1, annotations: {lab.slicenet.io/nodes: "2"}}
spec: {}
---
apiVersion: slicenet.io/v1alpha1
kind: MemberCluster
metadata: {name: c2, annotations: {lab.slicenet.io/nodes: "1"}}
spec: {}
---
apiVersion: slicenet.io/v1alpha1
kind: MemberCluster
metadata: {name: c3, annotations: {lab.slicenet.io/nodes: "1"}}
spec: {}
---
apiVersion: slicenet.io/v1alpha1
kind: SliceConfig
metadata: {name: blue}
spec:
  sliceSubnet: 10.80.0.0/16
  maxClusters: 4
  clusters: [c1, c2]
  namespaces: [{namespace: shop}]
  gateway: {replicas: 1}
"#;

/// Builds a lab of three clusters (c1 with two nodes) with a slice over c1 and c2, and times
/// `rounds` joins of c3.
///
/// # Errors
/// When the lab cannot be built or a join does not converge within 20 s.
pub fn measure(prefix: &str, rounds: usize) -> Result<Vec<Join>> {
    let base = parse_manifest(YAML)?;
    let with = |clusters: &[&str]| {
        let mut m = base.clone();
        m.slices[0].spec.clusters = clusters.iter().map(|c| (*c).to_owned()).collect();
        m
    };
    let mut lab = Lab::new(prefix)?;
    let mut cp = ControlPlane::new();
    cp.apply(&mut lab, &with(&["c1", "c2"]))?;
    let probe = run_pod_retrying(lab.node("c1", "n2"), &PodSpec::new("shop", "probe"), Duration::from_secs(20))?;
    let mut joins = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        cp.apply(&mut lab, &with(&["c1", "c2", "c3"]))?;
        let control_plane = t0.elapsed();
        let target = cp.gateway_address("blue", "c3").context("c3 runs no gateway")?;
        let first_packet = control::first_packet(&probe, target, t0, Duration::from_secs(20))?;
        joins.push(Join { control_plane, first_packet });
        cp.apply(&mut lab, &with(&["c1", "c2"]))?;
    }
    cp.delete_all(&mut lab)?;
    lab.teardown()?;
    Ok(joins)
}

/// One endpoint change: until the other cluster's slice-dns stopped answering with the
/// endpoint, and (once ready again) until it answered with it again.
#[derive(Debug, Clone, Copy)]
pub struct NameChange {
    pub removed: Duration,
    pub restored: Duration,
}

/// Builds the three-cluster lab (c3 behind NAT) with `db` exported from c1 (`db-0`) and c2
/// (`db-1`) and times `rounds` times the readiness of `db-1` going and coming back, each until
/// c3's slice-dns answers `db.shop.svc.clusterset.local` accordingly (asked from a pod in c3
/// every round of the control plane, the rounds run back to back as watch events would drive
/// them).
///
/// # Errors
/// When the lab cannot be built or an answer does not change within 20 s.
pub fn measure_names(prefix: &str, rounds: usize) -> Result<Vec<NameChange>> {
    let mut lab = Lab::new(prefix)?;
    let mut cp = ControlPlane::new();
    cp.apply(&mut lab, &control::blue_over(&["c1", "c2", "c3"])?)?;
    cp.apply_in(&lab, "c1", &control::workloads::exported_services(0)?)?;
    cp.apply_in(&lab, "c2", &control::workloads::exported_services(1)?)?;
    let client = control::workloads::parse_objects(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: probe, namespace: shop}\nspec: {containers: [{name: c}]}\n",
    )?;
    cp.apply_in(&lab, "c3", &client)?;
    let name = "db.shop.svc.clusterset.local";
    let count = |cp: &mut ControlPlane, lab: &Lab| -> Result<usize> {
        let server = cp.dns_server("c3").context("c3 runs no slice-dns")?;
        let at = format!("@{}", server.ip());
        Ok(control::dns::dig(cp, lab, ("c3", "shop", "probe"), &[&at, name])?.data.len())
    };
    let until = |cp: &mut ControlPlane, lab: &Lab, want: usize, since: Instant| -> Result<Duration> {
        let deadline = since + Duration::from_secs(20);
        loop {
            cp.tick(lab)?;
            if count(cp, lab)? == want {
                return Ok(since.elapsed());
            }
            anyhow::ensure!(Instant::now() < deadline, "{name} did not come to {want} answers within 20 s");
        }
    };
    until(&mut cp, &lab, 2, Instant::now())?;
    let mut changes = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        cp.mark_pod_ready("c2", "shop", "db-1", false)?;
        let removed = until(&mut cp, &lab, 1, t0)?;
        let t1 = Instant::now();
        cp.mark_pod_ready("c2", "shop", "db-1", true)?;
        let restored = until(&mut cp, &lab, 2, t1)?;
        changes.push(NameChange { removed, restored });
    }
    cp.delete_all(&mut lab)?;
    lab.teardown()?;
    Ok(changes)
}
