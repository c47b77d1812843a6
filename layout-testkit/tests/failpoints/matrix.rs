//! The crash matrix over every failpoint of the finalizer and every crash point inside
//! the actions, on the key-value store (three features with real actions, one passing a
//! crash point per record it rewrites), and the negative control that proves it bites.

use std::collections::BTreeSet;

use layout_core::finalizer::FAILPOINTS;
use layout_testkit::{
    expected_hits, run_as_child_node, CrashMatrix, Injection, MiniCluster, RunOutcome, StorageKind,
    INVARIANT_MLV_NEVER_GOES_BACKWARDS,
};

use layout_testkit_fixture::{
    every_node_checks, ingest, kv_cluster, kv_kind, verify, Kv, KvFeature, CRASH_RECORD_REWRITTEN,
};

/// Records per node per phase.
const N: usize = 4;

/// The scenario: ingest with the old binary, upgrade, write pre-finalized, finalize
/// (crashing), restart, finish; then every record is there and each store's own
/// invariants hold (formats match the MLV, the index matches the records, tombstones
/// switched on).
fn matrix(builder: layout_testkit::MiniClusterBuilder) -> CrashMatrix<'static> {
    CrashMatrix::new(builder)
        .setup(|cluster| ingest(cluster, "old", N))
        .pre_finalized(|cluster| ingest(cluster, "pre", N))
        .invariant("every record survives", |cluster| {
            verify(cluster, &["old", "pre"], N)
        })
        .invariant("the stores are consistent", every_node_checks)
}

fn assert_every_failpoint_and_hit(report: &layout_testkit::CrashMatrixReport) {
    println!("{report}");
    report.assert_ok();
    let crashed: BTreeSet<&str> = report.points_crashed();
    let mut expected_points: BTreeSet<&str> = FAILPOINTS.iter().copied().collect();
    expected_points.insert(CRASH_RECORD_REWRITTEN);
    assert_eq!(crashed, expected_points);
    // The action's own crash point, discovered inside it: one pass per v1 record the
    // node holds (N old, N written pre-finalized).
    let inside: Vec<_> = report.points_inside_actions().collect();
    assert_eq!(inside.len(), 1, "{report}");
    assert_eq!(
        (inside[0].name, inside[0].hits),
        (CRASH_RECORD_REWRITTEN, 2 * N)
    );
    // Three features to finalize: every pass of every failpoint, and of the action's.
    let expected: usize = FAILPOINTS
        .iter()
        .map(|f| expected_hits(f, 3))
        .sum::<usize>()
        + 2 * N;
    assert_eq!(report.cases.len(), expected, "{report}");
    // The report lists every crash point with its hits, and each case.
    let text = report.to_string();
    for failpoint in FAILPOINTS {
        assert!(text.contains(failpoint), "{failpoint} missing from\n{text}");
    }
    assert!(
        text.contains(&format!(
            "{CRASH_RECORD_REWRITTEN:<40} {:>3} hit(s)  inside an action",
            2 * N
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{CRASH_RECORD_REWRITTEN:<40} hit {0}/{0}", 2 * N)),
        "{text}"
    );
}

#[test]
fn the_crash_matrix_crashes_at_every_pass_of_every_failpoint_in_process() {
    let report = matrix(kv_cluster(3, KvFeature::Initial)).run().unwrap();
    assert!(!report.child_processes);
    assert_every_failpoint_and_hit(&report);
    // A crash after a persist keeps the stored version; before it, the previous one.
    for case in &report.cases {
        assert!(case.recovered_mlv >= case.published_mlv, "{case:?}");
    }
}

#[test]
fn the_crash_matrix_crashes_at_every_pass_of_every_failpoint_with_sigkill() {
    if run_as_child_node::<Kv>() {
        return;
    }
    let builder = kv_cluster(2, KvFeature::Initial).child_processes(layout_testkit::test_name!());
    let report = matrix(builder).crash_node("kv-1").run().unwrap();
    assert!(report.child_processes);
    assert_eq!(report.node, "kv-1");
    assert_every_failpoint_and_hit(&report);
}

/// The negative control: the nodes' storage acknowledges a write before it is durable
/// (the kit's `StorageKind::Unsynced`), so a crash after a finalization step has
/// published its MLV loses it. The matrix catches it at every pass of every failpoint
/// after the first publish, and nowhere before it.
#[test]
fn a_storage_that_acknowledges_before_it_is_durable_is_caught_by_the_crash_matrix() {
    let builder = MiniCluster::builder()
        .kind(kv_kind(2, KvFeature::Initial))
        .storage(StorageKind::Unsynced);
    let report = matrix(builder).run().unwrap();
    println!("{report}");
    assert!(!report.is_ok());
    assert_eq!(
        report.broken_at("finalize::after_publish"),
        BTreeSet::from([INVARIANT_MLV_NEVER_GOES_BACKWARDS]),
        "{report}"
    );
    // Every pass of the failpoint after the publish: one per feature.
    let caught = report
        .violations()
        .filter(|(p, _)| p.failpoint == "finalize::after_publish")
        .count();
    assert_eq!(caught, 3, "{report}");
    // Before the first publish nothing acknowledged is visible, so nothing is lost.
    assert!(
        report
            .violations()
            .all(|(p, _)| p.failpoint == "finalize::after_publish"
                || p.failpoint == "finalize::done"
                || p.hit > 1),
        "{report}"
    );
    let text = report.to_string();
    assert!(
        text.contains("BROKEN: the MLV never goes backwards: MLV 1 was published before the crash, the restarted node has MLV 0"),
        "{text}"
    );
}

/// `expected_hits` (which the plans use) matches what a real finalization passes.
#[test]
fn expected_hits_match_a_traced_finalization() {
    for old in [KvFeature::Initial, KvFeature::KeyIndex] {
        let cluster = kv_cluster(1, old).build().unwrap();
        let node = cluster.node_dyn("kv-0").unwrap();
        node.upgrade().unwrap();
        let run = node.finalize_injected(None, Injection::Trace).unwrap();
        let features = 3 - usize::try_from(old as u32).unwrap();
        assert!(matches!(run.outcome, RunOutcome::Finalized(_)));
        for failpoint in FAILPOINTS {
            let passed = run.trace.iter().filter(|f| *f == failpoint).count();
            assert_eq!(
                passed,
                expected_hits(failpoint, features),
                "{failpoint}: {:?}",
                run.trace
            );
        }
    }
}
