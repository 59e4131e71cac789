//! `bench-null-relay`, the floor rows of `slicenet-bench`'s tunnel section: between two network
//! namespaces of its own (`nrl-a`, `nrl-b`, a veth with 198.18.103.1 ↔ .2) it carries pings both
//! ways through its TUN devices, in both modes, and refuses bad arguments with exit code 2. Needs
//! root; fails (does not skip) without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NS: [&str; 2] = ["nrl-a", "nrl-b"];
const UNDER: [&str; 2] = ["198.18.103.1", "198.18.103.2"];
const INNER: [&str; 2] = ["10.211.0.1", "10.211.0.2"];

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "`{cmd}`: {}", String::from_utf8_lossy(&out.stderr));
}

/// The two namespaces and the relays in them; all removed on drop, even when the test fails.
struct Pair {
    relays: Vec<Child>,
}

impl Pair {
    fn new() -> Self {
        for ns in NS {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        let pair = Self { relays: Vec::new() };
        sh(&format!(
            "ip netns add {a} && ip netns add {b} && ip -n {a} link add ul0 type veth peer name ul0 netns {b} && \
             ip -n {a} addr add {ua}/24 dev ul0 && ip -n {b} addr add {ub}/24 dev ul0 && \
             ip -n {a} link set ul0 up && ip -n {b} link set ul0 up",
            a = NS[0],
            b = NS[1],
            ua = UNDER[0],
            ub = UNDER[1]
        ));
        pair
    }

    /// Starts a relay at each end (`extra`: more arguments) and gives the TUN devices their
    /// addresses once they exist.
    fn start(&mut self, port: u16, extra: &[&str]) {
        for (i, ns) in NS.into_iter().enumerate() {
            let tun = format!("nrl{port}");
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .arg(env!("CARGO_BIN_EXE_bench-null-relay"))
                .args(["--tun", &tun, "--listen", &format!("0.0.0.0:{port}")])
                .args(["--peer", &format!("{}:{port}", UNDER[1 - i])])
                .args(extra)
                .spawn()
                .expect("bench-null-relay");
            self.relays.push(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !Command::new("ip").args(["-n", ns, "link", "show", &tun]).output().is_ok_and(|o| o.status.success())
            {
                assert!(Instant::now() < deadline, "{tun} did not appear in {ns}");
                std::thread::sleep(Duration::from_millis(50));
            }
            sh(&format!("ip -n {ns} addr add {}/24 dev {tun} && ip -n {ns} link set {tun} mtu 1420 up", INNER[i]));
        }
    }

    fn stop(&mut self) {
        for mut c in self.relays.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether `from` gets answers from `to`'s inner address (three pings, waiting up to 10 s).
    fn pings(from: usize, to: usize) -> bool {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", NS[from]))
            .args(["ping", "-c", "3", "-i", "0.2", "-w", "10", INNER[to]])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop();
        for ns in NS {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn carries_pings_both_ways_sleeping_and_spinning() {
    e2e::require_root().expect("root");
    let mut pair = Pair::new();
    pair.start(41_000, &[]);
    assert!(Pair::pings(0, 1), "a → b through the sleeping relays");
    assert!(Pair::pings(1, 0), "b → a through the sleeping relays");
    pair.stop();
    // The devices go with their processes.
    let gone = Command::new("ip").args(["-n", NS[0], "link", "show", "nrl41000"]).output().expect("ip");
    assert!(!gone.status.success(), "the TUN device outlived its relay");
    pair.start(41_001, &["--spin"]);
    assert!(Pair::pings(0, 1), "a → b through the spinning relays");
}

#[test]
fn refuses_bad_arguments() {
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_bench-null-relay")).args(args).output().expect("run");
    for args in [&["--tun", "x"][..], &["--tun", "x", "--listen", "nonsense", "--peer", "198.18.103.9:5"], &["--bogus"]]
    {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("bench-null-relay: "), "{args:?}");
    }
}
