//! Background migrations: copy (and rewrite) a large table into a new one in batches,
//! while the component keeps serving.
//!
//! A [`BackgroundMigration`] reads a [`MigrationSource`] (the old table) in key order,
//! batches of a fixed key count (default [`DEFAULT_BATCH_SIZE`]), optionally rewrites each
//! row, and writes it to a [`MigrationSink`] (the new table) together with a
//! [`Checkpoint`], atomically where the store allows. A restart resumes from the
//! checkpoint, redoing at most the one batch that was not committed. Old and new data stay
//! apart until the migration completes; rows keep their original timestamps, and the
//! migration writes nothing of its own into them.
//!
//! Run as a layout feature's `OnFinalize` action
//! ([`BackgroundMigration::run_as_action`]), the feature finalizes when the copy
//! completes. Meanwhile the component's writes go to both layouts, decided per write by a
//! [`DualWrite`] guard, so nothing copied earlier goes stale.
//!
//! # Why concurrent writes never go stale
//!
//! The copier writes a row into the new table only where the new table holds neither a
//! row nor a *tombstone* for that key ("copy if absent"), atomically with the checkpoint.
//! A write on the component's path, once the migration has started, goes to the old and
//! the new table in one atomic step, unconditionally, and a delete leaves a tombstone in
//! the new table until the migration completes. So whichever of the copier and a writer
//! reaches a key last, the new table ends with the writer's value: a copy never
//! overwrites a live write, and a deleted row is never brought back. The migration
//! switches writers to dual-write (under a write fence: writes in flight finish first)
//! before it reads its first batch, and the switch is persisted with the first
//! checkpoint, so it survives a restart.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard};
use serde::{Deserialize, Serialize};

use crate::action::{ActionContext, ActionError};
use crate::clock::{Clock, SystemClock};
pub use crate::clock::{ClockSleeper, Sleeper, ThreadSleeper};
use crate::error::BoxError;
use crate::error::StepError;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;

/// The default number of keys per batch.
pub const DEFAULT_BATCH_SIZE: usize = 10_000;

/// Crash point (see [`crate::crash_point`]): a batch is about to be read, transformed
/// and committed; the last checkpoint is durable.
pub const CRASH_BEFORE_BATCH: &str = "background_migration::before_batch";
/// Crash point: a batch's rows and the checkpoint after it are committed (one write),
/// the in-memory progress not yet updated.
pub const CRASH_BATCH_COMMITTED: &str = "background_migration::batch_committed";
/// Crash point: a committed batch is reported (progress, status, batch event).
pub const CRASH_BATCH_REPORTED: &str = "background_migration::batch_reported";
/// Crash point: every row is copied, the checkpoint says complete; the sink's `finish`
/// (dropping tombstones) has not run.
pub const CRASH_BEFORE_FINISH: &str = "background_migration::before_finish";
/// Crash point: the sink finished; the migration is complete.
pub const CRASH_FINISHED: &str = "background_migration::finished";

/// Every crash point of a background migration, in the order a run passes them (the
/// three batch points once per batch).
pub const CRASH_POINTS: &[&str] = &[
    CRASH_BEFORE_BATCH,
    CRASH_BATCH_COMMITTED,
    CRASH_BATCH_REPORTED,
    CRASH_BEFORE_FINISH,
    CRASH_FINISHED,
];

/// How long a paused migration waits before it checks again whether the finalization
/// that runs it was cancelled (a pause is otherwise woken by resume or cancel).
const PAUSE_POLL: Duration = Duration::from_millis(200);

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

/// How far a migration has come, persisted with every batch.
///
/// Compared whole by [`MigrationSink::write_batch`]: a batch is written only if the
/// stored checkpoint is still the one the batch started from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Checkpoint {
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

impl Checkpoint {
    /// Whether `key` has been migrated (it lies at or below the last key copied, or the
    /// copy is complete).
    pub fn covers(&self, key: &[u8]) -> bool {
        self.complete || self.last_key.as_deref().is_some_and(|last| key <= last)
    }

    /// The checkpoint after a batch that read `read` rows (of at most `batch_size`), the
    /// last with key `last_key`, at `now_ms`: a short batch completes the copy. For
    /// sinks implementing [`MigrationSink::copy_next_batch`].
    #[must_use]
    pub fn after_batch(
        &self,
        read: usize,
        last_key: Option<&[u8]>,
        batch_size: usize,
        now_ms: u64,
    ) -> Checkpoint {
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

/// A failure of a background migration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The store failed.
    #[error("migration store at {location}: {operation} failed: {source}")]
    Store {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The stored checkpoint cannot be read.
    #[error(
        "migration {migration}: the checkpoint at {location} is damaged ({reason}); it was \
         left untouched"
    )]
    DamagedCheckpoint {
        /// The migration.
        migration: String,
        /// Where.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The transform failed on a row.
    #[error("migration {migration}: the transform failed on key {key}: {source}")]
    Transform {
        /// The migration.
        migration: String,
        /// The key, printable.
        key: String,
        /// The cause.
        #[source]
        source: StepError,
    },
    /// The transform changed a row's key (a migration keeps keys).
    #[error("migration {migration}: the transform changed key {from} to {to}; keys must stay")]
    TransformChangedKey {
        /// The migration.
        migration: String,
        /// The key before.
        from: String,
        /// The key after.
        to: String,
    },
    /// The migration was cancelled; it resumes from its checkpoint on the next run.
    #[error(
        "migration {migration} was cancelled after {done} rows; it resumes from its checkpoint"
    )]
    Cancelled {
        /// The migration.
        migration: String,
        /// Rows done.
        done: u64,
    },
    /// Another run of the same migration is in progress in this process.
    #[error("migration {migration} is already running")]
    AlreadyRunning {
        /// The migration.
        migration: String,
    },
    /// The checkpoint was removed while the migration ran (a reset).
    #[error(
        "migration {migration}: the checkpoint was removed while it ran (reset); run it again"
    )]
    Reset {
        /// The migration.
        migration: String,
    },
    /// The options (or a live change of them) are invalid.
    #[error("migration {migration}: invalid options: {reason}")]
    InvalidOptions {
        /// The migration.
        migration: String,
        /// Why.
        reason: String,
    },
}

impl MigrationError {
    /// A store failure.
    pub fn store(
        location: impl Into<String>,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Store {
            location: location.into(),
            operation,
            source: source.into(),
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
        current: Option<Checkpoint>,
    },
}

/// What [`MigrationSink::copy_next_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchCopy {
    /// The batch and the checkpoint `next` were stored.
    Copied {
        /// The checkpoint stored.
        next: Checkpoint,
        /// Rows written (the others were skipped or dropped).
        written: u64,
    },
    /// The stored checkpoint was not the expected one; nothing was written.
    Conflict {
        /// The checkpoint stored now.
        current: Option<Checkpoint>,
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
    fn load_checkpoint(&self) -> Result<Option<Checkpoint>, MigrationError>;

    /// If the stored checkpoint equals `expected`: copies `rows` (if absent, see the
    /// trait docs) and stores `next`.
    fn write_batch(
        &self,
        expected: Option<&Checkpoint>,
        rows: &[Row],
        next: &Checkpoint,
    ) -> Result<BatchWrite, MigrationError>;

    /// For a sink that also holds the source table (one store, such as
    /// [`RedbMigrationStore`](crate::migration::RedbMigrationStore)): reads the batch after
    /// `expected.last_key` from its own source table and writes it, with the checkpoint
    /// [`Checkpoint::after_batch`] gives, in one transaction, under the same contract as
    /// [`write_batch`](Self::write_batch). Called only when the migration's source and
    /// sink are this same object (see [`BackgroundMigration::builder`]). `Ok(None)` (the
    /// default): not supported; the migration reads through its [`MigrationSource`].
    fn copy_next_batch(
        &self,
        expected: &Checkpoint,
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

/// A hook called at each step of a run; see [`BackgroundMigrationBuilder::on_batch`].
pub type BatchHook = Box<dyn Fn(&BatchEvent) + Send + Sync>;

/// Rewrites one row; `Ok(None)` drops it. Keys must stay the same.
pub type RowTransform = Arc<dyn Fn(Row) -> Result<Option<Row>, StepError> + Send + Sync>;

/// Where a background migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationState {
    /// Never started (no checkpoint).
    NotStarted,
    /// Copying.
    Running,
    /// Paused between batches; [`MigrationControl::resume`] continues.
    Paused,
    /// Started but not running now (cancelled, failed, or not yet resumed after a
    /// restart); the next run resumes from the checkpoint.
    Interrupted,
    /// Complete.
    Complete,
}

impl MigrationState {
    /// The state in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not started",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Interrupted => "interrupted",
            Self::Complete => "complete",
        }
    }
}

impl fmt::Display for MigrationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a background migration's progress.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MigrationProgress {
    /// The state.
    pub state: MigrationState,
    /// Rows done (over all runs).
    pub done: u64,
    /// Rows in the source, when known (read at the start of a run).
    pub total: Option<u64>,
    /// Batches committed (over all runs).
    pub batches: u64,
    /// Rows written by the current (or last) run (the others were skipped or dropped).
    pub written: u64,
    /// Runs started, as persisted (1 + resumes).
    pub runs: u32,
    /// Rows per second in the current run, once measurable.
    pub rows_per_sec: Option<f64>,
    /// Estimated time left, when the total and the rate are known.
    pub eta: Option<Duration>,
    /// The last key copied.
    pub last_key: Option<Vec<u8>>,
    /// The error that stopped the last run, if any.
    pub last_error: Option<String>,
    /// How long the migration has been running over all runs, downtime excluded (kept in
    /// the checkpoint, see [`Checkpoint::active_ms`]).
    pub elapsed: Duration,
    /// The settings in force now (changed live through [`MigrationControl`]).
    pub tuning: MigrationTuning,
    /// The wait the latency budget adds before each batch now (zero without a budget or
    /// while foreground latency is within it).
    pub latency_delay: Duration,
}

impl MigrationProgress {
    fn new() -> Self {
        Self {
            state: MigrationState::NotStarted,
            done: 0,
            total: None,
            batches: 0,
            written: 0,
            runs: 0,
            rows_per_sec: None,
            eta: None,
            last_key: None,
            last_error: None,
            elapsed: Duration::ZERO,
            tuning: MigrationTuning::default(),
            latency_delay: Duration::ZERO,
        }
    }
}

/// What a batch hook sees (see [`BackgroundMigrationBuilder::on_batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEvent {
    /// A run started (or resumed) from `checkpoint`.
    RunStarted {
        /// The checkpoint it resumes from, as persisted with the run's start.
        checkpoint: Checkpoint,
    },
    /// A batch is about to be read.
    BatchStarted {
        /// The batch's number (0-based, over all runs).
        index: u64,
    },
    /// A batch was committed.
    BatchCommitted {
        /// Its number.
        index: u64,
        /// Rows done now.
        done: u64,
    },
    /// The run paused (between batches).
    Paused {
        /// Rows done.
        done: u64,
    },
    /// The run resumed after a pause.
    Resumed,
    /// The copy is complete.
    Completed {
        /// Rows done.
        done: u64,
    },
}

/// The settings of a running migration that an operator may change while it runs (see
/// [`MigrationControl::set_tuning`]).
///
/// - `batch_size`: keys per batch (one transaction and one checkpoint each). Smaller
///   batches hold the store's write lock for less time at once.
/// - `max_rows_per_sec`: a ceiling on the copy rate; the migration waits between batches
///   to stay below it.
/// - `latency_budget`: a foreground-latency budget. The component feeds the latency of
///   its foreground requests with [`MigrationControl::observe_latency`]; before each
///   batch the migration takes the 99th percentile of the latencies observed since the
///   previous batch, and while it is over the budget it waits before each batch, doubling
///   the wait (from [`MIN_LATENCY_DELAY`] up to [`MAX_LATENCY_DELAY`]); once it is within
///   the budget again the wait shortens by [`MIN_LATENCY_DELAY`] each batch, down to
///   none. No observation since the last batch leaves the wait as it is. So the migration
///   yields to foreground traffic when it hurts it and speeds up again, gradually, when
///   it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationTuning {
    /// Keys per batch.
    pub batch_size: usize,
    /// The most rows per second, if limited.
    pub max_rows_per_sec: Option<u64>,
    /// The foreground-latency budget, if any.
    pub latency_budget: Option<Duration>,
}

impl Default for MigrationTuning {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            max_rows_per_sec: None,
            latency_budget: None,
        }
    }
}

impl MigrationTuning {
    /// Settings with `batch_size` keys per batch and no throttle.
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size,
            ..Self::default()
        }
    }

    /// With a rate ceiling (`None`: none).
    #[must_use]
    pub fn with_max_rows_per_sec(mut self, rows_per_sec: Option<u64>) -> Self {
        self.max_rows_per_sec = rows_per_sec;
        self
    }

    /// With a foreground-latency budget (`None`: none).
    #[must_use]
    pub fn with_latency_budget(mut self, budget: Option<Duration>) -> Self {
        self.latency_budget = budget;
        self
    }

    /// Why these settings are refused, if they are: a batch size of 0, a rate of 0, a
    /// budget of 0.
    pub fn check(&self) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err("the batch size is 0".to_owned());
        }
        if self.max_rows_per_sec == Some(0) {
            return Err("the maximum rate is 0 rows per second".to_owned());
        }
        if self.latency_budget.is_some_and(|b| b.is_zero()) {
            return Err("the latency budget is 0".to_owned());
        }
        Ok(())
    }
}

/// The shortest wait the latency budget adds before a batch once latency is over it.
pub const MIN_LATENCY_DELAY: Duration = Duration::from_millis(5);
/// The longest wait the latency budget adds before a batch.
pub const MAX_LATENCY_DELAY: Duration = Duration::from_secs(2);
/// At most this many foreground latencies are kept between two batches (the oldest are
/// dropped).
const MAX_LATENCY_SAMPLES: usize = 4096;

/// Pauses, resumes and cancels a background migration, and changes its
/// [`MigrationTuning`], from any thread, while it runs.
#[derive(Debug, Clone, Default)]
pub struct MigrationControl {
    inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
struct ControlInner {
    flags: Mutex<ControlFlags>,
    changed: Condvar,
    tuning: Mutex<MigrationTuning>,
    latencies: Mutex<VecDeque<Duration>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ControlFlags {
    paused: bool,
    cancelled: bool,
}

impl MigrationControl {
    /// The settings in force.
    pub fn tuning(&self) -> MigrationTuning {
        *self.inner.tuning.lock()
    }

    /// Changes the settings; the migration applies them from its next batch. Refused
    /// (with the reason, nothing changed) when [`MigrationTuning::check`] refuses them.
    pub fn set_tuning(&self, tuning: MigrationTuning) -> Result<(), String> {
        tuning.check()?;
        *self.inner.tuning.lock() = tuning;
        tracing::info!(
            target: "layout_core::migration",
            batch_size = tuning.batch_size,
            max_rows_per_sec = ?tuning.max_rows_per_sec,
            latency_budget_ms = ?tuning.latency_budget.map(|b| b.as_millis()),
            "background migration settings changed"
        );
        Ok(())
    }

    /// Records the latency of one foreground request, for the latency budget (see
    /// [`MigrationTuning`]). Cheap; call it from the component's request path whether or
    /// not a budget is set (without one the samples are dropped at the next batch).
    pub fn observe_latency(&self, latency: Duration) {
        let mut samples = self.inner.latencies.lock();
        if samples.len() == MAX_LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(latency);
    }

    /// The 99th percentile of the latencies observed since the last call, if any, and
    /// forgets them.
    fn take_latency_p99(&self) -> Option<Duration> {
        let mut samples: Vec<Duration> = self.inner.latencies.lock().drain(..).collect();
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let index = (samples.len() * 99).div_ceil(100).saturating_sub(1);
        samples.get(index).copied()
    }

    /// Pauses the migration before its next batch.
    pub fn pause(&self) {
        self.inner.flags.lock().paused = true;
        self.inner.changed.notify_all();
    }

    /// Resumes a paused migration.
    pub fn resume(&self) {
        self.inner.flags.lock().paused = false;
        self.inner.changed.notify_all();
    }

    /// Stops the running migration before its next batch (a paused one at once); it
    /// resumes from its checkpoint on the next run.
    pub fn cancel(&self) {
        self.inner.flags.lock().cancelled = true;
        self.inner.changed.notify_all();
    }

    /// Whether a pause is requested.
    pub fn is_paused(&self) -> bool {
        self.inner.flags.lock().paused
    }

    /// Whether a cancel is requested.
    pub fn is_cancelled(&self) -> bool {
        self.inner.flags.lock().cancelled
    }
}

/// Which layout a write goes to, as decided by [`DualWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteTarget {
    /// The migration has not started: the old layout only (the new one may not be
    /// written while the feature is not finalizing).
    OldOnly,
    /// The migration started and the feature is not finalized: both layouts, in one
    /// atomic step.
    Both,
    /// The feature is finalized: the new layout only.
    NewOnly,
}

/// Whether the migration has started; held for reading by each write, for writing by the
/// switch to dual-write, so no write decided "old only" lands after the first batch is
/// read.
#[derive(Debug, Default)]
pub(crate) struct WriteFence {
    started: RwLock<bool>,
}

impl WriteFence {
    fn set_started(&self, started: bool) {
        *self.started.write() = started;
    }
}

/// Tells the component's write path where each write goes while a migration runs as a
/// layout feature's `OnFinalize` action; see [`BackgroundMigration::dual_write`].
///
/// Hold the [`WriteScope`] from [`begin`](Self::begin) for the duration of the write.
pub struct DualWrite<F: LayoutFeature> {
    lvm: Arc<LayoutVersionManager<F>>,
    feature: F,
    fence: Arc<WriteFence>,
    completed: Arc<AtomicBool>,
}

impl<F: LayoutFeature> Clone for DualWrite<F> {
    fn clone(&self) -> Self {
        Self {
            lvm: Arc::clone(&self.lvm),
            feature: self.feature,
            fence: Arc::clone(&self.fence),
            completed: Arc::clone(&self.completed),
        }
    }
}

impl<F: LayoutFeature> DualWrite<F> {
    /// Starts a write: decides its target and holds the decision until the scope is
    /// dropped (the migration's start waits for it). Keep the scope for one write and do
    /// not start another inside it on the same thread: a nested `begin` can deadlock
    /// against a migration waiting to switch.
    pub fn begin(&self) -> WriteScope<'_> {
        let started = self.fence.started.read();
        let target = if self.lvm.is_allowed(self.feature) {
            WriteTarget::NewOnly
        } else if *started {
            WriteTarget::Both
        } else {
            WriteTarget::OldOnly
        };
        WriteScope {
            _started: started,
            target,
            copy_complete: self.completed.load(Ordering::Acquire),
        }
    }

    /// Where a write would go now (without holding the decision).
    pub fn target(&self) -> WriteTarget {
        self.begin().target()
    }

    /// The feature whose finalization the migration is.
    pub fn feature(&self) -> F {
        self.feature
    }

    /// The layout version manager.
    pub fn layout_manager(&self) -> &Arc<LayoutVersionManager<F>> {
        &self.lvm
    }
}

impl<F: LayoutFeature> fmt::Debug for DualWrite<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualWrite")
            .field("feature", &self.feature)
            .field("target", &self.target())
            .finish_non_exhaustive()
    }
}

/// One write's routing decision, held while the write runs; see [`DualWrite::begin`].
#[derive(Debug)]
pub struct WriteScope<'a> {
    _started: RwLockReadGuard<'a, bool>,
    target: WriteTarget,
    copy_complete: bool,
}

impl WriteScope<'_> {
    /// Where the write goes.
    pub fn target(&self) -> WriteTarget {
        self.target
    }

    /// Whether to write the old layout.
    pub fn writes_old(&self) -> bool {
        matches!(self.target, WriteTarget::OldOnly | WriteTarget::Both)
    }

    /// Whether to write the new layout.
    pub fn writes_new(&self) -> bool {
        matches!(self.target, WriteTarget::Both | WriteTarget::NewOnly)
    }

    /// Whether a delete must leave a tombstone in the new layout (dual-writing while the
    /// copy is not complete), so the copier does not bring the row back.
    pub fn needs_tombstone(&self) -> bool {
        self.target == WriteTarget::Both && !self.copy_complete
    }
}

/// The result of a run that completed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Rows done over all runs.
    pub done: u64,
    /// Rows written by this run.
    pub written: u64,
    /// Batches committed over all runs.
    pub batches: u64,
    /// Batches committed by this run.
    pub batches_this_run: u64,
    /// Runs started (1 + resumes).
    pub runs: u32,
    /// Whether the copy was already complete when this run started.
    pub was_complete: bool,
}

/// Builds a [`BackgroundMigration`]; see [`BackgroundMigration::builder`].
pub struct BackgroundMigrationBuilder {
    name: String,
    source: Arc<dyn MigrationSource>,
    sink: Arc<dyn MigrationSink>,
    batch_size: usize,
    max_rows_per_sec: Option<u64>,
    latency_budget: Option<Duration>,
    transform: Option<RowTransform>,
    clock: Arc<dyn Clock>,
    sleeper: Arc<dyn Sleeper>,
    hook: Option<BatchHook>,
    in_store: bool,
}

impl BackgroundMigrationBuilder {
    /// Keys per batch (default [`DEFAULT_BATCH_SIZE`]); one checkpoint per batch.
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Copies at most `rows_per_sec` rows per second, waiting between batches (with the
    /// [`Sleeper`], against the [`Clock`]).
    #[must_use]
    pub fn max_rows_per_sec(mut self, rows_per_sec: u64) -> Self {
        self.max_rows_per_sec = Some(rows_per_sec);
        self
    }

    /// Slows down while foreground latency is over `budget` (see [`MigrationTuning`]);
    /// the component feeds latencies with [`MigrationControl::observe_latency`].
    #[must_use]
    pub fn latency_budget(mut self, budget: Duration) -> Self {
        self.latency_budget = Some(budget);
        self
    }

    /// All three settings at once.
    #[must_use]
    pub fn tuning(mut self, tuning: MigrationTuning) -> Self {
        self.batch_size = tuning.batch_size;
        self.max_rows_per_sec = tuning.max_rows_per_sec;
        self.latency_budget = tuning.latency_budget;
        self
    }

    /// Rewrites each row on its way to the new table (the key must stay; `Ok(None)`
    /// drops the row). Without one, rows are copied as they are.
    #[must_use]
    pub fn transform(
        mut self,
        transform: impl Fn(Row) -> Result<Option<Row>, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.transform = Some(Arc::new(transform));
        self
    }

    /// The clock for rates, ETA and throttling (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How the throttle waits (default: [`ThreadSleeper`]).
    #[must_use]
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// Called at each step (run start, batch start, batch commit, completion), in the
    /// migration's thread. For logs, tests and crash harnesses.
    #[must_use]
    pub fn on_batch(mut self, hook: impl Fn(&BatchEvent) + Send + Sync + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Reads the checkpoint (so the state, the progress and the write routing are right
    /// before anything runs) and builds the migration.
    pub fn open(self) -> Result<BackgroundMigration, MigrationError> {
        let tuning = MigrationTuning {
            batch_size: self.batch_size,
            max_rows_per_sec: self.max_rows_per_sec,
            latency_budget: self.latency_budget,
        };
        if let Err(reason) = tuning.check() {
            return Err(MigrationError::InvalidOptions {
                migration: self.name,
                reason,
            });
        }
        let control = MigrationControl::default();
        *control.inner.tuning.lock() = tuning;
        let checkpoint = self.sink.load_checkpoint()?;
        let mut progress = MigrationProgress::new();
        let fence = Arc::new(WriteFence::default());
        let completed = Arc::new(AtomicBool::new(false));
        if let Some(cp) = &checkpoint {
            fence.set_started(true);
            completed.store(cp.complete, Ordering::Release);
            progress.state = if cp.complete {
                MigrationState::Complete
            } else {
                MigrationState::Interrupted
            };
            progress.done = cp.done;
            progress.batches = cp.batches;
            progress.runs = cp.runs;
            progress.last_key.clone_from(&cp.last_key);
            progress.total = cp.total.map(|t| t.max(cp.done));
            progress.elapsed = cp.active_elapsed(0, false);
        }
        Ok(BackgroundMigration {
            name: self.name,
            source: self.source,
            sink: self.sink,
            transform: self.transform,
            clock: self.clock,
            sleeper: self.sleeper,
            hook: self.hook,
            in_store: self.in_store,
            control,
            progress: Arc::new(Mutex::new(progress)),
            active: Mutex::new(checkpoint.map(|cp| (cp.active_ms, cp.updated_ms))),
            fence,
            completed,
            running: AtomicBool::new(false),
        })
    }
}

impl fmt::Debug for BackgroundMigrationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundMigrationBuilder")
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .field("max_rows_per_sec", &self.max_rows_per_sec)
            .field("latency_budget", &self.latency_budget)
            .finish_non_exhaustive()
    }
}

/// Copies a table into a new one in batches, resumable, observable, throttled; see the
/// [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use layout_core::migration::{BackgroundMigration, MemoryMigrationStore, Row};
///
/// let store = Arc::new(MemoryMigrationStore::new());
/// for i in 0..25u32 {
///     store.insert_old(Row::new(i.to_be_bytes(), b"v1".to_vec(), 1_000 + u64::from(i)));
/// }
/// let migration = BackgroundMigration::builder("users-v2", store.clone(), store.clone())
///     .batch_size(10)
///     .transform(|mut row| { row.value = b"v2".to_vec(); Ok(Some(row)) })
///     .open()?;
/// let report = migration.run()?;
/// assert_eq!((report.done, report.batches), (25, 3));
/// let copied = store.new_rows();
/// assert_eq!(copied.len(), 25);
/// assert!(copied.iter().all(|r| r.value == b"v2"));
/// assert_eq!(copied[3].modified_ms, 1_003); // original timestamps kept
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BackgroundMigration {
    name: String,
    source: Arc<dyn MigrationSource>,
    sink: Arc<dyn MigrationSink>,
    transform: Option<RowTransform>,
    clock: Arc<dyn Clock>,
    sleeper: Arc<dyn Sleeper>,
    hook: Option<BatchHook>,
    in_store: bool,
    control: MigrationControl,
    progress: Arc<Mutex<MigrationProgress>>,
    /// The last checkpoint's active time and write time (ms), for the elapsed figure.
    active: Mutex<Option<(u64, u64)>>,
    fence: Arc<WriteFence>,
    completed: Arc<AtomicBool>,
    running: AtomicBool,
}

/// Clears the running flag on every exit path.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What interrupts a run.
enum Interrupt {
    Cancelled,
}

impl BackgroundMigration {
    /// A builder for a migration named `name` (used in logs, errors and as its checkpoint's
    /// key) from `source` to `sink`.
    ///
    /// When `source` and `sink` are the same object (clones of one `Arc`, a store holding
    /// both tables), each batch is copied by [`MigrationSink::copy_next_batch`] when the
    /// store supports it (redb does): read and written in one transaction, which saves a
    /// read transaction and a copy of every row.
    pub fn builder(
        name: impl Into<String>,
        source: Arc<dyn MigrationSource>,
        sink: Arc<dyn MigrationSink>,
    ) -> BackgroundMigrationBuilder {
        let in_store = std::ptr::addr_eq(Arc::as_ptr(&source), Arc::as_ptr(&sink));
        BackgroundMigrationBuilder {
            name: name.into(),
            source,
            sink,
            batch_size: DEFAULT_BATCH_SIZE,
            max_rows_per_sec: None,
            latency_budget: None,
            transform: None,
            clock: Arc::new(SystemClock),
            sleeper: Arc::new(ThreadSleeper),
            hook: None,
            in_store,
        }
    }

    /// The migration's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keys per batch now (see [`MigrationControl::set_tuning`]).
    pub fn batch_size(&self) -> usize {
        self.control.tuning().batch_size
    }

    /// The transform, if any (the component applies it to old rows it serves during the
    /// migration).
    pub fn transform_fn(&self) -> Option<&RowTransform> {
        self.transform.as_ref()
    }

    /// Pause, resume, cancel, and change the settings while it runs.
    pub fn control(&self) -> MigrationControl {
        self.control.clone()
    }

    /// A snapshot of the progress. Its `elapsed` counts the time the migration has run
    /// (over every run), never the time the component was down.
    pub fn progress(&self) -> MigrationProgress {
        let mut progress = self.progress.lock().clone();
        progress.tuning = self.control.tuning();
        if let Some((active_ms, updated_ms)) = *self.active.lock() {
            let running = matches!(
                progress.state,
                MigrationState::Running | MigrationState::Paused
            );
            let since = if running && updated_ms > 0 {
                self.clock.now_ms().saturating_sub(updated_ms)
            } else {
                0
            };
            progress.elapsed = Duration::from_millis(active_ms.saturating_add(since));
        }
        progress
    }

    /// Remembers the active time of the checkpoint just written or read.
    fn note_checkpoint(&self, checkpoint: &Checkpoint) {
        *self.active.lock() = Some((checkpoint.active_ms, checkpoint.updated_ms));
    }

    /// Whether the copy is complete.
    pub fn is_complete(&self) -> bool {
        self.completed.load(Ordering::Acquire)
    }

    /// Whether the migration has started (a checkpoint exists): from then on, until the
    /// feature finalizes, writes go to both layouts.
    pub fn is_started(&self) -> bool {
        *self.fence.started.read()
    }

    /// The write-routing guard for the component's write path, while this migration is
    /// `feature`'s `OnFinalize` action: old only before the migration starts, both
    /// layouts from its start until `feature` is finalized, the new one after.
    pub fn dual_write<F: LayoutFeature>(
        &self,
        lvm: Arc<LayoutVersionManager<F>>,
        feature: F,
    ) -> DualWrite<F> {
        DualWrite {
            lvm,
            feature,
            fence: Arc::clone(&self.fence),
            completed: Arc::clone(&self.completed),
        }
    }

    /// Runs to completion in the caller's thread (or until cancelled). Resumes from the
    /// checkpoint; a complete migration returns at once.
    pub fn run(&self) -> Result<MigrationReport, MigrationError> {
        self.run_inner(None)
    }

    /// Runs as a layout feature's `OnFinalize` action: progress goes to the finalizer's
    /// status (done, total, and messages with rate and ETA), and cancelling the
    /// finalization stops the migration between batches (it resumes on the next
    /// finalize).
    pub fn run_as_action<F: LayoutFeature>(
        &self,
        ctx: &ActionContext<'_, F>,
    ) -> Result<(), ActionError> {
        match self.run_inner(Some(ctx as &dyn Reporter)) {
            Ok(_) => Ok(()),
            Err(MigrationError::Cancelled { .. }) => Err(ActionError::cancelled()),
            Err(e) => Err(ActionError::with_source(
                format!("background migration {} failed", self.name),
                e,
            )),
        }
    }

    /// Discards the migration (copied rows, tombstones, checkpoint); the next run starts
    /// over. Refused while it runs.
    pub fn reset(&self) -> Result<(), MigrationError> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(MigrationError::AlreadyRunning {
                migration: self.name.clone(),
            });
        }
        let _running = Running(&self.running);
        {
            let mut started = self.fence.started.write();
            self.sink.reset()?;
            *started = false;
        }
        self.completed.store(false, Ordering::Release);
        *self.progress.lock() = MigrationProgress::new();
        *self.active.lock() = None;
        tracing::info!(target: "layout_core::migration", migration = %self.name, "migration reset");
        Ok(())
    }

    fn emit(&self, event: &BatchEvent) {
        if let Some(hook) = &self.hook {
            hook(event);
        }
    }

    #[allow(clippy::too_many_lines)]
    fn run_inner(&self, ctx: Option<&dyn Reporter>) -> Result<MigrationReport, MigrationError> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(MigrationError::AlreadyRunning {
                migration: self.name.clone(),
            });
        }
        let _running = Running(&self.running);
        let result = self.copy(ctx);
        let mut progress = self.progress.lock();
        match &result {
            Ok(_) => {
                progress.state = MigrationState::Complete;
                progress.last_error = None;
            }
            Err(e) => {
                progress.state = if self.is_started() {
                    MigrationState::Interrupted
                } else {
                    MigrationState::NotStarted
                };
                progress.last_error = Some(e.to_string());
                if matches!(e, MigrationError::Cancelled { .. }) {
                    // A cancel is consumed by the run it stopped.
                    self.control.inner.flags.lock().cancelled = false;
                }
            }
        }
        result
    }

    #[allow(clippy::too_many_lines)]
    fn copy(&self, ctx: Option<&dyn Reporter>) -> Result<MigrationReport, MigrationError> {
        let span = tracing::info_span!(
            target: "layout_core::migration",
            "background_migration",
            migration = %self.name
        );
        let _entered = span.enter();
        // Start (or resume): persist the run, with writers switched to dual-write first.
        let mut checkpoint = loop {
            let current = self.sink.load_checkpoint()?;
            if let Some(cp) = current.as_ref().filter(|cp| cp.complete) {
                self.mark_complete();
                self.sink.finish()?;
                self.note_checkpoint(cp);
                let mut progress = self.progress.lock();
                progress.done = cp.done;
                progress.total = Some(cp.total.unwrap_or(cp.done).max(cp.done));
                progress.batches = cp.batches;
                progress.runs = cp.runs;
                progress.eta = Some(Duration::ZERO);
                return Ok(MigrationReport {
                    done: cp.done,
                    written: 0,
                    batches: cp.batches,
                    batches_this_run: 0,
                    runs: cp.runs,
                    was_complete: true,
                });
            }
            {
                // Writes in flight that were decided "old only" finish first.
                let mut started = self.fence.started.write();
                *started = true;
            }
            // The total is counted before the run's start is stored, so it is known (and
            // persisted) before the first batch; the downtime before this run is not
            // counted: the active time resumes from now.
            let counted = self.source.total_rows()?;
            let now_ms = self.clock.now_ms();
            let mut next = current.clone().unwrap_or_else(|| Checkpoint {
                started_ms: now_ms,
                ..Checkpoint::default()
            });
            next.runs += 1;
            next.updated_ms = now_ms;
            next.total = counted.map(|t| t.max(next.done));
            match self.sink.write_batch(current.as_ref(), &[], &next)? {
                BatchWrite::Written { .. } => break next,
                BatchWrite::Conflict { .. } => {}
            }
        };
        self.note_checkpoint(&checkpoint);
        let mut total = checkpoint.total;
        let run_start = self.clock.now();
        let done_at_start = checkpoint.done;
        let batches_at_start = checkpoint.batches;
        let mut written = 0u64;
        {
            let mut progress = self.progress.lock();
            progress.state = MigrationState::Running;
            progress.total = total;
            progress.done = checkpoint.done;
            progress.batches = checkpoint.batches;
            progress.runs = checkpoint.runs;
            progress.last_key.clone_from(&checkpoint.last_key);
            progress.rows_per_sec = None;
            progress.eta = None;
        }
        let resumed = checkpoint.runs > 1;
        tracing::info!(
            target: "layout_core::migration",
            migration = %self.name,
            done = checkpoint.done,
            total = ?total,
            run = checkpoint.runs,
            "background migration {}",
            if resumed { "resumed" } else { "started" }
        );
        if let Some(ctx) = ctx {
            ctx.message(format!(
                "Background migration {} {} at {} of {} rows.",
                self.name,
                if resumed { "resumed" } else { "started" },
                checkpoint.done,
                total.map_or_else(|| "?".to_owned(), |t| t.to_string())
            ));
            ctx.progress(checkpoint.done, total);
        }
        self.emit(&BatchEvent::RunStarted {
            checkpoint: checkpoint.clone(),
        });
        if let Some(ctx) = ctx {
            ctx.elapsed(checkpoint.active_elapsed(0, false));
        }
        let mut reported_decile = decile(checkpoint.done, total);
        // The rate ceiling is measured from when it was last set (or changed).
        let mut rate_window: (Option<u64>, SystemTime, u64) = (None, run_start, checkpoint.done);
        let mut latency_delay = Duration::ZERO;
        while !checkpoint.complete {
            if let Err(Interrupt::Cancelled) = self.wait_while_paused(ctx) {
                tracing::info!(target: "layout_core::migration", migration = %self.name, done = checkpoint.done, "background migration cancelled");
                return Err(MigrationError::Cancelled {
                    migration: self.name.clone(),
                    done: checkpoint.done,
                });
            }
            let tuning = self.control.tuning();
            if rate_window.0 != tuning.max_rows_per_sec {
                rate_window = (tuning.max_rows_per_sec, self.clock.now(), checkpoint.done);
            }
            self.throttle(&rate_window, checkpoint.done);
            latency_delay = self.latency_wait(tuning.latency_budget, latency_delay);
            let batch_span = tracing::debug_span!(
                target: "layout_core::migration",
                "batch",
                index = checkpoint.batches,
                from = checkpoint.done
            );
            let _batch = batch_span.enter();
            self.emit(&BatchEvent::BatchStarted {
                index: checkpoint.batches,
            });
            crate::crash_point::hit(CRASH_BEFORE_BATCH);
            let outcome = match self.copy_in_store(&checkpoint, tuning.batch_size)? {
                Some(outcome) => outcome,
                None => self.copy_through_source(&checkpoint, tuning.batch_size)?,
            };
            match outcome {
                BatchCopy::Copied {
                    next,
                    written: rows,
                } => {
                    crate::crash_point::hit(CRASH_BATCH_COMMITTED);
                    written += rows;
                    checkpoint = next;
                    self.note_checkpoint(&checkpoint);
                }
                BatchCopy::Conflict { current } => {
                    // Everything was deleted meanwhile (or the migration was reset):
                    // continue from what is stored.
                    match current {
                        Some(current) => {
                            tracing::info!(target: "layout_core::migration", migration = %self.name, "checkpoint changed under the migration; continuing from it");
                            checkpoint = current;
                            self.note_checkpoint(&checkpoint);
                            continue;
                        }
                        None => {
                            return Err(MigrationError::Reset {
                                migration: self.name.clone(),
                            })
                        }
                    }
                }
            }
            let (rate, eta) = self.rate_and_eta(
                run_start,
                checkpoint.done - done_at_start,
                checkpoint.done,
                total,
            );
            total = checkpoint.total.or(total).map(|t| t.max(checkpoint.done));
            {
                let mut progress = self.progress.lock();
                progress.done = checkpoint.done;
                progress.total = total;
                progress.latency_delay = latency_delay;
                progress.batches = checkpoint.batches;
                progress.written = written;
                progress.last_key.clone_from(&checkpoint.last_key);
                progress.rows_per_sec = rate;
                progress.eta = eta;
            }
            tracing::debug!(
                target: "layout_core::migration",
                migration = %self.name,
                batch = checkpoint.batches,
                done = checkpoint.done,
                "batch committed"
            );
            if let Some(ctx) = ctx {
                ctx.progress(checkpoint.done, total);
                ctx.elapsed(checkpoint.active_elapsed(0, false));
                let now_decile = decile(checkpoint.done, total);
                if now_decile > reported_decile && !checkpoint.complete {
                    reported_decile = now_decile;
                    ctx.message(format!(
                        "Background migration {}: {} of {} rows{}{}.",
                        self.name,
                        checkpoint.done,
                        total.map_or_else(|| "?".to_owned(), |t| t.to_string()),
                        rate.map_or_else(String::new, |r| format!(", {r:.0} rows/s")),
                        eta.map_or_else(String::new, |e| format!(", about {}s left", e.as_secs())),
                    ));
                }
            }
            self.emit(&BatchEvent::BatchCommitted {
                index: checkpoint.batches - 1,
                done: checkpoint.done,
            });
            crate::crash_point::hit(CRASH_BATCH_REPORTED);
        }
        self.mark_complete();
        crate::crash_point::hit(CRASH_BEFORE_FINISH);
        self.sink.finish()?;
        crate::crash_point::hit(CRASH_FINISHED);
        {
            let mut progress = self.progress.lock();
            progress.eta = Some(Duration::ZERO);
            progress.total = Some(progress.total.unwrap_or(0).max(checkpoint.done));
            progress.latency_delay = Duration::ZERO;
        }
        self.emit(&BatchEvent::Completed {
            done: checkpoint.done,
        });
        tracing::info!(
            target: "layout_core::migration",
            migration = %self.name,
            done = checkpoint.done,
            batches = checkpoint.batches,
            "background migration complete"
        );
        if let Some(ctx) = ctx {
            ctx.progress(
                checkpoint.done,
                Some(checkpoint.done.max(total.unwrap_or(0))),
            );
            ctx.message(format!(
                "Background migration {} complete: {} rows in {} batches.",
                self.name, checkpoint.done, checkpoint.batches
            ));
        }
        Ok(MigrationReport {
            done: checkpoint.done,
            written,
            batches: checkpoint.batches,
            batches_this_run: checkpoint.batches - batches_at_start,
            runs: checkpoint.runs,
            was_complete: false,
        })
    }

    /// One batch through the sink's own copy, when the source and the sink are one store
    /// and it supports that.
    fn copy_in_store(
        &self,
        checkpoint: &Checkpoint,
        batch_size: usize,
    ) -> Result<Option<BatchCopy>, MigrationError> {
        if !self.in_store {
            return Ok(None);
        }
        let transform = |row: Row| self.transform_row(row);
        let transform: Option<&dyn Fn(Row) -> Result<Option<Row>, MigrationError>> =
            self.transform.as_ref().map(|_| &transform as _);
        self.sink
            .copy_next_batch(checkpoint, batch_size, transform, self.clock.now_ms())
    }

    /// One batch: read from the source, transform, write to the sink.
    fn copy_through_source(
        &self,
        checkpoint: &Checkpoint,
        batch_size: usize,
    ) -> Result<BatchCopy, MigrationError> {
        let rows = self
            .source
            .read_batch(checkpoint.last_key.as_deref(), batch_size)?;
        let next = checkpoint.after_batch(
            rows.len(),
            rows.last().map(|r| r.key.as_slice()),
            batch_size,
            self.clock.now_ms(),
        );
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.extend(self.transform_row(row)?);
        }
        Ok(
            match self.sink.write_batch(Some(checkpoint), &out, &next)? {
                BatchWrite::Written { rows } => BatchCopy::Copied {
                    next,
                    written: rows,
                },
                BatchWrite::Conflict { current } => BatchCopy::Conflict { current },
            },
        )
    }

    /// Stops new tombstones: writes in flight (which may have decided to leave one) finish
    /// first, so [`MigrationSink::finish`] drops every tombstone.
    fn mark_complete(&self) {
        let _fence = self.fence.started.write();
        self.completed.store(true, Ordering::Release);
    }

    /// The transform of one row, checked: `Ok(None)` drops it.
    fn transform_row(&self, row: Row) -> Result<Option<Row>, MigrationError> {
        let Some(transform) = &self.transform else {
            return Ok(Some(row));
        };
        let key = row.key.clone();
        match transform(row) {
            Ok(Some(new)) if new.key == key => Ok(Some(new)),
            Ok(Some(new)) => Err(MigrationError::TransformChangedKey {
                migration: self.name.clone(),
                from: printable(&key),
                to: printable(&new.key),
            }),
            Ok(None) => Ok(None),
            Err(source) => Err(MigrationError::Transform {
                migration: self.name.clone(),
                key: printable(&key),
                source,
            }),
        }
    }

    /// Blocks while paused; `Err` when cancelled (by the control or the finalization).
    fn wait_while_paused(&self, ctx: Option<&dyn Reporter>) -> Result<(), Interrupt> {
        let ctx_cancelled = || ctx.is_some_and(Reporter::is_cancelled);
        let mut flags = self.control.inner.flags.lock();
        let mut announced = false;
        loop {
            if flags.cancelled || ctx_cancelled() {
                return Err(Interrupt::Cancelled);
            }
            if !flags.paused {
                if announced {
                    drop(flags);
                    self.progress.lock().state = MigrationState::Running;
                    self.emit(&BatchEvent::Resumed);
                    tracing::info!(target: "layout_core::migration", migration = %self.name, "background migration resumed");
                }
                return Ok(());
            }
            if !announced {
                announced = true;
                let done = {
                    let mut progress = self.progress.lock();
                    progress.state = MigrationState::Paused;
                    progress.done
                };
                parking_lot::MutexGuard::unlocked(&mut flags, || {
                    self.emit(&BatchEvent::Paused { done });
                });
                tracing::info!(target: "layout_core::migration", migration = %self.name, "background migration paused");
                if let Some(ctx) = ctx {
                    ctx.message(format!("Background migration {} paused.", self.name));
                }
            }
            self.control.inner.changed.wait_for(&mut flags, PAUSE_POLL);
        }
    }

    /// Waits so that the rows done since the rate was set stay at or below it.
    fn throttle(&self, window: &(Option<u64>, SystemTime, u64), done: u64) {
        let (Some(rate), since, done_then) = *window else {
            return;
        };
        #[allow(clippy::cast_precision_loss)]
        let due =
            since + Duration::from_secs_f64(done.saturating_sub(done_then) as f64 / rate as f64);
        if let Ok(wait) = due.duration_since(self.clock.now()) {
            if !wait.is_zero() {
                self.sleeper.sleep(wait);
            }
        }
    }

    /// The latency budget's wait before a batch: doubled while the foreground p99 since
    /// the last batch is over the budget, shortened by [`MIN_LATENCY_DELAY`] while within
    /// it, none without a budget.
    fn latency_wait(&self, budget: Option<Duration>, delay: Duration) -> Duration {
        let p99 = self.control.take_latency_p99();
        let Some(budget) = budget else {
            return Duration::ZERO;
        };
        let delay = match p99 {
            Some(p99) if p99 > budget => (delay * 2).clamp(MIN_LATENCY_DELAY, MAX_LATENCY_DELAY),
            // Back slowly, so the wait settles near what the foreground traffic needs
            // instead of swinging between none and the longest.
            Some(_) => delay.saturating_sub(MIN_LATENCY_DELAY),
            None => delay,
        };
        if !delay.is_zero() {
            tracing::debug!(
                target: "layout_core::migration",
                migration = %self.name,
                delay_ms = delay.as_millis(),
                p99_us = ?p99.map(|p| p.as_micros()),
                "foreground latency over budget; waiting before the batch"
            );
            self.sleeper.sleep(delay);
        }
        delay
    }

    fn rate_and_eta(
        &self,
        run_start: SystemTime,
        done_this_run: u64,
        done: u64,
        total: Option<u64>,
    ) -> (Option<f64>, Option<Duration>) {
        let elapsed = self
            .clock
            .now()
            .duration_since(run_start)
            .unwrap_or_default()
            .as_secs_f64();
        if elapsed <= 0.0 || done_this_run == 0 {
            return (None, None);
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = done_this_run as f64 / elapsed;
        #[allow(clippy::cast_precision_loss)]
        let eta = total.map(|t| Duration::from_secs_f64(t.saturating_sub(done) as f64 / rate));
        (Some(rate), eta)
    }
}

impl fmt::Debug for BackgroundMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundMigration")
            .field("name", &self.name)
            .field("source", &self.source.source_location())
            .field("sink", &self.sink.sink_location())
            .field("tuning", &self.control.tuning())
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}

fn decile(done: u64, total: Option<u64>) -> u64 {
    match total {
        Some(t) if t > 0 => done.saturating_mul(10) / t,
        _ => 0,
    }
}

/// A key, printable: UTF-8 as is, otherwise hex.
pub(crate) fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => {
            use std::fmt::Write as _;
            let mut out = String::from("0x");
            for b in key {
                let _ = write!(out, "{b:02x}");
            }
            out
        }
    }
}

/// What a run reports to, when it runs as an upgrade action.
trait Reporter {
    fn progress(&self, done: u64, total: Option<u64>);
    fn elapsed(&self, elapsed: Duration);
    fn message(&self, message: String);
    fn is_cancelled(&self) -> bool;
}

impl<F: LayoutFeature> Reporter for ActionContext<'_, F> {
    fn progress(&self, done: u64, total: Option<u64>) {
        self.report_progress(done, total);
    }
    fn elapsed(&self, elapsed: Duration) {
        self.report_elapsed(elapsed);
    }
    fn message(&self, message: String) {
        ActionContext::message(self, message);
    }
    fn is_cancelled(&self) -> bool {
        ActionContext::is_cancelled(self)
    }
}
