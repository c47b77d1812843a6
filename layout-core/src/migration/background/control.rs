//! The live control of a running migration: its tuning (batch size, rate ceiling,
//! latency budget), pause, resume and cancel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::DEFAULT_BATCH_SIZE;

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
    pub(super) inner: Arc<ControlInner>,
}

#[derive(Debug, Default)]
pub(super) struct ControlInner {
    pub(super) flags: Mutex<ControlFlags>,
    pub(super) changed: Condvar,
    pub(super) tuning: Mutex<MigrationTuning>,
    latencies: Mutex<VecDeque<Duration>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ControlFlags {
    pub(super) paused: bool,
    pub(super) cancelled: bool,
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
    pub(super) fn take_latency_p99(&self) -> Option<Duration> {
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
