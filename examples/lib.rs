//! Shared code of the runnable examples.
//!
//! - [`kvstore`]: a real key/value service whose on-disk layout is upgraded with
//!   `layout-core` (`cargo run -p layout-examples --example kvstore`).

pub mod kvstore;
