//! `impl layout_testkit::TestComponent for KvStore`.

use std::sync::Arc;
use std::time::Duration;

use layout_core::action::RegistryError;
use layout_core::finalizer::condition;
use layout_core::{ActionRegistry, UpgradeFinalizer};
use layout_testkit::{HookResult, NodeContext, PrepareOutcome, TestComponent};

use super::feature::KvFeature;
use super::store::{actions, KvOptions, KvStore};

/// The condition that refuses finalization while the store is prepared.
pub const NOT_PREPARED_CONDITION: &str = "kvstore-not-prepared";

impl TestComponent for KvStore {
    type Feature = KvFeature;

    /// Opens the store in the node's data directory. Parameters: `migration_batch`
    /// (keys per batch of the index migration), `listen` (HTTP address).
    fn open(ctx: &NodeContext<KvFeature>) -> HookResult<Self> {
        let mut options = KvOptions::default();
        if let Some(batch) = ctx.param("migration_batch") {
            options = options.with_migration_batch(batch.parse()?);
        }
        if let Some(listen) = ctx.param("listen") {
            options = options.with_listen(listen.parse()?);
        }
        Ok(KvStore::open(
            Arc::clone(ctx.manager()),
            ctx.data_dir(),
            options,
        )?)
    }

    fn actions(
        _ctx: &NodeContext<KvFeature>,
    ) -> Result<ActionRegistry<KvFeature, KvStore>, RegistryError> {
        actions()
    }

    fn configure_finalizer(
        finalizer: UpgradeFinalizer<KvFeature, KvStore>,
        _ctx: &NodeContext<KvFeature>,
    ) -> UpgradeFinalizer<KvFeature, KvStore> {
        finalizer.with_condition(condition(NOT_PREPARED_CONDITION, |store: &KvStore| {
            if store.prepare_controller().is_gate_enabled() {
                Err("the kvstore is prepared; cancel prepare first".into())
            } else {
                Ok(())
            }
        }))
    }

    fn prepare(&self) -> HookResult<PrepareOutcome> {
        let index = KvStore::prepare(self)?;
        Ok(PrepareOutcome::Prepared { index: Some(index) })
    }

    fn cancel_prepare(&self) -> HookResult {
        KvStore::cancel_prepare(self)?;
        Ok(())
    }

    /// Operations: `http_addr`; `put` (`key=value`); `get` (key); `delete` (key);
    /// `status`; `index_migration` (JSON).
    fn call(&self, operation: &str, argument: &str) -> HookResult<String> {
        match operation {
            "http_addr" => Ok(self.http_addr().to_string()),
            "put" => {
                let (key, value) = argument.split_once('=').ok_or("put expects key=value")?;
                Ok(self.put(key, value)?.to_string())
            }
            "put_ttl_ms" => {
                // key=value=ttl_ms
                let mut parts = argument.splitn(3, '=');
                let (Some(key), Some(value), Some(ttl)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err("put_ttl_ms expects key=value=ttl_ms".into());
                };
                Ok(self
                    .put_with_ttl(key, value, Duration::from_millis(ttl.parse()?))?
                    .to_string())
            }
            "get" => Ok(self.get(argument)?.map(|e| e.value).unwrap_or_default()),
            "delete" => Ok(self.delete(argument)?.0.to_string()),
            "status" => Ok(serde_json::to_string(&self.status()?)?),
            "index_migration" => Ok(serde_json::to_string(&self.index_migration())?),
            other => Err(format!("operation `{other}` is not supported by the kvstore").into()),
        }
    }
}
