//! A small HTTP/1.1 server for the admin API: one request per connection, a bounded
//! number of worker threads, a deadline for the whole request, size limits.
//!
//! Written on `std::net` rather than on a general HTTP server so that every limit that
//! protects the component (time to send a request, head and body size, connections at
//! once) is explicit and tested; the protocol subset is small (`Content-Length` bodies,
//! `Connection: close`).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{bearer_credentials, token_matches, HttpConfig, HttpError};
use crate::admin::types::{AdminError, ErrorCode};
use crate::admin::AdminService;
use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;
use serde::Serialize;

const MAX_HEADERS: usize = 64;
/// After the response, how long unread input is drained so closing does not reset the
/// connection before the client read the answer.
const LINGER: Duration = Duration::from_millis(500);
const MAX_LINGER_BYTES: usize = 1 << 20;

/// The admin endpoint: serves an [`AdminService`] over HTTP/JSON until shut down.
///
/// Bound when started (so the address is known and connectable at once); shut down
/// with [`shutdown`](Self::shutdown) or by dropping it: stops accepting, then waits for
/// the requests being served (each bounded by the request timeout and the operation).
pub struct AdminServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    service: Arc<AdminService>,
    config: HttpConfig,
    stopping: AtomicBool,
    activity: Arc<Activity>,
}

/// The connections being served, apart from [`Shared`] so a worker can report itself done
/// after it has dropped everything else.
#[derive(Default)]
struct Activity {
    active: Mutex<usize>,
    idle: Condvar,
}

/// Decrements the active connection count when a worker ends (also on panic).
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        let mut active = self.0.active.lock();
        *active = active.saturating_sub(1);
        self.0.idle.notify_all();
    }
}

impl AdminServer {
    /// Binds `config`'s address and starts serving `service`.
    pub fn start(service: Arc<AdminService>, config: HttpConfig) -> Result<Self, HttpError> {
        let listener = TcpListener::bind(config.bind).map_err(|source| HttpError::Bind {
            addr: config.bind,
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| HttpError::Bind {
            addr: config.bind,
            source,
        })?;
        if !addr.ip().is_loopback() {
            tracing::warn!(%addr, "admin endpoint listens beyond loopback; put a TLS proxy in front");
        }
        let shared = Arc::new(Shared {
            service,
            config,
            stopping: AtomicBool::new(false),
            activity: Arc::default(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("layout-admin-accept".to_owned())
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(HttpError::Spawn)?
        };
        tracing::info!(%addr, "admin endpoint listening");
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>`, for [`AdminClient::new`](super::AdminClient::new).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits for the requests being served.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor blocked in accept().
        let wake = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
            }
            addr => addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = acceptor.join();
        let mut active = self.shared.activity.active.lock();
        while *active > 0 {
            self.shared.activity.idle.wait(&mut active);
        }
        tracing::info!(addr = %self.addr, "admin endpoint stopped");
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .field("active", &*self.shared.activity.active.lock())
            .finish_non_exhaustive()
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                // Out of descriptors and the like: do not spin.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        {
            let mut active = shared.activity.active.lock();
            if *active >= shared.config.max_connections {
                drop(active);
                let mut stream = stream;
                let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                let busy = Response::error(&AdminError::new(
                    ErrorCode::Busy,
                    "the admin endpoint is serving its maximum number of connections; retry",
                ));
                let _ = busy.write_to(&mut stream);
                continue;
            }
            *active += 1;
        }
        let worker = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("layout-admin-http".to_owned())
            .spawn(move || {
                // Locals drop in reverse order: the worker lets go of the service before
                // it reports itself done, so once `shutdown` returns nothing here holds
                // the service (or what it holds: a database's lock, say).
                let _active = Active(Arc::clone(&worker.activity));
                let worker = worker;
                serve_connection(&worker, stream);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "admin endpoint: cannot start a worker");
            let mut active = shared.activity.active.lock();
            *active = active.saturating_sub(1);
        }
    }
}

/// An HTTP response: status, JSON body, extra headers.
struct Response {
    status: u16,
    body: String,
    headers: Vec<(&'static str, String)>,
}

impl Response {
    fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self {
                status: 200,
                body,
                headers: Vec::new(),
            },
            Err(e) => Self::error(&AdminError::new(
                ErrorCode::Internal,
                format!("cannot encode the response: {e}"),
            )),
        }
    }

    fn error(err: &AdminError) -> Self {
        let body = serde_json::to_string(&err.to_response()).unwrap_or_else(|_| {
            r#"{"api_version":1,"error":{"code":"internal","message":"unencodable error"}}"#
                .to_owned()
        });
        let mut headers = Vec::new();
        if err.code() == ErrorCode::Unauthorized {
            headers.push((
                "WWW-Authenticate",
                "Bearer realm=\"layout-admin\"".to_owned(),
            ));
        }
        Self {
            status: err.http_status(),
            body,
            headers,
        }
    }

    fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    fn write_to(&self, stream: &mut TcpStream) -> io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&self.body);
        stream.write_all(out.as_bytes())?;
        stream.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn serve_connection(shared: &Shared, mut stream: TcpStream) {
    let config = &shared.config;
    let deadline = Instant::now() + config.request_timeout;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(config.write_timeout));
    let Some(response) = handle(shared, &mut stream, deadline) else {
        return; // the client left before sending a request: nothing to answer
    };
    if response.status >= 400 {
        tracing::debug!(status = response.status, "admin request refused");
    }
    if response.write_to(&mut stream).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Drain what the client still sends (an unread body), briefly, so closing does not
    // reset the connection before it read the answer.
    let linger_end = Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES {
        let Some(left) = linger_end
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            break;
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

enum ReadFailure {
    /// The connection closed or broke: no answer possible.
    Closed,
    /// The deadline passed.
    Timeout,
}

/// Reads into `buf` until it holds `want` bytes (or, with `want == None`, a full head),
/// within the deadline.
fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, ReadFailure> {
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ReadFailure::Timeout)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| ReadFailure::Closed)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadFailure::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadFailure::Timeout)
            }
            Err(_) => return Err(ReadFailure::Closed),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn bad_request(message: impl Into<String>) -> AdminError {
    AdminError::new(ErrorCode::BadRequest, message)
}

fn parse_head(bytes: &[u8]) -> Result<Head, AdminError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| bad_request("the request head is not UTF-8 text"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_request("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad_request("malformed request method"));
    }
    if !target.starts_with('/') {
        return Err(bad_request("the request target must be a path"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad_request("only HTTP/1.0 and HTTP/1.1 are spoken here"));
    }
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(AdminError::new(
                ErrorCode::HeadersTooLarge,
                format!("more than {MAX_HEADERS} headers"),
            ));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad_request("malformed header line"));
        };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(bad_request("malformed header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(bad_request("control character in a header value"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    Ok(Head {
        method: method.to_owned(),
        path,
        headers,
    })
}

#[derive(Clone, Copy)]
enum Route {
    Status,
    Features,
    FinalizationStatus,
    Finalize,
    Prepare,
    CancelPrepare,
}

fn route(path: &str) -> Option<(Route, &'static [&'static str])> {
    const GET: &[&str] = &["GET"];
    const POST: &[&str] = &["POST"];
    const BOTH: &[&str] = &["GET", "POST"];
    Some(match path {
        "/v1/status" => (Route::Status, GET),
        "/v1/features" => (Route::Features, GET),
        "/v1/finalization-status" => (Route::FinalizationStatus, BOTH),
        "/v1/finalize" => (Route::Finalize, POST),
        "/v1/prepare" => (Route::Prepare, POST),
        "/v1/cancel-prepare" => (Route::CancelPrepare, POST),
        _ => return None,
    })
}

fn authorized(head: &Head, token: &str) -> Result<(), AdminError> {
    let unauthorized = |m: &str| AdminError::new(ErrorCode::Unauthorized, m);
    let mut values = head.headers_named("authorization");
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(unauthorized(
            "a bearer token is required: send Authorization: Bearer <token>",
        ));
    };
    let Some(presented) = bearer_credentials(value) else {
        return Err(unauthorized(
            "the Authorization header must use the Bearer scheme",
        ));
    };
    if token_matches(presented.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized("the bearer token is wrong"))
    }
}

fn content_length(head: &Head) -> Result<usize, AdminError> {
    if head.header("transfer-encoding").is_some() {
        return Err(bad_request(
            "Transfer-Encoding is not supported; send the body with Content-Length",
        ));
    }
    let mut values = head.headers_named("content-length");
    let Some(first) = values.next() else {
        return Ok(0);
    };
    if values.any(|v| v != first) {
        return Err(bad_request("conflicting Content-Length headers"));
    }
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_request("Content-Length is not a number"));
    }
    // A number too large for usize is certainly too large a body.
    Ok(first.parse().unwrap_or(usize::MAX))
}

/// Reads, checks and dispatches one request. `None` when the client left.
fn handle(shared: &Shared, stream: &mut TcpStream, deadline: Instant) -> Option<Response> {
    let config = &shared.config;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > config.max_head_bytes {
            return Some(Response::error(&AdminError::new(
                ErrorCode::HeadersTooLarge,
                format!("the request head exceeds {} bytes", config.max_head_bytes),
            )));
        }
        match read_more(stream, &mut buf, deadline) {
            Ok(_) => {}
            Err(ReadFailure::Closed) => return None,
            Err(ReadFailure::Timeout) => return Some(timeout_response(config.request_timeout)),
        }
    };
    if head_end > config.max_head_bytes {
        return Some(Response::error(&AdminError::new(
            ErrorCode::HeadersTooLarge,
            format!("the request head exceeds {} bytes", config.max_head_bytes),
        )));
    }
    let head = match parse_head(&buf[..head_end]) {
        Ok(head) => head,
        Err(e) => return Some(Response::error(&e)),
    };
    if let Err(e) = authorized(&head, config.token.expose()) {
        return Some(Response::error(&e));
    }
    let Some((route, methods)) = route(&head.path) else {
        return Some(Response::error(&AdminError::new(
            ErrorCode::NotFound,
            format!(
                "no admin endpoint at {:?}; see the API reference (paths start with /v1/)",
                head.path
            ),
        )));
    };
    if !methods.contains(&head.method.as_str()) {
        return Some(
            Response::error(&AdminError::new(
                ErrorCode::MethodNotAllowed,
                format!(
                    "{} does not take {}; it takes {}",
                    head.path,
                    head.method,
                    methods.join(", ")
                ),
            ))
            .with_header("Allow", methods.join(", ")),
        );
    }
    let length = match content_length(&head) {
        Ok(length) => length,
        Err(e) => return Some(Response::error(&e)),
    };
    if length > config.max_body_bytes {
        return Some(Response::error(&AdminError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body has {length} bytes; at most {} are accepted",
                config.max_body_bytes
            ),
        )));
    }
    if length > 0
        && head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut body = buf.split_off(head_end + 4);
    while body.len() < length {
        match read_more(stream, &mut body, deadline) {
            Ok(_) => {}
            Err(ReadFailure::Closed) => {
                return Some(Response::error(&bad_request(format!(
                    "the request body ended after {} of {length} bytes",
                    body.len()
                ))))
            }
            Err(ReadFailure::Timeout) => return Some(timeout_response(config.request_timeout)),
        }
    }
    body.truncate(length);
    let service = &shared.service;
    let is_post = head.method == "POST";
    let result = catch_unwind(AssertUnwindSafe(|| {
        dispatch(service, route, is_post, &body)
    }));
    Some(result.unwrap_or_else(|_| {
        Response::error(&AdminError::new(
            ErrorCode::Internal,
            "the admin request panicked; see the component's log",
        ))
    }))
}

fn timeout_response(timeout: Duration) -> Response {
    Response::error(&AdminError::new(
        ErrorCode::RequestTimeout,
        format!("the request did not arrive within {timeout:?}"),
    ))
}

fn parse<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, AdminError> {
    serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("the {what} request body is not valid: {e}")))
}

fn reply<T: Serialize>(result: Result<T, AdminError>) -> Response {
    match result {
        Ok(value) => Response::json(&value),
        Err(e) => Response::error(&e),
    }
}

fn dispatch(service: &AdminService, route: Route, is_post: bool, body: &[u8]) -> Response {
    match route {
        Route::Status => reply(service.status()),
        Route::Features => reply(Ok::<_, AdminError>(service.features())),
        Route::FinalizationStatus if is_post => reply(
            parse(body, "finalization-status").and_then(|p| service.finalization_status(Some(&p))),
        ),
        Route::FinalizationStatus => reply(service.finalization_status(None)),
        Route::Finalize => reply(parse(body, "finalize").and_then(|p| service.finalize(&p))),
        Route::Prepare => reply(parse(body, "prepare").and_then(|p| service.prepare(&p))),
        Route::CancelPrepare => {
            reply(parse(body, "cancel-prepare").and_then(|p| service.cancel_prepare(&p)))
        }
    }
}
