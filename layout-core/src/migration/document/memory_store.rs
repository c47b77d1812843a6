//! [`MemoryDocumentStore`]: a document in memory.

use std::fmt;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::{
    DocumentCasOutcome, DocumentChange, DocumentStore, DocumentStoreError, DocumentWatch, Revision,
    StoredDocument, WatchCallback, WatchEvent,
};

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
    ) -> Result<DocumentCasOutcome, DocumentStoreError> {
        let (revision, watchers) = {
            let mut inner = self.inner.lock();
            let current = inner.bytes.as_ref().map(|_| Revision(inner.revision));
            if current != expected {
                return Ok(DocumentCasOutcome::Conflict { current });
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
        Ok(DocumentCasOutcome::Stored(revision))
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
