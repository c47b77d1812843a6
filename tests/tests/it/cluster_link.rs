//! The member link over HTTP: `CoordinatorServer` and `HttpLink` behind the cluster token,
//! malformed requests, the loopback-or-TLS rule, a restarted coordinator, and the
//! coordinator's metrics.

use std::sync::Arc;
use std::time::Duration;

use layout_core::clock::ManualClock;
use layout_core::cluster::{
    ClusterStatus, ClusterStore, Coordinator, CoordinatorLink, CoordinatorOptions,
    CoordinatorServer, EmbeddedStore, FinalizationCheckpoint, HeartbeatError, HttpLink, LinkError,
    MemberReport, Refusal, HEARTBEAT_PATH, LEAVE_PATH, REGISTER_PATH,
};
use layout_core::http::{BearerToken, ClientConfig, EndpointConfig, EndpointError};
use layout_testkit::PlanRng;

use layout_tests::cluster::KIND;

const TOKEN: &str = "member-link-token-0123456789";

fn token() -> BearerToken {
    BearerToken::new(TOKEN).unwrap()
}

fn client() -> ClientConfig {
    ClientConfig::new(Duration::from_secs(30))
}

fn report(id: &str, slv: u32, mlv: u32) -> MemberReport {
    MemberReport::new(KIND, id, slv, mlv)
}

/// A coordinator on an in-memory store whose leases run on `clock` (so nothing lapses
/// while a test runs), served on a loopback port.
fn served(clock: &Arc<ManualClock>) -> (Arc<Coordinator>, CoordinatorServer) {
    let store = EmbeddedStore::in_memory();
    let options = CoordinatorOptions::default()
        .with_member_lease_ttl(Duration::from_secs(10))
        .with_clock(clock.clone());
    let coordinator = Arc::new(Coordinator::open(Arc::new(store), options).unwrap());
    let server = CoordinatorServer::bind_loopback(Arc::clone(&coordinator), 0, token()).unwrap();
    (coordinator, server)
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::at_ms(1_767_225_600_000))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// One raw request: the status, the `WWW-Authenticate` header and the body.
fn raw(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> (u16, Option<String>, String) {
    let mut response = if method == "POST" {
        let mut request = agent.post(url);
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        request.send(body).unwrap()
    } else {
        let mut request = agent.get(url);
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        request.call().unwrap()
    };
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.body_mut().read_to_string().unwrap();
    (status, challenge, text)
}

fn state(coordinator: &Coordinator) -> ClusterStatus {
    coordinator.status(KIND).unwrap()
}

#[test]
fn a_member_without_the_cluster_token_is_refused_with_401_and_never_becomes_a_member() {
    let clock = clock();
    let (coordinator, server) = served(&clock);
    let member = HttpLink::new(&server.url(), token(), client()).unwrap();
    member.register(&report("dn1", 2, 1)).unwrap();
    let before = state(&coordinator);

    // Through the link: another token, even one differing in its last character.
    let wrong = format!("{}X", &TOKEN[..TOKEN.len() - 1]);
    for presented in [wrong.as_str(), "another-cluster-0123456789"] {
        let intruder = HttpLink::new(
            &server.url(),
            BearerToken::new(presented).unwrap(),
            client(),
        )
        .unwrap();
        for result in [
            intruder.register(&report("evil", 2, 1)),
            intruder.heartbeat(&report("evil", 2, 1)),
            intruder.heartbeat(&report("dn1", 2, 1)),
        ] {
            match result {
                Err(HeartbeatError::Unauthorized { reason }) => {
                    assert!(
                        reason.contains(&server.url()),
                        "names the coordinator: {reason}"
                    );
                    assert!(reason.contains("wrong"), "{reason}");
                }
                other => panic!("expected Unauthorized, got {other:?}"),
            }
        }
    }
    let error = HttpLink::new(
        &server.url(),
        BearerToken::new("another-cluster-0123456789").unwrap(),
        client(),
    )
    .unwrap()
    .register(&report("evil", 2, 1))
    .unwrap_err();
    assert!(error.to_string().contains("cluster token"), "{error}");

    // Raw requests: no header, another scheme, two headers' worth of garbage.
    let agent = agent();
    let body = serde_json::to_vec(&report("evil", 2, 1)).unwrap();
    // An unknown path is behind the token too: without it, 401, never 404.
    for path in [
        REGISTER_PATH,
        HEARTBEAT_PATH,
        LEAVE_PATH,
        LEAVE_PATH,
        "/v1/cluster/unknown",
    ] {
        let url = format!("{}{path}", server.url());
        for authorization in [
            None,
            Some(format!("Basic {TOKEN}")),
            Some("Bearer".to_owned()),
            Some(format!("Bearer {TOKEN}0")),
        ] {
            let (status, challenge, text) =
                raw(&agent, "POST", &url, authorization.as_deref(), &body);
            assert_eq!(status, 401, "{authorization:?}: {text}");
            assert!(
                challenge.is_some_and(|c| c.starts_with("Bearer")),
                "{authorization:?}"
            );
            let error: HeartbeatError = serde_json::from_str(&text).unwrap();
            assert!(
                matches!(error, HeartbeatError::Unauthorized { .. }),
                "{error:?}"
            );
        }
    }
    let (status, _, _) = raw(
        &agent,
        "GET",
        &format!("{}/metrics", server.url()),
        None,
        b"",
    );
    assert_eq!(status, 401, "the metrics need the cluster token too");

    let after = state(&coordinator);
    assert_eq!(after, before, "nothing changed");
    assert!(after.member("evil").is_none());
    assert!(coordinator.refused_members(KIND).is_empty());
}

/// Flips, deletes, inserts, duplicates or cuts bytes of `valid`.
fn mutate(valid: &[u8], rng: &mut PlanRng) -> Vec<u8> {
    let mut body = valid.to_vec();
    for _ in 0..=rng.below(3) {
        let at = rng.index(body.len() + 1);
        match rng.below(6) {
            0 if at < body.len() => body[at] ^= 1 << rng.below(8),
            1 if at < body.len() => {
                body.remove(at);
            }
            2 => body.insert(at, u8::try_from(rng.below(256)).unwrap()),
            3 => body.insert(at, *rng.pick(b"{}[]\":,-0123456789en ").unwrap()),
            4 => body.truncate(at),
            _ => {
                let end = (at + rng.index(12)).min(body.len());
                let span = body[at.min(end)..end].to_vec();
                body.splice(at..at, span);
            }
        }
    }
    body
}

#[test]
fn malformed_member_requests_are_answered_4xx_and_change_nothing() {
    let clock = clock();
    let (coordinator, server) = served(&clock);
    let link = HttpLink::new(&server.url(), token(), client()).unwrap();
    link.register(&report("dn1", 2, 1)).unwrap();
    let before = state(&coordinator);
    let agent = agent();
    let bearer = format!("Bearer {TOKEN}");
    let send = |path: &str, body: &[u8]| {
        raw(
            &agent,
            "POST",
            &format!("{}{path}", server.url()),
            Some(&bearer),
            body,
        )
    };

    // Hand-made: not JSON, not a report, out of range, cut short.
    let handmade: [&[u8]; 10] = [
        b"",
        b"not json",
        b"{}",
        b"null",
        b"[\"datanode\", \"dn1\", 2, 1]",
        br#"{"kind": "datanode", "member_id": "dn1", "software_layout_version": 2}"#,
        br#"{"kind": 7, "member_id": "dn1", "software_layout_version": 2, "metadata_layout_version": 1}"#,
        br#"{"kind": "datanode", "member_id": "dn1", "software_layout_version": -2, "metadata_layout_version": 1}"#,
        br#"{"kind": "datanode", "member_id": "dn1", "software_layout_version": 4294967296, "metadata_layout_version": 1}"#,
        br#"{"kind": "datanode", "member_id": "dn1", "software_la"#,
    ];
    for body in handmade {
        for path in [REGISTER_PATH, HEARTBEAT_PATH] {
            let (status, _, text) = send(path, body);
            assert_eq!(
                status,
                400,
                "{path} {:?}: {text}",
                String::from_utf8_lossy(body)
            );
            let error: HeartbeatError = serde_json::from_str(&text).unwrap();
            assert!(
                matches!(&error, HeartbeatError::BadRequest { reason } if reason.contains("not a member report")),
                "{error:?}"
            );
        }
    }

    // Random mutations of valid bodies; those that still decode as a report are not
    // malformed and are left out.
    let mut rng = PlanRng::new(0x5EED_11A7);
    let valid = [
        serde_json::to_vec(&report("dn1", 2, 1)).unwrap(),
        serde_json::to_vec(&report("dn2", 2, 1)).unwrap(),
    ];
    let mut malformed = 0;
    for i in 0..1_000 {
        let body = mutate(rng.pick(&valid).unwrap(), &mut rng);
        let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if object && serde_json::from_slice::<MemberReport>(&body).is_ok() {
            continue;
        }
        malformed += 1;
        let path = if i % 2 == 0 {
            REGISTER_PATH
        } else {
            HEARTBEAT_PATH
        };
        let (status, _, text) = send(path, &body);
        assert!(
            (400..500).contains(&status),
            "{path} {:?}: {status} {text}",
            String::from_utf8_lossy(&body)
        );
    }
    assert!(
        malformed > 500,
        "only {malformed} of 1000 mutations were malformed"
    );

    // Too large, an unknown path, a wrong method: refused in kind, as JSON.
    let mut big = serde_json::to_vec(&report("dn1", 2, 1)).unwrap();
    // Just over the endpoint's 64 KiB (small enough to be sent whole before the answer).
    big.extend(std::iter::repeat_n(b' ', 64 * 1024));
    let (status, _, text) = send(REGISTER_PATH, &big);
    assert_eq!(status, 413, "{text}");
    let (status, _, text) = send("/v1/cluster/other", b"{}");
    assert_eq!(status, 404, "{text}");
    assert!(matches!(
        serde_json::from_str(&text).unwrap(),
        HeartbeatError::BadRequest { .. }
    ));
    let (status, _, _) = raw(
        &agent,
        "GET",
        &format!("{}{REGISTER_PATH}", server.url()),
        Some(&bearer),
        b"",
    );
    assert_eq!(status, 405);

    assert_eq!(state(&coordinator), before, "nothing changed");
    assert!(coordinator.refused_members(KIND).is_empty());
    // The link still serves.
    link.heartbeat(&report("dn1", 2, 1)).unwrap();
}

#[test]
fn the_member_link_listens_beyond_loopback_only_with_tls() {
    let coordinator = Arc::new(
        Coordinator::open(
            Arc::new(EmbeddedStore::in_memory()),
            CoordinatorOptions::default(),
        )
        .unwrap(),
    );
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let config = EndpointConfig::new(addr.parse().unwrap());
        let error =
            CoordinatorServer::start(Arc::clone(&coordinator), token(), config).unwrap_err();
        assert!(
            matches!(&error, EndpointError::PlaintextBeyondLoopback { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("cluster link") && message.contains("TLS"),
            "{message}"
        );
    }
    // Loopback, plain: served.
    let server =
        CoordinatorServer::start(coordinator, token(), EndpointConfig::loopback(0)).unwrap();
    assert!(server.local_addr().ip().is_loopback());
    assert!(server.url().starts_with("http://127.0.0.1:"));
}

#[test]
fn a_malformed_coordinator_endpoint_is_refused_when_the_link_is_made() {
    for endpoint in [
        "",
        "http://",
        "127.0.0.1",
        "127.0.0.1:99999",
        "ftp://127.0.0.1:1",
        "https://127.0.0.1:1",
    ] {
        match HttpLink::new(endpoint, token(), client()) {
            Err(LinkError::InvalidEndpoint {
                endpoint: e,
                reason,
            }) => {
                assert_eq!(e, endpoint);
                assert!(!reason.is_empty());
            }
            other => panic!("{endpoint:?}: expected InvalidEndpoint, got {other:?}"),
        }
    }
    let link = HttpLink::new("127.0.0.1:9", token(), client()).unwrap();
    assert_eq!(link.endpoint(), "http://127.0.0.1:9");
}

#[test]
fn a_link_finds_a_coordinator_restarted_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster-state");
    let start = |port: u16| {
        let store: Arc<dyn ClusterStore> = Arc::new(EmbeddedStore::open(&path).unwrap());
        let coordinator =
            Arc::new(Coordinator::open(store, CoordinatorOptions::default()).unwrap());
        CoordinatorServer::bind_loopback(coordinator, port, token()).unwrap()
    };
    let server = start(0);
    let url = server.url();
    let link = HttpLink::new(&url, token(), client()).unwrap();
    link.register(&report("dn1", 2, 1)).unwrap();
    link.heartbeat(&report("dn1", 2, 1)).unwrap();

    // Restarted at once: the link's kept-alive connection is gone, the next call finds
    // the new coordinator (which kept the registration in its store).
    drop(server);
    let server = start(url.rsplit(':').next().unwrap().parse().unwrap());
    assert_eq!(server.url(), url);
    link.heartbeat(&report("dn1", 2, 1)).unwrap();

    // Down: unavailable, naming the coordinator; up again: found again.
    drop(server);
    match link.heartbeat(&report("dn1", 2, 1)) {
        Err(HeartbeatError::Unavailable { reason }) => {
            assert!(reason.contains(&url), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let _server = start(url.rsplit(':').next().unwrap().parse().unwrap());
    link.heartbeat(&report("dn1", 2, 1)).unwrap();
}

#[test]
fn the_link_answers_refusals_as_the_coordinator_gives_them() {
    let clock = clock();
    let (coordinator, server) = served(&clock);
    let link = HttpLink::new(&server.url(), token(), client()).unwrap();
    link.register(&report("dn1", 2, 2)).unwrap();
    let refused = link.register(&report("dn2", 1, 1)).unwrap_err();
    assert_eq!(
        refused,
        HeartbeatError::Refused(Refusal::SoftwareBelowCluster {
            kind: KIND.to_owned(),
            member_id: "dn2".to_owned(),
            software_layout_version: 1,
            cluster_layout_version: 2,
        })
    );
    assert_eq!(
        link.heartbeat(&report("dn9", 2, 2)).unwrap_err(),
        HeartbeatError::Refused(Refusal::NotRegistered {
            kind: KIND.to_owned(),
            member_id: "dn9".to_owned(),
        })
    );
    let refused: Vec<String> = coordinator
        .refused_members(KIND)
        .into_iter()
        .map(|m| m.member_id)
        .collect();
    assert_eq!(refused, ["dn2"]);
}

/// `layout_cluster_members{kind,state}` by state, and `layout_cluster_layout_version`,
/// scraped from the member link's `/metrics`.
fn scrape(agent: &ureq::Agent, server: &CoordinatorServer) -> ([u32; 4], u32) {
    let (status, _, text) = raw(
        agent,
        "GET",
        &format!("{}/metrics", server.url()),
        Some(&format!("Bearer {TOKEN}")),
        b"",
    );
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |sample: &prometheus_parse::Sample| match sample.value {
        prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => {
            format!("{v}").parse::<u32>().unwrap()
        }
        ref other => panic!("not a gauge: {other:?}"),
    };
    let mut members = [0; 4];
    let mut version = None;
    for sample in &scrape.samples {
        assert_eq!(sample.labels.get("kind"), Some(KIND), "{sample:?}");
        match sample.metric.as_str() {
            "layout_cluster_members" => {
                let state = ["refused", "excluded", "pending", "finalized"]
                    .iter()
                    .position(|s| sample.labels.get("state") == Some(*s))
                    .unwrap();
                members[state] = value(sample);
            }
            "layout_cluster_layout_version" => version = Some(value(sample)),
            other => panic!("unexpected metric {other}"),
        }
    }
    (members, version.unwrap())
}

#[test]
fn the_cluster_metrics_follow_members_as_they_register_finalize_and_are_refused() {
    let clock = clock();
    let (coordinator, server) = served(&clock);
    let link = HttpLink::new(&server.url(), token(), client()).unwrap();
    let agent = agent();
    // [refused, excluded, pending, finalized], cluster version
    for id in ["dn1", "dn2"] {
        link.register(&report(id, 2, 1)).unwrap();
    }
    assert_eq!(scrape(&agent, &server), ([0, 0, 0, 2], 1));
    link.register(&report("dn3", 1, 1)).unwrap();
    assert_eq!(scrape(&agent, &server), ([0, 0, 0, 3], 1));

    // dn3 dies on its old release and is excluded; dn1 and dn2 stay live.
    clock.advance(Duration::from_secs(11));
    for id in ["dn1", "dn2"] {
        link.heartbeat(&report(id, 2, 1)).unwrap();
    }
    coordinator
        .exclude(KIND, "dn3", "host lost its disks", "ops")
        .unwrap();
    assert_eq!(scrape(&agent, &server), ([0, 1, 0, 2], 1));

    // Finalized: both members are told to finalize, then report it one by one.
    coordinator.finalize(KIND, Some(2), "ops").unwrap();
    assert_eq!(scrape(&agent, &server), ([0, 1, 2, 0], 2));
    link.heartbeat(&report("dn1", 2, 2)).unwrap();
    assert_eq!(scrape(&agent, &server), ([0, 1, 1, 1], 2));
    link.heartbeat(&report("dn2", 2, 2)).unwrap();
    assert_eq!(scrape(&agent, &server), ([0, 1, 0, 2], 2));
    assert_eq!(
        state(&coordinator).checkpoint(),
        Some(FinalizationCheckpoint::Complete)
    );

    // Old binaries are refused: a new member, and the excluded one back on its old
    // release (refused, while it tries).
    assert!(link.register(&report("dn4", 1, 1)).is_err());
    assert_eq!(scrape(&agent, &server), ([1, 1, 0, 2], 2));
    assert!(link.register(&report("dn3", 1, 1)).is_err());
    assert_eq!(scrape(&agent, &server), ([2, 0, 0, 2], 2));

    // They give up: after a lease, no longer counted as refused.
    clock.advance(Duration::from_secs(11));
    assert_eq!(scrape(&agent, &server), ([0, 1, 0, 2], 2));
    // A refused member that comes back with the new release is admitted.
    link.register(&report("dn4", 1, 1)).unwrap_err();
    link.register(&report("dn4", 2, 2)).unwrap();
    assert_eq!(scrape(&agent, &server), ([0, 1, 0, 3], 2));
}

#[test]
fn a_refused_body_closes_its_connection_and_says_so_so_the_next_request_succeeds() {
    let clock = clock();
    let (coordinator, server) = served(&clock);
    let agent = agent();
    let bearer = format!("Bearer {TOKEN}");
    let url = format!("{}{REGISTER_PATH}", server.url());
    let mut big = serde_json::to_vec(&report("dn1", 2, 1)).unwrap();
    big.extend(std::iter::repeat_n(b' ', 64 * 1024));
    for _ in 0..20 {
        // The refused body is left unread, so the server closes the connection and says
        // so: a client never sends its next request on it.
        let refused = agent
            .post(&url)
            .header("Authorization", &bearer)
            .send(&big[..])
            .unwrap();
        assert_eq!(refused.status().as_u16(), 413);
        assert_eq!(
            refused
                .headers()
                .get("connection")
                .map(ureq::http::HeaderValue::as_bytes),
            Some(&b"close"[..])
        );
        let body = serde_json::to_vec(&report("dn1", 2, 1)).unwrap();
        let (status, _, text) = raw(&agent, "POST", &url, Some(&bearer), &body);
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(state(&coordinator).members.len(), 1);
}

#[test]
fn a_member_that_leaves_through_the_link_is_replaced_at_once_by_its_next_process() {
    let clock = clock();
    let (coordinator, server) = served(&clock);
    let link = HttpLink::new(&server.url(), token(), client()).unwrap();
    let first = report("dn1", 2, 1).with_incarnation("first");
    let second = report("dn1", 2, 1).with_incarnation("second");
    link.register(&first).unwrap();
    // Killed, not stopped: the next process waits for the lease.
    match link.register(&second) {
        Err(HeartbeatError::Refused(Refusal::DuplicateIncarnation { .. })) => {}
        other => panic!("expected DuplicateIncarnation, got {other:?}"),
    }
    // Stopped cleanly: it says so, and the next process is accepted at once.
    link.leave(&first).unwrap();
    assert!(!state(&coordinator).member("dn1").unwrap().live);
    link.register(&second).unwrap();
    assert_eq!(
        state(&coordinator).member("dn1").unwrap().incarnation,
        "second"
    );
    // A leave from a process that is no longer the member's changes nothing.
    link.leave(&first).unwrap();
    assert!(state(&coordinator).member("dn1").unwrap().live);
}
