//! The subcommands that are not the demo itself.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};

/// `slicectl lab down`: [`e2e::cleanup`] for one prefix, or for every lab directory under
/// [`e2e::LAB_BASE`].
///
/// # Errors
/// Every cleanup that failed.
pub fn lab_down(prefix: &str, all: bool) -> Result<()> {
    e2e::require_root()?;
    let prefixes: Vec<String> = if all {
        match std::fs::read_dir(e2e::LAB_BASE) {
            Ok(entries) => entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => bail!("cannot read {}: {e}", e2e::LAB_BASE),
        }
    } else {
        vec![prefix.to_owned()]
    };
    if prefixes.is_empty() {
        println!("no labs under {}", e2e::LAB_BASE);
    }
    let mut failed = Vec::new();
    for p in &prefixes {
        match e2e::cleanup(p) {
            Ok(()) => println!("lab {p}: removed"),
            Err(e) => {
                eprintln!("lab {p}: {e:#}");
                failed.push(p.as_str());
            }
        }
    }
    if failed.is_empty() { Ok(()) } else { bail!("cleanup failed for lab(s) {}", failed.join(", ")) }
}

/// `slicectl status`: the status table of one node from its files.
///
/// # Errors
/// When a file cannot be read or parsed.
pub fn status(node: &str, state_dir: &Path, ipam_dir: &Path) -> Result<()> {
    let rows = e2e::demo::node_status(node, state_dir, ipam_dir, &BTreeMap::new())?;
    print!("{}", e2e::demo::status_table(&rows));
    Ok(())
}
