//! The kvstore's HTTP/JSON data API: an axum router served by the shared HTTP stack
//! ([`layout_core::http::Endpoint`]).
//!
//! hyper parses every request (strict HTTP/1.1: a malformed request line, header or
//! `Content-Length` is a bare 400 and the connection closes; a head over
//! [`MAX_HEAD_BYTES`] is 431); the stack bounds the body ([`KvOptions::max_body_bytes`],
//! 413), the time to send the head and the body ([`KvOptions::request_timeout`]), the
//! connections ([`MAX_CONNECTIONS`]) and the requests in handlers
//! ([`MAX_CONCURRENT_REQUESTS`], 503 beyond). Store calls run on the endpoint's blocking
//! pool. Every error a handler or the stack answers is the kvstore's JSON error body,
//! `{"error": {"kind", "message", "feature"?}}`; bad input never panics a handler.
//!
//! Keys are the rest of the path after `/kv/` or `/cas/` (so they may contain `/`),
//! percent-decoded by axum's [`Path`] extractor; query values are decoded by [`Query`].
//!
//! Lists (`GET /kv`, `GET /by-value`) answer one page at a time, `{"items"|"keys": [...],
//! "next": cursor|null}`, each read by a redb range that starts after the cursor and
//! stops at the page's limit or byte budget, so a list's memory is bounded by the page,
//! not by the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use layout_core::http::axum::extract::rejection::PathRejection;
use layout_core::http::axum::extract::{FromRequestParts, Path, Query, Request, State};
use layout_core::http::axum::http::request::Parts;
use layout_core::http::axum::http::{header, HeaderValue, StatusCode, Uri};
use layout_core::http::axum::response::{IntoResponse, Response};
use layout_core::http::axum::routing::{any, get, post};
use layout_core::http::axum::Router;
use layout_core::http::{
    blocking, json_response, metrics_router, read_body, require_bearer, BearerToken, Endpoint,
    EndpointConfig, EndpointError, Refusal, Registry, ServerTls,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::error::KvError;
use super::store::{KvOptions, Shared, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

/// The largest request head (request line and headers) accepted, in bytes (431 beyond).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections open at once; at the limit the oldest one is closed to admit a new one.
pub const MAX_CONNECTIONS: usize = 256;
/// Requests in handlers at once; beyond it, 503 (kind `overloaded`).
pub const MAX_CONCURRENT_REQUESTS: usize = 64;

/// How the data API is served beyond what [`KvOptions`] says: TLS, and what `/metrics`
/// serves behind which token. The node sets them (`KvStore::open_with`); a store opened
/// with `KvStore::open` serves plain HTTP and open, empty metrics.
#[derive(Clone, Default)]
pub(crate) struct DataApiSettings {
    /// Serve TLS with this certificate (requiring client certificates if it names a CA).
    pub(crate) tls: Option<ServerTls>,
    /// What `/metrics` serves.
    pub(crate) metrics: Arc<MetricsSlot>,
}

/// What `GET /metrics` on the data API serves: the metrics the node installs once its
/// admin service exists (after the store, and so this endpoint, started), behind the
/// node's admin token when it has one; empty until then and after
/// [`clear`](Self::clear).
pub(crate) struct MetricsSlot {
    token: Option<BearerToken>,
    router: Mutex<Router>,
}

impl Default for MetricsSlot {
    fn default() -> Self {
        Self::new(None)
    }
}

impl MetricsSlot {
    /// Empty metrics, behind `token` if any.
    pub(crate) fn new(token: Option<BearerToken>) -> Self {
        let slot = Self {
            token,
            router: Mutex::new(Router::new()),
        };
        slot.clear();
        slot
    }

    /// Serves `registry` from now on.
    pub(crate) fn serve(&self, registry: Registry) {
        *self.router.lock() = self.guarded(metrics_router(Arc::new(registry)));
    }

    /// Serves empty metrics again, letting go of what the registry's collectors held
    /// (the node's admin service, and through it the store).
    pub(crate) fn clear(&self) {
        *self.router.lock() = self.guarded(metrics_router(Arc::new(Registry::default())));
    }

    fn guarded(&self, metrics: Router) -> Router {
        match &self.token {
            Some(token) => require_bearer(metrics, token.clone(), kv_error_format),
            None => metrics,
        }
    }

    fn router(&self) -> Router {
        self.router.lock().clone()
    }
}

/// The data API's endpoint.
pub(crate) struct HttpServer {
    endpoint: Endpoint,
}

impl HttpServer {
    /// Binds `options.listen` and serves `shared` with `settings`.
    pub(crate) fn start(
        shared: Arc<Shared>,
        options: &KvOptions,
        settings: &DataApiSettings,
    ) -> Result<Self, KvError> {
        let mut config = EndpointConfig::new(options.listen)
            .with_name("kvstore")
            .with_header_timeout(options.request_timeout)
            .with_body_timeout(options.request_timeout)
            .with_max_head_bytes(MAX_HEAD_BYTES)
            .with_max_body_bytes(options.max_body_bytes)
            .with_max_connections(MAX_CONNECTIONS)
            .with_max_concurrent_requests(MAX_CONCURRENT_REQUESTS)
            .with_error_format(kv_error_format);
        if let Some(tls) = settings.tls.clone() {
            config = config.with_tls(tls);
        }
        let endpoint = Endpoint::start(routes(shared, settings), config).map_err(|e| match e {
            EndpointError::Bind { addr, source } => KvError::Listen { addr, source },
            other => KvError::HttpApi(Box::new(other)),
        })?;
        Ok(Self { endpoint })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// Stops accepting connections, lets the requests in flight finish and joins the
    /// endpoint's thread: afterwards nothing of the server holds the store.
    pub(crate) fn shutdown(self) {
        self.endpoint.shutdown();
    }
}

fn routes(shared: Arc<Shared>, settings: &DataApiSettings) -> Router {
    type S = State<Arc<Shared>>;
    let data = Router::new()
        .route(
            "/kv/{*key}",
            get(|State(s): S, Key(key): Key| kv_get(s, key))
                .put(|State(s): S, Key(key): Key, req: Request| kv_put(s, key, req))
                .delete(|State(s): S, Key(key): Key, req: Request| kv_delete(s, key, req)),
        )
        // An empty key: the store refuses it (400), as it refuses an over-long one.
        .route(
            "/kv/",
            get(|State(s): S| kv_get(s, String::new()))
                .put(|State(s): S, req: Request| kv_put(s, String::new(), req))
                .delete(|State(s): S, req: Request| kv_delete(s, String::new(), req)),
        )
        .route("/kv", get(list))
        .route(
            "/cas/{*key}",
            post(|State(s): S, Key(key): Key, req: Request| cas(s, key, req)),
        )
        .route("/by-value", get(by_value))
        .route("/changes", get(super::copy::http::changes))
        .route("/changes/purge", post(super::copy::http::purge))
        .route("/copy", post(super::copy::http::copy))
        .route(
            "/copy-marks/{*name}",
            get(super::copy::http::get_mark).put(super::copy::http::put_mark),
        )
        .route("/status", get(status))
        .route("/cluster/", any(cluster))
        .route("/cluster/{*rest}", any(cluster))
        .with_state(shared);
    let metrics = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&settings.metrics));
    data.merge(metrics)
}

// ---------------------------------------------------------------------------------------
// Answers.

/// The kvstore's error body.
fn error_body(kind: &str, message: &str, feature: Option<&str>) -> Value {
    let mut error = json!({"kind": kind, "message": message});
    if let Some(feature) = feature {
        error["feature"] = json!(feature);
    }
    json!({ "error": error })
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    json_response(status, &error_body(kind, &message.into(), None))
}

pub(super) fn bad_request(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub(super) fn ok(value: &impl Serialize) -> Response {
    json_response(StatusCode::OK, value)
}

pub(super) fn kv_error(e: &KvError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() && !matches!(e, KvError::Prepared(_)) {
        tracing::warn!(error = %e, "kvstore request failed");
    }
    json_response(
        status,
        &error_body(e.kind(), &e.to_string(), e.not_finalized_feature()),
    )
}

/// The stack's own refusals (no route, wrong method, body too large or too slow, too
/// many requests, a handler's panic) in the kvstore's error body.
fn kv_error_format(refusal: &Refusal) -> Response {
    let (kind, message) = match refusal {
        Refusal::NotFound { path } => ("not_found", format!("no such path {path:?}")),
        Refusal::MethodNotAllowed {
            method,
            path,
            allow,
        } => (
            "method_not_allowed",
            format!("{method} is not allowed on {path:?}; it takes {allow}"),
        ),
        Refusal::Unauthorized(message) => ("unauthorized", message.clone()),
        Refusal::Busy => ("overloaded", refusal.message()),
        Refusal::BodyTooLarge { .. } => ("too_large", refusal.message()),
        Refusal::BodyTimeout => ("timeout", refusal.message()),
        Refusal::BadRequest(message) => ("bad_request", message.clone()),
        _ => ("internal", refusal.message()),
    };
    json_response(refusal.status(), &error_body(kind, &message, None))
}

/// Runs `work` (store calls) on the endpoint's blocking pool.
pub(super) async fn run<W>(work: W) -> Response
where
    W: FnOnce() -> Response + Send + 'static,
{
    blocking(work)
        .await
        .unwrap_or_else(|refusal| refusal.render(kv_error_format))
}

/// Reads the whole body and decodes it as JSON.
pub(super) async fn json_body<T: for<'de> Deserialize<'de>>(
    request: Request,
) -> Result<T, Response> {
    let body = read_body(request)
        .await
        .map_err(|refusal| refusal.render(kv_error_format))?;
    serde_json::from_slice(&body).map_err(|e| bad_request(format!("malformed JSON body: {e}")))
}

// ---------------------------------------------------------------------------------------
// Keys and query parameters.

/// Refuses a `%` not followed by two hex digits. The extractors pass such a sequence
/// through as it is, so `/kv/%zz` would name the key `%zz` while a client meant
/// something else; the kvstore refuses it instead.
fn check_escapes(raw: &str) -> Result<(), String> {
    let malformed = raw.split('%').skip(1).any(|rest| {
        !rest
            .as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        Err(format!("bad percent-encoding in {raw:?}"))
    } else {
        Ok(())
    }
}

/// The key of `/kv/{key}` or `/cas/{key}`: the rest of the path (it may contain `/`),
/// percent-decoded by axum's [`Path`]; refused (400) when an escape is malformed or the
/// key is not UTF-8.
struct Key(String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        check_escapes(parts.uri.path()).map_err(bad_request)?;
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) => Ok(Key(key)),
            Err(e) => Err(key_rejection(&e)),
        }
    }
}

fn key_rejection(e: &PathRejection) -> Response {
    bad_request(format!("the key is not valid: {}", e.body_text()))
}

/// Refuses a query string whose percent-decoded bytes are not UTF-8: the extractor would
/// replace them with U+FFFD, so `prefix=%FF` would silently name another prefix.
fn check_utf8_query(raw: &str) -> Result<(), String> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    match std::str::from_utf8(&decoded) {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("the query string {raw:?} does not decode to UTF-8")),
    }
}

/// Decodes the query string into `T` (after [`check_escapes`] and
/// [`check_utf8_query`]); the error is a 400's message.
pub(super) fn query<T: for<'de> Deserialize<'de>>(uri: &Uri) -> Result<T, String> {
    check_escapes(uri.query().unwrap_or_default())?;
    check_utf8_query(uri.query().unwrap_or_default())?;
    Query::<T>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| format!("bad query string: {}", e.body_text()))
}

// ---------------------------------------------------------------------------------------
// Handlers.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: String,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    expected: Option<String>,
    value: String,
}

/// `GET /kv?prefix=P&after=K&limit=N`: one page of a list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /by-value?value=V&after=K&limit=N`: one page of the keys holding a value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByValueParams {
    value: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// A page's `limit`: [`DEFAULT_LIST_LIMIT`] when absent; the store checks its range.
/// The error is a 400's message.
pub(super) fn page_limit(limit: Option<&str>) -> Result<usize, String> {
    match limit {
        None => Ok(DEFAULT_LIST_LIMIT),
        Some(text) => text.parse().map_err(|_| {
            format!("limit={text:?} is not a number of items (1 to {MAX_LIST_LIMIT})")
        }),
    }
}

async fn kv_put(shared: Arc<Shared>, key: String, request: Request) -> Response {
    let body: PutBody = match json_body(request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    run(move || {
        let result = match body.ttl_ms {
            Some(ms) => shared.put_with_ttl(&key, &body.value, Duration::from_millis(ms)),
            None => shared.put(&key, &body.value),
        };
        match result {
            Ok(index) => ok(&json!({ "applied_index": index })),
            Err(e) => kv_error(&e),
        }
    })
    .await
}

async fn kv_get(shared: Arc<Shared>, key: String) -> Response {
    run(move || match shared.get(&key) {
        Ok(Some(entry)) => ok(&entry),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no value for key {key:?}"),
        ),
        Err(e) => kv_error(&e),
    })
    .await
}

async fn kv_delete(shared: Arc<Shared>, key: String, request: Request) -> Response {
    // A write is applied only once its request arrived whole: a body it does not use
    // must still arrive as declared.
    if let Err(refusal) = read_body(request).await {
        return refusal.render(kv_error_format);
    }
    run(move || match shared.delete(&key) {
        Ok((deleted, index)) => ok(&json!({ "deleted": deleted, "applied_index": index })),
        Err(e) => kv_error(&e),
    })
    .await
}

async fn cas(shared: Arc<Shared>, key: String, request: Request) -> Response {
    let body: CasBody = match json_body(request).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    run(
        move || match shared.compare_and_swap(&key, body.expected.as_deref(), &body.value) {
            Ok((swapped, index)) => ok(&json!({ "swapped": swapped, "applied_index": index })),
            Err(e) => kv_error(&e),
        },
    )
    .await
}

async fn list(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let params: ListParams = match query(&uri) {
        Ok(params) => params,
        Err(message) => return bad_request(message),
    };
    let limit = match page_limit(params.limit.as_deref()) {
        Ok(limit) => limit,
        Err(message) => return bad_request(message),
    };
    run(
        move || match shared.list_page(&params.prefix, params.after.as_deref(), limit) {
            Ok(page) => ok(&page),
            Err(e) => kv_error(&e),
        },
    )
    .await
}

async fn by_value(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let params = match query::<ByValueParams>(&uri) {
        Ok(params) => params,
        Err(message) => return bad_request(message),
    };
    let Some(value) = params.value else {
        return bad_request("missing query parameter value");
    };
    let limit = match page_limit(params.limit.as_deref()) {
        Ok(limit) => limit,
        Err(message) => return bad_request(message),
    };
    run(
        move || match shared.find_by_value_page(&value, params.after.as_deref(), limit) {
            Ok(page) => ok(&page),
            Err(e) => kv_error(&e),
        },
    )
    .await
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    run(move || match shared.status() {
        Ok(status) => ok(&status),
        Err(e) => kv_error(&e),
    })
    .await
}

/// `/cluster/...`: handed unchanged (method, the raw rest of the path, every
/// `Authorization` value, the body) to the coordinator's routes, on a coordinator node.
async fn cluster(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().as_str().to_owned();
    let rest = request
        .uri()
        .path()
        .strip_prefix("/cluster/")
        .unwrap_or_default()
        .to_owned();
    let authorization: Result<Vec<String>, _> = request
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| String::from_utf8(v.as_bytes().to_vec()))
        .collect();
    let Ok(authorization) = authorization else {
        return bad_request("the Authorization header is not UTF-8");
    };
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(refusal) => return refusal.render(kv_error_format),
    };
    let Some(routes) = shared.cluster.lock().clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_coordinator",
            "this node does not run the cluster coordinator; ask the coordinator node",
        );
    };
    run(move || {
        let (status, body) = routes.route(&method, &rest, &authorization, &body);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json_response(status, &body);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    })
    .await
}

/// `GET /metrics`: handed to the node's metrics router (which checks the token, if any).
async fn metrics(State(slot): State<Arc<MetricsSlot>>, request: Request) -> Response {
    let Ok(response) = slot.router().oneshot(request).await;
    response.into_response()
}
