//! A state-machine property test of the manager against a simple model.
//!
//! Transitions: open (initializing or not), finalize the next version (or a replayed or
//! skipped one) with an injected storage failure or none, a failing read, and reopen
//! (restart). After every transition the in-memory MLV and the persisted MLV agree with
//! the model, and memory is never ahead of the disk.

use std::sync::Arc;

use layout_core::storage::InjectedFailure;
use layout_core::{
    LayoutError, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent, StepOutcome,
    StorageError,
};
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

use crate::catalogs::OmFeature;

const SLV: u32 = 3;

#[derive(Clone, Debug, Default)]
struct Model {
    /// The MLV in storage; `None` until initialized.
    durable: Option<u32>,
    /// The MLV of the open manager; `None` while none is open.
    memory: Option<u32>,
    /// How many of the next loads fail.
    load_failures: usize,
}

#[derive(Clone, Debug)]
enum Transition {
    /// Drop any open manager and open a new one.
    Open { init: bool, initial: u32 },
    /// Finalize `version`; the store fails as given.
    Step {
        version: u32,
        failure: Option<InjectedFailure>,
    },
    /// The next load fails.
    FailNextLoad,
}

struct RefMachine;

impl ReferenceStateMachine for RefMachine {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Transition> {
        let failure = prop_oneof![
            3 => Just(None),
            1 => Just(Some(InjectedFailure::BeforeWrite)),
            1 => Just(Some(InjectedFailure::AfterWrite)),
        ];
        prop_oneof![
            1 => (any::<bool>(), 0..=SLV).prop_map(|(init, initial)| Transition::Open { init, initial }),
            4 => (0..=SLV, failure).prop_map(|(version, failure)| Transition::Step { version, failure }),
            1 => Just(Transition::FailNextLoad),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, transition: &Transition) -> bool {
        match transition {
            // Failures are injected only where a store happens.
            Transition::Step { version, failure } => state
                .memory
                .is_some_and(|m| failure.is_none() || *version == m + 1),
            _ => true,
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        match *transition {
            Transition::Open { init, initial } => {
                if state.load_failures > 0 {
                    state.load_failures -= 1;
                    state.memory = None;
                } else if let Some(durable) = state.durable {
                    state.memory = Some(durable);
                } else if init {
                    state.durable = Some(initial);
                    state.memory = Some(initial);
                } else {
                    state.memory = None;
                }
            }
            Transition::Step { version, failure } => {
                let memory = state.memory.expect("precondition");
                if version == memory + 1 {
                    match failure {
                        None => {
                            state.durable = Some(version);
                            state.memory = Some(version);
                        }
                        Some(InjectedFailure::BeforeWrite) => {}
                        Some(InjectedFailure::AfterWrite) => state.durable = Some(version),
                    }
                }
            }
            Transition::FailNextLoad => state.load_failures += 1,
        }
        state
    }
}

struct Sut {
    storage: Arc<MemoryStorage>,
    manager: Option<LayoutVersionManager<OmFeature>>,
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Self;
    type Reference = RefMachine;

    fn init_test(_: &Model) -> Self {
        Self {
            storage: Arc::new(MemoryStorage::new()),
            manager: None,
        }
    }

    fn apply(mut sut: Self, model: &Model, transition: Transition) -> Self {
        match transition {
            Transition::Open { init, initial } => {
                sut.manager = None; // a restart: the old process is gone
                let intent = if init {
                    StartIntent::Init
                } else {
                    StartIntent::Normal
                };
                let opts = ManagerOptions::default()
                    .with_start_intent(intent)
                    .with_initial_layout_version(initial);
                match LayoutVersionManager::<OmFeature>::open(Arc::clone(&sut.storage), opts) {
                    Ok(manager) => sut.manager = Some(manager),
                    Err(
                        LayoutError::NotInitialized { .. }
                        | LayoutError::Storage(StorageError::Io { .. }),
                    ) => {
                        assert!(model.memory.is_none(), "open failed but the model opened");
                    }
                    Err(other) => panic!("unexpected open error: {other:?}"),
                }
            }
            Transition::Step { version, failure } => {
                let manager = sut.manager.as_ref().expect("precondition");
                let before = manager.metadata_layout_version();
                if let Some(failure) = failure {
                    sut.storage.fail_next_store(failure);
                }
                let result = manager.finalize_step_version(version);
                if version <= before {
                    assert_eq!(
                        result.unwrap(),
                        StepOutcome::AlreadyFinalized {
                            metadata_layout_version: before
                        }
                    );
                } else if version > before + 1 {
                    assert!(
                        matches!(result, Err(LayoutError::VersionSkip { .. })),
                        "{result:?}"
                    );
                } else if failure.is_some() {
                    assert!(matches!(result, Err(LayoutError::Storage(_))), "{result:?}");
                } else {
                    assert_eq!(
                        result.unwrap(),
                        StepOutcome::Finalized {
                            from: before,
                            to: version
                        }
                    );
                }
            }
            Transition::FailNextLoad => sut.storage.fail_next_load(),
        }
        sut
    }

    fn check_invariants(sut: &Self, model: &Model) {
        let durable = sut.storage.snapshot().map(|s| s.layout_version);
        assert_eq!(durable, model.durable, "persisted MLV");
        let memory = sut
            .manager
            .as_ref()
            .map(LayoutVersionManager::metadata_layout_version);
        assert_eq!(memory, model.memory, "in-memory MLV");
        if let (Some(memory), Some(durable)) = (memory, durable) {
            assert!(memory <= durable, "memory ahead of disk");
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn manager_agrees_with_the_model(sequential 1..40 => Sut);
}
