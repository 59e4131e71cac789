//! Root tests: slice-gateway between network namespaces, against itself, wireguard-go and gotatun.

mod common;

use std::time::SystemTime;

use common::{KeyPair, Lab, PORT, WAIT, keypair, sh, wait_until, wg_config};

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
    let started = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    install_wire_counters(&lab, 0)?;
    install_wire_counters(&lab, 1)?;
    let g0 = lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1)]), &[])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;

    assert!(lab.pings(0, 1, WAIT), "ping 0 → 1 through the tunnel");
    assert!(lab.pings(1, 0, WAIT), "ping 1 → 0 through the tunnel");

    // wg(8) against the running gateway: the interface public key, the peer, a real handshake time.
    let if0 = lab.ifname(0);
    let show = lab.exec(0, &format!("wg show {if0}"))?;
    assert!(show.contains(&format!("public key: {}", ka.public)), "{show}");
    assert!(show.contains(&format!("peer: {}", kb.public)), "{show}");
    assert!(show.contains("latest handshake: "), "{show}");
    assert!(!show.contains("year"), "handshake time must be a Unix time, not an age: {show}");
    // The handshake happened during this test: between its start and now (whole seconds).
    let hs = lab.exec(0, &format!("wg show {if0} latest-handshakes"))?;
    let t: u64 = hs.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    assert!(started <= t && t <= now, "latest handshake {t}, test started {started}, now {now}");
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

/// With two TUN queues (the default: a packet thread per queue) and with one
/// (`SLICE_GATEWAY_TUN_QUEUES=1`: two threads sharing it), the tunnel carries four parallel
/// streams both ways and the packet loops follow a new listen port.
#[test]
fn one_and_two_tun_queues_carry_parallel_streams_and_follow_a_new_listen_port() -> anyhow::Result<()> {
    for queues in [None, Some("1")] {
        let mut lab = Lab::new(2)?;
        let (ka, kb) = (keypair()?, keypair()?);
        let env: Vec<(&str, &str)> = queues.map(|q| ("SLICE_GATEWAY_TUN_QUEUES", q)).into_iter().collect();
        lab.start_gateway_with_env(0, &wg_config(&ka, &[(&kb, 1)]), &[], &env)?;
        lab.start_gateway_with_env(1, &wg_config(&kb, &[(&ka, 0)]), &[], &env)?;
        for i in 0..2 {
            let ifname = lab.ifname(i);
            let listed = lab.exec(i, &format!("ls /sys/class/net/{ifname}/queues"))?;
            assert!(listed.contains("tx-0"), "node {i}: queues {listed}");
            assert_eq!(listed.contains("tx-1"), queues.is_none(), "node {i}, {queues:?}: queues {listed}");
            assert!(!lab.log(&ifname).contains("refused"), "node {i}: {}", lab.log(&ifname));
        }
        assert!(lab.pings(0, 1, WAIT), "{queues:?}: ping 0 → 1 through the tunnel");
        assert!(lab.pings(1, 0, WAIT), "{queues:?}: ping 1 → 0 through the tunnel");
        let there = lab.iperf(0, 1, "-P 4 -n 40M")?;
        let back = lab.iperf(1, 0, "-P 4 -n 40M")?;
        eprintln!("FIGURE TUN queues {queues:?}, iperf3 -P 4 -n 40M: 0 → 1 {there:.0} Mbit/s, 1 → 0 {back:.0} Mbit/s");
        assert!(there > 0.0 && back > 0.0);

        // A new listen port on node 1: its packet loops move to the new socket.
        let (if0, if1) = (lab.ifname(0), lab.ifname(1));
        lab.exec(1, &format!("wg set {if1} listen-port 51999"))?;
        lab.exec(0, &format!("wg set {if0} peer {} endpoint {}:51999", kb.public, Lab::underlay(1)))?;
        assert!(lab.pings(0, 1, WAIT), "{queues:?}: ping 0 → 1 after the listen port changed");
        assert!(lab.exec(0, &format!("wg show {if0} endpoints"))?.contains(":51999"));
        assert!(lab.iperf(1, 0, "-P 4 -n 20M")? > 0.0);
    }
    Ok(())
}

#[test]
fn removing_a_peer_stops_its_traffic_only_and_peers_can_be_added_back() -> anyhow::Result<()> {
    let mut lab = Lab::new(3)?;
    let (ka, kb, kc) = (keypair()?, keypair()?, keypair()?);
    lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1), (&kc, 2)]), &[])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;
    lab.start_gateway(2, &wg_config(&kc, &[(&ka, 0)]), &[])?;
    assert!(lab.pings(0, 1, WAIT));
    assert!(lab.pings(0, 2, WAIT));
    assert!(lab.pings(2, 0, WAIT));

    let if0 = lab.ifname(0);
    // Ping B continuously while C is removed: not one lost packet. C goes once five answers
    // came back, so the removal falls inside the run; -W 10 counts a late answer on a busy
    // machine as an answer, not a loss.
    let pinger = lab.spawn_plain(0, "ping", &["-c", "30", "-i", "0.1", "-W", "10", &Lab::overlay(1)], "steady-ping")?;
    assert!(wait_until(WAIT, || lab.log("steady-ping").contains("icmp_seq=5 ")), "{}", lab.log("steady-ping"));
    lab.exec(0, &format!("wg set {if0} peer {} remove", kc.public))?;
    assert!(wait_until(WAIT, || !lab.procs[pinger].alive()), "ping did not end: {}", lab.log("steady-ping"));
    let steady = lab.log("steady-ping");
    assert!(steady.contains("30 packets transmitted, 30 received"), "{steady}");
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
    assert!(lab.pings(0, 2, WAIT), "peer added back with wg set");
    assert!(lab.pings(0, 1, WAIT));

    // `wg setconf` with a file naming only B: C goes, B keeps its session (the same handshake,
    // its counters not reset). Read right after the change: no traffic in between could rekey.
    let show = |what: &str| lab.exec(0, &format!("wg show {if0} {what}"));
    let (hs_before, transfer_before) = (show("latest-handshakes")?, show("transfer")?);
    let path = lab.write_private("only-b.conf", &wg_config(&ka, &[(&kb, 1)]))?;
    lab.exec(0, &format!("wg setconf {if0} {}", path.display()))?;
    let (hs_after, transfer_after) = (show("latest-handshakes")?, show("transfer")?);
    let peers = show("peers")?;
    assert!(peers.contains(&kb.public) && !peers.contains(&kc.public), "{peers}");
    let line_b = |s: &str| s.lines().find(|l| l.starts_with(&kb.public)).map(str::to_string);
    assert_eq!(line_b(&hs_before), line_b(&hs_after), "setconf must not disturb an unchanged peer");
    assert_eq!(line_b(&transfer_before), line_b(&transfer_after), "setconf must keep an unchanged peer's counters");
    assert!(line_b(&transfer_after).is_some_and(|l| !l.ends_with("\t0\t0")), "{transfer_after}");
    assert!(lab.pings(0, 1, WAIT));
    assert!(lab.exec(0, &format!("ping -c 1 -W 1 {}", Lab::overlay(2))).is_err());
    Ok(())
}

/// The device-wide counters the floods below move: (garbage, cookie replies, unknown peer).
fn flood_counters(text: &str) -> (u64, u64, u64) {
    (
        metric(text, "slice_gateway_garbage_packets_total"),
        metric(text, "slice_gateway_cookie_replies_total"),
        metric(text, "slice_gateway_unknown_peer_packets_total"),
    )
}

#[test]
fn garbage_and_handshake_floods_are_counted_and_the_peer_keeps_working() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    // A low handshake limit (2 messages = one handshake per second), so that the flood below
    // crosses it by its count (3,000 initiations in batches of 50), however slowly a busy
    // machine sends them. Metrics on every address, IPv6 and IPv4, so node 1 can read them.
    let g0 =
        lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1)]), &["--metrics", "[::]:9586", "--handshake-rate-limit", "2"])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;
    assert!(lab.pings(1, 0, WAIT));
    let health = lab.exec(0, "python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9586/healthz').read().decode())\"")?;
    assert_eq!(health.trim(), "ok");
    let (garbage0, cookies0, unknown0) = flood_counters(&metrics(&lab, 0, "127.0.0.1:9586")?);

    // From node 1: 5,000 random datagrams and 500 initiation-sized ones with a bad mac1
    // (garbage), 200 data messages for a receiver index no peer has (unknown peer), and 3,000
    // initiations with a valid mac1 from no configured peer (past the limit: a cookie reply;
    // within it: unknown peer). Sent 50 at a time, each batch only once the gateway has counted
    // the ones before, so no datagram is lost in a full socket buffer on a busy machine and
    // every one of them must be counted.
    let flood = format!(
        r#"python3 - <<'PY'
import base64, hashlib, os, socket, struct, time, urllib.request
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = ("{dst}", {PORT})
names = ("slice_gateway_garbage_packets_total", "slice_gateway_cookie_replies_total", "slice_gateway_unknown_peer_packets_total")
def counted():
    text = urllib.request.urlopen("http://{dst}:9586/metrics", timeout=60).read().decode()
    return sum(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines() if l.split("{{")[0] in names)
base, sent = counted(), 0
def paced(messages):
    global sent
    for i in range(0, len(messages), 50):
        for m in messages[i:i + 50]:
            s.sendto(m, dst)
        sent += len(messages[i:i + 50])
        deadline = time.monotonic() + 60
        while counted() - base < sent:
            if time.monotonic() > deadline:
                raise SystemExit("the gateway counted %d of %d datagrams" % (counted() - base, sent))
            time.sleep(0.02)
paced([os.urandom(1 + os.urandom(1)[0] * 4) for _ in range(5000)])
paced([b"\x01\x00\x00\x00" + os.urandom(144) for _ in range(500)])
paced([b"\x04\x00\x00\x00" + struct.pack("<IQ", 0, n) + os.urandom(32) for n in range(200)])
key = hashlib.blake2s(b"mac1----" + base64.b64decode("{public}")).digest()
def initiation():
    msg = b"\x01\x00\x00\x00" + os.urandom(112)
    return msg + hashlib.blake2s(msg, key=key, digest_size=16).digest() + bytes(16)
paced([initiation() for _ in range(3000)])
print(sent)
PY"#,
        dst = Lab::underlay(0),
        public = ka.public
    );
    let sent = lab.exec(1, &flood)?;
    assert_eq!(sent.trim(), "8700");
    assert!(lab.procs[g0].alive(), "gateway died under the flood: {}", lab.log(&lab.ifname(0)));
    let text = metrics(&lab, 0, "127.0.0.1:9586")?;
    let (garbage1, cookies1, unknown1) = flood_counters(&text);
    let (garbage, cookies, unknown) = (garbage1 - garbage0, cookies1 - cookies0, unknown1 - unknown0);
    eprintln!("FIGURE flood: garbage={garbage} cookie_replies={cookies} unknown_peer={unknown}");
    assert_eq!(garbage, 5500, "every datagram that is not WireGuard or fails mac1 is garbage: {text}");
    // Every initiation is answered with a cookie or found to be from no peer; at most 2 per
    // second pass the limit, so 3,000 sent 50 at a time cross it whatever the machine's speed.
    assert!(cookies + unknown >= 3200, "{text}");
    assert!(cookies > 0, "the handshake flood must be answered with cookies: {text}");
    assert!(unknown >= 200, "data for an unknown receiver: {text}");
    let rx = metric(
        &text,
        &format!("slice_gateway_peer_rx_packets_total{{interface=\"{}\",public_key=\"{}\"}}", lab.ifname(0), kb.public),
    );
    assert!(rx > 0, "{text}");
    // Generous: a peer that has to handshake again under cookie load retries after 5 s.
    assert!(lab.pings(1, 0, WAIT), "the established peer must keep working");
    assert!(lab.pings(0, 1, WAIT));
    Ok(())
}

#[test]
fn a_handshake_limit_of_0_makes_every_handshake_take_a_cookie_and_peers_still_connect() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    // Set through the environment, as a Deployment would.
    lab.start_gateway_with_env(
        0,
        &wg_config(&ka, &[(&kb, 1)]),
        &["--metrics", "127.0.0.1:9586"],
        &[("SLICE_GATEWAY_HANDSHAKE_RATE_LIMIT", "0")],
    )?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;
    // Node 1 initiates: node 0 answers its first initiation with a cookie reply, node 1 retries
    // with mac2 (after WireGuard's 5 s retry timer) and that one is accepted.
    assert!(lab.pings(1, 0, WAIT), "a peer must complete its handshake with a cookie");
    assert!(lab.pings(0, 1, WAIT));
    let text = metrics(&lab, 0, "127.0.0.1:9586")?;
    let (garbage, cookies, unknown) = flood_counters(&text);
    assert!(cookies >= 1, "no cookie reply with a limit of 0: {text}");
    assert_eq!((garbage, unknown), (0, 0), "{text}");
    let handshake = metric(
        &text,
        &format!(
            "slice_gateway_peer_last_handshake_seconds{{interface=\"{}\",public_key=\"{}\"}}",
            lab.ifname(0),
            kb.public
        ),
    );
    assert!(handshake > 0, "{text}");
    Ok(())
}

#[test]
fn the_handshake_limit_is_validated() -> anyhow::Result<()> {
    // Refused by the argument parser, before any device or socket exists (no root needed).
    let cases: [(&[&str], &str, &str); 4] = [
        (&["--handshake-rate-limit", "lots"], "", "invalid value 'lots'"),
        (&["--handshake-rate-limit", "-5"], "", "invalid value '-5'"),
        (&["--handshake-rate-limit", "1000001"], "", "1000001 is not in 0..=1000000"),
        (&[], "2.5", "invalid value '2.5'"),
    ];
    for (args, env, expected) in cases {
        let mut cmd = std::process::Command::new(common::gateway_bin());
        cmd.args(["--interface", "sgwnever0"]).args(args);
        if env.is_empty() {
            cmd.env_remove("SLICE_GATEWAY_HANDSHAKE_RATE_LIMIT");
        } else {
            cmd.env("SLICE_GATEWAY_HANDSHAKE_RATE_LIMIT", env);
        }
        let out = cmd.output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(expected) && err.contains("--handshake-rate-limit"), "{args:?} {env:?}: {err}");
    }
    assert!(!common::socket_path("sgwnever0").exists());
    let help = std::process::Command::new(common::gateway_bin()).arg("--help").output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--handshake-rate-limit") && help.contains("SLICE_GATEWAY_HANDSHAKE_RATE_LIMIT"), "{help}");
    assert!(help.contains("[default: 200]"), "{help}");
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

    assert!(lab.pings(0, 2, WAIT), "slice-gateway → wireguard-go");
    assert!(lab.pings(2, 0, WAIT), "wireguard-go → slice-gateway");
    assert!(lab.pings(3, 2, WAIT), "wireguard-go → wireguard-go");
    assert!(lab.pings(1, 0, WAIT), "slice-gateway → slice-gateway");
    let show = lab.exec(2, &format!("wg show {} latest-handshakes", lab.ifname(2)))?;
    assert!(show.contains(&keys[0].public), "{show}");

    // Each transfer must complete (a fixed amount, however long it takes); the speeds are
    // figures to read, never asserted: they say how busy the machine was as much as anything.
    let ours = lab.iperf(1, 0, "-n 20M")?;
    let mixed = lab.iperf(2, 0, "-n 20M")?;
    let theirs = lab.iperf(3, 2, "-n 20M")?;
    eprintln!(
        "FIGURE iperf3 -n 20M single stream: slice-gateway<->slice-gateway {ours:.0} Mbit/s, \
         wireguard-go->slice-gateway {mixed:.0} Mbit/s, wireguard-go<->wireguard-go {theirs:.0} Mbit/s"
    );
    assert!(ours > 0.0 && mixed > 0.0 && theirs > 0.0);
    Ok(())
}

/// Where `make test` installs gotatun (Mullvad's maintained boringtun fork, `gotatun-cli` from
/// crates.io; the Makefile's `$(BENCH_TOOLS)`), else `SLICENET_GOTATUN`.
fn gotatun() -> std::path::PathBuf {
    std::env::var_os("SLICENET_GOTATUN").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tools/bin/gotatun"),
        std::path::PathBuf::from,
    )
}

#[test]
fn interoperates_with_gotatun() -> anyhow::Result<()> {
    let gotatun = gotatun();
    assert!(gotatun.exists(), "{} is missing: `make test` installs it (cargo install gotatun-cli)", gotatun.display());
    let gotatun = gotatun.to_str().expect("a UTF-8 path");
    let mut lab = Lab::new(3)?;
    let keys: Vec<_> = (0..3).map(|_| keypair()).collect::<anyhow::Result<_>>()?;
    // 0: slice-gateway, 1: gotatun, 2: gotatun.
    lab.start_gateway(0, &wg_config(&keys[0], &[(&keys[1], 1), (&keys[2], 2)]), &[])?;
    let args = ["-f", "--disable-drop-privileges"];
    lab.start_userspace_wg(1, gotatun, &args, &wg_config(&keys[1], &[(&keys[0], 0), (&keys[2], 2)]))?;
    lab.start_userspace_wg(2, gotatun, &args, &wg_config(&keys[2], &[(&keys[0], 0), (&keys[1], 1)]))?;
    assert!(lab.pings(0, 1, WAIT), "slice-gateway → gotatun");
    assert!(lab.pings(2, 0, WAIT), "gotatun → slice-gateway");
    assert!(lab.pings(1, 2, WAIT), "gotatun → gotatun");
    let show = lab.exec(1, &format!("wg show {} latest-handshakes", lab.ifname(1)))?;
    assert!(show.contains(&keys[0].public), "{show}");
    // A fixed amount each way (never a rate): the data path, not just the handshake.
    let to_gotatun = lab.iperf(0, 1, "-n 20M")?;
    let from_gotatun = lab.iperf(2, 0, "-n 20M")?;
    eprintln!(
        "FIGURE iperf3 -n 20M: slice-gateway->gotatun {to_gotatun:.0} Mbit/s, gotatun->slice-gateway {from_gotatun:.0} Mbit/s"
    );
    assert!(to_gotatun > 0.0 && from_gotatun > 0.0);
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
    assert!(wait_until(WAIT, || endpoint(&lab).contains(&format!("{}:", Lab::underlay(1)))), "{}", endpoint(&lab));
    assert!(lab.pings(0, 1, WAIT), "node 0 reaches the peer it learned");
    // Node 1 moves to another address: the endpoint follows its next authenticated packet.
    // (Delete first: deleting a primary address also deletes its secondaries.)
    lab.exec(1, "ip addr del 198.18.0.2/24 dev wan0 && ip addr add 198.18.0.12/24 dev wan0")?;
    assert!(wait_until(WAIT, || endpoint(&lab).contains("198.18.0.12:")), "{}", endpoint(&lab));
    assert!(lab.pings(0, 1, WAIT), "traffic follows the roamed endpoint");
    Ok(())
}

#[test]
fn mss_is_clamped_so_large_transfers_work_when_endpoints_think_the_path_is_wider() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1)]), &[])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &[])?;
    assert!(lab.pings(0, 1, WAIT));
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
            if keepalive { "PersistentKeepalive = 3600\n" } else { "" }
        )
    };
    let iface = format!("[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n", keys[0].private);
    // Node 0 knows node 1 with an hourly keepalive and routes 10.99.1.0/24 there.
    let conf_a = format!("{iface}{}", peer(&keys[1], 1, ", 10.99.1.0/24", true));
    // The peers first, so the first keepalive finds them listening.
    lab.start_gateway(1, &wg_config(&keys[1], &[(&keys[0], 0)]), &[])?;
    lab.start_gateway(2, &wg_config(&keys[2], &[(&keys[0], 0)]), &[])?;
    lab.start_gateway(0, &conf_a, &["--routes"])?;
    let if0 = lab.ifname(0);
    let route = |lab: &Lab, net: &str| lab.exec(0, &format!("ip route show {net}")).unwrap_or_default();
    assert!(route(&lab, "10.99.1.0/24").contains(&if0), "AllowedIPs routed into the TUN device");
    // Setting the keepalive sends one at once: nothing else sends to node 1, and the next
    // keepalive is an hour away, so a handshake within the (generous) wait can only be that one.
    let handshook = |lab: &Lab, key: &str| {
        lab.exec(0, &format!("wg show {if0} latest-handshakes"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(key) && !l.trim_end().ends_with("\t0"))
    };
    assert!(wait_until(WAIT, || handshook(&lab, &keys[1].public)), "no handshake: the keepalive was not sent at once");

    // Rewrite the file (atomically, as a mounted Secret changes): node 2 joins, node 1 loses
    // 10.99.1.0/24. The gateway follows without a restart or a UAPI call.
    let conf_b = format!("{iface}{}{}", peer(&keys[1], 1, "", true), peer(&keys[2], 2, ", 10.99.2.0/24", false));
    let path = lab.dir.path().join(format!("{if0}.conf"));
    let tmp = lab.write_private("next.conf", &conf_b)?;
    std::fs::rename(&tmp, &path)?;
    assert!(
        wait_until(WAIT, || route(&lab, "10.99.2.0/24").contains(&if0) && route(&lab, "10.99.1.0/24").is_empty()),
        "routes did not follow the file: {}",
        lab.log(&if0)
    );
    let peers = lab.exec(0, &format!("wg show {if0} peers"))?;
    assert_eq!(peers.lines().count(), 2, "{peers}");
    assert!(lab.pings(0, 2, WAIT), "the new peer carries traffic");
    assert!(lab.pings(0, 1, WAIT), "the old peer still does");
    // A file that does not parse is refused and the running configuration stays.
    let bad = lab.write_private("bad.conf", "[Interface]\nPrivateKey = nonsense\n")?;
    std::fs::rename(&bad, &path)?;
    assert!(wait_until(WAIT, || lab.log(&if0).contains("configuration not reloaded")), "{}", lab.log(&if0));
    assert!(lab.pings(0, 2, WAIT), "still running the last good configuration");
    Ok(())
}

/// What the gateway Deployment the worker creates grants (slice-operator's `worker::objects`):
/// root with CAP_NET_ADMIN alone, no privilege escalation. With only that, the real gateway
/// creates its TUN device, sets its address and routes (`--routes`), gets its 8 MiB socket
/// buffers through SO_RCVBUFFORCE and carries traffic; with no capability it stops with an
/// error instead of running half-made.
#[test]
fn net_admin_alone_is_enough_and_needed() -> anyhow::Result<()> {
    const CAP_NET_ADMIN: u64 = 1 << 12;
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    // `--forward`: per-link IPv4 forwarding over netlink, with CAP_NET_ADMIN alone (the pod
    // then needs no `net.ipv4.ip_forward` sysctl).
    let g0 = lab.start_gateway_with_only(
        0,
        &wg_config(&ka, &[(&kb, 1)]),
        &["--routes", "--forward", "wan0"],
        &["net_admin"],
    )?;
    lab.start_gateway_with_only(1, &wg_config(&kb, &[(&ka, 0)]), &["--routes"], &["net_admin"])?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", lab.pid(g0)))?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_default().trim().to_owned();
    assert_eq!(u64::from_str_radix(&field("CapEff:"), 16)?, CAP_NET_ADMIN, "{status}");
    assert_eq!(u64::from_str_radix(&field("CapBnd:"), 16)?, CAP_NET_ADMIN, "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");

    let if0 = lab.ifname(0);
    assert!(lab.exec(0, &format!("ip route show {}/32", Lab::overlay(1)))?.contains(&if0), "route into the TUN device");
    for link in [if0.as_str(), "wan0"] {
        let on = lab.exec(0, &format!("sysctl -n net.ipv4.conf.{link}.forwarding"))?;
        assert_eq!(on.trim(), "1", "forwarding on {link}");
    }
    assert_eq!(lab.exec(0, "sysctl -n net.ipv4.ip_forward")?.trim(), "0", "the namespace switch stays off");
    assert!(lab.pings(0, 1, WAIT), "ping 0 → 1 through the tunnel");
    assert!(lab.pings(1, 0, WAIT), "ping 1 → 0 through the tunnel");
    assert!(lab.iperf(0, 1, "-n 5M")? > 0.0);
    // SO_RCVBUFFORCE took (the kernel doubles the 8 MiB asked); without CAP_NET_ADMIN the
    // plain option would be capped by net.core.rmem_max.
    let sockets = lab.exec(0, &format!("ss -H -u -a -m -n sport = :{PORT}"))?;
    assert!(sockets.contains("rb16777216"), "{sockets}");

    // No capability at all: it fails at its TUN device and exits.
    let mut args = common::setpriv_only(&[]);
    args.push(common::gateway_bin());
    let lab2 = Lab::new(1)?;
    args.extend(lab2.gateway_args(0, &wg_config(&kb, &[]), &[])?);
    let out = std::process::Command::new("timeout")
        .args(["120", "nsenter", &format!("--net=/run/netns/{}", lab2.nodes[0]), "setpriv"])
        .args(&args)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.status.code() != Some(124), "without capabilities: {:?} {err}", out.status);
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(lab2.exec(0, &format!("ip link show {}", lab2.ifname(0))).is_err(), "no TUN device left");
    Ok(())
}
