//! The bounded fuzz run of `make test`: every target over its checked-in corpus and a fixed
//! number of mutants (COUNT, not time: `SLICENET_FUZZ_MUTANTS` overrides it, `SLICENET_FUZZ_SEED`
//! the seed). A crash fails with the input, saved under the test's tmp dir; a hang fails when
//! the run is not over by a generous deadline, naming the input in flight.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use slicenet_fuzz::runner::{self, Plan};
use slicenet_fuzz::{TARGETS, Target, target};

/// Mutants per target in `make test`.
const MUTANTS: usize = 20_000;
/// Far beyond what the bounded run takes even on a loaded machine; only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(600);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bounded(name: &str) {
    let t: &'static Target = target(name).expect("a known target");
    let corpus = runner::load_corpus(&runner::corpus_dir(name)).expect("the corpus is readable");
    assert!(corpus.len() >= 5, "{name}: the corpus has {} seeds", corpus.len());
    let plan = Plan {
        mutants: usize::try_from(env_number("SLICENET_FUZZ_MUTANTS", MUTANTS as u64)).expect("fits"),
        // A seed per target, so targets do not replay each other's choices.
        seed: env_number("SLICENET_FUZZ_SEED", 1) ^ name.bytes().fold(0, |h, b| h * 31 + u64::from(b)),
        artifacts: std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-artifacts"),
    };
    let expected = corpus.len() + plan.mutants;
    let in_flight = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let watched = Arc::clone(&in_flight);
    std::thread::spawn(move || {
        let _ = tx.send(runner::run(t, &corpus, &plan, &watched));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(count)) => assert_eq!(count, expected, "{name}: every input ran"),
        Ok(Err(failure)) => panic!("{name}: {failure}"),
        Err(_) => {
            let input = in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let saved =
                runner::save(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), &format!("{name}-hang"), &input);
            panic!("{name}: no answer within {DEADLINE:?}; input in flight saved to {saved:?}");
        }
    }
}

#[test]
fn cni() {
    bounded("cni");
}

#[test]
fn wg_config() {
    bounded("wg-config");
}

#[test]
fn uapi() {
    bounded("uapi");
}

#[test]
fn admission() {
    bounded("admission");
}

#[test]
fn slice_config() {
    bounded("slice-config");
}

#[test]
fn every_target_has_a_test_and_a_corpus() {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(names, ["cni", "wg-config", "uapi", "admission", "slice-config"], "add a #[test] for a new target");
    for name in names {
        assert!(runner::corpus_dir(name).is_dir(), "fuzz/corpus/{name} is missing");
    }
}

/// The harness itself: a panic is caught and reported with the input that caused it, saved.
#[test]
fn a_crash_is_caught_with_its_input() {
    fn fragile(data: &[u8]) {
        assert!(!data.starts_with(b"boom"), "fragile parser broke");
    }
    let t = Target { name: "fragile", run: fragile, dictionary: &[] };
    let dir = tempfile_dir();
    let plan = Plan { mutants: 10, seed: 1, artifacts: dir.clone() };
    let corpus = vec![b"fine".to_vec(), b"boom!".to_vec()];
    let failure = runner::run(&t, &corpus, &plan, &Arc::new(Mutex::new(Vec::new()))).expect_err("the crash is found");
    assert_eq!(failure.input, b"boom!");
    assert!(failure.message.contains("fragile parser broke"), "{failure}");
    let saved = failure.saved.expect("the input is saved");
    assert_eq!(std::fs::read(&saved).unwrap(), b"boom!");
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("harness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
