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

    /// Whether `presented` is this token, compared with [`token_matches`]: the time it
    /// takes tells nothing about how much of it matched or how long the token is.
    ///
    /// ```
    /// use layout_core::admin::http::BearerToken;
    ///
    /// let token = BearerToken::new("correct-horse-battery-staple")?;
    /// assert!(token.matches("correct-horse-battery-staple"));
    /// assert!(!token.matches("correct-horse-battery-stapl"));
    /// # Ok::<(), layout_core::admin::http::HttpError>(())
    /// ```
    pub fn matches(&self, presented: &str) -> bool {
        token_matches(presented.as_bytes(), self.0.as_bytes())
    }

    /// Whether the value of an `Authorization` header, `Bearer <token>`, carries this
    /// token: [`bearer_credentials`], then [`matches`](Self::matches). Any other scheme,
    /// or no token, does not authorize.
    ///
    /// ```
    /// use layout_core::admin::http::BearerToken;
    ///
    /// let token = BearerToken::new("correct-horse-battery-staple")?;
    /// assert!(token.authorizes("Bearer correct-horse-battery-staple"));
    /// assert!(!token.authorizes("Basic correct-horse-battery-staple"));
    /// assert!(!token.authorizes("Bearer"));
    /// # Ok::<(), layout_core::admin::http::HttpError>(())
    /// ```
    pub fn authorizes(&self, authorization: &str) -> bool {
        bearer_credentials(authorization).is_some_and(|presented| self.matches(presented))
    }
}

/// The token of an `Authorization` header value using the Bearer scheme (the scheme's
/// case does not matter; whitespace around the token is trimmed), or `None` for another
/// scheme or a value without a space after the scheme. The token itself is not checked:
/// compare it with [`token_matches`] or [`BearerToken::matches`].
///
/// ```
/// use layout_core::admin::http::bearer_credentials;
///
/// assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
/// assert_eq!(bearer_credentials("bearer  abc "), Some("abc"));
/// assert_eq!(bearer_credentials("Basic abc"), None);
/// assert_eq!(bearer_credentials("Bearer"), None);
/// ```
pub fn bearer_credentials(authorization: &str) -> Option<&str> {
    match authorization.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Some(rest.trim()),
        _ => None,
    }
}

/// Whether a presented token equals the configured one, compared without leaking,
/// through timing, how much of it matched or how long it is. The admin endpoint checks
/// its bearer token with it; a component that guards routes of its own with the same
/// token should too (or use [`BearerToken::matches`]).
///
/// A byte-wise constant-time compare still answers early when the lengths differ, which
/// tells a caller the token's length. So both tokens are first reduced to a digest keyed
/// with fresh random keys (std's `RandomState`, keys unknown to the caller) and the
/// digests are compared in constant time: how long that takes does not depend on how the
/// presented token relates to the configured one. Only when the digests agree (for a
/// wrong token, with probability about 2^-64) are the bytes compared.
///
/// ```
/// use layout_core::admin::http::token_matches;
///
/// assert!(token_matches(b"s3cret-token-value", b"s3cret-token-value"));
/// assert!(!token_matches(b"s3cret-token-valuE", b"s3cret-token-value"));
/// assert!(!token_matches(b"", b"s3cret-token-value"));
/// ```
pub fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    use std::hash::{BuildHasher, RandomState};
    use subtle::ConstantTimeEq;
    let keys = RandomState::new();
    let digests_agree = keys.hash_one(presented).ct_eq(&keys.hash_one(expected));
    bool::from(digests_agree) && bool::from(presented.ct_eq(expected))
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

#[cfg(test)]
mod tests {
    use super::{bearer_credentials, token_matches, BearerToken};

    #[test]
    fn only_the_exact_token_matches() {
        let token = b"s3cret-token-value";
        assert!(token_matches(token, token));
        assert!(!token_matches(b"s3cret-token-valuE", token));
        assert!(!token_matches(b"s3cret-token-valu", token));
        assert!(!token_matches(b"s3cret-token-value-and-more", token));
        assert!(!token_matches(b"", token));
    }

    #[test]
    fn a_bearer_token_matches_only_itself() {
        let token = BearerToken::new("s3cret-token-value").expect("valid token");
        assert!(token.matches("s3cret-token-value"));
        assert!(!token.matches("s3cret-token-valuE"));
        assert!(!token.matches("s3cret-token-valu"));
        assert!(!token.matches("s3cret-token-value-and-more"));
        assert!(!token.matches(""));
    }

    #[test]
    fn only_a_bearer_header_with_the_token_authorizes() {
        let token = BearerToken::new("s3cret-token-value").expect("valid token");
        assert!(token.authorizes("Bearer s3cret-token-value"));
        assert!(token.authorizes("bEARER   s3cret-token-value  "));
        for value in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer s3cret-token-valuE",
            "Bearer s3cret-token-valu",
            "Basic s3cret-token-value",
            "s3cret-token-value",
            "Bearer s3cret-token-value extra",
        ] {
            assert!(!token.authorizes(value), "{value:?} must not authorize");
        }
    }

    #[test]
    fn bearer_credentials_takes_the_token_of_the_bearer_scheme_only() {
        assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("BEARER abc"), Some("abc"));
        assert_eq!(bearer_credentials("Bearer  abc "), Some("abc"));
        assert_eq!(bearer_credentials("Bearer "), Some(""));
        assert_eq!(bearer_credentials("Bearer"), None);
        assert_eq!(bearer_credentials("Token abc"), None);
        assert_eq!(bearer_credentials(""), None);
    }
}
