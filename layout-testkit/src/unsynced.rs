//! [`UnsyncedStorage`]: a [`LayoutStorage`] that acknowledges a write before it is durable,
//! the bug a storage layer can have (a missing fsync, a write-back cache that lies). The
//! crash matrix's own negative control: it must catch a component whose storage does this.

use std::fmt;

use layout_core::state::LayoutState;
use layout_core::{LayoutStorage, StorageError};
use parking_lot::Mutex;

/// Wraps a storage so that every write is acknowledged at once but made durable only when
/// the next write comes (or on [`sync`](Self::sync)): the storage is always one
/// acknowledged write behind. Reads see the acknowledged state, so a running component
/// notices nothing; a crash loses the last acknowledged write, and the restarted component
/// finds an older state than the one it published.
///
/// [`StorageKind::Unsynced`](crate::StorageKind::Unsynced) gives every node of an
/// in-process mini cluster a VERSION file behind one: a clean stop syncs it, a crash does
/// not.
///
/// ```
/// use layout_core::state::LayoutState;
/// use layout_core::{LayoutStorage, MemoryStorage};
/// use layout_testkit::UnsyncedStorage;
///
/// let durable = std::sync::Arc::new(MemoryStorage::new());
/// let storage = UnsyncedStorage::new(std::sync::Arc::clone(&durable));
/// let state = LayoutState::new("om", 0, "Initial");
/// storage.store(&state)?;
/// assert_eq!(storage.load()?, Some(state.clone())); // acknowledged
/// assert_eq!(durable.load()?, None); // not durable yet
/// storage.sync()?;
/// assert_eq!(durable.load()?, Some(state));
/// # Ok::<(), layout_core::StorageError>(())
/// ```
pub struct UnsyncedStorage<S: LayoutStorage> {
    inner: S,
    pending: Mutex<Option<LayoutState>>,
}

impl<S: LayoutStorage> UnsyncedStorage<S> {
    /// Wraps `inner`, whose content is what survives a crash.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Mutex::new(None),
        }
    }

    /// Makes the acknowledged write durable (as a clean shutdown would).
    pub fn sync(&self) -> Result<(), StorageError> {
        let mut pending = self.pending.lock();
        if let Some(state) = pending.as_ref() {
            self.inner.store(state)?;
        }
        *pending = None;
        Ok(())
    }
}

impl<S: LayoutStorage> LayoutStorage for UnsyncedStorage<S> {
    fn location(&self) -> String {
        format!(
            "{} (writes acknowledged before they are durable)",
            self.inner.location()
        )
    }

    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        if let Some(state) = self.pending.lock().as_ref() {
            return Ok(Some(state.clone()));
        }
        self.inner.load()
    }

    fn store(&self, state: &LayoutState) -> Result<(), StorageError> {
        let mut pending = self.pending.lock();
        if let Some(previous) = pending.as_ref() {
            self.inner.store(previous)?;
        }
        *pending = Some(state.clone());
        Ok(())
    }
}

impl<S: LayoutStorage> fmt::Debug for UnsyncedStorage<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsyncedStorage")
            .field("inner", &self.inner)
            .field("pending", &self.pending.lock().is_some())
            .finish()
    }
}
