//! Fenced shared documents on a real etcd: a process holding a document learns from its
//! etcd watch that a newer release migrated it, before its next write, and that write is
//! refused naming both versions; the story of two releases of a scheduler with child
//! processes.

use std::sync::Arc;

use layout_core::migration::EtcdDocumentStore;
use layout_core::migration::{
    DocumentCasOutcome, DocumentError, DocumentStore, Freshness, LoadOutcome,
};
use serde_json::json;

use crate::server;
use layout_tests::shared_document::{self, release_1, release_2, Shared, BOUND};

fn store(prefix: &str) -> Arc<dyn DocumentStore> {
    Arc::new(EtcdDocumentStore::new(
        Arc::clone(server::store(prefix).connection()),
        "scheduler-state",
    ))
}

#[test]
fn an_older_release_learns_from_the_watch_before_writing_and_its_write_is_refused() {
    let prefix = server::prefix("fenced-watch");
    let old_store = store(&prefix);
    old_store
        .compare_and_swap(None, br#"{"jobs": ["a"]}"#)
        .unwrap();
    let old_release = release_1();
    let mut old = old_release.open(old_store).unwrap().unwrap();
    assert!(old.is_watched());
    assert_eq!(old.check().unwrap(), Freshness::Current);

    // A peer of the same release writes: a change, not a refusal.
    let peer_release = release_1();
    let mut peer = peer_release.open(store(&prefix)).unwrap().unwrap();
    assert_eq!(peer.loaded().outcome, LoadOutcome::Current { version: 2 });
    let mut doc = peer.document().clone();
    doc["queues"]["default"] = json!(["a", "peer"]);
    assert!(matches!(
        peer.save(doc).unwrap(),
        DocumentCasOutcome::Stored(_)
    ));
    assert!(matches!(
        old.wait_for_change(BOUND).unwrap(),
        Freshness::ChangedByPeer { revision: Some(_) }
    ));
    assert_eq!(
        old.read().unwrap()["queues"]["default"],
        json!(["a", "peer"])
    );
    assert!(!old.is_stale());

    // A newer release migrates, in another client: the older one learns by its watch
    // alone (no read of the store, no write).
    let new_release = release_2();
    let new = new_release.open(store(&prefix)).unwrap().unwrap();
    assert!(matches!(
        new.loaded().outcome,
        LoadOutcome::Migrated { from: 2, to: 3, .. }
    ));
    assert_eq!(
        old.wait_for_change(BOUND).unwrap(),
        Freshness::MigratedByNewerRelease { stored_version: 3 }
    );
    assert!(old.is_stale());
    let before = new.revision();
    let refused = old.save(old.document().clone()).unwrap_err();
    assert!(
        matches!(
            refused,
            DocumentError::MigratedByNewerRelease {
                loaded_version: 2,
                stored_version: 3,
                our_version: 2,
                ..
            }
        ),
        "{refused}"
    );
    let message = refused.to_string();
    assert!(
        message.contains("version 3") && message.contains("version 2"),
        "{message}"
    );
    assert!(matches!(
        old.read(),
        Err(DocumentError::MigratedByNewerRelease { .. })
    ));
    // Nothing was written over the newer release's document.
    let stored = store(&prefix).load().unwrap().unwrap();
    assert_eq!(stored.revision, before);
}

#[test]
fn two_releases_of_a_scheduler_on_one_etcd_document_the_older_refuses_its_next_write() {
    if shared_document::play_child() {
        return;
    }
    let shared = Shared::Etcd(
        server::shared().endpoint().to_owned(),
        server::prefix("fenced-releases"),
    );
    shared_document::run_two_releases(&layout_testkit::test_name!(), &shared);
}
