//! The factory's key map, through the public API: keys whose hashes collide, and keys that
//! borrow from the request they were read from.

use std::hash::{Hash, Hasher};

use crate::{
    FactoryError, LayoutFeature, LayoutVersionInstanceFactory, LayoutVersionManager,
    ManagerOptions, MemoryStorage, StartIntent,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Feature {
    Initial,
    Next,
}

impl LayoutFeature for Feature {
    const ALL: &'static [Self] = &[Feature::Initial, Feature::Next];
    const CATALOG_NAME: &'static str = "FactoryUnitTest";

    fn layout_version(self) -> u32 {
        match self {
            Feature::Initial => 0,
            Feature::Next => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Feature::Initial => "Initial",
            Feature::Next => "Next",
        }
    }

    fn description(self) -> &'static str {
        "factory unit test"
    }
}

fn manager_at(mlv: u32) -> LayoutVersionManager<Feature> {
    let opts = ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(mlv);
    LayoutVersionManager::open(MemoryStorage::new(), opts).expect("an in-memory manager opens")
}

/// A key whose `Hash` writes only its group: keys of one group share their hash.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grouped {
    group: u8,
    name: String,
}

impl Hash for Grouped {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.group.hash(state);
    }
}

fn grouped(group: u8, name: &str) -> Grouped {
    Grouped {
        group,
        name: name.to_owned(),
    }
}

#[test]
fn keys_that_share_a_hash_are_told_apart_by_their_eq() {
    let lvm = manager_at(0);
    let mut factory = LayoutVersionInstanceFactory::new(&lvm);
    let names = ["CreateKey", "DeleteKey", "RenameKey", "CommitKey"];
    for (i, name) in names.iter().enumerate() {
        factory
            .register(grouped(0, name), Feature::Initial, format!("{name} v0"))
            .unwrap();
        factory
            .register(grouped(0, name), Feature::Next, format!("{name} v1"))
            .unwrap();
        factory
            .register(grouped(1, name), Feature::Initial, format!("{name} #{i}"))
            .unwrap();
    }
    assert_eq!(factory.len(), 12);
    assert_eq!(factory.keys().len(), 8);

    for name in names {
        // Registered after the first key of its hash: found on the cold path.
        assert_eq!(
            factory.get(&lvm, &grouped(0, name)).unwrap(),
            &format!("{name} v0")
        );
        let slot = factory.slot(&grouped(0, name)).unwrap();
        assert_eq!(factory.get_slot(&lvm, slot).unwrap(), &format!("{name} v0"));
        assert_eq!(
            factory.versions(&grouped(0, name)),
            [Feature::Initial, Feature::Next]
        );
        assert_eq!(factory.versions(&grouped(1, name)), [Feature::Initial]);
    }
    // Same hash as registered keys, equal to none.
    for unknown in [grouped(0, "ListKeys"), grouped(1, "")] {
        assert!(matches!(
            factory.get(&lvm, &unknown),
            Err(FactoryError::UnknownKey { key }) if key == unknown
        ));
        assert!(factory.slot(&unknown).is_none());
        assert!(factory.versions(&unknown).is_empty());
    }
    // A second instance for a (key, version) of a shared hash is still a duplicate.
    assert!(matches!(
        factory.register(grouped(0, "RenameKey"), Feature::Next, String::new()),
        Err(FactoryError::DuplicateVersion {
            feature: Feature::Next,
            ..
        })
    ));

    lvm.finalize_step(Feature::Next).unwrap();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            factory.get(&lvm, &grouped(0, name)).unwrap(),
            &format!("{name} v1")
        );
        assert_eq!(
            factory.get(&lvm, &grouped(1, name)).unwrap(),
            &format!("{name} #{i}")
        );
    }
}

#[test]
fn keys_may_borrow_from_the_request_they_were_read_from() {
    let lvm = manager_at(1);
    // The key names live in a buffer of this function, not in the binary.
    let registered = String::from("CreateKey DeleteKey");
    let mut factory = LayoutVersionInstanceFactory::new(&lvm);
    for name in registered.split(' ') {
        factory
            .register(name, Feature::Initial, name.len())
            .unwrap();
    }
    factory.register("DeleteKey", Feature::Next, 0).unwrap();

    let request = String::from("op=DeleteKey;op=CreateKey;op=ListKeys");
    let served: Vec<_> = request
        .split(';')
        .map(|field| {
            let key = field.trim_start_matches("op=");
            factory.get(&lvm, &key).copied().map_err(|e| e.to_string())
        })
        .collect();
    assert_eq!(
        served,
        [
            Ok(0),
            Ok(9),
            Err("no instance is registered for \"ListKeys\"".to_owned())
        ]
    );
}

#[test]
fn every_key_of_a_large_key_set_is_found_whichever_cell_it_gets() {
    // 2,000 keys: more than the one-probe front can give cells of their own at its largest
    // size, so some are found through the map on the cold path. Each lookup is made after
    // every registration, so the front is checked at each of its sizes.
    let lvm = manager_at(0);
    let mut factory = LayoutVersionInstanceFactory::new(&lvm);
    let keys: Vec<String> = (0..2_000).map(|i| format!("Request{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        factory.register(key.clone(), Feature::Initial, i).unwrap();
        assert_eq!(factory.get(&lvm, key).copied().ok(), Some(i));
        if i % 97 == 0 {
            for (j, earlier) in keys[..=i].iter().enumerate() {
                assert_eq!(
                    factory.get(&lvm, earlier).copied().ok(),
                    Some(j),
                    "{earlier}"
                );
            }
        }
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(factory.get(&lvm, key).copied().ok(), Some(i), "{key}");
        let slot = factory.slot(key.as_str()).unwrap();
        assert_eq!(factory.get_slot(&lvm, slot).copied().ok(), Some(i));
    }
    for unknown in ["Request2000", "request1", "", "Request01"] {
        assert!(matches!(
            factory.get(&lvm, &unknown.to_owned()),
            Err(FactoryError::UnknownKey { .. })
        ));
    }
}
