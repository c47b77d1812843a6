//! What a kvstore reports: [`KvStatus`] and the value-index migration's
//! [`MigrationFigures`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use layout_core::admin::WireMigrationState;
use layout_core::migration::MigrationState;
use layout_core::Preparable;
use redb::ReadableTableMetadata;
use serde::{Deserialize, Serialize};

use super::{Engine, Shared, KV};
use crate::cluster::NodeFence;
use crate::error::KvError;

/// Figures of the value-index migration (`ValueIndex`'s `OnFinalize` action).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationFigures {
    /// `not started`, `running`, `paused`, `interrupted` or `complete`.
    pub state: WireMigrationState,
    /// Rows of `kv` done (over all runs).
    pub rows_done: u64,
    /// Rows in `kv`, counted when the current run started (kept in the checkpoint, so
    /// known at once after a restart, and never below `rows_done`); `None` only before
    /// the migration started.
    pub rows_total: Option<u64>,
    /// Batches committed (over all runs).
    pub batches: u64,
    /// Runs started (1 + resumes).
    pub runs: u32,
    /// How long the migration has been running, over all runs, on the store's clock, in
    /// ms; the time the node was down is not counted.
    pub elapsed_ms: u64,
    /// Whether the copy is complete.
    pub complete: bool,
    /// Keys per batch now.
    #[serde(default)]
    pub batch_size: usize,
    /// The rate ceiling now, if any.
    #[serde(default)]
    pub max_rows_per_sec: Option<u64>,
    /// The foreground-latency budget now, in ms, if any.
    #[serde(default)]
    pub latency_budget_ms: Option<u64>,
    /// The wait the latency budget adds before each batch now, in ms.
    #[serde(default)]
    pub latency_delay_ms: u64,
}

impl MigrationFigures {
    /// [`elapsed_ms`](Self::elapsed_ms) as a duration.
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(self.elapsed_ms)
    }
}

/// What `GET /status` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStatus {
    /// The software layout version.
    pub slv: u32,
    /// The metadata layout version.
    pub mlv: u32,
    /// Whether MLV < SLV.
    pub pre_finalized: bool,
    /// Whether the write gate is up (preparing or prepared).
    pub prepared: bool,
    /// The prepare index, when prepared.
    #[serde(default)]
    pub prepare_index: Option<u64>,
    /// Rows in table `kv` (expired ones included until overwritten or deleted).
    pub keys: u64,
    /// The last applied write's index.
    #[serde(default)]
    pub applied_index: u64,
    /// The value encoding puts write now (`v0-json` or `v3-compact`).
    #[serde(default)]
    pub encoding: String,
    /// The value-index migration, when the software knows `ValueIndex`.
    #[serde(default)]
    pub index_migration: Option<MigrationFigures>,
    /// Why the database is degraded (a failed write to its file: writes are refused
    /// with 503 `degraded` until a reopen succeeds), or `None` when it is healthy. While
    /// degraded, [`keys`](Self::keys) is the last count read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Why this member node is fenced (the coordinator's refusal: writes are refused
    /// with 503 `fenced` until the coordinator accepts it again), or `None` when it is
    /// not (a single node, a coordinator, an accepted member, a member that cannot reach
    /// its coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

impl Engine {
    fn key_count(&self) -> Result<u64, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
        let keys = kv.len().map_err(self.db_err("count kv"))?;
        self.last_keys.store(keys, Ordering::Relaxed);
        Ok(keys)
    }

    pub(super) fn index_figures(&self) -> Option<MigrationFigures> {
        let index = self.index.as_ref()?;
        let progress = index.migration.progress();
        let checkpoint = layout_core::migration::MigrationSink::load_checkpoint(&*index.store)
            .ok()
            .flatten();
        let elapsed_ms = u64::try_from(progress.elapsed.as_millis()).unwrap_or(u64::MAX);
        let rows_done = checkpoint.as_ref().map_or(progress.done, |c| c.done);
        let rows_total = progress
            .total
            .or_else(|| checkpoint.as_ref().and_then(|c| c.total))
            .map(|t| t.max(rows_done));
        let complete =
            index.migration.is_complete() || checkpoint.as_ref().is_some_and(|c| c.complete);
        Some(MigrationFigures {
            state: if complete {
                MigrationState::Complete.into()
            } else {
                progress.state.into()
            },
            rows_done,
            rows_total,
            batches: checkpoint.as_ref().map_or(progress.batches, |c| c.batches),
            runs: progress.runs,
            elapsed_ms,
            complete,
            batch_size: progress.tuning.batch_size,
            max_rows_per_sec: progress.tuning.max_rows_per_sec,
            latency_budget_ms: progress
                .tuning
                .latency_budget
                .map(|b| u64::try_from(b.as_millis()).unwrap_or(u64::MAX)),
            latency_delay_ms: u64::try_from(progress.latency_delay.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

impl Shared {
    pub(crate) fn status(&self) -> Result<KvStatus, KvError> {
        let lvm = &self.engine.lvm;
        let state = self.prepare.state();
        Ok(KvStatus {
            slv: lvm.software_layout_version(),
            mlv: lvm.metadata_layout_version(),
            pre_finalized: lvm.needs_finalization(),
            prepared: self.prepare.is_gate_enabled(),
            prepare_index: state.index(),
            keys: match self.engine.key_count() {
                Ok(keys) => keys,
                Err(KvError::Degraded { .. }) => self.engine.last_keys.load(Ordering::Relaxed),
                Err(e) => return Err(e),
            },
            applied_index: self.engine.applied_index(),
            encoding: self.engine.codecs.for_put(lvm).name().to_owned(),
            index_migration: self.engine.index_figures(),
            degraded: self.engine.db.degraded(),
            fenced: self.fence.get().and_then(NodeFence::cause),
        })
    }
}
