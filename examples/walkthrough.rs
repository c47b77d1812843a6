//! The upgrade story on `kvstore`, step by step, on an embedded default: a temporary
//! directory, one node in-process, HTTP on loopback. No setup.
//!
//! `cargo run --example walkthrough` from the workspace root: the same program as the
//! `walkthrough` package's binary (`cargo run -p walkthrough`). It checks every claim it
//! prints and exits non-zero when one does not hold.

fn main() -> std::process::ExitCode {
    walkthrough::run_program()
}
