//! SIGKILL in every window between two steps of a finalization whose actions do real,
//! durable work (they append to an fsynced journal of `(feature, attempt)`).
//!
//! The child reports a step at every failpoint (a `fail::cfg_callback`), at the start of
//! each action and once its journal line is durable, and blocks at the step the parent
//! chose; the parent SIGKILLs it there, so the kill lands exactly in that window.

use std::sync::Arc;

use layout_core::finalizer::FAILPOINTS;
use layout_testkit::crash::{child_role, ChildCommand, ChildProcess};

use crate::common::{
    child_root, crash_free_state, expected_trace, reported_mlv, restart_and_finish, start,
    stored_state, Service, Steps, BOUND, CLIENT, ROOT_ENV, WITH_ACTION,
};

/// The index of the step the child blocks at (none: it runs to the end).
const STOP_AT_ENV: &str = "LAYOUT_TEST_STOP_AT";

/// The child: start, finalize everything, report each step, block at the chosen one.
fn finalizing_child() {
    let root = child_root();
    let stop_at = std::env::var(STOP_AT_ENV).ok().map(|k| k.parse().unwrap());
    let steps = Arc::new(Steps::new(stop_at));
    let finalizer = start(&root);
    steps.watch(finalizer.layout_manager());
    for &name in FAILPOINTS {
        let steps = Arc::clone(&steps);
        fail::cfg_callback(name, move || steps.step(name)).unwrap();
    }
    steps.step("started");
    finalizer
        .finalize(CLIENT, &Service::new(&root, Some(Arc::clone(&steps))))
        .unwrap();
    steps.step("finished");
}

fn spawn(test: &str, root: &std::path::Path, stop_at: Option<usize>) -> ChildProcess {
    let mut command = ChildCommand::new(test, "finalizer").env(ROOT_ENV, root);
    if let Some(k) = stop_at {
        command = command.env(STOP_AT_ENV, k.to_string());
    }
    command.spawn().unwrap()
}

/// For each step k of a finalization (every window, not a sample): a fresh directory, a
/// child killed with SIGKILL right after step k, then a restart that finishes. After each
/// kill: every feature at or below the stored MLV has a completed journal entry, the
/// manager reports no feature finalized whose action has none, the MLV is at least the
/// one published before the kill, and the final state equals a crash-free run's. Across
/// all windows, at least one action ran again.
#[test]
fn a_sigkill_in_every_window_between_steps_recovers_and_finishes() {
    if child_role().is_some() {
        finalizing_child();
        return;
    }
    let test = layout_testkit::test_name!();
    let reference = crash_free_state();

    // One run to the end lists the steps.
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn(&test, dir.path(), None);
    let output = child.wait(BOUND).unwrap();
    assert!(output.success(), "{output:?}");
    let steps = output.steps;
    assert_eq!(
        steps.len(),
        2 + expected_trace().len() + 2 * WITH_ACTION.len(),
        "start, every failpoint hit, two per action, finish: {steps:#?}"
    );
    assert_eq!(stored_state(dir.path()), reference);

    let mut reruns = Vec::new();
    for (k, step) in steps.iter().enumerate() {
        let context = format!("SIGKILL after step {step:?}");
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn(&test, dir.path(), Some(k));
        child.wait_for_step(step, BOUND).unwrap();
        child.kill().unwrap();
        let output = child.wait(BOUND).unwrap();
        assert!(output.was_killed(), "{context}: {output:?}");
        assert_eq!(
            output.steps,
            steps[..=k],
            "{context}: the child did not stop at its step"
        );
        reruns.extend(restart_and_finish(
            dir.path(),
            reported_mlv(step),
            &context,
            &reference,
        ));
    }
    assert!(
        !reruns.is_empty(),
        "no kill window made an action run again (attempt 2)"
    );
    // Each action completed but unpersisted in some window: after its journal line and
    // at the three failpoints up to its persist.
    assert_eq!(reruns.len(), 3 * WITH_ACTION.len(), "re-runs: {reruns:?}");
}
