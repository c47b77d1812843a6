//! The [`DocumentStore`] contract.

use std::sync::Arc;
use std::time::{Duration, Instant};

use layout_core::migration::{
    DocumentCasOutcome, DocumentChange, DocumentStore, Revision, WatchEvent,
};
use parking_lot::{Condvar, Mutex};

use super::{run, Clause, ConformanceReport};

/// How long the watch clause waits for a change to be reported (a safety bound).
const WATCH_BOUND: Duration = Duration::from_secs(10);

/// The clauses of the [`DocumentStore`] contract, in the order [`document_store`] runs
/// them.
pub const DOCUMENT_STORE_CLAUSES: &[Clause] = &[
    Clause {
        name: "a_fresh_store_loads_none",
        requires: "`load` returns `Ok(None)` when nothing was ever stored.",
    },
    Clause {
        name: "create_only_if_absent",
        requires: "`compare_and_swap(None, ..)` stores only when nothing is stored; otherwise it conflicts, reports the current revision and stores nothing.",
    },
    Clause {
        name: "swap_at_the_current_revision_stores_and_moves_the_revision",
        requires: "a compare-and-swap expecting the current revision stores the bytes and returns a new revision, which `load` then reports with the bytes.",
    },
    Clause {
        name: "a_stale_swap_conflicts_and_changes_nothing",
        requires: "a compare-and-swap expecting a revision that is no longer stored conflicts, reports the current revision, and leaves bytes and revision as they were.",
    },
    Clause {
        name: "a_watch_reports_every_later_change",
        requires: "a store that offers a watch reports, in revision order, a change stored between `after` and the watch's start and every change stored after it, with the revision and bytes `load` reports (a store without a watch keeps this clause trivially).",
    },
];

const CHECKS: &[fn(&dyn DocumentStore)] = &[
    a_fresh_store_loads_none,
    create_only_if_absent,
    swap_at_the_current_revision_stores_and_moves_the_revision,
    a_stale_swap_conflicts_and_changes_nothing,
    a_watch_reports_every_later_change,
];

/// Runs every clause of the [`DocumentStore`] contract, each on a fresh store (holding
/// no document) from `make`, and reports.
pub fn check_document_store<S: DocumentStore + 'static>(make: impl Fn() -> S) -> ConformanceReport {
    run(
        "DocumentStore",
        DOCUMENT_STORE_CLAUSES,
        CHECKS,
        &|| Box::new(make()) as Box<dyn DocumentStore>,
        DocumentStore::location,
    )
}

/// Runs every clause of the [`DocumentStore`] contract, each on a fresh store (holding no
/// document) from `make`.
///
/// # Panics
///
/// Naming every clause broken, with its failed assertion.
#[track_caller]
pub fn document_store<S: DocumentStore + 'static>(make: impl Fn() -> S) {
    check_document_store(make).assert_ok();
}

fn stored(outcome: DocumentCasOutcome) -> Revision {
    match outcome {
        DocumentCasOutcome::Stored(revision) => revision,
        DocumentCasOutcome::Conflict { current } => {
            panic!("expected the compare-and-swap to store, it conflicted (current {current:?})")
        }
    }
}

fn a_fresh_store_loads_none(store: &dyn DocumentStore) {
    assert!(
        store.load().unwrap().is_none(),
        "a fresh store loaded a document"
    );
}

fn create_only_if_absent(store: &dyn DocumentStore) {
    let first = stored(store.compare_and_swap(None, br#"{"a":1}"#).unwrap());
    assert_eq!(
        store.compare_and_swap(None, br#"{"a":2}"#).unwrap(),
        DocumentCasOutcome::Conflict {
            current: Some(first)
        },
        "a second create"
    );
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(
        (loaded.revision, loaded.bytes.as_slice()),
        (first, &br#"{"a":1}"#[..]),
        "after a refused create"
    );
}

fn swap_at_the_current_revision_stores_and_moves_the_revision(store: &dyn DocumentStore) {
    let first = stored(store.compare_and_swap(None, br#"{"a":1}"#).unwrap());
    let second = stored(store.compare_and_swap(Some(first), br#"{"a":2}"#).unwrap());
    assert_ne!(first, second, "the revision did not change");
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(
        (loaded.revision, loaded.bytes.as_slice()),
        (second, &br#"{"a":2}"#[..])
    );
    let third = stored(store.compare_and_swap(Some(second), br#"{"a":3}"#).unwrap());
    assert!(third != first && third != second, "a revision was reused");
}

fn a_stale_swap_conflicts_and_changes_nothing(store: &dyn DocumentStore) {
    let first = stored(store.compare_and_swap(None, br#"{"a":1}"#).unwrap());
    let second = stored(store.compare_and_swap(Some(first), br#"{"a":2}"#).unwrap());
    assert_eq!(
        store.compare_and_swap(Some(first), br#"{"a":3}"#).unwrap(),
        DocumentCasOutcome::Conflict {
            current: Some(second)
        },
        "a swap at a stale revision"
    );
    let loaded = store.load().unwrap().unwrap();
    assert_eq!(
        (loaded.revision, loaded.bytes.as_slice()),
        (second, &br#"{"a":2}"#[..]),
        "after a stale swap"
    );
}

#[derive(Default)]
struct Seen {
    events: Mutex<Vec<WatchEvent>>,
    arrived: Condvar,
}

fn a_watch_reports_every_later_change(store: &dyn DocumentStore) {
    let first = stored(store.compare_and_swap(None, br#"{"a":1}"#).unwrap());
    let missed = stored(store.compare_and_swap(Some(first), br#"{"a":2}"#).unwrap());
    let seen = Arc::new(Seen::default());
    let recorder = Arc::clone(&seen);
    let Some(watch) = store
        .watch(
            first,
            Box::new(move |event| {
                recorder.events.lock().push(event);
                recorder.arrived.notify_all();
            }),
        )
        .unwrap()
    else {
        return;
    };
    let later = stored(store.compare_and_swap(Some(missed), br#"{"a":3}"#).unwrap());
    let expected = vec![
        WatchEvent::Changed(DocumentChange {
            revision: missed,
            bytes: Some(br#"{"a":2}"#.to_vec()),
        }),
        WatchEvent::Changed(DocumentChange {
            revision: later,
            bytes: Some(br#"{"a":3}"#.to_vec()),
        }),
    ];
    let deadline = Instant::now() + WATCH_BOUND;
    let mut events = seen.events.lock();
    while events.len() < expected.len() && Instant::now() < deadline {
        seen.arrived.wait_until(&mut events, deadline);
    }
    assert_eq!(*events, expected, "the changes the watch reported");
    drop(events);
    drop(watch);
}
