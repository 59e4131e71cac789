//! Small pieces of the lab's gateways that tests and benchmarks share: WireGuard key pairs (the
//! worker's generator) and waiting for a slice router to route (or stop routing) a prefix.
//! The gateways themselves are run by the lab's control plane (`crate::control`) from the
//! worker's Deployment.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ipnet::IpNet;
use slice_api::wireguard::Key;

use crate::Lab;

/// A WireGuard key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub private: Key,
    pub public: Key,
}

/// A fresh key pair (`slice_api`'s generator, the one the worker uses).
#[must_use]
pub fn keypair() -> KeyPair {
    let private = Key::generate();
    KeyPair { private, public: private.public() }
}

fn router_has_route(router_netns: &str, prefix: &IpNet) -> bool {
    Command::new("ip")
        .args(["-n", router_netns, "route", "show", &prefix.to_string()])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

/// Waits until the slice router of every node of `cluster` routes `prefix` (or, with
/// `present = false`, no longer routes it).
///
/// # Errors
/// On timeout.
pub fn wait_router_route(
    lab: &Lab,
    cluster: &str,
    slice: &str,
    prefix: &IpNet,
    present: bool,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for node in lab.cluster(cluster).nodes() {
        let ns = format!("{}{slice}", node.router_netns_prefix());
        while router_has_route(&ns, prefix) != present {
            if Instant::now() > deadline {
                bail!("{ns}: route {prefix} still {}", if present { "missing" } else { "present" });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}
