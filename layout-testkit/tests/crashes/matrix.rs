//! The crash matrix discovers the crash points inside an action from a crash-free run
//! (the action's own, and every batch boundary of its background migration) and crashes
//! at every pass of each, with no knob in the component.

use std::collections::BTreeSet;

use layout_core::finalizer::FAILPOINTS;
use layout_core::migration::{BACKGROUND_CRASH_POINTS as CRASH_POINTS, CRASH_BATCH_COMMITTED};
use layout_testkit::{CrashMatrix, Kind, MiniCluster};

use crate::records::{Records, CRASH_REWRITE_STARTED};

fn records(on_thread: bool) -> Kind<Records> {
    Kind::<Records>::new("rec")
        .nodes(2)
        .software_layout_version(0)
        .param("batch", "4")
        .param("thread", if on_thread { "yes" } else { "no" })
}

#[test]
fn the_crash_matrix_crashes_at_every_batch_of_a_migration_inside_an_action() {
    matrix_over(records(false));
}

/// The migration runs on a thread the action spawns: its crash points count all the
/// same, and a crash there stops the node (the action sees its thread panic, and the
/// finalization ends as a crash, not as an action failure).
#[test]
fn crash_points_passed_on_another_thread_of_the_node_count_and_crash() {
    matrix_over(records(true));
}

fn matrix_over(kind: Kind<Records>) {
    let report = CrashMatrix::new(MiniCluster::builder().kind(kind))
        .setup(|cluster| {
            for node in cluster.nodes() {
                for i in 0..10 {
                    node.call("put", &format!("k{i:02}=v{i}"))?;
                }
            }
            Ok(())
        })
        .pre_finalized(|cluster| {
            for node in cluster.nodes() {
                node.call("delete", "k03")?;
                node.call("put", "k10=pre")?;
            }
            Ok(())
        })
        .invariant("every record survives the crash, rewritten", |cluster| {
            let mut expected: Vec<String> = (0..10)
                .filter(|i| *i != 3)
                .map(|i| format!("k{i:02}=v{i}"))
                .collect();
            expected.push("k10=pre".to_owned());
            for node in cluster.nodes() {
                let found = node.call("scan", "")?;
                if found != expected.join(",") {
                    return Err(format!("{} holds {found}", node.name()).into());
                }
            }
            Ok(())
        })
        .run()
        .unwrap();
    println!("{report}");
    report.assert_ok();

    // 10 records in batches of 4: three batches.
    let hits = |name: &str| {
        report
            .points
            .iter()
            .find(|p| p.name == name)
            .map(|p| (p.hits, p.inside_action))
    };
    assert_eq!(hits(CRASH_BATCH_COMMITTED), Some((3, true)), "{report}");
    assert_eq!(hits(CRASH_REWRITE_STARTED), Some((1, true)), "{report}");
    assert_eq!(
        hits("finalize::before_persist"),
        Some((1, false)),
        "{report}"
    );
    // Every point of the finalizer and of the migration, found without a list.
    let found: BTreeSet<&str> = report.points.iter().map(|p| p.name).collect();
    let mut expected: BTreeSet<&str> = FAILPOINTS.iter().chain(CRASH_POINTS).copied().collect();
    expected.insert(CRASH_REWRITE_STARTED);
    assert_eq!(found, expected);
    // Crashed at every pass of each.
    let passes: usize = report.points.iter().map(|p| p.hits).sum();
    assert_eq!(report.cases.len(), passes);
    assert_eq!(report.points_crashed(), expected);
    let batches: Vec<usize> = report
        .cases
        .iter()
        .filter(|c| c.point.name() == CRASH_BATCH_COMMITTED)
        .map(|c| c.point.hit)
        .collect();
    assert_eq!(batches, [1, 2, 3]);
    assert!(report
        .cases
        .iter()
        .all(|c| c.inside_action != c.point.is_finalizer_step()));
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "{CRASH_BATCH_COMMITTED:<40}   3 hit(s)  inside an action"
        )),
        "{text}"
    );
}
