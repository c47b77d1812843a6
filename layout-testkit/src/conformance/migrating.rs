//! The [`MigratingStore`] contract (with its [`MigrationSource`] and [`MigrationSink`]
//! halves).

#[allow(unused_imports)] // the doc links name the halves
use layout_core::migration::{
    BatchWrite, ClearTables, KeyView, LiveWrite, MigratingStore, MigrationCheckpoint,
    MigrationSink, MigrationSource, NewEntry, Row,
};

use super::{run, Clause, ConformanceReport};

/// The clauses of the [`MigratingStore`] contract, in the order [`migrating_store`] runs
/// them.
pub const MIGRATING_STORE_CLAUSES: &[Clause] = &[
    Clause {
        name: "a_fresh_store_is_empty",
        requires: "a fresh store has no checkpoint, no rows in either table and no tombstone.",
    },
    Clause {
        name: "live_writes_are_seen_by_view_scan_and_the_source",
        requires: "`apply` writes the tables it names in one step; `view`, `scan` and `read_batch` see the result; a delete with a tombstone leaves one, which a later put of the key removes.",
    },
    Clause {
        name: "the_source_pages_in_key_order",
        requires: "`read_batch` returns at most `limit` old rows with keys above `after`, in ascending key order.",
    },
    Clause {
        name: "a_batch_stores_its_rows_and_its_checkpoint",
        requires: "`write_batch` at the stored checkpoint writes the rows and stores the next checkpoint, which `load_checkpoint` and `view` then report.",
    },
    Clause {
        name: "a_batch_at_a_stale_checkpoint_writes_nothing",
        requires: "`write_batch` expecting a checkpoint that is not the stored one conflicts, reports the stored one, and writes no row.",
    },
    Clause {
        name: "a_batch_copies_only_where_the_new_table_holds_nothing",
        requires: "`write_batch` skips a key the new table holds a row or a tombstone for, and counts only the rows written.",
    },
    Clause {
        name: "apply_if_unchanged_compares_both_entries",
        requires: "`apply_if_unchanged` writes only if the key's old row and new-table entry are still those expected, and otherwise writes nothing.",
    },
    Clause {
        name: "reset_discards_the_copy",
        requires: "`reset` removes the copied rows, the tombstones and the checkpoint, and keeps the old table.",
    },
    Clause {
        name: "clear_completes_a_running_migration",
        requires: "`clear` deletes the chosen tables and the tombstones and, with a migration under way, marks it complete with its epoch bumped.",
    },
    Clause {
        name: "finish_drops_the_tombstones",
        requires: "`finish` drops the tombstones and keeps the rows and the checkpoint.",
    },
];

const CHECKS: &[fn(&dyn MigratingStore)] = &[
    a_fresh_store_is_empty,
    live_writes_are_seen_by_view_scan_and_the_source,
    the_source_pages_in_key_order,
    a_batch_stores_its_rows_and_its_checkpoint,
    a_batch_at_a_stale_checkpoint_writes_nothing,
    a_batch_copies_only_where_the_new_table_holds_nothing,
    apply_if_unchanged_compares_both_entries,
    reset_discards_the_copy,
    clear_completes_a_running_migration,
    finish_drops_the_tombstones,
];

/// Runs every clause of the [`MigratingStore`] contract, each on a fresh, empty store
/// from `make`, and reports.
pub fn check_migrating_store<S: MigratingStore + 'static>(
    make: impl Fn() -> S,
) -> ConformanceReport {
    run(
        "MigratingStore",
        MIGRATING_STORE_CLAUSES,
        CHECKS,
        &|| Box::new(make()) as Box<dyn MigratingStore>,
        MigrationSink::sink_location,
    )
}

/// Runs every clause of the [`MigratingStore`] contract, each on a fresh, empty store
/// from `make`.
///
/// # Panics
///
/// Naming every clause broken, with its failed assertion.
#[track_caller]
pub fn migrating_store<S: MigratingStore + 'static>(make: impl Fn() -> S) {
    check_migrating_store(make).assert_ok();
}

fn row(key: &str, value: &str) -> Row {
    Row::new(key.as_bytes(), value.as_bytes(), 1_000)
}

fn put_old(store: &dyn MigratingStore, row: Row) {
    store
        .apply(&LiveWrite::Put {
            old: Some(row),
            new: None,
        })
        .unwrap();
}

fn put_new(store: &dyn MigratingStore, row: Row) {
    store
        .apply(&LiveWrite::Put {
            old: None,
            new: Some(row),
        })
        .unwrap();
}

fn delete_with_tombstone(store: &dyn MigratingStore, key: &str) {
    store
        .apply(&LiveWrite::Delete {
            key: key.as_bytes().to_vec(),
            old: true,
            new: true,
            tombstone: true,
        })
        .unwrap();
}

fn checkpoint(last_key: &str, done: u64, complete: bool) -> MigrationCheckpoint {
    let mut checkpoint = MigrationCheckpoint::default();
    checkpoint.last_key = Some(last_key.as_bytes().to_vec());
    checkpoint.done = done;
    checkpoint.batches = done;
    checkpoint.runs = 1;
    checkpoint.started_ms = 500;
    checkpoint.complete = complete;
    checkpoint
}

fn new_entry(store: &dyn MigratingStore, key: &str) -> NewEntry {
    store.view(key.as_bytes()).unwrap().new
}

fn keys(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|r| String::from_utf8_lossy(&r.key).into_owned())
        .collect()
}

fn a_fresh_store_is_empty(store: &dyn MigratingStore) {
    assert_eq!(store.load_checkpoint().unwrap(), None, "a checkpoint");
    assert!(store.read_batch(None, 10).unwrap().is_empty(), "old rows");
    let scan = store.scan(b"").unwrap();
    assert!(
        scan.old.is_empty() && scan.new.is_empty() && scan.tombstones.is_empty(),
        "{scan:?}"
    );
    assert_eq!(
        store.view(b"k1").unwrap(),
        KeyView {
            old: None,
            new: NewEntry::Absent,
            checkpoint: None
        }
    );
}

fn live_writes_are_seen_by_view_scan_and_the_source(store: &dyn MigratingStore) {
    put_old(store, row("k1", "old-1"));
    store
        .apply(&LiveWrite::Put {
            old: Some(row("k2", "old-2")),
            new: Some(row("k2", "new-2")),
        })
        .unwrap();
    let k2 = store.view(b"k2").unwrap();
    assert_eq!(k2.old, Some(row("k2", "old-2")));
    assert_eq!(k2.new, NewEntry::Row(row("k2", "new-2")));
    assert_eq!(new_entry(store, "k1"), NewEntry::Absent);
    assert_eq!(keys(&store.read_batch(None, 10).unwrap()), ["k1", "k2"]);
    let scan = store.scan(b"k").unwrap();
    assert_eq!(
        (keys(&scan.old), keys(&scan.new)),
        (
            vec!["k1".to_owned(), "k2".to_owned()],
            vec!["k2".to_owned()]
        )
    );
    assert!(
        store.scan(b"x").unwrap().old.is_empty(),
        "a scan of another prefix"
    );

    delete_with_tombstone(store, "k2");
    let k2 = store.view(b"k2").unwrap();
    assert_eq!(
        (k2.old, k2.new),
        (None, NewEntry::Tombstone),
        "after a delete"
    );
    assert_eq!(store.scan(b"k").unwrap().tombstones, [b"k2".to_vec()]);
    put_new(store, row("k2", "again"));
    assert_eq!(new_entry(store, "k2"), NewEntry::Row(row("k2", "again")));
    assert!(
        store.scan(b"k").unwrap().tombstones.is_empty(),
        "a put keeps the tombstone"
    );
}

fn the_source_pages_in_key_order(store: &dyn MigratingStore) {
    for key in ["k05", "k02", "k04", "k01", "k03"] {
        put_old(store, row(key, key));
    }
    assert_eq!(keys(&store.read_batch(None, 2).unwrap()), ["k01", "k02"]);
    assert_eq!(
        keys(&store.read_batch(Some(b"k02"), 2).unwrap()),
        ["k03", "k04"]
    );
    assert_eq!(keys(&store.read_batch(Some(b"k04"), 10).unwrap()), ["k05"]);
    assert!(store.read_batch(Some(b"k05"), 10).unwrap().is_empty());
    assert_eq!(store.read_batch(None, 10).unwrap()[2], row("k03", "k03"));
}

fn a_batch_stores_its_rows_and_its_checkpoint(store: &dyn MigratingStore) {
    let first = checkpoint("k2", 2, false);
    assert_eq!(
        store
            .write_batch(None, &[row("k1", "n1"), row("k2", "n2")], &first)
            .unwrap(),
        BatchWrite::Written { rows: 2 }
    );
    assert_eq!(
        store.load_checkpoint().unwrap(),
        Some(first.clone()),
        "the checkpoint stored"
    );
    let k1 = store.view(b"k1").unwrap();
    assert_eq!(k1.new, NewEntry::Row(row("k1", "n1")));
    assert_eq!(
        k1.checkpoint,
        Some(first.clone()),
        "the checkpoint in a view"
    );
    let second = checkpoint("k3", 3, true);
    assert_eq!(
        store
            .write_batch(Some(&first), &[row("k3", "n3")], &second)
            .unwrap(),
        BatchWrite::Written { rows: 1 }
    );
    assert_eq!(
        store.load_checkpoint().unwrap(),
        Some(second),
        "the next checkpoint"
    );
    assert_eq!(keys(&store.scan(b"").unwrap().new), ["k1", "k2", "k3"]);
}

fn a_batch_at_a_stale_checkpoint_writes_nothing(store: &dyn MigratingStore) {
    let first = checkpoint("k1", 1, false);
    store.write_batch(None, &[row("k1", "n1")], &first).unwrap();
    let other = checkpoint("k9", 9, false);
    for expected in [None, Some(&other)] {
        assert_eq!(
            store
                .write_batch(expected, &[row("k2", "n2")], &checkpoint("k2", 2, false))
                .unwrap(),
            BatchWrite::Conflict {
                current: Some(first.clone())
            },
            "a batch expecting {expected:?}"
        );
    }
    assert_eq!(
        new_entry(store, "k2"),
        NewEntry::Absent,
        "a row of a refused batch"
    );
    assert_eq!(store.load_checkpoint().unwrap(), Some(first));
}

fn a_batch_copies_only_where_the_new_table_holds_nothing(store: &dyn MigratingStore) {
    put_new(store, row("k1", "written-by-the-service"));
    put_old(store, row("k2", "old-2"));
    delete_with_tombstone(store, "k2");
    assert_eq!(
        store
            .write_batch(
                None,
                &[
                    row("k1", "copied"),
                    row("k2", "copied"),
                    row("k3", "copied")
                ],
                &checkpoint("k3", 3, false)
            )
            .unwrap(),
        BatchWrite::Written { rows: 1 }
    );
    assert_eq!(
        new_entry(store, "k1"),
        NewEntry::Row(row("k1", "written-by-the-service"))
    );
    assert_eq!(new_entry(store, "k2"), NewEntry::Tombstone);
    assert_eq!(new_entry(store, "k3"), NewEntry::Row(row("k3", "copied")));
}

fn apply_if_unchanged_compares_both_entries(store: &dyn MigratingStore) {
    put_old(store, row("k1", "v1"));
    let seen = store.view(b"k1").unwrap();
    let write = LiveWrite::Put {
        old: Some(row("k1", "mine")),
        new: Some(row("k1", "mine")),
    };
    // The new-table entry changed since (a batch copied the key).
    store
        .write_batch(None, &[row("k1", "copied")], &checkpoint("k1", 1, false))
        .unwrap();
    assert!(
        !store.apply_if_unchanged(b"k1", &seen, &write).unwrap(),
        "a changed new entry"
    );
    assert_eq!(new_entry(store, "k1"), NewEntry::Row(row("k1", "copied")));
    // The old row changed since.
    let seen = store.view(b"k1").unwrap();
    put_old(store, row("k1", "v2"));
    assert!(
        !store.apply_if_unchanged(b"k1", &seen, &write).unwrap(),
        "a changed old row"
    );
    assert_eq!(store.view(b"k1").unwrap().old, Some(row("k1", "v2")));
    // Unchanged: written.
    let seen = store.view(b"k1").unwrap();
    assert!(
        store.apply_if_unchanged(b"k1", &seen, &write).unwrap(),
        "an unchanged key"
    );
    let now = store.view(b"k1").unwrap();
    assert_eq!(
        (now.old, now.new),
        (Some(row("k1", "mine")), NewEntry::Row(row("k1", "mine")))
    );
}

fn reset_discards_the_copy(store: &dyn MigratingStore) {
    put_old(store, row("k1", "old-1"));
    put_old(store, row("k2", "old-2"));
    store
        .write_batch(None, &[row("k1", "n1")], &checkpoint("k1", 1, false))
        .unwrap();
    store
        .apply(&LiveWrite::Delete {
            key: b"k2".to_vec(),
            old: false,
            new: true,
            tombstone: true,
        })
        .unwrap();
    store.reset().unwrap();
    assert_eq!(
        store.load_checkpoint().unwrap(),
        None,
        "the checkpoint after a reset"
    );
    let scan = store.scan(b"").unwrap();
    assert!(
        scan.new.is_empty() && scan.tombstones.is_empty(),
        "{scan:?}"
    );
    assert_eq!(keys(&scan.old), ["k1", "k2"], "the old table after a reset");
}

fn clear_completes_a_running_migration(store: &dyn MigratingStore) {
    put_old(store, row("k1", "old-1"));
    put_old(store, row("k2", "old-2"));
    let running = checkpoint("k1", 1, false);
    store
        .write_batch(None, &[row("k1", "n1")], &running)
        .unwrap();
    delete_with_tombstone(store, "k2");
    store.clear(ClearTables::Both).unwrap();
    let scan = store.scan(b"").unwrap();
    assert!(
        scan.old.is_empty() && scan.new.is_empty() && scan.tombstones.is_empty(),
        "{scan:?}"
    );
    let after = store.load_checkpoint().unwrap().unwrap();
    assert!(
        after.complete,
        "the migration is not complete after a clear"
    );
    assert_eq!(after.epoch, running.epoch + 1, "the epoch after a clear");
    // A batch read before the clear is refused.
    assert!(matches!(
        store
            .write_batch(
                Some(&running),
                &[row("k2", "late")],
                &checkpoint("k2", 2, false)
            )
            .unwrap(),
        BatchWrite::Conflict { .. }
    ));
}

fn finish_drops_the_tombstones(store: &dyn MigratingStore) {
    let done = checkpoint("k1", 1, true);
    store.write_batch(None, &[row("k1", "n1")], &done).unwrap();
    delete_with_tombstone(store, "k2");
    store.finish().unwrap();
    assert!(
        store.scan(b"").unwrap().tombstones.is_empty(),
        "tombstones after finish"
    );
    assert_eq!(new_entry(store, "k2"), NewEntry::Absent);
    assert_eq!(new_entry(store, "k1"), NewEntry::Row(row("k1", "n1")));
    assert_eq!(store.load_checkpoint().unwrap(), Some(done));
}
