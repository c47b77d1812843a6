//! What a storage of the layout state promises ([`LayoutStorage`]) and how it fails
//! ([`StorageError`]).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use super::format::Damage;
use crate::state::LayoutState;

/// Durable storage of a component's [`LayoutState`].
///
/// Contract:
/// - [`load`](Self::load) returns `Ok(None)` only when nothing was ever stored there; a
///   store that exists but cannot be read is an error, never `None`.
/// - [`store`](Self::store) is atomic and durable: when it returns `Ok`, a crash at any
///   later point leaves exactly the new state; when it fails, the stored state is the old
///   one or the new one, never a mix. It never overwrites a store that `load` reported as
///   damaged (the manager never calls it after such a report).
/// - A store kept outside the process (a file) should refuse to replace a state that
///   changed since it was last loaded or stored, with
///   [`StorageError::ChangedUnderneath`] (as [`FileStorage`](crate::FileStorage) does).
pub trait LayoutStorage: Send + Sync + fmt::Debug {
    /// Where the state lives, for messages (a path, `memory`, a key).
    fn location(&self) -> String;

    /// Reads the stored state; `Ok(None)` when none was ever stored.
    fn load(&self) -> Result<Option<LayoutState>, StorageError>;

    /// Replaces the stored state atomically and durably.
    fn store(&self, state: &LayoutState) -> Result<(), StorageError>;
}

impl<S: LayoutStorage + ?Sized> LayoutStorage for Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        (**self).load()
    }
    fn store(&self, state: &LayoutState) -> Result<(), StorageError> {
        (**self).store(state)
    }
}

impl<S: LayoutStorage + ?Sized> LayoutStorage for Box<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        (**self).load()
    }
    fn store(&self, state: &LayoutState) -> Result<(), StorageError> {
        (**self).store(state)
    }
}

/// A failure to read or write the layout state.
///
/// Every variant names the location. A damaged store is left exactly as it was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The stored state exists but is damaged: torn, truncated, edited by hand, empty.
    #[error(
        "layout state at {location} is damaged: {damage}. It was left untouched; restore it \
         from a backup or a replica, or inspect it with `layoutctl inspect`"
    )]
    Damaged {
        /// Where.
        location: String,
        /// What is wrong.
        damage: Damage,
    },
    /// The state was written in a file format this release does not read.
    #[error(
        "layout state at {location} uses file format {found}, but this release reads only \
         format {supported}; run the release that wrote it"
    )]
    UnsupportedFormat {
        /// Where.
        location: String,
        /// The format version found.
        found: u32,
        /// The format version this release reads.
        supported: u32,
    },
    /// Something other than a regular file sits where the VERSION file belongs.
    #[error("layout state at {location} is a {kind}, not a regular file; move it away")]
    NotAFile {
        /// Where.
        location: String,
        /// What was found (`directory`, `special file`).
        kind: &'static str,
    },
    /// The VERSION file is a symlink whose target does not exist. Never treated as a
    /// missing file (that would turn an existing install into a fresh one).
    #[error(
        "layout state at {location} is a symlink to {target}, which does not exist; \
         restore the target (a missing target is never taken for a fresh install)",
        target = target.display()
    )]
    DanglingSymlink {
        /// Where.
        location: String,
        /// The link's target.
        target: PathBuf,
    },
    /// The stored state changed underneath the running component since it last read or
    /// wrote it (corrupted, deleted, replaced, a symlink planted): nothing was written.
    #[error(
        "layout state at {location} changed since this process last read or wrote it: \
         {change}. Nothing was written, and the metadata layout version was not changed. \
         Find out who changed it (another process, a restore, a hand edit), check it with \
         `layoutctl inspect`, then restart the component so that it reads the file afresh"
    )]
    ChangedUnderneath {
        /// Where.
        location: String,
        /// What changed.
        change: VersionFileChange,
    },
    /// An I/O operation failed.
    #[error("layout state at {location}: {operation} failed: {source}")]
    Io {
        /// Where.
        location: String,
        /// What was being done (`read`, `write temp file`, `fsync directory`, ...).
        operation: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl StorageError {
    /// The location the error is about.
    pub fn location(&self) -> &str {
        match self {
            Self::Damaged { location, .. }
            | Self::UnsupportedFormat { location, .. }
            | Self::NotAFile { location, .. }
            | Self::DanglingSymlink { location, .. }
            | Self::ChangedUnderneath { location, .. }
            | Self::Io { location, .. } => location,
        }
    }
}

/// How the `VERSION` file changed underneath a running component (see
/// [`StorageError::ChangedUnderneath`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionFileChange {
    /// It was deleted (or the file its symlink points at was).
    Deleted,
    /// It did not exist when loaded, and now something is there.
    Created,
    /// Its bytes are not the ones last read or written (corrupted, edited, restored
    /// in place).
    ContentChanged,
    /// Another file was put in its place (another device or inode).
    Replaced,
    /// A symlink was put in its place; it was a regular file when loaded.
    BecameSymlink {
        /// Where the symlink points.
        target: PathBuf,
    },
    /// It was a symlink when loaded and is not one any more.
    NoLongerSymlink,
    /// Its symlink points somewhere else than when loaded.
    SymlinkRetargeted {
        /// Where it pointed.
        was: PathBuf,
        /// Where it points now.
        now: PathBuf,
    },
    /// Something other than a regular file is there now.
    NotAFile {
        /// What (`directory`, `special file`).
        kind: &'static str,
    },
}

impl fmt::Display for VersionFileChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deleted => f.write_str("it was deleted"),
            Self::Created => f.write_str("it did not exist at start-up, and now a file is there"),
            Self::ContentChanged => f.write_str(
                "its content is not what this process last read or wrote (corrupted, edited \
                 or restored in place)",
            ),
            Self::Replaced => f.write_str("another file was put in its place"),
            Self::BecameSymlink { target } => write!(
                f,
                "it was replaced by a symlink to {} (it was a regular file at start-up)",
                target.display()
            ),
            Self::NoLongerSymlink => {
                f.write_str("it was a symlink at start-up and is not one any more")
            }
            Self::SymlinkRetargeted { was, now } => write!(
                f,
                "its symlink pointed to {} at start-up and now points to {}",
                was.display(),
                now.display()
            ),
            Self::NotAFile { kind } => write!(f, "a {kind} is there now"),
        }
    }
}
