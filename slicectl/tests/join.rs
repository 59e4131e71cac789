//! The one-step join: `slicectl join --hub-kubeconfig` against the in-memory API
//! (`slice_kube::memory`, served to kube-rs as the hub) creates the MemberCluster, the worker's
//! hub access and a token, and `--rotate` revokes and replaces the token without touching the
//! registration; the join file it writes makes `slicectl install worker --join` print the same
//! bytes as the hand-made path (a kubeconfig built with `kubectl config`, as e2e/kind/run.sh did).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use slice_kube::memory::MemoryApi;
use slicectl::join::JoinOptions;
use slicectl::join_file::JoinFile;
use slicectl::register::{HubEndpoint, JOIN_ACCESS, register, rotate};

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBhub\n-----END CERTIFICATE-----\n";

fn ca_data() -> String {
    base64::engine::general_purpose::STANDARD.encode(CA_PEM)
}

fn hub_endpoint() -> HubEndpoint {
    HubEndpoint { server: "https://hub-control-plane:6443".into(), certificate_authority_data: ca_data() }
}

fn opts() -> JoinOptions {
    JoinOptions {
        cluster: "east".into(),
        pod_cidrs: vec!["10.244.0.0/16".into()],
        service_cidrs: vec!["10.96.0.0/16".into()],
        multus: false,
        uplink_kbps: None,
    }
}

fn hub() -> MemoryApi<String> {
    MemoryApi::new([("hub".to_owned(), JOIN_ACCESS, "slicenet-cluster-east".to_owned())])
}

const MC: &str = "/apis/slicenet.io/v1alpha1/memberclusters/east";
const SA: &str = "/api/v1/namespaces/slicenet-cluster-east/serviceaccounts/slicenet-worker";

fn uid(api: &MemoryApi<String>, path: &str) -> String {
    let obj = api.get("hub".into(), path).unwrap_or_else(|| panic!("no {path}"));
    obj["metadata"]["uid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn join_creates_the_hub_side_and_rotate_replaces_only_the_token() {
    let api = hub();
    let client = api.client("hub".into());
    let file = register(&client, &opts(), &hub_endpoint()).await.unwrap();
    assert_eq!(api.violations(), Vec::<String>::new(), "join asks only what JOIN_ACCESS declares");

    // Every object of the hand-made path (`join` + `install worker-hub-access`) is there.
    let expected = slicectl::register::hub_objects(&opts()).unwrap();
    assert!(expected.documents().len() >= 6, "{:?}", expected.documents().len());
    for doc in expected.documents() {
        let (api_version, kind) = doc.type_meta();
        let object: serde_json::Value = serde_json::to_value(&doc.object).unwrap();
        let path = slice_kube::memory::object_path(&object);
        let stored = api.get("hub".into(), &path).unwrap_or_else(|| panic!("{api_version} {kind} {path} missing"));
        assert_eq!(stored["metadata"]["name"], object["metadata"]["name"]);
    }
    let mc = api.get("hub".into(), MC).unwrap();
    assert_eq!(mc["spec"]["podCidrs"][0], "10.244.0.0/16", "{mc}");
    assert_eq!(api.lock().tokens_issued, 1);
    let times = slice_api::hub_credential::TokenTimes::of(&file.token).unwrap();
    assert_eq!(
        times.expires.unwrap() - times.issued,
        slice_api::hub_credential::REQUESTED_LIFETIME_SECONDS,
        "a token bound in time, for the lifetime the worker renews from"
    );
    assert_eq!(file.cluster, "east");
    assert_eq!(file.hub_server, "https://hub-control-plane:6443");
    assert_eq!(file.certificate_authority_data, ca_data());
    file.check().unwrap();

    // Join again: the same objects (server-side apply), a new token, nothing else.
    let sa_uid = uid(&api, SA);
    let again = register(&client, &opts(), &hub_endpoint()).await.unwrap();
    assert_ne!(again.token, file.token);
    assert_eq!(uid(&api, SA), sa_uid, "joining again keeps the ServiceAccount (and the worker's tokens)");

    // Rotate: the ServiceAccount is new (bound tokens name its UID: every old token is
    // revoked), the token is new, the MemberCluster is untouched.
    let mc_before = api.get("hub".into(), MC).unwrap();
    api.take_requests();
    let rotated = rotate(&client, "east", &hub_endpoint()).await.unwrap();
    assert_ne!(uid(&api, SA), sa_uid, "the ServiceAccount was made again");
    assert_ne!(rotated.token, again.token);
    assert_eq!(api.get("hub".into(), MC).unwrap(), mc_before, "the registration is not touched");
    let writes: Vec<String> = api.take_requests().iter().filter(|r| r.is_write()).map(|r| r.line()).collect();
    assert!(writes.iter().all(|w| !w.contains("memberclusters")), "{writes:?}");
    assert_eq!(writes[0], format!("hub DELETE {SA}"), "{writes:?}");
    assert!(writes.last().unwrap().ends_with("/serviceaccounts/slicenet-worker/token"), "{writes:?}");
    assert_eq!(api.violations(), Vec::<String>::new());

    // A cluster that never joined is not rotated into existence.
    let e = rotate(&client, "west", &hub_endpoint()).await.unwrap_err();
    assert!(format!("{e:#}").contains("not registered"), "{e:#}");
    assert!(api.get("hub".into(), "/api/v1/namespaces/slicenet-cluster-west").is_none());
}

#[tokio::test]
async fn a_refused_request_is_named() {
    let api = hub();
    api.fail("hub".into(), "POST", SA, 0, 403);
    let e = register(&api.client("hub".into()), &opts(), &hub_endpoint()).await.unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains("requesting a token for ServiceAccount slicenet-cluster-east/slicenet-worker"), "{text}");
}

/// The kubeconfig `kubectl config set-cluster hub --server S --certificate-authority ca.crt
/// --embed-certs; set-credentials slicenet-worker-east --token T; set-context hub --cluster hub
/// --user slicenet-worker-east; use-context hub` writes (kubectl 1.32, byte for byte): the
/// hand-made path of e2e/kind/run.sh before `join` wrote join files.
fn hand_made_kubeconfig(token: &str) -> String {
    format!(
        "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: https://hub-control-plane:6443
  name: hub
contexts:
- context:
    cluster: hub
    user: slicenet-worker-east
  name: hub
current-context: hub
kind: Config
preferences: {{}}
users:
- name: slicenet-worker-east
  user:
    token: {token}
",
        ca = ca_data()
    )
}

fn slicectl(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl")).args(args).output().unwrap();
    assert!(out.status.success(), "slicectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write_tls(dir: &Path) {
    let mut names = slicectl::tls::service_dns_names("slicenet-webhook", "slicenet-system");
    names.extend(slicectl::tls::service_dns_names("slicenet-hub-webhook", "slicenet-system"));
    let tls = slicectl::tls::generate(&names).unwrap();
    std::fs::write(dir.join("ca.crt"), &tls.ca_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &tls.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &tls.key_pem).unwrap();
}

#[test]
fn install_worker_from_the_join_file_equals_the_hand_made_path() {
    let dir = tempfile::tempdir().unwrap();
    write_tls(dir.path());
    let tls = dir.path().to_str().unwrap();
    let token = slice_kube::memory::jwt(&serde_json::json!({"iat": 1, "exp": 2_592_001, "sub": "slicenet-worker"}));
    let join = JoinFile::new("east", "https://hub-control-plane:6443", &ca_data(), &token);
    let join_path = dir.path().join("east.join");
    join.write(&join_path).unwrap();
    assert_eq!(std::fs::metadata(&join_path).unwrap().permissions().mode() & 0o777, 0o600);
    let kubeconfig = dir.path().join("east-hub.kubeconfig");
    std::fs::write(&kubeconfig, hand_made_kubeconfig(&token)).unwrap();
    assert_eq!(join.kubeconfig(), hand_made_kubeconfig(&token));

    let image = ["--image", "slicenet:e2e", "--webhook-tls-dir", tls];
    let from_join = slicectl(&[&["install", "worker", "--join", join_path.to_str().unwrap()][..], &image].concat());
    let by_hand = slicectl(
        &[&["install", "worker", "--cluster", "east", "--hub-kubeconfig", kubeconfig.to_str().unwrap()][..], &image]
            .concat(),
    );
    assert!(from_join.contains("kind: DaemonSet"), "a whole worker install");
    assert_eq!(from_join, by_hand);

    // After a rotation: only the Secret, the same one the whole install holds.
    let credentials = slicectl(&["install", "worker-credentials", "--join", join_path.to_str().unwrap()]);
    let secret = |text: &str| {
        let docs = slicectl::manifest::parse_documents(text).unwrap();
        docs.into_iter()
            .filter(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "slicenet-hub-kubeconfig")
            .collect::<Vec<_>>()
    };
    assert_eq!(slicectl::manifest::parse_documents(&credentials).unwrap().len(), 1);
    assert_eq!(secret(&credentials), secret(&from_join));
    assert_eq!(secret(&credentials).len(), 1);

    // A join file others can read is refused before anything is printed.
    std::fs::set_permissions(&join_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_slicectl"))
        .args(["install", "worker", "--join", join_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hub_endpoint_comes_from_the_admin_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let admin = |cluster: &str| {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: admin\nclusters:\n- name: hub\n  cluster:\n{cluster}\
             contexts:\n- name: admin\n  context: {{cluster: hub, user: admin}}\nusers:\n- name: admin\n  user: {{token: t}}\n"
        )
    };
    let path = dir.path().join("admin.yaml");
    std::fs::write(
        &path,
        admin(&format!("    server: https://127.0.0.1:40001\n    certificate-authority-data: {}\n", ca_data())),
    )
    .unwrap();
    let hub = slicectl::register::hub_endpoint(&path, None).unwrap();
    assert_eq!(hub.server, "https://127.0.0.1:40001");
    assert_eq!(hub.certificate_authority_data, ca_data());
    assert!(slicectl::register::is_loopback_server(&hub.server), "kind's address is warned about");
    for (server, loopback) in [
        ("https://[::1]:6443", true),
        ("https://localhost", true),
        ("https://10.0.0.1:6443", false),
        ("https://hub-control-plane:6443", false),
    ] {
        assert_eq!(slicectl::register::is_loopback_server(server), loopback, "{server}");
    }
    let inside = slicectl::register::hub_endpoint(&path, Some("https://hub-control-plane:6443")).unwrap();
    assert_eq!(inside.server, "https://hub-control-plane:6443");

    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, CA_PEM).unwrap();
    std::fs::write(
        &path,
        admin(&format!("    server: https://10.0.0.1:6443\n    certificate-authority: {}\n", ca_file.display())),
    )
    .unwrap();
    assert_eq!(slicectl::register::hub_endpoint(&path, None).unwrap().certificate_authority_data, ca_data());

    std::fs::write(&path, admin("    server: https://10.0.0.1:6443\n")).unwrap();
    let e = slicectl::register::hub_endpoint(&path, None).unwrap_err();
    assert!(format!("{e:#}").contains("needs the hub's CA"), "{e:#}");
    let e = slicectl::register::hub_endpoint(&path, Some("http://x")).unwrap_err();
    assert!(format!("{e:#}").contains("needs the hub's CA") || format!("{e:#}").contains("https://"), "{e:#}");
}
