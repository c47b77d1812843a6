//! The component a controller prepares ([`Preparable`]) and the controller itself.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::record::MarkerRecord;
use crate::clock::Clock;
use crate::error::StepError;
use crate::PrepareState;

/// A component that can be prepared: it applies a log of write requests, flushes what it
/// applied, snapshots, and purges its log.
///
/// Indexes are log indexes: every accepted write gets the next one. All methods are
/// called from the thread that runs [`PrepareController::prepare`] or
/// [`PrepareController::restore`].
pub trait Preparable: Send + Sync {
    /// The index of the last log entry applied to the component's state.
    fn applied_index(&self) -> u64;

    /// The index of the last log entry accepted (appended, possibly not applied yet).
    /// Prepare waits until everything through it is applied and flushed. Defaults to
    /// [`applied_index`](Self::applied_index), for components that apply as they accept.
    fn last_log_index(&self) -> u64 {
        self.applied_index()
    }

    /// Makes everything applied durable; returns the highest index now durable.
    fn flush(&self) -> Result<u64, StepError>;

    /// Takes a snapshot covering at least `index`; returns the snapshot's index.
    fn snapshot(&self, index: u64) -> Result<u64, StepError>;

    /// The index of the last snapshot taken (0 when none).
    fn last_snapshot_index(&self) -> u64;

    /// Removes log entries through `index` (they are covered by a snapshot).
    fn purge_log(&self, index: u64) -> Result<(), StepError>;

    /// The prepare index the component recorded in its own state (for example a flag in
    /// its snapshot), if it keeps one. Restore cross-checks it against the marker: a
    /// component that says it was prepared while no marker exists is reported. Default:
    /// `None` (the component keeps no such record).
    fn recorded_prepare_index(&self) -> Option<u64> {
        None
    }

    /// Blocks until the applied index reaches `index` or `max_wait` passes, whichever
    /// comes first (returning early is always allowed). Components with a condition
    /// variable wait on it; the default sleeps for a fraction of a millisecond, so
    /// prepare polls with a short, growing backoff.
    fn wait_for_apply(&self, index: u64, max_wait: Duration) {
        let _ = index;
        std::thread::sleep(max_wait.min(Duration::from_millis(1)));
    }
}

/// Drives prepare and cancel-prepare for one component, and gates its writes.
///
/// Not generic: it reaches the layout state through the manager it was restored with,
/// and the component through the `&dyn Preparable` each call passes (so the component
/// may own the controller without a reference cycle).
pub struct PrepareController {
    pub(super) record: Arc<dyn MarkerRecord>,
    pub(super) timeout: Duration,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) marker_file: Option<PathBuf>,
    /// `true` while the write gate is up (any state but `NotPrepared`).
    pub(super) gate: AtomicBool,
    /// Writers hold it shared while they append; prepare takes it exclusively once to
    /// wait for writers that passed the gate before it closed.
    pub(super) writes: RwLock<()>,
    pub(super) state: Mutex<PrepareState>,
    /// Bumped by every prepare and cancel; a prepare that sees it move was superseded.
    pub(super) generation: AtomicU64,
    /// Serializes prepare runs.
    pub(super) run: Mutex<()>,
    /// Why the last prepare failed, until one succeeds.
    pub(super) last_failure: Mutex<Option<String>>,
}

impl PrepareController {
    /// The component's name.
    pub fn component_name(&self) -> &str {
        self.record.component()
    }

    /// The marker file, if one is kept.
    pub fn marker_file(&self) -> Option<&Path> {
        self.marker_file.as_deref()
    }
}

impl fmt::Debug for PrepareController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrepareController")
            .field("component", &self.record.component())
            .field("state", &self.state())
            .field("timeout", &self.timeout)
            .field("marker_file", &self.marker_file)
            .finish_non_exhaustive()
    }
}
