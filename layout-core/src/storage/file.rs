//! The `VERSION` file in a component's directory.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use super::format::{self, DecodeError};
use super::{LayoutStorage, StorageError};
use crate::state::{LayoutState, FORMAT_VERSION};

/// The name of the layout state file inside a component's directory.
pub const VERSION_FILE_NAME: &str = "VERSION";

const TEMP_FILE_NAME: &str = ".VERSION.tmp";

/// Keeps the layout state in a human-readable, checksummed `VERSION` file.
///
/// Writes are atomic and durable: the new content goes to a temporary file in the same
/// directory, which is fsynced, renamed over `VERSION`, and the directory is fsynced. A
/// crash at any point leaves the old file or the new one. A `VERSION` that is a symlink
/// is followed: the file it points at is replaced, and the link is kept.
///
/// ```
/// use layout_core::{FileStorage, LayoutStorage};
///
/// let dir = tempfile::tempdir()?;
/// let storage = FileStorage::new(dir.path());
/// assert!(storage.load()?.is_none()); // nothing stored yet
/// assert_eq!(storage.path(), dir.path().join("VERSION"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FileStorage {
    dir: PathBuf,
    path: PathBuf,
}

impl FileStorage {
    /// Storage for the component whose directory is `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let path = dir.join(VERSION_FILE_NAME);
        Self { dir, path }
    }

    /// The component's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the `VERSION` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, operation: &'static str, source: io::Error) -> StorageError {
        StorageError::Io {
            location: self.location(),
            operation,
            source,
        }
    }

    /// The regular file that holds the state: `VERSION`, or what it links to.
    fn resolve_target(&self) -> Result<Option<PathBuf>, StorageError> {
        let meta = match fs::symlink_metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("stat", e)),
        };
        let (target, meta) = if meta.file_type().is_symlink() {
            match fs::metadata(&self.path) {
                Ok(target_meta) => {
                    let target = fs::canonicalize(&self.path)
                        .map_err(|e| self.io_error("resolve symlink", e))?;
                    (target, target_meta)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let target = fs::read_link(&self.path).unwrap_or_default();
                    return Err(StorageError::DanglingSymlink {
                        location: self.location(),
                        target,
                    });
                }
                Err(e) => return Err(self.io_error("stat symlink target", e)),
            }
        } else {
            (self.path.clone(), meta)
        };
        if meta.is_dir() {
            return Err(StorageError::NotAFile {
                location: self.location(),
                kind: "directory",
            });
        }
        if !meta.is_file() {
            return Err(StorageError::NotAFile {
                location: self.location(),
                kind: "special file",
            });
        }
        Ok(Some(target))
    }
}

impl LayoutStorage for FileStorage {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        let Some(target) = self.resolve_target()? else {
            return Ok(None);
        };
        let bytes = fs::read(&target).map_err(|e| self.io_error("read", e))?;
        match format::decode(&bytes) {
            Ok(state) => Ok(Some(state)),
            Err(DecodeError::Damaged(damage)) => Err(StorageError::Damaged {
                location: self.location(),
                damage,
            }),
            Err(DecodeError::UnsupportedFormat(found)) => Err(StorageError::UnsupportedFormat {
                location: self.location(),
                found,
                supported: FORMAT_VERSION,
            }),
        }
    }

    fn store(&self, state: &LayoutState) -> Result<(), StorageError> {
        let text = format::encode(state);
        // Replace what VERSION points at, keeping an operator's symlink in place. A
        // damaged or unexpected file type is refused here too: never overwritten.
        let target = if let Some(target) = self.resolve_target()? {
            target
        } else {
            fs::create_dir_all(&self.dir).map_err(|e| self.io_error("create directory", e))?;
            self.path.clone()
        };
        let target_dir = target
            .parent()
            .map_or_else(|| self.dir.clone(), Path::to_path_buf);
        let temp = target_dir.join(TEMP_FILE_NAME);
        let written = write_synced(&temp, text.as_bytes())
            .map_err(|e| self.io_error("write temporary file", e))
            .and_then(|()| fs::rename(&temp, &target).map_err(|e| self.io_error("rename", e)));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        sync_dir(&target_dir).map_err(|e| self.io_error("fsync directory", e))
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
