//! Versioned documents: the chain, the way back, the stores, and the race of processes
//! sharing one store.

use std::sync::Arc;

use layout_core::migration::{
    CasOutcome, ChainProblem, DocumentError, DocumentMigration, DocumentMigrator, DocumentStore,
    FileDocumentStore, LoadOutcome, MemoryDocumentStore, StepError,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use layout_testkit::crash::{child_role, report_step, ChildCommand, ChildProcess};

/// The scheduler's state, versions 1 (no version field) to 4.
fn scheduler_migrator() -> DocumentMigrator {
    DocumentMigrator::builder("scheduler-state")
        .version_field("schema")
        .base_version(1)
        // Added out of order on purpose: the builder orders them.
        .step(
            DocumentMigration::new(3, 4, |mut doc| {
                let jobs = doc
                    .as_object_mut()
                    .and_then(|o| o.remove("jobs"))
                    .unwrap_or_default();
                doc["queues"] = json!({ "default": jobs });
                Ok(doc)
            })
            .named("jobs-into-queues"),
        )
        .step(
            DocumentMigration::new(1, 2, |mut doc| {
                doc["paused"] = json!(false);
                Ok(doc)
            })
            .with_backward(|mut doc| {
                doc.as_object_mut().ok_or("not an object")?.remove("paused");
                Ok(doc)
            }),
        )
        .step(
            DocumentMigration::new(2, 3, |mut doc| {
                let n = doc["jobs"].as_array().map_or(0, Vec::len);
                doc["job_count"] = json!(n);
                Ok(doc)
            })
            .with_backward(|mut doc| {
                doc.as_object_mut()
                    .ok_or("not an object")?
                    .remove("job_count");
                Ok(doc)
            }),
        )
        .build()
        .unwrap()
}

#[test]
fn loading_an_old_document_applies_every_step_in_order() {
    let m = scheduler_migrator();
    assert_eq!((m.base_version(), m.current_version()), (1, 4));
    // Written before versioning existed: no "schema" field, so version 1.
    let migrated = m.upgrade(json!({"jobs": ["a", "b"]})).unwrap();
    assert_eq!((migrated.from, migrated.to), (1, 4));
    let names: Vec<_> = migrated.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["v1->v2", "v2->v3", "jobs-into-queues"]);
    assert_eq!(
        migrated.document,
        json!({"paused": false, "job_count": 2, "queues": {"default": ["a", "b"]}, "schema": 4})
    );
    // From the middle of the chain: only the steps above.
    let migrated = m
        .upgrade(json!({"schema": 3, "jobs": [], "paused": true, "job_count": 0}))
        .unwrap();
    assert_eq!(migrated.steps.len(), 1);
    // A current document is left as it is.
    let current = m.upgrade(migrated.document.clone()).unwrap();
    assert!(!current.changed());
    assert_eq!(current.document, migrated.document);
}

#[test]
fn a_document_newer_than_the_software_is_refused_naming_both_versions() {
    let m = scheduler_migrator();
    let err = m.upgrade(json!({"schema": 7})).unwrap_err();
    assert!(matches!(
        err,
        DocumentError::NewerThanSoftware {
            found: 7,
            supported: 4,
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.contains("version 7") && text.contains("version 4"),
        "{text}"
    );
    let err = m.upgrade(json!({"schema": 0})).unwrap_err();
    assert!(
        matches!(
            err,
            DocumentError::BelowBase {
                found: 0,
                base: 1,
                ..
            }
        ),
        "{err}"
    );
    let err = m.upgrade(json!({"schema": "two"})).unwrap_err();
    assert!(matches!(err, DocumentError::BadVersion { .. }), "{err}");
}

#[test]
fn a_failing_step_names_the_step_and_versions() {
    let m = DocumentMigrator::builder("d")
        .migration(0, 1, |_| Err(StepError::new("field x is missing")))
        .build()
        .unwrap();
    let err = m.upgrade(json!({})).unwrap_err();
    assert!(
        matches!(&err, DocumentError::StepFailed { step, from: 0, to: 1, .. } if step == "v0->v1")
    );
    assert!(err.to_string().contains("field x is missing"), "{err}");
    let m = DocumentMigrator::builder("d")
        .migration(0, 1, |_| Ok(json!([1, 2])))
        .build()
        .unwrap();
    assert!(matches!(
        m.upgrade(json!({})),
        Err(DocumentError::StepReturnedNonObject { found: "array", .. })
    ));
}

#[test]
fn a_chain_with_gaps_duplicates_or_backward_steps_is_refused_listing_every_problem() {
    let ok = |d: Value| Ok(d);
    let err = DocumentMigrator::builder("d")
        .base_version(1)
        .migration(1, 2, ok)
        .migration(1, 3, ok) // duplicate start
        .migration(4, 5, ok) // gap 3 -> 4 (checked once the duplicate is gone)
        .migration(6, 6, ok) // not forward
        .migration(0, 1, ok) // below the base
        .build()
        .unwrap_err();
    assert!(err
        .problems
        .iter()
        .any(|p| matches!(p, ChainProblem::Duplicate { from: 1, .. })));
    assert!(err
        .problems
        .iter()
        .any(|p| matches!(p, ChainProblem::NotForward { from: 6, to: 6, .. })));
    assert!(err.problems.iter().any(|p| matches!(
        p,
        ChainProblem::BelowBase {
            from: 0,
            base: 1,
            ..
        }
    )));
    let text = err.to_string();
    assert!(text.contains("two steps start from version 1"), "{text}");

    let err = DocumentMigrator::builder("d")
        .migration(0, 1, ok)
        .migration(2, 3, ok)
        .build()
        .unwrap_err();
    assert_eq!(err.problems, [ChainProblem::Gap { from: 1, next: 2 }]);
    assert!(
        err.to_string().contains("no step leaves version 1"),
        "{err}"
    );

    let err = DocumentMigrator::builder("d")
        .migration(0, 2, ok)
        .migration(1, 3, ok)
        .build()
        .unwrap_err();
    assert!(matches!(
        err.problems.as_slice(),
        [ChainProblem::Overlap {
            from: 1,
            earlier_to: 2,
            ..
        }]
    ));

    let err = DocumentMigrator::builder("d")
        .version_field("")
        .build()
        .unwrap_err();
    assert_eq!(err.problems, [ChainProblem::EmptyVersionField]);

    // Steps may skip version numbers as long as they link.
    let m = DocumentMigrator::builder("d")
        .migration(0, 2, ok)
        .migration(2, 5, ok)
        .build()
        .unwrap();
    assert_eq!(m.current_version(), 5);
}

#[test]
fn the_way_back_rewrites_the_document_for_older_software() {
    let m = scheduler_migrator();
    let v3 = m
        .upgrade(json!({"jobs": ["a"]}))
        .map(|d| d.document)
        .and_then(|d| m.downgrade(d, 4))
        .unwrap();
    assert!(!v3.changed());
    let at3 = json!({"schema": 3, "jobs": ["a"], "paused": false, "job_count": 1});
    let back = m.downgrade(at3, 1).unwrap();
    assert_eq!((back.from, back.to), (3, 1));
    let names: Vec<_> = back.steps.iter().map(|s| (s.from, s.to)).collect();
    assert_eq!(names, [(3, 2), (2, 1)]);
    assert_eq!(back.document, json!({"schema": 1, "jobs": ["a"]}));
    // And forward again gives the same document.
    let again = m.upgrade(back.document).unwrap();
    assert_eq!(again.to, 4);
}

#[test]
fn going_back_across_a_step_without_a_way_back_is_refused_and_changes_nothing() {
    let m = scheduler_migrator();
    let at4 = m.upgrade(json!({"jobs": ["a"]})).unwrap().document;
    let err = m.downgrade(at4.clone(), 2).unwrap_err();
    match &err {
        DocumentError::NoWayBack {
            step,
            from,
            to,
            current,
            ..
        } => {
            assert_eq!(
                (step.as_str(), *from, *to, *current),
                ("jobs-into-queues", 3, 4, 4)
            );
        }
        other => panic!("unexpected: {other}"),
    }
    assert!(
        err.to_string().contains(
            "cannot go back from version 4 to 3: step jobs-into-queues defines no way back"
        ),
        "{err}"
    );
    assert!(matches!(
        m.downgrade(at4.clone(), 0),
        Err(DocumentError::BadDowngradeTarget {
            target: 0,
            base: 1,
            ..
        })
    ));
    assert!(matches!(
        m.downgrade(at4, 5),
        Err(DocumentError::BadDowngradeTarget { target: 5, .. })
    ));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SchedulerState {
    paused: bool,
    job_count: usize,
    queues: std::collections::BTreeMap<String, Vec<String>>,
}

#[test]
fn typed_documents_are_encoded_stamped_and_decoded_through_the_chain() {
    let m = scheduler_migrator();
    let state: SchedulerState = m.decode(json!({"jobs": ["x", "y"]})).unwrap();
    assert_eq!(state.job_count, 2);
    assert_eq!(state.queues["default"], ["x", "y"]);
    let doc = m.encode(&state).unwrap();
    assert_eq!(doc["schema"], 4);
    assert_eq!(m.decode::<SchedulerState>(doc).unwrap(), state);
}

fn check_store_contract(store: &dyn DocumentStore) {
    assert!(store.load().unwrap().is_none());
    let CasOutcome::Stored(r1) = store.compare_and_swap(None, b"{\"a\":1}").unwrap() else {
        panic!("first create must win");
    };
    assert!(matches!(
        store.compare_and_swap(None, b"{}").unwrap(),
        CasOutcome::Conflict { current: Some(r) } if r == r1
    ));
    let CasOutcome::Stored(r2) = store.compare_and_swap(Some(r1), b"{\"a\":2}").unwrap() else {
        panic!("a CAS at the current revision must win");
    };
    assert_ne!(r1, r2);
    assert!(matches!(
        store.compare_and_swap(Some(r1), b"{\"a\":3}").unwrap(),
        CasOutcome::Conflict { current: Some(r) } if r == r2
    ));
    let stored = store.load().unwrap().unwrap();
    assert_eq!(
        (stored.revision, stored.bytes.as_slice()),
        (r2, &b"{\"a\":2}"[..])
    );
}

#[test]
fn memory_and_file_stores_keep_the_compare_and_swap_contract() {
    check_store_contract(&MemoryDocumentStore::new());
    let dir = tempfile::tempdir().unwrap();
    let store = FileDocumentStore::new(dir.path().join("nested/state.json"));
    check_store_contract(&store);
    // Atomic replace leaves no temporary file behind; the lock file stays.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"state.json.lock".to_owned()));
}

#[test]
fn load_migrates_once_and_stores_the_result_then_loads_it_as_current() {
    let m = scheduler_migrator();
    let store = Arc::new(MemoryDocumentStore::with_document(
        br#"{"jobs": ["a"]}"#.to_vec(),
    ));
    let first = m.load(&store).unwrap().unwrap();
    assert!(
        matches!(first.outcome, LoadOutcome::Migrated { from: 1, to: 4, ref steps } if steps.len() == 3)
    );
    let second = m.load(&store).unwrap().unwrap();
    assert_eq!(second.outcome, LoadOutcome::Current { version: 4 });
    assert_eq!(
        (second.document, second.revision),
        (first.document, first.revision)
    );

    // Saving goes through the same CAS: a stale revision loses.
    let mut doc = m.load(&store).unwrap().unwrap();
    doc.document["paused"] = json!(true);
    assert!(matches!(
        m.save(&store, Some(doc.revision), &doc.document).unwrap(),
        CasOutcome::Stored(_)
    ));
    assert!(matches!(
        m.save(&store, Some(doc.revision), &doc.document).unwrap(),
        CasOutcome::Conflict { .. }
    ));

    // Nothing stored: load says so, load_or_init creates.
    let empty = MemoryDocumentStore::new();
    assert!(m.load(&empty).unwrap().is_none());
    let created = m.load_or_init(&empty, || json!({"paused": false})).unwrap();
    assert_eq!(created.outcome, LoadOutcome::Created { version: 4 });
    assert_eq!(created.document["schema"], 4);

    // A newer stored document is refused and left as it is.
    let newer = MemoryDocumentStore::with_document(br#"{"schema": 9}"#.to_vec());
    assert!(matches!(
        m.load(&newer),
        Err(DocumentError::NewerThanSoftware { found: 9, .. })
    ));
    assert_eq!(newer.bytes().unwrap(), br#"{"schema": 9}"#);
    // Garbage is reported with its location.
    let garbage = MemoryDocumentStore::with_document(b"not json".to_vec());
    assert!(matches!(m.load(&garbage), Err(DocumentError::Parse { .. })));
}

/// A migration step that leaves a trace in the document, so applying it twice to the
/// stored document would show.
fn race_migrator() -> DocumentMigrator {
    DocumentMigrator::builder("shared-state")
        .migration(0, 1, |mut doc| {
            let applied = doc["applied"].as_array().cloned().unwrap_or_default();
            let mut applied = applied;
            applied.push(json!("v0->v1"));
            doc["applied"] = Value::Array(applied);
            Ok(doc)
        })
        .migration(1, 2, |mut doc| {
            doc["applied"]
                .as_array_mut()
                .ok_or("no trace of the first step")?
                .push(json!("v1->v2"));
            Ok(doc)
        })
        .build()
        .unwrap()
}

const RACE_DOC: &str = "LAYOUT_TEST_RACE_DOCUMENT";
const RACE_BARRIER: &str = "LAYOUT_TEST_RACE_BARRIER";
/// A safety bound for a hung child, not a timing assertion.
const BOUND: std::time::Duration = std::time::Duration::from_secs(120);

/// The child's half: wait at the barrier, load (and maybe migrate), report the outcome.
fn race_child() {
    let store = FileDocumentStore::new(std::env::var(RACE_DOC).unwrap());
    let barrier = std::fs::File::open(std::env::var(RACE_BARRIER).unwrap()).unwrap();
    report_step("ready");
    // The parent holds an exclusive lock on the barrier file: every child blocks here
    // until the parent releases it, and then they all go at once.
    barrier.lock_shared().unwrap();
    let loaded = race_migrator().load(&store).unwrap().unwrap();
    let outcome = match loaded.outcome {
        LoadOutcome::Migrated { .. } => "migrated",
        LoadOutcome::Current { .. } => "current",
        LoadOutcome::Created { .. } => "created",
    };
    report_step(format!(
        "{outcome} {}",
        serde_json::to_string(&loaded.document).unwrap()
    ));
}

#[test]
fn eight_processes_sharing_a_file_store_migrate_exactly_once() {
    const PROCESSES: usize = 8;
    if child_role().as_deref() == Some("loader") {
        race_child();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(&path, br#"{"workers": 3}"#).unwrap();
    let barrier_path = dir.path().join("barrier");
    let barrier = std::fs::File::create(&barrier_path).unwrap();
    barrier.lock().unwrap();
    let mut children: Vec<ChildProcess> = (0..PROCESSES)
        .map(|_| {
            ChildCommand::new(
                "migration_document::eight_processes_sharing_a_file_store_migrate_exactly_once",
                "loader",
            )
            .env(RACE_DOC, &path)
            .env(RACE_BARRIER, &barrier_path)
            .spawn()
            .unwrap()
        })
        .collect();
    // Every child is started and at the barrier; then all are released at once.
    for c in &mut children {
        c.wait_for_step("ready", BOUND).unwrap();
    }
    barrier.unlock().unwrap();
    let mut outcomes = Vec::new();
    let mut documents = Vec::new();
    for c in &mut children {
        let output = c.wait(BOUND).unwrap();
        assert!(output.success(), "a child failed: {}", output.stderr);
        let report = output.steps.last().expect("the child reports its outcome");
        let (outcome, document) = report.split_once(' ').unwrap();
        outcomes.push(outcome.to_owned());
        documents.push(serde_json::from_str::<Value>(document).unwrap());
    }
    let migrated = outcomes.iter().filter(|o| *o == "migrated").count();
    let current = outcomes.iter().filter(|o| *o == "current").count();
    assert_eq!((migrated, current), (1, PROCESSES - 1), "{outcomes:?}");
    let expected = json!({"workers": 3, "applied": ["v0->v1", "v1->v2"], "version": 2});
    for d in &documents {
        assert_eq!(d, &expected);
    }
    let stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        stored, expected,
        "the chain was applied once to the stored document"
    );
}
