//! Crashes inside upgrade actions: the crash matrix over crash points it discovers
//! (a background migration's batch boundaries, an action's own points), and the
//! interrupted-finalization stage of `UpgradeTest` with its negative controls.
//!
//! Crash points are process-global: the kit serializes its in-process finalizations, so
//! this binary gives the same results under cargo-nextest (one process per test) and
//! `cargo test`. It needs no cargo feature.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod interrupted;
mod matrix;
mod records;
