//! The upgrade finalizer: runs the start-up actions, and finalizes layout features one by
//! one, crash-safe and resumable, observable by the operator.
//!
//! | module | what it holds |
//! |---|---|
//! | `request` | [`FinalizeRequest`]: who finalizes, up to where, with which overrides |
//! | `run_state` | the run state behind one lock: status, client, target, progress, messages, attempts, soak start, and who holds the run |
//! | `run` | a finalization run: claim, preflight (gates, ownership, conditions), one feature after the other, the end |
//! | `actions` | running one upgrade action: its span, its attempt, a panic turned into an error, its reports |
//! | `at_startup` | the start-up actions, and resuming an interrupted finalization |
//! | `report` | the status report and the dry run |
//! | `policy` | [`FinalizePolicy`]: by an operator, or automatically after a soak |
//! | `auto` | automatic finalization after the soak, and its veto |
//! | `handle` | [`FinalizeHandle`]: a finalization in a background thread |
//! | `condition` | finalize conditions, gates and [`FinalizeRefusal`] |
//! | `status` | what the finalizer reports |
//! | `error` | [`FinalizeError`], [`PrefinalizeError`] |
//! | `upgrade_finalizer` | [`UpgradeFinalizer`]: what it holds, and how it is built |
//!
//! [`FinalizeRequest`]: crate::FinalizeRequest
//! [`FinalizePolicy`]: crate::FinalizePolicy
//! [`FinalizeError`]: crate::FinalizeError
//! [`UpgradeFinalizer`]: crate::UpgradeFinalizer

// The main path (`UpgradeFinalizer`, `FinalizeRequest`, `FinalizePolicy`,
// `FinalizeError`, `FinalizeOutcome`, `FinalizationStatus`, `StatusReport`) is re-exported
// at the crate root, and only there; this module holds the rest.
mod actions;
mod at_startup;
mod auto;
mod condition;
pub(crate) mod error;
mod handle;
pub(crate) mod policy;
mod report;
pub(crate) mod request;
mod run;
mod run_state;
pub(crate) mod status;
pub(crate) mod upgrade_finalizer;

pub use condition::{
    condition, ConditionOverride, FinalizeCondition, FinalizeGate, FinalizeRefusal, FnCondition,
};
pub use error::{ConditionFailure, PrefinalizeError};
pub use handle::{FinalizeHandle, FinalizeResult};
pub use status::{ConditionCheck, DryRun, PlannedStep, PrefinalizeReport, Progress, StartupResume};

/// The names of the finalizer's failpoints (feature `failpoints`), in the order a
/// finalization passes them. A crash-free finalization of at least one feature passes
/// through exactly this set.
///
/// | name | where |
/// |---|---|
/// | `finalize::started` | preflight passed, before the first feature |
/// | `finalize::before_action` | before a feature's `OnFinalize` action |
/// | `finalize::after_action` | after the action, before anything is stored |
/// | `finalize::before_persist` | just before the new MLV is stored |
/// | `finalize::after_persist` | the new MLV is durable but not yet published |
/// | `finalize::after_publish` | the new MLV is published |
/// | `finalize::done` | after the last feature, before the status says done |
pub const FAILPOINTS: &[&str] = &[
    "finalize::started",
    "finalize::before_action",
    "finalize::after_action",
    "finalize::before_persist",
    crate::manager::FAILPOINT_AFTER_PERSIST,
    "finalize::after_publish",
    "finalize::done",
];

/// The client id automatic finalization records in the history.
pub const AUTO_FINALIZE_CLIENT: &str = "auto-finalize";
