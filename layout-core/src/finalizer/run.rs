//! A finalization run: the claim on the finalizer, the preflight (gates, target,
//! ownership, conditions), the features one after the other, and the end.
//!
//! The failpoints (and crash points) a run passes, in order, are [`FAILPOINTS`](super::FAILPOINTS).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use super::condition::ConditionOverride;
use super::error::{ConditionFailure, FinalizeError};
use super::handle::{Cancel, FinalizeHandle};
use super::request::FinalizeRequest;
use super::run_state::{claim, RunGuard};
use super::status::{FinalizationStatus, FinalizeOutcome, Progress};
use crate::action::RegisteredAction;
use crate::clock::from_ms;
use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::state::{CancelRecord, FinalizationRecord, HistoryEntry, HistoryEvent};
use crate::Phase;
use crate::UpgradeFinalizer;

/// What the preflight decided.
enum Preflight<F> {
    /// Nothing to finalize.
    Done(FinalizeOutcome<F>),
    /// Finalize, as planned.
    Run(Plan<F>),
}

/// A run that passed its preflight.
struct Plan<F> {
    /// The MLV when the run started.
    mlv: u32,
    /// The version it finalizes to.
    target: u32,
    /// The features it finalizes, ascending.
    features: Vec<F>,
    /// The unfinished finalization it continues, if any.
    unfinished: Option<FinalizationRecord>,
    /// Takeover and override entries, stored before anything else happens.
    history: Vec<HistoryEntry>,
    /// When the finalization started (the unfinished one's start, or now).
    started_ms: u64,
}

/// A run under way: what each feature's steps need.
struct Running<'r, F> {
    client: &'r str,
    target: u32,
    features: &'r [F],
    started_ms: u64,
    started_at: SystemTime,
    /// The cancel an operator's finalize lifts (with its first write); a cancel that
    /// arrives while the run goes on is kept.
    lifted_cancel: Option<CancelRecord>,
}

impl<F: LayoutFeature, C: 'static> UpgradeFinalizer<F, C> {
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
        let _guard = claim(&self.run, &request.client_id)?;
        self.run_claimed(&request, component)
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
        // Claim here, so a refusal is decided before this returns; the thread adopts
        // the claim and ends it when done.
        let claimed = claim(&self.run, &request.client_id).map(std::mem::forget);
        let owns_claim = claimed.is_ok();
        let this = Arc::clone(self);
        let thread = thread::Builder::new()
            .name("layout-finalize".to_owned())
            .spawn(move || {
                claimed?;
                let _guard = RunGuard { run: &this.run };
                this.run_claimed(&request, &component)
            });
        if thread.is_err() && owns_claim {
            self.run.lock().running_for = None;
        }
        FinalizeHandle {
            thread: Some(thread),
            finalizer_cancel: Arc::clone(self) as Arc<dyn Cancel>,
        }
    }

    /// The finalization-contention error ([`FinalizeError::InProgress`]) while a run
    /// holds this finalizer.
    pub(crate) fn contention(&self) -> Result<(), FinalizeError<F>> {
        self.run.lock().contention()
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
    /// feature (an action that checks
    /// [`ActionContext::is_cancelled`](crate::ActionContext::is_cancelled) sooner), and
    /// the cancel is stored in the finalization record, so
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
            self.run
                .lock()
                .push(format!("Client {client_id} cancelled the finalization."));
        }
        Ok(())
    }

    pub(super) fn target_version(&self, target: Option<F>) -> Result<u32, FinalizeError<F>> {
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
    pub(super) fn check_overrides(
        &self,
        overrides: &[ConditionOverride],
    ) -> Result<(), FinalizeError<F>> {
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

    /// The gates: the one way a prepared component (its prepare controller is a gate)
    /// or anything else outside the finalizer refuses finalization.
    pub(super) fn check_gates(&self) -> Result<(), FinalizeError<F>> {
        for gate in &self.gates {
            gate.check()
                .map_err(|reason| FinalizeError::Prepared { reason })?;
        }
        Ok(())
    }

    /// The finalization proper; the caller holds the claim.
    fn run_claimed(
        &self,
        request: &FinalizeRequest<F>,
        component: &C,
    ) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        self.cancel.store(false, Ordering::SeqCst);
        let result = match self.preflight(request, component) {
            Ok(Preflight::Done(outcome)) => Ok(outcome),
            Ok(Preflight::Run(plan)) => self.run_plan(request, plan, component),
            Err(e) => Err(e),
        };
        self.record_end(&result);
        result
    }

    /// The end of a run in the run state: the status, the last error, the failure count.
    fn record_end(&self, result: &Result<FinalizeOutcome<F>, FinalizeError<F>>) {
        let mut run = self.run.lock();
        run.progress = None;
        match result {
            Ok(FinalizeOutcome::AlreadyFinalized { .. })
            | Err(FinalizeError::InProgress { .. }) => {}
            Ok(FinalizeOutcome::FinalizationDone { .. }) => {
                run.last_error = None;
                run.status = if self.lvm.needs_finalization() {
                    FinalizationStatus::FinalizationRequired
                } else {
                    FinalizationStatus::FinalizationDone
                };
            }
            Err(err) => {
                run.last_error = Some(err.to_string());
                run.failures += 1;
                if run.status.is_running() {
                    run.status = FinalizationStatus::FinalizationRequired;
                }
                run.push(format!("Finalization failed: {err}"));
                tracing::warn!(target: "layout_core::finalizer", error = %err, "finalization stopped");
            }
        }
    }

    /// Everything checked before the first feature is touched: the gates, the target,
    /// who owns an unfinished finalization, and the conditions.
    fn preflight(
        &self,
        request: &FinalizeRequest<F>,
        component: &C,
    ) -> Result<Preflight<F>, FinalizeError<F>> {
        self.check_gates()?;
        let target = self.target_version(request.target)?;
        let unfinished = self
            .lvm
            .state()
            .finalization
            .filter(|r| r.finished_at_ms.is_none());
        let now_ms = self.clock.now_ms();
        let mlv = self.lvm.metadata_layout_version();
        let mut history = Vec::new();
        if let Some(record) = &unfinished {
            if let Some(takeover) = check_ownership(request, record, now_ms, mlv)? {
                history.push(takeover);
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
            return Ok(Preflight::Done(FinalizeOutcome::AlreadyFinalized {
                metadata_layout_version: mlv,
            }));
        }
        self.check_overrides(&request.overrides)?;
        history.extend(self.check_conditions(request, component, now_ms, mlv)?);
        let features = F::ALL
            .iter()
            .copied()
            .filter(|f| f.layout_version() > mlv && f.layout_version() <= target)
            .collect();
        Ok(Preflight::Run(Plan {
            mlv,
            target,
            features,
            started_ms: unfinished.as_ref().map_or(now_ms, |r| r.started_at_ms),
            unfinished,
            history,
        }))
    }

    /// Every condition: the failing ones refuse the run unless overridden; the
    /// overrides' history entries.
    fn check_conditions(
        &self,
        request: &FinalizeRequest<F>,
        component: &C,
        now_ms: u64,
        mlv: u32,
    ) -> Result<Vec<HistoryEntry>, FinalizeError<F>> {
        let mut overridden = Vec::new();
        let mut failures = Vec::new();
        for condition in &self.conditions {
            let Err(reason) = condition.check(component) else {
                continue;
            };
            match request
                .overrides
                .iter()
                .find(|o| o.condition == condition.name())
            {
                Some(o) => overridden.push(HistoryEntry::new(
                    now_ms,
                    &request.client_id,
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
        if failures.is_empty() {
            Ok(overridden)
        } else {
            Err(FinalizeError::ConditionsFailed { failures })
        }
    }

    /// Runs a plan that passed the preflight: its start, each feature, its end.
    fn run_plan(
        &self,
        request: &FinalizeRequest<F>,
        mut plan: Plan<F>,
        component: &C,
    ) -> Result<FinalizeOutcome<F>, FinalizeError<F>> {
        let history = std::mem::take(&mut plan.history);
        let running = self.begin(request, &plan, history)?;
        crate::crash_point::step!("finalize::started");
        let mut finalized = Vec::with_capacity(plan.features.len());
        for (i, &feature) in plan.features.iter().enumerate() {
            self.finalize_feature(&running, i, feature, component, &mut finalized)?;
        }
        crate::crash_point::step!("finalize::done");
        Ok(self.finish(plan.target, finalized))
    }

    /// The start of a run: the run state says so, a resume at start-up is counted, and
    /// the takeovers and overrides are stored before anything else happens.
    fn begin<'r>(
        &self,
        request: &'r FinalizeRequest<F>,
        plan: &'r Plan<F>,
        mut history: Vec<HistoryEntry>,
    ) -> Result<Running<'r, F>, FinalizeError<F>> {
        let client = request.client_id.as_str();
        let target = plan.target;
        {
            let mut run = self.run.lock();
            run.status = FinalizationStatus::StartingFinalization;
            run.client = Some(client.to_owned());
            run.target = Some(target);
            run.last_error = None;
            run.resumed_at_startup = request.at_startup;
            run.run_started = Some(self.clock.now());
            run.action_elapsed = None;
            if request.at_startup {
                let feature = plan
                    .unfinished
                    .as_ref()
                    .and_then(|r| r.running_feature.clone())
                    .unwrap_or_default();
                run.push(format!(
                    "Finalization by client {client} resumed at start-up (feature {feature} \
                     was being finalized when the component stopped)."
                ));
            } else {
                run.push("Finalization started.".to_owned());
            }
        }
        if request.at_startup {
            self.lvm.update_state(|s| {
                if let Some(r) = s.finalization.as_mut() {
                    r.resumes = r.resumes.saturating_add(1);
                }
            })?;
        }
        let lifted_cancel = if request.at_startup {
            None
        } else {
            plan.unfinished.as_ref().and_then(|r| r.cancelled.clone())
        };
        tracing::info!(
            target: "layout_core::finalizer",
            client,
            from = plan.mlv,
            to = target,
            "finalization started"
        );
        let started_ms = plan.started_ms;
        if !history.is_empty() {
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
        Ok(Running {
            client,
            target,
            features: &plan.features,
            started_ms,
            started_at: from_ms(started_ms),
            lifted_cancel,
        })
    }

    /// One feature: its action, then the new MLV stored and published, with the
    /// failpoints between the steps.
    fn finalize_feature(
        &self,
        running: &Running<'_, F>,
        i: usize,
        feature: F,
        component: &C,
        finalized: &mut Vec<F>,
    ) -> Result<(), FinalizeError<F>> {
        // One span per feature: its action's span, its migration's batches and the
        // "finalized" line nest under it in the log.
        let span = tracing::info_span!(
            target: "layout_core::finalizer",
            "finalize_feature",
            feature = feature.name(),
            layout_version = feature.layout_version(),
            step = i + 1,
            of = running.features.len(),
        );
        let _entered = span.enter();
        if self.cancel.load(Ordering::SeqCst) {
            return Err(FinalizeError::Cancelled {
                next: feature,
                finalized: finalized.clone(),
            });
        }
        let action = self.registry.get(feature, Phase::OnFinalize);
        {
            let mut run = self.run.lock();
            run.status = FinalizationStatus::FinalizationInProgress;
            run.progress = Some(Progress {
                feature_index: i + 1,
                feature_count: running.features.len(),
                feature,
                action: action.map(|a| a.name().to_owned()),
                done: 0,
                total: None,
                started_at: running.started_at,
                elapsed: Duration::ZERO,
            });
        }
        crate::crash_point::step!("finalize::before_action");
        match action {
            Some(action) => {
                self.run_feature_action(running, feature, action, component, finalized)?;
            }
            None => self.run.lock().push(format!(
                "No onFinalize work defined for feature: {}.",
                feature.name()
            )),
        }
        crate::crash_point::step!("finalize::after_action");
        self.persist_step(running, i, feature)?;
        crate::crash_point::step!("finalize::after_publish");
        finalized.push(feature);
        tracing::info!(
            target: "layout_core::finalizer",
            feature = feature.name(),
            metadata_layout_version = feature.layout_version(),
            "layout feature finalized"
        );
        self.run.lock().push(format!(
            "Finalized layout feature {} (layout version {}).",
            feature.name(),
            feature.layout_version()
        ));
        Ok(())
    }

    /// The client the record names: the bound one (a takeover while the run goes on
    /// rebinds it), else the run's.
    fn recorder(&self, running: &Running<'_, F>) -> String {
        self.run
            .lock()
            .client
            .clone()
            .unwrap_or_else(|| running.client.to_owned())
    }

    /// A feature's `OnFinalize` action. The record names the running action when the
    /// action first reports (a long action: a background migration reports before its
    /// first batch), so a process stopped in the middle of it is resumed at its next
    /// start (`resume_interrupted`). An action that never reports costs no commit; the
    /// commit of the feature before names the next action anyway.
    fn run_feature_action(
        &self,
        running: &Running<'_, F>,
        feature: F,
        action: &RegisteredAction<F, C>,
        component: &C,
        finalized: &[F],
    ) -> Result<(), FinalizeError<F>> {
        let name = action.name();
        let recorder = self.recorder(running);
        let name_action = || self.record_running_action(running, &recorder, feature, name);
        self.run_action_reporting(
            name,
            feature,
            Phase::OnFinalize,
            component,
            |c, ctx| action.run(c, ctx),
            Some(&name_action),
        )
        .map_err(|source| {
            if source.is_cancelled() {
                return FinalizeError::Cancelled {
                    next: feature,
                    finalized: finalized.to_vec(),
                };
            }
            // A failed action is not an interruption: it waits for an operator rather
            // than being retried at every start.
            let cleared = self.lvm.update_state(|s| {
                if let Some(r) = s.finalization.as_mut() {
                    r.running_feature = None;
                    r.running_action = None;
                }
            });
            if let Err(e) = cleared {
                tracing::warn!(target: "layout_core::finalizer", error = %e, "could not store that the action failed");
            }
            FinalizeError::ActionFailed {
                feature,
                action: name.to_owned(),
                source,
                finalized: finalized.to_vec(),
            }
        })
    }

    /// Stores that `feature`'s action `action` runs, unless the record already says so.
    fn record_running_action(
        &self,
        running: &Running<'_, F>,
        recorder: &str,
        feature: F,
        action: &str,
    ) {
        let (target, started_ms, lifted) =
            (running.target, running.started_ms, &running.lifted_cancel);
        let named = self.lvm.state().finalization.is_some_and(|r| {
            r.finished_at_ms.is_none()
                && r.client_id == recorder
                && r.target_version == target
                && r.running_feature.as_deref() == Some(feature.name())
                && r.running_action.as_deref() == Some(action)
                && (lifted.is_none() || r.cancelled != *lifted)
        });
        if named {
            return;
        }
        let stored = self.lvm.update_state(|s| {
            let record = s
                .finalization
                .get_or_insert_with(|| FinalizationRecord::new(recorder, target, started_ms));
            if record.finished_at_ms.is_some() {
                *record = FinalizationRecord::new(recorder, target, started_ms);
            }
            recorder.clone_into(&mut record.client_id);
            record.target_version = target;
            record.running_feature = Some(feature.name().to_owned());
            record.running_action = Some(action.to_owned());
            if lifted.is_some() && record.cancelled == *lifted {
                record.cancelled = None;
            }
        });
        if let Err(e) = stored {
            tracing::warn!(target: "layout_core::finalizer", error = %e, "could not record the running action; a restart would not resume it");
        }
    }

    /// Stores the new MLV, the record (naming the next feature's action, closed at the
    /// last feature) and the history entry in one write, and publishes it.
    fn persist_step(
        &self,
        running: &Running<'_, F>,
        i: usize,
        feature: F,
    ) -> Result<(), FinalizeError<F>> {
        let (target, started_ms, lifted) =
            (running.target, running.started_ms, &running.lifted_cancel);
        let version = feature.layout_version();
        let last = version == target;
        let step_ms = self.clock.now_ms();
        let recorder = self.recorder(running);
        crate::crash_point::step!("finalize::before_persist");
        self.lvm.finalize_step_with(feature, |s| {
            let record = s
                .finalization
                .get_or_insert_with(|| FinalizationRecord::new(&recorder, target, started_ms));
            if record.finished_at_ms.is_some() {
                *record = FinalizationRecord::new(&recorder, target, started_ms);
            }
            record.target_version = target;
            // The next feature's action, if it has one, is named in the same write, so a
            // run of several features stores one commit per feature.
            let next = running
                .features
                .get(i + 1)
                .and_then(|&f| self.registry.get(f, Phase::OnFinalize).map(|a| (f, a)));
            record.running_feature = next.map(|(f, _)| f.name().to_owned());
            record.running_action = next.map(|(_, a)| a.name().to_owned());
            if lifted.is_some() && record.cancelled == *lifted {
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
        Ok(())
    }

    /// The end of a run that finalized every feature of its plan.
    fn finish(&self, target: u32, finalized: Vec<F>) -> FinalizeOutcome<F> {
        let mlv = self.lvm.metadata_layout_version();
        {
            let mut run = self.run.lock();
            if self.lvm.needs_finalization() {
                run.push(format!(
                    "Finalization to layout version {target} is done; {} feature(s) remain.",
                    self.lvm.unfinalized_features().len()
                ));
            } else {
                run.push("Finalization is done.".to_owned());
            }
        }
        tracing::info!(target: "layout_core::finalizer", metadata_layout_version = mlv, "finalization done");
        FinalizeOutcome::FinalizationDone {
            finalized,
            metadata_layout_version: mlv,
        }
    }
}

/// An unfinished finalization of another client is refused without takeover; with
/// it, the takeover's history entry.
fn check_ownership<F: LayoutFeature>(
    request: &FinalizeRequest<F>,
    unfinished: &FinalizationRecord,
    now_ms: u64,
    mlv: u32,
) -> Result<Option<HistoryEntry>, FinalizeError<F>> {
    let client = request.client_id.as_str();
    if unfinished.client_id == client {
        return Ok(None);
    }
    if !request.takeover {
        return Err(FinalizeError::OwnedByAnotherClient {
            holder: unfinished.client_id.clone(),
            client: client.to_owned(),
        });
    }
    Ok(Some(HistoryEntry::new(
        now_ms,
        client,
        HistoryEvent::Takeover,
        mlv,
        mlv,
        format!("from {}", unfinished.client_id),
    )))
}
