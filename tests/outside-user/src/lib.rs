//! Shelf: a tiny record store, written the way an outside user writes a service on
//! `layout-core`, with nothing but its public API.
//!
//! Records are files `<data>/records/<key>`. Release 1 stores `v1:<value>`; release 2
//! adds the layout feature [`ShelfFeature::Lengths`], whose records are
//! `v2:<length>:<value>`. The record writer is a versioned handler (a
//! [`LayoutVersionInstanceFactory`] keyed by operation): the v1 writer serves until
//! `Lengths` is finalized, the v2 writer after. Finalizing `Lengths` rewrites every v1
//! record as v2 (its `OnFinalize` action); while pre-finalized, every start rewrites any
//! v2 record back to v1 (its `ValidateInPrefinalize` action), so an interrupted
//! finalization never leaves a record the old release cannot read.
//!
//! The service starts through [`startup`]: the one start-up its `main` and its tests use.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::action::RegistryError;
use layout_core::startup::{ComponentStartup, StartedComponent, StartupError};
use layout_core::{
    ActionContext, ActionError, ActionRegistry, FactoryError, FileStorage, LayoutFeature,
    LayoutVersionInstanceFactory, LayoutVersionManager, ManagerOptions,
};

/// The component's name, recorded in its layout state.
pub const COMPONENT_NAME: &str = "shelf";

/// The shelf's layout catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum ShelfFeature {
    /// Release 1.
    #[layout(version = 0, description = "Records stored as v1:<value>")]
    Initial,
    /// Release 2.
    #[layout(
        version = 1,
        description = "Records carry their length (v2:<length>:<value>)"
    )]
    Lengths,
}

/// Why a shelf operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ShelfError {
    /// A file operation failed.
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A key that is not `[A-Za-z0-9_-]{1,64}`.
    BadKey(String),
    /// A v2 record, read by software that does not know `Lengths`.
    TooNew(String),
    /// A record that is neither v1 nor a consistent v2.
    Damaged(String),
    /// No writer serves the current layout.
    Handler(String),
}

impl fmt::Display for ShelfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::BadKey(key) => write!(f, "bad key {key:?}: use 1 to 64 of A-Z a-z 0-9 _ -"),
            Self::TooNew(key) => write!(
                f,
                "record {key} is v2, which this software (before Lengths) cannot read"
            ),
            Self::Damaged(key) => write!(f, "record {key} is damaged"),
            Self::Handler(why) => write!(f, "no record writer: {why}"),
        }
    }
}

impl std::error::Error for ShelfError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ShelfError> for ActionError {
    fn from(e: ShelfError) -> Self {
        ActionError::new(e.to_string())
    }
}

/// A record writer: the versioned handler of the `put` operation.
type Writer = fn(&str) -> String;

fn write_v1(value: &str) -> String {
    format!("v1:{value}")
}

fn write_v2(value: &str) -> String {
    format!("v2:{}:{value}", value.len())
}

/// The record store.
pub struct Shelf {
    records: PathBuf,
    manager: Arc<LayoutVersionManager<ShelfFeature>>,
    writers: LayoutVersionInstanceFactory<ShelfFeature, &'static str, Writer>,
}

impl fmt::Debug for Shelf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shelf")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ShelfError + '_ {
    move |source| ShelfError::Io {
        path: path.to_owned(),
        source,
    }
}

fn handler_error(e: &FactoryError<ShelfFeature, &'static str>) -> ShelfError {
    ShelfError::Handler(e.to_string())
}

fn check_key(key: &str) -> Result<(), ShelfError> {
    let ok = (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ShelfError::BadKey(key.to_owned()))
    }
}

impl Shelf {
    /// Opens the shelf in `data_dir` (created if missing) on its open `manager`.
    pub fn open(
        manager: Arc<LayoutVersionManager<ShelfFeature>>,
        data_dir: &Path,
    ) -> Result<Shelf, ShelfError> {
        let records = data_dir.join("records");
        fs::create_dir_all(&records).map_err(io_error(&records))?;
        let mut writers = LayoutVersionInstanceFactory::new(&manager);
        writers
            .register("put", ShelfFeature::Initial, write_v1 as Writer)
            .map_err(|e| handler_error(&e))?;
        // Only a release that knows Lengths has its writer.
        if manager.software_layout_version() >= ShelfFeature::Lengths.layout_version() {
            writers
                .register("put", ShelfFeature::Lengths, write_v2 as Writer)
                .map_err(|e| handler_error(&e))?;
        }
        Ok(Shelf {
            records,
            manager,
            writers,
        })
    }

    /// The layout version manager.
    pub fn manager(&self) -> &Arc<LayoutVersionManager<ShelfFeature>> {
        &self.manager
    }

    /// Stores `value` under `key`, in the format the layout allows.
    pub fn put(&self, key: &str, value: &str) -> Result<(), ShelfError> {
        check_key(key)?;
        let writer = self
            .writers
            .get(&self.manager, &"put")
            .map_err(|e| handler_error(&e))?;
        self.store(key, &writer(value))
    }

    fn store(&self, key: &str, record: &str) -> Result<(), ShelfError> {
        let tmp = self.records.join(format!("{key}.tmp"));
        fs::write(&tmp, record).map_err(io_error(&tmp))?;
        let path = self.records.join(key);
        fs::rename(&tmp, &path).map_err(io_error(&path))
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>, ShelfError> {
        check_key(key)?;
        let path = self.records.join(key);
        match fs::read_to_string(&path) {
            Ok(record) => self.decode(key, &record).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    fn decode(&self, key: &str, record: &str) -> Result<String, ShelfError> {
        if let Some(value) = record.strip_prefix("v1:") {
            return Ok(value.to_owned());
        }
        let Some(rest) = record.strip_prefix("v2:") else {
            return Err(ShelfError::Damaged(key.to_owned()));
        };
        // Release 1 does not know v2: it refuses, as the real old binary would.
        if self.manager.software_layout_version() < ShelfFeature::Lengths.layout_version() {
            return Err(ShelfError::TooNew(key.to_owned()));
        }
        match rest.split_once(':') {
            Some((len, value)) if len.parse() == Ok(value.len()) => Ok(value.to_owned()),
            _ => Err(ShelfError::Damaged(key.to_owned())),
        }
    }

    /// Every record, by key.
    pub fn list(&self) -> Result<BTreeMap<String, String>, ShelfError> {
        self.raw()?
            .into_iter()
            .map(|(key, record)| self.decode(&key, &record).map(|value| (key, value)))
            .collect()
    }

    /// How many records are stored as v2.
    pub fn v2_records(&self) -> Result<usize, ShelfError> {
        Ok(self
            .raw()?
            .values()
            .filter(|r| r.starts_with("v2:"))
            .count())
    }

    /// Every record file, undecoded.
    fn raw(&self) -> Result<BTreeMap<String, String>, ShelfError> {
        let mut raw = BTreeMap::new();
        for entry in fs::read_dir(&self.records).map_err(io_error(&self.records))? {
            let entry = entry.map_err(io_error(&self.records))?;
            let key = entry.file_name().to_string_lossy().into_owned();
            // A write's temporary file (keys never contain a dot).
            if key.contains('.') {
                continue;
            }
            let record = fs::read_to_string(entry.path()).map_err(io_error(&entry.path()))?;
            raw.insert(key, record);
        }
        Ok(raw)
    }
}

/// `Lengths`, `OnFinalize`: every v1 record rewritten as v2. Idempotent (a crash may
/// run it again): v2 records are left alone.
fn rewrite_as_v2(shelf: &Shelf, ctx: &ActionContext<'_, ShelfFeature>) -> Result<(), ActionError> {
    for (key, record) in shelf.raw()? {
        ctx.check_cancelled()?;
        if let Some(value) = record.strip_prefix("v1:") {
            shelf.store(&key, &write_v2(value))?;
        }
    }
    Ok(())
}

/// `Lengths`, `ValidateInPrefinalize` (every start while pre-finalized): any v2 record
/// (left by an interrupted finalization) rewritten as v1, so release 1 reads everything
/// after a downgrade.
fn reset_to_v1(shelf: &Shelf, _ctx: &ActionContext<'_, ShelfFeature>) -> Result<(), ActionError> {
    for (key, record) in shelf.raw()? {
        if record.starts_with("v2:") {
            let value = shelf.decode(&key, &record)?;
            shelf.store(&key, &write_v1(&value))?;
        }
    }
    Ok(())
}

/// The shelf's upgrade actions.
pub fn actions() -> Result<ActionRegistry<ShelfFeature, Shelf>, RegistryError> {
    ActionRegistry::builder()
        .on_finalize(ShelfFeature::Lengths, rewrite_as_v2)
        .validate_in_prefinalize(ShelfFeature::Lengths, reset_to_v1)
        .build()
}

/// The shelf's one start-up, for a node directory `dir` (`dir/layout` holds the layout
/// state, `dir/data` the records). `main` adds its options and calls `start`; the tests
/// hand it to the kit.
pub fn startup(dir: &Path) -> ComponentStartup<ShelfFeature, Shelf> {
    let data = dir.join("data");
    ComponentStartup::new(COMPONENT_NAME)
        .storage(FileStorage::new(dir.join("layout")))
        .open(move |manager| Shelf::open(Arc::clone(manager), &data))
        .actions(|_manager| actions())
}

/// What the service's `main` does: start the shelf in `dir` with `options`.
pub fn start(
    dir: &Path,
    options: ManagerOptions,
) -> Result<StartedComponent<ShelfFeature, Shelf>, StartupError<ShelfFeature>> {
    startup(dir).options(options).start()
}
