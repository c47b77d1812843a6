//! The read paths allocate nothing: `LayoutVersionInstanceFactory::get` and `get_slot`,
//! and a `#[disallowed_until]` method that is allowed.
//!
//! A binary of its own, because it installs a counting global allocator. Counters are
//! per thread, so allocations of the test harness's other threads do not interfere.
#![allow(clippy::unwrap_used)]
// a failed unwrap is a failed test
// A `GlobalAlloc` implementation is `unsafe` by definition; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use layout_core::{
    disallowed_until, LayoutAware, LayoutError, LayoutFeature, LayoutVersionInstanceFactory,
    LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent,
};

/// Counts the allocations of the current thread, then forwards to the system allocator.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter is a const-initialized thread-local without destructor, so touching it never
// allocates or re-enters the allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn count() {
    // `try_with`: the thread-local may be gone while a thread exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// How many allocations `f` made on this thread.
fn allocations_of(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayoutSupport,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
}

trait Handler: Send + Sync {
    fn handle(&self, request: u64) -> u64;
}

struct Versioned(u64);

impl Handler for Versioned {
    fn handle(&self, request: u64) -> u64 {
        request + self.0
    }
}

fn manager() -> LayoutVersionManager<OmFeature> {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    LayoutVersionManager::open(MemoryStorage::new(), opts).unwrap()
}

#[test]
fn the_counter_sees_an_allocation() {
    // Without this, a broken counter would make the tests below pass vacuously.
    assert_eq!(allocations_of(|| drop(black_box(Box::new(7_u64)))), 1);
}

#[test]
fn get_and_get_slot_allocate_nothing_before_and_after_finalization() {
    let lvm = manager();
    let mut factory = LayoutVersionInstanceFactory::<_, _, Box<dyn Handler>>::new(&lvm);
    factory
        .register(
            "CreateKey",
            OmFeature::InitialVersion,
            Box::new(Versioned(0)),
        )
        .unwrap();
    factory
        .register("CreateKey", OmFeature::MultiTenancy, Box::new(Versioned(2)))
        .unwrap();
    let mut strings = LayoutVersionInstanceFactory::<_, String, u64>::new(&lvm);
    strings
        .register("CreateKey".to_owned(), OmFeature::InitialVersion, 0)
        .unwrap();
    let owned_key = "CreateKey".to_owned();
    let slot = factory.slot("CreateKey").unwrap();

    for expected in [0, 2] {
        let made = allocations_of(|| {
            for request in 0..1_000 {
                let by_key = factory.get(&lvm, black_box(&"CreateKey")).unwrap();
                assert_eq!(by_key.handle(request), request + expected);
                let by_slot = factory.get_slot(&lvm, black_box(slot)).unwrap();
                assert_eq!(by_slot.handle(request), request + expected);
                black_box(strings.get(&lvm, black_box(&owned_key)).unwrap());
            }
        });
        assert_eq!(
            made,
            0,
            "lookups at MLV {} allocated",
            lvm.metadata_layout_version()
        );
        for feature in lvm.unfinalized_features() {
            lvm.finalize_step(feature).unwrap();
        }
    }
}

struct Service {
    lvm: LayoutVersionManager<OmFeature>,
}

impl LayoutAware<OmFeature> for Service {
    fn layout_manager(&self) -> &LayoutVersionManager<OmFeature> {
        &self.lvm
    }
}

impl Service {
    #[disallowed_until(OmFeature::BucketLayoutSupport)]
    fn bucket_layout(&self, bucket: u64) -> Result<u64, LayoutError> {
        Ok(bucket * 2)
    }
}

#[test]
fn an_allowed_gated_call_allocates_nothing() {
    let service = Service { lvm: manager() };
    service
        .lvm
        .finalize_step(OmFeature::BucketLayoutSupport)
        .unwrap();
    let made = allocations_of(|| {
        for bucket in 0..1_000 {
            assert_eq!(
                service.bucket_layout(black_box(bucket)).unwrap(),
                bucket * 2
            );
        }
    });
    assert_eq!(made, 0);
}
