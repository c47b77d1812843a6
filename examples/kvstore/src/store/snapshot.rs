//! Snapshots, the op log's purge, and [`Preparable`] for the engine.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;

use layout_core::{durable, Preparable, StepError};
use redb::{ReadableTable, ReadableTableMetadata};

use super::db::read_meta;
use super::{
    Engine, Shared, KV, META, META_APPLIED, META_PURGED, META_SNAPSHOT, OPLOG, SNAPSHOT_DIR,
};
use crate::codec::decode_any;
use crate::error::KvError;

impl Engine {
    fn write_snapshot(&self) -> Result<u64, KvError> {
        let snapshot_dir = self.dir.join(SNAPSHOT_DIR);
        let io = |context: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| KvError::Io {
                context,
                path,
                source,
            }
        };
        fs::create_dir_all(&snapshot_dir).map_err(io("cannot create", &snapshot_dir))?;
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let index = {
            let meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            read_meta(&meta, META_APPLIED).map_err(self.db_err("read kv_meta"))?
        };
        let final_path = snapshot_dir.join(format!("snapshot-{index:020}.jsonl"));
        // One durable replace: a temporary file (`.snapshot-<index>.jsonl.<pid>.<n>.tmp`,
        // created exclusively) written, fsynced, renamed, the directory fsynced; removed
        // on any failure (a full disk must not stay full).
        match durable::replace_with(&final_path, |file| {
            self.write_snapshot_file(&txn, index, file, &final_path)
        }) {
            Ok(_) => {}
            Err(durable::ReplaceError::Write(e)) => return Err(e),
            Err(durable::ReplaceError::Durable(e)) => {
                return Err(KvError::Io {
                    context: e.step().as_str(),
                    path: e.path().to_owned(),
                    source: e.into_io_error(),
                })
            }
        }
        drop(txn);
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        {
            let mut meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            meta.insert(META_SNAPSHOT, index)
                .map_err(self.db_err("write kv_meta"))?;
        }
        txn.commit().map_err(self.db_err("commit"))?;
        self.db.last_snapshot.store(index, Ordering::SeqCst);
        Ok(index)
    }

    /// Writes the snapshot at `index` to `file`, the temporary file of `final_path`.
    fn write_snapshot_file(
        &self,
        txn: &redb::ReadTransaction,
        index: u64,
        file: &mut fs::File,
        final_path: &Path,
    ) -> Result<(), KvError> {
        let io = |context: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| KvError::Io {
                context,
                path,
                source,
            }
        };
        {
            let mut out = std::io::BufWriter::new(file);
            let header = serde_json::json!({"snapshot_index": index, "layout_version": self.lvm.metadata_layout_version()});
            writeln!(out, "{header}").map_err(io("cannot write", final_path))?;
            let kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
            for item in kv.iter().map_err(self.db_err("iterate kv"))? {
                let (k, v) = item.map_err(self.db_err("read kv"))?;
                let (ms, record) = v.value();
                let key = String::from_utf8_lossy(k.value()).into_owned();
                let expires_at_ms = self.expiry_of(txn, &key)?;
                let value = decode_any(record, self.slv()).map_err(|reason| KvError::Corrupt {
                    key: key.clone(),
                    reason,
                })?;
                let line = serde_json::json!({"key": key, "value": value, "modified_ms": ms, "expires_at_ms": expires_at_ms});
                writeln!(out, "{line}").map_err(io("cannot write", final_path))?;
            }
            out.flush().map_err(io("cannot write", final_path))?;
        }
        Ok(())
    }

    fn purge(&self, through: u64) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        {
            let mut log = txn
                .open_table(OPLOG)
                .map_err(self.db_err("open kv_oplog"))?;
            log.retain_in(..=through, |_, _| false)
                .map_err(self.db_err("purge kv_oplog"))?;
            let mut meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            meta.insert(META_PURGED, through)
                .map_err(self.db_err("write kv_meta"))?;
        }
        txn.commit().map_err(self.db_err("commit"))
    }

    pub(super) fn oplog_bounds(&self) -> Result<(u64, Option<u64>), KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let log = txn
            .open_table(OPLOG)
            .map_err(self.db_err("open kv_oplog"))?;
        let len = log.len().map_err(self.db_err("count kv_oplog"))?;
        let first = log
            .first()
            .map_err(self.db_err("read kv_oplog"))?
            .map(|(k, _)| k.value());
        Ok((len, first))
    }
}

/// Removes the temporary files (`.snapshot-*.tmp`) a killed or failed snapshot left in
/// `snapshot_dir`, each logged at warn. Runs when the store opens, before any snapshot.
pub(super) fn remove_stale_snapshot_temps(snapshot_dir: &Path) -> Result<(), KvError> {
    let entries = match fs::read_dir(snapshot_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(KvError::Io {
                context: "cannot list",
                path: snapshot_dir.to_owned(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| KvError::Io {
            context: "cannot list",
            path: snapshot_dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".snapshot-") && name.ends_with(".tmp")) {
            continue;
        }
        let path = entry.path();
        // Unlinked, never followed: a symlink there is removed, not its target.
        match fs::remove_file(&path) {
            Ok(()) => tracing::warn!(
                path = %path.display(),
                "removed the temporary file of an interrupted snapshot (a killed or failed \
                 prepare)"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KvError::Io {
                    context: "cannot remove the stale snapshot temporary file",
                    path,
                    source,
                })
            }
        }
    }
    Ok(())
}

impl Preparable for Engine {
    fn applied_index(&self) -> u64 {
        self.db.applied.load(Ordering::SeqCst)
    }

    fn flush(&self) -> Result<u64, StepError> {
        // Every write commits durably; an empty durable commit makes sure nothing is
        // pending, under the write lock so the index read is the one made durable.
        let _w = self.write_lock.lock();
        let commit = || -> Result<(), KvError> {
            let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
            txn.commit().map_err(self.db_err("commit"))
        };
        commit().map_err(|e| StepError::with_source("cannot flush the kvstore", e))?;
        Ok(self.applied_index())
    }

    fn snapshot(&self, _index: u64) -> Result<u64, StepError> {
        self.write_snapshot()
            .map_err(|e| StepError::with_source("cannot snapshot the kvstore", e))
    }

    fn last_snapshot_index(&self) -> u64 {
        self.db.last_snapshot.load(Ordering::SeqCst)
    }

    fn purge_log(&self, index: u64) -> Result<(), StepError> {
        self.purge(index)
            .map_err(|e| StepError::with_source("cannot purge the kvstore op log", e))
    }
}

impl Preparable for Shared {
    fn applied_index(&self) -> u64 {
        self.engine.applied_index()
    }
    fn flush(&self) -> Result<u64, StepError> {
        self.engine.flush()
    }
    fn snapshot(&self, index: u64) -> Result<u64, StepError> {
        self.engine.snapshot(index)
    }
    fn last_snapshot_index(&self) -> u64 {
        self.engine.last_snapshot_index()
    }
    fn purge_log(&self, index: u64) -> Result<(), StepError> {
        self.engine.purge_log(index)
    }
}
