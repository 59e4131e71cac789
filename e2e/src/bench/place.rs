//! Where a benchmark runs its programs, and the measurements it takes there: a [`Place`] is a
//! namespace the section made itself or a lab pod; [`Daemon`] is a long-lived process started
//! in one (stopped by its PID on drop); [`ping`] and [`iperf`] measure between two places. Both
//! tunnel sections (4: one veth, 5: across the lab's WAN) measure through these, so their
//! figures are taken the same way.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::process::check_interrupted;
use crate::{Pod, PodProcess, netns};

/// Where programs run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place<'a> {
    /// A namespace `/run/netns/<name>` that the section made; logs go to `dir`.
    Netns { name: &'a str, dir: &'a Path },
    /// A lab pod: processes are recorded under the lab, so its teardown stops them too.
    Pod(&'a Pod),
}

impl Place<'_> {
    fn path(&self) -> PathBuf {
        match self {
            Place::Netns { name, .. } => netns::path(name),
            Place::Pod(pod) => pod.netns_path.clone(),
        }
    }

    /// A name for messages.
    pub(crate) fn label(&self) -> String {
        match self {
            Place::Netns { name, .. } => format!("namespace {name}"),
            Place::Pod(pod) => format!("pod {}", pod.lab_name()),
        }
    }

    /// Runs `argv` inside (`nsenter --net`), whatever its exit status.
    pub(crate) fn exec(&self, argv: &[&str]) -> Result<Output> {
        netns::exec(&self.path(), argv).with_context(|| self.label())
    }

    /// Runs `argv` inside; its stdout, or an error with its stderr unless it exits 0.
    pub(crate) fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let out = self.exec(argv)?;
        if !out.status.success() {
            bail!(
                "{}: `{}` failed ({}): {}",
                self.label(),
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `argv` inside as a long-lived process (`nsenter` execs it: the PID is the
    /// program's), stdout and stderr to a log; `name` names the log.
    pub(crate) fn spawn(&self, argv: &[&str], name: &str) -> Result<Daemon> {
        match self {
            Place::Pod(pod) => Ok(Daemon::Pod(pod.spawn(argv)?)),
            Place::Netns { name: ns, dir } => {
                let log = dir.join(format!("{name}.log"));
                let file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
                let child = netns::command(&netns::path(ns), argv)
                    .stdin(Stdio::null())
                    .stdout(file.try_clone()?)
                    .stderr(file)
                    .spawn()
                    .with_context(|| format!("namespace {ns}: cannot start {name}"))?;
                Ok(Daemon::Own { child, log })
            }
        }
    }
}

/// A process started with [`Place::spawn`]; SIGTERM, then SIGKILL, by its PID on drop.
#[derive(Debug)]
pub(crate) enum Daemon {
    Own { child: Child, log: PathBuf },
    Pod(PodProcess),
}

impl Daemon {
    pub(crate) fn pid(&self) -> u32 {
        match self {
            Daemon::Own { child, .. } => child.id(),
            Daemon::Pod(p) => p.id(),
        }
    }

    pub(crate) fn running(&mut self) -> bool {
        match self {
            Daemon::Own { child, .. } => matches!(child.try_wait(), Ok(None)),
            Daemon::Pod(p) => p.is_running(),
        }
    }

    pub(crate) fn log_text(&self) -> String {
        match self {
            Daemon::Own { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
            Daemon::Pod(p) => p.log_text(),
        }
    }

    /// The last `n` lines of the log, on one line.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Daemon::Own { child, .. } = self {
            if matches!(child.try_wait(), Ok(None)) {
                // Our own unreaped child: its PID cannot have been reused.
                let _ = crate::agent::stop_child(child, Duration::from_secs(3));
            }
            let _ = child.wait();
        }
    }
}

/// Polls `f` every 100 ms until it holds or `timeout` passes; whether it held.
pub(crate) fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ping_args(to: Ipv4Addr, source: Option<Ipv4Addr>) -> Vec<String> {
    let mut argv = vec![to.to_string()];
    if let Some(s) = source {
        argv.extend(["-I".to_owned(), s.to_string()]);
    }
    argv
}

/// Waits until `to` answers a ping from `from` (sent from `source` when given).
pub(crate) fn wait_reachable(
    from: &Place<'_>,
    to: Ipv4Addr,
    source: Option<Ipv4Addr>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let tail = ping_args(to, source);
    loop {
        let mut argv = vec!["ping", "-c", "1", "-W", "1"];
        argv.extend(tail.iter().map(String::as_str));
        if from.exec(&argv)?.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{to} is not reachable from {} within {timeout:?}", from.label());
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ping -c count -i 0.2` from `from` to `to`: min/avg/max/mdev and the median, in ms.
pub(crate) fn ping(from: &Place<'_>, to: Ipv4Addr, source: Option<Ipv4Addr>, count: u32) -> Result<([f64; 4], f64)> {
    let (count_s, deadline) = (count.to_string(), (count / 5 + 10).to_string());
    let mut argv = vec!["ping", "-c", &count_s, "-i", "0.2", "-w", &deadline];
    let tail = ping_args(to, source);
    argv.extend(tail.iter().map(String::as_str));
    let out = from.exec_ok(&argv)?;
    let summary = super::path::parse_ping(&out).with_context(|| format!("cannot read ping's summary: {out}"))?;
    Ok((summary, median(&reply_times(&out)).unwrap_or(summary[1])))
}

/// The `time=` of every reply ping printed, in ms.
fn reply_times(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect()
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// What one iperf3 run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct IperfRun {
    /// Received Gbit/s.
    pub(crate) gbits: f64,
    pub(crate) retransmits: u64,
    pub(crate) congestion: String,
    /// CPU seconds (utime + stime) of the given processes per Gbit carried.
    pub(crate) cpu_per_gbit: Option<f64>,
}

/// An iperf3 client/server pair for one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Iperf<'a> {
    pub(crate) client: Place<'a>,
    pub(crate) server: Place<'a>,
    /// Where the client connects (a port forward may lead it to `listen`).
    pub(crate) to: Ipv4Addr,
    pub(crate) port: u16,
    /// The port the one-off server listens on.
    pub(crate) listen: u16,
    /// The client's source address (`-B`), when routing would pick another.
    pub(crate) bind: Option<Ipv4Addr>,
}

impl Iperf<'_> {
    /// One run of `seconds` with `streams` parallel streams (`iperf3 -s -1` in the server,
    /// `iperf3 -c … -J` in the client, both bounded in time); the CPU of `pids` over the run.
    pub(crate) fn run(&self, seconds: u32, streams: u32, pids: &[u32]) -> Result<IperfRun> {
        let listen = self.listen.to_string();
        let mut server = self.server.spawn(&["iperf3", "-s", "-1", "-p", &listen], "iperf3-server")?;
        let filter = format!("sport = :{listen}");
        let listening = wait_until(Duration::from_secs(10), || {
            self.server.exec_ok(&["ss", "-Hltn", &filter]).is_ok_and(|s| !s.trim().is_empty())
        });
        if !listening || !server.running() {
            bail!("the iperf3 server in {} does not listen: {}", self.server.label(), server.log_tail(3));
        }
        let (limit, to, port, t, p) = (
            (seconds + 20).to_string(),
            self.to.to_string(),
            self.port.to_string(),
            seconds.to_string(),
            streams.to_string(),
        );
        let mut argv = vec!["timeout", "-k", "2", &limit, "iperf3", "-c", &to, "-p", &port, "-t", &t, "-P", &p, "-J"];
        let bind = self.bind.map(|b| b.to_string());
        if let Some(b) = &bind {
            argv.extend(["-B", b.as_str()]);
        }
        let before = super::process::cpu_sum(pids.iter().copied());
        let out = self.client.exec(&argv)?;
        let after = super::process::cpu_sum(pids.iter().copied());
        let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("iperf3 -J output is not JSON ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))
        })?;
        if let Some(error) = json["error"].as_str() {
            bail!("iperf3 to {to}:{port}: {error}");
        }
        let end = &json["end"];
        let gbits = end["sum_received"]["bits_per_second"].as_f64().context("iperf3: no end.sum_received")? / 1e9;
        let cpu_per_gbit = match (before, after) {
            // CPU seconds over the run / (Gbit/s × seconds).
            (Some(b), Some(a)) if gbits > 0.0 && !pids.is_empty() => Some((a - b) / (gbits * f64::from(seconds))),
            _ => None,
        };
        // `-1`: the server exits after its one test.
        wait_until(Duration::from_secs(5), || !server.running());
        Ok(IperfRun {
            gbits,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            congestion: end["sender_tcp_congestion"].as_str().unwrap_or("?").to_owned(),
            cpu_per_gbit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reply_times_and_their_median() {
        let out = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\
                   64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.301 ms\n\
                   64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.101 ms\n\
                   64 bytes from 10.0.0.2: icmp_seq=3 ttl=64 time=2.50 ms\n\n\
                   rtt min/avg/max/mdev = 0.101/0.967/2.500/1.090 ms\n";
        assert_eq!(reply_times(out), vec![0.301, 0.101, 2.5]);
        assert_eq!(median(&reply_times(out)), Some(0.301));
        assert_eq!(median(&[1.0, 2.0]), Some(1.5));
        assert_eq!(median(&[]), None);
    }
}
