//! `slicectl diagnose` in the lab: what the lab can observe on its machines
//! ([`slice_api::diagnose::Observed`]) beside the hub's objects, checked by
//! `slice_api::diagnose::lab_findings`.
//!
//! | fact | how it is observed |
//! | --- | --- |
//! | node agent running | the agent process of each node is alive |
//! | gateway running, its key, its peers' keys, its MTU | the gateway process; `wg show IFACE public-key` / `peers` over its UAPI socket; `ip link` in its pod |
//! | UDP reaches a gateway | three datagrams that are not WireGuard messages sent from the WAN's "internet host" to the gateway's public endpoint; the gateway counts them in `slice_gateway_garbage_packets_total` |
//! | path MTU | pings with "don't fragment" from each gateway's pod to each peer's public address: the largest IPv4 packet answered (1500 first, else a binary search from 576) |
//! | CNI chained | the node's CNI configuration directory: the first configuration by name (the one containerd uses) chains slice-cni, and the binary is in the node's CNI bin directory (labs chaining slice-cni only) |
//! | DNS answering | where a cluster runs its DNS: `dig dns-version.clusterset.local TXT` from the first node to slice-dns, and from every node to its resolver (which must forward the zone to slice-dns) |

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use slice_api::diagnose::{
    AgentSeen, DnsSeen, DnsServer, GatewaySeen, Observed, PathMtu, Report, UdpProbe, WIREGUARD_OVERHEAD_V4,
};
use slice_api::gateway::metric::GARBAGE_PACKETS;

use super::ControlPlane;
use crate::{Lab, Pod};

/// How long a probe datagram may take to be counted (a bound on a broken path, not a wait).
const PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// The smallest and largest IPv4 packets the path MTU search tries.
const MTU_FLOOR: u32 = 576;
const MTU_CEILING: u32 = 1500;

/// Whether process `pid` is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()))
        .is_some_and(|state| state.is_some_and(|c| c != 'Z' && c != 'X'))
}

/// The value of the first sample of `family` in a Prometheus text.
fn first_sample(text: &str, family: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Why the node's CNI configuration does not chain slice-cni, if it does not: what the node
/// agent reports on its Lease in a cluster (`slice_node::lease::cni_state`).
fn cni_problem(node: &crate::Node) -> Option<String> {
    let dirs = slice_node::lease::CniDirs { conf: node.cni_conf_dir(), bin: node.cni_bin_dir() };
    let state = slice_node::lease::cni_state(&dirs);
    (state != slice_api::names::AGENT_CNI_CHAINED).then_some(state)
}

/// Asks `server` for the MCS DNS version record from inside `netns`: `None` when it answered
/// with it, else what came instead.
fn dns_problem(netns: &std::path::Path, server: std::net::IpAddr) -> Option<String> {
    let name = format!("dns-version.{}", slice_api::mcs::CLUSTERSET_ZONE);
    let at = format!("@{server}");
    let argv = ["dig", "+noall", "+comments", "+answer", "+time=2", "+tries=2", at.as_str(), name.as_str(), "TXT"];
    let out = match crate::netns::exec(netns, &argv) {
        Ok(out) => out,
        Err(e) => return Some(format!("no answer: dig did not run: {e:#}")),
    };
    let answer = super::dns::parse_dig(&String::from_utf8_lossy(&out.stdout));
    match answer.status.as_str() {
        "" => Some("no answer within 4 s".to_owned()),
        "NOERROR" if answer.data.iter().any(|d| d.contains(slice_api::mcs::DNS_SPEC_VERSION)) => None,
        "NOERROR" => Some("an answer without the version record".to_owned()),
        code => Some(code.to_owned()),
    }
}

/// Whether a ping of an IPv4 packet of `size` bytes with DF set gets an answer.
fn passes(pod: &Pod, to: &str, size: u32) -> bool {
    let payload = (size - 28).to_string();
    pod.exec(&["ping", "-n", "-q", "-c", "1", "-W", "2", "-M", "do", "-s", &payload, to])
        .is_ok_and(|o| o.status.success())
}

/// The largest IPv4 packet from `pod` to `to` that gets an answer.
fn largest_packet(pod: &Pod, to: &str) -> Option<u32> {
    if passes(pod, to, MTU_CEILING) {
        return Some(MTU_CEILING);
    }
    if !passes(pod, to, MTU_FLOOR) {
        return None;
    }
    let (mut good, mut bad) = (MTU_FLOOR, MTU_CEILING);
    while bad - good > 1 {
        let mid = u32::midpoint(good, bad);
        if passes(pod, to, mid) { good = mid } else { bad = mid }
    }
    Some(good)
}

/// Sends `count` datagrams to `to` from inside network namespace `netns`.
fn send_from(netns: &std::path::Path, to: SocketAddr, count: usize) -> Result<(), String> {
    let netns = netns.to_owned();
    std::thread::spawn(move || -> Result<(), String> {
        let file = std::fs::File::open(&netns).map_err(|e| format!("{}: {e}", netns.display()))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
        for _ in 0..count {
            socket.send_to(b"slicenet diagnose probe", to).map_err(|e| format!("send to {to}: {e}"))?;
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("the probe thread panicked".to_owned()))
}

impl ControlPlane {
    /// The gateway's metrics text of `slice` in `cluster`, scraped from inside its pod.
    fn gateway_metrics_text(&self, slice: &str, cluster: &str) -> Option<String> {
        let gw = self.gateway(slice, cluster)?;
        let metrics = self.metrics.lock().expect("metrics addresses lock").clone();
        metrics
            .iter()
            .filter(|(_, n)| **n == gw.pod.netns_path)
            .find_map(|((_, addr), netns)| super::kubelet::scrape_in(netns, *addr).ok())
    }

    /// What the lab sees on its machines: agents, gateways, UDP probes to every public gateway
    /// endpoint, the path MTU between every gateway and each peer's public address.
    pub fn observe(&self, lab: &Lab) -> Observed {
        let mut seen = Observed::default();
        let chained = lab.options().slice_cni;
        for cluster in lab.clusters() {
            for node in cluster.nodes() {
                seen.agents.push(AgentSeen {
                    cluster: cluster.name().to_owned(),
                    node: node.name().to_owned(),
                    running: node.agent_pid().is_some_and(alive),
                    cni_problem: if chained { cni_problem(node) } else { None },
                });
            }
        }
        for (cluster, kubelet) in &self.kubelets {
            let Some(server) = kubelet.dns.server() else { continue };
            let nodes = lab.cluster(cluster).nodes();
            if let Some(first) = nodes.first() {
                seen.dns.push(DnsSeen {
                    cluster: cluster.clone(),
                    server: DnsServer::SliceDns,
                    address: server.to_string(),
                    problem: dns_problem(&first.netns_path(), server.ip()),
                });
            }
            for node in nodes {
                let resolver = std::net::IpAddr::V4(crate::NODE_LOCAL_DNS);
                seen.dns.push(DnsSeen {
                    cluster: cluster.clone(),
                    server: DnsServer::NodeResolver { node: node.name().to_owned() },
                    address: std::net::SocketAddr::new(resolver, super::dns::DNS_PORT).to_string(),
                    problem: dns_problem(&node.netns_path(), resolver),
                });
            }
        }
        for (cluster, kubelet) in &self.kubelets {
            for gw in kubelet.gateways.values() {
                let wg = |what: &str| gw.pod.exec_ok(&["wg", "show", &gw.interface, what]).ok();
                // `ip -o link show IFACE`: "… mtu 1420 qdisc …" (sysfs would show the host's view).
                let mtu = gw.pod.exec_ok(&["ip", "-o", "link", "show", &gw.interface]).ok().and_then(|l| {
                    let words: Vec<&str> = l.split_whitespace().collect();
                    words.iter().position(|w| *w == "mtu").and_then(|i| words.get(i + 1)?.parse().ok())
                });
                seen.gateways.push(GatewaySeen {
                    slice: gw.slice.clone(),
                    cluster: cluster.clone(),
                    running: alive(gw.process.id()),
                    public_key: wg("public-key").map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()),
                    peer_keys: wg("peers")
                        .map(|p| p.split_whitespace().map(str::to_owned).collect())
                        .unwrap_or_default(),
                    mtu,
                });
            }
        }
        let wan = lab.wan_netns().map(crate::netns::path);
        for w in &self.view.workers {
            let Some(endpoint) = w.status.as_ref().and_then(|s| s.gateway_endpoint.clone()) else { continue };
            let (slice, cluster) = (&w.spec.slice, &w.spec.cluster);
            if self.gateway(slice, cluster).is_none() {
                continue;
            }
            // The endpoint and the path MTU towards it from every other member's gateway.
            let host = endpoint.rsplit_once(':').map_or(endpoint.as_str(), |(h, _)| h).to_owned();
            for peer in &w.spec.peers {
                let Some(from) = self.gateway(slice, &peer.cluster) else { continue };
                let mtu =
                    seen.gateways.iter().find(|g| &g.slice == slice && g.cluster == peer.cluster).and_then(|g| g.mtu);
                seen.paths.push(PathMtu {
                    slice: slice.clone(),
                    from: peer.cluster.clone(),
                    to: cluster.clone(),
                    largest: largest_packet(&from.pod, &host),
                    needed: mtu.unwrap_or(1420) + WIREGUARD_OVERHEAD_V4,
                });
            }
            let (Some(wan), Ok(to)) = (&wan, endpoint.parse::<SocketAddr>()) else { continue };
            let count =
                |s: &Self| s.gateway_metrics_text(slice, cluster).and_then(|t| first_sample(&t, GARBAGE_PACKETS));
            // A gateway whose metrics do not answer is reported by its own checks.
            let Some(before) = count(self) else { continue };
            let sent = send_from(wan, to, 3);
            let deadline = Instant::now() + PROBE_DEADLINE;
            let mut arrived = false;
            while sent.is_ok() && Instant::now() < deadline {
                if count(self).is_some_and(|now| now > before) {
                    arrived = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            seen.probes.push(UdpProbe { slice: slice.clone(), cluster: cluster.clone(), endpoint, arrived });
        }
        seen
    }

    /// `slicectl diagnose` on the lab: the hub's checks and the lab's.
    pub fn diagnose_report(&self, lab: &Lab) -> Report {
        slice_api::diagnose::lab_findings(&self.view, &self.observe(lab))
    }
}
