//! Timed child processes: spawn-to-exit of one program with stdin, bounded by a deadline, and
//! the helpers around it (entering a namespace on a thread, a Ctrl-C flag).

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::CloneFlags;

/// Runs `cmd` with `input` on stdin and returns its output and the time from just before the
/// spawn to the moment `wait` returned (stdout and stderr fully read). A process still running
/// after `timeout` is killed and reported as an error.
///
/// The wait happens on a helper thread so that a hung child can be killed by PID: an unreaped
/// child keeps its PID, so the kill can never hit another process.
pub(crate) fn timed(cmd: &mut Command, input: &[u8], timeout: Duration) -> Result<(Duration, Output)> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Small inputs fit in the pipe buffer; a child that never reads cannot block this.
    let write = stdin.write_all(input);
    drop(stdin);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = child.wait_with_output();
        let end = Instant::now();
        let _ = tx.send((out, end));
    });
    match rx.recv_timeout(timeout) {
        Ok((out, end)) => {
            let out = out.context("cannot wait for the child")?;
            if let Err(e) = write
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(e).context("cannot write the child's stdin");
            }
            Ok((end - start, out))
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv();
            bail!("{:?} did not exit within {timeout:?} (killed)", cmd.get_program())
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace at `netns` (children it
/// spawns start there too); the calling thread never changes namespace.
pub(crate) fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = std::fs::File::open(netns).with_context(|| format!("cannot open {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter {}", netns.display()))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow!("a benchmark thread in {} panicked", netns.display())))
    })
}

/// Runs a command to completion (bounded by `timeout`) and fails unless it exits 0.
pub(crate) fn run_ok<S: AsRef<OsStr>>(argv: &[S], timeout: Duration) -> Result<String> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let (_, out) = timed(&mut cmd, b"", timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the process, so the benchmark stops
/// at the next step and the labs are torn down by their `Drop`.
pub(crate) fn catch_interrupts() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// Fails once SIGINT or SIGTERM arrived.
pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) { Err(anyhow!("interrupted")) } else { Ok(()) }
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 → indices 11, 12.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// The CPU seconds (utime + stime) of all `pids` together; `None` when one is gone.
pub(crate) fn cpu_sum(pids: impl IntoIterator<Item = u32>) -> Option<f64> {
    pids.into_iter().map(cpu_seconds).sum()
}
