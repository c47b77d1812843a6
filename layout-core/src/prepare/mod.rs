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
//!
//! [`LayoutVersionManager`]: crate::LayoutVersionManager
//! [`StartIntent::Upgrade`]: crate::StartIntent::Upgrade
//! [`StartIntent::Downgrade`]: crate::StartIntent::Downgrade
//! [`PrepareController::prepare`]: crate::PrepareController::prepare
//! [`PrepareController::restore`]: crate::PrepareController::restore
//! [`Preparable::last_snapshot_index`]: crate::Preparable::last_snapshot_index
//! [`Preparable::applied_index`]: crate::Preparable::applied_index
//! [`Preparable::recorded_prepare_index`]: crate::Preparable::recorded_prepare_index

// What each part holds: `controller` (the component a controller prepares, and the
// controller), `state` (the prepare states and steps), `error` (refused writes, marker
// problems, prepare errors), `options` (how prepare is configured), `marker` (restoring,
// validating and persisting the prepare marker), `record` (where the marker lives: the
// layout state), `gate` (the write gate and its permits), `steps` (prepare and
// cancel-prepare).
//
// The main path (`Preparable`, `PrepareController`, `PrepareError`, `PrepareState`) is
// re-exported at the crate root, and only there; this module holds the rest.
pub(crate) mod controller;
pub(crate) mod error;
mod gate;
mod marker;
mod options;
mod record;
pub(crate) mod state;
mod steps;

use std::time::Duration;

pub use self::error::{MarkerProblem, WriteRejected};
pub use self::gate::WritePermit;
pub use self::options::PrepareOptions;
pub use self::state::PrepareStep;

/// The name of the prepare request; always allowed through the write gate.
pub const REQUEST_PREPARE: &str = "Prepare";

/// The name of the cancel-prepare request; always allowed through the write gate.
pub const REQUEST_CANCEL_PREPARE: &str = "CancelPrepare";

/// The file name Apache Ozone gives its prepare marker (see
/// [`PrepareOptions::with_marker_file`]).
pub const MARKER_FILE_NAME: &str = "prepareMarker";

/// How long [`PrepareController::prepare`](crate::PrepareController::prepare) waits for the
/// log to be applied and flushed by default.
pub const DEFAULT_PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
