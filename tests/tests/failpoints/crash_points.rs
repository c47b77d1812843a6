//! Crash points inside upgrade work (`layout_core::crash_point`): an action's own and a
//! background migration's batch boundaries are observed in order, and a crash simulated
//! at one of them stops the finalization as a kill would (the finalizer does not turn it
//! into an action error), leaving the MLV where it was and the work resumable.
//!
//! The observer is process-global: the tests here take one lock and record only the
//! crash points passed on their own thread, so they give the same results under
//! `cargo test` (threads) and cargo-nextest (processes).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, ThreadId};

use layout_core::crash_point::{self, SimulatedCrash};
use layout_core::migration::{BackgroundMigration, MemoryMigrationStore, Row};
use layout_core::migration::{
    BACKGROUND_CRASH_POINTS as CRASH_POINTS, CRASH_BATCH_COMMITTED, CRASH_BATCH_REPORTED,
    CRASH_BEFORE_BATCH, CRASH_BEFORE_FINISH, CRASH_FINISHED,
};
use layout_core::{
    ActionRegistry, LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage,
    StartIntent, UpgradeFinalizer,
};
use parking_lot::Mutex;

/// One observing test at a time in this process.
static OBSERVING: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum Feature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Rows rewritten to the new format")]
    Rewritten,
}

/// The crash points passed on `thread`, in order; a crash at the `crash_at`-th pass of
/// `point` (1-based) when given.
struct Recorder {
    seen: Arc<Mutex<Vec<&'static str>>>,
    _guard: crash_point::ObserverGuard,
}

impl Recorder {
    fn install(thread: ThreadId, crash_at: Option<(&'static str, usize)>) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let guard = crash_point::observe(move |name| {
            if thread::current().id() != thread {
                return;
            }
            let hit = {
                let mut log = log.lock();
                log.push(name);
                log.iter().filter(|n| **n == name).count()
            };
            if crash_at == Some((name, hit)) {
                SimulatedCrash { point: name, hit }.raise();
            }
        })
        .unwrap();
        Self {
            seen,
            _guard: guard,
        }
    }

    fn seen(&self) -> Vec<&'static str> {
        self.seen.lock().clone()
    }
}

fn rows(n: u32) -> Arc<MemoryMigrationStore> {
    let store = Arc::new(MemoryMigrationStore::new());
    for i in 0..n {
        store.insert_old(Row::new(format!("k{i:04}"), format!("v{i}"), u64::from(i)));
    }
    store
}

fn migration(store: &Arc<MemoryMigrationStore>) -> BackgroundMigration {
    BackgroundMigration::builder("rewrite", store.clone(), store.clone())
        .batch_size(10)
        .open()
        .unwrap()
}

#[test]
fn a_background_migration_passes_its_crash_points_at_every_batch_boundary_in_order() {
    let _one = OBSERVING.lock();
    let store = rows(25);
    let recorder = Recorder::install(thread::current().id(), None);
    let report = migration(&store).run().unwrap();
    let seen = recorder.seen();
    assert_eq!(report.batches, 3, "25 rows in batches of 10");
    let per_batch = [
        CRASH_BEFORE_BATCH,
        CRASH_BATCH_COMMITTED,
        CRASH_BATCH_REPORTED,
    ];
    let mut expected: Vec<&str> = per_batch.repeat(3);
    expected.extend([CRASH_BEFORE_FINISH, CRASH_FINISHED]);
    assert_eq!(seen, expected);
    assert!(seen.iter().all(|p| CRASH_POINTS.contains(p)));
}

#[test]
fn a_crash_simulated_inside_an_action_stops_finalization_there_and_a_restart_finishes() {
    let _one = OBSERVING.lock();
    let store = rows(25);
    let storage = Arc::new(MemoryStorage::new());
    let open = || {
        let options = ManagerOptions::default()
            .with_start_intent(StartIntent::Init)
            .with_initial_layout_version(0);
        let lvm =
            Arc::new(LayoutVersionManager::<Feature>::open(Arc::clone(&storage), options).unwrap());
        let registry = ActionRegistry::<Feature, BackgroundMigration>::builder()
            .on_finalize(Feature::Rewritten, |m: &BackgroundMigration, ctx| {
                ctx.crash_point("rewrite::started");
                m.run_as_action(ctx)
            })
            .build()
            .unwrap();
        (Arc::clone(&lvm), UpgradeFinalizer::new(lvm, registry))
    };

    // The second batch's commit is durable when the process "dies".
    let (lvm, finalizer) = open();
    let recorder = Recorder::install(thread::current().id(), Some((CRASH_BATCH_COMMITTED, 2)));
    let component = migration(&store);
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        finalizer.finalize("operator", &component)
    }));
    let payload = crashed.expect_err("the simulated crash unwinds through the finalizer");
    let crash = payload.downcast_ref::<SimulatedCrash>().copied();
    assert_eq!(
        crash,
        Some(SimulatedCrash {
            point: CRASH_BATCH_COMMITTED,
            hit: 2
        })
    );
    assert_eq!(
        recorder.seen(),
        [
            "finalize::started",
            "finalize::before_action",
            "rewrite::started",
            CRASH_BEFORE_BATCH,
            CRASH_BATCH_COMMITTED,
            CRASH_BATCH_REPORTED,
            CRASH_BEFORE_BATCH,
            CRASH_BATCH_COMMITTED,
        ]
    );
    assert_eq!(
        lvm.metadata_layout_version(),
        0,
        "the feature is not finalized"
    );
    drop(recorder);
    drop((finalizer, lvm, component));

    // A restart resumes the migration from its checkpoint and finishes.
    let (lvm, finalizer) = open();
    let component = migration(&store);
    finalizer.finalize("operator", &component).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
    let progress = component.progress();
    assert_eq!(progress.done, 25);
    assert_eq!(progress.runs, 2, "the second run resumed the first");
    assert_eq!(store.new_rows().len(), 25);
}
