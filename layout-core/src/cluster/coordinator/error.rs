//! Why the coordinator refuses a request: [`ClusterError`], and the [`Blocker`]s a
//! refused finalization lists.

use std::fmt;

use crate::cluster::store::StoreError;
use crate::error::BoxError;

/// A member that keeps a finalization from starting: its software is older than the
/// target, and it is not excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// The member.
    pub member_id: String,
    /// Its SLV.
    pub software_layout_version: u32,
    /// Whether it is live (a dead member blocks too, until upgraded or excluded).
    pub live: bool,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (software layout version {}, {})",
            self.member_id,
            self.software_layout_version,
            if self.live { "live" } else { "not live" }
        )
    }
}

/// What the coordinator could not do. Each variant carries the facts an operator needs;
/// `docs/cluster-upgrade.md` says how to resolve each.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The cluster state was moved to another store; this one is stale.
    #[error(
        "the cluster state of {kind} in {location} was moved to {moved_to}; point the \
         coordinator at the new store"
    )]
    StoreMoved {
        /// The component kind.
        kind: String,
        /// This store.
        location: String,
        /// Where the state went.
        moved_to: String,
    },
    /// No member of this kind ever registered, and the coordinator has no layout of it.
    #[error("unknown component kind {kind}: no member of it ever registered")]
    UnknownKind {
        /// The component kind.
        kind: String,
    },
    /// No such member.
    #[error("{kind} member {member_id} is unknown")]
    UnknownMember {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
    },
    /// Finalization refused: members whose software cannot follow.
    #[error(
        "finalization of {kind} to layout version {target} refused: {} member(s) run software \
         below it: {}. Upgrade them, or exclude a dead one with a reason",
        blockers.len(),
        blockers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Blocked {
        /// The component kind.
        kind: String,
        /// The target.
        target: u32,
        /// Every blocking member.
        blockers: Vec<Blocker>,
    },
    /// Another coordinator is finalizing this kind.
    #[error("finalization of {kind} is in progress, driven by coordinator {holder}")]
    InProgress {
        /// The component kind.
        kind: String,
        /// The coordinator holding the finalizer claim.
        holder: String,
    },
    /// A finalization to another target is unfinished.
    #[error(
        "a finalization of {kind} to layout version {in_progress} is unfinished; finish it \
         (finalize again without a target, or to {in_progress}) before asking for {requested}"
    )]
    DifferentTargetInProgress {
        /// The component kind.
        kind: String,
        /// The unfinished finalization's target.
        in_progress: u32,
        /// The target asked for.
        requested: u32,
    },
    /// The coordinator's own software is older than the target or the cluster.
    #[error(
        "the coordinator's software layout version {software_layout_version} for {kind} is \
         below layout version {required}; upgrade the coordinator first"
    )]
    CoordinatorSoftwareTooOld {
        /// The component kind.
        kind: String,
        /// The coordinator's SLV.
        software_layout_version: u32,
        /// The version it would need.
        required: u32,
    },
    /// The coordinator's own disk is finalized beyond the cluster's version.
    #[error(
        "the coordinator's metadata layout version {metadata_layout_version} for {kind} is \
         above the cluster's finalized version {cluster_layout_version}: its disk belongs to \
         another cluster, or the cluster store was reset"
    )]
    CoordinatorAheadOfCluster {
        /// The component kind.
        kind: String,
        /// The coordinator's MLV.
        metadata_layout_version: u32,
        /// The cluster's.
        cluster_layout_version: u32,
    },
    /// The coordinator's own finalization failed; the cluster stays at checkpoint
    /// `started`, and finalizing again resumes.
    #[error(
        "finalization of {kind} to layout version {target}: the coordinator's own layout failed \
         to finalize: {source}. The cluster stays at checkpoint `started`; fix the cause and \
         finalize again to resume"
    )]
    LocalFinalize {
        /// The component kind.
        kind: String,
        /// The target.
        target: u32,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// An exclusion needs a reason (it is recorded and shown).
    #[error("excluding {kind} member {member_id} needs a reason; it is recorded and shown")]
    ExclusionNeedsReason {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
    },
    /// Only a dead member can be excluded.
    #[error(
        "{kind} member {member_id} is live (it sent a heartbeat within its lease); only a dead \
         member can be excluded: stop it first, or upgrade it"
    )]
    MemberIsLive {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
    },
    /// This coordinator's finalizer claim was taken over (its lease lapsed and another
    /// coordinator claimed the kind): the claim's fencing token moved on, and this
    /// coordinator writes no checkpoint any more.
    #[error(
        "finalization of {kind}: coordinator {coordinator_id} lost the finalizer claim \
         (its claim generation {generation}; the kind's is now {current_generation}, taken by \
         {holder}); it stops here and the new holder drives the finalization"
    )]
    Fenced {
        /// The component kind.
        kind: String,
        /// This coordinator.
        coordinator_id: String,
        /// The claim generation this coordinator took.
        generation: u64,
        /// The kind's claim generation now.
        current_generation: u64,
        /// The coordinator that took it.
        holder: String,
    },
    /// The coordinator started less than one member lease ago and has not heard from
    /// every member yet: it cannot tell a dead member from a live one.
    #[error(
        "{kind} member {member_id}: the coordinator started less than one member lease ago \
         and cannot tell yet whether the member is live; retry in {retry_in_ms} ms"
    )]
    LivenessNotKnownYet {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// When liveness is known.
        retry_in_ms: u64,
    },
    /// The coordinator's id is recorded as a member's id: coordinators and members share
    /// one membership.
    #[error(
        "coordinator {coordinator_id}: its id is the id of a {kind} member; give the \
         coordinator its own id"
    )]
    CoordinatorIdTaken {
        /// The component kind.
        kind: String,
        /// The coordinator's id.
        coordinator_id: String,
    },
    /// Other writers kept changing the state.
    #[error("the cluster state of {kind} kept changing under {attempts} attempts; retry")]
    Contention {
        /// The component kind.
        kind: String,
        /// How many attempts were made.
        attempts: u32,
    },
}
