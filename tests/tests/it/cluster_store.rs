//! The embedded cluster store (redb): persistence, the migration of the first release's
//! file (format 1), damage, and the `MovingStore` on the record API. (The store contract
//! itself: `layout_testkit::conformance`, run in `conformance.rs`.)

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use layout_core::cluster::{
    AuditEntry, AuditEvent, ClusterFinalization, ClusterStore, EmbeddedStore, Exclusion,
    FinalizationCheckpoint, KindRecord, KindState, MemberRecord, MemberRole, MovePhase,
    MovingStore, StoreCasOutcome, StoreError, CLUSTER_STATE_FORMAT,
};
use serde_json::json;

use layout_tests::store_contract::{audit_entry, member};

const KIND: &str = "datanode";

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[allow(clippy::needless_pass_by_value)] // called with what a swap returns
fn swapped(outcome: StoreCasOutcome) -> u64 {
    match outcome {
        StoreCasOutcome::Swapped { revision } => revision,
        StoreCasOutcome::Conflict => panic!("expected the swap to be stored, it conflicted"),
    }
}

/// A kind with members `ids` (at SLV 2, MLV 1) and two audit entries.
fn populate(store: &dyn ClusterStore, ids: &[&str]) -> KindState {
    let kind_revision = swapped(
        store
            .swap_kind(KIND, None, &KindRecord::new(KIND, 1))
            .unwrap(),
    );
    for id in ids {
        swapped(
            store
                .swap_member(KIND, id, None, kind_revision, &member(2, 1))
                .unwrap(),
        );
    }
    store.append_audit(KIND, &audit_entry("one")).unwrap();
    store.append_audit(KIND, &audit_entry("two")).unwrap();
    KindState::from_parts(
        KindRecord::new(KIND, 1),
        ids.iter()
            .map(|id| ((*id).to_owned(), member(2, 1)))
            .collect(),
        vec![audit_entry("one"), audit_entry("two")],
    )
}

fn revisions(store: &dyn ClusterStore) -> BTreeMap<String, u64> {
    store
        .members(KIND)
        .unwrap()
        .into_iter()
        .map(|(id, m)| (id, m.revision))
        .collect()
}

#[test]
fn cluster_store_state_and_revisions_persist_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.path(), Some(path.as_path()));
    let expected = populate(&store, &["dn1", "dn2"]);
    let kind = store.load_kind(KIND).unwrap().unwrap();
    let members = store.members(KIND).unwrap();
    drop(store);

    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.load_state(KIND).unwrap(), Some(expected));
    assert_eq!(store.load_kind(KIND).unwrap(), Some(kind.clone()));
    assert_eq!(store.members(KIND).unwrap(), members);
    // Revisions read before the restart still decide, and new ones are never reused.
    let revision = swapped(
        store
            .swap_member(
                KIND,
                "dn1",
                Some(members[0].1.revision),
                kind.revision,
                &member(2, 2),
            )
            .unwrap(),
    );
    assert!(revision > kind.revision);
    assert!(members.iter().all(|(_, m)| m.revision < revision));
    assert_eq!(entries(dir.path()), ["state", "state.lock"]);
}

#[test]
fn cluster_store_a_member_write_rewrites_only_that_member() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = EmbeddedStore::open(&path).unwrap();
    let ids: Vec<String> = (0..50).map(|i| format!("dn{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    populate(&store, &refs);
    let kind = store.load_kind(KIND).unwrap().unwrap();
    let before = revisions(&store);
    let mut changed = member(2, 2);
    changed.incarnation = "restarted".to_owned();
    let revision = swapped(
        store
            .swap_member(KIND, "dn17", Some(before["dn17"]), kind.revision, &changed)
            .unwrap(),
    );
    drop(store);
    let store = EmbeddedStore::open(&path).unwrap();
    let after = revisions(&store);
    for (id, rev) in &after {
        if id == "dn17" {
            assert_eq!(*rev, revision);
        } else {
            assert_eq!(*rev, before[id], "{id} was rewritten");
        }
    }
    assert_eq!(store.load_kind(KIND).unwrap(), Some(kind));
    assert_eq!(
        store.load_member(KIND, "dn17").unwrap().unwrap().value,
        changed
    );
}

/// Writes `kinds` (kind -> format-1 state document) exactly as the first release did: a
/// header line with the format and the CRC-32 of the body, the pretty JSON body, a newline.
fn write_format_1(path: &Path, kinds: &serde_json::Value) -> Vec<u8> {
    let stored: serde_json::Map<String, serde_json::Value> = kinds
        .as_object()
        .unwrap()
        .iter()
        .map(|(kind, state)| (kind.clone(), json!({ "revision": 7, "state": state })))
        .collect();
    let body = serde_json::to_vec_pretty(&json!({ "format": 1, "kinds": stored })).unwrap();
    let mut bytes = format!(
        "layout-cluster-state format=1 crc32={:08x}\n",
        crc32fast_hash(&body)
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    bytes.push(b'\n');
    fs::write(path, &bytes).unwrap();
    bytes
}

/// CRC-32 (IEEE), as `crc32fast::hash` computes it.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn format_1_member(slv: u32, mlv: u32, excluded: &serde_json::Value) -> serde_json::Value {
    json!({
        "software_layout_version": slv,
        "metadata_layout_version": mlv,
        "first_registered_at_ms": 1_000,
        "last_registered_at_ms": 2_000 + u64::from(slv),
        "excluded": excluded,
    })
}

fn format_1_audit(event: &str, member_id: Option<&str>) -> serde_json::Value {
    json!({
        "at_ms": 3_000,
        "actor": "ops",
        "event": event,
        "member_id": member_id,
        "version": 2,
        "detail": format!("{event} in format 1"),
    })
}

fn migrated_member(slv: u32, mlv: u32, excluded: Option<Exclusion>) -> MemberRecord {
    MemberRecord {
        role: MemberRole::Member,
        incarnation: String::new(),
        software_layout_version: slv,
        metadata_layout_version: mlv,
        first_registered_at_ms: 1_000,
        last_registered_at_ms: 2_000 + u64::from(slv),
        excluded,
    }
}

fn migrated_audit(event: &str, member_id: Option<&str>) -> AuditEntry {
    AuditEntry {
        at_ms: 3_000,
        actor: "ops".to_owned(),
        event: AuditEvent::from_word(event),
        member_id: member_id.map(ToOwned::to_owned),
        version: Some(2),
        detail: format!("{event} in format 1"),
    }
}

fn format_1_kinds() -> serde_json::Value {
    let exclusion = json!({
        "reason": "disk failed",
        "excluded_by": "ops",
        "at_ms": 2_500,
        "software_layout_version": 1,
        "required_software_layout_version": 2,
    });
    json!({
        KIND: {
            "format": 1,
            "kind": KIND,
            "cluster_layout_version": 2,
            "finalization": {
                "target": 2,
                "checkpoint": "Complete",
                "client_id": "ops",
                "coordinator_id": "scm-1",
                "started_at_ms": 4_000,
                "completed_at_ms": 4_500,
            },
            "members": {
                "dn1": format_1_member(2, 2, &serde_json::Value::Null),
                "dn2": format_1_member(2, 2, &serde_json::Value::Null),
                "dn3": format_1_member(1, 1, &exclusion),
            },
            "audit": [
                format_1_audit("excluded", Some("dn3")),
                format_1_audit("finalization-started", None),
                format_1_audit("finalization-complete", None),
            ],
            "moved_to": null,
        },
        "om": {
            "format": 1,
            "kind": "om",
            "cluster_layout_version": 0,
            "finalization": null,
            "members": {},
            "audit": [],
            "moved_to": null,
        },
    })
}

fn migrated_datanode() -> KindState {
    let mut record = KindRecord::new(KIND, 2);
    record.finalization = Some(ClusterFinalization {
        target: 2,
        checkpoint: FinalizationCheckpoint::Complete,
        client_id: "ops".to_owned(),
        coordinator_id: "scm-1".to_owned(),
        started_at_ms: 4_000,
        completed_at_ms: Some(4_500),
    });
    let exclusion = Exclusion {
        reason: "disk failed".to_owned(),
        excluded_by: "ops".to_owned(),
        at_ms: 2_500,
        software_layout_version: 1,
        required_software_layout_version: 2,
    };
    KindState::from_parts(
        record,
        BTreeMap::from([
            ("dn1".to_owned(), migrated_member(2, 2, None)),
            ("dn2".to_owned(), migrated_member(2, 2, None)),
            ("dn3".to_owned(), migrated_member(1, 1, Some(exclusion))),
        ]),
        vec![
            migrated_audit("excluded", Some("dn3")),
            migrated_audit("finalization-started", None),
            migrated_audit("finalization-complete", None),
        ],
    )
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

#[test]
fn cluster_store_a_format_1_file_is_migrated_keeping_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let old = write_format_1(&path, &format_1_kinds());

    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.kinds().unwrap(), [KIND, "om"]);
    let state = store.load_state(KIND).unwrap().unwrap();
    assert_eq!(state.format, CLUSTER_STATE_FORMAT);
    assert_eq!(state, migrated_datanode());
    assert_eq!(
        store.load_state("om").unwrap(),
        Some(KindState::new("om", 0))
    );
    // The old file is kept beside the database, byte for byte; nothing else is left.
    assert_eq!(fs::read(sibling(&path, ".format-1")).unwrap(), old);
    assert_eq!(
        entries(dir.path()),
        ["state", "state.format-1", "state.lock"]
    );
    assert_ne!(fs::read(&path).unwrap(), old);

    // The migrated records are ordinary records, and the database is opened as is again.
    let kind = store.load_kind(KIND).unwrap().unwrap();
    let dn1 = store.load_member(KIND, "dn1").unwrap().unwrap();
    swapped(
        store
            .swap_member(
                KIND,
                "dn1",
                Some(dn1.revision),
                kind.revision,
                &member(3, 2),
            )
            .unwrap(),
    );
    drop(store);
    let store = EmbeddedStore::open(&path).unwrap();
    let mut expected = migrated_datanode();
    expected.members.insert("dn1".to_owned(), member(3, 2));
    assert_eq!(store.load_state(KIND).unwrap(), Some(expected));
    assert_eq!(fs::read(sibling(&path, ".format-1")).unwrap(), old);
}

#[test]
fn cluster_store_a_damaged_format_1_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut bytes = write_format_1(&path, &format_1_kinds());
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = EmbeddedStore::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Damaged { problem, .. } if problem.contains("checksum")),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(entries(dir.path()), ["state", "state.lock"]);
}

#[test]
fn cluster_store_a_format_1_file_of_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut kinds = format_1_kinds();
    kinds[KIND]["format"] = json!(CLUSTER_STATE_FORMAT + 1);
    let bytes = write_format_1(&path, &kinds);
    let err = EmbeddedStore::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedFormat { found, .. } if found == CLUSTER_STATE_FORMAT + 1),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn cluster_store_a_truncated_or_foreign_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let store = EmbeddedStore::open(&path).unwrap();
    populate(&store, &["dn1", "dn2", "dn3"]);
    drop(store);
    let whole = fs::read(&path).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    for bytes in [
        whole[..whole.len() / 2].to_vec(),
        whole[..4096].to_vec(),
        whole[..20].to_vec(),
        Vec::new(),
        garbage,
    ] {
        fs::write(&path, &bytes).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::Damaged { .. }),
            "{} bytes: {err}",
            bytes.len()
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes, "the file was changed");
    }
    // Restored, it opens again.
    fs::write(&path, &whole).unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.members(KIND).unwrap().len(), 3);
}

#[test]
fn cluster_store_a_stale_migrating_database_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let migrating = sibling(&path, ".migrating");
    // Left by a crash during the first creation: nothing at the path yet.
    fs::write(&migrating, b"half a database").unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    let expected = populate(&store, &["dn1"]);
    drop(store);
    assert_eq!(entries(dir.path()), ["state", "state.lock"]);
    // Left by a crash during a migration, the old file still in place.
    fs::write(&migrating, b"half a database").unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.load_state(KIND).unwrap(), Some(expected));
    assert_eq!(entries(dir.path()), ["state", "state.lock"]);
    drop(store);
    // A format-1 file with a stale database beside it is migrated from scratch.
    fs::remove_file(&path).unwrap();
    let old = write_format_1(&path, &format_1_kinds());
    fs::write(&migrating, b"half a database").unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.load_state(KIND).unwrap(), Some(migrated_datanode()));
    assert_eq!(fs::read(sibling(&path, ".format-1")).unwrap(), old);
    assert_eq!(
        entries(dir.path()),
        ["state", "state.format-1", "state.lock"]
    );
}

#[test]
fn cluster_store_a_second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let first = EmbeddedStore::open(&path).unwrap();
    let err = EmbeddedStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    drop(first);
    EmbeddedStore::open(&path).unwrap();
}

#[test]
fn cluster_store_moving_store_rolls_back() {
    let old: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    let expected = populate(old.as_ref(), &["dn1", "dn2"]);
    let moving = MovingStore::new(Arc::clone(&old));
    // Every kind is copied at the start.
    let abandoned: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    moving.begin(Arc::clone(&abandoned)).unwrap();
    assert_eq!(abandoned.load_state(KIND).unwrap(), Some(expected));
    assert!(matches!(
        moving.begin(Arc::new(EmbeddedStore::in_memory())),
        Err(StoreError::Move { .. })
    ));
    moving.append_audit(KIND, &audit_entry("mirrored")).unwrap();
    moving.flush();
    assert_eq!(abandoned.audit(KIND).unwrap().len(), 3);
    // Rolled back: the abandoned store no longer gets writes.
    moving.rollback().unwrap();
    assert_eq!(moving.phase(), MovePhase::Current);
    moving
        .append_audit(KIND, &audit_entry("after rollback"))
        .unwrap();
    assert_eq!(abandoned.audit(KIND).unwrap().len(), 3);
    assert_eq!(old.audit(KIND).unwrap().len(), 4);
    assert!(matches!(moving.verify(), Err(StoreError::Move { .. })));
}

/// Writes through the adapter while dual publishing (decided by the current store and
/// mirrored to `new`); the kind record's new revision.
fn write_through(moving: &MovingStore, new: &dyn ClusterStore) -> u64 {
    let kind = moving.load_kind(KIND).unwrap().unwrap();
    let dn1 = moving.load_member(KIND, "dn1").unwrap().unwrap();
    swapped(
        moving
            .swap_member(
                KIND,
                "dn1",
                Some(dn1.revision),
                kind.revision,
                &member(3, 1),
            )
            .unwrap(),
    );
    swapped(
        moving
            .swap_member(KIND, "dn3", None, kind.revision, &member(3, 1))
            .unwrap(),
    );
    let mut record = kind.value.clone();
    record.cluster_layout_version = 2;
    let kind_revision = swapped(
        moving
            .swap_kind(KIND, Some(kind.revision), &record)
            .unwrap(),
    );
    moving.append_audit(KIND, &audit_entry("moving")).unwrap();
    moving.flush();
    assert_eq!(
        new.load_member(KIND, "dn3").unwrap().unwrap().value,
        member(3, 1)
    );
    kind_revision
}

#[test]
fn cluster_store_moving_store_copies_mirrors_and_switches() {
    let old: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    populate(old.as_ref(), &["dn1", "dn2"]);
    let moving = MovingStore::new(Arc::clone(&old));
    let new: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::in_memory());
    moving.begin(Arc::clone(&new)).unwrap();
    assert_eq!(moving.phase(), MovePhase::DualPublishing);
    assert!(moving.verify().unwrap().is_caught_up());

    let kind_revision = write_through(&moving, new.as_ref());
    assert!(moving.verify().unwrap().is_caught_up());

    // A write behind the adapter's back: verify reports it, catch_up copies it.
    let dn2 = old.load_member(KIND, "dn2").unwrap().unwrap();
    swapped(
        old.swap_member(
            KIND,
            "dn2",
            Some(dn2.revision),
            kind_revision,
            &member(9, 9),
        )
        .unwrap(),
    );
    assert!(!moving.verify().unwrap().is_caught_up());
    assert!(moving.catch_up().unwrap().is_caught_up());

    // Read before the switch, decided after it: a conflict, never written.
    let stale_kind = moving.load_kind(KIND).unwrap().unwrap();
    let stale_dn1 = moving.load_member(KIND, "dn1").unwrap().unwrap();
    let report = moving.switch().unwrap();
    assert_eq!(report.kinds, [KIND]);
    assert_eq!(moving.phase(), MovePhase::Switched);
    assert_eq!(
        old.load_kind(KIND).unwrap().unwrap().value.moved_to,
        Some(new.location())
    );
    let audit = new.audit(KIND).unwrap();
    assert_eq!(audit.last().unwrap().event, AuditEvent::StoreMoved);
    assert_eq!(
        moving
            .swap_member(
                KIND,
                "dn1",
                Some(stale_dn1.revision),
                stale_kind.revision,
                &member(4, 4)
            )
            .unwrap(),
        StoreCasOutcome::Conflict
    );
    // Reloaded: decided by the new store alone.
    let kind = moving.load_kind(KIND).unwrap().unwrap();
    let dn1 = moving.load_member(KIND, "dn1").unwrap().unwrap();
    swapped(
        moving
            .swap_member(
                KIND,
                "dn1",
                Some(dn1.revision),
                kind.revision,
                &member(4, 4),
            )
            .unwrap(),
    );
    assert_eq!(
        new.load_member(KIND, "dn1").unwrap().unwrap().value,
        member(4, 4)
    );
    assert_eq!(
        old.load_member(KIND, "dn1").unwrap().unwrap().value,
        member(3, 1)
    );
    assert_eq!(
        moving.load_state(KIND).unwrap(),
        new.load_state(KIND).unwrap()
    );
    assert!(matches!(moving.rollback(), Err(StoreError::Move { .. })));
}
