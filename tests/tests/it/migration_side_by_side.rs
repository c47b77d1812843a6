//! Side-by-side migration: idempotent reruns, continuous mode catching updates made
//! mid-way and at the high-water mark, filter, replicas, history, deadline, bounded
//! concurrency and failures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layout_core::migration::{
    Entity, EntityDestination, EntitySource, EntityStamp, MemoryEntityStore, Page, PageRequest,
    SideBySideError, SideBySideMigration, SkipRule, Sleeper, StepError, StopReason, StopSignal,
};
use layout_core::{Clock, ManualClock};
use parking_lot::Mutex;
use serde_json::json;

fn job(i: u64, version: u64, updated_ms: u64) -> Entity {
    Entity::new(
        format!("job-{i:03}"),
        version,
        updated_ms,
        json!({"n": i, "v": version}),
    )
}

/// 50 jobs, job `i` updated at `1_000 + 10 * i`.
fn old_cluster() -> Arc<MemoryEntityStore> {
    let old = Arc::new(MemoryEntityStore::new());
    for i in 0..50 {
        old.upsert(job(i, 1, 1_000 + 10 * i));
    }
    old
}

/// What `new` should hold: the current version of every entity of `old`, transformed.
fn assert_in_sync(old: &MemoryEntityStore, new: &MemoryEntityStore, transformed: bool) {
    let want: BTreeMap<String, Entity> = old
        .current_entities()
        .into_iter()
        .map(|(id, mut e)| {
            if transformed {
                e.data["schema"] = json!(2);
            }
            (id, e)
        })
        .collect();
    assert_eq!(new.current_entities(), want);
}

#[allow(clippy::unnecessary_wraps)] // the shape of a transform
fn add_schema(mut e: Entity) -> Result<Entity, StepError> {
    e.data["schema"] = json!(2);
    Ok(e)
}

#[test]
fn a_rerun_copies_nothing_twice() {
    let (old, new) = (old_cluster(), Arc::new(MemoryEntityStore::new()));
    let run = || {
        SideBySideMigration::builder(old.clone(), new.clone())
            .page_size(7)
            .max_concurrent(3)
            .transform(add_schema)
            .build()
            .unwrap()
            .run_pass()
            .unwrap()
    };
    let first = run();
    assert_eq!((first.copied, first.skipped, first.failed), (50, 0, 0));
    assert_eq!((first.transformed, first.pages), (50, 8));
    assert_eq!(first.high_water_mark_ms, Some(1_490));
    assert_in_sync(&old, &new, true);
    let puts = new.puts();
    // A fresh migration (as after a restart, from the beginning): everything skipped.
    let second = run();
    assert_eq!(
        (second.copied, second.skipped, second.transformed),
        (0, 50, 0)
    );
    assert_eq!(new.puts(), puts, "nothing written again");
    assert_in_sync(&old, &new, true);
    // Skipping by update time works the same.
    let third = SideBySideMigration::builder(old.clone(), new.clone())
        .skip_rule(SkipRule::UpdateTime)
        .build()
        .unwrap()
        .run_pass()
        .unwrap();
    assert_eq!((third.copied, third.skipped), (0, 50));
}

type Change = Box<dyn FnOnce(&MemoryEntityStore) + Send>;

/// A source that changes the old cluster when it serves page `at` of the first pass.
struct ChangingSource {
    inner: Arc<MemoryEntityStore>,
    at: usize,
    lists: AtomicUsize,
    change: Mutex<Option<Change>>,
}

impl EntitySource for ChangingSource {
    fn location(&self) -> String {
        "changing".into()
    }
    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError> {
        let page = self.inner.list(request)?;
        if self.lists.fetch_add(1, Ordering::SeqCst) == self.at {
            if let Some(change) = self.change.lock().take() {
                change(&self.inner);
            }
        }
        Ok(page)
    }
    fn history(&self, id: &str) -> Result<Vec<Entity>, SideBySideError> {
        self.inner.history(id)
    }
}

/// A sleeper that runs one step of a script per wait, then stops the run.
struct ScriptedSleeper {
    steps: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    stop: StopSignal,
}

impl std::fmt::Debug for ScriptedSleeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptedSleeper")
    }
}

impl Sleeper for ScriptedSleeper {
    fn sleep(&self, _: Duration) {
        let mut steps = self.steps.lock();
        if steps.is_empty() {
            self.stop.stop();
        } else {
            (steps.remove(0))();
        }
    }
}

#[test]
fn continuous_mode_picks_up_updates_made_mid_way_and_exactly_at_the_high_water_mark() {
    for rule in [SkipRule::Version, SkipRule::UpdateTime] {
        let old = old_cluster();
        let new = Arc::new(MemoryEntityStore::new());
        let source = Arc::new(ChangingSource {
            inner: old.clone(),
            at: 2,
            lists: AtomicUsize::new(0),
            // While the first pass reads page 3 (entities 20..30): update one already
            // copied (job-003) and one not reached yet (job-045), and add a new one.
            change: Mutex::new(Some(Box::new(|old: &MemoryEntityStore| {
                old.upsert(job(3, 2, 1_495));
                old.upsert(job(45, 2, 1_496));
                old.upsert(job(100, 1, 1_497));
            }))),
        });
        let stop = StopSignal::new();
        let old_in_script = old.clone();
        let old_in_script2 = old.clone();
        let sleeper = Arc::new(ScriptedSleeper {
            steps: Mutex::new(vec![
                // Between passes 1 and 2: updates in the very millisecond of the mark
                // (1_497, the last update seen): one to an entity already copied, one new
                // entity whose id sorts before the mark's.
                Box::new(move || {
                    old_in_script.upsert(job(100, 2, 1_497));
                    old_in_script.upsert(job(0, 2, 1_497));
                }),
                // Between passes 2 and 3: a later update.
                Box::new(move || old_in_script2.upsert(job(7, 2, 2_000))),
            ]),
            stop: stop.clone(),
        });
        let migration = SideBySideMigration::builder(source, new.clone())
            .page_size(10)
            .skip_rule(rule)
            .transform(add_schema)
            .sleeper(sleeper)
            .build()
            .unwrap();
        let report = migration.run_continuous(&stop).unwrap();
        assert_eq!(report.stopped, Some(StopReason::Stopped));
        assert_eq!(report.passes, 3, "{rule:?}");
        assert_eq!(report.failed, 0);
        assert_eq!(report.high_water_mark_ms, Some(2_000));
        assert_in_sync(&old, &new, true);
        assert_eq!(
            new.get("job-000").unwrap().version,
            2,
            "{rule:?}: the update at the mark"
        );
        assert_eq!(
            new.get("job-100").unwrap().version,
            2,
            "{rule:?}: the update at the mark"
        );
    }
}

#[test]
fn only_authoritative_filtered_entities_are_copied_and_the_report_counts_the_rest() {
    let old = old_cluster();
    for i in 0..5 {
        old.add_replica(job(i, 1, 1_000 + 10 * i));
    }
    let new = Arc::new(MemoryEntityStore::new());
    let report = SideBySideMigration::builder(old.clone(), new.clone())
        .page_size(8)
        .filter(|e| e.data["n"].as_u64().is_some_and(|n| n % 2 == 0))
        .build()
        .unwrap()
        .run_pass()
        .unwrap();
    assert_eq!(report.replicas, 5);
    assert_eq!(report.filtered, 25);
    assert_eq!(report.copied, 25);
    assert_eq!(new.current_entities().len(), 25);
    assert!(new.current_entities().values().all(|e| e.authoritative));
    assert_eq!(report.high_water_mark_ms, Some(1_490));
}

#[test]
fn on_request_every_version_is_copied_in_order() {
    let old = Arc::new(MemoryEntityStore::new());
    for v in 1..=4 {
        old.upsert(job(1, v, 100 * v));
    }
    old.upsert(job(2, 1, 150));
    let new = Arc::new(MemoryEntityStore::new());
    // The destination already has version 1 of job-001.
    new.upsert(job(1, 1, 100));
    let report = SideBySideMigration::builder(old.clone(), new.clone())
        .with_history(true)
        .build()
        .unwrap()
        .run_pass()
        .unwrap();
    assert_eq!(report.copied, 4, "versions 2, 3, 4 of job-001 and job-002");
    let versions: Vec<u64> = new.versions("job-001").iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}

/// A destination that advances the clock on each put, and fails for one id.
struct SlowDestination {
    inner: Arc<MemoryEntityStore>,
    clock: Arc<ManualClock>,
    fail_id: &'static str,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl EntityDestination for SlowDestination {
    fn location(&self) -> String {
        "slow".into()
    }
    fn current(&self, id: &str) -> Result<Option<EntityStamp>, SideBySideError> {
        self.inner.current(id)
    }
    fn put(&self, entity: &Entity) -> Result<(), SideBySideError> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        std::thread::yield_now();
        self.clock.advance(Duration::from_millis(10));
        let result = if entity.id == self.fail_id {
            Err(SideBySideError::Destination {
                location: "slow".into(),
                operation: "put",
                reason: "disk full".into(),
            })
        } else {
            self.inner.put(entity)
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

#[test]
fn a_deadline_stops_the_copy_and_the_mark_never_passes_what_was_not_copied() {
    let old = old_cluster();
    let clock = Arc::new(ManualClock::at_ms(0));
    let new = Arc::new(MemoryEntityStore::new());
    let dest = Arc::new(SlowDestination {
        inner: new.clone(),
        clock: clock.clone(),
        fail_id: "job-005",
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    });
    let build = || {
        SideBySideMigration::builder(old.clone(), dest.clone())
            .page_size(10)
            .max_concurrent(4)
            .clock(clock.clone())
            .deadline(clock.now() + Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let first = build().run_pass().unwrap();
    assert_eq!(first.stopped, Some(StopReason::Deadline));
    assert!(first.copied >= 15 && first.copied < 49, "{first:?}");
    assert_eq!(first.failed, 1);
    assert_eq!(first.failures[0].id, "job-005");
    assert!(first.failures[0].reason.contains("disk full"));
    // The mark stays before the failed entity, so it is retried.
    assert_eq!(first.high_water_mark_ms, Some(1_040));
    assert!(dest.max_in_flight.load(Ordering::SeqCst) <= 4);
    // Reruns with fresh deadlines (and the failure gone) finish the job, idempotently.
    let dest_ok = Arc::new(SlowDestination {
        inner: new.clone(),
        clock: clock.clone(),
        fail_id: "none",
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    });
    let mut mark = first.high_water_mark_ms.unwrap();
    for _ in 0..10 {
        let r = SideBySideMigration::builder(old.clone(), dest_ok.clone())
            .page_size(10)
            .max_concurrent(4)
            .clock(clock.clone())
            .deadline(clock.now() + Duration::from_millis(200))
            .start_from_ms(mark)
            .build()
            .unwrap()
            .run_pass()
            .unwrap();
        mark = r.high_water_mark_ms.unwrap();
        if r.stopped.is_none() {
            break;
        }
    }
    assert_in_sync(&old, &new, false);
    assert_eq!(mark, 1_490);
}

#[test]
fn bad_options_are_refused() {
    let s = Arc::new(MemoryEntityStore::new());
    assert!(matches!(
        SideBySideMigration::builder(s.clone(), s.clone())
            .page_size(0)
            .build(),
        Err(SideBySideError::InvalidOptions(_))
    ));
    assert!(SideBySideMigration::builder(s.clone(), s)
        .max_concurrent(0)
        .build()
        .is_err());
}
