//! A state-machine property test of the finalizer against a reference model.
//!
//! Transitions: finalize (by one of two clients, to a target or to the SLV, with or
//! without takeover), arm an action to fail or to cancel the run when it executes, arm a
//! crash at the n-th pass of one of the finalizer's crash points or of one inside the
//! actions (the next finalization
//! dies there: in process, a `SimulatedCrash` unwinds and the manager and finalizer are
//! dropped), and restart (reopen from the same storage). After every transition the
//! outcome, the MLV, the stored finalization record (client, target, finished) and the
//! `finalized` history agree with the model.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock, Weak};
use std::thread;

use layout_core::crash_point::{self, SimulatedCrash};
use layout_core::finalizer::FAILPOINTS;
use layout_core::state::HistoryEvent;
use layout_core::{
    ActionContext, ActionError, ActionRegistry, FinalizeError, FinalizeOutcome, FinalizeRequest,
    LayoutFeature, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent,
    UpgradeFinalizer,
};
use parking_lot::Mutex;
use proptest::prelude::*;
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};

use crate::catalogs::OmFeature;

const SLV: u32 = 3;
const CLIENTS: [&str; 2] = ["alice", "bob"];
/// The crash point every action passes first (its own, declared on its context).
const IN_ACTION: &str = "model::action_started";

/// The stored finalization record, as the model sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    client: &'static str,
    target: u32,
    finished: bool,
}

/// What a finalization returns.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Done(Vec<u32>),
    AlreadyFinalized,
    OwnedByAnotherClient,
    ActionFailed(u32),
    Cancelled(u32),
    Crashed(&'static str, usize),
}

#[derive(Clone, Debug)]
struct Model {
    mlv: u32,
    record: Option<Record>,
    /// Versions whose next action run fails.
    fail: BTreeSet<u32>,
    /// Versions whose next action run cancels the finalization.
    cancel: BTreeSet<u32>,
    /// The next finalization crashes at this pass of this crash point.
    crash: Option<(&'static str, usize)>,
    /// Whether the process runs (false after a crash, until a restart).
    alive: bool,
    /// `finalized` history entries.
    finalized_entries: usize,
    /// The outcome of the last finalization.
    last: Option<Outcome>,
}

#[derive(Clone, Debug)]
enum Transition {
    Finalize {
        client: &'static str,
        target: Option<u32>,
        takeover: bool,
    },
    FailAction(u32),
    CancelDuring(u32),
    CrashAt(&'static str, usize),
    Restart,
}

/// The model of one finalization run (the finalizer's documented rules).
fn run(m: &mut Model, client: &'static str, target: Option<u32>, takeover: bool) -> Outcome {
    let crash = m.crash.take();
    let mut passes: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut crashes_at = |point: &'static str| {
        let n = passes.entry(point).or_default();
        *n += 1;
        (crash == Some((point, *n))).then_some(Outcome::Crashed(point, *n))
    };
    let target = target.unwrap_or(SLV);
    let unfinished = m.record.clone().filter(|r| !r.finished);
    let mut took_over = false;
    if let Some(r) = &unfinished {
        if r.client != client {
            if !takeover {
                return Outcome::OwnedByAnotherClient;
            }
            took_over = true;
        }
    }
    if target <= m.mlv {
        if unfinished.is_some_and(|r| r.target <= m.mlv) {
            m.record.as_mut().expect("unfinished").finished = true;
        }
        return Outcome::AlreadyFinalized;
    }
    if took_over {
        m.record = Some(Record {
            client,
            target,
            finished: false,
        });
    }
    let dead = |m: &mut Model, outcome: Outcome| {
        m.alive = false;
        outcome
    };
    if let Some(c) = crashes_at("finalize::started") {
        return dead(m, c);
    }
    let mut cancelled = false;
    let mut done = Vec::new();
    for v in m.mlv + 1..=target {
        if cancelled {
            return Outcome::Cancelled(v);
        }
        // These actions never report progress: the record is not written before them
        // (only a reporting action is named on its own).
        for point in ["finalize::before_action", IN_ACTION] {
            if let Some(c) = crashes_at(point) {
                return dead(m, c);
            }
        }
        if m.fail.remove(&v) {
            return Outcome::ActionFailed(v);
        }
        if m.cancel.remove(&v) {
            cancelled = true;
        }
        for point in ["finalize::after_action", "finalize::before_persist"] {
            if let Some(c) = crashes_at(point) {
                return dead(m, c);
            }
        }
        m.mlv = v;
        let record = match m.record.take() {
            Some(r) if !r.finished => r,
            _ => Record {
                client,
                target,
                finished: false,
            },
        };
        m.record = Some(Record {
            target,
            finished: v == target,
            ..record
        });
        m.finalized_entries += 1;
        done.push(v);
        for point in ["finalize::after_persist", "finalize::after_publish"] {
            if let Some(c) = crashes_at(point) {
                return dead(m, c);
            }
        }
    }
    if let Some(c) = crashes_at("finalize::done") {
        return dead(m, c);
    }
    Outcome::Done(done)
}

struct RefMachine;

impl ReferenceStateMachine for RefMachine {
    type State = Model;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            mlv: 0,
            record: None,
            fail: BTreeSet::new(),
            cancel: BTreeSet::new(),
            crash: None,
            alive: true,
            finalized_entries: 0,
            last: None,
        })
        .boxed()
    }

    fn transitions(_state: &Model) -> BoxedStrategy<Transition> {
        let client = prop::sample::select(CLIENTS.to_vec());
        let target = prop_oneof![Just(None), (0..=SLV).prop_map(Some)];
        prop_oneof![
            6 => (client, target, prop::bool::weighted(0.3)).prop_map(|(client, target, takeover)| {
                Transition::Finalize { client, target, takeover }
            }),
            2 => (1..=SLV).prop_map(Transition::FailAction),
            1 => (1..=SLV).prop_map(Transition::CancelDuring),
            2 => (prop::sample::select([FAILPOINTS, &[IN_ACTION]].concat()), 1..=3usize)
                .prop_map(|(point, hit)| Transition::CrashAt(point, hit)),
            1 => Just(Transition::Restart),
        ]
        .boxed()
    }

    fn preconditions(state: &Model, transition: &Transition) -> bool {
        match transition {
            Transition::Finalize { .. } => state.alive,
            _ => true,
        }
    }

    fn apply(mut state: Model, transition: &Transition) -> Model {
        match *transition {
            Transition::Finalize {
                client,
                target,
                takeover,
            } => {
                let outcome = run(&mut state, client, target, takeover);
                state.last = Some(outcome);
            }
            Transition::FailAction(v) => {
                state.fail.insert(v);
            }
            Transition::CancelDuring(v) => {
                state.cancel.insert(v);
            }
            Transition::CrashAt(point, hit) => state.crash = Some((point, hit)),
            Transition::Restart => state.alive = true,
        }
        state
    }
}

/// One-shot behaviours armed for the actions; they survive restarts (they are the
/// test's, not the process's).
#[derive(Default)]
struct Arms {
    fail: BTreeSet<u32>,
    cancel: BTreeSet<u32>,
}

type Finalizer = UpgradeFinalizer<OmFeature, Svc>;

struct Svc {
    arms: Arc<Mutex<Arms>>,
    finalizer: OnceLock<Weak<Finalizer>>,
}

fn action(svc: &Svc, ctx: &ActionContext<'_, OmFeature>, version: u32) -> Result<(), ActionError> {
    ctx.crash_point(IN_ACTION);
    let mut arms = svc.arms.lock();
    if arms.fail.remove(&version) {
        return Err(ActionError::new(format!("injected failure at {version}")));
    }
    if arms.cancel.remove(&version) {
        if let Some(finalizer) = svc.finalizer.get().and_then(Weak::upgrade) {
            finalizer.cancel();
        }
    }
    Ok(())
}

struct Process {
    lvm: Arc<LayoutVersionManager<OmFeature>>,
    finalizer: Arc<Finalizer>,
    svc: Svc,
}

struct Sut {
    storage: Arc<MemoryStorage>,
    arms: Arc<Mutex<Arms>>,
    crash: Option<(&'static str, usize)>,
    process: Option<Process>,
}

impl Sut {
    fn start(&mut self, intent: StartIntent) {
        let options = ManagerOptions::default()
            .with_start_intent(intent)
            .with_initial_layout_version(0);
        let lvm = Arc::new(
            LayoutVersionManager::<OmFeature>::open(Arc::clone(&self.storage), options).unwrap(),
        );
        let mut registry = ActionRegistry::<OmFeature, Svc>::builder();
        for &feature in OmFeature::ALL.iter().filter(|f| f.layout_version() > 0) {
            let version = feature.layout_version();
            registry =
                registry.on_finalize(feature, move |svc: &Svc, ctx| action(svc, ctx, version));
        }
        let finalizer = Arc::new(UpgradeFinalizer::new(
            Arc::clone(&lvm),
            registry.build().unwrap(),
        ));
        let svc = Svc {
            arms: Arc::clone(&self.arms),
            finalizer: OnceLock::new(),
        };
        svc.finalizer.set(Arc::downgrade(&finalizer)).ok();
        self.process = Some(Process {
            lvm,
            finalizer,
            svc,
        });
    }

    fn finalize(&mut self, client: &str, target: Option<u32>, takeover: bool) -> Outcome {
        let process = self.process.as_ref().expect("precondition: alive");
        let mut request = FinalizeRequest::new(client).with_takeover(takeover);
        request.target = target.and_then(OmFeature::from_layout_version);
        let crash = self.crash.take();
        let me = thread::current().id();
        let passes = Arc::new(Mutex::new(BTreeMap::<&'static str, usize>::new()));
        let guard = crash_point::observe(move |point| {
            if thread::current().id() != me {
                return;
            }
            let n = {
                let mut passes = passes.lock();
                let n = passes.entry(point).or_default();
                *n += 1;
                *n
            };
            if crash == Some((point, n)) {
                SimulatedCrash { point, hit: n }.raise();
            }
        })
        .expect("no other test in this binary observes crash points");
        let result = catch_unwind(AssertUnwindSafe(|| {
            process.finalizer.finalize_with(request, &process.svc)
        }));
        drop(guard);
        match result {
            Err(payload) => {
                let crash = *payload
                    .downcast_ref::<SimulatedCrash>()
                    .expect("only simulated crashes unwind out of the finalizer");
                self.process = None; // the process is gone
                Outcome::Crashed(crash.point, crash.hit)
            }
            Ok(Ok(FinalizeOutcome::FinalizationDone { finalized, .. })) => {
                Outcome::Done(finalized.iter().map(|f| f.layout_version()).collect())
            }
            Ok(Ok(FinalizeOutcome::AlreadyFinalized { .. })) => Outcome::AlreadyFinalized,
            Ok(Err(FinalizeError::OwnedByAnotherClient { .. })) => Outcome::OwnedByAnotherClient,
            Ok(Err(FinalizeError::ActionFailed { feature, .. })) => {
                Outcome::ActionFailed(feature.layout_version())
            }
            Ok(Err(FinalizeError::Cancelled { next, .. })) => {
                Outcome::Cancelled(next.layout_version())
            }
            Ok(other) => panic!("unexpected finalization result: {other:?}"),
        }
    }
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Self;
    type Reference = RefMachine;

    fn init_test(_: &Model) -> Self {
        let mut sut = Self {
            storage: Arc::new(MemoryStorage::new()),
            arms: Arc::new(Mutex::new(Arms::default())),
            crash: None,
            process: None,
        };
        sut.start(StartIntent::Init);
        sut
    }

    fn apply(mut sut: Self, model: &Model, transition: Transition) -> Self {
        match transition {
            Transition::Finalize {
                client,
                target,
                takeover,
            } => {
                let outcome = sut.finalize(client, target, takeover);
                assert_eq!(Some(&outcome), model.last.as_ref(), "finalization outcome");
            }
            Transition::FailAction(v) => {
                sut.arms.lock().fail.insert(v);
            }
            Transition::CancelDuring(v) => {
                sut.arms.lock().cancel.insert(v);
            }
            Transition::CrashAt(point, hit) => sut.crash = Some((point, hit)),
            Transition::Restart => {
                sut.process = None;
                sut.start(StartIntent::Normal);
            }
        }
        sut
    }

    fn check_invariants(sut: &Self, model: &Model) {
        let Some(process) = &sut.process else {
            assert!(!model.alive, "the model runs but the process crashed");
            return;
        };
        assert_eq!(process.lvm.metadata_layout_version(), model.mlv, "MLV");
        let state = process.lvm.state();
        let record = state.finalization.as_ref().map(|r| {
            (
                r.client_id.clone(),
                r.target_version,
                r.finished_at_ms.is_some(),
            )
        });
        let expected = model
            .record
            .as_ref()
            .map(|r| (r.client.to_owned(), r.target, r.finished));
        assert_eq!(record, expected, "stored finalization record");
        let finalized = state
            .history
            .iter()
            .filter(|h| h.event == HistoryEvent::Finalized)
            .count();
        assert_eq!(
            finalized, model.finalized_entries,
            "finalized history entries"
        );
        let arms = sut.arms.lock();
        assert_eq!(arms.fail, model.fail, "armed action failures");
        assert_eq!(arms.cancel, model.cancel, "armed cancels");
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_finalizer_follows_its_model(sequential 1..40 => Sut);
}
