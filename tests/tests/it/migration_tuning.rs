//! A background migration's batch size and throttle changed while it runs (issue 16):
//! through `MigrationControl::set_tuning` and through the admin API
//! (`AdminService::set_migration_settings`), from the next batch on. The throttle's waits
//! are observed on a `ClockSleeper` (a manual clock, no real sleeping, no timing).

use std::sync::Arc;
use std::time::Duration;

use layout_core::admin::{
    AdminService, CancelFinalizationParams, ErrorCode, MigrationSettingsParams,
};
use layout_core::clock::{ClockSleeper, ManualClock};
use layout_core::migration::{
    BackgroundMigration, BatchEvent, MemoryMigrationStore, MigrationControl, MigrationTuning, Row,
    MIN_LATENCY_DELAY,
};
use layout_core::{
    ActionRegistry, LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage,
    StartIntent, UpgradeFinalizer,
};
use parking_lot::Mutex;

fn rows(n: u32) -> Arc<MemoryMigrationStore> {
    let store = Arc::new(MemoryMigrationStore::new());
    for i in 0..n {
        store.insert_old(Row::new(format!("k{i:04}"), format!("v{i}"), u64::from(i)));
    }
    store
}

/// A migration of `store` in batches of `batch`, on a manual clock; `on_commit(control,
/// index)` runs after each committed batch (in the migration's thread).
fn migration(
    store: &Arc<MemoryMigrationStore>,
    batch: usize,
    sleeper: &Arc<ClockSleeper>,
    clock: &Arc<ManualClock>,
    on_commit: impl Fn(&MigrationControl, u64) + Send + Sync + 'static,
) -> BackgroundMigration {
    let control: Arc<Mutex<Option<MigrationControl>>> = Arc::new(Mutex::new(None));
    let hook_control = Arc::clone(&control);
    let migration = BackgroundMigration::builder("tuned", store.clone(), store.clone())
        .batch_size(batch)
        .clock(clock.clone())
        .sleeper(sleeper.clone())
        .on_batch(move |event| {
            if let BatchEvent::BatchCommitted { index, .. } = event {
                if let Some(control) = &*hook_control.lock() {
                    on_commit(control, *index);
                }
            }
        })
        .open()
        .unwrap();
    *control.lock() = Some(migration.control());
    migration
}

fn clock_and_sleeper() -> (Arc<ManualClock>, Arc<ClockSleeper>) {
    let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
    let sleeper = Arc::new(ClockSleeper::new(clock.clone()));
    (clock, sleeper)
}

#[test]
fn a_batch_size_changed_while_running_applies_from_the_next_batch() {
    let store = rows(50);
    let (clock, sleeper) = clock_and_sleeper();
    let m = migration(&store, 20, &sleeper, &clock, |control, index| {
        if index == 0 {
            control.set_tuning(MigrationTuning::new(5)).unwrap();
        }
    });
    let report = m.run().unwrap();
    // 20 rows, then 30 in batches of 5 (6 full ones and the empty one that completes).
    assert_eq!((report.done, report.batches), (50, 8));
    assert_eq!(m.progress().tuning.batch_size, 5);
    assert_eq!(m.batch_size(), 5);
    assert_eq!(store.new_rows().len(), 50);
}

#[test]
fn a_rate_ceiling_set_while_running_paces_the_batches_after_it() {
    let store = rows(60);
    let (clock, sleeper) = clock_and_sleeper();
    let m = migration(&store, 10, &sleeper, &clock, |control, index| {
        if index == 1 {
            let tuning = control.tuning().with_max_rows_per_sec(Some(100));
            control.set_tuning(tuning).unwrap();
        }
    });
    let report = m.run().unwrap();
    assert_eq!(report.batches, 7, "6 full batches and the empty one");
    // No wait before the ceiling; after it, 10 rows at 100 rows/s: 100 ms before each
    // batch but the first under it (batches 3 to 6 of 0..=6).
    assert_eq!(sleeper.waits(), vec![Duration::from_millis(100); 4]);
}

#[test]
fn a_latency_budget_backs_off_while_latency_is_over_it_and_recovers_after() {
    let store = rows(80);
    let (clock, sleeper) = clock_and_sleeper();
    let m = migration(&store, 10, &sleeper, &clock, |control, index| {
        // The component's requests: slow (50 ms) during the first three batches, fast
        // (1 ms) after.
        let latency = if index < 3 {
            Duration::from_millis(50)
        } else {
            Duration::from_millis(1)
        };
        for _ in 0..20 {
            control.observe_latency(latency);
        }
    });
    m.control()
        .set_tuning(MigrationTuning::new(10).with_latency_budget(Some(Duration::from_millis(10))))
        .unwrap();
    let report = m.run().unwrap();
    assert_eq!(report.done, 80);
    let ms = Duration::from_millis;
    assert_eq!(MIN_LATENCY_DELAY, ms(5));
    // Doubling from the minimum while over the budget, then 5 ms shorter per batch once
    // within it, down to none.
    assert_eq!(
        sleeper.waits(),
        [ms(5), ms(10), ms(20), ms(15), ms(10), ms(5)]
    );
    assert_eq!(m.progress().latency_delay, Duration::ZERO);
}

#[test]
fn settings_that_cannot_work_are_refused_and_change_nothing() {
    let store = rows(1);
    let (clock, sleeper) = clock_and_sleeper();
    let m = migration(&store, 10, &sleeper, &clock, |_, _| {});
    let control = m.control();
    let zero_batch = control.set_tuning(MigrationTuning::new(0)).unwrap_err();
    assert!(zero_batch.contains("batch size is 0"), "{zero_batch}");
    let zero_rate = control
        .set_tuning(MigrationTuning::new(5).with_max_rows_per_sec(Some(0)))
        .unwrap_err();
    assert!(zero_rate.contains("0 rows per second"), "{zero_rate}");
    let zero_budget = control
        .set_tuning(MigrationTuning::new(5).with_latency_budget(Some(Duration::ZERO)))
        .unwrap_err();
    assert!(zero_budget.contains("latency budget is 0"), "{zero_budget}");
    assert_eq!(control.tuning(), MigrationTuning::new(10));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum Feature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Indexed")]
    Indexed,
}

fn admin_with(
    migration: &BackgroundMigration,
) -> (AdminService, Arc<LayoutVersionManager<Feature>>) {
    admin_on(migration, Arc::new(MemoryStorage::new()))
}

/// The admin service of a component whose layout state is in `storage`.
fn admin_on(
    migration: &BackgroundMigration,
    storage: Arc<MemoryStorage>,
) -> (AdminService, Arc<LayoutVersionManager<Feature>>) {
    let options = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm = Arc::new(LayoutVersionManager::<Feature>::open(storage, options).unwrap());
    let finalizer = Arc::new(UpgradeFinalizer::new(
        Arc::clone(&lvm),
        ActionRegistry::<Feature, ()>::empty(),
    ));
    let progress = Arc::new(Mutex::new(migration.progress()));
    let service = AdminService::new(finalizer, Arc::new(())).with_migration(
        "tuned",
        migration.control(),
        move || Some(progress.lock().clone()),
    );
    (service, lvm)
}

#[test]
fn the_admin_api_shows_and_changes_a_migrations_settings() {
    let store = rows(5);
    let (clock, sleeper) = clock_and_sleeper();
    let m = migration(&store, 10, &sleeper, &clock, |_, _| {});
    let (admin, _) = admin_with(&m);
    let listed = admin.migrations();
    assert_eq!(listed.migrations.len(), 1);
    assert_eq!(listed.migrations[0].name, "tuned");
    assert_eq!(listed.migrations[0].batch_size, 10);

    let view = admin
        .set_migration_settings(
            &MigrationSettingsParams::new()
                .with_batch_size(3)
                .with_max_rows_per_sec(500)
                .with_latency_budget_ms(20),
        )
        .unwrap();
    assert_eq!(
        (
            view.batch_size,
            view.max_rows_per_sec,
            view.latency_budget_ms
        ),
        (3, Some(500), Some(20))
    );
    assert_eq!(
        m.control().tuning(),
        MigrationTuning::new(3)
            .with_max_rows_per_sec(Some(500))
            .with_latency_budget(Some(Duration::from_millis(20)))
    );
    // 0 lifts a limit; absent fields stay.
    let view = admin
        .set_migration_settings(&MigrationSettingsParams::new().with_max_rows_per_sec(0))
        .unwrap();
    assert_eq!(
        (
            view.batch_size,
            view.max_rows_per_sec,
            view.latency_budget_ms
        ),
        (3, None, Some(20))
    );

    let refused = admin
        .set_migration_settings(&MigrationSettingsParams::new().with_batch_size(0))
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidArgument);
    assert!(
        refused.message().contains("batch size is 0"),
        "{}",
        refused.message()
    );
    let unknown = admin
        .set_migration_settings(&MigrationSettingsParams::new().with_name("other"))
        .unwrap_err();
    assert_eq!(unknown.code(), ErrorCode::NotFound);
    assert!(unknown.message().contains("tuned"), "{}", unknown.message());
    assert_eq!(
        m.control().tuning().batch_size,
        3,
        "nothing changed by a refusal"
    );

    // The migration picks the settings up when it runs.
    let report = m.run().unwrap();
    assert_eq!(report.batches, 2, "5 rows in batches of 3");
}

#[test]
fn a_component_without_migrations_refuses_settings_clearly() {
    let options = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm =
        Arc::new(LayoutVersionManager::<Feature>::open(MemoryStorage::new(), options).unwrap());
    let finalizer = Arc::new(UpgradeFinalizer::new(
        lvm,
        ActionRegistry::<Feature, ()>::empty(),
    ));
    let admin = AdminService::new(finalizer, Arc::new(()));
    assert!(admin.migrations().migrations.is_empty());
    let refused = admin
        .set_migration_settings(&MigrationSettingsParams::new().with_batch_size(5))
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::NotSupported);
}

#[test]
fn cancel_finalization_on_the_admin_api_is_stored_with_its_client() {
    let store = rows(1);
    let (clock, sleeper) = clock_and_sleeper();
    let m = migration(&store, 10, &sleeper, &clock, |_, _| {});
    let storage = Arc::new(MemoryStorage::new());
    let (admin, lvm) = admin_on(&m, Arc::clone(&storage));
    // Nothing unfinished: nothing to store, and the answer says no cancel is stored.
    let answer = admin
        .cancel_finalization(&CancelFinalizationParams::new("oncall"))
        .unwrap();
    assert_eq!(lvm.state().finalization, None);
    assert_eq!(answer.cancelled_by, None);
    // A finalization left unfinished on disk (as after a crash), then a restart.
    drop((admin, lvm));
    storage.replace(storage.snapshot().map(|mut s| {
        s.finalization = Some(layout_core::state::FinalizationRecord::new("ops", 1, 5));
        s
    }));
    let (admin, lvm) = admin_on(&m, storage);
    let answer = admin
        .cancel_finalization(&CancelFinalizationParams::new("oncall"))
        .unwrap();
    let cancel = lvm.state().finalization.unwrap().cancelled.unwrap();
    assert_eq!(cancel.client_id, "oncall");
    assert_eq!(answer.cancelled_by.as_deref(), Some("oncall"));
    let empty = admin
        .cancel_finalization(&CancelFinalizationParams::new(" "))
        .unwrap_err();
    assert_eq!(empty.code(), ErrorCode::InvalidArgument);
}
