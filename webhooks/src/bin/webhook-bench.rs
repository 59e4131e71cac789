//! `webhook-bench`: latency and throughput of the pod mutating webhook on loopback.
//!
//! Starts the real server (TLS with a throw-away CA, HTTP, decode, mutate, encode) on
//! 127.0.0.1 on its own runtime, then drives it open-loop from `--connections` keep-alive
//! connections (as the API server reuses its connections) at `--rate` requests/s in total, for
//! `--requests` requests or `--max-seconds`, whichever ends first. Latency is measured from the
//! moment a request is sent to the moment its whole answer is read. tokio's timer has a 1 ms
//! granularity, so sends start up to ~1 ms after they are due; the benchmark reports how many
//! started more than 5 ms late (a sign that the server, or the machine, cannot keep the rate,
//! which the achieved rate shows too). Prints p50/p90/p99/max and the achieved rate; exits 1 if
//! any request failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{Value, json};
use webhooks::client::{Client, connector};
use webhooks::hub::StaticHub;
use webhooks::membership::StaticMembership;
use webhooks::mutate::Mode;
use webhooks::server::{AppState, MUTATE_POD_PATH, Settings};
use webhooks::tls::{CertStore, DevCa};

const SERVER_NAME: &str = "slice-webhooks.slicenet-system.svc";

/// Bounded load benchmark of the pod mutating webhook.
#[derive(Debug, Parser)]
struct Args {
    /// Total requests to send.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Target rate, requests per second, over all connections.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Hard time bound of the run.
    #[arg(long, default_value_t = 30)]
    max_seconds: u64,
    /// Webhook mode (multus does the most work: annotation plus networks merge).
    #[arg(long, value_enum, default_value = "multus")]
    mode: Mode,
    /// Server runtime worker threads.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
}

/// The review of a member pod with a networks annotation in text form, as the API server sends it.
fn review(i: usize) -> String {
    let namespace = if i % 5 == 4 { "default" } else { "shop" };
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{i:012x}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:authenticated"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": namespace, "labels": {"app": "web"},
                             "annotations": {"k8s.v1.cni.cncf.io/networks": "macvlan-conf@net1"}},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}
            },
            "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
    .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0 && args.connections > 0 && args.requests > 0,
        "rate, connections and requests must be > 0"
    );

    // The server: its own runtime, its own threads.
    let dir = tempfile::tempdir()?;
    let ca = DevCa::new()?;
    let (cert, key) = ca.issue(&[SERVER_NAME])?;
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert)?;
    std::fs::write(&key_path, key)?;
    let server_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.server_threads.max(1)).enable_all().build()?;
    let membership = StaticMembership::from_slices(&BTreeMap::from([("blue".to_owned(), vec!["shop".to_owned()])]));
    let state = Arc::new(AppState {
        settings: Settings { mode: args.mode, ..Settings::default() },
        membership: Arc::new(membership),
        hub: Arc::new(StaticHub::default()),
        certs: CertStore::load(&cert_path, &key_path)?,
    });
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    server_rt.spawn(async move {
        if let Err(e) = webhooks::server::serve(listener, state, std::future::pending()).await {
            eprintln!("server failed: {e:#}");
        }
    });

    // The clients: one current-thread runtime, open loop.
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let tls = connector(ca.ca_pem())?;
    let bodies: Arc<Vec<String>> = Arc::new((0..64).map(review).collect());
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let deadline = Duration::from_secs(args.max_seconds);
    let (latencies, errors, late, elapsed) = client_rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..args.connections {
            let mut c = Client::connect(addr, &tls, SERVER_NAME).await.context("connect")?;
            // Warm-up request per connection (not counted).
            c.post(MUTATE_POD_PATH, bodies[0].clone()).await?;
            clients.push(c);
        }
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for (w, mut client) in clients.into_iter().enumerate() {
            let bodies = Arc::clone(&bodies);
            let (n, conns) = (args.requests, args.connections);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                let mut late = 0usize;
                let mut k = w;
                while k < n {
                    let due = start + interval * u32::try_from(k).unwrap_or(u32::MAX);
                    if due.duration_since(start) > deadline {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    let sent = tokio::time::Instant::now();
                    if sent.duration_since(due) > Duration::from_millis(5) {
                        late += 1;
                    }
                    match client.post(MUTATE_POD_PATH, bodies[k % bodies.len()].clone()).await {
                        Ok((status, body)) if status.is_success() => {
                            let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            if answer["response"]["allowed"] == true {
                                lat.push(sent.elapsed());
                            } else {
                                errors += 1;
                            }
                        }
                        _ => errors += 1,
                    }
                    k += conns;
                }
                (lat, errors, late)
            }));
        }
        let mut all = Vec::new();
        let (mut errors, mut late) = (0, 0);
        for t in tasks {
            let (lat, e, l) = t.await?;
            all.extend(lat);
            errors += e;
            late += l;
        }
        anyhow::Ok((all, errors, late, start.elapsed()))
    })?;

    let mut sorted = latencies;
    sorted.sort();
    let done = sorted.len();
    let achieved = done as f64 / elapsed.as_secs_f64();
    let p99 = percentile(&sorted, 99.0);
    println!("webhook-bench: POST {MUTATE_POD_PATH} over TLS on loopback, mode {:?}", args.mode);
    println!(
        "  target {} req/s on {} keep-alive connections; {done} ok, {errors} failed in {:.2} s",
        args.rate,
        args.connections,
        elapsed.as_secs_f64()
    );
    println!("  achieved {achieved:.0} req/s; {late} requests started more than 5 ms after they were due");
    println!(
        "  latency p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 90.0)),
        ms(p99),
        ms(sorted.last().copied().unwrap_or_default())
    );
    let met = p99 < Duration::from_millis(2) && achieved >= f64::from(args.rate) * 0.95;
    println!("  goal p99 < 2 ms at {} req/s: {}", args.rate, if met { "met" } else { "NOT met" });
    if errors > 0 {
        anyhow::bail!("{errors} requests failed");
    }
    Ok(())
}
