//! Root test of the per-peer tunnel figures (issue 16) between two real gateways: the round trip
//! of the handshake the initiator made, packets and bytes each way, and the loss estimate when
//! the WAN drops every other datagram of one direction. Namespaces `hcon-*`.

mod common;

use common::{Lab, PORT, WAIT, keypair, wait_until, wg_config};

const METRICS: &str = "127.0.0.1:9586";

fn metrics(lab: &Lab, i: usize) -> anyhow::Result<String> {
    lab.exec(i, &format!("python3 -c \"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())\""))
}

/// The value of the sample of `family` for the peer `key`, if the gateway lists one.
fn sample(text: &str, family: &str, key: &str) -> Option<f64> {
    let label = format!("public_key=\"{key}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn per_peer_figures_show_round_trip_traffic_and_loss() -> anyhow::Result<()> {
    let mut lab = Lab::named("hcon", 2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1)]), &["--metrics", METRICS])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &["--metrics", METRICS])?;
    // Node 0 sends first, so node 0 initiates the handshake and measures its round trip.
    assert!(lab.pings(0, 1, WAIT), "ping 0 → 1 through the tunnel");
    lab.exec(0, &format!("ping -c 20 -i 0.05 -W 2 {}", Lab::overlay(1)))?;

    let text = metrics(&lab, 0)?;
    let rtt = sample(&text, "slice_gateway_peer_handshake_rtt_seconds", &kb.public);
    assert!(rtt.is_some_and(|s| s >= 0.0), "the initiator has a round trip: {text}");
    let figure = |f: &str| sample(&text, f, &kb.public).unwrap_or(-1.0);
    assert!(figure("slice_gateway_peer_tx_packets_total") >= 21.0, "{text}");
    assert!(figure("slice_gateway_peer_rx_packets_total") >= 21.0, "{text}");
    assert!(figure("slice_gateway_peer_tx_bytes_total") > figure("slice_gateway_peer_tx_packets_total"), "{text}");
    assert!(figure("slice_gateway_peer_rx_bytes_total") > figure("slice_gateway_peer_rx_packets_total"), "{text}");
    assert_eq!(figure("slice_gateway_peer_rx_loss_ratio"), 0.0, "nothing was dropped: {text}");
    // The responder did not initiate: no round trip of its own (the initiator's status has it).
    let other = metrics(&lab, 1)?;
    assert_eq!(sample(&other, "slice_gateway_peer_handshake_rtt_seconds", &ka.public), None, "{other}");

    // Every other datagram from node 1 is dropped on its way into node 0 (deterministically:
    // a counter, not a random draw); node 0's gateway sees the gaps in the counters.
    lab.exec(
        0,
        &format!(
            "nft add table inet hconloss && \
             nft add chain inet hconloss in '{{ type filter hook input priority -10; policy accept; }}' && \
             nft add rule inet hconloss in udp sport {PORT} udp dport {PORT} numgen inc mod 2 == 0 drop"
        ),
    )?;
    // Some replies are lost: ping's own exit status says nothing useful here.
    let _ = lab.exec(0, &format!("ping -c 40 -i 0.05 -W 1 {} || true", Lab::overlay(1)));
    let mut last = String::new();
    let lossy = wait_until(WAIT, || {
        last = metrics(&lab, 0).unwrap_or_default();
        sample(&last, "slice_gateway_peer_rx_loss_ratio", &kb.public).is_some_and(|r| r > 0.0 && r < 1.0)
    });
    assert!(lossy, "a loss between 0 and 1 once every other datagram is dropped: {last}");
    Ok(())
}
