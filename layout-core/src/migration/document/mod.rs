//! Versioned documents: small persisted state (a JSON document) upgraded eagerly on load.

// Where things are: `chain` (the steps and the checks of the chain, the builder), `error`
// (DocumentError), `migrator` (upgrade, downgrade, encode, decode), `load` (load and save
// through a store under a compare-and-swap), `store` (the DocumentStore trait, revisions,
// watches), `memory_store`, `file_store`, `shared` (SharedDocument, fenced against newer
// releases). This module holds the migrator itself, its builder's entry and its accessors.

mod chain;
mod error;
mod file_store;
mod load;
mod memory_store;
mod migrator;
mod shared;
mod store;

use std::fmt;

pub use chain::{ChainError, ChainProblem, DocumentMigration, DocumentMigratorBuilder};
pub use error::DocumentError;
pub use file_store::FileDocumentStore;
pub use load::{LoadOutcome, LoadedDocument};
pub use memory_store::MemoryDocumentStore;
pub use migrator::{AppliedStep, Migrated};
pub use shared::{Freshness, SharedDocument};
pub use store::{
    DocumentCasOutcome, DocumentChange, DocumentStore, DocumentStoreError, DocumentWatch, Revision,
    StoredDocument, WatchCallback, WatchEvent,
};

/// Upgrades (and, where steps allow, downgrades) versioned JSON documents along a checked
/// chain of steps. See the the overview below.
///
/// # Overview
///
/// Versioned documents: small persisted state (a JSON document) upgraded eagerly on load.
///
/// A document carries its version in a field (default `version`); a document without
/// one is taken as the configured base version, as state written before versioning
/// existed. A [`DocumentMigrator`] holds an ordered chain of [`DocumentMigration`]s, each
/// `from -> to`, checked when it is built (no gaps, no duplicates). Loading an older
/// document applies the chain step by step, logging each; a newer one is refused, naming
/// both versions. A step may define the way back, for a downgrade.
///
/// With a shared [`DocumentStore`], [`DocumentMigrator::load`] migrates under a
/// compare-and-swap: of several processes starting together, exactly one stores the
/// migrated document and the others load it.
///
/// ```
/// use layout_core::migration::{DocumentMigration, DocumentMigrator, MemoryDocumentStore, LoadOutcome};
/// use serde_json::json;
///
/// let migrator = DocumentMigrator::builder("scheduler-state")
///     .base_version(1)
///     .step(DocumentMigration::new(1, 2, |mut doc| {
///         doc["queues"] = json!([]);
///         Ok(doc)
///     }))
///     .build()?;
/// assert_eq!(migrator.current_version(), 2);
///
/// // A document written before versioning existed: taken as version 1.
/// let store = MemoryDocumentStore::with_document(br#"{"jobs": 3}"#.to_vec());
/// let loaded = migrator.load(&store)?.expect("a document is stored");
/// assert!(matches!(loaded.outcome, LoadOutcome::Migrated { from: 1, to: 2, .. }));
/// assert_eq!(loaded.document, json!({"jobs": 3, "queues": [], "version": 2}));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct DocumentMigrator {
    document: String,
    version_field: String,
    base_version: u32,
    current_version: u32,
    steps: Vec<DocumentMigration>,
}

/// Crash point (see [`crate::crash_point`]): one step of a document's chain was applied
/// in memory (nothing stored yet). Passed once per step, by [`DocumentMigrator::upgrade`]
/// and so by every load that migrates.
pub const CRASH_STEP_APPLIED: &str = "document_migration::step_applied";
/// Crash point: a migrated (or initial) document is about to be stored with a
/// compare-and-swap.
pub const CRASH_BEFORE_STORE: &str = "document_migration::before_store";
/// Crash point: the compare-and-swap stored the migrated (or initial) document; the
/// process has not used it yet.
pub const CRASH_STORED: &str = "document_migration::stored";

/// Every crash point of a document migration, in the order a load passes them.
pub const CRASH_POINTS: &[&str] = &[CRASH_STEP_APPLIED, CRASH_BEFORE_STORE, CRASH_STORED];

impl DocumentMigrator {
    /// A builder for documents of kind `document` (a name used in logs and errors).
    pub fn builder(document: impl Into<String>) -> DocumentMigratorBuilder {
        DocumentMigratorBuilder {
            document: document.into(),
            version_field: "version".to_owned(),
            base_version: 0,
            steps: Vec::new(),
        }
    }

    /// The document kind.
    pub fn document(&self) -> &str {
        &self.document
    }

    /// The version field's name.
    pub fn version_field(&self) -> &str {
        &self.version_field
    }

    /// The version of a document without a version field.
    pub fn base_version(&self) -> u32 {
        self.base_version
    }

    /// The version this software writes: the last step's target (the base version when
    /// there is no step).
    pub fn current_version(&self) -> u32 {
        self.current_version
    }

    /// The steps, ordered.
    pub fn steps(&self) -> &[DocumentMigration] {
        &self.steps
    }
}

impl fmt::Debug for DocumentMigrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentMigrator")
            .field("document", &self.document)
            .field("version_field", &self.version_field)
            .field("base_version", &self.base_version)
            .field("current_version", &self.current_version)
            .field("steps", &self.steps)
            .finish()
    }
}
