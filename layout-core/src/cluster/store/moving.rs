//! Moving a live cluster's state to another store.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::{CasOutcome, ClusterStore, FinalizerClaim, StoreError, Versioned};
use crate::cluster::state::{AuditEntry, KindRecord, KindState, MemberRecord};

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
}

impl MoveReport {
    /// Whether the new store has caught up.
    pub fn is_caught_up(&self) -> bool {
        self.differences.is_empty()
    }
}

/// A [`ClusterStore`] that moves a live cluster to another store without stopping it:
/// the coordinator runs on it, and members keep heartbeating throughout.
///
/// 1. [`begin`](Self::begin): the state of every kind is copied into the new store
///    ([`ClusterStore::import`]); from then on every write goes to the current store
///    (which decides) and is mirrored to the new one (the same record, stored whatever
///    its revision there: each store keeps its own revisions), the finalizer is claimed
///    in both; reads still come from the current store. Liveness is not stored (the
///    coordinator keeps it in memory), so there is none to copy.
/// 2. [`verify`](Self::verify): compares both stores' snapshots
///    ([`ClusterStore::load_state`]); [`catch_up`](Self::catch_up) recopies every kind
///    that differs (a write the other store missed).
/// 3. [`switch`](Self::switch): verifies again with writes held, records the move in the
///    new store's audit trail, marks the old store's state as moved (the commit), and
///    serves from the new store alone.
///
/// Until the switch is committed, [`rollback`](Self::rollback) returns to the current
/// store alone; the new store's copy is then stale and may be deleted. Revisions handed
/// out after the switch are marked, so a change decided on a record read before it is a
/// conflict (reloaded and decided again), never applied to the new store.
///
/// Writes by other processes straight to the current store during the move (another
/// coordinator not using this adapter) are not mirrored: `verify` reports them, and
/// `switch` refuses until `catch_up` has copied them.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::cluster::state::KindRecord;
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
}

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
}

impl MovingStore {
    /// Serves from `current` alone.
    pub fn new(current: Arc<dyn ClusterStore>) -> Self {
        Self {
            stores: RwLock::new(Stores {
                current,
                next: None,
                phase: MovePhase::Current,
            }),
            writes: Mutex::new(()),
            switching: RwLock::new(()),
        }
    }

    /// Where it stands.
    pub fn phase(&self) -> MovePhase {
        self.stores.read().phase
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

    /// Starts dual publishing to `next`: copies every kind's state (record, members,
    /// audit) with [`ClusterStore::import`]. Only from [`MovePhase::Current`].
    pub fn begin(&self, next: Arc<dyn ClusterStore>) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let current = {
            let stores = self.stores.read();
            if stores.phase != MovePhase::Current {
                drop(stores);
                return Err(self.move_error("a move is already under way or committed"));
            }
            Arc::clone(&stores.current)
        };
        for kind in current.kinds()? {
            if let Some(state) = current.load_state(&kind)? {
                next.import(&kind, &state)?;
            }
        }
        let mut stores = self.stores.write();
        stores.next = Some(next);
        stores.phase = MovePhase::DualPublishing;
        tracing::info!(from = %stores.current.location(), to = %stores.next.as_ref().map(ClusterStore::location).unwrap_or_default(), "cluster store move: dual publishing");
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

    /// Compares the current store with the new one: every kind's state (record, members,
    /// audit; not the revisions, which are each store's own) must be equal.
    pub fn verify(&self) -> Result<MoveReport, StoreError> {
        let (current, next) = self.pair()?;
        compare(current.as_ref(), next.as_ref())
    }

    /// Recopies every kind that differs into the new store ([`ClusterStore::import`]).
    pub fn catch_up(&self) -> Result<MoveReport, StoreError> {
        let _writes = self.writes.lock();
        let (current, next) = self.pair()?;
        for kind in current.kinds()? {
            let Some(here) = current.load_state(&kind)? else {
                continue;
            };
            if next.load_state(&kind)?.as_ref() != Some(&here) {
                next.import(&kind, &here)?;
            }
        }
        compare(current.as_ref(), next.as_ref())
    }

    /// Commits the move: with writes held, verifies that the new store caught up (else
    /// refuses, still dual publishing), records the move in the new store's audit trail,
    /// marks every kind in the old store as moved, and serves from the new store alone.
    /// After this, no rollback.
    pub fn switch(&self) -> Result<MoveReport, StoreError> {
        let _reads = self.switching.write();
        let _writes = self.writes.lock();
        let (current, next) = self.pair()?;
        let report = compare(current.as_ref(), next.as_ref())?;
        if !report.is_caught_up() {
            return Err(self.move_error(format!(
                "the new store has not caught up: {}; run catch_up, then switch again",
                report.differences.join("; ")
            )));
        }
        let from = current.location();
        let to = next.location();
        let now = crate::clock::to_ms(std::time::SystemTime::now());
        for kind in &report.kinds {
            if next.load_kind(kind)?.is_some() {
                next.append_audit(
                    kind,
                    &AuditEntry {
                        at_ms: now,
                        actor: "store-move".to_owned(),
                        event: "store-moved".to_owned(),
                        member_id: None,
                        version: None,
                        detail: format!("cluster state moved from {from} to {to}"),
                    },
                )?;
            }
        }
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
        self.stores.write().phase = MovePhase::Switched;
        tracing::info!(%from, %to, "cluster store move committed");
        Ok(report)
    }

    /// Abandons the move before it is committed: back to the current store alone.
    pub fn rollback(&self) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let phase = self.phase();
        if phase == MovePhase::Switched {
            return Err(self.move_error("the switch is committed; there is no rollback"));
        }
        let mut stores = self.stores.write();
        stores.next = None;
        stores.phase = MovePhase::Current;
        tracing::info!(store = %stores.current.location(), "cluster store move rolled back");
        Ok(())
    }

    /// The stores a write goes to: the deciding one, and the mirror while dual publishing.
    fn targets(&self) -> (Arc<dyn ClusterStore>, Option<Arc<dyn ClusterStore>>) {
        let stores = self.stores.read();
        match (&stores.next, stores.phase) {
            (Some(next), MovePhase::Switched) => (Arc::clone(next), None),
            (Some(next), MovePhase::DualPublishing) => {
                (Arc::clone(&stores.current), Some(Arc::clone(next)))
            }
            _ => (Arc::clone(&stores.current), None),
        }
    }
}

/// Stores `record` for `kind` whatever its revision in `store` (a mirror or a copy: its
/// revisions are its own).
fn overwrite_kind(
    store: &dyn ClusterStore,
    kind: &str,
    record: &KindRecord,
) -> Result<CasOutcome, StoreError> {
    let mut outcome = CasOutcome::Conflict;
    for _ in 0..RETRIES {
        let expected = store.load_kind(kind)?.map(|v| v.revision);
        outcome = store.swap_kind(kind, expected, record)?;
        if let CasOutcome::Swapped { .. } = outcome {
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
) -> Result<CasOutcome, StoreError> {
    let mut outcome = CasOutcome::Conflict;
    for _ in 0..RETRIES {
        let Some(kind_record) = store.load_kind(kind)? else {
            return Ok(CasOutcome::Conflict);
        };
        let expected = store.load_member(kind, member)?.map(|v| v.revision);
        outcome = store.swap_member(kind, member, expected, kind_record.revision, record)?;
        if let CasOutcome::Swapped { .. } = outcome {
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
        if let CasOutcome::Swapped { .. } = store.swap_kind(kind, Some(stored.revision), &record)? {
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

/// Logs a mirrored write that failed: the current store decided; verify reports the gap
/// and `catch_up` closes it.
fn mirrored(kind: &str, what: &str, result: Result<CasOutcome, StoreError>) {
    match result {
        Ok(CasOutcome::Swapped { .. }) => {}
        Ok(CasOutcome::Conflict) => {
            tracing::warn!(
                kind,
                what,
                "cluster store move: mirroring a write conflicted"
            );
        }
        Err(e) => {
            tracing::warn!(kind, what, error = %e, "cluster store move: mirroring a write failed");
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
    ) -> Result<CasOutcome, StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.targets();
        let expected = match expected.map(|r| self.unmark(r)) {
            None => None,
            Some(Some(r)) => Some(r),
            // Read on the other side of the switch: stale.
            Some(None) => return Ok(CasOutcome::Conflict),
        };
        let switched = self.switched();
        let outcome = match decider.swap_kind(kind, expected, record)? {
            CasOutcome::Swapped { revision } => CasOutcome::Swapped {
                revision: mark(revision, switched),
            },
            CasOutcome::Conflict => CasOutcome::Conflict,
        };
        if let (CasOutcome::Swapped { .. }, Some(mirror)) = (&outcome, mirror) {
            mirrored(
                kind,
                "kind record",
                overwrite_kind(mirror.as_ref(), kind, record),
            );
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
    ) -> Result<CasOutcome, StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.targets();
        let expected = match expected.map(|r| self.unmark(r)) {
            None => None,
            Some(Some(r)) => Some(r),
            Some(None) => return Ok(CasOutcome::Conflict),
        };
        let Some(kind_revision) = self.unmark(kind_revision) else {
            return Ok(CasOutcome::Conflict);
        };
        let switched = self.switched();
        let outcome = match decider.swap_member(kind, member, expected, kind_revision, record)? {
            CasOutcome::Swapped { revision } => CasOutcome::Swapped {
                revision: mark(revision, switched),
            },
            CasOutcome::Conflict => CasOutcome::Conflict,
        };
        if let (CasOutcome::Swapped { .. }, Some(mirror)) = (&outcome, mirror) {
            mirrored(
                kind,
                "member record",
                overwrite_member(mirror.as_ref(), kind, member, record),
            );
        }
        Ok(outcome)
    }

    fn append_audit(&self, kind: &str, entry: &AuditEntry) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.targets();
        decider.append_audit(kind, entry)?;
        if let Some(mirror) = mirror {
            let result = mirror
                .append_audit(kind, entry)
                .map(|()| CasOutcome::Swapped { revision: 0 });
            mirrored(kind, "audit entry", result);
        }
        Ok(())
    }

    fn audit(&self, kind: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let _reads = self.switching.read();
        self.active().audit(kind)
    }

    fn import(&self, kind: &str, state: &KindState) -> Result<(), StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.targets();
        decider.import(kind, state)?;
        if let Some(mirror) = mirror {
            let result = mirror
                .import(kind, state)
                .map(|()| CasOutcome::Swapped { revision: 0 });
            mirrored(kind, "import", result);
        }
        Ok(())
    }

    fn claim_finalizer(
        &self,
        kind: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<FinalizerClaim, StoreError> {
        let (decider, mirror) = self.targets();
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
}

impl fmt::Debug for MovingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stores = self.stores.read();
        f.debug_struct("MovingStore")
            .field("current", &stores.current.location())
            .field("next", &stores.next.as_ref().map(ClusterStore::location))
            .field("phase", &stores.phase)
            .finish_non_exhaustive()
    }
}
