//! How a side-by-side source, destination or mark store fails.

/// A failure of a side-by-side source, destination or mark store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SideBySideError {
    /// The source failed.
    #[error("source {location}: {operation} failed: {reason}")]
    Source {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The destination failed.
    #[error("destination {location}: {operation} failed: {reason}")]
    Destination {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The high-water mark could not be loaded or saved.
    #[error("high-water mark {location}: {operation} failed: {reason}")]
    Mark {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The options are invalid.
    #[error("side-by-side migration: invalid options: {0}")]
    InvalidOptions(String),
}
