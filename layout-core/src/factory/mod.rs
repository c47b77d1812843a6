//! Layout-versioned instances: one implementation per request key and layout version,
//! the one in use chosen by the metadata layout version (MLV).
//!
//! A request handler whose behaviour changes with the on-disk layout gets a new version
//! registered under the feature that introduces the change. While the component runs
//! pre-finalized, the old handler keeps serving (so a downgrade stays possible); the moment
//! the feature is finalized, the new one does.
//!
//! ```
//! use layout_core::{
//!     FactoryError, LayoutFeature, LayoutVersionInstanceFactory, LayoutVersionManager,
//!     ManagerOptions, MemoryStorage, StartIntent,
//! };
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! enum OmFeature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     InitialVersion,
//!     #[layout(version = 1, description = "Buckets carry a storage layout")]
//!     BucketLayoutSupport,
//!     #[layout(version = 2, description = "Multi-tenancy tables")]
//!     MultiTenancy,
//! }
//!
//! let opts = ManagerOptions::default()
//!     .with_start_intent(StartIntent::Init)
//!     .with_initial_layout_version(0);
//! let lvm = LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?;
//!
//! let mut factory = LayoutVersionInstanceFactory::new(&lvm);
//! factory.register("CreateBucket", OmFeature::InitialVersion, "create bucket v0")?;
//! factory.register("CreateBucket", OmFeature::BucketLayoutSupport, "create bucket v1")?;
//! factory.register("CreateTenant", OmFeature::MultiTenancy, "create tenant v2")?;
//!
//! assert_eq!(*factory.get(&lvm, &"CreateBucket")?, "create bucket v0");
//! assert!(matches!(
//!     factory.get(&lvm, &"CreateTenant"),
//!     Err(FactoryError::NotSupportedBeforeFinalization { feature: OmFeature::MultiTenancy, .. })
//! ));
//!
//! lvm.finalize_step(OmFeature::BucketLayoutSupport)?;
//! // No listener, no lag: the next call reads the new MLV.
//! assert_eq!(*factory.get(&lvm, &"CreateBucket")?, "create bucket v1");
//!
//! // Hot paths resolve the key once; each call is then an array index.
//! let slot = factory.slot("CreateBucket").expect("registered above");
//! assert_eq!(*factory.get_slot(&lvm, slot)?, "create bucket v1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Cost
//!
//! Registration precomputes, per key, the instance serving each MLV from 0 to the software
//! layout version (SLV). [`get_slot`](crate::LayoutVersionInstanceFactory::get_slot) is then one
//! atomic load of the MLV and one array index; [`get`](crate::LayoutVersionInstanceFactory::get)
//! adds one lookup of the key in a hash map from each key to its row of that table. Neither
//! walks the versions, takes a lock or allocates, and both read the MLV on every call, so
//! an instance never lags behind a finalization.
//!
//! The map is a `hashbrown` table hashed with `foldhash`'s fast hasher (fixed seed), which
//! keeps each registered key's hash, computed once at registration. In front of it, `get`
//! reads a one-probe array: a power-of-two number of cells, at most half full, sized at
//! registration so that (as far as a size up to 16 times larger allows) each key's hash
//! picks a cell of its own. A lookup hashes the key through its `Hash` (a string key by its
//! text, not its address: a key decoded from a request is found like the literal it was
//! registered with), reads the one cell its hash picks, and confirms the key there with a
//! compare of the stored hash and one `==`. Correctness never rests on the hash: a key
//! that is not confirmed (an unknown key, or one that shares its cell with another) is
//! looked for again, on a cold path, in the map, comparing every key of its hash.
//!
//! The hash needs no randomization: the map holds only the keys the program registered at
//! start-up, so no request can grow it, and a lookup of any other key costs one cell and
//! at most one probe sequence among them.
//!
//! # Registered with an attribute
//!
//! Handlers can register themselves with `#[belongs_to_layout_version(F::X, key = "..")]`
//! on `impl Handler for T`;
//! [`LayoutVersionInstanceFactory::from_registry`](crate::LayoutVersionInstanceFactory::from_registry)
//! collects them.
//! See there for the linking pitfall and the start-up guard,
//! [`expect`](crate::LayoutVersionInstanceFactory::expect).

// The main path (`LayoutVersionInstanceFactory`, `FactoryError`) is re-exported at the
// crate root, and only there; this module holds the rest.
pub(crate) mod instances;
mod problems;
pub(crate) mod registration;
#[cfg(test)]
mod tests;

pub use instances::Slot;
pub use problems::{RegistrationProblem, SkippedRegistration};
