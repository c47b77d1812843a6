//! Hostile input: malformed bodies, wrong tokens, broken heads, slow clients. No panic,
//! no hang, no state change, and the endpoint still serves afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use layout_core::admin::{ErrorCode, FinalizeParams, FinalizeResponse, PrepareParams};

use crate::support::{error_code, raw, request, Fixture, TOKEN};

/// `SplitMix64`: a seeded generator, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SEED: u64 = 0x6c61_796f_7574;

/// A body that is never a valid request for `path`.
fn malformed_body(rng: &mut Rng, i: usize) -> Vec<u8> {
    let valid = r#"{"api_version":1,"client_id":"ops","takeover":false,"target":"MultiTenancy","dry_run":false,"overrides":[{"condition":"no-open-containers","reason":"r"}]}"#;
    match i % 6 {
        // Random bytes.
        0 => {
            let len = rng.below(300);
            rng.bytes(len)
        }
        // Near-valid JSON with a wrong type.
        1 => {
            let field = rng.pick(&[
                r#""api_version":"1""#,
                r#""api_version":-1"#,
                r#""api_version":1.5"#,
                r#""api_version":null"#,
                r#""client_id":7"#,
                r#""client_id":["ops"]"#,
                r#""takeover":"true""#,
                r#""dry_run":1"#,
                r#""target":{}"#,
                r#""overrides":"none""#,
                r#""overrides":[{"condition":1,"reason":"r"}]"#,
            ]);
            let others = r#""api_version":1,"client_id":"ops""#;
            let key = field.split(':').next().unwrap();
            let others: Vec<&str> = others.split(',').filter(|f| !f.starts_with(key)).collect();
            format!("{{{field},{}}}", others.join(",")).into_bytes()
        }
        // Huge numbers.
        2 => {
            let number = rng.pick(&[
                "4294967296",
                "99999999999999999999999999999999",
                "1e400",
                "-0",
                "18446744073709551616",
            ]);
            format!(r#"{{"api_version":{number},"client_id":"ops"}}"#).into_bytes()
        }
        // Unknown fields (and a valid rest).
        3 => {
            let field = rng.pick(&["force", "api_versions", "clientId", "__proto__", ""]);
            format!(r#"{{"api_version":1,"client_id":"ops","{field}":true}}"#).into_bytes()
        }
        // Truncated valid JSON.
        4 => {
            let cut = 1 + rng.below(valid.len() - 1);
            valid.as_bytes()[..cut].to_vec()
        }
        // Deep nesting, empty, and other shapes.
        _ => match rng.below(4) {
            0 => "[".repeat(5_000).into_bytes(),
            1 => Vec::new(),
            2 => b"null".to_vec(),
            _ => format!("{valid}{valid}").into_bytes(),
        },
    }
}

#[test]
fn a_thousand_malformed_bodies_change_nothing() {
    let fx = Fixture::start();
    let before = fx.version_bytes();
    let mut rng = Rng(SEED);
    let paths = [
        "/v1/finalize",
        "/v1/prepare",
        "/v1/cancel-prepare",
        "/v1/finalization-status",
    ];
    let mut sent = 0;
    for i in 0..1_000 {
        let body = malformed_body(&mut rng, i);
        let path = paths[i % paths.len()];
        // prepare and cancel-prepare take only api_version and client_id: skip bodies
        // that happen to be valid for them.
        let valid_elsewhere = path != "/v1/finalize"
            && serde_json::from_slice::<layout_core::admin::PrepareParams>(&body)
                .is_ok_and(|p| p.api_version == 1);
        let valid_status = path == "/v1/finalization-status"
            && serde_json::from_slice::<layout_core::admin::FinalizationStatusParams>(&body)
                .is_ok_and(|p| p.api_version == 1);
        if valid_elsewhere || valid_status {
            continue;
        }
        sent += 1;
        let (status, answer) = raw(fx.addr, &request("POST", path, &body));
        let code = error_code(&answer);
        assert!(
            status == 400
                && matches!(
                    code.as_str(),
                    "bad-request" | "unsupported-api-version" | "invalid-argument"
                ),
            "seed {SEED:#x}, case {i} on {path}: {status} {answer}\nbody: {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    assert!(
        sent >= 990,
        "only {sent} of 1,000 bodies were malformed for their path"
    );
    assert_eq!(fx.version_bytes(), before, "VERSION changed");
    still_serves(&fx);
    still_changes_state(&fx);
}

#[test]
fn wrong_tokens_of_the_right_length_and_broken_heads_are_refused() {
    let fx = Fixture::start();
    let before = fx.version_bytes();
    let mut rng = Rng(SEED ^ 1);
    let finalize = br#"{"api_version":1,"client_id":"ops"}"#;
    for _ in 0..100 {
        let wrong: String = (0..TOKEN.len())
            .map(|_| char::from(b'!' + u8::try_from(rng.below(94)).unwrap()))
            .collect();
        let head = format!(
            "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {wrong}\r\nContent-Length: {}\r\n\r\n",
            finalize.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(finalize);
        let (status, answer) = raw(fx.addr, &bytes);
        assert_eq!(
            (status, error_code(&answer).as_str()),
            (401, "unauthorized")
        );
    }
    for (bytes, expected) in &broken_heads() {
        let what = String::from_utf8_lossy(bytes);
        let answer = crate::support::raw_or_closed(fx.addr, bytes);
        if *expected == 401 {
            let (status, answer) = answer.unwrap_or_else(|| panic!("{what:?}: no answer"));
            assert_eq!(status, 401, "{what:?}: {answer}");
            assert_eq!(error_code(&answer), "unauthorized", "{what:?}");
        } else if let Some((status, answer)) = answer {
            // Refused with a 4xx, or (None) the connection closed without an answer.
            assert!((400..500).contains(&status), "{what:?}: {status} {answer}");
        }
    }
    // Random garbage heads: refused (any 4xx) or closed without an answer.
    for _ in 0..200 {
        let len = rng.below(200);
        let mut bytes = rng.bytes(len);
        bytes.extend_from_slice(b"\r\n\r\n");
        if let Some((status, answer)) = crate::support::raw_or_closed(fx.addr, &bytes) {
            assert!((400..500).contains(&status), "{status}: {answer}");
        }
    }
    // A body shorter than announced, then the client stops sending.
    let mut short = TcpStream::connect(fx.addr).unwrap();
    short
        .write_all(
            format!(
                "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"api"
            )
            .as_bytes(),
        )
        .unwrap();
    short.shutdown(std::net::Shutdown::Write).unwrap();
    let (status, _) = crate::support::read_answer(&mut short);
    assert_eq!(status, 400);

    assert_eq!(fx.version_bytes(), before, "VERSION changed");
    still_serves(&fx);
    still_changes_state(&fx);
}

#[test]
fn slow_clients_are_cut_off_by_the_request_timeout() {
    let fx = Fixture::start();
    let before = fx.version_bytes();
    // Connects and sends nothing; another connects and says nothing at all after the
    // request line.
    let mut silent = TcpStream::connect(fx.addr).unwrap();
    let mut partial = TcpStream::connect(fx.addr).unwrap();
    partial
        .write_all(b"POST /v1/finalize HTTP/1.1\r\n")
        .unwrap();
    // A trickling client: one byte of a valid request at a time, forever. The server
    // must answer 408 (and close) before it is done.
    let mut trickle = TcpStream::connect(fx.addr).unwrap();
    trickle.set_nonblocking(true).unwrap();
    let body = br#"{"api_version":1,"client_id":"slow"}"#;
    let full = request("POST", "/v1/finalize", body);
    let mut answer = Vec::new();
    let mut cut_off = false;
    'trickle: for &byte in full.iter().cycle().take(400) {
        if trickle.write_all(&[byte]).is_err() {
            cut_off = true;
            break;
        }
        // Pacing of the simulated slow client (not a wait for an event).
        std::thread::sleep(Duration::from_millis(10));
        let mut buf = [0u8; 1024];
        loop {
            match trickle.read(&mut buf) {
                Ok(0) => {
                    cut_off = true;
                    break 'trickle;
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    cut_off = true;
                    break 'trickle;
                }
            }
        }
    }
    assert!(cut_off, "the trickling client was never cut off");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty(), "{answer}");

    // Meanwhile, and afterwards, the endpoint serves.
    still_serves(&fx);
    // A connection whose request head does not arrive within the timeout is closed
    // (by hyper's header read timeout), without an answer.
    for stream in [&mut silent, &mut partial] {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        assert!(crate::support::closed_without_answer(stream));
    }
    assert_eq!(fx.version_bytes(), before, "VERSION changed");
}

/// Heads with a missing, empty, foreign or doubled token, broken framing, broken
/// request lines and headers, and the status each must get: 401 with the admin error
/// body for a token problem; for a request hyper refuses before routing, 400 means "any
/// 4xx" (hyper answers a bare 400 or 431 and closes; a route may answer 401, 404 or 405).
fn broken_heads() -> Vec<(Vec<u8>, u16)> {
    vec![
        // No Authorization at all, an empty one, another scheme, two of them.
        (b"POST /v1/finalize HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 401),
        (b"GET /v1/status HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n".to_vec(), 401),
        (b"GET /v1/status HTTP/1.1\r\nAuthorization: Bearer \r\n\r\n".to_vec(), 401),
        (
            format!("GET /v1/status HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\n\r\n").into_bytes(),
            401,
        ),
        (
            format!(
                "GET /v1/status HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .into_bytes(),
            401,
        ),
        // Missing or broken framing headers (no body: an empty finalize request).
        (
            format!("POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").into_bytes(),
            400,
        ),
        (
            format!(
                "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: +15\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
        ),
        (
            format!(
                "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: ten\r\n\r\n"
            )
            .into_bytes(),
            400,
        ),
        (
            format!(
                "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
        ),
        (
            format!(
                "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
            )
            .into_bytes(),
            400,
        ),
        // Broken request lines and headers.
        (b"\r\n\r\n".to_vec(), 400),
        (b"GET\r\n\r\n".to_vec(), 400),
        (b"get /v1/status HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /v1/status HTTP/2.0\r\n\r\n".to_vec(), 400),
        (b"GET http://x/v1/status HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /v1/status HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(), 400),
        (b"GET /v1/status HTTP/1.1\r\n folded: header\r\n\r\n".to_vec(), 400),
        (b"GET /v1/\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /v1/status HTTP/1.9\r\n\r\n".to_vec(), 400),
        // An HTTP/2 preface: the endpoints speak HTTP/1.1 only (an HTTP/2 answer would
        // not parse as an HTTP/1.1 status line, and fail the test).
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 400),
        (b"GET /v1/st\x01atus HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /v1/status HTTP/1.1\r\nX: a\x00b\r\n\r\n".to_vec(), 400),
    ]
}

/// Valid read requests still succeed.
fn still_serves(fx: &Fixture) {
    let client = fx.client();
    assert_eq!(client.status().unwrap().metadata_layout_version, 1);
    let (status, _) = raw(fx.addr, &request("GET", "/v1/features", b""));
    assert_eq!(status, 200);
    let plan = client
        .finalize(&FinalizeParams::new("ops").with_dry_run(true))
        .unwrap();
    assert!(matches!(plan, FinalizeResponse::DryRun { .. }));
}

/// A valid request that changes state still succeeds (after the VERSION checks).
fn still_changes_state(fx: &Fixture) {
    let client = fx.client();
    let prepared = client.prepare(&PrepareParams::default()).unwrap();
    assert_eq!(
        prepared.state,
        layout_core::admin::WirePrepareState::Prepared
    );
    let done = fx.finalize(&FinalizeParams::new("ops"));
    assert_eq!(done.unwrap_err().code(), Some(ErrorCode::Prepared));
    client.cancel_prepare(&PrepareParams::default()).unwrap();
    let done = fx.finalize(&FinalizeParams::new("ops")).unwrap();
    assert!(
        matches!(
            done,
            FinalizeResponse::Done {
                metadata_layout_version: 3,
                ..
            }
        ),
        "{done:?}"
    );
}
