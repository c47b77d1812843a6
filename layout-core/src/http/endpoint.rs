//! [`Endpoint`]: an axum router served by hyper on a runtime thread the endpoint owns.

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use axum_server::Handle;
use hyper_util::rt::TokioTimer;
use tower::ServiceBuilder;

use super::connections::{ConnMark, Connections, TrackingAcceptor};
use super::refusal::{plain_error_format, ErrorFormat, Refusal};
use super::token::BearerToken;
use super::EndpointError;

/// How an [`Endpoint`] listens and what it tolerates.
///
/// ```
/// use std::time::Duration;
/// use layout_core::http::EndpointConfig;
///
/// let config = EndpointConfig::loopback(0)
///     .with_header_timeout(Duration::from_secs(2))
///     .with_max_body_bytes(16 * 1024);
/// assert!(config.bind_addr().ip().is_loopback());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    pub(crate) name: String,
    pub(crate) bind: SocketAddr,
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) max_head_bytes: usize,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) plaintext_beyond_loopback: bool,
    pub(crate) error_format: ErrorFormat,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<super::tls::ServerTls>,
}

/// The default time a client has to send its request head, and then its body.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl EndpointConfig {
    /// Listen on `addr`, with the defaults: the request head within 5 s and the body
    /// within 5 s more ([`DEFAULT_REQUEST_TIMEOUT`]), a 16 KiB head, a 64 KiB body, 256
    /// connections (the oldest one that has not authenticated is closed to admit a new
    /// one), 16 requests in handlers at once (503 beyond), 5 s for requests in flight to
    /// finish at shutdown, errors as [`plain_error_format`] bodies.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            name: "endpoint".to_owned(),
            bind: addr,
            header_timeout: DEFAULT_REQUEST_TIMEOUT,
            body_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_head_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            max_connections: 256,
            max_concurrent_requests: 16,
            shutdown_grace: Duration::from_secs(5),
            plaintext_beyond_loopback: true,
            error_format: plain_error_format,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Listen on `127.0.0.1:port` (0: a free port; [`Endpoint::local_addr`] tells which).
    pub fn loopback(port: u16) -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// A name for logs and the runtime thread (`admin`, `cluster link`, ...).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Where to listen.
    #[must_use]
    pub fn with_bind_addr(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// How long a client has to send a whole request head, from the moment the
    /// connection waits for one (a slow or silent client is disconnected after it).
    #[must_use]
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a client has to send a request body once its head arrived (408 after).
    #[must_use]
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// The largest request head accepted (431 beyond); at least 8 KiB.
    #[must_use]
    pub fn with_max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes.max(8 * 1024);
        self
    }

    /// The largest request body accepted (413 beyond).
    #[must_use]
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How many connections may be open at once. At the limit, the oldest connection
    /// that has not yet presented a valid token is closed to admit the new one; only
    /// when every open connection has authenticated is a new one refused. At least 1.
    #[must_use]
    pub fn with_max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// How many requests may be in handlers at once (503 beyond). At least 1.
    #[must_use]
    pub fn with_max_concurrent_requests(mut self, requests: usize) -> Self {
        self.max_concurrent_requests = requests.max(1);
        self
    }

    /// How long [`Endpoint::shutdown`] lets requests in flight finish.
    #[must_use]
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Refuse to start on an address other than loopback unless TLS is configured
    /// (an endpoint carrying secrets between machines). By default plain HTTP beyond
    /// loopback is allowed with a warning in the log.
    #[must_use]
    pub fn require_tls_beyond_loopback(mut self) -> Self {
        self.plaintext_beyond_loopback = false;
        self
    }

    /// How the stack's own refusals are written (default: admin API error bodies).
    #[must_use]
    pub fn with_error_format(mut self, format: ErrorFormat) -> Self {
        self.error_format = format;
        self
    }

    /// Serve TLS with this certificate (and, if it names a CA, require client
    /// certificates signed by it).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn with_tls(mut self, tls: super::tls::ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether TLS is configured.
    pub fn tls_enabled(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls.is_some()
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }

    /// The address to listen on.
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
    }

    /// The time a client has to send its request head.
    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// The error format.
    pub fn error_format(&self) -> ErrorFormat {
        self.error_format
    }
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("bind", &self.bind)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_head_bytes", &self.max_head_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("tls", &self.tls_enabled())
            .finish_non_exhaustive()
    }
}

/// An HTTP endpoint: serves an axum [`Router`] until shut down, on a runtime thread of
/// its own, so callers stay synchronous.
///
/// Bound when started (the address is known and connectable at once). What protects it:
///
/// - hyper parses every request (strictly: a malformed request line, header or
///   `Content-Length` is a bare 400 and the connection is closed) and enforces the head
///   size (431) and the header read timeout (the connection is closed);
/// - the body must arrive within the body timeout (408) and fit the limit (413);
/// - connections are cheap (no thread each) and capped; at the cap, the oldest
///   connection that has not authenticated is closed, so connections that never send a
///   valid token cannot keep anyone out;
/// - at most so many requests are in handlers at once (503 beyond); handlers that block
///   run on the runtime's blocking pool ([`blocking`]), never on the thread that
///   accepts and reads connections.
///
/// [`shutdown`](Self::shutdown) (or dropping it) stops accepting, lets the requests in
/// flight finish (bounded by the grace period), and joins the thread: afterwards nothing
/// of the endpoint holds what the router held.
pub struct Endpoint {
    addr: SocketAddr,
    name: String,
    tls: bool,
    handle: Handle<SocketAddr>,
    connections: Arc<Connections>,
    grace: Duration,
    thread: Option<JoinHandle<()>>,
}

/// What the stack's layers need at request time.
#[derive(Clone)]
struct StackState {
    format: ErrorFormat,
    max_body: usize,
}

impl Endpoint {
    /// Binds `config`'s address and serves `router`.
    #[allow(clippy::needless_pass_by_value)] // the endpoint takes its configuration
    pub fn start(router: Router, config: EndpointConfig) -> Result<Self, EndpointError> {
        let bind_err = |source| EndpointError::Bind {
            addr: config.bind,
            source,
        };
        if !config.bind.ip().is_loopback() && !config.tls_enabled() {
            if !config.plaintext_beyond_loopback {
                return Err(EndpointError::PlaintextBeyondLoopback {
                    name: config.name.clone(),
                    addr: config.bind,
                });
            }
            tracing::warn!(endpoint = %config.name, addr = %config.bind,
                "listening beyond loopback without TLS: tokens and data cross the network in the clear");
        }
        let listener = TcpListener::bind(config.bind).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("layout-{}-blocking", config.name.replace(' ', "-")))
            .max_blocking_threads(config.max_concurrent_requests + 2)
            .build()
            .map_err(EndpointError::Spawn)?;

        let handle = Handle::new();
        let connections = Connections::new(config.max_connections);
        let app = stack(router, &config);
        let acceptor = TrackingAcceptor {
            connections: Arc::clone(&connections),
        };
        let server = {
            let _guard = runtime.enter();
            let server = axum_server::from_tcp(listener).map_err(bind_err)?;
            server.handle(handle.clone())
        };
        let tls = config.tls_enabled();
        let name = config.name.clone();
        let thread_name = format!("layout-{}", config.name.replace(' ', "-"));
        let make = app.into_make_service();
        #[cfg(feature = "tls")]
        let serving: Serving = match &config.tls {
            Some(server_tls) => {
                Box::pin(http1(server.acceptor(server_tls.acceptor(acceptor)), &config).serve(make))
            }
            None => Box::pin(http1(server.acceptor(acceptor), &config).serve(make)),
        };
        #[cfg(not(feature = "tls"))]
        let serving: Serving = Box::pin(http1(server.acceptor(acceptor), &config).serve(make));
        let thread = spawn(thread_name, runtime, serving, name.clone())?;
        tracing::info!(endpoint = %name, %addr, tls, "listening");
        Ok(Self {
            addr,
            name,
            tls,
            handle,
            connections,
            grace: config.shutdown_grace,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>` (or `https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Whether it serves TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// How many connections are open.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// Stops accepting connections, lets the requests in flight finish (within the
    /// grace period) and joins the endpoint's thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.handle.graceful_shutdown(Some(self.grace));
        let _ = thread.join();
        tracing::info!(endpoint = %self.name, addr = %self.addr, "stopped");
    }
}

/// HTTP/1.1 only (an HTTP/2 preface is refused like any malformed request), with the
/// header read timeout, the head limit and keep-alive. Called after the acceptor is set:
/// setting an acceptor resets axum-server's protocol choice.
fn http1<Acc>(
    server: axum_server::Server<SocketAddr, Acc>,
    config: &EndpointConfig,
) -> axum_server::Server<SocketAddr, Acc> {
    let mut server = server.http1_only();
    server
        .http_builder()
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_head_bytes)
        .max_headers(64)
        .keep_alive(true);
    server
}

/// The serving future of an endpoint, whatever its acceptor (plain or TLS).
type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

fn spawn(
    thread_name: String,
    runtime: tokio::runtime::Runtime,
    serve: Serving,
    name: String,
) -> Result<JoinHandle<()>, EndpointError> {
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            if let Err(e) = runtime.block_on(serve) {
                tracing::error!(endpoint = %name, error = %e, "the endpoint stopped serving");
            }
            // Dropping the runtime waits for the handlers still running on its blocking
            // pool, so nothing they hold outlives the endpoint's thread.
            drop(runtime);
        })
        .map_err(EndpointError::Spawn)
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("open_connections", &self.connections.open())
            .finish_non_exhaustive()
    }
}

/// The layers every endpoint puts around its router: error bodies in the endpoint's
/// format (around the whole router, so they see its final answers, `Allow` headers
/// included), and on every route a body size limit and timeout, one cap on requests in
/// handlers shared by all routes, and panics as 500.
fn stack(router: Router, config: &EndpointConfig) -> Router {
    let state = StackState {
        format: config.error_format,
        max_body: config.max_body_bytes,
    };
    let format = config.error_format;
    let per_route = ServiceBuilder::new()
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            move |_: Box<dyn std::any::Any + Send>| {
                Refusal::Internal("the request handler panicked; see the log".to_owned())
                    .render(format)
            },
        ))
        .layer(axum::error_handling::HandleErrorLayer::new(
            move |_: tower::BoxError| async move { Refusal::Busy.render(format) },
        ))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.max_concurrent_requests,
        ))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            config.body_timeout,
        ))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            config.max_body_bytes,
        ));
    let whole = tower::Layer::layer(
        &middleware::from_fn_with_state(state, refusals_in_format),
        router.layer(per_route),
    );
    Router::new().fallback_service(whole)
}

/// Rewrites bare error answers of the router and of tower layers (404, 405, 413, ...
/// without a JSON body) as [`Refusal`]s in the endpoint's format.
async fn refusals_in_format(
    State(state): State<StackState>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(BodyLimit(state.max_body));
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let mut response = if is_json {
        response
    } else {
        in_format(status, &response, &method, path, &state)
    };
    // A refused body may be left partly unread on the connection; the server closes it
    // after answering, so say so, and a client never reuses it for its next request.
    if matches!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
    ) {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The [`Refusal`] for a bare error answer of the router or of a tower layer.
fn in_format(
    status: StatusCode,
    response: &Response,
    method: &axum::http::Method,
    path: String,
    state: &StackState,
) -> Response {
    let refusal = match status {
        StatusCode::NOT_FOUND => Refusal::NotFound { path },
        StatusCode::METHOD_NOT_ALLOWED => Refusal::MethodNotAllowed {
            method: method.to_string(),
            path,
            allow: response
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        },
        StatusCode::PAYLOAD_TOO_LARGE => Refusal::BodyTooLarge {
            limit: state.max_body,
        },
        StatusCode::REQUEST_TIMEOUT => Refusal::BodyTimeout,
        StatusCode::SERVICE_UNAVAILABLE => Refusal::Busy,
        s if s.is_client_error() => Refusal::BadRequest(format!(
            "the request was refused: {}",
            s.canonical_reason().unwrap_or("client error")
        )),
        _ => Refusal::Internal("the request failed; see the log".to_owned()),
    };
    refusal.render(state.format)
}

/// Puts `router` behind a bearer token: a request without exactly one
/// `Authorization: Bearer <token>` header carrying `token` is refused with 401 (in
/// `format`) before any handler runs, its routes' 405 answers and its fallback included
/// (give the router a fallback first, so an unknown path reveals nothing without the
/// token either); a request that passes marks its connection as authenticated (so it is
/// never closed to make room for another).
pub fn require_bearer(router: Router, token: BearerToken, format: ErrorFormat) -> Router {
    let guard = Arc::new(Guard { token, format });
    router.layer(middleware::from_fn_with_state(guard, check_bearer))
}

struct Guard {
    token: BearerToken,
    format: ErrorFormat,
}

async fn check_bearer(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    match authorize(req.headers(), &guard.token) {
        Ok(()) => {
            if let Some(mark) = req.extensions().get::<ConnMark>() {
                mark.authenticated();
            }
            next.run(req).await
        }
        Err(message) => {
            tracing::debug!(path = %req.uri().path(), reason = message, "request refused: not authorized");
            Refusal::Unauthorized(message.to_owned()).render(guard.format)
        }
    }
}

fn authorize(headers: &axum::http::HeaderMap, token: &BearerToken) -> Result<(), &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err("a bearer token is required: send Authorization: Bearer <token>");
    };
    let Some(presented) = value
        .to_str()
        .ok()
        .and_then(super::token::bearer_credentials)
    else {
        return Err("the Authorization header must use the Bearer scheme");
    };
    if token.matches(presented) {
        Ok(())
    } else {
        Err("the bearer token is wrong")
    }
}

/// The body size limit of the endpoint serving a request (a request extension).
#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// Reads a whole request body within the endpoint's limits: a body over the size limit
/// is [`Refusal::BodyTooLarge`], one that does not arrive in time
/// [`Refusal::BodyTimeout`], one cut short [`Refusal::BadRequest`].
pub async fn read_body(request: Request) -> Result<axum::body::Bytes, Refusal> {
    let limit = request
        .extensions()
        .get::<BodyLimit>()
        .map_or(usize::MAX, |l| l.0);
    axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .map_err(|e| body_refusal(&e, limit))
}

fn body_refusal(error: &axum::Error, limit: usize) -> Refusal {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return Refusal::BodyTooLarge { limit };
        }
        if e.is::<tower_http::timeout::TimeoutError>() {
            return Refusal::BodyTimeout;
        }
        source = e.source();
    }
    Refusal::BadRequest(format!("the request body could not be read: {error}"))
}

/// Runs `work` on the endpoint's blocking pool (never on the thread reading
/// connections) and waits for it; a panic in it is [`Refusal::Internal`].
pub async fn blocking<T, W>(work: W) -> Result<T, Refusal>
where
    W: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        tracing::error!(error = %e, "a request handler panicked");
        Refusal::Internal("the request handler panicked; see the component's log".to_owned())
    })
}
