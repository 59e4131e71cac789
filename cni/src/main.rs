//! `slice-cni`: reads `CNI_*` and the config, prints the result or the error JSON on stdout.

fn main() {
    let (output, failed) = slice_cni::invoke(|k| std::env::var(k).ok(), &mut std::io::stdin().lock());
    if !output.is_null() {
        println!("{output}");
    }
    std::process::exit(i32::from(failed));
}
