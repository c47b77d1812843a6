//! Live moves of a running cluster's state: from one etcd server to another, and from the
//! embedded store to etcd, with members heartbeating throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use layout_core::cluster::{
    Checkpoint, ClusterError, ClusterStore, Coordinator, CoordinatorOptions, EmbeddedStore,
    Instruction, Member, MovePhase, MovingStore,
};
use layout_core::{LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
use parking_lot::{Condvar, Mutex};

use crate::cluster_common::{DnFeature, BOUND, KIND, NEW, OLD};
use crate::server::{self, EtcdServer};

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
                        // Told to finalize: only when behind, and to the cluster's version.
                        Some(v) => assert!(mlv_before < v && v == NEW, "dn{i}: {step:?}"),
                        None => assert_eq!(
                            answer.instruction.is_some(),
                            lvm.metadata_layout_version() < answer.cluster_layout_version,
                            "dn{i}: {answer:?}"
                        ),
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
    assert_eq!(status.checkpoint(), Some(Checkpoint::Complete));
    assert_eq!(status.members.len(), MEMBERS);
    assert!(
        status
            .members
            .iter()
            .all(|m| m.metadata_layout_version == NEW),
        "{status:?}"
    );
    assert!(status.audit.iter().any(|a| a.event == "store-moved"));
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
