//! The catalog lock: every kind of catalog change is caught (or, for the allowed ones,
//! reported), with a precise message; the lock is regenerated only deliberately.

use std::path::{Path, PathBuf};
use std::time::Duration;

use layout_core::LayoutFeature;
use layout_testkit::{
    assert_catalog_locked, check_catalog_lock, child_role, CatalogLock, CatalogLockError,
    ChildCommand, LockChange, LockVerdict, UPDATE_ENV,
};

use layout_testkit_fixture::KvFeature;

/// The released catalog every variant below changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum Released {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayout,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
    #[layout(version = 3, description = "Snapshot diffs")]
    SnapshotDiff,
}

/// Variants of `Released`, one change each, named the same in the lock's eyes.
mod variants {
    macro_rules! catalog {
        ($module:ident { $($v:literal $name:ident $desc:literal $($dep:ident)?;)* }) => {
            pub(super) mod $module {
                use layout_core::LayoutFeature;
                #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
                pub(crate) enum Released {
                    $(#[layout(version = $v, description = $desc $(, $dep)?)] $name,)*
                }
            }
        };
    }

    catalog!(removed {
        0 Initial "Initial layout";
        1 BucketLayout "Buckets carry a storage layout";
        2 SnapshotDiff "Snapshot diffs";
    });
    catalog!(renamed {
        0 Initial "Initial layout";
        1 BucketLayout "Buckets carry a storage layout";
        2 Tenancy "Multi-tenancy tables";
        3 SnapshotDiff "Snapshot diffs";
    });
    catalog!(reordered {
        0 Initial "Initial layout";
        1 BucketLayout "Buckets carry a storage layout";
        2 SnapshotDiff "Snapshot diffs";
        3 MultiTenancy "Multi-tenancy tables";
    });
    catalog!(inserted {
        0 Initial "Initial layout";
        1 BucketLayout "Buckets carry a storage layout";
        2 Quotas "Quotas";
        3 MultiTenancy "Multi-tenancy tables";
        4 SnapshotDiff "Snapshot diffs";
    });
    catalog!(appended {
        0 Initial "Initial layout";
        1 BucketLayout "Buckets carry a storage layout";
        2 MultiTenancy "Multi-tenancy tables";
        3 SnapshotDiff "Snapshot diffs";
        4 Quotas "Quotas";
    });
    catalog!(described {
        0 Initial "Initial layout";
        1 BucketLayout "Buckets carry a bucket layout";
        2 MultiTenancy "Multi-tenancy tables";
        3 SnapshotDiff "Snapshot diffs" deprecated;
    });
}

fn locked(dir: &Path) -> PathBuf {
    let path = dir.join("Released.lock");
    CatalogLock::of::<Released>().write(&path).unwrap();
    path
}

fn check<F: LayoutFeature>() -> layout_testkit::LockCheck {
    let dir = tempfile::tempdir().unwrap();
    check_catalog_lock::<F>(locked(dir.path())).unwrap()
}

fn panic_message<F: LayoutFeature>() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = locked(dir.path());
    let panic = std::panic::catch_unwind(|| assert_catalog_locked::<F>(&path)).unwrap_err();
    panic.downcast_ref::<String>().cloned().unwrap()
}

#[test]
fn the_kv_catalog_matches_its_checked_in_lock() {
    assert_catalog_locked::<KvFeature>(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/catalogs/KvFeature.lock"),
    );
}

#[test]
fn an_unchanged_catalog_passes_and_the_file_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = locked(dir.path());
    assert_catalog_locked::<Released>(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("catalog Released\n"), "{text}");
    assert!(
        text.contains("2 MultiTenancy : Multi-tenancy tables\n"),
        "{text}"
    );
    assert_eq!(
        CatalogLock::read(&path).unwrap(),
        CatalogLock::of::<Released>()
    );
}

#[test]
fn a_removed_feature_is_caught() {
    let check = check::<variants::removed::Released>();
    assert_eq!(check.verdict(), LockVerdict::Breaking, "{check}");
    assert!(check.changes.contains(&LockChange::Removed {
        name: "MultiTenancy".into(),
        version: 2
    }));
    // The one after it moved down.
    assert!(check.changes.contains(&LockChange::Renumbered {
        name: "SnapshotDiff".into(),
        locked_version: 3,
        version: 2
    }));
    let message = panic_message::<variants::removed::Released>();
    assert!(
        message.contains("feature MultiTenancy (version 2) was removed"),
        "{message}"
    );
}

#[test]
fn a_renamed_feature_is_caught() {
    let check = check::<variants::renamed::Released>();
    assert_eq!(check.verdict(), LockVerdict::Breaking, "{check}");
    assert_eq!(
        check.changes,
        [LockChange::Renamed {
            version: 2,
            locked_name: "MultiTenancy".into(),
            name: "Tenancy".into()
        }]
    );
    let message = panic_message::<variants::renamed::Released>();
    assert!(
        message.contains("feature MultiTenancy (version 2) was renamed to Tenancy"),
        "{message}"
    );
}

#[test]
fn reordered_features_are_caught() {
    let check = check::<variants::reordered::Released>();
    assert_eq!(check.verdict(), LockVerdict::Breaking, "{check}");
    assert_eq!(
        check.changes,
        [
            LockChange::Reordered {
                name: "MultiTenancy".into(),
                locked_version: 2,
                version: 3
            },
            LockChange::Reordered {
                name: "SnapshotDiff".into(),
                locked_version: 3,
                version: 2
            },
        ]
    );
    let message = panic_message::<variants::reordered::Released>();
    assert!(
        message.contains("MultiTenancy was reordered from version 2 to 3"),
        "{message}"
    );
}

#[test]
fn a_feature_inserted_instead_of_appended_is_caught_with_the_renumbering_it_caused() {
    let check = check::<variants::inserted::Released>();
    assert_eq!(check.verdict(), LockVerdict::Breaking, "{check}");
    assert!(check.changes.contains(&LockChange::InsertedNotAppended {
        name: "Quotas".into(),
        version: 2,
        last_locked: 3
    }));
    assert!(check.changes.contains(&LockChange::Renumbered {
        name: "MultiTenancy".into(),
        locked_version: 2,
        version: 3
    }));
    let message = panic_message::<variants::inserted::Released>();
    assert!(
        message.contains("new feature Quotas was inserted at version 2, not appended"),
        "{message}"
    );
    assert!(
        message.contains("MultiTenancy was renumbered from version 2 to 3"),
        "{message}"
    );
}

#[test]
fn an_appended_feature_is_allowed_but_must_be_recorded() {
    let check = check::<variants::appended::Released>();
    assert_eq!(check.verdict(), LockVerdict::NotRecorded, "{check}");
    assert!(!check.passes());
    assert_eq!(check.breaking().count(), 0);
    let message = panic_message::<variants::appended::Released>();
    assert!(
        message.contains("new feature Quotas (version 4) was appended: allowed; record it"),
        "{message}"
    );
}

#[test]
fn a_changed_description_or_deprecation_is_only_a_warning() {
    let check = check::<variants::described::Released>();
    assert_eq!(check.verdict(), LockVerdict::Warnings, "{check}");
    assert!(check.passes());
    assert_eq!(check.warnings().count(), 2, "{check}");
    // The assertion passes (the warnings go to stderr).
    let dir = tempfile::tempdir().unwrap();
    assert_catalog_locked::<variants::described::Released>(locked(dir.path()));
}

#[test]
fn a_missing_or_malformed_lock_is_an_error_that_says_how_to_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.lock");
    let err = check_catalog_lock::<Released>(&path).unwrap_err();
    assert!(matches!(err, CatalogLockError::Missing { .. }), "{err}");
    assert!(err.to_string().contains(UPDATE_ENV), "{err}");

    std::fs::write(&path, "catalog Released\n0 Initial\n").unwrap();
    let err = check_catalog_lock::<Released>(&path).unwrap_err();
    assert!(
        matches!(err, CatalogLockError::Malformed { line: 2, .. }),
        "{err}"
    );
}

/// Regeneration is deliberate: only with the environment variable (set here in a
/// child process, so this process's environment stays untouched).
#[test]
fn the_lock_is_regenerated_only_with_the_environment_variable() {
    const PATH_ENV: &str = "LAYOUT_TESTKIT_TEST_LOCK_PATH";
    if child_role().is_some() {
        let path = PathBuf::from(std::env::var(PATH_ENV).unwrap());
        assert_catalog_locked::<variants::appended::Released>(path);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = locked(dir.path());
    let mut child = ChildCommand::new(layout_testkit::test_name!(), "regenerate")
        .env(PATH_ENV, &path)
        .env(UPDATE_ENV, "1")
        .spawn()
        .unwrap();
    let output = child.wait(Duration::from_secs(120)).unwrap();
    assert!(output.success(), "{output:?}");
    assert_eq!(
        CatalogLock::read(&path).unwrap(),
        CatalogLock::of::<variants::appended::Released>()
    );
    // The regenerated lock now protects the appended feature.
    assert_catalog_locked::<variants::appended::Released>(&path);
}
