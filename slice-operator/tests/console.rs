//! The hub's web console (`slice-operator hub --console`) against the in-memory API: a reconcile
//! publishes the console's document from its reads, and the console's endpoints serve the page,
//! its assets, the document and its live event stream, read-only.

use std::time::Duration;

use serde_json::{Value, json};
use slice_kube::console::{Console, spawn};
use slice_kube::memory::MemoryApi;
use slice_operator::hub::{self, HubOptions};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// A bound on a hung test only.
const WAIT: Duration = Duration::from_secs(60);

async fn get(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn a_reconcile_feeds_the_console_and_its_endpoints_serve_it() {
    let api = MemoryApi::new([("hub".to_owned(), slice_operator::access::HUB, "slicenet-system".to_owned())]);
    let hub = "hub".to_owned();
    api.put(
        hub.clone(),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": "blue"},
               "spec": {"sliceSubnet": "10.80.0.0/16", "clusters": ["c1", "c2"]}}),
    );
    for c in ["c1", "c2"] {
        api.put(
            hub.clone(),
            json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": c}, "spec": {}}),
        );
    }
    let console = Console::new();
    let mut ctx = hub::Context::new(Duration::from_secs(60), "hub-0");
    ctx.console = Some(console.clone());
    let now = "2026-11-23T20:00:00Z".parse().unwrap();
    hub::reconcile(&api.client(hub.clone()), &ctx, now).await.expect("first pass");
    let (addr, task) = spawn("127.0.0.1:0".parse().unwrap(), console.clone()).await.unwrap();

    let model: Value =
        serde_json::from_str(body(&get(addr, "GET /api/model HTTP/1.1\r\nHost: x\r\n\r\n").await)).unwrap();
    let clusters: Vec<&str> =
        model["clusters"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(clusters, ["c1", "c2"]);
    assert_eq!(model["slices"][0]["name"], "blue");
    assert!(
        model["problems"].as_array().unwrap().iter().any(|p| p["check"] == "cluster-heartbeat"),
        "no worker has reported: {model}"
    );

    // The second pass reads the WorkerSlices the first wrote: their tunnels appear, not reported.
    hub::reconcile(&api.client(hub.clone()), &ctx, now).await.expect("second pass");
    let model: Value = serde_json::from_str(&console.current()).unwrap();
    let tunnels: Vec<(String, String)> = model["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                format!("{}→{}", t["from"].as_str().unwrap(), t["to"].as_str().unwrap()),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(tunnels, [("c1→c2".to_owned(), "Unknown".to_owned()), ("c2→c1".to_owned(), "Unknown".to_owned())]);

    let page = get(addr, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n") && page.contains("text/html"), "{page}");
    assert!(body(&page).contains("<script src=\"console.js\">"));
    assert!(page.contains("Content-Security-Policy: default-src 'self'"));
    assert!(body(&get(addr, "GET /console.js HTTP/1.1\r\n\r\n").await).contains("EventSource"));
    assert!(get(addr, "GET /console.css HTTP/1.1\r\n\r\n").await.contains("text/css"));
    assert!(get(addr, "POST /api/model HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await.starts_with("HTTP/1.1 405"));
    assert!(get(addr, "GET /nothing HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
    let head = get(addr, "HEAD /api/model HTTP/1.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200") && body(&head).is_empty(), "{head}");
    let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
    assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"));

    // The event stream: the document at once, then again after a change, without a new request.
    let mut events = BufReader::new(TcpStream::connect(addr).await.unwrap());
    events.get_mut().write_all(b"GET /api/events HTTP/1.1\r\n\r\n").await.unwrap();
    let mut next_data = async || loop {
        let mut line = String::new();
        tokio::time::timeout(WAIT, events.read_line(&mut line)).await.unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            return serde_json::from_str::<Value>(data.trim_end()).unwrap();
        }
    };
    assert_eq!(next_data().await["slices"][0]["name"], "blue");
    api.put(
        hub.clone(),
        json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": "c3"}, "spec": {}}),
    );
    hub::reconcile(&api.client(hub), &ctx, now).await.expect("third pass");
    let changed = next_data().await;
    assert_eq!(changed["clusters"].as_array().unwrap().len(), 3, "{changed}");
    task.abort();
}

#[test]
fn the_console_is_off_unless_asked_for() {
    use clap::Parser as _;
    let parse = |args: &[&str]| match slice_operator::cli::Cli::try_parse_from(args).unwrap().command {
        slice_operator::cli::Command::Hub(o) => o,
        _ => unreachable!(),
    };
    assert_eq!(parse(&["slice-operator", "hub"]).console, None);
    assert_eq!(HubOptions::default().console, None);
    assert_eq!(
        parse(&["slice-operator", "hub", "--console", "127.0.0.1:8090"]).console,
        Some("127.0.0.1:8090".parse().unwrap())
    );
}
