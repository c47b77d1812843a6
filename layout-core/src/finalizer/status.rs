//! What the finalizer reports: status, progress, outcome, dry run.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::state::VetoRecord;

/// The finalization status of a component (five states, named as in Apache Ozone's upgrade finalizer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinalizationStatus {
    /// MLV == SLV when this process started: nothing to finalize.
    AlreadyFinalized,
    /// MLV < SLV and no finalization is running (never started, failed, or cancelled).
    FinalizationRequired,
    /// A finalization was accepted and its preflight passed; no feature finalized yet.
    StartingFinalization,
    /// Features are being finalized.
    FinalizationInProgress,
    /// A finalization in this process brought MLV to SLV.
    FinalizationDone,
}

impl FinalizationStatus {
    /// The status in its wire words (`FINALIZATION_REQUIRED`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlreadyFinalized => "ALREADY_FINALIZED",
            Self::FinalizationRequired => "FINALIZATION_REQUIRED",
            Self::StartingFinalization => "STARTING_FINALIZATION",
            Self::FinalizationInProgress => "FINALIZATION_IN_PROGRESS",
            Self::FinalizationDone => "FINALIZATION_DONE",
        }
    }

    /// Whether a finalization is running.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Self::StartingFinalization | Self::FinalizationInProgress
        )
    }
}

impl fmt::Display for FinalizationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a running finalization is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress<F> {
    /// 1-based position of the feature being finalized among those of this run.
    pub feature_index: usize,
    /// How many features this run finalizes.
    pub feature_count: usize,
    /// The feature being finalized.
    pub feature: F,
    /// The name of the action running, if the feature has one.
    pub action: Option<String>,
    /// Units done, as last reported by the action.
    pub done: u64,
    /// Units in all, if the action knows.
    pub total: Option<u64>,
    /// When this run started.
    pub started_at: SystemTime,
    /// How long it has run.
    pub elapsed: Duration,
}

/// A status snapshot, from [`UpgradeFinalizer::report_status`](crate::UpgradeFinalizer::report_status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusReport<F> {
    /// The status.
    pub status: FinalizationStatus,
    /// Whether a finalization run holds the finalizer now, from its pre-flight checks to
    /// its end. The status turns to `StartingFinalization` only once the checks passed, so
    /// a watcher of a run it started follows this rather than the status.
    pub running: bool,
    /// The MLV now.
    pub metadata_layout_version: u32,
    /// The SLV.
    pub software_layout_version: u32,
    /// The version the current or last finalization aims at.
    pub target_version: Option<u32>,
    /// The client the finalization is bound to.
    pub client_id: Option<String>,
    /// Where a running finalization is.
    pub progress: Option<Progress<F>>,
    /// The error that ended the last finalization, if it failed.
    pub last_error: Option<String>,
    /// How many finalization runs ended in an error (a failed action, a refused
    /// pre-flight, a storage error) since the finalizer was built.
    pub failures: u64,
    /// Messages for the reporting client, each delivered once (empty for a read-only
    /// report).
    pub messages: Vec<String>,
    /// The veto on automatic finalization, if one is set.
    pub veto: Option<VetoRecord>,
    /// Whether that veto is in force now (it may have expired).
    pub veto_active: bool,
    /// When automatic finalization will run, under the auto policy, if nothing stops it.
    pub auto_finalize_at: Option<SystemTime>,
    /// Whether the current (or last) run resumed an interrupted finalization at start-up,
    /// without an operator (see
    /// [`UpgradeFinalizer::resume_interrupted`](crate::UpgradeFinalizer::resume_interrupted));
    /// [`client_id`](Self::client_id) is the client that started it.
    pub resumed_at_startup: bool,
    /// How many times the unfinished (or last) finalization was resumed at start-up, as
    /// stored in its record.
    pub resumes: u32,
    /// Who cancelled the unfinished finalization, if an operator did: it is then not
    /// resumed at start-up until an operator finalizes again.
    pub cancelled_by: Option<String>,
}

/// What [`UpgradeFinalizer::resume_interrupted`](crate::UpgradeFinalizer::resume_interrupted)
/// did at start-up.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartupResume<F: crate::LayoutFeature> {
    /// No finalization was interrupted in the middle of an `OnFinalize` action: none is
    /// unfinished, or the last one stopped on a failed action or between features (those
    /// wait for an operator).
    NothingToResume,
    /// The interrupted finalization was cancelled by an operator: not resumed.
    Cancelled {
        /// The client that started it.
        client_id: String,
        /// Who cancelled it.
        cancelled_by: String,
        /// When (ms since the Unix epoch).
        cancelled_at_ms: u64,
    },
    /// It was resumed, as its own client; the run's result.
    Resumed(Result<FinalizeOutcome<F>, crate::FinalizeError<F>>),
}

/// What a successful finalization did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalizeOutcome<F> {
    /// Nothing to do: the MLV was already at (or above) the target.
    AlreadyFinalized {
        /// The MLV.
        metadata_layout_version: u32,
    },
    /// The features were finalized, in order.
    FinalizationDone {
        /// The features finalized by this run.
        finalized: Vec<F>,
        /// The MLV now.
        metadata_layout_version: u32,
    },
}

impl<F> FinalizeOutcome<F> {
    /// The features finalized by this run (empty when already finalized).
    pub fn finalized(&self) -> &[F] {
        match self {
            Self::AlreadyFinalized { .. } => &[],
            Self::FinalizationDone { finalized, .. } => finalized,
        }
    }

    /// The MLV after the run.
    pub fn metadata_layout_version(&self) -> u32 {
        match self {
            Self::AlreadyFinalized {
                metadata_layout_version,
            }
            | Self::FinalizationDone {
                metadata_layout_version,
                ..
            } => *metadata_layout_version,
        }
    }
}

/// One feature a finalization would finalize, from [`dry_run`](crate::UpgradeFinalizer::dry_run).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlannedStep<F> {
    /// The feature.
    pub feature: F,
    /// The name of its `OnFinalize` action, if it has one.
    pub action: Option<String>,
}

/// The result of one finalize condition.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConditionCheck {
    /// The condition.
    pub name: String,
    /// `Err(why)` when it fails.
    pub result: Result<(), super::FinalizeRefusal>,
}

/// What a finalization would do, without doing it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DryRun<F> {
    /// The MLV now.
    pub from_version: u32,
    /// The version it would finalize to.
    pub target_version: u32,
    /// The features, in order, with their actions.
    pub steps: Vec<PlannedStep<F>>,
    /// Every finalize condition and its result now.
    pub conditions: Vec<ConditionCheck>,
    /// Why a finalization would be refused right now regardless of conditions (prepared,
    /// already running), if it would.
    pub blocked_by: Option<String>,
}

/// What [`run_prefinalize_actions`](crate::UpgradeFinalizer::run_prefinalize_actions) ran.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PrefinalizeReport<F> {
    /// Features whose `ValidateInPrefinalize` action ran (and passed).
    pub validated: Vec<F>,
    /// Features whose `OnFirstUpgradeStart` action ran (and passed).
    pub first_upgrade: Vec<F>,
}
