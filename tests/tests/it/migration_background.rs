//! Background migrations on the memory store: batches and checkpoints, progress and
//! ETA, throttling, pause/resume/cancel, the write routing, and a migration run as a
//! layout feature's `OnFinalize` action.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use layout_core::clock::{ClockSleeper, ManualClock};
use layout_core::migration::{
    BackgroundMigration, BatchEvent, MemoryMigrationStore, MigrationError, MigrationSource,
    MigrationState, Row, WriteTarget,
};
use layout_core::StepError;
use layout_core::{
    ActionRegistry, FinalizationStatus, FinalizeError, LayoutFeature, LayoutVersionManager,
    ManagerOptions, MemoryStorage, StartIntent, UpgradeFinalizer,
};
use parking_lot::Mutex;

/// A catalog whose version 1 rewrites the `users` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum MigFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Users in the v2 table")]
    UsersV2,
}

/// A manager at MLV 0 (pre-finalized) on memory storage.
pub(crate) fn prefinalized() -> Arc<LayoutVersionManager<MigFeature>> {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    Arc::new(LayoutVersionManager::open(MemoryStorage::new(), opts).unwrap())
}

pub(crate) fn key(i: u32) -> Vec<u8> {
    format!("user-{i:06}").into_bytes()
}

/// `n` old rows: value `old-i`, modified at `1_000 + i`.
pub(crate) fn old_rows(n: u32) -> impl Iterator<Item = Row> {
    (0..n).map(|i| {
        Row::new(
            key(i),
            format!("old-{i}").into_bytes(),
            1_000 + u64::from(i),
        )
    })
}

/// The transform of these tests: `old-i` -> `new:old-i`.
#[allow(clippy::unnecessary_wraps)] // the shape of a transform
pub(crate) fn upgrade_value(mut row: Row) -> Result<Option<Row>, StepError> {
    let mut value = b"new:".to_vec();
    value.extend_from_slice(&row.value);
    row.value = value;
    Ok(Some(row))
}

fn memory_store(n: u32) -> Arc<MemoryMigrationStore> {
    let store = Arc::new(MemoryMigrationStore::new());
    for row in old_rows(n) {
        store.insert_old(row);
    }
    store
}

#[test]
fn copies_in_batches_with_a_checkpoint_each_keeping_timestamps_and_old_data() {
    let store = memory_store(95);
    let migration = BackgroundMigration::builder("users-v2", store.clone(), store.clone())
        .batch_size(10)
        .transform(upgrade_value)
        .open()
        .unwrap();
    assert_eq!(migration.progress().state, MigrationState::NotStarted);
    let report = migration.run().unwrap();
    assert_eq!((report.done, report.written, report.batches), (95, 95, 10));
    assert_eq!(report.runs, 1);
    // One checkpoint for the run's start, one per batch.
    assert_eq!(store.batch_writes(), 11);
    let cp = store.checkpoint().unwrap();
    assert!(cp.complete);
    assert_eq!(cp.last_key, Some(key(94)));
    // The new table holds the transformed rows with their original timestamps; the old
    // table is untouched.
    let new = store.new_rows();
    let expected: Vec<Row> = old_rows(95)
        .map(|r| upgrade_value(r).unwrap().unwrap())
        .collect();
    assert_eq!(new, expected);
    assert_eq!(store.old_rows(), old_rows(95).collect::<Vec<_>>());
    // Running again is a no-op.
    let again = migration.run().unwrap();
    assert!(again.was_complete);
    assert_eq!(store.new_rows(), expected);
    assert_eq!(migration.progress().state, MigrationState::Complete);
}

#[test]
fn the_default_batch_is_ten_thousand_keys_and_bad_options_are_refused() {
    let store = memory_store(0);
    let m = BackgroundMigration::builder("m", store.clone(), store.clone())
        .open()
        .unwrap();
    assert_eq!(m.batch_size(), 10_000);
    assert!(matches!(
        BackgroundMigration::builder("m", store.clone(), store.clone())
            .batch_size(0)
            .open(),
        Err(MigrationError::InvalidOptions { .. })
    ));
    let store = memory_store(3);
    let m = BackgroundMigration::builder("m", store.clone(), store.clone())
        .transform(|mut r| {
            r.key.push(b'!');
            Ok(Some(r))
        })
        .open()
        .unwrap();
    assert!(matches!(
        m.run(),
        Err(MigrationError::TransformChangedKey { .. })
    ));
    let m = BackgroundMigration::builder("m2", store.clone(), store.clone())
        .transform(|_| Err(StepError::new("bad row")))
        .open()
        .unwrap();
    let err = m.run().unwrap_err();
    assert!(err.to_string().contains("user-000000") && err.to_string().contains("bad row"));
}

/// A source that advances the clock by one second per batch read.
struct SlowSource {
    inner: Arc<MemoryMigrationStore>,
    clock: Arc<ManualClock>,
}

impl MigrationSource for SlowSource {
    fn source_location(&self) -> String {
        "slow".into()
    }
    fn total_rows(&self) -> Result<Option<u64>, MigrationError> {
        self.inner.total_rows()
    }
    fn read_batch(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, MigrationError> {
        self.clock.advance(Duration::from_secs(1));
        self.inner.read_batch(after, limit)
    }
}

#[test]
fn progress_reports_done_total_rate_and_eta_from_the_injected_clock() {
    // Progress after 5 of 10 batches, at one batch (10 rows) per second.
    let store = memory_store(100);
    let clock = Arc::new(ManualClock::at_ms(1_000_000));
    let (tx, rx) = mpsc::channel();
    let m = Arc::new(Mutex::new(None::<Arc<BackgroundMigration>>));
    let m_in_hook = Arc::clone(&m);
    let migration = Arc::new(
        BackgroundMigration::builder(
            "users-v2",
            Arc::new(SlowSource {
                inner: store.clone(),
                clock: clock.clone(),
            }),
            store.clone(),
        )
        .batch_size(10)
        .clock(clock.clone())
        .on_batch(move |e| {
            if let BatchEvent::BatchCommitted { index: 4, .. } = e {
                let p = m_in_hook.lock().as_ref().unwrap().progress();
                tx.send(p).unwrap();
            }
        })
        .open()
        .unwrap(),
    );
    *m.lock() = Some(Arc::clone(&migration));
    migration.run().unwrap();
    let p = rx.recv().unwrap();
    assert_eq!(p.state, MigrationState::Running);
    assert_eq!((p.done, p.total, p.batches), (50, Some(100), 5));
    assert_eq!(p.rows_per_sec, Some(10.0));
    assert_eq!(p.eta, Some(Duration::from_secs(5)));
    let end = migration.progress();
    assert_eq!(
        (end.state, end.done, end.eta),
        (MigrationState::Complete, 100, Some(Duration::ZERO))
    );
    *m.lock() = None;
}

#[test]
fn throttling_keeps_the_rate_without_sleeping() {
    let store = memory_store(500);
    let clock = Arc::new(ManualClock::at_ms(0));
    let sleeper = Arc::new(ClockSleeper::new(clock.clone()));
    let migration = BackgroundMigration::builder("users-v2", store.clone(), store.clone())
        .batch_size(50)
        .max_rows_per_sec(100)
        .clock(clock.clone())
        .sleeper(sleeper.clone())
        .open()
        .unwrap();
    migration.run().unwrap();
    // 500 rows at 100 rows/s: batch k may start at k/2 s; the 11th (empty) read at 5 s.
    assert_eq!(sleeper.total(), Duration::from_secs(5));
    assert_eq!(sleeper.waits().len(), 10);
    assert!(sleeper
        .waits()
        .iter()
        .all(|w| *w == Duration::from_millis(500)));
    assert_eq!(store.new_rows().len(), 500);
}

#[test]
fn pause_resume_and_cancel_between_batches_then_resume_from_the_checkpoint() {
    let store = memory_store(100);
    let (tx, rx) = mpsc::channel();
    let control = Arc::new(Mutex::new(None));
    let control_in_hook = Arc::clone(&control);
    let migration = Arc::new(
        BackgroundMigration::builder("users-v2", store.clone(), store.clone())
            .batch_size(10)
            .on_batch(move |e| {
                let control: &Option<layout_core::migration::MigrationControl> =
                    &control_in_hook.lock();
                let control = control.as_ref().unwrap();
                match e {
                    BatchEvent::BatchCommitted { index: 2, .. } => control.pause(),
                    BatchEvent::BatchCommitted { index: 5, .. } => control.cancel(),
                    _ => {}
                }
                tx.send(e.clone()).unwrap();
            })
            .open()
            .unwrap(),
    );
    *control.lock() = Some(migration.control());
    let runner = {
        let m = Arc::clone(&migration);
        std::thread::spawn(move || m.run())
    };
    // Wait (on the hook's events, not on time) until it pauses.
    loop {
        if let BatchEvent::Paused { done } = rx.recv().unwrap() {
            assert_eq!(done, 30);
            break;
        }
    }
    assert_eq!(migration.progress().state, MigrationState::Paused);
    assert_eq!(
        store.checkpoint().unwrap().batches,
        3,
        "no batch while paused"
    );
    migration.control().resume();
    let err = runner.join().unwrap().unwrap_err();
    assert!(
        matches!(err, MigrationError::Cancelled { done: 60, .. }),
        "{err}"
    );
    assert_eq!(migration.progress().state, MigrationState::Interrupted);
    assert_eq!(store.checkpoint().unwrap().batches, 6);
    let first_run: Vec<BatchEvent> = rx.try_iter().collect();
    assert!(first_run.contains(&BatchEvent::Resumed));

    // The next run resumes at the checkpoint: batches 0..=5 are not read again.
    *control.lock() = Some(migration.control());
    let report = migration.run().unwrap();
    assert_eq!(
        (report.runs, report.batches, report.batches_this_run),
        (2, 11, 5)
    );
    let started: Vec<u64> = rx
        .try_iter()
        .filter_map(|e| match e {
            BatchEvent::BatchStarted { index } => Some(index),
            _ => None,
        })
        .collect();
    assert_eq!(started, [6, 7, 8, 9, 10]);
    assert_eq!(store.new_rows(), old_rows(100).collect::<Vec<_>>());
}

#[test]
fn writes_are_routed_old_only_then_both_then_new_only_and_survive_a_restart() {
    let lvm = prefinalized();
    let store = memory_store(30);
    let (tx, rx) = mpsc::channel();
    let routing = Arc::new(Mutex::new(None));
    let routing_in_hook = Arc::clone(&routing);
    let migration = BackgroundMigration::builder("users-v2", store.clone(), store.clone())
        .batch_size(10)
        .on_batch(move |e| {
            if matches!(e, BatchEvent::BatchStarted { .. }) {
                let r: &Option<layout_core::migration::DualWrite<MigFeature>> =
                    &routing_in_hook.lock();
                tx.send(r.as_ref().unwrap().target()).unwrap();
            }
        })
        .open()
        .unwrap();
    let dual = migration.dual_write(Arc::clone(&lvm), MigFeature::UsersV2);
    *routing.lock() = Some(dual.clone());
    assert_eq!(dual.target(), WriteTarget::OldOnly);
    {
        let scope = dual.begin();
        assert!(scope.writes_old() && !scope.writes_new() && !scope.needs_tombstone());
    }
    migration.run().unwrap();
    assert!(rx.try_iter().all(|t| t == WriteTarget::Both));
    // Copied, but the feature is not finalized yet: keep writing both.
    assert_eq!(dual.target(), WriteTarget::Both);
    assert!(
        !dual.begin().needs_tombstone(),
        "the copy is complete: no tombstones"
    );

    // A restart before finalization: the checkpoint says the migration started.
    let reopened = BackgroundMigration::builder("users-v2", store.clone(), store.clone())
        .open()
        .unwrap();
    assert!(reopened.is_started() && reopened.is_complete());
    assert_eq!(
        reopened
            .dual_write(Arc::clone(&lvm), MigFeature::UsersV2)
            .target(),
        WriteTarget::Both
    );
    lvm.finalize_step(MigFeature::UsersV2).unwrap();
    assert_eq!(dual.target(), WriteTarget::NewOnly);

    // Reset discards the copy (for a restart from scratch after a downgrade).
    let store = memory_store(30);
    let m = BackgroundMigration::builder("users-v2", store.clone(), store.clone())
        .batch_size(10)
        .open()
        .unwrap();
    m.run().unwrap();
    m.reset().unwrap();
    assert!(store.new_rows().is_empty() && store.checkpoint().is_none());
    assert!(!m.is_started());
    assert_eq!(
        m.dual_write(prefinalized(), MigFeature::UsersV2).target(),
        WriteTarget::OldOnly
    );
}

type Slot = Mutex<Option<Arc<UpgradeFinalizer<MigFeature, UserService>>>>;

/// The component: owns the migration its `OnFinalize` action runs.
struct UserService {
    migration: BackgroundMigration,
}

#[test]
fn as_an_on_finalize_action_the_feature_finalizes_when_the_copy_completes() {
    let lvm = prefinalized();
    let store = memory_store(100);
    let (tx, rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let service = Arc::new(UserService {
        migration: BackgroundMigration::builder("users-v2", store.clone(), store.clone())
            .batch_size(10)
            .on_batch(move |e| {
                // Hold the migration after batch 4 until the test has looked at status.
                if let BatchEvent::BatchCommitted { index: 4, .. } = e {
                    tx.send(()).unwrap();
                    go_rx.lock().recv().unwrap();
                }
            })
            .open()
            .unwrap(),
    });
    let registry = ActionRegistry::<MigFeature, UserService>::builder()
        .on_finalize(MigFeature::UsersV2, |s: &UserService, ctx| {
            s.migration.run_as_action(ctx)
        })
        .build()
        .unwrap();
    let finalizer = Arc::new(UpgradeFinalizer::new(Arc::clone(&lvm), registry));
    let handle = finalizer.start_finalize(None, "admin".into(), Arc::clone(&service));
    rx.recv().unwrap();
    let status = finalizer.report_status(Some("admin"), false).unwrap();
    assert_eq!(status.status, FinalizationStatus::FinalizationInProgress);
    let progress = status.progress.unwrap();
    assert_eq!((progress.done, progress.total), (50, Some(100)));
    assert_eq!(
        lvm.metadata_layout_version(),
        0,
        "not finalized while copying"
    );
    assert!(status
        .messages
        .iter()
        .any(|m| m.contains("Background migration users-v2 started at 0 of 100 rows")));
    go_tx.send(()).unwrap();
    handle.join().unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
    let status = finalizer.report_status(Some("admin"), false).unwrap();
    assert!(status
        .messages
        .iter()
        .any(|m| m.contains("Background migration users-v2 complete: 100 rows")));
    assert_eq!(store.new_rows().len(), 100);
}

#[test]
fn cancelling_the_finalization_stops_the_migration_and_a_later_finalize_resumes_it() {
    let lvm = prefinalized();
    let store = memory_store(100);
    let finalizer_slot: Arc<Slot> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&finalizer_slot);
    let service = Arc::new(UserService {
        migration: BackgroundMigration::builder("users-v2", store.clone(), store.clone())
            .batch_size(10)
            .on_batch(move |e| {
                if let BatchEvent::BatchCommitted { index: 3, .. } = e {
                    if let Some(f) = slot.lock().as_ref() {
                        f.cancel();
                    }
                }
            })
            .open()
            .unwrap(),
    });
    let registry = ActionRegistry::<MigFeature, UserService>::builder()
        .on_finalize(MigFeature::UsersV2, |s: &UserService, ctx| {
            s.migration.run_as_action(ctx)
        })
        .build()
        .unwrap();
    let finalizer = Arc::new(UpgradeFinalizer::new(Arc::clone(&lvm), registry));
    *finalizer_slot.lock() = Some(Arc::clone(&finalizer));
    let err = finalizer.finalize("admin", &service).unwrap_err();
    assert!(matches!(err, FinalizeError::Cancelled { .. }), "{err}");
    assert_eq!(lvm.metadata_layout_version(), 0);
    assert_eq!(store.checkpoint().unwrap().batches, 4);
    *finalizer_slot.lock() = None;
    finalizer.finalize("admin", &service).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
    let cp = store.checkpoint().unwrap();
    assert_eq!((cp.runs, cp.batches, cp.done), (2, 11, 100));
    assert_eq!(store.new_rows().len(), 100);
}
