//! Online migrations that resume themselves (issue 16): a finalization stopped in the
//! middle of an `OnFinalize` background migration (a simulated crash, as a kill would)
//! is resumed at the next start-up by `UpgradeFinalizer::resume_interrupted`, as the
//! client that started it, unless an operator cancelled it; the record that says so is
//! in the VERSION file. The migration's figures survive the restart: its total is known
//! before the first batch of the new run, and its elapsed time leaves the downtime out.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layout_core::clock::{ClockSleeper, ManualClock};
use layout_core::crash_point::SimulatedCrash;
use layout_core::finalizer::StartupResume;
use layout_core::migration::{
    BackgroundMigration, BatchEvent, MemoryMigrationStore, MigrationState, Row,
};
use layout_core::{
    ActionError, ActionRegistry, FinalizationStatus, LayoutFeature, LayoutVersionManager,
    ManagerOptions, MemoryStorage, StartIntent, UpgradeFinalizer,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum Feature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "An index filled by a background migration")]
    Index,
}

const ROWS: u32 = 50;
const BATCH: usize = 10;
/// Each batch takes this long on the manual clock (the hook advances it).
const BATCH_TIME: Duration = Duration::from_millis(100);
/// The component is down this long between the crash and the restart.
const DOWNTIME: Duration = Duration::from_secs(3600);

/// One process of the component: its migration (the component the actions run on).
struct Process {
    lvm: Arc<LayoutVersionManager<Feature>>,
    finalizer: UpgradeFinalizer<Feature, BackgroundMigration>,
    migration: BackgroundMigration,
}

/// Starts a process on `storage` and `store`; its migration "crashes" (a simulated
/// kill, unwinding through the finalizer) once `crash_after` batches of this run are
/// committed, if given.
fn start(
    storage: &Arc<MemoryStorage>,
    store: &Arc<MemoryMigrationStore>,
    clock: &Arc<ManualClock>,
    crash_after: Option<u64>,
) -> Process {
    let options = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm =
        Arc::new(LayoutVersionManager::<Feature>::open(Arc::clone(storage), options).unwrap());
    let registry = ActionRegistry::<Feature, BackgroundMigration>::builder()
        .on_finalize(Feature::Index, |m: &BackgroundMigration, ctx| {
            m.run_as_action(ctx)
        })
        .build()
        .unwrap();
    let finalizer = UpgradeFinalizer::new(Arc::clone(&lvm), registry).with_clock(clock.clone());
    let committed = Arc::new(AtomicU64::new(0));
    let hook_clock = Arc::clone(clock);
    let migration = BackgroundMigration::builder("index", store.clone(), store.clone())
        .batch_size(BATCH)
        .clock(clock.clone())
        .sleeper(Arc::new(ClockSleeper::new(clock.clone())))
        .on_batch(move |event| match event {
            BatchEvent::BatchStarted { .. } => hook_clock.advance(BATCH_TIME),
            BatchEvent::BatchCommitted { .. } => {
                let n = committed.fetch_add(1, Ordering::SeqCst) + 1;
                if crash_after == Some(n) {
                    SimulatedCrash {
                        point: "test::killed",
                        hit: 1,
                    }
                    .raise();
                }
            }
            _ => {}
        })
        .open()
        .unwrap();
    Process {
        lvm,
        finalizer,
        migration,
    }
}

fn rows() -> Arc<MemoryMigrationStore> {
    let store = Arc::new(MemoryMigrationStore::new());
    for i in 0..ROWS {
        store.insert_old(Row::new(format!("k{i:04}"), format!("v{i}"), u64::from(i)));
    }
    store
}

/// Finalizes as `client` until the simulated crash; the process is gone afterwards.
fn finalize_until_crash(process: Process, client: &str) {
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        process.finalizer.finalize(client, &process.migration)
    }));
    let payload = crashed.expect_err("the simulated kill stops the finalization");
    assert!(SimulatedCrash::is_payload(&*payload));
    assert_eq!(process.lvm.metadata_layout_version(), 0);
    drop(process); // the process is gone: a restart opens everything afresh
}

#[test]
fn a_finalization_killed_mid_migration_is_resumed_at_start_up_as_its_client() {
    let storage = Arc::new(MemoryStorage::new());
    let store = rows();
    let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
    finalize_until_crash(start(&storage, &store, &clock, Some(2)), "ops@admin-1");

    // What the VERSION file says: who, towards what, and which action was running.
    let restarted = start(&storage, &store, &clock, None);
    let record = restarted.lvm.state().finalization.expect("a record");
    assert_eq!(record.client_id, "ops@admin-1");
    assert_eq!(record.target_version, 1);
    assert_eq!(record.running_feature.as_deref(), Some("Index"));
    assert!(record.is_interrupted());

    // Nobody sends finalize again: start-up resumes it.
    let resumed = restarted.finalizer.resume_interrupted(&restarted.migration);
    let StartupResume::Resumed(outcome) = resumed else {
        panic!("expected a resume, got {resumed:?}");
    };
    assert_eq!(outcome.unwrap().finalized(), [Feature::Index]);
    assert_eq!(restarted.lvm.metadata_layout_version(), 1);
    assert_eq!(store.new_rows().len(), ROWS as usize);
    let status = restarted.finalizer.report_status(None, false).unwrap();
    assert_eq!(status.status, FinalizationStatus::FinalizationDone);
    assert!(status.resumed_at_startup);
    assert_eq!(status.client_id.as_deref(), Some("ops@admin-1"));
    assert_eq!(status.resumes, 1);
    let record = restarted.lvm.state().finalization.unwrap();
    assert!(record.finished_at_ms.is_some());
    assert_eq!(record.running_feature, None);
    let finalized_by = restarted
        .lvm
        .state()
        .history
        .last()
        .unwrap()
        .client_id
        .clone();
    assert_eq!(
        finalized_by, "ops@admin-1",
        "recorded as the client that started it"
    );

    // Once done, the next start has nothing to resume.
    let again = start(&storage, &store, &clock, None);
    assert!(matches!(
        again.finalizer.resume_interrupted(&again.migration),
        StartupResume::NothingToResume
    ));
}

#[test]
fn a_cancelled_finalization_is_not_resumed_at_start_up_until_an_operator_finalizes() {
    let storage = Arc::new(MemoryStorage::new());
    let store = rows();
    let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
    let first = start(&storage, &store, &clock, None);
    // The operator cancels while the migration runs (held between batches by a pause,
    // so the cancel lands mid-migration): the migration stops, and the cancel is stored.
    let control = first.migration.control();
    control.pause();
    let cancelled = std::thread::scope(|scope| {
        let run = scope.spawn(|| first.finalizer.finalize("ops", &first.migration));
        while first.migration.progress().state != MigrationState::Paused {
            assert!(!run.is_finished(), "the run ended before it paused");
            std::thread::sleep(Duration::from_millis(1));
        }
        first.finalizer.cancel_by("oncall").unwrap();
        run.join().unwrap()
    });
    assert!(
        matches!(cancelled, Err(layout_core::FinalizeError::Cancelled { .. })),
        "{cancelled:?}"
    );
    drop(first);

    // Restarted: not resumed, and it says who cancelled.
    let restarted = start(&storage, &store, &clock, None);
    let record = restarted.lvm.state().finalization.unwrap();
    assert_eq!(
        record.cancelled.as_ref().map(|c| c.client_id.as_str()),
        Some("oncall")
    );
    assert!(!record.is_interrupted());
    match restarted.finalizer.resume_interrupted(&restarted.migration) {
        StartupResume::Cancelled {
            client_id,
            cancelled_by,
            ..
        } => {
            assert_eq!(client_id, "ops");
            assert_eq!(cancelled_by, "oncall");
        }
        other => panic!("expected the cancel to hold, got {other:?}"),
    }
    assert_eq!(restarted.lvm.metadata_layout_version(), 0);
    assert!(restarted.migration.progress().done < u64::from(ROWS));

    // The operator finalizes again: it continues and the cancel is lifted.
    restarted
        .finalizer
        .finalize("ops", &restarted.migration)
        .unwrap();
    assert_eq!(restarted.lvm.metadata_layout_version(), 1);
    assert_eq!(restarted.lvm.state().finalization.unwrap().cancelled, None);
}

#[test]
fn a_failed_action_is_not_an_interruption_and_waits_for_an_operator() {
    let options = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let storage = Arc::new(MemoryStorage::new());
    let open = || {
        let lvm = Arc::new(
            LayoutVersionManager::<Feature>::open(Arc::clone(&storage), options.clone()).unwrap(),
        );
        let registry = ActionRegistry::<Feature, ()>::builder()
            .on_finalize(Feature::Index, |(), ctx| {
                // A long action reports first (the record then names it), then fails.
                ctx.report_progress(0, Some(10));
                Err(ActionError::new("disk full"))
            })
            .build()
            .unwrap();
        (Arc::clone(&lvm), UpgradeFinalizer::new(lvm, registry))
    };
    let (_, finalizer) = open();
    assert!(finalizer.finalize("ops", &()).is_err());
    drop(finalizer);
    let (lvm, finalizer) = open();
    let record = lvm.state().finalization.expect("the run is recorded");
    assert_eq!(
        record.running_feature, None,
        "the action ended (in an error)"
    );
    assert!(matches!(
        finalizer.resume_interrupted(&()),
        StartupResume::NothingToResume
    ));
}

#[test]
fn progress_survives_a_restart_total_at_once_and_elapsed_without_the_downtime() {
    let storage = Arc::new(MemoryStorage::new());
    let store = rows();
    let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
    finalize_until_crash(start(&storage, &store, &clock, Some(2)), "ops");
    clock.advance(DOWNTIME);

    // Before the resumed run reads a batch: the total and the elapsed time are known.
    let restarted = start(&storage, &store, &clock, None);
    let before = restarted.migration.progress();
    assert_eq!(before.state, MigrationState::Interrupted);
    assert_eq!(before.total, Some(u64::from(ROWS)));
    assert_eq!(before.done, 2 * BATCH as u64);
    assert_eq!(before.elapsed, 2 * BATCH_TIME, "two batches of active time");

    let StartupResume::Resumed(outcome) =
        restarted.finalizer.resume_interrupted(&restarted.migration)
    else {
        panic!("expected a resume");
    };
    outcome.unwrap();
    let after = restarted.migration.progress();
    assert_eq!(after.state, MigrationState::Complete);
    assert_eq!(after.total, Some(u64::from(ROWS)));
    // 50 rows in batches of 10: 5 full batches and an empty one that completes the copy.
    assert_eq!(after.batches, 6);
    assert_eq!(
        after.elapsed,
        6 * BATCH_TIME,
        "every batch's time, none of the hour the component was down"
    );
}
