//! `slice-dns`: the slice DNS server. It answers `clusterset.local` as the MCS DNS specification
//! 1.0.0 says and `slice.local` (the names KubeSlice users know) from the same records: the
//! `ServiceImport`s and MCS `EndpointSlice`s the worker writes.
//!
//! - [`model`] and [`records`] are pure: objects → services → an immutable [`records::Snapshot`]
//!   that answers a question.
//! - [`objects`] reads a YAML stream of those objects (the `--objects FILE` mode).
//! - [`handler`] turns a DNS request into a reply from the current snapshot (EDNS, truncation,
//!   error codes); [`server`] runs it on UDP (hickory-server) and TCP (our own bounded loop).
//! - [`reload`] re-reads the objects file and swaps the snapshot; [`cluster`] does the same
//!   from the Kubernetes API (the `--kube` mode).

pub mod cluster;
pub mod handler;
pub mod model;
pub mod objects;
pub mod records;
pub mod reload;
pub mod server;
