//! The crash matrix on the shelf: a crash at every pass of every finalizer failpoint,
//! in process and by SIGKILL of a child-process node.
//!
//! Failpoints are process-global: run this binary with cargo-nextest (one process per
//! test); under `cargo test` the kit serializes its crash-injecting runs.

mod common;

use common::{cluster, read, v2_records, write, Node};
use layout_testkit::{
    failpoints_enabled, run_as_child_node, test_name, CrashMatrix, CrashMatrixReport,
};

fn matrix(builder: layout_testkit::MiniClusterBuilder) -> CrashMatrixReport {
    CrashMatrix::new(builder)
        .setup(|c| write(c, "old"))
        .pre_finalized(|c| write(c, "pre"))
        .invariant("every record survives", |c| read(c, &["old", "pre"]))
        .invariant("every record is v2 once finalized", |c| {
            for node in c.nodes() {
                if !node.status()?.is_pre_finalized() && v2_records(node)? != 2 {
                    return Err(format!("{}: not every record is v2", node.name()).into());
                }
            }
            Ok(())
        })
        .run()
        .expect("the crash matrix runs")
}

#[test]
fn every_finalizer_crash_point_recovers_in_process() {
    assert!(
        failpoints_enabled(),
        "the dev-dependency enables failpoints"
    );
    let report = matrix(cluster());
    report.assert_ok();
    // It crashed at every failpoint the finalizer has.
    assert_eq!(
        report.failpoints_crashed(),
        layout_core::finalizer::FAILPOINTS.iter().copied().collect(),
        "{report}"
    );
}

#[test]
fn every_finalizer_crash_point_recovers_after_sigkill() {
    if run_as_child_node::<Node>() {
        return; // this process was a node
    }
    let report = matrix(cluster().child_processes(test_name!()));
    report.assert_ok();
    assert!(!report.failpoints_crashed().is_empty(), "{report}");
}
