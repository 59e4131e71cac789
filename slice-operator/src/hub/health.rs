//! A member cluster's `Healthy` condition, from the age of the heartbeat its worker writes into
//! `status.lastHeartbeat` (pure: the time is an argument).
//!
//! The messages never contain the age itself, only fixed facts (the heartbeat's own time, the
//! timeout), so a cluster whose state holds produces the same condition on every reconcile and
//! the hub writes nothing.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use slice_api::crd::{Condition, MemberClusterStatus};

/// Condition type on `MemberCluster`s: the cluster's worker has reported recently.
pub const HEALTHY: &str = "Healthy";

/// The `Healthy` condition at `now`, and how long it stays true (when it is true), so that the
/// caller can come back exactly when the heartbeat goes stale.
#[must_use]
pub fn healthy_condition(
    status: Option<&MemberClusterStatus>,
    now: Timestamp,
    stale_after: Duration,
) -> (Condition, Option<Duration>) {
    let Some(raw) = status.and_then(|s| s.last_heartbeat.as_deref()) else {
        let mut c = Condition::new(HEALTHY, false, "NoHeartbeat", "the cluster's worker has not reported yet");
        c.status = "Unknown".to_owned();
        return (c, None);
    };
    let Ok(beat) = raw.parse::<Timestamp>() else {
        let message = format!("status.lastHeartbeat {raw:?} is not an RFC 3339 time");
        return (Condition::new(HEALTHY, false, "InvalidHeartbeat", message), None);
    };
    let timeout = stale_after.as_secs();
    // A heartbeat from the future (clock skew) counts as fresh, for at most one timeout.
    let age = now.duration_since(beat).as_secs_f64().max(0.0);
    if age <= stale_after.as_secs_f64() {
        let left = Duration::from_secs_f64(stale_after.as_secs_f64() - age);
        let message = format!("the cluster's worker reported within the last {timeout} s");
        (Condition::new(HEALTHY, true, "HeartbeatFresh", message), Some(left))
    } else {
        let message = format!("no heartbeat from the cluster's worker since {raw} (stale after {timeout} s)");
        (Condition::new(HEALTHY, false, "HeartbeatStale", message), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid test time")
    }

    fn beat(raw: &str) -> MemberClusterStatus {
        MemberClusterStatus { last_heartbeat: Some(raw.to_owned()), ..MemberClusterStatus::default() }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn fresh_heartbeat_is_healthy_until_it_goes_stale() {
        let status = beat(&at(1_000).to_string());
        let (c, left) = healthy_condition(Some(&status), at(1_045), MINUTE);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "HeartbeatFresh"));
        assert_eq!(left, Some(Duration::from_secs(15)));
        let (later, _) = healthy_condition(Some(&status), at(1_050), MINUTE);
        assert_eq!(later, c, "the condition does not change while the heartbeat stays fresh");
    }

    #[test]
    fn stale_heartbeat_says_since_when() {
        let status = beat("1970-01-01T00:16:40Z");
        let (c, left) = healthy_condition(Some(&status), at(1_061), MINUTE);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "HeartbeatStale"));
        assert!(c.message.contains("since 1970-01-01T00:16:40Z (stale after 60 s)"), "{}", c.message);
        assert_eq!(left, None);
        let (later, _) = healthy_condition(Some(&status), at(5_000), MINUTE);
        assert_eq!(later, c, "the message does not tick with the age");
    }

    #[test]
    fn missing_future_and_garbled_heartbeats() {
        let (c, _) = healthy_condition(None, at(10), MINUTE);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("Unknown", "NoHeartbeat"));
        let (c, left) = healthy_condition(Some(&beat(&at(100).to_string())), at(10), MINUTE);
        assert_eq!(c.status, "True");
        assert_eq!(left, Some(MINUTE), "a heartbeat from the future is fresh for one timeout at most");
        let (c, _) = healthy_condition(Some(&beat("yesterday")), at(10), MINUTE);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InvalidHeartbeat"));
    }
}
