//! The kvstore's HTTP/JSON API on `std::net`: one request per connection, a worker
//! thread per connection (bounded), size limits and a deadline per request. Bad input
//! is answered with a JSON error, never a panic.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

use super::error::KvError;
use super::store::{KvOptions, Shared};

/// The largest request head (request line and headers) accepted, in bytes.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections served at once; beyond it, 503.
pub const MAX_CONNECTIONS: usize = 64;

pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

struct Limits {
    max_body: usize,
    timeout: Duration,
}

impl HttpServer {
    pub(crate) fn start(shared: Arc<Shared>, options: &KvOptions) -> Result<Self, KvError> {
        let listen_err = |source| KvError::Listen {
            addr: options.listen,
            source,
        };
        let listener = TcpListener::bind(options.listen).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let limits = Arc::new(Limits {
            max_body: options.max_body_bytes,
            timeout: options.request_timeout,
        });
        let accept = {
            let stop = Arc::clone(&stop);
            let active = Arc::clone(&active);
            std::thread::Builder::new()
                .name(format!("kvstore-http-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared, &stop, &active, &limits))
                .map_err(listen_err)?
        };
        Ok(Self {
            addr,
            stop,
            active,
            accept: Some(accept),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(handle) = self.accept.take() {
            let _ = handle.join();
        }
        // Wait (bounded) for the requests being served.
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop_now();
        }
    }
}

struct ActiveGuard(Arc<AtomicUsize>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    stop: &AtomicBool,
    active: &Arc<AtomicUsize>,
    limits: &Arc<Limits>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = respond(
                &mut stream,
                503,
                &error_body("overloaded", "too many connections; retry", None),
            );
            continue;
        }
        let guard = ActiveGuard(Arc::clone(active));
        let shared = Arc::clone(shared);
        let limits = Arc::clone(limits);
        let spawned = std::thread::Builder::new()
            .name("kvstore-http-conn".into())
            .spawn(move || {
                // Locals drop in reverse order: the store is let go before the connection
                // counts as done, so once `shutdown` returns no connection thread holds
                // the database (whose lock a restart in this process needs).
                let _guard = guard;
                let shared = shared;
                serve(stream, &shared, &limits);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot spawn a connection thread");
        }
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    query: String,
    /// The values of every `Authorization` header, in order (checked only by the
    /// `/cluster/...` routes).
    authorization: Vec<String>,
    body: Vec<u8>,
}

/// A response: status and JSON body.
struct Response {
    status: u16,
    body: Value,
}

impl Response {
    fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }
    fn error(status: u16, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: error_body(kind, &message.into(), None),
        }
    }
}

fn error_body(kind: &str, message: &str, feature: Option<&str>) -> Value {
    let mut error = json!({"kind": kind, "message": message});
    if let Some(feature) = feature {
        error["feature"] = json!(feature);
    }
    json!({ "error": error })
}

impl From<KvError> for Response {
    fn from(e: KvError) -> Self {
        let status = e.http_status();
        if status >= 500 && !matches!(e, KvError::Prepared(_)) {
            tracing::warn!(error = %e, "kvstore request failed");
        }
        Self {
            status,
            body: error_body(e.kind(), &e.to_string(), e.not_finalized_feature()),
        }
    }
}

fn serve(mut stream: TcpStream, shared: &Shared, limits: &Limits) {
    let deadline = Instant::now() + limits.timeout;
    let _ = stream.set_write_timeout(Some(limits.timeout));
    let response = match read_request(&mut stream, deadline, limits.max_body) {
        Ok(Some(request)) => route(shared, &request),
        Ok(None) => return,
        Err(response) => response,
    };
    let _ = respond(&mut stream, response.status, &response.body);
    // Let the client read the answer before the connection closes.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: &Value) -> io::Result<()> {
    let body = body.to_string();
    let challenge = if status == 401 {
        "WWW-Authenticate: Bearer\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{challenge}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Reads into `buf` until `done(buf)` or the deadline; `Ok(false)` when the peer closed.
fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<bool, Response> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Response::error(
            408,
            "timeout",
            "the request did not arrive in time",
        ));
    }
    let _ = stream.set_read_timeout(Some(left));
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(0) => Ok(false),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(true)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(Response::error(
                408,
                "timeout",
                "the request did not arrive in time",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
        Err(_) => Ok(false),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

#[allow(clippy::too_many_lines)] // one linear parse, easier to audit in one piece
fn read_request(
    stream: &mut TcpStream,
    deadline: Instant,
    max_body: usize,
) -> Result<Option<Request>, Response> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Response::error(
                431,
                "too_large",
                format!("the request head exceeds {MAX_HEAD_BYTES} bytes"),
            ));
        }
        if !read_more(stream, &mut buf, deadline)? {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(Response::error(
                400,
                "bad_request",
                "the connection closed inside the request head",
            ));
        }
    };
    if head_end > MAX_HEAD_BYTES {
        return Err(Response::error(
            431,
            "too_large",
            format!("the request head exceeds {MAX_HEAD_BYTES} bytes"),
        ));
    }
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Response::error(400, "bad_request", "the request head is not UTF-8"))?
        .to_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::error(
            400,
            "bad_request",
            "malformed request line",
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::error(
            400,
            "bad_request",
            format!("unsupported protocol {version:?}"),
        ));
    }
    let mut content_length: Option<usize> = None;
    let mut authorization = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Response::error(400, "bad_request", "malformed header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<usize>().map_err(|_| {
                Response::error(400, "bad_request", format!("bad Content-Length {value:?}"))
            })?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Response::error(
                    400,
                    "bad_request",
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization.push(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::error(
                411,
                "length_required",
                "chunked bodies are not supported; send Content-Length",
            ));
        }
    }
    let length = content_length.unwrap_or(0);
    if length > max_body {
        return Err(Response::error(
            413,
            "too_large",
            format!("the body is {length} bytes; at most {max_body} are accepted"),
        ));
    }
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        if !read_more(stream, &mut buf, deadline)? {
            return Err(Response::error(
                400,
                "bad_request",
                "the connection closed inside the body",
            ));
        }
    }
    let body = buf[body_start..body_start + length].to_vec();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        authorization,
        body,
    }))
}

/// Percent-decodes `s` (with `+` as space when `plus` is set) into UTF-8.
pub(crate) fn percent_decode(s: &str, plus: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding at byte {i} of {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

fn query_param(query: &str, name: &str) -> Result<Option<String>, Response> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true).map_err(|e| Response::error(400, "bad_request", e))?;
        if k == name {
            return percent_decode(v, true)
                .map(Some)
                .map_err(|e| Response::error(400, "bad_request", e));
        }
    }
    Ok(None)
}

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

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| Response::error(400, "bad_request", format!("malformed JSON body: {e}")))
}

fn route(shared: &Shared, request: &Request) -> Response {
    match route_inner(shared, request) {
        Ok(r) | Err(r) => r,
    }
}

fn route_inner(shared: &Shared, request: &Request) -> Result<Response, Response> {
    let method = request.method.as_str();
    let path = request.path.as_str();
    let key_of =
        |raw: &str| percent_decode(raw, false).map_err(|e| Response::error(400, "bad_request", e));
    if let Some(raw) = path.strip_prefix("/kv/") {
        let key = key_of(raw)?;
        return Ok(match method {
            "PUT" => {
                let body: PutBody = parse_body(&request.body)?;
                let result = match body.ttl_ms {
                    Some(ms) => shared.put_with_ttl(&key, &body.value, Duration::from_millis(ms)),
                    None => shared.put(&key, &body.value),
                };
                match result {
                    Ok(index) => Response::ok(json!({"applied_index": index})),
                    Err(e) => e.into(),
                }
            }
            "GET" => match shared.get(&key) {
                Ok(Some(entry)) => Response::ok(serde_json::to_value(entry).unwrap_or(Value::Null)),
                Ok(None) => Response::error(404, "not_found", format!("no value for key {key:?}")),
                Err(e) => e.into(),
            },
            "DELETE" => match shared.delete(&key) {
                Ok((deleted, index)) => {
                    Response::ok(json!({"deleted": deleted, "applied_index": index}))
                }
                Err(e) => e.into(),
            },
            _ => method_not_allowed(method, path),
        });
    }
    if let Some(rest) = path.strip_prefix("/cluster/") {
        let routes = shared.cluster.lock().clone();
        return Ok(match routes {
            Some(routes) => {
                let (status, body) =
                    routes.route(method, rest, &request.authorization, &request.body);
                Response { status, body }
            }
            None => Response::error(
                404,
                "not_coordinator",
                "this node does not run the cluster coordinator; ask the coordinator node",
            ),
        });
    }
    if let Some(raw) = path.strip_prefix("/cas/") {
        let key = key_of(raw)?;
        if method != "POST" {
            return Ok(method_not_allowed(method, path));
        }
        let body: CasBody = parse_body(&request.body)?;
        return Ok(
            match shared.compare_and_swap(&key, body.expected.as_deref(), &body.value) {
                Ok((swapped, index)) => {
                    Response::ok(json!({"swapped": swapped, "applied_index": index}))
                }
                Err(e) => e.into(),
            },
        );
    }
    Ok(match path {
        "/kv" => {
            if method != "GET" {
                return Ok(method_not_allowed(method, path));
            }
            let prefix = query_param(&request.query, "prefix")?.unwrap_or_default();
            match shared.list(&prefix) {
                Ok(items) => Response::ok(json!({ "items": items })),
                Err(e) => e.into(),
            }
        }
        "/by-value" => {
            if method != "GET" {
                return Ok(method_not_allowed(method, path));
            }
            let Some(value) = query_param(&request.query, "value")? else {
                return Err(Response::error(
                    400,
                    "bad_request",
                    "missing query parameter value",
                ));
            };
            match shared.find_by_value(&value) {
                Ok(keys) => Response::ok(json!({ "keys": keys })),
                Err(e) => e.into(),
            }
        }
        "/status" => {
            if method != "GET" {
                return Ok(method_not_allowed(method, path));
            }
            match shared.status() {
                Ok(status) => Response::ok(serde_json::to_value(status).unwrap_or(Value::Null)),
                Err(e) => e.into(),
            }
        }
        _ => Response::error(404, "not_found", format!("no such path {path:?}")),
    })
}

fn method_not_allowed(method: &str, path: &str) -> Response {
    Response::error(
        405,
        "method_not_allowed",
        format!("{method} is not allowed on {path:?}"),
    )
}
