//! The webhook certificate's renewal end to end, without a cluster: the TLS and CA Secrets and
//! the caBundle exactly as `slicectl install worker` prints them, the real webhook server
//! (`webhooks::server`) serving from the TLS Secret's files, the worker's rotator renewing the
//! certificate through the API (kube-rs's mock service, slice-operator's scripted server), and
//! the replaced Secret's data written into the server's directory as the kubelet does. A TLS
//! client that trusts only the caBundle keeps working across the swap, on its open connection
//! and on new ones, and new connections get the renewed certificate.

#[path = "../../slice-operator/tests/hub_support/mod.rs"]
mod hub_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_support::{Declared, Exchange, run_script};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use slice_operator::access::WORKER_CLUSTER;
use slice_operator::cert_rotation::{self, Ca, Decision, Outcome, Rotator};
use slicectl::install::webhook::{self, Role};
use webhooks::client::{Client, connector};
use webhooks::hub::StaticHub;
use webhooks::membership::StaticMembership;
use webhooks::server::{AppState, Settings};
use webhooks::tls::CertStore;

const WORKER_ACCESS: Declared<'static> = Declared { access: WORKER_CLUSTER, own_namespace: Some("slicenet-system") };
const SECRETS: &str = "/api/v1/namespaces/slicenet-system/secrets";
/// The name the API server calls the pod webhook by.
const SERVER_NAME: &str = "slicenet-webhook.slicenet-system.svc";

/// A Secret of the install manifest, by name.
fn printed_secret(manifest: &slicectl::manifest::Manifest, name: &str) -> Secret {
    let doc = manifest.documents().iter().find(|d| d.type_meta().1 == "Secret" && d.name() == name);
    let doc = doc.unwrap_or_else(|| panic!("the manifest has no Secret {name}"));
    yaml_serde::from_value(doc.object.clone()).expect("a Secret")
}

fn text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("data");
    String::from_utf8(data.get(key).unwrap_or_else(|| panic!("no {key}")).0.clone()).expect("UTF-8")
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate").to_vec()
}

/// Writes `tls.crt` and `tls.key` into `dir` the way the kubelet updates a mounted Secret: the
/// new files complete first, then renamed into place.
fn write_pair(dir: &std::path::Path, cert: &str, key: &str) {
    std::fs::write(dir.join(".tls.key.new"), key).unwrap();
    std::fs::write(dir.join(".tls.crt.new"), cert).unwrap();
    std::fs::rename(dir.join(".tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join(".tls.crt.new"), dir.join("tls.crt")).unwrap();
}

async fn healthz(client: &mut Client) -> anyhow::Result<()> {
    let (status, body) = client.get("/healthz").await?;
    anyhow::ensure!(status.as_u16() == 200, "status {status}: {body:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_and_trusted_through_the_same_ca_bundle() {
    // The install: CA and TLS Secrets and the mutating configuration's caBundle.
    let opts = slicectl::install::Options::generate("registry.test/slicenet:dev").unwrap();
    let manifest = webhook::common(&opts, Role::Member).unwrap();
    let ca_secret = printed_secret(&manifest, Role::Member.ca_secret());
    let mut tls_secret = printed_secret(&manifest, Role::Member.tls_secret());
    let config = webhook::mutating(&opts);
    let hooks = config.webhooks.as_ref().unwrap();
    let ca_bundle = String::from_utf8(hooks[0].client_config.ca_bundle.clone().unwrap().0).unwrap();
    let ca = Ca { cert_pem: text(&ca_secret, "ca.crt"), key_pem: text(&ca_secret, "ca.key") };
    assert_eq!(ca.cert_pem, ca_bundle);
    // That install was 80 days ago: its serving certificate, from the same CA, made then (the
    // time is the only thing not as printed; the clients check validity with the real clock).
    let now = Timestamp::now();
    let installed = text(&tls_secret, "tls.crt");
    assert!(matches!(cert_rotation::decide(now, &installed, &ca.cert_pem), Decision::Keep { .. }), "fresh");
    let Decision::Renew { dns_names: names, expired: false } =
        cert_rotation::decide(now + SignedDuration::from_hours(80 * 24), &installed, &ca.cert_pem)
    else {
        panic!("due after 80 days")
    };
    let aged = cert_rotation::issue(&ca, &names, now - SignedDuration::from_hours(80 * 24)).unwrap();
    let data = tls_secret.data.as_mut().unwrap();
    data.insert("tls.crt".into(), k8s_openapi::ByteString(aged.cert_pem.clone().into_bytes()));
    data.insert("tls.key".into(), k8s_openapi::ByteString(aged.key_pem.clone().into_bytes()));
    tls_secret.metadata.resource_version = Some("41".into());

    // The webhook server on the Secret's files, reloading them as in the pod.
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &aged.cert_pem, &aged.key_pem);
    let certs = CertStore::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
    let watch = certs.spawn_watch(Duration::from_millis(20));
    let membership = Arc::new(StaticMembership::default());
    let state = Arc::new(AppState {
        settings: Settings::default(),
        membership,
        hub: Arc::new(StaticHub::default()),
        certs: Arc::clone(&certs),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { webhooks::server::serve(listener, state, std::future::pending()).await });

    // The API server's view: only the caBundle is trusted.
    let trusted = connector(&ca_bundle).unwrap();
    let mut open = Client::connect(addr, &trusted, SERVER_NAME).await.expect("the installed certificate is trusted");
    assert_eq!(open.peer_cert, der(&aged.cert_pem));
    healthz(&mut open).await.unwrap();

    // The worker's leader renews it through the API: one replace of the TLS Secret.
    let to_json = |s: &Secret| serde_json::to_value(s).unwrap();
    let script = vec![
        Exchange::get(format!("{SECRETS}/slicenet-webhook-ca")).ok(to_json(&ca_secret)),
        Exchange::get(format!("{SECRETS}/slicenet-webhook-tls")).ok(to_json(&tls_secret)),
        Exchange::put(format!("{SECRETS}/slicenet-webhook-tls"))
            .body_contains(serde_json::json!({"metadata": {"resourceVersion": "41"}})),
    ];
    let (outcome, seen) = run_script(WORKER_ACCESS, script, |client| async move {
        Rotator::new(client, cert_rotation::MEMBER).pass(now).await
    })
    .await;
    assert!(matches!(outcome.expect("renewed"), Outcome::Renewed { .. }));
    let replaced = seen.iter().find(|s| s.method == "PUT").expect("the replace");
    let replaced: Secret = serde_json::from_value(replaced.body.clone()).unwrap();
    assert_eq!(text(&replaced, "ca.crt"), ca_bundle, "the caBundle is unchanged");
    let (cert, key) = (text(&replaced, "tls.crt"), text(&replaced, "tls.key"));
    assert_ne!(cert, aged.cert_pem);

    // The kubelet updates the mounted files; the server picks the new pair up.
    write_pair(dir.path(), &cert, &key);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connections = 0;
    loop {
        // Every new connection, before and after the swap, is trusted through the caBundle.
        let mut fresh = Client::connect(addr, &trusted, SERVER_NAME).await.expect("trusted across the swap");
        healthz(&mut fresh).await.unwrap();
        connections += 1;
        if fresh.peer_cert == der(&cert) {
            break;
        }
        assert_eq!(fresh.peer_cert, der(&aged.cert_pem), "the old or the new certificate, nothing else");
        assert!(Instant::now() < deadline, "the renewed certificate was never served ({connections} connections)");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(certs.current_der(), der(&cert));
    // The connection opened before the swap goes on.
    healthz(&mut open).await.expect("the open connection keeps working");
    // A client trusting another CA is refused: the trust really is the caBundle's.
    let other = cert_rotation::new_ca(now).unwrap();
    let untrusted = connector(&other.cert_pem).unwrap();
    assert!(Client::connect(addr, &untrusted, SERVER_NAME).await.is_err());

    watch.abort();
    server.abort();
}
