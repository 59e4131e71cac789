//! Leader election against a scripted API server (kube-rs's mock service): the exact Lease
//! requests of acquiring a free lease, renewing it, losing it to another holder (no write after
//! the loss), failing to renew in time, taking over an expired lease, two candidates racing for
//! one (the conditional write lets one win), and a release handing over at once. Time is
//! injected (`Instant`s and wall times the test picks): nothing sleeps. Every request is checked
//! against the hub's and the worker's declared access (the same Lease entries).

mod hub_support;

use std::time::{Duration, Instant};

use hub_support::{Declared, Exchange, Seen, run_script};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use slice_operator::access::{HUB, WORKER_CLUSTER};
use slice_operator::leader::{self, Candidate, Election, LeaseTiming, Loss, Step};

const HUB_ACCESS: Declared<'static> = Declared { access: HUB, own_namespace: Some("slicenet-system") };
const WORKER_ACCESS: Declared<'static> = Declared { access: WORKER_CLUSTER, own_namespace: Some("slicenet-system") };
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/slicenet-system/leases";
const S: Duration = Duration::from_secs(1);

fn path() -> String {
    format!("{LEASES}/slicenet-hub")
}

fn election(identity: &str) -> Election {
    Election {
        namespace: "slicenet-system".into(),
        name: "slicenet-hub".into(),
        identity: identity.into(),
        timing: LeaseTiming::default(),
    }
}

fn wall(second: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + second).expect("valid time")
}

fn micro(second: i64) -> String {
    format!("{:.6}", wall(second))
}

/// A Lease as the API server returns it.
fn lease(holder: Option<&str>, rv: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "slicenet-hub", "namespace": "slicenet-system", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
                 "acquireTime": micro(-100), "renewTime": micro(-1)},
    })
}

fn writes(seen: &[Seen]) -> Vec<String> {
    seen.iter().filter(|s| s.is_write()).map(|s| format!("{} {}", s.method, s.path)).collect()
}

#[tokio::test]
async fn a_free_lease_is_created_then_renewed_with_its_resource_version() {
    let t0 = Instant::now();
    let script = vec![
        Exchange::get(path()).fail(404, "NotFound"),
        Exchange::post(LEASES)
            .body(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "slicenet-hub", "namespace": "slicenet-system"},
                "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 0,
                         "acquireTime": micro(0), "renewTime": micro(0)},
            }))
            .reply(201, lease(Some("a"), "1", 0)),
        Exchange::get(path()).ok(lease(Some("a"), "1", 0)),
        Exchange::put(path())
            .body_contains(json!({
                "metadata": {"resourceVersion": "1"},
                "spec": {"holderIdentity": "a", "leaseTransitions": 0, "acquireTime": micro(-100), "renewTime": micro(5)},
            }))
            .reply(200, lease(Some("a"), "2", 0)),
    ];
    let ((first, second, until), seen) = run_script(HUB_ACCESS, script, |client| async move {
        let mut c = Candidate::new(client, election("a"));
        let first = c.step(t0, wall(0)).await.expect("create");
        let second = c.step(t0 + 5 * S, wall(5)).await.expect("renew");
        (first, second, c.elector().leading_until())
    })
    .await;
    assert_eq!((first, second), (Step::Leading, Step::Leading));
    assert_eq!(until, Some(t0 + 15 * S), "leading until 10 s after the renewal was sent");
    assert_eq!(writes(&seen), [format!("POST {LEASES}"), format!("PUT {}", path())]);
}

#[tokio::test]
async fn a_lease_taken_by_another_holder_is_lost_without_a_write() {
    let t0 = Instant::now();
    let script = vec![
        Exchange::get(path()).ok(lease(Some("a"), "1", 0)),
        Exchange::put(path()).reply(200, lease(Some("a"), "2", 0)),
        // Someone else holds it now (an admin, or a candidate after our partition).
        Exchange::get(path()).ok(lease(Some("b"), "3", 1)),
    ];
    let (steps, seen) = run_script(HUB_ACCESS, script, |client| async move {
        let mut c = Candidate::new(client, election("a"));
        let first = c.step(t0, wall(0)).await.expect("acquire");
        let second = c.step(t0 + 5 * S, wall(5)).await.expect("read");
        (first, second, c.elector().is_leading(t0 + 5 * S))
    })
    .await;
    assert_eq!(steps, (Step::Leading, Step::Lost(Loss::HeldBy("b".into())), false));
    // The script has no write after the loss; the server fails the test on any request more.
    assert_eq!(writes(&seen), [format!("PUT {}", path())]);
}

#[tokio::test]
async fn a_leader_that_cannot_renew_in_time_stops() {
    let t0 = Instant::now();
    let script = vec![
        Exchange::get(path()).fail(404, "NotFound"),
        Exchange::post(LEASES).reply(201, lease(Some("a"), "1", 0)),
        Exchange::get(path()).ok(lease(Some("a"), "1", 0)),
        Exchange::put(path()).fail(500, "InternalError"),
        Exchange::get(path()).fail(503, "ServiceUnavailable"),
        // The API answers again, but the renew deadline (10 s after t0) has passed.
        Exchange::get(path()).ok(lease(Some("a"), "1", 0)),
    ];
    let (steps, seen) = run_script(HUB_ACCESS, script, |client| async move {
        let mut c = Candidate::new(client, election("a"));
        let acquired = c.step(t0, wall(0)).await.expect("create");
        let renew_failed = c.step(t0 + 5 * S, wall(5)).await.map_err(|e| e.to_string());
        let read_failed = c.step(t0 + 7 * S, wall(7)).await.map_err(|e| e.to_string());
        let late = c.step(t0 + 10 * S, wall(10)).await.expect("a loss is not an error");
        (acquired, renew_failed.is_err(), read_failed.is_err(), late)
    })
    .await;
    assert_eq!(steps, (Step::Leading, true, true, Step::Lost(Loss::NotRenewed(10 * S))));
    assert_eq!(writes(&seen), [format!("POST {LEASES}"), format!("PUT {}", path())]);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_only_one_racer_wins() {
    let t0 = Instant::now();
    let old = lease(Some("a"), "7", 3);
    let won = lease(Some("b"), "8", 4);
    let script = vec![
        // b and c both see a's lease …
        Exchange::get(path()).ok(old.clone()),
        Exchange::get(path()).ok(old.clone()),
        Exchange::get(path()).ok(old.clone()),
        // … unrenewed for 15 s: both try to take it over with the resourceVersion they read.
        Exchange::get(path()).ok(old.clone()),
        Exchange::put(path())
            .body_contains(json!({
                "metadata": {"resourceVersion": "7"},
                "spec": {"holderIdentity": "b", "leaseTransitions": 4, "acquireTime": micro(15), "renewTime": micro(15)},
            }))
            .reply(200, won.clone()),
        Exchange::get(path()).ok(old),
        Exchange::put(path())
            .body_contains(json!({"metadata": {"resourceVersion": "7"}, "spec": {"holderIdentity": "c"}}))
            .fail(409, "Conflict"),
        // c reads again: b holds it.
        Exchange::get(path()).ok(won),
    ];
    let (steps, seen) = run_script(HUB_ACCESS, script, |client| async move {
        let mut b = Candidate::new(client.clone(), election("b"));
        let mut c = Candidate::new(client, election("c"));
        let b_waits = b.step(t0, wall(0)).await.expect("b reads");
        let c_waits = c.step(t0, wall(0)).await.expect("c reads");
        let b_still = b.step(t0 + 14 * S, wall(14)).await.expect("b reads");
        let b_takes = b.step(t0 + 15 * S, wall(15)).await.expect("b takes over");
        let c_loses_race = c.step(t0 + 15 * S, wall(15)).await.is_err();
        let c_after = c.step(t0 + 17 * S, wall(17)).await.expect("c reads");
        (b_waits, c_waits, b_still, b_takes, c_loses_race, c_after, c.elector().is_leading(t0 + 17 * S))
    })
    .await;
    let standby = |secs: u32| Step::Standby { holder: "a".into(), expires_in: secs * S };
    assert_eq!(steps.0, standby(15));
    assert_eq!(steps.1, standby(15));
    assert_eq!(steps.2, standby(1));
    assert_eq!(steps.3, Step::Leading);
    assert!(steps.4, "the 409 keeps c a candidate");
    assert_eq!(steps.5, Step::Standby { holder: "b".into(), expires_in: 15 * S });
    assert!(!steps.6);
    assert_eq!(writes(&seen), [format!("PUT {}", path()), format!("PUT {}", path())]);
}

#[tokio::test]
async fn a_released_lease_hands_over_at_once() {
    let t0 = Instant::now();
    let mut released = lease(None, "4", 3);
    released["spec"]["leaseDurationSeconds"] = json!(1);
    let script = vec![
        // The leader a shuts down: reads its lease and gives it up.
        Exchange::get(path()).ok(lease(Some("a"), "3", 3)),
        Exchange::put(path())
            .body_contains(json!({"metadata": {"resourceVersion": "3"}, "spec": {"leaseDurationSeconds": 1}}))
            .reply(200, released.clone()),
        // The standby b takes it on its next look, without waiting for an expiry.
        Exchange::get(path()).ok(released),
        Exchange::put(path())
            .body_contains(
                json!({"metadata": {"resourceVersion": "4"}, "spec": {"holderIdentity": "b", "leaseTransitions": 4}}),
            )
            .reply(200, lease(Some("b"), "5", 4)),
    ];
    let ((was_released, step), seen) = run_script(WORKER_ACCESS, script, |client| async move {
        let was_released = leader::release(client.clone(), &election("a")).await.expect("release");
        let mut b = Candidate::new(client, election("b"));
        (was_released, b.step(t0, wall(0)).await.expect("b acquires"))
    })
    .await;
    assert!(was_released);
    assert_eq!(step, Step::Leading);
    let release = seen.iter().find(|s| s.method == "PUT").expect("the release");
    assert!(release.body["spec"].get("holderIdentity").is_none(), "{}", release.body);
}

#[tokio::test]
async fn a_replica_that_does_not_hold_the_lease_releases_nothing() {
    let script = vec![Exchange::get(path()).ok(lease(Some("b"), "3", 3)), Exchange::get(path()).fail(404, "NotFound")];
    let (results, seen) = run_script(HUB_ACCESS, script, |client| async move {
        let held_by_other = leader::release(client.clone(), &election("a")).await.expect("read");
        let gone = leader::release(client, &election("a")).await.expect("read");
        (held_by_other, gone)
    })
    .await;
    assert_eq!(results, (false, false));
    assert_eq!(writes(&seen), Vec::<String>::new());
}
