//! A [`MigratingStore`] on [redb](https://docs.rs/redb) (cargo feature `redb`).

use std::ops::Bound;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::background::{
    BatchCopy, BatchWrite, CheckedTransform, MigrationCheckpoint, MigrationError, MigrationSink,
    MigrationSource, Row,
};
use super::table::{ClearTables, KeyView, LiveWrite, MigratingStore, NewEntry, ScanView};

/// The table of checkpoints: migration name -> checkpoint (JSON).
const CHECKPOINTS: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("layout_core.migrations");

type RowDef<'a> = TableDefinition<'a, &'static [u8], (u64, &'static [u8])>;
type TombDef<'a> = TableDefinition<'a, &'static [u8], ()>;

/// Old and new table of one migration in a redb database; see the overview below.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::migration::{BackgroundMigration, RedbMigrationStore, Row};
///
/// let dir = tempfile::tempdir()?;
/// let db = Arc::new(redb::Database::create(dir.path().join("meta.redb"))?);
/// let store = Arc::new(RedbMigrationStore::new(db, "keys-v2", "keys", "keys_v2"));
/// store.insert_old_rows((0..100u32).map(|i| Row::new(i.to_be_bytes(), *b"v", 5)))?;
/// let migration = BackgroundMigration::builder("keys-v2", store.clone(), store.clone())
///     .batch_size(30)
///     .open()?;
/// assert_eq!(migration.run()?.batches, 4);
/// assert_eq!(store.new_rows()?, store.old_rows()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Overview
///
/// A [`MigratingStore`] on [redb](https://docs.rs/redb) (cargo feature `redb`).
///
/// The old and the new table live in one redb database, keyed by bytes, each value a
/// `(modified_ms, value bytes)` pair. The tombstones sit in a table of their own
/// (`<new table>.tombstones`) and the checkpoint in `layout_core.migrations`, keyed by the
/// migration's name. A batch and its checkpoint are one write transaction, so a crash
/// redoes at most the batch that was not committed.
#[derive(Debug, Clone)]
pub struct RedbMigrationStore {
    db: Arc<Database>,
    migration: String,
    old: String,
    new: String,
    tombstones: String,
}

impl RedbMigrationStore {
    /// The migration `migration` from table `old_table` to `new_table` in `db`.
    pub fn new(
        db: Arc<Database>,
        migration: impl Into<String>,
        old_table: impl Into<String>,
        new_table: impl Into<String>,
    ) -> Self {
        let new = new_table.into();
        Self {
            db,
            migration: migration.into(),
            old: old_table.into(),
            tombstones: format!("{new}.tombstones"),
            new,
        }
    }

    /// The database.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// The old table's name.
    pub fn old_table(&self) -> &str {
        &self.old
    }

    /// The new table's name.
    pub fn new_table(&self) -> &str {
        &self.new
    }

    /// Where the tables are, for messages.
    pub fn location(&self) -> String {
        format!("redb tables {} -> {}", self.old, self.new)
    }

    fn old_def(&self) -> RowDef<'_> {
        TableDefinition::new(&self.old)
    }

    fn new_def(&self) -> RowDef<'_> {
        TableDefinition::new(&self.new)
    }

    fn tomb_def(&self) -> TombDef<'_> {
        TableDefinition::new(&self.tombstones)
    }

    fn err<E: Into<redb::Error>>(
        &self,
        operation: &'static str,
    ) -> impl FnOnce(E) -> MigrationError + '_ {
        move |e| MigrationError::store(self.location(), operation, e.into())
    }

    fn decode(&self, bytes: &[u8]) -> Result<MigrationCheckpoint, MigrationError> {
        MigrationCheckpoint::from_bytes(bytes).map_err(|e| MigrationError::DamagedCheckpoint {
            migration: self.migration.clone(),
            location: format!("{} (table layout_core.migrations)", self.location()),
            reason: e.to_string(),
        })
    }

    /// This migration's checkpoint in `table` (the checkpoints table of a read or a write
    /// transaction).
    fn checkpoint_in(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Option<MigrationCheckpoint>, MigrationError> {
        table
            .get(self.migration.as_str())
            .map_err(self.err("read checkpoint"))?
            .map(|g| self.decode(g.value()))
            .transpose()
    }

    /// What `key` holds in the old table and in the new one (a row, a tombstone or
    /// nothing), in the tables of a read or a write transaction; a table that does not
    /// exist yet is `None`.
    fn entries_in(
        &self,
        key: &[u8],
        old: Option<&impl ReadableTable<&'static [u8], (u64, &'static [u8])>>,
        new: Option<&impl ReadableTable<&'static [u8], (u64, &'static [u8])>>,
        tombstones: Option<&impl ReadableTable<&'static [u8], ()>>,
    ) -> Result<(Option<Row>, NewEntry), MigrationError> {
        let old = match old {
            Some(t) => t
                .get(key)
                .map_err(self.err("read"))?
                .map(|g| to_row(key, g.value())),
            None => None,
        };
        if let Some(row) = match new {
            Some(t) => t.get(key).map_err(self.err("read"))?,
            None => None,
        } {
            return Ok((old, NewEntry::Row(to_row(key, row.value()))));
        }
        let tombstone = match tombstones {
            Some(t) => t.get(key).map_err(self.err("read tombstone"))?.is_some(),
            None => false,
        };
        let new = if tombstone {
            NewEntry::Tombstone
        } else {
            NewEntry::Absent
        };
        Ok((old, new))
    }

    /// Adds rows to the old table in one transaction (as the old software wrote them).
    pub fn insert_old_rows(
        &self,
        rows: impl IntoIterator<Item = Row>,
    ) -> Result<(), MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        {
            let mut old = txn
                .open_table(self.old_def())
                .map_err(self.err("open old table"))?;
            for r in rows {
                old.insert(r.key.as_slice(), (r.modified_ms, r.value.as_slice()))
                    .map_err(self.err("insert"))?;
            }
        }
        txn.commit().map_err(self.err("commit"))
    }

    /// The old table's rows, ascending.
    pub fn old_rows(&self) -> Result<Vec<Row>, MigrationError> {
        self.all(self.old_def())
    }

    /// The new table's rows, ascending.
    pub fn new_rows(&self) -> Result<Vec<Row>, MigrationError> {
        self.all(self.new_def())
    }

    /// How many tombstones are kept.
    pub fn tombstone_count(&self) -> Result<u64, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        match txn.open_table(self.tomb_def()) {
            Ok(t) => t.len().map_err(self.err("count")),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.err("open tombstones")(e)),
        }
    }

    /// Applies a live write inside `txn` (see [`MigratingStore::apply`]).
    fn apply_in(
        &self,
        txn: &redb::WriteTransaction,
        write: &LiveWrite,
    ) -> Result<(), MigrationError> {
        match write {
            LiveWrite::Put { old, new } => {
                if let Some(r) = old {
                    let mut t = txn
                        .open_table(self.old_def())
                        .map_err(self.err("open old table"))?;
                    t.insert(r.key.as_slice(), (r.modified_ms, r.value.as_slice()))
                        .map_err(self.err("insert"))?;
                }
                if let Some(r) = new {
                    let mut t = txn
                        .open_table(self.new_def())
                        .map_err(self.err("open new table"))?;
                    t.insert(r.key.as_slice(), (r.modified_ms, r.value.as_slice()))
                        .map_err(self.err("insert"))?;
                    let mut tomb = txn
                        .open_table(self.tomb_def())
                        .map_err(self.err("open tombstones"))?;
                    tomb.remove(r.key.as_slice())
                        .map_err(self.err("remove tombstone"))?;
                }
            }
            LiveWrite::Delete {
                key,
                old,
                new,
                tombstone,
            } => {
                if *old {
                    let mut t = txn
                        .open_table(self.old_def())
                        .map_err(self.err("open old table"))?;
                    t.remove(key.as_slice()).map_err(self.err("delete"))?;
                }
                if *new {
                    let mut t = txn
                        .open_table(self.new_def())
                        .map_err(self.err("open new table"))?;
                    t.remove(key.as_slice()).map_err(self.err("delete"))?;
                    if *tombstone {
                        let mut tomb = txn
                            .open_table(self.tomb_def())
                            .map_err(self.err("open tombstones"))?;
                        tomb.insert(key.as_slice(), ())
                            .map_err(self.err("insert tombstone"))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn all(&self, def: RowDef<'_>) -> Result<Vec<Row>, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = match txn.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err("open table")(e)),
        };
        let mut rows = Vec::new();
        for item in table.iter().map_err(self.err("iterate"))? {
            let (k, v) = item.map_err(self.err("read"))?;
            rows.push(to_row(k.value(), v.value()));
        }
        Ok(rows)
    }
}

/// A table of a read transaction, or `None` when it does not exist yet (nothing written).
fn existing<T>(opened: Result<T, redb::TableError>) -> Result<Option<T>, redb::TableError> {
    match opened {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn to_row(key: &[u8], (modified_ms, value): (u64, &[u8])) -> Row {
    Row {
        key: key.to_vec(),
        value: value.to_vec(),
        modified_ms,
    }
}

/// Copy if absent: puts the row, and puts back what a live write stored first (rare;
/// cheaper than a lookup before every insert). Whether the row was written.
fn copy_if_absent(
    table: &mut redb::Table<'_, &'static [u8], (u64, &'static [u8])>,
    key: &[u8],
    value: (u64, &[u8]),
) -> Result<bool, redb::StorageError> {
    let previous = table.insert(key, value)?.map(|g| {
        let (ms, v) = g.value();
        (ms, v.to_vec())
    });
    match previous {
        Some((ms, v)) => {
            table.insert(key, (ms, v.as_slice()))?;
            Ok(false)
        }
        None => Ok(true),
    }
}

/// Rows of `table` whose key starts with `prefix`.
fn prefix_rows<T: ReadableTable<&'static [u8], (u64, &'static [u8])>>(
    table: &T,
    prefix: &[u8],
) -> Result<Vec<Row>, redb::Error> {
    let mut rows = Vec::new();
    for item in table.range::<&[u8]>((Bound::Included(prefix), Bound::Unbounded))? {
        let (k, v) = item?;
        if !k.value().starts_with(prefix) {
            break;
        }
        rows.push(to_row(k.value(), v.value()));
    }
    Ok(rows)
}

impl MigrationSource for RedbMigrationStore {
    fn source_location(&self) -> String {
        self.location()
    }

    fn total_rows(&self) -> Result<Option<u64>, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        match txn.open_table(self.old_def()) {
            Ok(t) => Ok(Some(t.len().map_err(self.err("count"))?)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(Some(0)),
            Err(e) => Err(self.err("open old table")(e)),
        }
    }

    fn read_batch(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = match txn.open_table(self.old_def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.err("open old table")(e)),
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rows = Vec::with_capacity(limit.min(1 << 16));
        for item in table
            .range::<&[u8]>((lower, Bound::Unbounded))
            .map_err(self.err("range"))?
            .take(limit)
        {
            let (k, v) = item.map_err(self.err("read"))?;
            rows.push(to_row(k.value(), v.value()));
        }
        Ok(rows)
    }
}

impl MigrationSink for RedbMigrationStore {
    fn sink_location(&self) -> String {
        self.location()
    }

    fn load_checkpoint(&self) -> Result<Option<MigrationCheckpoint>, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        match existing(txn.open_table(CHECKPOINTS)).map_err(self.err("open checkpoints"))? {
            Some(table) => self.checkpoint_in(&table),
            None => Ok(None),
        }
    }

    fn write_batch(
        &self,
        expected: Option<&MigrationCheckpoint>,
        rows: &[Row],
        next: &MigrationCheckpoint,
    ) -> Result<BatchWrite, MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        let written = {
            let mut checkpoints = txn
                .open_table(CHECKPOINTS)
                .map_err(self.err("open checkpoints"))?;
            let current = self.checkpoint_in(&checkpoints)?;
            if current.as_ref() != expected {
                drop(checkpoints);
                txn.abort().map_err(self.err("abort"))?;
                return Ok(BatchWrite::Conflict { current });
            }
            let mut written = 0u64;
            if !rows.is_empty() {
                let mut new = txn
                    .open_table(self.new_def())
                    .map_err(self.err("open new table"))?;
                let tombstones = txn
                    .open_table(self.tomb_def())
                    .map_err(self.err("open tombstones"))?;
                let check_tombstones = !tombstones.is_empty().map_err(self.err("count"))?;
                for r in rows {
                    if check_tombstones
                        && tombstones
                            .get(r.key.as_slice())
                            .map_err(self.err("read tombstone"))?
                            .is_some()
                    {
                        continue;
                    }
                    // Copy if absent: put the row, and put back what a live write stored
                    // first (rare; cheaper than a lookup before every insert).
                    let previous = new
                        .insert(r.key.as_slice(), (r.modified_ms, r.value.as_slice()))
                        .map_err(self.err("insert"))?
                        .map(|g| {
                            let (ms, v) = g.value();
                            (ms, v.to_vec())
                        });
                    match previous {
                        Some((ms, v)) => {
                            new.insert(r.key.as_slice(), (ms, v.as_slice()))
                                .map_err(self.err("insert"))?;
                        }
                        None => written += 1,
                    }
                }
            }
            checkpoints
                .insert(self.migration.as_str(), next.to_bytes().as_slice())
                .map_err(self.err("write checkpoint"))?;
            written
        };
        txn.commit().map_err(self.err("commit"))?;
        Ok(BatchWrite::Written { rows: written })
    }

    fn copy_next_batch(
        &self,
        expected: &MigrationCheckpoint,
        limit: usize,
        transform: Option<CheckedTransform<'_>>,
        now_ms: u64,
    ) -> Result<Option<BatchCopy>, MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        let outcome = {
            let mut checkpoints = txn
                .open_table(CHECKPOINTS)
                .map_err(self.err("open checkpoints"))?;
            let current = self.checkpoint_in(&checkpoints)?;
            if current.as_ref() != Some(expected) {
                drop(checkpoints);
                txn.abort().map_err(self.err("abort"))?;
                return Ok(Some(BatchCopy::Conflict { current }));
            }
            let old = txn
                .open_table(self.old_def())
                .map_err(self.err("open old table"))?;
            let mut new = txn
                .open_table(self.new_def())
                .map_err(self.err("open new table"))?;
            let tombstones = txn
                .open_table(self.tomb_def())
                .map_err(self.err("open tombstones"))?;
            let check_tombstones = !tombstones.is_empty().map_err(self.err("count"))?;
            let lower = expected
                .last_key
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Excluded);
            let mut read = 0usize;
            let mut written = 0u64;
            let mut last_key: Option<Vec<u8>> = None;
            for item in old
                .range::<&[u8]>((lower, Bound::Unbounded))
                .map_err(self.err("range"))?
                .take(limit)
            {
                let (k, v) = item.map_err(self.err("read"))?;
                read += 1;
                let key = k.value();
                if read == limit {
                    last_key = Some(key.to_vec());
                }
                if check_tombstones
                    && tombstones
                        .get(key)
                        .map_err(self.err("read tombstone"))?
                        .is_some()
                {
                    continue;
                }
                let inserted = match transform {
                    None => copy_if_absent(&mut new, key, v.value()).map_err(self.err("insert"))?,
                    Some(transform) => match transform(to_row(key, v.value()))? {
                        Some(row) => copy_if_absent(
                            &mut new,
                            &row.key,
                            (row.modified_ms, row.value.as_slice()),
                        )
                        .map_err(self.err("insert"))?,
                        None => false,
                    },
                };
                if inserted {
                    written += 1;
                }
            }
            if read > 0 && read < limit {
                // A short batch: find its last key (the range ended before `limit`).
                let mut range = old
                    .range::<&[u8]>((lower, Bound::Unbounded))
                    .map_err(self.err("range"))?;
                if let Some(item) = range.next_back() {
                    let (k, _) = item.map_err(self.err("read"))?;
                    last_key = Some(k.value().to_vec());
                }
            }
            let next = expected.after_batch(read, last_key.as_deref(), limit, now_ms);
            checkpoints
                .insert(self.migration.as_str(), next.to_bytes().as_slice())
                .map_err(self.err("write checkpoint"))?;
            BatchCopy::Copied { next, written }
        };
        txn.commit().map_err(self.err("commit"))?;
        Ok(Some(outcome))
    }

    fn finish(&self) -> Result<(), MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        txn.delete_table(self.tomb_def())
            .map_err(self.err("delete tombstones"))?;
        txn.commit().map_err(self.err("commit"))
    }

    fn reset(&self) -> Result<(), MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        txn.delete_table(self.new_def())
            .map_err(self.err("delete new table"))?;
        txn.delete_table(self.tomb_def())
            .map_err(self.err("delete tombstones"))?;
        {
            let mut checkpoints = txn
                .open_table(CHECKPOINTS)
                .map_err(self.err("open checkpoints"))?;
            checkpoints
                .remove(self.migration.as_str())
                .map_err(self.err("remove checkpoint"))?;
        }
        txn.commit().map_err(self.err("commit"))
    }
}

impl MigratingStore for RedbMigrationStore {
    fn view(&self, key: &[u8]) -> Result<KeyView, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let (old, new) = self.entries_in(
            key,
            existing(txn.open_table(self.old_def()))
                .map_err(self.err("open old table"))?
                .as_ref(),
            existing(txn.open_table(self.new_def()))
                .map_err(self.err("open new table"))?
                .as_ref(),
            existing(txn.open_table(self.tomb_def()))
                .map_err(self.err("open tombstones"))?
                .as_ref(),
        )?;
        let checkpoint =
            match existing(txn.open_table(CHECKPOINTS)).map_err(self.err("open checkpoints"))? {
                Some(t) => self.checkpoint_in(&t)?,
                None => None,
            };
        Ok(KeyView {
            old,
            new,
            checkpoint,
        })
    }

    fn scan(&self, prefix: &[u8]) -> Result<ScanView, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let rows = |def: RowDef<'_>| -> Result<Vec<Row>, MigrationError> {
            match txn.open_table(def) {
                Ok(t) => prefix_rows(&t, prefix).map_err(self.err("scan")),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
                Err(e) => Err(self.err("open table")(e)),
            }
        };
        let old = rows(self.old_def())?;
        let new = rows(self.new_def())?;
        let mut tombstones = Vec::new();
        match txn.open_table(self.tomb_def()) {
            Ok(t) => {
                for item in t
                    .range::<&[u8]>((Bound::Included(prefix), Bound::Unbounded))
                    .map_err(self.err("scan tombstones"))?
                {
                    let (k, ()) = item
                        .map(|(k, v)| (k, v.value()))
                        .map_err(self.err("read tombstone"))?;
                    if !k.value().starts_with(prefix) {
                        break;
                    }
                    tombstones.push(k.value().to_vec());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err("open tombstones")(e)),
        }
        let checkpoint =
            match existing(txn.open_table(CHECKPOINTS)).map_err(self.err("open checkpoints"))? {
                Some(t) => self.checkpoint_in(&t)?,
                None => None,
            };
        Ok(ScanView {
            old,
            new,
            tombstones,
            checkpoint,
        })
    }

    fn apply(&self, write: &LiveWrite) -> Result<(), MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        self.apply_in(&txn, write)?;
        txn.commit().map_err(self.err("commit"))
    }

    fn apply_if_unchanged(
        &self,
        key: &[u8],
        expected: &KeyView,
        write: &LiveWrite,
    ) -> Result<bool, MigrationError> {
        // redb has one writer at a time: reading the key in the write transaction makes
        // the comparison and the write one atomic step.
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        let (old, new) = self.entries_in(
            key,
            Some(
                &txn.open_table(self.old_def())
                    .map_err(self.err("open old table"))?,
            ),
            Some(
                &txn.open_table(self.new_def())
                    .map_err(self.err("open new table"))?,
            ),
            Some(
                &txn.open_table(self.tomb_def())
                    .map_err(self.err("open tombstones"))?,
            ),
        )?;
        if old != expected.old || new != expected.new {
            txn.abort().map_err(self.err("abort"))?;
            return Ok(false);
        }
        self.apply_in(&txn, write)?;
        txn.commit().map_err(self.err("commit"))?;
        Ok(true)
    }

    fn clear(&self, tables: ClearTables) -> Result<(), MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        if tables.includes_old() {
            txn.delete_table(self.old_def())
                .map_err(self.err("delete old table"))?;
        }
        if tables.includes_new() {
            txn.delete_table(self.new_def())
                .map_err(self.err("delete new table"))?;
        }
        txn.delete_table(self.tomb_def())
            .map_err(self.err("delete tombstones"))?;
        {
            let mut checkpoints = txn
                .open_table(CHECKPOINTS)
                .map_err(self.err("open checkpoints"))?;
            let current = self.checkpoint_in(&checkpoints)?;
            if let Some(mut cp) = current.filter(|c| !c.complete) {
                cp.complete = true;
                cp.epoch += 1;
                checkpoints
                    .insert(self.migration.as_str(), cp.to_bytes().as_slice())
                    .map_err(self.err("write checkpoint"))?;
            }
        }
        txn.commit().map_err(self.err("commit"))
    }
}
