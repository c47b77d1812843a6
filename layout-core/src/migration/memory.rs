//! An in-memory [`MigratingStore`]: old table, new table, tombstones and checkpoint under
//! one lock. For tests, and as the reference the other backends are compared with.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use parking_lot::Mutex;

use super::background::{
    BatchWrite, MigrationCheckpoint, MigrationError, MigrationSink, MigrationSource, Row,
};
use super::table::{ClearTables, KeyView, LiveWrite, MigratingStore, NewEntry, ScanView};

type Table = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

/// Old and new table of one migration, in memory. Every operation is atomic (one lock).
///
/// ```
/// use layout_core::migration::{MemoryMigrationStore, MigrationSource, Row};
///
/// let store = MemoryMigrationStore::new();
/// store.insert_old(Row::new(*b"k", *b"v", 7));
/// assert_eq!(store.read_batch(None, 10)?, [Row::new(*b"k", *b"v", 7)]);
/// # Ok::<(), layout_core::migration::MigrationError>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryMigrationStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    old: Table,
    new: Table,
    tombstones: BTreeSet<Vec<u8>>,
    checkpoint: Option<MigrationCheckpoint>,
    batch_writes: u64,
}

impl Inner {
    fn old_row(&self, key: &[u8]) -> Option<Row> {
        self.old.get(key).map(|v| row(key, v))
    }

    fn new_entry(&self, key: &[u8]) -> NewEntry {
        match self.new.get(key) {
            Some(v) => NewEntry::Row(row(key, v)),
            None if self.tombstones.contains(key) => NewEntry::Tombstone,
            None => NewEntry::Absent,
        }
    }

    /// Applies a live write (see [`MigratingStore::apply`]).
    fn apply(&mut self, write: &LiveWrite) {
        match write {
            LiveWrite::Put { old, new } => {
                if let Some(r) = old {
                    self.old
                        .insert(r.key.clone(), (r.value.clone(), r.modified_ms));
                }
                if let Some(r) = new {
                    self.tombstones.remove(&r.key);
                    self.new
                        .insert(r.key.clone(), (r.value.clone(), r.modified_ms));
                }
            }
            LiveWrite::Delete {
                key,
                old,
                new,
                tombstone,
            } => {
                if *old {
                    self.old.remove(key);
                }
                if *new {
                    self.new.remove(key);
                    if *tombstone {
                        self.tombstones.insert(key.clone());
                    }
                }
            }
        }
    }
}

fn row(key: &[u8], (value, modified_ms): &(Vec<u8>, u64)) -> Row {
    Row {
        key: key.to_vec(),
        value: value.clone(),
        modified_ms: *modified_ms,
    }
}

fn with_prefix<'a>(table: &'a Table, prefix: &'a [u8]) -> impl Iterator<Item = Row> + 'a {
    table
        .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
        .map(|(k, v)| row(k, v))
}

impl MemoryMigrationStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a row to the old table directly (as the old software wrote it).
    pub fn insert_old(&self, row: Row) {
        self.inner
            .lock()
            .old
            .insert(row.key, (row.value, row.modified_ms));
    }

    /// The old table's rows, ascending.
    pub fn old_rows(&self) -> Vec<Row> {
        self.inner
            .lock()
            .old
            .iter()
            .map(|(k, v)| row(k, v))
            .collect()
    }

    /// The new table's rows, ascending.
    pub fn new_rows(&self) -> Vec<Row> {
        self.inner
            .lock()
            .new
            .iter()
            .map(|(k, v)| row(k, v))
            .collect()
    }

    /// How many tombstones are kept.
    pub fn tombstone_count(&self) -> usize {
        self.inner.lock().tombstones.len()
    }

    /// The stored checkpoint.
    pub fn checkpoint(&self) -> Option<MigrationCheckpoint> {
        self.inner.lock().checkpoint.clone()
    }

    /// How many [`MigrationSink::write_batch`] calls stored something.
    pub fn batch_writes(&self) -> u64 {
        self.inner.lock().batch_writes
    }
}

impl MigrationSource for MemoryMigrationStore {
    fn source_location(&self) -> String {
        "memory".to_owned()
    }

    fn total_rows(&self) -> Result<Option<u64>, MigrationError> {
        Ok(Some(self.inner.lock().old.len() as u64))
    }

    fn read_batch(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, MigrationError> {
        let inner = self.inner.lock();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(inner
            .old
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| row(k, v))
            .collect())
    }
}

impl MigrationSink for MemoryMigrationStore {
    fn sink_location(&self) -> String {
        "memory".to_owned()
    }

    fn load_checkpoint(&self) -> Result<Option<MigrationCheckpoint>, MigrationError> {
        Ok(self.inner.lock().checkpoint.clone())
    }

    fn write_batch(
        &self,
        expected: Option<&MigrationCheckpoint>,
        rows: &[Row],
        next: &MigrationCheckpoint,
    ) -> Result<BatchWrite, MigrationError> {
        let mut inner = self.inner.lock();
        if inner.checkpoint.as_ref() != expected {
            return Ok(BatchWrite::Conflict {
                current: inner.checkpoint.clone(),
            });
        }
        let mut written = 0;
        for r in rows {
            if inner.tombstones.contains(&r.key) || inner.new.contains_key(&r.key) {
                continue;
            }
            inner
                .new
                .insert(r.key.clone(), (r.value.clone(), r.modified_ms));
            written += 1;
        }
        inner.checkpoint = Some(next.clone());
        inner.batch_writes += 1;
        Ok(BatchWrite::Written { rows: written })
    }

    fn finish(&self) -> Result<(), MigrationError> {
        self.inner.lock().tombstones.clear();
        Ok(())
    }

    fn reset(&self) -> Result<(), MigrationError> {
        let mut inner = self.inner.lock();
        inner.new.clear();
        inner.tombstones.clear();
        inner.checkpoint = None;
        Ok(())
    }
}

impl MigratingStore for MemoryMigrationStore {
    fn view(&self, key: &[u8]) -> Result<KeyView, MigrationError> {
        let inner = self.inner.lock();
        Ok(KeyView {
            old: inner.old_row(key),
            new: inner.new_entry(key),
            checkpoint: inner.checkpoint.clone(),
        })
    }

    fn scan(&self, prefix: &[u8]) -> Result<ScanView, MigrationError> {
        let inner = self.inner.lock();
        Ok(ScanView {
            old: with_prefix(&inner.old, prefix).collect(),
            new: with_prefix(&inner.new, prefix).collect(),
            tombstones: inner
                .tombstones
                .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|k| k.starts_with(prefix))
                .cloned()
                .collect(),
            checkpoint: inner.checkpoint.clone(),
        })
    }

    fn apply(&self, write: &LiveWrite) -> Result<(), MigrationError> {
        self.inner.lock().apply(write);
        Ok(())
    }

    fn apply_if_unchanged(
        &self,
        key: &[u8],
        expected: &KeyView,
        write: &LiveWrite,
    ) -> Result<bool, MigrationError> {
        let mut inner = self.inner.lock();
        if inner.old_row(key) != expected.old || inner.new_entry(key) != expected.new {
            return Ok(false);
        }
        inner.apply(write);
        Ok(true)
    }

    fn clear(&self, tables: ClearTables) -> Result<(), MigrationError> {
        let mut inner = self.inner.lock();
        if tables.includes_old() {
            inner.old.clear();
        }
        if tables.includes_new() {
            inner.new.clear();
        }
        inner.tombstones.clear();
        if let Some(cp) = inner.checkpoint.as_mut().filter(|c| !c.complete) {
            cp.complete = true;
            cp.epoch += 1;
        }
        Ok(())
    }
}
