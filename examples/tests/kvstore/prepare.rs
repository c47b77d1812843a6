//! Prepare: writes refused with 503 `prepared`, reads served, the op log purged, a
//! snapshot exported, the marker kept across a restart and cleared by an upgrade start.

use layout_core::{LayoutFeature, PrepareState, StartIntent};
use layout_examples::kvstore::{ClientError, KvClient, KvFeature, SNAPSHOT_DIR};

use crate::support::node;

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
