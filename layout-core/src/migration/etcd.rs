//! The document store on etcd (features `migration` and `etcd`).

use std::sync::Arc;

use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, TxnOpResponse, WatchOptions};

use super::{
    DocumentCasOutcome as DocumentCas, DocumentChange, DocumentStore, DocumentStoreError,
    DocumentWatch, Revision, StoredDocument, WatchCallback, WatchEvent,
};
use crate::etcd::{revision_of, revision_to_etcd, EtcdConnection, EtcdError};

/// One versioned document of the document-migration path
/// ([`DocumentMigrator`](crate::migration::DocumentMigrator)) on etcd: the key
/// `P/documents/<name>` under the store's prefix, its revision the key's `mod_revision`,
/// every store a transaction comparing it. Of several processes that start together and
/// load an old document, exactly one stores the migrated one; the others load it.
///
/// It can [`watch`](DocumentStore::watch) the key (an etcd watch from the revision after
/// the one loaded, on the store's runtime thread), so a
/// [`SharedDocument`](crate::migration::SharedDocument) learns of a newer release's
/// migration as soon as etcd reports it.
///
/// ```no_run
/// use std::sync::Arc;
/// use layout_core::etcd::{EtcdConnection, EtcdOptions};
/// use layout_core::migration::{DocumentMigration, DocumentMigrator, EtcdDocumentStore};
///
/// let etcd = Arc::new(EtcdConnection::connect(EtcdOptions::new(["http://127.0.0.1:2379"], "/my-cluster"))?);
/// let store = EtcdDocumentStore::new(etcd, "scheduler-state");
/// let migrator = DocumentMigrator::builder("scheduler-state")
///     .step(DocumentMigration::new(0, 1, |mut doc| { doc["queues"] = serde_json::json!([]); Ok(doc) }))
///     .build()?;
/// let loaded = migrator.load(&store)?; // migrated once, whoever starts first
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct EtcdDocumentStore {
    connection: Arc<EtcdConnection>,
    key: String,
}

impl EtcdDocumentStore {
    /// The document `name` under the connection's prefix (a cluster store on the same
    /// connection shares its runtime: see
    /// [`EtcdStore::connection`](crate::cluster::EtcdStore::connection)).
    pub fn new(connection: Arc<EtcdConnection>, name: &str) -> Self {
        let key = format!("{}/documents/{name}", connection.options().prefix);
        Self { connection, key }
    }

    /// The etcd key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn error(&self, e: &EtcdError) -> DocumentStoreError {
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
            self.connection.options().endpoints.join(","),
            self.key
        )
    }

    fn load(&self) -> Result<Option<StoredDocument>, DocumentStoreError> {
        let key = self.key.clone();
        let found: Option<(i64, Vec<u8>)> = self
            .connection
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
            .connection
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

    fn watch(
        &self,
        after: Revision,
        on_event: WatchCallback,
    ) -> Result<Option<DocumentWatch>, DocumentStoreError> {
        let mut client = self.connection.client();
        let key = self.key.clone();
        let start = revision_to_etcd(after.0.saturating_add(1));
        let task = self.connection.spawn(async move {
            let lost = |reason: String| on_event(WatchEvent::Lost { reason });
            let options = WatchOptions::new().with_start_revision(start);
            let mut stream = match client.watch(key, Some(options)).await {
                Ok(stream) => stream,
                Err(e) => return lost(format!("starting the watch failed: {e}")),
            };
            loop {
                let response = match stream.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => return lost("etcd ended the watch".to_owned()),
                    Err(e) => return lost(format!("the watch failed: {e}")),
                };
                if response.canceled() {
                    return lost(format!(
                        "etcd cancelled the watch (compacted at revision {}): {}",
                        response.compact_revision(),
                        response.cancel_reason()
                    ));
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    on_event(WatchEvent::Changed(DocumentChange {
                        revision: Revision(revision_of(kv.mod_revision())),
                        bytes: match event.event_type() {
                            EventType::Put => Some(kv.value().to_vec()),
                            EventType::Delete => None,
                        },
                    }));
                }
            }
        });
        let task = task.ok_or_else(|| DocumentStoreError::Backend {
            location: self.location(),
            reason: "the connection is closed".to_owned(),
        })?;
        Ok(Some(DocumentWatch::new(move || task.abort())))
    }
}
