//! `MiniCluster`: nodes pinned to versions, restarts with another binary keeping the
//! directory, kinds of different component types, memory storage, child processes
//! killed with SIGKILL.

use layout_core::{LayoutFeature, StartIntent};
use layout_testkit::{
    run_as_child_node, ClusterNode, HookResult, Kind, MiniCluster, MiniClusterError, NodeContext,
    StartOptions, StorageKind, TestComponent,
};

use layout_testkit_fixture::{kv_cluster, kv_kind, parse_scan, Kv, KvFeature};

/// A second kind of component with a catalog of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum MetaFeature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Leases")]
    Leases,
}

struct Meta;

impl TestComponent for Meta {
    type Feature = MetaFeature;
    fn open(_ctx: &NodeContext<MetaFeature>) -> HookResult<Self> {
        Ok(Meta)
    }
}

#[test]
fn nodes_start_pinned_to_their_kinds_versions() {
    let cluster = MiniCluster::builder()
        .kind(
            Kind::<Kv>::new("kv")
                .nodes(2)
                .initial_layout_version(1)
                .software_layout_version(2),
        )
        .kind(Kind::<Meta>::new("meta").software_layout_version(0))
        .build()
        .unwrap();
    assert_eq!(cluster.node_names(), ["kv-0", "kv-1", "meta-0"]);
    for node in cluster.nodes_of::<Kv>() {
        let status = node.status().unwrap();
        assert_eq!(
            (
                status.metadata_layout_version,
                status.software_layout_version
            ),
            (1, 2)
        );
        assert_eq!(status.unfinalized, ["KeyIndex"]);
        assert_eq!(node.new_software_layout_version(), 3);
    }
    let meta = cluster.node::<Meta>("meta-0").unwrap();
    assert_eq!(meta.manager().unwrap().metadata_layout_version(), 0);
    assert_eq!(cluster.kinds()[1].catalog, "MetaFeature");

    // Typed access checks the component type.
    let err = cluster.node::<Meta>("kv-0").unwrap_err();
    assert!(matches!(err, MiniClusterError::WrongType { .. }), "{err}");
    let err = cluster.node_dyn("nope").unwrap_err();
    assert!(err.to_string().contains("kv-0"), "{err}");

    // Finalize one node, then all.
    cluster.node_dyn("kv-1").unwrap().finalize().unwrap();
    assert_eq!(
        cluster
            .node_dyn("kv-1")
            .unwrap()
            .metadata_layout_version()
            .unwrap(),
        2
    );
    assert_eq!(
        cluster
            .node_dyn("kv-0")
            .unwrap()
            .metadata_layout_version()
            .unwrap(),
        1
    );
    cluster.upgrade_all().unwrap();
    let summaries = cluster.finalize_all().unwrap();
    assert_eq!(summaries.len(), 3);
    assert_eq!(summaries[0].finalized, ["KeyIndex", "Tombstones"]);
    assert_eq!(summaries[1].finalized, ["Tombstones"]);
    assert_eq!(summaries[2].finalized, ["Leases"]);
}

#[test]
fn a_node_restarted_with_another_binary_keeps_its_directory() {
    let cluster = kv_cluster(1, KvFeature::Initial).build().unwrap();
    let node = cluster.node::<Kv>("kv-0").unwrap();
    node.call("put", "a=1").unwrap();
    let dir = node.dir().to_owned();

    node.restart_with_slv(2).unwrap(); // upgrade the binary
    assert_eq!(node.manager().unwrap().software_layout_version(), 2);
    assert_eq!(node.manager().unwrap().start_intent(), StartIntent::Upgrade);
    assert_eq!(node.call("get", "a").unwrap(), "1");
    node.finalize_to(KvFeature::RecordChecksums).unwrap();

    node.restart_with_slv(1).unwrap(); // downgrade to a binary that knows the MLV
    assert_eq!(
        node.manager().unwrap().start_intent(),
        StartIntent::Downgrade
    );
    assert_eq!(node.call("get", "a").unwrap(), "1");
    assert_eq!(node.dir(), dir);

    node.restart().unwrap();
    assert_eq!(node.manager().unwrap().start_intent(), StartIntent::Normal);
    assert!(dir
        .join("layout")
        .join(layout_core::storage::VERSION_FILE_NAME)
        .exists());
}

#[test]
fn memory_storage_outlives_restarts_of_an_in_process_node() {
    let cluster = kv_cluster(2, KvFeature::Initial)
        .storage(StorageKind::Memory)
        .build()
        .unwrap();
    cluster.upgrade_all().unwrap();
    cluster.finalize_all().unwrap();
    cluster.restart_all().unwrap();
    for status in cluster.statuses().unwrap() {
        assert_eq!(status.metadata_layout_version, 3);
    }
    assert!(!cluster
        .node_dyn("kv-0")
        .unwrap()
        .dir()
        .join("layout")
        .exists());
}

#[test]
fn misconfigured_clusters_are_refused_with_a_reason() {
    let err = MiniCluster::builder().build().unwrap_err();
    assert!(err.to_string().contains("at least one kind"), "{err}");
    let err = MiniCluster::builder()
        .kind(Kind::<Kv>::new("kv").software_layout_version(9))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("beyond the catalog"), "{err}");
    let err = MiniCluster::builder()
        .kind(
            Kind::<Kv>::new("kv")
                .software_layout_version(1)
                .initial_layout_version(2),
        )
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("initial layout version 2"),
        "{err}"
    );
    let err = MiniCluster::builder()
        .kind(Kind::<Kv>::new("kv"))
        .kind(Kind::<Meta>::new("kv"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("two kinds are named kv"), "{err}");
    let err = MiniCluster::builder()
        .kind(Kind::<Kv>::new("kv"))
        .storage(StorageKind::Memory)
        .child_processes("some::test")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("StorageKind::File"), "{err}");
    let err = MiniCluster::builder()
        .kind(Kind::<Kv>::new("kv"))
        .storage(StorageKind::Unsynced)
        .child_processes("some::test")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("StorageKind::File"), "{err}");
}

/// Child-process nodes: SIGKILL one mid-life, restart it with another binary; what it
/// wrote before the kill is there, and the other nodes never noticed.
#[test]
fn a_child_process_node_killed_with_sigkill_restarts_from_its_directory() {
    if run_as_child_node::<Kv>() || run_as_child_node::<Meta>() {
        return;
    }
    let cluster = MiniCluster::builder()
        .kind(kv_kind(2, KvFeature::Initial))
        .kind(Kind::<Meta>::new("meta").software_layout_version(0))
        .child_processes(layout_testkit::test_name!())
        .build()
        .unwrap();
    let kv0 = cluster.node_dyn("kv-0").unwrap();
    kv0.call("put", "k=before").unwrap();
    kv0.kill().unwrap();
    assert!(!kv0.is_running());
    let err = kv0.call("get", "k").unwrap_err();
    assert!(matches!(err, MiniClusterError::NotRunning { .. }), "{err}");

    kv0.start(StartOptions::default().with_software_layout_version(3))
        .unwrap();
    assert_eq!(kv0.call("get", "k").unwrap(), "before");
    let status = kv0.status().unwrap();
    assert_eq!(
        (
            status.metadata_layout_version,
            status.software_layout_version
        ),
        (0, 3)
    );
    kv0.finalize().unwrap();
    assert_eq!(parse_scan(&kv0.call("scan", "").unwrap())["k"], "before");
    kv0.call("check", "").unwrap();

    // Errors cross the process boundary with their kind.
    let err = kv0.restart_with_slv(0).unwrap_err();
    assert!(err.is_disk_newer_than_software(), "{err}");
    let err = cluster
        .node_dyn("kv-1")
        .unwrap()
        .call("nope", "")
        .unwrap_err();
    assert!(err.to_string().contains("unknown operation nope"), "{err}");
    assert_eq!(
        cluster
            .node_dyn("meta-0")
            .unwrap()
            .metadata_layout_version()
            .unwrap(),
        0
    );
    cluster.stop_all().unwrap();
}
