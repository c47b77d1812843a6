//! The upgrade story on `kvstore`, step by step, on an embedded default: a temporary
//! directory, one node in-process, HTTP on loopback. No setup.
//!
//! Run it with `cargo run -p walkthrough` (or `cargo run --example walkthrough` from the
//! workspace root, the same program). It checks every claim it prints and exits non-zero
//! when one does not hold. The program is [`walkthrough::run_program`].

fn main() -> std::process::ExitCode {
    walkthrough::run_program()
}
