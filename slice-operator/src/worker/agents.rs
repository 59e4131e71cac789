//! The node agents' state for the MemberCluster's status, pure: from the cluster's nodes and
//! the agents' Leases (`slicenet-agent-<node>` in `slicenet-node`, see `slice_node::lease`).
//!
//! | reason | when |
//! | --- | --- |
//! | `NoLease` | the node has no agent Lease |
//! | `LeaseExpired` | its renew time plus its duration is past |
//! | `CniNotChained` | the agent runs but says the node's runtime does not chain slice-cni |
//!
//! Nothing is reported while no agent has a Lease at all (agents older than this version):
//! every node would read `NoLease` for a reason that is not a fault.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use slice_api::crd::{AgentProblem, AgentsStatus};
use slice_api::names::{AGENT_CNI_ANNOTATION, AGENT_CNI_CHAINED, AGENT_LEASE_PREFIX, AGENT_VERSION_ANNOTATION};

/// The agents of `nodes` from `leases` at `now`; `None` when no agent Lease exists.
#[must_use]
pub fn agents_status(nodes: &[String], leases: &[Lease], now: Timestamp) -> Option<AgentsStatus> {
    let by_node: BTreeMap<&str, &Lease> = leases
        .iter()
        .filter_map(|l| Some((l.metadata.name.as_deref()?.strip_prefix(AGENT_LEASE_PREFIX)?, l)))
        .collect();
    if by_node.is_empty() {
        return None;
    }
    let nodes: BTreeSet<&str> = nodes.iter().map(String::as_str).collect();
    let mut status = AgentsStatus { nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX), ..AgentsStatus::default() };
    let mut versions = BTreeSet::new();
    let mut problems = Vec::new();
    let problem = |node: &str, reason: &str, message: String| AgentProblem {
        node: node.to_owned(),
        reason: reason.to_owned(),
        message,
    };
    for node in nodes {
        let Some(lease) = by_node.get(node) else {
            problems.push(problem(node, "NoLease", "its node agent has not renewed a Lease: it is not running".into()));
            continue;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let renewed = spec.renew_time.map(|t| t.0);
        let holds = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        let fresh = renewed.is_some_and(|at| now.as_second() - at.as_second() <= holds);
        if !fresh {
            let when = renewed.map_or_else(|| "never".to_owned(), |t| format!("{t:.0}"));
            problems.push(problem(
                node,
                "LeaseExpired",
                format!("its node agent last renewed its Lease at {when} (it holds {holds} s): it stopped or cannot reach the API server"),
            ));
            continue;
        }
        status.ready += 1;
        let annotations = lease.annotations();
        if let Some(v) = annotations.get(AGENT_VERSION_ANNOTATION) {
            versions.insert(v.clone());
        }
        if let Some(cni) = annotations.get(AGENT_CNI_ANNOTATION).filter(|c| *c != AGENT_CNI_CHAINED) {
            problems.push(problem(node, "CniNotChained", cni.clone()));
        }
    }
    problems.truncate(AgentsStatus::MAX_PROBLEMS);
    status.versions = versions.into_iter().collect();
    status.problems = problems;
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, renewed: &str, version: &str, cni: Option<&str>) -> Lease {
        let now: Timestamp = renewed.parse().unwrap();
        serde_json::from_value(slice_node::lease::lease(node, version, cni, now)).unwrap()
    }

    #[test]
    fn agents_are_ready_expired_missing_or_unchained() {
        let now: Timestamp = "2026-12-04T20:00:30Z".parse().unwrap();
        let nodes: Vec<String> = ["n1", "n2", "n3", "n4"].map(String::from).to_vec();
        let leases = [
            lease("n1", "2026-12-04T20:00:25Z", "0.4.0", Some("chained")),
            lease("n2", "2026-12-04T19:59:00Z", "0.4.0", Some("chained")),
            lease(
                "n4",
                "2026-12-04T20:00:20Z",
                "0.3.9",
                Some("05-x.conflist, the configuration the runtime uses, does not chain slice-cni"),
            ),
            // A Lease of a node that is gone is ignored.
            lease("gone", "2026-12-04T20:00:20Z", "0.4.0", None),
        ];
        let s = agents_status(&nodes, &leases, now).expect("reported");
        assert_eq!((s.nodes, s.ready), (4, 2));
        assert_eq!(s.versions, ["0.3.9", "0.4.0"]);
        let got: Vec<(&str, &str)> = s.problems.iter().map(|p| (p.node.as_str(), p.reason.as_str())).collect();
        assert_eq!(got, [("n2", "LeaseExpired"), ("n3", "NoLease"), ("n4", "CniNotChained")]);
        assert!(s.problems[0].message.contains("2026-12-04T19:59:00Z"), "{}", s.problems[0].message);
        assert!(s.problems[2].message.starts_with("05-x.conflist"));
        // No agent Lease at all: nothing to say.
        assert_eq!(agents_status(&nodes, &[], now), None);
        // At most MAX_PROBLEMS listed; the counts stay exact.
        let many: Vec<String> = (0..50).map(|i| format!("m{i:02}")).collect();
        let s = agents_status(&many, &leases, now).unwrap();
        assert_eq!((s.nodes, s.ready, s.problems.len()), (50, 0, AgentsStatus::MAX_PROBLEMS));
    }
}
