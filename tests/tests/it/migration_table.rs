//! The contract for requests while a table migrates, through `MigratingTable`: reads,
//! adds, updates, deletes (also of keys not yet migrated), delete-everything and
//! searches, under a concurrent workload and at chosen points of the copy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use layout_core::migration::{
    BackgroundMigration, BatchEvent, MemoryMigrationStore, MigratingStore, MigratingTable,
    MigrationError, MigrationSource, NotMigratedPolicy, Row, TableError, WriteTarget,
};
use layout_core::StepError;
use layout_core::{ActionRegistry, LayoutVersionManager, UpgradeFinalizer};
use parking_lot::Mutex;

use crate::migration_background::{key, old_rows, prefinalized, upgrade_value, MigFeature};
use crate::seeded::Rng;

/// The way back of `upgrade_value`: `new:x` -> `x`.
#[allow(clippy::unnecessary_wraps)] // the shape of a transform
fn downgrade_value(mut row: Row) -> Result<Option<Row>, StepError> {
    if let Some(rest) = row.value.strip_prefix(b"new:") {
        row.value = rest.to_vec();
    }
    Ok(Some(row))
}

fn new_value(text: &str) -> Vec<u8> {
    format!("new:{text}").into_bytes()
}

struct Service {
    migration: BackgroundMigration,
}

type Model = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A migration of `store` to `upgrade_value` in batches of `batch_size`, each batch waiting
/// until the workload has done `ops_per_batch` more operations (counted in `ops`, never
/// timed) or `stop` is set, so the workload overlaps the whole copy.
fn paced_migration(
    name: &str,
    store: &Arc<dyn MigratingStore>,
    batch_size: usize,
    ops_per_batch: u64,
    ops: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> BackgroundMigration {
    let (ops, stop) = (Arc::clone(ops), Arc::clone(stop));
    BackgroundMigration::builder(name, store.clone(), store.clone())
        .batch_size(batch_size)
        .transform(upgrade_value)
        .on_batch(move |e| {
            if let BatchEvent::BatchStarted { .. } = e {
                let target = ops.load(Ordering::SeqCst) + ops_per_batch;
                while ops.load(Ordering::SeqCst) < target && !stop.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            }
        })
        .open()
        .unwrap()
}

/// The service holding `migration` and a finalizer that runs it as `UsersV2`'s
/// `OnFinalize` action.
fn finalizing(
    lvm: &Arc<LayoutVersionManager<MigFeature>>,
    migration: BackgroundMigration,
) -> (Arc<Service>, Arc<UpgradeFinalizer<MigFeature, Service>>) {
    let registry = ActionRegistry::<MigFeature, Service>::builder()
        .on_finalize(MigFeature::UsersV2, |s: &Service, ctx| {
            s.migration.run_as_action(ctx)
        })
        .build()
        .unwrap();
    let finalizer = Arc::new(UpgradeFinalizer::new(Arc::clone(lvm), registry));
    (Arc::new(Service { migration }), finalizer)
}

/// Counts of what a worker did while the migration ran.
#[derive(Default, Debug)]
struct Counts {
    unmigrated_updates: u64,
    unmigrated_deletes: u64,
    unmigrated_reads: u64,
    retryable: u64,
}

/// Runs the migration as the feature's `OnFinalize` action while `WORKERS` threads add,
/// update, delete and read; each worker owns a disjoint set of keys and checks every
/// read against its own model. The migration waits (between batches, by counting the
/// workers' operations, never by time) so the workload overlaps the whole copy.
#[allow(clippy::too_many_lines, clippy::needless_pass_by_value)]
fn concurrent_workload(store: Arc<dyn MigratingStore>, rows: u32, policy: NotMigratedPolicy) {
    const WORKERS: u32 = 4;
    const OPS_PER_BATCH: u64 = 12;
    const OPS_AFTER_FINALIZE: u64 = 100;
    let lvm = prefinalized();
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let migration = paced_migration("users-v2", &store, 50, OPS_PER_BATCH, &ops, &stop);
    let table = Arc::new(
        MigratingTable::new(
            store.clone(),
            &migration,
            Arc::clone(&lvm),
            MigFeature::UsersV2,
        )
        .with_backport(downgrade_value)
        .with_policy(policy),
    );
    let (service, finalizer) = finalizing(&lvm, migration);
    let mut seeds = Rng::from_env(0x5eed_7ab1e);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (table, store, ops, stop) = (
                Arc::clone(&table),
                Arc::clone(&store),
                Arc::clone(&ops),
                Arc::clone(&stop),
            );
            let mut rng = Rng::from_env(seeds.next_u64());
            std::thread::spawn(move || {
                let mut model: Model = (0..rows)
                    .filter(|i| i % WORKERS == w)
                    .map(|i| (key(i), Some(new_value(&format!("old-{i}")))))
                    .collect();
                let own: Vec<Vec<u8>> = model.keys().cloned().collect();
                let mut counts = Counts::default();
                let mut serial = 0u64;
                let not_yet_migrated = |k: &[u8]| {
                    let view = store.view(k).unwrap();
                    view.checkpoint.is_some_and(|c| !c.covers(k))
                };
                while !stop.load(Ordering::SeqCst) {
                    serial += 1;
                    let k = match rng.below(10) {
                        // A brand-new key, between the old ones.
                        0 => {
                            let mut k = key(u32::try_from(rng.below(u64::from(rows))).unwrap());
                            k.extend_from_slice(format!("-w{w}-{serial}").as_bytes());
                            k
                        }
                        _ => own[usize::try_from(rng.below(own.len() as u64)).unwrap()].clone(),
                    };
                    let unmigrated = not_yet_migrated(&k);
                    match rng.below(10) {
                        0..=3 => match table.get(&k) {
                            Ok(found) => {
                                assert_eq!(
                                    found.map(|r| r.value),
                                    model.get(&k).cloned().flatten(),
                                    "read of {}",
                                    String::from_utf8_lossy(&k)
                                );
                                if unmigrated {
                                    counts.unmigrated_reads += 1;
                                }
                            }
                            Err(e @ TableError::NotYetMigrated { .. }) => {
                                assert!(e.is_retryable());
                                assert_eq!(policy, NotMigratedPolicy::RetryableError);
                                assert!(model.get(&k).cloned().flatten().is_some());
                                counts.retryable += 1;
                            }
                            Err(e) => panic!("read failed: {e}"),
                        },
                        4..=7 => {
                            let value = new_value(&format!("w{w}-{serial}"));
                            table
                                .put(Row::new(k.clone(), value.clone(), serial))
                                .unwrap();
                            model.insert(k.clone(), Some(value));
                            if unmigrated {
                                counts.unmigrated_updates += 1;
                            }
                        }
                        _ => {
                            table.delete(&k).unwrap();
                            model.insert(k.clone(), None);
                            if unmigrated {
                                counts.unmigrated_deletes += 1;
                            }
                        }
                    }
                    // Every write is visible at once, migrated or not.
                    if let Ok(found) = table.get(&k) {
                        assert_eq!(found.map(|r| r.value), model.get(&k).cloned().flatten());
                    }
                    ops.fetch_add(1, Ordering::SeqCst);
                }
                (model, counts)
            })
        })
        .collect();
    let handle = finalizer.start_finalize(None, "admin".into(), Arc::clone(&service));
    let outcome = handle.join();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(lvm.metadata_layout_version(), 1);
    assert_eq!(table.routing().target(), WriteTarget::NewOnly);
    // A little more traffic on the finalized layout.
    let after = ops.load(Ordering::SeqCst) + OPS_AFTER_FINALIZE;
    while ops.load(Ordering::SeqCst) < after {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut totals = Counts::default();
    for worker in workers {
        let (model, counts) = worker.join().unwrap();
        for (k, v) in model {
            assert_eq!(
                table.get(&k).unwrap().map(|r| r.value),
                v,
                "final read of {}",
                String::from_utf8_lossy(&k)
            );
            if let Some(v) = v {
                expected.insert(k, v);
            }
        }
        totals.unmigrated_updates += counts.unmigrated_updates;
        totals.unmigrated_deletes += counts.unmigrated_deletes;
        totals.unmigrated_reads += counts.unmigrated_reads;
        totals.retryable += counts.retryable;
    }
    // Nothing lost, nothing resurrected: the new table is exactly the models' union.
    let result = table.search(b"").unwrap();
    assert!(!result.partial);
    let found: BTreeMap<Vec<u8>, Vec<u8>> =
        result.rows.into_iter().map(|r| (r.key, r.value)).collect();
    assert_eq!(found.len(), expected.len());
    assert!(
        found == expected,
        "the new table differs from the workers' models"
    );
    // The workload did touch keys the copy had not reached yet.
    assert!(totals.unmigrated_updates > 0, "{totals:?}");
    assert!(totals.unmigrated_deletes > 0, "{totals:?}");
    match policy {
        NotMigratedPolicy::ServeFromOld => assert!(totals.unmigrated_reads > 0, "{totals:?}"),
        NotMigratedPolicy::RetryableError => assert!(totals.retryable > 0, "{totals:?}"),
    }
}

fn memory_with_old_rows(n: u32) -> Arc<MemoryMigrationStore> {
    let store = Arc::new(MemoryMigrationStore::new());
    for r in old_rows(n) {
        store.insert_old(r);
    }
    store
}

#[test]
fn concurrent_requests_during_a_migration_lose_nothing_and_resurrect_nothing() {
    let store = memory_with_old_rows(2_000);
    concurrent_workload(store.clone(), 2_000, NotMigratedPolicy::ServeFromOld);
    assert_eq!(store.tombstone_count(), 0, "no tombstone outlives the copy");
}

#[test]
fn concurrent_requests_with_retryable_errors_for_keys_not_yet_migrated() {
    concurrent_workload(
        memory_with_old_rows(2_000),
        2_000,
        NotMigratedPolicy::RetryableError,
    );
}

#[cfg(feature = "redb")]
#[test]
fn concurrent_requests_during_a_redb_migration_lose_nothing_and_resurrect_nothing() {
    use layout_core::migration::RedbMigrationStore;
    use layout_core::redb;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("users.redb")).unwrap());
    let store = Arc::new(RedbMigrationStore::new(db, "users-v2", "users", "users_v2"));
    store.insert_old_rows(old_rows(1_000)).unwrap();
    concurrent_workload(store.clone(), 1_000, NotMigratedPolicy::ServeFromOld);
    assert_eq!(store.tombstone_count().unwrap(), 0);
}

/// The counter of a row in the new format (`new:N`); an absent row counts 0.
fn count_of(row: Option<&Row>) -> u64 {
    row.map_or(0, |r| {
        let text = String::from_utf8_lossy(&r.value);
        text.strip_prefix("new:").unwrap_or(&text).parse().unwrap()
    })
}

/// A thread that increments the `hot` keys in turn (starting at `first`) until `stop`,
/// counting each update that returned `Ok` per key and in `ops`.
fn incrementer(
    first: usize,
    table: &Arc<MigratingTable<MigFeature>>,
    hot: &[Vec<u8>],
    ops: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    let (table, hot, ops, stop) = (
        Arc::clone(table),
        hot.to_vec(),
        Arc::clone(ops),
        Arc::clone(stop),
    );
    std::thread::spawn(move || {
        let mut done = vec![0u64; hot.len()];
        let mut serial = 0u64;
        while !stop.load(Ordering::SeqCst) {
            serial += 1;
            let i = (usize::try_from(serial).unwrap() + first) % hot.len();
            table
                .update(&hot[i], |row| {
                    let next = count_of(row.as_ref()) + 1;
                    Some(Row::new(Vec::new(), format!("new:{next}"), serial))
                })
                .unwrap();
            done[i] += 1;
            ops.fetch_add(1, Ordering::SeqCst);
        }
        done
    })
}

/// `THREADS` threads increment a few hot keys with `update(k, |v| v + 1)` before the
/// migration starts, while it runs as the feature's `OnFinalize` action (the copier
/// reaching the hot keys in between), and after the feature is finalized. The hot keys
/// lie at the start, the middle and the end of the old table, and one is not in it at
/// all. Every update that returned `Ok` must be counted: a lost update (two threads
/// reading the same value) would leave a key short.
#[allow(clippy::needless_pass_by_value)]
fn concurrent_increments(store: Arc<dyn MigratingStore>, rows: u32, ops_per_batch: u64) {
    const THREADS: usize = 4;
    let lvm = prefinalized();
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let migration = paced_migration("counters-v2", &store, 20, ops_per_batch, &ops, &stop);
    let table = Arc::new(
        MigratingTable::new(
            store.clone(),
            &migration,
            Arc::clone(&lvm),
            MigFeature::UsersV2,
        )
        .with_backport(downgrade_value),
    );
    let hot: Vec<Vec<u8>> = vec![
        key(1),
        key(rows / 2),
        key(rows - 2),
        b"user-not-in-the-old-table".to_vec(),
    ];
    let (service, finalizer) = finalizing(&lvm, migration);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| incrementer(t, &table, &hot, &ops, &stop))
        .collect();
    // Some increments before the migration starts (old table only).
    while ops.load(Ordering::SeqCst) < ops_per_batch {
        std::thread::yield_now();
    }
    let outcome = finalizer
        .start_finalize(None, "admin".into(), Arc::clone(&service))
        .join();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(table.routing().target(), WriteTarget::NewOnly);
    // More increments on the finalized layout.
    let after = ops.load(Ordering::SeqCst) + 4 * ops_per_batch;
    while ops.load(Ordering::SeqCst) < after {
        std::thread::yield_now();
    }
    stop.store(true, Ordering::SeqCst);
    let mut expected = vec![0u64; hot.len()];
    for worker in workers {
        for (total, done) in expected.iter_mut().zip(worker.join().unwrap()) {
            *total += done;
        }
    }
    let found: Vec<u64> = hot
        .iter()
        .map(|k| count_of(table.get(k).unwrap().as_ref()))
        .collect();
    assert_eq!(
        found, expected,
        "counts of the hot keys vs. updates that returned Ok"
    );
    // The other keys came through the migration untouched.
    assert_eq!(
        table.get(&key(3)).unwrap().map(|r| r.value),
        Some(b"new:0".to_vec())
    );
}

/// `rows` old rows, each a counter at 0.
fn zero_counters(rows: u32) -> impl Iterator<Item = Row> {
    old_rows(rows).map(|mut r| {
        r.value = b"0".to_vec();
        r
    })
}

#[test]
fn concurrent_updates_of_the_same_keys_lose_no_increment_before_during_and_after_a_migration() {
    let store = Arc::new(MemoryMigrationStore::new());
    for r in zero_counters(400) {
        store.insert_old(r);
    }
    concurrent_increments(store, 400, 200);
}

#[cfg(feature = "redb")]
#[test]
fn concurrent_updates_of_the_same_keys_lose_no_increment_during_a_redb_migration() {
    use layout_core::migration::RedbMigrationStore;
    use layout_core::redb;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(redb::Database::create(dir.path().join("counters.redb")).unwrap());
    let store = Arc::new(RedbMigrationStore::new(
        db,
        "counters-v2",
        "counters",
        "counters_v2",
    ));
    store.insert_old_rows(zero_counters(200)).unwrap();
    concurrent_increments(store, 200, 30);
}

/// A source that runs a closure right after it reads batch `at`: the closure's writes
/// land between the copier's read of a batch and its write.
struct RacingSource {
    inner: Arc<MemoryMigrationStore>,
    at: u64,
    reads: AtomicU64,
    race: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl MigrationSource for RacingSource {
    fn source_location(&self) -> String {
        "racing".into()
    }
    fn total_rows(&self) -> Result<Option<u64>, MigrationError> {
        self.inner.total_rows()
    }
    fn read_batch(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Row>, MigrationError> {
        let rows = self.inner.read_batch(after, limit)?;
        if self.reads.fetch_add(1, Ordering::SeqCst) == self.at {
            if let Some(race) = self.race.lock().take() {
                race();
            }
        }
        Ok(rows)
    }
}

type Slot = Arc<Mutex<Option<Arc<MigratingTable<MigFeature>>>>>;

/// A migration of 100 rows in batches of 10 whose batch `at` races with `race(table)`.
fn racing_migration(
    at: u64,
    policy: NotMigratedPolicy,
    race: impl FnOnce(&MigratingTable<MigFeature>) + Send + 'static,
) -> (
    Arc<MemoryMigrationStore>,
    Arc<MigratingTable<MigFeature>>,
    BackgroundMigration,
) {
    let store = memory_with_old_rows(100);
    let slot: Slot = Arc::new(Mutex::new(None));
    let in_race = Arc::clone(&slot);
    let source = Arc::new(RacingSource {
        inner: store.clone(),
        at,
        reads: AtomicU64::new(0),
        race: Mutex::new(Some(Box::new(move || {
            let table = in_race.lock().clone().unwrap();
            race(&table);
        }))),
    });
    let migration = BackgroundMigration::builder("users-v2", source, store.clone())
        .batch_size(10)
        .transform(upgrade_value)
        .open()
        .unwrap();
    let table = Arc::new(
        MigratingTable::new(
            store.clone(),
            &migration,
            prefinalized(),
            MigFeature::UsersV2,
        )
        .with_backport(downgrade_value)
        .with_policy(policy),
    );
    *slot.lock() = Some(Arc::clone(&table));
    (store, table, migration)
}

#[test]
fn a_write_or_delete_between_the_copiers_read_and_write_is_never_undone() {
    // Batch 2 holds keys 20..30; the copier has read them when these writes happen.
    let (store, table, migration) = racing_migration(2, NotMigratedPolicy::ServeFromOld, |t| {
        t.put(Row::new(key(21), new_value("updated"), 5)).unwrap();
        t.delete(&key(22)).unwrap();
        t.put(Row::new(key(95), new_value("updated-later"), 6))
            .unwrap();
        t.delete(&key(96)).unwrap();
    });
    migration.run().unwrap();
    assert_eq!(
        table.get(&key(21)).unwrap().map(|r| r.value),
        Some(new_value("updated"))
    );
    assert_eq!(table.get(&key(22)).unwrap(), None);
    assert_eq!(
        table.get(&key(95)).unwrap().map(|r| r.value),
        Some(new_value("updated-later"))
    );
    assert_eq!(table.get(&key(96)).unwrap(), None);
    let new = store.new_rows();
    assert_eq!(new.len(), 98);
    assert!(new.iter().all(|r| r.key != key(22) && r.key != key(96)));
    // The old table got the same writes, in the old format (for a downgrade).
    let old: BTreeMap<_, _> = store
        .old_rows()
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    assert_eq!(old[&key(21)], b"updated");
    assert!(!old.contains_key(&key(22)));
    assert_eq!(
        store.tombstone_count(),
        0,
        "tombstones are dropped at the end"
    );
}

#[test]
fn deleting_everything_during_the_migration_empties_both_tables_and_completes_it() {
    let (store, table, migration) = racing_migration(3, NotMigratedPolicy::ServeFromOld, |t| {
        t.clear().unwrap();
    });
    let report = migration.run().unwrap();
    assert_eq!(
        report.done, 30,
        "batches 0..3 were copied, batch 3 was discarded"
    );
    assert!(store.old_rows().is_empty() && store.new_rows().is_empty());
    let cp = store.checkpoint().unwrap();
    assert!(cp.complete);
    assert_eq!(cp.epoch, 1);
    assert_eq!(table.search(b"").unwrap().rows, []);
    // The table works on.
    table.put(Row::new(key(7), new_value("again"), 9)).unwrap();
    assert_eq!(
        table.get(&key(7)).unwrap().map(|r| r.value),
        Some(new_value("again"))
    );
}

#[test]
fn reads_and_searches_of_keys_not_yet_migrated_follow_the_policy() {
    for policy in [
        NotMigratedPolicy::ServeFromOld,
        NotMigratedPolicy::RetryableError,
    ] {
        let (tx, rx) = mpsc::channel();
        let (_store, _table, migration) = racing_migration(4, policy, move |t| {
            // Batches 0..4 are copied (keys 0..40); batch 4 (40..50) is in flight.
            let migrated = t.get(&key(5)).map(|r| r.map(|r| r.value));
            let not_yet = t.get(&key(70)).map(|r| r.map(|r| r.value));
            t.put(Row::new(b"zz-new".to_vec(), new_value("fresh"), 1))
                .unwrap();
            let new_one = t.get(b"zz-new").unwrap().map(|r| r.value);
            let search = t.search(b"user-0000").unwrap(); // keys 0..100
            tx.send((migrated.unwrap(), not_yet, new_one, search))
                .unwrap();
        });
        migration.run().unwrap();
        let (migrated, not_yet, new_one, search) = rx.recv().unwrap();
        assert_eq!(migrated, Some(new_value("old-5")));
        assert_eq!(new_one, Some(new_value("fresh")));
        match policy {
            NotMigratedPolicy::ServeFromOld => {
                assert_eq!(not_yet.unwrap(), Some(new_value("old-70")));
                assert!(!search.partial);
                assert_eq!(search.rows.len(), 100);
                assert!(search.rows.windows(2).all(|w| w[0].key < w[1].key));
                assert_eq!(search.rows[70].value, new_value("old-70"));
            }
            NotMigratedPolicy::RetryableError => {
                let err = not_yet.unwrap_err();
                assert!(err.is_retryable());
                assert!(err.to_string().contains("not migrated yet"), "{err}");
                assert!(search.partial);
                assert_eq!(search.rows.len(), 40, "what is migrated");
            }
        }
    }
}
