//! Every HTTP error path answers a JSON error with the right status; none panics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use kvstore::{ClientError, KvClient, KvFeature, MAX_KEY_BYTES};
use layout_core::{LayoutFeature, StartIntent};

use crate::support::node;

type Case<'a> = (&'a str, &'a str, Option<&'a [u8]>, u16, &'a str);

fn kind(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
    v["error"]["kind"].as_str().expect("error.kind").to_owned()
}

#[test]
fn bad_requests_get_json_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(node.http_addr());
    // (method, path, body, status, error kind)
    let cases: &[Case<'_>] = &[
        ("PUT", "/kv/a", Some(b"{not json"), 400, "bad_request"),
        ("PUT", "/kv/a", Some(br#"{"value": 5}"#), 400, "bad_request"),
        (
            "PUT",
            "/kv/a",
            Some(br#"{"value": "x", "extra": 1}"#),
            400,
            "bad_request",
        ),
        ("PUT", "/kv/a", None, 400, "bad_request"),
        (
            "PUT",
            "/kv/%zz",
            Some(br#"{"value": "x"}"#),
            400,
            "bad_request",
        ),
        ("GET", "/kv/%ff", None, 400, "bad_request"),
        ("GET", "/kv/", None, 400, "bad_request"),
        ("GET", "/kv?prefix=%4", None, 400, "bad_request"),
        ("GET", "/by-value", None, 400, "bad_request"),
        ("POST", "/cas/a", Some(b"[]"), 400, "bad_request"),
        ("GET", "/kv/missing", None, 404, "not_found"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("POST", "/kv/a", Some(b"{}"), 405, "method_not_allowed"),
        ("DELETE", "/status", None, 405, "method_not_allowed"),
        ("GET", "/cas/a", None, 405, "method_not_allowed"),
    ];
    for (method, path, body, code, expected) in cases {
        let (status, text) = client.raw(method, path, *body).expect("raw");
        assert_eq!(
            (status, kind(&text).as_str()),
            (*code, *expected),
            "{method} {path}: {text}"
        );
    }
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    match client.put(&long, "v") {
        Err(ClientError::Status { code: 400, body }) => assert_eq!(kind(&body), "bad_request"),
        other => panic!("{other:?}"),
    }
    // Still serving.
    client.put("a", "fine").expect("put");
    node.shutdown().expect("shutdown");
}

#[test]
fn huge_bodies_and_heads_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let addr = node.http_addr();
    // One request per connection; the client closes its side, so the server closes the
    // connection after its answer (it keeps connections open otherwise).
    let exchange = |request: &[u8]| -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(request);
        // The client is done sending: a truncated request ends at EOF, not at a timeout.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let answer = exchange(b"PUT /kv/a HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    let mut head = b"GET /kv/a HTTP/1.1\r\nX: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 40_000));
    let answer = exchange(&head);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Chunked bodies are read; this one ends before its last chunk.
    let answer = exchange(b"PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_request"), "{answer}");
    let answer = exchange(b"garbage\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = exchange(b"GET /kv/a HTTP/1.1\r\nContent-Length: nope\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = exchange(b"PUT /kv/a HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"va");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    KvClient::new(addr).put("a", "still fine").expect("put");
    node.shutdown().expect("shutdown");
}

#[test]
fn a_stopped_server_is_unreachable_not_in_doubt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let addr = node.http_addr();
    let client = KvClient::with_timeout(addr, Duration::from_secs(5));
    node.shutdown().expect("shutdown");
    match client.put("a", "never sent") {
        Err(ClientError::Unreachable { addr: a, message }) => {
            assert_eq!(a, addr);
            assert!(!message.is_empty());
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(
        client.get("a").map_err(|e| e.kind()),
        Err(None),
        "no kind: the server sent nothing"
    );
}

#[test]
fn a_connection_cut_mid_request_is_a_transport_error() {
    // A server that reads the request and closes without answering: the request was
    // sent, its outcome is unknown.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 1024];
        let _ = std::io::Read::read(&mut stream, &mut buf);
        drop(stream);
    });
    let client = KvClient::with_timeout(addr, Duration::from_secs(5));
    let result = client.delete_with_index("a");
    server.join().expect("server thread");
    assert!(
        matches!(result, Err(ClientError::Transport(_))),
        "{result:?}"
    );
}

#[test]
fn delete_with_index_reports_the_delete_s_applied_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path(), KvFeature::latest(), StartIntent::Normal);
    let client = KvClient::new(node.http_addr());
    let put = client.put("a", "1").expect("put");
    assert_eq!(
        client.delete_with_index("a").expect("delete"),
        (true, put + 1)
    );
    assert_eq!(
        client.delete_with_index("a").expect("delete again"),
        (false, put + 2)
    );
    assert_eq!(client.status().expect("status").applied_index, put + 2);
    node.shutdown().expect("shutdown");
}
