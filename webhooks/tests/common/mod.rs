//! Shared by the webhook tests: a real server on loopback with certificates from a throw-away CA,
//! and AdmissionReview v1 fixtures shaped as the API server sends them.

#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use webhooks::client::{Client, connector};
use webhooks::hub::HubView;
use webhooks::membership::MembershipSource;
use webhooks::server::{AppState, Settings};
use webhooks::tls::{CertStore, DevCa};

/// The name the server's certificate is issued for (as in the webhook Service's DNS name).
pub const SERVER_NAME: &str = "slice-webhooks.slicenet-system.svc";

pub struct TestServer {
    pub addr: SocketAddr,
    pub ca: DevCa,
    pub connector: TlsConnector,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub certs: Arc<CertStore>,
    _dir: tempfile::TempDir,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TestServer {
    /// Starts a server with `settings`, membership and hub; certificates are polled every
    /// `reload` (when given).
    pub async fn start(
        settings: Settings,
        membership: Arc<dyn MembershipSource>,
        hub: Arc<dyn HubView>,
        reload: Option<Duration>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert_path, key_path) = server_cert_files(dir.path());
        let certs = CertStore::load(&cert_path, &key_path).unwrap();
        let mut tasks = Vec::new();
        if let Some(interval) = reload {
            tasks.push(certs.spawn_watch(interval));
        }
        let state = Arc::new(AppState { settings, membership, hub, certs: Arc::clone(&certs) });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tasks.push(tokio::spawn(async move {
            webhooks::server::serve(listener, state, std::future::pending()).await.unwrap();
        }));
        let connector = connector(ca.ca_pem()).unwrap();
        Self { addr, ca, connector, cert_path, key_path, certs, _dir: dir, tasks }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, &self.connector, SERVER_NAME).await.unwrap()
    }

    /// POSTs `body` on a fresh connection; returns status and body text.
    pub async fn post(&self, path: &str, body: impl Into<hyper::body::Bytes>) -> (u16, String) {
        let (status, body) = self.client().await.post(path, body).await.unwrap();
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
    }

    /// POSTs a review and returns the decoded answer, checking the envelope and the uid.
    pub async fn review(&self, path: &str, review: &Value) -> Value {
        let (status, body) = self.post(path, review.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
        assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"], "{answer}");
        assert!(answer.get("request").is_none());
        answer
    }
}

static UID: AtomicU64 = AtomicU64::new(1);

/// A fresh request uid in the API server's format.
pub fn uid() -> String {
    format!("705ab4f5-6393-11e8-b7cc-{:012x}", UID.fetch_add(1, Ordering::Relaxed))
}

/// An AdmissionReview v1 request as kube-apiserver sends it.
#[allow(clippy::too_many_arguments)]
pub fn review(
    gvk: (&str, &str, &str),
    resource: &str,
    namespace: Option<&str>,
    name: &str,
    operation: &str,
    object: Value,
    old_object: Value,
    dry_run: bool,
) -> Value {
    let (group, version, kind) = gvk;
    let options_kind = match operation {
        "CREATE" => "CreateOptions",
        "UPDATE" => "UpdateOptions",
        _ => "DeleteOptions",
    };
    let mut request = json!({
        "uid": uid(),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "requestResource": {"group": group, "version": version, "resource": resource},
        "name": name,
        "operation": operation,
        "userInfo": {
            "username": "system:serviceaccount:kube-system:replicaset-controller",
            "uid": "4c2b0bd2-1e4c-4b3a-9d7a-0c1f7b1d2e3f",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
        },
        "object": object,
        "oldObject": old_object,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind}
    });
    if let Some(ns) = namespace {
        request["namespace"] = json!(ns);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// A pod as a ReplicaSet creates it (generateName, no name yet), with extra labels and
/// annotations (null: none).
pub fn pod(namespace: &str, labels: Value, annotations: Value) -> Value {
    let mut metadata = json!({
        "generateName": "web-7d4b9c8f5-",
        "namespace": namespace,
        "labels": {"app": "web", "pod-template-hash": "7d4b9c8f5"},
        "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f5",
            "uid": "a1b2c3d4-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true
        }]
    });
    if let Value::Object(extra) = labels {
        for (k, v) in extra {
            metadata["labels"][k] = v;
        }
    }
    if !annotations.is_null() {
        metadata["annotations"] = annotations;
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [{
                "name": "web", "image": "registry.example/web:1.4",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0
        },
        "status": {}
    })
}

/// A CREATE review of `pod`.
pub fn pod_create(pod: &Value, dry_run: bool) -> Value {
    let ns = pod["metadata"]["namespace"].as_str();
    review(("", "v1", "Pod"), "pods", ns, "", "CREATE", pod.clone(), Value::Null, dry_run)
}

/// The patch of an answer, decoded from base64, as JSON.
pub fn patch_of(answer: &Value) -> Option<Value> {
    let b64 = answer["response"].get("patch")?.as_str().expect("patch is a base64 string");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// Applies the answer's patch (if any) to `object`.
pub fn apply(object: &Value, answer: &Value) -> Value {
    let mut out = object.clone();
    if let Some(patch) = patch_of(answer) {
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        json_patch::patch(&mut out, &patch).unwrap();
    }
    out
}

/// A fresh test CA and a server certificate for [`SERVER_NAME`] written as `tls.crt` and
/// `tls.key` in `dir`, as a mounted TLS Secret holds them.
pub fn server_cert_files(dir: &std::path::Path) -> (DevCa, PathBuf, PathBuf) {
    let ca = DevCa::new().unwrap();
    let (cert, key) = ca.issue(&[SERVER_NAME]).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (ca, cert_path, key_path)
}
