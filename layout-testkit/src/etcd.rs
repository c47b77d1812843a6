//! A real etcd server on loopback for tests (feature `etcd`): Debian's `etcd-server` (3.4
//! and later), single member, on free ports, its data in a temporary directory.
//!
//! The server runs under a small shell that kills it when this process's end of the
//! shell's stdin closes: on drop, and also when the test process dies without dropping (a
//! `static`, a panic that aborts), so no etcd outlives its test binary. The shell then
//! removes the server's directory, which a `static`'s `TempDir` never would (etcd's
//! preallocated write-ahead log is about 120 MB).
//!
//! ```no_run
//! use layout_core::cluster::ClusterStore;
//! use layout_testkit::etcd::EtcdServer;
//!
//! let etcd = EtcdServer::start().expect("etcd starts");
//! let store = etcd.store("/my-test").expect("connects");
//! assert!(store.kinds().expect("answers").is_empty());
//! ```

use std::io::{self, Read as _};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use layout_core::cluster::{ClusterStore, EtcdStore, StoreError};
use layout_core::etcd::EtcdOptions;

/// How long a server may take to answer its first request (a safety bound).
const START_BOUND: Duration = Duration::from_secs(30);
/// Attempts with fresh ports when a port was taken between choosing and binding it.
const ATTEMPTS: usize = 5;
/// What the shell runs: etcd in the background, then, once stdin closes, kill it, wait
/// for it and remove its directory. Arguments: the log file, the directory, etcd's flags.
const SHELL: &str = r#"log="$1"; dir="$2"; shift 2; etcd "$@" >"$log" 2>&1 & pid=$!; read -r _; kill -9 "$pid"; wait "$pid"; rm -rf "$dir""#;

/// Why an etcd server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EtcdServerError {
    /// No `etcd` binary that runs.
    #[error(
        "the etcd tests need the `etcd` binary (Debian's etcd-server; scripts/test installs \
         it): {detail}"
    )]
    Missing {
        /// What running `etcd --version` gave.
        detail: String,
    },
    /// A temporary directory, a free port or the shell could not be had.
    #[error("cannot start etcd: {0}")]
    Io(#[from] io::Error),
    /// etcd exited at start (every attempt) or did not answer within the bound.
    #[error("etcd did not start ({reason}); its last log:\n{log}")]
    NotStarted {
        /// What happened.
        reason: String,
        /// The end of etcd's own log.
        log: String,
    },
}

/// A running single-member etcd on loopback; stopped (and its directory removed) on drop.
#[derive(Debug)]
pub struct EtcdServer {
    shell: Child,
    stdin: Option<ChildStdin>,
    endpoint: String,
    dir: tempfile::TempDir,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl EtcdServer {
    /// Starts a single-member etcd on free loopback ports with short heartbeat and election
    /// timeouts (so leases of a second or two expire promptly), and waits (bounded) until
    /// it answers. A port taken between choosing and binding it is retried with others.
    pub fn start() -> Result<Self, EtcdServerError> {
        match Command::new("etcd").arg("--version").output() {
            Ok(out) if out.status.success() => {}
            other => {
                return Err(EtcdServerError::Missing {
                    detail: format!("{other:?}"),
                })
            }
        }
        let mut last_log = String::new();
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir()?;
            let client = format!("http://127.0.0.1:{}", free_port()?);
            let peer = format!("http://127.0.0.1:{}", free_port()?);
            let mut shell = Command::new("sh")
                .arg("-c")
                .arg(SHELL)
                .arg("sh")
                .arg(dir.path().join("etcd.log"))
                .arg(dir.path())
                .args(["--name", "layout-test", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("layout-test={peer}")])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let stdin = shell.stdin.take();
            let mut server = Self {
                shell,
                stdin,
                endpoint: client,
                dir,
            };
            if server.wait_ready()? {
                return Ok(server);
            }
            last_log = server.log();
        }
        Err(EtcdServerError::NotStarted {
            reason: format!("it exited at start {ATTEMPTS} times"),
            log: last_log,
        })
    }

    /// Waits (bounded) until etcd answers; `false` if it exited (a port was taken).
    fn wait_ready(&mut self) -> Result<bool, EtcdServerError> {
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Ok(Some(_)) = self.shell.try_wait() {
                return Ok(false);
            }
            let options = EtcdOptions::new([self.endpoint.clone()], "/layout-testkit-probe")
                .with_timeout(Duration::from_secs(2));
            if EtcdStore::connect(options).and_then(|s| s.kinds()).is_ok() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Err(EtcdServerError::NotStarted {
                    reason: format!("{} did not answer within {START_BOUND:?}", self.endpoint),
                    log: self.log(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// etcd's own log so far (empty if it cannot be read).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("etcd.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The client URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's directory (its data and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Freezes the server (`SIGSTOP`): it keeps its connections but answers nothing, as a
    /// hung or partitioned store would, until [`thaw`](Self::thaw). Start a server of
    /// your own for this: a frozen server stalls every test that shares it.
    pub fn freeze(&self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a [frozen](Self::freeze) server run again (`SIGCONT`).
    pub fn thaw(&self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let shell = self.shell.id();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))?;
        let etcd = children
            .split_whitespace()
            .next()
            .ok_or_else(|| io::Error::other("etcd's process is not running"))?;
        let status = Command::new("kill").args([signal, etcd]).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {signal} {etcd}: {status}")))
        }
    }

    /// A cluster store on this server under `prefix` (give each test its own).
    pub fn store(&self, prefix: &str) -> Result<EtcdStore, StoreError> {
        EtcdStore::connect(EtcdOptions::new([self.endpoint.clone()], prefix))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Closing the shell's stdin makes it kill etcd, wait for it and remove its
        // directory.
        drop(self.stdin.take());
        let _ = self.shell.wait();
    }
}
