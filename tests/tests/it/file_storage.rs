//! `FileStorage` never replaces a `VERSION` file that changed underneath the running
//! component: corrupted, deleted, replaced, or a symlink planted at it. The commit is
//! refused with `StorageError::ChangedUnderneath`, nothing is written (no temporary file
//! either), and the MLV stays at what is stored.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use layout_core::storage::VersionFileChange;
use layout_core::{
    ActionRegistry, FileStorage, FinalizeError, LayoutError, LayoutStorage, ManagerOptions,
    StorageError, UpgradeFinalizer,
};
use tempfile::TempDir;

use crate::catalogs::{init_at, Om, OmFeature};

/// The temporary file of earlier releases: a leftover of it is removed, never followed.
const TEMP: &str = ".VERSION.tmp";

/// A component at MLV 1 running on `FileStorage` in a fresh directory.
fn running_at_1() -> (TempDir, Om) {
    let dir = tempfile::tempdir().unwrap();
    Om::open(FileStorage::new(dir.path()), init_at(1)).unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), ManagerOptions::default()).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 1);
    (dir, lvm)
}

fn version(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("VERSION")
}

/// The next commit is refused with `ChangedUnderneath` naming the path; the MLV stays 1.
fn assert_commit_refused(dir: &TempDir, lvm: &Om, expected: fn(&VersionFileChange) -> bool) {
    let err = lvm.finalize_step(OmFeature::MultiTenancy).unwrap_err();
    match &err {
        LayoutError::Storage(StorageError::ChangedUnderneath { location, change }) => {
            assert_eq!(*location, version(dir).display().to_string());
            assert!(expected(change), "{change:?}");
        }
        other => panic!("expected ChangedUnderneath, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&version(dir).display().to_string()),
        "{message}"
    );
    assert!(message.contains("Nothing was written"), "{message}");
    assert_eq!(
        lvm.metadata_layout_version(),
        1,
        "MLV published above what is stored"
    );
    assert!(!lvm.is_allowed(OmFeature::MultiTenancy));
    assert_no_temp_file(dir.path());
}

/// No temporary file of `VERSION` (`.VERSION.tmp` of earlier releases, or
/// `.VERSION.<pid>.<n>.tmp`) is in `dir`.
fn assert_no_temp_file(dir: &Path) {
    let temps: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".VERSION") && Path::new(n).extension().is_some_and(|e| e == "tmp")
        })
        .collect();
    assert!(
        temps.is_empty(),
        "temporary files were left in {}: {temps:?}",
        dir.display()
    );
}

#[test]
fn a_finalize_after_start_up_still_works() {
    let (dir, lvm) = running_at_1();
    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    // The second commit checks against what the first one wrote.
    lvm.finalize_step(OmFeature::SnapshotDiff).unwrap();
    assert_eq!(lvm.metadata_layout_version(), 3);
    assert_no_temp_file(dir.path());
    let stored = FileStorage::new(dir.path()).load().unwrap().unwrap();
    assert_eq!(stored.layout_version, 3);
}

#[test]
fn a_version_file_corrupted_underneath_is_not_overwritten() {
    let (dir, lvm) = running_at_1();
    let mut bytes = fs::read(version(&dir)).unwrap();
    let at = bytes.iter().position(|&b| b == b'=').unwrap() + 1;
    bytes[at] ^= 0x01; // one flipped bit, written in place (same inode)
    fs::write(version(&dir), &bytes).unwrap();

    assert_commit_refused(&dir, &lvm, |c| *c == VersionFileChange::ContentChanged);
    assert_eq!(
        fs::read(version(&dir)).unwrap(),
        bytes,
        "the damaged file was touched"
    );
}

#[test]
fn a_deleted_version_file_is_not_recreated() {
    let (dir, lvm) = running_at_1();
    fs::remove_file(version(&dir)).unwrap();

    assert_commit_refused(&dir, &lvm, |c| *c == VersionFileChange::Deleted);
    assert!(
        fs::symlink_metadata(version(&dir)).is_err(),
        "VERSION was recreated"
    );
}

#[test]
fn a_symlink_planted_at_version_is_not_followed() {
    let (dir, lvm) = running_at_1();
    let outside = tempfile::tempdir().unwrap();
    // The strongest case: the planted link points at a valid VERSION file outside, so
    // only the file's identity tells them apart.
    let victim = outside.path().join("victim");
    fs::copy(version(&dir), &victim).unwrap();
    let before = fs::read(&victim).unwrap();
    fs::remove_file(version(&dir)).unwrap();
    std::os::unix::fs::symlink(&victim, version(&dir)).unwrap();

    assert_commit_refused(&dir, &lvm, |c| {
        matches!(c, VersionFileChange::BecameSymlink { .. })
    });
    assert_eq!(
        fs::read(&victim).unwrap(),
        before,
        "the outside file was written"
    );
    assert_no_temp_file(outside.path());
    assert!(fs::symlink_metadata(version(&dir))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_symlink_to_an_arbitrary_file_planted_at_version_is_refused_through_the_finalizer() {
    let (dir, lvm) = running_at_1();
    let finalizer: UpgradeFinalizer<OmFeature, ()> =
        UpgradeFinalizer::new(Arc::new(lvm), ActionRegistry::empty());
    finalizer.run_prefinalize_actions(&()).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("passwd");
    fs::write(&victim, b"root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::remove_file(version(&dir)).unwrap();
    std::os::unix::fs::symlink(&victim, version(&dir)).unwrap();

    let err = finalizer
        .finalize_to(OmFeature::MultiTenancy, "admin", &())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            FinalizeError::Layout {
                source: LayoutError::Storage(StorageError::ChangedUnderneath {
                    change: VersionFileChange::BecameSymlink { .. },
                    ..
                })
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("symlink"), "{message}");
    assert!(
        message.contains(&version(&dir).display().to_string()),
        "{message}"
    );
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n",
        "the outside file was written"
    );
    assert_no_temp_file(dir.path());
    assert_no_temp_file(outside.path());
    assert_eq!(finalizer.layout_manager().metadata_layout_version(), 1);
}

#[test]
fn a_version_file_replaced_by_another_file_is_not_overwritten() {
    let (dir, lvm) = running_at_1();
    // Same bytes, another inode: someone restored or copied a file over it.
    let copy = dir.path().join("copy");
    fs::copy(version(&dir), &copy).unwrap();
    fs::rename(&copy, version(&dir)).unwrap();
    let before = fs::read(version(&dir)).unwrap();

    assert_commit_refused(&dir, &lvm, |c| *c == VersionFileChange::Replaced);
    assert_eq!(fs::read(version(&dir)).unwrap(), before);
}

#[test]
fn an_operators_symlink_present_at_start_up_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let real = tempfile::tempdir().unwrap();
    Om::open(FileStorage::new(real.path()), init_at(1)).unwrap();
    std::os::unix::fs::symlink(real.path().join("VERSION"), version(&dir)).unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), ManagerOptions::default()).unwrap();
    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    lvm.finalize_step(OmFeature::SnapshotDiff).unwrap();
    assert!(fs::symlink_metadata(version(&dir))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_no_temp_file(dir.path());
    assert_no_temp_file(real.path());
    let stored = FileStorage::new(real.path()).load().unwrap().unwrap();
    assert_eq!(stored.layout_version, 3);
}

#[test]
fn an_operators_symlink_pointed_elsewhere_while_running_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    Om::open(FileStorage::new(real.path()), init_at(1)).unwrap();
    fs::copy(real.path().join("VERSION"), other.path().join("VERSION")).unwrap();
    std::os::unix::fs::symlink(real.path().join("VERSION"), version(&dir)).unwrap();
    let lvm = Om::open(FileStorage::new(dir.path()), ManagerOptions::default()).unwrap();
    fs::remove_file(version(&dir)).unwrap();
    std::os::unix::fs::symlink(other.path().join("VERSION"), version(&dir)).unwrap();
    let before = fs::read(other.path().join("VERSION")).unwrap();

    assert_commit_refused(&dir, &lvm, |c| {
        matches!(c, VersionFileChange::SymlinkRetargeted { .. })
    });
    assert_eq!(fs::read(other.path().join("VERSION")).unwrap(), before);
    assert_no_temp_file(other.path());
}

#[test]
fn a_version_file_created_after_an_empty_load_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FileStorage::new(dir.path());
    assert!(storage.load().unwrap().is_none());
    fs::write(version(&dir), b"someone else's\n").unwrap();
    let state = layout_core::state::LayoutState::new("OmFeature", 1, "BucketLayoutSupport");
    let err = storage.store(&state).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::ChangedUnderneath {
                change: VersionFileChange::Created,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(fs::read(version(&dir)).unwrap(), b"someone else's\n");
    assert_no_temp_file(dir.path());
}

#[test]
fn a_symlink_planted_at_the_temporary_file_is_removed_never_followed() {
    let (dir, lvm) = running_at_1();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(TEMP)).unwrap();

    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert!(!fs::symlink_metadata(version(&dir))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_no_temp_file(dir.path());
    let stored = FileStorage::new(dir.path()).load().unwrap().unwrap();
    assert_eq!(stored.layout_version, 2);
}

#[test]
fn a_temporary_file_left_by_a_crash_does_not_block_the_next_commit() {
    let (dir, lvm) = running_at_1();
    let victim = dir.path().join("hard-linked");
    fs::write(&victim, b"other name of the same inode\n").unwrap();
    // A leftover that is a hard link: writing through it would change the other name.
    fs::hard_link(&victim, dir.path().join(TEMP)).unwrap();

    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"other name of the same inode\n"
    );
    assert_no_temp_file(dir.path());
    assert_eq!(
        FileStorage::new(dir.path())
            .load()
            .unwrap()
            .unwrap()
            .layout_version,
        2
    );
}
