//! The cluster state of one component kind, as kept in a
//! [`ClusterStore`](crate::cluster::ClusterStore): the cluster's finalized version, the
//! persistent membership (with exclusions), the finalization in progress and its
//! checkpoint, and an audit trail.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The version of [`KindState`]'s encoding. A store holding a newer one is refused.
pub const CLUSTER_STATE_FORMAT: u32 = 1;

/// How far a cluster finalization has come. Each checkpoint is stored (one transaction)
/// before the next step starts, so a coordinator that restarts resumes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Checkpoint {
    /// Every member could follow; the target is fenced (members below it are refused);
    /// the coordinator is finalizing its own layout.
    Started,
    /// The coordinator finalized: the cluster's finalized version is the target, and
    /// members are told to finalize.
    CoordinatorFinalized,
    /// Every member (but excluded ones) reported an MLV at the target.
    MembersFinalized,
    /// Done: recorded in the history, the finalizer released.
    Complete,
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Started => "started",
            Self::CoordinatorFinalized => "coordinator finalized",
            Self::MembersFinalized => "members finalized",
            Self::Complete => "complete",
        })
    }
}

/// A cluster finalization: started by a client, driven by one coordinator at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFinalization {
    /// The version being finalized to.
    pub target: u32,
    /// Where it stands.
    pub checkpoint: Checkpoint,
    /// The client (operator, tool) that asked for it.
    pub client_id: String,
    /// The coordinator that started it.
    pub coordinator_id: String,
    /// When it started (ms since the Unix epoch).
    pub started_at_ms: u64,
    /// When it completed, once [`Checkpoint::Complete`].
    pub completed_at_ms: Option<u64>,
}

/// An operator's exclusion of a member: it no longer blocks finalization, and may rejoin
/// only with software at least `required_software_layout_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    /// Why (recorded, shown in status and refusals).
    pub reason: String,
    /// Who excluded it.
    pub excluded_by: String,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// The member's SLV when it was excluded.
    pub software_layout_version: u32,
    /// The SLV it needs to rejoin: the newest version the cluster could finalize to when
    /// it was excluded (or the finalized version, if higher).
    pub required_software_layout_version: u32,
}

/// A member, as remembered by the cluster. Membership is persistent: a member stays
/// known (and blocks finalization while its software is too old) until an operator
/// excludes it; liveness is separate (leases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Its SLV, as last reported.
    pub software_layout_version: u32,
    /// Its MLV, as last reported.
    pub metadata_layout_version: u32,
    /// When it first registered (ms since the Unix epoch).
    pub first_registered_at_ms: u64,
    /// When it last registered.
    pub last_registered_at_ms: u64,
    /// The operator's exclusion, if any.
    pub excluded: Option<Exclusion>,
}

/// One entry of the audit trail: exclusions, readmissions, finalization checkpoints,
/// store moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// Who: an operator's client id, or a coordinator's id.
    pub actor: String,
    /// What happened (`excluded`, `readmitted`, `finalization-started`, ...).
    pub event: String,
    /// The member concerned, if any.
    pub member_id: Option<String>,
    /// The layout version concerned, if any.
    pub version: Option<u32>,
    /// Details (an exclusion's reason).
    pub detail: String,
}

/// The cluster state of one component kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindState {
    /// [`CLUSTER_STATE_FORMAT`] of the release that wrote it.
    pub format: u32,
    /// The component kind.
    pub kind: String,
    /// The cluster's finalized layout version (the cluster MLV): the fence below which no
    /// member's software may run.
    pub cluster_layout_version: u32,
    /// The finalization in progress or the last one.
    pub finalization: Option<ClusterFinalization>,
    /// Every member ever registered and not forgotten.
    pub members: BTreeMap<String, MemberRecord>,
    /// The audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
    /// Set in the old store when the cluster state moved to another store: a coordinator
    /// still pointed at this one refuses to use it.
    pub moved_to: Option<String>,
}

impl KindState {
    /// A new kind at `cluster_layout_version`, with no members.
    pub fn new(kind: impl Into<String>, cluster_layout_version: u32) -> Self {
        Self {
            format: CLUSTER_STATE_FORMAT,
            kind: kind.into(),
            cluster_layout_version,
            finalization: None,
            members: BTreeMap::new(),
            audit: Vec::new(),
            moved_to: None,
        }
    }

    /// The finalization in progress (started and not complete).
    pub fn finalization_in_progress(&self) -> Option<&ClusterFinalization> {
        self.finalization
            .as_ref()
            .filter(|f| f.checkpoint != Checkpoint::Complete)
    }

    /// Members that are not excluded.
    pub fn active_members(&self) -> impl Iterator<Item = (&String, &MemberRecord)> {
        self.members.iter().filter(|(_, m)| m.excluded.is_none())
    }
}
