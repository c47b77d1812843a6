//! The member's own fence and its background finalization, in process: a refused member
//! is fenced by the step that got the refusal and recovers when the coordinator accepts
//! it again; an unreachable coordinator does not fence; a member migration that lasts
//! several member leases never shows the member dead, and excluding it is refused.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use layout_core::clock::ManualClock;
use layout_core::cluster::{
    ClusterError, Coordinator, CoordinatorAnswer, CoordinatorLink, CoordinatorOptions,
    EmbeddedStore, FinalizerLayout, HeartbeatError, LocalLayout, Member, MemberError, MemberReport,
    Refusal,
};
use layout_core::BoxError;
use layout_core::{
    ActionContext, ActionError, ActionRegistry, LayoutVersionManager, ManagerOptions,
    MemoryStorage, StartIntent, UpgradeFinalizer,
};

use layout_tests::cluster::{DnFeature, BOUND, KIND, NEW, OLD};

/// A layout whose versions the test sets: a member "upgraded" in place, to show the
/// protocol's recovery without a second process.
#[derive(Default)]
struct SetLayout {
    slv: AtomicU32,
    mlv: AtomicU32,
}

impl SetLayout {
    fn at(slv: u32, mlv: u32) -> Arc<Self> {
        Arc::new(Self {
            slv: AtomicU32::new(slv),
            mlv: AtomicU32::new(mlv),
        })
    }
}

impl LocalLayout for SetLayout {
    fn software_layout_version(&self) -> u32 {
        self.slv.load(Ordering::SeqCst)
    }
    fn metadata_layout_version(&self) -> u32 {
        self.mlv.load(Ordering::SeqCst)
    }
    fn finalize_to(&self, version: u32, _client_id: &str) -> Result<u32, BoxError> {
        self.mlv.fetch_max(version, Ordering::SeqCst);
        Ok(self.metadata_layout_version())
    }
}

/// A coordinator that cannot be reached.
struct Unreachable;

impl CoordinatorLink for Unreachable {
    fn register(&self, _: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        Err(HeartbeatError::Unavailable {
            reason: "connection refused".into(),
        })
    }
    fn heartbeat(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        self.register(report)
    }
    fn leave(&self, report: &MemberReport) -> Result<CoordinatorAnswer, HeartbeatError> {
        self.register(report)
    }
}

fn manual_coordinator(clock: &Arc<ManualClock>) -> Coordinator {
    Coordinator::open(
        Arc::new(EmbeddedStore::in_memory()),
        CoordinatorOptions::default().with_clock(clock.clone()),
    )
    .unwrap()
}

#[test]
fn an_excluded_member_is_fenced_by_the_refused_step_and_recovers_when_readmitted() {
    let clock = Arc::new(ManualClock::at_ms(1_767_225_600_000));
    let coordinator = manual_coordinator(&clock);
    let dn1_layout = SetLayout::at(OLD, OLD);
    let mut dn1 = Member::new(KIND, "dn1", dn1_layout.clone());
    let mut dn2 = Member::new(KIND, "dn2", SetLayout::at(NEW, OLD));
    let fence = dn1.fence();
    dn1.register(&coordinator).unwrap();
    dn2.register(&coordinator).unwrap();
    assert!(!fence.is_fenced());

    // dn1 is gone (its lease lapsed); the operator excludes it on the coordinator.
    clock.advance(Duration::from_secs(60));
    dn2.heartbeat(&coordinator).unwrap();
    coordinator
        .exclude(KIND, "dn1", "host lost its disks, OPS-7", "ops@alice")
        .unwrap();

    // It comes back with its old release: the one step that is refused fences it.
    let refused = dn1.heartbeat(&coordinator).unwrap_err();
    assert!(
        matches!(refused.refusal(), Some(Refusal::Excluded { .. })),
        "{refused}"
    );
    assert!(fence.is_fenced());
    let cause = fence.check().unwrap_err();
    assert_eq!(Some(&cause.refusal), refused.refusal());
    // Refused again: still fenced, same cause.
    assert!(dn1.heartbeat(&coordinator).is_err());
    assert_eq!(fence.cause().map(|c| c.refusal), Some(cause.refusal));

    // An unreachable coordinator changes nothing: still fenced.
    assert!(dn1.heartbeat(&Unreachable).is_err());
    assert!(fence.is_fenced());

    // Upgraded, it is readmitted by its next step, and the fence opens.
    dn1_layout.slv.store(NEW, Ordering::SeqCst);
    dn1.heartbeat(&coordinator).unwrap();
    assert!(!fence.is_fenced());
    assert!(fence.check().is_ok());
    assert!(fence.cause().is_none());
}

#[test]
fn a_second_process_is_fenced_until_the_first_one_leaves() {
    let clock = Arc::new(ManualClock::at_ms(1_767_225_600_000));
    let coordinator = manual_coordinator(&clock);
    let mut first = Member::new(KIND, "dn1", SetLayout::at(NEW, OLD));
    let mut second = Member::new(KIND, "dn1", SetLayout::at(NEW, OLD));
    first.register(&coordinator).unwrap();
    let e = second.register(&coordinator).unwrap_err();
    assert!(matches!(
        e.refusal(),
        Some(Refusal::DuplicateIncarnation { .. })
    ));
    assert!(second.fence().is_fenced());
    assert!(!first.fence().is_fenced());

    // The first one stops cleanly: the second registers on its next heartbeat.
    first.leave(&coordinator).unwrap();
    second.heartbeat(&coordinator).unwrap();
    assert!(second.is_registered());
    assert!(!second.fence().is_fenced());
}

#[test]
fn a_member_ahead_of_the_cluster_is_fenced_until_the_cluster_catches_up() {
    let clock = Arc::new(ManualClock::at_ms(1_767_225_600_000));
    let coordinator = manual_coordinator(&clock);
    let mut dn1 = Member::new(KIND, "dn1", SetLayout::at(NEW, OLD));
    let mut ahead = Member::new(KIND, "dn9", SetLayout::at(NEW, NEW));
    dn1.register(&coordinator).unwrap();
    let e = ahead.register(&coordinator).unwrap_err();
    assert!(matches!(
        e.refusal(),
        Some(Refusal::MetadataAheadOfCluster { .. })
    ));
    assert!(ahead.fence().is_fenced());

    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();
    ahead.heartbeat(&coordinator).unwrap();
    assert!(!ahead.fence().is_fenced());
}

#[test]
fn an_unreachable_coordinator_does_not_fence_and_the_member_registers_when_it_answers() {
    let clock = Arc::new(ManualClock::at_ms(1_767_225_600_000));
    let coordinator = manual_coordinator(&clock);
    let mut dn1 = Member::new(KIND, "dn1", SetLayout::at(NEW, OLD));
    let e = dn1.register(&Unreachable).unwrap_err();
    assert!(matches!(
        e,
        MemberError::Heartbeat(HeartbeatError::Unavailable { .. })
    ));
    assert!(!dn1.fence().is_fenced());
    assert!(!dn1.is_registered());
    assert!(dn1.heartbeat(&Unreachable).is_err());
    assert!(!dn1.fence().is_fenced());

    // The coordinator answers again: the next heartbeat registers.
    dn1.heartbeat(&coordinator).unwrap();
    assert!(dn1.is_registered());
    assert!(coordinator.status(KIND).unwrap().member("dn1").is_some());
}

#[test]
fn a_failed_background_finalization_is_reported_once_and_retried_at_the_next_instruction() {
    struct Flaky {
        inner: Arc<SetLayout>,
        fail: AtomicBool,
    }
    impl LocalLayout for Flaky {
        fn software_layout_version(&self) -> u32 {
            self.inner.software_layout_version()
        }
        fn metadata_layout_version(&self) -> u32 {
            self.inner.metadata_layout_version()
        }
        fn finalize_to(&self, version: u32, client_id: &str) -> Result<u32, BoxError> {
            if self.fail.swap(false, Ordering::SeqCst) {
                return Err("the disk is full".into());
            }
            self.inner.finalize_to(version, client_id)
        }
    }
    let clock = Arc::new(ManualClock::at_ms(1_767_225_600_000));
    let coordinator = manual_coordinator(&clock);
    let layout = Arc::new(Flaky {
        inner: SetLayout::at(NEW, OLD),
        fail: AtomicBool::new(true),
    });
    let mut dn1 = Member::new(KIND, "dn1", layout.clone());
    dn1.register(&coordinator).unwrap();
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();

    assert_eq!(dn1.heartbeat(&coordinator).unwrap().finalizing, Some(NEW));
    assert!(dn1.wait_for_finalization(BOUND));
    let e = dn1.heartbeat(&coordinator).unwrap_err();
    assert!(
        matches!(&e, MemberError::LocalFinalize { version, .. } if *version == NEW),
        "{e}"
    );
    assert!(e.to_string().contains("the disk is full"), "{e}");
    assert!(!dn1.fence().is_fenced(), "a local failure does not fence");
    // Reported once; the next instruction starts it again.
    assert_eq!(dn1.heartbeat(&coordinator).unwrap().finalizing, Some(NEW));
    assert!(dn1.wait_for_finalization(BOUND));
    assert_eq!(dn1.heartbeat(&coordinator).unwrap().finalized_to, Some(NEW));
    assert!(coordinator.status(KIND).unwrap().is_complete());
}

/// The member whose `ChunkChecksums` action blocks until released.
struct Slow {
    entered: AtomicBool,
    release: AtomicBool,
}

// An action's signature, though this one cannot fail.
#[allow(clippy::unnecessary_wraps)]
fn slow_migration(slow: &Slow, _ctx: &ActionContext<'_, DnFeature>) -> Result<(), ActionError> {
    slow.entered.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + BOUND;
    while !slow.release.load(Ordering::SeqCst) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

#[test]
fn a_migration_lasting_several_leases_keeps_the_member_live_and_unexcludable() {
    const LEASE: Duration = Duration::from_secs(1);
    const HEARTBEAT: Duration = Duration::from_millis(50);
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::new(EmbeddedStore::in_memory()),
            CoordinatorOptions::default().with_member_lease_ttl(LEASE),
        )
        .unwrap(),
    );
    let lvm = Arc::new(
        LayoutVersionManager::<DnFeature>::open(
            MemoryStorage::new(),
            ManagerOptions::default()
                .with_start_intent(StartIntent::Init)
                .with_initial_layout_version(OLD),
        )
        .unwrap(),
    );
    let registry = ActionRegistry::<DnFeature, Slow>::builder()
        .on_finalize(DnFeature::ChunkChecksums, slow_migration)
        .build()
        .unwrap();
    let slow = Arc::new(Slow {
        entered: AtomicBool::new(false),
        release: AtomicBool::new(false),
    });
    let finalizer = Arc::new(UpgradeFinalizer::new(lvm.clone(), registry));
    let mut member = Member::new(
        KIND,
        "dn1",
        Arc::new(FinalizerLayout::new(finalizer, slow.clone())),
    );
    member.register(&*coordinator).unwrap();

    // The member's heartbeat thread, as a service runs it.
    let stopping = Arc::new(AtomicBool::new(false));
    let heartbeats = {
        let (coordinator, stopping) = (coordinator.clone(), stopping.clone());
        thread::spawn(move || {
            let mut finalized_to = None;
            let deadline = Instant::now() + BOUND;
            // Until stopped, and the finalization was reported (by the step after it
            // finished, which may come after the coordinator saw the new MLV).
            while !(stopping.load(Ordering::SeqCst) && finalized_to.is_some())
                && Instant::now() < deadline
            {
                let step = member
                    .heartbeat(&*coordinator)
                    .unwrap_or_else(|e| panic!("a heartbeat failed: {e}"));
                finalized_to = finalized_to.or(step.finalized_to);
                thread::sleep(HEARTBEAT);
            }
            finalized_to
        })
    };

    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();
    let deadline = Instant::now() + BOUND;
    while !slow.entered.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the migration never started");
        thread::sleep(Duration::from_millis(5));
    }
    // The migration runs for four leases (twenty heartbeat intervals each): the member
    // stays live all along, and the coordinator refuses to exclude it.
    let migration_ends = Instant::now() + LEASE * 4;
    let mut checks = 0;
    while Instant::now() < migration_ends {
        let status = coordinator.status(KIND).unwrap();
        let dn1 = status.member("dn1").unwrap();
        assert!(
            dn1.live,
            "the member looked dead during its migration: {dn1:?}"
        );
        assert_eq!(dn1.metadata_layout_version, OLD);
        assert!(matches!(
            coordinator.exclude(KIND, "dn1", "it looks stuck", "ops@alice"),
            Err(ClusterError::MemberIsLive { .. })
        ));
        checks += 1;
        thread::sleep(LEASE / 4);
    }
    assert!(checks > 0);
    slow.release.store(true, Ordering::SeqCst);

    let deadline = Instant::now() + BOUND;
    while !coordinator.status(KIND).unwrap().is_complete() {
        assert!(
            Instant::now() < deadline,
            "the finalization never completed"
        );
        thread::sleep(Duration::from_millis(10));
    }
    stopping.store(true, Ordering::SeqCst);
    assert_eq!(heartbeats.join().unwrap(), Some(NEW));
    assert_eq!(lvm.metadata_layout_version(), NEW);
    assert!(
        coordinator
            .status(KIND)
            .unwrap()
            .member("dn1")
            .unwrap()
            .live
    );
}
