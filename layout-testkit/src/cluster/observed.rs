//! A cluster store that counts what goes through it, for tests and benchmarks of the
//! coordination itself: how many reads and writes a scenario costs, how many bytes a member
//! change writes, a hook to act at the moment a finalizer claim is taken, and an outage
//! or a stall to switch on and off.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use layout_core::cluster::{
    AuditEntry, ClusterStore, FinalizerClaim, KindRecord, KindState, MemberRecord, MoveRecord,
    StoreCasOutcome, StoreError, Versioned,
};
use parking_lot::Mutex;

/// Something to run once, inside the store, the next time a finalizer claim is asked for.
type Hook = Box<dyn FnOnce() + Send>;

/// Wraps a [`ClusterStore`] and counts its calls; otherwise forwards everything.
///
/// ```
/// use std::sync::Arc;
/// use layout_core::cluster::{Coordinator, CoordinatorOptions, EmbeddedStore, MemberReport};
/// use layout_testkit::cluster::ObservedStore;
///
/// let store = Arc::new(ObservedStore::new(EmbeddedStore::in_memory()));
/// let coordinator = Coordinator::open(store.clone(), CoordinatorOptions::default())?;
/// coordinator.register(&MemberReport::new("datanode", "dn1", 2, 1))?;
/// let writes = store.writes();
/// coordinator.heartbeat(&MemberReport::new("datanode", "dn1", 2, 1))?;
/// assert_eq!(store.writes(), writes, "a heartbeat that changes nothing writes nothing");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ObservedStore<S> {
    inner: S,
    reads: AtomicU64,
    kind_writes: AtomicU64,
    member_writes: AtomicU64,
    member_bytes: AtomicU64,
    audit_writes: AtomicU64,
    on_claim: Mutex<Option<Hook>>,
    down: AtomicBool,
    /// While set, every write waits (at most this long) before it goes through.
    stall: Mutex<Option<Duration>>,
}

impl<S> ObservedStore<S> {
    /// `inner`, counted.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            reads: AtomicU64::new(0),
            kind_writes: AtomicU64::new(0),
            member_writes: AtomicU64::new(0),
            member_bytes: AtomicU64::new(0),
            audit_writes: AtomicU64::new(0),
            on_claim: Mutex::new(None),
            down: AtomicBool::new(false),
            stall: Mutex::new(None),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Reads so far: kind records, member records, member listings.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Writes so far: kind records, member records and audit entries.
    pub fn writes(&self) -> u64 {
        self.kind_writes.load(Ordering::SeqCst)
            + self.member_writes.load(Ordering::SeqCst)
            + self.audit_writes.load(Ordering::SeqCst)
    }

    /// Member-record writes so far (attempted: a conflict counts too).
    pub fn member_writes(&self) -> u64 {
        self.member_writes.load(Ordering::SeqCst)
    }

    /// The bytes of every member-record write so far: the kind, the member id and the
    /// record's JSON (what a key-value store is sent, give or take its key prefix).
    pub fn member_bytes(&self) -> u64 {
        self.member_bytes.load(Ordering::SeqCst)
    }

    /// An outage: while `down`, every read and write fails with
    /// [`StoreError::Backend`] ("injected outage") and changes nothing.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// A stalled store: while `Some(bound)`, every write waits until the stall is lifted
    /// (`None`) or `bound` has passed, then goes through, as a store that hangs would
    /// answer late.
    pub fn stall_writes(&self, bound: Option<Duration>) {
        *self.stall.lock() = bound;
    }

    /// Waits while writes are stalled (see [`stall_writes`](Self::stall_writes)).
    fn wait_if_stalled(&self) {
        let start = std::time::Instant::now();
        while let Some(bound) = *self.stall.lock() {
            if start.elapsed() >= bound {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn check_up(&self, operation: &'static str) -> Result<(), StoreError>
    where
        S: ClusterStore,
    {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Backend {
                location: self.inner.location(),
                operation,
                message: "injected outage".to_owned(),
            });
        }
        Ok(())
    }

    /// Runs `hook` the next time a finalizer claim is asked for, before the claim is
    /// taken (once).
    pub fn on_next_claim(&self, hook: impl FnOnce() + Send + 'static) {
        *self.on_claim.lock() = Some(Box::new(hook));
    }
}

impl<S: fmt::Debug> fmt::Debug for ObservedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedStore")
            .field("inner", &self.inner)
            .field("reads", &self.reads())
            .field("writes", &self.writes())
            .finish_non_exhaustive()
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

impl<S: ClusterStore> ClusterStore for ObservedStore<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn kinds(&self) -> Result<Vec<String>, StoreError> {
        self.check_up("list kinds")?;
        self.inner.kinds()
    }
    fn load_kind(&self, kind: &str) -> Result<Option<Versioned<KindRecord>>, StoreError> {
        self.check_up("load a kind")?;
        count(&self.reads);
        self.inner.load_kind(kind)
    }
    fn swap_kind(
        &self,
        kind: &str,
        expected: Option<u64>,
        record: &KindRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        self.check_up("swap a kind")?;
        self.wait_if_stalled();
        count(&self.kind_writes);
        self.inner.swap_kind(kind, expected, record)
    }
    fn load_member(
        &self,
        kind: &str,
        member: &str,
    ) -> Result<Option<Versioned<MemberRecord>>, StoreError> {
        self.check_up("load a member")?;
        count(&self.reads);
        self.inner.load_member(kind, member)
    }
    fn members(&self, kind: &str) -> Result<Vec<(String, Versioned<MemberRecord>)>, StoreError> {
        self.check_up("list members")?;
        count(&self.reads);
        self.inner.members(kind)
    }
    fn swap_member(
        &self,
        kind: &str,
        member: &str,
        expected: Option<u64>,
        kind_revision: u64,
        record: &MemberRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        self.check_up("swap a member")?;
        self.wait_if_stalled();
        let bytes =
            serde_json::to_vec(record).map_or(0, |json| json.len()) + kind.len() + member.len();
        count(&self.member_writes);
        self.member_bytes
            .fetch_add(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::SeqCst);
        self.inner
            .swap_member(kind, member, expected, kind_revision, record)
    }
    fn append_audit(&self, kind: &str, entry: &AuditEntry) -> Result<(), StoreError> {
        self.check_up("append audit")?;
        self.wait_if_stalled();
        count(&self.audit_writes);
        self.inner.append_audit(kind, entry)
    }
    fn audit(&self, kind: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.check_up("read audit")?;
        self.inner.audit(kind)
    }
    fn import(&self, kind: &str, state: &KindState) -> Result<(), StoreError> {
        self.check_up("import")?;
        self.wait_if_stalled();
        self.inner.import(kind, state)
    }
    fn claim_finalizer(
        &self,
        kind: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<FinalizerClaim, StoreError> {
        let hook = self.on_claim.lock().take();
        if let Some(hook) = hook {
            hook();
        }
        self.check_up("claim the finalizer")?;
        self.inner.claim_finalizer(kind, holder, ttl)
    }
    fn release_finalizer(&self, kind: &str, holder: &str) -> Result<(), StoreError> {
        self.inner.release_finalizer(kind, holder)
    }
    fn remove_kind(&self, kind: &str) -> Result<(), StoreError> {
        self.check_up("remove a kind")?;
        self.wait_if_stalled();
        count(&self.kind_writes);
        self.inner.remove_kind(kind)
    }
    fn load_move(&self) -> Result<Option<Versioned<MoveRecord>>, StoreError> {
        self.check_up("load the move record")?;
        self.inner.load_move()
    }
    fn swap_move(
        &self,
        expected: Option<u64>,
        record: &MoveRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        self.check_up("swap the move record")?;
        self.wait_if_stalled();
        count(&self.kind_writes);
        self.inner.swap_move(expected, record)
    }
}
