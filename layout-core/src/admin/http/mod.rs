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
//!
//! Every request needs `Authorization: Bearer <token>`; the token is compared in
//! constant time. Errors are JSON ([`ErrorResponse`](super::ErrorResponse)) with a status:
//! 400 malformed, 401 missing or wrong token, 404 no such path, 405 wrong method, 408
//! request not received in time, 409 conflicting finalization or prepared, 413 body too
//! large, 431 head too large, 503 at the connection limit.
//!
//! # Security
//!
//! The server binds to `127.0.0.1` unless told otherwise ([`HttpConfig::with_bind_addr`]).
//! It speaks plain HTTP: **TLS is left to a proxy** in front of it (or reach it through
//! an SSH tunnel). A slow client cannot hold it: each connection gets a worker thread
//! (at most [`HttpConfig::with_max_connections`]; beyond that, 503 at once), the whole
//! request must arrive within [`HttpConfig::with_request_timeout`] (408 otherwise), the
//! head and the body have size limits, and each connection carries one request.
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

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

pub use client::{AdminClient, ClientError, DEFAULT_CLIENT_TIMEOUT};
pub use server::AdminServer;

/// The port the admin endpoint listens on by default (on `127.0.0.1`), and that
/// `layoutctl` calls by default.
pub const DEFAULT_ADMIN_PORT: u16 = 9868;

/// The shortest bearer token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest bearer token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// A bearer token: 16 to 1024 visible ASCII characters. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Checks `token`.
    pub fn new(token: impl Into<String>) -> Result<Self, HttpError> {
        let token = token.into();
        if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
            return Err(HttpError::InvalidToken(format!(
                "the token has {} bytes; it needs {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(HttpError::InvalidToken(
                "the token may hold only visible ASCII characters (no spaces)".to_owned(),
            ));
        }
        Ok(Self(token))
    }

    /// Reads a token from a file (surrounding whitespace is trimmed).
    pub fn from_file(path: &Path) -> Result<Self, HttpError> {
        let text = std::fs::read_to_string(path).map_err(|source| HttpError::TokenFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(text.trim())
    }

    /// The token.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Configuration of the [`AdminServer`].
///
/// ```
/// use std::time::Duration;
/// use layout_core::admin::http::HttpConfig;
///
/// let config = HttpConfig::new("a-token-of-sixteen-or-more")?
///     .with_request_timeout(Duration::from_secs(2))
///     .with_max_body_bytes(16 * 1024);
/// assert!(config.bind_addr().ip().is_loopback());
/// # Ok::<(), layout_core::admin::http::HttpError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpConfig {
    pub(crate) bind: SocketAddr,
    pub(crate) token: BearerToken,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_head_bytes: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl HttpConfig {
    /// A configuration requiring `token`, bound to `127.0.0.1:`[`DEFAULT_ADMIN_PORT`],
    /// with a 64 KiB body limit, a 16 KiB head limit, a 5 s request timeout, a 5 s write
    /// timeout and at most 16 connections at once.
    pub fn new(token: impl Into<String>) -> Result<Self, HttpError> {
        Ok(Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_ADMIN_PORT)),
            token: BearerToken::new(token)?,
            max_body_bytes: 64 * 1024,
            max_head_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
        })
    }

    /// Where to listen. Default `127.0.0.1:`[`DEFAULT_ADMIN_PORT`]; port 0 picks a free
    /// port ([`AdminServer::local_addr`] tells which). Anything but loopback exposes the
    /// endpoint to the network: put a TLS proxy in front.
    #[must_use]
    pub fn with_bind_addr(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The largest request body accepted (413 beyond).
    #[must_use]
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The largest request head (request line and headers) accepted (431 beyond).
    #[must_use]
    pub fn with_max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes;
        self
    }

    /// How long a client has to send its whole request (408 after).
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long writing the response may block.
    #[must_use]
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How many connections are served at once (503 beyond). At least 1.
    #[must_use]
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// The address to listen on.
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
}

/// An error starting the admin endpoint, or with its token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The bearer token is not acceptable.
    #[error("invalid admin bearer token: {0}")]
    InvalidToken(String),
    /// The token file cannot be read.
    #[error("cannot read the admin token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen for admin requests on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Starting the acceptor thread failed.
    #[error("cannot start the admin endpoint's thread: {0}")]
    Spawn(#[source] io::Error),
}
