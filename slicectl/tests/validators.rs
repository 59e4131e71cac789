//! Every manifest slicenet prints, checked by the validators production clusters use:
//! `kubernetes-validate --strict` against the oldest and the newest Kubernetes we support, and
//! `checkov --framework kubernetes` with the skip list `deploy/validate/checkov-skips.yaml`,
//! where each skip names its check, the objects it covers and why.
//!
//! The manifests: `install hub`, `install worker` (chained and `--multus`), `install
//! worker-hub-access`, and the gateway Deployment and Service the worker creates (built by the
//! worker's own code), the node cleanup DaemonSet of `slicectl uninstall worker` and `install
//! mcs-crds`, one file each in a temporary directory. They include the
//! ValidatingAdmissionPolicies and their bindings.
//!
//! The tools come from `make validators` (a venv under `target/validators-venv`, pinned in
//! `deploy/validate/`). Without them this test fails when it runs as root or under CI (where
//! `make test` installs them first); elsewhere it says it checked nothing and passes.

mod common;
use common::KUBECONFIG;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The oldest Kubernetes we support: `k8s-openapi` 0.29 (the API the controllers are built
/// against) supports 1.33 and later; the CRDs' CEL `isCIDR` needs 1.31, the webhooks'
/// `matchConditions` 1.30.
const OLDEST: &str = "1.33.0";
/// The newest: `k8s-openapi`'s `latest` and the newest schemas `kubernetes-validate` ships.
const NEWEST: &str = "1.37.0";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The venv `make validators` made, or `$SLICENET_VALIDATORS_VENV`.
fn venv() -> PathBuf {
    std::env::var_os("SLICENET_VALIDATORS_VENV")
        .map_or_else(|| workspace().join("target/validators-venv"), PathBuf::from)
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// The tool's path, or `None` (after saying so) where a missing tool may be tolerated.
fn tool(name: &str) -> Option<PathBuf> {
    let path = venv().join("bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    let message = format!("{} is missing: run `make validators` (it makes {})", path.display(), venv().display());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(!(ci || is_root()), "{message}");
    eprintln!("NOT CHECKED: {message}");
    None
}

fn slicectl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl")).args(args).output().unwrap();
    assert!(out.status.success(), "slicectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every manifest, written to `dir`, one file each.
fn print_manifests(dir: &Path) -> Vec<PathBuf> {
    let kubeconfig = dir.join("hub.kubeconfig");
    std::fs::write(&kubeconfig, KUBECONFIG).unwrap();
    let kc = kubeconfig.to_str().unwrap();
    let worker = ["install", "worker", "--cluster", "east", "--hub-kubeconfig", kc];
    let mut files = vec![
        ("hub.yaml", slicectl(&["install", "hub"])),
        ("worker.yaml", slicectl(&worker)),
        ("worker-multus.yaml", slicectl(&[&worker[..], &["--multus"]].concat())),
        ("worker-hub-access.yaml", slicectl(&["install", "worker-hub-access", "--cluster", "east"])),
    ];
    // What the worker creates for a slice: its gateway StatefulSet and a replica's Service.
    let spec: slice_api::crd::WorkerSliceSpec = serde_json::from_value(serde_json::json!({
        "slice": "blue", "cluster": "east", "sliceSubnet": "10.80.0.0/16", "clusterPrefix": "10.80.16.0/20",
        "nodePrefixLength": 26, "vni": 100, "namespaces": ["shop"], "peers": [],
    }))
    .unwrap();
    use slice_operator::worker::objects::{GatewayDefaults, gateway_service, gateway_statefulset};
    let defaults = GatewayDefaults { image: slicectl::install::default_image(), ..GatewayDefaults::default() };
    let gateway = [gateway_statefulset(&spec, &defaults), gateway_service(&spec, 0).unwrap()];
    let gateway: Vec<String> = gateway.iter().map(|o| format!("---\n{}", yaml_serde::to_string(o).unwrap())).collect();
    files.push(("gateway.yaml", gateway.concat()));
    // What `slicectl uninstall worker` applies for a while: the node cleanup DaemonSet.
    let cleanup = slicectl::uninstall::node_cleanup_daemonset(&slicectl::install::default_image());
    files.push(("node-cleanup.yaml", format!("---\n{}", yaml_serde::to_string(&cleanup).unwrap())));
    files.push(("mcs-crds.yaml", slicectl(&["install", "mcs-crds"])));
    // The admission policies and their bindings are among what is checked (two in `install
    // hub`, four in `install worker`).
    let text: String = files.iter().map(|(_, t)| t.as_str()).collect();
    for kind in ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] {
        assert_eq!(text.matches(&format!("\nkind: {kind}\n")).count(), 2 + 4 + 4, "{kind}s printed");
    }
    files
        .into_iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn kubernetes_validate_strict_on_the_oldest_and_newest_supported_versions() {
    let Some(validate) = tool("kubernetes-validate") else { return };
    let dir = tempfile::tempdir().unwrap();
    let files = print_manifests(dir.path());
    for version in [OLDEST, NEWEST] {
        let out = Command::new(&validate).args(["--strict", "--quiet", "-k", version]).args(&files).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "kubernetes-validate --strict -k {version}:\n{text}");
        assert!(!text.contains("ERROR"), "kubernetes-validate -k {version}:\n{text}");
    }
    // The validator does fail on an object its schema does not have (so a pass means something).
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: a, image: b, bogus: 1}]}\n",
    )
    .unwrap();
    let out = Command::new(&validate).args(["--strict", "--quiet", "-k", OLDEST]).arg(&bad).output().unwrap();
    assert!(!out.status.success(), "kubernetes-validate accepted an unknown field");
}

/// One entry of `deploy/validate/checkov-skips.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Skip {
    check: String,
    /// checkov's resource names (`Kind.namespace.name`), or `*` for every resource.
    resources: Vec<String>,
    reason: String,
}

fn skips() -> Vec<Skip> {
    let path = workspace().join("deploy/validate/checkov-skips.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let skips: Vec<Skip> = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for s in &skips {
        assert!(s.reason.split_whitespace().count() >= 5, "{}: say why it is skipped", s.check);
        assert!(!s.resources.is_empty(), "{}: name the resources (or \"*\")", s.check);
    }
    skips
}

#[test]
fn checkov_finds_nothing_but_the_explained_skips() {
    let Some(checkov) = tool("checkov") else { return };
    // Not tempfile's default `.tmp…`: checkov skips hidden directories.
    let dir = tempfile::Builder::new().prefix("slicenet-checkov").tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    print_manifests(&manifests);
    std::fs::remove_file(manifests.join("hub.kubeconfig")).unwrap();
    let out = Command::new(&checkov)
        .args(["--framework", "kubernetes", "--output", "json", "--quiet", "--skip-download", "-d"])
        .arg(&manifests)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `--quiet` prints failed checks only; no failure at all prints a summary without them.
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("checkov's JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let reports = if report.is_array() { report.as_array().unwrap().clone() } else { vec![report] };
    let mut failed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut passed = 0;
    for r in &reports {
        passed += r["summary"]["passed"].as_u64().unwrap_or(0);
        for f in r["results"]["failed_checks"].as_array().into_iter().flatten() {
            failed.insert((f["check_id"].as_str().unwrap().to_owned(), f["resource"].as_str().unwrap().to_owned()));
        }
    }
    assert!(
        reports.iter().any(|r| r["summary"]["resource_count"].as_u64().unwrap_or(0) > 20),
        "checkov saw the manifests:\n{stdout}"
    );
    let skips = skips();
    let covered = |(check, resource): &(String, String)| {
        skips.iter().any(|s| s.check == *check && s.resources.iter().any(|r| r == "*" || r == resource))
    };
    let unexplained: Vec<_> = failed.iter().filter(|f| !covered(f)).collect();
    assert!(
        unexplained.is_empty(),
        "checkov failures without a skip in deploy/validate/checkov-skips.yaml: {unexplained:#?}"
    );
    // No skip is stale: each covers a failure that is really there.
    for s in &skips {
        for r in &s.resources {
            let used = failed.iter().any(|(c, res)| *c == s.check && (r == "*" || r == res));
            assert!(used, "skip {} for {r} covers nothing: remove it", s.check);
        }
    }
    eprintln!("checkov: {} failures, all explained by the skip list; {passed} checks passed", failed.len());
}
