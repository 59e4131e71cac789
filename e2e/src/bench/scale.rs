//! Section 12 of `slicenet-bench`: the control plane at scale, without a lab. Simulated member
//! clusters on the in-memory API (`slice_kube::memory`) against the real hub code: its index
//! and scoped decision ([`hub::HubIndex`]), its requests ([`hub::execute::execute`]) and its
//! whole pass ([`hub::Hub::resync`]); on the members' side the worker's heartbeat
//! ([`Worker::heartbeat`]), the status merge patch a worker makes when its gateway publishes a
//! key or its tunnels go down, and the worker's pure code that turns a WorkerSlice spec into the
//! gateway's wg(8) configuration.
//!
//! For each size (clusters × slices, every cluster in every slice, as issue 21 measured) the
//! fleet is built converged, then events are made one at a time; after each, the hub learns
//! the objects that changed (as its watches would deliver them) and passes until it writes
//! nothing more. Per event: the hub's CPU (learning the changes and deciding, summed over the
//! passes; the requests are timed apart, since the in-memory API server's side of them runs in
//! the same process), slices planned, writes and their bytes. Per size: the whole pass the hub
//! used to make on every event, object sizes, and the bytes the hub's index holds (a counting
//! allocator installed by the `slicenet-bench` binary). Then the gateway's per-packet peer
//! lookup with 1, 64 and 256 peers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};
use slice_api::access;
use slice_api::crd::{
    Condition, MemberCluster, MemberClusterSpec, MemberClusterStatus, PEERS_NAMESPACE, SliceConfig, SliceConfigSpec,
    SlicePeers, SlicePeersSpec, WorkerSlice, WorkerSliceStatus, cluster_namespace, owner_labels, peer_page_name,
    peers_from_pages,
};
use slice_api::hub_view::table as text_table;
use slice_api::names::SYSTEM_NAMESPACE;
use slice_api::planner::{self, PeerLists};
use slice_kube::memory::MemoryApi;
use slice_operator::hub::{self, Action, FinalizedKind, HubIndex};
use slice_operator::leader::Leadership;
use slice_operator::worker::Worker;
use slice_operator::worker::decide::Settings;
use slice_operator::worker::keys::generate_key_pair;
use slice_operator::worker::plan::{TypedGateway, TypedSpec, gateway_config};

pub(crate) const BEGIN: &str = "<!-- slicenet-bench scale: begin -->";
pub(crate) const END: &str = "<!-- slicenet-bench scale: end -->";

const HUB: &str = "hub";
/// Clusters × slices measured. With the peers paged (the hub's default, as here) 512 × 64
/// fits in memory: the peer entries are in the pages once per slice (32 K entries), no longer
/// in every WorkerSlice (16.8 M entries inline).
const SIZES: [(usize, usize); 12] = [
    (16, 1),
    (16, 16),
    (16, 64),
    (64, 1),
    (64, 16),
    (64, 64),
    (256, 1),
    (256, 16),
    (256, 64),
    (512, 1),
    (512, 16),
    (512, 64),
];
/// Sizes not run, and why.
pub(crate) const SKIPPED: &str = "The hub pages the peers (its default): each slice's peer list is in \
     `SlicePeers` pages of at most 128 peers, each WorkerSlice carries only the page count and a revision \
     (issue 21 part (b), docs/decisions.md). The same section with the peers inline in every WorkerSlice \
     (2026-12-04, same machine): a join at 256 × 64 cost 616 ms + 500 ms of hub CPU and wrote 8.7 MB + \
     8.7 MB, a worker's status 179 ms; 512 × 64 did not fit in memory. A join still patches every \
     member's WorkerSlice, with its revision only (about 60 bytes), which is what wakes the workers; \
     the SliceConfig's status lists every member's allocation (about 80 bytes each)";
/// How the measured hub lists the peers.
const LISTS: PeerLists = PeerLists::Paged;
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Bytes allocated and not yet freed, when the binary installs [`CountingAllocator`].
static ALLOCATED: AtomicIsize = AtomicIsize::new(0);

/// The system allocator, counting the bytes held (the hub's memory in this section).
pub struct CountingAllocator;

// SAFETY: every call is passed to `System` unchanged; only a counter is kept beside it.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn allocated() -> isize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// What one event cost the hub.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventCost {
    /// Learning the changed objects and deciding, summed over the passes.
    pub hub_cpu: Duration,
    /// The requests, both sides (the in-memory API server runs in this process).
    pub requests: Duration,
    pub passes: usize,
    pub planned: u64,
    pub writes: usize,
    pub bytes_written: usize,
}

/// One size's figures.
#[derive(Debug, Clone, Default)]
pub(crate) struct SizeRow {
    pub clusters: usize,
    pub slices: usize,
    /// `planner::plan` of the whole converged fleet (what issue 21 timed).
    pub whole_plan: Duration,
    /// The whole decision (plan, merge, compare every object): what the hub did on every event.
    pub whole_decide: Duration,
    /// The hub's whole pass at the start: list, index, decide, requests.
    pub whole_pass: Duration,
    /// Bytes held by the hub's index (`None`: the counting allocator is not installed).
    pub index_bytes: Option<usize>,
    pub largest_worker_slice: usize,
    pub largest_slice_config: usize,
    /// The largest `SlicePeers` page.
    pub largest_page: usize,
    pub worker_slice_bytes: usize,
    /// The worker's code for one WorkerSlice: spec → typed → gateway configuration.
    pub worker_spec: Duration,
    pub heartbeat: EventCost,
    pub status: EventCost,
    pub slice_edit: EventCost,
    pub join: EventCost,
    pub publish: EventCost,
}

/// The gateway's per-packet lookup.
#[derive(Debug, Clone)]
pub(crate) struct GatewayRow {
    pub peers: usize,
    pub ns_per_lookup: f64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ScaleSection {
    pub rows: Vec<SizeRow>,
    pub gateway: Vec<GatewayRow>,
    pub total: Duration,
}

fn cluster_name(i: usize) -> String {
    format!("m{i:03}")
}

fn slice_name(i: usize) -> String {
    format!("s{i:02}")
}

/// A whole fleet on one in-memory hub, and the hub that runs it.
struct Fleet {
    api: MemoryApi<String>,
    client: kube::Client,
    index: HubIndex,
    runtime: tokio::runtime::Runtime,
    now: i64,
    /// Gateway public keys by cluster and slice (a worker keeps a key per slice).
    keys: Vec<Vec<String>>,
}

const T0: i64 = 1_800_000_000;

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(second).expect("a valid time")
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("API types serialize")
}

/// Builds the converged fleet directly in the in-memory API (as if the hub and the workers had
/// run up to here), then the hub's first whole pass.
fn fleet(clusters: usize, slices: usize) -> Result<(Fleet, SizeRow)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let api = MemoryApi::new([(HUB.to_owned(), access::HUB, SYSTEM_NAMESPACE.to_owned())]);
    api.lock().record = false;
    let keys: Vec<Vec<String>> =
        (0..=clusters).map(|_| (0..slices).map(|_| generate_key_pair().public_key).collect()).collect();
    let names: Vec<String> = (0..clusters).map(cluster_name).collect();
    let heartbeat = at(T0).to_string();
    let members: Vec<MemberCluster> = (0..=clusters)
        .map(|i| {
            let mut c = MemberCluster::new(&cluster_name(i), MemberClusterSpec::default());
            c.metadata.finalizers = Some(vec![slice_api::crd::HUB_FINALIZER.to_owned()]);
            c.status = Some(MemberClusterStatus { last_heartbeat: Some(heartbeat.clone()), ..Default::default() });
            c
        })
        .collect();
    let mut configs: Vec<SliceConfig> = (0..slices)
        .map(|i| {
            let spec: SliceConfigSpec = serde_json::from_value(json!({
                "sliceSubnet": format!("10.{}.0.0/16", 64 + i),
                "maxClusters": 1024,
                "nodePrefixLength": 28,
                "clusters": names,
                "namespaces": [{"namespace": "web"}],
            }))
            .expect("a valid spec");
            let mut s = SliceConfig::new(&slice_name(i), spec);
            s.metadata.finalizers = Some(vec![slice_api::crd::HUB_FINALIZER.to_owned()]);
            s.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(T0 - 1000 + i as i64)));
            s
        })
        .collect();
    // The workers' reports, then the plan that distributes them.
    let status = |c: usize, s: usize| WorkerSliceStatus {
        gateway_public_key: Some(keys[c][s].clone()),
        gateway_endpoint: Some(format!("198.18.{}.{}:51820", c / 250, c % 250 + 1)),
        conditions: vec![Condition::new("Ready", true, "Up", "")],
        ..WorkerSliceStatus::default()
    };
    let first = planner::plan_with(&configs, &members, &[], &[], LISTS);
    let mut workers: Vec<WorkerSlice> = Vec::new();
    for (s, p) in first.iter().enumerate() {
        for spec in &p.workers {
            let mut w = WorkerSlice::new(&p.name, spec.clone());
            w.metadata.namespace = Some(cluster_namespace(&spec.cluster));
            w.metadata.labels = Some(owner_labels(&p.name, &spec.cluster));
            w.status = Some(status(names.binary_search(&spec.cluster).expect("a member"), s));
            workers.push(w);
        }
    }
    drop(first);
    let started = Instant::now();
    let plans = planner::plan_with(&configs, &members, &workers, &[], LISTS);
    let whole_plan = started.elapsed();
    let mut pages: Vec<SlicePeers> = Vec::new();
    for p in &plans {
        for (i, peers) in p.pages.iter().flatten().enumerate().filter(|(_, peers)| !peers.is_empty()) {
            let number = u32::try_from(i).expect("few pages");
            let mut page = SlicePeers::new(
                &peer_page_name(&p.name, number),
                SlicePeersSpec { slice: p.name.clone(), page: number, peers: peers.clone() },
            );
            page.metadata.namespace = Some(PEERS_NAMESPACE.to_owned());
            pages.push(page);
        }
    }
    for (w, spec) in workers.iter_mut().zip(plans.iter().flat_map(|p| p.workers.iter())) {
        w.spec = spec.clone();
    }
    for (s, p) in configs.iter_mut().zip(&plans) {
        let st = s.status.get_or_insert_with(Default::default);
        st.vni = p.vni;
        st.clusters = p.allocations.clone();
    }
    drop(plans);
    let world = hub::World { slices: configs, clusters: members, workers, pages, ..hub::World::default() };
    let started = Instant::now();
    let whole = hub::decide_with(&world, LISTS, at(T0), STALE_AFTER);
    let whole_decide = started.elapsed();
    drop(whole);
    let before = allocated();
    let index = HubIndex::new_with(&world, LISTS, STALE_AFTER);
    let index_bytes = usize::try_from(allocated() - before).ok().filter(|b| *b > 0);
    drop(index);

    // The worker's part: the pages of its slice → its peer list → the gateway's configuration.
    let worker_spec = {
        let w = &world.workers[0];
        let pages: Vec<&Vec<slice_api::crd::WorkerPeer>> =
            world.pages.iter().filter(|p| p.spec.slice == w.spec.slice).map(|p| &p.spec.peers).collect();
        let key: slice_api::wireguard::Key =
            generate_key_pair().private_key.parse().map_err(|e| anyhow!("a generated key: {e:?}"))?;
        let started = Instant::now();
        let runs = 20;
        for _ in 0..runs {
            let mut spec = w.spec.clone();
            spec.peers = peers_from_pages(&spec.cluster, pages.iter().copied()).0;
            let spec = &spec;
            let typed = TypedSpec::parse(spec).map_err(|e| anyhow!("the worker's spec: {e}"))?;
            let gateway = TypedGateway::parse(spec);
            let config = gateway_config(&gateway, &key);
            std::hint::black_box((typed, config));
        }
        started.elapsed() / runs
    };

    let hub::World { slices: configs, clusters: members, workers, pages, .. } = world;
    let mut largest_page = 0;
    for p in pages {
        let v = to_value(&p);
        largest_page = largest_page.max(serde_json::to_vec(&v)?.len());
        api.put(HUB.to_owned(), v);
    }
    for c in members {
        api.put(HUB.to_owned(), to_value(&c));
    }
    for s in configs {
        api.put(HUB.to_owned(), to_value(&s));
    }
    let mut largest_worker_slice = 0;
    let mut worker_slice_bytes = 0;
    for w in workers {
        let v = to_value(&w);
        let size = serde_json::to_vec(&v)?.len();
        largest_worker_slice = largest_worker_slice.max(size);
        worker_slice_bytes += size;
        api.put(HUB.to_owned(), v);
    }
    for c in 0..=clusters {
        let ns = cluster_namespace(&cluster_name(c));
        api.put(HUB.to_owned(), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    let client = {
        let _in = runtime.enter();
        api.client_as(HUB.to_owned(), access::HUB, SYSTEM_NAMESPACE)
    };
    // The hub's first whole pass (list, index, decide, requests): conditions and statuses.
    let ctx = hub::Context { peer_lists: LISTS, ..hub::Context::new(STALE_AFTER, "bench") };
    let mut whole_hub = hub::Hub::default();
    let started = Instant::now();
    runtime.block_on(whole_hub.resync(&client, &ctx, at(T0)))?;
    let whole_pass = started.elapsed();
    drop(whole_hub);
    // The index the events run on, from what the API holds now.
    let world = list(&api);
    let largest_slice_config =
        world.slices.iter().map(|s| serde_json::to_vec(s).map_or(0, |b| b.len())).max().unwrap_or(0);
    let mut index = HubIndex::new_with(&world, LISTS, STALE_AFTER);
    drop(world);
    let (d, _) = index.decide_with_coverage(at(T0));
    let left = d.actions.iter().filter(|a| !matches!(a, Action::EnsureNamespace { .. })).count();
    if left > 0 {
        return Err(anyhow!(
            "{clusters} × {slices}: the fleet is not converged after the whole pass ({left} writes left)"
        ));
    }
    let row = SizeRow {
        clusters,
        slices,
        whole_plan,
        whole_decide,
        whole_pass,
        index_bytes,
        largest_worker_slice,
        largest_slice_config,
        largest_page,
        worker_slice_bytes,
        worker_spec,
        ..SizeRow::default()
    };
    Ok((Fleet { api, client, index, runtime, now: T0, keys }, row))
}

/// Everything the hub reads, from the in-memory API's objects.
fn list(api: &MemoryApi<String>) -> hub::World {
    fn typed<T: serde::de::DeserializeOwned>(api: &MemoryApi<String>, collection: &str) -> Vec<T> {
        let items = api.list(&HUB.to_owned(), &format!("/apis/slicenet.io/v1alpha1/{collection}"));
        items.into_iter().filter_map(|o| serde_json::from_value(o).ok()).collect()
    }
    hub::World {
        slices: typed(api, "sliceconfigs"),
        clusters: typed(api, "memberclusters"),
        workers: typed(api, "workerslices"),
        pages: typed(api, "slicepeers"),
        peer_roles: api
            .list(&HUB.to_owned(), &format!("{ROLES}/roles"))
            .into_iter()
            .filter_map(|o| serde_json::from_value(o).ok())
            .collect(),
        peer_bindings: api
            .list(&HUB.to_owned(), &format!("{ROLES}/rolebindings"))
            .into_iter()
            .filter_map(|o| serde_json::from_value(o).ok())
            .collect(),
    }
}

/// The Roles of the peer pages and their RoleBindings.
const ROLES: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/slicenet-peers";

impl Fleet {
    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        self.api.get(HUB.to_owned(), path).and_then(|v| serde_json::from_value(v).ok())
    }

    fn slice_path(name: &str) -> String {
        format!("/apis/slicenet.io/v1alpha1/sliceconfigs/{name}")
    }

    fn cluster_path(name: &str) -> String {
        format!("/apis/slicenet.io/v1alpha1/memberclusters/{name}")
    }

    fn worker_path(namespace: &str, name: &str) -> String {
        format!("/apis/slicenet.io/v1alpha1/namespaces/{namespace}/workerslices/{name}")
    }

    /// What the watches would deliver: each object as the API holds it now. Returns the
    /// objects, read outside the hub's time.
    fn read(&self, changed: &[Changed]) -> Vec<hub::Change> {
        changed
            .iter()
            .flat_map(|c| match c {
                Changed::Slice(name) => vec![match self.get::<SliceConfig>(&Self::slice_path(name)) {
                    Some(s) => hub::Change::Slice(Box::new(s)),
                    None => hub::Change::SliceGone(name.clone()),
                }],
                Changed::Cluster(name) => vec![match self.get::<MemberCluster>(&Self::cluster_path(name)) {
                    Some(m) => hub::Change::Cluster(Box::new(m)),
                    None => hub::Change::ClusterGone(name.clone()),
                }],
                Changed::Worker(ns, name) => vec![match self.get::<WorkerSlice>(&Self::worker_path(ns, name)) {
                    Some(w) => hub::Change::Worker(Box::new(w)),
                    None => hub::Change::WorkerGone(ns.clone(), name.clone()),
                }],
                Changed::Page(name) => {
                    let path = format!("/apis/slicenet.io/v1alpha1/namespaces/{PEERS_NAMESPACE}/slicepeers/{name}");
                    vec![match self.get::<SlicePeers>(&path) {
                        Some(p) => hub::Change::Peers(Box::new(p)),
                        None => hub::Change::PeersGone(name.clone()),
                    }]
                }
                // A peer Role and its binding (the hub writes them together).
                Changed::Role(name) => {
                    let role = match self.get::<Role>(&format!("{ROLES}/roles/{name}")) {
                        Some(r) => hub::Change::Role(Box::new(r)),
                        None => hub::Change::RoleGone(name.clone()),
                    };
                    let binding = match self.get::<RoleBinding>(&format!("{ROLES}/rolebindings/{name}")) {
                        Some(b) => hub::Change::Binding(Box::new(b)),
                        None => hub::Change::BindingGone(name.clone()),
                    };
                    vec![role, binding]
                }
            })
            .collect()
    }

    /// The hub after an event that changed `changed`: learns them, decides, makes the requests,
    /// learns what it wrote, and again until it writes nothing.
    fn settle(&mut self, mut changed: Vec<Changed>) -> Result<EventCost> {
        let mut cost = EventCost::default();
        let leadership = Leadership::unconditional();
        self.now += 1;
        for _ in 0..6 {
            let changes = self.read(&changed);
            let planned_before = self.index.plans().planned();
            let started = Instant::now();
            for change in changes {
                match change {
                    hub::Change::Slice(s) => self.index.observe_slice(*s),
                    hub::Change::SliceGone(n) => self.index.forget_slice(&n),
                    hub::Change::Cluster(c) => self.index.observe_cluster(*c),
                    hub::Change::ClusterGone(n) => self.index.forget_cluster(&n),
                    hub::Change::Worker(w) => self.index.observe_worker(*w),
                    hub::Change::WorkerGone(ns, n) => self.index.forget_worker(&ns, &n),
                    hub::Change::Peers(p) => self.index.observe_peers(*p),
                    hub::Change::PeersGone(n) => self.index.forget_peers(&n),
                    hub::Change::Role(r) => self.index.observe_role(*r),
                    hub::Change::RoleGone(n) => self.index.forget_role(&n),
                    hub::Change::Binding(b) => self.index.observe_binding(*b),
                    hub::Change::BindingGone(n) => self.index.forget_binding(&n),
                }
            }
            let decision = self.index.decide(at(self.now));
            cost.hub_cpu += started.elapsed();
            cost.passes += 1;
            cost.planned += self.index.plans().planned() - planned_before;
            if decision.actions.is_empty() {
                break;
            }
            {
                let mut st = self.api.lock();
                st.record = true;
                st.requests.clear();
            }
            let started = Instant::now();
            let executed =
                self.runtime.block_on(hub::execute::execute(&self.client, &decision.actions, &leadership))?;
            cost.requests += started.elapsed();
            if let Some((_, e)) = executed.failures.first() {
                return Err(anyhow!("a hub request failed: {}", slice_api::error_chain::chain(e)));
            }
            let requests = {
                let mut st = self.api.lock();
                st.record = false;
                std::mem::take(&mut st.requests)
            };
            for r in requests.iter().filter(|r| r.is_write()) {
                cost.writes += 1;
                cost.bytes_written += serde_json::to_vec(&r.body)?.len();
            }
            changed = decision.actions.iter().filter_map(Changed::of).collect();
            if changed.is_empty() {
                break;
            }
        }
        Ok(cost)
    }

    /// A worker's heartbeat, through the worker's own code.
    fn heartbeat(&mut self, cluster: &str) -> Result<EventCost> {
        let local = {
            let _in = self.runtime.enter();
            self.api.client_as(HUB.to_owned(), access::WORKER_HUB, &cluster_namespace(cluster))
        };
        let worker = Worker::new(local.clone(), local, Settings { cluster: cluster.to_owned(), ..Settings::default() });
        let stamp = at(self.now + 1).to_string();
        self.runtime.block_on(worker.heartbeat(cluster, &stamp)).map_err(|e| anyhow!("heartbeat: {e}"))?;
        self.settle(vec![Changed::Cluster(cluster.to_owned())])
    }

    /// A worker's status write (the merge patch the worker makes on its WorkerSlice's status).
    fn report(&mut self, cluster: usize, slice_index: usize, ready: bool) -> Result<EventCost> {
        let slice = &slice_name(slice_index);
        let name = cluster_name(cluster);
        let ns = cluster_namespace(&name);
        let status = json!({"status": {
            "gatewayPublicKey": self.keys[cluster][slice_index],
            "gatewayEndpoint": format!("198.18.{}.{}:51820", cluster / 250, cluster % 250 + 1),
            "conditions": [to_value(&Condition::new("Ready", ready, if ready { "Up" } else { "TunnelsDown" }, ""))],
        }});
        let path = format!("{}/status", Self::worker_path(&ns, slice));
        let (code, body) = self.api.request(&HUB.to_owned(), "PATCH", &path, "application/merge-patch+json", &status);
        if code >= 300 {
            return Err(anyhow!("status patch {path}: {code} {body}"));
        }
        self.settle(vec![Changed::Worker(ns, slice.to_owned())])
    }

    /// A user edits a SliceConfig's spec.
    fn edit_slice(&mut self, slice: &str, patch: &Value) -> Result<EventCost> {
        let path = Self::slice_path(slice);
        let (code, body) = self.api.request(&HUB.to_owned(), "PATCH", &path, "application/merge-patch+json", patch);
        if code >= 300 {
            return Err(anyhow!("SliceConfig patch {path}: {code} {body}"));
        }
        self.settle(vec![Changed::Slice(slice.to_owned())])
    }
}

/// An object a write changed, to read back as a watch would deliver it.
enum Changed {
    Slice(String),
    Cluster(String),
    Worker(String, String),
    Page(String),
    Role(String),
}

impl Changed {
    fn of(action: &Action) -> Option<Self> {
        Some(match action {
            Action::SetFinalizers { kind: FinalizedKind::SliceConfig, name, .. }
            | Action::PatchSliceStatus { name, .. } => Self::Slice(name.clone()),
            Action::SetFinalizers { kind: FinalizedKind::MemberCluster, name, .. }
            | Action::PatchClusterStatus { name, .. } => Self::Cluster(name.clone()),
            Action::CreateWorkerSlice(w) => Self::Worker(w.namespace().unwrap_or_default(), w.name_any()),
            Action::PatchWorkerSlice { namespace, name, .. } | Action::DeleteWorkerSlice { namespace, name } => {
                Self::Worker(namespace.clone(), name.clone())
            }
            Action::CreatePeers(p) => Self::Page(p.name_any()),
            Action::PatchPeers { name, .. } | Action::DeletePeers { name } => Self::Page(name.clone()),
            Action::GrantPeers { cluster, .. }
            | Action::BindPeers { cluster, .. }
            | Action::RevokePeers { cluster } => Self::Role(slice_api::crd::peers_role_name(cluster)),
            Action::EnsureNamespace { .. } | Action::DeleteNamespace { .. } => return None,
        })
    }
}

fn measure_size(clusters: usize, slices: usize) -> Result<SizeRow> {
    let (mut fleet, mut row) = fleet(clusters, slices).with_context(|| format!("building {clusters} × {slices}"))?;
    let first = cluster_name(0);
    row.heartbeat = fleet.heartbeat(&first)?;
    row.status = fleet.report(0, 0, false)?;
    row.slice_edit = fleet
        .edit_slice(&slice_name(0), &json!({"spec": {"namespaces": [{"namespace": "web"}, {"namespace": "shop"}]}}))?;
    // The spare cluster joins slice 0: the SliceConfig edit, then its worker publishes its key.
    let mut members: Vec<String> = (0..=clusters).map(cluster_name).collect();
    members.sort();
    row.join = fleet.edit_slice(&slice_name(0), &json!({"spec": {"clusters": members}}))?;
    row.publish = fleet.report(clusters, 0, true)?;
    Ok(row)
}

/// Runs the section (no root, no lab).
pub(crate) fn run() -> Result<ScaleSection> {
    let started = Instant::now();
    let mut out = ScaleSection::default();
    // SLICENET_BENCH_SCALE_SIZES=16x1,256x64 runs only those sizes (a quick look, a profile).
    let sizes: Vec<(usize, usize)> = match std::env::var("SLICENET_BENCH_SCALE_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|s| -> Result<(usize, usize)> {
                let (c, n) = s
                    .trim()
                    .split_once('x')
                    .ok_or_else(|| anyhow!("SLICENET_BENCH_SCALE_SIZES: {s:?} is not <clusters>x<slices>"))?;
                Ok((c.parse()?, n.parse()?))
            })
            .collect::<Result<_>>()?,
        Err(_) => SIZES.to_vec(),
    };
    for (clusters, slices) in sizes {
        super::process::check_interrupted()?;
        eprintln!("slicenet-bench: 12. scale, {clusters} clusters × {slices} slices");
        let row = measure_size(clusters, slices)?;
        eprintln!(
            "  heartbeat {:?} ({} plans, {} writes), join {:?}, whole decide {:?}",
            row.heartbeat.hub_cpu, row.heartbeat.planned, row.heartbeat.writes, row.join.hub_cpu, row.whole_decide
        );
        out.rows.push(row);
    }
    for peers in [1, 64, 256] {
        out.gateway.push(gateway_lookup(peers));
    }
    out.total = started.elapsed();
    Ok(out)
}

/// The gateway's cryptokey routing table with `peers` cluster prefixes (/20s of one /8, as the
/// planner hands them out) and the mean time of a lookup over many destinations in them.
fn gateway_lookup(peers: usize) -> GatewayRow {
    use slice_gateway::allowed_ips::AllowedIps;
    let mut table = AllowedIps::new();
    for p in 0..peers {
        let net: ipnet::IpNet = format!("10.{}.{}.0/20", p / 16, (p % 16) * 16).parse().expect("a prefix");
        table.insert(net, p);
    }
    let lookups = 2_000_000u32;
    let started = Instant::now();
    let mut found = 0usize;
    for i in 0..lookups {
        let p = (i as usize * 7919) % peers;
        let addr =
            std::net::IpAddr::from([10, (p / 16) as u8, ((p % 16) * 16) as u8 + (i % 16) as u8, (i % 251) as u8]);
        found += usize::from(table.lookup(std::hint::black_box(addr)).is_some());
    }
    let elapsed = started.elapsed();
    assert_eq!(found, lookups as usize, "every destination is in a peer's prefix");
    GatewayRow { peers, ns_per_lookup: elapsed.as_nanos() as f64 / f64::from(lookups) }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn bytes(b: usize) -> String {
    if b < 10 * 1024 {
        format!("{b} B")
    } else if b < 10 * 1024 * 1024 {
        format!("{:.0} KB", b as f64 / 1024.0)
    } else {
        format!("{:.0} MB", b as f64 / 1024.0 / 1024.0)
    }
}

fn event(e: &EventCost) -> String {
    format!("{} · {} plan · {} writes, {}", ms(e.hub_cpu), e.planned, e.writes, bytes(e.bytes_written))
}

/// The tables of the section.
pub(crate) fn table(s: &ScaleSection) -> String {
    let headers = [
        "clusters × slices",
        "heartbeat",
        "worker status",
        "slice edit",
        "cluster joins a slice",
        "it publishes its key",
        "whole decision (before: every event)",
    ];
    let rows: Vec<Vec<String>> = s
        .rows
        .iter()
        .map(|r| {
            vec![
                format!("{} × {}", r.clusters, r.slices),
                event(&r.heartbeat),
                event(&r.status),
                event(&r.slice_edit),
                event(&r.join),
                event(&r.publish),
                ms(r.whole_decide),
            ]
        })
        .collect();
    let mut out = text_table(&headers, &rows);
    out.push('\n');
    let headers = [
        "clusters × slices",
        "whole plan",
        "hub's whole pass",
        "hub index",
        "largest WorkerSlice",
        "largest SliceConfig",
        "largest page",
        "all WorkerSlices",
        "worker: spec → gateway config",
        "requests of a join",
    ];
    let rows: Vec<Vec<String>> = s
        .rows
        .iter()
        .map(|r| {
            vec![
                format!("{} × {}", r.clusters, r.slices),
                ms(r.whole_plan),
                ms(r.whole_pass),
                r.index_bytes.map_or_else(|| "not measured".to_owned(), bytes),
                bytes(r.largest_worker_slice),
                bytes(r.largest_slice_config),
                bytes(r.largest_page),
                bytes(r.worker_slice_bytes),
                ms(r.worker_spec),
                ms(r.join.requests + r.publish.requests),
            ]
        })
        .collect();
    out += &text_table(&headers, &rows);
    out.push('\n');
    let rows: Vec<Vec<String>> =
        s.gateway.iter().map(|g| vec![g.peers.to_string(), format!("{:.1} ns", g.ns_per_lookup)]).collect();
    out += &text_table(&["gateway peers", "lookup per packet (cryptokey routing)"], &rows);
    out
}

/// Issue 21's goals at 256 × 64, met or not, from the figures.
fn goals(s: &ScaleSection) -> Vec<Vec<String>> {
    let Some(r) = s.rows.iter().find(|r| (r.clusters, r.slices) == (256, 64)) else {
        return vec![vec!["256 × 64 not measured".to_owned(), String::new(), String::new()]];
    };
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" }.to_owned();
    let join = r.join.hub_cpu + r.publish.hub_cpu;
    let largest = r.largest_worker_slice.max(r.largest_slice_config).max(r.largest_page);
    let mut out = vec![
        vec![
            "a single-cluster heartbeat < 10 ms of hub CPU".to_owned(),
            format!(
                "{} ({} slices planned, {} writes)",
                ms(r.heartbeat.hub_cpu),
                r.heartbeat.planned,
                r.heartbeat.writes
            ),
            verdict(r.heartbeat.hub_cpu < Duration::from_millis(10)),
        ],
        vec![
            "a cluster joining one slice < 100 ms of hub CPU".to_owned(),
            format!(
                "{} (SliceConfig edit {} + its key {}; the requests besides: {})",
                ms(join),
                ms(r.join.hub_cpu),
                ms(r.publish.hub_cpu),
                ms(r.join.requests + r.publish.requests)
            ),
            verdict(join < Duration::from_millis(100)),
        ],
    ];
    out.push(match r.index_bytes {
        Some(b) => vec!["hub memory < 1 GB".to_owned(), format!("index {}", bytes(b)), verdict(b < 1 << 30)],
        None => vec!["hub memory < 1 GB".to_owned(), "not measured".to_owned(), "unknown".to_owned()],
    });
    out.push(vec![
        "no object larger than 256 KB".to_owned(),
        format!(
            "largest {} (WorkerSlice {}, SliceConfig {}, peer page {})",
            bytes(largest),
            bytes(r.largest_worker_slice),
            bytes(r.largest_slice_config),
            bytes(r.largest_page)
        ),
        verdict(largest <= 256 * 1024),
    ]);
    if let (Some(small), Some(big)) = (
        s.rows.iter().find(|r| (r.clusters, r.slices) == (16, 1)),
        s.rows.iter().find(|r| {
            r.clusters == 512
                && r.slices == s.rows.iter().filter(|r| r.clusters == 512).map(|r| r.slices).max().unwrap_or(0)
        }),
    ) {
        // Bounded: a WorkerSlice no larger at 512 clusters than at 16 (within the size of the
        // names in it), a page at most 128 peers.
        let bounded = big.largest_worker_slice < 2 * small.largest_worker_slice && big.largest_page <= 128 * 200;
        out.push(vec![
            "no object grows with the cluster count (bounded objects, part (b))".to_owned(),
            format!(
                "largest WorkerSlice {} at 16 clusters, {} at {} × {}; largest page {} (at most 128 peers); a join at {} × {} writes {} in {} requests (one revision patch per member); the SliceConfig still grows with its members (its status)",
                bytes(small.largest_worker_slice),
                bytes(big.largest_worker_slice),
                big.clusters,
                big.slices,
                bytes(big.largest_page),
                big.clusters,
                big.slices,
                bytes(big.join.bytes_written + big.publish.bytes_written),
                big.join.writes + big.publish.writes
            ),
            verdict(bounded),
        ]);
    }
    out.push(vec![
        "512 clusters per slice planned correctly".to_owned(),
        "slice-api `planner::index::tests::five_hundred_and_twelve_clusters_in_one_slice_are_planned_correctly`, \
         and the property tests (index == whole plan)"
            .to_owned(),
        "met (by test)".to_owned(),
    ]);
    out
}

/// The section of `docs/benchmarks.md`.
pub(crate) fn doc_section(s: &ScaleSection, command: &str) -> String {
    let mut out = format!("{BEGIN}\n## 12. The control plane at scale (issue 21)\n\n");
    out += "Simulated member clusters on the in-memory API against the real hub (its index, scoped \
            decision and requests) and the workers' own heartbeat and status writes; every cluster in \
            every slice. A cell of the first table: the hub's CPU for the event (learning the changed \
            objects as its watches deliver them, and deciding, summed over its passes until it writes \
            nothing), slices planned, writes and the bytes of their bodies. The last column is the \
            whole decision, which the hub made on every event before. Times are wall clock on this \
            2-core machine, one run.\n\n";
    out += &format!("{}\n", SKIPPED);
    out += "\n```\n";
    out += &table(s);
    out += "```\n\nIssue 21's goals (at 256 clusters × 64 slices):\n\n";
    out += "| goal | measured | |\n| --- | --- | --- |\n";
    for g in goals(s) {
        out += &format!("| {} | {} | {} |\n", g[0], g[1], g[2]);
    }
    out += &format!("\nSection run time {:.0} s. {command}\n{END}\n", s.total.as_secs_f64());
    out
}
