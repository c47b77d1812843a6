//! The upgrade story on `kvstore`, step by step, on an embedded default: a temporary
//! directory, one node in-process, HTTP on loopback. No setup.
//!
//! Run it with `cargo run --example walkthrough`. It checks every claim it prints and
//! exits non-zero when one does not hold. The story itself is
//! [`layout_examples::walkthrough`].

use std::io::IsTerminal as _;
use std::process::ExitCode;

use layout_examples::walkthrough::{self, ProgressMode, WalkthroughOptions};

fn main() -> ExitCode {
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
    match walkthrough::run_with(&mut out, dir.path(), &options) {
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
