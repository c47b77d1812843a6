//! The engine: table `kv` and its companions in one redb database, the write path (op
//! log, applied index, dual-write to the value index), the read path (TTL, encodings),
//! [`Preparable`], and [`KvStore`] around it with its HTTP server.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layout_core::action::RegistryError;
use layout_core::admin::WireMigrationState;
use layout_core::binding::redb::{self as bound_redb, OpenOptions};
use layout_core::clock::{Clock, SystemClock};
use layout_core::durable;
use layout_core::migration::{
    BackgroundMigration, BatchEvent, DualWrite, MigrationControl, MigrationState, MigrationTuning,
};
use layout_core::prepare::PrepareOptions;
use layout_core::StepError;
use layout_core::{
    disallowed_until, ActionContext, ActionError, ActionRegistry, LayoutAware, LayoutFeature,
    LayoutVersionManager, Phase, Preparable, PrepareController,
};
use parking_lot::{Mutex, RwLock};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};

use super::changes::{
    self, KvChange, KvChangeCursor, KvChangesPage, KvCopyOutcome, KvCopyWrite, KvStamp,
};
use super::cluster::{ClusterRoutes, FencedReads, NodeFence};
use super::codec::{decode_any, Codecs};
use super::error::KvError;
use super::feature::KvFeature;
use super::http::{DataApiSettings, HttpServer};
use super::index::{index_key, IndexStore, INDEX, INDEX_TOMBSTONES};

/// Table `kv`: key -> (modified ms, value record).
pub(crate) const KV: TableDefinition<'static, &'static [u8], (u64, &'static [u8])> =
    TableDefinition::new("kv");
/// Table `kv_expiry` (`ExpiringValues`): key -> expires-at ms.
pub(crate) const EXPIRY: TableDefinition<'static, &'static [u8], u64> =
    TableDefinition::new("kv_expiry");
/// Table `kv_meta`: counters (applied index, last snapshot index, log purged through,
/// value index synced through).
pub(crate) const META: TableDefinition<'static, &'static str, u64> =
    TableDefinition::new("kv_meta");
/// Table `kv_oplog`: applied index -> the write (JSON), until purged by prepare.
const OPLOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("kv_oplog");

pub(crate) const META_APPLIED: &str = "applied_index";
/// The applied index through which `kv_by_value` follows `kv`: written, in the same
/// transaction, by every write that maintains the index and by every batch of its
/// migration. Software without `ValueIndex` (an older release) never writes it, so an
/// applied index above it means someone wrote `kv` without maintaining the index.
pub(crate) const META_INDEX_SYNCED: &str = "index_synced_through";
const META_SNAPSHOT: &str = "last_snapshot_index";
const META_PURGED: &str = "log_purged_through";

/// The database file in the data directory.
pub const DB_FILE_NAME: &str = "kv.redb";
/// The directory of snapshots in the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// The items of a list page when the request names no `limit`.
pub const DEFAULT_LIST_LIMIT: usize = 1_000;
/// The largest `limit` a list page may ask for (a larger one is refused, 400).
pub const MAX_LIST_LIMIT: usize = 10_000;
/// The byte budget of a list page: a page stops before the item that would take the
/// sum of its keys and values over it, so a page holds at most this much unless its
/// only item is larger (a page always holds at least one item when one follows).
pub const MAX_LIST_PAGE_BYTES: usize = 1 << 20;

/// Options of [`KvStore::open`].
#[derive(Clone)]
pub struct KvOptions {
    /// Where the HTTP API listens (default `127.0.0.1:0`: loopback, an ephemeral port).
    pub listen: SocketAddr,
    /// Keys per batch of the value-index migration (default 10,000).
    pub migration_batch: usize,
    /// The most rows per second the value-index migration copies (default: no limit).
    pub migration_max_rows_per_sec: Option<u64>,
    /// The foreground-latency budget of the value-index migration (default: none): it
    /// waits between batches while the 99th percentile of the puts' latency is over it
    /// (see `layout_core::migration::MigrationTuning`).
    pub migration_latency_budget: Option<Duration>,
    /// The clock TTLs are measured with (default: the system clock).
    pub clock: Arc<dyn Clock>,
    /// The largest request body accepted, in bytes (default 1 MiB).
    pub max_body_bytes: usize,
    /// How long a client may take to send a whole request (default 10 s).
    pub request_timeout: Duration,
    /// How long prepare waits for the log to be applied and flushed (default 60 s).
    pub prepare_timeout: Duration,
    /// Called at each step of the value-index migration (in the migration's thread,
    /// after a batch commits, outside any lock): for tests that write while it runs.
    pub index_batch_hook: Option<IndexBatchHook>,
    /// A test seam, not for production: makes the redb storage backend of the database
    /// file from the opened file, each time the store opens or reopens it (default: none,
    /// redb's own file backend). Tests wrap `redb::backends::FileBackend` to inject I/O
    /// errors (a full disk) without filling a disk.
    #[doc(hidden)]
    pub storage_backend: Option<StorageBackendFactory>,
}

/// A hook on the value-index migration; see [`KvOptions::index_batch_hook`].
pub type IndexBatchHook = Arc<dyn Fn(&BatchEvent) + Send + Sync>;

/// A test seam: makes the storage backend of the database file; see
/// [`KvOptions::storage_backend`] (the library's
/// [`BackendFactory`](layout_core::binding::redb::BackendFactory)).
#[doc(hidden)]
pub type StorageBackendFactory = layout_core::binding::redb::BackendFactory;

impl Default for KvOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            migration_batch: layout_core::migration::DEFAULT_BATCH_SIZE,
            migration_max_rows_per_sec: None,
            migration_latency_budget: None,
            clock: Arc::new(SystemClock),
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(10),
            prepare_timeout: Duration::from_secs(60),
            index_batch_hook: None,
            storage_backend: None,
        }
    }
}

impl KvOptions {
    /// Sets [`listen`](Self::listen).
    #[must_use]
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// Sets [`migration_batch`](Self::migration_batch).
    #[must_use]
    pub fn with_migration_batch(mut self, batch: usize) -> Self {
        self.migration_batch = batch.max(1);
        self
    }

    /// Sets [`migration_max_rows_per_sec`](Self::migration_max_rows_per_sec).
    #[must_use]
    pub fn with_migration_max_rows_per_sec(mut self, rows_per_sec: Option<u64>) -> Self {
        self.migration_max_rows_per_sec = rows_per_sec;
        self
    }

    /// Sets [`migration_latency_budget`](Self::migration_latency_budget).
    #[must_use]
    pub fn with_migration_latency_budget(mut self, budget: Option<Duration>) -> Self {
        self.migration_latency_budget = budget;
        self
    }

    /// Sets [`clock`](Self::clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets [`index_batch_hook`](Self::index_batch_hook).
    #[must_use]
    pub fn with_index_batch_hook(mut self, hook: IndexBatchHook) -> Self {
        self.index_batch_hook = Some(hook);
        self
    }

    /// Sets [`storage_backend`](Self::storage_backend) (a test seam).
    #[doc(hidden)]
    #[must_use]
    pub fn with_storage_backend(mut self, factory: StorageBackendFactory) -> Self {
        self.storage_backend = Some(factory);
        self
    }

    /// Sets [`max_body_bytes`](Self::max_body_bytes).
    #[must_use]
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }
}

impl fmt::Debug for KvOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvOptions")
            .field("listen", &self.listen)
            .field("migration_batch", &self.migration_batch)
            .field(
                "migration_max_rows_per_sec",
                &self.migration_max_rows_per_sec,
            )
            .field("migration_latency_budget", &self.migration_latency_budget)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("prepare_timeout", &self.prepare_timeout)
            .finish_non_exhaustive()
    }
}

/// Figures of the value-index migration (`ValueIndex`'s `OnFinalize` action).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationFigures {
    /// `not started`, `running`, `paused`, `interrupted` or `complete`.
    pub state: WireMigrationState,
    /// Rows of `kv` done (over all runs).
    pub rows_done: u64,
    /// Rows in `kv`, counted when the current run started (kept in the checkpoint, so
    /// known at once after a restart, and never below `rows_done`); `None` only before
    /// the migration started.
    pub rows_total: Option<u64>,
    /// Batches committed (over all runs).
    pub batches: u64,
    /// Runs started (1 + resumes).
    pub runs: u32,
    /// How long the migration has been running, over all runs, on the store's clock, in
    /// ms; the time the node was down is not counted.
    pub elapsed_ms: u64,
    /// Whether the copy is complete.
    pub complete: bool,
    /// Keys per batch now.
    #[serde(default)]
    pub batch_size: usize,
    /// The rate ceiling now, if any.
    #[serde(default)]
    pub max_rows_per_sec: Option<u64>,
    /// The foreground-latency budget now, in ms, if any.
    #[serde(default)]
    pub latency_budget_ms: Option<u64>,
    /// The wait the latency budget adds before each batch now, in ms.
    #[serde(default)]
    pub latency_delay_ms: u64,
}

impl MigrationFigures {
    /// [`elapsed_ms`](Self::elapsed_ms) as a duration.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.elapsed_ms)
    }
}

/// What `GET /status` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStatus {
    /// The software layout version.
    pub slv: u32,
    /// The metadata layout version.
    pub mlv: u32,
    /// Whether MLV < SLV.
    pub pre_finalized: bool,
    /// Whether the write gate is up (preparing or prepared).
    pub prepared: bool,
    /// The prepare index, when prepared.
    #[serde(default)]
    pub prepare_index: Option<u64>,
    /// Rows in table `kv` (expired ones included until overwritten or deleted).
    pub keys: u64,
    /// The last applied write's index.
    #[serde(default)]
    pub applied_index: u64,
    /// The value encoding puts write now (`v0-json` or `v3-compact`).
    #[serde(default)]
    pub encoding: String,
    /// The value-index migration, when the software knows `ValueIndex`.
    #[serde(default)]
    pub index_migration: Option<MigrationFigures>,
    /// Why the database is degraded (a failed write to its file: writes are refused
    /// with 503 `degraded` until a reopen succeeds), or `None` when it is healthy. While
    /// degraded, [`keys`](Self::keys) is the last count read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Why this member node is fenced (the coordinator's refusal: writes are refused
    /// with 503 `fenced` until the coordinator accepts it again), or `None` when it is
    /// not (a single node, a coordinator, an accepted member, a member that cannot reach
    /// its coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

/// A key and its value, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvItem {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// One page of a list (`GET /kv?prefix=P&after=K&limit=N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPage {
    /// The live items of the page, in key order.
    pub items: Vec<KvItem>,
    /// When more keys with the prefix follow: the last key this page read, to pass as
    /// `after` for the next page. `None` (`null`): the list is complete. A page may
    /// hold fewer items than its limit (expired values are skipped but counted;
    /// the byte budget) and still have a `next`.
    #[serde(default)]
    pub next: Option<String>,
}

/// One page of the keys holding a value (`GET /by-value?value=V&after=K&limit=N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvKeysPage {
    /// The keys of the page holding the value, in key order.
    pub keys: Vec<String>,
    /// As [`KvPage::next`].
    #[serde(default)]
    pub next: Option<String>,
}

/// A value read, with its expiry if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// When it expires (ms since the epoch, on the store's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// One write, as applied and logged in `kv_oplog`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Put {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    Delete {
        key: String,
    },
    /// A write copied from another store (`POST /copy`): keeps the given version and
    /// update time; `value: None` deletes.
    Copy {
        key: String,
        #[serde(default)]
        value: Option<String>,
        version: u64,
        updated_ms: u64,
    },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Copy { key, .. } => key,
        }
    }

    /// The value the key holds after the write (`None`: deleted).
    fn new_value(&self) -> Option<&str> {
        match self {
            Op::Put { value, .. } => Some(value),
            Op::Copy { value, .. } => value.as_deref(),
            Op::Delete { .. } => None,
        }
    }

    /// The modified time of the key's row: now, or the time a copied write carries.
    fn row_ms(&self, now: u64) -> u64 {
        match self {
            Op::Copy { updated_ms, .. } => *updated_ms,
            _ => now,
        }
    }
}

/// The value-index migration of this process.
struct IndexMigration {
    store: Arc<IndexStore>,
    migration: BackgroundMigration,
    routing: DualWrite<KvFeature>,
    control: MigrationControl,
}

/// The engine: the database and the write/read paths.
pub(crate) struct Engine {
    lvm: Arc<LayoutVersionManager<KvFeature>>,
    db: Arc<DbCell>,
    path: PathBuf,
    dir: PathBuf,
    codecs: Codecs,
    clock: Arc<dyn Clock>,
    write_lock: Mutex<()>,
    /// The last row count of `kv` read, for `/status` while degraded.
    last_keys: AtomicU64,
    index: Option<IndexMigration>,
}

/// The engine and its prepare controller: what the HTTP server and actions use.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) prepare: Arc<PrepareController>,
    /// The `/cluster/...` routes, on a node that runs the cluster coordinator.
    pub(crate) cluster: Mutex<Option<Arc<dyn ClusterRoutes>>>,
    /// A member node's fence (set once, when its cluster part starts).
    pub(crate) fence: std::sync::OnceLock<NodeFence>,
}

impl LayoutAware<KvFeature> for Shared {
    fn layout_manager(&self) -> &LayoutVersionManager<KvFeature> {
        &self.engine.lvm
    }
}

fn read_meta(
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
fn reset_stale_index(
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
    applied: AtomicU64,
    last_snapshot: AtomicU64,
    lvm: Arc<LayoutVersionManager<KvFeature>>,
    path: PathBuf,
    /// How the file is opened (the test seam's storage backend, if any).
    open_options: OpenOptions,
}

impl DbCell {
    /// Opens the database in `dir` (see [`open_bound`]); also returns the value index's
    /// [`META_INDEX_SYNCED`] watermark.
    fn open(
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
    fn try_recover(&self) {
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
    fn error(&self, context: &'static str, e: redb::Error) -> KvError {
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

impl Engine {
    fn open(
        lvm: Arc<LayoutVersionManager<KvFeature>>,
        dir: &Path,
        options: &KvOptions,
    ) -> Result<Self, KvError> {
        let (db, index_synced) =
            DbCell::open(Arc::clone(&lvm), dir, options.storage_backend.clone())?;
        let db = Arc::new(db);
        let path = db.path.clone();
        remove_stale_snapshot_temps(&dir.join(SNAPSHOT_DIR))?;
        let applied = db.applied.load(Ordering::SeqCst);
        let codecs = Codecs::new(&lvm).map_err(|reason| KvError::Corrupt {
            key: String::new(),
            reason: format!("cannot build the value codecs: {reason}"),
        })?;
        let index = if lvm.software_layout_version() >= KvFeature::ValueIndex.layout_version() {
            let store = Arc::new(IndexStore {
                db: Arc::clone(&db),
                path: path.clone(),
                software_layout_version: lvm.software_layout_version(),
            });
            let migration = BackgroundMigration::builder(
                super::index::MIGRATION_NAME,
                store.clone(),
                store.clone(),
            )
            .tuning(
                MigrationTuning::new(options.migration_batch.max(1))
                    .with_max_rows_per_sec(options.migration_max_rows_per_sec)
                    .with_latency_budget(options.migration_latency_budget),
            )
            .clock(Arc::clone(&options.clock));
            let migration = match &options.index_batch_hook {
                Some(hook) => {
                    let hook = Arc::clone(hook);
                    migration.on_batch(move |event| hook(event))
                }
                None => migration,
            }
            .open()?;
            reset_stale_index(&lvm, &migration, applied, index_synced)?;
            let routing = migration.dual_write(Arc::clone(&lvm), KvFeature::ValueIndex);
            let control = migration.control();
            Some(IndexMigration {
                store,
                migration,
                routing,
                control,
            })
        } else {
            None
        };
        Ok(Self {
            lvm,
            db,
            path,
            dir: dir.to_owned(),
            codecs,
            clock: Arc::clone(&options.clock),
            write_lock: Mutex::new(()),
            last_keys: AtomicU64::new(0),
            index,
        })
    }

    /// The error for a redb error met doing `context`; an I/O error degrades the store
    /// (see [`DbCell`]).
    fn db_err<'a, E: Into<redb::Error>>(
        &'a self,
        context: &'static str,
    ) -> impl FnOnce(E) -> KvError + 'a {
        move |e| self.db.error(context, e.into())
    }

    fn slv(&self) -> u32 {
        self.lvm.software_layout_version()
    }

    fn ttl_on(&self) -> bool {
        self.lvm.is_allowed(KvFeature::ExpiringValues)
    }

    /// Applies `op` in one transaction: the row, its expiry, its index entries, the op
    /// log and the applied index. The caller holds the write lock and a write permit.
    fn apply(&self, op: &Op) -> Result<(u64, bool), KvError> {
        let scope = self.index.as_ref().map(|i| i.routing.begin());
        let write_index = scope
            .as_ref()
            .is_some_and(layout_core::migration::WriteScope::writes_new);
        let tombstone = scope
            .as_ref()
            .is_some_and(layout_core::migration::WriteScope::needs_tombstone);
        let now = self.clock.now_ms();
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        let (index, existed) = {
            let mut kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
            let (key, new_value) = (op.key(), op.new_value());
            let previous = match new_value {
                Some(value) => {
                    let record = self.codecs.for_put(&self.lvm).encode(value);
                    kv.insert(key.as_bytes(), (op.row_ms(now), record.as_slice()))
                        .map_err(self.db_err("insert kv"))?
                        .map(|g| g.value().1.to_vec())
                }
                None => kv
                    .remove(key.as_bytes())
                    .map_err(self.db_err("remove kv"))?
                    .map(|g| g.value().1.to_vec()),
            };
            self.record_change(&txn, op, previous.is_some(), now)?;
            if write_index {
                let mut idx = txn.open_table(INDEX).map_err(self.db_err("open index"))?;
                if let Some(old) = &previous {
                    let old_value =
                        decode_any(old, self.slv()).map_err(|reason| KvError::Corrupt {
                            key: key.to_owned(),
                            reason,
                        })?;
                    let entry = index_key(&old_value, key);
                    idx.remove(entry.as_slice())
                        .map_err(self.db_err("remove index entry"))?;
                    if tombstone {
                        let mut tombs = txn
                            .open_table(INDEX_TOMBSTONES)
                            .map_err(self.db_err("open tombstones"))?;
                        tombs
                            .insert(entry.as_slice(), ())
                            .map_err(self.db_err("insert tombstone"))?;
                    }
                }
                if let Some(value) = new_value {
                    idx.insert(index_key(value, key).as_slice(), ())
                        .map_err(self.db_err("insert index entry"))?;
                }
            }
            if self.ttl_on() {
                let mut expiry = txn
                    .open_table(EXPIRY)
                    .map_err(self.db_err("open kv_expiry"))?;
                match op {
                    Op::Put {
                        expires_at_ms: Some(at),
                        ..
                    } => {
                        expiry
                            .insert(key.as_bytes(), *at)
                            .map_err(self.db_err("insert kv_expiry"))?;
                    }
                    _ => {
                        expiry
                            .remove(key.as_bytes())
                            .map_err(self.db_err("remove kv_expiry"))?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            let index = read_meta(&meta, META_APPLIED).map_err(self.db_err("read kv_meta"))? + 1;
            meta.insert(META_APPLIED, index)
                .map_err(self.db_err("write kv_meta"))?;
            meta.insert(changes::META_CHANGES_SYNCED, index)
                .map_err(self.db_err("write kv_meta"))?;
            // After the record was encoded: never below the layout it was written in.
            bound_redb::record_written_at(&txn, &self.lvm)
                .map_err(self.db_err("record the layout binding"))?;
            if write_index {
                // This write kept the index in step: it is synced through `index`.
                meta.insert(META_INDEX_SYNCED, index)
                    .map_err(self.db_err("write kv_meta"))?;
            }
            let mut log = txn
                .open_table(OPLOG)
                .map_err(self.db_err("open kv_oplog"))?;
            let entry = serde_json::to_vec(op).map_err(|e| KvError::BadRequest(e.to_string()))?;
            log.insert(index, entry.as_slice())
                .map_err(self.db_err("append kv_oplog"))?;
            (index, previous.is_some())
        };
        txn.commit().map_err(self.db_err("commit"))?;
        self.db.applied.store(index, Ordering::SeqCst);
        Ok((index, existed))
    }

    /// Records the version, update time and tombstone flag `op` gives its key, and its
    /// row in the change index (`existed`: the key had a row in `kv` before `op`).
    fn record_change(
        &self,
        txn: &redb::WriteTransaction,
        op: &Op,
        existed: bool,
        now: u64,
    ) -> Result<(), KvError> {
        let key = op.key().as_bytes();
        let before = changes::stamp_in(txn, key).map_err(self.db_err("read kv_versions"))?;
        let stamp = match op {
            Op::Copy {
                version,
                updated_ms,
                value,
                ..
            } => KvStamp {
                version: *version,
                updated_ms: *updated_ms,
                deleted: value.is_none(),
            },
            // A delete of an absent key changes nothing.
            Op::Delete { .. } if !existed => return Ok(()),
            Op::Delete { .. } | Op::Put { .. } => KvStamp {
                version: changes::next_version(before, now),
                updated_ms: now,
                deleted: matches!(op, Op::Delete { .. }),
            },
        };
        changes::record(txn, key, before, stamp).map_err(self.db_err("record the change"))
    }

    /// The live value of `key` (expired values are absent), read in `txn`.
    fn read_entry(
        &self,
        txn: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<KvEntry>, KvError> {
        let kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
        let Some(record) = kv
            .get(key.as_bytes())
            .map_err(self.db_err("read kv"))?
            .map(|g| g.value().1.to_vec())
        else {
            return Ok(None);
        };
        let expires_at_ms = self.expiry_of(txn, key)?;
        if expires_at_ms.is_some_and(|at| at <= self.clock.now_ms()) {
            return Ok(None);
        }
        let value = self
            .codecs
            .for_get(&self.lvm)
            .decode(&record)
            .map_err(|reason| KvError::Corrupt {
                key: key.to_owned(),
                reason,
            })?;
        Ok(Some(KvEntry {
            key: key.to_owned(),
            value,
            expires_at_ms,
        }))
    }

    fn expiry_of(&self, txn: &redb::ReadTransaction, key: &str) -> Result<Option<u64>, KvError> {
        if !self.ttl_on() {
            return Ok(None);
        }
        match txn.open_table(EXPIRY) {
            Ok(t) => Ok(t
                .get(key.as_bytes())
                .map_err(self.db_err("read kv_expiry"))?
                .map(|g| g.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.db_err("open kv_expiry")(e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        self.read_entry(&txn, key)
    }

    /// One page of the live items whose key starts with `prefix` and sorts after
    /// `after` (from the first such key without it), read in one read transaction by a
    /// range that starts there: at most `limit` rows of `kv` are read, and the page stops
    /// before the item that would take its keys and values over
    /// [`MAX_LIST_PAGE_BYTES`]. `next` is the last key read when a key with the prefix
    /// follows it.
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
        let expiry = if self.ttl_on() {
            match txn.open_table(EXPIRY) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(self.db_err("open kv_expiry")(e)),
            }
        } else {
            None
        };
        let now = self.clock.now_ms();
        let codec = self.codecs.for_get(&self.lvm);
        let start = match after {
            Some(after) => Bound::Excluded(after.as_bytes()),
            None => Bound::Included(prefix.as_bytes()),
        };
        let mut page = KvPage {
            items: Vec::new(),
            next: None,
        };
        let (mut read, mut bytes) = (0, 0);
        let mut last: Option<String> = None;
        for row in kv
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(self.db_err("range kv"))?
        {
            let (k, v) = row.map_err(self.db_err("read kv"))?;
            let raw_key = k.value();
            if !raw_key.starts_with(prefix.as_bytes()) {
                break;
            }
            if read == limit {
                page.next = last;
                break;
            }
            let key = String::from_utf8_lossy(raw_key).into_owned();
            let expires_at_ms = match &expiry {
                Some(t) => t
                    .get(raw_key)
                    .map_err(self.db_err("read kv_expiry"))?
                    .map(|g| g.value()),
                None => None,
            };
            if expires_at_ms.is_none_or(|at| at > now) {
                let value = codec
                    .decode(v.value().1)
                    .map_err(|reason| KvError::Corrupt {
                        key: key.clone(),
                        reason,
                    })?;
                let size = key.len() + value.len();
                if !page.items.is_empty() && bytes + size > MAX_LIST_PAGE_BYTES {
                    page.next = last;
                    break;
                }
                bytes += size;
                page.items.push(KvItem {
                    key: key.clone(),
                    value,
                });
            }
            read += 1;
            last = Some(key);
        }
        Ok(page)
    }

    /// One page of changes (live keys and tombstones) in `(updated_ms, key)` order from
    /// `since_ms` (inclusive), after `after`, at most `limit` rows and about
    /// [`MAX_LIST_PAGE_BYTES`], read in one read transaction; `next` whenever more follow.
    fn changes_page(
        &self,
        since_ms: u64,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<KvChangesPage, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
        let purged_through_ms =
            read_meta(&meta, changes::META_PURGED_THROUGH).map_err(self.db_err("read kv_meta"))?;
        let start_ms = after.map_or(since_ms, |(ms, _)| ms);
        if start_ms > 0 && start_ms < purged_through_ms {
            return Err(KvError::BadRequest(format!(
                "changes from {start_ms} ms on are incomplete: tombstones deleted before                  {purged_through_ms} ms were purged; a copy resuming from there would miss                  deletes (copy into an empty destination from the start)"
            )));
        }
        let mut page = KvChangesPage {
            items: Vec::new(),
            next: None,
            purged_through_ms,
        };
        let table = txn
            .open_table(changes::CHANGES)
            .map_err(self.db_err("open kv_changes"))?;
        let versions = txn
            .open_table(changes::VERSIONS)
            .map_err(self.db_err("open kv_versions"))?;
        let start = match after {
            Some((ms, key)) => Bound::Excluded((ms, key.as_bytes())),
            None => Bound::Included((since_ms, &b""[..])),
        };
        let (mut read, mut bytes) = (0, 0);
        let mut last: Option<KvChangeCursor> = None;
        for row in table
            .range::<(u64, &[u8])>((start, Bound::Unbounded))
            .map_err(self.db_err("range kv_changes"))?
        {
            let (k, _) = row.map_err(self.db_err("read kv_changes"))?;
            let (updated_ms, raw_key) = k.value();
            if read == limit {
                page.next = last;
                break;
            }
            let key = String::from_utf8_lossy(raw_key).into_owned();
            let (version, _, deleted) = versions
                .get(raw_key)
                .map_err(self.db_err("read kv_versions"))?
                .map(|g| g.value())
                .ok_or_else(|| KvError::Corrupt {
                    key: key.clone(),
                    reason: "a change without a version".into(),
                })?;
            let value = if deleted {
                None
            } else {
                self.read_entry(&txn, &key)?.map(|e| e.value)
            };
            let size = key.len() + value.as_ref().map_or(0, String::len);
            if !page.items.is_empty() && bytes + size > MAX_LIST_PAGE_BYTES {
                page.next = last;
                break;
            }
            bytes += size;
            page.items.push(KvChange {
                deleted: value.is_none(),
                key: key.clone(),
                value,
                version,
                updated_ms,
            });
            read += 1;
            last = Some(KvChangeCursor { updated_ms, key });
        }
        Ok(page)
    }

    /// The stamp of `key` (its version, update time, and whether it is a tombstone).
    fn stamp(&self, key: &str) -> Result<Option<KvStamp>, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let versions = txn
            .open_table(changes::VERSIONS)
            .map_err(self.db_err("open kv_versions"))?;
        Ok(versions
            .get(key.as_bytes())
            .map_err(self.db_err("read kv_versions"))?
            .map(|g| {
                let (version, updated_ms, deleted) = g.value();
                KvStamp {
                    version,
                    updated_ms,
                    deleted,
                }
            }))
    }

    /// Removes the tombstones deleted before `before_ms`; returns how many.
    fn purge_tombstones(&self, before_ms: u64) -> Result<u64, KvError> {
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        let mut purged = 0;
        {
            let mut table = txn
                .open_table(changes::CHANGES)
                .map_err(self.db_err("open kv_changes"))?;
            let mut versions = txn
                .open_table(changes::VERSIONS)
                .map_err(self.db_err("open kv_versions"))?;
            let mut doomed = Vec::new();
            for row in table
                .range::<(u64, &[u8])>(..(before_ms, &b""[..]))
                .map_err(self.db_err("range kv_changes"))?
            {
                let (k, _) = row.map_err(self.db_err("read kv_changes"))?;
                let (ms, key) = k.value();
                let deleted = versions
                    .get(key)
                    .map_err(self.db_err("read kv_versions"))?
                    .is_some_and(|g| g.value().2);
                if deleted {
                    doomed.push((ms, key.to_vec()));
                }
            }
            for (ms, key) in doomed {
                table
                    .remove((ms, key.as_slice()))
                    .map_err(self.db_err("remove kv_changes"))?;
                versions
                    .remove(key.as_slice())
                    .map_err(self.db_err("remove kv_versions"))?;
                purged += 1;
            }
            let mut meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            let through = read_meta(&meta, changes::META_PURGED_THROUGH)
                .map_err(self.db_err("read kv_meta"))?;
            meta.insert(changes::META_PURGED_THROUGH, through.max(before_ms))
                .map_err(self.db_err("write kv_meta"))?;
        }
        txn.commit().map_err(self.db_err("commit"))?;
        Ok(purged)
    }

    /// The copy mark `name`, as saved.
    fn copy_mark(&self, name: &str) -> Result<Option<String>, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let marks = txn
            .open_table(changes::COPY_MARKS)
            .map_err(self.db_err("open kv_copy_marks"))?;
        Ok(marks
            .get(name)
            .map_err(self.db_err("read kv_copy_marks"))?
            .map(|g| g.value().to_owned()))
    }

    fn set_copy_mark(&self, name: &str, mark: &str) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        txn.open_table(changes::COPY_MARKS)
            .map_err(self.db_err("open kv_copy_marks"))?
            .insert(name, mark)
            .map_err(self.db_err("write kv_copy_marks"))?;
        txn.commit().map_err(self.db_err("commit"))?;
        Ok(())
    }

    /// One page of the live keys holding `value` that sort after `after`, read from the
    /// index by a range that starts there; bounded as [`Engine::list_page`] is (by the
    /// keys' bytes).
    fn find_by_value_page(
        &self,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvKeysPage, KvError> {
        let mut page = KvKeysPage {
            keys: Vec::new(),
            next: None,
        };
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let idx = match txn.open_table(INDEX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(page),
            Err(e) => return Err(self.db_err("open index")(e)),
        };
        let prefix = index_key(value, "");
        let cursor = after.map(|after| index_key(value, after));
        let start = match &cursor {
            Some(cursor) => Bound::Excluded(cursor.as_slice()),
            None => Bound::Included(prefix.as_slice()),
        };
        let (mut read, mut bytes) = (0, 0);
        let mut last: Option<String> = None;
        for row in idx
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(self.db_err("range index"))?
        {
            let (k, _) = row.map_err(self.db_err("read index"))?;
            let Some(key) = k.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            if read == limit {
                page.next = last;
                break;
            }
            let key = String::from_utf8_lossy(key).into_owned();
            if self.read_entry(&txn, &key)?.is_some() {
                if !page.keys.is_empty() && bytes + key.len() > MAX_LIST_PAGE_BYTES {
                    page.next = last;
                    break;
                }
                bytes += key.len();
                page.keys.push(key.clone());
            }
            read += 1;
            last = Some(key);
        }
        Ok(page)
    }

    fn index_entries(&self) -> Result<Vec<(String, String)>, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let idx = match txn.open_table(INDEX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.db_err("open index")(e)),
        };
        let mut entries = Vec::new();
        for item in idx.iter().map_err(self.db_err("iterate index"))? {
            let (k, _) = item.map_err(self.db_err("read index"))?;
            let entry = k.value();
            let corrupt = || KvError::Corrupt {
                key: String::from_utf8_lossy(entry).into_owned(),
                reason: "malformed value-index entry".to_owned(),
            };
            let (len, rest) = entry.split_first_chunk::<4>().ok_or_else(corrupt)?;
            let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
            if rest.len() < len {
                return Err(corrupt());
            }
            let (value, key) = rest.split_at(len);
            entries.push((
                String::from_utf8_lossy(value).into_owned(),
                String::from_utf8_lossy(key).into_owned(),
            ));
        }
        Ok(entries)
    }

    fn key_count(&self) -> Result<u64, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
        let keys = kv.len().map_err(self.db_err("count kv"))?;
        self.last_keys.store(keys, Ordering::Relaxed);
        Ok(keys)
    }

    fn index_figures(&self) -> Option<MigrationFigures> {
        let index = self.index.as_ref()?;
        let progress = index.migration.progress();
        let checkpoint = layout_core::migration::MigrationSink::load_checkpoint(&*index.store)
            .ok()
            .flatten();
        let elapsed_ms = u64::try_from(progress.elapsed.as_millis()).unwrap_or(u64::MAX);
        let rows_done = checkpoint.as_ref().map_or(progress.done, |c| c.done);
        let rows_total = progress
            .total
            .or_else(|| checkpoint.as_ref().and_then(|c| c.total))
            .map(|t| t.max(rows_done));
        let complete =
            index.migration.is_complete() || checkpoint.as_ref().is_some_and(|c| c.complete);
        Some(MigrationFigures {
            state: if complete {
                MigrationState::Complete.into()
            } else {
                progress.state.into()
            },
            rows_done,
            rows_total,
            batches: checkpoint.as_ref().map_or(progress.batches, |c| c.batches),
            runs: progress.runs,
            elapsed_ms,
            complete,
            batch_size: progress.tuning.batch_size,
            max_rows_per_sec: progress.tuning.max_rows_per_sec,
            latency_budget_ms: progress
                .tuning
                .latency_budget
                .map(|b| u64::try_from(b.as_millis()).unwrap_or(u64::MAX)),
            latency_delay_ms: u64::try_from(progress.latency_delay.as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Creates table `kv_expiry` (the `ExpiringValues` first-upgrade action).
    fn create_expiry_table(&self) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        txn.open_table(EXPIRY)
            .map_err(self.db_err("create kv_expiry"))?;
        txn.commit().map_err(self.db_err("commit"))
    }

    fn has_table(&self, name: &str) -> Result<bool, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let tables = txn.list_tables().map_err(self.db_err("list tables"))?;
        let found = tables.into_iter().any(|t| t.name() == name);
        Ok(found)
    }

    fn write_snapshot(&self) -> Result<u64, KvError> {
        let snapshot_dir = self.dir.join(SNAPSHOT_DIR);
        let io = |context: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| KvError::Io {
                context,
                path,
                source,
            }
        };
        fs::create_dir_all(&snapshot_dir).map_err(io("cannot create", &snapshot_dir))?;
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let index = {
            let meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            read_meta(&meta, META_APPLIED).map_err(self.db_err("read kv_meta"))?
        };
        let final_path = snapshot_dir.join(format!("snapshot-{index:020}.jsonl"));
        // One durable replace: a temporary file (`.snapshot-<index>.jsonl.<pid>.<n>.tmp`,
        // created exclusively) written, fsynced, renamed, the directory fsynced; removed
        // on any failure (a full disk must not stay full).
        match durable::replace_with(&final_path, |file| {
            self.write_snapshot_file(&txn, index, file, &final_path)
        }) {
            Ok(_) => {}
            Err(durable::ReplaceError::Write(e)) => return Err(e),
            Err(durable::ReplaceError::Durable(e)) => {
                return Err(KvError::Io {
                    context: e.step().as_str(),
                    path: e.path().to_owned(),
                    source: e.into_io_error(),
                })
            }
        }
        drop(txn);
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        {
            let mut meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            meta.insert(META_SNAPSHOT, index)
                .map_err(self.db_err("write kv_meta"))?;
        }
        txn.commit().map_err(self.db_err("commit"))?;
        self.db.last_snapshot.store(index, Ordering::SeqCst);
        Ok(index)
    }

    /// Writes the snapshot at `index` to `file`, the temporary file of `final_path`.
    fn write_snapshot_file(
        &self,
        txn: &redb::ReadTransaction,
        index: u64,
        file: &mut fs::File,
        final_path: &Path,
    ) -> Result<(), KvError> {
        let io = |context: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| KvError::Io {
                context,
                path,
                source,
            }
        };
        {
            let mut out = std::io::BufWriter::new(file);
            let header = serde_json::json!({"snapshot_index": index, "layout_version": self.lvm.metadata_layout_version()});
            writeln!(out, "{header}").map_err(io("cannot write", final_path))?;
            let kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
            for item in kv.iter().map_err(self.db_err("iterate kv"))? {
                let (k, v) = item.map_err(self.db_err("read kv"))?;
                let (ms, record) = v.value();
                let key = String::from_utf8_lossy(k.value()).into_owned();
                let expires_at_ms = self.expiry_of(txn, &key)?;
                let value = decode_any(record, self.slv()).map_err(|reason| KvError::Corrupt {
                    key: key.clone(),
                    reason,
                })?;
                let line = serde_json::json!({"key": key, "value": value, "modified_ms": ms, "expires_at_ms": expires_at_ms});
                writeln!(out, "{line}").map_err(io("cannot write", final_path))?;
            }
            out.flush().map_err(io("cannot write", final_path))?;
        }
        Ok(())
    }

    fn purge(&self, through: u64) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        {
            let mut log = txn
                .open_table(OPLOG)
                .map_err(self.db_err("open kv_oplog"))?;
            log.retain_in(..=through, |_, _| false)
                .map_err(self.db_err("purge kv_oplog"))?;
            let mut meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            meta.insert(META_PURGED, through)
                .map_err(self.db_err("write kv_meta"))?;
        }
        txn.commit().map_err(self.db_err("commit"))
    }

    fn oplog_bounds(&self) -> Result<(u64, Option<u64>), KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let log = txn
            .open_table(OPLOG)
            .map_err(self.db_err("open kv_oplog"))?;
        let len = log.len().map_err(self.db_err("count kv_oplog"))?;
        let first = log
            .first()
            .map_err(self.db_err("read kv_oplog"))?
            .map(|(k, _)| k.value());
        Ok((len, first))
    }
}

/// Removes the temporary files (`.snapshot-*.tmp`) a killed or failed snapshot left in
/// `snapshot_dir`, each logged at warn. Runs when the store opens, before any snapshot.
fn remove_stale_snapshot_temps(snapshot_dir: &Path) -> Result<(), KvError> {
    let entries = match fs::read_dir(snapshot_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(KvError::Io {
                context: "cannot list",
                path: snapshot_dir.to_owned(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| KvError::Io {
            context: "cannot list",
            path: snapshot_dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".snapshot-") && name.ends_with(".tmp")) {
            continue;
        }
        let path = entry.path();
        // Unlinked, never followed: a symlink there is removed, not its target.
        match fs::remove_file(&path) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                "removed the temporary file of an interrupted snapshot (a killed or failed \
                 prepare)"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KvError::Io {
                    context: "cannot remove the stale snapshot temporary file",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

impl Preparable for Engine {
    fn applied_index(&self) -> u64 {
        self.db.applied.load(Ordering::SeqCst)
    }

    fn flush(&self) -> Result<u64, StepError> {
        // Every write commits durably; an empty durable commit makes sure nothing is
        // pending, under the write lock so the index read is the one made durable.
        let _w = self.write_lock.lock();
        let commit = || -> Result<(), KvError> {
            let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
            txn.commit().map_err(self.db_err("commit"))
        };
        commit().map_err(|e| StepError::with_source("cannot flush the kvstore", e))?;
        Ok(self.applied_index())
    }

    fn snapshot(&self, _index: u64) -> Result<u64, StepError> {
        self.write_snapshot()
            .map_err(|e| StepError::with_source("cannot snapshot the kvstore", e))
    }

    fn last_snapshot_index(&self) -> u64 {
        self.db.last_snapshot.load(Ordering::SeqCst)
    }

    fn purge_log(&self, index: u64) -> Result<(), StepError> {
        self.purge(index)
            .map_err(|e| StepError::with_source("cannot purge the kvstore op log", e))
    }
}

impl Preparable for Shared {
    fn applied_index(&self) -> u64 {
        self.engine.applied_index()
    }
    fn flush(&self) -> Result<u64, StepError> {
        self.engine.flush()
    }
    fn snapshot(&self, index: u64) -> Result<u64, StepError> {
        self.engine.snapshot(index)
    }
    fn last_snapshot_index(&self) -> u64 {
        self.engine.last_snapshot_index()
    }
    fn purge_log(&self, index: u64) -> Result<(), StepError> {
        self.engine.purge_log(index)
    }
}

/// Checks a page request's cursor (a key) and limit.
fn check_page(after: Option<&str>, limit: usize) -> Result<(), KvError> {
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(KvError::BadRequest(format!(
            "limit={limit}: a page holds from 1 to {MAX_LIST_LIMIT} items"
        )));
    }
    match after {
        Some("") => Err(KvError::BadRequest(
            "the cursor `after` is empty; omit it for the first page".into(),
        )),
        Some(after) if after.len() > MAX_KEY_BYTES => Err(KvError::BadRequest(format!(
            "the cursor `after` is {} bytes long; a key has at most {MAX_KEY_BYTES}",
            after.len()
        ))),
        _ => Ok(()),
    }
}

/// Checks a key from a request.
fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::BadRequest("the key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::BadRequest(format!(
            "the key is {} bytes long; at most {MAX_KEY_BYTES} are allowed",
            key.len()
        )));
    }
    Ok(())
}

impl Shared {
    /// Refuses a write while this member node is fenced.
    fn check_write_fence(&self) -> Result<(), KvError> {
        match self.fence.get() {
            Some(fence) => fence.check(),
            None => Ok(()),
        }
    }

    /// Refuses a read while this member node is fenced and configured to refuse reads
    /// then (`--fenced-reads refuse`).
    fn check_read_fence(&self) -> Result<(), KvError> {
        match self.fence.get() {
            Some(fence) if fence.reads == FencedReads::Refuse => fence.check(),
            _ => Ok(()),
        }
    }

    fn write(&self, request: &'static str, op: &Op) -> Result<(u64, bool), KvError> {
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write(request)?;
        let began = std::time::Instant::now();
        let result = {
            let _w = self.engine.write_lock.lock();
            self.engine.apply(op)
        };
        // The foreground latency the index migration's latency budget watches (puts).
        if let Some(index) = &self.engine.index {
            index.control.observe_latency(began.elapsed());
        }
        result
    }

    pub(crate) fn put(&self, key: &str, value: &str) -> Result<u64, KvError> {
        check_key(key)?;
        let op = Op::Put {
            key: key.to_owned(),
            value: value.to_owned(),
            expires_at_ms: None,
        };
        Ok(self.write("Put", &op)?.0)
    }

    #[disallowed_until(KvFeature::ExpiringValues)]
    pub(crate) fn put_with_ttl(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<u64, KvError> {
        check_key(key)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let op = Op::Put {
            key: key.to_owned(),
            value: value.to_owned(),
            expires_at_ms: Some(self.engine.clock.now_ms().saturating_add(ttl_ms)),
        };
        Ok(self.write("PutWithTtl", &op)?.0)
    }

    pub(crate) fn delete(&self, key: &str) -> Result<(bool, u64), KvError> {
        check_key(key)?;
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write("Delete")?;
        let _w = self.engine.write_lock.lock();
        // An expired value counts as absent.
        let live = self.engine.get(key)?.is_some();
        let (index, _) = self.engine.apply(&Op::Delete {
            key: key.to_owned(),
        })?;
        Ok((live, index))
    }

    #[disallowed_until(KvFeature::CompareAndSwap)]
    pub(crate) fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<(bool, Option<u64>), KvError> {
        check_key(key)?;
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write("CompareAndSwap")?;
        let _w = self.engine.write_lock.lock();
        let current = self.engine.get(key)?;
        if current.as_ref().map(|e| e.value.as_str()) != expected {
            return Ok((false, None));
        }
        let (index, _) = self.engine.apply(&Op::Put {
            key: key.to_owned(),
            value: new.to_owned(),
            expires_at_ms: None,
        })?;
        Ok((true, Some(index)))
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        check_key(key)?;
        self.check_read_fence()?;
        self.engine.get(key)
    }

    /// See [`KvStore::list_page`].
    pub(crate) fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, KvError> {
        check_page(after, limit)?;
        self.check_read_fence()?;
        if let Some(after) = after {
            if !after.starts_with(prefix) {
                return Err(KvError::BadRequest(format!(
                    "the cursor after={after:?} does not start with the prefix {prefix:?}; \
                     pass the `next` of the previous page of the same list"
                )));
            }
        }
        self.engine.list_page(prefix, after, limit)
    }

    /// See [`KvStore::find_by_value_page`].
    #[disallowed_until(KvFeature::ValueIndex)]
    pub(crate) fn find_by_value_page(
        &self,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvKeysPage, KvError> {
        check_page(after, limit)?;
        self.check_read_fence()?;
        self.engine.find_by_value_page(value, after, limit)
    }

    /// See [`KvStore::changes_page`].
    pub(crate) fn changes_page(
        &self,
        since_ms: u64,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<KvChangesPage, KvError> {
        check_page(after.map(|(_, k)| k), limit)?;
        self.check_read_fence()?;
        self.engine.changes_page(since_ms, after, limit)
    }

    /// See [`KvStore::stamp`].
    pub(crate) fn stamp(&self, key: &str) -> Result<Option<KvStamp>, KvError> {
        check_key(key)?;
        self.check_read_fence()?;
        self.engine.stamp(key)
    }

    /// See [`KvStore::copy_write`].
    pub(crate) fn copy_write(&self, writes: &[KvCopyWrite]) -> Result<Vec<KvCopyOutcome>, KvError> {
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write("Copy")?;
        let _w = self.engine.write_lock.lock();
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            if let Err(e) = check_key(&w.key) {
                outcomes.push(KvCopyOutcome::Failed {
                    reason: e.to_string(),
                });
                continue;
            }
            if let Some(held) = self.engine.stamp(&w.key)? {
                if held.version >= w.version {
                    outcomes.push(KvCopyOutcome::NotNewer {
                        held_version: held.version,
                    });
                    continue;
                }
            }
            self.engine.apply(&Op::Copy {
                key: w.key.clone(),
                value: w.value.clone(),
                version: w.version,
                updated_ms: w.updated_ms,
            })?;
            outcomes.push(KvCopyOutcome::Written);
        }
        Ok(outcomes)
    }

    /// See [`KvStore::purge_tombstones`].
    pub(crate) fn purge_tombstones(&self, before_ms: u64) -> Result<u64, KvError> {
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write("PurgeTombstones")?;
        let _w = self.engine.write_lock.lock();
        self.engine.purge_tombstones(before_ms)
    }

    /// See [`KvStore::copy_mark`].
    pub(crate) fn copy_mark(&self, name: &str) -> Result<Option<String>, KvError> {
        check_key(name)?;
        self.engine.copy_mark(name)
    }

    /// See [`KvStore::set_copy_mark`].
    pub(crate) fn set_copy_mark(&self, name: &str, mark: &str) -> Result<(), KvError> {
        check_key(name)?;
        self.check_write_fence()?;
        let _w = self.engine.write_lock.lock();
        self.engine.set_copy_mark(name, mark)
    }

    pub(crate) fn status(&self) -> Result<KvStatus, KvError> {
        let lvm = &self.engine.lvm;
        let state = self.prepare.state();
        Ok(KvStatus {
            slv: lvm.software_layout_version(),
            mlv: lvm.metadata_layout_version(),
            pre_finalized: lvm.needs_finalization(),
            prepared: self.prepare.is_gate_enabled(),
            prepare_index: state.index(),
            keys: match self.engine.key_count() {
                Ok(keys) => keys,
                Err(KvError::Degraded { .. }) => self.engine.last_keys.load(Ordering::Relaxed),
                Err(e) => return Err(e),
            },
            applied_index: self.engine.applied_index(),
            encoding: self.engine.codecs.for_put(lvm).name().to_owned(),
            index_migration: self.engine.index_figures(),
            degraded: self.engine.db.degraded(),
            fenced: self.fence.get().and_then(NodeFence::cause),
        })
    }
}

/// The kvstore: the engine, its prepare controller and its HTTP server.
///
/// Opened from a [`LayoutVersionManager`] that is already open (the node or the test kit
/// owns it); serves HTTP from `open` until dropped.
pub struct KvStore {
    shared: Arc<Shared>,
    http: Mutex<Option<HttpServer>>,
    http_addr: SocketAddr,
}

impl KvStore {
    /// Opens the store in `data_dir` and starts its HTTP server.
    ///
    /// The data must belong to `manager`'s layout state (see `docs/data-binding.md`): a
    /// missing or empty database is created only when `manager` was just created
    /// ([`LayoutVersionManager::was_created`], a fresh install) and is otherwise refused,
    /// as are another node's database and a layout state older than the data
    /// ([`KvError::Binding`]); a truncated or garbage database is
    /// [`KvError::DataDamaged`]. Nothing is created or written when refused. A database
    /// from before bindings is adopted: its binding is recorded on this open.
    ///
    /// Restores the prepare state from the marker (a bad marker refuses the start; an
    /// `Upgrade` or `Downgrade` start intent cancels prepare).
    // By value: the agreed signature (the options may hold more owned state later).
    #[allow(clippy::needless_pass_by_value)]
    pub fn open(
        manager: Arc<LayoutVersionManager<KvFeature>>,
        data_dir: &Path,
        options: KvOptions,
    ) -> Result<KvStore, KvError> {
        Self::open_with(manager, data_dir, options, &DataApiSettings::default())
    }

    /// [`open`](Self::open), serving the data API with `api` (TLS, `/metrics`).
    #[allow(clippy::needless_pass_by_value)]
    pub(crate) fn open_with(
        manager: Arc<LayoutVersionManager<KvFeature>>,
        data_dir: &Path,
        options: KvOptions,
        api: &DataApiSettings,
    ) -> Result<KvStore, KvError> {
        let engine = Engine::open(Arc::clone(&manager), data_dir, &options)?;
        let prepare = Arc::new(PrepareController::restore(
            manager,
            &engine,
            PrepareOptions::default().with_timeout(options.prepare_timeout),
        )?);
        let shared = Arc::new(Shared {
            engine,
            prepare,
            cluster: Mutex::new(None),
            fence: std::sync::OnceLock::new(),
        });
        let http = HttpServer::start(Arc::clone(&shared), &options, api)?;
        let http_addr = http.local_addr();
        Ok(KvStore {
            shared,
            http: Mutex::new(Some(http)),
            http_addr,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The layout version manager.
    pub fn manager(&self) -> &Arc<LayoutVersionManager<KvFeature>> {
        &self.shared.engine.lvm
    }

    /// The prepare controller (the write gate).
    pub fn prepare_controller(&self) -> &Arc<PrepareController> {
        &self.shared.prepare
    }

    /// The store as a [`Preparable`], for [`PrepareController::prepare`] and the admin
    /// service.
    pub fn preparable(&self) -> Arc<dyn Preparable> {
        Arc::clone(&self.shared) as Arc<dyn Preparable>
    }

    /// Prepares the store: closes the write gate, flushes, snapshots to `snapshots/`,
    /// purges the op log, persists the marker. Returns the prepare index.
    pub fn prepare(&self) -> Result<u64, KvError> {
        Ok(self.shared.prepare.prepare(&*self.shared)?)
    }

    /// Cancels a prepare: the write gate opens.
    pub fn cancel_prepare(&self) -> Result<(), KvError> {
        Ok(self.shared.prepare.cancel_prepare()?)
    }

    /// The value-index migration's figures, when the software knows `ValueIndex`.
    pub fn index_migration(&self) -> Option<MigrationFigures> {
        self.shared.engine.index_figures()
    }

    /// The value-index migration's progress (with its settings and elapsed time), when
    /// the software knows `ValueIndex`.
    pub fn index_migration_progress(&self) -> Option<layout_core::migration::MigrationProgress> {
        self.shared
            .engine
            .index
            .as_ref()
            .map(|i| i.migration.progress())
    }

    /// The value-index migration's control (pause, resume, cancel, and its batch size and
    /// throttle, changeable while it runs), when the software knows `ValueIndex`.
    pub fn index_migration_control(&self) -> Option<MigrationControl> {
        self.shared.engine.index.as_ref().map(|i| i.control.clone())
    }

    /// Stores `value` under `key`; returns the write's applied index.
    pub fn put(&self, key: &str, value: &str) -> Result<u64, KvError> {
        self.shared.put(key, value)
    }

    /// Stores `value` under `key` until `ttl` passes (needs `ExpiringValues`).
    pub fn put_with_ttl(&self, key: &str, value: &str, ttl: Duration) -> Result<u64, KvError> {
        self.shared.put_with_ttl(key, value, ttl)
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        self.shared.get(key)
    }

    /// Deletes `key`; `(whether a live value was deleted, applied index)`.
    pub fn delete(&self, key: &str) -> Result<(bool, u64), KvError> {
        self.shared.delete(key)
    }

    /// All the live items whose key starts with `prefix`, in key order: every page of
    /// [`list_page`](Self::list_page), each read in its own read transaction, gathered
    /// in memory (for a large store, take the pages one by one instead).
    pub fn list(&self, prefix: &str) -> Result<Vec<KvItem>, KvError> {
        let mut items = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_page(prefix, after.as_deref(), MAX_LIST_LIMIT)?;
            items.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// One page of the live items whose key starts with `prefix` and sorts after
    /// `after` (a key; `None`: from the start), in key order: at most `limit` keys
    /// (1 to [`MAX_LIST_LIMIT`]) and about [`MAX_LIST_PAGE_BYTES`] of keys and values
    /// (at least one item). [`KvPage::next`] is `Some` when more keys follow.
    /// [`KvError::BadRequest`] for a `limit` out of range or an `after` that is not a
    /// key starting with `prefix`.
    pub fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, KvError> {
        self.shared.list_page(prefix, after, limit)
    }

    /// One page of changes (live keys and tombstones, with versions and update times)
    /// in `(updated_ms, key)` order: from `since_ms` (inclusive) or after `after`, at
    /// most `limit` (1 to [`MAX_LIST_LIMIT`]); [`KvChangesPage::next`] whenever more
    /// follow. Refused ([`KvError::BadRequest`]) when it starts before purged tombstones.
    pub fn changes_page(
        &self,
        since_ms: u64,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<KvChangesPage, KvError> {
        self.shared.changes_page(since_ms, after, limit)
    }

    /// The version, update time and tombstone flag of `key`, if it was ever written
    /// (and its tombstone not purged).
    pub fn stamp(&self, key: &str) -> Result<Option<KvStamp>, KvError> {
        self.shared.stamp(key)
    }

    /// Copied writes, each stored (keeping its version and update time; a `None` value
    /// deletes, leaving a tombstone) only if the store holds no version of the key at
    /// or above it.
    pub fn copy_write(&self, writes: &[KvCopyWrite]) -> Result<Vec<KvCopyOutcome>, KvError> {
        self.shared.copy_write(writes)
    }

    /// Purges the tombstones deleted before `before_ms`; returns how many.
    pub fn purge_tombstones(&self, before_ms: u64) -> Result<u64, KvError> {
        self.shared.purge_tombstones(before_ms)
    }

    /// The high-water mark a copy into this store saved under `name`.
    pub fn copy_mark(&self, name: &str) -> Result<Option<String>, KvError> {
        self.shared.copy_mark(name)
    }

    /// Saves the high-water mark of the copy `name`.
    pub fn set_copy_mark(&self, name: &str, mark: &str) -> Result<(), KvError> {
        self.shared.set_copy_mark(name, mark)
    }

    /// All the keys holding `value`, in key order (needs `ValueIndex`): every page of
    /// [`find_by_value_page`](Self::find_by_value_page) gathered in memory.
    pub fn find_by_value(&self, value: &str) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        let mut after = None;
        loop {
            let page = self.find_by_value_page(value, after.as_deref(), MAX_LIST_LIMIT)?;
            keys.extend(page.keys);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// One page of the keys holding `value` that sort after `after` (needs
    /// `ValueIndex`), bounded as [`list_page`](Self::list_page) is.
    pub fn find_by_value_page(
        &self,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvKeysPage, KvError> {
        self.shared.find_by_value_page(value, after, limit)
    }

    /// Sets `key` to `new` if its live value is `expected` (`None`: absent); needs
    /// `CompareAndSwap`. Returns whether it swapped, and the write's index if it did.
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<(bool, Option<u64>), KvError> {
        self.shared.compare_and_swap(key, expected, new)
    }

    /// The status `GET /status` answers.
    pub fn status(&self) -> Result<KvStatus, KvError> {
        self.shared.status()
    }

    /// The last applied write's index.
    pub fn applied_index(&self) -> u64 {
        self.shared.engine.applied_index()
    }

    /// Op log entries kept (not yet purged) and the first one's index.
    pub fn op_log(&self) -> Result<(u64, Option<u64>), KvError> {
        self.shared.engine.oplog_bounds()
    }

    /// Whether table `name` exists in the database (for checks of the on-disk layout).
    pub fn has_table(&self, name: &str) -> Result<bool, KvError> {
        self.shared.engine.has_table(name)
    }

    /// The database file.
    pub fn db_path(&self) -> &Path {
        &self.shared.engine.path
    }

    /// The raw value record of `key` in table `kv` (to check its encoding).
    pub fn raw_record(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let engine = &self.shared.engine;
        let txn = engine
            .db
            .begin_read()
            .map_err(engine.db_err("begin read"))?;
        let kv = txn.open_table(KV).map_err(engine.db_err("open kv"))?;
        Ok(kv
            .get(key.as_bytes())
            .map_err(engine.db_err("read kv"))?
            .map(|g| g.value().1.to_vec()))
    }

    /// Every entry of the value index `kv_by_value` as `(value, key)`, in index order,
    /// whether or not the key is still live (for checks of the index against the data;
    /// [`find_by_value`](Self::find_by_value) hides entries of deleted or expired keys).
    /// Empty when the table does not exist.
    pub fn index_entries(&self) -> Result<Vec<(String, String)>, KvError> {
        self.shared.engine.index_entries()
    }

    /// Serves `routes` under `/cluster/` (the coordinator node).
    pub(crate) fn set_cluster_routes(&self, routes: Arc<dyn ClusterRoutes>) {
        *self.shared.cluster.lock() = Some(routes);
    }

    /// Guards writes (and reads, as `fence.reads` says) with a member node's fence.
    pub(crate) fn set_fence(&self, fence: NodeFence) {
        if self.shared.fence.set(fence).is_err() {
            tracing::warn!("this store already has a member's fence; keeping the first one");
        }
    }

    /// Stops serving `/cluster/` (breaks the coordinator's reference back to the store).
    pub(crate) fn clear_cluster_routes(&self) {
        self.shared.cluster.lock().take();
    }

    /// Stops the HTTP server (waits for the requests being served). Idempotent; also
    /// done on drop.
    pub fn stop_http(&self) {
        if let Some(server) = self.http.lock().take() {
            server.shutdown();
        }
    }

    fn index_migration_run(&self, ctx: &ActionContext<'_, KvFeature>) -> Result<(), ActionError> {
        match &self.shared.engine.index {
            Some(index) => {
                // Finalizing again after a failed batch (a full disk): reopen first.
                self.shared.engine.db.try_recover();
                index.migration.run_as_action(ctx)
            }
            None => Err(ActionError::new(
                "the value-index migration is not available in this software",
            )),
        }
    }
}

impl Drop for KvStore {
    fn drop(&mut self) {
        self.stop_http();
    }
}

impl fmt::Debug for KvStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvStore")
            .field("db", &self.shared.engine.path)
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

/// The kvstore's upgrade actions:
///
/// | feature | phase | action |
/// |---|---|---|
/// | `ExpiringValues` | `OnFirstUpgradeStart` | create table `kv_expiry` (old software ignores it) |
/// | `ValueIndex` | `OnFinalize` | fill `kv_by_value` with the background migration |
pub fn actions() -> Result<ActionRegistry<KvFeature, KvStore>, RegistryError> {
    ActionRegistry::<KvFeature, KvStore>::builder()
        .action(
            KvFeature::ExpiringValues,
            Phase::OnFirstUpgradeStart,
            "create-expiry-table",
            |store: &KvStore, _ctx| {
                store
                    .shared
                    .engine
                    .create_expiry_table()
                    .map_err(|e| ActionError::with_source("cannot create table kv_expiry", e))
            },
        )
        .action(
            KvFeature::ValueIndex,
            Phase::OnFinalize,
            "fill-value-index",
            |store: &KvStore, ctx| store.index_migration_run(ctx),
        )
        .build()
}
