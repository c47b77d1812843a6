//! How a background migration fails, and keys printed in its messages.

use crate::error::{BoxError, StepError};

/// A failure of a background migration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The store failed.
    #[error("migration store at {location}: {operation} failed: {source}")]
    Store {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The stored checkpoint cannot be read.
    #[error(
        "migration {migration}: the checkpoint at {location} is damaged ({reason}); it was \
         left untouched"
    )]
    DamagedCheckpoint {
        /// The migration.
        migration: String,
        /// Where.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The transform failed on a row.
    #[error("migration {migration}: the transform failed on key {key}: {source}")]
    Transform {
        /// The migration.
        migration: String,
        /// The key, printable.
        key: String,
        /// The cause.
        #[source]
        source: StepError,
    },
    /// The transform changed a row's key (a migration keeps keys).
    #[error("migration {migration}: the transform changed key {from} to {to}; keys must stay")]
    TransformChangedKey {
        /// The migration.
        migration: String,
        /// The key before.
        from: String,
        /// The key after.
        to: String,
    },
    /// The migration was cancelled; it resumes from its checkpoint on the next run.
    #[error(
        "migration {migration} was cancelled after {done} rows; it resumes from its checkpoint"
    )]
    Cancelled {
        /// The migration.
        migration: String,
        /// Rows done.
        done: u64,
    },
    /// Another run of the same migration is in progress in this process.
    #[error("migration {migration} is already running")]
    AlreadyRunning {
        /// The migration.
        migration: String,
    },
    /// The checkpoint was removed while the migration ran (a reset).
    #[error(
        "migration {migration}: the checkpoint was removed while it ran (reset); run it again"
    )]
    Reset {
        /// The migration.
        migration: String,
    },
    /// The options (or a live change of them) are invalid.
    #[error("migration {migration}: invalid options: {reason}")]
    InvalidOptions {
        /// The migration.
        migration: String,
        /// Why.
        reason: String,
    },
}

impl MigrationError {
    /// A store failure.
    pub fn store(
        location: impl Into<String>,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Store {
            location: location.into(),
            operation,
            source: source.into(),
        }
    }
}

/// A key, printable: UTF-8 as is, otherwise hex.
pub(crate) fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => {
            use std::fmt::Write as _;
            let mut out = String::from("0x");
            for b in key {
                let _ = write!(out, "{b:02x}");
            }
            out
        }
    }
}
