//! What members and the coordinator say to each other: plain serde types, no transport.

use serde::{Deserialize, Serialize};

use super::state::FinalizationCheckpoint;

/// The version of this protocol; sent in every answer. A member that sees a newer one
/// keeps working (fields are only ever added).
pub const PROTOCOL_VERSION: u32 = 1;

/// What a member tells the coordinator about itself, at registration and in every
/// heartbeat.
///
/// # Overview
///
/// What members and the coordinator say to each other: plain serde types, no transport.
///
/// A member sends a [`MemberReport`] (its component kind, id, SLV and MLV) to
/// [`register`](crate::cluster::CoordinatorLink::register) when it starts and to
/// [`heartbeat`](crate::cluster::CoordinatorLink::heartbeat) periodically. The coordinator
/// answers with a [`CoordinatorAnswer`] (the cluster's finalized version for that kind and
/// an [`Instruction`], if any) or refuses with a [`Refusal`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberReport {
    /// The component kind (`datanode`, `scm`, `om`): cluster state is kept per kind.
    pub kind: String,
    /// The member's id, stable across restarts (a host name, a node UUID).
    pub member_id: String,
    /// The member's software layout version (SLV).
    pub software_layout_version: u32,
    /// The member's metadata layout version (MLV), as on its disk.
    pub metadata_layout_version: u32,
    /// The incarnation of the member's process: new at every process start
    /// ([`Member`](crate::cluster::Member) makes one). A second live process reporting
    /// the same member id with another incarnation is refused
    /// ([`Refusal::DuplicateIncarnation`]). Empty (a report from a release before
    /// incarnations): the registration replaces whatever incarnation was recorded.
    #[serde(default)]
    pub incarnation: String,
}

impl MemberReport {
    /// A report of member `member_id` of `kind` running software `slv` on layout `mlv`.
    pub fn new(
        kind: impl Into<String>,
        member_id: impl Into<String>,
        software_layout_version: u32,
        metadata_layout_version: u32,
    ) -> Self {
        Self {
            kind: kind.into(),
            member_id: member_id.into(),
            software_layout_version,
            metadata_layout_version,
            incarnation: String::new(),
        }
    }

    /// The same report from process incarnation `incarnation`.
    #[must_use]
    pub fn with_incarnation(mut self, incarnation: impl Into<String>) -> Self {
        self.incarnation = incarnation.into();
        self
    }
}

/// What the coordinator asks a member to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Instruction {
    /// Finalize the local layout up to (and including) this version. Sent to every member
    /// whose MLV is below the cluster's finalized version, on every answer, until its MLV
    /// has caught up.
    FinalizeTo {
        /// The version to finalize to: the cluster's finalized version.
        version: u32,
    },
}

/// The coordinator's answer to a registration or heartbeat that it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorAnswer {
    /// [`PROTOCOL_VERSION`] of the coordinator.
    pub protocol_version: u32,
    /// The coordinator that answered.
    pub coordinator_id: String,
    /// The component kind.
    pub kind: String,
    /// The cluster's finalized version for this kind (the cluster MLV): no member may run
    /// software below it.
    pub cluster_layout_version: u32,
    /// A cluster finalization in progress: its target and checkpoint.
    pub finalization: Option<FinalizationProgress>,
    /// What the member should do now.
    pub instruction: Option<Instruction>,
}

/// A cluster finalization in progress, as told to members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalizationProgress {
    /// The version being finalized to.
    pub target: u32,
    /// Where it stands.
    pub checkpoint: FinalizationCheckpoint,
}

/// Why the coordinator refused a member. Every variant names the member and the
/// versions involved; [`docs/cluster-upgrade.md`] says how to resolve each.
///
/// [`docs/cluster-upgrade.md`]: https://github.com/layout-upgrade/layout-upgrade/blob/main/docs/cluster-upgrade.md
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The member's software is older than what the cluster finalized: it cannot read the
    /// layout the cluster now writes.
    #[error(
        "{kind} member {member_id} refused: its software layout version {software_layout_version} \
         is below the cluster's finalized layout version {cluster_layout_version}; upgrade its \
         binary to a release with software layout version >= {cluster_layout_version}"
    )]
    SoftwareBelowCluster {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// Its SLV.
        software_layout_version: u32,
        /// The cluster's finalized version.
        cluster_layout_version: u32,
    },
    /// A cluster finalization to `target` has started: members that could not follow it
    /// are fenced out, as they would be once it is done.
    #[error(
        "{kind} member {member_id} refused: the cluster is finalizing to layout version \
         {target}, and its software layout version {software_layout_version} cannot follow; \
         upgrade its binary to a release with software layout version >= {target}"
    )]
    SoftwareBelowFinalizationTarget {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// Its SLV.
        software_layout_version: u32,
        /// The finalization's target.
        target: u32,
    },
    /// An operator excluded the member, and it came back with software too old to rejoin.
    #[error(
        "{kind} member {member_id} refused: it was excluded by {excluded_by} ({reason}) and may \
         rejoin only with software layout version >= {required_software_layout_version}, but \
         runs {software_layout_version}; upgrade its binary first"
    )]
    Excluded {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// Who excluded it.
        excluded_by: String,
        /// The recorded reason.
        reason: String,
        /// Its SLV.
        software_layout_version: u32,
        /// The SLV it needs to rejoin.
        required_software_layout_version: u32,
    },
    /// The member's disk is finalized beyond the cluster: a fresh install of a newer
    /// release that was not pinned to the cluster's version, or a member of another
    /// cluster.
    #[error(
        "{kind} member {member_id} refused: its metadata layout version \
         {metadata_layout_version} is above the cluster's finalized layout version \
         {cluster_layout_version}; a new member must be initialized at the cluster's version \
         (ManagerOptions::with_initial_layout_version({cluster_layout_version})), and a member \
         of another cluster must not join this one"
    )]
    MetadataAheadOfCluster {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// Its MLV.
        metadata_layout_version: u32,
        /// The cluster's finalized version.
        cluster_layout_version: u32,
    },
    /// The report cannot be true (MLV above SLV, an empty id or kind).
    #[error("{kind} member {member_id:?} refused: invalid report: {problem}")]
    InvalidReport {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// What is wrong.
        problem: String,
    },
    /// Another process registered under the same member id, with another incarnation,
    /// and is live: two processes must never run as one member.
    #[error(
        "{kind} member {member_id} refused: another process is live as this member \
         (incarnation {live_incarnation}); this process (incarnation {incarnation}) may not \
         run under the same member id. Stop one of them, or give each its own member id"
    )]
    DuplicateIncarnation {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// The incarnation of the live process recorded for the member.
        live_incarnation: String,
        /// The incarnation of the refused process.
        incarnation: String,
    },
    /// A heartbeat from an incarnation that is no longer the member's: another process
    /// registered as this member since (a restart elsewhere, or a duplicate).
    #[error(
        "{kind} member {member_id} refused: its registration was taken over by another \
         process (incarnation {current_incarnation}); this process (incarnation \
         {incarnation}) must register again, and is refused while the other one is live"
    )]
    Superseded {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// The incarnation now recorded.
        current_incarnation: String,
        /// The incarnation of the refused process.
        incarnation: String,
    },
    /// The member id is a coordinator's: members and coordinators share one membership.
    #[error(
        "{kind} member {member_id} refused: {member_id} is the id of a coordinator; give the \
         member its own id"
    )]
    IdOfCoordinator {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
    },
    /// The member's software is newer than the coordinator's: the coordinator must be
    /// upgraded first (it must understand every layout its members may be finalized to).
    #[error(
        "{kind} member {member_id} refused: its software layout version \
         {software_layout_version} is above the coordinator's ({coordinator_id}, software \
         layout version {coordinator_software_layout_version}); upgrade the coordinator \
         first, then the members"
    )]
    SoftwareAboveCoordinator {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// Its SLV.
        software_layout_version: u32,
        /// The coordinator.
        coordinator_id: String,
        /// The coordinator's SLV for the kind.
        coordinator_software_layout_version: u32,
    },
    /// A heartbeat from a member that never registered (or whose registration was lost):
    /// it must register first.
    #[error("{kind} member {member_id} is not registered; register before sending heartbeats")]
    NotRegistered {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
    },
}

/// A registration or heartbeat that did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HeartbeatError {
    /// The coordinator refused the member; see the [`Refusal`].
    #[error(transparent)]
    Refused(Refusal),
    /// The coordinator could not decide (its store or the link failed). Nothing changed
    /// for the member: retry later.
    #[error("coordinator unavailable: {reason}; retry later")]
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// The coordinator's endpoint did not accept the member's credentials (HTTP 401): no
    /// cluster token, or not the one the coordinator was given. Nothing changed, and
    /// retrying with the same token will not help.
    #[error(
        "the coordinator refused the member's credentials: {reason}; give the member the \
         cluster token the coordinator serves the member link with"
    )]
    Unauthorized {
        /// What the coordinator said, and where it is.
        reason: String,
    },
    /// The coordinator's endpoint could not take the request at all (HTTP 400, 404, 413,
    /// ...): a malformed or oversized body, or an address that is not a coordinator's
    /// member link. Nothing changed. Between a member and a coordinator of compatible
    /// releases this does not happen: check the address and both releases.
    #[error(
        "the coordinator could not take the request: {reason}; check the coordinator's \
         address and that member and coordinator run compatible releases"
    )]
    BadRequest {
        /// What was wrong.
        reason: String,
    },
}

impl From<Refusal> for HeartbeatError {
    fn from(refusal: Refusal) -> Self {
        Self::Refused(refusal)
    }
}
