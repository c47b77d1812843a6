//! Side-by-side copy throughput: 2,000 keys copied from one in-process kvstore ("blue")
//! into a fresh one ("green") over their HTTP APIs by `SideBySideMigration` (changes
//! feed `GET /changes` in pages of 1,000, conditional writes `POST /copy`, the
//! high-water mark saved in green after every page), against a plain scan-and-put of the
//! same keys (`GET /kv` in pages of 1,000, one `PUT /kv/{key}` per key). Target: at least
//! 0.8x the baseline's throughput (a time ratio of at most 1.25x).
//!
//! Every iteration copies into a fresh, empty green (started outside the timing). Both
//! sides make one durable redb commit per key in green.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use kvstore::copy::{KvDestination, KvMarks, KvSource};
use kvstore::{KvClient, KvNode, KvNodeConfig};
use layout_benches::{in_turn, report_interleaved};
use layout_core::migration::SideBySideMigration;
use tempfile::TempDir;

const KEYS: u64 = 2_000;
const PAGE: usize = 1_000;

fn node() -> (KvNode, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let node = KvNode::start(KvNodeConfig::new(dir.path())).expect("a kvstore");
    (node, dir)
}

/// The baseline: scan blue page by page, put each key into green.
fn scan_and_put(blue: &KvClient, green: &KvClient) -> u64 {
    let mut after: Option<String> = None;
    let mut n = 0;
    loop {
        let page = blue
            .list_page("", after.as_deref(), Some(PAGE))
            .expect("list");
        for item in &page.items {
            green.put(&item.key, &item.value).expect("put");
            n += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return n,
        }
    }
}

fn side_by_side(blue: &KvNode, green: &KvNode) -> u64 {
    let migration = SideBySideMigration::builder(
        Arc::new(KvSource::new(blue.http_addr())),
        Arc::new(KvDestination::new(green.http_addr())),
    )
    .high_water_marks(Arc::new(KvMarks::new(green.http_addr(), "bench")))
    .page_size(PAGE)
    .build()
    .expect("a migration");
    migration.run_pass().expect("a pass").copied
}

fn bench(c: &mut Criterion) {
    let (blue, _blue_dir) = node();
    let client = KvClient::new(blue.http_addr());
    for i in 0..KEYS {
        client
            .put(&format!("key-{i:06}"), &format!("value-{i:010}"))
            .expect("fill blue");
    }
    let mut group = c.benchmark_group("side_by_side_copy_2k_keys");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20))
        .throughput(Throughput::Elements(KEYS));
    group.bench_function("baseline_scan_and_put", |b| {
        b.iter_batched(
            node,
            |(green, dir)| {
                let n = scan_and_put(&client, &KvClient::new(green.http_addr()));
                assert_eq!(n, KEYS);
                (green, dir)
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("side_by_side_pass", |b| {
        b.iter_batched(
            node,
            |(green, dir)| {
                assert_eq!(side_by_side(&blue, &green), KEYS);
                (green, dir)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
    if layout_benches::interleave_wanted("side_by_side_copy_2k_keys") {
        report_interleaved(
            "side_by_side_copy_2k_keys: side_by_side_pass / baseline_scan_and_put",
            7,
            |i| {
                let (green_a, _a) = node();
                let (green_b, _b) = node();
                let time_baseline = || {
                    let start = Instant::now();
                    scan_and_put(&client, &KvClient::new(green_a.http_addr()));
                    start.elapsed().as_secs_f64()
                };
                let time_copy = || {
                    let start = Instant::now();
                    side_by_side(&blue, &green_b);
                    start.elapsed().as_secs_f64()
                };
                in_turn(i, time_baseline, time_copy)
            },
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
