//! The `--objects FILE` source: the file is read, turned into a snapshot and stored in the
//! shared slot; it is read again every interval and a changed content replaces the snapshot.
//! A content that fails keeps the old snapshot and is reported once (not at every poll).
//!
//! Polling the content rather than watching inotify events: editors replace files by rename,
//! ConfigMap volumes swap a symlink, and a content comparison sees all of these the same way;
//! a file of objects is small, so reading it every half second costs nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::handler::SharedSnapshot;
use crate::objects;
use crate::records::{Settings, Snapshot};

/// Why a file gave no snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Objects { path: PathBuf, source: objects::Error },
}

/// The snapshot of `text` (the content of `path`).
///
/// # Errors
/// The objects do not parse (see [`objects::parse`]).
pub fn snapshot_of(path: &Path, text: &str, settings: &Settings) -> Result<Snapshot, Error> {
    let objects = objects::parse(text).map_err(|source| Error::Objects { path: path.to_owned(), source })?;
    Ok(Snapshot::build(&objects.imports, &objects.slices, settings))
}

/// Reads a file again when asked and says what changed.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    settings: Settings,
    /// What the last read found: the content, or the error's text.
    last: Option<Result<Vec<u8>, String>>,
}

/// What one poll found.
#[derive(Debug)]
pub enum Change {
    /// The content changed and builds this snapshot.
    Snapshot(Snapshot),
    /// The content changed (or became unreadable) and fails.
    Failed(Error),
}

impl Reloader {
    #[must_use]
    pub fn new(path: &Path, settings: Settings) -> Self {
        Self { path: path.to_owned(), settings, last: None }
    }

    /// Reads the file; `None` when it reads as it did last time.
    pub fn poll(&mut self) -> Option<Change> {
        let read = std::fs::read(&self.path);
        let seen = match &read {
            Ok(bytes) => Ok(bytes.clone()),
            Err(error) => Err(error.to_string()),
        };
        if self.last.as_ref() == Some(&seen) {
            return None;
        }
        self.last = Some(seen);
        let change = match read {
            Err(source) => Change::Failed(Error::Read { path: self.path.clone(), source }),
            Ok(bytes) => match String::from_utf8(bytes) {
                Err(e) => Change::Failed(Error::Read {
                    path: self.path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
                }),
                Ok(text) => match snapshot_of(&self.path, &text, &self.settings) {
                    Ok(snapshot) => Change::Snapshot(snapshot),
                    Err(error) => Change::Failed(error),
                },
            },
        };
        Some(change)
    }
}

/// Logs what a snapshot holds and what it left out; `source` is where it came from (the
/// file's path, the Kubernetes API).
pub fn log_snapshot(snapshot: &Snapshot, source: &dyn std::fmt::Display) {
    for warning in snapshot.warnings() {
        tracing::warn!(%source, "{warning}");
    }
    tracing::info!(
        %source,
        services = snapshot.services(),
        names = snapshot.names(),
        serial = snapshot.serial(),
        "records loaded"
    );
}

/// Polls `reloader` every `interval` for ever, storing each new snapshot into `shared`.
pub async fn watch(mut reloader: Reloader, shared: SharedSnapshot, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match reloader.poll() {
            None => {}
            Some(Change::Snapshot(snapshot)) => {
                log_snapshot(&snapshot, &reloader.path.display());
                shared.store(Arc::new(snapshot));
            }
            Some(Change::Failed(error)) => {
                tracing::error!("{error}; the records loaded before are still served");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_server::proto::rr::{DNSClass, LowerName, RecordType};
    use std::str::FromStr;

    const ONE: &str = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceImport\n\
                       metadata: {name: api, namespace: shop}\nspec: {type: ClusterSetIP, ips: [10.80.255.1]}\n";

    fn a_records(snapshot: &Snapshot) -> usize {
        let name = LowerName::from_str("api.shop.svc.clusterset.local.").unwrap();
        snapshot.lookup(&name, RecordType::A, DNSClass::IN).answers.len()
    }

    #[test]
    fn a_change_is_seen_once_and_a_failure_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("objects.yaml");
        let mut r = Reloader::new(&path, Settings::default());
        assert!(matches!(r.poll(), Some(Change::Failed(Error::Read { .. }))));
        assert!(r.poll().is_none(), "a missing file is reported once");
        std::fs::write(&path, ONE).unwrap();
        let Some(Change::Snapshot(s)) = r.poll() else { panic!("the file is read") };
        assert_eq!(a_records(&s), 1);
        assert!(r.poll().is_none());
        std::fs::write(&path, ONE.replace("ClusterSetIP", "Sideways")).unwrap();
        let Some(Change::Failed(e)) = r.poll() else { panic!("a bad file fails") };
        let text = e.to_string();
        assert!(text.contains("objects.yaml: document 1 (ServiceImport shop/api)"), "{text}");
        assert!(r.poll().is_none());
        std::fs::write(&path, "").unwrap();
        let Some(Change::Snapshot(s)) = r.poll() else { panic!("an empty file is no services") };
        assert_eq!(a_records(&s), 0);
    }
}
