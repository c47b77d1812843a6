//! Durable files: the one routine that replaces a file atomically, the one that removes
//! a file durably, and one checksummed envelope for file contents.
//!
//! # The guarantee
//!
//! After [`replace`] (or [`replace_with`]) returns `Ok`, the file holds the new content and
//! survives a crash or power loss. Whenever it fails, and at every instant while it runs
//! (a crash included), the file holds either its old content or the whole new one, never
//! a mix or a prefix. The steps, each of which may fail with an [`Error`] naming it
//! ([`Step`]):
//!
//! 1. **create the temporary file** next to the target, in the same directory (a rename
//!    is atomic only within one file system), under a unique name
//!    (`.<name>.<pid>.<n>.tmp`), *exclusively* (`O_CREAT | O_EXCL`): a symlink or a file
//!    planted at that name is never opened, let alone written through; the next name is
//!    tried instead;
//! 2. **write** the content;
//! 3. **fsync the temporary file**: its bytes are on disk before it gets the target's name;
//! 4. **rename** it over the target: the atomic switch (a symlink at the target is
//!    replaced, not followed: resolve it first to replace the file it points at);
//! 5. **fsync the directory**: the rename itself is on disk. This step is not best
//!    effort: its failure is returned, like any other.
//!
//! On a failure before the rename the temporary file is removed and the target is
//! untouched. A failure of the directory fsync comes after the rename: the target holds
//! the new content (a reader sees it), but whether the rename survives a power loss is
//! unknown; [`Error::replaced`] says so, and a retry (which fsyncs the directory again)
//! settles it. A crash can leave a temporary file behind (it is never read);
//! [`remove_leftover_temp_files`] removes those of one target.
//!
//! [`remove`] unlinks a file and fsyncs its directory; a file already absent is not an
//! error (the directory is still fsynced, so a retry after a failed fsync makes the earlier
//! unlink durable).
//!
//! The routine is one atomic step for its callers (its intermediate states are
//! invisible: the old file or the new one), so it passes no crash points of its own;
//! callers pass theirs around it. Its steps are `fail` failpoints (feature `failpoints`,
//! names in [`FAILPOINTS`]): configured with the `return` action, a step fails with an
//! injected I/O error.
//!
//! ```
//! use layout_core::durable;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("mark");
//! durable::replace(&path, &durable::encode_envelope(b"page 7"))?;
//! let bytes = std::fs::read(&path)?;
//! assert_eq!(durable::decode_envelope(&bytes)?, b"page 7");
//! durable::remove(&path)?;
//! assert!(!path.exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The envelope
//!
//! [`encode_envelope`] frames a payload as: the magic `LAYOUTE` and a format byte (`1`), the
//! payload's length (8 bytes, little endian), its CRC-32 (IEEE, 4 bytes, little endian),
//! then the payload. [`decode_envelope`] checks all of it and names what is wrong
//! ([`EnvelopeError`]): not an envelope, a newer format, truncated, trailing bytes, or a
//! checksum mismatch. [`is_envelope`] tells an envelope from a file written before it
//! existed, which a reader keeps accepting.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Failpoint: creating the temporary file fails (nothing was written).
pub const FAIL_CREATE_TEMP: &str = "durable::create_temp";
/// Failpoint: writing the temporary file fails (after the content was written to it).
pub const FAIL_WRITE: &str = "durable::write";
/// Failpoint: the fsync of the temporary file fails.
pub const FAIL_SYNC_FILE: &str = "durable::sync_file";
/// Failpoint: the rename over the target fails.
pub const FAIL_RENAME: &str = "durable::rename";
/// Failpoint: the directory fsync after the rename fails (the target holds the new content).
pub const FAIL_SYNC_DIRECTORY: &str = "durable::sync_directory";
/// Failpoint: the directory fsync after [`remove`]'s unlink fails (the file is gone).
pub const FAIL_REMOVE_SYNC_DIRECTORY: &str = "durable::remove_sync_directory";

/// Every failpoint of this module, in the order a [`replace`] then a [`remove`] pass them.
pub const FAILPOINTS: &[&str] = &[
    FAIL_CREATE_TEMP,
    FAIL_WRITE,
    FAIL_SYNC_FILE,
    FAIL_RENAME,
    FAIL_SYNC_DIRECTORY,
    FAIL_REMOVE_SYNC_DIRECTORY,
];

/// How many names [`replace`] tries for its temporary file before it gives up (each one
/// taken by a leftover or a planted file).
const TEMP_NAME_ATTEMPTS: u64 = 64;

/// The step of a durable operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Creating the temporary file.
    CreateTemp,
    /// Writing the content to the temporary file.
    Write,
    /// Fsyncing the temporary file.
    SyncFile,
    /// Renaming the temporary file over the target.
    Rename,
    /// Fsyncing the directory (after a rename or an unlink).
    SyncDirectory,
    /// Unlinking a file.
    Remove,
    /// Listing the directory (looking for leftover temporary files).
    ListDirectory,
}

impl Step {
    /// The step in a few words (`"fsync temporary file"`), for an `operation` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateTemp => "create temporary file",
            Self::Write => "write temporary file",
            Self::SyncFile => "fsync temporary file",
            Self::Rename => "rename temporary file over the target",
            Self::SyncDirectory => "fsync directory",
            Self::Remove => "remove",
            Self::ListDirectory => "list directory",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A durable operation failed: on which file, at which step, and the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("cannot durably write {}: {step} failed: {source}{}", path.display(), after_rename(*step))]
pub struct Error {
    path: PathBuf,
    step: Step,
    #[source]
    source: io::Error,
}

fn after_rename(step: Step) -> &'static str {
    if step == Step::SyncDirectory {
        " (the file holds the new content, but the rename may not survive a power loss; \
         retry)"
    } else {
        ""
    }
}

impl Error {
    fn new(path: &Path, step: Step, source: io::Error) -> Self {
        Self {
            path: path.to_owned(),
            step,
            source,
        }
    }

    /// The file the operation was on (the target, not the temporary file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The I/O error.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }

    /// The I/O error, owned.
    pub fn into_io_error(self) -> io::Error {
        self.source
    }

    /// Whether the target already holds the new content (only the directory fsync after
    /// the rename failed). Otherwise the target is as it was.
    pub fn replaced(&self) -> bool {
        self.step == Step::SyncDirectory
    }
}

/// The I/O error a failpoint injects.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn injected(failpoint: &str) -> io::Error {
    io::Error::other(format!("injected by failpoint {failpoint}"))
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces the file at `path` with `bytes`, atomically and durably (see the
/// [module docs](self)). Returns the metadata of the new file (its device and inode are
/// the temporary file's, which the rename kept). The directory must exist.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<fs::Metadata, Error> {
    replace_with(path, |file| file.write_all(bytes)).map_err(|e| match e {
        ReplaceError::Write(e) => Error::new(path, Step::Write, e),
        ReplaceError::Durable(e) => e,
    })
}

/// Why [`replace_with`] failed: the caller's `write`, or a step of the routine.
#[derive(Debug)]
pub enum ReplaceError<E> {
    /// `write` failed (its error, as it returned it).
    Write(E),
    /// A step of the routine failed.
    Durable(Error),
}

impl<E: fmt::Display> fmt::Display for ReplaceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Write(e) => e.fmt(f),
            Self::Durable(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ReplaceError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Write(e) => e.source(),
            Self::Durable(e) => std::error::Error::source(e),
        }
    }
}

impl<E> From<Error> for ReplaceError<E> {
    fn from(e: Error) -> Self {
        Self::Durable(e)
    }
}

/// Like [`replace`], with the content written by `write` to the temporary file (empty,
/// opened for reading and writing): for content streamed or built in place (a database file). The
/// temporary file is removed on any failure, `write`'s included.
pub fn replace_with<E>(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> Result<(), E>,
) -> Result<fs::Metadata, ReplaceError<E>> {
    let (temp, mut file) = create_temp(path)?;
    let written = write(&mut file)
        .map_err(ReplaceError::Write)
        .and_then(|()| Ok(finish_temp(path, &file)?));
    drop(file);
    let metadata = match written.and_then(|meta| {
        rename(&temp, path)?;
        Ok(meta)
    }) {
        Ok(meta) => meta,
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
    };
    sync_dir_after_rename(path)?;
    Ok(metadata)
}

/// The temporary file of `path`, created exclusively under a unique name.
fn create_temp(path: &Path) -> Result<(PathBuf, fs::File), Error> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        Error::new(
            path,
            Step::CreateTemp,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    fail::fail_point!(FAIL_CREATE_TEMP, |_| Err(Error::new(
        path,
        Step::CreateTemp,
        injected(FAIL_CREATE_TEMP)
    )));
    let mut last = None;
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.{n}.tmp", std::process::id()));
        let temp = path.with_file_name(temp_name);
        // Exclusively: O_CREAT | O_EXCL never follows a symlink, never opens a file
        // planted at the name.
        match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::new(path, Step::CreateTemp, e)),
        }
    }
    Err(Error::new(
        path,
        Step::CreateTemp,
        last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)),
    ))
}

/// The write failpoint, the fsync of the temporary file, and its metadata.
fn finish_temp(path: &Path, file: &fs::File) -> Result<fs::Metadata, Error> {
    fail::fail_point!(FAIL_WRITE, |_| Err(Error::new(
        path,
        Step::Write,
        injected(FAIL_WRITE)
    )));
    fail::fail_point!(FAIL_SYNC_FILE, |_| Err(Error::new(
        path,
        Step::SyncFile,
        injected(FAIL_SYNC_FILE)
    )));
    file.sync_all()
        .map_err(|e| Error::new(path, Step::SyncFile, e))?;
    file.metadata()
        .map_err(|e| Error::new(path, Step::SyncFile, e))
}

fn rename(temp: &Path, path: &Path) -> Result<(), Error> {
    fail::fail_point!(FAIL_RENAME, |_| Err(Error::new(
        path,
        Step::Rename,
        injected(FAIL_RENAME)
    )));
    fs::rename(temp, path).map_err(|e| Error::new(path, Step::Rename, e))
}

/// Fsyncs the directory `dir`: the one place a directory is fsynced.
fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Fsyncs the directory of `path`; an error names `path`.
fn sync_parent(path: &Path) -> Result<(), Error> {
    fsync_dir(parent_dir(path)).map_err(|e| Error::new(path, Step::SyncDirectory, e))
}

fn sync_dir_after_rename(path: &Path) -> Result<(), Error> {
    fail::fail_point!(FAIL_SYNC_DIRECTORY, |_| Err(Error::new(
        path,
        Step::SyncDirectory,
        injected(FAIL_SYNC_DIRECTORY)
    )));
    sync_parent(path)
}

fn sync_dir_after_remove(path: &Path) -> Result<(), Error> {
    fail::fail_point!(FAIL_REMOVE_SYNC_DIRECTORY, |_| Err(Error::new(
        path,
        Step::SyncDirectory,
        injected(FAIL_REMOVE_SYNC_DIRECTORY)
    )));
    sync_parent(path)
}

/// Fsyncs the directory `dir` itself: makes durable a name created in it by other means
/// (a hard link, a file created by a library). [`replace`] and [`remove`] do this on
/// their own.
pub fn sync_directory(dir: &Path) -> Result<(), Error> {
    fsync_dir(dir).map_err(|e| Error::new(dir, Step::SyncDirectory, e))
}

/// Removes the file at `path` and fsyncs its directory, so the removal survives a crash.
/// A file already absent is not an error (the directory is fsynced all the same). A
/// symlink is removed, not the file it points at.
pub fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::new(path, Step::Remove, e)),
    }
    sync_dir_after_remove(path)
}

/// Whether `candidate` is the name of a temporary file of the target named `name`: one
/// [`replace`] creates (`.<name>.<pid>.<n>.tmp`), or `.<name>.tmp`, the name earlier
/// releases used.
fn is_temp_name_of(name: &str, candidate: &str) -> bool {
    let Some(rest) = candidate
        .strip_prefix('.')
        .and_then(|c| c.strip_prefix(name))
        .and_then(|c| c.strip_prefix('.'))
        .and_then(|c| c.strip_suffix("tmp"))
    else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_suffix('.') else {
        return false;
    };
    let mut parts = rest.split('.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Removes the temporary files a crashed [`replace`] of `path` left next to it (and the
/// `.<name>.tmp` of earlier releases): unlinked, never followed. Returns the paths
/// removed. Call it where no other process replaces `path` at the same time (under the
/// lock that serializes its writers, or at start-up): a temporary file in use would be
/// removed from under its writer, whose rename then fails.
pub fn remove_leftover_temp_files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = parent_dir(path);
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::new(path, Step::ListDirectory, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::new(path, Step::ListDirectory, e))?;
        let file_name = entry.file_name();
        if !file_name.to_str().is_some_and(|c| is_temp_name_of(name, c)) {
            continue;
        }
        let temp = entry.path();
        match fs::remove_file(&temp) {
            Ok(()) => removed.push(temp),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::new(&temp, Step::Remove, e)),
        }
    }
    Ok(removed)
}

/// The magic at the start of an envelope, then its format byte ([`ENVELOPE_FORMAT`]).
pub const ENVELOPE_MAGIC: &[u8; 7] = b"LAYOUTE";
/// The envelope format this release writes and reads.
pub const ENVELOPE_FORMAT: u8 = 1;
/// The length of an envelope's header: magic, format, length, checksum.
pub const ENVELOPE_HEADER_LEN: usize = 7 + 1 + 8 + 4;

/// What is wrong with bytes that should be an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes do not start with the magic `LAYOUTE`.
    #[error("not a checksummed envelope (it does not start with the magic bytes LAYOUTE)")]
    NotAnEnvelope,
    /// The envelope is of a format this release does not read.
    #[error("envelope format {found} is newer than this release reads ({ENVELOPE_FORMAT})")]
    UnsupportedFormat {
        /// The format byte found.
        found: u8,
    },
    /// Fewer bytes than the header announces (a torn or truncated file).
    #[error("truncated envelope: {expected} bytes expected, {found} found")]
    Truncated {
        /// The length the header announces (header included), or the header's length.
        expected: u64,
        /// The length found.
        found: usize,
    },
    /// More bytes than the header announces (appended to).
    #[error("{extra} bytes follow the envelope's payload")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The payload does not match its checksum (bit rot, a hand edit).
    #[error(
        "checksum mismatch: the envelope records crc32:{recorded:08x} but its payload hashes \
         to crc32:{computed:08x}"
    )]
    ChecksumMismatch {
        /// The checksum recorded in the header.
        recorded: u32,
        /// The checksum of the payload found.
        computed: u32,
    },
}

/// Frames `payload` in a checksummed envelope (see the [module docs](self)).
pub fn encode_envelope(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + payload.len());
    out.extend_from_slice(ENVELOPE_MAGIC);
    out.push(ENVELOPE_FORMAT);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Whether `bytes` start like an envelope (its magic): tells an envelope from a file
/// written in an earlier, unframed format.
pub fn is_envelope(bytes: &[u8]) -> bool {
    bytes.starts_with(ENVELOPE_MAGIC)
}

/// The payload of the envelope `bytes`, checked (see [`EnvelopeError`]).
pub fn decode_envelope(bytes: &[u8]) -> Result<&[u8], EnvelopeError> {
    if !is_envelope(bytes) {
        return Err(EnvelopeError::NotAnEnvelope);
    }
    if bytes.len() < ENVELOPE_HEADER_LEN {
        return Err(EnvelopeError::Truncated {
            expected: ENVELOPE_HEADER_LEN as u64,
            found: bytes.len(),
        });
    }
    let format = bytes[7];
    if format != ENVELOPE_FORMAT {
        return Err(EnvelopeError::UnsupportedFormat { found: format });
    }
    let mut len = [0; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len);
    let mut recorded = [0; 4];
    recorded.copy_from_slice(&bytes[16..20]);
    let recorded = u32::from_le_bytes(recorded);
    let payload = &bytes[ENVELOPE_HEADER_LEN..];
    let found = payload.len() as u64;
    if found < len {
        return Err(EnvelopeError::Truncated {
            expected: len.saturating_add(ENVELOPE_HEADER_LEN as u64),
            found: bytes.len(),
        });
    }
    if found > len {
        return Err(EnvelopeError::TrailingBytes {
            extra: usize::try_from(found - len).unwrap_or(usize::MAX),
        });
    }
    let computed = crc32fast::hash(payload);
    if computed != recorded {
        return Err(EnvelopeError::ChecksumMismatch { recorded, computed });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognized_for_their_target_only() {
        assert!(is_temp_name_of("VERSION", ".VERSION.tmp"));
        assert!(is_temp_name_of("VERSION", ".VERSION.412.0.tmp"));
        assert!(!is_temp_name_of("VERSION", ".VERSION.bak.412.0.tmp"));
        assert!(!is_temp_name_of("VERSION", "VERSION.tmp"));
        assert!(!is_temp_name_of("VERSION", ".VERSION.412.tmp"));
        assert!(!is_temp_name_of("VERSION", ".VERSION.x.0.tmp"));
    }
}
