//! The write path: the op log's entries ([`Op`]), the applied index, the dual write to
//! the value index, and the writes a copy and the cluster make.

use std::sync::atomic::Ordering;
use std::time::Duration;

use layout_core::binding::redb as bound_redb;
use layout_core::disallowed_until;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::db::read_meta;
use super::records::check_key;
use super::{Engine, Shared, EXPIRY, KV, META, META_APPLIED, META_INDEX_SYNCED, OPLOG};
use crate::changes::{self, KvCopyOutcome, KvCopyWrite, KvStamp};
use crate::codec::decode_any;
use crate::error::KvError;
use crate::feature::KvFeature;
use crate::index::{index_key, INDEX, INDEX_TOMBSTONES};

/// One write, as applied and logged in `kv_oplog`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    Put {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    Delete {
        key: String,
    },
    /// A write copied from another store (`POST /copy`): keeps the given version and
    /// update time; `value: None` deletes.
    Copy {
        key: String,
        #[serde(default)]
        value: Option<String>,
        version: u64,
        updated_ms: u64,
    },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Copy { key, .. } => key,
        }
    }

    /// The value the key holds after the write (`None`: deleted).
    fn new_value(&self) -> Option<&str> {
        match self {
            Op::Put { value, .. } => Some(value),
            Op::Copy { value, .. } => value.as_deref(),
            Op::Delete { .. } => None,
        }
    }

    /// The modified time of the key's row: now, or the time a copied write carries.
    fn row_ms(&self, now: u64) -> u64 {
        match self {
            Op::Copy { updated_ms, .. } => *updated_ms,
            _ => now,
        }
    }
}

impl Engine {
    /// Applies `op` in one transaction: the row, its expiry, its index entries, the op
    /// log and the applied index. The caller holds the write lock and a write permit.
    fn apply(&self, op: &Op) -> Result<(u64, bool), KvError> {
        let scope = self.index.as_ref().map(|i| i.routing.begin());
        let write_index = scope
            .as_ref()
            .is_some_and(layout_core::migration::WriteScope::writes_new);
        let tombstone = scope
            .as_ref()
            .is_some_and(layout_core::migration::WriteScope::needs_tombstone);
        let now = self.clock.now_ms();
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        let (index, existed) = {
            let mut kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
            let (key, new_value) = (op.key(), op.new_value());
            let previous = match new_value {
                Some(value) => {
                    let record = self.codecs.for_put(&self.lvm).encode(value);
                    kv.insert(key.as_bytes(), (op.row_ms(now), record.as_slice()))
                        .map_err(self.db_err("insert kv"))?
                        .map(|g| g.value().1.to_vec())
                }
                None => kv
                    .remove(key.as_bytes())
                    .map_err(self.db_err("remove kv"))?
                    .map(|g| g.value().1.to_vec()),
            };
            self.record_change(&txn, op, previous.is_some(), now)?;
            if write_index {
                let mut idx = txn.open_table(INDEX).map_err(self.db_err("open index"))?;
                if let Some(old) = &previous {
                    let old_value =
                        decode_any(old, self.slv()).map_err(|reason| KvError::Corrupt {
                            key: key.to_owned(),
                            reason,
                        })?;
                    let entry = index_key(&old_value, key);
                    idx.remove(entry.as_slice())
                        .map_err(self.db_err("remove index entry"))?;
                    if tombstone {
                        let mut tombs = txn
                            .open_table(INDEX_TOMBSTONES)
                            .map_err(self.db_err("open tombstones"))?;
                        tombs
                            .insert(entry.as_slice(), ())
                            .map_err(self.db_err("insert tombstone"))?;
                    }
                }
                if let Some(value) = new_value {
                    idx.insert(index_key(value, key).as_slice(), ())
                        .map_err(self.db_err("insert index entry"))?;
                }
            }
            if self.ttl_on() {
                let mut expiry = txn
                    .open_table(EXPIRY)
                    .map_err(self.db_err("open kv_expiry"))?;
                match op {
                    Op::Put {
                        expires_at_ms: Some(at),
                        ..
                    } => {
                        expiry
                            .insert(key.as_bytes(), *at)
                            .map_err(self.db_err("insert kv_expiry"))?;
                    }
                    _ => {
                        expiry
                            .remove(key.as_bytes())
                            .map_err(self.db_err("remove kv_expiry"))?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            let index = read_meta(&meta, META_APPLIED).map_err(self.db_err("read kv_meta"))? + 1;
            meta.insert(META_APPLIED, index)
                .map_err(self.db_err("write kv_meta"))?;
            meta.insert(changes::META_CHANGES_SYNCED, index)
                .map_err(self.db_err("write kv_meta"))?;
            // After the record was encoded: never below the layout it was written in.
            bound_redb::record_written_at(&txn, &self.lvm)
                .map_err(self.db_err("record the layout binding"))?;
            if write_index {
                // This write kept the index in step: it is synced through `index`.
                meta.insert(META_INDEX_SYNCED, index)
                    .map_err(self.db_err("write kv_meta"))?;
            }
            let mut log = txn
                .open_table(OPLOG)
                .map_err(self.db_err("open kv_oplog"))?;
            let entry = serde_json::to_vec(op).map_err(|e| KvError::BadRequest(e.to_string()))?;
            log.insert(index, entry.as_slice())
                .map_err(self.db_err("append kv_oplog"))?;
            (index, previous.is_some())
        };
        txn.commit().map_err(self.db_err("commit"))?;
        self.db.applied.store(index, Ordering::SeqCst);
        Ok((index, existed))
    }

    /// Records the version, update time and tombstone flag `op` gives its key, and its
    /// row in the change index (`existed`: the key had a row in `kv` before `op`).
    fn record_change(
        &self,
        txn: &redb::WriteTransaction,
        op: &Op,
        existed: bool,
        now: u64,
    ) -> Result<(), KvError> {
        let key = op.key().as_bytes();
        let before = changes::stamp_in(txn, key).map_err(self.db_err("read kv_versions"))?;
        let stamp = match op {
            Op::Copy {
                version,
                updated_ms,
                value,
                ..
            } => KvStamp {
                version: *version,
                updated_ms: *updated_ms,
                deleted: value.is_none(),
            },
            // A delete of an absent key changes nothing.
            Op::Delete { .. } if !existed => return Ok(()),
            Op::Delete { .. } | Op::Put { .. } => KvStamp {
                version: changes::next_version(before, now),
                updated_ms: now,
                deleted: matches!(op, Op::Delete { .. }),
            },
        };
        changes::record(txn, key, before, stamp).map_err(self.db_err("record the change"))
    }
}

impl Engine {
    /// The stamp of `key` (its version, update time, and whether it is a tombstone).
    fn stamp(&self, key: &str) -> Result<Option<KvStamp>, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let versions = txn
            .open_table(changes::VERSIONS)
            .map_err(self.db_err("open kv_versions"))?;
        Ok(versions
            .get(key.as_bytes())
            .map_err(self.db_err("read kv_versions"))?
            .map(|g| {
                let (version, updated_ms, deleted) = g.value();
                KvStamp {
                    version,
                    updated_ms,
                    deleted,
                }
            }))
    }

    /// Removes the tombstones deleted before `before_ms`; returns how many.
    fn purge_tombstones(&self, before_ms: u64) -> Result<u64, KvError> {
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        let mut purged = 0;
        {
            let mut table = txn
                .open_table(changes::CHANGES)
                .map_err(self.db_err("open kv_changes"))?;
            let mut versions = txn
                .open_table(changes::VERSIONS)
                .map_err(self.db_err("open kv_versions"))?;
            let mut doomed = Vec::new();
            for row in table
                .range::<(u64, &[u8])>(..(before_ms, &b""[..]))
                .map_err(self.db_err("range kv_changes"))?
            {
                let (k, _) = row.map_err(self.db_err("read kv_changes"))?;
                let (ms, key) = k.value();
                let deleted = versions
                    .get(key)
                    .map_err(self.db_err("read kv_versions"))?
                    .is_some_and(|g| g.value().2);
                if deleted {
                    doomed.push((ms, key.to_vec()));
                }
            }
            for (ms, key) in doomed {
                table
                    .remove((ms, key.as_slice()))
                    .map_err(self.db_err("remove kv_changes"))?;
                versions
                    .remove(key.as_slice())
                    .map_err(self.db_err("remove kv_versions"))?;
                purged += 1;
            }
            let mut meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
            let through = read_meta(&meta, changes::META_PURGED_THROUGH)
                .map_err(self.db_err("read kv_meta"))?;
            meta.insert(changes::META_PURGED_THROUGH, through.max(before_ms))
                .map_err(self.db_err("write kv_meta"))?;
        }
        txn.commit().map_err(self.db_err("commit"))?;
        Ok(purged)
    }

    /// The copy mark `name`, as saved.
    fn copy_mark(&self, name: &str) -> Result<Option<String>, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let marks = txn
            .open_table(changes::COPY_MARKS)
            .map_err(self.db_err("open kv_copy_marks"))?;
        Ok(marks
            .get(name)
            .map_err(self.db_err("read kv_copy_marks"))?
            .map(|g| g.value().to_owned()))
    }

    fn set_copy_mark(&self, name: &str, mark: &str) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        txn.open_table(changes::COPY_MARKS)
            .map_err(self.db_err("open kv_copy_marks"))?
            .insert(name, mark)
            .map_err(self.db_err("write kv_copy_marks"))?;
        txn.commit().map_err(self.db_err("commit"))?;
        Ok(())
    }
}

impl Engine {
    /// Creates table `kv_expiry` (the `ExpiringValues` first-upgrade action).
    pub(super) fn create_expiry_table(&self) -> Result<(), KvError> {
        let txn = self.db.begin_write().map_err(self.db_err("begin write"))?;
        txn.open_table(EXPIRY)
            .map_err(self.db_err("create kv_expiry"))?;
        txn.commit().map_err(self.db_err("commit"))
    }
}

impl Shared {
    fn write(&self, request: &'static str, op: &Op) -> Result<(u64, bool), KvError> {
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write(request)?;
        let began = std::time::Instant::now();
        let result = {
            let _w = self.engine.write_lock.lock();
            self.engine.apply(op)
        };
        // The foreground latency the index migration's latency budget watches (puts).
        if let Some(index) = &self.engine.index {
            index.control.observe_latency(began.elapsed());
        }
        result
    }

    pub(crate) fn put(&self, key: &str, value: &str) -> Result<u64, KvError> {
        check_key(key)?;
        let op = Op::Put {
            key: key.to_owned(),
            value: value.to_owned(),
            expires_at_ms: None,
        };
        Ok(self.write("Put", &op)?.0)
    }

    #[disallowed_until(KvFeature::ExpiringValues)]
    pub(crate) fn put_with_ttl(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<u64, KvError> {
        check_key(key)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let op = Op::Put {
            key: key.to_owned(),
            value: value.to_owned(),
            expires_at_ms: Some(self.engine.clock.now_ms().saturating_add(ttl_ms)),
        };
        Ok(self.write("PutWithTtl", &op)?.0)
    }

    pub(crate) fn delete(&self, key: &str) -> Result<(bool, u64), KvError> {
        check_key(key)?;
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write("Delete")?;
        let _w = self.engine.write_lock.lock();
        // An expired value counts as absent.
        let live = self.engine.get(key)?.is_some();
        let (index, _) = self.engine.apply(&Op::Delete {
            key: key.to_owned(),
        })?;
        Ok((live, index))
    }

    #[disallowed_until(KvFeature::CompareAndSwap)]
    pub(crate) fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<(bool, Option<u64>), KvError> {
        check_key(key)?;
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write("CompareAndSwap")?;
        let _w = self.engine.write_lock.lock();
        let current = self.engine.get(key)?;
        if current.as_ref().map(|e| e.value.as_str()) != expected {
            return Ok((false, None));
        }
        let (index, _) = self.engine.apply(&Op::Put {
            key: key.to_owned(),
            value: new.to_owned(),
            expires_at_ms: None,
        })?;
        Ok((true, Some(index)))
    }
}

impl Shared {
    /// See [`KvStore::stamp`].
    pub(crate) fn stamp(&self, key: &str) -> Result<Option<KvStamp>, KvError> {
        check_key(key)?;
        self.check_read_fence()?;
        self.engine.stamp(key)
    }

    /// See [`KvStore::copy_write`].
    pub(crate) fn copy_write(&self, writes: &[KvCopyWrite]) -> Result<Vec<KvCopyOutcome>, KvError> {
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write("Copy")?;
        let _w = self.engine.write_lock.lock();
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            if let Err(e) = check_key(&w.key) {
                outcomes.push(KvCopyOutcome::Failed {
                    reason: e.to_string(),
                });
                continue;
            }
            if let Some(held) = self.engine.stamp(&w.key)? {
                if held.version >= w.version {
                    outcomes.push(KvCopyOutcome::NotNewer {
                        held_version: held.version,
                    });
                    continue;
                }
            }
            self.engine.apply(&Op::Copy {
                key: w.key.clone(),
                value: w.value.clone(),
                version: w.version,
                updated_ms: w.updated_ms,
            })?;
            outcomes.push(KvCopyOutcome::Written);
        }
        Ok(outcomes)
    }

    /// See [`KvStore::purge_tombstones`].
    pub(crate) fn purge_tombstones(&self, before_ms: u64) -> Result<u64, KvError> {
        self.check_write_fence()?;
        let _permit = self.prepare.begin_write("PurgeTombstones")?;
        let _w = self.engine.write_lock.lock();
        self.engine.purge_tombstones(before_ms)
    }

    /// See [`KvStore::copy_mark`].
    pub(crate) fn copy_mark(&self, name: &str) -> Result<Option<String>, KvError> {
        check_key(name)?;
        self.engine.copy_mark(name)
    }

    /// See [`KvStore::set_copy_mark`].
    pub(crate) fn set_copy_mark(&self, name: &str, mark: &str) -> Result<(), KvError> {
        check_key(name)?;
        self.check_write_fence()?;
        let _w = self.engine.write_lock.lock();
        self.engine.set_copy_mark(name, mark)
    }
}
