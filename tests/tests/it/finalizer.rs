//! Upgrade actions in three phases and the finalizer, through the public API.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use layout_core::clock::ManualClock;
use layout_core::finalizer::{condition, FinalizeRefusal, PrefinalizeError, AUTO_FINALIZE_CLIENT};
use layout_core::state::HistoryEvent;
use layout_core::storage::InjectedFailure;
use layout_core::{
    ActionError, ActionRegistry, FileStorage, FinalizationStatus, FinalizeError, FinalizeOutcome,
    FinalizePolicy, FinalizeRequest, LayoutError, LayoutVersionManager, ManagerOptions,
    MemoryStorage, Phase, UpgradeFinalizer,
};
use parking_lot::Mutex;

use crate::catalogs::{init_at, Om, OmFeature};

/// A component that records which action ran, in order.
#[derive(Default)]
struct Service {
    log: Mutex<Vec<String>>,
}

impl Service {
    fn record(&self, what: impl Into<String>) {
        self.log.lock().push(what.into());
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().clone()
    }
    fn count(&self, what: &str) -> usize {
        self.log.lock().iter().filter(|l| *l == what).count()
    }
}

type Registry = ActionRegistry<OmFeature, Service>;
type Finalizer = UpgradeFinalizer<OmFeature, Service>;

/// Every feature above 0 has all three actions, each recording itself.
fn recording_registry() -> Registry {
    let mut builder = Registry::builder();
    for feature in [
        OmFeature::BucketLayoutSupport,
        OmFeature::MultiTenancy,
        OmFeature::SnapshotDiff,
    ] {
        for phase in Phase::ALL {
            let tag = format!("{phase}:{feature:?}");
            builder = builder.action(feature, phase, tag.clone(), move |s: &Service, _ctx| {
                s.record(tag.clone());
                Ok(())
            });
        }
    }
    builder.build().unwrap()
}

fn finalizer_on(
    storage: Arc<MemoryStorage>,
    opts: ManagerOptions,
    registry: Registry,
) -> Finalizer {
    let lvm = Arc::new(Om::open(storage, opts).unwrap());
    UpgradeFinalizer::new(lvm, registry)
}

fn reopen(storage: &Arc<MemoryStorage>, registry: Registry) -> Finalizer {
    finalizer_on(Arc::clone(storage), ManagerOptions::default(), registry)
}

#[test]
fn a_fresh_install_at_the_software_version_runs_no_action() {
    let service = Service::default();
    let storage = Arc::new(MemoryStorage::new());
    let opts = ManagerOptions::default().with_start_intent(layout_core::StartIntent::Init);
    let finalizer = finalizer_on(Arc::clone(&storage), opts, recording_registry());
    let report = finalizer.run_prefinalize_actions(&service).unwrap();
    assert!(report.validated.is_empty() && report.first_upgrade.is_empty());
    assert!(service.log().is_empty());
    let outcome = finalizer.finalize("admin", &service).unwrap();
    assert_eq!(
        outcome,
        FinalizeOutcome::AlreadyFinalized {
            metadata_layout_version: 3
        }
    );
    assert!(service.log().is_empty());
    assert_eq!(
        finalizer.report_status(None, false).unwrap().status,
        FinalizationStatus::AlreadyFinalized
    );
}

#[test]
fn a_pinned_fresh_install_runs_validate_then_first_upgrade_actions_ascending() {
    let service = Service::default();
    let storage = Arc::new(MemoryStorage::new());
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(1), recording_registry());
    let report = finalizer.run_prefinalize_actions(&service).unwrap();
    assert_eq!(
        report.validated,
        [OmFeature::MultiTenancy, OmFeature::SnapshotDiff]
    );
    assert_eq!(
        report.first_upgrade,
        [OmFeature::MultiTenancy, OmFeature::SnapshotDiff]
    );
    assert_eq!(
        service.log(),
        [
            "ValidateInPrefinalize:MultiTenancy",
            "ValidateInPrefinalize:SnapshotDiff",
            "OnFirstUpgradeStart:MultiTenancy",
            "OnFirstUpgradeStart:SnapshotDiff",
        ]
    );
    assert_eq!(storage.snapshot().unwrap().first_upgrade_version, 3);
    assert_eq!(
        finalizer.layout_manager().metadata_layout_version(),
        1,
        "start-up never finalizes"
    );
}

#[test]
fn first_upgrade_actions_run_exactly_once_across_five_restarts() {
    let service = Service::default();
    let storage = Arc::new(MemoryStorage::new());
    finalizer_on(Arc::clone(&storage), init_at(1), recording_registry());
    for _ in 0..5 {
        let finalizer = reopen(&storage, recording_registry());
        finalizer.run_prefinalize_actions(&service).unwrap();
    }
    assert_eq!(service.count("OnFirstUpgradeStart:MultiTenancy"), 1);
    assert_eq!(service.count("OnFirstUpgradeStart:SnapshotDiff"), 1);
    assert_eq!(
        service.count("OnFirstUpgradeStart:BucketLayoutSupport"),
        0,
        "finalized already"
    );
    // Validation runs on every pre-finalized start.
    assert_eq!(service.count("ValidateInPrefinalize:MultiTenancy"), 5);
    assert_eq!(service.count("ValidateInPrefinalize:SnapshotDiff"), 5);
}

#[test]
fn validation_stops_once_its_feature_is_finalized() {
    let service = Service::default();
    let storage = Arc::new(MemoryStorage::new());
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(1), recording_registry());
    finalizer.run_prefinalize_actions(&service).unwrap();
    finalizer
        .finalize_to(OmFeature::MultiTenancy, "admin", &service)
        .unwrap();
    drop(finalizer);
    let service = Service::default();
    reopen(&storage, recording_registry())
        .run_prefinalize_actions(&service)
        .unwrap();
    assert_eq!(service.log(), ["ValidateInPrefinalize:SnapshotDiff"]);
}

#[test]
fn a_failing_validation_refuses_start_up_naming_the_feature() {
    let storage = Arc::new(MemoryStorage::new());
    let registry = Registry::builder()
        .validate_in_prefinalize(OmFeature::SnapshotDiff, |_s, _ctx| {
            Err(ActionError::new("snapshot directory is missing"))
        })
        .build()
        .unwrap();
    let finalizer = finalizer_on(storage, init_at(1), registry);
    let err = finalizer
        .run_prefinalize_actions(&Service::default())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PrefinalizeError::ValidationFailed {
                feature: OmFeature::SnapshotDiff,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("SnapshotDiff") && msg.contains("snapshot directory is missing"),
        "{msg}"
    );
}

#[test]
fn a_failing_first_upgrade_action_reruns_on_the_next_start_and_only_it() {
    let storage = Arc::new(MemoryStorage::new());
    let fail = Arc::new(Mutex::new(true));
    let registry = |fail: Arc<Mutex<bool>>| {
        Registry::builder()
            .on_first_upgrade_start(OmFeature::MultiTenancy, |s: &Service, _ctx| {
                s.record("first:MultiTenancy");
                Ok(())
            })
            .on_first_upgrade_start(OmFeature::SnapshotDiff, move |s: &Service, _ctx| {
                s.record("first:SnapshotDiff");
                if *fail.lock() {
                    Err(ActionError::new("not yet"))
                } else {
                    Ok(())
                }
            })
            .build()
            .unwrap()
    };
    let service = Service::default();
    let finalizer = finalizer_on(
        Arc::clone(&storage),
        init_at(1),
        registry(Arc::clone(&fail)),
    );
    let err = finalizer.run_prefinalize_actions(&service).unwrap_err();
    assert!(
        matches!(
            err,
            PrefinalizeError::FirstUpgradeFailed {
                feature: OmFeature::SnapshotDiff,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        storage.snapshot().unwrap().first_upgrade_version,
        2,
        "marker after the one that passed"
    );
    drop(finalizer);

    *fail.lock() = false;
    reopen(&storage, registry(fail))
        .run_prefinalize_actions(&service)
        .unwrap();
    assert_eq!(service.count("first:MultiTenancy"), 1);
    assert_eq!(service.count("first:SnapshotDiff"), 2);
    assert_eq!(storage.snapshot().unwrap().first_upgrade_version, 3);
}

#[test]
fn finalize_runs_each_on_finalize_action_once_in_order_and_records_history() {
    let service = Service::default();
    let storage = Arc::new(MemoryStorage::new());
    let clock = Arc::new(ManualClock::at_ms(1_000));
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(0), recording_registry())
        .with_clock(clock.clone());
    let stores = storage.durable_stores();
    let outcome = finalizer.finalize("alice", &service).unwrap();
    assert_eq!(
        outcome.finalized(),
        [
            OmFeature::BucketLayoutSupport,
            OmFeature::MultiTenancy,
            OmFeature::SnapshotDiff
        ]
    );
    assert_eq!(
        service.log(),
        [
            "OnFinalize:BucketLayoutSupport",
            "OnFinalize:MultiTenancy",
            "OnFinalize:SnapshotDiff"
        ]
    );
    // One durable commit per feature: these actions never report progress, so the
    // first is not named on its own (each feature's commit names the next action).
    assert_eq!(
        storage.durable_stores() - stores,
        3,
        "one durable commit per feature"
    );
    let state = storage.snapshot().unwrap();
    assert_eq!(state.layout_version, 3);
    let record = state.finalization.unwrap();
    assert_eq!(
        (record.client_id.as_str(), record.target_version),
        ("alice", 3)
    );
    assert_eq!(
        (record.started_at_ms, record.finished_at_ms),
        (1_000, Some(1_000))
    );
    let history: Vec<_> = state
        .history
        .iter()
        .map(|h| {
            (
                h.client_id.as_str(),
                h.event.as_str(),
                h.from_version,
                h.to_version,
                h.detail.as_str(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("alice", "finalized", 0, 1, "BucketLayoutSupport"),
            ("alice", "finalized", 1, 2, "MultiTenancy"),
            ("alice", "finalized", 2, 3, "SnapshotDiff"),
        ]
    );
    let status = finalizer.report_status(Some("alice"), false).unwrap();
    assert_eq!(status.status, FinalizationStatus::FinalizationDone);
    assert_eq!(
        status.messages.first().map(String::as_str),
        Some("Finalization started.")
    );
    assert_eq!(
        status.messages.last().map(String::as_str),
        Some("Finalization is done.")
    );
}

#[test]
fn a_feature_without_an_action_is_reported_and_still_finalized() {
    let service = Service::default();
    let finalizer = finalizer_on(
        Arc::new(MemoryStorage::new()),
        init_at(2),
        Registry::empty(),
    );
    finalizer.finalize("admin", &service).unwrap();
    let status = finalizer.report_status(Some("admin"), false).unwrap();
    assert!(
        status
            .messages
            .iter()
            .any(|m| m == "No onFinalize work defined for feature: SnapshotDiff."),
        "{:?}",
        status.messages
    );
    assert_eq!(status.metadata_layout_version, 3);
}

#[test]
fn a_second_finalize_during_the_first_is_refused_at_once_and_actions_run_once() {
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let registry = Registry::builder()
        .on_finalize(OmFeature::BucketLayoutSupport, move |s: &Service, _ctx| {
            s.record("BucketLayoutSupport");
            entered_tx.send(()).unwrap();
            release_rx.lock().recv().unwrap();
            Ok(())
        })
        .on_finalize(OmFeature::MultiTenancy, |s: &Service, _ctx| {
            s.record("MultiTenancy");
            Ok(())
        })
        .build()
        .unwrap();
    let finalizer = Arc::new(finalizer_on(
        Arc::new(MemoryStorage::new()),
        init_at(0),
        registry,
    ));
    let service = Arc::new(Service::default());
    let handle = finalizer.start_finalize(None, "alice".into(), Arc::clone(&service));
    entered_rx.recv().unwrap(); // the first finalization is inside its first action

    let err = finalizer.finalize("bob", &service).unwrap_err();
    assert!(
        matches!(&err, FinalizeError::InProgress { holder } if holder == "alice"),
        "{err:?}"
    );
    // One contention error: the dry run is blocked by the same words.
    let plan = finalizer.dry_run(None, &service).unwrap();
    assert_eq!(plan.blocked_by.as_deref(), Some(err.to_string().as_str()));
    assert_eq!(
        err.to_string(),
        "finalization is already in progress, started by client alice"
    );
    let status = finalizer.report_status(None, false).unwrap();
    assert_eq!(status.status, FinalizationStatus::FinalizationInProgress);
    let progress = status.progress.unwrap();
    assert_eq!((progress.feature_index, progress.feature_count), (1, 3));
    assert_eq!(progress.feature, OmFeature::BucketLayoutSupport);

    release_tx.send(()).unwrap();
    let outcome = handle.join().unwrap();
    assert_eq!(outcome.metadata_layout_version(), 3);
    assert_eq!(service.count("BucketLayoutSupport"), 1);
    assert_eq!(service.count("MultiTenancy"), 1);
}

#[test]
fn a_failing_action_stops_there_and_a_later_finalize_resumes_across_a_restart() {
    let storage = Arc::new(MemoryStorage::new());
    let failures_left = Arc::new(Mutex::new(2));
    let registry = |failures_left: Arc<Mutex<u32>>| {
        Registry::builder()
            .on_finalize(OmFeature::BucketLayoutSupport, |s: &Service, _ctx| {
                s.record("BucketLayoutSupport");
                Ok(())
            })
            .on_finalize(OmFeature::MultiTenancy, move |s: &Service, _ctx| {
                s.record("MultiTenancy");
                let mut left = failures_left.lock();
                if *left > 0 {
                    *left -= 1;
                    return Err(ActionError::with_source(
                        "tenant table",
                        std::io::Error::other("disk full"),
                    ));
                }
                Ok(())
            })
            .build()
            .unwrap()
    };
    let service = Service::default();
    let finalizer = finalizer_on(
        Arc::clone(&storage),
        init_at(0),
        registry(Arc::clone(&failures_left)),
    );

    let err = finalizer.finalize("alice", &service).unwrap_err();
    match &err {
        FinalizeError::ActionFailed {
            feature, finalized, ..
        } => {
            assert_eq!(*feature, OmFeature::MultiTenancy);
            assert_eq!(finalized, &[OmFeature::BucketLayoutSupport]);
        }
        other => panic!("expected ActionFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("MultiTenancy") && err.to_string().contains("disk full"));
    assert_eq!(finalizer.layout_manager().metadata_layout_version(), 1);
    let status = finalizer.report_status(Some("alice"), false).unwrap();
    assert_eq!(status.status, FinalizationStatus::FinalizationRequired);
    assert!(status.last_error.unwrap().contains("disk full"));
    drop(finalizer);

    // Restart: the unfinished finalization still belongs to alice.
    let finalizer = reopen(&storage, registry(Arc::clone(&failures_left)));
    assert_eq!(finalizer.layout_manager().metadata_layout_version(), 1);
    assert!(
        finalizer.finalize("alice", &service).is_err(),
        "second failure"
    );
    assert_eq!(finalizer.layout_manager().metadata_layout_version(), 1);
    drop(finalizer);

    let finalizer = reopen(&storage, registry(failures_left));
    let outcome = finalizer.finalize("alice", &service).unwrap();
    assert_eq!(
        outcome.finalized(),
        [OmFeature::MultiTenancy, OmFeature::SnapshotDiff]
    );
    assert_eq!(
        service.count("MultiTenancy"),
        3,
        "moved past it only on the third try"
    );
    assert_eq!(
        service.count("BucketLayoutSupport"),
        1,
        "earlier features are not re-run"
    );
    assert_eq!(storage.snapshot().unwrap().layout_version, 3);
}

#[test]
fn a_panicking_action_is_an_action_failure_not_a_crash() {
    let registry = Registry::builder()
        .on_finalize(OmFeature::SnapshotDiff, |_s, _ctx| {
            panic!("index out of range")
        })
        .build()
        .unwrap();
    let finalizer = finalizer_on(Arc::new(MemoryStorage::new()), init_at(2), registry);
    let err = finalizer
        .finalize("admin", &Service::default())
        .unwrap_err();
    assert!(
        matches!(&err, FinalizeError::ActionFailed { feature: OmFeature::SnapshotDiff, source, .. } if source.to_string().contains("index out of range")),
        "{err:?}"
    );
    // The finalizer is usable again.
    assert!(matches!(
        finalizer.finalize("admin", &Service::default()),
        Err(FinalizeError::ActionFailed { .. })
    ));
}

#[test]
fn an_unfinished_finalization_keeps_its_client_across_a_restart() {
    let storage = Arc::new(MemoryStorage::new());
    let registry = || {
        Registry::builder()
            .on_finalize(OmFeature::MultiTenancy, |_s, _ctx| {
                Err(ActionError::new("not now"))
            })
            .build()
            .unwrap()
    };
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(0), registry());
    assert!(finalizer.finalize("alice", &Service::default()).is_err());
    drop(finalizer);

    let finalizer = reopen(&storage, registry());
    let status = finalizer.report_status(None, false).unwrap();
    assert_eq!(status.client_id.as_deref(), Some("alice"));
    let err = finalizer.report_status(Some("bob"), false).unwrap_err();
    assert!(
        matches!(&err, FinalizeError::NotTheClient { holder, .. } if holder == "alice"),
        "{err:?}"
    );
    assert!(
        finalizer.report_status(Some("alice"), false).is_ok(),
        "alice is not locked out"
    );
    let err = finalizer.finalize("bob", &Service::default()).unwrap_err();
    assert!(
        matches!(&err, FinalizeError::OwnedByAnotherClient { holder, .. } if holder == "alice"),
        "{err:?}"
    );

    // Bob takes over; it is stored and survives another restart.
    finalizer.report_status(Some("bob"), true).unwrap();
    drop(finalizer);
    let finalizer = reopen(&storage, registry());
    assert_eq!(
        finalizer
            .report_status(None, false)
            .unwrap()
            .client_id
            .as_deref(),
        Some("bob")
    );
    let history = storage.snapshot().unwrap().history;
    assert!(history.iter().any(|h| h.event == HistoryEvent::Takeover
        && h.client_id == "bob"
        && h.detail == "from alice"));
}

#[test]
fn messages_go_to_the_bound_client_once_and_read_only_status_drains_nothing() {
    let finalizer = finalizer_on(
        Arc::new(MemoryStorage::new()),
        init_at(2),
        Registry::empty(),
    );
    finalizer.finalize("alice", &Service::default()).unwrap();
    let read_only = finalizer.report_status(None, false).unwrap();
    assert!(read_only.messages.is_empty());
    let first = finalizer.report_status(Some("alice"), false).unwrap();
    assert!(!first.messages.is_empty());
    let second = finalizer.report_status(Some("alice"), false).unwrap();
    assert!(second.messages.is_empty(), "each message is delivered once");
    assert!(matches!(
        finalizer.report_status(Some("mallory"), false),
        Err(FinalizeError::NotTheClient { .. })
    ));
    let taken = finalizer.report_status(Some("mallory"), true).unwrap();
    assert_eq!(taken.client_id.as_deref(), Some("mallory"));
}

#[test]
fn conditions_are_all_checked_first_and_an_override_is_recorded() {
    let storage = Arc::new(MemoryStorage::new());
    let service = Service::default();
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(0), recording_registry())
        .with_condition(condition("no-open-containers", |_s: &Service| {
            Err("container 17 is open".into())
        }))
        .with_condition(condition("members-reachable", |_s: &Service| {
            Err("dn-3 is unreachable".into())
        }))
        .with_condition(condition("disk-space", |_s: &Service| Ok(())));

    let err = finalizer.finalize("alice", &service).unwrap_err();
    match &err {
        FinalizeError::ConditionsFailed { failures } => {
            let names: Vec<_> = failures
                .iter()
                .map(|f| (f.name.as_str(), f.reason.to_string()))
                .collect();
            assert_eq!(
                names,
                [
                    ("no-open-containers", "container 17 is open".to_owned()),
                    ("members-reachable", "dn-3 is unreachable".to_owned())
                ]
            );
        }
        other => panic!("expected ConditionsFailed, got {other:?}"),
    }
    assert!(service.log().is_empty(), "nothing was touched");
    assert_eq!(storage.snapshot().unwrap().layout_version, 0);

    // Overriding one is not enough; overriding both with reasons is.
    let one =
        FinalizeRequest::new("alice").with_override("no-open-containers", "container is abandoned");
    assert!(matches!(
        finalizer.finalize_with(one, &service),
        Err(FinalizeError::ConditionsFailed { failures }) if failures.len() == 1
    ));
    let unknown = FinalizeRequest::new("alice").with_override("no-such-check", "because");
    assert!(matches!(
        finalizer.finalize_with(unknown, &service),
        Err(FinalizeError::UnknownCondition { .. })
    ));
    let no_reason = FinalizeRequest::new("alice").with_override("disk-space", " ");
    assert!(matches!(
        finalizer.finalize_with(no_reason, &service),
        Err(FinalizeError::OverrideWithoutReason { .. })
    ));

    let both = FinalizeRequest::new("alice")
        .with_override("no-open-containers", "container 17 is abandoned, OPS-1")
        .with_override("members-reachable", "dn-3 is decommissioned");
    finalizer.finalize_with(both, &service).unwrap();
    let history = storage.snapshot().unwrap().history;
    let overrides: Vec<_> = history
        .iter()
        .filter(|h| h.event == HistoryEvent::Override)
        .collect();
    assert_eq!(overrides.len(), 2);
    assert!(overrides[0]
        .detail
        .contains("container 17 is abandoned, OPS-1"));
    assert!(overrides[0].detail.contains("container 17 is open"));
    assert_eq!(overrides[1].client_id, "alice");
}

#[test]
fn a_condition_that_is_not_overridable_refuses_an_override_and_passes_only_when_it_holds() {
    let storage = Arc::new(MemoryStorage::new());
    let service = Service::default();
    let holds = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let check = Arc::clone(&holds);
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(0), recording_registry())
        .with_condition(
            condition("cluster-finalization", move |_s: &Service| {
                if check.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("finalize through the coordinator".into())
                }
            })
            .not_overridable("only the coordinator passes it; exclude the member there"),
        );
    let forced =
        || FinalizeRequest::new("alice").with_override("cluster-finalization", "I know best");
    let err = finalizer.finalize_with(forced(), &service).unwrap_err();
    assert!(
        matches!(&err, FinalizeError::NotOverridable { condition, .. } if condition == "cluster-finalization"),
        "{err}"
    );
    assert!(err.to_string().contains("cannot be overridden"), "{err}");
    assert!(
        err.to_string().contains("exclude the member there"),
        "{err}"
    );
    // The dry run refuses it the same way; nothing was touched.
    assert!(matches!(
        finalizer.dry_run_with(&forced(), &service),
        Err(FinalizeError::NotOverridable { .. })
    ));
    assert!(service.log().is_empty(), "nothing was touched");
    assert_eq!(storage.snapshot().unwrap().layout_version, 0);
    // Without an override it fails like any condition; once it holds, finalize goes on.
    assert!(matches!(
        finalizer.finalize("alice", &service),
        Err(FinalizeError::ConditionsFailed { .. })
    ));
    holds.store(true, std::sync::atomic::Ordering::SeqCst);
    finalizer.finalize("alice", &service).unwrap();
    assert!(storage.snapshot().unwrap().layout_version > 0);
}

#[test]
fn dry_run_lists_steps_actions_and_conditions_and_touches_nothing() {
    let storage = Arc::new(MemoryStorage::new());
    let registry = Registry::builder()
        .action(
            OmFeature::MultiTenancy,
            Phase::OnFinalize,
            "create_tenant_tables",
            |_s, _c| Ok(()),
        )
        .build()
        .unwrap();
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(1), registry).with_condition(
        condition("disk-space", |_s: &Service| Err("3% free".into())),
    );
    let before = storage.snapshot();
    let plan = finalizer.dry_run(None, &Service::default()).unwrap();
    assert_eq!((plan.from_version, plan.target_version), (1, 3));
    let steps: Vec<_> = plan
        .steps
        .iter()
        .map(|s| (s.feature, s.action.as_deref()))
        .collect();
    assert_eq!(
        steps,
        [
            (OmFeature::MultiTenancy, Some("create_tenant_tables")),
            (OmFeature::SnapshotDiff, None)
        ]
    );
    assert_eq!(
        plan.conditions[0].result,
        Err(FinalizeRefusal::Reason("3% free".to_owned()))
    );
    assert_eq!(plan.blocked_by, None);
    assert_eq!(storage.snapshot(), before);
    let partial = finalizer
        .dry_run(Some(OmFeature::MultiTenancy), &Service::default())
        .unwrap();
    assert_eq!(partial.steps.len(), 1);
}

#[test]
fn finalize_to_stops_at_the_target_and_status_still_requires_finalization() {
    let service = Service::default();
    let finalizer = finalizer_on(
        Arc::new(MemoryStorage::new()),
        init_at(0),
        recording_registry(),
    );
    let outcome = finalizer
        .finalize_to(OmFeature::MultiTenancy, "admin", &service)
        .unwrap();
    assert_eq!(
        outcome.finalized(),
        [OmFeature::BucketLayoutSupport, OmFeature::MultiTenancy]
    );
    assert_eq!(service.count("OnFinalize:SnapshotDiff"), 0);
    let status = finalizer.report_status(None, false).unwrap();
    assert_eq!(status.status, FinalizationStatus::FinalizationRequired);
    assert_eq!(status.metadata_layout_version, 2);
    // A target at or below the MLV is a no-op.
    assert_eq!(
        finalizer
            .finalize_to(OmFeature::BucketLayoutSupport, "admin", &service)
            .unwrap(),
        FinalizeOutcome::AlreadyFinalized {
            metadata_layout_version: 2
        }
    );
}

#[test]
fn a_target_beyond_the_software_is_refused() {
    let lvm = Arc::new(
        Om::open(
            MemoryStorage::new(),
            init_at(0).with_software_layout_version(2),
        )
        .unwrap(),
    );
    let finalizer: Finalizer = UpgradeFinalizer::new(lvm, Registry::empty());
    let err = finalizer
        .finalize_to(OmFeature::SnapshotDiff, "admin", &Service::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            FinalizeError::Layout {
                source: LayoutError::BeyondSoftware { requested: 3, .. }
            }
        ),
        "{err:?}"
    );
}

/// A gate refuses finalization, and the dry run says so; once it opens, finalization
/// runs. (A prepared component refuses through its prepare controller, which is such a
/// gate: see the prepare tests.)
#[test]
fn finalize_is_refused_while_a_gate_is_up() {
    let storage = Arc::new(MemoryStorage::new());
    let _ = finalizer_on(Arc::clone(&storage), init_at(0), Registry::empty());
    let gate_up = Arc::new(Mutex::new(true));
    let gate = Arc::clone(&gate_up);
    let finalizer = reopen(&storage, Registry::empty()).with_gate(Arc::new(move || {
        if *gate.lock() {
            Err("the write gate is up".into())
        } else {
            Ok(())
        }
    }));
    let err = finalizer
        .finalize("admin", &Service::default())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            FinalizeError::Prepared { reason: FinalizeRefusal::Reason(reason) }
                if reason == "the write gate is up"
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "finalization refused: the write gate is up; cancel prepare first"
    );
    assert_eq!(
        finalizer
            .dry_run(None, &Service::default())
            .unwrap()
            .blocked_by
            .as_deref(),
        Some(err.to_string().as_str())
    );
    assert_eq!(finalizer.layout_manager().metadata_layout_version(), 0);
    *gate_up.lock() = false;
    finalizer.finalize("admin", &Service::default()).unwrap();
}

#[test]
fn a_background_finalization_can_be_cancelled_between_features() {
    let (entered_tx, entered_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let registry = Registry::builder()
        .on_finalize(OmFeature::BucketLayoutSupport, move |_s: &Service, ctx| {
            ctx.report_progress(5, Some(10));
            entered_tx.send(()).unwrap();
            release_rx.lock().recv().unwrap();
            Ok(())
        })
        .build()
        .unwrap();
    let finalizer = Arc::new(finalizer_on(
        Arc::new(MemoryStorage::new()),
        init_at(0),
        registry,
    ));
    let handle = finalizer.start_finalize(None, "alice".into(), Arc::new(Service::default()));
    entered_rx.recv().unwrap();
    let progress = finalizer
        .report_status(None, false)
        .unwrap()
        .progress
        .unwrap();
    assert_eq!((progress.done, progress.total), (5, Some(10)));
    handle.cancel();
    release_tx.send(()).unwrap();
    let err = handle.join().unwrap_err();
    match err {
        FinalizeError::Cancelled { next, finalized } => {
            assert_eq!(next, OmFeature::MultiTenancy);
            assert_eq!(finalized, [OmFeature::BucketLayoutSupport]);
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert_eq!(finalizer.layout_manager().metadata_layout_version(), 1);
    let status = finalizer.report_status(None, false).unwrap();
    assert_eq!(status.status, FinalizationStatus::FinalizationRequired);
    // It resumes where it stopped.
    let outcome = finalizer.finalize("alice", &Service::default()).unwrap();
    assert_eq!(
        outcome.finalized(),
        [OmFeature::MultiTenancy, OmFeature::SnapshotDiff]
    );
}

#[test]
fn an_error_after_the_mlv_reached_the_software_version_is_reported() {
    let storage = Arc::new(MemoryStorage::new());
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(2), Registry::empty());
    // The last commit lands on disk but its confirmation fails.
    storage.fail_next_store(InjectedFailure::AfterWrite);
    let err = finalizer
        .finalize("admin", &Service::default())
        .unwrap_err();
    assert!(matches!(err, FinalizeError::Layout { .. }), "{err:?}");
    assert_eq!(storage.snapshot().unwrap().layout_version, 3);
    let status = finalizer.report_status(None, false).unwrap();
    assert!(
        status.last_error.is_some(),
        "the error is kept, not swallowed"
    );
    drop(finalizer);
    // After a restart the disk's word counts: finalized.
    let finalizer = reopen(&storage, Registry::empty());
    assert_eq!(
        finalizer.report_status(None, false).unwrap().status,
        FinalizationStatus::AlreadyFinalized
    );
}

#[test]
fn auto_finalize_waits_for_the_soak_period_and_respects_a_veto_until_it_expires() {
    let storage = Arc::new(MemoryStorage::new());
    let clock = Arc::new(ManualClock::at_ms(1_000_000));
    let service = Service::default();
    let finalizer = finalizer_on(Arc::clone(&storage), init_at(1), recording_registry())
        .with_clock(clock.clone())
        .with_policy(FinalizePolicy::Auto {
            soak: Duration::from_secs(3600),
        });

    assert!(finalizer.tick(&service).is_none(), "still soaking");
    let status = finalizer.report_status(None, false).unwrap();
    assert_eq!(
        status.auto_finalize_at,
        Some(layout_core::clock::from_ms(1_000_000 + 3_600_000))
    );

    let expiry = layout_core::clock::from_ms(1_000_000 + 7_200_000);
    finalizer
        .set_veto(
            "ops",
            "keep downgrade possible until the canary ends",
            Some(expiry),
        )
        .unwrap();
    clock.advance(Duration::from_secs(3601));
    assert!(finalizer.tick(&service).is_none(), "vetoed");
    let status = finalizer.report_status(None, false).unwrap();
    assert!(status.veto_active);
    assert_eq!(
        status.veto.unwrap().reason,
        "keep downgrade possible until the canary ends"
    );
    assert_eq!(status.auto_finalize_at, None);

    clock.advance(Duration::from_secs(3600)); // the veto expires
    let outcome = finalizer.tick(&service).unwrap().unwrap();
    assert_eq!(outcome.metadata_layout_version(), 3);
    let state = storage.snapshot().unwrap();
    assert_eq!(state.finalization.unwrap().client_id, AUTO_FINALIZE_CLIENT);
    assert!(state
        .history
        .iter()
        .any(|h| h.event == HistoryEvent::Veto && h.client_id == "ops"));
    assert!(finalizer.tick(&service).is_none(), "nothing left to do");
}

#[test]
fn manual_policy_never_finalizes_by_itself_and_a_lifted_veto_is_recorded() {
    let storage = Arc::new(MemoryStorage::new());
    let clock = Arc::new(ManualClock::at_ms(0));
    let finalizer =
        finalizer_on(Arc::clone(&storage), init_at(1), Registry::empty()).with_clock(clock.clone());
    clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert!(finalizer.tick(&Service::default()).is_none());
    finalizer.set_veto("ops", "canary", None).unwrap();
    finalizer.clear_veto("ops").unwrap();
    let state = storage.snapshot().unwrap();
    assert!(state.veto.is_none());
    assert!(state
        .history
        .iter()
        .any(|h| h.event == HistoryEvent::VetoLifted));
    assert_eq!(state.layout_version, 1);
}

#[test]
fn the_finalization_survives_a_restart_on_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::default();
    let open = |opts: ManagerOptions| {
        let lvm = Arc::new(
            LayoutVersionManager::<OmFeature>::open(FileStorage::new(dir.path()), opts).unwrap(),
        );
        UpgradeFinalizer::new(lvm, recording_registry())
    };
    let finalizer = open(init_at(1));
    finalizer.run_prefinalize_actions(&service).unwrap();
    finalizer
        .finalize_to(OmFeature::MultiTenancy, "alice", &service)
        .unwrap();
    drop(finalizer);
    let finalizer = open(ManagerOptions::default());
    assert_eq!(finalizer.layout_manager().metadata_layout_version(), 2);
    finalizer.run_prefinalize_actions(&service).unwrap();
    finalizer.finalize("alice", &service).unwrap();
    assert_eq!(service.count("OnFirstUpgradeStart:SnapshotDiff"), 1);
    assert_eq!(service.count("OnFinalize:SnapshotDiff"), 1);
}
