//! [`KvClient`]: a blocking client of the kvstore's HTTP API (ureq), over plain HTTP or
//! TLS ([`ClientConfig`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use layout_core::http::ClientConfig;
use layout_core::LayoutFeature;

use super::changes::{KvChangeCursor, KvChangesPage, KvCopyOutcome, KvCopyWrite};
use super::cluster::{
    KvClusterExclusion, KvClusterFinalize, KvClusterMove, KvClusterStatus, KvMoveTarget,
};
use super::feature::KvFeature;
use super::store::{KvKeysPage, KvPage, KvStatus, MAX_LIST_LIMIT};

/// How long one call may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An error of a [`KvClient`] call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The call needs a layout feature that is not finalized (HTTP 403).
    #[error("layout feature {feature} is not finalized: {message}")]
    NotFinalized {
        /// The feature's name.
        feature: String,
        /// The server's message.
        message: String,
    },
    /// The store is prepared: writes are refused (HTTP 503, kind `prepared`).
    #[error("the store is prepared: {message}")]
    Prepared {
        /// The server's message.
        message: String,
    },
    /// Any other error status, with the body as sent.
    #[error("HTTP {code}: {body}")]
    Status {
        /// The HTTP status.
        code: u16,
        /// The response body.
        body: String,
    },
    /// No connection could be opened to the server (refused, unreachable, the connect
    /// timed out): the request was never sent, so it certainly had no effect.
    #[error("cannot reach the kvstore at {addr}: {message}")]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// What the connection attempt met.
        message: String,
    },
    /// The request was sent (or may have been) but no usable answer came back: the
    /// connection was cut mid-request, the call timed out, or the answer could not be
    /// read or decoded. A write's outcome is unknown: it may have been applied.
    #[error("transport: {0}")]
    Transport(String),
}

impl ClientError {
    /// The error kind the server sent (`bad_request`, `not_found`, ...), for
    /// [`ClientError::Status`]; `None` for [`ClientError::Unreachable`] and
    /// [`ClientError::Transport`], where the server sent nothing.
    pub fn kind(&self) -> Option<String> {
        match self {
            Self::NotFinalized { .. } => Some("not_finalized".into()),
            Self::Prepared { .. } => Some("prepared".into()),
            Self::Status { body, .. } => serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v["error"]["kind"].as_str().map(str::to_owned)),
            Self::Unreachable { .. } | Self::Transport(_) => None,
        }
    }
}

/// A blocking client of one kvstore's HTTP API.
///
/// [`new`](Self::new) and [`with_timeout`](Self::with_timeout) speak plain HTTP;
/// [`with_config`](Self::with_config) takes a [`ClientConfig`], which may carry TLS
/// settings (the CA that signed the node's certificate, and a client certificate for a
/// node started with a client CA):
///
/// ```no_run
/// use std::path::Path;
/// use std::time::Duration;
/// use layout_core::http::{ClientConfig, ClientTls};
/// use kvstore::KvClient;
///
/// let tls = ClientTls::with_ca_file(Path::new("/etc/kvstore/ca.pem"))?
///     .with_identity_files(Path::new("client.pem"), Path::new("client-key.pem"))?;
/// let config = ClientConfig::new(Duration::from_secs(10)).with_tls(tls);
/// let client = KvClient::with_config("127.0.0.1:9880".parse()?, &config);
/// client.put("greeting", "hello")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct KvClient {
    agent: ureq::Agent,
    addr: SocketAddr,
    base: String,
    token: Option<Token>,
}

/// The bearer token a [`KvClient`] sends; its `Debug` does not show it.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Whether `e` means the connection could not be opened, so nothing was sent.
fn is_unreachable(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
        ),
        ureq::Error::Timeout(ureq::Timeout::Resolve | ureq::Timeout::Connect)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

/// Percent-encodes `s` for a path segment or a query value.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The `&after=...&limit=...` of a page request.
fn page_query(after: Option<&str>, limit: Option<usize>) -> String {
    let mut query = String::new();
    if let Some(after) = after {
        let _ = write!(query, "&after={}", encode_component(after));
    }
    if let Some(limit) = limit {
        let _ = write!(query, "&limit={limit}");
    }
    query
}

/// `next` as the cursor of the following page, refused when it does not sort after the
/// previous cursor: a server that does not move forward would make a list loop forever.
fn advanced(after: Option<String>, next: String) -> Result<String, ClientError> {
    if after.is_some_and(|after| next <= after) {
        return Err(ClientError::Transport(format!(
            "the server's list cursor {next:?} does not move forward"
        )));
    }
    Ok(next)
}

#[derive(Deserialize)]
struct Applied {
    applied_index: u64,
}

#[derive(Deserialize)]
struct Deleted {
    deleted: bool,
    applied_index: u64,
}

#[derive(Deserialize)]
struct Entry {
    value: String,
}

#[derive(Deserialize)]
struct CopyAnswer {
    outcomes: Vec<KvCopyOutcome>,
}

#[derive(Deserialize)]
struct Swapped {
    swapped: bool,
}

impl KvClient {
    /// A client of the kvstore at `addr`.
    pub fn new(addr: SocketAddr) -> KvClient {
        Self::with_timeout(addr, DEFAULT_TIMEOUT)
    }

    /// A client of the kvstore at `addr` whose calls time out after `timeout`.
    pub fn with_timeout(addr: SocketAddr, timeout: Duration) -> KvClient {
        Self::with_config(addr, &ClientConfig::new(timeout))
    }

    /// A client of the kvstore at `addr` with `config`: its timeout per call and, when it
    /// carries TLS settings, `https://` with its CA (and client certificate). The
    /// certificate of a TLS node must name `addr`'s IP address.
    pub fn with_config(addr: SocketAddr, config: &ClientConfig) -> KvClient {
        let scheme = if config.tls_enabled() {
            "https"
        } else {
            "http"
        };
        KvClient {
            agent: config.agent(),
            addr,
            base: format!("{scheme}://{addr}"),
            token: None,
        }
    }

    /// Sends `Authorization: Bearer <token>` with every call: the node's admin token,
    /// which the coordinator node's `/cluster/...` routes require
    /// ([`cluster_finalize`](Self::cluster_finalize), [`cluster_dry_run`](Self::cluster_dry_run),
    /// [`cluster_status`](Self::cluster_status)). The data routes ignore it.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> KvClient {
        self.token = Some(Token(token.into()));
        self
    }

    /// Stores `value` under `key`; returns the write's applied index.
    pub fn put(&self, key: &str, value: &str) -> Result<u64, ClientError> {
        let body = json!({ "value": value });
        let r: Applied = self.send(
            "PUT",
            &format!("/kv/{}", encode_component(key)),
            Some(&body),
        )?;
        Ok(r.applied_index)
    }

    /// Stores `value` under `key` until `ttl` passes (needs `ExpiringValues`).
    pub fn put_with_ttl(&self, key: &str, value: &str, ttl: Duration) -> Result<u64, ClientError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let body = json!({ "value": value, "ttl_ms": ttl_ms });
        let r: Applied = self.send(
            "PUT",
            &format!("/kv/{}", encode_component(key)),
            Some(&body),
        )?;
        Ok(r.applied_index)
    }

    /// The live value of `key`; `None` when absent or expired.
    pub fn get(&self, key: &str) -> Result<Option<String>, ClientError> {
        match self.send::<Entry>("GET", &format!("/kv/{}", encode_component(key)), None) {
            Ok(e) => Ok(Some(e.value)),
            Err(ClientError::Status { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`; whether a live value was deleted.
    pub fn delete(&self, key: &str) -> Result<bool, ClientError> {
        Ok(self.delete_with_index(key)?.0)
    }

    /// Deletes `key`; whether a live value was deleted, and the delete's applied index
    /// (every delete is a write with its own index, even of an absent key).
    pub fn delete_with_index(&self, key: &str) -> Result<(bool, u64), ClientError> {
        let r: Deleted = self.send("DELETE", &format!("/kv/{}", encode_component(key)), None)?;
        Ok((r.deleted, r.applied_index))
    }

    /// All the live items whose key starts with `prefix`, in key order: follows the
    /// pages of [`list_page`](Self::list_page) to the last one and gathers them in
    /// memory (for a large store, take the pages one by one instead). Each page is read
    /// on its own, so the whole is not one snapshot: a key written meanwhile may or may
    /// not appear, but each key appears at most once.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, String)>, ClientError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list_page(prefix, after.as_deref(), Some(MAX_LIST_LIMIT))?;
            items.extend(page.items.into_iter().map(|i| (i.key, i.value)));
            match page.next {
                Some(next) => after = Some(advanced(after, next)?),
                None => return Ok(items),
            }
        }
    }

    /// One page of the live items whose key starts with `prefix` and sorts after
    /// `after` (the previous page's [`KvPage::next`]; `None`: the first page), in key
    /// order: at most `limit` items (server default 1,000, at most 10,000) and about
    /// 1 MiB of keys and values (at least one item). HTTP 400 (kind `bad_request`) for a
    /// `limit` out of range or an `after` that does not start with `prefix`.
    pub fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<KvPage, ClientError> {
        let path = format!(
            "/kv?prefix={}{}",
            encode_component(prefix),
            page_query(after, limit)
        );
        self.send("GET", &path, None)
    }

    /// All the keys holding `value`, in key order (needs `ValueIndex`): follows the
    /// pages of [`find_by_value_page`](Self::find_by_value_page) to the last one.
    pub fn find_by_value(&self, value: &str) -> Result<Vec<String>, ClientError> {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.find_by_value_page(value, after.as_deref(), Some(MAX_LIST_LIMIT))?;
            keys.extend(page.keys);
            match page.next {
                Some(next) => after = Some(advanced(after, next)?),
                None => return Ok(keys),
            }
        }
    }

    /// One page of the keys holding `value` that sort after `after` (needs
    /// `ValueIndex`), bounded as [`list_page`](Self::list_page) is.
    pub fn find_by_value_page(
        &self,
        value: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<KvKeysPage, ClientError> {
        let path = format!(
            "/by-value?value={}{}",
            encode_component(value),
            page_query(after, limit)
        );
        self.send("GET", &path, None)
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent); whether it
    /// swapped (needs `CompareAndSwap`).
    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&str>,
        new: &str,
    ) -> Result<bool, ClientError> {
        let body = json!({ "expected": expected, "value": new });
        let r: Swapped = self.send(
            "POST",
            &format!("/cas/{}", encode_component(key)),
            Some(&body),
        )?;
        Ok(r.swapped)
    }

    /// The store's status.
    pub fn status(&self) -> Result<KvStatus, ClientError> {
        self.send("GET", "/status", None)
    }

    /// The cluster's state (`GET /cluster/status`; the coordinator node only, elsewhere
    /// HTTP 404 with kind `not_coordinator`). Needs the node's admin token
    /// ([`with_token`](Self::with_token)) when it has one: HTTP 401, kind `unauthorized`,
    /// without it.
    pub fn cluster_status(&self) -> Result<KvClusterStatus, ClientError> {
        self.send("GET", "/cluster/status", None)
    }

    /// Finalizes the cluster to `target` (default: the coordinator's software version)
    /// for `client_id` (`POST /cluster/finalize`; the coordinator node only). Refused
    /// while a member runs older software: HTTP 409, kind `blocked`, the message and
    /// `blockers` naming each. Needs the node's admin token ([`with_token`](Self::with_token)):
    /// HTTP 401, kind `unauthorized`, without it or with a wrong one; HTTP 403, kind
    /// `forbidden`, on a coordinator node that has no admin token.
    pub fn cluster_finalize(
        &self,
        client_id: &str,
        target: Option<KvFeature>,
    ) -> Result<KvClusterFinalize, ClientError> {
        let body = json!({
            "client_id": client_id,
            "target": target.map(LayoutFeature::layout_version),
        });
        self.send("POST", "/cluster/finalize", Some(&body))
    }

    /// What a cluster finalization to `target` would meet now: the resolved target and
    /// the blocking members (`POST /cluster/finalize` with `dry_run`). Changes nothing.
    /// Needs the token as [`cluster_finalize`](Self::cluster_finalize) does.
    pub fn cluster_dry_run(
        &self,
        target: Option<KvFeature>,
    ) -> Result<KvClusterFinalize, ClientError> {
        let body = json!({
            "client_id": "dry-run",
            "target": target.map(LayoutFeature::layout_version),
            "dry_run": true,
        });
        self.send("POST", "/cluster/finalize", Some(&body))
    }

    /// Excludes dead `member` from the cluster with `reason`, recorded as done by
    /// `client_id` (`POST /cluster/exclude`): who, when and the SLV it needs to rejoin
    /// are in the answer, the audit trail and the status. Refused for a live member
    /// (HTTP 409, kind `member_is_live`), without a reason (400). Needs the token as
    /// [`cluster_finalize`](Self::cluster_finalize) does.
    pub fn cluster_exclude(
        &self,
        client_id: &str,
        member: &str,
        reason: &str,
    ) -> Result<KvClusterExclusion, ClientError> {
        let body = json!({"client_id": client_id, "member": member, "reason": reason});
        self.send("POST", "/cluster/exclude", Some(&body))
    }

    /// Where the coordinator's store move stands (`GET /cluster/move`).
    pub fn cluster_move_status(&self) -> Result<KvClusterMove, ClientError> {
        self.send("GET", "/cluster/move", None)
    }

    /// Begins (or resumes) moving the cluster state to `to`, for `client_id`
    /// (`POST /cluster/move/begin`). Refused (HTTP 409, kind `move_refused`) for a
    /// destination that is not empty or records another move, and for a store already
    /// moved.
    pub fn cluster_move_begin(
        &self,
        client_id: &str,
        to: &KvMoveTarget,
    ) -> Result<KvClusterMove, ClientError> {
        let body = json!({"client_id": client_id, "to": to});
        self.send("POST", "/cluster/move/begin", Some(&body))
    }

    /// Compares both stores (`POST /cluster/move/verify`): the differences and whether
    /// the mirror fell behind.
    pub fn cluster_move_verify(&self) -> Result<KvClusterMove, ClientError> {
        self.send("POST", "/cluster/move/verify", Some(&json!({})))
    }

    /// Recopies what differs (`POST /cluster/move/catch-up`).
    pub fn cluster_move_catch_up(&self) -> Result<KvClusterMove, ClientError> {
        self.send("POST", "/cluster/move/catch-up", Some(&json!({})))
    }

    /// Commits the move (`POST /cluster/move/switch`).
    pub fn cluster_move_switch(&self) -> Result<KvClusterMove, ClientError> {
        self.send("POST", "/cluster/move/switch", Some(&json!({})))
    }

    /// Abandons the move before its switch (`POST /cluster/move/rollback`).
    pub fn cluster_move_rollback(&self) -> Result<KvClusterMove, ClientError> {
        self.send("POST", "/cluster/move/rollback", Some(&json!({})))
    }

    /// One page of changes (`GET /changes`): live keys and tombstones with their
    /// versions and update times, in `(updated_ms, key)` order, from `since_ms`
    /// (inclusive) or after `after`; at most `limit` (server default 1,000, at most
    /// 10,000), with a `next` whenever more follow.
    pub fn changes_page(
        &self,
        since_ms: u64,
        after: Option<&KvChangeCursor>,
        limit: Option<usize>,
    ) -> Result<KvChangesPage, ClientError> {
        let mut path = format!("/changes?since_ms={since_ms}");
        if let Some(after) = after {
            let _ = write!(
                path,
                "&after_ms={}&after_key={}",
                after.updated_ms,
                encode_component(&after.key)
            );
        }
        if let Some(limit) = limit {
            let _ = write!(path, "&limit={limit}");
        }
        self.send("GET", &path, None)
    }

    /// Copied writes (`POST /copy`), each stored only if the store holds no version of
    /// its key at or above the one offered; one outcome per write, in order.
    pub fn copy_write(&self, writes: &[KvCopyWrite]) -> Result<Vec<KvCopyOutcome>, ClientError> {
        let body = json!({ "writes": writes });
        let answer: CopyAnswer = self.send("POST", "/copy", Some(&body))?;
        Ok(answer.outcomes)
    }

    /// Purges the tombstones deleted before `before_ms` (`POST /changes/purge`);
    /// returns how many.
    pub fn purge_tombstones(&self, before_ms: u64) -> Result<u64, ClientError> {
        let answer: Value = self.send(
            "POST",
            &format!("/changes/purge?before_ms={before_ms}"),
            Some(&json!({})),
        )?;
        Ok(answer["purged"].as_u64().unwrap_or_default())
    }

    /// The high-water mark saved under `name` by a copy into this store.
    pub fn copy_mark(&self, name: &str) -> Result<Option<Value>, ClientError> {
        let answer: Value = self.send(
            "GET",
            &format!("/copy-marks/{}", encode_component(name)),
            None,
        )?;
        Ok(Some(answer["mark"].clone()).filter(|m| !m.is_null()))
    }

    /// Saves the high-water mark of the copy `name` into this store.
    pub fn set_copy_mark(&self, name: &str, mark: &Value) -> Result<(), ClientError> {
        let _: Value = self.send(
            "PUT",
            &format!("/copy-marks/{}", encode_component(name)),
            Some(&json!({ "mark": mark })),
        )?;
        Ok(())
    }

    /// Sends a raw request (method, path with query, body) and returns the status and
    /// the body: for tests of error paths.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, String), ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |e: ureq::Error| ClientError::Transport(e.to_string());
        let call_failed = |e: ureq::Error| {
            if is_unreachable(&e) {
                ClientError::Unreachable {
                    addr: self.addr,
                    message: e.to_string(),
                }
            } else {
                ClientError::Transport(e.to_string())
            }
        };
        let response = match (method, body) {
            ("GET", _) => self.authorized(self.agent.get(&url)).call(),
            ("DELETE", _) => self.authorized(self.agent.delete(&url)).call(),
            ("PUT", b) => self
                .authorized(self.agent.put(&url))
                .header("Content-Type", "application/json")
                .send(b.unwrap_or_default()),
            ("POST", b) => self
                .authorized(self.agent.post(&url))
                .header("Content-Type", "application/json")
                .send(b.unwrap_or_default()),
            (m, _) => return Err(ClientError::Transport(format!("unsupported method {m}"))),
        };
        let mut response = response.map_err(call_failed)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(transport)?;
        Ok((status, text))
    }

    /// Adds the bearer token, if any.
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(Token(token)) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn send<T: for<'de> Deserialize<'de>>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let bytes = body.map(Value::to_string);
        let (status, text) = self.raw(method, path, bytes.as_deref().map(str::as_bytes))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| {
                ClientError::Transport(format!("cannot decode the answer: {e}: {text}"))
            });
        }
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let error = parsed.as_ref().map(|v| &v["error"]);
        let kind = error.and_then(|e| e["kind"].as_str());
        let message = error
            .and_then(|e| e["message"].as_str())
            .unwrap_or_default()
            .to_owned();
        Err(match kind {
            Some("not_finalized") => ClientError::NotFinalized {
                feature: error
                    .and_then(|e| e["feature"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
                message,
            },
            Some("prepared") => ClientError::Prepared { message },
            _ => ClientError::Status {
                code: status,
                body: text,
            },
        })
    }
}
