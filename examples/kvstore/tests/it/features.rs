//! Each layout feature: refused before finalization (exact kind and feature name),
//! working after; TTL on an injected clock; both encodings; the value index with writes
//! made during its migration; old software reading what new pre-finalized software wrote.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvstore::codec::COMPACT_TAG;
use kvstore::{ClientError, KvClient, KvFeature, KvNode, KvNodeConfig, KvOptions};
use layout_core::clock::ManualClock;
use layout_core::migration::BatchEvent;
use layout_core::{LayoutFeature, StartIntent};

use crate::support::{node, TOKEN};

fn start(dir: &std::path::Path, options: KvOptions) -> KvNode {
    KvNode::start(
        KvNodeConfig::new(dir)
            .with_initial_version(KvFeature::Initial)
            .with_store_options(options)
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("node starts")
}

fn finalize(node: &KvNode) {
    node.finalizer()
        .finalize("test", node.store())
        .expect("finalize");
    assert_eq!(node.manager().metadata_layout_version(), 4);
}

fn assert_not_finalized<T: std::fmt::Debug>(result: Result<T, ClientError>, feature: KvFeature) {
    match result {
        Err(ClientError::NotFinalized {
            feature: f,
            message,
        }) => {
            assert_eq!(f, feature.name());
            assert!(message.contains(feature.name()), "{message}");
        }
        other => panic!(
            "expected not_finalized for {}, got {other:?}",
            feature.name()
        ),
    }
}

#[test]
fn every_feature_is_refused_before_finalization_and_works_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path(), KvOptions::default());
    let client = KvClient::new(node.http_addr());
    assert!(client.status().expect("status").pre_finalized);
    client.put("k", "v").expect("plain put works pre-finalized");

    assert_not_finalized(
        client.put_with_ttl("t", "v", Duration::from_secs(60)),
        KvFeature::ExpiringValues,
    );
    assert_not_finalized(client.find_by_value("v"), KvFeature::ValueIndex);
    assert_not_finalized(
        client.compare_and_swap("k", Some("v"), "w"),
        KvFeature::CompareAndSwap,
    );
    // The raw answer: 403 with the kind and the feature.
    let (code, body) = client
        .raw("POST", "/cas/k", Some(br#"{"expected":"v","value":"w"}"#))
        .expect("raw");
    assert_eq!(code, 403);
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["kind"], "not_finalized");
    assert_eq!(body["error"]["feature"], "CompareAndSwap");
    assert!(
        node.store().has_table("kv_expiry").expect("tables"),
        "first-upgrade action ran"
    );
    assert!(!node.store().has_table("kv_by_value").expect("tables"));

    finalize(&node);
    client
        .put_with_ttl("t", "v", Duration::from_secs(60))
        .expect("ttl put");
    assert_eq!(client.find_by_value("v").expect("by value"), ["k", "t"]);
    assert!(client.compare_and_swap("k", Some("v"), "w").expect("cas"));
    assert!(!client.compare_and_swap("k", Some("v"), "x").expect("cas"));
    assert!(client
        .compare_and_swap("new", None, "n")
        .expect("cas absent"));
    assert_eq!(client.get("k").expect("get").as_deref(), Some("w"));
    assert_eq!(client.find_by_value("w").expect("by value"), ["k"]);
    assert_eq!(client.find_by_value("v").expect("by value"), ["t"]);
    node.shutdown().expect("shutdown");
}

#[test]
fn values_expire_on_the_injected_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::at_ms(1_000_000));
    let node = start(dir.path(), KvOptions::default().with_clock(clock.clone()));
    finalize(&node);
    let client = KvClient::new(node.http_addr());
    client
        .put_with_ttl("short", "s", Duration::from_secs(10))
        .expect("put");
    client.put("long", "l").expect("put");
    let (_, body) = client.raw("GET", "/kv/short", None).expect("raw");
    assert!(body.contains("\"expires_at_ms\":1010000"), "{body}");
    clock.advance(Duration::from_secs(9));
    assert_eq!(client.get("short").expect("get").as_deref(), Some("s"));
    clock.advance(Duration::from_secs(1));
    assert_eq!(client.get("short").expect("get"), None);
    assert_eq!(
        client.list("").expect("list"),
        [("long".to_owned(), "l".to_owned())]
    );
    assert!(client.find_by_value("s").expect("by value").is_empty());
    // Overwriting without a TTL makes the value permanent again.
    client.put("short", "again").expect("put");
    clock.advance(Duration::from_secs(3600));
    assert_eq!(client.get("short").expect("get").as_deref(), Some("again"));
    node.shutdown().expect("shutdown");
}

#[test]
fn both_encodings_are_readable_after_finalization() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path(), KvOptions::default());
    let client = KvClient::new(node.http_addr());
    client.put("old", "written as v0").expect("put");
    assert_eq!(client.status().expect("status").encoding, "v0-json");
    let raw = node
        .store()
        .raw_record("old")
        .expect("raw")
        .expect("present");
    assert_eq!(raw.first(), Some(&b'{'));
    finalize(&node);
    client.put("new", "written as v3").expect("put");
    assert_eq!(client.status().expect("status").encoding, "v3-compact");
    let raw = node
        .store()
        .raw_record("new")
        .expect("raw")
        .expect("present");
    assert_eq!(raw.first(), Some(&COMPACT_TAG));
    assert_eq!(
        client.get("old").expect("get").as_deref(),
        Some("written as v0")
    );
    assert_eq!(
        client.get("new").expect("get").as_deref(),
        Some("written as v3")
    );
    node.shutdown().expect("shutdown");
}

#[test]
fn value_index_is_complete_and_consistent_with_writes_made_during_its_migration() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The hook writes through the HTTP API after the first committed batch: an update of
    // a copied key, a delete of a copied key, an update and a delete of keys not yet
    // copied, and a new key.
    let addr: Arc<parking_lot::Mutex<Option<std::net::SocketAddr>>> = Arc::default();
    let fired = Arc::new(AtomicUsize::new(0));
    let hook = {
        let addr = Arc::clone(&addr);
        let fired = Arc::clone(&fired);
        Arc::new(move |event: &BatchEvent| {
            if let BatchEvent::BatchCommitted { index: 0, .. } = event {
                let Some(addr) = *addr.lock() else { return };
                let client = KvClient::new(addr);
                client.put("k000", "changed").expect("update copied");
                client.delete("k001").expect("delete copied");
                client
                    .put("k090", "changed")
                    .expect("update not yet copied");
                client.delete("k091").expect("delete not yet copied");
                client.put("zzz", "even").expect("new key");
                fired.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let node = start(
        dir.path(),
        KvOptions::default()
            .with_migration_batch(10)
            .with_index_batch_hook(hook),
    );
    *addr.lock() = Some(node.http_addr());
    let client = KvClient::new(node.http_addr());
    for i in 0..100 {
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        client.put(&format!("k{i:03}"), parity).expect("put");
    }
    finalize(&node);
    assert_eq!(
        fired.load(Ordering::SeqCst),
        1,
        "the hook wrote during the migration"
    );

    // The index agrees with the data, key by key.
    let items = client.list("").expect("list");
    for value in ["even", "odd", "changed"] {
        let mut expected: Vec<String> = items
            .iter()
            .filter(|(_, v)| v == value)
            .map(|(k, _)| k.clone())
            .collect();
        expected.sort();
        assert_eq!(
            client.find_by_value(value).expect("by value"),
            expected,
            "{value}"
        );
    }
    assert_eq!(
        client.find_by_value("changed").expect("by value"),
        ["k000", "k090"]
    );
    assert!(!client
        .find_by_value("odd")
        .expect("by value")
        .contains(&"k001".to_owned()));
    assert!(!client
        .find_by_value("odd")
        .expect("by value")
        .contains(&"k091".to_owned()));
    let figures = node.store().index_migration().expect("figures");
    assert!(figures.complete);
    assert_eq!(
        figures.state,
        layout_core::admin::WireMigrationState::Complete
    );
    assert!(figures.batches >= 10, "{figures:?}");
    assert!(figures.rows_done >= 99, "{figures:?}");
    let status = client.status().expect("status");
    assert_eq!(status.index_migration, Some(figures));
    node.shutdown().expect("shutdown");
}

#[test]
fn old_software_reads_what_new_prefinalized_software_wrote_after_a_downgrade() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The old release installs and writes.
    let old = start_as(dir.path(), KvFeature::Initial, StartIntent::Normal);
    KvClient::new(old.http_addr())
        .put("from-old", "1")
        .expect("put");
    old.shutdown().expect("shutdown");
    // The new release runs pre-finalized and writes.
    let new = start_as(dir.path(), KvFeature::latest(), StartIntent::Upgrade);
    let client = KvClient::new(new.http_addr());
    assert!(client.status().expect("status").pre_finalized);
    client.put("from-new", "2").expect("put");
    client.put("from-old", "updated").expect("put");
    new.shutdown().expect("shutdown");
    // Downgrade: the old release reads all of it.
    let old = start_as(dir.path(), KvFeature::Initial, StartIntent::Downgrade);
    let client = KvClient::new(old.http_addr());
    assert_eq!(client.status().expect("status").slv, 0);
    assert_eq!(client.get("from-new").expect("get").as_deref(), Some("2"));
    assert_eq!(
        client.get("from-old").expect("get").as_deref(),
        Some("updated")
    );
    client.put("after-downgrade", "3").expect("put");
    old.shutdown().expect("shutdown");
    // Upgrade again and finalize: the index covers what the old release wrote.
    let new = start_as(dir.path(), KvFeature::latest(), StartIntent::Upgrade);
    finalize(&new);
    let client = KvClient::new(new.http_addr());
    assert_eq!(
        client.find_by_value("3").expect("by value"),
        ["after-downgrade"]
    );
    new.shutdown().expect("shutdown");
    // Downgrade after finalization is refused.
    let refused = KvNode::start(
        KvNodeConfig::new(dir.path())
            .with_software_version(KvFeature::Initial)
            .with_intent(StartIntent::Downgrade),
    );
    let err = refused.expect_err("old software refuses a finalized disk");
    assert!(err.to_string().contains("CompareAndSwap"), "{err}");
}

fn start_as(dir: &std::path::Path, software: KvFeature, intent: StartIntent) -> KvNode {
    if dir.join("layout").join("VERSION").exists() {
        node(dir, software, intent)
    } else {
        KvNode::start(
            KvNodeConfig::new(dir)
                .with_software_version(software)
                .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
        )
        .expect("node starts")
    }
}
