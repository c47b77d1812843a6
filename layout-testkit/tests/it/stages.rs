//! `UpgradeTest`: a 3-node cluster through the four stages with data checks, in-process
//! and as child processes, and the negative control that proves the downgraded stage
//! bites.

use layout_core::{LayoutError, LayoutFeature};
use layout_testkit::{
    run_as_child_node, ClusterNode, MiniCluster, Stage, StageFailure, UpgradeTest,
};

use layout_testkit_fixture::{ingest, kv_cluster, kv_kind, verify, Kv, KvFeature};

/// Records per node per stage.
const N: usize = 5;

/// The four stages with data checks at each. `old` ingests with the old binary; `pre`
/// verifies it and writes more while pre-finalized (and sees the new features refused);
/// the downgraded old binary reads both; finalized, everything is there in the new
/// format, the index works, and more can be written.
fn four_stages(
    builder: layout_testkit::MiniClusterBuilder,
    old: KvFeature,
) -> layout_testkit::UpgradeReport {
    let refused: Vec<&str> = KvFeature::ALL
        .iter()
        .filter(|f| **f > old)
        .map(|f| f.name())
        .collect();
    UpgradeTest::new(builder)
        .with_old_version(|cluster| {
            ingest(cluster, "old", N)?;
            verify(cluster, &["old"], N)
        })
        .with_this_version_pre_finalized(|cluster| {
            verify(cluster, &["old"], N)?;
            for node in cluster.nodes() {
                let status = node.status()?;
                assert_eq!(status.unfinalized, refused, "{}", node.name());
                // A gated operation is refused until its feature is finalized.
                let refused = node.call("lookup", "old-0").unwrap_err().to_string();
                assert!(
                    refused.contains("cannot be invoked before finalization")
                        || refused.contains("KeyIndex"),
                    "{refused}"
                );
            }
            ingest(cluster, "pre", N)?;
            verify(cluster, &["old", "pre"], N)
        })
        .with_old_version_downgraded(|cluster| verify(cluster, &["old", "pre"], N))
        .with_this_version_finalized(|cluster| {
            verify(cluster, &["old", "pre"], N)?;
            for node in cluster.nodes() {
                assert_eq!(node.call("lookup", "pre-1")?, "true");
            }
            ingest(cluster, "new", N)?;
            verify(cluster, &["old", "pre", "new"], N)
        })
        .run()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn three_nodes_pass_the_four_upgrade_stages_with_their_data() {
    let report = four_stages(kv_cluster(3, KvFeature::Initial), KvFeature::Initial);
    println!("{}", report.log.join("\n"));
    let cluster = &report.cluster;
    assert_eq!(cluster.node_names(), ["kv-0", "kv-1", "kv-2"]);
    for node in cluster.nodes_of::<Kv>() {
        // In-process: the typed manager of the running instance.
        assert_eq!(node.manager().unwrap().metadata_layout_version(), 3);
    }
    // Every stage appears in the log, and the old binary was refused on every node.
    for stage in Stage::ALL {
        assert!(
            report.log.iter().any(|l| l.starts_with(stage.name())),
            "{stage} missing from {:#?}",
            report.log
        );
    }
    let refusals = report
        .log
        .iter()
        .filter(|l| l.contains("DiskNewerThanSoftware"))
        .count();
    assert_eq!(refusals, 3);
}

#[test]
fn stages_prepare_a_component_that_supports_it_before_each_binary_change() {
    let builder =
        MiniCluster::builder().kind(kv_kind(2, KvFeature::RecordChecksums).param("prepare", "yes"));
    let report = four_stages(builder, KvFeature::RecordChecksums);
    // Three binary changes per node (up, down, up), each prepared first.
    let prepared = report
        .log
        .iter()
        .filter(|l| l.contains("(prepared at index"))
        .count();
    assert_eq!(prepared, 3 * 2, "{:#?}", report.log);
}

/// Child-process mode: every node is a process of its own (the same stages, the same
/// data checks); a node can be killed with SIGKILL and restarted with another binary.
#[test]
fn three_child_process_nodes_pass_the_four_upgrade_stages() {
    if run_as_child_node::<Kv>() {
        return;
    }
    let report = four_stages(
        kv_cluster(3, KvFeature::Initial).child_processes(layout_testkit::test_name!()),
        KvFeature::Initial,
    );
    assert!(report.cluster.is_child_processes());
    // The typed component is not reachable across a process boundary.
    let node = report.cluster.node::<Kv>("kv-0").unwrap();
    assert!(node.component().is_err());
    assert_eq!(node.metadata_layout_version().unwrap(), 3);
}

/// The negative control: a store that writes v2 records as soon as its software knows
/// them (pre-finalized too) passes the pre-finalized stage, and the downgraded old
/// binary, which cannot read v2, catches it.
#[test]
fn a_component_writing_new_format_data_while_pre_finalized_is_caught_when_downgraded() {
    let builder =
        MiniCluster::builder().kind(kv_kind(3, KvFeature::Initial).param("bug", "eager-checksums"));
    let err = UpgradeTest::new(builder)
        .with_old_version(|cluster| ingest(cluster, "old", N))
        .with_this_version_pre_finalized(|cluster| {
            ingest(cluster, "pre", N)?;
            // This version reads its own v2 records fine: nothing shows yet.
            let found = cluster.nodes().next().unwrap().call("get", "pre-0")?;
            assert_eq!(found, "pre-value-0");
            Ok(())
        })
        .with_old_version_downgraded(|cluster| verify(cluster, &["old", "pre"], N))
        .with_this_version_finalized(|_| panic!("the bug must be caught before this stage"))
        .run()
        .unwrap_err();
    println!("{err}");
    assert_eq!(err.stage, Stage::OldVersionDowngraded, "{err}");
    assert!(matches!(*err.failure, StageFailure::Callback(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("format v2, which this software (SLV 0) cannot read"),
        "{message}"
    );
}

#[test]
fn a_kind_with_nothing_to_upgrade_is_refused_with_a_reason() {
    let err = UpgradeTest::new(kv_cluster(1, KvFeature::Tombstones))
        .run()
        .unwrap_err();
    assert_eq!(err.stage, Stage::OldVersion);
    assert!(err.to_string().contains("nothing to upgrade"), "{err}");
}

#[test]
fn the_old_binary_is_refused_with_the_managers_error_in_process() {
    let cluster = kv_cluster(1, KvFeature::KeyIndex).build().unwrap();
    let node = cluster.node::<Kv>("kv-0").unwrap();
    node.upgrade().unwrap();
    node.finalize().unwrap();
    let err = node.restart_with_slv(1).unwrap_err();
    assert!(err.is_disk_newer_than_software(), "{err}");
    match &err {
        layout_testkit::MiniClusterError::Layout { source, .. } => assert!(
            matches!(**source, LayoutError::DiskNewerThanSoftware { .. }),
            "{err}"
        ),
        other => panic!("expected the manager's error, got {other}"),
    }
    assert!(!node.is_running());
    node.start(layout_testkit::StartOptions::default()).unwrap();
    assert_eq!(
        node.manager().unwrap().metadata_layout_version(),
        KvFeature::Tombstones.layout_version()
    );
}
