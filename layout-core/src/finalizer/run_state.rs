//! The finalizer's run state: everything about the current and the last run, behind one
//! lock, and the claim that makes runs exclusive.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use super::error::FinalizeError;
use super::status::{FinalizationStatus, Progress};
use crate::feature::LayoutFeature;
use crate::state::FinalizationRecord;
use crate::Phase;

/// At most this many undelivered status messages are kept; older ones are dropped.
const MAX_MESSAGES: usize = 1024;

/// The current and last run of a finalizer. One lock guards all of it, so a status
/// report never sees one field of a run and another of the next.
pub(super) struct RunState<F> {
    /// The status.
    pub(super) status: FinalizationStatus,
    /// The client whose run holds the finalizer, from its claim to its end; `None` when
    /// no run does.
    pub(super) running_for: Option<String>,
    /// The client the finalization is bound to (it survives the run, and a restart
    /// through the stored record).
    pub(super) client: Option<String>,
    /// The version the current or last run aims at.
    pub(super) target: Option<u32>,
    /// Where the running finalization is.
    pub(super) progress: Option<Progress<F>>,
    /// Why the last run failed.
    pub(super) last_error: Option<String>,
    /// Finalization runs that ended in an error since this finalizer was built.
    pub(super) failures: u64,
    /// Status messages not yet delivered to the bound client.
    pub(super) messages: VecDeque<String>,
    /// Whether the current (or last) run resumed an interrupted finalization at start-up.
    pub(super) resumed_at_startup: bool,
    /// The active time the running action last reported (see
    /// [`ActionContext::report_elapsed`](crate::ActionContext::report_elapsed)), and when.
    pub(super) action_elapsed: Option<(Duration, SystemTime)>,
    /// When this process began the current run.
    pub(super) run_started: Option<SystemTime>,
    /// How many times each action has run in this process.
    pub(super) attempts: HashMap<(F, Phase), u32>,
    /// When the soak period of automatic finalization started.
    pub(super) soak_started: SystemTime,
}

impl<F> RunState<F> {
    /// The state of a finalizer just built: `status`, bound to the client of the
    /// `unfinished` finalization if there is one, soaking since `now`.
    pub(super) fn new(
        status: FinalizationStatus,
        unfinished: Option<FinalizationRecord>,
        now: SystemTime,
    ) -> Self {
        Self {
            status,
            running_for: None,
            target: unfinished.as_ref().map(|r| r.target_version),
            client: unfinished.map(|r| r.client_id),
            progress: None,
            last_error: None,
            failures: 0,
            messages: VecDeque::new(),
            resumed_at_startup: false,
            action_elapsed: None,
            run_started: None,
            attempts: HashMap::new(),
            soak_started: now,
        }
    }

    /// Logs `message` and keeps it for the bound client.
    pub(super) fn push(&mut self, message: String) {
        tracing::info!(target: "layout_core::finalizer", "{message}");
        if self.messages.len() == MAX_MESSAGES {
            self.messages.pop_front();
        }
        self.messages.push_back(message);
    }

    /// The finalization-contention error, when a run holds the finalizer.
    pub(super) fn contention<G: LayoutFeature>(&self) -> Result<(), FinalizeError<G>> {
        match &self.running_for {
            Some(holder) => Err(FinalizeError::InProgress {
                holder: holder.clone(),
            }),
            None => Ok(()),
        }
    }

    /// How long the running action has been active at `now`: what it reported (its own
    /// figure survives restarts) plus the time since, or else the time this process has
    /// run it. Downtime is not counted.
    pub(super) fn active_time(&self, now: SystemTime) -> Duration {
        match self.action_elapsed {
            Some((reported, at)) => reported + now.duration_since(at).unwrap_or_default(),
            None => self
                .run_started
                .and_then(|s| now.duration_since(s).ok())
                .unwrap_or_default(),
        }
    }
}

/// Claims the finalizer for `client_id`: refused with the contention error while another
/// run holds it. The claim ends when the returned guard is dropped (also when a panic
/// unwinds).
pub(super) fn claim<'a, F: LayoutFeature>(
    run: &'a Mutex<RunState<F>>,
    client_id: &str,
) -> Result<RunGuard<'a, F>, FinalizeError<F>> {
    if client_id.is_empty() {
        return Err(FinalizeError::MissingClientId);
    }
    let mut state = run.lock();
    state.contention()?;
    state.running_for = Some(client_id.to_owned());
    Ok(RunGuard { run })
}

/// Ends a run's claim on the finalizer when dropped.
pub(super) struct RunGuard<'a, F> {
    pub(super) run: &'a Mutex<RunState<F>>,
}

impl<F> Drop for RunGuard<'_, F> {
    fn drop(&mut self) {
        self.run.lock().running_for = None;
    }
}
