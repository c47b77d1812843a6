//! The testkit's crash tests (feature `failpoints`): the crash matrix over every
//! failpoint, in-process and with SIGKILL, its negative control, and seeded
//! mixed-version plans with crashes.
//!
//! Crash points are process-global. The kit observes them only around one finalization
//! at a time and holds its injection lock for in-process runs, so this binary gives the
//! same results under cargo-nextest (one process per test) and `cargo test`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod matrix;
mod plans;
