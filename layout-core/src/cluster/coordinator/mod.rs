//! The coordinator: accepts or refuses members, finalizes the cluster, tracks members
//! until they have finalized too, and records exclusions.

// `Coordinator` and the in-memory state it keeps per kind live here; its work is split
// by what it does: `options` (how it is configured), `error` (why it refuses),
// `admission` (registrations, heartbeats, refusals), `finalize` (cluster finalization
// and its checkpoints), `driver` (the background driver), `exclusion` (excluding a dead
// member) and `status` (what it reports).

mod admission;
mod driver;
mod error;
mod exclusion;
mod finalize;
mod options;
mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

pub use self::admission::RefusedMember;
pub use self::driver::{CoordinatorDriver, MAX_DRIVER_BACKOFF};
pub use self::error::{Blocker, ClusterError};
pub use self::finalize::{ClusterFinalizeOutcome, FinalizationJob, CLUSTER_FAILPOINTS};
pub use self::options::CoordinatorOptions;
pub use self::status::{ClusterStatus, MemberStatus};
use super::state::{
    AuditEntry, AuditEvent, FinalizationCheckpoint, KindRecord, MemberRecord, CLUSTER_STATE_FORMAT,
};
use super::store::{ClusterStore, StoreCasOutcome, StoreError, Versioned};

/// How many times a change is retried when another writer changed the state first.
const MAX_ATTEMPTS: u32 = 64;

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
/// Identity: every [`MemberReport`](crate::cluster::MemberReport) carries its process's incarnation; a second live
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

enum Change<T, R> {
    Keep(R),
    Write(T, R),
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
        event: AuditEvent,
        member_id: Option<&str>,
        version: Option<u32>,
        detail: impl Into<String>,
    ) -> Result<(), ClusterError> {
        let entry = AuditEntry {
            at_ms: self.now(),
            actor: actor.to_owned(),
            event,
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
            .filter(|f| f.checkpoint == FinalizationCheckpoint::CoordinatorFinalized)
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
                        StoreCasOutcome::Swapped { revision } => {
                            Self::remember_record(
                                &cache,
                                Versioned {
                                    revision,
                                    value: next,
                                },
                            );
                            return Ok(result);
                        }
                        StoreCasOutcome::Conflict => {}
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
            if let StoreCasOutcome::Swapped { revision } =
                self.store.swap_kind(kind, None, &record)?
            {
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
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("coordinator_id", &self.options.coordinator_id)
            .field("store", &self.store.location())
            .finish_non_exhaustive()
    }
}
