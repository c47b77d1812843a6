//! The durable-file module (`layout_core::durable`): atomic replace, durable remove,
//! leftover temporary files, the checksummed envelope, and the files written through it
//! that must still read what earlier releases wrote. (Each step failing is shown in the
//! failpoint binary, `durable` module.)

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use layout_core::durable::{self, EnvelopeError, Step};
use layout_core::migration::{Cursor, FileHighWaterMark, HighWaterMarkStore};
use layout_core::migration::{DocumentCasOutcome, DocumentStore, FileDocumentStore};

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_replace_puts_the_new_content_in_place_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let first = durable::replace(&path, b"one").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"one");
    let second = durable::replace(&path, b"two").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"two");
    // The metadata returned is the new file's: a new inode each time.
    let now = fs::metadata(&path).unwrap();
    assert_eq!((second.dev(), second.ino()), (now.dev(), now.ino()));
    assert_ne!(first.ino(), second.ino());
    assert_eq!(names(dir.path()), ["state"]);
}

#[test]
fn a_symlink_at_the_target_is_replaced_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let path = dir.path().join("state");
    std::os::unix::fs::symlink(&victim, &path).unwrap();

    durable::replace(&path, b"new").unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_file());
    assert_eq!(fs::read(&path).unwrap(), b"new");
}

#[test]
fn files_planted_at_temporary_names_are_never_written_through_and_are_removed_unfollowed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let path = dir.path().join("state");
    // Symlinks at the names this process's next replaces would use (`.<name>.<pid>.<n>.tmp`,
    // numbered from 0 in a fresh process), and at the name of earlier releases.
    let pid = std::process::id();
    let mut planted: Vec<String> = (0..8).map(|n| format!(".state.{pid}.{n}.tmp")).collect();
    planted.push(".state.tmp".to_owned());
    for name in &planted {
        std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
    }
    // Another file's temporary file, and an unrelated file, are not the target's.
    fs::write(dir.path().join(".state.bak.1.2.tmp"), b"other").unwrap();
    fs::write(dir.path().join("notes"), b"keep").unwrap();

    durable::replace(&path, b"new").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    for name in &planted {
        assert!(
            fs::symlink_metadata(dir.path().join(name))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name} was replaced"
        );
    }

    let mut removed: Vec<String> = durable::remove_leftover_temp_files(&path)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    removed.sort();
    planted.sort();
    assert_eq!(removed, planted);
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(names(dir.path()), [".state.bak.1.2.tmp", "notes", "state"]);
}

#[test]
fn a_replace_in_a_missing_directory_names_the_step_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("state");
    let err = durable::replace(&path, b"x").unwrap_err();
    assert_eq!(err.step(), Step::CreateTemp);
    assert_eq!(err.path(), path);
    assert_eq!(err.io_error().kind(), std::io::ErrorKind::NotFound);
    assert!(!err.replaced());
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("create temporary file"), "{message}");
}

#[test]
fn a_path_without_a_file_name_is_refused_with_an_error() {
    let err = durable::replace(Path::new("/"), b"x").unwrap_err();
    assert_eq!(err.step(), Step::CreateTemp);
    assert_eq!(err.io_error().kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn a_write_error_of_replace_with_is_returned_and_the_old_file_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    durable::replace(&path, b"old").unwrap();
    let result = durable::replace_with(&path, |file| {
        use std::io::Write as _;
        file.write_all(b"half").unwrap();
        Err::<(), _>("the source ran dry")
    });
    assert!(matches!(
        result,
        Err(durable::ReplaceError::Write("the source ran dry"))
    ));
    assert_eq!(fs::read(&path).unwrap(), b"old");
    assert_eq!(names(dir.path()), ["state"]);
}

#[test]
fn a_remove_unlinks_the_file_and_a_missing_file_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    durable::replace(&path, b"x").unwrap();
    durable::remove(&path).unwrap();
    assert!(!path.exists());
    durable::remove(&path).unwrap();
    // A directory is not removed: a clear error.
    fs::create_dir(&path).unwrap();
    let err = durable::remove(&path).unwrap_err();
    assert_eq!(err.step(), Step::Remove);
    assert!(path.is_dir());
}

#[test]
fn an_envelope_round_trips_any_payload() {
    for payload in [
        &b""[..],
        b"x",
        b"{\"updated_ms\":1,\"id\":\"a\"}",
        &[0xff; 4096],
    ] {
        let bytes = durable::encode_envelope(payload);
        assert!(durable::is_envelope(&bytes));
        assert_eq!(bytes.len(), durable::ENVELOPE_HEADER_LEN + payload.len());
        assert_eq!(durable::decode_envelope(&bytes).unwrap(), payload);
    }
}

#[test]
fn a_damaged_envelope_is_refused_with_what_is_wrong() {
    let good = durable::encode_envelope(b"high-water mark");
    let header = durable::ENVELOPE_HEADER_LEN;

    // Truncated payload (a torn write).
    let err = durable::decode_envelope(&good[..good.len() - 1]).unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::Truncated {
            expected: good.len() as u64,
            found: good.len() - 1
        }
    );
    // Truncated header.
    assert!(matches!(
        durable::decode_envelope(&good[..10]),
        Err(EnvelopeError::Truncated { found: 10, .. })
    ));
    // Appended to.
    let mut longer = good.clone();
    longer.push(b'\n');
    assert_eq!(
        durable::decode_envelope(&longer),
        Err(EnvelopeError::TrailingBytes { extra: 1 })
    );
    // One bit flipped in the payload.
    let mut flipped = good.clone();
    flipped[header + 3] ^= 0x01;
    let err = durable::decode_envelope(&flipped).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::ChecksumMismatch { recorded, computed } if recorded != computed),
        "{err:?}"
    );
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    // Not an envelope at all.
    assert_eq!(
        durable::decode_envelope(b"{\"id\":\"a\"}"),
        Err(EnvelopeError::NotAnEnvelope)
    );
    assert_eq!(
        durable::decode_envelope(b""),
        Err(EnvelopeError::NotAnEnvelope)
    );
    // A newer format.
    let mut newer = good;
    newer[durable::ENVELOPE_MAGIC.len()] = durable::ENVELOPE_FORMAT + 1;
    assert_eq!(
        durable::decode_envelope(&newer),
        Err(EnvelopeError::UnsupportedFormat {
            found: durable::ENVELOPE_FORMAT + 1
        })
    );
}

fn cursor(updated_ms: u64, id: &str) -> Cursor {
    Cursor {
        updated_ms,
        id: id.to_owned(),
    }
}

#[test]
fn a_high_water_mark_written_by_an_earlier_release_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mark");
    // What the previous release wrote: the cursor as plain JSON.
    fs::write(&path, br#"{"updated_ms":1700000000123,"id":"bucket/42"}"#).unwrap();
    let mark = FileHighWaterMark::new(&path);
    assert_eq!(
        mark.load().unwrap(),
        Some(cursor(1_700_000_000_123, "bucket/42"))
    );

    // The next save writes the envelope, which reads back.
    mark.save(&cursor(1_700_000_000_124, "bucket/43")).unwrap();
    let bytes = fs::read(&path).unwrap();
    assert!(durable::is_envelope(&bytes));
    assert_eq!(
        mark.load().unwrap(),
        Some(cursor(1_700_000_000_124, "bucket/43"))
    );
    assert_eq!(names(dir.path()), ["mark"]);
}

#[test]
fn a_damaged_high_water_mark_is_refused_naming_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mark");
    let mark = FileHighWaterMark::new(&path);
    mark.save(&cursor(5, "k")).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let message = mark.load().unwrap_err().to_string();
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn a_document_store_keeps_raw_bytes_and_clears_temporary_files_of_a_crashed_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.json");
    // Left by a writer of an earlier release killed mid-write, and by one of this release.
    fs::write(dir.path().join(".doc.json.tmp"), b"{\"half").unwrap();
    fs::write(dir.path().join(".doc.json.4242.7.tmp"), b"{\"ha").unwrap();
    let store = FileDocumentStore::new(&path);
    let DocumentCasOutcome::Stored(rev) = store.compare_and_swap(None, b"{\"a\":1}").unwrap()
    else {
        panic!("conflict on an empty store")
    };
    // The file holds the document as it is (other tools and earlier releases read it).
    assert_eq!(fs::read(&path).unwrap(), b"{\"a\":1}");
    assert_eq!(store.load().unwrap().unwrap().revision, rev);
    assert_eq!(names(dir.path()), ["doc.json", "doc.json.lock"]);
    // Another content, another revision; a stale revision loses.
    let DocumentCasOutcome::Stored(next) = store.compare_and_swap(Some(rev), b"{\"a\":2}").unwrap()
    else {
        panic!("conflict")
    };
    assert_ne!(next, rev);
    assert!(matches!(
        store.compare_and_swap(Some(rev), b"{\"a\":3}").unwrap(),
        DocumentCasOutcome::Conflict { current: Some(r) } if r == next
    ));
}
