//! Versioned documents: small persisted state (a JSON document) upgraded eagerly on load.
//!
//! A document carries its version in a field (default `version`); a document without
//! one is taken as the configured base version, as state written before versioning
//! existed. A [`DocumentMigrator`] holds an ordered chain of [`DocumentMigration`]s, each
//! `from -> to`, checked when it is built (no gaps, no duplicates). Loading an older
//! document applies the chain step by step, logging each; a newer one is refused, naming
//! both versions. A step may define the way back, for a downgrade.
//!
//! With a shared [`DocumentStore`], [`DocumentMigrator::load`] migrates under a
//! compare-and-swap: of several processes starting together, exactly one stores the
//! migrated document and the others load it.
//!
//! ```
//! use layout_core::migration::{DocumentMigration, DocumentMigrator, MemoryDocumentStore, LoadOutcome};
//! use serde_json::json;
//!
//! let migrator = DocumentMigrator::builder("scheduler-state")
//!     .base_version(1)
//!     .step(DocumentMigration::new(1, 2, |mut doc| {
//!         doc["queues"] = json!([]);
//!         Ok(doc)
//!     }))
//!     .build()?;
//! assert_eq!(migrator.current_version(), 2);
//!
//! // A document written before versioning existed: taken as version 1.
//! let store = MemoryDocumentStore::with_document(br#"{"jobs": 3}"#.to_vec());
//! let loaded = migrator.load(&store)?.expect("a document is stored");
//! assert!(matches!(loaded.outcome, LoadOutcome::Migrated { from: 1, to: 2, .. }));
//! assert_eq!(loaded.document, json!({"jobs": 3, "queues": [], "version": 2}));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::durable;
use crate::error::StepError;

/// The function of one step, forward or back.
type StepFn = Box<dyn Fn(Value) -> Result<Value, StepError> + Send + Sync>;

/// One step of a document's version chain: `from -> to`, and optionally the way back.
///
/// A step receives the whole document and returns it rewritten; the migrator sets the
/// version field to `to` afterwards (and to `from` after the way back), so a step does not
/// touch it. Steps must be deterministic functions of the document: with a shared store,
/// several processes may compute the same step and only one result is stored.
pub struct DocumentMigration {
    from: u32,
    to: u32,
    name: String,
    forward: StepFn,
    backward: Option<StepFn>,
}

impl DocumentMigration {
    /// A step from version `from` to version `to` (`to > from`; checked by
    /// [`DocumentMigratorBuilder::build`]), named `v{from}->v{to}` unless renamed.
    pub fn new(
        from: u32,
        to: u32,
        forward: impl Fn(Value) -> Result<Value, StepError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            from,
            to,
            name: format!("v{from}->v{to}"),
            forward: Box::new(forward),
            backward: None,
        }
    }

    /// Names the step (used in logs and errors).
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Defines the way back, `to -> from`, used by [`DocumentMigrator::downgrade`].
    #[must_use]
    pub fn with_backward(
        mut self,
        backward: impl Fn(Value) -> Result<Value, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.backward = Some(Box::new(backward));
        self
    }

    /// The version the step starts from.
    pub fn from_version(&self) -> u32 {
        self.from
    }

    /// The version it produces.
    pub fn to_version(&self) -> u32 {
        self.to
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it defines the way back.
    pub fn has_backward(&self) -> bool {
        self.backward.is_some()
    }
}

impl fmt::Debug for DocumentMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentMigration")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("name", &self.name)
            .field("backward", &self.backward.is_some())
            .finish_non_exhaustive()
    }
}

/// A problem with a chain of document migrations, found when it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainProblem {
    /// A step whose target is not above its start.
    NotForward {
        /// The step.
        step: String,
        /// Its start.
        from: u32,
        /// Its target.
        to: u32,
    },
    /// Two steps start from the same version.
    Duplicate {
        /// The version.
        from: u32,
        /// The first step.
        first: String,
        /// The second.
        second: String,
    },
    /// A step starts below the base version: it could never run.
    BelowBase {
        /// The step.
        step: String,
        /// Its start.
        from: u32,
        /// The base version.
        base: u32,
    },
    /// No step leads from `from` to the next step's start.
    Gap {
        /// The version nothing leaves.
        from: u32,
        /// The next version a step starts from.
        next: u32,
    },
    /// A step starts inside the range an earlier step already covers.
    Overlap {
        /// The step.
        step: String,
        /// Its start.
        from: u32,
        /// The earlier step.
        earlier: String,
        /// The earlier step's target.
        earlier_to: u32,
    },
    /// The version field's name is empty.
    EmptyVersionField,
}

impl fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotForward { step, from, to } => write!(
                f,
                "step {step} goes from version {from} to {to}: a step must go forward"
            ),
            Self::Duplicate {
                from,
                first,
                second,
            } => write!(
                f,
                "two steps start from version {from}: {first} and {second}; merge them"
            ),
            Self::BelowBase { step, from, base } => write!(
                f,
                "step {step} starts from version {from}, below the base version {base}: it \
                 would never run"
            ),
            Self::Gap { from, next } => write!(
                f,
                "gap in the chain: no step leaves version {from} (the next step starts from \
                 {next})"
            ),
            Self::Overlap {
                step,
                from,
                earlier,
                earlier_to,
            } => write!(
                f,
                "step {step} starts from version {from}, which step {earlier} skips (it goes \
                 to {earlier_to})"
            ),
            Self::EmptyVersionField => f.write_str("the version field's name is empty"),
        }
    }
}

/// Every problem of a chain of document migrations, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document migrations of {document}: {}", list(.problems))]
pub struct ChainError {
    /// The document kind.
    pub document: String,
    /// The problems.
    pub problems: Vec<ChainProblem>,
}

fn list(problems: &[ChainProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

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

/// One applied step, as reported by [`Migrated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedStep {
    /// The step's name.
    pub name: String,
    /// The version before.
    pub from: u32,
    /// The version after.
    pub to: u32,
}

/// A document after [`DocumentMigrator::upgrade`] or [`DocumentMigrator::downgrade`].
#[derive(Debug, Clone, PartialEq)]
pub struct Migrated {
    /// The document, with its version field set.
    pub document: Value,
    /// Its version before.
    pub from: u32,
    /// Its version now.
    pub to: u32,
    /// The steps applied, in order (empty when it was already at the version).
    pub steps: Vec<AppliedStep>,
}

impl Migrated {
    /// Whether any step was applied.
    pub fn changed(&self) -> bool {
        !self.steps.is_empty()
    }
}

/// Builds a [`DocumentMigrator`]; see [`DocumentMigrator::builder`].
#[derive(Debug)]
pub struct DocumentMigratorBuilder {
    document: String,
    version_field: String,
    base_version: u32,
    steps: Vec<DocumentMigration>,
}

impl DocumentMigratorBuilder {
    /// The name of the version field (default `version`).
    #[must_use]
    pub fn version_field(mut self, field: impl Into<String>) -> Self {
        self.version_field = field.into();
        self
    }

    /// The version of a document without a version field, and the oldest the chain
    /// migrates from (default 0).
    #[must_use]
    pub fn base_version(mut self, version: u32) -> Self {
        self.base_version = version;
        self
    }

    /// Adds a step. Steps may be added in any order; [`build`](Self::build) orders and
    /// checks them.
    #[must_use]
    pub fn step(mut self, step: DocumentMigration) -> Self {
        self.steps.push(step);
        self
    }

    /// Adds a forward-only step `from -> to`.
    #[must_use]
    pub fn migration(
        self,
        from: u32,
        to: u32,
        forward: impl Fn(Value) -> Result<Value, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.step(DocumentMigration::new(from, to, forward))
    }

    /// Checks the chain: every step goes forward, no two start from the same version,
    /// none starts below the base, and the steps link from the base version without a gap
    /// or an overlap. Reports every problem at once.
    pub fn build(self) -> Result<DocumentMigrator, ChainError> {
        let Self {
            document,
            version_field,
            base_version,
            mut steps,
        } = self;
        let mut problems = Vec::new();
        if version_field.is_empty() {
            problems.push(ChainProblem::EmptyVersionField);
        }
        for s in &steps {
            if s.to <= s.from {
                problems.push(ChainProblem::NotForward {
                    step: s.name.clone(),
                    from: s.from,
                    to: s.to,
                });
            }
            if s.from < base_version {
                problems.push(ChainProblem::BelowBase {
                    step: s.name.clone(),
                    from: s.from,
                    base: base_version,
                });
            }
        }
        steps.sort_by_key(|s| s.from);
        for pair in steps.windows(2) {
            if pair[0].from == pair[1].from {
                problems.push(ChainProblem::Duplicate {
                    from: pair[0].from,
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                });
            }
        }
        if problems.is_empty() {
            let mut expected = base_version;
            let mut previous: Option<&DocumentMigration> = None;
            for s in &steps {
                if s.from > expected {
                    problems.push(ChainProblem::Gap {
                        from: expected,
                        next: s.from,
                    });
                } else if s.from < expected {
                    if let Some(p) = previous {
                        problems.push(ChainProblem::Overlap {
                            step: s.name.clone(),
                            from: s.from,
                            earlier: p.name.clone(),
                            earlier_to: p.to,
                        });
                    }
                }
                expected = expected.max(s.to);
                previous = Some(s);
            }
        }
        if !problems.is_empty() {
            return Err(ChainError { document, problems });
        }
        let current_version = steps.last().map_or(base_version, |s| s.to);
        Ok(DocumentMigrator {
            document,
            version_field,
            base_version,
            current_version,
            steps,
        })
    }
}

/// Upgrades (and, where steps allow, downgrades) versioned JSON documents along a checked
/// chain of steps. See the [module docs](self).
pub struct DocumentMigrator {
    document: String,
    version_field: String,
    base_version: u32,
    current_version: u32,
    steps: Vec<DocumentMigration>,
}

/// How many compare-and-swap conflicts [`DocumentMigrator::load`] tolerates before giving
/// up with [`DocumentError::Contended`].
const MAX_CAS_ATTEMPTS: u32 = 64;

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

    /// The version `document` carries (the base version when it has no version field).
    pub fn version_of(&self, document: &Value) -> Result<u32, DocumentError> {
        let object = document
            .as_object()
            .ok_or_else(|| DocumentError::NotAnObject {
                document: self.document.clone(),
                found: json_type(document),
            })?;
        match object.get(&self.version_field) {
            None => Ok(self.base_version),
            Some(v) => v
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| DocumentError::BadVersion {
                    document: self.document.clone(),
                    field: self.version_field.clone(),
                    found: v.to_string(),
                }),
        }
    }

    /// Upgrades `document` to the current version, applying every step above its
    /// version in order and logging each. A current document is returned unchanged; a
    /// newer one is refused with [`DocumentError::NewerThanSoftware`].
    pub fn upgrade(&self, document: Value) -> Result<Migrated, DocumentError> {
        let from = self.version_of(&document)?;
        if from > self.current_version {
            return Err(DocumentError::NewerThanSoftware {
                document: self.document.clone(),
                found: from,
                supported: self.current_version,
            });
        }
        if from < self.base_version {
            return Err(DocumentError::BelowBase {
                document: self.document.clone(),
                found: from,
                base: self.base_version,
            });
        }
        let mut document = document;
        let mut version = from;
        let mut applied = Vec::new();
        for step in self.steps.iter().filter(|s| s.from >= from) {
            document = (step.forward)(document).map_err(|source| DocumentError::StepFailed {
                document: self.document.clone(),
                step: step.name.clone(),
                from: step.from,
                to: step.to,
                source,
            })?;
            self.set_version(&mut document, step.to, &step.name)?;
            tracing::info!(
                target: "layout_core::migration",
                document = %self.document,
                step = %step.name,
                from = step.from,
                to = step.to,
                "applied document migration step"
            );
            crate::crash_point::hit(CRASH_STEP_APPLIED);
            version = step.to;
            applied.push(AppliedStep {
                name: step.name.clone(),
                from: step.from,
                to: step.to,
            });
        }
        if applied.is_empty() {
            // A document without a version field gets one, so what is stored says it.
            self.set_version(&mut document, version, "stamp")?;
        }
        Ok(Migrated {
            document,
            from,
            to: version,
            steps: applied,
        })
    }

    /// Rewrites `document` for older software: from its version down to `target`,
    /// applying the way back of each step crossed, newest first. Every step crossed must
    /// define one; otherwise nothing is applied and the error names the step
    /// ([`DocumentError::NoWayBack`]).
    pub fn downgrade(&self, document: Value, target: u32) -> Result<Migrated, DocumentError> {
        let from = self.version_of(&document)?;
        if from > self.current_version {
            return Err(DocumentError::NewerThanSoftware {
                document: self.document.clone(),
                found: from,
                supported: self.current_version,
            });
        }
        if target > from || target < self.base_version {
            return Err(DocumentError::BadDowngradeTarget {
                document: self.document.clone(),
                current: from,
                target,
                base: self.base_version,
            });
        }
        let crossed: Vec<&DocumentMigration> = self
            .steps
            .iter()
            .rev()
            .filter(|s| s.from >= target && s.to <= from)
            .collect();
        if let Some(step) = crossed.iter().find(|s| s.backward.is_none()) {
            return Err(DocumentError::NoWayBack {
                document: self.document.clone(),
                step: step.name.clone(),
                from: step.from,
                to: step.to,
                current: from,
            });
        }
        let mut document = document;
        let mut applied = Vec::new();
        for step in crossed {
            let Some(backward) = step.backward.as_ref() else {
                continue;
            };
            document = backward(document).map_err(|source| DocumentError::StepFailed {
                document: self.document.clone(),
                step: format!("{} (way back)", step.name),
                from: step.to,
                to: step.from,
                source,
            })?;
            self.set_version(&mut document, step.from, &step.name)?;
            tracing::info!(
                target: "layout_core::migration",
                document = %self.document,
                step = %step.name,
                from = step.to,
                to = step.from,
                "applied document migration step backwards"
            );
            applied.push(AppliedStep {
                name: step.name.clone(),
                from: step.to,
                to: step.from,
            });
        }
        Ok(Migrated {
            document,
            from,
            to: target,
            steps: applied,
        })
    }

    /// A typed value as a document of the current version.
    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Value, DocumentError> {
        let mut document = serde_json::to_value(value).map_err(|source| DocumentError::Serde {
            document: self.document.clone(),
            operation: "encode",
            source,
        })?;
        self.set_version(&mut document, self.current_version, "encode")?;
        Ok(document)
    }

    /// Upgrades `document` and reads it as a `T`.
    pub fn decode<T: DeserializeOwned>(&self, document: Value) -> Result<T, DocumentError> {
        let migrated = self.upgrade(document)?;
        serde_json::from_value(migrated.document).map_err(|source| DocumentError::Serde {
            document: self.document.clone(),
            operation: "decode",
            source,
        })
    }

    /// Loads the document from `store`, upgrading it if it is older than this software.
    /// `Ok(None)` when nothing is stored.
    ///
    /// An upgraded document is stored back with a compare-and-swap against the revision
    /// it was read at. When another process changed it first, this one reloads: of
    /// several processes starting together, exactly one stores the migrated document
    /// ([`LoadOutcome::Migrated`]) and the others load its result
    /// ([`LoadOutcome::Current`]).
    pub fn load(&self, store: &dyn DocumentStore) -> Result<Option<LoadedDocument>, DocumentError> {
        self.load_inner(store, None::<fn() -> Value>)
    }

    /// Like [`load`](Self::load); when nothing is stored, stores `init()` (stamped with
    /// the current version) under a compare-and-swap and returns it
    /// ([`LoadOutcome::Created`]), or what another process stored first.
    pub fn load_or_init(
        &self,
        store: &dyn DocumentStore,
        init: impl FnOnce() -> Value,
    ) -> Result<LoadedDocument, DocumentError> {
        match self.load_inner(store, Some(init))? {
            Some(loaded) => Ok(loaded),
            None => Err(DocumentError::Store {
                document: self.document.clone(),
                source: DocumentStoreError::Backend {
                    location: store.location(),
                    reason: "the store reported no document after creating one".to_owned(),
                },
            }),
        }
    }

    /// Stores `document` (stamped with the current version) if the stored revision is
    /// still `expected` (`None`: nothing stored). On a conflict, returns
    /// `Ok(CasOutcome::Conflict { .. })` and stores nothing: reload and retry.
    pub fn save(
        &self,
        store: &dyn DocumentStore,
        expected: Option<Revision>,
        document: &Value,
    ) -> Result<CasOutcome, DocumentError> {
        let mut document = document.clone();
        let version = self.version_of(&document)?;
        if version > self.current_version {
            return Err(DocumentError::NewerThanSoftware {
                document: self.document.clone(),
                found: version,
                supported: self.current_version,
            });
        }
        self.set_version(&mut document, self.current_version, "save")?;
        let bytes = to_bytes(&self.document, &document)?;
        store
            .compare_and_swap(expected, &bytes)
            .map_err(|source| self.store_error(source))
    }

    fn load_inner(
        &self,
        store: &dyn DocumentStore,
        mut init: Option<impl FnOnce() -> Value>,
    ) -> Result<Option<LoadedDocument>, DocumentError> {
        let location = store.location();
        for conflicts in 0..MAX_CAS_ATTEMPTS {
            let Some(stored) = store.load().map_err(|e| self.store_error(e))? else {
                let Some(init) = init.take() else {
                    return Ok(None);
                };
                let mut document = init();
                self.set_version(&mut document, self.current_version, "init")?;
                let bytes = to_bytes(&self.document, &document)?;
                crate::crash_point::hit(CRASH_BEFORE_STORE);
                match store
                    .compare_and_swap(None, &bytes)
                    .map_err(|e| self.store_error(e))?
                {
                    CasOutcome::Stored(revision) => {
                        crate::crash_point::hit(CRASH_STORED);
                        tracing::info!(
                            target: "layout_core::migration",
                            document = %self.document,
                            location = %location,
                            version = self.current_version,
                            "created document"
                        );
                        return Ok(Some(LoadedDocument {
                            document,
                            revision,
                            outcome: LoadOutcome::Created {
                                version: self.current_version,
                            },
                            conflicts,
                        }));
                    }
                    CasOutcome::Conflict { .. } => continue,
                }
            };
            let document: Value =
                serde_json::from_slice(&stored.bytes).map_err(|source| DocumentError::Parse {
                    document: self.document.clone(),
                    location: location.clone(),
                    source,
                })?;
            let version = self.version_of(&document)?;
            if version == self.current_version {
                return Ok(Some(LoadedDocument {
                    document,
                    revision: stored.revision,
                    outcome: LoadOutcome::Current { version },
                    conflicts,
                }));
            }
            let migrated = self.upgrade(document)?;
            let bytes = to_bytes(&self.document, &migrated.document)?;
            crate::crash_point::hit(CRASH_BEFORE_STORE);
            match store
                .compare_and_swap(Some(stored.revision), &bytes)
                .map_err(|e| self.store_error(e))?
            {
                CasOutcome::Stored(revision) => {
                    crate::crash_point::hit(CRASH_STORED);
                    tracing::info!(
                        target: "layout_core::migration",
                        document = %self.document,
                        location = %location,
                        from = migrated.from,
                        to = migrated.to,
                        "stored migrated document"
                    );
                    return Ok(Some(LoadedDocument {
                        document: migrated.document,
                        revision,
                        outcome: LoadOutcome::Migrated {
                            from: migrated.from,
                            to: migrated.to,
                            steps: migrated.steps,
                        },
                        conflicts,
                    }));
                }
                CasOutcome::Conflict { .. } => {
                    tracing::info!(
                        target: "layout_core::migration",
                        document = %self.document,
                        location = %location,
                        "another process changed the document first; reloading"
                    );
                }
            }
        }
        Err(DocumentError::Contended {
            document: self.document.clone(),
            location,
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    fn set_version(
        &self,
        document: &mut Value,
        version: u32,
        step: &str,
    ) -> Result<(), DocumentError> {
        let found = json_type(document);
        match document.as_object_mut() {
            Some(object) => {
                object.insert(self.version_field.clone(), Value::from(version));
                Ok(())
            }
            None => Err(DocumentError::StepReturnedNonObject {
                document: self.document.clone(),
                step: step.to_owned(),
                found,
            }),
        }
    }

    fn store_error(&self, source: DocumentStoreError) -> DocumentError {
        DocumentError::Store {
            document: self.document.clone(),
            source,
        }
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

fn to_bytes(document_kind: &str, document: &Value) -> Result<Vec<u8>, DocumentError> {
    let mut bytes = serde_json::to_vec_pretty(document).map_err(|source| DocumentError::Serde {
        document: document_kind.to_owned(),
        operation: "encode",
        source,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// What [`DocumentMigrator::load`] found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDocument {
    /// The document, at the current version.
    pub document: Value,
    /// The stored revision it corresponds to (for a later [`DocumentMigrator::save`]).
    pub revision: Revision,
    /// What happened.
    pub outcome: LoadOutcome,
    /// How many compare-and-swaps this process lost to others while loading.
    pub conflicts: u32,
}

/// What [`DocumentMigrator::load`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The stored document was already at the current version (possibly because another
    /// process migrated it).
    Current {
        /// Its version.
        version: u32,
    },
    /// This process migrated the document and stored the result.
    Migrated {
        /// The version before.
        from: u32,
        /// The version now.
        to: u32,
        /// The steps applied.
        steps: Vec<AppliedStep>,
    },
    /// Nothing was stored; this process stored the initial document.
    Created {
        /// Its version.
        version: u32,
    },
}

/// How long [`SharedDocument::wait_for_change`] sleeps between reads of a store that
/// cannot watch.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What [`SharedDocument::check`] found about the stored document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The stored document is the one this process holds.
    Current,
    /// Another process of a release that writes this process's version (or an older
    /// one) changed it: [`SharedDocument::reload`] to see it (a save would conflict).
    ChangedByPeer {
        /// The revision stored now (`None`: the document was deleted).
        revision: Option<Revision>,
    },
    /// A newer release migrated it to a version this release does not know: this
    /// process's writes are refused ([`DocumentError::MigratedByNewerRelease`]).
    MigratedByNewerRelease {
        /// The version stored now.
        stored_version: u32,
    },
}

/// What the watch of a [`SharedDocument`] has seen since the load.
#[derive(Debug, Default)]
struct FenceState {
    /// The newest change reported.
    latest: Option<DocumentChange>,
    /// Why the watch ended, when it did.
    lost: Option<String>,
}

#[derive(Debug, Default)]
struct Fence {
    state: Mutex<FenceState>,
    changed: Condvar,
}

impl Fence {
    fn record(&self, event: WatchEvent) {
        let mut state = self.state.lock();
        match event {
            WatchEvent::Changed(change) => {
                if state
                    .latest
                    .as_ref()
                    .is_none_or(|l| l.revision < change.revision)
                {
                    state.latest = Some(change);
                }
            }
            WatchEvent::Lost { reason } => state.lost = Some(reason),
        }
        self.changed.notify_all();
    }
}

/// A document loaded from a store shared with other processes, fenced against newer
/// releases: it knows the version it was loaded at, watches the store (where the store
/// can; otherwise it reads the store's revision on every [`check`](Self::check),
/// [`read`](Self::read) and [`save`](Self::save)), and refuses to write once a newer
/// release has migrated the document, with
/// [`DocumentError::MigratedByNewerRelease`] naming both versions, instead of
/// conflicting late or overwriting the newer document.
///
/// Open one with [`DocumentMigrator::open`] or [`DocumentMigrator::open_or_init`] (which
/// migrate under a compare-and-swap as [`DocumentMigrator::load`] does).
///
/// ```
/// use std::sync::Arc;
/// use layout_core::migration::{
///     DocumentError, DocumentMigration, DocumentMigrator, Freshness, MemoryDocumentStore,
/// };
/// use serde_json::json;
///
/// let store = Arc::new(MemoryDocumentStore::with_document(br#"{"version": 1}"#.to_vec()));
/// let old_release = DocumentMigrator::builder("scheduler-state").base_version(1).build()?;
/// let new_release = DocumentMigrator::builder("scheduler-state")
///     .base_version(1)
///     .step(DocumentMigration::new(1, 2, |mut doc| { doc["queues"] = json!([]); Ok(doc) }))
///     .build()?;
///
/// let mut old = old_release.open(store.clone())?.expect("a document is stored");
/// let _new = new_release.open(store.clone())?; // migrates to version 2
/// assert_eq!(old.check()?, Freshness::MigratedByNewerRelease { stored_version: 2 });
/// let refused = old.save(json!({"jobs": 1})).unwrap_err();
/// assert!(matches!(
///     refused,
///     DocumentError::MigratedByNewerRelease { loaded_version: 1, stored_version: 2, .. }
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SharedDocument<'m> {
    migrator: &'m DocumentMigrator,
    store: Arc<dyn DocumentStore>,
    loaded: LoadedDocument,
    fence: Arc<Fence>,
    watch: Option<DocumentWatch>,
}

impl DocumentMigrator {
    /// Loads the document from `store` as [`load`](Self::load) does, and keeps watching
    /// it: the returned handle learns when a newer release migrates it. `Ok(None)` when
    /// nothing is stored.
    pub fn open(
        &self,
        store: Arc<dyn DocumentStore>,
    ) -> Result<Option<SharedDocument<'_>>, DocumentError> {
        match self.load(&*store)? {
            Some(loaded) => self.fenced(store, loaded).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`open`](Self::open); when nothing is stored, stores `init()` as
    /// [`load_or_init`](Self::load_or_init) does.
    pub fn open_or_init(
        &self,
        store: Arc<dyn DocumentStore>,
        init: impl FnOnce() -> Value,
    ) -> Result<SharedDocument<'_>, DocumentError> {
        let loaded = self.load_or_init(&*store, init)?;
        self.fenced(store, loaded)
    }

    fn fenced(
        &self,
        store: Arc<dyn DocumentStore>,
        loaded: LoadedDocument,
    ) -> Result<SharedDocument<'_>, DocumentError> {
        let fence = Arc::new(Fence::default());
        let recorder = Arc::clone(&fence);
        let watch = store
            .watch(
                loaded.revision,
                Box::new(move |event| recorder.record(event)),
            )
            .map_err(|e| self.store_error(e))?;
        Ok(SharedDocument {
            migrator: self,
            store,
            loaded,
            fence,
            watch,
        })
    }
}

impl SharedDocument<'_> {
    /// The document as this process holds it (at the current version of its release).
    pub fn document(&self) -> &Value {
        &self.loaded.document
    }

    /// What the last load found and did, with the revision this process holds.
    pub fn loaded(&self) -> &LoadedDocument {
        &self.loaded
    }

    /// The stored revision this process holds.
    pub fn revision(&self) -> Revision {
        self.loaded.revision
    }

    /// The version this process loaded the document at: its release's current version.
    pub fn loaded_version(&self) -> u32 {
        self.migrator.current_version
    }

    /// Whether the store is watched (otherwise every check reads it).
    pub fn is_watched(&self) -> bool {
        self.watch.is_some() && self.fence.state.lock().lost.is_none()
    }

    /// Whether the stored document is known to differ from this process's, by the watch
    /// (without reading the store; always `false` for a store that cannot watch: use
    /// [`check`](Self::check)).
    pub fn is_stale(&self) -> bool {
        self.fence
            .state
            .lock()
            .latest
            .as_ref()
            .is_some_and(|c| c.revision > self.loaded.revision)
    }

    /// Whether the stored document still is this process's: from the watch when the
    /// store is watched, otherwise by reading the store's revision.
    pub fn check(&self) -> Result<Freshness, DocumentError> {
        let change = if self.is_watched() {
            self.fence
                .state
                .lock()
                .latest
                .clone()
                .filter(|c| c.revision > self.loaded.revision)
        } else {
            self.store
                .load()
                .map_err(|e| self.migrator.store_error(e))?
                .map_or(
                    Some(DocumentChange {
                        revision: self.loaded.revision,
                        bytes: None,
                    }),
                    |stored| {
                        (stored.revision != self.loaded.revision).then_some(DocumentChange {
                            revision: stored.revision,
                            bytes: Some(stored.bytes),
                        })
                    },
                )
        };
        let Some(change) = change else {
            return Ok(Freshness::Current);
        };
        let Some(bytes) = change.bytes else {
            return Ok(Freshness::ChangedByPeer { revision: None });
        };
        let stored_version = self.stored_version(&bytes)?;
        if stored_version > self.migrator.current_version {
            Ok(Freshness::MigratedByNewerRelease { stored_version })
        } else {
            Ok(Freshness::ChangedByPeer {
                revision: Some(change.revision),
            })
        }
    }

    /// Waits until the stored document differs from this process's (or `bound` passes,
    /// then returns [`Freshness::Current`]). A watched store wakes the wait when a change
    /// arrives; one that cannot watch is read every 50 ms.
    pub fn wait_for_change(&self, bound: Duration) -> Result<Freshness, DocumentError> {
        let deadline = Instant::now() + bound;
        loop {
            let freshness = self.check()?;
            if freshness != Freshness::Current {
                return Ok(freshness);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Freshness::Current);
            }
            let wait = (deadline - now).min(POLL_INTERVAL);
            if self.is_watched() {
                let mut state = self.fence.state.lock();
                let changed = state
                    .latest
                    .as_ref()
                    .is_some_and(|c| c.revision > self.loaded.revision);
                if !changed && state.lost.is_none() {
                    let _ = self.fence.changed.wait_for(&mut state, deadline - now);
                }
            } else {
                std::thread::sleep(wait);
            }
        }
    }

    /// The stored document, after a [`check`](Self::check): this process's when current,
    /// reloaded when a peer changed it, and
    /// [`DocumentError::MigratedByNewerRelease`] when a newer release migrated it.
    pub fn read(&mut self) -> Result<&Value, DocumentError> {
        match self.check()? {
            Freshness::Current => {}
            Freshness::ChangedByPeer { .. } => self.reload()?,
            Freshness::MigratedByNewerRelease { stored_version } => {
                return Err(self.refusal(stored_version));
            }
        }
        Ok(&self.loaded.document)
    }

    /// Loads the stored document again (migrating it if a peer stored an older one). A
    /// document of a newer release is refused
    /// ([`DocumentError::MigratedByNewerRelease`]).
    pub fn reload(&mut self) -> Result<(), DocumentError> {
        match self.migrator.load(&*self.store) {
            Ok(Some(loaded)) => {
                self.loaded = loaded;
                Ok(())
            }
            Ok(None) => Err(DocumentError::Store {
                document: self.migrator.document.clone(),
                source: DocumentStoreError::Backend {
                    location: self.store.location(),
                    reason: "the document was deleted".to_owned(),
                },
            }),
            Err(DocumentError::NewerThanSoftware { found, .. }) => Err(self.refusal(found)),
            Err(e) => Err(e),
        }
    }

    /// Stores `document` (stamped with this release's version) if the stored document is
    /// still the one this process holds, and holds it from then on.
    ///
    /// Refused with [`DocumentError::MigratedByNewerRelease`] when a newer release
    /// migrated the document (known from the watch, or by reading the store first when
    /// it cannot watch, or from the conflict when the migration raced this write).
    /// `Ok(CasOutcome::Conflict { .. })` when a peer of this release changed it first:
    /// [`reload`](Self::reload) and retry.
    pub fn save(&mut self, document: Value) -> Result<CasOutcome, DocumentError> {
        if let Freshness::MigratedByNewerRelease { stored_version } = self.check()? {
            return Err(self.refusal(stored_version));
        }
        let outcome = self
            .migrator
            .save(&*self.store, Some(self.loaded.revision), &document)?;
        match outcome {
            CasOutcome::Stored(revision) => {
                let mut document = document;
                self.migrator
                    .set_version(&mut document, self.migrator.current_version, "save")?;
                self.loaded = LoadedDocument {
                    document,
                    revision,
                    outcome: LoadOutcome::Current {
                        version: self.migrator.current_version,
                    },
                    conflicts: 0,
                };
            }
            CasOutcome::Conflict { .. } => {
                if let Some(stored) = self
                    .store
                    .load()
                    .map_err(|e| self.migrator.store_error(e))?
                {
                    let stored_version = self.stored_version(&stored.bytes)?;
                    if stored_version > self.migrator.current_version {
                        return Err(self.refusal(stored_version));
                    }
                }
            }
        }
        Ok(outcome)
    }

    fn stored_version(&self, bytes: &[u8]) -> Result<u32, DocumentError> {
        let document: Value =
            serde_json::from_slice(bytes).map_err(|source| DocumentError::Parse {
                document: self.migrator.document.clone(),
                location: self.store.location(),
                source,
            })?;
        self.migrator.version_of(&document)
    }

    fn refusal(&self, stored_version: u32) -> DocumentError {
        tracing::warn!(
            target: "layout_core::migration",
            document = %self.migrator.document,
            location = %self.store.location(),
            loaded_version = self.migrator.current_version,
            stored_version,
            "a newer release migrated the shared document; refusing this process's write"
        );
        DocumentError::MigratedByNewerRelease {
            document: self.migrator.document.clone(),
            location: self.store.location(),
            loaded_version: self.migrator.current_version,
            stored_version,
            our_version: self.migrator.current_version,
        }
    }
}

impl fmt::Debug for SharedDocument<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedDocument")
            .field("document", &self.migrator.document)
            .field("location", &self.store.location())
            .field("revision", &self.loaded.revision)
            .field("watched", &self.is_watched())
            .finish_non_exhaustive()
    }
}

/// The revision of a stored document: changes whenever its content does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(pub u64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A stored document and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocument {
    /// The revision.
    pub revision: Revision,
    /// The bytes (JSON).
    pub bytes: Vec<u8>,
}

/// The result of a [`DocumentStore::compare_and_swap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// Stored; the new revision.
    Stored(Revision),
    /// The stored revision was not the expected one; nothing was stored.
    Conflict {
        /// The revision stored now (`None`: nothing stored).
        current: Option<Revision>,
    },
}

/// A failure of a [`DocumentStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentStoreError {
    /// An I/O operation failed.
    #[error("document store at {location}: {operation} failed: {source}")]
    Io {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The backend failed (a remote store, a broken invariant).
    #[error("document store at {location}: {reason}")]
    Backend {
        /// Where.
        location: String,
        /// What went wrong.
        reason: String,
    },
}

/// Where one versioned document lives: load with a revision, store with a
/// compare-and-swap.
///
/// The contract fits etcd's transactions: the revision is the key's modification
/// revision, and `compare_and_swap(None, ..)` is "create if absent".
/// - [`load`](Self::load) returns `Ok(None)` only when nothing was ever stored.
/// - [`compare_and_swap`](Self::compare_and_swap) stores `bytes` atomically and durably
///   if and only if the stored revision is `expected` (`None`: nothing stored), and
///   otherwise stores nothing and reports the current revision. It is linearizable with
///   other calls on the same store, from any process.
pub trait DocumentStore: Send + Sync + fmt::Debug {
    /// Where the document lives, for messages.
    fn location(&self) -> String;

    /// The stored document and its revision; `Ok(None)` when none was ever stored.
    fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError>;

    /// Stores `bytes` if the stored revision is `expected`.
    fn compare_and_swap(
        &self,
        expected: Option<Revision>,
        bytes: &[u8],
    ) -> Result<CasOutcome, DocumentStoreError>;

    /// Starts watching the document: `on_event` is called with every change stored
    /// after revision `after` (by any process), from a thread of the store's, until the
    /// returned [`DocumentWatch`] is dropped, or once with [`WatchEvent::Lost`] when the
    /// watch ends on its own. A store whose revisions do not increase (the file store's
    /// are digests) must not offer one.
    ///
    /// `Ok(None)` (the default): the store cannot watch; a [`SharedDocument`] then reads
    /// the store on every check instead.
    fn watch(
        &self,
        after: Revision,
        on_event: WatchCallback,
    ) -> Result<Option<DocumentWatch>, DocumentStoreError> {
        let _ = (after, on_event);
        Ok(None)
    }
}

/// What a [`DocumentStore::watch`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The document changed.
    Changed(DocumentChange),
    /// The watch ended (the connection broke, the history it needed was compacted); no
    /// further event follows.
    Lost {
        /// Why.
        reason: String,
    },
}

/// One change of a watched document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentChange {
    /// The store's revision at the change (increasing along a watch).
    pub revision: Revision,
    /// The bytes stored; `None` when the document was deleted.
    pub bytes: Option<Vec<u8>>,
}

/// The callback of a [`DocumentStore::watch`].
pub type WatchCallback = Box<dyn Fn(WatchEvent) + Send + Sync>;

/// A running watch of a document; dropping it stops the watch.
pub struct DocumentWatch {
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl DocumentWatch {
    /// A watch that `stop` ends (called once, on drop).
    pub fn new(stop: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for DocumentWatch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl fmt::Debug for DocumentWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentWatch").finish_non_exhaustive()
    }
}

impl<S: DocumentStore + ?Sized> DocumentStore for Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError> {
        (**self).load()
    }
    fn compare_and_swap(
        &self,
        expected: Option<Revision>,
        bytes: &[u8],
    ) -> Result<CasOutcome, DocumentStoreError> {
        (**self).compare_and_swap(expected, bytes)
    }
    fn watch(
        &self,
        after: Revision,
        on_event: WatchCallback,
    ) -> Result<Option<DocumentWatch>, DocumentStoreError> {
        (**self).watch(after, on_event)
    }
}

/// A document kept in memory, shared by clones (for tests and single-process use).
/// Revisions count up from 1.
#[derive(Debug, Clone, Default)]
pub struct MemoryDocumentStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Default)]
struct MemoryInner {
    revision: u64,
    bytes: Option<Vec<u8>>,
    next_watch: u64,
    watchers: Vec<(u64, Arc<WatchCallback>)>,
}

impl fmt::Debug for MemoryInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryInner")
            .field("revision", &self.revision)
            .field("bytes", &self.bytes.as_ref().map(Vec::len))
            .field("watchers", &self.watchers.len())
            .finish_non_exhaustive()
    }
}

impl MemoryDocumentStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `bytes` at revision 1.
    pub fn with_document(bytes: Vec<u8>) -> Self {
        let store = Self::new();
        {
            let mut inner = store.inner.lock();
            inner.revision = 1;
            inner.bytes = Some(bytes);
        }
        store
    }

    /// The stored bytes, if any.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        self.inner.lock().bytes.clone()
    }
}

impl DocumentStore for MemoryDocumentStore {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError> {
        let inner = self.inner.lock();
        Ok(inner.bytes.as_ref().map(|bytes| StoredDocument {
            revision: Revision(inner.revision),
            bytes: bytes.clone(),
        }))
    }

    fn compare_and_swap(
        &self,
        expected: Option<Revision>,
        bytes: &[u8],
    ) -> Result<CasOutcome, DocumentStoreError> {
        let (revision, watchers) = {
            let mut inner = self.inner.lock();
            let current = inner.bytes.as_ref().map(|_| Revision(inner.revision));
            if current != expected {
                return Ok(CasOutcome::Conflict { current });
            }
            inner.revision += 1;
            inner.bytes = Some(bytes.to_vec());
            let watchers: Vec<_> = inner.watchers.iter().map(|(_, w)| Arc::clone(w)).collect();
            (Revision(inner.revision), watchers)
        };
        // Called outside the lock (a callback may read the store), in the writer's thread,
        // so a watcher has seen the change when the write returns.
        for watcher in watchers {
            watcher(WatchEvent::Changed(DocumentChange {
                revision,
                bytes: Some(bytes.to_vec()),
            }));
        }
        Ok(CasOutcome::Stored(revision))
    }

    fn watch(
        &self,
        after: Revision,
        on_event: WatchCallback,
    ) -> Result<Option<DocumentWatch>, DocumentStoreError> {
        let on_event = Arc::new(on_event);
        let (id, missed) = {
            let mut inner = self.inner.lock();
            inner.next_watch += 1;
            let id = inner.next_watch;
            inner.watchers.push((id, Arc::clone(&on_event)));
            let missed = (inner.revision > after.0).then(|| DocumentChange {
                revision: Revision(inner.revision),
                bytes: inner.bytes.clone(),
            });
            (id, missed)
        };
        if let Some(change) = missed {
            on_event(WatchEvent::Changed(change));
        }
        let inner: Weak<Mutex<MemoryInner>> = Arc::downgrade(&self.inner);
        Ok(Some(DocumentWatch::new(move || {
            if let Some(inner) = inner.upgrade() {
                inner.lock().watchers.retain(|(w, _)| *w != id);
            }
        })))
    }
}

/// A document in a file, shared by every process that opens the same path.
///
/// Loads read the file (replaced atomically, so never torn). A compare-and-swap takes an
/// exclusive lock on a lock file beside it (`<name>.lock`, via [`std::fs::File::lock`]),
/// compares, and replaces the document with [`durable::replace`]
/// (a temporary file created exclusively in the same directory, fsynced, renamed over the
/// document, the directory fsynced); temporary files a crashed writer left are removed
/// under the lock. The file holds the document's bytes as they are (other tools and
/// earlier releases read it). The revision is a 64-bit digest of the content (the first
/// 8 bytes of its SHA-256), so it needs no extra state; two equal contents have the same
/// revision, which is harmless for a compare-and-swap of whole documents. It is never
/// stored: each process computes it from the bytes it reads.
///
/// ```
/// use layout_core::migration::{CasOutcome, DocumentStore, FileDocumentStore};
///
/// let dir = tempfile::tempdir()?;
/// let store = FileDocumentStore::new(dir.path().join("state.json"));
/// assert!(store.load()?.is_none());
/// let CasOutcome::Stored(rev) = store.compare_and_swap(None, b"{}")? else { panic!() };
/// // A stale writer loses.
/// assert!(matches!(store.compare_and_swap(None, b"{}")?, CasOutcome::Conflict { current: Some(r) } if r == rev));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileDocumentStore {
    path: PathBuf,
    lock_path: PathBuf,
}

impl FileDocumentStore {
    /// The document at `path` (its directory is created on the first store).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = path
            .file_name()
            .map_or_else(|| "document".into(), |n| n.to_string_lossy().into_owned());
        let lock_path = path.with_file_name(format!("{name}.lock"));
        Self { path, lock_path }
    }

    /// The document's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's path.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    fn io(&self, operation: &'static str, source: io::Error) -> DocumentStoreError {
        DocumentStoreError::Io {
            location: self.location(),
            operation,
            source,
        }
    }

    fn durable(&self, e: durable::Error) -> DocumentStoreError {
        self.io(e.step().as_str(), e.into_io_error())
    }

    fn read(&self) -> Result<Option<Vec<u8>>, DocumentStoreError> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read", e)),
        }
    }
}

impl DocumentStore for FileDocumentStore {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError> {
        Ok(self.read()?.map(|bytes| StoredDocument {
            revision: digest(&bytes),
            bytes,
        }))
    }

    fn compare_and_swap(
        &self,
        expected: Option<Revision>,
        bytes: &[u8],
    ) -> Result<CasOutcome, DocumentStoreError> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        fs::create_dir_all(dir).map_err(|e| self.io("create directory", e))?;
        let lock = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.lock_path)
            .map_err(|e| self.io("open lock file", e))?;
        lock.lock().map_err(|e| self.io("lock", e))?;
        // The lock is released when `lock` is dropped (closed), also on an error.
        let current = self.read()?.map(|b| digest(&b));
        if current != expected {
            return Ok(CasOutcome::Conflict { current });
        }
        // Writers are serialized by the lock: no temporary file is in use now.
        for temp in durable::remove_leftover_temp_files(&self.path).map_err(|e| self.durable(e))? {
            tracing::warn!(
                location = %self.location(),
                temp = %temp.display(),
                "removed a temporary document file left by an interrupted write"
            );
        }
        durable::replace(&self.path, bytes).map_err(|e| self.durable(e))?;
        drop(lock);
        Ok(CasOutcome::Stored(digest(bytes)))
    }
}

/// The revision of `bytes`: the first 8 bytes of their SHA-256.
fn digest(bytes: &[u8]) -> Revision {
    let hash = Sha256::digest(bytes);
    let mut first = [0; 8];
    first.copy_from_slice(&hash[..8]);
    Revision(u64::from_be_bytes(first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digest_differs_for_different_content() {
        assert_ne!(digest(b"{}"), digest(b"{} "));
        assert_eq!(digest(b"abc"), digest(b"abc"));
    }

    #[test]
    fn a_document_without_a_version_is_the_base_version() {
        let m = DocumentMigrator::builder("d")
            .base_version(3)
            .build()
            .unwrap();
        assert_eq!(m.version_of(&json!({})).unwrap(), 3);
        assert!(matches!(
            m.version_of(&json!({"version": "x"})),
            Err(DocumentError::BadVersion { .. })
        ));
        assert!(matches!(
            m.version_of(&json!([1])),
            Err(DocumentError::NotAnObject { found: "array", .. })
        ));
    }
}
