//! The document-migration path on etcd: the store contract, and several processes (and
//! clients) starting together on an old document: exactly one migrates.

use std::sync::{Arc, Barrier};
use std::thread;

use layout_core::migration::EtcdDocumentStore;
use layout_core::migration::{
    DocumentCasOutcome, DocumentMigration, DocumentMigrator, DocumentStore, LoadOutcome,
};
use layout_testkit::crash::{child_role, report_step, ChildCommand};
use serde_json::json;

use crate::server;
use layout_tests::cluster::BOUND;

const ENDPOINT_ENV: &str = "LAYOUT_ETCD_ENDPOINT";
const PREFIX_ENV: &str = "LAYOUT_ETCD_PREFIX";

fn migrator() -> DocumentMigrator {
    DocumentMigrator::builder("scheduler-state")
        .base_version(1)
        .step(DocumentMigration::new(1, 2, |mut doc| {
            doc["queues"] = json!({"default": doc["jobs"].clone()});
            Ok(doc)
        }))
        .step(DocumentMigration::new(2, 3, |mut doc| {
            doc["paused"] = json!(false);
            Ok(doc)
        }))
        .build()
        .unwrap()
}

fn document(endpoint: &str, prefix: &str) -> EtcdDocumentStore {
    let etcd = layout_core::etcd::EtcdConnection::connect(layout_core::etcd::EtcdOptions::new(
        [endpoint.to_owned()],
        prefix,
    ))
    .unwrap();
    EtcdDocumentStore::new(Arc::new(etcd), "scheduler-state")
}

/// What a load did, as a word.
fn outcome_word(outcome: &LoadOutcome) -> &'static str {
    match outcome {
        LoadOutcome::Migrated { .. } => "migrated",
        LoadOutcome::Current { .. } => "current",
        LoadOutcome::Created { .. } => "created",
    }
}

#[test]
fn the_etcd_document_store_keeps_the_compare_and_swap_contract() {
    let store = document(server::shared().endpoint(), &server::prefix("doc-contract"));
    assert!(store.load().unwrap().is_none());
    let DocumentCasOutcome::Stored(r1) = store.compare_and_swap(None, b"{\"a\":1}").unwrap() else {
        panic!("the first create must win");
    };
    assert!(matches!(
        store.compare_and_swap(None, b"{}").unwrap(),
        DocumentCasOutcome::Conflict { current: Some(r) } if r == r1
    ));
    let DocumentCasOutcome::Stored(r2) = store.compare_and_swap(Some(r1), b"{\"a\":2}").unwrap()
    else {
        panic!("a swap at the current revision must win");
    };
    assert_ne!(r1, r2);
    assert!(matches!(
        store.compare_and_swap(Some(r1), b"{\"a\":3}").unwrap(),
        DocumentCasOutcome::Conflict { current: Some(r) } if r == r2
    ));
    let stored = store.load().unwrap().unwrap();
    assert_eq!(
        (stored.revision, stored.bytes.as_slice()),
        (r2, &b"{\"a\":2}"[..])
    );
}

#[test]
fn several_processes_starting_together_on_an_old_document_exactly_one_migrates() {
    if child_role().is_some() {
        let store = document(
            &std::env::var(ENDPOINT_ENV).unwrap(),
            &std::env::var(PREFIX_ENV).unwrap(),
        );
        let loaded = migrator().load(&store).unwrap().unwrap();
        assert_eq!(loaded.document["paused"], json!(false));
        report_step(format!("outcome {}", outcome_word(&loaded.outcome)));
        return;
    }
    let prefix = server::prefix("doc-race-processes");
    let endpoint = server::shared().endpoint();
    document(endpoint, &prefix)
        .compare_and_swap(None, br#"{"jobs": ["a", "b"]}"#)
        .unwrap();
    let test = layout_testkit::test_name!();
    let mut children: Vec<_> = (0..4)
        .map(|i| {
            ChildCommand::new(&test, format!("scheduler-{i}"))
                .env(ENDPOINT_ENV, endpoint)
                .env(PREFIX_ENV, &prefix)
                .spawn()
                .unwrap()
        })
        .collect();
    let mut words = Vec::new();
    for child in &mut children {
        let output = child.wait(BOUND).unwrap();
        assert!(output.success(), "{output:?}");
        words.extend(
            output
                .steps
                .iter()
                .filter_map(|s| s.strip_prefix("outcome "))
                .map(str::to_owned),
        );
    }
    words.sort();
    assert_eq!(words, ["current", "current", "current", "migrated"]);
    let stored = migrator()
        .load(&document(endpoint, &prefix))
        .unwrap()
        .unwrap();
    assert_eq!(stored.outcome, LoadOutcome::Current { version: 3 });
    assert_eq!(stored.document["queues"]["default"], json!(["a", "b"]));
}

#[test]
fn eight_clients_released_by_a_barrier_exactly_one_migrates_ten_times() {
    for round in 0..10 {
        let prefix = server::prefix(&format!("doc-race-{round}"));
        let endpoint = server::shared().endpoint();
        document(endpoint, &prefix)
            .compare_and_swap(None, br#"{"jobs": ["a"]}"#)
            .unwrap();
        let stores: Vec<_> = (0..8).map(|_| document(endpoint, &prefix)).collect();
        let barrier = Arc::new(Barrier::new(stores.len()));
        let loads: Vec<_> = stores
            .into_iter()
            .map(|store| {
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    migrator().load(&store).unwrap().unwrap()
                })
            })
            .collect();
        let loaded: Vec<_> = loads.into_iter().map(|t| t.join().unwrap()).collect();
        let migrated = loaded
            .iter()
            .filter(|l| matches!(l.outcome, LoadOutcome::Migrated { .. }))
            .count();
        assert_eq!(migrated, 1, "round {round}: {loaded:?}");
        assert!(loaded.windows(2).all(|w| w[0].document == w[1].document));
    }
}
