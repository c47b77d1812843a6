//! The cluster store on etcd (features `cluster` and `etcd`).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::{ClusterStore, FinalizerClaim, StoreCasOutcome, StoreError, Versioned};
use crate::cluster::state::{
    self, AuditEntry, AuditEvent, KindRecord, KindState, MemberRecord, MoveRecord, AUDIT_RETENTION,
    CLUSTER_STATE_FORMAT,
};
use crate::etcd::{revision_of, revision_to_etcd, EtcdConnection, EtcdError, EtcdOptions};

/// A held finalizer claim: its lease and the task keeping it alive.
#[derive(Debug)]
struct Claim {
    holder: String,
    lease: i64,
    keeper: JoinHandle<()>,
}

/// How many keys one range request returns at most: a listing of any size is read in
/// pages, so 10,000 members never make one answer exceed gRPC's message size.
const PAGE: i64 = 1_000;

/// How many operations one transaction carries at most when a whole state is written
/// (an import, a migration): below etcd's default `--max-txn-ops` of 128.
const BATCH: usize = 100;

/// How many times an operation that lost a race (a key changed between its read and its
/// transaction) is tried again before it gives up.
const ATTEMPTS: usize = 16;

/// How many times a paged listing starts over when etcd compacted the revision it reads
/// at between two of its pages.
const LIST_ATTEMPTS: usize = 3;

/// The width of an audit entry's sequence number in its key (`u64::MAX` has 20 digits):
/// zero-padded, so that etcd's key order is the order of appends.
const SEQ_WIDTH: usize = 20;

/// One key as read: the key, its value (empty for a keys-only read) and its
/// `mod_revision`.
struct Kv {
    key: Vec<u8>,
    value: Vec<u8>,
    mod_revision: i64,
}

impl Kv {
    fn of(kv: &etcd_client::KeyValue) -> Self {
        Self {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// What a kind's key of the first release's layout (`P/kinds/<kind>`) holds.
enum OldKey {
    /// Nothing.
    Absent,
    /// A tombstone: the kind lives in format-2 records.
    Tombstone {
        /// The key's `mod_revision`.
        mod_revision: i64,
    },
    /// A document of the first release (format 1), to migrate.
    Document {
        /// The key's `mod_revision`.
        mod_revision: i64,
        /// The document.
        document: serde_json::Value,
    },
}

/// The cluster store on etcd, for clusters beyond one machine.
///
/// Every key lives under the prefix `P` ([`EtcdOptions::prefix`]). A kind or member id
/// used inside a key is escaped (`%` as `%25`, `/` as `%2F`; `<kind>` and `<member>`
/// below), so that no id can reach into another's keys; listings decode it.
///
/// - `P/kind/<kind>`: the kind's [`KindRecord`] as JSON, its etcd `mod_revision` the
///   record's revision. Small (no members, no audit): every checkpoint is one
///   transaction comparing it. The kinds stored are the keys under `P/kind/`.
/// - `P/members/<kind>/<member>`: one [`MemberRecord`] per member as JSON, its
///   `mod_revision` the member's revision. A member's change (a registration, a report,
///   an exclusion) is one transaction comparing that key's `mod_revision` (or its
///   absence) *and* the kind record's, then putting that one key: what it writes does not
///   depend on the number of members. Members are listed with paged range reads (at most
///   1,000 keys per request, every page read at the revision of the first).
/// - `P/audit/<kind>/<seq>`: one [`AuditEntry`] per key, `<seq>` a per-kind sequence
///   number, zero-padded to 20 digits, so the keys sort in the order of appends. An
///   append reads the newest key and, in one transaction comparing that key unchanged and
///   the next one absent, puts the next key and deletes (one range delete) every key
///   older than the newest [`AUDIT_RETENTION`]. A sequence number, rather than a
///   timestamp, because it orders appends as etcd linearized them: coordinators' clocks
///   differ, several appends fall within one millisecond, and the sequence has no gaps,
///   so the trim is a single range delete in the append's own transaction.
/// - `P/finalizer/<kind>` (the kind not escaped: the key the first release used, so a
///   claim stays exclusive across both releases during a rolling upgrade): the single
///   active finalizer, its value the holder's coordinator id, created only if absent (a
///   transaction on its `create_revision`), attached to a lease that a task keeps alive
///   while it is held: if the coordinator's process dies, the claim lapses and another
///   coordinator can take over. The same coordinator id, restarted, does not wait for
///   that: its claim finds its own id in the key and replaces it, moving it to a new
///   lease, in a transaction comparing the value (the owner) and the `mod_revision` it
///   read; the stale lease is then revoked. Any other id is refused until the holder
///   releases or its lease lapses. So give every coordinator its own id
///   ([`CoordinatorOptions::with_coordinator_id`]): two live processes under one id would
///   take the claim from each other.
/// - `P/kinds/<kind>` (the kind not escaped, as the first release wrote it): the first
///   release's document of the kind's whole state (format 1). [`connect`](Self::connect)
///   migrates every such document into the records above
///   (the first release's document migrated forward): it writes the members and
///   the audit trail (in transactions of at most 100 operations, each comparing the
///   document unchanged and the kind record absent), then, in one transaction comparing
///   the same, puts the kind record and replaces the document with a *tombstone*: a
///   document of the first release's shape whose `format` is 2, which the first release
///   refuses ("holds format 2; this release reads format 1") instead of starting a fresh
///   state beside the migrated one. A document changed meanwhile (a coordinator of the
///   first release wrote it) is migrated again; a crash at any point leaves either the
///   document (migrated again at the next connect) or the records and the tombstone.
///   Every kind created by this release gets the same tombstone, in the transaction that
///   creates its record, so the first release refuses it too.
/// - `P/documents/<name>`: the documents of [`EtcdDocumentStore`](crate::migration::EtcdDocumentStore).
///
/// Liveness is not stored (the coordinator keeps it in memory, from heartbeats); the
/// first release's `P/live/<kind>/<member>` keys lapse with their leases.
///
/// [`CoordinatorOptions::with_coordinator_id`]: crate::cluster::CoordinatorOptions::with_coordinator_id
///
/// It owns a tokio runtime (one worker thread) and blocks the caller on each request, so
/// callers need no async runtime. Do not call it from inside an async task (blocking
/// there panics); use `spawn_blocking`.
pub struct EtcdStore {
    connection: Arc<EtcdConnection>,
    claims: Mutex<HashMap<String, Claim>>,
}

impl EtcdStore {
    /// Connects to etcd, and migrates every kind stored by the first release (format 1:
    /// one document per kind at `P/kinds/<kind>`) to the records of this one (see the
    /// type's documentation). A document that does not parse is
    /// [`StoreError::Damaged`], one of a newer format [`StoreError::UnsupportedFormat`];
    /// either way it is left untouched and the connection refused.
    pub fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let connection = EtcdConnection::connect(options).map_err(StoreError::from)?;
        Self::on(Arc::new(connection))
    }

    /// The cluster store on an open connection (which an
    /// [`EtcdDocumentStore`](crate::migration::EtcdDocumentStore) may share), with the
    /// same migration of the first release's kinds as [`Self::connect`].
    pub fn on(connection: Arc<EtcdConnection>) -> Result<Self, StoreError> {
        let store = Self {
            connection,
            claims: Mutex::new(HashMap::new()),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The connection it runs on.
    pub fn connection(&self) -> &Arc<EtcdConnection> {
        &self.connection
    }

    /// The options it was connected with.
    pub fn options(&self) -> &EtcdOptions {
        self.connection.options()
    }

    fn kind_key(&self, kind: &str) -> String {
        format!("{}/kind/{}", self.connection.options().prefix, escape(kind))
    }

    fn kinds_prefix(&self) -> String {
        format!("{}/kind/", self.connection.options().prefix)
    }

    fn members_prefix(&self, kind: &str) -> String {
        format!(
            "{}/members/{}/",
            self.connection.options().prefix,
            escape(kind)
        )
    }

    fn member_key(&self, kind: &str, member: &str) -> String {
        format!("{}{}", self.members_prefix(kind), escape(member))
    }

    fn audit_prefix(&self, kind: &str) -> String {
        format!(
            "{}/audit/{}/",
            self.connection.options().prefix,
            escape(kind)
        )
    }

    fn audit_key(&self, kind: &str, seq: u64) -> String {
        format!("{}{seq:0SEQ_WIDTH$}", self.audit_prefix(kind))
    }

    /// The first release's prefix of whole-kind documents (now tombstones).
    fn old_kinds_prefix(&self) -> String {
        format!("{}/kinds/", self.connection.options().prefix)
    }

    /// The first release's key of `kind` (not escaped, as it wrote it).
    fn old_kind_key(&self, kind: &str) -> String {
        format!("{}{kind}", self.old_kinds_prefix())
    }

    /// The store's move record.
    fn move_key(&self) -> String {
        format!("{}/move", self.connection.options().prefix)
    }

    fn finalizer_key(&self, kind: &str) -> String {
        format!("{}/finalizer/{kind}", self.connection.options().prefix)
    }

    /// Runs `f` with a client on the connection's runtime, bounded by the timeout.
    fn run<T, Fut>(
        &self,
        operation: &'static str,
        f: impl FnOnce(Client) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.connection.run(operation, f).map_err(StoreError::from)
    }

    /// One key's value and `mod_revision`; `None` when absent.
    fn get(&self, operation: &'static str, key: &str) -> Result<Option<Kv>, StoreError> {
        let key = key.to_owned();
        self.run(operation, |mut c| async move {
            Ok(c.get(key, None).await?.kvs().first().map(Kv::of))
        })
    }

    /// Runs one transaction.
    fn txn(&self, operation: &'static str, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.run(operation, |mut c| async move { c.txn(txn).await })
    }

    /// Every key under `prefix` in key order, read in pages of at most [`PAGE`] keys,
    /// every page at the revision of the first (one consistent snapshot). Starts over
    /// when that revision is compacted meanwhile.
    fn list(
        &self,
        operation: &'static str,
        prefix: &str,
        keys_only: bool,
    ) -> Result<Vec<Kv>, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        'listing: for _ in 0..LIST_ATTEMPTS {
            let mut found = Vec::new();
            let mut from = prefix.as_bytes().to_vec();
            let mut revision = 0;
            loop {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(PAGE)
                    .with_revision(revision);
                if keys_only {
                    options = options.with_keys_only();
                }
                let page = self.run(operation, |mut c| {
                    let from = from.clone();
                    async move {
                        match c.get(from, Some(options)).await {
                            Ok(resp) => Ok(Some((
                                resp.header()
                                    .map_or(0, etcd_client::ResponseHeader::revision),
                                resp.more(),
                                resp.kvs().iter().map(Kv::of).collect::<Vec<_>>(),
                            ))),
                            Err(etcd_client::Error::GRpcStatus(s))
                                if s.message().contains("compacted") =>
                            {
                                Ok(None)
                            }
                            Err(e) => Err(e),
                        }
                    }
                })?;
                let Some((at, more, kvs)) = page else {
                    continue 'listing;
                };
                if revision == 0 {
                    revision = at;
                }
                if let Some(last) = kvs.last() {
                    // The next page starts just after the last key of this one.
                    from.clone_from(&last.key);
                    from.push(0);
                }
                let empty = kvs.is_empty();
                found.extend(kvs);
                if !more || empty {
                    return Ok(found);
                }
            }
        }
        Err(StoreError::Backend {
            location: self.location(),
            operation,
            message: format!(
                "the revision read was compacted during the listing, {LIST_ATTEMPTS} times"
            ),
        })
    }

    /// The ids under `prefix`, decoded from the keys of `kvs`.
    fn ids<'a>(
        &self,
        prefix: &str,
        kvs: impl IntoIterator<Item = &'a Kv>,
    ) -> Result<Vec<(String, &'a Kv)>, StoreError> {
        kvs.into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key);
                key.strip_prefix(prefix)
                    .and_then(unescape)
                    .map(|id| (id, kv))
                    .ok_or_else(|| StoreError::Damaged {
                        location: self.location(),
                        problem: format!("key {key} is not an escaped id under {prefix}"),
                    })
            })
            .collect()
    }

    /// What the first release's key of `kind` holds.
    fn old_key(&self, kind: &str) -> Result<OldKey, StoreError> {
        let key = self.old_kind_key(kind);
        let Some(kv) = self.get("read a kind of the first release", &key)? else {
            return Ok(OldKey::Absent);
        };
        let document: serde_json::Value =
            serde_json::from_slice(&kv.value).map_err(|e| self.damaged(&key, &e))?;
        let Some(format) = document.get("format").and_then(serde_json::Value::as_u64) else {
            return Err(self.damaged(&key, "no format"));
        };
        if format > u64::from(CLUSTER_STATE_FORMAT) {
            return Err(self.unsupported(format));
        }
        Ok(if format == u64::from(CLUSTER_STATE_FORMAT) {
            OldKey::Tombstone {
                mod_revision: kv.mod_revision,
            }
        } else {
            OldKey::Document {
                mod_revision: kv.mod_revision,
                document,
            }
        })
    }

    /// Migrates every kind the first release stored (see the type's documentation).
    fn migrate(&self) -> Result<(), StoreError> {
        let prefix = self.old_kinds_prefix();
        let keys = self.list("list the kinds of the first release", &prefix, true)?;
        for kv in &keys {
            let key = String::from_utf8_lossy(&kv.key);
            if let Some(kind) = key.strip_prefix(&prefix) {
                self.migrate_kind(kind)?;
            }
        }
        Ok(())
    }

    /// Migrates `kind` if the first release's document of it is still there (format 1):
    /// writes its members and audit trail, then the kind record and the tombstone, every
    /// transaction comparing the document unchanged and the kind record absent. Redone
    /// when the document changed meanwhile. `true` when it migrated.
    fn migrate_kind(&self, kind: &str) -> Result<bool, StoreError> {
        let old_key = self.old_kind_key(kind);
        let kind_key = self.kind_key(kind);
        for _ in 0..ATTEMPTS {
            let OldKey::Document {
                mod_revision,
                document,
            } = self.old_key(kind)?
            else {
                return Ok(false);
            };
            if self.get("read a kind record", &kind_key)?.is_some() {
                // Only a write of the first release that ignored the tombstone (a move of
                // its own into this store) gets here: the records are this release's
                // state; the document is left as it is.
                tracing::warn!(
                    target: "layout_core::cluster",
                    kind,
                    location = %self.location(),
                    "a document of the first release is stored beside this kind's format-2 \
                     records; the records are used and the document is left as it is"
                );
                return Ok(false);
            }
            let state = state::upgrade_kind_document(document)
                .map_err(|problem| self.damaged(&old_key, problem))?;
            let guard = vec![
                Compare::mod_revision(old_key.clone(), CompareOp::Equal, mod_revision),
                Compare::create_revision(kind_key.clone(), CompareOp::Equal, 0),
            ];
            if !self.write_parts(kind, &state, &guard)? {
                continue;
            }
            let record = encode(&self.location(), &state.record())?;
            let tombstone = self.tombstone(kind, state.cluster_layout_version)?;
            let resp = self.txn(
                "migrate a kind of the first release",
                Txn::new().when(guard).and_then([
                    TxnOp::put(kind_key.clone(), record, None),
                    TxnOp::put(old_key.clone(), tombstone, None),
                ]),
            )?;
            if resp.succeeded() {
                tracing::info!(
                    target: "layout_core::cluster",
                    kind,
                    members = state.members.len(),
                    audit = state.audit.len(),
                    location = %self.location(),
                    "migrated a kind of the first release (format 1, one document) to \
                     format-2 records; its document is now a tombstone"
                );
                return Ok(true);
            }
        }
        Err(StoreError::Backend {
            location: self.location(),
            operation: "migrate a kind of the first release",
            message: format!("the document of {kind} changed during each of {ATTEMPTS} migrations"),
        })
    }

    /// Makes the members and the audit trail of `kind` those of `state`: puts every
    /// member and (the newest [`AUDIT_RETENTION`]) audit entries, numbered from 0, and
    /// deletes every other member and audit key, in transactions of at most [`BATCH`]
    /// operations, each only if `guard` holds. `false` when it did not (some
    /// transactions may have been applied).
    fn write_parts(
        &self,
        kind: &str,
        state: &KindState,
        guard: &[Compare],
    ) -> Result<bool, StoreError> {
        let location = self.location();
        let members_prefix = self.members_prefix(kind);
        let audit_prefix = self.audit_prefix(kind);
        let mut wanted = BTreeSet::new();
        let mut ops = Vec::new();
        for (id, member) in &state.members {
            let key = self.member_key(kind, id);
            ops.push(TxnOp::put(key.clone(), encode(&location, member)?, None));
            wanted.insert(key.into_bytes());
        }
        let audit = &state.audit[state.audit.len().saturating_sub(AUDIT_RETENTION)..];
        for (seq, entry) in (0_u64..).zip(audit) {
            let key = self.audit_key(kind, seq);
            ops.push(TxnOp::put(key.clone(), encode(&location, entry)?, None));
            wanted.insert(key.into_bytes());
        }
        for prefix in [&members_prefix, &audit_prefix] {
            for kv in self.list("list the keys of a kind", prefix, true)? {
                if !wanted.contains(&kv.key) {
                    ops.push(TxnOp::delete(kv.key, None));
                }
            }
        }
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let batch: Vec<TxnOp> = ops.by_ref().take(BATCH).collect();
            let resp = self.txn(
                "write the members and audit trail of a kind",
                Txn::new().when(guard.to_vec()).and_then(batch),
            )?;
            if !resp.succeeded() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The tombstone of `kind`'s key of the first release: a document of the first
    /// release's shape whose `format` is 2, so the first release refuses it ("holds
    /// format 2") rather than creating a fresh state; its audit trail says where the state
    /// went, for the first release's status.
    fn tombstone(&self, kind: &str, cluster_layout_version: u32) -> Result<Vec<u8>, StoreError> {
        let note = AuditEntry {
            at_ms: now_ms(),
            actor: "layout-core".to_owned(),
            event: AuditEvent::StateFormat2,
            member_id: None,
            version: None,
            detail: format!(
                "the state of {kind} is kept in format-2 records under {}; run a release \
                 that reads format {CLUSTER_STATE_FORMAT}",
                self.kind_key(kind)
            ),
        };
        encode(
            &self.location(),
            &serde_json::json!({
                "format": CLUSTER_STATE_FORMAT,
                "kind": kind,
                "cluster_layout_version": cluster_layout_version,
                "finalization": null,
                "members": {},
                "audit": [note],
                "moved_to": null,
            }),
        )
    }

    /// Creates `kind`'s record if absent, with the tombstone at the first release's key
    /// (unless one is there already), in one transaction. A document of the first release
    /// found there (a coordinator of the first release created the kind since this store
    /// connected) is migrated instead, and the creation reported a conflict: the caller
    /// reloads and finds the migrated record.
    fn create_kind(&self, kind: &str, record: &KindRecord) -> Result<StoreCasOutcome, StoreError> {
        let kind_key = self.kind_key(kind);
        let old_key = self.old_kind_key(kind);
        let value = encode(&self.location(), record)?;
        for _ in 0..ATTEMPTS {
            let mut then = vec![TxnOp::put(kind_key.clone(), value.clone(), None)];
            let old_guard = match self.old_key(kind)? {
                OldKey::Absent => {
                    then.push(TxnOp::put(
                        old_key.clone(),
                        self.tombstone(kind, record.cluster_layout_version)?,
                        None,
                    ));
                    Compare::create_revision(old_key.clone(), CompareOp::Equal, 0)
                }
                OldKey::Tombstone { mod_revision } => {
                    Compare::mod_revision(old_key.clone(), CompareOp::Equal, mod_revision)
                }
                OldKey::Document { .. } => {
                    self.migrate_kind(kind)?;
                    return Ok(StoreCasOutcome::Conflict);
                }
            };
            let resp = self.txn(
                "create a kind record",
                Txn::new()
                    .when([
                        Compare::create_revision(kind_key.clone(), CompareOp::Equal, 0),
                        old_guard,
                    ])
                    .and_then(then)
                    .or_else([TxnOp::get(
                        kind_key.clone(),
                        Some(GetOptions::new().with_count_only()),
                    )]),
            )?;
            if resp.succeeded() {
                return Ok(swapped(&resp));
            }
            let exists = resp.op_responses().iter().any(|r| match r {
                TxnOpResponse::Get(get) => get.count() > 0,
                _ => false,
            });
            if exists {
                return Ok(StoreCasOutcome::Conflict);
            }
            // The first release's key changed meanwhile: look again.
        }
        Ok(StoreCasOutcome::Conflict)
    }

    fn damaged(&self, key: &str, problem: impl std::fmt::Display) -> StoreError {
        StoreError::Damaged {
            location: self.location(),
            problem: format!("key {key}: {problem}"),
        }
    }

    fn unsupported(&self, format: u64) -> StoreError {
        StoreError::UnsupportedFormat {
            location: self.location(),
            found: u32::try_from(format).unwrap_or(u32::MAX),
            supported: CLUSTER_STATE_FORMAT,
        }
    }

    /// Decodes a record: bad JSON is [`StoreError::Damaged`], a `format` above
    /// [`CLUSTER_STATE_FORMAT`] [`StoreError::UnsupportedFormat`].
    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| self.damaged(key, e))?;
        if let Some(format) = value.get("format").and_then(serde_json::Value::as_u64) {
            if format > u64::from(CLUSTER_STATE_FORMAT) {
                return Err(self.unsupported(format));
            }
        }
        serde_json::from_value(value).map_err(|e| self.damaged(key, e))
    }

    /// Grants a lease of `ttl` (at least 1 s, etcd's unit).
    fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        self.run("grant a lease", |mut c| async move {
            Ok(c.lease_grant(seconds, None).await?.id())
        })
    }

    fn revoke(&self, lease: i64) -> Result<(), StoreError> {
        self.run("revoke a lease", |mut c| async move {
            match c.lease_revoke(lease).await {
                Ok(_) => Ok(()),
                // Already expired: nothing to revoke.
                Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("not found") => {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }
}

/// An id as used inside a key: `%` as `%25`, `/` as `%2F`.
fn escape(id: &str) -> Cow<'_, str> {
    if id.contains(['%', '/']) {
        Cow::Owned(id.replace('%', "%25").replace('/', "%2F"))
    } else {
        Cow::Borrowed(id)
    }
}

/// The id of an [`escape`]d key segment; `None` when it is not one.
fn unescape(segment: &str) -> Option<String> {
    if segment.contains('/') {
        return None;
    }
    let mut id = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.find('%') {
        id.push_str(&rest[..at]);
        id.push(match rest.get(at + 1..at + 3)? {
            "25" => '%',
            "2F" | "2f" => '/',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    id.push_str(rest);
    Some(id)
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes: every key from the prefix on.
    vec![0]
}

fn encode(location: &str, value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend {
        location: location.to_owned(),
        operation: "encode",
        message: e.to_string(),
    })
}

/// The outcome of a transaction that stored: its revision.
fn swapped(resp: &TxnResponse) -> StoreCasOutcome {
    StoreCasOutcome::Swapped {
        revision: revision_of(
            resp.header()
                .map_or(0, etcd_client::ResponseHeader::revision),
        ),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How many transactions a claim tries before it reports the key as held: each retry
/// means the key changed between two transactions (another claimant, a lease lapsing).
const CLAIM_ATTEMPTS: usize = 4;
/// What [`claim_txn`] found.
enum ClaimAttempt {
    /// The key was absent; it is ours now.
    Created,
    /// The key held our own id (a claim of a previous run of this coordinator, its lease
    /// not yet lapsed); it is ours now, on the new lease.
    TookBack {
        /// The lease the key was on.
        stale_lease: i64,
    },
    /// Another coordinator holds it.
    Held {
        /// Its id.
        holder: String,
    },
}

/// Claims the finalizer key for `holder` on `lease`: creates it if absent; if it records
/// `holder` itself, replaces it (moving it to `lease`) in a transaction comparing the
/// owner and the `mod_revision` seen; otherwise reports the holder.
async fn claim_txn(
    mut c: Client,
    key: String,
    holder: String,
    lease: i64,
) -> Result<ClaimAttempt, etcd_client::Error> {
    let put = || {
        TxnOp::put(
            key.clone(),
            holder.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
    };
    // First: only if absent.
    let mut when = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
    let mut stale_lease = None;
    let mut seen = String::new();
    for _ in 0..CLAIM_ATTEMPTS {
        let txn = Txn::new()
            .when(when.clone())
            .and_then([put()])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = c.txn(txn).await?;
        if resp.succeeded() {
            return Ok(stale_lease.map_or(ClaimAttempt::Created, |stale_lease| {
                ClaimAttempt::TookBack { stale_lease }
            }));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| {
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                    kv.lease(),
                )
            }),
            _ => None,
        });
        match current {
            // It vanished between the compare and the get (its lease lapsed): again.
            None => {
                when = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
                stale_lease = None;
                seen.clear();
            }
            // Our own claim from a previous run: take it back if it is still that one.
            Some((owner, mod_revision, lease_of_key)) if owner == holder => {
                when = vec![
                    Compare::value(key.clone(), CompareOp::Equal, holder.clone()),
                    Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision),
                ];
                stale_lease = Some(lease_of_key);
                seen.clone_from(&holder);
            }
            Some((owner, _, _)) => return Ok(ClaimAttempt::Held { holder: owner }),
        }
    }
    // The key kept changing: report it held (by whoever was seen last); the caller may
    // try again.
    Ok(ClaimAttempt::Held { holder: seen })
}

impl ClusterStore for EtcdStore {
    fn location(&self) -> String {
        self.connection.location()
    }

    fn kinds(&self) -> Result<Vec<String>, StoreError> {
        let prefix = self.kinds_prefix();
        let keys = self.list("list kinds", &prefix, true)?;
        let mut kinds: Vec<String> = self
            .ids(&prefix, &keys)?
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        kinds.sort();
        Ok(kinds)
    }

    fn load_kind(&self, kind: &str) -> Result<Option<Versioned<KindRecord>>, StoreError> {
        let key = self.kind_key(kind);
        self.get("load a kind record", &key)?
            .map(|kv| {
                Ok(Versioned {
                    revision: revision_of(kv.mod_revision),
                    value: self.decode(&key, &kv.value)?,
                })
            })
            .transpose()
    }

    fn swap_kind(
        &self,
        kind: &str,
        expected: Option<u64>,
        record: &KindRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let Some(expected) = expected else {
            return self.create_kind(kind, record);
        };
        let key = self.kind_key(kind);
        let value = encode(&self.location(), record)?;
        let resp = self.txn(
            "swap a kind record",
            Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    revision_to_etcd(expected),
                )])
                .and_then([TxnOp::put(key, value, None)]),
        )?;
        Ok(if resp.succeeded() {
            swapped(&resp)
        } else {
            StoreCasOutcome::Conflict
        })
    }

    fn load_member(
        &self,
        kind: &str,
        member: &str,
    ) -> Result<Option<Versioned<MemberRecord>>, StoreError> {
        let key = self.member_key(kind, member);
        self.get("load a member", &key)?
            .map(|kv| {
                Ok(Versioned {
                    revision: revision_of(kv.mod_revision),
                    value: self.decode(&key, &kv.value)?,
                })
            })
            .transpose()
    }

    fn members(&self, kind: &str) -> Result<Vec<(String, Versioned<MemberRecord>)>, StoreError> {
        let prefix = self.members_prefix(kind);
        let kvs = self.list("list members", &prefix, false)?;
        let mut members = self
            .ids(&prefix, &kvs)?
            .into_iter()
            .map(|(id, kv)| {
                let value = self.decode(&String::from_utf8_lossy(&kv.key), &kv.value)?;
                Ok((
                    id,
                    Versioned {
                        revision: revision_of(kv.mod_revision),
                        value,
                    },
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Escaping changes the order of ids holding `%` or `/`.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(members)
    }

    fn swap_member(
        &self,
        kind: &str,
        member: &str,
        expected: Option<u64>,
        kind_revision: u64,
        record: &MemberRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let key = self.member_key(kind, member);
        let value = encode(&self.location(), record)?;
        let member_guard = match expected {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(revision) => {
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision_to_etcd(revision))
            }
        };
        let resp = self.txn(
            "swap a member",
            Txn::new()
                .when([
                    member_guard,
                    Compare::mod_revision(
                        self.kind_key(kind),
                        CompareOp::Equal,
                        revision_to_etcd(kind_revision),
                    ),
                ])
                .and_then([TxnOp::put(key, value, None)]),
        )?;
        Ok(if resp.succeeded() {
            swapped(&resp)
        } else {
            StoreCasOutcome::Conflict
        })
    }

    fn append_audit(&self, kind: &str, entry: &AuditEntry) -> Result<(), StoreError> {
        let prefix = self.audit_prefix(kind);
        let end = prefix_end(prefix.as_bytes());
        let value = encode(&self.location(), entry)?;
        let retention = u64::try_from(AUDIT_RETENTION).unwrap_or(u64::MAX);
        for _ in 0..ATTEMPTS {
            // The newest entry's key (at most AUDIT_RETENTION keys to sort).
            let newest = self.run("read the newest audit entry", |mut c| {
                let (prefix, end) = (prefix.clone(), end.clone());
                async move {
                    let options = GetOptions::new()
                        .with_range(end)
                        .with_keys_only()
                        .with_sort(SortTarget::Key, SortOrder::Descend)
                        .with_limit(1);
                    Ok(c.get(prefix, Some(options))
                        .await?
                        .kvs()
                        .first()
                        .map(Kv::of))
                }
            })?;
            let mut when = Vec::new();
            let seq = match &newest {
                None => 0,
                Some(kv) => {
                    let key = String::from_utf8_lossy(&kv.key);
                    let seq = key
                        .strip_prefix(&prefix)
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| self.damaged(&key, "not an audit sequence number"))?;
                    when.push(Compare::mod_revision(
                        kv.key.clone(),
                        CompareOp::Equal,
                        kv.mod_revision,
                    ));
                    seq + 1
                }
            };
            let key = self.audit_key(kind, seq);
            when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
            let mut then = vec![TxnOp::put(key, value.clone(), None)];
            // Keep the newest AUDIT_RETENTION: the sequence has no gaps, so everything
            // below `seq + 1 - AUDIT_RETENTION` goes.
            if let Some(first_kept) = (seq + 1).checked_sub(retention).filter(|&s| s > 0) {
                then.push(TxnOp::delete(
                    prefix.clone(),
                    Some(DeleteOptions::new().with_range(self.audit_key(kind, first_kept))),
                ));
            }
            let resp = self.txn(
                "append to the audit trail",
                Txn::new().when(when).and_then(then),
            )?;
            if resp.succeeded() {
                return Ok(());
            }
            // Another append took that number: again after it.
        }
        Err(StoreError::Backend {
            location: self.location(),
            operation: "append to the audit trail",
            message: format!("{ATTEMPTS} appends lost the race for the next entry"),
        })
    }

    fn audit(&self, kind: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let prefix = self.audit_prefix(kind);
        self.list("read the audit trail", &prefix, false)?
            .iter()
            .map(|kv| self.decode(&String::from_utf8_lossy(&kv.key), &kv.value))
            .collect()
    }

    /// Not one transaction: etcd bounds a transaction's operations (128 by default), so
    /// the members and audit trail are written (and the keys not in `state` deleted) in
    /// transactions of at most 100 operations, then the kind record last, with the
    /// tombstone at the first release's key. Meant for a store nobody else writes yet
    /// (the target of a move); import again after a failure.
    fn import(&self, kind: &str, state: &KindState) -> Result<(), StoreError> {
        if !self.write_parts(kind, state, &[])? {
            return Err(StoreError::Backend {
                location: self.location(),
                operation: "import a kind",
                message: "a transaction without a condition was refused".to_owned(),
            });
        }
        let record = encode(&self.location(), &state.record())?;
        let tombstone = self.tombstone(kind, state.cluster_layout_version)?;
        self.txn(
            "import a kind",
            Txn::new().and_then([
                TxnOp::put(self.kind_key(kind), record, None),
                TxnOp::put(self.old_kind_key(kind), tombstone, None),
            ]),
        )?;
        Ok(())
    }

    /// One transaction: the kind record, every member and audit key of the kind and the
    /// first release's tombstone.
    fn remove_kind(&self, kind: &str) -> Result<(), StoreError> {
        let members = self.members_prefix(kind);
        let audit = self.audit_prefix(kind);
        let members_end = prefix_end(members.as_bytes());
        let audit_end = prefix_end(audit.as_bytes());
        self.txn(
            "remove a kind",
            Txn::new().and_then([
                TxnOp::delete(self.kind_key(kind), None),
                TxnOp::delete(self.old_kind_key(kind), None),
                TxnOp::delete(members, Some(DeleteOptions::new().with_range(members_end))),
                TxnOp::delete(audit, Some(DeleteOptions::new().with_range(audit_end))),
            ]),
        )?;
        Ok(())
    }

    fn load_move(&self) -> Result<Option<Versioned<MoveRecord>>, StoreError> {
        let key = self.move_key();
        self.get("load the move record", &key)?
            .map(|kv| {
                Ok(Versioned {
                    revision: revision_of(kv.mod_revision),
                    value: self.decode(&key, &kv.value)?,
                })
            })
            .transpose()
    }

    fn swap_move(
        &self,
        expected: Option<u64>,
        record: &MoveRecord,
    ) -> Result<StoreCasOutcome, StoreError> {
        let key = self.move_key();
        let value = encode(&self.location(), record)?;
        let compare = match expected {
            None => Compare::version(key.clone(), CompareOp::Equal, 0),
            Some(expected) => {
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision_to_etcd(expected))
            }
        };
        let resp = self.txn(
            "swap the move record",
            Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, value, None)]),
        )?;
        Ok(if resp.succeeded() {
            swapped(&resp)
        } else {
            StoreCasOutcome::Conflict
        })
    }

    fn claim_finalizer(
        &self,
        kind: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<FinalizerClaim, StoreError> {
        if self
            .claims
            .lock()
            .get(kind)
            .is_some_and(|c| c.holder == holder && !c.keeper.is_finished())
        {
            return Ok(FinalizerClaim::Claimed);
        }
        let key = self.finalizer_key(kind);
        let lease = self.grant(ttl)?;
        let attempt = self.run("claim the finalizer", |c| {
            claim_txn(c, key.clone(), holder.to_owned(), lease)
        })?;
        let replaced = match attempt {
            ClaimAttempt::Created => None,
            ClaimAttempt::TookBack { stale_lease } => Some(stale_lease),
            ClaimAttempt::Held { holder } => {
                let _ = self.revoke(lease);
                return Ok(FinalizerClaim::HeldBy { holder });
            }
        };
        if let Some(stale) = replaced.filter(|&stale| stale != 0 && stale != lease) {
            // The key is on the new lease now: revoking the stale one deletes nothing,
            // and stops a keeper that may still renew it.
            tracing::info!(
                target: "layout_core::cluster",
                kind,
                holder,
                stale_lease = stale,
                "took back this coordinator's own finalizer claim from a previous run"
            );
            let _ = self.revoke(stale);
        }
        // Keep the claim's lease alive while it is held (and the process lives).
        let interval = (ttl / 3).max(Duration::from_millis(200));
        let mut client = self.connection.client();
        let keeper = self
            .connection
            .spawn(async move {
                let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
                    return;
                };
                loop {
                    tokio::time::sleep(interval).await;
                    if keeper.keep_alive().await.is_err() {
                        return;
                    }
                    match stream.message().await {
                        Ok(Some(resp)) if resp.ttl() > 0 => {}
                        _ => return,
                    }
                }
            })
            .ok_or_else(|| StoreError::Backend {
                location: self.location(),
                operation: "claim the finalizer",
                message: "the store is closed".to_owned(),
            })?;
        let previous = self.claims.lock().insert(
            kind.to_owned(),
            Claim {
                holder: holder.to_owned(),
                lease,
                keeper,
            },
        );
        if let Some(previous) = previous {
            previous.keeper.abort();
        }
        Ok(FinalizerClaim::Claimed)
    }

    fn release_finalizer(&self, kind: &str, holder: &str) -> Result<(), StoreError> {
        let claim = {
            let mut claims = self.claims.lock();
            match claims.get(kind) {
                Some(c) if c.holder == holder => claims.remove(kind),
                _ => None,
            }
        };
        if let Some(claim) = claim {
            claim.keeper.abort();
            // Revoking the lease deletes the claim's key.
            self.revoke(claim.lease)?;
        }
        Ok(())
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        let claims: Vec<(String, String)> = self
            .claims
            .lock()
            .iter()
            .map(|(k, c)| (k.clone(), c.holder.clone()))
            .collect();
        for (kind, holder) in claims {
            let _ = self.release_finalizer(&kind, &holder);
        }
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        StoreError::Backend {
            location: e.location,
            operation: e.operation,
            message: e.message,
        }
    }
}
