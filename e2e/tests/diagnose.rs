//! `slicectl diagnose` in the full lab (issue 16): three clusters (c3 behind NAT) with one slice;
//! healthy, the report has no failure; then each fault, injected in turn and removed, is named by
//! its check at the right place: a blocked UDP port on c2's edge, a small MTU on c2's WAN link,
//! a stopped node agent on c1, c1's gateway holding a wrong key for c2, c1's slice-dns hung
//! (SIGSTOP), a CNI configuration on c2's node that sorts before the chained one. The healthy
//! report also shows one worker version and no clock skew (the heartbeats carry both). The
//! blocked port, the small MTU, the wrong key and the hung slice-dns are also named by the hub
//! alone (`hub_findings`), from what the workers report of their gateways and their slice-dns.
//! Namespaces `hdia-*`.
//! Needs root and the binaries; fails (does not skip) without them.

use e2e::Lab;
use e2e::control::{ControlPlane, across_manifest};
use slice_api::diagnose::{Report, check};

const PREFIX: &str = "hdia";
/// The checks that look at the machines; each fault must trip exactly its own.
const LAB_CHECKS: [&str; 7] = check::MACHINE;
/// The path checks the hub makes from what the gateways measure (issue 16: diagnose against a
/// hub with no observer on the machines).
const HUB_PATH_CHECKS: [&str; 3] = [check::GATEWAY_PEER_KEY, check::UDP_REACHABLE, check::PATH_MTU];
/// A bound on the hub seeing a fault: the tunnel declared down (three 1 s probes), the
/// handshakes unanswered for 5 s, or path probe rounds every 5 s; then a worker round.
const HUB_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// One node each, c3 behind NAT; slice `blue` (10.80.0.0/16, namespace `shop`) over all three.
const MEMBERS: [(&str, usize, bool); 3] = [("c1", 1, false), ("c2", 1, false), ("c3", 1, true)];

/// The lab checks that found something, as (check, place).
fn lab_faults(r: &Report) -> Vec<(String, String)> {
    r.findings
        .iter()
        .filter(|f| LAB_CHECKS.contains(&f.check.as_str()))
        .map(|f| (f.check.clone(), f.place.clone()))
        .collect()
}

/// The path checks the hub names from the workers' statuses alone, as (check, place).
fn hub_path_faults(cp: &ControlPlane) -> Vec<(String, String)> {
    slice_api::diagnose::hub_findings(&cp.hub_view())
        .findings
        .iter()
        .filter(|f| HUB_PATH_CHECKS.contains(&f.check.as_str()))
        .map(|f| (f.check.clone(), f.place.clone()))
        .collect()
}

/// Runs the control plane's rounds (the workers read their gateways at each) until the hub's
/// path checks satisfy `done`, or `HUB_WAIT` passes; returns the last ones seen.
fn hub_until(
    cp: &mut ControlPlane,
    lab: &Lab,
    done: impl Fn(&[(String, String)]) -> bool,
) -> (bool, Vec<(String, String)>) {
    tick_until(cp, lab, hub_path_faults, |f| done(f))
}

/// Runs the control plane's rounds until what `read` takes from it satisfies `done`, or
/// `HUB_WAIT` passes; returns whether it did and the last reading.
fn tick_until<T>(
    cp: &mut ControlPlane,
    lab: &Lab,
    read: impl Fn(&ControlPlane) -> T,
    done: impl Fn(&T) -> bool,
) -> (bool, T) {
    let deadline = std::time::Instant::now() + HUB_WAIT;
    loop {
        cp.tick(lab).expect("a round");
        let seen = read(cp);
        if done(&seen) || std::time::Instant::now() > deadline {
            return (done(&seen), seen);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn sh(cmd: &str) {
    let out = std::process::Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Removes the test's own nft table from c2's edge however the test ends (the namespace goes
/// with the lab; this keeps a failed step from leaking into the next).
struct EdgeRule(String);

impl Drop for EdgeRule {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "delete", "table", "ip", "hdiafault"])
            .output();
    }
}

#[test]
fn diagnose_passes_a_healthy_lab_and_names_each_fault() {
    e2e::require_root().expect("root");
    let mut lab = Lab::new(PREFIX).expect("lab (needs root; build the bins first)");
    let mut cp = ControlPlane::new();
    let manifest = across_manifest("blue", "10.80.0.0/16", &["shop"], &MEMBERS).expect("manifest");
    cp.apply(&mut lab, &manifest).expect("apply");
    // c1 runs its DNS (slice-dns, a resolver per node) as its first multi-cluster service would
    // start it; the worker's stanza sends the zone to slice-dns.
    cp.start_dns(&lab, "c1").expect("c1's DNS");
    cp.reconcile(&lab).expect("the stanza");

    // Healthy: no failure at all, every check ran.
    let healthy = cp.diagnose_report(&lab);
    assert!(!healthy.failed(), "{}\n{}", healthy.render(), cp.diagnose(&lab));
    assert_eq!(healthy.checks.len(), 17, "{:?}", healthy.checks);
    assert_eq!(
        healthy.of(check::VERSIONS).count() + healthy.of(check::CLOCK_SKEW).count() + healthy.of(check::CRDS).count(),
        0,
        "one version, one clock, no CRD missing: {}",
        healthy.render()
    );
    let c2_endpoint =
        cp.worker("blue", "c2").and_then(|w| w.status.as_ref()?.gateway_endpoint.clone()).expect("c2 endpoint");
    let port = c2_endpoint.rsplit_once(':').map(|(_, p)| p.to_owned()).expect("port");

    // 1. UDP to c2's gateway port dropped on c2's edge, before its port forward.
    let edge = format!("{PREFIX}-c2-edge");
    let rule = EdgeRule(edge.clone());
    sh(&format!(
        "ip netns exec {edge} nft add table ip hdiafault && \
         ip netns exec {edge} nft add chain ip hdiafault pre '{{ type filter hook prerouting priority -350; policy accept; }}' && \
         ip netns exec {edge} nft add rule ip hdiafault pre iifname wan udp dport {port} drop"
    ));
    let r = cp.diagnose_report(&lab);
    assert!(r.failed());
    assert_eq!(
        lab_faults(&r),
        [(check::UDP_REACHABLE.to_owned(), format!("slice blue in cluster c2: endpoint {c2_endpoint}"))],
        "{}",
        r.render()
    );
    // The hub, from the statuses alone, names the same edge once the workers report it.
    let c2_udp = vec![(check::UDP_REACHABLE.to_owned(), format!("slice blue in cluster c2: endpoint {c2_endpoint}"))];
    let (seen, faults) = hub_until(&mut cp, &lab, |f| f == c2_udp.as_slice());
    assert!(
        seen,
        "the hub names c2's edge: {faults:?}\n{}",
        slice_api::diagnose::hub_findings(&cp.hub_view()).render()
    );
    drop(rule);
    assert_eq!(lab_faults(&cp.diagnose_report(&lab)), [], "the port open again");
    let (clear, faults) = hub_until(&mut cp, &lab, <[_]>::is_empty);
    assert!(clear, "the hub sees the port open again: {faults:?}");

    // 2. A small MTU on c2's link to the WAN: every path to or from c2 is too narrow, no other.
    sh(&format!("ip -n {PREFIX}-wan link set to-c2 mtu 1300"));
    let r = cp.diagnose_report(&lab);
    // The gateways' path probes find it too, and the hub names the same paths.
    let both = |f: &[(String, String)]| {
        ["slice blue: c1 → c2", "slice blue: c2 → c1"]
            .iter()
            .all(|p| f.contains(&(check::PATH_MTU.to_owned(), (*p).to_owned())))
    };
    let (seen, hub_faults) = hub_until(&mut cp, &lab, both);
    sh(&format!("ip -n {PREFIX}-wan link set to-c2 mtu 1500"));
    assert!(seen, "the hub names the narrow paths: {hub_faults:?}");
    for (c, place) in &hub_faults {
        assert!(c == check::PATH_MTU && place.contains("c2"), "only paths through c2's link: {hub_faults:?}");
    }
    let hub = slice_api::diagnose::hub_findings(&cp.hub_view());
    let problem = &hub.of(check::PATH_MTU).next().expect("a finding").problem;
    // 1300 on the wire, or 4 bytes over; the gateways' probe ladder steps by 8 bytes.
    assert!(
        ["is 1300 bytes", "is 1296 bytes"].iter().any(|p| problem.contains(p)) && problem.contains("the tunnel needs"),
        "{problem}"
    );
    let (clear, faults) = hub_until(&mut cp, &lab, <[_]>::is_empty);
    assert!(clear, "the hub sees the paths whole again: {faults:?}");
    let faults = lab_faults(&r);
    assert!(!faults.is_empty(), "{}", r.render());
    for (c, place) in &faults {
        assert_eq!(c, check::PATH_MTU, "{}", r.render());
        assert!(place.contains("c2"), "{place}: {}", r.render());
    }
    let mtu = r.of(check::PATH_MTU).next().expect("a path MTU finding");
    // The kernel lets a frame through a port up to 4 bytes (a VLAN tag) over its MTU.
    let largest: u32 = mtu
        .problem
        .strip_prefix("the largest packet that passes is ")
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{}", mtu.problem));
    assert!((1300..=1304).contains(&largest), "{}", mtu.problem);
    assert!(mtu.problem.contains("the tunnel needs"), "{}", mtu.problem);
    assert!(faults.contains(&(check::PATH_MTU.to_owned(), "slice blue: c1 → c2".to_owned())), "{faults:?}");
    assert!(faults.contains(&(check::PATH_MTU.to_owned(), "slice blue: c2 → c1".to_owned())), "{faults:?}");
    assert!(!faults.iter().any(|(_, p)| p == "slice blue: c3 → c1"), "c3 → c1 does not cross c2's link: {faults:?}");

    // 3. c1's node agent stopped.
    let node = lab.node("c1", "n1");
    node.stop_agent().expect("stop the agent");
    let r = cp.diagnose_report(&lab);
    node.restart_agent().expect("restart the agent");
    assert_eq!(lab_faults(&r), [(check::NODE_AGENT.to_owned(), "node c1/n1".to_owned())], "{}", r.render());
    assert!(r.failed());

    // 4. c1's gateway holds a made-up key instead of c2's (as a hand edit over UAPI would).
    let iface = cp.gateway_interface("blue", "c1").expect("c1 gateway");
    let c2_key = cp
        .gateway_wg("blue", "c2", &["show", &cp.gateway_interface("blue", "c2").expect("c2"), "public-key"])
        .expect("c2 key");
    let bogus = cp.gateway_wg("blue", "c1", &["genkey"]).expect("genkey");
    let bogus_pub = {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("echo {} | wg pubkey", bogus.trim())])
            .output()
            .expect("wg pubkey");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let c2_prefix = cp.worker("blue", "c2").expect("c2's share").spec.cluster_prefix.clone();
    cp.gateway_wg(
        "blue",
        "c1",
        &["set", &iface, "peer", c2_key.trim(), "remove", "peer", &bogus_pub, "allowed-ips", &c2_prefix],
    )
    .expect("wg set");
    let r = cp.diagnose_report(&lab);
    let faults = lab_faults(&r);
    assert_eq!(
        faults,
        [(check::GATEWAY_PEER_KEY.to_owned(), "slice blue: gateway of c1 → c2".to_owned())],
        "{}",
        r.render()
    );
    let f = r.of(check::GATEWAY_PEER_KEY).next().expect("finding");
    assert!(f.problem.contains(c2_key.trim()) && f.problem.contains(&bogus_pub), "{}", f.problem);
    // The hub: c1's worker reports a key in its gateway that no peer has, and c2's handshakes
    // failing because of it are not taken for a blocked port.
    let key_fault = vec![(check::GATEWAY_PEER_KEY.to_owned(), "slice blue: gateway of c1 → c2".to_owned())];
    let (seen, faults) = hub_until(&mut cp, &lab, |f| f == key_fault.as_slice());
    assert!(seen, "the hub names c1's gateway: {faults:?}");
    let hub = slice_api::diagnose::hub_findings(&cp.hub_view());
    let f = hub.of(check::GATEWAY_PEER_KEY).next().expect("finding");
    assert!(f.problem.contains(c2_key.trim()) && f.problem.contains(&bogus_pub), "{}", f.problem);
    // A restarted gateway runs the worker's configuration again.
    cp.kill_gateway("blue", "c1").expect("restart c1's gateway");
    let (clear, faults) = hub_until(&mut cp, &lab, <[_]>::is_empty);
    assert!(clear, "the right key again: {faults:?}");

    // 5. c1's slice-dns hangs (stopped, not gone): slice-dns and the resolvers that forward to
    // it are named, in c1 only.
    let pid = cp.dns_server_pid("c1").expect("slice-dns runs");
    let stopped = Stopped::new(pid);
    let r = cp.diagnose_report(&lab);
    // The hub hears it from c1's worker, whose heartbeat asks the slice-dns Service.
    let hub_dns = |cp: &ControlPlane| -> Vec<(String, String)> {
        slice_api::diagnose::hub_findings(&cp.hub_view())
            .findings
            .iter()
            .filter(|f| f.check == check::DNS)
            .map(|f| (f.place.clone(), f.problem.clone()))
            .collect()
    };
    let (_, seen) = tick_until(&mut cp, &lab, hub_dns, |d| !d.is_empty());
    drop(stopped);
    assert_eq!(
        seen,
        [(
            "cluster c1: slice-dns at 10.96.0.53:53".to_owned(),
            "a TXT query for dns-version.clusterset.local got no answer within 4 s".to_owned()
        )],
        "{}",
        slice_api::diagnose::hub_findings(&cp.hub_view()).render()
    );
    let (_, seen) = tick_until(&mut cp, &lab, hub_dns, Vec::is_empty);
    assert_eq!(seen, [], "it answers again");
    let dns: Vec<(String, String)> = lab_faults(&r).into_iter().filter(|(c, _)| c == check::DNS).collect();
    let server = cp.dns_server("c1").expect("address");
    assert!(dns.contains(&(check::DNS.to_owned(), format!("cluster c1: slice-dns at {server}"))), "{}", r.render());
    assert!(dns.iter().all(|(_, place)| place.starts_with("cluster c1: ")), "{}", r.render());
    let f = r.of(check::DNS).next().expect("finding");
    assert!(f.problem.ends_with("got no answer within 4 s"), "{}", f.problem);

    // 6. A configuration that sorts before the chained one on c2/n1: containerd would use it,
    // and its pods would get no slice interface.
    let node = lab.node("c2", "n1");
    let other = node.cni_conf_dir().join("05-other.conflist");
    let plain = r#"{"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "bridge", "bridge": "other0"}]}"#;
    std::fs::write(&other, plain).expect("write the configuration");
    let r = cp.diagnose_report(&lab);
    std::fs::remove_file(&other).expect("remove it");
    let cni: Vec<(String, String)> = lab_faults(&r).into_iter().filter(|(c, _)| c == check::CNI_CHAINED).collect();
    assert_eq!(cni, [(check::CNI_CHAINED.to_owned(), "node c2/n1".to_owned())], "{}", r.render());
    assert!(r.of(check::CNI_CHAINED).next().expect("finding").problem.starts_with("05-other.conflist"));

    cp.delete_all(&mut lab).expect("delete");
    lab.teardown().expect("teardown");
}

/// A process of the test's own stopped with SIGSTOP until dropped (SIGCONT), however the test
/// ends.
struct Stopped(nix::unistd::Pid);

impl Stopped {
    fn new(pid: u32) -> Self {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}
