//! A durable, idempotent live store move (`MovingStore`): a stale `begin` is refused and
//! leaves the destination byte for byte as it was; a SIGKILL at every step of a move
//! resumes with the same command; a stalled destination never delays a heartbeat; a kind
//! only in the destination is removed by `catch_up`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use layout_core::cluster::{
    AuditEvent, ClusterStore, Coordinator, CoordinatorOptions, EmbeddedStore, KindRecord,
    MemberRecord, MemberReport, MovePhase, MoveRole, MoveStage, MovingStore, StoreCasOutcome,
    StoreError, MOVE_STEPS,
};
use layout_testkit::cluster::ObservedStore;
use layout_testkit::crash::{block_until_killed, child_role, report_step, ChildCommand};

const KIND: &str = "datanode";
/// A safety bound for a hung child, not a timing assertion.
const BOUND: Duration = Duration::from_secs(60);

fn register(coordinator: &Coordinator, id: &str, slv: u32) {
    coordinator
        .register(&MemberReport::new(KIND, id, slv, 0))
        .unwrap();
}

fn is_move_error(result: Result<(), StoreError>) -> String {
    match result {
        Err(e @ StoreError::Move { .. }) => e.to_string(),
        other => panic!("expected a refused move, got {other:?}"),
    }
}

/// A move refused after a switch: a cluster moved, switched and finalized on its new store; a
/// coordinator still on the old store then begins a move to the same destination. It is
/// refused, and the destination (records, revisions, move record) is unchanged; so is a
/// begin from another store holding a state of its own.
#[test]
fn move_a_stale_begin_is_refused_and_the_destination_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let old: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::open(dir.path().join("old")).unwrap());
    let new: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::open(dir.path().join("new")).unwrap());
    let moving = Arc::new(MovingStore::new(Arc::clone(&old)));
    let coordinator = Coordinator::open(moving.clone(), CoordinatorOptions::default()).unwrap();
    for i in 1..=3 {
        register(&coordinator, &format!("dn{i}"), 1);
    }
    moving.begin_as(Arc::clone(&new), "ops").unwrap();
    moving.switch().unwrap();
    assert_eq!(moving.phase(), MovePhase::Switched);
    // Finalized on the new store.
    coordinator.finalize(KIND, Some(1), "ops").unwrap();
    drop(coordinator);
    let on_new = Coordinator::open(Arc::clone(&new), CoordinatorOptions::default()).unwrap();
    let status = on_new.status(KIND).unwrap();
    assert_eq!(status.cluster_layout_version, 1);
    drop(on_new);
    let record = new.load_move().unwrap().unwrap().value;
    assert_eq!(
        (record.role, record.stage, record.by.as_str()),
        (MoveRole::Destination, MoveStage::Switched, "ops")
    );
    let before = layout_tests::store_contract::snapshot(new.as_ref());

    // A stale coordinator on the old store.
    let stale = MovingStore::new(Arc::clone(&old));
    let message = is_move_error(stale.begin(Arc::clone(&new)));
    assert!(message.contains("moved to"), "{message}");
    assert_eq!(stale.phase(), MovePhase::Current);
    assert_eq!(layout_tests::store_contract::snapshot(new.as_ref()), before);

    // Another store with a state of its own: the destination is not empty.
    let other: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    other
        .swap_kind(KIND, None, &KindRecord::new(KIND, 0))
        .unwrap();
    let message = is_move_error(MovingStore::new(other).begin(Arc::clone(&new)));
    assert!(message.contains("another move"), "{message}");
    assert_eq!(layout_tests::store_contract::snapshot(new.as_ref()), before);
}

/// `begin` refuses a destination that is not empty (a kind, no record) and a source
/// already moving elsewhere; the same `begin` again resumes the same move.
#[test]
fn move_begin_refuses_a_used_destination_and_resumes_the_same_move() {
    // On files: in-memory stores all have the same location.
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str| -> Arc<dyn ClusterStore> {
        Arc::new(EmbeddedStore::open(dir.path().join(name)).unwrap())
    };
    let old = open("old");
    old.swap_kind(KIND, None, &KindRecord::new(KIND, 0))
        .unwrap();
    let used = open("used");
    used.swap_kind("om", None, &KindRecord::new("om", 4))
        .unwrap();
    let before = layout_tests::store_contract::snapshot(used.as_ref());
    let moving = MovingStore::new(Arc::clone(&old));
    let message = is_move_error(moving.begin(Arc::clone(&used)));
    assert!(message.contains("not empty"), "{message}");
    assert_eq!(
        layout_tests::store_contract::snapshot(used.as_ref()),
        before
    );
    assert!(
        old.load_move().unwrap().is_none(),
        "a refusal writes nothing"
    );

    let new = open("new");
    moving.begin(Arc::clone(&new)).unwrap();
    let id = old.load_move().unwrap().unwrap().value.id;
    // The same begin again: resumed, same id.
    moving.begin(Arc::clone(&new)).unwrap();
    assert_eq!(old.load_move().unwrap().unwrap().value.id, id);
    assert_eq!(new.load_move().unwrap().unwrap().value.id, id);
    // A restarted coordinator (no resume) beginning another move: refused.
    let restarted = MovingStore::new(Arc::clone(&old));
    let elsewhere = open("elsewhere");
    let message = is_move_error(restarted.begin(elsewhere));
    assert!(message.contains("another move"), "{message}");
    // ... while beginning the same move again resumes it.
    restarted.begin(Arc::clone(&new)).unwrap();
    assert_eq!(old.load_move().unwrap().unwrap().value.id, id);
    restarted.switch().unwrap();
    let source = old.load_move().unwrap().unwrap().value;
    assert_eq!(
        (source.role, source.stage, source.to),
        (MoveRole::Source, MoveStage::Switched, new.location())
    );
}

/// A kind only in the destination (written there behind the move's back): verify
/// reports it; `catch_up` removes it (the destination ends up equal to the source), and
/// the switch finishes. The same for a member only in the destination.
#[test]
fn move_a_kind_only_in_the_destination_is_removed_by_catch_up() {
    let old: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let kind_revision = match old
        .swap_kind(KIND, None, &KindRecord::new(KIND, 0))
        .unwrap()
    {
        StoreCasOutcome::Swapped { revision } => revision,
        StoreCasOutcome::Conflict => panic!("conflict"),
    };
    old.swap_member(KIND, "dn1", None, kind_revision, &member())
        .unwrap();
    let new: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let moving = MovingStore::new(Arc::clone(&old));
    moving.begin(Arc::clone(&new)).unwrap();
    new.swap_kind("extra", None, &KindRecord::new("extra", 3))
        .unwrap();
    let kind = new.load_kind(KIND).unwrap().unwrap();
    new.swap_member(KIND, "ghost", None, kind.revision, &member())
        .unwrap();
    let report = moving.verify().unwrap();
    assert!(!report.is_caught_up());
    assert!(
        report.differences.iter().any(|d| d.contains("extra")),
        "{report:?}"
    );
    let report = moving.catch_up().unwrap();
    assert!(report.is_caught_up(), "{report:?}");
    assert_eq!(new.kinds().unwrap(), [KIND]);
    assert!(new.load_member(KIND, "ghost").unwrap().is_none());
    moving.switch().unwrap();
    assert_eq!(moving.phase(), MovePhase::Switched);
}

fn member() -> MemberRecord {
    MemberRecord {
        role: layout_core::cluster::MemberRole::Member,
        incarnation: "i".into(),
        software_layout_version: 1,
        metadata_layout_version: 0,
        first_registered_at_ms: 1,
        last_registered_at_ms: 1,
        excluded: None,
    }
}

/// How long the destination stalls.
const STALL: Duration = Duration::from_secs(10);

/// The destination stalls for 10 s: every heartbeat and registration meanwhile (each
/// one a write mirrored to it) returns within one heartbeat interval; the mirror's queue
/// overflows and the move is marked behind; once the destination answers again, the
/// switch catches up and the destination holds everything.
#[test]
fn move_a_stalled_destination_never_delays_heartbeats() {
    const INTERVAL: Duration = Duration::from_secs(1);
    let old: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let stalling = Arc::new(ObservedStore::new(EmbeddedStore::in_memory()));
    let moving = Arc::new(MovingStore::new(Arc::clone(&old)).with_mirror_capacity(8));
    let coordinator = Coordinator::open(moving.clone(), CoordinatorOptions::default()).unwrap();
    register(&coordinator, "dn0", 1);
    moving.begin(stalling.clone()).unwrap();
    stalling.stall_writes(Some(STALL));
    let start = Instant::now();
    let mut round = 0_u32;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < STALL {
        round += 1;
        // A new member (a write) and a heartbeat of every member so far.
        let began = Instant::now();
        register(&coordinator, &format!("dn{round}"), 1);
        slowest = slowest.max(began.elapsed());
        for i in 0..=round.min(20) {
            let began = Instant::now();
            coordinator
                .heartbeat(&MemberReport::new(KIND, format!("dn{i}"), 1, 0))
                .unwrap();
            slowest = slowest.max(began.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        slowest < INTERVAL,
        "a heartbeat took {slowest:?} while the destination stalled"
    );
    let status = moving.status().unwrap();
    assert!(status.behind, "{status:?}");
    stalling.stall_writes(None);
    moving.switch().unwrap();
    assert_eq!(
        stalling.load_state(KIND).unwrap().unwrap().members.len(),
        old.load_state(KIND).unwrap().unwrap().members.len()
    );
}

/// The store files of a crash test.
fn stores(dir: &Path) -> (Arc<dyn ClusterStore>, Arc<dyn ClusterStore>) {
    (
        Arc::new(EmbeddedStore::open(dir.join("old")).unwrap()),
        Arc::new(EmbeddedStore::open(dir.join("new")).unwrap()),
    )
}

/// The child: opens both stores, resumes whatever is recorded, and runs `begin` then
/// `switch` (or `begin` then `rollback`), stopping for good at step `STEP`.
fn move_child(dir: &Path, step: &str, rollback: bool) -> ! {
    let (old, new) = stores(dir);
    let target = step.to_owned();
    let moving = MovingStore::new(Arc::clone(&old))
        .with_step_hook(move |name| {
            if name == target {
                report_step(name);
                block_until_killed();
            }
        })
        .resume(Some(Arc::clone(&new)))
        .unwrap();
    moving.begin_as(Arc::clone(&new), "ops").unwrap();
    if rollback {
        moving.rollback().unwrap();
    } else {
        moving.switch().unwrap();
    }
    report_step("finished");
    block_until_killed();
}

/// A SIGKILL at every durable step of begin, switch and rollback: the restarted
/// coordinator ([`MovingStore::open`]) and the same command run again finish the move (or
/// the rollback), and both stores end as a move that never crashed leaves them.
#[test]
fn move_a_sigkill_at_every_step_resumes() {
    if let Some(role) = child_role() {
        let dir = std::env::var("MOVE_DIR").unwrap();
        let step = std::env::var("MOVE_STEP").unwrap();
        move_child(Path::new(&dir), &step, role == "rollback");
    }
    for step in MOVE_STEPS {
        let rollback = step.starts_with("rollback");
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let (old, _) = stores(dir.path());
            let coordinator =
                Coordinator::open(Arc::clone(&old), CoordinatorOptions::default()).unwrap();
            register(&coordinator, "dn1", 1);
            register(&coordinator, "dn2", 1);
            old.load_state(KIND).unwrap().unwrap()
        };
        let mut child = ChildCommand::new(
            layout_testkit::test_name!(),
            if rollback { "rollback" } else { "switch" },
        )
        .env("MOVE_DIR", dir.path())
        .env("MOVE_STEP", step)
        .spawn()
        .unwrap();
        child.wait_for_step(step, BOUND).unwrap();
        child.kill().unwrap();
        let output = child.wait(BOUND).unwrap();
        assert!(output.was_killed(), "{step}: {output:?}");

        // Restarted: resume what is recorded, then run the command again.
        let (old, new) = stores(dir.path());
        let moving = MovingStore::open(Arc::clone(&old), Some(Arc::clone(&new))).unwrap();
        let id = old.load_move().unwrap().map(|r| r.value.id);
        if rollback {
            moving.rollback().unwrap();
            assert_eq!(moving.phase(), MovePhase::Current, "{step}");
            let source = old.load_move().unwrap().unwrap().value;
            let destination = new.load_move().unwrap().unwrap().value;
            assert_eq!(source.stage, MoveStage::RolledBack, "{step}");
            assert_eq!(destination.stage, MoveStage::RolledBack, "{step}");
            assert_eq!(old.load_state(KIND).unwrap().unwrap(), expected, "{step}");
            // Served from the old store again; a new move may reuse the stale copy.
            let again = MovingStore::new(Arc::clone(&old));
            again.begin(Arc::clone(&new)).unwrap();
            again.switch().unwrap();
            assert_eq!(again.phase(), MovePhase::Switched, "{step}");
        } else {
            if moving.phase() != MovePhase::Switched {
                moving.begin_as(Arc::clone(&new), "ops").unwrap();
                if let Some(id) = &id {
                    assert_eq!(
                        old.load_move().unwrap().unwrap().value.id,
                        *id,
                        "{step}: the same move"
                    );
                }
            }
            moving.switch().unwrap();
            assert_eq!(moving.phase(), MovePhase::Switched, "{step}");
        }
        let source = old.load_move().unwrap().unwrap().value;
        let destination = new.load_move().unwrap().unwrap().value;
        assert_eq!(source.id, destination.id, "{step}");
        assert_eq!(
            (source.stage, destination.stage),
            (MoveStage::Switched, MoveStage::Switched),
            "{step}"
        );
        let mut moved = new.load_state(KIND).unwrap().unwrap();
        let last = moved.audit.pop().unwrap();
        assert_eq!(last.event, AuditEvent::StoreMoved, "{step}");
        assert!(
            moved
                .audit
                .iter()
                .all(|a| a.event != AuditEvent::StoreMoved),
            "{step}: one store-moved entry"
        );
        assert_eq!(moved, expected, "{step}");
        assert_eq!(
            old.load_kind(KIND).unwrap().unwrap().value.moved_to,
            Some(new.location()),
            "{step}"
        );
    }
}
