//! What the finalizer reports: its status (with the bound client's messages, and
//! takeover of the binding), and what a finalization would do (the dry run).

use super::error::FinalizeError;
use super::policy::FinalizePolicy;
use super::request::FinalizeRequest;
use super::status::{ConditionCheck, DryRun, PlannedStep, StatusReport};
use crate::error::LayoutError;
use crate::feature::LayoutFeature;
use crate::state::{HistoryEntry, HistoryEvent};
use crate::Phase;
use crate::UpgradeFinalizer;

impl<F: LayoutFeature, C: 'static> UpgradeFinalizer<F, C> {
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
        // Refused outright: another run holds the finalizer (the contention error), or a
        // gate refuses.
        let blocked_by = self
            .contention()
            .and_then(|()| self.check_gates())
            .err()
            .map(|e| e.to_string());
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
        let mut run = self.run.lock();
        let mut messages = Vec::new();
        if let Some(client) = client {
            if let Some(holder) = run.client.clone().filter(|h| h != client) {
                if !takeover {
                    return Err(FinalizeError::NotTheClient {
                        holder,
                        client: client.to_owned(),
                    });
                }
                self.record_takeover(&holder, client)?;
                run.client = Some(client.to_owned());
                if run.running_for.is_some() {
                    // The running run now answers to its new client.
                    run.running_for = Some(client.to_owned());
                }
                run.push(format!(
                    "Client {client} took over the finalization from {holder}."
                ));
            }
            messages = run.messages.drain(..).collect();
        }
        let state = self.lvm.state();
        let now_ms = self.clock.now_ms();
        let veto_active = state.veto.as_ref().is_some_and(|v| v.is_active_at(now_ms));
        let auto_finalize_at = match self.policy {
            FinalizePolicy::Auto { soak } if self.lvm.needs_finalization() && !veto_active => {
                Some(run.soak_started + soak)
            }
            _ => None,
        };
        let mut progress = run.progress.clone();
        if let Some(p) = progress.as_mut() {
            // Active time, not wall time since the finalization started.
            p.elapsed = run.active_time(self.clock.now());
        }
        Ok(StatusReport {
            status: run.status,
            running: run.running_for.is_some(),
            metadata_layout_version: self.lvm.metadata_layout_version(),
            software_layout_version: self.lvm.software_layout_version(),
            target_version: run.target,
            client_id: run.client.clone(),
            progress,
            last_error: run.last_error.clone(),
            failures: run.failures,
            messages,
            veto: state.veto,
            veto_active,
            auto_finalize_at,
            resumed_at_startup: run.resumed_at_startup,
            resumes: state.finalization.as_ref().map_or(0, |r| r.resumes),
            cancelled_by: state
                .finalization
                .filter(|r| r.finished_at_ms.is_none())
                .and_then(|r| r.cancelled)
                .map(|c| c.client_id),
        })
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
}
