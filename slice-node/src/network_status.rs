//! Publishes chained mode's network-status records onto the pods (`--kube` mode only).
//!
//! With Multus, Multus writes the pod's `k8s.v1.cni.cncf.io/network-status` annotation from
//! slice-cni's result. Chained, there is no Multus: slice-cni writes one record per pod sandbox
//! (`slice_api::network_status`: `<statusDir>/<containerID>.json` with the pod's namespace,
//! name and UID, and the Multus-format entry of the slice interface) on ADD and removes it on
//! DEL and GC. The agent on that node
//! merges the entries into the pod's annotation, so `kubectl get pod -o yaml` shows the slice
//! address either way, and the worker finds a gateway pod's slice address as it does with
//! Multus.
//!
//! - The merge is pure ([`merge_network_status`]); the rules are on that function.
//! - The pod is read first, and patched only when the annotation would change: a JSON merge
//!   patch of that one annotation, with the `resourceVersion` that was read, so a write by
//!   someone else in between gives 409 and the merge is done again on the new text instead of
//!   overwriting it.
//! - A pod that does not exist (404) is skipped quietly; a record whose `podUid` is not the
//!   pod's UID (an earlier pod of the same name), or whose pod runs on another node, is not
//!   applied. A record that disappears needs nothing: the annotation goes with its pod.
//! - The directory is scanned every `interval`; only new or changed records cause API requests
//!   then. Every `resync` each record's pod is read again, which repairs an annotation that
//!   someone else overwrote. A failed request is retried on the next scan.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};
use slice_api::names::NETWORK_STATUS_ANNOTATION;
pub use slice_api::network_status::PodRecord;

/// slice-cni's default `statusDir` (`slice_api::names::DEFAULT_STATUS_DIR`).
pub use slice_api::names::DEFAULT_STATUS_DIR;

/// How often a conflicting write (409) is merged again within one scan.
const CONFLICT_ATTEMPTS: usize = 3;

/// The existing annotation is not a JSON list of objects, so it cannot be merged into without
/// losing what it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {NETWORK_STATUS_ANNOTATION} annotation is not a JSON list of objects ({reason}); left as it is")]
pub struct MalformedAnnotation {
    pub reason: String,
}

/// The pod's network-status annotation with `entries` (the slice's, oldest record first)
/// merged in: the new text, or `None` when the annotation already says the same.
///
/// Rules:
/// - **Kept**: every existing entry that is not the same attachment as one of `entries`, in its
///   place and as it is (the primary network's, Multus's, anyone's).
/// - **Same attachment**: when both entries name an `interface`, the same interface (one name
///   is one interface in the pod's namespace, so an entry for `slice0` from an earlier sandbox
///   or network is stale); when either lacks it, the same `name`.
/// - **Replaced, never duplicated**: the first existing entry of the same attachment is replaced
///   in place by the new one and any further ones are removed; with none, the entry is appended.
///   A later entry of `entries` replaces an earlier one in the same way (the newest record wins).
/// - **Never default**: a `default` key of an entry is dropped (the slice never carries the
///   pod's default route; Multus omits `default` when false).
/// - Entries that are not objects with a non-empty string `name` are ignored.
/// - An absent, empty or blank annotation is an empty list.
/// - **Malformed**: text that is not a JSON list of objects is not touched: the function
///   returns [`MalformedAnnotation`], so the caller leaves the annotation alone (no data is
///   lost) and reports it; it is merged as soon as someone makes it a list again.
/// - **Unchanged**: `None` when the merged list equals the existing one as JSON (key order and
///   formatting do not count), so an up-to-date pod is never patched.
///
/// # Errors
/// [`MalformedAnnotation`] as above.
pub fn merge_network_status(existing: Option<&str>, entries: &[Value]) -> Result<Option<String>, MalformedAnnotation> {
    let current = parse_annotation(existing)?;
    let mut merged = current.clone();
    for entry in entries.iter().filter_map(publishable) {
        let same: Vec<usize> =
            merged.iter().enumerate().filter(|(_, e)| same_attachment(e, &entry)).map(|(i, _)| i).collect();
        match same.split_first() {
            None => merged.push(entry),
            Some((&first, rest)) => {
                merged[first] = entry;
                for &i in rest.iter().rev() {
                    merged.remove(i);
                }
            }
        }
    }
    if merged == current {
        return Ok(None);
    }
    Ok(Some(serde_json::to_string_pretty(&merged).expect("a list of JSON values serializes")))
}

fn parse_annotation(existing: Option<&str>) -> Result<Vec<Value>, MalformedAnnotation> {
    let text = existing.map(str::trim).unwrap_or_default();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let malformed = |reason: String| MalformedAnnotation { reason };
    match serde_json::from_str::<Value>(text).map_err(|e| malformed(format!("not JSON: {e}")))? {
        Value::Array(list) => match list.iter().position(|e| !e.is_object()) {
            Some(i) => Err(malformed(format!("item {i} is not an object"))),
            None => Ok(list),
        },
        other => Err(malformed(format!("a JSON {} instead of a list", json_kind(&other)))),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// The entry as it goes into the annotation, or `None` when it cannot be published.
fn publishable(entry: &Value) -> Option<Value> {
    let mut map = entry.as_object()?.clone();
    map.get("name").and_then(Value::as_str).filter(|n| !n.is_empty())?;
    map.remove("default");
    Some(Value::Object(map))
}

fn same_attachment(existing: &Value, new: &Value) -> bool {
    let interface = |v: &Value| v.get("interface").and_then(Value::as_str).map(str::to_owned);
    match (interface(existing), interface(new)) {
        (Some(a), Some(b)) => a == b,
        _ => existing.get("name").is_some() && existing.get("name") == new.get("name"),
    }
}

/// One file of the status directory.
#[derive(Debug, Clone)]
pub struct RecordFile {
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub modified: SystemTime,
}

impl RecordFile {
    fn parse(&self) -> Result<PodRecord, String> {
        let record: PodRecord = serde_json::from_slice(&self.bytes).map_err(|e| e.to_string())?;
        if record.namespace.is_empty() || record.pod.is_empty() {
            return Err("the record names no pod (namespace or pod is empty)".to_owned());
        }
        Ok(record)
    }
}

/// The record files (`*.json`, not slice-cni's `.tmp-*` files) in `dir`; none when the
/// directory does not exist yet (slice-cni creates it on its first chained ADD). A file that
/// vanishes while being read is skipped: its pod is gone.
///
/// # Errors
/// When the directory exists but cannot be read.
pub fn read_records(dir: &Path) -> std::io::Result<Vec<RecordFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(file_name) = entry.file_name().into_string() else { continue };
        if slice_api::network_status::record_file_container_id(&file_name).is_none() {
            continue;
        }
        let path = entry.path();
        let (bytes, meta) = match (std::fs::read(&path), std::fs::metadata(&path)) {
            (Ok(b), Ok(m)) => (b, m),
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        out.push(RecordFile { file_name, bytes, modified });
    }
    out.sort_by(|a, b| (a.modified, &a.file_name).cmp(&(b.modified, &b.file_name)));
    Ok(out)
}

/// What a scan did for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The annotation was patched.
    Patched,
    /// The annotation already held the entries.
    Unchanged,
    /// The pod does not exist (404).
    PodMissing,
    /// The pod of that name is not the one the records are for (another UID, another node).
    OtherPod,
    /// The existing annotation is malformed and was left alone.
    Malformed(String),
    /// A request failed; retried on the next scan.
    Failed(String),
}

impl Outcome {
    /// Whether the records need no new attempt until they change or the next resync.
    fn is_settled(&self) -> bool {
        !matches!(self, Outcome::Failed(_))
    }
}

/// What one scan did: per pod (`namespace/name`) that it looked at, and the record files it
/// could not read (file name → reason).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub pods: BTreeMap<String, Outcome>,
    pub unreadable: BTreeMap<String, String>,
}

/// Publishes the records of one node's status directory; remembers which record contents are
/// already published, so that a scan only sends requests for new or changed records.
pub struct StatusPublisher {
    client: Client,
    dir: PathBuf,
    node: String,
    /// File name → the contents last settled (published, or nothing to publish).
    settled: BTreeMap<String, Vec<u8>>,
}

impl StatusPublisher {
    /// A publisher for `node`'s records in `dir`.
    #[must_use]
    pub fn new(client: Client, dir: PathBuf, node: String) -> Self {
        Self { client, dir, node, settled: BTreeMap::new() }
    }

    /// The status directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory and publishes what is new or changed, or with `full`, re-checks
    /// every record's pod.
    ///
    /// # Errors
    /// When the directory cannot be read; failures for single pods are in the report.
    pub async fn scan(&mut self, full: bool) -> std::io::Result<ScanReport> {
        let files = read_records(&self.dir)?;
        let present: BTreeSet<&str> = files.iter().map(|f| f.file_name.as_str()).collect();
        self.settled.retain(|name, _| present.contains(name.as_str()));
        let mut report = ScanReport::default();
        // Records grouped per pod, oldest first (`read_records` sorts them).
        let mut pods: BTreeMap<(String, String), Vec<(&RecordFile, PodRecord)>> = BTreeMap::new();
        for file in &files {
            let unchanged = self.settled.get(&file.file_name) == Some(&file.bytes);
            match file.parse() {
                Ok(record) => {
                    pods.entry((record.namespace.clone(), record.pod.clone())).or_default().push((file, record))
                }
                Err(reason) => {
                    if !unchanged {
                        tracing::warn!(file = %self.dir.join(&file.file_name).display(), %reason, "unreadable network-status record; ignored");
                        self.settled.insert(file.file_name.clone(), file.bytes.clone());
                    }
                    report.unreadable.insert(file.file_name.clone(), reason);
                }
            }
        }
        for ((namespace, pod), records) in pods {
            let changed = records.iter().any(|(f, _)| self.settled.get(&f.file_name) != Some(&f.bytes));
            if !full && !changed {
                continue;
            }
            let pod_records: Vec<PodRecord> = records.iter().map(|(_, r)| r.clone()).collect();
            let outcome = self.publish(&namespace, &pod, &pod_records).await;
            match &outcome {
                Outcome::Patched => tracing::info!(%namespace, %pod, "network-status annotation updated"),
                Outcome::Unchanged => tracing::debug!(%namespace, %pod, "network-status annotation up to date"),
                Outcome::PodMissing | Outcome::OtherPod => {
                    tracing::debug!(%namespace, %pod, ?outcome, "network-status record not applied");
                }
                Outcome::Malformed(reason) => tracing::warn!(%namespace, %pod, %reason, "network-status not published"),
                Outcome::Failed(error) => {
                    tracing::warn!(%namespace, %pod, %error, "network-status not published; retrying")
                }
            }
            if outcome.is_settled() {
                for (file, _) in &records {
                    self.settled.insert(file.file_name.clone(), file.bytes.clone());
                }
            }
            report.pods.insert(format!("{namespace}/{pod}"), outcome);
        }
        Ok(report)
    }

    async fn publish(&self, namespace: &str, name: &str, records: &[PodRecord]) -> Outcome {
        let api = Api::<Pod>::namespaced(self.client.clone(), namespace);
        for _ in 0..CONFLICT_ATTEMPTS {
            let pod = match api.get_opt(name).await {
                Ok(Some(pod)) => pod,
                Ok(None) => return Outcome::PodMissing,
                Err(e) => return Outcome::Failed(format!("reading pod {namespace}/{name}: {e}")),
            };
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| n != self.node) {
                return Outcome::OtherPod;
            }
            let uid = pod.uid().unwrap_or_default();
            let entries: Vec<Value> = records
                .iter()
                .filter(|r| r.pod_uid.is_empty() || r.pod_uid == uid)
                .flat_map(|r| r.network_status.iter().cloned())
                .collect();
            if entries.is_empty() {
                return Outcome::OtherPod;
            }
            let existing = pod.annotations().get(NETWORK_STATUS_ANNOTATION).map(String::as_str);
            let text = match merge_network_status(existing, &entries) {
                Ok(Some(text)) => text,
                Ok(None) => return Outcome::Unchanged,
                Err(e) => return Outcome::Malformed(e.to_string()),
            };
            // The resourceVersion makes the patch conditional on the text merged into.
            let patch = json!({"metadata": {
                "resourceVersion": pod.resource_version(),
                "annotations": {NETWORK_STATUS_ANNOTATION: text},
            }});
            match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Outcome::Patched,
                Err(kube::Error::Api(s)) if s.is_not_found() => return Outcome::PodMissing,
                Err(kube::Error::Api(s)) if s.is_conflict() => {}
                Err(e) => return Outcome::Failed(format!("patching pod {namespace}/{name}: {e}")),
            }
        }
        Outcome::Failed(format!("pod {namespace}/{name} kept changing ({CONFLICT_ATTEMPTS} conflicts)"))
    }
}

/// Scans every `interval` and re-checks every pod every `resync`, forever (the caller aborts
/// the task).
pub async fn run(mut publisher: StatusPublisher, interval: Duration, resync: Duration) {
    tracing::info!(dir = %publisher.dir().display(), "publishing network-status records");
    // Every node agent reports about the pods of its own node: no election among them.
    let recorder = slice_kube::events::Recorder::new(EVENT_CONTROLLER, publisher.node.clone());
    let leadership = slice_kube::leader::Leadership::unconditional();
    let mut next_full = tokio::time::Instant::now() + resync;
    loop {
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full = tokio::time::Instant::now() + resync;
        }
        match publisher.scan(full).await {
            Ok(report) => {
                let now = k8s_openapi::jiff::Timestamp::now();
                recorder.publish(&publisher.client, &notices(&report), now, &leadership).await;
            }
            Err(e) => {
                tracing::warn!(dir = %publisher.dir().display(), error = %e, "cannot read the network-status records");
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// The Events' reporting controller.
pub const EVENT_CONTROLLER: &str = "slicenet.io/node-agent";

/// What an operator hears about the pods a scan touched (pure): the slice interface recorded
/// in a pod's network-status annotation (a state change of the pod, once per change: unchanged
/// pods are not scanned again), a malformed annotation left alone, a write that failed (retried;
/// the Events aggregate the repeats). Pods that are gone or are not the records' say nothing.
#[must_use]
pub fn notices(report: &ScanReport) -> Vec<slice_kube::events::Notice> {
    use slice_kube::events::{Notice, reference_to};
    let mut out = Vec::new();
    for (pod, outcome) in &report.pods {
        let Some((namespace, name)) = pod.split_once('/') else { continue };
        let regarding = reference_to("v1", "Pod", Some(namespace), name, None);
        out.push(match outcome {
            Outcome::Patched => Notice::normal(
                regarding,
                "SliceInterfaceRecorded",
                "Annotate",
                format!("slice interface recorded in the pod's {NETWORK_STATUS_ANNOTATION} annotation"),
            ),
            Outcome::Malformed(reason) => Notice::warning(
                regarding,
                "NetworkStatusMalformed",
                "Annotate",
                format!(
                    "{NETWORK_STATUS_ANNOTATION} is malformed and was left alone, without the slice interface: {reason}"
                ),
            ),
            Outcome::Failed(error) => Notice::warning(
                regarding,
                "NetworkStatusFailed",
                "Annotate",
                format!("the slice interface could not be recorded in {NETWORK_STATUS_ANNOTATION} (retrying): {error}"),
            ),
            Outcome::Unchanged | Outcome::PodMissing | Outcome::OtherPod => continue,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice_entry(ip: &str) -> Value {
        json!({"name": "shop/slice-blue", "interface": "slice0", "ips": [ip], "mac": "02:00:00:00:00:01", "mtu": 1450, "dns": {}})
    }

    fn primary() -> Value {
        json!({"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.5"], "mac": "aa:bb:cc:dd:ee:02", "default": true, "dns": {}})
    }

    fn merged(existing: Option<&str>, entries: &[Value]) -> Option<Value> {
        merge_network_status(existing, entries).unwrap().map(|text| serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn scans_become_pod_events_for_changes_and_errors_only() {
        let mut report = ScanReport::default();
        report.pods.insert("shop/web".into(), Outcome::Patched);
        report.pods.insert("shop/db".into(), Outcome::Unchanged);
        report.pods.insert("shop/gone".into(), Outcome::PodMissing);
        report.pods.insert("bank/odd".into(), Outcome::Malformed("not a JSON list".into()));
        report.pods.insert("bank/busy".into(), Outcome::Failed("patching pod bank/busy: 500".into()));
        let got: Vec<(String, String, &str, slice_kube::events::EventType)> = notices(&report)
            .iter()
            .map(|n| {
                let r = &n.regarding;
                (r.namespace.clone().unwrap(), r.name.clone().unwrap(), n.reason, n.type_)
            })
            .collect();
        use slice_kube::events::EventType::{Normal, Warning};
        assert_eq!(
            got,
            [
                ("bank".into(), "busy".into(), "NetworkStatusFailed", Warning),
                ("bank".into(), "odd".into(), "NetworkStatusMalformed", Warning),
                ("shop".into(), "web".into(), "SliceInterfaceRecorded", Normal),
            ]
        );
        assert!(
            notices(&report).iter().all(|n| n.regarding.kind.as_deref() == Some("Pod") && n.namespace() != "default")
        );
    }

    #[test]
    fn no_annotation_gets_the_slice_entry() {
        for existing in [None, Some(""), Some("  \n")] {
            assert_eq!(
                merged(existing, &[slice_entry("10.80.0.2")]),
                Some(json!([slice_entry("10.80.0.2")])),
                "{existing:?}"
            );
        }
    }

    #[test]
    fn existing_entries_are_kept_in_place() {
        let multus_net = json!({"name": "shop/macvlan", "interface": "net1", "ips": ["192.168.1.20"], "dns": {}});
        let existing = json!([primary(), multus_net]).to_string();
        assert_eq!(
            merged(Some(&existing), &[slice_entry("10.80.0.2")]),
            Some(json!([primary(), multus_net, slice_entry("10.80.0.2")]))
        );
    }

    #[test]
    fn the_slice_entry_is_replaced_not_duplicated() {
        // A stale slice0 entry (an earlier sandbox's address) in the middle, and a second copy.
        let stale = slice_entry("10.80.0.9");
        let existing = json!([stale, primary(), stale]).to_string();
        assert_eq!(
            merged(Some(&existing), &[slice_entry("10.80.0.2")]),
            Some(json!([slice_entry("10.80.0.2"), primary()]))
        );
        // An entry of the same network without an interface is the same attachment.
        let no_iface = json!([primary(), {"name": "shop/slice-blue", "ips": ["10.80.0.9"]}]).to_string();
        assert_eq!(
            merged(Some(&no_iface), &[slice_entry("10.80.0.2")]),
            Some(json!([primary(), slice_entry("10.80.0.2")]))
        );
        // Another network on another interface is not.
        let other = json!({"name": "shop/slice-green", "interface": "net2", "ips": ["10.90.0.2"]});
        let existing = json!([other]).to_string();
        assert_eq!(
            merged(Some(&existing), &[slice_entry("10.80.0.2")]),
            Some(json!([other, slice_entry("10.80.0.2")]))
        );
    }

    #[test]
    fn the_newest_record_wins() {
        assert_eq!(
            merged(None, &[slice_entry("10.80.0.9"), slice_entry("10.80.0.2")]),
            Some(json!([slice_entry("10.80.0.2")]))
        );
    }

    #[test]
    fn an_up_to_date_annotation_is_not_changed() {
        // Same content in another key order and layout: unchanged.
        let text = r#"[
            {"dns": {}, "default": true, "mac": "aa:bb:cc:dd:ee:02", "ips": ["10.244.1.5"], "interface": "eth0", "name": "cbr0"},
            {"mtu": 1450, "mac": "02:00:00:00:00:01", "ips": ["10.80.0.2"], "interface": "slice0", "name": "shop/slice-blue", "dns": {}}
        ]"#;
        assert_eq!(merge_network_status(Some(text), &[slice_entry("10.80.0.2")]), Ok(None));
        // Merging its own output again changes nothing.
        let once = merge_network_status(None, &[slice_entry("10.80.0.2")]).unwrap().unwrap();
        assert_eq!(merge_network_status(Some(&once), &[slice_entry("10.80.0.2")]), Ok(None));
        // Nothing to merge, nothing to write.
        assert_eq!(merge_network_status(None, &[]), Ok(None));
    }

    #[test]
    fn the_slice_is_never_default() {
        let mut claims_default = slice_entry("10.80.0.2");
        claims_default["default"] = json!(true);
        assert_eq!(merged(None, &[claims_default]), Some(json!([slice_entry("10.80.0.2")])));
        // The primary network's `default` is not ours to touch.
        let existing = json!([primary()]).to_string();
        assert_eq!(merged(Some(&existing), &[slice_entry("10.80.0.2")]).unwrap()[0]["default"], json!(true));
    }

    #[test]
    fn entries_without_a_name_are_ignored() {
        let entries = [json!("slice0"), json!({"interface": "slice0", "ips": ["10.80.0.2"]}), json!({"name": ""})];
        assert_eq!(merge_network_status(None, &entries), Ok(None));
    }

    #[test]
    fn a_malformed_annotation_is_left_alone() {
        for (text, reason) in [
            ("not json", "not JSON"),
            (r#"{"name": "cbr0"}"#, "a JSON object instead of a list"),
            ("null", "a JSON null instead of a list"),
            (r#"[{"name": "cbr0"}, "eth0"]"#, "item 1 is not an object"),
            (r#"[{"name": "cbr0""#, "not JSON"),
        ] {
            let err = merge_network_status(Some(text), &[slice_entry("10.80.0.2")]).unwrap_err();
            assert!(err.reason.contains(reason), "{text}: {err}");
            assert!(err.to_string().contains("left as it is"));
        }
    }

    #[test]
    fn records_read_as_slice_cni_writes_them() {
        // The exact shape of `slice_api::network_status::store` (pretty JSON, camelCase).
        let text = r#"{
  "containerID": "abc",
  "network": "lab",
  "namespace": "shop",
  "pod": "web",
  "podUid": "u-1",
  "networkStatus": [{"name": "shop/slice-blue", "interface": "slice0", "ips": ["10.80.0.2"], "mac": "02:00:00:00:00:01", "dns": {}}]
}"#;
        let record: PodRecord = serde_json::from_str(text).unwrap();
        assert_eq!(
            (record.container_id.as_str(), record.namespace.as_str(), record.pod.as_str()),
            ("abc", "shop", "web")
        );
        assert_eq!(record.pod_uid, "u-1");
        assert_eq!(record.network_status.len(), 1);
        // podUid is optional (omitted when the runtime passed no K8S_POD_UID).
        let without_uid: PodRecord = serde_json::from_str(&text.replace("\"podUid\": \"u-1\",", "")).unwrap();
        assert_eq!(without_uid.pod_uid, "");
    }

    #[test]
    fn the_directory_lists_records_only() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_records(&dir.path().join("missing")).unwrap().is_empty());
        std::fs::write(dir.path().join("a.json"), b"{}").unwrap();
        std::fs::write(dir.path().join(".tmp-b.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let names: Vec<String> = read_records(dir.path()).unwrap().into_iter().map(|f| f.file_name).collect();
        assert_eq!(names, ["a.json"]);
    }
}
