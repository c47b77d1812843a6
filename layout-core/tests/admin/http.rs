//! The endpoint with the blocking client and raw sockets: every error status.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use layout_core::admin::http::{AdminClient, AdminClientError};
use layout_core::admin::{
    ErrorCode, FinalizationStatusParams, FinalizeParams, FinalizeResponse, PrepareParams,
};

use layout_core::StartIntent;

use crate::support::{error_code, raw, read_answer, request, Fixture, OmFeature, Start, TOKEN};

fn api_code(err: &AdminClientError) -> (u16, ErrorCode) {
    (err.http_status().unwrap(), err.code().unwrap())
}

#[test]
fn the_client_reads_status_and_features_and_finalizes() {
    let fx = Fixture::start();
    let client = fx.client();
    let status = client.status().unwrap();
    assert_eq!(status.api_version, 1);
    assert_eq!(status.component, "OmFeature");
    assert_eq!(
        (
            status.metadata_layout_version,
            status.software_layout_version
        ),
        (1, 3)
    );
    assert!(status.needs_finalization);
    assert_eq!(
        status.finalization.status,
        layout_core::admin::WireFinalizationStatus::FinalizationRequired
    );
    assert_eq!(
        status.prepare.state,
        layout_core::admin::WirePrepareState::NotPrepared
    );
    assert_eq!(status.features.len(), 4);
    assert_eq!(
        client.features().unwrap().features[2].status,
        layout_core::admin::WireFeatureStatus::NotFinalized
    );

    let plan = client
        .finalize(&FinalizeParams::new("ops").with_dry_run(true))
        .unwrap();
    let FinalizeResponse::DryRun { plan, .. } = plan else {
        panic!("{plan:?}")
    };
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(
        plan.steps[0].action.as_deref(),
        Some("migrate-MultiTenancy")
    );
    assert!(plan.conditions[0].passed);
    assert_eq!(
        client.status().unwrap().metadata_layout_version,
        1,
        "dry run"
    );

    let done = fx
        .finalize(&FinalizeParams::new("ops").with_target("MultiTenancy"))
        .unwrap();
    assert!(
        matches!(&done, FinalizeResponse::Done { finalized, metadata_layout_version: 2, .. } if finalized == &["MultiTenancy"]),
        "{done:?}"
    );
    let status = client
        .finalization_status_as(&FinalizationStatusParams::new(Some("ops".into())))
        .unwrap();
    assert_eq!(status.metadata_layout_version, 2);
    assert!(status.messages.iter().any(|m| m == "MultiTenancy migrated"));
    // Read-only status drains nothing and needs no client.
    assert!(client.finalization_status().unwrap().messages.is_empty());
}

#[test]
fn prepare_restart_with_the_new_release_finalize_and_status_through_the_client() {
    let fx = Fixture::start_with(&Start {
        software_layout_version: Some(1),
        ..Start::default()
    });
    fx.node.put(&fx.prepare).unwrap();
    let prepared = fx.client().prepare(&PrepareParams::default()).unwrap();
    assert_eq!(prepared.index, Some(1));

    // The same binary restarts prepared: writes and finalize stay refused.
    let fx = fx.restart(&Start {
        software_layout_version: Some(1),
        intent: StartIntent::Normal,
        ..Start::default()
    });
    let status = fx.client().status().unwrap();
    assert_eq!(
        (status.prepare.state.as_str(), status.prepare.index),
        ("PREPARE_COMPLETED", Some(1))
    );
    assert!(fx.node.put(&fx.prepare).is_err());

    // The new release starts with the Upgrade intent: prepare is cancelled locally.
    let fx = fx.restart(&Start {
        software_layout_version: None,
        intent: StartIntent::Upgrade,
        ..Start::default()
    });
    let client = fx.client();
    let status = client.status().unwrap();
    assert_eq!(
        status.prepare.state,
        layout_core::admin::WirePrepareState::NotPrepared
    );
    assert_eq!(
        (
            status.metadata_layout_version,
            status.software_layout_version
        ),
        (1, 3)
    );
    assert_eq!(fx.node.put(&fx.prepare).unwrap(), 2);

    let done = fx.finalize(&FinalizeParams::new("ops")).unwrap();
    assert!(
        matches!(&done, FinalizeResponse::Done { finalized, metadata_layout_version: 3, .. } if finalized.len() == 2),
        "{done:?}"
    );
    let status = client.status().unwrap();
    assert_eq!(status.metadata_layout_version, 3);
    assert_eq!(
        status.finalization.status,
        layout_core::admin::WireFinalizationStatus::FinalizationDone
    );
    assert!(!status.needs_finalization);
}

#[test]
fn a_missing_or_wrong_token_is_401() {
    let fx = Fixture::start();
    let wrong = AdminClient::new(&fx.url(), "x".repeat(TOKEN.len())).unwrap();
    let err = wrong.status().unwrap_err();
    assert_eq!(api_code(&err), (401, ErrorCode::Unauthorized));

    let (status, body) = raw(
        fx.addr,
        b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!((status, error_code(&body).as_str()), (401, "unauthorized"));
    let basic = format!("GET /v1/status HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\n\r\n");
    assert_eq!(raw(fx.addr, basic.as_bytes()).0, 401);
    // The token is checked before the route: an unknown path without it is 401 too.
    assert_eq!(raw(fx.addr, b"GET /nope HTTP/1.1\r\n\r\n").0, 401);
}

#[test]
fn an_unknown_path_is_404_and_a_wrong_method_is_405() {
    let fx = Fixture::start();
    let (status, body) = raw(fx.addr, &request("GET", "/v1/nothing-here", b""));
    assert_eq!((status, error_code(&body).as_str()), (404, "not-found"));
    let (status, body) = raw(fx.addr, &request("GET", "/v2/status", b""));
    assert_eq!((status, error_code(&body).as_str()), (404, "not-found"));

    let mut stream = TcpStream::connect(fx.addr).unwrap();
    stream
        .write_all(&request("GET", "/v1/finalize", b""))
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = std::io::Read::read(&mut stream, &mut chunk).unwrap();
        assert!(n > 0, "closed before the head");
        answer.extend_from_slice(&chunk[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 405 "), "{answer}");
    assert!(answer.contains("\r\nallow: post\r\n"), "{answer}");
    for (method, path) in [
        ("DELETE", "/v1/status"),
        ("POST", "/v1/status"),
        ("PUT", "/v1/prepare"),
    ] {
        let (status, body) = raw(fx.addr, &request(method, path, b"{}"));
        assert_eq!(
            (status, error_code(&body).as_str()),
            (405, "method-not-allowed")
        );
    }
}

#[test]
fn malformed_requests_are_400() {
    let fx = Fixture::start();
    for body in [
        &b"{not json"[..],
        b"{\"api_version\":1}",
        b"{\"api_version\":1,\"client_id\":\"ops\",\"takeover\":\"yes\"}",
        b"{\"api_version\":1,\"client_id\":\"ops\",\"bogus\":true}",
    ] {
        let (status, body) = raw(fx.addr, &request("POST", "/v1/finalize", body));
        assert_eq!(
            (status, error_code(&body).as_str()),
            (400, "bad-request"),
            "{body}"
        );
    }
    let client = fx.client();
    let mut params = FinalizeParams::new("ops");
    params.api_version = 2;
    assert_eq!(
        api_code(&client.finalize(&params).unwrap_err()),
        (400, ErrorCode::UnsupportedApiVersion)
    );
    let err = client
        .finalize(&FinalizeParams::new("ops").with_target("Teleportation"))
        .unwrap_err();
    assert_eq!(api_code(&err), (400, ErrorCode::InvalidArgument));
    assert!(
        err.to_string().contains("MultiTenancy"),
        "lists the features: {err}"
    );
    assert_eq!(
        api_code(&client.finalize(&FinalizeParams::new("  ")).unwrap_err()),
        (400, ErrorCode::InvalidArgument)
    );
    let err = client
        .finalize(&FinalizeParams::new("ops").with_override("no-such-check", "because"))
        .unwrap_err();
    assert_eq!(api_code(&err), (400, ErrorCode::InvalidArgument));
}

#[test]
fn a_body_or_head_too_large_is_refused() {
    let fx = Fixture::start();
    let client = fx.client();
    let huge = FinalizeParams::new("ops").with_override("no-open-containers", "x".repeat(80_000));
    let err = client.finalize(&huge).unwrap_err();
    assert_eq!(api_code(&err), (413, ErrorCode::PayloadTooLarge));

    // hyper refuses a Content-Length it cannot represent before routing (a bare 400).
    let announced = format!(
        "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: \
         99999999999999999999999\r\n\r\n"
    );
    let (status, _) = raw(fx.addr, announced.as_bytes());
    assert_eq!(status, 400);
    // A representable one over the limit is refused before the body is read.
    let announced = format!(
        "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: \
         99999999\r\n\r\n"
    );
    let (status, body) = raw(fx.addr, announced.as_bytes());
    assert_eq!(
        (status, error_code(&body).as_str()),
        (413, "payload-too-large")
    );

    // A head over the limit: hyper answers a bare 431.
    let mut head = request("GET", "/v1/status", b"");
    head.truncate(head.len() - 2);
    head.extend_from_slice(format!("X-Padding: {}\r\n\r\n", "p".repeat(20_000)).as_bytes());
    let (status, _) = raw(fx.addr, &head);
    assert_eq!(status, 431);
}

#[test]
fn a_finalization_already_running_is_409() {
    let fx = Fixture::start();
    let client = fx.client();
    fx.node.hold.arm();
    let started = client.finalize(&FinalizeParams::new("ops")).unwrap();
    assert!(
        matches!(
            started,
            FinalizeResponse::Started {
                target_version: 3,
                ..
            }
        ),
        "{started:?}"
    );
    let err = client.finalize(&FinalizeParams::new("other")).unwrap_err();
    assert_eq!(api_code(&err), (409, ErrorCode::FinalizationInProgress));
    assert!(err.to_string().contains("ops"), "names the holder: {err}");
    // Another client may not read the holder's messages without takeover.
    let err = client
        .finalization_status_as(&FinalizationStatusParams::new(Some("other".into())))
        .unwrap_err();
    assert_eq!(api_code(&err), (409, ErrorCode::OwnedByAnotherClient));
    // Nor prepare while it runs.
    let err = client.prepare(&PrepareParams::default()).unwrap_err();
    assert_eq!(api_code(&err), (409, ErrorCode::FinalizationInProgress));
    let running = client.finalization_status().unwrap();
    assert!(running.running);
    assert_eq!(running.client_id.as_deref(), Some("ops"));

    fx.node.hold.release();
    let outcome = fx.service.join_finalization().unwrap().unwrap();
    assert!(
        matches!(
            outcome,
            FinalizeResponse::Done {
                metadata_layout_version: 3,
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[test]
fn an_unfinished_finalization_of_another_client_is_409_until_takeover() {
    let fx = Fixture::start();
    let client = fx.client();
    *fx.node.fail_feature.lock() = Some(OmFeature::SnapshotDiff);
    let err = fx.finalize(&FinalizeParams::new("alice")).unwrap_err();
    assert_eq!(api_code(&err), (500, ErrorCode::FinalizationFailed));
    assert!(err.to_string().contains("SnapshotDiff"), "{err}");
    assert_eq!(client.status().unwrap().metadata_layout_version, 2);

    *fx.node.fail_feature.lock() = None;
    let err = client.finalize(&FinalizeParams::new("bob")).unwrap_err();
    assert_eq!(api_code(&err), (409, ErrorCode::OwnedByAnotherClient));
    let done = fx
        .finalize(&FinalizeParams::new("bob").with_takeover(true))
        .unwrap();
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

#[test]
fn finalize_while_prepared_is_409_and_prepare_errors_are_reported() {
    let fx = Fixture::start();
    let client = fx.client();
    fx.node.put(&fx.prepare).unwrap();
    let prepared = client.prepare(&PrepareParams::default()).unwrap();
    assert_eq!(
        (prepared.state.as_str(), prepared.index),
        ("PREPARE_COMPLETED", Some(1))
    );
    assert!(fx.node.put(&fx.prepare).unwrap_err().contains("PutKey"));
    let err = client.finalize(&FinalizeParams::new("ops")).unwrap_err();
    assert_eq!(api_code(&err), (409, ErrorCode::Prepared));
    let plan = client
        .finalize(&FinalizeParams::new("ops").with_dry_run(true))
        .unwrap();
    let FinalizeResponse::DryRun { plan, .. } = plan else {
        panic!()
    };
    assert!(plan.blocked_by.unwrap().contains("prepared"));

    let cancelled = client.cancel_prepare(&PrepareParams::default()).unwrap();
    assert_eq!(
        (cancelled.state.as_str(), cancelled.index),
        ("NOT_PREPARED", None)
    );

    fx.node.fail_snapshot.store(true, Ordering::SeqCst);
    let err = client.prepare(&PrepareParams::default()).unwrap_err();
    assert_eq!(api_code(&err), (500, ErrorCode::PrepareFailed));
    assert!(err.to_string().contains("step snapshot"), "{err}");
    fx.node.fail_snapshot.store(false, Ordering::SeqCst);
    assert_eq!(fx.node.put(&fx.prepare).unwrap(), 2, "still writable");

    fx.node.stuck.store(true, Ordering::SeqCst);
    let err = client.prepare(&PrepareParams::default()).unwrap_err();
    assert_eq!(api_code(&err), (503, ErrorCode::PrepareTimeout));
    assert_eq!(
        client.status().unwrap().prepare.state,
        layout_core::admin::WirePrepareState::NotPrepared
    );
}

#[test]
fn failing_conditions_are_409_and_an_override_with_a_reason_passes() {
    let fx = Fixture::start();
    let client = fx.client();
    fx.node.open_containers.store(2, Ordering::SeqCst);
    let err = client.finalize(&FinalizeParams::new("ops")).unwrap_err();
    assert_eq!(api_code(&err), (409, ErrorCode::ConditionsFailed));
    assert!(err.to_string().contains("2 containers are open"), "{err}");
    let err = client
        .finalize(&FinalizeParams::new("ops").with_override("no-open-containers", " "))
        .unwrap_err();
    assert_eq!(api_code(&err), (400, ErrorCode::InvalidArgument));
    let done = fx
        .finalize(&FinalizeParams::new("ops").with_override("no-open-containers", "OPS-1: stuck"))
        .unwrap();
    assert!(matches!(done, FinalizeResponse::Done { .. }), "{done:?}");
    let text = String::from_utf8(fx.version_bytes()).unwrap();
    assert!(
        text.contains("OPS-1: stuck"),
        "the override is in the history"
    );
}

#[test]
fn a_target_beyond_the_software_is_409() {
    let fx = Fixture::start_with(&Start {
        software_layout_version: Some(2),
        ..Start::default()
    });
    let err = fx
        .client()
        .finalize(&FinalizeParams::new("ops").with_target("SnapshotDiff"))
        .unwrap_err();
    assert_eq!(api_code(&err), (409, ErrorCode::BeyondSoftware));
}

#[test]
fn a_client_that_sends_no_whole_head_is_disconnected_and_does_not_hold_the_endpoint() {
    let fx = Fixture::start();
    let mut idle = TcpStream::connect(fx.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    idle.write_all(b"GET /v1/sta").unwrap();
    // Meanwhile others are served.
    assert_eq!(fx.client().status().unwrap().metadata_layout_version, 1);
    // Its head never completes: the header read timeout closes the connection.
    assert!(crate::support::closed_without_answer(&mut idle));
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408() {
    let fx = Fixture::start();
    let mut slow = TcpStream::connect(fx.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.write_all(
        format!(
            "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"api"
        )
        .as_bytes(),
    )
    .unwrap();
    let (status, body) = read_answer(&mut slow);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (408, "request-timeout")
    );
}

#[test]
fn at_the_connection_limit_a_connection_without_a_token_makes_room() {
    let fx = Fixture::start_with(&Start {
        max_connections: 2,
        request_timeout: Duration::from_secs(30),
        ..Start::default()
    });
    // Two connections that never send anything fill the table.
    let mut first = TcpStream::connect(fx.addr).unwrap();
    let _second = TcpStream::connect(fx.addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // An operator still gets in: the oldest connection without a token is closed.
    assert_eq!(fx.client().status().unwrap().metadata_layout_version, 1);
    assert!(crate::support::closed_without_answer(&mut first));
}

#[test]
fn beyond_the_request_limit_the_endpoint_answers_503() {
    let fx = Fixture::start_with(&Start {
        max_concurrent_requests: 1,
        request_timeout: Duration::from_secs(30),
        ..Start::default()
    });
    // An authenticated request whose body is still on its way holds the one slot.
    let mut holder = TcpStream::connect(fx.addr).unwrap();
    holder
        .write_all(
            format!(
                "POST /v1/finalize HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .unwrap();
    let client = fx.client();
    let err = (0..200)
        .find_map(|_| {
            let answer = client.status().err();
            if answer.is_none() {
                // The holder's head may not have reached its handler yet.
                std::thread::sleep(Duration::from_millis(10));
            }
            answer
        })
        .expect("the endpoint never answered busy while its one slot was held");
    assert_eq!(api_code(&err), (503, ErrorCode::Busy));
    drop(holder);
    // The slot is free again once the holder is gone.
    let ok = (0..200).any(|_| {
        let served = client.status().is_ok();
        if !served {
            std::thread::sleep(Duration::from_millis(10));
        }
        served
    });
    assert!(ok, "the slot was never released");
}

#[test]
fn shutdown_stops_the_endpoint() {
    let mut fx = Fixture::start();
    fx.server.take().unwrap().shutdown();
    let err = fx.client().status().unwrap_err();
    assert!(matches!(err, AdminClientError::Transport { .. }), "{err:?}");
}

#[test]
fn the_token_and_endpoint_are_checked() {
    use layout_core::admin::http::HttpConfig;
    use layout_core::http::BearerToken;
    assert!(HttpConfig::new("short").is_err());
    assert!(HttpConfig::new("sixteen chars no").is_err(), "spaces");
    assert!(format!("{:?}", BearerToken::new(TOKEN).unwrap()).contains("redacted"));
    assert!(AdminClient::new("https://127.0.0.1:1", TOKEN).is_err());
    assert!(AdminClient::new("http://127.0.0.1:1/x", TOKEN).is_err());
    assert!(AdminClient::new("127.0.0.1:1", TOKEN).is_ok());
}

/// Once `shutdown` returns, no worker of the server holds the service any more, so a
/// component restarted in the same process can reopen what its service held (a database
/// with an exclusive lock, say) at once. Each round serves requests and stops; the
/// workers' last act used to be announcing they were done while still holding it.
#[test]
fn after_shutdown_no_worker_holds_the_service() {
    use std::sync::Arc;

    use layout_core::admin::http::{AdminServer, HttpConfig};
    use layout_core::admin::AdminService;
    use layout_core::{
        ActionRegistry, LayoutVersionManager, ManagerOptions, MemoryStorage, UpgradeFinalizer,
    };

    for round in 0..100 {
        let opts = ManagerOptions::default()
            .with_start_intent(StartIntent::Init)
            .with_initial_layout_version(0);
        let lvm =
            Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts).unwrap());
        let finalizer = UpgradeFinalizer::new(lvm, ActionRegistry::<OmFeature, ()>::empty());
        let service = Arc::new(AdminService::new(Arc::new(finalizer), Arc::new(())));
        let config = HttpConfig::new(TOKEN)
            .unwrap()
            .with_bind_addr("127.0.0.1:0".parse().unwrap());
        let server = AdminServer::start(Arc::clone(&service), config).unwrap();
        let status = raw(
            server.local_addr(),
            format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
                .as_bytes(),
        )
        .0;
        assert_eq!(status, 200, "round {round}");
        server.shutdown();
        assert_eq!(
            Arc::strong_count(&service),
            1,
            "round {round}: a worker still holds the service after shutdown returned"
        );
    }
}
