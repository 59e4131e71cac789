//! `slicectl`, slicenet's CLI, as a library: `main.rs` parses the command line and calls one
//! function of these modules.
//!
//! - [`install`]: the manifests of `slicectl install hub|worker|worker-hub-access|crds`, built
//!   from k8s-openapi types, RBAC from the controllers' access lists ([`rbac`]).
//! - [`crds`]: the CRD YAML of `deploy/crds/` and its staleness check.
//! - [`join`]: the MemberCluster of `slicectl join`; [`register`]: the one-step join against
//!   the hub (objects, token) and [`join_file`], the file `install worker --join` reads.
//! - [`cni_install`]: what the node agent's init container does on each node;
//!   [`node_uninstall`]: what the cleanup DaemonSet undoes there.
//! - [`manifest`]: typed objects → canonical multi-document YAML, and the round-trip check.
//! - [`kubeconfig`], [`tls`]: the worker's hub kubeconfig, the webhook's certificate.
//! - [`hub_status`]: `slicectl status --hub-kubeconfig`: slices, clusters, tunnels, problems.
//! - [`uninstall`]: `slicectl uninstall worker|hub`: the install and what the controllers made,
//!   in order, with the node cleanup DaemonSet ([`node_uninstall`] on every node).
//! - [`version`]: `slicectl version`: every component's version as its pods run it, and skew.
//! - [`commands`]: one function per subcommand.

pub mod cni_install;
pub mod commands;
pub mod crds;
pub mod hub_status;
pub mod install;
pub mod join;
pub mod join_file;
pub mod kubeconfig;
pub mod manifest;
pub mod node_uninstall;
pub mod rbac;
pub mod register;
pub mod tls;
pub mod uninstall;
pub mod version;
