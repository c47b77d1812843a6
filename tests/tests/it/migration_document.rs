//! Versioned documents: the chain, the way back, the stores, and the race of processes
//! sharing one store.

use std::sync::Arc;

use layout_core::crash_point;
use layout_core::migration::{
    ChainProblem, DocumentCasOutcome, DocumentError, DocumentMigration, DocumentMigrator,
    DocumentStore, FileDocumentStore, Freshness, LoadOutcome, MemoryDocumentStore,
};
use layout_core::migration::{
    CRASH_BEFORE_STORE, CRASH_STEP_APPLIED, CRASH_STORED, DOCUMENT_CRASH_POINTS as CRASH_POINTS,
};
use layout_core::StepError;
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

/// (The compare-and-swap contract itself: `layout_testkit::conformance::document_store`,
/// run in `conformance.rs`.)
#[test]
fn the_file_store_replaces_atomically_and_leaves_only_the_document_and_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileDocumentStore::new(dir.path().join("nested/state.json"));
    let DocumentCasOutcome::Stored(first) = store.compare_and_swap(None, b"{\"a\":1}").unwrap()
    else {
        panic!("the first create must win");
    };
    assert!(matches!(
        store.compare_and_swap(Some(first), b"{\"a\":2}").unwrap(),
        DocumentCasOutcome::Stored(_)
    ));
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
        DocumentCasOutcome::Stored(_)
    ));
    assert!(matches!(
        m.save(&store, Some(doc.revision), &doc.document).unwrap(),
        DocumentCasOutcome::Conflict { .. }
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

/// A fenced document on a store that can watch (memory): a peer's write is a change to
/// reload, a newer release's migration a refusal, learned without reading the store.
#[test]
fn a_fenced_document_tells_a_peers_write_from_a_newer_releases_migration() {
    use layout_tests::shared_document::{release_1, release_2};
    let store: Arc<dyn DocumentStore> = Arc::new(MemoryDocumentStore::with_document(
        br#"{"jobs": ["a"]}"#.to_vec(),
    ));
    let old_release = release_1();
    let mut old = old_release.open(Arc::clone(&store)).unwrap().unwrap();
    assert!(old.is_watched());
    assert_eq!(old.loaded_version(), 2);
    assert!(matches!(
        old.loaded().outcome,
        LoadOutcome::Migrated { from: 1, to: 2, .. }
    ));

    // A peer of the same release writes: the old holder's save conflicts (no refusal),
    // and a read reloads the peer's document.
    let mut peer = old_release.open(Arc::clone(&store)).unwrap().unwrap();
    let mut doc = peer.document().clone();
    doc["queues"]["default"] = json!(["a", "b"]);
    assert!(matches!(
        peer.save(doc).unwrap(),
        DocumentCasOutcome::Stored(_)
    ));
    assert!(old.is_stale());
    assert!(matches!(
        old.check().unwrap(),
        Freshness::ChangedByPeer { .. }
    ));
    assert!(matches!(
        old.save(old.document().clone()).unwrap(),
        DocumentCasOutcome::Conflict { .. }
    ));
    assert_eq!(old.read().unwrap()["queues"]["default"], json!(["a", "b"]));
    assert_eq!(old.check().unwrap(), Freshness::Current);

    // A newer release migrates: known at once, every later write and read refused, and
    // the newer document stays as it was.
    let new_release = release_2();
    let new = new_release.open(Arc::clone(&store)).unwrap().unwrap();
    assert!(matches!(
        new.loaded().outcome,
        LoadOutcome::Migrated { from: 2, to: 3, .. }
    ));
    assert_eq!(
        old.check().unwrap(),
        Freshness::MigratedByNewerRelease { stored_version: 3 }
    );
    let err = old.save(old.document().clone()).unwrap_err();
    assert!(
        matches!(
            err,
            DocumentError::MigratedByNewerRelease {
                loaded_version: 2,
                stored_version: 3,
                our_version: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "migrated the document to version 3 after this process loaded it at version 2"
        ),
        "{err}"
    );
    assert!(matches!(
        old.read(),
        Err(DocumentError::MigratedByNewerRelease { .. })
    ));
    assert!(matches!(
        old.reload(),
        Err(DocumentError::MigratedByNewerRelease {
            stored_version: 3,
            ..
        })
    ));
    assert_eq!(store.load().unwrap().unwrap().revision, new.revision());
}

/// The file store cannot watch: a fenced document reads its revision on every check,
/// read and save, so the refusal comes before the write all the same.
#[test]
fn a_fenced_document_on_the_file_store_checks_the_revision_on_every_read_and_save() {
    use layout_tests::shared_document::{release_1, release_2};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(&path, br#"{"jobs": ["a"]}"#).unwrap();
    let old_release = release_1();
    let mut old = old_release
        .open(Arc::new(FileDocumentStore::new(&path)))
        .unwrap()
        .unwrap();
    assert!(!old.is_watched());
    assert_eq!(old.check().unwrap(), Freshness::Current);

    let new_release = release_2();
    let new = new_release
        .open(Arc::new(FileDocumentStore::new(&path)))
        .unwrap()
        .unwrap();
    let migrated = std::fs::read(&path).unwrap();
    assert!(matches!(
        new.loaded().outcome,
        LoadOutcome::Migrated { from: 2, to: 3, .. }
    ));
    assert_eq!(
        old.wait_for_change(BOUND).unwrap(),
        Freshness::MigratedByNewerRelease { stored_version: 3 }
    );
    assert!(matches!(
        old.read(),
        Err(DocumentError::MigratedByNewerRelease { .. })
    ));
    let err = old.save(old.document().clone()).unwrap_err();
    assert!(
        matches!(
            err,
            DocumentError::MigratedByNewerRelease {
                loaded_version: 2,
                stored_version: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        migrated,
        "nothing written over it"
    );
}

#[test]
fn two_releases_of_a_scheduler_on_one_file_document_the_older_refuses_its_next_write() {
    if layout_tests::shared_document::play_child() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = layout_tests::shared_document::Shared::File(dir.path().join("state.json"));
    layout_tests::shared_document::run_two_releases(
        "migration_document::two_releases_of_a_scheduler_on_one_file_document_the_older_refuses_its_next_write",
        &shared,
    );
}

const CRASH_AT: &str = "LAYOUT_TEST_DOCUMENT_CRASH_AT";

/// A child that loads (and migrates) the file document, reporting every crash point it
/// passes; with `CRASH_AT=<point>:<hit>` it stops at that pass until it is killed.
fn crash_child() {
    let store = FileDocumentStore::new(std::env::var(RACE_DOC).unwrap());
    let crash_at = std::env::var(CRASH_AT).ok().map(|v| {
        let (point, hit) = v.rsplit_once(':').unwrap();
        (point.to_owned(), hit.parse::<usize>().unwrap())
    });
    let hits = std::sync::Mutex::new(Vec::<&'static str>::new());
    let _guard = crash_point::observe(move |name| {
        let hit = {
            let mut hits = hits.lock().unwrap();
            hits.push(name);
            hits.iter().filter(|n| **n == name).count()
        };
        report_step(format!("point {name}:{hit}"));
        if crash_at
            .as_ref()
            .is_some_and(|(p, h)| p == name && *h == hit)
        {
            report_step("crashing");
            layout_testkit::crash::block_until_killed();
        }
    })
    .unwrap();
    let loaded = race_migrator().load(&store).unwrap().unwrap();
    report_step(format!(
        "loaded {}",
        serde_json::to_string(&loaded.document).unwrap()
    ));
}

/// A process killed (SIGKILL) at each crash point of a document migration (every step applied,
/// before the compare-and-swap, after it) leaves a document that the next start loads
/// or migrates with every step applied exactly once.
#[test]
fn a_document_migration_killed_at_each_crash_point_is_finished_by_the_next_start() {
    const TEST: &str =
        "migration_document::a_document_migration_killed_at_each_crash_point_is_finished_by_the_next_start";
    if child_role().as_deref() == Some("crash-loader") {
        crash_child();
        return;
    }
    let old = br#"{"workers": 3}"#;
    let expected = json!({"workers": 3, "applied": ["v0->v1", "v1->v2"], "version": 2});
    let dir = tempfile::tempdir().unwrap();

    // A crash-free run discovers the crash points passed.
    let path = dir.path().join("discover.json");
    std::fs::write(&path, old).unwrap();
    let output = ChildCommand::new(TEST, "crash-loader")
        .env(RACE_DOC, &path)
        .spawn()
        .unwrap()
        .wait(BOUND)
        .unwrap();
    assert!(output.success(), "{output:?}");
    let points: Vec<String> = output
        .steps
        .iter()
        .filter_map(|s| s.strip_prefix("point "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        points,
        [
            format!("{CRASH_STEP_APPLIED}:1"),
            format!("{CRASH_STEP_APPLIED}:2"),
            format!("{CRASH_BEFORE_STORE}:1"),
            format!("{CRASH_STORED}:1"),
        ]
    );
    assert!(CRASH_POINTS
        .iter()
        .all(|p| points.iter().any(|q| q.starts_with(&format!("{p}:")))));

    for point in &points {
        let path = dir
            .path()
            .join(format!("{}.json", point.replace([':'], "-")));
        std::fs::write(&path, old).unwrap();
        let mut child = ChildCommand::new(TEST, "crash-loader")
            .env(RACE_DOC, &path)
            .env(CRASH_AT, point)
            .spawn()
            .unwrap();
        child.wait_for_step("crashing", BOUND).unwrap();
        child.kill().unwrap();
        assert!(child.wait(BOUND).unwrap().was_killed());
        // The next start.
        let stored_before: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let loaded = race_migrator()
            .load(&FileDocumentStore::new(&path))
            .unwrap()
            .unwrap();
        assert_eq!(loaded.document, expected, "after a crash at {point}");
        let stored: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(stored, expected, "after a crash at {point}");
        if point.starts_with(CRASH_STORED) {
            assert_eq!(
                stored_before, expected,
                "stored before the crash at {point}"
            );
            assert_eq!(loaded.outcome, LoadOutcome::Current { version: 2 });
        } else {
            assert_eq!(
                stored_before,
                json!({"workers": 3}),
                "nothing stored before {point}"
            );
            assert!(matches!(
                loaded.outcome,
                LoadOutcome::Migrated { from: 0, to: 2, .. }
            ));
        }
    }
}
