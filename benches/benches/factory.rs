//! The cost of choosing a request handler by layout version.
//!
//! Eight request kinds, some with one handler, some with a second one from a later layout
//! feature; the manager runs pre-finalized at MLV 2 of 3. Each iteration resolves the
//! handlers of 1,024 requests of a fixed pseudo-random mix and hands each to `black_box`
//! (the `_dispatch` group also calls each handler once, as a request dispatcher does).
//!
//! Groups, each a ratio against its `baseline_` in the same run (targets in
//! BENCHMARKS.md):
//! - `factory_by_kind`: a hand-written `match` on (request kind, MLV) against `get_slot`
//!   (target 1.2x) and `get` with an enum key (target 2x);
//! - `factory_by_name`: a hand-written `match` on the key string and the MLV against `get`
//!   with a `&str` key (target 2x);
//! - `factory_vs_classic_1_thread` / `_2_threads`: the classic design, built
//!   here (a read-write lock around a hash map of one priority queue per key; the queue's
//!   top is the instance in use), with the same hasher as the factory's key map
//!   (`KeyBuildHasher`: `foldhash`'s fast hasher with a fixed seed), against `get_slot`
//!   and `get` (target: at least 5x faster). With 2 threads, a second thread runs the same
//!   lookups on the same structure during the whole measurement.
//!
//! Criterion measures one function after the other; on a shared machine a burst of load
//! lands on one side only. Under `cargo bench`, each comparison is therefore also measured
//! *interleaved*: batches of the baseline and of the subject alternate, pair by pair, and
//! the median of the per-pair ratios is printed. That is the figure to judge targets by.

use layout_benches::{in_turn, interleave_wanted, report_interleaved};
use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use layout_core::__private::KeyBuildHasher;
use layout_core::factory::Slot;
use layout_core::{
    LayoutFeature, LayoutVersionInstanceFactory, LayoutVersionManager, ManagerOptions,
    MemoryStorage, StartIntent,
};
use parking_lot::RwLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum BenchFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayout,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
    #[layout(version = 3, description = "Snapshot diff tables")]
    SnapshotDiff,
}

trait Handler: Send + Sync {
    fn handle(&self, request: u64) -> u64;
}

/// A handler; `version` makes each instance's answer distinct.
struct Versioned {
    version: u64,
}

impl Handler for Versioned {
    fn handle(&self, request: u64) -> u64 {
        request.wrapping_mul(31) ^ self.version
    }
}

const REQUESTS: usize = 1024;

/// The request kinds, and the features their handlers belong to.
const KINDS: [(&str, &[BenchFeature]); 8] = [
    (
        "CreateKey",
        &[BenchFeature::Initial, BenchFeature::MultiTenancy],
    ),
    ("DeleteKey", &[BenchFeature::Initial]),
    (
        "RenameKey",
        &[BenchFeature::Initial, BenchFeature::BucketLayout],
    ),
    (
        "CommitKey",
        &[BenchFeature::Initial, BenchFeature::MultiTenancy],
    ),
    (
        "CreateBucket",
        &[BenchFeature::Initial, BenchFeature::BucketLayout],
    ),
    ("DeleteBucket", &[BenchFeature::Initial]),
    (
        "CreateVolume",
        &[BenchFeature::Initial, BenchFeature::SnapshotDiff],
    ),
    ("CreateTenant", &[BenchFeature::MultiTenancy]),
];

fn handler_for(kind: usize, feature: BenchFeature) -> Box<dyn Handler> {
    Box::new(Versioned {
        version: (kind as u64) << 8 | u64::from(feature.layout_version()),
    })
}

/// A fixed pseudo-random mix of request kinds.
fn mix() -> Vec<usize> {
    let mut x: u32 = 0x9e37_79b9;
    (0..REQUESTS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 8) as usize
        })
        .collect()
}

/// What a developer writes without a factory: one field per handler, a `match` on the
/// request kind and the MLV.
struct HandWritten {
    create_key: [Box<dyn Handler>; 2],
    delete_key: Box<dyn Handler>,
    rename_key: [Box<dyn Handler>; 2],
    commit_key: [Box<dyn Handler>; 2],
    create_bucket: [Box<dyn Handler>; 2],
    delete_bucket: Box<dyn Handler>,
    create_volume: [Box<dyn Handler>; 2],
    create_tenant: Box<dyn Handler>,
}

impl HandWritten {
    fn new() -> Self {
        use BenchFeature::{BucketLayout, Initial, MultiTenancy, SnapshotDiff};
        Self {
            create_key: [handler_for(0, Initial), handler_for(0, MultiTenancy)],
            delete_key: handler_for(1, Initial),
            rename_key: [handler_for(2, Initial), handler_for(2, BucketLayout)],
            commit_key: [handler_for(3, Initial), handler_for(3, MultiTenancy)],
            create_bucket: [handler_for(4, Initial), handler_for(4, BucketLayout)],
            delete_bucket: handler_for(5, Initial),
            create_volume: [handler_for(6, Initial), handler_for(6, SnapshotDiff)],
            create_tenant: handler_for(7, MultiTenancy),
        }
    }

    /// By request kind (resolved beforehand, as a slot is).
    #[inline]
    fn by_kind(
        &self,
        lvm: &LayoutVersionManager<BenchFeature>,
        kind: usize,
    ) -> Option<&dyn Handler> {
        let mlv = lvm.metadata_layout_version();
        // 0: the initial handler, 1: the one of the later feature.
        let from = |version: u32| usize::from(mlv >= version);
        Some(match kind {
            0 => &*self.create_key[from(2)],
            1 => &*self.delete_key,
            2 => &*self.rename_key[from(1)],
            3 => &*self.commit_key[from(2)],
            4 => &*self.create_bucket[from(1)],
            5 => &*self.delete_bucket,
            6 => &*self.create_volume[from(3)],
            7 if mlv >= 2 => &*self.create_tenant,
            _ => return None,
        })
    }

    /// By key string.
    #[inline]
    fn by_key(&self, lvm: &LayoutVersionManager<BenchFeature>, key: &str) -> Option<&dyn Handler> {
        let kind = match key {
            "CreateKey" => 0,
            "DeleteKey" => 1,
            "RenameKey" => 2,
            "CommitKey" => 3,
            "CreateBucket" => 4,
            "DeleteBucket" => 5,
            "CreateVolume" => 6,
            "CreateTenant" => 7,
            _ => return None,
        };
        self.by_kind(lvm, kind)
    }
}

/// The classic design: under a read-write lock, per key a min-heap holding every instance
/// above the MLV plus the one in use (at its top). `get` peeks; a finalize listener pops.
struct Classic {
    instances: RwLock<HashMap<&'static str, BinaryHeap<Reverse<Entry>>, KeyBuildHasher>>,
}

struct Entry {
    version: u32,
    instance: Arc<dyn Handler>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.version.cmp(&other.version)
    }
}

impl Classic {
    fn new(lvm: &LayoutVersionManager<BenchFeature>) -> Self {
        let mut map: HashMap<_, BinaryHeap<Reverse<Entry>>, KeyBuildHasher> = HashMap::default();
        for (kind, (key, features)) in KINDS.iter().enumerate() {
            let heap = map.entry(*key).or_default();
            for &feature in *features {
                heap.push(Reverse(Entry {
                    version: feature.layout_version(),
                    instance: Arc::from(handler_for(kind, feature)),
                }));
            }
        }
        let classic = Self {
            instances: RwLock::new(map),
        };
        classic.on_finalize(lvm);
        classic
    }

    /// The finalize listener: drops instances superseded at the current MLV.
    fn on_finalize(&self, lvm: &LayoutVersionManager<BenchFeature>) {
        let mlv = lvm.metadata_layout_version();
        for heap in self.instances.write().values_mut() {
            let mut entries: Vec<Entry> = heap.drain().map(|Reverse(entry)| entry).collect();
            entries.sort();
            // Keep the highest version at or below the MLV, and everything above it.
            let in_use = entries.iter().rposition(|e| e.version <= mlv).unwrap_or(0);
            *heap = entries.drain(in_use..).map(Reverse).collect();
        }
    }

    /// Calls `f` with the instance in use for `key`, under the read lock.
    #[inline]
    fn with<R>(
        &self,
        lvm: &LayoutVersionManager<BenchFeature>,
        key: &str,
        f: impl FnOnce(&dyn Handler) -> R,
    ) -> Option<R> {
        let mlv = lvm.metadata_layout_version();
        let instances = self.instances.read();
        let top = &instances.get(key)?.peek()?.0;
        (top.version <= mlv).then(|| f(&*top.instance))
    }
}

type Factory = LayoutVersionInstanceFactory<BenchFeature, &'static str, Box<dyn Handler>>;

/// A request kind as an enum, as a protocol's request-type field decodes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    CreateKey,
    DeleteKey,
    RenameKey,
    CommitKey,
    CreateBucket,
    DeleteBucket,
    CreateVolume,
    CreateTenant,
}

const KIND_ENUM: [Kind; 8] = [
    Kind::CreateKey,
    Kind::DeleteKey,
    Kind::RenameKey,
    Kind::CommitKey,
    Kind::CreateBucket,
    Kind::DeleteBucket,
    Kind::CreateVolume,
    Kind::CreateTenant,
];

type EnumFactory = LayoutVersionInstanceFactory<BenchFeature, Kind, Box<dyn Handler>>;

struct Setup {
    lvm: LayoutVersionManager<BenchFeature>,
    factory: Factory,
    enum_factory: EnumFactory,
    hand_written: HandWritten,
    classic: Classic,
    kinds: Vec<usize>,
    enum_keys: Vec<Kind>,
    keys: Vec<&'static str>,
    slots: Vec<Slot>,
}

fn setup() -> Setup {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(2);
    let lvm = LayoutVersionManager::open(MemoryStorage::new(), opts).expect("bench manager opens");
    let mut factory = Factory::new(&lvm);
    let mut enum_factory = EnumFactory::new(&lvm);
    for (kind, (key, features)) in KINDS.iter().enumerate() {
        for &feature in *features {
            factory
                .register(key, feature, handler_for(kind, feature))
                .expect("bench handlers register");
            enum_factory
                .register(KIND_ENUM[kind], feature, handler_for(kind, feature))
                .expect("bench handlers register");
        }
    }
    let kinds = mix();
    let enum_keys = kinds.iter().map(|&kind| KIND_ENUM[kind]).collect();
    let keys = kinds.iter().map(|&kind| KINDS[kind].0).collect();
    let slots = kinds
        .iter()
        .map(|&kind| factory.slot(KINDS[kind].0).expect("registered"))
        .collect();
    Setup {
        classic: Classic::new(&lvm),
        hand_written: HandWritten::new(),
        lvm,
        factory,
        enum_factory,
        kinds,
        enum_keys,
        keys,
        slots,
    }
}

/// One iteration of each design: resolve the handler of every request of the mix and hand
/// it to `black_box`.
mod lookup {
    use super::{black_box, Handler, Setup};

    pub(super) fn hand_written_by_kind(s: &Setup) {
        let (lvm, hand_written) = (black_box(&s.lvm), black_box(&s.hand_written));
        for &kind in &s.kinds {
            black_box(hand_written.by_kind(lvm, kind));
        }
    }

    pub(super) fn hand_written_by_name(s: &Setup) {
        let (lvm, hand_written) = (black_box(&s.lvm), black_box(&s.hand_written));
        for &key in &s.keys {
            black_box(hand_written.by_key(lvm, key));
        }
    }

    pub(super) fn get_slot(s: &Setup) {
        let (lvm, factory) = (black_box(&s.lvm), black_box(&s.factory));
        for &slot in &s.slots {
            black_box(factory.get_slot(lvm, slot).ok());
        }
    }

    pub(super) fn get_enum_key(s: &Setup) {
        let (lvm, factory) = (black_box(&s.lvm), black_box(&s.enum_factory));
        for key in &s.enum_keys {
            black_box(factory.get(lvm, key).ok());
        }
    }

    pub(super) fn get_str_key(s: &Setup) {
        let (lvm, factory) = (black_box(&s.lvm), black_box(&s.factory));
        for key in &s.keys {
            black_box(factory.get(lvm, key).ok());
        }
    }

    /// The classic factory cannot hand a reference out of its lock: the handler's address
    /// is taken under the read lock.
    pub(super) fn classic(s: &Setup) {
        let (lvm, classic) = (black_box(&s.lvm), black_box(&s.classic));
        for key in &s.keys {
            black_box(classic.with(lvm, key, |h| {
                std::ptr::from_ref::<dyn Handler>(h).cast::<()>()
            }));
        }
    }
}

/// Resolve and call once: what a request dispatcher does.
mod dispatch {
    use super::{black_box, Setup};

    pub(super) fn hand_written_by_kind(s: &Setup) -> u64 {
        let (lvm, hand_written) = (black_box(&s.lvm), black_box(&s.hand_written));
        let mut sum = 0_u64;
        for (i, &kind) in s.kinds.iter().enumerate() {
            if let Some(h) = hand_written.by_kind(lvm, kind) {
                sum = sum.wrapping_add(h.handle(i as u64));
            }
        }
        sum
    }

    pub(super) fn get_slot(s: &Setup) -> u64 {
        let (lvm, factory) = (black_box(&s.lvm), black_box(&s.factory));
        let mut sum = 0_u64;
        for (i, &slot) in s.slots.iter().enumerate() {
            if let Ok(h) = factory.get_slot(lvm, slot) {
                sum = sum.wrapping_add(h.handle(i as u64));
            }
        }
        sum
    }

    pub(super) fn classic(s: &Setup) -> u64 {
        let (lvm, classic) = (black_box(&s.lvm), black_box(&s.classic));
        let mut sum = 0_u64;
        for (i, key) in s.keys.iter().enumerate() {
            if let Some(answer) = classic.with(lvm, key, |h| h.handle(i as u64)) {
                sum = sum.wrapping_add(answer);
            }
        }
        sum
    }
}

/// Runs `body` while another thread runs `design` on the same structures.
fn with_second_thread<R>(s: &Setup, design: fn(&Setup), body: impl FnOnce() -> R) -> R {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                design(s);
            }
        });
        let result = body();
        stop.store(true, Ordering::Relaxed);
        result
    })
}

fn factory(c: &mut Criterion) {
    let s = setup();
    // The designs serve the same handlers before anything is measured.
    let expected = dispatch::hand_written_by_kind(&s);
    assert_eq!(
        dispatch::get_slot(&s),
        expected,
        "get_slot serves other handlers"
    );
    assert_eq!(
        dispatch::classic(&s),
        expected,
        "the classic design serves other handlers"
    );
    for (i, &kind) in s.kinds.iter().enumerate() {
        let by_enum = s
            .enum_factory
            .get(&s.lvm, &s.enum_keys[i])
            .ok()
            .map(|h| h.handle(7));
        let by_str = s.factory.get(&s.lvm, &s.keys[i]).ok().map(|h| h.handle(7));
        let by_name = s
            .hand_written
            .by_key(&s.lvm, s.keys[i])
            .map(|h| h.handle(7));
        let by_kind = s.hand_written.by_kind(&s.lvm, kind).map(|h| h.handle(7));
        assert!(by_enum == by_kind && by_str == by_kind && by_name == by_kind);
    }

    let mut group = c.benchmark_group("factory_by_kind");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    group.bench_function("baseline_hand_written_match", |b| {
        b.iter(|| lookup::hand_written_by_kind(&s));
    });
    group.bench_function("get_slot", |b| {
        b.iter(|| lookup::get_slot(&s));
    });
    group.bench_function("get_enum_key", |b| {
        b.iter(|| lookup::get_enum_key(&s));
    });
    group.finish();

    let mut group = c.benchmark_group("factory_by_kind_dispatch");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    group.bench_function("baseline_hand_written_match", |b| {
        b.iter(|| dispatch::hand_written_by_kind(&s));
    });
    group.bench_function("get_slot", |b| {
        b.iter(|| dispatch::get_slot(&s));
    });
    group.finish();

    let mut group = c.benchmark_group("factory_by_name");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    group.bench_function("baseline_hand_written_match_on_name", |b| {
        b.iter(|| lookup::hand_written_by_name(&s));
    });
    group.bench_function("get_str_key", |b| {
        b.iter(|| lookup::get_str_key(&s));
    });
    group.finish();

    let mut group = c.benchmark_group("factory_vs_classic_1_thread");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    group.bench_function("baseline_classic_rwlock_map_heap", |b| {
        b.iter(|| lookup::classic(&s));
    });
    group.bench_function("get_slot", |b| {
        b.iter(|| lookup::get_slot(&s));
    });
    group.bench_function("get_enum_key", |b| {
        b.iter(|| lookup::get_enum_key(&s));
    });
    group.bench_function("get_str_key", |b| {
        b.iter(|| lookup::get_str_key(&s));
    });
    group.finish();

    let mut group = c.benchmark_group("factory_vs_classic_2_threads");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    for (name, design) in [
        (
            "baseline_classic_rwlock_map_heap",
            lookup::classic as fn(&Setup),
        ),
        ("get_slot", lookup::get_slot),
        ("get_enum_key", lookup::get_enum_key),
        ("get_str_key", lookup::get_str_key),
    ] {
        group.bench_function(name, |b| {
            with_second_thread(&s, design, || b.iter(|| design(&s)));
        });
    }
    group.finish();

    interleaved_ratios(&s);
}

const PAIRS: usize = 101;
const BATCH: usize = 100;

/// One iteration of a design under measurement.
type Design = fn(&Setup);

/// Times `PAIRS` pairs of `BATCH` iterations of `baseline` and of `subject` (the order
/// alternates), telling `on_switch` which is about to run, and prints the median, lowest
/// and highest ratio subject / baseline.
fn interleaved(
    label: &str,
    s: &Setup,
    baseline: fn(&Setup),
    subject: fn(&Setup),
    on_switch: &dyn Fn(fn(&Setup)),
) {
    let time = |design: fn(&Setup)| {
        on_switch(design);
        design(s); // warm the caches for this design
        let start = Instant::now();
        for _ in 0..BATCH {
            design(s);
        }
        start.elapsed().as_secs_f64()
    };
    report_interleaved(label, PAIRS, |i| {
        in_turn(i, || time(baseline), || time(subject))
    });
}

fn dispatch_hand_written_by_kind(s: &Setup) {
    black_box(dispatch::hand_written_by_kind(s));
}

fn dispatch_get_slot(s: &Setup) {
    black_box(dispatch::get_slot(s));
}

/// The interleaved ratios of every comparison the targets name.
fn interleaved_ratios(s: &Setup) {
    if !interleave_wanted("factory") {
        return;
    }
    let none = |_: fn(&Setup)| {};
    let one_thread: [(&str, Design, Design); 8] = [
        (
            "factory_by_kind: get_slot / baseline_hand_written_match",
            lookup::hand_written_by_kind,
            lookup::get_slot,
        ),
        (
            "factory_by_kind: get_enum_key / baseline_hand_written_match",
            lookup::hand_written_by_kind,
            lookup::get_enum_key,
        ),
        (
            "factory_by_kind_dispatch: get_slot / baseline_hand_written_match",
            dispatch_hand_written_by_kind,
            dispatch_get_slot,
        ),
        (
            "factory_by_name: get_str_key / baseline_hand_written_match_on_name",
            lookup::hand_written_by_name,
            lookup::get_str_key,
        ),
        (
            "factory_vs_classic_1_thread: get_slot / baseline_classic_rwlock_map_heap",
            lookup::classic,
            lookup::get_slot,
        ),
        (
            "factory_vs_classic_1_thread: get_enum_key / baseline_classic_rwlock_map_heap",
            lookup::classic,
            lookup::get_enum_key,
        ),
        (
            "factory_vs_classic_1_thread: get_str_key / baseline_classic_rwlock_map_heap",
            lookup::classic,
            lookup::get_str_key,
        ),
        // Not a target: how far below the classic a hand-written `match` on the same key
        // strings gets, i.e. what the `&str` row above can be judged against.
        (
            "factory_vs_classic_1_thread (reference): hand_written_match_on_name / baseline_classic_rwlock_map_heap",
            lookup::classic,
            lookup::hand_written_by_name,
        ),
    ];
    for (label, baseline, subject) in one_thread {
        interleaved(label, s, baseline, subject, &none);
    }

    // Two threads: the second one runs whichever design is being timed.
    let designs: [fn(&Setup); 4] = [
        lookup::classic,
        lookup::get_slot,
        lookup::get_enum_key,
        lookup::get_str_key,
    ];
    let current = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                designs[current.load(Ordering::Relaxed)](s);
            }
        });
        let switch = |design: fn(&Setup)| {
            let index = designs
                .iter()
                .position(|&d| std::ptr::fn_addr_eq(d, design))
                .unwrap_or(0);
            current.store(index, Ordering::Relaxed);
        };
        for (name, subject) in [
            ("get_slot", lookup::get_slot as fn(&Setup)),
            ("get_enum_key", lookup::get_enum_key),
            ("get_str_key", lookup::get_str_key),
        ] {
            interleaved(
                &format!("factory_vs_classic_2_threads: {name} / baseline_classic_rwlock_map_heap"),
                s,
                lookup::classic,
                subject,
                &switch,
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = factory
}
criterion_main!(benches);
