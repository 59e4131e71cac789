//! Root test of what a gateway learns of the path to a peer (issue 16: what `slicectl diagnose`
//! reads from the hub): the largest packet the path carries, from the path probes inside the
//! tunnel, when the WAN bridge's port towards one node gets a smaller MTU (frames dropped
//! without a word, as a misconfigured link does); and, when UDP towards one node is blocked,
//! that node's handshake initiations left unanswered, and which side still receives the
//! other's initiations. Namespaces `sgpath-*`.

mod common;

use common::{Lab, PORT, WAIT, keypair, sh, wait_until, wg_config};

const METRICS: &str = "127.0.0.1:9586";
/// The gateways' TUN MTU: what the full-size probes carry.
const MTU: f64 = 1380.0;

fn metrics(lab: &Lab, i: usize) -> String {
    lab.exec(i, &format!("python3 -c \"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://{METRICS}/metrics').read().decode())\""))
        .unwrap_or_default()
}

/// The value of the sample of `family` for the peer `key`, if the gateway lists one.
fn sample(text: &str, family: &str, key: &str) -> Option<f64> {
    let label = format!("public_key=\"{key}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Removes the test's nft table from node 1 however the test ends.
struct Block<'a>(&'a Lab);

impl Drop for Block<'_> {
    fn drop(&mut self) {
        let _ = self.0.exec(1, "nft delete table inet sgpathblock");
    }
}

#[test]
fn the_path_mtu_and_unanswered_handshakes_are_measured() -> anyhow::Result<()> {
    let mut lab = Lab::named("sgpath", 2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    let args = ["--metrics", METRICS, "--mtu", "1380", "--multipath-probe-ms", "200"];
    lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1)]), &args)?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &args)?;
    assert!(lab.pings(0, 1, WAIT), "ping 0 → 1 through the tunnel");
    let mtu_of = |i: usize, key: &str| sample(&metrics(&lab, i), "slice_gateway_peer_path_mtu_bytes", key);
    assert!(wait_until(WAIT, || mtu_of(0, &kb.public) == Some(MTU)), "full-size probes pass: {}", metrics(&lab, 0));
    assert!(wait_until(WAIT, || mtu_of(1, &ka.public) == Some(MTU)), "both ways: {}", metrics(&lab, 1));
    let device = metrics(&lab, 0);
    assert!(device.contains("slice_gateway_mtu_bytes{interface="), "{device}");

    // Frames over 1300 bytes through the WAN bridge's port of node 1 are dropped (both ways:
    // a veth drops what exceeds the MTU of the end that receives it): each side's path carries
    // inner packets up to 1240 bytes (1300 - 60 of WireGuard over IPv4; the kernel lets a frame
    // 4 bytes over, and the probe ladder steps by 8).
    sh(&format!("ip -n {} link set p1 mtu 1300", lab.wan))?;
    let (mut got0, mut got1) = (None, None);
    let narrowed = wait_until(WAIT, || {
        got0 = mtu_of(0, &kb.public);
        got1 = mtu_of(1, &ka.public);
        got0.is_some_and(|m| m < MTU) && got1.is_some_and(|m| m < MTU)
    });
    sh(&format!("ip -n {} link set p1 mtu 1500", lab.wan))?;
    assert!(narrowed, "the probes find the narrow link: {got0:?} {got1:?}");
    for got in [got0, got1] {
        assert!(got.is_some_and(|m| (1236.0..=1244.0).contains(&m)), "{got:?}");
    }
    assert!(wait_until(WAIT, || mtu_of(0, &kb.public) == Some(MTU)), "whole again once the link is");

    // UDP to node 1's port is dropped on its way in. Node 1 hears nothing from node 0 and starts
    // handshakes; node 0 receives them (what node 1 sends passes) and answers, and its answers
    // are dropped: node 1's initiations go unanswered, node 0 sees them arrive, node 1 sees
    // none of node 0's. (Node 0 still hears node 1's keepalives: it has no reason to initiate.)
    let unanswered =
        |i: usize, key: &str| sample(&metrics(&lab, i), "slice_gateway_peer_handshake_unanswered_seconds", key);
    let received = |i: usize, key: &str| {
        sample(&metrics(&lab, i), "slice_gateway_peer_last_initiation_received_seconds", key).unwrap_or(-1.0)
    };
    let block = Block(&lab);
    lab.exec(
        1,
        &format!(
            "nft add table inet sgpathblock && \
             nft add chain inet sgpathblock in '{{ type filter hook input priority -10; policy accept; }}' && \
             nft add rule inet sgpathblock in udp dport {PORT} drop"
        ),
    )?;
    let blocked_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    assert!(
        wait_until(WAIT, || unanswered(1, &ka.public).is_some_and(|s| s >= 2.0)),
        "node 1's initiations wait: {}",
        metrics(&lab, 1)
    );
    assert!(wait_until(WAIT, || received(0, &kb.public) > blocked_at), "node 1's initiations reach node 0");
    assert!(received(1, &ka.public) < blocked_at, "node 0's do not reach node 1: {}", metrics(&lab, 1));
    assert!(wait_until(WAIT, || mtu_of(1, &ka.public).is_none()), "nothing comes back to node 1: the size is unknown");

    drop(block);
    assert!(
        wait_until(WAIT, || unanswered(0, &kb.public).is_none() && unanswered(1, &ka.public).is_none()),
        "answered once UDP passes: {}",
        metrics(&lab, 0)
    );
    assert!(lab.pings(0, 1, WAIT), "the tunnel carries again");
    Ok(())
}
