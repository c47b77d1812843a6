//! The embedded cluster store: in-process, persisted to one redb database file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read as _};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition, TableError,
    WriteTransaction,
};
use serde::Deserialize;

use super::{ClusterStore, FinalizerClaim, StoreCasOutcome, StoreError, Versioned};
use crate::cluster::state::{
    upgrade_kind_document, AuditEntry, KindRecord, KindState, MemberRecord, MoveRecord,
    AUDIT_RETENTION, CLUSTER_STATE_FORMAT,
};
use crate::durable;

/// The header line of the format-1 file (one checksummed JSON document).
const HEADER: &str = "layout-cluster-state";

/// The first bytes of every redb database file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// kind -> (revision, [`KindRecord`] JSON).
const KINDS: TableDefinition<'_, &str, (u64, &[u8])> = TableDefinition::new("cluster_kinds");
/// (kind, member id) -> (revision, [`MemberRecord`] JSON).
const MEMBERS: TableDefinition<'_, (&str, &str), (u64, &[u8])> =
    TableDefinition::new("cluster_members");
/// (kind, sequence) -> [`AuditEntry`] JSON.
const AUDIT: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("cluster_audit");
/// [`META_REVISION`], [`META_FORMAT`].
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("cluster_meta");
/// The store's move record (key [`MOVE_KEY`]): revision and JSON.
const MOVE: TableDefinition<'_, &str, (u64, &[u8])> = TableDefinition::new("cluster_move");
/// The one key of [`MOVE`].
const MOVE_KEY: &str = "move";
/// The store-wide revision counter: the last revision handed out.
const META_REVISION: &str = "revision";
/// The [`CLUSTER_STATE_FORMAT`] of the release that created the database.
const META_FORMAT: &str = "format";

/// The default cluster store: state held in a [redb](https://docs.rs/redb) database in
/// this process, in memory ([`in_memory`](Self::in_memory)) or persisted to one file
/// ([`open`](Self::open)). Every change is one redb transaction, durable when it returns.
///
/// Each kind's state is kept as separate records (see [`KindRecord`](crate::cluster::KindRecord)): one
/// table of [`KindRecord`]s, one of [`MemberRecord`]s keyed by (kind, member id), one of
/// audit entries keyed by (kind, sequence). Every record carries the revision of the
/// transaction that wrote it, from one store-wide counter (like etcd's revision), so a
/// member's registration rewrites that member's record and nothing else, and revisions
/// are never reused.
///
/// One process owns the file (an exclusive lock on `<file>.lock`, held while the store
/// lives); the finalizer claim lives in memory only (it dies with the process). For
/// several coordinator processes or machines, use the etcd store (feature `etcd`).
///
/// A file written by the first release (format 1: one checksummed JSON document, header
/// line `layout-cluster-state`) is migrated when opened: every kind is converted with
/// the first release's document migrated forward, written to a new database next to it (`<file>.migrating`),
/// the old file is kept as `<file>.format-1`, and the new database is renamed over
/// `<file>`; a crash at any point leaves either the old file or the new database there.
/// A damaged file (a checksum mismatch, a truncated or foreign database) is reported as
/// [`StoreError::Damaged`] and left untouched.
///
/// ```
/// use layout_core::cluster::{KindRecord, MemberRecord, MemberRole};
/// use layout_core::cluster::{StoreCasOutcome, ClusterStore, EmbeddedStore};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("cluster-state");
/// let store = EmbeddedStore::open(&path)?;
/// let StoreCasOutcome::Swapped { revision } =
///     store.swap_kind("datanode", None, &KindRecord::new("datanode", 3))?
/// else {
///     unreachable!("a new store holds no kind")
/// };
/// let member = MemberRecord {
///     role: MemberRole::Member,
///     incarnation: "boot-1".to_owned(),
///     software_layout_version: 3,
///     metadata_layout_version: 3,
///     first_registered_at_ms: 1_000,
///     last_registered_at_ms: 1_000,
///     excluded: None,
/// };
/// // A member is written alone, guarded by its own revision and the kind record's.
/// store.swap_member("datanode", "dn1", None, revision, &member)?;
/// drop(store);
///
/// let store = EmbeddedStore::open(&path)?; // a coordinator restart reads it back
/// let state = store.load_state("datanode")?.expect("stored");
/// assert_eq!(state.cluster_layout_version, 3);
/// assert_eq!(state.members["dn1"], member);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct EmbeddedStore {
    db: Database,
    location: String,
    file: Option<StoreFile>,
    /// kind -> holder.
    finalizers: Mutex<HashMap<String, String>>,
}

#[derive(Debug)]
struct StoreFile {
    path: PathBuf,
    /// Held open (and locked) for the store's lifetime.
    _lock: fs::File,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// A store kept in memory only (tests, single-process tools), on redb's in-memory
    /// backend.
    ///
    /// # Panics
    ///
    /// If redb cannot set up an in-memory database (out of memory).
    pub fn in_memory() -> Self {
        let location = "embedded (in memory)".to_owned();
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory redb database needs no I/O");
        let store = Self::with_database(db, location, None);
        store
            .initialize()
            .expect("initializing an in-memory redb database needs no I/O");
        store
    }

    /// Opens the store persisted at `path`, taking its lock (`<file>.lock`); the database
    /// is created on first use (atomically: built next to it, then renamed into place). A
    /// format-1 file (the first release's) is migrated; see the [type docs](Self).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let location = path.display().to_string();
        let io_err = |operation, source| StoreError::Io {
            location: location.clone(),
            operation,
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io_err("create directory", e))?;
        }
        let lock_path = sibling(&path, ".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("open lock file", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { location });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", e)),
        }
        // A database left half-built by a crash (first creation or migration): the file at
        // `path` was never replaced, so it is garbage. `.migrating` is the temporary
        // database of earlier releases.
        for temp in durable::remove_leftover_temp_files(&path)
            .map_err(|e| io_err("remove stale temporary database", e.into_io_error()))?
        {
            tracing::info!(
                path = %temp.display(),
                "cluster store: removed a database left half-built by a crash"
            );
        }
        let migrating = sibling(&path, ".migrating");
        match fs::remove_file(&migrating) {
            Ok(()) => tracing::info!(
                path = %migrating.display(),
                "cluster store: removed a database left half-built by a crash"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove stale temporary database", e)),
        }
        let mut prefix = Vec::new();
        match fs::File::open(&path) {
            Ok(file) => {
                file.take(REDB_MAGIC.len().max(HEADER.len()) as u64)
                    .read_to_end(&mut prefix)
                    .map_err(|e| io_err("read", e))?;
                if prefix.starts_with(HEADER.as_bytes()) {
                    migrate_format_1(&path, &location)?;
                } else if prefix.is_empty() {
                    return Err(StoreError::Damaged {
                        location,
                        problem: "the file is empty".to_owned(),
                    });
                } else if !prefix.starts_with(&REDB_MAGIC) {
                    return Err(StoreError::Damaged {
                        location,
                        problem: "the file is neither a cluster state database (redb) nor a \
                                  format-1 cluster state file"
                            .to_owned(),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                build_database(&path, &location, &[])?;
            }
            Err(e) => return Err(io_err("open", e)),
        }
        let db = open_database(&path, &location)?;
        check_meta(&db, &location)?;
        Ok(Self::with_database(
            db,
            location,
            Some(StoreFile { path, _lock: lock }),
        ))
    }

    /// The file the state is persisted to (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    fn with_database(db: Database, location: String, file: Option<StoreFile>) -> Self {
        Self {
            db,
            location,
            file,
            finalizers: Mutex::new(HashMap::new()),
        }
    }

    /// Creates the tables and records the format (a new database).
    fn initialize(&self) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut meta = txn.open_table(META).on(&self.location, "create tables")?;
            meta.insert(META_FORMAT, u64::from(CLUSTER_STATE_FORMAT))
                .on(&self.location, "create tables")?;
            meta.insert(META_REVISION, 0)
                .on(&self.location, "create tables")?;
            txn.open_table(KINDS).on(&self.location, "create tables")?;
            txn.open_table(MEMBERS)
                .on(&self.location, "create tables")?;
            txn.open_table(AUDIT).on(&self.location, "create tables")?;
        }
        txn.commit().on(&self.location, "create tables")
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().on(&self.location, "begin read")
    }

    fn write(&self) -> Result<WriteTransaction, StoreError> {
        self.db.begin_write().on(&self.location, "begin write")
    }

    fn damaged(&self, problem: String) -> StoreError {
        StoreError::Damaged {
            location: self.location.clone(),
            problem,
        }
    }

    fn unsupported(&self, found: u64) -> StoreError {
        StoreError::UnsupportedFormat {
            location: self.location.clone(),
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: CLUSTER_STATE_FORMAT,
        }
    }

    fn encode<T: serde::Serialize>(&self, value: &T) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(value).map_err(|e| StoreError::Io {
            location: self.location.clone(),
            operation: "encode",
            source: io::Error::other(e),
        })
    }

    fn decode_kind(&self, kind: &str, bytes: &[u8]) -> Result<KindRecord, StoreError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| self.damaged(format!("the record of kind {kind} is not JSON: {e}")))?;
        if let Some(format) = value
            .get("format")
            .and_then(serde_json::Value::as_u64)
            .filter(|f| *f > u64::from(CLUSTER_STATE_FORMAT))
        {
            return Err(self.unsupported(format));
        }
        serde_json::from_value(value)
            .map_err(|e| self.damaged(format!("the record of kind {kind} is unreadable: {e}")))
    }

    fn decode_member(
        &self,
        kind: &str,
        member: &str,
        bytes: &[u8],
    ) -> Result<MemberRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| {
            self.damaged(format!(
                "the record of member {member} of kind {kind} is unreadable: {e}"
            ))
        })
    }

    fn decode_audit(&self, kind: &str, seq: u64, bytes: &[u8]) -> Result<AuditEntry, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| {
            self.damaged(format!(
                "audit entry {seq} of kind {kind} is unreadable: {e}"
            ))
        })
    }

    /// Stores `bytes` under `key` of `table` with a fresh revision if the stored
    /// revision is `expected` (`None`: absent), in one transaction.
    fn swap_record(
        &self,
        table: TableDefinition<'_, &str, (u64, &[u8])>,
        key: &str,
        expected: Option<u64>,
        bytes: &[u8],
        op: &'static str,
    ) -> Result<StoreCasOutcome, StoreError> {
        let txn = self.write()?;
        let revision = {
            let mut records = txn.open_table(table).on(&self.location, op)?;
            let current = records
                .get(key)
                .on(&self.location, op)?
                .map(|g| g.value().0);
            if current != expected {
                return Ok(StoreCasOutcome::Conflict);
            }
            let mut meta = txn.open_table(META).on(&self.location, op)?;
            let revision = next_revision(&mut meta).on(&self.location, op)?;
            records
                .insert(key, (revision, bytes))
                .on(&self.location, op)?;
            revision
        };
        txn.commit().on(&self.location, op)?;
        Ok(StoreCasOutcome::Swapped { revision })
    }

    fn read_kind(
        &self,
        txn: &ReadTransaction,
        kind: &str,
    ) -> Result<Option<Versioned<KindRecord>>, StoreError> {
        let Some(table) = existing(txn.open_table(KINDS)).on(&self.location, "read")? else {
            return Ok(None);
        };
        let Some(guard) = table.get(kind).on(&self.location, "read")? else {
            return Ok(None);
        };
        let (revision, bytes) = guard.value();
        Ok(Some(Versioned {
            revision,
            value: self.decode_kind(kind, bytes)?,
        }))
    }

    fn read_members(
        &self,
        txn: &ReadTransaction,
        kind: &str,
    ) -> Result<Vec<(String, Versioned<MemberRecord>)>, StoreError> {
        let Some(table) = existing(txn.open_table(MEMBERS)).on(&self.location, "read")? else {
            return Ok(Vec::new());
        };
        let mut members = Vec::new();
        for row in table.range((kind, "")..).on(&self.location, "read")? {
            let (key, value) = row.on(&self.location, "read")?;
            let (row_kind, member) = key.value();
            if row_kind != kind {
                break;
            }
            let (revision, bytes) = value.value();
            members.push((
                member.to_owned(),
                Versioned {
                    revision,
                    value: self.decode_member(kind, member, bytes)?,
                },
            ));
        }
        Ok(members)
    }

    fn read_audit(&self, txn: &ReadTransaction, kind: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let Some(table) = existing(txn.open_table(AUDIT)).on(&self.location, "read")? else {
            return Ok(Vec::new());
        };
        let mut audit = Vec::new();
        for row in table
            .range((kind, 0)..=(kind, u64::MAX))
            .on(&self.location, "read")?
        {
            let (key, value) = row.on(&self.location, "read")?;
            audit.push(self.decode_audit(kind, key.value().1, value.value())?);
        }
        Ok(audit)
    }

    /// Replaces everything stored for `kind` with `state`, in `txn`.
    fn import_in(
        &self,
        txn: &WriteTransaction,
        kind: &str,
        state: &KindState,
    ) -> Result<(), StoreError> {
        let op = "import";
        let mut meta = txn.open_table(META).on(&self.location, op)?;
        let mut kinds = txn.open_table(KINDS).on(&self.location, op)?;
        let mut members = txn.open_table(MEMBERS).on(&self.location, op)?;
        let mut audit = txn.open_table(AUDIT).on(&self.location, op)?;
        let record = self.encode(&state.record())?;
        let revision = next_revision(&mut meta).on(&self.location, op)?;
        kinds
            .insert(kind, (revision, record.as_slice()))
            .on(&self.location, op)?;
        let gone: Vec<String> = member_keys(&members, kind).on(&self.location, op)?;
        for member in &gone {
            members
                .remove((kind, member.as_str()))
                .on(&self.location, op)?;
        }
        for (member, record) in &state.members {
            let bytes = self.encode(record)?;
            let revision = next_revision(&mut meta).on(&self.location, op)?;
            members
                .insert((kind, member.as_str()), (revision, bytes.as_slice()))
                .on(&self.location, op)?;
        }
        let dropped: Vec<u64> = audit_keys(&audit, kind).on(&self.location, op)?;
        for seq in dropped {
            audit.remove((kind, seq)).on(&self.location, op)?;
        }
        let keep = state.audit.len().saturating_sub(AUDIT_RETENTION);
        for (seq, entry) in (0u64..).zip(&state.audit[keep..]) {
            let bytes = self.encode(entry)?;
            audit
                .insert((kind, seq), bytes.as_slice())
                .on(&self.location, op)?;
        }
        Ok(())
    }
}

impl ClusterStore for EmbeddedStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn kinds(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.read()?;
        let Some(table) = existing(txn.open_table(KINDS)).on(&self.location, "read")? else {
            return Ok(Vec::new());
        };
        let mut kinds = Vec::new();
        for row in table.iter().on(&self.location, "read")? {
            let (key, _) = row.on(&self.location, "read")?;
            kinds.push(key.value().to_owned());
        }
        Ok(kinds)
    }

    fn load_kind(&self, kind: &str) -> Result<Option<Versioned<KindRecord>>, StoreError> {
        self.read_kind(&self.read()?, kind)
    }

    fn swap_kind(
        &self,
        kind: &str,
        expected: Option<u64>,
        record: &KindRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let bytes = self.encode(record)?;
        self.swap_record(KINDS, kind, expected, &bytes, "swap kind")
    }

    fn load_member(
        &self,
        kind: &str,
        member: &str,
    ) -> Result<Option<Versioned<MemberRecord>>, StoreError> {
        let txn = self.read()?;
        let Some(table) = existing(txn.open_table(MEMBERS)).on(&self.location, "read")? else {
            return Ok(None);
        };
        let Some(guard) = table.get((kind, member)).on(&self.location, "read")? else {
            return Ok(None);
        };
        let (revision, bytes) = guard.value();
        Ok(Some(Versioned {
            revision,
            value: self.decode_member(kind, member, bytes)?,
        }))
    }

    fn members(&self, kind: &str) -> Result<Vec<(String, Versioned<MemberRecord>)>, StoreError> {
        self.read_members(&self.read()?, kind)
    }

    fn swap_member(
        &self,
        kind: &str,
        member: &str,
        expected: Option<u64>,
        kind_revision: u64,
        record: &MemberRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let bytes = self.encode(record)?;
        let op = "swap member";
        let txn = self.write()?;
        let revision = {
            let kinds = txn.open_table(KINDS).on(&self.location, op)?;
            let current_kind = kinds.get(kind).on(&self.location, op)?.map(|g| g.value().0);
            if current_kind != Some(kind_revision) {
                return Ok(StoreCasOutcome::Conflict);
            }
            let mut members = txn.open_table(MEMBERS).on(&self.location, op)?;
            let current = members
                .get((kind, member))
                .on(&self.location, op)?
                .map(|g| g.value().0);
            if current != expected {
                return Ok(StoreCasOutcome::Conflict);
            }
            let mut meta = txn.open_table(META).on(&self.location, op)?;
            let revision = next_revision(&mut meta).on(&self.location, op)?;
            members
                .insert((kind, member), (revision, bytes.as_slice()))
                .on(&self.location, op)?;
            revision
        };
        txn.commit().on(&self.location, op)?;
        Ok(StoreCasOutcome::Swapped { revision })
    }

    fn append_audit(&self, kind: &str, entry: &AuditEntry) -> Result<(), StoreError> {
        let bytes = self.encode(entry)?;
        let op = "append audit";
        let txn = self.write()?;
        {
            let mut meta = txn.open_table(META).on(&self.location, op)?;
            next_revision(&mut meta).on(&self.location, op)?;
            let mut audit = txn.open_table(AUDIT).on(&self.location, op)?;
            let mut keys = audit_keys(&audit, kind).on(&self.location, op)?;
            let seq = keys.last().map_or(0, |last| last + 1);
            audit
                .insert((kind, seq), bytes.as_slice())
                .on(&self.location, op)?;
            keys.push(seq);
            let excess = keys.len().saturating_sub(AUDIT_RETENTION);
            for seq in &keys[..excess] {
                audit.remove((kind, *seq)).on(&self.location, op)?;
            }
        }
        txn.commit().on(&self.location, op)
    }

    fn audit(&self, kind: &str) -> Result<Vec<AuditEntry>, StoreError> {
        self.read_audit(&self.read()?, kind)
    }

    fn import(&self, kind: &str, state: &KindState) -> Result<(), StoreError> {
        let txn = self.write()?;
        self.import_in(&txn, kind, state)?;
        txn.commit().on(&self.location, "import")
    }

    fn claim_finalizer(
        &self,
        kind: &str,
        holder: &str,
        _ttl: Duration,
    ) -> Result<FinalizerClaim, StoreError> {
        // In one process the claim needs no lease: it dies with the process.
        let mut finalizers = self.finalizers.lock();
        match finalizers.get(kind) {
            Some(current) if current != holder => Ok(FinalizerClaim::HeldBy {
                holder: current.clone(),
            }),
            _ => {
                finalizers.insert(kind.to_owned(), holder.to_owned());
                Ok(FinalizerClaim::Claimed)
            }
        }
    }

    fn release_finalizer(&self, kind: &str, holder: &str) -> Result<(), StoreError> {
        let mut finalizers = self.finalizers.lock();
        if finalizers.get(kind).is_some_and(|h| h == holder) {
            finalizers.remove(kind);
        }
        Ok(())
    }

    fn remove_kind(&self, kind: &str) -> Result<(), StoreError> {
        let op = "remove kind";
        let txn = self.write()?;
        {
            let mut kinds = txn.open_table(KINDS).on(&self.location, op)?;
            let mut members = txn.open_table(MEMBERS).on(&self.location, op)?;
            let mut audit = txn.open_table(AUDIT).on(&self.location, op)?;
            kinds.remove(kind).on(&self.location, op)?;
            let gone: Vec<String> = member_keys(&members, kind).on(&self.location, op)?;
            for member in &gone {
                members
                    .remove((kind, member.as_str()))
                    .on(&self.location, op)?;
            }
            let dropped: Vec<u64> = audit_keys(&audit, kind).on(&self.location, op)?;
            for seq in dropped {
                audit.remove((kind, seq)).on(&self.location, op)?;
            }
        }
        txn.commit().on(&self.location, op)
    }

    fn load_move(&self) -> Result<Option<Versioned<MoveRecord>>, StoreError> {
        let txn = self.read()?;
        let Some(table) = existing(txn.open_table(MOVE)).on(&self.location, "read")? else {
            return Ok(None);
        };
        let Some(guard) = table.get(MOVE_KEY).on(&self.location, "read")? else {
            return Ok(None);
        };
        let (revision, bytes) = guard.value();
        let value = serde_json::from_slice(bytes)
            .map_err(|e| self.damaged(format!("the move record is unreadable: {e}")))?;
        Ok(Some(Versioned { revision, value }))
    }

    fn swap_move(
        &self,
        expected: Option<u64>,
        record: &MoveRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let bytes = self.encode(record)?;
        self.swap_record(MOVE, MOVE_KEY, expected, &bytes, "swap move record")
    }

    /// One read transaction: a consistent snapshot.
    fn load_state(&self, kind: &str) -> Result<Option<KindState>, StoreError> {
        let txn = self.read()?;
        let Some(record) = self.read_kind(&txn, kind)? else {
            return Ok(None);
        };
        let members = self
            .read_members(&txn, kind)?
            .into_iter()
            .map(|(id, m)| (id, m.value))
            .collect();
        Ok(Some(KindState::from_parts(
            record.value,
            members,
            self.read_audit(&txn, kind)?,
        )))
    }
}

/// Bumps the store-wide revision counter; the new revision.
fn next_revision(meta: &mut Table<'_, &str, u64>) -> Result<u64, redb::StorageError> {
    let revision = meta.get(META_REVISION)?.map_or(0, |g| g.value()) + 1;
    meta.insert(META_REVISION, revision)?;
    Ok(revision)
}

/// The member ids of `kind`, sorted.
fn member_keys<T: ReadableTable<(&'static str, &'static str), (u64, &'static [u8])>>(
    table: &T,
    kind: &str,
) -> Result<Vec<String>, redb::StorageError> {
    let mut keys = Vec::new();
    for row in table.range((kind, "")..)? {
        let (key, _) = row?;
        let (row_kind, member) = key.value();
        if row_kind != kind {
            break;
        }
        keys.push(member.to_owned());
    }
    Ok(keys)
}

/// The audit sequence numbers of `kind`, oldest first.
fn audit_keys<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    table: &T,
    kind: &str,
) -> Result<Vec<u64>, redb::StorageError> {
    let mut keys = Vec::new();
    for row in table.range((kind, 0)..=(kind, u64::MAX))? {
        keys.push(row?.0.value().1);
    }
    Ok(keys)
}

/// `Ok(None)` for a table not created yet.
fn existing<T>(opened: Result<T, TableError>) -> Result<Option<T>, TableError> {
    match opened {
        Ok(table) => Ok(Some(table)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Maps redb's errors to [`StoreError`]s naming the store.
trait OrStoreError<T> {
    fn on(self, location: &str, operation: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrStoreError<T> for Result<T, E> {
    fn on(self, location: &str, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| storage_error(location, operation, e.into()))
    }
}

fn storage_error(location: &str, operation: &'static str, error: redb::Error) -> StoreError {
    match error {
        redb::Error::Io(source) => StoreError::Io {
            location: location.to_owned(),
            operation,
            source,
        },
        redb::Error::Corrupted(problem) => StoreError::Damaged {
            location: location.to_owned(),
            problem,
        },
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked {
            location: location.to_owned(),
        },
        other => StoreError::Backend {
            location: location.to_owned(),
            operation,
            message: other.to_string(),
        },
    }
}

/// `<file><suffix>`, next to `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// Opens the existing database at `path`. It is checked read-only first (a database
/// that is damaged, foreign or of a newer format is refused before anything is written
/// to it), then opened for writing (which repairs it after a crash, if needed).
fn open_database(path: &Path, location: &str) -> Result<Database, StoreError> {
    match guarded_open(location, || redb::Builder::new().open_read_only(path)) {
        Ok(db) => check_meta(&db, location)?,
        // Not shut down cleanly (a crash): only a writer can repair it.
        Err(Some(redb::DatabaseError::RepairAborted)) => {}
        Err(Some(e)) => return Err(open_error(location, e)),
        Err(None) => return Err(truncated(location, "read-only")),
    }
    guarded_open(location, || redb::Builder::new().open(path)).map_err(|e| match e {
        Some(e) => open_error(location, e),
        None => truncated(location, "read-write"),
    })
}

/// Runs a redb open. redb panics on some truncated files instead of returning an error
/// (checking the file before it writes to it, so it is left untouched): the panic is
/// caught (`Err(None)`, logged).
fn guarded_open<T>(
    location: &str,
    open: impl FnOnce() -> Result<T, redb::DatabaseError>,
) -> Result<T, Option<redb::DatabaseError>> {
    match panic::catch_unwind(AssertUnwindSafe(open)) {
        Ok(result) => result.map_err(Some),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".to_owned());
            tracing::error!(location, %message, "cluster store: redb panicked opening the database");
            Err(None)
        }
    }
}

fn truncated(location: &str, how: &str) -> StoreError {
    StoreError::Damaged {
        location: location.to_owned(),
        problem: format!(
            "the database is truncated or corrupt (redb refused to open it {how}; see the log)"
        ),
    }
}

fn open_error(location: &str, error: redb::DatabaseError) -> StoreError {
    match error {
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
            ) =>
        {
            StoreError::Damaged {
                location: location.to_owned(),
                problem: format!("not a readable database (truncated?): {e}"),
            }
        }
        e => storage_error(location, "open database", e.into()),
    }
}

/// Refuses a database of a newer format, or one that is not a cluster state database.
fn check_meta(db: &impl ReadableDatabase, location: &str) -> Result<(), StoreError> {
    let txn = db.begin_read().on(location, "begin read")?;
    let format = match txn.open_table(META) {
        Ok(meta) => meta
            .get(META_FORMAT)
            .on(location, "read")?
            .map(|g| g.value()),
        Err(TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(storage_error(location, "read", e.into())),
    };
    let Some(format) = format else {
        return Err(StoreError::Damaged {
            location: location.to_owned(),
            problem: "the database holds no cluster state format (not a cluster state database)"
                .to_owned(),
        });
    };
    if format > u64::from(CLUSTER_STATE_FORMAT) {
        return Err(StoreError::UnsupportedFormat {
            location: location.to_owned(),
            found: u32::try_from(format).unwrap_or(u32::MAX),
            supported: CLUSTER_STATE_FORMAT,
        });
    }
    Ok(())
}

/// Builds a new database holding `kinds` in a temporary file and puts it in place of
/// `path` with [`durable::replace_with`] (fsynced, renamed over `path`, the directory
/// fsynced): `path` holds either what it held or the whole new database.
fn build_database(
    path: &Path,
    location: &str,
    kinds: &[(String, KindState)],
) -> Result<(), StoreError> {
    let built = durable::replace_with(path, |file: &mut fs::File| -> Result<(), StoreError> {
        let file = file
            .try_clone()
            .map_err(|e| io_error(location, "create database", e))?;
        let db = redb::Builder::new()
            .create_file(file)
            .map_err(|e| storage_error(location, "create database", e.into()))?;
        let store = EmbeddedStore::with_database(db, format!("{location} (new)"), None);
        store.initialize()?;
        let txn = store.write()?;
        for (kind, state) in kinds {
            store.import_in(&txn, kind, state)?;
        }
        txn.commit().on(&store.location, "import")?;
        Ok(())
    });
    match built {
        Ok(_) => Ok(()),
        Err(durable::ReplaceError::Write(e)) => Err(e),
        Err(durable::ReplaceError::Durable(e)) => Err(StoreError::Io {
            location: location.to_owned(),
            operation: e.step().as_str(),
            source: e.into_io_error(),
        }),
    }
}

fn io_error(location: &str, operation: &'static str, source: io::Error) -> StoreError {
    StoreError::Io {
        location: location.to_owned(),
        operation,
        source,
    }
}

/// Migrates the format-1 file at `path` (one checksummed document) to a database: decodes
/// it (refusing damage), upgrades every kind, keeps the old file as `<file>.format-1`, and
/// puts a new database in place of `path`.
fn migrate_format_1(path: &Path, location: &str) -> Result<(), StoreError> {
    let io_err = |operation, source| StoreError::Io {
        location: location.to_owned(),
        operation,
        source,
    };
    let bytes = fs::read(path).map_err(|e| io_err("read", e))?;
    let documents = decode(&bytes, location)?;
    let mut kinds = Vec::with_capacity(documents.len());
    for (kind, stored) in documents {
        if let Some(format) = stored
            .state
            .get("format")
            .and_then(serde_json::Value::as_u64)
            .filter(|f| *f > u64::from(CLUSTER_STATE_FORMAT))
        {
            return Err(StoreError::UnsupportedFormat {
                location: location.to_owned(),
                found: u32::try_from(format).unwrap_or(u32::MAX),
                supported: CLUSTER_STATE_FORMAT,
            });
        }
        let state = upgrade_kind_document(stored.state).map_err(|e| StoreError::Damaged {
            location: location.to_owned(),
            problem: format!("the state of kind {kind} cannot be migrated: {e}"),
        })?;
        kinds.push((kind, state));
    }
    // Keep the old file (a durable copy) before it is replaced.
    let backup = backup_path(path, &bytes);
    if !backup.exists() {
        durable::replace(&backup, &bytes).map_err(|e| StoreError::Io {
            location: location.to_owned(),
            operation: "keep the format-1 file",
            source: e.into_io_error(),
        })?;
    }
    build_database(path, location, &kinds)?;
    tracing::info!(
        path = %path.display(),
        kinds = kinds.len(),
        kept = %backup.display(),
        from = 1,
        to = CLUSTER_STATE_FORMAT,
        "cluster store migrated to the record format; the old file was kept"
    );
    Ok(())
}

/// Where the format-1 file is kept: `<file>.format-1`, unless that holds something else
/// (an earlier migration's file, restored since), then `<file>.format-1.<n>`. A copy
/// left by an interrupted migration of the same file is reused.
fn backup_path(path: &Path, bytes: &[u8]) -> PathBuf {
    let first = sibling(path, ".format-1");
    let mut candidate = first.clone();
    for n in 1u32.. {
        match fs::read(&candidate) {
            Ok(existing) if existing == bytes => return candidate,
            Ok(_) => {}
            Err(_) => return candidate,
        }
        candidate = sibling(path, &format!(".format-1.{n}"));
    }
    first
}

/// One kind of the format-1 file.
#[derive(Deserialize)]
struct StoredKind {
    #[allow(dead_code)] // read for the file's shape; revisions restart in the new store
    revision: u64,
    state: serde_json::Value,
}

/// The body of the format-1 file.
#[derive(Deserialize)]
struct FileBody {
    #[allow(dead_code)] // the header's format is the one checked
    format: u32,
    kinds: BTreeMap<String, StoredKind>,
}

/// Decodes the format-1 file: header line (`layout-cluster-state format=N crc32=X`), then
/// the JSON body, checked against the CRC-32.
fn decode(bytes: &[u8], location: &str) -> Result<BTreeMap<String, StoredKind>, StoreError> {
    let damaged = |problem: String| StoreError::Damaged {
        location: location.to_owned(),
        problem,
    };
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| damaged("no header line".to_owned()))?;
    let header = std::str::from_utf8(&bytes[..newline])
        .map_err(|_| damaged("the header is not UTF-8".to_owned()))?;
    let body = bytes[newline + 1..]
        .strip_suffix(b"\n")
        .unwrap_or(&bytes[newline + 1..]);
    let mut fields = header.split(' ');
    if fields.next() != Some(HEADER) {
        return Err(damaged(format!("unexpected header {header:?}")));
    }
    let mut format = None;
    let mut crc = None;
    for field in fields {
        match field.split_once('=') {
            Some(("format", v)) => format = v.parse::<u32>().ok(),
            Some(("crc32", v)) => crc = u32::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    let format = format.ok_or_else(|| damaged(format!("no format in header {header:?}")))?;
    if format > CLUSTER_STATE_FORMAT {
        return Err(StoreError::UnsupportedFormat {
            location: location.to_owned(),
            found: format,
            supported: CLUSTER_STATE_FORMAT,
        });
    }
    let crc = crc.ok_or_else(|| damaged(format!("no checksum in header {header:?}")))?;
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(damaged(format!(
            "checksum mismatch: header says {crc:08x}, content has {actual:08x} (torn write or \
             edited by hand)"
        )));
    }
    let body: FileBody =
        serde_json::from_slice(body).map_err(|e| damaged(format!("unreadable content: {e}")))?;
    Ok(body.kinds)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_second_open_of_the_same_file_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let first = EmbeddedStore::open(&path).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        drop(first);
        EmbeddedStore::open(&path).unwrap();
    }

    #[test]
    fn a_database_of_a_newer_format_or_a_foreign_one_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .swap_kind("dn", None, &KindRecord::new("dn", 1))
            .unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_FORMAT, u64::from(CLUSTER_STATE_FORMAT) + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        drop(store);
        let bytes = fs::read(&path).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedFormat { found, .. } if found == CLUSTER_STATE_FORMAT + 1),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes);

        let foreign = dir.path().join("foreign");
        {
            let db = Database::create(&foreign).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<&str, u64>::new("other"))
                .unwrap()
                .insert("x", 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let bytes = fs::read(&foreign).unwrap();
        let err = EmbeddedStore::open(&foreign).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert_eq!(fs::read(&foreign).unwrap(), bytes);
    }

    #[test]
    fn revisions_are_unique_across_records_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let store = EmbeddedStore::open(&path).unwrap();
        let mut seen = Vec::new();
        for kind in ["a", "b"] {
            let StoreCasOutcome::Swapped { revision } = store
                .swap_kind(kind, None, &KindRecord::new(kind, 1))
                .unwrap()
            else {
                panic!("conflict")
            };
            seen.push(revision);
        }
        drop(store);
        let store = EmbeddedStore::open(&path).unwrap();
        let StoreCasOutcome::Swapped { revision } = store
            .swap_kind("c", None, &KindRecord::new("c", 1))
            .unwrap()
        else {
            panic!("conflict")
        };
        assert!(!seen.contains(&revision));
        assert!(seen.iter().all(|r| *r < revision));
        // Only the database and its lock: no temporary file left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["state", "state.lock"]);
    }
}
