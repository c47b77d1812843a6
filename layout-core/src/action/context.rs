//! What an action is and what it is handed: the phase, the context, the error.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::feature::LayoutFeature;

/// When an upgrade action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// On every start while the feature is not finalized. A failure refuses start-up.
    /// The place to check preconditions and to clean up after a failed finalize.
    ValidateInPrefinalize,
    /// Once, on the first start of a release that knows the feature (tracked by the
    /// persisted first-upgrade marker); rerun on the next start if it failed. Must leave
    /// the disk readable by the old release.
    OnFirstUpgradeStart,
    /// While finalizing the feature, at least once: it must be idempotent. The only
    /// phase allowed to make backward-incompatible changes.
    OnFinalize,
}

impl Phase {
    /// Every phase, in the order they run for one feature.
    pub const ALL: [Phase; 3] = [
        Phase::ValidateInPrefinalize,
        Phase::OnFirstUpgradeStart,
        Phase::OnFinalize,
    ];

    /// The phase's name as written in code (`OnFinalize`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Phase::ValidateInPrefinalize => "ValidateInPrefinalize",
            Phase::OnFirstUpgradeStart => "OnFirstUpgradeStart",
            Phase::OnFinalize => "OnFinalize",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error an upgrade action returns: a [`StepError`](crate::StepError) (a message
/// and, optionally, its cause), the one error every step of upgrade work returns.
///
/// ```
/// use layout_core::ActionError;
///
/// let io = std::io::Error::other("disk full");
/// let err = ActionError::with_source("could not create the tenant table", io);
/// assert_eq!(err.to_string(), "could not create the tenant table: disk full");
/// ```
pub type ActionError = crate::error::StepError;

/// Receives what a running action reports. The finalizer implements it to feed status.
pub trait ProgressSink: Send + Sync {
    /// `done` of `total` units (rows, files, ...) are done.
    fn progress(&self, done: u64, total: Option<u64>);
    /// A message for the operator.
    fn message(&self, message: &str);
    /// The action has been active for `elapsed` in all, over every run and restart (a
    /// figure the action keeps itself, such as a background migration's checkpoint). The
    /// finalizer's status then reports it, rather than the time since the finalization
    /// started, so downtime is not counted. Default: ignored.
    fn elapsed(&self, elapsed: std::time::Duration) {
        let _ = elapsed;
    }
}

struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _done: u64, _total: Option<u64>) {}
    fn message(&self, _message: &str) {}
}

/// What an action is told about the moment it runs in, and how it reports back.
pub struct ActionContext<'a, F> {
    feature: F,
    phase: Phase,
    attempt: u32,
    progress: &'a dyn ProgressSink,
    cancel: &'a AtomicBool,
}

impl<'a, F: LayoutFeature> ActionContext<'a, F> {
    /// A context for running an action by hand (tests, tools).
    pub fn new(
        feature: F,
        phase: Phase,
        progress: &'a dyn ProgressSink,
        cancel: &'a AtomicBool,
    ) -> Self {
        Self {
            feature,
            phase,
            attempt: 1,
            progress,
            cancel,
        }
    }

    /// A context that reports nowhere and is never cancelled (tests, tools).
    pub fn detached(feature: F, phase: Phase) -> ActionContext<'static, F> {
        static NEVER: AtomicBool = AtomicBool::new(false);
        ActionContext {
            feature,
            phase,
            attempt: 1,
            progress: &NoProgress,
            cancel: &NEVER,
        }
    }

    pub(crate) fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The feature the action belongs to.
    pub fn feature(&self) -> F {
        self.feature
    }

    /// The phase it runs in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// How many times this finalizer has started this action in this process (1 on the
    /// first try). Runs before a restart are not counted: actions must be idempotent.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Reports progress: `done` of `total` units.
    pub fn report_progress(&self, done: u64, total: Option<u64>) {
        self.progress.progress(done, total);
    }

    /// Reports how long the action has been active in all, over every run and restart
    /// (see [`ProgressSink::elapsed`]).
    pub fn report_elapsed(&self, elapsed: std::time::Duration) {
        self.progress.elapsed(elapsed);
    }

    /// Passes the crash point `name` (see [`crate::crash_point`]): call it wherever the
    /// action has done part of its work durably, so a test kit can crash there and check
    /// that the next start recovers. Costs one atomic load when nothing observes it.
    pub fn crash_point(&self, name: &'static str) {
        crate::crash_point::hit(name);
    }

    /// Sends a message to the operator (shown in the finalization status).
    pub fn message(&self, message: impl AsRef<str>) {
        self.progress.message(message.as_ref());
    }

    /// Whether finalization was cancelled; long actions should check it between batches.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// `Err(ActionError::cancelled())` once finalization was cancelled.
    pub fn check_cancelled(&self) -> Result<(), ActionError> {
        if self.is_cancelled() {
            Err(ActionError::cancelled())
        } else {
            Ok(())
        }
    }
}

impl<F: fmt::Debug> fmt::Debug for ActionContext<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActionContext")
            .field("feature", &self.feature)
            .field("phase", &self.phase)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// An upgrade action for component type `C` and catalog `F`.
pub type Action<F, C> =
    Arc<dyn Fn(&C, &ActionContext<'_, F>) -> Result<(), ActionError> + Send + Sync>;

/// The function-pointer type `#[upgrade_action]` registers. Not public API.
#[doc(hidden)]
pub type ActionFnPtr<F, C> = fn(&C, &ActionContext<'_, F>) -> Result<(), ActionError>;

/// Converts an action's result into the registry's; `#[upgrade_action]` calls it, so its
/// error type only needs `Into<ActionError>`. Not public API.
#[doc(hidden)]
pub fn into_action_result<E: IntoActionError>(result: Result<(), E>) -> Result<(), ActionError> {
    result.map_err(IntoActionError::into_action_error)
}

/// The error types an `#[upgrade_action]` function may return. Not public API.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "an upgrade action must return `Result<(), E>` where `E: Into<ActionError>`; `{Self}` does not convert into `ActionError`",
    label = "this action's error type does not convert into `layout_core::ActionError`",
    note = "implement `From<{Self}> for layout_core::ActionError`, or return `Result<(), ActionError>`"
)]
pub trait IntoActionError {
    /// Converts.
    fn into_action_error(self) -> ActionError;
}

impl<E: Into<ActionError>> IntoActionError for E {
    fn into_action_error(self) -> ActionError {
        self.into()
    }
}
