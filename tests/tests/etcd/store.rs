//! The etcd cluster store's records: the kit's conformance suites on etcd (the cluster
//! store, a moving store between two prefixes, the document store), the migration of the
//! first release's documents (format 1) on connect, the bytes a member change writes
//! (independent of the number of members), and paged listings.
//!
//! Raw keys are read and written through an [`EtcdDocumentStore`] on a prefix `Q` while
//! the cluster store under test lives at `Q/documents`: the document `kinds/dn` of the
//! one is the key `Q/documents/kinds/dn`, the first release's key of kind `dn` of the
//! other.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use layout_core::cluster::{
    AuditEntry, AuditEvent, ClusterStore, EtcdStore, Exclusion, KindRecord, KindState,
    MemberRecord, MemberRole, MovingStore, StoreCasOutcome, StoreError, AUDIT_RETENTION,
};
use layout_core::etcd::EtcdOptions;
use layout_core::migration::EtcdDocumentStore;
use layout_core::migration::{DocumentCasOutcome as DocumentCas, DocumentStore};
use serde_json::{json, Value};

use crate::server;

const KIND: &str = "dn";

/// A cluster store under `Q/documents` and the raw keys under it (see the module's
/// documentation).
struct Raw {
    base: Arc<EtcdStore>,
    prefix: String,
}

impl Raw {
    fn new(test: &str) -> Self {
        let base = server::prefix(test);
        Self {
            base: Arc::new(server::store(&base)),
            prefix: format!("{base}/documents"),
        }
    }

    /// A new connection of the cluster store (it migrates on connect).
    fn connect(&self) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect(EtcdOptions::new(
            [server::shared().endpoint().to_owned()],
            self.prefix.clone(),
        ))
    }

    /// The key `<cluster prefix>/<name>`.
    fn key(&self, name: &str) -> EtcdDocumentStore {
        EtcdDocumentStore::new(Arc::clone(self.base.connection()), name)
    }

    /// Writes `value` at `<cluster prefix>/<name>` (which must be absent).
    fn put(&self, name: &str, value: &Value) {
        let stored = self
            .key(name)
            .compare_and_swap(None, &serde_json::to_vec(value).unwrap())
            .unwrap();
        assert!(matches!(stored, DocumentCas::Stored(_)), "{stored:?}");
    }

    /// The value and revision at `<cluster prefix>/<name>`.
    fn get(&self, name: &str) -> Option<(Vec<u8>, u64)> {
        self.key(name)
            .load()
            .unwrap()
            .map(|d| (d.bytes, d.revision.0))
    }
}

fn fresh(test: &str) -> EtcdStore {
    server::store(&server::prefix(test))
}

fn member(slv: u32, at_ms: u64) -> MemberRecord {
    MemberRecord {
        role: MemberRole::Member,
        incarnation: format!("inc-{at_ms}"),
        software_layout_version: slv,
        metadata_layout_version: 1,
        first_registered_at_ms: 1,
        last_registered_at_ms: at_ms,
        excluded: None,
    }
}

fn entry(n: usize) -> AuditEntry {
    AuditEntry {
        at_ms: 1_000 + n as u64,
        actor: "ops".to_owned(),
        event: AuditEvent::Other("test".to_owned()),
        member_id: None,
        version: None,
        detail: format!("entry {n}"),
    }
}

#[allow(clippy::needless_pass_by_value)] // takes the outcome as the store returns it
fn swapped(outcome: StoreCasOutcome) -> u64 {
    match outcome {
        StoreCasOutcome::Swapped { revision } => revision,
        StoreCasOutcome::Conflict => panic!("expected a swap, got a conflict"),
    }
}

/// Creates `kind` at version 1 and returns its record's revision.
fn create(store: &EtcdStore, kind: &str) -> u64 {
    swapped(
        store
            .swap_kind(kind, None, &KindRecord::new(kind, 1))
            .unwrap(),
    )
}

#[test]
fn store_conformance_of_the_etcd_cluster_store() {
    let stores = AtomicUsize::new(0);
    layout_testkit::conformance::cluster_store(|| {
        let n = stores.fetch_add(1, Ordering::SeqCst);
        fresh(&format!("store-contract-{n}"))
    });
}

#[test]
fn store_conformance_of_a_moving_store_between_two_etcd_prefixes() {
    let stores = AtomicUsize::new(0);
    let next = || {
        let n = stores.fetch_add(1, Ordering::SeqCst);
        Arc::new(fresh(&format!("moving-contract-{n}"))) as Arc<dyn ClusterStore>
    };
    layout_testkit::conformance::cluster_store(|| {
        let moving = MovingStore::new(next());
        moving.begin(next()).unwrap();
        moving
    });
    layout_testkit::conformance::cluster_store(|| {
        let moving = MovingStore::new(next());
        moving.begin(next()).unwrap();
        moving.switch().unwrap();
        moving
    });
}

#[test]
fn store_conformance_of_the_etcd_document_store() {
    let stores = AtomicUsize::new(0);
    layout_testkit::conformance::document_store(|| {
        let n = stores.fetch_add(1, Ordering::SeqCst);
        EtcdDocumentStore::new(
            Arc::clone(fresh(&format!("document-contract-{n}")).connection()),
            "scheduler-state",
        )
    });
}

#[test]
fn store_audit_keeps_the_newest_entries_in_append_order() {
    let store = Arc::new(fresh("store-audit"));
    create(&store, KIND);
    let total = AUDIT_RETENTION + 7;
    for n in 0..total - 100 {
        store.append_audit(KIND, &entry(n)).unwrap();
    }
    // The last 100 from two threads at once: none lost, each thread's in its order.
    let next = Arc::new(AtomicUsize::new(total - 100));
    let appenders: Vec<_> = (0..2)
        .map(|_| {
            let (store, next) = (Arc::clone(&store), Arc::clone(&next));
            thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    return;
                }
                store.append_audit(KIND, &entry(n)).unwrap();
            })
        })
        .collect();
    for appender in appenders {
        appender.join().unwrap();
    }
    let audit = store.audit(KIND).unwrap();
    assert_eq!(audit.len(), AUDIT_RETENTION);
    let details: Vec<usize> = audit
        .iter()
        .map(|e| e.detail.strip_prefix("entry ").unwrap().parse().unwrap())
        .collect();
    // Sequential appends kept their order; the racing ones are all there.
    assert_eq!(
        details[..AUDIT_RETENTION - 100],
        (7..total - 100).collect::<Vec<_>>()
    );
    let mut racing = details[AUDIT_RETENTION - 100..].to_vec();
    racing.sort_unstable();
    assert_eq!(racing, (total - 100..total).collect::<Vec<_>>());
    assert!(store.audit("other").unwrap().is_empty());
}

#[test]
fn store_import_replaces_the_whole_kind_and_load_state_reads_it_back() {
    let store = fresh("store-import");
    let kind_rev = create(&store, KIND);
    for id in ["old1", "keep"] {
        store
            .swap_member(KIND, id, None, kind_rev, &member(1, 1))
            .unwrap();
    }
    for n in 0..5 {
        store.append_audit(KIND, &entry(n)).unwrap();
    }
    let mut members = BTreeMap::new();
    for n in 0..250 {
        members.insert(format!("m{n:03}"), member(2, n));
    }
    members.insert("keep".to_owned(), member(3, 3));
    let mut record = KindRecord::new(KIND, 4);
    record.claim_generation = 7;
    let state = KindState::from_parts(record, members, (0..3).map(entry).collect());
    store.import(KIND, &state).unwrap();
    assert_eq!(store.load_state(KIND).unwrap().unwrap(), state);
    // Appends continue after the imported trail.
    store.append_audit(KIND, &entry(9)).unwrap();
    let audit = store.audit(KIND).unwrap();
    assert_eq!(audit.len(), 4);
    assert_eq!(audit[3], entry(9));
}

#[test]
fn store_members_lists_2500_members_in_pages() {
    let store = fresh("store-paging");
    let members: BTreeMap<String, MemberRecord> = (0..2_500)
        .map(|n| (format!("rack-{}/dn-{n:05}", n % 7), member(1, n)))
        .collect();
    store
        .import(
            KIND,
            &KindState::from_parts(KindRecord::new(KIND, 1), members.clone(), Vec::new()),
        )
        .unwrap();
    let listed = store.members(KIND).unwrap();
    assert_eq!(listed.len(), 2_500);
    let listed: BTreeMap<String, MemberRecord> =
        listed.into_iter().map(|(id, m)| (id, m.value)).collect();
    assert_eq!(listed, members);
    // Sorted by id (not by escaped key).
    let ids: Vec<String> = store
        .members(KIND)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
}

/// Registers `n` members (one `swap_member` each), then changes one of them (a
/// heartbeat's report) and returns the bytes that change put: key plus value.
fn bytes_of_one_member_change(test: &str, n: usize) -> usize {
    let raw = Raw::new(test);
    let store = raw.connect().unwrap();
    let kind_rev = create(&store, KIND);
    for i in 0..n {
        swapped(
            store
                .swap_member(KIND, &format!("dn-{i:05}"), None, kind_rev, &member(1, 1))
                .unwrap(),
        );
    }
    let id = "dn-00042";
    let before = store.load_member(KIND, id).unwrap().unwrap();
    let kind_before = store.load_kind(KIND).unwrap().unwrap();
    let revision = swapped(
        store
            .swap_member(KIND, id, Some(before.revision), kind_rev, &member(1, 2))
            .unwrap(),
    );
    // Only that member's key changed.
    let name = format!("members/{KIND}/{id}");
    let (value, key_revision) = raw.get(&name).unwrap();
    assert_eq!(key_revision, revision);
    assert_eq!(store.load_kind(KIND).unwrap().unwrap(), kind_before);
    assert_eq!(store.members(KIND).unwrap().len(), n);
    let key = raw.key(&name).key().len();
    key + value.len()
}

#[test]
fn store_bytes_written_per_member_change_do_not_depend_on_the_number_of_members() {
    // Prefixes of equal length: only the number of members differs.
    let small = bytes_of_one_member_change("store-bytes-00100", 100);
    let large = bytes_of_one_member_change("store-bytes-01000", 1_000);
    assert_eq!(small, large);
    assert!(small < 512, "{small} bytes for one member change");
}

/// A document of the first release (format 1): three members (one excluded, one with
/// `/` and `%` in its id), audit entries.
fn format_1_document() -> Value {
    let member = |slv: u32, excluded: Value| {
        json!({
            "software_layout_version": slv,
            "metadata_layout_version": 3,
            "first_registered_at_ms": 10,
            "last_registered_at_ms": 20,
            "excluded": excluded,
        })
    };
    json!({
        "format": 1,
        "kind": KIND,
        "cluster_layout_version": 3,
        "finalization": null,
        "members": {
            "dn1": member(4, Value::Null),
            "dn2": member(3, Value::Null),
            "rack/1%dn3": member(2, json!({
                "reason": "decommissioned",
                "excluded_by": "ops",
                "at_ms": 30,
                "software_layout_version": 2,
                "required_software_layout_version": 3,
            })),
        },
        "audit": [
            {"at_ms": 1, "actor": "c1", "event": "finalization-started", "member_id": null, "version": 3, "detail": ""},
            {"at_ms": 2, "actor": "ops", "event": "excluded", "member_id": "rack/1%dn3", "version": null, "detail": "decommissioned"},
        ],
        "moved_to": null,
    })
}

fn tombstone_format(raw: &Raw, kind: &str) -> Value {
    let (bytes, _) = raw.get(&format!("kinds/{kind}")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn store_connect_migrates_a_format_1_document_once_and_leaves_a_tombstone() {
    let raw = Raw::new("store-migration");
    raw.put("kinds/dn", &format_1_document());
    // What a migration interrupted by a crash left, of an older version of the document
    // (a member since forgotten, a longer audit trail): replaced by the document's.
    raw.put(
        "members/dn/ghost",
        &serde_json::to_value(member(1, 1)).unwrap(),
    );
    raw.put(
        "audit/dn/00000000000000000002",
        &serde_json::to_value(entry(2)).unwrap(),
    );
    // A kind whose id holds `/` (the first release did not escape it).
    let mut other = format_1_document();
    other["kind"] = json!("rack/dn");
    raw.put("kinds/rack/dn", &other);
    let store = raw.connect().unwrap();
    assert_eq!(store.kinds().unwrap(), [KIND, "rack/dn"]);
    assert_eq!(store.members("rack/dn").unwrap().len(), 3);
    assert_eq!(tombstone_format(&raw, "rack/dn")["format"], 2);
    let state = store.load_state(KIND).unwrap().unwrap();
    assert_eq!((state.format, state.cluster_layout_version), (2, 3));
    assert_eq!(state.claim_generation, 0);
    let ids: Vec<&str> = state.members.keys().map(String::as_str).collect();
    assert_eq!(ids, ["dn1", "dn2", "rack/1%dn3"]);
    assert!(state
        .members
        .values()
        .all(|m| m.role == MemberRole::Member && m.incarnation.is_empty()));
    assert_eq!(state.members["dn1"].software_layout_version, 4);
    assert_eq!(
        state.members["rack/1%dn3"].excluded,
        Some(Exclusion {
            reason: "decommissioned".to_owned(),
            excluded_by: "ops".to_owned(),
            at_ms: 30,
            software_layout_version: 2,
            required_software_layout_version: 3,
        })
    );
    let events: Vec<&str> = state.audit.iter().map(|a| a.event.as_str()).collect();
    assert_eq!(events, ["finalization-started", "excluded"]);

    // The old key: a document of the first release's shape, format 2 (it refuses it).
    let tombstone = tombstone_format(&raw, KIND);
    assert_eq!(tombstone["format"], 2);
    assert_eq!(tombstone["kind"], KIND);
    assert_eq!(tombstone["members"], json!({}));
    assert_eq!(tombstone["moved_to"], Value::Null);
    assert!(tombstone["audit"].is_array());

    // A second connect does nothing more.
    let revisions = |store: &EtcdStore| {
        (
            store.load_kind(KIND).unwrap().unwrap().revision,
            store
                .members(KIND)
                .unwrap()
                .into_iter()
                .map(|(id, m)| (id, m.revision))
                .collect::<Vec<_>>(),
            raw.get("kinds/dn").unwrap().1,
        )
    };
    let before = revisions(&store);
    let again = raw.connect().unwrap();
    assert_eq!(revisions(&again), before);
    assert_eq!(again.load_state(KIND).unwrap().unwrap(), state);
}

#[test]
fn store_a_kind_created_by_this_release_gets_a_tombstone_and_a_late_format_1_document_is_migrated()
{
    let raw = Raw::new("store-late-migration");
    let store = raw.connect().unwrap();
    create(&store, "fresh");
    assert_eq!(tombstone_format(&raw, "fresh")["format"], 2);
    // A coordinator of the first release creates a kind after this store connected:
    // creating it here migrates that document instead, and reports a conflict.
    raw.put("kinds/dn", &format_1_document());
    assert_eq!(
        store
            .swap_kind(KIND, None, &KindRecord::new(KIND, 1))
            .unwrap(),
        StoreCasOutcome::Conflict
    );
    let state = store.load_state(KIND).unwrap().unwrap();
    assert_eq!((state.cluster_layout_version, state.members.len()), (3, 3));
    assert_eq!(tombstone_format(&raw, KIND)["format"], 2);
    assert_eq!(store.kinds().unwrap(), [KIND, "fresh"]);
}

#[test]
fn store_connect_refuses_a_damaged_or_newer_document_and_leaves_it() {
    let raw = Raw::new("store-refusals");
    raw.put("kinds/dn", &json!({"format": 3, "kind": KIND}));
    assert!(matches!(
        raw.connect(),
        Err(StoreError::UnsupportedFormat {
            found: 3,
            supported: 2,
            ..
        })
    ));
    let raw = Raw::new("store-refusals-damaged");
    raw.key("kinds/dn")
        .compare_and_swap(None, b"{not json")
        .unwrap();
    assert!(matches!(raw.connect(), Err(StoreError::Damaged { .. })));
    assert_eq!(raw.get("kinds/dn").unwrap().0, b"{not json");
    // A kind record of a newer format is refused on load.
    let raw = Raw::new("store-refusals-record");
    let store = raw.connect().unwrap();
    raw.put("kind/dn", &json!({"format": 3, "kind": KIND}));
    assert!(matches!(
        store.load_kind(KIND),
        Err(StoreError::UnsupportedFormat { found: 3, .. })
    ));
}
