//! The cost of `#[disallowed_until]`: a gated method against the same method ungated
//! (target: within 1.2x).
//!
//! Each iteration makes 1,024 calls through a `black_box`ed component on a finalized
//! feature: the gate's hot path, one atomic load of the MLV, a compare and a branch not
//! taken (the refusal is built out of line, in a cold function). Two groups:
//! - `disallowed_until` (the target): an API method as services have them, called, not
//!   inlined (`#[inline(never)]` on both versions), that can fail on its own with an error
//!   that carries data (it looks a bucket up; an unknown id is `NoSuchBucket(id, reason)`);
//!   arguments come from an array;
//! - `disallowed_until_inlined_infallible_body` (the worst case, for the record): a
//!   one-multiply body that cannot fail, inlined into the loop, so the ungated version
//!   compiles to four instructions per call and the gate's three stand out.
//!
//! Criterion measures one function after the other; on a shared machine a burst of load
//! lands on one side only. Under `cargo bench`, each comparison is therefore also measured
//! *interleaved*: batches of the ungated and the gated loop alternate, pair by pair, and
//! the median of the per-pair ratios is printed. That is the figure to judge the target by.

use layout_benches::{in_turn, interleave_wanted, report_interleaved};
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use layout_core::{
    disallowed_until, LayoutAware, LayoutError, LayoutFeature, LayoutVersionManager,
    ManagerOptions, MemoryStorage, StartIntent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum BenchFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayout,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
}

const CALLS: u64 = 1024;

/// A service's error type.
#[derive(Debug)]
enum ServiceError {
    #[allow(dead_code)] // carried, not read, in a bench
    Layout(LayoutError),
    NoSuchBucket(#[allow(dead_code)] u64, #[allow(dead_code)] String),
}

impl From<LayoutError> for ServiceError {
    fn from(error: LayoutError) -> Self {
        ServiceError::Layout(error)
    }
}

struct Service {
    lvm: LayoutVersionManager<BenchFeature>,
    /// Bucket layouts by bucket id.
    layouts: Vec<u64>,
    salt: u64,
}

impl LayoutAware<BenchFeature> for Service {
    fn layout_manager(&self) -> &LayoutVersionManager<BenchFeature> {
        &self.lvm
    }
}

impl Service {
    #[inline(never)]
    fn bucket_layout_ungated(&self, bucket: u64) -> Result<u64, ServiceError> {
        match usize::try_from(bucket)
            .ok()
            .and_then(|i| self.layouts.get(i))
        {
            Some(layout) => Ok(layout ^ self.salt),
            None => Err(ServiceError::NoSuchBucket(
                bucket,
                "no such bucket".to_owned(),
            )),
        }
    }

    #[inline(never)]
    #[disallowed_until(BenchFeature::BucketLayout)]
    fn bucket_layout_gated(&self, bucket: u64) -> Result<u64, ServiceError> {
        match usize::try_from(bucket)
            .ok()
            .and_then(|i| self.layouts.get(i))
        {
            Some(layout) => Ok(layout ^ self.salt),
            None => Err(ServiceError::NoSuchBucket(
                bucket,
                "no such bucket".to_owned(),
            )),
        }
    }

    #[allow(clippy::unnecessary_wraps)] // the gated method's signature, to compare like with like
    fn bucket_id_ungated(&self, bucket: u64) -> Result<u64, LayoutError> {
        Ok(bucket.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ self.salt)
    }

    #[disallowed_until(BenchFeature::BucketLayout)]
    fn bucket_id_gated(&self, bucket: u64) -> Result<u64, LayoutError> {
        Ok(bucket.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ self.salt)
    }
}

fn disallowed_until(c: &mut Criterion) {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(1);
    let service = Service {
        lvm: LayoutVersionManager::open(MemoryStorage::new(), opts).expect("bench manager opens"),
        layouts: (0..CALLS).map(|id| id * 3).collect(),
        salt: 7,
    };
    assert_eq!(
        service.bucket_layout_gated(5).ok(),
        service.bucket_layout_ungated(5).ok()
    );
    let buckets: Vec<u64> = (0..CALLS).collect();

    let api_ungated = || {
        let service = black_box(&service);
        let mut sum = 0_u64;
        for &bucket in black_box(&buckets) {
            if let Ok(layout) = service.bucket_layout_ungated(bucket) {
                sum = sum.wrapping_add(layout);
            }
        }
        sum
    };
    let api_gated = || {
        let service = black_box(&service);
        let mut sum = 0_u64;
        for &bucket in black_box(&buckets) {
            if let Ok(layout) = service.bucket_layout_gated(bucket) {
                sum = sum.wrapping_add(layout);
            }
        }
        sum
    };
    let trivial_ungated = || {
        let service = black_box(&service);
        let mut sum = 0_u64;
        for bucket in 0..CALLS {
            sum = sum.wrapping_add(service.bucket_id_ungated(black_box(bucket)).unwrap_or(0));
        }
        sum
    };
    let trivial_gated = || {
        let service = black_box(&service);
        let mut sum = 0_u64;
        for bucket in 0..CALLS {
            sum = sum.wrapping_add(service.bucket_id_gated(black_box(bucket)).unwrap_or(0));
        }
        sum
    };

    let mut group = c.benchmark_group("disallowed_until");
    group.throughput(Throughput::Elements(CALLS));
    group.bench_function("baseline_ungated_method", |b| b.iter(api_ungated));
    group.bench_function("gated_method", |b| b.iter(api_gated));
    group.finish();

    let mut group = c.benchmark_group("disallowed_until_inlined_infallible_body");
    group.throughput(Throughput::Elements(CALLS));
    group.bench_function("baseline_ungated_method", |b| b.iter(trivial_ungated));
    group.bench_function("gated_method", |b| b.iter(trivial_gated));
    group.finish();

    if interleave_wanted("disallowed_until") {
        interleaved(
            "disallowed_until: gated_method / baseline_ungated_method",
            &api_ungated,
            &api_gated,
        );
        interleaved(
            "disallowed_until_inlined_infallible_body: gated_method / baseline_ungated_method",
            &trivial_ungated,
            &trivial_gated,
        );
    }
}

/// Times 101 pairs of 200 runs of `baseline` and of `subject` (the order alternates) and
/// prints the median, lowest and highest ratio subject / baseline.
fn interleaved(label: &str, baseline: &dyn Fn() -> u64, subject: &dyn Fn() -> u64) {
    let time = |f: &dyn Fn() -> u64| {
        black_box(f());
        let start = Instant::now();
        for _ in 0..200 {
            black_box(f());
        }
        start.elapsed().as_secs_f64()
    };
    report_interleaved(label, 101, |i| {
        in_turn(i, || time(baseline), || time(subject))
    });
}

criterion_group!(benches, disallowed_until);
criterion_main!(benches);
