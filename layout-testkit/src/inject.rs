//! Crash injection at the finalizer's failpoints (`layout_core::FAILPOINTS`), shared by
//! in-process and child-process nodes.
//!
//! Injection needs the failpoints compiled in: this crate's `failpoints` feature (which
//! enables `layout-core/failpoints`). Failpoints are process-global; the kit arms them
//! only around one node's finalization at a time, and every in-process finalization the
//! kit runs holds one process-wide lock, so an armed crash never fires in another test's
//! finalization (under `cargo test`'s threads). Finalizations a test makes itself,
//! through [`Node::finalizer`](crate::Node::finalizer), do not take that lock: keep them
//! out of test binaries that inject crashes, or run those with cargo-nextest (one process
//! per test).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use layout_core::FAILPOINTS;
use parking_lot::{Mutex, ReentrantMutex, ReentrantMutexGuard};

/// A crash at the `hit`-th pass (1-based) of one failpoint during one finalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CrashPoint {
    /// The failpoint, one of [`FAILPOINTS`].
    pub failpoint: &'static str,
    /// Which pass of it crashes (1 = the first).
    pub hit: usize,
}

impl CrashPoint {
    /// A crash at the `hit`-th pass of `failpoint`. `None` when `failpoint` is not one of
    /// [`FAILPOINTS`] or `hit` is 0.
    pub fn new(failpoint: &str, hit: usize) -> Option<Self> {
        (hit > 0)
            .then(|| failpoint_named(failpoint))
            .flatten()
            .map(|failpoint| Self { failpoint, hit })
    }
}

impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} hit {}", self.failpoint, self.hit)
    }
}

/// The name in [`FAILPOINTS`] equal to `name`.
pub(crate) fn failpoint_named(name: &str) -> Option<&'static str> {
    FAILPOINTS.iter().copied().find(|f| *f == name)
}

/// What to inject into one finalization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injection {
    /// Nothing: an ordinary finalization.
    None,
    /// Record every failpoint passed, in order (no crash).
    Trace,
    /// Crash at this point; until then, record the failpoints passed.
    Crash(CrashPoint),
}

/// How many times a crash-free finalization of `features` features passes `failpoint`,
/// by the order `FAILPOINTS` documents: its first and last entries once per
/// finalization, every other entry once per feature. 0 for a name not in `FAILPOINTS`
/// or when there is nothing to finalize.
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
    if features == 0 || failpoint_named(failpoint).is_none() {
        return 0;
    }
    if FAILPOINTS.first() == Some(&failpoint) || FAILPOINTS.last() == Some(&failpoint) {
        1
    } else {
        features
    }
}

/// The panic payload of an in-process injected crash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InjectedCrash(pub(crate) CrashPoint);

/// Installs, once per process, a panic hook that stays silent for injected crashes and
/// hands every other panic to the hook that was there before.
pub(crate) fn install_quiet_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<InjectedCrash>() {
                previous(info);
            }
        }));
    });
}

/// Whether failpoints are compiled in (this crate's `failpoints` feature).
pub fn failpoints_enabled() -> bool {
    fail::has_failpoints()
}

/// An error when injection is asked for but failpoints are compiled out.
pub(crate) fn require_failpoints(injection: Injection) -> Result<(), String> {
    if injection == Injection::None || failpoints_enabled() {
        Ok(())
    } else {
        Err(
            "crash injection needs the failpoints compiled in: enable layout-testkit's \
             `failpoints` feature (which enables layout-core/failpoints)"
                .to_owned(),
        )
    }
}

/// Failpoint callbacks armed for one finalization; dropping it disarms them.
pub(crate) struct Armed {
    _guards: Vec<fail::FailGuard>,
    trace: Arc<Mutex<Vec<&'static str>>>,
}

impl Armed {
    /// Arms every failpoint of [`FAILPOINTS`]: each pass is recorded (and handed to
    /// `on_pass`); at the crash point, `on_crash` runs (it panics or never returns).
    pub(crate) fn arm(
        injection: Injection,
        on_pass: impl Fn(&'static str) + Send + Sync + 'static,
        on_crash: impl Fn(CrashPoint) + Send + Sync + 'static,
    ) -> Result<Self, String> {
        require_failpoints(injection)?;
        let trace = Arc::new(Mutex::new(Vec::new()));
        let mut guards = Vec::new();
        if injection == Injection::None {
            return Ok(Self {
                _guards: guards,
                trace,
            });
        }
        let crash = match injection {
            Injection::Crash(point) => Some(point),
            _ => None,
        };
        let on_pass = Arc::new(on_pass);
        let on_crash = Arc::new(on_crash);
        for &name in FAILPOINTS {
            let trace = Arc::clone(&trace);
            let hits = Arc::new(AtomicUsize::new(0));
            let on_pass = Arc::clone(&on_pass);
            let on_crash = Arc::clone(&on_crash);
            let guard = fail::FailGuard::with_callback(name, move || {
                let hit = hits.fetch_add(1, Ordering::SeqCst) + 1;
                trace.lock().push(name);
                on_pass(name);
                if let Some(point) = crash.filter(|p| p.failpoint == name && p.hit == hit) {
                    on_crash(point);
                }
            })
            .map_err(|e| format!("could not arm failpoint {name}: {e}"))?;
            guards.push(guard);
        }
        Ok(Self {
            _guards: guards,
            trace,
        })
    }

    /// The failpoints passed so far, in order.
    pub(crate) fn trace(&self) -> Vec<&'static str> {
        self.trace.lock().clone()
    }
}

/// The kit's process-wide injection lock. Failpoints are process-global, so every
/// in-process finalization the kit runs holds it (an armed crash must never fire in
/// another test's finalization), and so do whole crash-matrix and plan runs. It is
/// reentrant: a run holds it across the finalizations it makes.
static INJECTION_LOCK: ReentrantMutex<()> = parking_lot::const_reentrant_mutex(());

/// Holds the kit's injection lock (when failpoints are compiled in).
pub(crate) struct Exclusive {
    _guard: Option<ReentrantMutexGuard<'static, ()>>,
}

impl Exclusive {
    /// Takes the lock for in-process work; child-process runs need none.
    pub(crate) fn take(in_process: bool) -> Self {
        Self {
            _guard: (in_process && failpoints_enabled()).then(|| INJECTION_LOCK.lock()),
        }
    }
}
