//! A record store whose v2 feature rewrites every record with a `BackgroundMigration` as
//! its `OnFinalize` action, with old and new request handlers: the scenario a user wrote
//! from the docs and lost data with, when finalization was interrupted halfway and the
//! operator downgraded.
//!
//! | version | feature | records |
//! |---|---|---|
//! | 0 | `Initial` | the old table, values `v1:<text>` |
//! | 1 | `RecordsV2` | the new table, values `v2:<text>`; `OnFinalize` copies and rewrites every record (batches of `batch` keys, a crash point of its own first); `ValidateInPrefinalize` resets a migration the old release made stale |
//!
//! Handlers: the old release (SLV 0) reads and writes the old table only. This release
//! asks the migration's `DualWrite` guard: the old table before the migration starts,
//! both tables (a delete leaving a tombstone) while it runs, the new table once the
//! feature is finalized; it reads the old table until then.
//!
//! Parameters (`Kind::param`): `batch` (keys per batch, default 3); `reset = no` removes
//! the reset action (the bug: after a downgrade the partial copy is stale, so a record
//! the old release deleted comes back and one it added is lost); `dual_write = no`: the
//! handlers write only the old table while the migration runs (the other bug: a record
//! the copy already passed keeps its old value); `thread = yes`: the action runs the
//! migration on a thread of its own (a failure or panic there fails the action).
//!
//! The store lives in memory and outlives an in-process node's restarts and crashes (one
//! store per node directory): each of its operations is atomic, as a real store's
//! transaction is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use layout_core::action::RegistryError;
use layout_core::migration::{
    BackgroundMigration, DualWrite, LiveWrite, MemoryMigrationStore, Row, WriteTarget,
};
use layout_core::StepError;
use layout_core::{
    ActionContext, ActionError, ActionRegistry, LayoutFeature, LayoutVersionManager, StartIntent,
};
use layout_testkit::{HookResult, NodeContext, TestComponent};
use parking_lot::Mutex;

/// The action's own crash point, passed before the migration runs.
pub(crate) const CRASH_REWRITE_STARTED: &str = "records::rewrite_started";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum RecordFeature {
    #[layout(version = 0, description = "Records in format v1")]
    Initial,
    #[layout(
        version = 1,
        description = "Records rewritten to format v2 by a background migration"
    )]
    RecordsV2,
}

/// Every node's store, by data directory: its "disk".
static DISKS: Mutex<BTreeMap<PathBuf, Arc<MemoryMigrationStore>>> = Mutex::new(BTreeMap::new());

pub(crate) struct Records {
    lvm: Arc<LayoutVersionManager<RecordFeature>>,
    store: Arc<MemoryMigrationStore>,
    migration: BackgroundMigration,
    routing: DualWrite<RecordFeature>,
    dual_writes: bool,
    on_thread: bool,
}

impl Records {
    /// Whether this is the old release (it does not know `RecordsV2`).
    fn is_old_release(&self) -> bool {
        self.lvm.software_layout_version() < RecordFeature::RecordsV2.layout_version()
    }

    fn write(&self, old: LiveWrite, both: LiveWrite, new: LiveWrite) -> Result<(), String> {
        if self.is_old_release() {
            return self.store.apply_write(&old);
        }
        let scope = self.routing.begin();
        let write = match scope.target() {
            WriteTarget::Both if self.dual_writes => both,
            // Without dual_writes, the bug: the migration runs, and the write goes to the
            // old table only.
            WriteTarget::OldOnly | WriteTarget::Both => old,
            WriteTarget::NewOnly => new,
        };
        self.store.apply_write(&write)
    }

    fn put(&self, key: &str, text: &str) -> Result<(), String> {
        let old = Row::new(key.as_bytes(), format!("v1:{text}").into_bytes(), 0);
        let new = Row::new(key.as_bytes(), format!("v2:{text}").into_bytes(), 0);
        self.write(
            LiveWrite::Put {
                old: Some(old.clone()),
                new: None,
            },
            LiveWrite::Put {
                old: Some(old),
                new: Some(new.clone()),
            },
            LiveWrite::Put {
                old: None,
                new: Some(new),
            },
        )
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        let tombstone = !self.is_old_release() && self.routing.begin().needs_tombstone();
        let delete = |old, new, tombstone| LiveWrite::Delete {
            key: key.as_bytes().to_vec(),
            old,
            new,
            tombstone,
        };
        self.write(
            delete(true, false, false),
            delete(true, true, tombstone),
            delete(false, true, false),
        )
    }

    /// Every record, `key -> text`, from the table this release reads now.
    fn scan(&self) -> Result<BTreeMap<String, String>, String> {
        let (rows, prefix) = if self.lvm.is_allowed(RecordFeature::RecordsV2) {
            (self.store.new_rows(), "v2:")
        } else {
            (self.store.old_rows(), "v1:")
        };
        rows.into_iter()
            .map(|row| {
                let key = String::from_utf8_lossy(&row.key).into_owned();
                let value = String::from_utf8_lossy(&row.value).into_owned();
                value
                    .strip_prefix(prefix)
                    .map(|text| (key.clone(), text.to_owned()))
                    .ok_or_else(|| format!("record {key} is {value:?}, not in format {prefix}"))
            })
            .collect()
    }

    /// `RecordsV2`, on every start of this release while it is not finalized: after the
    /// old release ran (an upgrade start), the partial copy is stale: start over.
    fn reset_after_the_old_release(&self) -> Result<(), ActionError> {
        if self.lvm.start_intent() == StartIntent::Upgrade
            && !self.lvm.is_allowed(RecordFeature::RecordsV2)
        {
            self.migration
                .reset()
                .map_err(|e| ActionError::with_source("cannot reset the rewrite", e))?;
        }
        Ok(())
    }
}

/// The store's writes, as `Result<(), String>`.
trait ApplyWrite {
    fn apply_write(&self, write: &LiveWrite) -> Result<(), String>;
}

impl ApplyWrite for MemoryMigrationStore {
    fn apply_write(&self, write: &LiveWrite) -> Result<(), String> {
        layout_core::migration::MigratingStore::apply(self, write).map_err(|e| e.to_string())
    }
}

fn rewrite(row: Row) -> Result<Option<Row>, StepError> {
    let text = row
        .value
        .strip_prefix(b"v1:")
        .ok_or_else(|| StepError::new("a record in the old table is not in format v1"))?;
    let mut value = b"v2:".to_vec();
    value.extend_from_slice(text);
    Ok(Some(Row { value, ..row }))
}

fn rewrite_records(
    records: &Records,
    ctx: &ActionContext<'_, RecordFeature>,
) -> Result<(), ActionError> {
    ctx.crash_point(CRASH_REWRITE_STARTED);
    if !records.on_thread {
        return records.migration.run_as_action(ctx);
    }
    std::thread::scope(
        |scope| match scope.spawn(|| records.migration.run()).join() {
            Ok(report) => report
                .map(drop)
                .map_err(|e| ActionError::with_source("the rewrite failed", e)),
            Err(_) => Err(ActionError::new("the rewrite's thread panicked")),
        },
    )
}

impl TestComponent for Records {
    type Feature = RecordFeature;

    fn open(ctx: &NodeContext<RecordFeature>) -> HookResult<Self> {
        let store = Arc::clone(
            DISKS
                .lock()
                .entry(ctx.data_dir().to_owned())
                .or_insert_with(|| Arc::new(MemoryMigrationStore::new())),
        );
        let batch = ctx.param("batch").map_or(Ok(3), str::parse)?;
        let migration = BackgroundMigration::builder("records-v2", store.clone(), store.clone())
            .batch_size(batch)
            .transform(rewrite)
            .open()?;
        let routing = migration.dual_write(Arc::clone(ctx.manager()), RecordFeature::RecordsV2);
        Ok(Records {
            lvm: Arc::clone(ctx.manager()),
            store,
            migration,
            routing,
            dual_writes: ctx.param("dual_write") != Some("no"),
            on_thread: ctx.param("thread") == Some("yes"),
        })
    }

    fn actions(
        ctx: &NodeContext<RecordFeature>,
    ) -> Result<ActionRegistry<RecordFeature, Self>, RegistryError> {
        let builder =
            ActionRegistry::builder().on_finalize(RecordFeature::RecordsV2, rewrite_records);
        if ctx.param("reset") == Some("no") {
            return builder.build();
        }
        builder
            .validate_in_prefinalize(RecordFeature::RecordsV2, |r: &Records, _ctx| {
                r.reset_after_the_old_release()
            })
            .build()
    }

    /// `put` (`key=text`), `delete` (key), `scan` (`key=text,...`).
    fn call(&self, operation: &str, argument: &str) -> HookResult<String> {
        let result = match operation {
            "put" => {
                let (key, text) = argument
                    .split_once('=')
                    .ok_or_else(|| format!("put wants key=text, got {argument:?}"))?;
                self.put(key, text).map(|()| "ok".to_owned())
            }
            "delete" => self.delete(argument).map(|()| "ok".to_owned()),
            "scan" => self.scan().map(|records| {
                records
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
            other => Err(format!("unknown operation {other}")),
        };
        Ok(result?)
    }
}
