//! `slice-gateway`: not written yet (issue 3).

fn main() {
    eprintln!("slice-gateway: not implemented yet (issue 3)");
    std::process::exit(2);
}
