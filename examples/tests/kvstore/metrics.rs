//! `GET /metrics` on the data API: the node's layout metrics in Prometheus text, behind
//! the admin token when the node has one.

use layout_core::StartIntent;
use layout_examples::kvstore::{KvClient, KvFeature, KvNode, KvNodeConfig};

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
