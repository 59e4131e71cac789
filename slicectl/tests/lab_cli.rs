//! The lab as a user drives it from the command line: `slicectl lab up -f` leaves the lab's
//! control plane running in the background, `lab apply --cluster` starts pods on the slice,
//! `lab exec` runs commands in them (exit status passed through), `lab status` reports,
//! `lab delete` and `lab down` remove everything. Needs root and the binaries; fails (does not
//! skip) without them.

use std::path::Path;
use std::process::{Command, Output};

const PREFIX: &str = "clt";

fn slicectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slicectl")).args(args).output().expect("slicectl runs")
}

fn ok(args: &[&str]) -> String {
    let out = slicectl(args);
    assert!(out.status.success(), "slicectl {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), log());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn log() -> String {
    std::fs::read_to_string(Path::new(e2e::LAB_BASE).join(PREFIX).join("control.log")).unwrap_or_default()
}

/// Removes the lab however the test ends.
struct Down;

impl Drop for Down {
    fn drop(&mut self) {
        let _ = slicectl(&["lab", "down", "--prefix", PREFIX]);
    }
}

#[test]
fn the_lab_is_driven_from_the_command_line() {
    e2e::require_root().expect("root");
    let _down = Down;
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub.yaml");
    std::fs::write(
        &hub,
        "apiVersion: slicenet.io/v1alpha1\nkind: MemberCluster\nmetadata: {name: c1, annotations: {lab.slicenet.io/nodes: \"1\"}}\nspec: {}\n---\n\
         apiVersion: slicenet.io/v1alpha1\nkind: MemberCluster\nmetadata: {name: c2, annotations: {lab.slicenet.io/nodes: \"1\"}}\nspec: {}\n---\n\
         apiVersion: slicenet.io/v1alpha1\nkind: SliceConfig\nmetadata: {name: blue}\nspec: {sliceSubnet: 10.80.0.0/16, clusters: [c1, c2], namespaces: [{namespace: shop}], gateway: {replicas: 1}}\n",
    )
    .unwrap();
    let objects = dir.path().join("objects.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec: {containers: [{name: web}]}\n",
    )
    .unwrap();
    let (hub, objects) = (hub.to_str().unwrap(), objects.to_str().unwrap());

    let up = ok(&["lab", "up", "--prefix", PREFIX, "-f", hub]);
    assert!(up.contains("no problems"), "{up}");
    assert!(
        ok(&["lab", "apply", "--prefix", PREFIX, "--cluster", "c2", "-f", objects])
            .contains("2 object(s) applied in c2")
    );
    let addr = ok(&["lab", "exec", "--prefix", PREFIX, "c2/shop/web", "--", "ip", "-br", "addr", "show", "slice0"]);
    assert!(addr.contains("10.80."), "web has a slice address: {addr}");
    let failed = slicectl(&["lab", "exec", "--prefix", PREFIX, "c2/shop/web", "--", "sh", "-c", "exit 3"]);
    assert_eq!(failed.status.code(), Some(3), "the command's exit status is passed through");
    let missing = slicectl(&["lab", "exec", "--prefix", PREFIX, "c2/shop/nope", "--", "true"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no pod shop/nope in cluster c2"));
    let unknown = slicectl(&["lab", "apply", "--prefix", PREFIX, "--cluster", "c9", "-f", objects]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no member cluster c9 in the lab"));
    assert!(ok(&["lab", "status", "--prefix", PREFIX]).contains("blue   c2"));
    assert!(ok(&["lab", "delete", "--prefix", PREFIX, "--cluster", "c2", "-f", objects]).contains("deleted in c2"));
    assert!(ok(&["lab", "delete", "--prefix", PREFIX, "-f", hub]).contains("1 SliceConfig(s) deleted"));
    ok(&["lab", "down", "--prefix", PREFIX]);
    assert!(!Path::new(e2e::LAB_BASE).join(PREFIX).exists(), "lab down removes the lab");
    let gone = slicectl(&["lab", "status", "--prefix", PREFIX]);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no control plane for lab clt"));
}
