//! The factory: its key map, its one-probe front, the per-MLV table, and its errors.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, Ordering};

use hashbrown::HashTable;

use crate::feature::LayoutFeature;
use crate::manager::LayoutVersionManager;

use super::problems::{self, RegistrationProblem, SkippedRegistration};

/// Marks a table cell whose MLV no instance of the key serves.
const NONE: usize = usize::MAX;

/// The hasher of the factory's key map: `foldhash`'s fast hasher with a fixed seed (see
/// [the cost](crate::factory#cost)).
#[doc(hidden)]
pub type KeyBuildHasher = foldhash::fast::FixedState;

/// Gives each factory an identity, so a [`Slot`] of another factory is refused.
static NEXT_FACTORY_ID: AtomicU32 = AtomicU32::new(0);

/// Instances of `V` per key `K` and layout feature of catalog `F`; serves, per key, the
/// instance of the highest layout version at or below the MLV.
///
/// The factory's rules: an instance above the software layout version cannot be
/// registered, nor a second one for the same (key, version); a key whose lowest version is
/// above the MLV is "not supported before finalization" of that version's feature.
///
/// `K` is the request key (a request type name, an enum of request types): anything
/// `Hash + Eq`, cloned into errors. String keys (`&str`, `String`, `Box<str>`, ...) are
/// hashed and compared by their text (see [the cost](crate::factory#cost)).
///
/// The factory has no interior mutability: build it at start-up, then share it (`&`,
/// `Arc`) between threads; reads need no lock.
pub struct LayoutVersionInstanceFactory<F: LayoutFeature, K, V> {
    id: u32,
    pub(super) software_layout_version: u32,
    /// `software_layout_version + 1`: the number of MLVs a key's table row covers.
    width: usize,
    /// Each key, with its hash and the first table cell of its row (its slot's base).
    index: HashTable<KeyEntry<K>>,
    /// The one-probe front of `index` that [`get`](Self::get) reads: a power-of-two number
    /// of cells, a key's cell chosen by its hash's low bits (see [`Front`]).
    front: Front<K>,
    /// The hasher of the keys in `index`.
    hasher: KeyBuildHasher,
    /// One row per key, in registration order.
    rows: Vec<Row<F, K>>,
    /// Every instance, in registration order.
    values: Vec<V>,
    /// `rows.len() * width` cells: for (row, MLV), the index in `values` of the instance
    /// serving it, or [`NONE`].
    table: Vec<usize>,
    /// Registrations `from_registry` left out because they are above the SLV.
    pub(super) skipped: Vec<SkippedRegistration<F>>,
}

/// A key in the factory's key map, with its hash, computed once at registration.
#[derive(Clone)]
struct KeyEntry<K> {
    hash: u64,
    key: K,
    /// The first table cell of the key's row.
    base: usize,
}

/// The one-probe front of the key map: `cells.len()` is a power of two, and the key of
/// hash `h` sits in cell `h & mask`, unless another key holds that cell. The front is at
/// most half full; when a key added finds its cell taken, the front is rebuilt at the
/// smallest size (from twice the number of keys) that gives every key a cell of its own,
/// at most [`Front::MAX_GROWTH`] times that. Keys still sharing a cell then are found
/// through the map, on the cold path.
struct Front<K> {
    cells: Vec<Option<KeyEntry<K>>>,
    mask: usize,
}

impl<K: Clone> Front<K> {
    /// How many times larger than twice the number of keys the front may grow to give
    /// each key a cell of its own.
    const MAX_GROWTH: usize = 16;

    fn new() -> Self {
        Self {
            cells: vec![None],
            mask: 0,
        }
    }

    /// The entry in the cell of `hash`, if any.
    #[inline]
    fn cell(&self, hash: u64) -> Option<&KeyEntry<K>> {
        // Truncation intended: the cell is chosen by the hash's low bits.
        #[allow(clippy::cast_possible_truncation)]
        let cell = hash as usize & self.mask;
        self.cells.get(cell)?.as_ref()
    }

    /// Adds `entry`, one of the `keys` keys of `entries` (`entry` included): into its
    /// cell when that is free and the front stays at most half full, else by rebuilding
    /// the front.
    fn add<'a>(
        &mut self,
        entry: &KeyEntry<K>,
        keys: usize,
        entries: impl Iterator<Item = &'a KeyEntry<K>> + Clone,
    ) where
        K: 'a,
    {
        if keys.saturating_mul(2) <= self.cells.len() {
            let may_grow = self.cells.len() < Self::largest(keys);
            #[allow(clippy::cast_possible_truncation)]
            match self.cells.get_mut(entry.hash as usize & self.mask) {
                Some(cell @ None) => {
                    *cell = Some(entry.clone());
                    return;
                }
                // Taken, and the front may not grow: the key is found on the cold path.
                Some(Some(_)) if !may_grow => return,
                _ => {}
            }
        }
        self.rebuild(keys, entries);
    }

    /// The largest front for `keys` keys.
    fn largest(keys: usize) -> usize {
        keys.saturating_mul(2)
            .next_power_of_two()
            .saturating_mul(Self::MAX_GROWTH)
    }

    /// Rebuilds the front for the `keys` keys of `entries`: the smallest size that gives
    /// each a cell of its own, or the largest allowed (of two keys sharing a cell, the one
    /// met first keeps it).
    fn rebuild<'a>(&mut self, keys: usize, entries: impl Iterator<Item = &'a KeyEntry<K>> + Clone)
    where
        K: 'a,
    {
        let largest = Self::largest(keys);
        let mut size = keys.saturating_mul(2).next_power_of_two();
        let mut taken = Vec::new();
        while size < largest {
            taken.clear();
            taken.resize(size, false);
            let distinct = entries.clone().all(|entry| {
                #[allow(clippy::cast_possible_truncation)]
                let cell = entry.hash as usize & (size - 1);
                !std::mem::replace(&mut taken[cell], true)
            });
            if distinct {
                break;
            }
            size *= 2;
        }
        let mut cells: Vec<Option<KeyEntry<K>>> = vec![None; size];
        for entry in entries {
            #[allow(clippy::cast_possible_truncation)]
            let cell = &mut cells[entry.hash as usize & (size - 1)];
            if cell.is_none() {
                *cell = Some(entry.clone());
            }
        }
        self.cells = cells;
        self.mask = size - 1;
    }
}

/// One key's instances, ascending by layout version.
struct Row<F, K> {
    key: K,
    features: Vec<F>,
    /// Parallel to `features`: the index of each instance in `values`.
    instances: Vec<usize>,
}

/// A key resolved once with [`LayoutVersionInstanceFactory::slot`], for
/// [`get_slot`](LayoutVersionInstanceFactory::get_slot) on hot paths.
///
/// Valid for the factory that issued it, for the factory's whole life (registering more
/// instances does not move it); another factory refuses it with
/// [`FactoryError::ForeignSlot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    factory: u32,
    base: usize,
}

/// An error of a [`LayoutVersionInstanceFactory`](crate::LayoutVersionInstanceFactory).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FactoryError<F: LayoutFeature, K: fmt::Debug> {
    /// The instance's feature is above the factory's software layout version.
    #[error(
        "cannot register {key:?} for layout feature {} (layout version {}): it is above the \
         software layout version {software_layout_version}",
        .feature.name(),
        .feature.layout_version()
    )]
    AboveSoftwareLayoutVersion {
        /// The key.
        key: K,
        /// The feature of the refused instance.
        feature: F,
        /// The factory's SLV.
        software_layout_version: u32,
    },

    /// The key already has an instance for this layout version.
    #[error(
        "{key:?} already has an instance for layout feature {} (layout version {}); each \
         (key, layout version) is registered once",
        .feature.name(),
        .feature.layout_version()
    )]
    DuplicateVersion {
        /// The key.
        key: K,
        /// The feature registered twice.
        feature: F,
    },

    /// No instance is registered for the key.
    #[error("no instance is registered for {key:?}")]
    UnknownKey {
        /// The key asked for.
        key: K,
    },

    /// The key's lowest version is above the MLV: the request exists only in a layout that
    /// is not finalized yet.
    #[error(
        "{key:?} is not supported before finalization of {} (layout version {}); the current \
         metadata layout version is {metadata_layout_version}. Finalize the upgrade to use it",
        .feature.name(),
        .feature.layout_version()
    )]
    NotSupportedBeforeFinalization {
        /// The key asked for.
        key: K,
        /// The key's lowest feature: the one to finalize.
        feature: F,
        /// The MLV read by this call.
        metadata_layout_version: u32,
    },

    /// The slot was issued by another factory.
    #[error(
        "slot {slot:?} was issued by another factory; resolve slots with this factory's `slot`"
    )]
    ForeignSlot {
        /// The slot.
        slot: Slot,
    },

    /// Registrations collected by [`LayoutVersionInstanceFactory::from_registry`](crate::LayoutVersionInstanceFactory::from_registry) are
    /// inconsistent; every problem is listed.
    #[error("{}", problems::problems_message(.problems))]
    Registry {
        /// Every problem found, in a stable order.
        problems: Vec<RegistrationProblem>,
    },

    /// Instances expected by [`LayoutVersionInstanceFactory::expect`](crate::LayoutVersionInstanceFactory::expect) are not registered.
    #[error("{}", problems::missing_message(.missing))]
    Missing {
        /// Every expected (key, feature) not registered.
        missing: Vec<(K, F)>,
    },
}

impl<F, K, V> LayoutVersionInstanceFactory<F, K, V>
where
    F: LayoutFeature,
    K: Hash + Eq + Clone + fmt::Debug,
{
    /// An empty factory for `manager`'s catalog, accepting instances up to its software
    /// layout version.
    pub fn new(manager: &LayoutVersionManager<F>) -> Self {
        let software_layout_version = manager.software_layout_version();
        Self {
            id: NEXT_FACTORY_ID.fetch_add(1, Ordering::Relaxed),
            software_layout_version,
            width: index_of(software_layout_version).saturating_add(1),
            index: HashTable::new(),
            front: Front::new(),
            hasher: KeyBuildHasher::default(),
            rows: Vec::new(),
            values: Vec::new(),
            table: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Registers `value` as the instance of `key` from layout feature `feature` on.
    ///
    /// Refused, leaving the factory unchanged: a feature above the software layout version
    /// ([`FactoryError::AboveSoftwareLayoutVersion`]) and a second instance for the same
    /// key and version ([`FactoryError::DuplicateVersion`]).
    pub fn register(&mut self, key: K, feature: F, value: V) -> Result<(), FactoryError<F, K>> {
        let version = feature.layout_version();
        if version > self.software_layout_version {
            return Err(FactoryError::AboveSoftwareLayoutVersion {
                key,
                feature,
                software_layout_version: self.software_layout_version,
            });
        }
        let hash = self.hasher.hash_one(&key);
        let base = if let Some(base) = self.find(hash, &key) {
            base
        } else {
            let base = self.table.len();
            self.table.resize(base + self.width, NONE);
            self.rows.push(Row {
                key: key.clone(),
                features: Vec::new(),
                instances: Vec::new(),
            });
            let entry = KeyEntry {
                hash,
                key: key.clone(),
                base,
            };
            let keys = self.index.len() + 1;
            self.front
                .add(&entry, keys, self.index.iter().chain([&entry]));
            self.index.insert_unique(hash, entry, |entry| entry.hash);
            base
        };
        let row_index = base / self.width;
        let Some(row) = self.rows.get_mut(row_index) else {
            // Unreachable: every base in `index` has its row.
            return Err(FactoryError::UnknownKey { key });
        };
        let Err(position) = row.features.binary_search(&feature) else {
            return Err(FactoryError::DuplicateVersion { key, feature });
        };
        row.features.insert(position, feature);
        row.instances.insert(position, self.values.len());
        self.values.push(value);

        // Recompute the row: MLV m is served by the highest version <= m.
        let cells = &mut self.table[base..base + self.width];
        let mut serving = NONE;
        let mut next = row.features.iter().zip(&row.instances).peekable();
        for (mlv, cell) in cells.iter_mut().enumerate() {
            while let Some((_, &instance)) =
                next.next_if(|(f, _)| index_of(f.layout_version()) <= mlv)
            {
                serving = instance;
            }
            *cell = serving;
        }
        Ok(())
    }

    /// The instance of `key` for the current MLV: the one registered with the highest
    /// layout version at or below it.
    ///
    /// Reads the MLV on every call (no listener, no lag); takes no lock and allocates
    /// nothing on success. Errors: [`FactoryError::UnknownKey`], and
    /// [`FactoryError::NotSupportedBeforeFinalization`] when every instance of the key is
    /// above the MLV.
    #[inline]
    pub fn get(
        &self,
        manager: &LayoutVersionManager<F>,
        key: &K,
    ) -> Result<&V, FactoryError<F, K>> {
        let hash = self.hasher.hash_one(key);
        // One cell of the front, then one comparison: a key without a cell of its own (or
        // an unknown key) takes the cold path.
        match self.front.cell(hash) {
            Some(entry) if entry.hash == hash && entry.key == *key => {
                self.serve(manager, entry.base)
            }
            _ => self.get_cold(manager, key, hash),
        }
    }

    /// [`get`](Self::get) of a key the front does not hold: an unknown key, or one that
    /// shares its cell with another key.
    #[cold]
    #[inline(never)]
    fn get_cold(
        &self,
        manager: &LayoutVersionManager<F>,
        key: &K,
        hash: u64,
    ) -> Result<&V, FactoryError<F, K>> {
        match self.find(hash, key) {
            Some(base) => self.serve(manager, base),
            None => Err(FactoryError::UnknownKey { key: key.clone() }),
        }
    }

    /// The base of the row of `key` (or of a borrowed form of it), whose hash is `hash`.
    fn find<Q>(&self, hash: u64, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        self.index
            .find(hash, |entry| {
                entry.hash == hash && entry.key.borrow() == key
            })
            .map(|entry| entry.base)
    }

    /// Resolves `key` once, for [`get_slot`](Self::get_slot). `None` when no instance is
    /// registered for it. Looks up by any borrowed form (`&str` for `String` keys).
    pub fn slot<Q>(&self, key: &Q) -> Option<Slot>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(self.hasher.hash_one(key), key).map(|base| Slot {
            factory: self.id,
            base,
        })
    }

    /// The instance of the slot's key for the current MLV, as [`get`](Self::get) answers,
    /// with an array index instead of a key lookup.
    #[inline]
    pub fn get_slot(
        &self,
        manager: &LayoutVersionManager<F>,
        slot: Slot,
    ) -> Result<&V, FactoryError<F, K>> {
        if slot.factory != self.id {
            return Err(FactoryError::ForeignSlot { slot });
        }
        self.serve(manager, slot.base)
    }

    /// The instance of the row starting at table cell `base`, for the current MLV.
    #[inline]
    fn serve(
        &self,
        manager: &LayoutVersionManager<F>,
        base: usize,
    ) -> Result<&V, FactoryError<F, K>> {
        let mlv = manager.metadata_layout_version();
        let cell = base.wrapping_add(index_of(mlv.min(self.software_layout_version)));
        match self.table.get(cell).and_then(|&i| self.values.get(i)) {
            Some(value) => Ok(value),
            None => Err(self.not_served(base, mlv)),
        }
    }

    /// The refusal of a row that has no instance at or below `mlv`.
    #[cold]
    #[inline(never)]
    fn not_served(&self, base: usize, mlv: u32) -> FactoryError<F, K> {
        let row = self.rows.get(base / self.width);
        match row.and_then(|row| Some((&row.key, *row.features.first()?))) {
            Some((key, feature)) => FactoryError::NotSupportedBeforeFinalization {
                key: key.clone(),
                feature,
                metadata_layout_version: mlv,
            },
            // Unreachable: every row of this factory has an instance.
            None => FactoryError::ForeignSlot {
                slot: Slot {
                    factory: self.id,
                    base,
                },
            },
        }
    }

    /// The features (layout versions) registered for `key`, ascending; empty when none.
    pub fn versions<Q>(&self, key: &Q) -> &[F]
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(self.hasher.hash_one(key), key)
            .and_then(|base| self.rows.get(base / self.width))
            .map_or(&[], |row| row.features.as_slice())
    }

    /// Every key, in the order of their first registration.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> + '_ {
        self.rows.iter().map(|row| &row.key)
    }

    /// The number of instances registered (over all keys and versions).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no instance is registered.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The highest layout version this factory accepts: its manager's SLV.
    pub fn software_layout_version(&self) -> u32 {
        self.software_layout_version
    }

    /// Registrations that [`from_registry`](LayoutVersionInstanceFactory::from_registry)
    /// left out because their feature is above the software layout version (a capped
    /// SLV), in a stable order. Empty for a factory built with [`register`](Self::register).
    pub fn skipped(&self) -> &[SkippedRegistration<F>] {
        &self.skipped
    }

    /// The start-up guard: `Ok` when every expected (key, feature) has an instance, else
    /// [`FactoryError::Missing`] listing every one that does not.
    ///
    /// Expectations above the software layout version are not checked: this binary cannot
    /// serve them (a capped SLV).
    ///
    /// Call it in a test or at start-up, with the list exported by the crate that defines
    /// the handlers: that one line both links the crate (see
    /// [`from_registry`](LayoutVersionInstanceFactory::from_registry)) and checks that its
    /// registrations arrived.
    ///
    /// ```
    /// # use layout_core::{LayoutFeature, LayoutVersionInstanceFactory, LayoutVersionManager, ManagerOptions, MemoryStorage, StartIntent};
    /// # #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
    /// # pub enum OmFeature {
    /// #     #[layout(version = 0, description = "Initial layout")]
    /// #     InitialVersion,
    /// #     #[layout(version = 1, description = "Multi-tenancy tables")]
    /// #     MultiTenancy,
    /// # }
    /// /// Stands for the crate that defines (and registers) the handlers.
    /// mod om_handlers {
    ///     use super::OmFeature;
    ///     pub const HANDLERS: &[(&str, OmFeature)] =
    ///         &[("CreateKey", OmFeature::InitialVersion), ("CreateKey", OmFeature::MultiTenancy)];
    /// }
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
    /// # let lvm = LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?;
    /// let mut factory = LayoutVersionInstanceFactory::new(&lvm);
    /// factory.register("CreateKey", OmFeature::InitialVersion, "v0")?;
    /// assert!(factory.expect(om_handlers::HANDLERS).is_err()); // v1 is missing
    /// factory.register("CreateKey", OmFeature::MultiTenancy, "v1")?;
    /// factory.expect(om_handlers::HANDLERS)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn expect(&self, expected: &[(K, F)]) -> Result<(), FactoryError<F, K>> {
        let missing: Vec<(K, F)> = expected
            .iter()
            .filter(|(key, feature)| {
                feature.layout_version() <= self.software_layout_version
                    && !self.versions(key).contains(feature)
            })
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(FactoryError::Missing { missing })
        }
    }
}

impl<F, K, V> fmt::Debug for LayoutVersionInstanceFactory<F, K, V>
where
    F: LayoutFeature,
    K: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Versions<'a, F>(&'a [F]);
        impl<F: LayoutFeature> fmt::Debug for Versions<'_, F> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.iter().map(|feature| feature.name()))
                    .finish()
            }
        }
        f.debug_struct("LayoutVersionInstanceFactory")
            .field("catalog", &F::CATALOG_NAME)
            .field("software_layout_version", &self.software_layout_version)
            .field(
                "instances",
                &self
                    .rows
                    .iter()
                    .map(|row| (&row.key, Versions(&row.features)))
                    .collect::<Vec<_>>(),
            )
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// A layout version as an index; lossless wherever `usize` has 32 bits or more.
#[inline]
fn index_of(version: u32) -> usize {
    usize::try_from(version).unwrap_or(usize::MAX)
}
