//! Loading a document from a store (migrating it under a compare-and-swap) and saving it.

use serde_json::Value;

use super::{
    AppliedStep, DocumentCasOutcome, DocumentError, DocumentMigrator, DocumentStore,
    DocumentStoreError, Revision, CRASH_BEFORE_STORE, CRASH_STORED,
};

/// How many compare-and-swap conflicts [`DocumentMigrator::load`] tolerates before giving
/// up with [`DocumentError::Contended`].
const MAX_CAS_ATTEMPTS: u32 = 64;

impl DocumentMigrator {
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
    /// `Ok(DocumentCasOutcome::Conflict { .. })` and stores nothing: reload and retry.
    pub fn save(
        &self,
        store: &dyn DocumentStore,
        expected: Option<Revision>,
        document: &Value,
    ) -> Result<DocumentCasOutcome, DocumentError> {
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
                    DocumentCasOutcome::Stored(revision) => {
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
                    DocumentCasOutcome::Conflict { .. } => continue,
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
                DocumentCasOutcome::Stored(revision) => {
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
                DocumentCasOutcome::Conflict { .. } => {
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

    pub(super) fn store_error(&self, source: DocumentStoreError) -> DocumentError {
        DocumentError::Store {
            document: self.document.clone(),
            source,
        }
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
