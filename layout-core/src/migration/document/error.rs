//! How reading, migrating or storing a versioned document fails.

use super::DocumentStoreError;
use crate::error::StepError;

/// A failure to read, migrate or store a versioned document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// The document is not a JSON object, so it cannot carry a version field.
    #[error("{document}: the document is a JSON {found}, not an object")]
    NotAnObject {
        /// The document kind.
        document: String,
        /// What it is (`array`, `string`, ...).
        found: &'static str,
    },
    /// The version field holds something other than a non-negative integer.
    #[error("{document}: the version field {field:?} holds {found}, not a version number")]
    BadVersion {
        /// The document kind.
        document: String,
        /// The field.
        field: String,
        /// What it holds.
        found: String,
    },
    /// The document was written by newer software.
    #[error(
        "{document}: the stored document has version {found}, newer than version {supported} \
         that this software reads; it was written by a newer release: run that release or a \
         newer one"
    )]
    NewerThanSoftware {
        /// The document kind.
        document: String,
        /// The version stored.
        found: u32,
        /// The newest version this software knows.
        supported: u32,
    },
    /// The document's version is below the chain's base version.
    #[error(
        "{document}: the stored document has version {found}, below the base version {base} \
         this software migrates from"
    )]
    BelowBase {
        /// The document kind.
        document: String,
        /// The version stored.
        found: u32,
        /// The base version.
        base: u32,
    },
    /// A step failed.
    #[error("{document}: migration step {step} (version {from} -> {to}) failed: {source}")]
    StepFailed {
        /// The document kind.
        document: String,
        /// The step.
        step: String,
        /// Its start.
        from: u32,
        /// Its target.
        to: u32,
        /// The cause.
        #[source]
        source: StepError,
    },
    /// A step returned something other than a JSON object.
    #[error("{document}: migration step {step} returned a JSON {found}, not an object")]
    StepReturnedNonObject {
        /// The document kind.
        document: String,
        /// The step.
        step: String,
        /// What it returned.
        found: &'static str,
    },
    /// A downgrade crosses a step that defines no way back.
    #[error(
        "{document}: cannot go back from version {to} to {from}: step {step} defines no way \
         back; the document stays at version {current}"
    )]
    NoWayBack {
        /// The document kind.
        document: String,
        /// The step.
        step: String,
        /// The step's start (where the downgrade wanted to go).
        from: u32,
        /// The step's target.
        to: u32,
        /// The document's version, unchanged.
        current: u32,
    },
    /// A downgrade target outside the chain.
    #[error(
        "{document}: cannot downgrade version {current} to {target}: the target must lie \
         between the base version {base} and the document's version"
    )]
    BadDowngradeTarget {
        /// The document kind.
        document: String,
        /// The document's version.
        current: u32,
        /// The target asked for.
        target: u32,
        /// The base version.
        base: u32,
    },
    /// The stored bytes are not JSON.
    #[error("{document} at {location}: the stored document is not valid JSON: {source}")]
    Parse {
        /// The document kind.
        document: String,
        /// Where it is stored.
        location: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Converting between the document and a typed value failed.
    #[error("{document}: {operation} failed: {source}")]
    Serde {
        /// The document kind.
        document: String,
        /// `encode` or `decode`.
        operation: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The store failed.
    #[error("{document}: {source}")]
    Store {
        /// The document kind.
        document: String,
        /// The cause.
        #[source]
        source: DocumentStoreError,
    },
    /// A newer release migrated the shared document after this process loaded it: the
    /// process runs on state it can no longer write, and its write is refused (see
    /// [`SharedDocument`]).
    ///
    /// [`SharedDocument`]: super::SharedDocument
    #[error(
        "{document} at {location}: a newer release migrated the document to version \
         {stored_version} after this process loaded it at version {loaded_version}; this \
         release writes version {our_version} at most, so the write is refused: stop this \
         process and run the newer release"
    )]
    MigratedByNewerRelease {
        /// The document kind.
        document: String,
        /// Where it is stored.
        location: String,
        /// The version this process loaded (and writes).
        loaded_version: u32,
        /// The version stored now.
        stored_version: u32,
        /// The newest version this release knows.
        our_version: u32,
    },
    /// The document kept changing under this process: every compare-and-swap lost.
    #[error(
        "{document} at {location}: gave up after {attempts} compare-and-swap conflicts; \
         another process keeps changing the document"
    )]
    Contended {
        /// The document kind.
        document: String,
        /// Where it is stored.
        location: String,
        /// How many attempts were made.
        attempts: u32,
    },
}
