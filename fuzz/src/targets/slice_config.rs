//! The SliceConfig validator behind the validating webhook and the hub. Input: a SliceConfig
//! as JSON, or `[new, old]` for an update. Properties: a refusal lists at least one violation,
//! each naming a field and saying what is wrong; the verdict does not change when the object is
//! also among the "others" (as it is in an informer cache) or when asked twice.

use serde_json::{Value, json};
use slice_api::crd::{MemberCluster, MemberClusterSpec, SliceConfig};
use slice_api::validate::{message, validate_slice_config};

use crate::MAX_INPUT;

pub const DICTIONARY: &[&str] = &[
    "apiVersion",
    "slicenet.io/v1alpha1",
    "kind",
    "SliceConfig",
    "metadata",
    "name",
    "spec",
    "sliceSubnet",
    "maxClusters",
    "nodePrefixLength",
    "clusters",
    "namespaces",
    "namespace",
    "c1",
    "c2",
    "c3",
    "shop",
    "bank",
    "blue",
    "red",
    "10.80.0.0/16",
    "10.90.0.0/16",
    "10.80.0.1/16",
    "0.0.0.0/0",
    "fd00:80::/48",
    "::/0",
    "10.96.0.0/12",
    "10.244.0.0/16",
    "/33",
    "/129",
];

fn slice(name: &str, spec: Value) -> SliceConfig {
    serde_json::from_value(json!({
        "apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": name}, "spec": spec
    }))
    .expect("a literal SliceConfig")
}

/// The other slices on the hub.
#[must_use]
pub fn others() -> Vec<SliceConfig> {
    vec![
        slice(
            "red",
            json!({"sliceSubnet": "10.90.0.0/16", "clusters": ["c1", "c2"], "namespaces": [{"namespace": "bank"}]}),
        ),
        slice(
            "green",
            json!({"sliceSubnet": "fd00:90::/48", "clusters": ["c2"], "namespaces": [{"namespace": "lab"}]}),
        ),
    ]
}

/// The member clusters on the hub.
#[must_use]
pub fn clusters() -> Vec<MemberCluster> {
    let cluster = |name: &str, pods: &str, services: &str| {
        MemberCluster::new(
            name,
            MemberClusterSpec {
                pod_cidrs: vec![pods.into()],
                service_cidrs: vec![services.into()],
                multus: false,
                uplink_kbps: None,
            },
        )
    };
    vec![cluster("c1", "10.244.0.0/16", "10.96.0.0/12"), cluster("c2", "fd00:244::/56", "not-a-cidr")]
}

pub fn run(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let (new, old) = match value {
        Value::Array(mut pair) if pair.len() == 2 => {
            let old = pair.pop().expect("two");
            (pair.pop().expect("two"), Some(old))
        }
        other => (other, None),
    };
    // The API server's schema decoding comes first; the validator sees typed objects.
    let Ok(new) = serde_json::from_value::<SliceConfig>(new) else { return };
    let old = old.and_then(|o| serde_json::from_value::<SliceConfig>(o).ok());
    let _ = new.spec.address_plan();
    let _ = new.spec.address_plans();
    let (others, clusters) = (others(), clusters());
    let verdict = validate_slice_config(&new, old.as_ref(), &others, &clusters);
    if let Err(violations) = &verdict {
        assert!(!violations.is_empty(), "refused without a violation");
        for v in violations {
            assert!(!v.field.is_empty() && !v.message.is_empty(), "{v:?}");
        }
        assert!(!message(violations).is_empty());
    }
    assert_eq!(validate_slice_config(&new, old.as_ref(), &others, &clusters), verdict, "asked twice");
    // Unnamed objects would collide with nothing in the cache; named ones skip themselves.
    if new
        .metadata
        .name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && others.iter().all(|o| o.metadata.name.as_deref() != Some(n)))
    {
        let mut with_self = others.clone();
        with_self.push(new.clone());
        assert_eq!(
            validate_slice_config(&new, old.as_ref(), &with_self, &clusters),
            verdict,
            "itself among the others"
        );
    }
}
