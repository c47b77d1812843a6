//! The coordinator's background driver ([`CoordinatorDriver`]): advances unfinished
//! finalizations and notes lost checkpoints.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::error::ClusterError;
use super::Coordinator;
use crate::cluster::state::{AuditEvent, FinalizationCheckpoint};

/// The longest a coordinator's driver waits before it tries again to advance a
/// finalization that keeps failing (see [`Coordinator::spawn_driver`]).
pub const MAX_DRIVER_BACKOFF: Duration = Duration::from_secs(60);

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
                if f.checkpoint != FinalizationCheckpoint::Started
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
            let result = if f.checkpoint == FinalizationCheckpoint::Started {
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
        checkpoint: FinalizationCheckpoint,
    ) -> Result<(), ClusterError> {
        let cache = self.cache(kind);
        let _advancing = cache.advancing.lock();
        let audit = self.store.audit(kind)?;
        let Some(started) = audit
            .iter()
            .rposition(|e| e.event == AuditEvent::FinalizationStarted && e.version == Some(target))
        else {
            return Ok(());
        };
        let since = &audit[started..];
        let expected = [
            (
                FinalizationCheckpoint::CoordinatorFinalized,
                AuditEvent::CoordinatorFinalized,
            ),
            (
                FinalizationCheckpoint::MembersFinalized,
                AuditEvent::MembersFinalized,
            ),
            (
                FinalizationCheckpoint::Complete,
                AuditEvent::FinalizationComplete,
            ),
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
            tracing::warn!(kind = %kind, target, event = %event, "the audit entry of a stored checkpoint is missing (the coordinator stopped between the two writes); recording it now");
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
}
