//! Cluster finalization as a job: it runs off the caller's thread, and what was left
//! unfinished (a coordinator that failed or restarted, a store that went away) resumes by
//! itself through the coordinator's driver, with no operator asking again.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use layout_core::clock::ManualClock;
use layout_core::cluster::{
    AuditEvent, ClusterError, ClusterFinalizeOutcome, ClusterStore, Coordinator,
    CoordinatorOptions, EmbeddedStore, FinalizationCheckpoint, LocalLayout, MemberReport,
};
use layout_core::BoxError;
use layout_testkit::cluster::ObservedStore;
use parking_lot::Mutex;

use layout_tests::cluster::{KIND, NEW, OLD};

/// A safety bound on waits; never a timing assertion.
const BOUND: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(20);

fn options(id: &str) -> CoordinatorOptions {
    CoordinatorOptions::default()
        .with_coordinator_id(id)
        .with_clock(Arc::new(ManualClock::at_ms(1_767_225_600_000)))
}

/// The coordinator's own layout: it may fail, run a hook, or wait at a barrier.
#[derive(Default)]
struct Local {
    mlv: AtomicU32,
    fail: AtomicBool,
    gate: Mutex<Option<Arc<Barrier>>>,
    after: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Local {
    fn at(mlv: u32) -> Arc<Self> {
        let local = Self::default();
        local.mlv.store(mlv, Ordering::SeqCst);
        Arc::new(local)
    }
}

impl LocalLayout for Local {
    fn software_layout_version(&self) -> u32 {
        NEW
    }
    fn metadata_layout_version(&self) -> u32 {
        self.mlv.load(Ordering::SeqCst)
    }
    fn finalize_to(&self, version: u32, _client_id: &str) -> Result<u32, BoxError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("the disk is full".into());
        }
        let gate = self.gate.lock().clone();
        if let Some(gate) = gate {
            gate.wait();
            gate.wait();
        }
        self.mlv.store(version, Ordering::SeqCst);
        if let Some(after) = self.after.lock().take() {
            after();
        }
        Ok(version)
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {BOUND:?}");
        thread::sleep(TICK);
    }
}

fn checkpoint(store: &dyn ClusterStore) -> Option<FinalizationCheckpoint> {
    store
        .load_kind(KIND)
        .unwrap()
        .and_then(|r| r.value.finalization.map(|f| f.checkpoint))
}

#[test]
fn a_finalization_left_at_started_resumes_by_itself_when_its_coordinator_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster-state");
    let local = Local::at(OLD);
    local.fail.store(true, Ordering::SeqCst);
    {
        let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::open(&path).unwrap());
        let first =
            Coordinator::open(store, options("scm").with_local(KIND, local.clone())).unwrap();
        first
            .register(&MemberReport::new(KIND, "dn1", NEW, OLD))
            .unwrap();
        let err = first.finalize(KIND, Some(NEW), "ops").unwrap_err();
        assert!(matches!(err, ClusterError::LocalFinalize { .. }), "{err}");
    }
    // The cause is fixed, the coordinator restarts with its driver: nobody asks again.
    local.fail.store(false, Ordering::SeqCst);
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::open(&path).unwrap());
    assert_eq!(checkpoint(&*store), Some(FinalizationCheckpoint::Started));
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::clone(&store),
            options("scm").with_local(KIND, local.clone()),
        )
        .unwrap(),
    );
    let _driver = coordinator.spawn_driver(TICK).unwrap();
    wait_until("the coordinator finalized again", || {
        checkpoint(&*store) == Some(FinalizationCheckpoint::CoordinatorFinalized)
    });
    assert_eq!(local.metadata_layout_version(), NEW);
    // dn1 follows; the driver completes the finalization without a heartbeat to do it.
    let answer = coordinator
        .heartbeat(&MemberReport::new(KIND, "dn1", NEW, OLD))
        .unwrap();
    assert!(answer.instruction.is_some());
    coordinator
        .heartbeat(&MemberReport::new(KIND, "dn1", NEW, NEW))
        .unwrap();
    wait_until("the finalization complete", || {
        checkpoint(&*store) == Some(FinalizationCheckpoint::Complete)
    });
    let events: Vec<AuditEvent> = coordinator
        .status(KIND)
        .unwrap()
        .audit
        .into_iter()
        .map(|a| a.event)
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| **e == AuditEvent::FinalizationStarted)
            .count(),
        1,
        "{events:?}"
    );
}

#[test]
fn a_store_outage_in_the_middle_of_a_finalization_is_resumed_when_the_store_returns() {
    let store = Arc::new(ObservedStore::new(EmbeddedStore::in_memory()));
    let local = Local::at(OLD);
    {
        // The store goes away right after the coordinator's own layout finalized.
        let store = Arc::clone(&store);
        *local.after.lock() = Some(Box::new(move || store.set_down(true)));
    }
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::clone(&store) as Arc<dyn ClusterStore>,
            options("scm").with_local(KIND, local.clone()),
        )
        .unwrap(),
    );
    let _driver = coordinator.spawn_driver(TICK).unwrap();
    let err = coordinator.finalize(KIND, Some(NEW), "ops").unwrap_err();
    assert!(matches!(err, ClusterError::Store(_)), "{err}");
    store.set_down(false);
    wait_until("the finalization complete", || {
        checkpoint(&*store) == Some(FinalizationCheckpoint::Complete)
    });
    let status = coordinator.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, NEW);
}

#[test]
fn a_started_finalization_runs_off_the_callers_thread_and_a_second_one_is_in_progress() {
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let local = Local::at(OLD);
    let gate = Arc::new(Barrier::new(2));
    *local.gate.lock() = Some(Arc::clone(&gate));
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::clone(&store),
            options("scm").with_local(KIND, local.clone()),
        )
        .unwrap(),
    );
    coordinator
        .register(&MemberReport::new(KIND, "dn1", NEW, OLD))
        .unwrap();

    let job = coordinator.start_finalize(KIND, None, "ops").unwrap();
    assert_eq!(job.target(), NEW);
    gate.wait(); // the coordinator's own finalization is running, on the job's thread
    assert!(job.wait(Duration::ZERO).is_none());
    // Members are answered meanwhile, and a second request is told it is in progress.
    coordinator
        .heartbeat(&MemberReport::new(KIND, "dn1", NEW, OLD))
        .unwrap();
    let err = coordinator
        .start_finalize(KIND, None, "ops-again")
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::InProgress { holder, .. } if holder == "scm"),
        "{err}"
    );
    gate.wait();
    let outcome = job.wait(BOUND).expect("the job ends").unwrap();
    assert!(
        matches!(
            outcome,
            ClusterFinalizeOutcome::Finalized { target: NEW, ref pending_members, .. }
                if pending_members == &["dn1".to_owned()]
        ),
        "{outcome:?}"
    );
    // A blocked finalization is refused at once, before any thread starts.
    coordinator
        .register(&MemberReport::new(KIND, "dn2", NEW, NEW))
        .unwrap();
    let already = coordinator.start_finalize(KIND, None, "ops").unwrap();
    assert!(matches!(
        already.wait(BOUND),
        Some(Ok(ClusterFinalizeOutcome::AlreadyFinalized { .. }))
    ));
}

/// A coordinator's own layout that always fails, noting when it was asked.
#[derive(Default)]
struct FailingLocal {
    attempts: Mutex<Vec<Instant>>,
}

impl LocalLayout for FailingLocal {
    fn software_layout_version(&self) -> u32 {
        NEW
    }
    fn metadata_layout_version(&self) -> u32 {
        OLD
    }
    fn finalize_to(&self, _version: u32, _client_id: &str) -> Result<u32, BoxError> {
        self.attempts.lock().push(Instant::now());
        Err("the disk is full".into())
    }
}

#[test]
fn the_driver_backs_off_a_finalization_that_keeps_failing() {
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let local = Arc::new(FailingLocal::default());
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::clone(&store),
            options("scm").with_local(KIND, local.clone()),
        )
        .unwrap(),
    );
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap_err();
    let _driver = coordinator.spawn_driver(TICK).unwrap();
    wait_until("three retries by the driver", || {
        local.attempts.lock().len() >= 4
    });
    // Attempt 1 was the operator's; the driver's retries wait one interval, then twice as
    // long each time (lower bounds: a busy machine only makes the gaps longer).
    let attempts = local.attempts.lock().clone();
    for (retry, pair) in attempts[1..].windows(2).enumerate() {
        let at_least = TICK * 2_u32.pow(u32::try_from(retry).unwrap());
        assert!(
            pair[1] - pair[0] >= at_least,
            "retry {} came {:?} after the one before, less than {at_least:?}",
            retry + 2,
            pair[1] - pair[0]
        );
    }
    assert_eq!(checkpoint(&*store), Some(FinalizationCheckpoint::Started));
}

#[test]
fn a_checkpoint_whose_audit_entry_a_crash_lost_is_recorded_late_by_the_next_driver() {
    // A complete finalization, then its state as a coordinator killed between a checkpoint
    // write and its audit entry leaves it: `complete` stored, the last two entries lost.
    let first: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::clone(&first),
            options("scm").with_local(KIND, Local::at(OLD)),
        )
        .unwrap(),
    );
    coordinator
        .register(&MemberReport::new(KIND, "dn1", NEW, OLD))
        .unwrap();
    let driver = coordinator.spawn_driver(TICK).unwrap();
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();
    coordinator
        .heartbeat(&MemberReport::new(KIND, "dn1", NEW, NEW))
        .unwrap();
    wait_until("the finalization complete", || {
        checkpoint(&*first) == Some(FinalizationCheckpoint::Complete)
    });
    drop(driver);
    let mut state = first.load_state(KIND).unwrap().unwrap();
    let lost = ["members-finalized", "finalization-complete"];
    state.audit.retain(|e| !lost.contains(&e.event.as_str()));
    drop(coordinator);

    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    store.import(KIND, &state).unwrap();
    let restarted = Arc::new(
        Coordinator::open(
            Arc::clone(&store),
            options("scm").with_local(KIND, Local::at(NEW)),
        )
        .unwrap(),
    );
    let _driver = restarted.spawn_driver(TICK).unwrap();
    wait_until("the lost entries recorded", || {
        store
            .audit(KIND)
            .unwrap()
            .iter()
            .any(|e| e.event == AuditEvent::FinalizationComplete)
    });
    let audit = store.audit(KIND).unwrap();
    let events: Vec<&str> = audit.iter().map(|e| e.event.as_str()).collect();
    let started = events
        .iter()
        .position(|e| *e == "finalization-started")
        .unwrap();
    assert_eq!(
        events[started..],
        [
            "finalization-started",
            "coordinator-finalized",
            "members-finalized",
            "finalization-complete"
        ],
        "each checkpoint's entry once, in order"
    );
    let late = &audit[audit.len() - 2..];
    assert!(
        late.iter()
            .all(|e| e.version == Some(NEW) && e.detail.contains("recorded after a restart")),
        "{late:?}"
    );
    assert!(restarted.status(KIND).unwrap().audit.len() >= 4);
}
