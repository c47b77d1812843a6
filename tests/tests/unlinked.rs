//! The linking pitfall of `#[belongs_to_layout_version]`, shown for real.
//!
//! This binary depends on `layout-handlers-fixture` (a dev-dependency of the package) but
//! never names it, as a server that lists its handlers' crate in `Cargo.toml` and nothing
//! more. Such a crate is not linked, so its registrations are not in the binary: the
//! factory comes out empty, and the start-up guard says what is missing and why. The `it`
//! binary, whose guard names the crate, gets the handlers.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use layout_core::{
    FactoryError, LayoutVersionInstanceFactory, LayoutVersionManager, ManagerOptions,
    MemoryStorage, StartIntent,
};
use layout_handlers_api::{DemoFeature, RequestHandler};

#[test]
fn handlers_of_a_crate_nothing_references_vanish_and_the_guard_says_why() {
    let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
    let lvm = LayoutVersionManager::<DemoFeature>::open(MemoryStorage::new(), opts).unwrap();
    let handlers =
        LayoutVersionInstanceFactory::<_, _, Box<dyn RequestHandler>>::from_registry(&lvm).unwrap();
    assert!(
        handlers.is_empty(),
        "the fixture crate was linked after all"
    );

    // What layout_handlers_fixture::REGISTERED lists (naming it would link the crate).
    let expected = [
        ("CreateKey", DemoFeature::Initial),
        ("CreateKey", DemoFeature::MultiTenancy),
        ("CreateTenant", DemoFeature::MultiTenancy),
    ];
    let error = handlers.expect(&expected).unwrap_err();
    let FactoryError::Missing { missing } = &error else {
        panic!("expected Missing, got {error:?}");
    };
    assert_eq!(missing, &expected);
    let message = error.to_string();
    assert!(
        message.starts_with(
            "expected instances are not registered:\n  - \"CreateKey\" for layout feature \
             Initial (layout version 0)"
        ),
        "{message}"
    );
    assert!(
        message.contains(
            "that crate is probably not linked: a crate that nothing references is left out \
             of the binary, with its registrations"
        ),
        "{message}"
    );
}
