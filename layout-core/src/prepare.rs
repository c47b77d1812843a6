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
//! [`FinalizeGate`]).
//!
//! # Where the marker lives
//!
//! The authoritative marker is `prepare.index` in the component's `VERSION` file, stored
//! through the [`LayoutVersionManager`] (checksummed, replaced atomically): a torn or
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
//! operator to look at. Starting with [`StartIntent::Upgrade`] or
//! [`StartIntent::Downgrade`] cancels prepare locally (the manager clears `VERSION`'s
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

use std::error::Error as StdError;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::clock::{Clock, SystemClock};
use crate::durable;
use crate::error::{LayoutError, StepError};
use crate::feature::LayoutFeature;
use crate::finalizer::{FinalizeGate, FinalizeRefusal};
use crate::manager::LayoutVersionManager;
use crate::options::StartIntent;

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

/// The longest single wait between two checks of the applied index.
const MAX_POLL: Duration = Duration::from_millis(10);
const FIRST_POLL: Duration = Duration::from_micros(100);

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

/// Where a component is in the prepare cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrepareState {
    /// Writes are accepted.
    NotPrepared,
    /// The write gate is up and a prepare is running (or the marker awaits validation).
    GateEnabled,
    /// Prepared: the log is applied, flushed, snapshotted and purged through `index`,
    /// and the marker is persisted.
    Prepared {
        /// The prepare index.
        index: u64,
    },
}

impl PrepareState {
    /// The state in Apache Ozone's words (`NOT_PREPARED`, `PREPARE_GATE_ENABLED`,
    /// `PREPARE_COMPLETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotPrepared => "NOT_PREPARED",
            Self::GateEnabled => "PREPARE_GATE_ENABLED",
            Self::Prepared { .. } => "PREPARE_COMPLETED",
        }
    }

    /// The prepare index, when prepared.
    pub fn index(self) -> Option<u64> {
        match self {
            Self::Prepared { index } => Some(index),
            _ => None,
        }
    }
}

impl fmt::Display for PrepareState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prepared { index } => write!(f, "{} (index {index})", self.as_str()),
            _ => f.write_str(self.as_str()),
        }
    }
}

/// A step of [`PrepareController::prepare`]; a failure names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrepareStep {
    /// Waiting until the log is applied and flushed through the prepare index.
    WaitForApply,
    /// Flushing what was applied.
    Flush,
    /// Taking the snapshot.
    Snapshot,
    /// Purging the log.
    PurgeLog,
    /// Persisting the prepare marker.
    PersistMarker,
}

impl PrepareStep {
    /// The step's name, as in messages (`snapshot`, `purge log`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::WaitForApply => "wait for apply",
            Self::Flush => "flush",
            Self::Snapshot => "snapshot",
            Self::PurgeLog => "purge log",
            Self::PersistMarker => "persist marker",
        }
    }
}

impl fmt::Display for PrepareStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A write refused because the component's write gate is up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Cannot apply write request {request} when {component} is in prepare mode ({state}). \
     Only {REQUEST_PREPARE} and {REQUEST_CANCEL_PREPARE} are accepted; cancel prepare to \
     accept writes again"
)]
#[non_exhaustive]
pub struct WriteRejected {
    /// The request refused.
    pub request: String,
    /// The component.
    pub component: String,
    /// The prepare state when it was refused.
    pub state: PrepareState,
}

/// What is wrong with a prepare marker found at restore. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarkerProblem {
    /// A marker is expected but absent.
    #[error(
        "the prepare marker is missing at {location}, but {expected_by} records prepare index \
         {index}; prepare did not finish or the marker was removed"
    )]
    Missing {
        /// Where the marker was looked for.
        location: String,
        /// What says there should be one.
        expected_by: String,
        /// The index that record holds.
        index: u64,
    },
    /// The marker file is empty.
    #[error("the prepare marker file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The marker file does not hold a decimal log index.
    #[error("the prepare marker file {} holds {content:?}, not a log index", path.display())]
    Garbage {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 64 characters of it).
        content: String,
    },
    /// The marker file cannot be read.
    #[error("the prepare marker file {} cannot be read: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The marker file exists but `VERSION` records no prepare.
    #[error(
        "the prepare marker file {} holds index {index}, but the VERSION file at {location} \
         records no prepare",
        path.display()
    )]
    Orphaned {
        /// The file.
        path: PathBuf,
        /// The index it holds.
        index: u64,
        /// The VERSION file.
        location: String,
    },
    /// Two records of the prepare index disagree.
    #[error("the prepare marker says index {marker} but {other_source} says {other}")]
    Mismatch {
        /// The index in `VERSION`.
        marker: u64,
        /// The other record's index.
        other: u64,
        /// The other record (the marker file, the component's own record).
        other_source: String,
    },
    /// The marker is above what the component has: its snapshot or its applied log do not
    /// reach the prepare index.
    #[error(
        "the prepare marker says index {marker}, above the component's own record (last \
         snapshot index {last_snapshot_index}, applied index {applied_index})"
    )]
    TooHigh {
        /// The marker's index.
        marker: u64,
        /// The component's last snapshot index.
        last_snapshot_index: u64,
        /// The component's applied index.
        applied_index: u64,
    },
}

/// An error of the [`PrepareController`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// A prepare step failed; prepare was cancelled (the gate is open again, no marker).
    #[error(
        "prepare failed at step {step} (prepare index {index}): {source}; prepare was \
         cancelled and the component accepts writes again"
    )]
    StepFailed {
        /// The step.
        step: PrepareStep,
        /// The prepare index being prepared.
        index: u64,
        /// The cause.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The log was not applied and flushed through the prepare index in time; prepare
    /// was cancelled.
    #[error(
        "prepare failed at step {step}: the log was not applied and flushed through prepare \
         index {index} within {timeout:?} (applied index {applied}, flushed index {flushed}); \
         prepare was cancelled and the component accepts writes again",
        step = PrepareStep::WaitForApply
    )]
    Timeout {
        /// The prepare index.
        index: u64,
        /// The applied index at the deadline.
        applied: u64,
        /// The highest flushed index seen.
        flushed: u64,
        /// The configured timeout.
        timeout: Duration,
    },
    /// A prepare step failed and cancelling afterwards failed too: the write gate stays
    /// up; cancel prepare once the cause is fixed.
    #[error(
        "prepare failed at step {step}: {failure}; cancelling it failed too: {cancel}. The \
         write gate stays up; cancel prepare once the cause is fixed"
    )]
    CancelFailed {
        /// The step that failed first.
        step: PrepareStep,
        /// Why it failed.
        failure: String,
        /// Why cancelling failed.
        #[source]
        cancel: Box<PrepareError>,
    },
    /// The prepare was cancelled, or superseded by another prepare, while it ran.
    #[error("prepare to index {index} was cancelled or superseded by another prepare request")]
    Cancelled {
        /// The prepare index it was preparing.
        index: u64,
    },
    /// The marker found at restore is bad; nothing was changed.
    #[error(
        "cannot restore the prepare state of {component}: {problem}. Nothing was changed. \
         Inspect the component; to cancel prepare locally, start it with the Upgrade or \
         Downgrade intent"
    )]
    Marker {
        /// The component.
        component: String,
        /// What is wrong.
        #[source]
        problem: MarkerProblem,
    },
    /// Writing or removing the marker file failed.
    #[error("prepare marker file {}: {operation} failed: {source}", path.display())]
    MarkerFile {
        /// The file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Storing the marker in the layout state failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl PrepareError {
    /// The step that failed, for step failures and timeouts.
    pub fn step(&self) -> Option<PrepareStep> {
        match self {
            Self::StepFailed { step, .. } | Self::CancelFailed { step, .. } => Some(*step),
            Self::Timeout { .. } => Some(PrepareStep::WaitForApply),
            _ => None,
        }
    }
}

/// Options of [`PrepareController::restore`].
///
/// ```
/// use std::time::Duration;
/// use layout_core::prepare::PrepareOptions;
///
/// let opts = PrepareOptions::default()
///     .with_timeout(Duration::from_secs(30))
///     .with_marker_file("/var/lib/om/current/prepareMarker");
/// assert_eq!(opts.timeout(), Duration::from_secs(30));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PrepareOptions {
    timeout: Duration,
    clock: Arc<dyn Clock>,
    marker_file: Option<PathBuf>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_PREPARE_TIMEOUT,
            clock: Arc::new(SystemClock),
            marker_file: None,
        }
    }
}

impl PrepareOptions {
    /// How long prepare waits for the log to be applied and flushed through the prepare
    /// index (default [`DEFAULT_PREPARE_TIMEOUT`]). Past it, prepare fails and cancels.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The clock the timeout is measured with (default: the system clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Also keep Apache Ozone's separate marker file at `path` (conventionally
    /// `<metadata dir>/current/`[`MARKER_FILE_NAME`]), holding the prepare index in
    /// decimal. `VERSION` stays authoritative; restore checks that both agree.
    #[must_use]
    pub fn with_marker_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.marker_file = Some(path.into());
        self
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The marker file, if one is kept.
    pub fn marker_file(&self) -> Option<&Path> {
        self.marker_file.as_deref()
    }
}

/// Where the authoritative marker lives: the layout state, through the manager.
trait MarkerRecord: Send + Sync {
    fn component(&self) -> &str;
    fn location(&self) -> String;
    fn intent(&self) -> StartIntent;
    fn prepare_index(&self) -> Option<u64>;
    fn store_prepare_index(&self, index: Option<u64>) -> Result<(), LayoutError>;
}

impl<F: LayoutFeature> MarkerRecord for LayoutVersionManager<F> {
    fn component(&self) -> &str {
        self.component_name()
    }
    fn location(&self) -> String {
        self.storage_location()
    }
    fn intent(&self) -> StartIntent {
        self.start_intent()
    }
    fn prepare_index(&self) -> Option<u64> {
        self.state().prepare_index
    }
    fn store_prepare_index(&self, index: Option<u64>) -> Result<(), LayoutError> {
        self.update_state(|s| s.prepare_index = index)
    }
}

/// Held while a write is appended to the log; see [`PrepareController::begin_write`].
/// Prepare waits for every permit handed out before its gate closed.
#[must_use = "the write is only covered by the gate while the permit is held"]
pub struct WritePermit<'a> {
    _guard: RwLockReadGuard<'a, ()>,
}

impl fmt::Debug for WritePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritePermit").finish_non_exhaustive()
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
    /// The controller of the component whose layout `lvm` manages, its prepare state
    /// restored from the marker and checked against `component` (see the
    /// [module docs](self)). Call it at start-up, before serving writes.
    ///
    /// With [`StartIntent::Upgrade`] or [`StartIntent::Downgrade`] prepare is cancelled
    /// locally: the marker file (if kept) is removed and the component starts not
    /// prepared. A bad marker is [`PrepareError::Marker`], and nothing is written. A
    /// leftover temporary marker file (`.<marker file>.<pid>.<n>.tmp`, or
    /// `<marker file>.tmp` of earlier releases, from a prepare killed while writing it) is
    /// removed first, and logged at warn.
    pub fn restore<F: LayoutFeature>(
        lvm: Arc<LayoutVersionManager<F>>,
        component: &dyn Preparable,
        options: PrepareOptions,
    ) -> Result<Self, PrepareError> {
        let record: Arc<dyn MarkerRecord> = lvm;
        let controller = Self {
            record,
            timeout: options.timeout,
            clock: options.clock,
            marker_file: options.marker_file,
            gate: AtomicBool::new(false),
            writes: RwLock::new(()),
            state: Mutex::new(PrepareState::NotPrepared),
            generation: AtomicU64::new(0),
            run: Mutex::new(()),
            last_failure: Mutex::new(None),
        };
        if let Some(path) = &controller.marker_file {
            // A prepare killed while it wrote the marker file leaves its temporary file.
            remove_leftover_temps(path)?;
        }
        let index = controller.validate_marker(component)?;
        if let Some(index) = index {
            controller.gate.store(true, Ordering::SeqCst);
            *controller.state.lock() = PrepareState::Prepared { index };
            tracing::info!(
                component = controller.record.component(),
                prepare_index = index,
                "restored prepared state"
            );
        }
        Ok(controller)
    }

    /// Checks the marker against the component; `Ok(Some(index))` when prepared.
    fn validate_marker(&self, component: &dyn Preparable) -> Result<Option<u64>, PrepareError> {
        let problem = |problem| PrepareError::Marker {
            component: self.record.component().to_owned(),
            problem,
        };
        if matches!(
            self.record.intent(),
            StartIntent::Upgrade | StartIntent::Downgrade
        ) {
            // The manager cleared VERSION's marker at open; cancel the rest locally.
            if let Some(path) = &self.marker_file {
                remove_marker_file(path)?;
            }
            return Ok(None);
        }
        let marker = self.record.prepare_index();
        if let Some(path) = &self.marker_file {
            let in_file = read_marker_file(path).map_err(problem)?;
            match (marker, in_file) {
                (Some(index), None) => {
                    return Err(problem(MarkerProblem::Missing {
                        location: path.display().to_string(),
                        expected_by: format!("the VERSION file at {}", self.record.location()),
                        index,
                    }))
                }
                (Some(index), Some(other)) if index != other => {
                    return Err(problem(MarkerProblem::Mismatch {
                        marker: index,
                        other,
                        other_source: format!("the marker file {}", path.display()),
                    }))
                }
                (None, Some(index)) => {
                    return Err(problem(MarkerProblem::Orphaned {
                        path: path.clone(),
                        index,
                        location: self.record.location(),
                    }))
                }
                _ => {}
            }
        }
        match (marker, component.recorded_prepare_index()) {
            (None, Some(index)) => {
                return Err(problem(MarkerProblem::Missing {
                    location: self.record.location(),
                    expected_by: "the component's own record".to_owned(),
                    index,
                }))
            }
            (Some(index), Some(other)) if index != other => {
                return Err(problem(MarkerProblem::Mismatch {
                    marker: index,
                    other,
                    other_source: "the component's own record".to_owned(),
                }))
            }
            _ => {}
        }
        if let Some(index) = marker {
            let last_snapshot_index = component.last_snapshot_index();
            let applied_index = component.applied_index();
            if index > last_snapshot_index || index > applied_index {
                return Err(problem(MarkerProblem::TooHigh {
                    marker: index,
                    last_snapshot_index,
                    applied_index,
                }));
            }
            return Ok(Some(index));
        }
        Ok(None)
    }

    /// The prepare state.
    pub fn state(&self) -> PrepareState {
        *self.state.lock()
    }

    /// Whether the write gate is up (preparing or prepared).
    #[inline]
    pub fn is_gate_enabled(&self) -> bool {
        self.gate.load(Ordering::Acquire)
    }

    /// The component's name.
    pub fn component_name(&self) -> &str {
        self.record.component()
    }

    /// The marker file, if one is kept.
    pub fn marker_file(&self) -> Option<&Path> {
        self.marker_file.as_deref()
    }

    /// `Ok` when the write request `request` may be applied: always for
    /// [`REQUEST_PREPARE`] and [`REQUEST_CANCEL_PREPARE`], otherwise only while the gate is
    /// down. One atomic load on the accepting path.
    ///
    /// A check alone can race with a prepare that closes the gate right after it; when
    /// the write is appended to the log afterwards, use [`begin_write`](Self::begin_write).
    #[inline]
    pub fn check_write(&self, request: &str) -> Result<(), WriteRejected> {
        if !self.is_gate_enabled() || is_prepare_request(request) {
            return Ok(());
        }
        Err(self.rejected(request))
    }

    /// Like [`check_write`](Self::check_write), and holds the gate open for this write
    /// until the returned permit is dropped: a prepare that closes the gate meanwhile
    /// waits for the permit before it reads the log index to prepare to, so the write is
    /// either covered by the prepare or rejected, never lost in between.
    pub fn begin_write(&self, request: &str) -> Result<WritePermit<'_>, WriteRejected> {
        let guard = self.writes.read();
        self.check_write(request)?;
        Ok(WritePermit { _guard: guard })
    }

    fn rejected(&self, request: &str) -> WriteRejected {
        let state = match self.state() {
            // The gate can be seen up a moment before the state says so.
            PrepareState::NotPrepared => PrepareState::GateEnabled,
            state => state,
        };
        WriteRejected {
            request: request.to_owned(),
            component: self.record.component().to_owned(),
            state,
        }
    }

    /// Prepares the component and returns the prepare index: closes the write gate,
    /// waits (at most the configured timeout) until the log is applied and flushed
    /// through the last accepted index, snapshots, purges the log through the snapshot,
    /// and persists the marker. Repeatable: preparing a prepared component does it again.
    ///
    /// A failing step cancels the prepare (the gate opens, no marker is left) and the
    /// error names the step.
    pub fn prepare(&self, component: &dyn Preparable) -> Result<u64, PrepareError> {
        let _run = self.run.lock();
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut state = self.state.lock();
            self.gate.store(true, Ordering::SeqCst);
            *state = PrepareState::GateEnabled;
        }
        // Writers that passed the gate before it closed finish appending first.
        drop(self.writes.write());
        let index = component.last_log_index();
        tracing::info!(
            component = self.record.component(),
            prepare_index = index,
            "prepare: write gate enabled"
        );
        match self.run_steps(component, index, generation) {
            Ok(()) => {
                *self.last_failure.lock() = None;
                Ok(index)
            }
            Err(err @ PrepareError::Cancelled { .. }) => Err(err),
            Err(err) => {
                let err = self.abort(generation, err);
                *self.last_failure.lock() = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Why the last prepare failed (the error's message, cause included), until a
    /// prepare succeeds; `None` when none failed. For a status display.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().clone()
    }

    fn run_steps(
        &self,
        component: &dyn Preparable,
        index: u64,
        generation: u64,
    ) -> Result<(), PrepareError> {
        let failed = |step: PrepareStep, source: StepError| PrepareError::StepFailed {
            step,
            index,
            source: Box::new(source),
        };
        self.wait_applied_and_flushed(component, index, generation)?;
        let snapshot = component
            .snapshot(index)
            .map_err(|e| failed(PrepareStep::Snapshot, e))?;
        if snapshot < index {
            return Err(failed(
                PrepareStep::Snapshot,
                StepError::new(format!(
                    "the snapshot covers index {snapshot}, below the prepare index {index}"
                )),
            ));
        }
        self.check_generation(generation, index)?;
        component
            .purge_log(snapshot)
            .map_err(|e| failed(PrepareStep::PurgeLog, e))?;
        let mut state = self.state.lock();
        self.check_generation(generation, index)?;
        self.persist_marker(index)
            .map_err(|e| PrepareError::StepFailed {
                step: PrepareStep::PersistMarker,
                index,
                source: Box::new(e),
            })?;
        *state = PrepareState::Prepared { index };
        tracing::info!(
            component = self.record.component(),
            prepare_index = index,
            "prepared"
        );
        Ok(())
    }

    fn wait_applied_and_flushed(
        &self,
        component: &dyn Preparable,
        index: u64,
        generation: u64,
    ) -> Result<(), PrepareError> {
        let start = self.clock.now();
        let mut poll = FIRST_POLL;
        let mut flushed = 0;
        loop {
            self.check_generation(generation, index)?;
            let applied = component.applied_index();
            if applied >= index {
                flushed = component.flush().map_err(|e| PrepareError::StepFailed {
                    step: PrepareStep::Flush,
                    index,
                    source: Box::new(e),
                })?;
                if flushed >= index {
                    return Ok(());
                }
            }
            let waited = self.clock.now().duration_since(start).unwrap_or_default();
            let Some(remaining) = self.timeout.checked_sub(waited).filter(|r| !r.is_zero()) else {
                return Err(PrepareError::Timeout {
                    index,
                    applied,
                    flushed,
                    timeout: self.timeout,
                });
            };
            component.wait_for_apply(index, remaining.min(poll));
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    fn check_generation(&self, generation: u64, index: u64) -> Result<(), PrepareError> {
        if self.generation.load(Ordering::SeqCst) == generation {
            Ok(())
        } else {
            Err(PrepareError::Cancelled { index })
        }
    }

    /// Cancels a failed prepare, unless another request took over meanwhile.
    fn abort(&self, generation: u64, err: PrepareError) -> PrepareError {
        let mut state = self.state.lock();
        if self.generation.load(Ordering::SeqCst) != generation {
            return err;
        }
        tracing::warn!(
            component = self.record.component(),
            error = %err,
            "prepare failed; cancelling"
        );
        match self.clear_marker() {
            Ok(()) => {
                *state = PrepareState::NotPrepared;
                self.gate.store(false, Ordering::SeqCst);
                err
            }
            Err(cancel) => PrepareError::CancelFailed {
                step: err.step().unwrap_or(PrepareStep::PersistMarker),
                failure: err.to_string(),
                cancel: Box::new(cancel),
            },
        }
    }

    /// Cancels prepare from any state: removes the marker (the file first, then
    /// `VERSION`'s), opens the write gate, and stops a prepare that is running. Repeatable.
    /// When removing the marker fails, the state is left as it was.
    pub fn cancel_prepare(&self) -> Result<(), PrepareError> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut state = self.state.lock();
        self.clear_marker()?;
        *state = PrepareState::NotPrepared;
        self.gate.store(false, Ordering::SeqCst);
        tracing::info!(component = self.record.component(), "prepare cancelled");
        Ok(())
    }

    fn persist_marker(&self, index: u64) -> Result<(), PrepareError> {
        self.record.store_prepare_index(Some(index))?;
        if let Some(path) = &self.marker_file {
            write_marker_file(path, index)?;
        }
        Ok(())
    }

    fn clear_marker(&self) -> Result<(), PrepareError> {
        if let Some(path) = &self.marker_file {
            remove_marker_file(path)?;
        }
        if self.record.prepare_index().is_some() {
            self.record.store_prepare_index(None)?;
        }
        Ok(())
    }
}

/// The one channel through which prepare refuses finalization: a finalizer with this
/// controller as a gate refuses while the write gate is up.
impl FinalizeGate for PrepareController {
    fn check(&self) -> Result<(), FinalizeRefusal> {
        if !self.is_gate_enabled() {
            return Ok(());
        }
        Err(match self.state() {
            PrepareState::Prepared { index } => FinalizeRefusal::Prepared { index },
            _ => FinalizeRefusal::PrepareRunning,
        })
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

fn is_prepare_request(request: &str) -> bool {
    request == REQUEST_PREPARE || request == REQUEST_CANCEL_PREPARE
}

/// Reads Ozone's marker file: `Ok(None)` when absent.
fn read_marker_file(path: &Path) -> Result<Option<u64>, MarkerProblem> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MarkerProblem::Unreadable {
                path: path.to_owned(),
                source,
            })
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(MarkerProblem::Empty {
            path: path.to_owned(),
        });
    }
    let canonical = trimmed.bytes().all(|b| b.is_ascii_digit());
    match trimmed.parse::<u64>() {
        Ok(index) if canonical => Ok(Some(index)),
        _ => Err(MarkerProblem::Garbage {
            path: path.to_owned(),
            content: trimmed.chars().take(64).collect(),
        }),
    }
}

/// Writes the marker file atomically and durably ([`durable::replace`]: a temporary file
/// created exclusively in the same directory, fsynced, renamed over, directory fsynced).
fn write_marker_file(path: &Path, index: u64) -> Result<(), PrepareError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|source| PrepareError::MarkerFile {
        path: path.to_owned(),
        operation: "create directory",
        source,
    })?;
    remove_leftover_temps(path)?;
    durable::replace(path, index.to_string().as_bytes())
        .map(drop)
        .map_err(marker_file_error)
}

fn marker_file_error(e: durable::Error) -> PrepareError {
    PrepareError::MarkerFile {
        path: e.path().to_owned(),
        operation: e.step().as_str(),
        source: e.into_io_error(),
    }
}

/// Removes the temporary marker files a prepare killed while writing left behind: those
/// of [`durable::replace`] and `<marker file>.tmp` of earlier releases. Unlinked, never
/// followed; each logged at warn. Prepare runs are serialized, so none is in use.
fn remove_leftover_temps(path: &Path) -> Result<(), PrepareError> {
    remove_leftover_temp(&marker_temp_path(path))?;
    for temp in durable::remove_leftover_temp_files(path).map_err(marker_file_error)? {
        tracing::warn!(
            path = %temp.display(),
            "removed a leftover temporary prepare marker file (from an interrupted prepare)"
        );
    }
    Ok(())
}

/// The temporary marker file of earlier releases: `<marker file>.tmp`, next to it.
fn marker_temp_path(path: &Path) -> PathBuf {
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(".tmp");
    path.with_file_name(temp_name)
}

/// Removes a leftover temporary file of the marker (a prepare killed while writing it),
/// logged at warn. Unlinked, never followed: a symlink there is removed, not its target.
fn remove_leftover_temp(temp: &Path) -> Result<(), PrepareError> {
    match fs::symlink_metadata(temp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PrepareError::MarkerFile {
                path: temp.to_owned(),
                operation: "stat leftover temporary file",
                source,
            })
        }
        Ok(_) => {}
    }
    tracing::warn!(
        path = %temp.display(),
        "removing a leftover temporary prepare marker file (from an interrupted prepare)"
    );
    match fs::remove_file(temp) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PrepareError::MarkerFile {
            path: temp.to_owned(),
            operation: "remove leftover temporary file",
            source,
        }),
    }
}

fn remove_marker_file(path: &Path) -> Result<(), PrepareError> {
    durable::remove(path).map_err(marker_file_error)
}
