//! Crash injection at crash points (`layout_core::crash_point`), shared by in-process and
//! child-process nodes.
//!
//! The kit observes every crash point passed while a node finalizes: the finalizer's own
//! steps (the names in [`FAILPOINTS`]), the batch boundaries of a
//! [`BackgroundMigration`](layout_core::migration::BackgroundMigration), and every point
//! an upgrade action declares with
//! [`ActionContext::crash_point`](layout_core::ActionContext::crash_point) or
//! [`crash_point::hit`]. Nothing is listed in advance: a crash-free run
//! ([`Injection::Trace`]) finds the points, a [`CrashPoint`] names one pass of one of
//! them, and [`Injection::Crash`] crashes there:
//!
//! - in process, by unwinding with a [`SimulatedCrash`] payload (the finalizer lets it
//!   through); the kit then drops everything of the node's running instance;
//! - in a child process, by reporting the point to the parent and blocking until the
//!   parent SIGKILLs it there.
//!
//! Crash points need no cargo feature: they are always compiled in, and cost one relaxed
//! atomic load when nothing observes them.
//!
//! # Threads
//!
//! A crash point counts wherever it is passed while the node finalizes: on the thread
//! that finalizes, or on any other (a component's background thread, a pool the action
//! hands work to). Hits are counted in the order the threads pass them. Once the crash
//! has happened, every thread that passes a crash point stops there too (in process it
//! unwinds with the same [`SimulatedCrash`]; in a child it blocks until the kill), as
//! every thread of a killed process stops; a crash on another thread ends the run as a
//! crash even if the finalizing thread's call returned. In process, a thread only stops
//! at its next crash point, so between the crash and that point it may still write:
//! child-process mode is exact (the SIGKILL stops every thread at once).
//!
//! Crash points are process-global. The kit observes them only while one node finalizes,
//! and every in-process finalization it runs holds one process-wide lock, so a crash
//! armed for one node never fires in another of the kit's finalizations (under
//! `cargo test`'s threads). But any other code of the process that passes a crash point
//! meanwhile counts as the node's: a background migration a test runs itself on another
//! thread, another in-process node's background thread. Keep such work out of test
//! binaries that inject crashes, or run them with cargo-nextest (one process per test);
//! in child-process mode only the node's own process is observed.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Once};

use layout_core::crash_point::{self, ObserverGuard, SimulatedCrash};
use layout_core::finalizer::FAILPOINTS;
use parking_lot::{Mutex, ReentrantMutex, ReentrantMutexGuard};

/// A crash at the `hit`-th pass (1-based) of one crash point during one finalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CrashPoint {
    /// The crash point's name: one of the finalizer's [`FAILPOINTS`] or any crash point
    /// the finalization passes (an action's own, a background migration's
    /// `background_migration::*`).
    pub failpoint: &'static str,
    /// Which pass of it crashes (1 = the first).
    pub hit: usize,
}

impl CrashPoint {
    /// A crash at the `hit`-th pass of the crash point `name`. Any name is accepted (the
    /// finalization tells whether it passes it); `None` when `name` is empty or `hit` is
    /// 0.
    ///
    /// ```
    /// use layout_testkit::CrashPoint;
    ///
    /// let point = CrashPoint::new("background_migration::batch_committed", 2).unwrap();
    /// assert_eq!(point.to_string(), "background_migration::batch_committed hit 2");
    /// assert!(CrashPoint::new("finalize::started", 0).is_none());
    /// ```
    pub fn new(name: &str, hit: usize) -> Option<Self> {
        (hit > 0 && !name.is_empty()).then(|| Self {
            failpoint: intern(name),
            hit,
        })
    }

    /// The crash point's name.
    pub fn name(&self) -> &'static str {
        self.failpoint
    }

    /// Whether it is one of the finalizer's own steps ([`FAILPOINTS`]) rather than a
    /// point inside an action or a migration.
    pub fn is_finalizer_step(&self) -> bool {
        FAILPOINTS.contains(&self.failpoint)
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} hit {}", self.failpoint, self.hit)
    }
}

/// The `&'static str` for a crash point's name: the finalizer's own, or one interned
/// once per distinct name (a child reports names as text; the names a process can pass
/// are a fixed, small set).
pub(crate) fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    if let Some(known) = FAILPOINTS.iter().copied().find(|f| *f == name) {
        return known;
    }
    let mut names = NAMES.lock();
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// One crash point a finalization passed, with how often.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PassedPoint {
    /// The crash point.
    pub name: &'static str,
    /// How many times the finalization passed it.
    pub hits: usize,
    /// Whether it was passed inside an upgrade action (between the finalizer's
    /// `finalize::before_action` and `finalize::after_action`): an action's own point or
    /// its migration's, as opposed to a step of the finalizer.
    pub inside_action: bool,
}

/// The crash points of a `trace` (as [`FinalizeRun::trace`](crate::FinalizeRun::trace)
/// gives it), each once, in the order first passed, with its hit count.
///
/// ```
/// use layout_testkit::passed_points;
///
/// let trace = [
///     "finalize::started",
///     "finalize::before_action",
///     "rewrite::batch",
///     "rewrite::batch",
///     "finalize::after_action",
///     "finalize::done",
/// ];
/// let points = passed_points(&trace);
/// assert_eq!(points.len(), 5);
/// assert_eq!((points[2].name, points[2].hits, points[2].inside_action), ("rewrite::batch", 2, true));
/// assert!(!points[0].inside_action);
/// ```
pub fn passed_points(trace: &[&'static str]) -> Vec<PassedPoint> {
    let mut points: Vec<PassedPoint> = Vec::new();
    let mut in_action = false;
    for &name in trace {
        match name {
            "finalize::before_action" => in_action = true,
            "finalize::after_action" => in_action = false,
            _ => {}
        }
        let inside = in_action && !FAILPOINTS.contains(&name);
        match points.iter_mut().find(|p| p.name == name) {
            Some(point) => {
                point.hits += 1;
                point.inside_action |= inside;
            }
            None => points.push(PassedPoint {
                name,
                hits: 1,
                inside_action: inside,
            }),
        }
    }
    points
}

/// What to inject into one finalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// Nothing: an ordinary finalization.
    None,
    /// Record every crash point passed, in order (no crash).
    Trace,
    /// Crash at this point; until then, record the crash points passed.
    Crash(CrashPoint),
}

/// How many times a crash-free finalization of `features` features passes the
/// finalizer's failpoint `failpoint`, by the order `FAILPOINTS` documents: its first and
/// last entries once per finalization, every other entry once per feature. 0 for a name
/// not in `FAILPOINTS` (an action's crash points depend on its data: trace a run to
/// count them) or when there is nothing to finalize.
///
/// ```
/// use layout_testkit::expected_hits;
///
/// assert_eq!(expected_hits("finalize::started", 3), 1);
/// assert_eq!(expected_hits("finalize::before_persist", 3), 3);
/// assert_eq!(expected_hits("finalize::done", 3), 1);
/// assert_eq!(expected_hits("no::such::failpoint", 3), 0);
/// ```
pub fn expected_hits(failpoint: &str, features: usize) -> usize {
    if features == 0 || !FAILPOINTS.contains(&failpoint) {
        return 0;
    }
    if FAILPOINTS.first() == Some(&failpoint) || FAILPOINTS.last() == Some(&failpoint) {
        1
    } else {
        features
    }
}

/// Installs, once per process, a panic hook that stays silent for simulated crashes and
/// hands every other panic to the hook that was there before.
pub(crate) fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !SimulatedCrash::is_payload(info.payload()) {
                previous(info);
            }
        }));
    });
}

/// Whether the finalizer's `fail` failpoints are compiled in (this crate's `failpoints`
/// feature). The kit's crash injection no longer needs them: it observes crash points,
/// which are always compiled in.
pub fn failpoints_enabled() -> bool {
    fail::has_failpoints()
}

/// Stops the thread that passes a crash point where the run crashes: it unwinds with a
/// [`SimulatedCrash`] or never returns. Called with `first = true` once, on the thread
/// where the crash happens; then with `false` on every thread that passes a crash point
/// after it.
type OnCrash = dyn Fn(CrashPoint, bool) + Send + Sync;

#[derive(Default)]
struct Record {
    trace: Vec<&'static str>,
    hits: HashMap<&'static str, usize>,
    crashed: Option<CrashPoint>,
}

/// The crash-point observer installed for one finalization; dropping it removes it.
pub(crate) struct Armed {
    _guard: Option<ObserverGuard>,
    record: Arc<Mutex<Record>>,
}

impl Armed {
    /// Observes every crash point (none for [`Injection::None`]): each pass is recorded
    /// and handed to `on_pass` (on the passing thread, in the order recorded); at the
    /// crash point, and at every point passed after it, `on_crash` runs (it panics or
    /// never returns).
    pub(crate) fn arm(
        injection: Injection,
        on_pass: impl Fn(&'static str) + Send + Sync + 'static,
        on_crash: impl Fn(CrashPoint, bool) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let record = Arc::new(Mutex::new(Record::default()));
        let crash = match injection {
            Injection::None => {
                return Ok(Self {
                    _guard: None,
                    record,
                })
            }
            Injection::Trace => None,
            Injection::Crash(point) => Some(point),
        };
        let on_crash: Arc<OnCrash> = Arc::new(on_crash);
        let observed = Arc::clone(&record);
        let guard = crash_point::observe(move |name| {
            let stop = {
                let mut record = observed.lock();
                if let Some(point) = record.crashed {
                    Some((point, false))
                } else {
                    record.trace.push(name);
                    let hits = record.hits.entry(name).or_insert(0);
                    *hits += 1;
                    let hit = *hits;
                    on_pass(name);
                    let here = crash.filter(|p| p.failpoint == name && p.hit == hit);
                    if let Some(point) = here {
                        record.crashed = Some(point);
                    }
                    here.map(|point| (point, true))
                }
            };
            if let Some((point, first)) = stop {
                on_crash(point, first);
            }
        })
        .map_err(|e| e.to_string())?;
        Ok(Self {
            _guard: Some(guard),
            record,
        })
    }

    /// The crash points passed so far, in order.
    pub(crate) fn trace(&self) -> Vec<&'static str> {
        self.record.lock().trace.clone()
    }

    /// Where the run crashed, if it did (on any thread).
    pub(crate) fn crashed(&self) -> Option<CrashPoint> {
        self.record.lock().crashed
    }
}

/// The kit's process-wide injection lock. Crash points are process-global, so every
/// in-process finalization the kit runs holds it (an armed crash must never fire in
/// another test's finalization), and so do whole crash-matrix, upgrade-test and plan
/// runs. It is reentrant: a run holds it across the finalizations it makes.
static INJECTION_LOCK: ReentrantMutex<()> = parking_lot::const_reentrant_mutex(());

/// Holds the kit's injection lock.
pub(crate) struct Exclusive {
    _guard: Option<ReentrantMutexGuard<'static, ()>>,
}

impl Exclusive {
    /// Takes the lock for in-process work; child-process runs need none.
    pub(crate) fn take(in_process: bool) -> Self {
        Self {
            _guard: in_process.then(|| INJECTION_LOCK.lock()),
        }
    }
}
