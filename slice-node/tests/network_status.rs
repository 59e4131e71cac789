//! The node agent's network-status publisher against a fake API server (kube-rs's mock
//! service): the exact requests of each scan for a new record, a repeat scan, a resync, a
//! changed record, a pod that is gone or is another pod of the same name, a malformed
//! annotation, a write by someone else between read and patch, and failures. Every request is
//! checked against `NODE_AGENT` (own namespace `slicenet-system`).

mod network_status_support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use network_status_support::{FakePods, pod_path};
use serde_json::{Value, json};
use slice_api::access::NODE_AGENT;
use slice_api::rbac::{covers, request_attributes};
use slice_node::network_status::{Outcome, ScanReport, StatusPublisher};

const ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
const NODE: &str = "n1";

fn primary() -> Value {
    json!({"name": "cbr0", "interface": "eth0", "ips": ["10.244.1.5"], "mac": "aa:bb:cc:dd:ee:02", "default": true, "dns": {}})
}

fn slice_entry(ip: &str) -> Value {
    json!({"name": "shop/slice-blue", "interface": "slice0", "ips": [ip], "mac": "02:00:00:00:00:01", "mtu": 1450, "dns": {}})
}

/// A pod on `node` with UID `uid`, and these annotations.
fn pod(namespace: &str, name: &str, uid: &str, node: &str, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": annotations},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
           "status": {"phase": "Running"}})
}

/// Writes a record as slice-cni does (pretty JSON, camelCase), with modification time `age`
/// seconds ago.
fn record(dir: &Path, container_id: &str, namespace: &str, name: &str, uid: &str, ip: &str, age: u64) {
    let mut record = json!({"containerID": container_id, "network": "k8s-pod-network", "namespace": namespace,
                            "pod": name, "networkStatus": [slice_entry(ip)]});
    if !uid.is_empty() {
        record["podUid"] = json!(uid);
    }
    let path = dir.join(format!("{container_id}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(age)).unwrap();
}

struct Fixture {
    api: FakePods,
    dir: tempfile::TempDir,
    publisher: StatusPublisher,
}

impl Fixture {
    fn new() -> Self {
        let api = FakePods::new(NODE_AGENT, "slicenet-system");
        let dir = tempfile::tempdir().unwrap();
        let client = api.client();
        let publisher = StatusPublisher::new(client, dir.path().to_owned(), NODE.to_owned());
        Self { api, dir, publisher }
    }

    async fn scan(&mut self, full: bool) -> ScanReport {
        self.publisher.scan(full).await.expect("the directory reads")
    }

    fn outcome(report: &ScanReport, pod: &str) -> Outcome {
        report.pods.get(pod).cloned().unwrap_or_else(|| panic!("no outcome for {pod}: {report:?}"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(self.api.violations(), Vec::<String>::new(), "requests NODE_AGENT does not declare");
        }
    }
}

const WEB: &str = "/api/v1/namespaces/shop/pods/web";

#[tokio::test]
async fn a_new_record_is_merged_into_the_annotation_once() {
    let mut f = Fixture::new();
    let others = json!({"slicenet.io/slice": "blue", ANNOTATION: json!([primary()]).to_string()});
    f.api.put(pod("shop", "web", "u-web", NODE, others));
    record(f.dir.path(), "c1", "shop", "web", "u-web", "10.80.0.2", 0);

    let report = f.scan(false).await;
    assert_eq!(Fixture::outcome(&report, "shop/web"), Outcome::Patched);
    let requests = f.api.take_requests();
    let lines: Vec<String> = requests.iter().map(network_status_support::line).collect();
    assert_eq!(lines, [format!("GET {WEB} 200"), format!("PATCH {WEB} 200")]);
    // A merge patch of the one annotation, conditional on the version read.
    let patch = &requests[1].body;
    assert_eq!(requests[1].content_type, "application/merge-patch+json");
    assert_eq!(patch.as_object().unwrap().keys().collect::<Vec<_>>(), ["metadata"]);
    let mut meta_keys: Vec<&String> = patch["metadata"].as_object().unwrap().keys().collect();
    meta_keys.sort();
    assert_eq!(meta_keys, ["annotations", "resourceVersion"]);
    assert_eq!(patch["metadata"]["annotations"].as_object().unwrap().len(), 1);
    assert_eq!(patch["metadata"]["resourceVersion"], "1");

    assert_eq!(f.api.network_status(WEB), Some(json!([primary(), slice_entry("10.80.0.2")])));
    assert_eq!(f.api.get(WEB).unwrap()["metadata"]["annotations"]["slicenet.io/slice"], "blue");

    // Nothing new: no request at all. A resync reads the pod and finds nothing to change.
    assert!(f.scan(false).await.pods.is_empty());
    assert_eq!(f.api.take_lines(), Vec::<String>::new());
    let report = f.scan(true).await;
    assert_eq!(Fixture::outcome(&report, "shop/web"), Outcome::Unchanged);
    assert_eq!(f.api.take_lines(), [format!("GET {WEB} 200")]);
}

#[tokio::test]
async fn a_pod_without_the_annotation_gets_it() {
    let mut f = Fixture::new();
    f.api.put(pod("shop", "web", "u-web", NODE, json!({})));
    record(f.dir.path(), "c1", "shop", "web", "", "10.80.0.2", 0);
    assert_eq!(Fixture::outcome(&f.scan(false).await, "shop/web"), Outcome::Patched);
    assert_eq!(f.api.network_status(WEB), Some(json!([slice_entry("10.80.0.2")])));
}

#[tokio::test]
async fn the_resync_repairs_an_overwritten_annotation() {
    let mut f = Fixture::new();
    f.api.put(pod("shop", "web", "u-web", NODE, json!({})));
    record(f.dir.path(), "c1", "shop", "web", "u-web", "10.80.0.2", 0);
    f.scan(false).await;
    f.api.take_requests();
    // Someone writes the annotation without the slice entry.
    f.api.write_as_someone_else(
        WEB,
        &json!({"metadata": {"annotations": {ANNOTATION: json!([primary()]).to_string()}}}),
    );
    assert!(f.scan(false).await.pods.is_empty(), "only a resync looks at unchanged records");
    assert_eq!(f.api.take_lines(), Vec::<String>::new());
    assert_eq!(Fixture::outcome(&f.scan(true).await, "shop/web"), Outcome::Patched);
    assert_eq!(f.api.take_lines(), [format!("GET {WEB} 200"), format!("PATCH {WEB} 200")]);
    assert_eq!(f.api.network_status(WEB), Some(json!([primary(), slice_entry("10.80.0.2")])));
}

#[tokio::test]
async fn a_new_sandbox_replaces_the_slice_entry_and_the_newest_record_wins() {
    let mut f = Fixture::new();
    f.api.put(pod("shop", "web", "u-web", NODE, json!({})));
    record(f.dir.path(), "c1", "shop", "web", "u-web", "10.80.0.2", 0);
    f.scan(false).await;
    f.api.take_requests();
    // The sandbox is recreated: the new record appears before the old one's DEL removes it.
    // The newer record's file name sorts first: age decides, not the name.
    record(f.dir.path(), "c1", "shop", "web", "u-web", "10.80.0.2", 60);
    record(f.dir.path(), "b7", "shop", "web", "u-web", "10.80.0.3", 0);
    assert_eq!(Fixture::outcome(&f.scan(false).await, "shop/web"), Outcome::Patched);
    assert_eq!(f.api.network_status(WEB), Some(json!([slice_entry("10.80.0.3")])));
    std::fs::remove_file(f.dir.path().join("c1.json")).unwrap();
    // A record going away needs nothing.
    assert!(f.scan(false).await.pods.is_empty());
    f.api.take_requests();
    assert_eq!(Fixture::outcome(&f.scan(true).await, "shop/web"), Outcome::Unchanged);
}

#[tokio::test]
async fn a_missing_pod_is_skipped_quietly() {
    let mut f = Fixture::new();
    record(f.dir.path(), "c1", "shop", "web", "u-web", "10.80.0.2", 0);
    assert_eq!(Fixture::outcome(&f.scan(false).await, "shop/web"), Outcome::PodMissing);
    assert_eq!(f.api.take_lines(), [format!("GET {WEB} 404")]);
    assert!(f.scan(false).await.pods.is_empty(), "not asked again until the resync");
    assert_eq!(f.api.take_lines(), Vec::<String>::new());

    // Deleted between the read and the patch.
    f.api.put(pod("shop", "web", "u-web", NODE, json!({})));
    f.api.fail("PATCH", WEB, 0, 404);
    assert_eq!(Fixture::outcome(&f.scan(true).await, "shop/web"), Outcome::PodMissing);
    assert_eq!(f.api.take_lines(), [format!("GET {WEB} 200"), format!("PATCH {WEB} 404")]);
}

#[tokio::test]
async fn another_pod_of_the_same_name_is_not_touched() {
    let mut f = Fixture::new();
    // An earlier pod's record (another UID) ...
    f.api.put(pod("shop", "web", "u-new", NODE, json!({})));
    record(f.dir.path(), "c1", "shop", "web", "u-old", "10.80.0.2", 0);
    // ... and a pod of the record's name that runs on another node.
    f.api.put(pod("shop", "api", "u-api", "n2", json!({})));
    record(f.dir.path(), "c2", "shop", "api", "", "10.80.0.4", 0);
    let report = f.scan(false).await;
    assert_eq!(Fixture::outcome(&report, "shop/web"), Outcome::OtherPod);
    assert_eq!(Fixture::outcome(&report, "shop/api"), Outcome::OtherPod);
    let mut lines = f.api.take_lines();
    lines.sort();
    assert_eq!(lines, ["GET /api/v1/namespaces/shop/pods/api 200".to_owned(), format!("GET {WEB} 200")]);
    assert_eq!(f.api.network_status(WEB), None);
}

#[tokio::test]
async fn a_malformed_annotation_is_left_alone() {
    let mut f = Fixture::new();
    f.api.put(pod("shop", "web", "u-web", NODE, json!({ANNOTATION: "{not json"})));
    record(f.dir.path(), "c1", "shop", "web", "u-web", "10.80.0.2", 0);
    let Outcome::Malformed(reason) = Fixture::outcome(&f.scan(false).await, "shop/web") else {
        panic!("not reported as malformed");
    };
    assert!(reason.contains("not JSON"), "{reason}");
    assert_eq!(f.api.take_lines(), [format!("GET {WEB} 200")]);
    assert_eq!(f.api.get(WEB).unwrap()["metadata"]["annotations"][ANNOTATION], "{not json");
    // Once it is a list again, the next resync merges into it.
    f.api.write_as_someone_else(
        WEB,
        &json!({"metadata": {"annotations": {ANNOTATION: json!([primary()]).to_string()}}}),
    );
    assert_eq!(Fixture::outcome(&f.scan(true).await, "shop/web"), Outcome::Patched);
    assert_eq!(f.api.network_status(WEB), Some(json!([primary(), slice_entry("10.80.0.2")])));
}

#[tokio::test]
async fn a_write_between_read_and_patch_is_merged_not_lost() {
    let mut f = Fixture::new();
    f.api.put(pod("shop", "web", "u-web", NODE, json!({})));
    record(f.dir.path(), "c1", "shop", "web", "u-web", "10.80.0.2", 0);
    // Someone adds the primary network's entry right after the agent read the pod.
    f.api.write_after_get(WEB, json!({"metadata": {"annotations": {ANNOTATION: json!([primary()]).to_string()}}}));
    assert_eq!(Fixture::outcome(&f.scan(false).await, "shop/web"), Outcome::Patched);
    assert_eq!(
        f.api.take_lines(),
        [format!("GET {WEB} 200"), format!("PATCH {WEB} 409"), format!("GET {WEB} 200"), format!("PATCH {WEB} 200")]
    );
    assert_eq!(f.api.network_status(WEB), Some(json!([primary(), slice_entry("10.80.0.2")])));
}

#[tokio::test]
async fn a_failed_request_is_retried_on_the_next_scan() {
    let mut f = Fixture::new();
    f.api.put(pod("shop", "web", "u-web", NODE, json!({})));
    record(f.dir.path(), "c1", "shop", "web", "u-web", "10.80.0.2", 0);
    f.api.fail("PATCH", WEB, 0, 500);
    assert!(matches!(Fixture::outcome(&f.scan(false).await, "shop/web"), Outcome::Failed(_)));
    assert_eq!(f.api.take_lines(), [format!("GET {WEB} 200"), format!("PATCH {WEB} 500")]);
    assert_eq!(Fixture::outcome(&f.scan(false).await, "shop/web"), Outcome::Patched, "retried without a resync");
    assert_eq!(f.api.network_status(WEB), Some(json!([slice_entry("10.80.0.2")])));
}

#[tokio::test]
async fn unreadable_records_make_no_requests() {
    let mut f = Fixture::new();
    std::fs::write(f.dir.path().join("bad.json"), b"{").unwrap();
    let no_pod = json!({"containerID": "c9", "network": "n", "namespace": "", "pod": "", "networkStatus": []});
    std::fs::write(f.dir.path().join("c9.json"), no_pod.to_string()).unwrap();
    // slice-cni's temp file while it writes.
    std::fs::write(f.dir.path().join(".tmp-c1.json"), b"{").unwrap();
    let report = f.scan(true).await;
    assert!(report.pods.is_empty());
    assert_eq!(report.unreadable.keys().collect::<Vec<_>>(), ["bad.json", "c9.json"]);
    assert_eq!(f.api.take_lines(), Vec::<String>::new());
}

#[tokio::test]
async fn no_status_directory_yet_is_no_records() {
    let api = FakePods::new(NODE_AGENT, "slicenet-system");
    let client = api.client();
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = StatusPublisher::new(client, dir.path().join("network-status"), NODE.to_owned());
    assert_eq!(publisher.scan(true).await.unwrap(), ScanReport::default());
    assert_eq!(api.take_lines(), Vec::<String>::new());
}

/// The access check the fake server makes does tell requests apart: the publisher's two are
/// declared, a list of pods (which it never makes) is not.
#[test]
fn the_access_check_is_not_vacuous() {
    let own = Some("slicenet-system");
    let declared = |method: &str, path: &str| covers(NODE_AGENT, &request_attributes(method, path).unwrap(), own);
    assert!(declared("GET", &pod_path("shop", "web")));
    assert!(declared("PATCH", &pod_path("shop", "web")));
    assert!(!declared("GET", "/api/v1/namespaces/shop/pods"));
    assert!(!declared("PUT", &pod_path("shop", "web")));
}
