//! `LayoutVersionInstanceFactory`: the instance of the highest version at or below the MLV,
//! read at every call; registration rules; `#[belongs_to_layout_version]` registrations,
//! including handlers that live in another crate of the workspace.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use layout_core::factory::RegistrationProblem;
use layout_core::{
    belongs_to_layout_version, FactoryError, LayoutFeature, LayoutVersionInstanceFactory,
    LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent,
};
use layout_handlers_api::{DemoFeature, RequestHandler};

use crate::catalogs::{init_at, Om, OmFeature};

/// A factory for `CreateKey` (v0 and v2) and `CreateTenant` (v2 only), with string values
/// naming the version that serves.
fn om_factory(lvm: &Om) -> LayoutVersionInstanceFactory<OmFeature, &'static str, &'static str> {
    let mut factory = LayoutVersionInstanceFactory::new(lvm);
    factory
        .register("CreateKey", OmFeature::InitialVersion, "CreateKey v0")
        .unwrap();
    factory
        .register("CreateKey", OmFeature::MultiTenancy, "CreateKey v2")
        .unwrap();
    factory
        .register("CreateTenant", OmFeature::MultiTenancy, "CreateTenant v2")
        .unwrap();
    factory
}

#[test]
fn get_serves_the_highest_version_at_or_below_the_mlv_as_it_moves() {
    let lvm = Om::open(MemoryStorage::new(), init_at(0)).unwrap();
    let factory = om_factory(&lvm);
    let mut served = vec![*factory.get(&lvm, &"CreateKey").unwrap()];
    for feature in lvm.unfinalized_features() {
        lvm.finalize_step(feature).unwrap();
        served.push(*factory.get(&lvm, &"CreateKey").unwrap());
    }
    // MLV 0, 1, 2, 3.
    assert_eq!(
        served,
        [
            "CreateKey v0",
            "CreateKey v0",
            "CreateKey v2",
            "CreateKey v2"
        ]
    );
}

#[test]
fn a_key_whose_lowest_version_is_above_the_mlv_is_not_supported_before_finalization() {
    let lvm = Om::open(MemoryStorage::new(), init_at(1)).unwrap();
    let factory = om_factory(&lvm);
    let error = factory.get(&lvm, &"CreateTenant").unwrap_err();
    assert!(
        matches!(
            error,
            FactoryError::NotSupportedBeforeFinalization {
                key: "CreateTenant",
                feature: OmFeature::MultiTenancy,
                metadata_layout_version: 1,
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("\"CreateTenant\" is not supported before finalization of MultiTenancy"),
        "{error}"
    );

    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(
        *factory.get(&lvm, &"CreateTenant").unwrap(),
        "CreateTenant v2"
    );
}

#[test]
fn an_unknown_key_is_its_own_error() {
    let lvm = Om::open(MemoryStorage::new(), init_at(3)).unwrap();
    let factory = om_factory(&lvm);
    let error = factory.get(&lvm, &"DeleteKey").unwrap_err();
    assert!(
        matches!(error, FactoryError::UnknownKey { key: "DeleteKey" }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "no instance is registered for \"DeleteKey\""
    );
    assert_eq!(factory.slot("DeleteKey"), None);
    assert!(factory.versions("DeleteKey").is_empty());
}

#[test]
fn register_refuses_a_version_above_the_software_layout_version() {
    let opts = init_at(0).with_software_layout_version(2);
    let lvm = Om::open(MemoryStorage::new(), opts).unwrap();
    let mut factory = LayoutVersionInstanceFactory::new(&lvm);
    let error = factory
        .register("SnapshotDiff", OmFeature::SnapshotDiff, 3)
        .unwrap_err();
    assert!(
        matches!(
            error,
            FactoryError::AboveSoftwareLayoutVersion {
                key: "SnapshotDiff",
                feature: OmFeature::SnapshotDiff,
                software_layout_version: 2,
            }
        ),
        "{error:?}"
    );
    assert!(factory.is_empty());
    assert_eq!(factory.slot("SnapshotDiff"), None);
}

#[test]
fn register_refuses_a_second_instance_for_the_same_key_and_version() {
    let lvm = Om::open(MemoryStorage::new(), init_at(0)).unwrap();
    let mut factory = LayoutVersionInstanceFactory::new(&lvm);
    factory
        .register("CreateKey", OmFeature::InitialVersion, "first")
        .unwrap();
    let error = factory
        .register("CreateKey", OmFeature::InitialVersion, "second")
        .unwrap_err();
    assert!(
        matches!(
            error,
            FactoryError::DuplicateVersion {
                key: "CreateKey",
                feature: OmFeature::InitialVersion,
            }
        ),
        "{error:?}"
    );
    // The first registration stands.
    assert_eq!(*factory.get(&lvm, &"CreateKey").unwrap(), "first");
    assert_eq!(factory.len(), 1);
}

#[test]
fn versions_lists_the_registered_features_ascending_whatever_the_registration_order() {
    let lvm = Om::open(MemoryStorage::new(), init_at(3)).unwrap();
    let mut factory = LayoutVersionInstanceFactory::new(&lvm);
    for feature in [
        OmFeature::SnapshotDiff,
        OmFeature::InitialVersion,
        OmFeature::MultiTenancy,
    ] {
        factory
            .register("CreateKey", feature, feature.name())
            .unwrap();
    }
    assert_eq!(
        factory.versions("CreateKey"),
        [
            OmFeature::InitialVersion,
            OmFeature::MultiTenancy,
            OmFeature::SnapshotDiff
        ]
    );
    assert_eq!(*factory.get(&lvm, &"CreateKey").unwrap(), "SnapshotDiff");
    assert_eq!(factory.keys().copied().collect::<Vec<_>>(), ["CreateKey"]);
}

#[test]
fn a_slot_follows_the_mlv_like_get_and_survives_later_registrations() {
    let lvm = Om::open(MemoryStorage::new(), init_at(0)).unwrap();
    let mut factory = om_factory(&lvm);
    let slot = factory.slot("CreateKey").unwrap();
    assert_eq!(*factory.get_slot(&lvm, slot).unwrap(), "CreateKey v0");

    factory
        .register("DeleteKey", OmFeature::InitialVersion, "DeleteKey v0")
        .unwrap();
    factory
        .register("CreateKey", OmFeature::BucketLayoutSupport, "CreateKey v1")
        .unwrap();
    lvm.finalize_step(OmFeature::BucketLayoutSupport).unwrap();
    assert_eq!(*factory.get_slot(&lvm, slot).unwrap(), "CreateKey v1");
    lvm.finalize_step(OmFeature::MultiTenancy).unwrap();
    assert_eq!(*factory.get_slot(&lvm, slot).unwrap(), "CreateKey v2");

    let tenant = factory.slot("CreateTenant").unwrap();
    assert_eq!(*factory.get_slot(&lvm, tenant).unwrap(), "CreateTenant v2");
}

#[test]
fn a_slot_of_another_factory_is_refused() {
    let lvm = Om::open(MemoryStorage::new(), init_at(3)).unwrap();
    let one = om_factory(&lvm);
    let other = om_factory(&lvm);
    let slot = one.slot("CreateKey").unwrap();
    assert!(matches!(
        other.get_slot(&lvm, slot),
        Err(FactoryError::ForeignSlot { slot: refused }) if refused == slot
    ));
}

#[test]
fn string_keys_are_resolved_from_borrowed_str() {
    let lvm = Om::open(MemoryStorage::new(), init_at(0)).unwrap();
    let mut factory = LayoutVersionInstanceFactory::new(&lvm);
    factory
        .register("CreateKey".to_owned(), OmFeature::InitialVersion, 0)
        .unwrap();
    // A key read off the wire, borrowed from the request buffer.
    let request = String::from("CreateKey payload");
    let name: &str = &request[..9];
    let slot = factory.slot(name).unwrap();
    assert_eq!(*factory.get_slot(&lvm, slot).unwrap(), 0);
    assert_eq!(factory.versions(name), [OmFeature::InitialVersion]);
    assert_eq!(*factory.get(&lvm, &"CreateKey".to_owned()).unwrap(), 0);
}

#[test]
fn get_finds_every_registered_key_of_any_length_and_type_and_no_other() {
    let lvm = Om::open(MemoryStorage::new(), init_at(0)).unwrap();
    // Short names, names sharing their first and last eight bytes (only the middle
    // differs), names longer than 16 bytes, and the empty name; 290 of them, so some
    // collide in the key index whatever its seed.
    let mut names: Vec<String> = vec![String::new()];
    names.extend((0..100).map(|i| format!("K{i}")));
    names.extend((0..90).map(|i| format!("CreateKe{}yInBucket", char::from(b'!' + i))));
    names.extend((0..99).map(|i| format!("CreateMultipartUploadPart{i}")));
    let mut by_string = LayoutVersionInstanceFactory::new(&lvm);
    let mut by_str = LayoutVersionInstanceFactory::new(&lvm);
    let mut by_boxed = LayoutVersionInstanceFactory::new(&lvm);
    let mut by_number = LayoutVersionInstanceFactory::new(&lvm);
    for (i, name) in names.iter().enumerate() {
        let feature = OmFeature::InitialVersion;
        by_string.register(name.clone(), feature, i).unwrap();
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        by_str.register(leaked, feature, i).unwrap();
        by_boxed
            .register(Box::<str>::from(name.as_str()), feature, i)
            .unwrap();
        by_number.register(i as u64 * 4096, feature, i).unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        // Copies: the lookup never relies on the key's address.
        let copy = name.clone();
        assert_eq!(*by_string.get(&lvm, &copy).unwrap(), i, "{name:?}");
        let leaked_copy: &'static str = Box::leak(copy.clone().into_boxed_str());
        assert_eq!(*by_str.get(&lvm, &leaked_copy).unwrap(), i, "{name:?}");
        assert_eq!(*by_boxed.get(&lvm, &copy.clone().into()).unwrap(), i);
        assert_eq!(*by_number.get(&lvm, &(i as u64 * 4096)).unwrap(), i);
        assert_eq!(
            by_string.versions(name.as_str()),
            [OmFeature::InitialVersion]
        );
    }
    for unknown in [
        "K100",
        "CreateKe~yInBucket",
        "CreateMultipartUploadPart99",
        "k1",
        " ",
    ] {
        assert!(matches!(
            by_string.get(&lvm, &unknown.to_owned()),
            Err(FactoryError::UnknownKey { .. })
        ));
        assert!(matches!(
            by_str.get(&lvm, &unknown),
            Err(FactoryError::UnknownKey { .. })
        ));
    }
    assert!(by_number.get(&lvm, &1).is_err());
}

#[test]
fn while_8_threads_get_during_finalization_none_sees_an_older_instance_after_a_newer_one() {
    const THREADS: usize = 8;
    const GETS_AFTER: usize = 2_000;
    let lvm = Arc::new(Om::open(MemoryStorage::new(), init_at(0)).unwrap());
    let factory = Arc::new(om_factory(&lvm));
    let started = Arc::new(AtomicUsize::new(0));
    let finalized = Arc::new(AtomicBool::new(false));
    let go = Arc::new(Barrier::new(THREADS));

    let readers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (lvm, factory, started, finalized, go) = (
                Arc::clone(&lvm),
                Arc::clone(&factory),
                Arc::clone(&started),
                Arc::clone(&finalized),
                Arc::clone(&go),
            );
            thread::spawn(move || {
                go.wait();
                let version = |name: &str| -> u32 {
                    match name {
                        "CreateKey v0" => 0,
                        "CreateKey v2" => 2,
                        other => panic!("unexpected instance {other}"),
                    }
                };
                // Every thread sees v0 before the finalization starts.
                let mut last = version(factory.get(&lvm, &"CreateKey").unwrap());
                assert_eq!(last, 0);
                started.fetch_add(1, Ordering::SeqCst);
                let mut after = 0;
                while after < GETS_AFTER {
                    // Read the flag first: a get that follows a completed finalization
                    // must serve v2.
                    let done = finalized.load(Ordering::Acquire);
                    let served = version(factory.get(&lvm, &"CreateKey").unwrap());
                    assert!(served >= last, "served v{served} after v{last}");
                    if done {
                        assert_eq!(served, 2, "a get after the finalization served v{served}");
                        after += 1;
                    }
                    last = served;
                }
            })
        })
        .collect();

    while started.load(Ordering::SeqCst) < THREADS {
        thread::yield_now();
    }
    for feature in lvm.unfinalized_features() {
        lvm.finalize_step(feature).unwrap();
    }
    finalized.store(true, Ordering::Release);
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(*factory.get(&lvm, &"CreateKey").unwrap(), "CreateKey v2");
}

// --- #[belongs_to_layout_version] -----------------------------------------------------

/// The manager of the fixture crate's catalog, at `mlv`, optionally capped at `slv`.
fn demo_manager(mlv: u32, slv: Option<u32>) -> LayoutVersionManager<DemoFeature> {
    let mut opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(mlv);
    if let Some(slv) = slv {
        opts = opts.with_software_layout_version(slv);
    }
    LayoutVersionManager::open(MemoryStorage::new(), opts).unwrap()
}

type Handlers = LayoutVersionInstanceFactory<DemoFeature, &'static str, Box<dyn RequestHandler>>;

#[test]
fn handlers_of_another_crate_arrive_when_the_guard_links_it() {
    let lvm = demo_manager(0, None);
    let handlers = Handlers::from_registry(&lvm).unwrap();
    // The guard, and this binary's only reference to the fixture crate: without this
    // line the crate is not linked and its handlers vanish (see tests/unlinked.rs).
    handlers
        .expect(layout_handlers_fixture::REGISTERED)
        .unwrap();

    assert_eq!(
        handlers.versions("CreateKey"),
        [DemoFeature::Initial, DemoFeature::MultiTenancy]
    );
    assert_eq!(
        handlers.get(&lvm, &"CreateKey").unwrap().handle("k1"),
        "key k1"
    );
    assert!(matches!(
        handlers.get(&lvm, &"CreateTenant"),
        Err(FactoryError::NotSupportedBeforeFinalization {
            feature: DemoFeature::MultiTenancy,
            ..
        })
    ));

    for feature in lvm.unfinalized_features() {
        lvm.finalize_step(feature).unwrap();
    }
    let create_key = handlers.get(&lvm, &"CreateKey").unwrap();
    assert_eq!(create_key.layout_version(), 2);
    assert_eq!(create_key.handle("k1"), "tenant key k1");
    assert_eq!(
        handlers.get(&lvm, &"CreateTenant").unwrap().handle("t1"),
        "tenant t1"
    );
    assert!(handlers.skipped().is_empty());
}

#[test]
fn handlers_above_a_capped_software_layout_version_are_skipped_and_listed() {
    let lvm = demo_manager(0, Some(1));
    let handlers = Handlers::from_registry(&lvm).unwrap();
    // The guard does not ask a capped binary for what it cannot serve.
    handlers
        .expect(layout_handlers_fixture::REGISTERED)
        .unwrap();

    assert_eq!(handlers.versions("CreateKey"), [DemoFeature::Initial]);
    assert!(matches!(
        handlers.get(&lvm, &"CreateTenant"),
        Err(FactoryError::UnknownKey {
            key: "CreateTenant"
        })
    ));
    let skipped: Vec<_> = handlers
        .skipped()
        .iter()
        .map(|s| (s.key, s.feature, s.handler_type))
        .collect();
    assert_eq!(
        skipped,
        [
            ("CreateKey", DemoFeature::MultiTenancy, "CreateKeyV2"),
            ("CreateTenant", DemoFeature::MultiTenancy, "CreateTenant"),
        ]
    );
    assert!(handlers.skipped()[0]
        .file
        .ends_with("handlers-fixture/src/lib.rs"));
}

#[test]
fn the_guard_lists_every_expected_handler_that_is_missing() {
    let lvm = demo_manager(0, None);
    let handlers = Handlers::from_registry(&lvm).unwrap();
    let error = handlers
        .expect(&[
            ("CreateKey", DemoFeature::Initial),
            ("DeleteKey", DemoFeature::Initial),
            ("DeleteTenant", DemoFeature::MultiTenancy),
        ])
        .unwrap_err();
    let FactoryError::Missing { missing } = &error else {
        panic!("expected Missing, got {error:?}");
    };
    assert_eq!(
        missing,
        &[
            ("DeleteKey", DemoFeature::Initial),
            ("DeleteTenant", DemoFeature::MultiTenancy)
        ]
    );
    let message = error.to_string();
    assert!(message.contains("\"DeleteKey\" for layout feature Initial (layout version 0)"));
    assert!(message.contains("not linked"), "{message}");
}

/// A catalog written by hand whose `ALL` omits `Unlisted`: a registration for it is an
/// "unknown feature" (the derive makes this impossible).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum HandWritten {
    Initial,
    Next,
    Unlisted,
}

impl LayoutFeature for HandWritten {
    const ALL: &'static [Self] = &[HandWritten::Initial, HandWritten::Next];
    const CATALOG_NAME: &'static str = "HandWritten";

    fn layout_version(self) -> u32 {
        match self {
            HandWritten::Initial => 0,
            HandWritten::Next | HandWritten::Unlisted => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            HandWritten::Initial => "Initial",
            HandWritten::Next => "Next",
            HandWritten::Unlisted => "Unlisted",
        }
    }

    fn description(self) -> &'static str {
        "hand-written"
    }
}

/// A handler trait of this test only, so its faulty registrations disturb no other test.
trait FaultyHandler {
    fn id(&self) -> &'static str;
}

#[derive(Default)]
struct First;
#[belongs_to_layout_version(HandWritten::Initial, key = "Put")]
impl FaultyHandler for First {
    fn id(&self) -> &'static str {
        "first"
    }
}

#[derive(Default)]
struct Second;
#[belongs_to_layout_version(HandWritten::Initial, key = "Put")]
impl FaultyHandler for Second {
    fn id(&self) -> &'static str {
        "second"
    }
}

#[derive(Default)]
struct Stray;
#[belongs_to_layout_version(HandWritten::Unlisted, key = "Get")]
impl FaultyHandler for Stray {
    fn id(&self) -> &'static str {
        "stray"
    }
}

/// Registered for another catalog: ignored by a factory of `HandWritten`.
#[derive(Default)]
struct OtherCatalog;
#[belongs_to_layout_version(OmFeature::InitialVersion, key = "Put")]
impl FaultyHandler for OtherCatalog {
    fn id(&self) -> &'static str {
        "other catalog"
    }
}

#[test]
fn from_registry_reports_duplicates_and_unknown_features_all_at_once() {
    let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
    let lvm = LayoutVersionManager::<HandWritten>::open(MemoryStorage::new(), opts).unwrap();
    let Err(error) =
        LayoutVersionInstanceFactory::<_, _, Box<dyn FaultyHandler>>::from_registry(&lvm)
    else {
        panic!("faulty registrations must be refused");
    };
    let FactoryError::Registry { problems } = &error else {
        panic!("expected Registry, got {error:?}");
    };
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems.iter().any(|problem| matches!(
        problem,
        RegistrationProblem::UnknownFeature {
            key: "Get",
            feature: "Unlisted",
            version: 1,
            catalog: "HandWritten",
            handler_type: "Stray",
            ..
        }
    )));
    assert!(problems.iter().any(|problem| matches!(
        problem,
        RegistrationProblem::Duplicate {
            key: "Put",
            feature: "Initial",
            version: 0,
            first_type: "First",
            second_type: "Second",
            ..
        }
    )));
    let message = error.to_string();
    assert!(message.starts_with("2 problem(s)"), "{message}");
    assert!(message.contains("tests/it/factory.rs:"), "{message}");
}

#[test]
fn from_registry_keeps_only_its_catalog_and_instance_type() {
    let lvm = Om::open(MemoryStorage::new(), init_at(0)).unwrap();
    let handlers =
        LayoutVersionInstanceFactory::<_, _, Box<dyn FaultyHandler>>::from_registry(&lvm).unwrap();
    assert_eq!(handlers.len(), 1);
    assert_eq!(handlers.get(&lvm, &"Put").unwrap().id(), "other catalog");
}
