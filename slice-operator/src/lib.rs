//! slicenet's controllers:
//! - [`hub`]: SliceConfigs + MemberClusters → WorkerSlices, one namespace per member cluster.
//! - [`worker`]: a member cluster's WorkerSlices → namespace labels, gateway, node configuration.
//! - [`node_agent`]: slice router namespaces, VXLAN between nodes, node-state files.
//! - [`access`]: the API requests each of them makes (the RBAC is built from it).

pub mod access;
pub mod hub;
pub mod node_agent;
pub mod worker;
