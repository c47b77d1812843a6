//! Where prepare stands ([`PrepareState`]) and the step it failed at ([`PrepareStep`]).

use std::fmt;

/// Where a component is in the prepare cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrepareState {
    /// Writes are accepted.
    NotPrepared,
    /// The write gate is up and a prepare is running (or the marker awaits validation).
    GateEnabled,
    /// Prepared: the log is applied, flushed, snapshotted and purged through `index`,
    /// and the marker is persisted.
    Prepared {
        /// The prepare index.
        index: u64,
    },
}

impl PrepareState {
    /// The state in Apache Ozone's words (`NOT_PREPARED`, `PREPARE_GATE_ENABLED`,
    /// `PREPARE_COMPLETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotPrepared => "NOT_PREPARED",
            Self::GateEnabled => "PREPARE_GATE_ENABLED",
            Self::Prepared { .. } => "PREPARE_COMPLETED",
        }
    }

    /// The prepare index, when prepared.
    pub fn index(self) -> Option<u64> {
        match self {
            Self::Prepared { index } => Some(index),
            _ => None,
        }
    }
}

impl fmt::Display for PrepareState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prepared { index } => write!(f, "{} (index {index})", self.as_str()),
            _ => f.write_str(self.as_str()),
        }
    }
}

/// A step of [`PrepareController::prepare`](crate::PrepareController::prepare); a failure names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrepareStep {
    /// Waiting until the log is applied and flushed through the prepare index.
    WaitForApply,
    /// Flushing what was applied.
    Flush,
    /// Taking the snapshot.
    Snapshot,
    /// Purging the log.
    PurgeLog,
    /// Persisting the prepare marker.
    PersistMarker,
}

impl PrepareStep {
    /// The step's name, as in messages (`snapshot`, `purge log`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::WaitForApply => "wait for apply",
            Self::Flush => "flush",
            Self::Snapshot => "snapshot",
            Self::PurgeLog => "purge log",
            Self::PersistMarker => "persist marker",
        }
    }
}

impl fmt::Display for PrepareStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
