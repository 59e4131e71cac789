//! The `slice-webhooks` binary as deployed: flags, certificate and key files, the membership
//! ConfigMap directory and the hub directory; it serves, follows a membership change and a
//! certificate rotation without a restart, and stops on SIGINT.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SERVER_NAME, patch_of, pod, pod_create, review, server_cert_files};
use serde_json::{Value, json};
use webhooks::client::{Client, connector};
use webhooks::server::{MUTATE_POD_PATH, VALIDATE_SLICECONFIG_PATH};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn connect_when_up(addr: std::net::SocketAddr, tls: &tokio_rustls::TlsConnector, child: &mut Child) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = Client::connect(addr, tls, SERVER_NAME).await {
            return c;
        }
        assert!(child.try_wait().unwrap().is_none(), "slice-webhooks exited");
        assert!(Instant::now() < deadline, "slice-webhooks never listened on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_reloads_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert_path, key_path) = server_cert_files(dir.path());
    let membership = dir.path().join("membership");
    std::fs::create_dir(&membership).unwrap();
    std::fs::write(membership.join("blue"), "shop").unwrap();
    let hub = dir.path().join("hub");
    std::fs::create_dir(&hub).unwrap();
    std::fs::write(
        hub.join("red.json"),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": "red"},
               "spec": {"sliceSubnet": "10.90.0.0/16", "clusters": ["c1"], "namespaces": [{"namespace": "bank"}]}})
        .to_string(),
    )
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_slice-webhooks"))
        .args(["--listen", &addr.to_string(), "--mode", "multus", "--reload-interval", "1"])
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .arg("--membership-dir")
        .arg(&membership)
        .arg("--hub-dir")
        .arg(&hub)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let tls = connector(ca.ca_pem()).unwrap();
    let mut c = connect_when_up(addr, &tls, &mut server.0).await;
    assert_eq!(c.get("/readyz").await.unwrap().0.as_u16(), 200);
    let first_cert = c.peer_cert.clone();

    // Multus mode from the flag, membership from the directory.
    let p = pod("shop", Value::Null, Value::Null);
    let (status, body) = c.post(MUTATE_POD_PATH, pod_create(&p, false).to_string()).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let patch = patch_of(&answer).expect("member pod gets a patch");
    assert_eq!(
        patch[0]["value"],
        json!({"slicenet.io/slice": "blue", "k8s.v1.cni.cncf.io/networks": "shop/slice-blue@slice0"})
    );

    // Validation sees the hub directory: bank belongs to red in c1.
    let blue = json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": "blue"},
                      "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1"], "namespaces": [{"namespace": "bank"}]}});
    let r = review(
        ("slicenet.io", "v1alpha1", "SliceConfig"),
        "sliceconfigs",
        None,
        "blue",
        "CREATE",
        blue,
        Value::Null,
        false,
    );
    let (status, body) = c.post(VALIDATE_SLICECONFIG_PATH, r.to_string()).await.unwrap();
    assert_eq!(status.as_u16(), 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("namespace bank already belongs to slice red")
    );

    // Membership change and certificate rotation, picked up without a restart.
    std::fs::write(membership.join("blue"), "").unwrap();
    let (cert, key) = ca.issue(&[SERVER_NAME]).unwrap();
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut fresh = connect_when_up(addr, &tls, &mut server.0).await;
        let (_, body) = fresh.post(MUTATE_POD_PATH, pod_create(&p, false).to_string()).await.unwrap();
        let answer: Value = serde_json::from_slice(&body).unwrap();
        if fresh.peer_cert != first_cert && patch_of(&answer).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "rotation or membership change not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The old keep-alive connection still works.
    assert_eq!(c.get("/healthz").await.unwrap().0.as_u16(), 200);

    // SIGINT: a clean exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(server.0.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
