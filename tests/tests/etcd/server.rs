//! A real etcd (Debian's `etcd-server`, 3.4) on loopback, started by the tests.
//!
//! Each server runs under a small shell that kills it when this process's end of the
//! shell's stdin closes: on drop, and also when the test process dies without dropping
//! (a `static`, a panic that aborts), so no etcd outlives its test binary. The shell then
//! removes the server's directory: a `static`'s `TempDir` is never dropped, and etcd's
//! preallocated write-ahead log would otherwise leave about 120 MB behind per test process.

use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use layout_core::cluster::{ClusterStore, EtcdOptions, EtcdStore};

/// How long a server may take to answer its first request (a safety bound).
const START_BOUND: Duration = Duration::from_secs(30);
/// Attempts with fresh ports when a port was taken between choosing and binding it.
const ATTEMPTS: usize = 5;

/// A running etcd server.
pub(crate) struct EtcdServer {
    shell: Child,
    stdin: Option<ChildStdin>,
    endpoint: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl EtcdServer {
    /// Starts a single-member etcd on free loopback ports, its data in a temporary
    /// directory, with short heartbeat and election timeouts (so leases of 1-2 s expire
    /// promptly). Panics, naming the cause, when `etcd` is missing or never starts.
    pub(crate) fn start() -> Self {
        let version = Command::new("etcd").arg("--version").output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "the etcd tests need the `etcd` binary (Debian's etcd-server; scripts/test installs \
             it): {version:?}"
        );
        let mut last_log = String::new();
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir().unwrap();
            let (client, peer) = (free_port(), free_port());
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = dir.path().join("etcd.log");
            let mut shell = Command::new("sh")
                .arg("-c")
                .arg(r#"log="$1"; dir="$2"; shift 2; etcd "$@" >"$log" 2>&1 & pid=$!; read -r _; kill -9 "$pid"; wait "$pid"; rm -rf "$dir""#)
                .arg("sh")
                .arg(&log)
                .arg(dir.path())
                .args(["--name", "layout-test"])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("layout-test={peer_url}")])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("could not start sh to run etcd");
            let stdin = shell.stdin.take();
            let mut server = Self {
                shell,
                stdin,
                endpoint: client_url,
                dir,
            };
            if server.wait_ready() {
                return server;
            }
            last_log = server.log();
        }
        panic!("etcd did not start after {ATTEMPTS} attempts; its last log:\n{last_log}");
    }

    /// Waits (bounded) until etcd answers; `false` if it exited (a port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Ok(Some(_)) = self.shell.try_wait() {
                return false;
            }
            let options = EtcdOptions::new([self.endpoint.clone()], "/layout-probe")
                .with_timeout(Duration::from_secs(2));
            if EtcdStore::connect(options).and_then(|s| s.kinds()).is_ok() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {} did not answer within {START_BOUND:?}; its log:\n{}",
                self.endpoint,
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("etcd.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The client URL.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A store on this server under `prefix` (give each test its own).
    pub(crate) fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::connect(EtcdOptions::new([self.endpoint.clone()], prefix)).unwrap()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Closing the shell's stdin makes it kill etcd and wait for it.
        drop(self.stdin.take());
        let _ = self.shell.wait();
    }
}

/// The etcd shared by the tests of this process (one per test binary under `cargo test`;
/// one per test under cargo-nextest, which runs each test in a process of its own).
pub(crate) fn shared() -> &'static EtcdServer {
    static SERVER: OnceLock<EtcdServer> = OnceLock::new();
    SERVER.get_or_init(EtcdServer::start)
}

/// A key prefix of its own for each test.
pub(crate) fn prefix(test: &str) -> String {
    format!("/layout-tests/{}/{test}", std::process::id())
}
