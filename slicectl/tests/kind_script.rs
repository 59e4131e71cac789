//! The kind suite (`e2e/kind/run.sh`) needs Docker, which the machines `make test` runs on do
//! not have; what can be checked without running it is checked here: it parses (`bash -n`), and
//! shellcheck finds nothing in it. It also still runs every `slicectl` command of README.md's
//! "On real clusters" guide, so the guide's commands stay exercised by the suite.

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/kind/run.sh")
}

#[test]
fn the_kind_suite_parses_and_shellcheck_finds_nothing() {
    let out = Command::new("bash").arg("-n").arg(script()).output().expect("bash");
    assert!(out.status.success(), "bash -n: {}", String::from_utf8_lossy(&out.stderr));
    // shellcheck is in `make test`'s packages (Makefile); missing, this test fails.
    let out = Command::new("shellcheck")
        .arg(script())
        .output()
        .expect("shellcheck is not installed: `apt-get install shellcheck` (make test installs it)");
    assert!(out.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_readme_guide_is_what_the_kind_suite_runs() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let suite = std::fs::read_to_string(script()).unwrap();
    let guide = readme.split("## On real clusters").nth(1).expect("the guide").split("\n## ").next().unwrap();
    // Every slicectl subcommand the guide shows (with its first flag), run by the suite.
    let mut checked = 0;
    for line in guide.lines().map(str::trim).filter(|l| l.starts_with("slicectl ")) {
        let words: Vec<&str> = line.split_whitespace().take_while(|w| !w.starts_with("--") || w.len() > 2).collect();
        let sub: Vec<&str> =
            words[1..].iter().take_while(|w| !w.starts_with('-') && !w.contains('|')).copied().collect();
        let command = format!("\"$SLICECTL\" {}", sub.join(" "));
        assert!(
            suite.contains(&command),
            "the guide's `{line}` is not run by e2e/kind/run.sh (looked for {command:?})"
        );
        checked += 1;
    }
    assert!(checked >= 6, "{checked} commands found in the guide");
    for object in ["kind: SliceConfig", "kind: ServiceExport", "kind: MultiNetworkPolicy", "policy-for: slice-"] {
        assert!(guide.contains(object) && suite.contains(object), "{object} in the guide and the suite");
    }
}
