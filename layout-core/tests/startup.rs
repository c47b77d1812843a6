//! `ComponentStartup`: the one start-up path, through the public API.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;

use layout_core::crash_point::{self, SimulatedCrash};

use layout_core::finalizer::{condition, PrefinalizeError};
use layout_core::prepare::PrepareOptions;
use layout_core::startup::{ComponentStartup, PrepareParts, StartupError};
use layout_core::StepError;
use layout_core::{
    ActionError, ActionRegistry, FinalizeError, LayoutError, LayoutFeature, LayoutVersionManager,
    ManagerOptions, MemoryStorage, Preparable, PrepareController, StartIntent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum Feature {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "An index")]
    Index,
    #[layout(version = 2, description = "Checksums")]
    Checksums,
}

/// A component that counts what ran on it; `fail_validation` and `fail_finalize` make
/// its actions fail.
#[derive(Default)]
struct Store {
    validated: AtomicU32,
    finalized: AtomicU32,
    fail_validation: AtomicBool,
    fail_finalize: AtomicBool,
    /// The Checksums action passes crash point [`MID_ACTION`] halfway.
    crash_mid_action: AtomicBool,
}

/// A crash point inside the Checksums action.
const MID_ACTION: &str = "store::checksums_half_written";

impl Preparable for Store {
    fn applied_index(&self) -> u64 {
        0
    }
    fn flush(&self) -> Result<u64, StepError> {
        Ok(0)
    }
    fn snapshot(&self, index: u64) -> Result<u64, StepError> {
        Ok(index)
    }
    fn last_snapshot_index(&self) -> u64 {
        0
    }
    fn purge_log(&self, _index: u64) -> Result<(), StepError> {
        Ok(())
    }
}

fn registry() -> Result<ActionRegistry<Feature, Store>, layout_core::action::RegistryError> {
    ActionRegistry::builder()
        .validate_in_prefinalize(Feature::Index, |s: &Store, _ctx| {
            if s.fail_validation.load(Ordering::SeqCst) {
                return Err(ActionError::new("index precondition failed"));
            }
            s.validated.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .on_finalize(Feature::Index, |s: &Store, _ctx| {
            s.finalized.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .on_finalize(Feature::Checksums, |s: &Store, ctx| {
            if s.crash_mid_action.load(Ordering::SeqCst) {
                ctx.crash_point(MID_ACTION);
            }
            if s.fail_finalize.load(Ordering::SeqCst) {
                return Err(ActionError::new("checksum rewrite failed"));
            }
            Ok(())
        })
        .build()
}

/// A start-up on `storage` at SLV 2; a fresh install starts at version 0.
fn startup(
    storage: &Arc<MemoryStorage>,
    store: impl FnOnce() -> Store + 'static,
) -> ComponentStartup<Feature, Store> {
    ComponentStartup::new("store")
        .options(
            ManagerOptions::default()
                .with_start_intent(StartIntent::Init)
                .with_initial_layout_version(0),
        )
        .storage(Arc::clone(storage))
        .open(move |_manager| Ok::<_, std::io::Error>(store()))
        .actions(|_manager| registry())
}

#[test]
fn start_opens_the_manager_under_the_components_name_and_runs_the_startup_actions() {
    let storage = Arc::new(MemoryStorage::new());
    let started = startup(&storage, Store::default).start().unwrap();
    assert_eq!(started.name(), "store");
    assert_eq!(started.manager().component_name(), "store");
    assert_eq!(started.manager().metadata_layout_version(), 0);
    // ValidateInPrefinalize of every feature above the MLV ran, once.
    assert_eq!(started.startup_report().validated, [Feature::Index]);
    assert_eq!(started.component().validated.load(Ordering::SeqCst), 1);
    // The finalizer runs the registry given.
    started
        .finalizer()
        .finalize("ops", started.component())
        .unwrap();
    assert_eq!(started.component().finalized.load(Ordering::SeqCst), 1);
    assert_eq!(started.manager().metadata_layout_version(), 2);
    assert!(!started.is_resuming());
}

#[test]
fn another_components_state_is_refused_with_the_managers_error() {
    let storage = Arc::new(MemoryStorage::new());
    drop(startup(&storage, Store::default).start().unwrap());
    let other = ComponentStartup::<Feature, Store>::new("other")
        .storage(Arc::clone(&storage))
        .open(|_| Ok::<_, std::io::Error>(Store::default()))
        .start()
        .unwrap_err();
    assert!(matches!(other, StartupError::Manager(_)), "{other}");
    assert!(other.to_string().contains("store"), "{other}");
}

#[test]
fn a_disk_newer_than_the_software_is_refused_before_the_component_opens() {
    let storage = Arc::new(MemoryStorage::new());
    let started = startup(&storage, Store::default).start().unwrap();
    started
        .finalizer()
        .finalize("ops", started.component())
        .unwrap();
    drop(started);
    let opened = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&opened);
    let refused = ComponentStartup::<Feature, Store>::new("store")
        .options(ManagerOptions::default().with_software_layout_version(1))
        .storage(Arc::clone(&storage))
        .open(move |_| {
            seen.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Store::default())
        })
        .start()
        .unwrap_err();
    assert!(
        matches!(
            refused,
            StartupError::Manager(LayoutError::DiskNewerThanSoftware { .. })
        ),
        "{refused}"
    );
    assert!(
        !opened.load(Ordering::SeqCst),
        "the component opened on a refused disk"
    );
}

#[test]
fn a_failing_startup_action_refuses_the_start() {
    let storage = Arc::new(MemoryStorage::new());
    let refused = startup(&storage, || {
        let store = Store::default();
        store.fail_validation.store(true, Ordering::SeqCst);
        store
    })
    .start()
    .unwrap_err();
    assert!(
        matches!(
            refused,
            StartupError::StartupActions(PrefinalizeError::ValidationFailed { .. })
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("index precondition failed"),
        "{refused}"
    );
}

#[test]
fn a_missing_part_is_named_with_the_call_that_gives_it() {
    let no_storage = ComponentStartup::<Feature, Store>::new("store")
        .open(|_| Ok::<_, std::io::Error>(Store::default()))
        .start()
        .unwrap_err();
    assert_eq!(
        no_storage.to_string(),
        "start-up of component store: no layout storage was given (call `storage` on the ComponentStartup)"
    );
    let no_open = ComponentStartup::<Feature, Store>::new("store")
        .storage(MemoryStorage::new())
        .start()
        .unwrap_err();
    assert!(no_open.to_string().contains("`open`"), "{no_open}");
}

#[derive(Debug, thiserror::Error)]
#[error("the store's own error: {0}")]
struct StoreError(&'static str);

#[test]
fn the_constructors_own_error_comes_back_unchanged() {
    let refused = ComponentStartup::<Feature, Store>::new("store")
        .options(ManagerOptions::default().with_start_intent(StartIntent::Init))
        .storage(MemoryStorage::new())
        .open(|_| Err::<Store, _>(StoreError("damaged database")))
        .start()
        .unwrap_err();
    assert!(
        refused.to_string().contains("damaged database"),
        "{refused}"
    );
    let own = refused.into_open_error::<StoreError>().unwrap();
    assert_eq!(own.0, "damaged database");
}

#[test]
fn resume_interrupted_finishes_a_finalization_a_crash_interrupted_and_only_when_asked() {
    let storage = Arc::new(MemoryStorage::new());
    // The process "dies" halfway through the Checksums action: a simulated crash at its
    // crash point unwinds through the finalizer, leaving the record interrupted there.
    let started = startup(&storage, || {
        let store = Store::default();
        store.crash_mid_action.store(true, Ordering::SeqCst);
        store
    })
    .start()
    .unwrap();
    let me = thread::current().id();
    let observer = crash_point::observe(move |point| {
        if point == MID_ACTION && thread::current().id() == me {
            SimulatedCrash { point, hit: 1 }.raise();
        }
    })
    .unwrap();
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        started.finalizer().finalize("ops", started.component())
    }));
    drop(observer);
    assert!(crashed.is_err(), "the simulated crash ended the run");
    assert_eq!(started.manager().metadata_layout_version(), 1);
    drop(started);

    // Without resume: still pre-finalized, nothing resumed.
    let started = startup(&storage, Store::default).start().unwrap();
    assert!(!started.is_resuming());
    assert_eq!(started.manager().metadata_layout_version(), 1);
    drop(started);

    // With resume: the start resumes it in the background, as the client that started it.
    let mut started = startup(&storage, Store::default)
        .resume_interrupted(true)
        .start()
        .unwrap();
    let resumed = started
        .take_resumed()
        .expect("the interrupted finalization was resumed")
        .join()
        .unwrap();
    assert_eq!(resumed.metadata_layout_version(), 2);
    assert_eq!(resumed.finalized(), [Feature::Checksums]);
    assert_eq!(started.manager().metadata_layout_version(), 2);
    let status = started.finalizer().report_status(None, false).unwrap();
    assert_eq!(status.client_id.as_deref(), Some("ops"));
    drop(started);

    // Nothing left to resume on the next start.
    let started = startup(&storage, Store::default)
        .resume_interrupted(true)
        .start()
        .unwrap();
    assert!(!started.is_resuming());
}

#[test]
fn resume_interrupted_leaves_a_failed_action_to_the_operator() {
    let storage = Arc::new(MemoryStorage::new());
    let started = startup(&storage, || {
        let store = Store::default();
        store.fail_finalize.store(true, Ordering::SeqCst);
        store
    })
    .start()
    .unwrap();
    let failed = started.finalizer().finalize("ops", started.component());
    assert!(
        matches!(failed, Err(FinalizeError::ActionFailed { .. })),
        "{failed:?}"
    );
    drop(started);
    let started = startup(&storage, Store::default)
        .resume_interrupted(true)
        .start()
        .unwrap();
    assert!(
        !started.is_resuming(),
        "a failed action waits for an operator"
    );
    assert_eq!(started.manager().metadata_layout_version(), 1);
}

#[test]
fn the_prepare_controller_gates_finalization() {
    let storage = Arc::new(MemoryStorage::new());
    let controller = Arc::new(std::sync::Mutex::new(None::<Arc<PrepareController>>));
    let keep = Arc::clone(&controller);
    let started = ComponentStartup::<Feature, (Arc<Store>, Arc<PrepareController>)>::new("store")
        .options(
            ManagerOptions::default()
                .with_start_intent(StartIntent::Init)
                .with_initial_layout_version(0),
        )
        .storage(Arc::clone(&storage))
        .open(|manager: &Arc<LayoutVersionManager<Feature>>| {
            let store = Arc::new(Store::default());
            let controller = PrepareController::restore(
                Arc::clone(manager),
                &*store,
                PrepareOptions::default(),
            )?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((store, Arc::new(controller)))
        })
        .actions(|_| Ok(ActionRegistry::empty()))
        .prepare(
            move |(store, controller): &(Arc<Store>, Arc<PrepareController>)| {
                *keep.lock().unwrap() = Some(Arc::clone(controller));
                PrepareParts::new(
                    Arc::clone(controller),
                    Arc::clone(store) as Arc<dyn Preparable>,
                )
            },
        )
        .start()
        .unwrap();
    let controller = controller.lock().unwrap().clone().unwrap();
    assert!(Arc::ptr_eq(
        started.prepare_controller().unwrap(),
        &controller
    ));
    controller.prepare(&*started.component().0).unwrap();
    let refused = started.finalizer().finalize("ops", started.component());
    assert!(refused.is_err(), "a prepared component finalized");
    assert_eq!(started.manager().metadata_layout_version(), 0);
    controller.cancel_prepare().unwrap();
    started
        .finalizer()
        .finalize("ops", started.component())
        .unwrap();
    assert_eq!(started.manager().metadata_layout_version(), 2);
}

/// A type of the caller's that holds the component.
struct Wrapper(Store);

#[test]
fn a_mapped_startup_keeps_the_registry_and_the_conditions() {
    let storage = Arc::new(MemoryStorage::new());
    let open = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&open);
    let mapped = startup(&storage, Store::default)
        .condition(condition("window-open", move |_: &Store| {
            if gate.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("outside the maintenance window".into())
            }
        }))
        .map_component(Wrapper, |w: &Wrapper| &w.0)
        .unwrap();
    let started = mapped.start().unwrap();
    // The start-up actions ran on the wrapped component.
    assert_eq!(started.component().0.validated.load(Ordering::SeqCst), 1);
    let refused = started
        .finalizer()
        .finalize("ops", started.component())
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("outside the maintenance window"),
        "{refused}"
    );
    open.store(true, Ordering::SeqCst);
    started
        .finalizer()
        .finalize("ops", started.component())
        .unwrap();
    assert_eq!(started.component().0.finalized.load(Ordering::SeqCst), 1);
}

#[test]
fn a_startup_with_a_finalizer_hook_refuses_to_be_mapped() {
    let storage = Arc::new(MemoryStorage::new());
    let refused = startup(&storage, Store::default)
        .configure_finalizer(|finalizer, _| finalizer)
        .map_component(Wrapper, |w: &Wrapper| &w.0)
        .unwrap_err();
    assert!(
        matches!(refused, StartupError::NotMappable { .. }),
        "{refused}"
    );
}

#[cfg(feature = "admin-http")]
#[test]
fn the_admin_endpoint_serves_the_started_component() {
    use layout_core::admin::http::{AdminClient, HttpConfig};

    let storage = Arc::new(MemoryStorage::new());
    let config = HttpConfig::new("a-token-of-sufficient-length-0123456789")
        .unwrap()
        .with_bind_addr(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let started = startup(&storage, Store::default)
        .admin(config)
        .start()
        .unwrap();
    let server = started.admin_server().expect("the endpoint runs");
    let client =
        AdminClient::new(&server.url(), "a-token-of-sufficient-length-0123456789").unwrap();
    let status = client.status().unwrap();
    assert_eq!(status.component, "store");
    assert_eq!(status.metadata_layout_version, 0);
    assert_eq!(status.software_layout_version, 2);
}
