//! Catalogs the tests share.

use layout_core::{LayoutFeature, LayoutVersionManager, ManagerOptions, StartIntent};

/// The catalog most tests use: an object-manager-like component with four layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayoutSupport,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
    #[layout(version = 3, description = "Snapshot diff tables")]
    SnapshotDiff,
}

/// The same catalog after someone renamed version 2 (a defect the manager must catch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum OmFeatureRenamed {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayoutSupport,
    #[layout(version = 2, description = "Tenants")]
    Tenants,
    #[layout(version = 3, description = "Snapshot diff tables")]
    SnapshotDiff,
}

/// A long catalog, for tests that advance through many versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum LongCatalog {
    #[layout(version = 0, description = "v0")]
    V0,
    #[layout(version = 1, description = "v1")]
    V1,
    #[layout(version = 2, description = "v2")]
    V2,
    #[layout(version = 3, description = "v3")]
    V3,
    #[layout(version = 4, description = "v4")]
    V4,
    #[layout(version = 5, description = "v5")]
    V5,
    #[layout(version = 6, description = "v6")]
    V6,
    #[layout(version = 7, description = "v7")]
    V7,
    #[layout(version = 8, description = "v8")]
    V8,
    #[layout(version = 9, description = "v9")]
    V9,
    #[layout(version = 10, description = "v10")]
    V10,
    #[layout(version = 11, description = "v11")]
    V11,
    #[layout(version = 12, description = "v12")]
    V12,
    #[layout(version = 13, description = "v13")]
    V13,
    #[layout(version = 14, description = "v14")]
    V14,
    #[layout(version = 15, description = "v15")]
    V15,
}

/// The manager of the catalog most tests use.
pub(crate) type Om = LayoutVersionManager<OmFeature>;

/// Options of a first start that creates the state at `version` (a new binary's first
/// start on an old layout, when `version` is below the SLV).
pub(crate) fn init_at(version: u32) -> ManagerOptions {
    ManagerOptions::default()
        .with_start_intent(StartIntent::Init)
        .with_initial_layout_version(version)
}
