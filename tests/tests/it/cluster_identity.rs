//! Identity and fencing of the cluster layer: incarnations, coordinators in the
//! membership, the finalizer claim as a fencing token, and a heartbeat that changes
//! nothing writing nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use layout_core::clock::ManualClock;
use layout_core::cluster::{
    ClusterError, ClusterStore, Coordinator, CoordinatorOptions, EmbeddedStore,
    FinalizationCheckpoint, FinalizerClaim, HeartbeatError, LocalLayout, Member, MemberReport,
    MemberRole, Refusal,
};
use layout_core::BoxError;
use layout_testkit::cluster::ObservedStore;
use parking_lot::Mutex;

use layout_tests::cluster::{KIND, NEW, OLD};

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at_ms(1_767_225_600_000))
}

fn options(clock: &Arc<ManualClock>, id: &str) -> CoordinatorOptions {
    CoordinatorOptions::default()
        .with_coordinator_id(id)
        .with_clock(Arc::clone(clock) as _)
        .with_member_lease_ttl(Duration::from_secs(10))
}

fn report(id: &str, slv: u32, mlv: u32, incarnation: &str) -> MemberReport {
    MemberReport::new(KIND, id, slv, mlv).with_incarnation(incarnation)
}

fn refusal(result: Result<layout_core::cluster::CoordinatorAnswer, HeartbeatError>) -> Refusal {
    match result {
        Err(HeartbeatError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A coordinator's own layout, in memory; `finalize_to` may wait at a barrier.
struct Local {
    slv: u32,
    mlv: AtomicU64,
    gate: Mutex<Option<Arc<Barrier>>>,
}

impl Local {
    fn new(slv: u32, mlv: u32) -> Arc<Self> {
        Arc::new(Self {
            slv,
            mlv: AtomicU64::new(u64::from(mlv)),
            gate: Mutex::new(None),
        })
    }
}

impl LocalLayout for Local {
    fn software_layout_version(&self) -> u32 {
        self.slv
    }
    fn metadata_layout_version(&self) -> u32 {
        u32::try_from(self.mlv.load(Ordering::SeqCst)).unwrap()
    }
    fn finalize_to(&self, version: u32, _client_id: &str) -> Result<u32, BoxError> {
        let gate = self.gate.lock().clone();
        if let Some(gate) = gate {
            gate.wait(); // entered
            gate.wait(); // released
        }
        self.mlv.store(u64::from(version), Ordering::SeqCst);
        Ok(version)
    }
}

#[test]
fn a_second_live_incarnation_of_a_member_is_refused_naming_both_and_takes_over_once_the_first_is_dead(
) {
    let clock = clock();
    let coordinator =
        Coordinator::open(Arc::new(EmbeddedStore::in_memory()), options(&clock, "scm")).unwrap();
    coordinator
        .register(&report("dn1", NEW, OLD, "first"))
        .unwrap();

    let refused = refusal(coordinator.register(&report("dn1", NEW, OLD, "second")));
    assert_eq!(
        refused,
        Refusal::DuplicateIncarnation {
            kind: KIND.into(),
            member_id: "dn1".into(),
            live_incarnation: "first".into(),
            incarnation: "second".into(),
        }
    );
    let text = refused.to_string();
    assert!(text.contains("first") && text.contains("second"), "{text}");
    // The first one is untouched and keeps working.
    coordinator
        .heartbeat(&report("dn1", NEW, OLD, "first"))
        .unwrap();
    let status = coordinator.status(KIND).unwrap();
    assert_eq!(status.member("dn1").unwrap().incarnation, "first");
    assert!(coordinator
        .refused_members(KIND)
        .iter()
        .any(|m| m.member_id == "dn1"));

    // The first process dies (no heartbeat for a lease): a restart takes over, and the
    // old incarnation, should it come back, is told it was superseded.
    clock.advance(Duration::from_millis(10_001));
    coordinator
        .register(&report("dn1", NEW, OLD, "second"))
        .unwrap();
    let refused = refusal(coordinator.heartbeat(&report("dn1", NEW, OLD, "first")));
    assert!(
        matches!(&refused, Refusal::Superseded { current_incarnation, incarnation, .. }
            if current_incarnation == "second" && incarnation == "first"),
        "{refused:?}"
    );
}

#[test]
fn no_member_may_take_a_coordinators_id_and_no_coordinator_a_members() {
    let clock = clock();
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let scm = Coordinator::open(
        Arc::clone(&store),
        options(&clock, "scm").with_local(KIND, Local::new(NEW, OLD)),
    )
    .unwrap();
    let refused = refusal(scm.register(&report("scm", NEW, OLD, "x")));
    assert!(
        matches!(refused, Refusal::IdOfCoordinator { .. }),
        "{refused:?}"
    );

    // Another coordinator's id, as recorded in the membership, is refused too.
    let other = Coordinator::open(Arc::clone(&store), options(&clock, "scm-2")).unwrap();
    let refused = refusal(other.register(&report("scm", NEW, OLD, "x")));
    assert!(
        matches!(refused, Refusal::IdOfCoordinator { .. }),
        "{refused:?}"
    );

    // And a coordinator may not open under a member's id.
    other.register(&report("dn1", NEW, OLD, "x")).unwrap();
    let err = Coordinator::open(
        Arc::clone(&store),
        options(&clock, "dn1").with_local(KIND, Local::new(NEW, OLD)),
    )
    .unwrap_err();
    assert!(
        matches!(err, ClusterError::CoordinatorIdTaken { .. }),
        "{err}"
    );
}

#[test]
fn an_old_release_coordinator_on_the_same_store_blocks_finalization() {
    let clock = clock();
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let _old = Coordinator::open(
        Arc::clone(&store),
        options(&clock, "scm-old").with_local(KIND, Local::new(OLD, OLD)),
    )
    .unwrap();
    let new = Coordinator::open(
        Arc::clone(&store),
        options(&clock, "scm-new").with_local(KIND, Local::new(NEW, OLD)),
    )
    .unwrap();
    new.register(&report("dn1", NEW, OLD, "a")).unwrap();
    let status = new.status(KIND).unwrap();
    assert_eq!(
        status.member("scm-old").unwrap().role,
        MemberRole::Coordinator
    );

    let err = new.finalize(KIND, Some(NEW), "ops").unwrap_err();
    match err {
        ClusterError::Blocked { blockers, .. } => {
            assert_eq!(blockers.len(), 1, "{blockers:?}");
            assert_eq!(blockers[0].member_id, "scm-old");
            assert_eq!(blockers[0].software_layout_version, OLD);
        }
        other => panic!("expected Blocked, got {other}"),
    }
    assert_eq!(new.status(KIND).unwrap().cluster_layout_version, OLD);
}

#[test]
fn a_member_with_software_newer_than_the_coordinators_is_refused_naming_both_versions() {
    let clock = clock();
    let scm = Coordinator::open(
        Arc::new(EmbeddedStore::in_memory()),
        options(&clock, "scm").with_local(KIND, Local::new(OLD, OLD)),
    )
    .unwrap();
    let refused = refusal(scm.register(&report("dn1", NEW, OLD, "a")));
    assert_eq!(
        refused,
        Refusal::SoftwareAboveCoordinator {
            kind: KIND.into(),
            member_id: "dn1".into(),
            software_layout_version: NEW,
            coordinator_id: "scm".into(),
            coordinator_software_layout_version: OLD,
        }
    );
    assert!(scm.status(KIND).unwrap().member("dn1").is_none());
    assert_eq!(scm.refused_members(KIND)[0].member_id, "dn1");
}

#[test]
fn a_retried_finalize_on_the_same_coordinator_answers_in_progress_and_keeps_the_claim() {
    let clock = clock();
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let local = Local::new(NEW, OLD);
    let gate = Arc::new(Barrier::new(2));
    *local.gate.lock() = Some(Arc::clone(&gate));
    let scm = Arc::new(
        Coordinator::open(
            Arc::clone(&store),
            options(&clock, "scm").with_local(KIND, Arc::clone(&local) as _),
        )
        .unwrap(),
    );
    let first = {
        let scm = Arc::clone(&scm);
        thread::spawn(move || scm.finalize(KIND, Some(NEW), "ops"))
    };
    gate.wait(); // the first call is inside the coordinator's own finalization

    let err = scm.finalize(KIND, Some(NEW), "ops-retry").unwrap_err();
    assert!(
        matches!(&err, ClusterError::InProgress { holder, .. } if holder == "scm"),
        "{err}"
    );
    // The claim the first call holds is still held: another coordinator is refused.
    assert_eq!(
        store
            .claim_finalizer(KIND, "scm-2", Duration::from_secs(10))
            .unwrap(),
        FinalizerClaim::HeldBy {
            holder: "scm".into()
        }
    );
    gate.wait();
    first.join().unwrap().unwrap();
    let status = scm.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, NEW);
    assert_eq!(status.checkpoint(), Some(FinalizationCheckpoint::Complete));
}

#[test]
fn a_coordinator_whose_claim_was_taken_over_writes_no_checkpoint_again() {
    let clock = clock();
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let local = Local::new(NEW, OLD);
    let gate = Arc::new(Barrier::new(2));
    *local.gate.lock() = Some(Arc::clone(&gate));
    let first = Arc::new(
        Coordinator::open(
            Arc::clone(&store),
            options(&clock, "scm-1").with_local(KIND, Arc::clone(&local) as _),
        )
        .unwrap(),
    );
    let running = {
        let first = Arc::clone(&first);
        thread::spawn(move || first.finalize(KIND, Some(NEW), "ops"))
    };
    gate.wait(); // scm-1 wrote `started` and is finalizing its own layout

    // scm-1's claim lapses (its lease, on a shared store); scm-2 takes over and finishes.
    store.release_finalizer(KIND, "scm-1").unwrap();
    let second = Coordinator::open(Arc::clone(&store), options(&clock, "scm-2")).unwrap();
    second.finalize(KIND, Some(NEW), "ops").unwrap();
    let taken = store.load_kind(KIND).unwrap().unwrap().value;
    assert_eq!(taken.claimed_by.as_deref(), Some("scm-2"));
    assert_eq!(taken.cluster_layout_version, NEW);

    gate.wait();
    let err = running.join().unwrap().unwrap_err();
    match err {
        ClusterError::Fenced {
            coordinator_id,
            generation,
            current_generation,
            holder,
            ..
        } => {
            assert_eq!(coordinator_id, "scm-1");
            assert_eq!(holder, "scm-2");
            assert!(current_generation > generation);
        }
        other => panic!("expected Fenced, got {other}"),
    }
    // Nothing scm-1 did after losing its claim is in the record.
    assert_eq!(store.load_kind(KIND).unwrap().unwrap().value, taken);
}

#[test]
fn a_heartbeat_that_changes_nothing_writes_nothing_and_a_change_writes_one_member() {
    let clock = clock();
    let store = Arc::new(ObservedStore::new(EmbeddedStore::in_memory()));
    let coordinator = Coordinator::open(Arc::clone(&store) as _, options(&clock, "scm")).unwrap();
    for i in 0..50 {
        coordinator
            .register(&report(&format!("dn{i}"), NEW, OLD, "a"))
            .unwrap();
    }
    let before = store.writes();
    for _ in 0..10 {
        for i in 0..50 {
            coordinator
                .heartbeat(&report(&format!("dn{i}"), NEW, OLD, "a"))
                .unwrap();
        }
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(store.writes(), before, "500 heartbeats, no write");

    // A member that reports another version writes its own record, once, and nothing
    // else.
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();
    let other = store.load_member(KIND, "dn8").unwrap().unwrap();
    let dn3_before = store.load_member(KIND, "dn3").unwrap().unwrap();
    let writes = store.writes();
    coordinator
        .heartbeat(&report("dn3", NEW, NEW, "a"))
        .unwrap();
    assert_eq!(store.writes(), writes + 1);
    let dn3_after = store.load_member(KIND, "dn3").unwrap().unwrap();
    assert_ne!(dn3_before.revision, dn3_after.revision);
    assert_eq!(dn3_after.value.metadata_layout_version, NEW);
    assert_eq!(
        store.load_member(KIND, "dn8").unwrap().unwrap(),
        other,
        "others untouched"
    );
}

#[test]
fn a_member_that_registers_while_finalization_starts_is_seen_and_the_start_is_withdrawn() {
    let clock = clock();
    let store = Arc::new(ObservedStore::new(EmbeddedStore::in_memory()));
    let coordinator =
        Arc::new(Coordinator::open(Arc::clone(&store) as _, options(&clock, "scm")).unwrap());
    coordinator.register(&report("dn1", NEW, OLD, "a")).unwrap();
    // Between the coordinator's first look at the members and `started`, an old member
    // registers.
    let late = Arc::clone(&coordinator);
    store.on_next_claim(move || {
        late.register(&report("dn-old", OLD, OLD, "b")).unwrap();
    });
    let err = coordinator.finalize(KIND, Some(NEW), "ops").unwrap_err();
    match err {
        ClusterError::Blocked { blockers, .. } => {
            assert_eq!(blockers.len(), 1, "{blockers:?}");
            assert_eq!(blockers[0].member_id, "dn-old");
        }
        other => panic!("expected Blocked, got {other}"),
    }
    let record = store.load_kind(KIND).unwrap().unwrap().value;
    assert!(record.finalization_in_progress().is_none(), "{record:?}");
    assert_eq!(record.cluster_layout_version, OLD);
    // Once the old member is upgraded, the finalization goes through.
    coordinator
        .register(&report("dn-old", NEW, OLD, "b"))
        .unwrap();
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();
}

#[test]
fn a_restarted_coordinator_refuses_exclusions_until_it_has_heard_from_members_for_a_lease() {
    let clock = clock();
    let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let first = Coordinator::open(Arc::clone(&store), options(&clock, "scm")).unwrap();
    first.register(&report("dn1", NEW, OLD, "a")).unwrap();
    drop(first);
    let restarted = Coordinator::open(Arc::clone(&store), options(&clock, "scm")).unwrap();
    // A member that does not exist is named as such, whatever liveness would say.
    let err = restarted.exclude(KIND, "dn9", "typo", "ops").unwrap_err();
    assert!(matches!(err, ClusterError::UnknownMember { .. }), "{err}");
    let err = restarted
        .exclude(KIND, "dn1", "looks dead", "ops")
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::LivenessNotKnownYet {
                retry_in_ms: 10_000,
                ..
            }
        ),
        "{err}"
    );
    // dn1 is alive after all: it heartbeats, and exclusion is refused as for any live one.
    restarted.heartbeat(&report("dn1", NEW, OLD, "a")).unwrap();
    clock.advance(Duration::from_secs(10));
    restarted.heartbeat(&report("dn1", NEW, OLD, "a")).unwrap();
    let err = restarted
        .exclude(KIND, "dn1", "looks dead", "ops")
        .unwrap_err();
    assert!(matches!(err, ClusterError::MemberIsLive { .. }), "{err}");
    clock.advance(Duration::from_millis(10_001));
    restarted
        .exclude(KIND, "dn1", "dead for good", "ops")
        .unwrap();
}

#[test]
fn a_restarted_member_waits_out_its_killed_process_and_then_registers() {
    let clock = clock();
    let coordinator = Arc::new(
        Coordinator::open(Arc::new(EmbeddedStore::in_memory()), options(&clock, "scm")).unwrap(),
    );
    let mut killed = Member::new(KIND, "dn1", Local::new(NEW, OLD));
    killed.register(&*coordinator).unwrap();

    // The next process of dn1, while the killed one is still live to the coordinator: it
    // waits, and after its wait it is refused as before.
    let mut restarted = Member::new(KIND, "dn1", Local::new(NEW, OLD));
    let err = restarted
        .register_waiting(
            &*coordinator,
            Duration::from_millis(50),
            Duration::from_millis(5),
        )
        .unwrap_err();
    assert!(
        matches!(err.refusal(), Some(Refusal::DuplicateIncarnation { .. })),
        "{err}"
    );
    // The killed process's lease lapses while the next one waits: it registers.
    let lapse = {
        let clock = Arc::clone(&clock);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            clock.advance(Duration::from_secs(11));
        })
    };
    restarted
        .register_waiting(
            &*coordinator,
            Duration::from_secs(30),
            Duration::from_millis(5),
        )
        .unwrap();
    lapse.join().unwrap();
    let status = coordinator.status(KIND).unwrap();
    assert_eq!(
        status.member("dn1").unwrap().incarnation,
        restarted.incarnation()
    );
}
