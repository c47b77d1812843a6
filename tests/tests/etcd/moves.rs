//! Live moves of a running cluster's state: from one etcd server to another, and from the
//! embedded store to etcd, with members heartbeating throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use layout_core::cluster::{
    AuditEvent, ClusterError, ClusterStore, Coordinator, CoordinatorOptions, EmbeddedStore,
    FinalizationCheckpoint, Instruction, KindRecord, Member, MemberReport, MovePhase, MoveRole,
    MoveStage, MovingStore, StoreError,
};
use layout_core::{LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
use parking_lot::{Condvar, Mutex};

use crate::server::{self, EtcdServer};
use layout_tests::cluster::{DnFeature, BOUND, KIND, NEW, OLD};

const MEMBERS: usize = 3;
const TTL: Duration = Duration::from_secs(2);

/// Heartbeats answered, counted, with a way to wait for more.
#[derive(Default)]
struct Beats {
    count: Mutex<usize>,
    more: Condvar,
}

impl Beats {
    fn add(&self) {
        *self.count.lock() += 1;
        self.more.notify_all();
    }

    /// Waits until every member has had a few more heartbeats answered.
    fn wait_for_more(&self) {
        let mut count = self.count.lock();
        let target = *count + 3 * MEMBERS;
        let deadline = Instant::now() + BOUND;
        while *count < target {
            assert!(
                !self.more.wait_until(&mut count, deadline).timed_out(),
                "members stopped getting answers"
            );
        }
    }
}

/// Members heartbeating in threads, checking every answer: no error, the cluster's
/// version never goes back and is OLD or NEW, and the instruction is right for the
/// member's MLV.
fn heartbeating_members(
    coordinator: &Arc<Coordinator>,
    stopping: &Arc<AtomicBool>,
    beats: &Arc<Beats>,
) -> Vec<thread::JoinHandle<usize>> {
    (1..=MEMBERS)
        .map(|i| {
            let coordinator = Arc::clone(coordinator);
            let (stopping, beats) = (Arc::clone(stopping), Arc::clone(beats));
            thread::spawn(move || {
                let lvm = Arc::new(
                    LayoutVersionManager::<DnFeature>::open(
                        MemoryStorage::new(),
                        ManagerOptions::default()
                            .with_start_intent(StartIntent::Init)
                            .with_initial_layout_version(OLD),
                    )
                    .unwrap(),
                );
                let mut member = Member::new(KIND, format!("dn{i}"), lvm.clone());
                let mut seen = OLD;
                let mut answered = 0;
                let mut started = false;
                while !stopping.load(Ordering::SeqCst) {
                    let mlv_before = lvm.metadata_layout_version();
                    let step = member
                        .heartbeat(&coordinator)
                        .unwrap_or_else(|e| panic!("dn{i}: a heartbeat was not answered: {e}"));
                    let answer = &step.answer;
                    assert!(
                        answer.cluster_layout_version == OLD
                            || answer.cluster_layout_version == NEW,
                        "dn{i}: {answer:?}"
                    );
                    assert!(
                        answer.cluster_layout_version >= seen,
                        "dn{i} saw the cluster go back: {answer:?}"
                    );
                    seen = answer.cluster_layout_version;
                    match step.finalized_to {
                        // Finalized (in the background, reported by the next step): only
                        // after being told to, and to the cluster's version.
                        Some(v) => assert!(started && v == NEW, "dn{i}: {step:?}"),
                        // Told to finalize exactly while the MLV it reported is behind.
                        None => assert_eq!(
                            answer.instruction.is_some(),
                            mlv_before < answer.cluster_layout_version,
                            "dn{i}: {answer:?}"
                        ),
                    }
                    if let Some(v) = step.finalizing {
                        assert!(mlv_before < v && v == NEW, "dn{i}: {step:?}");
                        started = true;
                        // Finished before the next step, so each step reports the MLV
                        // it read before it.
                        assert!(member.wait_for_finalization(Duration::from_secs(60)));
                    }
                    if let Some(Instruction::FinalizeTo { version }) = answer.instruction {
                        assert_eq!(version, answer.cluster_layout_version);
                    }
                    answered += 1;
                    beats.add();
                    thread::sleep(Duration::from_millis(20));
                }
                answered
            })
        })
        .collect()
}

/// Moves the running cluster from `old` to `new`, finalizing while dual publishing.
fn move_live_cluster(
    old: Arc<dyn ClusterStore>,
    new: Arc<dyn ClusterStore>,
    reopen_new: impl Fn() -> Arc<dyn ClusterStore>,
) {
    let moving = Arc::new(MovingStore::new(old.clone()));
    let coordinator = Arc::new(
        Coordinator::open(
            moving.clone(),
            CoordinatorOptions::default().with_member_lease_ttl(TTL),
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(Beats::default());
    let members = heartbeating_members(&coordinator, &stop, &beats);
    beats.wait_for_more();

    moving.begin(new).unwrap();
    assert_eq!(moving.phase(), MovePhase::DualPublishing);
    beats.wait_for_more();
    // A finalization while dual publishing: its checkpoints reach both stores.
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();
    beats.wait_for_more();
    let report = moving.verify().unwrap();
    assert!(report.is_caught_up(), "{report:?}");
    moving.switch().unwrap();
    assert_eq!(moving.phase(), MovePhase::Switched);
    beats.wait_for_more();
    beats.wait_for_more();

    stop.store(true, Ordering::SeqCst);
    for member in members {
        assert!(member.join().unwrap() > 0);
    }
    // The new store alone holds the whole cluster; the old one refuses a stale coordinator.
    let fresh = Coordinator::open(reopen_new(), CoordinatorOptions::default()).unwrap();
    let status = fresh.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, NEW);
    assert_eq!(status.checkpoint(), Some(FinalizationCheckpoint::Complete));
    assert_eq!(status.members.len(), MEMBERS);
    assert!(
        status
            .members
            .iter()
            .all(|m| m.metadata_layout_version == NEW),
        "{status:?}"
    );
    assert!(status
        .audit
        .iter()
        .any(|a| a.event == AuditEvent::StoreMoved));
    let stale = Coordinator::open(old, CoordinatorOptions::default()).unwrap();
    assert!(matches!(
        stale.status(KIND),
        Err(ClusterError::StoreMoved { .. })
    ));
}

#[test]
fn a_live_cluster_moves_from_one_etcd_server_to_another() {
    let prefix = server::prefix("move-etcd");
    let second = EtcdServer::start().unwrap();
    assert_ne!(second.endpoint(), server::shared().endpoint());
    let old = Arc::new(server::store(&prefix));
    let new = Arc::new(second.store(&prefix).unwrap());
    move_live_cluster(old, new, || Arc::new(second.store(&prefix).unwrap()));
}

#[test]
fn a_live_cluster_moves_from_the_embedded_store_to_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = server::prefix("move-embedded");
    let old = Arc::new(EmbeddedStore::open(dir.path().join("cluster-state")).unwrap());
    let new = Arc::new(server::store(&prefix));
    move_live_cluster(old, new, || Arc::new(server::store(&prefix)));
}

/// A move refused after a switch, on etcd: a live cluster moved to another etcd, switched and
/// finalized there (a cluster version and audit entries of its own); then a coordinator
/// still on the old store begins a move to it. Refused, and the destination is byte for
/// byte (records and revisions) what it was.
#[test]
fn a_stale_move_begin_is_refused_and_leaves_the_etcd_destination_unchanged() {
    let old: Arc<dyn ClusterStore> = Arc::new(server::store(&server::prefix("stale-old")));
    let new: Arc<dyn ClusterStore> = Arc::new(server::store(&server::prefix("stale-new")));
    let moving = Arc::new(MovingStore::new(Arc::clone(&old)));
    let coordinator = Coordinator::open(moving.clone(), CoordinatorOptions::default()).unwrap();
    for i in 1..=3 {
        coordinator
            .register(&MemberReport::new(KIND, format!("dn{i}"), NEW, OLD))
            .unwrap();
    }
    moving.begin_as(Arc::clone(&new), "ops").unwrap();
    moving.switch().unwrap();
    coordinator.finalize(KIND, Some(NEW), "ops").unwrap();
    drop(coordinator);
    assert_eq!(
        new.load_kind(KIND)
            .unwrap()
            .unwrap()
            .value
            .cluster_layout_version,
        NEW
    );
    let before = layout_tests::store_contract::snapshot(new.as_ref());
    assert!(before.kinds[0].1.as_ref().unwrap().audit.len() >= 2);

    let stale = MovingStore::new(Arc::clone(&old));
    let err = stale.begin(Arc::clone(&new)).unwrap_err();
    assert!(matches!(err, StoreError::Move { .. }), "{err}");
    assert_eq!(layout_tests::store_contract::snapshot(new.as_ref()), before);
    // Nor from another store with a state of its own.
    let other: Arc<dyn ClusterStore> = Arc::new(server::store(&server::prefix("stale-other")));
    other
        .swap_kind(KIND, None, &KindRecord::new(KIND, OLD))
        .unwrap();
    let err = MovingStore::new(other).begin(Arc::clone(&new)).unwrap_err();
    assert!(matches!(err, StoreError::Move { .. }), "{err}");
    assert_eq!(layout_tests::store_contract::snapshot(new.as_ref()), before);
}

/// A coordinator restarted while dual publishing to etcd (fresh connections) resumes the
/// move from the records, `catch_up` removes a kind only in the destination (etcd's
/// `remove_kind`), and the switch finishes.
#[test]
fn a_move_to_etcd_resumes_after_a_restart_and_catch_up_removes_an_extra_kind() {
    let old_prefix = server::prefix("resume-old");
    let new_prefix = server::prefix("resume-new");
    let old: Arc<dyn ClusterStore> = Arc::new(server::store(&old_prefix));
    let coordinator = Coordinator::open(Arc::clone(&old), CoordinatorOptions::default()).unwrap();
    coordinator
        .register(&MemberReport::new(KIND, "dn1", NEW, OLD))
        .unwrap();
    drop(coordinator);
    let moving = MovingStore::new(Arc::clone(&old));
    moving.begin(Arc::new(server::store(&new_prefix))).unwrap();
    drop(moving);

    let old: Arc<dyn ClusterStore> = Arc::new(server::store(&old_prefix));
    let new: Arc<dyn ClusterStore> = Arc::new(server::store(&new_prefix));
    let moving = Arc::new(MovingStore::open(Arc::clone(&old), Some(Arc::clone(&new))).unwrap());
    assert_eq!(moving.phase(), MovePhase::DualPublishing);
    assert!(
        moving.status().unwrap().behind,
        "a restart may have lost queued writes"
    );
    new.swap_kind("extra", None, &KindRecord::new("extra", 7))
        .unwrap();
    let coordinator = Coordinator::open(moving.clone(), CoordinatorOptions::default()).unwrap();
    coordinator
        .register(&MemberReport::new(KIND, "dn2", NEW, OLD))
        .unwrap();
    let report = moving.catch_up().unwrap();
    assert!(report.is_caught_up(), "{report:?}");
    assert_eq!(new.kinds().unwrap(), [KIND]);
    moving.switch().unwrap();
    assert_eq!(new.members(KIND).unwrap().len(), 2);
    let record = new.load_move().unwrap().unwrap().value;
    assert_eq!(
        (record.role, record.stage),
        (MoveRole::Destination, MoveStage::Switched)
    );
}
