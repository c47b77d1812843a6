//! Moving a live cluster's state to another store.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::{CasOutcome, ClusterStore, FinalizerClaim, StoreError, Versioned};
use crate::cluster::state::{AuditEntry, KindState};

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
/// 1. [`begin`](Self::begin): the state of every kind, and the live members, are copied
///    into the new store; from then on every write goes to the current store (which
///    decides) and is mirrored to the new one, liveness is marked in both, the finalizer
///    is claimed in both; reads still come from the current store.
/// 2. [`verify`](Self::verify): compares both stores; [`catch_up`](Self::catch_up)
///    recopies what differs (a write the other store missed).
/// 3. [`switch`](Self::switch): verifies again with writes held, records the move in the
///    new store's audit trail, marks the old store's state as moved (the commit), and
///    serves from the new store alone.
///
/// Until the switch is committed, [`rollback`](Self::rollback) returns to the current
/// store alone; the new store's copy is then stale and may be deleted.
///
/// Writes by other processes straight to the current store during the move (another
/// coordinator not using this adapter) are not mirrored: `verify` reports them, and
/// `switch` refuses until `catch_up` has copied them.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::cluster::{ClusterStore, EmbeddedStore, KindState, MovePhase, MovingStore};
///
/// let old = Arc::new(EmbeddedStore::in_memory());
/// old.compare_and_swap("datanode", None, &KindState::new("datanode", 2))?;
/// let new = Arc::new(EmbeddedStore::in_memory());
/// let store = MovingStore::new(old.clone());
/// store.begin(new.clone(), std::time::Duration::from_secs(10))?;
/// assert!(store.verify()?.is_caught_up());
/// store.switch()?;
/// assert_eq!(store.phase(), MovePhase::Switched);
/// assert_eq!(new.load("datanode")?.unwrap().state.cluster_layout_version, 2);
/// assert!(old.load("datanode")?.unwrap().state.moved_to.is_some());
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

    /// Starts dual publishing to `next`: copies every kind's state and the live members
    /// (marked live there for `member_lease_ttl`). Only from [`MovePhase::Current`].
    pub fn begin(
        &self,
        next: Arc<dyn ClusterStore>,
        member_lease_ttl: Duration,
    ) -> Result<(), StoreError> {
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
            if let Some(stored) = current.load(&kind)? {
                next.overwrite(&kind, &stored.state)?;
            }
            for member in current.live_members(&kind)? {
                next.mark_alive(&kind, &member, member_lease_ttl)?;
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

    /// Compares the current store with the new one: every kind's state must be equal, and
    /// every member live in the current store must be live in the new one.
    pub fn verify(&self) -> Result<MoveReport, StoreError> {
        let (current, next) = self.pair()?;
        compare(current.as_ref(), next.as_ref())
    }

    /// Recopies every kind that differs (and the live members) into the new store.
    pub fn catch_up(&self, member_lease_ttl: Duration) -> Result<MoveReport, StoreError> {
        let _writes = self.writes.lock();
        let (current, next) = self.pair()?;
        for kind in current.kinds()? {
            let here = current.load(&kind)?;
            let there = next.load(&kind)?;
            if let Some(here) = here {
                if there.map(|t| t.state) != Some(here.state.clone()) {
                    next.overwrite(&kind, &here.state)?;
                }
            }
            for member in current.live_members(&kind)? {
                next.mark_alive(&kind, &member, member_lease_ttl)?;
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
            if let Some(stored) = next.load(kind)? {
                let mut state = stored.state;
                state.audit.push(AuditEntry {
                    at_ms: now,
                    actor: "store-move".to_owned(),
                    event: "store-moved".to_owned(),
                    member_id: None,
                    version: None,
                    detail: format!("cluster state moved from {from} to {to}"),
                });
                next.overwrite(kind, &state)?;
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

fn mark_moved(store: &dyn ClusterStore, kind: &str, to: Option<&str>) -> Result<(), StoreError> {
    for _ in 0..16 {
        let Some(stored) = store.load(kind)? else {
            return Ok(());
        };
        let mut state = stored.state;
        state.moved_to = to.map(ToOwned::to_owned);
        if let CasOutcome::Swapped { .. } =
            store.compare_and_swap(kind, Some(stored.revision), &state)?
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
        let here = current.load(&kind)?.map(|v| v.state);
        let there = next.load(&kind)?.map(|v| v.state);
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
        let live_current = current.live_members(&kind)?;
        let live_next = next.live_members(&kind)?;
        let missing: Vec<_> = live_current.difference(&live_next).cloned().collect();
        if !missing.is_empty() {
            report.differences.push(format!(
                "{kind}: live members not live in the new store: {}",
                missing.join(", ")
            ));
        }
        report.kinds.push(kind);
    }
    Ok(report)
}

impl ClusterStore for MovingStore {
    fn location(&self) -> String {
        self.active().location()
    }

    fn kinds(&self) -> Result<Vec<String>, StoreError> {
        let _reads = self.switching.read();
        self.active().kinds()
    }

    fn load(&self, kind: &str) -> Result<Option<Versioned>, StoreError> {
        let _reads = self.switching.read();
        let switched = self.phase() == MovePhase::Switched;
        Ok(self.active().load(kind)?.map(|mut v| {
            if switched {
                v.revision |= SWITCHED_REVISION;
            }
            v
        }))
    }

    fn compare_and_swap(
        &self,
        kind: &str,
        expected: Option<u64>,
        state: &KindState,
    ) -> Result<CasOutcome, StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.targets();
        let expected = match (self.phase() == MovePhase::Switched, expected) {
            (_, None) => None,
            (true, Some(r)) if r & SWITCHED_REVISION != 0 => Some(r & !SWITCHED_REVISION),
            // Read before the switch (from the old store): stale.
            (true, Some(_)) => return Ok(CasOutcome::Conflict),
            (false, Some(r)) if r & SWITCHED_REVISION != 0 => return Ok(CasOutcome::Conflict),
            (false, Some(r)) => Some(r),
        };
        let switched = mirror.is_none() && self.phase() == MovePhase::Switched;
        let outcome = match decider.compare_and_swap(kind, expected, state)? {
            CasOutcome::Swapped { revision } if switched => CasOutcome::Swapped {
                revision: revision | SWITCHED_REVISION,
            },
            outcome => outcome,
        };
        if let (CasOutcome::Swapped { .. }, Some(mirror)) = (&outcome, mirror) {
            if let Err(e) = mirror.overwrite(kind, state) {
                // The current store decided; verify reports the gap, catch_up closes it.
                tracing::warn!(kind, error = %e, "cluster store move: mirroring a write failed");
            }
        }
        Ok(outcome)
    }

    fn overwrite(&self, kind: &str, state: &KindState) -> Result<u64, StoreError> {
        let _writes = self.writes.lock();
        let (decider, mirror) = self.targets();
        let revision = decider.overwrite(kind, state)?;
        if let Some(mirror) = &mirror {
            if let Err(e) = mirror.overwrite(kind, state) {
                tracing::warn!(kind, error = %e, "cluster store move: mirroring a write failed");
            }
        }
        Ok(if mirror.is_none() && self.phase() == MovePhase::Switched {
            revision | SWITCHED_REVISION
        } else {
            revision
        })
    }

    fn mark_alive(&self, kind: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let (decider, mirror) = self.targets();
        decider.mark_alive(kind, member, ttl)?;
        if let Some(mirror) = mirror {
            if let Err(e) = mirror.mark_alive(kind, member, ttl) {
                tracing::warn!(kind, member, error = %e, "cluster store move: mirroring liveness failed");
            }
        }
        Ok(())
    }

    fn live_members(&self, kind: &str) -> Result<BTreeSet<String>, StoreError> {
        let _reads = self.switching.read();
        self.active().live_members(kind)
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
