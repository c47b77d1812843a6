//! Admission: members register, heartbeat and leave; the coordinator accepts or refuses
//! them (fences, identity, versions), tells them to finalize, and remembers the refused.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::error::ClusterError;
use super::{Coordinator, KindCache, Pending, MAX_ATTEMPTS};
use crate::cluster::local::LocalLayout;
use crate::cluster::protocol::{
    CoordinatorAnswer, FinalizationProgress, HeartbeatError, Instruction, MemberReport, Refusal,
    PROTOCOL_VERSION,
};
use crate::cluster::state::{
    AuditEvent, FinalizationCheckpoint, KindRecord, MemberRecord, MemberRole,
};
use crate::cluster::store::{StoreCasOutcome, Versioned};

/// How many refused members are remembered per kind; beyond it the oldest is forgotten.
const MAX_REFUSED_PER_KIND: usize = 16 * 1024;

/// A member the coordinator refused at its last registration or heartbeat (see
/// [`Coordinator::refused_members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedMember {
    /// The member.
    pub member_id: String,
    /// The incarnation of the refused process (empty when it sent none).
    pub incarnation: String,
    /// Why it was refused.
    pub refusal: Refusal,
    /// When (the coordinator's clock, ms since the epoch).
    pub at_ms: u64,
}

impl Coordinator {
    /// Records this coordinator in `kind`'s membership (role coordinator, its SLV and
    /// MLV, this process's incarnation).
    pub(super) fn record_self(
        &self,
        kind: &str,
        local: &dyn LocalLayout,
    ) -> Result<(), ClusterError> {
        let id = self.options.coordinator_id.as_str();
        let cache = self.cache(kind);
        for _ in 0..MAX_ATTEMPTS {
            let record = self.load_or_create(kind)?;
            let existing = self.store.load_member(kind, id)?;
            if let Some(existing) = &existing {
                if existing.value.role != MemberRole::Coordinator {
                    return Err(ClusterError::CoordinatorIdTaken {
                        kind: kind.to_owned(),
                        coordinator_id: id.to_owned(),
                    });
                }
            }
            let now = self.now();
            let next = MemberRecord {
                role: MemberRole::Coordinator,
                incarnation: self.incarnation.clone(),
                software_layout_version: local.software_layout_version(),
                metadata_layout_version: local.metadata_layout_version(),
                first_registered_at_ms: existing
                    .as_ref()
                    .map_or(now, |m| m.value.first_registered_at_ms),
                last_registered_at_ms: now,
                excluded: None,
            };
            if existing.as_ref().is_some_and(|m| m.value == next) {
                return Ok(());
            }
            if let StoreCasOutcome::Swapped { revision } = self.store.swap_member(
                kind,
                id,
                existing.map(|m| m.revision),
                record.revision,
                &next,
            )? {
                cache.members.write().insert(
                    id.to_owned(),
                    Versioned {
                        revision,
                        value: next,
                    },
                );
                return Ok(());
            }
        }
        Err(Self::contention(kind))
    }

    fn answer(&self, record: &KindRecord, report: &MemberReport) -> CoordinatorAnswer {
        let cluster = record.cluster_layout_version;
        CoordinatorAnswer {
            protocol_version: PROTOCOL_VERSION,
            coordinator_id: self.options.coordinator_id.clone(),
            kind: record.kind.clone(),
            cluster_layout_version: cluster,
            finalization: record
                .finalization_in_progress()
                .map(|f| FinalizationProgress {
                    target: f.target,
                    checkpoint: f.checkpoint,
                }),
            instruction: (report.metadata_layout_version < cluster)
                .then_some(Instruction::FinalizeTo { version: cluster }),
        }
    }

    /// The fences every registration and heartbeat passes.
    fn check_fences(record: &KindRecord, report: &MemberReport) -> Result<(), Refusal> {
        let kind = || report.kind.clone();
        let member_id = || report.member_id.clone();
        let slv = report.software_layout_version;
        let cluster = record.cluster_layout_version;
        if slv < cluster {
            return Err(Refusal::SoftwareBelowCluster {
                kind: kind(),
                member_id: member_id(),
                software_layout_version: slv,
                cluster_layout_version: cluster,
            });
        }
        if let Some(f) = record.finalization_in_progress() {
            if slv < f.target {
                return Err(Refusal::SoftwareBelowFinalizationTarget {
                    kind: kind(),
                    member_id: member_id(),
                    software_layout_version: slv,
                    target: f.target,
                });
            }
        }
        if report.metadata_layout_version > cluster {
            return Err(Refusal::MetadataAheadOfCluster {
                kind: kind(),
                member_id: member_id(),
                metadata_layout_version: report.metadata_layout_version,
                cluster_layout_version: cluster,
            });
        }
        Ok(())
    }

    /// The checks of a report that need no state: well-formed, not this coordinator's id,
    /// software not above the coordinator's.
    fn validate(&self, report: &MemberReport) -> Result<(), Refusal> {
        let problem = if report.kind.is_empty() {
            Some("the component kind is empty".to_owned())
        } else if report.member_id.is_empty() {
            Some("the member id is empty".to_owned())
        } else if report.metadata_layout_version > report.software_layout_version {
            Some(format!(
                "metadata layout version {} is above software layout version {}",
                report.metadata_layout_version, report.software_layout_version
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Refusal::InvalidReport {
                kind: report.kind.clone(),
                member_id: report.member_id.clone(),
                problem,
            });
        }
        if report.member_id == self.options.coordinator_id {
            return Err(Refusal::IdOfCoordinator {
                kind: report.kind.clone(),
                member_id: report.member_id.clone(),
            });
        }
        if let Some(local) = self.options.locals.get(&report.kind) {
            let own = local.software_layout_version();
            if report.software_layout_version > own {
                return Err(Refusal::SoftwareAboveCoordinator {
                    kind: report.kind.clone(),
                    member_id: report.member_id.clone(),
                    software_layout_version: report.software_layout_version,
                    coordinator_id: self.options.coordinator_id.clone(),
                    coordinator_software_layout_version: own,
                });
            }
        }
        Ok(())
    }

    fn unavailable(error: &ClusterError) -> HeartbeatError {
        HeartbeatError::Unavailable {
            reason: error.to_string(),
        }
    }

    /// Whether `member` of `kind` is live to this coordinator: a heartbeat or
    /// registration within the member lease (this coordinator itself always is).
    pub(super) fn is_live(&self, cache: &KindCache, member: &str, now: u64) -> bool {
        member == self.options.coordinator_id
            || cache
                .live
                .lock()
                .get(member)
                .is_some_and(|(_, at)| now.saturating_sub(*at) < self.lease_ms())
    }

    fn live_incarnation(&self, cache: &KindCache, member: &str, now: u64) -> Option<String> {
        cache
            .live
            .lock()
            .get(member)
            .filter(|(_, at)| now.saturating_sub(*at) < self.lease_ms())
            .map(|(incarnation, _)| incarnation.clone())
    }

    /// A member registers (at start-up): accepted if it passes the fences (its membership
    /// is stored, its lease started, an exclusion lifted if its software is new enough),
    /// else refused. The answer tells a member whose MLV is below the cluster's version
    /// to finalize. The first registration of a kind the coordinator has no layout of
    /// starts that kind's cluster version at the member's MLV.
    ///
    /// Refused besides: a member id that is a coordinator's
    /// ([`Refusal::IdOfCoordinator`]); software newer than this coordinator's for the kind
    /// ([`Refusal::SoftwareAboveCoordinator`]: upgrade the coordinator first); another
    /// incarnation of the member that is live ([`Refusal::DuplicateIncarnation`]).
    pub fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        let result = self.register_member(report);
        self.note_refusal(report, &result);
        result
    }

    fn register_member(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        self.validate(report)?;
        let kind = report.kind.as_str();
        let id = report.member_id.as_str();
        let cache = self.cache(kind);
        let unavailable = |e: ClusterError| Self::unavailable(&e);
        for _ in 0..MAX_ATTEMPTS {
            let now = self.now();
            let record = self
                .load_or_create_at(kind, Some(report.metadata_layout_version))
                .map_err(unavailable)?;
            let existing = self
                .store
                .load_member(kind, id)
                .map_err(|e| unavailable(e.into()))?;
            let mut readmitted = None;
            if let Some(existing) = &existing {
                let m = &existing.value;
                if m.role == MemberRole::Coordinator {
                    return Err(Refusal::IdOfCoordinator {
                        kind: kind.to_owned(),
                        member_id: id.to_owned(),
                    }
                    .into());
                }
                if !report.incarnation.is_empty()
                    && !m.incarnation.is_empty()
                    && m.incarnation != report.incarnation
                {
                    if let Some(live) = self.live_incarnation(&cache, id, now) {
                        if live == m.incarnation {
                            return Err(Refusal::DuplicateIncarnation {
                                kind: kind.to_owned(),
                                member_id: id.to_owned(),
                                live_incarnation: live,
                                incarnation: report.incarnation.clone(),
                            }
                            .into());
                        }
                    }
                }
                if let Some(exclusion) = &m.excluded {
                    if report.software_layout_version < exclusion.required_software_layout_version {
                        return Err(Refusal::Excluded {
                            kind: kind.to_owned(),
                            member_id: id.to_owned(),
                            excluded_by: exclusion.excluded_by.clone(),
                            reason: exclusion.reason.clone(),
                            software_layout_version: report.software_layout_version,
                            required_software_layout_version: exclusion
                                .required_software_layout_version,
                        }
                        .into());
                    }
                    readmitted = Some(format!(
                        "rejoined with software layout version {} (exclusion by {}: {})",
                        report.software_layout_version, exclusion.excluded_by, exclusion.reason
                    ));
                }
            }
            Self::check_fences(&record.value, report)?;
            let next = MemberRecord {
                role: MemberRole::Member,
                incarnation: report.incarnation.clone(),
                software_layout_version: report.software_layout_version,
                metadata_layout_version: report.metadata_layout_version,
                first_registered_at_ms: existing
                    .as_ref()
                    .map_or(now, |m| m.value.first_registered_at_ms),
                last_registered_at_ms: now,
                excluded: None,
            };
            let swapped = self
                .store
                .swap_member(
                    kind,
                    id,
                    existing.map(|m| m.revision),
                    record.revision,
                    &next,
                )
                .map_err(|e| unavailable(e.into()))?;
            let StoreCasOutcome::Swapped { revision } = swapped else {
                continue;
            };
            if let Some(detail) = readmitted {
                self.audit(
                    kind,
                    id,
                    AuditEvent::Readmitted,
                    Some(id),
                    Some(report.software_layout_version),
                    detail,
                )
                .map_err(unavailable)?;
            }
            self.after_member_update(&cache, report, revision, next, &record.value)
                .map_err(unavailable)?;
            return Ok(self.answer(&record.value, report));
        }
        Err(unavailable(Self::contention(kind)))
    }

    /// A registered member's heartbeat: renews its liveness, records a changed SLV or MLV
    /// (a member that finalized: one write of its own record), advances the checkpoints,
    /// and answers like [`register`](Self::register). A heartbeat that changes nothing
    /// writes nothing and reads nothing but, once per `state_refresh`, the kind record.
    /// A heartbeat from an incarnation that is no longer the member's is
    /// [`Refusal::Superseded`].
    pub fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        let result = self.member_heartbeat(report);
        self.note_refusal(report, &result);
        result
    }

    fn member_heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        self.validate(report)?;
        let kind = report.kind.as_str();
        let id = report.member_id.as_str();
        let cache = self.cache(kind);
        let unavailable = |e: ClusterError| Self::unavailable(&e);
        let not_registered = || {
            HeartbeatError::Refused(Refusal::NotRegistered {
                kind: kind.to_owned(),
                member_id: id.to_owned(),
            })
        };
        for attempt in 0..MAX_ATTEMPTS {
            let fresh = attempt > 0;
            let record = self
                .kind_record(kind, fresh)
                .map_err(unavailable)?
                .ok_or_else(not_registered)?;
            let cached = if fresh {
                None
            } else {
                cache.members.read().get(id).cloned()
            };
            let member = if let Some(member) = cached {
                member
            } else {
                let loaded = self
                    .store
                    .load_member(kind, id)
                    .map_err(|e| unavailable(e.into()))?
                    .ok_or_else(not_registered)?;
                cache.members.write().insert(id.to_owned(), loaded.clone());
                loaded
            };
            let m = &member.value;
            if m.excluded.is_some() {
                return Err(not_registered());
            }
            if m.role == MemberRole::Coordinator {
                return Err(Refusal::IdOfCoordinator {
                    kind: kind.to_owned(),
                    member_id: id.to_owned(),
                }
                .into());
            }
            if !report.incarnation.is_empty()
                && !m.incarnation.is_empty()
                && m.incarnation != report.incarnation
            {
                if fresh {
                    return Err(Refusal::Superseded {
                        kind: kind.to_owned(),
                        member_id: id.to_owned(),
                        current_incarnation: m.incarnation.clone(),
                        incarnation: report.incarnation.clone(),
                    }
                    .into());
                }
                // The cached record may be stale: decide on the stored one.
                continue;
            }
            Self::check_fences(&record.value, report)?;
            let changed = m.software_layout_version != report.software_layout_version
                || m.metadata_layout_version != report.metadata_layout_version;
            if !changed {
                self.mark_live(&cache, report);
                self.note_progress(&cache, &record.value, report)
                    .map_err(unavailable)?;
                return Ok(self.answer(&record.value, report));
            }
            let mut next = m.clone();
            next.software_layout_version = report.software_layout_version;
            next.metadata_layout_version = report.metadata_layout_version;
            let swapped = self
                .store
                .swap_member(kind, id, Some(member.revision), record.revision, &next)
                .map_err(|e| unavailable(e.into()))?;
            let StoreCasOutcome::Swapped { revision } = swapped else {
                continue;
            };
            self.after_member_update(&cache, report, revision, next, &record.value)
                .map_err(unavailable)?;
            return Ok(self.answer(&record.value, report));
        }
        Err(unavailable(Self::contention(kind)))
    }

    /// A member's process says it is stopping (a clean shutdown): its incarnation is no
    /// longer live here, so the next process under its id is accepted at once instead of
    /// after a member lease. Writes nothing; the membership stays. A report from another
    /// incarnation than the live one changes nothing.
    pub fn leave(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        self.validate(report)?;
        let kind = report.kind.as_str();
        let record = self
            .kind_record(kind, false)
            .map_err(|e| Self::unavailable(&e))?
            .ok_or_else(|| {
                HeartbeatError::Refused(Refusal::NotRegistered {
                    kind: kind.to_owned(),
                    member_id: report.member_id.clone(),
                })
            })?;
        let cache = self.cache(kind);
        let mut live = cache.live.lock();
        if live
            .get(&report.member_id)
            .is_some_and(|(incarnation, _)| *incarnation == report.incarnation)
        {
            live.remove(&report.member_id);
            tracing::info!(kind, member = %report.member_id, incarnation = %report.incarnation, "member left");
        }
        Ok(self.answer(&record.value, report))
    }

    fn mark_live(&self, cache: &KindCache, report: &MemberReport) {
        cache.live.lock().insert(
            report.member_id.clone(),
            (report.incarnation.clone(), self.now()),
        );
    }

    /// After a member's record was stored: remembers it and its liveness, and, when the
    /// kind waits for members to finalize, notes that this one has (completing the
    /// finalization when it was the last).
    fn after_member_update(
        &self,
        cache: &KindCache,
        report: &MemberReport,
        revision: u64,
        member: MemberRecord,
        record: &KindRecord,
    ) -> Result<(), ClusterError> {
        cache.members.write().insert(
            report.member_id.clone(),
            Versioned {
                revision,
                value: member,
            },
        );
        self.mark_live(cache, report);
        self.note_progress(cache, record, report)
    }

    /// When `record` waits for members to finalize: notes where this member stands, and
    /// asks the store (one listing, never two at once) when no member seems to be left, or
    /// when the last look is older than [`recheck_interval`](Self::recheck_interval).
    fn note_progress(
        &self,
        cache: &KindCache,
        record: &KindRecord,
        report: &MemberReport,
    ) -> Result<(), ClusterError> {
        let Some(f) = record
            .finalization_in_progress()
            .filter(|f| f.checkpoint != FinalizationCheckpoint::Started)
        else {
            return Ok(());
        };
        let check = {
            let mut pending = cache.pending.lock();
            match pending.as_mut() {
                Some(p) if p.target == f.target => {
                    if report.metadata_layout_version >= f.target {
                        p.below.remove(&report.member_id);
                    } else {
                        p.below.insert(report.member_id.clone());
                    }
                    let due = p.below.is_empty() && !p.listing
                        || p.checked_at.elapsed() >= self.recheck_interval();
                    if due {
                        p.listing = true;
                        p.checked_at = Instant::now();
                    }
                    due
                }
                _ => {
                    *pending = Some(Pending {
                        target: f.target,
                        below: HashSet::new(),
                        checked_at: Instant::now(),
                        listing: true,
                    });
                    true
                }
            }
        };
        if check {
            self.complete_if_ready(&record.kind)?;
        }
        Ok(())
    }

    /// How often, at most, a heartbeat asks the store which members a finalization still
    /// waits for (members that report to another coordinator are seen this way).
    fn recheck_interval(&self) -> Duration {
        self.options.member_lease_ttl / 4
    }

    /// Remembers a member refused (forgets it once accepted), for
    /// [`refused_members`](Self::refused_members). `NotRegistered` is not a refusal of
    /// the member (it registers again), and what could not be decided changes nothing.
    fn note_refusal(
        &self,
        report: &MemberReport,
        result: &Result<CoordinatorAnswer, HeartbeatError>,
    ) {
        let mut refused = self.refused.lock();
        match result {
            Ok(_) => {
                // The same process accepted now (another incarnation refused, a duplicate,
                // stays listed).
                if let Some(members) = refused.get_mut(&report.kind) {
                    if members
                        .get(&report.member_id)
                        .is_some_and(|m| m.incarnation == report.incarnation)
                    {
                        members.remove(&report.member_id);
                    }
                }
            }
            // Not a decision about the member.
            Err(HeartbeatError::Refused(Refusal::NotRegistered { .. })) => {}
            Err(HeartbeatError::Refused(refusal)) => {
                if report.kind.is_empty() || report.member_id.is_empty() {
                    return;
                }
                let now = self.now();
                let ttl = self.lease_ms();
                let members = refused.entry(report.kind.clone()).or_default();
                members.retain(|_, m| now.saturating_sub(m.at_ms) < ttl);
                if members.len() >= MAX_REFUSED_PER_KIND && !members.contains_key(&report.member_id)
                {
                    let oldest = members
                        .iter()
                        .min_by_key(|(_, m)| m.at_ms)
                        .map(|(id, _)| id.clone());
                    if let Some(oldest) = oldest {
                        members.remove(&oldest);
                    }
                }
                members.insert(
                    report.member_id.clone(),
                    RefusedMember {
                        member_id: report.member_id.clone(),
                        incarnation: report.incarnation.clone(),
                        refusal: refusal.clone(),
                        at_ms: now,
                    },
                );
            }
            Err(_) => {}
        }
    }

    /// The members of `kind` the coordinator refuses now: those whose last registration
    /// or heartbeat, within the member lease TTL, was refused (an old binary after
    /// finalization, an excluded member back with its old binary, a disk ahead of the
    /// cluster, a duplicate incarnation...), sorted by id. Accepting the refused process
    /// (the same incarnation) forgets its refusal. Kept in the coordinator's memory only (a restarted coordinator starts
    /// with none), at most 16,384 per kind.
    pub fn refused_members(&self, kind: &str) -> Vec<RefusedMember> {
        let now = self.now();
        let ttl = self.lease_ms();
        self.refused
            .lock()
            .get(kind)
            .map_or_else(Vec::new, |members| {
                members
                    .values()
                    .filter(|m| now.saturating_sub(m.at_ms) < ttl)
                    .cloned()
                    .collect()
            })
    }
}
