//! The durable-file routine (`layout_core::durable`) failing at each of its steps.
//!
//! Each test runs the failing call in a child process, where one failpoint of
//! `durable::FAILPOINTS` is configured to `return` (an injected I/O error at that step);
//! the child reports the error it got. The parent then checks what the failure left on
//! disk and retries, with no failpoint configured, which must succeed.

use std::fs;
use std::path::{Path, PathBuf};

use layout_core::durable::{self, Step};
use layout_testkit::crash::{child_role, report_step, ChildCommand};

use crate::common::{child_root, BOUND, ROOT_ENV};

/// The failpoint a child configures.
const FAILPOINT_ENV: &str = "LAYOUT_TEST_DURABLE_FAILPOINT";

/// The file every test replaces or removes, in its directory.
fn target(root: &Path) -> PathBuf {
    root.join("state")
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// What a child's failed call reported.
#[derive(Debug)]
struct Failure {
    step: String,
    replaced: bool,
    path: String,
    message: String,
}

/// The child's half: configures the failpoint, runs `op`, reports the error.
fn child(op: fn(&Path) -> Result<(), durable::Error>) {
    let root = child_root();
    let failpoint = std::env::var(FAILPOINT_ENV).unwrap();
    fail::cfg(&failpoint, "return").unwrap();
    match op(&target(&root)) {
        Ok(()) => report_step("ok"),
        Err(e) => report_step(format!(
            "error\t{}\t{}\t{}\t{e}",
            e.step(),
            e.replaced(),
            e.path().display()
        )),
    }
}

/// Runs the test `test` as a child with `failpoint` configured, in `root`; returns what
/// its call reported.
fn run_child(test: &str, root: &Path, failpoint: &str) -> Failure {
    let mut child = ChildCommand::new(test, "durable")
        .env(ROOT_ENV, root)
        .env(FAILPOINT_ENV, failpoint)
        .spawn()
        .unwrap();
    let output = child.wait(BOUND).unwrap();
    assert!(output.success(), "{output:?}");
    let line = output
        .steps
        .iter()
        .find(|s| s.starts_with("error\t"))
        .unwrap_or_else(|| panic!("the call did not fail at {failpoint}: {output:?}"));
    let fields: Vec<&str> = line.splitn(5, '\t').collect();
    Failure {
        step: fields[1].to_owned(),
        replaced: fields[2] == "true",
        path: fields[3].to_owned(),
        message: fields[4].to_owned(),
    }
}

fn replace_with_new(path: &Path) -> Result<(), durable::Error> {
    durable::replace(path, b"new content\n").map(drop)
}

/// A replace failing at `failpoint`: the error names the step and the file; before the
/// rename the old content is intact, after it the new one is in place (and the error
/// says so); no temporary file is left; a retry succeeds.
fn replace_fails_at(test: &str, failpoint: &str, step: Step) {
    if child_role().is_some() {
        child(replace_with_new);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = target(dir.path());
    durable::replace(&path, b"old content\n").unwrap();

    let failure = run_child(test, dir.path(), failpoint);
    assert_eq!(failure.step, step.as_str(), "{failure:?}");
    assert_eq!(failure.path, path.display().to_string(), "{failure:?}");
    assert!(failure.message.contains(failpoint), "{failure:?}");
    assert!(
        failure.message.contains(step.as_str()),
        "the message does not name the step: {failure:?}"
    );
    let after_rename = step == Step::SyncDirectory;
    assert_eq!(failure.replaced, after_rename, "{failure:?}");
    let expected: &[u8] = if after_rename {
        // The rename happened; only its durability is unknown, and the error says so.
        assert!(failure.message.contains("retry"), "{failure:?}");
        b"new content\n"
    } else {
        b"old content\n"
    };
    assert_eq!(fs::read(&path).unwrap(), expected);
    assert_eq!(names(dir.path()), ["state"], "a temporary file was left");

    // No failpoint in this process: a retry succeeds.
    durable::replace(&path, b"retried\n").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"retried\n");
    assert_eq!(names(dir.path()), ["state"]);
}

#[test]
fn a_replace_failing_to_create_its_temporary_file_leaves_the_old_file() {
    replace_fails_at(
        &layout_testkit::test_name!(),
        durable::FAIL_CREATE_TEMP,
        Step::CreateTemp,
    );
}

#[test]
fn a_replace_failing_to_write_leaves_the_old_file_and_no_temporary_file() {
    replace_fails_at(
        &layout_testkit::test_name!(),
        durable::FAIL_WRITE,
        Step::Write,
    );
}

#[test]
fn a_replace_whose_file_fsync_fails_leaves_the_old_file_and_no_temporary_file() {
    replace_fails_at(
        &layout_testkit::test_name!(),
        durable::FAIL_SYNC_FILE,
        Step::SyncFile,
    );
}

#[test]
fn a_replace_whose_rename_fails_leaves_the_old_file_and_no_temporary_file() {
    replace_fails_at(
        &layout_testkit::test_name!(),
        durable::FAIL_RENAME,
        Step::Rename,
    );
}

#[test]
fn a_replace_whose_directory_fsync_fails_reports_it_with_the_new_file_in_place() {
    replace_fails_at(
        &layout_testkit::test_name!(),
        durable::FAIL_SYNC_DIRECTORY,
        Step::SyncDirectory,
    );
}

#[test]
fn a_remove_whose_directory_fsync_fails_reports_it_and_a_retry_succeeds() {
    if child_role().is_some() {
        child(durable::remove);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = target(dir.path());
    durable::replace(&path, b"old content\n").unwrap();

    let failure = run_child(
        &layout_testkit::test_name!(),
        dir.path(),
        durable::FAIL_REMOVE_SYNC_DIRECTORY,
    );
    assert_eq!(failure.step, Step::SyncDirectory.as_str(), "{failure:?}");
    assert_eq!(failure.path, path.display().to_string(), "{failure:?}");
    assert!(
        failure
            .message
            .contains(durable::FAIL_REMOVE_SYNC_DIRECTORY),
        "{failure:?}"
    );
    // The unlink happened; only its durability is unknown.
    assert!(!path.exists());
    assert_eq!(names(dir.path()), Vec::<String>::new());

    // The retry finds no file, which is fine, and fsyncs the directory.
    durable::remove(&path).unwrap();
    assert!(!path.exists());
}

/// Every failpoint of the routine is shown by one test above.
#[test]
fn every_durable_failpoint_has_a_test() {
    let tested = [
        durable::FAIL_CREATE_TEMP,
        durable::FAIL_WRITE,
        durable::FAIL_SYNC_FILE,
        durable::FAIL_RENAME,
        durable::FAIL_SYNC_DIRECTORY,
        durable::FAIL_REMOVE_SYNC_DIRECTORY,
    ];
    let mut listed = durable::FAILPOINTS.to_vec();
    listed.sort_unstable();
    let mut tested = tested.to_vec();
    tested.sort_unstable();
    assert_eq!(listed, tested);
}

/// The `VERSION` file's store fails at the directory fsync after its rename: the error
/// names the step, the new state is in place, and the same handle's next store goes on
/// (it checks against the file it put there, not the one it replaced: no
/// `ChangedUnderneath`).
#[test]
fn a_version_store_whose_directory_fsync_fails_can_store_again() {
    use layout_core::state::LayoutState;
    use layout_core::{FileStorage, LayoutStorage, StorageError};

    if child_role().is_some() {
        let storage = FileStorage::new(child_root());
        let mut state = storage.load().unwrap().unwrap();
        state.layout_version = 2;
        state.layout_feature = "Second".to_owned();
        fail::cfg(durable::FAIL_SYNC_DIRECTORY, "1*return").unwrap();
        match storage.store(&state) {
            Err(StorageError::Io { operation, .. }) => {
                report_step(format!("first store failed at {operation}"));
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
        state.layout_version = 3;
        state.layout_feature = "Third".to_owned();
        storage.store(&state).unwrap();
        report_step("second store done");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    FileStorage::new(dir.path())
        .store(&LayoutState::new("Component", 1, "First"))
        .unwrap();
    let mut child = ChildCommand::new(layout_testkit::test_name!(), "durable")
        .env(ROOT_ENV, dir.path())
        .spawn()
        .unwrap();
    let output = child.wait(BOUND).unwrap();
    assert!(output.success(), "{output:?}");
    assert_eq!(
        output.steps,
        [
            format!("first store failed at {}", Step::SyncDirectory.as_str()),
            "second store done".to_owned()
        ]
    );
    let stored = FileStorage::new(dir.path()).load().unwrap().unwrap();
    assert_eq!(stored.layout_version, 3);
    assert_eq!(names(dir.path()), ["VERSION"]);
}
