//! Root tests: slice-gateway between network namespaces, against itself and wireguard-go.

mod common;

use std::time::{Duration, SystemTime};

use common::{KeyPair, Lab, PORT, keypair, sh, wait_until, wg_config};

/// nft counters on node `i`'s WAN interface: WireGuard UDP (port to port) vs everything else
/// except ARP (another family) and IPv6 neighbour discovery.
fn install_wire_counters(lab: &Lab, i: usize) -> anyhow::Result<()> {
    lab.exec(
        i,
        &format!(
            "nft -f - <<'NFT'
table inet sgwcheck {{
  counter wg {{}}
  counter other {{}}
  chain out {{ type filter hook output priority 0; policy accept;
    oifname \"wan0\" udp sport {PORT} udp dport {PORT} counter name wg accept
    oifname \"wan0\" meta nfproto ipv4 counter name other
    oifname \"wan0\" meta nfproto ipv6 meta l4proto != ipv6-icmp counter name other
  }}
  chain in {{ type filter hook input priority 0; policy accept;
    iifname \"wan0\" udp sport {PORT} udp dport {PORT} counter name wg accept
    iifname \"wan0\" meta nfproto ipv4 counter name other
    iifname \"wan0\" meta nfproto ipv6 meta l4proto != ipv6-icmp counter name other
  }}
}}
NFT"
        ),
    )?;
    Ok(())
}

/// (packets, bytes) of a named nft counter.
fn counter(lab: &Lab, i: usize, name: &str) -> anyhow::Result<(u64, u64)> {
    let out = lab.exec(i, &format!("nft list counter inet sgwcheck {name}"))?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let after =
        |k: &str| -> u64 { words.iter().position(|w| *w == k).and_then(|p| words[p + 1].parse().ok()).unwrap_or(0) };
    Ok((after("packets"), after("bytes")))
}

fn metrics(lab: &Lab, i: usize, addr: &str) -> anyhow::Result<String> {
    lab.exec(i, &format!("python3 -c \"import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://{addr}/metrics').read().decode())\""))
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn tunnel_carries_ping_and_50mb_wg_show_works_and_wire_holds_only_wireguard() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    install_wire_counters(&lab, 0)?;
    install_wire_counters(&lab, 1)?;
    let g0 = lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1)]), &[])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;

    assert!(lab.pings(0, 1, Duration::from_secs(10)), "ping 0 → 1 through the tunnel");
    assert!(lab.pings(1, 0, Duration::from_secs(10)), "ping 1 → 0 through the tunnel");

    // wg(8) against the running gateway: the interface public key, the peer, a real handshake time.
    let if0 = lab.ifname(0);
    let show = lab.exec(0, &format!("wg show {if0}"))?;
    assert!(show.contains(&format!("public key: {}", ka.public)), "{show}");
    assert!(show.contains(&format!("peer: {}", kb.public)), "{show}");
    assert!(show.contains("latest handshake: Now") || show.contains("second"), "{show}");
    assert!(!show.contains("year"), "handshake time must be a Unix time, not an age: {show}");
    let hs = lab.exec(0, &format!("wg show {if0} latest-handshakes"))?;
    let t: u64 = hs.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    assert!(now.abs_diff(t) < 60, "latest handshake {t} vs now {now}");
    assert!(lab.exec(0, &format!("wg show {if0} endpoints"))?.contains(&format!("{}:{PORT}", Lab::underlay(1))));
    let conf = lab.exec(0, &format!("wg showconf {if0}"))?;
    assert!(conf.contains(&format!("PrivateKey = {}", ka.private)) && conf.contains("ListenPort = 51820"), "{conf}");

    // 50 MB of TCP through the tunnel.
    let mbps = lab.iperf(0, 1, "-n 50M")?;
    eprintln!("FIGURE slice-gateway <-> slice-gateway (this build), 50 MB single TCP stream: {mbps:.0} Mbit/s");
    assert!(mbps > 0.0);

    // Only WireGuard UDP crossed the wire, in both directions, on both nodes.
    for i in 0..2 {
        let (wg_packets, wg_bytes) = counter(&lab, i, "wg")?;
        let (other_packets, _) = counter(&lab, i, "other")?;
        assert_eq!(other_packets, 0, "node {i}: non-WireGuard packets on the WAN");
        // nft counts an skb: with UDP GSO/GRO one skb carries up to 64 datagrams, so the packet
        // count is far below the 36,000 datagrams 50 MB take; the bytes are what must add up.
        assert!(wg_bytes > 50_000_000 && wg_packets > 500, "node {i}: {wg_packets} packets {wg_bytes} bytes");
    }

    // SIGTERM: clean exit, socket and interface gone.
    let ok = lab.procs[g0].terminate();
    assert!(ok, "gateway exit status: {}", lab.log(&if0));
    assert!(!common::socket_path(&if0).exists(), "UAPI socket left behind");
    assert!(lab.exec(0, &format!("ip link show {if0}")).is_err(), "TUN device left behind");
    Ok(())
}

#[test]
fn removing_a_peer_stops_its_traffic_only_and_peers_can_be_added_back() -> anyhow::Result<()> {
    let mut lab = Lab::new(3)?;
    let (ka, kb, kc) = (keypair()?, keypair()?, keypair()?);
    lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1), (&kc, 2)]), &[])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;
    lab.start_gateway(2, &wg_config(&kc, &[(&ka, 0)]), &[])?;
    assert!(lab.pings(0, 1, Duration::from_secs(10)));
    assert!(lab.pings(0, 2, Duration::from_secs(10)));
    assert!(lab.pings(2, 0, Duration::from_secs(10)));

    let if0 = lab.ifname(0);
    // Ping B continuously while C is removed: not one lost packet.
    let steady = std::thread::scope(|s| -> anyhow::Result<String> {
        let pinger = s.spawn(|| lab.exec(0, &format!("ping -c 30 -i 0.1 -W 1 {}", Lab::overlay(1))));
        std::thread::sleep(Duration::from_secs(1));
        lab.exec(0, &format!("wg set {if0} peer {} remove", kc.public))?;
        pinger.join().expect("pinger thread")
    })?;
    assert!(steady.contains(" 0% packet loss"), "{steady}");
    assert!(
        lab.exec(0, &format!("ping -c 2 -W 1 {}", Lab::overlay(2))).is_err(),
        "traffic to a removed peer must stop"
    );
    assert!(
        lab.exec(2, &format!("ping -c 2 -W 1 {}", Lab::overlay(0))).is_err(),
        "traffic from a removed peer must stop"
    );
    let peers = lab.exec(0, &format!("wg show {if0} peers"))?;
    assert!(peers.contains(&kb.public) && !peers.contains(&kc.public), "{peers}");

    // Added back at run time with `wg set`.
    lab.exec(
        0,
        &format!(
            "wg set {if0} peer {} allowed-ips {}/32 endpoint {}:{PORT}",
            kc.public,
            Lab::overlay(2),
            Lab::underlay(2)
        ),
    )?;
    assert!(lab.pings(0, 2, Duration::from_secs(15)), "peer added back with wg set");
    assert!(lab.pings(0, 1, Duration::from_secs(2)));

    // `wg setconf` with a file naming only B: C goes, B keeps its session (no new handshake).
    let before = lab.exec(0, &format!("wg show {if0} latest-handshakes"))?;
    let path = lab.write_private("only-b.conf", &wg_config(&ka, &[(&kb, 1)]))?;
    lab.exec(0, &format!("wg setconf {if0} {}", path.display()))?;
    let peers = lab.exec(0, &format!("wg show {if0} peers"))?;
    assert!(peers.contains(&kb.public) && !peers.contains(&kc.public), "{peers}");
    assert!(lab.pings(0, 1, Duration::from_secs(2)));
    let after = lab.exec(0, &format!("wg show {if0} latest-handshakes"))?;
    let line_b = |s: &str| s.lines().find(|l| l.starts_with(&kb.public)).map(str::to_string);
    assert_eq!(line_b(&before), line_b(&after), "setconf must not disturb an unchanged peer");
    assert!(lab.exec(0, &format!("ping -c 1 -W 1 {}", Lab::overlay(2))).is_err());
    Ok(())
}

#[test]
fn garbage_and_handshake_floods_are_counted_and_the_peer_keeps_working() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    // A low handshake limit (2 messages = one handshake per second), so that the flood below
    // crosses it by its count (3,000 initiations), however slowly a busy machine sends them.
    let g0 = lab.start_gateway(
        0,
        &wg_config(&ka, &[(&kb, 1)]),
        &["--metrics", "127.0.0.1:9586", "--handshake-rate-limit", "2"],
    )?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;
    assert!(lab.pings(1, 0, Duration::from_secs(30)));
    let health = lab.exec(0, "python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9586/healthz').read().decode())\"")?;
    assert_eq!(health.trim(), "ok");

    // Random datagrams, then handshake initiations with a valid mac1 (so they reach the rate
    // limiter) from node 1 — bounded counts, about a second.
    let flood = format!(
        r#"python3 - <<'PY'
import base64, hashlib, os, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = ("{dst}", {PORT})
for _ in range(5000):
    s.sendto(os.urandom(1 + os.urandom(1)[0] * 4), dst)
for _ in range(500):
    s.sendto(b"\x01\x00\x00\x00" + os.urandom(144), dst)
pub = base64.b64decode("{public}")
key = hashlib.blake2s(b"mac1----" + pub).digest()
for _ in range(3000):
    msg = b"\x01\x00\x00\x00" + os.urandom(112)
    mac1 = hashlib.blake2s(msg, key=key, digest_size=16).digest()
    s.sendto(msg + mac1 + bytes(16), dst)
PY"#,
        dst = Lab::underlay(0),
        public = ka.public
    );
    lab.exec(1, &flood)?;
    assert!(lab.procs[g0].alive(), "gateway died under the flood: {}", lab.log(&lab.ifname(0)));
    let text = metrics(&lab, 0, "127.0.0.1:9586")?;
    let garbage = metric(&text, "slice_gateway_garbage_packets_total");
    let cookies = metric(&text, "slice_gateway_cookie_replies_total");
    let unknown = metric(&text, "slice_gateway_unknown_peer_packets_total");
    eprintln!("FIGURE flood: garbage={garbage} cookie_replies={cookies} unknown_peer={unknown}");
    assert!(garbage >= 5000, "garbage counter: {text}");
    assert!(cookies > 0, "the handshake flood must be answered with cookies: {text}");
    assert!(unknown > 0, "{text}");
    let rx = metric(
        &text,
        &format!("slice_gateway_peer_rx_packets_total{{interface=\"{}\",public_key=\"{}\"}}", lab.ifname(0), kb.public),
    );
    assert!(rx > 0, "{text}");
    // Generous: a peer that has to handshake again under cookie load retries after 5 s.
    assert!(lab.pings(1, 0, Duration::from_secs(30)), "the established peer must keep working");
    assert!(lab.pings(0, 1, Duration::from_secs(30)));
    Ok(())
}

#[test]
fn interoperates_with_wireguard_go_and_compares_throughput() -> anyhow::Result<()> {
    let mut lab = Lab::new(4)?;
    let keys: Vec<_> = (0..4).map(|_| keypair()).collect::<anyhow::Result<_>>()?;
    // 0: slice-gateway, 1: slice-gateway, 2: wireguard-go, 3: wireguard-go.
    lab.start_gateway(0, &wg_config(&keys[0], &[(&keys[1], 1), (&keys[2], 2)]), &[])?;
    lab.start_gateway(1, &wg_config(&keys[1], &[(&keys[0], 0)]), &[])?;
    lab.start_wireguard_go(2, &wg_config(&keys[2], &[(&keys[0], 0), (&keys[3], 3)]))?;
    lab.start_wireguard_go(3, &wg_config(&keys[3], &[(&keys[2], 2)]))?;

    assert!(lab.pings(0, 2, Duration::from_secs(10)), "slice-gateway → wireguard-go");
    assert!(lab.pings(2, 0, Duration::from_secs(10)), "wireguard-go → slice-gateway");
    assert!(lab.pings(3, 2, Duration::from_secs(10)), "wireguard-go → wireguard-go");
    assert!(lab.pings(1, 0, Duration::from_secs(10)), "slice-gateway → slice-gateway");
    let show = lab.exec(2, &format!("wg show {} latest-handshakes", lab.ifname(2)))?;
    assert!(show.contains(&keys[0].public), "{show}");

    // Figures, not asserted: the same run, one after the other.
    let ours = lab.iperf(1, 0, "-t 3")?;
    let mixed = lab.iperf(2, 0, "-t 3")?;
    let theirs = lab.iperf(3, 2, "-t 3")?;
    eprintln!(
        "FIGURE iperf3 -t 3 single stream: slice-gateway<->slice-gateway {ours:.0} Mbit/s, \
         wireguard-go->slice-gateway {mixed:.0} Mbit/s, wireguard-go<->wireguard-go {theirs:.0} Mbit/s"
    );
    Ok(())
}

#[test]
fn refuses_a_private_key_readable_by_others() -> anyhow::Result<()> {
    common::require_root();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gw.conf");
    let kp = keypair()?;
    std::fs::write(&path, format!("[Interface]\nPrivateKey = {}\n", kp.private))?;
    sh(&format!("chmod 644 {}", path.display()))?;
    let name = format!("sg{:x}perm", std::process::id() & 0xfff);
    let out = std::process::Command::new(common::gateway_bin())
        .args(["--interface", &name, "--config"])
        .arg(&path)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("accessible by group or others") && err.contains("644"), "{err}");
    assert!(!common::socket_path(&name).exists());
    // A malformed file names the line.
    std::fs::write(&path, "[Interface]\nListenPort = 99999\n")?;
    let out = std::process::Command::new(common::gateway_bin())
        .args(["--interface", &name, "--config"])
        .arg(&path)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2"), "{err}");
    assert!(wait_until(Duration::from_secs(1), || true));
    Ok(())
}

#[test]
fn keepalive_opens_the_path_from_behind_nat_and_the_endpoint_roams() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    // Node 0 does not know where node 1 is (as for a cluster behind NAT); node 1 keeps the path
    // open with PersistentKeepalive.
    let conf0 = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\n",
        ka.private,
        kb.public,
        Lab::overlay(1)
    );
    let conf1 = format!(
        "[Interface]\nPrivateKey = {}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\nEndpoint = {}:{PORT}\nPersistentKeepalive = 1\n",
        kb.private,
        ka.public,
        Lab::overlay(0),
        Lab::underlay(0)
    );
    lab.start_gateway(0, &conf0, &[])?;
    lab.start_gateway(1, &conf1, &[])?;
    let if0 = lab.ifname(0);
    let endpoint = |lab: &Lab| lab.exec(0, &format!("wg show {if0} endpoints")).unwrap_or_default();
    // No traffic at all: the keepalive alone brings node 1's address (ephemeral port) to node 0.
    assert!(
        wait_until(Duration::from_secs(10), || endpoint(&lab).contains(&format!("{}:", Lab::underlay(1)))),
        "{}",
        endpoint(&lab)
    );
    assert!(lab.pings(0, 1, Duration::from_secs(5)), "node 0 reaches the peer it learned");
    // Node 1 moves to another address: the endpoint follows its next authenticated packet.
    // (Delete first: deleting a primary address also deletes its secondaries.)
    lab.exec(1, "ip addr del 198.18.0.2/24 dev wan0 && ip addr add 198.18.0.12/24 dev wan0")?;
    assert!(wait_until(Duration::from_secs(10), || endpoint(&lab).contains("198.18.0.12:")), "{}", endpoint(&lab));
    assert!(lab.pings(0, 1, Duration::from_secs(5)), "traffic follows the roamed endpoint");
    Ok(())
}

#[test]
fn mss_is_clamped_so_large_transfers_work_when_endpoints_think_the_path_is_wider() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1)]), &[])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;
    assert!(lab.pings(0, 1, Duration::from_secs(10)));
    // As for a pod whose MTU is 1500 behind the gateway: node 0 believes the route to node 1
    // takes 1500-byte packets, node 1 advertises MSS 1460. Without clamping node 0 would send
    // 1500-byte packets into the 1420-byte tunnel; their 1532-byte datagrams do not fit the
    // 1500-byte WAN and are lost.
    let (if0, if1) = (lab.ifname(0), lab.ifname(1));
    lab.exec(0, &format!("ip route replace {}/32 dev {if0} mtu 1500", Lab::overlay(1)))?;
    lab.exec(1, &format!("ip route replace {}/32 dev {if1} mtu 1500 advmss 1460", Lab::overlay(0)))?;
    let mbps = lab.iperf(0, 1, "-n 20M")?;
    assert!(mbps > 0.0);
    Ok(())
}

#[test]
fn config_file_changes_apply_live_routes_follow_and_keepalive_handshakes_at_once() -> anyhow::Result<()> {
    let mut lab = Lab::new(3)?;
    let keys = [keypair()?, keypair()?, keypair()?];
    let peer = |k: &KeyPair, i: usize, extra: &str, keepalive: bool| {
        format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32{extra}\nEndpoint = {}:{PORT}\n{}",
            k.public,
            Lab::overlay(i),
            Lab::underlay(i),
            if keepalive { "PersistentKeepalive = 25\n" } else { "" }
        )
    };
    let iface = format!("[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n", keys[0].private);
    // Node 0 knows node 1 with a 25 s keepalive and routes 10.99.1.0/24 there.
    let conf_a = format!("{iface}{}", peer(&keys[1], 1, ", 10.99.1.0/24", true));
    // The peers first, so the first keepalive finds them listening.
    lab.start_gateway(1, &wg_config(&keys[1], &[(&keys[0], 0)]), &[])?;
    lab.start_gateway(2, &wg_config(&keys[2], &[(&keys[0], 0)]), &[])?;
    lab.start_gateway(0, &conf_a, &["--routes"])?;
    let if0 = lab.ifname(0);
    let route = |lab: &Lab, net: &str| lab.exec(0, &format!("ip route show {net}")).unwrap_or_default();
    assert!(route(&lab, "10.99.1.0/24").contains(&if0), "AllowedIPs routed into the TUN device");
    // Setting the keepalive sends one at once, so the handshake does not wait 25 s.
    let handshook = |lab: &Lab, key: &str| {
        lab.exec(0, &format!("wg show {if0} latest-handshakes"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(key) && !l.trim_end().ends_with("\t0"))
    };
    assert!(wait_until(Duration::from_secs(3), || handshook(&lab, &keys[1].public)), "no handshake within 3 s");

    // Rewrite the file (atomically, as a mounted Secret changes): node 2 joins, node 1 loses
    // 10.99.1.0/24. The gateway follows without a restart or a UAPI call.
    let conf_b = format!("{iface}{}{}", peer(&keys[1], 1, "", true), peer(&keys[2], 2, ", 10.99.2.0/24", false));
    let path = lab.dir.path().join(format!("{if0}.conf"));
    let tmp = lab.write_private("next.conf", &conf_b)?;
    std::fs::rename(&tmp, &path)?;
    assert!(
        wait_until(Duration::from_secs(5), || route(&lab, "10.99.2.0/24").contains(&if0)
            && route(&lab, "10.99.1.0/24").is_empty()),
        "routes did not follow the file: {}",
        lab.log(&if0)
    );
    let peers = lab.exec(0, &format!("wg show {if0} peers"))?;
    assert_eq!(peers.lines().count(), 2, "{peers}");
    assert!(lab.pings(0, 2, Duration::from_secs(5)), "the new peer carries traffic");
    assert!(lab.pings(0, 1, Duration::from_secs(5)), "the old peer still does");
    // A file that does not parse is refused and the running configuration stays.
    let bad = lab.write_private("bad.conf", "[Interface]\nPrivateKey = nonsense\n")?;
    std::fs::rename(&bad, &path)?;
    assert!(
        wait_until(Duration::from_secs(5), || lab.log(&if0).contains("configuration not reloaded")),
        "{}",
        lab.log(&if0)
    );
    assert!(lab.pings(0, 2, Duration::from_secs(5)), "still running the last good configuration");
    Ok(())
}
