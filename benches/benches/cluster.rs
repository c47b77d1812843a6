//! The cost of the test kit (BENCHMARKS.md): a 3-node in-process `MiniCluster` built,
//! started and finalized, against opening and finalizing 3 bare managers on the same
//! storage, in the same run (target: within 3x).
//!
//! One group, `cluster_3_nodes`:
//! - `baseline_bare_managers`: for each of 3 directories, open a `LayoutVersionManager`
//!   on `FileStorage` (a fresh install pinned to MLV 0 of a catalog at 3), build an
//!   `UpgradeFinalizer` with no actions, run the start-up actions, finalize the 3
//!   features;
//! - `mini_cluster`: `MiniCluster::builder()` with one kind of 3 nodes of a component
//!   with no actions, the same versions, `build()` (node directories, managers,
//!   components, finalizers, start-up actions) and `finalize_all()`.
//!
//! Both on `FileStorage` in directories under cargo's target temp dir (real fsyncs);
//! creating the (empty) top directories and dropping what was built are not timed.
//! fsync times swing with other disk traffic, so the bench also prints an interleaved
//! ratio (the two alternate pair by pair; the median per-pair ratio), as the finalize
//! bench does.

use layout_benches::{in_turn, report_interleaved};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode};
use layout_core::{
    ActionRegistry, FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent,
    UpgradeFinalizer,
};
use layout_testkit::{HookResult, Kind, MiniCluster, NodeContext, TestComponent};
use tempfile::TempDir;

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

/// A component with no data and no actions: what is timed is the kit.
struct Bare;

impl TestComponent for Bare {
    type Feature = BenchFeature;
    fn open(_ctx: &NodeContext<BenchFeature>) -> HookResult<Self> {
        Ok(Bare)
    }
}

const NODES: usize = 3;

fn temp_root() -> TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench temp dir")
}

/// 3 bare managers: open, finalizer, start-up actions, finalize.
fn bare_managers(root: &Path) -> Vec<Arc<LayoutVersionManager<BenchFeature>>> {
    (0..NODES)
        .map(|i| {
            let opts = ManagerOptions::default()
                .with_start_intent(StartIntent::Init)
                .with_initial_layout_version(0);
            let storage = FileStorage::new(root.join(format!("node-{i}")).join("layout"));
            let lvm =
                Arc::new(LayoutVersionManager::<BenchFeature>::open(storage, opts).expect("open"));
            let finalizer = UpgradeFinalizer::<BenchFeature, ()>::new(
                Arc::clone(&lvm),
                ActionRegistry::empty(),
            );
            finalizer
                .run_prefinalize_actions(&())
                .expect("start-up actions");
            let outcome = finalizer.finalize("bench", &()).expect("finalize");
            assert_eq!(outcome.metadata_layout_version(), 3);
            lvm
        })
        .collect()
}

/// A 3-node mini cluster: build (start) and finalize.
fn mini_cluster(root: PathBuf) -> MiniCluster {
    let cluster = MiniCluster::builder()
        .kind(
            Kind::<Bare>::new("node")
                .nodes(NODES)
                .initial_layout_version(0),
        )
        .root_dir(root)
        .build()
        .expect("build");
    let summaries = cluster.finalize_all().expect("finalize");
    assert!(summaries.iter().all(|s| s.metadata_layout_version == 3));
    cluster
}

/// Times `pairs` interleaved pairs (the order alternates) and prints the median, lowest
/// and highest per-pair ratio, `mini_cluster` / baseline.
fn interleaved_ratio(pairs: usize) {
    let label = "cluster_3_nodes: mini_cluster / baseline_bare_managers";
    report_interleaved(label, pairs, |i| {
        let (base_root, cluster_root) = (temp_root(), temp_root());
        let time_baseline = || {
            let start = Instant::now();
            let managers = bare_managers(base_root.path());
            let elapsed = start.elapsed();
            drop(managers);
            elapsed.as_secs_f64()
        };
        let time_cluster = || {
            let start = Instant::now();
            let cluster = mini_cluster(cluster_root.path().to_owned());
            let elapsed = start.elapsed();
            drop(cluster);
            elapsed.as_secs_f64()
        };
        in_turn(i, time_baseline, time_cluster)
    });
}

fn cluster_3_nodes(c: &mut Criterion) {
    // Only under `cargo bench` (which passes `--bench`), not in criterion's test mode.
    if std::env::args().any(|a| a == "--bench") {
        interleaved_ratio(31);
    }
    let mut group = c.benchmark_group("cluster_3_nodes");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("baseline_bare_managers", |b| {
        b.iter_batched(
            temp_root,
            |root| {
                let managers = bare_managers(root.path());
                (root, managers)
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("mini_cluster", |b| {
        b.iter_batched(
            temp_root,
            |root| {
                let cluster = mini_cluster(root.path().to_owned());
                (root, cluster)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group!(benches, cluster_3_nodes);
criterion_main!(benches);
