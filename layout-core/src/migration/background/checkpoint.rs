//! The checkpoint a background migration persists with every batch.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How far a migration has come, persisted with every batch.
///
/// Compared whole by [`MigrationSink::write_batch`]: a batch is written only if the
/// stored checkpoint is still the one the batch started from.
///
/// [`MigrationSink::write_batch`]: super::MigrationSink::write_batch
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationCheckpoint {
    /// The last key read from the source (`None` before the first batch). Every key at or
    /// below it has been copied.
    pub last_key: Option<Vec<u8>>,
    /// Rows read from the source and handled (copied, skipped, or dropped by the
    /// transform).
    pub done: u64,
    /// Batches committed.
    pub batches: u64,
    /// How many runs have started: 1 for the first, plus one per resume (after a
    /// restart, a crash, a cancel).
    pub runs: u32,
    /// Bumped when everything is deleted during the migration: a batch read before
    /// that is discarded.
    pub epoch: u64,
    /// Whether the copy is complete.
    pub complete: bool,
    /// When the first run started (ms since the epoch, from the migration's clock).
    pub started_ms: u64,
    /// When it completed.
    pub completed_ms: Option<u64>,
    /// How long the migration has been running, over every run, up to
    /// [`updated_ms`](Self::updated_ms), in ms: the time between a run's start and its
    /// batches, never the time the component was down (0 in a checkpoint written before
    /// this field existed).
    #[serde(default)]
    pub active_ms: u64,
    /// When this checkpoint was written (ms since the epoch, on the migration's clock);
    /// 0 in a checkpoint written before this field existed.
    #[serde(default)]
    pub updated_ms: u64,
    /// The rows in the source, as counted when the current run started (and never below
    /// [`done`](Self::done)), so a restarted component knows the total before its first
    /// batch; `None` when the source cannot count them cheaply.
    #[serde(default)]
    pub total: Option<u64>,
}

impl MigrationCheckpoint {
    /// Whether `key` has been migrated (it lies at or below the last key copied, or the
    /// copy is complete).
    pub fn covers(&self, key: &[u8]) -> bool {
        self.complete || self.last_key.as_deref().is_some_and(|last| key <= last)
    }

    /// The checkpoint after a batch that read `read` rows (of at most `batch_size`), the
    /// last with key `last_key`, at `now_ms`: a short batch completes the copy. For
    /// sinks implementing [`MigrationSink::copy_next_batch`].
    ///
    /// [`MigrationSink::copy_next_batch`]: super::MigrationSink::copy_next_batch
    #[must_use]
    pub fn after_batch(
        &self,
        read: usize,
        last_key: Option<&[u8]>,
        batch_size: usize,
        now_ms: u64,
    ) -> MigrationCheckpoint {
        let mut next = self.clone();
        next.batches += 1;
        next.done += read as u64;
        if let Some(last) = last_key {
            next.last_key = Some(last.to_vec());
        }
        if self.updated_ms > 0 {
            next.active_ms += now_ms.saturating_sub(self.updated_ms);
        }
        next.updated_ms = now_ms;
        next.total = self.total.map(|t| t.max(next.done));
        if read < batch_size {
            next.complete = true;
            next.completed_ms = Some(now_ms);
            next.total = Some(next.done);
        }
        next
    }

    /// How long the migration has been running at `now_ms`, downtime excluded: the
    /// stored [`active_ms`](Self::active_ms), plus the time since the checkpoint was
    /// written when a run is going on (`running`).
    pub fn active_elapsed(&self, now_ms: u64, running: bool) -> Duration {
        let since = if running && self.updated_ms > 0 && !self.complete {
            now_ms.saturating_sub(self.updated_ms)
        } else {
            0
        };
        Duration::from_millis(self.active_ms.saturating_add(since))
    }

    /// The checkpoint as bytes (JSON), for stores that keep it as a value.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing this plain struct cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A checkpoint from [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
