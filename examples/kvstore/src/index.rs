//! The value index `kv_by_value` and the background migration that fills it.
//!
//! An index entry's key is `len(value) as u32 BE ‖ value ‖ key`, its value empty, so the
//! keys holding a value are one prefix scan. The migration reads table `kv` in key order
//! and, for each row, puts the entry derived from it "if absent": not when the index
//! already holds it and not when a tombstone (`kv_by_value.tombstones`) says a live
//! write removed it. Each batch and its checkpoint (table `kv_migrations`) are one redb
//! write transaction, and the component's own writes are redb write transactions too,
//! so a batch never interleaves with a write.
//!
//! Each batch, and each write that maintains the index (dual writes while the migration
//! runs, every write after), also records in `kv_meta` the applied index the index is in
//! step with (`index_synced_through`). An older release knows nothing of it, so after it
//! wrote `kv` the store's applied index is above the watermark, and the next start of a
//! release that maintains the index starts the migration over (see `Engine::open`).

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use layout_core::migration::{
    BatchCopy, BatchWrite, CheckedTransform, MigrationCheckpoint, MigrationError, MigrationSink,
    MigrationSource, Row,
};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};

use super::codec::decode_any;
use super::store::{DbCell, KV, META, META_APPLIED, META_INDEX_SYNCED};

/// The index table: index key -> ().
pub(crate) const INDEX: TableDefinition<'static, &'static [u8], ()> =
    TableDefinition::new("kv_by_value");
/// Index keys removed by live writes while the migration runs.
pub(crate) const INDEX_TOMBSTONES: TableDefinition<'static, &'static [u8], ()> =
    TableDefinition::new("kv_by_value.tombstones");
/// Checkpoints of the kvstore's migrations, by name.
pub(crate) const CHECKPOINTS: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("kv_migrations");

/// The migration's name (its checkpoint key).
pub(crate) const MIGRATION_NAME: &str = "kv_by_value";

/// The index key of `key` holding `value`.
pub(crate) fn index_key(value: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + value.len() + key.len());
    // Values are bounded by the request body limit, far below u32::MAX.
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Source and sink of the index migration, over the kvstore's database.
pub(crate) struct IndexStore {
    /// The kvstore's database (reopened in place after an I/O error).
    pub(crate) db: Arc<DbCell>,
    pub(crate) path: PathBuf,
    pub(crate) software_layout_version: u32,
}

impl IndexStore {
    /// The error for a redb error met doing `op`; an I/O error degrades the store (see
    /// [`DbCell`]), and once degraded the error names the cause.
    fn err<E: Into<redb::Error>>(&self, op: &'static str) -> impl FnOnce(E) -> MigrationError + '_ {
        move |e| {
            let e = e.into();
            self.db.observe(op, &e);
            let location = self.path.display().to_string();
            match self.db.degraded() {
                Some(cause) => MigrationError::store(
                    location,
                    op,
                    format!("the database is degraded: {cause}"),
                ),
                None => MigrationError::store(location, op, e),
            }
        }
    }

    fn entry_of(&self, key: &[u8], record: &[u8]) -> Result<Vec<u8>, MigrationError> {
        let key_text = String::from_utf8_lossy(key);
        let value = decode_any(record, self.software_layout_version).map_err(|reason| {
            MigrationError::store(
                self.path.display().to_string(),
                "decode value record",
                format!("key {key_text:?}: {reason}"),
            )
        })?;
        Ok(index_key(&value, &key_text))
    }

    fn decode_checkpoint(&self, bytes: &[u8]) -> Result<MigrationCheckpoint, MigrationError> {
        MigrationCheckpoint::from_bytes(bytes).map_err(self.err_json())
    }

    fn err_json(&self) -> impl FnOnce(serde_json::Error) -> MigrationError + '_ {
        move |e| MigrationError::store(self.path.display().to_string(), "decode checkpoint", e)
    }

    /// Copies `rows` (kv rows) into the index if absent; returns the entries written.
    fn copy_rows<'r>(
        &self,
        txn: &redb::WriteTransaction,
        rows: impl Iterator<Item = (&'r [u8], &'r [u8])>,
    ) -> Result<u64, MigrationError> {
        let mut index = txn.open_table(INDEX).map_err(self.err("open index"))?;
        let tombstones = txn
            .open_table(INDEX_TOMBSTONES)
            .map_err(self.err("open tombstones"))?;
        let check = !tombstones
            .is_empty()
            .map_err(self.err("count tombstones"))?;
        let mut written = 0;
        for (key, record) in rows {
            let entry = self.entry_of(key, record)?;
            if check
                && tombstones
                    .get(entry.as_slice())
                    .map_err(self.err("read tombstone"))?
                    .is_some()
            {
                continue;
            }
            if index
                .insert(entry.as_slice(), ())
                .map_err(self.err("insert index entry"))?
                .is_none()
            {
                written += 1;
            }
        }
        Ok(written)
    }

    fn stored_checkpoint(
        &self,
        txn: &redb::WriteTransaction,
    ) -> Result<Option<MigrationCheckpoint>, MigrationError> {
        let table = txn
            .open_table(CHECKPOINTS)
            .map_err(self.err("open checkpoints"))?;
        let stored = table
            .get(MIGRATION_NAME)
            .map_err(self.err("read checkpoint"))?;
        stored
            .map(|g| self.decode_checkpoint(g.value()))
            .transpose()
    }

    /// Records in `txn` that the index follows `kv` through the applied index (see
    /// [`META_INDEX_SYNCED`]): a batch commits with the rows it read, under redb's single
    /// writer, so every write applied so far is in what it copied or already dual-written.
    fn mark_synced(&self, txn: &redb::WriteTransaction) -> Result<(), MigrationError> {
        let mut meta = txn.open_table(META).map_err(self.err("open kv_meta"))?;
        let applied = meta
            .get(META_APPLIED)
            .map_err(self.err("read kv_meta"))?
            .map_or(0, |g| g.value());
        meta.insert(META_INDEX_SYNCED, applied)
            .map_err(self.err("write kv_meta"))?;
        Ok(())
    }

    fn store_checkpoint(
        &self,
        txn: &redb::WriteTransaction,
        next: &MigrationCheckpoint,
    ) -> Result<(), MigrationError> {
        let mut table = txn
            .open_table(CHECKPOINTS)
            .map_err(self.err("open checkpoints"))?;
        table
            .insert(MIGRATION_NAME, next.to_bytes().as_slice())
            .map_err(self.err("write checkpoint"))?;
        Ok(())
    }
}

impl MigrationSource for IndexStore {
    fn source_location(&self) -> String {
        format!("{} table kv", self.path.display())
    }

    fn total_rows(&self) -> Result<Option<u64>, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = txn.open_table(KV).map_err(self.err("open kv"))?;
        Ok(Some(table.len().map_err(self.err("count kv"))?))
    }

    fn read_batch(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = txn.open_table(KV).map_err(self.err("open kv"))?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut rows = Vec::new();
        for item in table
            .range::<&[u8]>((lower, Bound::Unbounded))
            .map_err(self.err("range kv"))?
            .take(limit)
        {
            let (k, v) = item.map_err(self.err("read kv"))?;
            let (ms, record) = v.value();
            rows.push(Row::new(k.value().to_vec(), record.to_vec(), ms));
        }
        Ok(rows)
    }
}

impl MigrationSink for IndexStore {
    fn sink_location(&self) -> String {
        format!("{} table kv_by_value", self.path.display())
    }

    fn load_checkpoint(&self) -> Result<Option<MigrationCheckpoint>, MigrationError> {
        let txn = self.db.begin_read().map_err(self.err("begin read"))?;
        let table = match txn.open_table(CHECKPOINTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err("open checkpoints")(e)),
        };
        let stored = table
            .get(MIGRATION_NAME)
            .map_err(self.err("read checkpoint"))?;
        stored
            .map(|g| self.decode_checkpoint(g.value()))
            .transpose()
    }

    fn write_batch(
        &self,
        expected: Option<&MigrationCheckpoint>,
        rows: &[Row],
        next: &MigrationCheckpoint,
    ) -> Result<BatchWrite, MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        let current = self.stored_checkpoint(&txn)?;
        if current.as_ref() != expected {
            txn.abort().map_err(self.err("abort"))?;
            return Ok(BatchWrite::Conflict { current });
        }
        let written = self.copy_rows(
            &txn,
            rows.iter().map(|r| (r.key.as_slice(), r.value.as_slice())),
        )?;
        self.store_checkpoint(&txn, next)?;
        self.mark_synced(&txn)?;
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
        if transform.is_some() {
            // The index migration is built without a transform; let the generic path
            // handle anything else.
            return Ok(None);
        }
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        let current = self.stored_checkpoint(&txn)?;
        if current.as_ref() != Some(expected) {
            txn.abort().map_err(self.err("abort"))?;
            return Ok(Some(BatchCopy::Conflict { current }));
        }
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        {
            let kv = txn.open_table(KV).map_err(self.err("open kv"))?;
            let lower = expected
                .last_key
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Excluded);
            for item in kv
                .range::<&[u8]>((lower, Bound::Unbounded))
                .map_err(self.err("range kv"))?
                .take(limit)
            {
                let (k, v) = item.map_err(self.err("read kv"))?;
                batch.push((k.value().to_vec(), v.value().1.to_vec()));
            }
        }
        let written = self.copy_rows(
            &txn,
            batch.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        )?;
        let last_key = batch.last().map(|(k, _)| k.as_slice());
        let next = expected.after_batch(batch.len(), last_key, limit, now_ms);
        self.store_checkpoint(&txn, &next)?;
        self.mark_synced(&txn)?;
        txn.commit().map_err(self.err("commit"))?;
        Ok(Some(BatchCopy::Copied { next, written }))
    }

    fn finish(&self) -> Result<(), MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        txn.delete_table(INDEX_TOMBSTONES)
            .map_err(self.err("delete tombstones"))?;
        txn.commit().map_err(self.err("commit"))
    }

    fn reset(&self) -> Result<(), MigrationError> {
        let txn = self.db.begin_write().map_err(self.err("begin write"))?;
        txn.delete_table(INDEX).map_err(self.err("delete index"))?;
        txn.delete_table(INDEX_TOMBSTONES)
            .map_err(self.err("delete tombstones"))?;
        {
            let mut table = txn
                .open_table(CHECKPOINTS)
                .map_err(self.err("open checkpoints"))?;
            table
                .remove(MIGRATION_NAME)
                .map_err(self.err("remove checkpoint"))?;
        }
        txn.commit().map_err(self.err("commit"))
    }
}
