//! Root test: the slice's DSCP class on the gateway's outer packets (`--dscp`), seen on the WAN
//! with `tcpdump -v` (`tos 0x..`), one class per gateway (per slice), for handshakes and data,
//! IPv4 over the dual-stack socket.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Lab, WAIT, keypair, wait_until, wg_config};

#[test]
fn each_gateways_outer_packets_carry_its_dscp_class() -> anyhow::Result<()> {
    let mut lab = Lab::new(2)?;
    let (ka, kb) = (keypair()?, keypair()?);
    // tcpdump on the WAN bridge before any packet: 40 WireGuard datagrams, bounded in time.
    let capture = lab.dir.path().join("wan.txt");
    let err = lab.dir.path().join("tcpdump.err");
    let mut tcpdump = Command::new("ip")
        .args(["netns", "exec", &lab.wan, "timeout", "60", "tcpdump", "-n", "-v", "-l", "-i", "br0", "-c", "40"])
        .args(["udp", "port", "51820"])
        .stdout(std::fs::File::create(&capture)?)
        .stderr(std::fs::File::create(&err)?)
        .stdin(Stdio::null())
        .spawn()?;
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&err).is_ok_and(|e| e.contains("listening on"))),
        "tcpdump did not start: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    lab.start_gateway(0, &wg_config(&ka, &[(&kb, 1)]), &["--dscp", "AF41"])?;
    lab.start_gateway(1, &wg_config(&kb, &[(&ka, 0)]), &["--dscp", "EF"])?;
    assert!(lab.pings(0, 1, WAIT), "ping through the tunnel");
    lab.exec(0, &format!("ping -c 20 -i 0.05 -W 2 {}", Lab::overlay(1)))?;
    let status = tcpdump.wait()?;
    let text = std::fs::read_to_string(&capture)?;
    assert!(status.success(), "tcpdump: {status}: {text}");
    // `tcpdump -v` prints the IP header line ("IP (tos 0x88, ttl …") and then the addresses.
    let lines: Vec<&str> = text.lines().collect();
    let (mut from0, mut from1) = (0, 0);
    for pair in lines.windows(2) {
        let (header, addrs) = (pair[0], pair[1].trim_start());
        if addrs.starts_with(&format!("{}.51820 >", Lab::underlay(0))) {
            assert!(header.contains("tos 0x88"), "gateway 0 (AF41): {header}");
            from0 += 1;
        } else if addrs.starts_with(&format!("{}.51820 >", Lab::underlay(1))) {
            assert!(header.contains("tos 0xb8"), "gateway 1 (EF): {header}");
            from1 += 1;
        }
    }
    assert!(from0 >= 5 && from1 >= 5, "packets from each gateway: {from0}, {from1}\n{text}");
    eprintln!("FIGURE dscp: {from0} outer packets with tos 0x88 (AF41), {from1} with tos 0xb8 (EF)");
    Ok(())
}

#[test]
fn an_unknown_dscp_class_is_refused_with_the_names() {
    let out = Command::new(common::gateway_bin()).args(["--interface", "x", "--dscp", "AF44"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AF44") && err.contains("AF41"), "{err}");
}
