//! The one HTTP stack every endpoint is served on (feature `http`): the admin endpoint,
//! the coordinator's member link, `/metrics`, and a component's own API (the example
//! kvstore serves its data API on it).
//!
//! An [`Endpoint`] serves an axum [`Router`](axum::Router) with hyper on a tokio runtime
//! thread the endpoint owns, so the API stays synchronous: start it, ask its address,
//! shut it down. What it enforces before a request can hold a worker:
//!
//! - hyper parses the request (strict HTTP/1.1; a malformed request is a bare 400 and the
//!   connection closes), limits the head (431) and closes a connection whose head does
//!   not arrive within the header timeout;
//! - [`require_bearer`] checks a bearer token (SHA-256 digests compared in constant time,
//!   [`token_matches`]) before any handler runs;
//! - connections are tasks, not threads; at the connection cap the oldest connection
//!   that has not presented a valid token is closed, so unauthenticated connections can
//!   never keep authenticated ones out;
//! - tower / tower-http layers bound the body (413), the time to send it (408) and the
//!   requests in handlers at once (503); blocking work runs on the runtime's blocking
//!   pool ([`blocking`]);
//! - with the `tls` feature, rustls serves TLS ([`ServerTls`]), optionally requiring
//!   client certificates from a CA (mTLS), and [`ClientConfig`] gives clients the CA and
//!   their certificate.
//!
//! The stack's own refusals are JSON in the endpoint's [`ErrorFormat`] (by default the
//! admin API's error body).
//!
//! ```
//! use std::time::Duration;
//! use layout_core::http::{require_bearer, BearerToken, ClientConfig, Endpoint, EndpointConfig};
//! use axum::{routing::get, Router};
//!
//! let token = BearerToken::new("correct-horse-battery-staple")?;
//! let router = Router::new().route("/v1/hello", get(|| async { "hello" }));
//! let config = EndpointConfig::loopback(0);
//! let endpoint = Endpoint::start(require_bearer(router, token, config.error_format()), config)?;
//!
//! let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
//! let mut answer = agent.get(&format!("{}/v1/hello", endpoint.url())).call()?;
//! assert_eq!(answer.status(), 401);
//! let mut answer = agent
//!     .get(&format!("{}/v1/hello", endpoint.url()))
//!     .header("Authorization", "Bearer correct-horse-battery-staple")
//!     .call()?;
//! assert_eq!(answer.body_mut().read_to_string()?, "hello");
//! endpoint.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod client;
mod connections;
mod endpoint;
pub(crate) mod metrics;
mod refusal;
#[cfg(feature = "tls")]
mod tls;
mod token;

use std::io;
use std::net::SocketAddr;

pub use axum;
pub use client::ClientConfig;
pub use endpoint::{
    blocking, read_body, require_bearer, Endpoint, EndpointConfig, DEFAULT_REQUEST_TIMEOUT,
};
pub use metrics::{metrics_router, METRICS_CONTENT_TYPE};
pub use prometheus_client::registry::Registry;
pub use refusal::{json_response, plain_error_format, ErrorFormat, Refusal};
#[cfg(feature = "tls")]
pub use tls::{ClientTls, ServerTls, TlsError};
pub use token::{bearer_credentials, token_matches, BearerToken, MAX_TOKEN_LEN, MIN_TOKEN_LEN};

/// An error starting an endpoint, or with its token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The bearer token is not acceptable.
    #[error("invalid bearer token: {0}")]
    InvalidToken(String),
    /// The token file cannot be read.
    #[error("cannot read the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The endpoint carries secrets and may leave loopback only with TLS.
    #[error("the {name} endpoint may listen on {addr} (beyond loopback) only with TLS; configure a certificate or bind 127.0.0.1")]
    PlaintextBeyondLoopback {
        /// The endpoint's name.
        name: String,
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Starting the endpoint's thread or runtime failed.
    #[error("cannot start the endpoint's thread: {0}")]
    Spawn(#[source] io::Error),
}
