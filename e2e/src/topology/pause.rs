//! The lab's sandbox ("pause") image, built locally so containerd never pulls.
//!
//! `pause/pause.c` is compiled with `cc -static -O2` and packed as an OCI image archive
//! (`oci-layout`, `index.json` with the `io.containerd.image.name` annotation, manifest, config,
//! one uncompressed layer), which `ctr images import` loads into a node's containerd. Both
//! artefacts are cached in `<LAB_BASE>/.build/` under the hash of the source, so a changed
//! `pause.c` is rebuilt and an unchanged one is not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cmd;

/// The image reference containerd's `sandbox_image` names.
pub const PAUSE_IMAGE: &str = "slicenet.io/lab/pause:1";

const PAUSE_SOURCE: &str = include_str!("../../pause/pause.c");

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// The shared build directory (outside every lab's root, so it survives teardown).
pub(crate) fn build_dir() -> PathBuf {
    Path::new(crate::LAB_BASE).join(".build")
}

/// Builds (or reuses) the pause binary and its OCI archive; returns the archive's path.
pub(crate) fn pause_archive() -> Result<PathBuf> {
    let dir = build_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let hash = hex(&Sha256::digest(PAUSE_SOURCE.as_bytes()))[..16].to_owned();
    let binary = dir.join(format!("pause-{hash}"));
    let archive = dir.join(format!("pause-{hash}.oci.tar"));
    if !binary.exists() {
        compile(&dir, &binary)?;
    }
    if !archive.exists() {
        let bytes = std::fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
        let oci = oci_archive(&bytes, PAUSE_IMAGE)?;
        write_new(&archive, &oci)?;
    }
    Ok(archive)
}

/// Compiles `pause.c` into `binary` through a temp file, so parallel labs never see half a file.
fn compile(dir: &Path, binary: &Path) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("pause-")
        .suffix(".c")
        .tempfile_in(dir)
        .context("cannot create a temp file for pause.c")?;
    std::fs::write(tmp.path(), PAUSE_SOURCE).context("cannot write pause.c")?;
    let out = tempfile::Builder::new()
        .prefix("pause-bin-")
        .tempfile_in(dir)
        .context("cannot create a temp file for the pause binary")?;
    cmd::run(Command::new("cc").args(["-static", "-O2", "-o"]).arg(out.path()).arg(tmp.path()))
        .context("cannot compile the pause program (needs gcc and libc6-dev)")?;
    out.persist(binary).map_err(|e| e.error).with_context(|| format!("cannot store {}", binary.display()))?;
    std::fs::set_permissions(binary, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", binary.display()))?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).context("cannot create a temp file")?;
    std::io::Write::write_all(&mut tmp, bytes).context("cannot write the image archive")?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("cannot store {}", path.display()))?;
    Ok(())
}

/// An OCI image archive with one layer holding `/pause` (mode 0755) as the entrypoint.
///
/// # Errors
/// Only when the in-memory tar cannot be built.
pub(crate) fn oci_archive(pause_binary: &[u8], name: &str) -> Result<Vec<u8>> {
    let layer = tar_of(&[("pause", pause_binary, 0o755)])?;
    let layer_digest = digest(&layer);
    let arch = oci_arch();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Entrypoint": ["/pause"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))?;
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": { "mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer.len() }],
    }))?;
    let manifest_digest = digest(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
            "annotations": { "io.containerd.image.name": name },
        }],
    }))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let (layer_path, config_path, manifest_path) = (blob(&layer_digest), blob(&config_digest), blob(&manifest_digest));
    tar_of(&[
        ("oci-layout", &layout, 0o644),
        ("index.json", &index, 0o644),
        (&manifest_path, &manifest, 0o644),
        (&config_path, &config, 0o644),
        (&layer_path, &layer, 0o644),
    ])
}

fn tar_of(files: &[(&str, &[u8], u32)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes, mode) in files {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *bytes).with_context(|| format!("cannot add {path} to tar"))?;
    }
    builder.into_inner().context("cannot finish tar")
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_a_consistent_oci_layout() {
        let archive = oci_archive(b"\x7fELF fake", "slicenet.io/lab/pause:1").unwrap();
        let mut files = std::collections::BTreeMap::new();
        for entry in tar::Archive::new(&archive[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            files.insert(path, bytes);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let desc = &index["manifests"][0];
        assert_eq!(desc["annotations"]["io.containerd.image.name"], "slicenet.io/lab/pause:1");
        // Every blob's name is its digest.
        for (path, bytes) in &files {
            if let Some(hex_digest) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(digest(bytes), format!("sha256:{hex_digest}"), "{path}");
            }
        }
        let manifest_path = format!("blobs/sha256/{}", desc["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        let manifest: serde_json::Value = serde_json::from_slice(&files[&manifest_path]).unwrap();
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        let config_path =
            format!("blobs/sha256/{}", manifest["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        let config: serde_json::Value = serde_json::from_slice(&files[&config_path]).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        assert_eq!(config["config"]["Entrypoint"][0], "/pause");
    }
}
