//! The [`ClusterStore`] contract.

use std::collections::BTreeMap;
use std::time::Duration;

use layout_core::cluster::{
    AuditEntry, AuditEvent, ClusterStore, Exclusion, FinalizerClaim, KindRecord, KindState,
    MemberRecord, MemberRole, MoveRecord, MoveRole, MoveStage, StoreCasOutcome, StoreError,
    AUDIT_RETENTION, CLUSTER_STATE_FORMAT,
};

use super::{run, Clause, ConformanceReport};

/// The kind the clauses store.
const KIND: &str = "contract-kind";

/// The finalizer lease asked for (shared stores keep it alive while the suite runs).
const TTL: Duration = Duration::from_secs(30);

/// The clauses of the [`ClusterStore`] contract, in the order [`cluster_store`] runs them.
pub const CLUSTER_STORE_CLAUSES: &[Clause] = &[
    Clause {
        name: "kind_is_created_only_if_absent",
        requires: "`swap_kind(None)` creates a kind once; a second create conflicts; `load_kind` returns what was stored at the revision handed out; `kinds` lists it.",
    },
    Clause {
        name: "kind_swap_with_a_stale_revision_conflicts_and_changes_nothing",
        requires: "A swap expecting a revision that is no longer the stored one (or a kind that is absent) conflicts and changes nothing.",
    },
    Clause {
        name: "member_swap_conflicts_on_a_stale_member_revision",
        requires: "A member swap expecting a stale member revision (or expecting absence of a present member) conflicts and changes nothing.",
    },
    Clause {
        name: "member_swap_conflicts_on_a_stale_kind_revision",
        requires: "A member swap decided on a kind record that has since changed conflicts (also for a new member), and changes nothing; so does one on a kind never stored.",
    },
    Clause {
        name: "members_never_conflict_with_each_other",
        requires: "Member revisions are independent: a member's write changes neither another member's revision nor the kind record's, so writes decided concurrently on different members all succeed.",
    },
    Clause {
        name: "members_are_sorted_by_id",
        requires: "`members` lists every member sorted by id, with the records and revisions `load_member` returns; other kinds' members are not listed.",
    },
    Clause {
        name: "audit_keeps_order_and_the_newest_retention_entries",
        requires: "The audit trail comes back in the order appended; beyond `AUDIT_RETENTION` the oldest entries are dropped; kinds' trails are separate.",
    },
    Clause {
        name: "import_replaces_everything",
        requires: "`import` replaces a kind's record, members and audit trail with the state given (a member not in it is gone), creates an absent kind, and leaves the imported records usable with the revisions then read.",
    },
    Clause {
        name: "load_state_assembles_the_records",
        requires: "`load_state` is the kind record, the members and the audit trail together; `None` for a kind never stored.",
    },
    Clause {
        name: "a_newer_format_is_refused",
        requires: "A kind record of a format newer than `CLUSTER_STATE_FORMAT` is refused: either when written, or when read back (never returned as if understood).",
    },
    Clause {
        name: "finalizer_claim_is_exclusive_per_kind",
        requires: "One finalizer per kind: the holder claiming again keeps it, another holder is refused (naming the holder) until it is released; releasing a claim one does not hold does nothing; kinds are claimed separately.",
    },
    Clause {
        name: "move_record_is_compare_and_swap",
        requires: "The move record: created only from absent, swapped only from its current revision. (A store in the middle of a move of its own already holds one: the property starts from whatever is there.)",
    },
    Clause {
        name: "remove_kind_deletes_record_members_and_audit",
        requires: "`remove_kind` deletes a kind's record, members and audit trail, and nothing of another kind.",
    },
    Clause {
        name: "ids_are_kept_as_given",
        requires: "kinds and member ids holding separators or escapes (`/`, `%`, `%2F`) are stored, listed and loaded exactly as given, each apart from the others.",
    },
];

const CHECKS: &[fn(&dyn ClusterStore)] = &[
    kind_is_created_only_if_absent,
    kind_swap_with_a_stale_revision_conflicts_and_changes_nothing,
    member_swap_conflicts_on_a_stale_member_revision,
    member_swap_conflicts_on_a_stale_kind_revision,
    members_never_conflict_with_each_other,
    members_are_sorted_by_id,
    audit_keeps_order_and_the_newest_retention_entries,
    import_replaces_everything,
    load_state_assembles_the_records,
    a_newer_format_is_refused,
    finalizer_claim_is_exclusive_per_kind,
    move_record_is_compare_and_swap,
    remove_kind_deletes_record_members_and_audit,
    ids_are_kept_as_given,
];

/// Runs every clause of the [`ClusterStore`] contract, each on a fresh, empty store from
/// `make`, and reports.
pub fn check_cluster_store<S: ClusterStore + 'static>(make: impl Fn() -> S) -> ConformanceReport {
    run(
        "ClusterStore",
        CLUSTER_STORE_CLAUSES,
        CHECKS,
        &|| Box::new(make()) as Box<dyn ClusterStore>,
        ClusterStore::location,
    )
}

/// Runs every clause of the [`ClusterStore`] contract, each on a fresh, empty store from
/// `make`.
///
/// # Panics
///
/// Naming every clause broken, with its failed assertion.
#[track_caller]
pub fn cluster_store<S: ClusterStore + 'static>(make: impl Fn() -> S) {
    check_cluster_store(make).assert_ok();
}

fn member(slv: u32, mlv: u32) -> MemberRecord {
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
fn audit_entry(detail: &str) -> AuditEntry {
    AuditEntry {
        at_ms: 5_000,
        actor: "contract".to_owned(),
        event: AuditEvent::Other("tested".to_owned()),
        member_id: None,
        version: Some(1),
        detail: detail.to_owned(),
    }
}

#[allow(clippy::needless_pass_by_value)] // called with what a swap returns
fn swapped(outcome: StoreCasOutcome) -> u64 {
    match outcome {
        StoreCasOutcome::Swapped { revision } => revision,
        StoreCasOutcome::Conflict => panic!("expected the swap to be stored, it conflicted"),
    }
}

/// Creates [`KIND`] at version 1; its revision.
fn create_kind(store: &dyn ClusterStore) -> u64 {
    swapped(
        store
            .swap_kind(KIND, None, &KindRecord::new(KIND, 1))
            .unwrap(),
    )
}

/// Creates `id` (absent) under kind revision `kind_revision`; its revision.
fn create_member(store: &dyn ClusterStore, id: &str, kind_revision: u64) -> u64 {
    swapped(
        store
            .swap_member(KIND, id, None, kind_revision, &member(1, 1))
            .unwrap(),
    )
}

/// `swap_kind(None)` creates a kind once; a second create conflicts; `load_kind` returns
/// what was stored at the revision handed out; `kinds` lists it.
fn kind_is_created_only_if_absent(store: &dyn ClusterStore) {
    assert_eq!(store.load_kind(KIND).unwrap(), None);
    assert!(store.kinds().unwrap().is_empty());
    let record = KindRecord::new(KIND, 3);
    let revision = swapped(store.swap_kind(KIND, None, &record).unwrap());
    let mut other = record.clone();
    other.cluster_layout_version = 4;
    assert_eq!(
        store.swap_kind(KIND, None, &other).unwrap(),
        StoreCasOutcome::Conflict
    );
    let loaded = store.load_kind(KIND).unwrap().unwrap();
    assert_eq!((loaded.revision, loaded.value), (revision, record));
    swapped(
        store
            .swap_kind("b-kind", None, &KindRecord::new("b-kind", 1))
            .unwrap(),
    );
    assert_eq!(store.kinds().unwrap(), ["b-kind", KIND]);
}

/// A swap expecting a revision that is no longer the stored one (or a kind that is
/// absent) conflicts and changes nothing.
fn kind_swap_with_a_stale_revision_conflicts_and_changes_nothing(store: &dyn ClusterStore) {
    assert_eq!(
        store
            .swap_kind(KIND, Some(1), &KindRecord::new(KIND, 1))
            .unwrap(),
        StoreCasOutcome::Conflict,
        "a swap expecting a revision of an absent kind"
    );
    assert_eq!(store.load_kind(KIND).unwrap(), None);
    let first = create_kind(store);
    let mut second = KindRecord::new(KIND, 2);
    second.claim_generation = 7;
    second.claimed_by = Some("coordinator-a".to_owned());
    let revision = swapped(store.swap_kind(KIND, Some(first), &second).unwrap());
    assert_ne!(revision, first);
    assert_eq!(
        store
            .swap_kind(KIND, Some(first), &KindRecord::new(KIND, 9))
            .unwrap(),
        StoreCasOutcome::Conflict
    );
    let loaded = store.load_kind(KIND).unwrap().unwrap();
    assert_eq!((loaded.revision, loaded.value), (revision, second));
}

/// A member swap expecting a stale member revision (or expecting absence of a present
/// member) conflicts and changes nothing.
fn member_swap_conflicts_on_a_stale_member_revision(store: &dyn ClusterStore) {
    let kind_revision = create_kind(store);
    let first = create_member(store, "a", kind_revision);
    assert_eq!(
        store
            .swap_member(KIND, "a", None, kind_revision, &member(2, 2))
            .unwrap(),
        StoreCasOutcome::Conflict,
        "creating a member that exists"
    );
    let second = swapped(
        store
            .swap_member(KIND, "a", Some(first), kind_revision, &member(2, 1))
            .unwrap(),
    );
    assert_ne!(second, first);
    assert_eq!(
        store
            .swap_member(KIND, "a", Some(first), kind_revision, &member(3, 3))
            .unwrap(),
        StoreCasOutcome::Conflict
    );
    assert_eq!(
        store
            .swap_member(KIND, "ghost", Some(second), kind_revision, &member(3, 3))
            .unwrap(),
        StoreCasOutcome::Conflict,
        "a swap expecting a revision of an absent member"
    );
    let loaded = store.load_member(KIND, "a").unwrap().unwrap();
    assert_eq!((loaded.revision, loaded.value), (second, member(2, 1)));
    assert_eq!(store.load_member(KIND, "ghost").unwrap(), None);
}

/// A member swap decided on a kind record that has since changed conflicts (also for a
/// new member), and changes nothing; so does one on a kind never stored.
fn member_swap_conflicts_on_a_stale_kind_revision(store: &dyn ClusterStore) {
    assert_eq!(
        store
            .swap_member(KIND, "a", None, 1, &member(1, 1))
            .unwrap(),
        StoreCasOutcome::Conflict,
        "a member of a kind never stored"
    );
    let old_kind = create_kind(store);
    let a = create_member(store, "a", old_kind);
    let new_kind = swapped(
        store
            .swap_kind(KIND, Some(old_kind), &KindRecord::new(KIND, 2))
            .unwrap(),
    );
    assert_eq!(
        store
            .swap_member(KIND, "a", Some(a), old_kind, &member(2, 2))
            .unwrap(),
        StoreCasOutcome::Conflict
    );
    assert_eq!(
        store
            .swap_member(KIND, "b", None, old_kind, &member(2, 2))
            .unwrap(),
        StoreCasOutcome::Conflict
    );
    let loaded = store.load_member(KIND, "a").unwrap().unwrap();
    assert_eq!((loaded.revision, loaded.value), (a, member(1, 1)));
    assert_eq!(store.load_member(KIND, "b").unwrap(), None);
    // Decided again on the current kind record: stored.
    swapped(
        store
            .swap_member(KIND, "a", Some(a), new_kind, &member(2, 2))
            .unwrap(),
    );
    create_member(store, "b", new_kind);
}

/// Member revisions are independent: a member's write changes neither another member's
/// revision nor the kind record's, so writes decided concurrently on different members
/// all succeed.
fn members_never_conflict_with_each_other(store: &dyn ClusterStore) {
    let kind_revision = create_kind(store);
    let a = create_member(store, "a", kind_revision);
    let b = create_member(store, "b", kind_revision);
    let c = create_member(store, "c", kind_revision);
    // Both decided on what they read before either wrote.
    let a2 = swapped(
        store
            .swap_member(KIND, "a", Some(a), kind_revision, &member(2, 1))
            .unwrap(),
    );
    let b2 = swapped(
        store
            .swap_member(KIND, "b", Some(b), kind_revision, &member(2, 1))
            .unwrap(),
    );
    assert_ne!(a2, b2);
    let revisions: BTreeMap<String, u64> = store
        .members(KIND)
        .unwrap()
        .into_iter()
        .map(|(id, m)| (id, m.revision))
        .collect();
    assert_eq!(
        revisions,
        BTreeMap::from([
            ("a".to_owned(), a2),
            ("b".to_owned(), b2),
            ("c".to_owned(), c)
        ]),
        "a member write rewrites that member only"
    );
    assert_eq!(
        store.load_kind(KIND).unwrap().unwrap().revision,
        kind_revision,
        "member writes leave the kind record's revision alone"
    );
    // And the kind record still swaps on the revision read before the member writes.
    swapped(
        store
            .swap_kind(KIND, Some(kind_revision), &KindRecord::new(KIND, 2))
            .unwrap(),
    );
}

/// `members` lists every member sorted by id, with the records and revisions
/// `load_member` returns; other kinds' members are not listed.
fn members_are_sorted_by_id(store: &dyn ClusterStore) {
    let kind_revision = create_kind(store);
    let other = swapped(
        store
            .swap_kind("a-kind", None, &KindRecord::new("a-kind", 1))
            .unwrap(),
    );
    swapped(
        store
            .swap_member("a-kind", "m1", None, other, &member(1, 1))
            .unwrap(),
    );
    for (i, id) in ["m2", "z", "a", "m10", "coordinator-1"]
        .into_iter()
        .enumerate()
    {
        let i = u32::try_from(i).unwrap();
        swapped(
            store
                .swap_member(KIND, id, None, kind_revision, &member(i + 1, i))
                .unwrap(),
        );
    }
    let members = store.members(KIND).unwrap();
    let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "coordinator-1", "m10", "m2", "z"]);
    for (id, versioned) in &members {
        assert_eq!(
            store.load_member(KIND, id).unwrap().as_ref(),
            Some(versioned)
        );
    }
    assert_eq!(store.members("a-kind").unwrap().len(), 1);
    assert!(store.members("no-such-kind").unwrap().is_empty());
}

/// The audit trail comes back in the order appended; beyond [`AUDIT_RETENTION`] the
/// oldest entries are dropped; kinds' trails are separate.
fn audit_keeps_order_and_the_newest_retention_entries(store: &dyn ClusterStore) {
    create_kind(store);
    assert!(store.audit(KIND).unwrap().is_empty());
    store
        .append_audit("other-kind", &audit_entry("other"))
        .unwrap();
    let total = AUDIT_RETENTION + 5;
    for i in 0..total {
        store
            .append_audit(KIND, &audit_entry(&i.to_string()))
            .unwrap();
    }
    let audit = store.audit(KIND).unwrap();
    let details: Vec<usize> = audit.iter().map(|e| e.detail.parse().unwrap()).collect();
    assert_eq!(details, (5..total).collect::<Vec<_>>());
    assert_eq!(store.audit("other-kind").unwrap(), [audit_entry("other")]);
}

/// A kind with records, members and audit, as stored through the trait; its snapshot.
fn populate(store: &dyn ClusterStore) -> KindState {
    let kind_revision = create_kind(store);
    let mut excluded = member(1, 1);
    excluded.excluded = Some(Exclusion {
        reason: "decommissioned".to_owned(),
        excluded_by: "ops".to_owned(),
        at_ms: 3_000,
        software_layout_version: 1,
        required_software_layout_version: 2,
    });
    swapped(
        store
            .swap_member(KIND, "a", None, kind_revision, &member(2, 1))
            .unwrap(),
    );
    swapped(
        store
            .swap_member(KIND, "b", None, kind_revision, &excluded)
            .unwrap(),
    );
    store.append_audit(KIND, &audit_entry("first")).unwrap();
    store.append_audit(KIND, &audit_entry("second")).unwrap();
    KindState::from_parts(
        KindRecord::new(KIND, 1),
        BTreeMap::from([("a".to_owned(), member(2, 1)), ("b".to_owned(), excluded)]),
        vec![audit_entry("first"), audit_entry("second")],
    )
}

/// `import` replaces a kind's record, members and audit trail with the state given (a
/// member not in it is gone), creates an absent kind, and leaves the imported records
/// usable with the revisions then read.
fn import_replaces_everything(store: &dyn ClusterStore) {
    populate(store);
    let mut record = KindRecord::new(KIND, 4);
    record.claim_generation = 3;
    record.claimed_by = Some("coordinator-b".to_owned());
    let mut coordinator = member(4, 4);
    coordinator.role = MemberRole::Coordinator;
    let state = KindState::from_parts(
        record.clone(),
        BTreeMap::from([
            ("b".to_owned(), member(4, 3)),
            ("c".to_owned(), member(4, 4)),
            ("coordinator-b".to_owned(), coordinator),
        ]),
        vec![audit_entry("imported")],
    );
    store.import(KIND, &state).unwrap();
    assert_eq!(store.load_state(KIND).unwrap(), Some(state.clone()));
    assert_eq!(store.load_kind(KIND).unwrap().unwrap().value, record);
    assert_eq!(store.load_member(KIND, "a").unwrap(), None);
    assert_eq!(store.audit(KIND).unwrap(), [audit_entry("imported")]);
    // The imported records are ordinary records.
    let kind_revision = store.load_kind(KIND).unwrap().unwrap().revision;
    let c = store.load_member(KIND, "c").unwrap().unwrap().revision;
    swapped(
        store
            .swap_member(KIND, "c", Some(c), kind_revision, &member(5, 4))
            .unwrap(),
    );
    store.append_audit(KIND, &audit_entry("after")).unwrap();
    assert_eq!(
        store.audit(KIND).unwrap(),
        [audit_entry("imported"), audit_entry("after")]
    );
    // Into an absent kind.
    let fresh = KindState::from_parts(
        KindRecord::new("fresh-kind", 2),
        BTreeMap::from([("x".to_owned(), member(2, 2))]),
        Vec::new(),
    );
    store.import("fresh-kind", &fresh).unwrap();
    assert_eq!(store.load_state("fresh-kind").unwrap(), Some(fresh));
    // Importing an empty state empties the kind.
    let empty = KindState::new(KIND, 5);
    store.import(KIND, &empty).unwrap();
    assert_eq!(store.load_state(KIND).unwrap(), Some(empty));
    assert!(store.members(KIND).unwrap().is_empty());
}

/// `load_state` is the kind record, the members and the audit trail together; `None` for
/// a kind never stored.
fn load_state_assembles_the_records(store: &dyn ClusterStore) {
    assert_eq!(store.load_state(KIND).unwrap(), None);
    let expected = populate(store);
    let state = store.load_state(KIND).unwrap().unwrap();
    assert_eq!(state, expected);
    assert_eq!(
        state.record(),
        store.load_kind(KIND).unwrap().unwrap().value
    );
    assert_eq!(state.active_members().count(), 1);
}

/// A kind record of a format newer than [`CLUSTER_STATE_FORMAT`] is refused: either when
/// written, or when read back (never returned as if understood).
fn a_newer_format_is_refused(store: &dyn ClusterStore) {
    let newer = CLUSTER_STATE_FORMAT + 1;
    let mut record = KindRecord::new(KIND, 1);
    record.format = newer;
    let is_unsupported = |e: &StoreError| {
        matches!(e, StoreError::UnsupportedFormat { found, supported, .. }
            if *found == newer && *supported == CLUSTER_STATE_FORMAT)
    };
    match store.swap_kind(KIND, None, &record) {
        Err(e) => assert!(is_unsupported(&e), "{e}"),
        Ok(outcome) => {
            swapped(outcome);
            let err = store.load_kind(KIND).unwrap_err();
            assert!(is_unsupported(&err), "{err}");
            assert!(err.to_string().contains(&store.location()), "{err}");
            let err = store.load_state(KIND).unwrap_err();
            assert!(is_unsupported(&err), "{err}");
        }
    }
    let mut state = KindState::new("imported-kind", 1);
    state.format = newer;
    if let Err(e) = store.import("imported-kind", &state) {
        assert!(is_unsupported(&e), "{e}");
    } else {
        let err = store.load_state("imported-kind").unwrap_err();
        assert!(is_unsupported(&err), "{err}");
    }
}

/// One finalizer per kind: the holder claiming again keeps it, another holder is refused
/// (naming the holder) until it is released; releasing a claim one does not hold does
/// nothing; kinds are claimed separately.
fn finalizer_claim_is_exclusive_per_kind(store: &dyn ClusterStore) {
    create_kind(store);
    assert_eq!(
        store.claim_finalizer(KIND, "c1", TTL).unwrap(),
        FinalizerClaim::Claimed
    );
    assert_eq!(
        store.claim_finalizer(KIND, "c1", TTL).unwrap(),
        FinalizerClaim::Claimed,
        "the holder claiming again keeps it"
    );
    let held = FinalizerClaim::HeldBy {
        holder: "c1".to_owned(),
    };
    assert_eq!(store.claim_finalizer(KIND, "c2", TTL).unwrap(), held);
    assert_eq!(
        store.claim_finalizer("other-kind", "c2", TTL).unwrap(),
        FinalizerClaim::Claimed,
        "kinds are claimed separately"
    );
    store.release_finalizer(KIND, "c2").unwrap();
    assert_eq!(
        store.claim_finalizer(KIND, "c2", TTL).unwrap(),
        held,
        "a release by another holder does nothing"
    );
    store.release_finalizer(KIND, "c1").unwrap();
    assert_eq!(
        store.claim_finalizer(KIND, "c2", TTL).unwrap(),
        FinalizerClaim::Claimed
    );
    store.release_finalizer(KIND, "c2").unwrap();
    store.release_finalizer("other-kind", "c2").unwrap();
    store.release_finalizer(KIND, "nobody").unwrap();
}

/// The move record: created only from absent, swapped only from its current revision.
/// (A store in the middle of a move of its own already holds one: the property starts
/// from whatever is there.)
fn move_record_is_compare_and_swap(store: &dyn ClusterStore) {
    let start = store.load_move().unwrap().map(|v| v.revision);
    let mut record = MoveRecord {
        id: "move-1".to_owned(),
        role: MoveRole::Source,
        from: "here".to_owned(),
        to: "there".to_owned(),
        stage: MoveStage::Copying,
        started_at_ms: 1,
        updated_at_ms: 1,
        by: "ops".to_owned(),
    };
    if start.is_some() {
        assert_eq!(
            store.swap_move(None, &record).unwrap(),
            StoreCasOutcome::Conflict
        );
    }
    let first = swapped(store.swap_move(start, &record).unwrap());
    assert_eq!(
        store.swap_move(None, &record).unwrap(),
        StoreCasOutcome::Conflict
    );
    let stored = store.load_move().unwrap().unwrap();
    assert_eq!((stored.revision, &stored.value), (first, &record));
    record.stage = MoveStage::DualPublishing;
    let second = swapped(store.swap_move(Some(first), &record).unwrap());
    assert_ne!(first, second);
    assert_eq!(
        store.swap_move(Some(first), &record).unwrap(),
        StoreCasOutcome::Conflict
    );
    assert_eq!(store.load_move().unwrap().unwrap().value, record);
}

/// `remove_kind` deletes a kind's record, members and audit trail, and nothing of
/// another kind.
fn remove_kind_deletes_record_members_and_audit(store: &dyn ClusterStore) {
    for kind in [KIND, "other-kind"] {
        let revision = swapped(
            store
                .swap_kind(kind, None, &KindRecord::new(kind, 1))
                .unwrap(),
        );
        swapped(
            store
                .swap_member(kind, "dn1", None, revision, &member(1, 1))
                .unwrap(),
        );
        store.append_audit(kind, &audit_entry("kept")).unwrap();
    }
    store.remove_kind(KIND).unwrap();
    assert!(store.load_kind(KIND).unwrap().is_none());
    assert!(store.members(KIND).unwrap().is_empty());
    assert!(store.audit(KIND).unwrap().is_empty());
    assert_eq!(store.kinds().unwrap(), ["other-kind"]);
    assert_eq!(store.members("other-kind").unwrap().len(), 1);
    assert_eq!(store.audit("other-kind").unwrap().len(), 1);
    // Removing a kind never stored is a no-op; the kind may be created again.
    store.remove_kind("never").unwrap();
    swapped(
        store
            .swap_kind(KIND, None, &KindRecord::new(KIND, 2))
            .unwrap(),
    );
}

/// Ids with separators and escapes are kept apart and come back as given.
fn ids_are_kept_as_given(store: &dyn ClusterStore) {
    let kinds = ["a/b", "a%2Fb", "a", "%"];
    for kind in kinds {
        swapped(
            store
                .swap_kind(kind, None, &KindRecord::new(kind, 1))
                .unwrap(),
        );
    }
    assert_eq!(store.kinds().unwrap(), ["%", "a", "a%2Fb", "a/b"]);
    assert_eq!(store.load_kind("a/b").unwrap().unwrap().value.kind, "a/b");
    let kind_revision = store.load_kind("a").unwrap().unwrap().revision;
    for (i, id) in ["rack/1%dn2", "rack", "rack%2F1", "dn1"]
        .into_iter()
        .enumerate()
    {
        let i = u32::try_from(i).unwrap();
        swapped(
            store
                .swap_member("a", id, None, kind_revision, &member(i + 1, 1))
                .unwrap(),
        );
    }
    let ids: Vec<String> = store
        .members("a")
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["dn1", "rack", "rack%2F1", "rack/1%dn2"]);
    assert_eq!(
        store.load_member("a", "rack/1%dn2").unwrap().unwrap().value,
        member(1, 1)
    );
    assert_eq!(
        store.load_member("a", "rack").unwrap().unwrap().value,
        member(2, 1)
    );
    assert!(
        store.members("a/b").unwrap().is_empty(),
        "another kind's members"
    );
}
