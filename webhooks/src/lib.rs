//! `slice-webhooks`: slicenet's admission webhooks. DESIGN.md "Names" and "Contracts" say what
//! they enforce; the decisions are pure functions, the server only decodes and encodes.
//!
//! - [`mutate`]: the pod mutation (slice annotation, opt-out, Multus networks) as a JSON Patch.
//! - [`networks`]: merging the slice's NAD into `k8s.v1.cni.cncf.io/networks` (both forms).
//! - [`membership`]: which namespaces belong to which slice here (trait; static and
//!   ConfigMap-directory sources).
//! - [`hub`]: the other SliceConfigs and the MemberClusters for validation (trait; static and
//!   directory sources). The rules themselves are `slice_api::validate`.
//! - [`kube_hub`]: the same, read from the hub's API server through reflectors (`--hub-api`).
//! - [`review`]: AdmissionReview v1 in, AdmissionReview out; bad bodies become HTTP 400.
//! - [`tls`]: the serving certificate, reloaded from disk while serving.
//! - [`server`]: HTTPS (rustls + hyper), routes, limits, timeouts.
//! - [`client`]: a small HTTPS client for the tests and the benchmark.
//! - [`config`]: the Mutating/ValidatingWebhookConfigurations and their failure policies, as
//!   `slicectl install` prints them.
//! - [`cli`]: the binary's flags and start-up.

pub mod cli;
pub mod client;
pub mod config;
pub mod hub;
pub mod kube_hub;
pub mod membership;
pub mod mutate;
pub mod networks;
pub mod review;
pub mod server;
pub mod tls;
