//! Kubernetes Events (`events.k8s.io/v1`) from the controllers, bounded.
//!
//! The controllers' pure decisions say what an operator should hear about, as [`Notice`]s
//! derived from *changes* (the state read against the state written: a condition that flips, a
//! tunnel that comes up, a namespace that joins a slice), plus one `Warning` per failed write.
//! A [`Recorder`] publishes them after the pass, through an [`EventLog`] (pure) that aggregates
//! repeats instead of posting one event per retry:
//!
//! - the first occurrence of (object, type, reason, note) creates an Event;
//! - repeats within [`MIN_INTERVAL`] are only counted;
//! - a repeat after that patches the Event's `series` (`count`, `lastObservedTime`): one request
//!   per key per interval at most, whatever the retry rate;
//! - a key not seen for [`FORGET_AFTER`] is forgotten (a later occurrence is news again), and at
//!   most [`MAX_KEYS`] keys are kept (the oldest go first).
//!
//! Why not kube-runtime's `events::Recorder` (kube 5): it patches the series on *every* repeat
//! (one request per retry, which is what we must avoid), keys without the note (but the API
//! server refuses to change an Event's note, so a repeat with another message would be
//! recorded under the first one's), and reads the clock itself (the aggregation could not be
//! tested with injected time).
//!
//! Events about cluster-scoped objects (SliceConfig, MemberCluster, Namespace) go into
//! `default`, as the API server requires for `events.k8s.io/v1` Events whose `regarding` has no
//! namespace; the others into the object's namespace. Publishing is best effort: a failed
//! request is logged, never fails a pass, and is retried no sooner than the interval.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;

use crate::leader::Leadership;

/// Repeats of one event closer together than this are only counted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(300);
/// A key not seen for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// The most keys remembered.
pub const MAX_KEYS: usize = 1024;
/// The namespace of Events about cluster-scoped objects.
pub const CLUSTER_SCOPED_EVENTS_NAMESPACE: &str = "default";
/// The API server's limits (bytes) on an Event's note and on reason, action and instance.
const MAX_NOTE: usize = 1024;
const MAX_SHORT: usize = 128;

/// Event severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    /// As the API spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// The reasons the controllers use (CamelCase, as Kubernetes reasons are).
pub mod reason {
    // Hub, on SliceConfigs.
    /// The planner accepted the slice (or its plan changed): note says how many clusters.
    pub const SLICE_PLANNED: &str = "SlicePlanned";
    /// The planner refused the slice; it keeps running as it was.
    pub const SLICE_REFUSED: &str = "SliceRefused";
    /// Every member cluster reports its WorkerSlice ready.
    pub const SLICE_READY: &str = "SliceReady";
    /// The slice was ready and is not any more.
    pub const SLICE_NOT_READY: &str = "SliceNotReady";
    /// The hub created a member cluster's WorkerSlice (`related`: the WorkerSlice).
    pub const WORKER_SLICE_CREATED: &str = "WorkerSliceCreated";
    /// The hub deleted a member cluster's WorkerSlice (`related`: the WorkerSlice).
    pub const WORKER_SLICE_DELETED: &str = "WorkerSliceDeleted";
    // Hub, on MemberClusters.
    /// The hub took a new MemberCluster in (its finalizer and namespace).
    pub const CLUSTER_JOINED: &str = "ClusterJoined";
    /// The hub let a deleted MemberCluster go (namespace deleted, finalizer removed).
    pub const CLUSTER_LEFT: &str = "ClusterLeft";
    /// The cluster's worker reports again.
    pub const CLUSTER_HEALTHY: &str = "ClusterHealthy";
    /// The cluster's heartbeat is stale or invalid.
    pub const CLUSTER_UNHEALTHY: &str = "ClusterUnhealthy";
    /// The cluster's namespace on the hub is being deleted; its WorkerSlices wait.
    pub const NAMESPACE_TERMINATING: &str = "NamespaceTerminating";
    // Hub and worker, on WorkerSlices.
    /// The hub changed the WorkerSlice's spec (peers, namespaces, prefixes).
    pub const WORKER_SLICE_UPDATED: &str = "WorkerSliceUpdated";
    /// Ready: the gateway runs and every peer tunnel is up.
    pub const WORKER_SLICE_READY: &str = "WorkerSliceReady";
    /// Not ready (note: the condition's reason and message).
    pub const WORKER_SLICE_NOT_READY: &str = "WorkerSliceNotReady";
    /// The tunnel to a peer cluster came up.
    pub const TUNNEL_UP: &str = "TunnelUp";
    /// The tunnel to a peer cluster that was up is not any more.
    pub const TUNNEL_DOWN: &str = "TunnelDown";
    /// The worker made the slice's gateway key pair (the private key stays in the cluster).
    pub const GATEWAY_KEY_CREATED: &str = "GatewayKeyCreated";
    /// The worker removed everything it made for a deleted slice and let it go.
    pub const SLICE_TORN_DOWN: &str = "SliceTornDown";
    // Worker, on Namespaces.
    /// The worker labelled the namespace into a slice.
    pub const NAMESPACE_JOINED_SLICE: &str = "NamespaceJoinedSlice";
    /// The worker removed the namespace's slice label.
    pub const NAMESPACE_LEFT_SLICE: &str = "NamespaceLeftSlice";
    // Hub and worker, on their webhook's TLS Secret in `slicenet-system`.
    /// The serving certificate was renewed from the CA Secret (note: until when).
    pub const WEBHOOK_CERTIFICATE_RENEWED: &str = "WebhookCertificateRenewed";
    /// The serving certificate is left alone (note: why — not the CA's, unreadable, CA expired).
    pub const WEBHOOK_CERTIFICATE_PROBLEM: &str = "WebhookCertificateProblem";
    // Multi-cluster services.
    /// Worker, on a ServiceExport: it became invalid (note: the `Valid` condition's reason).
    pub const SERVICE_EXPORT_INVALID: &str = "ServiceExportInvalid";
    /// Worker, on a ServiceExport: the exports of its service started to conflict.
    pub const SERVICE_EXPORT_CONFLICT: &str = "ServiceExportConflict";
    /// Worker, on `kube-system`'s CoreDNS ConfigMaps: the slice DNS stanza added or removed.
    pub const SLICE_DNS_CONFIGURED: &str = "SliceDnsConfigured";
    /// Hub, on a SliceConfig: exports that member clusters reported were dropped (note: why).
    pub const EXPORTS_REFUSED: &str = "ExportsRefused";
    // Policy on the slice.
    /// Worker, on a MultiNetworkPolicy: the node agents refuse it (note: why); they keep their
    /// previous rules.
    pub const POLICY_REJECTED: &str = "PolicyRejected";
    /// Hub, on a SliceConfig: pods that member clusters reported for the pod directory were
    /// dropped (note: why).
    pub const PODS_REFUSED: &str = "PodsRefused";
    // Both.
    /// A write failed (note: which, and the API's answer); the pass is retried with backoff.
    pub const WRITE_FAILED: &str = "WriteFailed";
}

/// One event a controller wants to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The object it is about (no `resourceVersion`: that changes with every write).
    pub regarding: ObjectReference,
    /// A second object involved (e.g. the WorkerSlice the hub created for a SliceConfig).
    pub related: Option<ObjectReference>,
    pub type_: EventType,
    /// CamelCase, from [`reason`].
    pub reason: &'static str,
    /// What the controller did or tried (CamelCase): `Plan`, `Reconcile`, `Write`, …
    pub action: &'static str,
    pub note: String,
}

impl Notice {
    /// A `Normal` notice.
    #[must_use]
    pub fn normal(regarding: ObjectReference, reason: &'static str, action: &'static str, note: String) -> Self {
        Self { regarding, related: None, type_: EventType::Normal, reason, action, note }
    }

    /// A `Warning` notice.
    #[must_use]
    pub fn warning(regarding: ObjectReference, reason: &'static str, action: &'static str, note: String) -> Self {
        Self { regarding, related: None, type_: EventType::Warning, reason, action, note }
    }

    /// The same, with `related`.
    #[must_use]
    pub fn with_related(mut self, related: ObjectReference) -> Self {
        self.related = Some(related);
        self
    }

    /// The namespace its Event goes into.
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.regarding.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(CLUSTER_SCOPED_EVENTS_NAMESPACE)
    }
}

/// A reference to `obj` for an Event (without `resourceVersion`).
#[must_use]
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference { resource_version: None, ..obj.object_ref(&()) }
}

/// A reference from its parts (for an object known only by name, or read as JSON).
#[must_use]
pub fn reference_to(
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    uid: Option<&str>,
) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.to_owned()),
        kind: Some(kind.to_owned()),
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        uid: uid.map(str::to_owned),
        ..ObjectReference::default()
    }
}

/// What identifies repeats of one event.
type Key = (String, String, String, String, EventType, &'static str, String);

fn key_of(n: &Notice) -> Key {
    let r = &n.regarding;
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    (s(&r.kind), s(&r.namespace), s(&r.name), s(&r.uid), n.type_, n.reason, n.note.clone())
}

#[derive(Debug, Clone)]
struct Entry {
    /// The Event's name; `None` until a create succeeded.
    name: Option<String>,
    count: i32,
    last_sent: Timestamp,
    last_seen: Timestamp,
}

/// The request an occurrence calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// Create a new Event.
    Create,
    /// Patch the Event `name`'s series to `count`.
    Series { name: String, count: i32 },
    /// Nothing now: counted.
    Counted,
}

/// The aggregation state (pure: the time is an argument).
#[derive(Debug, Clone)]
pub struct EventLog {
    entries: BTreeMap<Key, Entry>,
    min_interval: Duration,
    forget_after: Duration,
    max_keys: usize,
}

impl Default for EventLog {
    fn default() -> Self {
        Self::new(MIN_INTERVAL, FORGET_AFTER, MAX_KEYS)
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

impl EventLog {
    /// A log with these bounds.
    #[must_use]
    pub fn new(min_interval: Duration, forget_after: Duration, max_keys: usize) -> Self {
        Self { entries: BTreeMap::new(), min_interval, forget_after, max_keys: max_keys.max(1) }
    }

    /// How many keys it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// An occurrence of `notice` at `now`: what to send.
    pub fn record(&mut self, notice: &Notice, now: Timestamp) -> Emit {
        let forget_after = self.forget_after;
        self.entries.retain(|_, e| elapsed(e.last_seen, now) < forget_after);
        let key = key_of(notice);
        if let Some(e) = self.entries.get_mut(&key) {
            e.count = e.count.saturating_add(1);
            e.last_seen = now;
            if elapsed(e.last_sent, now) < self.min_interval {
                return Emit::Counted;
            }
            e.last_sent = now;
            return match &e.name {
                Some(name) => Emit::Series { name: name.clone(), count: e.count },
                None => Emit::Create,
            };
        }
        if self.entries.len() >= self.max_keys
            && let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, Entry { name: None, count: 1, last_sent: now, last_seen: now });
        Emit::Create
    }

    /// The Event for `notice` was created as `name`: later repeats patch its series.
    pub fn created(&mut self, notice: &Notice, name: &str) {
        if let Some(e) = self.entries.get_mut(&key_of(notice)) {
            e.name = Some(name.to_owned());
        }
    }

    /// The Event for `notice` is gone (its series patch got 404): the next repeat creates anew.
    pub fn gone(&mut self, notice: &Notice) {
        if let Some(e) = self.entries.get_mut(&key_of(notice)) {
            e.name = None;
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A fresh Event name for an event about `regarding`: its name and 16 random hex digits.
fn event_name(regarding: &ObjectReference) -> String {
    let mut bytes = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let base = truncate(regarding.name.as_deref().unwrap_or("slicenet"), 200);
    format!("{base}.{:016x}", u64::from_be_bytes(bytes))
}

/// The `events.k8s.io/v1` Event for a first occurrence of `notice` at `now`.
#[must_use]
pub fn new_event(notice: &Notice, name: &str, controller: &str, instance: &str, now: Timestamp) -> Event {
    let mut event = Event {
        action: Some(truncate(notice.action, MAX_SHORT)),
        event_time: Some(MicroTime(now)),
        note: (!notice.note.is_empty()).then(|| truncate(&notice.note, MAX_NOTE)),
        reason: Some(truncate(notice.reason, MAX_SHORT)),
        regarding: Some(notice.regarding.clone()),
        related: notice.related.clone(),
        reporting_controller: Some(controller.to_owned()),
        reporting_instance: Some(truncate(instance, MAX_SHORT)),
        type_: Some(notice.type_.as_str().to_owned()),
        ..Event::default()
    };
    event.metadata.name = Some(name.to_owned());
    event.metadata.namespace = Some(notice.namespace().to_owned());
    event
}

/// Publishes [`Notice`]s as Events, aggregated by an [`EventLog`].
#[derive(Debug)]
pub struct Recorder {
    controller: String,
    instance: String,
    log: Mutex<EventLog>,
}

impl Recorder {
    /// A recorder reporting as `controller` (e.g. `slicenet.io/hub`), instance `instance` (the
    /// pod's name).
    #[must_use]
    pub fn new(controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Self::with_log(controller, instance, EventLog::default())
    }

    /// The same with a given log (tests pass small bounds).
    #[must_use]
    pub fn with_log(controller: impl Into<String>, instance: impl Into<String>, log: EventLog) -> Self {
        Self { controller: controller.into(), instance: instance.into(), log: Mutex::new(log) }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, EventLog> {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes `notices` at `now` through `client`, each as the log decides; stops (quietly)
    /// as soon as this replica does not lead. Never fails: errors are logged.
    pub async fn publish(&self, client: &Client, notices: &[Notice], now: Timestamp, leadership: &Leadership) {
        for notice in notices {
            if !leadership.is_leading() {
                return;
            }
            let emit = self.log().record(notice, now);
            let api = Api::<Event>::namespaced(client.clone(), notice.namespace());
            let result = match emit {
                Emit::Counted => continue,
                Emit::Series { name, count } => {
                    let series = EventSeries { count, last_observed_time: MicroTime(now) };
                    let patch = Patch::Merge(json!({ "series": series }));
                    match api.patch(&name, &PatchParams::default(), &patch).await {
                        Err(kube::Error::Api(status)) if status.code == 404 => {
                            self.log().gone(notice);
                            self.create(&api, notice, now).await
                        }
                        other => other.map(drop),
                    }
                }
                Emit::Create => self.create(&api, notice, now).await,
            };
            if let Err(e) = result {
                tracing::warn!(reason = notice.reason, error = %slice_api::error_chain::chain(&e), "publishing an event failed");
            }
        }
    }

    async fn create(&self, api: &Api<Event>, notice: &Notice, now: Timestamp) -> Result<(), kube::Error> {
        let name = event_name(&notice.regarding);
        let event = new_event(notice, &name, &self.controller, &self.instance, now);
        api.create(&PostParams::default(), &event).await?;
        self.log().created(notice, &name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid time")
    }

    fn notice(note: &str) -> Notice {
        Notice::warning(
            reference_to("slicenet.io/v1alpha1", "WorkerSlice", Some("slicenet-cluster-c1"), "blue", Some("u1")),
            reason::WRITE_FAILED,
            "Write",
            note.to_owned(),
        )
    }

    #[test]
    fn repeats_are_counted_and_sent_once_per_interval() {
        let mut log = EventLog::new(Duration::from_secs(300), Duration::from_secs(900), 10);
        let n = notice("applying Deployment x: 500");
        assert_eq!(log.record(&n, at(0)), Emit::Create);
        log.created(&n, "blue.1");
        // Retries every few seconds: counted only.
        for s in [1, 3, 7, 15, 31, 63, 127, 255] {
            assert_eq!(log.record(&n, at(s)), Emit::Counted, "at {s}");
        }
        assert_eq!(log.record(&n, at(300)), Emit::Series { name: "blue.1".into(), count: 10 });
        assert_eq!(log.record(&n, at(310)), Emit::Counted);
        assert_eq!(log.record(&n, at(600)), Emit::Series { name: "blue.1".into(), count: 12 });
        // Another note is another event.
        assert_eq!(log.record(&notice("applying Deployment x: 403"), at(601)), Emit::Create);
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn quiet_keys_are_forgotten_and_the_log_is_bounded() {
        let mut log = EventLog::new(Duration::from_secs(300), Duration::from_secs(900), 2);
        let n = notice("a");
        assert_eq!(log.record(&n, at(0)), Emit::Create);
        log.created(&n, "blue.1");
        assert_eq!(log.record(&n, at(1000)), Emit::Create, "forgotten after 900 s of quiet: news again");
        log.record(&notice("b"), at(1001));
        log.record(&notice("c"), at(1002));
        assert_eq!(log.len(), 2, "the oldest key made room");
        assert_eq!(log.record(&n, at(1003)), Emit::Create, "a was the oldest");
    }

    #[test]
    fn a_failed_create_is_retried_no_sooner_than_the_interval_and_a_gone_event_is_recreated() {
        let mut log = EventLog::new(Duration::from_secs(300), Duration::from_secs(900), 10);
        let n = notice("a");
        assert_eq!(log.record(&n, at(0)), Emit::Create); // and the create failed: no `created`
        assert_eq!(log.record(&n, at(10)), Emit::Counted);
        assert_eq!(log.record(&n, at(300)), Emit::Create);
        log.created(&n, "blue.2");
        log.gone(&n);
        assert_eq!(log.record(&n, at(600)), Emit::Create);
    }

    #[test]
    fn events_are_valid_for_the_api() {
        let n = notice(&"é".repeat(600));
        let e = new_event(&n, "blue.00", "slicenet.io/worker", &"i".repeat(300), at(5));
        assert!(e.note.as_deref().unwrap().len() <= 1024);
        assert_eq!(e.reporting_instance.as_deref().map(str::len), Some(128));
        assert_eq!(e.metadata.namespace.as_deref(), Some("slicenet-cluster-c1"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        let cluster_scoped = Notice::normal(
            reference_to("v1", "Namespace", None, "shop", Some("u2")),
            reason::NAMESPACE_JOINED_SLICE,
            "Label",
            String::new(),
        );
        assert_eq!(cluster_scoped.namespace(), "default");
        assert_eq!(new_event(&cluster_scoped, "shop.0", "c", "i", at(5)).note, None);
        let name = event_name(&n.regarding);
        assert!(name.starts_with("blue.") && name.len() == "blue.".len() + 16, "{name}");
    }
}
