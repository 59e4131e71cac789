//! Pure types and contracts shared by every slicenet component. No I/O lives here except the
//! atomic write/read helpers for the node-state file and the network-status record, which are
//! the contracts' own formats.
//!
//! - [`names`]: label, annotation and default path names (DESIGN.md "Names").
//! - [`prefix`]: carving a slice subnet into cluster prefixes and node prefixes.
//! - `crd` (feature `crd`): the custom resources `SliceConfig`, `MemberCluster`, `WorkerSlice`;
//!   `hub_view` (feature `crd`): the hub's view (the three kinds), its report and its problems.
//! - [`rbac`]: what each component does on the Kubernetes API, as data (RBAC is built from it).
//! - [`node`]: the node agent's configuration and the node-state file it writes for the CNI plugin.
//! - [`gateway`]: the slice gateway's flags, HTTP paths, metric names and UAPI directory.
//! - [`membership`]: the membership ConfigMap (worker → pod webhook).
//! - [`network_status`]: chained mode's per-pod network-status record (slice-cni → node agent).
//! - small pure helpers more than one component needs: [`fnv`] (stable FNV-1a for derived
//!   names), [`backoff`] (exponential backoff of control loops), [`error_chain`] (an error and
//!   its sources on one line).
//! - [`access`]: the API requests each controller makes (`slicectl install` builds the RBAC from
//!   them; the controllers' mock-API tests check their requests against them).
//! - [`hub_credential`]: the worker's hub token, bound in time, and when to renew it.
//! - `mcs` (feature `crd`): the Multi-Cluster Services API types (ServiceExport, ServiceImport)
//!   and the MCS EndpointSlice labels.
//! - `corefile` (feature `crd`): the slice DNS stanza of a CoreDNS Corefile (add, rewrite,
//!   remove).
//! - [`policy`]: MultiNetworkPolicy (types, the `policy-for` annotation, label selectors) and
//!   the pod directory the node agent matches them against.
//! - [`qos`]: DSCP class names and a slice's QoS as the node agent is given it.
//! - [`wireguard`]: the WireGuard key type and the `wg(8)` configuration file (parse and render).

pub mod access;
pub mod backoff;
#[cfg(feature = "crd")]
pub mod console;
#[cfg(feature = "crd")]
pub mod corefile;
#[cfg(feature = "crd")]
pub mod crd;
#[cfg(feature = "crd")]
pub mod diagnose;
pub mod error_chain;
pub mod fnv;
pub mod gateway;
pub mod hub_credential;
#[cfg(feature = "crd")]
pub mod hub_view;
#[cfg(feature = "crd")]
pub mod mcs;
pub mod membership;
pub mod multus;
pub mod names;
pub mod network_status;
pub mod node;
#[cfg(feature = "crd")]
pub mod planner;
pub mod policy;
pub mod prefix;
pub mod qos;
pub mod rbac;
#[cfg(feature = "crd")]
pub mod validate;
pub mod wireguard;

pub use node::{NodeAgentConfig, NodeState, PeerNode, RemoteRoute, SliceOnNode};
