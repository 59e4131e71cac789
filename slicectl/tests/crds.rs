//! The committed CRD YAML in `deploy/crds/` is what slice-api's types generate, byte for byte.

use std::path::Path;

#[test]
fn committed_crds_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    if let Err(e) = slicectl::crds::check(&dir) {
        panic!("deploy/crds is out of date with slice-api's CRD types: {e:#}");
    }
}

#[test]
fn the_cli_writes_what_the_check_expects() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_slicectl"))
        .args(["crds", "--output-dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    slicectl::crds::check(dir.path()).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_slicectl"))
        .args(["crds", "--check", "--output-dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(check.success());
    std::fs::write(dir.path().join("slicenet.io_sliceconfigs.yaml"), "old").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_slicectl"))
        .args(["crds", "--check", "--output-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(slicectl::crds::REGENERATE), "{err}");
}
