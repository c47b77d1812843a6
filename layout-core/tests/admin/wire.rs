//! The wire statuses are enums on both sides, and the JSON keeps the words it had when
//! they were strings; a word a newer server sends still parses.

use layout_core::admin::{
    WireFeatureStatus, WireFinalizationStatus, WireMigrationState, WirePrepareState,
};
use layout_core::migration::MigrationState;
use layout_core::{FeatureStatus, FinalizationStatus, PrepareState};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `value` is the JSON string `word`, and `word` reads back as `value`.
fn assert_word<T>(value: &T, word: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_string(value).unwrap();
    assert_eq!(json, format!("\"{word}\""), "{value:?}");
    let read: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&read, value);
}

#[test]
fn finalization_statuses_keep_their_words() {
    let cases = [
        (FinalizationStatus::AlreadyFinalized, "ALREADY_FINALIZED"),
        (
            FinalizationStatus::FinalizationRequired,
            "FINALIZATION_REQUIRED",
        ),
        (
            FinalizationStatus::StartingFinalization,
            "STARTING_FINALIZATION",
        ),
        (
            FinalizationStatus::FinalizationInProgress,
            "FINALIZATION_IN_PROGRESS",
        ),
        (FinalizationStatus::FinalizationDone, "FINALIZATION_DONE"),
    ];
    for (status, word) in cases {
        let wire = WireFinalizationStatus::from(status);
        assert_word(&wire, word);
        // The same words the finalizer's status prints.
        assert_eq!(wire.as_str(), status.as_str());
        assert_eq!(wire.is_running(), status.is_running());
    }
    assert_eq!(WireFinalizationStatus::KNOWN.len(), cases.len());
}

#[test]
fn prepare_states_keep_their_words() {
    for (state, word) in [
        (PrepareState::NotPrepared, "NOT_PREPARED"),
        (PrepareState::GateEnabled, "PREPARE_GATE_ENABLED"),
        (PrepareState::Prepared { index: 7 }, "PREPARE_COMPLETED"),
    ] {
        assert_word(&WirePrepareState::from(state), word);
        assert_eq!(state.as_str(), word);
    }
    assert_eq!(WirePrepareState::KNOWN.len(), 3);
}

#[test]
fn feature_statuses_keep_their_words() {
    for (status, word) in [
        (FeatureStatus::Finalized, "finalized"),
        (FeatureStatus::NotFinalized, "not-finalized"),
        (FeatureStatus::BeyondSoftware, "beyond-software"),
    ] {
        assert_word(&WireFeatureStatus::from(status), word);
    }
    assert_eq!(WireFeatureStatus::KNOWN.len(), 3);
}

#[test]
fn migration_states_keep_their_words() {
    for (state, word) in [
        (MigrationState::NotStarted, "not started"),
        (MigrationState::Running, "running"),
        (MigrationState::Paused, "paused"),
        (MigrationState::Interrupted, "interrupted"),
        (MigrationState::Complete, "complete"),
    ] {
        assert_word(&WireMigrationState::from(state), word);
        assert_eq!(state.as_str(), word);
    }
    assert_eq!(WireMigrationState::KNOWN.len(), 5);
}

/// A newer server answers a status this client does not know: the answer parses, the
/// word is kept (and printed as sent), and it is not taken for a known one.
#[test]
fn an_unknown_word_from_a_newer_server_parses_and_is_kept() {
    let read: WireFinalizationStatus = serde_json::from_str("\"FINALIZATION_PAUSED\"").unwrap();
    assert_eq!(
        read,
        WireFinalizationStatus::Unknown("FINALIZATION_PAUSED".to_owned())
    );
    assert!(!read.is_running());
    assert_eq!(read.to_string(), "FINALIZATION_PAUSED");
    assert_eq!(
        serde_json::to_string(&read).unwrap(),
        "\"FINALIZATION_PAUSED\""
    );

    let state: WirePrepareState = serde_json::from_str("\"PREPARE_ROLLING_BACK\"").unwrap();
    assert_eq!(state.as_str(), "PREPARE_ROLLING_BACK");
    let feature: WireFeatureStatus = serde_json::from_str("\"retired\"").unwrap();
    assert_eq!(feature, WireFeatureStatus::Unknown("retired".to_owned()));
    let migration: WireMigrationState = serde_json::from_str("\"throttled\"").unwrap();
    assert_eq!(migration.as_str(), "throttled");
    // A known word never reads as unknown.
    let known: WireFeatureStatus = serde_json::from_str("\"finalized\"").unwrap();
    assert_eq!(known, WireFeatureStatus::Finalized);
}

/// A whole finalization status answer from a newer server, with a status word and a
/// field this release does not know, parses.
#[test]
fn a_status_answer_with_an_unknown_status_parses() {
    let answer = serde_json::json!({
        "api_version": 1,
        "status": "FINALIZATION_PAUSED",
        "running": false,
        "metadata_layout_version": 1,
        "software_layout_version": 2,
        "target_version": null,
        "client_id": null,
        "progress": null,
        "last_error": null,
        "messages": [],
        "veto": null,
        "veto_active": false,
        "auto_finalize_at_ms": null,
        "paused_by": "ops"
    });
    let read: layout_core::admin::FinalizationStatusResponse =
        serde_json::from_value(answer).unwrap();
    assert_eq!(read.status.as_str(), "FINALIZATION_PAUSED");
}
