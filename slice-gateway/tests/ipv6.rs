//! Root test: slice-gateway over an IPv6 WAN carrying both inner families (issue 17's gateway
//! part). Two node namespaces whose WAN links have IPv6 addresses from `2001:db8::/32` only as
//! endpoints; each gateway's AllowedIPs hold the other's IPv4 and IPv6 tunnel address. IPv4 and
//! IPv6 pings and an IPv6 TCP transfer that needs the MSS clamp (the sender believes the path
//! takes 1500-byte packets) cross; `wg show` reports the IPv6 endpoint; the WAN carries only
//! WireGuard over IPv6. Namespaces `sg6-*`.

mod common;

use common::{KeyPair, Lab, PORT, WAIT, keypair, wait_until};

/// Node `i`'s IPv6 WAN address.
fn wan6(i: usize) -> String {
    format!("2001:db8:18::{}", i + 1)
}

/// Node `i`'s IPv6 tunnel address.
fn overlay6(i: usize) -> String {
    format!("fd77::{}", i + 1)
}

/// A wg(8) configuration whose peers are reached at their IPv6 WAN address and hold both of
/// their tunnel addresses.
fn config(own: &KeyPair, peers: &[(&KeyPair, usize)]) -> String {
    let mut s = format!("[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n", own.private);
    for (kp, i) in peers {
        s += &format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32, {}/128\nEndpoint = [{}]:{PORT}\n",
            kp.public,
            Lab::overlay(*i),
            overlay6(*i),
            wan6(*i)
        );
    }
    s
}

#[test]
fn both_families_cross_a_tunnel_over_an_ipv6_wan() -> anyhow::Result<()> {
    let mut lab = Lab::named("sg6", 2)?;
    for i in 0..2 {
        lab.exec(i, &format!("ip -6 addr add {}/64 dev wan0 nodad", wan6(i)))?;
    }
    // Counted both ways on each node's WAN link: WireGuard over IPv6, neighbour discovery (not
    // counted), anything else.
    for i in 0..2 {
        lab.exec(
            i,
            "nft add table inet sg6wire && nft add counter inet sg6wire wg6 && nft add counter inet sg6wire other && \
             nft add chain inet sg6wire in '{ type filter hook input priority 0; policy accept; }' && \
             nft add chain inet sg6wire out '{ type filter hook output priority 0; policy accept; }' && \
             for c in in:iifname out:oifname; do \
               nft add rule inet sg6wire ${c%%:*} ${c#*:} wan0 meta nfproto ipv6 udp dport 51820 counter name wg6 accept && \
               nft add rule inet sg6wire ${c%%:*} ${c#*:} wan0 meta l4proto ipv6-icmp accept && \
               nft add rule inet sg6wire ${c%%:*} ${c#*:} wan0 counter name other; \
             done",
        )?;
    }
    let (ka, kb) = (keypair()?, keypair()?);
    let v6 = |i: usize| format!("{}/64", overlay6(i));
    let a6 = v6(0);
    let b6 = v6(1);
    lab.start_gateway(0, &config(&ka, &[(&kb, 1)]), &["--address", &a6])?;
    lab.start_gateway(1, &config(&kb, &[(&ka, 0)]), &["--address", &b6])?;
    for i in 0..2 {
        // The kernel takes a moment to make a new IPv6 address usable (no DAD on a TUN device,
        // but the address must be up before a ping can use it as its source).
        let ready = wait_until(WAIT, || {
            lab.exec(i, &format!("ip -6 addr show dev {} | grep -q 'inet6 {}'", lab.ifname(i), overlay6(i))).is_ok()
        });
        assert!(ready, "node {i}: the tunnel's IPv6 address");
    }

    assert!(
        wait_until(WAIT, || lab.exec(0, &format!("ping -6 -c 1 -W 2 {}", overlay6(1))).is_ok()),
        "IPv6 ping 0 → 1 through the tunnel over the IPv6 WAN"
    );
    assert!(lab.pings(1, 0, WAIT), "IPv4 ping 1 → 0 through the same tunnel");
    let endpoints = lab.exec(0, &format!("wg show {} endpoints", lab.ifname(0)))?;
    assert!(endpoints.contains(&format!("[{}]:{PORT}", wan6(1))), "{endpoints}");

    // 20 MB of TCP over IPv6 inside, the sender believing the path takes 1500-byte packets and
    // the receiver advertising MSS 1440: without the gateway's clamp, 1500-byte inner packets
    // would not fit the 1420-byte tunnel.
    let (if0, if1) = (lab.ifname(0), lab.ifname(1));
    lab.exec(0, &format!("ip -6 route replace {}/128 dev {if0} mtu 1500", overlay6(1)))?;
    lab.exec(1, &format!("ip -6 route replace {}/128 dev {if1} mtu 1500 advmss 1440", overlay6(0)))?;
    let server = lab.spawn_plain(1, "iperf3", &["-s", "-1", "-B", &overlay6(1)], "iperf6")?;
    let listening = wait_until(WAIT, || lab.exec(1, "ss -ltn | grep -q ':5201'").is_ok());
    assert!(listening, "iperf3 server");
    // A bound on a hung transfer only: the amount is what is asked.
    let out = lab.exec(0, &format!("timeout 300 iperf3 -6 -c {} -n 20M -f m", overlay6(1)))?;
    assert!(out.contains("receiver"), "{out}");
    lab.procs.remove(server).terminate();

    for i in 0..2 {
        let text = lab.exec(i, "nft list counters table inet sg6wire")?;
        let bytes = |name: &str| -> u64 {
            text.split(&format!("counter {name} "))
                .nth(1)
                .and_then(|rest| rest.split("bytes ").nth(1))
                .and_then(|b| b.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        // At least half the transfer (the counters see offloaded skbs; the figure is not exact).
        assert!(bytes("wg6") > 10_000_000, "node {i}: WireGuard over IPv6 carried the transfer: {text}");
        assert_eq!(bytes("other"), 0, "node {i}: nothing but WireGuard over IPv6 on the WAN: {text}");
    }
    Ok(())
}
