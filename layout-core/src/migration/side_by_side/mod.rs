//! Side-by-side migration: fill a new deployment ("green") from an old one ("blue"),
//! entity by entity, while blue keeps taking writes, until cut-over.
//!
//! A [`SideBySideMigration`] lists entities from an [`EntitySource`] in pages ordered by
//! `(updated_ms, id)`, from its high-water mark, and hands each page to an
//! [`EntityDestination`], optionally transformed and filtered:
//!
//! - **Deletes propagate.** A source lists a deleted entity as a *tombstone*
//!   ([`Entity::tombstone`], `deleted: true`) at the time of its deletion, in the same
//!   `(updated_ms, id)` order as live entities: a store that keeps tombstones lists them,
//!   a store with a change feed lists its delete events. The destination applies a
//!   tombstone the conditional way it applies a write (and keeps it, so an older write
//!   read late cannot resurrect the entity). [`propagate_deletes(false)`](SideBySideBuilder::propagate_deletes)
//!   counts tombstones without applying them.
//! - **Writes are conditional.** [`EntityDestination::write`] stores a version only if
//!   the destination holds no version of the entity at or above it (a tombstone counts),
//!   atomically per entity; otherwise it answers [`PutOutcome::NotNewer`], counted as
//!   `skipped`. So a rerun is idempotent and green may already take writes of its own: a
//!   newer entity there is never overwritten.
//! - **The high-water mark is persisted** through a [`HighWaterMarkStore`] after every
//!   page (in the destination, a file, a document store): a copier restarted after a
//!   crash resumes from it ([`SideBySideReport::resumed_from`]). The mark only advances
//!   over entities handled without failure, so a failed entity is retried.
//! - **An overlap window** ([`overlap_window`](SideBySideBuilder::overlap_window),
//!   default [`DEFAULT_OVERLAP_WINDOW`]) makes every pass re-read from the mark minus the
//!   window: a commit that became visible late with an earlier update time, or a source
//!   node whose clock runs behind another's ([`MergedSource`]), is still copied; what was
//!   copied already comes back as `skipped`. The window must exceed the worst clock skew
//!   between source nodes plus the longest commit delay.
//! - **Cut-over check.** [`compare`](SideBySideMigration::compare) pages both sides in id
//!   order (memory bounded by two pages) and reports whether green equals the transform
//!   of blue: counts, missing, extra and differing entities, and a SHA-256 digest of each
//!   side.
//!
//! Every page passes the crash points of [`CRASH_POINTS`] (see [`crate::crash_point`]).
//!
//! ```
//! use std::sync::Arc;
//! use layout_core::migration::{Entity, MemoryEntityStore, SideBySideMigration};
//! use serde_json::json;
//!
//! let blue = Arc::new(MemoryEntityStore::new());
//! blue.upsert(Entity::new("job-1", 1, 100, json!({"cron": "* * * * *"})));
//! blue.upsert(Entity::new("job-2", 1, 200, json!({"cron": "0 * * * *"})));
//! let green = Arc::new(MemoryEntityStore::new());
//! let migration = SideBySideMigration::builder(blue.clone(), green.clone())
//!     .transform(|mut e| { e.data["schema"] = json!(2); Ok(e) })
//!     .build()?;
//! let first = migration.run_pass()?;
//! assert_eq!((first.copied, first.transformed), (2, 2));
//! blue.delete("job-1", 2, 300);                 // a tombstone
//! let second = migration.run_pass()?;           // the window re-reads; nothing twice
//! assert_eq!((second.copied, second.deleted, second.skipped), (0, 1, 1));
//! let check = migration.compare()?;
//! assert!(check.agree, "{check:?}");
//! assert_eq!((check.source_count, check.destination_count), (1, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::background::{Sleeper, ThreadSleeper};
use crate::clock::{Clock, SystemClock};
use crate::durable;
use crate::error::StepError;

/// Crash point (see [`crate::crash_point`]): a page was read; none of its writes is done.
pub const CRASH_BEFORE_PAGE_WRITES: &str = "side_by_side::before_page_writes";
/// Crash point: a page's writes are done; the high-water mark is not persisted yet.
pub const CRASH_PAGE_WRITTEN: &str = "side_by_side::page_written";
/// Crash point: the high-water mark after a page is persisted.
pub const CRASH_MARK_SAVED: &str = "side_by_side::mark_saved";

/// Every crash point of a side-by-side pass, in the order a page passes them.
pub const CRASH_POINTS: &[&str] = &[
    CRASH_BEFORE_PAGE_WRITES,
    CRASH_PAGE_WRITTEN,
    CRASH_MARK_SAVED,
];

/// The default overlap window: each pass re-reads the last 5 s before the mark.
pub const DEFAULT_OVERLAP_WINDOW: Duration = Duration::from_secs(5);

/// One version of an entity, or its tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entity {
    /// Its identity.
    pub id: String,
    /// Its version: increases with every update (and with its deletion), comparable
    /// between the source and the destination.
    pub version: u64,
    /// When this version was written (ms since the epoch, on the writer's clock).
    pub updated_ms: u64,
    /// Its content (`null` for a tombstone).
    pub data: Value,
    /// Whether this is the authoritative copy (a source holding replicas lists the
    /// others too; they are not copied).
    pub authoritative: bool,
    /// Whether this is a tombstone: the entity was deleted at `updated_ms`.
    #[serde(default)]
    pub deleted: bool,
}

impl Entity {
    /// An authoritative, live entity version.
    pub fn new(id: impl Into<String>, version: u64, updated_ms: u64, data: Value) -> Self {
        Self {
            id: id.into(),
            version,
            updated_ms,
            data,
            authoritative: true,
            deleted: false,
        }
    }

    /// The tombstone of entity `id`, deleted at `updated_ms` as version `version`.
    pub fn tombstone(id: impl Into<String>, version: u64, updated_ms: u64) -> Self {
        Self {
            deleted: true,
            ..Self::new(id, version, updated_ms, Value::Null)
        }
    }

    /// The same entity marked as a replica (not authoritative).
    #[must_use]
    pub fn replica(mut self) -> Self {
        self.authoritative = false;
        self
    }

    /// Its position in `(updated_ms, id)` order.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            updated_ms: self.updated_ms,
            id: self.id.clone(),
        }
    }
}

/// A position in `(updated_ms, id)` order: a page starts after it; the high-water mark
/// is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    /// An update time (ms).
    pub updated_ms: u64,
    /// An id.
    pub id: String,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms/{:?}", self.updated_ms, self.id)
    }
}

/// A request for one page of entities.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageRequest {
    /// Only entities updated (or deleted) at or after this time (inclusive).
    pub updated_since_ms: u64,
    /// Only entities after this one in `(updated_ms, id)` order.
    pub after: Option<Cursor>,
    /// At most this many.
    pub limit: usize,
}

impl PageRequest {
    /// A request; see the fields.
    pub fn new(updated_since_ms: u64, after: Option<Cursor>, limit: usize) -> Self {
        Self {
            updated_since_ms,
            after,
            limit,
        }
    }

    /// Whether `entity` belongs after this request's start.
    pub fn admits(&self, entity: &Entity) -> bool {
        entity.updated_ms >= self.updated_since_ms
            && self.after.as_ref().is_none_or(|c| {
                (entity.updated_ms, entity.id.as_str()) > (c.updated_ms, c.id.as_str())
            })
    }
}

/// One page of entities, ordered by `(updated_ms, id)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// The entities (their current version or tombstone; replicas included, if the
    /// source has any).
    pub entities: Vec<Entity>,
    /// Where the next page starts; `None` on the last page. A source must never stop
    /// early without it: a page shorter than asked with a `next` is fine, a missing
    /// `next` says the listing is complete.
    pub next: Option<Cursor>,
}

/// One page of live entities in id order (the cut-over comparison).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IdPage {
    /// Live entities (no tombstones, no replicas), in id order.
    pub entities: Vec<Entity>,
    /// The id to list after for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// What a conditional write did to one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// The version (or tombstone) was stored.
    Written,
    /// The destination holds this version, at or above the one offered: nothing written.
    NotNewer {
        /// The version held.
        held_version: u64,
    },
    /// This entity's write failed (the others of the call may have succeeded).
    Failed(String),
}

/// A failure of a side-by-side source, destination or mark store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SideBySideError {
    /// The source failed.
    #[error("source {location}: {operation} failed: {reason}")]
    Source {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The destination failed.
    #[error("destination {location}: {operation} failed: {reason}")]
    Destination {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The high-water mark could not be loaded or saved.
    #[error("high-water mark {location}: {operation} failed: {reason}")]
    Mark {
        /// Where.
        location: String,
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// The options are invalid.
    #[error("side-by-side migration: invalid options: {0}")]
    InvalidOptions(String),
}

/// The old side: lists entities and tombstones in `(updated_ms, id)` order and live
/// entities in id order.
pub trait EntitySource: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> String;

    /// Current versions and tombstones of entities updated (or deleted) at or after
    /// `request.updated_since_ms`, ordered by `(updated_ms, id)`, after `request.after`,
    /// at most `request.limit`, with a [`Page::next`] whenever more follow.
    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError>;

    /// Live, authoritative entities with an id above `after`, in id order, at most
    /// `limit` (for [`SideBySideMigration::compare`]).
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError>;

    /// Every version of entity `id`, oldest first (for
    /// [`with_history`](SideBySideBuilder::with_history)). By default: refused, the
    /// source keeps no history.
    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError> {
        Err(SideBySideError::Source {
            location: self.location(),
            operation: "history",
            reason: format!("this source keeps no history of {id:?}"),
        })
    }
}

/// The new side.
pub trait EntityDestination: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> String;

    /// Stores each entity version (a tombstone deletes the entity and is kept) keeping
    /// its version and update time, each only if the destination holds no version of
    /// it at or above the one offered, atomically per entity. Answers one outcome per
    /// entity, in order; an `Err` fails them all.
    fn write(&self, entities: &[Entity]) -> Result<Vec<PutOutcome>, SideBySideError>;

    /// Live entities with an id above `after`, in id order, at most `limit`.
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError>;
}

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
/// use layout_core::migration::side_by_side::{Cursor, FileHighWaterMark, HighWaterMarkStore};
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

/// Why a run stopped before the source was exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The deadline passed.
    Deadline,
    /// [`StopSignal::stop`] was called.
    Stopped,
}

/// A failed entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityFailure {
    /// The entity.
    pub id: String,
    /// The version that failed.
    pub version: u64,
    /// Why.
    pub reason: String,
}

/// What a pass (or a continuous run) did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SideBySideReport {
    /// Entity versions written to the destination (tombstones not included).
    pub copied: u64,
    /// Tombstones written to the destination (deletes propagated).
    pub deleted: u64,
    /// Entity versions the destination already held at the same or a newer version
    /// (re-read by the overlap window, or newer in the destination): not written.
    pub skipped: u64,
    /// Tombstones left unapplied ([`propagate_deletes(false)`](SideBySideBuilder::propagate_deletes)).
    pub tombstones_ignored: u64,
    /// Entity versions passed through the transform.
    pub transformed: u64,
    /// Entity versions that failed (transform or destination error).
    pub failed: u64,
    /// Entities the filter left out.
    pub filtered: u64,
    /// Replicas (non-authoritative copies) left out.
    pub replicas: u64,
    /// Pages read.
    pub pages: u64,
    /// Passes run.
    pub passes: u64,
    /// The mark the first pass resumed from (loaded from the mark store), if any.
    pub resumed_from: Option<Cursor>,
    /// The high-water mark after the run.
    pub high_water_mark: Option<Cursor>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<StopReason>,
    /// The failures (at most [`MAX_FAILURES_KEPT`]).
    pub failures: Vec<EntityFailure>,
}

/// At most this many failures are kept in a report (the count is exact).
pub const MAX_FAILURES_KEPT: usize = 100;

impl SideBySideReport {
    fn absorb(&mut self, other: SideBySideReport) {
        self.copied += other.copied;
        self.deleted += other.deleted;
        self.skipped += other.skipped;
        self.tombstones_ignored += other.tombstones_ignored;
        self.transformed += other.transformed;
        self.failed += other.failed;
        self.filtered += other.filtered;
        self.replicas += other.replicas;
        self.pages += other.pages;
        self.passes += other.passes;
        if self.resumed_from.is_none() && self.passes == other.passes {
            self.resumed_from = other.resumed_from;
        }
        if other.high_water_mark.is_some() {
            self.high_water_mark = other.high_water_mark;
        }
        self.stopped = other.stopped.or(self.stopped);
        self.failure(other.failures);
    }

    fn failure(&mut self, failures: Vec<EntityFailure>) {
        for f in failures {
            if self.failures.len() < MAX_FAILURES_KEPT {
                self.failures.push(f);
            }
        }
    }
}

/// Progress after one page, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageProgress {
    /// The pass (1-based, within this run).
    pub pass: u64,
    /// Entities listed by this pass so far.
    pub listed: u64,
    /// The pass's report so far.
    pub report: SideBySideReport,
}

/// The cut-over check: does the destination equal the transform of the source?
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CutOverReport {
    /// Live entities in the source (authoritative, kept by the filter).
    pub source_count: u64,
    /// Live entities in the destination.
    pub destination_count: u64,
    /// Source entities absent from the destination.
    pub missing: u64,
    /// Destination entities absent from the source.
    pub extra: u64,
    /// Entities on both sides whose destination data differs from the transformed source.
    pub differing: u64,
    /// Source entities whose transform failed.
    pub transform_failed: u64,
    /// SHA-256 (hex) over the transformed source entities, in id order.
    pub source_digest: String,
    /// SHA-256 (hex) over the destination entities, in id order.
    pub destination_digest: String,
    /// Whether both sides agree: nothing missing, extra, differing or failed, and equal
    /// counts and digests.
    pub agree: bool,
    /// Up to [`MAX_FAILURES_KEPT`] ids that disagree, with how.
    pub examples: Vec<String>,
}

/// Stops a continuous run (between pages), from any thread.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    stopped: Arc<AtomicBool>,
}

impl StopSignal {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

type Transform = Arc<dyn Fn(Entity) -> Result<Entity, StepError> + Send + Sync>;
type Filter = Arc<dyn Fn(&Entity) -> bool + Send + Sync>;
type OnPage = Arc<dyn Fn(&PageProgress) + Send + Sync>;

/// Builds a [`SideBySideMigration`]; see [`SideBySideMigration::builder`].
pub struct SideBySideBuilder {
    source: Arc<dyn EntitySource>,
    destination: Arc<dyn EntityDestination>,
    marks: Arc<dyn HighWaterMarkStore>,
    page_size: usize,
    transform: Option<Transform>,
    filter: Option<Filter>,
    on_page: Option<OnPage>,
    history: bool,
    propagate_deletes: bool,
    overlap_window: Duration,
    deadline: Option<SystemTime>,
    max_concurrent: usize,
    clock: Arc<dyn Clock>,
    sleeper: Arc<dyn Sleeper>,
    poll_interval: Duration,
}

impl SideBySideBuilder {
    /// Entities per page (default 500).
    #[must_use]
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }

    /// Rewrites each live entity version on its way (its id must stay; tombstones are
    /// not transformed).
    #[must_use]
    pub fn transform(
        mut self,
        transform: impl Fn(Entity) -> Result<Entity, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.transform = Some(Arc::new(transform));
        self
    }

    /// Copies only the live entities for which `filter` is true (tombstones carry no
    /// data and always pass: deleting what was never copied is harmless).
    #[must_use]
    pub fn filter(mut self, filter: impl Fn(&Entity) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Called after every page (a progress bar).
    #[must_use]
    pub fn on_page(mut self, on_page: impl Fn(&PageProgress) + Send + Sync + 'static) -> Self {
        self.on_page = Some(Arc::new(on_page));
        self
    }

    /// Where the high-water mark is kept between runs (default: in memory, lost with
    /// the process). A run starts from the mark found there.
    #[must_use]
    pub fn high_water_marks(mut self, marks: Arc<dyn HighWaterMarkStore>) -> Self {
        self.marks = marks;
        self
    }

    /// How far before the mark each pass re-reads (default [`DEFAULT_OVERLAP_WINDOW`]);
    /// see the [module docs](self). Zero re-reads only the mark's own millisecond.
    #[must_use]
    pub fn overlap_window(mut self, window: Duration) -> Self {
        self.overlap_window = window;
        self
    }

    /// Whether tombstones delete entities in the destination (default true).
    #[must_use]
    pub fn propagate_deletes(mut self, propagate: bool) -> Self {
        self.propagate_deletes = propagate;
        self
    }

    /// Copies every version of each entity, oldest first, instead of the current one
    /// (the source must keep a [history](EntitySource::history)).
    #[must_use]
    pub fn with_history(mut self, history: bool) -> Self {
        self.history = history;
        self
    }

    /// Stops (between entities) once the clock passes `deadline`.
    #[must_use]
    pub fn deadline(mut self, deadline: SystemTime) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Splits a page into at most this many destination writes run at once (default 1).
    #[must_use]
    pub fn max_concurrent(mut self, max_concurrent: usize) -> Self {
        self.max_concurrent = max_concurrent;
        self
    }

    /// The clock for the deadline (default: the system clock).
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How a continuous run waits between passes (default: [`ThreadSleeper`]).
    #[must_use]
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// How long a continuous run waits between passes (default 1 s).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Checks the options and builds the migration.
    pub fn build(self) -> Result<SideBySideMigration, SideBySideError> {
        if self.page_size == 0 {
            return Err(SideBySideError::InvalidOptions("the page size is 0".into()));
        }
        if self.max_concurrent == 0 {
            return Err(SideBySideError::InvalidOptions(
                "the bound on concurrent copies is 0".into(),
            ));
        }
        if u64::try_from(self.overlap_window.as_millis()).is_err() {
            return Err(SideBySideError::InvalidOptions(format!(
                "the overlap window {:?} is too long",
                self.overlap_window
            )));
        }
        Ok(SideBySideMigration { options: self })
    }
}

impl fmt::Debug for SideBySideBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideBySideBuilder")
            .field("source", &self.source.location())
            .field("destination", &self.destination.location())
            .field("marks", &self.marks.location())
            .field("page_size", &self.page_size)
            .field("overlap_window", &self.overlap_window)
            .field("propagate_deletes", &self.propagate_deletes)
            .field("history", &self.history)
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

/// Copies entities from an old deployment to a new one; see the [module docs](self).
pub struct SideBySideMigration {
    options: SideBySideBuilder,
}

/// What happened to one listed entity, for the mark.
#[derive(Clone, Copy)]
enum Outcome {
    Done,
    Failed,
    NotRun,
}

impl SideBySideMigration {
    /// A builder copying from `source` to `destination`.
    pub fn builder(
        source: Arc<dyn EntitySource>,
        destination: Arc<dyn EntityDestination>,
    ) -> SideBySideBuilder {
        SideBySideBuilder {
            source,
            destination,
            marks: Arc::new(MemoryHighWaterMark::new()),
            page_size: 500,
            transform: None,
            filter: None,
            on_page: None,
            history: false,
            propagate_deletes: true,
            overlap_window: DEFAULT_OVERLAP_WINDOW,
            deadline: None,
            max_concurrent: 1,
            clock: Arc::new(SystemClock),
            sleeper: Arc::new(ThreadSleeper),
            poll_interval: Duration::from_secs(1),
        }
    }

    /// The high-water mark in the mark store.
    pub fn high_water_mark(&self) -> Result<Option<Cursor>, SideBySideError> {
        self.options.marks.load()
    }

    /// One pass: every entity and tombstone from the mark minus the overlap window on.
    pub fn run_pass(&self) -> Result<SideBySideReport, SideBySideError> {
        self.pass(None, 1)
    }

    /// Passes until `stop` is given (or the deadline passes), waiting the poll interval
    /// between passes. Each pass starts from the persisted mark.
    pub fn run_continuous(&self, stop: &StopSignal) -> Result<SideBySideReport, SideBySideError> {
        let mut total = SideBySideReport::default();
        let mut n = 0;
        loop {
            if stop.is_stopped() {
                total.stopped = Some(StopReason::Stopped);
                break;
            }
            n += 1;
            let report = self.pass(Some(stop), n)?;
            let stopped = report.stopped;
            total.absorb(report);
            if stopped.is_some() {
                break;
            }
            self.options.sleeper.sleep(self.options.poll_interval);
        }
        Ok(total)
    }

    fn deadline_passed(&self) -> bool {
        self.options
            .deadline
            .is_some_and(|d| self.options.clock.now() >= d)
    }

    fn pass(&self, stop: Option<&StopSignal>, n: u64) -> Result<SideBySideReport, SideBySideError> {
        let o = &self.options;
        let saved = o.marks.load()?;
        let window_ms = u64::try_from(o.overlap_window.as_millis()).unwrap_or(u64::MAX);
        let since = saved
            .as_ref()
            .map_or(0, |m| m.updated_ms.saturating_sub(window_ms));
        let mut report = SideBySideReport {
            passes: 1,
            resumed_from: saved.clone(),
            ..SideBySideReport::default()
        };
        let mut listed = 0;
        let mut after: Option<Cursor> = None;
        // The mark advances over a prefix of entities handled without failure, never
        // backwards (the window re-reads below it).
        let mut mark = saved;
        let mut mark_stuck = false;
        loop {
            if stop.is_some_and(StopSignal::is_stopped) {
                report.stopped = Some(StopReason::Stopped);
                break;
            }
            if self.deadline_passed() {
                report.stopped = Some(StopReason::Deadline);
                break;
            }
            let page = o
                .source
                .list(&PageRequest::new(since, after.clone(), o.page_size))?;
            report.pages += 1;
            listed += page.entities.len() as u64;
            crate::crash_point::hit(CRASH_BEFORE_PAGE_WRITES);
            let outcomes = self.copy_page(&page.entities, &mut report);
            crate::crash_point::hit(CRASH_PAGE_WRITTEN);
            let mut candidate = None;
            for (entity, outcome) in page.entities.iter().zip(&outcomes) {
                match outcome {
                    Outcome::Done if !mark_stuck => candidate = Some(entity.cursor()),
                    Outcome::Done => {}
                    Outcome::Failed | Outcome::NotRun => mark_stuck = true,
                }
            }
            if let Some(candidate) = candidate {
                if mark.as_ref().is_none_or(|m| candidate > *m) {
                    o.marks.save(&candidate)?;
                    crate::crash_point::hit(CRASH_MARK_SAVED);
                    mark = Some(candidate);
                }
            }
            report.high_water_mark.clone_from(&mark);
            if let Some(on_page) = &o.on_page {
                on_page(&PageProgress {
                    pass: n,
                    listed,
                    report: report.clone(),
                });
            }
            if outcomes.iter().any(|o| matches!(o, Outcome::NotRun)) {
                report.stopped = Some(StopReason::Deadline);
                break;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        report.high_water_mark = mark;
        tracing::info!(
            target: "layout_core::migration",
            source = %o.source.location(),
            destination = %o.destination.location(),
            copied = report.copied,
            deleted = report.deleted,
            skipped = report.skipped,
            failed = report.failed,
            high_water_mark = ?report.high_water_mark,
            "side-by-side pass done"
        );
        Ok(report)
    }

    /// Prepares and writes one page; one outcome per listed entity.
    fn copy_page(&self, entities: &[Entity], report: &mut SideBySideReport) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Done; entities.len()];
        let mut writes = self.prepare_page(entities, &mut outcomes, report);
        // Entities whose preparation failed are not written at all.
        writes.retain(|(i, _)| matches!(outcomes[*i], Outcome::Done));
        self.write_page(&writes, &mut outcomes, report);
        outcomes
    }

    /// What to write for each entity of a page: `(index in the page, version)`, in order.
    fn prepare_page(
        &self,
        entities: &[Entity],
        outcomes: &mut [Outcome],
        report: &mut SideBySideReport,
    ) -> Vec<(usize, Entity)> {
        let o = &self.options;
        // (index in the page, version to write)
        let mut writes: Vec<(usize, Entity)> = Vec::new();
        for (i, entity) in entities.iter().enumerate() {
            if self.deadline_passed() {
                outcomes[i] = Outcome::NotRun;
                continue;
            }
            if !entity.authoritative {
                report.replicas += 1;
                continue;
            }
            if !entity.deleted && o.filter.as_ref().is_some_and(|f| !f(entity)) {
                report.filtered += 1;
                continue;
            }
            if entity.deleted {
                if o.propagate_deletes {
                    writes.push((i, entity.clone()));
                } else {
                    report.tombstones_ignored += 1;
                }
                continue;
            }
            let versions = if o.history {
                match o.source.history(&entity.id) {
                    Ok(versions) => versions,
                    Err(e) => {
                        Self::fail(report, entity, entity.version, e.to_string());
                        outcomes[i] = Outcome::Failed;
                        continue;
                    }
                }
            } else {
                vec![entity.clone()]
            };
            for version in versions {
                if version.deleted {
                    writes.push((i, version));
                    continue;
                }
                match self.transformed(version, report) {
                    Ok(v) => writes.push((i, v)),
                    Err((number, reason)) => {
                        Self::fail(report, entity, number, reason);
                        outcomes[i] = Outcome::Failed;
                    }
                }
            }
        }
        writes
    }

    /// Writes a page's versions, in at most `max_concurrent` calls at once.
    fn write_page(
        &self,
        writes: &[(usize, Entity)],
        outcomes: &mut [Outcome],
        report: &mut SideBySideReport,
    ) {
        let o = &self.options;
        let chunks = o.max_concurrent.min(writes.len()).max(1);
        let chunk_len = writes.len().div_ceil(chunks).max(1);
        let results: Mutex<BTreeMap<usize, Result<Vec<PutOutcome>, String>>> =
            Mutex::new(BTreeMap::new());
        let slices: Vec<&[(usize, Entity)]> = writes.chunks(chunk_len).collect();
        let next = AtomicUsize::new(0);
        let work = || loop {
            let c = next.fetch_add(1, Ordering::SeqCst);
            let Some(slice) = slices.get(c) else { break };
            let batch: Vec<Entity> = slice.iter().map(|(_, e)| e.clone()).collect();
            let result = match o.destination.write(&batch) {
                Ok(out) if out.len() == batch.len() => Ok(out),
                Ok(out) => Err(format!(
                    "the destination answered {} outcomes for {} entities",
                    out.len(),
                    batch.len()
                )),
                Err(e) => Err(e.to_string()),
            };
            results.lock().insert(c, result);
        };
        if slices.len() <= 1 {
            work();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..slices.len() {
                    scope.spawn(work);
                }
            });
        }
        for (c, result) in results.into_inner() {
            let slice = slices[c];
            match result {
                Ok(out) => {
                    for ((i, entity), outcome) in slice.iter().zip(out) {
                        match outcome {
                            PutOutcome::Written if entity.deleted => report.deleted += 1,
                            PutOutcome::Written => report.copied += 1,
                            PutOutcome::NotNewer { .. } => report.skipped += 1,
                            PutOutcome::Failed(reason) => {
                                Self::fail(report, entity, entity.version, reason);
                                outcomes[*i] = Outcome::Failed;
                            }
                        }
                    }
                }
                Err(reason) => {
                    for (i, entity) in slice {
                        Self::fail(report, entity, entity.version, reason.clone());
                        outcomes[*i] = Outcome::Failed;
                    }
                }
            }
        }
    }

    fn fail(report: &mut SideBySideReport, entity: &Entity, version: u64, reason: String) {
        report.failed += 1;
        report.failure(vec![EntityFailure {
            id: entity.id.clone(),
            version,
            reason,
        }]);
    }

    /// `version` through the transform (counted), or why it failed.
    fn transformed(
        &self,
        version: Entity,
        report: &mut SideBySideReport,
    ) -> Result<Entity, (u64, String)> {
        let Some(t) = &self.options.transform else {
            return Ok(version);
        };
        report.transformed += 1;
        let (id, number) = (version.id.clone(), version.version);
        match t(version) {
            Ok(v) if v.id == id => Ok(v),
            Ok(v) => Err((
                number,
                format!("the transform changed the id to {:?}", v.id),
            )),
            Err(e) => Err((number, format!("transform failed: {e}"))),
        }
    }

    /// The cut-over check: pages the source and the destination in id order, side by
    /// side (two pages in memory at a time), and compares the destination with the
    /// transform of the source. Replicas and entities the filter leaves out are not
    /// counted on the source side.
    pub fn compare(&self) -> Result<CutOverReport, SideBySideError> {
        let o = &self.options;
        let mut report = CutOverReport::default();
        let (mut src_digest, mut dst_digest) = (Sha256::new(), Sha256::new());
        let mut src = IdCursor::new(|after| o.source.scan(after, o.page_size));
        let mut dst = IdCursor::new(|after| o.destination.scan(after, o.page_size));
        let example = |report: &mut CutOverReport, what: String| {
            if report.examples.len() < MAX_FAILURES_KEPT {
                report.examples.push(what);
            }
        };
        loop {
            let s = loop {
                match src.peek()? {
                    Some(e)
                        if !e.authoritative
                            || e.deleted
                            || o.filter.as_ref().is_some_and(|f| !f(e)) =>
                    {
                        src.advance();
                    }
                    other => break other.cloned(),
                }
            };
            let d = dst.peek()?.cloned();
            let take_source = match (&s, &d) {
                (None, None) => break,
                (Some(s), Some(d)) => s.id <= d.id,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if let (true, Some(s)) = (take_source, s) {
                src.advance();
                report.source_count += 1;
                let want = self
                    .transformed(s.clone(), &mut SideBySideReport::default())
                    .ok();
                match &want {
                    Some(w) => digest(&mut src_digest, w),
                    None => report.transform_failed += 1,
                }
                match d.filter(|d| d.id == s.id) {
                    None => {
                        report.missing += 1;
                        example(
                            &mut report,
                            format!("{:?}: missing in the destination", s.id),
                        );
                    }
                    Some(d) => {
                        dst.advance();
                        report.destination_count += 1;
                        digest(&mut dst_digest, &d);
                        if want.is_some_and(|w| w.data != d.data) {
                            report.differing += 1;
                            example(&mut report, format!("{:?}: differs", d.id));
                        }
                    }
                }
            } else if let Some(d) = d {
                dst.advance();
                report.destination_count += 1;
                digest(&mut dst_digest, &d);
                report.extra += 1;
                example(&mut report, format!("{:?}: not in the source", d.id));
            }
        }
        report.source_digest = hex(&src_digest.finalize());
        report.destination_digest = hex(&dst_digest.finalize());
        report.agree = report.missing == 0
            && report.extra == 0
            && report.differing == 0
            && report.transform_failed == 0
            && report.source_count == report.destination_count
            && report.source_digest == report.destination_digest;
        Ok(report)
    }
}

/// Feeds one entity (id and data, length-prefixed) to a digest.
fn digest(hasher: &mut Sha256, entity: &Entity) {
    let data = serde_json::to_vec(&entity.data).unwrap_or_default();
    hasher.update((entity.id.len() as u64).to_be_bytes());
    hasher.update(entity.id.as_bytes());
    hasher.update((data.len() as u64).to_be_bytes());
    hasher.update(&data);
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Walks an id-ordered listing page by page.
struct IdCursor<F> {
    fetch: F,
    page: std::vec::IntoIter<Entity>,
    head: Option<Entity>,
    /// Where the next page starts (`None`: the first page).
    after: Option<String>,
    /// Whether the last page was read.
    done: bool,
}

impl<F: FnMut(Option<&str>) -> Result<IdPage, SideBySideError>> IdCursor<F> {
    fn new(fetch: F) -> Self {
        Self {
            fetch,
            page: Vec::new().into_iter(),
            head: None,
            after: None,
            done: false,
        }
    }

    fn peek(&mut self) -> Result<Option<&Entity>, SideBySideError> {
        while self.head.is_none() {
            if let Some(e) = self.page.next() {
                self.head = Some(e);
                break;
            }
            if self.done {
                break;
            }
            let page = (self.fetch)(self.after.as_deref())?;
            self.done = page.next.is_none();
            self.after = page.next;
            self.page = page.entities.into_iter();
        }
        Ok(self.head.as_ref())
    }

    fn advance(&mut self) {
        self.head = None;
    }
}

impl fmt::Debug for SideBySideMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideBySideMigration")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Several sources read as one (a sharded blue: each shard one source, keys disjoint):
/// pages merge in `(updated_ms, id)` order, so one mark covers all shards, and shards
/// whose clocks disagree are covered by the overlap window.
pub struct MergedSource {
    sources: Vec<Arc<dyn EntitySource>>,
}

impl MergedSource {
    /// The sources, read as one.
    pub fn new(sources: Vec<Arc<dyn EntitySource>>) -> Self {
        Self { sources }
    }
}

impl fmt::Debug for MergedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedSource")
            .field("sources", &self.location())
            .finish()
    }
}

impl EntitySource for MergedSource {
    fn location(&self) -> String {
        let all: Vec<String> = self.sources.iter().map(|s| s.location()).collect();
        all.join("+")
    }

    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError> {
        let mut all = Vec::new();
        let mut more = false;
        for source in &self.sources {
            let page = source.list(request)?;
            more |= page.next.is_some();
            all.extend(page.entities);
        }
        all.sort_by(|a, b| (a.updated_ms, &a.id).cmp(&(b.updated_ms, &b.id)));
        more |= all.len() > request.limit;
        all.truncate(request.limit);
        // Each source answered its first entities after the cursor, so the first
        // `limit` of the merge are the first `limit` overall.
        let next = if more {
            all.last()
                .map(Entity::cursor)
                .or_else(|| request.after.clone())
        } else {
            None
        };
        Ok(Page {
            entities: all,
            next,
        })
    }

    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        let mut all = Vec::new();
        let mut more = false;
        for source in &self.sources {
            let page = source.scan(after, limit)?;
            more |= page.next.is_some();
            all.extend(page.entities);
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        more |= all.len() > limit;
        all.truncate(limit);
        let next = if more {
            all.last()
                .map(|e| e.id.clone())
                .or_else(|| after.map(str::to_owned))
        } else {
            None
        };
        Ok(IdPage {
            entities: all,
            next,
        })
    }

    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError> {
        for source in &self.sources {
            let versions = source.history(id)?;
            if !versions.is_empty() {
                return Ok(versions);
            }
        }
        Ok(Vec::new())
    }
}

/// Entities in memory, with their history and tombstones: a source (listing replicas
/// too, if added) and a destination. For tests and examples.
#[derive(Debug, Default)]
pub struct MemoryEntityStore {
    inner: Mutex<EntityInner>,
}

#[derive(Debug, Default)]
struct EntityInner {
    /// id -> versions, oldest first (the last may be a tombstone).
    entities: BTreeMap<String, Vec<Entity>>,
    replicas: Vec<Entity>,
    writes: u64,
}

impl MemoryEntityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a version of an entity (its history grows), unconditionally.
    pub fn upsert(&self, entity: Entity) {
        self.inner
            .lock()
            .entities
            .entry(entity.id.clone())
            .or_default()
            .push(entity);
    }

    /// Deletes `id`: its tombstone becomes its current version.
    pub fn delete(&self, id: &str, version: u64, updated_ms: u64) {
        self.upsert(Entity::tombstone(id, version, updated_ms));
    }

    /// Adds a replica copy, listed by the source but not authoritative.
    pub fn add_replica(&self, entity: Entity) {
        self.inner.lock().replicas.push(entity.replica());
    }

    /// The current live version of `id` (`None` if absent or deleted).
    pub fn get(&self, id: &str) -> Option<Entity> {
        self.inner
            .lock()
            .entities
            .get(id)
            .and_then(|v| v.last().cloned())
            .filter(|e| !e.deleted)
    }

    /// Every version of `id`, oldest first (tombstones included).
    pub fn versions(&self, id: &str) -> Vec<Entity> {
        self.inner
            .lock()
            .entities
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// The current version of every live entity, by id.
    pub fn current_entities(&self) -> BTreeMap<String, Entity> {
        self.inner
            .lock()
            .entities
            .iter()
            .filter_map(|(id, v)| {
                v.last()
                    .filter(|e| !e.deleted)
                    .map(|e| (id.clone(), e.clone()))
            })
            .collect()
    }

    /// How many versions it stored as a destination.
    pub fn writes(&self) -> u64 {
        self.inner.lock().writes
    }
}

impl EntitySource for MemoryEntityStore {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError> {
        let inner = self.inner.lock();
        let mut all: Vec<&Entity> = inner
            .entities
            .values()
            .filter_map(|v| v.last())
            .chain(inner.replicas.iter())
            .filter(|e| request.admits(e))
            .collect();
        // Replicas sort after the authoritative copy with the same position.
        all.sort_by(|a, b| {
            (a.updated_ms, &a.id, !a.authoritative).cmp(&(b.updated_ms, &b.id, !b.authoritative))
        });
        let more = all.len() > request.limit;
        all.truncate(request.limit);
        let next = if more {
            all.last().map(|e| e.cursor())
        } else {
            None
        };
        Ok(Page {
            entities: all.into_iter().cloned().collect(),
            next,
        })
    }

    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        let inner = self.inner.lock();
        let start = after.map_or(std::ops::Bound::Unbounded, |a| {
            std::ops::Bound::Excluded(a.to_owned())
        });
        let mut page = IdPage::default();
        for (id, versions) in inner.entities.range((start, std::ops::Bound::Unbounded)) {
            let Some(current) = versions.last().filter(|e| !e.deleted) else {
                continue;
            };
            if page.entities.len() == limit {
                page.next = page.entities.last().map(|e| e.id.clone());
                break;
            }
            debug_assert_eq!(id, &current.id);
            page.entities.push(current.clone());
        }
        Ok(page)
    }

    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError> {
        Ok(self.versions(id))
    }
}

impl EntityDestination for MemoryEntityStore {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn write(&self, entities: &[Entity]) -> Result<Vec<PutOutcome>, SideBySideError> {
        let mut inner = self.inner.lock();
        Ok(entities
            .iter()
            .map(|entity| {
                let versions = inner.entities.entry(entity.id.clone()).or_default();
                match versions.last() {
                    Some(held) if held.version >= entity.version => PutOutcome::NotNewer {
                        held_version: held.version,
                    },
                    _ => {
                        versions.push(entity.clone());
                        inner.writes += 1;
                        PutOutcome::Written
                    }
                }
            })
            .collect())
    }

    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        EntitySource::scan(self, after, limit)
    }
}
