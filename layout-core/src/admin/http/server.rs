//! The admin API's routes on the shared HTTP stack ([`crate::http`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::HttpConfig;
use crate::admin::types::{AdminError, ErrorCode};
use crate::admin::AdminService;
use crate::http::{
    blocking, json_response, read_body, require_bearer, Endpoint, ErrorFormat, Refusal,
};

/// The admin endpoint: serves an [`AdminService`] over HTTP/JSON until shut down.
///
/// Bound when started (so the address is known and connectable at once); shut down
/// with [`shutdown`](Self::shutdown) or by dropping it: stops accepting, then waits for
/// the requests being served (bounded by the grace period).
pub struct AdminServer {
    endpoint: Endpoint,
}

impl AdminServer {
    /// Binds `config`'s address and starts serving `service`.
    #[allow(clippy::needless_pass_by_value)] // the endpoint holds the service from here on
    pub fn start(
        service: Arc<AdminService>,
        config: HttpConfig,
    ) -> Result<Self, crate::http::EndpointError> {
        let router = routes(&service, &config);
        let endpoint = Endpoint::start(
            router,
            config.endpoint.with_error_format(admin_error_format),
        )?;
        Ok(Self { endpoint })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// `http://<address>` (`https://` with TLS), for
    /// [`AdminClient::new`](super::AdminClient::new).
    pub fn url(&self) -> String {
        self.endpoint.url()
    }

    /// Stops accepting connections and waits for the requests being served.
    pub fn shutdown(self) {
        self.endpoint.shutdown();
    }
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The admin routes of `service`, behind `config`'s token, plus `/metrics` (behind the
/// token too unless the config opens it). A component that serves more on the same
/// endpoint merges its own routes into this router.
pub fn admin_routes(service: &Arc<AdminService>, config: &HttpConfig) -> Router {
    routes(service, config)
}

fn routes(service: &Arc<AdminService>, config: &HttpConfig) -> Router {
    let format: ErrorFormat = admin_error_format;
    let s = Arc::clone(service);
    let api = Router::new()
        .route(
            "/v1/status",
            get({
                let s = Arc::clone(&s);
                move || call(Arc::clone(&s), AdminService::status)
            }),
        )
        .route(
            "/v1/features",
            get({
                let s = Arc::clone(&s);
                move || call(Arc::clone(&s), |s| Ok(s.features()))
            }),
        )
        .route(
            "/v1/finalization-status",
            get({
                let s = Arc::clone(&s);
                move || call(Arc::clone(&s), |s| s.finalization_status(None))
            })
            .post({
                let s = Arc::clone(&s);
                move |req: Request| {
                    call_with_body(Arc::clone(&s), req, "finalization-status", |s, p| {
                        s.finalization_status(Some(&p))
                    })
                }
            }),
        )
        .route(
            "/v1/finalize",
            post({
                let s = Arc::clone(&s);
                move |req: Request| {
                    call_with_body(Arc::clone(&s), req, "finalize", |s, p| s.finalize(&p))
                }
            }),
        )
        .route(
            "/v1/prepare",
            post({
                let s = Arc::clone(&s);
                move |req: Request| {
                    call_with_body(Arc::clone(&s), req, "prepare", |s, p| s.prepare(&p))
                }
            }),
        )
        .route(
            "/v1/cancel-finalization",
            post({
                let s = Arc::clone(&s);
                move |req: Request| {
                    call_with_body(Arc::clone(&s), req, "cancel-finalization", |s, p| {
                        s.cancel_finalization(&p)
                    })
                }
            }),
        )
        .route(
            "/v1/migrations",
            get({
                let s = Arc::clone(&s);
                move || call(Arc::clone(&s), |s| Ok(s.migrations()))
            }),
        )
        .route(
            "/v1/migration-settings",
            post({
                let s = Arc::clone(&s);
                move |req: Request| {
                    call_with_body(Arc::clone(&s), req, "migration-settings", |s, p| {
                        s.set_migration_settings(&p)
                    })
                }
            }),
        )
        .route(
            "/v1/cancel-prepare",
            post({
                let s = Arc::clone(&s);
                move |req: Request| {
                    call_with_body(Arc::clone(&s), req, "cancel-prepare", |s, p| {
                        s.cancel_prepare(&p)
                    })
                }
            }),
        );
    // An explicit fallback, so an unknown path is behind the token too.
    let api = api.fallback(|| async { axum::http::StatusCode::NOT_FOUND });
    let mut registry = crate::http::Registry::default();
    crate::admin::AdminMetrics::register(service, &mut registry);
    let metrics = crate::http::metrics_router(Arc::new(registry));
    let api = require_bearer(api, config.token.clone(), format);
    if config.open_metrics {
        metrics.merge(api)
    } else {
        require_bearer(metrics, config.token.clone(), format).merge(api)
    }
}

/// Runs `op` on the blocking pool and answers its result.
async fn call<T, Op>(service: Arc<AdminService>, op: Op) -> Response
where
    T: Serialize + Send + 'static,
    Op: FnOnce(&AdminService) -> Result<T, AdminError> + Send + 'static,
{
    match blocking(move || op(&service)).await {
        Ok(result) => reply(result),
        Err(refusal) => admin_error_response(&refusal_error(&refusal)),
    }
}

/// Reads and decodes the body, then runs `op` on the blocking pool.
async fn call_with_body<P, T, Op>(
    service: Arc<AdminService>,
    request: Request,
    what: &'static str,
    op: Op,
) -> Response
where
    P: DeserializeOwned + Send + 'static,
    T: Serialize + Send + 'static,
    Op: FnOnce(&AdminService, P) -> Result<T, AdminError> + Send + 'static,
{
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refusal) => return admin_error_response(&refusal_error(&refusal)),
    };
    let params: P = match serde_json::from_slice(&body) {
        Ok(params) => params,
        Err(e) => {
            return admin_error_response(&AdminError::new(
                ErrorCode::BadRequest,
                format!("the {what} request body is not valid: {e}"),
            ))
        }
    };
    match blocking(move || op(&service, params)).await {
        Ok(result) => reply(result),
        Err(refusal) => admin_error_response(&refusal_error(&refusal)),
    }
}

fn refusal_error(refusal: &Refusal) -> AdminError {
    let code = match refusal {
        Refusal::Unauthorized(_) => ErrorCode::Unauthorized,
        Refusal::Busy => ErrorCode::Busy,
        Refusal::BodyTooLarge { .. } => ErrorCode::PayloadTooLarge,
        Refusal::BodyTimeout => ErrorCode::RequestTimeout,
        Refusal::BadRequest(_) => ErrorCode::BadRequest,
        Refusal::NotFound { .. } => ErrorCode::NotFound,
        Refusal::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
        Refusal::Internal(_) => ErrorCode::Internal,
    };
    AdminError::new(code, refusal.message())
}

/// The admin API's error body ([`ErrorResponse`](crate::admin::ErrorResponse)) for a
/// refusal of the HTTP stack: `{"api_version":1,"error":{"code":"unauthorized","message":"..."}}`.
pub fn admin_error_format(refusal: &Refusal) -> Response {
    admin_error_response(&refusal_error(refusal))
}

/// An [`AdminError`] as a response: its HTTP status and its JSON body, never cached.
pub fn admin_error_response(error: &AdminError) -> Response {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &error.to_response());
    if error.code() == ErrorCode::Unauthorized {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"layout\""),
        );
    }
    response
}

fn reply<T: Serialize>(result: Result<T, AdminError>) -> Response {
    match result {
        Ok(value) => json_response(axum::http::StatusCode::OK, &value),
        Err(e) => {
            if e.http_status() >= 500 {
                tracing::warn!(code = e.code().as_str(), error = %e.message(), "admin request failed");
            }
            admin_error_response(&e)
        }
    }
}
