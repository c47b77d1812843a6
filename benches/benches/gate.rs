//! The cost of the feature gate: `LayoutVersionManager::is_allowed` against the floor, a
//! relaxed load and compare of a plain `AtomicU32` (what TiKV's feature gate costs).
//!
//! Each iteration checks 1,024 features (a fixed pseudo-random mix of finalized and not),
//! so the loop, not criterion's per-iteration overhead, dominates.

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use layout_core::{
    LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum BenchFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "One")]
    One,
    #[layout(version = 2, description = "Two")]
    Two,
    #[layout(version = 3, description = "Three")]
    Three,
}

const CHECKS: usize = 1024;

fn mix() -> Vec<BenchFeature> {
    let mut x: u32 = 0x9e37_79b9;
    (0..CHECKS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            BenchFeature::ALL[(x % 4) as usize]
        })
        .collect()
}

fn is_allowed(c: &mut Criterion) {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(1);
    let lvm = LayoutVersionManager::<BenchFeature>::open(MemoryStorage::new(), opts)
        .expect("bench manager opens");
    let features = mix();
    let versions: Vec<u32> = features.iter().map(|f| f.layout_version()).collect();
    let plain = AtomicU32::new(1);

    let mut group = c.benchmark_group("is_allowed");
    group.throughput(Throughput::Elements(CHECKS as u64));
    group.bench_function("baseline_atomic_u32_relaxed", |b| {
        b.iter(|| {
            let plain = black_box(&plain);
            black_box(&versions)
                .iter()
                .filter(|&&v| v <= plain.load(Ordering::Relaxed))
                .count()
        });
    });
    group.bench_function("layout_version_manager", |b| {
        b.iter(|| {
            let lvm = black_box(&lvm);
            black_box(&features)
                .iter()
                .filter(|&&f| lvm.is_allowed(f))
                .count()
        });
    });
    group.finish();
}

criterion_group!(benches, is_allowed);
criterion_main!(benches);
