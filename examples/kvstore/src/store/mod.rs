//! The engine: table `kv` and its companions in one redb database, the write path (op
//! log, applied index, dual-write to the value index), the read path (TTL, encodings),
//! [`Preparable`], and [`KvStore`] around it with its HTTP server.

// What each part holds: `options` (`KvOptions`), `records` (what reads return, and
// the checks of a key and a page request), `status` (`KvStatus`, the migration's
// figures), `db` (the redb database: opening, binding, tables, recovery), `writes` (the
// op log and the write path), `reads` (the read path: TTL, pages, changes, the value
// index), `snapshot` (snapshots, the op log's purge, `Preparable`), `actions` (the
// upgrade actions).

mod actions;
mod db;
mod options;
mod reads;
mod records;
mod snapshot;
mod status;
mod writes;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layout_core::clock::Clock;
use layout_core::migration::{BackgroundMigration, DualWrite, MigrationControl, MigrationTuning};
use layout_core::prepare::PrepareOptions;
use layout_core::{
    ActionContext, ActionError, LayoutAware, LayoutFeature, LayoutVersionManager, Preparable,
    PrepareController,
};
use parking_lot::Mutex;
use redb::TableDefinition;

pub use self::actions::actions;
use self::db::reset_stale_index;
pub(crate) use self::db::DbCell;
pub use self::options::{IndexBatchHook, KvOptions, StorageBackendFactory};
pub use self::records::{KvEntry, KvItem, KvKeysPage, KvPage};
use self::snapshot::remove_stale_snapshot_temps;
pub use self::status::{KvStatus, MigrationFigures};
use super::changes::{KvChangesPage, KvCopyOutcome, KvCopyWrite, KvStamp};
use super::cluster::{ClusterRoutes, FencedReads, NodeFence};
use super::codec::Codecs;
use super::error::KvError;
use super::feature::KvFeature;
use super::http::{DataApiSettings, HttpServer};
use super::index::IndexStore;

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
