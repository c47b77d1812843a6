//! What a background migration reports: its state, progress snapshots, the events a
//! batch hook sees, and the report of a completed run.

use std::fmt;
use std::time::Duration;

use super::{MigrationCheckpoint, MigrationTuning};

/// A hook called at each step of a run; see [`BackgroundMigrationBuilder::on_batch`].
///
/// [`BackgroundMigrationBuilder::on_batch`]: super::BackgroundMigrationBuilder::on_batch
pub type BatchHook = Box<dyn Fn(&BatchEvent) + Send + Sync>;

/// Where a background migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationState {
    /// Never started (no checkpoint).
    NotStarted,
    /// Copying.
    Running,
    /// Paused between batches; [`MigrationControl::resume`] continues.
    ///
    /// [`MigrationControl::resume`]: super::MigrationControl::resume
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
    /// the checkpoint, see [`MigrationCheckpoint::active_ms`]).
    pub elapsed: Duration,
    /// The settings in force now (changed live through [`MigrationControl`]).
    ///
    /// [`MigrationControl`]: super::MigrationControl
    pub tuning: MigrationTuning,
    /// The wait the latency budget adds before each batch now (zero without a budget or
    /// while foreground latency is within it).
    pub latency_delay: Duration,
}

impl MigrationProgress {
    pub(super) fn new() -> Self {
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
///
/// [`BackgroundMigrationBuilder::on_batch`]: super::BackgroundMigrationBuilder::on_batch
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchEvent {
    /// A run started (or resumed) from `checkpoint`.
    RunStarted {
        /// The checkpoint it resumes from, as persisted with the run's start.
        checkpoint: MigrationCheckpoint,
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
