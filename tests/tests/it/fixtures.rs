//! Checked-in VERSION files that every future release must keep reading.
//!
//! Regenerate (only when adding a fixture, never to paper over a reader change) with
//! `LAYOUT_WRITE_FIXTURES=1 cargo nextest run -p layout-tests fixtures`.

use std::fs;
use std::path::{Path, PathBuf};

use layout_core::state::{FinalizationRecord, HistoryEntry, HistoryEvent, LayoutState};
use layout_core::{FileStorage, LayoutStorage, LayoutVersionManager, ManagerOptions};

use crate::catalogs::OmFeature;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Each fixture: its directory name and the state it holds.
fn fixtures() -> Vec<(&'static str, LayoutState)> {
    let fresh = LayoutState::new("OmFeature", 3, "SnapshotDiff");

    let mut pre_finalized = LayoutState::new("OmFeature", 1, "BucketLayoutSupport");
    pre_finalized.first_upgrade_version = 3;

    let mut finalizing = LayoutState::new("OmFeature", 2, "MultiTenancy");
    finalizing.first_upgrade_version = 3;
    finalizing.finalization = Some(FinalizationRecord::new("ops@admin-1", 3, 1_767_225_600_000));
    finalizing.history.push(HistoryEntry::new(
        1_767_225_600_000,
        "ops@admin-1",
        HistoryEvent::Override,
        1,
        1,
        "condition no-open-containers: container 17 stuck, ticket OPS-4411",
    ));
    finalizing.history.push(HistoryEntry::new(
        1_767_225_601_000,
        "ops@admin-1",
        HistoryEvent::Finalized,
        1,
        2,
        "MultiTenancy",
    ));

    let mut prepared = LayoutState::new("OmFeature", 1, "BucketLayoutSupport");
    prepared.first_upgrade_version = 1;
    prepared.prepare_index = Some(98_765);

    let mut newer_keys = pre_finalized.clone();
    newer_keys
        .extra
        .insert("newer.release.tenant-cache".into(), "enabled".into());
    newer_keys
        .extra
        .insert("finalization.eta.ms".into(), "1767225700000".into());

    vec![
        ("v1-fresh-install", fresh),
        ("v1-pre-finalized", pre_finalized),
        ("v1-finalizing-with-history", finalizing),
        ("v1-prepared", prepared),
        ("v1-newer-release-keys", newer_keys),
    ]
}

#[test]
fn checked_in_fixtures_still_open_with_the_state_they_hold() {
    let write = std::env::var_os("LAYOUT_WRITE_FIXTURES").is_some();
    for (name, expected) in fixtures() {
        let dir = fixture_dir(name);
        if write {
            fs::create_dir_all(&dir).unwrap();
            FileStorage::new(&dir).store(&expected).unwrap();
        }
        let path = dir.join("VERSION");
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
        let loaded = FileStorage::new(&dir).load().unwrap().unwrap();
        assert_eq!(loaded, expected, "fixture {name}");

        // A manager opens a copy (never the checked-in file itself) and can go on from it.
        let copy = tempfile::tempdir().unwrap();
        fs::write(copy.path().join("VERSION"), &bytes).unwrap();
        let lvm = LayoutVersionManager::<OmFeature>::open(
            FileStorage::new(copy.path()),
            ManagerOptions::default(),
        )
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        assert_eq!(
            lvm.metadata_layout_version(),
            expected.layout_version,
            "fixture {name}"
        );
        for feature in lvm.unfinalized_features() {
            lvm.finalize_step(feature).unwrap();
        }
        let after = FileStorage::new(copy.path()).load().unwrap().unwrap();
        assert_eq!(after.layout_version, 3, "fixture {name}");
        assert_eq!(
            after.extra, expected.extra,
            "fixture {name}: unknown keys were lost"
        );
        assert_eq!(after.history, expected.history, "fixture {name}");
    }
}
