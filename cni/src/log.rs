//! Log lines for people: to the config's `logFile`, or stderr. Never stdout, which carries only
//! the protocol.

use std::io::Write;
use std::path::PathBuf;

/// Where log lines go.
#[derive(Debug, Clone, Default)]
pub struct Log {
    file: Option<PathBuf>,
}

impl Log {
    /// Logs to `file` when set, else to stderr.
    pub fn new(file: Option<PathBuf>) -> Self {
        Self { file }
    }

    /// Writes one line; a log that cannot be written is not worth failing the command for.
    pub fn info(&self, line: &str) {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let text = format!("{stamp:.3} slice-cni[{}]: {line}\n", std::process::id());
        match &self.file {
            Some(path) => {
                if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                    let _ = f.write_all(text.as_bytes());
                }
            }
            None => {
                let _ = std::io::stderr().write_all(text.as_bytes());
            }
        }
    }
}
