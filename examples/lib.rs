//! Shared code of the runnable examples.

pub mod workload;
