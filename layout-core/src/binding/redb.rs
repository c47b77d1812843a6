//! The data binding for a component whose data is one [redb](https://docs.rs/redb)
//! database (cargo feature `redb`): the [recipe](super) done, in one call.
//!
//! [`open`] opens (or, on a fresh install, creates) the database at a path after every
//! check of the recipe, and records the binding; [`record_written_at`] records, inside
//! the component's own write transaction, the MLV its data is written at; [`read_binding`]
//! reads the binding back.
//!
//! ```
//! use layout_core::binding::redb::{self as bound_redb, OpenOptions};
//! use layout_core::redb::TableDefinition;
//! use layout_core::{FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! enum Feature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     Initial,
//! }
//!
//! const USERS: TableDefinition<'static, &str, &str> = TableDefinition::new("users");
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("data").join("users.redb");
//! let init = ManagerOptions::default().with_start_intent(StartIntent::Init);
//! let lvm = LayoutVersionManager::<Feature>::open(FileStorage::new(dir.path().join("layout")), init)?;
//!
//! // Checked, created (a fresh install) and bound.
//! let (db, bound) = bound_redb::open(&lvm, &path, &OpenOptions::default())?;
//! assert_eq!(Some(bound.data_id), lvm.data_id());
//!
//! // Every transaction that writes data records the MLV it writes at.
//! let txn = db.begin_write()?;
//! txn.open_table(USERS)?.insert("alice", "admin")?;
//! bound_redb::record_written_at(&txn, &lvm)?;
//! txn.commit()?;
//! assert_eq!(bound_redb::read_binding(&db, &path)?, Some(bound));
//! drop((db, lvm));
//!
//! // The database is deleted: the next start refuses it instead of starting empty.
//! std::fs::remove_file(&path)?;
//! let lvm = LayoutVersionManager::<Feature>::open(
//!     FileStorage::new(dir.path().join("layout")),
//!     ManagerOptions::default(),
//! )?;
//! let err = bound_redb::open(&lvm, &path, &OpenOptions::default()).unwrap_err();
//! assert!(err.binding_error().is_some(), "{err}");
//! assert!(!path.exists(), "a refused start creates nothing");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What `open` checks
//!
//! In this order, writing nothing until every check passed:
//!
//! 1. The file is missing (or its directory is), or empty: [`check_data_found`]
//!    refuses it ([`BindingError::DataMissing`]) unless this start created the layout
//!    state (a fresh install: the directory and the database are then created).
//! 2. The file exists: it is opened **read-only** first (redb's read-write open writes the
//!    file's header) and its binding read; [`DataBinding::check`] refuses another data id
//!    ([`BindingError::ForeignData`]) and data written at an MLV above the layout state's
//!    ([`BindingError::LayoutOlderThanData`]). A refused start leaves the file
//!    byte-for-byte as it was. A database left by a crash cannot be opened read-only
//!    (redb answers `RepairAborted`: it must be repaired first, which only a read-write
//!    open does); its binding is then checked right after the read-write open, before
//!    anything else is written.
//! 3. The file cannot be read: [`RedbBindingError::Damaged`], naming the path. redb 3
//!    *panics* (an assertion in its page manager) on a file shorter than its header
//!    says, a truncated database, instead of returning an error: every open runs under
//!    [`std::panic::catch_unwind`], and the panic becomes this error. While it runs, a
//!    panic hook installed once (deferring to the previous hook everywhere else) keeps
//!    the caught panic's message and backtrace off stderr, where they would read as a
//!    crash. Nothing is shared with the open while it runs, so unwinding out of it
//!    leaves no broken state. (A process built with `panic = "abort"` cannot catch it:
//!    it aborts on a truncated file.)
//! 4. The checks passed: [`adopt`] gives the binding (for a store without one, from before
//!    bindings, a new one), which is recorded in one write transaction.
//!
//! # Format
//!
//! One table, [`TABLE_NAME`] (`layout_core.binding`), `&str -> &str`, two rows:
//!
//! | key | value |
//! |---|---|
//! | `data_id` | the layout state's [`DataId`](crate::state::DataId), 32 lowercase hex digits |
//! | `written_at_mlv` | the MLV the data was last written at, in decimal |
//!
//! A database without the table, or without its `data_id` row, has no binding (a store
//! from before bindings): [`open`] adopts it. A `data_id` or `written_at_mlv` that does
//! not parse is damage ([`RedbBindingError::Damaged`]).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::redb::{
    Database, DatabaseError, ReadableDatabase, StorageBackend, StorageError, TableDefinition,
    TableError, WriteTransaction,
};

use super::{adopt, check_data_found, BindingError, DataBinding};
use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;

/// The name of the table that holds the binding; see [the format](self#format).
pub const TABLE_NAME: &str = "layout_core.binding";

const TABLE: TableDefinition<'static, &'static str, &'static str> =
    TableDefinition::new(TABLE_NAME);
const KEY_DATA_ID: &str = "data_id";
const KEY_WRITTEN_AT_MLV: &str = "written_at_mlv";

/// Makes the [`StorageBackend`] of the database file from the opened file (read-write,
/// created on a fresh install); see [`OpenOptions::with_backend`].
pub type BackendFactory =
    Arc<dyn Fn(fs::File) -> Result<Box<dyn StorageBackend>, DatabaseError> + Send + Sync>;

/// Configures the [`redb::Builder`] every open uses (cache size, page
/// size, repair callback); see [`OpenOptions::with_builder`].
pub type BuilderHook = Arc<dyn Fn(&mut ::redb::Builder) + Send + Sync>;

/// How [`open`] opens the database. The default: redb's own file backend and builder.
#[derive(Clone, Default)]
pub struct OpenOptions {
    backend: Option<BackendFactory>,
    builder: Option<BuilderHook>,
}

impl OpenOptions {
    /// Options with redb's defaults (same as [`OpenOptions::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The read-write open runs on the backend `factory` makes from the opened file
    /// (e.g. a wrapper of `redb::backends::FileBackend` that injects I/O errors, in
    /// tests). The read-only open of the checks always reads the file itself.
    #[must_use]
    pub fn with_backend(mut self, factory: BackendFactory) -> Self {
        self.backend = Some(factory);
        self
    }

    /// Every open (read-only and read-write) starts from a [`redb::Builder`]
    /// configured by `hook`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use layout_core::binding::redb::OpenOptions;
    ///
    /// let options = OpenOptions::new().with_builder(Arc::new(|builder| {
    ///     builder.set_cache_size(16 << 20);
    /// }));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn with_builder(mut self, hook: BuilderHook) -> Self {
        self.builder = Some(hook);
        self
    }

    fn builder(&self) -> ::redb::Builder {
        let mut builder = ::redb::Builder::new();
        if let Some(hook) = &self.builder {
            hook(&mut builder);
        }
        builder
    }
}

impl fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenOptions")
            .field("backend", &self.backend.as_ref().map(|_| "custom"))
            .field("builder", &self.builder.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Why [`open`] or [`read_binding`] failed. Each names the database file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedbBindingError {
    /// The data does not belong to the layout state: missing or empty next to an
    /// existing layout state, another installation's data, or a layout state older than
    /// the data. Nothing was written.
    #[error(transparent)]
    Binding(Box<BindingError>),

    /// The database file cannot be read: truncated, overwritten, not a redb database, or
    /// its binding does not parse. Nothing was written to it.
    #[error(
        "redb database {path} is damaged: {reason}. Restore it from a backup taken together \
         with the layout state"
    )]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What redb (or the binding's parser) reported.
        reason: String,
    },

    /// redb failed otherwise (the database is open in another process, needs a format
    /// upgrade, an I/O error on a transaction).
    #[error("redb database {path}: {context}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: Box<::redb::Error>,
    },

    /// A file-system operation around the database failed.
    #[error("{context} {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The layout state could not record the adopted data id (see [`adopt`]).
    #[error(transparent)]
    Layout(Box<LayoutError>),
}

impl RedbBindingError {
    /// The binding refusal, when that is what this is.
    pub fn binding_error(&self) -> Option<&BindingError> {
        match self {
            Self::Binding(e) => Some(e),
            _ => None,
        }
    }

    fn db<'a, E: Into<::redb::Error>>(
        path: &'a Path,
        context: &'static str,
    ) -> impl FnOnce(E) -> Self + 'a {
        move |e| Self::Database {
            path: path.to_owned(),
            context,
            source: Box::new(e.into()),
        }
    }

    fn damaged(path: &Path, reason: String) -> Self {
        Self::Damaged {
            path: path.to_owned(),
            reason,
        }
    }
}

impl From<BindingError> for RedbBindingError {
    fn from(e: BindingError) -> Self {
        Self::Binding(Box::new(e))
    }
}

impl From<LayoutError> for RedbBindingError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(Box::new(e))
    }
}

/// Opens the redb database at `path` once its data is known to belong to `manager`'s
/// layout state, creating it (and its directory) on a fresh install, and records the
/// binding in it. Returns the database and the binding recorded.
///
/// Every check of [the recipe](super) runs first, and a refused start writes nothing,
/// neither the layout state nor the database: see [what it checks](self#what-open-checks).
/// Errors: [`RedbBindingError::Binding`] (missing, empty or foreign data, a layout state
/// older than the data), [`RedbBindingError::Damaged`] (a truncated or garbage file:
/// never a panic), [`RedbBindingError::Database`], [`RedbBindingError::Io`],
/// [`RedbBindingError::Layout`] (the adopted data id could not be stored).
///
/// Call it after [`LayoutVersionManager::open`] and before serving anything, and again on
/// every reopen of the file. Afterwards, record the MLV in every transaction that writes
/// data with [`record_written_at`].
pub fn open<F: LayoutFeature>(
    manager: &LayoutVersionManager<F>,
    path: impl AsRef<Path>,
    options: &OpenOptions,
) -> Result<(Database, DataBinding), RedbBindingError> {
    let path = path.as_ref();
    let location = path.display().to_string();
    let dir = parent_dir(path);
    // Missing or empty data next to an existing layout state is refused before anything
    // is created: never started empty.
    let existing = match data_presence(dir, path)? {
        Presence::Present => true,
        absent => {
            check_data_found(manager, &location, absent.describe())?;
            false
        }
    };
    if existing {
        // Checked before the read-write open, which writes the file's header: a refused
        // start leaves the file as it was (unless redb must first repair it after a
        // crash; then the check below runs after that repair).
        if let Some(snapshot) = open_read_only(path, options)? {
            if let Some(found) = read_binding(&snapshot, path)? {
                found.check(manager, &location)?;
            }
        }
    } else {
        fs::create_dir_all(dir).map_err(|source| RedbBindingError::Io {
            context: "cannot create the data directory",
            path: dir.to_owned(),
            source,
        })?;
    }
    let db = open_read_write(path, existing, options)?;
    let found = read_binding(&db, path)?;
    if let Some(found) = &found {
        found.check(manager, &location)?;
    }
    // Checks passed: from here on, writes are allowed.
    let bound = adopt(manager, found.as_ref())?;
    let txn = db
        .begin_write()
        .map_err(RedbBindingError::db(path, "begin write"))?;
    record_binding(&txn, &bound).map_err(RedbBindingError::db(path, "record the binding"))?;
    txn.commit()
        .map_err(RedbBindingError::db(path, "commit the binding"))?;
    Ok((db, bound))
}

/// Records, in the caller's write transaction `txn`, that the data is written at
/// `manager`'s current MLV: it commits (or aborts) with the data it describes.
///
/// Call it in every transaction that writes data, after the data is encoded: the MLV
/// only grows while the process runs, so the MLV read then is never below the layout
/// the data was encoded in. Errors are redb's, as for the caller's other operations in
/// `txn` (this function knows no path to name).
pub fn record_written_at<F: LayoutFeature>(
    txn: &WriteTransaction,
    manager: &LayoutVersionManager<F>,
) -> Result<(), ::redb::Error> {
    let mlv = manager.metadata_layout_version().to_string();
    txn.open_table(TABLE)?
        .insert(KEY_WRITTEN_AT_MLV, mlv.as_str())?;
    Ok(())
}

/// Records the whole `binding` (data id and MLV) in the caller's write transaction
/// `txn`. [`open`] does it; a component that runs the checks itself records the binding
/// [`adopt`] returned with it.
pub fn record_binding(txn: &WriteTransaction, binding: &DataBinding) -> Result<(), ::redb::Error> {
    let mut table = txn.open_table(TABLE)?;
    table.insert(KEY_DATA_ID, binding.data_id.to_string().as_str())?;
    table.insert(
        KEY_WRITTEN_AT_MLV,
        binding.written_at_mlv.to_string().as_str(),
    )?;
    Ok(())
}

/// The binding recorded in `db` (`path` names it in errors), or `None` when it records
/// none: a new database, or one from before bindings. Reads only; works on a
/// [`Database`] and a [`ReadOnlyDatabase`](::redb::ReadOnlyDatabase).
///
/// A row that does not parse is [`RedbBindingError::Damaged`]. A database with a data id
/// but no MLV row was written at MLV 0.
pub fn read_binding(
    db: &impl ReadableDatabase,
    path: &Path,
) -> Result<Option<DataBinding>, RedbBindingError> {
    let txn = db
        .begin_read()
        .map_err(RedbBindingError::db(path, "begin read"))?;
    let table = match txn.open_table(TABLE) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(RedbBindingError::db(path, "open the binding table")(e)),
    };
    let read = |key| {
        table
            .get(key)
            .map(|row| row.map(|value| value.value().to_owned()))
            .map_err(RedbBindingError::db(path, "read the binding table"))
    };
    let Some(id) = read(KEY_DATA_ID)? else {
        return Ok(None);
    };
    let data_id = id.parse().map_err(|e| {
        RedbBindingError::damaged(path, format!("table {TABLE_NAME}: {KEY_DATA_ID}: {e}"))
    })?;
    let written_at_mlv = match read(KEY_WRITTEN_AT_MLV)? {
        None => 0,
        Some(text) => text.parse().map_err(|_| {
            RedbBindingError::damaged(
                path,
                format!(
                    "table {TABLE_NAME}: {KEY_WRITTEN_AT_MLV} = {text:?} is not a layout version"
                ),
            )
        })?,
    };
    Ok(Some(DataBinding {
        data_id,
        written_at_mlv,
    }))
}

/// The directory `path` lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// What [`open`] finds where the database should be.
enum Presence {
    /// The directory does not exist.
    NoDirectory,
    /// The directory exists, the file does not.
    NoFile,
    /// The file is empty (zero bytes).
    Empty,
    /// The file exists and is not empty.
    Present,
}

impl Presence {
    fn describe(&self) -> &'static str {
        match self {
            Self::NoDirectory => "does not exist (nor does its data directory)",
            Self::NoFile => "does not exist",
            Self::Empty => "is empty (zero bytes)",
            Self::Present => "exists",
        }
    }
}

fn data_presence(dir: &Path, path: &Path) -> Result<Presence, RedbBindingError> {
    let io = |source| RedbBindingError::Io {
        context: "cannot inspect the database file",
        path: path.to_owned(),
        source,
    };
    // `symlink_metadata`: a dangling symlink is not "missing" (opening it then fails).
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == 0 => Ok(Presence::Empty),
        Ok(_) => Ok(Presence::Present),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::symlink_metadata(dir) {
            Ok(_) => Ok(Presence::NoFile),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Presence::NoDirectory),
            Err(e) => Err(io(e)),
        },
        Err(e) => Err(io(e)),
    }
}

/// Opens the database read-write: an existing one never re-created, a new one created;
/// under [`catch_quietly`] (redb panics on a truncated file).
fn open_read_write(
    path: &Path,
    existing: bool,
    options: &OpenOptions,
) -> Result<Database, RedbBindingError> {
    let builder = options.builder();
    // The builder is only read and the factory only called: a panic in either leaves
    // nothing half-built that anyone sees afterwards.
    let opened = catch_quietly(std::panic::AssertUnwindSafe(|| match &options.backend {
        None if existing => builder.open(path),
        None => builder.create(path),
        Some(factory) => {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(!existing)
                .truncate(false)
                .open(path)?;
            builder.create_with_backend(BoxedBackend(factory(file)?))
        }
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) if !existing => Err(RedbBindingError::db(path, "create")(e)),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(panic) => Err(damaged_by_panic(path, panic.as_ref())),
    }
}

/// Opens an existing database read-only, writing nothing. `None` when redb must repair
/// the file first (it was not closed cleanly: a crash), which only a read-write open does.
fn open_read_only(
    path: &Path,
    options: &OpenOptions,
) -> Result<Option<::redb::ReadOnlyDatabase>, RedbBindingError> {
    let builder = options.builder();
    match catch_quietly(std::panic::AssertUnwindSafe(|| {
        builder.open_read_only(path)
    })) {
        Ok(Ok(db)) => Ok(Some(db)),
        Ok(Err(DatabaseError::RepairAborted)) => Ok(None),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(panic) => Err(damaged_by_panic(path, panic.as_ref())),
    }
}

/// An error opening an existing database: damage when redb says the file is corrupted
/// or not a redb database; otherwise the redb error (in use, an old format, an I/O error
/// such as a permission denied).
fn open_error(path: &Path, e: DatabaseError) -> RedbBindingError {
    match e {
        DatabaseError::Storage(StorageError::Corrupted(reason)) => {
            RedbBindingError::damaged(path, format!("redb reports it corrupted: {reason}"))
        }
        DatabaseError::Storage(StorageError::Io(io))
            if matches!(
                io.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ) =>
        {
            RedbBindingError::damaged(
                path,
                format!("it is not a redb database, or its header is damaged ({io})"),
            )
        }
        e => RedbBindingError::db(path, "open")(e),
    }
}

fn damaged_by_panic(path: &Path, panic: &(dyn std::any::Any + Send)) -> RedbBindingError {
    RedbBindingError::damaged(
        path,
        format!(
            "redb cannot read it ({}); the file is truncated or not a redb database",
            panic_text(panic)
        ),
    )
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

thread_local! {
    /// Set while [`catch_quietly`] runs its closure in this thread.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `catch_unwind(f)`, without the panic hook's report (message and backtrace on stderr)
/// for a panic it catches: the caller turns the panic into an error an operator reads,
/// and a backtrace next to it would read as a crash. Installs, once, a hook that defers
/// to the previous one except in a thread inside `catch_quietly`, so panics anywhere
/// else are reported as before.
fn catch_quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was_quiet = QUIET_PANICS.with(|quiet| quiet.replace(true));
    let result = std::panic::catch_unwind(f);
    QUIET_PANICS.with(|quiet| quiet.set(was_quiet));
    result
}

/// A [`StorageBackend`] made by a [`BackendFactory`], as `Builder::create_with_backend`
/// takes it.
#[derive(Debug)]
struct BoxedBackend(Box<dyn StorageBackend>);

impl StorageBackend for BoxedBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }
}
