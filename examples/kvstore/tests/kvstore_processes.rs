//! The real binaries, driven from outside as an operator drives them: the `kvstore`
//! binary (`cargo run -p kvstore`) started and stopped as child processes, its admin
//! endpoint driven with the real `layoutctl`, its data and cluster APIs over HTTP.
//!
//! Cargo builds the `kvstore` binary with these tests; `layoutctl` must be in the target
//! directory this test runs from, `target/<profile>/layoutctl`
//! (`cargo build -p layout-core --features cli --bin layoutctl`; a workspace build with
//! all features, as `scripts/test` runs, builds it). A missing binary fails the test, naming the command that builds it.
//!
//! Every child is bounded: killed when its guard drops, every wait has a bound and a
//! message, and every "eventually" is a condition polled under a bound. Everything
//! listens on loopback, on ports the processes pick and print.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvstore::{ClientError, KvClient, KvStatus};
use parking_lot::Mutex;
use serde_json::Value;

/// The admin token written to each test's token file.
const TOKEN: &str = "kvstore-process-token-0123456789";
/// How long a kvstore may take to start (print its addresses) or to stop.
const START_BOUND: Duration = Duration::from_secs(60);
/// How long one `layoutctl` call or one short-lived process may take.
const RUN_BOUND: Duration = Duration::from_secs(120);
/// How long a condition polled over HTTP (a member finalizing on its heartbeat) may take.
const POLL_BOUND: Duration = Duration::from_secs(60);
/// The pause between two checks of a polled condition.
const POLL_EVERY: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------
// The binaries.

/// `target/<profile>`: the test executable is `target/<profile>/deps/<name>-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

fn binary(relative: &str, build_with: &str) -> PathBuf {
    let path = profile_dir().join(format!("{relative}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{relative} not found at {}: build it first with `{build_with}` \
         (same target directory and profile; scripts/test does)",
        path.display()
    );
    path
}

fn kvstore_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvstore"))
}

fn layoutctl_bin() -> PathBuf {
    binary(
        "layoutctl",
        "cargo build -p layout-core --all-features --bin layoutctl",
    )
}

// ---------------------------------------------------------------------------------------
// Bounded children.

/// Waits for `child` to exit, at most `bound`; kills it and panics past the bound.
fn wait_bounded(child: &mut Child, bound: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {bound:?}; killed it");
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Collects a pipe on a thread of its own, so a chatty child never blocks on a full pipe.
fn collect(mut pipe: impl std::io::Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs a short-lived command (stdin closed) to its end, at most [`RUN_BOUND`].
fn run_bounded(command: &mut Command, what: &str) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let status = wait_bounded(&mut child, RUN_BOUND, what);
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn show(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Polls `check` until it returns `Some`, at most [`POLL_BOUND`].
fn poll_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + POLL_BOUND;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {POLL_BOUND:?}"
        );
        std::thread::sleep(POLL_EVERY);
    }
}

/// A running `kvstore` process: killed when dropped.
struct Kv {
    name: String,
    child: Child,
    /// Open while the process should serve: it serves until its stdin closes.
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    http: SocketAddr,
    admin: Option<SocketAddr>,
    /// The coordinator's member address (served, or joined).
    cluster: Option<SocketAddr>,
    slv: u32,
    mlv: u32,
}

/// What a `kvstore` prints once it serves.
#[derive(Default)]
struct Banner {
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    cluster: Option<SocketAddr>,
}

fn addr(line: &str, value: &str) -> SocketAddr {
    value
        .parse()
        .unwrap_or_else(|e| panic!("kvstore printed {line:?}: not an address: {e}"))
}

impl Kv {
    /// Starts `kvstore` with `args` and waits until it prints its addresses; panics, with
    /// its exit status and stderr, when it exits first.
    fn start(name: &str, args: &[&str]) -> Kv {
        Self::start_with_stdin(name, args, Stdio::piped())
    }

    /// [`Kv::start`] with `stdin` as the process's standard input (a pipe kept open by
    /// [`Kv::start`]; `/dev/null` as a service manager or a script's `&` gives it).
    fn start_with_stdin(name: &str, args: &[&str], stdin: Stdio) -> Kv {
        Self::start_with(name, args, stdin, None)
    }

    /// [`Kv::start_with_stdin`] with `$KVSTORE_ADMIN_TOKEN` set to `env_token` (else unset).
    fn start_with(name: &str, args: &[&str], stdin: Stdio, env_token: Option<&str>) -> Kv {
        let mut command = Command::new(kvstore_bin());
        match env_token {
            Some(token) => command.env("KVSTORE_ADMIN_TOKEN", token),
            None => command.env_remove("KVSTORE_ADMIN_TOKEN"),
        };
        let mut child = command
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kvstore {name}: {e}"));
        let stdin = child.stdin.take();
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = Arc::clone(&stderr);
            let pipe = child.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut all = stderr.lock();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        let lines = {
            let (tx, rx) = mpsc::channel();
            let pipe = child.stdout.take().expect("stdout");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let mut kv = Kv {
            name: name.to_owned(),
            child,
            stdin,
            stderr,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            cluster: None,
            slv: 0,
            mlv: 0,
        };
        kv.read_banner(&lines);
        kv
    }

    fn read_banner(&mut self, lines: &Receiver<String>) {
        let deadline = Instant::now() + START_BOUND;
        let mut banner = Banner::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "kvstore {} printed no `slv .. mlv ..` line within {START_BOUND:?}; stderr:\n{}",
                    self.name,
                    self.stderr.lock()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_bounded(&mut self.child, START_BOUND, &self.name);
                    panic!(
                        "kvstore {} exited ({status}) before serving; stderr:\n{}",
                        self.name,
                        self.stderr_text()
                    );
                }
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["http", a] => banner.http = Some(addr(&line, a)),
                ["admin", a] => banner.admin = Some(addr(&line, a)),
                ["cluster", "coordinator", a] | ["cluster", "member", "of", a] => {
                    banner.cluster = Some(addr(&line, a));
                }
                ["slv", slv, "mlv", mlv] => {
                    self.slv = slv.parse().expect("slv");
                    self.mlv = mlv.parse().expect("mlv");
                    self.http = banner.http.expect("kvstore printed no `http ADDR` line");
                    self.admin = banner.admin;
                    self.cluster = banner.cluster;
                    return;
                }
                _ => {}
            }
        }
    }

    /// Its stderr so far, once the reader thread caught up with an exited process.
    fn stderr_text(&self) -> String {
        // The pipe closes when the process exits; give the reader a bounded moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.stderr) > 1 && Instant::now() < deadline {
            std::thread::sleep(POLL_EVERY);
        }
        self.stderr.lock().clone()
    }

    fn client(&self) -> KvClient {
        KvClient::with_timeout(self.http, Duration::from_secs(30))
    }

    /// A client presenting the admin token (every node here has `TOKEN`), as the
    /// coordinator's `/cluster/...` routes require.
    fn operator(&self) -> KvClient {
        self.client().with_token(TOKEN)
    }

    fn endpoint(&self) -> String {
        format!(
            "http://{}",
            self.admin
                .unwrap_or_else(|| panic!("kvstore {} has no admin endpoint", self.name))
        )
    }

    /// Stops it the documented way (closing its stdin) and expects a clean exit.
    fn stop(mut self) {
        drop(self.stdin.take());
        let status = wait_bounded(
            &mut self.child,
            START_BOUND,
            &format!("kvstore {} after its stdin closed", self.name),
        );
        assert!(
            status.success(),
            "kvstore {} exited {status} on stop; stderr:\n{}",
            self.name,
            self.stderr_text()
        );
    }

    /// Kills it (SIGKILL): a crash, or an operator's `kill -9`.
    fn kill(mut self) {
        self.child.kill().expect("kill");
        wait_bounded(&mut self.child, START_BOUND, &self.name);
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `kvstore` expecting it to refuse to start: its output, bounded (stdin closed,
/// so a kvstore that wrongly starts serves nothing and exits 0 at once).
fn kvstore_refused(args: &[&str]) -> Output {
    let output = run_bounded(
        Command::new(kvstore_bin())
            .args(args)
            .env_remove("KVSTORE_ADMIN_TOKEN"),
        "kvstore",
    );
    assert!(
        !output.status.success(),
        "kvstore {args:?} must refuse to start:\n{}",
        show(&output)
    );
    output
}

// ---------------------------------------------------------------------------------------
// layoutctl.

fn layoutctl(endpoint: &str, token_file: &Path, args: &[&str]) -> Output {
    run_bounded(
        Command::new(layoutctl_bin())
            .args(["--endpoint", endpoint, "--token-file"])
            .arg(token_file)
            .args(["--client-id", "kvstore-processes-test"])
            .args(args)
            .env_remove("LAYOUTCTL_TOKEN")
            .env_remove("LAYOUTCTL_TOKEN_FILE")
            .env_remove("LAYOUTCTL_ENDPOINT"),
        "layoutctl",
    )
}

fn layoutctl_ok(endpoint: &str, token_file: &Path, args: &[&str]) -> Output {
    let output = layoutctl(endpoint, token_file, args);
    assert!(
        output.status.success(),
        "layoutctl {args:?} failed:\n{}",
        show(&output)
    );
    output
}

fn layoutctl_json(endpoint: &str, token_file: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = layoutctl_ok(endpoint, token_file, &all);
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("layoutctl {args:?}: not JSON: {e}\n{}", show(&output)))
}

struct Scratch {
    dir: tempfile::TempDir,
    token_file: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        Scratch { dir, token_file }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn token(&self) -> String {
        self.token_file.display().to_string()
    }
}

fn status(kv: &Kv) -> KvStatus {
    kv.client()
        .status()
        .unwrap_or_else(|e| panic!("GET /status on {}: {e}", kv.name))
}

fn assert_not_finalized<T: std::fmt::Debug>(result: Result<T, ClientError>, feature: &str) {
    match result {
        Err(ClientError::NotFinalized { feature: f, .. }) if f == feature => {}
        other => panic!("expected a refusal naming {feature} (not finalized), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// A single node.

/// Starts the old release with `args` on the finalized node in `dir`: it must exit
/// non-zero naming both versions, and leave `VERSION` byte-for-byte unchanged.
fn assert_old_release_refused(args: &[&str], dir: &Path) {
    let version_file = dir.join("layout").join("VERSION");
    let version_before = std::fs::read(&version_file).expect("VERSION");
    let refused = kvstore_refused(args);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("is newer than this software's layout version 0")
            && stderr.contains("CompareAndSwap"),
        "the refusal names the disk's and the software's versions:\n{}",
        show(&refused)
    );
    assert_eq!(
        std::fs::read(&version_file).expect("VERSION"),
        version_before,
        "a refused start leaves VERSION byte-for-byte unchanged"
    );
}

#[test]
fn an_operator_upgrades_a_single_node_with_the_real_binaries() {
    let scratch = Scratch::new();
    let dir = scratch.path("node");
    let token = scratch.token();
    let node_args = |software: &'static str, intent: &'static str| {
        vec![
            "--dir".to_owned(),
            dir.clone(),
            "--admin-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--admin-token-file".to_owned(),
            token.clone(),
            "--software-version".to_owned(),
            software.to_owned(),
            "--intent".to_owned(),
            intent.to_owned(),
        ]
    };
    let start = |name: &str, args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Kv::start(name, &args)
    };

    // The old release, fresh: it creates VERSION at its own version.
    let old = start("old", &node_args("Initial", "normal"));
    assert_eq!((old.slv, old.mlv), (0, 0));
    let client = old.client();
    client.put("apple", "red").expect("put");
    client.put("sky", "blue").expect("put");
    client.put("cherry", "red").expect("put");

    let endpoint = old.endpoint();
    let prepared = layoutctl_json(&endpoint, &scratch.token_file, &["prepare"]);
    assert_eq!(prepared["state"], "PREPARE_COMPLETED", "{prepared}");
    assert!(
        matches!(client.put("late", "x"), Err(ClientError::Prepared { .. })),
        "a prepared node refuses writes"
    );
    old.stop();

    // The new release, with the upgrade intent: pre-finalized, the prepare cancelled.
    let new = start("new", &node_args("CompareAndSwap", "upgrade"));
    assert_eq!((new.slv, new.mlv), (4, 0), "new software on the old layout");
    let client = new.client();
    assert_eq!(client.get("apple").expect("get").as_deref(), Some("red"));
    assert_eq!(client.get("sky").expect("get").as_deref(), Some("blue"));
    client
        .put("grass", "green")
        .expect("writes again after --intent upgrade");
    assert_not_finalized(
        client.compare_and_swap("sky", Some("blue"), "grey"),
        "CompareAndSwap",
    );
    assert_not_finalized(client.find_by_value("red"), "ValueIndex");

    let endpoint = new.endpoint();
    let before = layoutctl_json(&endpoint, &scratch.token_file, &["status"]);
    assert_eq!(before["metadata_layout_version"], 0, "{before}");
    assert_eq!(before["software_layout_version"], 4, "{before}");
    assert_eq!(
        before["needs_finalization"], true,
        "pre-finalized: {before}"
    );
    assert_eq!(before["prepare"]["state"], "NOT_PREPARED", "{before}");
    let text = layoutctl_ok(&endpoint, &scratch.token_file, &["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("pre-finalized"),
        "{}",
        show(&text)
    );

    // Pre-finalized, the old release still runs (downgrade) and reads what the new one
    // wrote; then the new one again.
    new.stop();
    let downgraded = start("old, downgraded", &node_args("Initial", "downgrade"));
    assert_eq!((downgraded.slv, downgraded.mlv), (0, 0));
    let client = downgraded.client();
    assert_eq!(client.get("grass").expect("get").as_deref(), Some("green"));
    client.put("pear", "red").expect("the old release writes");
    downgraded.stop();
    let new = start("new again", &node_args("CompareAndSwap", "upgrade"));
    assert_eq!((new.slv, new.mlv), (4, 0));
    let client = new.client();
    let endpoint = new.endpoint();

    layoutctl_ok(&endpoint, &scratch.token_file, &["finalize", "--watch"]);
    let after = layoutctl_json(&endpoint, &scratch.token_file, &["status"]);
    assert_eq!(after["metadata_layout_version"], 4, "{after}");
    assert_eq!(after["needs_finalization"], false, "{after}");
    assert!(client
        .compare_and_swap("sky", Some("blue"), "grey")
        .expect("cas once finalized"));
    assert_eq!(client.get("sky").expect("get").as_deref(), Some("grey"));
    assert_eq!(
        client
            .find_by_value("red")
            .expect("by-value once finalized"),
        ["apple", "cherry", "pear"]
    );
    new.stop();

    // The old release again: refused, the disk untouched.
    let args = node_args("Initial", "normal");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_old_release_refused(&args, Path::new(&dir));

    // The new release still serves the data.
    let again = start("new, finalized", &node_args("CompareAndSwap", "normal"));
    assert_eq!((again.slv, again.mlv), (4, 4));
    assert_eq!(
        again.client().get("grass").expect("get").as_deref(),
        Some("green")
    );
    again.stop();
}

#[test]
fn kvstore_keeps_serving_when_its_stdin_is_not_a_pipe() {
    // A script's `kvstore ... &` (docs/kvstore.md's cluster recipe) or a service manager
    // starts it with stdin on /dev/null: it must serve until it is stopped, not exit at
    // the first read of its stdin.
    let scratch = Scratch::new();
    let dir = scratch.path("node");
    let mut kv = Kv::start_with_stdin("node", &["--dir", &dir], Stdio::null());
    let client = kv.client();
    for i in 0..20 {
        client
            .put(&format!("k{i}"), "v")
            .unwrap_or_else(|e| panic!("put {i} on a kvstore whose stdin is /dev/null: {e}"));
    }
    assert_eq!(client.get("k19").expect("get").as_deref(), Some("v"));
    assert!(
        kv.child.try_wait().expect("try_wait").is_none(),
        "kvstore with stdin on /dev/null exited instead of serving; stderr:\n{}",
        kv.stderr_text()
    );
    // Stopped as a service manager stops it; its acknowledged writes are durable.
    kv.kill();
    let kv = Kv::start("node again", &["--dir", &dir]);
    assert_eq!(kv.client().get("k19").expect("get").as_deref(), Some("v"));
    kv.stop();
}

#[test]
fn layoutctl_refuses_a_wrong_admin_token_with_exit_code_3() {
    let scratch = Scratch::new();
    let dir = scratch.path("node");
    let token = scratch.token();
    let kv = Kv::start(
        "node",
        &[
            "--dir",
            &dir,
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            &token,
        ],
    );
    let wrong = scratch.dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-kvstore-token-0123456789").expect("write");

    let refused = layoutctl(&kv.endpoint(), &wrong, &["prepare"]);
    assert_eq!(refused.status.code(), Some(3), "{}", show(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        show(&refused)
    );
    let refused = layoutctl(&kv.endpoint(), &wrong, &["--json", "status"]);
    assert_eq!(refused.status.code(), Some(3), "{}", show(&refused));
    let error: Value = serde_json::from_slice(&refused.stdout).expect("JSON error");
    assert_eq!(error["http_status"], 401, "{error}");
    assert_eq!(error["exit_code"], 3, "{error}");

    // Nothing happened: the node is not prepared and takes writes.
    let status = status(&kv);
    assert!(!status.prepared, "{status:?}");
    kv.client().put("k", "v").expect("put");
    kv.stop();
}

#[test]
fn kvstore_takes_its_admin_token_from_the_file_or_from_the_environment() {
    let scratch = Scratch::new();
    let token = scratch.token();
    let env_token_file = scratch.dir.path().join("env-token");
    let env_token = "kvstore-environment-token-0123456789";
    std::fs::write(&env_token_file, env_token).expect("write");

    // `$KVSTORE_ADMIN_TOKEN` alone.
    let kv = Kv::start_with(
        "env",
        &[
            "--dir",
            &scratch.path("env"),
            "--admin-listen",
            "127.0.0.1:0",
        ],
        Stdio::piped(),
        Some(env_token),
    );
    layoutctl_json(&kv.endpoint(), &env_token_file, &["status"]);
    kv.stop();

    // `--admin-token-file` with `$KVSTORE_ADMIN_TOKEN` also set (a shell profile, a
    // unit's environment): the command line wins.
    let kv = Kv::start_with(
        "file and env",
        &[
            "--dir",
            &scratch.path("both"),
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            &token,
        ],
        Stdio::piped(),
        Some(env_token),
    );
    layoutctl_json(&kv.endpoint(), &scratch.token_file, &["status"]);
    let refused = layoutctl(&kv.endpoint(), &env_token_file, &["status"]);
    assert_eq!(refused.status.code(), Some(3), "{}", show(&refused));
    kv.stop();

    // Both on the command line: ambiguous, refused as usage.
    let both = kvstore_refused(&[
        "--dir",
        &scratch.path("ambiguous"),
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        &token,
        "--admin-token",
        env_token,
    ]);
    assert_eq!(both.status.code(), Some(2), "{}", show(&both));
}

#[test]
fn kvstore_refuses_malformed_flags_with_a_clear_message() {
    let scratch = Scratch::new();
    let dir = scratch.path("node");

    let bogus = kvstore_refused(&["--dir", &dir, "--software-version", "Bogus"]);
    let stderr = String::from_utf8_lossy(&bogus.stderr);
    assert!(
        stderr.contains("no kvstore layout feature \"Bogus\"")
            && stderr.contains("Initial")
            && stderr.contains("CompareAndSwap"),
        "names the bad value and the known ones:\n{}",
        show(&bogus)
    );
    let beyond = kvstore_refused(&["--dir", &dir, "--software-version", "99"]);
    assert!(
        String::from_utf8_lossy(&beyond.stderr).contains("no kvstore layout version 99"),
        "{}",
        show(&beyond)
    );
    let intent = kvstore_refused(&["--dir", &dir, "--intent", "sideways"]);
    assert_eq!(intent.status.code(), Some(2), "usage: {}", show(&intent));
    assert!(
        String::from_utf8_lossy(&intent.stderr).contains("sideways"),
        "{}",
        show(&intent)
    );
    let no_id = kvstore_refused(&["--dir", &dir, "--join", "127.0.0.1:9"]);
    assert!(
        String::from_utf8_lossy(&no_id.stderr).contains("--node-id"),
        "{}",
        show(&no_id)
    );
    assert!(
        !Path::new(&dir).join("layout").join("VERSION").exists(),
        "a refused command line writes no VERSION file"
    );
}

// ---------------------------------------------------------------------------------------
// A 3-process cluster.

/// The cluster token of the 3-process cluster (the member link's; not the admin token).
const CLUSTER_TOKEN: &str = "kvstore-process-cluster-token-0123456789";

/// One cluster node's command line.
struct NodeArgs<'a> {
    scratch: &'a Scratch,
    id: &'static str,
    /// `None`: this node runs the coordinator.
    join: Option<SocketAddr>,
    coordinator_port: u16,
    /// The cluster token it is given (in a file of its own).
    cluster_token: &'static str,
}

impl NodeArgs<'_> {
    fn start(&self, software: &str, intent: &str) -> Kv {
        let args = self.args(software, intent);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Kv::start(&format!("{} ({software})", self.id), &args)
    }

    /// Writes this node's cluster token file; returns its path.
    fn cluster_token_file(&self) -> String {
        let path = self.scratch.path(&format!("cluster-token-{}", self.id));
        std::fs::write(&path, format!("{}\n", self.cluster_token)).expect("cluster token file");
        path
    }

    fn args(&self, software: &str, intent: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "--dir",
            &self.scratch.path(self.id),
            "--node-id",
            self.id,
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token-file",
            &self.scratch.token(),
            "--software-version",
            software,
            "--intent",
            intent,
            "--heartbeat-ms",
            "50",
            "--cluster-token-file",
            &self.cluster_token_file(),
        ]
        .map(str::to_owned)
        .to_vec();
        match self.join {
            Some(coordinator) => args.extend(["--join".to_owned(), coordinator.to_string()]),
            None => args.extend([
                "--coordinator".to_owned(),
                "--cluster-dir".to_owned(),
                self.scratch.path("cluster"),
                "--coordinator-port".to_owned(),
                self.coordinator_port.to_string(),
            ]),
        }
        args
    }
}

/// `POST /cluster/finalize`: the status and the JSON answer.
fn cluster_finalize(coordinator: &Kv) -> (u16, Value) {
    let (code, body) = coordinator
        .operator()
        .raw(
            "POST",
            "/cluster/finalize",
            Some(br#"{"client_id": "ops"}"#),
        )
        .expect("POST /cluster/finalize");
    let body = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("/cluster/finalize answered {code} with non-JSON {body:?}: {e}")
    });
    (code, body)
}

fn blockers(answer: &Value) -> Vec<String> {
    let mut ids: Vec<String> = answer["error"]["blockers"]
        .as_array()
        .unwrap_or_else(|| panic!("no blockers in {answer}"))
        .iter()
        .map(|b| b["member_id"].as_str().expect("member_id").to_owned())
        .collect();
    ids.sort();
    ids
}

fn assert_blocked_by(coordinator: &Kv, old: &[&str]) {
    let (code, answer) = cluster_finalize(coordinator);
    assert_eq!(code, 409, "refused while old members remain: {answer}");
    assert_eq!(answer["error"]["kind"], "blocked", "{answer}");
    assert_eq!(blockers(&answer), old, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    for id in old {
        assert!(message.contains(id), "the message names {id}: {message}");
    }
}

/// Waits until the coordinator sees `id` registered with software `slv`.
fn await_member(coordinator: &Kv, id: &str, slv: u32) {
    poll_until(&format!("{id} registered with SLV {slv}"), || {
        let status = coordinator.operator().cluster_status().ok()?;
        status
            .members
            .iter()
            .any(|m| m.member_id == id && m.software_layout_version == slv)
            .then_some(())
    });
}

/// `kv` (node `id`) finalized to the latest version: `/status`, `layoutctl status`, and
/// the gated APIs on its own data (its index migration ran).
fn assert_finalized_node(kv: &Kv, id: &str, token_file: &Path) {
    poll_until(&format!("{id} finalized to MLV 4"), || {
        (status(kv).mlv == 4).then_some(())
    });
    let layoutctl_status = layoutctl_json(&kv.endpoint(), token_file, &["status"]);
    assert_eq!(
        layoutctl_status["metadata_layout_version"], 4,
        "{id}: {layoutctl_status}"
    );
    assert_eq!(
        layoutctl_status["needs_finalization"], false,
        "{id}: {layoutctl_status}"
    );
    let client = kv.client();
    assert_eq!(
        client.find_by_value("shared").expect("by-value"),
        [format!("{id}-a"), format!("{id}-c")],
        "{id}: the index migration ran on this node"
    );
    assert_eq!(
        client.find_by_value(id).expect("by-value"),
        [format!("{id}-b")]
    );
    assert!(client
        .compare_and_swap(&format!("{id}-b"), Some(id), "swapped")
        .expect("cas"));
}

/// A node presenting another cluster token (here the admin token) is refused by the
/// member link (401) and does not start; it never becomes a member.
fn assert_other_cluster_token_refused(member: &NodeArgs<'_>, coordinator: &Kv) {
    let intruder = NodeArgs {
        scratch: member.scratch,
        id: member.id,
        join: member.join,
        coordinator_port: 0,
        cluster_token: TOKEN,
    };
    let args = intruder.args("Initial", "normal");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = kvstore_refused(&args);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refused the member's credentials"),
        "{}",
        show(&refused)
    );
    let cluster = coordinator
        .operator()
        .cluster_status()
        .expect("cluster status");
    assert!(cluster.member(member.id).is_none(), "{cluster:?}");
}

#[test]
fn a_three_process_cluster_rolls_to_the_new_release_and_finalizes_through_the_coordinator() {
    let scratch = Scratch::new();
    let mut kv0_args = NodeArgs {
        scratch: &scratch,
        id: "kv0",
        join: None,
        coordinator_port: 0,
        cluster_token: CLUSTER_TOKEN,
    };
    let kv0 = kv0_args.start("Initial", "normal");
    let members_addr = kv0
        .cluster
        .expect("the coordinator prints its member address");
    // A restarted coordinator must be found again on the same port.
    kv0_args.coordinator_port = members_addr.port();
    let member_args = |id| NodeArgs {
        scratch: &scratch,
        id,
        join: Some(members_addr),
        coordinator_port: 0,
        cluster_token: CLUSTER_TOKEN,
    };
    let (kv1_args, kv2_args) = (member_args("kv1"), member_args("kv2"));
    let kv1 = kv1_args.start("Initial", "normal");
    let kv2 = kv2_args.start("Initial", "normal");
    assert_eq!(kv1.cluster, Some(members_addr));
    for kv in [&kv0, &kv1, &kv2] {
        assert_eq!((kv.slv, kv.mlv), (0, 0), "{}", kv.name);
    }
    await_member(&kv0, "kv1", 0);
    await_member(&kv0, "kv2", 0);

    assert_other_cluster_token_refused(&member_args("kv9"), &kv0);

    // Data on each node (each has its own store).
    for (kv, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        let client = kv.client();
        client.put(&format!("{id}-a"), "shared").expect("put");
        client.put(&format!("{id}-b"), id).expect("put");
        client.put(&format!("{id}-c"), "shared").expect("put");
    }

    // Rolling upgrade, coordinator first. It goes down hard (SIGKILL): its embedded
    // cluster store and its member port come back all the same.
    kv0.kill();
    let kv0 = kv0_args.start("CompareAndSwap", "upgrade");
    assert_eq!(
        kv0.cluster,
        Some(members_addr),
        "same member port after restart"
    );
    assert_eq!((kv0.slv, kv0.mlv), (4, 0));
    assert_blocked_by(&kv0, &["kv1", "kv2"]);

    kv1.stop();
    let kv1 = kv1_args.start("CompareAndSwap", "upgrade");
    assert_eq!((kv1.slv, kv1.mlv), (4, 0));
    await_member(&kv0, "kv1", 4);
    assert_blocked_by(&kv0, &["kv2"]);

    // One node finalized alone would be ahead of the cluster: layoutctl is refused.
    let alone = layoutctl(&kv1.endpoint(), &scratch.token_file, &["finalize"]);
    assert_eq!(alone.status.code(), Some(1), "{}", show(&alone));
    assert!(
        String::from_utf8_lossy(&alone.stdout).contains("/cluster/finalize")
            || String::from_utf8_lossy(&alone.stderr).contains("/cluster/finalize"),
        "the refusal points at /cluster/finalize: {}",
        show(&alone)
    );

    // kv2 crashes (SIGKILL) instead of stopping; its acknowledged writes survive.
    kv2.kill();
    let kv2 = kv2_args.start("CompareAndSwap", "upgrade");
    assert_eq!((kv2.slv, kv2.mlv), (4, 0));
    await_member(&kv0, "kv2", 4);
    assert_eq!(
        kv2.client().get("kv2-b").expect("get").as_deref(),
        Some("kv2")
    );
    assert_not_finalized(kv2.client().find_by_value("shared"), "ValueIndex");

    // Without the admin token the data port does not finalize the cluster.
    let (code, body) = kv0
        .client()
        .raw(
            "POST",
            "/cluster/finalize",
            Some(br#"{"client_id": "intruder"}"#),
        )
        .expect("POST /cluster/finalize without a token");
    assert_eq!(code, 401, "{body}");
    assert_eq!(status(&kv0).mlv, 0, "nothing finalized without the token");

    // Everyone runs the new release: the cluster finalizes.
    let (code, answer) = cluster_finalize(&kv0);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["outcome"], "finalized", "{answer}");
    assert_eq!(answer["target"], 4, "{answer}");
    poll_until("the cluster's finalization complete", || {
        let status = kv0.operator().cluster_status().ok()?;
        (status.complete && status.cluster_layout_version == 4).then_some(())
    });
    for (kv, id) in [(&kv0, "kv0"), (&kv1, "kv1"), (&kv2, "kv2")] {
        assert_finalized_node(kv, id, &scratch.token_file);
    }

    // The old release is refused on a finalized member's disk.
    kv2.stop();
    let args = kv2_args.args("Initial", "normal");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_old_release_refused(&args, Path::new(&scratch.path("kv2")));
    kv1.stop();
    kv0.stop();
}

// ---------------------------------------------------------------------------------------
// The member's fence, with real processes.

/// Sends `signal` (`STOP`, `CONT`) to `kv`'s process.
fn signal(kv: &Kv, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &kv.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {}", kv.name);
}

/// `PUT /kv/{key}` on `kv`: the status and body.
fn put_raw(kv: &Kv, key: &str) -> (u16, String) {
    kv.client()
        .raw(
            "PUT",
            &format!("/kv/{key}"),
            Some(br#"{"value":"v"}"#.as_slice()),
        )
        .expect("PUT")
}

/// `kvstore_fenced` on `kv`'s `/metrics` (behind its admin token).
fn fenced_gauge(kv: &Kv) -> String {
    let (code, text) = kv
        .operator()
        .raw("GET", "/metrics", None)
        .expect("GET /metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("kvstore_fenced "))
        .unwrap_or_else(|| panic!("no kvstore_fenced in {text}"))
        .trim()
        .to_owned()
}

#[test]
fn a_member_process_taken_over_by_another_refuses_writes_and_recovers_when_it_stops() {
    let scratch = Scratch::new();
    let kv0_args = NodeArgs {
        scratch: &scratch,
        id: "kv0",
        join: None,
        coordinator_port: 0,
        cluster_token: CLUSTER_TOKEN,
    };
    // A short member lease, so a paused member lapses soon.
    let mut args = kv0_args.args("CompareAndSwap", "normal");
    args.extend(["--member-lease-ms".to_owned(), "500".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kv0 = Kv::start("kv0", &args);
    let members_addr = kv0.cluster.expect("member address");
    let kv1_args = NodeArgs {
        scratch: &scratch,
        id: "kv1",
        join: Some(members_addr),
        coordinator_port: 0,
        cluster_token: CLUSTER_TOKEN,
    };
    let kv1 = kv1_args.start("CompareAndSwap", "normal");
    await_member(&kv0, "kv1", 4);
    assert_eq!(put_raw(&kv1, "before").0, 200);
    assert_eq!(fenced_gauge(&kv1), "0");

    // kv1 pauses (SIGSTOP) past its lease; a second process under its id (its own
    // directory) takes the registration over.
    signal(&kv1, "STOP");
    poll_until("kv1 is no longer live", || {
        let status = kv0.operator().cluster_status().ok()?;
        status.member("kv1").is_some_and(|m| !m.live).then_some(())
    });
    let mut other = kv1_args.args("CompareAndSwap", "normal");
    let dir = other.iter().position(|a| a == "--dir").expect("--dir") + 1;
    other[dir] = scratch.path("kv1-other");
    let other: Vec<&str> = other.iter().map(String::as_str).collect();
    let kv1_other = Kv::start("kv1 (another process)", &other);

    // kv1 resumes: its next heartbeat is refused, and it refuses writes, saying why.
    signal(&kv1, "CONT");
    let (code, body) = poll_until("kv1 refuses writes", || {
        let (code, body) = put_raw(&kv1, "while-fenced");
        (code == 503).then_some((code, body))
    });
    assert_eq!(code, 503);
    assert!(body.contains("\"fenced\""), "{body}");
    assert!(
        body.contains("another process"),
        "the refusal is named: {body}"
    );
    assert!(status(&kv1).fenced.is_some());
    assert_eq!(fenced_gauge(&kv1), "1");
    assert_eq!(
        kv1.client()
            .get("before")
            .expect("reads are served")
            .as_deref(),
        Some("v")
    );
    assert!(kv1.stderr.lock().contains("ERROR"), "the fence is logged");

    // The other process stops cleanly: kv1 registers again and recovers by itself.
    kv1_other.stop();
    poll_until("kv1 accepts writes again", || {
        (put_raw(&kv1, "after").0 == 200).then_some(())
    });
    assert!(status(&kv1).fenced.is_none());
    assert_eq!(fenced_gauge(&kv1), "0");
    assert!(
        kv1.stderr.lock().contains("no longer fenced"),
        "the recovery is logged"
    );
    kv1.stop();
    kv0.stop();
}

#[test]
fn a_member_process_starts_and_serves_while_its_coordinator_is_down_and_registers_later() {
    let scratch = Scratch::new();
    let mut kv0_args = NodeArgs {
        scratch: &scratch,
        id: "kv0",
        join: None,
        coordinator_port: 0,
        cluster_token: CLUSTER_TOKEN,
    };
    let kv0 = kv0_args.start("CompareAndSwap", "normal");
    let members_addr = kv0.cluster.expect("member address");
    kv0_args.coordinator_port = members_addr.port();
    kv0.stop();

    // No coordinator: the member (a fresh install at the old layout, pre-finalized)
    // starts, not fenced, and takes reads and writes.
    let mut args = NodeArgs {
        scratch: &scratch,
        id: "kv1",
        join: Some(members_addr),
        coordinator_port: 0,
        cluster_token: CLUSTER_TOKEN,
    }
    .args("CompareAndSwap", "normal");
    args.extend(["--initial-version".to_owned(), "Initial".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kv1 = Kv::start("kv1", &args);
    assert_eq!((kv1.slv, kv1.mlv), (4, 0));
    assert_eq!(put_raw(&kv1, "k").0, 200);
    assert_eq!(kv1.client().get("k").expect("get").as_deref(), Some("v"));
    assert!(status(&kv1).fenced.is_none());
    assert!(
        kv1.stderr.lock().contains("starts without its coordinator"),
        "a warning says so: {}",
        kv1.stderr.lock()
    );
    // A member's local finalization is refused, and so is overriding the cluster's
    // condition: that is the coordinator's to decide.
    let forced = layoutctl(
        &kv1.endpoint(),
        &scratch.token_file,
        &[
            "finalize",
            "--override",
            "kvstore-cluster-finalization",
            "--reason",
            "I know best",
        ],
    );
    assert!(!forced.status.success(), "{}", show(&forced));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&forced.stdout),
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(said.contains("cannot be overridden"), "{said}");
    assert!(said.contains("coordinator"), "{said}");
    assert_eq!(status(&kv1).mlv, 0);

    // The coordinator comes back on its port: kv1 registers on its next heartbeat.
    let kv0 = kv0_args.start("CompareAndSwap", "normal");
    await_member(&kv0, "kv1", 4);
    poll_until("kv1 is live to the coordinator", || {
        let status = kv0.operator().cluster_status().ok()?;
        status.member("kv1").is_some_and(|m| m.live).then_some(())
    });
    // Told to finalize as it registered, it catches up with the cluster in the
    // background, serving meanwhile.
    poll_until("kv1 finalized to the cluster's version", || {
        (status(&kv1).mlv == kv0.mlv).then_some(())
    });
    assert_eq!(put_raw(&kv1, "k2").0, 200);
    kv1.stop();
    kv0.stop();
}

// ---------------------------------------------------------------------------------------
// An index migration that resumes itself (issue 16).

/// Where the workload writes.
const RESUME_PREFIX: &str = "wl/";
/// Keys in the node before its index migration starts.
const RESUME_SEED_KEYS: usize = 2_000;
/// SIGKILLs during the migration.
const RESUME_KILLS: u32 = 5;

/// One client thread writing to whichever process serves now, recording every write
/// and how it ended (acknowledged, refused, in doubt) for the checker.
struct ResumeWorkload {
    recorder: layout_testkit::workload::Recorder,
    addr: Arc<Mutex<Option<SocketAddr>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ResumeWorkload {
    fn start(addr: SocketAddr) -> ResumeWorkload {
        let recorder = layout_testkit::workload::Recorder::new(RESUME_PREFIX);
        recorder.set_phase("migrating");
        let target = Arc::new(Mutex::new(Some(addr)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (recorder, target, stop) =
                (recorder.clone(), Arc::clone(&target), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let Some(addr) = *target.lock() else {
                        std::thread::sleep(POLL_EVERY);
                        continue;
                    };
                    i += 1;
                    // New keys, and every third write overwrites an earlier key.
                    let key = if i.is_multiple_of(3) {
                        format!("{RESUME_PREFIX}k{}", i / 2)
                    } else {
                        format!("{RESUME_PREFIX}k{i}")
                    };
                    let value = format!("v{i}");
                    let pending = recorder.begin_put(&key, &value);
                    match KvClient::with_timeout(addr, Duration::from_secs(10)).put(&key, &value) {
                        Ok(index) => pending.acknowledged(Some(index)),
                        Err(e @ ClientError::Unreachable { .. }) => {
                            pending.refused(format!("not sent: {e}"));
                            std::thread::sleep(POLL_EVERY);
                        }
                        Err(e) => {
                            pending.in_doubt(e.to_string());
                            std::thread::sleep(POLL_EVERY);
                        }
                    }
                }
            })
        };
        ResumeWorkload {
            recorder,
            addr: target,
            stop,
            thread: Some(thread),
        }
    }

    fn point_at(&self, addr: Option<SocketAddr>) {
        *self.addr.lock() = addr;
    }

    fn stop(mut self) -> layout_testkit::workload::Recorder {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the workload thread panicked");
        }
        self.recorder.clone()
    }
}

/// The value-index migration's figures on `kv`.
fn index_figures(kv: &Kv) -> kvstore::MigrationFigures {
    status(kv)
        .index_migration
        .unwrap_or_else(|| panic!("{}: the software knows ValueIndex", kv.name))
}

/// After kill `kill`: the restarted node resumed its migration at start-up, by itself, as
/// the client that started it, from where it was (past `done_at_kill`), knowing the total.
fn assert_resumed_by_itself(kv: &Kv, scratch: &Scratch, kill: u32, done_at_kill: u64) {
    let resumed = poll_until(&format!("kill {kill}: resumed by itself"), || {
        let f = index_figures(kv);
        (f.runs == kill + 1 && (f.rows_done > done_at_kill || f.complete)).then_some(f)
    });
    assert!(
        resumed.rows_total.is_some_and(|t| t >= resumed.rows_done),
        "the total is known at once after a restart: {resumed:?}"
    );
    let finalization = layoutctl_json(
        &kv.endpoint(),
        &scratch.token_file,
        &["finalization-status"],
    );
    assert_eq!(
        finalization["resumed_at_startup"], true,
        "kill {kill}: {finalization}"
    );
    assert_eq!(
        finalization["client_id"], "kvstore-processes-test",
        "kill {kill}: the client that started it: {finalization}"
    );
    assert_eq!(finalization["resumes"], kill, "kill {kill}: {finalization}");
}

#[test]
fn a_node_killed_five_times_during_its_index_migration_resumes_it_by_itself_each_time() {
    let scratch = Scratch::new();
    let dir = scratch.path("node");
    let token = scratch.token();
    // A slow, throttled migration in small batches, so every kill lands in the middle.
    let args = [
        "--dir",
        &dir,
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        &token,
        "--software-version",
        "CompareAndSwap",
        "--initial-version",
        "Initial",
        "--migration-batch-size",
        "25",
        "--migration-max-rows-per-sec",
        "500",
    ];
    let mut kv = Kv::start("node", &args);
    assert_eq!((kv.slv, kv.mlv), (4, 0), "pre-finalized at the old layout");
    let client = kv.client();
    for i in 0..RESUME_SEED_KEYS {
        client
            .put(&format!("seed/{i:05}"), &format!("colour-{}", i % 7))
            .expect("seed");
    }
    let workload = ResumeWorkload::start(kv.http);

    // The operator finalizes once; nobody sends finalize again.
    let started = layoutctl_json(&kv.endpoint(), &scratch.token_file, &["finalize"]);
    assert!(
        matches!(started["outcome"].as_str(), Some("started")),
        "the migration runs in the background: {started}"
    );
    for kill in 1..=RESUME_KILLS {
        // The run before this kill; the restart after it starts run `kill + 1`.
        let runs = kill;
        // Mid-migration, with progress made by this run: kill it.
        let figures = poll_until(&format!("kill {kill}: the run {runs} copies rows"), || {
            let f = index_figures(&kv);
            (f.runs == runs
                && f.rows_done > 0
                && f.state == layout_core::admin::WireMigrationState::Running)
                .then_some(f)
        });
        let done_at_kill = figures.rows_done;
        assert!(
            !figures.complete,
            "kill {kill} lands mid-migration: {figures:?}"
        );
        workload.point_at(None);
        kv.kill();
        kv = Kv::start(&format!("node after kill {kill}"), &args);
        workload.point_at(Some(kv.http));
        assert_resumed_by_itself(&kv, &scratch, kill, done_at_kill);
    }

    // It finishes by itself: finalized, the index complete.
    poll_until("finalized without another finalize", || {
        (status(&kv).mlv == 4).then_some(())
    });
    let figures = index_figures(&kv);
    assert!(figures.complete, "{figures:?}");
    assert_eq!(figures.runs, RESUME_KILLS + 1, "{figures:?}");
    assert!(
        figures.rows_total.is_some_and(|t| t >= figures.rows_done),
        "{figures:?}"
    );
    let text = layoutctl_ok(&kv.endpoint(), &scratch.token_file, &["migrations"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("kv_by_value: complete"),
        "{}",
        show(&text)
    );

    // Every acknowledged write is there, with its value; the index finds the seed.
    let recorder = workload.stop();
    let listing = kv.client().list(RESUME_PREFIX).expect("list");
    let report = recorder
        .check_listing(
            &layout_testkit::workload::Expectations::new().min_acks("migrating", 50),
            listing,
        )
        .unwrap_or_else(|failure| panic!("acknowledged writes lost: {failure}"));
    assert!(report.keys_checked > 0);
    let seeded = kv.client().find_by_value("colour-3").expect("by-value");
    assert_eq!(
        seeded.iter().filter(|k| k.starts_with("seed/")).count(),
        (0..RESUME_SEED_KEYS).filter(|i| i % 7 == 3).count(),
        "the index covers every seeded key"
    );
    kv.stop();
}

#[test]
fn the_index_migration_settings_change_while_it_runs_through_layoutctl() {
    let scratch = Scratch::new();
    let dir = scratch.path("node");
    let token = scratch.token();
    let args = [
        "--dir",
        &dir,
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        &token,
        "--software-version",
        "CompareAndSwap",
        "--initial-version",
        "Initial",
        "--migration-batch-size",
        "10",
        "--migration-max-rows-per-sec",
        "100",
    ];
    let kv = Kv::start("node", &args);
    let client = kv.client();
    for i in 0..300 {
        client.put(&format!("k{i:04}"), "v").expect("seed");
    }
    let endpoint = kv.endpoint();
    let listed = layoutctl_json(&endpoint, &scratch.token_file, &["migrations"]);
    assert_eq!(listed["migrations"][0]["name"], "kv_by_value", "{listed}");
    assert_eq!(listed["migrations"][0]["batch_size"], 10, "{listed}");
    assert_eq!(listed["migrations"][0]["max_rows_per_sec"], 100, "{listed}");

    layoutctl_json(&endpoint, &scratch.token_file, &["finalize"]);
    poll_until("the migration runs", || {
        (index_figures(&kv).rows_done > 0).then_some(())
    });
    let changed = layoutctl_json(
        &endpoint,
        &scratch.token_file,
        &[
            "migration-settings",
            "--batch-size",
            "50",
            "--max-rows-per-sec",
            "0",
            "--latency-budget-ms",
            "250",
        ],
    );
    assert_eq!(changed["batch_size"], 50, "{changed}");
    assert_eq!(changed["max_rows_per_sec"], Value::Null, "{changed}");
    assert_eq!(changed["latency_budget_ms"], 250, "{changed}");
    let figures = index_figures(&kv);
    assert_eq!(
        (
            figures.batch_size,
            figures.max_rows_per_sec,
            figures.latency_budget_ms
        ),
        (50, None, Some(250)),
        "{figures:?}"
    );
    let refused = layoutctl(
        &endpoint,
        &scratch.token_file,
        &["migration-settings", "--batch-size", "0"],
    );
    assert!(!refused.status.success(), "{}", show(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--batch-size"),
        "{}",
        show(&refused)
    );
    poll_until("finalized", || (status(&kv).mlv == 4).then_some(()));
    kv.stop();
}
