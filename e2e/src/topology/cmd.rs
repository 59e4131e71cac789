//! Running external commands (`ip`, `cc`, `ctr`, `nsenter`) with errors that name the command
//! and carry its stderr.

use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `cmd` to completion and fails unless it exits 0; the error shows the command line and
/// its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", describe(cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// Runs `cmd` to completion and returns its output whatever the exit status.
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run `{}`", describe(cmd)))
}

/// `ip ARGS…`, checked.
pub(crate) fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}
