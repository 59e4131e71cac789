//! The per-pod network-status record of chained mode: the contract between `slice-cni`, which
//! writes it, and the node agent, which merges its entries into the pod's
//! `k8s.v1.cni.cncf.io/network-status` annotation (with Multus, Multus writes the annotation and
//! there is no record).
//!
//! One file per pod sandbox, `<statusDir>/<containerID>.json` (default `statusDir`:
//! [`crate::names::DEFAULT_STATUS_DIR`]), camelCase JSON, written atomically on ADD (a
//! `.tmp-` file renamed into place, so a reader never sees half a record) and removed on DEL
//! and GC. Readers take only [`record_file_container_id`] names: hidden and temporary files are
//! not records.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What chained mode records for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The CNI network (conflist name) that made the record; GC of that network removes it.
    /// Empty when a record names none: then it is no network's to collect.
    #[serde(default)]
    pub network: String,
    pub namespace: String,
    pub pod: String,
    /// The pod's UID when the runtime passed `K8S_POD_UID`; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    /// Entries in Multus's format, to merge into the pod's `k8s.v1.cni.cncf.io/network-status`
    /// annotation.
    pub network_status: Vec<Value>,
}

/// The record file of `container_id` under `dir`.
#[must_use]
pub fn record_path(dir: &Path, container_id: &str) -> PathBuf {
    dir.join(format!("{container_id}.json"))
}

/// The container id of a file name in the status directory, when the file is a record
/// (`<containerID>.json`, not hidden: the writer's temporary files start with a dot).
#[must_use]
pub fn record_file_container_id(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(".json").filter(|id| !id.is_empty() && !file_name.starts_with('.'))
}

/// Writes the record atomically (temp file + rename).
///
/// # Errors
/// When the directory or file cannot be written.
pub fn store(dir: &Path, record: &PodRecord) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let dst = record_path(dir, &record.container_id);
    let tmp = dir.join(format!(".tmp-{}.json", record.container_id));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &dst)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Reads a record, if there is one.
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub fn load(dir: &Path, container_id: &str) -> std::io::Result<Option<PodRecord>> {
    match fs::read(record_path(dir, container_id)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the record of `container_id`; a missing one is fine (DEL is idempotent).
///
/// # Errors
/// When the file exists but cannot be removed.
pub fn remove(dir: &Path, container_id: &str) -> std::io::Result<()> {
    match fs::remove_file(record_path(dir, container_id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record() -> PodRecord {
        PodRecord {
            container_id: "abc".into(),
            network: "lab".into(),
            namespace: "shop".into(),
            pod: "web".into(),
            pod_uid: String::new(),
            network_status: vec![json!({"name": "shop/slice-blue", "interface": "slice0", "ips": ["10.80.0.2"]})],
        }
    }

    #[test]
    fn records_are_stored_loaded_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("network-status");
        let record = record();
        assert_eq!(load(&status, "abc").unwrap(), None);
        store(&status, &record).unwrap();
        assert_eq!(load(&status, "abc").unwrap(), Some(record));
        let names: Vec<_> = fs::read_dir(&status).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["abc.json"], "no temp file left");
        remove(&status, "abc").unwrap();
        remove(&status, "abc").unwrap();
        assert_eq!(load(&status, "abc").unwrap(), None);
    }

    /// The file as the writer leaves it: camelCase, `containerID`, `podUid` only when known.
    #[test]
    fn the_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = record();
        store(dir.path(), &record).unwrap();
        let text: Value = serde_json::from_slice(&fs::read(dir.path().join("abc.json")).unwrap()).unwrap();
        assert_eq!(
            text,
            json!({"containerID": "abc", "network": "lab", "namespace": "shop", "pod": "web",
                   "networkStatus": [{"name": "shop/slice-blue", "interface": "slice0", "ips": ["10.80.0.2"]}]})
        );
        record.pod_uid = "u-1".into();
        store(dir.path(), &record).unwrap();
        assert_eq!(load(dir.path(), "abc").unwrap().unwrap().pod_uid, "u-1");
        // A record that names no network loads, and is no network's.
        let without: PodRecord = serde_json::from_value(json!({"containerID": "x", "namespace": "shop",
            "pod": "web", "networkStatus": []}))
        .unwrap();
        assert_eq!(without.network, "");
        fs::write(dir.path().join("bad.json"), "{").unwrap();
        assert!(load(dir.path(), "bad").is_err());
    }

    #[test]
    fn only_record_files_name_a_container() {
        assert_eq!(record_file_container_id("abc.json"), Some("abc"));
        assert_eq!(record_file_container_id(".tmp-abc.json"), None);
        assert_eq!(record_file_container_id(".json"), None);
        assert_eq!(record_file_container_id("abc.txt"), None);
        assert_eq!(record_file_container_id("abc.json.bak"), None);
    }
}
