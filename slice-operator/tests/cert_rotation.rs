//! The webhook certificate's renewal against a scripted API server (kube-rs's mock service,
//! `hub_support`): the exact requests of a renewal (two reads, one replace carrying the
//! resourceVersion read), of a fresh certificate (reads only), of a replace that meets a
//! concurrent write (409: an outcome, not an error, and the next pass renews), of someone
//! else's certificate and of a missing CA (no write), and of a replica that lost the lead (no
//! write). Every request is checked against the hub's and the worker's declared access (the
//! Secrets by name). Time is injected: the certificates are made at a fixed instant and the
//! passes run at chosen days after it.

mod hub_support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hub_support::{Declared, Exchange, Seen, run_script};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use slice_operator::access::{HUB, WORKER_CLUSTER};
use slice_operator::cert_rotation::{
    self, Ca, Decision, MEMBER, Outcome, Problem, RotationError, Rotator, ServingPair, Target, decide, issue, new_ca,
};
use slice_operator::events::reason;
use slice_operator::leader::Leadership;

const HUB_ACCESS: Declared<'static> = Declared { access: HUB, own_namespace: Some("slicenet-system") };
const WORKER_ACCESS: Declared<'static> = Declared { access: WORKER_CLUSTER, own_namespace: Some("slicenet-system") };
const SECRETS: &str = "/api/v1/namespaces/slicenet-system/secrets";
const T0: i64 = 1_800_000_000;
const DAY: i64 = 24 * 60 * 60;

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(T0 + seconds).expect("valid time")
}

fn names() -> Vec<String> {
    vec!["slicenet-webhook.slicenet-system.svc".to_owned(), "slicenet-hub-webhook.slicenet-system.svc".to_owned()]
}

/// What `slicectl install` leaves: a CA and a serving certificate made at `T0`.
fn installed() -> (Ca, ServingPair) {
    let ca = new_ca(t(0)).expect("CA");
    let pair = issue(&ca, &names(), t(0)).expect("serving certificate");
    (ca, pair)
}

fn b64(text: &str) -> String {
    STANDARD.encode(text)
}

fn ca_secret(target: Target, ca: &Ca) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": target.ca_secret, "namespace": "slicenet-system", "resourceVersion": "3"},
           "data": {"ca.crt": b64(&ca.cert_pem), "ca.key": b64(&ca.key_pem)}})
}

fn tls_secret(target: Target, ca_pem: &str, pair: &ServingPair) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": target.tls_secret, "namespace": "slicenet-system", "resourceVersion": "7",
                        "uid": "uid-tls", "labels": {"app.kubernetes.io/part-of": "slicenet"}},
           "data": {"ca.crt": b64(ca_pem), "tls.crt": b64(&pair.cert_pem), "tls.key": b64(&pair.key_pem)}})
}

fn decoded(secret: &Value, key: &str) -> String {
    let text = secret["data"][key].as_str().unwrap_or_else(|| panic!("no {key} in {secret}"));
    String::from_utf8(STANDARD.decode(text).expect("base64")).expect("UTF-8")
}

fn reads(target: Target, ca: &Ca, tls: Value) -> Vec<Exchange> {
    vec![
        Exchange::get(format!("{SECRETS}/{}", target.ca_secret)).ok(ca_secret(target, ca)),
        Exchange::get(format!("{SECRETS}/{}", target.tls_secret)).ok(tls),
    ]
}

/// One pass of `target`'s rotator at `now` against `script`.
async fn pass(
    declared: Declared<'static>,
    target: Target,
    leadership: Leadership,
    now: Timestamp,
    script: Vec<Exchange>,
) -> (Result<Outcome, RotationError>, Vec<Seen>) {
    run_script(declared, script, |client| async move {
        Rotator::new(client, target).with_leadership(leadership).pass(now).await
    })
    .await
}

fn writes(seen: &[Seen]) -> Vec<String> {
    seen.iter().filter(|s| s.is_write() && !s.is_event()).map(|s| format!("{} {}", s.method, s.path)).collect()
}

/// (type, reason, regarding) of each Event created.
fn events(seen: &[Seen]) -> Vec<(String, String, String)> {
    seen.iter()
        .filter(|s| s.is_event() && s.method == "POST")
        .map(|s| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let r = &s.body["regarding"];
            (
                text(&s.body["type"]),
                text(&s.body["reason"]),
                format!("{}/{}/{}", text(&r["kind"]), text(&r["namespace"]), text(&r["name"])),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_due_certificate_is_renewed_with_one_conditional_replace_on_the_hub_and_in_member_clusters() {
    for (declared, target) in [(WORKER_ACCESS, MEMBER), (HUB_ACCESS, cert_rotation::HUB)] {
        let (ca, old) = installed();
        let mut script = reads(target, &ca, tls_secret(target, &ca.cert_pem, &old));
        // The replace names the resourceVersion read: the API server's precondition.
        script.push(Exchange::put(format!("{SECRETS}/{}", target.tls_secret)).body_contains(
            json!({"metadata": {"name": target.tls_secret, "resourceVersion": "7",
                                                   "labels": {"app.kubernetes.io/part-of": "slicenet"}},
                                      "type": "kubernetes.io/tls"}),
        ));
        let (outcome, seen) = pass(declared, target, Leadership::unconditional(), t(61 * DAY), script).await;
        assert_eq!(outcome.expect("renewed"), Outcome::Renewed { not_after: t(151 * DAY) });
        assert_eq!(writes(&seen), [format!("PUT {SECRETS}/{}", target.tls_secret)], "exactly one write");
        let written = &seen.iter().find(|s| s.method == "PUT").expect("the replace").body;
        assert_eq!(decoded(written, "ca.crt"), ca.cert_pem, "the caBundle's CA stays");
        let new = ServingPair {
            cert_pem: decoded(written, "tls.crt"),
            key_pem: decoded(written, "tls.key"),
            not_after: t(151 * DAY),
        };
        assert_ne!(new.cert_pem, old.cert_pem);
        assert_ne!(new.key_pem, old.key_pem, "a new key pair");
        assert!(
            matches!(decide(t(61 * DAY), &new.cert_pem, &ca.cert_pem), Decision::Keep { .. }),
            "fresh and the CA's"
        );
        // The same names, served with the same CA: the caBundle needs no change.
        let Decision::Renew { dns_names, expired: false } = decide(t(150 * DAY), &new.cert_pem, &ca.cert_pem) else {
            panic!("due again at 150 days")
        };
        assert_eq!(dns_names, names());
        assert_eq!(
            events(&seen),
            [(
                "Normal".to_owned(),
                reason::WEBHOOK_CERTIFICATE_RENEWED.to_owned(),
                format!("Secret/slicenet-system/{}", target.tls_secret)
            )]
        );
    }
}

#[tokio::test]
async fn a_fresh_certificate_is_read_and_kept_without_a_write_or_an_event() {
    let (ca, pair) = installed();
    let script = reads(MEMBER, &ca, tls_secret(MEMBER, &ca.cert_pem, &pair));
    let (outcome, seen) = pass(WORKER_ACCESS, MEMBER, Leadership::unconditional(), t(30 * DAY), script).await;
    assert!(matches!(outcome.expect("kept"), Outcome::Kept { renew_at } if renew_at > t(59 * DAY)));
    assert_eq!(writes(&seen), Vec::<String>::new());
    assert!(seen.iter().all(|s| !s.is_event()), "no news: no event");
}

#[tokio::test]
async fn a_conflict_is_an_outcome_and_the_next_pass_renews() {
    let (ca, old) = installed();
    let mut script = reads(MEMBER, &ca, tls_secret(MEMBER, &ca.cert_pem, &old));
    script.push(Exchange::put(format!("{SECRETS}/{}", MEMBER.tls_secret)).fail(409, "Conflict"));
    let (outcome, seen) = pass(WORKER_ACCESS, MEMBER, Leadership::unconditional(), t(70 * DAY), script).await;
    assert_eq!(outcome.expect("a 409 does not fail the pass"), Outcome::Conflict);
    assert_eq!(writes(&seen).len(), 1);
    assert!(seen.iter().all(|s| !s.is_event()), "a conflict is not news");
    // The next pass reads what is there now and renews it.
    let mut script = reads(MEMBER, &ca, tls_secret(MEMBER, &ca.cert_pem, &old));
    script.push(Exchange::put(format!("{SECRETS}/{}", MEMBER.tls_secret)));
    let (outcome, _) = pass(WORKER_ACCESS, MEMBER, Leadership::unconditional(), t(70 * DAY), script).await;
    assert_eq!(outcome.expect("renewed"), Outcome::Renewed { not_after: t(160 * DAY) });
}

#[tokio::test]
async fn someone_elses_certificate_is_reported_and_never_written() {
    let (ca, _) = installed();
    // The user's own certificate (say cert-manager's), from another CA, in the TLS Secret,
    // expired even: reported, not replaced.
    let (other_ca, theirs) = installed();
    let script = reads(MEMBER, &ca, tls_secret(MEMBER, &other_ca.cert_pem, &theirs));
    let (outcome, seen) = pass(WORKER_ACCESS, MEMBER, Leadership::unconditional(), t(100 * DAY), script).await;
    assert!(matches!(outcome.expect("a problem is an outcome"), Outcome::Problem(Problem::NotSignedByCa(_))));
    assert_eq!(writes(&seen), Vec::<String>::new());
    assert_eq!(
        events(&seen),
        [(
            "Warning".to_owned(),
            reason::WEBHOOK_CERTIFICATE_PROBLEM.to_owned(),
            "Secret/slicenet-system/slicenet-webhook-tls".to_owned()
        )]
    );
    // An expired CA: reported, not renewed.
    let (ca, pair) = installed();
    let script = reads(MEMBER, &ca, tls_secret(MEMBER, &ca.cert_pem, &pair));
    let (outcome, seen) = pass(WORKER_ACCESS, MEMBER, Leadership::unconditional(), t(3651 * DAY), script).await;
    assert!(matches!(outcome.expect("an outcome"), Outcome::Problem(Problem::CaNotValid { .. })));
    assert_eq!(writes(&seen), Vec::<String>::new());
}

#[tokio::test]
async fn without_a_ca_secret_nothing_is_read_further_or_written() {
    let script = vec![Exchange::get(format!("{SECRETS}/{}", MEMBER.ca_secret)).fail(404, "NotFound")];
    let (outcome, seen) = pass(WORKER_ACCESS, MEMBER, Leadership::unconditional(), t(0), script).await;
    assert_eq!(outcome.expect("the user's own certificate"), Outcome::NoCa);
    assert_eq!(seen.len(), 1);
}

#[tokio::test]
async fn a_replica_that_does_not_lead_reads_but_never_writes() {
    let (ca, old) = installed();
    let script = reads(MEMBER, &ca, tls_secret(MEMBER, &ca.cert_pem, &old));
    let (outcome, seen) = pass(WORKER_ACCESS, MEMBER, Leadership::candidate(), t(80 * DAY), script).await;
    assert!(matches!(outcome, Err(RotationError::NotLeading(_))), "{outcome:?}");
    assert!(seen.iter().all(|s| !s.is_write()), "no write, no event");
}
