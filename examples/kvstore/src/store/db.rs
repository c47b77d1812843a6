//! The redb database: opening it bound to the layout state, the tables every release
//! expects, the counters in `kv_meta`, and recovery after an I/O error ([`DbCell`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layout_core::binding::redb::{self as bound_redb, OpenOptions};
use layout_core::migration::BackgroundMigration;
use layout_core::LayoutVersionManager;
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase, ReadableTable, TableHandle};

use super::options::StorageBackendFactory;
use super::{DB_FILE_NAME, KV, META, META_APPLIED, META_INDEX_SYNCED, META_SNAPSHOT, OPLOG};
use crate::changes::{self, KvStamp};
use crate::error::KvError;
use crate::feature::KvFeature;

pub(super) fn read_meta(
    table: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<u64, redb::StorageError> {
    Ok(table.get(key)?.map_or(0, |g| g.value()))
}

/// Starts the value-index migration over when software that does not maintain the index
/// (an older release, after a downgrade in the middle of the migration) wrote `kv` since
/// the index was last in step with it: its applied index is above the index's
/// [`META_INDEX_SYNCED`] watermark. The partial index may then hold entries of values
/// since overwritten or deleted and miss keys written before the migration's cursor.
///
/// Runs in [`Engine::open`], before the HTTP server starts, so no dual write can move
/// the watermark first. Once `ValueIndex` is finalized no older release can start, so
/// the index is never reset then.
pub(super) fn reset_stale_index(
    lvm: &LayoutVersionManager<KvFeature>,
    migration: &BackgroundMigration,
    applied: u64,
    index_synced: u64,
) -> Result<(), KvError> {
    if !migration.is_started() || lvm.is_allowed(KvFeature::ValueIndex) || applied <= index_synced {
        return Ok(());
    }
    tracing::warn!(
        applied_index = applied,
        index_synced_through = index_synced,
        "value-index migration: kv was written without maintaining the index (an older \
         release ran after the migration started); starting the migration over"
    );
    migration.reset()?;
    Ok(())
}

/// Opens the database file `path` once its data is known to belong to `lvm`'s layout
/// state, and records the binding (`layout_core::binding::redb::open`: missing or empty
/// data next to an existing layout state, another node's data, a layout state older than
/// the data and a damaged file are refused before anything is created or written); then
/// creates the tables every release expects and returns the counters read from
/// `kv_meta`. Runs at every open and reopen.
fn open_bound(
    lvm: &LayoutVersionManager<KvFeature>,
    path: &Path,
    options: &OpenOptions,
) -> Result<(Database, Recorded), KvError> {
    let (db, _bound) = bound_redb::open(lvm, path, options)?;
    let recorded = prepare_tables(&db, path)?;
    Ok((db, recorded))
}

/// What [`prepare_tables`] read back from `kv_meta`.
struct Recorded {
    applied: u64,
    snapshot: u64,
    index_synced: u64,
}

/// Creates the tables every release expects in one write transaction and returns the
/// counters read from `kv_meta` in it. Runs right after the binding is recorded, before
/// the database is shared: nothing writes in between.
fn prepare_tables(db: &Database, path: &Path) -> Result<Recorded, KvError> {
    let txn = db.begin_write().map_err(KvError::db(path, "begin write"))?;
    let recorded = {
        txn.open_table(KV).map_err(KvError::db(path, "open kv"))?;
        txn.open_table(OPLOG)
            .map_err(KvError::db(path, "open kv_oplog"))?;
        txn.open_table(changes::COPY_MARKS)
            .map_err(KvError::db(path, "open kv_copy_marks"))?;
        sync_changes(&txn).map_err(KvError::db(path, "index kv changes"))?;
        let meta = txn
            .open_table(META)
            .map_err(KvError::db(path, "open kv_meta"))?;
        let read = |key| read_meta(&meta, key).map_err(KvError::db(path, "read kv_meta"));
        Recorded {
            applied: read(META_APPLIED)?,
            snapshot: read(META_SNAPSHOT)?,
            index_synced: read(META_INDEX_SYNCED)?,
        }
    };
    txn.commit().map_err(KvError::db(path, "commit"))?;
    Ok(recorded)
}

/// Brings `kv_versions` and `kv_changes` in step with `kv` when a write did not
/// maintain them (a store written by a release without them): a key without a stamp, or
/// whose stamp's time differs from its row's, gets a new version at its row's time; a
/// stamped live key absent from `kv` becomes a tombstone. Runs at every open, in the
/// transaction that creates the tables; a no-op when they follow `kv` already.
fn sync_changes(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut meta = txn.open_table(META)?;
    let applied = read_meta(&meta, META_APPLIED)?;
    let synced = read_meta(&meta, changes::META_CHANGES_SYNCED)?;
    let fresh = txn
        .list_tables()?
        .all(|t| t.name() != changes::VERSIONS.name());
    txn.open_table(changes::VERSIONS)?;
    txn.open_table(changes::CHANGES)?;
    if !fresh && synced >= applied {
        return Ok(());
    }
    let kv = txn.open_table(KV)?;
    let now = layout_core::clock::to_ms(std::time::SystemTime::now());
    for row in kv.iter()? {
        let (k, v) = row?;
        let (key, modified) = (k.value().to_vec(), v.value().0);
        let previous = changes::stamp_in(txn, &key)?;
        if previous.is_some_and(|p| !p.deleted && p.updated_ms == modified) {
            continue;
        }
        let stamp = KvStamp {
            version: changes::next_version(previous, modified),
            updated_ms: modified,
            deleted: false,
        };
        changes::record(txn, &key, previous, stamp)?;
    }
    let mut gone = Vec::new();
    for row in txn.open_table(changes::VERSIONS)?.iter()? {
        let (k, v) = row?;
        if !v.value().2 && kv.get(k.value())?.is_none() {
            gone.push(k.value().to_vec());
        }
    }
    for key in gone {
        let previous = changes::stamp_in(txn, &key)?;
        let stamp = KvStamp {
            version: changes::next_version(previous, now),
            updated_ms: now,
            deleted: true,
        };
        changes::record(txn, &key, previous, stamp)?;
    }
    meta.insert(changes::META_CHANGES_SYNCED, applied)?;
    Ok(())
}

/// How long a reopen waits for the transactions begun on the old database to end (it
/// must be dropped before the file is opened again) before it gives up until the next
/// request.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// How long after a failed reopen a read tries again (a write always tries: writes are
/// serialized, reads are not, and a reopen may replay redb's recovery over the file).
const READ_REOPEN_BACKOFF: Duration = Duration::from_secs(1);

/// The database, behind a handle a reopen can swap, and whether it is degraded.
///
/// After an I/O error (a full disk) redb fails every later operation of that
/// `Database` with `PreviousIo` until it is dropped (its checked backend remembers the
/// failure); reopening the file runs redb's recovery, which keeps every committed
/// transaction. So an I/O error seen on any operation ([`DbCell::observe`]) marks the
/// store degraded, and the next transaction begun through the cell (any read or write
/// request, a migration batch) first reopens the file, through the same checks as the
/// start ([`open_bound`]). While degraded, operations fail with
/// [`KvError::Degraded`] naming the first cause.
pub(crate) struct DbCell {
    db: RwLock<Option<Arc<Database>>>,
    degraded: Mutex<Option<String>>,
    /// When the last reopen failed (reads back off from it).
    reopen_failed_at: Mutex<Option<std::time::Instant>>,
    pub(super) applied: AtomicU64,
    pub(super) last_snapshot: AtomicU64,
    lvm: Arc<LayoutVersionManager<KvFeature>>,
    pub(super) path: PathBuf,
    /// How the file is opened (the test seam's storage backend, if any).
    open_options: OpenOptions,
}

impl DbCell {
    /// Opens the database in `dir` (see [`open_bound`]); also returns the value index's
    /// [`META_INDEX_SYNCED`] watermark.
    pub(super) fn open(
        lvm: Arc<LayoutVersionManager<KvFeature>>,
        dir: &Path,
        backend: Option<StorageBackendFactory>,
    ) -> Result<(Self, u64), KvError> {
        let path = dir.join(DB_FILE_NAME);
        let open_options = match backend {
            Some(factory) => OpenOptions::new().with_backend(factory),
            None => OpenOptions::new(),
        };
        let (db, recorded) = open_bound(&lvm, &path, &open_options)?;
        let cell = Self {
            db: RwLock::new(Some(Arc::new(db))),
            degraded: Mutex::new(None),
            reopen_failed_at: Mutex::new(None),
            applied: AtomicU64::new(recorded.applied),
            last_snapshot: AtomicU64::new(recorded.snapshot),
            lvm,
            path,
            open_options,
        };
        Ok((cell, recorded.index_synced))
    }

    /// Begins a read transaction (when degraded, reopening the database first unless a
    /// reopen failed less than [`READ_REOPEN_BACKOFF`] ago).
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, redb::Error> {
        Ok(self.current(false)?.begin_read()?)
    }

    /// Begins a write transaction (reopening the database first when degraded).
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, redb::Error> {
        Ok(self.current(true)?.begin_write()?)
    }

    /// When degraded, tries to reopen the database now (whatever the read backoff); a
    /// failure leaves it degraded, for the caller's own operation to report.
    pub(super) fn try_recover(&self) {
        if self.degraded.lock().is_some() {
            let _ = self.recover();
        }
    }

    /// Why the database is degraded, if it is.
    pub(crate) fn degraded(&self) -> Option<String> {
        self.degraded.lock().clone()
    }

    /// Marks the database degraded when `e` says its file failed (`Io`) or failed
    /// earlier (`PreviousIo`); the first cause is kept.
    pub(crate) fn observe(&self, context: &str, e: &redb::Error) {
        if !matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            return;
        }
        let mut degraded = self.degraded.lock();
        if degraded.is_none() {
            let cause = format!("{context}: {e}");
            tracing::error!(
                path = %self.path.display(),
                cause = %cause,
                "kvstore database degraded: writes are refused until it is reopened"
            );
            *degraded = Some(cause);
        }
    }

    fn current(&self, write: bool) -> Result<Arc<Database>, redb::Error> {
        if self.degraded.lock().is_some() {
            let backing_off = (*self.reopen_failed_at.lock())
                .is_some_and(|at| at.elapsed() < READ_REOPEN_BACKOFF);
            if !write && backing_off {
                return Err(redb::Error::PreviousIo);
            }
            return self.recover();
        }
        self.db.read().clone().ok_or(redb::Error::PreviousIo)
    }

    /// Drops the degraded database once no transaction is being begun on it and opens
    /// the file again. On failure the store stays degraded (the next call retries).
    fn recover(&self) -> Result<Arc<Database>, redb::Error> {
        let mut slot = self.db.write();
        if self.degraded.lock().is_none() {
            // Another thread recovered while this one waited.
            return slot.clone().ok_or(redb::Error::PreviousIo);
        }
        if let Some(mut old) = slot.take() {
            let deadline = std::time::Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        // Closes the file (redb writes nothing more to a failed one).
                        drop(db);
                        break;
                    }
                    Err(shared) if std::time::Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(redb::Error::PreviousIo);
                    }
                }
            }
        }
        match self.reopen() {
            Ok(db) => {
                let db = Arc::new(db);
                *slot = Some(Arc::clone(&db));
                let cause = self.degraded.lock().take();
                self.reopen_failed_at.lock().take();
                tracing::warn!(
                    path = %self.path.display(),
                    cause = cause.as_deref().unwrap_or_default(),
                    applied_index = self.applied.load(Ordering::SeqCst),
                    "kvstore database reopened: no longer degraded"
                );
                Ok(db)
            }
            Err(e) => {
                *self.reopen_failed_at.lock() = Some(std::time::Instant::now());
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "kvstore database still degraded: cannot reopen it"
                );
                Err(redb::Error::PreviousIo)
            }
        }
    }

    /// Opens the file again as [`Engine::open`] does (binding checks, redb's recovery)
    /// and reloads the counters from what is committed.
    fn reopen(&self) -> Result<Database, KvError> {
        let (db, recorded) = open_bound(&self.lvm, &self.path, &self.open_options)?;
        self.applied.store(recorded.applied, Ordering::SeqCst);
        self.last_snapshot
            .store(recorded.snapshot, Ordering::SeqCst);
        Ok(db)
    }

    /// The error for `e` met doing `context`: [`KvError::Degraded`] once degraded.
    pub(super) fn error(&self, context: &'static str, e: redb::Error) -> KvError {
        self.observe(context, &e);
        match self.degraded() {
            Some(cause) => KvError::Degraded {
                path: self.path.clone(),
                cause,
            },
            None => KvError::Database {
                path: self.path.clone(),
                context,
                source: Box::new(e),
            },
        }
    }
}
