//! `kvstore copy`: a side-by-side copy from one or more kvstore processes ("blue") into
//! another ("green") over their HTTP APIs, with
//! [`SideBySideMigration`].
//!
//! - [`KvSource`] lists `GET /changes` (live keys and tombstones, with versions and
//!   update times, in `(updated_ms, key)` order) and scans `GET /kv` for the cut-over
//!   check. Several `--from` are merged ([`MergedSource`]).
//! - [`KvDestination`] writes through `POST /copy`: each key only if green holds no
//!   version of it at or above blue's, so green may take writes of its own.
//! - [`KvMarks`] keeps the high-water mark in green (`/copy-marks/{name}`), so a copier
//!   restarted after a crash resumes where it stopped.
//!
//! A value is the entity's data as a JSON string. Transforms by name ([`TRANSFORMS`]):
//! `identity` and `upper-values` (the value in upper case).

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use layout_core::migration::{
    Cursor, Entity, EntityDestination, EntitySource, HighWaterMarkStore, IdPage, MergedSource,
    Page, PageRequest, PutOutcome, SideBySideError, SideBySideMigration, StopSignal,
};
use layout_core::StepError;
use serde_json::Value;

use super::changes::{KvChangeCursor, KvCopyOutcome, KvCopyWrite};
use super::client::KvClient;
use super::store::MAX_LIST_LIMIT;

/// The built-in transforms `--transform` names.
pub const TRANSFORMS: &[&str] = &["identity", "upper-values"];

/// The transform named `name`, or an error naming the known ones.
pub fn transform(
    name: &str,
) -> Result<impl Fn(Entity) -> Result<Entity, StepError> + Send + Sync + 'static, String> {
    let upper = match name {
        "identity" => false,
        "upper-values" => true,
        other => {
            return Err(format!(
                "unknown transform {other:?}; known: {}",
                TRANSFORMS.join(", ")
            ))
        }
    };
    Ok(move |mut e: Entity| {
        if upper {
            if let Value::String(s) = &e.data {
                e.data = Value::String(s.to_uppercase());
            }
        }
        Ok(e)
    })
}

fn source_err(
    location: &str,
    operation: &'static str,
    e: impl std::fmt::Display,
) -> SideBySideError {
    SideBySideError::Source {
        location: location.to_owned(),
        operation,
        reason: e.to_string(),
    }
}

fn destination_err(
    location: &str,
    operation: &'static str,
    e: impl std::fmt::Display,
) -> SideBySideError {
    SideBySideError::Destination {
        location: location.to_owned(),
        operation,
        reason: e.to_string(),
    }
}

/// Lists the live keys of a kvstore in key order (`GET /kv`), as entities.
fn scan(client: &KvClient, after: Option<&str>, limit: usize) -> Result<IdPage, String> {
    let page = client
        .list_page("", after, Some(limit.min(MAX_LIST_LIMIT)))
        .map_err(|e| e.to_string())?;
    Ok(IdPage {
        entities: page
            .items
            .into_iter()
            .map(|i| Entity::new(i.key, 0, 0, Value::String(i.value)))
            .collect(),
        next: page.next,
    })
}

/// A kvstore as a side-by-side source (blue).
#[derive(Debug)]
pub struct KvSource {
    client: KvClient,
    location: String,
}

impl KvSource {
    /// The kvstore whose HTTP API is at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: KvClient::new(addr),
            location: format!("http://{addr}"),
        }
    }
}

impl EntitySource for KvSource {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn list(&self, request: &PageRequest) -> Result<Page, SideBySideError> {
        let after = request.after.as_ref().map(|c| KvChangeCursor {
            updated_ms: c.updated_ms,
            key: c.id.clone(),
        });
        let page = self
            .client
            .changes_page(
                request.updated_since_ms,
                after.as_ref(),
                Some(request.limit.min(MAX_LIST_LIMIT)),
            )
            .map_err(|e| source_err(&self.location, "list changes", e))?;
        Ok(Page {
            entities: page
                .items
                .into_iter()
                .map(|c| match c.value {
                    Some(v) if !c.deleted => {
                        Entity::new(c.key, c.version, c.updated_ms, Value::String(v))
                    }
                    _ => Entity::tombstone(c.key, c.version, c.updated_ms),
                })
                .collect(),
            next: page.next.map(|n| Cursor {
                updated_ms: n.updated_ms,
                id: n.key,
            }),
        })
    }

    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        scan(&self.client, after, limit).map_err(|e| source_err(&self.location, "scan", e))
    }
}

/// A kvstore as a side-by-side destination (green).
#[derive(Debug)]
pub struct KvDestination {
    client: KvClient,
    location: String,
}

impl KvDestination {
    /// The kvstore whose HTTP API is at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: KvClient::new(addr),
            location: format!("http://{addr}"),
        }
    }
}

impl EntityDestination for KvDestination {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn write(&self, entities: &[Entity]) -> Result<Vec<PutOutcome>, SideBySideError> {
        let mut writes = Vec::with_capacity(entities.len());
        for e in entities {
            let value = match (&e.data, e.deleted) {
                (_, true) => None,
                (Value::String(s), false) => Some(s.clone()),
                (other, false) => Some(other.to_string()),
            };
            writes.push(KvCopyWrite {
                key: e.id.clone(),
                value,
                version: e.version,
                updated_ms: e.updated_ms,
            });
        }
        let outcomes = self
            .client
            .copy_write(&writes)
            .map_err(|e| destination_err(&self.location, "copy", e))?;
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                KvCopyOutcome::Written => PutOutcome::Written,
                KvCopyOutcome::NotNewer { held_version } => PutOutcome::NotNewer { held_version },
                KvCopyOutcome::Failed { reason } => PutOutcome::Failed(reason),
            })
            .collect())
    }

    fn scan(&self, after: Option<&str>, limit: usize) -> Result<IdPage, SideBySideError> {
        scan(&self.client, after, limit).map_err(|e| destination_err(&self.location, "scan", e))
    }
}

/// A copy's high-water mark kept in the destination kvstore, under a name
/// (`/copy-marks/{name}`, outside its keys).
#[derive(Debug)]
pub struct KvMarks {
    client: KvClient,
    name: String,
    location: String,
}

impl KvMarks {
    /// The mark `name` in the kvstore at `addr`.
    pub fn new(addr: SocketAddr, name: &str) -> Self {
        Self {
            client: KvClient::new(addr),
            name: name.to_owned(),
            location: format!("http://{addr}/copy-marks/{name}"),
        }
    }

    fn err(&self, operation: &'static str, e: impl std::fmt::Display) -> SideBySideError {
        SideBySideError::Mark {
            location: self.location.clone(),
            operation,
            reason: e.to_string(),
        }
    }
}

impl HighWaterMarkStore for KvMarks {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn load(&self) -> Result<Option<Cursor>, SideBySideError> {
        match self
            .client
            .copy_mark(&self.name)
            .map_err(|e| self.err("load", e))?
        {
            Some(mark) => serde_json::from_value(mark)
                .map(Some)
                .map_err(|e| self.err("load", format!("not a mark: {e}"))),
            None => Ok(None),
        }
    }

    fn save(&self, mark: &Cursor) -> Result<(), SideBySideError> {
        let mark = serde_json::to_value(mark).map_err(|e| self.err("save", e))?;
        self.client
            .set_copy_mark(&self.name, &mark)
            .map_err(|e| self.err("save", e))
    }
}

/// `kvstore copy`: copy blue into green, side by side.
#[derive(Parser, Debug)]
#[command(
    name = "kvstore copy",
    about = "Copy one kvstore (blue) into another (green), side by side"
)]
pub struct CopyArgs {
    /// A blue kvstore's HTTP API (`http://HOST:PORT`); repeat for a sharded blue (the
    /// shards' changes are merged).
    #[arg(long = "from", required = true)]
    pub from: Vec<String>,
    /// Green's HTTP API (`http://HOST:PORT`).
    #[arg(long)]
    pub to: String,
    /// A built-in transform: `identity` (default) or `upper-values`.
    #[arg(long, default_value = "identity")]
    pub transform: String,
    /// Keep copying, pass after pass, until killed (Ctrl-C, SIGTERM: the mark is saved
    /// after every page, so a restart resumes).
    #[arg(long)]
    pub continuous: bool,
    /// The name green keeps this copy's high-water mark under.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Keys per page (1 to 10,000).
    #[arg(long, default_value_t = 1000)]
    pub page_size: usize,
    /// How far before the mark each pass re-reads, in ms: more than the clock skew
    /// between blue's nodes plus the longest commit delay.
    #[arg(long, default_value_t = 5000)]
    pub overlap_window_ms: u64,
    /// The wait between passes of a continuous copy, in ms.
    #[arg(long, default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Skip the cut-over check after the pass.
    #[arg(long)]
    pub no_check: bool,
}

fn addr(url: &str) -> Result<SocketAddr, String> {
    let hostport = url
        .strip_prefix("http://")
        .ok_or_else(|| {
            format!("{url:?}: expected http://HOST:PORT (TLS is not supported by copy)")
        })?
        .trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url:?}: no address"))
}

/// Runs `kvstore copy` with `args` (without the program name and `copy`): prints a
/// summary line, and after a single pass the cut-over check.
pub fn run_cli(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args =
        match CopyArgs::try_parse_from(std::iter::once(OsString::from("kvstore copy")).chain(args))
        {
            Ok(args) => args,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
        };
    match run(&args) {
        Ok(agree) if agree => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(3),
        Err(e) => {
            eprintln!("kvstore copy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &CopyArgs) -> Result<bool, Box<dyn std::error::Error>> {
    if !(1..=MAX_LIST_LIMIT).contains(&args.page_size) {
        return Err(format!("--page-size {}: from 1 to {MAX_LIST_LIMIT}", args.page_size).into());
    }
    let mut sources: Vec<Arc<dyn EntitySource>> = Vec::new();
    for from in &args.from {
        sources.push(Arc::new(KvSource::new(addr(from)?)));
    }
    let source: Arc<dyn EntitySource> = if sources.len() == 1 {
        sources.remove(0)
    } else {
        Arc::new(MergedSource::new(sources))
    };
    let green = addr(&args.to)?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} pass {prefix}: {pos} keys read ({per_sec}) {msg}",
        )
        .map_err(|e| e.to_string())?,
    );
    let progress = bar.clone();
    let migration = SideBySideMigration::builder(source, Arc::new(KvDestination::new(green)))
        .high_water_marks(Arc::new(KvMarks::new(green, &args.name)))
        .transform(transform(&args.transform)?)
        .page_size(args.page_size)
        .overlap_window(Duration::from_millis(args.overlap_window_ms))
        .poll_interval(Duration::from_millis(args.poll_interval_ms))
        .on_page(move |p| {
            progress.set_prefix(p.pass.to_string());
            progress.set_position(p.listed);
            progress.set_message(format!(
                "copied {} deleted {} skipped {} failed {}",
                p.report.copied, p.report.deleted, p.report.skipped, p.report.failed
            ));
        })
        .build()?;
    let resumed = migration.high_water_mark()?;
    if let Some(mark) = &resumed {
        eprintln!("kvstore copy: resuming from the saved mark {mark}");
    }
    let report = if args.continuous {
        migration.run_continuous(&StopSignal::new())?
    } else {
        migration.run_pass()?
    };
    bar.finish_and_clear();
    println!(
        "copy done: copied={} skipped_not_newer={} deleted={} failed={} pages={} resumed_from={} mark={}",
        report.copied,
        report.skipped,
        report.deleted,
        report.failed,
        report.pages,
        report.resumed_from.as_ref().map_or("none".to_owned(), ToString::to_string),
        report.high_water_mark.as_ref().map_or("none".to_owned(), ToString::to_string),
    );
    for f in &report.failures {
        eprintln!(
            "kvstore copy: failed {:?} v{}: {}",
            f.id, f.version, f.reason
        );
    }
    if args.no_check {
        return Ok(report.failed == 0);
    }
    let check = migration.compare()?;
    println!(
        "cut-over check: agree={} blue={} green={} missing={} extra={} differing={} blue_digest={} green_digest={}",
        check.agree,
        check.source_count,
        check.destination_count,
        check.missing,
        check.extra,
        check.differing,
        check.source_digest,
        check.destination_digest,
    );
    for example in check.examples.iter().take(10) {
        eprintln!("kvstore copy: disagreement: {example}");
    }
    Ok(check.agree && report.failed == 0)
}

/// The HTTP handlers of the copy routes (`/changes`, `/changes/purge`, `/copy`,
/// `/copy-marks/{name}`).
pub(crate) mod http {
    use std::sync::Arc;

    use layout_core::http::axum::extract::{Request, State};
    use layout_core::http::axum::http::Uri;
    use layout_core::http::axum::response::Response;
    use serde::Deserialize;
    use serde_json::{json, Value};

    use super::super::changes::KvCopyWrite;
    use super::super::http::{bad_request, json_body, kv_error, ok, page_limit, query, run};
    use super::super::store::Shared;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ChangesParams {
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        after_ms: Option<u64>,
        #[serde(default)]
        after_key: Option<String>,
        #[serde(default)]
        limit: Option<String>,
    }

    pub(crate) async fn changes(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
        let params: ChangesParams = match query(&uri) {
            Ok(params) => params,
            Err(message) => return bad_request(message),
        };
        let limit = match page_limit(params.limit.as_deref()) {
            Ok(limit) => limit,
            Err(message) => return bad_request(message),
        };
        let after = match (params.after_ms, params.after_key) {
            (Some(ms), Some(key)) => Some((ms, key)),
            (None, None) => None,
            _ => return bad_request("after_ms and after_key go together"),
        };
        let since = params.since_ms.unwrap_or(0);
        run(move || {
            match shared.changes_page(
                since,
                after.as_ref().map(|(ms, k)| (*ms, k.as_str())),
                limit,
            ) {
                Ok(page) => ok(&page),
                Err(e) => kv_error(&e),
            }
        })
        .await
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PurgeParams {
        before_ms: u64,
    }

    pub(crate) async fn purge(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
        let params: PurgeParams = match query(&uri) {
            Ok(params) => params,
            Err(message) => return bad_request(message),
        };
        run(move || match shared.purge_tombstones(params.before_ms) {
            Ok(purged) => ok(&json!({ "purged": purged })),
            Err(e) => kv_error(&e),
        })
        .await
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CopyBody {
        writes: Vec<KvCopyWrite>,
    }

    pub(crate) async fn copy(State(shared): State<Arc<Shared>>, request: Request) -> Response {
        let body: CopyBody = match json_body(request).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        run(move || match shared.copy_write(&body.writes) {
            Ok(outcomes) => ok(&json!({ "outcomes": outcomes })),
            Err(e) => kv_error(&e),
        })
        .await
    }

    fn name_of(uri: &Uri) -> String {
        let raw = uri.path().trim_start_matches("/copy-marks/");
        percent_decode(raw)
    }

    fn percent_decode(raw: &str) -> String {
        let bytes = raw.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    pub(crate) async fn get_mark(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
        let name = name_of(&uri);
        run(move || match shared.copy_mark(&name) {
            Ok(mark) => {
                let mark = mark
                    .and_then(|m| serde_json::from_str::<Value>(&m).ok())
                    .unwrap_or(Value::Null);
                ok(&json!({ "mark": mark }))
            }
            Err(e) => kv_error(&e),
        })
        .await
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct MarkBody {
        mark: Value,
    }

    pub(crate) async fn put_mark(
        State(shared): State<Arc<Shared>>,
        uri: Uri,
        request: Request,
    ) -> Response {
        let name = name_of(&uri);
        let body: MarkBody = match json_body(request).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        run(
            move || match shared.set_copy_mark(&name, &body.mark.to_string()) {
                Ok(()) => ok(&json!({ "saved": true })),
                Err(e) => kv_error(&e),
            },
        )
        .await
    }
}

/// A clock offset from the system clock by a fixed number of milliseconds: simulates a
/// node whose clock runs ahead or behind (`kvstore --clock-offset-ms`, for tests of
/// clock skew between blue's nodes).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    /// The offset, in ms (negative: behind).
    pub offset_ms: i64,
}

impl layout_core::clock::Clock for OffsetClock {
    fn now(&self) -> std::time::SystemTime {
        let now = std::time::SystemTime::now();
        let by = Duration::from_millis(self.offset_ms.unsigned_abs());
        if self.offset_ms >= 0 {
            now + by
        } else {
            now - by
        }
    }
}
