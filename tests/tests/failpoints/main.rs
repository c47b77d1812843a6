//! Crash tests of the finalizer: failpoints (the `fail` crate, layout-core feature
//! `failpoints`) and SIGKILL, each in a child process started with
//! `layout_testkit::crash`, then a restart from what the crash left on disk.
//!
//! Failpoints are process-global. Every failpoint is configured only in a child process
//! (which runs exactly one test), never in the parent, so this binary gives the same
//! results under cargo-nextest (one process per test) and under `cargo test`.
//!
//! | module | shows |
//! |---|---|
//! | [`trace`] | a crash-free finalization passes exactly `layout_core::finalizer::FAILPOINTS`; a crash at every hit of every failpoint recovers to the crash-free state |
//! | [`crash_points`] | crash points inside actions and background-migration batches are observed in order; a crash simulated there stops finalization, and a restart finishes |
//! | [`durable`] | the durable-file routine failing at each step (`durable::FAILPOINTS`): an error naming the step, the old file intact (or the new one, after the rename), no temporary file left, and a retry that succeeds |
//! | [`sigkill`] | a SIGKILL in every window between steps, with journaling actions, recovers and finishes |
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;
mod crash_points;
mod durable;
mod sigkill;
mod trace;
