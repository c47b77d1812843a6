//! The coordinator: accepts or refuses members, finalizes the cluster, tracks members
//! until they have finalized too, and records exclusions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use super::local::LocalLayout;
use super::protocol::{
    CoordinatorAnswer, FinalizationProgress, HeartbeatError, Instruction, MemberReport, Refusal,
    PROTOCOL_VERSION,
};
use super::state::{
    AuditEntry, Checkpoint, ClusterFinalization, Exclusion, KindRecord, MemberRecord, MemberRole,
    CLUSTER_STATE_FORMAT,
};
use super::store::{CasOutcome, ClusterStore, FinalizerClaim, StoreError, Versioned};
use crate::clock::{Clock, SystemClock};
use crate::error::BoxError;

/// The longest a coordinator's driver waits before it tries again to advance a
/// finalization that keeps failing (see [`Coordinator::spawn_driver`]).
pub const MAX_DRIVER_BACKOFF: Duration = Duration::from_secs(60);

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
    /// The clock for timestamps and member liveness. Default: the system clock.
    pub clock: Arc<dyn Clock>,
    /// How long a kind record read from the store serves heartbeats before it is read
    /// again (a heartbeat that changes nothing reads nothing else). Changes this
    /// coordinator makes are seen at once; another coordinator's within this time.
    /// Default: 500 ms.
    pub state_refresh: Duration,
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
            state_refresh: Duration::from_millis(500),
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

    /// Sets how long a kind record read from the store serves heartbeats.
    #[must_use]
    pub fn with_state_refresh(mut self, refresh: Duration) -> Self {
        self.state_refresh = refresh;
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

/// The failpoints of a cluster finalization on the coordinator (`fail` crate, compiled in
/// with the `failpoints` feature), in the order a finalization passes them, each once:
/// - `cluster::started`: checkpoint `started` is stored, the coordinator's own layout is
///   not finalized yet;
/// - `cluster::coordinator_finalized`: checkpoint `coordinator finalized` is stored
///   (members are told to finalize from now on);
/// - `cluster::members_finalized`: checkpoint `members finalized` is stored, `complete`
///   is not.
///
/// A coordinator killed at any of them resumes from the stored checkpoint (its driver, or
/// `finalize` again).
pub const CLUSTER_FAILPOINTS: &[&str] = &[
    "cluster::started",
    "cluster::coordinator_finalized",
    "cluster::members_finalized",
];

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
/// Every change is a compare-and-swap of one record in the [`ClusterStore`]: a member's
/// registration writes that member's record only, guarded by the kind record's revision
/// (so it cannot slip past a finalization that starts meanwhile); a checkpoint writes the
/// small kind record. Several coordinators may share a store (etcd); the single active
/// finalizer of a kind is elected through [`ClusterStore::claim_finalizer`], and its
/// fencing token (the kind's claim generation) is checked on every checkpoint it writes.
///
/// What stays in memory, per coordinator: member liveness (from the heartbeats it
/// receives: a restarted coordinator knows it again one member lease later, and refuses
/// exclusions until then), the kind record for `state_refresh`, the member records it has
/// seen, and the members a finalization still waits for. A heartbeat that changes nothing
/// costs no store write and, mostly, no store read.
///
/// Identity: every [`MemberReport`] carries its process's incarnation; a second live
/// process under the same member id is refused. The coordinator registers itself in the
/// membership of each kind it has a layout of (role coordinator), so an older
/// coordinator on the same store blocks finalization; no member may take a
/// coordinator's id, and no member may run software newer than the coordinator's.
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
    /// This coordinator process's incarnation (its own member record carries it).
    incarnation: String,
    /// When it opened (its clock): liveness is known one member lease later.
    started_at_ms: u64,
    /// Members refused lately, per kind (in memory only): see
    /// [`refused_members`](Self::refused_members).
    refused: Mutex<BTreeMap<String, BTreeMap<String, RefusedMember>>>,
    /// What this coordinator knows of each kind, in memory.
    kinds: RwLock<HashMap<String, Arc<KindCache>>>,
    /// The kinds this process is finalizing now (one finalization per kind at a time).
    running: Arc<Mutex<HashSet<String>>>,
}

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

/// What a coordinator keeps in memory of one kind: the kind record (re-read after
/// `state_refresh`), the member records it has seen, liveness from heartbeats, and the
/// members a finalization still waits for.
#[derive(Default)]
struct KindCache {
    record: Mutex<Option<(Versioned<KindRecord>, Instant)>>,
    members: RwLock<HashMap<String, Versioned<MemberRecord>>>,
    /// member -> (incarnation, last heartbeat, ms).
    live: Mutex<HashMap<String, (String, u64)>>,
    /// While the kind is at `coordinator finalized`: its target, the active members seen
    /// below it, and when the store was last asked.
    pending: Mutex<Option<Pending>>,
    /// Held while a checkpoint moves and its audit entry is written, so two threads of
    /// this coordinator cannot record `finalization-complete` before
    /// `members-finalized`.
    advancing: Mutex<()>,
}

struct Pending {
    target: u32,
    below: HashSet<String>,
    checked_at: Instant,
    /// A listing of the members is under way (its result replaces this).
    listing: bool,
}

/// What the checks of a finalization decided.
enum Checked {
    /// Nothing to do: the cluster is at this version.
    Already(u32),
    /// Finalize to this target.
    Go(u32),
}

/// What writing checkpoint `started` found.
enum Started {
    /// The cluster is at the target already (or past `started`): this version.
    Already(u32),
    /// An unfinished finalization at `started`, resumed.
    Resumed,
    /// Written now; the finalization it replaced (to restore if it is withdrawn).
    New(Option<ClusterFinalization>),
}

enum Change<T, R> {
    Keep(R),
    Write(T, R),
}

/// Removes a kind from [`Coordinator::running`] when its finalization ends.
struct Running {
    running: Arc<Mutex<HashSet<String>>>,
    kind: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.lock().remove(&self.kind);
    }
}

/// Where a [`FinalizationJob`]'s thread leaves its outcome, and the signal that it did.
type JobOutcome = (
    Mutex<Option<Result<ClusterFinalizeOutcome, ClusterError>>>,
    Condvar,
);

/// A cluster finalization running on a thread of its own
/// ([`Coordinator::start_finalize`]): wait for its outcome, or let it run.
#[derive(Debug)]
pub struct FinalizationJob {
    kind: String,
    target: u32,
    done: Arc<JobOutcome>,
}

impl FinalizationJob {
    /// The component kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The version it finalizes to.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// Whether it has ended (its outcome not yet taken).
    pub fn is_finished(&self) -> bool {
        self.done.0.lock().is_some()
    }

    /// Waits up to `timeout` for the outcome (what [`Coordinator::finalize`] would have
    /// returned); `None` while it still runs. The outcome is handed out once.
    pub fn wait(&self, timeout: Duration) -> Option<Result<ClusterFinalizeOutcome, ClusterError>> {
        let (outcome, ended) = &*self.done;
        let mut outcome = outcome.lock();
        if outcome.is_none() {
            ended.wait_for(&mut outcome, timeout);
        }
        outcome.take()
    }
}

/// The background driver of a coordinator ([`Coordinator::spawn_driver`]); stops when
/// dropped.
#[derive(Debug)]
pub struct CoordinatorDriver {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CoordinatorDriver {
    fn drop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Coordinator {
    /// Opens the coordinator over `store`. For each kind the coordinator has a layout of:
    /// a new kind starts at its MLV; if the cluster is ahead of it, it catches up
    /// (finalizes to the cluster's version); if its software is older than the cluster,
    /// or its disk is ahead of the cluster, it is refused. It then registers in the kind's
    /// membership as a coordinator, with its SLV: an older coordinator blocks
    /// finalization like any member.
    pub fn open(
        store: Arc<dyn ClusterStore>,
        options: CoordinatorOptions,
    ) -> Result<Self, ClusterError> {
        let started_at_ms = options.clock.now_ms();
        let coordinator = Self {
            store,
            options,
            incarnation: crate::state::DataId::random().to_string(),
            started_at_ms,
            refused: Mutex::new(BTreeMap::new()),
            kinds: RwLock::new(HashMap::new()),
            running: Arc::new(Mutex::new(HashSet::new())),
        };
        for (kind, local) in &coordinator.options.locals {
            let record = coordinator.load_or_create(kind)?.value;
            let cluster = record.cluster_layout_version;
            let slv = local.software_layout_version();
            let mlv = local.metadata_layout_version();
            if slv < cluster {
                return Err(ClusterError::CoordinatorSoftwareTooOld {
                    kind: kind.clone(),
                    software_layout_version: slv,
                    required: cluster,
                });
            }
            let finalizing_to = record.finalization_in_progress().map(|f| f.target);
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
            coordinator.record_self(kind, local.as_ref())?;
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

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.options.member_lease_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn cache(&self, kind: &str) -> Arc<KindCache> {
        if let Some(cache) = self.kinds.read().get(kind) {
            return Arc::clone(cache);
        }
        Arc::clone(self.kinds.write().entry(kind.to_owned()).or_default())
    }

    fn audit(
        &self,
        kind: &str,
        actor: &str,
        event: &str,
        member_id: Option<&str>,
        version: Option<u32>,
        detail: impl Into<String>,
    ) -> Result<(), ClusterError> {
        let entry = AuditEntry {
            at_ms: self.now(),
            actor: actor.to_owned(),
            event: event.to_owned(),
            member_id: member_id.map(ToOwned::to_owned),
            version,
            detail: detail.into(),
        };
        Ok(self.store.append_audit(kind, &entry)?)
    }

    fn check_record(&self, record: &KindRecord) -> Result<(), ClusterError> {
        if let Some(moved_to) = &record.moved_to {
            return Err(ClusterError::StoreMoved {
                kind: record.kind.clone(),
                location: self.store.location(),
                moved_to: moved_to.clone(),
            });
        }
        if record.format > CLUSTER_STATE_FORMAT {
            return Err(ClusterError::Store(StoreError::UnsupportedFormat {
                location: self.store.location(),
                found: record.format,
                supported: CLUSTER_STATE_FORMAT,
            }));
        }
        Ok(())
    }

    /// The kind record: the cached one while it is younger than `state_refresh` (unless
    /// `fresh`), else read from the store.
    fn kind_record(
        &self,
        kind: &str,
        fresh: bool,
    ) -> Result<Option<Versioned<KindRecord>>, ClusterError> {
        let cache = self.cache(kind);
        if !fresh {
            if let Some((record, read_at)) = &*cache.record.lock() {
                if read_at.elapsed() < self.options.state_refresh {
                    return Ok(Some(record.clone()));
                }
            }
        }
        let loaded = self.store.load_kind(kind)?;
        if let Some(record) = &loaded {
            self.check_record(&record.value)?;
            Self::remember_record(&cache, record.clone());
        }
        Ok(loaded)
    }

    fn remember_record(cache: &KindCache, record: Versioned<KindRecord>) {
        let mut pending = cache.pending.lock();
        let waiting_for = record
            .value
            .finalization_in_progress()
            .filter(|f| f.checkpoint == Checkpoint::CoordinatorFinalized)
            .map(|f| f.target);
        if pending.as_ref().map(|p| p.target) != waiting_for {
            *pending = None;
        }
        *cache.record.lock() = Some((record, Instant::now()));
    }

    /// Read-modify-compare-and-swap of a kind record, retried on conflicts; the record
    /// is read from the store every time.
    fn update_kind<R, E: From<ClusterError>>(
        &self,
        kind: &str,
        mut change: impl FnMut(Option<&KindRecord>) -> Result<Change<KindRecord, R>, E>,
    ) -> Result<R, E> {
        let cache = self.cache(kind);
        for _ in 0..MAX_ATTEMPTS {
            let current = self.kind_record(kind, true)?;
            match change(current.as_ref().map(|c| &c.value))? {
                Change::Keep(result) => return Ok(result),
                Change::Write(next, result) => {
                    let expected = current.map(|c| c.revision);
                    match self
                        .store
                        .swap_kind(kind, expected, &next)
                        .map_err(ClusterError::from)?
                    {
                        CasOutcome::Swapped { revision } => {
                            Self::remember_record(
                                &cache,
                                Versioned {
                                    revision,
                                    value: next,
                                },
                            );
                            return Ok(result);
                        }
                        CasOutcome::Conflict => {}
                    }
                }
            }
        }
        Err(Self::contention(kind).into())
    }

    fn contention(kind: &str) -> ClusterError {
        ClusterError::Contention {
            kind: kind.to_owned(),
            attempts: MAX_ATTEMPTS,
        }
    }

    fn load_or_create(&self, kind: &str) -> Result<Versioned<KindRecord>, ClusterError> {
        self.load_or_create_at(kind, None)
    }

    /// The kind record, created when absent: at the coordinator's MLV when it has a layout
    /// of the kind, else at `initial` (a first member's MLV), else refused.
    fn load_or_create_at(
        &self,
        kind: &str,
        initial: Option<u32>,
    ) -> Result<Versioned<KindRecord>, ClusterError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(record) = self.kind_record(kind, true)? {
                return Ok(record);
            }
            let version = match self.options.locals.get(kind) {
                Some(local) => local.metadata_layout_version(),
                None => initial.ok_or_else(|| ClusterError::UnknownKind {
                    kind: kind.to_owned(),
                })?,
            };
            let record = KindRecord::new(kind, version);
            if let CasOutcome::Swapped { revision } = self.store.swap_kind(kind, None, &record)? {
                let record = Versioned {
                    revision,
                    value: record,
                };
                Self::remember_record(&self.cache(kind), record.clone());
                return Ok(record);
            }
        }
        Err(Self::contention(kind))
    }

    /// Records this coordinator in `kind`'s membership (role coordinator, its SLV and
    /// MLV, this process's incarnation).
    fn record_self(&self, kind: &str, local: &dyn LocalLayout) -> Result<(), ClusterError> {
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
            if let CasOutcome::Swapped { revision } = self.store.swap_member(
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
    fn is_live(&self, cache: &KindCache, member: &str, now: u64) -> bool {
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
            let CasOutcome::Swapped { revision } = swapped else {
                continue;
            };
            if let Some(detail) = readmitted {
                self.audit(
                    kind,
                    id,
                    "readmitted",
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
            let CasOutcome::Swapped { revision } = swapped else {
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
            .filter(|f| f.checkpoint != Checkpoint::Started)
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

    /// Every member of `kind` from the store (and remembered).
    fn members(&self, kind: &str) -> Result<Vec<(String, Versioned<MemberRecord>)>, ClusterError> {
        let members = self.store.members(kind)?;
        let cache = self.cache(kind);
        let mut cached = cache.members.write();
        for (id, member) in &members {
            cached.insert(id.clone(), member.clone());
        }
        Ok(members)
    }

    /// Advances the checkpoints that need no work, reading the members from the store:
    /// `coordinator finalized` -> `members finalized` (when every member not excluded
    /// reached the target), then `members finalized` -> `complete`, each a compare-and-swap
    /// of the kind record. Any coordinator may do this: it decides nothing.
    fn complete_if_ready(&self, kind: &str) -> Result<(), ClusterError> {
        let cache = self.cache(kind);
        let _advancing = cache.advancing.lock();
        let Some(record) = self.kind_record(kind, true)? else {
            return Ok(());
        };
        let Some(f) = record.value.finalization_in_progress() else {
            return Ok(());
        };
        let target = f.target;
        let actor = self.options.coordinator_id.clone();
        if f.checkpoint == Checkpoint::CoordinatorFinalized {
            let members = self.members(kind)?;
            let below: HashSet<String> = members
                .iter()
                .filter(|(_, m)| {
                    m.value.excluded.is_none() && m.value.metadata_layout_version < target
                })
                .map(|(id, _)| id.clone())
                .collect();
            let done = below.is_empty();
            *self.cache(kind).pending.lock() = Some(Pending {
                target,
                below,
                checked_at: Instant::now(),
                listing: false,
            });
            if !done {
                return Ok(());
            }
            let moved = self.update_kind::<_, ClusterError>(kind, |current| {
                let Some(current) = current else {
                    return Ok(Change::Keep(false));
                };
                let mut next = current.clone();
                match &mut next.finalization {
                    Some(f)
                        if f.target == target
                            && f.checkpoint == Checkpoint::CoordinatorFinalized =>
                    {
                        f.checkpoint = Checkpoint::MembersFinalized;
                    }
                    _ => return Ok(Change::Keep(false)),
                }
                Ok(Change::Write(next, true))
            })?;
            if moved {
                self.audit(
                    kind,
                    &actor,
                    "members-finalized",
                    None,
                    Some(target),
                    "every member not excluded reported the target",
                )?;
                fail::fail_point!("cluster::members_finalized");
            }
        }
        let now = self.now();
        let completed = self.update_kind::<_, ClusterError>(kind, |current| {
            let Some(current) = current else {
                return Ok(Change::Keep(false));
            };
            let mut next = current.clone();
            match &mut next.finalization {
                Some(f) if f.target == target && f.checkpoint == Checkpoint::MembersFinalized => {
                    f.checkpoint = Checkpoint::Complete;
                    f.completed_at_ms = Some(now);
                }
                _ => return Ok(Change::Keep(false)),
            }
            Ok(Change::Write(next, true))
        })?;
        if completed {
            self.audit(
                kind,
                &actor,
                "finalization-complete",
                None,
                Some(target),
                "",
            )?;
        }
        Ok(())
    }

    /// The members that keep a finalization to `target` from starting, read from the
    /// store.
    fn blockers(&self, kind: &str, target: u32) -> Result<Vec<Blocker>, ClusterError> {
        let cache = self.cache(kind);
        let now = self.now();
        Ok(self
            .members(kind)?
            .into_iter()
            .filter(|(_, m)| m.value.excluded.is_none() && m.value.software_layout_version < target)
            .map(|(id, m)| Blocker {
                live: self.is_live(&cache, &id, now),
                member_id: id,
                software_layout_version: m.value.software_layout_version,
            })
            .collect())
    }

    /// Finalizes `kind` across the cluster to `target` (default: the coordinator's own SLV
    /// for the kind, else the newest SLV among its members), for `client_id`.
    ///
    /// Refused (nothing changed) when a member not excluded runs software below the
    /// target ([`ClusterError::Blocked`], listing every one), when a finalization of the
    /// kind is running (in this process, or driven by another coordinator:
    /// [`ClusterError::InProgress`]; a second call never touches the running one's
    /// claim), or when an unfinished finalization has another target. Otherwise: the
    /// finalizer claim is taken and its fencing token (the kind's claim generation)
    /// raised; checkpoint `started` (the target is fenced: no member below it can register
    /// from now on, so the blockers are checked once more, and `started` is withdrawn if
    /// one registered meanwhile); the coordinator's own layout finalizes; checkpoint
    /// `coordinator finalized` (the cluster's version is the target; members are told to
    /// finalize); and, if every member has already caught up, `members finalized` and
    /// `complete`. Every checkpoint write checks the fencing token: a coordinator whose
    /// claim was taken over stops ([`ClusterError::Fenced`]). An unfinished finalization
    /// (a crash, a failed local action) resumes where it stopped.
    pub fn finalize(
        &self,
        kind: &str,
        target: Option<u32>,
        client_id: &str,
    ) -> Result<ClusterFinalizeOutcome, ClusterError> {
        let _running = self.start_running(kind)?;
        match self.check_finalize(kind, target)? {
            Checked::Already(cluster_layout_version) => {
                Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                    cluster_layout_version,
                })
            }
            Checked::Go(target) => self.finalize_checked(kind, target, client_id),
        }
    }

    /// The checks of a finalization that need no claim: the target, the coordinator's
    /// own software, the blockers (unless one is in progress).
    fn check_finalize(&self, kind: &str, target: Option<u32>) -> Result<Checked, ClusterError> {
        let local = self.options.locals.get(kind);
        let record = self.load_or_create(kind)?.value;
        let target = self.resolve_target(&record, target)?;
        if record.finalization_in_progress().is_none() && target <= record.cluster_layout_version {
            return Ok(Checked::Already(record.cluster_layout_version));
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
        if record.finalization_in_progress().is_none() {
            let blockers = self.blockers(kind, target)?;
            if !blockers.is_empty() {
                return Err(ClusterError::Blocked {
                    kind: kind.to_owned(),
                    target,
                    blockers,
                });
            }
        }
        Ok(Checked::Go(target))
    }

    /// Claims the finalizer and finalizes (the checks passed).
    fn finalize_checked(
        &self,
        kind: &str,
        target: u32,
        client_id: &str,
    ) -> Result<ClusterFinalizeOutcome, ClusterError> {
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

    /// Marks `kind` as being finalized by this process, or answers
    /// [`ClusterError::InProgress`] when it already is.
    fn start_running(&self, kind: &str) -> Result<Running, ClusterError> {
        if !self.running.lock().insert(kind.to_owned()) {
            return Err(ClusterError::InProgress {
                kind: kind.to_owned(),
                holder: self.options.coordinator_id.clone(),
            });
        }
        Ok(Running {
            running: Arc::clone(&self.running),
            kind: kind.to_owned(),
        })
    }

    /// Like [`finalize`](Self::finalize), but the finalization runs on a thread of its
    /// own and this returns as soon as it is known to start: after the checks that need
    /// no claim (the target, the coordinator's own software, the blockers, a finalization
    /// already running in this process), which are answered at once as errors. Wait for
    /// the outcome with [`FinalizationJob::wait`], or follow [`status`](Self::status):
    /// the caller (an HTTP request) never holds on to the coordinator's own, possibly
    /// long, finalization.
    pub fn start_finalize(
        self: &Arc<Self>,
        kind: &str,
        target: Option<u32>,
        client_id: &str,
    ) -> Result<FinalizationJob, ClusterError> {
        let running = self.start_running(kind)?;
        let target = self.check_finalize(kind, target)?;
        let done = Arc::new((Mutex::new(None), Condvar::new()));
        let job = FinalizationJob {
            kind: kind.to_owned(),
            target: match target {
                Checked::Go(target) => target,
                Checked::Already(version) => version,
            },
            done: Arc::clone(&done),
        };
        let coordinator = Arc::clone(self);
        let kind_owned = kind.to_owned();
        let client = client_id.to_owned();
        std::thread::Builder::new()
            .name(format!("finalize-{kind}"))
            .spawn(move || {
                let outcome = match target {
                    Checked::Already(cluster_layout_version) => {
                        Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                            cluster_layout_version,
                        })
                    }
                    Checked::Go(target) => {
                        coordinator.finalize_checked(&kind_owned, target, &client)
                    }
                };
                drop(running);
                if let Err(e) = &outcome {
                    tracing::error!(kind = %kind_owned, error = %e, "cluster finalization stopped");
                }
                *done.0.lock() = Some(outcome);
                done.1.notify_all();
            })
            .map_err(|e| {
                ClusterError::Store(StoreError::Backend {
                    location: self.store.location(),
                    operation: "start the finalization thread",
                    message: e.to_string(),
                })
            })?;
        Ok(job)
    }

    /// Starts this coordinator's driver: a thread that, every `interval`, resumes what
    /// no operator should have to ask for again:
    /// - a finalization left at `started` (its coordinator crashed, the store failed, its
    ///   own finalization failed) is finalized again, claim and all, when no
    ///   finalization of the kind runs in this process and no other live coordinator
    ///   holds the claim (a claim whose holder died lapses with its lease, then this one
    ///   takes over);
    /// - a finalization past `coordinator finalized` advances to `members finalized` and
    ///   `complete` once every member reached the target, even when no heartbeat comes
    ///   to trigger it.
    ///
    /// A kind whose finalization fails to advance (its own finalization keeps failing,
    /// the store is down) is retried with a backoff: after one interval, then twice as
    /// long each time, up to [`MAX_DRIVER_BACKOFF`]; each failure is logged with the time
    /// of the next try. Stops when the returned handle is dropped.
    pub fn spawn_driver(
        self: &Arc<Self>,
        interval: Duration,
    ) -> std::io::Result<CoordinatorDriver> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let coordinator = Arc::downgrade(self);
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("coordinator-driver".to_owned())
            .spawn(move || {
                let mut backoff = HashMap::new();
                let mut audited = HashSet::new();
                loop {
                    {
                        let mut stopped = stopping.0.lock();
                        if !*stopped {
                            stopping.1.wait_for(&mut stopped, interval);
                        }
                        if *stopped {
                            return;
                        }
                    }
                    let Some(coordinator) = coordinator.upgrade() else {
                        return;
                    };
                    coordinator.drive_once(&mut backoff, &mut audited, interval);
                }
            })?;
        Ok(CoordinatorDriver {
            stop,
            thread: Some(thread),
        })
    }

    /// One tick of the driver (see [`spawn_driver`](Self::spawn_driver)). `backoff`: per
    /// kind, when to try again after a failure and the delay that led there.
    ///
    /// `audited`: the (kind, target) finalizations whose audit trail this driver has
    /// checked for the checkpoint entries a crash can lose (see
    /// [`record_lost_checkpoints`](Self::record_lost_checkpoints)).
    fn drive_once(
        &self,
        backoff: &mut HashMap<String, (Instant, Duration)>,
        audited: &mut HashSet<(String, u32)>,
        interval: Duration,
    ) {
        let kinds = match self.store.kinds() {
            Ok(kinds) => kinds,
            Err(e) => {
                tracing::warn!(error = %e, "coordinator driver: cannot list the kinds; retrying");
                return;
            }
        };
        for kind in kinds {
            if self.running.lock().contains(&kind) {
                continue;
            }
            if backoff
                .get(&kind)
                .is_some_and(|(next, _)| Instant::now() < *next)
            {
                continue;
            }
            let record = match self.kind_record(&kind, true) {
                Ok(Some(record)) => record.value,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(kind = %kind, error = %e, "coordinator driver: cannot read the kind; retrying");
                    continue;
                }
            };
            if let Some(f) = &record.finalization {
                if f.checkpoint != Checkpoint::Started
                    && !audited.contains(&(kind.clone(), f.target))
                {
                    match self.record_lost_checkpoints(&kind, f.target, f.checkpoint) {
                        Ok(()) => {
                            audited.insert((kind.clone(), f.target));
                        }
                        Err(e) => {
                            tracing::warn!(kind = %kind, error = %e, "coordinator driver: cannot check the audit trail; retrying");
                        }
                    }
                }
            }
            let Some(f) = record.finalization_in_progress().cloned() else {
                continue;
            };
            let result = if f.checkpoint == Checkpoint::Started {
                tracing::info!(kind = %kind, target = f.target, client = %f.client_id, "resuming an unfinished cluster finalization");
                self.finalize(&kind, Some(f.target), &f.client_id).map(drop)
            } else {
                self.complete_if_ready(&kind)
            };
            match result {
                Ok(()) => {
                    backoff.remove(&kind);
                }
                Err(ClusterError::InProgress { holder, .. }) => {
                    tracing::debug!(kind = %kind, holder = %holder, "finalization driven elsewhere");
                }
                Err(e) => {
                    let delay = backoff
                        .get(&kind)
                        .map_or(interval, |(_, delay)| (*delay * 2).min(MAX_DRIVER_BACKOFF));
                    let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    tracing::warn!(kind = %kind, error = %e, retry_in_ms, "coordinator driver: the finalization did not advance");
                    backoff.insert(kind, (Instant::now() + delay, delay));
                }
            }
        }
    }

    /// A checkpoint and its audit entry are two writes: a coordinator that stops between
    /// them leaves the checkpoint stored and the entry missing. Appends each missing
    /// entry of the finalization to `target` (`coordinator-finalized`,
    /// `members-finalized`, `finalization-complete`, each once the checkpoint has reached
    /// it), saying it was recorded late.
    /// Only when the trail still holds that finalization's `finalization-started` entry:
    /// an entry pruned by retention is not lost.
    fn record_lost_checkpoints(
        &self,
        kind: &str,
        target: u32,
        checkpoint: Checkpoint,
    ) -> Result<(), ClusterError> {
        let cache = self.cache(kind);
        let _advancing = cache.advancing.lock();
        let audit = self.store.audit(kind)?;
        let Some(started) = audit
            .iter()
            .rposition(|e| e.event == "finalization-started" && e.version == Some(target))
        else {
            return Ok(());
        };
        let since = &audit[started..];
        let expected = [
            (Checkpoint::CoordinatorFinalized, "coordinator-finalized"),
            (Checkpoint::MembersFinalized, "members-finalized"),
            (Checkpoint::Complete, "finalization-complete"),
        ]
        .into_iter()
        .filter(|(reached, _)| checkpoint >= *reached)
        .map(|(_, event)| event);
        for event in expected {
            if since
                .iter()
                .any(|e| e.event == event && e.version == Some(target))
            {
                continue;
            }
            tracing::warn!(kind = %kind, target, event, "the audit entry of a stored checkpoint is missing (the coordinator stopped between the two writes); recording it now");
            self.audit(
                kind,
                "coordinator-driver",
                event,
                None,
                Some(target),
                "recorded after a restart: the coordinator that stored this checkpoint \
                 stopped before recording it",
            )?;
        }
        Ok(())
    }

    fn resolve_target(
        &self,
        record: &KindRecord,
        target: Option<u32>,
    ) -> Result<u32, ClusterError> {
        let in_progress = record.finalization_in_progress().map(|f| f.target);
        match (target, in_progress) {
            (Some(requested), Some(in_progress)) if requested != in_progress => {
                Err(ClusterError::DifferentTargetInProgress {
                    kind: record.kind.clone(),
                    in_progress,
                    requested,
                })
            }
            (_, Some(in_progress)) => Ok(in_progress),
            (Some(requested), None) => Ok(requested),
            (None, None) => Ok(match self.options.locals.get(&record.kind) {
                Some(local) => local.software_layout_version(),
                None => self
                    .members(&record.kind)?
                    .iter()
                    .filter(|(_, m)| m.value.excluded.is_none())
                    .map(|(_, m)| m.value.software_layout_version)
                    .max()
                    .unwrap_or(record.cluster_layout_version),
            }),
        }
    }

    /// Refuses a checkpoint write by a coordinator whose claim was taken over.
    fn check_generation(&self, record: &KindRecord, generation: u64) -> Result<(), ClusterError> {
        if record.claim_generation == generation {
            return Ok(());
        }
        Err(ClusterError::Fenced {
            kind: record.kind.clone(),
            coordinator_id: self.options.coordinator_id.clone(),
            generation,
            current_generation: record.claim_generation,
            holder: record.claimed_by.clone().unwrap_or_default(),
        })
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
        let unknown = || ClusterError::UnknownKind {
            kind: kind.to_owned(),
        };
        // The fencing token: every checkpoint below is written only while it is ours.
        let generation = self.update_kind::<_, ClusterError>(kind, |current| {
            let mut next = current.ok_or_else(unknown)?.clone();
            next.claim_generation += 1;
            next.claimed_by = Some(actor.clone());
            let generation = next.claim_generation;
            Ok(Change::Write(next, generation))
        })?;

        // Checkpoint `started`.
        let started = self.update_kind::<_, ClusterError>(kind, |current| {
            let current = current.ok_or_else(unknown)?;
            self.check_generation(current, generation)?;
            if let Some(f) = current.finalization_in_progress() {
                if f.target != target {
                    return Err(ClusterError::DifferentTargetInProgress {
                        kind: kind.to_owned(),
                        in_progress: f.target,
                        requested: target,
                    });
                }
                // Past `started`, the coordinator's part is done already (by another
                // coordinator, or before a restart).
                return Ok(Change::Keep(if f.checkpoint == Checkpoint::Started {
                    Started::Resumed
                } else {
                    Started::Already(current.cluster_layout_version)
                }));
            }
            if target <= current.cluster_layout_version {
                return Ok(Change::Keep(Started::Already(
                    current.cluster_layout_version,
                )));
            }
            let mut next = current.clone();
            next.finalization = Some(ClusterFinalization {
                target,
                checkpoint: Checkpoint::Started,
                client_id: client_id.to_owned(),
                coordinator_id: actor.clone(),
                started_at_ms: self.now(),
                completed_at_ms: None,
            });
            Ok(Change::Write(
                next,
                Started::New(current.finalization.clone()),
            ))
        })?;
        match started {
            Started::Already(cluster_layout_version) => {
                self.complete_if_ready(kind)?;
                return Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                    cluster_layout_version,
                });
            }
            Started::Resumed | Started::New(_) => {}
        }
        // The target is fenced now: a member below it can no longer register (its write
        // is guarded by the kind record's revision), so this list is complete.
        let blockers = self.blockers(kind, target)?;
        if !blockers.is_empty() {
            if let Started::New(previous) = started {
                self.update_kind::<_, ClusterError>(kind, |current| {
                    let current = current.ok_or_else(unknown)?;
                    self.check_generation(current, generation)?;
                    match &current.finalization {
                        Some(f) if f.target == target && f.checkpoint == Checkpoint::Started => {
                            let mut next = current.clone();
                            next.finalization.clone_from(&previous);
                            Ok(Change::Write(next, ()))
                        }
                        _ => Ok(Change::Keep(())),
                    }
                })?;
            }
            return Err(ClusterError::Blocked {
                kind: kind.to_owned(),
                target,
                blockers,
            });
        }
        if matches!(started, Started::New(_)) {
            self.audit(
                kind,
                client_id,
                "finalization-started",
                None,
                Some(target),
                format!("by coordinator {actor}"),
            )?;
        }

        fail::fail_point!("cluster::started");

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
            self.record_self(kind, local.as_ref())?;
        }

        // Checkpoint `coordinator finalized`: the cluster's version moves.
        let moved = self.update_kind::<_, ClusterError>(kind, |current| {
            let current = current.ok_or_else(unknown)?;
            self.check_generation(current, generation)?;
            let mut next = current.clone();
            match &mut next.finalization {
                Some(f) if f.target == target && f.checkpoint == Checkpoint::Started => {
                    f.checkpoint = Checkpoint::CoordinatorFinalized;
                }
                _ => return Ok(Change::Keep(false)),
            }
            next.cluster_layout_version = next.cluster_layout_version.max(target);
            Ok(Change::Write(next, true))
        })?;
        if moved {
            self.audit(
                kind,
                &actor,
                "coordinator-finalized",
                None,
                Some(target),
                "members are told to finalize",
            )?;
            fail::fail_point!("cluster::coordinator_finalized");
        }
        self.complete_if_ready(kind)?;

        let record = self.load_or_create(kind)?.value;
        if !moved {
            return Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                cluster_layout_version: record.cluster_layout_version,
            });
        }
        let checkpoint = record
            .finalization
            .as_ref()
            .map_or(Checkpoint::Complete, |f| f.checkpoint);
        let pending_members = self
            .members(kind)?
            .into_iter()
            .filter(|(_, m)| m.value.excluded.is_none() && m.value.metadata_layout_version < target)
            .map(|(id, _)| id)
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
            let Some(record) = self.kind_record(&kind, true)? else {
                continue;
            };
            let Some(f) = record.value.finalization_in_progress().cloned() else {
                continue;
            };
            let outcome = if f.checkpoint == Checkpoint::Started {
                self.finalize(&kind, Some(f.target), &f.client_id)?
            } else {
                self.complete_if_ready(&kind)?;
                ClusterFinalizeOutcome::Finalized {
                    target: f.target,
                    checkpoint: self
                        .kind_record(&kind, true)?
                        .and_then(|r| r.value.finalization.map(|f| f.checkpoint))
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
            let CasOutcome::Swapped { revision } = swapped else {
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
                "excluded",
                Some(member_id),
                Some(required),
                reason,
            )?;
            self.complete_if_ready(kind)?;
            return Ok(exclusion);
        }
        Err(Self::contention(kind))
    }

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

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("coordinator_id", &self.options.coordinator_id)
            .field("store", &self.store.location())
            .finish_non_exhaustive()
    }
}
