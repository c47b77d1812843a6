//! Shared code of the runnable examples.
//!
//! - [`kvstore`]: a real key/value service whose on-disk layout is upgraded with
//!   `layout-core` (`cargo run -p layout-examples --example kvstore`).
//! - [`walkthrough`]: the upgrade story on `kvstore`, told and checked step by step
//!   (`cargo run --example walkthrough`).

pub mod kvstore;
pub mod walkthrough;
