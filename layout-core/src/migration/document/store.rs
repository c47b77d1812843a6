//! Where a document lives: the [`DocumentStore`] trait (load with a revision, store with
//! a compare-and-swap, watch), its revisions, outcomes, errors and watches.

use std::fmt;
use std::io;
use std::sync::Arc;

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
pub enum DocumentCasOutcome {
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
    ) -> Result<DocumentCasOutcome, DocumentStoreError>;

    /// Starts watching the document: `on_event` is called with every change stored
    /// after revision `after` (by any process), from a thread of the store's, until the
    /// returned [`DocumentWatch`] is dropped, or once with [`WatchEvent::Lost`] when the
    /// watch ends on its own. A store whose revisions do not increase (the file store's
    /// are digests) must not offer one.
    ///
    /// `Ok(None)` (the default): the store cannot watch; a [`SharedDocument`] then reads
    /// the store on every check instead.
    ///
    /// [`SharedDocument`]: super::SharedDocument
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
    ) -> Result<DocumentCasOutcome, DocumentStoreError> {
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
