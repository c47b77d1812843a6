//! Side-by-side migration: fill a new deployment from an old one, entity by entity.
//!
//! A [`SideBySideMigration`] lists entities from an [`EntitySource`] in pages ordered by
//! `(updated_ms, id)`, starting at a high-water mark, and writes them to an
//! [`EntityDestination`], optionally transformed and filtered. An entity the destination
//! already holds at the same or a newer version is skipped, so a rerun is idempotent.
//! [`run_continuous`](SideBySideMigration::run_continuous) repeats passes from the last
//! high-water mark until stopped, to keep the new side current until cut-over.
//!
//! The high-water mark is *inclusive*: the next pass lists entities updated at or after
//! it, so an update made in the same millisecond as the mark, after the pass read that
//! millisecond, is picked up by the next pass (and what was already copied is skipped).
//! The mark only advances over entities handled without failure, so a failed entity is
//! retried by the next pass.
//!
//! ```
//! use std::sync::Arc;
//! use layout_core::migration::{Entity, MemoryEntityStore, SideBySideMigration};
//! use serde_json::json;
//!
//! let old = Arc::new(MemoryEntityStore::new());
//! old.upsert(Entity::new("job-1", 1, 100, json!({"cron": "* * * * *"})));
//! old.upsert(Entity::new("job-2", 1, 200, json!({"cron": "0 * * * *"})));
//! let new = Arc::new(MemoryEntityStore::new());
//! let migration = SideBySideMigration::builder(old.clone(), new.clone())
//!     .transform(|mut e| { e.data["schema"] = json!(2); Ok(e) })
//!     .build()?;
//! let first = migration.run_pass()?;
//! assert_eq!((first.copied, first.transformed, first.high_water_mark_ms), (2, 2, Some(200)));
//! let again = migration.run_pass()?;            // idempotent
//! assert_eq!((again.copied, again.skipped), (0, 1)); // only the entity at the mark is relisted
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::background::{Sleeper, ThreadSleeper};
use super::document::StepError;
use crate::clock::{Clock, SystemClock};

/// One version of an entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entity {
    /// Its identity.
    pub id: String,
    /// Its version: increases with every update.
    pub version: u64,
    /// When this version was written (ms since the epoch).
    pub updated_ms: u64,
    /// Its content.
    pub data: Value,
    /// Whether this is the authoritative copy (a source holding replicas lists the
    /// others too; they are not copied).
    pub authoritative: bool,
}

impl Entity {
    /// An authoritative entity version.
    pub fn new(id: impl Into<String>, version: u64, updated_ms: u64, data: Value) -> Self {
        Self {
            id: id.into(),
            version,
            updated_ms,
            data,
            authoritative: true,
        }
    }

    /// The same entity marked as a replica (not authoritative).
    #[must_use]
    pub fn replica(mut self) -> Self {
        self.authoritative = false;
        self
    }

    /// Its version and update time.
    pub fn stamp(&self) -> EntityStamp {
        EntityStamp {
            version: self.version,
            updated_ms: self.updated_ms,
        }
    }
}

/// What the destination holds of an entity: enough to decide whether to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityStamp {
    /// Its version.
    pub version: u64,
    /// Its update time.
    pub updated_ms: u64,
}

/// Where a page starts: after this entity in `(updated_ms, id)` order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    /// The update time of the last entity of the previous page.
    pub updated_ms: u64,
    /// Its id.
    pub id: String,
}

/// A request for one page of entities.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageRequest {
    /// Only entities updated at or after this time (inclusive).
    pub updated_since_ms: u64,
    /// Only entities after this one in `(updated_ms, id)` order.
    pub after: Option<Cursor>,
    /// At most this many.
    pub limit: usize,
}

/// One page of entities, ordered by `(updated_ms, id)`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    /// The entities (their current version; replicas included, if the source has any).
    pub entities: Vec<Entity>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// A failure of a side-by-side source or destination.
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
    /// The options are invalid.
    #[error("side-by-side migration: invalid options: {0}")]
    InvalidOptions(String),
}

/// The old side: lists entities in pages and, on request, an entity's history.
pub trait EntitySource: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> String;

    /// Current versions of entities updated at or after `request.updated_since_ms`,
    /// ordered by `(updated_ms, id)`, after `request.after`, at most `request.limit`.
    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError>;

    /// Every version of entity `id`, oldest first.
    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError>;
}

/// The new side.
pub trait EntityDestination: Send + Sync {
    /// Where it is, for messages.
    fn location(&self) -> String;

    /// The version and update time held for `id`, if any.
    fn current(&self, id: &str) -> Result<Option<EntityStamp>, SideBySideError>;

    /// Stores an entity version (keeping its version and update time as given).
    fn put(&self, entity: &Entity) -> Result<(), SideBySideError>;
}

/// How the copier decides that the destination already has an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SkipRule {
    /// The destination's version is at or above the source's (the default).
    #[default]
    Version,
    /// The destination's `(updated_ms, version)` is at or above the source's: a newer
    /// update time wins; in the same millisecond, the version decides, so an update made
    /// in the millisecond of the last copy is not skipped.
    UpdateTime,
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
    /// Entity versions written to the destination.
    pub copied: u64,
    /// Entities skipped: the destination already had them.
    pub skipped: u64,
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
    /// The high-water mark after the run: the next pass lists from it, inclusive.
    pub high_water_mark_ms: Option<u64>,
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
        self.skipped += other.skipped;
        self.transformed += other.transformed;
        self.failed += other.failed;
        self.filtered += other.filtered;
        self.replicas += other.replicas;
        self.pages += other.pages;
        self.passes += other.passes;
        if other.high_water_mark_ms.is_some() {
            self.high_water_mark_ms = other.high_water_mark_ms;
        }
        self.stopped = other.stopped.or(self.stopped);
        for f in other.failures {
            if self.failures.len() < MAX_FAILURES_KEPT {
                self.failures.push(f);
            }
        }
    }
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

/// Builds a [`SideBySideMigration`]; see [`SideBySideMigration::builder`].
pub struct SideBySideBuilder {
    source: Arc<dyn EntitySource>,
    destination: Arc<dyn EntityDestination>,
    page_size: usize,
    transform: Option<Transform>,
    filter: Option<Filter>,
    skip_rule: SkipRule,
    history: bool,
    deadline: Option<SystemTime>,
    max_concurrent: usize,
    clock: Arc<dyn Clock>,
    sleeper: Arc<dyn Sleeper>,
    poll_interval: Duration,
    start_from_ms: u64,
}

impl SideBySideBuilder {
    /// Entities per page (default 500).
    #[must_use]
    pub fn page_size(mut self, page_size: usize) -> Self {
        self.page_size = page_size;
        self
    }

    /// Rewrites each entity version on its way (its id must stay).
    #[must_use]
    pub fn transform(
        mut self,
        transform: impl Fn(Entity) -> Result<Entity, StepError> + Send + Sync + 'static,
    ) -> Self {
        self.transform = Some(Arc::new(transform));
        self
    }

    /// Copies only the entities for which `filter` is true.
    #[must_use]
    pub fn filter(mut self, filter: impl Fn(&Entity) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// How to decide that the destination already has an entity (default
    /// [`SkipRule::Version`]).
    #[must_use]
    pub fn skip_rule(mut self, rule: SkipRule) -> Self {
        self.skip_rule = rule;
        self
    }

    /// Copies every version of each entity, oldest first, instead of the current one.
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

    /// Copies at most this many entities at once (default 1).
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

    /// The high-water mark to start from (default 0: everything), as reported by an
    /// earlier run.
    #[must_use]
    pub fn start_from_ms(mut self, high_water_mark_ms: u64) -> Self {
        self.start_from_ms = high_water_mark_ms;
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
        Ok(SideBySideMigration {
            high_water_mark: Mutex::new(self.start_from_ms),
            options: self,
        })
    }
}

impl fmt::Debug for SideBySideBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideBySideBuilder")
            .field("source", &self.source.location())
            .field("destination", &self.destination.location())
            .field("page_size", &self.page_size)
            .field("skip_rule", &self.skip_rule)
            .field("history", &self.history)
            .field("max_concurrent", &self.max_concurrent)
            .finish_non_exhaustive()
    }
}

/// Copies entities from an old deployment to a new one; see the [module docs](self).
pub struct SideBySideMigration {
    options: SideBySideBuilder,
    high_water_mark: Mutex<u64>,
}

/// What happened to one entity.
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
            page_size: 500,
            transform: None,
            filter: None,
            skip_rule: SkipRule::default(),
            history: false,
            deadline: None,
            max_concurrent: 1,
            clock: Arc::new(SystemClock),
            sleeper: Arc::new(ThreadSleeper),
            poll_interval: Duration::from_secs(1),
            start_from_ms: 0,
        }
    }

    /// The high-water mark the next pass starts from (inclusive).
    pub fn high_water_mark_ms(&self) -> u64 {
        *self.high_water_mark.lock()
    }

    /// One pass: every entity updated at or after the high-water mark, page by page.
    pub fn run_pass(&self) -> Result<SideBySideReport, SideBySideError> {
        self.pass(None)
    }

    /// Passes until `stop` is given (or the deadline passes), waiting the poll interval
    /// between passes. Each pass starts from the previous one's high-water mark.
    pub fn run_continuous(&self, stop: &StopSignal) -> Result<SideBySideReport, SideBySideError> {
        let mut total = SideBySideReport::default();
        loop {
            if stop.is_stopped() {
                total.stopped = Some(StopReason::Stopped);
                break;
            }
            let report = self.pass(Some(stop))?;
            let stopped = report.stopped;
            total.absorb(report);
            if stopped.is_some() {
                break;
            }
            self.options.sleeper.sleep(self.options.poll_interval);
        }
        total.high_water_mark_ms = Some(self.high_water_mark_ms());
        Ok(total)
    }

    fn deadline_passed(&self) -> bool {
        self.options
            .deadline
            .is_some_and(|d| self.options.clock.now() >= d)
    }

    fn pass(&self, stop: Option<&StopSignal>) -> Result<SideBySideReport, SideBySideError> {
        let o = &self.options;
        let since = self.high_water_mark_ms();
        let mut report = SideBySideReport {
            passes: 1,
            ..SideBySideReport::default()
        };
        let mut after: Option<Cursor> = None;
        // The mark advances over a prefix of entities handled without failure.
        let mut mark = since;
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
            let request = PageRequest {
                updated_since_ms: since,
                after: after.clone(),
                limit: o.page_size,
            };
            let page = o.source.list(&request)?;
            report.pages += 1;
            // Each entity of the page, in order: `None` when it is left out (a replica,
            // or filtered), else its index among the candidates.
            let mut order = Vec::with_capacity(page.entities.len());
            let mut candidates = Vec::with_capacity(page.entities.len());
            for entity in page.entities {
                if !entity.authoritative {
                    report.replicas += 1;
                    order.push((entity.updated_ms, None));
                } else if o.filter.as_ref().is_some_and(|f| !f(&entity)) {
                    report.filtered += 1;
                    order.push((entity.updated_ms, None));
                } else {
                    order.push((entity.updated_ms, Some(candidates.len())));
                    candidates.push(entity);
                }
            }
            let outcomes = self.copy_page(&candidates, &mut report);
            for (updated_ms, index) in order {
                let outcome = index.map_or(&Outcome::Done, |i| {
                    outcomes.get(i).unwrap_or(&Outcome::NotRun)
                });
                match outcome {
                    Outcome::Done if !mark_stuck => mark = mark.max(updated_ms),
                    Outcome::Done => {}
                    Outcome::Failed | Outcome::NotRun => mark_stuck = true,
                }
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
        *self.high_water_mark.lock() = mark;
        report.high_water_mark_ms = Some(mark);
        tracing::info!(
            target: "layout_core::migration",
            source = %o.source.location(),
            destination = %o.destination.location(),
            copied = report.copied,
            skipped = report.skipped,
            failed = report.failed,
            high_water_mark_ms = mark,
            "side-by-side pass done"
        );
        Ok(report)
    }

    /// Copies one page's entities, at most `max_concurrent` at once.
    fn copy_page(&self, entities: &[Entity], report: &mut SideBySideReport) -> Vec<Outcome> {
        let next = AtomicUsize::new(0);
        let results: Mutex<BTreeMap<usize, (Outcome, SideBySideReport)>> =
            Mutex::new(BTreeMap::new());
        let workers = self.options.max_concurrent.min(entities.len()).max(1);
        let work = || loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(entity) = entities.get(i) else {
                break;
            };
            let result = if self.deadline_passed() {
                (Outcome::NotRun, SideBySideReport::default())
            } else {
                self.copy_entity(entity)
            };
            results.lock().insert(i, result);
        };
        if workers == 1 {
            work();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..workers {
                    scope.spawn(work);
                }
            });
        }
        results
            .into_inner()
            .into_values()
            .map(|(outcome, partial)| {
                report.absorb(partial);
                outcome
            })
            .collect()
    }

    /// Copies one entity (its current version, or its history).
    fn copy_entity(&self, entity: &Entity) -> (Outcome, SideBySideReport) {
        let o = &self.options;
        let mut report = SideBySideReport::default();
        let fail = |report: &mut SideBySideReport, version: u64, reason: String| {
            report.failed += 1;
            report.failures.push(EntityFailure {
                id: entity.id.clone(),
                version,
                reason,
            });
            (Outcome::Failed, std::mem::take(report))
        };
        let held = match o.destination.current(&entity.id) {
            Ok(held) => held,
            Err(e) => return fail(&mut report, entity.version, e.to_string()),
        };
        if held.is_some_and(|h| self.has(h, entity.stamp())) {
            report.skipped += 1;
            return (Outcome::Done, report);
        }
        let versions = if o.history {
            match o.source.history(&entity.id) {
                Ok(versions) => versions,
                Err(e) => return fail(&mut report, entity.version, e.to_string()),
            }
        } else {
            vec![entity.clone()]
        };
        for version in versions {
            if held.is_some_and(|h| self.has(h, version.stamp())) {
                continue;
            }
            let number = version.version;
            let version = match &o.transform {
                Some(t) => {
                    report.transformed += 1;
                    match t(version) {
                        Ok(v) if v.id == entity.id => v,
                        Ok(v) => {
                            return fail(
                                &mut report,
                                number,
                                format!("the transform changed the id to {:?}", v.id),
                            )
                        }
                        Err(e) => {
                            return fail(&mut report, number, format!("transform failed: {e}"))
                        }
                    }
                }
                None => version,
            };
            if let Err(e) = o.destination.put(&version) {
                return fail(&mut report, number, e.to_string());
            }
            report.copied += 1;
        }
        (Outcome::Done, report)
    }

    fn has(&self, held: EntityStamp, source: EntityStamp) -> bool {
        match self.options.skip_rule {
            SkipRule::Version => held.version >= source.version,
            SkipRule::UpdateTime => {
                (held.updated_ms, held.version) >= (source.updated_ms, source.version)
            }
        }
    }
}

impl fmt::Debug for SideBySideMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SideBySideMigration")
            .field("options", &self.options)
            .field("high_water_mark_ms", &self.high_water_mark_ms())
            .finish_non_exhaustive()
    }
}

/// Entities in memory, with their history: a source (listing replicas too, if added)
/// and a destination. For tests and examples.
#[derive(Debug, Default)]
pub struct MemoryEntityStore {
    inner: Mutex<EntityInner>,
}

#[derive(Debug, Default)]
struct EntityInner {
    /// id -> versions, oldest first.
    entities: BTreeMap<String, Vec<Entity>>,
    replicas: Vec<Entity>,
    puts: u64,
}

impl MemoryEntityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a version of an entity (its history grows).
    pub fn upsert(&self, entity: Entity) {
        self.inner
            .lock()
            .entities
            .entry(entity.id.clone())
            .or_default()
            .push(entity);
    }

    /// Adds a replica copy, listed by the source but not authoritative.
    pub fn add_replica(&self, entity: Entity) {
        self.inner.lock().replicas.push(entity.replica());
    }

    /// The current version of `id`.
    pub fn get(&self, id: &str) -> Option<Entity> {
        self.inner
            .lock()
            .entities
            .get(id)
            .and_then(|v| v.last().cloned())
    }

    /// Every version of `id`, oldest first.
    pub fn versions(&self, id: &str) -> Vec<Entity> {
        self.inner
            .lock()
            .entities
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// The current version of every entity, by id.
    pub fn current_entities(&self) -> BTreeMap<String, Entity> {
        self.inner
            .lock()
            .entities
            .iter()
            .filter_map(|(id, v)| v.last().map(|e| (id.clone(), e.clone())))
            .collect()
    }

    /// How many puts it received as a destination.
    pub fn puts(&self) -> u64 {
        self.inner.lock().puts
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
            .filter(|e| e.updated_ms >= request.updated_since_ms)
            .filter(|e| {
                request
                    .after
                    .as_ref()
                    .is_none_or(|c| (e.updated_ms, e.id.as_str()) > (c.updated_ms, c.id.as_str()))
            })
            .collect();
        // Replicas sort after the authoritative copy with the same position.
        all.sort_by(|a, b| {
            (a.updated_ms, &a.id, !a.authoritative).cmp(&(b.updated_ms, &b.id, !b.authoritative))
        });
        let more = all.len() > request.limit;
        all.truncate(request.limit);
        let next = if more {
            all.last().map(|e| Cursor {
                updated_ms: e.updated_ms,
                id: e.id.clone(),
            })
        } else {
            None
        };
        Ok(Page {
            entities: all.into_iter().cloned().collect(),
            next,
        })
    }

    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError> {
        Ok(self.versions(id))
    }
}

impl EntityDestination for MemoryEntityStore {
    fn location(&self) -> String {
        "memory".to_owned()
    }

    fn current(&self, id: &str) -> Result<Option<EntityStamp>, SideBySideError> {
        Ok(self.get(id).map(|e| e.stamp()))
    }

    fn put(&self, entity: &Entity) -> Result<(), SideBySideError> {
        let mut inner = self.inner.lock();
        inner.puts += 1;
        inner
            .entities
            .entry(entity.id.clone())
            .or_default()
            .push(entity.clone());
        Ok(())
    }
}
