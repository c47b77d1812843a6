//! A child-process crash harness: re-run the current test binary as a child in a chosen
//! role, follow the steps it reports, SIGKILL it at a chosen step, and never let it
//! outlive the test.
//!
//! A crash test is one `#[test]` function with two halves. Run by the test runner, it is
//! the *parent*: it starts itself again with [`ChildCommand`] (the same binary, libtest
//! arguments `--exact <test> --nocapture --test-threads=1`, and the environment variable
//! [`CHILD_ROLE_ENV`] naming a role). Run that way, [`child_role`] returns the role and
//! the function is the *child*: it does the work under test and calls [`report_step`] at
//! each point of interest, which prints a line `LAYOUT-TESTKIT-STEP <name>` on stdout and
//! flushes it. The parent reads those lines in a thread of its own
//! ([`ChildProcess::wait_for_step`] never hangs on a hung child: its timeout is a safety
//! bound, not a timing assertion), kills the child where it wants to
//! ([`ChildProcess::kill`] sends SIGKILL on Unix), collects its exit status and output
//! ([`ChildProcess::wait`]), and then reopens what the child left on disk. Dropping a
//! [`ChildProcess`] kills and reaps the child, so no process outlives its test.
//!
//! To hold the child still in a window until the parent's SIGKILL lands, the child calls
//! [`block_until_killed`]; should the parent itself die first, the child notices (its
//! stdin closes) and exits.
//!
//! It works under `cargo test` and under cargo-nextest (one test per process) alike; the
//! child runs exactly one test, so process-global state (failpoints, `inventory`) is the
//! child's own.
//!
//! ```no_run
//! use std::time::Duration;
//! use layout_testkit::crash::{block_until_killed, child_role, report_step, ChildCommand};
//!
//! /// A safety bound for a hung child, not a timing assertion.
//! const BOUND: Duration = Duration::from_secs(60);
//!
//! // In a test file, this function carries `#[test]`.
//! fn a_kill_after_the_first_write_loses_nothing() {
//!     if child_role().as_deref() == Some("writer") {
//!         let dir = std::env::var("DATA_DIR").unwrap();
//!         // ... write the first record durably into `dir` ...
//!         report_step("first-write-durable");
//!         block_until_killed(); // the parent's SIGKILL lands here
//!     }
//!     let dir = tempfile::tempdir().unwrap();
//!     let mut child = ChildCommand::new(layout_testkit::test_name!(), "writer")
//!         .env("DATA_DIR", dir.path())
//!         .spawn()
//!         .unwrap();
//!     child.wait_for_step("first-write-durable", BOUND).unwrap();
//!     child.kill().unwrap();
//!     let output = child.wait(BOUND).unwrap();
//!     assert!(output.was_killed(), "{output:?}");
//!     // ... reopen `dir` and check that the first record is there ...
//! }
//! # fn main() { a_kill_after_the_first_write_loses_nothing() }
//! ```

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The environment variable that tells a re-run test binary which child role to play.
pub const CHILD_ROLE_ENV: &str = "LAYOUT_TESTKIT_CHILD_ROLE";

/// What [`report_step`] prints before a step's name; the parent recognises step lines by
/// it (anywhere in a line, since libtest may print `test name ... ` before it).
pub const STEP_MARKER: &str = "LAYOUT-TESTKIT-STEP ";

/// The exit code of a child whose parent went away while it was in
/// [`block_until_killed`].
pub const ORPHANED_EXIT_CODE: i32 = 86;

/// How many lines of the child's stderr an error quotes.
const STDERR_TAIL_LINES: usize = 30;

/// The role this process plays, when a [`ChildCommand`] started it; `None` in the parent
/// (the test as the test runner started it).
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE_ENV)
        .ok()
        .filter(|role| !role.is_empty())
}

/// Reports that the child reached step `name`: prints `LAYOUT-TESTKIT-STEP <name>` on
/// stdout and flushes it. Line breaks in `name` become spaces. Call it only in a child;
/// in the parent it just prints.
///
/// It writes to the process's stdout directly, so libtest's output capture cannot hold
/// it back. A failed write (the parent is gone) is ignored.
pub fn report_step(name: impl AsRef<str>) {
    let name = name.as_ref().replace(['\n', '\r'], " ");
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{STEP_MARKER}{name}");
    let _ = out.flush();
}

/// Blocks the child until the parent kills it. Never returns.
///
/// Should the parent die first (its end of the child's stdin closes), the child exits
/// with [`ORPHANED_EXIT_CODE`] instead of lingering.
pub fn block_until_killed() -> ! {
    let mut stdin = io::stdin().lock();
    let mut buf = [0_u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => std::process::exit(ORPHANED_EXIT_CODE),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => std::process::exit(ORPHANED_EXIT_CODE),
        }
    }
}

/// The libtest name (`module::function`) of the test function this macro is expanded in,
/// for [`ChildCommand::new`].
///
/// ```
/// fn some_test() -> String {
///     layout_testkit::test_name!()
/// }
/// // Doctests are a crate of their own; in a test binary this is `module::some_test`.
/// assert!(some_test().ends_with("some_test"));
/// ```
///
/// It reads the path of a function item declared in place
/// ([`std::any::type_name_of_val`]); Rust does not promise that format, so where it
/// matters, pass the name as a string literal instead.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn __layout_testkit_here() {}
        $crate::crash::test_name_from_item_path(::std::any::type_name_of_val(
            &__layout_testkit_here,
        ))
    }};
}

/// The libtest name of the test whose helper function has the item path `path`
/// (`crate::module::test::helper`): the crate's name, the helper's name and closure
/// segments are dropped. [`test_name!`] calls it.
pub fn test_name_from_item_path(path: &str) -> String {
    let segments: Vec<&str> = path.split("::").filter(|s| !s.starts_with("{{")).collect();
    match segments.as_slice() {
        [_krate, test @ .., _helper] if !test.is_empty() => test.join("::"),
        _ => path.to_owned(),
    }
}

/// What went wrong with a child process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrashError {
    /// The current test binary could not be found.
    #[error("cannot find the current test binary to re-run it as a child: {0}")]
    CurrentExe(#[source] io::Error),
    /// The command is not usable (an empty test name or role).
    #[error("invalid child command: {0}")]
    InvalidCommand(&'static str),
    /// The child could not be started.
    #[error("could not start child `{role}` ({program} --exact {test}): {source}")]
    Spawn {
        /// The role.
        role: String,
        /// The test it was to run.
        test: String,
        /// The binary.
        program: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The child exited (or closed its stdout) before reporting the step waited for.
    #[error(
        "child `{role}` (test {test}) exited with {status} before reporting step `{step}`{hint}; \
         steps seen: {steps:?}; stderr tail:\n{stderr_tail}",
        role = child.role,
        test = child.test,
        steps = child.steps,
        stderr_tail = child.stderr_tail,
        hint = if *ran_no_test {
            " (it ran no test: the test name must be the calling test's exact libtest name, \
             e.g. from `layout_testkit::test_name!()`)"
        } else {
            ""
        }
    )]
    ExitedEarly {
        /// The step waited for.
        step: String,
        /// How it ended.
        status: ExitStatus,
        /// Whether libtest ran no test in the child (a wrong test name).
        ran_no_test: bool,
        /// Which child, and what it reported.
        child: Box<ChildReport>,
    },
    /// The safety bound passed while waiting. After [`ChildProcess::wait_for_step`] the
    /// child keeps running (dropping the [`ChildProcess`] kills it); after
    /// [`ChildProcess::wait`] it was killed and reaped.
    #[error(
        "child `{role}` (test {test}) did not {waiting_for} within {bound:?} (a safety bound \
         for a hung child); steps seen: {steps:?}; stderr tail:\n{stderr_tail}",
        role = child.role,
        test = child.test,
        steps = child.steps,
        stderr_tail = child.stderr_tail,
    )]
    Timeout {
        /// What was waited for (`report step "x"`, `exit`).
        waiting_for: String,
        /// The bound.
        bound: Duration,
        /// Which child, and what it reported.
        child: Box<ChildReport>,
    },
    /// An operation on the child process failed.
    #[error("child `{role}`: {operation} failed: {source}")]
    Io {
        /// The role.
        role: String,
        /// What was being done (`kill`, `wait`).
        operation: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Which child an error is about, and what it had reported: part of
/// [`CrashError::ExitedEarly`] and [`CrashError::Timeout`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChildReport {
    /// The role.
    pub role: String,
    /// The test it ran.
    pub test: String,
    /// The steps it reported.
    pub steps: Vec<String>,
    /// The last lines of its stderr.
    pub stderr_tail: String,
}

/// Starts the current test binary as a child running one test in one role.
///
/// See the [module documentation](self) for the whole pattern.
#[derive(Debug, Clone)]
#[must_use = "a ChildCommand does nothing until spawned"]
pub struct ChildCommand {
    test: String,
    role: String,
    envs: Vec<(OsString, OsString)>,
}

impl ChildCommand {
    /// A child that runs exactly the test `test` (its libtest name, `module::function`;
    /// see [`test_name!`]) with [`child_role`] returning `role`.
    pub fn new(test: impl Into<String>, role: impl Into<String>) -> Self {
        Self {
            test: test.into(),
            role: role.into(),
            envs: Vec::new(),
        }
    }

    /// Sets an environment variable for the child (it inherits the parent's too).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Starts the child, with its stdin, stdout and stderr piped to this process.
    pub fn spawn(self) -> Result<ChildProcess, CrashError> {
        if self.test.is_empty() {
            return Err(CrashError::InvalidCommand("the test name is empty"));
        }
        if self.role.is_empty() {
            // An empty role reads as "no role": the child would start children itself.
            return Err(CrashError::InvalidCommand("the role is empty"));
        }
        let program = std::env::current_exe().map_err(CrashError::CurrentExe)?;
        let mut child = Command::new(&program)
            .arg("--exact")
            .arg(&self.test)
            .arg("--nocapture")
            .arg("--test-threads=1")
            .env(CHILD_ROLE_ENV, &self.role)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CrashError::Spawn {
                role: self.role.clone(),
                test: self.test.clone(),
                program: program.display().to_string(),
                source,
            })?;
        let output = Arc::new(Mutex::new(Collected::default()));
        let (events, events_rx) = mpsc::channel();
        let (stderr_done, stderr_done_rx) = mpsc::channel();
        // The pipes exist: they were requested above.
        if let Some(stdout) = child.stdout.take() {
            spawn_reader(
                &self.role,
                "stdout",
                stdout,
                &output,
                Stream::Stdout,
                events,
            );
        }
        if let Some(stderr) = child.stderr.take() {
            spawn_reader(
                &self.role,
                "stderr",
                stderr,
                &output,
                Stream::Stderr,
                stderr_done,
            );
        }
        Ok(ChildProcess {
            stdin: child.stdin.take(),
            child,
            test: self.test,
            role: self.role,
            output,
            events: events_rx,
            stderr_done: stderr_done_rx,
            status: None,
        })
    }
}

/// What a child printed, collected by the reader threads.
#[derive(Debug, Default)]
struct Collected {
    steps: Vec<String>,
    stdout: String,
    stdout_closed: bool,
    stderr: String,
    stderr_closed: bool,
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn lock(output: &Mutex<Collected>) -> MutexGuard<'_, Collected> {
    // The reader threads never panic while holding the lock; a poisoned one is still
    // consistent.
    output.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `pipe` line by line into `output`, notifying `notify` after each line and once
/// more at the end. Stops at end of file (the child exited or closed the pipe).
fn spawn_reader(
    role: &str,
    name: &str,
    pipe: impl Read + Send + 'static,
    output: &Arc<Mutex<Collected>>,
    stream: Stream,
    notify: Sender<()>,
) {
    let collected = Arc::clone(output);
    let read = move || {
        let output = collected;
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).unwrap_or(0);
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let mut out = lock(&output);
            match stream {
                Stream::Stdout => {
                    if let Some(at) = text.find(STEP_MARKER) {
                        let step = text[at + STEP_MARKER.len()..].trim_end_matches(['\n', '\r']);
                        out.steps.push(step.to_owned());
                    }
                    out.stdout.push_str(&text);
                }
                Stream::Stderr => out.stderr.push_str(&text),
            }
            drop(out);
            let _ = notify.send(());
        }
        let mut out = lock(&output);
        match stream {
            Stream::Stdout => out.stdout_closed = true,
            Stream::Stderr => out.stderr_closed = true,
        }
        drop(out);
        let _ = notify.send(());
    };
    let spawned = thread::Builder::new()
        .name(format!("layout-testkit-{role}-{name}"))
        .spawn(read);
    if spawned.is_err() {
        // Without a reader the parent sees a closed stream and reports the child as
        // exited; the child is killed and reaped all the same.
        let mut out = lock(output);
        match stream {
            Stream::Stdout => out.stdout_closed = true,
            Stream::Stderr => out.stderr_closed = true,
        }
    }
}

/// A running child test process. Dropping it kills (SIGKILL) and reaps the child.
///
/// Start one with [`ChildCommand::spawn`].
pub struct ChildProcess {
    child: Child,
    /// Held open for the child's lifetime: its end of file tells a child in
    /// [`block_until_killed`] that the parent is gone.
    stdin: Option<ChildStdin>,
    test: String,
    role: String,
    output: Arc<Mutex<Collected>>,
    events: Receiver<()>,
    stderr_done: Receiver<()>,
    status: Option<ExitStatus>,
}

/// How a child ended and what it printed; see [`ChildProcess::wait`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ChildOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// The steps it reported, in order.
    pub steps: Vec<String>,
    /// Everything it printed on stdout (step lines included).
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl ChildOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Its exit code, when it exited rather than being killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Whether it was killed by SIGKILL (always `false` off Unix).
    pub fn was_killed(&self) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt as _;
            self.status.signal() == Some(9)
        }
        #[cfg(not(unix))]
        {
            false
        }
    }
}

impl ChildProcess {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The role it plays.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The test it runs.
    pub fn test_name(&self) -> &str {
        &self.test
    }

    /// The steps it reported so far, in order.
    pub fn steps_seen(&self) -> Vec<String> {
        lock(&self.output).steps.clone()
    }

    /// Waits until the child has reported step `name` (now or earlier).
    ///
    /// `bound` is a safety bound for a hung child, not a timing assertion: choose it far
    /// above what the step needs. An error when the child exits first
    /// ([`CrashError::ExitedEarly`], with its status and the tail of its stderr; the child
    /// is reaped) or when the bound passes ([`CrashError::Timeout`]; the child keeps
    /// running until killed or dropped).
    pub fn wait_for_step(&mut self, name: &str, bound: Duration) -> Result<(), CrashError> {
        let deadline = Instant::now() + bound;
        loop {
            {
                let out = lock(&self.output);
                if out.steps.iter().any(|s| s == name) {
                    return Ok(());
                }
                if out.stdout_closed {
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.timeout(format!("report step {name:?}"), bound));
                }
                // The reader ended (it marks stdout closed first): checked above.
                Err(RecvTimeoutError::Disconnected) => {
                    if !lock(&self.output).stdout_closed {
                        break;
                    }
                }
            }
        }
        let status = self.reap(deadline)?;
        let ran_no_test = lock(&self.output).stdout.contains("running 0 tests");
        Err(CrashError::ExitedEarly {
            step: name.to_owned(),
            status,
            ran_no_test,
            child: Box::new(self.report()),
        })
    }

    /// Waits until the child has reported more than `index` steps and returns step
    /// `index` (0-based, in report order). Steps are kept, so a caller that follows a
    /// child's replies keeps its own cursor and asks for each next index in turn.
    ///
    /// `bound` is a safety bound for a hung child. Errors as in
    /// [`wait_for_step`](Self::wait_for_step).
    pub fn next_step(&mut self, index: usize, bound: Duration) -> Result<String, CrashError> {
        let deadline = Instant::now() + bound;
        loop {
            {
                let out = lock(&self.output);
                if let Some(step) = out.steps.get(index) {
                    return Ok(step.clone());
                }
                if out.stdout_closed {
                    break;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.timeout(format!("report step number {}", index + 1), bound));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if !lock(&self.output).stdout_closed {
                        break;
                    }
                }
            }
        }
        let status = self.reap(deadline)?;
        let ran_no_test = lock(&self.output).stdout.contains("running 0 tests");
        Err(CrashError::ExitedEarly {
            step: format!("number {}", index + 1),
            status,
            ran_no_test,
            child: Box::new(self.report()),
        })
    }

    /// Writes `line` and a line break to the child's stdin and flushes it: a command for
    /// a child that reads its stdin line by line (as the
    /// [`MiniCluster`](crate::MiniCluster)'s child nodes do). Line breaks inside `line`
    /// become spaces. An error when the child is gone.
    pub fn send_line(&mut self, line: &str) -> Result<(), CrashError> {
        let line = line.replace(['\n', '\r'], " ");
        let stdin = self.stdin.as_mut().ok_or_else(|| CrashError::Io {
            role: self.role.clone(),
            operation: "write to stdin",
            source: io::Error::other("the child's stdin is closed"),
        })?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
            .map_err(|source| CrashError::Io {
                role: self.role.clone(),
                operation: "write to stdin",
                source,
            })
    }

    /// Kills the child: SIGKILL on Unix, so nothing in it runs after this (no
    /// destructor, no flush). Does nothing if it has already been waited for.
    pub fn kill(&mut self) -> Result<(), CrashError> {
        if self.status.is_some() {
            return Ok(());
        }
        self.child.kill().map_err(|source| CrashError::Io {
            role: self.role.clone(),
            operation: "kill",
            source,
        })
    }

    /// Waits for the child to exit (after [`kill`](Self::kill), or by itself) and returns
    /// its status and everything it printed. If it has not exited within `bound` (a
    /// safety bound), it is killed and reaped, and the answer is [`CrashError::Timeout`].
    /// Calling it again returns the same output.
    pub fn wait(&mut self, bound: Duration) -> Result<ChildOutput, CrashError> {
        let deadline = Instant::now() + bound;
        if self.status.is_none() {
            while !lock(&self.output).stdout_closed {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.events.recv_timeout(left) {
                    Ok(()) => {}
                    // The reader is gone: there is nothing more to wait for on stdout.
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        if lock(&self.output).stdout_closed {
                            break;
                        }
                        let err = self.timeout("exit".to_owned(), bound);
                        let _ = self.child.kill();
                        self.reap(deadline)?;
                        return Err(err);
                    }
                }
            }
            self.reap(deadline)?;
        }
        let status = self.status.ok_or_else(|| CrashError::Io {
            role: self.role.clone(),
            operation: "wait",
            source: io::Error::other("the child was not reaped"),
        })?;
        let out = lock(&self.output);
        Ok(ChildOutput {
            status,
            steps: out.steps.clone(),
            stdout: out.stdout.clone(),
            stderr: out.stderr.clone(),
        })
    }

    /// Reaps a child whose stdout has closed (or that was just killed), and lets the
    /// stderr reader finish (at most until `deadline`).
    fn reap(&mut self, deadline: Instant) -> Result<ExitStatus, CrashError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status,
            // Its stdout closed: it is exiting, or it closed stdout and lives on. A kill
            // bounds the wait either way (an exiting process keeps its exit code).
            Ok(None) => {
                let _ = self.child.kill();
                self.child.wait().map_err(|source| CrashError::Io {
                    role: self.role.clone(),
                    operation: "wait",
                    source,
                })?
            }
            Err(source) => {
                return Err(CrashError::Io {
                    role: self.role.clone(),
                    operation: "wait",
                    source,
                })
            }
        };
        self.status = Some(status);
        while !lock(&self.output).stderr_closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.stderr_done.recv_timeout(left).is_err() {
                break;
            }
        }
        Ok(status)
    }

    fn timeout(&self, waiting_for: String, bound: Duration) -> CrashError {
        CrashError::Timeout {
            waiting_for,
            bound,
            child: Box::new(self.report()),
        }
    }

    fn report(&self) -> ChildReport {
        let out = lock(&self.output);
        ChildReport {
            role: self.role.clone(),
            test: self.test.clone(),
            steps: out.steps.clone(),
            stderr_tail: tail(&out.stderr),
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SIGKILL cannot be blocked: the wait ends once the child is gone.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        drop(self.stdin.take());
    }
}

impl fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildProcess")
            .field("role", &self.role)
            .field("test", &self.test)
            .field("id", &self.child.id())
            .field("status", &self.status)
            .field("steps", &lock(&self.output).steps)
            .finish_non_exhaustive()
    }
}

/// The last [`STDERR_TAIL_LINES`] lines of `text`.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A safety bound for a hung child, never reached by a working test.
    const BOUND: Duration = Duration::from_secs(60);

    #[test]
    fn the_test_name_drops_the_crate_the_helper_and_closures() {
        assert_eq!(
            test_name_from_item_path("my_tests::crash::kill_test::__layout_testkit_here"),
            "crash::kill_test"
        );
        assert_eq!(
            test_name_from_item_path("t::m::kill_test::{{closure}}::__layout_testkit_here"),
            "m::kill_test"
        );
        assert_eq!(
            crate::test_name!(),
            "crash::tests::the_test_name_drops_the_crate_the_helper_and_closures"
        );
    }

    #[test]
    fn a_child_reports_its_steps_and_exits() {
        if let Some(role) = child_role() {
            assert_eq!(role, "reporter");
            report_step("opened");
            report_step(format!("value {}", std::env::var("TESTKIT_VALUE").unwrap()));
            report_step("two\nlines");
            return;
        }
        let mut child = ChildCommand::new(crate::test_name!(), "reporter")
            .env("TESTKIT_VALUE", "42")
            .spawn()
            .unwrap();
        child.wait_for_step("value 42", BOUND).unwrap();
        assert!(child.steps_seen().starts_with(&["opened".to_owned()]));
        let output = child.wait(BOUND).unwrap();
        assert!(output.success(), "{output:?}");
        assert_eq!(output.steps, ["opened", "value 42", "two lines"]);
        // An earlier step is still there after the child has exited.
        child.wait_for_step("opened", BOUND).unwrap();
        assert!(child.wait(BOUND).unwrap().success());
    }

    #[test]
    fn a_child_blocked_at_a_step_is_killed_there() {
        if child_role().is_some() {
            report_step("before");
            report_step("blocked");
            block_until_killed();
        }
        let mut child = ChildCommand::new(crate::test_name!(), "blocker")
            .spawn()
            .unwrap();
        child.wait_for_step("blocked", BOUND).unwrap();
        child.kill().unwrap();
        let output = child.wait(BOUND).unwrap();
        assert!(output.was_killed(), "{output:?}");
        assert_eq!(output.steps, ["before", "blocked"]);
        // Killing again after the wait is harmless.
        child.kill().unwrap();
    }

    #[test]
    fn a_child_that_exits_early_is_an_error_with_its_stderr() {
        if child_role().is_some() {
            report_step("started");
            eprintln!("the reason it gave up");
            std::process::exit(3);
        }
        let mut child = ChildCommand::new(crate::test_name!(), "quitter")
            .spawn()
            .unwrap();
        let err = child.wait_for_step("never", BOUND).unwrap_err();
        match &err {
            CrashError::ExitedEarly {
                status,
                child,
                ran_no_test,
                ..
            } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(child.steps, ["started"]);
                assert!(child.stderr_tail.contains("the reason it gave up"), "{err}");
                assert!(!ran_no_test);
            }
            other => panic!("expected ExitedEarly, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("`quitter`") && message.contains("`never`"),
            "{message}"
        );
        assert_eq!(child.wait(BOUND).unwrap().code(), Some(3));
    }

    #[test]
    fn a_wrong_test_name_is_reported_as_running_no_test() {
        if child_role().is_some() {
            return;
        }
        let mut child = ChildCommand::new("crash::tests::no_such_test", "nobody")
            .spawn()
            .unwrap();
        let err = child.wait_for_step("anything", BOUND).unwrap_err();
        assert!(
            matches!(
                err,
                CrashError::ExitedEarly {
                    ran_no_test: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("ran no test"), "{err}");
    }

    #[test]
    fn a_child_that_never_reports_the_step_times_out_and_is_killed_on_drop() {
        if child_role().is_some() {
            report_step("waiting");
            block_until_killed();
        }
        let mut child = ChildCommand::new(crate::test_name!(), "silent")
            .spawn()
            .unwrap();
        child.wait_for_step("waiting", BOUND).unwrap();
        // The bound is what this test is about: the wait returns although the child
        // never reports the step.
        let err = child
            .wait_for_step("never", Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, CrashError::Timeout { .. }), "{err:?}");
        let pid = child.id();
        drop(child);
        // Killed and reaped: not even a zombie is left.
        #[cfg(target_os = "linux")]
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} outlived its handle"
        );
        let _ = pid;
    }

    #[test]
    fn a_child_orphaned_while_blocked_exits_by_itself() {
        if child_role().is_some() {
            report_step("blocked");
            block_until_killed();
        }
        let mut child = ChildCommand::new(crate::test_name!(), "orphan")
            .spawn()
            .unwrap();
        child.wait_for_step("blocked", BOUND).unwrap();
        // What the parent's death does to the pipe: the child's stdin reaches its end.
        drop(child.stdin.take());
        let output = child.wait(BOUND).unwrap();
        assert_eq!(output.code(), Some(ORPHANED_EXIT_CODE), "{output:?}");
    }

    #[test]
    fn empty_names_and_roles_are_refused() {
        assert!(matches!(
            ChildCommand::new("", "role").spawn(),
            Err(CrashError::InvalidCommand(_))
        ));
        assert!(matches!(
            ChildCommand::new("crash::tests::x", "").spawn(),
            Err(CrashError::InvalidCommand(_))
        ));
    }
}
