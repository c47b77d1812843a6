//! The write gate: which writes pass, the [`WritePermit`] a write holds while it is
//! appended, and the finalize gate.

use std::fmt;
use std::sync::atomic::Ordering;

use parking_lot::RwLockReadGuard;

use super::error::WriteRejected;
use super::state::PrepareState;
use super::{REQUEST_CANCEL_PREPARE, REQUEST_PREPARE};
use crate::finalizer::{FinalizeGate, FinalizeRefusal};
use crate::PrepareController;

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

impl PrepareController {
    /// The prepare state.
    pub fn state(&self) -> PrepareState {
        *self.state.lock()
    }

    /// Whether the write gate is up (preparing or prepared).
    #[inline]
    pub fn is_gate_enabled(&self) -> bool {
        self.gate.load(Ordering::Acquire)
    }
}

impl PrepareController {
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

fn is_prepare_request(request: &str) -> bool {
    request == REQUEST_PREPARE || request == REQUEST_CANCEL_PREPARE
}
