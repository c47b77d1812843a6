//! The admin API over HTTP/JSON (feature `admin-http`): [`AdminServer`] and
//! [`AdminClient`].
//!
//! | method and path | operation | body |
//! |---|---|---|
//! | `GET /v1/status` | status | none |
//! | `GET /v1/features` | features | none |
//! | `GET /v1/finalization-status` | finalization status, read-only | none |
//! | `POST /v1/finalization-status` | finalization status, draining a client's messages | [`FinalizationStatusParams`](super::FinalizationStatusParams) |
//! | `POST /v1/finalize` | finalize or dry run | [`FinalizeParams`](super::FinalizeParams) |
//! | `POST /v1/prepare` | prepare | [`PrepareParams`](super::PrepareParams) |
//! | `POST /v1/cancel-prepare` | cancel prepare | [`PrepareParams`](super::PrepareParams) |
//! | `GET /metrics` | Prometheus text ([`crate::admin::AdminMetrics`]) | none |
//!
//! Every request needs `Authorization: Bearer <token>` (`/metrics` too, unless
//! [`HttpConfig::with_open_metrics`]); the token is compared in constant time over
//! SHA-256 digests. Errors are JSON ([`ErrorResponse`](super::ErrorResponse)) with a
//! status: 400 malformed body, 401 missing or wrong token, 404 no such path, 405 wrong
//! method, 408 body not received in time, 409 conflicting finalization or prepared, 413
//! body too large, 503 too many requests at once. A request hyper cannot parse gets a
//! bare 400 (431 for a head over the limit) and its connection is closed.
//!
//! # Security
//!
//! The endpoint is served by the shared stack ([`crate::http`]): axum on hyper, on a
//! runtime thread the endpoint owns. It binds to `127.0.0.1` unless told otherwise
//! ([`HttpConfig::with_bind_addr`]); beyond loopback, turn on TLS (feature `tls`,
//! `HttpConfig::with_tls`, optionally requiring client certificates). A slow client
//! cannot hold it: connections are not threads, a request head must arrive within
//! [`HttpConfig::with_request_timeout`] (the connection is closed otherwise) and its body
//! within the same time again (408), and at the connection cap the oldest connection
//! that has not presented the token is closed to make room.
//!
//! ```
//! use std::sync::Arc;
//! use layout_core::admin::http::{AdminClient, AdminServer, HttpConfig};
//! use layout_core::admin::AdminService;
//! use layout_core::*;
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
//! enum OmFeature {
//!     #[layout(version = 0, description = "Initial layout")]
//!     Initial,
//! }
//! let opts = ManagerOptions::default().with_start_intent(StartIntent::Init);
//! let lvm = Arc::new(LayoutVersionManager::<OmFeature>::open(MemoryStorage::new(), opts)?);
//! let finalizer = Arc::new(UpgradeFinalizer::new(lvm, ActionRegistry::<OmFeature, ()>::empty()));
//! let service = Arc::new(AdminService::new(finalizer, Arc::new(())));
//!
//! let token = "correct-horse-battery-staple";
//! let config = HttpConfig::new(token)?.with_bind_addr("127.0.0.1:0".parse()?);
//! let server = AdminServer::start(service, config)?;
//! let client = AdminClient::new(&server.url(), token)?;
//! assert_eq!(client.status()?.metadata_layout_version, 0);
//! server.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod server;

use std::net::SocketAddr;
use std::time::Duration;

use crate::http::{BearerToken, EndpointError};
pub use client::{AdminClient, AdminClientError, DEFAULT_CLIENT_TIMEOUT};
pub use server::{admin_error_format, admin_error_response, admin_routes, AdminServer};

/// The port the admin endpoint listens on by default (on `127.0.0.1`), and that
/// `layoutctl` calls by default.
pub const DEFAULT_ADMIN_PORT: u16 = 9868;

/// Configuration of the [`AdminServer`]: its bearer token and the
/// [`EndpointConfig`](crate::http::EndpointConfig) it is served with.
///
/// ```
/// use std::time::Duration;
/// use layout_core::admin::http::HttpConfig;
///
/// let config = HttpConfig::new("a-token-of-sixteen-or-more")?
///     .with_request_timeout(Duration::from_secs(2))
///     .with_max_body_bytes(16 * 1024);
/// assert!(config.bind_addr().ip().is_loopback());
/// # Ok::<(), layout_core::http::EndpointError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpConfig {
    pub(crate) endpoint: crate::http::EndpointConfig,
    pub(crate) token: BearerToken,
    pub(crate) open_metrics: bool,
}

impl HttpConfig {
    /// A configuration requiring `token`, bound to `127.0.0.1:`[`DEFAULT_ADMIN_PORT`],
    /// with the stack's defaults ([`EndpointConfig::new`](crate::http::EndpointConfig::new)):
    /// a 64 KiB body limit, a 16 KiB head limit, 5 s to send the head and 5 s the body,
    /// 16 requests in handlers at once; `/metrics` needs the token too.
    pub fn new(token: impl Into<String>) -> Result<Self, EndpointError> {
        Ok(Self {
            endpoint: crate::http::EndpointConfig::loopback(DEFAULT_ADMIN_PORT).with_name("admin"),
            token: BearerToken::new(token)?,
            open_metrics: false,
        })
    }

    /// Where to listen. Default `127.0.0.1:`[`DEFAULT_ADMIN_PORT`]; port 0 picks a free
    /// port ([`AdminServer::local_addr`] tells which). Anything but loopback exposes the
    /// endpoint to the network: turn TLS on (feature `tls`, [`with_tls`](Self::with_tls)).
    #[must_use]
    pub fn with_bind_addr(mut self, addr: SocketAddr) -> Self {
        self.endpoint = self.endpoint.with_bind_addr(addr);
        self
    }

    /// The largest request body accepted (413 beyond).
    #[must_use]
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.endpoint = self.endpoint.with_max_body_bytes(bytes);
        self
    }

    /// The largest request head (request line and headers) accepted (431 beyond; at
    /// least 8 KiB).
    #[must_use]
    pub fn with_max_head_bytes(mut self, bytes: usize) -> Self {
        self.endpoint = self.endpoint.with_max_head_bytes(bytes);
        self
    }

    /// How long a client has to send its request head (the connection is closed after
    /// it), and then its body (408 after it).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self
            .endpoint
            .with_header_timeout(timeout)
            .with_body_timeout(timeout);
        self
    }

    /// How many connections may be open at once; at the limit the oldest one that has
    /// not presented the token is closed to admit a new one.
    #[must_use]
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.endpoint = self.endpoint.with_max_connections(connections);
        self
    }

    /// How many requests may be served at once (503 `busy` beyond).
    #[must_use]
    pub fn with_max_concurrent_requests(mut self, requests: usize) -> Self {
        self.endpoint = self.endpoint.with_max_concurrent_requests(requests);
        self
    }

    /// Serve `/metrics` without the token (for a scraper on a trusted network). The
    /// admin routes still need it.
    #[must_use]
    pub fn with_open_metrics(mut self, open: bool) -> Self {
        self.open_metrics = open;
        self
    }

    /// Serve TLS (feature `tls`), optionally requiring client certificates (mTLS).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn with_tls(mut self, tls: crate::http::ServerTls) -> Self {
        self.endpoint = self.endpoint.with_tls(tls);
        self
    }

    /// Replaces the endpoint settings (keeping the token).
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: crate::http::EndpointConfig) -> Self {
        self.endpoint = endpoint;
        self
    }

    /// The endpoint settings.
    pub fn endpoint(&self) -> &crate::http::EndpointConfig {
        &self.endpoint
    }

    /// The token.
    pub fn token(&self) -> &BearerToken {
        &self.token
    }

    /// The address to listen on.
    pub fn bind_addr(&self) -> SocketAddr {
        self.endpoint.bind_addr()
    }

    /// The time a client has to send its request head.
    pub fn request_timeout(&self) -> Duration {
        self.endpoint.header_timeout()
    }
}
