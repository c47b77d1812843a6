//! A real component around the admin endpoint: an in-memory replicated log (prepare),
//! a `VERSION` file (`FileStorage`), a finalizer with actions and a condition, the admin
//! service and its HTTP endpoint on a free loopback port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layout_core::admin::http::{AdminClient, AdminClientError, AdminServer, HttpConfig};
use layout_core::admin::{AdminService, FinalizeParams, FinalizeResponse};
use layout_core::clock::ManualClock;
use layout_core::finalizer::condition;
use layout_core::prepare::PrepareOptions;
use layout_core::StepError;
use layout_core::{
    ActionError, ActionRegistry, FileStorage, LayoutFeature, LayoutVersionManager, ManagerOptions,
    Preparable, PrepareController, StartIntent, UpgradeFinalizer,
};
use parking_lot::{Condvar, Mutex};

/// The catalog of the test component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub(crate) enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    BucketLayoutSupport,
    #[layout(version = 2, description = "Multi-tenancy tables")]
    MultiTenancy,
    #[layout(version = 3, description = "Snapshot diff tables")]
    SnapshotDiff,
}

/// The admin token the fixture's endpoint requires.
pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";

/// A gate an action can be held at, released by the test.
#[derive(Default)]
pub(crate) struct Latch {
    state: Mutex<(bool, bool)>, // (armed, released)
    changed: Condvar,
}

impl Latch {
    pub(crate) fn arm(&self) {
        *self.state.lock() = (true, false);
    }
    pub(crate) fn release(&self) {
        self.state.lock().1 = true;
        self.changed.notify_all();
    }
    fn pass(&self) {
        let mut state = self.state.lock();
        // Bounded, so a failing test cannot hang the suite.
        let _ = self
            .changed
            .wait_while_for(&mut state, |s| s.0 && !s.1, Duration::from_secs(30));
    }
}

/// The component: a log that applies as it accepts, and knobs for the tests.
pub(crate) struct Node {
    log: Mutex<(u64, u64)>, // (applied, last snapshot)
    pub(crate) stuck: AtomicBool,
    pub(crate) fail_snapshot: AtomicBool,
    pub(crate) open_containers: AtomicUsize,
    /// Appended to the reason of the failing `no-open-containers` condition (text the
    /// component hands to the endpoint, echoed in its error messages).
    pub(crate) condition_detail: Mutex<String>,
    pub(crate) fail_feature: Mutex<Option<OmFeature>>,
    pub(crate) hold: Latch,
    clock: Arc<ManualClock>,
}

impl Node {
    fn new() -> Self {
        Self {
            log: Mutex::new((0, 0)),
            stuck: AtomicBool::new(false),
            fail_snapshot: AtomicBool::new(false),
            open_containers: AtomicUsize::new(0),
            condition_detail: Mutex::new(String::new()),
            fail_feature: Mutex::new(None),
            hold: Latch::default(),
            clock: Arc::new(ManualClock::at_ms(1_000_000)),
        }
    }

    /// Accepts and applies one write, through the prepare gate.
    pub(crate) fn put(&self, gate: &PrepareController) -> Result<u64, String> {
        let _permit = gate.begin_write("PutKey").map_err(|e| e.to_string())?;
        let mut log = self.log.lock();
        log.0 += 1;
        Ok(log.0)
    }
}

impl Preparable for Node {
    fn applied_index(&self) -> u64 {
        self.log.lock().0
    }
    fn last_log_index(&self) -> u64 {
        // A stuck log has one entry accepted that never applies.
        self.applied_index() + u64::from(self.stuck.load(Ordering::SeqCst))
    }
    fn flush(&self) -> Result<u64, StepError> {
        Ok(self.applied_index())
    }
    fn snapshot(&self, _index: u64) -> Result<u64, StepError> {
        if self.fail_snapshot.load(Ordering::SeqCst) {
            return Err(StepError::new("disk full while writing the snapshot"));
        }
        let mut log = self.log.lock();
        log.1 = log.0;
        Ok(log.1)
    }
    fn last_snapshot_index(&self) -> u64 {
        self.log.lock().1
    }
    fn purge_log(&self, _index: u64) -> Result<(), StepError> {
        Ok(())
    }
    fn wait_for_apply(&self, _index: u64, max_wait: Duration) {
        // Time passes on the manual clock only: a timeout without sleeping.
        self.clock.advance(max_wait.max(Duration::from_millis(100)));
    }
}

fn registry() -> ActionRegistry<OmFeature, Node> {
    let mut builder = ActionRegistry::<OmFeature, Node>::builder();
    for feature in [
        OmFeature::BucketLayoutSupport,
        OmFeature::MultiTenancy,
        OmFeature::SnapshotDiff,
    ] {
        builder = builder.action(
            feature,
            layout_core::Phase::OnFinalize,
            format!("migrate-{}", feature.name()),
            move |node: &Node, ctx| {
                // A migration's first batch, reported before the (test-held) rest.
                ctx.report_progress(3, Some(10));
                node.hold.pass();
                if *node.fail_feature.lock() == Some(feature) {
                    return Err(ActionError::new("the migration hit a corrupt row"));
                }
                ctx.report_progress(10, Some(10));
                ctx.message(format!("{} migrated", feature.name()));
                Ok(())
            },
        );
    }
    builder.build().unwrap()
}

/// A running component and its endpoint.
pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) node: Arc<Node>,
    pub(crate) prepare: Arc<PrepareController>,
    pub(crate) service: Arc<AdminService>,
    pub(crate) server: Option<AdminServer>,
    pub(crate) addr: SocketAddr,
}

/// How to start the fixture.
#[derive(Clone)]
pub(crate) struct Start {
    /// The SLV cap (`None`: the catalog's latest).
    pub(crate) software_layout_version: Option<u32>,
    pub(crate) intent: StartIntent,
    pub(crate) request_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_concurrent_requests: usize,
    /// Serve TLS with this (optionally requiring client certificates).
    pub(crate) tls: Option<layout_core::http::ServerTls>,
    /// Serve `/metrics` without the token.
    pub(crate) open_metrics: bool,
}

impl Default for Start {
    fn default() -> Self {
        Self {
            software_layout_version: None,
            intent: StartIntent::Init,
            request_timeout: Duration::from_millis(500),
            max_connections: 16,
            max_concurrent_requests: 16,
            tls: None,
            open_metrics: false,
        }
    }
}

impl Fixture {
    /// A fresh component at MLV 1 (SLV 3 unless capped).
    pub(crate) fn start() -> Self {
        Self::start_with(&Start::default())
    }

    pub(crate) fn start_with(start: &Start) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        Self::open(dir, Arc::new(Node::new()), start)
    }

    fn open(dir: tempfile::TempDir, node: Arc<Node>, start: &Start) -> Self {
        let mut opts = ManagerOptions::default()
            .with_start_intent(start.intent)
            .with_initial_layout_version(1);
        if let Some(slv) = start.software_layout_version {
            opts = opts.with_software_layout_version(slv);
        }
        let lvm = Arc::new(
            LayoutVersionManager::<OmFeature>::open(FileStorage::new(dir.path().join("om")), opts)
                .unwrap(),
        );
        let prepare = Arc::new(
            PrepareController::restore(
                Arc::clone(&lvm),
                &*node,
                PrepareOptions::default()
                    .with_timeout(Duration::from_secs(5))
                    .with_clock(node.clock.clone()),
            )
            .unwrap(),
        );
        let finalizer = UpgradeFinalizer::new(lvm, registry())
            .with_condition(condition("no-open-containers", |node: &Node| {
                match node.open_containers.load(Ordering::SeqCst) {
                    0 => Ok(()),
                    n => Err(
                        format!("{n} containers are open{}", node.condition_detail.lock()).into(),
                    ),
                }
            }))
            .with_gate(prepare.clone());
        finalizer.run_prefinalize_actions(&node).unwrap();
        let service = Arc::new(
            AdminService::new(Arc::new(finalizer), Arc::clone(&node))
                .with_prepare(Arc::clone(&prepare), node.clone())
                .with_finalize_start_wait(Duration::from_millis(500)),
        );
        let config = HttpConfig::new(TOKEN)
            .unwrap()
            .with_bind_addr("127.0.0.1:0".parse().unwrap())
            .with_request_timeout(start.request_timeout)
            .with_max_connections(start.max_connections)
            .with_max_concurrent_requests(start.max_concurrent_requests)
            .with_open_metrics(start.open_metrics);
        let config = match &start.tls {
            Some(tls) => config.with_tls(tls.clone()),
            None => config,
        };
        let server = AdminServer::start(Arc::clone(&service), config).unwrap();
        let addr = server.local_addr();
        Self {
            dir,
            node,
            prepare,
            service,
            server: Some(server),
            addr,
        }
    }

    /// Stops the component and starts it again on the same directory (a new binary:
    /// `start` says with which SLV and intent).
    pub(crate) fn restart(mut self, start: &Start) -> Self {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        let _ = self.service.join_finalization();
        let (dir, node) = (self.dir, self.node);
        Self::open(dir, node, start)
    }

    /// Finalizes through the client and, when the answer is `started`, waits for the
    /// background run: the outcome whatever the timing.
    pub(crate) fn finalize(
        &self,
        params: &FinalizeParams,
    ) -> Result<FinalizeResponse, AdminClientError> {
        match self.client().finalize(params)? {
            FinalizeResponse::Started { .. } => {
                let outcome = self.service.join_finalization().unwrap();
                outcome.map_err(|error| AdminClientError::Api {
                    status: error.http_status(),
                    error,
                })
            }
            other => Ok(other),
        }
    }

    pub(crate) fn url(&self) -> String {
        match &self.server {
            Some(server) => server.url(),
            None => format!("http://{}", self.addr),
        }
    }

    pub(crate) fn client(&self) -> AdminClient {
        AdminClient::new(&self.url(), TOKEN).unwrap()
    }

    pub(crate) fn version_path(&self) -> PathBuf {
        self.dir.path().join("om").join("VERSION")
    }

    pub(crate) fn version_bytes(&self) -> Vec<u8> {
        std::fs::read(self.version_path()).unwrap()
    }

    pub(crate) fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Runs `layoutctl` against this endpoint with the token file.
    pub(crate) fn layoutctl(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "--endpoint".to_owned(),
            self.url(),
            "--token-file".to_owned(),
            self.token_file().display().to_string(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        layoutctl(&all, &[])
    }
}

/// Runs the built `layoutctl` with `args` and extra environment, nothing inherited
/// from `LAYOUTCTL_*`.
pub(crate) fn layoutctl<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layoutctl"));
    for var in [
        "LAYOUTCTL_TOKEN",
        "LAYOUTCTL_TOKEN_FILE",
        "LAYOUTCTL_ENDPOINT",
        "LAYOUTCTL_CLIENT_ID",
        "LAYOUTCTL_CA",
        "LAYOUTCTL_CERT",
        "LAYOUTCTL_KEY",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The exit code, with the output in the panic message when it is not `expected`.
pub(crate) fn assert_exit(output: &Output, expected: i32) {
    assert_eq!(
        output.status.code(),
        Some(expected),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

pub(crate) fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(output)))
}

/// An HTTP exchange over a raw socket: the status and the body of the answer.
pub(crate) fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    // A safety net against a hung test, not a timing assert.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(request);
    read_answer(&mut stream)
}

/// Like [`raw`], but `None` when the server closed the connection without an answer.
pub(crate) fn raw_or_closed(addr: SocketAddr, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut first = [0u8; 1];
    match stream.read(&mut first) {
        Ok(1) => {}
        _ => return None,
    }
    Some(read_answer_from(&mut stream, vec![first[0]]))
}

/// Reads one answer: its head, then as many body bytes as its `Content-Length` says
/// (the server keeps the connection open for the next request), or up to the end of the
/// stream when the server closes it.
pub(crate) fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    read_answer_from(stream, Vec::new())
}

fn read_answer_from(stream: &mut TcpStream, mut answer: Vec<u8>) -> (u16, String) {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| answer.len() >= end + 4 + n) {
                break;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Whether the server closed `stream` without answering (EOF or a reset).
pub(crate) fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

/// A request with the fixture's token.
pub(crate) fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The error code in an error body.
pub(crate) fn error_code(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(value["api_version"], 1, "{body}");
    value["error"]["code"].as_str().unwrap().to_owned()
}

pub(crate) fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// A coordinator on an in-memory cluster store.
pub(crate) fn coordinator() -> Arc<layout_core::cluster::Coordinator> {
    use layout_core::cluster::{Coordinator, CoordinatorOptions, EmbeddedStore};
    Arc::new(
        Coordinator::open(
            Arc::new(EmbeddedStore::in_memory()),
            CoordinatorOptions::default(),
        )
        .unwrap(),
    )
}

/// A proxy on a free loopback port in front of `upstream` that relays every exchange
/// except `POST /v1/<cut>` (`finalize`, `prepare`, ...): that one it forwards (when
/// `forward`), runs `before_cut` (after the endpoint answered), and closes the client's
/// connection without relaying the answer: a request whose answer is lost on the way
/// back. Its threads end with
/// the test process.
pub(crate) fn cutting_proxy(
    upstream: SocketAddr,
    cut: &'static str,
    forward: bool,
    before_cut: impl Fn() + Send + Sync + 'static,
) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let before_cut = Arc::new(before_cut);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let before_cut = Arc::clone(&before_cut);
            std::thread::spawn(move || relay(client, upstream, cut, forward, &*before_cut));
        }
    });
    addr
}

fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    cut: &str,
    forward: bool,
    before_cut: &dyn Fn(),
) {
    // Safety nets against a hung test, not timing asserts.
    let _ = client.set_read_timeout(Some(Duration::from_secs(20)));
    while let Some(request) = read_message(&mut client) {
        let finalize = request.starts_with(format!("POST /v1/{cut} ").as_bytes());
        if finalize && !forward {
            return; // dropped: the endpoint never sees it
        }
        let mut server = TcpStream::connect(upstream).unwrap();
        let _ = server.set_read_timeout(Some(Duration::from_secs(20)));
        server.write_all(&request).unwrap();
        let Some(answer) = read_message(&mut server) else {
            return;
        };
        if finalize {
            before_cut();
            return; // the answer is dropped with the connection
        }
        if client.write_all(&answer).is_err() {
            return;
        }
    }
}

/// One HTTP/1.1 message (head and a `Content-Length` body) as bytes; `None` at the end
/// of the stream.
fn read_message(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut message = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = message.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&message[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if message.len() >= end + 4 + length {
                return Some(message);
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => message.extend_from_slice(&chunk[..n]),
        }
    }
}
