//! Running one upgrade action: its span, its attempt number, a panic turned into an
//! error, and its reports fed into the run state.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::Duration;

use parking_lot::Mutex;

use super::run_state::RunState;
use crate::action::ProgressSink;
use crate::clock::Clock;
use crate::feature::LayoutFeature;
use crate::UpgradeFinalizer;
use crate::{ActionContext, ActionError, Phase};

impl<F: LayoutFeature, C: 'static> UpgradeFinalizer<F, C> {
    /// Runs one action in a span, turning a panic into an error.
    pub(super) fn run_action(
        &self,
        name: &str,
        feature: F,
        phase: Phase,
        component: &C,
        run: impl FnOnce(&C, &ActionContext<'_, F>) -> Result<(), ActionError>,
    ) -> Result<(), ActionError> {
        self.run_action_reporting(name, feature, phase, component, run, None)
    }

    /// [`run_action`](Self::run_action); `on_report` runs once, before the action's
    /// first progress, message or elapsed report takes effect.
    pub(super) fn run_action_reporting(
        &self,
        name: &str,
        feature: F,
        phase: Phase,
        component: &C,
        run: impl FnOnce(&C, &ActionContext<'_, F>) -> Result<(), ActionError>,
        on_report: Option<&(dyn Fn() + Sync)>,
    ) -> Result<(), ActionError> {
        let attempt = {
            let mut state = self.run.lock();
            let n = state.attempts.entry((feature, phase)).or_insert(0);
            *n += 1;
            *n
        };
        let span = tracing::info_span!(
            target: "layout_core::action",
            "upgrade_action",
            feature = feature.name(),
            phase = phase.name(),
            action = name,
            attempt
        );
        let _entered = span.enter();
        let sink = StatusSink {
            run: &self.run,
            clock: &*self.clock,
            on_report,
            reported: Once::new(),
        };
        let ctx = ActionContext::new(feature, phase, &sink, &self.cancel).with_attempt(attempt);
        tracing::info!(target: "layout_core::action", "running upgrade action");
        let result =
            catch_unwind(AssertUnwindSafe(|| run(component, &ctx))).unwrap_or_else(|panic| {
                if crate::crash_point::SimulatedCrash::is_payload(&*panic) {
                    // A test kit's simulated crash stops the run here, as a kill would.
                    std::panic::resume_unwind(panic);
                }
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic".to_owned());
                Err(ActionError::new(format!("the action panicked: {what}")))
            });
        match &result {
            Ok(()) => tracing::info!(target: "layout_core::action", "upgrade action done"),
            Err(e) => {
                tracing::warn!(target: "layout_core::action", error = %e, "upgrade action failed");
            }
        }
        result
    }
}

/// Where an action's progress, messages and elapsed time go: the run state.
struct StatusSink<'a, F> {
    run: &'a Mutex<RunState<F>>,
    clock: &'a dyn Clock,
    /// Runs once, at the action's first report.
    on_report: Option<&'a (dyn Fn() + Sync)>,
    reported: Once,
}

impl<F> StatusSink<'_, F> {
    fn first_report(&self) {
        if let Some(on_report) = self.on_report {
            self.reported.call_once(on_report);
        }
    }
}

impl<F: Send> ProgressSink for StatusSink<'_, F> {
    fn progress(&self, done: u64, total: Option<u64>) {
        self.first_report();
        if let Some(p) = self.run.lock().progress.as_mut() {
            p.done = done;
            p.total = total;
        }
    }
    fn message(&self, message: &str) {
        self.first_report();
        self.run.lock().push(message.to_owned());
    }
    fn elapsed(&self, elapsed: Duration) {
        self.first_report();
        self.run.lock().action_elapsed = Some((elapsed, self.clock.now()));
    }
}
