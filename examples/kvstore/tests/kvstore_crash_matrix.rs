//! The crash matrix of kvstore's finalization (every feature from the initial layout to
//! the latest): a crash at every pass of every crash point the finalization passes,
//! discovered by a crash-free run, including each batch boundary of the value-index
//! migration (small batches here, so it takes several), in process and by SIGKILL of a
//! child-process node. After each crash the node restarts and finishes, and every
//! record, every delete and the value index are checked.
//!
//! Crash points are process-global: a test binary of its own (run it with
//! cargo-nextest, one process per test; under `cargo test` the kit serializes its
//! in-process finalizations).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use kvstore::{KvClient, KvFeature, KvStore};
use layout_core::finalizer::FAILPOINTS;
use layout_core::migration::CRASH_BATCH_COMMITTED;
use layout_core::LayoutFeature;
use layout_testkit::{
    run_as_child_node, test_name, ClusterNode, CrashMatrix, CrashMatrixReport, HookResult, Kind,
    MiniCluster, MiniClusterBuilder,
};

/// Keys per batch of the value-index migration.
const BATCH: usize = 3;

/// The records the scenario leaves: `key -> value`.
fn expected() -> BTreeMap<String, String> {
    let mut records: BTreeMap<String, String> = (0..8)
        .map(|i| (format!("k{i:02}"), colour(i).to_owned()))
        .collect();
    records.remove("k03");
    records.insert("k08".to_owned(), "blue".to_owned());
    records.insert("k09".to_owned(), "green".to_owned());
    records.insert("k10".to_owned(), "red".to_owned());
    records
}

fn colour(i: usize) -> &'static str {
    if i % 2 == 1 {
        "blue"
    } else {
        "green"
    }
}

fn kv(nodes: usize) -> MiniClusterBuilder {
    MiniCluster::builder().kind(
        Kind::<KvStore>::new("kv")
            .nodes(nodes)
            .software_layout_version(KvFeature::Initial.layout_version())
            .param("migration_batch", BATCH.to_string()),
    )
}

fn http_addr(node: &dyn ClusterNode) -> HookResult<SocketAddr> {
    Ok(node.call("http_addr", "")?.parse()?)
}

/// With the old release: eight records; pre-finalized: three more, one deleted.
fn matrix(builder: MiniClusterBuilder) -> CrashMatrix<'static> {
    CrashMatrix::new(builder)
        .setup(|cluster| {
            for node in cluster.nodes() {
                for i in 0..8 {
                    node.call("put", &format!("k{i:02}={}", colour(i)))?;
                }
            }
            Ok(())
        })
        .pre_finalized(|cluster| {
            for node in cluster.nodes() {
                node.call("put", "k08=blue")?;
                node.call("put", "k09=green")?;
                node.call("put", "k10=red")?;
                node.call("delete", "k03")?;
            }
            Ok(())
        })
        .invariant(
            "every record survives, and no deleted one comes back",
            |cluster| {
                for node in cluster.nodes() {
                    for (key, value) in expected() {
                        let found = node.call("get", &key)?;
                        if found != value {
                            return Err(format!(
                                "{}: {key} = {found:?}, expected {value}",
                                node.name()
                            )
                            .into());
                        }
                    }
                    let deleted = node.call("get", "k03")?;
                    if !deleted.is_empty() {
                        return Err(format!(
                            "{}: the deleted k03 came back: {deleted}",
                            node.name()
                        )
                        .into());
                    }
                }
                Ok(())
            },
        )
        .invariant(
            "the value index lists exactly the keys of each value",
            |cluster| {
                for node in cluster.nodes() {
                    let client = KvClient::new(http_addr(node)?);
                    for colour in ["blue", "green", "red"] {
                        let mut keys = client.find_by_value(colour)?;
                        keys.sort();
                        let want: Vec<String> = expected()
                            .into_iter()
                            .filter(|(_, v)| v == colour)
                            .map(|(k, _)| k)
                            .collect();
                        if keys != want {
                            return Err(format!(
                                "{}: {colour} -> {keys:?}, expected {want:?}",
                                node.name()
                            )
                            .into());
                        }
                    }
                }
                Ok(())
            },
        )
}

fn assert_every_point_and_batch(report: &CrashMatrixReport) {
    println!("{report}");
    report.assert_ok();
    // Every step of the finalizer, once per feature (four to finalize) where it is per
    // feature, each crashed at.
    for failpoint in FAILPOINTS {
        let point = report.points.iter().find(|p| p.name == *failpoint);
        assert!(
            point.is_some_and(|p| !p.inside_action),
            "{failpoint}\n{report}"
        );
    }
    // The index migration's batches: the ten records, BATCH keys each; a crash after
    // each batch's commit.
    let batches = expected().len().div_ceil(BATCH);
    assert!(batches >= 3, "the migration takes several batches");
    let committed = report
        .points
        .iter()
        .find(|p| p.name == CRASH_BATCH_COMMITTED)
        .unwrap_or_else(|| panic!("{CRASH_BATCH_COMMITTED} not passed\n{report}"));
    assert_eq!(
        (committed.hits, committed.inside_action),
        (batches, true),
        "{report}"
    );
    let crashed: Vec<usize> = report
        .cases
        .iter()
        .filter(|c| c.point.name() == CRASH_BATCH_COMMITTED)
        .map(|c| c.point.hit)
        .collect();
    assert_eq!(crashed, (1..=batches).collect::<Vec<_>>());
    // Every pass of every point crashed at, and each is in the report's text.
    let passes: usize = report.points.iter().map(|p| p.hits).sum();
    assert_eq!(report.cases.len(), passes);
    let text = report.to_string();
    for point in &report.points {
        assert!(
            text.contains(point.name),
            "{} missing from\n{text}",
            point.name
        );
    }
    for hit in 1..=batches {
        assert!(
            text.contains(&format!("{CRASH_BATCH_COMMITTED:<40} hit {hit}/{batches}")),
            "{text}"
        );
    }
}

#[test]
fn kvstore_finalization_survives_a_crash_at_every_crash_point_in_process() {
    let report = matrix(kv(2)).run().unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.child_processes);
    assert_every_point_and_batch(&report);
}

#[test]
fn kvstore_finalization_survives_a_sigkill_at_every_crash_point() {
    if run_as_child_node::<KvStore>() {
        return;
    }
    let report = matrix(kv(1).child_processes(test_name!()))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.child_processes);
    assert_every_point_and_batch(&report);
}

/// The keys the interrupted-finalization scenario ever writes.
const KEYS: [&str; 10] = [
    "k00", "k005", "k01", "k015", "k02", "k03", "k04", "k05", "k06", "k07",
];

/// What every node should hold, as the callbacks wrote it on the current cluster; the
/// old-version callback (the first of every fresh cluster) resets it.
#[derive(Default)]
struct Model {
    records: std::cell::RefCell<BTreeMap<String, String>>,
    pre_runs: std::cell::Cell<u32>,
}

impl Model {
    fn put(&self, cluster: &MiniCluster, key: &str, value: &str) -> HookResult {
        for node in cluster.nodes() {
            node.call("put", &format!("{key}={value}"))?;
        }
        self.records
            .borrow_mut()
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn delete(&self, cluster: &MiniCluster, key: &str) -> HookResult {
        for node in cluster.nodes() {
            node.call("delete", key)?;
        }
        self.records.borrow_mut().remove(key);
        Ok(())
    }

    /// Every key reads as the model says (absent: empty).
    fn verify(&self, cluster: &MiniCluster) -> HookResult {
        let records = self.records.borrow();
        for node in cluster.nodes() {
            for key in KEYS {
                let found = node.call("get", key)?;
                let want = records.get(key).map_or("", String::as_str);
                if found != want {
                    return Err(
                        format!("{}: {key} = {found:?}, expected {want:?}", node.name()).into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Finalized: the value index lists exactly the keys of each value.
    fn verify_index(&self, cluster: &MiniCluster) -> HookResult {
        self.verify(cluster)?;
        let records = self.records.borrow();
        for node in cluster.nodes() {
            let client = KvClient::new(http_addr(node)?);
            for value in records.values() {
                let mut keys = client.find_by_value(value)?;
                keys.sort();
                let want: Vec<&String> = records
                    .iter()
                    .filter(|(_, v)| *v == value)
                    .map(|(k, _)| k)
                    .collect();
                if keys.iter().collect::<Vec<_>>() != want {
                    return Err(format!(
                        "{}: index {value} -> {keys:?}, expected {want:?}",
                        node.name()
                    )
                    .into());
                }
            }
        }
        Ok(())
    }
}

/// kvstore's index migration interrupted at every crash point (the release before it,
/// SLV 1, is the old one, so a downgrade mid-migration is possible), each followed by a
/// restart and by a downgrade to the old release, which writes: the store notices the
/// old release wrote and starts the migration over; no record is lost, none comes back,
/// and the index is exact. Child processes: each crash is a SIGKILL.
#[test]
fn kvstore_survives_finalization_interrupted_at_every_crash_point_then_restarted_or_downgraded() {
    if run_as_child_node::<KvStore>() {
        return;
    }
    let model = Model::default();
    let builder = MiniCluster::builder()
        .kind(
            Kind::<KvStore>::new("kv")
                .nodes(2)
                .software_layout_version(KvFeature::ExpiringValues.layout_version())
                .param("migration_batch", BATCH.to_string()),
        )
        .child_processes(test_name!());
    let report = layout_testkit::UpgradeTest::new(builder)
        .with_old_version(|cluster| {
            model.records.borrow_mut().clear();
            model.pre_runs.set(0);
            for i in [0, 1, 2, 3, 4, 5, 6, 7] {
                model.put(cluster, &format!("k{i:02}"), colour(i))?;
            }
            model.verify(cluster)
        })
        .with_this_version_pre_finalized(|cluster| {
            model.verify(cluster)?;
            let run = model.pre_runs.get() + 1;
            model.pre_runs.set(run);
            model.put(cluster, "k01", &format!("pre-{run}"))?;
            model.delete(cluster, "k03")?;
            model.put(cluster, "k015", "blue")?;
            model.verify(cluster)
        })
        .with_old_version_downgraded(|cluster| {
            model.verify(cluster)?;
            model.delete(cluster, "k02")?;
            model.put(cluster, "k005", "green")?;
            model.verify(cluster)
        })
        .with_this_version_finalized(|cluster| model.verify_index(cluster))
        .with_interrupted_finalization(layout_testkit::InterruptedFinalization::first_hit())
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{}", report.log.join("\n"));
    let inside: Vec<String> = report
        .interrupted
        .iter()
        .filter(|c| c.inside_action)
        .map(|c| c.point.to_string())
        .collect();
    assert!(
        inside.contains(&format!("{CRASH_BATCH_COMMITTED} hit 1")),
        "{inside:?}"
    );
    // Inside the index migration, nothing is finalized yet: the old release ran.
    assert!(report
        .interrupted
        .iter()
        .filter(|c| c.inside_action)
        .all(|c| c.downgraded));
}
