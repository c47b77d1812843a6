//! Building a [`SideBySideMigration`]: its sides, mark store, page size, transform,
//! filter, window, deadline and pacing.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{
    Entity, EntityDestination, EntitySource, HighWaterMarkStore, PageProgress, SideBySideError,
    SideBySideMigration, Sleeper,
};
use crate::clock::Clock;
use crate::error::StepError;

pub(super) type Transform = Arc<dyn Fn(Entity) -> Result<Entity, StepError> + Send + Sync>;
pub(super) type Filter = Arc<dyn Fn(&Entity) -> bool + Send + Sync>;
pub(super) type OnPage = Arc<dyn Fn(&PageProgress) + Send + Sync>;

/// Builds a [`SideBySideMigration`]; see [`SideBySideMigration::builder`].
pub struct SideBySideBuilder {
    pub(super) source: Arc<dyn EntitySource>,
    pub(super) destination: Arc<dyn EntityDestination>,
    pub(super) marks: Arc<dyn HighWaterMarkStore>,
    pub(super) page_size: usize,
    pub(super) transform: Option<Transform>,
    pub(super) filter: Option<Filter>,
    pub(super) on_page: Option<OnPage>,
    pub(super) history: bool,
    pub(super) propagate_deletes: bool,
    pub(super) overlap_window: Duration,
    pub(super) deadline: Option<SystemTime>,
    pub(super) max_concurrent: usize,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) sleeper: Arc<dyn Sleeper>,
    pub(super) poll_interval: Duration,
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
    /// see the overview of [`SideBySideMigration`](super::SideBySideMigration). Zero re-reads only the mark's own millisecond.
    ///
    /// [`DEFAULT_OVERLAP_WINDOW`]: super::DEFAULT_OVERLAP_WINDOW
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
    ///
    /// [`ThreadSleeper`]: super::ThreadSleeper
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
