//! Prepare: writes refused with 503 `prepared`, reads served, the op log purged, a
//! snapshot exported, the marker kept across a restart and cleared by an upgrade start.

use kvstore::{ClientError, KvClient, KvFeature, SNAPSHOT_DIR};
use layout_core::{LayoutFeature, PrepareState, StartIntent};

use crate::support::{node, TOKEN};

#[test]
fn prepare_rejects_writes_and_the_marker_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(first.http_addr());
    for i in 0..5 {
        client.put(&format!("k{i}"), "v").expect("put");
    }
    assert_eq!(first.store().op_log().expect("log").0, 5);
    let index = first.prepare().expect("prepare");
    assert_eq!(index, 5);
    assert_eq!(
        first.store().op_log().expect("log").0,
        0,
        "purged through the index"
    );
    let snapshots: Vec<_> = std::fs::read_dir(dir.path().join("data").join(SNAPSHOT_DIR))
        .expect("snapshots")
        .collect();
    assert_eq!(snapshots.len(), 1);

    match client.put("k9", "v") {
        Err(ClientError::Prepared { message }) => assert!(message.contains("Put"), "{message}"),
        other => panic!("expected prepared, got {other:?}"),
    }
    let (code, body) = client.raw("DELETE", "/kv/k1", None).expect("raw");
    assert_eq!(code, 503);
    assert!(body.contains("\"kind\":\"prepared\""), "{body}");
    assert_eq!(client.get("k1").expect("reads go on").as_deref(), Some("v"));
    assert!(client.status().expect("status").prepared);
    first.shutdown().expect("shutdown");

    // A normal restart keeps the marker: still prepared.
    let second = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    assert_eq!(
        second.store().prepare_controller().state(),
        PrepareState::Prepared { index: 5 }
    );
    let client = KvClient::new(second.http_addr());
    assert!(matches!(
        client.put("k9", "v"),
        Err(ClientError::Prepared { .. })
    ));
    assert_eq!(client.status().expect("status").prepare_index, Some(5));
    second.shutdown().expect("shutdown");

    // Starting the new binary with the upgrade intent cancels prepare.
    let third = node(dir.path(), KvFeature::latest(), StartIntent::Upgrade);
    let client = KvClient::new(third.http_addr());
    assert_eq!(client.put("k9", "v").expect("writes again"), 6);
    third.shutdown().expect("shutdown");
}

#[test]
fn finalization_is_refused_while_prepared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = crate::support::fresh_prefinalized(dir.path(), KvFeature::latest());
    node.prepare().expect("prepare");
    let err = node
        .finalizer()
        .finalize("ops", node.store())
        .expect_err("refused while prepared");
    assert!(err.to_string().contains("prepare"), "{err}");
    node.store().cancel_prepare().expect("cancel");
    node.finalizer()
        .finalize("ops", node.store())
        .expect("finalize");
    assert_eq!(
        node.manager().metadata_layout_version(),
        KvFeature::latest().layout_version()
    );
    node.shutdown().expect("shutdown");
}

fn is_tmp(name: &str) -> bool {
    std::path::Path::new(name)
        .extension()
        .is_some_and(|e| e == "tmp")
}

/// The temporary snapshot files in `dir`'s snapshot directory.
fn snapshot_temps(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("data").join(SNAPSHOT_DIR))
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".snapshot-") && is_tmp(n))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_failed_snapshot_leaves_no_temporary_file_and_prepare_failed_names_the_cause() {
    use layout_core::admin::http::AdminClient;
    use layout_core::admin::PrepareParams;

    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(node.http_addr());
    for i in 0..3 {
        client.put(&format!("k{i}"), "v").expect("put");
    }
    // The snapshot's final name is taken by a directory: the snapshot is written in
    // full to its temporary file, and then the rename fails.
    let snapshots = dir.path().join("data").join(SNAPSHOT_DIR);
    std::fs::create_dir_all(snapshots.join(format!("snapshot-{:020}.jsonl", 3))).expect("mkdir");
    let cause = std::io::Error::from_raw_os_error(21).to_string(); // EISDIR

    let err = node.prepare().expect_err("the snapshot fails");
    let message = err.to_string();
    assert!(message.contains("snapshot"), "{message}");
    assert!(message.contains(&cause), "the cause was dropped: {message}");
    assert_eq!(snapshot_temps(dir.path()), Vec::<String>::new());

    // The admin API's prepare-failed answer carries the cause to layoutctl.
    let admin = AdminClient::new(
        &format!("http://{}", node.admin_addr().expect("admin endpoint")),
        TOKEN,
    )
    .expect("admin client");
    let err = admin
        .prepare(&PrepareParams::default())
        .expect_err("prepare fails");
    let message = err.to_string();
    assert!(
        message.contains(&cause),
        "prepare-failed dropped the cause: {message}"
    );
    assert_eq!(snapshot_temps(dir.path()), Vec::<String>::new());
    assert_eq!(
        node.store().prepare_controller().state(),
        PrepareState::NotPrepared
    );
    assert_eq!(client.put("k9", "v").expect("writable again"), 4);
    node.shutdown().expect("shutdown");
}

#[test]
fn stale_snapshot_temporary_files_are_removed_when_the_store_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    KvClient::new(first.http_addr()).put("k", "v").expect("put");
    first.prepare().expect("prepare");
    first.shutdown().expect("shutdown");

    // A prepare killed mid-snapshot left its temporary files; one is a symlink.
    let snapshots = dir.path().join("data").join(SNAPSHOT_DIR);
    let outside = tempfile::tempdir().expect("tempdir");
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"precious").expect("write");
    std::fs::write(
        snapshots.join(".snapshot-00000000000000000007.tmp"),
        b"{\"half",
    )
    .expect("write");
    std::os::unix::fs::symlink(
        &victim,
        snapshots.join(".snapshot-00000000000000000008.tmp"),
    )
    .expect("symlink");
    let kept: Vec<_> = std::fs::read_dir(&snapshots)
        .expect("snapshots")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| !is_tmp(&n.to_string_lossy()))
        .collect();
    assert_eq!(kept.len(), 1, "the finished snapshot");

    let second = node(dir.path(), KvFeature::latest(), StartIntent::Upgrade);
    assert_eq!(snapshot_temps(dir.path()), Vec::<String>::new());
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
    for name in &kept {
        assert!(
            snapshots.join(name).exists(),
            "a finished snapshot was removed"
        );
    }
    second.shutdown().expect("shutdown");
}
