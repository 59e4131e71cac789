//! slicenet's one layer over the kernel's network objects: network namespaces ([`netns`]) and
//! typed rtnetlink operations ([`netlink`], by kind: links, addresses, routes, neighbours,
//! nexthop objects and groups, rules) with errno turned into a message a person can act on; the
//! traits over them ([`ops::NetlinkOps`]: links, addresses, routes, neighbours, FDB, nexthops,
//! rules; [`ops::NamespaceOps`]: named namespaces, a netlink
//! handle inside one, sysctls), with [`fake::FakeNetlink`] and [`fake::FakeNamespaces`], an
//! in-memory world that records calls; nftables tables through the `nft` binary's JSON
//! ([`nft`]), listed back and replaced in one transaction; an HTB tree on a device's egress
//! through the `tc` binary ([`tc`], with its own fake).
//!
//! Everything here is synchronous for callers (the CNI plugin is a short-lived process, the node
//! agent applies plans from a blocking thread); rtnetlink runs on a private current-thread runtime.

pub mod error;
pub mod fake;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod ops;
pub mod tc;

pub use error::{Error, Result};
pub use netlink::{
    Fdb, Link, Neigh, Netlink, Nexthop, NexthopKind, NexthopRoute, Route, Rule, VethRequest, VxlanRequest, format_mac,
};
pub use netns::Netns;
pub use ops::{Kernel, NamespaceOps, NetlinkOps};
