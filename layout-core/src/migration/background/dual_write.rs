//! Write routing while a migration runs as a layout feature's `OnFinalize` action:
//! old layout, both, or new, decided per write under a fence.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;

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
    pub(super) started: RwLock<bool>,
}

impl WriteFence {
    pub(super) fn set_started(&self, started: bool) {
        *self.started.write() = started;
    }
}

/// Tells the component's write path where each write goes while a migration runs as a
/// layout feature's `OnFinalize` action; see [`BackgroundMigration::dual_write`].
///
/// Hold the [`WriteScope`] from [`begin`](Self::begin) for the duration of the write.
///
/// [`BackgroundMigration::dual_write`]: super::BackgroundMigration::dual_write
pub struct DualWrite<F: LayoutFeature> {
    pub(super) lvm: Arc<LayoutVersionManager<F>>,
    pub(super) feature: F,
    pub(super) fence: Arc<WriteFence>,
    pub(super) completed: Arc<AtomicBool>,
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
