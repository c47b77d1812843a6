//! The cost of a background migration's checkpoints: 1,000,000 small rows copied in redb
//! by `BackgroundMigration` at the default batch size (10,000 keys, one checkpoint and
//! one durable commit per batch), against the floor, the same rows copied in one write
//! transaction. Target: at least 0.8x the baseline's throughput (a time ratio of at most
//! 1.25x).
//!
//! Every iteration starts from a copy of the same database file (made outside the
//! timing), so both sides copy into an empty table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use layout_core::migration::{BackgroundMigration, RedbMigrationStore, Row};
use layout_core::redb::{self, Database, ReadableTable, TableDefinition};

const ROWS: u32 = 1_000_000;
const OLD: &str = "rows";
const NEW: &str = "rows_v2";

type RowDef<'a> = TableDefinition<'a, &'static [u8], (u64, &'static [u8])>;

fn template(dir: &Path) -> PathBuf {
    let path = dir.join("template.redb");
    let db = Database::create(&path).expect("create the template");
    let store = RedbMigrationStore::new(Arc::new(db), "rows-v2", OLD, NEW);
    store
        .insert_old_rows((0..ROWS).map(|i| {
            // 8-byte keys, 16-byte values, a timestamp: small rows.
            let key = (u64::from(i) << 32 | u64::from(i.wrapping_mul(2_654_435_761))).to_be_bytes();
            Row::new(
                key,
                format!("value-{i:010}").into_bytes(),
                1_600_000_000_000 + u64::from(i),
            )
        }))
        .expect("fill the template");
    path
}

/// A fresh copy of the template, opened.
fn fresh(template: &Path, dir: &Path) -> Arc<Database> {
    let path = dir.join("run.redb");
    let _ = std::fs::remove_file(&path);
    std::fs::copy(template, &path).expect("copy the template");
    Arc::new(Database::create(&path).expect("open the copy"))
}

fn copy_in_one_transaction(db: &Database) -> Result<u64, redb::Error> {
    let txn = db.begin_write()?;
    let mut n = 0;
    {
        let old = txn.open_table(RowDef::new(OLD))?;
        let mut new = txn.open_table(RowDef::new(NEW))?;
        for item in old.iter()? {
            let (k, v) = item?;
            new.insert(k.value(), v.value())?;
            n += 1;
        }
    }
    txn.commit()?;
    Ok(n)
}

fn migration(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let template = template(dir.path());
    let mut group = c.benchmark_group("background_migration_1m_rows");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Elements(u64::from(ROWS)));
    group.bench_function("baseline_one_transaction", |b| {
        b.iter_batched(
            || fresh(&template, dir.path()),
            |db| {
                let n = copy_in_one_transaction(&db).expect("copy");
                assert_eq!(n, u64::from(ROWS));
                db
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("batches_of_10000_with_checkpoints", |b| {
        b.iter_batched(
            || fresh(&template, dir.path()),
            |db| {
                let store = Arc::new(RedbMigrationStore::new(
                    Arc::clone(&db),
                    "rows-v2",
                    OLD,
                    NEW,
                ));
                let report = BackgroundMigration::builder("rows-v2", store.clone(), store)
                    .open()
                    .expect("open the migration")
                    .run()
                    .expect("migrate");
                assert_eq!(report.done, u64::from(ROWS));
                db
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, migration);
criterion_main!(benches);
