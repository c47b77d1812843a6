//! `GET /metrics` on the data API: the node's layout metrics in Prometheus text, behind
//! the admin token when the node has one.

use kvstore::{KvClient, KvFeature, KvNode, KvNodeConfig};
use layout_core::StartIntent;

use crate::support::{fresh_prefinalized, TOKEN};

fn kind(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
    v["error"]["kind"].as_str().expect("error.kind").to_owned()
}

/// The value of the unlabelled-but-`component` series `name` in `text`.
fn value(text: &str, name: &str) -> i64 {
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn metrics_answers_the_layout_versions_in_prometheus_text_behind_the_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = fresh_prefinalized(dir.path(), KvFeature::CompareAndSwap);
    let anonymous = KvClient::new(node.http_addr());

    let (status, body) = anonymous.raw("GET", "/metrics", None).expect("metrics");
    assert_eq!(
        (status, kind(&body).as_str()),
        (401, "unauthorized"),
        "{body}"
    );
    // The token guards /metrics only: the data API and its errors stay as they were.
    anonymous.put("k", "v").expect("put without a token");
    let (status, body) = anonymous.raw("GET", "/nowhere", None).expect("raw");
    assert_eq!((status, kind(&body).as_str()), (404, "not_found"), "{body}");

    let (status, text) = KvClient::new(node.http_addr())
        .with_token(TOKEN)
        .raw("GET", "/metrics", None)
        .expect("metrics");
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    assert!(
        text.contains("layout_metadata_layout_version{component=\"KvFeature\"} 0"),
        "{text}"
    );
    assert_eq!(value(&text, "layout_metadata_layout_version"), 0);
    assert_eq!(value(&text, "layout_software_layout_version"), 4);
    assert_eq!(value(&text, "layout_pre_finalized"), 1);
    node.shutdown().expect("shutdown");
}

#[test]
fn metrics_is_open_on_a_node_without_an_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = KvNode::start(
        KvNodeConfig::new(dir.path())
            .with_intent(StartIntent::Normal)
            .with_software_version(KvFeature::CompareAndSwap),
    )
    .expect("node starts");
    let (status, text) = KvClient::new(node.http_addr())
        .raw("GET", "/metrics", None)
        .expect("metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(value(&text, "layout_metadata_layout_version"), 4);
    assert_eq!(value(&text, "layout_pre_finalized"), 0);
    node.shutdown().expect("shutdown");
}

/// The value of `name{component="KvFeature",<label>}` in `text`.
fn labelled(text: &str, name: &str, label: &str) -> i64 {
    let prefix = format!("{name}{{component=\"KvFeature\",{label}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}

/// Scraped while the value-index migration (a real `BackgroundMigration`, the
/// `OnFinalize` action of `ValueIndex`) is held after its second batch, then after the
/// finalization: the progress figures and statuses move as the node does.
#[test]
fn metrics_follow_the_value_index_migration_while_it_runs_and_after() {
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    use kvstore::KvOptions;
    use layout_core::admin::http::AdminClient;
    use layout_core::admin::FinalizeParams;
    use layout_core::migration::BatchEvent;
    use layout_core::LayoutFeature;
    use parking_lot::Mutex;

    const BATCH: usize = 10;
    const ROWS: usize = 100;
    let (reached, at_batch) = mpsc::channel::<u64>();
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let hook = Arc::new(move |event: &BatchEvent| {
        if let BatchEvent::BatchCommitted { index: 1, done } = event {
            let _ = reached.send(*done);
            // Bounded, so a failing test cannot hang the suite.
            let _ = released.lock().recv_timeout(Duration::from_secs(60));
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let node = KvNode::start(
        KvNodeConfig::new(dir.path())
            .with_software_version(KvFeature::latest())
            .with_initial_version(KvFeature::Initial)
            .with_store_options(
                KvOptions::default()
                    .with_migration_batch(BATCH)
                    .with_index_batch_hook(hook),
            )
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("node starts");
    let client = KvClient::new(node.http_addr()).with_token(TOKEN);
    for i in 0..ROWS {
        client.put(&format!("k{i:03}"), "v").expect("put");
    }
    let scrape = || {
        let (status, text) = client.raw("GET", "/metrics", None).expect("metrics");
        assert_eq!(status, 200, "{text}");
        text
    };
    let admin = AdminClient::new(
        &format!("http://{}", node.admin_addr().expect("admin endpoint")),
        TOKEN,
    )
    .expect("admin client");
    admin
        .finalize(&FinalizeParams::new("ops"))
        .expect("finalization starts");
    let done = at_batch
        .recv_timeout(Duration::from_secs(60))
        .expect("the migration reached its second batch");
    assert_eq!(done, 2 * BATCH as u64);

    let during = scrape();
    assert_eq!(value(&during, "layout_finalization_running"), 1);
    assert_eq!(
        labelled(
            &during,
            "layout_finalization_status",
            "status=\"FINALIZATION_IN_PROGRESS\""
        ),
        1
    );
    assert_eq!(value(&during, "layout_finalization_action_done"), 20);
    assert_eq!(value(&during, "layout_pre_finalized"), 1);
    assert!(
        value(&during, "layout_metadata_layout_version")
            < i64::from(KvFeature::ValueIndex.layout_version()),
        "{during}"
    );

    release.send(()).expect("release the migration");
    let mut finished = false;
    for _ in 0..6_000 {
        if !admin.finalization_status().expect("status").running {
            finished = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(finished, "the finalization never ended");
    let after = scrape();
    assert_eq!(value(&after, "layout_finalization_running"), 0);
    assert_eq!(
        labelled(
            &after,
            "layout_finalization_status",
            "status=\"FINALIZATION_DONE\""
        ),
        1
    );
    assert_eq!(value(&after, "layout_pre_finalized"), 0);
    assert_eq!(
        value(&after, "layout_metadata_layout_version"),
        i64::from(KvFeature::latest().layout_version())
    );
    assert_eq!(value(&after, "layout_finalization_failures_total"), 0);
    node.shutdown().expect("shutdown");
}
