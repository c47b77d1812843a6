//! A blocking client of the admin endpoint.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::admin::types::{
    AdminError, CancelFinalizationParams, ErrorCode, ErrorResponse, FeaturesResponse,
    FinalizationStatusParams, FinalizationStatusResponse, FinalizeParams, FinalizeResponse,
    MigrationSettingsParams, MigrationView, MigrationsResponse, PrepareParams, PrepareResponse,
    StatusResponse,
};
use crate::http::ClientConfig;

/// How long one call may take by default (prepare waits for the component's log, so
/// this is generous).
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// A blocking client of the admin endpoint ([`AdminServer`](super::AdminServer)).
pub struct AdminClient {
    agent: ureq::Agent,
    config: ClientConfig,
    base: String,
    bearer: String,
}

/// A failed admin call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminClientError {
    /// The endpoint is not an `http://host:port` (or, with TLS, `https://host:port`)
    /// address.
    #[error("invalid admin endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The endpoint could not be reached: the connection (or its TLS handshake) failed or
    /// timed out, so the request was never delivered and took no effect.
    #[error("cannot reach the admin endpoint {endpoint}: {source}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: ureq::Error,
    },
    /// The request was sent (or partly sent) but no complete answer came back: the
    /// connection broke or timed out afterwards. The endpoint may have acted on it; read
    /// the status to learn the outcome.
    #[error(
        "the admin endpoint {endpoint} was sent the request but its answer was lost ({source}); \
         the request may have taken effect"
    )]
    AnswerLost {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: ureq::Error,
    },
    /// The endpoint answered with an error.
    #[error("the admin endpoint refused the request (HTTP {status}): {error}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error it sent.
        error: AdminError,
    },
    /// The answer could not be understood.
    #[error("the admin endpoint {endpoint} sent an answer that cannot be read (HTTP {status}): {reason}")]
    Decode {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// What is wrong.
        reason: String,
    },
}

impl AdminClientError {
    /// The error code the endpoint sent, if it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { error, .. } => Some(error.code()),
            _ => None,
        }
    }

    /// The HTTP status, if the endpoint answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl AdminClient {
    /// A client of the endpoint at `endpoint` (`http://127.0.0.1:9868`, or just
    /// `127.0.0.1:9868`), presenting `token`, over plain HTTP with
    /// [`DEFAULT_CLIENT_TIMEOUT`]. For TLS, see [`with_config`](Self::with_config).
    pub fn new(endpoint: &str, token: impl Into<String>) -> Result<Self, AdminClientError> {
        Self::with_config(endpoint, token, ClientConfig::new(DEFAULT_CLIENT_TIMEOUT))
    }

    /// A client of the endpoint at `endpoint` with `config` (timeout; with the `tls`
    /// feature, the CA to trust and a client certificate for mTLS).
    pub fn with_config(
        endpoint: &str,
        token: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Self, AdminClientError> {
        let invalid = |reason: &str| AdminClientError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        let base = config
            .base_url(endpoint)
            .map_err(|reason| invalid(&reason))?;
        let token = token.into();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "the token is empty or holds characters other than visible ASCII",
            ));
        }
        Ok(Self {
            agent: config.agent(),
            config,
            base,
            bearer: format!("Bearer {token}"),
        })
    }

    /// Sets how long one call may take (default [`DEFAULT_CLIENT_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.config = self.config.with_timeout(timeout);
        self.agent = self.config.agent();
        self
    }

    /// The endpoint's base URL.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Result<StatusResponse, AdminClientError> {
        self.get("status")
    }

    /// `GET /v1/features`.
    pub fn features(&self) -> Result<FeaturesResponse, AdminClientError> {
        self.get("features")
    }

    /// `GET /v1/finalization-status`: read-only, drains nothing.
    pub fn finalization_status(&self) -> Result<FinalizationStatusResponse, AdminClientError> {
        self.get("finalization-status")
    }

    /// `POST /v1/finalization-status`: as a client, draining its messages.
    pub fn finalization_status_as(
        &self,
        params: &FinalizationStatusParams,
    ) -> Result<FinalizationStatusResponse, AdminClientError> {
        self.post("finalization-status", params)
    }

    /// `POST /v1/finalize`.
    pub fn finalize(&self, params: &FinalizeParams) -> Result<FinalizeResponse, AdminClientError> {
        self.post("finalize", params)
    }

    /// `POST /v1/prepare`.
    pub fn prepare(&self, params: &PrepareParams) -> Result<PrepareResponse, AdminClientError> {
        self.post("prepare", params)
    }

    /// `POST /v1/cancel-prepare`.
    pub fn cancel_prepare(
        &self,
        params: &PrepareParams,
    ) -> Result<PrepareResponse, AdminClientError> {
        self.post("cancel-prepare", params)
    }

    /// `POST /v1/cancel-finalization`.
    pub fn cancel_finalization(
        &self,
        params: &CancelFinalizationParams,
    ) -> Result<FinalizationStatusResponse, AdminClientError> {
        self.post("cancel-finalization", params)
    }

    /// `GET /v1/migrations`.
    pub fn migrations(&self) -> Result<MigrationsResponse, AdminClientError> {
        self.get("migrations")
    }

    /// `POST /v1/migration-settings`.
    pub fn set_migration_settings(
        &self,
        params: &MigrationSettingsParams,
    ) -> Result<MigrationView, AdminClientError> {
        self.post("migration-settings", params)
    }

    /// Sends `method` (`GET` or `POST`) to `path` on the endpoint's host (a path of its
    /// own, not under `/v1/`: for instance a service's `/cluster/...` routes), with a
    /// JSON `body` for a `POST`, presenting the token; the JSON answer. An error answer
    /// is [`AdminClientError::Api`]; a body of the shape `{"error": {"kind", "message"}}`
    /// gives its message.
    pub fn request_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, AdminClientError> {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let started = std::time::Instant::now();
        let response = if method.eq_ignore_ascii_case("GET") {
            self.agent
                .get(&url)
                .header("Authorization", &self.bearer)
                .call()
        } else {
            let bytes = body.map_or_else(|| b"{}".to_vec(), |b| b.to_string().into_bytes());
            self.agent
                .post(&url)
                .header("Authorization", &self.bearer)
                .header("Content-Type", "application/json")
                .send(&bytes[..])
        };
        self.read(method, &url, started, response)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminClientError> {
        let url = format!("{}/v1/{path}", self.base);
        let started = std::time::Instant::now();
        let response = self
            .agent
            .get(&url)
            .header("Authorization", &self.bearer)
            .call();
        self.read("GET", &url, started, response)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, AdminClientError> {
        let url = format!("{}/v1/{path}", self.base);
        let body = serde_json::to_vec(body).map_err(|e| AdminClientError::Decode {
            endpoint: self.base.clone(),
            status: 0,
            reason: format!("cannot encode the request: {e}"),
        })?;
        let started = std::time::Instant::now();
        let response = self
            .agent
            .post(&url)
            .header("Authorization", &self.bearer)
            .header("Content-Type", "application/json")
            .send(&body[..]);
        self.read("POST", &url, started, response)
    }

    fn read<T: DeserializeOwned>(
        &self,
        method: &str,
        url: &str,
        started: std::time::Instant,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, AdminClientError> {
        let transport = |source: ureq::Error| {
            let endpoint = self.base.clone();
            if never_delivered(&source) {
                tracing::debug!(method, url, error = %source, "admin endpoint unreachable");
                AdminClientError::Transport { endpoint, source }
            } else {
                tracing::debug!(method, url, error = %source, "admin request sent, answer lost");
                AdminClientError::AnswerLost { endpoint, source }
            }
        };
        let mut response = response.map_err(transport)?;
        let status = response.status().as_u16();
        tracing::debug!(
            method,
            url,
            status,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "admin request answered"
        );
        // The head arrived: the request was delivered, whatever breaks now.
        let text = response.body_mut().read_to_string().map_err(|source| {
            AdminClientError::AnswerLost {
                endpoint: self.base.clone(),
                source,
            }
        })?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| AdminClientError::Decode {
                endpoint: self.base.clone(),
                status,
                reason: e.to_string(),
            });
        }
        let other = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let error = v.get("error")?;
                let message = error.get("message")?.as_str()?.to_owned();
                let kind = error.get("kind").and_then(serde_json::Value::as_str);
                Some(kind.map_or_else(|| message.clone(), |k| format!("{k}: {message}")))
            });
        let error = match serde_json::from_str::<ErrorResponse>(&text) {
            Ok(body) => AdminError::from(body),
            Err(_) if other.is_some() => {
                AdminError::new(ErrorCode::Unknown, other.unwrap_or_default())
            }
            Err(_) => AdminError::new(
                ErrorCode::Unknown,
                format!(
                    "HTTP {status} without an error body: {}",
                    text.chars().take(200).collect::<String>()
                ),
            ),
        };
        Err(AdminClientError::Api { status, error })
    }
}

/// Whether `err` proves the request never reached the endpoint's handler: resolving,
/// connecting or the TLS handshake failed (or timed out), the request could not even be
/// built, or the peer answered with something that is not HTTP (plain HTTP to a TLS
/// port; the admin endpoint itself always answers well-formed HTTP, so no handler of
/// it took the request). Anything else (a reset, an early end of stream or a timeout
/// once connected) may come after the endpoint received the request.
fn never_delivered(err: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    use ureq::Timeout;
    match err {
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::InvalidProxyUrl
        | ureq::Error::ConnectProxyFailed(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::Tls(_)
        | ureq::Error::Protocol(_)
        | ureq::Error::Timeout(
            Timeout::Resolve | Timeout::Connect | Timeout::SendRequest | Timeout::SendBody,
        ) => true,
        #[cfg(feature = "tls")]
        ureq::Error::Pem(_) | ureq::Error::Rustls(_) => true,
        // A broken pipe comes only from writing: the request did not leave whole, and
        // the endpoint acts on none but whole requests (the same for a send timeout).
        ureq::Error::Io(e) => {
            matches!(
                e.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::BrokenPipe
            ) || is_tls_failure(e)
        }
        _ => false,
    }
}

/// A TLS failure (rustls reports it inside an I/O error): the endpoint refused the
/// session (an unknown CA, a refused client certificate, TLS to a plain port), so it
/// never acts on a request sent over it.
#[cfg(feature = "tls")]
fn is_tls_failure(e: &std::io::Error) -> bool {
    matches!(e.get_ref(), Some(inner) if inner.is::<rustls::Error>())
}

#[cfg(not(feature = "tls"))]
fn is_tls_failure(_: &std::io::Error) -> bool {
    false
}

impl fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminClient")
            .field("endpoint", &self.base)
            .finish_non_exhaustive()
    }
}
