//! The member side: a component that registers with the coordinator, heartbeats,
//! fences itself while the coordinator refuses it ([`MemberFence`]), and finalizes its own
//! layout, in the background, when told to.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex, RwLock};

use super::link::CoordinatorLink;
use super::local::LocalLayout;
use super::protocol::{CoordinatorAnswer, HeartbeatError, Instruction, MemberReport, Refusal};
use crate::error::BoxError;

/// What a member's registration or heartbeat did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStep {
    /// The coordinator's answer to this step's report.
    pub answer: CoordinatorAnswer,
    /// The target of the local finalization running in the background, if one is (this
    /// step started it, or an earlier one did and it has not finished yet).
    pub finalizing: Option<u32>,
    /// The MLV a background local finalization reached, reported once, by the first step
    /// after it finished (that step's report already carried the new MLV).
    pub finalized_to: Option<u32>,
}

/// A member's registration or heartbeat failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    /// The coordinator refused or could not answer.
    #[error(transparent)]
    Heartbeat(#[from] HeartbeatError),
    /// Told to finalize, the member's own finalization failed (reported once, by the step
    /// after it failed). It stays pre-finalized, and the next instruction to finalize
    /// starts it again.
    #[error(
        "{kind} member {member_id}: finalizing the local layout to version {version}, as the \
         coordinator instructed, failed: {source}"
    )]
    LocalFinalize {
        /// The component kind.
        kind: String,
        /// The member.
        member_id: String,
        /// The version it was told to finalize to.
        version: u32,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl MemberError {
    /// The coordinator's refusal, if that is what this is.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Heartbeat(HeartbeatError::Refused(refusal)) => Some(refusal),
            _ => None,
        }
    }
}

/// Why a member is fenced: the coordinator's refusal, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceCause {
    /// The refusal that fenced the member (the latest one, while it stays fenced).
    pub refusal: Refusal,
    /// When the member was fenced (the first refusal of this cause).
    pub since: SystemTime,
}

#[derive(Debug, Default)]
struct FenceInner {
    fenced: AtomicBool,
    cause: RwLock<Option<FenceCause>>,
}

/// The member's own fence: closed while the coordinator refuses the member, open
/// otherwise. A component checks it before every write
/// ([`is_fenced`](Self::is_fenced) is one atomic load) and refuses the write while it is
/// closed, naming the [`cause`](Self::cause).
///
/// [`Member`] keeps it up to date at every registration and heartbeat:
///
/// | the coordinator | the fence |
/// |---|---|
/// | accepts the report | opens (logged at info level when it was closed: "recovered") |
/// | refuses it ([`HeartbeatError::Refused`]): an old SLV after finalization, an excluded member, a duplicate incarnation, a member ahead of the cluster, ... | closes, with the refusal as the cause (logged once at error level, and again when the cause changes) |
/// | does not know the member ([`Refusal::NotRegistered`]) | unchanged: the member registers again, and that answer decides |
/// | cannot be reached or cannot decide ([`HeartbeatError::Unavailable`]), refuses the link's credentials or request ([`HeartbeatError::Unauthorized`], [`HeartbeatError::BadRequest`]) | unchanged: an unreachable coordinator does not fence a member (a member keeps serving while the coordinator or its store is down); only a decision of the coordinator does |
///
/// A new member's fence is open. Clones share the same fence.
#[derive(Debug, Clone, Default)]
pub struct MemberFence {
    inner: Arc<FenceInner>,
}

impl MemberFence {
    /// Whether the member is fenced now (one atomic load: cheap enough for every write).
    pub fn is_fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Acquire)
    }

    /// Why the member is fenced, if it is.
    pub fn cause(&self) -> Option<FenceCause> {
        if !self.is_fenced() {
            return None;
        }
        self.inner.cause.read().clone()
    }

    /// `Err(cause)` while fenced: the check a write makes.
    pub fn check(&self) -> Result<(), FenceCause> {
        match self.cause() {
            Some(cause) => Err(cause),
            None => Ok(()),
        }
    }

    /// Closes the fence for `refusal`; logs when the member was open or the cause changed.
    fn close(&self, kind: &str, member_id: &str, refusal: &Refusal) {
        let mut cause = self.inner.cause.write();
        let same = cause.as_ref().is_some_and(|c| &c.refusal == refusal);
        if same && self.is_fenced() {
            return;
        }
        tracing::error!(
            kind,
            member = member_id,
            refusal = %refusal,
            "the coordinator refused this member: it is fenced, writes are refused until the coordinator accepts it again"
        );
        *cause = Some(FenceCause {
            refusal: refusal.clone(),
            since: SystemTime::now(),
        });
        self.inner.fenced.store(true, Ordering::Release);
    }

    /// Opens the fence; logs when it was closed.
    fn open(&self, kind: &str, member_id: &str) {
        if !self.is_fenced() {
            return;
        }
        let mut cause = self.inner.cause.write();
        self.inner.fenced.store(false, Ordering::Release);
        if let Some(was) = cause.take() {
            tracing::info!(
                kind,
                member = member_id,
                was = %was.refusal,
                "the coordinator accepts this member again: it is no longer fenced, writes are accepted"
            );
        }
    }
}

/// The background finalization of a member: at most one at a time.
#[derive(Default)]
struct FinalizeJob {
    state: Mutex<JobState>,
    done: Condvar,
}

#[derive(Default)]
struct JobState {
    /// The target of the running finalization.
    running: Option<u32>,
    /// The last finished one, not reported yet: its target and outcome.
    finished: Option<(u32, Result<u32, BoxError>)>,
}

/// The member side of the protocol, transport-free: it builds [`MemberReport`]s from its
/// [`LocalLayout`], sends them through a [`CoordinatorLink`], keeps its [`MemberFence`]
/// up to date with the answer, and follows the answer's instruction.
///
/// The caller owns the schedule: call [`register`](Self::register) at start-up and
/// [`heartbeat`](Self::heartbeat) periodically (the coordinator's member lease TTL must
/// be a few heartbeat intervals).
///
/// **Finalization runs off the caller's thread.** Told to finalize to a version above its
/// MLV, the member starts its local finalization (its `OnFinalize` actions, however long
/// they take) on a thread of its own, one at a time, and the step returns at once with
/// [`MemberStep::finalizing`]: heartbeats keep flowing during a long migration, so the
/// member stays live (and cannot be excluded). The first step after it finished reports
/// it ([`MemberStep::finalized_to`], its report already carrying the new MLV), or its
/// error ([`MemberError::LocalFinalize`], once; the next instruction starts it again).
/// A caller that needs the result at once waits with
/// [`wait_for_finalization`](Self::wait_for_finalization).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use layout_core::cluster::{Coordinator, CoordinatorOptions, EmbeddedStore, Member};
/// use layout_core::{LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
///
/// #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
/// enum DnFeature {
///     #[layout(version = 0, description = "Initial layout")]
///     Initial,
///     #[layout(version = 1, description = "Schema v2 containers")]
///     SchemaV2,
/// }
///
/// let coordinator = Arc::new(Coordinator::open(
///     Arc::new(EmbeddedStore::in_memory()),
///     CoordinatorOptions::default(),
/// )?);
/// let open = || LayoutVersionManager::<DnFeature>::open(
///     MemoryStorage::new(),
///     ManagerOptions::default().with_start_intent(StartIntent::Init).with_initial_layout_version(0),
/// );
/// let mut dn1 = Member::new("datanode", "dn1", Arc::new(open()?));
/// let mut dn2 = Member::new("datanode", "dn2", Arc::new(open()?));
/// dn1.register(&coordinator)?;
/// dn2.register(&coordinator)?;
///
/// coordinator.finalize("datanode", None, "ops")?;
/// for dn in [&mut dn1, &mut dn2] {
///     // Told to finalize: it starts in the background.
///     assert_eq!(dn.heartbeat(&coordinator)?.finalizing, Some(1));
///     assert!(dn.wait_for_finalization(Duration::from_secs(10)));
///     // The next heartbeat reports it.
///     assert_eq!(dn.heartbeat(&coordinator)?.finalized_to, Some(1));
///     assert!(!dn.fence().is_fenced());
/// }
/// assert!(coordinator.status("datanode")?.is_complete());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Member {
    kind: String,
    id: String,
    layout: Arc<dyn LocalLayout>,
    incarnation: String,
    registered: bool,
    fence: MemberFence,
    job: Arc<FinalizeJob>,
}

impl Member {
    /// Member `member_id` of `kind`, whose own layout is `layout`, with a new random
    /// incarnation (one per process start: make one `Member` per process). Its fence is
    /// open.
    pub fn new(
        kind: impl Into<String>,
        member_id: impl Into<String>,
        layout: Arc<dyn LocalLayout>,
    ) -> Self {
        Self {
            kind: kind.into(),
            id: member_id.into(),
            layout,
            incarnation: crate::state::DataId::random().to_string(),
            registered: false,
            fence: MemberFence::default(),
            job: Arc::default(),
        }
    }

    /// This process's incarnation, sent in every report.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// The component kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The member's id.
    pub fn member_id(&self) -> &str {
        &self.id
    }

    /// Whether the last registration was accepted.
    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// The member's fence (a handle sharing it: give it to the write path).
    pub fn fence(&self) -> MemberFence {
        self.fence.clone()
    }

    /// The target of the local finalization running in the background, if one is.
    pub fn finalizing(&self) -> Option<u32> {
        self.job.state.lock().running
    }

    /// Waits up to `timeout` for the background local finalization to finish; `true`
    /// when none is running (any more). Its outcome is reported by the next step.
    pub fn wait_for_finalization(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.job.state.lock();
        while state.running.is_some() {
            if self.job.done.wait_until(&mut state, deadline).timed_out() {
                return state.running.is_none();
            }
        }
        true
    }

    /// What the member reports now.
    pub fn report(&self) -> MemberReport {
        MemberReport::new(
            &self.kind,
            &self.id,
            self.layout.software_layout_version(),
            self.layout.metadata_layout_version(),
        )
        .with_incarnation(&self.incarnation)
    }

    /// Registers (at start-up), updates the fence, then follows the answer.
    pub fn register(&mut self, link: &dyn CoordinatorLink) -> Result<MemberStep, MemberError> {
        self.registered = false;
        let finished = self.job.state.lock().finished.take();
        match link.register(&self.report()) {
            Ok(answer) => {
                self.registered = true;
                self.fence.open(&self.kind, &self.id);
                self.follow(answer, finished)
            }
            Err(e) => Err(self.failed(e, finished)),
        }
    }

    /// [`register`](Self::register), waiting out an earlier process of this member: a
    /// process restarted after a kill (not a clean [`leave`](Self::leave)) is refused
    /// ([`Refusal::DuplicateIncarnation`]) while the coordinator still takes the killed
    /// one for live, until its member lease lapses. Tries again every `retry_every` for
    /// up to `wait`, logging once why; any other answer, or the refusal after `wait`, is
    /// returned as is.
    pub fn register_waiting(
        &mut self,
        link: &dyn CoordinatorLink,
        wait: Duration,
        retry_every: Duration,
    ) -> Result<MemberStep, MemberError> {
        let deadline = Instant::now() + wait;
        let mut warned = false;
        loop {
            match self.register(link) {
                Err(e)
                    if matches!(e.refusal(), Some(Refusal::DuplicateIncarnation { .. }))
                        && Instant::now() < deadline =>
                {
                    if !warned {
                        tracing::warn!(kind = %self.kind, member = %self.id, error = %e, "an earlier process of this member is still live to the coordinator; waiting for its lease to lapse");
                        warned = true;
                    }
                    std::thread::sleep(retry_every);
                }
                other => return other,
            }
        }
    }

    /// Sends a heartbeat (registering first when not registered, or when the coordinator
    /// lost the registration), updates the fence, then follows the answer.
    pub fn heartbeat(&mut self, link: &dyn CoordinatorLink) -> Result<MemberStep, MemberError> {
        if !self.registered {
            return self.register(link);
        }
        let finished = self.job.state.lock().finished.take();
        match link.heartbeat(&self.report()) {
            Ok(answer) => {
                self.fence.open(&self.kind, &self.id);
                self.follow(answer, finished)
            }
            Err(HeartbeatError::Refused(Refusal::NotRegistered { .. })) => {
                self.put_back(finished);
                self.register(link)
            }
            Err(e) => {
                if matches!(e, HeartbeatError::Refused(_)) {
                    self.registered = false;
                }
                Err(self.failed(e, finished))
            }
        }
    }

    /// Says this process is stopping (call it on a clean shutdown, after the last
    /// heartbeat): the coordinator no longer takes it for live, so the member's next
    /// process is accepted at once. Without it, a restart within the member lease is
    /// refused ([`Refusal::DuplicateIncarnation`])
    /// until the lease lapses.
    pub fn leave(&mut self, link: &dyn CoordinatorLink) -> Result<(), MemberError> {
        self.registered = false;
        link.leave(&self.report())?;
        Ok(())
    }

    /// A step that got no answer: a refusal closes the fence; the finished job, not
    /// reported, waits for the next step.
    fn failed(
        &self,
        e: HeartbeatError,
        finished: Option<(u32, Result<u32, BoxError>)>,
    ) -> MemberError {
        self.put_back(finished);
        if let HeartbeatError::Refused(refusal) = &e {
            if !matches!(refusal, Refusal::NotRegistered { .. }) {
                self.fence.close(&self.kind, &self.id, refusal);
            }
        }
        e.into()
    }

    fn put_back(&self, finished: Option<(u32, Result<u32, BoxError>)>) {
        if let Some(finished) = finished {
            let mut state = self.job.state.lock();
            if state.finished.is_none() {
                state.finished = Some(finished);
            }
        }
    }

    fn follow(
        &mut self,
        answer: CoordinatorAnswer,
        finished: Option<(u32, Result<u32, BoxError>)>,
    ) -> Result<MemberStep, MemberError> {
        let finalized_to = match finished {
            None => None,
            Some((_, Ok(mlv))) => {
                tracing::info!(kind = %self.kind, member = %self.id, mlv, "finalized as instructed by the coordinator");
                Some(mlv)
            }
            Some((version, Err(source))) => {
                // Reported once; the next instruction starts it again.
                return Err(MemberError::LocalFinalize {
                    kind: self.kind.clone(),
                    member_id: self.id.clone(),
                    version,
                    source,
                });
            }
        };
        let mut finalizing = self.finalizing();
        if let Some(Instruction::FinalizeTo { version }) = answer.instruction {
            if finalizing.is_none() && self.layout.metadata_layout_version() < version {
                let client = format!("cluster:{}", answer.coordinator_id);
                self.start_finalization(version, client)?;
                finalizing = Some(version);
            }
        }
        Ok(MemberStep {
            answer,
            finalizing,
            finalized_to,
        })
    }

    /// Starts the local finalization to `version` on a thread of its own.
    fn start_finalization(&self, version: u32, client: String) -> Result<(), MemberError> {
        tracing::info!(kind = %self.kind, member = %self.id, version, "finalizing as instructed by the coordinator, in the background");
        self.job.state.lock().running = Some(version);
        let job = Arc::clone(&self.job);
        let layout = Arc::clone(&self.layout);
        let spawned = std::thread::Builder::new()
            .name(format!("member-finalize-{}", self.id))
            .spawn(move || {
                let result =
                    catch_unwind(AssertUnwindSafe(|| layout.finalize_to(version, &client)))
                        .unwrap_or_else(|panic| {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "a panic".to_owned());
                            Err(format!("the local finalization panicked: {what}").into())
                        });
                let mut state = job.state.lock();
                state.running = None;
                state.finished = Some((version, result));
                job.done.notify_all();
            });
        if let Err(e) = spawned {
            self.job.state.lock().running = None;
            return Err(MemberError::LocalFinalize {
                kind: self.kind.clone(),
                member_id: self.id.clone(),
                version,
                source: Box::new(e),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("kind", &self.kind)
            .field("member_id", &self.id)
            .field("registered", &self.registered)
            .field("fenced", &self.fence.is_fenced())
            .field("finalizing", &self.finalizing())
            .finish_non_exhaustive()
    }
}
