//! Layout-version feature gating for storage services.
//!
//! A service keeps state on disk; a new release changes that layout. `layout-core` lets
//! the service declare its layout features in a checked catalog, know its software layout
//! version (SLV) and the metadata layout version on disk (MLV), refuse to start when the
//! disk is newer than the software, and run *pre-finalized* (new binary, old layout,
//! downgrade still possible) until an operator finalizes, feature by feature, durably.
//!
//! ```
//! use layout_core::{
//!     FileStorage, LayoutError, LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent,
//! };
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! pub enum OmFeature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     InitialVersion,
//!     #[layout(version = 1, description = "Buckets carry a storage layout")]
//!     BucketLayoutSupport,
//!     #[layout(version = 2, description = "Multi-tenancy tables")]
//!     MultiTenancy,
//! }
//!
//! let dir = tempfile::tempdir()?;
//! // First start of a fresh install, pinned to the old layout (as after an upgrade).
//! let opts = ManagerOptions::default()
//!     .with_start_intent(StartIntent::Init)
//!     .with_initial_layout_version(0);
//! let lvm = LayoutVersionManager::<OmFeature>::open(FileStorage::new(dir.path()), opts)?;
//! assert!(lvm.needs_finalization());
//! assert_eq!(lvm.unfinalized_features(), [OmFeature::BucketLayoutSupport, OmFeature::MultiTenancy]);
//! assert!(matches!(
//!     lvm.check_allowed(OmFeature::MultiTenancy),
//!     Err(LayoutError::NotFinalized { .. })
//! ));
//!
//! // Finalize feature by feature: each step is durable before it is visible.
//! for feature in lvm.unfinalized_features() {
//!     lvm.finalize_step(feature)?;
//! }
//! assert!(lvm.is_allowed(OmFeature::MultiTenancy));
//! drop(lvm);
//!
//! // A restart reads the finalized layout back.
//! let lvm = LayoutVersionManager::<OmFeature>::open(FileStorage::new(dir.path()), ManagerOptions::default())?;
//! assert_eq!(lvm.metadata_layout_version(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Map
//!
//! The main path is at the root: the catalog ([`LayoutFeature`], [`validate_catalog`],
//! [`CatalogError`]), the manager ([`LayoutVersionManager`], [`ManagerOptions`],
//! [`StartIntent`], [`FeatureStatus`]), storage ([`LayoutStorage`], [`FileStorage`],
//! [`MemoryStorage`]), errors ([`LayoutError`], [`StepError`], [`BoxError`]), actions
//! ([`Action`], [`ActionContext`], [`ActionRegistry`], [`Phase`]), the finalizer
//! ([`UpgradeFinalizer`], [`FinalizeRequest`], [`FinalizeOutcome`], [`StatusReport`]),
//! the gate ([`LayoutAware`], `#[disallowed_until]`), the factory
//! ([`LayoutVersionInstanceFactory`]), prepare ([`PrepareController`], [`Preparable`]) and
//! the macros. Everything else lives in its module:
//!
//! | module | holds |
//! |---|---|
//! | [`state`] | [`LayoutState`](state::LayoutState), what is persisted |
//! | [`storage`] | the [`LayoutStorage`] trait, [`FileStorage`] (the `VERSION` file), [`MemoryStorage`] |
//! | [`action`] | upgrade actions: [`Phase`], [`ActionContext`], [`ActionRegistry`] |
//! | [`finalizer`] | [`UpgradeFinalizer`]: start-up actions, finalization, status, policy |
//! | [`binding`] | [`DataBinding`](binding::DataBinding): a component's data bound to its layout state, checked at start-up; `binding::redb`: the whole recipe on a redb database (feature `redb`) |
//! | [`prepare`] | [`PrepareController`]: the write gate, prepare and cancel-prepare, the marker |
//! | [`startup`] | [`ComponentStartup`](startup::ComponentStartup): one start-up path (manager, component, finalizer, start-up actions, prepare, admin endpoint) for production and the test kit |
//! | `admin` | the admin API and `AdminService` (feature `admin`); its HTTP endpoint and client (feature `admin-http`) |
//! | `http` | the one HTTP stack of every endpoint: axum on hyper on a runtime thread the endpoint owns, bearer tokens, limits, `/metrics`, TLS (features `http`, `tls`) |
//! | [`clock`] | injectable time: [`SystemClock`](clock::SystemClock), [`ManualClock`](clock::ManualClock), the [`Sleeper`](clock::Sleeper) that waits |
//! | [`durable`] | durable files: atomic replace (temp file, fsync, rename, directory fsync), durable remove, the checksummed envelope |
//! | [`crash_point`] | named crash points inside upgrade work, which a test kit observes and crashes at |
//! | `cluster` | cluster-wide finalization: coordinator, members, cluster stores (embedded, etcd), store moves (feature `cluster`) |
//! | [`factory`] | [`LayoutVersionInstanceFactory`]: request handlers per layout version, `#[belongs_to_layout_version]` |
//! | `migration` | migrating state forward: versioned documents, background migrations with dual-write, side-by-side copies (feature `migration`) |
//! | `etcd` | the etcd connection the cluster store and the document store share (feature `etcd`) |
//!
//! # Cargo features
//!
//! The default build compiles the core only (catalog, manager, storage, actions,
//! finalizer, gate, factory, prepare, start-up) and the macros (`macros`). The rest is
//! opt-in:
//!
//! | feature | adds |
//! |---|---|
//! | `migration` | `migration`: document, background and side-by-side migrations |
//! | `cluster` | `cluster`: coordinator, members, cluster stores (enables `migration`, which migrates its state documents) |
//! | `etcd` | `etcd::EtcdConnection`, with `cluster::EtcdStore` and `migration::EtcdDocumentStore` when those are on (needs `protoc`) |
//! | `redb` | `binding::redb`, `migration::RedbMigrationStore`, and the `redb` crate re-exported |
//! | `admin`, `admin-http`, `http`, `tls`, `cli` | the admin API, its HTTP endpoint and client, TLS, `layoutctl` |
//! | `failpoints` | the finalizer's and the stores' failpoints (`fail` crate) for crash tests |

/// The project's README: its Rust example is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}

/// The data-binding recipe: its Rust example is compiled and run as a doctest.
#[cfg(all(doctest, feature = "redb"))]
#[doc = include_str!("../../docs/data-binding.md")]
mod data_binding_doc {}

/// The operator runbook: its Rust examples are compiled as doctests.
#[cfg(all(doctest, feature = "tls"))]
#[doc = include_str!("../../docs/operator-runbook.md")]
mod operator_runbook {}

/// Adding a layout feature: its Rust examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/adding-a-layout-feature.md")]
mod adding_a_layout_feature_doc {}

/// Finalization: its Rust examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/finalization.md")]
mod finalization_doc {}

/// Migrations: its Rust examples are compiled and run as doctests.
#[cfg(all(doctest, feature = "migration"))]
#[doc = include_str!("../../docs/migrations.md")]
mod migrations_doc {}

/// Cluster upgrades: its Rust examples are compiled and run as doctests.
#[cfg(all(doctest, feature = "cluster"))]
#[doc = include_str!("../../docs/cluster-upgrade.md")]
mod cluster_upgrade_doc {}

/// Prepare: its Rust examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/prepare.md")]
mod prepare_doc {}

/// `layoutctl`'s guide: any Rust example in it is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../docs/cli.md")]
mod cli_doc {}

/// The catalogue of errors: any Rust example in it is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../docs/errors.md")]
mod errors_doc {}

/// The `VERSION` file: any Rust example in it is compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../docs/version-file.md")]
mod version_file_doc {}

// Generated code names `::layout_core::...`; this makes those paths resolve here too.
#[allow(unused_extern_crates)]
extern crate self as layout_core;

pub mod action;
#[cfg(feature = "admin")]
pub mod admin;
pub mod binding;
pub mod clock;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod crash_point;
pub mod durable;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod factory;
mod feature;
pub mod finalizer;
mod gate;
#[cfg(feature = "http")]
pub mod http;
mod manager;
#[cfg(feature = "migration")]
pub mod migration;
mod options;
pub mod prepare;
pub mod startup;
pub mod state;
pub mod storage;

// The main path, at the root: catalog, manager, options, storage, errors, actions,
// finalizer, gate, factory, prepare (and the macros below). Everything else through its
// module.
pub use action::context::{Action, ActionContext, ActionError, Phase};
pub use action::registry::ActionRegistry;
pub use error::{BoxError, LayoutError, StepError};
pub use factory::instances::{FactoryError, LayoutVersionInstanceFactory};
pub use feature::{validate_catalog, CatalogError, LayoutFeature};
pub use finalizer::error::FinalizeError;
pub use finalizer::policy::FinalizePolicy;
pub use finalizer::request::FinalizeRequest;
pub use finalizer::status::{FinalizationStatus, FinalizeOutcome, StatusReport};
pub use finalizer::upgrade_finalizer::UpgradeFinalizer;
pub use gate::LayoutAware;
pub use manager::{FeatureInfo, FeatureStatus, LayoutVersionManager, StepOutcome};
pub use options::{ManagerOptions, StartIntent};
pub use prepare::controller::{Preparable, PrepareController};
pub use prepare::error::PrepareError;
pub use prepare::state::PrepareState;
pub use storage::contract::{LayoutStorage, StorageError};
pub use storage::file::FileStorage;
pub use storage::memory::MemoryStorage;

/// The redb crate that `binding::redb` and the migration backend on redb are built on
/// (feature `redb`), so users open databases with the same version.
#[cfg(feature = "redb")]
pub use redb;

/// `#[derive(LayoutFeature)]`: implements [`LayoutFeature`] for a catalog enum and checks
/// the catalog at compile time. See the trait for the attribute syntax.
#[cfg(feature = "macros")]
pub use layout_macros::LayoutFeature;

/// `#[upgrade_action(F::X, phase = ...)]`: registers a function as an upgrade action; see
/// [`ActionRegistryBuilder::with_registered`](action::ActionRegistryBuilder::with_registered).
#[cfg(feature = "macros")]
pub use layout_macros::upgrade_action;

/// `#[disallowed_until(F::X)]`: closes a function until layout feature `X` is finalized;
/// see [`LayoutAware`].
#[cfg(feature = "macros")]
pub use layout_macros::disallowed_until;

/// `#[belongs_to_layout_version(F::X, key = "..")]`: registers a request handler for
/// [`LayoutVersionInstanceFactory::from_registry`].
#[cfg(feature = "macros")]
pub use layout_macros::belongs_to_layout_version;

/// Items the generated code (and the benchmarks) name. Not public API: no stability promise.
#[doc(hidden)]
pub mod __private {
    pub use crate::action::context::{into_action_result, ActionFnPtr, IntoActionError};
    pub use crate::action::registry::ActionSubmission;
    pub use crate::factory::instances::KeyBuildHasher;
    pub use crate::factory::registration::{
        construct_handler, FeatureRef, HandlerRegistration, RegistrableHandler,
    };
    pub use crate::gate::support::{
        closed, manager_of, refuse, self_manager, AnyFeature, Closed, FeatureOf, GatedReturn,
    };
    pub use inventory;
}
