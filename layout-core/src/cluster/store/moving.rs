//! Moving a live cluster's state to another store.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::{ClusterStore, FinalizerClaim, StoreCasOutcome, StoreError, Versioned};
use crate::cluster::state::{
    AuditEntry, AuditEvent, KindRecord, KindState, MemberRecord, MoveRecord, MoveRole, MoveStage,
};

/// Where a [`MovingStore`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MovePhase {
    /// Only the current store is used.
    Current,
    /// Writes go to the current store and are mirrored to the new one; reads come from
    /// the current one. Rollback is possible.
    DualPublishing,
    /// The move is committed: the new store is used alone, and the old one's state is
    /// marked as moved (a coordinator still pointed at it refuses to use it).
    Switched,
}

/// What [`MovingStore::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MoveReport {
    /// The component kinds compared.
    pub kinds: Vec<String>,
    /// Every difference between the current store and the new one (empty: caught up).
    pub differences: Vec<String>,
    /// The asynchronous mirror fell behind (its queue was full, or the new store failed
    /// or refused a write): [`MovingStore::catch_up`] (or the switch) must recopy.
    pub behind: bool,
}

impl MoveReport {
    /// Whether the new store has caught up.
    pub fn is_caught_up(&self) -> bool {
        self.differences.is_empty() && !self.behind
    }
}

/// Where a move stands, without touching the new store ([`MovingStore::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveStatus {
    /// The phase in memory.
    pub phase: MovePhase,
    /// The move's id, once begun.
    pub id: Option<String>,
    /// The current (source) store's location.
    pub from: String,
    /// The new store's location, once begun.
    pub to: Option<String>,
    /// The mirror fell behind: a `catch_up` (or the switch) recopies.
    pub behind: bool,
    /// Mirrored writes queued, not yet applied to the new store.
    pub pending: u64,
    /// Mirrored writes dropped (queue full) or failed since the last catch-up.
    pub missed: u64,
    /// The source store's persisted move record, if any.
    pub record: Option<MoveRecord>,
}

/// The names of the durable steps of a move, in the order a move passes them, as given
/// to the hook of [`MovingStore::with_step_hook`] (crash tests stop a process at each).
///
/// | name | the step just done |
/// |---|---|
/// | `begin:source-recorded` | the source's move record says `copying` |
/// | `begin:destination-recorded` | the destination's record says `copying` |
/// | `begin:copied` | every kind copied into the destination |
/// | `begin:destination-dual` | the destination's record says `dual-publishing` |
/// | `begin:done` | the source's record says `dual-publishing` |
/// | `switch:caught-up` | with writes held, the destination equals the source |
/// | `switch:audited` | `store-moved` appended to the destination's audit trails |
/// | `switch:committed` | every kind in the source is marked `moved_to` (the commit) |
/// | `switch:source-recorded` | the source's record says `switched` |
/// | `switch:done` | the destination's record says `switched` |
/// | `rollback:destination-recorded` | the destination's record says `rolled-back` |
/// | `rollback:done` | the source's record says `rolled-back` |
pub const MOVE_STEPS: &[&str] = &[
    "begin:source-recorded",
    "begin:destination-recorded",
    "begin:copied",
    "begin:destination-dual",
    "begin:done",
    "switch:caught-up",
    "switch:audited",
    "switch:committed",
    "switch:source-recorded",
    "switch:done",
    "rollback:destination-recorded",
    "rollback:done",
];

/// How many mirrored writes may wait for the new store by default
/// ([`MovingStore::with_mirror_capacity`]).
pub const DEFAULT_MIRROR_CAPACITY: usize = 4096;

/// A [`ClusterStore`] that moves a live cluster to another store without stopping it:
/// the coordinator runs on it, and members keep heartbeating throughout. The move is
/// durable and idempotent: both stores keep a [`MoveRecord`] (the same id; the source
/// "moving to", the destination "receiving from") with its [`MoveStage`], so a
/// coordinator restarted mid-move resumes it ([`open`](Self::open)) and every command
/// ([`begin`](Self::begin), [`switch`](Self::switch), [`rollback`](Self::rollback)) run
/// again after a crash at any of its steps ([`MOVE_STEPS`]) finishes what it started.
///
/// 1. [`begin`](Self::begin) refuses, before writing anything anywhere, a destination
///    that holds any kind or a move record of another move, and a source already moved
///    (a `moved_to` mark or a `switched` record) or moving elsewhere. It then records
///    the move in both stores, copies the state of every kind into the new store
///    ([`ClusterStore::import`]; and removes kinds the source does not have) and starts
///    dual publishing: every write goes to the current store (which decides) and is
///    mirrored to the new one **asynchronously**, through a bounded queue drained by a
///    thread of its own (the same record, stored whatever its revision there: each store
///    keeps its own revisions). A write never waits for the new store: when the queue is
///    full or the new store fails, the move is marked *behind* instead. Reads still come
///    from the current store. Liveness is not stored, so there is none to copy.
/// 2. [`verify`](Self::verify) waits for the queue to drain and compares both stores'
///    snapshots ([`ClusterStore::load_state`]); [`catch_up`](Self::catch_up) recopies
///    every kind that differs, removes from the new store every kind the source does not
///    have (a kind only in the destination never blocks a move for good), and clears
///    *behind*.
/// 3. [`switch`](Self::switch): with writes held, drains the mirror and catches up
///    (synchronously), verifies, records the move in the new store's audit trail, marks
///    the old store's state as moved (the commit), records `switched` in both move
///    records and serves from the new store alone.
///
/// Until the switch is committed, [`rollback`](Self::rollback) returns to the current
/// store alone (recording `rolled-back` in both); the new store's copy is then stale and
/// may be deleted (a later `begin` from the same source may reuse it). Revisions handed
/// out after the switch are marked, so a change decided on a record read before it is a
/// conflict (reloaded and decided again), never applied to the new store.
///
/// Writes by other processes straight to the current store during the move (another
/// coordinator not using this adapter) are not mirrored: `verify` reports them and
/// `catch_up` (or the switch) copies them.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::cluster::KindRecord;
/// use layout_core::cluster::{ClusterStore, EmbeddedStore, MovePhase, MovingStore};
///
/// let old = Arc::new(EmbeddedStore::in_memory());
/// old.swap_kind("datanode", None, &KindRecord::new("datanode", 2))?;
/// let new = Arc::new(EmbeddedStore::in_memory());
/// let store = MovingStore::new(old.clone());
/// store.begin(new.clone())?;
/// assert!(store.verify()?.is_caught_up());
/// store.switch()?;
/// assert_eq!(store.phase(), MovePhase::Switched);
/// assert_eq!(new.load_kind("datanode")?.unwrap().value.cluster_layout_version, 2);
/// assert!(old.load_kind("datanode")?.unwrap().value.moved_to.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MovingStore {
    stores: RwLock<Stores>,
    /// Held by every write (and by the switch), so a write and its mirror are one step.
    writes: Mutex<()>,
    /// Held shared by every read and exclusively by the switch, so no read sees the old
    /// store half-way through the commit (its `moved_to` marks).
    switching: RwLock<()>,
    /// Called after every durable step of a move (crash tests).
    hook: Option<StepHook>,
    /// The mirror's queue bound.
    capacity: usize,
}

type StepHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Set in the revisions handed out once switched: a revision read from the old store
/// can never match one in the new store, so a change decided on the old state before
/// the switch is a conflict (reloaded and decided again) after it.
const SWITCHED_REVISION: u64 = 1 << 63;

/// The current store and the new one.
type StorePair = (Arc<dyn ClusterStore>, Arc<dyn ClusterStore>);

struct Stores {
    current: Arc<dyn ClusterStore>,
    next: Option<Arc<dyn ClusterStore>>,
    phase: MovePhase,
    /// The move's id (persisted in both move records).
    id: Option<String>,
    /// Who began it.
    by: String,
    /// When it began.
    started_at_ms: u64,
    /// The mirror, while dual publishing.
    mirror: Option<Mirror>,
}

/// A write to repeat on the new store.
enum MirrorOp {
    Kind(String, KindRecord),
    Member(String, String, MemberRecord),
    Audit(String, AuditEntry),
    Import(String, KindState),
    /// Answers once every op queued before it is applied.
    Flush(mpsc::Sender<()>),
}

/// What the mirror thread and the writers share.
#[derive(Default)]
struct MirrorShared {
    behind: AtomicBool,
    pending: AtomicU64,
    missed: AtomicU64,
}

/// The asynchronous mirror: a bounded queue and the thread that drains it into the new
/// store. Dropping it closes the queue; the thread ends once it has drained it (it is
/// never joined: a stalled store must not hold anyone).
struct Mirror {
    queue: SyncSender<MirrorOp>,
    shared: Arc<MirrorShared>,
}

impl Mirror {
    fn start(next: Arc<dyn ClusterStore>, capacity: usize, behind: bool) -> Self {
        let (queue, ops) = mpsc::sync_channel::<MirrorOp>(capacity.max(1));
        let shared = Arc::new(MirrorShared::default());
        shared.behind.store(behind, Ordering::SeqCst);
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("cluster-store-mirror".to_owned())
            .spawn(move || {
                for op in ops {
                    let (kind, what, result) = match op {
                        MirrorOp::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                        MirrorOp::Kind(kind, record) => {
                            let r = overwrite_kind(next.as_ref(), &kind, &record);
                            (kind, "kind record", r)
                        }
                        MirrorOp::Member(kind, member, record) => {
                            let r = overwrite_member(next.as_ref(), &kind, &member, &record);
                            (kind, "member record", r)
                        }
                        MirrorOp::Audit(kind, entry) => {
                            let r = next
                                .append_audit(&kind, &entry)
                                .map(|()| StoreCasOutcome::Swapped { revision: 0 });
                            (kind, "audit entry", r)
                        }
                        MirrorOp::Import(kind, state) => {
                            let r = next
                                .import(&kind, &state)
                                .map(|()| StoreCasOutcome::Swapped { revision: 0 });
                            (kind, "import", r)
                        }
                    };
                    thread_shared.pending.fetch_sub(1, Ordering::SeqCst);
                    if !mirrored(&kind, what, result) {
                        thread_shared.missed.fetch_add(1, Ordering::SeqCst);
                        thread_shared.behind.store(true, Ordering::SeqCst);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cluster store move: no mirror thread; every write is missed until catch_up");
            shared.behind.store(true, Ordering::SeqCst);
        }
        Self { queue, shared }
    }

    /// Queues `op` without waiting; a full queue (or a dead thread) marks the move behind.
    fn send(&self, op: MirrorOp) {
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                self.shared.missed.fetch_add(1, Ordering::SeqCst);
                if !self.shared.behind.swap(true, Ordering::SeqCst) {
                    tracing::warn!("cluster store move: the mirror's queue is full; the new store is behind until catch_up");
                }
            }
        }
    }

    /// Waits until every op queued so far is applied (or the thread is gone).
    fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.queue.send(MirrorOp::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Clears *behind* (the caller just made the new store equal, with writes held).
    fn caught_up(&self) {
        self.shared.behind.store(false, Ordering::SeqCst);
        self.shared.missed.store(0, Ordering::SeqCst);
    }

    fn behind(&self) -> bool {
        self.shared.behind.load(Ordering::SeqCst)
    }
}

impl MovingStore {
    /// Serves from `current` alone, without looking for a move under way (see
    /// [`open`](Self::open) for a restarted coordinator).
    pub fn new(current: Arc<dyn ClusterStore>) -> Self {
        Self {
            stores: RwLock::new(Stores {
                current,
                next: None,
                phase: MovePhase::Current,
                id: None,
                by: String::new(),
                started_at_ms: 0,
                mirror: None,
            }),
            writes: Mutex::new(()),
            switching: RwLock::new(()),
            hook: None,
            capacity: DEFAULT_MIRROR_CAPACITY,
        }
    }

    /// Opens on `current`, resuming the move its move record says is under way: a move
    /// still copying or dual publishing keeps mirroring to `next` (marked *behind*: the
    /// writes queued when the process died are lost, so the switch recopies); a committed
    /// one (a `switched` record, or any kind of `current` marked as moved to `next`)
    /// finishes its records and serves from `next` alone. With no move under way (none
    /// recorded, rolled back, or a move *into* `current` that finished) it serves from
    /// `current` alone and `next` is not used.
    ///
    /// Refused when a move is under way and `next` is `None` or another store than the
    /// one recorded.
    pub fn open(
        current: Arc<dyn ClusterStore>,
        next: Option<Arc<dyn ClusterStore>>,
    ) -> Result<Self, StoreError> {
        Self::new(current).resume(next)
    }

    /// Sets how many mirrored writes may wait for the new store (default
    /// [`DEFAULT_MIRROR_CAPACITY`]); beyond that a write marks the move *behind* rather
    /// than wait. Takes effect at the next `begin` or [`open`](Self::open)'s resume.
    #[must_use]
    pub fn with_mirror_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Calls `hook` with the name of every durable step of a move as it is done (see
    /// [`MOVE_STEPS`]); crash tests stop the process there.
    #[must_use]
    pub fn with_step_hook(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Resumes the move recorded in the current store (see [`open`](Self::open)).
    pub fn resume(self, next: Option<Arc<dyn ClusterStore>>) -> Result<Self, StoreError> {
        let current = Arc::clone(&self.stores.read().current);
        let Some(record) = current.load_move()? else {
            return Ok(self);
        };
        let record = record.value;
        if record.role != MoveRole::Source || record.stage == MoveStage::RolledBack {
            return Ok(self);
        }
        let Some(next) = next else {
            return Err(StoreError::Move {
                from: record.from,
                to: record.to,
                message: format!(
                    "a move ({}) is {}; open with its new store to resume it",
                    record.id, record.stage
                ),
            });
        };
        if next.location() != record.to {
            return Err(StoreError::Move {
                from: record.from,
                to: next.location(),
                message: format!(
                    "the move under way ({}, {}) goes to {}, not here",
                    record.id, record.stage, record.to
                ),
            });
        }
        let committed =
            record.stage == MoveStage::Switched || marked_to(current.as_ref(), &record.to)?;
        {
            let mut stores = self.stores.write();
            stores.next = Some(Arc::clone(&next));
            stores.id = Some(record.id.clone());
            stores.by.clone_from(&record.by);
            stores.started_at_ms = record.started_at_ms;
            if committed {
                stores.phase = MovePhase::Switched;
            } else {
                stores.phase = MovePhase::DualPublishing;
                stores.mirror = Some(Mirror::start(Arc::clone(&next), self.capacity, true));
            }
        }
        if committed {
            self.finish_switch(&current, &next)?;
        }
        tracing::info!(id = %record.id, stage = %record.stage, to = %record.to, "cluster store move resumed");
        Ok(self)
    }

    /// Where it stands.
    pub fn phase(&self) -> MovePhase {
        self.stores.read().phase
    }

    /// Where the move stands, from memory and the current store's move record; never
    /// touches the new store (a stalled one does not hold it).
    pub fn status(&self) -> Result<MoveStatus, StoreError> {
        let stores = self.stores.read();
        let current = Arc::clone(&stores.current);
        let (behind, pending, missed) = stores.mirror.as_ref().map_or((false, 0, 0), |m| {
            (
                m.behind(),
                m.shared.pending.load(Ordering::SeqCst),
                m.shared.missed.load(Ordering::SeqCst),
            )
        });
        let status = MoveStatus {
            phase: stores.phase,
            id: stores.id.clone(),
            from: stores.current.location(),
            to: stores.next.as_ref().map(ClusterStore::location),
            behind,
            pending,
            missed,
            record: None,
        };
        drop(stores);
        Ok(MoveStatus {
            record: current.load_move()?.map(|v| v.value),
            ..status
        })
    }

    /// The store that reads are served from.
    pub fn active(&self) -> Arc<dyn ClusterStore> {
        let stores = self.stores.read();
        match (&stores.next, stores.phase) {
            (Some(next), MovePhase::Switched) => Arc::clone(next),
            _ => Arc::clone(&stores.current),
        }
    }

    fn move_error(&self, message: impl Into<String>) -> StoreError {
        let stores = self.stores.read();
        StoreError::Move {
            from: stores.current.location(),
            to: stores
                .next
                .as_ref()
                .map_or_else(|| "(none)".to_owned(), ClusterStore::location),
            message: message.into(),
        }
    }

    fn step(&self, name: &str) {
        tracing::debug!(step = name, "cluster store move");
        if let Some(hook) = &self.hook {
            hook(name);
        }
    }

    /// [`begin_as`](Self::begin_as) by `store-move`.
    pub fn begin(&self, next: Arc<dyn ClusterStore>) -> Result<(), StoreError> {
        self.begin_as(next, "store-move")
    }

    /// Starts (or resumes) a move to `next`, recorded as begun by `by`: checks both
    /// stores (see the [type docs](Self); a refusal writes nothing anywhere), records the
    /// move in both, copies every kind's state (record, members, audit) with
    /// [`ClusterStore::import`], and starts dual publishing. Run again after a crash (on
    /// a coordinator opened with [`open`](Self::open) or [`new`](Self::new)), or while
    /// dual publishing to the same store object, it resumes the same move: the same id,
    /// the copy redone.
    pub fn begin_as(&self, next: Arc<dyn ClusterStore>, by: &str) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let (current, resuming) = {
            let stores = self.stores.read();
            match (stores.phase, &stores.next) {
                (MovePhase::Current, _) => (Arc::clone(&stores.current), None),
                (MovePhase::DualPublishing, Some(existing)) if Arc::ptr_eq(existing, &next) => {
                    (Arc::clone(&stores.current), stores.id.clone())
                }
                _ => {
                    drop(stores);
                    return Err(self.move_error("a move is already under way or committed"));
                }
            }
        };
        if resuming.is_some() {
            // The copy is redone below: nothing queued before it may land after it.
            self.flush();
        }
        let from = current.location();
        let to = next.location();
        let refuse = |message: String| StoreError::Move {
            from: from.clone(),
            to: to.clone(),
            message,
        };
        // The source: not moved, not moving elsewhere.
        let source = current.load_move()?;
        let now_ms = crate::clock::to_ms(std::time::SystemTime::now());
        let resumed = check_move_source(
            current.as_ref(),
            source.as_ref(),
            &to,
            resuming.as_deref(),
            &refuse,
        )?;
        // The destination: empty, or this very move (or this source's abandoned copy).
        let destination = next.load_move()?;
        check_move_destination(
            next.as_ref(),
            destination.as_ref(),
            source.as_ref(),
            &from,
            resumed.as_ref().map(|r| r.id.as_str()),
            &refuse,
        )?;
        let (id, started_at_ms, by) = match resumed {
            Some(r) => (r.id, r.started_at_ms, r.by),
            None => (new_move_id(&from, &to, now_ms), now_ms, by.to_owned()),
        };
        let record = |role, stage| MoveRecord {
            id: id.clone(),
            role,
            from: from.clone(),
            to: to.clone(),
            stage,
            started_at_ms,
            updated_at_ms: crate::clock::to_ms(std::time::SystemTime::now()),
            by: by.clone(),
        };
        self.record_move_and_copy(
            current.as_ref(),
            next.as_ref(),
            (source.map(|s| s.revision), destination.map(|d| d.revision)),
            &record,
        )?;
        self.start_dual_publishing(current.as_ref(), next, &id, &by, started_at_ms)?;
        tracing::info!(%from, %to, %id, "cluster store move: dual publishing");
        Ok(())
    }

    /// Records the move in both stores (at their expected move-record revisions
    /// `revisions`, source then destination), then copies every kind's state to the
    /// destination; a named step after each.
    fn record_move_and_copy(
        &self,
        current: &dyn ClusterStore,
        next: &dyn ClusterStore,
        revisions: (Option<u64>, Option<u64>),
        record: &dyn Fn(MoveRole, MoveStage) -> MoveRecord,
    ) -> Result<(), StoreError> {
        put_move(
            current,
            revisions.0,
            &record(MoveRole::Source, MoveStage::Copying),
        )?;
        self.step("begin:source-recorded");
        put_move(
            next,
            revisions.1,
            &record(MoveRole::Destination, MoveStage::Copying),
        )?;
        self.step("begin:destination-recorded");
        reconcile(current, next)?;
        self.step("begin:copied");
        Ok(())
    }

    /// Starts dual publishing to `next` (the mirror, then the phase in memory), then
    /// records stage dual-publishing in the destination and the source.
    fn start_dual_publishing(
        &self,
        current: &dyn ClusterStore,
        next: Arc<dyn ClusterStore>,
        id: &str,
        by: &str,
        started_at_ms: u64,
    ) -> Result<(), StoreError> {
        let destination_store = Arc::clone(&next);
        {
            let mut stores = self.stores.write();
            match &stores.mirror {
                Some(mirror) => mirror.caught_up(),
                None => {
                    stores.mirror = Some(Mirror::start(Arc::clone(&next), self.capacity, false));
                }
            }
            stores.next = Some(next);
            stores.phase = MovePhase::DualPublishing;
            stores.id = Some(id.to_owned());
            by.clone_into(&mut stores.by);
            stores.started_at_ms = started_at_ms;
        }
        set_stage(destination_store.as_ref(), id, MoveStage::DualPublishing)?;
        self.step("begin:destination-dual");
        set_stage(current, id, MoveStage::DualPublishing)?;
        self.step("begin:done");
        Ok(())
    }

    fn pair(&self) -> Result<StorePair, StoreError> {
        let stores = self.stores.read();
        if let (Some(next), MovePhase::DualPublishing) = (&stores.next, stores.phase) {
            return Ok((Arc::clone(&stores.current), Arc::clone(next)));
        }
        drop(stores);
        Err(self.move_error("no move is under way (begin one first)"))
    }

    /// Waits until every write queued for the new store is applied (or failed). The
    /// caller may block as long as the new store does.
    pub fn flush(&self) {
        let queue = self.stores.read().mirror.as_ref().map(|m| m.queue.clone());
        if let Some(queue) = queue {
            let (done, wait) = mpsc::channel();
            if queue.send(MirrorOp::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    fn mirror_behind(&self) -> bool {
        self.stores
            .read()
            .mirror
            .as_ref()
            .is_some_and(Mirror::behind)
    }

    /// Waits for the mirror to drain, then compares the current store with the new one:
    /// every kind's state (record, members, audit; not the revisions, which are each
    /// store's own) must be equal, and the mirror must not have fallen behind.
    pub fn verify(&self) -> Result<MoveReport, StoreError> {
        let (current, next) = self.pair()?;
        self.flush();
        let mut report = compare(current.as_ref(), next.as_ref())?;
        report.behind = self.mirror_behind();
        Ok(report)
    }

    /// With writes held: drains the mirror, recopies every kind that differs into the new
    /// store ([`ClusterStore::import`]), removes from it every kind the source does not
    /// have ([`ClusterStore::remove_kind`]), and clears *behind*.
    pub fn catch_up(&self) -> Result<MoveReport, StoreError> {
        let _writes = self.writes.lock();
        let (current, next) = self.pair()?;
        self.caught_up(current.as_ref(), next.as_ref())
    }

    /// The catch-up, writes held by the caller.
    fn caught_up(
        &self,
        current: &dyn ClusterStore,
        next: &dyn ClusterStore,
    ) -> Result<MoveReport, StoreError> {
        let stores = self.stores.read();
        if let Some(mirror) = &stores.mirror {
            mirror.flush();
        }
        drop(stores);
        reconcile(current, next)?;
        if let Some(mirror) = &self.stores.read().mirror {
            mirror.caught_up();
        }
        let mut report = compare(current, next)?;
        report.behind = self.mirror_behind();
        Ok(report)
    }

    /// Commits the move: with writes held, drains the mirror and catches up, verifies
    /// (else refuses, still dual publishing), records the move in the new store's audit
    /// trail, marks every kind in the old store as moved (the commit), records `switched`
    /// in both move records, and serves from the new store alone. After this, no
    /// rollback. Run again after a crash, it finishes what it started; run once switched,
    /// it checks that both records say so.
    pub fn switch(&self) -> Result<MoveReport, StoreError> {
        let _reads = self.switching.write();
        let _writes = self.writes.lock();
        let pair = {
            let stores = self.stores.read();
            if let (Some(next), MovePhase::DualPublishing | MovePhase::Switched) =
                (&stores.next, stores.phase)
            {
                Some((Arc::clone(&stores.current), Arc::clone(next)))
            } else {
                None
            }
        };
        let Some((current, next)) = pair else {
            return Err(self.move_error("no move is under way (begin one first)"));
        };
        let to = next.location();
        if self.phase() == MovePhase::Switched || marked_to(current.as_ref(), &to)? {
            // Committed already (a switch run again, or resumed after a crash).
            self.stores.write().phase = MovePhase::Switched;
            self.finish_switch(&current, &next)?;
            return compare_switched(next.as_ref());
        }
        let report = self.caught_up(current.as_ref(), next.as_ref())?;
        if !report.is_caught_up() {
            return Err(self.move_error(format!(
                "the new store has not caught up: {}; still dual publishing",
                report.differences.join("; ")
            )));
        }
        self.step("switch:caught-up");
        let from = current.location();
        let now = crate::clock::to_ms(std::time::SystemTime::now());
        let id = self.stores.read().id.clone().unwrap_or_default();
        for kind in &report.kinds {
            if next.load_kind(kind)?.is_some() {
                next.append_audit(
                    kind,
                    &AuditEntry {
                        at_ms: now,
                        actor: "store-move".to_owned(),
                        event: AuditEvent::StoreMoved,
                        member_id: None,
                        version: None,
                        detail: format!("cluster state moved from {from} to {to} (move {id})"),
                    },
                )?;
            }
        }
        self.step("switch:audited");
        // The commit: the old store's state says where it went.
        let mut marked: Vec<&String> = Vec::new();
        for kind in &report.kinds {
            let result = mark_moved(current.as_ref(), kind, Some(&to));
            if let Err(e) = result {
                for done in &marked {
                    let _ = mark_moved(current.as_ref(), done, None);
                }
                return Err(self.move_error(format!(
                    "could not mark {kind} as moved in the old store ({e}); still dual \
                     publishing, nothing committed"
                )));
            }
            marked.push(kind);
        }
        self.step("switch:committed");
        self.stores.write().phase = MovePhase::Switched;
        self.finish_switch(&current, &next)?;
        tracing::info!(%from, %to, "cluster store move committed");
        Ok(report)
    }

    /// After the commit: every kind of the source marked, both records `switched`, the
    /// mirror stopped. Idempotent.
    fn finish_switch(
        &self,
        current: &Arc<dyn ClusterStore>,
        next: &Arc<dyn ClusterStore>,
    ) -> Result<(), StoreError> {
        let to = next.location();
        for kind in current.kinds()? {
            mark_moved(current.as_ref(), &kind, Some(&to))?;
        }
        let id = self.stores.read().id.clone().unwrap_or_default();
        set_stage(current.as_ref(), &id, MoveStage::Switched)?;
        self.step("switch:source-recorded");
        set_stage(next.as_ref(), &id, MoveStage::Switched)?;
        self.step("switch:done");
        self.stores.write().mirror = None;
        Ok(())
    }

    /// Abandons the move before it is committed: records `rolled-back` in both stores
    /// (the destination first) and returns to the current store alone. Run again after a
    /// crash, or with no move under way, it finishes the records it can and succeeds.
    /// Refused once the switch is committed (also half-way: any kind marked as moved).
    pub fn rollback(&self) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let (current, next, id) = {
            let stores = self.stores.read();
            (
                Arc::clone(&stores.current),
                stores.next.clone(),
                stores.id.clone(),
            )
        };
        let committed = self.phase() == MovePhase::Switched
            || match &next {
                Some(next) => marked_to(current.as_ref(), &next.location())?,
                None => false,
            };
        if committed {
            return Err(self.move_error("the switch is committed; there is no rollback"));
        }
        if let (Some(next), Some(id)) = (&next, &id) {
            set_stage(next.as_ref(), id, MoveStage::RolledBack)?;
            self.step("rollback:destination-recorded");
            set_stage(current.as_ref(), id, MoveStage::RolledBack)?;
        } else if let Some(record) = current.load_move()? {
            // A restarted coordinator that did not resume the move: the source's record
            // (the destination's stays as it is; a later begin from here reuses it).
            if record.value.role == MoveRole::Source
                && matches!(
                    record.value.stage,
                    MoveStage::Copying | MoveStage::DualPublishing
                )
            {
                set_stage(current.as_ref(), &record.value.id, MoveStage::RolledBack)?;
            }
        }
        self.step("rollback:done");
        let mut stores = self.stores.write();
        stores.next = None;
        stores.mirror = None;
        stores.id = None;
        stores.phase = MovePhase::Current;
        tracing::info!(store = %stores.current.location(), "cluster store move rolled back");
        Ok(())
    }

    /// The stores a write goes to: the deciding one, and whether to mirror.
    fn decider(&self) -> (Arc<dyn ClusterStore>, bool) {
        let stores = self.stores.read();
        match (&stores.next, stores.phase) {
            (Some(next), MovePhase::Switched) => (Arc::clone(next), false),
            (Some(_), MovePhase::DualPublishing) => (Arc::clone(&stores.current), true),
            _ => (Arc::clone(&stores.current), false),
        }
    }

    /// Queues a write for the new store (while dual publishing).
    fn mirror(&self, op: MirrorOp) {
        if let Some(mirror) = &self.stores.read().mirror {
            mirror.send(op);
        }
    }
}

/// The move a source store records, resumed by [`MovingStore::begin_as`].
struct ResumedMove {
    id: String,
    started_at_ms: u64,
    by: String,
}

/// Checks the source of a move to `to` (its move record `source`): not moved, not moving
/// elsewhere, not receiving a move. Returns the move it records when it is this very move
/// (`resuming`: the id of the move under way in memory, if any).
fn check_move_source(
    current: &dyn ClusterStore,
    source: Option<&Versioned<MoveRecord>>,
    to: &str,
    resuming: Option<&str>,
    refuse: &dyn Fn(String) -> StoreError,
) -> Result<Option<ResumedMove>, StoreError> {
    let mut resumed = None;
    if let Some(Versioned { value: r, .. }) = source {
        match (r.role, r.stage) {
            (MoveRole::Source, MoveStage::Switched) => {
                return Err(refuse(format!(
                    "this store's state was moved to {} (move {}); a coordinator still \
                     pointed at it must not move it again: point it at {}",
                    r.to, r.id, r.to
                )));
            }
            (MoveRole::Source, MoveStage::Copying | MoveStage::DualPublishing) => {
                if r.to != to || resuming.is_some_and(|id| id != r.id) {
                    return Err(refuse(format!(
                        "another move ({}) to {} is {}: switch or roll it back first",
                        r.id, r.to, r.stage
                    )));
                }
                resumed = Some(ResumedMove {
                    id: r.id.clone(),
                    started_at_ms: r.started_at_ms,
                    by: r.by.clone(),
                });
            }
            (MoveRole::Destination, MoveStage::Copying | MoveStage::DualPublishing) => {
                return Err(refuse(format!(
                    "this store is still receiving a move ({}) from {}",
                    r.id, r.from
                )));
            }
            (MoveRole::Destination, MoveStage::RolledBack) => {
                return Err(refuse(format!(
                    "this store holds the stale copy of a move ({}) from {} that was \
                     rolled back",
                    r.id, r.from
                )));
            }
            // A move out of this store rolled back, or a move into it finished.
            _ => {}
        }
    }
    if let Some(kind) = moved_kind(current)? {
        return Err(refuse(format!(
            "this store's state was already moved ({kind} is marked as moved to {})",
            current
                .load_kind(&kind)?
                .and_then(|k| k.value.moved_to)
                .unwrap_or_default()
        )));
    }
    Ok(resumed)
}

/// Checks the destination of a move from `from` (its move record `destination`): empty,
/// or holding this very move (`resumed_id`), or the abandoned copy of a move out of this
/// source (whose move record is `source`).
fn check_move_destination(
    next: &dyn ClusterStore,
    destination: Option<&Versioned<MoveRecord>>,
    source: Option<&Versioned<MoveRecord>>,
    from: &str,
    resumed_id: Option<&str>,
    refuse: &dyn Fn(String) -> StoreError,
) -> Result<(), StoreError> {
    let source_id = source.map(|s| s.value.id.clone());
    if let Some(Versioned { value: r, .. }) = destination {
        let ours = resumed_id.is_some_and(|id| id == r.id);
        let abandoned = r.role == MoveRole::Destination
            && r.stage == MoveStage::RolledBack
            && r.from == from
            && source_id.as_ref().is_some_and(|id| *id == r.id);
        if !(ours || abandoned) {
            return Err(refuse(format!(
                "the destination holds the record of another move ({}, {} from {} \
                 to {}, {}): it is not empty; give it a store nobody uses",
                r.id,
                match r.role {
                    MoveRole::Source => "source",
                    MoveRole::Destination => "destination",
                },
                r.from,
                r.to,
                r.stage
            )));
        }
    } else {
        let kinds = next.kinds()?;
        if !kinds.is_empty() {
            return Err(refuse(format!(
                "the destination is not empty: it holds {}; give it a store nobody \
                 uses",
                kinds.join(", ")
            )));
        }
    }
    Ok(())
}

/// A new move id: unique enough across coordinators (time, process, a hash of the
/// locations).
fn new_move_id(from: &str, to: &str, at_ms: u64) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (from, to, at_ms, std::process::id()).hash(&mut h);
    format!("move-{at_ms}-{:08x}", h.finish() & 0xffff_ffff)
}

/// Stores a move record whose current revision is `expected` (a conflict: someone else
/// moves the same store).
fn put_move(
    store: &dyn ClusterStore,
    expected: Option<u64>,
    record: &MoveRecord,
) -> Result<(), StoreError> {
    match store.swap_move(expected, record)? {
        StoreCasOutcome::Swapped { .. } => Ok(()),
        StoreCasOutcome::Conflict => Err(StoreError::Move {
            from: record.from.clone(),
            to: record.to.clone(),
            message: format!(
                "the move record of {} changed meanwhile (another coordinator moves it?)",
                store.location()
            ),
        }),
    }
}

/// Sets the stage of move `id`'s record in `store` (idempotent). Refused when the store
/// records another move.
fn set_stage(store: &dyn ClusterStore, id: &str, stage: MoveStage) -> Result<(), StoreError> {
    for _ in 0..RETRIES {
        let Some(stored) = store.load_move()? else {
            return Err(StoreError::Move {
                from: String::new(),
                to: store.location(),
                message: format!("the move record of move {id} is missing"),
            });
        };
        let mut record = stored.value;
        if record.id != id {
            return Err(StoreError::Move {
                from: record.from,
                to: record.to,
                message: format!(
                    "{} records another move ({}), not {id}",
                    store.location(),
                    record.id
                ),
            });
        }
        if record.stage == stage {
            return Ok(());
        }
        record.stage = stage;
        record.updated_at_ms = crate::clock::to_ms(std::time::SystemTime::now());
        if let StoreCasOutcome::Swapped { .. } = store.swap_move(Some(stored.revision), &record)? {
            return Ok(());
        }
    }
    Err(StoreError::Backend {
        location: store.location(),
        operation: "record a move's stage",
        message: "the move record kept changing".to_owned(),
    })
}

/// A kind of `store` marked as moved (anywhere), if any.
fn moved_kind(store: &dyn ClusterStore) -> Result<Option<String>, StoreError> {
    for kind in store.kinds()? {
        if store
            .load_kind(&kind)?
            .is_some_and(|k| k.value.moved_to.is_some())
        {
            return Ok(Some(kind));
        }
    }
    Ok(None)
}

/// Whether any kind of `store` is marked as moved to `to` (the switch's commit began).
fn marked_to(store: &dyn ClusterStore, to: &str) -> Result<bool, StoreError> {
    for kind in store.kinds()? {
        if store
            .load_kind(&kind)?
            .is_some_and(|k| k.value.moved_to.as_deref() == Some(to))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Makes `next` hold what `current` holds: imports every kind that differs, removes
/// every kind `current` does not have.
fn reconcile(current: &dyn ClusterStore, next: &dyn ClusterStore) -> Result<(), StoreError> {
    let kinds: BTreeSet<String> = current.kinds()?.into_iter().collect();
    for kind in &kinds {
        let Some(here) = current.load_state(kind)? else {
            continue;
        };
        if next.load_state(kind)?.as_ref() != Some(&here) {
            next.import(kind, &here)?;
        }
    }
    for kind in next.kinds()? {
        if !kinds.contains(&kind) {
            next.remove_kind(&kind)?;
        }
    }
    Ok(())
}

/// The report of a committed move: the new store's kinds.
fn compare_switched(next: &dyn ClusterStore) -> Result<MoveReport, StoreError> {
    Ok(MoveReport {
        kinds: next.kinds()?,
        differences: Vec::new(),
        behind: false,
    })
}
/// Stores `record` for `kind` whatever its revision in `store` (a mirror or a copy: its
/// revisions are its own).
fn overwrite_kind(
    store: &dyn ClusterStore,
    kind: &str,
    record: &KindRecord,
) -> Result<StoreCasOutcome, StoreError> {
    let mut outcome = StoreCasOutcome::Conflict;
    for _ in 0..RETRIES {
        let expected = store.load_kind(kind)?.map(|v| v.revision);
        outcome = store.swap_kind(kind, expected, record)?;
        if let StoreCasOutcome::Swapped { .. } = outcome {
            break;
        }
    }
    Ok(outcome)
}

/// Stores `record` for `member` of `kind` whatever the revisions in `store`.
fn overwrite_member(
    store: &dyn ClusterStore,
    kind: &str,
    member: &str,
    record: &MemberRecord,
) -> Result<StoreCasOutcome, StoreError> {
    let mut outcome = StoreCasOutcome::Conflict;
    for _ in 0..RETRIES {
        let Some(kind_record) = store.load_kind(kind)? else {
            return Ok(StoreCasOutcome::Conflict);
        };
        let expected = store.load_member(kind, member)?.map(|v| v.revision);
        outcome = store.swap_member(kind, member, expected, kind_record.revision, record)?;
        if let StoreCasOutcome::Swapped { .. } = outcome {
            break;
        }
    }
    Ok(outcome)
}

/// How often a write that must land whatever the revisions is retried.
const RETRIES: usize = 16;

fn mark_moved(store: &dyn ClusterStore, kind: &str, to: Option<&str>) -> Result<(), StoreError> {
    for _ in 0..RETRIES {
        let Some(stored) = store.load_kind(kind)? else {
            return Ok(());
        };
        let mut record = stored.value;
        record.moved_to = to.map(ToOwned::to_owned);
        if let StoreCasOutcome::Swapped { .. } =
            store.swap_kind(kind, Some(stored.revision), &record)?
        {
            return Ok(());
        }
    }
    Err(StoreError::Backend {
        location: store.location(),
        operation: "mark moved",
        message: format!("the state of {kind} kept changing"),
    })
}

fn compare(current: &dyn ClusterStore, next: &dyn ClusterStore) -> Result<MoveReport, StoreError> {
    let mut kinds: BTreeSet<String> = current.kinds()?.into_iter().collect();
    kinds.extend(next.kinds()?);
    let mut report = MoveReport::default();
    for kind in kinds {
        let here = current.load_state(&kind)?;
        let there = next.load_state(&kind)?;
        match (&here, &there) {
            (Some(_), None) => report
                .differences
                .push(format!("{kind}: missing in the new store")),
            (None, Some(_)) => report
                .differences
                .push(format!("{kind}: only in the new store")),
            (Some(a), Some(b)) if a != b => report
                .differences
                .push(format!("{kind}: the states differ")),
            _ => {}
        }
        report.kinds.push(kind);
    }
    Ok(report)
}

/// A revision read from the active store, marked once switched.
fn mark(revision: u64, switched: bool) -> u64 {
    if switched {
        revision | SWITCHED_REVISION
    } else {
        revision
    }
}

impl MovingStore {
    /// The revision the deciding store expects, from one handed out by this adapter:
    /// `None` when it was read on the other side of the switch (stale).
    fn unmark(&self, revision: u64) -> Option<u64> {
        match (self.switched(), revision & SWITCHED_REVISION != 0) {
            (true, true) => Some(revision & !SWITCHED_REVISION),
            (false, false) => Some(revision),
            _ => None,
        }
    }

    fn switched(&self) -> bool {
        self.phase() == MovePhase::Switched
    }
}

/// Logs a mirrored write that failed (the current store decided; verify reports the gap
/// and `catch_up` closes it); whether it landed.
fn mirrored(kind: &str, what: &str, result: Result<StoreCasOutcome, StoreError>) -> bool {
    match result {
        Ok(StoreCasOutcome::Swapped { .. }) => true,
        Ok(StoreCasOutcome::Conflict) => {
            tracing::warn!(
                kind,
                what,
                "cluster store move: mirroring a write conflicted"
            );
            false
        }
        Err(e) => {
            tracing::warn!(kind, what, error = %e, "cluster store move: mirroring a write failed");
            false
        }
    }
}

impl ClusterStore for MovingStore {
    fn location(&self) -> String {
        self.active().location()
    }

    fn kinds(&self) -> Result<Vec<String>, StoreError> {
        let _reads = self.switching.read();
        self.active().kinds()
    }

    fn load_kind(&self, kind: &str) -> Result<Option<Versioned<KindRecord>>, StoreError> {
        let _reads = self.switching.read();
        let switched = self.switched();
        Ok(self.active().load_kind(kind)?.map(|mut v| {
            v.revision = mark(v.revision, switched);
            v
        }))
    }

    fn swap_kind(
        &self,
        kind: &str,
        expected: Option<u64>,
        record: &KindRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.decider();
        let expected = match expected.map(|r| self.unmark(r)) {
            None => None,
            Some(Some(r)) => Some(r),
            // Read on the other side of the switch: stale.
            Some(None) => return Ok(StoreCasOutcome::Conflict),
        };
        let switched = self.switched();
        let outcome = match decider.swap_kind(kind, expected, record)? {
            StoreCasOutcome::Swapped { revision } => StoreCasOutcome::Swapped {
                revision: mark(revision, switched),
            },
            StoreCasOutcome::Conflict => StoreCasOutcome::Conflict,
        };
        if let (StoreCasOutcome::Swapped { .. }, true) = (&outcome, mirror) {
            self.mirror(MirrorOp::Kind(kind.to_owned(), record.clone()));
        }
        Ok(outcome)
    }

    fn load_member(
        &self,
        kind: &str,
        member: &str,
    ) -> Result<Option<Versioned<MemberRecord>>, StoreError> {
        let _reads = self.switching.read();
        let switched = self.switched();
        Ok(self.active().load_member(kind, member)?.map(|mut v| {
            v.revision = mark(v.revision, switched);
            v
        }))
    }

    fn members(&self, kind: &str) -> Result<Vec<(String, Versioned<MemberRecord>)>, StoreError> {
        let _reads = self.switching.read();
        let switched = self.switched();
        let mut members = self.active().members(kind)?;
        for (_, v) in &mut members {
            v.revision = mark(v.revision, switched);
        }
        Ok(members)
    }

    fn swap_member(
        &self,
        kind: &str,
        member: &str,
        expected: Option<u64>,
        kind_revision: u64,
        record: &MemberRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.decider();
        let expected = match expected.map(|r| self.unmark(r)) {
            None => None,
            Some(Some(r)) => Some(r),
            Some(None) => return Ok(StoreCasOutcome::Conflict),
        };
        let Some(kind_revision) = self.unmark(kind_revision) else {
            return Ok(StoreCasOutcome::Conflict);
        };
        let switched = self.switched();
        let outcome = match decider.swap_member(kind, member, expected, kind_revision, record)? {
            StoreCasOutcome::Swapped { revision } => StoreCasOutcome::Swapped {
                revision: mark(revision, switched),
            },
            StoreCasOutcome::Conflict => StoreCasOutcome::Conflict,
        };
        if let (StoreCasOutcome::Swapped { .. }, true) = (&outcome, mirror) {
            self.mirror(MirrorOp::Member(
                kind.to_owned(),
                member.to_owned(),
                record.clone(),
            ));
        }
        Ok(outcome)
    }

    fn append_audit(&self, kind: &str, entry: &AuditEntry) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.decider();
        decider.append_audit(kind, entry)?;
        if mirror {
            self.mirror(MirrorOp::Audit(kind.to_owned(), entry.clone()));
        }
        Ok(())
    }

    fn audit(&self, kind: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let _reads = self.switching.read();
        self.active().audit(kind)
    }

    fn import(&self, kind: &str, state: &KindState) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.decider();
        decider.import(kind, state)?;
        if mirror {
            self.mirror(MirrorOp::Import(kind.to_owned(), state.clone()));
        }
        Ok(())
    }

    fn claim_finalizer(
        &self,
        kind: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<FinalizerClaim, StoreError> {
        let (decider, mirror) = {
            let stores = self.stores.read();
            match (&stores.next, stores.phase) {
                (Some(next), MovePhase::Switched) => (Arc::clone(next), None),
                (Some(next), MovePhase::DualPublishing) => {
                    (Arc::clone(&stores.current), Some(Arc::clone(next)))
                }
                _ => (Arc::clone(&stores.current), None),
            }
        };
        let claim = decider.claim_finalizer(kind, holder, ttl)?;
        if let (FinalizerClaim::Claimed, Some(mirror)) = (&claim, mirror) {
            match mirror.claim_finalizer(kind, holder, ttl) {
                Ok(FinalizerClaim::Claimed) => {}
                Ok(held @ FinalizerClaim::HeldBy { .. }) => {
                    decider.release_finalizer(kind, holder)?;
                    return Ok(held);
                }
                Err(e) => {
                    decider.release_finalizer(kind, holder)?;
                    return Err(e);
                }
            }
        }
        Ok(claim)
    }

    fn release_finalizer(&self, kind: &str, holder: &str) -> Result<(), StoreError> {
        // Release everywhere it may be held: a claim may span the switch.
        let stores = self.stores.read();
        let current = Arc::clone(&stores.current);
        let next = stores.next.clone();
        drop(stores);
        let first = current.release_finalizer(kind, holder);
        if let Some(next) = next {
            next.release_finalizer(kind, holder)?;
        }
        first
    }

    fn load_state(&self, kind: &str) -> Result<Option<KindState>, StoreError> {
        let _reads = self.switching.read();
        self.active().load_state(kind)
    }

    /// Decided by the active store and, while dual publishing, mirrored.
    fn remove_kind(&self, kind: &str) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.decider();
        decider.remove_kind(kind)?;
        if mirror {
            // No op of its own: the mirror is marked behind, catch_up removes it.
            if let Some(m) = &self.stores.read().mirror {
                m.shared.behind.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// The active store's move record (the adapter's own move is recorded in both).
    fn load_move(&self) -> Result<Option<Versioned<MoveRecord>>, StoreError> {
        let _reads = self.switching.read();
        self.active().load_move()
    }

    /// Stored in the active store.
    fn swap_move(
        &self,
        expected: Option<u64>,
        record: &MoveRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let _writes = self.writes.lock();
        self.active().swap_move(expected, record)
    }
}

impl fmt::Debug for MovingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stores = self.stores.read();
        f.debug_struct("MovingStore")
            .field("current", &stores.current.location())
            .field("next", &stores.next.as_ref().map(ClusterStore::location))
            .field("phase", &stores.phase)
            .field("id", &stores.id)
            .finish_non_exhaustive()
    }
}
