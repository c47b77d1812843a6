//! The cluster store on etcd (feature `etcd`).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use super::{CasOutcome, ClusterStore, FinalizerClaim, StoreError, Versioned};
use crate::cluster::state::KindState;
use crate::migration::{
    CasOutcome as DocumentCas, DocumentStore, DocumentStoreError, Revision, StoredDocument,
};

/// How an [`EtcdStore`] connects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// The etcd endpoints (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The key prefix every key of this cluster lives under (`/layout/my-cluster`).
    pub prefix: String,
    /// The bound on each request (connecting included). Default: 10 s.
    pub timeout: Duration,
}

impl EtcdOptions {
    /// Endpoints and a key prefix, with the default timeout.
    pub fn new(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        prefix: impl Into<String>,
    ) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: prefix.into().trim_end_matches('/').to_owned(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Sets the bound on each request.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A held finalizer claim: its lease and the task keeping it alive.
#[derive(Debug)]
struct Claim {
    holder: String,
    lease: i64,
    keeper: JoinHandle<()>,
}

/// The cluster store on etcd, for clusters beyond one machine.
///
/// Keys under the prefix `P`:
/// - `P/kinds/<kind>`: the kind's [`KindState`] as JSON; its etcd `mod_revision` is the
///   revision; every change (a checkpoint, a registration) is one transaction comparing
///   it;
/// - `P/live/<kind>/<member>`: a key attached to a lease of the member lease TTL, kept
///   alive by each heartbeat the coordinator receives: when the member dies, the lease
///   expires and the key vanishes;
/// - `P/finalizer/<kind>`: the single active finalizer, its value the holder's
///   coordinator id, created only if absent (a transaction on its `create_revision`),
///   attached to a lease that a task keeps alive while it is held: if the coordinator's
///   process dies, the claim lapses and another coordinator can take over. The same
///   coordinator id, restarted, does not wait for that: its claim finds its own id in the
///   key and replaces it, moving it to a new lease, in a transaction comparing the value
///   (the owner) and the `mod_revision` it read; the stale lease is then revoked. Any
///   other id is refused until the holder releases or its lease lapses. So give every
///   coordinator its own id ([`CoordinatorOptions::with_coordinator_id`]): two live
///   processes under one id would take the claim from each other.
///
/// [`CoordinatorOptions::with_coordinator_id`]: crate::cluster::CoordinatorOptions::with_coordinator_id
///
/// It owns a tokio runtime (one worker thread) and blocks the caller on each request, so
/// callers need no async runtime. Do not call it from inside an async task (blocking
/// there panics); use `spawn_blocking`.
pub struct EtcdStore {
    options: EtcdOptions,
    runtime: Option<Runtime>,
    client: Client,
    /// (kind, member) -> the lease keeping the member's liveness key.
    member_leases: Mutex<HashMap<(String, String), i64>>,
    claims: Mutex<HashMap<String, Claim>>,
}

impl EtcdStore {
    /// Connects to etcd.
    pub fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let location = location_of(&options);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("layout-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend {
                location: location.clone(),
                operation: "start the runtime",
                message: e.to_string(),
            })?;
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_timeout(options.timeout);
        let endpoints = options.endpoints.clone();
        let client = runtime
            .block_on(async {
                tokio::time::timeout(options.timeout, Client::connect(endpoints, Some(connect)))
                    .await
            })
            .map_err(|_| StoreError::Backend {
                location: location.clone(),
                operation: "connect",
                message: format!("no answer within {:?}", options.timeout),
            })?
            .map_err(|e| StoreError::Backend {
                location,
                operation: "connect",
                message: e.to_string(),
            })?;
        Ok(Self {
            options,
            runtime: Some(runtime),
            client,
            member_leases: Mutex::new(HashMap::new()),
            claims: Mutex::new(HashMap::new()),
        })
    }

    /// The options it was connected with.
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    fn kind_key(&self, kind: &str) -> String {
        format!("{}/kinds/{kind}", self.options.prefix)
    }

    fn live_prefix(&self, kind: &str) -> String {
        format!("{}/live/{kind}/", self.options.prefix)
    }

    fn finalizer_key(&self, kind: &str) -> String {
        format!("{}/finalizer/{kind}", self.options.prefix)
    }

    /// Runs `f` with a client on the store's runtime, bounded by the timeout.
    fn run<T, Fut>(
        &self,
        operation: &'static str,
        f: impl FnOnce(Client) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let backend = |message: String| StoreError::Backend {
            location: self.location(),
            operation,
            message,
        };
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| backend("the store is closed".to_owned()))?;
        let timeout = self.options.timeout;
        let fut = f(self.client.clone());
        runtime
            .block_on(async { tokio::time::timeout(timeout, fut).await })
            .map_err(|_| backend(format!("no answer within {timeout:?}")))?
            .map_err(|e| backend(e.to_string()))
    }

    /// Grants a lease of `ttl` (at least 1 s, etcd's unit).
    fn grant(&self, ttl: Duration) -> Result<i64, StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        self.run("grant a lease", |mut c| async move {
            Ok(c.lease_grant(seconds, None).await?.id())
        })
    }

    /// Renews `lease` once; `false` when it had already expired.
    fn renew(&self, lease: i64) -> Result<bool, StoreError> {
        self.run("renew a lease", |mut c| async move {
            let renewed = async {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok::<bool, etcd_client::Error>(stream.message().await?.is_some_and(|r| r.ttl() > 0))
            };
            match renewed.await {
                // An expired lease is answered with a TTL of 0 or "lease not found".
                Err(e) if e.to_string().contains("not found") => Ok(false),
                other => other,
            }
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

fn location_of(options: &EtcdOptions) -> String {
    format!("etcd {} {}", options.endpoints.join(","), options.prefix)
}

fn decode(location: &str, key: &str, bytes: &[u8]) -> Result<KindState, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Damaged {
        location: location.to_owned(),
        problem: format!("key {key}: {e}"),
    })
}

fn encode(location: &str, state: &KindState) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(state).map_err(|e| StoreError::Backend {
        location: location.to_owned(),
        operation: "encode",
        message: e.to_string(),
    })
}

fn revision_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
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
        location_of(&self.options)
    }

    fn kinds(&self) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{}/kinds/", self.options.prefix);
        let keys: Vec<Vec<u8>> = self.run("list kinds", |mut c| {
            let prefix = prefix.clone();
            async move {
                let resp = c
                    .get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await?;
                Ok(resp.kvs().iter().map(|kv| kv.key().to_vec()).collect())
            }
        })?;
        let mut kinds: Vec<String> = keys
            .iter()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(ToOwned::to_owned)
            .collect();
        kinds.sort();
        Ok(kinds)
    }

    fn load(&self, kind: &str) -> Result<Option<Versioned>, StoreError> {
        let key = self.kind_key(kind);
        let found: Option<(i64, Vec<u8>)> = self.run("load", |mut c| {
            let key = key.clone();
            async move {
                let resp = c.get(key, None).await?;
                Ok(resp
                    .kvs()
                    .first()
                    .map(|kv| (kv.mod_revision(), kv.value().to_vec())))
            }
        })?;
        found
            .map(|(revision, bytes)| {
                Ok(Versioned {
                    revision: revision_of(revision),
                    state: decode(&self.location(), &key, &bytes)?,
                })
            })
            .transpose()
    }

    fn compare_and_swap(
        &self,
        kind: &str,
        expected: Option<u64>,
        state: &KindState,
    ) -> Result<CasOutcome, StoreError> {
        let key = self.kind_key(kind);
        let value = encode(&self.location(), state)?;
        let compare = match expected {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(revision) => Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                i64::try_from(revision).unwrap_or(i64::MAX),
            ),
        };
        let swapped: Option<i64> = self.run("compare and swap", |mut c| async move {
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, value, None)]);
            let resp = c.txn(txn).await?;
            Ok(resp.succeeded().then(|| {
                resp.header()
                    .map_or(0, etcd_client::ResponseHeader::revision)
            }))
        })?;
        Ok(
            swapped.map_or(CasOutcome::Conflict, |revision| CasOutcome::Swapped {
                revision: revision_of(revision),
            }),
        )
    }

    fn overwrite(&self, kind: &str, state: &KindState) -> Result<u64, StoreError> {
        let key = self.kind_key(kind);
        let value = encode(&self.location(), state)?;
        let revision = self.run("overwrite", |mut c| async move {
            let resp = c.put(key, value, None).await?;
            Ok(resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision))
        })?;
        Ok(revision_of(revision))
    }

    fn mark_alive(&self, kind: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        let id = (kind.to_owned(), member.to_owned());
        let cached = self.member_leases.lock().get(&id).copied();
        if let Some(lease) = cached {
            if self.renew(lease)? {
                return Ok(());
            }
        }
        // No lease yet, or it expired (and its key vanished): a new one.
        let lease = self.grant(ttl)?;
        let key = format!("{}{member}", self.live_prefix(kind));
        self.run("mark a member live", |mut c| async move {
            c.put(key, "", Some(PutOptions::new().with_lease(lease)))
                .await
                .map(|_| ())
        })?;
        if let Some(old) = self.member_leases.lock().insert(id, lease) {
            if old != lease {
                let _ = self.revoke(old);
            }
        }
        Ok(())
    }

    fn live_members(&self, kind: &str) -> Result<BTreeSet<String>, StoreError> {
        let prefix = self.live_prefix(kind);
        let keys: Vec<Vec<u8>> = self.run("list live members", |mut c| {
            let prefix = prefix.clone();
            async move {
                let resp = c
                    .get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await?;
                Ok(resp.kvs().iter().map(|kv| kv.key().to_vec()).collect())
            }
        })?;
        Ok(keys
            .iter()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(ToOwned::to_owned)
            .collect())
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
        let mut client = self.client.clone();
        let keeper = self
            .runtime
            .as_ref()
            .map(|rt| {
                rt.spawn(async move {
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

/// One versioned document of the document-migration path
/// ([`DocumentMigrator`](crate::migration::DocumentMigrator)) on etcd: the key
/// `P/documents/<name>` under the store's prefix, its revision the key's `mod_revision`,
/// every store a transaction comparing it. Of several processes that start together and
/// load an old document, exactly one stores the migrated one; the others load it.
///
/// ```no_run
/// use std::sync::Arc;
/// use layout_core::cluster::{EtcdDocumentStore, EtcdOptions, EtcdStore};
/// use layout_core::migration::{DocumentMigration, DocumentMigrator};
///
/// let etcd = Arc::new(EtcdStore::connect(EtcdOptions::new(["http://127.0.0.1:2379"], "/my-cluster"))?);
/// let store = EtcdDocumentStore::new(etcd, "scheduler-state");
/// let migrator = DocumentMigrator::builder("scheduler-state")
///     .step(DocumentMigration::new(0, 1, |mut doc| { doc["queues"] = serde_json::json!([]); Ok(doc) }))
///     .build()?;
/// let loaded = migrator.load(&store)?; // migrated once, whoever starts first
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct EtcdDocumentStore {
    store: Arc<EtcdStore>,
    key: String,
}

impl EtcdDocumentStore {
    /// The document `name` under `store`'s prefix (it shares the store's connection and
    /// runtime).
    pub fn new(store: Arc<EtcdStore>, name: &str) -> Self {
        let key = format!("{}/documents/{name}", store.options.prefix);
        Self { store, key }
    }

    /// The etcd key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn error(&self, e: &StoreError) -> DocumentStoreError {
        DocumentStoreError::Backend {
            location: self.location(),
            reason: e.to_string(),
        }
    }
}

impl DocumentStore for EtcdDocumentStore {
    fn location(&self) -> String {
        format!(
            "etcd {} {}",
            self.store.options.endpoints.join(","),
            self.key
        )
    }

    fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError> {
        let key = self.key.clone();
        let found: Option<(i64, Vec<u8>)> = self
            .store
            .run("load a document", |mut c| async move {
                let resp = c.get(key, None).await?;
                Ok(resp
                    .kvs()
                    .first()
                    .map(|kv| (kv.mod_revision(), kv.value().to_vec())))
            })
            .map_err(|e| self.error(&e))?;
        Ok(found.map(|(revision, bytes)| StoredDocument {
            revision: Revision(revision_of(revision)),
            bytes,
        }))
    }

    fn compare_and_swap(
        &self,
        expected: Option<Revision>,
        bytes: &[u8],
    ) -> Result<DocumentCas, DocumentStoreError> {
        let key = self.key.clone();
        let value = bytes.to_vec();
        let compare = match expected {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(Revision(revision)) => Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                i64::try_from(revision).unwrap_or(i64::MAX),
            ),
        };
        let outcome: Result<i64, Option<i64>> = self
            .store
            .run("compare and swap a document", |mut c| async move {
                let txn = Txn::new()
                    .when([compare])
                    .and_then([TxnOp::put(key.clone(), value, None)])
                    .or_else([TxnOp::get(key, None)]);
                let resp = c.txn(txn).await?;
                if resp.succeeded() {
                    return Ok(Ok(resp
                        .header()
                        .map_or(0, etcd_client::ResponseHeader::revision)));
                }
                let current = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(get) => {
                        get.kvs().first().map(etcd_client::KeyValue::mod_revision)
                    }
                    _ => None,
                });
                Ok(Err(current))
            })
            .map_err(|e| self.error(&e))?;
        Ok(match outcome {
            Ok(revision) => DocumentCas::Stored(Revision(revision_of(revision))),
            Err(current) => DocumentCas::Conflict {
                current: current.map(|r| Revision(revision_of(r))),
            },
        })
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
        // Member leases are left to expire: a coordinator restart must not make every
        // member look dead at once.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
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
