//! The value-index migration stopped in the middle: an older release that writes without
//! maintaining the index makes the next start begin the migration again (whatever the
//! start intent); the same release restarting resumes from its checkpoint.

use std::path::Path;
use std::sync::Arc;

use kvstore::{KvClient, KvFeature, KvNode, KvNodeConfig, KvOptions, KvStore};
use layout_core::migration::BatchEvent;
use layout_core::{LayoutFeature, StartIntent, UpgradeFinalizer};
use parking_lot::Mutex;

use crate::support::TOKEN;

type Finalizer = UpgradeFinalizer<KvFeature, KvStore>;

/// Keys per migration batch, rows written before the migration, batches committed before
/// the finalization is stopped.
const BATCH: usize = 10;
const ROWS: usize = 100;
const BATCHES_BEFORE_STOP: u64 = 3;

/// What the batch hook saw, and the finalizer it stops.
#[derive(Default)]
struct Recorder {
    finalizer: Mutex<Option<Arc<Finalizer>>>,
    /// Stop the finalization once this batch has committed.
    stop_after_batch: Mutex<Option<u64>>,
    events: Mutex<Vec<BatchEvent>>,
}

impl Recorder {
    fn options(self: &Arc<Self>) -> KvOptions {
        let me = Arc::clone(self);
        KvOptions::default()
            .with_migration_batch(BATCH)
            .with_index_batch_hook(Arc::new(move |event: &BatchEvent| {
                me.events.lock().push(event.clone());
                if let BatchEvent::BatchCommitted { index, .. } = event {
                    if *me.stop_after_batch.lock() == Some(*index) {
                        // What an operator's cancel does: the migration stops before its
                        // next batch and the finalization fails, MLV below ValueIndex.
                        if let Some(finalizer) = &*me.finalizer.lock() {
                            finalizer.cancel();
                        }
                    }
                }
            }))
    }

    fn attach(&self, node: &KvNode, stop_after_batch: Option<u64>) {
        *self.finalizer.lock() = Some(Arc::clone(node.finalizer()));
        *self.stop_after_batch.lock() = stop_after_batch;
        self.events.lock().clear();
    }

    fn detach(&self) {
        self.finalizer.lock().take();
    }

    fn events(&self) -> Vec<BatchEvent> {
        self.events.lock().clone()
    }
}

fn start(dir: &Path, software: KvFeature, intent: StartIntent, options: KvOptions) -> KvNode {
    let mut config = KvNodeConfig::new(dir)
        .with_software_version(software)
        .with_intent(intent)
        .with_store_options(options)
        .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN);
    if !dir.join("layout").join("VERSION").exists() {
        config = config.with_initial_version(KvFeature::Initial);
    }
    KvNode::start(config).expect("node starts")
}

/// The new release fills `ROWS` keys, then its finalization is stopped after
/// `BATCHES_BEFORE_STOP` batches of the index migration; the node is still running.
fn new_release_stopped_mid_migration(dir: &Path, recorder: &Arc<Recorder>) -> KvNode {
    let node = start(
        dir,
        KvFeature::latest(),
        StartIntent::Normal,
        recorder.options(),
    );
    recorder.attach(&node, Some(BATCHES_BEFORE_STOP - 1));
    let client = KvClient::new(node.http_addr());
    for i in 0..ROWS {
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        client.put(&format!("k{i:03}"), parity).expect("put");
    }
    let err = node
        .finalizer()
        .finalize("test", node.store())
        .expect_err("the finalization is stopped mid-migration");
    assert!(
        node.manager().metadata_layout_version() < KvFeature::ValueIndex.layout_version(),
        "{err}"
    );
    let figures = node.store().index_migration().expect("figures");
    assert!(!figures.complete, "{figures:?}");
    assert_eq!(
        figures.state,
        layout_core::admin::WireMigrationState::Interrupted,
        "{figures:?}"
    );
    assert_eq!(figures.batches, BATCHES_BEFORE_STOP, "{figures:?}");
    assert_eq!(
        figures.rows_done,
        BATCHES_BEFORE_STOP * BATCH as u64,
        "{figures:?}"
    );
    node
}

/// The index must be what a rebuild from the data gives: one entry per key, with its
/// current value, and nothing else.
fn assert_index_matches_data(node: &KvNode) {
    let client = KvClient::new(node.http_addr());
    let mut expected: Vec<(String, String)> = client
        .list("")
        .expect("list")
        .into_iter()
        .map(|(key, value)| (value, key))
        .collect();
    expected.sort();
    let mut entries = node.store().index_entries().expect("index entries");
    entries.sort();
    assert_eq!(entries, expected, "kv_by_value against a rebuild from kv");
    for value in ["even", "odd", "changed", "new"] {
        let keys: Vec<String> = expected
            .iter()
            .filter(|(v, _)| v == value)
            .map(|(_, k)| k.clone())
            .collect();
        assert_eq!(
            client.find_by_value(value).expect("by value"),
            keys,
            "{value}"
        );
    }
}

#[test]
fn an_older_release_writing_mid_migration_makes_a_normal_start_rebuild_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recorder = Arc::new(Recorder::default());
    let node = new_release_stopped_mid_migration(dir.path(), &recorder);
    // ExpiringValues was finalized before the migration began (MLV 1), so the older
    // release is the one at layout 1: it knows nothing of the value index.
    assert_eq!(
        node.manager().metadata_layout_version(),
        KvFeature::ExpiringValues.layout_version()
    );
    recorder.detach();
    node.shutdown().expect("shutdown");

    let old = start(
        dir.path(),
        KvFeature::ExpiringValues,
        StartIntent::Downgrade,
        KvOptions::default(),
    );
    let client = KvClient::new(old.http_addr());
    assert_eq!(client.status().expect("status").index_migration, None);
    // Before the migration's cursor (k029): an update, a delete, a delete then a put
    // with another value, a new key; after it: an update and a delete.
    client.put("k000", "changed").expect("update copied");
    assert!(client.delete("k001").expect("delete copied"));
    assert!(client.delete("k002").expect("delete copied"));
    client.put("k002", "new").expect("put again");
    client
        .put("a-new-key", "new")
        .expect("new key before the cursor");
    client
        .put("k090", "changed")
        .expect("update not yet copied");
    assert!(client.delete("k091").expect("delete not yet copied"));
    old.shutdown().expect("shutdown");

    // The new release again, with the NORMAL intent: nothing tells it about the
    // downgrade but the data.
    let node = start(
        dir.path(),
        KvFeature::latest(),
        StartIntent::Normal,
        recorder.options(),
    );
    recorder.attach(&node, None);
    let figures = node.store().index_migration().expect("figures");
    assert_eq!(
        figures.state,
        layout_core::admin::WireMigrationState::NotStarted,
        "reset on open: {figures:?}"
    );
    node.finalizer()
        .finalize("test", node.store())
        .expect("finalize");
    assert_eq!(node.manager().metadata_layout_version(), 4);
    let figures = node.store().index_migration().expect("figures");
    assert!(figures.complete, "{figures:?}");
    assert_eq!(figures.runs, 1, "started over: {figures:?}");
    let rows = KvClient::new(node.http_addr())
        .list("")
        .expect("list")
        .len() as u64;
    assert_eq!(figures.rows_done, rows, "every row read again: {figures:?}");
    assert!(
        matches!(
            recorder.events().first(),
            Some(BatchEvent::RunStarted { checkpoint }) if checkpoint.done == 0
        ),
        "{:?}",
        recorder.events()
    );
    assert_index_matches_data(&node);
    recorder.detach();
    node.shutdown().expect("shutdown");
}

#[test]
fn the_same_release_restarting_mid_migration_resumes_from_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recorder = Arc::new(Recorder::default());
    let node = new_release_stopped_mid_migration(dir.path(), &recorder);
    // Writes by the release itself after the stop are dual writes: they keep the index
    // in step, so they are no reason to start over.
    let client = KvClient::new(node.http_addr());
    client.put("k000", "changed").expect("update copied");
    assert!(client.delete("k001").expect("delete copied"));
    client
        .put("a-new-key", "new")
        .expect("new key before the cursor");
    client
        .put("k090", "changed")
        .expect("update not yet copied");
    recorder.detach();
    node.shutdown().expect("shutdown");

    let node = start(
        dir.path(),
        KvFeature::latest(),
        StartIntent::Normal,
        recorder.options(),
    );
    recorder.attach(&node, None);
    let figures = node.store().index_migration().expect("figures");
    assert_eq!(
        figures.state,
        layout_core::admin::WireMigrationState::Interrupted,
        "kept on open: {figures:?}"
    );
    assert_eq!(figures.batches, BATCHES_BEFORE_STOP, "{figures:?}");
    KvClient::new(node.http_addr())
        .put("k091", "changed")
        .expect("update after the restart");
    node.finalizer()
        .finalize("test", node.store())
        .expect("finalize");
    let figures = node.store().index_migration().expect("figures");
    assert!(figures.complete, "{figures:?}");
    assert_eq!(figures.runs, 2, "resumed, not started over: {figures:?}");
    // The resumed run began at the checkpoint, and its first batch is the one after the
    // last batch committed before the restart.
    let events = recorder.events();
    assert!(
        matches!(
            events.first(),
            Some(BatchEvent::RunStarted { checkpoint })
                if checkpoint.done == BATCHES_BEFORE_STOP * BATCH as u64
                    && checkpoint.batches == BATCHES_BEFORE_STOP
        ),
        "{events:?}"
    );
    let first_batch = events.iter().find_map(|e| match e {
        BatchEvent::BatchStarted { index } => Some(*index),
        _ => None,
    });
    assert_eq!(first_batch, Some(BATCHES_BEFORE_STOP), "{events:?}");
    // The key written before the cursor was dual-written, not read by the migration: a
    // run from the start would have read it too (ROWS + 1 rows).
    assert_eq!(figures.rows_done, ROWS as u64, "{figures:?}");
    assert_index_matches_data(&node);
    recorder.detach();
    node.shutdown().expect("shutdown");
}
