//! Helpers shared by the cluster-store tests of several binaries (`it` and `etcd`):
//! records to store and a [`snapshot`] of everything a store holds. The store contract itself is
//! `layout_testkit::conformance::cluster_store`, run against every store in
//! `it/conformance.rs` and `etcd/store.rs`.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // a failed unwrap is a failed test

use layout_core::cluster::{
    AuditEntry, AuditEvent, ClusterStore, KindState, MemberRecord, MemberRole, MoveRecord,
    Versioned,
};

/// A member record at `(slv, mlv)`.
pub fn member(slv: u32, mlv: u32) -> MemberRecord {
    MemberRecord {
        role: MemberRole::Member,
        incarnation: format!("incarnation-{slv}-{mlv}"),
        software_layout_version: slv,
        metadata_layout_version: mlv,
        first_registered_at_ms: 1_000,
        last_registered_at_ms: 2_000,
        excluded: None,
    }
}

/// An audit entry whose detail is `detail`.
pub fn audit_entry(detail: &str) -> AuditEntry {
    AuditEntry {
        at_ms: 5_000,
        actor: "contract".to_owned(),
        event: AuditEvent::Other("tested".to_owned()),
        member_id: None,
        version: Some(1),
        detail: detail.to_owned(),
    }
}

/// A kind's state, its record's revision and its members' revisions.
pub type KindSnapshot = (String, Option<KindState>, Option<u64>, Vec<(String, u64)>);

/// Everything a store holds, revisions included: two equal snapshots are the same bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Every kind: its state and the revisions of its records.
    pub kinds: Vec<KindSnapshot>,
    /// The move record, if any.
    pub move_record: Option<Versioned<MoveRecord>>,
}

/// Everything `store` holds now.
pub fn snapshot(store: &dyn ClusterStore) -> Snapshot {
    let kinds = store
        .kinds()
        .unwrap()
        .into_iter()
        .map(|kind| {
            let state = store.load_state(&kind).unwrap();
            let revision = store.load_kind(&kind).unwrap().map(|k| k.revision);
            let members = store
                .members(&kind)
                .unwrap()
                .into_iter()
                .map(|(id, m)| (id, m.revision))
                .collect();
            (kind, state, revision, members)
        })
        .collect();
    Snapshot {
        kinds,
        move_record: store.load_move().unwrap(),
    }
}
