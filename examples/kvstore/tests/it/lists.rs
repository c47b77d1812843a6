//! Lists in pages: `GET /kv?prefix=P&after=K&limit=N` and `GET /by-value` answer one
//! bounded page and a `next` cursor; following `next` yields every key exactly once, in
//! order; malformed cursors and limits are 400s. (The memory bound of many concurrent
//! lists over large values is measured by `cargo run --release -p kvstore --example list_memory`.)

use std::sync::Arc;
use std::time::Duration;

use kvstore::{
    KvClient, KvFeature, KvNode, KvNodeConfig, KvOptions, KvPage, MAX_KEY_BYTES,
    MAX_LIST_PAGE_BYTES,
};
use layout_core::clock::ManualClock;
use layout_core::{LayoutFeature, StartIntent};

use crate::support::{node, TOKEN};

const MIB: usize = 1 << 20;

/// A node at the latest layout accepting request bodies of up to `max_body_bytes`.
fn node_with_body_limit(dir: &std::path::Path, max_body_bytes: usize) -> KvNode {
    KvNode::start(
        KvNodeConfig::new(dir)
            .with_software_version(KvFeature::latest())
            .with_store_options(KvOptions::default().with_max_body_bytes(max_body_bytes))
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("node starts")
}

/// Follows `next` from the first page of `prefix` with `limit`; every page.
fn all_pages(client: &KvClient, prefix: &str, limit: Option<usize>) -> Vec<KvPage> {
    let mut pages: Vec<KvPage> = Vec::new();
    loop {
        let after = pages.last().and_then(|p| p.next.clone());
        if !pages.is_empty() && after.is_none() {
            return pages;
        }
        let page = client
            .list_page(prefix, after.as_deref(), limit)
            .expect("list page");
        assert!(
            pages.len() < 10_000,
            "the list does not end: {:?}",
            page.next
        );
        pages.push(page);
    }
}

fn page_bytes(page: &KvPage) -> usize {
    page.items.iter().map(|i| i.key.len() + i.value.len()).sum()
}

#[test]
fn following_next_lists_every_key_of_a_store_larger_than_a_page_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let store = node.store();
    let expected: Vec<(String, String)> = (0..2_500)
        .map(|i| (format!("k/{i:05}"), format!("v{i}")))
        .collect();
    for (key, value) in &expected {
        store.put(key, value).expect("put");
    }
    // Neighbours on both sides of the prefix stay out of the list.
    store.put("j/0", "before").expect("put");
    store.put("k0", "after").expect("put");
    let client = KvClient::new(node.http_addr());

    let pages = all_pages(&client, "k/", Some(1_000));
    let sizes: Vec<usize> = pages.iter().map(|p| p.items.len()).collect();
    assert_eq!(sizes, [1_000, 1_000, 500]);
    assert_eq!(pages[0].next.as_deref(), Some("k/00999"));
    assert_eq!(pages[1].next.as_deref(), Some("k/01999"));
    assert_eq!(
        pages[2].next, None,
        "the last page says the list is complete"
    );
    let listed: Vec<(String, String)> = pages
        .into_iter()
        .flat_map(|p| p.items)
        .map(|i| (i.key, i.value))
        .collect();
    assert_eq!(listed, expected, "every key once, in key order");

    // The default limit is 1,000 and says more follow; `list` follows `next` itself.
    let first = client.list_page("k/", None, None).expect("default page");
    assert_eq!(first.items.len(), 1_000);
    assert!(first.next.is_some());
    assert_eq!(client.list("k/").expect("list"), expected);
    assert_eq!(client.list("").expect("list").len(), 2_502);
    // A page that ends exactly at the last key has no `next`.
    let exact = client
        .list_page("k/", Some("k/01499"), Some(1_000))
        .expect("page");
    assert_eq!(exact.items.len(), 1_000);
    assert_eq!(exact.next, None);
    // In process, the same pages.
    let page = store.list_page("k/", Some("k/02497"), 10).expect("page");
    let keys: Vec<&str> = page.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["k/02498", "k/02499"]);
    assert_eq!(page.next, None);
    assert_eq!(store.list("k/").expect("list").len(), 2_500);
    node.shutdown().expect("shutdown");
}

#[test]
fn a_page_of_large_values_stops_at_the_byte_budget_and_still_makes_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with_body_limit(dir.path(), 2 * MIB);
    let client = KvClient::new(node.http_addr());
    let big: Vec<String> = (0..20)
        .map(|i| {
            let fill = char::from(b'a' + u8::try_from(i).expect("small"));
            fill.to_string().repeat(MIB)
        })
        .collect();
    for (i, value) in big.iter().enumerate() {
        client
            .put(&format!("big/{i:02}"), value)
            .expect("put 1 MiB");
    }
    // A value over the budget is a page of its own: one item per page, 20 pages.
    let pages = all_pages(&client, "big/", Some(1_000));
    assert_eq!(pages.len(), 20);
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page.items.len(), 1, "page {i}");
        assert_eq!(page.items[0].key, format!("big/{i:02}"));
        assert_eq!(page.items[0].value, big[i]);
    }

    // Smaller values fill a page up to the budget, never over it.
    let third = "m".repeat(300 * 1024);
    for i in 0..10 {
        client
            .put(&format!("mid/{i}"), &third)
            .expect("put 300 KiB");
    }
    let pages = all_pages(&client, "mid/", None);
    let sizes: Vec<usize> = pages.iter().map(|p| p.items.len()).collect();
    assert_eq!(sizes, [3, 3, 3, 1]);
    for page in &pages {
        assert!(page_bytes(page) <= MAX_LIST_PAGE_BYTES);
    }
    let keys: Vec<String> = pages
        .iter()
        .flat_map(|p| p.items.iter().map(|i| i.key.clone()))
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("mid/{i}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(client.list("big/").expect("list").len(), 20);
    node.shutdown().expect("shutdown");
}

#[test]
fn expired_values_are_skipped_but_count_toward_the_rows_a_page_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::at_ms(1_000_000));
    let node = KvNode::start(
        KvNodeConfig::new(dir.path())
            .with_software_version(KvFeature::latest())
            .with_store_options(KvOptions::default().with_clock(clock.clone()))
            .with_admin("127.0.0.1:0".parse().expect("addr"), TOKEN),
    )
    .expect("node starts");
    let client = KvClient::new(node.http_addr());
    for i in 0..10 {
        let key = format!("t/{i}");
        if i < 6 {
            client
                .put_with_ttl(&key, "gone", Duration::from_secs(1))
                .expect("put");
        } else {
            client.put(&key, "kept").expect("put");
        }
    }
    clock.advance(Duration::from_secs(2));
    // Six expired rows first: the first page of 4 reads 4 rows and answers none of
    // them, but `next` moves past them, so the list goes on.
    let first = client.list_page("t/", None, Some(4)).expect("page");
    assert!(first.items.is_empty());
    assert_eq!(first.next.as_deref(), Some("t/3"));
    let keys: Vec<String> = all_pages(&client, "t/", Some(4))
        .into_iter()
        .flat_map(|p| p.items.into_iter().map(|i| i.key))
        .collect();
    assert_eq!(keys, ["t/6", "t/7", "t/8", "t/9"]);
    node.shutdown().expect("shutdown");
}

#[test]
fn by_value_answers_pages_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(node.http_addr());
    let expected: Vec<String> = (0..25).map(|i| format!("key/{i:02}")).collect();
    for key in &expected {
        client.put(key, "shared").expect("put");
    }
    client.put("other", "different").expect("put");
    let mut keys = Vec::new();
    let mut sizes = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client
            .find_by_value_page("shared", after.as_deref(), Some(10))
            .expect("by-value page");
        sizes.push(page.keys.len());
        keys.extend(page.keys);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(keys, expected);
    assert_eq!(client.find_by_value("shared").expect("by value"), expected);
    node.shutdown().expect("shutdown");
}

#[test]
fn malformed_cursors_and_limits_are_bad_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(node.http_addr());
    client.put("a/1", "v").expect("put");
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    let refused = [
        "/kv?limit=0".to_owned(),
        "/kv?limit=-1".to_owned(),
        "/kv?limit=ten".to_owned(),
        "/kv?limit=".to_owned(),
        "/kv?limit=1.5".to_owned(),
        "/kv?limit=10001".to_owned(),
        "/kv?limit=99999999999999999999999".to_owned(),
        "/kv?after=".to_owned(),
        "/kv?after=%zz".to_owned(),
        "/kv?after=%FF".to_owned(),
        "/kv?prefix=%C3%28".to_owned(),
        format!("/kv?after={long}"),
        "/kv?prefix=a/&after=b/1".to_owned(),
        "/kv?prefix=a/&limt=5".to_owned(),
        "/kv?limit=1&limit=2".to_owned(),
        "/by-value?value=v&limit=0".to_owned(),
        "/by-value?value=v&limit=x".to_owned(),
        "/by-value?value=v&after=".to_owned(),
        "/by-value?value=v&cursor=a".to_owned(),
    ];
    for path in &refused {
        let (status, body) = client.raw("GET", path, None).expect("answer");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"bad_request\""), "{path}: {body}");
    }
    // The bounds themselves are accepted.
    for path in [
        "/kv?limit=1",
        "/kv?limit=10000",
        "/kv?prefix=a/&after=a/0",
        "/by-value?value=v&after=a/0&limit=10000",
    ] {
        let (status, body) = client.raw("GET", path, None).expect("answer");
        assert_eq!(status, 200, "{path}: {body}");
    }
    // An old client reading `items` of a small store still gets everything in one page.
    let (_, body) = client.raw("GET", "/kv?prefix=a/", None).expect("answer");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["items"][0]["key"], "a/1");
    assert!(body["next"].is_null(), "{body}");
    node.shutdown().expect("shutdown");
}
