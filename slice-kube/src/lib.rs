//! The Kubernetes runtime pieces that slicenet's controllers (`slice-operator`) and its node
//! agent (`slice-node`) share, none of them slicenet's business logic:
//! - [`leader`]: leader election on a Lease, so the hub and the worker can run two replicas.
//! - [`events`]: Kubernetes Events from state changes, aggregated.
//! - [`health`]: the probes' endpoint (`--health-addr`).
//! - [`kubeconfig`]: an API client from a kubeconfig file (the controllers and `slicectl`).
//! - `memory` (feature `memory`): an in-memory API server for kube-rs clients, which the lab
//!   runs the hub and the workers against and the controllers' tests check their requests with.

pub mod console;
pub mod events;
pub mod health;
pub mod kubeconfig;
pub mod leader;
#[cfg(feature = "memory")]
pub mod memory;
