//! How a kvstore is configured: [`KvOptions`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use layout_core::clock::{Clock, SystemClock};
use layout_core::migration::BatchEvent;

/// Options of [`KvStore::open`](super::KvStore::open).
#[derive(Clone)]
pub struct KvOptions {
    /// Where the HTTP API listens (default `127.0.0.1:0`: loopback, an ephemeral port).
    pub listen: SocketAddr,
    /// Keys per batch of the value-index migration (default 10,000).
    pub migration_batch: usize,
    /// The most rows per second the value-index migration copies (default: no limit).
    pub migration_max_rows_per_sec: Option<u64>,
    /// The foreground-latency budget of the value-index migration (default: none): it
    /// waits between batches while the 99th percentile of the puts' latency is over it
    /// (see `layout_core::migration::MigrationTuning`).
    pub migration_latency_budget: Option<Duration>,
    /// The clock TTLs are measured with (default: the system clock).
    pub clock: Arc<dyn Clock>,
    /// The largest request body accepted, in bytes (default 1 MiB).
    pub max_body_bytes: usize,
    /// How long a client may take to send a whole request (default 10 s).
    pub request_timeout: Duration,
    /// How long prepare waits for the log to be applied and flushed (default 60 s).
    pub prepare_timeout: Duration,
    /// Called at each step of the value-index migration (in the migration's thread,
    /// after a batch commits, outside any lock): for tests that write while it runs.
    pub index_batch_hook: Option<IndexBatchHook>,
    /// A test seam, not for production: makes the redb storage backend of the database
    /// file from the opened file, each time the store opens or reopens it (default: none,
    /// redb's own file backend). Tests wrap `redb::backends::FileBackend` to inject I/O
    /// errors (a full disk) without filling a disk.
    #[doc(hidden)]
    pub storage_backend: Option<StorageBackendFactory>,
}

/// A hook on the value-index migration; see [`KvOptions::index_batch_hook`].
pub type IndexBatchHook = Arc<dyn Fn(&BatchEvent) + Send + Sync>;

/// A test seam: makes the storage backend of the database file; see
/// [`KvOptions::storage_backend`] (the library's
/// [`BackendFactory`](layout_core::binding::redb::BackendFactory)).
#[doc(hidden)]
pub type StorageBackendFactory = layout_core::binding::redb::BackendFactory;

impl Default for KvOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            migration_batch: layout_core::migration::DEFAULT_BATCH_SIZE,
            migration_max_rows_per_sec: None,
            migration_latency_budget: None,
            clock: Arc::new(SystemClock),
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(10),
            prepare_timeout: Duration::from_secs(60),
            index_batch_hook: None,
            storage_backend: None,
        }
    }
}

impl KvOptions {
    /// Sets [`listen`](Self::listen).
    #[must_use]
    pub fn with_listen(mut self, listen: SocketAddr) -> Self {
        self.listen = listen;
        self
    }

    /// Sets [`migration_batch`](Self::migration_batch).
    #[must_use]
    pub fn with_migration_batch(mut self, batch: usize) -> Self {
        self.migration_batch = batch.max(1);
        self
    }

    /// Sets [`migration_max_rows_per_sec`](Self::migration_max_rows_per_sec).
    #[must_use]
    pub fn with_migration_max_rows_per_sec(mut self, rows_per_sec: Option<u64>) -> Self {
        self.migration_max_rows_per_sec = rows_per_sec;
        self
    }

    /// Sets [`migration_latency_budget`](Self::migration_latency_budget).
    #[must_use]
    pub fn with_migration_latency_budget(mut self, budget: Option<Duration>) -> Self {
        self.migration_latency_budget = budget;
        self
    }

    /// Sets [`clock`](Self::clock).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets [`index_batch_hook`](Self::index_batch_hook).
    #[must_use]
    pub fn with_index_batch_hook(mut self, hook: IndexBatchHook) -> Self {
        self.index_batch_hook = Some(hook);
        self
    }

    /// Sets [`storage_backend`](Self::storage_backend) (a test seam).
    #[doc(hidden)]
    #[must_use]
    pub fn with_storage_backend(mut self, factory: StorageBackendFactory) -> Self {
        self.storage_backend = Some(factory);
        self
    }

    /// Sets [`max_body_bytes`](Self::max_body_bytes).
    #[must_use]
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }
}

impl fmt::Debug for KvOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvOptions")
            .field("listen", &self.listen)
            .field("migration_batch", &self.migration_batch)
            .field(
                "migration_max_rows_per_sec",
                &self.migration_max_rows_per_sec,
            )
            .field("migration_latency_budget", &self.migration_latency_budget)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("prepare_timeout", &self.prepare_timeout)
            .finish_non_exhaustive()
    }
}
