//! `AdmissionReview` bodies as the API server posts them to the webhook: the pod mutation (both
//! modes) and the SliceConfig validation, everything behind the HTTP handler. Properties: a body
//! is answered with a review for the same uid (and a patch that decodes to a JSON Patch) or
//! refused with a reason, never a panic.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::Value;
use webhooks::hub::StaticHub;
use webhooks::membership::StaticMembership;
use webhooks::mutate::Mode;
use webhooks::review::{self, ReviewError};

use crate::MAX_INPUT;

pub const DICTIONARY: &[&str] = &[
    "apiVersion",
    "admission.k8s.io/v1",
    "kind",
    "AdmissionReview",
    "request",
    "uid",
    "operation",
    "CREATE",
    "UPDATE",
    "DELETE",
    "CONNECT",
    "object",
    "oldObject",
    "namespace",
    "metadata",
    "annotations",
    "labels",
    "k8s.v1.cni.cncf.io/networks",
    "slicenet.io/slice",
    "slicenet.io/exclude",
    "true",
    "Pod",
    "SliceConfig",
    "slicenet.io",
    "v1alpha1",
    "spec",
    "sliceSubnet",
    "maxClusters",
    "nodePrefixLength",
    "clusters",
    "namespaces",
    "10.80.0.0/16",
    "fd00::/48",
    "shop",
    "bank",
    "default",
    "blue",
    "red",
    "slice-blue@slice0",
    "[{\"name\":\"slice-blue\",\"namespace\":\"shop\"}]",
    "group",
    "version",
    "dryRun",
    "name",
];

/// The membership the pod reviews see: `shop` in blue, `bank` in red and blue.
fn membership() -> &'static StaticMembership {
    static M: OnceLock<StaticMembership> = OnceLock::new();
    M.get_or_init(|| {
        StaticMembership::from_slices(&BTreeMap::from([
            ("blue".to_owned(), vec!["shop".to_owned(), "bank".to_owned()]),
            ("red".to_owned(), vec!["bank".to_owned()]),
        ]))
    })
}

/// The hub the SliceConfig reviews see (the same one as the slice-config target).
fn hub() -> &'static StaticHub {
    static H: OnceLock<StaticHub> = OnceLock::new();
    H.get_or_init(|| StaticHub { slices: super::slice_config::others(), clusters: super::slice_config::clusters() })
}

/// Checks an answer: a v1 AdmissionReview for the request's uid, its patch (if any) a JSON Patch.
fn check_answer(body: &Value, answer: &[u8]) {
    let answer: Value = serde_json::from_slice(answer).expect("the answer is JSON");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    assert_eq!(answer["response"]["uid"], body["request"]["uid"], "{answer}");
    assert!(answer["response"]["allowed"].is_boolean(), "{answer}");
    if let Some(patch) = answer["response"].get("patch") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch.as_str().expect("the patch is a string"))
            .expect("the patch is base64");
        let ops: Value = serde_json::from_slice(&bytes).expect("the patch is JSON");
        let ops = ops.as_array().expect("a JSON Patch is a list");
        assert!(ops.iter().all(|op| op["op"].is_string() && op["path"].is_string()), "{ops:?}");
    }
}

fn check(body: &[u8], outcome: Result<Vec<u8>, ReviewError>) {
    match outcome {
        Ok(answer) => match serde_json::from_slice::<Value>(body) {
            Ok(body) => check_answer(&body, &answer),
            // serde skips the fields a review does not have without checking their escapes
            // (e.g. a lone surrogate `\udc00`), so a body can be a review and not a `Value`.
            Err(_) => {
                let answer: Value = serde_json::from_slice(&answer).expect("the answer is JSON");
                assert!(answer["response"]["uid"].is_string(), "{answer}");
            }
        },
        Err(ReviewError::BadRequest(reason)) => assert!(!reason.is_empty()),
        // Static sources are always readable.
        Err(ReviewError::Unavailable(reason)) => panic!("unavailable with static sources: {reason}"),
    }
}

pub fn run(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    for mode in [Mode::Chained, Mode::Multus] {
        check(data, review::review_pod(data, membership(), mode, "slice0"));
    }
    check(data, review::review_slice_config(data, hub()));
}
