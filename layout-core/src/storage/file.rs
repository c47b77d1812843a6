//! The `VERSION` file in a component's directory.

use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::contract::VersionFileChange;
use super::format::{self, DecodeError};
use crate::durable;
use crate::state::{LayoutState, FORMAT_VERSION};
use crate::{LayoutStorage, StorageError};

/// The name of the layout state file inside a component's directory.
pub const VERSION_FILE_NAME: &str = "VERSION";

/// Keeps the layout state in a human-readable, checksummed `VERSION` file.
///
/// Writes are atomic and durable: the new content goes to a temporary file in the same
/// directory, which is fsynced, renamed over `VERSION`, and the directory is fsynced. A
/// crash at any point leaves the old file or the new one. A `VERSION` that is a symlink
/// is followed: the file it points at is replaced, and the link is kept.
///
/// A store never replaces a file this handle did not see: once it has loaded or stored
/// the state, every later store first checks that `VERSION` is still the file it read or
/// wrote last (same device and inode, same bytes, a symlink only if it was one, pointing
/// at the same place) and that a `VERSION` absent at load is still absent. Otherwise it
/// refuses with [`StorageError::ChangedUnderneath`] and writes nothing, not even the
/// temporary file. A handle that has neither loaded nor stored (a tool writing a state
/// it built itself) replaces what is there, as before.
///
/// The write is [`durable::replace`]: the temporary file
/// (`.VERSION.<pid>.<n>.tmp`, next to the file that is replaced) is created exclusively,
/// so it is never opened through a symlink or a hard link planted there. Before each
/// store, leftover temporary files of `VERSION` (from a crash, or planted; `.VERSION.tmp`
/// of earlier releases too) are unlinked, never followed, and logged at warn. A store
/// that fails removes its temporary file.
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
///
/// Clones share nothing: each clone starts from what the original had seen when it was
/// cloned and then checks against what it itself loads and stores.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    path: PathBuf,
    /// What this handle last loaded or stored; held through a whole store.
    seen: Mutex<Seen>,
}

impl Clone for FileStorage {
    fn clone(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            path: self.path.clone(),
            seen: Mutex::new(self.seen.lock().clone()),
        }
    }
}

/// What a [`FileStorage`] handle last saw at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Neither loaded nor stored yet.
    Nothing,
    /// Loaded: there was no `VERSION`.
    Absent,
    /// Loaded or stored: this file.
    File(Identity),
}

/// The identity of a `VERSION` file as loaded or stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    /// `VERSION`'s link text, when it is (an operator's) symlink.
    link: Option<PathBuf>,
    /// The regular file's device.
    dev: u64,
    /// The regular file's inode.
    ino: u64,
    /// Its bytes.
    bytes: Vec<u8>,
}

/// The regular file that holds the state, as found now.
struct OnDisk {
    /// The file to replace: `VERSION`, or what it links to.
    target: PathBuf,
    identity: Identity,
}

impl FileStorage {
    /// Storage for the component whose directory is `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let path = dir.join(VERSION_FILE_NAME);
        Self {
            dir,
            path,
            seen: Mutex::new(Seen::Nothing),
        }
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

    fn changed(&self, change: VersionFileChange) -> StorageError {
        StorageError::ChangedUnderneath {
            location: self.location(),
            change,
        }
    }

    /// The regular file that holds the state, read: `VERSION`, or what it links to.
    fn read_current(&self) -> Result<Option<OnDisk>, StorageError> {
        let meta = match fs::symlink_metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("stat", e)),
        };
        let (target, link, meta) = if meta.file_type().is_symlink() {
            let link = fs::read_link(&self.path).map_err(|e| self.io_error("read symlink", e))?;
            match fs::metadata(&self.path) {
                Ok(target_meta) => {
                    let target = fs::canonicalize(&self.path)
                        .map_err(|e| self.io_error("resolve symlink", e))?;
                    (target, Some(link), target_meta)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::DanglingSymlink {
                        location: self.location(),
                        target: link,
                    });
                }
                Err(e) => return Err(self.io_error("stat symlink target", e)),
            }
        } else {
            (self.path.clone(), None, meta)
        };
        check_regular(&meta).map_err(|kind| StorageError::NotAFile {
            location: self.location(),
            kind,
        })?;
        let mut file = fs::File::open(&target).map_err(|e| self.io_error("open", e))?;
        // The identity of what was opened, not of what was stat'ed a moment before.
        let opened = file.metadata().map_err(|e| self.io_error("stat", e))?;
        check_regular(&opened).map_err(|kind| StorageError::NotAFile {
            location: self.location(),
            kind,
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| self.io_error("read", e))?;
        Ok(Some(OnDisk {
            target,
            identity: Identity {
                link,
                dev: opened.dev(),
                ino: opened.ino(),
                bytes,
            },
        }))
    }

    /// Checks that `VERSION` is still what this handle saw, and returns the file to
    /// replace and `VERSION`'s link text (when it is a symlink).
    fn check_unchanged(&self, seen: &Seen) -> Result<(PathBuf, Option<PathBuf>), StorageError> {
        let meta = match fs::symlink_metadata(&self.path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io_error("stat", e)),
        };
        let expected = match seen {
            Seen::Nothing => {
                // Nothing seen, nothing to compare: replace what is there (refusing a
                // damaged file type, a dangling symlink).
                return match self.read_current()? {
                    Some(found) => Ok((found.target, found.identity.link)),
                    None => Ok((self.path.clone(), None)),
                };
            }
            Seen::Absent => {
                return match meta {
                    None => Ok((self.path.clone(), None)),
                    Some(_) => Err(self.changed(VersionFileChange::Created)),
                };
            }
            Seen::File(identity) => identity,
        };
        let Some(meta) = meta else {
            return Err(self.changed(VersionFileChange::Deleted));
        };
        let is_link = meta.file_type().is_symlink();
        let link_now = if is_link {
            Some(fs::read_link(&self.path).map_err(|e| self.io_error("read symlink", e))?)
        } else {
            None
        };
        match (&expected.link, link_now) {
            (None, Some(target)) => {
                return Err(self.changed(VersionFileChange::BecameSymlink { target }))
            }
            (Some(_), None) => return Err(self.changed(VersionFileChange::NoLongerSymlink)),
            (Some(was), Some(now)) if *was != now => {
                return Err(self.changed(VersionFileChange::SymlinkRetargeted {
                    was: was.clone(),
                    now,
                }))
            }
            _ => {}
        }
        let found = match self.read_current() {
            Ok(Some(found)) => found,
            Ok(None) | Err(StorageError::DanglingSymlink { .. }) => {
                return Err(self.changed(VersionFileChange::Deleted))
            }
            Err(StorageError::NotAFile { kind, .. }) => {
                return Err(self.changed(VersionFileChange::NotAFile { kind }))
            }
            Err(e) => return Err(e),
        };
        if (found.identity.dev, found.identity.ino) != (expected.dev, expected.ino) {
            return Err(self.changed(VersionFileChange::Replaced));
        }
        if found.identity.bytes != expected.bytes {
            return Err(self.changed(VersionFileChange::ContentChanged));
        }
        Ok((found.target, found.identity.link))
    }

    /// Removes the temporary files an interrupted store left next to `target` (or that
    /// were planted there): unlinked, never followed, each logged at warn.
    fn remove_leftover_temps(&self, target: &Path) -> Result<(), StorageError> {
        let removed = durable::remove_leftover_temp_files(target)
            .map_err(|e| self.io_error("remove leftover temporary file", e.into_io_error()))?;
        for temp in removed {
            tracing::warn!(
                location = %self.location(),
                temp = %temp.display(),
                "removed a leftover temporary file (from an interrupted write, or planted); \
                 it was unlinked, never followed"
            );
        }
        Ok(())
    }
}

/// `Err(kind)` unless `meta` is a regular file.
fn check_regular(meta: &fs::Metadata) -> Result<(), &'static str> {
    if meta.is_dir() {
        Err("directory")
    } else if !meta.is_file() {
        Err("special file")
    } else {
        Ok(())
    }
}

impl LayoutStorage for FileStorage {
    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        let mut seen = self.seen.lock();
        let Some(found) = self.read_current()? else {
            *seen = Seen::Absent;
            return Ok(None);
        };
        match format::decode(&found.identity.bytes) {
            Ok(state) => {
                *seen = Seen::File(found.identity);
                Ok(Some(state))
            }
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
        let mut seen = self.seen.lock();
        // Replace what VERSION points at, keeping an operator's symlink in place. A file
        // changed underneath, a damaged or unexpected file type is refused here: never
        // overwritten, and nothing written.
        let (target, link) = self.check_unchanged(&seen)?;
        let target_dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| self.dir.clone(), Path::to_path_buf);
        fs::create_dir_all(&target_dir).map_err(|e| self.io_error("create directory", e))?;
        self.remove_leftover_temps(&target)?;
        // The shared routine: a temporary file created exclusively, fsynced, renamed over
        // the target, the directory fsynced.
        let meta = match durable::replace(&target, text.as_bytes()) {
            Ok(meta) => meta,
            Err(e) if e.replaced() => {
                // Only the directory fsync failed: the new file is in place, and it is
                // what this handle checks against next (when it can tell which it is).
                if let Ok(meta) = fs::metadata(&target) {
                    *seen = Seen::File(Identity {
                        link,
                        dev: meta.dev(),
                        ino: meta.ino(),
                        bytes: text.into_bytes(),
                    });
                }
                return Err(self.io_error(e.step().as_str(), e.into_io_error()));
            }
            Err(e) => return Err(self.io_error(e.step().as_str(), e.into_io_error())),
        };
        // The rename preserved the temporary file's inode: that is VERSION now.
        *seen = Seen::File(Identity {
            link,
            dev: meta.dev(),
            ino: meta.ino(),
            bytes: text.into_bytes(),
        });
        Ok(())
    }
}
