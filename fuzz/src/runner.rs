//! The bounded run: a target over its corpus, then over a fixed number of mutants of it. A panic
//! is caught, and the input that caused it is kept in a file to replay and to add to the corpus
//! as a regression seed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::mutate::{Rng, mutate};
use crate::{MAX_INPUT, Target};

/// The checked-in corpus directory of `target`.
#[must_use]
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// Every file of a corpus directory, in name order.
///
/// # Errors
/// When the directory or a file cannot be read.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    paths.sort();
    paths.iter().filter(|p| p.is_file()).map(std::fs::read).collect()
}

/// A broken property: the panic's message and the input, saved to `saved`.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub input: Vec<u8>,
    pub saved: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = String::from_utf8_lossy(&self.input[..self.input.len().min(400)]).into_owned();
        write!(f, "{} on input {shown:?}", self.message)?;
        if let Some(path) = &self.saved {
            write!(f, " (saved to {})", path.display())?;
        }
        Ok(())
    }
}

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mutants: usize,
    pub seed: u64,
    /// Where a failing input is written.
    pub artifacts: PathBuf,
}

/// Runs `target` over `corpus` and `plan.mutants` mutants; `in_flight` holds the input being run
/// (for a caller that gives up waiting, to name the input that hangs). Returns how many inputs
/// ran.
///
/// # Errors
/// The first input that broke a property.
pub fn run(
    target: &Target,
    corpus: &[Vec<u8>],
    plan: &Plan,
    in_flight: &Arc<Mutex<Vec<u8>>>,
) -> Result<usize, Failure> {
    let mut rng = Rng::new(plan.seed);
    let mutants = (0..plan.mutants).map(|i| {
        if corpus.is_empty() {
            return Vec::new();
        }
        // Mostly mutants of seeds; every 8th a mutant of a mutant, for depth.
        let seed = &corpus[i % corpus.len()];
        let once = mutate(&mut rng, seed, corpus, target.dictionary, MAX_INPUT);
        if i % 8 == 7 { mutate(&mut rng, &once, corpus, target.dictionary, MAX_INPUT) } else { once }
    });
    let mut count = 0;
    for input in corpus.iter().cloned().chain(mutants) {
        in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone_from(&input);
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (target.run)(&input))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-string panic".to_owned());
            let saved = save(&plan.artifacts, target.name, &input);
            return Err(Failure { message, input, saved });
        }
        count += 1;
    }
    Ok(count)
}

/// Writes `input` as `<artifacts>/<target>-crash-<fnv hash>`; `None` when it cannot.
pub fn save(artifacts: &Path, target: &str, input: &[u8]) -> Option<PathBuf> {
    let hash = slice_api::fnv::fnv1a_64(input.iter().copied());
    let path = artifacts.join(format!("{target}-crash-{hash:016x}"));
    std::fs::create_dir_all(artifacts).ok()?;
    std::fs::write(&path, input).ok()?;
    Some(path)
}
