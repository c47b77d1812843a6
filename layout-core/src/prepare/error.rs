//! Why a write or a prepare was refused: [`WriteRejected`], [`MarkerProblem`],
//! [`PrepareError`].

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::state::{PrepareState, PrepareStep};
use super::{REQUEST_CANCEL_PREPARE, REQUEST_PREPARE};
use crate::error::LayoutError;

/// A write refused because the component's write gate is up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Cannot apply write request {request} when {component} is in prepare mode ({state}). \
     Only {REQUEST_PREPARE} and {REQUEST_CANCEL_PREPARE} are accepted; cancel prepare to \
     accept writes again"
)]
#[non_exhaustive]
pub struct WriteRejected {
    /// The request refused.
    pub request: String,
    /// The component.
    pub component: String,
    /// The prepare state when it was refused.
    pub state: PrepareState,
}

/// What is wrong with a prepare marker found at restore. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MarkerProblem {
    /// A marker is expected but absent.
    #[error(
        "the prepare marker is missing at {location}, but {expected_by} records prepare index \
         {index}; prepare did not finish or the marker was removed"
    )]
    Missing {
        /// Where the marker was looked for.
        location: String,
        /// What says there should be one.
        expected_by: String,
        /// The index that record holds.
        index: u64,
    },
    /// The marker file is empty.
    #[error("the prepare marker file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The marker file does not hold a decimal log index.
    #[error("the prepare marker file {} holds {content:?}, not a log index", path.display())]
    Garbage {
        /// The file.
        path: PathBuf,
        /// What it holds (at most 64 characters of it).
        content: String,
    },
    /// The marker file cannot be read.
    #[error("the prepare marker file {} cannot be read: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The marker file exists but `VERSION` records no prepare.
    #[error(
        "the prepare marker file {} holds index {index}, but the VERSION file at {location} \
         records no prepare",
        path.display()
    )]
    Orphaned {
        /// The file.
        path: PathBuf,
        /// The index it holds.
        index: u64,
        /// The VERSION file.
        location: String,
    },
    /// Two records of the prepare index disagree.
    #[error("the prepare marker says index {marker} but {other_source} says {other}")]
    Mismatch {
        /// The index in `VERSION`.
        marker: u64,
        /// The other record's index.
        other: u64,
        /// The other record (the marker file, the component's own record).
        other_source: String,
    },
    /// The marker is above what the component has: its snapshot or its applied log do not
    /// reach the prepare index.
    #[error(
        "the prepare marker says index {marker}, above the component's own record (last \
         snapshot index {last_snapshot_index}, applied index {applied_index})"
    )]
    TooHigh {
        /// The marker's index.
        marker: u64,
        /// The component's last snapshot index.
        last_snapshot_index: u64,
        /// The component's applied index.
        applied_index: u64,
    },
}

/// An error of the [`PrepareController`](crate::PrepareController).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// A prepare step failed; prepare was cancelled (the gate is open again, no marker).
    #[error(
        "prepare failed at step {step} (prepare index {index}): {source}; prepare was \
         cancelled and the component accepts writes again"
    )]
    StepFailed {
        /// The step.
        step: PrepareStep,
        /// The prepare index being prepared.
        index: u64,
        /// The cause.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The log was not applied and flushed through the prepare index in time; prepare
    /// was cancelled.
    #[error(
        "prepare failed at step {step}: the log was not applied and flushed through prepare \
         index {index} within {timeout:?} (applied index {applied}, flushed index {flushed}); \
         prepare was cancelled and the component accepts writes again",
        step = PrepareStep::WaitForApply
    )]
    Timeout {
        /// The prepare index.
        index: u64,
        /// The applied index at the deadline.
        applied: u64,
        /// The highest flushed index seen.
        flushed: u64,
        /// The configured timeout.
        timeout: Duration,
    },
    /// A prepare step failed and cancelling afterwards failed too: the write gate stays
    /// up; cancel prepare once the cause is fixed.
    #[error(
        "prepare failed at step {step}: {failure}; cancelling it failed too: {cancel}. The \
         write gate stays up; cancel prepare once the cause is fixed"
    )]
    CancelFailed {
        /// The step that failed first.
        step: PrepareStep,
        /// Why it failed.
        failure: String,
        /// Why cancelling failed.
        #[source]
        cancel: Box<PrepareError>,
    },
    /// The prepare was cancelled, or superseded by another prepare, while it ran.
    #[error("prepare to index {index} was cancelled or superseded by another prepare request")]
    Cancelled {
        /// The prepare index it was preparing.
        index: u64,
    },
    /// The marker found at restore is bad; nothing was changed.
    #[error(
        "cannot restore the prepare state of {component}: {problem}. Nothing was changed. \
         Inspect the component; to cancel prepare locally, start it with the Upgrade or \
         Downgrade intent"
    )]
    Marker {
        /// The component.
        component: String,
        /// What is wrong.
        #[source]
        problem: MarkerProblem,
    },
    /// Writing or removing the marker file failed.
    #[error("prepare marker file {}: {operation} failed: {source}", path.display())]
    MarkerFile {
        /// The file.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Storing the marker in the layout state failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

impl PrepareError {
    /// The step that failed, for step failures and timeouts.
    pub fn step(&self) -> Option<PrepareStep> {
        match self {
            Self::StepFailed { step, .. } | Self::CancelFailed { step, .. } => Some(*step),
            Self::Timeout { .. } => Some(PrepareStep::WaitForApply),
            _ => None,
        }
    }
}
