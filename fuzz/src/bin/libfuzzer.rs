//! libFuzzer driver for `make fuzz`: one binary for every target, the one to run named by
//! `SLICENET_FUZZ_TARGET`. Built on stable Rust with the sanitizer-coverage flags the Makefile
//! passes (no `cargo fuzz`, which needs nightly).

#![no_main]

use std::sync::OnceLock;

fn target() -> fn(&[u8]) {
    static RUN: OnceLock<fn(&[u8])> = OnceLock::new();
    *RUN.get_or_init(|| {
        let name = std::env::var("SLICENET_FUZZ_TARGET").unwrap_or_default();
        match slicenet_fuzz::target(&name) {
            Some(t) => t.run,
            None => {
                let known: Vec<&str> = slicenet_fuzz::TARGETS.iter().map(|t| t.name).collect();
                eprintln!("SLICENET_FUZZ_TARGET={name:?} is not one of {}", known.join(", "));
                std::process::exit(2);
            }
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| target()(data));
