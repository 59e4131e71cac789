//! The `slice-dns` binary in a network namespace of its own, asked by real clients (`dig` from
//! bind9-dnsutils, `kdig` from knot-dnsutils) run inside that namespace, and by raw sockets the
//! test opens there. Needs root (network namespaces); fails, never skips, without it.
//!
//! Every test makes its own namespace `sdt<pid>-<n>` (removed by a guard, also on failure) and
//! waits for conditions with deadlines, never for fixed times.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

const SERVER: &str = "127.0.0.1";
const DEADLINE: Duration = Duration::from_secs(30);

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        ensure!(nix::unistd::geteuid().is_root(), "these tests need root: they create network namespaces");
        let name = format!("sdt{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run("ip", &["netns", "add", &name])?;
        let ns = Self(name);
        run("ip", &["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `f` on a thread inside the namespace (sockets made there stay there).
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || -> Result<T> {
            let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in the namespace panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    ensure!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `slice-dns` serving a file of objects in its own namespace; killed (by its PID) on drop,
/// before the namespace goes.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    ns: Netns,
}

impl Server {
    fn start(objects: &str, extra: &[&str]) -> Result<Self> {
        let ns = Netns::new()?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("objects.yaml"), objects)?;
        let log = std::fs::File::create(dir.path().join("log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_slice-dns")])
            .arg("--objects")
            .arg(dir.path().join("objects.yaml"))
            .args(["--listen", &format!("{SERVER}:53"), "--reload-interval-ms", "100"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start slice-dns")?;
        let mut server = Self { child, dir, ns };
        server.wait_for("the server to answer", |s| Ok(s.dig(&["clusterset.local", "SOA"])?.status == "NOERROR"))?;
        Ok(server)
    }

    fn objects_path(&self) -> PathBuf {
        self.dir.path().join("objects.yaml")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Waits until `done` holds, failing with the server's log after [`DEADLINE`].
    fn wait_for(&mut self, what: &str, mut done: impl FnMut(&Self) -> Result<bool>) -> Result<()> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < DEADLINE {
            if let Some(status) = self.child.try_wait()? {
                bail!("slice-dns exited ({status}) while waiting for {what}:\n{}", self.log());
            }
            match done(self) {
                Ok(true) => return Ok(()),
                Ok(false) => last = None,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("no {what} within {DEADLINE:?} (last error: {last:?}); log:\n{}", self.log())
    }

    fn is_running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    fn dig(&self, args: &[&str]) -> Result<Reply> {
        self.client("dig", &["+tries=1", "+time=5"], args)
    }

    fn kdig(&self, args: &[&str]) -> Result<Reply> {
        self.client("kdig", &["+retry=0", "+timeout=5"], args)
    }

    fn client(&self, program: &str, defaults: &[&str], args: &[&str]) -> Result<Reply> {
        let server = format!("@{SERVER}");
        let mut all = vec!["netns", "exec", &self.ns.0, program, server.as_str()];
        all.extend_from_slice(defaults);
        all.extend_from_slice(args);
        let text = run("ip", &all)?;
        Reply::parse(&text).with_context(|| format!("{program} {args:?}:\n{text}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `dig` or `kdig` printed, read back.
#[derive(Debug, Default)]
struct Reply {
    status: String,
    flags: Vec<String>,
    /// (owner, type, data) per record, lower-case owner.
    answers: Vec<(String, String, String)>,
    authority: Vec<(String, String, String)>,
    /// The TTL of each answer.
    ttls: Vec<u32>,
    text: String,
}

impl Reply {
    fn parse(text: &str) -> Result<Self> {
        let mut reply = Self { text: text.to_owned(), ..Self::default() };
        let mut section = "";
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.split("status: ").nth(1) {
                reply.status = rest.split([',', ';']).next().unwrap_or_default().trim().to_owned();
            } else if let Some(rest) = line.strip_prefix(";; flags: ").or_else(|| line.strip_prefix(";; Flags: ")) {
                reply.flags =
                    rest.split(';').next().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
            } else if line.starts_with(";; ") && line.ends_with("SECTION:") {
                section = if line.contains("ANSWER") {
                    "answer"
                } else if line.contains("AUTHORITY") {
                    "authority"
                } else {
                    ""
                };
            } else if !line.is_empty() && !line.starts_with(';') {
                let fields: Vec<&str> = line.split_whitespace().collect();
                ensure!(fields.len() >= 5, "not a record: {line}");
                let record = (fields[0].to_ascii_lowercase(), fields[3].to_owned(), fields[4..].join(" "));
                match section {
                    "answer" => {
                        reply.answers.push(record);
                        reply.ttls.push(fields[1].parse().with_context(|| format!("TTL of {line}"))?);
                    }
                    "authority" => reply.authority.push(record),
                    _ => {}
                }
            }
        }
        ensure!(!reply.status.is_empty(), "no status line");
        Ok(reply)
    }

    fn data(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self.answers.iter().filter(|r| r.1 == rtype).map(|r| r.2.clone()).collect();
        v.sort();
        v
    }

    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The owner of the SOA in the authority section, if any.
    fn soa_zone(&self) -> Option<&str> {
        self.authority.iter().find(|r| r.1 == "SOA").map(|r| r.0.as_str())
    }
}

/// The objects of most tests: a headless `db` (pods in east and west, one unready, one IPv6),
/// a ClusterSetIP `api` at `api_ip` with named ports, and a headless `big` with `big` endpoints.
fn objects(api_ip: &str, big: usize) -> String {
    let mut text = String::new();
    let import = |text: &mut String, name: &str, kind: &str, ips: &str, ports: &str| {
        let _ = write!(
            text,
            "---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n\
             metadata: {{name: {name}, namespace: shop}}\nspec: {{type: {kind}, ips: [{ips}], ports: [{ports}]}}\n"
        );
    };
    let slice = |text: &mut String,
                 service: &str,
                 cluster: &str,
                 family: &str,
                 endpoints: &[(String, String, bool)]| {
        let _ = write!(
            text,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-{cluster}-{family}\n  \
             namespace: shop\n  labels:\n    multicluster.kubernetes.io/service-name: {service}\n    \
             multicluster.kubernetes.io/source-cluster: {cluster}\naddressType: {family}\nendpoints:\n"
        );
        for (host, address, ready) in endpoints {
            let host = if host.is_empty() { String::new() } else { format!(", hostname: {host}") };
            let _ = writeln!(text, "  - {{addresses: [\"{address}\"]{host}, conditions: {{ready: {ready}}}}}");
        }
    };
    let e = |h: &str, a: &str, r: bool| (h.to_owned(), a.to_owned(), r);
    import(&mut text, "db", "Headless", "", "{name: postgres, protocol: TCP, port: 5432}");
    slice(
        &mut text,
        "db",
        "east",
        "IPv4",
        &[e("db-0", "10.80.0.11", true), e("db-1", "10.80.0.12", true), e("db-2", "10.80.0.13", false)],
    );
    slice(&mut text, "db", "west", "IPv4", &[e("db-0", "10.80.16.21", true)]);
    slice(&mut text, "db", "west", "IPv6", &[e("db-0", "fd00:80::21", true)]);
    import(
        &mut text,
        "api",
        "ClusterSetIP",
        api_ip,
        "{name: http, protocol: TCP, port: 80}, {name: grpc, protocol: TCP, port: 9090}, {protocol: UDP, port: 53}",
    );
    slice(&mut text, "api", "east", "IPv4", &[e("", "10.80.0.31", true)]);
    slice(&mut text, "api", "west", "IPv4", &[e("", "10.80.16.41", true)]);
    import(&mut text, "big", "Headless", "", "");
    let many: Vec<_> =
        (0..big).map(|i| e(&format!("big-{i}"), &format!("10.80.{}.{}", 1 + i / 250, 1 + i % 250), true)).collect();
    slice(&mut text, "big", "east", "IPv4", &many);
    text
}

const BIG: usize = 60;

#[test]
fn both_zones_answer_a_aaaa_srv_ptr_and_txt() -> Result<()> {
    let s = Server::start(&objects("10.80.255.10", BIG), &[])?;
    let db = s.dig(&["db.shop.svc.clusterset.local", "A"])?;
    assert_eq!(db.status, "NOERROR");
    assert!(db.has_flag("aa"), "{}", db.text);
    assert_eq!(db.data("A"), ["10.80.0.11", "10.80.0.12", "10.80.16.21"]);
    assert_eq!(s.kdig(&["db.shop.svc.clusterset.local", "AAAA"])?.data("AAAA"), ["fd00:80::21"]);
    assert_eq!(s.dig(&["db.shop.svc.slice.local", "A"])?.data("A"), ["10.80.0.11", "10.80.0.12", "10.80.16.21"]);
    assert_eq!(s.dig(&["db-0.west.db.shop.svc.clusterset.local", "A"])?.data("A"), ["10.80.16.21"]);
    assert_eq!(s.kdig(&["db-0.west.db.shop.svc.clusterset.local", "AAAA"])?.data("AAAA"), ["fd00:80::21"]);
    assert_eq!(s.dig(&["db-1.east.db.shop.svc.slice.local", "A"])?.data("A"), ["10.80.0.12"]);
    assert_eq!(s.dig(&["east.db.shop.svc.slice.local", "A"])?.data("A"), ["10.80.0.11", "10.80.0.12"]);
    assert_eq!(s.dig(&["west.api.shop.svc.slice.local", "A"])?.data("A"), ["10.80.16.41"]);
    assert_eq!(s.dig(&["api.shop.svc.clusterset.local", "A"])?.data("A"), ["10.80.255.10"]);
    assert_eq!(s.dig(&["api.shop.svc.slice.local", "A"])?.data("A"), ["10.80.255.10"]);

    assert_eq!(
        s.kdig(&["_postgres._tcp.db.shop.svc.clusterset.local", "SRV"])?.data("SRV"),
        [
            "0 33 5432 db-0.east.db.shop.svc.clusterset.local.",
            "0 33 5432 db-0.west.db.shop.svc.clusterset.local.",
            "0 33 5432 db-1.east.db.shop.svc.clusterset.local.",
        ]
    );
    assert_eq!(
        s.dig(&["_grpc._tcp.api.shop.svc.clusterset.local", "SRV"])?.data("SRV"),
        ["0 100 9090 api.shop.svc.clusterset.local."]
    );
    assert_eq!(
        s.dig(&["api.shop.svc.slice.local", "SRV"])?.data("SRV"),
        [
            "0 100 53 api.shop.svc.slice.local.",
            "0 100 80 api.shop.svc.slice.local.",
            "0 100 9090 api.shop.svc.slice.local."
        ]
    );

    assert_eq!(s.dig(&["-x", "10.80.0.11"])?.data("PTR"), ["db-0.east.db.shop.svc.clusterset.local."]);
    assert_eq!(s.kdig(&["-x", "10.80.255.10"])?.data("PTR"), ["api.shop.svc.clusterset.local."]);
    assert_eq!(s.dig(&["-x", "fd00:80::21"])?.data("PTR"), ["db-0.west.db.shop.svc.clusterset.local."]);

    let version = s.dig(&["dns-version.clusterset.local", "TXT"])?;
    assert_eq!(version.data("TXT"), ["\"1.0.0\""]);
    assert_eq!(version.answers[0].0, "dns-version.clusterset.local.");

    for zone in ["clusterset.local", "slice.local"] {
        let soa = s.dig(&[zone, "SOA"])?;
        assert_eq!(soa.data("SOA").len(), 1, "{}", soa.text);
        assert_eq!(s.dig(&[zone, "NS"])?.data("NS"), [format!("ns.dns.{zone}.")]);
    }
    // Case does not matter, and the records carry the TTL (default 5 s).
    let mixed = s.dig(&["DB-0.East.DB.shop.SVC.ClusterSet.Local", "A"])?;
    assert_eq!(mixed.data("A"), ["10.80.0.11"]);
    assert_eq!(mixed.ttls, [5]);
    Ok(())
}

#[test]
fn nxdomain_nodata_and_refused_are_told_apart() -> Result<()> {
    let s = Server::start(&objects("10.80.255.10", 1), &["--ttl", "9"])?;
    for (name, rtype, zone) in [
        ("nothing.shop.svc.clusterset.local", "A", "clusterset.local."),
        ("east.api.shop.svc.clusterset.local", "A", "clusterset.local."),
        ("db-2.east.db.shop.svc.clusterset.local", "A", "clusterset.local."),
        ("nothing.slice.local", "AAAA", "slice.local."),
    ] {
        let r = s.dig(&[name, rtype])?;
        assert_eq!(r.status, "NXDOMAIN", "{name}: {}", r.text);
        assert!(r.has_flag("aa") && r.answers.is_empty(), "{}", r.text);
        assert_eq!(r.soa_zone(), Some(zone), "{}", r.text);
        // The SOA minimum is the TTL (negative caching).
        assert!(r.authority[0].2.ends_with(" 9"), "{}", r.text);
    }
    for (name, rtype, zone) in [
        ("api.shop.svc.clusterset.local", "TXT", "clusterset.local."),
        ("svc.clusterset.local", "A", "clusterset.local."),
        ("shop.svc.clusterset.local", "A", "clusterset.local."),
        ("east.db.shop.svc.clusterset.local", "A", "clusterset.local."),
        ("_tcp.api.shop.svc.slice.local", "SRV", "slice.local."),
        ("api.shop.svc.slice.local", "AAAA", "slice.local."),
    ] {
        let r = s.kdig(&[name, rtype])?;
        assert_eq!(r.status, "NOERROR", "{name}: {}", r.text);
        assert!(r.answers.is_empty(), "NODATA for {name}: {}", r.text);
        assert_eq!(r.soa_zone(), Some(zone), "{}", r.text);
    }
    for (name, rtype) in [("example.com", "A"), ("cluster.local", "SOA"), ("9.9.9.10.in-addr.arpa", "PTR")] {
        let r = s.dig(&[name, rtype])?;
        assert_eq!(r.status, "REFUSED", "{name}: {}", r.text);
        assert!(r.authority.is_empty() && !r.has_flag("aa"), "{}", r.text);
    }
    Ok(())
}

#[test]
fn a_big_headless_set_is_truncated_without_edns_and_dig_retries_over_tcp() -> Result<()> {
    let s = Server::start(&objects("10.80.255.10", BIG), &[])?;
    // UDP only, no EDNS: 60 A records do not fit 512 bytes.
    let udp = s.dig(&["+noedns", "+ignore", "big.shop.svc.clusterset.local", "A"])?;
    assert!(udp.has_flag("tc"), "{}", udp.text);
    assert!(udp.answers.is_empty(), "no partial set: {}", udp.text);
    // Default dig retries over TCP on TC and gets the whole set.
    let fallback = s.dig(&["+noedns", "big.shop.svc.clusterset.local", "A"])?;
    assert!(fallback.text.contains("Truncated, retrying in TCP mode"), "{}", fallback.text);
    assert!(!fallback.has_flag("tc"));
    assert_eq!(fallback.data("A").len(), BIG);
    let tcp = s.kdig(&["+tcp", "big.shop.svc.clusterset.local", "A"])?;
    assert_eq!(tcp.data("A").len(), BIG);
    // A small answer still fits 512 bytes.
    let small = s.dig(&["+noedns", "+ignore", "db.shop.svc.clusterset.local", "A"])?;
    assert!(!small.has_flag("tc") && small.data("A").len() == 3, "{}", small.text);
    Ok(())
}

#[test]
fn edns_carries_a_big_answer_over_udp() -> Result<()> {
    let s = Server::start(&objects("10.80.255.10", BIG), &[])?;
    let r = s.dig(&["+bufsize=4096", "+ignore", "+notcp", "big.shop.svc.clusterset.local", "A"])?;
    assert!(!r.has_flag("tc"), "{}", r.text);
    assert_eq!(r.data("A").len(), BIG, "{}", r.text);
    assert!(r.text.contains("udp: 4096"), "our OPT record answers: {}", r.text);
    // A client offering 512 bytes with EDNS gets TC, and our OPT record.
    let small = s.dig(&["+bufsize=512", "+ignore", "big.shop.svc.clusterset.local", "A"])?;
    assert!(small.has_flag("tc") && small.answers.is_empty(), "{}", small.text);
    assert!(small.text.contains("udp: 512"), "{}", small.text);
    // The same set as SRV targets over UDP with EDNS.
    let srv = s.kdig(&["+bufsize=4096", "big.shop.svc.clusterset.local", "SRV"])?;
    assert!(!srv.has_flag("tc"));
    Ok(())
}

#[test]
fn a_changed_file_is_served_and_a_bad_one_keeps_the_old_records() -> Result<()> {
    let mut s = Server::start(&objects("10.80.255.10", 1), &[])?;
    assert_eq!(s.dig(&["api.shop.svc.clusterset.local", "A"])?.data("A"), ["10.80.255.10"]);
    std::fs::write(s.objects_path(), objects("10.80.255.77", 1))?;
    s.wait_for("the new address", |s| {
        Ok(s.dig(&["api.shop.svc.clusterset.local", "A"])?.data("A") == ["10.80.255.77"])
    })?;
    // Replaced by rename, as editors and ConfigMap volumes do.
    let next = s.dir.path().join("next.yaml");
    std::fs::write(&next, objects("10.80.255.78", 1))?;
    std::fs::rename(&next, s.objects_path())?;
    s.wait_for("the renamed file's address", |s| {
        Ok(s.dig(&["api.shop.svc.clusterset.local", "A"])?.data("A") == ["10.80.255.78"])
    })?;

    let bad = objects("10.80.255.79", 1).replace("type: ClusterSetIP", "type: Sideways");
    std::fs::write(s.objects_path(), bad)?;
    s.wait_for("the error in the log", |s| Ok(s.log().contains("unknown variant `Sideways`")))?;
    let log = s.log();
    assert!(log.contains("objects.yaml: document 5 (ServiceImport shop/api)"), "a precise error: {log}");
    assert!(log.contains("the records loaded before are still served"), "{log}");
    assert_eq!(s.dig(&["api.shop.svc.clusterset.local", "A"])?.data("A"), ["10.80.255.78"]);
    assert!(s.is_running()?);

    std::fs::write(s.objects_path(), "")?;
    s.wait_for("the service to be gone", |s| Ok(s.dig(&["api.shop.svc.clusterset.local", "A"])?.status == "NXDOMAIN"))?;
    Ok(())
}

/// A tiny deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// 1,000 malformed packets: random bytes, short headers, responses, lying counts, compression
/// pointer loops, names past 255 bytes, truncated questions.
fn malformed(rng: &mut XorShift, i: usize) -> Vec<u8> {
    let header = |flags: [u8; 2], counts: [u16; 4]| {
        let mut h = vec![(i >> 8) as u8, i as u8, flags[0], flags[1]];
        for c in counts {
            h.extend_from_slice(&c.to_be_bytes());
        }
        h
    };
    match i % 8 {
        0 => {
            let n = (rng.next() % 700) as usize;
            rng.bytes(n)
        }
        1 => {
            let n = (rng.next() % 12) as usize;
            rng.bytes(n)
        }
        2 => {
            // A header that claims a question and records it does not carry.
            let mut p = header([0x01, 0x00], [1, 3, 3, 3]);
            p.extend_from_slice(b"\x03abc");
            p
        }
        3 => {
            // A name that points at itself.
            let mut p = header([0x01, 0x00], [1, 0, 0, 0]);
            p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            p
        }
        4 => {
            // A name of 300 bytes in 63-byte labels.
            let mut p = header([0x01, 0x00], [1, 0, 0, 0]);
            for _ in 0..5 {
                p.push(63);
                p.extend_from_slice(&[b'a'; 63]);
            }
            p.extend_from_slice(&[0, 0, 1, 0, 1]);
            p
        }
        5 => {
            // A response (QR set) with garbage after it.
            let mut p = header([0x81, 0x80], [1, 1, 0, 0]);
            let n = (rng.next() % 100) as usize;
            p.extend(rng.bytes(n));
            p
        }
        6 => {
            // A valid question followed by an OPT record whose length runs past the end.
            let mut p = header([0x01, 0x00], [1, 0, 0, 1]);
            p.extend_from_slice(b"\x03api\x04shop\x03svc\x0aclusterset\x05local\x00\x00\x01\x00\x01");
            p.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2]);
            p
        }
        _ => {
            // A random header over a random body.
            let mut p = rng.bytes(12);
            let n = (rng.next() % 300) as usize;
            p.extend(rng.bytes(n));
            p
        }
    }
}

#[test]
fn a_thousand_malformed_packets_do_no_harm() -> Result<()> {
    let mut s = Server::start(&objects("10.80.255.10", 1), &[])?;
    let target: SocketAddr = format!("{SERVER}:53").parse()?;
    let sent = s.ns.enter(move || -> Result<usize> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let mut rng = XorShift(0x5eed_d15c);
        let mut sent = 0;
        for i in 0..1000 {
            let packet = malformed(&mut rng, i);
            socket.send_to(&packet, target)?;
            sent += 1;
        }
        // The same over TCP: a frame of garbage, a frame shorter than a header, and a length
        // prefix with nothing after it.
        for frame in [malformed(&mut rng, 0), vec![1, 2, 3], Vec::new()] {
            let mut tcp = TcpStream::connect(target)?;
            tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
            let length = if frame.is_empty() { 512 } else { frame.len() as u16 };
            tcp.write_all(&length.to_be_bytes())?;
            tcp.write_all(&frame)?;
            if frame.is_empty() {
                drop(tcp);
            }
        }
        Ok(sent)
    })??;
    assert_eq!(sent, 1000);
    // Still alive and still answering, on UDP and TCP.
    assert!(s.is_running()?, "{}", s.log());
    s.wait_for("an answer after the malformed packets", |s| {
        Ok(s.dig(&["api.shop.svc.clusterset.local", "A"])?.data("A") == ["10.80.255.10"])
    })?;
    assert_eq!(s.kdig(&["+tcp", "api.shop.svc.clusterset.local", "A"])?.data("A"), ["10.80.255.10"]);
    assert!(s.is_running()?);
    Ok(())
}

/// A DNS query for `api.shop.svc.clusterset.local A`, framed for TCP.
fn tcp_query(id: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(b"\x03api\x04shop\x03svc\x0aclusterset\x05local\x00\x00\x01\x00\x01");
    let mut framed = (m.len() as u16).to_be_bytes().to_vec();
    framed.extend(m);
    framed
}

/// Sends one query and reads one reply; `Ok(None)` when the server closed the connection.
fn ask_tcp(tcp: &mut TcpStream, id: u16) -> Result<Option<Vec<u8>>> {
    if tcp.write_all(&tcp_query(id)).is_err() {
        return Ok(None);
    }
    let mut length = [0_u8; 2];
    match tcp.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset) => {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    let mut reply = vec![0_u8; usize::from(u16::from_be_bytes(length))];
    tcp.read_exact(&mut reply)?;
    ensure!(reply[..2] == id.to_be_bytes(), "the reply carries the query's id");
    Ok(Some(reply))
}

#[test]
fn tcp_connections_are_bounded_and_idle_ones_closed() -> Result<()> {
    let s = Server::start(&objects("10.80.255.10", 1), &["--tcp-max-connections", "2", "--tcp-idle-timeout", "2"])?;
    let target: SocketAddr = format!("{SERVER}:53").parse()?;
    let connect = move || -> Result<TcpStream> {
        let tcp = TcpStream::connect(target)?;
        tcp.set_read_timeout(Some(DEADLINE))?;
        Ok(tcp)
    };
    let (mut first, mut second, mut third) =
        s.ns.enter(move || -> Result<_> { Ok((connect()?, connect()?, connect()?)) })??;
    // The first two are served (and so hold the two places), several queries each.
    for id in 1..=3 {
        assert!(ask_tcp(&mut first, id)?.is_some());
        assert!(ask_tcp(&mut second, 100 + id)?.is_some());
    }
    // The third is over the limit: closed without an answer.
    assert!(ask_tcp(&mut third, 200)?.is_none(), "a third connection is closed");
    // Silent connections are closed by the server after the idle timeout (read returns EOF).
    let mut byte = [0_u8; 1];
    assert_eq!(first.read(&mut byte)?, 0, "the server closes an idle connection");
    assert_eq!(second.read(&mut byte)?, 0);
    // Their places are free again.
    let mut s2 = s;
    s2.wait_for("a new TCP connection to be served", |s| {
        let mut fresh = s.ns.enter(connect)??;
        Ok(ask_tcp(&mut fresh, 300)?.is_some())
    })?;
    Ok(())
}

#[test]
fn the_binary_refuses_to_start_on_a_bad_file_with_a_precise_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path: &Path = &dir.path().join("objects.yaml");
    std::fs::write(path, "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: y}\n")?;
    let out = Command::new(env!("CARGO_BIN_EXE_slice-dns"))
        .arg("--objects")
        .arg(path)
        .args(["--listen", "127.0.0.1:0"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("objects.yaml: document 1 (Service y/x): apiVersion \"v1\" kind \"Service\" is neither"),
        "{stderr}"
    );
    Ok(())
}
