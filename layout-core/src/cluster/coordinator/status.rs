//! What the coordinator reports: [`ClusterStatus`], [`MemberStatus`], and the dry run of
//! a finalization.

use super::error::{Blocker, ClusterError};
use super::Coordinator;
use crate::cluster::state::{
    AuditEntry, ClusterFinalization, Exclusion, FinalizationCheckpoint, MemberRole,
};

/// A member, as shown by [`Coordinator::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member.
    pub member_id: String,
    /// Member or coordinator.
    pub role: MemberRole,
    /// The incarnation of its process that registered last.
    pub incarnation: String,
    /// Its SLV, as last reported.
    pub software_layout_version: u32,
    /// Its MLV, as last reported.
    pub metadata_layout_version: u32,
    /// Whether it sent this coordinator a heartbeat within its lease (a coordinator is
    /// live to itself).
    pub live: bool,
    /// The operator's exclusion, if any.
    pub excluded: Option<Exclusion>,
}

/// The cluster state of one kind, as shown to an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The component kind.
    pub kind: String,
    /// The cluster's finalized version.
    pub cluster_layout_version: u32,
    /// The finalization in progress, or the last one.
    pub finalization: Option<ClusterFinalization>,
    /// Every member, sorted by id.
    pub members: Vec<MemberStatus>,
    /// The audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
}

impl ClusterStatus {
    /// A member by id.
    pub fn member(&self, member_id: &str) -> Option<&MemberStatus> {
        self.members.iter().find(|m| m.member_id == member_id)
    }

    /// The checkpoint of the finalization in progress or the last one.
    pub fn checkpoint(&self) -> Option<FinalizationCheckpoint> {
        self.finalization.as_ref().map(|f| f.checkpoint)
    }

    /// Whether the last finalization is complete (or none ever ran).
    pub fn is_complete(&self) -> bool {
        self.checkpoint()
            .is_none_or(|checkpoint| checkpoint == FinalizationCheckpoint::Complete)
    }
}

impl Coordinator {
    /// The cluster state of `kind`: its finalized version, the finalization, every member
    /// (with liveness and exclusions) and the audit trail. Reads every member from the
    /// store.
    pub fn status(&self, kind: &str) -> Result<ClusterStatus, ClusterError> {
        let record = self
            .kind_record(kind, true)?
            .ok_or_else(|| ClusterError::UnknownKind {
                kind: kind.to_owned(),
            })?
            .value;
        let cache = self.cache(kind);
        let now = self.now();
        let members = self
            .members(kind)?
            .into_iter()
            .map(|(id, m)| MemberStatus {
                live: self.is_live(&cache, &id, now),
                member_id: id,
                role: m.value.role,
                incarnation: m.value.incarnation,
                software_layout_version: m.value.software_layout_version,
                metadata_layout_version: m.value.metadata_layout_version,
                excluded: m.value.excluded,
            })
            .collect();
        Ok(ClusterStatus {
            kind: record.kind.clone(),
            cluster_layout_version: record.cluster_layout_version,
            finalization: record.finalization.clone(),
            members,
            audit: self.store.audit(kind)?,
        })
    }

    /// The members that would block a finalization of `kind` to `target` (default as in
    /// [`finalize`](Self::finalize)) now, and the resolved target. Changes nothing.
    pub fn dry_run(
        &self,
        kind: &str,
        target: Option<u32>,
    ) -> Result<(u32, Vec<Blocker>), ClusterError> {
        let record = self.load_or_create(kind)?.value;
        let target = self.resolve_target(&record, target)?;
        Ok((target, self.blockers(kind, target)?))
    }
}
