//! A background migration of 100,000 rows in redb, killed with SIGKILL at random (seeded) points
//! several times, then finished: the result equals a crash-free run row by row, and each
//! restart resumed at its checkpoint, redoing at most the one batch that was in flight.

use std::path::Path;
use std::sync::Arc;

use layout_core::migration::{
    BackgroundMigration, BatchEvent, MigrationCheckpoint, MigrationSink, RedbMigrationStore, Row,
};
use layout_core::redb;
use layout_core::StepError;

use layout_testkit::crash::{child_role, report_step, ChildCommand};

use crate::seeded::Rng;

const DB: &str = "LAYOUT_TEST_MIGRATION_DB";
const ROWS: u32 = 100_000;
const BATCH: usize = 2_000;
const KILLS: usize = 4;

fn open(path: &Path) -> Arc<RedbMigrationStore> {
    let db = Arc::new(redb::Database::create(path).unwrap());
    Arc::new(RedbMigrationStore::new(db, "rows-v2", "rows", "rows_v2"))
}

fn rows() -> impl Iterator<Item = Row> {
    (0..ROWS).map(|i| {
        // Keys in an order unlike insertion order; small values; distinct timestamps.
        let k = i.wrapping_mul(2_654_435_761).to_be_bytes();
        Row::new(
            k,
            format!("row-{i}").into_bytes(),
            1_600_000_000_000 + u64::from(i),
        )
    })
}

#[allow(clippy::unnecessary_wraps)] // the shape of a transform
fn transform(mut row: Row) -> Result<Option<Row>, StepError> {
    row.value.reverse();
    row.value.extend_from_slice(b":v2");
    Ok(Some(row))
}

fn migration(
    store: &Arc<RedbMigrationStore>,
    hook: impl Fn(&BatchEvent) + Send + Sync + 'static,
) -> BackgroundMigration {
    BackgroundMigration::builder("rows-v2", store.clone(), store.clone())
        .batch_size(BATCH)
        .transform(transform)
        .on_batch(hook)
        .open()
        .unwrap()
}

fn checkpoint(path: &Path) -> Option<MigrationCheckpoint> {
    open(path).load_checkpoint().unwrap()
}

/// A safety bound for a hung child, not a timing assertion.
const BOUND: std::time::Duration = std::time::Duration::from_secs(300);

/// The child's half: runs the migration, reporting each step.
fn migrate_in_child() {
    let store = open(Path::new(&std::env::var(DB).unwrap()));
    let m = migration(&store, |e| match e {
        BatchEvent::RunStarted { checkpoint } => {
            report_step(format!("run {} {}", checkpoint.runs, checkpoint.batches));
        }
        BatchEvent::BatchStarted { index } => report_step(format!("start {index}")),
        BatchEvent::BatchCommitted { index, .. } => report_step(format!("commit {index}")),
        BatchEvent::Completed { .. } => report_step("done"),
        _ => {}
    });
    m.run().unwrap();
}

#[test]
#[allow(clippy::too_many_lines)]
fn a_background_migration_killed_at_random_points_matches_a_crash_free_run() {
    if child_role().as_deref() == Some("migrator") {
        migrate_in_child();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let crashed = dir.path().join("crashed.redb");
    let clean = dir.path().join("clean.redb");
    open(&crashed).insert_old_rows(rows()).unwrap();
    open(&clean).insert_old_rows(rows()).unwrap();

    // The crash-free run, through the other path: source and sink as two objects (read
    // transaction, then write transaction), where the crashed runs copy each batch in one
    // transaction of the store.
    let clean_store = open(&clean);
    let clean_report = BackgroundMigration::builder(
        "rows-v2",
        clean_store.clone(),
        Arc::new(RedbMigrationStore::clone(&clean_store)),
    )
    .batch_size(BATCH)
    .transform(transform)
    .open()
    .unwrap()
    .run()
    .unwrap();
    let total_batches = clean_report.batches;
    assert_eq!(total_batches, u64::from(ROWS) / BATCH as u64 + 1);

    let mut rng = Rng::from_env(0x00c0_ffee);
    let mut started_total = 0u64;
    let mut interrupted = 0;
    for kill in 0..KILLS {
        let before = checkpoint(&crashed);
        let resume_at = before.as_ref().map_or(0, |c| c.batches);
        // Kill after the commit of a batch a few batches on, or in the middle of one.
        let at = resume_at + 1 + rng.below(8);
        let mid_batch = rng.below(2) == 0;
        let mut c = ChildCommand::new(
            "migration_crash::a_background_migration_killed_at_random_points_matches_a_crash_free_run",
            "migrator",
        )
        .env(DB, &crashed)
        .spawn()
        .unwrap();
        let step = if mid_batch {
            format!("start {at}")
        } else {
            format!("commit {at}")
        };
        // The child may finish before it gets there; then there is nothing to kill.
        if c.wait_for_step(&step, BOUND).is_ok() {
            c.kill().unwrap();
        }
        let output = c.wait(BOUND).unwrap();
        let messages = output.steps;
        // What this run did, as the child told it before it died.
        let runs: Vec<&String> = messages.iter().filter(|m| m.starts_with("run ")).collect();
        assert_eq!(runs.len(), 1, "kill {kill}: {messages:?}");
        assert_eq!(
            runs[0],
            &format!(
                "run {} {resume_at}",
                before.as_ref().map_or(0, |c| c.runs) + 1
            ),
            "kill {kill}: resumed from the stored checkpoint"
        );
        let starts: Vec<u64> = messages
            .iter()
            .filter_map(|m| m.strip_prefix("start ")?.parse().ok())
            .collect();
        let commits = messages.iter().filter(|m| m.starts_with("commit ")).count() as u64;
        assert_eq!(
            starts.first(),
            Some(&resume_at),
            "kill {kill}: no committed batch redone"
        );
        assert!(
            starts.len() as u64 <= commits + 1,
            "kill {kill}: at most one batch in flight"
        );
        started_total += starts.len() as u64;
        let after = checkpoint(&crashed).unwrap();
        if !after.complete {
            interrupted += 1;
        }
        // Everything committed before the kill is in the checkpoint (no batch lost).
        assert!(after.batches >= resume_at + commits, "kill {kill}");
    }
    assert!(interrupted >= KILLS - 1, "the kills landed mid-migration");

    // Finish it.
    let store = open(&crashed);
    let starts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let starts_in_hook = Arc::clone(&starts);
    let report = migration(&store, move |e| {
        if matches!(e, BatchEvent::BatchStarted { .. }) {
            starts_in_hook.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .run()
    .unwrap();
    started_total += starts.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(report.batches, total_batches);
    // The checkpoint's record: one run per start, every batch counted once.
    let cp = store.load_checkpoint().unwrap().unwrap();
    assert_eq!(cp.runs as usize, KILLS + 1);
    assert_eq!((cp.batches, cp.done), (total_batches, u64::from(ROWS)));
    // At most one batch redone per restart.
    assert!(
        started_total <= total_batches + KILLS as u64,
        "{started_total} batches started for {total_batches} batches and {KILLS} kills"
    );

    // Row by row, the same as the crash-free run.
    let got = store.new_rows().unwrap();
    let want = clean_store.new_rows().unwrap();
    assert_eq!(got.len(), want.len());
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!("row {i} differs: {:?} vs {:?}", got[i], want[i]);
    }
    assert_eq!(
        store.old_rows().unwrap().len(),
        ROWS as usize,
        "old data kept apart"
    );
    assert_eq!(got[0].modified_ms, want[0].modified_ms);
}
