//! The lab's control plane as a long-running process, so that a lab outlives one command and is
//! worked with as a cluster set is: `slicectl lab up -f FILE` starts it in the background
//! ([`start`]), then `slicectl lab apply|delete [--cluster NAME] -f FILE`, `lab exec` and
//! `lab status` talk to it ([`request`]) over a Unix socket in the lab's directory, one JSON
//! line each way. Between requests it runs a round every second, as the controllers' watches
//! and resyncs would, so statuses follow the tunnels. `slicectl lab down` stops it with the
//! rest of the lab (it is recorded as one of the lab's processes).
//!
//! Without `--cluster`, `apply` takes SliceConfigs and MemberClusters for the hub and adds or
//! replaces them (the hub's other SliceConfigs stay, as with `kubectl apply`); `delete` removes
//! the SliceConfigs it names.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ControlPlane, Manifest, workloads};
use crate::Lab;

/// The socket's file name in the lab's directory.
pub const SOCKET: &str = "control.sock";
/// The log's file name in the lab's directory.
pub const LOG: &str = "control.log";
/// How long `lab up` waits for the control plane to answer.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the control plane runs a round while no request comes.
const TICK: Duration = Duration::from_secs(1);

/// What a command asks of the running control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "verb")]
pub enum Request {
    /// Objects for the hub (`cluster` none: SliceConfigs, MemberClusters) or for a cluster.
    Apply {
        cluster: Option<String>,
        text: String,
    },
    Delete {
        cluster: Option<String>,
        text: String,
    },
    /// The network namespace of pod `namespace/name` in `cluster` and its resolver
    /// configuration ([`PodContext`], as JSON).
    PodNetns {
        cluster: String,
        namespace: String,
        name: String,
    },
    /// The hub's report.
    Status,
    /// `slicectl diagnose`'s report ([`slice_api::diagnose::Report`], as JSON).
    Diagnose,
    /// The web console's document ([`slice_api::console::Model`], as JSON).
    Console,
}

/// Where a command for a pod runs ([`super::ControlPlane::pod_context`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodContext {
    pub netns: PathBuf,
    pub resolv_conf: PathBuf,
}

/// Its answer: `ok`, and a message (the error, or what was asked for).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
}

/// The socket of lab `prefix`.
#[must_use]
pub fn socket(prefix: &str) -> PathBuf {
    Path::new(crate::LAB_BASE).join(prefix).join(SOCKET)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Builds lab `prefix` from `manifest`, then serves requests until SIGTERM or SIGINT. On a
/// signal it exits leaving the lab as it is (`slicectl lab down` removes it); when building
/// fails, the lab is torn down.
///
/// # Errors
/// When the lab cannot be built or the socket cannot be bound.
pub fn serve(prefix: &str, manifest: &Manifest) -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("installing the signal handlers")?;
    }
    let mut lab = Lab::new(prefix)?;
    crate::cleanup::record_pod_process(lab.root(), i32::try_from(std::process::id()).context("pid")?)?;
    let mut cp = ControlPlane::new();
    cp.apply(&mut lab, manifest)?;
    let path = lab.root().join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    listener.set_nonblocking(true)?;
    eprintln!("slicenet lab {prefix}: control plane serving on {}", path.display());
    let mut last = Instant::now();
    while !STOP.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(&mut cp, &mut lab, stream) {
                    eprintln!("request: {e:#}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if last.elapsed() >= TICK {
                    if let Err(e) = cp.tick(&lab) {
                        eprintln!("round: {e:#}");
                    }
                    last = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("accepting a request"),
        }
    }
    eprintln!("slicenet lab {prefix}: stopping; the lab stays (slicectl lab down --prefix {prefix})");
    let _ = std::fs::remove_file(&path);
    std::mem::forget(cp);
    std::mem::forget(lab);
    Ok(())
}

fn answer(cp: &mut ControlPlane, lab: &mut Lab, stream: UnixStream) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => match handle(cp, lab, request) {
            Ok(message) => Response { ok: true, message },
            Err(e) => Response { ok: false, message: format!("{e:#}") },
        },
        Err(e) => Response { ok: false, message: format!("not a request: {e}") },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    (&stream).write_all(&out)?;
    Ok(())
}

fn handle(cp: &mut ControlPlane, lab: &mut Lab, request: Request) -> Result<String> {
    match request {
        Request::Apply { cluster: Some(cluster), text } => {
            let objects = workloads::parse_objects(&text)?;
            cp.apply_in(lab, &cluster, &objects)?;
            Ok(format!("{} object(s) applied in {cluster}", objects.len()))
        }
        Request::Delete { cluster: Some(cluster), text } => {
            let objects = workloads::parse_objects(&text)?;
            cp.delete_in(lab, &cluster, &objects)?;
            Ok(format!("{} object(s) deleted in {cluster}", objects.len()))
        }
        Request::Apply { cluster: None, text } => {
            let new = super::parse_manifest(&text)?;
            let mut manifest = current(cp);
            manifest.slices.retain(|s| !new.slices.iter().any(|n| n.name_any() == s.name_any()));
            manifest.clusters.retain(|c| !new.clusters.iter().any(|n| n.name_any() == c.name_any()));
            manifest.slices.extend(new.slices.iter().cloned());
            manifest.clusters.extend(new.clusters.iter().cloned());
            cp.apply(lab, &manifest)?;
            Ok(format!("{} SliceConfig(s), {} MemberCluster(s) applied", new.slices.len(), new.clusters.len()))
        }
        Request::Delete { cluster: None, text } => {
            let gone = super::parse_manifest(&text)?;
            let mut manifest = current(cp);
            manifest.slices.retain(|s| !gone.slices.iter().any(|g| g.name_any() == s.name_any()));
            cp.apply(lab, &manifest)?;
            Ok(format!("{} SliceConfig(s) deleted", gone.slices.len()))
        }
        Request::PodNetns { cluster, namespace, name } => {
            let (netns, resolv_conf) = cp.pod_context(lab, &cluster, &namespace, &name)?;
            Ok(serde_json::to_string(&PodContext { netns, resolv_conf })?)
        }
        Request::Status => Ok(slice_api::hub_view::render(&cp.hub_view())),
        Request::Diagnose => Ok(serde_json::to_string(&cp.diagnose_report(lab))?),
        Request::Console => Ok(serde_json::to_string(&slice_api::console::Model::from_view(&cp.hub_view()))?),
    }
}

/// The hub's SliceConfigs and MemberClusters as a manifest (their specs and annotations).
fn current(cp: &ControlPlane) -> Manifest {
    let strip = |mut v: Value| {
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
        v
    };
    Manifest {
        slices: cp
            .slices()
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .filter_map(|s| serde_json::from_value(strip(serde_json::to_value(s).ok()?)).ok())
            .collect(),
        clusters: cp
            .clusters()
            .iter()
            .filter_map(|c| serde_json::from_value(strip(serde_json::to_value(c).ok()?)).ok())
            .collect(),
    }
}

/// Sends `request` to lab `prefix`'s control plane and returns its answer.
///
/// # Errors
/// When the lab has no running control plane, or the request failed there (its message).
pub fn request(prefix: &str, request: &Request) -> Result<String> {
    let path = socket(prefix);
    let stream = UnixStream::connect(&path).with_context(|| {
        format!("no control plane for lab {prefix} at {} (start one with `slicectl lab up -f FILE`)", path.display())
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let response: Response =
        serde_json::from_str(&answer).with_context(|| format!("the control plane's answer {answer:?}"))?;
    if !response.ok {
        bail!("{}", response.message);
    }
    Ok(response.message)
}

/// Starts `slicectl lab serve --prefix PREFIX -f FILE` (`exe`) in its own session, its output
/// in the lab's `control.log`, and waits until it answers.
///
/// # Errors
/// When it cannot start, exits, or does not answer within three minutes (with its log).
pub fn start(exe: &Path, prefix: &str, file: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let root = Path::new(crate::LAB_BASE).join(prefix);
    if socket(prefix).exists() && request(prefix, &Request::Status).is_ok() {
        bail!("lab {prefix} already has a control plane (slicectl lab down --prefix {prefix} first)");
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let log_path = root.join(LOG);
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = std::process::Command::new(exe)
        .args(["lab", "serve", "--prefix", prefix, "-f"])
        .arg(file)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if request(prefix, &Request::Status).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the lab's control plane exited ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the lab's control plane did not answer within {START_TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
