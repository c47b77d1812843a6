//! The finalization step: persist version v, then publish it.

use std::sync::Arc;

use layout_core::state::{HistoryEntry, HistoryEvent};
use layout_core::storage::InjectedFailure;
use layout_core::{
    FileStorage, LayoutError, LayoutStorage, ManagerOptions, MemoryStorage, StepOutcome,
    StorageError,
};

use crate::catalogs::{init_at, Om, OmFeature};

#[test]
fn the_next_version_moves_the_mlv_and_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), init_at(0)).unwrap();
    let outcome = lvm.finalize_step(OmFeature::BucketLayoutSupport).unwrap();
    assert_eq!(outcome, StepOutcome::Finalized { from: 0, to: 1 });
    assert_eq!(lvm.metadata_layout_version(), 1);
    let on_disk = FileStorage::new(dir.path()).load().unwrap().unwrap();
    assert_eq!(on_disk.layout_version, 1);
    assert_eq!(on_disk.layout_feature, "BucketLayoutSupport");
    drop(lvm);
    let lvm = Om::open(FileStorage::new(dir.path()), ManagerOptions::default()).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
}

#[test]
fn replaying_a_finalized_version_is_a_no_op() {
    let storage = Arc::new(MemoryStorage::new());
    let lvm = Om::open(Arc::clone(&storage), init_at(2)).unwrap();
    let stores = storage.durable_stores();
    for feature in [
        OmFeature::InitialVersion,
        OmFeature::BucketLayoutSupport,
        OmFeature::MultiTenancy,
    ] {
        assert_eq!(
            lvm.finalize_step(feature).unwrap(),
            StepOutcome::AlreadyFinalized {
                metadata_layout_version: 2
            }
        );
    }
    assert_eq!(storage.durable_stores(), stores, "a replay must not write");
    assert_eq!(lvm.metadata_layout_version(), 2);
}

#[test]
fn skipping_a_version_is_an_error_that_names_the_next_one() {
    let lvm = Om::open(MemoryStorage::new(), init_at(0)).unwrap();
    let err = lvm.finalize_step(OmFeature::MultiTenancy).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::VersionSkip {
                requested: 2,
                metadata_layout_version: 0,
                next: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(lvm.metadata_layout_version(), 0);
}

#[test]
fn a_version_beyond_the_software_is_refused() {
    let lvm = Om::open(
        MemoryStorage::new(),
        init_at(1).with_software_layout_version(2),
    )
    .unwrap();
    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    let err = lvm.finalize_step(OmFeature::SnapshotDiff).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::BeyondSoftware {
                requested: 3,
                software_layout_version: 2
            }
        ),
        "{err:?}"
    );
    let err = lvm.finalize_step_version(17).unwrap_err();
    assert!(
        matches!(err, LayoutError::BeyondSoftware { requested: 17, .. }),
        "{err:?}"
    );
    assert_eq!(
        lvm.finalize_step_version(2).unwrap(),
        StepOutcome::AlreadyFinalized {
            metadata_layout_version: 2
        }
    );
}

#[test]
fn a_failed_write_leaves_the_mlv_where_it_was_and_a_retry_succeeds() {
    let storage = Arc::new(MemoryStorage::new());
    let lvm = Om::open(Arc::clone(&storage), init_at(0)).unwrap();
    storage.fail_next_store(InjectedFailure::BeforeWrite);
    let err = lvm
        .finalize_step(OmFeature::BucketLayoutSupport)
        .unwrap_err();
    assert!(
        matches!(err, LayoutError::Storage(StorageError::Io { .. })),
        "{err:?}"
    );
    assert_eq!(lvm.metadata_layout_version(), 0);
    assert_eq!(storage.snapshot().unwrap().layout_version, 0);
    assert!(!lvm.is_allowed(OmFeature::BucketLayoutSupport));

    lvm.finalize_step(OmFeature::BucketLayoutSupport).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
    assert_eq!(storage.snapshot().unwrap().layout_version, 1);
}

#[test]
fn a_write_that_may_have_landed_is_not_published_until_confirmed() {
    let storage = Arc::new(MemoryStorage::new());
    let lvm = Om::open(Arc::clone(&storage), init_at(0)).unwrap();
    storage.fail_next_store(InjectedFailure::AfterWrite);
    assert!(lvm.finalize_step(OmFeature::BucketLayoutSupport).is_err());
    // The disk may be ahead of memory, never behind it.
    assert_eq!(lvm.metadata_layout_version(), 0);
    assert_eq!(storage.snapshot().unwrap().layout_version, 1);
    // The retry is accepted (v == MLV + 1 from memory's point of view) and confirms it.
    assert_eq!(
        lvm.finalize_step(OmFeature::BucketLayoutSupport).unwrap(),
        StepOutcome::Finalized { from: 0, to: 1 }
    );
    drop(lvm);
    let lvm = Om::open(Arc::clone(&storage), ManagerOptions::default()).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
}

#[test]
fn a_step_can_record_history_in_the_same_write() {
    let storage = Arc::new(MemoryStorage::new());
    let lvm = Om::open(Arc::clone(&storage), init_at(0)).unwrap();
    let stores = storage.durable_stores();
    lvm.finalize_step_with(OmFeature::BucketLayoutSupport, |s| {
        s.history.push(HistoryEntry::new(
            5,
            "admin",
            HistoryEvent::Finalized,
            0,
            1,
            "BucketLayoutSupport",
        ));
    })
    .unwrap();
    assert_eq!(
        storage.durable_stores(),
        stores + 1,
        "one durable write per step"
    );
    let state = storage.snapshot().unwrap();
    assert_eq!(state.layout_version, 1);
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].client_id, "admin");
}

#[test]
fn keys_written_by_a_newer_release_survive_a_step_of_this_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::new(dir.path());
    Om::open(storage.clone(), init_at(1)).unwrap();
    // A newer release ran on this disk while pre-finalized and added its own keys.
    let mut state = storage.load().unwrap().unwrap();
    state
        .extra
        .insert("newer.release.marker".into(), "42".into());
    state
        .extra
        .insert("finalization.newer-field".into(), "x=y".into());
    storage.store(&state).unwrap();

    let lvm = Om::open(storage.clone(), ManagerOptions::default()).unwrap();
    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    let after = storage.load().unwrap().unwrap();
    assert_eq!(after.layout_version, 2);
    assert_eq!(after.extra, state.extra);
}
