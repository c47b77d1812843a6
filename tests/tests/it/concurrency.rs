//! Readers never see an MLV above what is durable, nor one going backwards.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use layout_core::state::LayoutState;
use layout_core::{
    LayoutFeature, LayoutStorage, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent,
    StepOutcome, StorageError,
};

use crate::catalogs::{LongCatalog, OmFeature};

/// Records the highest MLV that is durable, *after* the inner store returned.
#[derive(Debug, Default)]
struct RecordingStorage {
    inner: MemoryStorage,
    durable_mlv: AtomicU32,
}

impl LayoutStorage for RecordingStorage {
    fn location(&self) -> String {
        "recording".into()
    }
    fn load(&self) -> Result<Option<LayoutState>, StorageError> {
        self.inner.load()
    }
    fn store(&self, state: &LayoutState) -> Result<(), StorageError> {
        self.inner.store(state)?;
        self.durable_mlv
            .fetch_max(state.layout_version, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn readers_never_see_an_mlv_above_the_durable_one_or_going_backwards() {
    const READERS: usize = 3;
    const ROUNDS: usize = 20;
    for _ in 0..ROUNDS {
        let storage = Arc::new(RecordingStorage::default());
        let opts = ManagerOptions::default()
            .with_start_intent(StartIntent::Init)
            .with_initial_layout_version(0);
        let lvm = Arc::new(
            LayoutVersionManager::<LongCatalog>::open(Arc::clone(&storage), opts).unwrap(),
        );
        let done = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(READERS + 1));
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (lvm, storage, done, start) = (
                    Arc::clone(&lvm),
                    Arc::clone(&storage),
                    Arc::clone(&done),
                    Arc::clone(&start),
                );
                thread::spawn(move || {
                    start.wait();
                    let mut last = 0;
                    let mut reads = 0u64;
                    loop {
                        let finished = done.load(Ordering::SeqCst);
                        let mlv = lvm.metadata_layout_version();
                        let durable = storage.durable_mlv.load(Ordering::SeqCst);
                        assert!(
                            mlv <= durable,
                            "reader saw MLV {mlv} above durable {durable}"
                        );
                        assert!(mlv >= last, "MLV went backwards: {last} -> {mlv}");
                        let allowed = LongCatalog::ALL
                            .iter()
                            .filter(|f| lvm.is_allowed(**f))
                            .count();
                        assert!(
                            allowed > usize::try_from(mlv).unwrap(),
                            "is_allowed disagrees with MLV {mlv}"
                        );
                        last = mlv;
                        reads += 1;
                        if finished {
                            return (last, reads);
                        }
                    }
                })
            })
            .collect();
        start.wait();
        for feature in &LongCatalog::ALL[1..] {
            lvm.finalize_step(*feature).unwrap();
        }
        done.store(true, Ordering::SeqCst);
        for reader in readers {
            let (last, reads) = reader.join().unwrap();
            assert_eq!(
                last, 15,
                "the last read after completion sees the final MLV"
            );
            assert!(reads > 0);
        }
    }
}

#[test]
fn concurrent_steps_to_the_same_version_finalize_it_exactly_once() {
    const THREADS: usize = 8;
    let storage = Arc::new(MemoryStorage::new());
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm =
        Arc::new(LayoutVersionManager::<OmFeature>::open(Arc::clone(&storage), opts).unwrap());
    let stores_before = storage.durable_stores();
    for feature in [
        OmFeature::BucketLayoutSupport,
        OmFeature::MultiTenancy,
        OmFeature::SnapshotDiff,
    ] {
        let barrier = Arc::new(Barrier::new(THREADS));
        let outcomes: Vec<StepOutcome> = (0..THREADS)
            .map(|_| {
                let (lvm, barrier) = (Arc::clone(&lvm), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    lvm.finalize_step(feature).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let advanced = outcomes
            .iter()
            .filter(|o| matches!(o, StepOutcome::Finalized { .. }))
            .count();
        assert_eq!(advanced, 1, "{feature:?}: {outcomes:?}");
    }
    assert_eq!(
        storage.durable_stores() - stores_before,
        3,
        "one durable write per feature"
    );
    assert_eq!(lvm.metadata_layout_version(), 3);
}
