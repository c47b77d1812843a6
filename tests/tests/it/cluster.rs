//! Cluster-wide finalization on the embedded store: the protocol's rules in process, a
//! store move, and the scenarios of `layout_tests::cluster` with five member processes.

use std::sync::Arc;
use std::time::Duration;

use layout_core::clock::ManualClock;
use layout_core::cluster::{
    AuditEntry, AuditEvent, ClusterError, ClusterFinalizeOutcome, ClusterStore, Coordinator,
    CoordinatorOptions, EmbeddedStore, FinalizationCheckpoint, FinalizerClaim, HeartbeatError,
    Instruction, KindState, Member, MemberReport, MovePhase, MovingStore, Refusal,
};
use layout_core::{LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
use layout_testkit::cluster::CoordinationOptions;
use layout_testkit::MiniCluster;

use layout_tests::cluster::{self as common, DnFeature, KIND, NEW, OLD};

/// How long a background local finalization may take in these tests.
const BOUND: Duration = Duration::from_secs(30);

fn report(id: &str, slv: u32, mlv: u32) -> MemberReport {
    MemberReport::new(KIND, id, slv, mlv)
}

fn memory_coordinator() -> Coordinator {
    Coordinator::open(
        Arc::new(EmbeddedStore::in_memory()),
        CoordinatorOptions::default(),
    )
    .unwrap()
}

fn refusal(result: Result<layout_core::cluster::CoordinatorAnswer, HeartbeatError>) -> Refusal {
    match result {
        Err(HeartbeatError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn layout(slv: u32) -> Arc<LayoutVersionManager<DnFeature>> {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(OLD)
        .with_software_layout_version(slv);
    Arc::new(LayoutVersionManager::open(MemoryStorage::new(), opts).unwrap())
}

#[test]
fn an_older_member_is_accepted_while_pre_finalized_and_refused_after() {
    let coordinator = memory_coordinator();
    coordinator.register(&report("dn1", NEW, OLD)).unwrap();
    // Older software that covers the cluster's version: a rolling upgrade in progress.
    let answer = coordinator.register(&report("dn2", OLD, OLD)).unwrap();
    assert_eq!(
        (answer.cluster_layout_version, answer.instruction),
        (OLD, None)
    );
    coordinator.register(&report("dn2", NEW, OLD)).unwrap();
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();

    let refused = refusal(coordinator.register(&report("dn3", OLD, OLD)));
    assert_eq!(
        refused,
        Refusal::SoftwareBelowCluster {
            kind: KIND.into(),
            member_id: "dn3".into(),
            software_layout_version: OLD,
            cluster_layout_version: NEW,
        }
    );
    // A known member coming back on the old release: refused too.
    assert!(matches!(
        refusal(coordinator.register(&report("dn1", OLD, OLD))),
        Refusal::SoftwareBelowCluster { .. }
    ));
    // A late member on the new release is told to finalize as it registers.
    let answer = coordinator.register(&report("dn4", NEW, OLD)).unwrap();
    assert_eq!(
        answer.instruction,
        Some(Instruction::FinalizeTo { version: NEW })
    );
}

#[test]
fn finalization_is_refused_listing_every_blocker_live_or_not() {
    let clock = Arc::new(ManualClock::at_ms(1_000));
    let store = Arc::new(EmbeddedStore::in_memory());
    let coordinator = Coordinator::open(
        store,
        CoordinatorOptions::default()
            .with_clock(clock.clone())
            .with_member_lease_ttl(Duration::from_secs(2)),
    )
    .unwrap();
    coordinator.register(&report("dn1", NEW, OLD)).unwrap();
    coordinator.register(&report("dn2", OLD, OLD)).unwrap();
    clock.advance(Duration::from_secs(5)); // dn2's lease lapses
    coordinator.register(&report("dn3", OLD, OLD)).unwrap();

    let err = coordinator.finalize(KIND, None, "ops").unwrap_err();
    let message = err.to_string();
    match err {
        ClusterError::Blocked {
            target, blockers, ..
        } => {
            assert_eq!(target, NEW);
            let named: Vec<_> = blockers
                .iter()
                .map(|b| (b.member_id.as_str(), b.live))
                .collect();
            assert_eq!(named, [("dn2", false), ("dn3", true)]);
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert!(
        message.contains(
            "dn2 (software layout version 1, not live), dn3 (software layout version 1, live)"
        ),
        "{message}"
    );
    assert_eq!(
        coordinator.dry_run(KIND, None).unwrap().1.len(),
        2,
        "the dry run sees the same blockers"
    );
    assert_eq!(
        coordinator.status(KIND).unwrap().cluster_layout_version,
        OLD
    );
}

#[test]
fn checkpoints_advance_as_members_report_and_a_failed_coordinator_step_resumes() {
    struct Failing {
        lvm: Arc<LayoutVersionManager<DnFeature>>,
        fail: std::sync::atomic::AtomicBool,
    }
    impl layout_core::cluster::LocalLayout for Failing {
        fn software_layout_version(&self) -> u32 {
            self.lvm.software_layout_version()
        }
        fn metadata_layout_version(&self) -> u32 {
            self.lvm.metadata_layout_version()
        }
        fn finalize_to(&self, v: u32, c: &str) -> Result<u32, layout_core::BoxError> {
            if self.fail.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Err("disk full".into());
            }
            layout_core::cluster::LocalLayout::finalize_to(&*self.lvm, v, c)
        }
    }
    let local = Arc::new(Failing {
        lvm: layout(NEW),
        fail: true.into(),
    });
    let coordinator = Coordinator::open(
        Arc::new(EmbeddedStore::in_memory()),
        CoordinatorOptions::default().with_local(KIND, local.clone()),
    )
    .unwrap();
    let mut dn1 = Member::new(KIND, "dn1", layout(NEW));
    let mut dn2 = Member::new(KIND, "dn2", layout(NEW));
    dn1.register(&coordinator).unwrap();
    dn2.register(&coordinator).unwrap();

    let err = coordinator.finalize(KIND, None, "ops").unwrap_err();
    assert!(
        matches!(err, ClusterError::LocalFinalize { target: NEW, .. }),
        "{err}"
    );
    let status = coordinator.status(KIND).unwrap();
    assert_eq!(status.checkpoint(), Some(FinalizationCheckpoint::Started));
    assert_eq!(status.cluster_layout_version, OLD);
    // While started, the target is fenced: an old member cannot slip in.
    assert!(matches!(
        refusal(coordinator.register(&report("dn9", OLD, OLD))),
        Refusal::SoftwareBelowFinalizationTarget { target: NEW, .. }
    ));
    // Members are not told to finalize before the coordinator has.
    assert_eq!(dn1.heartbeat(&coordinator).unwrap().finalized_to, None);
    // Another target is refused while this one is unfinished.
    assert!(matches!(
        coordinator.finalize(KIND, Some(OLD), "ops"),
        Err(ClusterError::DifferentTargetInProgress {
            in_progress: NEW,
            ..
        })
    ));

    // Finalizing again resumes.
    let outcome = coordinator.finalize(KIND, None, "ops").unwrap();
    assert_eq!(
        outcome,
        ClusterFinalizeOutcome::Finalized {
            target: NEW,
            checkpoint: FinalizationCheckpoint::CoordinatorFinalized,
            pending_members: vec!["dn1".into(), "dn2".into()],
        }
    );
    // Told to finalize, a member does it in the background; the next step reports it.
    assert_eq!(dn1.heartbeat(&coordinator).unwrap().finalizing, Some(NEW));
    assert!(dn1.wait_for_finalization(BOUND));
    assert_eq!(dn1.heartbeat(&coordinator).unwrap().finalized_to, Some(NEW));
    assert_eq!(
        coordinator.status(KIND).unwrap().checkpoint(),
        Some(FinalizationCheckpoint::CoordinatorFinalized)
    );
    assert_eq!(dn2.heartbeat(&coordinator).unwrap().finalizing, Some(NEW));
    assert!(dn2.wait_for_finalization(BOUND));
    let step = dn2.heartbeat(&coordinator).unwrap();
    assert_eq!(step.finalized_to, Some(NEW));
    assert_eq!(step.finalizing, None);
    assert_eq!(step.answer.instruction, None);
    let status = coordinator.status(KIND).unwrap();
    assert_eq!(status.checkpoint(), Some(FinalizationCheckpoint::Complete));
    assert!(status.finalization.unwrap().completed_at_ms.is_some());
    assert_eq!(
        coordinator.finalize(KIND, None, "ops").unwrap(),
        ClusterFinalizeOutcome::AlreadyFinalized {
            cluster_layout_version: NEW
        }
    );
}

#[test]
fn a_member_whose_disk_is_ahead_of_the_cluster_or_whose_report_is_impossible_is_refused() {
    let coordinator = memory_coordinator();
    coordinator.register(&report("dn1", NEW, OLD)).unwrap();
    // A fresh install of the new release not pinned to the cluster's version.
    let refused = refusal(coordinator.register(&report("dn2", NEW, NEW)));
    assert!(matches!(refused, Refusal::MetadataAheadOfCluster { .. }));
    assert!(
        refused
            .to_string()
            .contains("with_initial_layout_version(1)"),
        "{refused}"
    );
    assert!(matches!(
        refusal(coordinator.register(&report("dn3", OLD, NEW))),
        Refusal::InvalidReport { .. }
    ));
    assert!(matches!(
        refusal(coordinator.heartbeat(&report("dn4", NEW, OLD))),
        Refusal::NotRegistered { .. }
    ));
}

#[test]
fn a_member_lease_lapses_without_heartbeats_but_its_membership_stays() {
    let clock = Arc::new(ManualClock::at_ms(1_000));
    let store = Arc::new(EmbeddedStore::in_memory());
    let coordinator = Coordinator::open(
        store,
        CoordinatorOptions::default()
            .with_clock(clock.clone())
            .with_member_lease_ttl(Duration::from_secs(2)),
    )
    .unwrap();
    coordinator.register(&report("dn1", NEW, OLD)).unwrap();
    assert!(
        coordinator
            .status(KIND)
            .unwrap()
            .member("dn1")
            .unwrap()
            .live
    );
    clock.advance(Duration::from_secs(3));
    let status = coordinator.status(KIND).unwrap();
    assert!(!status.member("dn1").unwrap().live);
    coordinator.heartbeat(&report("dn1", NEW, OLD)).unwrap();
    assert!(
        coordinator
            .status(KIND)
            .unwrap()
            .member("dn1")
            .unwrap()
            .live
    );
}

/// Moves a live cluster from one embedded store to another: members heartbeat between
/// every step and every answer is right; a finalization runs while dual publishing; a
/// write the new store missed blocks the switch until caught up; after the switch the old
/// store refuses a stale coordinator, and rollback is refused.
#[test]
fn a_live_cluster_moves_to_another_store_without_a_wrong_answer() {
    let old = Arc::new(EmbeddedStore::in_memory());
    let moving = Arc::new(MovingStore::new(old.clone()));
    let coordinator = Coordinator::open(moving.clone(), CoordinatorOptions::default()).unwrap();
    let mut members: Vec<Member> = (1..=3)
        .map(|i| Member::new(KIND, format!("dn{i}"), layout(NEW)))
        .collect();
    let mut expected = OLD;
    let beat = |members: &mut Vec<Member>, expected: u32| {
        for member in members.iter_mut() {
            let step = member.heartbeat(&coordinator).unwrap();
            assert_eq!(step.answer.cluster_layout_version, expected);
            if step.finalizing.is_some() {
                // Finalizing in the background: wait, and report it.
                assert!(member.wait_for_finalization(BOUND));
                let step = member.heartbeat(&coordinator).unwrap();
                assert_eq!(step.finalized_to, Some(expected));
            }
        }
    };
    beat(&mut members, expected);

    // A rollback before the switch leaves the old store in charge.
    let abandoned = Arc::new(EmbeddedStore::in_memory());
    moving.begin(abandoned).unwrap();
    beat(&mut members, expected);
    moving.rollback().unwrap();
    assert_eq!(moving.phase(), MovePhase::Current);

    let new = Arc::new(EmbeddedStore::in_memory());
    moving.begin(new.clone()).unwrap();
    assert_eq!(moving.phase(), MovePhase::DualPublishing);
    beat(&mut members, expected);
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();
    expected = NEW;
    beat(&mut members, expected);
    assert!(moving.verify().unwrap().is_caught_up());

    // Someone writes to the old store behind the adapter's back: verify reports it,
    // catch_up copies it.
    old.append_audit(
        KIND,
        &AuditEntry {
            at_ms: 1,
            actor: "someone".into(),
            event: AuditEvent::Other("stray".into()),
            member_id: None,
            version: None,
            detail: "written to the old store directly".into(),
        },
    )
    .unwrap();
    assert!(!moving.verify().unwrap().is_caught_up());
    assert!(moving.catch_up().unwrap().is_caught_up());
    moving.switch().unwrap();
    assert_eq!(moving.phase(), MovePhase::Switched);
    assert!(moving.rollback().is_err());
    beat(&mut members, expected);

    // The new store alone holds everything; the old one refuses a stale coordinator.
    let fresh = Coordinator::open(new, CoordinatorOptions::default()).unwrap();
    let status = fresh.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, NEW);
    assert_eq!(status.checkpoint(), Some(FinalizationCheckpoint::Complete));
    assert_eq!(status.members.len(), 3);
    assert!(status
        .audit
        .iter()
        .any(|a| a.event == AuditEvent::StoreMoved));
    let stale = Coordinator::open(old, CoordinatorOptions::default()).unwrap();
    assert!(matches!(
        stale.status(KIND),
        Err(ClusterError::StoreMoved { .. })
    ));
    assert!(matches!(
        stale.register(&report("dn1", NEW, NEW)),
        Err(HeartbeatError::Unavailable { .. })
    ));
}

#[test]
fn the_embedded_store_keeps_only_state_and_membership_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster-state");
    {
        let store = Arc::new(EmbeddedStore::open(&path).unwrap());
        let coordinator = Coordinator::open(store, CoordinatorOptions::default()).unwrap();
        coordinator.register(&report("dn1", NEW, OLD)).unwrap();
    }
    let store = Arc::new(EmbeddedStore::open(&path).unwrap());
    assert_eq!(store.kinds().unwrap(), [KIND]);
    let state: KindState = store.load_state(KIND).unwrap().unwrap();
    assert!(state.members.contains_key("dn1"));
    let coordinator = Coordinator::open(store, CoordinatorOptions::default()).unwrap();
    // Membership persists; liveness does not (it is a lease).
    assert!(
        !coordinator
            .status(KIND)
            .unwrap()
            .member("dn1")
            .unwrap()
            .live
    );
}

/// The coordinator's own layout, dying (a panic) inside its finalization.
struct DyingLayout(Arc<LayoutVersionManager<DnFeature>>);

impl layout_core::cluster::LocalLayout for DyingLayout {
    fn software_layout_version(&self) -> u32 {
        self.0.software_layout_version()
    }
    fn metadata_layout_version(&self) -> u32 {
        self.0.metadata_layout_version()
    }
    fn finalize_to(&self, _version: u32, _client_id: &str) -> Result<u32, layout_core::BoxError> {
        panic!("the coordinator dies in the middle of its finalization");
    }
}

#[test]
fn on_the_embedded_store_a_coordinator_restarted_with_the_same_id_takes_its_claim_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster-state");
    let store = Arc::new(EmbeddedStore::open(&path).unwrap());
    let lvm = layout(NEW);
    let options = |id: &str| CoordinatorOptions::default().with_coordinator_id(id);
    let dying = Coordinator::open(
        store.clone(),
        options("c1").with_local(KIND, Arc::new(DyingLayout(Arc::clone(&lvm)))),
    )
    .unwrap();
    // It dies holding the claim, at `started`: nothing released it.
    let died = std::thread::scope(|s| s.spawn(|| dying.finalize(KIND, Some(NEW), "ops")).join());
    assert!(died.is_err());
    drop(dying);
    let other = Coordinator::open(store.clone(), options("c2")).unwrap();
    assert!(matches!(
        other.finalize(KIND, None, "ops"),
        Err(ClusterError::InProgress { holder, .. }) if holder == "c1"
    ));
    // c1 again (the same id) resumes at once.
    let restarted =
        Coordinator::open(store.clone(), options("c1").with_local(KIND, lvm.clone())).unwrap();
    let outcome = restarted.finalize(KIND, None, "ops").unwrap();
    assert!(
        matches!(
            outcome,
            ClusterFinalizeOutcome::Finalized { target: NEW, .. }
        ),
        "{outcome:?}"
    );
    assert_eq!(lvm.metadata_layout_version(), NEW);
    // A claim lives in the store's process only: after a process restart nothing lingers.
    assert_eq!(
        store
            .claim_finalizer(KIND, "c1", Duration::from_secs(600))
            .unwrap(),
        FinalizerClaim::Claimed
    );
    drop((other, restarted, store));
    let reopened = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        reopened
            .claim_finalizer(KIND, "c2", Duration::from_secs(600))
            .unwrap(),
        FinalizerClaim::Claimed
    );
}

/// Five member processes on the embedded store (the coordinator in this process).
fn embedded_cluster(test: &str) -> MiniCluster {
    common::five_members(test, CoordinationOptions::default())
        .build()
        .unwrap()
}

#[test]
fn five_member_processes_roll_upgrade_finalize_and_catch_up_after_a_sigkill() {
    if common::run_as_member() {
        return;
    }
    let mut cluster = embedded_cluster(&layout_testkit::test_name!());
    common::rolling_upgrade_and_finalization(&mut cluster);
}

#[test]
fn five_member_processes_an_exclusion_survives_a_coordinator_restart() {
    if common::run_as_member() {
        return;
    }
    let mut cluster = embedded_cluster(&layout_testkit::test_name!());
    common::exclusion_survives_a_coordinator_restart(&mut cluster);
}
