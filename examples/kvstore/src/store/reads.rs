//! The read path: TTL, pages of keys, the change feed, and lookups by value.

use std::ops::Bound;

use layout_core::disallowed_until;
use redb::{ReadableTable, TableHandle};

use super::db::read_meta;
use super::records::{check_key, check_page, KvEntry, KvItem, KvKeysPage, KvPage};
use super::{Engine, Shared, EXPIRY, KV, MAX_LIST_PAGE_BYTES, META};
use crate::changes::{self, KvChange, KvChangeCursor, KvChangesPage};
use crate::error::KvError;
use crate::feature::KvFeature;
use crate::index::{index_key, INDEX};

impl Engine {
    /// The live value of `key` (expired values are absent), read in `txn`.
    fn read_entry(
        &self,
        txn: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<KvEntry>, KvError> {
        let kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
        let Some(record) = kv
            .get(key.as_bytes())
            .map_err(self.db_err("read kv"))?
            .map(|g| g.value().1.to_vec())
        else {
            return Ok(None);
        };
        let expires_at_ms = self.expiry_of(txn, key)?;
        if expires_at_ms.is_some_and(|at| at <= self.clock.now_ms()) {
            return Ok(None);
        }
        let value = self
            .codecs
            .for_get(&self.lvm)
            .decode(&record)
            .map_err(|reason| KvError::Corrupt {
                key: key.to_owned(),
                reason,
            })?;
        Ok(Some(KvEntry {
            key: key.to_owned(),
            value,
            expires_at_ms,
        }))
    }

    pub(super) fn expiry_of(
        &self,
        txn: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<u64>, KvError> {
        if !self.ttl_on() {
            return Ok(None);
        }
        match txn.open_table(EXPIRY) {
            Ok(t) => Ok(t
                .get(key.as_bytes())
                .map_err(self.db_err("read kv_expiry"))?
                .map(|g| g.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.db_err("open kv_expiry")(e)),
        }
    }

    pub(super) fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        self.read_entry(&txn, key)
    }

    /// One page of the live items whose key starts with `prefix` and sorts after
    /// `after` (from the first such key without it), read in one read transaction by a
    /// range that starts there: at most `limit` rows of `kv` are read, and the page stops
    /// before the item that would take its keys and values over
    /// [`MAX_LIST_PAGE_BYTES`]. `next` is the last key read when a key with the prefix
    /// follows it.
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let kv = txn.open_table(KV).map_err(self.db_err("open kv"))?;
        let expiry = if self.ttl_on() {
            match txn.open_table(EXPIRY) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(self.db_err("open kv_expiry")(e)),
            }
        } else {
            None
        };
        let now = self.clock.now_ms();
        let codec = self.codecs.for_get(&self.lvm);
        let start = match after {
            Some(after) => Bound::Excluded(after.as_bytes()),
            None => Bound::Included(prefix.as_bytes()),
        };
        let mut page = KvPage {
            items: Vec::new(),
            next: None,
        };
        let (mut read, mut bytes) = (0, 0);
        let mut last: Option<String> = None;
        for row in kv
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(self.db_err("range kv"))?
        {
            let (k, v) = row.map_err(self.db_err("read kv"))?;
            let raw_key = k.value();
            if !raw_key.starts_with(prefix.as_bytes()) {
                break;
            }
            if read == limit {
                page.next = last;
                break;
            }
            let key = String::from_utf8_lossy(raw_key).into_owned();
            let expires_at_ms = match &expiry {
                Some(t) => t
                    .get(raw_key)
                    .map_err(self.db_err("read kv_expiry"))?
                    .map(|g| g.value()),
                None => None,
            };
            if expires_at_ms.is_none_or(|at| at > now) {
                let value = codec
                    .decode(v.value().1)
                    .map_err(|reason| KvError::Corrupt {
                        key: key.clone(),
                        reason,
                    })?;
                let size = key.len() + value.len();
                if !page.items.is_empty() && bytes + size > MAX_LIST_PAGE_BYTES {
                    page.next = last;
                    break;
                }
                bytes += size;
                page.items.push(KvItem {
                    key: key.clone(),
                    value,
                });
            }
            read += 1;
            last = Some(key);
        }
        Ok(page)
    }

    /// One page of changes (live keys and tombstones) in `(updated_ms, key)` order from
    /// `since_ms` (inclusive), after `after`, at most `limit` rows and about
    /// [`MAX_LIST_PAGE_BYTES`], read in one read transaction; `next` whenever more follow.
    fn changes_page(
        &self,
        since_ms: u64,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<KvChangesPage, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let meta = txn.open_table(META).map_err(self.db_err("open kv_meta"))?;
        let purged_through_ms =
            read_meta(&meta, changes::META_PURGED_THROUGH).map_err(self.db_err("read kv_meta"))?;
        let start_ms = after.map_or(since_ms, |(ms, _)| ms);
        if start_ms > 0 && start_ms < purged_through_ms {
            return Err(KvError::BadRequest(format!(
                "changes from {start_ms} ms on are incomplete: tombstones deleted before                  {purged_through_ms} ms were purged; a copy resuming from there would miss                  deletes (copy into an empty destination from the start)"
            )));
        }
        let mut page = KvChangesPage {
            items: Vec::new(),
            next: None,
            purged_through_ms,
        };
        let table = txn
            .open_table(changes::CHANGES)
            .map_err(self.db_err("open kv_changes"))?;
        let versions = txn
            .open_table(changes::VERSIONS)
            .map_err(self.db_err("open kv_versions"))?;
        let start = match after {
            Some((ms, key)) => Bound::Excluded((ms, key.as_bytes())),
            None => Bound::Included((since_ms, &b""[..])),
        };
        let (mut read, mut bytes) = (0, 0);
        let mut last: Option<KvChangeCursor> = None;
        for row in table
            .range::<(u64, &[u8])>((start, Bound::Unbounded))
            .map_err(self.db_err("range kv_changes"))?
        {
            let (k, _) = row.map_err(self.db_err("read kv_changes"))?;
            let (updated_ms, raw_key) = k.value();
            if read == limit {
                page.next = last;
                break;
            }
            let key = String::from_utf8_lossy(raw_key).into_owned();
            let (version, _, deleted) = versions
                .get(raw_key)
                .map_err(self.db_err("read kv_versions"))?
                .map(|g| g.value())
                .ok_or_else(|| KvError::Corrupt {
                    key: key.clone(),
                    reason: "a change without a version".into(),
                })?;
            let value = if deleted {
                None
            } else {
                self.read_entry(&txn, &key)?.map(|e| e.value)
            };
            let size = key.len() + value.as_ref().map_or(0, String::len);
            if !page.items.is_empty() && bytes + size > MAX_LIST_PAGE_BYTES {
                page.next = last;
                break;
            }
            bytes += size;
            page.items.push(KvChange {
                deleted: value.is_none(),
                key: key.clone(),
                value,
                version,
                updated_ms,
            });
            read += 1;
            last = Some(KvChangeCursor { updated_ms, key });
        }
        Ok(page)
    }
}

impl Engine {
    /// One page of the live keys holding `value` that sort after `after`, read from the
    /// index by a range that starts there; bounded as [`Engine::list_page`] is (by the
    /// keys' bytes).
    fn find_by_value_page(
        &self,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvKeysPage, KvError> {
        let mut page = KvKeysPage {
            keys: Vec::new(),
            next: None,
        };
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let idx = match txn.open_table(INDEX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(page),
            Err(e) => return Err(self.db_err("open index")(e)),
        };
        let prefix = index_key(value, "");
        let cursor = after.map(|after| index_key(value, after));
        let start = match &cursor {
            Some(cursor) => Bound::Excluded(cursor.as_slice()),
            None => Bound::Included(prefix.as_slice()),
        };
        let (mut read, mut bytes) = (0, 0);
        let mut last: Option<String> = None;
        for row in idx
            .range::<&[u8]>((start, Bound::Unbounded))
            .map_err(self.db_err("range index"))?
        {
            let (k, _) = row.map_err(self.db_err("read index"))?;
            let Some(key) = k.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            if read == limit {
                page.next = last;
                break;
            }
            let key = String::from_utf8_lossy(key).into_owned();
            if self.read_entry(&txn, &key)?.is_some() {
                if !page.keys.is_empty() && bytes + key.len() > MAX_LIST_PAGE_BYTES {
                    page.next = last;
                    break;
                }
                bytes += key.len();
                page.keys.push(key.clone());
            }
            read += 1;
            last = Some(key);
        }
        Ok(page)
    }

    pub(super) fn index_entries(&self) -> Result<Vec<(String, String)>, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let idx = match txn.open_table(INDEX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.db_err("open index")(e)),
        };
        let mut entries = Vec::new();
        for item in idx.iter().map_err(self.db_err("iterate index"))? {
            let (k, _) = item.map_err(self.db_err("read index"))?;
            let entry = k.value();
            let corrupt = || KvError::Corrupt {
                key: String::from_utf8_lossy(entry).into_owned(),
                reason: "malformed value-index entry".to_owned(),
            };
            let (len, rest) = entry.split_first_chunk::<4>().ok_or_else(corrupt)?;
            let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
            if rest.len() < len {
                return Err(corrupt());
            }
            let (value, key) = rest.split_at(len);
            entries.push((
                String::from_utf8_lossy(value).into_owned(),
                String::from_utf8_lossy(key).into_owned(),
            ));
        }
        Ok(entries)
    }
}

impl Engine {
    pub(super) fn has_table(&self, name: &str) -> Result<bool, KvError> {
        let txn = self.db.begin_read().map_err(self.db_err("begin read"))?;
        let tables = txn.list_tables().map_err(self.db_err("list tables"))?;
        let found = tables.into_iter().any(|t| t.name() == name);
        Ok(found)
    }
}

impl Shared {
    pub(crate) fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        check_key(key)?;
        self.check_read_fence()?;
        self.engine.get(key)
    }

    /// See [`KvStore::list_page`].
    pub(crate) fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvPage, KvError> {
        check_page(after, limit)?;
        self.check_read_fence()?;
        if let Some(after) = after {
            if !after.starts_with(prefix) {
                return Err(KvError::BadRequest(format!(
                    "the cursor after={after:?} does not start with the prefix {prefix:?}; \
                     pass the `next` of the previous page of the same list"
                )));
            }
        }
        self.engine.list_page(prefix, after, limit)
    }

    /// See [`KvStore::find_by_value_page`].
    #[disallowed_until(KvFeature::ValueIndex)]
    pub(crate) fn find_by_value_page(
        &self,
        value: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KvKeysPage, KvError> {
        check_page(after, limit)?;
        self.check_read_fence()?;
        self.engine.find_by_value_page(value, after, limit)
    }

    /// See [`KvStore::changes_page`].
    pub(crate) fn changes_page(
        &self,
        since_ms: u64,
        after: Option<(u64, &str)>,
        limit: usize,
    ) -> Result<KvChangesPage, KvError> {
        check_page(after.map(|(_, k)| k), limit)?;
        self.check_read_fence()?;
        self.engine.changes_page(since_ms, after, limit)
    }
}
