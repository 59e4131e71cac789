//! The two webhooks through the real HTTPS server, with AdmissionReview v1 fixtures as the API
//! server sends them: the returned JSON Patch applied to the pod gives exactly the expected pod,
//! and every SliceConfig rule is accepted and rejected with its message.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{TestServer, apply, patch_of, pod, pod_create, review};
use serde_json::{Value, json};
use slice_api::crd::{MemberCluster, MemberClusterSpec, SliceConfig};
use webhooks::hub::StaticHub;
use webhooks::membership::{NamespaceInfo, StaticMembership};
use webhooks::mutate::Mode;
use webhooks::server::{MUTATE_POD_PATH, Settings, VALIDATE_SLICECONFIG_PATH};

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";

/// shop → blue, bank → red (labels implied as in the ConfigMap); `labelled` carries the blue
/// label but blue does not allow it here.
fn membership() -> StaticMembership {
    let slices =
        BTreeMap::from([("blue".to_owned(), vec!["shop".to_owned()]), ("red".to_owned(), vec!["bank".to_owned()])]);
    StaticMembership::from_slices(&slices).with_namespace(
        "labelled",
        NamespaceInfo {
            labels: BTreeMap::from([("slicenet.io/slice".to_owned(), "blue".to_owned())]),
            member_slices: vec![],
        },
    )
}

async fn server(mode: Mode) -> TestServer {
    let settings = Settings { mode, ..Settings::default() };
    TestServer::start(settings, Arc::new(membership()), Arc::new(StaticHub::default()), None).await
}

/// Sends the pod, applies the patch, compares with the pod with `expected` annotations (null:
/// unchanged, no patch at all), then sends the result again: no patch (reinvocation).
async fn mutation_case(s: &TestServer, pod: Value, expected: Value) -> Value {
    for dry_run in [false, true] {
        let answer = s.review(MUTATE_POD_PATH, &pod_create(&pod, dry_run)).await;
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let after = apply(&pod, &answer);
        let mut want = pod.clone();
        if expected.is_null() {
            assert!(patch_of(&answer).is_none(), "unrelated pod got a patch: {answer}");
        } else {
            want["metadata"]["annotations"] = expected.clone();
        }
        assert_eq!(after, want, "patched pod differs; answer {answer}");
        let again = s.review(MUTATE_POD_PATH, &pod_create(&after, dry_run)).await;
        assert!(patch_of(&again).is_none(), "not idempotent: {again}");
        if !dry_run {
            return answer;
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_mode_pods() {
    let s = server(Mode::Chained).await;
    // A member pod gets the slice annotation; its own annotations stay.
    mutation_case(&s, pod("shop", Value::Null, Value::Null), json!({"slicenet.io/slice": "blue"})).await;
    mutation_case(
        &s,
        pod("bank", Value::Null, json!({"team": "ledger"})),
        json!({"team": "ledger", "slicenet.io/slice": "red"}),
    )
    .await;
    // Unrelated pods: not labelled, or labelled for a slice that does not allow the namespace.
    mutation_case(&s, pod("default", Value::Null, json!({"team": "x"})), Value::Null).await;
    mutation_case(&s, pod("labelled", Value::Null, Value::Null), Value::Null).await;
    // Opt-out label → annotation, and nothing else.
    mutation_case(
        &s,
        pod("shop", json!({"slicenet.io/exclude": "true"}), Value::Null),
        json!({"slicenet.io/exclude": "true"}),
    )
    .await;
    mutation_case(&s, pod("shop", Value::Null, json!({"slicenet.io/exclude": "true"})), Value::Null).await;
    // Chained mode never touches the Multus annotation.
    mutation_case(
        &s,
        pod("shop", Value::Null, json!({NETWORKS: "macvlan"})),
        json!({NETWORKS: "macvlan", "slicenet.io/slice": "blue"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_set_slice_annotation_for_a_foreign_slice_is_removed() {
    let s = server(Mode::Chained).await;
    let answer = mutation_case(
        &s,
        pod("shop", Value::Null, json!({"slicenet.io/slice": "red"})),
        json!({"slicenet.io/slice": "blue"}),
    )
    .await;
    let warning = answer["response"]["warnings"][0].as_str().unwrap();
    assert_eq!(
        warning,
        "slicenet removed annotation slicenet.io/slice=\"red\": namespace shop is not a member of slice \"red\" in this cluster"
    );
    let answer = mutation_case(
        &s,
        pod("default", Value::Null, json!({"slicenet.io/slice": "blue", "a": "b"})),
        json!({"a": "b"}),
    )
    .await;
    assert!(answer["response"]["warnings"][0].as_str().unwrap().contains("namespace default"));
    // Its own slice, set by hand: kept.
    mutation_case(&s, pod("shop", Value::Null, json!({"slicenet.io/slice": "blue"})), Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multus_mode_merges_both_annotation_forms() {
    let s = server(Mode::Multus).await;
    mutation_case(
        &s,
        pod("shop", Value::Null, Value::Null),
        json!({"slicenet.io/slice": "blue", NETWORKS: "shop/slice-blue@slice0"}),
    )
    .await;
    // Text form: every entry kept, in order, ours appended once.
    mutation_case(
        &s,
        pod("shop", Value::Null, json!({NETWORKS: "macvlan-conf,kube-system/sriov-net@net5"})),
        json!({"slicenet.io/slice": "blue", NETWORKS: "macvlan-conf, kube-system/sriov-net@net5, shop/slice-blue@slice0"}),
    )
    .await;
    // Text form already asking for the slice without an interface: named, not duplicated.
    mutation_case(
        &s,
        pod("shop", Value::Null, json!({NETWORKS: "slice-blue, macvlan-conf@net1"})),
        json!({"slicenet.io/slice": "blue", NETWORKS: "slice-blue@slice0, macvlan-conf@net1"}),
    )
    .await;
    // Text form with the slice already there: only the slice annotation is added.
    mutation_case(
        &s,
        pod("shop", Value::Null, json!({NETWORKS: "macvlan-conf, shop/slice-blue@slice0"})),
        json!({NETWORKS: "macvlan-conf, shop/slice-blue@slice0", "slicenet.io/slice": "blue"}),
    )
    .await;
    // JSON form: entries and their keys kept, ours appended once.
    let json_form = r#"[{"name":"sriov-net","namespace":"kube-system","interface":"net5","ips":["192.0.2.10/24"]}]"#;
    mutation_case(
        &s,
        pod("shop", Value::Null, json!({NETWORKS: json_form})),
        json!({"slicenet.io/slice": "blue", NETWORKS: r#"[{"name":"sriov-net","namespace":"kube-system","interface":"net5","ips":["192.0.2.10/24"]},{"name":"slice-blue","namespace":"shop","interface":"slice0"}]"#}),
    )
    .await;
    // JSON form already asking for the slice without an interface.
    mutation_case(
        &s,
        pod("shop", Value::Null, json!({NETWORKS: r#"[{"name":"slice-blue","namespace":"shop"}]"#})),
        json!({"slicenet.io/slice": "blue", NETWORKS: r#"[{"name":"slice-blue","namespace":"shop","interface":"slice0"}]"#}),
    )
    .await;
    // Excluded: no network added, the user's networks untouched.
    mutation_case(
        &s,
        pod("shop", json!({"slicenet.io/exclude": "true"}), json!({NETWORKS: "macvlan-conf"})),
        json!({NETWORKS: "macvlan-conf", "slicenet.io/exclude": "true"}),
    )
    .await;
    // Unrelated namespace: nothing.
    mutation_case(&s, pod("default", Value::Null, json!({NETWORKS: "macvlan-conf"})), Value::Null).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_networks_annotation_is_refused_with_the_reason() {
    let s = server(Mode::Multus).await;
    let p = pod("shop", Value::Null, json!({NETWORKS: "[{\"name\": 7}]"}));
    let answer = s.review(MUTATE_POD_PATH, &pod_create(&p, false)).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let msg = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("annotation k8s.v1.cni.cncf.io/networks is not valid: JSON entry 0 has no \"name\" string"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_updates_and_deletes_pass_untouched() {
    let s = server(Mode::Multus).await;
    let p = pod("shop", Value::Null, Value::Null);
    for op in ["UPDATE", "DELETE"] {
        let (object, old) = if op == "DELETE" { (Value::Null, p.clone()) } else { (p.clone(), p.clone()) };
        let r = review(("", "v1", "Pod"), "pods", Some("shop"), "web-1", op, object, old, false);
        let answer = s.review(MUTATE_POD_PATH, &r).await;
        assert_eq!(answer["response"]["allowed"], true);
        assert!(patch_of(&answer).is_none(), "{op}: {answer}");
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn slice_config(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "slicenet.io/v1alpha1",
        "kind": "SliceConfig",
        "metadata": {"name": name, "uid": "9f0c0e3e-0000-4000-8000-00000000000a", "generation": 1},
        "spec": spec
    })
}

fn blue_spec() -> Value {
    json!({"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"], "namespaces": [{"namespace": "shop"}]})
}

fn hub() -> StaticHub {
    let red: SliceConfig = serde_json::from_value(slice_config(
        "red",
        json!({"sliceSubnet": "10.90.0.0/16", "clusters": ["c1", "c2"], "namespaces": [{"namespace": "bank"}]}),
    ))
    .unwrap();
    let c1 = MemberCluster::new(
        "c1",
        MemberClusterSpec {
            pod_cidrs: vec!["10.244.0.0/16".into()],
            service_cidrs: vec!["10.96.0.0/12".into()],
            multus: false,
            uplink_kbps: None,
        },
    );
    StaticHub { slices: vec![red], clusters: vec![c1] }
}

async fn validate(s: &TestServer, name: &str, spec: Value, old: Option<Value>) -> Result<(), String> {
    let object = slice_config(name, spec);
    let (op, old) = match old {
        Some(o) => ("UPDATE", slice_config(name, o)),
        None => ("CREATE", Value::Null),
    };
    let r = review(("slicenet.io", "v1alpha1", "SliceConfig"), "sliceconfigs", None, name, op, object, old, false);
    let answer = s.review(VALIDATE_SLICECONFIG_PATH, &r).await;
    assert!(patch_of(&answer).is_none());
    if answer["response"]["allowed"] == true {
        Ok(())
    } else {
        assert_eq!(answer["response"]["status"]["code"], 422, "{answer}");
        Err(answer["response"]["status"]["message"].as_str().unwrap().to_owned())
    }
}

fn with(mut spec: Value, key: &str, value: Value) -> Value {
    spec[key] = value;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slice_config_rule_accepts_and_rejects() {
    let s = TestServer::start(Settings::default(), Arc::new(membership()), Arc::new(hub()), None).await;
    let expect_err = |r: Result<(), String>, want: &str| {
        let msg = r.expect_err(want);
        assert!(msg.contains(want), "message {msg:?} lacks {want:?}");
        msg
    };

    // Slice name.
    assert_eq!(validate(&s, "blue", blue_spec(), None).await, Ok(()));
    let msg = expect_err(
        validate(&s, "blue.v2", blue_spec(), None).await,
        "metadata.name: slice name \"blue.v2\" must be lower-case letters",
    );
    assert!(msg.starts_with("SliceConfig blue.v2 is invalid: "), "{msg}");

    // Unparsable CIDR.
    expect_err(
        validate(&s, "blue", with(blue_spec(), "sliceSubnet", json!("10.80.0.0/33")), None).await,
        "spec.sliceSubnet: \"10.80.0.0/33\" is not a CIDR: write an aligned network such as 10.80.0.0/16",
    );
    assert_eq!(validate(&s, "blue", with(blue_spec(), "sliceSubnet", json!("fd00:80::/48")), None).await, Ok(()));

    // Misaligned CIDR.
    expect_err(
        validate(&s, "blue", with(blue_spec(), "sliceSubnet", json!("10.80.7.0/16")), None).await,
        "spec.sliceSubnet: 10.80.7.0/16 is not aligned: did you mean 10.80.0.0/16?",
    );
    assert_eq!(validate(&s, "blue", with(blue_spec(), "sliceSubnet", json!("10.80.0.0/16")), None).await, Ok(()));

    // maxClusters a power of two.
    expect_err(
        validate(&s, "blue", with(blue_spec(), "maxClusters", json!(6)), None).await,
        "spec.maxClusters: maxClusters 6 must be a power of two",
    );
    assert_eq!(validate(&s, "blue", with(blue_spec(), "maxClusters", json!(4)), None).await, Ok(()));

    // maxClusters fits the subnet.
    let tiny = with(with(blue_spec(), "sliceSubnet", json!("10.80.0.0/29")), "maxClusters", json!(16));
    expect_err(
        validate(&s, "blue", tiny, None).await,
        "10.80.0.0/29 cannot be split into 16 cluster prefixes (they would be longer than /32): use a larger subnet or a smaller maxClusters",
    );
    let roomy = with(with(blue_spec(), "sliceSubnet", json!("10.80.0.0/24")), "maxClusters", json!(2));
    assert_eq!(validate(&s, "blue", roomy, None).await, Ok(()));

    // nodePrefixLength fits the cluster prefix.
    expect_err(
        validate(&s, "blue", with(blue_spec(), "nodePrefixLength", json!(20)), None).await,
        "spec.nodePrefixLength: nodePrefixLength /20 does not fit the cluster prefix /20",
    );
    assert_eq!(validate(&s, "blue", with(blue_spec(), "nodePrefixLength", json!(28)), None).await, Ok(()));

    // Immutable subnet and maxClusters on update; other changes pass.
    expect_err(
        validate(&s, "blue", with(blue_spec(), "sliceSubnet", json!("10.81.0.0/16")), Some(blue_spec())).await,
        "spec.sliceSubnet: is immutable (was 10.80.0.0/16, now 10.81.0.0/16)",
    );
    expect_err(
        validate(&s, "blue", with(blue_spec(), "maxClusters", json!(32)), Some(blue_spec())).await,
        "spec.maxClusters: is immutable (was 16, now 32)",
    );
    let grown = with(blue_spec(), "clusters", json!(["c1", "c2", "c3"]));
    assert_eq!(validate(&s, "blue", grown, Some(blue_spec())).await, Ok(()));

    // A namespace claimed by two slices in one cluster (red has bank in "*" = c1, c2).
    let claims_bank =
        with(blue_spec(), "namespaces", json!([{"namespace": "shop"}, {"namespace": "bank", "clusters": ["c2"]}]));
    expect_err(
        validate(&s, "blue", claims_bank, None).await,
        "spec.namespaces[1]: namespace bank already belongs to slice red in cluster c2; a namespace joins at most one slice per cluster",
    );
    let elsewhere = with(blue_spec(), "namespaces", json!([{"namespace": "bank", "clusters": ["c3"]}]));
    assert_eq!(validate(&s, "blue", elsewhere, None).await, Ok(()));
    // red itself, re-applied, does not clash with its own copy in the hub.
    let red = json!({"sliceSubnet": "10.90.0.0/16", "clusters": ["c1", "c2"], "namespaces": [{"namespace": "bank"}]});
    assert_eq!(validate(&s, "red", red.clone(), Some(red)).await, Ok(()));

    // Overlap with a member cluster's pod or service CIDRs.
    expect_err(
        validate(&s, "blue", with(blue_spec(), "sliceSubnet", json!("10.96.0.0/16")), None).await,
        "spec.sliceSubnet: 10.96.0.0/16 overlaps the service CIDR 10.96.0.0/12 of member cluster c1",
    );
    expect_err(
        validate(&s, "blue", with(blue_spec(), "sliceSubnet", json!("10.244.0.0/20")), None).await,
        "10.244.0.0/20 overlaps the pod CIDR 10.244.0.0/16 of member cluster c1",
    );
    // c1 is not a member: no overlap check against it.
    let not_member = with(with(blue_spec(), "sliceSubnet", json!("10.96.0.0/16")), "clusters", json!(["c2"]));
    assert_eq!(validate(&s, "blue", not_member, None).await, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_config_deletes_pass_and_bad_specs_are_denied() {
    let s = TestServer::start(Settings::default(), Arc::new(membership()), Arc::new(hub()), None).await;
    let obj = slice_config("blue", blue_spec());
    let r = review(
        ("slicenet.io", "v1alpha1", "SliceConfig"),
        "sliceconfigs",
        None,
        "blue",
        "DELETE",
        Value::Null,
        obj,
        false,
    );
    assert_eq!(s.review(VALIDATE_SLICECONFIG_PATH, &r).await["response"]["allowed"], true);
    // A spec the type cannot read (the schema would stop it first; the webhook still says why).
    let bad = slice_config("blue", json!({"sliceSubnet": 42}));
    let r = review(
        ("slicenet.io", "v1alpha1", "SliceConfig"),
        "sliceconfigs",
        None,
        "blue",
        "CREATE",
        bad,
        Value::Null,
        true,
    );
    let answer = s.review(VALIDATE_SLICECONFIG_PATH, &r).await;
    assert_eq!(answer["response"]["allowed"], false);
    assert!(answer["response"]["status"]["message"].as_str().unwrap().starts_with("cannot read the SliceConfig: "));
}
