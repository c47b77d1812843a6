//! [`FileDocumentStore`]: a document in a file, shared by the processes that open it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{DocumentCasOutcome, DocumentStore, DocumentStoreError, Revision, StoredDocument};
use crate::durable;

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
/// use layout_core::migration::{DocumentCasOutcome, DocumentStore, FileDocumentStore};
///
/// let dir = tempfile::tempdir()?;
/// let store = FileDocumentStore::new(dir.path().join("state.json"));
/// assert!(store.load()?.is_none());
/// let DocumentCasOutcome::Stored(rev) = store.compare_and_swap(None, b"{}")? else { panic!() };
/// // A stale writer loses.
/// assert!(matches!(store.compare_and_swap(None, b"{}")?, DocumentCasOutcome::Conflict { current: Some(r) } if r == rev));
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
    ) -> Result<DocumentCasOutcome, DocumentStoreError> {
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
            return Ok(DocumentCasOutcome::Conflict { current });
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
        Ok(DocumentCasOutcome::Stored(digest(bytes)))
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

    #[test]
    fn digest_differs_for_different_content() {
        assert_ne!(digest(b"{}"), digest(b"{} "));
        assert_eq!(digest(b"abc"), digest(b"abc"));
    }
}
