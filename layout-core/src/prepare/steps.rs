//! Prepare and cancel-prepare: the steps, the bounded wait for the log to be applied and
//! flushed, and the abort of a superseded or failed prepare.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::error::PrepareError;
use super::state::{PrepareState, PrepareStep};
use crate::error::StepError;
use crate::{Preparable, PrepareController};

/// The longest single wait between two checks of the applied index.
const MAX_POLL: Duration = Duration::from_millis(10);

const FIRST_POLL: Duration = Duration::from_micros(100);

impl PrepareController {
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
}
