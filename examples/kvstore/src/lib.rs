//! `kvstore`: a small key/value service that upgrades its on-disk layout with
//! `layout-core`.
//!
//! A [`KvNode`] keeps a [`LayoutVersionManager`](layout_core::LayoutVersionManager) in
//! `dir/layout/VERSION` and a redb database in `dir/data/kv.redb`, serves a JSON HTTP
//! API (see [`KvClient`]; `GET /metrics` too) and the admin endpoint that `layoutctl`
//! drives (status, finalize, prepare), both on `layout-core`'s HTTP stack and, with
//! [`KvNodeConfig::with_tls`], over TLS. One code base plays every release: the node's
//! software version caps its SLV, so `--software-version Initial` *is* the old binary.
//!
//! # The catalog and what each feature changes on disk
//!
//! | version | feature | on disk | while pre-finalized | once finalized |
//! |---|---|---|---|---|
//! | 0 | [`KvFeature::Initial`] | tables `kv` (key -> (modified ms, JSON record)), `kv_oplog`, `kv_meta` | — | — |
//! | 1 | [`KvFeature::ExpiringValues`] | table `kv_expiry` (key -> expires-at ms), created by the first start of a release that knows it (`OnFirstUpgradeStart`); old software never opens it | puts with a TTL refused (`not_finalized`) | `ttl_ms` accepted; expired values are not returned |
//! | 2 | [`KvFeature::ValueIndex`] | table `kv_by_value` (value -> keys), filled by a background migration (the `OnFinalize` action), batch by batch with a checkpoint in `kv_migrations` | `GET /by-value` refused; writes touch `kv` only | `GET /by-value` answers from the index |
//! | 3 | [`KvFeature::CompactEncoding`] | value records in a compact binary encoding (tag byte `0xC3` + UTF-8) | puts write v0 JSON records | puts write v3 records; reads accept both |
//! | 4 | [`KvFeature::CompareAndSwap`] | no new table; a new API | `POST /cas/{key}` refused | `POST /cas/{key}` |
//!
//! While `ValueIndex` finalizes (its migration running), every write goes to both `kv`
//! and `kv_by_value` in one transaction (dual write), and a delete leaves a tombstone, so
//! nothing the migration copied goes stale. [`KvStore::index_migration`] and `/status`
//! show the migration's rows, batches and elapsed time.
//!
//! Every write gets an applied index (persisted in `kv_meta`, monotonic) and is
//! appended to the op log `kv_oplog`. Prepare ([`KvStore::prepare`], `layoutctl
//! prepare`) closes the write gate (writes answer 503, kind `prepared`; reads go on),
//! flushes, exports a snapshot to `data/snapshots/`, purges the op log through the
//! prepare index and records the marker in `VERSION`; a restart keeps it, a start with
//! intent `upgrade` or `downgrade` cancels it.
//!
//! ```no_run
//! use kvstore::{KvClient, KvNode, KvNodeConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let node = KvNode::start(KvNodeConfig::new(dir.path()))?;
//! let client = KvClient::new(node.http_addr());
//! client.put("greeting", "hello")?;
//! assert_eq!(client.get("greeting")?.as_deref(), Some("hello"));
//! node.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The kvstore guide (`docs/kvstore.md`): its Rust examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/kvstore.md")]
mod guide {}

mod changes;
mod client;
pub mod cluster;
pub mod codec;
mod component;
pub mod copy;
mod error;
mod feature;
mod http;
mod index;
mod node;
mod store;

pub use changes::{KvChange, KvChangeCursor, KvChangesPage, KvCopyOutcome, KvCopyWrite, KvStamp};
pub use client::{encode_component, ClientError, KvClient, DEFAULT_TIMEOUT};
pub use cluster::{
    ClusterConfig, ClusterRole, ClusterStoreConfig, FencedReads, KvClusterBlocker,
    KvClusterExclusion, KvClusterFinalize, KvClusterMember, KvClusterMove, KvClusterStatus,
    KvMoveTarget, CLUSTER_CONDITION, CLUSTER_KIND, CLUSTER_MOVE_FILE, CLUSTER_STATE_FILE,
};
pub use component::NOT_PREPARED_CONDITION;
pub use error::KvError;
pub use feature::KvFeature;
pub use http::{MAX_CONCURRENT_REQUESTS, MAX_CONNECTIONS, MAX_HEAD_BYTES};
pub use node::{AdminConfig, KvNode, KvNodeConfig, INDEX_MIGRATION};
#[doc(hidden)]
pub use store::StorageBackendFactory;
pub use store::{
    actions, IndexBatchHook, KvEntry, KvItem, KvKeysPage, KvOptions, KvPage, KvStatus, KvStore,
    MigrationFigures, DB_FILE_NAME, DEFAULT_LIST_LIMIT, MAX_KEY_BYTES, MAX_LIST_LIMIT,
    MAX_LIST_PAGE_BYTES, SNAPSHOT_DIR,
};
