//! A document shared with other processes, fenced against newer releases: it watches the
//! store and refuses to write once a newer release has migrated the document.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::Value;

use super::{
    DocumentCasOutcome, DocumentChange, DocumentError, DocumentMigrator, DocumentStore,
    DocumentStoreError, DocumentWatch, LoadOutcome, LoadedDocument, Revision, WatchEvent,
};

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
    /// `Ok(DocumentCasOutcome::Conflict { .. })` when a peer of this release changed it first:
    /// [`reload`](Self::reload) and retry.
    pub fn save(&mut self, document: Value) -> Result<DocumentCasOutcome, DocumentError> {
        if let Freshness::MigratedByNewerRelease { stored_version } = self.check()? {
            return Err(self.refusal(stored_version));
        }
        let outcome = self
            .migrator
            .save(&*self.store, Some(self.loaded.revision), &document)?;
        match outcome {
            DocumentCasOutcome::Stored(revision) => {
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
            DocumentCasOutcome::Conflict { .. } => {
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
