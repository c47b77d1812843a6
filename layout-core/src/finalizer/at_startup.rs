//! What the finalizer does at start-up: the start-up actions, and resuming a
//! finalization that a crash, a kill or a restart interrupted.

use std::sync::Arc;

use super::error::{FinalizeError, PrefinalizeError};
use super::handle::FinalizeHandle;
use super::request::FinalizeRequest;
use super::status::{FinalizeOutcome, PrefinalizeReport, StartupResume};
use crate::feature::LayoutFeature;
use crate::Phase;
use crate::UpgradeFinalizer;

impl<F: LayoutFeature, C: 'static> UpgradeFinalizer<F, C> {
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

    /// Resumes, at start-up and without an operator, a finalization that a crash, a kill
    /// or a restart interrupted in the middle of an `OnFinalize` action (its record is
    /// unfinished and names the running feature, see
    /// [`FinalizationRecord::is_interrupted`](crate::state::FinalizationRecord::is_interrupted)),
    /// as the client that started it and towards its target, in the caller's thread. A finalization an operator cancelled is not
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
    /// client and [`StatusReport::resumed_at_startup`](crate::StatusReport::resumed_at_startup).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use layout_core::*;
    /// use layout_core::finalizer::StartupResume;
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
}
