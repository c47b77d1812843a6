//! A damaged VERSION file is reported, naming its path, and left byte-for-byte alone.
//!
//! The file is truncated at every length and has every single bit flipped in turn; each
//! variant is opened by a manager (with the `Init` intent, the one most tempted to write).

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use layout_core::state::{FinalizationRecord, HistoryEntry, HistoryEvent};
use layout_core::{FileStorage, LayoutError, ManagerOptions, StartIntent};

use crate::catalogs::{Om, OmFeature};

/// A realistic VERSION file: pre-finalized, a finalization under way, history, a marker.
fn rich_version_file(dir: &Path) -> Vec<u8> {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0)
        .with_component_name("om-1");
    let lvm = Om::open(FileStorage::new(dir), opts).unwrap();
    lvm.finalize_step_with(OmFeature::BucketLayoutSupport, |s| {
        s.finalization = Some(FinalizationRecord::new("admin@host", 3, 1_700_000_000_000));
        s.prepare_index = Some(1234);
        s.history.push(HistoryEntry::new(
            1_700_000_000_100,
            "admin@host",
            HistoryEvent::Finalized,
            0,
            1,
            "BucketLayoutSupport",
        ));
    })
    .unwrap();
    fs::read(dir.join("VERSION")).unwrap()
}

fn stored_state(dir: &Path) -> layout_core::state::LayoutState {
    layout_core::LayoutStorage::load(&FileStorage::new(dir))
        .unwrap()
        .unwrap()
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Writes `bytes` as the VERSION file, opens it, and checks the rules. Returns whether the
/// open was refused.
fn open_damaged(
    dir: &Path,
    bytes: &[u8],
    what: &str,
    original: &layout_core::state::LayoutState,
) -> bool {
    let path = dir.join("VERSION");
    fs::write(&path, bytes).unwrap();
    let stamp = mtime(&path);
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_component_name("om-1");
    let refused = match Om::open(FileStorage::new(dir), opts) {
        Err(err) => {
            assert!(
                matches!(err, LayoutError::Storage(_)),
                "{what}: expected a storage error, got {err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&path.display().to_string()),
                "{what}: {msg:?} lacks the path"
            );
            true
        }
        Ok(lvm) => {
            // Only a byte the format ignores may be changed, and then the state is the same.
            assert_eq!(
                &lvm.state(),
                original,
                "{what}: opened with a different state"
            );
            false
        }
    };
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "{what}: the file was changed"
    );
    assert_eq!(mtime(&path), stamp, "{what}: the file was touched");
    assert_eq!(
        entries(dir),
        ["VERSION"],
        "{what}: something was left behind"
    );
    refused
}

#[test]
fn every_truncation_is_refused_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let original_bytes = rich_version_file(dir.path());
    let original = stored_state(dir.path());
    for len in 0..original_bytes.len() {
        let refused = open_damaged(
            dir.path(),
            &original_bytes[..len],
            &format!("truncated to {len} bytes"),
            &original,
        );
        assert!(refused, "truncated to {len} bytes was accepted");
    }
}

#[test]
fn every_single_bit_flip_is_refused_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let original_bytes = rich_version_file(dir.path());
    let original = stored_state(dir.path());
    let mut refused = 0;
    let mut total = 0;
    for at in 0..original_bytes.len() {
        for bit in 0..8 {
            let mut bytes = original_bytes.clone();
            bytes[at] ^= 1 << bit;
            total += 1;
            if open_damaged(
                dir.path(),
                &bytes,
                &format!("bit {bit} of byte {at} flipped"),
                &original,
            ) {
                refused += 1;
            }
        }
    }
    // The checksum covers every byte, so in this format no flip is harmless.
    assert_eq!(refused, total);
}

#[test]
fn a_hand_edit_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = rich_version_file(dir.path());
    let text = String::from_utf8(bytes).unwrap();
    let edited = text.replace("layout.version=1", "layout.version=3");
    assert_ne!(edited, text);
    let original = stored_state(dir.path());
    assert!(open_damaged(
        dir.path(),
        edited.as_bytes(),
        "hand edit",
        &original
    ));
    let err = Om::open(
        FileStorage::new(dir.path()),
        ManagerOptions::default().with_component_name("om-1"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[test]
fn a_completed_write_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    rich_version_file(dir.path());
    assert_eq!(entries(dir.path()), ["VERSION"]);
}
