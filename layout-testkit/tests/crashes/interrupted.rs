//! The interrupted-finalization stage of `UpgradeTest` on the record store whose v2
//! feature rewrites every record with a background migration, and its negative
//! controls: without its reset action, and with a handler that forgets to dual-write,
//! the stage fails naming the crash point and the broken check; the correct store
//! passes at every crash point.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use layout_core::migration::CRASH_BATCH_COMMITTED;
use layout_testkit::{
    InterruptedFinalization, Kind, MiniCluster, MiniClusterBuilder, Stage, StageFailure,
    UpgradeReport, UpgradeTest, UpgradeTestError,
};

use crate::records::{Records, CRASH_REWRITE_STARTED};

/// The data every node should hold, as the callbacks wrote it on the current cluster.
/// The old-version callback, the first of every fresh cluster, resets it.
#[derive(Default)]
struct Model {
    records: RefCell<BTreeMap<String, String>>,
    /// Runs of the pre-finalized callback on this cluster (each writes new values).
    pre_runs: Cell<u32>,
}

impl Model {
    fn put(&self, cluster: &MiniCluster, key: &str, text: &str) -> layout_testkit::HookResult {
        for node in cluster.nodes() {
            node.call("put", &format!("{key}={text}"))?;
        }
        self.records
            .borrow_mut()
            .insert(key.to_owned(), text.to_owned());
        Ok(())
    }

    fn delete(&self, cluster: &MiniCluster, key: &str) -> layout_testkit::HookResult {
        for node in cluster.nodes() {
            node.call("delete", key)?;
        }
        self.records.borrow_mut().remove(key);
        Ok(())
    }

    /// Every node holds exactly the model: the data check.
    fn verify(&self, cluster: &MiniCluster) -> layout_testkit::HookResult {
        let expected = self.records.borrow();
        for node in cluster.nodes() {
            let found: BTreeMap<String, String> = node
                .call("scan", "")?
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let mut problems = Vec::new();
            for (key, text) in &found {
                match expected.get(key) {
                    None => problems.push(format!("record {key} came back ({text})")),
                    Some(want) if want != text => {
                        problems.push(format!("record {key} is {text}, expected {want}"));
                    }
                    Some(_) => {}
                }
            }
            for key in expected.keys().filter(|k| !found.contains_key(*k)) {
                problems.push(format!("record {key} is lost"));
            }
            if !problems.is_empty() {
                return Err(format!("{}: {}", node.name(), problems.join("; ")).into());
            }
        }
        Ok(())
    }
}

/// The user's upgrade test: ingest with the old release; pre-finalized, verify, update
/// a record, delete one and add one (keys in the migration's first batch); downgraded,
/// the old release reads everything, deletes a record and adds one; finalized, every
/// record is there with its last value, and none that was deleted.
fn upgrade_test(builder: MiniClusterBuilder, model: &Model) -> UpgradeTest<'_> {
    UpgradeTest::new(builder)
        .with_old_version(|cluster| {
            model.records.borrow_mut().clear();
            model.pre_runs.set(0);
            for i in 0..10 {
                model.put(cluster, &format!("a{i:02}"), &format!("one-{i}"))?;
            }
            model.verify(cluster)
        })
        .with_this_version_pre_finalized(|cluster| {
            model.verify(cluster)?;
            let run = model.pre_runs.get() + 1;
            model.pre_runs.set(run);
            model.put(cluster, "a00", &format!("pre-{run}"))?;
            model.delete(cluster, "a01")?;
            model.put(cluster, "a015", &format!("pre-{run}"))?;
            model.verify(cluster)
        })
        .with_old_version_downgraded(|cluster| {
            model.verify(cluster)?;
            model.delete(cluster, "a02")?;
            model.put(cluster, "a005", "old")?;
            model.verify(cluster)
        })
        .with_this_version_finalized(|cluster| model.verify(cluster))
}

fn records(nodes: usize) -> Kind<Records> {
    Kind::<Records>::new("rec")
        .nodes(nodes)
        .software_layout_version(0)
}

fn interrupted(kind: Kind<Records>, model: &Model) -> Result<UpgradeReport, UpgradeTestError> {
    upgrade_test(MiniCluster::builder().kind(kind), model)
        .with_interrupted_finalization(InterruptedFinalization::first_hit())
        .run()
}

/// The failure names the crash point (inside the action, the first batch committed),
/// the path after it, and the broken check.
fn assert_caught(err: &UpgradeTestError, path: &str, problem: &str) {
    let message = err.to_string();
    println!("{message}");
    assert_eq!(err.stage, Stage::InterruptedFinalization, "{message}");
    let point = err.crash_point.expect("the crash point is named");
    assert_eq!(
        (point.name(), point.hit),
        (CRASH_BATCH_COMMITTED, 1),
        "{message}"
    );
    assert_eq!(err.callback, Some(Stage::ThisVersionFinalized), "{message}");
    assert!(
        matches!(*err.failure, StageFailure::Callback(_)),
        "{message}"
    );
    for part in [
        "crash at background_migration::batch_committed hit 1 (inside an action) on rec-0",
        path,
        "the with_this_version_finalized callback",
        problem,
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[test]
fn the_rewrite_with_its_reset_action_survives_finalization_interrupted_at_every_crash_point() {
    let model = Model::default();
    let report = interrupted(records(2), &model).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.log.join("\n"));
    let crashed: Vec<String> = report
        .interrupted
        .iter()
        .map(|c| c.point.to_string())
        .collect();
    // Every finalizer step, the action's own point and each boundary of the migration,
    // discovered by the crash-free run, each crashed at once.
    for point in [
        "finalize::started hit 1",
        "finalize::before_action hit 1",
        "records::rewrite_started hit 1",
        "background_migration::before_batch hit 1",
        "background_migration::batch_committed hit 1",
        "background_migration::batch_reported hit 1",
        "background_migration::before_finish hit 1",
        "background_migration::finished hit 1",
        "finalize::after_action hit 1",
        "finalize::before_persist hit 1",
        "finalize::after_persist hit 1",
        "finalize::after_publish hit 1",
        "finalize::done hit 1",
    ] {
        assert!(
            crashed.iter().any(|c| c == point),
            "{point} not in {crashed:?}"
        );
    }
    assert_eq!(crashed.len(), 13, "{crashed:?}");
    let inside: Vec<&str> = report
        .interrupted
        .iter()
        .filter(|c| c.inside_action)
        .map(|c| c.point.name())
        .collect();
    assert_eq!(inside.len(), 6, "{inside:?}");
    assert!(inside.contains(&CRASH_REWRITE_STARTED));
    // Before the new MLV is stored, the old release runs its checks; after, it is
    // refused, as it must be.
    for case in &report.interrupted {
        let stored = matches!(
            case.point.name(),
            "finalize::after_persist" | "finalize::after_publish" | "finalize::done"
        );
        assert_eq!(case.downgraded, !stored, "{case:?}");
    }
    // The finalization passes the migration's batch points once per batch: 10 records
    // in batches of 3.
    assert!(
        report
            .log
            .iter()
            .any(|l| l.contains("background_migration::batch_committed x4")),
        "{:#?}",
        report.log
    );
}

/// The negative control: without the reset action, a finalization interrupted after
/// the first batch and a downgrade lose data: the record the old release deleted comes
/// back, the one it added is lost. The crash-free stages all pass.
#[test]
fn the_rewrite_without_its_reset_action_is_caught_when_interrupted_and_downgraded() {
    let model = Model::default();
    let stages_only = upgrade_test(
        MiniCluster::builder().kind(records(2).param("reset", "no")),
        &model,
    )
    .run();
    assert!(stages_only.is_ok(), "{:?}", stages_only.err());

    let err = interrupted(records(2).param("reset", "no"), &model).unwrap_err();
    assert_caught(
        &err,
        "then (b) downgraded to the old release, upgraded again and finished",
        "record a005 is lost",
    );
    assert!(err.to_string().contains("record a02 came back"), "{err}");
}

/// The second negative control: with the reset action in place, a handler that writes
/// only the old table while the migration runs leaves the copy of a record it updated
/// stale, once the finalization restarts after a crash in the middle of the migration.
#[test]
fn a_handler_that_forgets_to_dual_write_is_caught_when_interrupted_and_restarted() {
    let model = Model::default();
    let stages_only = upgrade_test(
        MiniCluster::builder().kind(records(1).param("dual_write", "no")),
        &model,
    )
    .run();
    assert!(stages_only.is_ok(), "{:?}", stages_only.err());

    let err = interrupted(records(1).param("dual_write", "no"), &model).unwrap_err();
    assert_caught(
        &err,
        "then (a) this version restarted and finished",
        "record a00 is pre-1, expected pre-2",
    );
}

/// Every pass of every crash point, with a node other than the first crashing.
#[test]
fn every_hit_crashes_at_each_batch_of_the_migration() {
    let model = Model::default();
    let report = upgrade_test(MiniCluster::builder().kind(records(2)), &model)
        .with_interrupted_finalization(InterruptedFinalization::every_hit().crash_node("rec-1"))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let batches: Vec<usize> = report
        .interrupted
        .iter()
        .filter(|c| c.point.name() == CRASH_BATCH_COMMITTED)
        .map(|c| c.point.hit)
        .collect();
    assert_eq!(batches, [1, 2, 3, 4]);
    assert!(
        report.log.iter().any(|l| l.contains("on rec-1")),
        "{:#?}",
        report.log
    );
}
