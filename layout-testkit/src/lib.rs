//! Test kit for `layout-core`: the tools a component's tests (and this workspace's own)
//! use to show that layout upgrades are safe.
//!
//! - [`MiniCluster`]: N components of one or more kinds, each in its own directory with
//!   its own layout version manager, pinned to an MLV and capped at an SLV (the "binary"
//!   it runs), in this process or each in a child process that a test can SIGKILL.
//!   Restart a node with another SLV (upgrade or downgrade its binary) and keep its
//!   directory; finalize one node or all. The component implements [`TestComponent`],
//!   or, when it lives in another crate than the test, is [`Adapted`] over a [`Service`]
//!   that returns the service's own start-up (`layout_core::startup::ComponentStartup`).
//! - [`UpgradeTest`]: the stages of an upgrade in order, with a callback at each: the old
//!   version, this version pre-finalized, the old version again (downgraded), this
//!   version finalized; then the old version must be refused; opted in, the finalization
//!   interrupted at every crash point, then restarted or downgraded
//!   ([`InterruptedFinalization`]).
//! - [`CrashMatrix`]: a scenario once per crash point its finalization passes (the
//!   finalizer's steps and every point inside its actions, such as each batch of a
//!   background migration; discovered by a crash-free run), and per pass of each,
//!   crashing there, restarting, finishing and checking invariants; the report says
//!   which crash point broke which invariant.
//! - [`MixedVersionTest`]: seeded random mixed-version plans (start version, order of
//!   upgrades, restarts and kills, downgrade or not, crashes, hooks); a seed replays
//!   exactly.
//! - [`assert_catalog_locked`]: a checked-in lock file of a catalog, so removing,
//!   renaming, renumbering or reordering a feature fails a test.
//! - [`crash`]: the child-process crash harness under all of it.
//! - [`workload`]: a recorder and checker of client writes for end-to-end upgrade tests:
//!   nothing acknowledged may be lost or changed, whatever crashed meanwhile.
//! - `etcd` (feature `etcd`): a real etcd server on loopback for tests of the cluster
//!   store.
//!
//! ```
//! use layout_core::{ActionRegistry, LayoutFeature};
//! use layout_core::action::RegistryError;
//! use layout_testkit::{HookResult, Kind, MiniCluster, NodeContext, TestComponent, UpgradeTest};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! enum Feature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     Initial,
//!     #[layout(version = 1, description = "An index file")]
//!     Index,
//! }
//!
//! struct Service {
//!     dir: std::path::PathBuf,
//! }
//!
//! impl TestComponent for Service {
//!     type Feature = Feature;
//!     fn open(ctx: &NodeContext<Feature>) -> HookResult<Self> {
//!         Ok(Service { dir: ctx.data_dir().to_owned() })
//!     }
//!     fn actions(_: &NodeContext<Feature>) -> Result<ActionRegistry<Feature, Self>, RegistryError> {
//!         ActionRegistry::builder()
//!             .on_finalize(Feature::Index, |s: &Service, _ctx| Ok(std::fs::write(s.dir.join("index"), b"")?))
//!             .build()
//!     }
//! }
//!
//! let report = UpgradeTest::new(
//!     MiniCluster::builder().kind(Kind::<Service>::new("svc").nodes(3).software_layout_version(0)),
//! )
//! .with_old_version_downgraded(|cluster| {
//!     for node in cluster.nodes_of::<Service>() {
//!         assert!(!node.data_dir().join("index").exists(), "written before finalization");
//!     }
//!     Ok(())
//! })
//! .with_this_version_finalized(|cluster| {
//!     for node in cluster.nodes_of::<Service>() {
//!         assert!(node.data_dir().join("index").exists());
//!     }
//!     Ok(())
//! })
//! .run()?;
//! println!("{}", report.log.join("\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The chapter "Testing your upgrades" (`docs/testing-upgrades.md`) walks through a
//! complete example.
//!
//! # Map
//!
//! | module | holds |
//! |---|---|
//! | [`component`] | [`TestComponent`], [`NodeContext`], [`NodeInfo`], [`PrepareOutcome`] |
//! | [`adapter`] | [`Service`], [`Adapted`]: a component from another crate, started with its own start-up |
//! | [`cluster`] | [`MiniCluster`], [`Kind`], [`Node`], [`ClusterNode`], [`run_as_child_node`] |
//! | [`upgrade_test`] | [`UpgradeTest`], [`Stage`], [`InterruptedFinalization`] |
//! | [`crash_matrix`] | [`CrashMatrix`], [`CrashMatrixReport`] |
//! | [`plan`] | [`MixedVersionTest`], [`Plan`], [`PlanRng`] |
//! | [`inject`] | crash injection at crash points: [`CrashPoint`], [`Injection`], [`passed_points`], [`expected_hits`] |
//! | [`catalog_lock`] | [`CatalogLock`], [`assert_catalog_locked`] |
//! | [`crash`] | the child-process crash harness: [`ChildCommand`], [`ChildProcess`], [`child_role`], [`report_step`], [`block_until_killed`], [`test_name!`] |
//! | [`workload`] | client writes recorded and checked against what the service returns: [`workload::Recorder`], [`workload::Expectations`] |
//!
//! # Features
//!
//! `coordination`: coordinated mini clusters
//! ([`MiniClusterBuilder::coordinated`](cluster::MiniClusterBuilder)): the project's own
//! coordinator and members over the member link, rolling upgrades, exclusions, late
//! joiners, and seeded cluster plans that crash the coordinator or a member at every
//! cluster crash point (`cluster::plan`; enables `layout-core/http`).
//!
//! `failpoints`: enables `layout-core/failpoints` (the finalizer's `fail` failpoints);
//! crashes in mixed-version plans need it. The crash matrix and the
//! interrupted-finalization stage need no feature: they crash at crash points
//! (`layout_core::crash_point`), which are always compiled in. Both are process-global:
//! put the tests that inject crashes in a test binary of their own and run it with
//! cargo-nextest (one process per test); see [`inject`].

/// The chapter "Testing your upgrades" (`docs/testing-upgrades.md`): its examples are
/// compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/testing-upgrades.md")]
mod testing_upgrades_chapter {}

pub mod adapter;
pub mod catalog_lock;
pub mod cluster;
pub mod component;
pub mod conformance;
pub mod crash;
pub mod crash_matrix;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod inject;
pub mod plan;
mod rng;
mod unsynced;
pub mod upgrade_test;
pub mod workload;

pub use adapter::{Adapted, Service};
pub use catalog_lock::{
    assert_catalog_locked, check_catalog_lock, CatalogLock, CatalogLockError, LockChange,
    LockCheck, LockVerdict, LockedFeature, UPDATE_ENV,
};
pub use cluster::{
    run_as_child_node, ClusterNode, FinalizeRun, FinalizeSummary, Kind, KindInfo, MiniCluster,
    MiniClusterBuilder, MiniClusterError, Node, NodeStatus, RunOutcome, StartOptions, StorageKind,
    NODE_ROLE, TESTKIT_CLIENT,
};
pub use component::{HookError, HookResult, NodeContext, NodeInfo, PrepareOutcome, TestComponent};
pub use crash::{
    block_until_killed, child_role, report_step, ChildCommand, ChildOutput, ChildProcess,
    ChildReport, CrashError, CHILD_ROLE_ENV, ORPHANED_EXIT_CODE, STEP_MARKER,
};
pub use crash_matrix::{
    CrashCase, CrashMatrix, CrashMatrixError, CrashMatrixReport, Violation,
    INVARIANT_CRASH_POINT_REACHED, INVARIANT_FINALIZATION_COMPLETES,
    INVARIANT_MLV_NEVER_GOES_BACKWARDS, INVARIANT_RESTARTS,
};
pub use inject::{
    expected_hits, failpoints_enabled, passed_points, CrashPoint, Injection, PassedPoint,
};
pub use plan::{
    failpoints_crashed, HookContext, MixedVersionTest, Plan, PlanFailure, PlanReport, PlanRng,
    PlanStep, SEED_ENV,
};
pub use unsynced::UnsyncedStorage;
pub use upgrade_test::{
    InterruptedCase, InterruptedFinalization, Stage, StageFailure, UpgradeReport, UpgradeTest,
    UpgradeTestError,
};
