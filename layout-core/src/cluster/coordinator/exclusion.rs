//! Excluding a dead member (recorded in the audit trail).

use super::error::ClusterError;
use super::{Coordinator, MAX_ATTEMPTS};
use crate::cluster::local::LocalLayout;
use crate::cluster::state::{AuditEvent, Exclusion};
use crate::cluster::store::{StoreCasOutcome, Versioned};

impl Coordinator {
    /// Excludes a dead member of `kind`, with a `reason` recorded in the audit trail and
    /// shown in status: it no longer blocks finalization, and may rejoin only with
    /// software at least as new as the newest version the cluster could finalize to now.
    /// Refused for a live member, without a reason, and during the first member lease
    /// after the coordinator started (it cannot tell a dead member from a live one yet:
    /// [`ClusterError::LivenessNotKnownYet`]). Excluding an excluded member returns its
    /// exclusion unchanged.
    pub fn exclude(
        &self,
        kind: &str,
        member_id: &str,
        reason: &str,
        by: &str,
    ) -> Result<Exclusion, ClusterError> {
        if reason.trim().is_empty() {
            return Err(ClusterError::ExclusionNeedsReason {
                kind: kind.to_owned(),
                member_id: member_id.to_owned(),
            });
        }
        let unknown = || ClusterError::UnknownMember {
            kind: kind.to_owned(),
            member_id: member_id.to_owned(),
        };
        // A member that does not exist is named as such, whatever its liveness would be.
        self.store
            .load_member(kind, member_id)?
            .ok_or_else(unknown)?;
        let cache = self.cache(kind);
        let now = self.now();
        if self.is_live(&cache, member_id, now) {
            return Err(ClusterError::MemberIsLive {
                kind: kind.to_owned(),
                member_id: member_id.to_owned(),
            });
        }
        let known_at = self.started_at_ms.saturating_add(self.lease_ms());
        if now < known_at {
            return Err(ClusterError::LivenessNotKnownYet {
                kind: kind.to_owned(),
                member_id: member_id.to_owned(),
                retry_in_ms: known_at - now,
            });
        }
        let local_slv = self
            .options
            .locals
            .get(kind)
            .map(LocalLayout::software_layout_version);
        for _ in 0..MAX_ATTEMPTS {
            let record = self.kind_record(kind, true)?.ok_or_else(unknown)?;
            let member = self
                .store
                .load_member(kind, member_id)?
                .ok_or_else(unknown)?;
            if let Some(existing) = &member.value.excluded {
                return Ok(existing.clone());
            }
            let newest_other = self
                .members(kind)?
                .into_iter()
                .filter(|(id, m)| id != member_id && m.value.excluded.is_none())
                .map(|(_, m)| m.value.software_layout_version)
                .max();
            let required = [
                Some(record.value.cluster_layout_version),
                record.value.finalization_in_progress().map(|f| f.target),
                local_slv,
                newest_other,
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
            let exclusion = Exclusion {
                reason: reason.to_owned(),
                excluded_by: by.to_owned(),
                at_ms: self.now(),
                software_layout_version: member.value.software_layout_version,
                required_software_layout_version: required,
            };
            let mut next = member.value.clone();
            next.excluded = Some(exclusion.clone());
            let swapped = self.store.swap_member(
                kind,
                member_id,
                Some(member.revision),
                record.revision,
                &next,
            )?;
            let StoreCasOutcome::Swapped { revision } = swapped else {
                continue;
            };
            cache.members.write().insert(
                member_id.to_owned(),
                Versioned {
                    revision,
                    value: next,
                },
            );
            if let Some(pending) = cache.pending.lock().as_mut() {
                pending.below.remove(member_id);
            }
            self.audit(
                kind,
                by,
                AuditEvent::Excluded,
                Some(member_id),
                Some(required),
                reason,
            )?;
            self.complete_if_ready(kind)?;
            return Ok(exclusion);
        }
        Err(Self::contention(kind))
    }
}
