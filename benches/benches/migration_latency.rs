//! Foreground latency during an online migration: kvstore's put p50/p99 with no
//! migration (idle) against during its value-index migration (`ValueIndex`'s
//! `OnFinalize` action), at the default settings and with the throttle, in the same run.
//! Goal: p99 during the migration within 2x of idle with the throttle on.
//!
//! One kvstore node runs in this process (`KvNode`, redb with durable commits), seeded
//! once with [`KEYS`] keys at layout version 0 and copied afresh for every round, so every
//! round migrates the same data. The writer puts on a fixed schedule (one put every
//! [`PUT_EVERY`], open loop): a put's latency is measured from when it was due, not from
//! when the previous one returned, so a put held up behind a migration batch counts the
//! whole wait and the ones queued behind it (no coordinated omission). Each round
//! measures its idle phase (the node pre-finalized, nothing migrating) and then its
//! migration phase (finalize started in the background, until the index migration is
//! complete or [`MAX_MIGRATION_PHASE`] passed) on the same node, back to back; the two
//! configurations alternate round by round ([`ROUNDS`] each), so a burst of load on this
//! shared machine lands on both. The percentiles are over all rounds' puts.
//!
//! Configurations:
//! - `default`: the migration's defaults (10,000 keys per batch, no throttle);
//! - `throttled`: [`THROTTLED_BATCH`] keys per batch and at most [`THROTTLED_RATE`] rows
//!   per second. Small batches hold redb's write lock briefly; the pacing leaves room
//!   between them, so a put waits for at most about one small commit.
//!
//! Run: `cargo bench -p layout-benches --bench migration_latency` (or `scripts/bench`).
//! Prints one line per configuration and phase, and the ratios.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore::{KvFeature, KvNode, KvNodeConfig, KvOptions, KvStore};

/// Keys in the store before the migration (seeding them through the store, one durable
/// commit each, takes about a minute here).
const KEYS: usize = 20_000;
/// Rounds per configuration.
const ROUNDS: usize = 6;
/// The writer's schedule: one put every this long.
const PUT_EVERY: Duration = Duration::from_millis(5);
/// The idle phase's length, per round.
const IDLE_PHASE: Duration = Duration::from_secs(1);
/// The migration phase's longest length (a throttled migration may take longer; the
/// rows it copied in that time are printed).
const MAX_MIGRATION_PHASE: Duration = Duration::from_secs(15);

/// Put latencies in microseconds, sorted.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
        self.0.sort_unstable();
    }

    fn percentile(&self, p: usize) -> Duration {
        let index = (self.0.len() * p).div_ceil(100).saturating_sub(1);
        Duration::from_micros(self.0[index.min(self.0.len() - 1)])
    }
}

/// Puts on `store` every [`PUT_EVERY`] until `done` says stop; the latencies.
fn measure(store: &Arc<KvStore>, tag: &str, done: impl Fn() -> bool) -> Latencies {
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut i: u64 = 0;
    while !done() {
        let due = start + PUT_EVERY * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        store
            .put(&format!("fg/{tag}/{}", i % 1_000), "foreground")
            .expect("foreground put");
        latencies.push(u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX));
        i += 1;
    }
    latencies.sort_unstable();
    assert!(!latencies.is_empty(), "no put measured");
    Latencies(latencies)
}

fn node(dir: &Path, options: KvOptions) -> KvNode {
    KvNode::start(
        KvNodeConfig::new(dir)
            .with_initial_version(KvFeature::Initial)
            .with_store_options(options),
    )
    .expect("start the node")
}

fn seed(dir: &Path) {
    let node = node(dir, KvOptions::default());
    let store = Arc::clone(node.store());
    std::thread::scope(|scope| {
        for t in 0..4 {
            let store = Arc::clone(&store);
            scope.spawn(move || {
                for i in (t..KEYS).step_by(4) {
                    store
                        .put(&format!("seed/{i:06}"), &format!("colour-{}", i % 13))
                        .expect("seed");
                }
            });
        }
    });
    node.shutdown().expect("stop the seeded node");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

struct Phase {
    p50: Duration,
    p99: Duration,
    puts: usize,
}

fn phase(latencies: &Latencies) -> Phase {
    Phase {
        p50: latencies.percentile(50),
        p99: latencies.percentile(99),
        puts: latencies.0.len(),
    }
}

/// One round: idle, then migrating, on a fresh copy of `template`; `tune(store, idle
/// p99)` sets the migration's settings before it starts (live, through its control).
fn run(
    template: &Path,
    dir: &Path,
    name: &str,
    tune: &dyn Fn(&KvStore, Duration),
) -> (Latencies, Latencies) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).expect("remove the last round's copy");
    }
    copy_dir(template, dir);
    let node = node(dir, KvOptions::default());
    let store = Arc::clone(node.store());
    let idle_until = Instant::now() + IDLE_PHASE;
    let idle = measure(&store, name, || Instant::now() >= idle_until);
    tune(&store, idle.percentile(99));
    let handle = node
        .finalizer()
        .start_finalize(None, "bench".to_owned(), Arc::clone(&store));
    let deadline = Instant::now() + MAX_MIGRATION_PHASE;
    let complete = AtomicBool::new(false);
    let migrating = measure(&store, name, || {
        let done = store.index_migration().is_some_and(|f| f.complete);
        complete.store(done, Ordering::SeqCst);
        done || Instant::now() >= deadline
    });
    let figures = store.index_migration().expect("figures");
    if let Some(control) = store.index_migration_control() {
        // Let a throttled migration that ran out of time finish quickly.
        let _ = control.set_tuning(layout_core::migration::MigrationTuning::new(10_000));
    }
    let outcome = handle.join();
    assert!(outcome.is_ok(), "{name}: finalization failed: {outcome:?}");
    if !complete.load(Ordering::SeqCst) {
        println!(
            "migration_latency/{name}: the phase ended before the migration completed \
             ({} of {} rows in {} ms, {} batches)",
            figures.rows_done,
            figures.rows_total.unwrap_or(0),
            figures.elapsed_ms,
            figures.batches,
        );
    }
    node.shutdown().expect("stop");
    (idle, migrating)
}

fn print(name: &str, idle: &Phase, migrating: &Phase) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "migration_latency/{name}: idle p50 {:.2} ms p99 {:.2} ms ({} puts); during migration \
         p50 {:.2} ms p99 {:.2} ms ({} puts); ratio p50 {:.2}x p99 {:.2}x",
        ms(idle.p50),
        ms(idle.p99),
        idle.puts,
        ms(migrating.p50),
        ms(migrating.p99),
        migrating.puts,
        ms(migrating.p50) / ms(idle.p50),
        ms(migrating.p99) / ms(idle.p99),
    );
}

/// Sets a configuration's migration settings, given the idle p99 just measured.
type Tune = dyn Fn(&KvStore, Duration);

/// The throttled configuration's settings.
fn throttle(store: &KvStore, _idle_p99: Duration) {
    store
        .index_migration_control()
        .expect("the index migration")
        .set_tuning(
            layout_core::migration::MigrationTuning::new(THROTTLED_BATCH)
                .with_max_rows_per_sec(Some(THROTTLED_RATE)),
        )
        .expect("valid settings");
}

/// Keys per batch of the throttled configuration.
const THROTTLED_BATCH: usize = 100;
/// The throttled configuration's rate ceiling, rows per second.
const THROTTLED_RATE: u64 = 5_000;

fn main() {
    if !layout_benches::interleave_wanted("migration_latency") {
        // `cargo test --benches` (or a filter naming another group): nothing to measure.
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let template = scratch.path().join("template");
    let seeding = Instant::now();
    seed(&template);
    println!(
        "migration_latency: seeded {KEYS} keys in {} ms",
        seeding.elapsed().as_millis()
    );
    let configurations: [(&str, &Tune); 2] = [("default", &|_, _| {}), ("throttled", &throttle)];
    let mut results: Vec<(Latencies, Latencies)> =
        configurations.iter().map(|_| Default::default()).collect();
    for round in 0..ROUNDS {
        // Alternate which configuration goes first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (name, tune) = configurations[i];
            let (idle, migrating) = run(&template, &scratch.path().join(name), name, tune);
            results[i].0.extend(idle);
            results[i].1.extend(migrating);
        }
    }
    println!(
        "migration_latency/throttled: batch size {THROTTLED_BATCH}, at most {THROTTLED_RATE} \
         rows/s"
    );
    for ((name, _), (idle, migrating)) in configurations.iter().zip(&results) {
        print(name, &phase(idle), &phase(migrating));
    }
}
