//! The server itself: health endpoints, bad bodies (400 with a reason, and it keeps serving), the
//! request timeout, membership from a mounted ConfigMap directory, and certificate rotation while
//! requests are in flight.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{SERVER_NAME, TestServer, patch_of, pod, pod_create, review};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use webhooks::client::Client;
use webhooks::hub::StaticHub;
use webhooks::membership::{ConfigMapDir, StaticMembership};
use webhooks::server::{MUTATE_POD_PATH, Settings, VALIDATE_SLICECONFIG_PATH};

fn blue_shop() -> Arc<StaticMembership> {
    Arc::new(StaticMembership::from_slices(&BTreeMap::from([("blue".to_owned(), vec!["shop".to_owned()])])))
}

async fn default_server() -> TestServer {
    TestServer::start(Settings::default(), blue_shop(), Arc::new(StaticHub::default()), None).await
}

/// A valid mutation still works (on a new connection): the server keeps serving.
async fn still_serving(s: &TestServer) {
    let p = pod("shop", Value::Null, Value::Null);
    let answer = s.review(MUTATE_POD_PATH, &pod_create(&p, false)).await;
    assert!(patch_of(&answer).is_some(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_routing() {
    let s = default_server().await;
    let mut c = s.client().await;
    let (status, body) = c.get("/healthz").await.unwrap();
    assert_eq!((status.as_u16(), body.as_ref()), (200, b"ok\n".as_ref()));
    let (status, _) = c.get("/readyz").await.unwrap();
    assert_eq!(status.as_u16(), 200);
    let (status, body) = c.get(MUTATE_POD_PATH).await.unwrap();
    assert_eq!(status.as_u16(), 405, "{body:?}");
    let (status, body) = c.post("/nope", "{}").await.unwrap();
    assert_eq!((status.as_u16(), String::from_utf8_lossy(&body).trim()), (404, "no such endpoint /nope"));
    // Same keep-alive connection still good.
    let (status, _) = c.get("/healthz").await.unwrap();
    assert_eq!(status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_400_with_a_reason() {
    let s = default_server().await;
    let good = pod_create(&pod("shop", Value::Null, Value::Null), false);
    let good_text = good.to_string();
    let wrong_envelope = {
        let mut r = good.clone();
        r["kind"] = json!("Pod");
        r.to_string()
    };
    let v1beta1 = {
        let mut r = good.clone();
        r["apiVersion"] = json!("admission.k8s.io/v1beta1");
        r.to_string()
    };
    let service = review(
        ("", "v1", "Service"),
        "services",
        Some("shop"),
        "web",
        "CREATE",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}),
        Value::Null,
        false,
    )
    .to_string();
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string();
    let not_a_pod = {
        let mut r = good.clone();
        r["request"]["object"]["spec"] = json!("a string");
        r.to_string()
    };
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "not JSON",
            MUTATE_POD_PATH,
            "hello, webhook".into(),
            "body is not an AdmissionReview admission.k8s.io/v1 JSON document",
        ),
        ("empty", MUTATE_POD_PATH, String::new(), "body is not an AdmissionReview"),
        ("truncated", MUTATE_POD_PATH, good_text[..good_text.len() / 2].to_owned(), "EOF while parsing"),
        ("truncated", VALIDATE_SLICECONFIG_PATH, good_text[..40].to_owned(), "EOF while parsing"),
        (
            "wrong kind",
            MUTATE_POD_PATH,
            wrong_envelope,
            "expected kind AdmissionReview apiVersion admission.k8s.io/v1, got kind \"Pod\"",
        ),
        (
            "old version",
            MUTATE_POD_PATH,
            v1beta1,
            "got kind \"AdmissionReview\" apiVersion \"admission.k8s.io/v1beta1\"",
        ),
        ("wrong object kind", MUTATE_POD_PATH, service, "this endpoint reviews Pod, got Service"),
        (
            "wrong object kind",
            VALIDATE_SLICECONFIG_PATH,
            good_text.clone(),
            "this endpoint reviews SliceConfig.slicenet.io, got Pod",
        ),
        ("no request", MUTATE_POD_PATH, no_request, "AdmissionReview has no request"),
        ("object not a pod", MUTATE_POD_PATH, not_a_pod, "request.object is not a Pod"),
    ];
    for (what, path, body, reason) in cases {
        let (status, text) = s.post(path, body).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(text.starts_with("bad AdmissionReview: "), "{what}: {text}");
        assert!(text.contains(reason), "{what}: {text:?} lacks {reason:?}");
        still_serving(&s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_times_out_and_the_server_goes_on() {
    // Long enough for a busy machine to complete the normal requests below; the stalled one
    // never completes, whatever the machine's speed.
    let settings = Settings { request_timeout: Duration::from_secs(2), ..Settings::default() };
    let s = TestServer::start(settings, blue_shop(), Arc::new(StaticHub::default()), None).await;
    // Headers announce 100 bytes; only one arrives.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let mut tls = s.connector.connect(name, tcp).await.unwrap();
    let head = format!("POST {MUTATE_POD_PATH} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Length: 100\r\n\r\n{{");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(60), tls.read(&mut answer)).await.expect("an answer").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request not completed within 2s"), "{answer}");
    still_serving(&s).await;
}

/// Sends `head` and then `body_part` on a new TLS connection while reading, until the server
/// answers or closes. The server may refuse and close before the body is all sent (that is the
/// point of refusing from the headers): writing the body then fails with a broken pipe or a
/// reset, which is not an error here; the answer is read as it comes, beside the writes.
async fn raw_exchange(s: &TestServer, head: &[u8], body_part: &[u8]) -> String {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let mut tls = s.connector.connect(name, tcp).await.unwrap();
    tls.write_all(head).await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(tls);
    let body = body_part.to_vec();
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let read = async {
        // Until the server closes (or resets) the connection: an error after the answer ends it.
        while let Ok(n) = reader.read(&mut buf).await
            && n > 0
        {
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("an answer or a close");
    drop(sender.await);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A body declared larger than the limit is refused from its headers: the server never reads
/// (or waits for) the 2 GiB; a chunked body is refused once it crosses the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_before_it_is_read() {
    let s = default_server().await;
    let head = format!(
        "POST {MUTATE_POD_PATH} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2u64 << 30
    );
    let answer = raw_exchange(&s, head.as_bytes(), &[b' '; 64 * 1024]).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("the body is larger than the limit of 6291456 bytes"), "{answer}");
    still_serving(&s).await;

    // Chunked: 7 chunks of 1 MiB cross the 6 MiB limit; the answer comes without the end.
    let head = format!(
        "POST {MUTATE_POD_PATH} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let mut chunks = Vec::new();
    for _ in 0..7 {
        chunks.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
        chunks.extend_from_slice(&vec![b' '; 1 << 20]);
        chunks.extend_from_slice(b"\r\n");
    }
    let answer = raw_exchange(&s, head.as_bytes(), &chunks).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.200}");
    assert!(answer.contains("the body is larger than the limit"), "{answer:.200}");
    still_serving(&s).await;
}

/// Idle connections are closed by the server, and no more than `max_connections` are held at
/// once: one more is closed as soon as it is accepted. Bounded clients, states not times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_their_number_is_capped() {
    let settings = Settings { max_connections: 4, idle_timeout: Duration::from_secs(1), ..Settings::default() };
    let s = TestServer::start(settings, blue_shop(), Arc::new(StaticHub::default()), None).await;
    // Four idle TLS connections take every slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        idle.push(s.connector.connect(name, tcp).await.expect("a slot is free"));
    }
    // A fifth is closed: its TLS handshake cannot complete.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    assert!(s.connector.connect(name, tcp).await.is_err(), "a fifth connection was served");
    // The server closes each idle one (EOF, or a TLS close_notify then EOF).
    for (i, tls) in idle.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(60), tls.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("idle connection {i} never closed"));
        assert!(matches!(n, Ok(0) | Err(_)), "idle connection {i} got data: {n:?}");
    }
    // The slots are free again: a request on a new connection is served.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pod("shop", Value::Null, Value::Null);
        match Client::connect(s.addr, &s.connector, SERVER_NAME).await {
            Ok(mut c) => {
                let (status, _) = c.post(MUTATE_POD_PATH, pod_create(&p, false).to_string()).await.unwrap();
                assert_eq!(status.as_u16(), 200);
                break;
            }
            // Closed connections may take a moment to release their slot.
            Err(e) => assert!(Instant::now() < deadline, "never served again: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// HTTP/2, which the API server negotiates when offered (ALPN `h2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    use http_body_util::{BodyExt, Full};
    let s = default_server().await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::pem_slice_iter(
        s.ca.ca_pem().as_bytes(),
    ) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(webhooks::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_ref()));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let body = pod_create(&pod("shop", Value::Null, Value::Null), false);
    for _ in 0..3 {
        let req = hyper::Request::post(format!("https://{SERVER_NAME}{MUTATE_POD_PATH}"))
            .header("content-type", "application/json")
            .body(Full::new(hyper::body::Bytes::from(body.to_string())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), 200);
        let answer: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(answer["response"]["uid"], body["request"]["uid"]);
        assert!(patch_of(&answer).is_some());
    }
}

/// The client closes its side after part of the announced body: 400, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_gets_400() {
    let s = default_server().await;
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME).unwrap();
    let mut tls = s.connector.connect(name, tcp).await.unwrap();
    let head = format!(
        "POST {MUTATE_POD_PATH} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Length: 1000\r\n\r\n{{\"apiVersion\":"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await.expect("an answer").ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.contains("bad AdmissionReview: the body could not be read"), "{answer}");
    still_serving(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_comes_from_the_mounted_configmap_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let membership = Arc::new(ConfigMapDir::new(dir.path()));
    let _refresh = membership.spawn_refresh(Duration::from_millis(50));
    let s = TestServer::start(Settings::default(), membership.clone(), Arc::new(StaticHub::default()), None).await;
    let mut c = s.client().await;
    // The directory is empty but exists: loaded, no members.
    wait_ready(&mut c).await;
    let p = pod("shop", Value::Null, Value::Null);
    let answer = s.review(MUTATE_POD_PATH, &pod_create(&p, false)).await;
    assert!(patch_of(&answer).is_none(), "{answer}");

    // The worker adds shop to blue (the kubelet writes the key file).
    std::fs::write(dir.path().join("blue"), "cart,shop").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = s.review(MUTATE_POD_PATH, &pod_create(&p, false)).await;
        if let Some(patch) = patch_of(&answer) {
            assert_eq!(
                patch,
                json!([{"op": "add", "path": "/metadata/annotations", "value": {"slicenet.io/slice": "blue"}}])
            );
            break;
        }
        assert!(Instant::now() < deadline, "membership change not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And removes it again.
    std::fs::write(dir.path().join("blue"), "cart").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while patch_of(&s.review(MUTATE_POD_PATH, &pod_create(&p, false)).await).is_some() {
        assert!(Instant::now() < deadline, "membership removal not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_membership_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("membership");
    let membership = Arc::new(ConfigMapDir::new(&missing));
    let _refresh = membership.spawn_refresh(Duration::from_millis(50));
    let s = TestServer::start(Settings::default(), membership, Arc::new(StaticHub::default()), None).await;
    let mut c = s.client().await;
    let (status, body) = c.get("/readyz").await.unwrap();
    assert_eq!(status.as_u16(), 503, "{body:?}");
    // A review now cannot be decided: 500, so the API server applies the failure policy.
    let (status, text) =
        s.post(MUTATE_POD_PATH, pod_create(&pod("shop", Value::Null, Value::Null), false).to_string()).await;
    assert_eq!(status, 500);
    assert!(text.contains("slice membership has not been loaded yet"), "{text}");
    std::fs::create_dir(&missing).unwrap();
    wait_ready(&mut c).await;
}

async fn wait_ready(c: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.get("/readyz").await.unwrap().0.as_u16() != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rotates the certificate 12 times (half of them written non-atomically: the certificate first,
/// the key a little later, as a careless tool would) while 6 clients send reviews — 3 on new
/// connections each time (a handshake per request), 3 on keep-alive connections. No request may
/// fail, and new connections must see the new certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_fails_no_request() {
    let s = Arc::new(
        TestServer::start(
            Settings::default(),
            blue_shop(),
            Arc::new(StaticHub::default()),
            Some(Duration::from_millis(20)),
        )
        .await,
    );
    let first_cert = s.certs.current_der();
    let body = pod_create(&pod("shop", Value::Null, Value::Null), false).to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (s, body, stop, ok, failed, seen) =
            (s.clone(), body.clone(), stop.clone(), ok.clone(), failed.clone(), seen.clone());
        clients.push(tokio::spawn(async move {
            let fresh = i % 2 == 0;
            let mut conn: Option<Client> = None;
            while !stop.load(Ordering::Relaxed) {
                let outcome = async {
                    if fresh || conn.as_ref().is_none_or(|c| !c.is_open()) {
                        let c = Client::connect(s.addr, &s.connector, SERVER_NAME).await?;
                        seen.lock().unwrap().insert(c.peer_cert.clone());
                        conn = Some(c);
                    }
                    let (status, text) = conn.as_mut().expect("just set").post(MUTATE_POD_PATH, body.clone()).await?;
                    anyhow::ensure!(status.as_u16() == 200, "status {status}: {text:?}");
                    let answer: Value = serde_json::from_slice(&text)?;
                    anyhow::ensure!(answer["response"]["allowed"] == true, "{answer}");
                    Ok(())
                }
                .await;
                match outcome {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("request failed during rotation: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Each round waits for states, not times: the clients completed requests since the last
    // rotation, and a new connection was served the new certificate.
    let progress =
        |since: usize, der: &[u8]| ok.load(Ordering::Relaxed) >= since + 6 && seen.lock().unwrap().contains(der);
    for round in 0..12 {
        let since = ok.load(Ordering::Relaxed);
        let (cert, key) = s.ca.issue(&[SERVER_NAME]).unwrap();
        if round % 2 == 0 {
            // Half-written pair for a while: the old pair must stay in service.
            std::fs::write(&s.cert_path, &cert).unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
            std::fs::write(&s.key_path, &key).unwrap();
        } else {
            // Atomic replacement by rename, as the kubelet does for a mounted Secret.
            let dir = s.cert_path.parent().unwrap();
            std::fs::write(dir.join(".new.key"), &key).unwrap();
            std::fs::write(dir.join(".new.crt"), &cert).unwrap();
            std::fs::rename(dir.join(".new.key"), &s.key_path).unwrap();
            std::fs::rename(dir.join(".new.crt"), &s.cert_path).unwrap();
        }
        let der = pem_der(&cert);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !progress(since, &der) {
            assert!(Instant::now() < deadline, "round {round}: the new certificate was never served");
            assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during rotation");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let distinct = seen.lock().unwrap().len();
    eprintln!("rotation: {ok} requests ok, {failed} failed, {distinct} distinct certificates seen by clients");
    assert_eq!(failed, 0, "requests failed during rotation");
    assert!(ok >= 12 * 6, "{ok} requests over 12 rotations");
    assert_ne!(s.certs.current_der(), first_cert, "never rotated");
    assert_eq!(distinct, 13, "clients saw the first certificate and each of the 12 new ones");
    // A new connection now gets exactly the certificate on disk.
    let c = s.client().await;
    assert_eq!(c.peer_cert, s.certs.current_der());
}

/// The DER bytes of the first certificate in `pem`.
fn pem_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate").to_vec()
}
