//! Section 14: the web console's weight and speed in headless Chromium for 3 and 50 simulated
//! clusters (one slice over all of them, every tunnel up and measured: a full mesh, the largest
//! document), what serving it costs the serving process with a page open on 50 clusters, and
//! what the hub itself spends making it ([`hub_open`]).
//!
//! The clusters are simulated: a hub view built in memory (MemberClusters, a SliceConfig, one
//! WorkerSlice per cluster with a status), turned into the console's document as the hub does
//! on every pass, served by the console's own server on loopback to Debian's Chromium.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use slice_api::console::Model;
use slice_api::crd::{MemberCluster, SliceConfig, WorkerSlice};
use slice_api::hub_view::HubView;
use slice_kube::console::{CONSOLE_CSS, CONSOLE_JS, Console, INDEX_HTML};

use super::stats::Summary;
use crate::browser::Browser;

pub(crate) const BEGIN: &str = "<!-- slicenet-bench console: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench console: end -->";
/// The cluster counts measured.
pub(crate) const SIZES: [usize; 2] = [3, 50];
/// Page loads per size.
const LOADS: usize = 5;
/// How long the page stays open on the largest size while the document changes every second.
const OPEN_SECONDS: u64 = 20;

/// One size's figures.
#[derive(Debug, Clone)]
pub(crate) struct Size {
    pub clusters: usize,
    pub tunnels: usize,
    /// The JSON document, bytes.
    pub document: usize,
    /// Time to first render after navigation start, ms, over the loads.
    pub first_render: Summary,
}

#[derive(Debug, Clone)]
pub(crate) struct ConsoleSection {
    /// HTML + script + style, bytes.
    pub assets: usize,
    pub sizes: Vec<Size>,
    /// CPU seconds of the serving process per second with the page open on the largest size,
    /// the document rebuilt and published every second.
    pub cpu_per_second: f64,
    /// Its resident memory at the end, KiB.
    pub rss_kib: u64,
    /// The hub itself on the largest size ([`hub_open`]).
    pub hub: HubFigures,
}

/// The hub's own figures with a page open on the largest size.
#[derive(Debug, Clone)]
pub(crate) struct HubFigures {
    /// Whole passes made (one a second).
    pub passes: u64,
    /// CPU seconds of the hub's thread per second.
    pub cpu_per_second: f64,
    /// The slowest pass, ms.
    pub slowest_pass_ms: f64,
    /// What the process's resident memory grew by from before the hub started to the end, KiB.
    pub rss_growth_kib: u64,
}

/// A hub view of `n` healthy clusters with one slice over all of them, every tunnel up.
pub(crate) fn simulated(n: usize, tick: u64) -> Result<HubView> {
    let names: Vec<String> = (1..=n).map(|i| format!("c{i}")).collect();
    let heartbeat = format!("2026-12-04T20:{:02}:{:02}Z", (tick / 60) % 60, tick % 60);
    let mut view = HubView::default();
    view.slices.push(serde_json::from_value::<SliceConfig>(json!({
        "apiVersion": "slicenet.io/v1alpha1", "kind": "SliceConfig", "metadata": {"name": "blue"},
        "spec": {"sliceSubnet": "10.80.0.0/12", "maxClusters": 64, "clusters": names, "namespaces": [{"namespace": "shop"}]},
        "status": {"vni": 4097, "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}
    }))?);
    for (i, name) in names.iter().enumerate() {
        view.clusters.push(serde_json::from_value::<MemberCluster>(json!({
            "apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name}, "spec": {},
            "status": {"gatewayAddresses": [format!("198.19.0.{}", 10 + i)], "lastHeartbeat": heartbeat,
                       "conditions": [{"type": "Healthy", "status": "True", "reason": "Heartbeat"}]}
        }))?);
        let peers: Vec<_> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, p)| json!({"cluster": p, "prefix": format!("10.{}.{}.0/20", 80 + j / 16, (j % 16) * 16)}))
            .collect();
        let statuses: Vec<_> = names
            .iter()
            .filter(|p| *p != name)
            .map(|p| {
                json!({"cluster": p, "state": "Up", "lastHandshake": heartbeat,
                            "health": {"rttMillis": 1, "rxBytes": 1_000_000 + tick, "txBytes": 2_000_000 + tick,
                                       "rxPackets": 1000, "txPackets": 2000, "rxLossPermille": 0}})
            })
            .collect();
        view.workers.push(serde_json::from_value::<WorkerSlice>(json!({
            "apiVersion": "slicenet.io/v1alpha1", "kind": "WorkerSlice",
            "metadata": {"name": "blue", "namespace": format!("slicenet-cluster-{name}")},
            "spec": {"slice": "blue", "cluster": name, "sliceSubnet": "10.80.0.0/12", "clusterPrefix": format!("10.{}.{}.0/20", 80 + i / 16, (i % 16) * 16),
                     "nodePrefixLength": 26, "vni": 4097, "peers": peers},
            "status": {"gatewayEndpoint": format!("198.19.0.{}:51820", 10 + i), "connectedPods": 3, "peers": statuses,
                       "nodes": [{"node": "n1", "prefix": format!("10.{}.{}.0/26", 80 + i / 16, (i % 16) * 16)}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}
        }))?);
    }
    Ok(view.sorted())
}

/// Waits until the page in `browser` shows `n` clusters in its topology, then returns the value
/// of the script expression `value` (not null); `page` names it in the error.
fn shown(browser: &Browser, n: usize, value: &str, page: &str) -> Result<serde_json::Value> {
    let (ok, v) = browser.wait_for(
        &format!("return document.querySelectorAll('#topology .cluster').length === {n} ? {value} : null;"),
        Duration::from_secs(60),
        |v| !v.is_null(),
    )?;
    anyhow::ensure!(ok, "{page} did not show {n} clusters: {v}");
    Ok(v)
}

/// utime + stime of this process, seconds.
fn cpu_seconds() -> f64 {
    cpu_seconds_in("/proc/self/stat")
}

/// utime + stime from a `stat` file of proc(5) (a process's or a thread's), seconds.
fn cpu_seconds_in(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // Fields 14 and 15 of stat(5); after the command's ')' they are the 12th and 13th.
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn run() -> Result<ConsoleSection> {
    let console = Console::new();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let (addr, _task) = runtime.block_on(slice_kube::console::spawn("127.0.0.1:0".parse()?, console.clone()))?;
    let url = format!("http://{addr}/");
    let browser = Browser::start(390, 844)?;
    let mut sizes = Vec::new();
    for n in SIZES {
        super::process::check_interrupted()?;
        let model = Model::from_view(&simulated(n, 0)?);
        console.publish(&model);
        let mut samples = Vec::new();
        for _ in 0..LOADS {
            browser.goto("about:blank")?;
            browser.goto(&url)?;
            let v = shown(&browser, n, "window.__firstRender", "the page")?;
            samples.push(Duration::from_secs_f64(v.as_f64().context("a number")? / 1000.0));
        }
        sizes.push(Size {
            clusters: n,
            tunnels: model.tunnels.len(),
            document: console.current().len(),
            first_render: Summary::of(&samples),
        });
    }
    // The page open on the largest size; the document rebuilt from a changed view and
    // published every second, as the hub does on each pass.
    let n = SIZES[SIZES.len() - 1];
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    for tick in 1..=OPEN_SECONDS {
        super::process::check_interrupted()?;
        console.publish(&Model::from_view(&simulated(n, tick)?));
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu_per_second = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    let rendered = browser.eval("return Number(document.body.dataset.rendered);")?;
    anyhow::ensure!(rendered.as_f64().unwrap_or(0.0) >= 2.0, "the open page did not follow the changes: {rendered}");
    let rss = rss_kib();
    let hub = hub_open(&browser, n)?;
    Ok(ConsoleSection {
        assets: INDEX_HTML.len() + CONSOLE_JS.len() + CONSOLE_CSS.len(),
        sizes,
        cpu_per_second,
        rss_kib: rss,
        hub,
    })
}

/// CPU seconds of thread `tid` of this process (utime + stime).
fn thread_cpu_seconds(tid: i32) -> f64 {
    cpu_seconds_in(&format!("/proc/self/task/{tid}/stat"))
}

/// The hub itself with the page open on `n` clusters: the simulated clusters' objects in the
/// in-memory API, the hub's whole pass (`Hub::resync`: lists, plan, writes, the console's
/// document) every second on a thread of its own that also serves the console, while the
/// clusters' workers write a heartbeat and changed tunnel figures every second. A whole pass
/// every second is more than the hub does (it runs a pass over what changed on each event and a
/// whole pass every `--resync-secs`, 300 by default): an upper bound. The thread's CPU includes
/// the in-memory API's side of the hub's requests (what an API server would spend).
fn hub_open(browser: &Browser, n: usize) -> Result<HubFigures> {
    use slice_api::access;
    use slice_api::crd::SYSTEM_NAMESPACE;
    use slice_kube::memory::MemoryApi;
    use slice_operator::hub;

    const HUB: &str = "hub";
    let api = MemoryApi::new([(HUB.to_owned(), access::HUB, SYSTEM_NAMESPACE.to_owned())]);
    api.lock().record = false;
    let view = simulated(n, 0)?;
    for c in &view.clusters {
        api.put(HUB.to_owned(), serde_json::to_value(c)?);
        let ns = slice_api::crd::cluster_namespace(&c.metadata.name.clone().unwrap_or_default());
        api.put(HUB.to_owned(), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    for s in &view.slices {
        api.put(HUB.to_owned(), serde_json::to_value(s)?);
    }
    for w in &view.workers {
        api.put(HUB.to_owned(), serde_json::to_value(w)?);
    }
    let rss_before = rss_kib();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let hub_thread = {
        let (api, stop) = (api.clone(), stop.clone());
        std::thread::Builder::new().name("hub".into()).spawn(move || -> Result<(u64, f64)> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let console = Console::new();
            let (addr, _task) =
                runtime.block_on(slice_kube::console::spawn("127.0.0.1:0".parse()?, console.clone()))?;
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let _ = tx.send((addr, tid));
            let client = {
                let _in = runtime.enter();
                api.client_as(HUB.to_owned(), access::HUB, SYSTEM_NAMESPACE)
            };
            let mut ctx = hub::Context::new(Duration::from_secs(60), "bench");
            ctx.console = Some(console);
            let mut state = hub::Hub::default();
            let (mut passes, mut slowest) = (0u64, 0f64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                runtime.block_on(state.resync(&client, &ctx, k8s_openapi::jiff::Timestamp::now()))?;
                slowest = slowest.max(started.elapsed().as_secs_f64() * 1000.0);
                passes += 1;
                // The pass's tasks (the console's connections) run while it waits.
                let rest = Duration::from_secs(1).saturating_sub(started.elapsed());
                runtime.block_on(async move { tokio::time::sleep(rest).await });
            }
            Ok((passes, slowest))
        })?
    };
    let (addr, tid) = rx.recv_timeout(Duration::from_secs(60)).context("the hub thread started")?;
    browser.goto(&format!("http://{addr}/"))?;
    shown(browser, n, "true", "the hub's console")?;
    let (cpu0, t0) = (thread_cpu_seconds(tid), Instant::now());
    for tick in 1..=OPEN_SECONDS {
        super::process::check_interrupted()?;
        // Each cluster's worker: a heartbeat and its tunnels' new figures.
        for w in &simulated(n, tick)?.workers {
            let name = &w.spec.cluster;
            let beat = json!({"status": {"lastHeartbeat": k8s_openapi::jiff::Timestamp::now().to_string()}});
            api.request(
                &HUB.to_owned(),
                "PATCH",
                &format!("/apis/slicenet.io/v1alpha1/memberclusters/{name}/status"),
                "application/merge-patch+json",
                &beat,
            );
            let ns = w.metadata.namespace.clone().unwrap_or_default();
            let peers = json!({"status": {"peers": w.status.as_ref().map(|s| &s.peers)}});
            api.request(
                &HUB.to_owned(),
                "PATCH",
                &format!("/apis/slicenet.io/v1alpha1/namespaces/{ns}/workerslices/blue/status"),
                "application/merge-patch+json",
                &peers,
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu_per_second = (thread_cpu_seconds(tid) - cpu0) / t0.elapsed().as_secs_f64();
    let rss_growth_kib = rss_kib().saturating_sub(rss_before);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (passes, slowest_pass_ms) = hub_thread.join().map_err(|_| anyhow::anyhow!("the hub thread panicked"))??;
    let rendered = browser.eval("return Number(document.body.dataset.rendered);")?;
    anyhow::ensure!(rendered.as_f64().unwrap_or(0.0) >= 2.0, "the hub's page did not follow the changes: {rendered}");
    Ok(HubFigures { passes, cpu_per_second, slowest_pass_ms, rss_growth_kib })
}

pub(crate) fn table(s: &ConsoleSection) -> String {
    let mut rows: Vec<Vec<String>> = s
        .sizes
        .iter()
        .map(|z| {
            vec![
                z.clusters.to_string(),
                z.tunnels.to_string(),
                format!("{:.1}", (s.assets + z.document) as f64 / 1024.0),
                format!("{:.1}", z.document as f64 / 1024.0),
                format!("{:.0}", z.first_render.p50),
                format!("{:.0}", z.first_render.max),
            ]
        })
        .collect();
    rows.push(vec![
        format!("page open on {}, new document every second", SIZES[SIZES.len() - 1]),
        String::new(),
        String::new(),
        String::new(),
        format!("serving process: {:.1} % of a CPU", s.cpu_per_second * 100.0),
        format!("RSS {:.1} MiB", s.rss_kib as f64 / 1024.0),
    ]);
    rows.push(vec![
        format!("the hub itself, page open on {}: {} whole passes", SIZES[SIZES.len() - 1], s.hub.passes),
        String::new(),
        String::new(),
        String::new(),
        format!(
            "hub thread: {:.1} % of a CPU (slowest pass {:.0} ms)",
            s.hub.cpu_per_second * 100.0,
            s.hub.slowest_pass_ms
        ),
        format!("RSS +{:.1} MiB", s.hub.rss_growth_kib as f64 / 1024.0),
    ]);
    crate::demo::table(
        &["clusters", "tunnels (directions)", "page weight KiB", "document KiB", "first render median ms", "max ms"],
        &rows,
    )
}

pub(crate) fn doc_section(s: &ConsoleSection, command: &str) -> String {
    format!(
        "{BEGIN}\n## 14. Web console: page weight and time to first render\n\n\
         Simulated clusters (a hub view built in memory: one slice over all of them, every tunnel up with figures — a \
         full mesh, the largest document for that many clusters), turned into the console's document as the hub does \
         on each pass and served by the console's server on loopback to Debian's headless Chromium in a 390×844 window. \
         Page weight: the page, its script and style ({:.1} KiB, no other resource) plus the JSON document. First \
         render: `performance.now()` when the page has drawn the document the first time, after navigation start \
         ({LOADS} loads each, from `about:blank`). Then the page stays open on {} clusters for {OPEN_SECONDS} s while \
         the serving process rebuilds and publishes a changed document every second: its CPU share and resident \
         memory (the browser's own cost is not counted). Last, the hub itself: the same {} clusters' objects in the \
         in-memory API, the hub's whole pass (`Hub::resync`: lists, plan, writes, the console's document) every second \
         on a thread of its own that also serves the console to the open page, while every cluster's worker writes a \
         heartbeat and new tunnel figures every second; the hub thread's CPU share (it includes the in-memory API's \
         side of the hub's requests, what an API server would spend) and what the process's resident memory grew by \
         once the hub ran (its index, documents and runtime). A whole pass every second is an upper bound: the hub \
         runs a pass over what changed on each event, a whole pass every `--resync-secs` (300). This run: a {} build \
         of `slicenet-bench` (a debug build's CPU share overstates a release hub's).\n\n{}\n{command}\n{END}\n",
        s.assets as f64 / 1024.0,
        SIZES[SIZES.len() - 1],
        SIZES[SIZES.len() - 1],
        if cfg!(debug_assertions) { "debug" } else { "release" },
        table(s)
    )
}
