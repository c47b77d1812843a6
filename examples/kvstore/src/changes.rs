//! What a side-by-side copy needs of the store: per-key versions and update times,
//! tombstones for deleted keys, and an index of changes in `(updated_ms, key)` order.
//!
//! - Table `kv_versions`: key -> (version, updated ms, deleted). Every write of a key
//!   (put, delete, compare-and-swap, copied write) sets it in the write's transaction. A
//!   version is per key and monotonic: `max(previous + 1, updated_ms * 1000)`, so it
//!   also orders writes of one key made on different stores by time (last writer wins),
//!   and a copied write keeps the version it was copied with.
//! - Table `kv_changes`: (updated ms, key) -> (), one row per key (live or deleted), the
//!   copy cursor's order (`GET /changes`).
//! - A delete of a live key leaves a tombstone (`deleted`) in both tables until
//!   `POST /changes/purge?before_ms=T` removes the tombstones older than `T`; `kv_meta`
//!   then remembers `tombstones_purged_through_ms`, and a change list that starts before
//!   it is refused (a copy resuming from there would miss deletes).
//! - Table `kv_copy_marks`: name -> JSON high-water mark, where a copy *into* this store
//!   keeps its mark.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

/// key -> (version, updated ms, deleted).
pub(crate) const VERSIONS: TableDefinition<'static, &'static [u8], (u64, u64, bool)> =
    TableDefinition::new("kv_versions");
/// (updated ms, key) -> ().
pub(crate) const CHANGES: TableDefinition<'static, (u64, &'static [u8]), ()> =
    TableDefinition::new("kv_changes");
/// copy name -> JSON mark.
pub(crate) const COPY_MARKS: TableDefinition<'static, &'static str, &'static str> =
    TableDefinition::new("kv_copy_marks");
/// `kv_meta` key: the applied index through which `kv_versions` follows `kv`.
pub(crate) const META_CHANGES_SYNCED: &str = "changes_synced_through";
/// `kv_meta` key: tombstones deleted before this time (ms) are purged.
pub(crate) const META_PURGED_THROUGH: &str = "tombstones_purged_through_ms";

/// A key's version and update time, as `kv_versions` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStamp {
    /// The key's version (monotonic per key).
    pub version: u64,
    /// When it was written or deleted (ms since the epoch, on the writing store's clock).
    pub updated_ms: u64,
    /// Whether it is a tombstone.
    pub deleted: bool,
}

/// The next version of a key written at `now_ms` over `previous`.
pub(crate) fn next_version(previous: Option<KvStamp>, now_ms: u64) -> u64 {
    let by_time = now_ms.saturating_mul(1000);
    previous.map_or(by_time, |p| by_time.max(p.version.saturating_add(1)))
}

/// The stamp of `key`, read in a write transaction.
pub(crate) fn stamp_in(txn: &WriteTransaction, key: &[u8]) -> Result<Option<KvStamp>, redb::Error> {
    let versions = txn.open_table(VERSIONS)?;
    let stamp = versions.get(key)?.map(|g| {
        let (version, updated_ms, deleted) = g.value();
        KvStamp {
            version,
            updated_ms,
            deleted,
        }
    });
    Ok(stamp)
}

/// Records `stamp` as the state of `key` in both tables (replacing its change row).
pub(crate) fn record(
    txn: &WriteTransaction,
    key: &[u8],
    previous: Option<KvStamp>,
    stamp: KvStamp,
) -> Result<(), redb::Error> {
    let mut changes = txn.open_table(CHANGES)?;
    if let Some(p) = previous {
        changes.remove((p.updated_ms, key))?;
    }
    changes.insert((stamp.updated_ms, key), ())?;
    let mut versions = txn.open_table(VERSIONS)?;
    versions.insert(key, (stamp.version, stamp.updated_ms, stamp.deleted))?;
    Ok(())
}

/// One change, as `GET /changes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvChange {
    /// The key.
    pub key: String,
    /// Its value; `None` for a tombstone (or an expired value).
    #[serde(default)]
    pub value: Option<String>,
    /// Its version.
    pub version: u64,
    /// When it was written or deleted.
    pub updated_ms: u64,
    /// Whether it is deleted (a tombstone, or an expired value).
    pub deleted: bool,
}

/// Where a change list resumes: after this `(updated_ms, key)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvChangeCursor {
    /// The update time of the last change read.
    pub updated_ms: u64,
    /// Its key.
    pub key: String,
}

/// One page of `GET /changes?since_ms=T&after_ms=M&after_key=K&limit=N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvChangesPage {
    /// The changes, in `(updated_ms, key)` order.
    pub items: Vec<KvChange>,
    /// When more follow: where the next page starts. `None`: the list is complete (a
    /// page never stops early without it).
    #[serde(default)]
    pub next: Option<KvChangeCursor>,
    /// Tombstones deleted before this time are purged (0: none ever was).
    #[serde(default)]
    pub purged_through_ms: u64,
}

/// One entity offered to `POST /copy`: written only if the store holds no version of
/// the key at or above `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCopyWrite {
    /// The key.
    pub key: String,
    /// The value; `None` deletes the key (leaving a tombstone at `version`).
    #[serde(default)]
    pub value: Option<String>,
    /// The version to store.
    pub version: u64,
    /// The update time to store.
    pub updated_ms: u64,
}

/// What `POST /copy` did to one entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum KvCopyOutcome {
    /// Stored.
    Written,
    /// Not stored: the store holds `held_version`, at or above the one offered.
    NotNewer {
        /// The version held.
        held_version: u64,
    },
    /// Refused (a bad key, ...).
    Failed {
        /// Why.
        reason: String,
    },
}
