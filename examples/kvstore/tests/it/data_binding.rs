//! Data bound to its layout state (issue 15, items 1, 2 and 6): missing, empty, foreign
//! or truncated data next to an existing `VERSION`, and a `VERSION` older than the data,
//! are each refused at start-up by the real `kvstore` binary, with a message naming both
//! sides, an ordinary failure exit (never a panic's 101), and nothing written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kvstore::{KvFeature, KvNode, KvNodeConfig, DB_FILE_NAME};
use layout_core::storage::VERSION_FILE_NAME;
use layout_core::{FileStorage, LayoutFeature, LayoutStorage, StartIntent};

use crate::support::{fresh_prefinalized, node};

fn version_path(dir: &Path) -> PathBuf {
    dir.join("layout").join(VERSION_FILE_NAME)
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("data").join(DB_FILE_NAME)
}

/// A node that started once, wrote a key and stopped.
fn seeded() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    node.store().put("k", "v").expect("put");
    node.shutdown().expect("shutdown");
    dir
}

/// Starts the binary on `dir`; its stdin is a pipe closed at once, so a start that
/// (wrongly) succeeds stops by itself.
fn start_binary(dir: &Path) -> Output {
    let mut child = Command::new(crate::support::kvstore_bin())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvstore");
    drop(child.stdin.take());
    child.wait_with_output().expect("wait for kvstore")
}

/// Starts the binary on `dir`, expects a refusal (exit 1) whose message holds every one of
/// `parts`, and that `VERSION` and the database file (if any) are byte-for-byte what they
/// were.
fn assert_refused(dir: &Path, parts: &[&str]) -> String {
    let version = fs::read(version_path(dir)).expect("VERSION");
    let data = fs::read(db_path(dir)).ok();
    let output = start_binary(dir);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "kvstore must refuse with exit 1 (101 is a panic); stderr:\n{stderr}"
    );
    for part in parts {
        assert!(
            stderr.contains(part),
            "{part:?} missing from the refusal:\n{stderr}"
        );
    }
    assert_eq!(
        fs::read(version_path(dir)).expect("VERSION"),
        version,
        "a refused start must not write VERSION"
    );
    assert_eq!(
        fs::read(db_path(dir)).ok(),
        data,
        "a refused start must not create or write the database"
    );
    stderr
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn refuses_to_start_when_the_database_file_is_deleted() {
    let dir = seeded();
    fs::remove_file(db_path(dir.path())).expect("rm");
    assert_refused(
        dir.path(),
        &[
            &shown(&db_path(dir.path())),
            &shown(&version_path(dir.path())),
            "does not exist",
        ],
    );
    assert!(!db_path(dir.path()).exists(), "no new database was created");
}

#[test]
fn refuses_to_start_when_the_database_file_is_empty() {
    let dir = seeded();
    fs::File::create(db_path(dir.path())).expect("truncate");
    assert_refused(
        dir.path(),
        &[
            &shown(&db_path(dir.path())),
            &shown(&version_path(dir.path())),
            "is empty",
        ],
    );
    assert_eq!(fs::metadata(db_path(dir.path())).expect("db").len(), 0);
}

#[test]
fn refuses_to_start_when_the_data_directory_is_missing() {
    let dir = seeded();
    fs::remove_dir_all(dir.path().join("data")).expect("rm -r data");
    assert_refused(
        dir.path(),
        &[
            &shown(&db_path(dir.path())),
            &shown(&version_path(dir.path())),
            "does not exist",
        ],
    );
    assert!(
        !dir.path().join("data").exists(),
        "no data directory was created"
    );
}

#[test]
fn refuses_another_nodes_database() {
    let dir = seeded();
    let other = seeded();
    fs::copy(db_path(other.path()), db_path(dir.path())).expect("cp");
    let ours = FileStorage::new(dir.path().join("layout"))
        .load()
        .expect("load")
        .expect("state")
        .data_id
        .expect("data id");
    let theirs = FileStorage::new(other.path().join("layout"))
        .load()
        .expect("load")
        .expect("state")
        .data_id
        .expect("data id");
    assert_refused(
        dir.path(),
        &[
            &shown(&db_path(dir.path())),
            &shown(&version_path(dir.path())),
            &ours.to_string(),
            &theirs.to_string(),
        ],
    );
}

#[test]
fn refuses_a_version_file_restored_from_before_finalization() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = fresh_prefinalized(dir.path(), KvFeature::latest());
    node.store().put("before", "v").expect("put");
    let old_version = fs::read(version_path(dir.path())).expect("VERSION");
    node.finalizer()
        .finalize("test", node.store())
        .expect("finalize");
    node.store().put("after", "v").expect("put");
    node.shutdown().expect("shutdown");
    fs::write(version_path(dir.path()), &old_version).expect("restore the old VERSION");
    let latest = KvFeature::latest().layout_version();
    assert_refused(
        dir.path(),
        &[
            &shown(&db_path(dir.path())),
            &shown(&version_path(dir.path())),
            "records metadata layout version 0",
            &format!("written at metadata layout version {latest}"),
        ],
    );
}

#[test]
fn a_truncated_database_is_a_clear_refusal_not_a_panic() {
    let dir = seeded();
    let db = db_path(dir.path());
    let len = fs::metadata(&db).expect("db").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    assert_refused(dir.path(), &[&shown(&db), "is damaged"]);
    // The same through the public API: an error, not a panic.
    let Err(err) = KvNode::start(KvNodeConfig::new(dir.path())) else {
        panic!("a truncated database must be refused");
    };
    assert!(err.to_string().contains(&shown(&db)), "{err}");
}

#[test]
fn garbage_in_the_database_file_is_a_clear_refusal() {
    let dir = seeded();
    let db = db_path(dir.path());
    fs::write(&db, vec![0xab_u8; 8192]).expect("overwrite");
    assert_refused(dir.path(), &[&shown(&db), "is damaged"]);
}

#[test]
fn a_fresh_install_starts_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_binary(dir.path());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(db_path(dir.path()).is_file());
    let again = start_binary(dir.path());
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// A store and a VERSION from before data bindings: both get an id on the first start,
/// the data is kept, and later starts check it.
#[test]
fn a_store_from_before_bindings_is_adopted() {
    let dir = seeded();
    {
        let db = redb::Database::open(db_path(dir.path())).expect("open");
        let txn = db.begin_write().expect("write");
        let binding: redb::TableDefinition<'_, &str, &str> =
            redb::TableDefinition::new(layout_core::binding::redb::TABLE_NAME);
        txn.delete_table(binding).expect("drop the binding table");
        txn.commit().expect("commit");
    }
    let storage = FileStorage::new(dir.path().join("layout"));
    let mut state = storage.load().expect("load").expect("state");
    state.data_id = None;
    storage.store(&state).expect("store");

    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let id = node.manager().data_id().expect("adopted a data id");
    assert_eq!(
        node.store().get("k").expect("get").expect("kept").value,
        "v"
    );
    node.shutdown().expect("shutdown");
    let again = node_restarts(dir.path());
    assert_eq!(again, Some(id));
    // And now the binding is checked: a foreign store is refused.
    let other = seeded();
    fs::copy(db_path(other.path()), db_path(dir.path())).expect("cp");
    assert_refused(dir.path(), &[&id.to_string()]);
}

fn node_restarts(dir: &Path) -> Option<layout_core::state::DataId> {
    let node = node(dir, KvFeature::latest(), StartIntent::Normal);
    let id = node.manager().data_id();
    node.shutdown().expect("shutdown");
    id
}
