//! The shared-document story with processes of two releases: schedulers of an
//! older release share one document; schedulers of a newer release are started (the
//! first migrates, the others load its result), and an older scheduler still running
//! learns of the migration before its next write and has that write refused, naming both
//! versions. Run on any shared document store (the file store in `it`, a real etcd in
//! `etcd`): the children open the store the parent names in their environment.

// Test scenarios: a failed unwrap is a failed test, and every failure is a panic.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "etcd")]
use layout_core::etcd::{EtcdConnection, EtcdOptions};
#[cfg(feature = "etcd")]
use layout_core::migration::EtcdDocumentStore;
use layout_core::migration::{
    DocumentCasOutcome, DocumentError, DocumentMigration, DocumentMigrator, DocumentStore,
    FileDocumentStore, Freshness, LoadOutcome,
};
use layout_testkit::crash::{report_step, ChildCommand, ChildProcess};
use serde_json::{json, Value};

/// A safety bound for every wait (never a timing assertion).
pub const BOUND: Duration = Duration::from_secs(60);

const STORE_ENV: &str = "LAYOUT_FENCED_STORE";

/// The role of a scheduler of the older release (it writes version 2).
pub const OLD_ROLE: &str = "scheduler-release-1";
/// The role prefix of a scheduler of the newer release (it writes version 3).
pub const NEW_ROLE: &str = "scheduler-release-2";

/// Where the shared document lives, as the parent passes it to its children.
#[derive(Debug, Clone)]
pub enum Shared {
    /// A file.
    File(std::path::PathBuf),
    /// A key on etcd: endpoint and prefix.
    #[cfg(feature = "etcd")]
    Etcd(String, String),
}

impl Shared {
    fn to_env(&self) -> String {
        match self {
            Self::File(path) => format!("file {}", path.display()),
            #[cfg(feature = "etcd")]
            Self::Etcd(endpoint, prefix) => format!("etcd {endpoint} {prefix}"),
        }
    }

    fn from_env() -> Self {
        let value = std::env::var(STORE_ENV).unwrap();
        let mut words = value.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("file"), Some(path), None) => Self::File(path.into()),
            #[cfg(feature = "etcd")]
            (Some("etcd"), Some(endpoint), Some(prefix)) => {
                Self::Etcd(endpoint.to_owned(), prefix.to_owned())
            }
            _ => panic!("bad {STORE_ENV}: {value}"),
        }
    }

    /// Opens the document store.
    pub fn open(&self) -> Arc<dyn DocumentStore> {
        match self {
            Self::File(path) => Arc::new(FileDocumentStore::new(path)),
            #[cfg(feature = "etcd")]
            Self::Etcd(endpoint, prefix) => {
                let etcd =
                    EtcdConnection::connect(EtcdOptions::new([endpoint.clone()], prefix.clone()))
                        .unwrap();
                Arc::new(EtcdDocumentStore::new(Arc::new(etcd), "scheduler-state"))
            }
        }
    }
}

/// The older release: the document's versions 1 (unversioned) and 2.
pub fn release_1() -> DocumentMigrator {
    DocumentMigrator::builder("scheduler-state")
        .base_version(1)
        .step(DocumentMigration::new(1, 2, |mut doc| {
            doc["queues"] = json!({ "default": doc["jobs"].take() });
            doc.as_object_mut().ok_or("not an object")?.remove("jobs");
            Ok(doc)
        }))
        .build()
        .unwrap()
}

/// The newer release: version 3 adds a pause flag per queue.
pub fn release_2() -> DocumentMigrator {
    DocumentMigrator::builder("scheduler-state")
        .base_version(1)
        .step(DocumentMigration::new(1, 2, |mut doc| {
            doc["queues"] = json!({ "default": doc["jobs"].take() });
            doc.as_object_mut().ok_or("not an object")?.remove("jobs");
            Ok(doc)
        }))
        .step(DocumentMigration::new(2, 3, |mut doc| {
            doc["paused"] = json!({ "default": false });
            Ok(doc)
        }))
        .build()
        .unwrap()
}

fn outcome_word(outcome: &LoadOutcome) -> &'static str {
    match outcome {
        LoadOutcome::Migrated { .. } => "migrated",
        LoadOutcome::Current { .. } => "current",
        LoadOutcome::Created { .. } => "created",
    }
}

fn with_job(document: &Value, job: &str) -> Value {
    let mut document = document.clone();
    document["queues"]["default"]
        .as_array_mut()
        .unwrap()
        .push(json!(job));
    document
}

/// A scheduler of the older release: opens the document, schedules one job (a write),
/// then waits for a change without writing, and tries its next write.
pub fn old_scheduler_child() {
    let store = Shared::from_env().open();
    let migrator = release_1();
    let mut shared = migrator.open(store).unwrap().unwrap();
    report_step(format!(
        "opened {} at version {}",
        outcome_word(&shared.loaded().outcome),
        shared.loaded_version()
    ));
    report_step(format!("watched {}", shared.is_watched()));
    let next = with_job(shared.document(), "old-1");
    assert!(matches!(
        shared.save(next).unwrap(),
        DocumentCasOutcome::Stored(_)
    ));
    report_step("saved old-1");
    let learned = shared.wait_for_change(BOUND).unwrap();
    match learned {
        Freshness::MigratedByNewerRelease { stored_version } => {
            report_step(format!("learned migrated to {stored_version}"));
        }
        other => panic!("expected a newer release's migration, learned {other:?}"),
    }
    let next = with_job(shared.document(), "old-2");
    match shared.save(next) {
        Err(e @ DocumentError::MigratedByNewerRelease { .. }) => {
            report_step(format!("refused {e}"));
        }
        other => panic!("the write must be refused, got {other:?}"),
    }
}

/// A scheduler of the newer release: opens the document (migrating it, or loading the
/// migration of a peer) and schedules one job.
pub fn new_scheduler_child() {
    let store = Shared::from_env().open();
    let migrator = release_2();
    let mut shared = migrator.open(store).unwrap().unwrap();
    report_step(format!("opened {}", outcome_word(&shared.loaded().outcome)));
    let role = layout_testkit::crash::child_role().unwrap();
    loop {
        let next = with_job(shared.document(), &role);
        match shared.save(next).unwrap() {
            DocumentCasOutcome::Stored(_) => break,
            DocumentCasOutcome::Conflict { .. } => shared.reload().unwrap(),
        }
    }
    report_step("saved");
}

/// Runs the story on `shared` (which holds nothing yet); `test` is the calling test's
/// name (its children re-run it).
pub fn run_two_releases(test: &str, shared: &Shared) {
    // The document as the release before versioning wrote it: version 1.
    let store = shared.open();
    assert!(matches!(
        store
            .compare_and_swap(None, br#"{"jobs": ["seed"]}"#)
            .unwrap(),
        DocumentCasOutcome::Stored(_)
    ));
    let spawn = |role: &str| -> ChildProcess {
        ChildCommand::new(test, role)
            .env(STORE_ENV, shared.to_env())
            .spawn()
            .unwrap()
    };
    let mut old = spawn(OLD_ROLE);
    old.wait_for_step("opened migrated at version 2", BOUND)
        .unwrap();
    old.wait_for_step("saved old-1", BOUND).unwrap();
    // The etcd store is watched; the file store is read on every check instead.
    let watched = !matches!(shared, Shared::File(_));
    assert!(
        old.steps_seen().contains(&format!("watched {watched}")),
        "{:?}",
        old.steps_seen()
    );

    // Restart the schedulers on the newer release: the first migrates, the other loads
    // its result; both write.
    let mut new: Vec<ChildProcess> = (0..2).map(|i| spawn(&format!("{NEW_ROLE}-{i}"))).collect();
    let mut words = Vec::new();
    for child in &mut new {
        let output = child.wait(BOUND).unwrap();
        assert!(output.success(), "{output:?}");
        words.extend(
            output
                .steps
                .iter()
                .filter_map(|s| s.strip_prefix("opened "))
                .map(str::to_owned),
        );
    }
    words.sort();
    assert_eq!(words, ["current", "migrated"], "exactly one migrates");

    // The older scheduler learned of it without writing, and its next write is refused,
    // naming both versions.
    let output = old.wait(BOUND).unwrap();
    assert!(output.success(), "{output:?}");
    assert!(
        output.steps.iter().any(|s| s == "learned migrated to 3"),
        "{:?}",
        output.steps
    );
    let refusal = output
        .steps
        .iter()
        .find_map(|s| s.strip_prefix("refused "))
        .unwrap_or_else(|| panic!("no refusal: {:?}", output.steps));
    assert!(
        refusal.contains("to version 3") && refusal.contains("at version 2"),
        "{refusal}"
    );

    // What is stored: the newer release's document with every write but the refused
    // one.
    let loaded = release_2().load(&*store).unwrap().unwrap();
    assert_eq!(loaded.outcome, LoadOutcome::Current { version: 3 });
    let mut jobs: Vec<String> = loaded.document["queues"]["default"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect();
    jobs.sort();
    let mut expected = vec![
        "old-1".to_owned(),
        "seed".to_owned(),
        format!("{NEW_ROLE}-0"),
        format!("{NEW_ROLE}-1"),
    ];
    expected.sort();
    assert_eq!(jobs, expected);
    assert_eq!(loaded.document["paused"], json!({ "default": false }));
}

/// Plays this process's child role of [`run_two_releases`], if it has one: `true` when
/// it did (the test then returns).
pub fn play_child() -> bool {
    match layout_testkit::crash::child_role().as_deref() {
        Some(OLD_ROLE) => old_scheduler_child(),
        Some(role) if role.starts_with(NEW_ROLE) => new_scheduler_child(),
        Some(role) => panic!("unknown role {role}"),
        None => return false,
    }
    true
}
