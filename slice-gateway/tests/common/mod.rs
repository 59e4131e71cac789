//! A small namespace lab for the gateway's root tests: a WAN namespace with a bridge, N node
//! namespaces on it (198.18.0.N/24 on `wan0`), gateways or wireguard-go in the nodes. Everything
//! is removed on drop, even when the test fails.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const PORT: u16 = 51820;

/// How long a test waits for a state before it calls the system broken: a bound on a broken
/// system, not an expectation of a healthy one (which needs well under a second), so that a
/// loaded machine passes too.
pub const WAIT: Duration = Duration::from_secs(60);

/// The binary under test; `SLICE_GATEWAY_BIN` points at another build (e.g. release, for figures).
pub fn gateway_bin() -> String {
    std::env::var("SLICE_GATEWAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_slice-gateway").to_string())
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests create network namespaces: run them as root");
}

/// Runs `bash -c cmd`; fails with its stderr unless it succeeds.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("bash").arg("-c").arg(cmd).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every 200 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct KeyPair {
    pub private: String,
    pub public: String,
}

pub fn keypair() -> Result<KeyPair> {
    let private = sh("wg genkey")?.trim().to_string();
    let public = sh(&format!("echo {private} | wg pubkey"))?.trim().to_string();
    Ok(KeyPair { private, public })
}

/// A process we started; SIGTERM (then SIGKILL) on drop, by its PID only.
pub struct Proc {
    pub child: Child,
    pub what: String,
    pub socket: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM and wait (≤ 30 s, generous for a loaded machine); returns whether it exited
    /// successfully.
    pub fn terminate(&mut self) -> bool {
        if !self.alive() {
            return self.child.try_wait().ok().flatten().is_some_and(|s| s.success());
        }
        // SAFETY: kill(2) on the PID of our own child, which we have not reaped yet.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
        if let Some(sock) = &self.socket {
            let _ = std::fs::remove_file(sock);
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The lab: drop kills processes first, then deletes namespaces.
pub struct Lab {
    /// Unique per test in this machine: pid + sequence, short enough for interface names.
    pub tag: String,
    pub wan: String,
    pub nodes: Vec<String>,
    pub procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut p in self.procs.drain(..) {
            p.terminate();
        }
        for ns in self.nodes.iter().chain([&self.wan]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Lab {
    /// `n` node namespaces joined by a bridge in a WAN namespace.
    pub fn new(n: usize) -> Result<Self> {
        Self::named("sgw", n)
    }

    /// The same with namespace names starting `<prefix>-` (a test file's own lab prefix).
    pub fn named(prefix: &str, n: usize) -> Result<Self> {
        require_root();
        let tag = format!("{:x}{}", std::process::id() & 0xfff, SEQ.fetch_add(1, Ordering::Relaxed));
        let mut lab = Lab {
            wan: format!("{prefix}-{tag}-wan"),
            nodes: Vec::new(),
            procs: Vec::new(),
            dir: tempfile::tempdir()?,
            tag,
        };
        sh(&format!(
            "ip netns add {w} && ip -n {w} link add br0 type bridge && ip -n {w} link set br0 up && ip -n {w} link set lo up",
            w = lab.wan
        ))?;
        for i in 0..n {
            let ns = format!("{prefix}-{}-n{i}", lab.tag);
            sh(&format!("ip netns add {ns}"))?;
            lab.nodes.push(ns.clone());
            sh(&format!(
                "ip -n {ns} link add wan0 type veth peer name p{i} netns {w} && ip -n {w} link set p{i} master br0 up && \
                 ip -n {ns} addr add {ip}/24 dev wan0 && ip -n {ns} link set wan0 up && ip -n {ns} link set lo up",
                w = lab.wan,
                ip = Self::underlay(i)
            ))?;
        }
        Ok(lab)
    }

    pub fn underlay(i: usize) -> String {
        format!("198.18.0.{}", i + 1)
    }

    pub fn overlay(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// The interface name of node `i` (≤ 15 bytes, unique on the machine).
    pub fn ifname(&self, i: usize) -> String {
        format!("sg{}n{i}", self.tag)
    }

    /// Runs `cmd` inside node `i`.
    pub fn exec(&self, i: usize, cmd: &str) -> Result<String> {
        sh(&format!("ip netns exec {} bash -c '{}'", self.nodes[i], cmd.replace('\'', r"'\''")))
    }

    /// Writes a file with mode 0600.
    pub fn write_private(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }

    /// Starts `program` in node `i` (no readiness check); killed by PID when the lab drops.
    pub fn spawn_plain(&mut self, i: usize, program: &str, args: &[&str], what: &str) -> Result<usize> {
        let log = std::fs::File::create(self.dir.path().join(format!("{what}.log")))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.nodes[i]))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.procs.push(Proc { child, what: what.to_string(), socket: None });
        Ok(self.procs.len() - 1)
    }

    /// iperf3 from node `from` to node `to` over the overlay; returns Mbit/s at the receiver.
    pub fn iperf(&mut self, from: usize, to: usize, args: &str) -> Result<f64> {
        let server = self.spawn_plain(to, "iperf3", &["-s", "-1", "-B", &Self::overlay(to)], &format!("iperf-{to}"))?;
        let ok = wait_until(WAIT, || self.exec(to, &format!("ss -ltn | grep -q '{}:5201'", Self::overlay(to))).is_ok());
        if !ok {
            bail!("iperf3 server did not start");
        }
        // A bound on a hung transfer only: the amount, not the time, is what the callers ask for.
        let out = self.exec(from, &format!("timeout 600 iperf3 -c {} {args} -f m", Self::overlay(to)))?;
        let mut proc = self.procs.remove(server);
        proc.terminate();
        let line =
            out.lines().rev().find(|l| l.contains("receiver")).with_context(|| format!("no receiver line in {out}"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let pos = words.iter().position(|w| *w == "Mbits/sec").context("no Mbits/sec")?;
        Ok(words[pos - 1].parse()?)
    }

    fn spawn(
        &mut self,
        i: usize,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        socket: PathBuf,
        what: String,
    ) -> Result<usize> {
        let log = std::fs::File::create(self.dir.path().join(format!("{what}.log")))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.nodes[i]))
            .arg(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.procs.push(Proc { child, what: what.clone(), socket: Some(socket.clone()) });
        let idx = self.procs.len() - 1;
        let started = wait_until(WAIT, || socket.exists());
        if !started {
            bail!("{what} did not create {}: {}", socket.display(), self.log(&what));
        }
        Ok(idx)
    }

    pub fn log(&self, what: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{what}.log"))).unwrap_or_default()
    }

    /// Starts `slice-gateway` in node `i` with `config` (a wg(8) file) and its overlay address.
    pub fn start_gateway(&mut self, i: usize, config: &str, extra: &[&str]) -> Result<usize> {
        self.start_gateway_with_env(i, config, extra, &[])
    }

    /// [`Lab::start_gateway`] with more environment variables.
    pub fn start_gateway_with_env(
        &mut self,
        i: usize,
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<usize> {
        let args = self.gateway_args(i, config, extra)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ifname = self.ifname(i);
        let socket = socket_path(&ifname);
        let mut env = env.to_vec();
        env.push(("RUST_LOG", "info"));
        self.spawn(i, &gateway_bin(), &args, &env, socket, ifname.clone())
    }

    /// The arguments of `slice-gateway` in node `i` with `config` written to a file.
    pub fn gateway_args(&self, i: usize, config: &str, extra: &[&str]) -> Result<Vec<String>> {
        let ifname = self.ifname(i);
        let path = self.write_private(&format!("{ifname}.conf"), config)?;
        let address = format!("{}/24", Self::overlay(i));
        let mut args = vec!["--interface", &ifname, "--config", path.to_str().expect("utf-8"), "--address", &address];
        args.extend_from_slice(extra);
        Ok(args.into_iter().map(str::to_owned).collect())
    }

    /// [`Lab::start_gateway`] with no capability but `caps` and no way to gain one, as a
    /// container that drops every capability, adds `caps` and disallows privilege escalation
    /// runs it: util-linux `setpriv` limits the bounding set (what root gets at exec), clears
    /// the inheritable set and sets no_new_privs.
    pub fn start_gateway_with_only(&mut self, i: usize, config: &str, extra: &[&str], caps: &[&str]) -> Result<usize> {
        let mut args = setpriv_only(caps);
        args.push(gateway_bin());
        args.extend(self.gateway_args(i, config, extra)?);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ifname = self.ifname(i);
        let socket = socket_path(&ifname);
        self.spawn(i, "setpriv", &args, &[("RUST_LOG", "info")], socket, ifname.clone())
    }

    /// Starts Debian's wireguard-go in node `i` and configures it with `wg setconf`.
    pub fn start_wireguard_go(&mut self, i: usize, config: &str) -> Result<usize> {
        self.start_userspace_wg(i, "wireguard-go", &["-f"], config)
    }

    /// Starts another userspace WireGuard on node `i`, `program args… IFNAME` (in the
    /// foreground, its UAPI socket where wg(8) looks), configured like
    /// [`Lab::start_wireguard_go`].
    pub fn start_userspace_wg(&mut self, i: usize, program: &str, args: &[&str], config: &str) -> Result<usize> {
        let ifname = self.ifname(i);
        let socket = socket_path(&ifname);
        let mut argv = args.to_vec();
        argv.push(&ifname);
        let idx = self.spawn(i, program, &argv, &[("WG_PROCESS_FOREGROUND", "1")], socket, ifname.clone())?;
        let path = self.write_private(&format!("{ifname}.conf"), config)?;
        self.exec(i, &format!(
            "wg setconf {ifname} {} && ip link set {ifname} mtu 1420 && ip addr add {}/24 dev {ifname} && ip link set {ifname} up",
            path.display(),
            Self::overlay(i)
        ))?;
        Ok(idx)
    }

    /// One ping from node `from` to node `to`'s overlay address, retried until one is answered
    /// or `timeout` passes (a try waits 2 s for its answer; the first may start a handshake).
    pub fn pings(&self, from: usize, to: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.exec(from, &format!("ping -c 1 -W 2 {}", Self::overlay(to))).is_ok())
    }

    /// The PID of the process `procs[idx]`.
    pub fn pid(&self, idx: usize) -> i32 {
        self.procs[idx].pid()
    }
}

/// `setpriv`'s arguments (without the program name) that leave a root process only `caps`
/// (e.g. `net_admin`) and no way to gain more.
pub fn setpriv_only(caps: &[&str]) -> Vec<String> {
    let keep: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![format!("--bounding-set=-all{keep}"), "--inh-caps=-all".into(), "--no-new-privs".into(), "--".into()]
}

pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{ifname}.sock"))
}

/// A wg(8) configuration: our key and port, and peers as (public key, node index, keepalive).
pub fn wg_config(own: &KeyPair, peers: &[(&KeyPair, usize)]) -> String {
    let mut s = format!("[Interface]\nPrivateKey = {}\nListenPort = {PORT}\n", own.private);
    for (kp, i) in peers {
        s += &format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\nEndpoint = {}:{PORT}\n",
            kp.public,
            Lab::overlay(*i),
            Lab::underlay(*i)
        );
    }
    s
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it creates stay in `ns` and can
/// be used from any thread afterwards). The test thread itself never changes namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{ns}")).with_context(|| format!("opening netns {ns}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns(2) on an open namespace file; it changes only this (short-lived) thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: i32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line.split_whitespace().nth(1).context("no value")?.parse()?)
}
