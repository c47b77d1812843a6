//! Time, injectable: soak periods, veto expiry, elapsed times, timestamps in the
//! persisted history and a migration's throttle waits ([`Sleeper`]) are tested without
//! sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;

    /// Now, in milliseconds since the Unix epoch (0 before the epoch).
    fn now_ms(&self) -> u64 {
        to_ms(self.now())
    }
}

/// Milliseconds since the Unix epoch (0 before it, saturating far in the future).
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to. For tests.
///
/// ```
/// use std::time::Duration;
/// use layout_core::clock::{Clock, ManualClock};
///
/// let clock = ManualClock::at_ms(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock showing `ms` milliseconds after the Unix epoch.
    pub fn at_ms(ms: u64) -> Self {
        Self {
            ms: AtomicU64::new(ms),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set_ms(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        from_ms(self.ms.load(Ordering::SeqCst))
    }
}

/// Waits. Background migrations throttle with it; tests inject one that moves a
/// [`ManualClock`] instead of sleeping.
pub trait Sleeper: Send + Sync + fmt::Debug {
    /// Waits `duration`.
    fn sleep(&self, duration: Duration);
}

/// Sleeps the thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadSleeper;

impl Sleeper for ThreadSleeper {
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// A [`Sleeper`] that advances a [`ManualClock`] instead of
/// sleeping, and records every wait. For tests.
#[derive(Debug)]
pub struct ClockSleeper {
    clock: Arc<ManualClock>,
    waits: Mutex<Vec<Duration>>,
}

impl ClockSleeper {
    /// A sleeper advancing `clock`.
    pub fn new(clock: Arc<ManualClock>) -> Self {
        Self {
            clock,
            waits: Mutex::new(Vec::new()),
        }
    }

    /// Every wait so far.
    pub fn waits(&self) -> Vec<Duration> {
        self.waits.lock().clone()
    }

    /// The sum of the waits.
    pub fn total(&self) -> Duration {
        self.waits.lock().iter().sum()
    }
}

impl Sleeper for ClockSleeper {
    fn sleep(&self, duration: Duration) {
        self.waits.lock().push(duration);
        self.clock.advance(duration);
    }
}
