//! Named crash points inside upgrade work: the places where a process may die and the
//! next start must still recover.
//!
//! The finalizer's own steps are crash points (the names in
//! [`FAILPOINTS`](crate::finalizer::FAILPOINTS)), and so is every batch boundary of a
//! `migration::BackgroundMigration` (feature `migration`). An upgrade action
//! declares its own with [`ActionContext::crash_point`](crate::ActionContext::crash_point)
//! (or [`hit`] where it has no context): one call at each place where it has written
//! part of its work.
//!
//! In production a crash point costs one relaxed atomic load: nothing observes it. A test
//! kit installs an [`observe`]r for the length of a test run; it sees every crash point
//! passed, in order, and may crash the process there: a child process by stopping until
//! it is killed (SIGKILL), an in-process run by panicking with a [`SimulatedCrash`] payload,
//! which the finalizer lets through (it turns every other panic of an action into an
//! action error).
//!
//! ```
//! use layout_core::crash_point;
//! use std::sync::{Arc, Mutex};
//!
//! fn rewrite_records(batches: usize) {
//!     for _ in 0..batches {
//!         // ... rewrite one batch and commit it ...
//!         crash_point::hit("rewrite::batch_committed");
//!     }
//! }
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = Arc::clone(&seen);
//! let guard = crash_point::observe(move |name| log.lock().unwrap().push(name))?;
//! rewrite_records(2);
//! drop(guard);
//! rewrite_records(1); // no longer observed
//! assert_eq!(*seen.lock().unwrap(), ["rewrite::batch_committed"; 2]);
//! # Ok::<(), crash_point::AlreadyObserved>(())
//! ```

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

type Observer = Arc<dyn Fn(&'static str) + Send + Sync>;

/// A step of the finalizer or the manager: the `fail` failpoint of that name (feature
/// `failpoints`; the names are [`FAILPOINTS`](crate::finalizer::FAILPOINTS)) and the crash point,
/// passed together.
macro_rules! step {
    ($name:expr) => {{
        fail::fail_point!($name);
        $crate::crash_point::hit($name);
    }};
}
pub(crate) use step;

static OBSERVED: AtomicBool = AtomicBool::new(false);
static OBSERVER: RwLock<Option<Observer>> = RwLock::new(None);

/// Passes the crash point `name`: hands it to the installed observer, if any (which may
/// crash the process here). Names are `&'static str`, `area::what` by convention (e.g.
/// `background_migration::batch_committed`); a point passed several times in one run is
/// told apart by the observer's hit count.
#[inline]
pub fn hit(name: &'static str) {
    if !OBSERVED.load(Ordering::Relaxed) {
        return;
    }
    let observer = OBSERVER.read().clone();
    if let Some(observer) = observer {
        observer(name);
    }
}

/// Another observer is installed: crash points are process-global, so one test run at a
/// time may observe them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "crash points are already observed by another run in this process; run crash-injecting \
     tests one at a time (e.g. under cargo-nextest, one process per test)"
)]
pub struct AlreadyObserved;

/// Installs `observer` for every crash point passed in this process, on any thread, until
/// the guard is dropped.
///
/// # Errors
///
/// [`AlreadyObserved`] when another observer is installed.
pub fn observe(
    observer: impl Fn(&'static str) + Send + Sync + 'static,
) -> Result<ObserverGuard, AlreadyObserved> {
    let mut slot = OBSERVER.write();
    if slot.is_some() {
        return Err(AlreadyObserved);
    }
    *slot = Some(Arc::new(observer));
    OBSERVED.store(true, Ordering::Release);
    Ok(ObserverGuard { _private: () })
}

/// Removes the observer [`observe`] installed when dropped.
#[must_use = "the observer is removed when the guard is dropped"]
pub struct ObserverGuard {
    _private: (),
}

impl Drop for ObserverGuard {
    fn drop(&mut self) {
        let mut slot = OBSERVER.write();
        OBSERVED.store(false, Ordering::Release);
        *slot = None;
    }
}

impl fmt::Debug for ObserverGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObserverGuard")
    }
}

/// The panic payload of a crash simulated in process at a crash point: the finalizer and
/// a cluster member let it unwind through (every other panic of an action becomes an
/// action error), so the run stops there as a killed process would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimulatedCrash {
    /// The crash point.
    pub point: &'static str,
    /// Which pass of it (1 = the first).
    pub hit: usize,
}

impl fmt::Display for SimulatedCrash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "simulated crash at {} hit {}", self.point, self.hit)
    }
}

impl SimulatedCrash {
    /// Unwinds the current thread with this payload.
    pub fn raise(self) -> ! {
        std::panic::panic_any(self)
    }

    /// Whether a caught panic's payload is a simulated crash (to be resumed, not handled).
    pub fn is_payload(payload: &(dyn Any + Send)) -> bool {
        payload.is::<Self>()
    }
}
