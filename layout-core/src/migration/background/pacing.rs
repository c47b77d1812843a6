//! What a run does between batches: waits while paused, keeps to the rate ceiling and
//! the latency budget, and measures its rate and ETA.

use std::time::{Duration, SystemTime};

use super::{
    BackgroundMigration, BatchEvent, MigrationState, Reporter, MAX_LATENCY_DELAY, MIN_LATENCY_DELAY,
};

/// How long a paused migration waits before it checks again whether the finalization
/// that runs it was cancelled (a pause is otherwise woken by resume or cancel).
const PAUSE_POLL: Duration = Duration::from_millis(200);

/// What interrupts a run.
pub(super) enum Interrupt {
    Cancelled,
}

impl BackgroundMigration {
    /// Blocks while paused; `Err` when cancelled (by the control or the finalization).
    pub(super) fn wait_while_paused(&self, ctx: Option<&dyn Reporter>) -> Result<(), Interrupt> {
        let ctx_cancelled = || ctx.is_some_and(Reporter::is_cancelled);
        let mut flags = self.control.inner.flags.lock();
        let mut announced = false;
        loop {
            if flags.cancelled || ctx_cancelled() {
                return Err(Interrupt::Cancelled);
            }
            if !flags.paused {
                if announced {
                    drop(flags);
                    self.progress.lock().state = MigrationState::Running;
                    self.emit(&BatchEvent::Resumed);
                    tracing::info!(target: "layout_core::migration", migration = %self.name, "background migration resumed");
                }
                return Ok(());
            }
            if !announced {
                announced = true;
                let done = {
                    let mut progress = self.progress.lock();
                    progress.state = MigrationState::Paused;
                    progress.done
                };
                parking_lot::MutexGuard::unlocked(&mut flags, || {
                    self.emit(&BatchEvent::Paused { done });
                });
                tracing::info!(target: "layout_core::migration", migration = %self.name, "background migration paused");
                if let Some(ctx) = ctx {
                    ctx.message(format!("Background migration {} paused.", self.name));
                }
            }
            self.control.inner.changed.wait_for(&mut flags, PAUSE_POLL);
        }
    }

    /// Waits so that the rows done since the rate was set stay at or below it.
    pub(super) fn throttle(&self, window: &(Option<u64>, SystemTime, u64), done: u64) {
        let (Some(rate), since, done_then) = *window else {
            return;
        };
        #[allow(clippy::cast_precision_loss)]
        let due =
            since + Duration::from_secs_f64(done.saturating_sub(done_then) as f64 / rate as f64);
        if let Ok(wait) = due.duration_since(self.clock.now()) {
            if !wait.is_zero() {
                self.sleeper.sleep(wait);
            }
        }
    }

    /// The latency budget's wait before a batch: doubled while the foreground p99 since
    /// the last batch is over the budget, shortened by [`MIN_LATENCY_DELAY`] while within
    /// it, none without a budget.
    pub(super) fn latency_wait(&self, budget: Option<Duration>, delay: Duration) -> Duration {
        let p99 = self.control.take_latency_p99();
        let Some(budget) = budget else {
            return Duration::ZERO;
        };
        let delay = match p99 {
            Some(p99) if p99 > budget => (delay * 2).clamp(MIN_LATENCY_DELAY, MAX_LATENCY_DELAY),
            // Back slowly, so the wait settles near what the foreground traffic needs
            // instead of swinging between none and the longest.
            Some(_) => delay.saturating_sub(MIN_LATENCY_DELAY),
            None => delay,
        };
        if !delay.is_zero() {
            tracing::debug!(
                target: "layout_core::migration",
                migration = %self.name,
                delay_ms = delay.as_millis(),
                p99_us = ?p99.map(|p| p.as_micros()),
                "foreground latency over budget; waiting before the batch"
            );
            self.sleeper.sleep(delay);
        }
        delay
    }

    /// The copy rate of this run, and the time left at that rate when the total is
    /// known.
    pub(super) fn rate_and_eta(
        &self,
        run_start: SystemTime,
        done_this_run: u64,
        done: u64,
        total: Option<u64>,
    ) -> (Option<f64>, Option<Duration>) {
        let elapsed = self
            .clock
            .now()
            .duration_since(run_start)
            .unwrap_or_default()
            .as_secs_f64();
        if elapsed <= 0.0 || done_this_run == 0 {
            return (None, None);
        }
        #[allow(clippy::cast_precision_loss)]
        let rate = done_this_run as f64 / elapsed;
        #[allow(clippy::cast_precision_loss)]
        let eta = total.map(|t| Duration::from_secs_f64(t.saturating_sub(done) as f64 / rate));
        (Some(rate), eta)
    }
}
