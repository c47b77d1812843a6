//! The upgrade story on [`kvstore`], told and checked step by step.
//!
//! `cargo run --example walkthrough` ([`run_program`]) calls [`run_with`] with a temporary directory and
//! standard output. The story, on one `kvstore` node (in-process, HTTP on loopback
//! ephemeral ports), driven through its HTTP API ([`KvClient`](kvstore::KvClient))
//! and its admin endpoint (the [`AdminClient`](layout_core::admin::http::AdminClient) that
//! `layoutctl` uses):
//!
//! 1. [`Stage::Install`]: the old release (software layout version 0) installs the
//!    store and writes a few hundred keys.
//! 2. [`Stage::Prepare`]: the operator prepares; writes are refused while prepared.
//! 3. [`Stage::UpgradePreFinalized`]: the new release starts on the old layout,
//!    pre-finalized: the new APIs are refused with the not-finalized error naming the
//!    feature, the old data is served, and it writes more.
//! 4. [`Stage::Downgrade`]: the old release starts again and reads everything both
//!    releases wrote.
//! 5. [`Stage::Finalize`]: the new release again; the operator finalizes, feature by
//!    feature, with a progress bar (or plain progress lines).
//! 6. [`Stage::NewApis`]: compare-and-swap, lookup by value and TTL puts work; the
//!    figures of the index migration (rows, batches, time).
//! 7. [`Stage::OldRefused`]: the old release refuses to start (the disk is newer than
//!    the software); the new one restarts with everything in place.
//!
//! Every claim the story prints is checked: a failed check prints what was expected and
//! what was seen, and [`run`] returns [`WalkthroughError::Check`].
//!
//! ```no_run
//! let dir = tempfile::tempdir()?;
//! let report = walkthrough::run(&mut std::io::stdout(), dir.path())?;
//! assert_eq!(report.stages.len(), 7);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod finalize;
mod narrator;
mod story;
mod table;

use std::fmt;
use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub use table::StatusRow;

/// How the finalization's progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProgressMode {
    /// Plain progress lines on the output (for logs, pipes and tests).
    #[default]
    Lines,
    /// An `indicatif` progress bar drawn on the terminal's standard output, as
    /// `layoutctl finalize --watch` draws it. Use it only when the output *is* standard
    /// output and a terminal.
    Bar,
}

/// Options of [`run_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WalkthroughOptions {
    /// How finalization progress is shown (default: plain lines).
    pub progress: ProgressMode,
    /// Keys the old release writes at first (default 300).
    pub initial_keys: usize,
    /// Rows per batch of the value-index migration (default 64, so a few hundred keys
    /// make several batches).
    pub migration_batch: usize,
    /// The longest the story waits for a finalization to end (default 60 s).
    pub finalize_timeout: Duration,
}

impl Default for WalkthroughOptions {
    fn default() -> Self {
        Self {
            progress: ProgressMode::Lines,
            initial_keys: 300,
            migration_batch: 64,
            finalize_timeout: Duration::from_secs(60),
        }
    }
}

impl WalkthroughOptions {
    /// Shows progress as `mode`.
    #[must_use]
    pub fn with_progress(mut self, mode: ProgressMode) -> Self {
        self.progress = mode;
        self
    }

    /// The old release writes `keys` keys at first.
    #[must_use]
    pub fn with_initial_keys(mut self, keys: usize) -> Self {
        self.initial_keys = keys;
        self
    }

    /// The value-index migration copies `rows` rows per batch.
    #[must_use]
    pub fn with_migration_batch(mut self, rows: usize) -> Self {
        self.migration_batch = rows;
        self
    }
}

/// The steps of the story, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// The old release installs kvstore and writes data.
    Install,
    /// The operator prepares; writes are refused.
    Prepare,
    /// The new release runs pre-finalized: new APIs refused, old data served.
    UpgradePreFinalized,
    /// The old release runs again and reads everything.
    Downgrade,
    /// The new release again; the operator finalizes, feature by feature.
    Finalize,
    /// The new APIs work; the index migration's figures.
    NewApis,
    /// The old release is refused; the new one restarts.
    OldRefused,
}

impl Stage {
    /// Every stage, in story order.
    pub const ALL: [Stage; 7] = [
        Stage::Install,
        Stage::Prepare,
        Stage::UpgradePreFinalized,
        Stage::Downgrade,
        Stage::Finalize,
        Stage::NewApis,
        Stage::OldRefused,
    ];

    /// 1-based position in the story.
    pub fn number(self) -> usize {
        match self {
            Stage::Install => 1,
            Stage::Prepare => 2,
            Stage::UpgradePreFinalized => 3,
            Stage::Downgrade => 4,
            Stage::Finalize => 5,
            Stage::NewApis => 6,
            Stage::OldRefused => 7,
        }
    }

    /// What happens in it, as its heading says.
    pub fn title(self) -> &'static str {
        match self {
            Stage::Install => "Install kvstore with the OLD release and write data",
            Stage::Prepare => "Prepare for the binary swap",
            Stage::UpgradePreFinalized => "Start the NEW release: pre-finalized",
            Stage::Downgrade => "Downgrade: the OLD release reads everything",
            Stage::Finalize => "Upgrade again and finalize, feature by feature",
            Stage::NewApis => "The new APIs work; the index migration's figures",
            Stage::OldRefused => "The OLD release is refused now",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} ({})", self.number(), self.title())
    }
}

/// What one stage did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageReport {
    /// The stage.
    pub stage: Stage,
    /// How many claims it checked (all held).
    pub checks: usize,
    /// The node's status at its end.
    pub status: StatusRow,
}

/// The figures of the value-index migration, as kvstore reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IndexFigures {
    /// Rows indexed.
    pub rows_done: u64,
    /// Rows to index.
    pub rows_total: u64,
    /// Batches committed.
    pub batches: u64,
    /// How long the migration took.
    pub elapsed: Duration,
    /// Whether it completed.
    pub complete: bool,
}

/// What a successful walkthrough did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalkthroughReport {
    /// Each stage, in order.
    pub stages: Vec<StageReport>,
    /// Every claim checked, over all stages.
    pub checks: usize,
    /// Keys in the store at the end.
    pub keys: u64,
    /// The prepare indexes, in order (before the upgrade, before the downgrade, before
    /// the second upgrade).
    pub prepare_indexes: Vec<u64>,
    /// The value-index migration's figures.
    pub index_migration: IndexFigures,
}

/// A claim of the story that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckFailure {
    /// Where.
    pub stage: Stage,
    /// What the story claims.
    pub claim: String,
    /// What it expected to see.
    pub expected: String,
    /// What it saw.
    pub seen: String,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the claim \"{}\" does not hold: expected {}, seen {}",
            self.stage, self.claim, self.expected, self.seen
        )
    }
}

/// Why the walkthrough stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalkthroughError {
    /// A claim did not hold.
    #[error("{0}")]
    Check(Box<CheckFailure>),
    /// An operation the story relies on failed.
    #[error("{stage}: {action} failed: {source}")]
    Step {
        /// Where.
        stage: Stage,
        /// What the story was doing.
        action: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The story waited too long (bounded waits only).
    #[error("{stage}: gave up after {waited:?} waiting for {what}")]
    Timeout {
        /// Where.
        stage: Stage,
        /// What it waited for.
        what: String,
        /// How long it waited.
        waited: Duration,
    },
    /// Writing the story to the output failed.
    #[error("cannot write the walkthrough's output: {0}")]
    Output(#[from] std::io::Error),
}

impl WalkthroughError {
    /// The stage it stopped in, if known.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            Self::Check(failure) => Some(failure.stage),
            Self::Step { stage, .. } | Self::Timeout { stage, .. } => Some(*stage),
            Self::Output(_) => None,
        }
    }
}

/// Tells the whole upgrade story into `out`, keeping the node's data under `dir` (which
/// should be empty), with the default [`WalkthroughOptions`] (plain progress lines).
pub fn run(
    out: &mut dyn std::io::Write,
    dir: &Path,
) -> Result<WalkthroughReport, WalkthroughError> {
    run_with(out, dir, &WalkthroughOptions::default())
}

/// Tells the whole upgrade story into `out` with `options`; see the [module](self) docs.
pub fn run_with(
    out: &mut dyn std::io::Write,
    dir: &Path,
    options: &WalkthroughOptions,
) -> Result<WalkthroughReport, WalkthroughError> {
    story::Story::new(out, dir, options).tell()
}

/// The whole program of the `walkthrough` binary and of `cargo run --example walkthrough`:
/// the story in a temporary directory on standard output, with a progress bar on a
/// terminal and plain progress lines otherwise. A failed check or step is printed on
/// standard error with its causes, and the exit code is then non-zero. The node's own
/// log goes to standard error, filtered by `RUST_LOG` (default `warn`, so the story stays
/// readable and warnings still show).
pub fn run_program() -> ExitCode {
    install_logging();
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("walkthrough: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    // A progress bar on a terminal, plain progress lines in a pipe or a log.
    let progress = if stdout.is_terminal() {
        ProgressMode::Bar
    } else {
        ProgressMode::Lines
    };
    let options = WalkthroughOptions::default().with_progress(progress);
    let mut out = stdout.lock();
    match run_with(&mut out, dir.path(), &options) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("\nwalkthrough: FAILED: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error, filtered by `RUST_LOG` (default `warn`).
fn install_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(e) => {
            if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
                eprintln!("walkthrough: warning: ignoring RUST_LOG ({e}); logging at warn");
            }
            EnvFilter::new("warn")
        }
    };
    // A second call (a program that installed its own subscriber) keeps the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
