//! The first examples to run; this library itself is empty.
//!
//! - `cargo run --example quickstart` (`examples/quickstart.rs`): the smallest complete
//!   use of `layout-core`, under 100 lines: a catalog, a layout version manager on a
//!   directory, an API gated until its feature is finalized, one upgrade action, and the
//!   finalization, each step printed.
//! - `cargo run --example walkthrough` (`examples/walkthrough.rs`): the upgrade story on
//!   the `kvstore` example service, told and checked step by step (the `walkthrough`
//!   package).
//!
//! The `kvstore` service itself is the `kvstore` package (`cargo run -p kvstore`).
