//! Background migrations: a large table copied (and rewritten) into a new one in batches.

// Where things are: `checkpoint` (MigrationCheckpoint), `error` (MigrationError), `store` (Row, the
// source and sink traits), `progress` (state, progress, batch events, report), `control`
// (tuning; pause, resume, cancel), `dual_write` (write routing), `builder`, `run` (a run:
// start, the batch loop, finish), `pacing` (between batches: pause, rate ceiling, latency
// budget, rate and ETA). This module holds the migration itself and its public methods.

mod builder;
mod checkpoint;
mod control;
mod dual_write;
mod error;
mod pacing;
mod progress;
mod run;
mod store;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use builder::BackgroundMigrationBuilder;
pub use checkpoint::MigrationCheckpoint;
pub use control::{MigrationControl, MigrationTuning, MAX_LATENCY_DELAY, MIN_LATENCY_DELAY};
pub(crate) use dual_write::WriteFence;
pub use dual_write::{DualWrite, WriteScope, WriteTarget};
pub(crate) use error::printable;
pub use error::MigrationError;
pub use progress::{BatchEvent, BatchHook, MigrationProgress, MigrationReport, MigrationState};
pub use store::{
    BatchCopy, BatchWrite, CheckedTransform, MigrationSink, MigrationSource, Row, RowTransform,
};

use crate::clock::{Clock, SystemClock};
use crate::clock::{Sleeper, ThreadSleeper};
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;
use crate::{ActionContext, ActionError};

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

/// Copies a table into a new one in batches, resumable, observable, throttled; see the
/// the overview below.
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
///
/// # Overview
///
/// Background migrations: copy (and rewrite) a large table into a new one in batches,
/// while the component keeps serving.
///
/// A [`BackgroundMigration`] reads a [`MigrationSource`] (the old table) in key order,
/// batches of a fixed key count (default [`DEFAULT_BATCH_SIZE`]), optionally rewrites each
/// row, and writes it to a [`MigrationSink`] (the new table) together with a
/// [`MigrationCheckpoint`], atomically where the store allows. A restart resumes from the
/// checkpoint, redoing at most the one batch that was not committed. Old and new data stay
/// apart until the migration completes; rows keep their original timestamps, and the
/// migration writes nothing of its own into them.
///
/// Run as a layout feature's `OnFinalize` action
/// ([`BackgroundMigration::run_as_action`]), the feature finalizes when the copy
/// completes. Meanwhile the component's writes go to both layouts, decided per write by a
/// [`DualWrite`] guard, so nothing copied earlier goes stale.
///
/// ## Why concurrent writes never go stale
///
/// The copier writes a row into the new table only where the new table holds neither a
/// row nor a *tombstone* for that key ("copy if absent"), atomically with the checkpoint.
/// A write on the component's path, once the migration has started, goes to the old and
/// the new table in one atomic step, unconditionally, and a delete leaves a tombstone in
/// the new table until the migration completes. So whichever of the copier and a writer
/// reaches a key last, the new table ends with the writer's value: a copy never
/// overwrites a live write, and a deleted row is never brought back. The migration
/// switches writers to dual-write (under a write fence: writes in flight finish first)
/// before it reads its first batch, and the switch is persisted with the first
/// checkpoint, so it survives a restart.
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
    fn note_checkpoint(&self, checkpoint: &MigrationCheckpoint) {
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
