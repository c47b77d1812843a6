//! The coordinator: accepts or refuses members, finalizes the cluster, tracks members
//! until they have finalized too, and records exclusions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::member::{LocalError, LocalLayout};
use super::protocol::{
    CoordinatorAnswer, FinalizationProgress, HeartbeatError, Instruction, MemberReport, Refusal,
    PROTOCOL_VERSION,
};
use super::state::{
    AuditEntry, Checkpoint, ClusterFinalization, Exclusion, KindState, MemberRecord,
    CLUSTER_STATE_FORMAT,
};
use super::store::{CasOutcome, ClusterStore, FinalizerClaim, StoreError};
use crate::clock::{Clock, SystemClock};

/// How many times a change is retried when another writer changed the state first.
const MAX_ATTEMPTS: u32 = 64;

/// How a [`Coordinator`] is set up.
#[derive(Clone)]
#[non_exhaustive]
pub struct CoordinatorOptions {
    /// This coordinator's id (recorded in checkpoints and the audit trail, and the holder
    /// name of the finalizer claim). Keep it across restarts and unique per coordinator:
    /// a coordinator restarted with the same id takes back a finalizer claim its previous
    /// run left behind at once, while other ids wait for it to lapse. Default:
    /// `coordinator`.
    pub coordinator_id: String,
    /// How long a member stays live after a heartbeat. Default: 10 s.
    pub member_lease_ttl: Duration,
    /// The lease of the finalizer claim on a shared store (kept alive while the
    /// coordinator's process lives). Default: 10 s.
    pub finalizer_lease_ttl: Duration,
    /// The clock for timestamps. Default: the system clock.
    pub clock: Arc<dyn Clock>,
    /// The coordinator's own layout, per component kind: it finalizes first, and the
    /// cluster's version of a new kind starts at its MLV.
    pub locals: BTreeMap<String, Arc<dyn LocalLayout>>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            coordinator_id: "coordinator".to_owned(),
            member_lease_ttl: Duration::from_secs(10),
            finalizer_lease_ttl: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            locals: BTreeMap::new(),
        }
    }
}

impl CoordinatorOptions {
    /// Sets the coordinator's id.
    #[must_use]
    pub fn with_coordinator_id(mut self, id: impl Into<String>) -> Self {
        self.coordinator_id = id.into();
        self
    }

    /// Sets how long a member stays live after a heartbeat.
    #[must_use]
    pub fn with_member_lease_ttl(mut self, ttl: Duration) -> Self {
        self.member_lease_ttl = ttl;
        self
    }

    /// Sets the lease of the finalizer claim.
    #[must_use]
    pub fn with_finalizer_lease_ttl(mut self, ttl: Duration) -> Self {
        self.finalizer_lease_ttl = ttl;
        self
    }

    /// Sets the clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The coordinator's own layout takes part in `kind`: it is finalized first.
    #[must_use]
    pub fn with_local(mut self, kind: impl Into<String>, layout: Arc<dyn LocalLayout>) -> Self {
        self.locals.insert(kind.into(), layout);
        self
    }
}

impl fmt::Debug for CoordinatorOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinatorOptions")
            .field("coordinator_id", &self.coordinator_id)
            .field("member_lease_ttl", &self.member_lease_ttl)
            .field("finalizer_lease_ttl", &self.finalizer_lease_ttl)
            .field("locals", &self.locals.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

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
        source: LocalError,
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
    /// Other writers kept changing the state.
    #[error("the cluster state of {kind} kept changing under {attempts} attempts; retry")]
    Contention {
        /// The component kind.
        kind: String,
        /// How many attempts were made.
        attempts: u32,
    },
}

/// What [`Coordinator::finalize`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterFinalizeOutcome {
    /// The cluster was already at (or above) the target: nothing to do (besides advancing
    /// checkpoints that needed no work). Members may still be finalizing: see
    /// [`Coordinator::status`].
    AlreadyFinalized {
        /// The cluster's finalized version.
        cluster_layout_version: u32,
    },
    /// This call finalized (or resumed from `started` and finished) the coordinator's
    /// part: the cluster is at `target`, and members are told to finalize. Exactly one
    /// call per finalization answers this.
    Finalized {
        /// The cluster's finalized version now.
        target: u32,
        /// The checkpoint reached.
        checkpoint: Checkpoint,
        /// Members (not excluded) whose MLV is still below the target.
        pending_members: Vec<String>,
    },
}

/// A member, as shown by [`Coordinator::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member.
    pub member_id: String,
    /// Its SLV, as last reported.
    pub software_layout_version: u32,
    /// Its MLV, as last reported.
    pub metadata_layout_version: u32,
    /// Whether its lease is current.
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
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.finalization.as_ref().map(|f| f.checkpoint)
    }

    /// Whether the last finalization is complete (or none ever ran).
    pub fn is_complete(&self) -> bool {
        self.checkpoint()
            .is_none_or(|checkpoint| checkpoint == Checkpoint::Complete)
    }
}

/// The coordinator side of the protocol, transport-free: plain method calls, safe to
/// share between threads. Put it behind any transport (see
/// [`CoordinatorLink`](crate::cluster::CoordinatorLink), and `CoordinatorServer` with the
/// `http` feature).
///
/// Every change is a compare-and-swap of the kind's state in the [`ClusterStore`], so
/// several coordinators may share a store (etcd); the single active finalizer of a kind
/// is elected through [`ClusterStore::claim_finalizer`].
///
/// The rules (DESIGN.md section 9):
/// - a member whose SLV is below the cluster's finalized version is refused, and so is
///   one below the target of a finalization that has started (the fence);
/// - an older member is accepted while the cluster is pre-finalized, if its SLV covers
///   the cluster's version (rolling upgrade);
/// - finalization to V starts only when every member, live or not, unless excluded, has
///   SLV >= V; the refusal lists the blockers;
/// - the coordinator finalizes its own layout, raises the cluster's version, then tells
///   each member to finalize on every answer until its MLV has caught up; checkpoints
///   `started`, `coordinator finalized`, `members finalized`, `complete` are stored as
///   they are reached;
/// - an operator may exclude a dead member with a reason (recorded in the audit trail);
///   it may rejoin only with software at least as new as the cluster needed then.
pub struct Coordinator {
    store: Arc<dyn ClusterStore>,
    options: CoordinatorOptions,
    /// Members refused lately, per kind (in memory only): see
    /// [`refused_members`](Self::refused_members).
    refused: Mutex<BTreeMap<String, BTreeMap<String, RefusedMember>>>,
}

/// How many refused members are remembered per kind; beyond it the oldest is forgotten.
const MAX_REFUSED_PER_KIND: usize = 16 * 1024;

/// A member the coordinator refused at its last registration or heartbeat (see
/// [`Coordinator::refused_members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedMember {
    /// The member.
    pub member_id: String,
    /// Why it was refused.
    pub refusal: Refusal,
    /// When (the coordinator's clock, ms since the epoch).
    pub at_ms: u64,
}

enum Change<R> {
    Keep(R),
    Write(KindState, R),
}

impl Coordinator {
    /// Opens the coordinator over `store`. For each kind the coordinator has a layout of:
    /// a new kind starts at its MLV; if the cluster is ahead of it, it catches up
    /// (finalizes to the cluster's version); if its software is older than the cluster,
    /// or its disk is ahead of the cluster, it is refused.
    pub fn open(
        store: Arc<dyn ClusterStore>,
        options: CoordinatorOptions,
    ) -> Result<Self, ClusterError> {
        let coordinator = Self {
            store,
            options,
            refused: Mutex::new(BTreeMap::new()),
        };
        for (kind, local) in &coordinator.options.locals {
            let state = coordinator.load_or_create(kind)?;
            let cluster = state.cluster_layout_version;
            let slv = local.software_layout_version();
            let mlv = local.metadata_layout_version();
            if slv < cluster {
                return Err(ClusterError::CoordinatorSoftwareTooOld {
                    kind: kind.clone(),
                    software_layout_version: slv,
                    required: cluster,
                });
            }
            let finalizing_to = state.finalization_in_progress().map(|f| f.target);
            if mlv > cluster && finalizing_to.is_none_or(|target| mlv > target) {
                return Err(ClusterError::CoordinatorAheadOfCluster {
                    kind: kind.clone(),
                    metadata_layout_version: mlv,
                    cluster_layout_version: cluster,
                });
            }
            if mlv < cluster {
                tracing::info!(kind = %kind, from = mlv, to = cluster, "coordinator catches up with the cluster's finalized version");
                local
                    .finalize_to(cluster, &coordinator.options.coordinator_id)
                    .map_err(|source| ClusterError::LocalFinalize {
                        kind: kind.clone(),
                        target: cluster,
                        source,
                    })?;
            }
        }
        Ok(coordinator)
    }

    /// This coordinator's id.
    pub fn coordinator_id(&self) -> &str {
        &self.options.coordinator_id
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ClusterStore> {
        &self.store
    }

    /// The component kinds known to the store.
    pub fn kinds(&self) -> Result<Vec<String>, ClusterError> {
        Ok(self.store.kinds()?)
    }

    fn now(&self) -> u64 {
        self.options.clock.now_ms()
    }

    fn audit(
        &self,
        state: &mut KindState,
        actor: &str,
        event: &str,
        member_id: Option<&str>,
        version: Option<u32>,
        detail: impl Into<String>,
    ) {
        state.audit.push(AuditEntry {
            at_ms: self.now(),
            actor: actor.to_owned(),
            event: event.to_owned(),
            member_id: member_id.map(ToOwned::to_owned),
            version,
            detail: detail.into(),
        });
    }

    fn check_moved(&self, state: &KindState) -> Result<(), ClusterError> {
        match &state.moved_to {
            Some(moved_to) => Err(ClusterError::StoreMoved {
                kind: state.kind.clone(),
                location: self.store.location(),
                moved_to: moved_to.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Read-modify-compare-and-swap of a kind's state, retried on conflicts.
    fn modify<R, E: From<ClusterError>>(
        &self,
        kind: &str,
        mut change: impl FnMut(Option<&KindState>) -> Result<Change<R>, E>,
    ) -> Result<R, E> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.store.load(kind).map_err(ClusterError::from)?;
            if let Some(current) = &current {
                self.check_moved(&current.state)?;
                if current.state.format > CLUSTER_STATE_FORMAT {
                    return Err(ClusterError::Store(StoreError::UnsupportedFormat {
                        location: self.store.location(),
                        found: current.state.format,
                        supported: CLUSTER_STATE_FORMAT,
                    })
                    .into());
                }
            }
            match change(current.as_ref().map(|c| &c.state))? {
                Change::Keep(result) => return Ok(result),
                Change::Write(next, result) => {
                    let expected = current.map(|c| c.revision);
                    match self
                        .store
                        .compare_and_swap(kind, expected, &next)
                        .map_err(ClusterError::from)?
                    {
                        CasOutcome::Swapped { .. } => return Ok(result),
                        CasOutcome::Conflict => {}
                    }
                }
            }
        }
        Err(ClusterError::Contention {
            kind: kind.to_owned(),
            attempts: MAX_ATTEMPTS,
        }
        .into())
    }

    fn load_or_create(&self, kind: &str) -> Result<KindState, ClusterError> {
        self.modify(kind, |current| match current {
            Some(state) => Ok(Change::Keep(state.clone())),
            None => match self.options.locals.get(kind) {
                Some(local) => {
                    let state = KindState::new(kind, local.metadata_layout_version());
                    Ok(Change::Write(state.clone(), state))
                }
                None => Err(ClusterError::UnknownKind {
                    kind: kind.to_owned(),
                }),
            },
        })
    }

    fn answer(&self, state: &KindState, report: &MemberReport) -> CoordinatorAnswer {
        let cluster = state.cluster_layout_version;
        CoordinatorAnswer {
            protocol_version: PROTOCOL_VERSION,
            coordinator_id: self.options.coordinator_id.clone(),
            kind: state.kind.clone(),
            cluster_layout_version: cluster,
            finalization: state
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
    fn check_fences(state: &KindState, report: &MemberReport) -> Result<(), Refusal> {
        let kind = || report.kind.clone();
        let member_id = || report.member_id.clone();
        let slv = report.software_layout_version;
        let cluster = state.cluster_layout_version;
        if slv < cluster {
            return Err(Refusal::SoftwareBelowCluster {
                kind: kind(),
                member_id: member_id(),
                software_layout_version: slv,
                cluster_layout_version: cluster,
            });
        }
        if let Some(f) = state.finalization_in_progress() {
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

    fn validate(report: &MemberReport) -> Result<(), Refusal> {
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
        match problem {
            Some(problem) => Err(Refusal::InvalidReport {
                kind: report.kind.clone(),
                member_id: report.member_id.clone(),
                problem,
            }),
            None => Ok(()),
        }
    }

    fn unavailable(error: &ClusterError) -> HeartbeatError {
        HeartbeatError::Unavailable {
            reason: error.to_string(),
        }
    }

    /// A member registers (at start-up): accepted if it passes the fences (its membership
    /// is stored, its lease started, an exclusion lifted if its software is new enough),
    /// else refused. The answer tells a member whose MLV is below the cluster's version
    /// to finalize. The first registration of a kind the coordinator has no layout of
    /// starts that kind's cluster version at the member's MLV.
    pub fn register(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        let result = self.register_member(report);
        self.note_refusal(report, &result);
        result
    }

    fn register_member(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        Self::validate(report)?;
        let kind = report.kind.as_str();
        let now = self.now();
        let answer = self.modify::<_, Unavail>(kind, |current| {
            let mut state = if let Some(state) = current {
                state.clone()
            } else {
                let initial = self.options.locals.get(kind).map_or(
                    report.metadata_layout_version,
                    LocalLayout::metadata_layout_version,
                );
                KindState::new(kind, initial)
            };
            let id = report.member_id.as_str();
            let existing = state.members.get(id).cloned();
            if let Some(exclusion) = existing.as_ref().and_then(|m| m.excluded.as_ref()) {
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
                let detail = format!(
                    "rejoined with software layout version {} (exclusion by {}: {})",
                    report.software_layout_version, exclusion.excluded_by, exclusion.reason
                );
                self.audit(
                    &mut state,
                    id,
                    "readmitted",
                    Some(id),
                    Some(report.software_layout_version),
                    detail,
                );
            }
            Self::check_fences(&state, report)?;
            let first = existing.as_ref().map_or(now, |m| m.first_registered_at_ms);
            state.members.insert(
                id.to_owned(),
                MemberRecord {
                    software_layout_version: report.software_layout_version,
                    metadata_layout_version: report.metadata_layout_version,
                    first_registered_at_ms: first,
                    last_registered_at_ms: now,
                    excluded: None,
                },
            );
            self.advance_members(&mut state);
            let answer = self.answer(&state, report);
            Ok(Change::Write(state, answer))
        });
        let answer = answer.map_err(|e| match e {
            Unavail::Heartbeat(e) => e,
            Unavail::Cluster(e) => Self::unavailable(&e),
        })?;
        self.after_member_update(report, &answer)?;
        Ok(answer)
    }

    /// A registered member's heartbeat: renews its lease, records a changed MLV (a
    /// member that finalized), advances the checkpoints, and answers like
    /// [`register`](Self::register).
    pub fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        let result = self.member_heartbeat(report);
        self.note_refusal(report, &result);
        result
    }

    fn member_heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        Self::validate(report)?;
        let kind = report.kind.as_str();
        let answer = self.modify::<_, Unavail>(kind, |current| {
            let not_registered = || {
                HeartbeatError::Refused(Refusal::NotRegistered {
                    kind: report.kind.clone(),
                    member_id: report.member_id.clone(),
                })
            };
            let mut state = current.ok_or_else(not_registered)?.clone();
            let record = state
                .members
                .get_mut(&report.member_id)
                .ok_or_else(not_registered)?;
            if record.excluded.is_some() {
                return Err(not_registered().into());
            }
            let changed = record.software_layout_version != report.software_layout_version
                || record.metadata_layout_version != report.metadata_layout_version;
            if changed {
                record.software_layout_version = report.software_layout_version;
                record.metadata_layout_version = report.metadata_layout_version;
            }
            Self::check_fences(&state, report)?;
            let advanced = self.advance_members(&mut state);
            let answer = self.answer(&state, report);
            Ok(if changed || advanced {
                Change::Write(state, answer)
            } else {
                Change::Keep(answer)
            })
        });
        let answer = answer.map_err(|e| match e {
            Unavail::Heartbeat(e) => e,
            Unavail::Cluster(e) => Self::unavailable(&e),
        })?;
        self.after_member_update(report, &answer)?;
        Ok(answer)
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
                if let Some(members) = refused.get_mut(&report.kind) {
                    members.remove(&report.member_id);
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
                        refusal: refusal.clone(),
                        at_ms: now,
                    },
                );
            }
            Err(_) => {}
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.options.member_lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// The members of `kind` the coordinator refuses now: those whose last registration
    /// or heartbeat, within the member lease TTL, was refused (an old binary after
    /// finalization, an excluded member back with its old binary, a disk ahead of the
    /// cluster...), sorted by id. Accepting a member forgets its refusal. Kept in the
    /// coordinator's memory only (a restarted coordinator starts with none), at most
    /// 16,384 per kind.
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

    /// Renews the member's lease and, when this report completed the members' part of a
    /// finalization, stores `complete` (a transaction of its own).
    fn after_member_update(
        &self,
        report: &MemberReport,
        answer: &CoordinatorAnswer,
    ) -> Result<(), HeartbeatError> {
        self.store
            .mark_alive(
                &report.kind,
                &report.member_id,
                self.options.member_lease_ttl,
            )
            .map_err(|e| Self::unavailable(&e.into()))?;
        if answer
            .finalization
            .is_some_and(|f| f.checkpoint == Checkpoint::MembersFinalized)
        {
            self.complete_if_ready(&report.kind)
                .map_err(|e| Self::unavailable(&e))?;
        }
        Ok(())
    }

    /// `coordinator finalized` -> `members finalized` once every member not excluded has
    /// reached the target. Returns whether it moved.
    fn advance_members(&self, state: &mut KindState) -> bool {
        let Some(f) = &state.finalization else {
            return false;
        };
        if f.checkpoint != Checkpoint::CoordinatorFinalized {
            return false;
        }
        let target = f.target;
        if state
            .active_members()
            .any(|(_, m)| m.metadata_layout_version < target)
        {
            return false;
        }
        if let Some(f) = &mut state.finalization {
            f.checkpoint = Checkpoint::MembersFinalized;
        }
        let actor = self.options.coordinator_id.clone();
        self.audit(
            state,
            &actor,
            "members-finalized",
            None,
            Some(target),
            "every member not excluded reported the target",
        );
        true
    }

    /// Advances the checkpoints that need no work: `coordinator finalized` -> `members
    /// finalized` (when every member not excluded reached the target), then `members
    /// finalized` -> `complete`, each in a transaction of its own.
    fn complete_if_ready(&self, kind: &str) -> Result<(), ClusterError> {
        self.modify::<_, ClusterError>(kind, |current| {
            let Some(state) = current else {
                return Ok(Change::Keep(()));
            };
            let mut state = state.clone();
            Ok(if self.advance_members(&mut state) {
                Change::Write(state, ())
            } else {
                Change::Keep(())
            })
        })?;
        self.modify::<_, ClusterError>(kind, |current| {
            let Some(state) = current else {
                return Ok(Change::Keep(()));
            };
            let mut state = state.clone();
            let now = self.now();
            let target = match &mut state.finalization {
                Some(f) if f.checkpoint == Checkpoint::MembersFinalized => {
                    f.checkpoint = Checkpoint::Complete;
                    f.completed_at_ms = Some(now);
                    f.target
                }
                _ => return Ok(Change::Keep(())),
            };
            let actor = self.options.coordinator_id.clone();
            self.audit(
                &mut state,
                &actor,
                "finalization-complete",
                None,
                Some(target),
                "",
            );
            Ok(Change::Write(state, ()))
        })
    }

    /// The members that keep a finalization to `target` from starting.
    fn blockers(&self, state: &KindState, target: u32) -> Result<Vec<Blocker>, ClusterError> {
        let live = self.store.live_members(&state.kind)?;
        Ok(blockers_of(state, target, &live))
    }

    /// Finalizes `kind` across the cluster to `target` (default: the coordinator's own SLV
    /// for the kind, else the newest SLV among its members), for `client_id`.
    ///
    /// Refused (nothing changed) when a member not excluded runs software below the
    /// target ([`ClusterError::Blocked`], listing every one), when another coordinator is
    /// finalizing ([`ClusterError::InProgress`]), or when an unfinished finalization has
    /// another target. Otherwise: checkpoint `started` (the target is fenced), the
    /// coordinator's own layout finalizes, checkpoint `coordinator finalized` (the
    /// cluster's version is the target; members are told to finalize), and, if every
    /// member has already caught up, `members finalized` and `complete`. An unfinished
    /// finalization (a crash, a failed local action) resumes where it stopped.
    pub fn finalize(
        &self,
        kind: &str,
        target: Option<u32>,
        client_id: &str,
    ) -> Result<ClusterFinalizeOutcome, ClusterError> {
        let local = self.options.locals.get(kind);
        let state = self.load_or_create(kind)?;
        let target = self.resolve_target(&state, target)?;
        if state.finalization_in_progress().is_none() && target <= state.cluster_layout_version {
            return Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                cluster_layout_version: state.cluster_layout_version,
            });
        }
        if let Some(local) = local {
            if local.software_layout_version() < target {
                return Err(ClusterError::CoordinatorSoftwareTooOld {
                    kind: kind.to_owned(),
                    software_layout_version: local.software_layout_version(),
                    required: target,
                });
            }
        }
        if state.finalization_in_progress().is_none() {
            let blockers = self.blockers(&state, target)?;
            if !blockers.is_empty() {
                return Err(ClusterError::Blocked {
                    kind: kind.to_owned(),
                    target,
                    blockers,
                });
            }
        }
        let holder = self.options.coordinator_id.as_str();
        match self
            .store
            .claim_finalizer(kind, holder, self.options.finalizer_lease_ttl)?
        {
            FinalizerClaim::Claimed => {}
            FinalizerClaim::HeldBy { holder } => {
                return Err(ClusterError::InProgress {
                    kind: kind.to_owned(),
                    holder,
                })
            }
        }
        let result = self.finalize_claimed(kind, target, client_id);
        if let Err(e) = self.store.release_finalizer(kind, holder) {
            tracing::warn!(kind, error = %e, "could not release the finalizer claim; it lapses with its lease");
        }
        result
    }

    fn resolve_target(&self, state: &KindState, target: Option<u32>) -> Result<u32, ClusterError> {
        let in_progress = state.finalization_in_progress().map(|f| f.target);
        match (target, in_progress) {
            (Some(requested), Some(in_progress)) if requested != in_progress => {
                Err(ClusterError::DifferentTargetInProgress {
                    kind: state.kind.clone(),
                    in_progress,
                    requested,
                })
            }
            (_, Some(in_progress)) => Ok(in_progress),
            (Some(requested), None) => Ok(requested),
            (None, None) => Ok(match self.options.locals.get(&state.kind) {
                Some(local) => local.software_layout_version(),
                None => state
                    .active_members()
                    .map(|(_, m)| m.software_layout_version)
                    .max()
                    .unwrap_or(state.cluster_layout_version),
            }),
        }
    }

    // One step after the other, each a transaction; splitting it would hide the order.
    #[allow(clippy::too_many_lines)]
    fn finalize_claimed(
        &self,
        kind: &str,
        target: u32,
        client_id: &str,
    ) -> Result<ClusterFinalizeOutcome, ClusterError> {
        let actor = self.options.coordinator_id.clone();
        // Checkpoint `started`, decided on the state as it is now that we hold the claim.
        let live = self.store.live_members(kind)?;
        let already = self.modify::<_, ClusterError>(kind, |current| {
            let mut state = current
                .ok_or_else(|| ClusterError::UnknownKind {
                    kind: kind.to_owned(),
                })?
                .clone();
            if let Some(f) = state.finalization_in_progress() {
                if f.target != target {
                    return Err(ClusterError::DifferentTargetInProgress {
                        kind: kind.to_owned(),
                        in_progress: f.target,
                        requested: target,
                    });
                }
                // Resumed at `started`; past it, the coordinator's part is done already
                // (by another coordinator, or before a restart).
                return Ok(Change::Keep(
                    (f.checkpoint != Checkpoint::Started).then_some(state.cluster_layout_version),
                ));
            }
            if target <= state.cluster_layout_version {
                return Ok(Change::Keep(Some(state.cluster_layout_version)));
            }
            let blockers = blockers_of(&state, target, &live);
            if !blockers.is_empty() {
                return Err(ClusterError::Blocked {
                    kind: kind.to_owned(),
                    target,
                    blockers,
                });
            }
            state.finalization = Some(ClusterFinalization {
                target,
                checkpoint: Checkpoint::Started,
                client_id: client_id.to_owned(),
                coordinator_id: actor.clone(),
                started_at_ms: self.now(),
                completed_at_ms: None,
            });
            self.audit(
                &mut state,
                client_id,
                "finalization-started",
                None,
                Some(target),
                format!("by coordinator {actor}"),
            );
            Ok(Change::Write(state, None))
        })?;
        if let Some(cluster_layout_version) = already {
            self.complete_if_ready(kind)?;
            return Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                cluster_layout_version,
            });
        }

        // The coordinator's own layout.
        if let Some(local) = self.options.locals.get(kind) {
            if local.metadata_layout_version() < target {
                local.finalize_to(target, client_id).map_err(|source| {
                    ClusterError::LocalFinalize {
                        kind: kind.to_owned(),
                        target,
                        source,
                    }
                })?;
            }
        }

        // Checkpoint `coordinator finalized`: the cluster's version moves.
        let moved = self.modify::<_, ClusterError>(kind, |current| {
            let Some(state) = current else {
                return Ok(Change::Keep(false));
            };
            let mut state = state.clone();
            match &mut state.finalization {
                Some(f) if f.target == target && f.checkpoint == Checkpoint::Started => {
                    f.checkpoint = Checkpoint::CoordinatorFinalized;
                }
                _ => return Ok(Change::Keep(false)),
            }
            state.cluster_layout_version = state.cluster_layout_version.max(target);
            self.audit(
                &mut state,
                &actor,
                "coordinator-finalized",
                None,
                Some(target),
                "members are told to finalize",
            );
            Ok(Change::Write(state, true))
        })?;
        self.complete_if_ready(kind)?;

        let state = self.load_or_create(kind)?;
        if !moved {
            return Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                cluster_layout_version: state.cluster_layout_version,
            });
        }
        let checkpoint = state
            .finalization
            .as_ref()
            .map_or(Checkpoint::Complete, |f| f.checkpoint);
        let pending_members = state
            .active_members()
            .filter(|(_, m)| m.metadata_layout_version < target)
            .map(|(id, _)| id.clone())
            .collect();
        Ok(ClusterFinalizeOutcome::Finalized {
            target,
            checkpoint,
            pending_members,
        })
    }

    /// Resumes every unfinished finalization this coordinator can drive (after a
    /// restart). Returns each kind's outcome.
    pub fn resume(&self) -> Result<Vec<(String, ClusterFinalizeOutcome)>, ClusterError> {
        let mut outcomes = Vec::new();
        for kind in self.store.kinds()? {
            let Some(stored) = self.store.load(&kind)? else {
                continue;
            };
            let Some(f) = stored.state.finalization_in_progress().cloned() else {
                continue;
            };
            let outcome = if f.checkpoint == Checkpoint::Started {
                self.finalize(&kind, Some(f.target), &f.client_id)?
            } else {
                self.complete_if_ready(&kind)?;
                ClusterFinalizeOutcome::Finalized {
                    target: f.target,
                    checkpoint: self
                        .status(&kind)?
                        .checkpoint()
                        .unwrap_or(Checkpoint::Complete),
                    pending_members: Vec::new(),
                }
            };
            outcomes.push((kind, outcome));
        }
        Ok(outcomes)
    }

    /// Excludes a dead member of `kind`, with a `reason` recorded in the audit trail and
    /// shown in status: it no longer blocks finalization, and may rejoin only with
    /// software at least as new as the newest version the cluster could finalize to now.
    /// Refused for a live member and without a reason. Excluding an excluded member
    /// returns its exclusion unchanged.
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
        if self.store.live_members(kind)?.contains(member_id) {
            return Err(ClusterError::MemberIsLive {
                kind: kind.to_owned(),
                member_id: member_id.to_owned(),
            });
        }
        let local_slv = self
            .options
            .locals
            .get(kind)
            .map(LocalLayout::software_layout_version);
        let exclusion = self.modify::<_, ClusterError>(kind, |current| {
            let unknown = || ClusterError::UnknownMember {
                kind: kind.to_owned(),
                member_id: member_id.to_owned(),
            };
            let mut state = current.ok_or_else(unknown)?.clone();
            let record = state.members.get(member_id).ok_or_else(unknown)?;
            if let Some(existing) = &record.excluded {
                return Ok(Change::Keep(existing.clone()));
            }
            let newest_other = state
                .active_members()
                .filter(|(id, _)| id.as_str() != member_id)
                .map(|(_, m)| m.software_layout_version)
                .max();
            let required = [
                Some(state.cluster_layout_version),
                state.finalization_in_progress().map(|f| f.target),
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
                software_layout_version: record.software_layout_version,
                required_software_layout_version: required,
            };
            if let Some(record) = state.members.get_mut(member_id) {
                record.excluded = Some(exclusion.clone());
            }
            self.audit(
                &mut state,
                by,
                "excluded",
                Some(member_id),
                Some(required),
                reason,
            );
            self.advance_members(&mut state);
            Ok(Change::Write(state, exclusion))
        })?;
        self.complete_if_ready(kind)?;
        Ok(exclusion)
    }

    /// The cluster state of `kind`: its finalized version, the finalization, every member
    /// (with liveness and exclusions) and the audit trail.
    pub fn status(&self, kind: &str) -> Result<ClusterStatus, ClusterError> {
        let state = self
            .store
            .load(kind)?
            .ok_or_else(|| ClusterError::UnknownKind {
                kind: kind.to_owned(),
            })?
            .state;
        self.check_moved(&state)?;
        let live = self.store.live_members(kind)?;
        Ok(ClusterStatus {
            kind: state.kind.clone(),
            cluster_layout_version: state.cluster_layout_version,
            finalization: state.finalization.clone(),
            members: state
                .members
                .iter()
                .map(|(id, m)| MemberStatus {
                    member_id: id.clone(),
                    software_layout_version: m.software_layout_version,
                    metadata_layout_version: m.metadata_layout_version,
                    live: live.contains(id),
                    excluded: m.excluded.clone(),
                })
                .collect(),
            audit: state.audit,
        })
    }

    /// The members that would block a finalization of `kind` to `target` (default as in
    /// [`finalize`](Self::finalize)) now, and the resolved target. Changes nothing.
    pub fn dry_run(
        &self,
        kind: &str,
        target: Option<u32>,
    ) -> Result<(u32, Vec<Blocker>), ClusterError> {
        let state = self.load_or_create(kind)?;
        let target = self.resolve_target(&state, target)?;
        Ok((target, self.blockers(&state, target)?))
    }
}

fn blockers_of(state: &KindState, target: u32, live: &BTreeSet<String>) -> Vec<Blocker> {
    state
        .active_members()
        .filter(|(_, m)| m.software_layout_version < target)
        .map(|(id, m)| Blocker {
            member_id: id.clone(),
            software_layout_version: m.software_layout_version,
            live: live.contains(id),
        })
        .collect()
}

/// The two ways a member request fails inside the coordinator.
enum Unavail {
    Heartbeat(HeartbeatError),
    Cluster(ClusterError),
}

impl From<ClusterError> for Unavail {
    fn from(e: ClusterError) -> Self {
        Self::Cluster(e)
    }
}

impl From<HeartbeatError> for Unavail {
    fn from(e: HeartbeatError) -> Self {
        Self::Heartbeat(e)
    }
}

impl From<Refusal> for Unavail {
    fn from(e: Refusal) -> Self {
        Self::Heartbeat(HeartbeatError::Refused(e))
    }
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("coordinator_id", &self.options.coordinator_id)
            .field("store", &self.store.location())
            .finish_non_exhaustive()
    }
}
