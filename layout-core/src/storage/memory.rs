//! In-memory storage for tests, with injectable failures.

use std::collections::VecDeque;
use std::io;

use parking_lot::Mutex;

use crate::state::LayoutState;
use crate::{LayoutStorage, StorageError};

/// How an injected store failure behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFailure {
    /// The store fails before anything is written: the old state stays.
    BeforeWrite,
    /// The new state becomes durable, then the store reports an error anyway (as when a
    /// directory fsync fails after the rename). The caller cannot tell which state won.
    AfterWrite,
}

/// Keeps the layout state in memory. For tests: failures can be injected, and what was
/// stored can be inspected and replaced.
///
/// Share it between manager instances with an `Arc` to simulate a restart:
///
/// ```
/// use std::sync::Arc;
/// use layout_core::{LayoutStorage, MemoryStorage};
/// use layout_core::storage::InjectedFailure;
///
/// let storage = Arc::new(MemoryStorage::new());
/// storage.fail_next_store(InjectedFailure::BeforeWrite);
/// assert!(storage.snapshot().is_none());
/// ```
#[derive(Debug, Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Option<LayoutState>,
    store_failures: VecDeque<InjectedFailure>,
    fail_all_stores: bool,
    load_failures: usize,
    stores: u64,
}

impl MemoryStorage {
    /// Empty storage: nothing stored yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Storage holding `state`.
    pub fn with_state(state: LayoutState) -> Self {
        let storage = Self::new();
        storage.inner.lock().state = Some(state);
        storage
    }

    /// The next store fails as `failure` says (failures queue up in order).
    pub fn fail_next_store(&self, failure: InjectedFailure) {
        self.inner.lock().store_failures.push_back(failure);
    }

    /// While `fail` is true, every store fails before writing.
    pub fn fail_all_stores(&self, fail: bool) {
        self.inner.lock().fail_all_stores = fail;
    }

    /// The next load fails with an I/O error.
    pub fn fail_next_load(&self) {
        self.inner.lock().load_failures += 1;
    }

    /// What is durably stored now.
    pub fn snapshot(&self) -> Option<LayoutState> {
        self.inner.lock().state.clone()
    }

    /// Replaces what is stored (simulates another writer or a hand edit).
    pub fn replace(&self, state: Option<LayoutState>) {
        self.inner.lock().state = state;
    }

    /// How many stores succeeded (or became durable before failing).
    pub fn durable_stores(&self) -> u64 {
        self.inner.lock().stores
    }
}

fn injected(operation: &'static str) -> StorageError {
    StorageError::Io {
        location: "memory".to_owned(),
        operation,
        source: io::Error::other("injected failure"),
    }
}

impl LayoutStorage for MemoryStorage {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        let mut inner = self.inner.lock();
        if inner.load_failures > 0 {
            inner.load_failures -= 1;
            return Err(injected("read"));
        }
        Ok(inner.state.clone())
    }

    fn store(&self, state: &LayoutState) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        if inner.fail_all_stores {
            return Err(injected("write"));
        }
        match inner.store_failures.pop_front() {
            Some(InjectedFailure::BeforeWrite) => Err(injected("write")),
            Some(InjectedFailure::AfterWrite) => {
                inner.state = Some(state.clone());
                inner.stores += 1;
                Err(injected("sync"))
            }
            None => {
                inner.state = Some(state.clone());
                inner.stores += 1;
                Ok(())
            }
        }
    }
}
