//! Errors of the finalizer.

use std::fmt;

use super::condition::FinalizeRefusal;
use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::ActionError;

/// A failing finalize condition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConditionFailure {
    /// The condition.
    pub name: String,
    /// Why it fails.
    pub reason: FinalizeRefusal,
}

impl fmt::Display for ConditionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// Why a finalization was refused or stopped.
///
/// Features finalized before the error stay finalized; the failed feature stays
/// pre-finalized, and a later finalization resumes there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FinalizeError<F: LayoutFeature> {
    /// Another finalization is running; refused at once, never blocks. The one
    /// finalization-contention error: a finalize call, a dry run's
    /// [`blocked_by`](crate::finalizer::DryRun::blocked_by) and the admin API's
    /// `finalization-in-progress` answer all say this.
    #[error("finalization is already in progress, started by client {holder}")]
    InProgress {
        /// The client running it.
        holder: String,
    },
    /// An unfinished finalization belongs to another client; use takeover.
    #[error(
        "an unfinished finalization belongs to client {holder}, not {client}; retry with \
         takeover to take it over"
    )]
    OwnedByAnotherClient {
        /// The client it belongs to.
        holder: String,
        /// The client that asked.
        client: String,
    },
    /// A gate refuses: the component is prepared or its prepare write gate is up
    /// ([`FinalizeRefusal::Prepared`], [`FinalizeRefusal::PrepareRunning`], from the
    /// prepare controller), or another [`FinalizeGate`](crate::finalizer::FinalizeGate) refuses.
    #[error("finalization refused: {reason}; cancel prepare first")]
    Prepared {
        /// Why (the prepare index when prepared).
        reason: FinalizeRefusal,
    },
    /// Finalize conditions failed; nothing was touched.
    #[error(
        "finalization refused: {} condition(s) failed: {}. Fix them, or override one with a \
         reason (recorded in the finalization history)",
        failures.len(),
        failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    ConditionsFailed {
        /// Every failing condition, with its reason.
        failures: Vec<ConditionFailure>,
    },
    /// An override named a condition that does not exist.
    #[error("cannot override unknown finalize condition {condition:?}; known: {known:?}")]
    UnknownCondition {
        /// The name given.
        condition: String,
        /// The conditions there are.
        known: Vec<String>,
    },
    /// An override of a condition that cannot be overridden
    /// ([`FnCondition::not_overridable`](crate::finalizer::FnCondition::not_overridable)).
    #[error("condition {condition:?} cannot be overridden: {why}")]
    NotOverridable {
        /// The condition.
        condition: String,
        /// Why, and who may pass it instead.
        why: String,
    },
    /// An override without a reason.
    #[error("overriding condition {condition:?} needs a reason (it is recorded in the history)")]
    OverrideWithoutReason {
        /// The condition.
        condition: String,
    },
    /// A feature's `OnFinalize` action failed.
    #[error(
        "finalization stopped at layout feature {} (layout version {}): its OnFinalize action \
         {action} failed: {source}. Features before it stay finalized; finalize again to retry",
        feature.name(),
        feature.layout_version()
    )]
    ActionFailed {
        /// The feature whose action failed (still pre-finalized).
        feature: F,
        /// The action.
        action: String,
        /// The cause.
        #[source]
        source: ActionError,
        /// The features this run finalized before the failure.
        finalized: Vec<F>,
    },
    /// Finalization was cancelled between features.
    #[error(
        "finalization cancelled before layout feature {}; {} feature(s) were finalized by this \
         run",
        next.name(),
        finalized.len()
    )]
    Cancelled {
        /// The first feature not finalized.
        next: F,
        /// The features this run finalized.
        finalized: Vec<F>,
    },
    /// `report_status` by a client the finalization is not bound to, without takeover.
    #[error(
        "finalization is bound to client {holder}; client {client} must ask with takeover to \
         see its status and messages"
    )]
    NotTheClient {
        /// The bound client.
        holder: String,
        /// The client that asked.
        client: String,
    },
    /// The background finalization thread could not run or died.
    #[error("finalization thread: {reason}")]
    Thread {
        /// What happened.
        reason: String,
    },
    /// A client id that is empty.
    #[error("a client id is required (a name for who finalizes, recorded in the history)")]
    MissingClientId,
    /// The layout manager refused a step or storing failed.
    #[error("finalization failed: {source}")]
    Layout {
        /// The cause.
        #[from]
        source: LayoutError,
    },
}

/// Why the start-up (pre-finalize) actions refused start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrefinalizeError<F: LayoutFeature> {
    /// A `ValidateInPrefinalize` action failed: the component must not start.
    #[error(
        "start-up refused: the ValidateInPrefinalize action {action} of layout feature {} \
         (layout version {}) failed: {source}",
        feature.name(),
        feature.layout_version()
    )]
    ValidationFailed {
        /// The feature.
        feature: F,
        /// The action.
        action: String,
        /// The cause.
        #[source]
        source: ActionError,
    },
    /// An `OnFirstUpgradeStart` action failed: it reruns on the next start.
    #[error(
        "start-up refused: the OnFirstUpgradeStart action {action} of layout feature {} \
         (layout version {}) failed: {source}; it runs again on the next start",
        feature.name(),
        feature.layout_version()
    )]
    FirstUpgradeFailed {
        /// The feature.
        feature: F,
        /// The action.
        action: String,
        /// The cause.
        #[source]
        source: ActionError,
    },
    /// Storing the first-upgrade marker failed.
    #[error("start-up refused: {source}")]
    Layout {
        /// The cause.
        #[from]
        source: LayoutError,
    },
}
