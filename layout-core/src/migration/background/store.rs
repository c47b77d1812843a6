//! The two tables a background migration works between: rows, the source it reads,
//! the sink it writes (with its checkpoint), and what a batch write did.

use std::sync::Arc;

use super::{MigrationCheckpoint, MigrationError};
use crate::error::StepError;

/// One row of a table: key, value, and the time it was last modified (kept as it is by
/// the migration: the copy of a row carries the original's timestamp).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Row {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// When the row was last modified, in milliseconds since the Unix epoch.
    pub modified_ms: u64,
}

impl Row {
    /// A row.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, modified_ms: u64) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            modified_ms,
        }
    }
}

/// The table a background migration reads: the old layout.
pub trait MigrationSource: Send + Sync {
    /// Where it is, for messages.
    fn source_location(&self) -> String;

    /// How many rows it holds, if that is cheap to know (for progress and ETA).
    fn total_rows(&self) -> Result<Option<u64>, MigrationError>;

    /// Up to `limit` rows with keys above `after` (from the first key when `None`), in
    /// ascending key order.
    fn read_batch(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, MigrationError>;
}

/// What [`MigrationSink::write_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchWrite {
    /// The batch and the checkpoint were stored.
    Written {
        /// Rows written (the others were skipped: the destination already held a row or
        /// a tombstone for their key).
        rows: u64,
    },
    /// The stored checkpoint was not the expected one; nothing was written.
    Conflict {
        /// The checkpoint stored now.
        current: Option<MigrationCheckpoint>,
    },
}

/// What [`MigrationSink::copy_next_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchCopy {
    /// The batch and the checkpoint `next` were stored.
    Copied {
        /// The checkpoint stored.
        next: MigrationCheckpoint,
        /// Rows written (the others were skipped or dropped).
        written: u64,
    },
    /// The stored checkpoint was not the expected one; nothing was written.
    Conflict {
        /// The checkpoint stored now.
        current: Option<MigrationCheckpoint>,
    },
}

/// A row transform as the migration hands it to
/// [`MigrationSink::copy_next_batch`]: checked, with errors already naming the migration.
pub type CheckedTransform<'a> = &'a dyn Fn(Row) -> Result<Option<Row>, MigrationError>;

/// The table a background migration writes, the new layout, and where its checkpoint
/// lives.
///
/// Contract of [`write_batch`](Self::write_batch), which the correctness of migrating
/// while serving rests on:
/// - it is atomic where the store allows (rows and checkpoint in one transaction); where
///   it is not, rows must be written before the checkpoint, so a crash in between redoes
///   the batch, which is idempotent;
/// - it writes a row only where the destination holds neither a row nor a tombstone for
///   its key ("copy if absent"), atomically with respect to the component's own writes
///   to that key;
/// - it writes nothing when the stored checkpoint differs from `expected`.
pub trait MigrationSink: Send + Sync {
    /// Where it is, for messages.
    fn sink_location(&self) -> String;

    /// The stored checkpoint; `None` when the migration never started (or was reset).
    fn load_checkpoint(&self) -> Result<Option<MigrationCheckpoint>, MigrationError>;

    /// If the stored checkpoint equals `expected`: copies `rows` (if absent, see the
    /// trait docs) and stores `next`.
    fn write_batch(
        &self,
        expected: Option<&MigrationCheckpoint>,
        rows: &[Row],
        next: &MigrationCheckpoint,
    ) -> Result<BatchWrite, MigrationError>;

    /// For a sink that also holds the source table (one store, such as
    /// [`RedbMigrationStore`](crate::migration::RedbMigrationStore)): reads the batch after
    /// `expected.last_key` from its own source table and writes it, with the checkpoint
    /// [`MigrationCheckpoint::after_batch`] gives, in one transaction, under the same contract as
    /// [`write_batch`](Self::write_batch). Called only when the migration's source and
    /// sink are this same object (see [`BackgroundMigration::builder`]). `Ok(None)` (the
    /// default): not supported; the migration reads through its [`MigrationSource`].
    ///
    /// [`BackgroundMigration::builder`]: super::BackgroundMigration::builder
    fn copy_next_batch(
        &self,
        expected: &MigrationCheckpoint,
        limit: usize,
        transform: Option<CheckedTransform<'_>>,
        now_ms: u64,
    ) -> Result<Option<BatchCopy>, MigrationError> {
        let _ = (expected, limit, transform, now_ms);
        Ok(None)
    }

    /// Called once the copy is complete: drops the tombstones kept for it.
    fn finish(&self) -> Result<(), MigrationError>;

    /// Discards the migration: the copied rows, the tombstones and the checkpoint. For a
    /// restart from scratch (after a downgrade let old software write only the old
    /// table).
    fn reset(&self) -> Result<(), MigrationError>;
}

/// Rewrites one row; `Ok(None)` drops it. Keys must stay the same.
pub type RowTransform = Arc<dyn Fn(Row) -> Result<Option<Row>, StepError> + Send + Sync>;
