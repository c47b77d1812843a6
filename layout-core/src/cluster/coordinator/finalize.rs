//! Cluster finalization: the checks, the claim, the checkpoints `started`, `coordinator
//! finalized`, `members finalized` and `complete`, and finalizations run on a thread of
//! their own ([`FinalizationJob`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::error::{Blocker, ClusterError};
use super::{Change, Coordinator, Pending};
use crate::cluster::state::{AuditEvent, ClusterFinalization, FinalizationCheckpoint, KindRecord};
use crate::cluster::store::{FinalizerClaim, StoreError};

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
        checkpoint: FinalizationCheckpoint,
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

impl Coordinator {
    /// Advances the checkpoints that need no work, reading the members from the store:
    /// `coordinator finalized` -> `members finalized` (when every member not excluded
    /// reached the target), then `members finalized` -> `complete`, each a compare-and-swap
    /// of the kind record. Any coordinator may do this: it decides nothing.
    pub(super) fn complete_if_ready(&self, kind: &str) -> Result<(), ClusterError> {
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
        if f.checkpoint == FinalizationCheckpoint::CoordinatorFinalized {
            let members = self.members(kind)?;
            let below: HashSet<String> = members
                .iter()
                .filter(|(_, m)| {
                    m.value.excluded.is_none() && m.value.metadata_layout_version < target
                })
                .map(|(id, _)| id.clone())
                .collect();
            let done = below.is_empty();
            *cache.pending.lock() = Some(Pending {
                target,
                below,
                checked_at: Instant::now(),
                listing: false,
            });
            if !done {
                return Ok(());
            }
            let moved = self.advance_checkpoint(
                kind,
                target,
                FinalizationCheckpoint::CoordinatorFinalized,
                FinalizationCheckpoint::MembersFinalized,
            )?;
            if moved {
                self.audit(
                    kind,
                    &actor,
                    AuditEvent::MembersFinalized,
                    None,
                    Some(target),
                    "every member not excluded reported the target",
                )?;
                fail::fail_point!("cluster::members_finalized");
            }
        }
        let completed = self.advance_checkpoint(
            kind,
            target,
            FinalizationCheckpoint::MembersFinalized,
            FinalizationCheckpoint::Complete,
        )?;
        if completed {
            self.audit(
                kind,
                &actor,
                AuditEvent::FinalizationComplete,
                None,
                Some(target),
                "",
            )?;
        }
        Ok(())
    }

    /// Moves the finalization to `target` from checkpoint `from` to `to`, one
    /// compare-and-swap of the kind record (reaching `Complete` also stamps the completion
    /// time); `false` when the stored finalization is not at `from` for `target` (another
    /// coordinator moved it).
    fn advance_checkpoint(
        &self,
        kind: &str,
        target: u32,
        from: FinalizationCheckpoint,
        to: FinalizationCheckpoint,
    ) -> Result<bool, ClusterError> {
        let now = self.now();
        self.update_kind::<_, ClusterError>(kind, |current| {
            let Some(current) = current else {
                return Ok(Change::Keep(false));
            };
            let mut next = current.clone();
            match &mut next.finalization {
                Some(f) if f.target == target && f.checkpoint == from => {
                    f.checkpoint = to;
                    if to == FinalizationCheckpoint::Complete {
                        f.completed_at_ms = Some(now);
                    }
                }
                _ => return Ok(Change::Keep(false)),
            }
            Ok(Change::Write(next, true))
        })
    }

    /// The members that keep a finalization to `target` from starting, read from the
    /// store.
    pub(super) fn blockers(&self, kind: &str, target: u32) -> Result<Vec<Blocker>, ClusterError> {
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
}

impl Coordinator {
    pub(super) fn resolve_target(
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

    /// Finalizes `kind` to `target` once the finalizer claim is held: one step after the
    /// other, each a transaction, in this order: take the fencing token, write checkpoint
    /// `started` (or withdraw it when members block), finalize the coordinator's own
    /// layout, write checkpoint `coordinator finalized`, then report.
    fn finalize_claimed(
        &self,
        kind: &str,
        target: u32,
        client_id: &str,
    ) -> Result<ClusterFinalizeOutcome, ClusterError> {
        let actor = self.options.coordinator_id.clone();
        // The fencing token: every checkpoint below is written only while it is ours.
        let generation = self.take_fencing_token(kind)?;

        // Checkpoint `started`.
        let started = self.write_started(kind, target, client_id, generation)?;
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
                self.withdraw_started(kind, target, generation, previous.as_ref())?;
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
                AuditEvent::FinalizationStarted,
                None,
                Some(target),
                format!("by coordinator {actor}"),
            )?;
        }

        fail::fail_point!("cluster::started");

        // The coordinator's own layout.
        self.finalize_own_layout(kind, target, client_id)?;

        // Checkpoint `coordinator finalized`: the cluster's version moves.
        let moved = self.write_coordinator_finalized(kind, target, generation)?;
        if moved {
            self.audit(
                kind,
                &actor,
                AuditEvent::CoordinatorFinalized,
                None,
                Some(target),
                "members are told to finalize",
            )?;
            fail::fail_point!("cluster::coordinator_finalized");
        }
        self.complete_if_ready(kind)?;

        self.finalized_outcome(kind, target, moved)
    }

    /// Takes the fencing token of `kind`: raises its claim generation, records this
    /// coordinator as the claimant, and returns the new generation.
    fn take_fencing_token(&self, kind: &str) -> Result<u64, ClusterError> {
        let actor = self.options.coordinator_id.clone();
        self.update_kind::<_, ClusterError>(kind, |current| {
            let mut next = current.ok_or_else(|| unknown_kind(kind))?.clone();
            next.claim_generation += 1;
            next.claimed_by = Some(actor.clone());
            let generation = next.claim_generation;
            Ok(Change::Write(next, generation))
        })
    }

    /// Writes checkpoint `started` for `target` (under the fencing token `generation`), or
    /// finds the cluster there already, or an unfinished finalization to resume.
    fn write_started(
        &self,
        kind: &str,
        target: u32,
        client_id: &str,
        generation: u64,
    ) -> Result<Started, ClusterError> {
        let actor = self.options.coordinator_id.clone();
        self.update_kind::<_, ClusterError>(kind, |current| {
            let current = current.ok_or_else(|| unknown_kind(kind))?;
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
                return Ok(Change::Keep(
                    if f.checkpoint == FinalizationCheckpoint::Started {
                        Started::Resumed
                    } else {
                        Started::Already(current.cluster_layout_version)
                    },
                ));
            }
            if target <= current.cluster_layout_version {
                return Ok(Change::Keep(Started::Already(
                    current.cluster_layout_version,
                )));
            }
            let mut next = current.clone();
            next.finalization = Some(ClusterFinalization {
                target,
                checkpoint: FinalizationCheckpoint::Started,
                client_id: client_id.to_owned(),
                coordinator_id: actor.clone(),
                started_at_ms: self.now(),
                completed_at_ms: None,
            });
            Ok(Change::Write(
                next,
                Started::New(current.finalization.clone()),
            ))
        })
    }

    /// Withdraws the checkpoint `started` this call wrote (members block the target):
    /// restores the finalization it replaced, if the kind is still there.
    fn withdraw_started(
        &self,
        kind: &str,
        target: u32,
        generation: u64,
        previous: Option<&ClusterFinalization>,
    ) -> Result<(), ClusterError> {
        self.update_kind::<_, ClusterError>(kind, |current| {
            let current = current.ok_or_else(|| unknown_kind(kind))?;
            self.check_generation(current, generation)?;
            match &current.finalization {
                Some(f)
                    if f.target == target && f.checkpoint == FinalizationCheckpoint::Started =>
                {
                    let mut next = current.clone();
                    next.finalization = previous.cloned();
                    Ok(Change::Write(next, ()))
                }
                _ => Ok(Change::Keep(())),
            }
        })
    }

    /// Finalizes the coordinator's own layout of `kind` (if it has one) to `target`, and
    /// records its new versions in its member record.
    fn finalize_own_layout(
        &self,
        kind: &str,
        target: u32,
        client_id: &str,
    ) -> Result<(), ClusterError> {
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
        Ok(())
    }

    /// Writes checkpoint `coordinator finalized` (the cluster's version moves to
    /// `target`); `false` when the finalization is no longer at `started` for `target`.
    fn write_coordinator_finalized(
        &self,
        kind: &str,
        target: u32,
        generation: u64,
    ) -> Result<bool, ClusterError> {
        self.update_kind::<_, ClusterError>(kind, |current| {
            let current = current.ok_or_else(|| unknown_kind(kind))?;
            self.check_generation(current, generation)?;
            let mut next = current.clone();
            match &mut next.finalization {
                Some(f)
                    if f.target == target && f.checkpoint == FinalizationCheckpoint::Started =>
                {
                    f.checkpoint = FinalizationCheckpoint::CoordinatorFinalized;
                }
                _ => return Ok(Change::Keep(false)),
            }
            next.cluster_layout_version = next.cluster_layout_version.max(target);
            Ok(Change::Write(next, true))
        })
    }

    /// What a finalization to `target` reports once the coordinator's part is done
    /// (`moved`: this call moved the cluster's version): the checkpoint reached and the
    /// members still below the target.
    fn finalized_outcome(
        &self,
        kind: &str,
        target: u32,
        moved: bool,
    ) -> Result<ClusterFinalizeOutcome, ClusterError> {
        let record = self.load_or_create(kind)?.value;
        if !moved {
            return Ok(ClusterFinalizeOutcome::AlreadyFinalized {
                cluster_layout_version: record.cluster_layout_version,
            });
        }
        let checkpoint = record
            .finalization
            .as_ref()
            .map_or(FinalizationCheckpoint::Complete, |f| f.checkpoint);
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
            let outcome = if f.checkpoint == FinalizationCheckpoint::Started {
                self.finalize(&kind, Some(f.target), &f.client_id)?
            } else {
                self.complete_if_ready(&kind)?;
                ClusterFinalizeOutcome::Finalized {
                    target: f.target,
                    checkpoint: self
                        .kind_record(&kind, true)?
                        .and_then(|r| r.value.finalization.map(|f| f.checkpoint))
                        .unwrap_or(FinalizationCheckpoint::Complete),
                    pending_members: Vec::new(),
                }
            };
            outcomes.push((kind, outcome));
        }
        Ok(outcomes)
    }
}

/// The error of a finalization whose kind record is gone.
fn unknown_kind(kind: &str) -> ClusterError {
    ClusterError::UnknownKind {
        kind: kind.to_owned(),
    }
}
