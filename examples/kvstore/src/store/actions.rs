//! The kvstore's upgrade actions.

use layout_core::action::RegistryError;
use layout_core::{ActionError, ActionRegistry, Phase};

use super::KvStore;
use crate::feature::KvFeature;

/// The kvstore's upgrade actions:
///
/// | feature | phase | action |
/// |---|---|---|
/// | `ExpiringValues` | `OnFirstUpgradeStart` | create table `kv_expiry` (old software ignores it) |
/// | `ValueIndex` | `OnFinalize` | fill `kv_by_value` with the background migration |
pub fn actions() -> Result<ActionRegistry<KvFeature, KvStore>, RegistryError> {
    ActionRegistry::<KvFeature, KvStore>::builder()
        .action(
            KvFeature::ExpiringValues,
            Phase::OnFirstUpgradeStart,
            "create-expiry-table",
            |store: &KvStore, _ctx| {
                store
                    .shared
                    .engine
                    .create_expiry_table()
                    .map_err(|e| ActionError::with_source("cannot create table kv_expiry", e))
            },
        )
        .action(
            KvFeature::ValueIndex,
            Phase::OnFinalize,
            "fill-value-index",
            |store: &KvStore, ctx| store.index_migration_run(ctx),
        )
        .build()
}
