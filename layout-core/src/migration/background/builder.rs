//! Building a [`BackgroundMigration`]: its settings, and opening it at its checkpoint.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::dual_write::WriteFence;
use super::{
    BackgroundMigration, BatchEvent, BatchHook, MigrationControl, MigrationError,
    MigrationProgress, MigrationSink, MigrationSource, MigrationState, MigrationTuning, Row,
    RowTransform, Sleeper,
};
use crate::clock::Clock;
use crate::error::StepError;

/// Builds a [`BackgroundMigration`]; see [`BackgroundMigration::builder`].
pub struct BackgroundMigrationBuilder {
    pub(super) name: String,
    pub(super) source: Arc<dyn MigrationSource>,
    pub(super) sink: Arc<dyn MigrationSink>,
    pub(super) batch_size: usize,
    pub(super) max_rows_per_sec: Option<u64>,
    pub(super) latency_budget: Option<Duration>,
    pub(super) transform: Option<RowTransform>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) sleeper: Arc<dyn Sleeper>,
    pub(super) hook: Option<BatchHook>,
    pub(super) in_store: bool,
}

impl BackgroundMigrationBuilder {
    /// Keys per batch (default [`DEFAULT_BATCH_SIZE`]); one checkpoint per batch.
    ///
    /// [`DEFAULT_BATCH_SIZE`]: super::DEFAULT_BATCH_SIZE
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
    ///
    /// [`ThreadSleeper`]: super::ThreadSleeper
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
