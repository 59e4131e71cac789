//! The worker's tests on the shared in-memory API (`slice_kube::memory`): two servers, the hub
//! and the member cluster, whose requests are recorded in their real order across both
//! clients and checked against the worker's declared access lists (an undeclared request is a
//! violation the tests assert away).
//!
//! It also stands in for the gateways' `/metrics` endpoints ([`FakeApi::metrics_source`]):
//! canned text per address, a connection refused elsewhere, every scrape recorded.

#![allow(dead_code)] // Each test uses a different part of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use kube::Client;
use slice_api::rbac::Access;
#[allow(unused_imports)] // Not every test crate that includes this module uses them.
pub use slice_kube::memory::{AfterRequest, jwt};
use slice_operator::worker::MetricsSource;

/// Which API server a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Hub,
    Cluster,
}

impl slice_kube::memory::Server for Side {
    fn line_prefix(&self) -> String {
        match self {
            Self::Hub => "hub ".to_owned(),
            Self::Cluster => String::new(),
        }
    }
}

/// One request as the servers saw it.
pub type Recorded = slice_kube::memory::Recorded<Side>;

/// The gateways' `/metrics` as the tests set them.
#[derive(Debug, Default)]
pub struct Metrics {
    /// What each gateway address answers (text, or the error of the scrape).
    pub answers: BTreeMap<SocketAddr, Result<String, String>>,
    /// The addresses scraped, in order.
    pub scrapes: Vec<SocketAddr>,
}

/// The hub and the member cluster in memory, and the gateways' metrics.
#[derive(Debug, Clone)]
pub struct FakeApi {
    api: slice_kube::memory::MemoryApi<Side>,
    /// The servers' state (objects, requests, watch events, the token clock).
    pub state: Arc<Mutex<slice_kube::memory::State<Side>>>,
    metrics: Arc<Mutex<Metrics>>,
}

impl std::ops::Deref for FakeApi {
    type Target = slice_kube::memory::MemoryApi<Side>;

    fn deref(&self) -> &Self::Target {
        &self.api
    }
}

impl FakeApi {
    /// A fake hub and member cluster; requests are checked against `hub_access` (own namespace
    /// `hub_ns`) and `cluster_access` (own namespace `cluster_ns`).
    #[must_use]
    pub fn new(
        hub_access: &'static [Access],
        hub_ns: &str,
        cluster_access: &'static [Access],
        cluster_ns: &str,
    ) -> Self {
        let api = slice_kube::memory::MemoryApi::new([
            (Side::Hub, hub_access, hub_ns.to_owned()),
            (Side::Cluster, cluster_access, cluster_ns.to_owned()),
        ]);
        Self { state: api.state.clone(), api, metrics: Arc::default() }
    }

    /// Paths of the objects on `side` under `prefix`.
    #[must_use]
    pub fn paths(&self, side: Side, prefix: &str) -> Vec<String> {
        self.api.paths(&side, prefix)
    }

    /// Makes the gateway at `addr` answer `/metrics` with `answer` from now on.
    pub fn set_metrics(&self, addr: &str, answer: Result<String, String>) {
        let addr = addr.parse().expect("a socket address");
        self.metrics.lock().expect("metrics lock").answers.insert(addr, answer);
    }

    /// Takes the scraped addresses (and clears them).
    pub fn take_scrapes(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.metrics.lock().expect("metrics lock").scrapes)
    }

    /// A metrics source for the worker that answers from [`Metrics::answers`]; an address
    /// without an answer refuses the connection, as a port nobody listens on does.
    #[must_use]
    pub fn metrics_source(&self) -> MetricsSource {
        let metrics = self.metrics.clone();
        Box::new(move |addr| {
            let mut m = metrics.lock().expect("metrics lock");
            m.scrapes.push(addr);
            let answer = m
                .answers
                .get(&addr)
                .cloned()
                .unwrap_or_else(|| Err(format!("connecting to {addr}: Connection refused (os error 111)")));
            Box::pin(async move { answer })
        })
    }

    /// Member cluster c2's worker view (its hub namespace `slicenet-cluster-c2`): `worker_slice`
    /// and c2's MemberCluster on the hub, nodes n1 and n2 in the cluster.
    #[must_use]
    pub fn member_c2(worker_slice: serde_json::Value) -> Self {
        use serde_json::json;
        use slice_operator::access::{WORKER_CLUSTER, WORKER_HUB};
        let api = Self::new(WORKER_HUB, "slicenet-cluster-c2", WORKER_CLUSTER, "slicenet-system");
        api.put(Side::Hub, worker_slice);
        api.put(
            Side::Hub,
            json!({"apiVersion": "slicenet.io/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": "c2"}, "spec": {}, "status": {}}),
        );
        for (n, ip) in [("n1", "198.18.2.11"), ("n2", "198.18.2.12")] {
            api.put(
                Side::Cluster,
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}),
            );
        }
        api
    }

    /// Two clients: the hub's and the member cluster's.
    #[must_use]
    pub fn clients(&self) -> (Client, Client) {
        (self.api.client(Side::Hub), self.api.client(Side::Cluster))
    }

    /// One pass of cluster `cluster`'s worker at `now` (a fixed gateway key), which must
    /// succeed and stay inside the access lists; the requests it made, as lines.
    ///
    /// # Panics
    /// When the pass fails or a request is not covered by the access lists.
    pub async fn pass_ok(&self, cluster: &str, now: &str) -> Vec<String> {
        use slice_operator::worker::Worker;
        use slice_operator::worker::decide::Settings;
        use slice_operator::worker::keys::KeyPair;
        let (hub, local) = self.clients();
        let settings = Settings { cluster: cluster.into(), ..Settings::default() };
        let key = KeyPair {
            private_key: "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".into(),
            public_key: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=".into(),
        };
        let worker = Worker::with_key_source(hub, local, settings, Box::new(move |_| key.clone()))
            .with_metrics_source(self.metrics_source());
        worker.reconcile_once(cluster, now).await.expect("pass");
        assert_eq!(self.violations(), Vec::<String>::new(), "requests not covered by the access lists");
        self.take_requests().iter().map(Recorded::line).collect()
    }
}
