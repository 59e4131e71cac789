//! slicenet's controllers:
//! - [`hub`]: SliceConfigs + MemberClusters → WorkerSlices, one namespace per member cluster.
//! - [`worker`]: a member cluster's WorkerSlices → namespace labels, gateway, node configuration.
//! - [`node_agent`]: slice router namespaces, VXLAN between nodes, node-state files.
//! - [`cert_rotation`]: renews the webhooks' serving certificates from the CA `slicectl install`
//!   made (run by the worker and the hub controller).
//! - [`access`]: the API requests each of them makes (the RBAC is built from it).
//! - [`leader`]: leader election on a Lease, so the hub and the worker can run two replicas.
//! - [`events`]: Kubernetes Events from the controllers, aggregated.
//! - [`health`]: the probes' endpoint (`--health-addr`).
//! - [`cli`]: the command line of `slice-operator` (clap), shared with tests of other crates.
//! - [`kubeconfig`]: an API client from a kubeconfig file (the controllers and `slicectl`).

pub mod access;
pub mod cert_rotation;
pub mod cli;
pub mod events;
pub mod health;
pub mod hub;
pub mod kubeconfig;
pub mod leader;
pub mod node_agent;
pub mod worker;
