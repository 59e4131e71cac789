//! Fuzz targets for every parser slicenet feeds with input from outside, and the two ways to
//! run them (docs/testing.md, "Fuzzing"; the engine choice is in docs/decisions.md):
//!
//! - `cargo test -p slicenet-fuzz`: each target over its checked-in corpus (`corpus/<target>/`)
//!   plus a fixed COUNT of inputs mutated from it by [`mutate`] with a fixed seed, so the run is
//!   the same on every machine and its length does not depend on the machine's speed;
//! - `make fuzz`: the same targets under libFuzzer, coverage-guided (`src/bin/libfuzzer.rs`).
//!
//! A target is a plain `fn(&[u8])` that panics only when a property is broken: the parser
//! panicked, refused with an error of the wrong kind, or printed something it cannot read back.
//! Inputs longer than [`MAX_INPUT`] are skipped: every reader in front of these parsers bounds
//! its input (the webhook's body limit, the CNI config size), and the bound keeps each call short.

pub mod mutate;
pub mod runner;
pub mod targets;

/// The largest input a target looks at.
pub const MAX_INPUT: usize = 64 * 1024;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name: the corpus directory and `SLICENET_FUZZ_TARGET` value.
    pub name: &'static str,
    /// Runs one input; panics when a property is broken.
    pub run: fn(&[u8]),
    /// Tokens the mutator splices in (field names, keywords, edge values).
    pub dictionary: &'static [&'static str],
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target { name: "cni", run: targets::cni::run, dictionary: targets::cni::DICTIONARY },
    Target { name: "wg-config", run: targets::wg_config::run, dictionary: targets::wg_config::DICTIONARY },
    Target { name: "uapi", run: targets::uapi::run, dictionary: targets::uapi::DICTIONARY },
    Target { name: "admission", run: targets::admission::run, dictionary: targets::admission::DICTIONARY },
    Target { name: "slice-config", run: targets::slice_config::run, dictionary: targets::slice_config::DICTIONARY },
];

/// The target called `name`.
#[must_use]
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
