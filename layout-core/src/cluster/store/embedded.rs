//! The embedded cluster store: in-process, persisted to one checksummed file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{CasOutcome, ClusterStore, FinalizerClaim, StoreError, Versioned};
use crate::clock::{Clock, SystemClock};
use crate::cluster::state::{KindState, CLUSTER_STATE_FORMAT};

const HEADER: &str = "layout-cluster-state";

/// The default cluster store: state held in this process and, unless in memory,
/// persisted to one file replaced atomically on every change (written to a temporary file
/// in the same directory, fsynced, renamed over, directory fsynced), like the `VERSION`
/// file. The file starts with a header line carrying the format and a CRC-32 of the rest;
/// a torn or edited file is reported as damaged and never overwritten.
///
/// One process owns the file (an exclusive lock on `<file>.lock`, held while the store
/// lives); member liveness and the finalizer claim live in memory only: after a restart
/// every member is dead until it heartbeats again, which is what liveness means. For
/// several coordinator processes or machines, use the etcd store (feature `etcd`).
///
/// ```
/// use layout_core::cluster::{ClusterStore, EmbeddedStore, KindState};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("cluster-state");
/// let store = EmbeddedStore::open(&path)?;
/// store.compare_and_swap("datanode", None, &KindState::new("datanode", 3))?;
/// drop(store);
/// let store = EmbeddedStore::open(&path)?; // a coordinator restart reads it back
/// assert_eq!(store.load("datanode")?.unwrap().state.cluster_layout_version, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct EmbeddedStore {
    file: Option<StoreFile>,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct StoreFile {
    path: PathBuf,
    /// Held open (and locked) for the store's lifetime.
    _lock: fs::File,
}

#[derive(Debug, Default)]
struct Inner {
    kinds: BTreeMap<String, StoredKind>,
    /// (kind, member) -> lease expiry, ms since the epoch.
    live: HashMap<(String, String), u64>,
    /// kind -> holder.
    finalizers: HashMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKind {
    revision: u64,
    state: KindState,
}

#[derive(Serialize, Deserialize)]
struct FileBody {
    format: u32,
    kinds: BTreeMap<String, StoredKind>,
}

impl EmbeddedStore {
    /// A store kept in memory only (tests, single-process tools).
    pub fn in_memory() -> Self {
        Self {
            file: None,
            clock: Arc::new(SystemClock),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Opens (or creates, on first write) the store persisted at `path`, taking its lock.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let location = path.display().to_string();
        let io_err = |operation, source| StoreError::Io {
            location: location.clone(),
            operation,
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io_err("create directory", e))?;
        }
        let mut lock_name = path.file_name().unwrap_or_default().to_owned();
        lock_name.push(".lock");
        let lock_path = path.with_file_name(lock_name);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("open lock file", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { location });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", e)),
        }
        let kinds = match fs::read(&path) {
            Ok(bytes) => decode(&bytes, &location)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_err("read", e)),
        };
        Ok(Self {
            file: Some(StoreFile { path, _lock: lock }),
            clock: Arc::new(SystemClock),
            inner: Mutex::new(Inner {
                kinds,
                ..Inner::default()
            }),
        })
    }

    /// Uses `clock` for member leases (tests expire them without sleeping).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The file the state is persisted to (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Persists `kinds` (when file-backed). Called with the lock held, before the change
    /// is made visible in memory.
    fn persist(&self, kinds: &BTreeMap<String, StoredKind>) -> Result<(), StoreError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let location = self.location();
        let body = serde_json::to_vec_pretty(&FileBody {
            format: CLUSTER_STATE_FORMAT,
            kinds: kinds.clone(),
        })
        .map_err(|e| StoreError::Io {
            location: location.clone(),
            operation: "encode",
            source: io::Error::other(e),
        })?;
        let mut text = format!(
            "{HEADER} format={CLUSTER_STATE_FORMAT} crc32={:08x}\n",
            crc32fast::hash(&body)
        )
        .into_bytes();
        text.extend_from_slice(&body);
        text.push(b'\n');
        replace_atomically(&file.path, &text).map_err(|(operation, source)| StoreError::Io {
            location,
            operation,
            source,
        })
    }

    fn with_kinds<R>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, StoredKind>) -> Option<R>,
    ) -> Result<Option<R>, StoreError> {
        let mut inner = self.inner.lock();
        let mut next = inner.kinds.clone();
        let Some(result) = change(&mut next) else {
            return Ok(None);
        };
        self.persist(&next)?;
        inner.kinds = next;
        Ok(Some(result))
    }
}

impl ClusterStore for EmbeddedStore {
    fn location(&self) -> String {
        match &self.file {
            Some(file) => file.path.display().to_string(),
            None => "embedded (in memory)".to_owned(),
        }
    }

    fn kinds(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.inner.lock().kinds.keys().cloned().collect())
    }

    fn load(&self, kind: &str) -> Result<Option<Versioned>, StoreError> {
        Ok(self.inner.lock().kinds.get(kind).map(|k| Versioned {
            revision: k.revision,
            state: k.state.clone(),
        }))
    }

    fn compare_and_swap(
        &self,
        kind: &str,
        expected: Option<u64>,
        state: &KindState,
    ) -> Result<CasOutcome, StoreError> {
        let swapped = self.with_kinds(|kinds| {
            let current = kinds.get(kind).map(|k| k.revision);
            if current != expected {
                return None;
            }
            let revision = current.unwrap_or(0) + 1;
            kinds.insert(
                kind.to_owned(),
                StoredKind {
                    revision,
                    state: state.clone(),
                },
            );
            Some(revision)
        })?;
        Ok(
            swapped.map_or(CasOutcome::Conflict, |revision| CasOutcome::Swapped {
                revision,
            }),
        )
    }

    fn overwrite(&self, kind: &str, state: &KindState) -> Result<u64, StoreError> {
        let revision = self.with_kinds(|kinds| {
            let revision = kinds.get(kind).map_or(0, |k| k.revision) + 1;
            kinds.insert(
                kind.to_owned(),
                StoredKind {
                    revision,
                    state: state.clone(),
                },
            );
            Some(revision)
        })?;
        Ok(revision.unwrap_or_default())
    }

    fn mark_alive(&self, kind: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let expires = self.clock.now_ms().saturating_add(ttl);
        self.inner
            .lock()
            .live
            .insert((kind.to_owned(), member.to_owned()), expires);
        Ok(())
    }

    fn live_members(&self, kind: &str) -> Result<BTreeSet<String>, StoreError> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        inner.live.retain(|_, expires| *expires > now);
        Ok(inner
            .live
            .keys()
            .filter(|(k, _)| k == kind)
            .map(|(_, m)| m.clone())
            .collect())
    }

    fn claim_finalizer(
        &self,
        kind: &str,
        holder: &str,
        _ttl: Duration,
    ) -> Result<FinalizerClaim, StoreError> {
        // In one process the claim needs no lease: it dies with the process.
        let mut inner = self.inner.lock();
        match inner.finalizers.get(kind) {
            Some(current) if current != holder => Ok(FinalizerClaim::HeldBy {
                holder: current.clone(),
            }),
            _ => {
                inner.finalizers.insert(kind.to_owned(), holder.to_owned());
                Ok(FinalizerClaim::Claimed)
            }
        }
    }

    fn release_finalizer(&self, kind: &str, holder: &str) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if inner.finalizers.get(kind).is_some_and(|h| h == holder) {
            inner.finalizers.remove(kind);
        }
        Ok(())
    }
}

fn decode(bytes: &[u8], location: &str) -> Result<BTreeMap<String, StoredKind>, StoreError> {
    let damaged = |problem: String| StoreError::Damaged {
        location: location.to_owned(),
        problem,
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| damaged("no header line".to_owned()))?;
    let header = std::str::from_utf8(&bytes[..newline])
        .map_err(|_| damaged("the header is not UTF-8".to_owned()))?;
    let body = bytes[newline + 1..]
        .strip_suffix(b"\n")
        .unwrap_or(&bytes[newline + 1..]);
    let mut fields = header.split(' ');
    if fields.next() != Some(HEADER) {
        return Err(damaged(format!("unexpected header {header:?}")));
    }
    let mut format = None;
    let mut crc = None;
    for field in fields {
        match field.split_once('=') {
            Some(("format", v)) => format = v.parse::<u32>().ok(),
            Some(("crc32", v)) => crc = u32::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    let format = format.ok_or_else(|| damaged(format!("no format in header {header:?}")))?;
    if format > CLUSTER_STATE_FORMAT {
        return Err(StoreError::UnsupportedFormat {
            location: location.to_owned(),
            found: format,
            supported: CLUSTER_STATE_FORMAT,
        });
    }
    let crc = crc.ok_or_else(|| damaged(format!("no checksum in header {header:?}")))?;
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(damaged(format!(
            "checksum mismatch: header says {crc:08x}, content has {actual:08x} (torn write or \
             edited by hand)"
        )));
    }
    let body: FileBody =
        serde_json::from_slice(body).map_err(|e| damaged(format!("unreadable content: {e}")))?;
    Ok(body.kinds)
}

fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, io::Error)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(path.file_name().unwrap_or_default());
    temp_name.push(".tmp");
    let temp = dir.join(temp_name);
    let written = (|| {
        let mut file = fs::File::create(&temp).map_err(|e| ("create temporary file", e))?;
        file.write_all(bytes)
            .map_err(|e| ("write temporary file", e))?;
        file.sync_all().map_err(|e| ("fsync temporary file", e))?;
        fs::rename(&temp, path).map_err(|e| ("rename", e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ("fsync directory", e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn compare_and_swap_checks_the_revision_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let store = EmbeddedStore::open(&path).unwrap();
        let state = KindState::new("dn", 1);
        assert_eq!(
            store.compare_and_swap("dn", None, &state).unwrap(),
            CasOutcome::Swapped { revision: 1 }
        );
        assert_eq!(
            store.compare_and_swap("dn", None, &state).unwrap(),
            CasOutcome::Conflict
        );
        let mut next = state.clone();
        next.cluster_layout_version = 2;
        assert_eq!(
            store.compare_and_swap("dn", Some(1), &next).unwrap(),
            CasOutcome::Swapped { revision: 2 }
        );
        drop(store);
        let store = EmbeddedStore::open(&path).unwrap();
        let loaded = store.load("dn").unwrap().unwrap();
        assert_eq!((loaded.revision, loaded.state), (2, next));
        assert_eq!(store.kinds().unwrap(), ["dn"]);
        // No temporary file is left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["state", "state.lock"]);
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let first = EmbeddedStore::open(&path).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        drop(first);
        EmbeddedStore::open(&path).unwrap();
    }

    #[test]
    fn a_damaged_file_is_reported_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .compare_and_swap("dn", None, &KindState::new("dn", 1))
            .unwrap();
        drop(store);
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.len() - 5;
        bytes[at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(
            matches!(&err, StoreError::Damaged { problem, .. } if problem.contains("checksum")),
            "{err}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn liveness_expires_with_the_clock_and_claims_are_exclusive() {
        let clock = Arc::new(ManualClock::at_ms(1_000));
        let store = EmbeddedStore::in_memory().with_clock(clock.clone());
        store.mark_alive("dn", "a", Duration::from_secs(2)).unwrap();
        store.mark_alive("dn", "b", Duration::from_secs(5)).unwrap();
        clock.advance(Duration::from_secs(3));
        assert_eq!(
            store
                .live_members("dn")
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            ["b"]
        );
        let ttl = Duration::from_secs(1);
        assert_eq!(
            store.claim_finalizer("dn", "c1", ttl).unwrap(),
            FinalizerClaim::Claimed
        );
        assert_eq!(
            store.claim_finalizer("dn", "c2", ttl).unwrap(),
            FinalizerClaim::HeldBy {
                holder: "c1".into()
            }
        );
        store.release_finalizer("dn", "c2").unwrap();
        store.release_finalizer("dn", "c1").unwrap();
        assert_eq!(
            store.claim_finalizer("dn", "c2", ttl).unwrap(),
            FinalizerClaim::Claimed
        );
    }
}
