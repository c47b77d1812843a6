//! Where a migration keeps its high-water mark between runs: the [`HighWaterMarkStore`]
//! trait, in memory and in a file.

use std::path::PathBuf;

use parking_lot::Mutex;

use super::{Cursor, SideBySideError};
use crate::durable;

use std::fmt;

/// Where a migration keeps its high-water mark between runs.
pub trait HighWaterMarkStore: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> String;

    /// The mark saved last, if any.
    fn load(&self) -> Result<Option<Cursor>, SideBySideError>;

    /// Saves `mark` durably (it replaces the previous one).
    fn save(&self, mark: &Cursor) -> Result<(), SideBySideError>;
}

/// A mark in memory: lost with the process (tests, one-shot copies).
#[derive(Debug, Default)]
pub struct MemoryHighWaterMark {
    mark: Mutex<Option<Cursor>>,
}

impl MemoryHighWaterMark {
    /// No mark yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl HighWaterMarkStore for MemoryHighWaterMark {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn load(&self) -> Result<Option<Cursor>, SideBySideError> {
        Ok(self.mark.lock().clone())
    }

    fn save(&self, mark: &Cursor) -> Result<(), SideBySideError> {
        *self.mark.lock() = Some(mark.clone());
        Ok(())
    }
}

/// A mark in a file: JSON in the checksummed envelope of [`durable`], replaced with
/// [`durable::replace`] (a temporary file created exclusively, fsynced, renamed over the
/// mark, the directory fsynced). A damaged mark is refused with the envelope's reason. A
/// mark written by an earlier release (plain JSON, no envelope) is still read.
///
/// ```
/// use layout_core::migration::{Cursor, FileHighWaterMark, HighWaterMarkStore};
///
/// let dir = tempfile::tempdir()?;
/// let mark = FileHighWaterMark::new(dir.path().join("mark"));
/// assert!(mark.load()?.is_none());
/// let cursor = Cursor { updated_ms: 42, id: "user/7".to_owned() };
/// mark.save(&cursor)?;
/// assert_eq!(mark.load()?, Some(cursor));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileHighWaterMark {
    path: PathBuf,
}

impl FileHighWaterMark {
    /// The mark in file `path` (absent: no mark yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn err(&self, operation: &'static str, reason: impl fmt::Display) -> SideBySideError {
        SideBySideError::Mark {
            location: self.path.display().to_string(),
            operation,
            reason: reason.to_string(),
        }
    }
}

impl HighWaterMarkStore for FileHighWaterMark {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Option<Cursor>, SideBySideError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("load", e)),
        };
        // Plain JSON: a mark written by an earlier release.
        let json = if durable::is_envelope(&bytes) {
            durable::decode_envelope(&bytes).map_err(|e| self.err("load", e))?
        } else {
            &bytes
        };
        serde_json::from_slice(json)
            .map(Some)
            .map_err(|e| self.err("load", format!("not a mark: {e}")))
    }

    fn save(&self, mark: &Cursor) -> Result<(), SideBySideError> {
        let json = serde_json::to_vec(mark).map_err(|e| self.err("save", e))?;
        durable::replace(&self.path, &durable::encode_envelope(&json))
            .map_err(|e| self.err("save", e))?;
        Ok(())
    }
}
