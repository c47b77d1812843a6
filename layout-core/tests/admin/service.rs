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
