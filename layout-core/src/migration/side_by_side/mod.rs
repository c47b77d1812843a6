//! Side-by-side migration: a new deployment ("green") filled from an old one ("blue").

// Where things are: `entity` (Entity, Cursor, pages, PutOutcome), `error`, `sides` (the
// source and destination traits, MergedSource), `high_water_mark` (the mark stores),
// `report` (pass, page and cut-over reports), `builder`, `pass` (one pass, page by page),
// `compare` (the cut-over check), `memory_store` (MemoryEntityStore). This module holds
// the migration itself, its public methods and the StopSignal of a continuous run.

mod builder;
mod compare;
mod entity;
mod error;
mod high_water_mark;
mod memory_store;
mod pass;
mod report;
mod sides;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use builder::SideBySideBuilder;
pub use entity::{Cursor, Entity, IdPage, Page, PageRequest, PutOutcome};
pub use error::SideBySideError;
pub use high_water_mark::{FileHighWaterMark, HighWaterMarkStore, MemoryHighWaterMark};
pub use memory_store::MemoryEntityStore;
pub use report::{
    CutOverReport, EntityFailure, PageProgress, SideBySideReport, StopReason, MAX_FAILURES_KEPT,
};
pub use sides::{EntityDestination, EntitySource, MergedSource};

use crate::clock::{Sleeper, SystemClock, ThreadSleeper};

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

/// Copies entities from an old deployment to a new one; see the overview below.
///
/// # Overview
///
/// Side-by-side migration: fill a new deployment ("green") from an old one ("blue"),
/// entity by entity, while blue keeps taking writes, until cut-over.
///
/// A [`SideBySideMigration`] lists entities from an [`EntitySource`] in pages ordered by
/// `(updated_ms, id)`, from its high-water mark, and hands each page to an
/// [`EntityDestination`], optionally transformed and filtered:
///
/// - **Deletes propagate.** A source lists a deleted entity as a *tombstone*
///   ([`Entity::tombstone`], `deleted: true`) at the time of its deletion, in the same
///   `(updated_ms, id)` order as live entities: a store that keeps tombstones lists them,
///   a store with a change feed lists its delete events. The destination applies a
///   tombstone the conditional way it applies a write (and keeps it, so an older write
///   read late cannot resurrect the entity). [`propagate_deletes(false)`](SideBySideBuilder::propagate_deletes)
///   counts tombstones without applying them.
/// - **Writes are conditional.** [`EntityDestination::write`] stores a version only if
///   the destination holds no version of the entity at or above it (a tombstone counts),
///   atomically per entity; otherwise it answers [`PutOutcome::NotNewer`], counted as
///   `skipped`. So a rerun is idempotent and green may already take writes of its own: a
///   newer entity there is never overwritten.
/// - **The high-water mark is persisted** through a [`HighWaterMarkStore`] after every
///   page (in the destination, a file, a document store): a copier restarted after a
///   crash resumes from it ([`SideBySideReport::resumed_from`]). The mark only advances
///   over entities handled without failure, so a failed entity is retried.
/// - **An overlap window** ([`overlap_window`](SideBySideBuilder::overlap_window),
///   default [`DEFAULT_OVERLAP_WINDOW`]) makes every pass re-read from the mark minus the
///   window: a commit that became visible late with an earlier update time, or a source
///   node whose clock runs behind another's ([`MergedSource`]), is still copied; what was
///   copied already comes back as `skipped`. The window must exceed the worst clock skew
///   between source nodes plus the longest commit delay.
/// - **Cut-over check.** [`compare`](SideBySideMigration::compare) pages both sides in id
///   order (memory bounded by two pages) and reports whether green equals the transform
///   of blue: counts, missing, extra and differing entities, and a SHA-256 digest of each
///   side.
///
/// Every page passes the crash points of [`CRASH_POINTS`] (see [`crate::crash_point`]).
///
/// ```
/// use std::sync::Arc;
/// use layout_core::migration::{Entity, MemoryEntityStore, SideBySideMigration};
/// use serde_json::json;
///
/// let blue = Arc::new(MemoryEntityStore::new());
/// blue.upsert(Entity::new("job-1", 1, 100, json!({"cron": "* * * * *"})));
/// blue.upsert(Entity::new("job-2", 1, 200, json!({"cron": "0 * * * *"})));
/// let green = Arc::new(MemoryEntityStore::new());
/// let migration = SideBySideMigration::builder(blue.clone(), green.clone())
///     .transform(|mut e| { e.data["schema"] = json!(2); Ok(e) })
///     .build()?;
/// let first = migration.run_pass()?;
/// assert_eq!((first.copied, first.transformed), (2, 2));
/// blue.delete("job-1", 2, 300);                 // a tombstone
/// let second = migration.run_pass()?;           // the window re-reads; nothing twice
/// assert_eq!((second.copied, second.deleted, second.skipped), (0, 1, 1));
/// let check = migration.compare()?;
/// assert!(check.agree, "{check:?}");
/// assert_eq!((check.source_count, check.destination_count), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SideBySideMigration {
    options: SideBySideBuilder,
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
}

impl fmt::Debug for SideBySideMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideBySideMigration")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}
