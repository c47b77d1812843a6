//! put/get/list/delete over HTTP, node start and shutdown, the testkit component.

use kvstore::{KvClient, KvFeature, KvStore};
use layout_core::{LayoutFeature, StartIntent};
use layout_testkit::{Kind, MiniCluster};

use crate::support::node;

#[test]
fn put_get_list_delete_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(node.http_addr());
    let first = client.put("a/1", "one").expect("put");
    let second = client.put("a/2", "two").expect("put");
    client.put("b/1", "three").expect("put");
    assert!(second > first, "applied index is monotonic");
    assert_eq!(client.get("a/1").expect("get").as_deref(), Some("one"));
    assert_eq!(client.get("missing").expect("get"), None);
    assert_eq!(
        client.list("a/").expect("list"),
        vec![
            ("a/1".to_owned(), "one".to_owned()),
            ("a/2".to_owned(), "two".to_owned())
        ]
    );
    assert!(client.delete("a/1").expect("delete"));
    assert!(!client.delete("a/1").expect("delete again"));
    assert_eq!(client.get("a/1").expect("get"), None);
    let status = client.status().expect("status");
    assert_eq!(status.keys, 2);
    assert!(!status.pre_finalized);
    node.shutdown().expect("shutdown");
}

#[test]
fn keys_with_reserved_characters_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(node.http_addr());
    for key in [
        "a b",
        "slash/ed",
        "/leading",
        "trailing/",
        "a//b",
        "q?x=1&y#z",
        "ünï",
        "%41",
        "100%",
        "+plus+",
    ] {
        client.put(key, key).expect("put");
        assert_eq!(client.get(key).expect("get").as_deref(), Some(key));
    }
    assert_eq!(
        client.list("a//").expect("list"),
        vec![("a//b".to_owned(), "a//b".to_owned())]
    );
    assert!(client.delete("slash/ed").expect("delete"));
    node.shutdown().expect("shutdown");
}

#[test]
fn data_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let index = KvClient::new(first.http_addr()).put("k", "v").expect("put");
    first.shutdown().expect("shutdown");
    let second = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(second.http_addr());
    assert_eq!(client.get("k").expect("get").as_deref(), Some("v"));
    assert!(client.put("k2", "v").expect("put") > index);
    second.shutdown().expect("shutdown");
}

#[test]
fn runs_as_a_testkit_component() {
    let cluster = MiniCluster::builder()
        .kind(Kind::<KvStore>::new("kv").initial_layout_version(0))
        .build()
        .expect("cluster starts");
    let addr = cluster
        .node_dyn("kv-0")
        .expect("node")
        .call("http_addr", "")
        .expect("http_addr");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    cluster
        .node_dyn("kv-0")
        .expect("node")
        .call("put", "x=1")
        .expect("put");
    assert_eq!(
        cluster
            .node_dyn("kv-0")
            .expect("node")
            .call("get", "x")
            .expect("get"),
        "1"
    );
    cluster.finalize_all().expect("finalize");
    let node = cluster.node::<KvStore>("kv-0").expect("node");
    let store = node.component().expect("component");
    assert_eq!(store.status().expect("status").mlv, 4);
    assert_eq!(
        store.get("x").expect("get").map(|e| e.value).as_deref(),
        Some("1")
    );
}
