//! The cost of finalizing N layout features on `FileStorage` (BENCHMARKS.md): at most
//! N + 1 durable commits of the VERSION file, and time within 1.5x of N hand-written
//! atomic replaces of a VERSION file measured in the same run.
//!
//! One group per N (`finalize_n1`, `finalize_n10`, `finalize_n100`), each with:
//! - `baseline_atomic_replace`: N atomic replaces written by hand (write a temp file,
//!   fsync it, rename it over `VERSION`, fsync the directory); the i-th writes exactly
//!   the bytes of the finalizer's i-th commit, captured in a sanity run (the file grows
//!   by one history entry per feature);
//! - `upgrade_finalizer`: `UpgradeFinalizer::finalize_to` of N features from MLV 0, each
//!   with a no-op `OnFinalize` action, on `FileStorage`.
//!
//! Setup (a fresh directory, opening the manager, which writes the initial VERSION file)
//! is not timed. Directories live under cargo's target temp dir, on the same file system
//! as the build, so the fsyncs are real. Before timing, a sanity run counts the durable
//! commits through a counting `LayoutStorage` wrapper and panics above N + 1.
//!
//! fsync times swing with other disk traffic on a shared machine, and criterion measures
//! the two functions one after the other, so a burst of load can fall on either. Each
//! group therefore also prints an interleaved ratio: baseline and finalizer alternate,
//! pair by pair, and the median of the per-pair ratios is reported.

use layout_benches::{in_turn, report_interleaved};
use std::fs::{self, File};
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use layout_core::state::LayoutState;
use layout_core::storage::format;
use layout_core::storage::VERSION_FILE_NAME;
use layout_core::{
    ActionRegistry, FileStorage, LayoutFeature, LayoutStorage, LayoutVersionManager,
    ManagerOptions, StartIntent, StorageError, UpgradeFinalizer,
};
use tempfile::TempDir;

/// A catalog of 101 layouts: the initial one and 100 features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum BenchFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Feature 1")]
    F1,
    #[layout(version = 2, description = "Feature 2")]
    F2,
    #[layout(version = 3, description = "Feature 3")]
    F3,
    #[layout(version = 4, description = "Feature 4")]
    F4,
    #[layout(version = 5, description = "Feature 5")]
    F5,
    #[layout(version = 6, description = "Feature 6")]
    F6,
    #[layout(version = 7, description = "Feature 7")]
    F7,
    #[layout(version = 8, description = "Feature 8")]
    F8,
    #[layout(version = 9, description = "Feature 9")]
    F9,
    #[layout(version = 10, description = "Feature 10")]
    F10,
    #[layout(version = 11, description = "Feature 11")]
    F11,
    #[layout(version = 12, description = "Feature 12")]
    F12,
    #[layout(version = 13, description = "Feature 13")]
    F13,
    #[layout(version = 14, description = "Feature 14")]
    F14,
    #[layout(version = 15, description = "Feature 15")]
    F15,
    #[layout(version = 16, description = "Feature 16")]
    F16,
    #[layout(version = 17, description = "Feature 17")]
    F17,
    #[layout(version = 18, description = "Feature 18")]
    F18,
    #[layout(version = 19, description = "Feature 19")]
    F19,
    #[layout(version = 20, description = "Feature 20")]
    F20,
    #[layout(version = 21, description = "Feature 21")]
    F21,
    #[layout(version = 22, description = "Feature 22")]
    F22,
    #[layout(version = 23, description = "Feature 23")]
    F23,
    #[layout(version = 24, description = "Feature 24")]
    F24,
    #[layout(version = 25, description = "Feature 25")]
    F25,
    #[layout(version = 26, description = "Feature 26")]
    F26,
    #[layout(version = 27, description = "Feature 27")]
    F27,
    #[layout(version = 28, description = "Feature 28")]
    F28,
    #[layout(version = 29, description = "Feature 29")]
    F29,
    #[layout(version = 30, description = "Feature 30")]
    F30,
    #[layout(version = 31, description = "Feature 31")]
    F31,
    #[layout(version = 32, description = "Feature 32")]
    F32,
    #[layout(version = 33, description = "Feature 33")]
    F33,
    #[layout(version = 34, description = "Feature 34")]
    F34,
    #[layout(version = 35, description = "Feature 35")]
    F35,
    #[layout(version = 36, description = "Feature 36")]
    F36,
    #[layout(version = 37, description = "Feature 37")]
    F37,
    #[layout(version = 38, description = "Feature 38")]
    F38,
    #[layout(version = 39, description = "Feature 39")]
    F39,
    #[layout(version = 40, description = "Feature 40")]
    F40,
    #[layout(version = 41, description = "Feature 41")]
    F41,
    #[layout(version = 42, description = "Feature 42")]
    F42,
    #[layout(version = 43, description = "Feature 43")]
    F43,
    #[layout(version = 44, description = "Feature 44")]
    F44,
    #[layout(version = 45, description = "Feature 45")]
    F45,
    #[layout(version = 46, description = "Feature 46")]
    F46,
    #[layout(version = 47, description = "Feature 47")]
    F47,
    #[layout(version = 48, description = "Feature 48")]
    F48,
    #[layout(version = 49, description = "Feature 49")]
    F49,
    #[layout(version = 50, description = "Feature 50")]
    F50,
    #[layout(version = 51, description = "Feature 51")]
    F51,
    #[layout(version = 52, description = "Feature 52")]
    F52,
    #[layout(version = 53, description = "Feature 53")]
    F53,
    #[layout(version = 54, description = "Feature 54")]
    F54,
    #[layout(version = 55, description = "Feature 55")]
    F55,
    #[layout(version = 56, description = "Feature 56")]
    F56,
    #[layout(version = 57, description = "Feature 57")]
    F57,
    #[layout(version = 58, description = "Feature 58")]
    F58,
    #[layout(version = 59, description = "Feature 59")]
    F59,
    #[layout(version = 60, description = "Feature 60")]
    F60,
    #[layout(version = 61, description = "Feature 61")]
    F61,
    #[layout(version = 62, description = "Feature 62")]
    F62,
    #[layout(version = 63, description = "Feature 63")]
    F63,
    #[layout(version = 64, description = "Feature 64")]
    F64,
    #[layout(version = 65, description = "Feature 65")]
    F65,
    #[layout(version = 66, description = "Feature 66")]
    F66,
    #[layout(version = 67, description = "Feature 67")]
    F67,
    #[layout(version = 68, description = "Feature 68")]
    F68,
    #[layout(version = 69, description = "Feature 69")]
    F69,
    #[layout(version = 70, description = "Feature 70")]
    F70,
    #[layout(version = 71, description = "Feature 71")]
    F71,
    #[layout(version = 72, description = "Feature 72")]
    F72,
    #[layout(version = 73, description = "Feature 73")]
    F73,
    #[layout(version = 74, description = "Feature 74")]
    F74,
    #[layout(version = 75, description = "Feature 75")]
    F75,
    #[layout(version = 76, description = "Feature 76")]
    F76,
    #[layout(version = 77, description = "Feature 77")]
    F77,
    #[layout(version = 78, description = "Feature 78")]
    F78,
    #[layout(version = 79, description = "Feature 79")]
    F79,
    #[layout(version = 80, description = "Feature 80")]
    F80,
    #[layout(version = 81, description = "Feature 81")]
    F81,
    #[layout(version = 82, description = "Feature 82")]
    F82,
    #[layout(version = 83, description = "Feature 83")]
    F83,
    #[layout(version = 84, description = "Feature 84")]
    F84,
    #[layout(version = 85, description = "Feature 85")]
    F85,
    #[layout(version = 86, description = "Feature 86")]
    F86,
    #[layout(version = 87, description = "Feature 87")]
    F87,
    #[layout(version = 88, description = "Feature 88")]
    F88,
    #[layout(version = 89, description = "Feature 89")]
    F89,
    #[layout(version = 90, description = "Feature 90")]
    F90,
    #[layout(version = 91, description = "Feature 91")]
    F91,
    #[layout(version = 92, description = "Feature 92")]
    F92,
    #[layout(version = 93, description = "Feature 93")]
    F93,
    #[layout(version = 94, description = "Feature 94")]
    F94,
    #[layout(version = 95, description = "Feature 95")]
    F95,
    #[layout(version = 96, description = "Feature 96")]
    F96,
    #[layout(version = 97, description = "Feature 97")]
    F97,
    #[layout(version = 98, description = "Feature 98")]
    F98,
    #[layout(version = 99, description = "Feature 99")]
    F99,
    #[layout(version = 100, description = "Feature 100")]
    F100,
}

/// The component; its actions do nothing.
struct Component;

/// The feature counts finalized.
const COUNTS: [u32; 3] = [1, 10, 100];

/// Counts the durable commits (successful stores) of the VERSION file, and optionally
/// keeps the bytes of each.
#[derive(Debug)]
struct CountingStorage {
    inner: FileStorage,
    commits: Arc<AtomicUsize>,
    recorded: Option<Arc<Mutex<Vec<String>>>>,
}

impl LayoutStorage for CountingStorage {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        self.inner.load()
    }
    fn store(&self, state: &LayoutState) -> Result<(), StorageError> {
        self.inner.store(state)?;
        self.commits.fetch_add(1, Ordering::SeqCst);
        if let Some(recorded) = &self.recorded {
            recorded
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(format::encode(state));
        }
        Ok(())
    }
}

/// A fresh component directory, pre-finalized at MLV 0, and its finalizer.
struct Fresh {
    // Dropped after the finalizer (field order), outside the timing.
    finalizer: UpgradeFinalizer<BenchFeature, Component>,
    commits: Arc<AtomicUsize>,
    _dir: TempDir,
}

fn scratch_dir() -> TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench temp dir")
}

fn fresh(recorded: Option<Arc<Mutex<Vec<String>>>>) -> Fresh {
    let dir = scratch_dir();
    let commits = Arc::new(AtomicUsize::new(0));
    let storage = CountingStorage {
        inner: FileStorage::new(dir.path()),
        commits: Arc::clone(&commits),
        recorded,
    };
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm =
        LayoutVersionManager::<BenchFeature>::open(storage, opts).expect("bench manager opens");
    let registry = BenchFeature::ALL[1..]
        .iter()
        .fold(ActionRegistry::builder(), |builder, &feature| {
            builder.on_finalize(feature, |_: &Component, _| Ok(()))
        })
        .build()
        .expect("bench registry");
    // The initial VERSION file belongs to the setup: count only what finalizing adds.
    commits.store(0, Ordering::SeqCst);
    Fresh {
        finalizer: UpgradeFinalizer::new(Arc::new(lvm), registry),
        commits,
        _dir: dir,
    }
}

fn target(n: u32) -> BenchFeature {
    BenchFeature::from_layout_version(n).expect("N is in the catalog")
}

fn finalize(fresh: &Fresh, n: u32) {
    fresh
        .finalizer
        .finalize_to(target(n), "bench", &Component)
        .expect("finalize");
}

/// One finalization of `n` features outside the timing: checks the commit bound (panics
/// above N + 1) and returns the initial VERSION file and the bytes of every commit.
fn sanity_run(n: u32) -> (String, Vec<String>) {
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let fresh = fresh(Some(Arc::clone(&recorded)));
    let path = Path::new(&fresh.finalizer.layout_manager().storage_location()).to_owned();
    let initial = fs::read_to_string(&path).expect("initial VERSION");
    recorded
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    finalize(&fresh, n);
    let commits = fresh.commits.load(Ordering::SeqCst);
    let bound = usize::try_from(n).expect("small") + 1;
    assert!(
        commits <= bound,
        "finalizing {n} features made {commits} durable VERSION commits; at most N + 1 = \
         {bound} are allowed"
    );
    println!("finalize_n{n}: {commits} durable VERSION commits for {n} features (bound {bound})");
    let texts = recorded
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(texts.len(), commits);
    assert_eq!(
        fs::read_to_string(&path).expect("final VERSION"),
        *texts.last().expect("a commit"),
        "the recorded bytes are what is on disk"
    );
    (initial, texts)
}

/// A fresh directory holding the initial VERSION file, durable (as the manager's is).
fn baseline_setup(initial: &str) -> TempDir {
    let dir = scratch_dir();
    atomic_replace(dir.path(), initial.as_bytes());
    dir
}

/// The baseline: N hand-written atomic replaces.
fn baseline(dir: &Path, texts: &[String]) {
    for text in texts {
        atomic_replace(dir, text.as_bytes());
    }
}

/// Times `pairs` interleaved pairs (baseline, finalizer; the order alternates) and prints
/// the median, lowest and highest of the per-pair ratios finalizer / baseline.
fn interleaved_ratio(n: u32, initial: &str, texts: &[String], pairs: usize) {
    let label = format!("finalize_n{n}: upgrade_finalizer / baseline_atomic_replace");
    report_interleaved(&label, pairs, |i| {
        let dir = baseline_setup(initial);
        let fresh = fresh(None);
        let time_baseline = || {
            let start = Instant::now();
            baseline(dir.path(), texts);
            start.elapsed().as_secs_f64()
        };
        let time_finalizer = || {
            let start = Instant::now();
            finalize(&fresh, n);
            start.elapsed().as_secs_f64()
        };
        in_turn(i, time_baseline, time_finalizer)
    });
}

/// The benchmark's baseline, deliberately hand-written (not `layout_core::durable`): the
/// bare cost of an atomic replace of the VERSION file in `dir` (temporary file, fsync,
/// rename, directory fsync), which the finalizer's commits are measured against.
fn atomic_replace(dir: &Path, bytes: &[u8]) {
    let temp = dir.join(".VERSION.tmp");
    let mut file = File::create(&temp).expect("create temp");
    file.write_all(bytes).expect("write temp");
    file.sync_all().expect("fsync temp");
    drop(file);
    fs::rename(&temp, dir.join(VERSION_FILE_NAME)).expect("rename");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync directory");
}

fn finalize_n(c: &mut Criterion) {
    for n in COUNTS {
        let (initial, commits) = sanity_run(n);
        // N replaces: the i-th writes the bytes of the finalizer's i-th commit (the last
        // ones again, should it ever commit fewer times than N).
        let last = commits.last().expect("a commit").clone();
        let texts: Vec<String> = (0..usize::try_from(n).expect("small"))
            .map(|i| commits.get(i).unwrap_or(&last).clone())
            .collect();
        // Only under `cargo bench` (which passes `--bench`), not in criterion's test mode.
        if std::env::args().any(|a| a == "--bench") {
            interleaved_ratio(n, &initial, &texts, if n >= 100 { 11 } else { 31 });
        }
        let mut group = c.benchmark_group(format!("finalize_n{n}"));
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(if n >= 100 { 8 } else { 3 }))
            .throughput(Throughput::Elements(u64::from(n)));
        group.bench_function("baseline_atomic_replace", |b| {
            b.iter_batched(
                || baseline_setup(&initial),
                |dir| {
                    baseline(dir.path(), &texts);
                    dir
                },
                BatchSize::PerIteration,
            );
        });
        group.bench_function("upgrade_finalizer", |b| {
            b.iter_batched(
                || fresh(None),
                |fresh| {
                    finalize(&fresh, n);
                    fresh
                },
                BatchSize::PerIteration,
            );
        });
        group.finish();
    }
}

criterion_group!(benches, finalize_n);
criterion_main!(benches);
