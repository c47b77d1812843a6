//! The upgrade finalizer: runs the start-up actions, and finalizes layout features one by
//! one, crash-safe and resumable, observable by the operator.

mod condition;
mod error;
mod status;

use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

pub use condition::{condition, ConditionOverride, FinalizeCondition, FinalizeGate, FnCondition};
pub use error::{ConditionFailure, FinalizeError, PrefinalizeError};
pub use status::{
    ConditionCheck, DryRun, FinalizationStatus, FinalizeOutcome, PlannedStep, PrefinalizeReport,
    Progress, StartupResume, StatusReport,
};

use crate::action::{ActionContext, ActionError, ActionRegistry, Phase, ProgressSink};
use crate::clock::{from_ms, Clock, SystemClock};
use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;
use crate::state::{CancelRecord, FinalizationRecord, HistoryEntry, HistoryEvent, VetoRecord};

/// The names of the finalizer's failpoints (feature `failpoints`), in the order a
/// finalization passes them. A crash-free finalization of at least one feature passes
/// through exactly this set.
///
/// | name | where |
/// |---|---|
/// | `finalize::started` | preflight passed, before the first feature |
/// | `finalize::before_action` | before a feature's `OnFinalize` action |
/// | `finalize::after_action` | after the action, before anything is stored |
/// | `finalize::before_persist` | just before the new MLV is stored |
/// | `finalize::after_persist` | the new MLV is durable but not yet published |
/// | `finalize::after_publish` | the new MLV is published |
/// | `finalize::done` | after the last feature, before the status says done |
pub const FAILPOINTS: &[&str] = &[
    "finalize::started",
    "finalize::before_action",
    "finalize::after_action",
    "finalize::before_persist",
    crate::manager::FAILPOINT_AFTER_PERSIST,
    "finalize::after_publish",
    "finalize::done",
];

/// At most this many undelivered status messages are kept; older ones are dropped.
const MAX_MESSAGES: usize = 1024;

/// The client id automatic finalization records in the history.
pub const AUTO_FINALIZE_CLIENT: &str = "auto-finalize";

/// When finalization happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FinalizePolicy {
    /// Only when an operator asks (the default).
    #[default]
    Manual,
    /// Automatically, once the component has run pre-finalized for `soak`, unless a veto
    /// is in force. [`UpgradeFinalizer::tick`] checks and starts it.
    Auto {
        /// How long to run pre-finalized first.
        soak: Duration,
    },
}

/// A finalization request: who asks, up to which feature, and with which overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinalizeRequest<F> {
    /// Who asks (recorded in the history; binds the status messages).
    pub client_id: String,
    /// Finalize up to this feature (default: the SLV).
    pub target: Option<F>,
    /// Take over an unfinished finalization bound to another client.
    pub takeover: bool,
    /// Failing conditions to override, each with a reason.
    pub overrides: Vec<ConditionOverride>,
    /// Set by [`UpgradeFinalizer::resume_interrupted`]: the run resumes an interrupted
    /// finalization at start-up, without an operator.
    at_startup: bool,
}

impl<F> FinalizeRequest<F> {
    /// A request by `client_id` to finalize everything.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            target: None,
            takeover: false,
            overrides: Vec::new(),
            at_startup: false,
        }
    }

    /// Stop at `target`.
    #[must_use]
    pub fn with_target(mut self, target: F) -> Self {
        self.target = Some(target);
        self
    }

    /// Take over an unfinished finalization of another client.
    #[must_use]
    pub fn with_takeover(mut self, takeover: bool) -> Self {
        self.takeover = takeover;
        self
    }

    /// Override the failing condition `condition`, for `reason`.
    #[must_use]
    pub fn with_override(
        mut self,
        condition: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        self.overrides
            .push(ConditionOverride::new(condition, reason));
        self
    }
}

struct Shared<F> {
    status: FinalizationStatus,
    client: Option<String>,
    target: Option<u32>,
    progress: Option<Progress<F>>,
    last_error: Option<String>,
    /// Finalization runs that ended in an error since this finalizer was built.
    failures: u64,
    messages: VecDeque<String>,
    /// Whether the current (or last) run resumed an interrupted finalization at start-up.
    resumed_at_startup: bool,
    /// The active time the running action last reported (see
    /// [`ActionContext::report_elapsed`]), and when.
    action_elapsed: Option<(Duration, SystemTime)>,
    /// When this process began the current run.
    run_started: Option<SystemTime>,
}

impl<F> Shared<F> {
    fn push(&mut self, message: String) {
        tracing::info!(target: "layout_core::finalizer", "{message}");
        if self.messages.len() == MAX_MESSAGES {
            self.messages.pop_front();
        }
        self.messages.push_back(message);
    }
}

/// Runs a component's upgrade actions and finalizes its layout features.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::*;
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum OmFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Multi-tenancy tables")]
///     MultiTenancy,
/// }
/// struct Om;
///
/// let opts = ManagerOptions::default().with_start_intent(StartIntent::Init).with_initial_layout_version(0);
/// let lvm = Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?);
/// let registry = ActionRegistry::<OmFeature, Om>::builder()
///     .on_finalize(OmFeature::MultiTenancy, |_om, ctx| { ctx.message("tables created"); Ok(()) })
///     .build()?;
/// let finalizer = UpgradeFinalizer::new(Arc::clone(&lvm), registry);
/// finalizer.run_prefinalize_actions(&Om)?;
///
/// let outcome = finalizer.finalize("admin", &Om)?;
/// assert_eq!(outcome.finalized(), [OmFeature::MultiTenancy]);
/// let status = finalizer.report_status(Some("admin"), false)?;
/// assert_eq!(status.status, FinalizationStatus::FinalizationDone);
/// assert!(status.messages.iter().any(|m| m == "Finalization is done."));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct UpgradeFinalizer<F: LayoutFeature, C> {
    lvm: Arc<LayoutVersionManager<F>>,
    registry: ActionRegistry<F, C>,
    conditions: Vec<Box<dyn FinalizeCondition<C>>>,
    gates: Vec<Arc<dyn FinalizeGate>>,
    policy: FinalizePolicy,
    clock: Arc<dyn Clock>,
    soak_started: Mutex<SystemTime>,
    running: AtomicBool,
    holder: Mutex<Option<String>>,
    cancel: AtomicBool,
    attempts: Mutex<std::collections::HashMap<(F, Phase), u32>>,
    shared: Mutex<Shared<F>>,
}

/// Releases the finalizer's run flag when dropped (also when a panic unwinds).
struct RunGuard<'a> {
    flag: &'a AtomicBool,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

impl<F: LayoutFeature, C: 'static> UpgradeFinalizer<F, C> {
    /// A finalizer for the component whose layout `lvm` manages, running the actions of
    /// `registry`. Manual policy, system clock, no conditions.
    pub fn new(lvm: Arc<LayoutVersionManager<F>>, registry: ActionRegistry<F, C>) -> Self {
        let state = lvm.state();
        let status = if lvm.needs_finalization() {
            FinalizationStatus::FinalizationRequired
        } else {
            FinalizationStatus::AlreadyFinalized
        };
        // An unfinished finalization keeps its client across restarts.
        let unfinished = state
            .finalization
            .filter(|r| r.finished_at_ms.is_none() && lvm.needs_finalization());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            soak_started: Mutex::new(clock.now()),
            clock,
            registry,
            conditions: Vec::new(),
            gates: Vec::new(),
            policy: FinalizePolicy::Manual,
            running: AtomicBool::new(false),
            holder: Mutex::new(None),
            cancel: AtomicBool::new(false),
            attempts: Mutex::new(std::collections::HashMap::new()),
            shared: Mutex::new(Shared {
                status,
                target: unfinished.as_ref().map(|r| r.target_version),
                client: unfinished.map(|r| r.client_id),
                progress: None,
                last_error: None,
                failures: 0,
                messages: VecDeque::new(),
                resumed_at_startup: false,
                action_elapsed: None,
                run_started: None,
            }),
            lvm,
        }
    }

    /// Adds a condition that must pass before finalization starts.
    #[must_use]
    pub fn with_condition(mut self, condition: impl FinalizeCondition<C> + 'static) -> Self {
        self.conditions.push(Box::new(condition));
        self
    }

    /// Adds a gate that can refuse finalization (the prepare controller's write gate).
    #[must_use]
    pub fn with_gate(mut self, gate: Arc<dyn FinalizeGate>) -> Self {
        self.gates.push(gate);
        self
    }

    /// Sets the policy (default [`FinalizePolicy::Manual`]).
    #[must_use]
    pub fn with_policy(mut self, policy: FinalizePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the clock (default: the system clock). The soak period starts at this
    /// clock's now.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        *self.soak_started.get_mut() = clock.now();
        self.clock = clock;
        self
    }

    /// The layout version manager.
    pub fn layout_manager(&self) -> &Arc<LayoutVersionManager<F>> {
        &self.lvm
    }

    /// The action registry.
    pub fn registry(&self) -> &ActionRegistry<F, C> {
        &self.registry
    }

    /// Runs the start-up actions; call it once at start-up, before serving. Refuses
    /// start-up (an error) if one fails.
    ///
    /// 1. The `ValidateInPrefinalize` action of every feature above the MLV (up to the
    ///    SLV), ascending, on every start while pre-finalized.
    /// 2. The `OnFirstUpgradeStart` action of every feature above the first-upgrade
    ///    marker and the MLV, ascending; the marker is stored after each, so a failed one
    ///    (and only it and those after it) runs again on the next start.
    pub fn run_prefinalize_actions(
        &self,
        component: &C,
    ) -> Result<PrefinalizeReport<F>, PrefinalizeError<F>> {
        let mut report = PrefinalizeReport {
            validated: Vec::new(),
            first_upgrade: Vec::new(),
        };
        let mlv = self.lvm.metadata_layout_version();
        let slv = self.lvm.software_layout_version();
        let pending: Vec<F> = self.lvm.unfinalized_features();
        for &feature in &pending {
            if let Some(action) = self.registry.get(feature, Phase::ValidateInPrefinalize) {
                self.run_action(
                    action.name(),
                    feature,
                    Phase::ValidateInPrefinalize,
                    component,
                    |c, ctx| action.run(c, ctx),
                )
                .map_err(|source| PrefinalizeError::ValidationFailed {
                    feature,
                    action: action.name().to_owned(),
                    source,
                })?;
                report.validated.push(feature);
            }
        }
        let marker = self.lvm.state().first_upgrade_version;
        let from = marker.max(mlv);
        if from >= slv {
            return Ok(report);
        }
        for &feature in pending.iter().filter(|f| f.layout_version() > from) {
            if let Some(action) = self.registry.get(feature, Phase::OnFirstUpgradeStart) {
                self.run_action(
                    action.name(),
                    feature,
                    Phase::OnFirstUpgradeStart,
                    component,
                    |c, ctx| action.run(c, ctx),
                )
                .map_err(|source| PrefinalizeError::FirstUpgradeFailed {
                    feature,
                    action: action.name().to_owned(),
                    source,
                })?;
                let version = feature.layout_version();
                self.lvm.update_state(|s| {
                    s.first_upgrade_version = s.first_upgrade_version.max(version);
                })?;
                report.first_upgrade.push(feature);
            }
        }
        if self.lvm.state().first_upgrade_version < slv {
            self.lvm
                .update_state(|s| s.first_upgrade_version = s.first_upgrade_version.max(slv))?;
        }
        Ok(report)
    }

    /// Finalizes every feature up to the SLV, in the caller's thread.
    pub fn finalize(
        &self,
        client_id: &str,
        component: &C,
    ) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        self.finalize_with(FinalizeRequest::new(client_id), component)
    }

    /// Finalizes every feature up to `target`, in the caller's thread.
    pub fn finalize_to(
        &self,
        target: F,
        client_id: &str,
        component: &C,
    ) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        self.finalize_with(
            FinalizeRequest::new(client_id).with_target(target),
            component,
        )
    }

    /// Finalizes as `request` says, in the caller's thread. Refused at once with
    /// [`FinalizeError::InProgress`] while another finalization runs.
    // The request is taken by value so callers can build it inline.
    #[allow(clippy::needless_pass_by_value)]
    pub fn finalize_with(
        &self,
        request: FinalizeRequest<F>,
        component: &C,
    ) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        let _guard = self.acquire(&request.client_id)?;
        self.run_locked(&request, component)
    }

    /// Starts finalizing in a background thread. The handle cancels (between features)
    /// and joins. A refusal (another finalization running, a failing condition, ...) is
    /// what `join` returns.
    pub fn start_finalize(
        self: &Arc<Self>,
        target: Option<F>,
        client_id: String,
        component: Arc<C>,
    ) -> FinalizeHandle<F>
    where
        C: Send + Sync,
    {
        let mut request = FinalizeRequest::new(client_id);
        request.target = target;
        self.start_finalize_with(request, component)
    }

    /// [`start_finalize`](Self::start_finalize) with a full request.
    pub fn start_finalize_with(
        self: &Arc<Self>,
        request: FinalizeRequest<F>,
        component: Arc<C>,
    ) -> FinalizeHandle<F>
    where
        C: Send + Sync,
    {
        // Acquire here, so a refusal is decided before this returns; the thread adopts
        // the flag and releases it when done.
        let acquired = self.acquire(&request.client_id).map(std::mem::forget);
        let owns_flag = acquired.is_ok();
        let this = Arc::clone(self);
        let thread = thread::Builder::new()
            .name("layout-finalize".to_owned())
            .spawn(move || {
                acquired?;
                let _guard = RunGuard {
                    flag: &this.running,
                };
                this.run_locked(&request, &component)
            });
        if thread.is_err() && owns_flag {
            self.running.store(false, Ordering::Release);
        }
        FinalizeHandle {
            thread: Some(thread),
            finalizer_cancel: Arc::clone(self) as Arc<dyn Cancel>,
        }
    }

    /// Asks a running finalization to stop before its next feature, as client
    /// `operator`; see [`cancel_by`](Self::cancel_by). A failure to store the cancel is
    /// logged (the running finalization stops all the same).
    pub fn cancel(&self) {
        if let Err(e) = self.cancel_by("operator") {
            tracing::warn!(
                target: "layout_core::finalizer",
                error = %e,
                "the cancel could not be stored; a restart would resume the finalization"
            );
        }
    }

    /// Cancels the finalization for `client_id`: a running one stops before its next
    /// feature (an action that checks [`ActionContext::is_cancelled`] sooner), and the
    /// cancel is stored in the finalization record, so
    /// [`resume_interrupted`](Self::resume_interrupted) does not resume it at the next
    /// start-up. An operator's next finalize clears it. Without an unfinished
    /// finalization there is nothing to store.
    pub fn cancel_by(&self, client_id: &str) -> Result<(), FinalizeError<F>> {
        self.cancel.store(true, Ordering::SeqCst);
        let now = self.clock.now_ms();
        let stored = self.lvm.update_state(|s| {
            match s
                .finalization
                .as_mut()
                .filter(|r| r.finished_at_ms.is_none())
            {
                Some(record) => {
                    record.cancelled = Some(CancelRecord::new(client_id, now));
                    true
                }
                None => false,
            }
        })?;
        if stored {
            tracing::info!(
                target: "layout_core::finalizer",
                client = client_id,
                "finalization cancelled; it will not be resumed at start-up"
            );
            self.shared
                .lock()
                .push(format!("Client {client_id} cancelled the finalization."));
        }
        Ok(())
    }

    /// Resumes, at start-up and without an operator, a finalization that a crash, a kill
    /// or a restart interrupted in the middle of an `OnFinalize` action (its record is
    /// unfinished and names the running feature, see
    /// [`FinalizationRecord::is_interrupted`]), as the client that started it and towards
    /// its target, in the caller's thread. A finalization an operator cancelled is not
    /// resumed ([`StartupResume::Cancelled`]); nor is one that stopped on a failed action
    /// or between features ([`StartupResume::NothingToResume`]): those wait for an
    /// operator.
    ///
    /// Call it once at start-up, after
    /// [`run_prefinalize_actions`](Self::run_prefinalize_actions); a component that
    /// serves while the action runs (a background migration) calls
    /// [`start_resume_interrupted`](Self::start_resume_interrupted) instead. The decision
    /// is logged (target `layout_core::finalizer`), the record counts the resume
    /// (`finalization.resumes`), and [`report_status`](Self::report_status) shows the
    /// client and [`StatusReport::resumed_at_startup`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use layout_core::*;
    ///
    /// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
    /// enum Feature {
    ///     #[layout(version = 0, description = "Initial layout")]
    ///     Initial,
    ///     #[layout(version = 1, description = "An index")]
    ///     Index,
    /// }
    /// struct Component;
    ///
    /// let opts = ManagerOptions::default().with_start_intent(StartIntent::Init).with_initial_layout_version(0);
    /// let lvm = Arc::new(LayoutVersionManager::<Feature>::open(MemoryStorage::new(), opts)?);
    /// let finalizer = UpgradeFinalizer::new(lvm, ActionRegistry::<Feature, Component>::empty());
    /// // Nothing was interrupted: nothing to do.
    /// assert!(matches!(finalizer.resume_interrupted(&Component), StartupResume::NothingToResume));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resume_interrupted(&self, component: &C) -> StartupResume<F> {
        match self.startup_request() {
            Ok(request) => StartupResume::Resumed(self.finalize_with(request, component)),
            Err(other) => other,
        }
    }

    /// [`resume_interrupted`](Self::resume_interrupted) in a background thread: the
    /// component serves while the interrupted action (a background migration) finishes.
    /// `None` when nothing is resumed (the reason is logged); otherwise the handle of the
    /// run, as [`start_finalize_with`](Self::start_finalize_with) returns it.
    pub fn start_resume_interrupted(
        self: &Arc<Self>,
        component: Arc<C>,
    ) -> Option<FinalizeHandle<F>>
    where
        C: Send + Sync,
    {
        self.startup_request()
            .ok()
            .map(|request| self.start_finalize_with(request, component))
    }

    /// The request that resumes an interrupted finalization, or why there is none.
    fn startup_request(&self) -> Result<FinalizeRequest<F>, StartupResume<F>> {
        let Some(record) = self
            .lvm
            .state()
            .finalization
            .filter(|r| r.finished_at_ms.is_none() && self.lvm.needs_finalization())
        else {
            return Err(StartupResume::NothingToResume);
        };
        if let Some(cancel) = &record.cancelled {
            tracing::info!(
                target: "layout_core::finalizer",
                client = %record.client_id,
                cancelled_by = %cancel.client_id,
                "an unfinished finalization was cancelled by an operator; not resuming it at \
                 start-up (finalize again to continue)"
            );
            return Err(StartupResume::Cancelled {
                client_id: record.client_id,
                cancelled_by: cancel.client_id.clone(),
                cancelled_at_ms: cancel.at_ms,
            });
        }
        let Some(feature) = record.running_feature.clone() else {
            return Err(StartupResume::NothingToResume);
        };
        tracing::info!(
            target: "layout_core::finalizer",
            client = %record.client_id,
            target_version = record.target_version,
            feature = %feature,
            action = record.running_action.as_deref().unwrap_or(""),
            "resuming an interrupted finalization at start-up"
        );
        let mut request = FinalizeRequest::new(record.client_id);
        request.target = F::from_layout_version(record.target_version)
            .filter(|f| f.layout_version() <= self.lvm.software_layout_version());
        request.at_startup = true;
        Ok(request)
    }

    /// Resumes a finalization that a crash or restart interrupted (its record is stored
    /// unfinished), with its stored client and target. `None` when there is none.
    pub fn resume(&self, component: &C) -> Option<Result<FinalizeOutcome<F>, FinalizeError<F>>> {
        let record = self.lvm.state().finalization?;
        if record.finished_at_ms.is_some() {
            return None;
        }
        let mut request = FinalizeRequest::new(record.client_id);
        request.target = F::from_layout_version(record.target_version)
            .filter(|f| f.layout_version() <= self.lvm.software_layout_version());
        Some(self.finalize_with(request, component))
    }

    /// What a finalization to `target` (default: the SLV) would do now, without doing
    /// anything: the features and their actions, every condition's result, and whether it
    /// would be refused outright.
    pub fn dry_run(&self, target: Option<F>, component: &C) -> Result<DryRun<F>, FinalizeError<F>> {
        let mut request = FinalizeRequest::new("");
        request.target = target;
        self.dry_run_with(&request, component)
    }

    /// [`dry_run`](Self::dry_run) of a full request: its overrides are checked exactly
    /// as [`finalize_with`](Self::finalize_with) checks them (each needs a reason and
    /// must name a known condition), so a dry run refuses what the run would refuse,
    /// with the same error. Its client id and takeover are not looked at.
    pub fn dry_run_with(
        &self,
        request: &FinalizeRequest<F>,
        component: &C,
    ) -> Result<DryRun<F>, FinalizeError<F>> {
        let from = self.lvm.metadata_layout_version();
        let target_version = self.target_version(request.target)?;
        if target_version > from {
            // The run checks overrides only when there is something to finalize.
            self.check_overrides(&request.overrides)?;
        }
        let steps = F::ALL
            .iter()
            .filter(|f| f.layout_version() > from && f.layout_version() <= target_version)
            .map(|&feature| PlannedStep {
                feature,
                action: self
                    .registry
                    .get(feature, Phase::OnFinalize)
                    .map(|a| a.name().to_owned()),
            })
            .collect();
        let conditions = self
            .conditions
            .iter()
            .map(|c| ConditionCheck {
                name: c.name().to_owned(),
                result: c.check(component),
            })
            .collect();
        let blocked_by = if self.running.load(Ordering::Acquire) {
            Some(format!(
                "finalization is already in progress, started by client {}",
                self.holder.lock().clone().unwrap_or_default()
            ))
        } else {
            self.check_gates().err().map(|e| e.to_string())
        };
        Ok(DryRun {
            from_version: from,
            target_version,
            steps,
            conditions,
            blocked_by,
        })
    }

    /// The status. With `client`, drains that client's messages (each delivered once);
    /// a finalization bound to another client answers
    /// [`FinalizeError::NotTheClient`] unless `takeover`, which rebinds it to `client`
    /// (stored, so it survives a restart). With `None`, a read-only snapshot: no
    /// messages drained.
    pub fn report_status(
        &self,
        client: Option<&str>,
        takeover: bool,
    ) -> Result<StatusReport<F>, FinalizeError<F>> {
        let mut shared = self.shared.lock();
        let mut messages = Vec::new();
        if let Some(client) = client {
            if let Some(holder) = shared.client.clone().filter(|h| h != client) {
                if !takeover {
                    return Err(FinalizeError::NotTheClient {
                        holder,
                        client: client.to_owned(),
                    });
                }
                self.record_takeover(&holder, client)?;
                shared.client = Some(client.to_owned());
                *self.holder.lock() = self
                    .running
                    .load(Ordering::Acquire)
                    .then(|| client.to_owned());
                shared.push(format!(
                    "Client {client} took over the finalization from {holder}."
                ));
            }
            messages = shared.messages.drain(..).collect();
        }
        let state = self.lvm.state();
        let now_ms = self.clock.now_ms();
        let veto_active = state.veto.as_ref().is_some_and(|v| v.is_active_at(now_ms));
        let auto_finalize_at = match self.policy {
            FinalizePolicy::Auto { soak } if self.lvm.needs_finalization() && !veto_active => {
                Some(*self.soak_started.lock() + soak)
            }
            _ => None,
        };
        let mut progress = shared.progress.clone();
        if let Some(p) = progress.as_mut() {
            // Active time, not wall time since the finalization started: what the action
            // reported (its own figure survives restarts) plus the time since, or else the
            // time this process has run it. Downtime is not counted.
            let now = self.clock.now();
            p.elapsed = match shared.action_elapsed {
                Some((reported, at)) => reported + now.duration_since(at).unwrap_or_default(),
                None => shared
                    .run_started
                    .and_then(|s| now.duration_since(s).ok())
                    .unwrap_or_default(),
            };
        }
        Ok(StatusReport {
            status: shared.status,
            running: self.running.load(Ordering::Acquire),
            metadata_layout_version: self.lvm.metadata_layout_version(),
            software_layout_version: self.lvm.software_layout_version(),
            target_version: shared.target,
            client_id: shared.client.clone(),
            progress,
            last_error: shared.last_error.clone(),
            failures: shared.failures,
            messages,
            veto: state.veto,
            veto_active,
            auto_finalize_at,
            resumed_at_startup: shared.resumed_at_startup,
            resumes: state.finalization.as_ref().map_or(0, |r| r.resumes),
            cancelled_by: state
                .finalization
                .filter(|r| r.finished_at_ms.is_none())
                .and_then(|r| r.cancelled)
                .map(|c| c.client_id),
        })
    }

    /// Sets a veto on automatic finalization ("preserve downgrade"), stored and shown in
    /// status, optionally expiring.
    pub fn set_veto(
        &self,
        client_id: &str,
        reason: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<(), FinalizeError<F>> {
        let now = self.clock.now_ms();
        let expires = expires_at.map(crate::clock::to_ms);
        let mlv = self.lvm.metadata_layout_version();
        self.lvm.update_state(|s| {
            s.veto = Some(VetoRecord::new(reason, client_id, now, expires));
            s.history.push(HistoryEntry::new(
                now,
                client_id,
                HistoryEvent::Veto,
                mlv,
                mlv,
                reason,
            ));
        })?;
        self.shared.lock().push(format!(
            "Client {client_id} vetoed automatic finalization: {reason}"
        ));
        Ok(())
    }

    /// Lifts the veto.
    pub fn clear_veto(&self, client_id: &str) -> Result<(), FinalizeError<F>> {
        let now = self.clock.now_ms();
        let mlv = self.lvm.metadata_layout_version();
        let had = self.lvm.update_state(|s| {
            let had = s.veto.take().is_some();
            if had {
                s.history.push(HistoryEntry::new(
                    now,
                    client_id,
                    HistoryEvent::VetoLifted,
                    mlv,
                    mlv,
                    "",
                ));
            }
            had
        })?;
        if had {
            self.shared.lock().push(format!(
                "Client {client_id} lifted the veto on automatic finalization."
            ));
        }
        Ok(())
    }

    /// Under [`FinalizePolicy::Auto`], finalizes (in the caller's thread) once the soak
    /// period has passed with no veto in force; call it periodically. `None` when nothing
    /// was due (manual policy, nothing to finalize, still soaking, vetoed, running).
    pub fn tick(&self, component: &C) -> Option<Result<FinalizeOutcome<F>, FinalizeError<F>>> {
        let FinalizePolicy::Auto { soak } = self.policy else {
            return None;
        };
        if !self.lvm.needs_finalization() || self.running.load(Ordering::Acquire) {
            return None;
        }
        let now = self.clock.now();
        if now < *self.soak_started.lock() + soak {
            return None;
        }
        let state = self.lvm.state();
        if state
            .veto
            .as_ref()
            .is_some_and(|v| v.is_active_at(crate::clock::to_ms(now)))
        {
            return None;
        }
        let request = match state.finalization.filter(|r| r.finished_at_ms.is_none()) {
            // Resume an interrupted finalization as its own client.
            Some(record) => FinalizeRequest::new(record.client_id),
            None => FinalizeRequest::new(AUTO_FINALIZE_CLIENT),
        };
        Some(self.finalize_with(request, component))
    }

    fn acquire(&self, client_id: &str) -> Result<RunGuard<'_>, FinalizeError<F>> {
        if client_id.is_empty() {
            return Err(FinalizeError::MissingClientId);
        }
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(FinalizeError::InProgress {
                holder: self.holder.lock().clone().unwrap_or_default(),
            });
        }
        *self.holder.lock() = Some(client_id.to_owned());
        Ok(RunGuard {
            flag: &self.running,
        })
    }

    fn target_version(&self, target: Option<F>) -> Result<u32, FinalizeError<F>> {
        let slv = self.lvm.software_layout_version();
        match target {
            None => Ok(slv),
            Some(f) if f.layout_version() <= slv => Ok(f.layout_version()),
            Some(f) => Err(LayoutError::BeyondSoftware {
                requested: f.layout_version(),
                software_layout_version: slv,
            }
            .into()),
        }
    }

    /// Each override needs a reason and must name a known condition. The one check of
    /// overrides: the run and the dry run both call it.
    fn check_overrides(&self, overrides: &[ConditionOverride]) -> Result<(), FinalizeError<F>> {
        for o in overrides {
            if o.reason.trim().is_empty() {
                return Err(FinalizeError::OverrideWithoutReason {
                    condition: o.condition.clone(),
                });
            }
            let Some(condition) = self.conditions.iter().find(|c| c.name() == o.condition) else {
                return Err(FinalizeError::UnknownCondition {
                    condition: o.condition.clone(),
                    known: self
                        .conditions
                        .iter()
                        .map(|c| c.name().to_owned())
                        .collect(),
                });
            };
            if let Some(why) = condition.override_refusal() {
                return Err(FinalizeError::NotOverridable {
                    condition: o.condition.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    fn check_gates(&self) -> Result<(), FinalizeError<F>> {
        if let Some(index) = self.lvm.state().prepare_index {
            return Err(FinalizeError::Prepared {
                reason: format!("the component is prepared (prepare index {index})"),
            });
        }
        for gate in &self.gates {
            gate.check()
                .map_err(|reason| FinalizeError::Prepared { reason })?;
        }
        Ok(())
    }

    fn record_takeover(&self, from: &str, to: &str) -> Result<(), LayoutError> {
        let now = self.clock.now_ms();
        let mlv = self.lvm.metadata_layout_version();
        self.lvm.update_state(|s| {
            if let Some(record) = s
                .finalization
                .as_mut()
                .filter(|r| r.finished_at_ms.is_none())
            {
                to.clone_into(&mut record.client_id);
                s.history.push(HistoryEntry::new(
                    now,
                    to,
                    HistoryEvent::Takeover,
                    mlv,
                    mlv,
                    format!("from {from}"),
                ));
            }
        })
    }

    /// The finalization proper; the caller holds the run flag.
    fn run_locked(
        &self,
        request: &FinalizeRequest<F>,
        component: &C,
    ) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        self.cancel.store(false, Ordering::SeqCst);
        let result = self.run_inner(request, component);
        let mut shared = self.shared.lock();
        shared.progress = None;
        match &result {
            Ok(FinalizeOutcome::AlreadyFinalized { .. })
            | Err(FinalizeError::InProgress { .. }) => {}
            Ok(FinalizeOutcome::FinalizationDone { .. }) => {
                shared.last_error = None;
                shared.status = if self.lvm.needs_finalization() {
                    FinalizationStatus::FinalizationRequired
                } else {
                    FinalizationStatus::FinalizationDone
                };
            }
            Err(err) => {
                shared.last_error = Some(err.to_string());
                shared.failures += 1;
                if shared.status.is_running() {
                    shared.status = FinalizationStatus::FinalizationRequired;
                }
                let message = format!("Finalization failed: {err}");
                shared.push(message);
                tracing::warn!(target: "layout_core::finalizer", error = %err, "finalization stopped");
            }
        }
        *self.holder.lock() = None;
        result
    }

    #[allow(clippy::too_many_lines)]
    fn run_inner(
        &self,
        request: &FinalizeRequest<F>,
        component: &C,
    ) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        let client = request.client_id.as_str();
        self.check_gates()?;
        let target = self.target_version(request.target)?;
        let state = self.lvm.state();
        let unfinished = state
            .finalization
            .clone()
            .filter(|r| r.finished_at_ms.is_none());
        let mut history = Vec::new();
        let now_ms = self.clock.now_ms();
        let mlv = self.lvm.metadata_layout_version();
        if let Some(record) = &unfinished {
            if record.client_id != client {
                if !request.takeover {
                    return Err(FinalizeError::OwnedByAnotherClient {
                        holder: record.client_id.clone(),
                        client: client.to_owned(),
                    });
                }
                history.push(HistoryEntry::new(
                    now_ms,
                    client,
                    HistoryEvent::Takeover,
                    mlv,
                    mlv,
                    format!("from {}", record.client_id),
                ));
            }
        }

        if target <= mlv {
            // Nothing to finalize; close a record a crash left open at its target.
            if unfinished.is_some_and(|r| r.target_version <= mlv) {
                self.lvm.update_state(|s| {
                    if let Some(r) = s.finalization.as_mut() {
                        r.finished_at_ms = Some(now_ms);
                    }
                })?;
            }
            return Ok(FinalizeOutcome::AlreadyFinalized {
                metadata_layout_version: mlv,
            });
        }

        // Preflight: every condition, before the first feature is touched.
        self.check_overrides(&request.overrides)?;
        let mut failures = Vec::new();
        for condition in &self.conditions {
            if let Err(reason) = condition.check(component) {
                match request
                    .overrides
                    .iter()
                    .find(|o| o.condition == condition.name())
                {
                    Some(o) => history.push(HistoryEntry::new(
                        now_ms,
                        client,
                        HistoryEvent::Override,
                        mlv,
                        mlv,
                        format!(
                            "condition {}: {} (failing: {reason})",
                            o.condition, o.reason
                        ),
                    )),
                    None => failures.push(ConditionFailure {
                        name: condition.name().to_owned(),
                        reason,
                    }),
                }
            }
        }
        if !failures.is_empty() {
            return Err(FinalizeError::ConditionsFailed { failures });
        }

        let started_ms = unfinished.as_ref().map_or(now_ms, |r| r.started_at_ms);
        let started_at = from_ms(started_ms);
        {
            let mut shared = self.shared.lock();
            shared.status = FinalizationStatus::StartingFinalization;
            shared.client = Some(client.to_owned());
            shared.target = Some(target);
            shared.last_error = None;
            shared.resumed_at_startup = request.at_startup;
            shared.run_started = Some(self.clock.now());
            shared.action_elapsed = None;
            if request.at_startup {
                let feature = unfinished
                    .as_ref()
                    .and_then(|r| r.running_feature.clone())
                    .unwrap_or_default();
                shared.push(format!(
                    "Finalization by client {client} resumed at start-up (feature {feature} \
                     was being finalized when the component stopped)."
                ));
            } else {
                shared.push("Finalization started.".to_owned());
            }
        }
        if request.at_startup {
            self.lvm.update_state(|s| {
                if let Some(r) = s.finalization.as_mut() {
                    r.resumes = r.resumes.saturating_add(1);
                }
            })?;
        }
        // An operator's finalize lifts the cancel stored before it (with its first write);
        // a cancel that arrives while this run goes on is kept.
        let lifted_cancel = if request.at_startup {
            None
        } else {
            unfinished.as_ref().and_then(|r| r.cancelled.clone())
        };
        tracing::info!(
            target: "layout_core::finalizer",
            client,
            from = mlv,
            to = target,
            "finalization started"
        );
        if !history.is_empty() {
            // Overrides and takeovers are recorded before anything else happens.
            self.lvm.update_state(|s| {
                let record = s
                    .finalization
                    .get_or_insert_with(|| FinalizationRecord::new(client, target, started_ms));
                client.clone_into(&mut record.client_id);
                record.target_version = target;
                record.finished_at_ms = None;
                s.history.append(&mut history);
            })?;
        }
        crate::crash_point::step!("finalize::started");

        let features: Vec<F> = F::ALL
            .iter()
            .copied()
            .filter(|f| f.layout_version() > mlv && f.layout_version() <= target)
            .collect();
        let count = features.len();
        let mut finalized = Vec::with_capacity(count);
        for (i, &feature) in features.iter().enumerate() {
            // One span per feature: its action's span, its migration's batches and the
            // "finalized" line nest under it in the log.
            let span = tracing::info_span!(
                target: "layout_core::finalizer",
                "finalize_feature",
                feature = feature.name(),
                layout_version = feature.layout_version(),
                step = i + 1,
                of = count,
            );
            let _entered = span.enter();
            if self.cancel.load(Ordering::SeqCst) {
                return Err(FinalizeError::Cancelled {
                    next: feature,
                    finalized,
                });
            }
            let action = self.registry.get(feature, Phase::OnFinalize);
            {
                let mut shared = self.shared.lock();
                shared.status = FinalizationStatus::FinalizationInProgress;
                shared.progress = Some(Progress {
                    feature_index: i + 1,
                    feature_count: count,
                    feature,
                    action: action.map(|a| a.name().to_owned()),
                    done: 0,
                    total: None,
                    started_at,
                    elapsed: Duration::ZERO,
                });
            }
            // The record names the running action when the action first reports (a
            // long action: a background migration reports before its first batch), so a
            // process stopped in the middle of it is resumed at its next start
            // (`resume_interrupted`). An action that never reports costs no commit; the
            // commit of the feature before names the next action anyway.
            let recorder = self
                .shared
                .lock()
                .client
                .clone()
                .unwrap_or_else(|| client.to_owned());
            let name_action = |action_name: &str| {
                let named = self.lvm.state().finalization.is_some_and(|r| {
                    r.finished_at_ms.is_none()
                        && r.client_id == recorder
                        && r.target_version == target
                        && r.running_feature.as_deref() == Some(feature.name())
                        && r.running_action.as_deref() == Some(action_name)
                        && (lifted_cancel.is_none() || r.cancelled != lifted_cancel)
                });
                if named {
                    return;
                }
                let stored = self.lvm.update_state(|s| {
                    let record = s.finalization.get_or_insert_with(|| {
                        FinalizationRecord::new(&recorder, target, started_ms)
                    });
                    if record.finished_at_ms.is_some() {
                        *record = FinalizationRecord::new(&recorder, target, started_ms);
                    }
                    recorder.clone_into(&mut record.client_id);
                    record.target_version = target;
                    record.running_feature = Some(feature.name().to_owned());
                    record.running_action = Some(action_name.to_owned());
                    if lifted_cancel.is_some() && record.cancelled == lifted_cancel {
                        record.cancelled = None;
                    }
                });
                if let Err(e) = stored {
                    tracing::warn!(target: "layout_core::finalizer", error = %e, "could not record the running action; a restart would not resume it");
                }
            };
            crate::crash_point::step!("finalize::before_action");
            match action {
                Some(action) => {
                    self.run_action_reporting(
                        action.name(),
                        feature,
                        Phase::OnFinalize,
                        component,
                        |c, ctx| action.run(c, ctx),
                        Some(&|| name_action(action.name())),
                    )
                    .map_err(|source| {
                        if !source.is_cancelled() {
                            // A failed action is not an interruption: it waits for an
                            // operator rather than being retried at every start.
                            let cleared = self.lvm.update_state(|s| {
                                if let Some(r) = s.finalization.as_mut() {
                                    r.running_feature = None;
                                    r.running_action = None;
                                }
                            });
                            if let Err(e) = cleared {
                                tracing::warn!(target: "layout_core::finalizer", error = %e, "could not store that the action failed");
                            }
                        }
                        if source.is_cancelled() {
                            FinalizeError::Cancelled {
                                next: feature,
                                finalized: finalized.clone(),
                            }
                        } else {
                            FinalizeError::ActionFailed {
                                feature,
                                action: action.name().to_owned(),
                                source,
                                finalized: finalized.clone(),
                            }
                        }
                    })?;
                }
                None => self.shared.lock().push(format!(
                    "No onFinalize work defined for feature: {}.",
                    feature.name()
                )),
            }
            crate::crash_point::step!("finalize::after_action");
            let version = feature.layout_version();
            let last = version == target;
            let step_ms = self.clock.now_ms();
            let recorder = self
                .shared
                .lock()
                .client
                .clone()
                .unwrap_or_else(|| client.to_owned());
            crate::crash_point::step!("finalize::before_persist");
            self.lvm.finalize_step_with(feature, |s| {
                let record = s
                    .finalization
                    .get_or_insert_with(|| FinalizationRecord::new(&recorder, target, started_ms));
                if record.finished_at_ms.is_some() {
                    *record = FinalizationRecord::new(&recorder, target, started_ms);
                }
                record.target_version = target;
                // The next feature's action, if it has one, is named in the same write,
                // so a run of several features stores one commit per feature.
                let next = features
                    .get(i + 1)
                    .and_then(|&f| self.registry.get(f, Phase::OnFinalize).map(|a| (f, a)));
                record.running_feature = next.map(|(f, _)| f.name().to_owned());
                record.running_action = next.map(|(_, a)| a.name().to_owned());
                if lifted_cancel.is_some() && record.cancelled == lifted_cancel {
                    record.cancelled = None;
                }
                if last {
                    record.finished_at_ms = Some(step_ms);
                }
                s.history.push(HistoryEntry::new(
                    step_ms,
                    &recorder,
                    HistoryEvent::Finalized,
                    version - 1,
                    version,
                    feature.name(),
                ));
            })?;
            crate::crash_point::step!("finalize::after_publish");
            finalized.push(feature);
            tracing::info!(
                target: "layout_core::finalizer",
                feature = feature.name(),
                metadata_layout_version = version,
                "layout feature finalized"
            );
            self.shared.lock().push(format!(
                "Finalized layout feature {} (layout version {version}).",
                feature.name()
            ));
        }
        crate::crash_point::step!("finalize::done");
        let mlv = self.lvm.metadata_layout_version();
        {
            let mut shared = self.shared.lock();
            if self.lvm.needs_finalization() {
                shared.push(format!(
                    "Finalization to layout version {target} is done; {} feature(s) remain.",
                    self.lvm.unfinalized_features().len()
                ));
            } else {
                shared.push("Finalization is done.".to_owned());
            }
        }
        tracing::info!(target: "layout_core::finalizer", metadata_layout_version = mlv, "finalization done");
        Ok(FinalizeOutcome::FinalizationDone {
            finalized,
            metadata_layout_version: mlv,
        })
    }

    /// Runs one action in a span, turning a panic into an error.
    fn run_action(
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
    fn run_action_reporting(
        &self,
        name: &str,
        feature: F,
        phase: Phase,
        component: &C,
        run: impl FnOnce(&C, &ActionContext<'_, F>) -> Result<(), ActionError>,
        on_report: Option<&(dyn Fn() + Sync)>,
    ) -> Result<(), ActionError> {
        let attempt = {
            let mut attempts = self.attempts.lock();
            let n = attempts.entry((feature, phase)).or_insert(0);
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
            shared: &self.shared,
            clock: &*self.clock,
            on_report,
            reported: std::sync::Once::new(),
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

struct StatusSink<'a, F> {
    shared: &'a Mutex<Shared<F>>,
    clock: &'a dyn Clock,
    /// Runs once, at the action's first report.
    on_report: Option<&'a (dyn Fn() + Sync)>,
    reported: std::sync::Once,
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
        if let Some(p) = self.shared.lock().progress.as_mut() {
            p.done = done;
            p.total = total;
        }
    }
    fn message(&self, message: &str) {
        self.first_report();
        self.shared.lock().push(message.to_owned());
    }
    fn elapsed(&self, elapsed: Duration) {
        self.first_report();
        self.shared.lock().action_elapsed = Some((elapsed, self.clock.now()));
    }
}

impl<F: LayoutFeature, C> fmt::Debug for UpgradeFinalizer<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpgradeFinalizer")
            .field("manager", &self.lvm)
            .field("policy", &self.policy)
            .field(
                "conditions",
                &self.conditions.iter().map(|c| c.name()).collect::<Vec<_>>(),
            )
            .field("status", &self.shared.lock().status)
            .finish_non_exhaustive()
    }
}

trait Cancel: Send + Sync {
    fn cancel(&self);
}

impl<F: LayoutFeature, C: Send + Sync + 'static> Cancel for UpgradeFinalizer<F, C> {
    fn cancel(&self) {
        UpgradeFinalizer::cancel(self);
    }
}

/// What a finalization returns.
pub type FinalizeResult<F> = Result<FinalizeOutcome<F>, FinalizeError<F>>;

/// A finalization running in a background thread; see
/// [`UpgradeFinalizer::start_finalize`].
pub struct FinalizeHandle<F: LayoutFeature> {
    thread: Option<std::io::Result<thread::JoinHandle<FinalizeResult<F>>>>,
    finalizer_cancel: Arc<dyn Cancel>,
}

impl<F: LayoutFeature> FinalizeHandle<F> {
    /// Asks the finalization to stop before its next feature (an action that checks
    /// [`ActionContext::is_cancelled`] may stop sooner).
    pub fn cancel(&self) {
        self.finalizer_cancel.cancel();
    }

    /// Whether the background thread has finished.
    pub fn is_finished(&self) -> bool {
        match &self.thread {
            Some(Ok(handle)) => handle.is_finished(),
            _ => true,
        }
    }

    /// Waits for the finalization and returns its result.
    pub fn join(mut self) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        match self.thread.take() {
            Some(Ok(handle)) => handle.join().unwrap_or_else(|_| {
                Err(FinalizeError::Thread {
                    reason: "the finalization thread panicked".to_owned(),
                })
            }),
            Some(Err(spawn)) => Err(FinalizeError::Thread {
                reason: format!("could not start the finalization thread: {spawn}"),
            }),
            None => Err(FinalizeError::Thread {
                reason: "the handle was already joined".to_owned(),
            }),
        }
    }
}

impl<F: LayoutFeature> fmt::Debug for FinalizeHandle<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinalizeHandle")
            .field("finished", &self.is_finished())
            .finish_non_exhaustive()
    }
}
