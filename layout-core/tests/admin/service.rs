//! The admin service without a transport.

use std::sync::Arc;

use layout_core::admin::{
    AdminService, ErrorCode, FinalizationStatusParams, FinalizeParams, FinalizeResponse,
    PrepareParams,
};
use layout_core::{
    ActionRegistry, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent,
    UpgradeFinalizer,
};

use crate::support::OmFeature;

fn service() -> AdminService {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm =
        Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts).unwrap());
    let finalizer = UpgradeFinalizer::new(lvm, ActionRegistry::<OmFeature, ()>::empty());
    AdminService::new(Arc::new(finalizer), Arc::new(()))
}

#[test]
fn prepare_without_a_controller_is_not_supported() {
    let admin = service();
    let err = admin.prepare(&PrepareParams::default()).unwrap_err();
    assert_eq!(
        (err.code(), err.http_status()),
        (ErrorCode::NotSupported, 501)
    );
    assert_eq!(
        admin
            .cancel_prepare(&PrepareParams::default())
            .unwrap_err()
            .code(),
        ErrorCode::NotSupported
    );
    let status = admin.status().unwrap();
    assert!(!status.prepare.supported);
}

#[test]
fn a_finalization_to_a_target_then_the_rest_and_the_messages_once() {
    let admin = service();
    let done = admin
        .finalize(&FinalizeParams::new("ops").with_target("BucketLayoutSupport"))
        .unwrap();
    let done = match done {
        FinalizeResponse::Started { .. } => admin.join_finalization().unwrap().unwrap(),
        other => other,
    };
    assert!(
        matches!(
            done,
            FinalizeResponse::Done {
                metadata_layout_version: 1,
                ..
            }
        ),
        "{done:?}"
    );
    let as_ops = FinalizationStatusParams::new(Some("ops".into()));
    let first = admin.finalization_status(Some(&as_ops)).unwrap();
    assert!(first.messages.iter().any(|m| m == "Finalization started."));
    assert!(
        admin
            .finalization_status(Some(&as_ops))
            .unwrap()
            .messages
            .is_empty(),
        "delivered once"
    );
    // Another client takes over the binding.
    let takeover = FinalizationStatusParams::new(Some("bob".into())).with_takeover(true);
    assert_eq!(
        admin
            .finalization_status(Some(&takeover))
            .unwrap()
            .client_id
            .as_deref(),
        Some("bob")
    );
    let again = admin.finalize(&FinalizeParams::new("bob")).unwrap();
    let again = match again {
        FinalizeResponse::Started { .. } => admin.join_finalization().unwrap().unwrap(),
        other => other,
    };
    assert!(
        matches!(
            again,
            FinalizeResponse::Done {
                metadata_layout_version: 3,
                ..
            }
        ),
        "{again:?}"
    );
    let already = admin.finalize(&FinalizeParams::new("bob")).unwrap();
    assert!(matches!(
        already,
        FinalizeResponse::AlreadyFinalized {
            metadata_layout_version: 3,
            ..
        }
    ));
}

#[test]
fn request_types_round_trip_and_refuse_unknown_fields() {
    let params = FinalizeParams::new("ops")
        .with_target("MultiTenancy")
        .with_override("c", "r")
        .with_dry_run(true);
    let text = serde_json::to_string(&params).unwrap();
    assert_eq!(
        serde_json::from_str::<FinalizeParams>(&text).unwrap(),
        params
    );
    let minimal: FinalizeParams =
        serde_json::from_str(r#"{"api_version":1,"client_id":"ops"}"#).unwrap();
    assert_eq!(minimal, FinalizeParams::new("ops"));
    assert!(
        serde_json::from_str::<FinalizeParams>(r#"{"api_version":1,"client_id":"ops","x":1}"#)
            .is_err()
    );
    let code: ErrorCode = serde_json::from_str("\"a-code-from-the-future\"").unwrap();
    assert_eq!(code, ErrorCode::Unknown);
    assert_eq!(
        serde_json::to_string(&ErrorCode::FinalizationInProgress).unwrap(),
        "\"finalization-in-progress\""
    );
}

/// A finalization answered `Started` while its conditions are still being checked is
/// reported running, so `layoutctl finalize --watch` follows it instead of stopping at
/// once and calling it failed.
#[test]
fn a_started_finalization_is_running_while_its_conditions_are_checked() {
    use std::sync::mpsc;
    use std::time::Duration;

    use layout_core::finalizer::condition;
    use parking_lot::Mutex;

    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(0);
    let lvm =
        Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts).unwrap());
    let (entered_tx, entered) = mpsc::channel::<()>();
    let (release, released_rx) = mpsc::channel::<()>();
    let gate = Mutex::new((entered_tx, released_rx));
    // A slow pre-flight check: it tells the test it is running, then waits to be released.
    let finalizer = UpgradeFinalizer::new(lvm, ActionRegistry::<OmFeature, ()>::empty())
        .with_condition(condition("slow-check", move |(): &()| {
            let gate = gate.lock();
            gate.0.send(()).map_err(|e| e.to_string())?;
            gate.1.recv().map_err(|e| e.to_string())?;
            Ok(())
        }));
    let admin = AdminService::new(Arc::new(finalizer), Arc::new(()))
        .with_finalize_start_wait(Duration::ZERO);

    let started = admin.finalize(&FinalizeParams::new("ops")).unwrap();
    assert!(
        matches!(started, FinalizeResponse::Started { .. }),
        "{started:?}"
    );
    entered
        .recv_timeout(Duration::from_secs(60))
        .expect("the condition runs");
    let during = admin
        .finalization_status(Some(&FinalizationStatusParams::new(Some("ops".into()))))
        .unwrap();
    assert!(
        during.running,
        "running while its conditions are checked: {during:?}"
    );
    assert_eq!(during.metadata_layout_version, 0);

    release.send(()).unwrap();
    let done = admin.join_finalization().unwrap().unwrap();
    assert!(matches!(done, FinalizeResponse::Done { .. }), "{done:?}");
    let after = admin.finalization_status(None).unwrap();
    assert!(!after.running, "{after:?}");
    assert_eq!(after.metadata_layout_version, after.software_layout_version);
}

#[test]
fn a_dry_run_refuses_the_overrides_the_run_refuses_with_the_same_error() {
    let admin = service();
    for (condition, reason) in [("no-such-condition", "why not"), ("any", " "), ("any", "")] {
        let params = FinalizeParams::new("ops").with_override(condition, reason);
        let dry = admin
            .finalize(&params.clone().with_dry_run(true))
            .unwrap_err();
        let run = match admin.finalize(&params) {
            Ok(FinalizeResponse::Started { .. }) => admin.join_finalization().unwrap(),
            other => other,
        }
        .unwrap_err();
        assert_eq!(dry.code(), ErrorCode::InvalidArgument, "{dry}");
        assert_eq!((dry.code(), dry.message()), (run.code(), run.message()));
    }
    assert_eq!(admin.status().unwrap().metadata_layout_version, 0);
}
