//! Convergence of the control plane in the lab: from applying a changed SliceConfig to the
//! first packet across the new path. The change is a registered cluster joining the slice; the
//! packet goes from a pod in c1 to the slice member that appears in the new cluster (its
//! gateway pod), so pod start-up is not counted. Each round the cluster joins, the time is
//! taken, and it leaves again.

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
