//! A finalization running in a background thread.

use std::fmt;
use std::sync::Arc;
use std::thread;

use super::error::FinalizeError;
use super::status::FinalizeOutcome;
use crate::feature::LayoutFeature;
use crate::UpgradeFinalizer;

/// What a finalization returns.
pub type FinalizeResult<F> = Result<FinalizeOutcome<F>, FinalizeError<F>>;

/// Cancels the finalizer a handle belongs to, whatever its component type.
pub(super) trait Cancel: Send + Sync {
    fn cancel(&self);
}

impl<F: LayoutFeature, C: Send + Sync + 'static> Cancel for UpgradeFinalizer<F, C> {
    fn cancel(&self) {
        UpgradeFinalizer::cancel(self);
    }
}

/// A finalization running in a background thread; see
/// [`UpgradeFinalizer::start_finalize`].
pub struct FinalizeHandle<F: LayoutFeature> {
    pub(super) thread: Option<std::io::Result<thread::JoinHandle<FinalizeResult<F>>>>,
    pub(super) finalizer_cancel: Arc<dyn Cancel>,
}

impl<F: LayoutFeature> FinalizeHandle<F> {
    /// Asks the finalization to stop before its next feature (an action that checks
    /// [`ActionContext::is_cancelled`](crate::ActionContext::is_cancelled) may stop
    /// sooner).
    pub fn cancel(&self) {
        self.finalizer_cancel.cancel();
    }

    /// Whether the background thread has finished.
    pub fn is_finished(&self) -> bool {
        match &self.thread {
            Some(Ok(handle)) => handle.is_finished(),
            _ => true,
        }
    }

    /// Waits for the finalization and returns its result.
    pub fn join(mut self) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        match self.thread.take() {
            Some(Ok(handle)) => handle.join().unwrap_or_else(|_| {
                Err(FinalizeError::Thread {
                    reason: "the finalization thread panicked".to_owned(),
                })
            }),
            Some(Err(spawn)) => Err(FinalizeError::Thread {
                reason: format!("could not start the finalization thread: {spawn}"),
            }),
            None => Err(FinalizeError::Thread {
                reason: "the handle was already joined".to_owned(),
            }),
        }
    }
}

impl<F: LayoutFeature> fmt::Debug for FinalizeHandle<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinalizeHandle")
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}
