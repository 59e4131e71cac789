//! `slicenet-bench`: `make bench`. See `e2e::bench` and `slicenet-bench --help`.

use std::process::ExitCode;

/// Counts the bytes held, for the scale section's hub memory.
#[global_allocator]
static ALLOCATOR: e2e::bench::CountingAllocator = e2e::bench::CountingAllocator;

fn main() -> ExitCode {
    let options = match e2e::bench::Options::parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{}", e2e::bench::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("slicenet-bench: {e:#}\n\n{}", e2e::bench::USAGE);
            return ExitCode::from(2);
        }
    };
    // The labs live inside `run`, so they are torn down before the process exits.
    match e2e::bench::run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slicenet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
