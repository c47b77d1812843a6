//! Prepare: quiesce a replicated component so that an upgrade or a downgrade starts from a
//! clean state.
//!
//! A replicated component applies a log of write requests. Before its binary is swapped,
//! the old and the new binary must never apply the same log entries differently, so the
//! operator *prepares* it: [`PrepareController::prepare`] closes the write gate, waits
//! (bounded) until every accepted entry is applied and flushed, takes a snapshot, purges
//! the log through it, and persists the *prepare marker* (the prepare index). While the
//! gate is up every write except prepare and cancel-prepare is rejected
//! ([`WriteRejected`]), and finalization is refused (the controller is a
//! [`FinalizeGate`](crate::finalizer::FinalizeGate)).
//!
//! # Where the marker lives
//!
//! The authoritative marker is `prepare.index` in the component's `VERSION` file, stored
//! through the [`LayoutVersionManager`](crate::manager::LayoutVersionManager) (checksummed, replaced atomically): a torn or
//! hand-edited value there is caught as damage of the whole file and never guessed.
//! Components that also want Apache Ozone's separate `prepareMarker` file (a file holding
//! the index in decimal, which other tools may look for) enable it with
//! [`PrepareOptions::with_marker_file`]: it is written after `VERSION` and removed before
//! `VERSION` is cleared, and on restore both must agree. That file is where the *empty*
//! and *garbage* cases of a marker come from.
//!
//! On restore ([`PrepareController::restore`]) the marker is checked against the
//! component's own record ([`Preparable::last_snapshot_index`],
//! [`Preparable::applied_index`], and [`Preparable::recorded_prepare_index`] when the
//! component keeps one). A missing, empty, garbage, mismatching or too-high marker is an
//! error ([`MarkerProblem`]) and nothing is written: the state is left as it was, for the
//! operator to look at. Starting with [`StartIntent::Upgrade`](crate::options::StartIntent::Upgrade) or
//! [`StartIntent::Downgrade`](crate::options::StartIntent::Downgrade) cancels prepare locally (the manager clears `VERSION`'s
//! marker at open, restore removes the marker file).
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use layout_core::*;
//! use layout_core::prepare::{PrepareOptions, REQUEST_CANCEL_PREPARE};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! enum OmFeature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     Initial,
//! }
//!
//! /// A component whose log applies synchronously.
//! #[derive(Default)]
//! struct Log { applied: AtomicU64, snapshot: AtomicU64 }
//! impl Preparable for Log {
//!     fn applied_index(&self) -> u64 { self.applied.load(Ordering::SeqCst) }
//!     fn flush(&self) -> Result<u64, StepError> { Ok(self.applied_index()) }
//!     fn snapshot(&self, _index: u64) -> Result<u64, StepError> {
//!         self.snapshot.store(self.applied_index(), Ordering::SeqCst);
//!         Ok(self.applied_index())
//!     }
//!     fn last_snapshot_index(&self) -> u64 { self.snapshot.load(Ordering::SeqCst) }
//!     fn purge_log(&self, _index: u64) -> Result<(), StepError> { Ok(()) }
//! }
//!
//! let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
//! let lvm = Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?);
//! let log = Log::default();
//! let prepare = PrepareController::restore(Arc::clone(&lvm), &log, PrepareOptions::default())?;
//!
//! log.applied.store(7, Ordering::SeqCst);
//! assert_eq!(prepare.prepare(&log)?, 7);
//! assert_eq!(prepare.state(), PrepareState::Prepared { index: 7 });
//! assert_eq!(lvm.state().prepare_index, Some(7));           // persisted
//! let refused = prepare.check_write("CreateBucket").unwrap_err();
//! assert!(refused.to_string().contains("CreateBucket"));
//! assert!(prepare.check_write(REQUEST_CANCEL_PREPARE).is_ok());
//!
//! prepare.cancel_prepare()?;
//! assert!(prepare.check_write("CreateBucket").is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// What each part holds: `state` (the prepare states and steps), `error` (refused writes,
// marker problems, prepare errors), `options` (how prepare is configured), `marker`
// (restoring, validating and persisting the prepare marker), `gate` (the write gate and
// its permits), `steps` (prepare and cancel-prepare).
mod error;
mod gate;
mod marker;
mod options;
mod state;
mod steps;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use self::error::{MarkerProblem, PrepareError, WriteRejected};
pub use self::gate::WritePermit;
use self::marker::MarkerRecord;
pub use self::options::PrepareOptions;
pub use self::state::{PrepareState, PrepareStep};
use crate::clock::Clock;
use crate::error::StepError;

/// The name of the prepare request; always allowed through the write gate.
pub const REQUEST_PREPARE: &str = "Prepare";

/// The name of the cancel-prepare request; always allowed through the write gate.
pub const REQUEST_CANCEL_PREPARE: &str = "CancelPrepare";

/// The file name Apache Ozone gives its prepare marker (see
/// [`PrepareOptions::with_marker_file`]).
pub const MARKER_FILE_NAME: &str = "prepareMarker";

/// How long [`PrepareController::prepare`] waits for the log to be applied and flushed by
/// default.
pub const DEFAULT_PREPARE_TIMEOUT: Duration = Duration::from_secs(120);

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
    record: Arc<dyn MarkerRecord>,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    marker_file: Option<PathBuf>,
    /// `true` while the write gate is up (any state but `NotPrepared`).
    gate: AtomicBool,
    /// Writers hold it shared while they append; prepare takes it exclusively once to
    /// wait for writers that passed the gate before it closed.
    writes: RwLock<()>,
    state: Mutex<PrepareState>,
    /// Bumped by every prepare and cancel; a prepare that sees it move was superseded.
    generation: AtomicU64,
    /// Serializes prepare runs.
    run: Mutex<()>,
    /// Why the last prepare failed, until one succeeds.
    last_failure: Mutex<Option<String>>,
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
