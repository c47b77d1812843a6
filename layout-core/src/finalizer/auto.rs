//! Automatic finalization after the soak period, and the veto that holds it back.

use std::time::SystemTime;

use super::error::FinalizeError;
use super::request::FinalizeRequest;
use super::status::FinalizeOutcome;
use super::AUTO_FINALIZE_CLIENT;
use crate::feature::LayoutFeature;
use crate::state::{HistoryEntry, HistoryEvent, VetoRecord};
use crate::{FinalizePolicy, UpgradeFinalizer};

impl<F: LayoutFeature, C: 'static> UpgradeFinalizer<F, C> {
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
        self.run.lock().push(format!(
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
            self.run.lock().push(format!(
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
        let (running, soak_started) = {
            let run = self.run.lock();
            (run.running_for.is_some(), run.soak_started)
        };
        if !self.lvm.needs_finalization() || running {
            return None;
        }
        let now = self.clock.now();
        if now < soak_started + soak {
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
}
