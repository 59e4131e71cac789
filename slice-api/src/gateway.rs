//! The slice gateway's outside, as the worker and the lab drive it: the `slice-gateway`
//! command-line flags, its HTTP paths, the metric families it exports (the worker reads the
//! tunnels' state from them) and its UAPI socket directory. The gateway defines its CLI and its
//! `/metrics` with these names, so a rename is one edit that every user follows.

use std::path::PathBuf;

/// Long flag names of `slice-gateway` (without the leading `--`; see [`arg`]).
pub mod flag {
    /// The TUN interface to create; also names the UAPI socket.
    pub const INTERFACE: &str = "interface";
    /// The wg(8) configuration file.
    pub const CONFIG: &str = "config";
    /// Address to serve `/metrics` and `/healthz` on.
    pub const METRICS: &str = "metrics";
    /// MTU of the TUN interface.
    pub const MTU: &str = "mtu";
    /// An address for the interface (repeatable).
    pub const ADDRESS: &str = "address";
    /// Route the peers' AllowedIPs into the interface.
    pub const ROUTES: &str = "routes";
    /// Handshake messages per second before cookies are required.
    pub const HANDSHAKE_RATE_LIMIT: &str = "handshake-rate-limit";
    /// A link to forward IPv4 between, with the TUN device (repeatable).
    pub const FORWARD: &str = "forward";
    /// The DSCP class (by name, e.g. `AF41`) written on the outer packets (`IP_TOS`).
    pub const DSCP: &str = "dscp";
    /// Peer groups: a prefix given to several peers (a remote cluster's replicas) routes each
    /// flow to one live member; the value is the probe interval in ms (issue 13).
    pub const MULTIPATH_PROBE_MS: &str = "multipath-probe-ms";
    /// How long a gateway drains on SIGTERM before it exits, in ms (issue 13).
    pub const DRAIN_MS: &str = "drain-ms";
}

/// How long the worker has the replicas of a slice with several drain on SIGTERM
/// (`--drain-ms`): the first half `/healthz` answers 503 (the node agents, asking every 200 ms,
/// take it out after two misses), the second half it sends nothing to its peers (their
/// gateways, probing every [`DEFAULT_MULTIPATH_PROBE_MS`], call it dead after three silent
/// intervals), then it exits — so a rolling restart moves the flows before the replica goes.
/// A slice with one gateway per cluster has no other path to move to: no drain.
pub const DEFAULT_DRAIN_MS: u64 = 2000;

/// The probe interval the worker gives its gateways (`--multipath-probe-ms`) when a slice has
/// several replicas per cluster: a member silent for three of them is dead, so failover stays
/// under a second.
pub const DEFAULT_MULTIPATH_PROBE_MS: u64 = 200;

/// The probe interval of a slice with one gateway per cluster: no failover to drive, only the
/// tunnel's state (a peer silent for three intervals is reported down, so a cut link shows
/// within seconds rather than after WireGuard's 180 s); one keepalive per peer per second.
pub const SINGLE_GATEWAY_PROBE_MS: u64 = 1000;

/// The shortest window of a throughput figure: a scrape sooner than this after the last sample
/// reports the last rate again (two scrapes a moment apart would measure noise).
pub const RATE_MIN_WINDOW_MS: u64 = 1000;

/// The environment variable that sets [`flag::HANDSHAKE_RATE_LIMIT`].
pub const HANDSHAKE_RATE_LIMIT_ENV: &str = "SLICE_GATEWAY_HANDSHAKE_RATE_LIMIT";

/// `--<flag>`, as it goes on a command line.
#[must_use]
pub fn arg(flag: &str) -> String {
    format!("--{flag}")
}

/// The port the worker has its gateways serve `/metrics` and `/healthz` on (`--metrics
/// [::]:<port>`); the node agent probes its local replicas' `/healthz` there.
pub const METRICS_PORT: u16 = 9586;

/// Path of the Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";
/// Path of the liveness answer (`ok`).
pub const HEALTH_PATH: &str = "/healthz";

/// Directory of the WireGuard UAPI sockets (`wg` looks there).
pub const UAPI_SOCKET_DIR: &str = "/var/run/wireguard";

/// The UAPI socket of `interface`: `<UAPI_SOCKET_DIR>/<interface>.sock`.
#[must_use]
pub fn uapi_socket(interface: &str) -> PathBuf {
    PathBuf::from(UAPI_SOCKET_DIR).join(format!("{interface}.sock"))
}

/// Metric families and labels of the gateway's `/metrics`.
pub mod metric {
    /// Label of every family: the interface.
    pub const LABEL_INTERFACE: &str = "interface";
    /// Label of the per-peer families: the peer's public key (base64).
    pub const LABEL_PUBLIC_KEY: &str = "public_key";
    /// Label of [`PEER_DROPS`]: a fixed set of reasons.
    pub const LABEL_REASON: &str = "reason";

    /// Counter: UDP datagrams that are not WireGuard messages or fail mac1.
    pub const GARBAGE_PACKETS: &str = "slice_gateway_garbage_packets_total";
    /// Counter: WireGuard messages for no configured peer.
    pub const UNKNOWN_PEER_PACKETS: &str = "slice_gateway_unknown_peer_packets_total";
    /// Counter: cookie replies sent under handshake load.
    pub const COOKIE_REPLIES: &str = "slice_gateway_cookie_replies_total";
    /// Counter: packets dropped because no private key is set.
    pub const NO_PRIVATE_KEY_PACKETS: &str = "slice_gateway_no_private_key_packets_total";
    /// Counter: TUN packets whose destination is in no peer's AllowedIPs.
    pub const NO_ROUTE_PACKETS: &str = "slice_gateway_no_route_packets_total";
    /// Counter: TUN packets that are not IPv4 or IPv6.
    pub const TUN_INVALID_PACKETS: &str = "slice_gateway_tun_invalid_packets_total";
    /// Gauge: configured peers.
    pub const PEERS: &str = "slice_gateway_peers";
    /// Counter, per peer: bytes received (UDP payload).
    pub const PEER_RX_BYTES: &str = "slice_gateway_peer_rx_bytes_total";
    /// Counter, per peer: authenticated datagrams received.
    pub const PEER_RX_PACKETS: &str = "slice_gateway_peer_rx_packets_total";
    /// Counter, per peer: bytes sent (UDP payload).
    pub const PEER_TX_BYTES: &str = "slice_gateway_peer_tx_bytes_total";
    /// Counter, per peer: datagrams sent.
    pub const PEER_TX_PACKETS: &str = "slice_gateway_peer_tx_packets_total";
    /// Gauge, per peer, with `--multipath-probe-ms` only: 1 while the peer spoke within three
    /// probe intervals, else 0.
    pub const PEER_LIVE: &str = "slice_gateway_peer_live";
    /// Gauge, per peer: Unix time of the last handshake (0: never). The worker's tunnel state
    /// comes from this family alone.
    pub const PEER_LAST_HANDSHAKE_SECONDS: &str = "slice_gateway_peer_last_handshake_seconds";
    /// Gauge, per peer: round-trip time of the last handshake this gateway initiated, in seconds
    /// (boringtun measures it to the millisecond, from sending the initiation to taking the
    /// response). Absent until this gateway has initiated one.
    pub const PEER_HANDSHAKE_RTT_SECONDS: &str = "slice_gateway_peer_handshake_rtt_seconds";
    /// Gauge, per peer: the share (0–1) of data packets the peer sent that did not arrive, from
    /// the gaps in the receive counters of the current sessions (boringtun's estimate).
    pub const PEER_RX_LOSS_RATIO: &str = "slice_gateway_peer_rx_loss_ratio";
    /// Gauge, per peer: bits per second received from the peer (UDP payload) between the two
    /// latest samples at least [`super::RATE_MIN_WINDOW_MS`] apart (samples are taken at scrapes).
    pub const PEER_RX_BITS_PER_SECOND: &str = "slice_gateway_peer_rx_bits_per_second";
    /// Gauge, per peer: bits per second sent to the peer, as [`PEER_RX_BITS_PER_SECOND`].
    pub const PEER_TX_BITS_PER_SECOND: &str = "slice_gateway_peer_tx_bits_per_second";
    /// Counter, per peer and [`LABEL_REASON`]: packets of the peer dropped.
    pub const PEER_DROPS: &str = "slice_gateway_peer_drops_total";
    /// The TUN device's MTU (device-wide gauge): the inner packets the tunnel must carry.
    pub const MTU_BYTES: &str = "slice_gateway_mtu_bytes";
    /// The largest inner packet the path to the peer carried in the last round of path MTU
    /// probes that says (`slice_gateway::pathprobe`); absent until one does.
    pub const PEER_PATH_MTU_BYTES: &str = "slice_gateway_peer_path_mtu_bytes";
    /// Seconds the first handshake initiation sent to the peer since its last handshake has
    /// waited for an answer; absent when none waits.
    pub const PEER_HANDSHAKE_UNANSWERED_SECONDS: &str = "slice_gateway_peer_handshake_unanswered_seconds";
    /// Unix time of the last handshake initiation received from the peer (0: never).
    pub const PEER_LAST_INITIATION_RECEIVED_SECONDS: &str = "slice_gateway_peer_last_initiation_received_seconds";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_sockets() {
        assert_eq!(arg(flag::HANDSHAKE_RATE_LIMIT), "--handshake-rate-limit");
        assert_eq!(uapi_socket("sg-blue"), PathBuf::from("/var/run/wireguard/sg-blue.sock"));
    }
}
