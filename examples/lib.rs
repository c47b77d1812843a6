//! Shared code of the runnable examples.
//!
//! - [`kvstore`]: a real key/value service whose on-disk layout is upgraded with
//!   `layout-core` (`cargo run -p layout-examples --example kvstore`).
//! - [`walkthrough`]: the upgrade story on `kvstore`, told and checked step by step
//!   (`cargo run --example walkthrough`).
//! - [`workload`]: a recorder and checker of client writes for end-to-end upgrade tests:
//!   nothing acknowledged may be lost or changed.

pub mod kvstore;
pub mod walkthrough;
pub mod workload;
