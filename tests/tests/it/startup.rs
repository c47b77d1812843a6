//! The start-up rules of the layout version manager, one test per rule.

use std::fs;
use std::sync::Arc;

use layout_core::state::LayoutState;
use layout_core::{
    FeatureStatus, FileStorage, LayoutError, LayoutFeature, LayoutStorage, LayoutVersionManager,
    ManagerOptions, MemoryStorage, StartIntent, StorageError,
};
use tempfile::TempDir;

use crate::catalogs::{init_at, Om, OmFeature, OmFeatureRenamed};

fn fresh_dir_at(version: u32) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    Om::open(FileStorage::new(dir.path()), init_at(version)).unwrap();
    dir
}

fn version_bytes(dir: &TempDir) -> Vec<u8> {
    fs::read(dir.path().join("VERSION")).unwrap()
}

#[test]
fn refuses_to_start_without_state_unless_initializing() {
    let dir = tempfile::tempdir().unwrap();
    let err = Om::open(FileStorage::new(dir.path()), ManagerOptions::default()).unwrap_err();
    assert!(matches!(err, LayoutError::NotInitialized { .. }), "{err:?}");
    assert!(err.to_string().contains("Init"), "{err}");
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused start must not create anything"
    );
}

#[test]
fn upgrade_and_downgrade_intents_do_not_initialize_either() {
    for intent in [StartIntent::Upgrade, StartIntent::Downgrade] {
        let storage = MemoryStorage::new();
        let opts = ManagerOptions::default().with_start_intent(intent);
        let err = Om::open(storage, opts).unwrap_err();
        assert!(
            matches!(err, LayoutError::NotInitialized { .. }),
            "{intent:?}: {err:?}"
        );
    }
}

#[test]
fn a_fresh_install_starts_finalized_at_the_software_layout_version() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
    let lvm = Om::open(FileStorage::new(dir.path()), opts).unwrap();
    assert!(lvm.was_created());
    assert_eq!(lvm.metadata_layout_version(), 3);
    assert_eq!(lvm.software_layout_version(), 3);
    assert!(!lvm.needs_finalization());
    assert!(lvm.unfinalized_features().is_empty());
    let state = lvm.state();
    assert_eq!(state.layout_feature, "SnapshotDiff");
    assert_eq!(state.component, "OmFeature");
    assert_eq!(state.first_upgrade_version, 3);
    assert!(dir.path().join("VERSION").is_file());
}

#[test]
fn a_fresh_install_pinned_lower_runs_pre_finalized() {
    let dir = tempfile::tempdir().unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), init_at(1)).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
    assert_eq!(
        lvm.metadata_layout_feature(),
        OmFeature::BucketLayoutSupport
    );
    assert!(lvm.needs_finalization());
    assert_eq!(
        lvm.unfinalized_features(),
        [OmFeature::MultiTenancy, OmFeature::SnapshotDiff]
    );
    assert_eq!(lvm.state().first_upgrade_version, 1);
    assert!(lvm.is_allowed(OmFeature::BucketLayoutSupport));
    assert!(!lvm.is_allowed(OmFeature::MultiTenancy));
}

#[test]
fn init_on_an_existing_install_opens_it_and_writes_nothing() {
    let dir = fresh_dir_at(1);
    let before = version_bytes(&dir);
    let lvm = Om::open(FileStorage::new(dir.path()), init_at(3)).unwrap();
    assert!(!lvm.was_created());
    assert_eq!(
        lvm.metadata_layout_version(),
        1,
        "Init must not reset an existing layout"
    );
    assert_eq!(version_bytes(&dir), before);
}

#[test]
fn refuses_to_start_when_disk_is_newer_than_software() {
    let dir = fresh_dir_at(3);
    let before = version_bytes(&dir);
    let old_binary = ManagerOptions::default().with_software_layout_version(1);
    let err = Om::open(FileStorage::new(dir.path()), old_binary).unwrap_err();
    match &err {
        LayoutError::DiskNewerThanSoftware {
            metadata_layout_version,
            feature_on_disk,
            software_layout_version,
            software_feature,
            ..
        } => {
            assert_eq!(*metadata_layout_version, 3);
            assert_eq!(feature_on_disk, "SnapshotDiff");
            assert_eq!(*software_layout_version, 1);
            assert_eq!(*software_feature, "BucketLayoutSupport");
        }
        other => panic!("expected DiskNewerThanSoftware, got {other:?}"),
    }
    let msg = err.to_string();
    for needle in ["3", "SnapshotDiff", "1", "BucketLayoutSupport", "newer"] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    assert_eq!(version_bytes(&dir), before);
}

#[test]
fn refuses_a_disk_newer_than_the_whole_catalog() {
    // A release with features this catalog has never heard of finalized the disk.
    let mut state = LayoutState::new("OmFeature", 9, "FutureFeature");
    state.first_upgrade_version = 9;
    let err = Om::open(MemoryStorage::with_state(state), ManagerOptions::default()).unwrap_err();
    assert!(
        matches!(&err, LayoutError::DiskNewerThanSoftware { metadata_layout_version: 9, feature_on_disk, .. } if feature_on_disk == "FutureFeature"),
        "{err:?}"
    );
}

#[test]
fn refuses_a_disk_below_the_minimum_supported_version() {
    let dir = fresh_dir_at(0);
    let opts = ManagerOptions::default().with_minimum_supported_version(2);
    let err = Om::open(FileStorage::new(dir.path()), opts).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::BelowMinimumSupported {
                metadata_layout_version: 0,
                minimum_supported: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("intermediate release"), "{err}");
}

#[test]
fn refuses_a_disk_finalized_to_a_feature_the_catalog_renamed() {
    let dir = fresh_dir_at(2);
    let before = version_bytes(&dir);
    let opts = ManagerOptions::default().with_component_name("OmFeature");
    let err = LayoutVersionManager::<OmFeatureRenamed>::open(FileStorage::new(dir.path()), opts)
        .unwrap_err();
    match &err {
        LayoutError::FeatureNameMismatch {
            metadata_layout_version,
            feature_on_disk,
            feature_in_catalog,
            ..
        } => {
            assert_eq!(*metadata_layout_version, 2);
            assert_eq!(feature_on_disk, "MultiTenancy");
            assert_eq!(*feature_in_catalog, "Tenants");
        }
        other => panic!("expected FeatureNameMismatch, got {other:?}"),
    }
    assert_eq!(version_bytes(&dir), before);
}

#[test]
fn a_renamed_feature_above_the_disk_version_does_not_matter_yet() {
    // The disk is at 1, which both catalogs name alike: the rename of 2 is harmless here.
    let dir = fresh_dir_at(1);
    let opts = ManagerOptions::default().with_component_name("OmFeature");
    let lvm =
        LayoutVersionManager::<OmFeatureRenamed>::open(FileStorage::new(dir.path()), opts).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
}

#[test]
fn refuses_the_state_of_another_component() {
    let dir = tempfile::tempdir().unwrap();
    Om::open(
        FileStorage::new(dir.path()),
        init_at(1).with_component_name("om"),
    )
    .unwrap();
    let err = Om::open(
        FileStorage::new(dir.path()),
        ManagerOptions::default().with_component_name("scm"),
    )
    .unwrap_err();
    assert!(
        matches!(&err, LayoutError::ComponentMismatch { expected, found, .. } if expected == "scm" && found == "om"),
        "{err:?}"
    );
}

#[test]
fn refuses_a_damaged_file_and_leaves_it_alone_even_when_initializing() {
    let dir = fresh_dir_at(1);
    let path = dir.path().join("VERSION");
    let mut bytes = version_bytes(&dir);
    let at = bytes.iter().position(|&b| b == b'=').unwrap() + 1;
    bytes[at] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    for intent in [StartIntent::Normal, StartIntent::Init, StartIntent::Upgrade] {
        let opts = ManagerOptions::default().with_start_intent(intent);
        let err = Om::open(FileStorage::new(dir.path()), opts).unwrap_err();
        assert!(
            matches!(err, LayoutError::Storage(StorageError::Damaged { .. })),
            "{intent:?}: {err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }
}

#[test]
fn an_empty_file_is_damage_not_a_fresh_install() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("VERSION");
    fs::write(&path, b"").unwrap();
    let err = Om::open(FileStorage::new(dir.path()), init_at(0)).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::Storage(StorageError::Damaged {
                damage: layout_core::storage::format::Damage::Empty,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(fs::read(&path).unwrap(), b"");
}

#[test]
fn a_directory_in_place_of_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("VERSION")).unwrap();
    let err = Om::open(FileStorage::new(dir.path()), init_at(0)).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::Storage(StorageError::NotAFile {
                kind: "directory",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(dir.path().join("VERSION").is_dir());
}

#[test]
fn a_dangling_symlink_is_not_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("VERSION");
    std::os::unix::fs::symlink(dir.path().join("elsewhere/VERSION"), &link).unwrap();
    let err = Om::open(FileStorage::new(dir.path()), init_at(0)).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::Storage(StorageError::DanglingSymlink { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("elsewhere"), "{err}");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!dir.path().join("elsewhere").exists());
}

#[test]
fn a_symlinked_version_file_is_followed_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let real = tempfile::tempdir().unwrap();
    Om::open(FileStorage::new(real.path()), init_at(1)).unwrap();
    let link = dir.path().join("VERSION");
    std::os::unix::fs::symlink(real.path().join("VERSION"), &link).unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), ManagerOptions::default()).unwrap();
    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let reopened = Om::open(FileStorage::new(real.path()), ManagerOptions::default()).unwrap();
    assert_eq!(reopened.metadata_layout_version(), 2);
}

#[test]
fn refuses_a_file_written_in_another_format_version() {
    let dir = fresh_dir_at(1);
    let storage = FileStorage::new(dir.path());
    let mut state = storage.load().unwrap().unwrap();
    state.format_version = 2;
    storage.store(&state).unwrap();
    let err = Om::open(FileStorage::new(dir.path()), ManagerOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::Storage(StorageError::UnsupportedFormat {
                found: 2,
                supported: 1,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn refuses_a_failing_read_without_writing() {
    let storage = Arc::new(MemoryStorage::new());
    storage.fail_next_load();
    let err = Om::open(Arc::clone(&storage), init_at(0)).unwrap_err();
    assert!(
        matches!(err, LayoutError::Storage(StorageError::Io { .. })),
        "{err:?}"
    );
    assert!(
        storage.snapshot().is_none(),
        "a failed read must never become a fresh install"
    );
}

#[test]
fn rejects_contradictory_options() {
    let cases = [
        ManagerOptions::default().with_software_layout_version(4),
        init_at(3).with_software_layout_version(2),
        ManagerOptions::default()
            .with_minimum_supported_version(3)
            .with_software_layout_version(2),
        init_at(0).with_minimum_supported_version(1),
        ManagerOptions::default().with_component_name(""),
    ];
    for opts in cases {
        let err = Om::open(MemoryStorage::new(), opts.clone()).unwrap_err();
        assert!(
            matches!(err, LayoutError::InvalidOptions(_)),
            "{opts:?}: {err:?}"
        );
    }
}

#[test]
fn a_capped_binary_sees_features_beyond_it() {
    let lvm = Om::open(
        MemoryStorage::new(),
        init_at(1).with_software_layout_version(2),
    )
    .unwrap();
    let statuses: Vec<_> = lvm
        .features()
        .iter()
        .map(|f| (f.feature, f.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (OmFeature::InitialVersion, FeatureStatus::Finalized),
            (OmFeature::BucketLayoutSupport, FeatureStatus::Finalized),
            (OmFeature::MultiTenancy, FeatureStatus::NotFinalized),
            (OmFeature::SnapshotDiff, FeatureStatus::BeyondSoftware),
        ]
    );
    assert_eq!(lvm.software_layout_feature(), OmFeature::MultiTenancy);
    assert_eq!(lvm.unfinalized_features(), [OmFeature::MultiTenancy]);
}

#[test]
fn upgrade_or_downgrade_intent_clears_the_prepare_marker_and_normal_keeps_it() {
    let storage = Arc::new(MemoryStorage::new());
    let lvm = Om::open(Arc::clone(&storage), init_at(1)).unwrap();
    drop(lvm);
    storage.replace(storage.snapshot().map(|mut s| {
        s.prepare_index = Some(42);
        s
    }));
    let lvm = Om::open(Arc::clone(&storage), ManagerOptions::default()).unwrap();
    assert_eq!(lvm.state().prepare_index, Some(42));
    drop(lvm);
    for intent in [StartIntent::Upgrade, StartIntent::Downgrade] {
        storage.replace(storage.snapshot().map(|mut s| {
            s.prepare_index = Some(7);
            s
        }));
        let lvm = Om::open(
            Arc::clone(&storage),
            ManagerOptions::default().with_start_intent(intent),
        )
        .unwrap();
        assert_eq!(lvm.state().prepare_index, None, "{intent:?}");
        assert_eq!(
            storage.snapshot().unwrap().prepare_index,
            None,
            "{intent:?}"
        );
    }
}

#[test]
fn not_finalized_errors_name_the_feature_its_version_and_the_mlv() {
    let lvm = Om::open(MemoryStorage::new(), init_at(1)).unwrap();
    let err = lvm.check_allowed(OmFeature::SnapshotDiff).unwrap_err();
    assert!(
        matches!(
            err,
            LayoutError::NotFinalized {
                operation: None,
                feature: "SnapshotDiff",
                version: 3,
                metadata_layout_version: 1
            }
        ),
        "{err:?}"
    );
    let err = lvm
        .check_operation_allowed("CreateSnapshotDiff", OmFeature::SnapshotDiff)
        .unwrap_err();
    let msg = err.to_string();
    for needle in ["CreateSnapshotDiff", "SnapshotDiff", "3", "1"] {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
    assert!(lvm.check_allowed(OmFeature::BucketLayoutSupport).is_ok());
    assert!(OmFeature::ALL
        .iter()
        .all(|f| lvm.is_allowed(*f) == (f.layout_version() <= 1)));
}
