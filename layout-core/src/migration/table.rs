//! A table that keeps serving while a background migration rewrites it.

use std::fmt;
use std::sync::Arc;

use super::background::{
    printable, BackgroundMigration, DualWrite, MigrationCheckpoint, MigrationError, MigrationSink,
    MigrationSource, Row, RowTransform, WriteScope, WriteTarget,
};
use crate::error::StepError;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;

/// An entry of the new table, as the component's requests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewEntry {
    /// A row.
    Row(Row),
    /// Deleted while the migration runs.
    Tombstone,
    /// Nothing.
    Absent,
}

/// A consistent view of one key in both tables, from [`MigratingStore::view`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyView {
    /// The old table's row.
    pub old: Option<Row>,
    /// The new table's entry.
    pub new: NewEntry,
    /// The migration's checkpoint.
    pub checkpoint: Option<MigrationCheckpoint>,
}

/// A consistent view of a key prefix in both tables, from [`MigratingStore::scan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanView {
    /// The old table's rows with the prefix, ascending.
    pub old: Vec<Row>,
    /// The new table's rows with the prefix, ascending.
    pub new: Vec<Row>,
    /// The tombstones with the prefix, ascending.
    pub tombstones: Vec<Vec<u8>>,
    /// The migration's checkpoint.
    pub checkpoint: Option<MigrationCheckpoint>,
}

/// A write of the component, as routed to the layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveWrite {
    /// Store a row: `old` in the old table, `new` in the new table (`None`: that table
    /// is not written). Removes a tombstone of the key.
    Put {
        /// The row in the old format.
        old: Option<Row>,
        /// The row in the new format.
        new: Option<Row>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// From the old table.
        old: bool,
        /// From the new table.
        new: bool,
        /// And leave a tombstone in the new table.
        tombstone: bool,
    },
}

/// What a store needs so a [`MigratingTable`] can serve requests while it migrates: the
/// migration's source and sink over the same store, plus consistent reads and atomic
/// writes of both tables.
pub trait MigratingStore: MigrationSource + MigrationSink {
    /// Reads one key in both tables and the checkpoint, consistently.
    fn view(&self, key: &[u8]) -> Result<KeyView, MigrationError>;

    /// Reads every key with `prefix` in both tables and the checkpoint, consistently.
    fn scan(&self, prefix: &[u8]) -> Result<ScanView, MigrationError>;

    /// Applies a write atomically (both tables in one step), and atomically with respect
    /// to [`MigrationSink::write_batch`].
    fn apply(&self, write: &LiveWrite) -> Result<(), MigrationError>;

    /// Applies `write` only if `key`'s entries are still those of `expected`: its old
    /// row and its new-table entry ([`KeyView::old`], [`KeyView::new`]; the checkpoint is
    /// not compared, see below). The comparison and the write are one atomic step, with
    /// respect to [`apply`](Self::apply), [`clear`](Self::clear),
    /// [`MigrationSink::write_batch`] and other calls of this method. `Ok(false)`: an
    /// entry differed and nothing was written.
    ///
    /// This is the compare-and-swap that makes [`MigratingTable::update`] atomic. The
    /// checkpoint is left out of the comparison on purpose: it moves with every batch,
    /// and a batch that does not write a key (it holds no such row, or the key already
    /// has a row or a tombstone in the new table) does not change the value a read of
    /// that key returns; a batch that copies the key changes its new-table entry, which
    /// is compared.
    ///
    /// There is no default: a default made of [`view`](Self::view) and
    /// [`apply`](Self::apply) would not be atomic, and would bring back lost updates
    /// silently.
    fn apply_if_unchanged(
        &self,
        key: &[u8],
        expected: &KeyView,
        write: &LiveWrite,
    ) -> Result<bool, MigrationError>;

    /// Deletes everything in `tables`, and the tombstones. If a migration is under way
    /// (a checkpoint exists and is not complete), in the same step it is marked complete
    /// with its epoch bumped, so a batch read before the delete is discarded.
    fn clear(&self, tables: ClearTables) -> Result<(), MigrationError>;
}

/// Which tables [`MigratingStore::clear`] empties (the tombstones are always deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClearTables {
    /// The old layout's table only.
    Old,
    /// The new layout's table only.
    New,
    /// Both tables.
    Both,
}

impl ClearTables {
    /// Whether the old layout's table is emptied.
    pub fn includes_old(self) -> bool {
        matches!(self, Self::Old | Self::Both)
    }

    /// Whether the new layout's table is emptied.
    pub fn includes_new(self) -> bool {
        matches!(self, Self::New | Self::Both)
    }
}

impl From<WriteTarget> for ClearTables {
    /// The tables a write to `target` goes to.
    fn from(target: WriteTarget) -> Self {
        match target {
            WriteTarget::OldOnly => Self::Old,
            WriteTarget::Both => Self::Both,
            WriteTarget::NewOnly => Self::New,
        }
    }
}

/// What a read of a key not yet migrated returns while the migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotMigratedPolicy {
    /// Serve it from the old table, transformed (the default). Searches are complete.
    #[default]
    ServeFromOld,
    /// Refuse with [`TableError::NotYetMigrated`], which is retryable. Searches return
    /// what is migrated or new, and say they are partial.
    RetryableError,
}

/// A failed request to a [`MigratingTable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The key is not migrated yet; retry later (after `done` of `total` rows).
    #[error(
        "key {key} is not migrated yet by migration {migration}; retry later (the migration \
         is in progress)"
    )]
    NotYetMigrated {
        /// The key, printable.
        key: String,
        /// The migration.
        migration: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] MigrationError),
    /// Converting a row between the formats failed.
    #[error("key {key}: {direction} failed: {source}")]
    Convert {
        /// The key, printable.
        key: String,
        /// `transform` (old to new) or `backport` (new to old).
        direction: &'static str,
        /// The cause.
        #[source]
        source: StepError,
    },
}

impl TableError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NotYetMigrated { .. })
    }
}

/// The result of [`MigratingTable::search`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResult {
    /// The rows found, ascending by key, in the new format.
    pub rows: Vec<Row>,
    /// Whether rows not yet migrated may be missing.
    pub partial: bool,
}

/// A table that serves adds, updates, deletes, reads and searches while a
/// [`BackgroundMigration`] rewrites it; see the overview below.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::migration::{BackgroundMigration, MemoryMigrationStore, MigratingTable, Row};
/// use layout_core::{LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum Feature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Users in the v2 table")]
///     UsersV2,
/// }
///
/// let opts = ManagerOptions::default().with_start_intent(StartIntent::Init).with_initial_layout_version(0);
/// let lvm = Arc::new(LayoutVersionManager::<Feature>::open(MemoryStorage::new(), opts)?);
/// let store = Arc::new(MemoryMigrationStore::new());
/// store.insert_old(Row::new(*b"alice", *b"1", 10));
/// let migration = BackgroundMigration::builder("users-v2", store.clone(), store.clone()).open()?;
/// let table = MigratingTable::new(store.clone(), &migration, Arc::clone(&lvm), Feature::UsersV2);
///
/// table.put(Row::new(*b"bob", *b"2", 20))?;          // pre-finalized: old table only
/// assert_eq!(store.old_rows().len(), 2);
/// migration.run()?;                                  // as the OnFinalize action would
/// table.put(Row::new(*b"carol", *b"3", 30))?;        // dual-write until finalized
/// lvm.finalize_step(Feature::UsersV2)?;
/// assert_eq!(table.get(b"alice")?.map(|r| r.value), Some(b"1".to_vec()));
/// assert_eq!(table.search(b"")?.rows.len(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Overview
///
/// A table that keeps serving while a background migration rewrites it: the contract
/// for requests during a migration.
///
/// [`MigratingTable`] sits over a [`MigratingStore`] (the old table, the new table, the
/// tombstones and the checkpoint of one [`BackgroundMigration`]) and speaks the *new*
/// row format throughout:
///
/// | request | before the migration | while it runs | after the feature is finalized |
/// |---|---|---|---|
/// | read a new or migrated key | old row, transformed | the new table | the new table |
/// | read a key not yet migrated | old row, transformed | the old row, transformed ([`NotMigratedPolicy::ServeFromOld`]), or [`TableError::NotYetMigrated`], retryable ([`NotMigratedPolicy::RetryableError`]) | - |
/// | add, update | old table (backported) | both tables, in one atomic step | the new table |
/// | delete | old table | both, leaving a tombstone so the copier never brings the row back | the new table |
/// | delete everything | old table | both, and the migration is complete (nothing is left to copy) | the new table |
/// | search | old rows | new and migrated rows, plus not-yet-migrated ones under `ServeFromOld`; [`SearchResult::partial`] says when rows may be missing | the new table |
///
/// No write is lost and no deleted or updated row comes back with its old value: see
/// the overview of [`BackgroundMigration`](super::BackgroundMigration).
///
/// [`MigratingTable::update`] is atomic against every other writer of its key, the
/// copier included: a compare-and-swap loop over [`MigratingStore::apply_if_unchanged`].
pub struct MigratingTable<F: LayoutFeature> {
    store: Arc<dyn MigratingStore>,
    routing: DualWrite<F>,
    migration: String,
    transform: Option<RowTransform>,
    backport: Option<RowTransform>,
    policy: NotMigratedPolicy,
}

impl<F: LayoutFeature> MigratingTable<F> {
    /// A table over `store`, migrated by `migration` as `feature`'s `OnFinalize` action.
    /// Rows not yet migrated are served with the migration's transform.
    pub fn new(
        store: Arc<dyn MigratingStore>,
        migration: &BackgroundMigration,
        lvm: Arc<LayoutVersionManager<F>>,
        feature: F,
    ) -> Self {
        Self {
            store,
            routing: migration.dual_write(lvm, feature),
            migration: migration.name().to_owned(),
            transform: migration.transform_fn().cloned(),
            backport: None,
            policy: NotMigratedPolicy::default(),
        }
    }

    /// Converts a row in the new format back to the old one, for writes to the old
    /// table (default: the same bytes).
    #[must_use]
    pub fn with_backport(
        mut self,
        backport: impl Fn(Row) -> Result<Option<Row>, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.backport = Some(Arc::new(backport));
        self
    }

    /// What reads of keys not yet migrated return (default
    /// [`NotMigratedPolicy::ServeFromOld`]).
    #[must_use]
    pub fn with_policy(mut self, policy: NotMigratedPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The write-routing guard.
    pub fn routing(&self) -> &DualWrite<F> {
        &self.routing
    }

    /// Reads a key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Row>, TableError> {
        let scope = self.routing.begin();
        let view = self.store.view(key)?;
        self.read(&scope, key, &view)
    }

    /// The value of `key` in `view`, as a request routed by `scope` sees it.
    fn read(
        &self,
        scope: &WriteScope<'_>,
        key: &[u8],
        view: &KeyView,
    ) -> Result<Option<Row>, TableError> {
        match scope.target() {
            WriteTarget::OldOnly => view.old.clone().map_or(Ok(None), |row| self.to_new(row)),
            WriteTarget::NewOnly => Ok(match &view.new {
                NewEntry::Row(row) => Some(row.clone()),
                NewEntry::Tombstone | NewEntry::Absent => None,
            }),
            WriteTarget::Both => match &view.new {
                NewEntry::Row(row) => Ok(Some(row.clone())),
                NewEntry::Tombstone => Ok(None),
                NewEntry::Absent if view.checkpoint.as_ref().is_some_and(|c| c.covers(key)) => {
                    Ok(None)
                }
                NewEntry::Absent => match (&view.old, self.policy) {
                    (None, _) => Ok(None),
                    (Some(row), NotMigratedPolicy::ServeFromOld) => self.to_new(row.clone()),
                    (Some(_), NotMigratedPolicy::RetryableError) => {
                        Err(TableError::NotYetMigrated {
                            key: printable(key),
                            migration: self.migration.clone(),
                        })
                    }
                },
            },
        }
    }

    /// Adds or replaces a row (in the new format; its timestamp is kept as given).
    pub fn put(&self, row: Row) -> Result<(), TableError> {
        let scope = self.routing.begin();
        let write = self.put_write(&scope, row)?;
        self.store.apply(&write)?;
        Ok(())
    }

    /// Deletes a key (whether or not it is migrated).
    pub fn delete(&self, key: &[u8]) -> Result<(), TableError> {
        let scope = self.routing.begin();
        self.store.apply(&delete_write(&scope, key))?;
        Ok(())
    }

    /// The write that stores `row` (new format) where `scope` routes it.
    fn put_write(&self, scope: &WriteScope<'_>, row: Row) -> Result<LiveWrite, TableError> {
        let old = if scope.writes_old() {
            self.to_old(row.clone())?
        } else {
            None
        };
        let new = scope.writes_new().then_some(row);
        Ok(LiveWrite::Put { old, new })
    }

    /// Reads a key, changes it with `change` (`None` in, the key is absent; `None` out,
    /// delete it) and writes the result back, atomically with respect to every other
    /// writer of the key: [`put`](Self::put), [`delete`](Self::delete), other updates
    /// (through this table or another one over the same store) and the migration's
    /// copier. A key not yet migrated is served as [`get`](Self::get) serves it.
    ///
    /// It is a compare-and-swap loop: the write is applied only if the key's entries in
    /// both tables are still the ones `change` saw
    /// ([`MigratingStore::apply_if_unchanged`]); otherwise it reads again and calls
    /// `change` again. So `change` may run more than once and should be a function of
    /// its input (no side effects that must happen once). Writes to other keys never
    /// make it retry, and no lock is held while `change` runs.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use layout_core::migration::{BackgroundMigration, MemoryMigrationStore, MigratingTable, Row};
    /// # use layout_core::{LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
    /// # #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
    /// # enum Feature {
    /// #     #[layout(version = 0, description = "Initial layout")]
    /// #     Initial,
    /// #     #[layout(version = 1, description = "Counters in the v2 table")]
    /// #     CountersV2,
    /// # }
    /// # let opts = ManagerOptions::default().with_start_intent(StartIntent::Init).with_initial_layout_version(0);
    /// # let lvm = Arc::new(LayoutVersionManager::<Feature>::open(MemoryStorage::new(), opts)?);
    /// # let store = Arc::new(MemoryMigrationStore::new());
    /// # let migration = BackgroundMigration::builder("counters-v2", store.clone(), store.clone()).open()?;
    /// let table = MigratingTable::new(store.clone(), &migration, lvm, Feature::CountersV2);
    /// let increment = |row: Option<Row>| {
    ///     let n: u64 = row.map_or(0, |r| String::from_utf8_lossy(&r.value).parse().unwrap_or(0));
    ///     Some(Row::new(*b"hits", (n + 1).to_string(), 0))
    /// };
    /// table.update(b"hits", increment)?;
    /// table.update(b"hits", increment)?;
    /// assert_eq!(table.get(b"hits")?.map(|r| r.value), Some(b"2".to_vec()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update(
        &self,
        key: &[u8],
        mut change: impl FnMut(Option<Row>) -> Option<Row>,
    ) -> Result<(), TableError> {
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            // One routing decision for the read and the write.
            let scope = self.routing.begin();
            let view = self.store.view(key)?;
            let current = self.read(&scope, key, &view)?;
            let write = match change(current) {
                Some(mut row) => {
                    key.clone_into(&mut row.key);
                    self.put_write(&scope, row)?
                }
                None => delete_write(&scope, key),
            };
            if self.store.apply_if_unchanged(key, &view, &write)? {
                if attempt > 1 {
                    tracing::trace!(
                        target: "layout_core::migration",
                        migration = %self.migration,
                        key = %printable(key),
                        attempt,
                        "update applied after the key changed under it"
                    );
                }
                return Ok(());
            }
            // The key changed since it was read: release the routing decision (a
            // migration may be waiting to switch) and read again.
            drop(scope);
        }
    }

    /// Deletes every row.
    pub fn clear(&self) -> Result<(), TableError> {
        let scope = self.routing.begin();
        self.store.clear(scope.target().into())?;
        Ok(())
    }

    /// Every row whose key starts with `prefix`, ascending, in the new format.
    pub fn search(&self, prefix: &[u8]) -> Result<SearchResult, TableError> {
        let scope = self.routing.begin();
        let view = self.store.scan(prefix)?;
        match scope.target() {
            WriteTarget::OldOnly => {
                let mut rows = Vec::with_capacity(view.old.len());
                for row in view.old {
                    rows.extend(self.to_new(row)?);
                }
                Ok(SearchResult {
                    rows,
                    partial: false,
                })
            }
            WriteTarget::NewOnly => Ok(SearchResult {
                rows: view.new,
                partial: false,
            }),
            WriteTarget::Both => {
                let complete = view.checkpoint.as_ref().is_some_and(|c| c.complete);
                if complete || self.policy == NotMigratedPolicy::RetryableError {
                    return Ok(SearchResult {
                        rows: view.new,
                        partial: !complete,
                    });
                }
                let mut rows = view.new;
                let shadowed: std::collections::BTreeSet<Vec<u8>> = rows
                    .iter()
                    .map(|r| r.key.clone())
                    .chain(view.tombstones)
                    .collect();
                for row in view.old {
                    let covered = view.checkpoint.as_ref().is_some_and(|c| c.covers(&row.key));
                    if !covered && !shadowed.contains(&row.key) {
                        rows.extend(self.to_new(row)?);
                    }
                }
                rows.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(SearchResult {
                    rows,
                    partial: false,
                })
            }
        }
    }

    fn to_new(&self, row: Row) -> Result<Option<Row>, TableError> {
        convert(self.transform.as_ref(), row, "transform")
    }

    fn to_old(&self, row: Row) -> Result<Option<Row>, TableError> {
        convert(self.backport.as_ref(), row, "backport")
    }
}

/// The write that deletes `key` where `scope` routes it.
fn delete_write(scope: &WriteScope<'_>, key: &[u8]) -> LiveWrite {
    LiveWrite::Delete {
        key: key.to_vec(),
        old: scope.writes_old(),
        new: scope.writes_new(),
        tombstone: scope.needs_tombstone(),
    }
}

fn convert(
    f: Option<&RowTransform>,
    row: Row,
    direction: &'static str,
) -> Result<Option<Row>, TableError> {
    let Some(f) = f else {
        return Ok(Some(row));
    };
    let key = row.key.clone();
    match f(row) {
        Ok(Some(mut converted)) => {
            converted.key = key;
            Ok(Some(converted))
        }
        Ok(None) => Ok(None),
        Err(source) => Err(TableError::Convert {
            key: printable(&key),
            direction,
            source,
        }),
    }
}

impl<F: LayoutFeature> fmt::Debug for MigratingTable<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MigratingTable")
            .field("migration", &self.migration)
            .field("routing", &self.routing)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}
