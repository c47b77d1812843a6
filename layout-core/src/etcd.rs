//! The etcd connection (feature `etcd`) that the cluster store
//! ([`cluster::EtcdStore`](crate::cluster::EtcdStore), feature `cluster`) and the document
//! store ([`migration::EtcdDocumentStore`](crate::migration::EtcdDocumentStore), feature
//! `migration`) share: endpoints, key prefix, timeout, and the one runtime thread their
//! requests run on.
//!
//! The connection blocks the caller on each request, so callers need no async runtime.
//! Do not call it from inside an async task (blocking there panics); use
//! `spawn_blocking`.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// How a connection to etcd is made.
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

    /// Where these options point, for messages: `etcd <endpoints> <prefix>`.
    pub fn location(&self) -> String {
        format!("etcd {} {}", self.endpoints.join(","), self.prefix)
    }
}

/// A request to etcd that failed: where, what was being done, and etcd's (or the
/// timeout's) message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{location}: cannot {operation}: {message}")]
#[non_exhaustive]
pub struct EtcdError {
    /// Where (`etcd <endpoints> <prefix>`).
    pub location: String,
    /// What was being done.
    pub operation: &'static str,
    /// etcd's message, or the timeout's.
    pub message: String,
}

/// A connection to etcd: a client and the runtime thread it runs on. Share it with
/// [`std::sync::Arc`]; the runtime stops when the last holder drops it.
pub struct EtcdConnection {
    options: EtcdOptions,
    runtime: Option<Runtime>,
    client: Client,
}

impl EtcdConnection {
    /// Starts the runtime thread and connects, bounded by the options' timeout.
    pub fn connect(options: EtcdOptions) -> Result<Self, EtcdError> {
        let location = options.location();
        let error = |operation: &'static str, message: String| EtcdError {
            location: location.clone(),
            operation,
            message,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("layout-etcd")
            .enable_all()
            .build()
            .map_err(|e| error("start the runtime", e.to_string()))?;
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_timeout(options.timeout);
        let endpoints = options.endpoints.clone();
        let client = runtime
            .block_on(async {
                tokio::time::timeout(options.timeout, Client::connect(endpoints, Some(connect)))
                    .await
            })
            .map_err(|_| error("connect", format!("no answer within {:?}", options.timeout)))?
            .map_err(|e| error("connect", e.to_string()))?;
        Ok(Self {
            options,
            runtime: Some(runtime),
            client,
        })
    }

    /// The options it was connected with.
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    /// Where it points, for messages: `etcd <endpoints> <prefix>`.
    pub fn location(&self) -> String {
        self.options.location()
    }

    /// Runs `f` with a client on the connection's runtime, bounded by the timeout.
    pub(crate) fn run<T, Fut>(
        &self,
        operation: &'static str,
        f: impl FnOnce(Client) -> Fut,
    ) -> Result<T, EtcdError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let error = |message: String| EtcdError {
            location: self.location(),
            operation,
            message,
        };
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| error("the connection is closed".to_owned()))?;
        let timeout = self.options.timeout;
        let fut = f(self.client.clone());
        runtime
            .block_on(async { tokio::time::timeout(timeout, fut).await })
            .map_err(|_| error(format!("no answer within {timeout:?}")))?
            .map_err(|e| error(e.to_string()))
    }

    /// A clone of the client, for work spawned with [`Self::spawn`].
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Spawns `task` on the connection's runtime; `None` once it is closed.
    pub(crate) fn spawn<F>(&self, task: F) -> Option<JoinHandle<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().map(|rt| rt.spawn(task))
    }
}

impl Drop for EtcdConnection {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for EtcdConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConnection")
            .field("location", &self.location())
            .finish_non_exhaustive()
    }
}

/// An etcd revision as this crate counts them (never negative).
pub(crate) fn revision_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// A revision of this crate as etcd counts them.
pub(crate) fn revision_to_etcd(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}
