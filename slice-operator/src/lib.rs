//! slicenet's controllers:
//! - [`hub`]: SliceConfigs + MemberClusters → WorkerSlices, one namespace per member cluster.
//! - [`worker`]: a member cluster's WorkerSlices → namespace labels, gateway, node configuration.
//! - [`cert_rotation`]: the webhooks' serving certificates, renewed from the install's CA.
//! - [`cli`]: the command line of `slice-operator` (clap), shared with tests of other crates;
//!   its `node-agent` subcommand runs [`slice_node`], so one image holds every long-running
//!   component.
//!
//! The node agent lives in `slice-node`, the API access lists in `slice_api::access`, and leader
//! election, Events, probes and kubeconfig clients in `slice-kube`; they are re-exported here
//! under their former paths for the tests of this crate and of the tools.

pub use slice_api::access;
pub use slice_kube::{events, health, kubeconfig, leader};
pub use slice_node as node_agent;

pub mod cert_rotation;
pub mod cli;
pub mod hub;
pub mod worker;
