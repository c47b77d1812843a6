//! The [`LayoutStorage`] contract.

use std::collections::BTreeMap;

use layout_core::state::{
    DataId, FinalizationRecord, HistoryEntry, HistoryEvent, LayoutState, VetoRecord,
};
use layout_core::LayoutStorage;

use super::{run, Clause, ConformanceReport};

/// The clauses of the [`LayoutStorage`] contract, in the order [`layout_storage`] runs
/// them.
pub const LAYOUT_STORAGE_CLAUSES: &[Clause] = &[
    Clause {
        name: "a_fresh_store_loads_none",
        requires: "`load` returns `Ok(None)` when nothing was ever stored, and `location` names the store.",
    },
    Clause {
        name: "load_returns_what_was_stored",
        requires: "`load` after `store` returns the state stored, every field included (finalization, history, prepare index, veto, data id, unknown keys).",
    },
    Clause {
        name: "store_replaces_the_previous_state",
        requires: "each `store` replaces the whole previous state: `load` returns the last one, with nothing left of the earlier ones.",
    },
    Clause {
        name: "load_is_repeatable",
        requires: "`load` does not change what is stored: two loads return the same state, and a store after loads still succeeds.",
    },
];

const CHECKS: &[fn(&dyn LayoutStorage)] = &[
    a_fresh_store_loads_none,
    load_returns_what_was_stored,
    store_replaces_the_previous_state,
    load_is_repeatable,
];

/// Runs every clause of the [`LayoutStorage`] contract, each on a fresh, empty store from
/// `make`, and reports.
pub fn check_layout_storage<S: LayoutStorage + 'static>(make: impl Fn() -> S) -> ConformanceReport {
    run(
        "LayoutStorage",
        LAYOUT_STORAGE_CLAUSES,
        CHECKS,
        &|| Box::new(make()) as Box<dyn LayoutStorage>,
        LayoutStorage::location,
    )
}

/// Runs every clause of the [`LayoutStorage`] contract, each on a fresh, empty store from
/// `make`.
///
/// # Panics
///
/// Naming every clause broken, with its failed assertion.
#[track_caller]
pub fn layout_storage<S: LayoutStorage + 'static>(make: impl Fn() -> S) {
    check_layout_storage(make).assert_ok();
}

/// A state with every field set.
fn full_state() -> LayoutState {
    let mut state = LayoutState::new("contract-component", 3, "ThirdFeature");
    state.first_upgrade_version = 2;
    let mut finalization = FinalizationRecord::new("ops", 4, 1_000);
    finalization.finished_at_ms = Some(2_000);
    state.finalization = Some(finalization);
    state.history = vec![
        HistoryEntry::new(500, "ops", HistoryEvent::Finalized, 1, 2, "first"),
        HistoryEntry::new(1_500, "ops", HistoryEvent::Finalized, 2, 3, "second"),
    ];
    state.prepare_index = Some(42);
    state.veto = Some(VetoRecord::new(
        "keep the way back",
        "ops",
        1_700,
        Some(9_000),
    ));
    state.data_id = Some(DataId::random());
    state.extra = BTreeMap::from([("future.key".to_owned(), "kept".to_owned())]);
    state
}

fn a_fresh_store_loads_none(store: &dyn LayoutStorage) {
    assert!(!store.location().is_empty(), "the location is empty");
    assert_eq!(store.load().unwrap(), None, "a fresh store loaded a state");
}

fn load_returns_what_was_stored(store: &dyn LayoutStorage) {
    let state = full_state();
    store.store(&state).unwrap();
    assert_eq!(store.load().unwrap(), Some(state), "load after store");
}

fn store_replaces_the_previous_state(store: &dyn LayoutStorage) {
    store.store(&full_state()).unwrap();
    let second = LayoutState::new("contract-component", 4, "FourthFeature");
    store.store(&second).unwrap();
    assert_eq!(
        store.load().unwrap(),
        Some(second.clone()),
        "the second store"
    );
    let mut third = second;
    third.layout_version = 5;
    "FifthFeature".clone_into(&mut third.layout_feature);
    store.store(&third).unwrap();
    assert_eq!(store.load().unwrap(), Some(third), "the third store");
}

fn load_is_repeatable(store: &dyn LayoutStorage) {
    let state = full_state();
    store.store(&state).unwrap();
    assert_eq!(store.load().unwrap(), Some(state.clone()));
    assert_eq!(store.load().unwrap(), Some(state.clone()), "a second load");
    let mut next = state;
    next.layout_version = 4;
    "FourthFeature".clone_into(&mut next.layout_feature);
    store.store(&next).unwrap();
    assert_eq!(store.load().unwrap(), Some(next), "a store after loads");
}
