//! Side-by-side migration: idempotent reruns, continuous mode catching updates made
//! mid-way and at the high-water mark, deletes propagated without resurrection, the
//! overlap window covering clock skew between merged sources (and its absence missing a
//! late commit), a persisted mark resumed after a crash at every crash point, a newer
//! destination entity never overwritten, the cut-over check, filter, replicas, history,
//! deadline, bounded concurrency and failures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layout_core::clock::{Clock, ManualClock, Sleeper};
use layout_core::crash_point::{self, SimulatedCrash};
use layout_core::migration::SIDE_BY_SIDE_CRASH_POINTS as CRASH_POINTS;
use layout_core::migration::{
    Entity, EntityDestination, EntitySource, FileHighWaterMark, IdPage, MemoryEntityStore,
    MergedSource, Page, PageRequest, PutOutcome, SideBySideError, SideBySideMigration, StopReason,
    StopSignal,
};
use layout_core::StepError;
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

/// What `new` should hold: the current live version of every entity of `old`,
/// transformed.
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
    assert_eq!(first.high_water_mark, Some(job(49, 1, 1_490).cursor()));
    assert_in_sync(&old, &new, true);
    let writes = new.writes();
    // A fresh migration (its mark lost, as after a restart without a mark store):
    // everything is offered again and skipped by the conditional writes.
    let second = run();
    assert_eq!((second.copied, second.skipped), (0, 50));
    assert_eq!(new.writes(), writes, "nothing written again");
    assert_in_sync(&old, &new, true);
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
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        EntitySource::scan(&*self.inner, after, limit)
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
    for window in [Duration::ZERO, Duration::from_millis(100)] {
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
            .overlap_window(window)
            .transform(add_schema)
            .sleeper(sleeper)
            .build()
            .unwrap();
        let report = migration.run_continuous(&stop).unwrap();
        assert_eq!(report.stopped, Some(StopReason::Stopped));
        assert_eq!(report.passes, 3, "{window:?}");
        assert_eq!(report.failed, 0);
        assert_eq!(report.high_water_mark, Some(job(7, 2, 2_000).cursor()));
        assert_in_sync(&old, &new, true);
        assert_eq!(new.get("job-000").unwrap().version, 2, "{window:?}");
        assert_eq!(new.get("job-100").unwrap().version, 2, "{window:?}");
        assert!(migration.compare().unwrap().agree);
    }
}

#[test]
fn deletes_propagate_and_a_deleted_entity_never_comes_back() {
    let (old, new) = (old_cluster(), Arc::new(MemoryEntityStore::new()));
    let migration = SideBySideMigration::builder(old.clone(), new.clone())
        .page_size(8)
        .overlap_window(Duration::from_secs(60))
        .transform(add_schema)
        .build()
        .unwrap();
    assert_eq!(migration.run_pass().unwrap().copied, 50);
    for i in 0..10 {
        old.delete(&format!("job-{i:03}"), 2, 2_000 + i);
    }
    let second = migration.run_pass().unwrap();
    assert_eq!((second.deleted, second.copied, second.failed), (10, 0, 0));
    assert_eq!(new.current_entities().len(), 40);
    assert!(new.get("job-003").is_none());
    // Passes re-reading the same interval (the window covers everything) resurrect
    // nothing; a copy of an old version offered late is refused by the tombstone.
    let third = migration.run_pass().unwrap();
    assert_eq!((third.copied, third.deleted, third.skipped), (0, 0, 50));
    assert_eq!(
        EntityDestination::write(&*new, &[job(3, 1, 1_030)]).unwrap(),
        [PutOutcome::NotNewer { held_version: 2 }]
    );
    assert!(new.get("job-003").is_none(), "resurrected");
    // Re-created in the source: copied again.
    old.upsert(job(3, 3, 3_000));
    assert_eq!(migration.run_pass().unwrap().copied, 1);
    assert_in_sync(&old, &new, true);
    let check = migration.compare().unwrap();
    assert!(check.agree, "{check:?}");
    assert_eq!(check.source_count, 41);

    // Deletes left alone on request: counted, not applied.
    let kept = Arc::new(MemoryEntityStore::new());
    let report = SideBySideMigration::builder(old.clone(), kept.clone())
        .propagate_deletes(false)
        .build()
        .unwrap()
        .run_pass()
        .unwrap();
    assert_eq!((report.copied, report.tombstones_ignored), (41, 9));
}

/// Two shards of blue; shard B's clock runs 3 s behind A's.
fn skewed_blue() -> (
    Arc<MemoryEntityStore>,
    Arc<MemoryEntityStore>,
    Arc<MergedSource>,
) {
    let (a, b) = (
        Arc::new(MemoryEntityStore::new()),
        Arc::new(MemoryEntityStore::new()),
    );
    for i in 0..20 {
        a.upsert(Entity::new(format!("a-{i:02}"), 1, 10_000 + i, json!(i)));
        b.upsert(Entity::new(format!("b-{i:02}"), 1, 7_000 + i, json!(i)));
    }
    let merged = Arc::new(MergedSource::new(vec![a.clone(), b.clone()]));
    (a, b, merged)
}

#[test]
fn the_overlap_window_covers_clock_skew_between_sources_and_no_window_misses_a_late_commit() {
    for (window, covered) in [(Duration::ZERO, false), (Duration::from_secs(5), true)] {
        let (_a, b, blue) = skewed_blue();
        let green = Arc::new(MemoryEntityStore::new());
        let migration = SideBySideMigration::builder(blue, green.clone())
            .page_size(6)
            .overlap_window(window)
            .build()
            .unwrap();
        let first = migration.run_pass().unwrap();
        assert_eq!(first.copied, 40);
        assert_eq!(first.high_water_mark.unwrap().updated_ms, 10_019);
        // Shard B commits after the pass (real time past A's last write) but stamps
        // it with its own clock, 3 s behind: below the mark.
        b.upsert(Entity::new("b-late", 1, 7_500, json!("late")));
        b.upsert(Entity::new("b-05", 2, 7_501, json!("updated")));
        let second = migration.run_pass().unwrap();
        let check = migration.compare().unwrap();
        assert_eq!(green.get("b-late").is_some(), covered, "{window:?}");
        assert_eq!(
            green.get("b-05").unwrap().data == json!("updated"),
            covered,
            "{window:?}"
        );
        assert_eq!(check.agree, covered, "{window:?}: {check:?}");
        if covered {
            assert_eq!(second.copied, 2);
        } else {
            assert_eq!((second.copied, check.missing, check.differing), (0, 1, 1));
        }
    }
}

#[test]
fn a_copy_crashed_at_any_crash_point_resumes_from_its_persisted_mark() {
    for point in CRASH_POINTS {
        for crash_at_hit in [1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let marks = Arc::new(FileHighWaterMark::new(dir.path().join("mark.json")));
            let (old, new) = (old_cluster(), Arc::new(MemoryEntityStore::new()));
            let build = || {
                SideBySideMigration::builder(old.clone(), new.clone())
                    .page_size(10)
                    .overlap_window(Duration::ZERO)
                    .high_water_marks(marks.clone())
                    .transform(add_schema)
                    .build()
                    .unwrap()
            };
            let hits = Arc::new(AtomicUsize::new(0));
            let me = std::thread::current().id();
            let crashed = {
                let hits = hits.clone();
                let guard = loop {
                    let hits = hits.clone();
                    // One observer per process: wait for another test's to go.
                    match crash_point::observe(move |name| {
                        if name == *point && std::thread::current().id() == me {
                            let hit = hits.fetch_add(1, Ordering::SeqCst) + 1;
                            if hit == crash_at_hit {
                                SimulatedCrash { point: name, hit }.raise();
                            }
                        }
                    }) {
                        Ok(guard) => break guard,
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                };
                let migration = build();
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| migration.run_pass()));
                drop(guard);
                result
            };
            let payload = crashed.expect_err("the run crashed");
            assert!(
                SimulatedCrash::is_payload(&*payload),
                "{point} {crash_at_hit}"
            );
            // While the copier is down, blue moves on.
            old.upsert(job(2, 2, 5_000));
            old.delete("job-040", 2, 5_001);
            let saved = marks.load_for_test();
            let resumed = build().run_pass().unwrap();
            assert_eq!(resumed.resumed_from, saved, "{point} {crash_at_hit}");
            let full_pages = 6; // 50 jobs + 2 changes, 10 a page, from the start
            if let Some(mark) = &saved {
                assert!(
                    mark.updated_ms >= 1_000 + 90,
                    "{point}: some pages were marked"
                );
                assert!(
                    resumed.pages < full_pages,
                    "{point} {crash_at_hit}: {resumed:?}"
                );
            }
            assert_eq!(resumed.failed, 0);
            assert_in_sync(&old, &new, true);
            assert!(new.get("job-040").is_none(), "the delete propagated");
            assert!(build().compare().unwrap().agree);
        }
    }
}

/// Reads a mark store's mark (the trait's `load`).
trait LoadForTest {
    fn load_for_test(&self) -> Option<layout_core::migration::Cursor>;
}

impl LoadForTest for FileHighWaterMark {
    fn load_for_test(&self) -> Option<layout_core::migration::Cursor> {
        layout_core::migration::HighWaterMarkStore::load(self).unwrap()
    }
}

#[test]
fn a_newer_entity_in_the_destination_is_never_overwritten_and_the_check_says_so() {
    let (old, new) = (old_cluster(), Arc::new(MemoryEntityStore::new()));
    // Green already takes writes: job-003 at a newer version than blue's.
    new.upsert(Entity::new("job-003", 7, 9_000, json!("green's own")));
    let migration = SideBySideMigration::builder(old.clone(), new.clone())
        .page_size(7)
        .build()
        .unwrap();
    let report = migration.run_pass().unwrap();
    assert_eq!((report.copied, report.skipped), (49, 1));
    assert_eq!(new.get("job-003").unwrap().data, json!("green's own"));
    // Blue updates it, still below green's version: not overwritten either.
    old.upsert(job(3, 2, 6_000));
    assert_eq!(migration.run_pass().unwrap().copied, 0);
    assert_eq!(new.get("job-003").unwrap().version, 7);
    // The check pages both sides and reports the disagreement, and more.
    old.upsert(job(60, 1, 6_001)); // missing in green (not copied yet)
    new.upsert(Entity::new("job-099", 1, 6_002, json!("extra"))); // extra in green
    let check = migration.compare().unwrap();
    assert!(!check.agree);
    assert_eq!((check.source_count, check.destination_count), (51, 51));
    assert_eq!((check.missing, check.extra, check.differing), (1, 1, 1));
    assert_ne!(check.source_digest, check.destination_digest);
    assert!(
        check.examples.iter().any(|e| e.contains("job-003")),
        "{check:?}"
    );
}

/// A destination that counts the entities of each scan page (the comparison must page).
struct CountingScans {
    inner: Arc<MemoryEntityStore>,
    largest: AtomicUsize,
    calls: AtomicUsize,
}

impl EntityDestination for CountingScans {
    fn location(&self) -> String {
        "counting".into()
    }
    fn write(&self, entities: &[Entity]) -> Result<Vec<PutOutcome>, SideBySideError> {
        self.inner.write(entities)
    }
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        let page = EntityDestination::scan(&*self.inner, after, limit)?;
        self.largest
            .fetch_max(page.entities.len(), Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(page)
    }
}

#[test]
fn the_cut_over_check_pages_both_sides() {
    let old = old_cluster();
    let dest = Arc::new(CountingScans {
        inner: Arc::new(MemoryEntityStore::new()),
        largest: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    });
    let migration = SideBySideMigration::builder(old, dest.clone())
        .page_size(9)
        .transform(add_schema)
        .build()
        .unwrap();
    let before = migration.compare().unwrap();
    assert_eq!((before.agree, before.missing), (false, 50));
    migration.run_pass().unwrap();
    dest.calls.store(0, Ordering::SeqCst);
    let after = migration.compare().unwrap();
    assert!(after.agree, "{after:?}");
    assert_eq!(after.source_digest, after.destination_digest);
    assert_eq!(dest.largest.load(Ordering::SeqCst), 9);
    assert_eq!(
        dest.calls.load(Ordering::SeqCst),
        6,
        "50 entities, 9 a page"
    );
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
    assert_eq!(report.high_water_mark.unwrap().updated_ms, 1_490);
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
    assert_eq!(report.skipped, 1, "version 1 of job-001");
    let versions: Vec<u64> = new.versions("job-001").iter().map(|e| e.version).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
}

/// A destination that advances the clock on each entity written, and fails for one id.
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
    fn write(&self, entities: &[Entity]) -> Result<Vec<PutOutcome>, SideBySideError> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        std::thread::yield_now();
        let mut out = Vec::new();
        for entity in entities {
            self.clock.advance(Duration::from_millis(10));
            if entity.id == self.fail_id {
                out.push(PutOutcome::Failed("disk full".into()));
            } else {
                out.extend(self.inner.write(std::slice::from_ref(entity))?);
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(out)
    }
    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        EntityDestination::scan(&*self.inner, after, limit)
    }
}

#[test]
fn a_deadline_stops_the_copy_and_the_mark_never_passes_what_was_not_copied() {
    let old = old_cluster();
    let clock = Arc::new(ManualClock::at_ms(0));
    let new = Arc::new(MemoryEntityStore::new());
    let marks = Arc::new(layout_core::migration::MemoryHighWaterMark::new());
    let build = |fail_id: &'static str| {
        let dest = Arc::new(SlowDestination {
            inner: new.clone(),
            clock: clock.clone(),
            fail_id,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let migration = SideBySideMigration::builder(old.clone(), dest.clone())
            .page_size(10)
            .max_concurrent(4)
            .overlap_window(Duration::ZERO)
            .high_water_marks(marks.clone())
            .clock(clock.clone())
            .deadline(clock.now() + Duration::from_millis(200))
            .build()
            .unwrap();
        (migration, dest)
    };
    let (migration, dest) = build("job-005");
    let first = migration.run_pass().unwrap();
    assert_eq!(first.stopped, Some(StopReason::Deadline));
    assert!(first.copied >= 15 && first.copied < 49, "{first:?}");
    assert_eq!(first.failed, 1);
    assert_eq!(first.failures[0].id, "job-005");
    assert!(first.failures[0].reason.contains("disk full"));
    // The mark stays before the failed entity, so it is retried.
    assert_eq!(first.high_water_mark, Some(job(4, 1, 1_040).cursor()));
    assert!(dest.max_in_flight.load(Ordering::SeqCst) <= 4);
    assert!(dest.max_in_flight.load(Ordering::SeqCst) >= 1);
    // Reruns with fresh deadlines (and the failure gone) finish the job from the mark.
    for _ in 0..10 {
        let r = build("none").0.run_pass().unwrap();
        if r.stopped.is_none() {
            break;
        }
    }
    assert_in_sync(&old, &new, false);
    assert_eq!(
        build("none").0.high_water_mark().unwrap(),
        Some(job(49, 1, 1_490).cursor())
    );
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
    assert!(SideBySideMigration::builder(s.clone(), s.clone())
        .max_concurrent(0)
        .build()
        .is_err());
    assert!(SideBySideMigration::builder(s.clone(), s)
        .overlap_window(Duration::MAX)
        .build()
        .is_err());
}
